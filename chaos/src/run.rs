//! One chaos run: start the cluster, run the workload while the schedule breaks it,
//! heal, wait for convergence, check, report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;

use crate::check::{self, Verdict};
use crate::cluster::{BrokerKind, Cluster, ClusterOptions, REGIONS};
use crate::compose::{Compose, ComposeOptions};
use crate::schedule::{self, Episode, Fault};
use crate::target::Target;
use crate::workload::{self, Api, Op, Outcome, Workload};

pub struct RunOptions {
    pub duration: Duration,
    pub seed: u64,
    /// The faults to deal; every one the target can have when `None`.
    pub faults: Option<Vec<Fault>>,
    pub clients: usize,
    pub convergence_timeout: Duration,
    pub target: TargetOptions,
}

/// The cluster a run breaks.
pub enum TargetOptions {
    /// Started by the harness: three nodes in network namespaces, behind its proxies.
    Local {
        broker: BrokerKind,
        /// Where the cluster keeps its files; a temporary directory when `None`.
        dir: Option<PathBuf>,
        /// A binary whose `node --config FILE` runs a node.
        node_exe: PathBuf,
    },
    /// Already running under docker compose, reached with this API key.
    Compose {
        options: ComposeOptions,
        api_key: String,
    },
}

/// An episode as it went: how long a write took to reach every region afterwards.
#[derive(Debug, Serialize)]
pub struct Recovery {
    /// As planned: its `start` may have come later, if an earlier recovery was slow.
    #[serde(flatten)]
    pub episode: Episode,
    /// When it began, from the start of the workload.
    pub started_ms: u64,
    pub error: Option<String>,
    pub recovered_ms: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub seed: u64,
    pub duration_s: u64,
    pub faults: Vec<Fault>,
    /// Which cluster: local (the embedded broker or Apache Kafka) or docker compose.
    pub target: &'static str,
    /// Operations by kind, then by outcome.
    pub ops: BTreeMap<String, BTreeMap<&'static str, usize>>,
    pub acked: usize,
    pub episodes: Vec<Recovery>,
    /// Planned episodes left out because the schedule ran late and they would not have
    /// ended before the workload.
    pub skipped_episodes: usize,
    /// From the end of the workload (every fault healed) until every region's digest
    /// agreed.
    pub converged_ms: Option<u64>,
    pub verdict: Verdict,
    pub log: Vec<Op>,
}

/// Writes a marker account in `region` and waits until every region reads it.
async fn recovery_time(api: &Api, urls: &[String], region: usize, n: usize) -> Option<Duration> {
    let started = Instant::now();
    let body = json!({"email": format!("recovery-{n}{}", workload::EMAIL_MARKER),
                      "password": workload::PASSWORD});
    let id = loop {
        if let Ok((201, resp)) = api
            .send(
                reqwest::Method::POST,
                &format!("{}/v1/users", urls[region]),
                Some(body.clone()),
            )
            .await
        {
            break resp["id"].as_str()?.to_string();
        }
        if started.elapsed() > Duration::from_secs(60) {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for url in urls {
        loop {
            let read = api
                .send(reqwest::Method::GET, &format!("{url}/v1/users/{id}"), None)
                .await;
            if matches!(read, Ok((200, _))) {
                break;
            }
            if started.elapsed() > Duration::from_secs(60) {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Some(started.elapsed())
}

pub async fn run(opts: RunOptions) -> anyhow::Result<Report> {
    let temp = tempfile::Builder::new()
        .prefix("authsync-chaos-")
        .tempdir()?;
    let (mut target, api) = match opts.target {
        TargetOptions::Local {
            broker,
            dir,
            node_exe,
        } => {
            let root = dir.unwrap_or_else(|| temp.path().to_path_buf());
            std::fs::create_dir_all(&root)?;
            let api_key = format!("chaos-{:016x}{:016x}", opts.seed, rand::random::<u64>());
            let base_port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            eprintln!("chaos: data in {}", root.display());
            let cluster = Cluster::start(ClusterOptions {
                root,
                node_exe,
                broker,
                base_port,
                api_key: api_key.clone(),
            })
            .await
            .context("start the cluster")?;
            (Target::Local(cluster), Api::new(&api_key)?)
        }
        TargetOptions::Compose { options, api_key } => {
            let api = Api::new(&api_key)?;
            let compose = Compose::connect(options, &api)
                .await
                .context("find the compose cluster")?;
            (Target::Compose(compose), api)
        }
    };
    let faults = match &opts.faults {
        Some(chosen) => {
            for f in chosen {
                if let Some(why) = target.unsupported(*f) {
                    target.finish().await;
                    anyhow::bail!("fault {} is not possible here: {why}", f.name());
                }
            }
            chosen.clone()
        }
        None => Fault::ALL
            .into_iter()
            .filter(|f| match target.unsupported(*f) {
                Some(why) => {
                    eprintln!("chaos: leaving out {}: {why}", f.name());
                    false
                }
                None => true,
            })
            .collect(),
    };
    eprintln!(
        "chaos: seed {} for {:?} on {}, faults {:?}",
        opts.seed,
        opts.duration,
        target.name(),
        faults.iter().map(|f| f.name()).collect::<Vec<_>>(),
    );
    let urls: Vec<String> = (0..REGIONS.len()).map(|i| target.url(i)).collect();
    let hot = workload::create_hot_users(&api, &urls, 5).await?;
    // One hot user with a second factor: its seed and recovery codes join the markers.
    let factor_markers = workload::second_factor_markers(&api, &urls[0], &hot[0]).await?;
    let work = Workload::new(urls.clone(), api.clone(), hot);

    let plan = schedule::plan(opts.seed, opts.duration, &faults, REGIONS.len());
    let started = Instant::now();
    let until = started + opts.duration;
    let clients: Vec<_> = (0..opts.clients)
        .map(|c| tokio::spawn(workload::client(work.clone(), c, opts.seed, until)))
        .collect();
    let mut episodes = Vec::new();
    let mut skipped = 0;
    for (n, e) in plan.into_iter().enumerate() {
        tokio::time::sleep_until(started + e.start).await;
        // A slow recovery pushes the rest of the schedule back; an episode that would
        // no longer end while the clients write is left out (and counted), so that
        // every fault is healed before the checks begin.
        let at = started.elapsed();
        if at + e.hold > opts.duration {
            skipped += 1;
            continue;
        }
        eprintln!(
            "chaos: {:>6.1} s  {} on {}",
            at.as_secs_f64(),
            e.fault.name(),
            REGIONS[e.region]
        );
        let error = schedule::run_episode(&mut target, &api, &e)
            .await
            .err()
            .map(|e| format!("{e:#}"));
        let recovered = recovery_time(&api, &urls, e.region, n).await;
        episodes.push(Recovery {
            episode: e,
            started_ms: at.as_millis() as u64,
            error,
            recovered_ms: recovered.map(|d| d.as_millis() as u64),
        });
    }
    for c in clients {
        let _ = c.await;
    }
    let converged = check::converge(&api, &urls, opts.convergence_timeout).await;
    let log = work.take_log();
    eprintln!("chaos: {} operations; checking", log.len());
    let (lost, readable_after) = check::lost(&api, &urls, &log, opts.convergence_timeout).await;
    let mut verdict = Verdict {
        diverged: converged.is_none(),
        lost,
        readable_after_ms: readable_after.as_millis() as u64,
        duplicates: check::duplicates(&api, &urls, &log).await,
        ..Default::default()
    };
    let mut markers: Vec<&[u8]> = vec![
        workload::EMAIL_MARKER.as_bytes(),
        workload::NAME_MARKER.as_bytes(),
        workload::PHONE_MARKER.as_bytes(),
    ];
    markers.extend(factor_markers.iter().map(Vec::as_slice));
    let scan = target.scan_plaintext(&markers, temp.path()).await;
    let target_name = target.name();
    target.finish().await;
    // A scan that cannot finish is reported with everything else, not instead of it.
    match scan {
        Ok(scan) => {
            verdict.plaintext = scan.findings;
            verdict.kafka_messages = scan.kafka_messages;
            verdict.broker_logs = scan.broker_logs;
        }
        Err(e) => verdict.scan_error = Some(format!("{e:#}")),
    }

    let mut ops: BTreeMap<String, BTreeMap<&'static str, usize>> = BTreeMap::new();
    for op in &log {
        let outcome = match op.outcome {
            Outcome::Acked => "acked",
            Outcome::Refused(_) => "refused",
            Outcome::Unknown(_) => "unknown",
        };
        *ops.entry(format!("{:?}", op.kind))
            .or_default()
            .entry(outcome)
            .or_default() += 1;
    }
    Ok(Report {
        seed: opts.seed,
        duration_s: opts.duration.as_secs(),
        faults,
        target: target_name,
        acked: log.iter().filter(|o| o.outcome == Outcome::Acked).count(),
        ops,
        episodes,
        skipped_episodes: skipped,
        converged_ms: converged.map(|d| d.as_millis() as u64),
        verdict,
        log,
    })
}

/// The human table.
pub fn table(r: &Report) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "seed {}, {} s, {}\n\n",
        r.seed, r.duration_s, r.target
    ));
    s.push_str(&format!(
        "{:<18} {:>7} {:>7} {:>8} {:>8}\n",
        "operation", "total", "acked", "refused", "unknown"
    ));
    for (kind, by) in &r.ops {
        let get = |k| by.get(k).copied().unwrap_or(0);
        s.push_str(&format!(
            "{kind:<18} {:>7} {:>7} {:>8} {:>8}\n",
            get("acked") + get("refused") + get("unknown"),
            get("acked"),
            get("refused"),
            get("unknown")
        ));
    }
    s.push('\n');
    let mut by_fault: BTreeMap<&str, Vec<Option<u64>>> = BTreeMap::new();
    for e in &r.episodes {
        by_fault
            .entry(e.episode.fault.name())
            .or_default()
            .push(e.recovered_ms);
    }
    s.push_str(&format!(
        "{:<18} {:>9} {:>22}\n",
        "fault", "episodes", "recovery ms (max)"
    ));
    for (fault, times) in &by_fault {
        let max = times.iter().flatten().max();
        let failed = times.iter().filter(|t| t.is_none()).count();
        s.push_str(&format!(
            "{fault:<18} {:>9} {:>22}\n",
            times.len(),
            match (max, failed) {
                (_, f) if f > 0 => format!("{f} did not recover"),
                (Some(m), _) => m.to_string(),
                (None, _) => "-".into(),
            }
        ));
    }
    if r.skipped_episodes > 0 {
        s.push_str(&format!(
            "{} planned episodes left out: the schedule ran late and they would have outlasted the workload\n",
            r.skipped_episodes
        ));
    }
    let errors: Vec<_> = r.episodes.iter().filter_map(|e| e.error.as_ref()).collect();
    for e in &errors {
        s.push_str(&format!("fault error: {e}\n"));
    }
    let v = &r.verdict;
    s.push_str(&format!(
        "\nacked {}  lost {}  diverged {}  duplicates {}  plaintext {} (in data directories and {})\nconverged {} after the last fault; every record readable everywhere {} ms later\n",
        r.acked,
        v.lost.len(),
        u8::from(v.diverged),
        v.duplicates.len(),
        v.plaintext.len(),
        if v.broker_logs > 0 {
            format!("{} broker log directories", v.broker_logs)
        } else {
            format!("{} Kafka messages", v.kafka_messages)
        },
        r.converged_ms.map_or("never".into(), |m| format!("{m} ms")),
        v.readable_after_ms,
    ));
    for line in v.lost.iter().chain(&v.duplicates).take(20) {
        s.push_str(&format!("  {line}\n"));
    }
    if let Some(e) = &v.scan_error {
        s.push_str(&format!("  the plaintext scan did not finish: {e}\n"));
    }
    for f in v.plaintext.iter().take(20) {
        s.push_str(&format!("  plaintext: {f:?}\n"));
    }
    s
}

/// How many episodes failed to apply or did not recover.
pub fn fault_errors(r: &Report) -> usize {
    r.episodes
        .iter()
        .filter(|e| e.error.is_some() || e.recovered_ms.is_none())
        .count()
}
