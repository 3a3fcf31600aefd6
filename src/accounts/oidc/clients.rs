//! The member platforms that sign their customers in through authsync: OAuth clients,
//! registered by an operator and replicated as entries, so that a client added in one
//! region works in every region.
//!
//! A confidential client (a platform's back end) authenticates at the token endpoint
//! with a secret that authsync makes and shows once; only its SHA-256 is stored (the
//! secret is 32 random bytes, so a fast hash is enough). A public client (an app that
//! cannot keep a secret) has none and relies on PKCE alone. Redirect URIs are matched
//! exactly, character for character.
//!
//! A client that would rather hold no shared secret registers its public keys
//! (`token_endpoint_auth_method` `private_key_jwt`, `jwks` inline: authsync fetches
//! nothing from a client's URL) and signs a short-lived assertion (RFC 7523) for each
//! request instead; see [`crate::accounts::oidc::Oidc::assertion_client`].

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use prost::Message as _;
use serde_json::{json, Value};

use crate::accounts::entries::Entries;
use crate::accounts::error::{Problem, UserError};
use crate::proto::{self, EntryKind};

/// The scopes a client may be allowed, and what each releases.
pub const SCOPES: &[&str] = crate::accounts::bounds::OAUTH_SCOPES;
/// The most redirect URIs one client may register.
pub const MAX_REDIRECT_URIS: usize = 10;
/// The longest redirect URI or client id taken.
pub const MAX_URI_LEN: usize = crate::accounts::bounds::MAX_OAUTH_LEN;
const MAX_NAME_LEN: usize = 100;

/// How a client authenticates at the token endpoint.
pub const AUTH_SECRET_BASIC: &str = "client_secret_basic";
pub const AUTH_SECRET_POST: &str = "client_secret_post";
pub const AUTH_NONE: &str = "none";
pub const AUTH_PRIVATE_KEY_JWT: &str = "private_key_jwt";
/// The methods a client may register.
pub const AUTH_METHODS: &[&str] = &[
    AUTH_SECRET_BASIC,
    AUTH_SECRET_POST,
    AUTH_PRIVATE_KEY_JWT,
    AUTH_NONE,
];
/// The `alg`s an ID token may be signed with.
pub const ID_TOKEN_ALGS: &[&str] = &["EdDSA", "ES256"];

/// A registration as an operator asks for it, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewClient {
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    pub scopes: Vec<String>,
    pub public: bool,
    pub first_party: bool,
    /// One of [`AUTH_METHODS`]: `none` exactly when public.
    pub auth_method: String,
    /// One of [`ID_TOKEN_ALGS`].
    pub id_token_alg: String,
    /// For `private_key_jwt`: its public keys, as JSON text.
    pub jwks: String,
}

/// Whether `client` is public: no secret and no key, PKCE alone. All three must say
/// so, whatever an entry from before the method was checked holds.
pub fn is_public(client: &proto::OAuthClient) -> bool {
    client.auth_method == AUTH_NONE && client.secret_hash.is_empty() && client.jwks.is_empty()
}

fn string_list(
    body: &serde_json::Map<String, Value>,
    field: &str,
    problems: &mut Vec<Problem>,
) -> Vec<String> {
    match body.get(field) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match item.as_str() {
                    Some(s) => out.push(s.to_string()),
                    None => {
                        problems.push(Problem::new(format!("{field}[{i}]"), "must be a string"))
                    }
                }
            }
            out
        }
        Some(_) => {
            problems.push(Problem::new(field, "must be a list of strings"));
            Vec::new()
        }
    }
}

/// Checks a registration request: `{name, redirect_uris, post_logout_redirect_uris?,
/// scopes?, public?, first_party?, token_endpoint_auth_method?,
/// id_token_signed_response_alg?, jwks?}`. Every problem is named by its field.
pub fn new_client(body: &Value) -> Result<NewClient, Vec<Problem>> {
    let Some(fields) = body.as_object() else {
        return Err(vec![Problem::new("body", "must be a JSON object")]);
    };
    let mut problems = Vec::new();
    const KNOWN: &[&str] = &[
        "name",
        "redirect_uris",
        "post_logout_redirect_uris",
        "scopes",
        "public",
        "first_party",
        "token_endpoint_auth_method",
        "id_token_signed_response_alg",
        "jwks",
    ];
    for k in fields.keys().filter(|k| !KNOWN.contains(&k.as_str())) {
        problems.push(Problem::new(
            k.chars().take(64).collect::<String>(),
            "is not a known field",
        ));
    }
    let name = match fields.get("name").and_then(Value::as_str) {
        Some(n)
            if !n.trim().is_empty()
                && n.chars().count() <= MAX_NAME_LEN
                && !n.chars().any(char::is_control) =>
        {
            n.trim().to_string()
        }
        _ => {
            problems.push(Problem::new(
                "name",
                "is required: 1 to 100 characters, no control characters",
            ));
            String::new()
        }
    };
    let uris = |field: &str, required: bool, problems: &mut Vec<Problem>| {
        let list = string_list(fields, field, problems);
        if required && list.is_empty() {
            problems.push(Problem::new(field, "at least one is required"));
        }
        if list.len() > MAX_REDIRECT_URIS {
            problems.push(Problem::new(field, "at most 10"));
        }
        for (i, uri) in list.iter().enumerate() {
            if let Err(why) = crate::accounts::bounds::redirect_uri(uri) {
                problems.push(Problem::new(format!("{field}[{i}]"), why));
            }
        }
        let mut unique = list.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != list.len() {
            problems.push(Problem::new(field, "lists a URI twice"));
        }
        list
    };
    let redirect_uris = uris("redirect_uris", true, &mut problems);
    let post_logout_redirect_uris = uris("post_logout_redirect_uris", false, &mut problems);
    let mut scopes = string_list(fields, "scopes", &mut problems);
    if scopes.is_empty() {
        scopes = vec!["openid".into(), "email".into(), "profile".into()];
    }
    for (i, s) in scopes.iter().enumerate() {
        if !SCOPES.contains(&s.as_str()) {
            problems.push(Problem::new(
                format!("scopes[{i}]"),
                "is not one of openid, email, phone, profile, offline_access",
            ));
        }
    }
    if !scopes.iter().any(|s| s == "openid") {
        problems.push(Problem::new("scopes", "must include openid"));
    }
    scopes.sort();
    scopes.dedup();
    let flag = |field: &str, problems: &mut Vec<Problem>| match fields.get(field) {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            problems.push(Problem::new(field, "must be true or false"));
            false
        }
    };
    let first_party = flag("first_party", &mut problems);
    let public_flag = flag("public", &mut problems);
    let one_of =
        |field: &str, default: &str, allowed: &[&str], problems: &mut Vec<Problem>| match fields
            .get(field)
        {
            None | Some(Value::Null) => default.to_string(),
            Some(Value::String(v)) if allowed.contains(&v.as_str()) => v.clone(),
            Some(_) => {
                problems.push(Problem::new(
                    field,
                    format!("is not one of {}", allowed.join(", ")),
                ));
                String::new()
            }
        };
    let default_method = if public_flag {
        AUTH_NONE
    } else {
        AUTH_SECRET_BASIC
    };
    let auth_method = one_of(
        "token_endpoint_auth_method",
        default_method,
        AUTH_METHODS,
        &mut problems,
    );
    let public = auth_method == AUTH_NONE;
    if public_flag && !public && !auth_method.is_empty() {
        problems.push(Problem::new(
            "token_endpoint_auth_method",
            "a public client authenticates with none",
        ));
    }
    let jwks = match (fields.get("jwks"), auth_method == AUTH_PRIVATE_KEY_JWT) {
        (None | Some(Value::Null), false) => String::new(),
        (None | Some(Value::Null), true) => {
            problems.push(Problem::new(
                "jwks",
                "is required for private_key_jwt: the client's public keys",
            ));
            String::new()
        }
        (Some(_), false) => {
            problems.push(Problem::new("jwks", "is only for private_key_jwt"));
            String::new()
        }
        (Some(set), true) => match crate::crypto::jws::public_key_set(set) {
            Ok(_) => set.to_string(),
            Err(why) => {
                problems.push(Problem::new("jwks", why));
                String::new()
            }
        },
    };
    let id_token_alg = one_of(
        "id_token_signed_response_alg",
        "EdDSA",
        ID_TOKEN_ALGS,
        &mut problems,
    );
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(NewClient {
        name,
        redirect_uris,
        post_logout_redirect_uris,
        scopes,
        public,
        first_party,
        auth_method,
        id_token_alg,
        jwks,
    })
}

/// The registered clients, as replicated entries.
pub struct Clients<'a> {
    entries: &'a Entries,
}

/// A client as the admin API shows it (never its secret or the secret's hash).
pub fn client_json(c: &proto::OAuthClient) -> Value {
    json!({
        "client_id": c.client_id,
        "name": c.name,
        "redirect_uris": c.redirect_uris,
        "post_logout_redirect_uris": c.post_logout_redirect_uris,
        "scopes": c.scopes,
        "public": is_public(c),
        "first_party": c.first_party,
        "token_endpoint_auth_method": c.auth_method,
        "id_token_signed_response_alg": if c.id_token_alg.is_empty() { "EdDSA" } else { &c.id_token_alg },
        "jwks": serde_json::from_str::<Value>(&c.jwks).ok(),
        "created_ms": c.created_ms,
    })
}

impl<'a> Clients<'a> {
    pub fn new(entries: &'a Entries) -> Clients<'a> {
        Clients { entries }
    }

    /// Registers a client; returns it and, for one that authenticates with a secret,
    /// the secret (shown this once).
    pub fn register(
        &self,
        new: NewClient,
        now_ms: u64,
    ) -> Result<(proto::OAuthClient, Option<String>), UserError> {
        let id = format!(
            "c_{}",
            hex::encode(crate::crypto::primitives::random::<12>().map_err(UserError::Crypto)?)
        );
        let secret = if new.public || new.auth_method == AUTH_PRIVATE_KEY_JWT {
            None
        } else {
            Some(format!(
                "cs_{}",
                B64.encode(crate::crypto::primitives::random::<32>().map_err(UserError::Crypto)?)
            ))
        };
        let client = proto::OAuthClient {
            client_id: id.clone(),
            name: new.name,
            secret_hash: secret
                .as_ref()
                .map(|s| crate::crypto::primitives::sha256(s.as_bytes()).to_vec())
                .unwrap_or_default(),
            redirect_uris: new.redirect_uris,
            post_logout_redirect_uris: new.post_logout_redirect_uris,
            scopes: new.scopes,
            first_party: new.first_party,
            created_ms: now_ms,
            removed_ms: 0,
            auth_method: new.auth_method,
            id_token_alg: new.id_token_alg,
            jwks: new.jwks,
        };
        self.entries.put(
            EntryKind::OauthClient,
            id.as_bytes(),
            client.encode_to_vec(),
        )?;
        Ok((client, secret))
    }

    /// The client `id`, unless it is unknown here or removed.
    pub fn get(&self, id: &str) -> Result<Option<proto::OAuthClient>, UserError> {
        if id.is_empty() || id.len() > MAX_URI_LEN {
            return Ok(None);
        }
        Ok(self
            .entries
            .get(EntryKind::OauthClient, id.as_bytes())?
            .and_then(|e| proto::OAuthClient::decode(e.value.as_slice()).ok())
            .filter(|c| c.removed_ms == 0))
    }

    /// Every live client, by id.
    pub fn list(&self) -> Result<Vec<proto::OAuthClient>, UserError> {
        let mut out: Vec<proto::OAuthClient> = self
            .entries
            .all(EntryKind::OauthClient)?
            .iter()
            .filter_map(|e| proto::OAuthClient::decode(e.value.as_slice()).ok())
            .filter(|c| c.removed_ms == 0)
            .collect();
        out.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        Ok(out)
    }

    /// Removes a client in every region: its secret stops working, and so do its
    /// codes and refresh tokens. `None` when there was no such live client.
    pub fn remove(&self, id: &str, now_ms: u64) -> Result<Option<proto::OAuthClient>, UserError> {
        if self.get(id)?.is_none() {
            return Ok(None);
        }
        let mut removed = None;
        self.entries
            .update(EntryKind::OauthClient, id.as_bytes(), |stored| {
                let mut c = proto::OAuthClient::decode(stored?.value.as_slice()).ok()?;
                if c.removed_ms != 0 {
                    return None;
                }
                c.removed_ms = now_ms;
                removed = Some(c.clone());
                Some(c.encode_to_vec())
            })?;
        Ok(removed)
    }
}

/// Whether `presented` is `client`'s secret (constant time). A public client has none.
pub fn secret_matches(client: &proto::OAuthClient, presented: &str) -> bool {
    [AUTH_SECRET_BASIC, AUTH_SECRET_POST].contains(&client.auth_method.as_str())
        && !client.secret_hash.is_empty()
        && crate::crypto::primitives::ct_eq(
            &client.secret_hash,
            &crate::crypto::primitives::sha256(presented.as_bytes()),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED_KEY: &str = "gTl3Dqh9F19Wo1Rmw0x-zMuNipG07jeiXfYPW4_Js5Q";

    /// The attack: a client entry that says `none` but holds a secret or keys (written
    /// before the method was checked, or by a peer) passing as public with its bare id;
    /// a keyed one passing with a secret.
    #[test]
    fn only_a_client_with_neither_secret_nor_keys_is_public() {
        let hash = crate::crypto::primitives::sha256(b"s").to_vec();
        let none = |secret_hash: Vec<u8>, jwks: &str| proto::OAuthClient {
            auth_method: AUTH_NONE.into(),
            secret_hash,
            jwks: jwks.into(),
            ..Default::default()
        };
        assert!(is_public(&none(Vec::new(), "")));
        assert!(!is_public(&none(hash.clone(), "")));
        assert!(!is_public(&none(Vec::new(), "{}")));
        let keyed = proto::OAuthClient {
            auth_method: AUTH_PRIVATE_KEY_JWT.into(),
            secret_hash: hash.clone(),
            ..Default::default()
        };
        assert!(!secret_matches(&keyed, "s") && !is_public(&keyed));
        let basic = proto::OAuthClient {
            auth_method: AUTH_SECRET_BASIC.into(),
            secret_hash: hash,
            ..Default::default()
        };
        assert!(secret_matches(&basic, "s") && !secret_matches(&basic, "t"));
    }

    /// What would let a client in without a credential, or sign its tokens with
    /// nothing, is refused at registration, naming the field.
    #[test]
    fn a_keyed_registration_needs_public_keys_and_nothing_else() {
        let base = json!({"name": "Shop", "redirect_uris": ["https://shop.example/cb"]});
        let with = |extra: Value| {
            let mut b = base.clone();
            b.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            new_client(&b)
        };
        let ok = with(json!({"token_endpoint_auth_method": "private_key_jwt",
            "id_token_signed_response_alg": "ES256",
            "jwks": {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": ED_KEY, "kid": "k1"}]}}))
        .unwrap();
        assert_eq!(
            (ok.auth_method.as_str(), ok.id_token_alg.as_str(), ok.public),
            ("private_key_jwt", "ES256", false)
        );
        assert!(ok.jwks.contains("k1"));
        let plain = new_client(&base).unwrap();
        assert_eq!(
            (plain.auth_method.as_str(), plain.id_token_alg.as_str()),
            ("client_secret_basic", "EdDSA")
        );
        assert_eq!(with(json!({"public": true})).unwrap().auth_method, "none");
        for (extra, field) in [
            (
                json!({"token_endpoint_auth_method": "private_key_jwt"}),
                "jwks",
            ),
            (
                json!({"token_endpoint_auth_method": "private_key_jwt",
                "jwks": {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": ED_KEY, "d": ED_KEY}]}}),
                "jwks",
            ),
            (
                json!({"jwks": {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": ED_KEY}]}}),
                "jwks",
            ),
            (
                json!({"public": true, "token_endpoint_auth_method": "private_key_jwt",
                "jwks": {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": ED_KEY}]}}),
                "token_endpoint_auth_method",
            ),
            (
                json!({"token_endpoint_auth_method": "client_secret_jwt"}),
                "token_endpoint_auth_method",
            ),
            (
                json!({"id_token_signed_response_alg": "none"}),
                "id_token_signed_response_alg",
            ),
            (
                json!({"id_token_signed_response_alg": "HS256"}),
                "id_token_signed_response_alg",
            ),
        ] {
            let problems = with(extra.clone()).unwrap_err();
            assert!(
                problems.iter().any(|p| p.field == field),
                "{extra}: {problems:?}"
            );
        }
    }

    #[test]
    fn a_registration_is_checked_field_by_field() {
        let ok = new_client(&json!({
            "name": "Shop",
            "redirect_uris": ["https://shop.example/cb", "http://127.0.0.1:8080/cb"],
        }))
        .unwrap();
        assert_eq!(ok.scopes, vec!["email", "openid", "profile"]);
        assert!(!ok.public && !ok.first_party);
        let bad = new_client(&json!({
            "name": "",
            "redirect_uris": [
                "http://shop.example/cb",
                "https://shop.example/cb#frag",
                "https://user:pw@shop.example/cb",
                "/relative",
                "javascript:alert(1)",
            ],
            "scopes": ["openid", "admin"],
            "public": "yes",
            "extra": 1,
        }))
        .unwrap_err();
        let fields: Vec<&str> = bad.iter().map(|p| p.field.as_str()).collect();
        for f in [
            "name",
            "redirect_uris[0]",
            "redirect_uris[1]",
            "redirect_uris[2]",
            "redirect_uris[3]",
            "redirect_uris[4]",
            "scopes[1]",
            "public",
            "extra",
        ] {
            assert!(fields.contains(&f), "{f} not named in {fields:?}");
        }
        let no_openid = new_client(&json!({
            "name": "x", "redirect_uris": ["https://a.example/"], "scopes": ["email"],
        }))
        .unwrap_err();
        assert!(no_openid.iter().any(|p| p.field == "scopes"));
        let twice = new_client(&json!({
            "name": "x", "redirect_uris": ["https://a.example/", "https://a.example/"],
        }))
        .unwrap_err();
        assert!(twice.iter().any(|p| p.field == "redirect_uris"));
    }
}
