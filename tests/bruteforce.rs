//! Brute-force protection, from the outside: the per-account backoff holds across
//! regions, an unknown login is treated exactly like a known one, a good password
//! resets the count, and a per-address token bucket limits logins and lookups.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, TestNode, API_KEY};
use serde_json::{json, Value};

const PW: &str = "correct horse battery";
const WRONG: &str = "wrong horse battery";

struct Answer {
    status: u16,
    body: Value,
    retry_after: Option<u64>,
}

async fn login(url: &str, who: &str, password: &str) -> Answer {
    let resp = reqwest::Client::new()
        .post(format!("{url}/v1/login"))
        .bearer_auth(API_KEY)
        .json(&json!({"login": who, "password": password}))
        .send()
        .await
        .expect("login request");
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    Answer {
        status,
        body: resp.json().await.unwrap_or(Value::Null),
        retry_after,
    }
}

/// Wrong passwords at `url`, each as soon as it is allowed, until a failure says the
/// next attempt waits at least `seconds` (bounded).
async fn fail_until_waiting(url: &str, who: &str, seconds: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let a = login(url, who, WRONG).await;
        match a.status {
            401 if a.body["retry_after_s"].as_u64() >= Some(seconds) => return,
            401 => {}
            429 => tokio::time::sleep(Duration::from_secs(a.retry_after.unwrap_or(1))).await,
            other => panic!("{other}: {}", a.body),
        }
        assert!(
            Instant::now() < deadline,
            "{who} never had to wait {seconds} s"
        );
    }
}

/// Five failures are free; the fifth says the next attempt waits a second, and an
/// attempt within it is refused unhashed, with Retry-After.
async fn five_failures_then_a_wait(url: &str, who: &str) {
    for n in 1..=5 {
        let a = login(url, who, WRONG).await;
        assert_eq!(a.status, 401, "{}", a.body);
        assert_eq!(a.body["error"], "invalid_credentials");
        let expect = if n < 5 { 0 } else { 1 };
        assert_eq!(a.body["retry_after_s"], expect, "failure {n}: {}", a.body);
    }
    let a = login(url, who, WRONG).await;
    assert_eq!(a.status, 429, "{}", a.body);
    assert_eq!(a.body["error"], "too_many_attempts");
    assert_eq!(a.body["retry_after_s"], 1);
    assert_eq!(a.retry_after, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_back_off_in_every_region_and_a_good_password_resets_them() {
    let cluster = Cluster::start();
    cluster.warm_up().await;
    let clients = cluster.clients();
    let urls: Vec<String> = clients.iter().map(|c| c.url.clone()).collect();
    clients[0].create("ada@example.com", PW).await;
    cluster.converged(4, Duration::from_secs(60)).await;

    five_failures_then_a_wait(&urls[0], "ada@example.com").await;
    // An account that does not exist answers the same way.
    five_failures_then_a_wait(&urls[0], "nobody@example.com").await;

    // Switching regions gains nothing: once af-south's failures have arrived, the
    // first attempt in another region is refused unhashed, as in af-south (counters
    // of each region's own would give five more guesses there).
    // (A wait of at least 8 s first, so that it outlasts the replication lag.)
    tokio::join!(
        fail_until_waiting(&urls[0], "ada@example.com", 8),
        fail_until_waiting(&urls[0], "nobody@example.com", 8)
    );
    common::entries_arrived(&urls, 1).await;
    for url in &urls[1..] {
        for who in ["ada@example.com", "nobody@example.com"] {
            let a = login(url, who, WRONG).await;
            assert_eq!(a.status, 429, "{who} at {url}: {}", a.body);
            assert!(a.retry_after.unwrap() >= 1, "{}", a.body);
        }
        // While refused, even the right password is not looked at.
        let a = login(url, "ada@example.com", PW).await;
        assert_eq!(a.status, 429, "{}", a.body);
    }

    // Once the wait is over, the right password gets in and the count starts again,
    // in every region.
    let deadline = Instant::now() + Duration::from_secs(60);
    let ok = loop {
        let a = login(&urls[0], "ada@example.com", PW).await;
        if a.status == 200 {
            break a;
        }
        assert_eq!(a.status, 429, "{}", a.body);
        assert!(Instant::now() < deadline, "still refused: {}", a.body);
        tokio::time::sleep(Duration::from_secs(a.retry_after.unwrap_or(1))).await;
    };
    assert!(ok.body["user_id"].is_string());
    for url in &urls {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // A wrong password now is a first failure: no wait, once the reset arrived.
            let a = login(url, "ada@example.com", WRONG).await;
            if a.status == 401 && a.body["retry_after_s"] == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "{url}: {} {}", a.status, a.body);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let metrics = clients[0].metrics().await;
    let locked_out = common::metric_value(
        &metrics,
        "authsync_logins_total",
        &[("outcome", "locked_out")],
    );
    assert!(locked_out.unwrap_or(0.0) >= 2.0, "{locked_out:?}");
    let lockouts = common::metric_value(&metrics, "authsync_login_lockouts_total", &[]);
    assert!(lockouts.unwrap_or(0.0) >= 2.0, "{lockouts:?}");
    assert!(!metrics.contains("ada@example.com") && !metrics.contains("nobody@example.com"));
}

#[tokio::test]
async fn each_address_has_a_token_bucket_for_logins_and_lookups() {
    let node = TestNode::start_with(
        "[rate_limit]\nper_second = 0.5\nburst = 3\nclient_ip_header = \"x-forwarded-for\"\n",
    );
    let http = reqwest::Client::new();
    let lookup = |from: &'static str| {
        http.get(format!("{}/v1/users?email=someone@example.com", node.url))
            .bearer_auth(API_KEY)
            .header("x-forwarded-for", from)
            .send()
    };
    // The platform appends the end user's address; what the client wrote to the left
    // of it (a new address each time, to get a fresh bucket) does not count.
    for header in [
        "10.0.0.1, 203.0.113.7",
        "10.0.0.2, 203.0.113.7",
        "10.0.0.3,203.0.113.7",
    ] {
        assert_eq!(lookup(header).await.unwrap().status(), 404);
    }
    let refused = lookup("10.0.0.4, 203.0.113.7").await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "2");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(body["retry_after_s"], 2);
    // Logins from that address share its bucket; other addresses have their own.
    let login = http
        .post(format!("{}/v1/login", node.url))
        .bearer_auth(API_KEY)
        .header("x-forwarded-for", "203.0.113.7")
        .json(&json!({"login": "someone@example.com", "password": PW}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 429);
    assert_eq!(lookup("198.51.100.1").await.unwrap().status(), 404);
    // Reads by id are not limited.
    let by_id = node
        .client()
        .get("/v1/users/00000000-0000-4000-8000-000000000000")
        .await;
    assert_eq!(by_id.status, 404);
    let metrics = node.client().metrics().await;
    assert_eq!(
        common::metric_value(
            &metrics,
            "authsync_rate_limited_total",
            &[("route", "lookup")]
        ),
        Some(1.0)
    );
    assert_eq!(
        common::metric_value(
            &metrics,
            "authsync_rate_limited_total",
            &[("route", "login")]
        ),
        Some(1.0)
    );
}

/// The attack: reading `/metrics` around a login to learn whether it named an account
/// (the hash histograms counted known accounts only, and one sample per hash, so an
/// account with legacy hashes added several).
#[tokio::test]
async fn every_failed_login_adds_one_sample_to_each_hash_histogram_whatever_it_names() {
    let node = TestNode::start();
    let client = node.client();
    client.create("ada@example.com", PW).await;
    let items: Vec<Value> = (1..=3)
        .map(|i| {
            json!({"email": "legacy@example.com", "source": format!("shop{i}"),
            "legacy_hash": {"algorithm": "md5", "hash": format!("{i:032x}")}})
        })
        .collect();
    let imported = client.post("/v1/users/import", Value::Array(items)).await;
    assert_eq!(imported.status, 200, "{}", imported.text);
    let histograms = [
        "authsync_password_hash_seconds_count",
        "authsync_password_hash_wait_seconds_count",
        "authsync_password_hash_duration_seconds_count",
    ];
    let counts = |text: &str| -> Vec<f64> {
        histograms
            .iter()
            .map(|h| common::metric_value(text, h, &[]).unwrap_or(0.0))
            .collect()
    };
    for who in [
        "nobody@example.com",
        "ada@example.com",
        "legacy@example.com",
    ] {
        let before = counts(&client.metrics().await);
        let a = login(&node.url, who, WRONG).await;
        assert_eq!(a.status, 401, "{}", a.body);
        let after = counts(&client.metrics().await);
        let added: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        assert_eq!(
            added,
            vec![1.0; 3],
            "{who}: samples added to {histograms:?}"
        );
    }
}
