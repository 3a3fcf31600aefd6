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
    ] {
        assert!(stdout.contains(line), "table lacks {line:?}:\n{stdout}");
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(report["creates"]["ops"], 24);
    assert_eq!(report["updates"]["ops"], 24);
    assert_eq!(report["logins"]["ops"], 4);
    for pair in ["0→1", "0→2"] {
        assert_eq!(report["replication_lag"][pair]["count"], 4, "{pair}");
    }
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
    }
}
