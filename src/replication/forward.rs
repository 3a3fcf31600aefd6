//! Requests this region makes to a peer on a caller's behalf, signed as anti-entropy's
//! are ([`anti_entropy::sign`]) and read with the same bound.
//!
//! Two of them. An account token (a reset, a verification) names the region that made
//! it and is redeemed there, once (`POST /v1/internal/account-tokens/redeem`). And an
//! authorization code brought here that another region issued. A code
//! lives in the memory of the node that issued it, so that it is spent once whatever
//! the replication lag; with one issuer name for every region, a platform's back end
//! may reach another region than its customer's browser did. The code names its
//! region (`ac1.<region>.<secret>`), so this region, having authenticated the client,
//! sends the exchange there (`POST /v1/internal/oauth/exchange`) and relays the
//! answer: the code is still spent once, at the one node that holds it.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::accounts::users::Users;
use crate::replication::anti_entropy::{self, PEER_HEADER};

/// The peer route that exchanges a code it issued.
pub const EXCHANGE_PATH: &str = "/v1/internal/oauth/exchange";
/// The peer route that redeems an account token it made.
pub const REDEEM_PATH: &str = "/v1/internal/account-tokens/redeem";

/// An account token's redemption, as the region it was brought to sends it on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedeemRequest {
    pub token: String,
    pub purpose: String,
    pub password: Option<String>,
}

/// A code exchange, as the region that took the token request sends it on: the client
/// it authenticated, and the request's code, redirect URI and PKCE verifier.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeRequest {
    pub client_id: String,
    pub code: String,
    pub redirect_uri: Option<String>,
    pub code_verifier: Option<String>,
}

/// Sends requests to the peers that have an `http` address.
pub struct Forwarder {
    users: Arc<Users>,
    http: reqwest::Client,
    /// Base URL by region.
    peers: HashMap<String, String>,
}

impl Forwarder {
    /// `peers`: (region, base URL) of each peer with `http`.
    pub fn new(
        users: Arc<Users>,
        peers: &[(String, String)],
        ca_cert: Option<&std::path::Path>,
    ) -> anyhow::Result<Forwarder> {
        Ok(Forwarder {
            users,
            http: anti_entropy::peer_http(ca_cert)?,
            peers: peers.iter().cloned().collect(),
        })
    }

    /// Whether `region` can be asked.
    pub fn reaches(&self, region: &str) -> bool {
        self.peers.contains_key(region)
    }

    /// Sends `req` to `region`; its answer's status and JSON body.
    pub async fn exchange(
        &self,
        region: &str,
        req: &ExchangeRequest,
    ) -> anyhow::Result<(u16, Value)> {
        self.post(region, EXCHANGE_PATH, serde_json::to_vec(req)?)
            .await
    }

    /// Sends `req` to `region`; its answer's status and JSON body.
    pub async fn redeem(&self, region: &str, req: &RedeemRequest) -> anyhow::Result<(u16, Value)> {
        self.post(region, REDEEM_PATH, serde_json::to_vec(req)?)
            .await
    }

    /// `body` to `path` at `region`, signed as this region.
    async fn post(&self, region: &str, path: &str, body: Vec<u8>) -> anyhow::Result<(u16, Value)> {
        let base = self
            .peers
            .get(region)
            .with_context(|| format!("no http address for {region}"))?;
        let header = anti_entropy::sign(
            &self.users.keyring(),
            self.users.clock_now_ms(),
            "POST",
            path,
            &body,
        );
        let resp = self
            .http
            .post(format!("{}{path}", base.trim_end_matches('/')))
            .header(PEER_HEADER, header)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .with_context(|| format!("{path} at {region}"))?;
        let status = resp.status().as_u16();
        let body = anti_entropy::read_bounded(resp).await?;
        let json = serde_json::from_slice(&body).context("decode the peer's answer")?;
        Ok((status, json))
    }
}
