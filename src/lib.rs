//! authsync: a multi-region authentication store.
//!
//! # Layout
//!
//! - [`config`]: the node's TOML configuration, parsed then validated.
//! - [`keys`]: keyrings — versioned master keys per region, blind-index key, pepper.
//! - [`crypto`]: envelope encryption of personal data and blind indexes.
//! - [`signing`]: signed requests from member platforms (HS256 or EdDSA JWTs bound
//!   to the request, `jti` replays refused).
//! - [`lockout`]: per-account brute-force backoff shared by the regions;
//!   [`ratelimit`]: a token bucket per source address for logins and lookups.
//! - [`password`]: current (Argon2id, PBKDF2) and legacy password hashes.
//! - [`hlc`]: the hybrid logical clock and record versions (last-writer-wins order).
//! - [`store`]: RocksDB column families and the one-batch write path with its outbox.
//! - [`users`]: the user service — every operation on records.
//! - [`validate`]: request validation that reports every problem at once.
//! - [`tokens`]: access tokens (Ed25519 JWTs), refresh token families, signing keys
//!   and the JWK set.
//! - [`api`]: the HTTP API (axum), and the one place errors become status codes;
//!   [`tls`]: HTTPS on its listener (rustls), certificates reloaded when renewed.
//! - [`metrics`]: every metric name, described at start-up.
//! - [`replication`]: the outbox publisher and the peer consumers (Kafka).
//! - [`retry`]: the durable retry queue and dead letters for events not applied.
//! - [`sweep`]: scheduled sweepers (retry, key recovery, anti-entropy).
//! - [`antientropy`]: per-bucket digest comparison with peers, and repair by pull.
//! - [`admin`]: operator endpoints for the queues and faults; peers' internal endpoints.
//! - [`dlq`]: the `authsync dlq` commands; [`client`]: the admin API client they and
//!   `authsync api-keys` use.
//! - [`entries`]: replicated entries beside the records; [`apikeys`]: the API keys a
//!   node accepts, with scopes, added and revoked at runtime.
//! - [`faults`]: fault switches for tests and the chaos harness (off by default).
//! - [`node`]: one region's node: start-up, background tasks, ordered shutdown.
//! - [`demo`]: `authsync demo`, a node with no setup.
//! - [`bench`]: `authsync bench`, end-to-end load beside the machine's own floors.
//! - [`proto`]: the protobuf formats (`proto/authsync.proto`) of records and events.

pub mod admin;
pub mod antientropy;
pub mod api;
pub mod apikeys;
pub mod bench;
pub mod client;
pub mod config;
pub mod crypto;
pub mod demo;
pub mod dlq;
pub mod entries;
pub mod faults;
pub mod hlc;
pub mod keys;
pub mod lockout;
pub mod metrics;
pub mod node;
pub mod password;
pub mod process;
pub mod ratelimit;
pub mod replication;
pub mod retry;
pub mod signing;
pub mod store;
pub mod sweep;
pub mod tls;
pub mod tokens;
pub mod users;
pub mod validate;

/// Generated from `proto/authsync.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/authsync.v1.rs"));
}
