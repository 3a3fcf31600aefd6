//! Layer 5, the node: one region's node put together. It opens everything, serves,
//! runs the background tasks and shuts down in order; `config` gathers every
//! component's config section, `sweepers` runs the accounts' scheduled jobs,
//! `local_cluster` starts node processes (demo, bench, chaos and the tests use it) and
//! `process` is what every authsync process does around its work. It may use every
//! layer; nothing in the library uses it.
//!
//! Start-up: keyring (refused if readable by others or owned by another region) →
//! RocksDB → user service → HTTP listener. Shutdown (on the root cancellation token):
//! stop accepting and finish in-flight requests, stop the background tasks, flush the
//! WAL, close RocksDB.

pub mod config;
pub mod launcher;
pub mod local_cluster;
pub mod process;
pub mod sweepers;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accounts::users::Users;
use crate::api::{self, state::AppState};
use crate::common::faults::{Faults, FaultyClock};
use crate::common::hlc::Hlc;
use crate::common::metrics as m;
use crate::crypto::keyring::Keyring;
use crate::crypto::password::Passwords;
use crate::node::config::Config;
use crate::replication::anti_entropy;
use crate::replication::retry_queue::{self, RetryPolicy, RetryQueue};
use crate::storage::store::{Store, StoreOptions};

/// A node that has bound its listener and is serving.
pub struct Node {
    pub addr: SocketAddr,
    /// Where `/metrics` is served when it has a listener of its own.
    pub metrics_addr: Option<SocketAddr>,
    pub users: Arc<Users>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl Node {
    /// Opens the node's state and starts serving on the configured address.
    pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Node> {
        let keyring = Keyring::load(&config.keyring).context("load keyring")?;
        if keyring.owner() != config.region {
            bail!(
                "keyring {} belongs to region {}, but this node is region {}",
                config.keyring.display(),
                keyring.owner(),
                config.region
            );
        }
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("create data directory {}", config.data_dir.display()))?;
        let store = Arc::new(
            Store::open(
                &config.data_dir,
                &StoreOptions {
                    wal_sync: config.storage.wal_sync,
                    block_cache_bytes: config.storage.block_cache_mb << 20,
                },
            )
            .with_context(|| format!("open store at {}", config.data_dir.display()))?,
        );
        let passwords = Passwords::new(config.passwords.algorithm, keyring.pepper())
            .context("set up password hashing")?;
        // The clock reads through the fault switches: an offset can be set only when
        // fault injection is enabled, and is zero otherwise.
        let faults = Arc::new(Faults::default());
        let hlc = Arc::new(Hlc::new(
            config.region.clone(),
            config.clock.max_skew_ms,
            Box::new(FaultyClock(faults.clone())),
        ));
        let active = keyring
            .active_key(keyring.owner())
            .map(|k| k.version)
            .unwrap_or(0);
        if keyring.format() == crate::crypto::keyring::LEGACY_FORMAT {
            tracing::warn!(
                "keyring format 1: it holds every peer's master key and signs nothing; run \
                 `authsync keys upgrade` on the keys directory (README: Upgrading the keyrings)"
            );
        } else if keyring.accepts_legacy() {
            tracing::warn!(
                "keyring upgrade not finished: unsigned events from format 1 nodes are \
                 still accepted until `authsync keys upgrade --finish`"
            );
        }
        let users = Arc::new(
            Users::new(store, keyring, passwords, hlc, config.passwords.min_length)
                .with_faults(faults),
        );
        let queue = Arc::new(
            RetryQueue::open(
                users.store().clone(),
                RetryPolicy {
                    max_attempts: config.retry.max_attempts,
                    base_backoff_ms: config.retry.backoff_base_ms,
                    max_backoff_ms: config.retry.backoff_max_ms,
                    max_entries: config.retry.max_entries,
                    max_bytes: config.retry.max_bytes,
                    max_dead_letters: config.retry.max_dead_letters,
                    max_dead_bytes: config.retry.max_dead_bytes,
                },
            )
            .context("open retry queue")?,
        );
        let metrics = m::install(&config.region);
        metrics::gauge!(m::KEYRING_ACTIVE_VERSION).set(f64::from(active));

        let ready = Arc::new(AtomicBool::new(false));
        let tokens = Arc::new(crate::accounts::tokens::Tokens::new(
            users.clone(),
            config.tokens.clone(),
        ));
        tokens
            .ensure_signing_key()
            .context("make this region's first token signing key")?;
        let oidc = Arc::new(crate::accounts::oidc::Oidc::new(
            users.clone(),
            tokens.clone(),
            config.oidc.clone(),
        ));
        let state = AppState {
            oidc: oidc.clone(),
            tokens: tokens.clone(),
            users: users.clone(),
            metrics: metrics.clone(),
            api_keys: crate::accounts::api_keys::ApiKeys::load(&config.api_keys, users.entries())
                .context("load the API keys")?,
            ready: ready.clone(),
            max_import_items: config.max_import_items,
            retry: queue.clone(),
            faults_enabled: config.faults.enabled,
            rate_limit: (config.rate_limit.per_second > 0.0).then(|| {
                Arc::new(crate::api::middleware::rate_limit::RateLimiter::new(
                    config.rate_limit.per_second,
                    config.rate_limit.burst,
                    config.rate_limit.max_tracked,
                ))
            }),
            signatures: {
                let s = &config.request_signing;
                (s.required || !s.clients.is_empty())
                    .then(|| crate::api::middleware::signing::Verifier::new(s).map(Arc::new))
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("request_signing: {e}"))?
            },
            max_body_bytes: config.max_body_bytes,
            client_ip_header: config
                .rate_limit
                .client_ip_header
                .as_deref()
                .and_then(|h| axum::http::HeaderName::from_bytes(h.as_bytes()).ok())
                .map(|h| (h, config.rate_limit.trusted_hops)),
            hashing: Arc::new(tokio::sync::Semaphore::new(config.max_hashing_in_flight)),
            peer_nonces: Default::default(),
            request_timeout: config.request_timeout,
            delivery: Arc::new(
                crate::api::delivery::Delivery::new(&config.delivery)
                    .context("the delivery hook")?,
            ),
            forwarder: Arc::new(
                crate::replication::forward::Forwarder::new(
                    users.clone(),
                    &config.anti_entropy_peers,
                    config.anti_entropy.ca_cert.as_deref(),
                )
                .context("the HTTP client for peers")?,
            ),
        };
        if config.faults.enabled {
            tracing::warn!("fault injection is enabled: /v1/admin/faults can break this node");
        }
        let metrics_app = config
            .metrics_listen
            .map(|_| api::metrics_router(state.clone()));
        let app = api::router(state, config.max_body_bytes, metrics_app.is_some());
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listen on {}", config.listen))?;
        let addr = listener.local_addr().context("read listener address")?;
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        if config.oidc.issuer.is_empty() && addr.ip().is_unspecified() {
            tracing::warn!(
                %addr,
                "oidc.issuer is not set and the node listens on every address: its issuer \
                 names no address a platform can reach; set oidc.issuer"
            );
        }
        oidc.default_issuer(format!("{scheme}://{addr}"));

        let tracker = TaskTracker::new();
        let http_stop = shutdown.child_token();
        tracker.spawn({
            let ready = ready.clone();
            let stopping = async move {
                http_stop.cancelled().await;
                ready.store(false, Ordering::SeqCst);
            };
            let tls = config
                .tls
                .as_ref()
                .map(crate::common::tls::Acceptor::new)
                .transpose()?;
            let limits = config.serve_limits;
            crate::common::serve::serve(listener, tls, app, limits, stopping)
        });
        let metrics_addr = match (config.metrics_listen, metrics_app) {
            (Some(at), Some(metrics_app)) => {
                let listener = TcpListener::bind(at)
                    .await
                    .with_context(|| format!("listen for /metrics on {at}"))?;
                let bound = listener
                    .local_addr()
                    .context("read metrics listener address")?;
                let stop = shutdown.child_token();
                tracker.spawn(crate::common::serve::serve(
                    listener,
                    None,
                    metrics_app,
                    config.serve_limits,
                    async move { stop.cancelled().await },
                ));
                Some(bound)
            }
            _ => None,
        };
        let sources: Vec<String> = config
            .replication
            .iter()
            .flat_map(|r| r.peers.iter().map(|p| p.region.clone()))
            .collect();
        let compared: Vec<String> = config
            .anti_entropy_peers
            .iter()
            .map(|(r, _)| r.clone())
            .collect();
        m::zero_series(&sources, &compared);
        if let Err(e) = users.persist_wrap_counts() {
            tracing::warn!(error = %e, "persist the master key wrap counts");
        }
        tracker.spawn(metrics_upkeep(
            metrics,
            users.clone(),
            shutdown.child_token(),
        ));
        tracker.spawn(reload_keyring(
            users.clone(),
            config.keyring.clone(),
            Duration::from_millis(config.keys.reload_interval_ms),
            shutdown.child_token(),
        ));
        tracker.spawn(sweepers::key_recovery(
            users.clone(),
            Duration::from_millis(config.keys.rewrap_interval_ms),
            config.keys.rewrap_batch,
            shutdown.child_token(),
        ));
        tracker.spawn(sweepers::entries(
            users.clone(),
            tokens,
            oidc,
            Duration::from_millis(config.entries.sweep_interval_ms),
            shutdown.child_token(),
        ));
        tracker.spawn(retry_queue::sweeper(
            queue.clone(),
            users.clone(),
            Duration::from_millis(config.retry.sweep_interval_ms),
            config.retry.sweep_batch,
            shutdown.child_token(),
        ));
        if !config.anti_entropy_peers.is_empty() {
            tracker.spawn(anti_entropy::sweeper(
                users.clone(),
                queue.clone(),
                config
                    .anti_entropy_peers
                    .iter()
                    .map(|(region, url)| anti_entropy::Peer {
                        region: region.clone(),
                        url: url.clone(),
                    })
                    .collect(),
                config.anti_entropy.ca_cert.clone(),
                Duration::from_millis(config.anti_entropy.interval_ms),
                shutdown.child_token(),
            ));
        }
        if let Some(r) = &config.replication {
            crate::replication::topics::ensure_topics(r).await?;
            crate::replication::start(
                r,
                users.clone(),
                queue.clone(),
                users.outbox_signal(),
                &tracker,
                &shutdown,
            )?;
            tracing::info!(topic = %r.topic, peers = r.peers.len(), "replication started");
        }
        tracker.close();
        ready.store(true, Ordering::SeqCst);
        metrics::gauge!(m::NODE_UP).set(1.0);
        tracing::info!(region = %config.region, %addr, https = config.tls.is_some(), "node serving");
        if let Some(at) = metrics_addr {
            tracing::info!(region = %config.region, %at, "metrics served apart");
        }
        Ok(Node {
            addr,
            metrics_addr,
            users,
            shutdown,
            tracker,
        })
    }

    /// Waits until shutdown is requested and every task has finished, then makes the
    /// WAL durable before RocksDB closes.
    pub async fn wait(self) {
        self.shutdown.cancelled().await;
        self.tracker.wait().await;
        metrics::gauge!(m::NODE_UP).set(0.0);
        let users = self.users.clone();
        let flushed = tokio::task::spawn_blocking(move || {
            // The wrap counts since the last persist, so a clean restart loses none.
            if let Err(e) = users.persist_wrap_counts() {
                tracing::warn!(error = %e, "persist the master key wrap counts at shutdown");
            }
            users.store().flush()
        })
        .await;
        match flushed {
            Ok(Ok(())) => tracing::info!("store flushed; node stopped"),
            Ok(Err(e)) => tracing::error!(error = %e, "flush store at shutdown"),
            Err(e) => tracing::error!(error = %e, "flush task failed"),
        }
    }
}

/// Histogram upkeep, and the gauges read from the process and RocksDB, every 5 s.
async fn metrics_upkeep(
    handle: metrics_exporter_prometheus::PrometheusHandle,
    users: Arc<Users>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        handle.run_upkeep();
        m::record_process();
        users.store().record_health();
        if let Err(e) = users.persist_wrap_counts() {
            tracing::warn!(error = %e, "persist the master key wrap counts");
        }
    }
}

/// Picks up a rotated keyring without a restart.
async fn reload_keyring(
    users: Arc<Users>,
    path: std::path::PathBuf,
    every: Duration,
    stop: CancellationToken,
) {
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen: Option<SystemTime> = modified(&path);
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = modified(&path);
        if now == seen {
            continue;
        }
        seen = now;
        let outcome = match Keyring::load(&path)
            .map_err(|e| e.to_string())
            .and_then(|k| {
                let active = k.active_key(k.owner()).map(|k| k.version).unwrap_or(0);
                users.replace_keyring(k).map(|()| active)
            }) {
            Ok(active) => {
                metrics::gauge!(m::KEYRING_ACTIVE_VERSION).set(f64::from(active));
                tracing::info!(active_version = active, "keyring reloaded");
                "ok"
            }
            Err(e) => {
                tracing::error!(error = %e, "reload keyring; keeping the current one");
                "error"
            }
        };
        metrics::counter!(m::KEYRING_RELOADS_TOTAL, "outcome" => outcome).increment(1);
    }
}
