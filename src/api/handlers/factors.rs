//! `/v1/users/{id}/factors`: an account's second factors, as the platform acting for
//! its customer manages them: a TOTP authenticator, enrolled then confirmed with a
//! first code, and its recovery codes (shown once).

use axum::extract::{Path, State};
use axum::response::Response;
use axum::Json;
use serde_json::{json, Value};

use crate::accounts::error::Problem;
use crate::accounts::users::factors::Factors;
use crate::api::error::{no_content, no_store, ApiError};
use crate::api::extract::{blocking, parse_id, string_fields, JsonBody};
use crate::api::state::AppState;
use crate::crypto::totp;

fn factors_json(f: &Factors) -> Value {
    json!({
        "totp": f.totp,
        "totp_pending": f.totp_pending,
        "recovery_codes_left": f.recovery_codes_left,
    })
}

#[utoipa::path(get, path = "/v1/users/{id}/factors", tag = "factors", security(("api_key" = [])), params(("id" = String, Path, description = "account id (UUID)")), responses((status = 200, description = "the account's second factors (never a secret)", body = crate::api::schema::FactorsView), (status = 400, description = "invalid request: every problem, by field", body = crate::api::schema::ErrorBody), (status = 404, description = "not found", body = crate::api::schema::ErrorBody), (status = 409, description = "the account was merged into another", body = crate::api::schema::ErrorBody), (status = 401, description = "no valid API key", body = crate::api::schema::ErrorBody), (status = 403, description = "the key's scopes do not allow it", body = crate::api::schema::ErrorBody), (status = 413, description = "body too large", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn get_factors(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let users = s.users.clone();
    let f = blocking(move || users.factors(&id)).await?;
    Ok(Json(factors_json(&f)))
}

#[utoipa::path(post, path = "/v1/users/{id}/factors/totp", tag = "factors", security(("api_key" = [])), params(("id" = String, Path, description = "account id (UUID)")), responses((status = 200, description = "a new seed, pending until confirmed with a first code: `secret` (base32) and `otpauth_uri` (the QR code's content)", body = crate::api::schema::TotpEnrolment), (status = 400, description = "invalid request: every problem, by field", body = crate::api::schema::ErrorBody), (status = 404, description = "not found", body = crate::api::schema::ErrorBody), (status = 409, description = "TOTP is on already, or the account was merged", body = crate::api::schema::ErrorBody), (status = 401, description = "no valid API key", body = crate::api::schema::ErrorBody), (status = 403, description = "the key's scopes do not allow it", body = crate::api::schema::ErrorBody), (status = 413, description = "body too large", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn enrol_totp(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let users = s.users.clone();
    let enrolment = blocking(move || users.enrol_totp(&id)).await?;
    // The label the authenticator app shows: the issuer's host name.
    let issuer = s.oidc.issuer();
    let label = url::Url::parse(&issuer)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| "authsync".into());
    Ok(no_store(json!({
        "secret": totp::base32(&enrolment.secret),
        "otpauth_uri": totp::otpauth_uri(&label, &enrolment.account, &enrolment.secret),
        "digits": totp::DIGITS,
        "period_s": totp::STEP_S,
    })))
}

/// `{code}`: the authenticator's code, at most 16 bytes.
fn code_of(body: &Value) -> Result<String, ApiError> {
    string_fields(body, &["code"], 16)?
        .remove(0)
        .ok_or_else(|| {
            ApiError::invalid(vec![Problem::new(
                "code",
                "is required: the authenticator's six-digit code",
            )])
        })
}

#[utoipa::path(post, path = "/v1/users/{id}/factors/totp/confirm", tag = "factors", security(("api_key" = [])), params(("id" = String, Path, description = "account id (UUID)")), request_body = crate::api::schema::TotpCode, responses((status = 200, description = "TOTP on; ten recovery codes, shown this once", body = crate::api::schema::RecoveryCodes), (status = 400, description = "no enrolment waiting, or not its current code", body = crate::api::schema::ErrorBody), (status = 404, description = "not found", body = crate::api::schema::ErrorBody), (status = 409, description = "the account was merged into another", body = crate::api::schema::ErrorBody), (status = 401, description = "no valid API key", body = crate::api::schema::ErrorBody), (status = 403, description = "the key's scopes do not allow it", body = crate::api::schema::ErrorBody), (status = 413, description = "body too large", body = crate::api::schema::ErrorBody), (status = 415, description = "not application/json", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn confirm_totp(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let code = code_of(&body)?;
    let users = s.users.clone();
    let codes = blocking(move || users.confirm_totp(&id, &code)).await?;
    Ok(no_store(json!({ "recovery_codes": codes })))
}

#[utoipa::path(delete, path = "/v1/users/{id}/factors/totp", tag = "factors", security(("api_key" = [])), params(("id" = String, Path, description = "account id (UUID)")), responses((status = 204, description = "removed with its recovery codes; every session of the account ends"), (status = 400, description = "invalid request: every problem, by field", body = crate::api::schema::ErrorBody), (status = 404, description = "not found, or no second factor", body = crate::api::schema::ErrorBody), (status = 409, description = "the account was merged into another", body = crate::api::schema::ErrorBody), (status = 401, description = "no valid API key", body = crate::api::schema::ErrorBody), (status = 403, description = "the key's scopes do not allow it", body = crate::api::schema::ErrorBody), (status = 413, description = "body too large", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn remove_totp(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let users = s.users.clone();
    if blocking(move || users.remove_totp(&id)).await? {
        Ok(no_content())
    } else {
        Err(ApiError::not_found())
    }
}

#[utoipa::path(post, path = "/v1/users/{id}/factors/recovery-codes", tag = "factors", security(("api_key" = [])), params(("id" = String, Path, description = "account id (UUID)")), responses((status = 200, description = "a new set of ten, shown this once; the old set stops working", body = crate::api::schema::RecoveryCodes), (status = 400, description = "invalid request: every problem, by field", body = crate::api::schema::ErrorBody), (status = 404, description = "not found", body = crate::api::schema::ErrorBody), (status = 409, description = "TOTP is off, or the account was merged", body = crate::api::schema::ErrorBody), (status = 401, description = "no valid API key", body = crate::api::schema::ErrorBody), (status = 403, description = "the key's scopes do not allow it", body = crate::api::schema::ErrorBody), (status = 413, description = "body too large", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn new_recovery_codes(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let users = s.users.clone();
    let codes = blocking(move || users.new_recovery_codes(&id)).await?;
    Ok(no_store(json!({ "recovery_codes": codes })))
}
