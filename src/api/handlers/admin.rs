//! `/v1/admin/`: operator endpoints for the retry and dead-letter queues, API keys,
//! signing keys, master key usage, the digest, and the fault switches (only with
//! `[faults] enabled`).
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

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::accounts::api_keys::{KeyInfo, Scopes};
use crate::accounts::error::{Applied, Problem, UserError};
use crate::api::error::{created, no_content, ApiError};
use crate::api::extract::{blocking, query, JsonBody};
use crate::api::state::AppState;
use crate::common::faults::{FaultState, MAX_CLOCK_OFFSET_MS};
use crate::proto;
use crate::replication::retry_queue::{entry_json, Replayed};

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

fn dead_letter_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
        ApiError::invalid(vec![Problem::new(
            "id",
            "must be a dead-letter id (a positive integer)",
        )])
    })
}

fn next_after(entries: &[proto::RetryEntry], limit: usize) -> Value {
    match entries.last() {
        Some(e) if entries.len() == limit => json!(e.id),
        _ => Value::Null,
    }
}

#[utoipa::path(get, path = "/v1/admin/retry", tag = "admin", security(("api_key" = [])), params(("limit" = Option<String>, Query, description = "1 to 1000, default 100"), ("after" = Option<String>, Query, description = "the last id of the previous page")), responses((status = 200, description = "events waiting to be applied again", body = crate::api::schema::RetryList), (status = 400, description = "invalid request: every problem, by field", body = crate::api::schema::ErrorBody), (status = 401, description = "no valid API key", body = crate::api::schema::ErrorBody), (status = 403, description = "the key's scopes do not allow it", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn list_retry(
    State(s): State<AppState>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> Result<Json<Value>, ApiError> {
    let (limit, after) = query::<Page>(raw)?.parse()?;
    let q = s.retry.clone();
    let entries = blocking(move || q.list_retry(after, limit)).await?;
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

#[utoipa::path(get, path = "/v1/admin/dead-letters", tag = "admin", security(("api_key" = [])), params(("limit" = Option<String>, Query, description = "1 to 1000, default 100"), ("after" = Option<String>, Query, description = "the last id of the previous page")), responses((status = 200, description = "events that never applied", body = crate::api::schema::DeadList), (status = 400, description = "invalid request: every problem, by field", body = crate::api::schema::ErrorBody), (status = 401, description = "no valid API key", body = crate::api::schema::ErrorBody), (status = 403, description = "the key's scopes do not allow it", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn list_dead(
    State(s): State<AppState>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> Result<Json<Value>, ApiError> {
    let (limit, after) = query::<Page>(raw)?.parse()?;
    let q = s.retry.clone();
    let entries = blocking(move || q.list_dead(after, limit)).await?;
    let (_, _, count) = s.retry.sizes();
    Ok(Json(json!({
        "count": count,
        "entries": entries.iter().map(entry_json).collect::<Vec<_>>(),
        "next_after": next_after(&entries, limit),
    })))
}

#[utoipa::path(get, path = "/v1/admin/dead-letters/{id}", tag = "admin", security(("api_key" = [])), params(("id" = String, Path, description = "dead-letter id")), responses((status = 200, description = "the dead letter", body = crate::api::schema::ParkedEvent), (status = 400, description = "invalid request: every problem, by field", body = crate::api::schema::ErrorBody), (status = 404, description = "not found", body = crate::api::schema::ErrorBody), (status = 401, description = "no valid API key", body = crate::api::schema::ErrorBody), (status = 403, description = "the key's scopes do not allow it", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn show_dead(
    State(s): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = dead_letter_id(&raw)?;
    let q = s.retry.clone();
    match blocking(move || q.get_dead(id)).await? {
        Some(e) => Ok(Json(entry_json(&e))),
        None => Err(ApiError::not_found()),
    }
}

#[utoipa::path(post, path = "/v1/admin/dead-letters/{id}/replay", tag = "admin", security(("api_key" = [])), params(("id" = String, Path, description = "dead-letter id")), responses((status = 200, description = "applied (or found not newer) and gone", body = crate::api::schema::Replayed), (status = 400, description = "invalid request: every problem, by field", body = crate::api::schema::ErrorBody), (status = 404, description = "not found", body = crate::api::schema::ErrorBody), (status = 409, description = "conflict", body = crate::api::schema::ErrorBody), (status = 401, description = "no valid API key", body = crate::api::schema::ErrorBody), (status = 403, description = "the key's scopes do not allow it", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn replay_dead(
    State(s): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = dead_letter_id(&raw)?;
    let (q, users) = (s.retry.clone(), s.users.clone());
    match blocking(move || q.replay_dead(&users, id)).await? {
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
        Replayed::Failed(reason) => Err(ApiError::replay_failed(reason)),
    }
}

#[utoipa::path(delete, path = "/v1/admin/dead-letters/{id}", tag = "admin", security(("api_key" = [])), params(("id" = String, Path, description = "dead-letter id")), responses((status = 204, description = "dropped"), (status = 400, description = "invalid request: every problem, by field", body = crate::api::schema::ErrorBody), (status = 404, description = "not found", body = crate::api::schema::ErrorBody), (status = 401, description = "no valid API key", body = crate::api::schema::ErrorBody), (status = 403, description = "the key's scopes do not allow it", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn drop_dead(
    State(s): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = dead_letter_id(&raw)?;
    let q = s.retry.clone();
    if blocking(move || q.drop_dead(id)).await? {
        tracing::info!(entry = id, "dead letter dropped by an operator");
        Ok(no_content())
    } else {
        Err(ApiError::not_found())
    }
}

#[utoipa::path(get, path = "/v1/admin/api-keys", tag = "admin", security(("api_key" = [])), responses((status = 200, description = "every key, revoked ones included", body = crate::api::schema::ApiKeys), (status = 401, description = "no valid API key", body = crate::api::schema::ErrorBody), (status = 403, description = "the key's scopes do not allow it", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn list_api_keys(State(s): State<AppState>) -> Json<Value> {
    Json(json!({"keys": s.api_keys.list()}))
}

#[utoipa::path(post, path = "/v1/admin/api-keys", tag = "admin", security(("api_key" = [])), request_body = crate::api::schema::NewApiKey, responses((status = 201, description = "added in every region; the key is shown once", body = crate::api::schema::AddedApiKey), (status = 400, description = "invalid request: every problem, by field", body = crate::api::schema::ErrorBody), (status = 413, description = "body too large", body = crate::api::schema::ErrorBody), (status = 415, description = "not application/json", body = crate::api::schema::ErrorBody), (status = 409, description = "conflict", body = crate::api::schema::ErrorBody), (status = 401, description = "no valid API key", body = crate::api::schema::ErrorBody), (status = 403, description = "the key's scopes do not allow it", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn add_api_key(
    State(s): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
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
            Scopes::parse(&names)
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
    let (key, info) =
        blocking(move || keys.add(users.entries(), &name, scopes, users.clock_now_ms())).await?;
    tracing::info!(id = %info.id, "API key added");
    let mut out = serde_json::to_value(info).unwrap_or(Value::Null);
    out["key"] = Value::String(key);
    Ok(created(Json(out)))
}

#[utoipa::path(delete, path = "/v1/admin/api-keys/{id}", tag = "admin", security(("api_key" = [])), params(("id" = String, Path, description = "key id")), responses((status = 200, description = "revoked in every region", body = crate::api::schema::ApiKey), (status = 400, description = "invalid request: every problem, by field", body = crate::api::schema::ErrorBody), (status = 404, description = "not found", body = crate::api::schema::ErrorBody), (status = 409, description = "conflict", body = crate::api::schema::ErrorBody), (status = 401, description = "no valid API key", body = crate::api::schema::ErrorBody), (status = 403, description = "the key's scopes do not allow it", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn revoke_api_key(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<KeyInfo>, ApiError> {
    let keys = s.api_keys.clone();
    let users = s.users.clone();
    let info = blocking(move || keys.revoke(users.entries(), &id, users.clock_now_ms())).await?;
    tracing::info!(id = %info.id, "API key revoked");
    Ok(Json(info))
}

#[utoipa::path(post, path = "/v1/admin/signing-keys/rotate", tag = "admin", security(("api_key" = [])), responses((status = 201, description = "a new token signing key, published before it signs", body = crate::api::schema::SigningKeyPublished), (status = 401, description = "no valid API key", body = crate::api::schema::ErrorBody), (status = 403, description = "the key's scopes do not allow it", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn rotate_signing_key(State(s): State<AppState>) -> Result<Response, ApiError> {
    let tokens = s.tokens.clone();
    let out = blocking(move || tokens.rotate()).await?;
    tracing::info!(kid = %out["kid"], "signing key published");
    Ok(created(Json(out)))
}

/// This region's master key versions and what still uses each: the records and user
/// keys wrapped under it here, and the signing keys sealed under it. A version that
/// nothing uses can be retired (`authsync keys retire`).
#[utoipa::path(get, path = "/v1/admin/keys/usage", tag = "admin", security(("api_key" = [])), responses((status = 200, description = "what each master key version still seals here", body = crate::api::schema::KeyUsage), (status = 401, description = "no valid API key", body = crate::api::schema::ErrorBody), (status = 403, description = "the key's scopes do not allow it", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn key_usage(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let (users, tokens) = (s.users.clone(), s.tokens.clone());
    let out = blocking(move || {
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

pub async fn get_faults(State(s): State<AppState>) -> Json<FaultState> {
    Json(s.users.faults().state())
}

pub async fn put_faults(
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
        if o.unsigned_abs() > MAX_CLOCK_OFFSET_MS.unsigned_abs() {
            return Err(ApiError::invalid(vec![Problem::new(
                "clock_offset_ms",
                format!("must be within ±{} ms (a day)", MAX_CLOCK_OFFSET_MS),
            )]));
        }
    }
    tracing::warn!(?change, "fault switches changed");
    s.users.faults().set(change);
    Ok(Json(s.users.faults().state()))
}

#[utoipa::path(get, path = "/v1/admin/digest", tag = "admin", security(("api_key" = [])), responses((status = 200, description = "what this region holds, to compare with the others", body = crate::api::schema::Digest), (status = 401, description = "no valid API key", body = crate::api::schema::ErrorBody), (status = 403, description = "the key's scopes do not allow it", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn digest(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let users = s.users.clone();
    let (count, digest, unkeyed) = blocking(move || {
        let (count, digest) = users.digest()?;
        Ok::<_, UserError>((count, digest, users.store().unkeyed_records()?))
    })
    .await?;
    Ok(Json(json!({
        "count": count,
        "digest": digest,
        "region": s.users.region(),
        "unkeyed": unkeyed,
    })))
}
