//! The docker compose cluster of `docker-compose.yml` as an operator meets it: every
//! service healthy; a user created in af-south, read in us-east and logged in with in
//! eu-west; Prometheus scraping the three nodes with no alert firing; then eu-west's
//! node stopped — `AuthsyncRegionDown` fires for eu-west — and started again: the alert
//! clears and eu-west catches up on a user written while it was down.
//!
//! It runs against a cluster that is already up, only with `AUTHSYNC_TEST_COMPOSE=1`:
//! `scripts/compose.sh` builds the images, brings the cluster up, runs this test with
//! `--ignored` and tears the cluster down. By hand, from the repository's root:
//!
//! ```sh
//! scripts/compose.sh up
//! AUTHSYNC_TEST_COMPOSE=1 cargo test --test compose -- --ignored --nocapture
//! scripts/compose.sh down
//! ```
//!
//! The compose command is `AUTHSYNC_COMPOSE_COMMAND` (`docker compose` or
//! `docker-compose`; the plugin when it answers, by default) with
//! `-f docker-compose.yml -f docker-compose.local.yml`; the project is compose's own
//! choice, `COMPOSE_PROJECT_NAME` when set (scripts/compose.sh sets it). The test prints
//! what it sees, with times; it never prints an email or a password.

mod common;

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The API key of `config/compose/*.toml` (development only).
const API_KEY: &str = "dev-key-change-me";
const PW: &str = "correct horse battery";
const PROMETHEUS: &str = "http://127.0.0.1:9090";
/// Each region's node as the host reaches it (the compose file's ports), in
/// `common::REGIONS` order.
const NODES: [&str; 3] = [
    "http://127.0.0.1:8081",
    "http://127.0.0.1:8082",
    "http://127.0.0.1:8083",
];
/// Every service but grafana (no image for it here).
const SERVICES: [&str; 8] = [
    "keys-init",
    "kafka-af-south",
    "kafka-eu-west",
    "kafka-us-east",
    "authsync-af-south",
    "authsync-eu-west",
    "authsync-us-east",
    "prometheus",
];
/// The alert for a node that does not answer scrapes (config/alerts.yml).
const DOWN_ALERT: &str = "AuthsyncRegionDown";
/// How long its `for:` is in config/alerts.yml, and config/prometheus.yml's scrape and
/// evaluation intervals: a stopped node's alert fires within for + 2 intervals.
const DOWN_FOR: Duration = Duration::from_secs(60);
const INTERVAL: Duration = Duration::from_secs(15);
/// Longest a docker or compose command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_secs(1);
/// How often a replicated read is retried, so that the printed delay means something.
const READ_POLL: Duration = Duration::from_millis(50);

fn enabled() -> bool {
    std::env::var("AUTHSYNC_TEST_COMPOSE").is_ok_and(|v| v == "1")
}

/// What the test's output says, with the time since the test started.
struct Clock(Instant);

impl Clock {
    fn say(&self, what: &str) {
        println!("[compose +{:6.1}s] {what}", self.0.elapsed().as_secs_f64());
    }
}

/// Polls `probe` every [`POLL`] until it gives a value, at most `within` (and so at
/// most within/POLL + 1 times); panics with `what` when it never does.
async fn wait_for<T, F, Fut>(what: &str, within: Duration, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_for_every(POLL, what, within, probe).await
}

/// [`wait_for`], polling every `poll`: replication is timed with a finer one.
async fn wait_for_every<T, F, Fut>(poll: Duration, what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    let tries = within.as_millis() / poll.as_millis() + 1;
    for _ in 0..tries {
        if let Some(v) = probe().await {
            return v;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(poll).await;
    }
    panic!("{what}: not within {within:?}");
}

/// Runs `program args`, bounded by [`COMMAND_TIMEOUT`]; its trimmed stdout, or a panic
/// with its stderr.
async fn run(program: &str, args: &[&str]) -> String {
    let shown = format!("{program} {}", args.join(" "));
    let out = tokio::time::timeout(
        COMMAND_TIMEOUT,
        tokio::process::Command::new(program)
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("`{shown}` did not finish within {COMMAND_TIMEOUT:?}"))
    .unwrap_or_else(|e| panic!("run `{shown}`: {e}"));
    assert!(
        out.status.success(),
        "`{shown}` failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The compose command, with both compose files.
struct Compose {
    words: Vec<String>,
}

impl Compose {
    async fn find() -> Compose {
        let mut words: Vec<String> = match std::env::var("AUTHSYNC_COMPOSE_COMMAND") {
            Ok(c) if !c.trim().is_empty() => c.split_whitespace().map(str::to_string).collect(),
            _ => {
                let plugin = tokio::process::Command::new("docker")
                    .args(["compose", "version"])
                    .output()
                    .await
                    .is_ok_and(|o| o.status.success());
                if plugin {
                    vec!["docker".into(), "compose".into()]
                } else {
                    vec!["docker-compose".into()]
                }
            }
        };
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for file in ["docker-compose.yml", "docker-compose.local.yml"] {
            words.push("-f".into());
            words.push(root.join(file).to_string_lossy().into_owned());
        }
        Compose { words }
    }

    async fn run(&self, args: &[&str]) -> String {
        let mut all: Vec<&str> = self.words[1..].iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        run(&self.words[0], &all).await
    }

    /// The container of `service` (stopped ones too: keys-init has exited).
    async fn container(&self, service: &str) -> String {
        let ids = self.run(&["ps", "-a", "-q", service]).await;
        match ids.lines().next() {
            Some(id) if !id.trim().is_empty() => id.trim().to_string(),
            _ => panic!(
                "service {service} has no container: is the cluster up (scripts/compose.sh up)?"
            ),
        }
    }
}

/// A container's state as `docker inspect` gives it: status, health (empty without a
/// healthcheck) and exit code.
async fn state(container: &str) -> (String, String, i64) {
    let out = run(
        "docker",
        &[
            "inspect",
            "-f",
            "{{.State.Status}}|{{if .State.Health}}{{.State.Health.Status}}{{end}}|{{.State.ExitCode}}",
            container,
        ],
    )
    .await;
    let mut parts = out.split('|');
    let status = parts.next().unwrap_or_default().to_string();
    let health = parts.next().unwrap_or_default().to_string();
    let code = parts.next().and_then(|c| c.parse().ok()).unwrap_or(-1);
    (status, health, code)
}

/// GET `url`: the status and JSON body, or `None` when nothing answers.
async fn get(http: &reqwest::Client, url: &str) -> Option<(u16, Value)> {
    let resp = http.get(url).send().await.ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.json().await.unwrap_or(Value::Null)))
}

/// Prometheus's `data` for an API path, when it answers with success.
async fn prometheus(http: &reqwest::Client, path: &str) -> Option<Value> {
    match get(http, &format!("{PROMETHEUS}{path}")).await {
        Some((200, body)) if body["status"] == "success" => Some(body["data"].clone()),
        _ => None,
    }
}

/// The active alerts (pending and firing) as (name, region, state).
async fn alerts(http: &reqwest::Client) -> Option<Vec<(String, String, String)>> {
    let data = prometheus(http, "/api/v1/alerts").await?;
    let alerts = data["alerts"].as_array()?;
    Some(
        alerts
            .iter()
            .map(|a| {
                (
                    a["labels"]["alertname"].as_str().unwrap_or("").to_string(),
                    a["labels"]["region"].as_str().unwrap_or("").to_string(),
                    a["state"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect(),
    )
}

/// The authsync scrape targets as (region, health).
async fn targets(http: &reqwest::Client) -> Option<Vec<(String, String)>> {
    let data = prometheus(http, "/api/v1/targets?state=active").await?;
    let mut seen: Vec<(String, String)> = data["activeTargets"]
        .as_array()?
        .iter()
        .filter(|t| t["labels"]["job"] == "authsync")
        .map(|t| {
            (
                t["labels"]["region"].as_str().unwrap_or("").to_string(),
                t["health"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    seen.sort();
    Some(seen)
}

/// Whether the authsync rule group has been evaluated since `since` (RFC 3339 compares
/// as text only within one format, so this parses the time).
async fn rules_evaluated_after(http: &reqwest::Client, since: time::OffsetDateTime) -> bool {
    let Some(data) = prometheus(http, "/api/v1/rules").await else {
        return false;
    };
    data["groups"].as_array().into_iter().flatten().any(|g| {
        g["name"] == "authsync"
            && g["lastEvaluation"]
                .as_str()
                .and_then(|t| {
                    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .is_some_and(|t| t > since)
    })
}

async fn call(url: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    common::call_as(url, API_KEY, method, path, body).await
}

/// Waits until region `i` reads user `id`, and returns the user.
async fn read_in(i: usize, id: &str, within: Duration) -> Value {
    let path = format!("/v1/users/{id}");
    wait_for_every(
        READ_POLL,
        &format!("user {id} readable in {}", common::REGIONS[i]),
        within,
        || async {
            match call(NODES[i], "GET", &path, None).await {
                (200, user) => Some(user),
                _ => None,
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the docker compose cluster: scripts/compose.sh brings it up and runs this with AUTHSYNC_TEST_COMPOSE=1"]
async fn compose_cluster_replicates_alerts_on_a_stopped_region_and_recovers() {
    if !enabled() {
        eprintln!("AUTHSYNC_TEST_COMPOSE is not 1: skipped (scripts/compose.sh runs this test)");
        return;
    }
    let clock = Clock(Instant::now());
    let compose = Compose::find().await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // 1. Every service healthy: keys-init done, the brokers' and the nodes' healthchecks
    //    passing, Prometheus ready.
    let mut containers = Vec::new();
    for service in SERVICES {
        containers.push((service, compose.container(service).await));
    }
    for (service, id) in &containers {
        let seen = wait_for(
            &format!("{service} healthy"),
            Duration::from_secs(300),
            || async {
                let (status, health, code) = state(id).await;
                let ok = match *service {
                    "keys-init" => status == "exited" && code == 0,
                    "prometheus" => {
                        status == "running"
                            && matches!(
                                get(&http, &format!("{PROMETHEUS}/-/ready")).await,
                                Some((200, _))
                            )
                    }
                    _ => status == "running" && health == "healthy",
                };
                assert!(
                    !(status == "exited" && code != 0),
                    "{service} exited with {code}"
                );
                // keys-init's image has the node's healthcheck, which it never passes:
                // what counts for it is its exit code.
                ok.then(|| match *service {
                    "keys-init" => format!("completed (exit {code})"),
                    "prometheus" => "running, /-/ready answers 200".to_string(),
                    _ => health,
                })
            },
        )
        .await;
        clock.say(&format!("{service}: {seen}"));
    }
    for (i, region) in common::REGIONS.iter().enumerate() {
        let (status, body) = get(&http, &format!("{}/readyz", NODES[i]))
            .await
            .expect("readyz answers");
        assert_eq!(status, 200, "{region} /readyz: {body}");
        assert_eq!(body["region"], *region, "{} is not {region}", NODES[i]);
    }
    clock.say("every service is healthy; each port answers /readyz as its region");

    // 2. A user created in af-south, read by email in us-east, logged in with in eu-west.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let email = format!("compose-{stamp}@example.com");
    let (status, created) = call(
        NODES[0],
        "POST",
        "/v1/users",
        Some(json!({"email": email, "password": PW, "profile": {"given_name": "Compose"}})),
    )
    .await;
    assert_eq!(status, 201, "create in af-south: {created}");
    let id = created["id"].as_str().expect("id").to_string();
    assert_eq!(created["version"]["region"], "af-south");
    clock.say(&format!("created user {id} in af-south"));

    let written = Instant::now();
    let by_email = format!("/v1/users?email={}", email.replace('@', "%40"));
    let user = wait_for_every(
        READ_POLL,
        "the user readable in us-east",
        Duration::from_secs(60),
        || async {
            match call(NODES[2], "GET", &by_email, None).await {
                (200, user) => Some(user),
                _ => None,
            }
        },
    )
    .await;
    assert_eq!(user["id"], id.as_str());
    assert_eq!(user["email"], email.as_str(), "us-east decrypts the email");
    assert_eq!(user["profile"]["given_name"], "Compose");
    assert_eq!(user["version"]["region"], "af-south");
    clock.say(&format!(
        "us-east reads it by email {} ms after the create, version from af-south",
        written.elapsed().as_millis()
    ));

    // A login before the record arrives would count as a failed attempt: wait for it.
    read_in(1, &id, Duration::from_secs(60)).await;
    let (status, login) = call(
        NODES[1],
        "POST",
        "/v1/login",
        Some(json!({"login": email, "password": PW})),
    )
    .await;
    assert_eq!(status, 200, "login in eu-west: {}", login["error"]);
    assert_eq!(login["user_id"], id.as_str());
    assert_eq!(login["token_type"], "Bearer");
    assert!(login["access_token"].as_str().is_some_and(|t| t.len() > 20));
    clock.say("logged in in eu-west with the password set in af-south");

    // 3. Prometheus scrapes all three nodes, has evaluated the rules, and nothing fires.
    let want_up: Vec<(String, String)> = common::REGIONS
        .iter()
        .map(|r| (r.to_string(), "up".to_string()))
        .collect();
    let seen = wait_for(
        "Prometheus scraping all three nodes",
        INTERVAL * 4,
        || async { targets(&http).await.filter(|t| *t == want_up) },
    )
    .await;
    clock.say(&format!("Prometheus targets: {seen:?}"));
    let now = time::OffsetDateTime::now_utc();
    wait_for(
        "a rule evaluation after the targets came up",
        INTERVAL * 3,
        || async { rules_evaluated_after(&http, now).await.then_some(()) },
    )
    .await;
    let active = alerts(&http).await.expect("alerts answer");
    let firing: Vec<_> = active.iter().filter(|a| a.2 == "firing").collect();
    assert!(
        firing.is_empty(),
        "alerts firing on the healthy cluster: {firing:?}"
    );
    clock.say(&format!(
        "rules evaluated; no alert firing ({} pending)",
        active.len()
    ));

    // 4. eu-west's node stopped: a user written meanwhile in af-south, and the alert for
    //    eu-west fires once it has been down for the rule's `for:`.
    compose.run(&["stop", "-t", "20", "authsync-eu-west"]).await;
    let stopped = Instant::now();
    clock.say("stopped authsync-eu-west");
    let (status, created) = call(
        NODES[0],
        "POST",
        "/v1/users",
        Some(json!({"email": format!("compose-down-{stamp}@example.com"), "password": PW})),
    )
    .await;
    assert_eq!(status, 201, "create while eu-west is down: {created}");
    let while_down = created["id"].as_str().expect("id").to_string();
    read_in(2, &while_down, Duration::from_secs(60)).await;
    clock.say(&format!(
        "created user {while_down} in af-south while eu-west is down; us-east reads it"
    ));

    // When the alert first showed as pending (Cell: the probe closure is called again
    // and again, and only reads and sets it).
    let pending_at = std::cell::Cell::new(None);
    let fired = wait_for(
        &format!("{DOWN_ALERT} firing for eu-west"),
        DOWN_FOR + INTERVAL * 5,
        || async {
            let active = alerts(&http).await?;
            let down: Vec<_> = active.iter().filter(|a| a.0 == DOWN_ALERT).collect();
            assert!(
                down.iter().all(|a| a.1 == "eu-west"),
                "{DOWN_ALERT} for a region that is up: {down:?}"
            );
            if pending_at.get().is_none() && down.iter().any(|a| a.2 == "pending") {
                pending_at.set(Some(stopped.elapsed()));
            }
            down.iter()
                .any(|a| a.2 == "firing")
                .then(|| stopped.elapsed())
        },
    )
    .await;
    assert!(
        fired >= DOWN_FOR,
        "{DOWN_ALERT} fired after {fired:?}, before its for: of {DOWN_FOR:?}"
    );
    clock.say(&format!(
        "{DOWN_ALERT}{{region=\"eu-west\"}} pending {:.1} s and firing {:.1} s after the stop",
        pending_at.get().unwrap_or_default().as_secs_f64(),
        fired.as_secs_f64()
    ));

    // 5. Started again: ready, the alert clears, and eu-west has the user written while
    //    it was down, and every region the same digest.
    compose.run(&["start", "authsync-eu-west"]).await;
    let started = Instant::now();
    clock.say("started authsync-eu-west");
    wait_for("eu-west ready again", Duration::from_secs(120), || async {
        matches!(
            get(&http, &format!("{}/readyz", NODES[1])).await,
            Some((200, _))
        )
        .then_some(())
    })
    .await;
    clock.say(&format!(
        "eu-west ready {:.1} s after the start",
        started.elapsed().as_secs_f64()
    ));
    let user = read_in(1, &while_down, Duration::from_secs(120)).await;
    assert_eq!(user["version"]["region"], "af-south");
    clock.say(&format!(
        "eu-west reads the user written while it was down, {:.1} s after the start",
        started.elapsed().as_secs_f64()
    ));
    let cleared = wait_for(&format!("{DOWN_ALERT} clearing"), INTERVAL * 6, || async {
        let active = alerts(&http).await?;
        (!active.iter().any(|a| a.0 == DOWN_ALERT)).then(|| started.elapsed())
    })
    .await;
    clock.say(&format!(
        "{DOWN_ALERT} cleared {:.1} s after the start",
        cleared.as_secs_f64()
    ));
    let digests = wait_for(
        "the three regions' digests agreeing",
        Duration::from_secs(120),
        || async {
            let mut seen = Vec::new();
            for url in NODES {
                match call(url, "GET", "/v1/admin/digest", None).await {
                    (200, d) => {
                        seen.push((d["count"].as_u64()?, d["digest"].as_str()?.to_string()))
                    }
                    _ => return None,
                }
            }
            seen.windows(2).all(|w| w[0] == w[1]).then_some(seen)
        },
    )
    .await;
    assert!(
        digests[0].0 >= 2,
        "the digest counts both users: {digests:?}"
    );
    clock.say(&format!(
        "the regions converged: {} records, digest {}… in all three",
        digests[0].0,
        &digests[0].1[..12.min(digests[0].1.len())]
    ));
    let health = wait_for(
        "authsync-eu-west's healthcheck passing again",
        Duration::from_secs(60),
        || async {
            let (_, health, _) = state(&containers[5].1).await;
            (health == "healthy").then_some(health)
        },
    )
    .await;
    clock.say(&format!("authsync-eu-west: {health}"));
}
