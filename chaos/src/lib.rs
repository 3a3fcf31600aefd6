//! authsync-chaos: fault injection for an authsync cluster.
//!
//! The chaos harness puts a proxy on every node↔broker and node↔node connection and
//! breaks those links on a schedule while a workload runs. Each node runs in a network
//! namespace of its own, where the harness's proxies listen on the addresses the node
//! dials, so every node has its own links even to an address all of them share.
//!
//! # Layout
//!
//! - [`proxy`]: a TCP proxy between one listen address and one upstream, with faults
//!   switched at runtime — latency with jitter, blackhole, one-way partitions, resets of
//!   every connection, refusal of new ones — and counters of what it did.
//! - [`workload`]: clients writing to every region, each operation logged with its
//!   outcome; [`schedule`]: the faults and their seeded schedule; [`check`]: lost,
//!   diverged, duplicates; [`run`]: one whole run and its report.
//! - [`cluster`]: three node processes, one per namespace, a broker, and a proxy on
//!   every link between them; nodes and the broker can be killed and restarted.
//! - [`compose`]: the docker compose cluster instead, broken through the Docker CLI;
//!   [`target`]: either cluster, as the schedule and the checks see it.
//! - [`netns`]: network namespaces that outlive the node run in them, and sockets that
//!   listen or connect inside one, so proxies can sit on either side of its boundary.
//! - [`kafka`]: replay of a topic from offset 0 (duplicate delivery), and a scan of
//!   every message's key, payload and headers for plaintext markers.
//! - [`plaintext`]: a scan of every file under a data directory for plaintext markers.

pub mod check;
pub mod cluster;
pub mod compose;
pub mod kafka;
pub mod netns;
pub mod plaintext;
pub mod proxy;
pub mod run;
pub mod schedule;
pub mod target;
pub mod workload;
