//! Second factors, from the outside: a TOTP authenticator enrolled through the API,
//! its codes and recovery codes each taken once in every region, wrong codes counted
//! by the lockout, and the attacks on them (the same code in two regions, at once, a
//! streak reset by the right password alone).

mod common;

use std::time::Duration;

use common::{code_at, enrol_totp, eventually, now_step, Cluster, TestNode};
use serde_json::{json, Value};

const PW: &str = "correct horse battery";

async fn login(client: &common::Client, email: &str, extra: Value) -> common::Resp {
    let mut body = json!({"login": email, "password": PW});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    client.post("/v1/login", body).await
}

/// A login with the authenticator's next code: later than the one its confirmation
/// took, within the window.
async fn login_next_code(client: &common::Client, email: &str, secret: &[u8]) -> common::Resp {
    login(
        client,
        email,
        json!({"totp": code_at(secret, now_step() + 1)}),
    )
    .await
}

/// Enrolled in one region, required and taken in another; a code used in one region
/// is refused in the other once the use has arrived, and so is a recovery code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_used_in_one_region_is_refused_in_another_once_the_use_arrives() {
    let cluster = Cluster::start();
    cluster.warm_up().await;
    let clients = cluster.clients();
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url.clone()).collect();
    let email = "tia@example.com";
    let id = clients[0].create(email, PW).await;
    assert_eq!(
        login(&clients[0], email, json!({})).await.status,
        200,
        "no factor yet"
    );
    let (secret, codes) = enrol_totp(&clients[0], &id).await;
    let r = login(&clients[0], email, json!({})).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (401, Some("second_factor_required")),
        "{}",
        r.text
    );
    eventually("the authenticator reaches eu-west", || async {
        login(&clients[1], email, json!({})).await.body["error"] == "second_factor_required"
    })
    .await;

    // The confirmation took this step's code: the next one signs in, once.
    let code = code_at(&secret, now_step() + 1);
    assert_eq!(
        login(&clients[0], email, json!({"totp": code}))
            .await
            .status,
        200
    );
    let again = login(&clients[0], email, json!({"totp": code})).await;
    assert_eq!(
        (again.status, again.body["error"].as_str()),
        (401, Some("invalid_second_factor"))
    );
    common::entries_arrived(&urls, 1).await;
    let there = login(&clients[1], email, json!({"totp": code})).await;
    assert_eq!(
        (there.status, there.body["error"].as_str()),
        (401, Some("invalid_second_factor")),
        "the same code in eu-west"
    );

    // A recovery code, once, wherever.
    let r = login(
        &clients[1],
        email,
        json!({"recovery_code": codes[0].to_lowercase()}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        login(&clients[1], email, json!({"recovery_code": codes[0]}))
            .await
            .status,
        401
    );
    let (status, added) = common::call_as(
        &urls[1],
        common::API_KEY,
        "POST",
        "/v1/admin/api-keys",
        Some(json!({"name": "marker-2", "scopes": ["read"]})),
    )
    .await;
    assert_eq!(status, 201);
    let key = added["key"].as_str().unwrap().to_string();
    eventually("eu-west's entries reach af-south", || async {
        common::call_as(&urls[0], &key, "GET", "/v1/admin/digest", None)
            .await
            .0
            == 403
    })
    .await;
    assert_eq!(
        login(&clients[0], email, json!({"recovery_code": codes[0]}))
            .await
            .status,
        401,
        "spent in eu-west"
    );
    let f = clients[0].get(&format!("/v1/users/{id}/factors")).await;
    assert_eq!(
        f.body,
        json!({"totp": true, "totp_pending": false, "recovery_codes_left": 9})
    );
    assert_eq!(
        login(&clients[0], email, json!({"recovery_code": codes[1]}))
            .await
            .status,
        200
    );
}

/// The attacks on the lockout: wrong codes after the right password count as failed
/// logins, and the right password without a code, between them, does not reset the
/// count; only the right code does.
#[tokio::test]
async fn wrong_codes_count_as_failed_logins_and_the_password_alone_resets_nothing() {
    let node = TestNode::start();
    let client = node.client();
    let email = "ola@example.com";
    let id = client.create(email, PW).await;
    let (secret, _) = enrol_totp(&client, &id).await;
    for i in 0..5 {
        if i == 3 {
            let r = login(&client, email, json!({})).await;
            assert_eq!(r.body["error"], "second_factor_required");
        }
        let r = login(&client, email, json!({"totp": "000000"})).await;
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (401, Some("invalid_second_factor")),
            "{}",
            r.text
        );
    }
    let r = login_next_code(&client, email, &secret).await;
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (429, Some("too_many_attempts")),
        "{}",
        r.text
    );
    // Waited out, the right code signs in and the count starts again.
    let wait = r.body["retry_after_s"].as_u64().unwrap_or(1);
    tokio::time::sleep(Duration::from_secs(wait + 1)).await;
    let r = login_next_code(&client, email, &secret).await;
    assert_eq!(r.status, 200, "{}", r.text);
}

/// The attack: one code sent many times at once, hoping several pass before the
/// first use is written. Exactly one signs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_code_sent_many_times_at_once_signs_in_once() {
    let node = TestNode::start();
    let client = node.client();
    let email = "zed@example.com";
    let id = client.create(email, PW).await;
    let (secret, _) = enrol_totp(&client, &id).await;
    let code = code_at(&secret, now_step() + 1);
    let attempts = (0..12).map(|_| {
        let (client, code) = (client.clone(), code.clone());
        tokio::spawn(async move { login(&client, email, json!({"totp": code})).await.status })
    });
    let statuses: Vec<u16> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
}

/// Removing the authenticator ends every session and turns the second factor off;
/// bad requests change nothing.
#[tokio::test]
async fn removing_the_authenticator_ends_the_sessions_and_bad_requests_change_nothing() {
    let node = TestNode::start();
    let client = node.client();
    let email = "uma@example.com";
    let id = client.create(email, PW).await;
    for (path, body) in [
        (
            format!("/v1/users/{id}/factors/totp/confirm"),
            json!({"code": "123456"}),
        ),
        (format!("/v1/users/{id}/factors/recovery-codes"), json!({})),
    ] {
        let r = client.post(&path, body).await;
        assert!(matches!(r.status, 400 | 409), "{path}: {}", r.text);
    }
    // A session from before the authenticator ends when it is turned on.
    let before = login(&client, email, json!({})).await;
    let before = before.body["refresh_token"].as_str().unwrap().to_string();
    let (secret, _) = enrol_totp(&client, &id).await;
    let r = client
        .post("/v1/token/refresh", json!({"refresh_token": before}))
        .await;
    assert_eq!(
        r.status, 401,
        "a session opened with the password alone: {}",
        r.text
    );
    assert_eq!(
        client
            .post(&format!("/v1/users/{id}/factors/totp"), json!({}))
            .await
            .status,
        409,
        "one at a time"
    );
    // Secrets are never cached on the way.
    let fresh = reqwest::Client::new()
        .post(format!("{}/v1/users/{id}/factors/recovery-codes", node.url))
        .bearer_auth(common::API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.headers()["cache-control"], "no-store");
    for bad in [
        json!({"code": 123456}),
        json!({"code": "1", "extra": 1}),
        json!([]),
    ] {
        let r = client
            .post(&format!("/v1/users/{id}/factors/totp/confirm"), bad.clone())
            .await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
    }
    let both = login(
        &client,
        email,
        json!({"totp": "123456", "recovery_code": "x"}),
    )
    .await;
    assert_eq!(both.status, 400, "one factor at a time: {}", both.text);
    let r = login_next_code(&client, email, &secret).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let refresh = r.body["refresh_token"].as_str().unwrap().to_string();
    let fresh = client
        .post(&format!("/v1/users/{id}/factors/recovery-codes"), json!({}))
        .await;
    assert_eq!(
        fresh.body["recovery_codes"].as_array().map(Vec::len),
        Some(10)
    );
    assert_eq!(
        client
            .delete(&format!("/v1/users/{id}/factors/totp"))
            .await
            .status,
        204
    );
    assert_eq!(
        client
            .delete(&format!("/v1/users/{id}/factors/totp"))
            .await
            .status,
        404
    );
    let r = client
        .post("/v1/token/refresh", json!({"refresh_token": refresh}))
        .await;
    assert_eq!(r.status, 401, "the sessions end: {}", r.text);
    assert_eq!(
        login(&client, email, json!({})).await.status,
        200,
        "no second factor now"
    );
    let f = client.get(&format!("/v1/users/{id}/factors")).await;
    assert_eq!(
        f.body,
        json!({"totp": false, "totp_pending": false, "recovery_codes_left": 0})
    );
    let missing = client
        .get("/v1/users/00000000-0000-0000-0000-000000000000/factors")
        .await;
    assert_eq!(missing.status, 404);
}

/// With the region's key service down, an account without a second factor still
/// logs in (its record says it needs nothing sealed), and one with a factor is not let
/// in without it: its login waits for the key (503), whatever it presents.
#[tokio::test]
async fn with_the_key_service_down_logins_without_a_factor_go_on_and_none_skips_one() {
    let node = TestNode::start_with("[faults]\nenabled = true\n");
    let client = node.client();
    client.create("plain@example.com", PW).await;
    let id = client.create("guarded@example.com", PW).await;
    let (secret, _) = enrol_totp(&client, &id).await;
    let r = client
        .put(
            "/v1/admin/faults",
            json!({"keys_unavailable": ["af-south"]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        login(&client, "plain@example.com", json!({})).await.status,
        200
    );
    for extra in [json!({}), json!({"totp": code_at(&secret, now_step() + 1)})] {
        let r = login(&client, "guarded@example.com", extra.clone()).await;
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (503, Some("key_unavailable")),
            "{extra}: {}",
            r.text
        );
    }
    client
        .put("/v1/admin/faults", json!({"keys_unavailable": []}))
        .await;
    assert_eq!(
        login_next_code(&client, "guarded@example.com", &secret)
            .await
            .status,
        200
    );
}
