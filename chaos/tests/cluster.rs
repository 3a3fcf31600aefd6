//! The harness's cluster: three real nodes in their own network namespaces, each link
//! behind a proxy. Cutting one region's links stops what reaches it and nothing else;
//! healing them lets it catch up; a node killed with SIGKILL comes back with its data.

use std::time::{Duration, Instant};

use authsync_chaos::cluster::{BrokerKind, Cluster, ClusterOptions};
use serde_json::{json, Value};

const KEY: &str = "chaos-test-api-key-0123456789";

async fn request(method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut req = client.request(method, url).bearer_auth(KEY);
    if let Some(b) = body {
        req = req.json(&b);
    }
    match req.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

async fn create(cluster: &Cluster, region: usize, email: &str) -> String {
    let (status, body) = request(
        reqwest::Method::POST,
        format!("{}/v1/users", cluster.url(region)),
        Some(json!({"email": email, "password": "correct horse battery"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_string()
}

/// Whether `id` reads in `region` within `within`.
async fn arrives(cluster: &Cluster, region: usize, id: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let url = format!("{}/v1/users/{id}", cluster.url(region));
        if request(reqwest::Method::GET, url, None).await.0 == 200 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_cut_off_by_its_own_links_misses_writes_until_healed() {
    if !authsync_chaos::netns::available() {
        eprintln!("skipped: network namespaces are not available to this process");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cluster = Cluster::start(ClusterOptions {
        root: dir.path().to_path_buf(),
        node_exe: env!("CARGO_BIN_EXE_authsync-chaos").into(),
        broker: BrokerKind::Embedded,
        base_port,
        api_key: KEY.into(),
    })
    .await
    .expect("cluster starts");

    let first = create(&cluster, 0, "first@example.com").await;
    for region in 1..3 {
        assert!(arrives(&cluster, region, &first, Duration::from_secs(30)).await);
    }

    // us-east loses the broker and both peers; eu-west keeps everything.
    cluster.broker_link(2).blackhole(true);
    for peer in [0, 1] {
        cluster.peer_link(2, peer).unwrap().blackhole(true);
    }
    let second = create(&cluster, 0, "second@example.com").await;
    assert!(arrives(&cluster, 1, &second, Duration::from_secs(30)).await);
    assert!(
        !arrives(&cluster, 2, &second, Duration::from_secs(3)).await,
        "us-east got a write while cut off"
    );
    cluster.broker_link(2).heal();
    for peer in [0, 1] {
        cluster.peer_link(2, peer).unwrap().heal();
    }
    assert!(
        arrives(&cluster, 2, &second, Duration::from_secs(60)).await,
        "us-east caught up after healing"
    );

    // A node killed with SIGKILL restarts into the same namespace and links.
    cluster.kill(1);
    assert_eq!(
        request(
            reqwest::Method::GET,
            format!("{}/v1/users/{first}", cluster.url(1)),
            None
        )
        .await
        .0,
        0,
        "a killed node does not answer"
    );
    let third = create(&cluster, 0, "third@example.com").await;
    cluster.restart(1).await.expect("eu-west restarts");
    for id in [&first, &second, &third] {
        assert!(
            arrives(&cluster, 1, id, Duration::from_secs(60)).await,
            "{id}"
        );
    }
    cluster.stop().await;
}
