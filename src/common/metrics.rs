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
pub const SIGNATURES_REFUSED_TOTAL: &str = "authsync_signatures_refused_total";
pub const UNSIGNED_ACCEPTED_TOTAL: &str = "authsync_unsigned_accepted_total";
pub const OIDC_SIGN_INS_TOTAL: &str = "authsync_oidc_sign_ins_total";
pub const OIDC_CODES_ISSUED_TOTAL: &str = "authsync_oidc_codes_issued_total";
pub const OIDC_TOKENS_GRANTED_TOTAL: &str = "authsync_oidc_tokens_granted_total";
pub const OIDC_TOKEN_REFUSED_TOTAL: &str = "authsync_oidc_token_refused_total";
pub const OIDC_CODES_FORWARDED_TOTAL: &str = "authsync_oidc_codes_forwarded_total";
pub const DELIVERIES_TOTAL: &str = "authsync_deliveries_total";
pub const ACCOUNT_TOKENS_TOTAL: &str = "authsync_account_tokens_total";
pub const LOGINS_TOTAL: &str = "authsync_logins_total";
pub const LOGIN_LOCKOUTS_TOTAL: &str = "authsync_login_lockouts_total";
pub const RATE_LIMITED_TOTAL: &str = "authsync_rate_limited_total";
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "authsync_tls_handshake_failures_total";
pub const TLS_RELOADS_TOTAL: &str = "authsync_tls_reloads_total";
pub const PASSWORD_HASH_DURATION_SECONDS: &str = "authsync_password_hash_duration_seconds";
pub const PASSWORD_UPGRADES_TOTAL: &str = "authsync_password_upgrades_total";
pub const IMPORT_ITEMS_TOTAL: &str = "authsync_import_items_total";
pub const KEYRING_RELOADS_TOTAL: &str = "authsync_keyring_reloads_total";
pub const KEYRING_ACTIVE_VERSION: &str = "authsync_keyring_active_version";
pub const REWRAPPED_RECORDS_TOTAL: &str = "authsync_rewrapped_records_total";
pub const NODE_UP: &str = "authsync_node_up";
pub const REPLICATION_EVENTS_TOTAL: &str = "authsync_replication_events_total";
pub const REPLICATION_LAG_SECONDS: &str = "authsync_replication_lag_seconds";
pub const PASSWORD_HASH_SECONDS: &str = "authsync_password_hash_seconds";
pub const PASSWORD_HASH_WAIT_SECONDS: &str = "authsync_password_hash_wait_seconds";
pub const OUTBOX_DEPTH: &str = "authsync_outbox_depth";
pub const OUTBOX_OLDEST_AGE_SECONDS: &str = "authsync_outbox_oldest_age_seconds";
pub const PUBLISHED_EVENTS_TOTAL: &str = "authsync_replication_published_total";
pub const PUBLISH_ERRORS_TOTAL: &str = "authsync_replication_publish_errors_total";
pub const CONSUMER_LAG_MESSAGES: &str = "authsync_replication_consumer_lag_messages";
pub const RETRY_QUEUE_ENTRIES: &str = "authsync_retry_queue_entries";
pub const RETRY_QUEUE_BYTES: &str = "authsync_retry_queue_bytes";
pub const RETRY_QUEUE_OLDEST_AGE_SECONDS: &str = "authsync_retry_queue_oldest_age_seconds";
pub const RETRY_QUEUE_FULL: &str = "authsync_retry_queue_full";
pub const RETRY_QUEUE_REFUSED_TOTAL: &str = "authsync_retry_queue_refused_total";
pub const RETRY_PARKED_TOTAL: &str = "authsync_retry_parked_total";
pub const RETRIES_TOTAL: &str = "authsync_retries_total";
pub const DEAD_LETTERS_TOTAL: &str = "authsync_dead_letters_total";
pub const DEAD_LETTERS: &str = "authsync_dead_letters";
pub const DEAD_LETTERS_DROPPED_TOTAL: &str = "authsync_dead_letters_dropped_total";
pub const KEY_RECOVERIES_TOTAL: &str = "authsync_key_recoveries_total";
pub const USER_KEYS_REWRAPPED_TOTAL: &str = "authsync_user_keys_rewrapped_total";
pub const ENTRIES_SWEPT_TOTAL: &str = "authsync_entries_swept_total";
pub const MASTER_KEY_WRAPS: &str = "authsync_master_key_wraps";
pub const CONNECTIONS_REFUSED_TOTAL: &str = "authsync_http_connections_refused_total";
pub const OVERLOADED_TOTAL: &str = "authsync_http_overloaded_total";
pub const TOKEN_FAMILIES_FORKED_TOTAL: &str = "authsync_token_families_forked_total";
pub const ANTI_ENTROPY_ROUNDS_TOTAL: &str = "authsync_anti_entropy_rounds_total";
pub const ANTI_ENTROPY_REPAIRED_TOTAL: &str = "authsync_anti_entropy_repaired_total";
pub const ANTI_ENTROPY_REFUSED_TOTAL: &str = "authsync_anti_entropy_refused_total";
pub const ANTI_ENTROPY_BUCKETS_DIFFERING: &str = "authsync_anti_entropy_buckets_differing";
pub const PRODUCER_QUEUE_MESSAGES: &str = "authsync_replication_producer_queue_messages";
pub const ROCKSDB_WRITE_STOPPED: &str = "authsync_rocksdb_write_stopped";
pub const ROCKSDB_DELAYED_WRITE_RATE_BYTES: &str = "authsync_rocksdb_delayed_write_rate_bytes";
pub const ROCKSDB_STALL_SECONDS_TOTAL: &str = "authsync_rocksdb_stall_seconds_total";
pub const ROCKSDB_PENDING_COMPACTION_BYTES: &str = "authsync_rocksdb_pending_compaction_bytes";
pub const ROCKSDB_SST_BYTES: &str = "authsync_rocksdb_sst_bytes";
pub const ROCKSDB_MEMTABLE_BYTES: &str = "authsync_rocksdb_memtable_bytes";
pub const ROCKSDB_BLOCK_CACHE_USAGE_BYTES: &str = "authsync_rocksdb_block_cache_usage_bytes";
pub const ROCKSDB_BLOCK_CACHE_HITS_TOTAL: &str = "authsync_rocksdb_block_cache_hits_total";
pub const ROCKSDB_BLOCK_CACHE_MISSES_TOTAL: &str = "authsync_rocksdb_block_cache_misses_total";
pub const PROCESS_CPU_SECONDS_TOTAL: &str = "process_cpu_seconds_total";
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "process_resident_memory_bytes";
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
pub const PROCESS_START_TIME_SECONDS: &str = "process_start_time_seconds";
pub const SWEEPER_RUNS_TOTAL: &str = "authsync_sweeper_runs_total";
pub const SWEEPER_LAST_RUN_TIMESTAMP_SECONDS: &str = "authsync_sweeper_last_run_timestamp_seconds";
pub const SWEEPER_LAST_DURATION_SECONDS: &str = "authsync_sweeper_last_duration_seconds";

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
        "Reads that failed: integrity (tampered or corrupt), no_key (no data key for this region), no_user_key (the account's key has not arrived, or the account was erased), unknown_key."
    );
    describe_counter!(
        SIGNATURES_REFUSED_TOTAL,
        Unit::Count,
        "Records, entries and user keys from the network refused because they were not signed by the region they claim (or not signed, once the keyring upgrade is finished)."
    );
    describe_counter!(
        OIDC_SIGN_INS_TOTAL,
        Unit::Count,
        "Sign-ins posted on the hosted page, by outcome (ok, wrong_credentials, too_many_attempts, csrf)."
    );
    describe_counter!(
        OIDC_CODES_ISSUED_TOTAL,
        Unit::Count,
        "Authorization codes handed to clients, after a sign-in or from a session."
    );
    describe_counter!(
        OIDC_TOKENS_GRANTED_TOTAL,
        Unit::Count,
        "Token endpoint grants, by grant type (authorization_code, refresh_token, client_credentials)."
    );
    describe_counter!(
        DELIVERIES_TOTAL,
        Unit::Count,
        "Reset and verification tokens handed to the delivery hook, by outcome (ok, refused, failed, logged)."
    );
    describe_counter!(
        ACCOUNT_TOKENS_TOTAL,
        Unit::Count,
        "Reset and verification tokens, by purpose and event (minted, redeemed, refused)."
    );
    describe_counter!(
        OIDC_CODES_FORWARDED_TOTAL,
        Unit::Count,
        "Codes brought here that another region issued, sent there to be exchanged, by outcome (ok, refused, unreachable)."
    );
    describe_counter!(
        OIDC_TOKEN_REFUSED_TOTAL,
        Unit::Count,
        "Token endpoint refusals, by OAuth error (invalid_client, invalid_grant, ...)."
    );
    describe_counter!(
        UNSIGNED_ACCEPTED_TOTAL,
        Unit::Count,
        "Unsigned records, entries and user keys from format 1 nodes accepted during a keyring upgrade; should reach zero before `authsync keys upgrade --finish`."
    );
    describe_counter!(
        LOGINS_TOTAL,
        Unit::Count,
        "Login attempts by outcome (locked_out: refused unhashed, too soon after repeated failures)."
    );
    describe_counter!(
        LOGIN_LOCKOUTS_TOTAL,
        Unit::Count,
        "Accounts (or unknown logins) that reached the failures after which attempts must wait."
    );
    describe_counter!(
        RATE_LIMITED_TOTAL,
        Unit::Count,
        "Requests refused by the per-address rate limit, by route (login, lookup)."
    );
    describe_counter!(
        TLS_HANDSHAKE_FAILURES_TOTAL,
        Unit::Count,
        "HTTPS connections dropped before a request: failed or timed-out TLS handshakes."
    );
    describe_counter!(
        TLS_RELOADS_TOTAL,
        Unit::Count,
        "Changed certificate files read again, by outcome (loaded, failed: the previous certificate is still served)."
    );
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
    describe_counter!(
        TOKEN_FAMILIES_FORKED_TOTAL,
        Unit::Count,
        "Refresh token families revoked here because two regions each rotated the same generation."
    );
    describe_counter!(
        OVERLOADED_TOTAL,
        Unit::Count,
        "Requests refused with 503 because http.max_hashing_in_flight password hashes were already in flight."
    );
    describe_counter!(
        DEAD_LETTERS_DROPPED_TOTAL,
        Unit::Count,
        "Oldest dead letters dropped to keep within retry.max_dead_letters and retry.max_dead_bytes."
    );
    describe_gauge!(
        MASTER_KEY_WRAPS,
        Unit::Count,
        "Keys this node has wrapped under each format 1 (AES-GCM) master key (label key: region/version), persisted: AES-GCM allows 2^32 per key across every region. X25519 master keys show 0: each of their wraps seals under a one-time key."
    );
    describe_counter!(
        CONNECTIONS_REFUSED_TOTAL,
        Unit::Count,
        "Connections closed at once because their address held http.max_connections_per_address already."
    );
    describe_gauge!(NODE_UP, Unit::Count, "1 while the node serves requests.");
    describe_counter!(
        REPLICATION_EVENTS_TOTAL,
        Unit::Count,
        "Replicated events received from a source region, by outcome: applied, skipped (not newer), merged (duplicate account resolved), parked (retry queue), dead_lettered."
    );
    describe_histogram!(
        PASSWORD_HASH_SECONDS,
        Unit::Seconds,
        "One password hash or verification (current or legacy), once it has a core."
    );
    describe_histogram!(
        PASSWORD_HASH_WAIT_SECONDS,
        Unit::Seconds,
        "Time a password hash waited for a core (at most one hash per core runs at once)."
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
    describe_gauge!(
        RETRY_QUEUE_ENTRIES,
        Unit::Count,
        "Replicated events parked for a later attempt."
    );
    describe_gauge!(
        RETRY_QUEUE_BYTES,
        Unit::Bytes,
        "Bytes of parked events (the bound is retry.max_bytes)."
    );
    describe_gauge!(
        RETRY_QUEUE_OLDEST_AGE_SECONDS,
        Unit::Seconds,
        "Age of the oldest parked event."
    );
    describe_gauge!(
        RETRY_QUEUE_FULL,
        Unit::Count,
        "1 while the retry queue is at its bound: consumers hold their position instead of parking (alert on it)."
    );
    describe_counter!(
        RETRY_QUEUE_REFUSED_TOTAL,
        Unit::Count,
        "Events that found the retry queue full; none is dropped, the consumer retries it in place."
    );
    describe_counter!(
        RETRY_PARKED_TOTAL,
        Unit::Count,
        "Events parked in the retry queue, by reason."
    );
    describe_counter!(
        RETRIES_TOTAL,
        Unit::Count,
        "Retry attempts by outcome: applied, merged, skipped, rescheduled, dead_lettered."
    );
    describe_counter!(
        DEAD_LETTERS_TOTAL,
        Unit::Count,
        "Events moved to the dead-letter queue, by reason."
    );
    describe_gauge!(
        DEAD_LETTERS,
        Unit::Count,
        "Events in the dead-letter queue now."
    );
    describe_counter!(
        KEY_RECOVERIES_TOTAL,
        Unit::Count,
        "Records given wrapped keys for regions they lacked (new versions, replicated)."
    );
    describe_counter!(
        ENTRIES_SWEPT_TOTAL,
        Unit::Count,
        "Replicated entries removed by the entries sweeper, by kind: login_failures (idle everywhere, or of an erased account), token_family (expired, or of an erased account)."
    );
    describe_counter!(
        USER_KEYS_REWRAPPED_TOTAL,
        Unit::Count,
        "User keys re-wrapped by key recovery: missing (wraps added for regions they lacked, published) rotation (this region's wrap moved to its current master key) or resign (made here before the keyring upgrade, signed now and published)."
    );
    describe_counter!(
        ANTI_ENTROPY_ROUNDS_TOTAL,
        Unit::Count,
        "Anti-entropy comparisons with a peer, by peer and outcome."
    );
    describe_counter!(
        ANTI_ENTROPY_REPAIRED_TOTAL,
        Unit::Count,
        "Records pulled from a peer by anti-entropy and applied, by peer."
    );
    describe_counter!(
        ANTI_ENTROPY_REFUSED_TOTAL,
        Unit::Count,
        "Records pulled from a peer that failed their integrity check or did not decode, by peer."
    );
    describe_gauge!(
        ANTI_ENTROPY_BUCKETS_DIFFERING,
        Unit::Count,
        "Digest buckets that differed from the peer in the last round, by peer."
    );
    describe_counter!(
        SWEEPER_RUNS_TOTAL,
        Unit::Count,
        "Sweeper runs by sweeper and outcome."
    );
    describe_gauge!(
        SWEEPER_LAST_RUN_TIMESTAMP_SECONDS,
        Unit::Seconds,
        "Unix time at which each sweeper last finished a run."
    );
    describe_gauge!(
        PRODUCER_QUEUE_MESSAGES,
        Unit::Count,
        "Messages in the Kafka producer's queue, not yet acknowledged by the broker."
    );
    describe_gauge!(
        ROCKSDB_WRITE_STOPPED,
        Unit::Count,
        "1 while RocksDB stops writes (too many memtables, L0 files or pending compaction)."
    );
    describe_gauge!(
        ROCKSDB_DELAYED_WRITE_RATE_BYTES,
        Unit::Bytes,
        "Write rate RocksDB throttles to while it delays writes (0: not delayed)."
    );
    describe_counter!(
        ROCKSDB_STALL_SECONDS_TOTAL,
        Unit::Seconds,
        "Time writes spent stalled by RocksDB."
    );
    describe_gauge!(
        ROCKSDB_PENDING_COMPACTION_BYTES,
        Unit::Bytes,
        "Bytes RocksDB estimates compaction still has to rewrite, all column families."
    );
    describe_gauge!(
        ROCKSDB_SST_BYTES,
        Unit::Bytes,
        "Size of the SST files per column family."
    );
    describe_gauge!(
        ROCKSDB_MEMTABLE_BYTES,
        Unit::Bytes,
        "Memory held by memtables, all column families."
    );
    describe_gauge!(
        ROCKSDB_BLOCK_CACHE_USAGE_BYTES,
        Unit::Bytes,
        "Memory held by the block cache."
    );
    describe_counter!(
        ROCKSDB_BLOCK_CACHE_HITS_TOTAL,
        Unit::Count,
        "Block cache hits (hit ratio: hits / (hits + misses))."
    );
    describe_counter!(
        ROCKSDB_BLOCK_CACHE_MISSES_TOTAL,
        Unit::Count,
        "Block cache misses."
    );
    describe_counter!(
        PROCESS_CPU_SECONDS_TOTAL,
        Unit::Seconds,
        "User and system CPU time of the node process (whole seconds)."
    );
    describe_gauge!(
        PROCESS_RESIDENT_MEMORY_BYTES,
        Unit::Bytes,
        "Resident memory of the node process."
    );
    describe_gauge!(PROCESS_OPEN_FDS, Unit::Count, "Open file descriptors.");
    describe_gauge!(
        PROCESS_START_TIME_SECONDS,
        Unit::Seconds,
        "Unix time the node process started."
    );
    describe_gauge!(
        SWEEPER_LAST_DURATION_SECONDS,
        Unit::Seconds,
        "How long each sweeper's last run took."
    );
}

/// Registers every series whose labels come from a fixed set at zero, so dashboards and
/// alerts see a series (and `rate()` its first increase) before the first event.
/// `sources` are the regions this node consumes from, `compared` those anti-entropy
/// compares with.
pub fn zero_series(sources: &[String], compared: &[String]) {
    use metrics::{counter, gauge};
    for kind in [
        "create",
        "update",
        "password",
        "status",
        "delete",
        "password_upgrade",
        "import",
        "import_merge",
        "merge",
        "key_recovery",
        "rewrap",
        "resign",
    ] {
        counter!(STORE_COMMITS_TOTAL, "kind" => kind).absolute(0);
    }
    for reason in ["integrity", "no_key", "no_user_key", "unknown_key", "other"] {
        counter!(RECORDS_UNREADABLE_TOTAL, "reason" => reason).absolute(0);
    }
    for outcome in [
        "success",
        "invalid_credentials",
        "forbidden",
        "locked_out",
        "second_factor_required",
        "invalid_second_factor",
        "error",
    ] {
        counter!(LOGINS_TOTAL, "outcome" => outcome).absolute(0);
    }
    counter!(LOGIN_LOCKOUTS_TOTAL).absolute(0);
    counter!(SIGNATURES_REFUSED_TOTAL).absolute(0);
    counter!(UNSIGNED_ACCEPTED_TOTAL).absolute(0);
    for outcome in [
        "ok",
        "wrong_credentials",
        "too_many_attempts",
        "csrf",
        "second_factor_asked",
        "wrong_second_factor",
    ] {
        counter!(OIDC_SIGN_INS_TOTAL, "outcome" => outcome).absolute(0);
    }
    counter!(OIDC_CODES_ISSUED_TOTAL).absolute(0);
    for outcome in ["ok", "refused", "unreachable"] {
        counter!(OIDC_CODES_FORWARDED_TOTAL, "outcome" => outcome).absolute(0);
    }
    for outcome in ["ok", "refused", "failed", "logged"] {
        counter!(DELIVERIES_TOTAL, "outcome" => outcome).absolute(0);
    }
    for purpose in ["reset", "verify_email", "verify_phone"] {
        for event in ["minted", "redeemed", "refused"] {
            counter!(ACCOUNT_TOKENS_TOTAL, "purpose" => purpose, "event" => event).absolute(0);
        }
    }
    for grant in ["authorization_code", "refresh_token", "client_credentials"] {
        counter!(OIDC_TOKENS_GRANTED_TOTAL, "grant" => grant).absolute(0);
    }
    for reason in ["invalid_client", "invalid_grant"] {
        counter!(OIDC_TOKEN_REFUSED_TOTAL, "reason" => reason).absolute(0);
    }
    for route in ["login", "lookup", "sign_in", "authorize", "token"] {
        counter!(RATE_LIMITED_TOTAL, "route" => route).absolute(0);
    }
    counter!(TLS_HANDSHAKE_FAILURES_TOTAL).absolute(0);
    for reason in ["missing", "rotation", "resign"] {
        counter!(USER_KEYS_REWRAPPED_TOTAL, "reason" => reason).absolute(0);
    }
    for kind in [
        "login_failures",
        "token_family",
        "browser_session",
        "factor_uses",
        "account_token",
    ] {
        counter!(ENTRIES_SWEPT_TOTAL, "kind" => kind).absolute(0);
    }
    counter!(TOKEN_FAMILIES_FORKED_TOTAL).absolute(0);
    counter!(OVERLOADED_TOTAL).absolute(0);
    counter!(CONNECTIONS_REFUSED_TOTAL).absolute(0);
    counter!(DEAD_LETTERS_DROPPED_TOTAL).absolute(0);
    for outcome in ["loaded", "failed"] {
        counter!(TLS_RELOADS_TOTAL, "outcome" => outcome).absolute(0);
    }
    for outcome in ["created", "merged"] {
        counter!(IMPORT_ITEMS_TOTAL, "outcome" => outcome).absolute(0);
    }
    for outcome in ["ok", "error"] {
        counter!(KEYRING_RELOADS_TOTAL, "outcome" => outcome).absolute(0);
    }
    for source in sources {
        for outcome in ["applied", "merged", "skipped", "parked", "dead_lettered"] {
            counter!(REPLICATION_EVENTS_TOTAL, "source" => source.clone(), "outcome" => outcome)
                .absolute(0);
        }
        gauge!(CONSUMER_LAG_MESSAGES, "source" => source.clone()).set(0.0);
    }
    let reasons = [
        "key_unavailable",
        "storage",
        "clock_skew",
        "conflict",
        "injected",
    ];
    for reason in reasons {
        counter!(RETRY_PARKED_TOTAL, "reason" => reason).absolute(0);
    }
    for reason in reasons.into_iter().chain(["malformed", "integrity"]) {
        counter!(DEAD_LETTERS_TOTAL, "reason" => reason).absolute(0);
    }
    for outcome in [
        "applied",
        "merged",
        "skipped",
        "rescheduled",
        "dead_lettered",
        "replayed",
    ] {
        counter!(RETRIES_TOTAL, "outcome" => outcome).absolute(0);
    }
    for peer in compared {
        for outcome in ["ok", "error"] {
            counter!(ANTI_ENTROPY_ROUNDS_TOTAL, "peer" => peer.clone(), "outcome" => outcome)
                .absolute(0);
        }
        counter!(ANTI_ENTROPY_REPAIRED_TOTAL, "peer" => peer.clone()).absolute(0);
        counter!(ANTI_ENTROPY_REFUSED_TOTAL, "peer" => peer.clone()).absolute(0);
        gauge!(ANTI_ENTROPY_BUCKETS_DIFFERING, "peer" => peer.clone()).set(0.0);
    }
    for name in [
        OUTBOX_EVENTS_TOTAL,
        PASSWORD_UPGRADES_TOTAL,
        REWRAPPED_RECORDS_TOTAL,
        KEY_RECOVERIES_TOTAL,
        RETRY_QUEUE_REFUSED_TOTAL,
        PUBLISHED_EVENTS_TOTAL,
        PUBLISH_ERRORS_TOTAL,
    ] {
        counter!(name).absolute(0);
    }
    for name in [
        OUTBOX_DEPTH,
        OUTBOX_OLDEST_AGE_SECONDS,
        RETRY_QUEUE_ENTRIES,
        RETRY_QUEUE_BYTES,
        RETRY_QUEUE_OLDEST_AGE_SECONDS,
        RETRY_QUEUE_FULL,
        DEAD_LETTERS,
        PRODUCER_QUEUE_MESSAGES,
    ] {
        gauge!(name).set(0.0);
    }
}

/// What `/proc/self` says about this process (Linux; zeros elsewhere).
pub fn record_process() {
    use metrics::{counter, gauge};
    // SAFETY: sysconf has no preconditions.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK).max(1) as f64,
            libc::sysconf(libc::_SC_PAGESIZE).max(1) as f64,
        )
    };
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name (which may hold spaces) start at field 3.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            // utime, stime are fields 14, 15; starttime 22 (1-based) → 11, 12, 19 here.
            let cpu = (num(11) + num(12)) / ticks;
            counter!(PROCESS_CPU_SECONDS_TOTAL).absolute(cpu as u64);
            if let Some(boot) = boot_time() {
                gauge!(PROCESS_START_TIME_SECONDS).set(boot + num(19) / ticks);
            }
        }
    }
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
        if let Some(rss) = statm
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<f64>().ok())
        {
            gauge!(PROCESS_RESIDENT_MEMORY_BYTES).set(rss * page);
        }
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        gauge!(PROCESS_OPEN_FDS).set(fds.count() as f64);
    }
}

fn boot_time() -> Option<f64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}
