//! authsync: a multi-region authentication store.
//!
//! # Layout
//!
//! The folders are layers, lowest first, in the order a request's data flows down
//! (`tests/layers.rs` enforces the rule below on every file):
//!
//! - [`proto`]: the protobuf formats (`proto/authsync.proto`) of records, events and
//!   entries; generated, usable by every layer.
//! - [`common`] (layer 0): the hybrid logical clock and record versions, metric
//!   names, fault switches, the replay window of single-use ids, TLS, region names,
//!   config problems, the job schedule.
//! - [`crypto`] (layer 1): primitives, compact JWS, keyrings, the envelope with user
//!   keys and MACs, blind indexes, password hashing.
//! - [`storage`] (layer 1): RocksDB, its column families, the one-batch write path
//!   and the outbox.
//! - [`accounts`] (layer 2): errors, request validation, replicated entries, lockout,
//!   API keys, the user service (`accounts/users/`, one file per operation), tokens,
//!   the OpenID Connect provider (`accounts/oidc/`).
//! - [`replication`] (layer 3): its config, topics, publisher, consumers, the retry
//!   queue, anti-entropy, and requests sent to a peer on a caller's behalf.
//! - [`api`] (layer 4): the router, its state, the one file where errors become
//!   HTTP statuses (`api/error.rs`), extractors, middleware, handlers by area.
//! - [`node`] (layer 5): start-up and ordered shutdown, the config that gathers every
//!   component's section, the sweepers, the launcher that `authsync demo` and
//!   `authsync bench` (through the local cluster), the chaos harness and the tests
//!   start node processes with, and the local cluster.
//!
//! The binary (`src/main.rs` and `src/cli/`: demo, bench, dlq, the admin client) uses
//! this library from outside, like the chaos harness does.
//!
//! # The import rule
//!
//! A file imports only from layers below its own, and from `proto`. `crypto` and
//! `storage` share a layer and never import each other. Inside a layer, the order in
//! its `mod.rs` holds: in crypto, `primitives` → `keyring` → the rest; in accounts,
//! `error` → `input` → `entries` → {`lockout`, `api_keys`} → `users` → `tokens`; in
//! the API, handler files import only `state`, `error` and `extract` of the API, and
//! only `api/mod.rs` builds routes.

pub mod common;

pub mod crypto;
pub mod storage;

pub mod accounts;

pub mod replication;

pub mod api;

pub mod node;

/// Generated from `proto/authsync.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/authsync.v1.rs"));
}
