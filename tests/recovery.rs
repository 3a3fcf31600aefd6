//! The slow path behind the stream: key outages repaired by key recovery, events parked
//! in the retry queue and retried, dead letters an operator replays or drops, a
//! region cut off from the stream converging through anti-entropy, and the bound on
//! the retry queue. Three real node processes and a Kafka-protocol broker, with fault
//! injection switched on.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{metric_value, Client, Cluster, ClusterOptions, TestNode, API_KEY};
use serde_json::{json, Value};

const PW: &str = "correct horse battery";

/// Fast sweepers and short backoff for tests.
const FAST: &str = "[faults]\nenabled = true\n\n[retry]\nsweep_interval_ms = 100\nbackoff_base_ms = 200\nbackoff_max_ms = 1000\n";

/// A warmed-up cluster with fault injection and fast retries; `more` adds `[retry]` keys.
async fn fast_cluster(more: &str) -> (Cluster, Vec<Client>) {
    let cluster = Cluster::start_with(ClusterOptions {
        extra: format!("{FAST}{more}"),
        ..Default::default()
    });
    cluster.warm_up().await;
    let clients = cluster.clients();
    (cluster, clients)
}

async fn set_faults(c: &Client, faults: Value) {
    let r = c.put("/v1/admin/faults", faults).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

async fn create(c: &Client, email: &str) -> String {
    c.create(email, PW).await
}

/// Polls (bounded) until `check` holds.
async fn eventually<F, Fut>(what: &str, cluster: &Cluster, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..300 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let logs: Vec<String> = cluster.nodes.iter().map(|n| n.log()).collect();
    panic!(
        "{what} did not happen within 60 s; logs:\n{}",
        logs.join("\n----\n")
    );
}

fn cli(node: &TestNode, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_authsync"))
        .arg("dlq")
        .args(args)
        .args(["--url", &node.url])
        .env("AUTHSYNC_API_KEY", API_KEY)
        .output()
        .expect("run authsync dlq");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_written_during_a_key_outage_become_readable_there_without_operator_action() {
    let (cluster, clients) = fast_cluster("").await;
    let (south, west, east) = (&clients[0], &clients[1], &clients[2]);
    // eu-west's key service is down: for eu-west itself and for everyone wrapping for it.
    for c in &clients {
        set_faults(c, json!({"keys_unavailable": ["eu-west"]})).await;
    }
    let refused = west
        .post(
            "/v1/users",
            json!({"email": "west@example.com", "password": PW}),
        )
        .await;
    assert_eq!(refused.status, 503, "{}", refused.text);
    assert_eq!(refused.body["error"], "key_unavailable");
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(create(south, &format!("south{i}@example.com")).await);
        ids.push(create(east, &format!("east{i}@example.com")).await);
    }
    let total = (common::REGIONS.len() + ids.len()) as u64; // warm-up made one per region
    cluster.converged(total, Duration::from_secs(60)).await;
    // Every region holds them; eu-west cannot open them.
    for id in &ids {
        assert_eq!(south.get(&format!("/v1/users/{id}")).await.status, 200);
        let r = west.get(&format!("/v1/users/{id}")).await;
        assert_eq!(r.status, 503, "{}", r.text);
    }
    // The outage ends. Nobody does anything else.
    for c in &clients {
        set_faults(c, json!({"keys_unavailable": []})).await;
    }
    eventually("eu-west reading every record", &cluster, || async {
        let mut all = true;
        for id in &ids {
            all &= west.get(&format!("/v1/users/{id}")).await.status == 200;
        }
        all
    })
    .await;
    let u = west.get(&format!("/v1/users/{}", ids[0])).await;
    assert_eq!(u.body["email"], "south0@example.com");
    // The repairs came from the regions that wrote them, as replicated versions.
    let mut recovered = 0.0;
    for c in [south, east] {
        recovered +=
            metric_value(&c.metrics().await, "authsync_key_recoveries_total", &[]).unwrap_or(0.0);
    }
    assert!(recovered >= ids.len() as f64, "{recovered} key recoveries");
    // And eu-west writes again.
    create(west, "west-after@example.com").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_apply_failure_is_parked_then_retried_and_applied() {
    let (cluster, clients) = fast_cluster("").await;
    let (south, west) = (&clients[0], &clients[1]);
    set_faults(west, json!({"apply_failures": 1})).await;
    let id = create(south, "transient@example.com").await;
    eventually("the parked event applied", &cluster, || async {
        west.get(&format!("/v1/users/{id}")).await.status == 200
    })
    .await;
    // Counted once the sweep that applied it finishes.
    eventually("the retry counted", &cluster, || async {
        let m = west.metrics().await;
        metric_value(&m, "authsync_retries_total", &[("outcome", "applied")]) == Some(1.0)
    })
    .await;
    let m = west.metrics().await;
    assert_eq!(
        metric_value(&m, "authsync_retry_parked_total", &[("reason", "injected")]),
        Some(1.0)
    );
    let q = west.get("/v1/admin/retry").await;
    assert_eq!(q.status, 200);
    assert_eq!(q.body["count"], 0);
    assert_eq!(west.get("/v1/admin/dead-letters").await.body["count"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_from_a_clock_running_ahead_wait_in_the_retry_queue_until_they_fit() {
    // Retries every second at most, until the event fits: enough attempts for that.
    let (cluster, clients) = fast_cluster("max_attempts = 50\n").await;
    let (south, west) = (&clients[0], &clients[1]);
    // af-south's clock runs 8 s ahead; peers accept at most 500 ms (clock.max_skew_ms).
    // The margin is wide so that an event delivered late (a slow broker) still comes
    // from the future when it arrives.
    set_faults(south, json!({"clock_offset_ms": 8000})).await;
    let id = create(south, "ahead@example.com").await;
    eventually("the event parked for clock skew", &cluster, || async {
        let m = west.metrics().await;
        metric_value(
            &m,
            "authsync_retry_parked_total",
            &[("reason", "clock_skew")],
        ) == Some(1.0)
    })
    .await;
    let parked = west.get("/v1/admin/retry").await;
    assert_eq!(
        parked.body["entries"][0]["record_id"],
        id.as_str(),
        "{}",
        parked.text
    );
    assert_eq!(parked.body["entries"][0]["reason"], "clock_skew");
    assert_eq!(west.get(&format!("/v1/users/{id}")).await.status, 404);
    // Once local time has caught up with the event, a retry applies it.
    eventually("the event applied once it fits", &cluster, || async {
        west.get(&format!("/v1/users/{id}")).await.status == 200
    })
    .await;
    let v = west.get(&format!("/v1/users/{id}")).await.body["version"]["region"].clone();
    assert_eq!(v, "af-south");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_events_reach_dead_letters_and_are_replayed_or_dropped_by_an_operator() {
    let (cluster, clients) = fast_cluster("max_attempts = 3\n").await;
    let (south, west) = (&clients[0], &clients[1]);
    // Every apply in eu-west fails until the cause is fixed.
    set_faults(west, json!({"apply_failures": 1_000_000})).await;
    let kept = create(south, "poison-kept@example.com").await;
    let dropped = create(south, "poison-dropped@example.com").await;
    eventually("two dead letters", &cluster, || async {
        west.get("/v1/admin/dead-letters").await.body["count"] == 2
    })
    .await;
    let list = west.get("/v1/admin/dead-letters?limit=1").await;
    assert_eq!(list.status, 200, "{}", list.text);
    assert_eq!(list.body["entries"].as_array().unwrap().len(), 1);
    let first = list.body["entries"][0].clone();
    let next = list.body["next_after"].as_u64().expect("a second page");
    let second = west
        .get(&format!("/v1/admin/dead-letters?after={next}"))
        .await
        .body["entries"][0]
        .clone();
    let by_record = |id: &str| {
        if first["record_id"] == id {
            first.clone()
        } else {
            second.clone()
        }
    };
    let kept_entry = by_record(&kept);
    assert_eq!(kept_entry["record_id"], kept.as_str());
    assert_eq!(kept_entry["attempts"], 3);
    assert_eq!(kept_entry["reason"], "injected");
    assert_eq!(kept_entry["source_region"], "af-south");
    assert_eq!(kept_entry["history"].as_array().unwrap().len(), 3);
    assert!(kept_entry["topic"].as_str().unwrap().ends_with("af-south"));
    assert!(kept_entry.get("event").is_none(), "payload never shown");
    assert_eq!(west.get(&format!("/v1/users/{kept}")).await.status, 404);
    let kept_id = kept_entry["id"].as_u64().unwrap().to_string();
    let dropped_id = by_record(&dropped)["id"].as_u64().unwrap().to_string();

    let node = &cluster.nodes[1];
    let (ok, out, err) = cli(node, &["list"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("2 dead letters"), "{out}");
    assert!(out.contains(&kept) && out.contains(&dropped), "{out}");
    let (ok, out, _) = cli(node, &["show", &kept_id]);
    assert!(ok);
    let shown: Value = serde_json::from_str(&out).expect("show prints JSON");
    assert_eq!(shown["record_id"], kept.as_str());
    // Replayed before the fix: refused, kept, the attempt recorded.
    let (ok, _, err) = cli(node, &["replay", &kept_id]);
    assert!(!ok);
    assert!(err.contains("replay_failed"), "{err}");
    let again = west.get(&format!("/v1/admin/dead-letters/{kept_id}")).await;
    assert_eq!(again.body["attempts"], 4);
    // The cause is fixed; the operator replays one and drops the other.
    set_faults(west, json!({"apply_failures": 0})).await;
    let (ok, out, err) = cli(node, &["replay", &kept_id]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("dead letter {kept_id}: applied"));
    let u = west.get(&format!("/v1/users/{kept}")).await;
    assert_eq!(u.status, 200);
    assert_eq!(u.body["email"], "poison-kept@example.com");
    let (ok, out, _) = cli(node, &["drop", &dropped_id]);
    assert!(ok);
    assert!(out.contains("dropped"));
    assert_eq!(west.get("/v1/admin/dead-letters").await.body["count"], 0);
    assert_eq!(
        west.get(&format!("/v1/admin/dead-letters/{dropped_id}"))
            .await
            .status,
        404
    );
    let (ok, _, err) = cli(node, &["replay", &dropped_id]);
    assert!(!ok && err.contains("404"), "{err}");
    // The dropped event's account is still repaired by the next change to it, and
    // the dead-letter metrics say what happened.
    let m = west.metrics().await;
    assert_eq!(
        metric_value(&m, "authsync_dead_letters_total", &[("reason", "injected")]),
        Some(2.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_cut_off_from_the_stream_converges_through_anti_entropy() {
    let mut cluster = Cluster::start_with(ClusterOptions {
        extra: "[anti_entropy]\ninterval_ms = 500\n".into(),
        anti_entropy: true,
        cut_off: Some("us-east"),
    });
    let clients = cluster.clients();
    // us-east is also away while the others write.
    cluster.nodes[2].stop();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(create(&clients[0], &format!("ae-south{i}@example.com")).await);
        ids.push(create(&clients[1], &format!("ae-west{i}@example.com")).await);
    }
    let patch = clients[0]
        .send(
            "PATCH",
            &format!("/v1/users/{}", ids[0]),
            Some(json!({"profile": {"city": "Cape Town"}})),
        )
        .await;
    assert_eq!(patch.status, 200, "{}", patch.text);
    let del = clients[1].delete(&format!("/v1/users/{}", ids[1])).await;
    assert_eq!(del.status, 204);
    cluster.nodes[2].start_again();
    let clients = cluster.clients();
    // us-east's own write reaches the others by the stream as usual.
    let east = create(&clients[2], "ae-east@example.com").await;
    cluster
        .converged(ids.len() as u64 + 1, Duration::from_secs(60))
        .await;
    let u = clients[2].get(&format!("/v1/users/{}", ids[0])).await;
    assert_eq!(u.body["profile"]["city"], "Cape Town");
    assert_eq!(
        clients[2]
            .get(&format!("/v1/users/{}", ids[1]))
            .await
            .status,
        404
    );
    assert_eq!(
        clients[0].get(&format!("/v1/users/{east}")).await.status,
        200
    );
    // Counted at the end of the round that pulled them.
    let repaired = |m: &str| -> f64 {
        ["af-south", "eu-west"]
            .iter()
            .map(|p| {
                metric_value(m, "authsync_anti_entropy_repaired_total", &[("peer", p)])
                    .unwrap_or(0.0)
            })
            .sum()
    };
    eventually("ten records counted as repaired", &cluster, || async {
        repaired(&clients[2].metrics().await) >= 10.0
    })
    .await;
    let m = clients[2].metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "authsync_replication_events_total",
            &[("source", "af-south"), ("outcome", "applied")]
        ),
        Some(0.0),
        "nothing reached us-east by the stream"
    );
    assert!(metric_value(
        &m,
        "authsync_sweeper_last_run_timestamp_seconds",
        &[("sweeper", "anti_entropy")]
    )
    .is_some_and(|t| t > 0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_retry_queue_holds_the_stream_and_says_so_without_dropping_anything() {
    let (cluster, clients) = fast_cluster("max_entries = 2\n").await;
    let (south, west) = (&clients[0], &clients[1]);
    set_faults(west, json!({"apply_failures": 1_000_000})).await;
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(create(south, &format!("bound{i}@example.com")).await);
    }
    eventually("the queue to fill and say so", &cluster, || async {
        let m = west.metrics().await;
        metric_value(&m, "authsync_retry_queue_full", &[]) == Some(1.0)
            && metric_value(&m, "authsync_retry_queue_refused_total", &[]).is_some()
    })
    .await;
    let q = west.get("/v1/admin/retry").await;
    assert_eq!(q.body["count"], 2, "{}", q.text);
    assert_eq!(q.body["max_entries"], 2);
    assert_eq!(q.body["entries"].as_array().unwrap().len(), 2);
    assert_eq!(west.get("/v1/admin/dead-letters").await.body["count"], 0);
    // The cause goes away: everything arrives, nothing was dropped.
    set_faults(west, json!({"apply_failures": 0})).await;
    eventually("all four accounts in eu-west", &cluster, || async {
        let mut all = true;
        for id in &ids {
            all &= west.get(&format!("/v1/users/{id}")).await.status == 200;
        }
        all
    })
    .await;
    eventually("the queue to drain", &cluster, || async {
        let m = west.metrics().await;
        west.get("/v1/admin/retry").await.body["count"] == 0
            && metric_value(&m, "authsync_retry_queue_full", &[]) == Some(0.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_and_internal_endpoints_refuse_bad_input_and_strangers() {
    let node = TestNode::start();
    let c = node.client();
    for path in [
        "/v1/admin/dead-letters?limit=0",
        "/v1/admin/dead-letters?limit=abc",
        "/v1/admin/retry?after=-1",
        "/v1/admin/retry?bogus=1",
        "/v1/admin/dead-letters/abc",
        "/v1/admin/dead-letters/0",
    ] {
        let r = c.get(path).await;
        assert_eq!(r.status, 400, "{path}: {}", r.text);
        assert_eq!(r.body["error"], "invalid_request", "{path}");
    }
    assert_eq!(c.get("/v1/admin/dead-letters/42").await.status, 404);
    assert_eq!(
        c.post("/v1/admin/dead-letters/42/replay", json!({}))
            .await
            .status,
        404
    );
    assert_eq!(c.delete("/v1/admin/dead-letters/42").await.status, 404);
    let empty = c.get("/v1/admin/dead-letters").await;
    assert_eq!(
        empty.body,
        json!({"count": 0, "entries": [], "next_after": null})
    );
    // Fault switches do not exist unless the node was started with them.
    assert_eq!(
        c.put("/v1/admin/faults", json!({"apply_failures": 1}))
            .await
            .status,
        404
    );
    let http = reqwest::Client::new();
    let no_key = http
        .get(format!("{}/v1/admin/dead-letters", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), 401);
    // Internal endpoints want a peer's signature, not an API key.
    for (method, path) in [
        ("GET", "/v1/internal/digests"),
        ("GET", "/v1/internal/buckets/0"),
        ("POST", "/v1/internal/records"),
    ] {
        let r = c.send(method, path, Some(json!({"ids": []}))).await;
        assert_eq!(r.status, 401, "{path}");
        // A current time, a known peer, its key id and a signature of the right
        // length: refused by the signature check itself, not as expired or
        // malformed. A format 1 header (an HMAC under the shared key) is refused as
        // unsigned.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis();
        for (header, refusal) in [
            (
                format!(
                    "eu-west:{now_ms}:{}:eu-west/s1:{}",
                    "00".repeat(16),
                    "00".repeat(64)
                ),
                "bad peer signature",
            ),
            (
                format!("eu-west:{now_ms}:{}", "00".repeat(32)),
                "unsigned peer request",
            ),
        ] {
            let forged = http
                .request(method.parse().unwrap(), format!("{}{path}", node.url))
                .header("x-authsync-peer", header)
                .json(&json!({"ids": []}))
                .send()
                .await
                .unwrap();
            assert_eq!(forged.status(), 401, "{path}");
            let answer = forged.text().await.unwrap();
            assert!(answer.contains(refusal), "{path}: {answer}");
        }
    }
    // The CLI says what is wrong and changes nothing.
    let out = Command::new(env!("CARGO_BIN_EXE_authsync"))
        .args(["dlq", "list", "--url", &node.url])
        .env_remove("AUTHSYNC_API_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("API key"));
    let out = Command::new(env!("CARGO_BIN_EXE_authsync"))
        .args(["dlq", "list", "--url", &node.url, "--api-key", "wrong"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    let faulty = TestNode::start_with("[faults]\nenabled = true\n");
    let r = faulty
        .client()
        .put("/v1/admin/faults", json!({"keys_unavailable": ["mars"]}))
        .await;
    assert_eq!(r.status, 400, "{}", r.text);
    let r = faulty
        .client()
        .put("/v1/admin/faults", json!({"apply_failure": 1}))
        .await;
    assert_eq!(r.status, 400, "unknown switch: {}", r.text);
    let r = faulty
        .client()
        .put(
            "/v1/admin/faults",
            json!({"clock_offset_ms": 90_000_000_000i64}),
        )
        .await;
    assert_eq!(r.status, 400, "offset beyond a day: {}", r.text);
    assert_eq!(r.body["details"][0]["field"], "clock_offset_ms");
    // Refused whole: nothing changed.
    let state = faulty.client().get("/v1/admin/faults").await;
    assert_eq!(state.body["clock_offset_ms"], 0);
}
