//! Schedules: [`run_every`] runs a job on a fixed interval until it is told to stop,
//! timing and counting every run (`authsync_sweeper_*{sweeper}`), so an operator sees
//! a job that stopped running or takes too long. The sweepers (node) and the
//! anti-entropy rounds (replication) run on it.

use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::common::metrics as m;

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

/// Sleeps `d` unless `stop` comes first: `false` when stopping.
pub async fn sleep_or_stop(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

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
