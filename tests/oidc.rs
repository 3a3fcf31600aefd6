//! The OpenID Connect provider from the outside, as a platform's back end and a
//! customer's browser use it: a client registered by the admin API, the hosted
//! sign-in page (its CSRF token and cookies), the code exchange with PKCE, the ID
//! token checked against the JWKS, userinfo, refresh, and the refusals a relying
//! party and an attacker would run into. Across regions: a session made in one is
//! honoured in another with `prompt=none`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use common::{Cluster, TestNode};
use serde_json::{json, Value};

const PW: &str = "correct horse battery";
const REDIRECT: &str = "http://127.0.0.1:9/callback";

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A registered client: (id, secret).
async fn register(url: &str, body: Value) -> (String, Option<String>) {
    let (status, c) = common::call_as(
        url,
        common::API_KEY,
        "POST",
        "/v1/admin/oauth-clients",
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{c}");
    (
        c["client_id"].as_str().unwrap().to_string(),
        c["client_secret"].as_str().map(str::to_string),
    )
}

async fn shop(url: &str) -> (String, String) {
    let (id, secret) = register(
        url,
        json!({"name": "Shop", "redirect_uris": [REDIRECT], "scopes": ["openid", "email", "profile", "offline_access"], "first_party": true}),
    )
    .await;
    (id, secret.unwrap())
}

/// A PKCE pair: (verifier, S256 challenge).
fn pkce(seed: u8) -> (String, String) {
    let verifier = B64.encode([seed; 40]);
    let challenge = B64.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ));
    (verifier, challenge)
}

fn authorize_url(base: &str, client_id: &str, challenge: &str, extra: &[(&str, &str)]) -> String {
    let mut u = url::Url::parse(&format!("{base}/oauth2/authorize")).unwrap();
    {
        let mut q = u.query_pairs_mut();
        for (k, v) in [
            ("client_id", client_id),
            ("redirect_uri", REDIRECT),
            ("response_type", "code"),
            ("scope", "openid email offline_access"),
            ("state", "st-1"),
            ("nonce", "n-1"),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ] {
            // An extra parameter of the same name replaces the default.
            if !extra.iter().any(|(e, _)| *e == k) {
                q.append_pair(k, v);
            }
        }
        for (k, v) in extra {
            q.append_pair(k, v);
        }
    }
    u.to_string()
}

/// The value of `name` among a response's `Set-Cookie` headers.
fn set_cookie(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// The hidden fields of the sign-in form in `html`.
fn hidden_fields(html: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for part in html.split("<input type=\"hidden\" ").skip(1) {
        let attr = |name: &str| {
            part.split(&format!("{name}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .map(|v| {
                    v.replace("&amp;", "&")
                        .replace("&quot;", "\"")
                        .replace("&lt;", "<")
                        .replace("&gt;", ">")
                        .replace("&#39;", "'")
                })
        };
        if let (Some(n), Some(v)) = (attr("name"), attr("value")) {
            out.insert(n, v);
        }
    }
    out
}

/// `/oauth2/authorize` with `prompt`, from a browser holding `session`.
async fn with_session(
    base: &str,
    client_id: &str,
    challenge: &str,
    prompt: &str,
    session: &str,
) -> reqwest::Response {
    browser()
        .get(authorize_url(
            base,
            client_id,
            challenge,
            &[("prompt", prompt)],
        ))
        .header("cookie", format!("authsync_session={session}"))
        .send()
        .await
        .unwrap()
}

/// The query parameters of a redirect's `Location`.
fn location_params(resp: &reqwest::Response) -> BTreeMap<String, String> {
    let loc = resp
        .headers()
        .get("location")
        .expect("a Location")
        .to_str()
        .unwrap();
    assert!(loc.starts_with(REDIRECT), "{loc}");
    url::Url::parse(loc)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

struct SignedIn {
    code: String,
    session: String,
}

/// Opens the sign-in page and posts the form; returns the redirect's code and the
/// session cookie.
async fn sign_in(
    base: &str,
    client_id: &str,
    challenge: &str,
    login: &str,
    password: &str,
) -> Result<SignedIn, (u16, String)> {
    let b = browser();
    let page = b
        .get(authorize_url(base, client_id, challenge, &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csrf_cookie = set_cookie(&page, "authsync_csrf").expect("a CSRF cookie");
    let html = page.text().await.unwrap();
    assert!(html.contains("<label for=\"login\">") && html.contains("<label for=\"password\">"));
    let mut form = hidden_fields(&html);
    form.insert("login".into(), login.into());
    form.insert("password".into(), password.into());
    let resp = b
        .post(format!("{base}/oauth2/authorize"))
        .header("cookie", format!("authsync_csrf={csrf_cookie}"))
        .form(&form)
        .send()
        .await
        .unwrap();
    if resp.status() != 303 {
        let status = resp.status().as_u16();
        return Err((status, resp.text().await.unwrap()));
    }
    let session = set_cookie(&resp, "authsync_session").expect("a session cookie");
    let params = location_params(&resp);
    assert_eq!(params["state"], "st-1");
    assert_eq!(params["iss"], base);
    Ok(SignedIn {
        code: params["code"].clone(),
        session,
    })
}

async fn token(base: &str, id: &str, secret: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let resp = browser()
        .post(format!("{base}/oauth2/token"))
        .basic_auth(id, Some(secret))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    assert_eq!(resp.headers().get("cache-control").unwrap(), "no-store");
    (status, resp.json().await.unwrap())
}

async fn exchange(base: &str, id: &str, secret: &str, code: &str, verifier: &str) -> (u16, Value) {
    token(
        base,
        id,
        secret,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
        ],
    )
    .await
}

/// The `alg` of `jwt` and the JWK the JWKS at `base` publishes under its kid.
async fn published_key(base: &str, jwt: &str) -> (String, Value) {
    let jwks: Value = reqwest::get(format!("{base}/.well-known/jwks.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    let header: Value = serde_json::from_slice(&B64.decode(parts[0]).unwrap()).unwrap();
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .expect("the kid is published");
    (header["alg"].as_str().unwrap().to_string(), key.clone())
}

/// The claims of `jwt`, once its signature verifies with `alg` and `public_key`.
fn claims_verified(
    jwt: &str,
    alg: &'static dyn ring::signature::VerificationAlgorithm,
    public_key: &[u8],
) -> Value {
    let parts: Vec<&str> = jwt.split('.').collect();
    ring::signature::UnparsedPublicKey::new(alg, public_key)
        .verify(
            format!("{}.{}", parts[0], parts[1]).as_bytes(),
            &B64.decode(parts[2]).unwrap(),
        )
        .expect("the signature verifies");
    serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap()
}

/// The claims of `jwt`, once its EdDSA signature verifies against a key of the JWKS
/// at `base`.
async fn verified_claims(base: &str, jwt: &str) -> Value {
    let (alg, key) = published_key(base, jwt).await;
    assert_eq!(alg, "EdDSA");
    let x = B64.decode(key["x"].as_str().unwrap()).unwrap();
    claims_verified(jwt, &ring::signature::ED25519, &x)
}

#[tokio::test]
async fn a_platform_signs_a_customer_in_with_a_code_and_pkce() {
    let node = TestNode::start();
    let user = node.client().create("ada@example.com", PW).await;
    let (id, secret) = shop(&node.url).await;
    let discovery: Value = reqwest::get(format!("{}/.well-known/openid-configuration", node.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(discovery["issuer"], node.url.as_str());
    assert_eq!(
        discovery["token_endpoint"],
        format!("{}/oauth2/token", node.url)
    );
    assert_eq!(
        discovery["code_challenge_methods_supported"],
        json!(["S256"])
    );

    let (verifier, challenge) = pkce(1);
    let signed = sign_in(&node.url, &id, &challenge, "ada@example.com", PW)
        .await
        .unwrap();
    let (status, tokens) = exchange(&node.url, &id, &secret, &signed.code, &verifier).await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    let claims = verified_claims(&node.url, tokens["id_token"].as_str().unwrap()).await;
    assert_eq!(claims["iss"], node.url.as_str());
    assert_eq!(claims["aud"], id.as_str());
    assert_eq!(claims["sub"], user.as_str());
    assert_eq!(claims["nonce"], "n-1");
    assert_eq!(claims["email"], "ada@example.com");
    // The access token is audience-restricted to this client: a platform's API that
    // checks for the deployment's audience ("authsync") refuses it.
    let access = verified_claims(&node.url, tokens["access_token"].as_str().unwrap()).await;
    assert_eq!(access["aud"], id.as_str());
    assert_eq!(access["client_id"], id.as_str());
    // Without offline_access, no refresh token.
    let (v2, c2) = pkce(12);
    let b = browser();
    let online = b
        .get(authorize_url(
            &node.url,
            &id,
            &c2,
            &[("scope", "openid email"), ("prompt", "none")],
        ))
        .header("cookie", format!("authsync_session={}", signed.session))
        .send()
        .await
        .unwrap();
    let code = location_params(&online)["code"].clone();
    let (status, online) = exchange(&node.url, &id, &secret, &code, &v2).await;
    assert_eq!(status, 200, "{online}");
    assert!(online["refresh_token"].is_null(), "{online}");
    assert!(claims["auth_time"].as_u64().unwrap() <= claims["iat"].as_u64().unwrap());

    let info = browser()
        .get(format!("{}/oauth2/userinfo", node.url))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(info.status(), 200);
    let info: Value = info.json().await.unwrap();
    assert_eq!(info["sub"], user.as_str());
    assert_eq!(info["email"], "ada@example.com");
    let bad = browser()
        .get(format!("{}/oauth2/userinfo", node.url))
        .bearer_auth("not.a.token")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);

    // Refresh rotates; the old refresh token is then reuse.
    let first = tokens["refresh_token"].as_str().unwrap().to_string();
    let (status, refreshed) = token(
        &node.url,
        &id,
        &secret,
        &[("grant_type", "refresh_token"), ("refresh_token", &first)],
    )
    .await;
    assert_eq!(status, 200, "{refreshed}");
    assert!(refreshed["id_token"].is_null());
    let (status, again) = token(
        &node.url,
        &id,
        &secret,
        &[("grant_type", "refresh_token"), ("refresh_token", &first)],
    )
    .await;
    assert_eq!(
        (status, again["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    // The session signs the customer in again without a page, and prompt=login asks.
    let (_, challenge2) = pkce(2);
    let again = with_session(&node.url, &id, &challenge2, "none", &signed.session).await;
    assert_eq!(again.status(), 303);
    assert!(location_params(&again).contains_key("code"));
    let login = with_session(&node.url, &id, &challenge2, "login", &signed.session).await;
    assert_eq!(login.status(), 200, "prompt=login shows the form");
}

/// The attacks on the code: replayed, exchanged without or with the wrong verifier,
/// by another client, to a redirect URI one character off; each refused, and a
/// replayed code revokes what its first exchange produced.
#[tokio::test]
async fn codes_are_single_use_bound_to_their_client_redirect_uri_and_verifier() {
    let node = TestNode::start();
    node.client().create("bob@example.com", PW).await;
    let (id, secret) = shop(&node.url).await;
    let (other_id, other_secret) = shop(&node.url).await;
    let (verifier, challenge) = pkce(3);

    let code = sign_in(&node.url, &id, &challenge, "bob@example.com", PW)
        .await
        .unwrap()
        .code;
    let refused = |(status, body): (u16, Value)| {
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"], "invalid_grant", "{body}");
    };
    // Wrong and missing verifiers, another client, another redirect URI: each
    // refused, and (the checks come before the code is spent) the code still works.
    let (wrong, _) = pkce(4);
    refused(exchange(&node.url, &id, &secret, &code, &wrong).await);
    refused(
        token(
            &node.url,
            &id,
            &secret,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", REDIRECT),
            ],
        )
        .await,
    );
    refused(exchange(&node.url, &other_id, &other_secret, &code, &verifier).await);
    refused(
        token(
            &node.url,
            &id,
            &secret,
            &[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", "http://127.0.0.1:9/callbacK"),
                ("code_verifier", &verifier),
            ],
        )
        .await,
    );
    // A wrong client secret is invalid_client, 401.
    let (status, body) = exchange(&node.url, &id, "cs_wrong", &code, &verifier).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );

    let (status, tokens) = exchange(&node.url, &id, &secret, &code, &verifier).await;
    assert_eq!(status, 200, "{tokens}");
    // Presented again by another client (anyone can name a public client): refused,
    // and what its client got is not revoked.
    refused(exchange(&node.url, &other_id, &other_secret, &code, &verifier).await);
    let rt = tokens["refresh_token"].as_str().unwrap();
    let (status, tokens) = token(
        &node.url,
        &id,
        &secret,
        &[("grant_type", "refresh_token"), ("refresh_token", rt)],
    )
    .await;
    assert_eq!(
        status, 200,
        "another client's replay revoked nothing: {tokens}"
    );
    // Replayed by its client: refused, and the refresh token family of the first
    // exchange is revoked.
    refused(exchange(&node.url, &id, &secret, &code, &verifier).await);
    let rt = tokens["refresh_token"].as_str().unwrap();
    refused(
        token(
            &node.url,
            &id,
            &secret,
            &[("grant_type", "refresh_token"), ("refresh_token", rt)],
        )
        .await,
    );
    // A made-up code.
    refused(exchange(&node.url, &id, &secret, "ac1.af-south.AAAA", &verifier).await);
    // Another client cannot refresh this client's tokens.
    let code = sign_in(&node.url, &id, &challenge, "bob@example.com", PW)
        .await
        .unwrap()
        .code;
    let (_, tokens) = exchange(&node.url, &id, &secret, &code, &verifier).await;
    let rt = tokens["refresh_token"].as_str().unwrap();
    refused(
        token(
            &node.url,
            &other_id,
            &other_secret,
            &[("grant_type", "refresh_token"), ("refresh_token", rt)],
        )
        .await,
    );
    let (status, _) = token(
        &node.url,
        &id,
        &secret,
        &[("grant_type", "refresh_token"), ("refresh_token", rt)],
    )
    .await;
    assert_eq!(
        status, 200,
        "the owner still can: the other client's try changed nothing"
    );
    // Nor through /v1/token/refresh with an API key.
    let r = node
        .client()
        .post("/v1/token/refresh", json!({"refresh_token": rt}))
        .await;
    assert_eq!(r.status, 401, "{}", r.text);
}

/// The page: a wrong password and an unknown account get the same answer; a form
/// without its CSRF cookie (a post from another site) is refused and signs no one
/// in; requests naming an unknown client or a redirect URI one character off are
/// shown an error, never redirected; `prompt=none` without a session is
/// `login_required`.
#[tokio::test]
async fn the_sign_in_page_refuses_what_it_should_and_redirects_only_to_registered_uris() {
    let node = TestNode::start();
    node.client().create("cy@example.com", PW).await;
    let (id, _) = shop(&node.url).await;
    let (_, challenge) = pkce(5);

    let (status, wrong) = sign_in(
        &node.url,
        &id,
        &challenge,
        "cy@example.com",
        "not the password",
    )
    .await
    .err()
    .unwrap();
    let (status2, unknown) = sign_in(
        &node.url,
        &id,
        &challenge,
        "nobody@example.com",
        "not the password",
    )
    .await
    .err()
    .unwrap();
    assert_eq!((status, status2), (401, 401));
    let error = |html: &str| {
        html.split("role=\"alert\" id=\"error\">")
            .nth(1)
            .and_then(|r| r.split('<').next())
            .map(str::to_string)
    };
    assert_eq!(
        error(&wrong).as_deref(),
        Some("The email, phone or password is wrong.")
    );
    assert_eq!(error(&wrong), error(&unknown));

    // Cross-site: the form posted without the CSRF cookie, or with another one.
    let b = browser();
    let page = b
        .get(authorize_url(&node.url, &id, &challenge, &[]))
        .send()
        .await
        .unwrap();
    let mut form = hidden_fields(&page.text().await.unwrap());
    form.insert("login".into(), "cy@example.com".into());
    form.insert("password".into(), PW.into());
    for cookie in ["", "authsync_csrf=forged"] {
        let resp = b
            .post(format!("{}/oauth2/authorize", node.url))
            .header("cookie", cookie)
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "cookie {cookie:?}");
        assert!(set_cookie(&resp, "authsync_session").is_none());
    }

    // A browser that says the form came from another site, or a sibling subdomain
    // (which could plant a CSRF cookie of its own): refused with the right token too.
    let fresh = b
        .get(authorize_url(&node.url, &id, &challenge, &[]))
        .send()
        .await
        .unwrap();
    let csrf = set_cookie(&fresh, "authsync_csrf").unwrap();
    let mut good = hidden_fields(&fresh.text().await.unwrap());
    good.insert("login".into(), "cy@example.com".into());
    good.insert("password".into(), PW.into());
    for site in ["same-site", "cross-site"] {
        let resp = b
            .post(format!("{}/oauth2/authorize", node.url))
            .header("cookie", format!("authsync_csrf={csrf}"))
            .header("sec-fetch-site", site)
            .form(&good)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "Sec-Fetch-Site: {site}");
    }
    // The right password of a locked account: refused, saying so (as /v1/login does
    // with 403), not "try again".
    let locked = node
        .client()
        .get("/v1/users?email=cy@example.com")
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = node
        .client()
        .put(
            &format!("/v1/users/{locked}/status"),
            json!({"status": "locked"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let (status, html) = sign_in(&node.url, &id, &challenge, "cy@example.com", PW)
        .await
        .err()
        .unwrap();
    assert_eq!(status, 401);
    assert!(html.contains("cannot sign in now"), "{html}");

    for (name, uri) in [
        ("unknown client", None),
        ("one character off", Some("http://127.0.0.1:9/callback/")),
    ] {
        let mut u = authorize_url(
            &node.url,
            if uri.is_none() { "c_nobody" } else { &id },
            &challenge,
            &[],
        );
        if let Some(uri) = uri {
            u = u.replace(
                &url::form_urlencoded::byte_serialize(REDIRECT.as_bytes()).collect::<String>(),
                &url::form_urlencoded::byte_serialize(uri.as_bytes()).collect::<String>(),
            );
        }
        let resp = b.get(&u).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{name}");
        assert!(
            resp.headers().get("location").is_none(),
            "{name}: never redirected"
        );
    }

    let none = b
        .get(authorize_url(
            &node.url,
            &id,
            &challenge,
            &[("prompt", "none")],
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 303);
    let params = location_params(&none);
    assert_eq!(params["error"], "login_required");
    assert_eq!(params["state"], "st-1");
    // Without PKCE: back to the client with invalid_request.
    let plain = b
        .get(
            authorize_url(&node.url, &id, &challenge, &[])
                .replace("code_challenge_method=S256", "code_challenge_method=plain"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(location_params(&plain)["error"], "invalid_request");
}

/// Single sign-on across regions: a customer signs in at af-south for one platform;
/// once the session has replicated, a sign-in request of another platform at
/// eu-west completes with `prompt=none`, no password asked, and its code exchanges
/// there.
#[tokio::test]
async fn a_session_made_in_one_region_signs_the_customer_in_at_another() {
    let cluster = Cluster::start();
    cluster.warm_up().await;
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url.clone()).collect();
    cluster.clients()[0].create("dee@example.com", PW).await;
    let (shop_id, _) = shop(&urls[0]).await;
    let (news_id, news_secret) = register(
        &urls[0],
        json!({"name": "News", "redirect_uris": [REDIRECT], "first_party": true, "scopes": ["openid", "email", "offline_access"]}),
    )
    .await;
    let (_, challenge) = pkce(6);
    // The account and the clients reach eu-west.
    cluster.converged(4, Duration::from_secs(60)).await;
    let signed = sign_in(&urls[0], &shop_id, &challenge, "dee@example.com", PW)
        .await
        .unwrap();

    let (verifier, challenge) = pkce(7);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let code = loop {
        let resp = with_session(&urls[1], &news_id, &challenge, "none", &signed.session).await;
        if resp.status() == 303 {
            let params = location_params(&resp);
            if let Some(code) = params.get("code") {
                break code.clone();
            }
            assert_eq!(params["error"], "login_required", "{params:?}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the session never reached eu-west"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (status, tokens) = exchange(
        &urls[1],
        &news_id,
        news_secret.as_deref().unwrap(),
        &code,
        &verifier,
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
    let claims = verified_claims(&urls[0], tokens["id_token"].as_str().unwrap()).await;
    assert_eq!(claims["aud"], news_id.as_str());
    // A code is exchanged where it was sent: af-south does not know eu-west's.
    let (_, challenge) = pkce(8);
    let code = sign_in(&urls[1], &news_id, &challenge, "dee@example.com", PW)
        .await
        .unwrap()
        .code;
    let (status, body) = exchange(
        &urls[0],
        &news_id,
        news_secret.as_deref().unwrap(),
        &code,
        "x".repeat(43).as_str(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    // Signing out at eu-west ends the session at af-south too, once it has arrived.
    let out = sign_out(&urls[1], &signed.session, "").await;
    assert_eq!(out.status(), 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let resp = with_session(&urls[0], &shop_id, &challenge, "none", &signed.session).await;
        if location_params(&resp).get("error").map(String::as_str) == Some("login_required") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sign-out never reached af-south"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Posts the consent page's form in `html` with `decision`, as the browser holding
/// `cookies` would.
async fn decide(
    base: &str,
    html: &str,
    csrf_cookie: &str,
    session: &str,
    decision: &str,
) -> reqwest::Response {
    let mut form = hidden_fields(html);
    form.insert("decision".into(), decision.into());
    browser()
        .post(format!("{base}/oauth2/authorize"))
        .header(
            "cookie",
            format!("authsync_csrf={csrf_cookie}; authsync_session={session}"),
        )
        .form(&form)
        .send()
        .await
        .unwrap()
}

/// Signs out through the logout page, as the browser holding `session` would.
async fn sign_out(base: &str, session: &str, query: &str) -> reqwest::Response {
    let b = browser();
    let page = b
        .get(format!("{base}/oauth2/logout?{query}"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csrf = set_cookie(&page, "authsync_csrf").unwrap();
    let form = hidden_fields(&page.text().await.unwrap());
    b.post(format!("{base}/oauth2/logout"))
        .header(
            "cookie",
            format!("authsync_csrf={csrf}; authsync_session={session}"),
        )
        .form(&form)
        .send()
        .await
        .unwrap()
}

/// A platform from outside the group (not first party) gets a code only once the
/// customer allows it; `prompt=none` is then `consent_required`, a denial
/// `access_denied`. A sign-out goes back only to a registered URI, and ends the
/// session: `prompt=none` is `login_required` after it.
#[tokio::test]
async fn a_third_party_client_asks_consent_and_a_sign_out_ends_the_session() {
    let node = TestNode::start();
    node.client().create("eve@example.com", PW).await;
    let back = "http://127.0.0.1:9/signed-out";
    let (id, secret) = register(
        &node.url,
        json!({"name": "Partner & Co", "redirect_uris": [REDIRECT], "post_logout_redirect_uris": [back], "scopes": ["openid", "email", "offline_access"]}),
    )
    .await;
    let secret = secret.unwrap();
    let (verifier, challenge) = pkce(9);
    let (status, consent) = sign_in(&node.url, &id, &challenge, "eve@example.com", PW)
        .await
        .err()
        .unwrap();
    assert_eq!(status, 200, "a consent page, not a redirect");
    assert!(consent.contains("Allow Partner &amp; Co?"), "{consent}");

    // The session exists now: get it by signing in through the page again.
    let b = browser();
    let page = b
        .get(authorize_url(&node.url, &id, &challenge, &[]))
        .send()
        .await
        .unwrap();
    let csrf = set_cookie(&page, "authsync_csrf").unwrap();
    let mut form = hidden_fields(&page.text().await.unwrap());
    form.insert("login".into(), "eve@example.com".into());
    form.insert("password".into(), PW.into());
    let resp = b
        .post(format!("{}/oauth2/authorize", node.url))
        .header("cookie", format!("authsync_csrf={csrf}"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let session = set_cookie(&resp, "authsync_session").expect("signed in");
    let csrf = set_cookie(&resp, "authsync_csrf").expect("the consent form's token");
    let html = resp.text().await.unwrap();

    // The answer must come from a sign-in as fresh as the request asks (max_age), and
    // only for a client that is asked consent.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let stale = html.replace(
        "name=\"code_challenge_method\" value=\"S256\">",
        "name=\"code_challenge_method\" value=\"S256\"><input type=\"hidden\" name=\"max_age\" value=\"1\">",
    );
    let refused = decide(&node.url, &stale, &csrf, &session, "allow").await;
    assert_eq!(refused.status(), 200, "the sign-in form again, no code");
    assert!(refused.headers().get("location").is_none());
    let (shop_id, _) = shop(&node.url).await;
    let first_party = html.replace(&id, &shop_id);
    let refused = decide(&node.url, &first_party, &csrf, &session, "allow").await;
    assert!(
        refused.headers().get("location").is_none(),
        "no consent answer for a first-party client"
    );
    let denied = decide(&node.url, &html, &csrf, &session, "deny").await;
    assert_eq!(location_params(&denied)["error"], "access_denied");
    let forged = decide(&node.url, &html, "forged", &session, "allow").await;
    assert_eq!(forged.status(), 401, "a consent posted from another site");
    let allowed = decide(&node.url, &html, &csrf, &session, "allow").await;
    let code = location_params(&allowed)["code"].clone();
    let (status, tokens) = exchange(&node.url, &id, &secret, &code, &verifier).await;
    assert_eq!(status, 200, "{tokens}");

    let silent = with_session(&node.url, &id, &challenge, "none", &session).await;
    assert_eq!(location_params(&silent)["error"], "consent_required");

    let q = |uri: &str| {
        format!(
            "client_id={id}&post_logout_redirect_uri={}&state=bye",
            url::form_urlencoded::byte_serialize(uri.as_bytes()).collect::<String>()
        )
    };
    let elsewhere = b
        .get(format!(
            "{}/oauth2/logout?{}",
            node.url,
            q("http://127.0.0.1:9/other")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), 400, "never sent to an unregistered URI");
    let out = sign_out(&node.url, &session, &q(back)).await;
    assert_eq!(out.status(), 303);
    assert_eq!(
        out.headers()["location"].to_str().unwrap(),
        format!("{back}?state=bye")
    );
    let after = with_session(&node.url, &id, &challenge, "none", &session).await;
    assert_eq!(location_params(&after)["error"], "login_required");
}

/// The attack: a signed-in customer (or a script with their cookie) asks for codes
/// in a loop, to fill the node's memory and refuse everyone else's sign-ins. Each
/// account holds at most 16 waiting codes: its own oldest are pushed out.
#[tokio::test]
async fn an_account_asking_codes_in_a_loop_pushes_out_only_its_own() {
    let node = TestNode::start();
    node.client().create("fay@example.com", PW).await;
    node.client().create("gus@example.com", PW).await;
    let (id, secret) = shop(&node.url).await;
    let (verifier, challenge) = pkce(10);
    let other = sign_in(&node.url, &id, &challenge, "gus@example.com", PW)
        .await
        .unwrap();
    let signed = sign_in(&node.url, &id, &challenge, "fay@example.com", PW)
        .await
        .unwrap();
    let mut codes = vec![signed.code];
    for _ in 0..40 {
        let resp = with_session(&node.url, &id, &challenge, "none", &signed.session).await;
        codes.push(location_params(&resp)["code"].clone());
    }
    let (status, _) = exchange(&node.url, &id, &secret, &codes[0], &verifier).await;
    assert_eq!(status, 400, "the oldest was pushed out");
    let (status, body) = exchange(&node.url, &id, &secret, codes.last().unwrap(), &verifier).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = exchange(&node.url, &id, &secret, &other.code, &verifier).await;
    assert_eq!(status, 200, "another account's code is untouched: {body}");
    // Spent codes count too (each made a token family): past 16 held, spent or not,
    // the account waits for them to expire.
    let mut answered = Vec::new();
    for _ in 0..20 {
        let resp = with_session(&node.url, &id, &challenge, "none", &signed.session).await;
        if resp.status() != 303 {
            answered.push(resp.status().as_u16());
            continue;
        }
        let code = location_params(&resp)["code"].clone();
        let (status, _) = exchange(&node.url, &id, &secret, &code, &verifier).await;
        assert_eq!(status, 200);
    }
    assert!(
        !answered.is_empty() && answered.iter().all(|s| *s == 503),
        "{answered:?}"
    );
}

async fn form_post(
    base: &str,
    path: &str,
    id: &str,
    secret: &str,
    form: &[(&str, &str)],
) -> (u16, Value) {
    let resp = browser()
        .post(format!("{base}{path}"))
        .basic_auth(id, Some(secret))
        .form(form)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// RFC 7662 and 7009 as a platform's back end uses them: a client learns about its
/// own tokens only (another client's are `active: false`, and its revocation of them
/// changes nothing); revoking a refresh token ends its family. The client
/// credentials grant gives a confidential client a token of its own, within its
/// scopes, and nothing to a public one.
#[tokio::test]
async fn introspection_revocation_and_client_credentials_serve_a_client_its_own_tokens() {
    let node = TestNode::start();
    let user = node.client().create("hal@example.com", PW).await;
    let (id, secret) = shop(&node.url).await;
    let (other_id, other_secret) = shop(&node.url).await;
    let (verifier, challenge) = pkce(11);
    let code = sign_in(&node.url, &id, &challenge, "hal@example.com", PW)
        .await
        .unwrap()
        .code;
    let (_, tokens) = exchange(&node.url, &id, &secret, &code, &verifier).await;
    let (at, rt) = (
        tokens["access_token"].as_str().unwrap(),
        tokens["refresh_token"].as_str().unwrap(),
    );

    let (status, own) = form_post(
        &node.url,
        "/oauth2/introspect",
        &id,
        &secret,
        &[("token", at)],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            own["active"].as_bool(),
            own["sub"].as_str(),
            own["client_id"].as_str()
        ),
        (Some(true), Some(user.as_str()), Some(id.as_str()))
    );
    let (_, own_rt) = form_post(
        &node.url,
        "/oauth2/introspect",
        &id,
        &secret,
        &[("token", rt)],
    )
    .await;
    assert_eq!(
        (own_rt["active"].as_bool(), own_rt["token_type"].as_str()),
        (Some(true), Some("refresh_token"))
    );
    for token in [at, rt, "garbage"] {
        let (status, theirs) = form_post(
            &node.url,
            "/oauth2/introspect",
            &other_id,
            &other_secret,
            &[("token", token)],
        )
        .await;
        assert_eq!((status, theirs), (200, json!({"active": false})));
    }
    let (status, _) = form_post(
        &node.url,
        "/oauth2/introspect",
        &id,
        "cs_wrong",
        &[("token", at)],
    )
    .await;
    assert_eq!(status, 401);

    let (status, _) = form_post(
        &node.url,
        "/oauth2/revoke",
        &other_id,
        &other_secret,
        &[("token", rt)],
    )
    .await;
    assert_eq!(status, 200, "not an error (RFC 7009), and nothing revoked:");
    let (_, still) = form_post(
        &node.url,
        "/oauth2/introspect",
        &id,
        &secret,
        &[("token", rt)],
    )
    .await;
    assert_eq!(still["active"], true);
    let (status, _) = form_post(
        &node.url,
        "/oauth2/revoke",
        &id,
        &secret,
        &[("token", rt), ("token_type_hint", "refresh_token")],
    )
    .await;
    assert_eq!(status, 200);
    let (_, gone) = form_post(
        &node.url,
        "/oauth2/introspect",
        &id,
        &secret,
        &[("token", rt)],
    )
    .await;
    assert_eq!(gone, json!({"active": false}));
    let (status, body) = token(
        &node.url,
        &id,
        &secret,
        &[("grant_type", "refresh_token"), ("refresh_token", rt)],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    let (status, own) = token(
        &node.url,
        &id,
        &secret,
        &[("grant_type", "client_credentials")],
    )
    .await;
    assert_eq!(status, 200, "{own}");
    assert!(own["refresh_token"].is_null() && own["id_token"].is_null());
    assert_eq!(own["scope"], "email profile");
    let (_, seen) = form_post(
        &node.url,
        "/oauth2/introspect",
        &id,
        &secret,
        &[("token", own["access_token"].as_str().unwrap())],
    )
    .await;
    assert_eq!(
        (seen["active"].as_bool(), seen["sub"].as_str()),
        (Some(true), Some(id.as_str()))
    );
    let (status, body) = token(
        &node.url,
        &id,
        &secret,
        &[("grant_type", "client_credentials"), ("scope", "phone")],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_scope"))
    );
    let (public, _) = register(
        &node.url,
        json!({"name": "App", "redirect_uris": [REDIRECT], "public": true}),
    )
    .await;
    let resp = browser()
        .post(format!("{}/oauth2/token", node.url))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", public.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized_client");
}

fn clients_cli(url: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_authsync"))
        .arg("oauth-clients")
        .args(args)
        .args(["--url", url, "--api-key", common::API_KEY])
        .output()
        .expect("run authsync oauth-clients");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// An operator registers a platform from the command line, sees it listed, and
/// removes it: its secret then stops working at the token endpoint. A registration
/// with a redirect URI that is not allowed fails and says why.
#[tokio::test]
async fn the_cli_registers_lists_and_removes_clients() {
    let node = TestNode::start();
    let (ok, out) = clients_cli(
        &node.url,
        &[
            "add",
            "--name",
            "Cli Shop",
            "--redirect-uris",
            REDIRECT,
            "--first-party",
            "--scopes",
            "openid,email",
        ],
    );
    assert!(ok, "{out}");
    let id = out.split_whitespace().nth(1).unwrap().to_string();
    let secret = out
        .split("shown once, give it to the platform): ")
        .nth(1)
        .unwrap()
        .trim()
        .to_string();
    assert!(id.starts_with("c_") && secret.starts_with("cs_"), "{out}");
    let (ok, listed) = clients_cli(&node.url, &["list"]);
    assert!(
        ok && listed.contains(&id) && listed.contains("confidential, first party"),
        "{listed}"
    );
    let (status, _) = token(
        &node.url,
        &id,
        &secret,
        &[("grant_type", "client_credentials")],
    )
    .await;
    assert_eq!(status, 200);
    let (ok, out) = clients_cli(&node.url, &["remove", &id]);
    assert!(ok && out.contains("removed in every region"), "{out}");
    let (status, body) = token(
        &node.url,
        &id,
        &secret,
        &[("grant_type", "client_credentials")],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let (ok, out) = clients_cli(
        &node.url,
        &[
            "add",
            "--name",
            "Bad",
            "--redirect-uris",
            "http://evil.example/cb",
        ],
    );
    assert!(!ok && out.contains("must be https"), "{out}");
    let (ok, listed) = clients_cli(&node.url, &["list"]);
    assert!(ok && !listed.contains(&id), "{listed}");

    // A client with keys, from a file of its public JWKs; a private key is refused.
    let dir = tempfile::tempdir().unwrap();
    let (pair, jwk) = platform_key(51, "cli-1");
    let file = dir.path().join("jwks.json");
    let add_keyed = |jwks: &Value| {
        std::fs::write(&file, jwks.to_string()).unwrap();
        let file = file.to_str().unwrap().to_string();
        clients_cli(
            &node.url,
            &[
                "add",
                "--name",
                "Keyed",
                "--redirect-uris",
                REDIRECT,
                "--scopes",
                "openid,email",
                "--jwks",
                &file,
                "--id-token-alg",
                "ES256",
            ],
        )
    };
    let mut private = jwk.clone();
    private["d"] = json!(B64.encode([51u8; 32]));
    let (ok, out) = add_keyed(&json!({"keys": [private]}));
    assert!(!ok && out.contains("private key material"), "{out}");
    let (ok, out) = add_keyed(&json!({"keys": [jwk]}));
    assert!(
        ok && out.contains("no secret; it signs private_key_jwt assertions"),
        "{out}"
    );
    let keyed = out.split_whitespace().nth(1).unwrap().to_string();
    let (ok, listed) = clients_cli(&node.url, &["list"]);
    assert!(
        ok && listed
            .lines()
            .any(|l| l.contains(&keyed) && l.contains("keys")),
        "{listed}"
    );
    let a = assertion(
        &pair,
        "cli-1",
        &keyed,
        &format!("{}/oauth2/token", node.url),
        json!({}),
    );
    let (status, body) =
        token_by_assertion(&node.url, &a, &[("grant_type", "client_credentials")]).await;
    assert_eq!(
        (status, body["scope"].as_str()),
        (200, Some("email")),
        "{body}"
    );
}

/// The attack: a stolen code raced against the real exchange, many requests at once.
/// Exactly one gets tokens; every other is `invalid_grant`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_code_exchanged_many_times_at_once_gives_tokens_once() {
    let node = TestNode::start();
    node.client().create("ivy@example.com", PW).await;
    let (id, secret) = shop(&node.url).await;
    let (verifier, challenge) = pkce(13);
    let code = sign_in(&node.url, &id, &challenge, "ivy@example.com", PW)
        .await
        .unwrap()
        .code;
    let tries: Vec<_> = (0..20)
        .map(|_| {
            let (url, id, secret, code, verifier) = (
                node.url.clone(),
                id.clone(),
                secret.clone(),
                code.clone(),
                verifier.clone(),
            );
            tokio::spawn(async move { exchange(&url, &id, &secret, &code, &verifier).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tries {
        let (status, body) = t.await.unwrap();
        if status != 200 {
            assert_eq!(body["error"], "invalid_grant", "{body}");
        }
        statuses.push(status);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
}

/// An Ed25519 key of a platform's own, and its public JWK under `kid`.
fn platform_key(seed: u8, kid: &str) -> (ring::signature::Ed25519KeyPair, Value) {
    use ring::signature::KeyPair as _;
    let pair = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap();
    let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": kid,
        "x": B64.encode(pair.public_key().as_ref())});
    (pair, jwk)
}

/// A client assertion (RFC 7523) signed with `pair`: `claims` over the defaults for
/// client `id` at `aud`, a minute long, a fresh jti.
fn assertion(
    pair: &ring::signature::Ed25519KeyPair,
    kid: &str,
    id: &str,
    aud: &str,
    claims: Value,
) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut c = json!({"iss": id, "sub": id, "aud": aud, "iat": now, "exp": now + 60,
        "jti": B64.encode(rand::random::<[u8; 16]>())});
    for (k, v) in claims.as_object().unwrap() {
        c[k] = v.clone();
    }
    let input = format!(
        "{}.{}",
        B64.encode(json!({"alg": "EdDSA", "kid": kid}).to_string()),
        B64.encode(c.to_string())
    );
    format!(
        "{input}.{}",
        B64.encode(pair.sign(input.as_bytes()).as_ref())
    )
}

/// `/oauth2/token` authenticated by `assertion` alone.
async fn token_by_assertion(base: &str, assertion: &str, form: &[(&str, &str)]) -> (u16, Value) {
    let mut body: Vec<(&str, &str)> = form.to_vec();
    body.push((
        "client_assertion_type",
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
    ));
    body.push(("client_assertion", assertion));
    let resp = browser()
        .post(format!("{base}/oauth2/token"))
        .form(&body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// The claims of `jwt`, once its ES256 signature verifies against the P-256 key the
/// JWKS at `base` publishes under its kid.
async fn es256_claims(base: &str, jwt: &str) -> Value {
    let (alg, key) = published_key(base, jwt).await;
    assert_eq!(alg, "ES256");
    assert_eq!(
        (key["kty"].as_str(), key["crv"].as_str()),
        (Some("EC"), Some("P-256"))
    );
    let point = [
        &[4u8][..],
        &B64.decode(key["x"].as_str().unwrap()).unwrap(),
        &B64.decode(key["y"].as_str().unwrap()).unwrap(),
    ]
    .concat();
    claims_verified(jwt, &ring::signature::ECDSA_P256_SHA256_FIXED, &point)
}

/// The attacks on a platform that signs its requests instead of holding a secret:
/// its bare client id, another key, an assertion for another region or another
/// client, one that lives too long, one replayed. Each is `invalid_client`, and the
/// code survives them for the real exchange. Its ID tokens are ES256, as registered.
#[tokio::test]
async fn a_platform_with_keys_authenticates_once_per_assertion_and_gets_es256_id_tokens() {
    let cluster = Cluster::start();
    cluster.warm_up().await;
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url.clone()).collect();
    let user = cluster.clients()[0].create("kim@example.com", PW).await;
    let (pair, jwk) = platform_key(41, "shop-1");
    let (id, secret) = register(
        &urls[0],
        json!({"name": "Keyed shop", "redirect_uris": [REDIRECT], "first_party": true,
            "scopes": ["openid", "email", "offline_access"],
            "token_endpoint_auth_method": "private_key_jwt", "id_token_signed_response_alg": "ES256",
            "jwks": {"keys": [jwk]}}),
    )
    .await;
    assert_eq!(secret, None, "a client with keys is given no secret");
    let discovery: Value = reqwest::get(format!("{}/.well-known/openid-configuration", urls[0]))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(discovery["token_endpoint_auth_methods_supported"]
        .as_array()
        .unwrap()
        .contains(&json!("private_key_jwt")));
    assert!(discovery["id_token_signing_alg_values_supported"]
        .as_array()
        .unwrap()
        .contains(&json!("ES256")));

    let (verifier, challenge) = pkce(41);
    let code = sign_in(&urls[0], &id, &challenge, "kim@example.com", PW)
        .await
        .unwrap()
        .code;
    let endpoint = format!("{}/oauth2/token", urls[0]);
    let exchange_form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier.as_str()),
    ];
    // Its bare id, as a public client would send it.
    let mut bare = exchange_form.to_vec();
    bare.push(("client_id", id.as_str()));
    let resp = browser().post(&endpoint).form(&bare).send().await.unwrap();
    assert_eq!(
        resp.status(),
        401,
        "a client with keys cannot pass as public"
    );
    let (other_pair, _) = platform_key(42, "shop-1");
    let (other_id, other_secret) = shop(&urls[0]).await;
    let refused = [
        (
            "another key",
            assertion(&other_pair, "shop-1", &id, &endpoint, json!({})),
        ),
        (
            "another region's endpoint",
            assertion(
                &pair,
                "shop-1",
                &id,
                &format!("{}/oauth2/token", urls[1]),
                json!({}),
            ),
        ),
        (
            "another client as issuer",
            assertion(&pair, "shop-1", &id, &endpoint, json!({"iss": other_id})),
        ),
        (
            "a lifetime of two hours",
            assertion(
                &pair,
                "shop-1",
                &id,
                &endpoint,
                json!({"exp": 4_000_000_000u64}),
            ),
        ),
        (
            "an expired one",
            assertion(
                &pair,
                "shop-1",
                &id,
                &endpoint,
                json!({"exp": 1_000_000_000u64}),
            ),
        ),
        (
            "one without a jti",
            assertion(&pair, "shop-1", &id, &endpoint, json!({"jti": null})),
        ),
        (
            "one under an unknown kid",
            assertion(&pair, "shop-2", &id, &endpoint, json!({})),
        ),
    ];
    for (what, a) in &refused {
        let (status, body) = token_by_assertion(&urls[0], a, &exchange_form).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("invalid_client")),
            "{what}: {body}"
        );
    }
    // An assertion and a secret at once: one way only.
    let good = assertion(&pair, "shop-1", &id, &endpoint, json!({}));
    let resp = browser()
        .post(&endpoint)
        .basic_auth(&other_id, Some(other_secret))
        .form(&[
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", good.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    let (status, tokens) = token_by_assertion(&urls[0], &good, &exchange_form).await;
    assert_eq!(status, 200, "{tokens}");
    let claims = es256_claims(&urls[0], tokens["id_token"].as_str().unwrap()).await;
    assert_eq!(
        (claims["sub"].as_str(), claims["aud"].as_str()),
        (Some(user.as_str()), Some(id.as_str()))
    );
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let refresh_form = [("grant_type", "refresh_token"), ("refresh_token", refresh)];
    let (status, body) = token_by_assertion(&urls[0], &good, &refresh_form).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client")),
        "a replayed assertion: {body}"
    );
    let fresh = assertion(&pair, "shop-1", &id, &endpoint, json!({}));
    let (status, body) = token_by_assertion(&urls[0], &fresh, &refresh_form).await;
    assert_eq!(status, 200, "{body}");

    // Registered at af-south, the client and its keys work at eu-west once arrived,
    // with an assertion made out to eu-west.
    cluster.converged(4, Duration::from_secs(60)).await;
    let there = format!("{}/oauth2/token", urls[1]);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let a = assertion(&pair, "shop-1", &id, &there, json!({}));
        let (status, body) = token_by_assertion(
            &urls[1],
            &a,
            &[("grant_type", "client_credentials"), ("scope", "email")],
        )
        .await;
        if status == 200 {
            assert_eq!(body["scope"], "email");
            break;
        }
        assert_eq!(body["error"], "invalid_client", "{body}");
        assert!(
            std::time::Instant::now() < deadline,
            "the client never reached eu-west"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Twin accounts made in two regions before either saw the other: a platform that
/// signed the customer in as the one that later loses the merge keeps working through
/// `merged_into`. After the merge the customer signs in with either password as the
/// winner, the platform finds its old `sub` merged into that one, and the loser's
/// refresh token (its credentials changed by the merge) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_signed_in_as_an_account_merged_later_signs_in_as_the_winner() {
    let mut cluster = Cluster::start();
    let clients = cluster.clients();
    let warm = cluster.warm_up().await.len() as u64;
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url.clone()).collect();
    let (id, secret) = shop(&urls[0]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while browser()
        .get(authorize_url(&urls[1], &id, &pkce(60).1, &[]))
        .send()
        .await
        .unwrap()
        .status()
        != 200
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the client never reached eu-west"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cut = cluster.broker.down();
    let winner = clients[0].create("twin-sso@example.com", PW).await;
    let other_pw = "another good passphrase";
    let loser = clients[1].create("twin-sso@example.com", other_pw).await;
    let (verifier, challenge) = pkce(61);
    let first = sign_in(&urls[1], &id, &challenge, "twin-sso@example.com", other_pw)
        .await
        .unwrap();
    let (status, tokens) = exchange(&urls[1], &id, &secret, &first.code, &verifier).await;
    assert_eq!(status, 200, "{tokens}");
    let claims = verified_claims(&urls[1], tokens["id_token"].as_str().unwrap()).await;
    assert_eq!(
        claims["sub"],
        loser.as_str(),
        "before the merge: the account made here"
    );
    if cut {
        assert!(cluster.broker.up());
    }
    cluster.converged(warm + 2, Duration::from_secs(90)).await;

    // The platform looks its customer up by the sub it knows.
    let (status, known) = common::call_as(
        &urls[1],
        common::API_KEY,
        "GET",
        &format!("/v1/users/{loser}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (known["status"].as_str(), known["merged_into"].as_str()),
        (Some("merged"), Some(winner.as_str()))
    );
    let (status, body) = token(
        &urls[1],
        &id,
        &secret,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    for (i, pw) in [PW, other_pw].into_iter().enumerate() {
        let (verifier, challenge) = pkce(62 + i as u8);
        let again = sign_in(&urls[1], &id, &challenge, "twin-sso@example.com", pw)
            .await
            .unwrap();
        let (status, tokens) = exchange(&urls[1], &id, &secret, &again.code, &verifier).await;
        assert_eq!(status, 200, "{tokens}");
        let claims = verified_claims(&urls[1], tokens["id_token"].as_str().unwrap()).await;
        assert_eq!(
            claims["sub"],
            winner.as_str(),
            "after the merge, with password {i}: the winner"
        );
    }
}

/// With one issuer name for every region, a platform's back end may reach another
/// region than its customer's browser did. The code is sent on to the region that
/// issued it and spent there, once: a second presentation, at either region, is
/// refused and revokes what the first produced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_brought_to_another_region_is_exchanged_where_it_was_issued_once() {
    let cluster = Cluster::start_with(common::ClusterOptions {
        anti_entropy: true,
        ..Default::default()
    });
    cluster.warm_up().await;
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url.clone()).collect();
    let user = cluster.clients()[0].create("fay@example.com", PW).await;
    let (id, secret) = shop(&urls[0]).await;
    let (verifier, challenge) = pkce(71);
    let code = sign_in(&urls[0], &id, &challenge, "fay@example.com", PW)
        .await
        .unwrap()
        .code;
    // The client reaches eu-west, which authenticates it there.
    common::eventually("the client reaches eu-west", || async {
        let form = [("grant_type", "client_credentials")];
        token(&urls[1], &id, &secret, &form).await.0 == 200
    })
    .await;
    // Straight to the peer route, with an API key but no region's signature: refused,
    // and the code survives it.
    let (status, _) = common::call_as(
        &urls[0],
        common::API_KEY,
        "POST",
        "/v1/internal/oauth/exchange",
        Some(json!({"client_id": id, "code": code, "redirect_uri": REDIRECT, "code_verifier": verifier})),
    )
    .await;
    assert_eq!(status, 401);
    // A wrong verifier, sent on and refused there: the code survives it.
    let (status, body) = exchange(&urls[1], &id, &secret, &code, &pkce(72).0).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "{body}"
    );
    let (status, tokens) = exchange(&urls[1], &id, &secret, &code, &verifier).await;
    assert_eq!(status, 200, "{tokens}");
    let claims = verified_claims(&urls[1], tokens["id_token"].as_str().unwrap()).await;
    assert_eq!(
        (claims["sub"].as_str(), claims["aud"].as_str()),
        (Some(user.as_str()), Some(id.as_str()))
    );
    for url in [&urls[1], &urls[0]] {
        let (status, body) = exchange(url, &id, &secret, &code, &verifier).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_grant")),
            "again at {url}: {body}"
        );
    }
    // The replay revoked the family the exchange produced: at once where the code was
    // spent, and in eu-west once the revocation has arrived.
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let form = [("grant_type", "refresh_token"), ("refresh_token", refresh)];
    assert_eq!(token(&urls[0], &id, &secret, &form).await.0, 400);
    common::eventually("the revocation reaches eu-west", || async {
        let (_, seen) = form_post(
            &urls[1],
            "/oauth2/introspect",
            &id,
            &secret,
            &[("token", refresh)],
        )
        .await;
        seen == json!({"active": false})
    })
    .await;
    let metrics = reqwest::get(format!("{}/metrics", urls[1]))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let forwarded = |outcome| {
        common::metric_value(
            &metrics,
            "authsync_oidc_codes_forwarded_total",
            &[("outcome", outcome)],
        )
    };
    assert_eq!(
        (forwarded("ok"), forwarded("refused")),
        (Some(1.0), Some(2.0)),
        "one exchange sent on and taken; the wrong verifier and the replay refused there"
    );
}

/// The hosted page of an account with an authenticator: the right password leads to
/// a second page asking the code, not to a session; a wrong code asks again; a code
/// without the pending sign-in, or with a made-up one, starts over; the right code
/// signs in and sends the code back to the platform.
#[tokio::test]
async fn an_account_with_an_authenticator_is_asked_its_code_on_a_second_page() {
    let node = TestNode::start();
    let client = node.client();
    let id = client.create("ivy@example.com", PW).await;
    let (secret, _) = common::enrol_totp(&client, &id).await;
    let (shop_id, shop_secret) = shop(&node.url).await;
    let (verifier, challenge) = pkce(81);
    let b = browser();
    let page = b
        .get(authorize_url(&node.url, &shop_id, &challenge, &[]))
        .send()
        .await
        .unwrap();
    let csrf = set_cookie(&page, "authsync_csrf").unwrap();
    let mut form = hidden_fields(&page.text().await.unwrap());
    form.insert("login".into(), "ivy@example.com".into());
    form.insert("password".into(), PW.into());
    let post = |form: BTreeMap<String, String>, csrf: String| {
        let b = b.clone();
        let url = format!("{}/oauth2/authorize", node.url);
        async move {
            b.post(url)
                .header("cookie", format!("authsync_csrf={csrf}"))
                .form(&form)
                .send()
                .await
                .unwrap()
        }
    };
    let second = post(form, csrf).await;
    assert_eq!(second.status(), 200);
    assert!(
        set_cookie(&second, "authsync_session").is_none(),
        "no session before the code"
    );
    let csrf = set_cookie(&second, "authsync_csrf").unwrap();
    let html = second.text().await.unwrap();
    assert!(html.contains("<label for=\"code\">"), "{html}");
    let mut form = hidden_fields(&html);
    assert!(form["pending"].starts_with("sf1."));
    assert!(
        !form.contains_key("password"),
        "the password is not carried"
    );

    form.insert("code".into(), "000000".into());
    let wrong = post(form.clone(), csrf).await;
    assert_eq!(wrong.status(), 401);
    let csrf = set_cookie(&wrong, "authsync_csrf").unwrap();
    let html = wrong.text().await.unwrap();
    assert!(html.contains("The code is wrong"), "{html}");
    // Each page has a CSRF token of its own.
    form.insert("csrf".into(), hidden_fields(&html)["csrf"].clone());

    let mut made_up = form.clone();
    made_up.insert("pending".into(), format!("sf1.{}", B64.encode([9u8; 32])));
    made_up.insert(
        "code".into(),
        common::code_at(&secret, common::now_step() + 1),
    );
    let refused = post(made_up, csrf).await;
    assert_eq!(refused.status(), 401);
    let csrf = set_cookie(&refused, "authsync_csrf").unwrap();
    let html = refused.text().await.unwrap();
    assert!(html.contains("sign in again"), "{html}");
    form.insert("csrf".into(), hidden_fields(&html)["csrf"].clone());

    form.insert(
        "code".into(),
        common::code_at(&secret, common::now_step() + 1),
    );
    let done = post(form, csrf).await;
    assert_eq!(done.status(), 303);
    assert!(set_cookie(&done, "authsync_session").is_some());
    let code = location_params(&done)["code"].clone();
    let (status, tokens) = exchange(&node.url, &shop_id, &shop_secret, &code, &verifier).await;
    assert_eq!(status, 200, "{tokens}");
    let claims = verified_claims(&node.url, tokens["id_token"].as_str().unwrap()).await;
    assert_eq!(claims["sub"], id.as_str());
}
