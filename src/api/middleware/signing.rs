//! Signed requests from member platforms.
//!
//! A node configured with `[request_signing] required = true` accepts a `/v1/` request
//! only with a JWT in the `X-Authsync-Signature` header, signed by one of the
//! configured clients:
//! - HS256 with a shared secret, or EdDSA (Ed25519) with the client's public key;
//! - the header's `kid` names the client.
//!
//! The claims bind the JWT to this one request:
//! - `method` and `path` (the path with its query);
//! - `body_sha256`, the base64url SHA-256 of the body;
//! - `iat` and `exp`: the token lives at most `max_age_s`, and at most `max_skew_s`
//!   of clock difference is tolerated;
//! - `jti`, unique: a second request with a `jti` seen within the window is refused
//!   as a replay.
//!
//! Every refusal is a 401 that says why: `signature_required`, `signature_invalid`,
//! `signature_expired` or `signature_replayed`.
//!
//! The `jti` cache is per node: a replay sent to another region within the window is
//! not caught there. Keep `max_age_s` short.

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::common::replay::{Replay, Seen};
use crate::crypto::jws::{self, PublicKey};

/// The header that carries the JWT.
pub const HEADER: &str = "x-authsync-signature";

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SigningConfig {
    /// Refuse unsigned requests. Default false: signatures are checked when present.
    pub required: bool,
    /// Longest lifetime of a signature (`exp - iat`). Default 300 s.
    pub max_age_s: Option<u64>,
    /// Clock difference tolerated. Default 30 s.
    pub max_skew_s: Option<u64>,
    pub clients: Vec<SigningClient>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SigningClient {
    /// The `kid` the client puts in its JWT header.
    pub kid: String,
    /// "HS256" or "EdDSA".
    pub alg: String,
    /// HS256: the shared secret, hex (at least 32 bytes).
    #[serde(default)]
    pub secret_hex: Option<String>,
    /// EdDSA: the client's Ed25519 public key, base64url (32 bytes).
    #[serde(default)]
    pub public_key: Option<String>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub reason: String,
}

fn refuse(code: &'static str, reason: impl Into<String>) -> Refusal {
    Refusal {
        code,
        reason: reason.into(),
    }
}

pub struct Verifier {
    required: bool,
    max_age_s: u64,
    max_skew_s: u64,
    keys: HashMap<String, PublicKey>,
    seen: Seen,
}

/// At most this many `jti`s are remembered; past it, new signatures are refused
/// rather than a replay let through.
const MAX_SEEN: usize = 1_000_000;

impl Verifier {
    /// From the config; `Err` names the client whose key is unusable.
    pub fn new(config: &SigningConfig) -> Result<Verifier, String> {
        let mut keys = HashMap::new();
        for (i, c) in config.clients.iter().enumerate() {
            let key = match (c.alg.as_str(), &c.secret_hex, &c.public_key) {
                ("HS256", Some(hex), None) => {
                    let secret = hex::decode(hex.trim())
                        .ok()
                        .filter(|s| s.len() >= 32)
                        .ok_or(format!("clients[{i}].secret_hex must be at least 32 bytes of hex"))?;
                    PublicKey::Hs256(hmac::Key::new(hmac::HMAC_SHA256, &secret))
                }
                ("EdDSA", None, Some(pk)) => {
                    let pk = B64
                        .decode(pk.trim())
                        .ok()
                        .filter(|p| p.len() == 32)
                        .ok_or(format!("clients[{i}].public_key must be 32 bytes, base64url"))?;
                    PublicKey::Ed25519(pk)
                }
                _ => {
                    return Err(format!(
                        "clients[{i}] needs alg \"HS256\" with secret_hex, or \"EdDSA\" with public_key"
                    ))
                }
            };
            if c.kid.trim().is_empty() || keys.insert(c.kid.clone(), key).is_some() {
                return Err(format!("clients[{i}].kid must be set and unique"));
            }
        }
        if config.required && keys.is_empty() {
            return Err("required = true needs at least one client".into());
        }
        Ok(Verifier {
            required: config.required,
            max_age_s: config.max_age_s.unwrap_or(300).clamp(1, 3600),
            max_skew_s: config.max_skew_s.unwrap_or(30).min(600),
            keys,
            seen: Seen::new(MAX_SEEN, MAX_SEEN),
        })
    }

    /// Whether requests without a signature pass.
    pub fn required(&self) -> bool {
        self.required
    }

    /// Checks `jwt` against the request; `now_s` in seconds since the epoch.
    pub fn verify(
        &self,
        jwt: &str,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        now_s: u64,
    ) -> Result<(), Refusal> {
        let invalid = |why: &str| refuse("signature_invalid", why);
        let token = jws::parse(jwt)
            .ok_or_else(|| invalid("not a JWT (base64url JSON header.claims.signature)"))?;
        let kid = token.kid().unwrap_or_default();
        let key = self.keys.get(kid).ok_or_else(|| invalid("unknown kid"))?;
        if token.alg() != key.alg() {
            return Err(invalid("alg does not match the client's key"));
        }
        if !token.verifies(key) {
            return Err(invalid("the signature does not verify"));
        }
        let claims = &token.claims;
        let (Some(iat), Some(exp)) = (claims["iat"].as_u64(), claims["exp"].as_u64()) else {
            return Err(invalid("iat and exp are required"));
        };
        if exp <= iat || exp - iat > self.max_age_s {
            return Err(invalid(
                format!("exp must be after iat, by at most {} s", self.max_age_s).as_str(),
            ));
        }
        if now_s.saturating_add(self.max_skew_s) < iat {
            return Err(invalid("issued in the future"));
        }
        if now_s > exp.saturating_add(self.max_skew_s) {
            return Err(refuse("signature_expired", "exp has passed"));
        }
        if claims["method"].as_str() != Some(method)
            || claims["path"].as_str() != Some(path_and_query)
        {
            return Err(invalid("method and path must be this request's"));
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, body);
        if claims["body_sha256"].as_str() != Some(B64.encode(digest.as_ref()).as_str()) {
            return Err(invalid("body_sha256 is not this body's"));
        }
        let jti = claims["jti"]
            .as_str()
            .filter(|j| (8..=128).contains(&j.len()));
        let Some(jti) = jti else {
            return Err(invalid("jti is required (8 to 128 characters)"));
        };
        let until = exp.saturating_add(self.max_skew_s);
        match self.seen.first_use(kid, jti, until, now_s) {
            Ok(()) => {}
            Err(Replay::Seen) => {
                return Err(refuse("signature_replayed", "this jti was already used"))
            }
            Err(Replay::Full) => {
                return Err(refuse(
                    "signature_invalid",
                    "too many signatures in the window; retry",
                ))
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn hs_config() -> SigningConfig {
        SigningConfig {
            required: true,
            clients: vec![SigningClient {
                kid: "billing".into(),
                alg: "HS256".into(),
                secret_hex: Some("11".repeat(32)),
                public_key: None,
            }],
            ..Default::default()
        }
    }

    fn hs256(claims: Value) -> String {
        let h = B64.encode(json!({"alg": "HS256", "kid": "billing"}).to_string());
        let c = B64.encode(claims.to_string());
        let key = hmac::Key::new(hmac::HMAC_SHA256, &[0x11; 32]);
        let s = hmac::sign(&key, format!("{h}.{c}").as_bytes());
        format!("{h}.{c}.{}", B64.encode(s.as_ref()))
    }

    fn claims(jti: &str, iat: u64, body: &[u8]) -> Value {
        let d = ring::digest::digest(&ring::digest::SHA256, body);
        json!({"iat": iat, "exp": iat + 60, "jti": jti, "method": "POST",
               "path": "/v1/users", "body_sha256": B64.encode(d.as_ref())})
    }

    #[test]
    fn a_signature_binds_one_request_once_within_its_window() {
        let v = Verifier::new(&hs_config()).unwrap();
        let body = br#"{"email":"a@example.com"}"#;
        let jwt = hs256(claims("jti-00000001", 1000, body));
        assert_eq!(v.verify(&jwt, "POST", "/v1/users", body, 1010), Ok(()));
        let code = |r: Result<(), Refusal>| r.unwrap_err().code;
        assert_eq!(
            code(v.verify(&jwt, "POST", "/v1/users", body, 1011)),
            "signature_replayed"
        );
        let other = hs256(claims("jti-00000002", 1000, body));
        assert_eq!(
            code(v.verify(&other, "POST", "/v1/users", b"{}", 1010)),
            "signature_invalid"
        );
        assert_eq!(
            code(v.verify(&other, "PATCH", "/v1/users", body, 1010)),
            "signature_invalid"
        );
        assert_eq!(
            code(v.verify(&other, "POST", "/v1/users", body, 1100)),
            "signature_expired"
        );
        assert_eq!(
            code(v.verify(&other, "POST", "/v1/users", body, 900)),
            "signature_invalid"
        );
        let mut tampered = other.clone();
        tampered.pop();
        tampered.push(if other.ends_with('A') { 'B' } else { 'A' });
        assert_eq!(
            code(v.verify(&tampered, "POST", "/v1/users", body, 1010)),
            "signature_invalid"
        );
        assert_eq!(
            code(v.verify("nonsense", "POST", "/v1/users", body, 1010)),
            "signature_invalid"
        );
        // Its own window over, a jti is forgotten (and its signature expired anyway).
        assert_eq!(v.verify(&other, "POST", "/v1/users", body, 1010), Ok(()));
    }

    /// The attack: one signature with the longest window, then many short ones. The
    /// short ones must be forgotten when their windows end, not held behind the long
    /// one until the cache is full and refuses every signed request.
    #[test]
    fn expired_jtis_are_forgotten_whatever_order_they_came_in() {
        let mut c = hs_config();
        c.max_age_s = Some(3600);
        let v = Verifier::new(&c).unwrap();
        let body = b"{}";
        let signed = |jti: String, iat: u64, exp: u64| {
            let d = ring::digest::digest(&ring::digest::SHA256, body);
            hs256(json!({"iat": iat, "exp": exp, "jti": jti, "method": "POST",
                "path": "/v1/users", "body_sha256": B64.encode(d.as_ref())}))
        };
        let long = signed("jti-long-window".into(), 1000, 4600);
        assert_eq!(v.verify(&long, "POST", "/v1/users", body, 1000), Ok(()));
        for i in 0..100 {
            let short = signed(format!("jti-short-{i:04}"), 1000, 1060);
            assert_eq!(v.verify(&short, "POST", "/v1/users", body, 1000), Ok(()));
        }
        let later = signed("jti-later-one".into(), 1200, 1260);
        assert_eq!(v.verify(&later, "POST", "/v1/users", body, 1200), Ok(()));
        assert_eq!(v.seen.len(), 2, "the long one and the latest remain");
        // The long one is still remembered.
        assert_eq!(
            v.verify(&long, "POST", "/v1/users", body, 1200)
                .unwrap_err()
                .code,
            "signature_replayed"
        );
    }

    #[test]
    fn unusable_client_keys_are_refused_naming_the_client() {
        let mut c = hs_config();
        c.clients[0].secret_hex = Some("11".into());
        assert!(Verifier::new(&c)
            .err()
            .unwrap()
            .contains("clients[0].secret_hex"));
        c.clients[0].alg = "none".into();
        assert!(Verifier::new(&c).err().unwrap().contains("clients[0]"));
        c.clients.clear();
        assert!(Verifier::new(&c)
            .err()
            .unwrap()
            .contains("at least one client"));
    }
}
