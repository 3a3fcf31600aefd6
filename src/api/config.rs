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
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 64 * 1024,
            max_import_items: 1000,
            tls: None,
        }
    }
}

impl HttpConfig {
    /// Checks the `[http]` section (TLS files included: both load and the key is the
    /// certificate's) and returns the address to listen on.
    pub fn validate(&self) -> Result<SocketAddr, Invalid> {
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
