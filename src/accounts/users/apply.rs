//! Applying change events replicated from other regions: records (newest wins, erases
//! first), user keys and entries. Duplicate accounts found here go to `merge`.

use uuid::Uuid;

use super::{Users, LOCK_RETRIES};
use crate::accounts::error::{Applied, ApplyError, Problem, UserError};
use crate::crypto::primitives::CryptoError;
use crate::crypto::{envelope, signatures};
use crate::proto;
use crate::storage::store::{record_rank, record_version, IndexField};

impl Users {
    /// Applies a change replicated from another region: stored only when its version
    /// is newer than the stored one, so replays, duplicates and any reordering leave
    /// the same state. Erases are the exception that keeps this true for an erased
    /// account: a tombstone replaces any live version, and only a later tombstone
    /// replaces it. An applied account that claims an email or phone held by
    /// another live account is a duplicate: the one with the lower (created version,
    /// id) wins and the other is merged into it, the same decision in every region.
    pub fn apply(&self, event: &proto::ChangeEvent) -> Result<Applied, ApplyError> {
        self.apply_with(event, true)
    }

    /// [`Users::apply`] for one event of a batch: a plain apply is written without
    /// waiting for the disk, and is durable once the caller has called
    /// [`crate::storage::store::Store::sync_wal`] (which it must do before it records the event as done). A
    /// merge of duplicates, which writes new versions of its own, is synced at once.
    pub fn apply_deferred(&self, event: &proto::ChangeEvent) -> Result<Applied, ApplyError> {
        self.apply_with(event, false)
    }

    fn apply_with(&self, event: &proto::ChangeEvent, sync: bool) -> Result<Applied, ApplyError> {
        let commit = |previous: Option<&proto::Record>, record: &proto::Record| {
            if sync {
                self.store.commit(previous, record, false).map(drop)
            } else {
                self.store.commit_unsynced(previous, record)
            }
        };
        if let (None, Some(entry)) = (&event.record, &event.entry) {
            return self.entries.apply(entry, sync);
        }
        if let (None, Some(key)) = (&event.record, &event.user_key) {
            return self.apply_user_key(key, sync);
        }
        if event.record.is_none() && !event.erased_user.is_empty() {
            // Only ever published as a null value; the erase itself travels as the
            // record's tombstone.
            return Err(ApplyError::Malformed("an erase is never sent as a value"));
        }
        let incoming = event
            .record
            .as_ref()
            .ok_or(ApplyError::Malformed("event without a record"))?;
        let id = Uuid::from_slice(&incoming.id)
            .map_err(|_| ApplyError::Malformed("record id is not 16 bytes"))?;
        if incoming
            .version
            .as_ref()
            .is_none_or(|v| v.logical >= crate::common::hlc::LOGICAL_LIMIT)
        {
            return Err(ApplyError::Malformed("record without a valid version"));
        }
        // Written by the region its version names, whichever region relayed it.
        let writer = incoming.version.as_ref().map_or("", |v| v.region.as_str());
        self.check_writer(incoming, writer)?;
        self.record_mac
            .verify(incoming)
            .map_err(|_| ApplyError::Integrity)?;
        crate::accounts::bounds::record(incoming)?;
        let own_version = envelope::wrap_for(incoming, &self.region).map(|w| w.key_version);
        self.own_wrap_verdict(
            envelope::check_own_wrap(incoming, &self.keyring()),
            own_version,
        )?;
        let version = record_version(incoming);
        crate::accounts::bounds::observe(&self.hlc, &version)?;
        if self.faults.take_apply_failure() {
            return Err(ApplyError::Injected("transient apply failure"));
        }
        if self.faults.is_poisoned(&id) {
            return Err(ApplyError::Injected("record is poisoned"));
        }
        let claims: Vec<(IndexField, Vec<u8>)> = [IndexField::Email, IndexField::Phone]
            .into_iter()
            .filter_map(|f| crate::storage::store::indexed(incoming, f).map(|h| (f, h.to_vec())))
            .collect();
        let mut owners: Vec<[u8; 16]> = Vec::new();
        for _ in 0..LOCK_RETRIES {
            let mut keys: Vec<&[u8]> = vec![id.as_bytes()];
            keys.extend(claims.iter().map(|(_, h)| h.as_slice()));
            keys.extend(owners.iter().map(|o| o.as_slice()));
            let _locked = self.store.lock(&keys);
            // A local copy that fails its integrity check is replaced by the incoming one.
            let current = match self.get_record(&id) {
                Ok(c) => c,
                Err(UserError::Unreadable) => None,
                Err(e) => return Err(e.into()),
            };
            let rank = record_rank(incoming.tombstone, version.clone());
            if let Some((c, held)) = current
                .as_ref()
                .map(|c| (c, record_rank(c.tombstone, record_version(c))))
                .filter(|(_, held)| *held >= rank)
            {
                // The same version with more wrapped keys: key recovery's repair. The
                // wrap this region opens is kept as it is: a relay cannot swap it.
                let own = |r| envelope::wrap_for(r, &self.region);
                let keyring = self.keyring();
                let known = |region: &str| keyring.regions().any(|r| r == region);
                if held == rank
                    && envelope::extends_wraps(c, incoming, known)
                    && own(c).is_none_or(|w| own(incoming) == Some(w))
                {
                    commit(Some(c), incoming)?;
                    return Ok(Applied::Applied);
                }
                // The same version where the copy held does not open here (a relay's
                // copy got in first, with a wrap or envelope MAC that does not verify)
                // and this one does: the writer's copy repairs it.
                if held == rank
                    && c != incoming
                    && envelope::same_content(c, incoming)
                    && envelope::opens_here(incoming, &keyring)
                    && !envelope::opens_here(c, &keyring)
                {
                    commit(Some(c), incoming)?;
                    return Ok(Applied::Applied);
                }
                // The same version signed by its writer since (after a keyring upgrade):
                // the signature is taken, the wraps kept.
                if held == rank
                    && c.signature.is_empty()
                    && !incoming.signature.is_empty()
                    && envelope::same_content(c, incoming)
                {
                    let mut signed = c.clone();
                    signed.signature.clone_from(&incoming.signature);
                    signed.signer.clone_from(&incoming.signer);
                    if let (Some(env), Some(theirs)) = (signed.info.as_mut(), &incoming.info) {
                        env.key_check.clone_from(&theirs.key_check);
                    }
                    self.record_mac.sign(&mut signed);
                    commit(Some(c), &signed)?;
                    return Ok(Applied::Applied);
                }
                return Ok(Applied::Skipped);
            }
            let mut found: Vec<proto::Record> = Vec::new();
            for (field, hash) in &claims {
                let hash: [u8; 32] = hash
                    .as_slice()
                    .try_into()
                    .map_err(|_| ApplyError::Malformed("index hash"))?;
                if let Some(other) = self.find_record(*field, &hash)? {
                    if other.id != incoming.id && !found.iter().any(|f| f.id == other.id) {
                        found.push(other);
                    }
                }
            }
            let mut found_ids: Vec<[u8; 16]> = found
                .iter()
                .filter_map(|r| <[u8; 16]>::try_from(r.id.as_slice()).ok())
                .collect();
            found_ids.sort_unstable();
            if found_ids != owners {
                owners = found_ids;
                continue;
            }
            if found.is_empty() {
                commit(current.as_ref(), incoming)?;
                return Ok(Applied::Applied);
            }
            let inherited = self.merge_duplicates(current.as_ref(), incoming.clone(), found)?;
            drop(_locked);
            if let Some((winner, loser)) = inherited {
                self.inherit_factor(&winner, &loser)?;
            }
            return Ok(Applied::Merged);
        }
        Err(ApplyError::User(UserError::Conflict(vec![Problem::new(
            "id",
            "index owners kept changing while applying; retry",
        )])))
    }

    /// Checks that `message` from the network was signed by `region` (or is a format 1
    /// node's unsigned message, while the keyring accepts them).
    pub(crate) fn check_writer<M: signatures::Signed>(
        &self,
        message: &M,
        region: &str,
    ) -> Result<(), ApplyError> {
        match signatures::verify(&self.keyring(), message, region) {
            Ok(verified) => {
                if verified == signatures::Verified::Legacy {
                    metrics::counter!(crate::common::metrics::UNSIGNED_ACCEPTED_TOTAL).increment(1);
                }
                Ok(())
            }
            Err(_) => {
                metrics::counter!(crate::common::metrics::SIGNATURES_REFUSED_TOTAL).increment(1);
                Err(ApplyError::Integrity)
            }
        }
    }

    /// What this region's wrap in a message from the network came to: garbage (a wrap
    /// of another key, or none that opens) is refused; under a master key version
    /// newer than any held here it waits for the keyring to reload; under a retired
    /// one it is taken as it is (it was sealed before the retirement).
    fn own_wrap_verdict(
        &self,
        opened: Result<(), CryptoError>,
        version: Option<u32>,
    ) -> Result<(), ApplyError> {
        match opened {
            Ok(()) => Ok(()),
            // Versions start at 1: a wrap under 0 was never sealed by anyone.
            Err(CryptoError::UnknownMasterKey(_)) if version == Some(0) => {
                metrics::counter!(crate::common::metrics::SIGNATURES_REFUSED_TOTAL).increment(1);
                Err(ApplyError::Integrity)
            }
            Err(CryptoError::UnknownMasterKey(key)) => {
                let newest = self.keyring().own_versions().0.last().copied().unwrap_or(0);
                if version.is_some_and(|v| v > newest) {
                    Err(ApplyError::User(UserError::KeyUnavailable(key)))
                } else {
                    Ok(())
                }
            }
            Err(_) => {
                metrics::counter!(crate::common::metrics::SIGNATURES_REFUSED_TOTAL).increment(1);
                Err(ApplyError::Integrity)
            }
        }
    }

    /// Stores a user key received from a peer: a new one as it is, a known one with the
    /// wraps it adds ([`envelope::merge_user_key`]). An erased account takes none, or
    /// a late key event would undo the erase here.
    fn apply_user_key(&self, key: &proto::UserKey, sync: bool) -> Result<Applied, ApplyError> {
        let id = Uuid::from_slice(&key.user_id)
            .map_err(|_| ApplyError::Malformed("user key's account id is not 16 bytes"))?;
        if key.key_id.len() != envelope::USER_KEY_ID_LEN {
            return Err(ApplyError::Malformed("user key id is not 8 bytes"));
        }
        // Any region makes the key of an account it creates; it signs it, and each wrap
        // another region adds must hold the key it signed (checked on opening).
        self.check_writer(key, signatures::signer_region(&key.signer).unwrap_or(""))?;
        self.user_key_mac
            .verify(key)
            .map_err(|_| ApplyError::Integrity)?;
        // Wraps only for regions of the deployment, one each: a relay could otherwise
        // grow every user key with made-up ones (each opens only where it is checked).
        let mut key = key.clone();
        {
            let keyring = self.keyring();
            let mut seen = std::collections::BTreeSet::new();
            key.wraps.retain(|w| {
                keyring.regions().any(|r| r == w.region) && seen.insert(w.region.clone())
            });
        }
        let key = &key;
        let _locked = self.store.lock(&[id.as_bytes()]);
        match self.get_record(&id) {
            Ok(Some(r)) if r.tombstone => return Ok(Applied::Skipped),
            Ok(_) | Err(UserError::Unreadable) => {}
            Err(e) => return Err(e.into()),
        }
        let mut stored = match self.user_key(&key.user_id) {
            Ok(None) | Err(UserError::Unreadable) => {
                let own = key
                    .wraps
                    .iter()
                    .find(|w| w.region == self.region)
                    .map(|w| w.key_version);
                self.own_wrap_verdict(
                    envelope::check_own_user_key_wrap(key, &self.keyring()),
                    own,
                )?;
                key.clone()
            }
            Ok(Some(local)) => {
                let merged = envelope::merge_user_key(&local, key)
                    .or_else(|| envelope::adopt_signature(&local, key));
                match merged {
                    // A wrap for this region replaces the one held only if it opens to
                    // the key its maker signed: a relay cannot swap it for another.
                    Some(mut merged) => {
                        let own = |k: &proto::UserKey| {
                            k.wraps.iter().find(|w| w.region == self.region).cloned()
                        };
                        if let Some(held) =
                            own(&local).filter(|held| Some(held) != own(&merged).as_ref())
                        {
                            if envelope::open_user_key(&merged, &self.keyring()).is_err() {
                                merged.wraps.retain(|w| w.region != self.region);
                                merged.wraps.push(held);
                                merged.wraps.sort_by(|a, b| a.region.cmp(&b.region));
                            }
                        }
                        if merged == local {
                            return Ok(Applied::Skipped);
                        }
                        // What is kept must still open here (a check value or signature
                        // taken from another copy must match the key): else the copy
                        // held stays as it is.
                        let own = merged
                            .wraps
                            .iter()
                            .find(|w| w.region == self.region)
                            .map(|w| w.key_version);
                        let opened = envelope::check_own_user_key_wrap(&merged, &self.keyring());
                        if self.own_wrap_verdict(opened, own).is_err() {
                            return Ok(Applied::Skipped);
                        }
                        merged
                    }
                    None => return Ok(Applied::Skipped),
                }
            }
            Err(e) => return Err(e.into()),
        };
        self.user_key_mac.sign(&mut stored);
        self.store
            .put_user_key(&stored, None, sync)
            .map_err(UserError::from)?;
        self.note_key_arrival(id);
        Ok(Applied::Applied)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::accounts::error::{Applied, ApplyError};
    use crate::accounts::users::testkit::{drain, new_user, record_event, users_with};
    use crate::accounts::users::Users;
    use crate::common::hlc::{Hlc, SystemClock};
    use crate::crypto::password::{PasswordAlgorithm, Passwords};
    use crate::crypto::{envelope, signatures};
    use crate::proto::{self, Status};
    use crate::storage::store::{Store, StoreOptions};

    struct Ahead(u64);

    impl crate::common::hlc::TimeSource for Ahead {
        fn now_ms(&self) -> u64 {
            SystemClock.now_ms() + self.0
        }
    }

    #[test]
    fn events_from_a_clock_too_far_ahead_are_refused_and_change_nothing() {
        use crate::common::hlc::TimeSource;
        let rings =
            crate::crypto::keyring::init(&["af-south".to_string(), "eu-west".to_string()]).unwrap();
        let mut rings = rings.into_iter();
        let (a, b) = (rings.next().unwrap(), rings.next().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let fast = Users::new(
            Arc::new(Store::open(&dir.path().join("a"), &StoreOptions::default()).unwrap()),
            a,
            Passwords::new(PasswordAlgorithm::Argon2id, &[1; 32]).unwrap(),
            Arc::new(Hlc::new("af-south", 500, Box::new(Ahead(10_000)))),
            8,
        );
        let local = Users::new(
            Arc::new(Store::open(&dir.path().join("b"), &StoreOptions::default()).unwrap()),
            b,
            Passwords::new(PasswordAlgorithm::Argon2id, &[1; 32]).unwrap(),
            Arc::new(Hlc::new("eu-west", 500, Box::new(SystemClock))),
            8,
        );
        fast.create(new_user("future@example.com")).unwrap();
        let event = record_event(&drain(&fast));
        match local.apply(&event) {
            Err(ApplyError::Skew(e)) => assert!(e.ahead_ms >= 9_000, "{e}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(local.digest().unwrap().0, 0, "nothing stored");
        // The local clock did not jump either.
        assert!(local.hlc.tick().physical_ms < SystemClock.now_ms() + 1_000);
    }

    #[test]
    fn events_altered_in_transit_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let regions: Vec<String> = ["af-south", "eu-west"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut rings = crate::crypto::keyring::init(&regions).unwrap().into_iter();
        let origin = users_with(&dir.path().join("o"), rings.next().unwrap());
        origin.create(new_user("transit@example.com")).unwrap();
        let event = record_event(&drain(&origin));
        let target = users_with(&dir.path().join("t"), rings.next().unwrap());
        let mut locked = event.clone();
        locked.record.as_mut().unwrap().status = Status::Locked as i32;
        assert!(matches!(target.apply(&locked), Err(ApplyError::Integrity)));
        let mut newer = event.clone();
        newer
            .record
            .as_mut()
            .unwrap()
            .version
            .as_mut()
            .unwrap()
            .logical += 1;
        assert!(matches!(target.apply(&newer), Err(ApplyError::Integrity)));
        let mut empty = event.clone();
        empty.record = None;
        assert!(matches!(
            target.apply(&empty),
            Err(ApplyError::Malformed(_))
        ));
        assert_eq!(target.digest().unwrap().0, 0);
        // The genuine event applies, once.
        assert_eq!(target.apply(&event).unwrap(), Applied::Applied);
        assert_eq!(target.apply(&event).unwrap(), Applied::Skipped);
    }

    /// The attack: eu-west, which holds every secret the regions share (the index key,
    /// the pepper), rewrites af-south's record of an account (here its password hash,
    /// for one it knows) and sends it as af-south's, with a valid MAC. us-east took it
    /// while keyrings were format 1; now the record must be signed by af-south, whose
    /// key eu-west does not hold, and nothing changes. (eu-west can still write the
    /// account in its own name, as every region may: then the write is its own, in
    /// every log and dead letter.)
    #[test]
    fn a_region_cannot_rewrite_another_regions_record() {
        use crate::crypto::envelope::RecordMac;
        let regions: Vec<String> = ["af-south", "eu-west", "us-east"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for legacy in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let mut rings = if legacy {
                crate::crypto::keyring::init_legacy(&regions).unwrap()
            } else {
                crate::crypto::keyring::init(&regions).unwrap()
            };
            let target = users_with(&dir.path().join("c"), rings.remove(2));
            let attacker = rings.remove(1);
            let origin = users_with(&dir.path().join("a"), rings.remove(0));
            let (id, _) = origin.create(new_user("victim@example.com")).unwrap();
            for event in drain(&origin) {
                target.apply(&event).unwrap();
            }
            let genuine = target.get_record(&id).unwrap().unwrap();
            let mut forged = proto::ChangeEvent {
                origin_region: "af-south".into(),
                record: Some(genuine.clone()),
                ..Default::default()
            };
            let r = forged.record.as_mut().unwrap();
            r.secret = "$argon2id$v=19$m=19456,t=2,p=1$YXR0YWNrZXI$YXR0YWNrZXI".into();
            r.version.as_mut().unwrap().logical += 1;
            // The envelope MAC covers the version: eu-west renews it, as it can with the
            // data key its own wrap opens.
            envelope::rewrap(r, &attacker, &["eu-west".to_string()]).unwrap();
            signatures::sign(&attacker, r);
            RecordMac::new(attacker.index_key()).sign(r);
            let result = target.apply(&forged);
            let stored = target.get_record(&id).unwrap().unwrap();
            if legacy {
                assert_eq!(result.unwrap(), Applied::Applied, "format 1 took it");
                assert_ne!(stored.secret, genuine.secret);
            } else {
                assert!(matches!(result, Err(ApplyError::Integrity)), "{result:?}");
                assert_eq!(stored, genuine, "nothing changed");
            }
        }
    }

    /// The attack: a relay (eu-west) sends an account's user key with us-east's wrap
    /// swapped for one of another key under a newer master key version, so that
    /// us-east could no longer open the account. A wrap for this region replaces the
    /// one held only if it opens to the key the maker signed.
    #[test]
    fn a_relay_cannot_swap_the_wrap_this_region_opens() {
        let regions: Vec<String> = ["af-south", "eu-west", "us-east"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let mut rings = crate::crypto::keyring::init(&regions).unwrap();
        let target = users_with(&dir.path().join("c"), rings.remove(2));
        let relay = rings.remove(1);
        let origin = users_with(&dir.path().join("a"), rings.remove(0));
        let (id, _) = origin.create(new_user("swap@example.com")).unwrap();
        let events = drain(&origin);
        for e in &events {
            target.apply(e).unwrap();
        }
        let mut key = events.iter().find_map(|e| e.user_key.clone()).unwrap();
        let (other, _) = envelope::new_user_key(&key.user_id, &relay, &regions).unwrap();
        let mut swapped = other
            .wraps
            .into_iter()
            .find(|w| w.region == "us-east")
            .unwrap();
        swapped.key_version = 7;
        for w in key.wraps.iter_mut().filter(|w| w.region == "us-east") {
            *w = swapped.clone();
        }
        crate::crypto::envelope::UserKeyMac::new(relay.index_key()).sign(&mut key);
        let event = proto::ChangeEvent {
            origin_region: "eu-west".into(),
            user_key: Some(key),
            ..Default::default()
        };
        assert_eq!(target.apply(&event).unwrap(), Applied::Skipped);
        assert!(target.get(&id).is_ok(), "us-east still opens the account");
    }

    /// The attack: a relay hands a region that lacks the account (a new node, one
    /// behind on the stream) a copy whose wrap for that region holds garbage, so that
    /// the genuine copy, arriving later at the same version, is skipped and the
    /// account never opens there. Anyone can wrap to a public key, so a wrap is taken
    /// only once it opens here; the genuine copies then apply.
    #[test]
    fn a_wrap_that_does_not_open_here_is_refused() {
        let regions: Vec<String> = ["af-south", "eu-west", "us-east"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let mut rings = crate::crypto::keyring::init(&regions).unwrap();
        let target = users_with(&dir.path().join("c"), rings.remove(2));
        let relay = rings.remove(1);
        let origin = users_with(&dir.path().join("a"), rings.remove(0));
        let (id, _) = origin.create(new_user("garbage@example.com")).unwrap();
        let events = drain(&origin);
        let garbage = |wraps: &mut Vec<proto::WrappedKey>| {
            for w in wraps.iter_mut().filter(|w| w.region == "us-east") {
                w.ciphertext = vec![7; w.ciphertext.len()];
            }
        };
        for genuine in &events {
            let mut forged = genuine.clone();
            if let Some(k) = forged.user_key.as_mut() {
                garbage(&mut k.wraps);
                envelope::UserKeyMac::new(relay.index_key()).sign(k);
            }
            if let Some(r) = forged.record.as_mut() {
                garbage(&mut r.info.as_mut().unwrap().keys);
                envelope::RecordMac::new(relay.index_key()).sign(r);
            }
            assert!(matches!(target.apply(&forged), Err(ApplyError::Integrity)));
        }
        for genuine in &events {
            assert_eq!(target.apply(genuine).unwrap(), Applied::Applied);
        }
        assert!(target.get(&id).is_ok());
    }
}

#[cfg(test)]
mod relay_tests {
    //! What a relay (a peer region holding its own keyring: the index key, and a wrap of
    //! every record's data key) can do to the copies it forwards: the parts outside the
    //! writer's signature are the wraps and the envelope MAC.

    use crate::accounts::error::{Applied, ApplyError};
    use crate::accounts::users::testkit::{drain, new_user, users_with};
    use crate::accounts::users::Users;
    use crate::crypto::envelope::{self, RecordMac, UserKeyMac};
    use crate::crypto::keyring::Keyring;
    use crate::proto;

    struct Three {
        _dir: tempfile::TempDir,
        target: Users,
        relay: Keyring,
        id: uuid::Uuid,
        events: Vec<proto::ChangeEvent>,
    }

    /// af-south writes an account; us-east is the target, eu-west the relay.
    fn three() -> Three {
        let regions: Vec<String> = ["af-south", "eu-west", "us-east"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let mut rings = crate::crypto::keyring::init(&regions).unwrap();
        let target = users_with(&dir.path().join("c"), rings.remove(2));
        let relay = rings.remove(1);
        let origin = users_with(&dir.path().join("a"), rings.remove(0));
        let (id, _) = origin.create(new_user("relayed@example.com")).unwrap();
        let events = drain(&origin);
        Three {
            _dir: dir,
            target,
            relay,
            id,
            events,
        }
    }

    fn record_of(events: &[proto::ChangeEvent]) -> proto::ChangeEvent {
        events.iter().find(|e| e.record.is_some()).unwrap().clone()
    }

    fn apply_keys(t: &Three) {
        for e in t.events.iter().filter(|e| e.user_key.is_some()) {
            t.target.apply(e).unwrap();
        }
    }

    fn relayed(t: &Three, change: impl FnOnce(&mut proto::Record)) -> proto::ChangeEvent {
        let mut event = record_of(&t.events);
        event.origin_region = "eu-west".into();
        let r = event.record.as_mut().unwrap();
        change(r);
        RecordMac::new(t.relay.index_key()).sign(r);
        event
    }

    /// The attack: the relay gets its copy in first, with the envelope MAC rewritten.
    /// Taken, the account would not open in us-east, and the writer's copy, at the
    /// same version and with the same wraps, would be skipped.
    #[test]
    fn a_relayed_copy_with_a_broken_envelope_is_refused() {
        let t = three();
        apply_keys(&t);
        let forged = relayed(&t, |r| r.info.as_mut().unwrap().mac = vec![9; 32]);
        assert!(matches!(
            t.target.apply(&forged),
            Err(ApplyError::Integrity)
        ));
        assert_eq!(
            t.target.apply(&record_of(&t.events)).unwrap(),
            Applied::Applied
        );
        assert!(t.target.get(&t.id).is_ok(), "us-east opens the account");
    }

    /// The attack: the relay adds a wrap for a region the deployment does not have
    /// (and an envelope MAC that matches, since it opens the data key itself). Taken
    /// as key recovery's repair, it would grow every record without bound, one
    /// message at a time.
    #[test]
    fn a_relayed_copy_cannot_add_wraps_for_made_up_regions() {
        let t = three();
        apply_keys(&t);
        let genuine = record_of(&t.events);
        assert_eq!(t.target.apply(&genuine).unwrap(), Applied::Applied);
        let relay = &t.relay;
        let grown = relayed(&t, |r| {
            let env = r.info.as_mut().unwrap();
            let mut extra = env.keys[0].clone();
            extra.region = "zz-made-up".into();
            env.keys.push(extra);
            // Renews the envelope MAC over the longer list of wraps.
            envelope::rewrap(r, relay, &["eu-west".to_string()]).unwrap();
        });
        assert_eq!(t.target.apply(&grown).unwrap(), Applied::Skipped);
        let held = t.target.get_record(&t.id).unwrap().unwrap();
        assert_eq!(
            envelope::wrapped_regions(&held),
            vec!["af-south", "eu-west", "us-east"]
        );
        assert!(t.target.get(&t.id).is_ok());
    }

    /// The attack: this region's wrap under master key version 0, which no key ever
    /// had, passed as "sealed under a retired version" and was taken as it was.
    /// And a copy held that does not open here (taken before this check existed) is
    /// replaced by the writer's, which does, at the same version.
    #[test]
    fn a_wrap_under_no_version_is_refused_and_a_copy_that_does_not_open_is_repaired() {
        let t = three();
        apply_keys(&t);
        let forged = relayed(&t, |r| {
            for w in r.info.as_mut().unwrap().keys.iter_mut() {
                if w.region == "us-east" {
                    w.key_version = 0;
                }
            }
        });
        assert!(matches!(
            t.target.apply(&forged),
            Err(ApplyError::Integrity)
        ));
        let mut poisoned = record_of(&t.events).record.unwrap();
        poisoned.info.as_mut().unwrap().mac = vec![9; 32];
        RecordMac::new(t.relay.index_key()).sign(&mut poisoned);
        t.target.store.commit(None, &poisoned, false).unwrap();
        assert!(
            t.target.get(&t.id).is_err(),
            "the poisoned copy does not open"
        );
        assert_eq!(
            t.target.apply(&record_of(&t.events)).unwrap(),
            Applied::Applied
        );
        assert!(t.target.get(&t.id).is_ok(), "the writer's copy repaired it");
    }

    /// The attack: the relay adds wraps for made-up regions to a user key. Each would
    /// be merged in as "a wrap this region lacked", growing every user key without
    /// bound; only regions of the deployment are taken, one each.
    #[test]
    fn a_relayed_user_key_cannot_grow_with_made_up_wraps() {
        let t = three();
        apply_keys(&t);
        t.target.apply(&record_of(&t.events)).unwrap();
        let mut event = t
            .events
            .iter()
            .find(|e| e.user_key.is_some())
            .unwrap()
            .clone();
        let key = event.user_key.as_mut().unwrap();
        let wrap = key.wraps[0].clone();
        for i in 0..3 {
            let mut extra = wrap.clone();
            extra.region = format!("zz-{i}");
            key.wraps.push(extra);
        }
        key.wraps.push(wrap);
        UserKeyMac::new(t.relay.index_key()).sign(key);
        assert_eq!(t.target.apply(&event).unwrap(), Applied::Skipped);
        let held = t.target.user_key(t.id.as_bytes()).unwrap().unwrap();
        assert_eq!(held.wraps.len(), 3);
        assert!(t.target.get(&t.id).is_ok());
    }
}
