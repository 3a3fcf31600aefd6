//! Scheduled sweepers: each runs on its own interval as a task of the node's tracker
//! and stops with the node. The retry sweeper and anti-entropy rounds live with
//! replication (`retry_queue::sweeper`, `anti_entropy::sweeper`); these two act on
//! accounts:
//!
//! - `key_recovery`: wraps data keys for regions that lack them and moves this
//!   region's wraps to its current master key ([`Users::recover_keys_round`]);
//! - `anti_entropy`: compares digests with each peer and pulls what differs
//!   ([`crate::replication::anti_entropy`]);
//! - `entries`: removes replicated entries that can never matter again: login-failure
//!   counts gone idle, refresh token families expired, and both for erased accounts.
//!
//! Every run is timed and counted (`authsync_sweeper_*{sweeper}`), so an operator sees
//! a sweeper that stopped running or takes too long.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::accounts::users::Users;
use crate::common::metrics as m;
use crate::common::schedule::run_every;

/// The key recovery sweeper: one bounded round per run, resuming where the last
/// one stopped.
pub async fn key_recovery(
    users: Arc<Users>,
    every: Duration,
    batch: usize,
    stop: CancellationToken,
) {
    let cursor = Arc::new(parking_lot::Mutex::new(None));
    run_every("key_recovery", every, stop, || {
        let users = users.clone();
        let cursor = cursor.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let at = *cursor.lock();
                let (round, next) = users.recover_keys_round(at, batch)?;
                *cursor.lock() = next;
                if round.rewrapped + round.recovered + round.user_keys + round.signed > 0 {
                    tracing::info!(
                        rewrapped = round.rewrapped,
                        recovered = round.recovered,
                        user_keys = round.user_keys,
                        signed = round.signed,
                        "key recovery round"
                    );
                }
                anyhow::Ok(())
            })
            .await?
        }
    })
    .await
}

/// The entries sweeper: every `every`, removes dead login-failure entries, refresh
/// token families and browser sessions from this region's store
/// ([`crate::accounts::lockout::Lockout::sweep`], [`crate::accounts::tokens::Tokens::sweep`],
/// [`crate::accounts::oidc::Oidc::sweep`]).
pub async fn entries(
    users: Arc<Users>,
    tokens: Arc<crate::accounts::tokens::Tokens>,
    oidc: Arc<crate::accounts::oidc::Oidc>,
    every: Duration,
    stop: CancellationToken,
) {
    run_every("entries", every, stop, || {
        let (users, tokens, oidc) = (users.clone(), tokens.clone(), oidc.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                let failures = users.sweep_login_failures()?;
                let families = tokens.sweep()?;
                let sessions = oidc.sweep()?;
                let uses = users.sweep_factor_uses()?;
                let tokens_swept = users.sweep_account_tokens()?;
                metrics::counter!(m::ENTRIES_SWEPT_TOTAL, "kind" => "account_token")
                    .increment(tokens_swept as u64);
                metrics::counter!(m::ENTRIES_SWEPT_TOTAL, "kind" => "factor_uses")
                    .increment(uses as u64);
                metrics::counter!(m::ENTRIES_SWEPT_TOTAL, "kind" => "browser_session")
                    .increment(sessions as u64);
                metrics::counter!(m::ENTRIES_SWEPT_TOTAL, "kind" => "login_failures")
                    .increment(failures as u64);
                metrics::counter!(m::ENTRIES_SWEPT_TOTAL, "kind" => "token_family")
                    .increment(families as u64);
                if failures + families + sessions + uses > 0 {
                    tracing::info!(failures, families, sessions, uses, "entries swept");
                }
                anyhow::Ok(())
            })
            .await?
        }
    })
    .await;
}
