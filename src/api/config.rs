//! The `[http]` section of a node's config: the listener and its request bounds.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::common::config::{invalid, Invalid};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address the API listens on. Default `127.0.0.1:8080`; port 0 picks a free port.
    pub listen: String,
    /// Largest accepted request body. Default 64 KiB.
    pub max_body_bytes: usize,
    /// Most items in one `POST /v1/users/import`. Default 1000.
    pub max_import_items: usize,
    /// Serve HTTPS with this certificate and key. Default: plain HTTP.
    pub tls: Option<crate::common::tls::TlsFiles>,
    /// Connections served at once; more wait in the listen backlog. Default 4096.
    pub max_connections: usize,
    /// Connections one client address may hold at once; more are closed at once.
    /// Default 0: no bound, as behind a load balancer every connection is its.
    pub max_connections_per_address: usize,
    /// How long a client has to send a request's headers, on a new or a kept-alive
    /// connection, before it is closed. Default 10000 ms.
    pub header_read_timeout_ms: u64,
    /// Longest a request may take before it is answered 503. Default 30000 ms.
    pub request_timeout_ms: u64,
    /// Password hashes (logins, creates, password changes, imports) in flight at once;
    /// more are answered 503 with Retry-After. Default 256: under the 512 threads of
    /// the blocking pool, so replication and reads always find one.
    pub max_hashing_in_flight: usize,
    /// Serve `/metrics` on this address instead (plain HTTP, the same connection
    /// bounds), and not on `listen`. Default: on `listen`, without an API key.
    pub metrics_listen: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 64 * 1024,
            max_import_items: 1000,
            tls: None,
            max_connections: 4096,
            max_connections_per_address: 0,
            header_read_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
            max_hashing_in_flight: 256,
            metrics_listen: None,
        }
    }
}

impl HttpConfig {
    /// The address `/metrics` gets a listener of its own on, when set.
    pub fn metrics_addr(&self) -> Result<Option<SocketAddr>, Invalid> {
        self.metrics_listen
            .as_deref()
            .map(|a| {
                a.parse().map_err(|_| {
                    invalid(
                        "http.metrics_listen",
                        format!("{a:?} is not an address like 127.0.0.1:9100"),
                    )
                })
            })
            .transpose()
    }

    /// Checks the `[http]` section (TLS files included: both load and the key is the
    /// certificate's) and returns the address to listen on.
    pub fn validate(&self) -> Result<SocketAddr, Invalid> {
        self.metrics_addr()?;
        let listen: SocketAddr = self.listen.parse().map_err(|_| {
            invalid(
                "http.listen",
                format!("{:?} is not an address like 127.0.0.1:8080", self.listen),
            )
        })?;
        if !(1024..=16 * 1024 * 1024).contains(&self.max_body_bytes) {
            return Err(invalid(
                "http.max_body_bytes",
                "must be between 1024 and 16777216",
            ));
        }
        if !(1..=100_000).contains(&self.max_import_items) {
            return Err(invalid(
                "http.max_import_items",
                "must be between 1 and 100000",
            ));
        }
        let bounds: [(&str, u64, std::ops::RangeInclusive<u64>); 5] = [
            (
                "http.max_connections",
                self.max_connections as u64,
                1..=1_000_000,
            ),
            (
                "http.max_connections_per_address",
                self.max_connections_per_address as u64,
                0..=1_000_000,
            ),
            (
                "http.header_read_timeout_ms",
                self.header_read_timeout_ms,
                100..=300_000,
            ),
            (
                "http.request_timeout_ms",
                self.request_timeout_ms,
                100..=600_000,
            ),
            (
                "http.max_hashing_in_flight",
                self.max_hashing_in_flight as u64,
                1..=100_000,
            ),
        ];
        for (key, value, range) in bounds {
            if !range.contains(&value) {
                return Err(invalid(
                    key,
                    format!("must be between {} and {}", range.start(), range.end()),
                ));
            }
        }
        if let Some(tls) = &self.tls {
            if tls.reload_interval_ms < 1000 {
                return Err(invalid(
                    "http.tls.reload_interval_ms",
                    "must be at least 1000",
                ));
            }
            crate::common::tls::load(tls).map_err(|e| invalid("http.tls", e.to_string()))?;
        }
        Ok(listen)
    }
}
