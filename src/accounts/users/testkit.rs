//! Test helpers shared by the user service's test modules: a `Users` over a temp
//! dir, two regions of one deployment, and the outbox read back as events.

use std::sync::Arc;

use super::Users;
use crate::accounts::input::{self, NewUser};
use crate::common::hlc::{Hlc, SystemClock};
use crate::crypto::keyring::Keyring;
use crate::crypto::password::{PasswordAlgorithm, Passwords};
use crate::proto;
use crate::storage::store::{Store, StoreOptions};

pub(super) fn users(dir: &std::path::Path) -> Users {
    let regions: Vec<String> = ["af-south", "eu-west", "us-east"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    users_with(
        dir,
        crate::crypto::keyring::init(&regions).unwrap().remove(0),
    )
}

pub(super) fn users_with(dir: &std::path::Path, keyring: Keyring) -> Users {
    let region = keyring.owner().to_string();
    let store = Arc::new(Store::open(dir, &StoreOptions::default()).unwrap());
    let passwords = Passwords::new(PasswordAlgorithm::Argon2id, keyring.pepper()).unwrap();
    let hlc = Arc::new(Hlc::new(region, 500, Box::new(SystemClock)));
    Users::new(store, keyring, passwords, hlc, 8)
}

/// A clock that stands still: a lockout's waits never pass, however slowly a loaded
/// machine runs the test.
struct Stopped(u64);

impl crate::common::hlc::TimeSource for Stopped {
    fn now_ms(&self) -> u64 {
        self.0
    }
}

/// [`users`] with a clock that stands still at the time it is made.
pub(super) fn users_stopped(dir: &std::path::Path) -> Users {
    use crate::common::hlc::TimeSource as _;
    let keyring = crate::crypto::keyring::init(&["af-south".to_string()])
        .unwrap()
        .remove(0);
    let store = Arc::new(Store::open(dir, &StoreOptions::default()).unwrap());
    let passwords = Passwords::new(PasswordAlgorithm::Argon2id, keyring.pepper()).unwrap();
    let hlc = Arc::new(Hlc::new(
        "af-south",
        500,
        Box::new(Stopped(SystemClock.now_ms())),
    ));
    Users::new(store, keyring, passwords, hlc, 8)
}

/// af-south and eu-west of one deployment, each with its own store (kept while
/// the directories live).
pub(super) fn two_regions() -> (Vec<tempfile::TempDir>, Users, Users) {
    let regions: Vec<String> = ["af-south", "eu-west"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut rings = crate::crypto::keyring::init(&regions).unwrap();
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let b = users_with(dirs[1].path(), rings.remove(1));
    let a = users_with(dirs[0].path(), rings.remove(0));
    (dirs, a, b)
}

/// Every event in `u`'s outbox, oldest first, taken out of it.
pub(super) fn drain(u: &Users) -> Vec<proto::ChangeEvent> {
    let head = u.store().outbox_head(10_000).unwrap();
    let seqs: Vec<u64> = head.iter().map(|(s, _)| *s).collect();
    u.store().outbox_remove(&seqs).unwrap();
    head.iter()
        .map(|(_, b)| <proto::ChangeEvent as prost::Message>::decode(b.as_slice()).unwrap())
        .collect()
}

/// The first record change among `events`.
pub(super) fn record_event(events: &[proto::ChangeEvent]) -> proto::ChangeEvent {
    events.iter().find(|e| e.record.is_some()).cloned().unwrap()
}

/// The first user key among `events`.
pub(super) fn key_event(events: &[proto::ChangeEvent]) -> proto::ChangeEvent {
    events
        .iter()
        .find(|e| e.user_key.is_some())
        .cloned()
        .unwrap()
}

pub(super) fn new_user(email: &str) -> NewUser {
    input::new_user(
        &serde_json::json!({"email": email, "phone": "+14155552671", "password": "correct horse battery",
                            "profile": {"given_name": "Ada"}}),
        8,
    )
    .unwrap()
}
