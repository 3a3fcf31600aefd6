//! What every authsync process does around its work: allocator tuning, logging, and
//! stopping on signals; and the `node` command itself, which the `authsync` binary and
//! the chaos harness (which runs nodes from its own binary) share.

use std::path::Path;

use tokio_util::sync::CancellationToken;

use crate::node::config::RawConfig;
use crate::node::Node;

/// Turns core dumps off for this process, and keeps other processes of its user from
/// attaching to it: a node's memory holds master keys, the pepper and passwords being
/// checked, and a core file would put them on disk.
pub fn no_core_dumps() {
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads the struct it is given and changes only this process's
    // limit.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "could not turn core dumps off");
    }
    // Nor may another process of the same user attach to it or read its memory.
    // SAFETY: PR_SET_DUMPABLE takes an integer and changes only this process's flag.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "could not make the process undumpable");
    }
}

/// Warns when a file holding a secret can be read by users other than its owner.
fn warn_if_readable(path: &Path, what: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{mode:o}"),
                "{what} can be read by other users: chmod 600 it"
            );
        }
    }
}

/// Runs one region's node from its config file until SIGTERM or Ctrl-C, printing one
/// machine-readable line once it listens.
pub async fn run_node(config: &Path) -> anyhow::Result<()> {
    no_core_dumps();
    let raw = RawConfig::load(config)?;
    if raw
        .request_signing
        .clients
        .iter()
        .any(|c| c.secret_hex.is_some())
    {
        warn_if_readable(config, "this config file holds request-signing secrets and");
    }
    let config = raw.validate()?;
    if let Some(tls) = &config.tls {
        warn_if_readable(&tls.key, "the TLS private key");
    }
    let shutdown = CancellationToken::new();
    stop_on_signals(shutdown.clone());
    let region = config.region.clone();
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let node = Node::start(config, shutdown).await?;
    // One machine-readable line on stdout for supervisors and tests.
    println!(
        "authsync node region={region} listening on {scheme}://{}",
        node.addr
    );
    node.wait().await;
    Ok(())
}

pub fn init_logging() {
    use tracing_subscriber::{fmt, EnvFilter};
    let filter = EnvFilter::try_from_env("AUTHSYNC_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("AUTHSYNC_LOG_FORMAT").is_ok_and(|v| v == "json");
    // Colours only on a terminal: a log file or a collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Cancels the token on Ctrl-C or SIGTERM.
pub fn stop_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "install SIGTERM handler");
                    let _ = ctrl_c.await;
                    token.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown requested");
        token.cancel();
    });
}

/// glibc raises its mmap threshold after a large block is freed, so later ones come
/// from per-thread heaps that keep them: a node that allocated Argon2's 19 MiB per hash
/// on many blocking threads grew past 1 GiB. Hash memory is now kept per core, but
/// other large blocks (import batches, scans) come and go. A fixed threshold keeps
/// large blocks mapped and returns them to the system when freed. Call it first in
/// `main`, before any thread starts.
pub fn keep_large_allocations_mapped() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; callers run it before any thread
    // starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
