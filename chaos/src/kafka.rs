//! Faults and checks that act on the replication topics themselves.
//!
//! - [`replay_topic`] re-sends every message of a topic to the same partition: the
//!   "duplicate delivery and replay from offset 0" fault. Consumers see old change
//!   events again as new messages, and idempotent apply must make that harmless.
//! - [`scan_topics`] searches every message for markers that must never leave a node
//!   in plaintext (passwords, secrets), in the key, the payload and every header value.
//!
//! Both read a topic only up to the high watermarks taken when they start, so they end
//! even while nodes keep producing, and even though the replay writes to the topic it
//! reads. Reads use explicit assignments and commit nothing, so no consumer group a node
//! uses is disturbed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::plaintext::contains;
pub use crate::plaintext::Finding;

/// How long a replay or a scan may take in all before it gives up.
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// What [`scan_topics`] read and found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanReport {
    /// Messages read, over all topics.
    pub messages: usize,
    /// Every (message part, marker) pair where the part contains the marker.
    pub findings: Vec<Finding>,
}

/// Reads every message of every partition of `topic` up to the high watermarks taken at
/// the start and produces each again to the same partition, with the same key, payload
/// and headers, then flushes. Returns how many messages were re-sent.
///
/// Per-partition order is kept: messages are enqueued in the order they were read, and
/// the producer is idempotent with `acks=all`, like the nodes', so retries neither
/// reorder nor duplicate them beyond the one intended copy.
pub async fn replay_topic(bootstrap: &str, topic: &str) -> anyhow::Result<usize> {
    let deadline = Instant::now() + TIMEOUT;
    let messages = read_topic(bootstrap, topic, deadline, Vec::new(), |all, msg| {
        all.push(msg.detach());
    })
    .await?;
    resend(bootstrap, &messages, deadline)
        .await
        .with_context(|| format!("replay {} messages of {topic}", messages.len()))?;
    Ok(messages.len())
}

/// Reads every message of `topics` up to the high watermarks taken at the start of each
/// and reports every marker found in a key, a payload or a header value. Empty markers
/// are ignored.
pub async fn scan_topics(
    bootstrap: &str,
    topics: &[String],
    markers: &[&[u8]],
) -> anyhow::Result<ScanReport> {
    let deadline = Instant::now() + TIMEOUT;
    let markers: Vec<Vec<u8>> = markers
        .iter()
        .filter(|m| !m.is_empty())
        .map(|m| m.to_vec())
        .collect();
    let mut report = ScanReport::default();
    for topic in topics {
        let markers = markers.clone();
        report = read_topic(bootstrap, topic, deadline, report, move |report, msg| {
            report.messages += 1;
            scan_message(msg, &markers, &mut report.findings);
        })
        .await?;
    }
    Ok(report)
}

fn scan_message(msg: &BorrowedMessage<'_>, markers: &[Vec<u8>], out: &mut Vec<Finding>) {
    let at = format!("{}/{}@{}", msg.topic(), msg.partition(), msg.offset());
    let mut parts: Vec<(String, &[u8])> = Vec::new();
    if let Some(key) = msg.key() {
        parts.push((format!("{at} key"), key));
    }
    if let Some(payload) = msg.payload() {
        parts.push((format!("{at} payload"), payload));
    }
    if let Some(headers) = msg.headers() {
        for header in headers.iter() {
            if let Some(value) = header.value {
                parts.push((format!("{at} header {}", header.key), value));
            }
        }
    }
    for (place, bytes) in parts {
        for marker in markers {
            if contains(bytes, marker) {
                out.push(Finding {
                    place: place.clone(),
                    marker: String::from_utf8_lossy(marker).into_owned(),
                });
            }
        }
    }
}

/// Feeds every message of `topic` below the high watermarks taken at the start into
/// `each`, in per-partition order, and returns the accumulator.
///
/// The consumer's calls block, so the read runs on tokio's blocking pool; it watches
/// `deadline` itself, since a blocking task cannot be cancelled from outside.
async fn read_topic<A, F>(
    bootstrap: &str,
    topic: &str,
    deadline: Instant,
    acc: A,
    each: F,
) -> anyhow::Result<A>
where
    A: Send + 'static,
    F: FnMut(&mut A, &BorrowedMessage<'_>) + Send + 'static,
{
    let bootstrap = bootstrap.to_string();
    let topic = topic.to_string();
    let what = format!("read {topic} to its watermarks");
    tokio::task::spawn_blocking(move || {
        read_topic_blocking(&bootstrap, &topic, deadline, acc, each)
    })
    .await
    .with_context(|| what.clone())?
    .context(what)
}

fn read_topic_blocking<A, F>(
    bootstrap: &str,
    topic: &str,
    deadline: Instant,
    mut acc: A,
    mut each: F,
) -> anyhow::Result<A>
where
    F: FnMut(&mut A, &BorrowedMessage<'_>),
{
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_group_id())
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // End-of-partition events end a partition whose last offsets hold no message
        // (transaction markers), which the watermark comparison alone would wait on.
        .set("enable.partition.eof", "true")
        .create()
        .context("create the consumer")?;

    let metadata = consumer
        .fetch_metadata(Some(topic), remaining(deadline)?)
        .context("fetch metadata")?;
    let meta = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| anyhow!("the broker returned no metadata for {topic}"))?;
    if let Some(err) = meta.error() {
        bail!("metadata of {topic}: {:?}", RDKafkaErrorCode::from(err));
    }
    if meta.partitions().is_empty() {
        bail!("{topic} has no partitions");
    }

    // Partition id → high watermark, for partitions with anything to read.
    let mut pending: Vec<(i32, i64)> = Vec::new();
    let mut assignment = TopicPartitionList::new();
    for p in meta.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), remaining(deadline)?)
            .with_context(|| format!("fetch the watermarks of {topic}/{}", p.id()))?;
        if high > low {
            pending.push((p.id(), high));
            assignment
                .add_partition_offset(topic, p.id(), Offset::Beginning)
                .with_context(|| format!("assign {topic}/{}", p.id()))?;
        }
    }
    if pending.is_empty() {
        return Ok(acc);
    }
    consumer
        .assign(&assignment)
        .context("assign the partitions")?;

    while !pending.is_empty() {
        let wait = remaining(deadline)?.min(Duration::from_millis(500));
        match consumer.poll(wait) {
            None => {}
            Some(Ok(msg)) => {
                let Some(i) = pending.iter().position(|&(p, _)| p == msg.partition()) else {
                    continue; // a partition already done
                };
                let high = pending[i].1;
                if msg.offset() < high {
                    each(&mut acc, &msg);
                }
                if msg.offset() + 1 >= high {
                    pending.swap_remove(i);
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => pending.retain(|&(q, _)| q != p),
            Some(Err(e)) => return Err(e).context("consume"),
        }
    }
    Ok(acc)
}

/// Produces `messages` again, each to its own topic and partition, in order, and waits
/// until every one is acknowledged.
async fn resend(
    bootstrap: &str,
    messages: &[OwnedMessage],
    deadline: Instant,
) -> anyhow::Result<()> {
    if messages.is_empty() {
        return Ok(());
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set(
            "message.timeout.ms",
            remaining(deadline)?.as_millis().max(1).to_string(),
        )
        .create()
        .context("create the producer")?;

    let mut deliveries = Vec::with_capacity(messages.len());
    for msg in messages {
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(msg.topic()).partition(msg.partition());
        if let Some(key) = msg.key() {
            record = record.key(key);
        }
        if let Some(payload) = msg.payload() {
            record = record.payload(payload);
        }
        if let Some(headers) = msg.headers() {
            record = record.headers(headers.clone());
        }
        // Enqueue one at a time and retry the same record when the queue is full, so
        // the enqueue order — and with it each partition's order — is the read order.
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    deliveries.push(delivery);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    remaining(deadline)?;
                    record = back;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((e, _)) => return Err(e).context("enqueue a message"),
            }
        }
    }

    // Every message is already enqueued, so waiting on them one by one costs no more
    // than waiting on all at once.
    let acknowledged = async {
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, msg))) => {
                    return Err(e).with_context(|| {
                        format!("deliver a message to {}/{}", msg.topic(), msg.partition())
                    })
                }
                Err(_) => bail!("the producer dropped a delivery"),
            }
        }
        Ok(())
    };
    tokio::time::timeout_at(deadline.into(), acknowledged)
        .await
        .map_err(|_| anyhow!("deliveries not acknowledged within {TIMEOUT:?}"))??;
    // Every message is acknowledged already; this only drains librdkafka's own requests.
    producer
        .flush(remaining(deadline)?)
        .context("flush the producer")?;
    Ok(())
}

/// Time left before `deadline`, or an error saying the whole operation took too long.
fn remaining(deadline: Instant) -> anyhow::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        bail!("gave up after {TIMEOUT:?}");
    }
    Ok(left)
}

/// A group id no other client uses, so nothing this module reads shows up in, or
/// disturbs, a node's consumer group.
fn unique_group_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "authsync-chaos-reader-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::DefaultProducerContext;

    const TOPIC: &str = "authsync.changes.eu-west";

    fn broker() -> MockCluster<'static, DefaultProducerContext> {
        let mock = MockCluster::new(1).expect("start the mock broker");
        mock.create_topic(TOPIC, 2, 1).expect("create the topic");
        mock
    }

    fn producer(bootstrap: &str) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .create()
            .expect("create a producer")
    }

    /// Sends one message and returns its `(partition, offset)`.
    async fn send(
        producer: &FutureProducer,
        partition: i32,
        key: &str,
        payload: &str,
        headers: &[(&str, &str)],
    ) -> (i32, i64) {
        let mut owned = OwnedHeaders::new();
        for (k, v) in headers {
            owned = owned.insert(Header {
                key: k,
                value: Some(*v),
            });
        }
        let record = FutureRecord::to(TOPIC)
            .partition(partition)
            .key(key)
            .payload(payload)
            .headers(owned);
        let d = producer
            .send(record, Duration::from_secs(5))
            .await
            .expect("deliver a message");
        (d.partition, d.offset)
    }

    /// What a message carries that a replay must keep.
    type Content = (
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Vec<(String, Option<Vec<u8>>)>,
    );

    fn content(m: &OwnedMessage) -> Content {
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        (
            m.key().map(<[u8]>::to_vec),
            m.payload().map(<[u8]>::to_vec),
            headers,
        )
    }

    async fn read_all(bootstrap: &str) -> Vec<OwnedMessage> {
        let deadline = Instant::now() + TIMEOUT;
        read_topic(bootstrap, TOPIC, deadline, Vec::new(), |all, m| {
            all.push(m.detach())
        })
        .await
        .expect("read the topic")
    }

    #[tokio::test]
    async fn replay_resends_every_message_to_its_partition_in_order() {
        let mock = broker();
        let bootstrap = mock.bootstrap_servers();
        let p = producer(&bootstrap);
        const N: usize = 10;
        for i in 0..N {
            let event_id = format!("evt-{i}");
            send(
                &p,
                (i % 2) as i32,
                &format!("user-{i}"),
                &format!("payload-{i}"),
                &[
                    ("authsync-origin-region", "eu-west"),
                    ("authsync-event-id", &event_id),
                ],
            )
            .await;
        }

        assert_eq!(replay_topic(&bootstrap, TOPIC).await.expect("replay"), N);

        let all = read_all(&bootstrap).await;
        assert_eq!(all.len(), 2 * N);
        for partition in 0..2 {
            let mut log: Vec<&OwnedMessage> =
                all.iter().filter(|m| m.partition() == partition).collect();
            log.sort_by_key(|m| m.offset());
            let (first, second) = log.split_at(log.len() / 2);
            assert_eq!(first.len(), N / 2);
            let first: Vec<Content> = first.iter().map(|m| content(m)).collect();
            let second: Vec<Content> = second.iter().map(|m| content(m)).collect();
            assert_eq!(second, first, "partition {partition}");
            assert_eq!(first[0].2.len(), 2, "headers survive the round trip");
        }
    }

    #[tokio::test]
    async fn replay_of_an_empty_topic_sends_nothing() {
        let mock = broker();
        let bootstrap = mock.bootstrap_servers();
        assert_eq!(replay_topic(&bootstrap, TOPIC).await.expect("replay"), 0);
        assert!(read_all(&bootstrap).await.is_empty());
    }

    #[tokio::test]
    async fn scan_finds_markers_in_payload_header_and_key() {
        let mock = broker();
        let other = "authsync.changes.us-east";
        mock.create_topic(other, 2, 1).expect("create the topic");
        let bootstrap = mock.bootstrap_servers();
        let p = producer(&bootstrap);
        send(&p, 0, "user-a", "clean", &[("authsync-event-id", "e1")]).await;
        let (pp, po) = send(&p, 0, "user-b", "xx hunter2-payload xx", &[]).await;
        let (hp, ho) = send(&p, 1, "user-c", "clean", &[("note", "s3cret-header!")]).await;
        let (kp, ko) = send(&p, 1, "key-k3y-marker", "clean", &[]).await;

        let report = scan_topics(
            &bootstrap,
            &[TOPIC.to_string(), other.to_string()],
            &[
                b"hunter2-payload".as_slice(),
                b"s3cret-header",
                b"k3y-marker",
                b"never-sent",
            ],
        )
        .await
        .expect("scan");

        assert_eq!(report.messages, 4);
        let mut findings = report.findings;
        findings.sort();
        let expect = |place: String, marker: &str| Finding {
            place,
            marker: marker.to_string(),
        };
        let mut expected = vec![
            expect(format!("{TOPIC}/{pp}@{po} payload"), "hunter2-payload"),
            expect(format!("{TOPIC}/{hp}@{ho} header note"), "s3cret-header"),
            expect(format!("{TOPIC}/{kp}@{ko} key"), "k3y-marker"),
        ];
        expected.sort();
        assert_eq!(findings, expected);
    }

    #[tokio::test]
    async fn scan_of_clean_topics_finds_nothing() {
        let mock = broker();
        let bootstrap = mock.bootstrap_servers();
        let p = producer(&bootstrap);
        send(&p, 0, "user-a", "payload", &[("authsync-event-id", "e1")]).await;

        let report = scan_topics(
            &bootstrap,
            &[TOPIC.to_string()],
            &[b"never-sent".as_slice()],
        )
        .await
        .expect("scan");

        assert_eq!(
            report,
            ScanReport {
                messages: 1,
                findings: vec![]
            }
        );
    }
}
