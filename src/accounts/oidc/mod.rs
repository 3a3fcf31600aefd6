//! An OpenID Connect provider in every region: the member platforms (OAuth clients,
//! [`clients`]) send their customers to one sign-in page, and every region issues and
//! honours the same sessions and tokens.
//!
//! - **Browser sessions** are replicated entries (`BrowserSession`): a customer signed
//!   in at one region is signed in at every region once the entry has arrived, and a
//!   sign-out ends it everywhere. The cookie holds the session id and a secret; the
//!   entry holds only the secret's SHA-256. A session ends with the account's
//!   credentials (a password change, a lock), as refresh tokens do.
//! - **Authorization codes** live in the memory of the node that issued them, for
//!   [`OidcConfig::code_ttl_s`] (60 s): short-lived and single use, they need no
//!   replication, and a code that never leaves one node cannot be spent twice in two
//!   regions within the replication lag. A code presented again revokes the refresh
//!   token family it produced (RFC 6749 §4.1.2). A code brought to another region is
//!   sent on to the one that issued it ([`crate::replication::forward`]), when that
//!   region's `http` address is configured; else it is refused as `invalid_grant`.
//! - **Tokens**: the access and refresh tokens of [`crate::accounts::tokens`], the
//!   refresh family bound to the client, and an ID token signed with the same Ed25519
//!   keys (`alg` EdDSA), or their P-256 halves (ES256) for a client that registers
//!   for it, verified with `/.well-known/jwks.json`.
//! - **Client authentication**: a secret (basic or post), none (a public client, PKCE
//!   alone), or a signed assertion ([`assertion`], `private_key_jwt`).

pub mod assertion;
pub mod clients;
pub mod request;
pub mod second_factor;

use std::collections::HashMap;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use parking_lot::Mutex;
use prost::Message as _;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::accounts::error::UserError;
use crate::accounts::tokens::{Refused, TokenError, Tokens};
use crate::accounts::users::{Credentials, Users};
use crate::common::config::{invalid, Invalid};
use crate::proto::{self, EntryKind};

use self::clients::Clients;
use self::request::AuthRequest;

/// The most codes a node holds at once; past it a sign-in is answered
/// `temporarily_unavailable` until the oldest expire.
const MAX_CODES: usize = 100_000;
/// The most codes one account has waiting for their exchange at once.
const MAX_CODES_PER_ACCOUNT: usize = 16;

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OidcConfig {
    /// The issuer URL every region serves (`iss` of ID tokens, the base of the
    /// discovery document). One for the whole deployment, as the platforms see one
    /// provider; empty: `http(s)://` and this node's listen address.
    pub issuer: String,
    /// Lifetime of an authorization code. Default 60 s.
    pub code_ttl_s: u64,
    /// Lifetime of a browser session from its sign-in. Default 12 h.
    pub session_ttl_s: u64,
}

impl Default for OidcConfig {
    fn default() -> Self {
        OidcConfig {
            issuer: String::new(),
            code_ttl_s: 60,
            session_ttl_s: 12 * 3600,
        }
    }
}

impl OidcConfig {
    /// Checks the `[oidc]` section.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !self.issuer.is_empty() {
            let ok = url::Url::parse(&self.issuer).is_ok_and(|u| {
                matches!(u.scheme(), "https" | "http")
                    && u.query().is_none()
                    && u.fragment().is_none()
                    && !self.issuer.ends_with('/')
            });
            if !ok {
                return Err(invalid(
                    "oidc.issuer",
                    "must be an http(s) URL without query, fragment or trailing slash",
                ));
            }
        }
        if !(10..=600).contains(&self.code_ttl_s) {
            return Err(invalid("oidc.code_ttl_s", "must be from 10 to 600"));
        }
        if !(60..=30 * 86_400).contains(&self.session_ttl_s) {
            return Err(invalid("oidc.session_ttl_s", "must be from 60 to 2592000"));
        }
        Ok(())
    }
}

/// A code handed to a client, waiting for its exchange.
#[derive(Debug, Clone)]
struct Grant {
    request: AuthRequest,
    user: Uuid,
    auth_time_s: u64,
    credentials_ms: u64,
    expires_ms: u64,
    /// Set once exchanged, with the refresh family it produced (when it asked for
    /// `offline_access`), revoked if the code comes again.
    spent: Option<Option<[u8; 16]>>,
}

/// Why a token request is refused, as RFC 6749 §5.2 names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantError {
    pub error: &'static str,
    pub description: String,
}

impl GrantError {
    fn new(error: &'static str, description: impl Into<String>) -> GrantError {
        GrantError {
            error,
            description: description.into(),
        }
    }
}

/// What a successful token request returns.
#[derive(Debug, Clone)]
pub struct Granted {
    pub access_token: String,
    pub expires_in: u64,
    pub refresh_token: Option<String>,
    pub id_token: Option<String>,
    pub scope: String,
}

impl Granted {
    pub fn json(&self) -> Value {
        let mut out = json!({
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "scope": self.scope,
        });
        if let Some(r) = &self.refresh_token {
            out["refresh_token"] = json!(r);
        }
        if let Some(i) = &self.id_token {
            out["id_token"] = json!(i);
        }
        out
    }
}

/// A browser session, found from its cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub user: Uuid,
    pub auth_time_ms: u64,
    pub credentials_ms: u64,
}

pub struct Oidc {
    users: Arc<Users>,
    tokens: Arc<Tokens>,
    config: OidcConfig,
    /// `config.issuer`, or the node's own address when that is empty.
    issuer: parking_lot::RwLock<String>,
    codes: Mutex<HashMap<[u8; 32], Grant>>,
    /// Sign-ins waiting for their second factor, by the SHA-256 of their secret.
    pending: Mutex<second_factor::PendingSet>,
    /// The `jti`s of `private_key_jwt` assertions taken.
    assertions: crate::common::replay::Seen,
}

fn random<const N: usize>() -> Result<[u8; N], UserError> {
    crate::crypto::primitives::random::<N>().map_err(UserError::Crypto)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    crate::crypto::primitives::sha256(bytes)
}

impl Oidc {
    /// An empty `config.issuer` is filled in by [`Oidc::default_issuer`] once the node
    /// knows its address.
    pub fn new(users: Arc<Users>, tokens: Arc<Tokens>, config: OidcConfig) -> Oidc {
        Oidc {
            users,
            tokens,
            issuer: parking_lot::RwLock::new(config.issuer.clone()),
            config,
            codes: Mutex::new(HashMap::new()),
            pending: Mutex::new(Default::default()),
            assertions: crate::common::replay::Seen::new(
                assertion::MAX_REMEMBERED,
                assertion::MAX_REMEMBERED_PER_CLIENT,
            ),
        }
    }

    /// The issuer URL: `iss` of the ID tokens, the base of every endpoint.
    pub fn issuer(&self) -> String {
        self.issuer.read().clone()
    }

    /// Sets the issuer to `url` (the node's own address) unless one is configured.
    pub fn default_issuer(&self, url: String) {
        if self.config.issuer.is_empty() {
            *self.issuer.write() = url;
        }
    }

    /// Lifetime of a browser session, in seconds.
    pub fn session_ttl_s(&self) -> u64 {
        self.config.session_ttl_s
    }

    pub fn clients(&self) -> Clients<'_> {
        Clients::new(self.users.entries())
    }

    fn now_ms(&self) -> u64 {
        self.users.clock_now_ms()
    }

    /// The discovery document (`/.well-known/openid-configuration`).
    pub fn discovery(&self) -> Value {
        let base = &self.issuer();
        json!({
            "issuer": base,
            "authorization_endpoint": format!("{base}/oauth2/authorize"),
            "token_endpoint": format!("{base}/oauth2/token"),
            "userinfo_endpoint": format!("{base}/oauth2/userinfo"),
            "jwks_uri": format!("{base}/.well-known/jwks.json"),
            "end_session_endpoint": format!("{base}/oauth2/logout"),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "revocation_endpoint": format!("{base}/oauth2/revoke"),
            "introspection_endpoint": format!("{base}/oauth2/introspect"),
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": clients::ID_TOKEN_ALGS,
            "scopes_supported": clients::SCOPES,
            "token_endpoint_auth_methods_supported": clients::AUTH_METHODS,
            "token_endpoint_auth_signing_alg_values_supported": ["EdDSA", "ES256", "RS256"],
            "revocation_endpoint_auth_methods_supported": clients::AUTH_METHODS,
            "introspection_endpoint_auth_methods_supported": clients::AUTH_METHODS,
            "code_challenge_methods_supported": ["S256"],
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce",
                "email", "email_verified", "phone_number", "phone_number_verified", "name",
                "given_name", "family_name", "locale"],
            "prompt_values_supported": ["none", "login", "consent", "select_account"],
            "authorization_response_iss_parameter_supported": true,
        })
    }

    // ---- browser sessions

    /// Starts a browser session for `user`, who just signed in; returns the cookie
    /// value.
    pub fn start_session(&self, user: Uuid, credentials_ms: u64) -> Result<String, UserError> {
        let (id, secret) = (random::<16>()?, random::<32>()?);
        let now = self.now_ms();
        let value = proto::BrowserSession {
            user_id: user.as_bytes().to_vec(),
            secret_hash: sha256(&secret).to_vec(),
            auth_time_ms: now,
            expires_ms: now.saturating_add(self.config.session_ttl_s * 1000),
            ended_ms: 0,
            credentials_changed_ms: credentials_ms,
        };
        self.users
            .entries()
            .put(EntryKind::BrowserSession, &id, value.encode_to_vec())?;
        Ok(format!("bs1.{}.{}", B64.encode(id), B64.encode(secret)))
    }

    /// The live session a cookie names: `None` when it is malformed, unknown here
    /// (perhaps not replicated yet), ended, expired, or its account is no longer
    /// active or has changed its credentials since.
    pub fn session(&self, cookie: &str) -> Result<Option<Session>, UserError> {
        let Some((id, secret)) = parse_session(cookie) else {
            return Ok(None);
        };
        let Some(entry) = self.users.entries().get(EntryKind::BrowserSession, &id)? else {
            return Ok(None);
        };
        let Ok(s) = proto::BrowserSession::decode(entry.value.as_slice()) else {
            return Ok(None);
        };
        let now = self.now_ms();
        let secret_ok = crate::crypto::primitives::ct_eq(&s.secret_hash, &sha256(&secret));
        // No longer than this node would make one, whatever the entry says.
        let expires_ms = s.expires_ms.min(
            s.auth_time_ms
                .saturating_add(self.config.session_ttl_s * 1000),
        );
        let Ok(user) = Uuid::from_slice(&s.user_id) else {
            return Ok(None);
        };
        if !secret_ok || s.ended_ms != 0 || now >= expires_ms {
            return Ok(None);
        }
        match self.users.credentials_of(&user)? {
            Credentials::Active(c) if c <= s.credentials_changed_ms => Ok(Some(Session {
                user,
                auth_time_ms: s.auth_time_ms,
                credentials_ms: s.credentials_changed_ms,
            })),
            _ => Ok(None),
        }
    }

    /// Ends the session a cookie names, in every region. A cookie of no live session
    /// is not an error. Where the session has not arrived yet, an ended one is written
    /// in its place: newer, it wins over the sign-in when that arrives, here and in
    /// every region.
    pub fn end_session(&self, cookie: &str) -> Result<(), UserError> {
        let Some((id, secret)) = parse_session(cookie) else {
            return Ok(());
        };
        let now = self.now_ms();
        let hash = sha256(&secret);
        self.users
            .entries()
            .update(EntryKind::BrowserSession, &id, |stored| {
                let Some(stored) = stored else {
                    return Some(
                        proto::BrowserSession {
                            user_id: vec![0; 16],
                            secret_hash: hash.to_vec(),
                            auth_time_ms: now,
                            expires_ms: now.saturating_add(self.config.session_ttl_s * 1000),
                            ended_ms: now,
                            credentials_changed_ms: 0,
                        }
                        .encode_to_vec(),
                    );
                };
                let mut s = proto::BrowserSession::decode(stored.value.as_slice()).ok()?;
                let ours = crate::crypto::primitives::ct_eq(&s.secret_hash, &hash);
                (ours && s.ended_ms == 0).then(|| {
                    s.ended_ms = now;
                    s.encode_to_vec()
                })
            })?;
        Ok(())
    }

    /// Removes the browser sessions that can no longer be used: past their end (an
    /// ended one is kept until then, so that a late copy of its sign-in cannot revive
    /// it), or of an erased account. Returns how many.
    pub fn sweep(&self) -> Result<usize, UserError> {
        let now = self.now_ms();
        self.users
            .entries()
            .sweep(EntryKind::BrowserSession, |e: &proto::Entry| {
                proto::BrowserSession::decode(e.value.as_slice()).is_ok_and(|s| {
                    now >= s.expires_ms
                        || Uuid::from_slice(&s.user_id).is_ok_and(|u| self.users.is_erased(&u))
                })
            })
    }

    // ---- codes

    /// A code for `request`, granted to the session's user.
    pub fn issue_code(
        &self,
        request: &AuthRequest,
        session: &Session,
    ) -> Result<String, UserError> {
        let secret = random::<32>()?;
        let now = self.now_ms();
        let mut codes = self.codes.lock();
        codes.retain(|_, g| g.expires_ms > now);
        // One account holds at most a few codes waiting: a signed-in customer
        // requesting codes in a loop pushes out its own oldest, not everyone's.
        // (Spent ones included: they stay until they expire, to catch a second use;
        // once all it holds are spent, the account waits for them to expire.)
        let held: Vec<([u8; 32], u64, bool)> = codes
            .iter()
            .filter(|(_, g)| g.user == session.user)
            .map(|(k, g)| (*k, g.expires_ms, g.spent.is_some()))
            .collect();
        if held.len() >= MAX_CODES_PER_ACCOUNT {
            match held
                .iter()
                .filter(|(_, _, spent)| !spent)
                .min_by_key(|(_, e, _)| *e)
            {
                Some((oldest, _, _)) => {
                    codes.remove(oldest);
                }
                None => return Err(UserError::KeyUnavailable("authorization codes".into())),
            }
        }
        if codes.len() >= MAX_CODES {
            return Err(UserError::KeyUnavailable("authorization codes".into()));
        }
        codes.insert(
            sha256(&secret),
            Grant {
                request: request.clone(),
                user: session.user,
                auth_time_s: session.auth_time_ms / 1000,
                credentials_ms: session.credentials_ms,
                expires_ms: now.saturating_add(self.config.code_ttl_s * 1000),
                spent: None,
            },
        );
        Ok(format!(
            "ac1.{}.{}",
            self.users.region(),
            B64.encode(secret)
        ))
    }

    /// The authorization code grant: the code, for the client it was issued to, with
    /// the same redirect URI and the PKCE verifier of its challenge.
    pub fn exchange_code(
        &self,
        client: &proto::OAuthClient,
        code: &str,
        redirect_uri: Option<&str>,
        verifier: Option<&str>,
    ) -> Result<Granted, GrantError> {
        let invalid = |d: &str| GrantError::new("invalid_grant", d);
        let Some((region, secret)) = code_parts(code) else {
            return Err(invalid("the code is not one this provider issued"));
        };
        if region != self.users.region() {
            return Err(invalid(
                "the code was issued by another region: exchange it where it was sent",
            ));
        }
        let Some(secret) = B64.decode(secret).ok().filter(|s| s.len() == 32) else {
            return Err(invalid("the code is not one this provider issued"));
        };
        let hash = sha256(&secret);
        let now = self.now_ms();
        let grant = {
            let mut codes = self.codes.lock();
            let Some(grant) = codes.get_mut(&hash) else {
                return Err(invalid("the code is unknown or expired"));
            };
            if grant.request.client_id != client.client_id {
                return Err(invalid("the code was issued to another client"));
            }
            if let Some(family) = grant.spent {
                // A second use by its client: someone else has the code. What the
                // first produced is revoked, and the code stays spent.
                drop(codes);
                if let Some(family) = family {
                    let _ = self.tokens.revoke_family(&family, "code_reused");
                }
                return Err(invalid("the code was used already: its tokens are revoked"));
            }
            if now >= grant.expires_ms {
                return Err(invalid("the code is unknown or expired"));
            }
            if redirect_uri != Some(grant.request.redirect_uri.as_str()) {
                return Err(invalid(
                    "redirect_uri must be the one the authorization request gave",
                ));
            }
            if !verifier
                .is_some_and(|v| request::verifier_matches(v, &grant.request.code_challenge))
            {
                return Err(invalid(
                    "code_verifier is missing or does not match the challenge",
                ));
            }
            // Spent now, before any token exists: a concurrent second use is caught.
            // A refresh token only for offline access, asked for and allowed.
            let family = match grant.request.scopes.iter().any(|s| s == "offline_access") {
                true => Some(
                    random::<16>().map_err(|_| GrantError::new("server_error", "no randomness"))?,
                ),
                false => None,
            };
            grant.spent = Some(family);
            (grant.clone(), family)
        };
        let (grant, family) = grant;
        match self.users.credentials_of(&grant.user) {
            Ok(Credentials::Active(c)) if c <= grant.credentials_ms => {}
            _ => return Err(invalid("the account is no longer signed in")),
        }
        let scope = grant.request.scopes.join(" ");
        let server = |e: UserError| GrantError::new("server_error", e.to_string());
        let (access_token, expires_in, refresh_token) = match family {
            Some(family) => {
                let issued = self
                    .tokens
                    .issue_family(
                        grant.user,
                        grant.credentials_ms,
                        family,
                        &client.client_id,
                        &scope,
                    )
                    .map_err(server)?;
                (
                    issued.access_token,
                    issued.expires_in,
                    Some(issued.refresh_token),
                )
            }
            None => {
                let (at, ttl) = self
                    .tokens
                    .access_for(&grant.user, &client.client_id, &scope)
                    .map_err(server)?;
                (at, ttl, None)
            }
        };
        let id_token = self
            .id_token(&grant.user, client, &grant.request, grant.auth_time_s)
            .map_err(|e| GrantError::new("server_error", e.to_string()))?;
        Ok(Granted {
            access_token,
            expires_in,
            refresh_token,
            id_token: Some(id_token),
            scope,
        })
    }

    /// The refresh token grant: the family must be this client's.
    pub fn refresh(&self, client: &proto::OAuthClient, token: &str) -> Result<Granted, GrantError> {
        match self.tokens.refresh_for(token, Some(&client.client_id)) {
            Ok((issued, scope)) => Ok(Granted {
                access_token: issued.access_token,
                expires_in: issued.expires_in,
                refresh_token: Some(issued.refresh_token),
                id_token: None,
                scope,
            }),
            Err(TokenError::Refused(r)) => Err(GrantError::new(
                "invalid_grant",
                match r {
                    Refused::Invalid => "the refresh token is not valid for this client",
                    Refused::Reused => "the refresh token was used already: its family is revoked",
                    Refused::Revoked => "the refresh token is revoked",
                    Refused::Expired => "the refresh token has expired",
                    Refused::AccountInactive => "the account is no longer active",
                },
            )),
            Err(TokenError::User(e)) => Err(GrantError::new("server_error", e.to_string())),
        }
    }

    /// The client credentials grant: a confidential client's own access token, for
    /// the scopes it asks among those it is allowed (all of them when it asks none),
    /// `openid` aside (no user is signed in).
    pub fn client_credentials(
        &self,
        client: &proto::OAuthClient,
        scope: Option<&str>,
    ) -> Result<Granted, GrantError> {
        if clients::is_public(client) {
            return Err(GrantError::new(
                "unauthorized_client",
                "a public client cannot use the client credentials grant",
            ));
        }
        let allowed: Vec<&str> = client
            .scopes
            .iter()
            .map(String::as_str)
            .filter(|s| *s != "openid" && *s != "offline_access")
            .collect();
        let asked: Vec<&str> = match scope {
            Some(s) => s.split(' ').filter(|s| !s.is_empty()).collect(),
            None => allowed.clone(),
        };
        if asked.iter().any(|s| !allowed.contains(s)) {
            return Err(GrantError::new(
                "invalid_scope",
                "a scope asked for is not allowed to this client",
            ));
        }
        let scope = asked.join(" ");
        let (access_token, expires_in) = self
            .tokens
            .client_token(&client.client_id, &scope)
            .map_err(|e| GrantError::new("server_error", e.to_string()))?;
        Ok(Granted {
            access_token,
            expires_in,
            refresh_token: None,
            id_token: None,
            scope,
        })
    }

    /// The ID token of a code exchange: who signed in, when, for which client, with
    /// the claims its scopes release.
    fn id_token(
        &self,
        user: &Uuid,
        client: &proto::OAuthClient,
        request: &AuthRequest,
        auth_time_s: u64,
    ) -> Result<String, UserError> {
        let now_s = self.now_ms() / 1000;
        let mut claims = json!({
            "iss": self.issuer(),
            "sub": user.to_string(),
            "aud": client.client_id,
            "iat": now_s,
            "exp": now_s + self.tokens.access_ttl_s(),
            "auth_time": auth_time_s,
        });
        if let Some(n) = &request.nonce {
            claims["nonce"] = json!(n);
        }
        self.add_claims(user, &request.scopes, &mut claims)?;
        let alg = crate::accounts::tokens::Alg::named(&client.id_token_alg)
            .unwrap_or(crate::accounts::tokens::Alg::EdDSA);
        self.tokens.sign_jwt_as(&claims, alg)
    }

    /// The claims `scopes` release about `user`, added to `claims`.
    fn add_claims(
        &self,
        user: &Uuid,
        scopes: &[String],
        claims: &mut Value,
    ) -> Result<(), UserError> {
        let view = self.users.get(user)?;
        let has = |s: &str| scopes.iter().any(|k| k == s);
        if has("email") {
            claims["email"] = json!(view.email);
            // Proven by a verification or reset token sent to it.
            claims["email_verified"] = json!(view.email_verified);
        }
        if has("phone") {
            if let Some(p) = &view.phone {
                claims["phone_number"] = json!(p);
                claims["phone_number_verified"] = json!(view.phone_verified);
            }
        }
        if has("profile") {
            for (k, v) in &view.profile {
                if [
                    "name",
                    "given_name",
                    "family_name",
                    "nickname",
                    "locale",
                    "zoneinfo",
                    "website",
                    "picture",
                ]
                .contains(&k.as_str())
                {
                    claims[k.as_str()] = json!(v);
                }
            }
        }
        Ok(())
    }

    /// RFC 7009 for `client`.
    pub fn revoke(&self, client: &proto::OAuthClient, token: &str) -> Result<(), UserError> {
        self.tokens.revoke_for(token, &client.client_id)
    }

    /// RFC 7662 for `client`: `{active: false}` for anything not live or not its own.
    pub fn introspect(&self, client: &proto::OAuthClient, token: &str) -> Result<Value, UserError> {
        Ok(self
            .tokens
            .introspect_for(token, &client.client_id)?
            .unwrap_or_else(|| json!({"active": false})))
    }

    /// `/oauth2/userinfo`: the claims of the user an access token was issued for,
    /// by the scopes it carries.
    pub fn userinfo(&self, access_token: &str) -> Result<Option<Value>, UserError> {
        let Some(claims) = self.tokens.verify_access(access_token)? else {
            return Ok(None);
        };
        let Some(user) = claims["sub"].as_str().and_then(|s| Uuid::parse_str(s).ok()) else {
            return Ok(None);
        };
        let scopes: Vec<String> = claims["scope"]
            .as_str()
            .unwrap_or("")
            .split(' ')
            .map(str::to_string)
            .collect();
        if !scopes.iter().any(|s| s == "openid")
            || self.users.credentials_of(&user)? == Credentials::Inactive
        {
            return Ok(None);
        }
        let mut out = json!({"sub": user.to_string()});
        match self.add_claims(&user, &scopes, &mut out) {
            Ok(()) => Ok(Some(out)),
            Err(UserError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// A code's region and secret part: `ac1.<region>.<secret>`.
fn code_parts(code: &str) -> Option<(&str, &str)> {
    let mut parts = code.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("ac1"), Some(region), Some(secret), None) => Some((region, secret)),
        _ => None,
    }
}

/// The region that issued `code`, which alone can exchange it.
pub fn code_region(code: &str) -> Option<&str> {
    code_parts(code).map(|(region, _)| region)
}

/// A session cookie's id and secret.
fn parse_session(cookie: &str) -> Option<([u8; 16], [u8; 32])> {
    let mut parts = cookie.split('.');
    if parts.next()? != "bs1" {
        return None;
    }
    let id = B64.decode(parts.next()?).ok()?.try_into().ok()?;
    let secret = B64.decode(parts.next()?).ok()?.try_into().ok()?;
    parts.next().is_none().then_some((id, secret))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::hlc::{Hlc, SystemClock};
    use crate::crypto::password::{PasswordAlgorithm, Passwords};
    use crate::storage::store::{Store, StoreOptions};

    pub(super) fn oidc(dir: &std::path::Path) -> Oidc {
        let ring = crate::crypto::keyring::init(&["af-south".into(), "eu-west".into()])
            .unwrap()
            .remove(0);
        let passwords = Passwords::new(PasswordAlgorithm::Argon2id, ring.pepper()).unwrap();
        let store = Arc::new(Store::open(dir, &StoreOptions::default()).unwrap());
        let hlc = Arc::new(Hlc::new("af-south", 500, Box::new(SystemClock)));
        let users = Arc::new(Users::new(store, ring, passwords, hlc, 8));
        let tokens = Arc::new(Tokens::new(users.clone(), Default::default()));
        Oidc::new(users, tokens, OidcConfig::default())
    }

    /// An Ed25519 key of a client's own and its public JWK under `kid`.
    fn client_key(seed: u8, kid: &str) -> (ring::signature::Ed25519KeyPair, Value) {
        use ring::signature::KeyPair as _;
        let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap();
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": kid,
            "x": B64.encode(pair.public_key().as_ref())});
        (pair, jwk)
    }

    /// The attack: junk assertions for a client with several keys, each to be checked
    /// against every key. A JWT must name the one key it is checked with.
    #[test]
    fn an_assertion_for_a_client_with_several_keys_must_name_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let o = oidc(dir.path());
        o.default_issuer("https://af.example".into());
        let (first, first_jwk) = client_key(1, "k1");
        let (_, second_jwk) = client_key(2, "k2");
        let body = json!({"name": "Keyed", "redirect_uris": ["https://shop.example/cb"],
            "token_endpoint_auth_method": "private_key_jwt",
            "jwks": {"keys": [first_jwk, second_jwk]}});
        let (client, secret) = o
            .clients()
            .register(clients::new_client(&body).unwrap(), o.now_ms())
            .unwrap();
        assert_eq!(secret, None);
        let id = client.client_id.as_str();
        let signed = |header: Value, jti: &str| {
            let now = o.now_ms() / 1000;
            let claims = json!({"iss": id, "sub": id, "aud": "https://af.example/oauth2/token",
                "exp": now + 60, "jti": jti});
            crate::crypto::jws::encode(&header, &claims, |m| first.sign(m).as_ref().to_vec())
        };
        let no_kid = signed(json!({"alg": "EdDSA"}), "j1");
        assert!(o
            .assertion_client(&no_kid, None)
            .unwrap_err()
            .contains("must name one"));
        let other_kid = signed(json!({"alg": "EdDSA", "kid": "k2"}), "j2");
        assert!(o
            .assertion_client(&other_kid, None)
            .unwrap_err()
            .contains("does not verify"));
        let named = signed(json!({"alg": "EdDSA", "kid": "k1"}), "j3");
        assert_eq!(o.assertion_client(&named, Some(id)).unwrap().client_id, id);
        assert!(o
            .assertion_client(&named, None)
            .unwrap_err()
            .contains("already used"));
        // A client with a secret, or a public one, never passes with an assertion.
        let plain = json!({"name": "Plain", "redirect_uris": ["https://shop.example/cb"]});
        let (plain, _) = o
            .clients()
            .register(clients::new_client(&plain).unwrap(), o.now_ms())
            .unwrap();
        let now = o.now_ms() / 1000;
        let theirs = crate::crypto::jws::encode(
            &json!({"alg": "EdDSA", "kid": "k1"}),
            &json!({"iss": plain.client_id, "sub": plain.client_id,
                "aud": "https://af.example", "exp": now + 60, "jti": "j4"}),
            |m| first.sign(m).as_ref().to_vec(),
        );
        assert!(o.assertion_client(&theirs, None).is_err());
    }

    fn sessions(o: &Oidc) -> Vec<proto::BrowserSession> {
        o.users
            .entries()
            .all(EntryKind::BrowserSession)
            .unwrap()
            .iter()
            .map(|e| proto::BrowserSession::decode(e.value.as_slice()).unwrap())
            .collect()
    }

    /// Every sign-in writes a session entry, replicated to every region: without a
    /// sweep, a loop of sign-ins would grow every region's store for good. Expired
    /// ones go; live ones, and ended ones until their end, stay.
    #[test]
    fn the_sweep_removes_expired_sessions_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let o = oidc(dir.path());
        let user = Uuid::new_v4();
        let live = o.start_session(user, 0).unwrap();
        let ended = o.start_session(user, 0).unwrap();
        o.end_session(&ended).unwrap();
        let now = o.now_ms();
        let expired = proto::BrowserSession {
            user_id: user.as_bytes().to_vec(),
            secret_hash: vec![1; 32],
            auth_time_ms: now - 7_200_000,
            expires_ms: now - 3_600_000,
            ..Default::default()
        };
        o.users
            .entries()
            .put(EntryKind::BrowserSession, &[9; 16], expired.encode_to_vec())
            .unwrap();
        assert_eq!(sessions(&o).len(), 3);
        assert_eq!(o.sweep().unwrap(), 1);
        assert_eq!(sessions(&o).len(), 2);
        assert!(parse_session(&live).is_some());
        assert_eq!(o.sweep().unwrap(), 0);
    }

    /// A sign-out where the session has not arrived yet (a lagging region) used to
    /// end nothing, and the session then went on working everywhere. It now writes
    /// an ended session in its place, which is newer than the sign-in.
    #[test]
    fn a_sign_out_before_the_session_arrives_ends_it_all_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let o = oidc(dir.path());
        let cookie = format!("bs1.{}.{}", B64.encode([4u8; 16]), B64.encode([5u8; 32]));
        o.end_session(&cookie).unwrap();
        let held = sessions(&o);
        assert_eq!(held.len(), 1);
        assert!(held[0].ended_ms != 0);
        assert_eq!(held[0].secret_hash, sha256(&[5u8; 32]).to_vec());
        let stored = o
            .users
            .entries()
            .get(EntryKind::BrowserSession, &[4; 16])
            .unwrap()
            .unwrap();
        assert!(
            crate::accounts::bounds::entry(&stored).is_ok(),
            "it replicates"
        );
        assert_eq!(o.session(&cookie).unwrap(), None);
    }
}
