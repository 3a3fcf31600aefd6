//! Replicated entries beside the user records: API keys now, and whatever else a
//! region must share that is not a user's record.
//!
//! An entry is a (kind, key) with a value and a version, stored in the `entries` column
//! family. It travels in a [`proto::ChangeEvent`] like a record, and last writer wins
//! per (kind, key). Each entry carries a MAC under a key derived from the deployment's
//! index key, so whoever can only write to Kafka cannot add or change one. Every
//! change, local or replicated, is passed to the watchers, so that in-memory views (the
//! API keys a node accepts) follow without a restart.

use std::sync::Arc;

use parking_lot::RwLock;

use crate::accounts::error::{Applied, ApplyError, UserError};
use crate::common::config::{invalid, Invalid};
use crate::common::hlc::{Hlc, Version};
use crate::common::metrics as m;
use crate::crypto::envelope::EntryMac;
use crate::proto::{self, EntryKind};
use crate::storage::store::Store;
use serde::{Deserialize, Serialize};

type Watcher = Box<dyn Fn(&proto::Entry) + Send + Sync>;

pub struct Entries {
    store: Arc<Store>,
    hlc: Arc<Hlc>,
    mac: EntryMac,
    outbox_signal: Arc<tokio::sync::Notify>,
    watchers: RwLock<Vec<Watcher>>,
}

/// An entry's version, the zero version when it has none.
pub fn entry_version(entry: &proto::Entry) -> Version {
    entry
        .version
        .as_ref()
        .map(Version::from_proto)
        .unwrap_or_else(Version::zero)
}

/// `winner` with the revocation `loser` carries and it lacks, for the kinds that have
/// one (API keys, refresh token families); `None` when there is nothing to add.
fn keep_revocation(kind: u32, winner: &[u8], loser: &[u8]) -> Option<Vec<u8>> {
    use prost::Message as _;
    if kind == EntryKind::ApiKey as u32 {
        let mut w = proto::ApiKey::decode(winner).ok()?;
        let l = proto::ApiKey::decode(loser).ok()?;
        if w.revoked_at_ms == 0 && l.revoked_at_ms != 0 {
            w.revoked_at_ms = l.revoked_at_ms;
            return Some(w.encode_to_vec());
        }
    } else if kind == EntryKind::TokenFamily as u32 {
        let mut w = proto::TokenFamily::decode(winner).ok()?;
        let l = proto::TokenFamily::decode(loser).ok()?;
        if w.revoked_ms == 0 && l.revoked_ms != 0 {
            w.revoked_ms = l.revoked_ms;
            w.revoked_reason = l.revoked_reason;
            return Some(w.encode_to_vec());
        }
    }
    None
}

fn lock_key(kind: u32, key: &[u8]) -> Vec<u8> {
    let mut k = b"entry".to_vec();
    k.extend_from_slice(&kind.to_be_bytes());
    k.extend_from_slice(key);
    k
}

impl Entries {
    pub fn new(
        store: Arc<Store>,
        hlc: Arc<Hlc>,
        index_key: &[u8; 32],
        outbox_signal: Arc<tokio::sync::Notify>,
    ) -> Entries {
        Entries {
            store,
            hlc,
            mac: EntryMac::new(index_key),
            outbox_signal,
            watchers: RwLock::new(Vec::new()),
        }
    }

    /// Calls `f` with every entry written from now on, here or by replication.
    pub fn watch(&self, f: impl Fn(&proto::Entry) + Send + Sync + 'static) {
        self.watchers.write().push(Box::new(f));
    }

    fn changed(&self, entry: &proto::Entry) {
        for w in self.watchers.read().iter() {
            w(entry);
        }
    }

    /// Writes `value` under (kind, key) at a version after the stored one, durably,
    /// with its change event, and returns the entry.
    pub fn put(
        &self,
        kind: EntryKind,
        key: &[u8],
        value: Vec<u8>,
    ) -> Result<proto::Entry, UserError> {
        Ok(self
            .update(kind, key, |_| Some(value))?
            .expect("a value was given"))
    }

    /// Reads (kind, key) and writes what `change` makes of it, under the entry's lock,
    /// so that no concurrent change is lost; `None` from `change` writes nothing.
    pub fn update(
        &self,
        kind: EntryKind,
        key: &[u8],
        change: impl FnOnce(Option<&proto::Entry>) -> Option<Vec<u8>>,
    ) -> Result<Option<proto::Entry>, UserError> {
        let entry = {
            let lock = lock_key(kind as u32, key);
            let _locked = self.store.lock(&[&lock]);
            // One that fails its MAC is replaced.
            let stored = match self.get(kind, key) {
                Err(UserError::Unreadable) => None,
                other => other?,
            };
            let Some(value) = change(stored.as_ref()) else {
                return Ok(None);
            };
            let version = self
                .hlc
                .tick_after(stored.as_ref().map(entry_version).as_ref());
            let mut entry = proto::Entry {
                kind: kind as u32,
                key: key.to_vec(),
                version: Some(version.to_proto()),
                value,
                mac: Vec::new(),
            };
            self.mac.sign(&mut entry);
            self.store.commit_entry(&entry, true, true)?;
            entry
        };
        self.outbox_signal.notify_one();
        metrics::counter!(m::STORE_COMMITS_TOTAL, "kind" => "entry").increment(1);
        self.changed(&entry);
        Ok(Some(entry))
    }

    /// Removes the entry under (kind, key) here if `dead` holds for it as stored now
    /// (read again under its lock, so a change that raced the caller's look keeps
    /// it). Not replicated: each region sweeps its own copies by the same rule, and a
    /// late copy that brings one back is swept again. Returns whether it was removed.
    pub fn remove_if(
        &self,
        kind: EntryKind,
        key: &[u8],
        dead: impl Fn(&proto::Entry) -> bool,
    ) -> Result<bool, UserError> {
        let lock = lock_key(kind as u32, key);
        let _locked = self.store.lock(&[&lock]);
        match self.get(kind, key)? {
            Some(entry) if dead(&entry) => {
                self.store.delete_entry(kind as u32, key)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The entry under (kind, key). One that fails its MAC is reported as unreadable.
    pub fn get(&self, kind: EntryKind, key: &[u8]) -> Result<Option<proto::Entry>, UserError> {
        let Some(entry) = self.store.get_entry(kind as u32, key)? else {
            return Ok(None);
        };
        if self.mac.verify(&entry).is_err() {
            metrics::counter!(m::RECORDS_UNREADABLE_TOTAL, "reason" => "integrity").increment(1);
            return Err(UserError::Unreadable);
        }
        Ok(Some(entry))
    }

    /// Every entry of `kind` whose MAC verifies (the others are counted and left out).
    pub fn all(&self, kind: EntryKind) -> Result<Vec<proto::Entry>, UserError> {
        self.with_prefix(kind, &[])
    }

    /// The entries of `kind` whose keys start with `prefix` and whose MAC verifies.
    pub fn with_prefix(
        &self,
        kind: EntryKind,
        prefix: &[u8],
    ) -> Result<Vec<proto::Entry>, UserError> {
        let mut out = self.store.entries(kind as u32, prefix)?;
        let before = out.len();
        out.retain(|e| self.mac.verify(e).is_ok());
        if out.len() < before {
            metrics::counter!(m::RECORDS_UNREADABLE_TOTAL, "reason" => "integrity")
                .increment((before - out.len()) as u64);
        }
        Ok(out)
    }

    /// Applies an entry replicated from another region: stored when newer than the
    /// stored one (or when the stored one fails its MAC), otherwise skipped.
    pub fn apply(&self, entry: &proto::Entry, sync: bool) -> Result<Applied, ApplyError> {
        if entry
            .version
            .as_ref()
            .is_none_or(|v| v.logical >= crate::common::hlc::LOGICAL_LIMIT)
        {
            return Err(ApplyError::Malformed("entry without a valid version"));
        }
        self.mac.verify(entry).map_err(|_| ApplyError::Integrity)?;
        let version = entry_version(entry);
        self.hlc.observe(&version)?;
        // Kinds this node does not know are kept as they are: a newer node may know.
        let written = {
            let lock = lock_key(entry.kind, &entry.key);
            let _locked = self.store.lock(&[&lock]);
            let stored = match self.store.get_entry(entry.kind, &entry.key)? {
                Some(s) if self.mac.verify(&s).is_ok() => Some(s),
                _ => None,
            };
            let incoming_wins = stored.as_ref().is_none_or(|s| entry_version(s) < version);
            let (mut winner, loser) = match stored {
                Some(s) if !incoming_wins => (s, entry.clone()),
                other => (entry.clone(), other.unwrap_or_default()),
            };
            // A revocation is never undone by last-writer-wins: a change made in
            // another region before it arrived keeps it.
            match keep_revocation(entry.kind, &winner.value, &loser.value) {
                Some(value) => {
                    winner.value = value;
                    self.mac.sign(&mut winner);
                }
                None if !incoming_wins => return Ok(Applied::Skipped),
                None => {}
            }
            self.store.commit_entry(&winner, false, sync)?;
            winner
        };
        self.changed(&written);
        Ok(Applied::Applied)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EntriesConfig {
    /// How often dead replicated entries (idle login-failure counts, expired refresh
    /// token families, both for erased accounts) are removed. Default 60 s.
    pub sweep_interval_ms: u64,
}

impl Default for EntriesConfig {
    fn default() -> Self {
        EntriesConfig {
            sweep_interval_ms: 60_000,
        }
    }
}

impl EntriesConfig {
    /// Checks the `[entries]` section.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.sweep_interval_ms < 100 {
            return Err(invalid("entries.sweep_interval_ms", "must be at least 100"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    fn entries(dir: &std::path::Path, region: &str) -> Entries {
        let store = Arc::new(Store::open(dir, &Default::default()).unwrap());
        let hlc = Arc::new(Hlc::new(
            region,
            60_000,
            Box::new(crate::common::hlc::SystemClock),
        ));
        Entries::new(store, hlc, &[7; 32], Arc::new(tokio::sync::Notify::new()))
    }

    #[test]
    fn a_newer_entry_wins_an_older_or_forged_one_changes_nothing() {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (
            entries(da.path(), "af-south"),
            entries(db.path(), "eu-west"),
        );
        let seen = Arc::new(Mutex::new(Vec::new()));
        b.watch({
            let seen = seen.clone();
            move |e| seen.lock().push(e.value.clone())
        });
        let first = a.put(EntryKind::ApiKey, b"k", b"one".to_vec()).unwrap();
        let second = a.put(EntryKind::ApiKey, b"k", b"two".to_vec()).unwrap();
        assert!(entry_version(&second) > entry_version(&first));
        // Out of order: the newer one stays.
        assert_eq!(b.apply(&second, true).unwrap(), Applied::Applied);
        assert_eq!(b.apply(&first, true).unwrap(), Applied::Skipped);
        assert_eq!(b.apply(&second, true).unwrap(), Applied::Skipped);
        assert_eq!(
            b.get(EntryKind::ApiKey, b"k").unwrap().unwrap().value,
            b"two"
        );
        assert_eq!(*seen.lock(), vec![b"two".to_vec()]);
        // Changed on the way (by someone without the index key): refused, nothing stored.
        let mut forged = second.clone();
        forged.value = b"admin for everyone".to_vec();
        forged.version.as_mut().unwrap().physical_ms += 1000;
        assert!(matches!(b.apply(&forged, true), Err(ApplyError::Integrity)));
        let mut unversioned = second.clone();
        unversioned.version = None;
        assert!(matches!(
            b.apply(&unversioned, true),
            Err(ApplyError::Malformed(_))
        ));
        assert_eq!(
            b.get(EntryKind::ApiKey, b"k").unwrap().unwrap().value,
            b"two"
        );
        assert_eq!(b.all(EntryKind::ApiKey).unwrap().len(), 1);
        assert_eq!(seen.lock().len(), 1);
    }

    #[test]
    fn a_revocation_survives_a_later_change_made_before_it_arrived() {
        use prost::Message as _;
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (
            entries(da.path(), "af-south"),
            entries(db.path(), "eu-west"),
        );
        let family = |generation: u32, revoked_ms: u64| {
            proto::TokenFamily {
                generation,
                revoked_ms,
                ..Default::default()
            }
            .encode_to_vec()
        };
        let created = a.put(EntryKind::TokenFamily, b"f", family(0, 0)).unwrap();
        b.apply(&created, true).unwrap();
        // af-south revokes; eu-west, not knowing yet, rotates: its change is newer.
        let revoked = a.put(EntryKind::TokenFamily, b"f", family(0, 5)).unwrap();
        let rotated = b.put(EntryKind::TokenFamily, b"f", family(1, 0)).unwrap();
        assert!(entry_version(&rotated) > entry_version(&revoked));
        // Each side takes the other's change, in either order: both end revoked.
        assert_eq!(b.apply(&revoked, true).unwrap(), Applied::Applied);
        assert_eq!(a.apply(&rotated, true).unwrap(), Applied::Applied);
        for side in [&a, &b] {
            let got = side.get(EntryKind::TokenFamily, b"f").unwrap().unwrap();
            let f = proto::TokenFamily::decode(got.value.as_slice()).unwrap();
            assert_eq!(f.revoked_ms, 5);
        }
        // Once both agree, delivering either again changes nothing.
        assert_eq!(b.apply(&revoked, true).unwrap(), Applied::Skipped);
        assert_eq!(a.apply(&rotated, true).unwrap(), Applied::Skipped);
    }
}
