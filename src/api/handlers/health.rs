//! What probes and scrapers read, without an API key: `/healthz`, `/readyz`,
//! `/metrics`.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::api::error::not_ready;
use crate::api::state::AppState;

#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "the process answers", body = crate::api::schema::Health), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, description = "ready", body = crate::api::schema::Health), (status = 503, description = "not ready yet", body = crate::api::schema::Health)))]
pub async fn readyz(State(s): State<AppState>) -> Response {
    if s.ready.load(Ordering::SeqCst) {
        Json(json!({"status": "ready", "region": s.users.region()})).into_response()
    } else {
        not_ready(json!({"status": "not_ready"}))
    }
}

#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"), (status = 503, description = "overloaded, timed out, or a key unavailable here: retry", body = crate::api::schema::ErrorBody)))]
pub async fn metrics_text(State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}
