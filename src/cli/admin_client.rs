//! A client of a node's admin API, for the commands that act on a running node:
//! `authsync dlq` (in [`crate::cli::dlq`]) and `authsync api-keys` (here), which also
//! rotates the token signing key.

use anyhow::{bail, Context};
use serde_json::{json, Value};

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

/// Retires master key `version` of `region` in the keyring directory `dir`, once the
/// region's node at `node` reports that nothing it holds still uses it.
pub async fn retire_key(
    node: &NodeAddress,
    dir: &std::path::Path,
    region: &str,
    version: u32,
) -> anyhow::Result<()> {
    // Retired in memory first: what the keyring alone refuses (the active version, a
    // version it does not hold) is refused before the node is asked anything. Peers
    // hold only active versions, so only this file changes.
    let (path, mut keyring) = authsync::crypto::keyring::load_own(dir, region)?;
    keyring.retire(version)?;
    let admin = AdminClient::new(node)?;
    let usage = admin
        .expect(reqwest::Method::GET, "/v1/admin/keys/usage", None, 200)
        .await?;
    if usage["region"] != region {
        bail!(
            "{} is the node of region {}, not {region}",
            node.url,
            usage["region"]
        );
    }
    if usage["active"] == version {
        bail!(
            "the node of {region} still wraps new data under v{version}: it has not \
             reloaded the rotated keyring yet; try again after keys.reload_interval_ms"
        );
    }
    let Some(held) = usage["versions"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["version"] == version))
    else {
        bail!(
            "the node of {region} does not hold v{version} (already retired, or not yet reloaded)"
        );
    };
    let n = |field: &str| held[field].as_u64().unwrap_or(0);
    let (records, user_keys, signing_keys) = (n("records"), n("user_keys"), n("signing_keys"));
    if records + user_keys + signing_keys > 0 {
        bail!(
            "{region}/v{version} is still used by {records} records, {user_keys} user keys and \
             {signing_keys} signing keys: key recovery moves records and user keys to the \
             active version every keys.rewrap_interval_ms, and `authsync api-keys \
             rotate-signing-key` moves the signing key once its successor signs; try again then"
        );
    }
    keyring.save(&path)?;
    println!(
        "region {region}: master key v{version} retired; nothing sealed under it can be opened \
         any more, backups included. The node drops it at its next keyring reload."
    );
    Ok(())
}

/// Checks a node URL given on the command line.
pub fn check_url(url: &str) -> anyhow::Result<()> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        bail!("--url must start with http:// or https://, got {url:?}");
    }
    Ok(())
}

/// What `authsync api-keys` does.
#[derive(Debug, Clone)]
pub enum KeysAction {
    /// Every key the node knows, revoked ones included.
    List,
    /// A new key with these scopes; printed once.
    Add { name: String, scopes: Vec<String> },
    /// Revoke the key with this id, in every region.
    Revoke { id: String },
    /// Publish a new token signing key for the node's region.
    RotateSigningKey,
}

/// Runs `action` against `node` and prints the result on stdout.
pub async fn api_keys(node: &NodeAddress, action: KeysAction) -> anyhow::Result<()> {
    let admin = AdminClient::new(node)?;
    let scopes = |k: &Value| {
        k["scopes"]
            .as_array()
            .map(|s| {
                s.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default()
    };
    match action {
        KeysAction::List => {
            let body = admin
                .expect(reqwest::Method::GET, "/v1/admin/api-keys", None, 200)
                .await?;
            println!(
                "{:<16}  {:<24} {:<18} {:<8} state",
                "id", "name", "scopes", "source"
            );
            for k in body["keys"].as_array().into_iter().flatten() {
                let state = match k["revoked_at_ms"].as_u64() {
                    Some(ms) => format!("revoked at {ms}"),
                    None => "live".into(),
                };
                println!(
                    "{:<16}  {:<24} {:<18} {:<8} {state}",
                    k["id"].as_str().unwrap_or("-"),
                    k["name"].as_str().unwrap_or("-"),
                    scopes(k),
                    k["source"].as_str().unwrap_or("-"),
                );
            }
        }
        KeysAction::Add { name, scopes: s } => {
            let body = admin
                .expect(
                    reqwest::Method::POST,
                    "/v1/admin/api-keys",
                    Some(json!({"name": name, "scopes": s})),
                    201,
                )
                .await?;
            println!(
                "api key {} ({}), scopes {}",
                body["id"].as_str().unwrap_or("?"),
                body["name"].as_str().unwrap_or("?"),
                scopes(&body)
            );
            println!(
                "key (shown once, give it to the caller): {}",
                body["key"].as_str().unwrap_or("?")
            );
        }
        KeysAction::RotateSigningKey => {
            let body = admin
                .expect(
                    reqwest::Method::POST,
                    "/v1/admin/signing-keys/rotate",
                    None,
                    201,
                )
                .await?;
            println!(
                "signing key {} published; it signs from {} (ms since the epoch)",
                body["kid"].as_str().unwrap_or("?"),
                body["signs_from_ms"]
            );
        }
        KeysAction::Revoke { id } => {
            let body = admin
                .expect(
                    reqwest::Method::DELETE,
                    &format!("/v1/admin/api-keys/{id}"),
                    None,
                    200,
                )
                .await?;
            println!(
                "api key {} ({}) revoked in every region",
                body["id"].as_str().unwrap_or("?"),
                body["name"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(())
}
