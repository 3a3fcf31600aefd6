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
use crate::crypto::keyring::SharedKeyring;
use crate::crypto::signatures;
use crate::proto::{self, EntryKind};
use crate::storage::store::Store;
use serde::{Deserialize, Serialize};

type Watcher = Box<dyn Fn(&proto::Entry) + Send + Sync>;

pub struct Entries {
    store: Arc<Store>,
    hlc: Arc<Hlc>,
    mac: EntryMac,
    keyring: SharedKeyring,
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

/// What merging a replicated entry with the stored one adds to the newer of the two.
enum Merged {
    /// The newer one's value carrying a revocation the older one had: stored at the
    /// newer one's version. A revocation is never undone by a later change made before
    /// it arrived, and of two revocations the earlier is kept, so every region ends
    /// with the same value whatever order the changes came in.
    Revocation(Vec<u8>),
    /// Two copies' uses of an account's second factors, joined
    /// ([`merge_uses`]): stored as `Revocation` is.
    Union(Vec<u8>),
    /// A refresh token family rotated twice from one generation (two regions each took
    /// the same token within the replication lag, so one holder had a copy): revoked
    /// here, as a reuse seen in one region is, by a change of this region's own that
    /// replicates.
    Fork(Vec<u8>),
}

/// `winner` (the newer entry's value) merged with `loser`'s for the kinds where last
/// writer wins alone would lose something; `None` when the winner stands as it is.
/// `incoming_wins`: whether the winner is the copy that came in (else the one stored).
fn merge(
    kind: u32,
    winner: &[u8],
    loser: &[u8],
    regions_differ: bool,
    now_ms: u64,
    incoming_wins: bool,
) -> Option<Merged> {
    use prost::Message as _;
    if kind == EntryKind::ApiKey as u32 {
        let mut w = proto::ApiKey::decode(winner).ok()?;
        let l = proto::ApiKey::decode(loser).ok()?;
        if l.revoked_at_ms != 0 && (w.revoked_at_ms == 0 || l.revoked_at_ms < w.revoked_at_ms) {
            w.revoked_at_ms = l.revoked_at_ms;
            return Some(Merged::Revocation(w.encode_to_vec()));
        }
    } else if kind == EntryKind::TokenFamily as u32 {
        let mut w = proto::TokenFamily::decode(winner).ok()?;
        let l = proto::TokenFamily::decode(loser).ok()?;
        let earlier = |a: &proto::TokenFamily, b: &proto::TokenFamily| {
            (a.revoked_ms, &a.revoked_reason) < (b.revoked_ms, &b.revoked_reason)
        };
        if l.revoked_ms != 0 && (w.revoked_ms == 0 || earlier(&l, &w)) {
            w.revoked_ms = l.revoked_ms;
            w.revoked_reason = l.revoked_reason;
            return Some(Merged::Revocation(w.encode_to_vec()));
        }
        if w.revoked_ms == 0 && l.revoked_ms == 0 && forked(&w, &l, regions_differ) {
            w.revoked_ms = now_ms.max(1);
            w.revoked_reason = "reused".into();
            // The other branch's secret is known here too: presented, it is refused
            // as revoked rather than unknown.
            if !w.previous_hashes.contains(&l.current_hash) {
                w.previous_hashes.push(l.current_hash);
                let excess = w
                    .previous_hashes
                    .len()
                    .saturating_sub(crate::accounts::bounds::MAX_FAMILY_HISTORY);
                w.previous_hashes.drain(..excess);
            }
            return Some(Merged::Fork(w.encode_to_vec()));
        }
    } else if kind == EntryKind::AccountToken as u32 {
        // A use anywhere stands, the earliest of two.
        let mut w = proto::AccountToken::decode(winner).ok()?;
        let l = proto::AccountToken::decode(loser).ok()?;
        if l.used_ms != 0 && (w.used_ms == 0 || l.used_ms < w.used_ms) {
            w.used_ms = l.used_ms;
            return Some(Merged::Revocation(w.encode_to_vec()));
        }
    } else if kind == EntryKind::FactorUses as u32 {
        let w = proto::FactorUses::decode(winner).ok()?;
        let l = proto::FactorUses::decode(loser).ok()?;
        // What is stored first: a copy that comes in, whatever its version, adds to the
        // spent codes held here and never pushes one out.
        let (stored, incoming) = if incoming_wins { (&l, &w) } else { (&w, &l) };
        let joined = merge_uses(stored, incoming);
        if joined != w {
            return Some(Merged::Union(joined.encode_to_vec()));
        }
    }
    None
}

/// `a` and `b` merged: the later TOTP step, turn-on and removal, and every spent
/// recovery code of `a` with those of `b` added while there is room (at most
/// [`crate::accounts::bounds::MAX_SPENT_CODES`]): `a`'s are never pushed out.
pub fn merge_uses(a: &proto::FactorUses, b: &proto::FactorUses) -> proto::FactorUses {
    let mut out = a.clone();
    out.totp_step = a.totp_step.max(b.totp_step);
    out.enabled_ms = a.enabled_ms.max(b.enabled_ms);
    out.removed_ms = a.removed_ms.max(b.removed_ms);
    for h in &b.recovery_used {
        if out.recovery_used.len() >= crate::accounts::bounds::MAX_SPENT_CODES {
            break;
        }
        if !out.recovery_used.contains(h) {
            out.recovery_used.push(h.clone());
        }
    }
    out
}

/// Whether two copies of one refresh token family went separate ways: the later
/// generation's history does not hold the earlier one's current secret. Beyond the
/// history a family keeps, two copies last written by different regions count as
/// forked: a session may end that did not have to (its user logs in again), rather
/// than a thief's branch live on unseen.
fn forked(a: &proto::TokenFamily, b: &proto::TokenFamily, regions_differ: bool) -> bool {
    let (later, earlier) = if a.generation >= b.generation {
        (a, b)
    } else {
        (b, a)
    };
    let back = (later.generation - earlier.generation) as usize;
    if back == 0 {
        return later.current_hash != earlier.current_hash;
    }
    match later.previous_hashes.len().checked_sub(back) {
        Some(i) => later.previous_hashes[i] != earlier.current_hash,
        None => regions_differ,
    }
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
        keyring: SharedKeyring,
        outbox_signal: Arc<tokio::sync::Notify>,
    ) -> Entries {
        let mac = EntryMac::new(keyring.read().index_key());
        Entries {
            store,
            hlc,
            mac,
            keyring,
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
                ..Default::default()
            };
            signatures::sign(&self.keyring.read(), &mut entry);
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
    /// Removes every entry of `kind` that `dead` says can go, each checked again under
    /// its lock ([`Entries::remove_if`]); returns how many went.
    pub fn sweep(
        &self,
        kind: EntryKind,
        dead: impl Fn(&proto::Entry) -> bool,
    ) -> Result<usize, UserError> {
        let mut removed = 0;
        for e in self.all(kind)? {
            if dead(&e) && self.remove_if(kind, &e.key, &dead)? {
                removed += 1;
            }
        }
        Ok(removed)
    }

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

    /// Checks that `entry` was written by the region its version names, and that a
    /// signing key's entry publishes that region's own key: no region writes as
    /// another, or publishes the key that signs another's tokens.
    fn check_writer(&self, entry: &proto::Entry) -> Result<(), ApplyError> {
        let writer = entry.version.as_ref().map_or("", |v| v.region.as_str());
        let refused = || {
            metrics::counter!(m::SIGNATURES_REFUSED_TOTAL).increment(1);
            ApplyError::Integrity
        };
        let verified =
            signatures::verify(&self.keyring.read(), entry, writer).map_err(|_| refused())?;
        if verified == signatures::Verified::Legacy {
            metrics::counter!(m::UNSIGNED_ACCEPTED_TOTAL).increment(1);
        }
        if entry.kind == EntryKind::SigningKey as u32 {
            use prost::Message as _;
            let key = proto::SigningKey::decode(entry.value.as_slice())
                .map_err(|_| ApplyError::Malformed("signing key entry does not decode"))?;
            let kid_region = std::str::from_utf8(&entry.key)
                .ok()
                .and_then(|kid| kid.rsplit_once('-'))
                .map(|(region, _)| region);
            if key.region != writer || kid_region != Some(writer) {
                return Err(refused());
            }
        }
        Ok(())
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
        self.check_writer(entry)?;
        self.mac.verify(entry).map_err(|_| ApplyError::Integrity)?;
        crate::accounts::bounds::entry(entry)?;
        let version = entry_version(entry);
        crate::accounts::bounds::observe(&self.hlc, &version)?;
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
                Some(s) if !incoming_wins => (s, Some(entry.clone())),
                other => (entry.clone(), other),
            };
            // Last writer wins, except where that would undo a revocation or hide a
            // refresh token taken in two regions at once.
            let merged = loser.and_then(|loser| {
                merge(
                    entry.kind,
                    &winner.value,
                    &loser.value,
                    entry_version(&winner).region != entry_version(&loser).region,
                    self.hlc.physical_now(),
                    incoming_wins,
                )
            });
            let mut outbox = false;
            let changed = merged.is_some();
            match merged {
                Some(Merged::Revocation(value) | Merged::Union(value)) => {
                    // Kept here only, at the writer's version: its signature no longer
                    // covers the value, so none is kept.
                    winner.value = value;
                    winner.signature.clear();
                    winner.signer.clear();
                }
                Some(Merged::Fork(value)) => {
                    winner.value = value;
                    winner.version = Some(
                        self.hlc
                            .tick_after(Some(&entry_version(&winner)))
                            .to_proto(),
                    );
                    outbox = true;
                    signatures::sign(&self.keyring.read(), &mut winner);
                    metrics::counter!(m::TOKEN_FAMILIES_FORKED_TOTAL).increment(1);
                }
                None if !incoming_wins => return Ok(Applied::Skipped),
                None => {}
            }
            if changed {
                self.mac.sign(&mut winner);
            }
            self.store.commit_entry(&winner, outbox, sync || outbox)?;
            if outbox {
                self.outbox_signal.notify_one();
            }
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

    #[test]
    fn merged_uses_keep_the_later_step_and_every_spent_code() {
        let a = proto::FactorUses {
            totp_step: 9,
            recovery_used: vec![vec![1], vec![2]],
            enabled_ms: 5,
            removed_ms: 0,
        };
        let b = proto::FactorUses {
            totp_step: 7,
            recovery_used: vec![vec![2], vec![3]],
            enabled_ms: 3,
            removed_ms: 4,
        };
        let m = merge_uses(&a, &b);
        assert_eq!((m.totp_step, m.enabled_ms, m.removed_ms), (9, 5, 4));
        assert_eq!(m.recovery_used, vec![vec![1], vec![2], vec![3]]);
        assert_eq!(merge_uses(&b, &a).totp_step, 9);
    }

    /// The attack: a peer sends a copy full of made-up spent codes, at an old version
    /// or a new one, to push the real ones out and make them usable again here.
    #[test]
    fn a_copy_that_comes_in_never_pushes_out_a_spent_code_held_here() {
        use prost::Message as _;
        let dir = tempfile::tempdir().unwrap();
        let here = entries(dir.path(), "af-south");
        let peer_dir = tempfile::tempdir().unwrap();
        let peer = entries(peer_dir.path(), "eu-west");
        let real = proto::FactorUses {
            totp_step: 1,
            recovery_used: vec![vec![200; 32]],
            enabled_ms: 1,
            removed_ms: 0,
        };
        let junk = proto::FactorUses {
            totp_step: 1,
            recovery_used: (0..crate::accounts::bounds::MAX_SPENT_CODES as u8)
                .map(|i| vec![i; 32])
                .collect(),
            ..Default::default()
        };
        let pause = || std::thread::sleep(std::time::Duration::from_millis(5));
        // The made-up copy older than the one held, and newer.
        let older = peer
            .put(EntryKind::FactorUses, &[1; 16], junk.encode_to_vec())
            .unwrap();
        pause();
        for key in [[1u8; 16], [2; 16]] {
            here.put(EntryKind::FactorUses, &key, real.encode_to_vec())
                .unwrap();
        }
        pause();
        let newer = peer
            .put(EntryKind::FactorUses, &[2; 16], junk.encode_to_vec())
            .unwrap();
        for (key, sent) in [([1u8; 16], older), ([2; 16], newer)] {
            here.apply(&sent, false).unwrap();
            let held = here.get(EntryKind::FactorUses, &key).unwrap().unwrap();
            let held = proto::FactorUses::decode(held.value.as_slice()).unwrap();
            assert!(
                held.recovery_used.contains(&vec![200; 32]),
                "the real spent code stays, under {key:?}"
            );
            assert_eq!(
                held.recovery_used.len(),
                crate::accounts::bounds::MAX_SPENT_CODES
            );
        }
    }

    fn entries(dir: &std::path::Path, region: &str) -> Entries {
        let store = Arc::new(Store::open(dir, &Default::default()).unwrap());
        let hlc = Arc::new(Hlc::new(
            region,
            60_000,
            Box::new(crate::common::hlc::SystemClock),
        ));
        Entries::new(
            store,
            hlc,
            crate::crypto::keyring::test_keyring(region),
            Arc::new(tokio::sync::Notify::new()),
        )
    }

    fn api_key(name: &str) -> Vec<u8> {
        use prost::Message as _;
        proto::ApiKey {
            name: name.into(),
            scopes: vec!["read".into()],
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn now_ms() -> u64 {
        use crate::common::hlc::TimeSource as _;
        crate::common::hlc::SystemClock.now_ms()
    }

    /// A refresh token family as a node writes one: at `generation`, its current secret's
    /// hash `current` (a byte, repeated) after `previous`.
    fn family(generation: u32, current: u8, previous: &[u8], revoked_ms: u64) -> Vec<u8> {
        use prost::Message as _;
        proto::TokenFamily {
            user_id: vec![1; 16],
            generation,
            current_hash: vec![current; 32],
            previous_hashes: previous.iter().map(|h| vec![*h; 32]).collect(),
            created_ms: now_ms(),
            expires_ms: now_ms() + 86_400_000,
            revoked_ms,
            ..Default::default()
        }
        .encode_to_vec()
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
        let first = a.put(EntryKind::ApiKey, b"k", api_key("one")).unwrap();
        let second = a.put(EntryKind::ApiKey, b"k", api_key("two")).unwrap();
        assert!(entry_version(&second) > entry_version(&first));
        // Out of order: the newer one stays.
        assert_eq!(b.apply(&second, true).unwrap(), Applied::Applied);
        assert_eq!(b.apply(&first, true).unwrap(), Applied::Skipped);
        assert_eq!(b.apply(&second, true).unwrap(), Applied::Skipped);
        assert_eq!(
            b.get(EntryKind::ApiKey, b"k").unwrap().unwrap().value,
            api_key("two")
        );
        assert_eq!(*seen.lock(), vec![api_key("two")]);
        // Changed on the way (by someone without the index key): refused, nothing stored.
        let mut forged = second.clone();
        forged.value = api_key("admin for everyone");
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
            api_key("two")
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
        let created = a
            .put(EntryKind::TokenFamily, b"f", family(0, 0, &[], 0))
            .unwrap();
        b.apply(&created, true).unwrap();
        // af-south revokes; eu-west, not knowing yet, rotates: its change is newer.
        let revoked_at = now_ms();
        let revoked = a
            .put(EntryKind::TokenFamily, b"f", family(0, 0, &[], revoked_at))
            .unwrap();
        let rotated = b
            .put(EntryKind::TokenFamily, b"f", family(1, 1, &[0], 0))
            .unwrap();
        assert!(entry_version(&rotated) > entry_version(&revoked));
        // Each side takes the other's change, in either order: both end revoked.
        assert_eq!(b.apply(&revoked, true).unwrap(), Applied::Applied);
        assert_eq!(a.apply(&rotated, true).unwrap(), Applied::Applied);
        for side in [&a, &b] {
            let got = side.get(EntryKind::TokenFamily, b"f").unwrap().unwrap();
            let f = proto::TokenFamily::decode(got.value.as_slice()).unwrap();
            assert_eq!(f.revoked_ms, revoked_at);
        }
        // Once both agree, delivering either again changes nothing.
        assert_eq!(b.apply(&revoked, true).unwrap(), Applied::Skipped);
        assert_eq!(a.apply(&rotated, true).unwrap(), Applied::Skipped);
    }

    /// The attack: one refresh token used in two regions within the replication lag.
    /// Each region's rotation succeeds where it is made; once both have met, in either
    /// order, the family is revoked everywhere, identically.
    #[test]
    fn two_rotations_of_one_generation_revoke_the_family_in_every_region() {
        use prost::Message as _;
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let (a, b, c) = (
            entries(dirs[0].path(), "af-south"),
            entries(dirs[1].path(), "eu-west"),
            entries(dirs[2].path(), "us-east"),
        );
        let created = a
            .put(EntryKind::TokenFamily, b"f", family(0, 0, &[], 0))
            .unwrap();
        b.apply(&created, true).unwrap();
        c.apply(&created, true).unwrap();
        // A straight line of rotations is no fork, however late it arrives.
        let first = a
            .put(EntryKind::TokenFamily, b"f", family(1, 1, &[0], 0))
            .unwrap();
        assert!(!forked(
            &proto::TokenFamily::decode(created.value.as_slice()).unwrap(),
            &proto::TokenFamily::decode(first.value.as_slice()).unwrap(),
            true
        ));
        // Both regions rotate generation 1 before either hears of the other.
        let at_a = a
            .put(EntryKind::TokenFamily, b"f", family(2, 0xa, &[0, 1], 0))
            .unwrap();
        b.apply(&first, true).unwrap();
        let at_b = b
            .put(EntryKind::TokenFamily, b"f", family(2, 0xb, &[0, 1], 0))
            .unwrap();
        // A later rotation on one branch does not hide it.
        let at_b_again = b
            .put(
                EntryKind::TokenFamily,
                b"f",
                family(3, 0xb2, &[0, 1, 0xb], 0),
            )
            .unwrap();
        assert_eq!(a.apply(&at_b, true).unwrap(), Applied::Applied);
        // (Newer than af-south's revocation, or not: either way it stays revoked.)
        a.apply(&at_b_again, true).unwrap();
        assert_eq!(b.apply(&at_a, true).unwrap(), Applied::Applied);
        // A third region hears of them in the other order.
        for e in [&at_b_again, &first, &at_a] {
            c.apply(e, true).unwrap();
        }
        // Each region that found the fork revoked the family by a change of its own,
        // signed and published; those replicate too, and every region ends with the
        // same version and value. (A revocation merged into another region's version
        // is kept where it was merged, unsigned, and never sent.)
        let sides = [&a, &b, &c];
        let current = |side: &Entries| side.get(EntryKind::TokenFamily, b"f").unwrap().unwrap();
        // What each side published: its outbox, where the revocations went.
        let published = |side: &Entries| -> Vec<proto::Entry> {
            let head = side.store.outbox_head(1000).unwrap();
            let seqs: Vec<u64> = head.iter().map(|(s, _)| *s).collect();
            side.store.outbox_remove(&seqs).unwrap();
            head.iter()
                .filter_map(|(_, b)| proto::ChangeEvent::decode(b.as_slice()).unwrap().entry)
                .filter(|e| {
                    proto::TokenFamily::decode(e.value.as_slice()).is_ok_and(|f| f.revoked_ms != 0)
                })
                .collect()
        };
        let revocations: Vec<proto::Entry> = sides.iter().flat_map(|s| published(s)).collect();
        assert!(!revocations.is_empty());
        for side in sides {
            for e in &revocations {
                side.apply(e, true).unwrap();
            }
        }
        let got: Vec<(Version, Vec<u8>)> = sides
            .iter()
            .map(|s| {
                let e = current(s);
                (entry_version(&e), e.value)
            })
            .collect();
        for (_, value) in &got {
            let f = proto::TokenFamily::decode(value.as_slice()).unwrap();
            assert_ne!(f.revoked_ms, 0, "{f:?}");
            assert_eq!(f.revoked_reason, "reused");
        }
        assert!(got.windows(2).all(|w| w[0] == w[1]), "{got:?}");
    }

    /// The attack: a writer of entries with valid MACs choosing numbers that break an
    /// invariant (a clear at the end of time, an overflow), or a version far ahead to
    /// sit in every retry queue. Refused as malformed, nothing stored.
    #[test]
    fn an_entry_that_breaks_an_invariant_is_refused_and_changes_nothing() {
        use prost::Message as _;
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (a, b) = (
            entries(da.path(), "af-south"),
            entries(db.path(), "eu-west"),
        );
        let overflow = proto::LoginFailures {
            count: 3,
            first_ms: now_ms(),
            last_ms: now_ms(),
            cleared_ms: u64::MAX,
        };
        let bad = a
            .put(
                EntryKind::LoginFailures,
                b"victim",
                overflow.encode_to_vec(),
            )
            .unwrap();
        assert!(matches!(b.apply(&bad, true), Err(ApplyError::Malformed(_))));
        let mut ahead = a.put(EntryKind::ApiKey, b"k", api_key("later")).unwrap();
        ahead.version.as_mut().unwrap().physical_ms = now_ms() + 2 * 86_400_000;
        signatures::sign(&a.keyring.read(), &mut ahead);
        a.mac.sign(&mut ahead);
        assert!(matches!(
            b.apply(&ahead, true),
            Err(ApplyError::Malformed(_))
        ));
        assert!(b
            .get(EntryKind::LoginFailures, b"victim")
            .unwrap()
            .is_none());
        assert!(b.get(EntryKind::ApiKey, b"k").unwrap().is_none());
    }

    /// The attack: a thief who keeps refreshing while the victim's region is cut off,
    /// so that the two branches differ by more generations than a family remembers.
    #[test]
    fn branches_further_apart_than_the_history_are_a_fork_when_two_regions_wrote_them() {
        use prost::Message as _;
        let decoded = |v: Vec<u8>| proto::TokenFamily::decode(v.as_slice()).unwrap();
        let history: Vec<u8> = (0..crate::accounts::bounds::MAX_FAMILY_HISTORY as u8).collect();
        let far = decoded(family(100, 0xf0, &history, 0));
        let behind = decoded(family(10, 0xb0, &[], 0));
        assert!(
            forked(&far, &behind, true),
            "two regions, too far apart to tell"
        );
        assert!(
            !forked(&far, &behind, false),
            "one region's own line of rotations"
        );
        // Within the history, the hashes decide, whoever wrote them.
        let line = decoded(family(3, 0x03, &[0, 1, 2], 0));
        let before = decoded(family(2, 0x02, &[0, 1], 0));
        assert!(!forked(&line, &before, true));
        let other = decoded(family(2, 0xee, &[0, 1], 0));
        assert!(forked(&line, &other, false));
    }

    /// The attack: eu-west publishes a token signing key in af-south's name, to mint
    /// tokens every region would take as af-south's. A signing key's entry must be
    /// written, and signed, by the region it names.
    #[test]
    fn a_region_cannot_publish_a_signing_key_for_another() {
        use prost::Message as _;
        let (db, dc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (b, c) = (entries(db.path(), "eu-west"), entries(dc.path(), "us-east"));
        let theirs = proto::SigningKey {
            region: "af-south".into(),
            public_key: vec![1; 32],
            ..Default::default()
        };
        let forged = b
            .put(
                EntryKind::SigningKey,
                b"af-south-k9",
                theirs.encode_to_vec(),
            )
            .unwrap();
        assert!(matches!(c.apply(&forged, true), Err(ApplyError::Integrity)));
        assert!(c
            .get(EntryKind::SigningKey, b"af-south-k9")
            .unwrap()
            .is_none());
        // Its own key, it may publish.
        let own = proto::SigningKey {
            region: "eu-west".into(),
            ..theirs
        };
        let honest = b
            .put(EntryKind::SigningKey, b"eu-west-k9", own.encode_to_vec())
            .unwrap();
        assert_eq!(c.apply(&honest, true).unwrap(), Applied::Applied);
    }
}
