//! The consumers: one per peer region, in the region's consumer group. Each received
//! event is applied (or durably parked in the retry queue) before its offset is
//! stored, so a crash replays and the version-checked apply makes the replay harmless.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;

use crate::accounts::error::{Applied, ApplyError};
use crate::accounts::users::Users;
use crate::common::metrics as m;
use crate::common::schedule::sleep_or_stop;
use crate::proto;
use crate::replication::config::Peer;
use crate::replication::retry_queue::{Parked, RetryQueue, Source};
use crate::replication::topics::decode_event;

pub async fn consume_loop(
    users: Arc<Users>,
    queue: Arc<RetryQueue>,
    consumer: StreamConsumer,
    peer: Peer,
    stop: CancellationToken,
) {
    let region = peer.region.clone();
    'consume: loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            m = consumer.recv() => m,
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, peer = %region, "consume");
                if !sleep_or_stop(Duration::from_millis(500), &stop).await {
                    break;
                }
                continue;
            }
        };
        // Whatever else has already arrived is applied with it, under one WAL sync.
        let mut msgs = vec![msg];
        while msgs.len() < APPLY_BATCH {
            match consumer.recv().now_or_never() {
                Some(Ok(m)) => msgs.push(m),
                // An error surfaces again on the next receive.
                Some(Err(_)) | None => break,
            }
        }
        // A null value (on a user-key topic: an erased account's key, for compaction)
        // has nothing to apply.
        let payloads: Vec<Option<Arc<[u8]>>> =
            msgs.iter().map(|m| m.payload().map(Arc::from)).collect();
        let mut firsts = apply_batch(&users, &payloads, &region).await;
        for (i, msg) in msgs.iter().enumerate() {
            let source = Source {
                region: region.clone(),
                topic: msg.topic().to_string(),
                partition: msg.partition(),
                offset: msg.offset(),
            };
            let first = firsts.as_mut().and_then(|f| f[i].take());
            let outcome = match &payloads[i] {
                None => Some("skipped"),
                Some(payload) => {
                    handle(&users, &queue, payload.clone(), &source, &stop, first).await
                }
            };
            let Some(outcome) = outcome else {
                // Stopping: this offset and the rest stay where they were; they come again.
                break 'consume;
            };
            metrics::counter!(m::REPLICATION_EVENTS_TOTAL, "source" => region.clone(), "outcome" => outcome).increment(1);
            // Applied, or durably parked: either way the stream may move on.
            if let Err(e) = consumer.store_offset_from_message(msg) {
                // After a rebalance the partition may be someone else's: they replay it.
                tracing::warn!(error = %e, peer = %region, "store consumer offset");
            }
        }
    }
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => tracing::warn!(error = %e, peer = %region, "commit offsets at shutdown"),
    }
}

/// Events applied together under one WAL sync, at most.
const APPLY_BATCH: usize = 256;

type ApplyResult = Result<(Applied, proto::ChangeEvent), ApplyError>;

/// Applies received events in order, each as [`Users::apply`] would, with one WAL
/// sync for the batch instead of one per event. `None` if the task failed: the
/// events then go through [`handle`] one at a time.
async fn apply_batch(
    users: &Arc<Users>,
    payloads: &[Option<Arc<[u8]>>],
    source: &str,
) -> Option<Vec<Option<ApplyResult>>> {
    let (u, p, source) = (users.clone(), payloads.to_vec(), source.to_string());
    let task = tokio::task::spawn_blocking(move || {
        let mut results: Vec<Option<ApplyResult>> = p
            .iter()
            .map(|payload| {
                let payload = payload.as_ref()?;
                Some((|| {
                    let event = decode_event(payload, &source)?;
                    let applied = u.apply_deferred(&event)?;
                    Ok((applied, event))
                })())
            })
            .collect();
        if let Err(e) = u.store().sync_wal() {
            // Nothing written here is known to be durable: every event is tried again.
            tracing::error!(error = %e, "sync WAL after applying a batch");
            for r in results.iter_mut() {
                if matches!(r, Some(Ok(_))) {
                    *r = None;
                }
            }
        }
        results
    });
    match task.await {
        Ok(results) => Some(results),
        Err(e) => {
            tracing::error!(error = %e, "apply task failed; applying the events one by one");
            None
        }
    }
}

/// Applies one received event, or parks it durably when it cannot be applied now
/// (dead letters when it never can). Returns the outcome label, or `None` when
/// stopping before the event was applied or parked.
///
/// Only a full retry queue (or a store that cannot write) keeps the event here: it is
/// tried again in place, holding the partition, rather than dropped.
async fn handle(
    users: &Arc<Users>,
    queue: &Arc<RetryQueue>,
    payload: Arc<[u8]>,
    source: &Source,
    stop: &CancellationToken,
    mut first: Option<ApplyResult>,
) -> Option<&'static str> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let result = match first.take() {
            Some(r) => Ok(r),
            None => {
                let (u, p, from) = (users.clone(), payload.clone(), source.region.clone());
                tokio::task::spawn_blocking(move || {
                    let event = decode_event(&p, &from)?;
                    let applied = u.apply(&event)?;
                    Ok::<_, ApplyError>((applied, event))
                })
                .await
            }
        };
        let error = match result {
            Err(e) => {
                // A crashed apply is not a reason to stop consuming: try again.
                tracing::error!(error = %e, "apply task failed; retrying the event");
                if !sleep_or_stop(backoff, stop).await {
                    return None;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            Ok(Ok((applied, event))) => {
                let ts = event
                    .record
                    .as_ref()
                    .and_then(|r| r.version.as_ref())
                    .map(|v| v.physical_ms);
                if let (Some(ts), Applied::Applied | Applied::Merged) = (ts, applied) {
                    let lag = users.clock_now_ms().saturating_sub(ts) as f64 / 1000.0;
                    metrics::histogram!(m::REPLICATION_LAG_SECONDS, "source" => source.region.clone())
                        .record(lag);
                }
                return Some(match applied {
                    Applied::Applied => "applied",
                    Applied::Merged => "merged",
                    Applied::Skipped => "skipped",
                });
            }
            Ok(Err(e)) => e,
        };
        let (q, u, p, src) = (
            queue.clone(),
            users.clone(),
            payload.clone(),
            source.clone(),
        );
        let reason = error.reason();
        let parked = tokio::task::spawn_blocking(move || {
            let r = q.park(&p, &src, &error, u.clock_now_ms());
            (r, error)
        })
        .await;
        match parked {
            Err(e) => {
                tracing::error!(error = %e, "park task failed; retrying the event");
                if !sleep_or_stop(backoff, stop).await {
                    return None;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Ok((Ok(Parked::Retry(id)), error)) => {
                tracing::warn!(peer = %source.region, entry = id, reason, error = %error, "event parked for retry");
                return Some("parked");
            }
            Ok((Ok(Parked::Dropped), error)) => {
                tracing::warn!(
                    peer = %source.region,
                    partition = source.partition,
                    offset = source.offset,
                    reason,
                    error = %error,
                    "unauthenticated event not kept: the dead letters are full"
                );
                return Some("dead_lettered");
            }
            Ok((Ok(Parked::Dead(id)), error)) => {
                tracing::error!(
                    peer = %source.region,
                    partition = source.partition,
                    offset = source.offset,
                    entry = id,
                    reason,
                    error = %error,
                    "event can never apply; moved to dead letters"
                );
                return Some("dead_lettered");
            }
            Ok((Err(e), _)) => {
                // Full queue or a store that cannot write: keep the event, hold the
                // partition, try again. Nothing is dropped.
                tracing::warn!(peer = %source.region, error = %e, "cannot park event; retrying in place");
                if !sleep_or_stop(backoff, stop).await {
                    return None;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
