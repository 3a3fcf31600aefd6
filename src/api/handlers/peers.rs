//! `/v1/internal/`: what a peer region's anti-entropy reads here (bucket digests,
//! stamps, records as stored). Only peers of the deployment get here: the routes sit
//! behind the peer signature check (`api/middleware`).

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use crate::accounts::error::Problem;
use crate::api::error::ApiError;
use crate::api::extract::{blocking, JsonBody};
use crate::api::state::AppState;
use crate::replication::anti_entropy::{
    self, FetchRequest, FetchResponse, StampJson, Stamps, ANSWER_BUDGET, MAX_FETCH,
};
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
