//! What handlers take from a request, checked: a JSON body ([`JsonBody`]), an id, a
//! query string; and [`blocking`], which runs their store work off the async workers
//! ([`hashing`] for password work, bounded).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde_json::Value;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::accounts::error::Problem;
use crate::api::error::ApiError;

/// A JSON request body: the right content type, within the size limit, and
/// well-formed JSON. Its fields are checked by the `validate` functions.
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                let essence = v
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                essence == "application/json" || essence.ends_with("+json")
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::unsupported_media_type());
        }
        let bytes = Bytes::from_request(req, state).await?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::malformed_json(format!("is not valid JSON: {e}")))
    }
}

/// Runs a blocking operation (RocksDB, password hashing) off the async workers, its
/// error answered as [`ApiError`] answers it.
pub async fn blocking<T, E>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError>
where
    T: Send + 'static,
    E: Into<ApiError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Into::into),
        Err(e) => {
            tracing::error!(error = %e, "blocking task failed");
            Err(ApiError::internal())
        }
    }
}

/// [`blocking`] for password hashing (logins, creates, password changes, imports), in
/// one of the node's `http.max_hashing_in_flight` places: past them, refused at once
/// with [`ApiError::overloaded`], so a flood of logins waits in no thread and leaves
/// the blocking pool to replication and reads. The place is held until `f` returns,
/// even when the caller has gone.
pub async fn hashing<T, E>(
    places: &Arc<Semaphore>,
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError>
where
    T: Send + 'static,
    E: Into<ApiError> + Send + 'static,
{
    let Ok(place) = places.clone().try_acquire_owned() else {
        metrics::counter!(crate::common::metrics::OVERLOADED_TOTAL).increment(1);
        return Err(ApiError::overloaded());
    };
    blocking(move || {
        let _place = place;
        f()
    })
    .await
}

pub fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| ApiError::invalid(vec![Problem::new("id", "must be a UUID")]))
}

/// Reports a bad id and a bad body together.
pub fn merge_problems<T>(
    id: Result<Uuid, ApiError>,
    body: Result<T, Vec<Problem>>,
) -> Result<(Uuid, T), ApiError> {
    match (id, body) {
        (Ok(id), Ok(b)) => Ok((id, b)),
        (id, body) => {
            let mut details = id.err().map(ApiError::into_details).unwrap_or_default();
            details.extend(body.err().unwrap_or_default());
            Err(ApiError::invalid(details))
        }
    }
}

/// The query string `raw` as `T` (unknown parameters refused when `T` says so).
pub fn query<T: serde::de::DeserializeOwned>(raw: Option<String>) -> Result<T, ApiError> {
    serde_urlencoded::from_str(raw.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::invalid(vec![Problem::new("query", e.to_string())]))
}

/// The string fields `allowed` of a JSON object body, in that order (`None` when
/// absent or null), each 1 to `max` bytes; any other field, or another type, is a
/// problem named by its field.
pub fn string_fields(
    body: &Value,
    allowed: &[&str],
    max: usize,
) -> Result<Vec<Option<String>>, ApiError> {
    let Some(fields) = body.as_object() else {
        return Err(ApiError::invalid(vec![Problem::new(
            "body",
            "must be an object",
        )]));
    };
    let mut problems: Vec<Problem> = fields
        .keys()
        .filter(|k| !allowed.contains(&k.as_str()))
        .map(|k| {
            Problem::new(
                k.chars().take(64).collect::<String>(),
                "is not a known field",
            )
        })
        .collect();
    let mut out = Vec::new();
    for f in allowed {
        match fields.get(*f) {
            None | Some(Value::Null) => out.push(None),
            Some(Value::String(v)) if !v.is_empty() && v.len() <= max => out.push(Some(v.clone())),
            Some(_) => {
                problems.push(Problem::new(
                    *f,
                    format!("must be a string of 1 to {max} bytes"),
                ));
                out.push(None);
            }
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(ApiError::invalid(problems))
    }
}
