//! What every handler and middleware shares: the services of one node.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::accounts::api_keys::ApiKeys;
use crate::accounts::tokens::Tokens;
use crate::accounts::users::Users;
use crate::api::middleware::rate_limit::RateLimiter;
use crate::api::middleware::signing::Verifier;
use crate::replication::retry_queue::RetryQueue;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    pub users: Arc<Users>,
    pub metrics: PrometheusHandle,
    /// The accepted API keys and their scopes.
    pub api_keys: Arc<ApiKeys>,
    pub ready: Arc<AtomicBool>,
    pub max_import_items: usize,
    pub retry: Arc<RetryQueue>,
    /// Whether `/v1/admin/faults` exists.
    pub faults_enabled: bool,
    pub tokens: Arc<Tokens>,
    /// The OpenID Connect provider: clients, browser sessions, codes.
    pub oidc: Arc<crate::accounts::oidc::Oidc>,
    /// Per-address limit on logins and lookups; `None` when off.
    pub rate_limit: Option<Arc<RateLimiter>>,
    /// The header naming the end user's address, when the callers set one, and how many
    /// trusted proxies append to it.
    pub client_ip_header: Option<(axum::http::HeaderName, usize)>,
    /// Checks signed requests; `None` when no client signs.
    pub signatures: Option<Arc<Verifier>>,
    pub max_body_bytes: usize,
    /// Places for password hashing in flight ([`crate::api::extract::hashing`]).
    pub hashing: Arc<tokio::sync::Semaphore>,
    /// Longest a request may take before it is answered 503 (`http.request_timeout_ms`).
    pub request_timeout: std::time::Duration,
    /// Nonces of the peer requests taken within their window.
    pub peer_nonces: Arc<crate::replication::anti_entropy::Nonces>,
    /// Sends a code exchange to the region that issued the code.
    pub forwarder: Arc<crate::replication::forward::Forwarder>,
    /// Where reset and verification tokens go.
    pub delivery: Arc<crate::api::delivery::Delivery>,
}
