//! Nothing secret leaves a node in the clear: a full three-region run, with the nodes
//! logging at debug level, then every log line of every node and every raw Kafka
//! message (key, payload, headers) searched for every email, phone, name, password,
//! token and API key the run used.

mod common;

use std::time::Duration;

use common::{call_as, kafka_messages, Cluster, API_KEY, REGIONS};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_any_log_line_or_raw_kafka_message_of_a_three_region_run() {
    // Every node logs at trace level, its dependencies included: the most it writes.
    std::env::set_var("AUTHSYNC_LOG", "trace");
    let cluster = Cluster::start();
    cluster.warm_up().await;
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url.clone()).collect();
    let mut secrets: Vec<String> = vec![API_KEY.to_string()];

    for i in 0..6 {
        let url = &urls[i % 3];
        let email = format!("leak-probe-{i}@quokka.example");
        let phone = format!("+1415555{:04}", 2600 + i);
        let name = format!("Zebulon{i}Quill");
        let password = format!("marmalade-{i}-horse-battery");
        let (status, created) = call_as(
            url,
            API_KEY,
            "POST",
            "/v1/users",
            Some(json!({"email": email, "phone": phone, "password": password,
                        "profile": {"given_name": name}})),
        )
        .await;
        assert_eq!(status, 201, "{created}");
        let id = created["id"].as_str().unwrap().to_string();
        let new_name = format!("Xanthippe{i}Vole");
        let (status, _) = call_as(
            url,
            API_KEY,
            "PATCH",
            &format!("/v1/users/{id}"),
            Some(json!({"profile": {"family_name": new_name}})),
        )
        .await;
        assert_eq!(status, 200);
        // Wrong passwords until the backoff refuses, then the lookup paths.
        let wrong = format!("wrong-{i}-parsnip");
        for _ in 0..6 {
            call_as(
                url,
                API_KEY,
                "POST",
                "/v1/login",
                Some(json!({"login": email, "password": wrong})),
            )
            .await;
        }
        call_as(
            url,
            API_KEY,
            "GET",
            &format!("/v1/users?email={email}"),
            None,
        )
        .await;
        call_as(
            url,
            API_KEY,
            "GET",
            &format!("/v1/users?phone=%2B{}", &phone[1..]),
            None,
        )
        .await;
        secrets.extend([email, phone, name, password, new_name, wrong]);
    }
    // Tokens: a login (of a user not backed off), a refresh, a logout.
    let (status, _) = call_as(
        &urls[0],
        API_KEY,
        "POST",
        "/v1/users",
        Some(json!({"email": "tokens-probe@quokka.example", "password": "ocelot-mango-battery"})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, tokens) = call_as(
        &urls[0],
        API_KEY,
        "POST",
        "/v1/login",
        Some(json!({"login": "tokens-probe@quokka.example", "password": "ocelot-mango-battery"})),
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
    let (status, refreshed) = call_as(
        &urls[0],
        API_KEY,
        "POST",
        "/v1/token/refresh",
        Some(json!({"refresh_token": tokens["refresh_token"]})),
    )
    .await;
    assert_eq!(status, 200, "{refreshed}");
    let (status, _) = call_as(
        &urls[0],
        API_KEY,
        "POST",
        "/v1/logout",
        Some(json!({"refresh_token": refreshed["refresh_token"]})),
    )
    .await;
    assert_eq!(status, 204);
    // An API key added at runtime, and a signing key rotation.
    let (status, added) = call_as(
        &urls[1],
        API_KEY,
        "POST",
        "/v1/admin/api-keys",
        Some(json!({"name": "probe", "scopes": ["read"]})),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = call_as(
        &urls[2],
        API_KEY,
        "POST",
        "/v1/admin/signing-keys/rotate",
        None,
    )
    .await;
    assert_eq!(status, 201);
    for t in [&tokens, &refreshed] {
        for field in ["access_token", "refresh_token"] {
            let token = t[field].as_str().unwrap().to_string();
            // The whole token, and its secret part alone.
            secrets.push(token.rsplit('.').next().unwrap().to_string());
            secrets.push(token);
        }
    }
    secrets.push(added["key"].as_str().unwrap().to_string());
    secrets.extend([
        "tokens-probe@quokka.example".into(),
        "ocelot-mango-battery".into(),
    ]);
    // Three warm-up accounts, six probes, one for the tokens.
    cluster.converged(10, Duration::from_secs(60)).await;

    let mut all_logs = String::new();
    for (node, region) in cluster.nodes.iter().zip(REGIONS) {
        let log = node.log();
        for s in &secrets {
            assert!(!log.contains(s.as_str()), "{s:?} in {region}'s log");
        }
        all_logs.push_str(&log);
    }
    // The logs were captured, with the events that name a key by its id only.
    for line in ["node serving", "API key added", "signing key published"] {
        assert!(all_logs.contains(line), "no {line:?} logged:\n{all_logs}");
    }
    let mut messages = 0;
    let topics = REGIONS.iter().flat_map(|region| {
        let topic = format!("{}{region}", cluster.prefix);
        [authsync::replication::config::user_key_topic(&topic), topic]
    });
    for topic in topics {
        for message in kafka_messages(&cluster.broker.bootstrap, &topic) {
            let bytes = message.raw();
            messages += 1;
            for s in &secrets {
                assert!(
                    !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                    "{s:?} in a message of {topic}"
                );
            }
        }
    }
    // Records, user keys, entries (failures, token families, keys): dozens at least.
    assert!(messages > 40, "only {messages} messages read");
}
