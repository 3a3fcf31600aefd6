//! The operator's view, checked against a real Prometheus: `authsync demo` runs three
//! regions, a Prometheus server (Debian's package) scrapes them with the shipped alert
//! rules loaded, and every metric that a Grafana panel or an alert rule uses must have
//! a series — no dead panels, no alert on a metric that does not exist. The shipped
//! Prometheus config and rules pass `promtool`, and the rules pass their unit tests.
//!
//! These need `prometheus` and `promtool` (`AUTHSYNC_TEST_PROMETHEUS`,
//! `AUTHSYNC_TEST_PROMTOOL`, or on PATH): `scripts/test.sh` installs them and runs
//! these tests with `--ignored`.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn tool(env: &str, name: &str) -> PathBuf {
    std::env::var_os(env)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(name))
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Every metric name a PromQL expression mentions.
fn metric_names(expr: &str, into: &mut BTreeSet<String>) {
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let rest = &expr[i..];
        if starts_word && (rest.starts_with("authsync_") || rest.starts_with("process_")) {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            into.insert(rest[..end].to_string());
            i += end;
        } else {
            i += 1;
        }
    }
}

fn dashboard_metrics() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo("grafana/dashboards/authsync-overview.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut names = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            metric_names(target["expr"].as_str().unwrap_or(""), &mut names);
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        metric_names(&var["query"].to_string(), &mut names);
    }
    names
}

fn alert_metrics() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo("config/alerts.yml")).unwrap();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(expr) = line.trim().strip_prefix("expr:") {
            metric_names(expr, &mut names);
        }
    }
    names
}

/// Three consecutive free ports (the demo takes base, base+1, base+2).
fn free_ports() -> u16 {
    for _ in 0..50 {
        let base = common::free_port();
        if base < 60000
            && (1..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok())
        {
            return base;
        }
    }
    panic!("no three consecutive free ports");
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "needs promtool: scripts/test.sh runs it with --ignored"]
fn shipped_prometheus_config_and_alert_rules_pass_promtool_and_their_unit_tests() {
    let promtool = tool("AUTHSYNC_TEST_PROMTOOL", "promtool");
    for args in [
        vec!["check", "config", "config/prometheus.yml"],
        vec!["check", "rules", "config/alerts.yml"],
        vec!["test", "rules", "config/alerts_test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(&args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every alert has a unit test.
    let tests = std::fs::read_to_string(repo("config/alerts_test.yml")).unwrap();
    let rules = std::fs::read_to_string(repo("config/alerts.yml")).unwrap();
    for line in rules.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert:") {
            assert!(
                tests.contains(&format!("alertname: {}", name.trim())),
                "no promtool test for {name}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Prometheus server: scripts/test.sh runs it with --ignored"]
async fn every_metric_a_dashboard_panel_or_alert_uses_has_a_series_in_prometheus() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_ports();
    let mut demo = Command::new(env!("CARGO_BIN_EXE_authsync"))
        .args([
            "demo",
            "--port",
            &base.to_string(),
            "--api-key",
            common::API_KEY,
        ])
        .arg("--data-dir")
        .arg(dir.path().join("demo"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("demo.log")).unwrap())
        .spawn()
        .expect("start authsync demo");
    let stdout = demo.stdout.take().unwrap();
    let demo = Killed(demo);
    // Keep reading the demo's output to its end: a closed pipe would stop it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://")) {
                let _ = tx.send(url.to_string());
            }
        }
    });
    let urls: Vec<String> = (0..3)
        .map_while(|_| rx.recv_timeout(Duration::from_secs(60)).ok())
        .collect();
    assert_eq!(urls.len(), 3, "demo printed {urls:?}");

    let prom_port = common::free_port();
    let targets: Vec<String> = urls
        .iter()
        .map(|u| format!("'{}'", u.trim_start_matches("http://")))
        .collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - '{}'\nscrape_configs:\n  - job_name: authsync\n    static_configs:\n      - targets: [{}]\n",
        repo("config/alerts.yml").display(),
        targets.join(", ")
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let prometheus = Command::new(tool("AUTHSYNC_TEST_PROMETHEUS", "prometheus"))
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
        .spawn()
        .expect("start prometheus");
    let _prometheus = Killed(prometheus);

    // Traffic in every region: local writes, logins, reads of replicated records.
    let clients: Vec<common::Client> = urls
        .iter()
        .map(|u| common::Client {
            url: u.clone(),
            http: reqwest::Client::new(),
        })
        .collect();
    let mut ids = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        ids.push(
            c.create(&format!("seen{i}@example.com"), "correct horse battery")
                .await,
        );
        let login = c
            .post(
                "/v1/login",
                json!({"login": format!("seen{i}@example.com"), "password": "correct horse battery"}),
            )
            .await;
        assert_eq!(login.status, 200, "{}", login.text);
    }
    for c in &clients {
        for id in &ids {
            let mut found = false;
            for _ in 0..150 {
                if c.get(&format!("/v1/users/{id}")).await.status == 200 {
                    found = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert!(found, "{id} never reached {}", c.url);
        }
    }

    let wanted: BTreeSet<String> = dashboard_metrics()
        .union(&alert_metrics())
        .cloned()
        .collect();
    assert!(
        wanted.len() > 40,
        "found only {} metric names",
        wanted.len()
    );
    let http = reqwest::Client::new();
    let query = |q: String| {
        let http = http.clone();
        async move {
            let r = http
                .get(format!("http://127.0.0.1:{prom_port}/api/v1/query"))
                .query(&[("query", q)])
                .send()
                .await
                .ok()?;
            let v: Value = r.json().await.ok()?;
            v["data"]["result"].as_array().cloned()
        }
    };
    // Wait (bounded) for scrapes after the traffic, then ask for every name.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut missing: Vec<String> = wanted.iter().cloned().collect();
    while Instant::now() < deadline {
        let mut still = Vec::new();
        for name in &missing {
            let per_region = query(format!("count by (region) ({{__name__=\"{name}\"}})")).await;
            if per_region.map_or(0, |r| r.len()) < 3 {
                still.push(name.clone());
            }
        }
        missing = still;
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        missing.is_empty(),
        "metrics used by dashboards or alerts with no series in every region: {missing:?}"
    );
    let up = query("up{job=\"authsync\"} == 1".into())
        .await
        .unwrap_or_default();
    assert_eq!(up.len(), 3, "all three targets up");
    // The rules loaded and evaluate without error.
    let rules: Value = http
        .get(format!("http://127.0.0.1:{prom_port}/api/v1/rules"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let group = &rules["data"]["groups"][0];
    assert_eq!(group["name"], "authsync");
    for rule in group["rules"].as_array().unwrap() {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
    // Nothing is wrong in a healthy demo: no alert fires.
    let firing = query("ALERTS{alertstate=\"firing\"}".into())
        .await
        .unwrap_or_default();
    assert!(
        firing.is_empty(),
        "alerts firing on a healthy cluster: {firing:?}"
    );
    drop(demo);
}

#[test]
fn metric_names_are_read_from_expressions() {
    let mut names = BTreeSet::new();
    metric_names(
        "histogram_quantile(0.99, sum by (le) (rate(authsync_x_seconds_bucket{region=~\"$r\"}[5m]))) / process_cpu_seconds_total",
        &mut names,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        vec!["authsync_x_seconds_bucket", "process_cpu_seconds_total"]
    );
}
