//! A three-region cluster the harness can break: one `authsync node` process per region,
//! each in a network namespace of its own, and a broker in the host namespace.
//!
//! Every link a node has passes through a [`Proxy`] the harness controls:
//!
//! - **node → broker**: inside each region's namespace a proxy listens on the broker's
//!   advertised address and forwards to the broker. Regions share that address, yet each
//!   has its own link, so one region can be cut off from the broker alone.
//! - **node → peer** (anti-entropy over HTTP): region `i` listens on
//!   `127.0.0.1:base+i` in its own namespace. In every other namespace a proxy listens
//!   on that address and connects into region `i`'s namespace: one link per ordered pair.
//! - **harness → node**: a proxy in the host namespace on a free port, into the region's
//!   namespace. The workload and the checks use it; it is never faulted, so what the
//!   harness sees is what the node answers.
//!
//! Namespaces and proxies live as long as the cluster: a node killed with SIGKILL and
//! restarted comes back into the same namespace, behind the same links.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use authsync::node::launcher::{NodeCommand, NodeProcess};

use crate::netns::Namespace;
use crate::proxy::{LinkFaults, Proxy, Upstream};

pub const REGIONS: [&str; 3] = authsync::node::local_cluster::DEMO_REGIONS;

/// Where the Kafka-protocol broker comes from.
pub enum BrokerKind {
    /// librdkafka's mock cluster, in this process: no setup, but it cannot be killed.
    Embedded,
    /// Apache Kafka in KRaft mode, one process run by this script (the project's
    /// `scripts/kafka.sh`): it can be killed with SIGKILL and restarted on its log dirs.
    Kafka(PathBuf),
}

enum Broker {
    Embedded(rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>),
    Kafka {
        script: PathBuf,
        dir: PathBuf,
        addr: SocketAddr,
        child: Option<Child>,
    },
}

impl Broker {
    fn start(kind: &BrokerKind, root: &Path) -> anyhow::Result<Broker> {
        match kind {
            BrokerKind::Embedded => {
                let mock =
                    rdkafka::mocking::MockCluster::new(1).context("start the embedded broker")?;
                for region in REGIONS {
                    let topic = format!("authsync.changes.{region}");
                    for t in [authsync::replication::config::user_key_topic(&topic), topic] {
                        mock.create_topic(&t, 3, 1)
                            .with_context(|| format!("create topic {t}"))?;
                    }
                }
                Ok(Broker::Embedded(mock))
            }
            BrokerKind::Kafka(script) => {
                let mut broker = Broker::Kafka {
                    script: script.clone(),
                    dir: root.join("broker"),
                    addr: free_port_pair()?,
                    child: None,
                };
                broker.restart()?;
                Ok(broker)
            }
        }
    }

    fn addr(&self) -> anyhow::Result<SocketAddr> {
        match self {
            Broker::Embedded(mock) => mock
                .bootstrap_servers()
                .parse()
                .context("the embedded broker's address"),
            Broker::Kafka { addr, .. } => Ok(*addr),
        }
    }

    /// Kills the broker process (SIGKILL); `false` for the embedded broker.
    fn kill(&mut self) -> bool {
        match self {
            Broker::Embedded(_) => false,
            Broker::Kafka { child, .. } => {
                if let Some(mut c) = child.take() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
                true
            }
        }
    }

    /// (Re)starts the broker on the same address and log dirs. The script formats the
    /// log dirs on the first start only, then execs the JVM, so the child is the broker.
    fn restart(&mut self) -> anyhow::Result<()> {
        let Broker::Kafka {
            script,
            dir,
            addr,
            child,
        } = self
        else {
            return Ok(());
        };
        if let Some(mut c) = child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        std::fs::create_dir_all(&*dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("broker.log"))?;
        let started = Command::new(&*script)
            .arg("run")
            .arg(&*dir)
            .arg(addr.port().to_string())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", script.display()))?;
        let started = child.insert(started);
        // The first start formats the log dirs and a restart after SIGKILL recovers
        // them, each before the broker listens.
        let deadline = Instant::now() + Duration::from_secs(90);
        while std::net::TcpStream::connect(*addr).is_err() {
            if let Some(status) = started.try_wait()? {
                bail!(
                    "the broker exited ({status}) before it listened; see {}",
                    dir.join("broker.log").display()
                );
            }
            if Instant::now() > deadline {
                bail!("the broker did not listen on {addr} within 90 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A free loopback port whose successor is free too: the broker's client listener and
/// its controller's.
fn free_port_pair() -> anyhow::Result<SocketAddr> {
    for _ in 0..100 {
        let first = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = first.local_addr()?;
        if addr.port() < u16::MAX
            && std::net::TcpListener::bind(("127.0.0.1", addr.port() + 1)).is_ok()
        {
            return Ok(addr);
        }
    }
    bail!("no two adjacent free ports on 127.0.0.1")
}

struct Region {
    name: &'static str,
    namespace: Arc<Namespace>,
    config: PathBuf,
    node: Option<NodeProcess>,
    broker_link: Proxy,
    /// Links into the other regions, by their index.
    peer_links: BTreeMap<usize, Proxy>,
    /// The harness's way in.
    access: Proxy,
}

pub struct ClusterOptions {
    /// Keyrings, configs, data directories and logs go here.
    pub root: PathBuf,
    /// A binary whose `node --config FILE` runs a node (this harness, or `authsync`).
    pub node_exe: PathBuf,
    pub broker: BrokerKind,
    /// Region `i` listens on `127.0.0.1:base_port + i` inside its namespace.
    pub base_port: u16,
    pub api_key: String,
}

pub struct Cluster {
    regions: Vec<Region>,
    node_exe: PathBuf,
    root: PathBuf,
    pub api_key: String,
    // Last: the nodes and proxies go before the broker.
    broker: Broker,
}

impl Cluster {
    /// Starts the broker, the namespaces and their links, and the three nodes; returns
    /// once every node answers `/readyz`.
    pub async fn start(opts: ClusterOptions) -> anyhow::Result<Cluster> {
        let ClusterOptions {
            root,
            node_exe,
            broker,
            base_port,
            api_key,
        } = opts;
        authsync::node::local_cluster::init_keyrings(&root)?;
        let broker = Broker::start(&broker, &root)?;
        let broker_addr = broker.addr()?;
        let listens: Vec<SocketAddr> = (0..REGIONS.len())
            .map(|i| SocketAddr::from(([127, 0, 0, 1], base_port + i as u16)))
            .collect();
        let urls: Vec<String> = listens.iter().map(|a| format!("http://{a}")).collect();
        let bootstrap = broker_addr.to_string();
        let create_topics = matches!(broker, Broker::Kafka { .. });
        let shared = authsync::node::local_cluster::Shared {
            root: &root,
            api_key: &api_key,
            bootstrap: &bootstrap,
            create_topics,
            peer_urls: Some(&urls),
            faults: true,
        };
        let namespaces: Vec<Arc<Namespace>> = (0..REGIONS.len())
            .map(|_| Namespace::new().map(Arc::new))
            .collect::<Result<_, _>>()
            .context("create a network namespace per region")?;
        let config_dir = root.join("config");
        std::fs::create_dir_all(&config_dir)?;
        let mut regions = Vec::new();
        for (i, name) in REGIONS.iter().enumerate() {
            let ns = &namespaces[i];
            let config = config_dir.join(format!("{name}.toml"));
            let text =
                authsync::node::local_cluster::node_config(&shared, name, &listens[i].to_string());
            std::fs::write(&config, text)?;
            let broker_link = Proxy::start_on(ns.listen(broker_addr)?, broker_addr)?;
            let mut peer_links = BTreeMap::new();
            for (j, peer) in namespaces.iter().enumerate() {
                if j != i {
                    let upstream = Upstream::In(peer.clone(), listens[j]);
                    peer_links.insert(j, Proxy::start_on(ns.listen(listens[j])?, upstream)?);
                }
            }
            let access = Proxy::start(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                Upstream::In(ns.clone(), listens[i]),
            )
            .await?;
            regions.push(Region {
                name,
                namespace: ns.clone(),
                config,
                node: None,
                broker_link,
                peer_links,
                access,
            });
        }
        let mut cluster = Cluster {
            regions,
            node_exe,
            root,
            api_key,
            broker,
        };
        for i in 0..REGIONS.len() {
            cluster.spawn_node(i)?;
        }
        for i in 0..REGIONS.len() {
            cluster.wait_ready(i, Duration::from_secs(90)).await?;
        }
        Ok(cluster)
    }

    /// Starts region `i`'s node in its namespace and returns at once: the URL it prints
    /// is inside the namespace, so [`Cluster::wait_ready`] asks `/readyz` through the
    /// harness's link instead (and this async harness must not block on the line).
    fn spawn_node(&mut self, i: usize) -> anyhow::Result<()> {
        let region = &mut self.regions[i];
        let node = NodeCommand::new(&self.node_exe, &region.config)
            .name(region.name)
            .stderr_log(self.root.join(format!("{}.log", region.name)))
            .wait_for_url(None)
            .spawn_with(|cmd| region.namespace.spawn(cmd))?;
        region.node = Some(node);
        Ok(())
    }

    /// The harness's URL of region `i` (never faulted).
    pub fn url(&self, i: usize) -> String {
        format!("http://{}", self.regions[i].access.addr())
    }

    pub fn region(&self, i: usize) -> &'static str {
        self.regions[i].name
    }

    /// Where region `i` keeps its RocksDB files.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.root.join(self.regions[i].name)
    }

    /// The link from region `i` to the broker.
    pub fn broker_link(&self, i: usize) -> LinkFaults {
        self.regions[i].broker_link.faults()
    }

    /// The link from region `from` to region `to`'s HTTP (anti-entropy).
    pub fn peer_link(&self, from: usize, to: usize) -> Option<LinkFaults> {
        self.regions[from].peer_links.get(&to).map(Proxy::faults)
    }

    /// Sends `signal` to region `i`'s node (SIGKILL, SIGSTOP, SIGCONT, SIGTERM).
    pub fn signal(&mut self, i: usize, signal: libc::c_int) {
        if let Some(node) = self.regions[i].node.as_mut() {
            if let Err(e) = node.signal(signal) {
                tracing::warn!(region = self.regions[i].name, error = %e, "signal the node");
            }
        }
    }

    /// Kills region `i`'s node with SIGKILL and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut node) = self.regions[i].node.take() {
            node.kill();
        }
    }

    /// Starts region `i`'s node again (killing what runs) and waits until it is ready.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        self.spawn_node(i)?;
        self.wait_ready(i, Duration::from_secs(90)).await
    }

    /// Whether the broker is a process of its own, which can be killed and restarted.
    pub fn broker_restartable(&self) -> bool {
        matches!(self.broker, Broker::Kafka { .. })
    }

    /// Kills the broker; `false` when it is the embedded one, which cannot be.
    pub fn kill_broker(&mut self) -> bool {
        self.broker.kill()
    }

    pub fn restart_broker(&mut self) -> anyhow::Result<()> {
        self.broker.restart()
    }

    pub fn broker_addr(&self) -> anyhow::Result<SocketAddr> {
        self.broker.addr()
    }

    async fn wait_ready(&mut self, i: usize, within: Duration) -> anyhow::Result<()> {
        let url = format!("{}/readyz", self.url(i));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = Instant::now() + within;
        loop {
            if let Some(node) = self.regions[i].node.as_mut() {
                if let Some(status) = node.try_exited() {
                    bail!(
                        "node {} exited with {status} (see {}/{}.log)",
                        self.regions[i].name,
                        self.root.display(),
                        self.regions[i].name
                    );
                }
            }
            if let Ok(r) = client.get(&url).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("node {} not ready within {within:?}", self.regions[i].name);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops every node with SIGTERM (SIGKILL after 15 s), then the links and the broker.
    pub async fn stop(mut self) {
        for i in 0..self.regions.len() {
            self.signal(i, libc::SIGCONT);
            self.signal(i, libc::SIGTERM);
        }
        for region in self.regions.iter_mut() {
            if let Some(mut node) = region.node.take() {
                // Polled here rather than with the blocking `NodeProcess::stop`: the
                // links a stopping node still uses run on this runtime.
                let deadline = Instant::now() + Duration::from_secs(15);
                while node.try_exited().is_none() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                node.kill();
            }
        }
        for region in std::mem::take(&mut self.regions) {
            region.access.stop().await;
            region.broker_link.stop().await;
            for (_, link) in region.peer_links {
                link.stop().await;
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for region in self.regions.iter_mut() {
            if let Some(mut node) = region.node.take() {
                node.kill();
            }
        }
    }
}
