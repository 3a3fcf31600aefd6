//! authsync-chaos: fault injection for an authsync cluster.
//!
//! The chaos harness puts a proxy on every node↔broker and node↔node connection and
//! breaks those links on a schedule while a workload runs.
//!
//! # Layout
//!
//! - [`proxy`]: a TCP proxy between one listen address and one upstream, with faults
//!   switched at runtime — latency with jitter, blackhole, one-way partitions, resets of
//!   every connection, refusal of new ones — and counters of what it did.

pub mod proxy;
