//! The topics a region's changes travel on, and their message headers: the change
//! topic `<prefix><region>` and its compacted `<topic>.user-keys`, created at start
//! where missing. And what an event read from a region's topic must say.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use prost::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::accounts::error::ApplyError;
use crate::proto;
use crate::replication::config::{client_config, Replication};

pub const HEADER_ORIGIN: &str = "authsync-origin-region";
pub const HEADER_EVENT_ID: &str = "authsync-event-id";

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

/// An event read from `source`'s topic. Its `origin_region` is not checked against
/// the topic: it is the writer's region, not the publisher's (key recovery publishes
/// wraps it adds to records others wrote), and nothing authenticates it; what counts
/// is each record's, entry's and user key's own signature, checked on apply.
pub fn decode_event(payload: &[u8], _source: &str) -> Result<proto::ChangeEvent, ApplyError> {
    proto::ChangeEvent::decode(payload).map_err(|_| ApplyError::Malformed("event does not decode"))
}
