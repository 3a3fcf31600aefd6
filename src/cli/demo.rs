//! `authsync demo`: the three regions of a [`LocalCluster`], printed for the user,
//! until Ctrl-C or SIGTERM.

use std::time::Duration;

use anyhow::bail;
use tokio_util::sync::CancellationToken;

use authsync::node::local_cluster::{DemoOptions, LocalCluster, DEMO_REGIONS};

pub async fn run(opts: DemoOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut cluster = LocalCluster::start(&opts)?;
    let urls = cluster.urls();
    let api_key = cluster.api_key.clone();
    println!(
        "authsync demo: three regions replicating through {}",
        match &opts.kafka {
            Some(k) => format!("Kafka at {k}"),
            None => format!("the embedded broker at {}", cluster.bootstrap),
        }
    );
    for (region, url) in DEMO_REGIONS.iter().zip(&urls) {
        println!("  {region:<9} {url}");
    }
    println!("  data      {}", cluster.root.display());
    println!("  api key   {api_key}");
    println!();
    println!(
        "Try: create in {}, read in {}:",
        DEMO_REGIONS[0], DEMO_REGIONS[2]
    );
    println!(
        "  curl -s -X POST {}/v1/users -H 'authorization: Bearer {api_key}' \\\n    -H 'content-type: application/json' -d '{{\"email\":\"ada@example.com\",\"password\":\"correct horse battery\"}}'",
        urls[0]
    );
    println!(
        "  curl -s '{}/v1/users?email=ada@example.com' -H 'authorization: Bearer {api_key}'",
        urls[2]
    );
    println!("Ctrl-C stops.");

    // Run until asked to stop, or until a node dies on its own.
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        if let Some(region) = cluster.exited() {
            drop(cluster);
            bail!("node {region} exited; demo stopped");
        }
    }
    cluster.shutdown();
    Ok(())
}
