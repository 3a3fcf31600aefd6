//! The replication sections of a node's config (`[kafka]`, `[[peers]]`,
//! `[replication]`) as written, and [`Replication`], the settings they resolve to.

use std::collections::BTreeMap;

use rdkafka::config::ClientConfig;
use serde::{Deserialize, Serialize};

use crate::common::config::{invalid, Invalid};
use crate::common::region::check_region_name;

/// Kafka client settings that authsync sets itself for its guarantees.
pub const RESERVED_KAFKA_SETTINGS: &[&str] = &[
    "bootstrap.servers",
    "enable.idempotence",
    "acks",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
];

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// This region's brokers, e.g. `kafka-eu-west:9092`.
    pub bootstrap_servers: String,
    /// Topic name prefix; this region publishes to `<prefix><region>`. Default
    /// `authsync.changes.`.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// Partitions of topics this node creates. Default 3.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor of topics this node creates. Default 1.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// Create the topic at start through the admin API. Default true.
    #[serde(default = "default_true")]
    pub create_topics: bool,
    /// librdkafka settings passed through as they are (security.protocol, sasl.*,
    /// ssl.*, …), for the producer and for consumers of peers on the same cluster.
    #[serde(default)]
    pub client: std::collections::BTreeMap<String, String>,
}

fn default_topic_prefix() -> String {
    "authsync.changes.".into()
}
fn default_partitions() -> i32 {
    3
}
fn default_replication_factor() -> i32 {
    1
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub region: String,
    /// The peer's brokers. Default: `kafka.bootstrap_servers` (one shared cluster).
    pub bootstrap_servers: Option<String>,
    /// The peer's topic. Default: `<kafka.topic_prefix><region>`.
    pub topic: Option<String>,
    /// librdkafka settings for this peer's consumer. Default: `kafka.client`.
    pub client: Option<std::collections::BTreeMap<String, String>>,
    /// The peer node's HTTP base URL, e.g. `http://authsync-eu-west:8080`, for
    /// anti-entropy. Without it this peer is not compared.
    pub http: Option<String>,
}

/// The consumers' `fetch.wait.max.ms` unless configured.
pub const DEFAULT_FETCH_WAIT_MAX_MS: u64 = 100;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    /// Outbox events produced per round at most. Default 500.
    pub publish_batch: usize,
    /// How often the publisher looks at an idle outbox. Default 200 ms (a write wakes it
    /// at once anyway).
    pub publish_interval_ms: u64,
    /// Consumer group of this region's nodes. Default `authsync-<region>`.
    pub consumer_group: Option<String>,
    /// librdkafka `session.timeout.ms` of the consumers. Default 6000.
    pub session_timeout_ms: u64,
    /// librdkafka `fetch.wait.max.ms` of the consumers: how long a fetch may wait
    /// for new events, a floor under replication lag where a broker answers only then.
    /// Default 100 (librdkafka's own is 500).
    pub fetch_wait_max_ms: u64,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            publish_batch: 500,
            publish_interval_ms: 200,
            consumer_group: None,
            session_timeout_ms: 6000,
            fetch_wait_max_ms: DEFAULT_FETCH_WAIT_MAX_MS,
        }
    }
}

/// The compacted topic beside change topic `topic` that carries its region's user
/// keys: `<topic>.user-keys`.
pub fn user_key_topic(topic: &str) -> String {
    format!("{topic}.user-keys")
}

/// One peer to consume from, resolved.
#[derive(Debug, Clone)]
pub struct Peer {
    pub region: String,
    pub bootstrap_servers: String,
    pub topic: String,
    /// The peer's user-key topic: [`user_key_topic`] of its topic.
    pub key_topic: String,
    pub client: std::collections::BTreeMap<String, String>,
}

/// Replication settings, resolved.
#[derive(Debug, Clone)]
pub struct Replication {
    pub bootstrap_servers: String,
    pub topic: String,
    /// This region's user-key topic: [`user_key_topic`] of its topic.
    pub key_topic: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub create_topics: bool,
    pub client: std::collections::BTreeMap<String, String>,
    pub peers: Vec<Peer>,
    pub consumer_group: String,
    pub publish_batch: usize,
    pub publish_interval_ms: u64,
    pub session_timeout_ms: u64,
    pub fetch_wait_max_ms: u64,
}

pub fn check_client_settings(
    key: &str,
    settings: &std::collections::BTreeMap<String, String>,
) -> Result<(), Invalid> {
    for k in settings.keys() {
        if RESERVED_KAFKA_SETTINGS.contains(&k.as_str()) {
            return Err(invalid(
                &format!("{key}.{k}"),
                "is set by authsync itself (idempotent producer, acks=all, offsets stored after apply)",
            ));
        }
    }
    Ok(())
}

/// The peers' anti-entropy addresses, (region, base URL) of each peer with `http`.
pub fn anti_entropy_peers(peers: &[PeerConfig]) -> Result<Vec<(String, String)>, Invalid> {
    let mut out = Vec::new();
    for (i, p) in peers.iter().enumerate() {
        if let Some(url) = &p.http {
            let ok = (url.starts_with("http://") || url.starts_with("https://"))
                && url.len() > "https://".len()
                && !url.contains(char::is_whitespace);
            if !ok {
                return Err(invalid(
                    &format!("peers[{i}].http"),
                    "must be a URL like http://authsync-eu-west:8080",
                ));
            }
            out.push((p.region.clone(), url.clone()));
        }
    }
    Ok(out)
}

/// Resolves `[kafka]`, `[[peers]]` and `[replication]` for the node of `region`;
/// `None` without a `[kafka]` section (a node on its own).
pub fn resolve(
    region: &str,
    kafka: Option<KafkaConfig>,
    peer_configs: &[PeerConfig],
    r: &ReplicationConfig,
) -> Result<Option<Replication>, Invalid> {
    let Some(kafka) = kafka else {
        if !peer_configs.is_empty() {
            return Err(invalid("peers", "need a [kafka] section"));
        }
        return Ok(None);
    };
    if kafka.bootstrap_servers.trim().is_empty() {
        return Err(invalid("kafka.bootstrap_servers", "must not be empty"));
    }
    if kafka.topic_prefix.is_empty()
        || !kafka
            .topic_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(invalid(
            "kafka.topic_prefix",
            "must be letters, digits, '.', '_' or '-'",
        ));
    }
    if !(1..=1000).contains(&kafka.partitions) {
        return Err(invalid("kafka.partitions", "must be between 1 and 1000"));
    }
    if !(1..=10).contains(&kafka.replication_factor) {
        return Err(invalid(
            "kafka.replication_factor",
            "must be between 1 and 10",
        ));
    }
    check_client_settings("kafka.client", &kafka.client)?;
    let mut peers = Vec::new();
    for (i, p) in peer_configs.iter().enumerate() {
        let key = format!("peers[{i}]");
        check_region_name(&p.region).map_err(|e| invalid(&format!("{key}.region"), e))?;
        if p.region == region {
            return Err(invalid(
                &format!("{key}.region"),
                "is this node's own region; a region never consumes its own changes",
            ));
        }
        if peers.iter().any(|q: &Peer| q.region == p.region) {
            return Err(invalid(&format!("{key}.region"), "is listed twice"));
        }
        if let Some(c) = &p.client {
            check_client_settings(&format!("{key}.client"), c)?;
        }
        let topic = p
            .topic
            .clone()
            .unwrap_or_else(|| format!("{}{}", kafka.topic_prefix, p.region));
        peers.push(Peer {
            region: p.region.clone(),
            bootstrap_servers: p
                .bootstrap_servers
                .clone()
                .unwrap_or_else(|| kafka.bootstrap_servers.clone()),
            key_topic: user_key_topic(&topic),
            topic,
            client: p.client.clone().unwrap_or_else(|| kafka.client.clone()),
        });
    }
    if r.publish_batch == 0 || r.publish_batch > 100_000 {
        return Err(invalid(
            "replication.publish_batch",
            "must be between 1 and 100000",
        ));
    }
    if r.publish_interval_ms == 0 {
        return Err(invalid(
            "replication.publish_interval_ms",
            "must be at least 1",
        ));
    }
    if !(1..=10_000).contains(&r.fetch_wait_max_ms) {
        return Err(invalid(
            "replication.fetch_wait_max_ms",
            "must be between 1 and 10000",
        ));
    }
    if !(1000..=300_000).contains(&r.session_timeout_ms) {
        return Err(invalid(
            "replication.session_timeout_ms",
            "must be between 1000 and 300000",
        ));
    }
    let topic = format!("{}{}", kafka.topic_prefix, region);
    Ok(Some(Replication {
        key_topic: user_key_topic(&topic),
        topic,
        bootstrap_servers: kafka.bootstrap_servers,
        partitions: kafka.partitions,
        replication_factor: kafka.replication_factor,
        create_topics: kafka.create_topics,
        client: kafka.client,
        peers,
        consumer_group: r
            .consumer_group
            .clone()
            .unwrap_or_else(|| format!("authsync-{region}")),
        publish_batch: r.publish_batch,
        publish_interval_ms: r.publish_interval_ms,
        session_timeout_ms: r.session_timeout_ms,
        fetch_wait_max_ms: r.fetch_wait_max_ms,
    }))
}

/// The publisher's librdkafka settings that `kafka.client` may change.
///
/// A request in flight when the broker stops answering (a blackholed link, a paused
/// broker) holds its connection until it times out. librdkafka's defaults, 30 s for a
/// produce request and 60 s for a socket, made a healed link wait that long before the
/// outbox moved again. The broker is the region's own, so 10 s is generous. Undelivered
/// messages stay in the outbox and are sent again, so a message timeout loses nothing.
pub const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    ("linger.ms", "2"),
    ("message.timeout.ms", "30000"),
    ("request.timeout.ms", "10000"),
    ("socket.timeout.ms", "10000"),
];

/// The consumers' librdkafka settings that `kafka.client` (or a peer's `client`) may
/// change. An offset commit in flight when the broker vanishes holds the coordinator
/// connection until it times out (60 s by default): recover sooner.
pub const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    ("topic.metadata.refresh.interval.ms", "10000"),
    ("socket.timeout.ms", "10000"),
];

/// `defaults` first, then the operator's `settings` over them, then the bootstrap.
pub fn client_config(
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
