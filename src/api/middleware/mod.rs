//! What runs around the handlers, in `api/mod.rs`'s order: request metrics and the
//! request timeout for every route; for `/v1/`, the API key and its scope, the per-address rate limit, and the
//! request signature; for `/v1/internal/`, the peer signature.

pub mod rate_limit;
pub mod signing;

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::accounts::api_keys::Scope;
use crate::accounts::error::Problem;
use crate::api::error::ApiError;
use crate::api::state::AppState;
use crate::common::metrics as m;
use crate::replication::anti_entropy;

/// The scope a request needs: `admin` under `/v1/admin/`, `read` for reads, lookups
/// and logins, `write` for every other change.
pub fn required_scope(method: &axum::http::Method, path: &str) -> Scope {
    if path.starts_with("/v1/admin/") {
        Scope::Admin
    } else if method == axum::http::Method::GET
        || method == axum::http::Method::HEAD
        || path == "/v1/login"
        || path == "/v1/token/refresh"
        || path == "/v1/logout"
    {
        Scope::Read
    } else {
        Scope::Write
    }
}

/// Accepts `Authorization: Bearer <key>` when the key is live (configured or added,
/// and not revoked) and has the scope the request needs.
pub async fn require_api_key(
    State(s): State<AppState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(scopes) = presented.and_then(|key| s.api_keys.authorize(key)) else {
        return ApiError::unauthorized(Problem::new(
            "authorization",
            "a valid 'Bearer <api key>' is required",
        ))
        .into_response();
    };
    let needed = required_scope(req.method(), req.uri().path());
    if !scopes.contains(needed) {
        return ApiError::forbidden(Problem::new(
            "authorization",
            format!("this API key lacks the '{}' scope", needed.name()),
        ))
        .into_response();
    }
    next.run(req).await
}

/// Checks the request's signature ([`signing`]): refused with 401 and the reason
/// when it is missing but required, invalid, expired or replayed.
pub async fn check_signature(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let Some(verifier) = s.signatures.clone() else {
        return next.run(req).await;
    };
    let jwt = req
        .headers()
        .get(signing::HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let Some(jwt) = jwt else {
        if verifier.required() {
            return ApiError::signature_refused(
                "signature_required",
                Problem::new(signing::HEADER, "this node accepts only signed requests"),
            )
            .into_response();
        }
        return next.run(req).await;
    };
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, s.max_body_bytes).await else {
        return ApiError::payload_too_large(vec![]).into_response();
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |p| p.as_str())
        .to_string();
    let now_s = s.users.clock_now_ms() / 1000;
    if let Err(r) = verifier.verify(&jwt, parts.method.as_str(), &path, &body, now_s) {
        return ApiError::signature_refused(r.code, Problem::new(signing::HEADER, r.reason))
            .into_response();
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(body)))
        .await
}

/// The per-address token bucket in front of logins and lookups: 429 `rate_limited`
/// with `Retry-After` when an address has used its burst.
pub async fn limit_rate(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let route = match (req.method(), req.uri().path()) {
        (&axum::http::Method::POST, "/v1/login") => "login",
        (&axum::http::Method::GET, "/v1/users") => "lookup",
        (&axum::http::Method::POST, "/oauth2/authorize") => "sign_in",
        (&axum::http::Method::GET, "/oauth2/authorize") => "authorize",
        (&axum::http::Method::POST, "/oauth2/token") => "token",
        _ => return next.run(req).await,
    };
    let Some(limiter) = &s.rate_limit else {
        return next.run(req).await;
    };
    let from_header = s
        .client_ip_header
        .as_ref()
        .and_then(|(h, hops)| rate_limit::client_addr(req.headers(), h, *hops));
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let Some(addr) = from_header.or(peer) else {
        return next.run(req).await;
    };
    if let Err(wait) = limiter.take(addr, Instant::now()) {
        metrics::counter!(m::RATE_LIMITED_TOTAL, "route" => route).increment(1);
        let ms = wait.as_millis().max(1) as u64;
        return ApiError::rate_limited(ms).into_response();
    }
    next.run(req).await
}

/// Counts and times every request by route template (never the raw path, which
/// holds user ids).
pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    // Methods come from the caller: only the standard ones become label values.
    let method: &'static str = match req.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!(m::HTTP_REQUESTS_TOTAL, "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!(m::HTTP_REQUEST_DURATION_SECONDS, "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// Answers 503 `request_timeout` when the handler has not answered within
/// `http.request_timeout_ms` (work already handed to the blocking pool finishes there).
pub async fn deadline(State(s): State<AppState>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(s.request_timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => ApiError::timed_out(s.request_timeout.as_millis() as u64).into_response(),
    }
}

/// Accepts requests signed by a peer region of this deployment (the signature covers
/// the body too).
pub async fn require_peer(
    State(s): State<AppState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, anti_entropy::MAX_SIGNED_BODY).await else {
        return ApiError::payload_too_large(vec![]).into_response();
    };
    let verdict = match headers
        .get(anti_entropy::PEER_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        None => Err("a peer signature is required"),
        Some(h) => anti_entropy::verify(
            &s.users.keyring(),
            &s.peer_nonces,
            h,
            s.users.clock_now_ms(),
            parts.method.as_str(),
            parts.uri.path(),
            &body,
        ),
    };
    let req = Request::from_parts(parts, axum::body::Body::from(body));
    match verdict {
        Ok(_) => next.run(req).await,
        Err(problem) => {
            ApiError::unauthorized(Problem::new(anti_entropy::PEER_HEADER, problem)).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_paths_need_admin_reads_and_logins_need_read_the_rest_write() {
        use axum::http::Method;
        for (method, path, scope) in [
            (Method::GET, "/v1/admin/api-keys", Scope::Admin),
            (Method::DELETE, "/v1/admin/dead-letters/3", Scope::Admin),
            (Method::GET, "/v1/admin/digest", Scope::Admin),
            (Method::GET, "/v1/users/x", Scope::Read),
            (Method::GET, "/v1/users", Scope::Read),
            (Method::POST, "/v1/login", Scope::Read),
            (Method::POST, "/v1/token/refresh", Scope::Read),
            (Method::POST, "/v1/logout", Scope::Read),
            (Method::POST, "/v1/users", Scope::Write),
            (Method::PATCH, "/v1/users/x", Scope::Write),
            (Method::DELETE, "/v1/users/x", Scope::Write),
            (Method::POST, "/v1/users/import", Scope::Write),
            (Method::PUT, "/v1/users/x/password", Scope::Write),
        ] {
            assert_eq!(required_scope(&method, path), scope, "{method} {path}");
        }
    }
}
