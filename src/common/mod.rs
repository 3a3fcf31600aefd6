//! Layer 0, common: what every layer above shares and nothing here depends on: the
//! hybrid logical clock and record versions, metric names, fault switches, the replay
//! window of single-use ids, the HTTP listeners and TLS, region names, config problems
//! and the job schedule.
//! It may use only `proto` and outside crates.

pub mod config;
pub mod faults;
pub mod hlc;
pub mod metrics;
pub mod region;
pub mod replay;
pub mod schedule;
pub mod serve;
pub mod tls;
