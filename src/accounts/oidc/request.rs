//! An authorization request (`/oauth2/authorize`), checked as OpenID Connect Core 1.0
//! and OAuth 2.1 ask: the authorization code flow only, PKCE with S256 required, the
//! redirect URI matched exactly against the client's registration.
//!
//! What is wrong with the client or its redirect URI is shown to the user and never
//! redirected (the URI cannot be trusted); every other problem goes back to the
//! client's redirect URI as `error` and `error_description`, with its `state`.

use std::collections::BTreeMap;

use crate::proto;

/// The longest `state` or `nonce` taken.
pub const MAX_PARAM_LEN: usize = 512;

/// A checked authorization request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRequest {
    pub client_id: String,
    pub redirect_uri: String,
    /// The scopes granted: those asked for, each allowed to the client.
    pub scopes: Vec<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: String,
    pub prompt: Prompt,
    /// Seconds: a sign-in older than this must be made again.
    pub max_age: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prompt {
    /// Sign in only if there is no session.
    Default,
    /// Sign in again, whatever the session.
    Login,
    /// Never show a page: without a session, `login_required`.
    None,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Shown on a page, not redirected: the client or its redirect URI is wrong.
    Page(String),
    /// Sent back to the client's redirect URI.
    Redirect {
        redirect_uri: String,
        state: Option<String>,
        error: &'static str,
        description: String,
    },
}

/// The request's parameters, each at most once (a repeated one is refused, as OAuth
/// asks).
pub fn params(pairs: Vec<(String, String)>) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (k, v) in pairs {
        if out.contains_key(&k) {
            return Err(format!(
                "the parameter {} is given more than once",
                k.chars().take(64).collect::<String>()
            ));
        }
        out.insert(k, v);
    }
    Ok(out)
}

/// Checks `params` against `client` (or its absence).
pub fn check(
    params: &BTreeMap<String, String>,
    client: Option<&proto::OAuthClient>,
) -> Result<AuthRequest, Refusal> {
    let get = |k: &str| params.get(k).map(String::as_str);
    let Some(client) = client else {
        return Err(Refusal::Page(match get("client_id") {
            None => "The request names no client (client_id).".into(),
            Some(_) => "The request names a client that is not registered.".into(),
        }));
    };
    let Some(redirect_uri) = get("redirect_uri") else {
        return Err(Refusal::Page(
            "The request has no redirect_uri; it is required.".into(),
        ));
    };
    if !client.redirect_uris.iter().any(|u| u == redirect_uri) {
        return Err(Refusal::Page(
            "The redirect_uri is not one registered for this client.".into(),
        ));
    }
    let state = get("state").map(str::to_string);
    let refuse = |error: &'static str, description: &str| Refusal::Redirect {
        redirect_uri: redirect_uri.to_string(),
        state: state.clone(),
        error,
        description: description.to_string(),
    };
    if state.as_ref().is_some_and(|s| s.len() > MAX_PARAM_LEN) {
        return Err(Refusal::Page("state is longer than 512 characters.".into()));
    }
    match get("response_type") {
        Some("code") => {}
        None => return Err(refuse("invalid_request", "response_type is required")),
        Some(_) => {
            return Err(refuse(
                "unsupported_response_type",
                "only the authorization code flow (response_type=code) is supported",
            ))
        }
    }
    if let Some(mode) = get("response_mode") {
        if mode != "query" {
            return Err(refuse(
                "invalid_request",
                "only response_mode=query is supported",
            ));
        }
    }
    for unsupported in ["request", "request_uri"] {
        if params.contains_key(unsupported) {
            return Err(refuse(
                if unsupported == "request" {
                    "request_not_supported"
                } else {
                    "request_uri_not_supported"
                },
                "request objects are not supported",
            ));
        }
    }
    let asked: Vec<&str> = get("scope")
        .unwrap_or("")
        .split(' ')
        .filter(|s| !s.is_empty())
        .collect();
    if !asked.contains(&"openid") {
        return Err(refuse("invalid_scope", "scope must include openid"));
    }
    let mut scopes = Vec::new();
    for s in asked {
        if !client.scopes.iter().any(|c| c == s) {
            return Err(refuse(
                "invalid_scope",
                "a scope asked for is not allowed to this client",
            ));
        }
        if !scopes.iter().any(|k: &String| k == s) {
            scopes.push(s.to_string());
        }
    }
    let code_challenge = match (get("code_challenge"), get("code_challenge_method")) {
        (Some(c), Some("S256")) if is_challenge(c) => c.to_string(),
        (None, _) => {
            return Err(refuse(
                "invalid_request",
                "code_challenge (PKCE) is required",
            ))
        }
        (Some(_), Some("S256")) => {
            return Err(refuse(
                "invalid_request",
                "code_challenge must be the 43-character base64url SHA-256 of the verifier",
            ))
        }
        (Some(_), _) => {
            return Err(refuse(
                "invalid_request",
                "code_challenge_method must be S256",
            ))
        }
    };
    let nonce = get("nonce").map(str::to_string);
    if nonce.as_ref().is_some_and(|n| n.len() > MAX_PARAM_LEN) {
        return Err(refuse(
            "invalid_request",
            "nonce is longer than 512 characters",
        ));
    }
    let prompt = match get("prompt").unwrap_or("") {
        "" | "consent" | "select_account" => Prompt::Default,
        "login" => Prompt::Login,
        "none" => Prompt::None,
        _ => {
            return Err(refuse(
                "invalid_request",
                "prompt must be one of none, login, consent, select_account",
            ))
        }
    };
    let max_age = match get("max_age") {
        None => None,
        Some(v) => match v.parse::<u64>() {
            Ok(s) if s <= 10 * 365 * 86_400 => Some(s),
            _ => {
                return Err(refuse(
                    "invalid_request",
                    "max_age must be a number of seconds",
                ))
            }
        },
    };
    Ok(AuthRequest {
        client_id: client.client_id.clone(),
        redirect_uri: redirect_uri.to_string(),
        scopes,
        state,
        nonce,
        code_challenge,
        prompt,
        max_age,
    })
}

/// A S256 challenge: 43 base64url characters (32 bytes).
fn is_challenge(c: &str) -> bool {
    c.len() == 43
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether `verifier` (RFC 7636: 43 to 128 unreserved characters) hashes to
/// `challenge`.
pub fn verifier_matches(verifier: &str, challenge: &str) -> bool {
    use base64::Engine as _;
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    let hashed = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(crate::crypto::primitives::sha256(verifier.as_bytes()));
    well_formed && crate::crypto::primitives::ct_eq(hashed.as_bytes(), challenge.as_bytes())
}

impl AuthRequest {
    /// The request as the parameters it came from: what the sign-in form carries in
    /// hidden fields and checks again when it is posted.
    pub fn to_params(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![
            ("client_id", self.client_id.clone()),
            ("redirect_uri", self.redirect_uri.clone()),
            ("response_type", "code".to_string()),
            ("scope", self.scopes.join(" ")),
            ("code_challenge", self.code_challenge.clone()),
            ("code_challenge_method", "S256".to_string()),
        ];
        if let Some(s) = &self.state {
            out.push(("state", s.clone()));
        }
        if let Some(n) = &self.nonce {
            out.push(("nonce", n.clone()));
        }
        if let Some(m) = self.max_age {
            out.push(("max_age", m.to_string()));
        }
        if self.prompt == Prompt::Login {
            out.push(("prompt", "login".to_string()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> proto::OAuthClient {
        proto::OAuthClient {
            client_id: "c_1".into(),
            redirect_uris: vec!["https://shop.example/cb".into()],
            scopes: vec!["openid".into(), "email".into()],
            ..Default::default()
        }
    }

    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    fn good() -> BTreeMap<String, String> {
        [
            ("client_id", "c_1"),
            ("redirect_uri", "https://shop.example/cb"),
            ("response_type", "code"),
            ("scope", "openid email"),
            ("state", "s1"),
            ("code_challenge", CHALLENGE),
            ("code_challenge_method", "S256"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn the_rfc_7636_example_verifier_matches_its_challenge() {
        assert!(verifier_matches(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
            CHALLENGE
        ));
        assert!(!verifier_matches(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXj",
            CHALLENGE
        ));
        assert!(!verifier_matches("short", CHALLENGE));
    }

    #[test]
    fn a_redirect_uri_one_character_off_is_refused_on_a_page_not_redirected() {
        let c = client();
        assert!(check(&good(), Some(&c)).is_ok());
        for uri in [
            "https://shop.example/cb/",
            "https://shop.example/c",
            "https://shop.example/cb?x=1",
            "https://shop.example/CB",
            "http://shop.example/cb",
        ] {
            let mut p = good();
            p.insert("redirect_uri".into(), uri.into());
            assert!(
                matches!(check(&p, Some(&c)), Err(Refusal::Page(_))),
                "{uri}"
            );
        }
        assert!(matches!(check(&good(), None), Err(Refusal::Page(_))));
    }

    #[test]
    fn pkce_s256_openid_and_allowed_scopes_are_required() {
        let c = client();
        let cases: Vec<(&str, Option<&str>, &str)> = vec![
            ("code_challenge", None, "invalid_request"),
            ("code_challenge_method", Some("plain"), "invalid_request"),
            ("code_challenge", Some("short"), "invalid_request"),
            ("scope", Some("email"), "invalid_scope"),
            ("scope", Some("openid phone"), "invalid_scope"),
            ("response_type", Some("token"), "unsupported_response_type"),
            ("prompt", Some("sometimes"), "invalid_request"),
            ("max_age", Some("-1"), "invalid_request"),
        ];
        for (field, value, expected) in cases {
            let mut p = good();
            match value {
                Some(v) => p.insert(field.into(), v.into()),
                None => p.remove(field),
            };
            match check(&p, Some(&c)) {
                Err(Refusal::Redirect { error, state, .. }) => {
                    assert_eq!(error, expected, "{field}={value:?}");
                    assert_eq!(state.as_deref(), Some("s1"));
                }
                other => panic!("{field}={value:?}: {other:?}"),
            }
        }
        assert!(params(vec![("a".into(), "1".into()), ("a".into(), "2".into())]).is_err());
    }
}
