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

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(s): State<AppState>) -> Response {
    if s.ready.load(Ordering::SeqCst) {
        Json(json!({"status": "ready", "region": s.users.region()})).into_response()
    } else {
        not_ready(json!({"status": "not_ready"}))
    }
}

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
