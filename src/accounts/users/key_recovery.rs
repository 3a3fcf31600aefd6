//! Key recovery: re-wrapping records' data keys and accounts' user keys for regions
//! they lack (after a key outage) and onto this region's active master key (after a
//! rotation).

use uuid::Uuid;

use super::{RecoveryRound, Users};
use crate::accounts::error::UserError;
use crate::common::metrics as m;
use crate::crypto::envelope;
use crate::crypto::primitives::CryptoError;
use crate::proto;

impl Users {
    /// One round of key recovery over the records after `cursor` (at most `limit`):
    ///
    /// - a record whose data key lacks a wrapped key for a region whose key service
    ///   answers (written while that region's key was unavailable) gets its data key
    ///   wrapped for every such region, at the same version, published like any other
    ///   change so that region can read it again (peers take it by
    ///   `envelope::extends_wraps`, and it never competes with a real change);
    /// - a record whose key for this region is under an older master key (after a
    ///   rotation) is moved to the active one, in place: every region moves its own.
    ///
    /// Records this node itself sealed short of a wrap are remembered, and all of them
    /// are repaired in the first round after every key service answers again, ahead of
    /// the scan: the scan alone would take `records / limit` rounds to reach them all.
    ///
    /// The ciphertext is never touched. Returns the round's counts and the next
    /// cursor (`None` once the scan wrapped around).
    pub fn recover_keys_round(
        &self,
        cursor: Option<[u8; 16]>,
        limit: usize,
    ) -> Result<(RecoveryRound, Option<[u8; 16]>), UserError> {
        let (batch, next) = self.store.scan_records(cursor, limit)?;
        let mut round = RecoveryRound {
            scanned: batch.len(),
            ..Default::default()
        };
        if self.own_key_available().is_err() {
            return Ok((round, next));
        }
        // First what this node sealed short during a key outage, all of it, once every
        // key service answers: those records read 503 in the regions they lack.
        let keyring = self.keyring();
        if keyring.regions().all(|r| self.faults.key_available(r)) {
            let noted = std::mem::take(&mut *self.short_wraps.lock());
            for id in noted {
                if let Some(seen) = self.get_record(&id).ok().flatten() {
                    self.repair_keys(&seen, &mut round)?;
                    self.repair_user_key(&id, &mut round)?;
                }
            }
        }
        for seen in batch {
            self.repair_keys(&seen, &mut round)?;
            if let (false, Ok(id)) = (seen.tombstone, Uuid::from_slice(&seen.id)) {
                self.repair_user_key(&id, &mut round)?;
            }
        }
        Ok((round, next))
    }

    /// Key recovery for the user key of account `id`, as [`Users::repair_keys`] does
    /// for records: wraps for the regions it lacks (published, so they can read the
    /// account), and this region's wrap moved to its active master key (kept here).
    fn repair_user_key(&self, id: &Uuid, round: &mut RecoveryRound) -> Result<(), UserError> {
        let _locked = self.store.lock(&[id.as_bytes()]);
        let key = match self.user_key(id.as_bytes()) {
            Ok(Some(k)) => k,
            Ok(None) | Err(UserError::Unreadable) => return Ok(()),
            Err(e) => return Err(e),
        };
        let repair = self.wraps_repair(&key.wraps);
        let sign = self.unsigned_own_key(id, &key);
        let regions = match &repair {
            KeyRepair::None if sign => Vec::new(),
            KeyRepair::None => return Ok(()),
            KeyRepair::Missing(regions) => regions.clone(),
            KeyRepair::OwnKeyOld => vec![self.region.clone()],
        };
        let mut fixed = key;
        let moved = !regions.is_empty()
            && rewrapped(envelope::rewrap_user_key(
                &mut fixed,
                &self.keyring(),
                &regions,
            ))?;
        if sign {
            // Published with whatever wraps moved.
            return self.sign_user_key(fixed, round);
        }
        if !moved {
            return Ok(());
        }
        self.user_key_mac.sign(&mut fixed);
        let publish = matches!(repair, KeyRepair::Missing(_));
        // Published for the regions it adds, stamped with this region and its time.
        let stamp = publish.then(|| {
            crate::common::hlc::Version {
                physical_ms: self.clock_now_ms(),
                logical: 0,
                region: self.region.clone(),
            }
            .to_proto()
        });
        self.store.put_user_key(&fixed, stamp.as_ref(), true)?;
        self.note_key_arrival(*id);
        if publish {
            self.outbox_signal.notify_one();
        }
        let reason = if publish { "missing" } else { "rotation" };
        metrics::counter!(m::USER_KEYS_REWRAPPED_TOTAL, "reason" => reason).increment(1);
        round.user_keys += 1;
        Ok(())
    }

    /// Whether `key` was made here (its account created here) before this region
    /// signed, and can be signed now.
    fn unsigned_own_key(&self, id: &Uuid, key: &proto::UserKey) -> bool {
        key.signature.is_empty()
            && self.keyring().signer().is_some()
            && self
                .store
                .get(id.as_bytes())
                .ok()
                .flatten()
                .is_some_and(|r| {
                    // Created here, and last written here, signed: another region's
                    // claim of `created` is never taken as this region's word.
                    r.created.as_ref().is_some_and(|c| c.region == self.region)
                        && r.version.as_ref().is_some_and(|v| v.region == self.region)
                        && !r.signature.is_empty()
                })
    }

    /// Signs a user key made here before this region signed, with its check value,
    /// and publishes it: every region adopts the signature
    /// (`envelope::adopt_signature`). The caller holds the account's lock.
    fn sign_user_key(
        &self,
        mut key: proto::UserKey,
        round: &mut RecoveryRound,
    ) -> Result<(), UserError> {
        let keyring = self.keyring();
        if !rewrapped(envelope::set_user_key_check(&mut key, &keyring))? {
            return Ok(());
        }
        crate::crypto::signatures::sign(&keyring, &mut key);
        self.user_key_mac.sign(&mut key);
        let stamp = crate::common::hlc::Version {
            physical_ms: self.clock_now_ms(),
            logical: 0,
            region: self.region.clone(),
        }
        .to_proto();
        self.store.put_user_key(&key, Some(&stamp), true)?;
        self.outbox_signal.notify_one();
        metrics::counter!(m::USER_KEYS_REWRAPPED_TOTAL, "reason" => "resign").increment(1);
        round.signed += 1;
        Ok(())
    }

    /// Re-wraps `seen`'s data key where [`Users::key_repair`] says so, unless the record
    /// changed since it was read.
    fn repair_keys(
        &self,
        seen: &proto::Record,
        round: &mut RecoveryRound,
    ) -> Result<(), UserError> {
        if self.key_repair(seen) == KeyRepair::None && !self.unsigned_own(seen) {
            return Ok(());
        }
        let Ok(id) = Uuid::from_slice(&seen.id) else {
            return Ok(());
        };
        let _locked = self.store.lock(&[id.as_bytes()]);
        let previous = match self.get_record(&id) {
            Ok(Some(p)) => p,
            // Unreadable records are counted by get_record; the scan goes on.
            Ok(None) | Err(UserError::Unreadable) => return Ok(()),
            Err(e) => return Err(e),
        };
        let repair = self.key_repair(&previous);
        let sign = self.unsigned_own(&previous);
        if previous != *seen || (repair == KeyRepair::None && !sign) {
            return Ok(());
        }
        let keyring = self.keyring();
        // Same version: only wraps (and a missing signature) change, and every region
        // takes a record that adds wraps at the version it holds
        // (`envelope::extends_wraps`), or its writer's signature. A new version would
        // compete with real changes under last-writer-wins.
        let mut record = previous.clone();
        if repair != KeyRepair::None {
            let regions = match &repair {
                KeyRepair::Missing(regions) => regions.clone(),
                _ => vec![self.region.clone()],
            };
            if !rewrapped(envelope::rewrap(&mut record, &keyring, &regions))? && !sign {
                return Ok(());
            }
        }
        if sign {
            // Written here before the keyring upgrade: signed now, with the check value
            // of its data key (tombstones have none), and published, so every region
            // can take it from anyone once unsigned ones are refused.
            let unchecked = record
                .info
                .as_ref()
                .is_some_and(|e| e.key_check.is_empty() && !record.tombstone);
            if unchecked && !rewrapped(envelope::set_key_check(&mut record, &keyring))? {
                return Ok(());
            }
            crate::crypto::signatures::sign(&keyring, &mut record);
            self.record_mac.sign(&mut record);
            self.store.commit(Some(&previous), &record, true)?;
            self.outbox_signal.notify_one();
            metrics::counter!(m::STORE_COMMITS_TOTAL, "kind" => "resign").increment(1);
            round.signed += 1;
            return Ok(());
        }
        self.record_mac.sign(&mut record);
        if matches!(repair, KeyRepair::Missing(_)) {
            self.store.commit(Some(&previous), &record, true)?;
            self.outbox_signal.notify_one();
            metrics::counter!(m::STORE_COMMITS_TOTAL, "kind" => "key_recovery").increment(1);
            metrics::counter!(m::KEY_RECOVERIES_TOTAL).increment(1);
            round.recovered += 1;
        } else {
            // Same version, not published: moving this region's own wrap to its
            // new master key changes nothing another region reads.
            self.store.commit(Some(&previous), &record, false)?;
            metrics::counter!(m::STORE_COMMITS_TOTAL, "kind" => "rewrap").increment(1);
            metrics::counter!(m::REWRAPPED_RECORDS_TOTAL).increment(1);
            round.rewrapped += 1;
        }
        Ok(())
    }

    /// Whether `record` was written here before this region signed (a format 1
    /// keyring) and can be signed now.
    fn unsigned_own(&self, record: &proto::Record) -> bool {
        record.signature.is_empty()
            && record
                .version
                .as_ref()
                .is_some_and(|v| v.region == self.region)
            && self.keyring().signer().is_some()
    }

    /// What key recovery would do to `record` here. Only records this region can
    /// open are repaired by it.
    fn key_repair(&self, record: &proto::Record) -> KeyRepair {
        let Some(env) = record.info.as_ref() else {
            return KeyRepair::None;
        };
        if record.tombstone {
            return KeyRepair::None;
        }
        self.wraps_repair(&env.keys)
    }

    /// What key recovery would do to a key wrapped as `wraps` (a record's data key or
    /// an account's key). Only keys this region can open are repaired by it.
    fn wraps_repair(&self, wraps: &[proto::WrappedKey]) -> KeyRepair {
        let keyring = self.keyring();
        let Some(own) = wraps.iter().find(|k| k.region == keyring.owner()) else {
            return KeyRepair::None;
        };
        let missing: Vec<String> = keyring
            .regions()
            .filter(|r| self.faults.key_available(r) && !wraps.iter().any(|k| k.region == *r))
            .map(str::to_string)
            .collect();
        if !missing.is_empty() {
            return KeyRepair::Missing(missing);
        }
        match keyring.active_key(keyring.owner()) {
            Some(active) if own.key_version != active.version => KeyRepair::OwnKeyOld,
            _ => KeyRepair::None,
        }
    }
}

/// Whether key recovery's re-wrap of one key went through: not this region's to
/// repair (it holds no wrap it can open: another region's job) and unreadable (counted)
/// are `false`, so the round goes on; only a failure of the node itself is an error.
fn rewrapped(result: Result<(), CryptoError>) -> Result<bool, UserError> {
    match result {
        Ok(()) => Ok(true),
        Err(CryptoError::NoKeyForRegion(_)) | Err(CryptoError::UnknownMasterKey(_)) => Ok(false),
        Err(CryptoError::Integrity) => {
            metrics::counter!(m::RECORDS_UNREADABLE_TOTAL, "reason" => "integrity").increment(1);
            Ok(false)
        }
        Err(e) => Err(UserError::Crypto(e)),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyRepair {
    None,
    /// Lacks a wrapped key for these regions, whose key services answer.
    Missing(Vec<String>),
    /// This region's wrap is under an older master key.
    OwnKeyOld,
}

#[cfg(test)]
mod tests {
    use crate::accounts::error::{Applied, UserError};
    use crate::accounts::input;
    use crate::accounts::users::testkit::{drain, key_event, new_user, record_event, users_with};
    use crate::storage::store::record_version;

    #[test]
    fn every_record_sealed_during_a_key_outage_is_repaired_in_the_first_round_after_it() {
        let regions: Vec<String> = ["af-south", "eu-west"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut rings = crate::crypto::keyring::init(&regions).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let a = users_with(dir.path(), rings.remove(0));
        a.faults().set(crate::common::faults::FaultState {
            keys_unavailable: Some(["eu-west".to_string()].into()),
            ..Default::default()
        });
        for n in 0..5 {
            let user = input::new_user(
                &serde_json::json!({"email": format!("u{n}@example.com"),
                                    "password": "correct horse battery"}),
                8,
            )
            .unwrap();
            a.create(user).unwrap();
        }
        // Still down: nothing can be repaired, and nothing is forgotten.
        assert_eq!(a.recover_keys_round(None, 1).unwrap().0.recovered, 0);
        a.faults().set(crate::common::faults::FaultState {
            keys_unavailable: Some(Default::default()),
            ..Default::default()
        });
        // A scan of one record per round would need five rounds; the noted ones go
        // first, each record with its account's key.
        let (round, _) = a.recover_keys_round(None, 1).unwrap();
        assert_eq!((round.scanned, round.recovered, round.user_keys), (1, 5, 5));
        let (round, _) = a.recover_keys_round(None, 100).unwrap();
        assert_eq!(
            (round.scanned, round.recovered),
            (5, 0),
            "all were repaired"
        );
    }

    #[test]
    fn records_written_during_a_key_outage_are_repaired_without_beating_later_changes() {
        let regions: Vec<String> = ["af-south", "eu-west", "us-east"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut rings = crate::crypto::keyring::init(&regions).unwrap();
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let c = users_with(dirs[2].path(), rings.remove(2));
        let b = users_with(dirs[1].path(), rings.remove(1));
        let a = users_with(dirs[0].path(), rings.remove(0));
        let outage = crate::common::faults::FaultState {
            keys_unavailable: Some(["eu-west".to_string()].into()),
            ..Default::default()
        };
        a.faults().set(outage.clone());
        b.faults().set(outage);
        // eu-west itself can neither seal nor open while its key service is down.
        assert!(matches!(
            b.create(new_user("b@example.com")),
            Err(UserError::KeyUnavailable(_))
        ));
        let (id, _) = a.create(new_user("ada@example.com")).unwrap();
        let events = drain(&a);
        let (written, key) = (record_event(&events), key_event(&events));
        let env = written.record.as_ref().unwrap().info.as_ref().unwrap();
        assert!(env.keys.iter().all(|k| k.region != "eu-west"));
        let wraps = &key.user_key.as_ref().unwrap().wraps;
        assert!(wraps.iter().all(|k| k.region != "eu-west"));
        // Stored in eu-west all the same (no plaintext is needed to apply it) ...
        for region in [&b, &c] {
            assert_eq!(region.apply(&key).unwrap(), Applied::Applied);
            assert_eq!(region.apply(&written).unwrap(), Applied::Applied);
        }
        // ... but not readable there, even once its own key service is back.
        let over = crate::common::faults::FaultState {
            keys_unavailable: Some(Default::default()),
            ..Default::default()
        };
        b.faults().set(over.clone());
        assert!(matches!(b.get(&id), Err(UserError::KeyUnavailable(_))));
        // Nothing to repair while the key service is still down for af-south.
        let (round, _) = a.recover_keys_round(None, 100).unwrap();
        assert_eq!((round.scanned, round.recovered), (1, 0));
        a.faults().set(over);
        let (round, _) = a.recover_keys_round(None, 100).unwrap();
        assert_eq!(
            (round.recovered, round.user_keys),
            (1, 1),
            "the record and its key"
        );
        let events = drain(&a);
        let (repaired, repaired_key) = (record_event(&events), key_event(&events));
        let (v0, v1) = (
            record_version(written.record.as_ref().unwrap()),
            record_version(repaired.record.as_ref().unwrap()),
        );
        assert_eq!(v1, v0, "the same version, only wraps added");
        assert_eq!(
            a.recover_keys_round(None, 100).unwrap().0.recovered,
            0,
            "done once"
        );
        // A change made in us-east after the write wins over the repair everywhere,
        // however close in time: the repair keeps the version it repaired.
        let patch = input::user_patch(&serde_json::json!({"profile": {"city": "Lagos"}})).unwrap();
        c.update(&id, patch).unwrap();
        assert_eq!(c.apply(&repaired).unwrap(), Applied::Skipped);
        // eu-west reads the record once both repairs arrive.
        assert_eq!(b.apply(&repaired).unwrap(), Applied::Applied);
        assert_eq!(b.apply(&repaired).unwrap(), Applied::Skipped, "once");
        assert!(matches!(b.get(&id), Err(UserError::KeyUnavailable(_))));
        assert_eq!(b.apply(&repaired_key).unwrap(), Applied::Applied);
        assert_eq!(b.apply(&repaired_key).unwrap(), Applied::Skipped, "once");
        assert_eq!(b.get(&id).unwrap().email, "ada@example.com");
        assert_eq!(a.get(&id).unwrap().email, "ada@example.com");
    }

    /// The keyring upgrade, end to end between two regions: what af-south wrote before
    /// it is signed by af-south's key recovery and eu-west adopts the signatures, so
    /// once the upgrade is finished a region that never held the data can still take
    /// it (from anti-entropy, say), while an unsigned copy is refused.
    #[test]
    fn after_the_keyring_upgrade_old_records_are_signed_by_their_writer_and_unsigned_ones_refused()
    {
        use crate::accounts::error::ApplyError;
        use crate::crypto::keyring::{self, Keyring};
        use crate::proto;
        let regions: Vec<String> = ["af-south", "eu-west"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        std::fs::create_dir(&keys).unwrap();
        let mut legacy = keyring::init_legacy(&regions).unwrap();
        for ring in &legacy {
            ring.save(&keyring::keyring_path(&keys, ring.owner()))
                .unwrap();
        }
        let b = users_with(&dir.path().join("b"), legacy.remove(1));
        let a = users_with(&dir.path().join("a"), legacy.remove(0));
        let (id, _) = a.create(new_user("before@example.com")).unwrap();
        let unsigned = drain(&a);
        // A node with a format 1 keyring writes only what format 1 nodes read.
        let first = record_event(&unsigned).record.unwrap();
        assert!(first.signature.is_empty() && first.info.unwrap().key_check.is_empty());
        let key = key_event(&unsigned).user_key.unwrap();
        assert!(key.signature.is_empty() && key.key_check.is_empty());
        for e in &unsigned {
            b.apply(e).unwrap();
        }
        let load = |r: &str| Keyring::load(&keyring::keyring_path(&keys, r)).unwrap();

        keyring::upgrade_in_dir(&keys).unwrap();
        a.replace_keyring(load("af-south")).unwrap();
        b.replace_keyring(load("eu-west")).unwrap();
        let (round, _) = a.recover_keys_round(None, 100).unwrap();
        assert_eq!(round.signed, 2, "{round:?}");
        for e in drain(&a) {
            assert_eq!(b.apply(&e).unwrap(), Applied::Applied);
        }
        let at_b = b.store().get(id.as_bytes()).unwrap().unwrap();
        assert!(!at_b.signature.is_empty());
        assert!(!b
            .store()
            .get_user_key(id.as_bytes())
            .unwrap()
            .unwrap()
            .signature
            .is_empty());
        assert!(b.get(&id).is_ok(), "still readable at eu-west");
        // Nothing left to sign.
        assert_eq!(a.recover_keys_round(None, 100).unwrap().0.signed, 0);

        keyring::finish_upgrade_in_dir(&keys).unwrap();
        b.replace_keyring(load("eu-west")).unwrap();
        // Unsigned and written before the finish: still taken (a node catching up needs
        // it), and it changes nothing where the signed copy is held.
        assert_eq!(b.apply(&record_event(&unsigned)).unwrap(), Applied::Skipped);
        // Unsigned and dated after the finish: refused.
        let mut late = record_event(&unsigned);
        let r = late.record.as_mut().unwrap();
        r.version.as_mut().unwrap().physical_ms = load("eu-west").legacy_before_ms() + 1;
        crate::crypto::envelope::RecordMac::new(load("eu-west").index_key()).sign(r);
        assert!(matches!(b.apply(&late), Err(ApplyError::Integrity)));
        // A fresh eu-west node takes the signed copies as anti-entropy sends them.
        let fresh = users_with(&dir.path().join("fresh"), load("eu-west"));
        let key = a.store().get_user_key(id.as_bytes()).unwrap().unwrap();
        let record = a.store().get(id.as_bytes()).unwrap().unwrap();
        for event in [
            proto::ChangeEvent {
                origin_region: "af-south".into(),
                user_key: Some(key),
                ..Default::default()
            },
            proto::ChangeEvent {
                origin_region: "af-south".into(),
                record: Some(record),
                ..Default::default()
            },
        ] {
            assert_eq!(fresh.apply(&event).unwrap(), Applied::Applied);
        }
        assert!(fresh.get(&id).is_ok());
    }
}
