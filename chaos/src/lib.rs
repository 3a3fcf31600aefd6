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
//! - [`cluster`]: three node processes, one per namespace, a broker, and a proxy on
//!   every link between them; nodes and the broker can be killed and restarted.
//! - [`netns`]: network namespaces that outlive the node run in them, and sockets that
//!   listen or connect inside one, so proxies can sit on either side of its boundary.

pub mod cluster;
pub mod netns;
pub mod proxy;
