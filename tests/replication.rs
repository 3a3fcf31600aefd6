//! Three regions replicating through a Kafka-protocol broker: the embedded mock
//! cluster by default, the real broker when `AUTHSYNC_TEST_KAFKA` names one.

mod common;

use std::time::Duration;

use common::Cluster;
use serde_json::json;

const PW: &str = "correct horse battery";
const CONVERGE: Duration = Duration::from_secs(60);

async fn wait_for_user(c: &common::Client, id: &str) -> serde_json::Value {
    for _ in 0..300 {
        let r = c.get(&format!("/v1/users/{id}")).await;
        if r.status == 200 {
            return r.body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("user {id} never reached {}", c.url);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_in_every_region_reach_every_other_region() {
    let cluster = Cluster::start();
    let clients = cluster.clients();
    let mut ids = Vec::new();
    for (i, c) in clients.iter().enumerate() {
        let r = c
            .post(
                "/v1/users",
                json!({"email": format!("r{i}@example.com"), "phone": format!("+1415555{:04}", 2000 + i),
                       "password": PW, "profile": {"home": common::REGIONS[i]}}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        ids.push((i, r.body["id"].as_str().unwrap().to_string()));
    }
    for (origin, id) in &ids {
        for c in &clients {
            let u = wait_for_user(c, id).await;
            assert_eq!(u["profile"]["home"], common::REGIONS[*origin]);
            assert_eq!(u["version"]["region"], common::REGIONS[*origin]);
        }
    }
    // Lookups by email and logins work in a region that did not take the write.
    let elsewhere = &clients[2];
    assert_eq!(
        elsewhere
            .get("/v1/users?email=r0%40example.com")
            .await
            .status,
        200
    );
    assert_eq!(
        elsewhere
            .post(
                "/v1/login",
                json!({"login": "r0@example.com", "password": PW})
            )
            .await
            .status,
        200
    );
    // An update and a delete travel too.
    let (_, first) = &ids[0];
    let r = clients[1]
        .send(
            "PATCH",
            &format!("/v1/users/{first}"),
            Some(json!({"email": "moved@example.com"})),
        )
        .await;
    assert_eq!(r.status, 200);
    let (_, second) = &ids[1];
    assert_eq!(
        clients[2]
            .send("DELETE", &format!("/v1/users/{second}"), None)
            .await
            .status,
        204
    );
    cluster.converged(3, CONVERGE).await;
    for c in &clients {
        assert_eq!(
            c.get("/v1/users?email=moved%40example.com").await.status,
            200,
            "{}",
            c.url
        );
        assert_eq!(
            c.get("/v1/users?email=r0%40example.com").await.status,
            404,
            "old email index moved"
        );
        assert_eq!(c.get(&format!("/v1/users/{second}")).await.status, 404);
    }
    let m = clients[0].metrics().await;
    assert!(
        common::metric_value(
            &m,
            "authsync_replication_events_total",
            &[("outcome", "applied")]
        )
        .unwrap()
            >= 2.0
    );
    assert!(
        m.contains("authsync_replication_lag_seconds_bucket"),
        "lag histogram exported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_updates_in_all_regions_converge() {
    let cluster = Cluster::start();
    let clients = cluster.clients();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(clients[0].create(&format!("hot{i}@example.com"), PW).await);
    }
    for id in &ids {
        for c in &clients {
            wait_for_user(c, id).await;
        }
    }
    // Every region updates every hot user at the same time, several rounds.
    for round in 0..4 {
        let mut tasks = Vec::new();
        for (r, c) in clients.iter().enumerate() {
            for id in &ids {
                let c = c.clone();
                let id = id.clone();
                tasks.push(tokio::spawn(async move {
                    let resp = c
                        .send(
                            "PATCH",
                            &format!("/v1/users/{id}"),
                            Some(json!({"profile": {"writer": common::REGIONS[r], "round": round.to_string()}})),
                        )
                        .await;
                    assert_eq!(resp.status, 200, "{}", resp.text);
                }));
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
    cluster.converged(5, CONVERGE).await;
    // Not just the same versions: the same content everywhere.
    for id in &ids {
        let views: Vec<serde_json::Value> = {
            let mut v = Vec::new();
            for c in &clients {
                v.push(c.get(&format!("/v1/users/{id}")).await.body);
            }
            v
        };
        assert!(views.iter().all(|v| v == &views[0]), "{views:?}");
        assert_eq!(views[0]["profile"]["round"], "3");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_same_email_creates_end_as_one_winner_and_one_merged_account() {
    let mut cluster = Cluster::start();
    let clients = cluster.clients();
    let warm = cluster.warm_up().await.len() as u64;
    // Cut replication so neither region can see the other's account in time.
    let cut = cluster.broker.down();
    let a = clients[0]
        .post("/v1/users", json!({"email": "twin@example.com", "password": PW, "profile": {"from": "a", "a_only": "1"}}))
        .await;
    let b = clients[1]
        .post("/v1/users", json!({"email": "TWIN@example.com", "password": "another good passphrase", "profile": {"from": "b", "b_only": "2"}}))
        .await;
    assert_eq!(a.status, 201, "{}", a.text);
    assert_eq!(b.status, 201, "{}", b.text);
    if cut {
        assert!(cluster.broker.up());
    }
    let a_id = a.body["id"].as_str().unwrap().to_string();
    let b_id = b.body["id"].as_str().unwrap().to_string();
    let digest = cluster.converged(warm + 2, CONVERGE).await;
    assert!(!digest.is_empty());
    // a was created first: it wins everywhere, b is merged into it.
    for c in &clients {
        let winner = c.get(&format!("/v1/users/{a_id}")).await.body;
        let loser = c.get(&format!("/v1/users/{b_id}")).await.body;
        assert_eq!(winner["status"], "active", "{}", c.url);
        assert_eq!(loser["status"], "merged", "{}", c.url);
        assert_eq!(loser["merged_into"], a_id.as_str());
        assert_eq!(winner["profile"]["from"], "a", "the winner's values stand");
        assert_eq!(
            winner["profile"]["b_only"], "2",
            "the loser's fields are folded in"
        );
        let found = c.get("/v1/users?email=twin%40example.com").await.body;
        assert_eq!(found["id"], a_id.as_str());
        // Both passwords open the one account.
        for pw in [PW, "another good passphrase"] {
            let r = c
                .post(
                    "/v1/login",
                    json!({"login": "twin@example.com", "password": pw}),
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.text);
            assert_eq!(r.body["user_id"], a_id.as_str());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_region_catches_up_with_nothing_lost() {
    let mut cluster = Cluster::start();
    let first = cluster.clients()[0].create("before@example.com", PW).await;
    cluster.converged(1, CONVERGE).await;
    cluster.nodes[2].stop();
    let clients = cluster.clients();
    let mut ids = vec![first];
    for i in 0..20 {
        ids.push(
            clients[i % 2]
                .create(&format!("while-away{i}@example.com"), PW)
                .await,
        );
    }
    cluster.nodes[2].start_again();
    cluster.converged(21, CONVERGE).await;
    let back = cluster.nodes[2].client();
    for id in &ids {
        assert_eq!(back.get(&format!("/v1/users/{id}")).await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_on_while_the_broker_is_down_and_nothing_is_lost() {
    let mut cluster = Cluster::start();
    if !cluster.broker.controllable() {
        eprintln!("skipped: the broker named by AUTHSYNC_TEST_KAFKA cannot be stopped by the test");
        return;
    }
    let clients = cluster.clients();
    let warm = cluster.warm_up().await.len() as u64;
    assert!(cluster.broker.down());
    for i in 0..10 {
        clients[i % 3]
            .create(&format!("offline{i}@example.com"), PW)
            .await;
    }
    let m = clients[0].metrics().await;
    assert!(common::metric_value(&m, "authsync_outbox_depth", &[]).is_some());
    assert!(cluster.broker.up());
    cluster.converged(warm + 10, CONVERGE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_every_topic_from_the_start_changes_no_digest() {
    let mut cluster = Cluster::start();
    let clients = cluster.clients();
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            clients[i % 3]
                .create(&format!("replay{i}@example.com"), PW)
                .await,
        );
    }
    for id in &ids {
        for c in &clients {
            wait_for_user(c, id).await;
        }
    }
    for id in &ids[..3] {
        let r = clients[1]
            .send(
                "PATCH",
                &format!("/v1/users/{id}"),
                Some(json!({"profile": {"k": "v"}})),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        clients[2]
            .send("DELETE", &format!("/v1/users/{}", ids[5]), None)
            .await
            .status,
        204
    );
    let before = cluster.converged(6, CONVERGE).await;

    // eu-west joins a fresh consumer group: every peer event is delivered again.
    cluster.nodes[1].stop();
    let path = cluster.nodes[1].config_path();
    let config = std::fs::read_to_string(&path).unwrap();
    let replay = config.replace(
        &format!("consumer_group = \"{}eu-west\"", cluster.prefix),
        &format!("consumer_group = \"{}eu-west-replay\"", cluster.prefix),
    );
    assert_ne!(config, replay);
    std::fs::write(&path, replay).unwrap();
    cluster.nodes[1].start_again();
    let c = cluster.nodes[1].client();
    // Events from af-south and us-east: 4 creates, 1 delete, plus none of eu-west's own.
    let mut replayed = 0.0;
    for _ in 0..300 {
        let m = c.metrics().await;
        replayed = common::metric_value(
            &m,
            "authsync_replication_events_total",
            &[("source", "af-south"), ("outcome", "skipped")],
        )
        .unwrap_or(0.0)
            + common::metric_value(
                &m,
                "authsync_replication_events_total",
                &[("source", "us-east"), ("outcome", "skipped")],
            )
            .unwrap_or(0.0);
        if replayed >= 5.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(replayed >= 5.0, "replay not delivered: {replayed}");
    assert_eq!(
        cluster.converged(6, CONVERGE).await,
        before,
        "a replay changes nothing"
    );
}
