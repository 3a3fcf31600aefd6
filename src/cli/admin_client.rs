//! A client of a node's admin API, for the commands that act on a running node:
//! `authsync dlq` ([`crate::cli::dlq`]), `authsync api-keys` ([`crate::cli::api_keys`])
//! and `authsync keys retire` ([`crate::cli::keys`]).

use anyhow::{bail, Context};
use serde_json::Value;

/// How a command reaches a running node.
#[derive(Debug, Clone)]
pub struct NodeAddress {
    /// Base URL, `http://` or `https://`.
    pub url: String,
    pub api_key: String,
    /// A PEM CA bundle trusted for an `https://` URL besides the system's roots.
    pub ca_cert: Option<std::path::PathBuf>,
}

pub struct AdminClient {
    http: reqwest::Client,
    base: String,
    api_key: String,
}

impl AdminClient {
    pub fn new(node: &NodeAddress) -> anyhow::Result<AdminClient> {
        let builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
        Ok(AdminClient {
            http: authsync::common::tls::trusting(builder, node.ca_cert.as_deref())?
                .build()
                .context("HTTP client")?,
            base: node.url.trim_end_matches('/').to_string(),
            api_key: node.api_key.clone(),
        })
    }

    /// Sends a request; an answer other than `want` becomes the error, named.
    pub async fn expect(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        want: u16,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.api_key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("reach {}", self.base))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.context("read answer")?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status != want {
            return Err(fail(status, &body));
        }
        Ok(body)
    }
}

fn fail(status: u16, body: &Value) -> anyhow::Error {
    let error = body["error"].as_str().unwrap_or("error");
    let details: Vec<String> = body["details"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|p| {
                    format!(
                        "{}: {}",
                        p["field"].as_str().unwrap_or(""),
                        p["problem"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if details.is_empty() {
        anyhow::anyhow!("node answered {status} {error}")
    } else {
        anyhow::anyhow!("node answered {status} {error} ({})", details.join("; "))
    }
}

/// Checks a node URL given on the command line.
pub fn check_url(url: &str) -> anyhow::Result<()> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        bail!("--url must start with http:// or https://, got {url:?}");
    }
    Ok(())
}
