//! `authsync api-keys`: list, add and revoke a running cluster's API keys, and rotate
//! the node's token signing key.

use serde_json::{json, Value};

use crate::cli::admin_client::{AdminClient, NodeAddress};

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
pub async fn run(node: &NodeAddress, action: KeysAction) -> anyhow::Result<()> {
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
