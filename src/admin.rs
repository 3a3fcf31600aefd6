//! Operator endpoints for the retry and dead-letter queues, the fault switches (only
//! with `[faults] enabled`), and the internal endpoints peers use for anti-entropy.
//! Paths and shapes are a contract (the `authsync dlq` commands use them).
//!
//! - `GET /v1/admin/retry?limit=&after=` → `{count, bytes, max_entries, max_bytes,
//!   entries: [entry], next_after}`
//! - `GET /v1/admin/dead-letters?limit=&after=` → `{count, entries: [entry], next_after}`
//! - `GET /v1/admin/dead-letters/{id}` → entry
//! - `POST /v1/admin/dead-letters/{id}/replay` → `{id, outcome}` (applied, merged,
//!   skipped), or 409 `replay_failed` with the reason; the entry then stays
//! - `DELETE /v1/admin/dead-letters/{id}` → 204
//! - `GET /v1/admin/api-keys` → `{keys: [{id, name, scopes, source, created_at_ms,
//!   revoked_at_ms}]}`; `POST /v1/admin/api-keys` `{name, scopes}` → 201 with the same
//!   fields and `key`, the only time the key is shown; `DELETE /v1/admin/api-keys/{id}`
//!   → the key, now with `revoked_at_ms` (replicated: revoked in every region)
//! - `POST /v1/admin/signing-keys/rotate` → 201 `{kid, signs_from_ms}`: a new token
//!   signing key for this region, published now, signing from `signs_from_ms`
//! - `GET|PUT /v1/admin/faults` → `{keys_unavailable, apply_failures, poisoned_ids,
//!   clock_offset_ms}`
//!
//! An entry is `{id, event_id, source_region, topic, partition, offset, record_id,
//! version, reason, attempts, first_failed_ms, next_attempt_ms, dead_at_ms, last_error,
//! bytes, history: [{at_ms, error}]}` — never the event itself.

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use prost::Message as _;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::antientropy::{self, FetchRequest, FetchResponse, StampJson, Stamps, MAX_FETCH};
use crate::api::{ApiError, AppState, JsonBody};
use crate::faults::FaultState;
use crate::retry::{entry_json, Replayed};
use crate::store::{StoreError, BUCKETS};
use crate::users::{Applied, UserError};
use crate::validate::Problem;

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    limit: Option<String>,
    after: Option<String>,
}

impl Page {
    fn parse(&self) -> Result<(usize, u64), ApiError> {
        let mut problems = Vec::new();
        let limit = match self.limit.as_deref().map(str::parse::<usize>) {
            None => DEFAULT_PAGE,
            Some(Ok(n)) if (1..=MAX_PAGE).contains(&n) => n,
            Some(_) => {
                problems.push(Problem::new(
                    "limit",
                    format!("must be a number from 1 to {MAX_PAGE}"),
                ));
                0
            }
        };
        let after = match self.after.as_deref().map(str::parse::<u64>) {
            None => 0,
            Some(Ok(n)) => n,
            Some(_) => {
                problems.push(Problem::new("after", "must be an entry id"));
                0
            }
        };
        if problems.is_empty() {
            Ok((limit, after))
        } else {
            Err(ApiError::invalid(problems))
        }
    }
}

fn query<T: serde::de::DeserializeOwned>(raw: Option<String>) -> Result<T, ApiError> {
    serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::invalid(vec![Problem::new("query", e.to_string())]))
}

/// A store operation off the async workers, its errors answered as the API does.
async fn run<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    crate::api::blocking(move || f().map_err(UserError::Store)).await
}

fn dead_letter_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
        ApiError::invalid(vec![Problem::new(
            "id",
            "must be a dead-letter id (a positive integer)",
        )])
    })
}

fn next_after(entries: &[crate::proto::RetryEntry], limit: usize) -> Value {
    match entries.last() {
        Some(e) if entries.len() == limit => json!(e.id),
        _ => Value::Null,
    }
}

async fn list_retry(
    State(s): State<AppState>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> Result<Json<Value>, ApiError> {
    let (limit, after) = query::<Page>(raw)?.parse()?;
    let q = s.retry.clone();
    let entries = run(move || q.list_retry(after, limit)).await?;
    let (count, bytes, _) = s.retry.sizes();
    let policy = s.retry.policy();
    Ok(Json(json!({
        "count": count,
        "bytes": bytes,
        "max_entries": policy.max_entries,
        "max_bytes": policy.max_bytes,
        "entries": entries.iter().map(entry_json).collect::<Vec<_>>(),
        "next_after": next_after(&entries, limit),
    })))
}

async fn list_dead(
    State(s): State<AppState>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> Result<Json<Value>, ApiError> {
    let (limit, after) = query::<Page>(raw)?.parse()?;
    let q = s.retry.clone();
    let entries = run(move || q.list_dead(after, limit)).await?;
    let (_, _, count) = s.retry.sizes();
    Ok(Json(json!({
        "count": count,
        "entries": entries.iter().map(entry_json).collect::<Vec<_>>(),
        "next_after": next_after(&entries, limit),
    })))
}

async fn show_dead(
    State(s): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = dead_letter_id(&raw)?;
    let q = s.retry.clone();
    match run(move || q.get_dead(id)).await? {
        Some(e) => Ok(Json(entry_json(&e))),
        None => Err(ApiError::not_found()),
    }
}

async fn replay_dead(
    State(s): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = dead_letter_id(&raw)?;
    let (q, users) = (s.retry.clone(), s.users.clone());
    match run(move || q.replay_dead(&users, id)).await? {
        Replayed::NotFound => Err(ApiError::not_found()),
        Replayed::Done(applied) => {
            let outcome = match applied {
                Applied::Applied => "applied",
                Applied::Merged => "merged",
                Applied::Skipped => "skipped",
            };
            tracing::info!(entry = id, outcome, "dead letter replayed");
            Ok(Json(json!({"id": id, "outcome": outcome})).into_response())
        }
        Replayed::Failed(reason) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "replay_failed",
            vec![Problem::new("event", reason)],
        )),
    }
}

async fn drop_dead(
    State(s): State<AppState>,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = dead_letter_id(&raw)?;
    let q = s.retry.clone();
    if run(move || q.drop_dead(id)).await? {
        tracing::info!(entry = id, "dead letter dropped by an operator");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found())
    }
}

async fn list_api_keys(State(s): State<AppState>) -> Json<Value> {
    Json(json!({"keys": s.api_keys.list()}))
}

async fn add_api_key(
    State(s): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let mut problems = Vec::new();
    let Some(fields) = body.as_object() else {
        return Err(ApiError::invalid(vec![Problem::new(
            "body",
            "must be an object {name, scopes}",
        )]));
    };
    for k in fields
        .keys()
        .filter(|k| !["name", "scopes"].contains(&k.as_str()))
    {
        problems.push(Problem::new(
            k.chars().take(64).collect::<String>(),
            "unknown field",
        ));
    }
    let name = match fields.get("name") {
        Some(Value::String(n)) => n.clone(),
        _ => {
            problems.push(Problem::new("name", "is required (a string)"));
            String::new()
        }
    };
    let scopes = match fields.get("scopes") {
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
            let names: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            crate::apikeys::Scopes::parse(&names)
                .map_err(|e| problems.push(Problem::new("scopes", e)))
                .ok()
        }
        _ => {
            problems.push(Problem::new(
                "scopes",
                "is required (a list of read, write, admin)",
            ));
            None
        }
    };
    let (Some(scopes), true) = (scopes, problems.is_empty()) else {
        return Err(ApiError::invalid(problems));
    };
    let keys = s.api_keys.clone();
    let users = s.users.clone();
    let (key, info) = crate::api::blocking(move || {
        keys.add(users.entries(), &name, scopes, users.clock_now_ms())
            .map_err(key_error)
    })
    .await?;
    tracing::info!(id = %info.id, "API key added");
    let mut out = serde_json::to_value(info).unwrap_or(Value::Null);
    out["key"] = Value::String(key);
    Ok((StatusCode::CREATED, Json(out)))
}

async fn revoke_api_key(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<crate::apikeys::KeyInfo>, ApiError> {
    let keys = s.api_keys.clone();
    let users = s.users.clone();
    let info = crate::api::blocking(move || {
        keys.revoke(users.entries(), &id, users.clock_now_ms())
            .map_err(key_error)
    })
    .await?;
    tracing::info!(id = %info.id, "API key revoked");
    Ok(Json(info))
}

fn key_error(e: crate::apikeys::KeyError) -> UserError {
    match e {
        crate::apikeys::KeyError::Invalid(p) => UserError::Invalid(vec![Problem::new("name", p)]),
        crate::apikeys::KeyError::NotFound(_) => UserError::NotFound,
        crate::apikeys::KeyError::User(u) => u,
    }
}

async fn rotate_signing_key(
    State(s): State<AppState>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let tokens = s.tokens.clone();
    let out = crate::api::blocking(move || tokens.rotate()).await?;
    tracing::info!(kid = %out["kid"], "signing key published");
    Ok((StatusCode::CREATED, Json(out)))
}

/// This region's master key versions and what still uses each: the records and user
/// keys wrapped under it here, and the signing keys sealed under it. A version that
/// nothing uses can be retired (`authsync keys retire`).
async fn key_usage(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let (users, tokens) = (s.users.clone(), s.tokens.clone());
    let out = crate::api::blocking(move || {
        let usage = users.key_usage()?;
        let seeds = tokens.seeds_by_version()?;
        let (versions, active) = users.keyring().own_versions();
        let count =
            |m: &std::collections::BTreeMap<u32, u64>, v: u32| m.get(&v).copied().unwrap_or(0);
        Ok::<_, UserError>(json!({
            "region": users.region(),
            "active": active,
            "versions": versions.iter().map(|&v| json!({
                "version": v,
                "records": count(&usage.records, v),
                "user_keys": count(&usage.user_keys, v),
                "signing_keys": count(&seeds, v),
            })).collect::<Vec<_>>(),
        }))
    })
    .await?;
    Ok(Json(out))
}

async fn get_faults(State(s): State<AppState>) -> Json<FaultState> {
    Json(s.users.faults().state())
}

async fn put_faults(
    State(s): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Json<FaultState>, ApiError> {
    let change: FaultState = serde_json::from_value(body)
        .map_err(|e| ApiError::invalid(vec![Problem::new("body", e.to_string())]))?;
    if let Some(regions) = &change.keys_unavailable {
        let keyring = s.users.keyring();
        let unknown: Vec<Problem> = regions
            .iter()
            .filter(|r| !keyring.regions().any(|k| k == r.as_str()))
            .map(|r| {
                Problem::new(
                    "keys_unavailable",
                    format!("{r:?} is not a region of this deployment"),
                )
            })
            .collect();
        if !unknown.is_empty() {
            return Err(ApiError::invalid(unknown));
        }
    }
    if let Some(o) = change.clock_offset_ms {
        if o.unsigned_abs() > crate::faults::MAX_CLOCK_OFFSET_MS.unsigned_abs() {
            return Err(ApiError::invalid(vec![Problem::new(
                "clock_offset_ms",
                format!(
                    "must be within ±{} ms (a day)",
                    crate::faults::MAX_CLOCK_OFFSET_MS
                ),
            )]));
        }
    }
    tracing::warn!(?change, "fault switches changed");
    s.users.faults().set(change);
    Ok(Json(s.users.faults().state()))
}

/// Accepts requests signed by a peer region of this deployment (the signature covers
/// the body too).
async fn require_peer(
    State(s): State<AppState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, antientropy::MAX_SIGNED_BODY).await else {
        return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", vec![])
            .into_response();
    };
    let verdict = match headers
        .get(antientropy::PEER_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        None => Err("a peer signature is required"),
        Some(h) => antientropy::verify(
            &s.users.keyring(),
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
        Err(problem) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            vec![Problem::new(antientropy::PEER_HEADER, problem)],
        )
        .into_response(),
    }
}

async fn internal_digests(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let users = s.users.clone();
    let d = run(move || antientropy::digests(&users)).await?;
    Ok(Json(json!(d)))
}

async fn internal_bucket(
    State(s): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<Stamps>, ApiError> {
    let bucket = raw
        .parse::<usize>()
        .ok()
        .filter(|b| *b < BUCKETS)
        .ok_or_else(|| {
            ApiError::invalid(vec![Problem::new(
                "bucket",
                format!("must be a number below {BUCKETS}"),
            )])
        })?;
    let users = s.users.clone();
    let stamps = run(move || users.store().stamps_in(bucket, bucket + 1)).await?;
    Ok(Json(Stamps {
        stamps: stamps.iter().map(StampJson::from).collect(),
    }))
}

async fn internal_records(
    State(s): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Json<FetchResponse>, ApiError> {
    let req: FetchRequest = serde_json::from_value(body)
        .map_err(|e| ApiError::invalid(vec![Problem::new("ids", e.to_string())]))?;
    if req.ids.len() > MAX_FETCH {
        return Err(ApiError::invalid(vec![Problem::new(
            "ids",
            format!("at most {MAX_FETCH} per request"),
        )]));
    }
    let users = s.users.clone();
    let (records, user_keys) = run(move || {
        let b64 = |bytes: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(bytes);
        let (mut records, mut keys) = (Vec::with_capacity(req.ids.len()), Vec::new());
        for id in &req.ids {
            // Sent as stored: ciphertext and wrapped keys, with the MACs the receiver
            // checks.
            if let Some(r) = users.store().get(id.as_bytes())? {
                if !r.tombstone {
                    if let Some(k) = users.store().get_user_key(id.as_bytes())? {
                        keys.push(b64(k.encode_to_vec()));
                    }
                }
                records.push(b64(r.encode_to_vec()));
            }
        }
        Ok((records, keys))
    })
    .await?;
    Ok(Json(FetchResponse { records, user_keys }))
}

/// Admin routes (behind the API key) and internal routes (behind peer signatures).
pub fn routes(state: &AppState) -> (Router<AppState>, Router<AppState>) {
    let mut admin = Router::new()
        .route("/v1/admin/retry", get(list_retry))
        .route("/v1/admin/dead-letters", get(list_dead))
        .route(
            "/v1/admin/dead-letters/{id}",
            get(show_dead).delete(drop_dead),
        )
        .route("/v1/admin/dead-letters/{id}/replay", post(replay_dead))
        .route("/v1/admin/api-keys", get(list_api_keys).post(add_api_key))
        .route("/v1/admin/signing-keys/rotate", post(rotate_signing_key))
        .route("/v1/admin/keys/usage", get(key_usage))
        .route(
            "/v1/admin/api-keys/{id}",
            axum::routing::delete(revoke_api_key),
        );
    if state.faults_enabled {
        admin = admin.route("/v1/admin/faults", get(get_faults).put(put_faults));
    }
    let internal = Router::new()
        .route("/v1/internal/digests", get(internal_digests))
        .route("/v1/internal/buckets/{bucket}", get(internal_bucket))
        .route("/v1/internal/records", post(internal_records))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_peer));
    (admin, internal)
}
