//! Replication over Kafka: a publisher that drains the outbox, and one consumer per
//! peer region that applies its changes.
//!
//! Publishing: the outbox is read in sequence order and each event is produced to
//! this region's topic (`<prefix><region>`) with the user id as key (per-user order)
//! by an idempotent producer with `acks=all`; headers carry the origin region and the
//! event id. An outbox entry is deleted only after the broker acknowledged it, so with
//! the broker down the outbox grows and nothing is lost; writes go on meanwhile.
//!
//! User keys (see `crypto.rs`) go to a compacted topic beside it, `<topic>.user-keys`,
//! keyed by user id: created and re-wrapped keys as values, and for an erased account
//! a null value, so that compaction removes the key from Kafka as the erase removed it
//! from the store. Every region that applies an erase publishes that null on its own
//! topic, since a re-wrapped key may have been published there.
//!
//! Applying: every node consumes each peer's topic (never its own) in the region's
//! consumer group. An offset is stored only after the event was durably applied (or
//! found not newer) or durably parked in the retry queue (see `retry.rs`), so a crash
//! replays from the last stored offset and the idempotent, version-checked apply makes
//! the replay harmless.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::future::join_all;
use futures::FutureExt as _;
use prost::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::config::{Peer, Replication};
use crate::metrics as m;
use crate::proto;
use crate::retry::{Parked, RetryQueue, Source};
use crate::users::{Applied, ApplyError, Users};

pub const HEADER_ORIGIN: &str = "authsync-origin-region";
pub const HEADER_EVENT_ID: &str = "authsync-event-id";

/// The publisher's librdkafka settings that `kafka.client` may change.
///
/// A request in flight when the broker stops answering (a blackholed link, a paused
/// broker) holds its connection until it times out. librdkafka's defaults, 30 s for a
/// produce request and 60 s for a socket, made a healed link wait that long before the
/// outbox moved again. The broker is the region's own, so 10 s is generous. Undelivered
/// messages stay in the outbox and are sent again, so a message timeout loses nothing.
const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    ("linger.ms", "2"),
    ("message.timeout.ms", "30000"),
    ("request.timeout.ms", "10000"),
    ("socket.timeout.ms", "10000"),
];

/// The consumers' librdkafka settings that `kafka.client` (or a peer's `client`) may
/// change. An offset commit in flight when the broker vanishes holds the coordinator
/// connection until it times out (60 s by default): recover sooner.
const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    ("topic.metadata.refresh.interval.ms", "10000"),
    ("socket.timeout.ms", "10000"),
];

/// `defaults` first, then the operator's `settings` over them, then the bootstrap.
fn client_config(
    bootstrap: &str,
    defaults: &[(&str, &str)],
    settings: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in defaults {
        c.set(*k, *v);
    }
    for (k, v) in settings {
        c.set(k, v);
    }
    c.set("bootstrap.servers", bootstrap);
    c
}

/// Creates this region's topic and each peer's topic where missing, so consumers never
/// subscribe to a topic that does not exist yet (some brokers do not create topics on
/// first use; the embedded broker's topics are made by the demo instead).
pub async fn ensure_topics(r: &Replication) -> anyhow::Result<()> {
    if !r.create_topics {
        return Ok(());
    }
    let mut wanted = vec![(&r.bootstrap_servers, &r.client, &r.topic, &r.key_topic)];
    for p in &r.peers {
        wanted.push((&p.bootstrap_servers, &p.client, &p.topic, &p.key_topic));
    }
    for (bootstrap, settings, topic, key_topic) in wanted {
        let (partitions, factor) = (r.partitions, r.replication_factor);
        create_topic(bootstrap, settings, topic, partitions, factor, &[]).await?;
        create_topic(
            bootstrap,
            settings,
            key_topic,
            partitions,
            factor,
            USER_KEY_TOPIC_CONFIG,
        )
        .await?;
    }
    Ok(())
}

/// The user-key topics' settings: compacted, and compacted soon. A key's last value
/// is kept (for regions that start later), and an erased account's key is gone from
/// the log within about `max.compaction.lag.ms` of its null value (Kafka 2.3 and
/// later; a broker that does not compact keeps it, see SECURITY.md).
pub const USER_KEY_TOPIC_CONFIG: &[(&str, &str)] = &[
    ("cleanup.policy", "compact"),
    ("segment.ms", "3600000"),
    ("max.compaction.lag.ms", "3600000"),
    ("min.cleanable.dirty.ratio", "0.1"),
];

/// Creates topic `name` unless it exists.
pub async fn create_topic(
    bootstrap: &str,
    settings: &BTreeMap<String, String>,
    name: &str,
    partitions: i32,
    replication_factor: i32,
    configs: &[(&str, &str)],
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap, &[], settings)
        .create()
        .context("create Kafka admin client")?;
    let mut topic = NewTopic::new(
        name,
        partitions,
        TopicReplication::Fixed(replication_factor),
    );
    for (key, value) in configs {
        topic = topic.set(key, value);
    }
    // Both bounds: with the broker unreachable the request itself would otherwise
    // wait for librdkafka's 60 s socket timeout.
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics([&topic], &opts)
        .await
        .with_context(|| format!("create topic {name} on {bootstrap}"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => anyhow::bail!("create topic {name}: {code}"),
        }
    }
    Ok(())
}

/// Starts the publisher and the consumers as tracked tasks.
pub fn start(
    r: &Replication,
    users: Arc<Users>,
    queue: Arc<RetryQueue>,
    outbox_signal: Arc<Notify>,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let producer: FutureProducer =
        client_config(&r.bootstrap_servers, PRODUCER_DEFAULTS, &r.client)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()
            .context("create Kafka producer")?;
    tracker.spawn(publish_loop(
        users.clone(),
        producer,
        [r.topic.clone(), r.key_topic.clone()],
        r.publish_batch,
        Duration::from_millis(r.publish_interval_ms),
        outbox_signal,
        stop.child_token(),
    ));
    for peer in &r.peers {
        let consumer: StreamConsumer =
            client_config(&peer.bootstrap_servers, CONSUMER_DEFAULTS, &peer.client)
                .set("group.id", &r.consumer_group)
                .set("enable.auto.commit", "true")
                .set("auto.commit.interval.ms", "1000")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "earliest")
                .set("enable.partition.eof", "false")
                .set("session.timeout.ms", r.session_timeout_ms.to_string())
                .set("fetch.wait.max.ms", r.fetch_wait_max_ms.to_string())
                .create()
                .with_context(|| format!("create Kafka consumer for peer {}", peer.region))?;
        consumer
            .subscribe(&[&peer.topic, &peer.key_topic])
            .with_context(|| format!("subscribe to {} and {}", peer.topic, peer.key_topic))?;
        tracker.spawn(consume_loop(
            users.clone(),
            queue.clone(),
            consumer,
            peer.clone(),
            stop.child_token(),
        ));
    }
    Ok(())
}

async fn sleep_or_stop(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

async fn publish_loop(
    users: Arc<Users>,
    producer: FutureProducer,
    [topic, key_topic]: [String; 2],
    batch: usize,
    idle: Duration,
    signal: Arc<Notify>,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if stop.is_cancelled() {
            break;
        }
        let u = users.clone();
        let head = match tokio::task::spawn_blocking(move || u.store().outbox_head(batch)).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "read outbox");
                if !sleep_or_stop(backoff, &stop).await {
                    break;
                }
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "outbox task failed");
                break;
            }
        };
        report_outbox(&head, batch, &users);
        metrics::gauge!(m::PRODUCER_QUEUE_MESSAGES).set(f64::from(producer.in_flight_count()));
        if head.is_empty() {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = signal.notified() => {}
                _ = tokio::time::sleep(idle) => {}
            }
            continue;
        }
        let sends = head.iter().map(|(seq, bytes)| {
            let producer = &producer;
            let (topic, key_topic) = (&topic, &key_topic);
            async move {
                let Ok(event) = proto::ChangeEvent::decode(bytes.as_slice()) else {
                    // Our own write; undecodable means local corruption. Keep it for an
                    // operator rather than drop it silently.
                    tracing::error!(seq, "outbox entry does not decode; left in place");
                    return (*seq, false);
                };
                let (topic, key, payload) = route(&event, bytes, topic, key_topic);
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: HEADER_ORIGIN,
                        value: Some(event.origin_region.as_str()),
                    })
                    .insert(Header {
                        key: HEADER_EVENT_ID,
                        value: Some(event.event_id.as_str()),
                    });
                let mut record = FutureRecord::to(topic).key(&key).headers(headers);
                if let Some(payload) = payload {
                    record = record.payload(payload);
                }
                match producer.send(record, Duration::from_secs(5)).await {
                    Ok(_) => (*seq, true),
                    Err((e, _)) => {
                        tracing::warn!(error = %e, seq, "publish change event; will retry");
                        (*seq, false)
                    }
                }
            }
        });
        let results = join_all(sends).await;
        let acked: Vec<u64> = results
            .iter()
            .filter(|(_, ok)| *ok)
            .map(|(s, _)| *s)
            .collect();
        let failed = results.len() - acked.len();
        metrics::counter!(m::PUBLISHED_EVENTS_TOTAL).increment(acked.len() as u64);
        if !acked.is_empty() {
            let u = users.clone();
            match tokio::task::spawn_blocking(move || u.store().outbox_remove(&acked)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "remove published outbox entries"),
                Err(e) => tracing::error!(error = %e, "outbox task failed"),
            }
        }
        if failed > 0 {
            metrics::counter!(m::PUBLISH_ERRORS_TOTAL).increment(failed as u64);
            if !sleep_or_stop(backoff, &stop).await {
                break;
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        } else {
            backoff = Duration::from_millis(100);
        }
    }
    // Deliver what is in flight; what is not acknowledged stays in the outbox.
    let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
}

/// Where an outbox event goes: (topic, message key, value). Changes go to the change
/// topic; user keys to the user-key topic, and an erase there as a null value, keyed
/// by the user id like the key it replaces.
fn route<'a>(
    event: &proto::ChangeEvent,
    bytes: &'a [u8],
    topic: &'a str,
    key_topic: &'a str,
) -> (&'a str, String, Option<&'a [u8]>) {
    let user = |id: &[u8]| {
        Uuid::from_slice(id)
            .map(|u| u.to_string())
            .unwrap_or_default()
    };
    if let Some(record) = &event.record {
        (topic, user(&record.id), Some(bytes))
    } else if let Some(key) = &event.user_key {
        (key_topic, user(&key.user_id), Some(bytes))
    } else if !event.erased_user.is_empty() {
        (key_topic, user(&event.erased_user), None)
    } else {
        // Entries: one partition, in order.
        (topic, String::new(), Some(bytes))
    }
}

fn report_outbox(head: &[(u64, Vec<u8>)], batch: usize, users: &Users) {
    let depth = if head.len() < batch {
        head.len() as f64
    } else {
        users
            .store()
            .estimate_keys(crate::store::CF_OUTBOX)
            .max(head.len() as u64) as f64
    };
    metrics::gauge!(m::OUTBOX_DEPTH).set(depth);
    let oldest = oldest_ms(head)
        .map(|ms| users.clock_now_ms().saturating_sub(ms) as f64 / 1000.0)
        .unwrap_or(0.0);
    metrics::gauge!(m::OUTBOX_OLDEST_AGE_SECONDS).set(oldest);
}

/// When the oldest of `head` was written: the first event's `written_ms`.
fn oldest_ms(head: &[(u64, Vec<u8>)]) -> Option<u64> {
    head.iter().find_map(|(_, bytes)| {
        let event = proto::ChangeEvent::decode(bytes.as_slice()).ok()?;
        (event.written_ms != 0).then_some(event.written_ms)
    })
}

async fn consume_loop(
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
        let mut firsts = apply_batch(&users, &payloads).await;
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

fn decode(payload: &[u8]) -> Result<proto::ChangeEvent, ApplyError> {
    proto::ChangeEvent::decode(payload).map_err(|_| ApplyError::Malformed("event does not decode"))
}

/// Applies received events in order, each as [`Users::apply`] would, with one WAL
/// sync for the batch instead of one per event. `None` if the task failed: the
/// events then go through [`handle`] one at a time.
async fn apply_batch(
    users: &Arc<Users>,
    payloads: &[Option<Arc<[u8]>>],
) -> Option<Vec<Option<ApplyResult>>> {
    let (u, p) = (users.clone(), payloads.to_vec());
    let task = tokio::task::spawn_blocking(move || {
        let mut results: Vec<Option<ApplyResult>> = p
            .iter()
            .map(|payload| {
                let payload = payload.as_ref()?;
                Some((|| {
                    let event = decode(payload)?;
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
                let (u, p) = (users.clone(), payload.clone());
                tokio::task::spawn_blocking(move || {
                    let event = decode(&p)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn event(fill: impl FnOnce(&mut proto::ChangeEvent)) -> Vec<u8> {
        let mut e = proto::ChangeEvent::default();
        fill(&mut e);
        e.encode_to_vec()
    }

    fn at(ms: u64) -> Option<proto::Version> {
        Some(proto::Version {
            physical_ms: ms,
            ..Default::default()
        })
    }

    #[test]
    fn the_outbox_age_is_its_head_events_whatever_its_kind() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path(), &Default::default()).unwrap();
        // A re-wrapped user key published by key recovery, then an erase: the
        // tombstone and the null for the user-key topic.
        let key = proto::UserKey {
            user_id: vec![1; 16],
            key_id: vec![2; 8],
            ..Default::default()
        };
        store.put_user_key(&key, at(1_000).as_ref(), false).unwrap();
        let tombstone = proto::Record {
            id: vec![1; 16],
            version: at(2_000),
            tombstone: true,
            ..Default::default()
        };
        store.commit(None, &tombstone, true).unwrap();
        let head = store.outbox_head(10).unwrap();
        assert_eq!(head.len(), 3);
        assert_eq!(oldest_ms(&head), Some(1_000));
        assert_eq!(
            oldest_ms(&head[2..]),
            Some(2_000),
            "the erase's null has its time"
        );
        // An event from before the field (none) is passed over.
        let old = event(|e| e.entry = Some(proto::Entry::default()));
        assert_eq!(oldest_ms(&[(0, old.clone()), head[1].clone()]), Some(2_000));
        assert_eq!(oldest_ms(&[(0, old)]), None);
    }

    #[test]
    fn user_keys_and_erases_go_to_the_user_key_topic_under_the_user_id() {
        let id = uuid::Uuid::new_v4();
        let key = proto::ChangeEvent {
            user_key: Some(proto::UserKey {
                user_id: id.as_bytes().to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let bytes = key.encode_to_vec();
        assert_eq!(
            route(&key, &bytes, "changes", "keys"),
            ("keys", id.to_string(), Some(bytes.as_slice()))
        );
        let erased = proto::ChangeEvent {
            erased_user: id.as_bytes().to_vec(),
            ..Default::default()
        };
        assert_eq!(
            route(&erased, &[], "changes", "keys"),
            ("keys", id.to_string(), None)
        );
        let record = proto::ChangeEvent {
            record: Some(proto::Record {
                id: id.as_bytes().to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(route(&record, &[1], "changes", "keys").0, "changes");
        let entry = proto::ChangeEvent {
            entry: Some(proto::Entry::default()),
            ..Default::default()
        };
        assert_eq!(
            route(&entry, &[1], "changes", "keys"),
            ("changes", String::new(), Some(&[1u8][..]))
        );
    }
}
