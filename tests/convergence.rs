//! Property: whatever the order, duplication and interleaving in which a region
//! receives a set of change events, it ends in the same state.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use prost::Message;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use authsync::accounts::error::Applied;
use authsync::accounts::input::{self, Change, UserPatch};
use authsync::accounts::users::Users;
use authsync::common::hlc::{Hlc, SystemClock};
use authsync::crypto::keyring::Keyring;
use authsync::crypto::password::PasswordAlgorithm;
use authsync::crypto::password::Passwords;
use authsync::proto;
use authsync::storage::store::{Store, StoreOptions};

const REGIONS: [&str; 3] = ["af-south", "eu-west", "us-east"];

fn node(dir: &std::path::Path, keyring: Keyring) -> Users {
    let region = keyring.owner().to_string();
    let store = Arc::new(Store::open(dir, &StoreOptions::default()).unwrap());
    let passwords = Passwords::new(PasswordAlgorithm::Argon2id, keyring.pepper()).unwrap();
    let hlc = Arc::new(Hlc::new(region, 500, Box::new(SystemClock)));
    Users::new(store, keyring, passwords, hlc, 8)
}

fn keyrings() -> Vec<Keyring> {
    authsync::crypto::keyring::init(&REGIONS.iter().map(|r| r.to_string()).collect::<Vec<_>>())
        .unwrap()
}

/// Loads a keyring copy: `Keyring` is not Clone on purpose (key material).
fn copy(k: &Keyring, dir: &std::path::Path) -> Keyring {
    let path = dir.join(format!("{}.json", k.owner()));
    k.save(&path).unwrap();
    Keyring::load(&path).unwrap()
}

#[derive(Debug, Clone)]
enum Op {
    Update {
        origin: usize,
        user: usize,
        value: u8,
    },
    Delete {
        origin: usize,
        user: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 0..4usize, any::<u8>()).prop_map(|(origin, user, value)| Op::Update { origin, user, value }),
        1 => (0..2usize, 0..4usize).prop_map(|(origin, user)| Op::Delete { origin, user }),
    ]
}

/// What a region's outbox delivers to its peers: records, entries and user keys. An
/// erase goes out only as a null value on the user-key topic, which consumers skip.
fn drain(users: &Users) -> Vec<proto::ChangeEvent> {
    users
        .store()
        .outbox_head(100_000)
        .unwrap()
        .into_iter()
        .map(|(_, b)| proto::ChangeEvent::decode(b.as_slice()).unwrap())
        .filter(|e| e.erased_user.is_empty())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn any_order_and_any_duplication_give_the_same_state(ops in prop::collection::vec(op(), 1..30), seeds in prop::array::uniform3(any::<u64>())) {
        let tmp = tempfile::tempdir().unwrap();
        let rings = keyrings();
        // Two writing regions: af-south and eu-west, each seeing only its own writes.
        let writers: Vec<Users> = (0..2)
            .map(|i| node(&tmp.path().join(format!("w{i}")), copy(&rings[i], tmp.path())))
            .collect();
        // Four users created in af-south and delivered to eu-west, so both can write them.
        let mut ids = Vec::new();
        for u in 0..4 {
            let new = input::new_user(
                &serde_json::json!({"email": format!("u{u}@example.com"), "password": "correct horse battery"}),
                8,
            ).unwrap();
            ids.push(writers[0].create(new).unwrap().0);
        }
        for e in drain(&writers[0]) {
            writers[1].apply(&e).unwrap();
        }
        for op in &ops {
            match op {
                Op::Update { origin, user, value } => {
                    let mut profile = BTreeMap::new();
                    profile.insert("v".to_string(), Some(value.to_string()));
                    // Deleted users refuse updates; that is fine.
                    let _ = writers[*origin].update(&ids[*user], UserPatch { email: None, phone: Change::Keep, profile });
                }
                Op::Delete { origin, user } => {
                    let _ = writers[*origin].delete(&ids[*user]);
                }
            }
        }
        let mut events = drain(&writers[0]);
        events.extend(drain(&writers[1]));

        // Three copies of us-east receive the events shuffled, with duplicates.
        let mut digests = Vec::new();
        for (i, seed) in seeds.iter().enumerate() {
            let target = node(&tmp.path().join(format!("t{i}")), copy(&rings[2], tmp.path()));
            let mut rng = rand::rngs::StdRng::seed_from_u64(*seed);
            let mut delivery = events.clone();
            let dups: Vec<_> = (0..rng.gen_range(0..events.len() + 1))
                .map(|_| events[rng.gen_range(0..events.len())].clone())
                .collect();
            delivery.extend(dups);
            delivery.shuffle(&mut rng);
            for e in &delivery {
                let outcome = target.apply(e).unwrap();
                prop_assert_ne!(outcome, Applied::Merged, "unique emails never merge");
            }
            // A full replay changes nothing.
            for e in &events {
                prop_assert_eq!(target.apply(e).unwrap(), Applied::Skipped);
            }
            digests.push(target.digest().unwrap());
            // Whatever the order, a live account's key is there and an erased one's
            // is not, even when the key arrived after the erase.
            for id in &ids {
                let record = target.store().get(id.as_bytes()).unwrap().unwrap();
                let key = target.store().get_user_key(id.as_bytes()).unwrap();
                prop_assert_eq!(key.is_some(), !record.tombstone, "{}", id);
            }
        }
        prop_assert!(digests.iter().all(|d| *d == digests[0]), "{:?}", digests);
        prop_assert_eq!(digests[0].0, 4);
    }
}
