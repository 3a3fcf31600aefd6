//! `/v1/internal/`: what a peer region's anti-entropy reads here (bucket digests,
//! stamps, records as stored), and the exchange of a code this region issued that a
//! client brought to the peer ([`crate::replication::forward`]). Only peers of the deployment get here: the routes sit
//! behind the peer signature check (`api/middleware`).

use axum::extract::{Path, State};
use axum::response::Response;
use axum::Json;
use serde_json::{json, Value};

use crate::accounts::error::{Problem, UserError};
use crate::api::error::{oauth_error, oauth_tokens, ApiError};
use crate::api::extract::{blocking, JsonBody};
use crate::api::state::AppState;
use crate::replication::anti_entropy::{
    self, FetchRequest, FetchResponse, StampJson, Stamps, ANSWER_BUDGET, MAX_FETCH,
};
use crate::replication::forward::ExchangeRequest;
use crate::storage::store::BUCKETS;

#[utoipa::path(get, path = "/v1/internal/digests", tag = "internal", security(("peer" = [])), responses((status = 200, description = "per-bucket digests", body = crate::api::schema::Digests), (status = 401, description = "no valid API key", body = crate::api::schema::ErrorBody), (status = 413, description = "body too large", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn internal_digests(State(s): State<AppState>) -> Result<Json<Value>, ApiError> {
    let users = s.users.clone();
    let d = blocking(move || anti_entropy::digests(&users)).await?;
    Ok(Json(json!(d)))
}

#[utoipa::path(get, path = "/v1/internal/buckets/{bucket}", tag = "internal", security(("peer" = [])), params(("bucket" = String, Path, description = "0 to 255")), responses((status = 200, description = "the stamps of one bucket", body = crate::api::schema::Stamps), (status = 400, description = "invalid request: every problem, by field", body = crate::api::schema::ErrorBody), (status = 401, description = "no valid API key", body = crate::api::schema::ErrorBody), (status = 413, description = "body too large", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn internal_bucket(
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
    let stamps = blocking(move || users.store().stamps_in(bucket, bucket + 1)).await?;
    Ok(Json(Stamps {
        stamps: stamps.iter().map(StampJson::from).collect(),
    }))
}

#[utoipa::path(post, path = "/v1/internal/records", tag = "internal", security(("peer" = [])), request_body = crate::api::schema::FetchRequest, responses((status = 200, description = "records and user keys as stored", body = crate::api::schema::FetchResponse), (status = 400, description = "invalid request: every problem, by field", body = crate::api::schema::ErrorBody), (status = 401, description = "no valid API key", body = crate::api::schema::ErrorBody), (status = 413, description = "body too large", body = crate::api::schema::ErrorBody), (status = 415, description = "not application/json", body = crate::api::schema::ErrorBody), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn internal_records(
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
    let answer = blocking(move || anti_entropy::answer(&users, &req.ids, ANSWER_BUDGET)).await?;
    Ok(Json(answer))
}

#[utoipa::path(post, path = "/v1/internal/oauth/exchange", tag = "internal", security(("peer" = [])), request_body = crate::api::schema::ForwardedExchange, responses((status = 200, description = "the tokens of a code this region issued, exchanged for the client the asking region authenticated", body = crate::api::schema::OAuthTokens), (status = 400, description = "`{error, error_description}` as RFC 6749 names them: the code is spent, expired, another client's (or its client was removed), or its verifier or redirect URI differ", body = crate::api::schema::OAuthError), (status = 401, description = "no valid peer signature", body = crate::api::schema::ErrorBody), (status = 413, description = "body too large", body = crate::api::schema::ErrorBody), (status = 415, description = "not application/json", body = crate::api::schema::ErrorBody), (status = 500, description = "server_error", body = crate::api::schema::OAuthError), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn internal_exchange(State(s): State<AppState>, JsonBody(body): JsonBody) -> Response {
    let req: ExchangeRequest = match serde_json::from_value(body) {
        Ok(r) => r,
        Err(e) => return oauth_error("invalid_request", &e.to_string()),
    };
    let long = |v: &Option<String>, max: usize| v.as_ref().is_some_and(|v| v.len() > max);
    if req.client_id.len() > 512
        || req.code.len() > 512
        || long(&req.redirect_uri, 512)
        || long(&req.code_verifier, 128)
    {
        return oauth_error("invalid_request", "a field is longer than any valid one");
    }
    let oidc = s.oidc.clone();
    let result = blocking(move || {
        Ok::<_, UserError>(oidc.clients().get(&req.client_id)?.map(|client| {
            oidc.exchange_code(
                &client,
                &req.code,
                req.redirect_uri.as_deref(),
                req.code_verifier.as_deref(),
            )
        }))
    })
    .await;
    match result {
        Ok(Some(Ok(granted))) => {
            metrics::counter!(crate::common::metrics::OIDC_TOKENS_GRANTED_TOTAL, "grant" => "authorization_code").increment(1);
            oauth_tokens(granted.json())
        }
        Ok(Some(Err(e))) => oauth_error(e.error, &e.description),
        // The client this region issued the code to is gone (removed since).
        Ok(None) => oauth_error("invalid_grant", "the code's client is not registered"),
        Err(_) => oauth_error("server_error", "try again"),
    }
}
