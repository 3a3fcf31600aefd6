//! `authsync bench` runs end to end against the demo cluster it starts and writes a
//! complete report. Speed is not asserted here (figures belong in BENCHMARKS.md):
//! only that every figure was measured.

use std::process::Command;

#[test]
fn bench_measures_every_figure_and_its_floor() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench.json");
    let run = Command::new(env!("CARGO_BIN_EXE_authsync"))
        .args([
            "bench",
            "--users",
            "24",
            "--concurrency",
            "4",
            "--logins",
            "4",
        ])
        .args([
            "--lag-samples",
            "4",
            "--profile-bytes",
            "300",
            "--kafka-round-trips",
            "5",
            "--drain-seconds",
            "2",
            "--footprint-users",
            "300",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run authsync bench");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    for line in [
        "create (with password hash)",
        "profile update",
        "raw RocksDB put (floor)",
        "login",
        "Kafka round trip (floor)",
        "lag 0→1",
        "lag 0→2",
        "lag 2→1 (each way)",
        "login, one at a time",
        "backlog drain us-east",
    ] {
        assert!(stdout.contains(line), "table lacks {line:?}:\n{stdout}");
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(report["creates"]["ops"], 24);
    assert_eq!(report["updates"]["ops"], 24);
    assert_eq!(report["logins"]["ops"], 4);
    assert_eq!(report["logins_serial"]["ops"], 4);
    // The node hashed during the serial logins, and for less than their whole time.
    let share = report["login_hash_share"].as_f64().unwrap();
    assert!(share > 0.0 && share < 1.0, "{share}");
    for pair in ["0→1", "0→2"] {
        assert_eq!(report["replication_lag"][pair]["count"], 4, "{pair}");
        assert_eq!(
            report["replication_lag_updates"][pair]["count"], 4,
            "{pair}"
        );
    }
    for pair in ["0→1", "0→2", "1→0", "1→2", "2→0", "2→1"] {
        assert_eq!(report["replication_lag_pairs"][pair]["count"], 4, "{pair}");
    }
    // The stopped region caught up with writes it missed.
    let drain = &report["backlog_drain"];
    assert_eq!(drain["region"], "us-east");
    assert!(drain["backlog_events"].as_u64().unwrap() > 0, "{drain}");
    assert!(
        drain["events_per_second"].as_f64().unwrap() > 0.0,
        "{drain}"
    );
    let floors = &report["floors"];
    assert_eq!(floors["rocksdb_put"]["ops"], 24);
    assert!(floors["record_bytes"].as_u64().unwrap() > 300);
    assert!(floors["password_hash_ms"].as_f64().unwrap() > 0.0);
    assert!(floors["envelope_seal_open_us"].as_f64().unwrap() > 0.0);
    assert_eq!(floors["kafka_round_trip"]["count"], 5);
    for region in ["af-south", "eu-west", "us-east"] {
        let f = &report["footprint"][region];
        assert!(f["resident_bytes"].as_f64().unwrap() > 0.0, "{region}: {f}");
        assert!(f["disk_bytes"].as_f64().unwrap() > 0.0, "{region}: {f}");
        assert_eq!(f["users"], 300, "{region}: {f}");
        assert!(
            f["disk_bytes_added_per_million_users"].as_f64().unwrap() > 0.0,
            "{region}: {f}"
        );
    }
}

#[test]
fn bench_refuses_out_of_range_options_before_starting_anything() {
    for (args, says) in [
        (&["--users", "0"][..], "--users must be"),
        (&["--concurrency", "5000"][..], "--concurrency 1 to 1024"),
        (&["--profile-bytes", "0"][..], "--profile-bytes 1 to 16384"),
        (
            &["--drain-seconds", "99999999999999"][..],
            "--drain-seconds must be at most 3600",
        ),
        (
            &["--urls", "http://127.0.0.1:1"][..],
            "--urls needs at least two regions",
        ),
    ] {
        let run = Command::new(env!("CARGO_BIN_EXE_authsync"))
            .arg("bench")
            .args(args)
            .output()
            .expect("run authsync bench");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
