//! Every HTTP status the API answers with is chosen here, and nowhere else: each
//! layer's errors ([`UserError`], [`TokenError`], [`KeyError`], [`StoreError`]) become
//! an [`ApiError`], the requests refused before a handler runs have a constructor
//! each, and the few success statuses other than 200 are the functions at the end.
//!
//! Every error answers `{error, details: [{field, problem}]}` (plus `retry_after_s`
//! where there is a wait), with `Retry-After` on a 429 or 503 and `WWW-Authenticate`
//! on a missing or bad API key.

use axum::extract::rejection::BytesRejection;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::accounts::api_keys::KeyError;
use crate::accounts::error::{Problem, UserError};
use crate::accounts::tokens::TokenError;
use crate::storage::store::StoreError;

/// An error as the API reports it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    details: Vec<Problem>,
    /// When to try again, in seconds: `retry_after_s` in the body, and a `Retry-After`
    /// header on a 429 or 503.
    retry_after_s: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, details: Vec<Problem>) -> ApiError {
        ApiError {
            status,
            code,
            details,
            retry_after_s: None,
        }
    }

    /// The same error, saying to retry after `ms` (rounded up to whole seconds).
    fn retry_after_ms(mut self, ms: u64) -> ApiError {
        self.retry_after_s = Some(ms.div_ceil(1000));
        self
    }

    /// The problems it reports, to merge with others found in the same request.
    pub fn into_details(self) -> Vec<Problem> {
        self.details
    }

    /// 400 `invalid_request`: every problem found in the request.
    pub fn invalid(details: Vec<Problem>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", details)
    }

    /// 400 `malformed_body`: a body that could not be read.
    pub fn malformed_body(problem: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_body",
            vec![Problem::new("body", problem)],
        )
    }

    /// 400 `malformed_json`.
    pub fn malformed_json(problem: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            vec![Problem::new("body", problem)],
        )
    }

    /// 401 `unauthorized`: no valid API key, or no valid peer signature.
    pub fn unauthorized(problem: Problem) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", vec![problem])
    }

    /// 401 with a request signature's refusal (`signature_required`,
    /// `signature_invalid`, `signature_expired`, `signature_replayed`).
    pub fn signature_refused(code: &'static str, problem: Problem) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, code, vec![problem])
    }

    /// 403 `forbidden`: an API key without the scope the request needs.
    pub fn forbidden(problem: Problem) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", vec![problem])
    }

    /// 404 `not_found`.
    pub fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", vec![])
    }

    /// 405 `method_not_allowed`.
    pub fn method_not_allowed() -> ApiError {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", vec![])
    }

    /// 409 `replay_failed`: a dead letter that still does not apply (it is kept).
    pub fn replay_failed(reason: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::CONFLICT,
            "replay_failed",
            vec![Problem::new("event", reason)],
        )
    }

    /// 413 `payload_too_large`.
    pub fn payload_too_large(details: Vec<Problem>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", details)
    }

    /// 415 `unsupported_media_type`.
    pub fn unsupported_media_type() -> ApiError {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            vec![Problem::new("content-type", "must be application/json")],
        )
    }

    /// 429 `rate_limited`: this source address used its burst; retry after `ms`.
    pub fn rate_limited(ms: u64) -> ApiError {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            vec![Problem::new(
                "source",
                format!(
                    "too many requests from this address: retry in {} s",
                    ms.div_ceil(1000)
                ),
            )],
        )
        .retry_after_ms(ms)
    }

    /// 503 `overloaded`: this node already has as much password hashing in flight as
    /// it takes (`http.max_hashing_in_flight`); retry in a second.
    pub fn overloaded() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            vec![Problem::new(
                "request",
                "this node is busy with other logins: retry in 1 s",
            )],
        )
        .retry_after_ms(1000)
    }

    /// 503 `request_timeout`: the request took longer than `http.request_timeout_ms`
    /// here; whatever it changed is committed or not, as a retry will find.
    pub fn timed_out(limit_ms: u64) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "request_timeout",
            vec![Problem::new(
                "request",
                format!("not answered within {limit_ms} ms: retry in 1 s"),
            )],
        )
        .retry_after_ms(1000)
    }

    /// 500 `internal`: what failed is logged, never told.
    pub fn internal() -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", vec![])
    }

    /// 503 `region_unreachable`: the region a request must be sent on to did not
    /// answer; retry.
    pub fn region_unreachable() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "region_unreachable",
            vec![],
        )
        .retry_after_ms(1000)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.code, "details": self.details});
        if let Some(s) = self.retry_after_s {
            body["retry_after_s"] = json!(s);
        }
        let mut resp = (self.status, Json(body)).into_response();
        if let (Some(s), StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) =
            (self.retry_after_s, self.status)
        {
            if let Ok(v) = header::HeaderValue::from_str(&s.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        if self.status == StatusCode::UNAUTHORIZED && self.code == "unauthorized" {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

impl From<UserError> for ApiError {
    fn from(e: UserError) -> ApiError {
        match e {
            UserError::NotFound => ApiError::not_found(),
            UserError::Invalid(d) => ApiError::invalid(d),
            UserError::Conflict(d) => ApiError::new(StatusCode::CONFLICT, "conflict", d),
            UserError::Merged(into) => ApiError::new(
                StatusCode::CONFLICT,
                "account_merged",
                vec![Problem::new("id", format!("was merged into {into}"))],
            ),
            UserError::InvalidCredentials => {
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid_credentials", vec![])
            }
            UserError::LoginFailed { retry_after_ms } => {
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid_credentials", vec![])
                    .retry_after_ms(retry_after_ms)
            }
            UserError::SecondFactorRequired { .. } => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "second_factor_required",
                vec![Problem::new(
                    "totp",
                    "this account needs its authenticator's code (totp) or a recovery code (recovery_code)",
                )],
            ),
            UserError::SecondFactorFailed { retry_after_ms } => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_second_factor",
                vec![Problem::new(
                    "totp",
                    "is wrong, or used already: each code is taken once",
                )],
            )
            .retry_after_ms(retry_after_ms),
            UserError::InvalidSecondFactor => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_second_factor",
                vec![],
            ),
            UserError::TooManyAttempts { retry_after_ms } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_attempts",
                vec![Problem::new(
                    "login",
                    format!(
                        "too many failed logins: retry in {} s",
                        retry_after_ms.div_ceil(1000)
                    ),
                )],
            )
            .retry_after_ms(retry_after_ms),
            UserError::Forbidden("locked") => {
                ApiError::new(StatusCode::FORBIDDEN, "account_locked", vec![])
            }
            UserError::Forbidden(_) => {
                ApiError::new(StatusCode::FORBIDDEN, "account_disabled", vec![])
            }
            UserError::Unreadable => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "record_unreadable",
                vec![],
            ),
            UserError::KeyUnavailable(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "key_unavailable", vec![])
            }
            other => {
                tracing::error!(error = %other, "request failed");
                ApiError::internal()
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        UserError::Store(e).into()
    }
}

/// A body that could not be read: 413 past the size limit, else 400 `malformed_body`.
impl From<BytesRejection> for ApiError {
    fn from(e: BytesRejection) -> ApiError {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::payload_too_large(vec![Problem::new(
                "body",
                "is larger than the configured limit",
            )])
        } else {
            ApiError::malformed_body(e.body_text())
        }
    }
}

/// A refused refresh or logout: 401 with the reason's code (the family may have been
/// revoked); the rest as [`UserError`].
impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> ApiError {
        match e {
            TokenError::Refused(r) => ApiError::new(
                StatusCode::UNAUTHORIZED,
                r.code(),
                vec![Problem::new("refresh_token", "log in again")],
            ),
            TokenError::User(u) => u.into(),
        }
    }
}

/// The admin API's key errors: a bad name is a 400 on `name`, an unknown id a 404.
impl From<KeyError> for ApiError {
    fn from(e: KeyError) -> ApiError {
        match e {
            KeyError::Invalid(p) => ApiError::invalid(vec![Problem::new("name", p)]),
            KeyError::NotFound(_) => ApiError::not_found(),
            KeyError::User(u) => u.into(),
        }
    }
}

/// 201 with `body`.
pub fn created(body: impl IntoResponse) -> Response {
    (StatusCode::CREATED, body).into_response()
}

/// 202 with `body`: taken, to be done in the background.
pub fn accepted(body: impl IntoResponse) -> Response {
    (StatusCode::ACCEPTED, body).into_response()
}

/// 204.
pub fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// 503 with `body`: a node that is not ready to serve yet.
pub fn not_ready(body: Value) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(e: ApiError) -> (u16, Value, Option<String>) {
        let resp = e.into_response();
        let status = resp.status().as_u16();
        let retry = resp
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap(), retry)
    }

    #[tokio::test]
    async fn each_error_answers_its_status_and_code() {
        for (e, status, code) in [
            (UserError::NotFound.into(), 404, "not_found"),
            (UserError::Unreadable.into(), 500, "record_unreadable"),
            (
                UserError::KeyUnavailable("x".into()).into(),
                503,
                "key_unavailable",
            ),
            (UserError::Forbidden("locked").into(), 403, "account_locked"),
            (
                UserError::Forbidden("disabled").into(),
                403,
                "account_disabled",
            ),
            (KeyError::NotFound("k".into()).into(), 404, "not_found"),
            (
                KeyError::Invalid("bad".into()).into(),
                400,
                "invalid_request",
            ),
            (ApiError::replay_failed("still"), 409, "replay_failed"),
            (
                ApiError::unsupported_media_type(),
                415,
                "unsupported_media_type",
            ),
        ] {
            let (s, body, _) = answer(e).await;
            assert_eq!((s, body["error"].as_str().unwrap()), (status, code));
        }
    }

    #[tokio::test]
    async fn a_wait_is_said_in_the_body_and_on_a_429_in_retry_after() {
        let (s, body, retry) = answer(ApiError::rate_limited(1500)).await;
        assert_eq!((s, body["retry_after_s"].as_u64()), (429, Some(2)));
        assert_eq!(retry.as_deref(), Some("2"));
        let (s, body, retry) = answer(UserError::LoginFailed { retry_after_ms: 1 }.into()).await;
        assert_eq!(
            (s, body["retry_after_s"].as_u64(), retry),
            (401, Some(1), None)
        );
    }
}

/// A refused OAuth token request (RFC 6749 §5.2): `{error, error_description}`, 401
/// with `WWW-Authenticate: Basic` for a client that failed to authenticate, else 400;
/// never cached.
pub fn oauth_error(error: &'static str, description: &str) -> Response {
    let status = if error == "invalid_client" {
        StatusCode::UNAUTHORIZED
    } else if error == "server_error" {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::BAD_REQUEST
    };
    let mut resp = (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Basic realm=\"authsync\""),
        );
    }
    resp
}

/// A token endpoint's answer: 200, never cached (RFC 6749 §5.1).
pub fn oauth_tokens(body: Value) -> Response {
    no_store(body)
}

/// A 200 that carries a secret (tokens, a TOTP seed, recovery codes): never cached.
pub fn no_store(body: Value) -> Response {
    let mut resp = Json(body).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

/// What a page of the hosted sign-in says by its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// The form, or a notice.
    Shown,
    /// A request that cannot be served (an unknown client, a wrong redirect URI).
    BadRequest,
    /// A wrong password, or a form without its CSRF token.
    Refused,
    /// Too many attempts: wait.
    TooMany,
    /// Overloaded, or a key missing here: try again.
    Unavailable,
}

/// A page of the hosted sign-in: HTML, never cached, never framed, with `cookies`
/// set.
pub fn page(kind: Page, html: String, cookies: &[String]) -> Response {
    let status = match kind {
        Page::Shown => StatusCode::OK,
        Page::BadRequest => StatusCode::BAD_REQUEST,
        Page::Refused => StatusCode::UNAUTHORIZED,
        Page::TooMany => StatusCode::TOO_MANY_REQUESTS,
        Page::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut resp = (status, axum::response::Html(html)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    h.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    for c in cookies {
        if let Ok(v) = header::HeaderValue::from_str(c) {
            h.append(header::SET_COOKIE, v);
        }
    }
    resp
}

/// A redirect back to a client (303 See Other, so a POSTed form becomes a GET), with
/// `cookies` set.
pub fn redirect(location: &str, cookies: &[String]) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    let h = resp.headers_mut();
    if let Ok(v) = header::HeaderValue::from_str(location) {
        h.insert(header::LOCATION, v);
    }
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    for c in cookies {
        if let Ok(v) = header::HeaderValue::from_str(c) {
            h.append(header::SET_COOKIE, v);
        }
    }
    resp
}
