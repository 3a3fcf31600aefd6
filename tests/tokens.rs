//! Access and refresh tokens on a three-region cluster: the access token verifies
//! against any region's JWK set, refresh tokens rotate, reuse revokes the family, a
//! logout revokes it in every region, and a new signing key is published before it
//! signs while the old one stays published.

mod common;

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use common::{call_as, entries_arrived, Cluster, ClusterOptions, API_KEY};
use serde_json::{json, Value};

const PW: &str = "correct horse battery";

async fn call(url: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    call_as(url, API_KEY, method, path, body).await
}

async fn login(url: &str) -> Value {
    let (status, body) = call(
        url,
        "POST",
        "/v1/login",
        Some(json!({"login": "ada@example.com", "password": PW})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn refresh(url: &str, token: &Value) -> (u16, Value) {
    call(
        url,
        "POST",
        "/v1/token/refresh",
        Some(json!({"refresh_token": token})),
    )
    .await
}

/// The JWT's header and claims, after checking its signature against `jwks`.
fn verify(jwt: &str, jwks: &Value) -> (Value, Value) {
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3, "{jwt}");
    let header: Value = serde_json::from_slice(&B64.decode(parts[0]).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(header["alg"], "EdDSA");
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .unwrap_or_else(|| panic!("kid {} not in {jwks}", header["kid"]));
    assert_eq!(
        (&key["kty"], &key["crv"]),
        (&json!("OKP"), &json!("Ed25519"))
    );
    let public = B64.decode(key["x"].as_str().unwrap()).unwrap();
    let signature = B64.decode(parts[2]).unwrap();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public)
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
        .expect("the signature verifies");
    (header, claims)
}

async fn jwks(url: &str) -> Value {
    let resp = reqwest::get(format!("{url}/.well-known/jwks.json"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the JWK set needs no API key");
    resp.json().await.unwrap()
}

/// Polls `url`'s JWK set until it has `kid`.
async fn jwks_with(url: &str, kid: &Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let set = jwks(url).await;
        if set["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == *kid)
        {
            return set;
        }
        assert!(
            Instant::now() < deadline,
            "{kid} never published at {url}: {set}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn kid_of(jwt: &str) -> Value {
    let header = jwt.split('.').next().unwrap();
    serde_json::from_slice::<Value>(&B64.decode(header).unwrap()).unwrap()["kid"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_verify_everywhere_rotate_and_are_revoked_everywhere() {
    let cluster = Cluster::start_with(ClusterOptions {
        extra: "[tokens]\naccess_ttl_s = 120\npublish_lead_s = 3\n".into(),
        ..Default::default()
    });
    cluster.warm_up().await;
    let clients = cluster.clients();
    let urls: Vec<String> = clients.iter().map(|c| c.url.clone()).collect();
    let ada = clients[0].create("ada@example.com", PW).await;
    cluster.converged(4, Duration::from_secs(60)).await;

    // A login returns both tokens; the access token verifies with any region's keys.
    let first = login(&urls[0]).await;
    assert_eq!(first["user_id"], ada);
    assert_eq!(first["token_type"], "Bearer");
    assert_eq!(first["expires_in"], 120);
    let access = first["access_token"].as_str().unwrap();
    for url in &urls {
        let (header, claims) = verify(access, &jwks_with(url, &kid_of(access)).await);
        assert_eq!(header["typ"], "JWT");
        assert_eq!(claims["sub"], ada);
        assert_eq!(
            (&claims["iss"], &claims["aud"]),
            (&json!("authsync"), &json!("authsync"))
        );
        let (iat, exp) = (
            claims["iat"].as_u64().unwrap(),
            claims["exp"].as_u64().unwrap(),
        );
        assert_eq!(exp - iat, 120);
        assert!(claims["jti"].as_str().unwrap().len() >= 16);
    }
    let second = login(&urls[0]).await;
    assert_ne!(
        verify(
            second["access_token"].as_str().unwrap(),
            &jwks(&urls[0]).await
        )
        .1["jti"],
        verify(access, &jwks(&urls[0]).await).1["jti"]
    );

    // A refresh rotates; presenting the spent token again revokes the family.
    let (status, rotated) = refresh(&urls[0], &first["refresh_token"]).await;
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(rotated["user_id"], ada);
    assert_ne!(rotated["refresh_token"], first["refresh_token"]);
    let (status, body) = refresh(&urls[0], &first["refresh_token"]).await;
    assert_eq!(
        (status, &body["error"]),
        (401, &json!("token_reused")),
        "{body}"
    );
    let (status, body) = refresh(&urls[0], &rotated["refresh_token"]).await;
    assert_eq!(
        (status, &body["error"]),
        (401, &json!("token_revoked")),
        "{body}"
    );

    // A logout revokes the family in every region.
    let third = login(&urls[0]).await;
    let logout = json!({"refresh_token": third["refresh_token"]});
    for _ in 0..2 {
        let (status, body) = call(&urls[0], "POST", "/v1/logout", Some(logout.clone())).await;
        assert_eq!(status, 204, "{body}");
    }
    entries_arrived(&urls, 1).await;
    for url in &urls {
        let (status, body) = refresh(url, &third["refresh_token"]).await;
        assert_eq!(
            (status, &body["error"]),
            (401, &json!("token_revoked")),
            "{url}: {body}"
        );
    }

    // Bad input: a clear 4xx, nothing changed.
    for (body, status, error) in [
        (json!({}), 400, "invalid_request"),
        (
            json!({"refresh_token": "x", "extra": 1}),
            400,
            "invalid_request",
        ),
        (json!({"refresh_token": 5}), 400, "invalid_request"),
        (json!({"refresh_token": "rt1.nope"}), 401, "invalid_token"),
        (
            json!({"refresh_token": "rt1.AAAAAAAAAAAAAAAAAAAAAA.0.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}),
            401,
            "invalid_token",
        ),
    ] {
        let (got, answer) = call(&urls[1], "POST", "/v1/token/refresh", Some(body.clone())).await;
        assert_eq!(
            (got, &answer["error"]),
            (status, &json!(error)),
            "{body}: {answer}"
        );
    }

    // A disabled account cannot refresh.
    let fourth = login(&urls[0]).await;
    let (status, _) = call(
        &urls[0],
        "PUT",
        &format!("/v1/users/{ada}/status"),
        Some(json!({"status": "disabled"})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = refresh(&urls[0], &fourth["refresh_token"]).await;
    assert_eq!(
        (status, &body["error"]),
        (401, &json!("account_inactive")),
        "{body}"
    );
    let (status, _) = call(
        &urls[0],
        "PUT",
        &format!("/v1/users/{ada}/status"),
        Some(json!({"status": "active"})),
    )
    .await;
    assert_eq!(status, 200);

    // Rotation: the new key is published at once and signs only after the lead time;
    // the old one stays published.
    let old_kid = kid_of(access);
    let (status, rotation) = call(&urls[0], "POST", "/v1/admin/signing-keys/rotate", None).await;
    assert_eq!(status, 201, "{rotation}");
    let new_kid = rotation["kid"].clone();
    assert_ne!(new_kid, old_kid);
    let set = jwks(&urls[0]).await;
    for kid in [&old_kid, &new_kid] {
        assert!(
            set["keys"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kid"] == *kid),
            "{set}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let signed_by_new = loop {
        let t = login(&urls[0]).await;
        let jwt = t["access_token"].as_str().unwrap().to_string();
        if kid_of(&jwt) == new_kid {
            break jwt;
        }
        assert_eq!(kid_of(&jwt), old_kid);
        assert!(Instant::now() < deadline, "the new key never signed");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(now_ms + 1_000 >= rotation["signs_from_ms"].as_u64().unwrap());
    for url in &urls {
        verify(&signed_by_new, &jwks_with(url, &new_kid).await);
        // Tokens the old key signed still verify.
        verify(access, &jwks(url).await);
    }
}

/// Waits until `url` holds account `id` at `version`.
async fn record_arrived(url: &str, id: &Value, version: &Value) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = call(
            url,
            "GET",
            &format!("/v1/users/{}", id.as_str().unwrap()),
            None,
        )
        .await;
        if status == 200 && body["version"] == *version {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} never saw version {version}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The attack: a stolen refresh token outlives the password change that was meant to
/// lock its thief out. Sessions opened in every region, one of them already rotated;
/// the password changed in a third; every one of them must end everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_or_a_lock_ends_every_session_in_every_region() {
    let cluster = Cluster::start();
    cluster.warm_up().await;
    let clients = cluster.clients();
    let urls: Vec<String> = clients.iter().map(|c| c.url.clone()).collect();
    let ada = json!(clients[0].create("ada@example.com", PW).await);
    cluster.converged(4, Duration::from_secs(60)).await;
    let mut sessions: Vec<Value> = Vec::new();
    for url in &urls {
        sessions.push(login(url).await["refresh_token"].clone());
    }
    let (status, rotated) = refresh(&urls[2], &sessions[2]).await;
    assert_eq!(status, 200, "{rotated}");
    sessions[2] = rotated["refresh_token"].clone();

    let user = format!("/v1/users/{}", ada.as_str().unwrap());
    let (status, body) = call(
        &urls[1],
        "PUT",
        &format!("{user}/password"),
        Some(json!({"password": "a brand new passphrase"})),
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let version = call(&urls[1], "GET", &user, None).await.1["version"].clone();
    for url in &urls {
        record_arrived(url, &ada, &version).await;
    }
    // Each session presented in a region other than the one that opened it.
    for (i, token) in sessions.iter().enumerate() {
        let url = &urls[(i + 1) % urls.len()];
        let (status, body) = refresh(url, token).await;
        assert_eq!(
            (status, &body["error"]),
            (401, &json!("token_revoked")),
            "session {i} at {url}: {body}"
        );
    }
    // A login with the new password opens a session that works.
    let (status, fresh) = call(
        &urls[0],
        "POST",
        "/v1/login",
        Some(json!({"login": "ada@example.com", "password": "a brand new passphrase"})),
    )
    .await;
    assert_eq!(status, 200, "{fresh}");
    // (Once its family has reached us-east.)
    entries_arrived(&urls, 1).await;
    let (status, body) = refresh(&urls[2], &fresh["refresh_token"]).await;
    assert_eq!(status, 200, "{body}");
    let session = body["refresh_token"].clone();

    // Locked and unlocked again: the session from before the lock stays ended.
    for status_name in ["locked", "active"] {
        let (status, body) = call(
            &urls[0],
            "PUT",
            &format!("{user}/status"),
            Some(json!({"status": status_name})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let version = call(&urls[0], "GET", &user, None).await.1["version"].clone();
    record_arrived(&urls[2], &ada, &version).await;
    let (status, body) = refresh(&urls[2], &session).await;
    assert_eq!(
        (status, &body["error"]),
        (401, &json!("token_revoked")),
        "{body}"
    );
}

/// The attack: a copied refresh token used in two regions within the replication lag
/// (made long here by taking the broker away). Each region rotates it, as neither can
/// know of the other; once they hear of each other, both branches are refused in
/// every region, rather than one silently winning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_refresh_token_rotated_in_two_regions_at_once_is_revoked_everywhere() {
    let mut cluster = Cluster::start();
    cluster.warm_up().await;
    let clients = cluster.clients();
    let urls: Vec<String> = clients.iter().map(|c| c.url.clone()).collect();
    clients[0].create("ada@example.com", PW).await;
    cluster.converged(4, Duration::from_secs(60)).await;
    let session = login(&urls[0]).await["refresh_token"].clone();
    entries_arrived(&urls, 1).await;

    assert!(cluster.broker.down(), "this test takes the broker away");
    let (status, at_a) = refresh(&urls[0], &session).await;
    assert_eq!(status, 200, "{at_a}");
    let (status, at_b) = refresh(&urls[1], &session).await;
    assert_eq!(status, 200, "{at_b}");
    assert!(cluster.broker.up());
    // Everything both regions wrote has arrived everywhere (a marker from each, behind
    // its rotation on its region's partition).
    entries_arrived(&urls, 2).await;
    entries_arrived(&[urls[1].clone(), urls[0].clone(), urls[2].clone()], 3).await;

    // Presented once each, in every region (a success would rotate and hide the fork).
    // Refused as revoked, or as unknown where the branch that won there never held it.
    for url in &urls {
        for (name, issued) in [("af-south's", &at_a), ("eu-west's", &at_b)] {
            let (status, body) = refresh(url, &issued["refresh_token"]).await;
            assert!(
                status == 401
                    && (body["error"] == "token_revoked" || body["error"] == "invalid_token"),
                "{name} rotation presented at {url}: {status} {body}"
            );
        }
    }
}
