//! `--target compose`: the workload, faults and checks against the docker compose cluster
//! (`docker-compose.yml`), driven through the Docker CLI.
//!
//! - A node is killed with `docker kill -s KILL` and started again with `docker start`,
//!   paused with `docker pause` and resumed with `docker unpause`.
//! - A region's broker (each region has its own in the compose file) is killed and
//!   restarted the same way, and partitioned with `docker network disconnect`. It is
//!   reconnected under its service name as an alias, or the nodes could not resolve it
//!   again.
//! - The key-service and clock faults go through the nodes' `/v1/admin/faults`, which
//!   exists only when their configs say `[faults] enabled = true`.
//! - Latency, resets and peer partitions need the harness's own proxies, and the topic
//!   replay needs the brokers, which are not reachable from the host: those faults are
//!   for the local target only.
//!
//! The plaintext check copies each node's data directory and each broker's log directory
//! out with `docker cp` and scans the copies. The publisher does not compress, so a
//! message's bytes sit in the broker's segment files as they were sent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::process::Command;
use tokio::time::Instant;

use crate::cluster::REGIONS;
use crate::schedule::Fault;

/// Where the compose file's services keep what the plaintext check reads.
const NODE_DATA: &str = "/var/lib/authsync/data";
const BROKER_DATA: &str = "/var/lib/kafka/data";
/// Longest a Docker command may take (a stuck daemon must not hang the run).
const DOCKER_TIMEOUT: Duration = Duration::from_secs(60);
/// How many times a pause is tried when the freezer gives up (see [`Compose::pause`]).
const PAUSE_TRIES: usize = 10;

pub struct ComposeOptions {
    pub file: PathBuf,
    pub project: Option<String>,
    /// The compose command, as words (`docker compose`, `docker-compose`); found when
    /// `None`.
    pub compose: Option<Vec<String>>,
    /// The Docker CLI.
    pub docker: String,
    /// Each region's HTTP address as the host reaches it, in [`REGIONS`] order.
    pub urls: Vec<String>,
}

pub struct Compose {
    docker: String,
    urls: Vec<String>,
    /// Container ids by region.
    nodes: Vec<String>,
    brokers: Vec<String>,
    /// The networks a partitioned broker was taken out of, by region.
    detached: Vec<Vec<String>>,
    /// Whether the nodes expose `/v1/admin/faults`.
    pub fault_switches: bool,
}

fn node_service(region: &str) -> String {
    format!("authsync-{region}")
}

fn broker_service(region: &str) -> String {
    format!("kafka-{region}")
}

async fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args).kill_on_drop(true);
    let shown = format!("{program} {}", args.join(" "));
    let out = tokio::time::timeout(DOCKER_TIMEOUT, cmd.output())
        .await
        .with_context(|| format!("`{shown}` did not finish within {DOCKER_TIMEOUT:?}"))?
        .with_context(|| format!("run `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `docker compose` when the plugin answers, else `docker-compose`.
async fn find_compose(docker: &str) -> anyhow::Result<Vec<String>> {
    if run(docker, &["compose", "version"]).await.is_ok() {
        return Ok(vec![docker.to_string(), "compose".into()]);
    }
    if run("docker-compose", &["version"]).await.is_ok() {
        return Ok(vec!["docker-compose".into()]);
    }
    bail!("neither `{docker} compose` nor `docker-compose` answers: pass --compose-command")
}

/// The faults a compose cluster can have; `switches` is whether its nodes expose
/// `/v1/admin/faults`. `Err` says why not.
pub fn supports(fault: Fault, switches: bool) -> Result<(), &'static str> {
    match fault {
        Fault::Kill | Fault::Pause | Fault::BrokerRestart | Fault::BrokerPartition => Ok(()),
        Fault::KeysUnavailable | Fault::ClockSkew if switches => Ok(()),
        Fault::KeysUnavailable | Fault::ClockSkew => {
            Err("the nodes' configs do not enable [faults] (/v1/admin/faults answers 404)")
        }
        Fault::PeerPartition | Fault::Latency | Fault::Resets => {
            Err("it needs the harness's own link proxies (local target only)")
        }
        Fault::Replay => Err("the brokers are not reachable from the host (local target only)"),
    }
}

impl Compose {
    /// Finds the cluster's containers and checks that each URL answers `/readyz` as the
    /// region it is given for.
    pub async fn connect(
        opts: ComposeOptions,
        api: &crate::workload::Api,
    ) -> anyhow::Result<Compose> {
        if opts.urls.len() != REGIONS.len() {
            bail!(
                "--urls needs {} addresses, in the order {}",
                REGIONS.len(),
                REGIONS.join(",")
            );
        }
        let compose = match opts.compose {
            Some(words) if !words.is_empty() => words,
            _ => find_compose(&opts.docker).await?,
        };
        let file = opts.file.to_string_lossy().into_owned();
        let mut base: Vec<String> = compose[1..].to_vec();
        base.extend(["-f".to_string(), file]);
        if let Some(p) = &opts.project {
            base.extend(["-p".to_string(), p.clone()]);
        }
        let id_of = |service: String| {
            let mut args = base.clone();
            args.extend(["ps".into(), "-q".into(), service.clone()]);
            let program = compose[0].clone();
            async move {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let id = run(&program, &args).await?;
                match id.lines().next() {
                    Some(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
                    _ => bail!("service {service} has no container: is the cluster up (docker compose up -d)?"),
                }
            }
        };
        let mut nodes = Vec::new();
        let mut brokers = Vec::new();
        for region in REGIONS {
            nodes.push(id_of(node_service(region)).await?);
            brokers.push(id_of(broker_service(region)).await?);
        }
        for (i, url) in opts.urls.iter().enumerate() {
            let answered = wait_ready(api, url, Duration::from_secs(60)).await?;
            if answered != REGIONS[i] {
                bail!(
                    "{url} is region {answered}, not {}: give --urls in the order {}",
                    REGIONS[i],
                    REGIONS.join(",")
                );
            }
        }
        let (status, _) = api
            .send(
                reqwest::Method::GET,
                &format!("{}/v1/admin/faults", opts.urls[0]),
                None,
            )
            .await
            .map_err(anyhow::Error::msg)?;
        Ok(Compose {
            docker: opts.docker,
            urls: opts.urls,
            nodes,
            brokers,
            detached: vec![Vec::new(); REGIONS.len()],
            fault_switches: status == 200,
        })
    }

    pub fn url(&self, i: usize) -> String {
        self.urls[i].clone()
    }

    async fn docker(&self, args: &[&str]) -> anyhow::Result<String> {
        run(&self.docker, args).await
    }

    pub async fn kill(&self, i: usize) -> anyhow::Result<()> {
        self.docker(&["kill", "-s", "KILL", &self.nodes[i]]).await?;
        Ok(())
    }

    /// `docker start`, then waits until the node is ready again.
    pub async fn start(&self, i: usize, api: &crate::workload::Api) -> anyhow::Result<()> {
        self.docker(&["start", &self.nodes[i]]).await?;
        wait_ready(api, &self.urls[i], Duration::from_secs(120)).await?;
        Ok(())
    }

    /// `docker pause` / `docker unpause`. A pause that runc gives up on is tried again:
    /// its cgroup v1 freezer fails with "unable to freeze" when a task of the container
    /// stays in uninterruptible sleep (an fsync of the WAL, say) through its short retry
    /// loop, then thaws the container, so the node runs on and a later try is safe (1 in
    /// 20 pauses of a node under write load failed so on Debian's Docker 20.10).
    pub async fn pause(&self, i: usize, paused: bool) -> anyhow::Result<()> {
        let verb = if paused { "pause" } else { "unpause" };
        let mut tries = 0;
        loop {
            tries += 1;
            match self.docker(&[verb, &self.nodes[i]]).await {
                Ok(_) => return Ok(()),
                Err(e)
                    if paused
                        && tries < PAUSE_TRIES
                        && format!("{e}").contains("unable to freeze") =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub async fn kill_broker(&self, i: usize) -> anyhow::Result<()> {
        self.docker(&["kill", "-s", "KILL", &self.brokers[i]])
            .await?;
        Ok(())
    }

    pub async fn start_broker(&self, i: usize) -> anyhow::Result<()> {
        self.docker(&["start", &self.brokers[i]]).await?;
        Ok(())
    }

    /// Takes region `i`'s broker out of every network it is in.
    pub async fn detach_broker(&mut self, i: usize) -> anyhow::Result<()> {
        let json = self
            .docker(&[
                "inspect",
                "-f",
                "{{json .NetworkSettings.Networks}}",
                &self.brokers[i],
            ])
            .await?;
        let networks: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&json)
            .with_context(|| format!("read the networks of {}: {json}", self.brokers[i]))?;
        for network in networks.keys() {
            self.docker(&["network", "disconnect", network, &self.brokers[i]])
                .await?;
            self.detached[i].push(network.clone());
        }
        Ok(())
    }

    /// Puts region `i`'s broker back, under its service name.
    pub async fn attach_broker(&mut self, i: usize) -> anyhow::Result<()> {
        let alias = broker_service(REGIONS[i]);
        for network in std::mem::take(&mut self.detached[i]) {
            self.docker(&[
                "network",
                "connect",
                "--alias",
                &alias,
                &network,
                &self.brokers[i],
            ])
            .await?;
        }
        Ok(())
    }

    /// Copies every node's data directory and every broker's log directory under `into`
    /// (`<region>/data`, `<region>/kafka`) and returns the copies. Kafka's offset and
    /// time indexes are removed from the broker copies: see [`drop_kafka_indexes`].
    pub async fn copy_out(&self, into: &Path) -> anyhow::Result<Vec<PathBuf>> {
        let mut copies = Vec::new();
        for (i, region) in REGIONS.iter().enumerate() {
            let dir = into.join(region);
            std::fs::create_dir_all(&dir)?;
            for (container, path, name) in [
                (&self.nodes[i], NODE_DATA, "data"),
                (&self.brokers[i], BROKER_DATA, "kafka"),
            ] {
                let to = dir.join(name);
                let from = format!("{container}:{path}");
                self.docker(&["cp", &from, &to.to_string_lossy()]).await?;
                if path == BROKER_DATA {
                    drop_kafka_indexes(&to).with_context(|| format!("prune the copy of {from}"))?;
                }
                copies.push(to);
            }
        }
        Ok(copies)
    }

    /// Leaves the cluster running, as it was found: resumes paused nodes, restarts what
    /// is down and reattaches detached brokers.
    pub async fn restore(&mut self) {
        for i in 0..REGIONS.len() {
            let _ = self.attach_broker(i).await;
            let _ = self.pause(i, false).await;
            let _ = self.docker(&["start", &self.brokers[i]]).await;
            let _ = self.docker(&["start", &self.nodes[i]]).await;
        }
    }
}

/// Removes the offset and time indexes (`*.index`, `*.timeindex`) from a copy of a
/// broker's log directory, and returns how many it removed. They hold fixed-width
/// (offset, file position) and (timestamp, offset) entries, never a record's bytes, which
/// are in the `.log` segments that stay. Kafka preallocates each active one to 10 MB, a
/// sparse file in the broker's volume that `docker cp` writes out in full: with
/// `__consumer_offsets`' 50 partitions that is 1.1 GB of zeros per broker, and scanning
/// them took the plaintext check over six minutes of a nine-minute run.
fn drop_kafka_indexes(dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    let mut dirs = vec![dir.to_path_buf()];
    // Bounded by the copy itself: a broker's log dir is one level of partition dirs.
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() && (name.ends_with(".index") || name.ends_with(".timeindex")) {
                std::fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// Polls `url/readyz` until it answers 200 and returns the region it names.
async fn wait_ready(
    api: &crate::workload::Api,
    url: &str,
    within: Duration,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + within;
    loop {
        if let Ok((200, body)) = api
            .send(reqwest::Method::GET, &format!("{url}/readyz"), None)
            .await
        {
            return body["region"]
                .as_str()
                .map(str::to_string)
                .with_context(|| format!("{url}/readyz did not name a region: {body}"));
        }
        if Instant::now() > deadline {
            bail!("{url} not ready within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_copy_keeps_its_segments_and_loses_its_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let partition = dir.path().join("authsync.changes.eu-west-0");
        std::fs::create_dir_all(&partition).unwrap();
        for name in [
            "00000000000000000000.log",
            "00000000000000000000.index",
            "00000000000000000000.timeindex",
            "leader-epoch-checkpoint",
        ] {
            std::fs::write(partition.join(name), b"x").unwrap();
        }
        std::fs::write(dir.path().join("meta.properties"), b"x").unwrap();
        assert_eq!(drop_kafka_indexes(dir.path()).unwrap(), 2);
        let mut left: Vec<String> = std::fs::read_dir(&partition)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["00000000000000000000.log", "leader-epoch-checkpoint"]
        );
        assert!(dir.path().join("meta.properties").exists());
    }

    #[test]
    fn compose_has_the_faults_docker_can_make() {
        for f in [
            Fault::Kill,
            Fault::Pause,
            Fault::BrokerRestart,
            Fault::BrokerPartition,
        ] {
            assert!(supports(f, false).is_ok(), "{f:?}");
        }
        for f in [Fault::KeysUnavailable, Fault::ClockSkew] {
            assert!(supports(f, true).is_ok());
            assert!(supports(f, false).unwrap_err().contains("[faults]"));
        }
        for f in [
            Fault::PeerPartition,
            Fault::Latency,
            Fault::Resets,
            Fault::Replay,
        ] {
            assert!(supports(f, true).unwrap_err().contains("local target only"));
        }
    }
}
