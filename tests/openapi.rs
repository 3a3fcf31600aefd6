//! `/openapi.json`, checked against the router and the answers of a running node. The
//! test command also runs schemathesis against it (`scripts/schemathesis.sh`).

mod common;

use std::collections::BTreeSet;

use common::TestNode;
use serde_json::{json, Value};

const PW: &str = "correct horse battery";

/// Every route the API serves, as (method, path) (`/v1/admin/faults` exists only with
/// fault injection on, and is left out of the document on purpose).
const ROUTES: &[(&str, &str)] = &[
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/.well-known/jwks.json"),
    ("post", "/v1/users"),
    ("get", "/v1/users"),
    ("post", "/v1/users/import"),
    ("get", "/v1/users/{id}"),
    ("patch", "/v1/users/{id}"),
    ("delete", "/v1/users/{id}"),
    ("put", "/v1/users/{id}/password"),
    ("put", "/v1/users/{id}/status"),
    ("post", "/v1/login"),
    ("post", "/v1/token/refresh"),
    ("post", "/v1/logout"),
    ("post", "/v1/users/{id}/account-tokens"),
    ("post", "/v1/account-tokens/redeem"),
    ("post", "/v1/internal/account-tokens/redeem"),
    ("get", "/v1/users/{id}/factors"),
    ("post", "/v1/users/{id}/factors/totp"),
    ("delete", "/v1/users/{id}/factors/totp"),
    ("post", "/v1/users/{id}/factors/totp/confirm"),
    ("post", "/v1/users/{id}/factors/recovery-codes"),
    ("get", "/v1/admin/digest"),
    ("get", "/v1/admin/retry"),
    ("get", "/v1/admin/dead-letters"),
    ("get", "/v1/admin/dead-letters/{id}"),
    ("delete", "/v1/admin/dead-letters/{id}"),
    ("post", "/v1/admin/dead-letters/{id}/replay"),
    ("get", "/v1/admin/api-keys"),
    ("post", "/v1/admin/api-keys"),
    ("delete", "/v1/admin/api-keys/{id}"),
    ("post", "/v1/admin/signing-keys/rotate"),
    ("get", "/v1/admin/keys/usage"),
    ("get", "/v1/internal/digests"),
    ("get", "/v1/internal/buckets/{bucket}"),
    ("post", "/v1/internal/records"),
    ("post", "/v1/internal/oauth/exchange"),
    ("get", "/.well-known/openid-configuration"),
    ("get", "/oauth2/authorize"),
    ("post", "/oauth2/authorize"),
    ("post", "/oauth2/token"),
    ("post", "/oauth2/revoke"),
    ("post", "/oauth2/introspect"),
    ("get", "/oauth2/logout"),
    ("post", "/oauth2/logout"),
    ("get", "/oauth2/userinfo"),
    ("post", "/oauth2/userinfo"),
    ("get", "/v1/admin/oauth-clients"),
    ("post", "/v1/admin/oauth-clients"),
    ("delete", "/v1/admin/oauth-clients/{id}"),
];

async fn document(node: &TestNode) -> Value {
    // Served without an API key, like the health probes.
    let r = reqwest::get(format!("{}/openapi.json", node.url))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// Whether `body` has every field the document's schema `name` requires, and no field
/// the schema does not know.
fn conforms(doc: &Value, name: &str, body: &Value) -> Result<(), String> {
    let schema = &doc["components"]["schemas"][name];
    let props = schema["properties"]
        .as_object()
        .ok_or(format!("no schema {name}"))?;
    let fields = body
        .as_object()
        .ok_or(format!("{name}: not an object: {body}"))?;
    for req in schema["required"].as_array().into_iter().flatten() {
        let req = req.as_str().unwrap();
        if !fields.contains_key(req) {
            return Err(format!("{name}: `{req}` missing from {body}"));
        }
    }
    for k in fields.keys() {
        if !props.contains_key(k) {
            return Err(format!("{name}: `{k}` is not in the document"));
        }
    }
    Ok(())
}

/// The status codes the document gives `method path`.
fn statuses(doc: &Value, method: &str, path: &str) -> BTreeSet<u16> {
    doc["paths"][path][method]["responses"]
        .as_object()
        .map(|r| r.keys().filter_map(|k| k.parse().ok()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn the_document_lists_every_route_with_its_security() {
    let node = TestNode::start();
    let doc = document(&node).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let listed: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    let routes: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(listed, routes);
    for (method, path) in ROUTES {
        let op = &doc["paths"][path][method];
        let scheme = op["security"][0]
            .as_object()
            .and_then(|s| s.keys().next().cloned());
        let expected = if path.starts_with("/v1/internal/") {
            Some("peer")
        } else if path.starts_with("/oauth2/userinfo") {
            Some("access_token")
        } else if path.starts_with("/v1/") {
            Some("api_key")
        } else {
            None
        };
        assert_eq!(scheme.as_deref(), expected, "{method} {path}");
        if expected.is_some() {
            assert!(
                statuses(&doc, method, path).contains(&401),
                "{method} {path}"
            );
        }
        // Every operation may time out (`http.request_timeout_ms`).
        assert!(
            statuses(&doc, method, path).contains(&503),
            "{method} {path}"
        );
        if let Some(schema) =
            op["requestBody"]["content"]["application/json"]["schema"]["$ref"].as_str()
        {
            let name = schema.rsplit('/').next().unwrap();
            assert!(doc["components"]["schemas"][name].is_object(), "{schema}");
        }
    }
}

/// What the node answers is what the document says, for one account's life: each
/// status is one it documents, each body has the documented fields and no others.
#[tokio::test]
async fn answers_match_the_document() {
    let node = TestNode::start();
    let doc = document(&node).await;
    let c = node.client();
    let check = |method: &str, path: &str, status: u16| {
        assert!(
            statuses(&doc, method, path).contains(&status),
            "{method} {path} answered {status}, which the document does not list"
        );
    };
    let created = c
        .post(
            "/v1/users",
            json!({"email": "doc@example.com", "phone": "+14155552671", "password": PW,
                   "profile": {"given_name": "Ada"}}),
        )
        .await;
    check("post", "/v1/users", created.status);
    conforms(&doc, "Written", &created.body).unwrap();
    let id = created.body["id"].as_str().unwrap().to_string();
    let got = c.get(&format!("/v1/users/{id}")).await;
    check("get", "/v1/users/{id}", got.status);
    conforms(&doc, "User", &got.body).unwrap();
    conforms(&doc, "VersionJson", &got.body["version"]).unwrap();
    let login = c
        .post(
            "/v1/login",
            json!({"login": "doc@example.com", "password": PW}),
        )
        .await;
    check("post", "/v1/login", login.status);
    conforms(&doc, "Tokens", &login.body).unwrap();
    let refreshed = c
        .post(
            "/v1/token/refresh",
            json!({"refresh_token": login.body["refresh_token"]}),
        )
        .await;
    check("post", "/v1/token/refresh", refreshed.status);
    conforms(&doc, "Tokens", &refreshed.body).unwrap();
    let status = c
        .put(
            &format!("/v1/users/{id}/status"),
            json!({"status": "locked"}),
        )
        .await;
    check("put", "/v1/users/{id}/status", status.status);
    conforms(&doc, "StatusChanged", &status.body).unwrap();
    let refused = c
        .post(
            "/v1/login",
            json!({"login": "doc@example.com", "password": PW}),
        )
        .await;
    check("post", "/v1/login", refused.status);
    conforms(&doc, "ErrorBody", &refused.body).unwrap();
    let invalid = c.post("/v1/users", json!({"email": "not an email"})).await;
    check("post", "/v1/users", invalid.status);
    conforms(&doc, "ErrorBody", &invalid.body).unwrap();
    for (path, schema) in [
        ("/v1/admin/digest", "Digest"),
        ("/v1/admin/retry", "RetryList"),
        ("/v1/admin/dead-letters", "DeadList"),
        ("/v1/admin/api-keys", "ApiKeys"),
        ("/v1/admin/keys/usage", "KeyUsage"),
    ] {
        let r = c.get(path).await;
        check("get", path, r.status);
        conforms(&doc, schema, &r.body).unwrap();
    }
    let jwks: Value = reqwest::get(format!("{}/.well-known/jwks.json", node.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    conforms(&doc, "Jwks", &jwks).unwrap();
    conforms(&doc, "Jwk", &jwks["keys"][0]).unwrap();
    let erased = c.delete(&format!("/v1/users/{id}")).await;
    check("delete", "/v1/users/{id}", erased.status);
}
