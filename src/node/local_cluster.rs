//! `authsync demo`: three regions on one machine with no setup.
//!
//! The demo process hosts an embedded Kafka-protocol broker (librdkafka's mock
//! cluster, a real listener on loopback) unless `--kafka HOST:PORT` names a real one,
//! writes keyrings and a config for each region into the data directory (a temporary
//! one unless `--data-dir` is given, in which case keys and data survive restarts),
//! and runs each region as its own `authsync node` process — separate RocksDB,
//! separate metrics, separate failure domain — on consecutive ports. SIGTERM or
//! Ctrl-C stops the nodes in order and then the broker.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::accounts::api_keys::{new_api_key, sha256_hex};
use crate::crypto::keyring::{self, keyring_path};
use crate::node::launcher::{NodeCommand, NodeProcess};

pub const DEMO_REGIONS: [&str; 3] = ["af-south", "eu-west", "us-east"];
const TOPIC_PREFIX: &str = "authsync.changes.";
/// A topic nobody replicates through, for `authsync bench`'s Kafka round-trip floor.
pub const BENCH_TOPIC: &str = "authsync.bench";

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub data_dir: Option<PathBuf>,
    pub api_key: Option<String>,
    pub host: IpAddr,
    pub base_port: u16,
    /// A real broker instead of the embedded one.
    pub kafka: Option<String>,
    /// Expose `/v1/admin/faults` on every node (for the chaos harness).
    pub faults: bool,
    /// Let regions compare and repair with each other (needs fixed ports).
    pub anti_entropy: bool,
}

/// Writes a keyring for each of the [`DEMO_REGIONS`] under `root/keys`, where
/// [`node_config`] points, unless they are there already (data survives restarts).
pub fn init_keyrings(root: &Path) -> anyhow::Result<()> {
    let key_dir = root.join("keys");
    std::fs::create_dir_all(&key_dir).with_context(|| format!("create {}", key_dir.display()))?;
    if !keyring_path(&key_dir, DEMO_REGIONS[0]).exists() {
        let regions: Vec<String> = DEMO_REGIONS.iter().map(|r| r.to_string()).collect();
        for ring in keyring::init(&regions).context("generate demo keyrings")? {
            ring.save(&keyring_path(&key_dir, ring.owner()))?;
        }
    }
    Ok(())
}

/// What every region's config shares.
pub struct Shared<'a> {
    /// Keyrings under `root/keys`, each region's data under `root/<region>`.
    pub root: &'a Path,
    pub api_key: &'a str,
    pub bootstrap: &'a str,
    pub create_topics: bool,
    /// Each region's URL, in [`DEMO_REGIONS`] order, when known up front (fixed ports):
    /// peers' anti-entropy addresses.
    pub peer_urls: Option<&'a [String]>,
    pub faults: bool,
}

/// The TOML config of one of the [`DEMO_REGIONS`], listening on `listen`.
pub fn node_config(shared: &Shared<'_>, region: &str, listen: &str) -> String {
    let Shared {
        root,
        api_key,
        bootstrap,
        create_topics,
        peer_urls,
        faults,
    } = *shared;
    let mut text = format!(
        r#"# Written by `authsync demo`.
region = "{region}"
data_dir = "{data}"
keyring = "{keyring}"

[http]
listen = "{listen}"

[[api_keys]]
name = "demo"
sha256 = "{hash}"

# Every caller of the demo (the bench and the chaos harness included) is one address on
# loopback, so the per-address limit on logins and lookups is raised far above the
# default of 100/s.
[rate_limit]
per_second = 100000
burst = 100000

[kafka]
bootstrap_servers = "{bootstrap}"
topic_prefix = "{TOPIC_PREFIX}"
create_topics = {create_topics}
"#,
        data = root.join(region).display(),
        keyring = keyring_path(&root.join("keys"), region).display(),
        hash = sha256_hex(api_key),
    );
    if faults {
        text.push_str("\n[faults]\nenabled = true\n");
    }
    // No mailer in a demo: reset and verification tokens go to the log.
    text.push_str("\n[delivery]\nlog = true\n");
    for (i, peer) in DEMO_REGIONS.iter().enumerate() {
        if *peer == region {
            continue;
        }
        text.push_str(&format!("\n[[peers]]\nregion = \"{peer}\"\n"));
        // Known addresses: anti-entropy compares with each peer.
        if let Some(urls) = peer_urls {
            text.push_str(&format!("http = \"{}\"\n", urls[i]));
        }
    }
    text
}

/// A region's node: `authsync node` from this executable, its log on our stderr, and
/// stopped by the kernel if the thread that started it dies without stopping it.
fn spawn_node(region: &'static str, config: &Path) -> anyhow::Result<NodeProcess> {
    NodeCommand::current_exe(config)?
        .name(region)
        .die_with_parent(true)
        .wait_for_url(Some(Duration::from_secs(60)))
        .spawn()
}

/// Three regions on this machine: keyrings and configs under one root, the embedded
/// broker (unless a real one is named), and one `authsync node` process per region.
/// `authsync demo` runs one until stopped; `authsync bench` runs one and stops and
/// restarts a region in it. Dropping it stops the nodes, then the broker.
///
/// Nodes die with the thread that started them (`PR_SET_PDEATHSIG`), so start and
/// restart them from a thread that lives as long as the cluster.
pub struct LocalCluster {
    pub root: PathBuf,
    pub api_key: String,
    pub bootstrap: String,
    configs: Vec<PathBuf>,
    nodes: Vec<NodeProcess>,
    // Field order is drop order: nodes stop before the broker they use goes away.
    _mock:
        Option<rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>>,
    _temp: Option<tempfile::TempDir>,
}

impl LocalCluster {
    pub fn start(opts: &DemoOptions) -> anyhow::Result<LocalCluster> {
        let (root, temp) = match &opts.data_dir {
            Some(d) => (d.clone(), None),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("authsync-demo-")
                    .tempdir()
                    .context("create temporary data directory")?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        init_keyrings(&root)?;
        let api_key = match &opts.api_key {
            Some(k) if !k.trim().is_empty() => k.clone(),
            Some(_) => bail!("--api-key must not be empty"),
            None => new_api_key().context("generate API key")?,
        };

        let mut mock = None;
        let (bootstrap, create_topics) = match &opts.kafka {
            Some(k) => (k.clone(), true),
            None => {
                let cluster =
                    rdkafka::mocking::MockCluster::new(1).context("start the embedded broker")?;
                for region in DEMO_REGIONS {
                    let topic = format!("{TOPIC_PREFIX}{region}");
                    for t in [crate::replication::config::user_key_topic(&topic), topic] {
                        cluster
                            .create_topic(&t, 3, 1)
                            .with_context(|| format!("create topic {t}"))?;
                    }
                }
                cluster
                    .create_topic(BENCH_TOPIC, 1, 1)
                    .context("create the bench topic")?;
                let bootstrap = cluster.bootstrap_servers();
                mock = Some(cluster);
                (bootstrap, false)
            }
        };

        let config_dir = root.join("config");
        std::fs::create_dir_all(&config_dir)
            .with_context(|| format!("create {}", config_dir.display()))?;
        // Port 0 gives every region a free port of its own (and no anti-entropy, whose
        // peers' addresses must be known up front).
        let listens: Vec<String> = (0..DEMO_REGIONS.len())
            .map(|i| {
                let port = if opts.base_port == 0 {
                    0
                } else {
                    opts.base_port + i as u16
                };
                std::net::SocketAddr::new(opts.host, port).to_string()
            })
            .collect();
        let urls: Vec<String> = listens.iter().map(|l| format!("http://{l}")).collect();
        let peer_urls = (opts.base_port != 0 && opts.anti_entropy).then_some(urls.as_slice());
        let shared = Shared {
            root: &root,
            api_key: &api_key,
            bootstrap: &bootstrap,
            create_topics,
            peer_urls,
            faults: opts.faults,
        };
        let mut configs = Vec::new();
        let mut nodes = Vec::new();
        for (i, region) in DEMO_REGIONS.iter().enumerate() {
            let path = config_dir.join(format!("{region}.toml"));
            std::fs::write(&path, node_config(&shared, region, &listens[i]))
                .with_context(|| format!("write {}", path.display()))?;
            nodes.push(spawn_node(region, &path)?);
            configs.push(path);
        }
        Ok(LocalCluster {
            root,
            api_key,
            bootstrap,
            configs,
            nodes,
            _mock: mock,
            _temp: temp,
        })
    }

    /// Each region's URL, in [`DEMO_REGIONS`] order.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| n.url().unwrap_or_default().to_string())
            .collect()
    }

    /// Whether the broker is the embedded one.
    pub fn embedded_broker(&self) -> bool {
        self._mock.is_some()
    }

    /// Stops region `i` as SIGTERM does (killed if it takes longer than `within`).
    pub fn stop(&mut self, i: usize, within: Duration) {
        self.nodes[i].stop(within);
    }

    /// Starts region `i` again from its data directory; returns once it listens.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.stop(i, Duration::from_secs(15));
        self.nodes[i] = spawn_node(DEMO_REGIONS[i], &self.configs[i])?;
        Ok(())
    }

    /// The first region whose node exited on its own.
    pub fn exited(&mut self) -> Option<&'static str> {
        self.nodes
            .iter_mut()
            .zip(DEMO_REGIONS)
            .find_map(|(n, region)| n.try_exited().is_some().then_some(region))
    }

    /// Stops every node in parallel, then the broker.
    pub fn shutdown(mut self) {
        for n in self.nodes.iter_mut() {
            if let Err(e) = n.terminate() {
                tracing::warn!(region = n.name(), error = %e, "SIGTERM failed");
            }
        }
        for n in self.nodes.iter_mut() {
            // SIGTERM was sent above: this waits, and kills the node if it is late.
            n.stop(Duration::from_secs(15));
        }
    }
}
