//! `authsync demo`: a working node with no setup.
//!
//! Writes keyrings for the three demo regions into the data directory (a temporary
//! one unless `--data-dir` is given, in which case keys and data survive restarts),
//! generates an API key unless one is given, and serves the `af-south` region.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::{ApiKeyConfig, RawConfig};
use crate::keys::{self, keyring_path};
use crate::node::Node;

pub const DEMO_REGIONS: [&str; 3] = ["af-south", "eu-west", "us-east"];

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub data_dir: Option<PathBuf>,
    pub api_key: Option<String>,
    pub host: IpAddr,
    pub base_port: u16,
}

/// A random API key: 32 bytes, URL-safe base64.
pub fn new_api_key() -> anyhow::Result<String> {
    use base64::Engine as _;
    let key = keys::random_secret().context("generate API key")?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.as_ref()))
}

pub fn sha256_hex(text: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()))
}

pub async fn run(opts: DemoOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (root, _temp) = match &opts.data_dir {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("authsync-demo-")
                .tempdir()
                .context("create temporary data directory")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let key_dir = root.join("keys");
    std::fs::create_dir_all(&key_dir).with_context(|| format!("create {}", key_dir.display()))?;
    if !keyring_path(&key_dir, DEMO_REGIONS[0]).exists() {
        let regions: Vec<String> = DEMO_REGIONS.iter().map(|r| r.to_string()).collect();
        for ring in keys::init(&regions).context("generate demo keyrings")? {
            ring.save(&keyring_path(&key_dir, ring.owner()))?;
        }
    }
    let api_key = match opts.api_key {
        Some(k) if !k.trim().is_empty() => k,
        Some(_) => anyhow::bail!("--api-key must not be empty"),
        None => new_api_key()?,
    };
    let region = DEMO_REGIONS[0];
    let raw = RawConfig {
        region: region.into(),
        data_dir: root.join(region),
        keyring: keyring_path(&key_dir, region),
        http: crate::config::HttpConfig {
            listen: SocketAddr::new(opts.host, opts.base_port).to_string(),
            ..Default::default()
        },
        api_keys: vec![ApiKeyConfig {
            name: "demo".into(),
            sha256: sha256_hex(&api_key),
        }],
        storage: Default::default(),
        clock: Default::default(),
        passwords: Default::default(),
        keys: Default::default(),
        kafka: None,
        peers: Vec::new(),
        replication: Default::default(),
    };
    let config = raw.validate().context("demo configuration")?;
    let node = Node::start(config, shutdown.clone()).await?;
    let url = format!("http://{}", node.addr);
    println!("authsync demo: region {region} serving with no setup");
    println!("  {region:<9} {url}");
    println!("  data      {}", root.display());
    println!("  api key   {api_key}");
    println!();
    println!("Try:");
    println!(
        "  curl -s -X POST {url}/v1/users -H 'authorization: Bearer {api_key}' \\\n    -H 'content-type: application/json' -d '{{\"email\":\"ada@example.com\",\"password\":\"correct horse battery\"}}'"
    );
    println!("Ctrl-C stops.");
    node.wait().await;
    Ok(())
}
