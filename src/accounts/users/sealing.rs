//! Sealing and opening: the regions a data key is wrapped for, sealing a record's
//! personal data under its account's key, and opening records and user keys.

use uuid::Uuid;

use super::{Users, SHORT_WRAPS_REMEMBERED};
use crate::accounts::error::UserError;
use crate::common::metrics as m;
use crate::crypto::envelope::{self, UserSecret};
use crate::crypto::keyring::Keyring;
use crate::crypto::primitives::CryptoError;
use crate::proto;
use crate::storage::store::StoreError;

impl Users {
    /// The regions a new data key is wrapped for: every region whose key service
    /// answers. Sealing needs this region's own key: without it nothing written here
    /// could be read here.
    pub(super) fn wrap_regions(&self, keyring: &Keyring) -> Result<Vec<String>, UserError> {
        self.own_key_available()?;
        Ok(keyring
            .regions()
            .filter(|r| self.faults.key_available(r))
            .map(str::to_string)
            .collect())
    }

    /// Seals `info` into `record` for `regions` (those whose key service answers,
    /// from [`Users::wrap_regions`]) under `user`'s key, and remembers the record for
    /// key recovery when that is not all of the keyring's regions.
    pub(super) fn seal(
        &self,
        record: &mut proto::Record,
        info: &proto::Info,
        keyring: &Keyring,
        regions: &[String],
        user: &UserSecret,
    ) -> Result<(), UserError> {
        envelope::seal(record, info, keyring, regions, user).map_err(UserError::Crypto)?;
        if regions.len() < keyring.regions().count() {
            if let Ok(id) = Uuid::from_slice(&record.id) {
                let mut short = self.short_wraps.lock();
                if short.len() < SHORT_WRAPS_REMEMBERED {
                    short.insert(id);
                }
            }
        }
        Ok(())
    }

    pub(super) fn own_key_available(&self) -> Result<(), UserError> {
        if self.faults.key_available(&self.region) {
            Ok(())
        } else {
            Err(UserError::KeyUnavailable(self.region.clone()))
        }
    }

    /// The stored user key of account `id`, authenticated.
    pub(super) fn user_key(&self, id: &[u8]) -> Result<Option<proto::UserKey>, UserError> {
        let Ok(id) = <[u8; 16]>::try_from(id) else {
            return Err(UserError::Unreadable);
        };
        let unreadable = || {
            metrics::counter!(m::RECORDS_UNREADABLE_TOTAL, "reason" => "integrity").increment(1);
            UserError::Unreadable
        };
        match self.store.get_user_key(&id) {
            Ok(Some(key)) => {
                self.user_key_mac.verify(&key).map_err(|_| unreadable())?;
                if key.user_id != id {
                    return Err(unreadable());
                }
                Ok(Some(key))
            }
            Ok(None) => Ok(None),
            Err(StoreError::Corrupt { .. }) => Err(unreadable()),
            Err(other) => Err(UserError::Store(other)),
        }
    }

    /// The opened key of the account `record` belongs to. Not here yet (its user key
    /// travels on its own topic and may arrive after the record) is a key not yet
    /// available, like a wrap not yet repaired.
    /// A record sealed under another key than the one held fails in
    /// [`envelope::open`], which checks the key id the envelope names.
    fn user_secret(
        &self,
        record: &proto::Record,
        keyring: &Keyring,
    ) -> Result<UserSecret, UserError> {
        let Some(key) = self.user_key(&record.id)? else {
            metrics::counter!(m::RECORDS_UNREADABLE_TOTAL, "reason" => "no_user_key").increment(1);
            return Err(UserError::KeyUnavailable(self.region.clone()));
        };
        envelope::open_user_key(&key, keyring).map_err(|e| self.crypto_failure(e))
    }

    /// Counts a failed open by reason and maps it to what callers are told.
    fn crypto_failure(&self, e: CryptoError) -> UserError {
        let reason = match &e {
            CryptoError::Integrity => "integrity",
            CryptoError::NoKeyForRegion(_) => "no_key",
            CryptoError::UnknownMasterKey(_) => "unknown_key",
            _ => "other",
        };
        metrics::counter!(m::RECORDS_UNREADABLE_TOTAL, "reason" => reason).increment(1);
        match e {
            CryptoError::NoKeyForRegion(r) | CryptoError::UnknownMasterKey(r) => {
                UserError::KeyUnavailable(r)
            }
            CryptoError::Integrity => UserError::Unreadable,
            other => UserError::Crypto(other),
        }
    }

    pub(super) fn open_info(&self, record: &proto::Record) -> Result<proto::Info, UserError> {
        Ok(self.opened(record)?.0)
    }

    /// The record's `Info`, and its account's key for sealing the change that follows:
    /// the key is read and unwrapped once per change.
    pub(super) fn opened(
        &self,
        record: &proto::Record,
    ) -> Result<(proto::Info, UserSecret), UserError> {
        self.own_key_available()?;
        let keyring = self.keyring();
        let user = self.user_secret(record, &keyring)?;
        let info = envelope::open(record, &keyring, &user).map_err(|e| self.crypto_failure(e))?;
        Ok((info, user))
    }
}

#[cfg(test)]
mod tests {
    use crate::accounts::error::UserError;
    use crate::accounts::users::testkit::{new_user, users};
    use crate::common::faults::FaultState;

    #[test]
    fn without_its_master_key_a_region_reads_nothing_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let u = users(dir.path());
        let (id, _) = u.create(new_user("ada@example.com")).unwrap();
        assert_eq!(u.get(&id).unwrap().profile["given_name"], "Ada");
        u.faults().set(FaultState {
            keys_unavailable: Some(["af-south".to_string()].into()),
            ..Default::default()
        });
        assert!(matches!(u.get(&id), Err(UserError::KeyUnavailable(_))));
        u.faults().set(FaultState {
            keys_unavailable: Some(Default::default()),
            ..Default::default()
        });
        assert_eq!(u.get(&id).unwrap().email, "ada@example.com");
    }
}
