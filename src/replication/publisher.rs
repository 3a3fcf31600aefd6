//! The publisher: tails the outbox in sequence order and produces each event to this
//! region's topics with an idempotent producer (`acks=all`); an outbox entry is
//! deleted only after the broker acknowledged it.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use prost::Message as _;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::accounts::users::Users;
use crate::common::metrics as m;
use crate::common::schedule::sleep_or_stop;
use crate::proto;
use crate::replication::topics::{HEADER_EVENT_ID, HEADER_ORIGIN};

pub async fn publish_loop(
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
            .estimate_keys(crate::storage::store::CF_OUTBOX)
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
        let store = crate::storage::store::Store::open(dir.path(), &Default::default()).unwrap();
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
