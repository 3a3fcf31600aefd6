//! Signed requests, from the outside: a node that requires signatures refuses
//! unsigned, badly signed, expired and replayed requests with 401 and the reason, and
//! accepts HS256 and EdDSA signatures bound to the request.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use common::{TestNode, API_KEY};
use ring::signature::KeyPair;
use serde_json::{json, Value};

const SECRET: [u8; 32] = [0x5a; 32];

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(jti: &str, iat: u64, method: &str, path: &str, body: &[u8]) -> Value {
    let d = ring::digest::digest(&ring::digest::SHA256, body);
    json!({"iat": iat, "exp": iat + 120, "jti": jti, "method": method, "path": path,
           "body_sha256": B64.encode(d.as_ref())})
}

fn hs256(claims: &Value) -> String {
    let h = B64.encode(json!({"alg": "HS256", "typ": "JWT", "kid": "billing"}).to_string());
    let c = B64.encode(claims.to_string());
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &SECRET);
    let s = ring::hmac::sign(&key, format!("{h}.{c}").as_bytes());
    format!("{h}.{c}.{}", B64.encode(s.as_ref()))
}

fn eddsa(pair: &ring::signature::Ed25519KeyPair, claims: &Value) -> String {
    let h = B64.encode(json!({"alg": "EdDSA", "typ": "JWT", "kid": "shop"}).to_string());
    let c = B64.encode(claims.to_string());
    let s = pair.sign(format!("{h}.{c}").as_bytes());
    format!("{h}.{c}.{}", B64.encode(s.as_ref()))
}

async fn send(url: &str, method: &str, path: &str, body: &[u8], jwt: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method.parse().unwrap(), format!("{url}{path}"))
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(j) = jwt {
        req = req.header("x-authsync-signature", j);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_node_requiring_signatures_takes_only_fresh_signed_requests_once() {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let node = TestNode::start_with(&format!(
        "[request_signing]\nrequired = true\n\n[[request_signing.clients]]\nkid = \"billing\"\nalg = \"HS256\"\nsecret_hex = \"{}\"\n\n[[request_signing.clients]]\nkid = \"shop\"\nalg = \"EdDSA\"\npublic_key = \"{}\"\n",
        hex::encode(SECRET),
        B64.encode(pair.public_key().as_ref())
    ));
    let url = node.url.clone();
    let body = br#"{"email": "signed@example.com", "password": "correct horse battery"}"#;

    let (status, answer) = send(&url, "POST", "/v1/users", body, None).await;
    assert_eq!(
        (status, &answer["error"]),
        (401, &json!("signature_required")),
        "{answer}"
    );

    // HS256, bound to this request: accepted once.
    let jwt = hs256(&claims("hs-0000000001", now_s(), "POST", "/v1/users", body));
    let (status, created) = send(&url, "POST", "/v1/users", body, Some(&jwt)).await;
    assert_eq!(status, 201, "{created}");
    let (status, answer) = send(&url, "POST", "/v1/users", body, Some(&jwt)).await;
    assert_eq!(
        (status, &answer["error"]),
        (401, &json!("signature_replayed")),
        "{answer}"
    );

    // Another body under the same claims, another path, a stale or altered token.
    let other = br#"{"email": "other@example.com", "password": "correct horse battery"}"#;
    let jwt = hs256(&claims("hs-0000000002", now_s(), "POST", "/v1/users", body));
    let (status, answer) = send(&url, "POST", "/v1/users", other, Some(&jwt)).await;
    assert_eq!(
        (status, &answer["error"]),
        (401, &json!("signature_invalid")),
        "{answer}"
    );
    assert!(answer.to_string().contains("body_sha256"), "{answer}");
    let stale = hs256(&claims(
        "hs-0000000003",
        now_s() - 3_600,
        "POST",
        "/v1/users",
        body,
    ));
    let (status, answer) = send(&url, "POST", "/v1/users", body, Some(&stale)).await;
    assert_eq!(
        (status, &answer["error"]),
        (401, &json!("signature_expired")),
        "{answer}"
    );
    let mut altered = hs256(&claims("hs-0000000004", now_s(), "POST", "/v1/users", body));
    altered.insert(altered.len() - 2, 'x');
    let (status, answer) = send(&url, "POST", "/v1/users", body, Some(&altered)).await;
    assert_eq!(
        (status, &answer["error"]),
        (401, &json!("signature_invalid")),
        "{answer}"
    );
    // None of the refused requests wrote anything.
    let (status, _) = send(
        &url,
        "GET",
        "/v1/users?email=other@example.com",
        b"",
        Some(&hs256(&claims(
            "hs-0000000005",
            now_s(),
            "GET",
            "/v1/users?email=other@example.com",
            b"",
        ))),
    )
    .await;
    assert_eq!(status, 404);

    // EdDSA: the client's own key, checked against its public key.
    let id = created["id"].as_str().unwrap();
    let path = format!("/v1/users/{id}");
    let jwt = eddsa(&pair, &claims("ed-0000000001", now_s(), "GET", &path, b""));
    let (status, user) = send(&url, "GET", &path, b"", Some(&jwt)).await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(user["email"], "signed@example.com");
    // An EdDSA token claiming the HS256 client's kid is refused.
    let forged = eddsa(&pair, &claims("ed-0000000002", now_s(), "GET", &path, b"")).replacen(
        &B64.encode(json!({"alg": "EdDSA", "typ": "JWT", "kid": "shop"}).to_string()),
        &B64.encode(json!({"alg": "EdDSA", "typ": "JWT", "kid": "billing"}).to_string()),
        1,
    );
    let (status, answer) = send(&url, "GET", &path, b"", Some(&forged)).await;
    assert_eq!(
        (status, &answer["error"]),
        (401, &json!("signature_invalid")),
        "{answer}"
    );
}
