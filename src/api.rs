//! The HTTP API (JSON). Paths and shapes here are a contract other tools rely on.
//!
//! Every error answers `{error, details: [{field, problem}]}`; the mapping from each
//! layer's errors to status codes lives in one place, [`ApiError`]'s `IntoResponse`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use serde_json::{json, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::apikeys::Scope;
use crate::hlc::Version;
use crate::metrics as m;
use crate::users::{ImportOutcome, UserError, UserView, Users};
use crate::validate::{self, Problem};

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    pub users: Arc<Users>,
    pub metrics: PrometheusHandle,
    /// The accepted API keys and their scopes.
    pub api_keys: Arc<crate::apikeys::ApiKeys>,
    pub ready: Arc<AtomicBool>,
    pub max_import_items: usize,
    pub retry: Arc<crate::retry::RetryQueue>,
    /// Whether `/v1/admin/faults` exists.
    pub faults_enabled: bool,
    pub tokens: Arc<crate::tokens::Tokens>,
    /// Per-address limit on logins and lookups; `None` when off.
    pub rate_limit: Option<Arc<crate::ratelimit::RateLimiter>>,
    /// The header naming the end user's address, when the callers set one.
    pub client_ip_header: Option<axum::http::HeaderName>,
    /// Checks signed requests; `None` when no client signs.
    pub signatures: Option<Arc<crate::signing::Verifier>>,
    pub max_body_bytes: usize,
}

/// An error as the API reports it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    details: Vec<Problem>,
    /// When to try again, in seconds: `retry_after_s` in the body, and a `Retry-After`
    /// header on a 429.
    retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, details: Vec<Problem>) -> ApiError {
        ApiError {
            status,
            code,
            details,
            retry_after_s: None,
        }
    }

    /// The same error, saying to retry after `ms` (rounded up to whole seconds).
    pub fn retry_after_ms(mut self, ms: u64) -> ApiError {
        self.retry_after_s = Some(ms.div_ceil(1000));
        self
    }

    pub fn invalid(details: Vec<Problem>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", details)
    }

    pub fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", vec![])
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.code, "details": self.details});
        if let Some(s) = self.retry_after_s {
            body["retry_after_s"] = json!(s);
        }
        let mut resp = (self.status, Json(body)).into_response();
        if let (Some(s), StatusCode::TOO_MANY_REQUESTS) = (self.retry_after_s, self.status) {
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
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", vec![])
            }
        }
    }
}

/// A JSON request body: the right content type, within the size limit, and
/// well-formed JSON. Its fields are checked by the `validate` functions.
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                let essence = v
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                essence == "application/json" || essence.ends_with("+json")
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                vec![Problem::new("content-type", "must be application/json")],
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    vec![Problem::new("body", "is larger than the configured limit")],
                )
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "malformed_body",
                    vec![Problem::new("body", e.body_text())],
                )
            }
        })?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                vec![Problem::new("body", format!("is not valid JSON: {e}"))],
            )
        })
    }
}

#[derive(Serialize)]
struct VersionJson {
    ts: u64,
    region: String,
}

impl From<&Version> for VersionJson {
    fn from(v: &Version) -> Self {
        VersionJson {
            ts: v.ts(),
            region: v.region.clone(),
        }
    }
}

#[derive(Serialize)]
struct Written {
    id: Uuid,
    version: VersionJson,
}

fn rfc3339(ms: u64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn user_json(u: &UserView) -> Value {
    let mut v = json!({
        "id": u.id,
        "email": u.email,
        "phone": u.phone,
        "status": u.status,
        "profile": u.profile,
        "version": VersionJson::from(&u.version),
        "created_at": rfc3339(u.created_at_ms),
        "updated_at": rfc3339(u.updated_at_ms),
    });
    if let Some(into) = u.merged_into {
        v["merged_into"] = json!(into);
    }
    v
}

/// Runs a blocking store operation off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, UserError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => {
            tracing::error!(error = %e, "blocking task failed");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                vec![],
            ))
        }
    }
}

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::invalid(vec![Problem::new("id", "must be a UUID")]))
}

async fn create_user(
    State(s): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let input = validate::new_user(&body, s.users.min_password()).map_err(ApiError::invalid)?;
    let users = s.users.clone();
    let (id, version) = blocking(move || users.create(input)).await?;
    Ok((
        StatusCode::CREATED,
        Json(Written {
            id,
            version: (&version).into(),
        }),
    )
        .into_response())
}

async fn get_user(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let users = s.users.clone();
    let view = blocking(move || users.get(&id)).await?;
    Ok(Json(user_json(&view)))
}

async fn find_user(
    State(s): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params: HashMap<String, String> =
        serde_urlencoded::from_str(query.as_deref().unwrap_or("")).map_err(|_| {
            ApiError::invalid(vec![Problem::new("query", "is not a valid query string")])
        })?;
    let mut problems: Vec<Problem> = params
        .keys()
        .filter(|k| *k != "email" && *k != "phone")
        .map(|k| Problem::new(k.clone(), "is not a known query parameter"))
        .collect();
    let email = params.get("email").cloned();
    let phone = params.get("phone").cloned();
    if email.is_some() == phone.is_some() {
        problems.push(Problem::new("query", "give exactly one of email, phone"));
    }
    if !problems.is_empty() {
        return Err(ApiError::invalid(problems));
    }
    let users = s.users.clone();
    let view = blocking(move || match (email, phone) {
        (Some(e), _) => users.find_by_email(&e),
        (_, Some(p)) => users.find_by_phone(&p),
        _ => Err(UserError::NotFound),
    })
    .await?;
    Ok(Json(user_json(&view)))
}

async fn patch_user(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Written>, ApiError> {
    let id = parse_id(&id);
    let patch = validate::user_patch(&body);
    let (id, patch) = merge_problems(id, patch)?;
    let users = s.users.clone();
    let version = blocking(move || users.update(&id, patch)).await?;
    Ok(Json(Written {
        id,
        version: (&version).into(),
    }))
}

/// Reports a bad id and a bad body together.
fn merge_problems<T>(
    id: Result<Uuid, ApiError>,
    body: Result<T, Vec<Problem>>,
) -> Result<(Uuid, T), ApiError> {
    match (id, body) {
        (Ok(id), Ok(b)) => Ok((id, b)),
        (id, body) => {
            let mut details = id.err().map(|e| e.details).unwrap_or_default();
            details.extend(body.err().unwrap_or_default());
            Err(ApiError::invalid(details))
        }
    }
}

async fn put_password(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<StatusCode, ApiError> {
    let (id, password) = merge_problems(
        parse_id(&id),
        validate::new_password(&body, s.users.min_password()),
    )?;
    let users = s.users.clone();
    blocking(move || users.set_password(&id, &password)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn put_status(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let (id, status) = merge_problems(parse_id(&id), validate::new_status(&body))?;
    let users = s.users.clone();
    let version = blocking(move || users.set_status(&id, status)).await?;
    let name = match status {
        validate::SettableStatus::Active => "active",
        validate::SettableStatus::Locked => "locked",
        validate::SettableStatus::Disabled => "disabled",
    };
    Ok(Json(
        json!({"id": id, "status": name, "version": VersionJson::from(&version)}),
    ))
}

async fn delete_user(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    let users = s.users.clone();
    blocking(move || users.delete(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn login(
    State(s): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let req = validate::login(&body).map_err(ApiError::invalid)?;
    let users = s.users.clone();
    let tokens = s.tokens.clone();
    let issued = blocking(move || {
        let id = users.login(&req.login, &req.password)?;
        tokens.issue(id)
    })
    .await?;
    Ok(Json(issued.json()))
}

/// `{refresh_token}`, and nothing else.
fn refresh_token_of(body: &Value) -> Result<String, ApiError> {
    let mut problems = Vec::new();
    match body.as_object() {
        None => problems.push(Problem::new("body", "must be an object {refresh_token}")),
        Some(fields) => {
            for k in fields.keys().filter(|k| *k != "refresh_token") {
                problems.push(Problem::new(
                    k.chars().take(64).collect::<String>(),
                    "is not a known field",
                ));
            }
            match fields.get("refresh_token") {
                Some(Value::String(t)) if !t.is_empty() && t.len() <= 512 => {
                    if problems.is_empty() {
                        return Ok(t.clone());
                    }
                }
                _ => problems.push(Problem::new(
                    "refresh_token",
                    "is required (the refresh token a login or refresh returned)",
                )),
            }
        }
    }
    Err(ApiError::invalid(problems))
}

fn token_error(e: crate::tokens::TokenError) -> ApiError {
    match e {
        crate::tokens::TokenError::Refused(r) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            r.code(),
            vec![Problem::new("refresh_token", "log in again")],
        ),
        crate::tokens::TokenError::User(u) => u.into(),
    }
}

async fn refresh(
    State(s): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let token = refresh_token_of(&body)?;
    let tokens = s.tokens.clone();
    let issued = tokio::task::spawn_blocking(move || tokens.refresh(&token))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", vec![]))?
        .map_err(token_error)?;
    Ok(Json(issued.json()))
}

async fn logout(
    State(s): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<StatusCode, ApiError> {
    let token = refresh_token_of(&body)?;
    let tokens = s.tokens.clone();
    tokio::task::spawn_blocking(move || tokens.logout(&token))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", vec![]))?
        .map_err(token_error)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn jwks(State(s): State<AppState>) -> Result<Response, ApiError> {
    let tokens = s.tokens.clone();
    let set = blocking(move || tokens.jwks()).await?;
    let mut resp = Json(set).into_response();
    // Verifiers may cache it this long; a new key is published well before it signs.
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("public, max-age=300"),
    );
    Ok(resp)
}

async fn import(
    State(s): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let items = validate::import(&body, s.max_import_items).map_err(ApiError::invalid)?;
    let users = s.users.clone();
    let results = blocking(move || users.import(items)).await?;
    Ok(Json(Value::Array(
        results
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let outcome = match r.outcome {
                    ImportOutcome::Created => "created",
                    ImportOutcome::Merged => "merged",
                };
                // `status` repeats `outcome` under the name most import tools use.
                json!({"index": i, "id": r.id, "outcome": outcome, "status": outcome})
            })
            .collect(),
    )))
}

async fn digest(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let users = s.users.clone();
    let (count, digest, unkeyed) = blocking(move || {
        let (count, digest) = users.digest()?;
        Ok((count, digest, users.store().unkeyed_records()?))
    })
    .await?;
    Ok(Json(json!({
        "count": count,
        "digest": digest,
        "region": s.users.region(),
        "unkeyed": unkeyed,
    })))
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(s): State<AppState>) -> Response {
    if s.ready.load(Ordering::SeqCst) {
        Json(json!({"status": "ready", "region": s.users.region()})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready"})),
        )
            .into_response()
    }
}

async fn metrics_text(State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

/// The scope a request needs: `admin` under `/v1/admin/`, `read` for reads, lookups
/// and logins, `write` for every other change.
fn required_scope(method: &axum::http::Method, path: &str) -> Scope {
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
async fn require_api_key(
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
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            vec![Problem::new(
                "authorization",
                "a valid 'Bearer <api key>' is required",
            )],
        )
        .into_response();
    };
    let needed = required_scope(req.method(), req.uri().path());
    if !scopes.contains(needed) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            vec![Problem::new(
                "authorization",
                format!("this API key lacks the '{}' scope", needed.name()),
            )],
        )
        .into_response();
    }
    next.run(req).await
}

/// Checks the request's signature (`crate::signing`): refused with 401 and the reason
/// when it is missing but required, invalid, expired or replayed.
async fn check_signature(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let Some(verifier) = s.signatures.clone() else {
        return next.run(req).await;
    };
    let jwt = req
        .headers()
        .get(crate::signing::HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let Some(jwt) = jwt else {
        if verifier.required() {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "signature_required",
                vec![Problem::new(
                    crate::signing::HEADER,
                    "this node accepts only signed requests",
                )],
            )
            .into_response();
        }
        return next.run(req).await;
    };
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, s.max_body_bytes).await else {
        return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", vec![])
            .into_response();
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |p| p.as_str())
        .to_string();
    let now_s = s.users.clock_now_ms() / 1000;
    if let Err(r) = verifier.verify(&jwt, parts.method.as_str(), &path, &body, now_s) {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            r.code,
            vec![Problem::new(crate::signing::HEADER, r.reason)],
        )
        .into_response();
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(body)))
        .await
}

/// The per-address token bucket in front of logins and lookups: 429 `rate_limited`
/// with `Retry-After` when an address has used its burst.
async fn limit_rate(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let route = match (req.method(), req.uri().path()) {
        (&axum::http::Method::POST, "/v1/login") => "login",
        (&axum::http::Method::GET, "/v1/users") => "lookup",
        _ => return next.run(req).await,
    };
    let Some(limiter) = &s.rate_limit else {
        return next.run(req).await;
    };
    let from_header = s.client_ip_header.as_ref().and_then(|h| {
        req.headers()
            .get(h)?
            .to_str()
            .ok()?
            .split(',')
            .next()?
            .trim()
            .parse::<std::net::IpAddr>()
            .ok()
    });
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
        return ApiError::new(
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
        .into_response();
    }
    next.run(req).await
}

/// Counts and times every request by route template (never the raw path, which
/// holds user ids).
async fn track(req: Request, next: Next) -> Response {
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

async fn not_found() -> ApiError {
    ApiError::not_found()
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", vec![])
}

pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let (admin, internal) = crate::admin::routes(&state);
    let v1 = Router::new()
        .route("/v1/users", post(create_user).get(find_user))
        .route("/v1/users/import", post(import))
        .route(
            "/v1/users/{id}",
            get(get_user).patch(patch_user).delete(delete_user),
        )
        .route("/v1/users/{id}/password", put(put_password))
        .route("/v1/users/{id}/status", put(put_status))
        .route("/v1/login", post(login))
        .route("/v1/token/refresh", post(refresh))
        .route("/v1/logout", post(logout))
        .route("/v1/admin/digest", get(digest))
        .merge(admin)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            check_signature,
        ))
        .route_layer(middleware::from_fn_with_state(state.clone(), limit_rate))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/metrics", get(metrics_text))
        .merge(v1)
        .merge(internal)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(track))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
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
