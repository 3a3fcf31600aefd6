//! `/v1/users`: create, read, look up, change, erase and import accounts, and the
//! JSON a user is shown as.

use std::collections::HashMap;

use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use axum::Json;
use serde::Serialize;
use serde_json::{json, Value};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::accounts::error::{Problem, UserError};
use crate::accounts::input;
use crate::accounts::users::{ImportOutcome, UserView};
use crate::api::error::{created, no_content, ApiError};
use crate::api::extract::{blocking, hashing, merge_problems, parse_id, JsonBody};
use crate::api::state::AppState;
use crate::common::hlc::Version;

#[derive(Serialize)]
pub struct VersionJson {
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
pub struct Written {
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
        "email_verified": u.email_verified,
        "phone_verified": u.phone_verified,
        "version": VersionJson::from(&u.version),
        "created_at": rfc3339(u.created_at_ms),
        "updated_at": rfc3339(u.updated_at_ms),
    });
    if let Some(into) = u.merged_into {
        v["merged_into"] = json!(into);
    }
    v
}

#[utoipa::path(post, path = "/v1/users", tag = "users", security(("api_key" = [])), request_body = crate::api::schema::NewUser, responses((status = 201, description = "created", body = crate::api::schema::Written), (status = 400, description = "invalid request: every problem, by field", body = crate::api::schema::ErrorBody), (status = 413, description = "body too large", body = crate::api::schema::ErrorBody), (status = 415, description = "not application/json", body = crate::api::schema::ErrorBody), (status = 409, description = "conflict", body = crate::api::schema::ErrorBody), (status = 401, description = "no valid API key", body = crate::api::schema::ErrorBody), (status = 403, description = "the key's scopes do not allow it", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn create_user(
    State(s): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let input = input::new_user(&body, s.users.min_password()).map_err(ApiError::invalid)?;
    let users = s.users.clone();
    let (id, version) = hashing(&s.hashing, move || users.create(input)).await?;
    Ok(created(Json(Written {
        id,
        version: (&version).into(),
    })))
}

#[utoipa::path(get, path = "/v1/users/{id}", tag = "users", security(("api_key" = [])), params(("id" = String, Path, description = "account id (UUID)")), responses((status = 200, description = "the account", body = crate::api::schema::User), (status = 400, description = "invalid request: every problem, by field", body = crate::api::schema::ErrorBody), (status = 404, description = "not found", body = crate::api::schema::ErrorBody), (status = 401, description = "no valid API key", body = crate::api::schema::ErrorBody), (status = 403, description = "the key's scopes do not allow it", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn get_user(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let users = s.users.clone();
    let view = blocking(move || users.get(&id)).await?;
    Ok(Json(user_json(&view)))
}

#[utoipa::path(get, path = "/v1/users", tag = "users", security(("api_key" = [])), params(("email" = Option<String>, Query, description = "look up by email"), ("phone" = Option<String>, Query, description = "or by phone (exactly one of the two)")), responses((status = 200, description = "the account", body = crate::api::schema::User), (status = 400, description = "invalid request: every problem, by field", body = crate::api::schema::ErrorBody), (status = 404, description = "not found", body = crate::api::schema::ErrorBody), (status = 429, description = "too many attempts or requests: retry after `retry_after_s`", body = crate::api::schema::ErrorBody), (status = 401, description = "no valid API key", body = crate::api::schema::ErrorBody), (status = 403, description = "the key's scopes do not allow it", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn find_user(
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

#[utoipa::path(patch, path = "/v1/users/{id}", tag = "users", security(("api_key" = [])), params(("id" = String, Path, description = "account id (UUID)")), request_body = crate::api::schema::UserPatch, responses((status = 200, description = "changed", body = crate::api::schema::Written), (status = 400, description = "invalid request: every problem, by field", body = crate::api::schema::ErrorBody), (status = 413, description = "body too large", body = crate::api::schema::ErrorBody), (status = 415, description = "not application/json", body = crate::api::schema::ErrorBody), (status = 404, description = "not found", body = crate::api::schema::ErrorBody), (status = 409, description = "conflict", body = crate::api::schema::ErrorBody), (status = 401, description = "no valid API key", body = crate::api::schema::ErrorBody), (status = 403, description = "the key's scopes do not allow it", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn patch_user(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Written>, ApiError> {
    let id = parse_id(&id);
    let patch = input::user_patch(&body);
    let (id, patch) = merge_problems(id, patch)?;
    let users = s.users.clone();
    let version = blocking(move || users.update(&id, patch)).await?;
    Ok(Json(Written {
        id,
        version: (&version).into(),
    }))
}

#[utoipa::path(put, path = "/v1/users/{id}/password", tag = "users", security(("api_key" = [])), params(("id" = String, Path, description = "account id (UUID)")), request_body = crate::api::schema::NewPassword, responses((status = 204, description = "set; every session of the account ends"), (status = 400, description = "invalid request: every problem, by field", body = crate::api::schema::ErrorBody), (status = 413, description = "body too large", body = crate::api::schema::ErrorBody), (status = 415, description = "not application/json", body = crate::api::schema::ErrorBody), (status = 404, description = "not found", body = crate::api::schema::ErrorBody), (status = 401, description = "no valid API key", body = crate::api::schema::ErrorBody), (status = 403, description = "the key's scopes do not allow it", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn put_password(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let (id, password) = merge_problems(
        parse_id(&id),
        input::new_password(&body, s.users.min_password()),
    )?;
    let users = s.users.clone();
    hashing(&s.hashing, move || users.set_password(&id, &password)).await?;
    Ok(no_content())
}

#[utoipa::path(put, path = "/v1/users/{id}/status", tag = "users", security(("api_key" = [])), params(("id" = String, Path, description = "account id (UUID)")), request_body = crate::api::schema::NewStatus, responses((status = 200, description = "set", body = crate::api::schema::StatusChanged), (status = 400, description = "invalid request: every problem, by field", body = crate::api::schema::ErrorBody), (status = 413, description = "body too large", body = crate::api::schema::ErrorBody), (status = 415, description = "not application/json", body = crate::api::schema::ErrorBody), (status = 404, description = "not found", body = crate::api::schema::ErrorBody), (status = 409, description = "conflict", body = crate::api::schema::ErrorBody), (status = 401, description = "no valid API key", body = crate::api::schema::ErrorBody), (status = 403, description = "the key's scopes do not allow it", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn put_status(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let (id, status) = merge_problems(parse_id(&id), input::new_status(&body))?;
    let users = s.users.clone();
    let version = blocking(move || users.set_status(&id, status)).await?;
    let name = match status {
        input::SettableStatus::Active => "active",
        input::SettableStatus::Locked => "locked",
        input::SettableStatus::Disabled => "disabled",
    };
    Ok(Json(
        json!({"id": id, "status": name, "version": VersionJson::from(&version)}),
    ))
}

#[utoipa::path(delete, path = "/v1/users/{id}", tag = "users", security(("api_key" = [])), params(("id" = String, Path, description = "account id (UUID)")), responses((status = 204, description = "erased in every region"), (status = 400, description = "invalid request: every problem, by field", body = crate::api::schema::ErrorBody), (status = 404, description = "not found", body = crate::api::schema::ErrorBody), (status = 401, description = "no valid API key", body = crate::api::schema::ErrorBody), (status = 403, description = "the key's scopes do not allow it", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn delete_user(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let users = s.users.clone();
    blocking(move || users.delete(&id)).await?;
    Ok(no_content())
}

#[utoipa::path(post, path = "/v1/users/import", tag = "users", security(("api_key" = [])), request_body = Vec<crate::api::schema::ImportItem>, responses((status = 200, description = "one result per item, in order", body = Vec<crate::api::schema::ImportResult>), (status = 400, description = "invalid request: every problem, by field", body = crate::api::schema::ErrorBody), (status = 413, description = "body too large", body = crate::api::schema::ErrorBody), (status = 415, description = "not application/json", body = crate::api::schema::ErrorBody), (status = 409, description = "conflict", body = crate::api::schema::ErrorBody), (status = 401, description = "no valid API key", body = crate::api::schema::ErrorBody), (status = 403, description = "the key's scopes do not allow it", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn import(
    State(s): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let items = input::import(&body, s.max_import_items).map_err(ApiError::invalid)?;
    let users = s.users.clone();
    let results = hashing(&s.hashing, move || users.import(items)).await?;
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
                json!({
                    "index": i,
                    "id": r.id,
                    "outcome": outcome,
                    "status": outcome,
                    "legacy_hash_kept": r.legacy_hash_kept,
                })
            })
            .collect(),
    )))
}
