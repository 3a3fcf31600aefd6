//! What a run breaks: the harness's own cluster ([`Cluster`]) or a docker compose one
//! ([`Compose`]). The workload, the schedule and the checks are the same for both; how a
//! fault is made, and where the plaintext check looks, differ.

use std::path::Path;

use anyhow::bail;

use crate::cluster::{Cluster, REGIONS};
use crate::compose::Compose;
use crate::plaintext::Finding;
use crate::schedule::Fault;
use crate::workload::Api;

pub enum Target {
    Local(Cluster),
    Compose(Compose),
}

/// What the plaintext check read.
#[derive(Debug, Default)]
pub struct Scan {
    pub findings: Vec<Finding>,
    /// Kafka messages read through the protocol (local target).
    pub kafka_messages: usize,
    /// Broker log directories copied out and read as files (compose target).
    pub broker_logs: usize,
}

impl Target {
    pub fn name(&self) -> &'static str {
        match self {
            Target::Local(c) if c.broker_restartable() => "local, Apache Kafka",
            Target::Local(_) => "local, embedded broker",
            Target::Compose(_) => "docker compose",
        }
    }

    /// The harness's URL of region `i`.
    pub fn url(&self, i: usize) -> String {
        match self {
            Target::Local(c) => c.url(i),
            Target::Compose(c) => c.url(i),
        }
    }

    /// Why this target cannot have `fault`, if it cannot.
    pub fn unsupported(&self, fault: Fault) -> Option<&'static str> {
        match self {
            Target::Local(c) if fault == Fault::BrokerRestart && !c.broker_restartable() => {
                Some("the embedded broker lives in the harness's process (use --broker kafka)")
            }
            Target::Local(_) => None,
            Target::Compose(c) => crate::compose::supports(fault, c.fault_switches).err(),
        }
    }

    /// The local cluster, for the faults only it can have.
    pub fn local(&mut self, fault: Fault) -> anyhow::Result<&mut Cluster> {
        match self {
            Target::Local(c) => Ok(c),
            Target::Compose(_) => bail!("{} needs the local target", fault.name()),
        }
    }

    pub async fn kill_node(&mut self, i: usize) -> anyhow::Result<()> {
        match self {
            Target::Local(c) => c.kill(i),
            Target::Compose(c) => c.kill(i).await?,
        }
        Ok(())
    }

    /// Starts region `i`'s node again and waits until it is ready.
    pub async fn restart_node(&mut self, i: usize, api: &Api) -> anyhow::Result<()> {
        match self {
            Target::Local(c) => c.restart(i).await,
            Target::Compose(c) => c.start(i, api).await,
        }
    }

    pub async fn pause_node(&mut self, i: usize, paused: bool) -> anyhow::Result<()> {
        match self {
            Target::Local(c) => {
                c.signal(i, if paused { libc::SIGSTOP } else { libc::SIGCONT });
                Ok(())
            }
            Target::Compose(c) => c.pause(i, paused).await,
        }
    }

    /// Kills the broker region `i` publishes to (the local cluster has one for all).
    pub async fn kill_broker(&mut self, i: usize) -> anyhow::Result<()> {
        match self {
            Target::Local(c) => {
                if !c.kill_broker() {
                    bail!("the embedded broker cannot be killed");
                }
                Ok(())
            }
            Target::Compose(c) => c.kill_broker(i).await,
        }
    }

    pub async fn restart_broker(&mut self, i: usize) -> anyhow::Result<()> {
        match self {
            Target::Local(c) => c.restart_broker(),
            Target::Compose(c) => c.start_broker(i).await,
        }
    }

    /// Cuts region `i` off from its broker (`true`) or heals that (`false`). On the
    /// local target only region `i`'s own link is cut; on compose, its broker leaves the
    /// network, so the peers lose it too.
    pub async fn partition_broker(&mut self, i: usize, cut: bool) -> anyhow::Result<()> {
        match self {
            Target::Local(c) => {
                let link = c.broker_link(i);
                if cut {
                    link.blackhole(true);
                } else {
                    link.heal();
                }
                Ok(())
            }
            Target::Compose(c) if cut => c.detach_broker(i).await,
            Target::Compose(c) => c.attach_broker(i).await,
        }
    }

    /// Every place personal data could leak to, searched for `markers`. `scratch` holds
    /// the compose target's copies.
    pub async fn scan_plaintext(&self, markers: &[&[u8]], scratch: &Path) -> anyhow::Result<Scan> {
        let mut scan = Scan::default();
        match self {
            Target::Local(c) => {
                for i in 0..REGIONS.len() {
                    scan.findings
                        .extend(crate::plaintext::scan_dir(&c.data_dir(i), markers)?);
                }
                let topics: Vec<String> = REGIONS
                    .iter()
                    .map(|r| format!("authsync.changes.{r}"))
                    .collect();
                let kafka =
                    crate::kafka::scan_topics(&c.broker_addr()?.to_string(), &topics, markers)
                        .await?;
                scan.kafka_messages = kafka.messages;
                scan.findings.extend(kafka.findings);
            }
            Target::Compose(c) => {
                for copy in c.copy_out(scratch).await? {
                    if copy.ends_with("kafka") {
                        scan.broker_logs += 1;
                    }
                    for mut f in crate::plaintext::scan_dir(&copy, markers)? {
                        let under = copy.strip_prefix(scratch).unwrap_or(&copy);
                        f.place = format!("{}/{}", under.display(), f.place);
                        scan.findings.push(f);
                    }
                }
            }
        }
        Ok(scan)
    }

    /// Stops the local cluster; leaves a compose cluster running, every fault undone.
    pub async fn finish(self) {
        match self {
            Target::Local(c) => c.stop().await,
            Target::Compose(mut c) => c.restore().await,
        }
    }
}
