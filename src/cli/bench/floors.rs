//! The floors each bench figure is printed beside, measured in this process: the
//! envelope seal + open and one password hash of the bench's user, raw synced RocksDB
//! puts of its record's size, and produce → consume round trips on the broker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

use authsync::accounts::users::Users;
use authsync::common::hlc::{Hlc, SystemClock};
use authsync::crypto::password::{PasswordAlgorithm, Passwords};
use authsync::storage::store::{Store, StoreOptions, WalSync};

use super::{profile, BenchOptions, Floors, Latency, Throughput};

/// The floors, measured here.
pub(super) async fn floors(opts: &BenchOptions, bootstrap: Option<&str>) -> anyhow::Result<Floors> {
    let (record_bytes, seal_open_us, hash_ms) = {
        let bytes = opts.profile_bytes;
        tokio::task::spawn_blocking(move || crypto_floors(bytes)).await??
    };
    let rocksdb_put = {
        let (n, c) = (opts.users, opts.concurrency);
        tokio::task::spawn_blocking(move || rocksdb_floor(n, c, record_bytes)).await??
    };
    let kafka_round_trip = match bootstrap {
        // A broker that stopped answering loses this floor, not the whole run.
        Some(b) => match kafka_floor(b, opts.kafka_round_trips.max(1)).await {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("bench: no Kafka floor: {e:#}");
                None
            }
        },
        None => None,
    };
    Ok(Floors {
        rocksdb_put,
        record_bytes,
        envelope_seal_open_us: seal_open_us,
        password_hash_ms: hash_ms,
        kafka_round_trip,
    })
}

/// (encoded record size, seal + open µs, password hash ms) for a user like the bench's.
fn crypto_floors(profile_bytes: usize) -> anyhow::Result<(usize, f64, f64)> {
    use prost::Message as _;
    let dir = tempfile::tempdir()?;
    let regions: Vec<String> = authsync::node::local_cluster::DEMO_REGIONS
        .iter()
        .map(|r| r.to_string())
        .collect();
    let keyring = authsync::crypto::keyring::init(&regions)?.remove(0);
    let pepper = *keyring.pepper();
    let store = Arc::new(Store::open(dir.path(), &StoreOptions::default())?);
    let passwords = Passwords::new(PasswordAlgorithm::Argon2id, &pepper)?;
    let hlc = Arc::new(Hlc::new(regions[0].clone(), 500, Box::new(SystemClock)));
    let users = Users::new(store.clone(), keyring, passwords, hlc, 8);
    let input = authsync::accounts::input::new_user(
        &json!({"email": "floor@example.com", "password": "correct horse battery",
                "profile": profile(profile_bytes, 0)}),
        8,
    )
    .map_err(|p| anyhow::anyhow!("bench user: {p:?}"))?;
    let (id, _) = users.create(input)?;
    let record = store.get(id.as_bytes())?.context("record just written")?;
    let record_bytes = record.encode_to_vec().len();
    let keyring = users.keyring();
    let user_key = store
        .get_user_key(id.as_bytes())?
        .context("user key just written")?;
    let user = authsync::crypto::envelope::open_user_key(&user_key, &keyring)?;
    let info = authsync::crypto::envelope::open(&record, &keyring, &user)?;
    let rounds = 2000;
    let t = Instant::now();
    for _ in 0..rounds {
        let mut r = record.clone();
        // What a write does: open the user's key, seal; what a read does: open both.
        let user = authsync::crypto::envelope::open_user_key(&user_key, &keyring)?;
        authsync::crypto::envelope::seal(&mut r, &info, &keyring, &regions, &user)?;
        let user = authsync::crypto::envelope::open_user_key(&user_key, &keyring)?;
        authsync::crypto::envelope::open(&r, &keyring, &user)?;
    }
    let seal_open_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
    let passwords = Passwords::new(PasswordAlgorithm::Argon2id, &pepper)?;
    let hashes = 10;
    let t = Instant::now();
    for _ in 0..hashes {
        passwords.hash("correct horse battery")?;
    }
    let hash_ms = t.elapsed().as_secs_f64() * 1000.0 / f64::from(hashes);
    Ok((record_bytes, seal_open_us, hash_ms))
}

/// Raw synced puts of `bytes`, `n` in all from `concurrency` threads.
fn rocksdb_floor(n: usize, concurrency: usize, bytes: usize) -> anyhow::Result<Throughput> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(Store::open(
        dir.path(),
        &StoreOptions {
            wal_sync: WalSync::Always,
            block_cache_bytes: 64 << 20,
        },
    )?);
    let value = vec![0x5a_u8; bytes];
    let started = Instant::now();
    let per = n.div_ceil(concurrency.max(1));
    let mut threads = Vec::new();
    for t in 0..concurrency.max(1) {
        let (store, value) = (store.clone(), value.clone());
        threads.push(std::thread::spawn(
            move || -> anyhow::Result<Vec<Duration>> {
                let mut samples = Vec::with_capacity(per);
                for i in 0..per {
                    let key = ((t * per + i) as u128).to_be_bytes();
                    let s = Instant::now();
                    store.raw_put(authsync::storage::store::CF_RECORDS, &key, &value)?;
                    samples.push(s.elapsed());
                }
                Ok(samples)
            },
        ));
    }
    let mut samples = Vec::new();
    for t in threads {
        samples.extend(
            t.join()
                .map_err(|_| anyhow::anyhow!("floor thread panicked"))??,
        );
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Throughput {
        ops: samples.len(),
        seconds,
        ops_per_second: samples.len() as f64 / seconds,
        latency: Latency::of(&mut samples),
    })
}

/// Produce → consume round trips on `bootstrap`, one message at a time, with the
/// publisher's producer settings.
async fn kafka_floor(bootstrap: &str, n: usize) -> anyhow::Result<Latency> {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let topic = authsync::node::local_cluster::BENCH_TOPIC;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .create()?;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("authsync-bench-{}", uuid::Uuid::new_v4().simple()),
        )
        .set("auto.offset.reset", "latest")
        // As the nodes' consumers fetch.
        .set(
            "fetch.wait.max.ms",
            authsync::replication::config::DEFAULT_FETCH_WAIT_MAX_MS.to_string(),
        )
        .set("enable.partition.eof", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    // Wait for the assignment: a first message must come back.
    let warm = Instant::now() + Duration::from_secs(30);
    loop {
        producer
            .send(
                FutureRecord::to(topic).key("warm").payload("warm"),
                Duration::from_secs(5),
            )
            .await
            .map_err(|(e, _)| e)?;
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await {
            break;
        }
        if Instant::now() > warm {
            bail!("no message came back from {topic} on {bootstrap}");
        }
    }
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let payload = format!("round-trip-{i}");
        let t = Instant::now();
        producer
            .send(
                FutureRecord::to(topic).key("k").payload(&payload),
                Duration::from_secs(5),
            )
            .await
            .map_err(|(e, _)| e)?;
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), consumer.recv())
                .await
                .context("round trip timed out")??;
            if rdkafka::Message::payload(&m) == Some(payload.as_bytes()) {
                break;
            }
        }
        samples.push(t.elapsed());
    }
    Ok(Latency::of(&mut samples))
}
