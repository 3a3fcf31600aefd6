//! Erasing accounts (crypto-shredding): a tombstone in place of the record and its
//! user key gone in one batch, cascading to the accounts merged into it.

use std::collections::BTreeSet;

use uuid::Uuid;

use super::Users;
use crate::accounts::error::UserError;
use crate::common::hlc::Version;
use crate::proto;
use crate::storage::store::record_version;

impl Users {
    /// Whether `id` names an erased account (a tombstone here). An id not seen here
    /// yet is not erased.
    pub fn is_erased(&self, id: &Uuid) -> bool {
        matches!(self.store.get(id.as_bytes()), Ok(Some(r)) if r.tombstone)
    }

    /// Erases the account: a tombstone (id and version only) in place of the record,
    /// its index entries and its user key gone in the same batch, so that no earlier
    /// copy can be decrypted again (crypto-shredding). Accounts merged into it are the
    /// same person's and are erased with it, each with its own tombstone. Erasing an
    /// erased account again finishes what an interrupted erase left of those, and
    /// answers [`UserError::NotFound`].
    pub fn delete(&self, id: &Uuid) -> Result<Version, UserError> {
        let version = match self.erase_one(id) {
            Ok(v) => Some(v),
            Err(UserError::NotFound) if self.is_erased(id) => None,
            Err(e) => return Err(e),
        };
        let mut pending = self.store.merged_into(id.as_bytes())?;
        let mut seen = BTreeSet::from([*id]);
        while let Some(merged) = pending.pop() {
            let merged = Uuid::from_bytes(merged);
            if !seen.insert(merged) {
                continue;
            }
            match self.erase_one(&merged) {
                Ok(_) | Err(UserError::NotFound) => {}
                Err(e) => return Err(e),
            }
            pending.extend(self.store.merged_into(merged.as_bytes())?);
        }
        version.ok_or(UserError::NotFound)
    }

    fn erase_one(&self, id: &Uuid) -> Result<Version, UserError> {
        let _locked = self.store.lock(&[id.as_bytes()]);
        let previous = match self.get_record(id)? {
            Some(r) if !r.tombstone => r,
            _ => return Err(UserError::NotFound),
        };
        let version = self.hlc.tick_after(Some(&record_version(&previous)));
        let mut tombstone = proto::Record {
            id: id.as_bytes().to_vec(),
            version: Some(version.to_proto()),
            tombstone: true,
            ..Default::default()
        };
        self.commit_sealed(Some(&previous), &mut tombstone, "delete")?;
        Ok(version)
    }
}

#[cfg(test)]
mod tests {
    use crate::accounts::error::{Applied, UserError};
    use crate::accounts::input;
    use crate::accounts::users::testkit::{drain, key_event, new_user, record_event, two_regions};
    use crate::crypto::envelope;
    use crate::storage::store::record_version;

    #[test]
    fn an_erase_destroys_the_accounts_key_in_every_region_and_old_copies_stay_ciphertext() {
        let (_dirs, a, b) = two_regions();
        let (id, _) = a.create(new_user("erase@example.com")).unwrap();
        let created = drain(&a);
        for event in &created {
            assert_eq!(b.apply(event).unwrap(), Applied::Applied);
        }
        assert_eq!(b.get(&id).unwrap().email, "erase@example.com");
        let old_copy = record_event(&created).record.unwrap();

        a.delete(&id).unwrap();
        assert!(a.store().get_user_key(id.as_bytes()).unwrap().is_none());
        let erased = drain(&a);
        let tombstone = record_event(&erased);
        assert!(tombstone.record.as_ref().unwrap().tombstone);
        assert!(
            erased.iter().any(|e| e.erased_user == id.as_bytes()),
            "a null for the key topic"
        );
        // The peer destroys its copy of the key when the tombstone arrives, and
        // publishes the null on its own key topic too.
        assert_eq!(b.apply(&tombstone).unwrap(), Applied::Applied);
        assert!(b.store().get_user_key(id.as_bytes()).unwrap().is_none());
        assert!(drain(&b).iter().any(|e| e.erased_user == id.as_bytes()));
        // A key event arriving late (a replay, a re-wrap in flight) does not undo it.
        assert_eq!(b.apply(&key_event(&created)).unwrap(), Applied::Skipped);
        assert!(b.store().get_user_key(id.as_bytes()).unwrap().is_none());
        // What remains: the id, the version and the tombstone flag, nothing sealed.
        let stored = b.store().get(id.as_bytes()).unwrap().unwrap();
        assert!(stored.tombstone && stored.info.is_none() && stored.secret.is_empty());
        assert!(stored.email_index.is_empty() && stored.phone_index.is_empty());
        assert!(matches!(
            b.find_by_email("erase@example.com"),
            Err(UserError::NotFound)
        ));
        // A copy from before the erase (an old SST, a backup, a Kafka message), put
        // back in place, holds a data key this region's master key still opens, but
        // not the user key the encryption key also needs: it stays ciphertext.
        for region in [&a, &b] {
            region
                .store()
                .raw_put(
                    crate::storage::store::CF_RECORDS,
                    id.as_bytes(),
                    &prost::Message::encode_to_vec(&old_copy),
                )
                .unwrap();
            assert!(matches!(region.get(&id), Err(UserError::KeyUnavailable(_))));
            assert!(envelope::rewrap(&mut old_copy.clone(), &region.keyring(), &[]).is_ok());
        }
    }

    #[test]
    fn an_erase_wins_over_a_concurrent_later_change_in_every_region() {
        let (_dirs, a, b) = two_regions();
        let (id, _) = a.create(new_user("both@example.com")).unwrap();
        for event in drain(&a) {
            b.apply(&event).unwrap();
        }
        // Erased in af-south; changed in eu-west after it, before the erase arrives.
        a.delete(&id).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let patch = input::user_patch(&serde_json::json!({"profile": {"city": "Lagos"}})).unwrap();
        let changed = b.update(&id, patch).unwrap();
        let erase = record_event(&drain(&a));
        let change = record_event(&drain(&b));
        assert!(record_version(change.record.as_ref().unwrap()) == changed);
        assert!(changed > record_version(erase.record.as_ref().unwrap()));
        assert_eq!(a.apply(&change).unwrap(), Applied::Skipped);
        assert_eq!(b.apply(&erase).unwrap(), Applied::Applied);
        for region in [&a, &b] {
            assert!(matches!(region.get(&id), Err(UserError::NotFound)));
            assert!(region
                .store()
                .get_user_key(id.as_bytes())
                .unwrap()
                .is_none());
        }
        assert_eq!(a.digest().unwrap(), b.digest().unwrap());
    }

    #[test]
    fn erasing_an_account_erases_the_accounts_merged_into_it_in_every_region() {
        let (_dirs, a, b) = two_regions();
        // The same person signs up in both regions before either hears of the other.
        let (first, _) = a.create(new_user("twice@example.com")).unwrap();
        let (second, _) = b.create(new_user("twice@example.com")).unwrap();
        for event in drain(&b) {
            a.apply(&event).unwrap();
        }
        for event in drain(&a) {
            b.apply(&event).unwrap();
        }
        let winner = a.find_by_email("twice@example.com").unwrap().id;
        let loser = if winner == first { second } else { first };
        assert_eq!(a.get(&loser).unwrap().merged_into, Some(winner));
        assert_eq!(
            a.store().merged_into(winner.as_bytes()).unwrap(),
            vec![*loser.as_bytes()]
        );

        a.delete(&winner).unwrap();
        // As the consumers see them: the erases' nulls for the key topic are skipped.
        for event in drain(&a).iter().filter(|e| e.erased_user.is_empty()) {
            b.apply(event).unwrap();
        }
        for region in [&a, &b] {
            for id in [winner, loser] {
                assert!(matches!(region.get(&id), Err(UserError::NotFound)));
                assert!(region
                    .store()
                    .get_user_key(id.as_bytes())
                    .unwrap()
                    .is_none());
            }
            assert!(region
                .store()
                .merged_into(winner.as_bytes())
                .unwrap()
                .is_empty());
        }
        assert!(matches!(a.delete(&winner), Err(UserError::NotFound)));
    }
}
