//! Layer 4, the HTTP API (JSON). Paths and shapes here are a contract other tools
//! rely on.
//!
//! This file only builds the routes. `state` is what handlers share, `error` is the
//! one place a status is chosen (every error answers `{error, details: [{field,
//! problem}]}`), `extract` checks what a request carries, `middleware` runs around
//! the handlers, and `handlers/` has one file per area (users, sessions, admin, peers,
//! health), which use only `state`, `error`, `extract` and `schema` (the shapes their
//! OpenAPI attributes name) of this layer; `openapi` gathers them into
//! `/openapi.json`. The API may use every layer below it; only the node uses it.

pub mod config;
pub mod delivery;
pub mod error;
pub mod extract;
pub mod handlers;
pub mod middleware;
pub mod openapi;
pub mod schema;
pub mod state;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};
use axum::Router;

use crate::api::error::ApiError;
use crate::api::handlers::{account_tokens, admin, factors, health, oauth, peers, sessions, users};
use crate::api::state::AppState;

async fn not_found() -> ApiError {
    ApiError::not_found()
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// `/metrics` alone, for a listener of its own (`http.metrics_listen`).
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(health::metrics_text))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// The API. `/metrics` is on it unless `metrics_apart` (it then has a listener of its
/// own, [`metrics_router`]).
pub fn router(state: AppState, max_body_bytes: usize, metrics_apart: bool) -> Router {
    let mut admin = Router::new()
        .route("/v1/admin/digest", get(admin::digest))
        .route("/v1/admin/retry", get(admin::list_retry))
        .route("/v1/admin/dead-letters", get(admin::list_dead))
        .route(
            "/v1/admin/dead-letters/{id}",
            get(admin::show_dead).delete(admin::drop_dead),
        )
        .route(
            "/v1/admin/dead-letters/{id}/replay",
            post(admin::replay_dead),
        )
        .route(
            "/v1/admin/api-keys",
            get(admin::list_api_keys).post(admin::add_api_key),
        )
        .route(
            "/v1/admin/signing-keys/rotate",
            post(admin::rotate_signing_key),
        )
        .route("/v1/admin/keys/usage", get(admin::key_usage))
        .route(
            "/v1/admin/oauth-clients",
            get(oauth::list_clients).post(oauth::add_client),
        )
        .route("/v1/admin/oauth-clients/{id}", delete(oauth::remove_client))
        .route("/v1/admin/api-keys/{id}", delete(admin::revoke_api_key));
    if state.faults_enabled {
        admin = admin.route(
            "/v1/admin/faults",
            get(admin::get_faults).put(admin::put_faults),
        );
    }
    // Peers only: behind the peer signature, not the API key.
    let internal = Router::new()
        .route("/v1/internal/digests", get(peers::internal_digests))
        .route("/v1/internal/buckets/{bucket}", get(peers::internal_bucket))
        .route("/v1/internal/records", post(peers::internal_records))
        .route(
            "/v1/internal/oauth/exchange",
            post(peers::internal_exchange),
        )
        .route(
            "/v1/internal/account-tokens/redeem",
            post(account_tokens::internal_redeem),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::require_peer,
        ));
    let v1 = Router::new()
        .route("/v1/users", post(users::create_user).get(users::find_user))
        .route("/v1/users/import", post(users::import))
        .route(
            "/v1/users/{id}",
            get(users::get_user)
                .patch(users::patch_user)
                .delete(users::delete_user),
        )
        .route("/v1/users/{id}/password", put(users::put_password))
        .route("/v1/users/{id}/status", put(users::put_status))
        .route("/v1/users/{id}/factors", get(factors::get_factors))
        .route("/v1/users/{id}/account-tokens", post(account_tokens::mint))
        .route("/v1/account-tokens/redeem", post(account_tokens::redeem))
        .route(
            "/v1/users/{id}/factors/totp",
            post(factors::enrol_totp).delete(factors::remove_totp),
        )
        .route(
            "/v1/users/{id}/factors/totp/confirm",
            post(factors::confirm_totp),
        )
        .route(
            "/v1/users/{id}/factors/recovery-codes",
            post(factors::new_recovery_codes),
        )
        .route("/v1/login", post(sessions::login))
        .route("/v1/token/refresh", post(sessions::refresh))
        .route("/v1/logout", post(sessions::logout))
        .merge(admin)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::check_signature,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::limit_rate,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::require_api_key,
        ));
    let mut public = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/.well-known/jwks.json", get(sessions::jwks))
        .route("/.well-known/openid-configuration", get(oauth::discovery))
        .merge(
            Router::new()
                .route(
                    "/oauth2/authorize",
                    get(oauth::authorize).post(oauth::sign_in),
                )
                .route("/oauth2/token", post(oauth::token))
                .route_layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    middleware::limit_rate,
                )),
        )
        .route("/oauth2/revoke", post(oauth::revoke))
        .route("/oauth2/introspect", post(oauth::introspect))
        .route(
            "/oauth2/logout",
            get(oauth::logout).post(oauth::end_session),
        )
        .route(
            "/oauth2/userinfo",
            get(oauth::userinfo).post(oauth::userinfo_post),
        )
        .route("/openapi.json", get(openapi::openapi_json));
    if !metrics_apart {
        public = public.route("/metrics", get(health::metrics_text));
    }
    public
        .merge(v1)
        .merge(internal)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::deadline,
        ))
        .layer(axum::middleware::from_fn(middleware::track))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}
