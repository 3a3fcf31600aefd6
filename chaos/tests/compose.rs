//! `--target compose`, driven through a stand-in Docker CLI (`fixtures/fake-docker`).
//! The stand-in runs three real nodes as the compose services `authsync-<region>`. Its
//! `kill`, `start`, `pause` and `unpause` really kill, start, stop and resume them, and
//! `docker cp` copies their data directories.
//!
//! The broker is the embedded one, in this test's process. So the broker faults are
//! checked as the Docker commands the harness gives, and nothing more.
//!
//! What a user would notice if this broke:
//! - the compose target issuing the wrong Docker commands, or none;
//! - not waiting for a restarted container;
//! - not reattaching a broker under its service name;
//! - skipping a check.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const KEY: &str = "chaos-compose-test-key-0123456789";
const REGIONS: [&str; 3] = authsync::node::local_cluster::DEMO_REGIONS;

/// Kills whatever the stand-in left running.
struct Services(PathBuf);

impl Drop for Services {
    fn drop(&mut self) {
        for region in REGIONS {
            let pid_file = self.0.join(format!("authsync-{region}.pid"));
            if let Ok(pid) = std::fs::read_to_string(pid_file) {
                let pid = pid.trim();
                let _ = Command::new("kill").args(["-CONT", pid]).status();
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
    }
}

fn docker(fake: &Path, args: &[&str]) {
    let status = Command::new(fake).args(args).status().unwrap();
    assert!(status.success(), "{args:?}");
}

#[test]
fn the_compose_target_breaks_containers_through_docker_and_checks_everything() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let state = root.join("docker");
    std::fs::create_dir_all(&state).unwrap();
    let fake = state.join("fake-docker");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake-docker"),
        &fake,
    )
    .unwrap();

    let broker = rdkafka::mocking::MockCluster::new(1).unwrap();
    for region in REGIONS {
        broker
            .create_topic(&format!("authsync.changes.{region}"), 3, 1)
            .unwrap();
    }
    let bootstrap = broker.bootstrap_servers();
    authsync::node::local_cluster::init_keyrings(root).unwrap();
    let ports: Vec<u16> = (0..3)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let shared = authsync::node::local_cluster::Shared {
        root,
        api_key: KEY,
        bootstrap: &bootstrap,
        create_topics: false,
        peer_urls: Some(&urls),
        faults: true,
    };
    let services = Services(state.clone());
    for (i, region) in REGIONS.iter().enumerate() {
        let config = root.join(format!("{region}.toml"));
        let listen = format!("127.0.0.1:{}", ports[i]);
        std::fs::write(
            &config,
            authsync::node::local_cluster::node_config(&shared, region, &listen),
        )
        .unwrap();
        let service = format!("authsync-{region}");
        std::fs::write(
            state.join(format!("{service}.cmd")),
            format!(
                "exec '{}' node --config '{}'\n",
                env!("CARGO_BIN_EXE_authsync-chaos"),
                config.display()
            ),
        )
        .unwrap();
        std::fs::write(
            state.join(format!("{service}.path")),
            root.join(region).display().to_string(),
        )
        .unwrap();
        // The embedded broker keeps its log in memory: its "log directory" is empty.
        let broker_dir = root.join(format!("kafka-{region}"));
        std::fs::create_dir_all(&broker_dir).unwrap();
        std::fs::write(
            state.join(format!("kafka-{region}.path")),
            broker_dir.display().to_string(),
        )
        .unwrap();
        docker(&fake, &["start", &service]);
    }

    let chaos = |faults: &str, duration: &str, out: &Path| {
        Command::new(env!("CARGO_BIN_EXE_authsync-chaos"))
            .args(["--target", "compose", "--compose-file"])
            .arg(root.join("docker-compose.yml"))
            .arg("--docker")
            .arg(&fake)
            .arg("--compose-command")
            .arg(format!("{} compose", fake.display()))
            .args(["--urls", &urls.join(","), "--api-key", KEY])
            .args(["--faults", faults, "--duration", duration, "--seed", "5"])
            .args(["--convergence-timeout", "90s", "--clients", "3"])
            .arg("--out")
            .arg(out)
            .output()
            .unwrap()
    };

    let out = root.join("report.json");
    let run = chaos("kill,pause,broker-partition,broker-restart", "50s", &out);
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stdout}\n{stderr}");
    let report: Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(report["target"], "docker compose");
    let verdict = &report["verdict"];
    assert_eq!(verdict["lost"].as_array().unwrap().len(), 0, "{verdict}");
    assert_eq!(verdict["diverged"], false);
    assert_eq!(verdict["plaintext"].as_array().unwrap().len(), 0);
    assert_eq!(verdict["broker_logs"], 3);
    assert!(report["acked"].as_u64().unwrap() > 100, "{stdout}");

    // Each episode as the Docker commands that made and healed it.
    let calls = std::fs::read_to_string(state.join("calls")).unwrap();
    let episodes = report["episodes"].as_array().unwrap();
    assert!(episodes.len() >= 3, "{stdout}");
    for e in episodes {
        let region = REGIONS[e["region"].as_u64().unwrap() as usize];
        let (node, kafka) = (format!("authsync-{region}"), format!("kafka-{region}"));
        let expected: Vec<String> = match e["fault"].as_str().unwrap() {
            "kill" => vec![format!("kill -s KILL {node}"), format!("start {node}")],
            "pause" => vec![format!("pause {node}"), format!("unpause {node}")],
            "broker_restart" => vec![format!("kill -s KILL {kafka}"), format!("start {kafka}")],
            "broker_partition" => vec![
                format!("network disconnect authsync_default {kafka}"),
                format!("network connect --alias {kafka} authsync_default {kafka}"),
            ],
            other => panic!("unexpected fault {other}"),
        };
        for call in expected {
            assert!(calls.lines().any(|l| l == call), "no `{call}` in\n{calls}");
        }
        assert!(e["recovered_ms"].is_u64(), "{e}");
    }
    // The plaintext check read copies of every node's data and every broker's log.
    for region in REGIONS {
        for from in [
            format!("authsync-{region}:/var/lib/authsync/data"),
            format!("kafka-{region}:/var/lib/kafka/data"),
        ] {
            assert!(
                calls.lines().any(|l| l.starts_with(&format!("cp {from} "))),
                "{from} was not copied:\n{calls}"
            );
        }
    }

    // Faults that need the local target's proxies are refused before anything runs.
    let refused = chaos("latency", "10s", &root.join("refused.json"));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("fault latency is not possible here")
            && stderr.contains("local target only"),
        "{stderr}"
    );
    drop(services);
}
