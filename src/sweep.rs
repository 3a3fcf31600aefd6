//! Scheduled sweepers: each runs on its own interval as a task of the node's tracker
//! and stops with the node.
//!
//! - `retry`: tries due parked events again ([`crate::retry`]);
//! - `key_recovery`: wraps data keys for regions that lack them and moves this
//!   region's wraps to its current master key ([`Users::recover_keys_round`]);
//! - `anti_entropy`: compares digests with each peer and pulls what differs
//!   ([`crate::antientropy`]);
//! - `entries`: removes replicated entries that can never matter again: login-failure
//!   counts gone idle, refresh token families expired, and both for erased accounts.
//!
//! Every run is timed and counted (`authsync_sweeper_*{sweeper}`), so an operator sees
//! a sweeper that stopped running or takes too long.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::metrics as m;
use crate::retry::RetryQueue;
use crate::users::Users;

/// Runs `run` every `every` (the first run at once) until `stop`. A run that takes
/// longer than the interval delays the next one rather than piling runs up.
pub async fn run_every<F, Fut>(
    name: &'static str,
    every: Duration,
    stop: CancellationToken,
    mut run: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            // Stopping wins over a tick that is already due.
            biased;
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let started = Instant::now();
        let outcome = match run().await {
            Ok(()) => "ok",
            Err(e) => {
                tracing::error!(sweeper = name, error = %e, "sweeper run failed");
                "error"
            }
        };
        metrics::counter!(m::SWEEPER_RUNS_TOTAL, "sweeper" => name, "outcome" => outcome)
            .increment(1);
        metrics::gauge!(m::SWEEPER_LAST_DURATION_SECONDS, "sweeper" => name)
            .set(started.elapsed().as_secs_f64());
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        metrics::gauge!(m::SWEEPER_LAST_RUN_TIMESTAMP_SECONDS, "sweeper" => name).set(now);
    }
}

/// The retry sweeper.
pub async fn retry(
    queue: Arc<RetryQueue>,
    users: Arc<Users>,
    every: Duration,
    batch: usize,
    stop: CancellationToken,
) {
    run_every("retry", every, stop, || {
        let queue = queue.clone();
        let users = users.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let now = users.clock_now_ms();
                let report = queue.sweep(&users, now, batch)?;
                if report != Default::default() {
                    tracing::info!(?report, "retry sweep");
                }
                queue.report(users.clock_now_ms())?;
                anyhow::Ok(())
            })
            .await?
        }
    })
    .await
}

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
                if round.rewrapped + round.recovered + round.user_keys > 0 {
                    tracing::info!(
                        rewrapped = round.rewrapped,
                        recovered = round.recovered,
                        user_keys = round.user_keys,
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

/// The entries sweeper: every `every`, removes dead login-failure entries and refresh
/// token families from this region's store ([`crate::lockout::Lockout::sweep`],
/// [`crate::tokens::Tokens::sweep`]).
pub async fn entries(
    users: Arc<Users>,
    tokens: Arc<crate::tokens::Tokens>,
    every: Duration,
    stop: CancellationToken,
) {
    run_every("entries", every, stop, || {
        let (users, tokens) = (users.clone(), tokens.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                let failures = users.sweep_login_failures()?;
                let families = tokens.sweep()?;
                metrics::counter!(m::ENTRIES_SWEPT_TOTAL, "kind" => "login_failures")
                    .increment(failures as u64);
                metrics::counter!(m::ENTRIES_SWEPT_TOTAL, "kind" => "token_family")
                    .increment(families as u64);
                if failures + families > 0 {
                    tracing::info!(failures, families, "entries swept");
                }
                anyhow::Ok(())
            })
            .await?
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_sweeper_runs_once_per_interval_and_stops_with_the_node() {
        let runs = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_every("test", Duration::from_secs(10), stop.clone(), {
            let runs = runs.clone();
            move || {
                let runs = runs.clone();
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            }
        }));
        tokio::time::sleep(Duration::from_secs(35)).await;
        // At 0, 10, 20 and 30 s.
        assert_eq!(runs.load(Ordering::SeqCst), 4);
        stop.cancel();
        task.await.unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 4, "no run after stop");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_run_delays_the_next_instead_of_piling_up() {
        let starts = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let origin = tokio::time::Instant::now();
        let task = tokio::spawn(run_every("slow", Duration::from_secs(10), stop.clone(), {
            let starts = starts.clone();
            move || {
                let starts = starts.clone();
                async move {
                    starts.lock().push(origin.elapsed().as_secs());
                    tokio::time::sleep(Duration::from_secs(25)).await;
                    Ok(())
                }
            }
        }));
        tokio::time::sleep(Duration::from_secs(80)).await;
        stop.cancel();
        task.await.unwrap();
        // Each run starts when the previous one ended: 0, 25, 50, 75.
        assert_eq!(*starts.lock(), vec![0, 25, 50, 75]);
    }
}
