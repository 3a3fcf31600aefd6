//! Where reset and verification tokens go: the operator's own mailer or SMS sender,
//! reached by a webhook, or, for the demo, the log. authsync fakes no mail server.
//!
//! The webhook gets `POST <url>` with `{purpose, user_id, address, token,
//! expires_at_ms}` and the header `x-authsync-delivery: sha256=<hex HMAC-SHA256 of the
//! body under the configured secret>`, so it can tell authsync's requests from others.
//! It is sent once, within a 10 s timeout; a failure is counted
//! (`authsync_deliveries_total{outcome}`) and logged without the address or the token.
//! The log sink writes the token (never the address) at INFO: for a demo, never for a
//! deployment.

use std::time::Duration;

use ring::hmac;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::accounts::users::account_tokens::Minted;
use crate::common::config::{invalid, Invalid};

/// The header with the body's HMAC.
pub const SIGNATURE_HEADER: &str = "x-authsync-delivery";

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// The operator's hook, `https://...` (or `http://` to a loopback address).
    pub webhook_url: Option<String>,
    /// The HMAC key of the signature header, hex, at least 32 bytes.
    pub webhook_secret_hex: Option<String>,
    /// Write tokens to the log instead (the demo). Default false.
    pub log: bool,
}

impl DeliveryConfig {
    pub fn validate(&self) -> Result<(), Invalid> {
        match (&self.webhook_url, &self.webhook_secret_hex) {
            (None, None) => Ok(()),
            (Some(url), Some(secret)) => {
                crate::accounts::bounds::redirect_uri(url)
                    .map_err(|why| invalid("delivery.webhook_url", why))?;
                match hex::decode(secret.trim()) {
                    Ok(k) if k.len() >= 32 => Ok(()),
                    _ => Err(invalid(
                        "delivery.webhook_secret_hex",
                        "must be at least 32 bytes of hex",
                    )),
                }
            }
            _ => Err(invalid(
                "delivery",
                "webhook_url and webhook_secret_hex go together",
            )),
        }
    }
}

/// Sends minted tokens where the config says.
pub struct Delivery {
    webhook: Option<(String, hmac::Key)>,
    log: bool,
    http: reqwest::Client,
}

/// Where a token went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Webhook,
    Log,
}

impl Sink {
    pub fn name(self) -> &'static str {
        match self {
            Sink::Webhook => "webhook",
            Sink::Log => "log",
        }
    }
}

impl Delivery {
    /// From a checked config.
    pub fn new(config: &DeliveryConfig) -> anyhow::Result<Delivery> {
        let webhook = match (&config.webhook_url, &config.webhook_secret_hex) {
            (Some(url), Some(secret)) => Some((
                url.clone(),
                hmac::Key::new(hmac::HMAC_SHA256, &hex::decode(secret.trim())?),
            )),
            _ => None,
        };
        Ok(Delivery {
            webhook,
            log: config.log,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
        })
    }

    /// Where tokens go, `None` when nowhere is configured.
    pub fn sink(&self) -> Option<Sink> {
        if self.webhook.is_some() {
            Some(Sink::Webhook)
        } else if self.log {
            Some(Sink::Log)
        } else {
            None
        }
    }

    /// Hands `minted` to the sink, in the background.
    pub fn send(&self, minted: Minted) {
        match &self.webhook {
            Some((url, key)) => {
                let body = json!({
                    "purpose": minted.purpose.name(),
                    "user_id": minted.user,
                    "address": minted.address,
                    "token": minted.token,
                    "expires_at_ms": minted.expires_ms,
                })
                .to_string();
                let signature = hex::encode(hmac::sign(key, body.as_bytes()).as_ref());
                let request = self
                    .http
                    .post(url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header(SIGNATURE_HEADER, format!("sha256={signature}"))
                    .body(body);
                let (user, purpose) = (minted.user, minted.purpose.name());
                tokio::spawn(async move {
                    let outcome = match request.send().await {
                        Ok(r) if r.status().is_success() => "ok",
                        Ok(r) => {
                            tracing::warn!(%user, purpose, status = %r.status(), "delivery refused");
                            "refused"
                        }
                        Err(e) => {
                            // Without the URL: it may carry a secret of the hook's.
                            let e = e.without_url();
                            tracing::warn!(%user, purpose, error = %e, "delivery failed");
                            "failed"
                        }
                    };
                    metrics::counter!(crate::common::metrics::DELIVERIES_TOTAL, "outcome" => outcome)
                        .increment(1);
                });
            }
            None if self.log => {
                tracing::info!(
                    user = %minted.user,
                    purpose = minted.purpose.name(),
                    token = %minted.token,
                    "account token (log delivery: a demo only)"
                );
                metrics::counter!(crate::common::metrics::DELIVERIES_TOTAL, "outcome" => "logged")
                    .increment(1);
            }
            None => {}
        }
    }
}
