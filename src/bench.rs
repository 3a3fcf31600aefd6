//! `authsync bench`: end-to-end load against a three-region cluster, each figure
//! beside the floor the machine itself sets, measured in the same run.
//!
//! The cluster is `authsync demo` started as a child process (three node processes,
//! the embedded broker, fsync on every write), or one given with `--urls`. Measured
//! over HTTP, as a caller sees it:
//! - creates (the password hash included) and profile updates (the write path without
//!   it): throughput and acknowledgement latency p50/p99/p999;
//! - replication lag per source→destination pair: the time from a write's
//!   acknowledgement until a reader in the destination region gets the record, found by
//!   polling the destination (not by trusting the node's own metric);
//! - logins: throughput, latency, and the share of a login spent in the password hash;
//! - resident memory and on-disk bytes per million users (started cluster only).
//!
//! Floors, in this process: a raw RocksDB put of the record's size with the same WAL
//! policy and concurrency; the envelope seal + open of the same size; one password
//! hash; a raw Kafka produce→consume round trip on the same broker with the same
//! producer settings (started cluster only).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::config::{PasswordAlgorithm, WalSync};
use crate::hlc::{Hlc, SystemClock};
use crate::password::Passwords;
use crate::store::{Store, StoreOptions};
use crate::users::Users;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// Nodes of an existing cluster, comma-separated (the first takes the writes).
    /// Without it, `authsync demo` is started for the run.
    #[arg(long, value_delimiter = ',')]
    pub urls: Option<Vec<String>>,
    #[arg(long, env = "AUTHSYNC_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    #[arg(long, default_value_t = 2000)]
    pub users: usize,
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Bytes of profile data per user (the record size).
    #[arg(long, default_value_t = 256)]
    pub profile_bytes: usize,
    #[arg(long, default_value_t = 100)]
    pub logins: usize,
    /// Writes whose arrival in every other region is timed.
    #[arg(long, default_value_t = 100)]
    pub lag_samples: usize,
    /// Produce→consume round trips timed for the Kafka floor.
    #[arg(long, default_value_t = 200)]
    pub kafka_round_trips: usize,
    /// The JSON report.
    #[arg(long, default_value = "bench.json")]
    pub out: PathBuf,
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(samples: &mut [Duration]) -> Latency {
        samples.sort_unstable();
        let at = |q: f64| {
            if samples.is_empty() {
                return 0.0;
            }
            let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[i].as_secs_f64() * 1000.0
        };
        Latency {
            count: samples.len(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: at(1.0),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub ops: usize,
    pub seconds: f64,
    pub ops_per_second: f64,
    pub latency: Latency,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Value,
    pub options: Value,
    pub creates: Throughput,
    pub updates: Throughput,
    pub logins: Throughput,
    /// "source→destination" → lag.
    pub replication_lag: BTreeMap<String, Latency>,
    pub floors: Floors,
    /// Per region: resident memory and data directory bytes after the run, and what the
    /// run's users added, scaled to a million users.
    pub footprint: BTreeMap<String, Value>,
}

#[derive(Debug, Serialize)]
pub struct Floors {
    /// Raw RocksDB puts of the record's size, fsync per put, at the same concurrency.
    pub rocksdb_put: Throughput,
    pub record_bytes: usize,
    /// Envelope seal + open of the same size, one core.
    pub envelope_seal_open_us: f64,
    /// One Argon2id hash with the node's parameters.
    pub password_hash_ms: f64,
    /// Produce (acks=all, idempotent) → consume on the cluster's broker.
    pub kafka_round_trip: Option<Latency>,
}

struct Cluster {
    urls: Vec<String>,
    api_key: String,
    bootstrap: Option<String>,
    data_dir: Option<PathBuf>,
    _child: Option<DemoChild>,
    _dir: Option<tempfile::TempDir>,
}

struct DemoChild(Child);

impl Drop for DemoChild {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_base_port() -> anyhow::Result<u16> {
    for _ in 0..50 {
        let base = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        if base < 60000
            && (1..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok())
        {
            return Ok(base);
        }
    }
    bail!("no three consecutive free ports")
}

fn start_demo() -> anyhow::Result<Cluster> {
    let dir = tempfile::Builder::new()
        .prefix("authsync-bench-")
        .tempdir()
        .context("temporary directory")?;
    let api_key = crate::demo::new_api_key()?;
    let exe = std::env::current_exe().context("find the authsync executable")?;
    let mut child = Command::new(exe)
        .args([
            "demo",
            "--port",
            &free_base_port()?.to_string(),
            "--api-key",
            &api_key,
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.path().join("demo.log"))?)
        .spawn()
        .context("start authsync demo")?;
    let stdout = child.stdout.take().context("demo stdout")?;
    let child = DemoChild(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Read to the end: a closed pipe would stop the demo.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut urls = Vec::new();
    let mut bootstrap = None;
    while urls.len() < 3 {
        let line = rx
            .recv_timeout(Duration::from_secs(90))
            .context("the demo did not print its three regions")?;
        if let Some(b) = line.split("embedded broker at ").nth(1) {
            bootstrap = Some(b.trim().to_string());
        }
        if let Some(u) = line.split_whitespace().find(|w| w.starts_with("http://")) {
            urls.push(u.to_string());
        }
    }
    Ok(Cluster {
        urls,
        api_key,
        bootstrap,
        data_dir: Some(dir.path().to_path_buf()),
        _child: Some(child),
        _dir: Some(dir),
    })
}

struct Http {
    client: reqwest::Client,
    key: String,
}

impl Http {
    async fn send(
        &self,
        method: reqwest::Method,
        url: String,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self.client.request(method, url).bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }
}

/// Runs `n` operations with `concurrency` in flight; `op(i)` returns whether it succeeded.
async fn drive<F, Fut>(n: usize, concurrency: usize, op: F) -> anyhow::Result<Throughput>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let op = Arc::new(op);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = gate.clone().acquire_owned().await?;
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = op(i).await;
            drop(permit);
            r.map(|()| t.elapsed())
        }));
    }
    let mut samples = Vec::with_capacity(n);
    for t in tasks {
        samples.push(t.await??);
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Throughput {
        ops: n,
        seconds,
        ops_per_second: n as f64 / seconds,
        latency: Latency::of(&mut samples),
    })
}

fn profile(bytes: usize, i: usize) -> Value {
    // Fields of at most 256 characters (the API's limit), filling `bytes`.
    let mut p = serde_json::Map::new();
    let mut left = bytes;
    let mut k = 0;
    while left > 0 {
        let n = left.min(200);
        p.insert(format!("f{k}"), json!(format!("{:0>width$}", i, width = n)));
        left -= n;
        k += 1;
    }
    Value::Object(p)
}

/// The whole run.
pub async fn run(opts: BenchOptions) -> anyhow::Result<Report> {
    if opts.users == 0 || opts.concurrency == 0 || !(1..=16_384).contains(&opts.profile_bytes) {
        bail!("--users and --concurrency must be at least 1, --profile-bytes 1 to 16384");
    }
    let cluster = match &opts.urls {
        Some(urls) => {
            if urls.len() < 2 {
                bail!("--urls needs at least two regions");
            }
            Cluster {
                urls: urls.clone(),
                api_key: opts
                    .api_key
                    .clone()
                    .context("--api-key is required with --urls")?,
                bootstrap: None,
                data_dir: None,
                _child: None,
                _dir: None,
            }
        }
        None => start_demo()?,
    };
    eprintln!("bench: cluster {:?}", cluster.urls);
    let http = Arc::new(Http {
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(opts.concurrency * 2)
            .timeout(Duration::from_secs(60))
            .build()?,
        key: cluster.api_key.clone(),
    });
    let urls = Arc::new(cluster.urls.clone());
    let run_tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();

    let before = footprint(&http, &urls, cluster.data_dir.as_deref()).await;
    // Creates in the first region, with lag sampled into every other region.
    let sample_every = (opts.users / opts.lag_samples.max(1)).max(1);
    let lags: Arc<parking_lot::Mutex<BTreeMap<String, Vec<Duration>>>> = Default::default();
    let ids: Arc<parking_lot::Mutex<Vec<Option<String>>>> =
        Arc::new(parking_lot::Mutex::new(vec![None; opts.users]));
    let pollers_handle: Arc<parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>> =
        Default::default();
    let creates = {
        let (http, urls, ids, lags, handles) = (
            http.clone(),
            urls.clone(),
            ids.clone(),
            lags.clone(),
            pollers_handle.clone(),
        );
        let (tag, bytes) = (run_tag.clone(), opts.profile_bytes);
        drive(opts.users, opts.concurrency, move |i| {
            let (http, urls, ids, lags, handles, tag) = (
                http.clone(),
                urls.clone(),
                ids.clone(),
                lags.clone(),
                handles.clone(),
                tag.clone(),
            );
            async move {
                let body = json!({"email": format!("bench-{tag}-{i}@example.com"),
                                  "password": "correct horse battery", "profile": profile(bytes, i)});
                let (status, resp) = http
                    .send(reqwest::Method::POST, format!("{}/v1/users", urls[0]), Some(body))
                    .await?;
                if status != 201 {
                    bail!("create answered {status}: {resp}");
                }
                let acked = Instant::now();
                let id = resp["id"].as_str().unwrap_or_default().to_string();
                ids.lock()[i] = Some(id.clone());
                if i % sample_every == 0 {
                    for dest in 1..urls.len() {
                        let (http, urls, lags, id) = (http.clone(), urls.clone(), lags.clone(), id.clone());
                        handles.lock().push(tokio::spawn(async move {
                            let deadline = acked + Duration::from_secs(60);
                            while Instant::now() < deadline {
                                let found = http
                                    .send(reqwest::Method::GET, format!("{}/v1/users/{id}", urls[dest]), None)
                                    .await
                                    .map(|(s, _)| s == 200)
                                    .unwrap_or(false);
                                if found {
                                    lags.lock()
                                        .entry(format!("0→{dest}"))
                                        .or_default()
                                        .push(acked.elapsed());
                                    return;
                                }
                                tokio::time::sleep(Duration::from_millis(2)).await;
                            }
                        }));
                    }
                }
                Ok(())
            }
        })
        .await?
    };
    let handles: Vec<_> = std::mem::take(&mut *pollers_handle.lock());
    for h in handles {
        let _ = h.await;
    }
    let ids: Arc<Vec<String>> = Arc::new(ids.lock().iter().flatten().cloned().collect());

    // Profile updates: the write path without the password hash.
    let updates = {
        let (http, urls, ids) = (http.clone(), urls.clone(), ids.clone());
        let bytes = opts.profile_bytes;
        drive(ids.len(), opts.concurrency, move |i| {
            let (http, urls, ids) = (http.clone(), urls.clone(), ids.clone());
            async move {
                let (status, resp) = http
                    .send(
                        reqwest::Method::PATCH,
                        format!("{}/v1/users/{}", urls[0], ids[i]),
                        Some(json!({"profile": profile(bytes, i + 1)})),
                    )
                    .await?;
                if status != 200 {
                    bail!("update answered {status}: {resp}");
                }
                Ok(())
            }
        })
        .await?
    };

    // Logins in the first region.
    let logins = {
        let (http, urls, tag) = (http.clone(), urls.clone(), run_tag.clone());
        let n = opts.logins.min(ids.len()).max(1);
        drive(n, opts.concurrency, move |i| {
            let (http, urls, tag) = (http.clone(), urls.clone(), tag.clone());
            async move {
                let (status, resp) = http
                    .send(
                        reqwest::Method::POST,
                        format!("{}/v1/login", urls[0]),
                        Some(json!({"login": format!("bench-{tag}-{i}@example.com"),
                                    "password": "correct horse battery"})),
                    )
                    .await?;
                if status != 200 {
                    bail!("login answered {status}: {resp}");
                }
                Ok(())
            }
        })
        .await?
    };

    let floors = floors(&opts, cluster.bootstrap.as_deref()).await?;
    // Let replication and compaction settle, then count what the users added.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = footprint(&http, &urls, cluster.data_dir.as_deref()).await;
    let footprint = after
        .iter()
        .map(|(region, (rss, disk))| {
            let (rss0, disk0) = before.get(region).copied().unwrap_or((None, None));
            let per_million = |now: Option<f64>, then: Option<f64>| {
                Some((now? - then.unwrap_or(0.0)) * 1e6 / ids.len().max(1) as f64)
            };
            (
                region.clone(),
                json!({"resident_bytes": rss, "disk_bytes": disk,
                       "resident_bytes_added_per_million_users": per_million(*rss, rss0),
                       "disk_bytes_added_per_million_users": per_million(*disk, disk0)}),
            )
        })
        .collect();
    let replication_lag = lags
        .lock()
        .iter_mut()
        .map(|(k, v)| (k.clone(), Latency::of(v)))
        .collect();
    let report = Report {
        machine: json!({
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "os": std::env::consts::OS,
        }),
        options: json!({"users": opts.users, "concurrency": opts.concurrency,
                        "profile_bytes": opts.profile_bytes, "logins": opts.logins,
                        "lag_samples": opts.lag_samples,
                        "kafka_round_trips": opts.kafka_round_trips, "cluster": *urls}),
        creates,
        updates,
        logins,
        replication_lag,
        floors,
        footprint,
    };
    std::fs::write(&opts.out, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("write {}", opts.out.display()))?;
    Ok(report)
}

/// The floors, measured here.
async fn floors(opts: &BenchOptions, bootstrap: Option<&str>) -> anyhow::Result<Floors> {
    let (record_bytes, seal_open_us, hash_ms) = {
        let bytes = opts.profile_bytes;
        tokio::task::spawn_blocking(move || crypto_floors(bytes)).await??
    };
    let rocksdb_put = {
        let (n, c) = (opts.users, opts.concurrency);
        tokio::task::spawn_blocking(move || rocksdb_floor(n, c, record_bytes)).await??
    };
    let kafka_round_trip = match bootstrap {
        Some(b) => Some(kafka_floor(b, opts.kafka_round_trips.max(1)).await?),
        None => None,
    };
    Ok(Floors {
        rocksdb_put,
        record_bytes,
        envelope_seal_open_us: seal_open_us,
        password_hash_ms: hash_ms,
        kafka_round_trip,
    })
}

/// (encoded record size, seal + open µs, password hash ms) for a user like the bench's.
fn crypto_floors(profile_bytes: usize) -> anyhow::Result<(usize, f64, f64)> {
    use prost::Message as _;
    let dir = tempfile::tempdir()?;
    let regions: Vec<String> = crate::demo::DEMO_REGIONS
        .iter()
        .map(|r| r.to_string())
        .collect();
    let keyring = crate::keys::init(&regions)?.remove(0);
    let pepper = *keyring.pepper();
    let store = Arc::new(Store::open(dir.path(), &StoreOptions::default())?);
    let passwords = Passwords::new(PasswordAlgorithm::Argon2id, &pepper)?;
    let hlc = Arc::new(Hlc::new(regions[0].clone(), 500, Box::new(SystemClock)));
    let users = Users::new(store.clone(), keyring, passwords, hlc, 8);
    let input = crate::validate::new_user(
        &json!({"email": "floor@example.com", "password": "correct horse battery",
                "profile": profile(profile_bytes, 0)}),
        8,
    )
    .map_err(|p| anyhow::anyhow!("bench user: {p:?}"))?;
    let (id, _) = users.create(input)?;
    let record = store.get(id.as_bytes())?.context("record just written")?;
    let record_bytes = record.encode_to_vec().len();
    let keyring = users.keyring();
    let info = crate::crypto::open(&record, &keyring)?;
    let rounds = 2000;
    let t = Instant::now();
    for _ in 0..rounds {
        let mut r = record.clone();
        crate::crypto::seal(&mut r, &info, &keyring, &regions)?;
        crate::crypto::open(&r, &keyring)?;
    }
    let seal_open_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
    let passwords = Passwords::new(PasswordAlgorithm::Argon2id, &pepper)?;
    let hashes = 10;
    let t = Instant::now();
    for _ in 0..hashes {
        passwords.hash("correct horse battery")?;
    }
    let hash_ms = t.elapsed().as_secs_f64() * 1000.0 / f64::from(hashes);
    Ok((record_bytes, seal_open_us, hash_ms))
}

/// Raw synced puts of `bytes`, `n` in all from `concurrency` threads.
fn rocksdb_floor(n: usize, concurrency: usize, bytes: usize) -> anyhow::Result<Throughput> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(Store::open(
        dir.path(),
        &StoreOptions {
            wal_sync: WalSync::Always,
            block_cache_bytes: 64 << 20,
        },
    )?);
    let value = vec![0x5a_u8; bytes];
    let started = Instant::now();
    let per = n.div_ceil(concurrency.max(1));
    let mut threads = Vec::new();
    for t in 0..concurrency.max(1) {
        let (store, value) = (store.clone(), value.clone());
        threads.push(std::thread::spawn(
            move || -> anyhow::Result<Vec<Duration>> {
                let mut samples = Vec::with_capacity(per);
                for i in 0..per {
                    let key = ((t * per + i) as u128).to_be_bytes();
                    let s = Instant::now();
                    store.raw_put(crate::store::CF_RECORDS, &key, &value)?;
                    samples.push(s.elapsed());
                }
                Ok(samples)
            },
        ));
    }
    let mut samples = Vec::new();
    for t in threads {
        samples.extend(
            t.join()
                .map_err(|_| anyhow::anyhow!("floor thread panicked"))??,
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Throughput {
        ops: samples.len(),
        seconds,
        ops_per_second: samples.len() as f64 / seconds,
        latency: Latency::of(&mut samples),
    })
}

/// Produce → consume round trips on `bootstrap`, one message at a time, with the
/// publisher's producer settings.
async fn kafka_floor(bootstrap: &str, n: usize) -> anyhow::Result<Latency> {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let topic = crate::demo::BENCH_TOPIC;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .create()?;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("authsync-bench-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("auto.offset.reset", "latest")
        // As the nodes' consumers fetch.
        .set(
            "fetch.wait.max.ms",
            crate::config::DEFAULT_FETCH_WAIT_MAX_MS.to_string(),
        )
        .set("enable.partition.eof", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    // Wait for the assignment: a first message must come back.
    let warm = Instant::now() + Duration::from_secs(30);
    loop {
        producer
            .send(
                FutureRecord::to(topic).key("warm").payload("warm"),
                Duration::from_secs(5),
            )
            .await
            .map_err(|(e, _)| e)?;
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            break;
        }
        if Instant::now() > warm {
            bail!("no message came back from {topic} on {bootstrap}");
        }
    }
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let payload = format!("round-trip-{i}");
        let t = Instant::now();
        producer
            .send(
                FutureRecord::to(topic).key("k").payload(&payload),
                Duration::from_secs(5),
            )
            .await
            .map_err(|(e, _)| e)?;
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), consumer.recv())
                .await
                .context("round trip timed out")??;
            if rdkafka::Message::payload(&m) == Some(payload.as_bytes()) {
                break;
            }
        }
        samples.push(t.elapsed());
    }
    Ok(Latency::of(&mut samples))
}

fn dir_bytes(path: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_bytes(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

/// Per region: (resident bytes, data directory bytes) when known.
async fn footprint(
    http: &Http,
    urls: &[String],
    data_dir: Option<&Path>,
) -> BTreeMap<String, (Option<f64>, Option<f64>)> {
    let mut out = BTreeMap::new();
    for (i, url) in urls.iter().enumerate() {
        let rss = match http.client.get(format!("{url}/metrics")).send().await {
            Ok(r) => r.text().await.ok().and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("process_resident_memory_bytes"))
                    .and_then(|l| l.rsplit(' ').next())
                    .and_then(|v| v.parse::<f64>().ok())
            }),
            Err(_) => None,
        };
        let region = crate::demo::DEMO_REGIONS
            .get(i)
            .copied()
            .unwrap_or("region");
        let disk = data_dir.map(|d| dir_bytes(&d.join(region)) as f64);
        out.insert(region.to_string(), (rss, disk));
    }
    out
}

/// The human table.
pub fn table(r: &Report) -> String {
    let mut s = String::new();
    let row = |s: &mut String, what: &str, t: &Throughput| {
        s.push_str(&format!(
            "{what:<28} {:>9.1} ops/s   p50 {:>8.2} ms  p99 {:>8.2} ms  p999 {:>8.2} ms\n",
            t.ops_per_second, t.latency.p50_ms, t.latency.p99_ms, t.latency.p999_ms
        ));
    };
    row(&mut s, "create (with password hash)", &r.creates);
    row(&mut s, "profile update", &r.updates);
    row(&mut s, "raw RocksDB put (floor)", &r.floors.rocksdb_put);
    s.push_str(&format!(
        "{:<28} {:>9.2}   (target >= 0.5)\n",
        "update / raw put",
        r.updates.ops_per_second / r.floors.rocksdb_put.ops_per_second
    ));
    row(&mut s, "login", &r.logins);
    s.push_str(&format!(
        "{:<28} {:>9.2} ms   login p50 / hash = {:.2} (target <= 1.05 at concurrency 1)\n",
        "password hash alone (floor)",
        r.floors.password_hash_ms,
        r.logins.latency.p50_ms / r.floors.password_hash_ms
    ));
    s.push_str(&format!(
        "{:<28} {:>9.1} µs   record {} bytes\n",
        "envelope seal+open (floor)", r.floors.envelope_seal_open_us, r.floors.record_bytes
    ));
    if let Some(k) = &r.floors.kafka_round_trip {
        s.push_str(&format!(
            "{:<28} p50 {:>8.2} ms  p99 {:>8.2} ms\n",
            "Kafka round trip (floor)", k.p50_ms, k.p99_ms
        ));
    }
    for (pair, l) in &r.replication_lag {
        let ratio = r
            .floors
            .kafka_round_trip
            .as_ref()
            .map(|k| {
                format!(
                    "  p99 / (2 × Kafka p99) = {:.2}",
                    l.p99_ms / (2.0 * k.p99_ms)
                )
            })
            .unwrap_or_default();
        s.push_str(&format!(
            "lag {pair:<24} p50 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.2} ms{ratio}\n",
            l.p50_ms, l.p99_ms, l.max_ms
        ));
    }
    for (region, f) in &r.footprint {
        s.push_str(&format!("footprint {region:<18} {f}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_sample_at_or_above_the_rank() {
        let mut v: Vec<Duration> = (1..=1000).map(Duration::from_millis).collect();
        let l = Latency::of(&mut v);
        assert_eq!(
            (l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms),
            (500.0, 990.0, 999.0, 1000.0)
        );
        assert_eq!(Latency::of(&mut []).count, 0);
    }

    #[test]
    fn profiles_fill_the_requested_size_in_valid_fields() {
        let p = profile(1000, 7);
        let total: usize = p
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_str().unwrap().len())
            .sum();
        assert_eq!(total, 1000);
        assert!(p
            .as_object()
            .unwrap()
            .values()
            .all(|v| v.as_str().unwrap().len() <= 200));
    }
}
