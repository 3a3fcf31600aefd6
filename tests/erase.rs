//! Erase by crypto-shredding, on three regions: an account erased in one region
//! leaves, in every region, a tombstone and nothing to open it with; the user-key
//! topics end with a null under the account (what compaction keeps); and a copy of
//! the account's sealed record taken before the erase, put back into each region's
//! store, stays ciphertext there. The account's login-failure counts are swept from
//! every region after the erase.

mod common;

use std::time::{Duration, Instant};

use authsync::crypto::blind_index::BlindIndex;
use authsync::crypto::keyring::{keyring_path, Keyring};
use authsync::proto;
use authsync::storage::store::{IndexField, Store, StoreOptions, CF_RECORDS};
use common::{kafka_messages, metric_value, Cluster, ClusterOptions, REGIONS};
use prost::Message;
use serde_json::json;

const EMAIL: &str = "erase-me@quokka.example";
const WITHIN: Duration = Duration::from_secs(60);

/// Waits (bounded) until `GET path` answers `want` in every region.
async fn everywhere(cluster: &Cluster, path: &str, want: u16) {
    for c in cluster.clients() {
        let deadline = Instant::now() + WITHIN;
        loop {
            let r = c.get(path).await;
            if r.status == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{}{path} still answers {} {}",
                c.url,
                r.status,
                r.text
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_account_cannot_be_read_from_any_copy_in_any_region() {
    let mut cluster = Cluster::start_with(ClusterOptions {
        extra: "[entries]\nsweep_interval_ms = 200\n".into(),
        ..Default::default()
    });
    cluster.warm_up().await;
    let clients = cluster.clients();
    let created = clients[0]
        .post(
            "/v1/users",
            json!({"email": EMAIL, "phone": "+14155550199", "password": "correct horse battery",
                   "profile": {"given_name": "Erasmus"}}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.body["id"].as_str().unwrap().to_string();
    let path = format!("/v1/users/{id}");
    // Readable in every region: the record and the account's key both arrived.
    everywhere(&cluster, &path, 200).await;
    let uuid = uuid::Uuid::parse_str(&id).unwrap();
    // Failed logins: counts under the account id, replicated to every region.
    for _ in 0..3 {
        let r = clients[2]
            .post(
                "/v1/login",
                json!({"login": EMAIL, "password": "not the password"}),
            )
            .await;
        assert_eq!(r.status, 401, "{}", r.text);
    }

    // A sealed version from before the erase, as Kafka keeps it.
    let topic = format!("{}{}", cluster.prefix, REGIONS[0]);
    let sealed = kafka_messages(&cluster.broker.bootstrap, &topic)
        .into_iter()
        .filter_map(|m| proto::ChangeEvent::decode(m.payload?.as_slice()).ok())
        .filter_map(|e| e.record)
        .find(|r| r.id == uuid.as_bytes() && !r.tombstone)
        .expect("the account's record event in Kafka");

    let erased = clients[1].delete(&path).await;
    assert_eq!(erased.status, 204, "{}", erased.text);
    everywhere(&cluster, &path, 404).await;

    // Every region's user-key topic ends with a null under the account: what a
    // compacting broker keeps of it.
    for region in REGIONS {
        let topic =
            authsync::replication::config::user_key_topic(&format!("{}{region}", cluster.prefix));
        let deadline = Instant::now() + WITHIN;
        loop {
            let last = kafka_messages(&cluster.broker.bootstrap, &topic)
                .into_iter()
                .rfind(|m| m.key == id.as_bytes());
            if last.as_ref().is_some_and(|m| m.payload.is_none()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{topic} does not end with a null for {id}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // The entries sweeper removes the erased account's failure counts everywhere.
    for c in &clients {
        let deadline = Instant::now() + WITHIN;
        while metric_value(
            &c.metrics().await,
            "authsync_entries_swept_total",
            &[("kind", "login_failures")],
        )
        .unwrap_or(0.0)
            < 1.0
        {
            assert!(Instant::now() < deadline, "{}: failures not swept", c.url);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    for (node, region) in cluster.nodes.iter_mut().zip(REGIONS) {
        node.stop();
        let keyring = Keyring::load(&keyring_path(cluster.keys.path(), region)).unwrap();
        let store = Store::open(&node.data_dir(), &StoreOptions::default()).unwrap();
        // What remains: a tombstone; no key, no index entry.
        let stored = store.get(uuid.as_bytes()).unwrap().expect("the tombstone");
        assert!(stored.tombstone, "{region}");
        assert!(
            stored.info.is_none() && stored.secret.is_empty(),
            "{region}"
        );
        assert!(
            store.get_user_key(uuid.as_bytes()).unwrap().is_none(),
            "{region}"
        );
        let index = BlindIndex::new(keyring.index_key());
        assert_eq!(
            store
                .lookup(IndexField::Email, &index.email(EMAIL))
                .unwrap(),
            None,
            "{region}"
        );
        // The sealed copy put back in place: this region's master key still opens its
        // data key, and the account's key is gone, so it stays ciphertext.
        store
            .raw_put(CF_RECORDS, uuid.as_bytes(), &sealed.encode_to_vec())
            .unwrap();
        drop(store);
        node.start_again();
        let read = node.client().get(&path).await;
        assert_eq!(read.status, 503, "{region}: {}", read.text);
        assert!(!read.text.contains("Erasmus") && !read.text.contains(EMAIL));
        // The digest names it: one live record here without its account key.
        assert_eq!(node.client().unkeyed().await, 1, "{region}");
    }
}

/// Sets `topic`'s configs to the node's user-key settings with `overrides` on top (an
/// alter replaces a topic's whole config, as `kafka-configs --alter` without
/// `--add-config` would).
async fn alter_topic(bootstrap: &str, topic: &str, overrides: &[(&str, &str)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let mut alter = AlterConfig::new(ResourceSpecifier::Topic(topic));
    let mut settings: Vec<(&str, &str)> =
        authsync::replication::topics::USER_KEY_TOPIC_CONFIG.to_vec();
    settings.retain(|(k, _)| overrides.iter().all(|(o, _)| o != k));
    settings.extend_from_slice(overrides);
    for (k, v) in settings {
        alter = alter.set(k, v);
    }
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    for result in admin
        .alter_configs([&alter], &opts)
        .await
        .expect("alter configs")
    {
        result.unwrap_or_else(|(r, code)| panic!("alter {r:?}: {code}"));
    }
}

/// What the erase design relies on and only a compacting broker shows: after the erase,
/// the log cleaner removes the account's key message from every user-key topic, so no
/// copy of the key that opens the account's old records is left in Kafka. The null
/// stays (until `delete.retention.ms`), and a plain consumer reading each topic from
/// the start finds no value under the account's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a broker that compacts: Apache Kafka (AUTHSYNC_TEST_KAFKA_DIR, set by scripts/test.sh)"]
async fn compaction_removes_an_erased_accounts_key_from_every_user_key_topic() {
    let cluster = Cluster::start();
    assert!(
        cluster.broker.is_apache_kafka(),
        "run with AUTHSYNC_TEST_KAFKA_DIR: the embedded broker does not compact"
    );
    let bootstrap = cluster.broker.bootstrap.clone();
    let topics: Vec<String> = REGIONS
        .iter()
        .map(|r| authsync::replication::config::user_key_topic(&format!("{}{r}", cluster.prefix)))
        .collect();
    cluster.warm_up().await;
    // Segments roll within a second of their first message and are compacted as soon
    // as they are rolled (the node's own settings wait an hour for both).
    for topic in &topics {
        alter_topic(
            &bootstrap,
            topic,
            &[
                ("segment.ms", "1000"),
                ("max.compaction.lag.ms", "1000"),
                ("min.compaction.lag.ms", "0"),
                ("min.cleanable.dirty.ratio", "0.01"),
                ("delete.retention.ms", "3600000"),
            ],
        )
        .await;
    }
    let clients = cluster.clients();
    let id = clients[0].create(EMAIL, "correct horse battery").await;
    everywhere(&cluster, &format!("/v1/users/{id}"), 200).await;
    let keyed = |topic: &str| {
        let messages = kafka_messages(&bootstrap, topic);
        let under: Vec<_> = messages
            .into_iter()
            .filter(|m| m.key == id.as_bytes())
            .collect();
        let values = under.iter().filter(|m| m.payload.is_some()).count();
        (values, under.len() - values)
    };
    let before: Vec<(usize, usize)> = topics.iter().map(|t| keyed(t)).collect();
    assert!(
        before.iter().any(|(values, _)| *values > 0),
        "the account's key was never on a user-key topic: {before:?}"
    );

    let erased = clients[1].delete(&format!("/v1/users/{id}")).await;
    assert_eq!(erased.status, 204, "{}", erased.text);
    everywhere(&cluster, &format!("/v1/users/{id}"), 404).await;

    // A segment rolls on the first append after `segment.ms`, so accounts keep being
    // created (their keys land on every partition in time) until the cleaner has run.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    let mut fillers = 0;
    let after = loop {
        let now: Vec<(usize, usize)> = topics.iter().map(|t| keyed(t)).collect();
        if now.iter().all(|(values, nulls)| *values == 0 && *nulls > 0) {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "after {fillers} more accounts and {:?}, (key values, nulls) under the erased id per topic: {now:?}",
            started.elapsed()
        );
        clients[fillers % 3]
            .create(
                &format!("filler{fillers}@quokka.example"),
                "correct horse battery",
            )
            .await;
        fillers += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "compaction: (key values, nulls) under the erased account per user-key topic went from {before:?} to {after:?} in {:?} ({fillers} accounts created meanwhile)",
        started.elapsed()
    );
}
