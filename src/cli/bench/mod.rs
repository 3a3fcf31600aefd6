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
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

mod floors;

use floors::floors;

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
    /// Seconds the last region stays stopped while the first takes writes, before it
    /// restarts and its catch-up is timed (0 skips; started cluster only).
    #[arg(long, default_value_t = 10)]
    pub drain_seconds: u64,
    /// Start the cluster without anti-entropy, so a stopped region catches up from the
    /// stream alone (with it, a restarted region first pulls what changed from a peer).
    #[arg(long)]
    pub no_anti_entropy: bool,
    /// Users imported (legacy hashes, no hashing) to measure memory and disk per
    /// million users (0: measure over the run's own users instead).
    #[arg(long, default_value_t = 10_000)]
    pub footprint_users: usize,
    /// Run the started cluster on the Kafka-protocol broker at HOST:PORT instead of
    /// the embedded one.
    #[arg(long)]
    pub kafka: Option<String>,
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
    /// Logins at `--concurrency` in flight.
    pub logins: Throughput,
    /// Logins one at a time: compare with the password hash alone.
    pub logins_serial: Throughput,
    /// The share of the serial logins' time that the node spent hashing, from its
    /// `authsync_password_hash_seconds`.
    pub login_hash_share: f64,
    /// "source→destination" → lag of creates (while password hashes load the cores).
    pub replication_lag: BTreeMap<String, Latency>,
    /// The same for profile updates (no password hash anywhere).
    pub replication_lag_updates: BTreeMap<String, Latency>,
    /// Every source→destination pair, `--lag-samples` updates written in each region.
    pub replication_lag_pairs: BTreeMap<String, Latency>,
    /// Started cluster only.
    pub backlog_drain: Option<Drain>,
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

/// Where the load goes: a cluster this run started (it can stop and restart a region,
/// and reach the broker and data directories), or one given with `--urls`.
struct Cluster {
    urls: Vec<String>,
    api_key: String,
    local: Option<authsync::node::local_cluster::LocalCluster>,
}

impl Cluster {
    fn bootstrap(&self) -> Option<&str> {
        self.local.as_ref().map(|l| l.bootstrap.as_str())
    }

    fn data_dir(&self) -> Option<&Path> {
        self.local.as_ref().map(|l| l.root.as_path())
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

/// The demo's three regions, started from this process (and on its thread: see
/// [`authsync::node::local_cluster::LocalCluster`]).
fn start_local(kafka: Option<String>, anti_entropy: bool) -> anyhow::Result<Cluster> {
    let local = authsync::node::local_cluster::LocalCluster::start(
        &authsync::node::local_cluster::DemoOptions {
            data_dir: None,
            api_key: None,
            host: std::net::IpAddr::from([127, 0, 0, 1]),
            base_port: free_base_port()?,
            kafka,
            faults: false,
            anti_entropy,
        },
    )?;
    Ok(Cluster {
        urls: local.urls(),
        api_key: local.api_key.clone(),
        local: Some(local),
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

    /// [`Http::send`] that must answer `want`: the body, or an error naming `what`.
    async fn expect(
        &self,
        what: &str,
        want: u16,
        method: reqwest::Method,
        url: String,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let (status, resp) = self.send(method, url, body).await?;
        if status != want {
            bail!("{what} answered {status}: {resp}");
        }
        Ok(resp)
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

pub(super) fn profile(bytes: usize, i: usize) -> Value {
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

/// Lag samples by "source→destination".
type Lags = Arc<parking_lot::Mutex<BTreeMap<String, Vec<Duration>>>>;

/// Times a write's arrival in region `dest`: polls until the record reads there (at
/// `version`, when given), and records the time since `acked`.
fn time_arrival(
    http: Arc<Http>,
    url: String,
    id: String,
    version: Option<Value>,
    acked: Instant,
    pair: String,
    lags: Lags,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let deadline = acked + Duration::from_secs(60);
        while Instant::now() < deadline {
            let arrived = match http
                .send(reqwest::Method::GET, format!("{url}/v1/users/{id}"), None)
                .await
            {
                Ok((200, body)) => version.as_ref().is_none_or(|v| &body["version"] == v),
                _ => false,
            };
            if arrived {
                lags.lock().entry(pair).or_default().push(acked.elapsed());
                return;
            }
            // Every 5 ms at first, then every 5% of the time waited so far: the
            // pollers must not load the cores the cluster runs on when lag grows.
            let waited = acked.elapsed() / 20;
            tokio::time::sleep(waited.clamp(POLL_FIRST, POLL_MOST)).await;
        }
    })
}

const POLL_FIRST: Duration = Duration::from_millis(5);
const POLL_MOST: Duration = Duration::from_millis(100);

const PASSWORD: &str = "correct horse battery";

fn login_body(tag: &str, i: usize) -> Value {
    json!({"login": format!("bench-{tag}-{i}@example.com"), "password": PASSWORD})
}

/// `n` logins with `concurrency` in flight, in the first region.
async fn logins(
    http: &Arc<Http>,
    urls: &Arc<Vec<String>>,
    tag: &str,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Throughput> {
    let (http, urls, tag) = (http.clone(), urls.clone(), tag.to_string());
    drive(n, concurrency, move |i| {
        let (http, urls, body) = (http.clone(), urls.clone(), login_body(&tag, i));
        async move {
            http.expect(
                "login",
                200,
                reqwest::Method::POST,
                format!("{}/v1/login", urls[0]),
                Some(body),
            )
            .await?;
            Ok(())
        }
    })
    .await
}

/// Profile updates of `ids` in region `source`, with every `sample_every`-th update's
/// arrival timed into every other region.
#[allow(clippy::too_many_arguments)]
async fn profile_updates(
    http: &Arc<Http>,
    urls: &Arc<Vec<String>>,
    ids: &Arc<Vec<String>>,
    source: usize,
    opts: &BenchOptions,
    sample_every: usize,
    lags: &Lags,
    pollers: &Arc<parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
) -> anyhow::Result<Throughput> {
    let (http, urls, ids, lags, pollers) = (
        http.clone(),
        urls.clone(),
        ids.clone(),
        lags.clone(),
        pollers.clone(),
    );
    let bytes = opts.profile_bytes;
    drive(ids.len(), opts.concurrency, move |i| {
        let (http, urls, ids, lags, pollers) = (
            http.clone(),
            urls.clone(),
            ids.clone(),
            lags.clone(),
            pollers.clone(),
        );
        async move {
            let resp = http
                .expect(
                    "update",
                    200,
                    reqwest::Method::PATCH,
                    format!("{}/v1/users/{}", urls[source], ids[i]),
                    Some(json!({"profile": profile(bytes, i + 1 + source)})),
                )
                .await?;
            let acked = Instant::now();
            if i % sample_every == 0 {
                for dest in (0..urls.len()).filter(|d| *d != source) {
                    pollers.lock().push(time_arrival(
                        http.clone(),
                        urls[dest].clone(),
                        ids[i].clone(),
                        Some(resp["version"].clone()),
                        acked,
                        format!("{source}→{dest}"),
                        lags.clone(),
                    ));
                }
            }
            Ok(())
        }
    })
    .await
}

async fn join_pollers(pollers: &parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>) {
    let handles: Vec<_> = std::mem::take(&mut *pollers.lock());
    for h in handles {
        let _ = h.await;
    }
}

fn drain_lags(lags: &Lags) -> BTreeMap<String, Latency> {
    std::mem::take(&mut *lags.lock())
        .into_iter()
        .map(|(k, mut v)| (k, Latency::of(&mut v)))
        .collect()
}

/// Backlog drain: the last region stops, the first takes profile updates for
/// `--drain-seconds`, the last restarts; timed until its digest matches the first's.
#[derive(Debug, Clone, Serialize)]
pub struct Drain {
    /// The region that was stopped.
    pub region: String,
    pub stopped_seconds: f64,
    /// Writes acknowledged while it was down: the backlog.
    pub backlog_events: usize,
    /// From the restart command until the node listened again.
    pub restart_ms: f64,
    /// From listening until its records matched the writer's (digest of every record).
    pub catch_up_ms: f64,
    /// `backlog_events` over the time from the restart command until caught up
    /// (anti-entropy starts before the node listens, so it can finish first).
    pub events_per_second: f64,
    /// How the region caught up, from its metrics: the writer's events by outcome
    /// (`applied`, `stale` when a newer copy was already there, ...), and records
    /// pulled by anti-entropy, which runs first thing after a start.
    pub stream_events: BTreeMap<String, f64>,
    pub anti_entropy_repaired: f64,
}

/// Sums of a node's Prometheus series named `name` whose labels include every one
/// of `with`, grouped by the value of label `by` (or all under "").
async fn metric_sums(
    http: &Http,
    url: &str,
    name: &str,
    with: &[(&str, &str)],
    by: &str,
) -> anyhow::Result<BTreeMap<String, f64>> {
    let text = http
        .client
        .get(format!("{url}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let mut sums = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (labels, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once("} ") {
                Some((l, v)) => (l, v),
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(v) => ("", v),
                None => continue,
            },
        };
        let label = |k: &str| {
            labels.split(',').find_map(|kv| {
                let (lk, lv) = kv.split_once('=')?;
                (lk == k).then(|| lv.trim_matches('"').to_string())
            })
        };
        if with.iter().any(|(k, v)| label(k).as_deref() != Some(*v)) {
            continue;
        }
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        *sums.entry(label(by).unwrap_or_default()).or_insert(0.0) += value;
    }
    Ok(sums)
}

async fn digest(http: &Http, url: &str) -> anyhow::Result<Value> {
    let body = http
        .expect(
            "digest",
            200,
            reqwest::Method::GET,
            format!("{url}/v1/admin/digest"),
            None,
        )
        .await?;
    Ok(body["digest"].clone())
}

async fn backlog_drain(
    cluster: &mut Cluster,
    http: &Arc<Http>,
    ids: &Arc<Vec<String>>,
    opts: &BenchOptions,
) -> anyhow::Result<Option<Drain>> {
    let Some(local) = cluster.local.as_mut() else {
        return Ok(None);
    };
    if opts.drain_seconds == 0 || ids.is_empty() {
        return Ok(None);
    }
    let urls = cluster.urls.clone();
    let dest = urls.len() - 1;
    local.stop(dest, Duration::from_secs(15));
    let stopped = Instant::now();
    let until = stopped + Duration::from_secs(opts.drain_seconds);
    let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..opts.concurrency {
        let (http, url, ids, written) =
            (http.clone(), urls[0].clone(), ids.clone(), written.clone());
        let (bytes, step) = (opts.profile_bytes, opts.concurrency);
        writers.push(tokio::spawn(async move {
            let mut i = w;
            while Instant::now() < until {
                let id = &ids[i % ids.len()];
                http.expect(
                    "update",
                    200,
                    reqwest::Method::PATCH,
                    format!("{url}/v1/users/{id}"),
                    Some(json!({"profile": profile(bytes, i + 7)})),
                )
                .await?;
                written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                i += step;
            }
            anyhow::Ok(())
        }));
    }
    for w in writers {
        w.await??;
    }
    let stopped_seconds = stopped.elapsed().as_secs_f64();
    let want = digest(http, &urls[0]).await?;
    let restarting = Instant::now();
    local.restart(dest)?;
    let restart_ms = restarting.elapsed().as_secs_f64() * 1000.0;
    let listening = Instant::now();
    let deadline = listening + Duration::from_secs(300);
    loop {
        if digest(http, &urls[dest]).await.ok().as_ref() == Some(&want) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not catch up within 300 s",
                authsync::node::local_cluster::DEMO_REGIONS[dest]
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let catch_up = listening.elapsed().as_secs_f64();
    let backlog_events = written.load(std::sync::atomic::Ordering::Relaxed);
    let source = authsync::node::local_cluster::DEMO_REGIONS[0];
    let stream_events = metric_sums(
        http,
        &urls[dest],
        authsync::common::metrics::REPLICATION_EVENTS_TOTAL,
        &[("source", source)],
        "outcome",
    )
    .await?;
    let anti_entropy_repaired = metric_sums(
        http,
        &urls[dest],
        authsync::common::metrics::ANTI_ENTROPY_REPAIRED_TOTAL,
        &[],
        "",
    )
    .await?
    .values()
    .fold(0.0, |a, b| a + b);
    Ok(Some(Drain {
        region: authsync::node::local_cluster::DEMO_REGIONS[dest].to_string(),
        stopped_seconds,
        backlog_events,
        restart_ms,
        catch_up_ms: catch_up * 1000.0,
        events_per_second: backlog_events as f64 / (restart_ms / 1000.0 + catch_up),
        stream_events,
        anti_entropy_repaired,
    }))
}

/// Waits until a write in the first region reads in every other one: a node that has
/// just started is still joining its consumer group, and events written before that
/// would time the join instead of replication.
async fn warm_up(http: &Arc<Http>, urls: &Arc<Vec<String>>, tag: &str) -> anyhow::Result<()> {
    let body = json!({"email": format!("bench-{tag}-warm-up@example.com"), "password": PASSWORD});
    let resp = http
        .expect(
            "warm-up create",
            201,
            reqwest::Method::POST,
            format!("{}/v1/users", urls[0]),
            Some(body),
        )
        .await?;
    let id = resp["id"].as_str().unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(120);
    for url in &urls[1..] {
        loop {
            let (status, _) = http
                .send(reqwest::Method::GET, format!("{url}/v1/users/{id}"), None)
                .await?;
            if status == 200 {
                break;
            }
            if Instant::now() > deadline {
                bail!("a write in {} did not reach {url} within 120 s", urls[0]);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Imports `--footprint-users` users into the first region, in requests that fit the
/// node's body limit. Imports carry a legacy hash, so no password is hashed.
async fn import_users(
    http: &Arc<Http>,
    urls: &Arc<Vec<String>>,
    tag: &str,
    opts: &BenchOptions,
) -> anyhow::Result<()> {
    let per_request = (60_000 / (opts.profile_bytes + 300)).clamp(1, 1000);
    let requests = opts.footprint_users.div_ceil(per_request);
    let (http, urls, tag, users, bytes) = (
        http.clone(),
        urls.clone(),
        tag.to_string(),
        opts.footprint_users,
        opts.profile_bytes,
    );
    drive(requests, opts.concurrency, move |r| {
        let (http, urls) = (http.clone(), urls.clone());
        let items: Vec<Value> = (r * per_request..((r + 1) * per_request).min(users))
            .map(|i| {
                json!({"email": format!("bench-{tag}-import-{i}@example.com"),
                       "profile": profile(bytes, i),
                       "legacy_hash": {"algorithm": "sha256", "hash": hex::encode(ring::digest::digest(&ring::digest::SHA256, &i.to_le_bytes()))},
                       "source": "bench"})
            })
            .collect();
        async move {
            http
                .expect("import", 200, reqwest::Method::POST,
                    format!("{}/v1/users/import", urls[0]),
                    Some(Value::Array(items)))
                .await?;
            Ok(())
        }
    })
    .await?;
    Ok(())
}

/// Waits until every region holds the same records (the digest of all of them).
async fn converged(http: &Http, urls: &[String]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let want = digest(http, &urls[0]).await?;
        let mut same = true;
        for url in &urls[1..] {
            same &= digest(http, url).await.ok().as_ref() == Some(&want);
        }
        if same {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the regions did not converge within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The whole run.
pub async fn run(opts: BenchOptions) -> anyhow::Result<Report> {
    if !(1..=10_000_000).contains(&opts.users)
        || !(1..=1024).contains(&opts.concurrency)
        || !(1..=16_384).contains(&opts.profile_bytes)
    {
        bail!("--users must be 1 to 10000000, --concurrency 1 to 1024, --profile-bytes 1 to 16384");
    }
    if opts.drain_seconds > 3600 || opts.footprint_users > 10_000_000 {
        bail!("--drain-seconds must be at most 3600, --footprint-users at most 10000000");
    }
    let mut cluster = match &opts.urls {
        Some(urls) => {
            if urls.len() < 2 {
                bail!("--urls needs at least two regions");
            }
            if opts.kafka.is_some() {
                bail!("--kafka is for the cluster the bench starts; not with --urls");
            }
            Cluster {
                urls: urls.clone(),
                api_key: opts
                    .api_key
                    .clone()
                    .context("--api-key is required with --urls")?,
                local: None,
            }
        }
        None => start_local(opts.kafka.clone(), !opts.no_anti_entropy)?,
    };
    eprintln!("bench: cluster {:?}", cluster.urls);
    if let (Some(bootstrap), Some(_)) = (cluster.bootstrap(), &opts.kafka) {
        // The embedded broker has it from the demo; a real one may not. Made before
        // the load: a busy broker can be slow to answer admin requests.
        let topic = authsync::node::local_cluster::BENCH_TOPIC;
        authsync::replication::topics::create_topic(
            bootstrap,
            &Default::default(),
            topic,
            1,
            1,
            &[],
        )
        .await?;
    }
    let http = Arc::new(Http {
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(opts.concurrency * 2)
            .timeout(Duration::from_secs(60))
            .build()?,
        key: cluster.api_key.clone(),
    });
    let urls = Arc::new(cluster.urls.clone());
    let run_tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();

    warm_up(&http, &urls, &run_tag).await?;
    let before = footprint(&http, &urls, cluster.data_dir()).await;
    // Creates in the first region, with lag sampled into every other region.
    let sample_every = (opts.users / opts.lag_samples.max(1)).max(1);
    let lags: Lags = Default::default();
    let ids: Arc<parking_lot::Mutex<Vec<Option<String>>>> =
        Arc::new(parking_lot::Mutex::new(vec![None; opts.users]));
    let pollers: Arc<parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Default::default();
    eprintln!("bench: {} creates", opts.users);
    let creates = {
        let (http, urls, ids, lags, pollers) = (
            http.clone(),
            urls.clone(),
            ids.clone(),
            lags.clone(),
            pollers.clone(),
        );
        let (tag, bytes) = (run_tag.clone(), opts.profile_bytes);
        drive(opts.users, opts.concurrency, move |i| {
            let (http, urls, ids, lags, pollers, tag) = (
                http.clone(),
                urls.clone(),
                ids.clone(),
                lags.clone(),
                pollers.clone(),
                tag.clone(),
            );
            async move {
                let body = json!({"email": format!("bench-{tag}-{i}@example.com"),
                                  "password": PASSWORD, "profile": profile(bytes, i)});
                let resp = http
                    .expect(
                        "create",
                        201,
                        reqwest::Method::POST,
                        format!("{}/v1/users", urls[0]),
                        Some(body),
                    )
                    .await?;
                let acked = Instant::now();
                let id = resp["id"].as_str().unwrap_or_default().to_string();
                ids.lock()[i] = Some(id.clone());
                if i % sample_every == 0 {
                    for dest in 1..urls.len() {
                        pollers.lock().push(time_arrival(
                            http.clone(),
                            urls[dest].clone(),
                            id.clone(),
                            None,
                            acked,
                            format!("0→{dest}"),
                            lags.clone(),
                        ));
                    }
                }
                Ok(())
            }
        })
        .await?
    };
    join_pollers(&pollers).await;
    let replication_lag = drain_lags(&lags);
    let ids: Arc<Vec<String>> = Arc::new(ids.lock().iter().flatten().cloned().collect());

    eprintln!("bench: {} profile updates", ids.len());
    let updates =
        profile_updates(&http, &urls, &ids, 0, &opts, sample_every, &lags, &pollers).await?;
    join_pollers(&pollers).await;
    let replication_lag_updates = drain_lags(&lags);

    // Every pair: `--lag-samples` updates from each region in turn, every one timed.
    eprintln!("bench: lag between every pair of regions");
    let sampled = Arc::new(ids[..opts.lag_samples.clamp(1, ids.len())].to_vec());
    for source in 0..urls.len() {
        profile_updates(&http, &urls, &sampled, source, &opts, 1, &lags, &pollers).await?;
        join_pollers(&pollers).await;
    }
    let replication_lag_pairs = drain_lags(&lags);

    eprintln!("bench: logins");
    let n = opts.logins.min(ids.len()).max(1);
    let logins_concurrent = logins(&http, &urls, &run_tag, n, opts.concurrency).await?;
    // The node's own account of its hashing, around the serial logins.
    let hashed = |sums: BTreeMap<String, f64>| sums.values().fold(0.0, |a, b| a + b);
    let hash_sum = authsync::common::metrics::PASSWORD_HASH_SECONDS.to_string() + "_sum";
    let hashing_before = hashed(metric_sums(&http, &urls[0], &hash_sum, &[], "").await?);
    let logins_serial = logins(&http, &urls, &run_tag, n.min(SERIAL_LOGINS), 1).await?;
    let hashing = hashed(metric_sums(&http, &urls[0], &hash_sum, &[], "").await?) - hashing_before;
    let login_hash_share = hashing / logins_serial.seconds;

    eprintln!("bench: backlog drain");
    let drain = backlog_drain(&mut cluster, &http, &ids, &opts).await?;

    eprintln!("bench: footprint");
    let (before, footprint_users) = if opts.footprint_users > 0 {
        let before = footprint(&http, &urls, cluster.data_dir()).await;
        import_users(&http, &urls, &run_tag, &opts).await?;
        (before, opts.footprint_users)
    } else {
        (before, ids.len())
    };
    converged(&http, &urls).await?;

    eprintln!("bench: floors");
    let floors = floors(&opts, cluster.bootstrap()).await?;
    // Let compaction settle, then count what the users added.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = footprint(&http, &urls, cluster.data_dir()).await;
    let footprint = after
        .iter()
        .map(|(region, (rss, disk))| {
            let (rss0, disk0) = before.get(region).copied().unwrap_or((None, None));
            let per_million = |now: Option<f64>, then: Option<f64>| {
                Some((now? - then.unwrap_or(0.0)) * 1e6 / footprint_users.max(1) as f64)
            };
            (
                region.clone(),
                json!({"resident_bytes": rss, "disk_bytes": disk, "users": footprint_users,
                       "resident_bytes_added_per_million_users": per_million(*rss, rss0),
                       "disk_bytes_added_per_million_users": per_million(*disk, disk0)}),
            )
        })
        .collect();
    let report = Report {
        machine: json!({
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "os": std::env::consts::OS,
        }),
        options: json!({"users": opts.users, "concurrency": opts.concurrency,
        "profile_bytes": opts.profile_bytes, "logins": opts.logins,
        "lag_samples": opts.lag_samples, "drain_seconds": opts.drain_seconds,
        "footprint_users": opts.footprint_users,
        "anti_entropy": !opts.no_anti_entropy,
        "kafka_round_trips": opts.kafka_round_trips, "cluster": *urls,
        "broker": match (&cluster.local, &opts.kafka) {
            (None, _) => Value::Null,
            (Some(_), Some(k)) => json!(k),
            (Some(_), None) => json!("embedded"),
        }}),
        creates,
        updates,
        logins: logins_concurrent,
        logins_serial,
        login_hash_share,
        replication_lag,
        replication_lag_updates,
        replication_lag_pairs,
        backlog_drain: drain,
        floors,
        footprint,
    };
    std::fs::write(&opts.out, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("write {}", opts.out.display()))?;
    if let Some(local) = cluster.local.take() {
        local.shutdown();
    }
    Ok(report)
}

/// Logins timed one at a time: the latency a single caller sees beside the hash alone.
const SERIAL_LOGINS: usize = 20;

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
        let region = authsync::node::local_cluster::DEMO_REGIONS
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
    if let Some(urls) = r.options["cluster"].as_array() {
        for (i, url) in urls.iter().enumerate() {
            s.push_str(&format!(
                "region {i}: {}\n",
                url.as_str().unwrap_or_default()
            ));
        }
    }
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
    row(&mut s, "login, one at a time", &r.logins_serial);
    s.push_str(&format!(
        "{:<28} {:>9.1} %    of a serial login's time, as the node measured its hashing\n",
        "  spent in the password hash",
        r.login_hash_share * 100.0
    ));
    s.push_str(&format!(
        "{:<28} {:>9.2} ms   serial login p50 / hash = {:.2} (target <= 1.05)\n",
        "password hash alone (floor)",
        r.floors.password_hash_ms,
        r.logins_serial.latency.p50_ms / r.floors.password_hash_ms
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
    for (during, lags) in [
        ("creates", &r.replication_lag),
        ("updates", &r.replication_lag_updates),
        ("each way", &r.replication_lag_pairs),
    ] {
        for (pair, l) in lags {
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
                "lag {pair} ({during}){:<pad$} p50 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.2} ms{ratio}\n",
                "",
                l.p50_ms,
                l.p99_ms,
                l.max_ms,
                pad = 24usize.saturating_sub(pair.chars().count() + during.len() + 3),
            ));
        }
    }
    if let Some(d) = &r.backlog_drain {
        s.push_str(&format!(
            "backlog drain {:<14} {:>9.1} events/s   {} events after {:.1} s down; restart {:.0} ms, caught up {:.0} ms later\n",
            d.region, d.events_per_second, d.backlog_events, d.stopped_seconds, d.restart_ms, d.catch_up_ms
        ));
        s.push_str(&format!(
            "{:<28} stream events {:?}, records pulled by anti-entropy {}\n",
            "", d.stream_events, d.anti_entropy_repaired
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
