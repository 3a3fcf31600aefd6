//! `authsync demo`: no setup, a printed URL and key, a clean stop, data kept with
//! `--data-dir`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::Client;
use serde_json::json;

struct Demo {
    child: Child,
    url: String,
    urls: Vec<String>,
    key: String,
}

fn start(args: &[&str]) -> Demo {
    let mut child = Command::new(env!("CARGO_BIN_EXE_authsync"))
        .args(["demo", "--port", "0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start demo");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut urls, mut key) = (Vec::new(), None);
    while key.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(90))
            .expect("demo printed its URLs and key");
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [region, u] if u.starts_with("http://") && region.contains('-') => {
                urls.push(u.to_string())
            }
            ["api", "key", k] => key = Some(k.to_string()),
            _ => {}
        }
    }
    Demo {
        child,
        url: urls[0].clone(),
        urls,
        key: key.unwrap(),
    }
}

impl Demo {
    fn client(&self) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .post(format!("{}/v1/users", self.url))
            .bearer_auth(&self.key)
    }

    fn stop(mut self) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        for _ in 0..400 {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "demo exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("demo did not stop within 20 s of SIGTERM");
    }
}

#[tokio::test]
async fn demo_runs_three_replicating_regions_with_a_generated_key() {
    let demo = start(&[]);
    assert_eq!(demo.urls.len(), 3, "one URL per region");
    let r = demo
        .client()
        .json(&json!({"email": "everywhere@example.com", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // Written in af-south, readable in us-east.
    let mut seen = false;
    for _ in 0..300 {
        let got = reqwest::Client::new()
            .get(format!(
                "{}/v1/users?email=everywhere%40example.com",
                demo.urls[2]
            ))
            .bearer_auth(&demo.key)
            .send()
            .await
            .unwrap();
        if got.status() == 200 {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen, "the write did not reach us-east");
    demo.stop();
}

#[tokio::test]
async fn demo_serves_with_a_generated_key_and_stops_on_sigterm() {
    let demo = start(&[]);
    assert!(demo.key.len() >= 32, "a strong generated key");
    let r = demo
        .client()
        .json(&json!({"email": "demo@example.com", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let wrong = reqwest::Client::new()
        .get(format!("{}/v1/admin/digest", demo.url))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    demo.stop();
}

#[tokio::test]
async fn demo_with_data_dir_and_api_key_keeps_data_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let demo = start(&["--data-dir", data, "--api-key", "my-demo-key-123"]);
    assert_eq!(demo.key, "my-demo-key-123");
    let r = demo
        .client()
        .json(&json!({"email": "kept@example.com", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    demo.stop();

    let demo = start(&["--data-dir", data, "--api-key", "my-demo-key-123"]);
    let c = Client {
        url: demo.url.clone(),
        http: reqwest::Client::new(),
    };
    let found = c
        .http
        .get(format!("{}/v1/users?email=kept%40example.com", c.url))
        .bearer_auth("my-demo-key-123")
        .send()
        .await
        .unwrap();
    assert_eq!(found.status(), 200);
    demo.stop();
}
