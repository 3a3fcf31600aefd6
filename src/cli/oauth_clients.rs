//! `authsync oauth-clients`: register, list and remove the member platforms that sign
//! their customers in through the OpenID Connect provider.

use serde_json::{json, Value};

use crate::cli::admin_client::{AdminClient, NodeAddress};

/// What `authsync oauth-clients` does.
#[derive(Debug, Clone)]
pub enum ClientsAction {
    /// Every live client.
    List,
    /// A new client; a confidential one's secret is printed once.
    Add {
        name: String,
        redirect_uris: Vec<String>,
        post_logout_redirect_uris: Vec<String>,
        scopes: Vec<String>,
        public: bool,
        first_party: bool,
        /// A file holding the client's public JWK set: it authenticates with
        /// private_key_jwt assertions signed by those keys instead of a secret.
        jwks_file: Option<std::path::PathBuf>,
        /// EdDSA (the default) or ES256.
        id_token_alg: Option<String>,
    },
    /// Remove the client with this id, in every region.
    Remove { id: String },
}

fn list(v: &Value) -> String {
    v.as_array()
        .map(|s| {
            s.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// Runs `action` against `node` and prints the result on stdout.
pub async fn run(node: &NodeAddress, action: ClientsAction) -> anyhow::Result<()> {
    let admin = AdminClient::new(node)?;
    match action {
        ClientsAction::List => {
            let body = admin
                .expect(reqwest::Method::GET, "/v1/admin/oauth-clients", None, 200)
                .await?;
            println!(
                "{:<28} {:<24} {:<20} {:<28} redirect URIs",
                "client id", "name", "kind", "scopes"
            );
            for c in body["clients"].as_array().into_iter().flatten() {
                let keyed = c["token_endpoint_auth_method"] == "private_key_jwt";
                let kind = match (c["public"].as_bool(), keyed, c["first_party"].as_bool()) {
                    (Some(true), _, Some(true)) => "public, first party",
                    (Some(true), _, _) => "public",
                    (_, true, Some(true)) => "keys, first party",
                    (_, true, _) => "keys",
                    (_, _, Some(true)) => "confidential, first party",
                    _ => "confidential",
                };
                println!(
                    "{:<28} {:<24} {:<20} {:<28} {}",
                    c["client_id"].as_str().unwrap_or("-"),
                    c["name"].as_str().unwrap_or("-"),
                    kind,
                    list(&c["scopes"]),
                    list(&c["redirect_uris"]),
                );
            }
        }
        ClientsAction::Add {
            name,
            redirect_uris,
            post_logout_redirect_uris,
            scopes,
            public,
            first_party,
            jwks_file,
            id_token_alg,
        } => {
            let jwks = match &jwks_file {
                None => None,
                Some(path) => {
                    let text = std::fs::read_to_string(path).map_err(|e| {
                        anyhow::anyhow!("cannot read the key set {}: {e}", path.display())
                    })?;
                    Some(serde_json::from_str::<Value>(&text).map_err(|e| {
                        anyhow::anyhow!("the key set {} is not JSON: {e}", path.display())
                    })?)
                }
            };
            let mut body = json!({
                "name": name,
                "redirect_uris": redirect_uris,
                "post_logout_redirect_uris": post_logout_redirect_uris,
                "public": public,
                "first_party": first_party,
            });
            if !scopes.is_empty() {
                body["scopes"] = json!(scopes);
            }
            if let Some(set) = jwks {
                body["token_endpoint_auth_method"] = json!("private_key_jwt");
                body["jwks"] = set;
            }
            if let Some(alg) = id_token_alg {
                body["id_token_signed_response_alg"] = json!(alg);
            }
            let c = admin
                .expect(
                    reqwest::Method::POST,
                    "/v1/admin/oauth-clients",
                    Some(body),
                    201,
                )
                .await?;
            println!(
                "client {} ({}), scopes {}",
                c["client_id"].as_str().unwrap_or("?"),
                c["name"].as_str().unwrap_or("?"),
                list(&c["scopes"])
            );
            match c["client_secret"].as_str() {
                Some(secret) => {
                    println!("client secret (shown once, give it to the platform): {secret}")
                }
                None if c["token_endpoint_auth_method"] == "private_key_jwt" => println!(
                    "client with keys: no secret; it signs private_key_jwt assertions with them"
                ),
                None => println!("public client: no secret; it must use PKCE"),
            }
        }
        ClientsAction::Remove { id } => {
            let c = admin
                .expect(
                    reqwest::Method::DELETE,
                    &format!("/v1/admin/oauth-clients/{id}"),
                    None,
                    200,
                )
                .await?;
            println!(
                "client {} ({}) removed in every region",
                c["client_id"].as_str().unwrap_or("?"),
                c["name"].as_str().unwrap_or("?")
            );
        }
    }
    Ok(())
}
