//! Every metric the node exports, named in one place.
//!
//! Names follow `authsync_<subsystem>_<name>_<unit>`: counters end in `_total`,
//! durations are in seconds. Labels come from small fixed sets (route template, method,
//! status code, outcome, reason, source region) and never carry user data. Histograms get explicit buckets.

use std::sync::OnceLock;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const HTTP_REQUESTS_TOTAL: &str = "authsync_http_requests_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "authsync_http_request_duration_seconds";
pub const STORE_COMMIT_DURATION_SECONDS: &str = "authsync_store_commit_duration_seconds";
pub const STORE_COMMITS_TOTAL: &str = "authsync_store_commits_total";
pub const OUTBOX_EVENTS_TOTAL: &str = "authsync_outbox_events_total";
pub const RECORDS_UNREADABLE_TOTAL: &str = "authsync_records_unreadable_total";
pub const LOGINS_TOTAL: &str = "authsync_logins_total";
pub const PASSWORD_HASH_DURATION_SECONDS: &str = "authsync_password_hash_duration_seconds";
pub const PASSWORD_UPGRADES_TOTAL: &str = "authsync_password_upgrades_total";
pub const IMPORT_ITEMS_TOTAL: &str = "authsync_import_items_total";
pub const KEYRING_RELOADS_TOTAL: &str = "authsync_keyring_reloads_total";
pub const KEYRING_ACTIVE_VERSION: &str = "authsync_keyring_active_version";
pub const REWRAPPED_RECORDS_TOTAL: &str = "authsync_rewrapped_records_total";
pub const NODE_UP: &str = "authsync_node_up";
pub const REPLICATION_EVENTS_TOTAL: &str = "authsync_replication_events_total";
pub const REPLICATION_LAG_SECONDS: &str = "authsync_replication_lag_seconds";
pub const OUTBOX_DEPTH: &str = "authsync_outbox_depth";
pub const OUTBOX_OLDEST_AGE_SECONDS: &str = "authsync_outbox_oldest_age_seconds";
pub const PUBLISHED_EVENTS_TOTAL: &str = "authsync_replication_published_total";
pub const PUBLISH_ERRORS_TOTAL: &str = "authsync_replication_publish_errors_total";
pub const CONSUMER_LAG_MESSAGES: &str = "authsync_replication_consumer_lag_messages";

/// Latency buckets (seconds) for requests and commits: 0.5 ms to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once) and describes every metric.
/// Every series carries the node's `region` label.
pub fn install(region: &str) -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .add_global_label("region", region)
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("buckets are non-empty")
                .install_recorder()
                .expect("the metrics recorder is installed once per process");
            describe();
            handle
        })
        .clone()
}

fn describe() {
    describe_counter!(
        HTTP_REQUESTS_TOTAL,
        Unit::Count,
        "HTTP requests by route, method and status."
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "HTTP request latency by route."
    );
    describe_histogram!(
        STORE_COMMIT_DURATION_SECONDS,
        Unit::Seconds,
        "Time to write one change batch durably (record, indexes, outbox event)."
    );
    describe_counter!(
        STORE_COMMITS_TOTAL,
        Unit::Count,
        "Change batches written, by kind of change."
    );
    describe_counter!(
        OUTBOX_EVENTS_TOTAL,
        Unit::Count,
        "Change events appended to the outbox."
    );
    describe_counter!(
        RECORDS_UNREADABLE_TOTAL,
        Unit::Count,
        "Reads that failed: integrity (tampered or corrupt), no_key (no data key for this region), unknown_key."
    );
    describe_counter!(LOGINS_TOTAL, Unit::Count, "Login attempts by outcome.");
    describe_histogram!(
        PASSWORD_HASH_DURATION_SECONDS,
        Unit::Seconds,
        "Time to hash or verify one password."
    );
    describe_counter!(
        PASSWORD_UPGRADES_TOTAL,
        Unit::Count,
        "Legacy or outdated password hashes replaced on login."
    );
    describe_counter!(
        IMPORT_ITEMS_TOTAL,
        Unit::Count,
        "Imported users by outcome (created, merged)."
    );
    describe_counter!(
        KEYRING_RELOADS_TOTAL,
        Unit::Count,
        "Keyring reloads by outcome."
    );
    describe_gauge!(
        KEYRING_ACTIVE_VERSION,
        Unit::Count,
        "Active master key version of this region."
    );
    describe_counter!(
        REWRAPPED_RECORDS_TOTAL,
        Unit::Count,
        "Records whose data key was re-wrapped under current master keys."
    );
    describe_gauge!(NODE_UP, Unit::Count, "1 while the node serves requests.");
    describe_counter!(
        REPLICATION_EVENTS_TOTAL,
        Unit::Count,
        "Replicated events received from a source region, by outcome: applied, skipped (not newer), merged (duplicate account resolved), refused (clock skew), malformed, integrity, error."
    );
    describe_histogram!(
        REPLICATION_LAG_SECONDS,
        Unit::Seconds,
        "Apply time minus the event's HLC timestamp, per source region."
    );
    describe_gauge!(
        OUTBOX_DEPTH,
        Unit::Count,
        "Change events not yet acknowledged by the broker."
    );
    describe_gauge!(
        OUTBOX_OLDEST_AGE_SECONDS,
        Unit::Seconds,
        "Age of the oldest unpublished change event."
    );
    describe_counter!(
        PUBLISHED_EVENTS_TOTAL,
        Unit::Count,
        "Change events acknowledged by the broker."
    );
    describe_counter!(
        PUBLISH_ERRORS_TOTAL,
        Unit::Count,
        "Change events the broker did not acknowledge (retried)."
    );
}
