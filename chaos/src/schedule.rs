//! The faults, and a seeded schedule of them: the same seed and duration give the same
//! episodes, in the same order, on the same regions, held for the same time.
//!
//! Episodes do not overlap. Each one is applied, held, healed, and then the harness times
//! how long a new write takes to reach every region again: the recovery time of that
//! fault.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::json;

use crate::cluster::{Cluster, REGIONS};
use crate::target::Target;
use crate::workload::Api;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// SIGKILL a node, restart it after the hold.
    Kill,
    /// SIGSTOP a node, SIGCONT after the hold.
    Pause,
    /// Kill the broker process, restart it after the hold (Apache Kafka, locally or in compose).
    BrokerRestart,
    /// Blackhole one region's link to the broker (compose: its broker leaves the
    /// network).
    BrokerPartition,
    /// Blackhole the anti-entropy links between two regions, both ways.
    PeerPartition,
    /// 100 ms + up to 100 ms jitter on every link of one region.
    Latency,
    /// Reset every connection of one region's links, once a second.
    Resets,
    /// One region's key service is down, as every node sees it.
    KeysUnavailable,
    /// One region's clock 2 s ahead, then 5 s behind.
    ClockSkew,
    /// Every event of one region's topic delivered again, from offset 0.
    Replay,
}

impl Fault {
    pub const ALL: [Fault; 10] = [
        Fault::Kill,
        Fault::Pause,
        Fault::BrokerRestart,
        Fault::BrokerPartition,
        Fault::PeerPartition,
        Fault::Latency,
        Fault::Resets,
        Fault::KeysUnavailable,
        Fault::ClockSkew,
        Fault::Replay,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::BrokerRestart => "broker-restart",
            Fault::BrokerPartition => "broker-partition",
            Fault::PeerPartition => "peer-partition",
            Fault::Latency => "latency",
            Fault::Resets => "resets",
            Fault::KeysUnavailable => "keys-unavailable",
            Fault::ClockSkew => "clock-skew",
            Fault::Replay => "replay",
        }
    }

    pub fn parse(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// One fault, on `region` (and `peer`, for a partition between two), from `start` after
/// the run began, held for `hold`.
#[derive(Debug, Clone, Serialize)]
pub struct Episode {
    pub fault: Fault,
    pub region: usize,
    pub peer: Option<usize>,
    #[serde(with = "millis")]
    pub start: Duration,
    #[serde(with = "millis")]
    pub hold: Duration,
}

mod millis {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

/// Episodes filling `duration` (the last one healed by its end), chosen from `faults`.
pub fn plan(seed: u64, duration: Duration, faults: &[Fault], regions: usize) -> Vec<Episode> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    if faults.is_empty() {
        return out;
    }
    // A first quiet stretch, so the workload is under way before anything breaks.
    let mut at = Duration::from_secs(3);
    // Faults come from a shuffled deck, dealt again when empty: a run long enough for
    // as many episodes as there are faults has every one of them.
    let mut deck: Vec<Fault> = Vec::new();
    loop {
        let hold = Duration::from_millis(rng.gen_range(2_000..8_000));
        if deck.is_empty() {
            deck = faults.to_vec();
            deck.shuffle(&mut rng);
        }
        let fault = deck.pop().expect("dealt above");
        let region = rng.gen_range(0..regions);
        let peer =
            (fault == Fault::PeerPartition).then(|| (region + rng.gen_range(1..regions)) % regions);
        if at + hold > duration {
            return out;
        }
        out.push(Episode {
            fault,
            region,
            peer,
            start: at,
            hold,
        });
        // Time to heal and recover before the next one.
        at += hold + Duration::from_millis(rng.gen_range(3_000..6_000));
    }
}

async fn set_faults(api: &Api, url: &str, change: serde_json::Value) -> anyhow::Result<()> {
    let (status, body) = api
        .send(
            reqwest::Method::PUT,
            &format!("{url}/v1/admin/faults"),
            Some(change),
        )
        .await
        .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(status == 200, "set faults on {url}: {status} {body}");
    Ok(())
}

/// Applies `e`, holds it, and heals it.
pub async fn run_episode(target: &mut Target, api: &Api, e: &Episode) -> anyhow::Result<()> {
    let r = e.region;
    let regions = REGIONS.len();
    let links_of = |cluster: &Cluster| {
        let mut links = vec![cluster.broker_link(r)];
        for other in (0..regions).filter(|o| *o != r) {
            links.extend(cluster.peer_link(r, other));
            links.extend(cluster.peer_link(other, r));
        }
        links
    };
    match e.fault {
        Fault::Kill => {
            target.kill_node(r).await?;
            tokio::time::sleep(e.hold).await;
            target.restart_node(r, api).await?;
        }
        Fault::Pause => {
            target.pause_node(r, true).await?;
            tokio::time::sleep(e.hold).await;
            target.pause_node(r, false).await?;
        }
        Fault::BrokerRestart => {
            target.kill_broker(r).await?;
            tokio::time::sleep(e.hold).await;
            target.restart_broker(r).await?;
        }
        Fault::BrokerPartition => {
            target.partition_broker(r, true).await?;
            tokio::time::sleep(e.hold).await;
            target.partition_broker(r, false).await?;
        }
        Fault::PeerPartition => {
            let cluster = target.local(e.fault)?;
            let p = e.peer.unwrap_or((r + 1) % regions);
            let links: Vec<_> = [cluster.peer_link(r, p), cluster.peer_link(p, r)]
                .into_iter()
                .flatten()
                .collect();
            links.iter().for_each(|l| l.blackhole(true));
            tokio::time::sleep(e.hold).await;
            links.iter().for_each(|l| l.heal());
        }
        Fault::Latency => {
            let links = links_of(target.local(e.fault)?);
            for l in &links {
                l.latency(Duration::from_millis(100), Duration::from_millis(100));
            }
            tokio::time::sleep(e.hold).await;
            links.iter().for_each(|l| l.heal());
        }
        Fault::Resets => {
            let links = links_of(target.local(e.fault)?);
            let until = tokio::time::Instant::now() + e.hold;
            while tokio::time::Instant::now() < until {
                links.iter().for_each(|l| l.reset_all());
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        Fault::KeysUnavailable => {
            let region = REGIONS[r];
            for i in 0..regions {
                set_faults(api, &target.url(i), json!({"keys_unavailable": [region]})).await?;
            }
            tokio::time::sleep(e.hold).await;
            for i in 0..regions {
                set_faults(api, &target.url(i), json!({"keys_unavailable": []})).await?;
            }
        }
        Fault::ClockSkew => {
            let url = target.url(r);
            set_faults(api, &url, json!({"clock_offset_ms": 2_000})).await?;
            tokio::time::sleep(e.hold / 2).await;
            set_faults(api, &url, json!({"clock_offset_ms": -5_000})).await?;
            tokio::time::sleep(e.hold / 2).await;
            set_faults(api, &url, json!({"clock_offset_ms": 0})).await?;
        }
        Fault::Replay => {
            let cluster = target.local(e.fault)?;
            let topic = format!("authsync.changes.{}", REGIONS[r]);
            crate::kafka::replay_topic(&cluster.broker_addr()?.to_string(), &topic).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_the_same_schedule_within_the_duration() {
        let faults = Fault::ALL;
        let a = plan(7, Duration::from_secs(120), &faults, 3);
        let b = plan(7, Duration::from_secs(120), &faults, 3);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        assert_ne!(
            format!("{a:?}"),
            format!("{:?}", plan(8, Duration::from_secs(120), &faults, 3))
        );
        assert!(a.len() >= 8, "{}", a.len());
        for w in a.windows(2) {
            assert!(w[0].start + w[0].hold < w[1].start, "episodes overlap");
        }
        for e in &a {
            assert!(e.start + e.hold <= Duration::from_secs(120));
            assert!(e.region < 3);
            if let Some(p) = e.peer {
                assert_ne!(p, e.region);
            }
        }
        // Every fault before any comes twice.
        let first: std::collections::BTreeSet<_> =
            a[..faults.len()].iter().map(|e| e.fault).collect();
        assert_eq!(first.len(), faults.len());
        // Only the chosen faults.
        let only = plan(7, Duration::from_secs(60), &[Fault::Kill], 3);
        assert!(!only.is_empty() && only.iter().all(|e| e.fault == Fault::Kill));
        assert!(plan(7, Duration::from_secs(60), &[], 3).is_empty());
    }

    #[test]
    fn fault_names_parse_back() {
        for f in Fault::ALL {
            assert_eq!(Fault::parse(f.name()), Some(f));
        }
        assert_eq!(Fault::parse("meteor"), None);
    }
}
