//! Password reset and address verification from the outside: tokens handed to the
//! operator's webhook (signed), each used once whichever regions it is brought to at
//! once, a reset ending every session, a verification proving only the address it was
//! sent to, and bad requests changing nothing.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Cluster, ClusterOptions, TestNode};
use serde_json::{json, Value};

const PW: &str = "correct horse battery";
const SECRET_HEX: &str = "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

/// The operator's mailer: takes `POST /hook`, keeps each body with its signature.
struct Hook {
    url: String,
    got: Arc<parking_lot::Mutex<Vec<(Value, String)>>>,
}

impl Hook {
    async fn start() -> Hook {
        let got: Arc<parking_lot::Mutex<Vec<(Value, String)>>> = Default::default();
        let kept = got.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let kept = kept.clone();
                async move {
                    let sig = headers
                        .get("x-authsync-delivery")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    let signed = format!(
                        "sha256={}",
                        hex::encode(
                            ring::hmac::sign(
                                &ring::hmac::Key::new(
                                    ring::hmac::HMAC_SHA256,
                                    &hex::decode(SECRET_HEX).unwrap()
                                ),
                                body.as_bytes()
                            )
                            .as_ref()
                        )
                    );
                    kept.lock().push((
                        serde_json::from_str(&body).unwrap_or(Value::Null),
                        sig.clone(),
                    ));
                    if sig == signed {
                        axum::http::StatusCode::NO_CONTENT
                    } else {
                        axum::http::StatusCode::UNAUTHORIZED
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Hook { url, got }
    }

    fn config(&self) -> String {
        format!(
            "[delivery]\nwebhook_url = \"{}\"\nwebhook_secret_hex = \"{SECRET_HEX}\"\n",
            self.url
        )
    }

    /// The token of the `n`th delivery, once it has come, its signature checked.
    async fn token(&self, n: usize, purpose: &str, address: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some((body, sig)) = self.got.lock().get(n).cloned() {
                assert!(sig.starts_with("sha256="), "{sig}");
                assert_eq!(
                    (body["purpose"].as_str(), body["address"].as_str()),
                    (Some(purpose), Some(address)),
                    "{body}"
                );
                return body["token"].as_str().unwrap().to_string();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "delivery {n} never came"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn redeem(
    client: &common::Client,
    token: &str,
    purpose: &str,
    password: Option<&str>,
) -> common::Resp {
    let mut body = json!({"token": token, "purpose": purpose});
    if let Some(p) = password {
        body["password"] = json!(p);
    }
    client.post("/v1/account-tokens/redeem", body).await
}

/// The attack: a reset token (seen in a mailbox, or a link forwarded) redeemed at two
/// regions at once, and again later. It sets the password once; the reset ends every
/// session and proves the email it went to.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reset_token_is_used_once_whichever_regions_it_is_brought_to() {
    let hook = Hook::start().await;
    let cluster = Cluster::start_with(ClusterOptions {
        extra: hook.config(),
        anti_entropy: true,
        ..Default::default()
    });
    cluster.warm_up().await;
    let clients = cluster.clients();
    let id = clients[0].create("rae@example.com", PW).await;
    let session = clients[0]
        .post(
            "/v1/login",
            json!({"login": "rae@example.com", "password": PW}),
        )
        .await;
    let refresh = session.body["refresh_token"].as_str().unwrap().to_string();
    let r = clients[0]
        .post(
            &format!("/v1/users/{id}/account-tokens"),
            json!({"purpose": "reset"}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["delivery"].as_str()),
        (202, Some("webhook")),
        "{}",
        r.text
    );
    assert!(
        r.body.get("token").is_none(),
        "the token goes to the hook alone"
    );
    let token = hook.token(0, "reset", "rae@example.com").await;
    assert!(!r.text.contains(&token));

    let attempts = [
        ("a new passphrase one", 0usize),
        ("a new passphrase two", 1),
        ("a new passphrase three", 2),
    ]
    .map(|(pw, i)| {
        let (c, token) = (clients[i].clone(), token.clone());
        tokio::spawn(async move { (pw, redeem(&c, &token, "reset", Some(pw)).await.status) })
    });
    let mut won = Vec::new();
    for a in attempts {
        let (pw, status) = a.await.unwrap();
        assert!(matches!(status, 200 | 400), "{status}");
        if status == 200 {
            won.push(pw);
        }
    }
    assert_eq!(won.len(), 1, "{won:?}");
    assert_eq!(
        redeem(&clients[1], &token, "reset", Some("yet another one here"))
            .await
            .status,
        400
    );

    let login = |c: common::Client, pw: &'static str| async move {
        c.post(
            "/v1/login",
            json!({"login": "rae@example.com", "password": pw}),
        )
        .await
        .status
    };
    assert_eq!(login(clients[0].clone(), won[0]).await, 200);
    assert_eq!(login(clients[0].clone(), PW).await, 401);
    let r = clients[0]
        .post("/v1/token/refresh", json!({"refresh_token": refresh}))
        .await;
    assert_eq!(r.status, 401, "the reset ended the session: {}", r.text);
    let user = clients[0].get(&format!("/v1/users/{id}")).await;
    assert_eq!(user.body["email_verified"], true, "{}", user.text);

    // A token made at af-south, redeemed at us-east alone: sent on, and taken.
    let r = clients[0]
        .post(
            &format!("/v1/users/{id}/account-tokens"),
            json!({"purpose": "reset"}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text);
    let second = hook.token(1, "reset", "rae@example.com").await;
    let r = redeem(&clients[2], &second, "reset", Some("a fourth passphrase")).await;
    assert_eq!(r.status, 200, "redeemed through another region: {}", r.text);
    assert_eq!(r.body["user_id"], id.as_str());
    assert_eq!(login(clients[0].clone(), "a fourth passphrase").await, 200);
}

/// A verification proves the address it went to, and not one the account moved to
/// since; a wrong purpose, a junk token or a refused password change nothing.
#[tokio::test]
async fn a_verification_proves_only_its_address_and_bad_requests_change_nothing() {
    let hook = Hook::start().await;
    let node = TestNode::start_with(&hook.config());
    let client = node.client();
    let id = client.create("sam@example.com", PW).await;
    assert_eq!(
        client.get(&format!("/v1/users/{id}")).await.body["email_verified"],
        false
    );
    for bad in [
        json!({"purpose": "unlock"}),
        json!({}),
        json!({"purpose": "reset", "x": 1}),
    ] {
        let r = client
            .post(&format!("/v1/users/{id}/account-tokens"), bad.clone())
            .await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
    }
    let r = client
        .post(
            &format!("/v1/users/{id}/account-tokens"),
            json!({"purpose": "verify_phone"}),
        )
        .await;
    assert_eq!(r.status, 400, "no phone: {}", r.text);

    client
        .post(
            &format!("/v1/users/{id}/account-tokens"),
            json!({"purpose": "verify_email"}),
        )
        .await;
    let first = hook.token(0, "verify_email", "sam@example.com").await;
    for (token, purpose) in [
        (first.as_str(), "reset"),
        (
            "at1.af-south.AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "verify_email",
        ),
        ("junk", "verify_email"),
    ] {
        let r = redeem(&client, token, purpose, Some("a good new passphrase")).await;
        assert_eq!(r.status, 400, "{token} {purpose}: {}", r.text);
    }
    // The account moves to another address before the token is used: used, and the
    // new address is not proven by it.
    let r = client
        .send(
            "PATCH",
            &format!("/v1/users/{id}"),
            Some(json!({"email": "sam2@example.com"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        redeem(&client, &first, "verify_email", None).await.status,
        200
    );
    assert_eq!(
        client.get(&format!("/v1/users/{id}")).await.body["email_verified"],
        false
    );
    client
        .post(
            &format!("/v1/users/{id}/account-tokens"),
            json!({"purpose": "verify_email"}),
        )
        .await;
    let second = hook.token(1, "verify_email", "sam2@example.com").await;
    assert_eq!(
        redeem(&client, &second, "verify_email", None).await.status,
        200
    );
    assert_eq!(
        client.get(&format!("/v1/users/{id}")).await.body["email_verified"],
        true
    );

    // A reset whose password the account refuses leaves the token good.
    client
        .post(
            &format!("/v1/users/{id}/account-tokens"),
            json!({"purpose": "reset"}),
        )
        .await;
    let reset = hook.token(2, "reset", "sam2@example.com").await;
    for refused in ["short", "sam2@example.com"] {
        let r = redeem(&client, &reset, "reset", Some(refused)).await;
        assert_eq!(r.status, 400, "{refused}: {}", r.text);
    }
    assert_eq!(
        redeem(&client, &reset, "reset", Some("a good new passphrase"))
            .await
            .status,
        200
    );
    // The attacks on a reset sent to a mailbox that is no longer the account's, or
    // kept from before a password change: each refused, and so is a reset of an
    // account locked since the token was made.
    let path = format!("/v1/users/{id}/account-tokens");
    let mint_reset = |n: usize, address: &'static str| {
        let (client, hook, path) = (&client, &hook, &path);
        async move {
            let r = client.post(path, json!({"purpose": "reset"})).await;
            assert_eq!(r.status, 202, "{}", r.text);
            hook.token(n, "reset", address).await
        }
    };
    let refused = |what: &'static str, token: String| {
        let client = &client;
        async move {
            let r = redeem(client, &token, "reset", Some("an attacker's passphrase")).await;
            assert_eq!(r.status, 400, "{what}: {}", r.text);
        }
    };
    let to_old_mailbox = mint_reset(3, "sam2@example.com").await;
    let r = client
        .send(
            "PATCH",
            &format!("/v1/users/{id}"),
            Some(json!({"email": "sam3@example.com"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    refused("sent to an old address", to_old_mailbox).await;
    let before_change = mint_reset(4, "sam3@example.com").await;
    let r = client
        .put(
            &format!("/v1/users/{id}/password"),
            json!({"password": "changed by its owner"}),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    refused("made before a password change", before_change).await;
    // A lock changes the credentials too (and a locked account redeems none).
    let before_lock = mint_reset(5, "sam3@example.com").await;
    client
        .put(
            &format!("/v1/users/{id}/status"),
            json!({"status": "locked"}),
        )
        .await;
    refused("for an account locked since", before_lock).await;
    // A locked account gets none.
    client
        .put(
            &format!("/v1/users/{id}/status"),
            json!({"status": "locked"}),
        )
        .await;
    let r = client
        .post(
            &format!("/v1/users/{id}/account-tokens"),
            json!({"purpose": "reset"}),
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
}

/// Without a delivery hook, no token is made.
#[tokio::test]
async fn without_a_delivery_hook_no_token_is_made() {
    let node = TestNode::start();
    let client = node.client();
    let id = client.create("lee@example.com", PW).await;
    let r = client
        .post(
            &format!("/v1/users/{id}/account-tokens"),
            json!({"purpose": "reset"}),
        )
        .await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (409, Some("conflict")),
        "{}",
        r.text
    );
}
