//! Starts real `authsync node` processes on port 0 against temporary RocksDB
//! directories, and talks to them over HTTP.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use authsync::node::launcher::{NodeCommand, NodeProcess};
use serde_json::Value;

pub const REGIONS: [&str; 3] = ["af-south", "eu-west", "us-east"];
pub const API_KEY: &str = "test-api-key-0123456789";

pub fn sha256_hex(s: &str) -> String {
    authsync::accounts::api_keys::sha256_hex(s)
}

/// One node process with its own data directory.
pub struct TestNode {
    pub dir: tempfile::TempDir,
    pub region: String,
    pub url: String,
    process: Option<NodeProcess>,
    stderr_log: PathBuf,
}

impl TestNode {
    /// Keyrings for the three regions, then a node for the first one.
    pub fn start() -> TestNode {
        Self::start_with("")
    }

    /// `extra` is appended to the config file; its leading `http.KEY = value` lines go
    /// into the `[http]` table.
    pub fn start_with(extra: &str) -> TestNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let keys = dir.path().join("keys");
        init_keys(&keys);
        Self::start_in(dir, REGIONS[0], &keys, extra)
    }

    /// A node of `region` with its data in `dir`, keyring from `keys`.
    pub fn start_in(dir: tempfile::TempDir, region: &str, keys: &Path, extra: &str) -> TestNode {
        Self::start_at(dir, region, keys, extra, 0)
    }

    /// Like [`TestNode::start_in`], listening on `port` (0: any free port).
    pub fn start_at(
        dir: tempfile::TempDir,
        region: &str,
        keys: &Path,
        extra: &str,
        port: u16,
    ) -> TestNode {
        let region = region.to_string();
        // Leading `http.KEY = …` lines of `extra` go into the [http] table.
        let (http, extra): (Vec<&str>, Vec<&str>) = {
            let lines: Vec<&str> = extra.lines().collect();
            let n = lines
                .iter()
                .take_while(|l| l.trim().is_empty() || l.starts_with("http."))
                .count();
            (lines[..n].to_vec(), lines[n..].to_vec())
        };
        let http: String = http
            .iter()
            .filter_map(|l| l.strip_prefix("http."))
            .map(|l| format!("{l}\n"))
            .collect();
        let extra = extra.join("\n");
        let config = format!(
            r#"region = "{region}"
data_dir = "{data}"
keyring = "{keyring}"

[http]
listen = "127.0.0.1:{port}"
{http}

[[api_keys]]
name = "test"
sha256 = "{hash}"

[keys]
reload_interval_ms = 200
rewrap_interval_ms = 200
{extra}
"#,
            data = dir.path().join("data").display(),
            keyring = keys.join(format!("keyring-{region}.json")).display(),
            hash = sha256_hex(API_KEY),
        );
        std::fs::write(dir.path().join("node.toml"), config).expect("write config");
        let stderr_log = dir.path().join("node.log");
        let mut node = TestNode {
            dir,
            region,
            url: String::new(),
            process: None,
            stderr_log,
        };
        node.spawn();
        node
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("node.toml")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn keys_dir(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    /// Everything the node wrote to stderr (its log) so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// Starts the node through the launcher `authsync demo` uses, not bound to the
    /// spawning thread (a test may start a node from a short-lived one).
    fn spawn(&mut self) {
        let launched = NodeCommand::new(env!("CARGO_BIN_EXE_authsync"), self.config_path())
            .name(self.region.clone())
            .stderr_log(&self.stderr_log)
            .wait_for_url(Some(Duration::from_secs(60)))
            .spawn();
        match launched {
            Ok(process) => {
                self.url = process
                    .url()
                    .expect("a launch that waits for the URL has one")
                    .to_string();
                self.process = Some(process);
            }
            Err(e) => panic!("node did not start: {e:#}; log:\n{}", self.log()),
        }
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// SIGTERM and wait for the orderly shutdown.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            match p.stop(Duration::from_secs(15)) {
                Some(status) => assert!(
                    status.success(),
                    "node exited with {status}; log:\n{}",
                    self.log()
                ),
                None => panic!("node did not stop within 15 s of SIGTERM"),
            }
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn start_again(&mut self) {
        assert!(self.process.is_none(), "node still running");
        self.spawn();
    }

    pub fn client(&self) -> Client {
        Client {
            url: self.url.clone(),
            http: reqwest::Client::new(),
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Keyrings for the three test regions, written by the real CLI.
pub fn init_keys(keys: &Path) {
    let status = Command::new(env!("CARGO_BIN_EXE_authsync"))
        .args(["keys", "init", "--regions", &REGIONS.join(","), "--out"])
        .arg(keys)
        .stdout(Stdio::null())
        .status()
        .expect("run authsync keys init");
    assert!(status.success(), "keys init failed");
}

/// Waits for `check` to hold, polling, at most 60 s; fails naming `what`.
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---- second factors: what an authenticator app computes

/// RFC 4648 base32, as an authenticator app reads the secret.
pub fn base32_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut out, mut buffer, mut bits) = (Vec::new(), 0u32, 0u32);
    for c in s.bytes() {
        let v = ALPHABET.iter().position(|a| *a == c).expect("base32") as u32;
        buffer = (buffer << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    out
}

/// The six-digit code an authenticator app shows for `secret` at `step` (RFC 6238).
pub fn code_at(secret: &[u8], step: u64) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let mac = ring::hmac::sign(&key, &step.to_be_bytes());
    let mac = mac.as_ref();
    let o = (mac[19] & 0x0f) as usize;
    let bin = u32::from_be_bytes([mac[o] & 0x7f, mac[o + 1], mac[o + 2], mac[o + 3]]);
    format!("{:06}", bin % 1_000_000)
}

pub fn now_step() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 30
}

/// Enrols and confirms an authenticator for account `id` at `client`; its secret and
/// recovery codes.
pub async fn enrol_totp(client: &Client, id: &str) -> (Vec<u8>, Vec<String>) {
    let r = client
        .post(
            &format!("/v1/users/{id}/factors/totp"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let secret = base32_decode(r.body["secret"].as_str().unwrap());
    assert_eq!(secret.len(), 20);
    let uri = r.body["otpauth_uri"].as_str().unwrap();
    assert!(
        uri.starts_with("otpauth://totp/") && uri.contains(r.body["secret"].as_str().unwrap()),
        "{uri}"
    );
    // A wrong first code turns nothing on.
    let wrong = client
        .post(
            &format!("/v1/users/{id}/factors/totp/confirm"),
            serde_json::json!({"code": "000000"}),
        )
        .await;
    assert_eq!(wrong.status, 400, "{}", wrong.text);
    let r = client
        .post(
            &format!("/v1/users/{id}/factors/totp/confirm"),
            serde_json::json!({"code": code_at(&secret, now_step())}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let codes: Vec<String> = r.body["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert_eq!(codes.len(), 10);
    (secret, codes)
}

/// One request with `key` as the API key: the status and the JSON body (null when
/// there is none).
pub async fn call_as(
    url: &str,
    key: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method.parse().expect("method"), format!("{url}{path}"))
        .bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Waits until every entry `urls[0]`'s region wrote so far has reached the others:
/// entries travel on one partition in order, so once an API key added now works
/// there, so does the rest. `n` names the marker key.
pub async fn entries_arrived(urls: &[String], n: usize) {
    let (status, added) = call_as(
        &urls[0],
        API_KEY,
        "POST",
        "/v1/admin/api-keys",
        Some(serde_json::json!({"name": format!("marker-{n}"), "scopes": ["read"]})),
    )
    .await;
    assert_eq!(status, 201, "{added}");
    let key = added["key"].as_str().unwrap();
    for url in &urls[1..] {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while call_as(url, key, "GET", "/v1/admin/digest", None).await.0 != 403 {
            assert!(
                std::time::Instant::now() < deadline,
                "the marker never reached {url}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A thin HTTP client that always sends the test API key.
#[derive(Clone)]
pub struct Client {
    pub url: String,
    pub http: reqwest::Client,
}

pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

impl Client {
    pub async fn send(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        let mut req = self
            .http
            .request(
                method.parse().expect("method"),
                format!("{}{path}", self.url),
            )
            .bearer_auth(API_KEY);
        if let Some(b) = body {
            req = req.json(&b);
        }
        Self::read(req.send().await.expect("request")).await
    }

    pub async fn read(resp: reqwest::Response) -> Resp {
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp { status, body, text }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send("GET", path, None).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Resp {
        self.send("PUT", path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.send("DELETE", path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.send("POST", path, Some(body)).await
    }

    pub async fn create(&self, email: &str, password: &str) -> String {
        let r = self
            .post(
                "/v1/users",
                serde_json::json!({"email": email, "password": password}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        r.body["id"].as_str().expect("id").to_string()
    }

    pub async fn digest(&self) -> (u64, String) {
        let r = self.get("/v1/admin/digest").await;
        assert_eq!(r.status, 200, "{}", r.text);
        (
            r.body["count"].as_u64().expect("count"),
            r.body["digest"].as_str().expect("digest").to_string(),
        )
    }

    /// Live records here whose account key has not arrived yet (unreadable here).
    pub async fn unkeyed(&self) -> u64 {
        let r = self.get("/v1/admin/digest").await;
        assert_eq!(r.status, 200, "{}", r.text);
        r.body["unkeyed"].as_u64().expect("unkeyed")
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }
}

/// The value of the first sample of `name` whose labels contain every `labels` pair.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The broker the replication tests use:
/// - `AUTHSYNC_TEST_KAFKA_DIR=DIR`: the Apache Kafka broker that `scripts/kafka.sh start
///   DIR` runs (scripts/test.sh starts one for a whole test stage). Tests share it, each
///   on its own topic prefix, and one that takes the broker away kills it with SIGKILL
///   and starts it again on the same log dirs (so that stage runs one test at a time);
/// - `AUTHSYNC_TEST_KAFKA=host:port`: an already running broker, not controlled;
/// - otherwise librdkafka's mock cluster in this process (a real Kafka-protocol
///   listener on loopback).
pub struct Broker {
    pub bootstrap: String,
    /// Nodes must create their topics (real brokers); the mock's are made here.
    pub external: bool,
    mock: Option<mpsc::Sender<MockCommand>>,
    kafka_dir: Option<PathBuf>,
    /// Whether this test killed the shared broker and has not started it again.
    killed: bool,
}

enum MockCommand {
    Down,
    Up,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Runs `scripts/kafka.sh VERB DIR`, which waits until the broker is gone or listens.
fn kafka_script(verb: &str, dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh");
    let status = Command::new(&script)
        .arg(verb)
        .arg(dir)
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(
        status.success(),
        "scripts/kafka.sh {verb} {}: {status}",
        dir.display()
    );
}

impl Broker {
    pub fn start(topic_prefix: &str) -> Broker {
        if let Some(dir) = std::env::var_os("AUTHSYNC_TEST_KAFKA_DIR").filter(|d| !d.is_empty()) {
            let dir = PathBuf::from(dir);
            let port = std::fs::read_to_string(dir.join("port"))
                .unwrap_or_else(|e| panic!("{}/port (scripts/kafka.sh start): {e}", dir.display()));
            return Broker {
                bootstrap: format!("127.0.0.1:{}", port.trim()),
                external: true,
                mock: None,
                kafka_dir: Some(dir),
                killed: false,
            };
        }
        if let Some(b) = std::env::var("AUTHSYNC_TEST_KAFKA")
            .ok()
            .filter(|b| !b.is_empty())
        {
            return Broker {
                bootstrap: b,
                external: true,
                mock: None,
                kafka_dir: None,
                killed: false,
            };
        }
        let (boot_tx, boot_rx) = mpsc::channel();
        let (cmd_tx, cmd_rx) = mpsc::channel::<MockCommand>();
        let topics: Vec<String> = REGIONS
            .iter()
            .flat_map(|r| {
                [
                    format!("{topic_prefix}{r}"),
                    authsync::replication::config::user_key_topic(&format!("{topic_prefix}{r}")),
                    format!("{topic_prefix}lost.{r}"),
                    authsync::replication::config::user_key_topic(&format!(
                        "{topic_prefix}lost.{r}"
                    )),
                ]
            })
            .collect();
        // The mock cluster is not Send: it lives on its own thread until the test ends.
        std::thread::spawn(move || {
            let mc = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
            for t in &topics {
                mc.create_topic(t, 3, 1).expect("mock topic");
            }
            boot_tx
                .send(mc.bootstrap_servers())
                .expect("send bootstrap");
            while let Ok(cmd) = cmd_rx.recv() {
                let r = match cmd {
                    MockCommand::Down => mc.broker_down(1),
                    MockCommand::Up => mc.broker_up(1),
                };
                r.expect("mock broker command");
            }
        });
        Broker {
            bootstrap: boot_rx.recv().expect("mock bootstrap servers"),
            external: false,
            mock: Some(cmd_tx),
            kafka_dir: None,
            killed: false,
        }
    }

    /// Takes the broker away (kill -9 for Apache Kafka). False when it cannot be
    /// controlled.
    pub fn down(&mut self) -> bool {
        if let Some(dir) = &self.kafka_dir {
            kafka_script("kill", dir);
            self.killed = true;
            return true;
        }
        self.mock
            .as_ref()
            .is_some_and(|tx| tx.send(MockCommand::Down).is_ok())
    }

    /// Brings it back (Apache Kafka restarts on the same port and log dirs).
    pub fn up(&mut self) -> bool {
        if let Some(dir) = &self.kafka_dir {
            kafka_script("start", dir);
            self.killed = false;
            return true;
        }
        self.mock
            .as_ref()
            .is_some_and(|tx| tx.send(MockCommand::Up).is_ok())
    }

    pub fn controllable(&self) -> bool {
        self.mock.is_some() || self.kafka_dir.is_some()
    }

    /// Whether this is Apache Kafka, which compacts topics (the mock cluster does not).
    pub fn is_apache_kafka(&self) -> bool {
        self.kafka_dir.is_some()
    }
}

impl Drop for Broker {
    /// A test that failed with the shared broker down leaves it running for the next.
    fn drop(&mut self) {
        if let (true, Some(dir)) = (self.killed, &self.kafka_dir) {
            kafka_script("start", dir);
        }
    }
}

/// Three regions replicating through one broker.
pub struct Cluster {
    pub nodes: Vec<TestNode>,
    pub broker: Broker,
    pub prefix: String,
    /// The keyrings of the three regions.
    pub keys: tempfile::TempDir,
}

/// How a test cluster differs from the default.
#[derive(Default, Clone)]
pub struct ClusterOptions {
    /// Appended to every node's config (TOML sections other than kafka, replication, peers).
    pub extra: String,
    /// Nodes on fixed ports, each peer's `http` address set: anti-entropy runs.
    pub anti_entropy: bool,
    /// This region consumes topics nobody publishes to (a lost stream).
    pub cut_off: Option<&'static str>,
}

impl Cluster {
    pub fn start() -> Cluster {
        Self::start_with(ClusterOptions::default())
    }

    pub fn start_with(options: ClusterOptions) -> Cluster {
        let prefix = format!("t{}.", uuid::Uuid::new_v4().simple());
        let keys = tempfile::tempdir().expect("keys dir");
        init_keys(keys.path());
        let broker = Broker::start(&prefix);
        let ports: Vec<u16> = REGIONS
            .iter()
            .map(|_| if options.anti_entropy { free_port() } else { 0 })
            .collect();
        let nodes = REGIONS
            .iter()
            .enumerate()
            .map(|(i, region)| {
                let mut extra = format!(
                    "{}\n[kafka]\nbootstrap_servers = \"{}\"\ntopic_prefix = \"{prefix}\"\ncreate_topics = {}\n\n[replication]\nconsumer_group = \"{prefix}{region}\"\npublish_interval_ms = 50\n",
                    options.extra, broker.bootstrap, broker.external
                );
                for (j, peer) in REGIONS.iter().enumerate().filter(|(_, r)| *r != region) {
                    extra.push_str(&format!("\n[[peers]]\nregion = \"{peer}\"\n"));
                    if options.anti_entropy {
                        extra.push_str(&format!("http = \"http://127.0.0.1:{}\"\n", ports[j]));
                    }
                    if options.cut_off == Some(*region) {
                        extra.push_str(&format!("topic = \"{prefix}lost.{peer}\"\n"));
                    }
                }
                TestNode::start_at(
                    tempfile::tempdir().expect("node dir"),
                    region,
                    keys.path(),
                    &extra,
                    ports[i],
                )
            })
            .collect();
        Cluster {
            nodes,
            broker,
            prefix,
            keys,
        }
    }

    pub fn clients(&self) -> Vec<Client> {
        self.nodes.iter().map(|n| n.client()).collect()
    }

    /// One account created in each region and seen by all: every consumer has joined
    /// its group and received data. Returns the ids.
    pub async fn warm_up(&self) -> Vec<String> {
        let mut ids = Vec::new();
        for (i, c) in self.clients().iter().enumerate() {
            ids.push(
                c.create(&format!("warm-up-{i}@example.com"), "correct horse battery")
                    .await,
            );
        }
        self.converged(ids.len() as u64, Duration::from_secs(60))
            .await;
        ids
    }

    /// Waits (bounded) until every region has the same digest over `count` records,
    /// and the account key of every live one: every region reads every account.
    pub async fn converged(&self, count: u64, within: Duration) -> String {
        let deadline = std::time::Instant::now() + within;
        let mut last = Vec::new();
        while std::time::Instant::now() < deadline {
            last.clear();
            for c in self.clients() {
                last.push(c.digest().await);
            }
            if last.iter().all(|d| d.0 == count && d.1 == last[0].1) {
                let mut unkeyed = 0;
                for c in self.clients() {
                    unkeyed += c.unkeyed().await;
                }
                if unkeyed == 0 {
                    return last[0].1.clone();
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let logs: Vec<String> = self.nodes.iter().map(|n| n.log()).collect();
        panic!(
            "regions did not converge on {count} records: {last:?}\nlogs:\n{}",
            logs.join("\n----\n")
        );
    }
}

/// One Kafka message as a test reads it back.
pub struct KafkaMessage {
    pub partition: i32,
    pub key: Vec<u8>,
    /// `None` for a null value (a tombstone for compaction).
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<Vec<u8>>,
}

impl KafkaMessage {
    /// Key, payload and header values, separated by zero bytes: what a search for
    /// leaked bytes looks through.
    pub fn raw(&self) -> Vec<u8> {
        let mut bytes = self.key.clone();
        bytes.push(0);
        bytes.extend_from_slice(self.payload.as_deref().unwrap_or_default());
        for h in &self.headers {
            bytes.push(0);
            bytes.extend_from_slice(h);
        }
        bytes
    }
}

/// Every message of `topic`, read to the high watermarks taken first, in offset order
/// within each partition.
pub fn kafka_messages(bootstrap: &str, topic: &str) -> Vec<KafkaMessage> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .expect("consumer");
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .expect("metadata");
    let mut pending: Vec<(i32, i64)> = Vec::new();
    let mut assignment = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        let (low, high) = consumer
            .fetch_watermarks(topic, p.id(), timeout)
            .expect("watermarks");
        if high > low {
            pending.push((p.id(), high));
            assignment
                .add_partition_offset(topic, p.id(), Offset::Beginning)
                .unwrap();
        }
    }
    let mut out = Vec::new();
    if pending.is_empty() {
        return out;
    }
    consumer.assign(&assignment).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !pending.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "{topic} not read in 60 s"
        );
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                out.push(KafkaMessage {
                    partition: m.partition(),
                    key: m.key().unwrap_or_default().to_vec(),
                    payload: m.payload().map(<[u8]>::to_vec),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|x| x.value.unwrap_or_default().to_vec())
                                .collect()
                        })
                        .unwrap_or_default(),
                });
                if let Some(i) = pending.iter().position(|(p, _)| *p == m.partition()) {
                    if m.offset() + 1 >= pending[i].1 {
                        pending.swap_remove(i);
                    }
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                pending.retain(|(q, _)| *q != p)
            }
            Some(Err(e)) => panic!("consume {topic}: {e}"),
            None => {}
        }
    }
    out
}
