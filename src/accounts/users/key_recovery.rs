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
        let regions = match &repair {
            KeyRepair::None => return Ok(()),
            KeyRepair::Missing(regions) => regions.clone(),
            KeyRepair::OwnKeyOld => vec![self.region.clone()],
        };
        let mut fixed = key;
        if !rewrapped(envelope::rewrap_user_key(
            &mut fixed,
            &self.keyring(),
            &regions,
        ))? {
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

    /// Re-wraps `seen`'s data key where [`Users::key_repair`] says so, unless the record
    /// changed since it was read.
    fn repair_keys(
        &self,
        seen: &proto::Record,
        round: &mut RecoveryRound,
    ) -> Result<(), UserError> {
        if self.key_repair(seen) == KeyRepair::None {
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
        if previous != *seen || repair == KeyRepair::None {
            return Ok(());
        }
        let keyring = self.keyring();
        let regions = match &repair {
            KeyRepair::Missing(regions) => regions.clone(),
            _ => vec![self.region.clone()],
        };
        // Same version: only wraps change, and every region takes a record that
        // adds wraps at the version it holds (`envelope::extends_wraps`). A new
        // version would compete with real changes under last-writer-wins.
        let mut record = previous.clone();
        if !rewrapped(envelope::rewrap(&mut record, &keyring, &regions))? {
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
}
