//! Sessions: `/v1/login`, `/v1/token/refresh`, `/v1/logout`, and the public keys
//! tokens verify with (`/.well-known/jwks.json`).

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use crate::accounts::error::Problem;
use crate::accounts::input;
use crate::api::error::{no_content, no_store, ApiError};
use crate::api::extract::{blocking, hashing, JsonBody};
use crate::api::state::AppState;

#[utoipa::path(post, path = "/v1/login", tag = "sessions", security(("api_key" = [])), request_body = crate::api::schema::Login, responses((status = 200, description = "logged in", body = crate::api::schema::Tokens), (status = 400, description = "invalid request: every problem, by field", body = crate::api::schema::ErrorBody), (status = 413, description = "body too large", body = crate::api::schema::ErrorBody), (status = 415, description = "not application/json", body = crate::api::schema::ErrorBody), (status = 401, description = "no valid API key; invalid_credentials; second_factor_required (the password was right: send it again with totp or recovery_code); invalid_second_factor (counted like a wrong password)", body = crate::api::schema::ErrorBody), (status = 403, description = "the key's scopes do not allow it", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody), (status = 429, description = "too many attempts or requests: retry after `retry_after_s`", body = crate::api::schema::ErrorBody)))]
pub async fn login(
    State(s): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let req = input::login(&body).map_err(ApiError::invalid)?;
    let users = s.users.clone();
    let tokens = s.tokens.clone();
    let (issued, hold) = hashing(&s.hashing, move || {
        let (result, hold) = users.login_held(&req.login, &req.password, req.factor.as_ref());
        let issued = result.and_then(|(id, credentials)| tokens.issue(id, credentials));
        Ok::<_, ApiError>((issued, hold))
    })
    .await?;
    // A failure is answered as late as the slowest one (`Users::login_held`), without
    // holding a thread or a hashing place meanwhile.
    tokio::time::sleep(hold).await;
    Ok(no_store(issued?.json()))
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

#[utoipa::path(post, path = "/v1/token/refresh", tag = "sessions", security(("api_key" = [])), request_body = crate::api::schema::RefreshToken, responses((status = 200, description = "a new pair; the old refresh token is spent", body = crate::api::schema::Tokens), (status = 400, description = "invalid request: every problem, by field", body = crate::api::schema::ErrorBody), (status = 413, description = "body too large", body = crate::api::schema::ErrorBody), (status = 415, description = "not application/json", body = crate::api::schema::ErrorBody), (status = 401, description = "no valid API key", body = crate::api::schema::ErrorBody), (status = 403, description = "the key's scopes do not allow it", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn refresh(
    State(s): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let token = refresh_token_of(&body)?;
    let tokens = s.tokens.clone();
    let issued = blocking(move || tokens.refresh(&token)).await?;
    Ok(no_store(issued.json()))
}

#[utoipa::path(post, path = "/v1/logout", tag = "sessions", security(("api_key" = [])), request_body = crate::api::schema::RefreshToken, responses((status = 204, description = "the token family is revoked in every region"), (status = 400, description = "invalid request: every problem, by field", body = crate::api::schema::ErrorBody), (status = 413, description = "body too large", body = crate::api::schema::ErrorBody), (status = 415, description = "not application/json", body = crate::api::schema::ErrorBody), (status = 401, description = "no valid API key", body = crate::api::schema::ErrorBody), (status = 403, description = "the key's scopes do not allow it", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn logout(
    State(s): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let token = refresh_token_of(&body)?;
    let tokens = s.tokens.clone();
    blocking(move || tokens.logout(&token)).await?;
    Ok(no_content())
}

#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "sessions", responses((status = 200, description = "the keys access tokens verify with", body = crate::api::schema::Jwks), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn jwks(State(s): State<AppState>) -> Result<Response, ApiError> {
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
