//! Node configuration: a TOML file read in two steps.
//!
//! [`RawConfig`] is the file as written (every section optional, unknown keys
//! refused); [`RawConfig::validate`] checks it and returns the immutable [`Config`]
//! the node runs with. Every default works for `authsync demo`.
//!
//! Each section's type belongs to the component it configures, with the check of its
//! own fields (`HttpConfig` in `api/config.rs`, `RetryConfig` in
//! `replication/retry_queue.rs`, …): this file gathers them, as tikv's top config
//! does, and depends on the components, never the other way round.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::accounts::api_keys::{ApiKeyConfig, Scopes};
use crate::accounts::entries::EntriesConfig;
use crate::accounts::tokens::TokenConfig;
use crate::api::config::HttpConfig;
use crate::api::middleware::rate_limit::RateLimitConfig;
use crate::api::middleware::signing::{SigningConfig, Verifier};
use crate::common::config::{self as common_config, Invalid};
use crate::common::faults::FaultsConfig;
use crate::common::hlc::ClockConfig;
use crate::common::region::check_region_name;
use crate::common::tls::TlsFiles;
use crate::crypto::keyring::KeysConfig;
use crate::crypto::password::PasswordConfig;
use crate::replication::anti_entropy::AntiEntropyConfig;
use crate::replication::config::{
    self as replication_config, KafkaConfig, PeerConfig, Replication, ReplicationConfig,
};
use crate::replication::retry_queue::RetryConfig;
use crate::storage::store::StorageConfig;

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
    common_config::invalid(key, problem).into()
}

impl From<Invalid> for ConfigError {
    fn from(Invalid { key, problem }: Invalid) -> Self {
        ConfigError::Invalid { key, problem }
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
    pub tokens: TokenConfig,
    #[serde(default)]
    pub oidc: crate::accounts::oidc::OidcConfig,
    /// Where reset and verification tokens are sent.
    #[serde(default)]
    pub delivery: crate::api::delivery::DeliveryConfig,
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
    pub request_signing: SigningConfig,
}

/// A validated configuration; build one with [`RawConfig::validate`].
#[derive(Debug, Clone)]
pub struct Config {
    pub region: String,
    pub data_dir: PathBuf,
    pub keyring: PathBuf,
    pub listen: SocketAddr,
    /// HTTPS, checked: both files load and the key is the certificate's.
    pub tls: Option<TlsFiles>,
    pub max_body_bytes: usize,
    pub max_import_items: usize,
    pub serve_limits: crate::common::serve::Limits,
    pub request_timeout: std::time::Duration,
    pub max_hashing_in_flight: usize,
    /// `/metrics` on a listener of its own (`http.metrics_listen`).
    pub metrics_listen: Option<SocketAddr>,
    /// (name, SHA-256 of the key).
    pub api_keys: Vec<(String, [u8; 32], Scopes)>,
    pub storage: StorageConfig,
    pub clock: ClockConfig,
    pub passwords: PasswordConfig,
    pub keys: KeysConfig,
    pub tokens: TokenConfig,
    pub oidc: crate::accounts::oidc::OidcConfig,
    pub delivery: crate::api::delivery::DeliveryConfig,
    /// `None`: a node on its own, no replication.
    pub replication: Option<Replication>,
    pub retry: RetryConfig,
    pub anti_entropy: AntiEntropyConfig,
    /// (region, base URL) of each peer compared by anti-entropy.
    pub anti_entropy_peers: Vec<(String, String)>,
    pub faults: FaultsConfig,
    pub entries: EntriesConfig,
    pub rate_limit: RateLimitConfig,
    pub request_signing: SigningConfig,
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
        // Each component checks its own section; this file only gathers them and
        // checks what spans sections.
        let listen = self.http.validate()?;
        let api_keys = ApiKeyConfig::resolve(&self.api_keys)?;
        Verifier::new(&self.request_signing).map_err(|e| invalid("request_signing", e))?;
        self.tokens.validate()?;
        self.oidc.validate()?;
        self.delivery.validate()?;
        self.rate_limit.validate()?;
        self.storage.validate()?;
        self.clock.validate()?;
        self.passwords.validate()?;
        self.keys.validate()?;
        self.retry.validate()?;
        self.entries.validate()?;
        self.anti_entropy.validate()?;
        let anti_entropy_peers = replication_config::anti_entropy_peers(&self.peers)?;
        let replication =
            replication_config::resolve(&self.region, self.kafka, &self.peers, &self.replication)?;
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
            serve_limits: crate::common::serve::Limits {
                max_connections: self.http.max_connections,
                max_per_address: self.http.max_connections_per_address,
                header_read_timeout: std::time::Duration::from_millis(
                    self.http.header_read_timeout_ms,
                ),
            },
            request_timeout: std::time::Duration::from_millis(self.http.request_timeout_ms),
            max_hashing_in_flight: self.http.max_hashing_in_flight,
            metrics_listen: self.http.metrics_addr().map_err(ConfigError::from)?,
            tls: self.http.tls,
            max_body_bytes: self.http.max_body_bytes,
            max_import_items: self.http.max_import_items,
            api_keys,
            storage: self.storage,
            clock: self.clock,
            passwords: self.passwords,
            keys: self.keys,
            tokens: self.tokens,
            oidc: self.oidc,
            delivery: self.delivery,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::password::PasswordAlgorithm;
    use crate::storage::store::WalSync;

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
