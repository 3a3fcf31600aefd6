//! Fuzzing on stable Rust: proptest loops over everything that parses untrusted input.
//! `cargo fuzz` needs a nightly toolchain, which this project does not use.
//!
//! - **The change-event decoder and apply**: bytes from Kafka, decoded and applied.
//!   Inputs are arbitrary bytes, and mutations of real events (flipped, cut,
//!   spliced).
//! - **The envelope open**: records with mutated envelopes.
//! - **Every JSON request body**: arbitrary JSON values and mutations of valid bodies,
//!   through each validator.
//! - **The version comparison**: a total order, consistent with the packed `ts`.
//!
//! Each target starts from its corpus in `tests/fuzz/corpus/`: real inputs, kept as
//! files. Nothing may panic. Whatever an input does, the node's state must not
//! change unless the input is a valid, signed event. The number of cases is bounded
//! (`AUTHSYNC_FUZZ_CASES`, default 400 per target), so the test command runs them in
//! CI in seconds. Set it higher for a longer hunt.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use authsync::accounts::input;
use authsync::accounts::users::Users;
use authsync::common::hlc::{Hlc, SystemClock, Version};
use authsync::crypto::password::Passwords;
use authsync::proto;
use authsync::storage::store::{Store, StoreOptions};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use prost::Message;
use serde_json::Value;

fn cases() -> u32 {
    std::env::var("AUTHSYNC_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400)
}

fn fuzz_runner() -> TestRunner {
    TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    })
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let out: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    assert!(!out.is_empty(), "empty corpus {target}");
    out
}

/// A mutation of `seed`: bytes flipped, a cut, a splice of random bytes.
fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (
        prop::sample::select(seeds),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        prop::option::of(any::<prop::sample::Index>()),
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(|(mut bytes, flips, cut, splice)| {
            if bytes.is_empty() {
                return splice;
            }
            for (i, b) in flips {
                let at = i.index(bytes.len());
                bytes[at] ^= b;
            }
            if let Some(c) = cut {
                let at = c.index(bytes.len());
                bytes.truncate(at);
                bytes.extend_from_slice(&splice);
            }
            bytes
        })
}

fn users(dir: &Path) -> Users {
    let keyring = authsync::crypto::keyring::init(&["af-south".to_string(), "eu-west".to_string()])
        .unwrap()
        .remove(1);
    let store = Arc::new(Store::open(dir, &StoreOptions::default()).unwrap());
    let passwords = Passwords::new(
        authsync::crypto::password::PasswordAlgorithm::Argon2id,
        keyring.pepper(),
    )
    .unwrap();
    let hlc = Arc::new(Hlc::new("eu-west", 60_000, Box::new(SystemClock)));
    Users::new(store, keyring, passwords, hlc, 8)
}

/// Rewrites `tests/fuzz/corpus/change_event` with the events a throwaway deployment
/// writes: creates, an update, a delete, an API key, a login failure. Its keys are
/// discarded, so to any other deployment these events are foreign. Run with
/// `AUTHSYNC_FUZZ_WRITE_CORPUS=1 cargo test --test fuzz`.
fn write_event_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let users = users(dir.path());
    let body = serde_json::json!({"email": "corpus@example.com", "phone": "+14155552671",
        "password": "correct horse battery", "profile": {"given_name": "Corpus"}});
    let (id, _) = users.create(input::new_user(&body, 8).unwrap()).unwrap();
    let patch = serde_json::json!({"profile": {"family_name": "Seed"}});
    users
        .update(&id, input::user_patch(&patch).unwrap())
        .unwrap();
    let other =
        serde_json::json!({"email": "gone@example.com", "password": "correct horse battery"});
    let (gone, _) = users.create(input::new_user(&other, 8).unwrap()).unwrap();
    users.delete(&gone).unwrap();
    users
        .entries()
        .put(
            proto::EntryKind::ApiKey,
            &[1; 32],
            proto::ApiKey {
                name: "corpus".into(),
                scopes: vec!["read".into()],
                created_at_ms: 1,
                revoked_at_ms: 0,
            }
            .encode_to_vec(),
        )
        .unwrap();
    let _ = users.login("corpus@example.com", "not the password");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus/change_event");
    std::fs::create_dir_all(&out).unwrap();
    for (seq, bytes) in users.store().outbox_head(100).unwrap() {
        std::fs::write(out.join(format!("{seq:03}.bin")), bytes).unwrap();
    }
}

#[test]
fn change_events_from_the_wire_never_panic_and_change_nothing_unless_valid() {
    if std::env::var("AUTHSYNC_FUZZ_WRITE_CORPUS").is_ok() {
        write_event_corpus();
    }
    let dir = tempfile::tempdir().unwrap();
    let users = users(dir.path());
    let before = users.digest().unwrap();
    let seeds = corpus("change_event");
    let mut runner = fuzz_runner();
    let inputs = prop_oneof![
        3 => mutated(seeds),
        1 => prop::collection::vec(any::<u8>(), 0..512),
    ];
    runner
        .run(&inputs, |bytes| {
            // Whatever decodes is applied; the events come from another deployment's
            // keys, so nothing may verify.
            if let Ok(event) = proto::ChangeEvent::decode(bytes.as_slice()) {
                let applied = users.apply(&event);
                prop_assert!(applied.is_err(), "{applied:?}");
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(
        users.digest().unwrap(),
        before,
        "a foreign event changed the store"
    );
    assert!(users
        .entries()
        .all(proto::EntryKind::ApiKey)
        .unwrap()
        .is_empty());
}

/// Events signed with af-south's signing key and the deployment's index key, as a peer
/// (or someone holding its keys) would send them, with every field of the record
/// mutated: whatever the fields say, applying them must not panic, and the store must
/// stay readable.
#[test]
fn signed_events_with_any_field_values_apply_without_panicking() {
    let mut rings =
        authsync::crypto::keyring::init(&["af-south".to_string(), "eu-west".to_string()]).unwrap();
    let mac = authsync::crypto::envelope::RecordMac::new(rings[0].index_key());
    let origin = rings.remove(0);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), &StoreOptions::default()).unwrap());
    let target = {
        // The target shares the origin's deployment keys.
        let ring = rings.remove(0);
        let passwords = Passwords::new(
            authsync::crypto::password::PasswordAlgorithm::Argon2id,
            ring.pepper(),
        )
        .unwrap();
        let hlc = Arc::new(Hlc::new("eu-west", 60_000, Box::new(SystemClock)));
        Users::new(store, ring, passwords, hlc, 8)
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let record = (
        prop::sample::select(vec![vec![1u8; 16], vec![2u8; 16], vec![], vec![3u8; 15]]),
        (
            now - 10_000..now + 10_000,
            0u32..1100,
            prop::sample::select(vec!["af-south", "", "mars"]),
        ),
        any::<i32>(),
        prop::sample::select(vec![vec![], vec![9u8; 32], vec![8u8; 31]]),
        any::<bool>(),
        prop::sample::select(vec![vec![], vec![2u8; 16], vec![1u8; 16], vec![5u8; 3]]),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(
            |(id, (physical_ms, logical, region), status, index, tombstone, merged_into, junk)| {
                proto::Record {
                    id,
                    version: Some(proto::Version {
                        physical_ms,
                        logical,
                        region: region.to_string(),
                    }),
                    status,
                    email_index: index.clone(),
                    phone_index: index,
                    info: (!junk.is_empty()).then(|| proto::Envelope {
                        format: junk[0] as u32,
                        iv: junk.clone(),
                        ciphertext: junk.clone(),
                        mac: junk,
                        ..Default::default()
                    }),
                    tombstone,
                    merged_into,
                    created: Some(proto::Version {
                        physical_ms: physical_ms.saturating_sub(5),
                        logical: 0,
                        region: region.to_string(),
                    }),
                    ..Default::default()
                }
            },
        );
    let applied = std::cell::Cell::new(0u32);
    let mut runner = fuzz_runner();
    runner
        .run(&record, |mut r| {
            authsync::crypto::signatures::sign(&origin, &mut r);
            mac.sign(&mut r);
            let event = proto::ChangeEvent {
                event_id: "af-south:1".into(),
                origin_region: "af-south".into(),
                sequence: 1,
                record: Some(r),
                ..Default::default()
            };
            if target.apply(&event).is_ok() {
                applied.set(applied.get() + 1);
            }
            Ok(())
        })
        .unwrap();
    // Some got past the checks into the apply logic (merges, tombstones, claims).
    eprintln!("{} of {} signed events applied", applied.get(), cases());
    assert!(
        applied.get() > 0,
        "no mutated event was applied: the target is too narrow"
    );
    // Whatever was stored can still be counted and looked at, without a panic.
    target.digest().unwrap();
    for id in [[1u8; 16], [2u8; 16]] {
        let _ = target.get(&uuid::Uuid::from_bytes(id));
    }
}

#[test]
fn mutated_envelopes_never_open_and_never_panic() {
    let keyring = authsync::crypto::keyring::init(&["af-south".to_string(), "eu-west".to_string()])
        .unwrap()
        .remove(0);
    let info = proto::Info {
        email: "fuzz@example.com".into(),
        ..Default::default()
    };
    let mut record = proto::Record {
        id: vec![7; 16],
        ..Default::default()
    };
    let regions = ["af-south".to_string(), "eu-west".to_string()];
    let (key, user) =
        authsync::crypto::envelope::new_user_key(&record.id, &keyring, &regions).unwrap();
    authsync::crypto::envelope::seal(&mut record, &info, &keyring, &regions, &user).unwrap();
    assert_eq!(
        authsync::crypto::envelope::open(&record, &keyring, &user).unwrap(),
        info
    );
    let seed = record.encode_to_vec();
    let mut runner = fuzz_runner();
    runner
        .run(&mutated(vec![seed.clone()]), |bytes| {
            if let Ok(r) = proto::Record::decode(bytes.as_slice()) {
                // Only bytes that decode to the same record may open.
                if let Ok(opened) = authsync::crypto::envelope::open(&r, &keyring, &user) {
                    prop_assert_eq!(&opened, &info);
                }
            }
            Ok(())
        })
        .unwrap();
    // The user key itself: a mutated one either fails to open or is the same key,
    // which still opens the record.
    let mut runner = fuzz_runner();
    runner
        .run(&mutated(vec![key.encode_to_vec()]), |bytes| {
            if let Ok(k) = proto::UserKey::decode(bytes.as_slice()) {
                if let Ok(opened) = authsync::crypto::envelope::open_user_key(&k, &keyring) {
                    prop_assert_eq!(opened.id(), user.id());
                    if let Ok(found) = authsync::crypto::envelope::open(&record, &keyring, &opened)
                    {
                        prop_assert_eq!(&found, &info);
                    }
                }
            }
            Ok(())
        })
        .unwrap();
}

/// JSON values of any shape, small.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,40}".prop_map(Value::String),
        prop::sample::select(vec![
            "ada@example.com",
            "+14155552671",
            "correct horse battery",
            "active",
            "bcrypt",
            "email",
            "password",
            "profile",
            "",
            " ",
            "@",
            "+",
        ])
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "email",
                    "phone",
                    "password",
                    "profile",
                    "login",
                    "status",
                    "legacy_hash",
                    "algorithm",
                    "hash",
                    "salt",
                    "salt_position",
                    "source",
                    "given_name",
                    "x",
                ]),
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())),
        ]
    })
}

#[test]
fn every_request_body_validator_takes_any_json_without_panicking() {
    let seeds: Vec<Value> = corpus("request_body")
        .iter()
        .map(|b| serde_json::from_slice(b).expect("corpus bodies are JSON"))
        .collect();
    // Each seed is accepted by at least one validator: the corpus is of real bodies.
    for s in &seeds {
        let ok = input::new_user(s, 8).is_ok()
            || input::user_patch(s).is_ok()
            || input::login(s).is_ok()
            || input::new_status(s).is_ok()
            || input::new_password(s, 8).is_ok()
            || input::import(s, 100).is_ok();
        assert!(ok, "corpus body accepted by no validator: {s}");
    }
    let mut runner = fuzz_runner();
    let inputs = prop_oneof![
        2 => json(),
        1 => prop::sample::select(seeds),
    ];
    runner
        .run(&inputs, |body| {
            // Refused: with at least one problem, each naming its field and saying
            // what is wrong. Accepted: what the handlers rely on holds.
            let refused = |problems: Vec<authsync::accounts::error::Problem>| {
                !problems.is_empty()
                    && problems
                        .iter()
                        .all(|p| !p.field.is_empty() && !p.problem.is_empty())
            };
            match input::new_user(&body, 8) {
                Ok(u) => {
                    prop_assert_eq!(input::normalize_email(&u.email), Ok(u.email.clone()));
                    prop_assert!(u.password.chars().count() >= 8, "{body}");
                    if let Some(phone) = &u.phone {
                        prop_assert_eq!(input::normalize_phone(phone), Ok(phone.clone()));
                    }
                }
                Err(p) => prop_assert!(refused(p), "{body}"),
            }
            match input::login(&body) {
                Ok(l) => prop_assert!(!l.login.is_empty() && !l.password.is_empty(), "{body}"),
                Err(p) => prop_assert!(refused(p), "{body}"),
            }
            match input::new_password(&body, 8) {
                Ok(pw) => prop_assert!(pw.chars().count() >= 8, "{body}"),
                Err(p) => prop_assert!(refused(p), "{body}"),
            }
            match input::import(&body, 100) {
                Ok(items) => {
                    prop_assert!(!items.is_empty() && items.len() <= 100, "{body}");
                    for item in &items {
                        prop_assert_eq!(
                            input::normalize_email(&item.email),
                            Ok(item.email.clone())
                        );
                    }
                }
                Err(p) => prop_assert!(refused(p), "{body}"),
            }
            if let Err(p) = input::user_patch(&body) {
                prop_assert!(refused(p), "{body}");
            }
            if let Err(p) = input::new_status(&body) {
                prop_assert!(refused(p), "{body}");
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn versions_encode_uniquely_and_a_local_change_is_always_newer() {
    let version = (
        0u64..1 << 43,
        0u32..1024,
        prop::sample::select(vec!["", "af-south", "eu-west"]),
    )
        .prop_map(|(physical_ms, logical, region)| Version {
            physical_ms,
            logical,
            region: region.to_string(),
        });
    let hlc = Hlc::new("us-east", 500, Box::new(SystemClock));
    let mut runner = fuzz_runner();
    runner
        .run(&(version.clone(), version.clone(), version), |(a, b, c)| {
            // The order last-writer-wins and every merge rely on: by time, then
            // logical tick, then region name, total and transitive.
            let by_fields = |x: &Version, y: &Version| {
                x.physical_ms
                    .cmp(&y.physical_ms)
                    .then(x.logical.cmp(&y.logical))
                    .then(x.region.as_bytes().cmp(y.region.as_bytes()))
            };
            prop_assert_eq!(a.cmp(&b), by_fields(&a, &b));
            prop_assert_eq!(a == b, by_fields(&a, &b) == std::cmp::Ordering::Equal);
            if a <= b && b <= c {
                prop_assert!(a <= c);
            }
            // No two versions share the bytes that MACs and digests are computed over.
            let (mut ea, mut eb) = (Vec::new(), Vec::new());
            a.encode_into(&mut ea);
            b.encode_into(&mut eb);
            prop_assert_eq!(a == b, ea == eb);
            // The packed ts never contradicts the order.
            if a.ts() < b.ts() {
                prop_assert!(a < b);
            }
            // Through the wire format and back.
            prop_assert_eq!(Version::from_proto(&a.to_proto()), a.clone());
            // A local change after a stored version is newer than it, whatever the
            // stored version is: last writer wins needs nothing else.
            let next = hlc.tick_after(Some(&a));
            prop_assert!(next > a, "{next:?} after {a:?}");
            prop_assert!(hlc.tick() > next);
            Ok(())
        })
        .unwrap();
}
