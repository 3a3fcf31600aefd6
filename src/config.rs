//! Node configuration: a TOML file read in two steps.
//!
//! [`RawConfig`] is the file as written (every section optional, unknown keys
//! refused); [`RawConfig::validate`] checks the rules that span fields and returns the
//! immutable [`Config`] the node runs with. Every default works for `authsync demo`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why a configuration was refused. The message always names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("parse config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {key}: {problem}")]
    Invalid { key: String, problem: String },
}

fn invalid(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        problem: problem.into(),
    }
}

/// The configuration file as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// This node's region, e.g. `eu-west`. Lower-case letters, digits and dashes.
    pub region: String,
    /// RocksDB directory; created when missing.
    pub data_dir: PathBuf,
    /// The region's keyring file (written by `authsync keys init`, mode 0600).
    pub keyring: PathBuf,
    #[serde(default)]
    pub http: HttpConfig,
    /// API keys accepted from callers, stored as SHA-256 hashes.
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub clock: ClockConfig,
    #[serde(default)]
    pub passwords: PasswordConfig,
    #[serde(default)]
    pub keys: KeysConfig,
    #[serde(default)]
    pub tokens: crate::tokens::TokenConfig,
    /// This region's Kafka cluster, where its changes are published. Without it the
    /// node runs alone (no replication).
    #[serde(default)]
    pub kafka: Option<KafkaConfig>,
    /// Regions whose changes this node applies.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    #[serde(default)]
    pub replication: ReplicationConfig,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub anti_entropy: AntiEntropyConfig,
    #[serde(default)]
    pub faults: FaultsConfig,
    #[serde(default)]
    pub entries: EntriesConfig,
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    #[serde(default)]
    pub request_signing: crate::signing::SigningConfig,
}

/// The per-address token bucket in front of `POST /v1/login` and lookups
/// (`GET /v1/users?email=|phone=`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Requests per second each address gets back. 0 turns the limit off. Default 100:
    /// without `client_ip_header` an address is a whole calling platform.
    pub per_second: f64,
    /// Requests an address may make at once. Default 200.
    pub burst: u32,
    /// Addresses tracked at most (memory bound). Default 100000.
    pub max_tracked: usize,
    /// A header naming the end user's address, set by the calling platform (say
    /// "x-forwarded-for": its first address counts). Without it, or when a request
    /// lacks it, the connection's peer address counts. Default none.
    pub client_ip_header: Option<String>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            per_second: 100.0,
            burst: 200,
            max_tracked: 100_000,
            client_ip_header: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// How often the retry sweeper looks for due events. Default 1 s.
    pub sweep_interval_ms: u64,
    /// Events tried per sweep at most. Default 500.
    pub sweep_batch: usize,
    /// Attempts before an event becomes a dead letter, the first included. Default 10.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt, with jitter. Default 1 s.
    pub backoff_base_ms: u64,
    /// Longest retry delay. Default 5 min.
    pub backoff_max_ms: u64,
    /// Bound on parked events. Default 100000.
    pub max_entries: u64,
    /// Bound on parked bytes. Default 256 MiB.
    pub max_bytes: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            sweep_interval_ms: 1_000,
            sweep_batch: 500,
            max_attempts: 10,
            backoff_base_ms: 1_000,
            backoff_max_ms: 300_000,
            max_entries: 100_000,
            max_bytes: 256 << 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AntiEntropyConfig {
    /// How often each peer with an `http` address is compared. Default 60 s.
    pub interval_ms: u64,
    /// A PEM CA bundle trusted for peers' `https://` addresses, besides the system's
    /// roots.
    pub ca_cert: Option<PathBuf>,
}

impl Default for AntiEntropyConfig {
    fn default() -> Self {
        AntiEntropyConfig {
            interval_ms: 60_000,
            ca_cert: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EntriesConfig {
    /// How often dead replicated entries (idle login-failure counts, expired refresh
    /// token families, both for erased accounts) are removed. Default 60 s.
    pub sweep_interval_ms: u64,
}

impl Default for EntriesConfig {
    fn default() -> Self {
        EntriesConfig {
            sweep_interval_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultsConfig {
    /// Exposes `/v1/admin/faults` (key outages, failing applies) for tests and the
    /// chaos harness. Never in production. Default false.
    pub enabled: bool,
}

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

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address the API listens on. Default `127.0.0.1:8080`; port 0 picks a free port.
    pub listen: String,
    /// Largest accepted request body. Default 64 KiB.
    pub max_body_bytes: usize,
    /// Most items in one `POST /v1/users/import`. Default 1000.
    pub max_import_items: usize,
    /// Serve HTTPS with this certificate and key. Default: plain HTTP.
    pub tls: Option<crate::tls::TlsFiles>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 64 * 1024,
            max_import_items: 1000,
            tls: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// A label for logs and metrics; never the key itself.
    pub name: String,
    /// Hex SHA-256 of the key as callers send it.
    pub sha256: String,
    /// What the key may do: "read", "write", "admin". Default: all three.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
}

/// When a write counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WalSync {
    /// fsync the write-ahead log before acknowledging (survives power loss). Default.
    Always,
    /// Leave the WAL in the OS page cache (survives a process crash, not power loss).
    Never,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub wal_sync: WalSync,
    /// RocksDB block cache size. Default 64 MiB.
    pub block_cache_mb: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            wal_sync: WalSync::Always,
            block_cache_mb: 64,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClockConfig {
    /// How far ahead of local time a received timestamp may be. Default 500 ms.
    pub max_skew_ms: u64,
}

impl Default for ClockConfig {
    fn default() -> Self {
        ClockConfig { max_skew_ms: 500 }
    }
}

/// The algorithm for new password hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum PasswordAlgorithm {
    /// Argon2id, m=19 MiB, t=2, p=1 (OWASP). Default.
    #[serde(rename = "argon2id")]
    Argon2id,
    /// PBKDF2-HMAC-SHA256, 600,000 iterations (OWASP).
    #[serde(rename = "pbkdf2-sha256")]
    Pbkdf2Sha256,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordConfig {
    pub algorithm: PasswordAlgorithm,
    /// Shortest accepted password, in characters. Default 8 (NIST SP 800-63B).
    pub min_length: usize,
}

impl Default for PasswordConfig {
    fn default() -> Self {
        PasswordConfig {
            algorithm: PasswordAlgorithm::Argon2id,
            min_length: 8,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// How often the keyring file is checked for a new version (rotation). Default 5 s.
    pub reload_interval_ms: u64,
    /// How often the re-wrap task looks for records under an older master key. Default 10 s.
    pub rewrap_interval_ms: u64,
    /// Records re-wrapped per round at most. Default 500.
    pub rewrap_batch: usize,
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            reload_interval_ms: 5_000,
            rewrap_interval_ms: 10_000,
            rewrap_batch: 500,
        }
    }
}

/// A validated configuration; build one with [`RawConfig::validate`].
#[derive(Debug, Clone)]
pub struct Config {
    pub region: String,
    pub data_dir: PathBuf,
    pub keyring: PathBuf,
    pub listen: SocketAddr,
    /// HTTPS, checked: both files load and the key is the certificate's.
    pub tls: Option<crate::tls::TlsFiles>,
    pub max_body_bytes: usize,
    pub max_import_items: usize,
    /// (name, SHA-256 of the key).
    pub api_keys: Vec<(String, [u8; 32], crate::apikeys::Scopes)>,
    pub storage: StorageConfig,
    pub clock: ClockConfig,
    pub passwords: PasswordConfig,
    pub keys: KeysConfig,
    pub tokens: crate::tokens::TokenConfig,
    /// `None`: a node on its own, no replication.
    pub replication: Option<Replication>,
    pub retry: RetryConfig,
    pub anti_entropy: AntiEntropyConfig,
    /// (region, base URL) of each peer compared by anti-entropy.
    pub anti_entropy_peers: Vec<(String, String)>,
    pub faults: FaultsConfig,
    pub entries: EntriesConfig,
    pub rate_limit: RateLimitConfig,
    pub request_signing: crate::signing::SigningConfig,
}

fn check_client_settings(
    key: &str,
    settings: &std::collections::BTreeMap<String, String>,
) -> Result<(), ConfigError> {
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

/// Region names are used in topic names, key ids and metric labels.
pub fn check_region_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a region name (1-32 of a-z, 0-9 and '-', not starting or ending with '-')"
        ))
    }
}

impl RawConfig {
    pub fn load(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        RawConfig::parse(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<RawConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    pub fn validate(self) -> Result<Config, ConfigError> {
        check_region_name(&self.region).map_err(|p| invalid("region", p))?;
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty"));
        }
        if self.keyring.as_os_str().is_empty() {
            return Err(invalid("keyring", "must not be empty"));
        }
        let listen: SocketAddr = self.http.listen.parse().map_err(|_| {
            invalid(
                "http.listen",
                format!(
                    "{:?} is not an address like 127.0.0.1:8080",
                    self.http.listen
                ),
            )
        })?;
        if !(1024..=16 * 1024 * 1024).contains(&self.http.max_body_bytes) {
            return Err(invalid(
                "http.max_body_bytes",
                "must be between 1024 and 16777216",
            ));
        }
        if !(1..=100_000).contains(&self.http.max_import_items) {
            return Err(invalid(
                "http.max_import_items",
                "must be between 1 and 100000",
            ));
        }
        if self.api_keys.is_empty() {
            return Err(invalid(
                "api_keys",
                "at least one key is required (see `authsync keys api-key`)",
            ));
        }
        let mut api_keys = Vec::with_capacity(self.api_keys.len());
        for (i, key) in self.api_keys.iter().enumerate() {
            if key.name.trim().is_empty() {
                return Err(invalid(&format!("api_keys[{i}].name"), "must not be empty"));
            }
            let mut hash = [0u8; 32];
            hex::decode_to_slice(key.sha256.trim(), &mut hash).map_err(|_| {
                invalid(
                    &format!("api_keys[{i}].sha256"),
                    "must be 64 hex digits (the SHA-256 of the key)",
                )
            })?;
            let scopes = match &key.scopes {
                None => crate::apikeys::Scopes::all(),
                Some(names) => crate::apikeys::Scopes::parse(names)
                    .map_err(|e| invalid(&format!("api_keys[{i}].scopes"), e))?,
            };
            api_keys.push((key.name.clone(), hash, scopes));
        }
        crate::signing::Verifier::new(&self.request_signing)
            .map_err(|e| invalid("request_signing", e))?;
        let t = &self.tokens;
        if t.issuer.trim().is_empty() || t.audience.trim().is_empty() {
            return Err(invalid("tokens", "issuer and audience must not be empty"));
        }
        if !(60..=86_400).contains(&t.access_ttl_s) {
            return Err(invalid("tokens.access_ttl_s", "must be from 60 to 86400"));
        }
        if !(t.access_ttl_s..=365 * 86_400).contains(&t.refresh_ttl_s) {
            return Err(invalid(
                "tokens.refresh_ttl_s",
                "must be from access_ttl_s to a year",
            ));
        }
        if t.publish_lead_s > 7 * 86_400 {
            return Err(invalid("tokens.publish_lead_s", "must be at most a week"));
        }
        let rl = &self.rate_limit;
        if !(rl.per_second.is_finite() && (0.0..=1_000_000.0).contains(&rl.per_second)) {
            return Err(invalid(
                "rate_limit.per_second",
                "must be from 0 (off) to 1000000",
            ));
        }
        if rl.burst == 0 || rl.max_tracked == 0 {
            return Err(invalid(
                "rate_limit",
                "burst and max_tracked must be at least 1",
            ));
        }
        if let Some(h) = &rl.client_ip_header {
            if axum::http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err(invalid(
                    "rate_limit.client_ip_header",
                    "must be a header name",
                ));
            }
        }
        if self.storage.block_cache_mb == 0 {
            return Err(invalid("storage.block_cache_mb", "must be at least 1"));
        }
        if self.clock.max_skew_ms == 0 || self.clock.max_skew_ms > 3_600_000 {
            return Err(invalid(
                "clock.max_skew_ms",
                "must be between 1 and 3600000",
            ));
        }
        if !(8..=64).contains(&self.passwords.min_length) {
            return Err(invalid("passwords.min_length", "must be between 8 and 64"));
        }
        if self.keys.reload_interval_ms < 100 {
            return Err(invalid("keys.reload_interval_ms", "must be at least 100"));
        }
        if self.keys.rewrap_interval_ms < 100 {
            return Err(invalid("keys.rewrap_interval_ms", "must be at least 100"));
        }
        if self.keys.rewrap_batch == 0 {
            return Err(invalid("keys.rewrap_batch", "must be at least 1"));
        }
        let rt = &self.retry;
        if rt.sweep_interval_ms < 10 {
            return Err(invalid("retry.sweep_interval_ms", "must be at least 10"));
        }
        if rt.sweep_batch == 0 {
            return Err(invalid("retry.sweep_batch", "must be at least 1"));
        }
        if !(1..=1000).contains(&rt.max_attempts) {
            return Err(invalid("retry.max_attempts", "must be between 1 and 1000"));
        }
        if rt.backoff_base_ms == 0 || rt.backoff_base_ms > rt.backoff_max_ms {
            return Err(invalid(
                "retry.backoff_base_ms",
                "must be at least 1 and at most retry.backoff_max_ms",
            ));
        }
        if rt.max_entries == 0 {
            return Err(invalid("retry.max_entries", "must be at least 1"));
        }
        if rt.max_bytes < 4096 {
            return Err(invalid("retry.max_bytes", "must be at least 4096"));
        }
        if self.entries.sweep_interval_ms < 100 {
            return Err(invalid("entries.sweep_interval_ms", "must be at least 100"));
        }
        if self.anti_entropy.interval_ms < 100 {
            return Err(invalid("anti_entropy.interval_ms", "must be at least 100"));
        }
        if let Some(ca) = &self.anti_entropy.ca_cert {
            crate::tls::read_roots(ca)
                .map_err(|e| invalid("anti_entropy.ca_cert", e.to_string()))?;
        }
        if let Some(tls) = &self.http.tls {
            if tls.reload_interval_ms < 1000 {
                return Err(invalid(
                    "http.tls.reload_interval_ms",
                    "must be at least 1000",
                ));
            }
            crate::tls::load(tls).map_err(|e| invalid("http.tls", e.to_string()))?;
        }
        let mut anti_entropy_peers = Vec::new();
        for (i, p) in self.peers.iter().enumerate() {
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
                anti_entropy_peers.push((p.region.clone(), url.clone()));
            }
        }
        let replication = match self.kafka {
            None => {
                if !self.peers.is_empty() {
                    return Err(invalid("peers", "need a [kafka] section"));
                }
                None
            }
            Some(kafka) => {
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
                for (i, p) in self.peers.iter().enumerate() {
                    let key = format!("peers[{i}]");
                    check_region_name(&p.region)
                        .map_err(|e| invalid(&format!("{key}.region"), e))?;
                    if p.region == self.region {
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
                let r = &self.replication;
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
                let topic = format!("{}{}", kafka.topic_prefix, self.region);
                Some(Replication {
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
                        .unwrap_or_else(|| format!("authsync-{}", self.region)),
                    publish_batch: r.publish_batch,
                    publish_interval_ms: r.publish_interval_ms,
                    session_timeout_ms: r.session_timeout_ms,
                    fetch_wait_max_ms: r.fetch_wait_max_ms,
                })
            }
        };
        Ok(Config {
            replication,
            retry: self.retry,
            anti_entropy: self.anti_entropy,
            anti_entropy_peers,
            faults: self.faults,
            entries: self.entries,
            rate_limit: self.rate_limit,
            request_signing: self.request_signing,
            region: self.region,
            data_dir: self.data_dir,
            keyring: self.keyring,
            listen,
            tls: self.http.tls,
            max_body_bytes: self.http.max_body_bytes,
            max_import_items: self.http.max_import_items,
            api_keys,
            storage: self.storage,
            clock: self.clock,
            passwords: self.passwords,
            keys: self.keys,
            tokens: self.tokens,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
region = "eu-west"
data_dir = "/tmp/x"
keyring = "/tmp/k.json"
[[api_keys]]
name = "ops"
sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
"#;

    #[test]
    fn defaults_fill_every_section() {
        let cfg = RawConfig::parse(GOOD).unwrap().validate().unwrap();
        assert_eq!(cfg.listen.port(), 8080);
        assert_eq!(cfg.storage.wal_sync, WalSync::Always);
        assert_eq!(cfg.clock.max_skew_ms, 500);
        assert_eq!(cfg.passwords.algorithm, PasswordAlgorithm::Argon2id);
    }

    #[test]
    fn shipped_examples_are_valid() {
        for dir in ["config", "config/compose"] {
            for region in ["af-south", "eu-west", "us-east"] {
                let path =
                    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("{dir}/{region}.toml"));
                let cfg = RawConfig::load(&path).unwrap().validate().unwrap();
                assert_eq!(cfg.region, region);
                let r = cfg.replication.expect("replicates");
                assert_eq!(r.peers.len(), 2, "{}", path.display());
                assert_eq!(cfg.anti_entropy_peers.len(), 2, "{}", path.display());
            }
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = RawConfig::parse(&format!("{GOOD}\n[http]\nlisten_addr = \"x\"\n")).unwrap_err();
        assert!(err.contains("listen_addr"), "{err}");
    }

    #[test]
    fn cross_field_rules_name_the_key() {
        let mut raw = RawConfig::parse(GOOD).unwrap();
        raw.http.listen = "nowhere".into();
        let err = raw.validate().unwrap_err().to_string();
        assert!(err.contains("http.listen"), "{err}");

        let mut raw = RawConfig::parse(GOOD).unwrap();
        raw.api_keys[0].sha256 = "abc".into();
        let err = raw.validate().unwrap_err().to_string();
        assert!(err.contains("api_keys[0].sha256"), "{err}");

        let mut raw = RawConfig::parse(GOOD).unwrap();
        raw.region = "EU West".into();
        let err = raw.validate().unwrap_err().to_string();
        assert!(err.starts_with("invalid config: region"), "{err}");
    }
}
