//! Replication over Kafka: a publisher that drains the outbox, and one consumer per
//! peer region that applies its changes.
//!
//! Publishing: the outbox is read in sequence order and each event is produced to
//! this region's topic (`<prefix><region>`) with the user id as key (per-user order)
//! by an idempotent producer with `acks=all`; headers carry the origin region and the
//! event id. An outbox entry is deleted only after the broker acknowledged it, so with
//! the broker down the outbox grows and nothing is lost; writes go on meanwhile.
//!
//! User keys (see `crypto/envelope.rs`) go to a compacted topic beside it, `<topic>.user-keys`,
//! keyed by user id: created and re-wrapped keys as values, and for an erased account
//! a null value, so that compaction removes the key from Kafka as the erase removed it
//! from the store. Every region that applies an erase publishes that null on its own
//! topic, since a re-wrapped key may have been published there.
//!
//! Applying: every node consumes each peer's topic (never its own) in the region's
//! consumer group. An offset is stored only after the event was durably applied (or
//! found not newer) or durably parked in the retry queue (see `retry_queue.rs`), so a crash
//! replays from the last stored offset and the idempotent, version-checked apply makes
//! the replay harmless.

//!
//! Files, lowest first: `config` (the sections and what they resolve to), `topics`,
//! `retry_queue`, `publisher`, `consumer`, `anti_entropy`, `forward` (requests to a
//! peer on a caller's behalf). Replication uses common,
//! crypto, storage and accounts; the API and the node use it.

pub mod anti_entropy;
pub mod config;
pub mod consumer;
pub mod forward;
pub mod publisher;
pub mod retry_queue;
pub mod topics;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureProducer;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::accounts::users::Users;
use crate::replication::config::{
    client_config, Replication, CONSUMER_DEFAULTS, PRODUCER_DEFAULTS,
};
use crate::replication::consumer::consume_loop;
use crate::replication::publisher::publish_loop;
use crate::replication::retry_queue::RetryQueue;

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
