//! API keys with scopes, added and revoked at runtime from the CLI and the admin API,
//! on a three-region cluster: a key added in one region works in every region, and a
//! revoked key, config keys included, stops working in every region without a
//! restart and stays revoked after one.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Cluster, API_KEY};
use serde_json::{json, Value};

const PW: &str = "correct horse battery";
const WITHIN: Duration = Duration::from_secs(30);

async fn call(url: &str, key: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    common::call_as(url, key, method, path, body).await
}

/// Waits (bounded) until `key` gets `want` for `GET path` from every url.
async fn everywhere(urls: &[String], key: &str, path: &str, want: u16) {
    for url in urls {
        let deadline = Instant::now() + WITHIN;
        loop {
            let (status, body) = call(url, key, "GET", path, None).await;
            if status == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{url}{path} still answers {status} {body}, not {want}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn cli(url: &str, key: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_authsync"))
        .arg("api-keys")
        .args(args)
        .args(["--url", url, "--api-key", key])
        .output()
        .expect("run authsync api-keys");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_scoped_and_added_and_revoked_in_every_region_without_a_restart() {
    let mut cluster = Cluster::start();
    let ids = cluster.warm_up().await;
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url.clone()).collect();
    let user = format!("/v1/users/{}", ids[0]);

    // A read-only key, added through the admin API in af-south.
    let (status, added) = call(
        &urls[0],
        API_KEY,
        "POST",
        "/v1/admin/api-keys",
        Some(json!({"name": "reader", "scopes": ["read"]})),
    )
    .await;
    assert_eq!(status, 201, "{added}");
    let reader = added["key"].as_str().unwrap().to_string();
    let reader_id = added["id"].as_str().unwrap().to_string();
    assert_eq!(added["scopes"], json!(["read"]));
    assert_eq!(added["source"], "runtime");
    everywhere(&urls, &reader, &user, 200).await;
    for url in &urls {
        let (status, body) = call(
            url,
            &reader,
            "POST",
            "/v1/users",
            Some(json!({"email": "nope@example.com", "password": PW})),
        )
        .await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"], "forbidden");
        assert!(
            body.to_string().contains("lacks the 'write' scope"),
            "{body}"
        );
        let (status, _) = call(url, &reader, "GET", "/v1/admin/retry", None).await;
        assert_eq!(status, 403, "admin needs the admin scope");
        // Logging a user in is a read.
        let (status, body) = call(
            url,
            &reader,
            "POST",
            "/v1/login",
            Some(json!({"login": "warm-up-0@example.com", "password": PW})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    // Nobody was created by the refused writes.
    let (_, found) = call(
        &urls[0],
        API_KEY,
        "GET",
        "/v1/users?email=nope@example.com",
        None,
    )
    .await;
    assert_ne!(found["email"], "nope@example.com");

    // A read-write key and an admin key from the CLI, against eu-west.
    let out = cli(
        &urls[1],
        API_KEY,
        &["add", "--name", "writer", "--scopes", "read,write"],
    );
    let writer = out
        .lines()
        .find_map(|l| l.split("give it to the caller): ").nth(1))
        .expect("the key is printed")
        .trim()
        .to_string();
    let out = cli(
        &urls[1],
        API_KEY,
        &["add", "--name", "ops", "--scopes", "admin,read,write"],
    );
    let ops = out
        .lines()
        .find_map(|l| l.split("give it to the caller): ").nth(1))
        .unwrap()
        .trim()
        .to_string();
    everywhere(&urls, &writer, &user, 200).await;
    everywhere(&urls, &ops, "/v1/admin/api-keys", 200).await;
    let (status, body) = call(
        &urls[2],
        &writer,
        "POST",
        "/v1/users",
        Some(json!({"email": "written@example.com", "password": PW})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let listed = cli(&urls[2], &ops, &["list"]);
    for name in ["reader", "writer", "ops", "test"] {
        assert!(listed.contains(name), "{name} not listed:\n{listed}");
    }
    assert!(listed.contains(&reader_id));

    // Bad input changes nothing.
    let (status, body) = call(
        &urls[0],
        &ops,
        "POST",
        "/v1/admin/api-keys",
        Some(json!({"name": "x", "scopes": ["root"], "extra": 1})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let text = body.to_string();
    assert!(
        text.contains("unknown scope") && text.contains("unknown field"),
        "{text}"
    );
    for bad in [
        json!({"name": "", "scopes": ["read"]}),
        json!({"scopes": []}),
        json!([1]),
    ] {
        let (status, body) = call(&urls[0], &ops, "POST", "/v1/admin/api-keys", Some(bad)).await;
        assert_eq!(status, 400, "{body}");
    }
    let (status, _) = call(
        &urls[0],
        &ops,
        "DELETE",
        "/v1/admin/api-keys/0123456789abcdef",
        None,
    )
    .await;
    assert_eq!(status, 404);
    let (_, keys) = call(&urls[0], &ops, "GET", "/v1/admin/api-keys", None).await;
    assert_eq!(keys["keys"].as_array().unwrap().len(), 4, "{keys}");
    let (status, _) = call(&urls[0], &writer, "GET", "/v1/admin/api-keys", None).await;
    assert_eq!(status, 403);

    // Revoked from us-east: refused in every region.
    let out = cli(&urls[2], &ops, &["revoke", &reader_id]);
    assert!(out.contains("revoked in every region"), "{out}");
    everywhere(&urls, &reader, &user, 401).await;

    // The config key too, although every config still lists it ...
    let config_id = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["source"] == "config")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body) = call(
        &urls[1],
        &ops,
        "DELETE",
        &format!("/v1/admin/api-keys/{config_id}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["revoked_at_ms"].as_u64().unwrap() > 0);
    everywhere(&urls, API_KEY, &user, 401).await;
    // ... and after a restart.
    cluster.nodes[0].stop();
    cluster.nodes[0].start_again();
    let url0 = cluster.nodes[0].url.clone();
    let (status, _) = call(&url0, API_KEY, "GET", &user, None).await;
    assert_eq!(
        status, 401,
        "a revoked config key came back after a restart"
    );
    let (status, body) = call(&url0, &ops, "GET", &user, None).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = call(&url0, &reader, "GET", &user, None).await;
    assert_eq!(status, 401);
}

#[test]
fn a_key_beginning_with_a_hyphen_is_taken_as_the_key_not_an_option() {
    let out = Command::new(env!("CARGO_BIN_EXE_authsync"))
        .args([
            "api-keys",
            "list",
            "--url",
            "http://127.0.0.1:9",
            "--api-key",
            "-Yabc",
        ])
        .output()
        .expect("run authsync api-keys");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    // It got as far as trying the node.
    assert!(stderr.contains("reach http://127.0.0.1:9"), "{stderr}");
}
