//! `private_key_jwt` (RFC 7523 §2.2, OpenID Connect Core §9): a client authenticates
//! at the token, revocation and introspection endpoints with a JWT it signs with one of
//! its registered keys, instead of a secret that authsync would have to keep.
//!
//! What makes an assertion count, each refused as `invalid_client` otherwise:
//! - `iss` and `sub` are both the client's id, and the client is registered for
//!   `private_key_jwt`;
//! - it verifies with one of the client's keys, in that key's own alg (EdDSA, ES256 or
//!   RS256; never `none` or a MAC);
//! - `aud` names this region: its issuer, or one of its token, revocation and
//!   introspection endpoints. So an assertion sent to one region is refused at every
//!   other, when each region has its own issuer (the default);
//! - `exp` has not passed and is at most [`MAX_LIFETIME_S`] ahead, `iat` and `nbf`, if
//!   present, not in the future (with [`SKEW_S`] of tolerance);
//! - `jti` is new: each is taken once at this node until its `exp`.

use serde_json::Value;

use crate::common::replay::Replay;
use crate::crypto::jws;
use crate::proto;

use super::clients::AUTH_PRIVATE_KEY_JWT;
use super::Oidc;

/// The `client_assertion_type` of a JWT assertion.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The longest an assertion may live (`exp` from now): an hour, as client libraries
/// make them by default.
pub const MAX_LIFETIME_S: u64 = 3600;
/// The clock difference tolerated.
pub const SKEW_S: u64 = 30;
/// The most assertions remembered at once, and for one client; past either, new
/// ones are refused (retry) rather than a replay let through, so that one client
/// cannot crowd out the others.
pub const MAX_REMEMBERED: usize = 1_000_000;
pub const MAX_REMEMBERED_PER_CLIENT: usize = 100_000;

impl Oidc {
    /// The client that signed `assertion`, if it counts (see the module); else why not.
    /// `client_id`, when the request also names one, must be the same. The claims are
    /// checked before the signature, and a JWT names its key when the client has
    /// several, so that a stranger's junk costs at most one verification.
    pub fn assertion_client(
        &self,
        assertion: &str,
        client_id: Option<&str>,
    ) -> Result<proto::OAuthClient, &'static str> {
        let jwt = jws::parse(assertion).ok_or("the client assertion is not a JWT")?;
        let claims = &jwt.claims;
        let Some(id) = claims["iss"].as_str().filter(|i| claims["sub"] == *i) else {
            return Err("the assertion's iss and sub must both be the client id");
        };
        if client_id.is_some_and(|c| c != id) {
            return Err("client_id is not the assertion's");
        }
        let base = self.issuer();
        let ours = |aud: &str| {
            aud == base
                || ["token", "revoke", "introspect"]
                    .iter()
                    .any(|e| aud == format!("{base}/oauth2/{e}"))
        };
        let aud_ok = match &claims["aud"] {
            Value::String(a) => ours(a),
            Value::Array(list) => list.iter().filter_map(Value::as_str).any(ours),
            _ => false,
        };
        if !aud_ok {
            return Err("the assertion's aud is not this issuer or its token endpoint");
        }
        let now = self.now_ms() / 1000;
        let Some(exp) = claims["exp"].as_u64() else {
            return Err("the assertion needs exp");
        };
        if exp.saturating_add(SKEW_S) < now {
            return Err("the assertion has expired");
        }
        if exp > now + MAX_LIFETIME_S + SKEW_S {
            return Err("the assertion lives longer than an hour");
        }
        let future = |claim: &str| claims[claim].as_u64().is_some_and(|t| t > now + SKEW_S);
        let not_number = |claim: &str| !claims[claim].is_null() && !claims[claim].is_u64();
        if future("iat") || future("nbf") || not_number("iat") || not_number("nbf") {
            return Err("the assertion's iat or nbf is in the future");
        }
        let Some(jti) = claims["jti"]
            .as_str()
            .filter(|j| !j.is_empty() && j.len() <= 256)
        else {
            return Err("the assertion needs a jti of 1 to 256 characters");
        };
        let client = self
            .clients()
            .get(id)
            .map_err(|_| "the client registry is unavailable")?
            .filter(|c| c.auth_method == AUTH_PRIVATE_KEY_JWT)
            .ok_or("no client registered for private_key_jwt has this id")?;
        let set: Value =
            serde_json::from_str(&client.jwks).map_err(|_| "the client has no keys")?;
        let keys = jws::public_key_set(&set).map_err(|_| "the client has no usable keys")?;
        // The key the JWT names; a JWT without a kid, or a key registered without one,
        // names the client's only key. So at most one verification is ever made.
        let named = |kid: &Option<String>| {
            jwt.kid().is_none() || kid.is_none() || kid.as_deref() == jwt.kid()
        };
        let candidates: Vec<&jws::PublicKey> = keys
            .iter()
            .filter(|(kid, _)| named(kid))
            .map(|(_, key)| key)
            .collect();
        let key = match candidates.as_slice() {
            [key] => *key,
            [] => return Err("the assertion's kid is none of the client's keys"),
            _ => return Err("the client has several keys: the assertion must name one (kid)"),
        };
        if !jwt.verifies(key) {
            return Err("the assertion does not verify with the client's keys");
        }
        match self
            .assertions
            .first_use(&client.client_id, jti, exp.saturating_add(SKEW_S), now)
        {
            Ok(()) => Ok(client),
            Err(Replay::Seen) => Err("this assertion was already used"),
            Err(Replay::Full) => {
                Err("too many assertions of this client in their lifetimes: retry")
            }
        }
    }
}
