//! A full store write (validate-free create: seal, index, outbox, one durable batch)
//! beside a raw RocksDB put of the same size with the same WAL policy, the floor the
//! write path is measured against.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use prost::Message;

use authsync::accounts::input::{self, UserPatch};
use authsync::accounts::users::Users;
use authsync::common::hlc::{Hlc, SystemClock};
use authsync::crypto::password::PasswordAlgorithm;
use authsync::crypto::password::Passwords;
use authsync::storage::store::WalSync;
use authsync::storage::store::{Store, StoreOptions};

fn setup(dir: &std::path::Path, wal_sync: WalSync) -> Users {
    let regions: Vec<String> = ["af-south", "eu-west", "us-east"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let keyring = authsync::crypto::keyring::init(&regions)
        .expect("keyrings")
        .remove(0);
    let store = Arc::new(
        Store::open(
            dir,
            &StoreOptions {
                wal_sync,
                block_cache_bytes: 64 << 20,
            },
        )
        .expect("open store"),
    );
    let passwords =
        Passwords::new(PasswordAlgorithm::Argon2id, keyring.pepper()).expect("passwords");
    let hlc = Arc::new(Hlc::new("af-south", 500, Box::new(SystemClock)));
    Users::new(store, keyring, passwords, hlc, 8)
}

fn writes(c: &mut Criterion) {
    for (name, policy) in [("fsync", WalSync::Always), ("no_fsync", WalSync::Never)] {
        let dir = tempfile::tempdir().expect("temp dir");
        let users = setup(dir.path(), policy);
        let user = input::new_user(
            &serde_json::json!({"email": "bench@example.com", "password": "correct horse battery",
                                "profile": {"given_name": "Ada", "family_name": "Lovelace", "city": "London"}}),
            8,
        )
        .expect("valid user");
        let (id, _) = users.create(user).expect("create");
        let mut group = c.benchmark_group(format!("store_write_{name}"));
        // A profile update: the write path without the deliberate cost of a password hash.
        let mut n = 0u64;
        group.bench_function("profile_update", |b| {
            b.iter(|| {
                n += 1;
                let mut profile = std::collections::BTreeMap::new();
                profile.insert("counter".to_string(), Some(n.to_string()));
                users
                    .update(
                        &id,
                        UserPatch {
                            email: None,
                            phone: input::Change::Keep,
                            profile,
                        },
                    )
                    .expect("update")
            })
        });
        let record = authsync::storage::store::decode_record(
            id.as_bytes(),
            &users
                .store()
                .raw_get(authsync::storage::store::CF_RECORDS, id.as_bytes())
                .expect("get")
                .expect("present"),
        )
        .expect("decode");
        let value = record.encode_to_vec();
        let mut k = 0u64;
        group.bench_function("raw_rocksdb_put_same_size", |b| {
            b.iter(|| {
                k += 1;
                let mut key = [0u8; 16];
                key[..8].copy_from_slice(&k.to_be_bytes());
                users
                    .store()
                    .raw_put(authsync::storage::store::CF_RECORDS, &key, &value)
                    .expect("put")
            })
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = writes
}
criterion_main!(benches);
