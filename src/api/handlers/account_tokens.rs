//! Password reset and address verification: `POST /v1/users/{id}/account-tokens`
//! makes a single-use token and hands it to the delivery hook (never to the caller);
//! `POST /v1/account-tokens/redeem` uses it, in whichever region it is brought to: a
//! token another region made is sent there ([`crate::replication::forward`]).

use axum::extract::{Path, State};
use axum::response::Response;
use axum::Json;
use serde_json::{json, Value};

use crate::accounts::error::{Problem, UserError};
use crate::accounts::input;
use crate::accounts::users::account_tokens::{token_region, Purpose};
use crate::api::error::{accepted, ApiError};
use crate::api::extract::{blocking, hashing, parse_id, string_fields as strings, JsonBody};
use crate::api::state::AppState;
use crate::replication::forward::RedeemRequest;

fn purpose_of(v: Option<&String>) -> Result<Purpose, ApiError> {
    v.and_then(|p| Purpose::parse(p)).ok_or_else(|| {
        ApiError::invalid(vec![Problem::new(
            "purpose",
            "is required: reset, verify_email or verify_phone",
        )])
    })
}

fn count(purpose: Purpose, event: &'static str) {
    metrics::counter!(crate::common::metrics::ACCOUNT_TOKENS_TOTAL, "purpose" => purpose.name(), "event" => event).increment(1);
}

#[utoipa::path(post, path = "/v1/users/{id}/account-tokens", tag = "recovery", security(("api_key" = [])), params(("id" = String, Path, description = "account id (UUID)")), request_body = crate::api::schema::NewAccountToken, responses((status = 202, description = "made and handed to the delivery hook (never in this answer)", body = crate::api::schema::AccountTokenSent), (status = 400, description = "invalid request: every problem, by field (a phone verification without a phone among them)", body = crate::api::schema::ErrorBody), (status = 403, description = "the account is locked or disabled, or the key's scopes do not allow it", body = crate::api::schema::ErrorBody), (status = 404, description = "not found", body = crate::api::schema::ErrorBody), (status = 409, description = "no delivery hook is configured, or the account was merged", body = crate::api::schema::ErrorBody), (status = 401, description = "no valid API key", body = crate::api::schema::ErrorBody), (status = 413, description = "body too large", body = crate::api::schema::ErrorBody), (status = 415, description = "not application/json", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn mint(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let fields = strings(&body, &["purpose"], 32)?;
    let purpose = purpose_of(fields[0].as_ref())?;
    let Some(sink) = s.delivery.sink() else {
        return Err(UserError::Conflict(vec![Problem::new(
            "delivery",
            "no delivery hook is configured ([delivery] webhook_url, or log for a demo)",
        )])
        .into());
    };
    let users = s.users.clone();
    let minted = blocking(move || users.mint_token(&id, purpose)).await?;
    let expires_ms = minted.expires_ms;
    s.delivery.send(minted);
    count(purpose, "minted");
    Ok(accepted(Json(json!({
        "purpose": purpose.name(),
        "expires_at_ms": expires_ms,
        "delivery": sink.name(),
    }))))
}

/// `{token, purpose, password?}`.
fn redeem_request(body: &Value) -> Result<RedeemRequest, ApiError> {
    let fields = strings(body, &["token", "purpose", "password"], 1024)?;
    let (Some(token), Some(purpose)) = (fields[0].clone(), fields[1].clone()) else {
        return Err(ApiError::invalid(vec![Problem::new(
            "token",
            "token and purpose are required",
        )]));
    };
    Ok(RedeemRequest {
        token,
        purpose,
        password: fields[2].clone(),
    })
}

/// A redemption here, of a token this region made.
async fn redeem_here(s: &AppState, req: RedeemRequest) -> Result<Json<Value>, ApiError> {
    let purpose = purpose_of(Some(&req.purpose))?;
    if let Some(p) = &req.password {
        input::new_password(&json!({"password": p}), s.users.min_password())
            .map_err(ApiError::invalid)?;
    }
    let users = s.users.clone();
    let result = hashing(&s.hashing, move || {
        Ok::<_, ApiError>(users.redeem_token(&req.token, purpose, req.password.as_deref()))
    })
    .await?;
    match result {
        Ok(done) => {
            count(purpose, "redeemed");
            Ok(Json(
                json!({"user_id": done.user, "purpose": purpose.name()}),
            ))
        }
        Err(e) => {
            count(purpose, "refused");
            Err(e.into())
        }
    }
}

#[utoipa::path(post, path = "/v1/account-tokens/redeem", tag = "recovery", security(("api_key" = [])), request_body = crate::api::schema::RedeemAccountToken, responses((status = 200, description = "used: a reset set the password (every session ends) and proved the email; a verification proved its address", body = crate::api::schema::AccountTokenRedeemed), (status = 400, description = "not a live token (unknown, used, expired, another purpose), or a password the account refuses", body = crate::api::schema::ErrorBody), (status = 401, description = "no valid API key", body = crate::api::schema::ErrorBody), (status = 403, description = "the key's scopes do not allow it", body = crate::api::schema::ErrorBody), (status = 413, description = "body too large", body = crate::api::schema::ErrorBody), (status = 415, description = "not application/json", body = crate::api::schema::ErrorBody), (status = 503, description = "the region that made it cannot be reached, overloaded, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn redeem(
    State(s): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let req = redeem_request(&body)?;
    let region = token_region(&req.token).map(str::to_string);
    match region {
        Some(r) if r != s.users.region() && s.forwarder.reaches(&r) => {
            let (status, answer) = s.forwarder.redeem(&r, &req).await.map_err(|e| {
                tracing::warn!(region = %r, error = %format!("{e:#}"), "forward a token redemption");
                ApiError::region_unreachable()
            })?;
            // Its answer, read field by field.
            match (status, answer["user_id"].as_str()) {
                (200, Some(user)) if uuid::Uuid::parse_str(user).is_ok() => {
                    Ok(Json(json!({"user_id": user, "purpose": req.purpose})))
                }
                // Its refusal, the problems read field by field.
                (400, _) => {
                    let problems: Vec<Problem> = answer["details"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .take(10)
                        .filter_map(|p| {
                            let field = p["field"].as_str().filter(|f| f.len() <= 64)?;
                            let problem = p["problem"].as_str().filter(|t| t.len() <= 300)?;
                            Some(Problem::new(field, problem))
                        })
                        .collect();
                    Err(UserError::Invalid(if problems.is_empty() {
                        vec![Problem::new("token", "is not a live token")]
                    } else {
                        problems
                    })
                    .into())
                }
                _ => Err(ApiError::region_unreachable()),
            }
        }
        _ => redeem_here(&s, req).await,
    }
}

#[utoipa::path(post, path = "/v1/internal/account-tokens/redeem", tag = "internal", security(("peer" = [])), request_body = crate::api::schema::RedeemAccountToken, responses((status = 200, description = "used here, where it was made", body = crate::api::schema::AccountTokenRedeemed), (status = 400, description = "not a live token, or a password the account refuses", body = crate::api::schema::ErrorBody), (status = 401, description = "no valid peer signature", body = crate::api::schema::ErrorBody), (status = 413, description = "body too large", body = crate::api::schema::ErrorBody), (status = 415, description = "not application/json", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn internal_redeem(
    State(s): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, ApiError> {
    redeem_here(&s, redeem_request(&body)?).await
}
