//! The HTTP API of one node, driven from the outside.

mod common;

use common::{metric_value, TestNode, API_KEY};
use serde_json::json;

const PW: &str = "correct horse battery";

#[tokio::test]
async fn create_read_and_look_up_by_email_and_phone() {
    let node = TestNode::start();
    let c = node.client();
    let r = c
        .post(
            "/v1/users",
            json!({"email": "  Ada@Example.com ", "phone": "+1 (415) 555-2671", "password": PW,
                   "profile": {"given_name": "Ada", "family_name": "Lovelace"}}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.body["id"].as_str().unwrap().to_string();
    assert!(r.body["version"]["ts"].as_u64().unwrap() > 0);
    assert_eq!(r.body["version"]["region"], "af-south");

    let got = c.get(&format!("/v1/users/{id}")).await;
    assert_eq!(got.status, 200, "{}", got.text);
    let u = &got.body;
    assert_eq!(u["id"], id.as_str());
    assert_eq!(u["email"], "ada@example.com", "email is normalised");
    assert_eq!(u["phone"], "+14155552671", "phone is E.164");
    assert_eq!(u["status"], "active");
    assert_eq!(u["profile"]["family_name"], "Lovelace");
    assert_eq!(u["version"], r.body["version"]);
    assert!(u["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(u["created_at"], u["updated_at"]);

    let by_email = c.get("/v1/users?email=ADA%40example.com").await;
    assert_eq!(by_email.status, 200, "{}", by_email.text);
    assert_eq!(by_email.body, got.body);
    let by_phone = c.get("/v1/users?phone=%2B14155552671").await;
    assert_eq!(by_phone.body, got.body);

    assert_eq!(
        c.get("/v1/users?email=nobody%40example.com").await.status,
        404
    );
    assert_eq!(
        c.get("/v1/users/6f1c2f7e-3d7a-4a55-9d5e-0d8b7f0c1a2b")
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn taken_email_or_phone_is_a_conflict_and_changes_nothing() {
    let node = TestNode::start();
    let c = node.client();
    let r = c
        .post(
            "/v1/users",
            json!({"email": "grace@example.com", "phone": "+442079460958", "password": PW}),
        )
        .await;
    assert_eq!(r.status, 201);
    let before = c.digest().await;
    let dup_email = c
        .post(
            "/v1/users",
            json!({"email": "GRACE@example.com", "password": PW}),
        )
        .await;
    assert_eq!(dup_email.status, 409, "{}", dup_email.text);
    assert_eq!(dup_email.body["details"][0]["field"], "email");
    let dup_both = c
        .post(
            "/v1/users",
            json!({"email": "grace@example.com", "phone": "+44 20 7946 0958", "password": PW}),
        )
        .await;
    assert_eq!(dup_both.status, 409);
    assert_eq!(
        dup_both.body["details"].as_array().unwrap().len(),
        2,
        "{}",
        dup_both.text
    );
    assert_eq!(c.digest().await, before);
}

#[tokio::test]
async fn patch_moves_the_indexes_and_merges_profile() {
    let node = TestNode::start();
    let c = node.client();
    let id = c.create("old@example.com", PW).await;
    let other = c.create("taken@example.com", PW).await;
    let r = c
        .send(
            "PATCH",
            &format!("/v1/users/{id}"),
            Some(json!({"profile": {"city": "Lagos", "nick": "ada"}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = c
        .send(
            "PATCH",
            &format!("/v1/users/{id}"),
            Some(json!({"email": "new@example.com", "phone": "+14155552671", "profile": {"nick": null}})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["id"], id.as_str());
    let v2 = r.body["version"]["ts"].as_u64().unwrap();

    assert_eq!(c.get("/v1/users?email=old%40example.com").await.status, 404);
    let u = c.get("/v1/users?email=new%40example.com").await;
    assert_eq!(u.status, 200);
    assert_eq!(u.body["id"], id.as_str());
    assert_eq!(u.body["phone"], "+14155552671");
    assert_eq!(u.body["profile"], json!({"city": "Lagos"}));
    assert_eq!(u.body["version"]["ts"].as_u64().unwrap(), v2);

    // The old address is free again; a taken one is refused.
    assert_eq!(
        c.post(
            "/v1/users",
            json!({"email": "old@example.com", "password": PW})
        )
        .await
        .status,
        201
    );
    let clash = c
        .send(
            "PATCH",
            &format!("/v1/users/{other}"),
            Some(json!({"email": "new@example.com"})),
        )
        .await;
    assert_eq!(clash.status, 409);
    // Clearing the phone frees it.
    let r = c
        .send(
            "PATCH",
            &format!("/v1/users/{id}"),
            Some(json!({"phone": null})),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(c.get("/v1/users?phone=%2B14155552671").await.status, 404);
    assert_eq!(
        c.send(
            "PATCH",
            "/v1/users/0b8f6c56-64b0-4a53-9a4a-3f2f0cba3b1e",
            Some(json!({"profile": {"a": "b"}}))
        )
        .await
        .status,
        404
    );
}

#[tokio::test]
async fn login_password_change_and_status() {
    let node = TestNode::start();
    let c = node.client();
    let r = c
        .post(
            "/v1/users",
            json!({"email": "lin@example.com", "phone": "+33142685300", "password": PW}),
        )
        .await;
    let id = r.body["id"].as_str().unwrap().to_string();

    let ok = c
        .post(
            "/v1/login",
            json!({"login": "LIN@example.com", "password": PW}),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.body["user_id"], id.as_str());
    let by_phone = c
        .post(
            "/v1/login",
            json!({"login": "+33 1 42 68 53 00", "password": PW}),
        )
        .await;
    assert_eq!(by_phone.status, 200, "{}", by_phone.text);

    let wrong = c
        .post(
            "/v1/login",
            json!({"login": "lin@example.com", "password": "not the password"}),
        )
        .await;
    let unknown = c
        .post(
            "/v1/login",
            json!({"login": "nobody@example.com", "password": PW}),
        )
        .await;
    let garbage = c
        .post("/v1/login", json!({"login": "not a login", "password": PW}))
        .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(wrong.body["error"], "invalid_credentials");
    assert_eq!(unknown.text, wrong.text, "unknown and wrong look the same");
    assert_eq!(garbage.text, wrong.text);

    let r = c
        .send(
            "PUT",
            &format!("/v1/users/{id}/password"),
            Some(json!({"password": "a much newer passphrase"})),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert_eq!(
        c.post(
            "/v1/login",
            json!({"login": "lin@example.com", "password": PW})
        )
        .await
        .status,
        401
    );
    assert_eq!(
        c.post(
            "/v1/login",
            json!({"login": "lin@example.com", "password": "a much newer passphrase"})
        )
        .await
        .status,
        200
    );

    for (status, error) in [
        ("locked", "account_locked"),
        ("disabled", "account_disabled"),
    ] {
        let r = c
            .send(
                "PUT",
                &format!("/v1/users/{id}/status"),
                Some(json!({"status": status})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["status"], status);
        assert_eq!(
            c.get(&format!("/v1/users/{id}")).await.body["status"],
            status
        );
        let refused = c
            .post(
                "/v1/login",
                json!({"login": "lin@example.com", "password": "a much newer passphrase"}),
            )
            .await;
        assert_eq!(refused.status, 403, "{}", refused.text);
        assert_eq!(refused.body["error"], error);
        // A wrong password on a locked account says nothing about the lock.
        let wrong = c
            .post(
                "/v1/login",
                json!({"login": "lin@example.com", "password": "still wrong"}),
            )
            .await;
        assert_eq!(wrong.status, 401);
    }
    let r = c
        .send(
            "PUT",
            &format!("/v1/users/{id}/status"),
            Some(json!({"status": "active"})),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        c.post(
            "/v1/login",
            json!({"login": "lin@example.com", "password": "a much newer passphrase"})
        )
        .await
        .status,
        200
    );

    let metrics = c.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "authsync_logins_total",
            &[("outcome", "invalid_credentials")]
        )
        .unwrap()
            >= 3.0
    );
    assert!(
        metric_value(
            &metrics,
            "authsync_logins_total",
            &[("outcome", "forbidden")]
        )
        .unwrap()
            >= 2.0
    );
}

#[tokio::test]
async fn delete_leaves_a_tombstone_and_frees_the_email() {
    let node = TestNode::start();
    let c = node.client();
    let r = c
        .post(
            "/v1/users",
            json!({"email": "gone@example.com", "phone": "+14155552671", "password": PW}),
        )
        .await;
    let id = r.body["id"].as_str().unwrap().to_string();
    let (count_before, _) = c.digest().await;
    assert_eq!(
        c.send("DELETE", &format!("/v1/users/{id}"), None)
            .await
            .status,
        204
    );
    assert_eq!(c.get(&format!("/v1/users/{id}")).await.status, 404);
    assert_eq!(
        c.get("/v1/users?email=gone%40example.com").await.status,
        404
    );
    assert_eq!(c.get("/v1/users?phone=%2B14155552671").await.status, 404);
    assert_eq!(
        c.post(
            "/v1/login",
            json!({"login": "gone@example.com", "password": PW})
        )
        .await
        .status,
        401
    );
    assert_eq!(
        c.send("DELETE", &format!("/v1/users/{id}"), None)
            .await
            .status,
        404
    );
    assert_eq!(
        c.send(
            "PATCH",
            &format!("/v1/users/{id}"),
            Some(json!({"profile": {"a": "b"}}))
        )
        .await
        .status,
        404
    );
    // The tombstone stays in the digest; the address can be used again.
    assert_eq!(c.digest().await.0, count_before);
    assert_eq!(
        c.post(
            "/v1/users",
            json!({"email": "gone@example.com", "password": PW})
        )
        .await
        .status,
        201
    );
}

#[tokio::test]
async fn api_key_is_required_except_for_probes() {
    let node = TestNode::start();
    let http = reqwest::Client::new();
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = http
            .get(format!("{}{path}", node.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let metrics = http
        .get(format!("{}/metrics", node.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("authsync_node_up"), "{metrics}");
    let none = http
        .get(format!("{}/v1/admin/digest", node.url))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 401);
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    let body: serde_json::Value = none.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");
    let wrong = http
        .post(format!("{}/v1/users", node.url))
        .bearer_auth("not-the-key")
        .json(&json!({"email": "x@example.com", "password": PW}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let right = http
        .get(format!("{}/v1/admin/digest", node.url))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), 200);
    assert_eq!(
        node.client().digest().await.0,
        0,
        "the refused create wrote nothing"
    );
}

#[tokio::test]
async fn every_class_of_bad_input_is_a_4xx_with_details_and_changes_nothing() {
    let node = TestNode::start();
    let c = node.client();
    let id = c.create("base@example.com", PW).await;
    let before = c.digest().await;
    let http = reqwest::Client::new();
    let raw = |method: reqwest::Method, path: &str, ctype: Option<&str>, body: Vec<u8>| {
        let mut req = http
            .request(method, format!("{}{path}", node.url))
            .bearer_auth(API_KEY)
            .body(body);
        if let Some(t) = ctype {
            req = req.header("content-type", t);
        }
        req.send()
    };
    use reqwest::Method;
    /// (name, method, path, content type, body, status, fields named in the error)
    type Case<'a> = (
        &'a str,
        Method,
        String,
        Option<&'a str>,
        Vec<u8>,
        u16,
        Vec<&'a str>,
    );
    let cases: Vec<Case> = vec![
        ("malformed json", Method::POST, "/v1/users".into(), Some("application/json"), b"{\"email\": ".to_vec(), 400, vec!["body"]),
        ("not an object", Method::POST, "/v1/users".into(), Some("application/json"), b"[1,2]".to_vec(), 400, vec!["body"]),
        ("wrong types", Method::POST, "/v1/users".into(), Some("application/json"),
            json!({"email": 5, "password": true, "profile": "x"}).to_string().into_bytes(), 400, vec!["email", "password", "profile"]),
        ("unknown and missing fields", Method::POST, "/v1/users".into(), Some("application/json"),
            json!({"mail": "a@example.com"}).to_string().into_bytes(), 400, vec!["mail", "email", "password"]),
        ("bad email, phone and weak password", Method::POST, "/v1/users".into(), Some("application/json"),
            json!({"email": "not-an-email", "phone": "555", "password": "123"}).to_string().into_bytes(), 400, vec!["email", "phone", "password"]),
        ("common password", Method::POST, "/v1/users".into(), Some("application/json"),
            json!({"email": "new@example.com", "password": "password123"}).to_string().into_bytes(), 400, vec!["password"]),
        ("wrong content type", Method::POST, "/v1/users".into(), Some("text/plain"),
            json!({"email": "new@example.com", "password": PW}).to_string().into_bytes(), 415, vec!["content-type"]),
        ("no content type", Method::POST, "/v1/users".into(), None,
            json!({"email": "new@example.com", "password": PW}).to_string().into_bytes(), 415, vec!["content-type"]),
        ("oversized body", Method::POST, "/v1/users".into(), Some("application/json"),
            json!({"email": "new@example.com", "password": PW, "profile": {"bio": "x".repeat(100_000)}}).to_string().into_bytes(), 413, vec!["body"]),
        ("bad id and bad patch", Method::PATCH, "/v1/users/not-a-uuid".into(), Some("application/json"),
            json!({"email": 1}).to_string().into_bytes(), 400, vec!["id", "email"]),
        ("empty patch", Method::PATCH, format!("/v1/users/{id}"), Some("application/json"), b"{}".to_vec(), 400, vec!["body"]),
        ("bad status", Method::PUT, format!("/v1/users/{id}/status"), Some("application/json"),
            json!({"status": "merged"}).to_string().into_bytes(), 400, vec!["status"]),
        ("weak new password", Method::PUT, format!("/v1/users/{id}/password"), Some("application/json"),
            json!({"password": "aaaaaaaaaaaa"}).to_string().into_bytes(), 400, vec!["password"]),
        (
            "new password is the email",
            Method::PUT,
            format!("/v1/users/{id}/password"),
            Some("application/json"),
            json!({"password": "BASE@example.com"}).to_string().into_bytes(),
            400,
            vec!["password"],
        ),
        ("login without password", Method::POST, "/v1/login".into(), Some("application/json"),
            json!({"login": "base@example.com", "extra": 1}).to_string().into_bytes(), 400, vec!["password", "extra"]),
        ("import not an array", Method::POST, "/v1/users/import".into(), Some("application/json"),
            json!({"email": "a@example.com"}).to_string().into_bytes(), 400, vec!["body"]),
        ("import with bad items", Method::POST, "/v1/users/import".into(), Some("application/json"),
            json!([{"email": "ok@example.com", "legacy_hash": {"algorithm": "md5", "hash": "5f4dcc3b5aa765d61d8327deb882cf99"}, "source": "shop"},
                   {"email": "bad", "legacy_hash": {"algorithm": "md5", "hash": "zz"}, "source": "shop"}]).to_string().into_bytes(),
            400, vec!["[1].email", "[1].legacy_hash.hash"]),
    ];
    for (name, method, path, ctype, body, status, fields) in cases {
        let resp = raw(method, &path, ctype, body).await.unwrap();
        let got = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        assert_eq!(got, status, "{name}: {text}");
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{name}: not JSON: {text}"));
        assert!(v["error"].is_string(), "{name}: {text}");
        let details: Vec<&str> = v["details"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["field"].as_str().unwrap())
            .collect();
        for f in fields {
            assert!(details.contains(&f), "{name}: {f} not in {text}");
        }
        for d in v["details"].as_array().unwrap() {
            assert!(!d["problem"].as_str().unwrap().is_empty(), "{name}: {text}");
        }
    }
    assert_eq!(c.digest().await, before, "no bad request changed anything");
    let bad_query = c
        .get("/v1/users?email=a%40example.com&phone=%2B14155552671")
        .await;
    assert_eq!(bad_query.status, 400);
    let bad_query = c.get("/v1/users?mail=x").await;
    assert_eq!(bad_query.status, 400);
    let bad_email = c.get("/v1/users?email=nope").await;
    assert_eq!(bad_email.status, 400, "{}", bad_email.text);
}

#[tokio::test]
async fn a_write_survives_kill_minus_nine() {
    let mut node = TestNode::start();
    let c = node.client();
    let r = c
        .post(
            "/v1/users",
            json!({"email": "durable@example.com", "password": PW, "profile": {"k": "v"}}),
        )
        .await;
    assert_eq!(r.status, 201);
    let id = r.body["id"].as_str().unwrap().to_string();
    node.restart(); // SIGKILL, then start again on the same data directory
    let c = node.client();
    let got = c.get(&format!("/v1/users/{id}")).await;
    assert_eq!(got.status, 200, "{}", got.text);
    assert_eq!(got.body["email"], "durable@example.com");
    assert_eq!(got.body["profile"]["k"], "v");
    assert_eq!(
        c.post(
            "/v1/login",
            json!({"login": "durable@example.com", "password": PW})
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn sigterm_stops_the_node_cleanly_and_data_stays() {
    let mut node = TestNode::start();
    let id = node.client().create("calm@example.com", PW).await;
    node.stop();
    node.start_again();
    assert_eq!(
        node.client().get(&format!("/v1/users/{id}")).await.status,
        200
    );
}
