//! Access and refresh tokens.
//!
//! A login returns an access token and a refresh token.
//!
//! **Access token.** A JWT signed with Ed25519 (`alg` EdDSA) through ring. Its claims
//! are `sub` (the user id), `iss`, `aud`, `iat`, `exp` and `jti`, and its header's
//! `kid` names the signing key.
//!
//! **Signing keys.** Each region signs with keys of its own. They are replicated
//! [`crate::accounts::entries`]: the public key in clear, the private seed sealed under the
//! region's master key. So `/.well-known/jwks.json` serves every region's public keys,
//! and any region can check any token.
//! - Each key also has an ES256 (P-256) half, derived from the same seed
//!   ([`Es256Key::derive`]) and published beside it under kid `<kid>.es256`: ID tokens
//!   for a client that cannot check EdDSA are signed with it. Access tokens are always
//!   EdDSA.
//! - A node without a key makes one at start.
//! - A rotation (`POST /v1/admin/signing-keys/rotate`) publishes the new key at once,
//!   but it signs only `tokens.publish_lead_s` later. Verifiers that cache the JWKS
//!   therefore see it before any token carries it.
//! - The old key stops signing when the new one starts, and stays published until the
//!   tokens it signed have expired.
//!
//! **Refresh token.** `rt1.<family>.<generation>.<secret>`. Each family is a replicated
//! entry holding the SHA-256 of its current secret and of the last few before it, so
//! the secret itself is never stored or sent to Kafka.
//! - A refresh rotates the token: a new generation with a new secret.
//! - Presenting an earlier generation is reuse: a stolen token raced the real one. The
//!   whole family is then revoked, in every region. The generation is told by the
//!   secret: the number in the token is not trusted.
//! - Two regions that each rotate the same generation within the replication lag
//!   (one holder had a copy) both succeed at first; once either region holds both
//!   rotations, the family is revoked, and so in every region
//!   ([`crate::accounts::entries`] merges families rather than keeping the last writer).
//! - A logout revokes the family.
//! - A refresh for an account that is no longer active is refused, and revokes the
//!   family too.
//! - So is a refresh of a family issued before the account's credentials last changed
//!   (a password change or reset, a status change, a merge into it: the record's
//!   `credentials_changed_ms`, which the family copies at login). The record carries
//!   the change to every region, so every session of the account ends everywhere once
//!   it arrives; an erase ends them as an inactive account does.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use parking_lot::Mutex;
use prost::Message;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::accounts::error::UserError;
use crate::accounts::users::{Credentials, Users};
use crate::common::config::{invalid, Invalid};
use crate::crypto::jws::{self, Es256Key};
use crate::proto::{self, EntryKind};

/// How many earlier secrets a family remembers, to tell reuse from a forgery.
const PREVIOUS_KEPT: usize = crate::accounts::bounds::MAX_FAMILY_HISTORY;

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenConfig {
    /// `iss` of the access tokens. Default "authsync".
    pub issuer: String,
    /// `aud` of the access tokens. Default "authsync".
    pub audience: String,
    /// Lifetime of an access token. Default 900 s.
    pub access_ttl_s: u64,
    /// Lifetime of a refresh token family from its login. Default 30 days.
    pub refresh_ttl_s: u64,
    /// How long a new signing key is published before it signs. Default 600 s.
    pub publish_lead_s: u64,
}

impl Default for TokenConfig {
    fn default() -> Self {
        TokenConfig {
            issuer: "authsync".into(),
            audience: "authsync".into(),
            access_ttl_s: 900,
            refresh_ttl_s: 30 * 24 * 3600,
            publish_lead_s: 600,
        }
    }
}

/// What a login or a refresh hands out.
#[derive(Debug, Clone)]
pub struct Issued {
    pub user_id: Uuid,
    pub access_token: String,
    pub expires_in: u64,
    pub refresh_token: String,
}

impl Issued {
    pub fn json(&self) -> Value {
        json!({
            "user_id": self.user_id,
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "refresh_token": self.refresh_token,
        })
    }
}

/// Why a refresh token was refused (each a 401 with its own code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not a token of this deployment, or not known here (yet).
    Invalid,
    /// An earlier generation: the family is now revoked.
    Reused,
    Revoked,
    Expired,
    /// The account is no longer active: the family is now revoked.
    AccountInactive,
}

impl Refused {
    pub fn code(self) -> &'static str {
        match self {
            Refused::Invalid => "invalid_token",
            Refused::Reused => "token_reused",
            Refused::Revoked => "token_revoked",
            Refused::Expired => "token_expired",
            Refused::AccountInactive => "account_inactive",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("refresh token refused: {}", .0.code())]
    Refused(Refused),
    #[error(transparent)]
    User(#[from] UserError),
}

pub struct Tokens {
    users: Arc<Users>,
    config: TokenConfig,
    /// Unsealed signing keys by kid.
    signers: Mutex<HashMap<String, Arc<Signer>>>,
}

/// A signing key unsealed: the Ed25519 pair and the P-256 key derived from its seed.
struct Signer {
    ed25519: Ed25519KeyPair,
    es256: Es256Key,
}

/// How a JWT is signed: EdDSA (the default), or ES256 for a client that asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    EdDSA,
    ES256,
}

impl Alg {
    /// `id_token_signed_response_alg` as a client registers it; empty is EdDSA.
    pub fn named(name: &str) -> Option<Alg> {
        match name {
            "" | "EdDSA" => Some(Alg::EdDSA),
            "ES256" => Some(Alg::ES256),
            _ => None,
        }
    }
}

/// The kid of the ES256 key derived from signing key `kid`.
fn es256_kid(kid: &str) -> String {
    format!("{kid}.es256")
}

fn decode<M: Message + Default>(e: &proto::Entry) -> Option<M> {
    M::decode(e.value.as_slice()).ok()
}

/// A refresh token's parts: family, generation, secret.
fn parse_refresh(token: &str) -> Option<([u8; 16], u32, [u8; 32])> {
    let mut parts = token.trim().split('.');
    if parts.next()? != "rt1" {
        return None;
    }
    let family: [u8; 16] = B64.decode(parts.next()?).ok()?.try_into().ok()?;
    let generation: u32 = parts.next()?.parse().ok()?;
    let secret: [u8; 32] = B64.decode(parts.next()?).ok()?.try_into().ok()?;
    parts
        .next()
        .is_none()
        .then_some((family, generation, secret))
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    crate::crypto::primitives::sha256(bytes).to_vec()
}

fn random<const N: usize>() -> Result<[u8; N], UserError> {
    crate::crypto::primitives::random::<N>().map_err(UserError::Crypto)
}

impl Tokens {
    pub fn new(users: Arc<Users>, config: TokenConfig) -> Tokens {
        Tokens {
            users,
            config,
            signers: Mutex::new(HashMap::new()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.users.clock_now_ms()
    }

    /// This region's signing keys that sign now or will (not retired, or retired in
    /// the future), by the master key version their seed is sealed under: a version
    /// they use cannot be retired.
    pub fn seeds_by_version(&self) -> Result<BTreeMap<u32, u64>, UserError> {
        let (region, now) = (self.users.region(), self.now_ms());
        let mut out = BTreeMap::new();
        for (_, key) in self.signing_keys()? {
            if key.region == region && (key.retired_ms == 0 || now < key.retired_ms) {
                if let Some(sealed) = &key.sealed_seed {
                    *out.entry(sealed.key_version).or_default() += 1;
                }
            }
        }
        Ok(out)
    }

    /// Removes the refresh token families that can never refresh again: expired, or
    /// of an erased account. A revoked family is kept until it expires, so that no
    /// late copy of it from before the revocation can bring it back to life.
    pub fn sweep(&self) -> Result<usize, UserError> {
        let now = self.now_ms();
        let dead = |e: &proto::Entry| {
            decode::<proto::TokenFamily>(e).is_some_and(|f| {
                now >= f.expires_ms
                    || Uuid::from_slice(&f.user_id).is_ok_and(|u| self.users.is_erased(&u))
            })
        };
        self.users.entries().sweep(EntryKind::TokenFamily, dead)
    }

    fn signing_keys(&self) -> Result<Vec<(String, proto::SigningKey)>, UserError> {
        Ok(self
            .users
            .entries()
            .all(EntryKind::SigningKey)?
            .iter()
            .filter_map(|e| {
                let kid = String::from_utf8(e.key.clone()).ok()?;
                Some((kid, decode::<proto::SigningKey>(e)?))
            })
            .collect())
    }

    /// Makes this region's first signing key, signing at once, when it has none, and
    /// publishes the ES256 key of each of its keys that signs now or will, if a key
    /// made before ES256 lacks it.
    pub fn ensure_signing_key(&self) -> Result<(), UserError> {
        let region = self.users.region().to_string();
        let keys = self.signing_keys()?;
        if !keys.iter().any(|(_, k)| k.region == region) {
            self.add_signing_key(self.now_ms())?;
            return Ok(());
        }
        let now = self.now_ms();
        // It signs only a publish lead from now, so that verifiers caching the JWKS
        // see it first, as for a rotation.
        let from = now + self.config.publish_lead_s * 1000;
        for (kid, key) in keys {
            let live = key.retired_ms == 0 || now < key.retired_ms;
            if key.region != region || !live || !key.es256_public_key.is_empty() {
                continue;
            }
            // A key this node cannot open now (its master key retired here, say) stays
            // EdDSA only: no reason to refuse to start.
            let public = match self.unseal(&kid, &key) {
                Ok(signer) => signer.es256.public_key(),
                Err(e) => {
                    tracing::warn!(kid, error = %e, "cannot derive the ES256 half of a signing key");
                    continue;
                }
            };
            self.users
                .entries()
                .update(EntryKind::SigningKey, kid.as_bytes(), |stored| {
                    let mut k: proto::SigningKey = decode(stored?)?;
                    k.es256_public_key.is_empty().then(|| {
                        k.es256_public_key = public.clone();
                        k.es256_from_ms = from;
                        k.encode_to_vec()
                    })
                })?;
        }
        Ok(())
    }

    fn add_signing_key(&self, signs_from_ms: u64) -> Result<String, UserError> {
        let now = self.now_ms();
        let region = self.users.region().to_string();
        let kid = format!("{region}-{}", hex::encode(random::<6>()?));
        let seed = zeroize::Zeroizing::new(random::<32>()?);
        let pair = Ed25519KeyPair::from_seed_unchecked(seed.as_ref())
            .map_err(|_| UserError::Crypto(crate::crypto::primitives::CryptoError::Random))?;
        let es256 = Es256Key::derive(&seed).ok_or(UserError::Crypto(
            crate::crypto::primitives::CryptoError::Random,
        ))?;
        let sealed =
            crate::crypto::envelope::seal_secret(&self.users.keyring(), kid.as_bytes(), &seed)
                .map_err(UserError::Crypto)?;
        let value = proto::SigningKey {
            region,
            public_key: pair.public_key().as_ref().to_vec(),
            sealed_seed: Some(sealed),
            published_ms: now,
            signs_from_ms,
            retired_ms: 0,
            es256_public_key: es256.public_key(),
            es256_from_ms: signs_from_ms,
        };
        self.users
            .entries()
            .put(EntryKind::SigningKey, kid.as_bytes(), value.encode_to_vec())?;
        Ok(kid)
    }

    /// Publishes a new signing key for this region now; it signs from
    /// `publish_lead_s` on, and this region's current keys stop signing then.
    pub fn rotate(&self) -> Result<Value, UserError> {
        let signs_from = self.now_ms() + self.config.publish_lead_s * 1000;
        let region = self.users.region().to_string();
        for (kid, key) in self.signing_keys()? {
            if key.region == region && key.retired_ms == 0 {
                self.users
                    .entries()
                    .update(EntryKind::SigningKey, kid.as_bytes(), |stored| {
                        let mut k: proto::SigningKey = decode(stored?)?;
                        (k.retired_ms == 0).then(|| {
                            k.retired_ms = signs_from;
                            k.encode_to_vec()
                        })
                    })?;
            }
        }
        let kid = self.add_signing_key(signs_from)?;
        Ok(json!({"kid": kid, "signs_from_ms": signs_from}))
    }

    /// The key this region signs with now: the latest whose time has come, not retired.
    fn signer(&self) -> Result<(String, proto::SigningKey, Arc<Signer>), UserError> {
        let now = self.now_ms();
        let region = self.users.region().to_string();
        let (kid, key) = self
            .signing_keys()?
            .into_iter()
            .filter(|(_, k)| {
                k.region == region
                    && k.signs_from_ms <= now
                    && (k.retired_ms == 0 || now < k.retired_ms)
            })
            .max_by_key(|(_, k)| k.signs_from_ms)
            .ok_or(UserError::KeyUnavailable(region))?;
        let signer = self.unseal(&kid, &key)?;
        Ok((kid, key, signer))
    }

    /// Signing key `kid` unsealed, from the cache once it has been.
    fn unseal(&self, kid: &str, key: &proto::SigningKey) -> Result<Arc<Signer>, UserError> {
        if let Some(signer) = self.signers.lock().get(kid) {
            return Ok(signer.clone());
        }
        let sealed = key.sealed_seed.as_ref().ok_or(UserError::Unreadable)?;
        let seed =
            crate::crypto::envelope::open_secret(&self.users.keyring(), kid.as_bytes(), sealed)
                .map_err(|_| UserError::Unreadable)?;
        let signer = Arc::new(Signer {
            ed25519: Ed25519KeyPair::from_seed_and_public_key(seed.as_ref(), &key.public_key)
                .map_err(|_| UserError::Unreadable)?,
            es256: Es256Key::derive(&seed).ok_or(UserError::Unreadable)?,
        });
        self.signers.lock().insert(kid.to_string(), signer.clone());
        Ok(signer)
    }

    /// Every region's published keys whose tokens may still be valid, as a JWK set:
    /// each key's Ed25519 half, and its P-256 half once published.
    pub fn jwks(&self) -> Result<Value, UserError> {
        let now = self.now_ms();
        let ttl_ms = self.config.access_ttl_s * 1000;
        let mut keys: Vec<(String, proto::SigningKey)> = self
            .signing_keys()?
            .into_iter()
            .filter(|(_, k)| k.retired_ms == 0 || now < k.retired_ms.saturating_add(ttl_ms))
            .collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = Vec::new();
        for (kid, k) in &keys {
            out.push(json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": B64.encode(&k.public_key),
                "kid": kid,
                "use": "sig",
                "alg": "EdDSA",
            }));
            out.extend(jws::p256_jwk(&k.es256_public_key, &es256_kid(kid)));
        }
        Ok(json!({ "keys": out }))
    }

    /// Signs `claims` as a JWT with this region's current key (`alg` EdDSA).
    pub fn sign_jwt(&self, claims: &Value) -> Result<String, UserError> {
        self.sign_jwt_as(claims, Alg::EdDSA)
    }

    /// Signs `claims` as a JWT with this region's current key, in `alg`. ES256 waits
    /// until the key's P-256 half is published and its time has come
    /// (`es256_from_ms`), so that every verifier can check it.
    pub fn sign_jwt_as(&self, claims: &Value, alg: Alg) -> Result<String, UserError> {
        let (kid, key, signer) = self.signer()?;
        Ok(match alg {
            Alg::EdDSA => jws::encode(
                &json!({"alg": "EdDSA", "typ": "JWT", "kid": kid}),
                claims,
                |m| signer.ed25519.sign(m).as_ref().to_vec(),
            ),
            Alg::ES256 => {
                if key.es256_public_key.is_empty() || self.now_ms() < key.es256_from_ms {
                    return Err(UserError::KeyUnavailable(key.region));
                }
                jws::encode(
                    &json!({"alg": "ES256", "typ": "JWT", "kid": es256_kid(&kid)}),
                    claims,
                    |m| signer.es256.sign(m),
                )
            }
        })
    }

    /// Lifetime of an access token, in seconds.
    pub fn access_ttl_s(&self) -> u64 {
        self.config.access_ttl_s
    }

    /// An access token for `user`; one issued to an OAuth client also names it
    /// (`client_id`) and the scopes granted (`scope`).
    fn access_token(
        &self,
        user: &Uuid,
        client: Option<(&str, &str)>,
    ) -> Result<(String, u64), UserError> {
        let now_s = self.now_ms() / 1000;
        let mut claims = json!({
            "iss": self.config.issuer,
            "aud": self.config.audience,
            "sub": user.to_string(),
            "iat": now_s,
            "exp": now_s + self.config.access_ttl_s,
            "jti": B64.encode(random::<16>()?),
        });
        if let Some((client_id, scope)) = client {
            // Audience-restricted to the client it was issued to: a platform checking
            // for this deployment's audience refuses another client's token.
            claims["aud"] = json!(client_id);
            claims["client_id"] = json!(client_id);
            claims["scope"] = json!(scope);
        }
        Ok((self.sign_jwt(&claims)?, self.config.access_ttl_s))
    }

    /// An access token for `user` issued to OAuth client `client_id` with `scope`,
    /// without a refresh token (a grant without `offline_access`).
    pub fn access_for(
        &self,
        user: &Uuid,
        client_id: &str,
        scope: &str,
    ) -> Result<(String, u64), UserError> {
        self.access_token(user, Some((client_id, scope)))
    }

    /// The claims of an access token this deployment signed and that is still valid:
    /// a published key of any region, `iss` and `aud` this deployment's, not expired.
    /// `None` for anything else.
    pub fn verify_access(&self, token: &str) -> Result<Option<Value>, UserError> {
        // Access tokens are signed EdDSA only: an ES256 one was never issued.
        let Some(jwt) = jws::parse(token).filter(|t| t.alg() == "EdDSA") else {
            return Ok(None);
        };
        let Some(kid) = jwt.kid() else {
            return Ok(None);
        };
        let Some(key) = self
            .users
            .entries()
            .get(EntryKind::SigningKey, kid.as_bytes())?
            .and_then(|e| decode::<proto::SigningKey>(&e))
        else {
            return Ok(None);
        };
        if !jwt.verifies(&jws::PublicKey::Ed25519(key.public_key)) {
            return Ok(None);
        }
        let claims = jwt.claims;
        let now_s = self.now_ms() / 1000;
        // This deployment's audience for a `/v1/login` token, its client's for one
        // issued to an OAuth client.
        let audience_ok = match claims["client_id"].as_str() {
            Some(client) => claims["aud"] == client,
            None => claims["aud"] == self.config.audience.as_str(),
        };
        let live = claims["exp"].as_u64().is_some_and(|exp| now_s < exp)
            && claims["iss"] == self.config.issuer.as_str()
            && audience_ok;
        Ok(live.then_some(claims))
    }

    fn refresh_token(family: &[u8; 16], generation: u32, secret: &[u8; 32]) -> String {
        format!(
            "rt1.{}.{generation}.{}",
            B64.encode(family),
            B64.encode(secret)
        )
    }

    /// Tokens for a user who just logged in against credentials `credentials_ms` (the
    /// record's `credentials_changed_ms` then): a new refresh family.
    pub fn issue(&self, user: Uuid, credentials_ms: u64) -> Result<Issued, UserError> {
        self.issue_family(user, credentials_ms, random::<16>()?, "", "")
    }

    /// [`Tokens::issue`] for family id `family`, issued to OAuth client `client_id`
    /// with `scope` (both empty for a `/v1/login`): only that client may refresh it.
    pub fn issue_family(
        &self,
        user: Uuid,
        credentials_ms: u64,
        family: [u8; 16],
        client_id: &str,
        scope: &str,
    ) -> Result<Issued, UserError> {
        let client = (!client_id.is_empty()).then_some((client_id, scope));
        let (access_token, expires_in) = self.access_token(&user, client)?;
        let secret = random::<32>()?;
        let now = self.now_ms();
        let value = proto::TokenFamily {
            user_id: user.as_bytes().to_vec(),
            generation: 0,
            current_hash: sha256(&secret),
            previous_hashes: Vec::new(),
            created_ms: now,
            expires_ms: now + self.config.refresh_ttl_s * 1000,
            revoked_ms: 0,
            revoked_reason: String::new(),
            credentials_changed_ms: credentials_ms,
            client_id: client_id.to_string(),
            scope: scope.to_string(),
        };
        self.users
            .entries()
            .put(EntryKind::TokenFamily, &family, value.encode_to_vec())?;
        Ok(Issued {
            user_id: user,
            access_token,
            expires_in,
            refresh_token: Self::refresh_token(&family, 0, &secret),
        })
    }

    /// Revokes `family` in every region (a no-op when it is revoked already).
    pub fn revoke_family(&self, family: &[u8; 16], reason: &str) -> Result<(), UserError> {
        let now = self.now_ms();
        self.users
            .entries()
            .update(EntryKind::TokenFamily, family, |stored| {
                let mut f: proto::TokenFamily = decode(stored?)?;
                (f.revoked_ms == 0).then(|| {
                    f.revoked_ms = now;
                    f.revoked_reason = reason.to_string();
                    f.encode_to_vec()
                })
            })?;
        Ok(())
    }

    /// Rotates a refresh token: new tokens, the presented one spent. Only tokens of
    /// `/v1/login`: one issued to an OAuth client is refreshed by that client alone
    /// ([`Tokens::refresh_for`]).
    pub fn refresh(&self, token: &str) -> Result<Issued, TokenError> {
        self.refresh_for(token, None).map(|(issued, _)| issued)
    }

    /// [`Tokens::refresh`] by OAuth client `client` (`None`: `/v1/token/refresh`); also
    /// returns the family's scopes. A token of another client is invalid here, and
    /// nothing of its family changes.
    pub fn refresh_for(
        &self,
        token: &str,
        client: Option<&str>,
    ) -> Result<(Issued, String), TokenError> {
        let Some((family, _, secret)) = parse_refresh(token) else {
            return Err(TokenError::Refused(Refused::Invalid));
        };
        let held = self
            .users
            .entries()
            .get(EntryKind::TokenFamily, &family)?
            .and_then(|e| decode::<proto::TokenFamily>(&e));
        if held
            .as_ref()
            .is_some_and(|f| f.client_id != client.unwrap_or(""))
        {
            return Err(TokenError::Refused(Refused::Invalid));
        }
        let scope = held.map(|f| f.scope).unwrap_or_default();
        let hash = sha256(&secret);
        let now = self.now_ms();
        // A family whose account has not reached this region yet (a login elsewhere,
        // the record still on its way) is refused here for now, before it rotates, and
        // nothing is revoked.
        let owner = self
            .users
            .entries()
            .get(EntryKind::TokenFamily, &family)?
            .and_then(|e| decode::<proto::TokenFamily>(&e))
            .and_then(|f| Uuid::from_slice(&f.user_id).ok());
        if let Some(owner) = owner {
            if self.users.credentials_of(&owner)? == Credentials::NotHere {
                return Err(TokenError::Refused(Refused::Invalid));
            }
        }
        let mut outcome: Result<(Uuid, [u8; 32], u32, u64), Refused> = Err(Refused::Invalid);
        self.users
            .entries()
            .update(EntryKind::TokenFamily, &family, |stored| {
                let mut f: proto::TokenFamily = decode(stored?)?;
                let current = crate::crypto::primitives::ct_eq(&f.current_hash, &hash);
                let earlier = f
                    .previous_hashes
                    .iter()
                    .any(|h| crate::crypto::primitives::ct_eq(h, &hash));
                if f.revoked_ms != 0 {
                    outcome = Err(if current || earlier {
                        Refused::Revoked
                    } else {
                        Refused::Invalid
                    });
                    return None;
                }
                if now >= f.expires_ms && (current || earlier) {
                    outcome = Err(Refused::Expired);
                    return None;
                }
                // Which generation the token is comes from its secret, not from the
                // number written in it, which its holder can change.
                if earlier {
                    outcome = Err(Refused::Reused);
                    f.revoked_ms = now;
                    f.revoked_reason = "reused".into();
                    return Some(f.encode_to_vec());
                }
                if !current {
                    return None;
                }
                let Ok(user) = Uuid::from_slice(&f.user_id) else {
                    return None;
                };
                let Ok(next) = random::<32>() else {
                    return None;
                };
                f.previous_hashes.push(std::mem::take(&mut f.current_hash));
                if f.previous_hashes.len() > PREVIOUS_KEPT {
                    f.previous_hashes.remove(0);
                }
                f.current_hash = sha256(&next);
                f.generation = f.generation.saturating_add(1);
                outcome = Ok((user, next, f.generation, f.credentials_changed_ms));
                Some(f.encode_to_vec())
            })?;
        let (user, next, generation, issued_against) = outcome.map_err(TokenError::Refused)?;
        match self.users.credentials_of(&user)? {
            Credentials::Inactive => {
                self.revoke_family(&family, "account_inactive")?;
                return Err(TokenError::Refused(Refused::AccountInactive));
            }
            // Changed since the login that made the family.
            Credentials::Active(now_held) if now_held > issued_against => {
                self.revoke_family(&family, "credentials_changed")?;
                return Err(TokenError::Refused(Refused::Revoked));
            }
            // Gone since the check before the rotation.
            Credentials::NotHere => {
                self.revoke_family(&family, "account_inactive")?;
                return Err(TokenError::Refused(Refused::AccountInactive));
            }
            // The same credentials, or newer ones this region has not seen yet (the
            // login was made after a change that is still on its way here).
            Credentials::Active(_) => {}
        }
        let granted = client.map(|c| (c, scope.as_str()));
        let (access_token, expires_in) = self.access_token(&user, granted)?;
        Ok((
            Issued {
                user_id: user,
                access_token,
                expires_in,
                refresh_token: Self::refresh_token(&family, generation, &next),
            },
            scope,
        ))
    }

    /// Revokes the family of `token`, in every region. A token of a family already
    /// revoked is accepted (logging out twice is not an error).
    pub fn logout(&self, token: &str) -> Result<(), TokenError> {
        let Some((family, _, secret)) = parse_refresh(token) else {
            return Err(TokenError::Refused(Refused::Invalid));
        };
        let hash = sha256(&secret);
        let known = self
            .users
            .entries()
            .get(EntryKind::TokenFamily, &family)?
            .and_then(|e| decode::<proto::TokenFamily>(&e))
            .is_some_and(|f| {
                crate::crypto::primitives::ct_eq(&f.current_hash, &hash)
                    || f.previous_hashes
                        .iter()
                        .any(|h| crate::crypto::primitives::ct_eq(h, &hash))
            });
        if !known {
            return Err(TokenError::Refused(Refused::Invalid));
        }
        self.revoke_family(&family, "logout")?;
        Ok(())
    }

    /// The family of a refresh token issued to OAuth client `client`, if the token is
    /// one of its secrets (current or earlier): its id and what it holds.
    fn family_of(
        &self,
        token: &str,
        client: &str,
    ) -> Result<Option<([u8; 16], proto::TokenFamily, bool)>, UserError> {
        let Some((family, _, secret)) = parse_refresh(token) else {
            return Ok(None);
        };
        let hash = sha256(&secret);
        Ok(self
            .users
            .entries()
            .get(EntryKind::TokenFamily, &family)?
            .and_then(|e| decode::<proto::TokenFamily>(&e))
            .filter(|f| !client.is_empty() && f.client_id == client)
            .and_then(|f| {
                let current = crate::crypto::primitives::ct_eq(&f.current_hash, &hash);
                let earlier = f
                    .previous_hashes
                    .iter()
                    .any(|h| crate::crypto::primitives::ct_eq(h, &hash));
                (current || earlier).then_some((family, f, current))
            }))
    }

    /// RFC 7009: revokes the family of a refresh token issued to `client`, in every
    /// region. Anything else (an access token, which expires on its own; another
    /// client's token; garbage) changes nothing, and is not an error.
    pub fn revoke_for(&self, token: &str, client: &str) -> Result<(), UserError> {
        if let Some((family, _, _)) = self.family_of(token, client)? {
            self.revoke_family(&family, "revoked")?;
        }
        Ok(())
    }

    /// RFC 7662: what a token issued to `client` is, if it is live: an access token
    /// (its claims) or the current refresh token of a live family. `None` for
    /// anything else, another client's tokens included.
    pub fn introspect_for(&self, token: &str, client: &str) -> Result<Option<Value>, UserError> {
        if let Some(claims) = self.verify_access(token)? {
            if claims["client_id"] == client {
                let mut out = claims;
                out["active"] = json!(true);
                out["token_type"] = json!("access_token");
                return Ok(Some(out));
            }
            return Ok(None);
        }
        let now = self.now_ms();
        Ok(self
            .family_of(token, client)?
            .filter(|(_, f, current)| *current && f.revoked_ms == 0 && now < f.expires_ms)
            .and_then(|(_, f, _)| {
                let user = Uuid::from_slice(&f.user_id).ok()?;
                Some(json!({
                    "active": true,
                    "token_type": "refresh_token",
                    "client_id": client,
                    "scope": f.scope,
                    "sub": user.to_string(),
                    "iat": f.created_ms / 1000,
                    "exp": f.expires_ms / 1000,
                    "iss": self.config.issuer,
                }))
            }))
    }

    /// An access token for a client acting on its own behalf (the client credentials
    /// grant): `sub` is the client id; no refresh token.
    pub fn client_token(&self, client: &str, scope: &str) -> Result<(String, u64), UserError> {
        let now_s = self.now_ms() / 1000;
        let claims = json!({
            "iss": self.config.issuer,
            "aud": client,
            "sub": client,
            "client_id": client,
            "scope": scope,
            "iat": now_s,
            "exp": now_s + self.config.access_ttl_s,
            "jti": B64.encode(random::<16>()?),
        });
        Ok((self.sign_jwt(&claims)?, self.config.access_ttl_s))
    }
}

impl TokenConfig {
    /// Checks the `[tokens]` section.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.issuer.trim().is_empty() || self.audience.trim().is_empty() {
            return Err(invalid("tokens", "issuer and audience must not be empty"));
        }
        if !(60..=86_400).contains(&self.access_ttl_s) {
            return Err(invalid("tokens.access_ttl_s", "must be from 60 to 86400"));
        }
        if !(self.access_ttl_s..=365 * 86_400).contains(&self.refresh_ttl_s) {
            return Err(invalid(
                "tokens.refresh_ttl_s",
                "must be from access_ttl_s to a year",
            ));
        }
        if self.publish_lead_s > 7 * 86_400 {
            return Err(invalid("tokens.publish_lead_s", "must be at most a week"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_parse_only_in_their_exact_shape() {
        let t = Tokens::refresh_token(&[1; 16], 7, &[2; 32]);
        assert_eq!(parse_refresh(&t), Some(([1; 16], 7, [2; 32])));
        for bad in [
            "",
            "rt1",
            "rt2.AQEBAQEBAQEBAQEBAQEBAQ.0.AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI",
            "rt1.AQEB.0.AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI",
            "rt1.AQEBAQEBAQEBAQEBAQEBAQ.-1.AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI",
            "rt1.AQEBAQEBAQEBAQEBAQEBAQ.0.AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI.x",
            "rt1.AQEBAQEBAQEBAQEBAQEBAQ.0.!!",
        ] {
            assert_eq!(parse_refresh(bad), None, "{bad}");
        }
    }

    /// Wall-clock time that a test moves forward.
    struct Manual(Arc<std::sync::atomic::AtomicU64>);

    impl crate::common::hlc::TimeSource for Manual {
        fn now_ms(&self) -> u64 {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    /// Users and tokens of one region on a clock the test moves.
    fn region(dir: &std::path::Path) -> (Arc<Users>, Tokens, Arc<std::sync::atomic::AtomicU64>) {
        use crate::common::hlc::TimeSource as _;
        let keyring = crate::crypto::keyring::init(&["af-south".to_string()])
            .unwrap()
            .remove(0);
        let now = Arc::new(std::sync::atomic::AtomicU64::new(
            crate::common::hlc::SystemClock.now_ms(),
        ));
        let passwords = crate::crypto::password::Passwords::new(
            crate::crypto::password::PasswordAlgorithm::Pbkdf2Sha256,
            keyring.pepper(),
        )
        .unwrap();
        let users = Arc::new(Users::new(
            Arc::new(crate::storage::store::Store::open(dir, &Default::default()).unwrap()),
            keyring,
            passwords,
            Arc::new(crate::common::hlc::Hlc::new(
                "af-south",
                500,
                Box::new(Manual(now.clone())),
            )),
            8,
        ));
        let tokens = Tokens::new(users.clone(), TokenConfig::default());
        tokens.ensure_signing_key().unwrap();
        (users, tokens, now)
    }

    /// A key made before ES256 has no P-256 half published: ES256 waits for it, and
    /// the next start publishes it, the same key every time (derived, not stored), to
    /// sign a publish lead later.
    #[test]
    fn a_key_from_before_es256_gets_its_p256_half_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let (users, tokens, now) = region(dir.path());
        let (kid, mut key) = tokens.signing_keys().unwrap().remove(0);
        let published = key.es256_public_key.clone();
        assert_eq!(published.len(), 65);
        key.es256_public_key.clear();
        users
            .entries()
            .put(EntryKind::SigningKey, kid.as_bytes(), key.encode_to_vec())
            .unwrap();
        let fresh = Tokens::new(users.clone(), TokenConfig::default());
        assert!(matches!(
            fresh.sign_jwt_as(&json!({"sub": "x"}), Alg::ES256),
            Err(UserError::KeyUnavailable(_))
        ));
        assert!(
            fresh.sign_jwt(&json!({"sub": "x"})).is_ok(),
            "EdDSA signs on"
        );
        assert!(!fresh.jwks().unwrap()["keys"].to_string().contains("P-256"));
        fresh.ensure_signing_key().unwrap();
        assert_eq!(
            fresh.signing_keys().unwrap()[0].1.es256_public_key,
            published
        );
        // Published now, it signs a publish lead later, as a rotated key does.
        assert!(fresh.jwks().unwrap()["keys"].to_string().contains("P-256"));
        assert!(matches!(
            fresh.sign_jwt_as(&json!({"sub": "x"}), Alg::ES256),
            Err(UserError::KeyUnavailable(_))
        ));
        now.fetch_add(
            TokenConfig::default().publish_lead_s * 1000,
            std::sync::atomic::Ordering::SeqCst,
        );
        let jwt = fresh.sign_jwt_as(&json!({"sub": "x"}), Alg::ES256).unwrap();
        let jwks = fresh.jwks().unwrap();
        let ec = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == format!("{kid}.es256"))
            .unwrap();
        let key = jws::PublicKey::from_jwk(ec).unwrap();
        assert!(jws::parse(&jwt).unwrap().verifies(&key));
        // An ES256 token is not an access token here, whatever it claims.
        assert_eq!(fresh.verify_access(&jwt).unwrap(), None);
    }

    /// An account to log in as.
    fn ada(users: &Users) -> Uuid {
        let body =
            serde_json::json!({"email": "ada@example.com", "password": "correct horse battery"});
        users
            .create(crate::accounts::input::new_user(&body, 8).unwrap())
            .unwrap()
            .0
    }

    /// The attack: a thief holding a spent refresh token writes the current generation
    /// into it, so that it no longer looks like an earlier one.
    #[test]
    fn a_spent_token_with_its_generation_rewritten_is_still_caught_as_reuse() {
        let dir = tempfile::tempdir().unwrap();
        let (users, tokens, _) = region(dir.path());
        let id = ada(&users);
        let stolen = tokens.issue(id, 0).unwrap().refresh_token;
        let rotated = tokens.refresh(&stolen).unwrap().refresh_token;
        let (family, generation, secret) = parse_refresh(&stolen).unwrap();
        assert_eq!(parse_refresh(&rotated).unwrap().1, generation + 1);
        let rewritten = Tokens::refresh_token(&family, generation + 1, &secret);
        assert!(
            matches!(
                tokens.refresh(&rewritten),
                Err(TokenError::Refused(Refused::Reused))
            ),
            "a spent secret is reuse whatever generation it claims"
        );
        // And the family is gone for the holder of the real token too.
        assert!(matches!(
            tokens.refresh(&rotated),
            Err(TokenError::Refused(Refused::Revoked))
        ));
    }

    /// A region that has not seen the account's latest credentials, or the account at
    /// all, must not end a session that is valid where it was opened.
    #[test]
    fn a_region_behind_the_login_refuses_for_now_and_revokes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (users, tokens, _) = region(dir.path());
        let id = ada(&users);
        // Opened elsewhere after a password change that has not arrived here.
        let ahead = tokens.issue(id, u64::MAX / 2).unwrap();
        assert!(tokens.refresh(&ahead.refresh_token).is_ok());
        // Opened elsewhere for an account not here yet: refused, neither rotated nor
        // revoked, so it works once the account arrives.
        let stranger = tokens.issue(Uuid::new_v4(), 0).unwrap();
        assert!(matches!(
            tokens.refresh(&stranger.refresh_token),
            Err(TokenError::Refused(Refused::Invalid))
        ));
        let (family, _, _) = parse_refresh(&stranger.refresh_token).unwrap();
        let f: proto::TokenFamily = decode(
            &users
                .entries()
                .get(EntryKind::TokenFamily, &family)
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        assert_eq!((f.generation, f.revoked_ms), (0, 0));
    }

    #[test]
    fn the_sweep_removes_expired_families_and_those_of_erased_accounts_only() {
        let dir = tempfile::tempdir().unwrap();
        let (users, tokens, now) = region(dir.path());
        let account = |email: &str| {
            let body = serde_json::json!({"email": email, "password": "correct horse battery"});
            users
                .create(crate::accounts::input::new_user(&body, 8).unwrap())
                .unwrap()
                .0
        };
        let (kept, erased) = (account("kept@example.com"), account("erased@example.com"));
        let live = tokens.issue(kept, 0).unwrap();
        let revoked = tokens.issue(kept, 0).unwrap();
        tokens.logout(&revoked.refresh_token).unwrap();
        tokens.issue(erased, 0).unwrap();
        let families = || users.entries().all(EntryKind::TokenFamily).unwrap().len();
        assert_eq!(
            (tokens.sweep().unwrap(), families()),
            (0, 3),
            "all still matter"
        );
        // An erased account's family goes at once; a revoked one stays until it
        // expires, so that no late copy from before the revocation revives it.
        users.delete(&erased).unwrap();
        assert_eq!((tokens.sweep().unwrap(), families()), (1, 2));
        assert_eq!(tokens.refresh(&live.refresh_token).unwrap().user_id, kept);
        // Past the refresh lifetime both go, and the token is simply unknown.
        now.fetch_add(
            TokenConfig::default().refresh_ttl_s * 1000 + 1,
            std::sync::atomic::Ordering::SeqCst,
        );
        assert_eq!((tokens.sweep().unwrap(), families()), (2, 0));
        assert!(tokens.refresh(&live.refresh_token).is_err());
    }
}
