//! Reads: authenticated record loads, lookups by email or phone (and whether a value
//! is taken), the API's view of a record, and the full-scan reads (digest, key usage).

use uuid::Uuid;

use super::{id_bytes, status_name, Credentials, KeyUsage, UserView, Users};
use crate::accounts::error::{Problem, UserError};
use crate::accounts::input::{normalize_email, normalize_phone};
use crate::common::metrics as m;
use crate::proto::{self, Status};
use crate::storage::store::{record_version, IndexField, StoreError};

impl Users {
    pub fn email_index(&self, normalised: &str) -> [u8; 32] {
        self.index.email(normalised)
    }

    /// Where account `id` stands for a refresh: active (with its
    /// `credentials_changed_ms`), no longer active, or not here (yet).
    pub fn credentials_of(&self, id: &Uuid) -> Result<Credentials, UserError> {
        Ok(match self.get_record(id)? {
            None => Credentials::NotHere,
            Some(r) if !r.tombstone && Status::try_from(r.status) == Ok(Status::Active) => {
                Credentials::Active(r.credentials_changed_ms)
            }
            Some(_) => Credentials::Inactive,
        })
    }

    /// Persists this node's master key wrap counts ([`crate::crypto::wraps`]) and
    /// exports them as `authsync_master_key_wraps{key}`.
    pub fn persist_wrap_counts(&self) -> Result<(), UserError> {
        let counts = crate::crypto::wraps::counts();
        let ops: Vec<crate::storage::store::KvOp> = counts
            .iter()
            .map(|(key, n)| crate::storage::store::KvOp::Put {
                cf: crate::storage::store::CF_META,
                key: [super::WRAPS_PREFIX, key.as_bytes()].concat(),
                value: n.to_be_bytes().to_vec(),
            })
            .collect();
        if !ops.is_empty() {
            self.store.write_kv(&ops)?;
        }
        // Every key this node wraps with has a series: X25519 keys stay at 0 (each of
        // their wraps seals under a one-time key of its own, so there is no bound).
        let keyring = self.keyring();
        let active = keyring
            .regions()
            .filter_map(|r| keyring.active_key(r).map(|k| k.key_id()));
        for key in active {
            let n = counts.get(&key).copied().unwrap_or(0);
            metrics::gauge!(crate::common::metrics::MASTER_KEY_WRAPS, "key" => key).set(n as f64);
        }
        for (key, n) in counts {
            metrics::gauge!(crate::common::metrics::MASTER_KEY_WRAPS, "key" => key).set(n as f64);
        }
        Ok(())
    }

    /// How many records and user keys here have this region's wrap under each of its
    /// master key versions: a full scan, for deciding whether an old version can be
    /// retired (`authsync keys retire`).
    pub fn key_usage(&self) -> Result<KeyUsage, UserError> {
        let mut usage = KeyUsage::default();
        let own_version = |wraps: &[proto::WrappedKey]| {
            wraps
                .iter()
                .find(|w| w.region == self.region)
                .map(|w| w.key_version)
        };
        let mut cursor = None;
        loop {
            let (batch, next) = self.store.scan_records(cursor, 1000)?;
            for r in &batch {
                if let Some(v) = r.info.as_ref().and_then(|e| own_version(&e.keys)) {
                    *usage.records.entry(v).or_default() += 1;
                }
            }
            match next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        let mut after = None;
        loop {
            let keys = self.store.scan_user_keys(after, 1000)?;
            for k in &keys {
                if let Some(v) = own_version(&k.wraps) {
                    *usage.user_keys.entry(v).or_default() += 1;
                }
            }
            match keys.last() {
                Some(last) => after = <[u8; 16]>::try_from(last.user_id.as_slice()).ok(),
                None => break,
            }
            if after.is_none() {
                break;
            }
        }
        Ok(usage)
    }

    /// The stored record, authenticated: corrupt or tampered bytes give the one
    /// generic [`UserError::Unreadable`] and count in the metric.
    pub(super) fn get_record(&self, id: &Uuid) -> Result<Option<proto::Record>, UserError> {
        let unreadable = || {
            metrics::counter!(m::RECORDS_UNREADABLE_TOTAL, "reason" => "integrity").increment(1);
            UserError::Unreadable
        };
        match self.store.get(&id_bytes(id)) {
            Ok(Some(record)) => {
                self.record_mac.verify(&record).map_err(|_| unreadable())?;
                Ok(Some(record))
            }
            Ok(None) => Ok(None),
            Err(StoreError::Corrupt { .. }) => Err(unreadable()),
            Err(other) => Err(UserError::Store(other)),
        }
    }

    /// The live record under `id`: tombstones are not found.
    fn load_live(&self, id: &Uuid) -> Result<proto::Record, UserError> {
        match self.get_record(id)? {
            Some(r) if !r.tombstone => Ok(r),
            _ => Err(UserError::NotFound),
        }
    }

    /// Like [`Users::load_live`], refusing merged accounts for changes.
    pub(super) fn load_changeable(&self, id: &Uuid) -> Result<proto::Record, UserError> {
        let r = self.load_live(id)?;
        if r.status == Status::Merged as i32 {
            let into = Uuid::from_slice(&r.merged_into).unwrap_or_default();
            return Err(UserError::Merged(into));
        }
        Ok(r)
    }

    /// Who holds an index value now, other than `except`.
    pub(super) fn taken(
        &self,
        field: IndexField,
        hash: &[u8],
        except: Option<&Uuid>,
    ) -> Result<bool, UserError> {
        Ok(match self.store.lookup(field, hash)? {
            Some(owner) => except.is_none_or(|e| *e.as_bytes() != owner),
            None => false,
        })
    }

    fn view(&self, record: &proto::Record) -> Result<UserView, UserError> {
        let info = self.open_info(record)?;
        Ok(UserView {
            id: Uuid::from_slice(&record.id).map_err(|_| UserError::Unreadable)?,
            email: info.email,
            phone: (!info.phone.is_empty()).then_some(info.phone),
            status: status_name(record.status),
            profile: info.profile,
            version: record_version(record),
            created_at_ms: record.created_at_ms,
            updated_at_ms: record.updated_at_ms,
            merged_into: Uuid::from_slice(&record.merged_into).ok(),
            email_verified: info.email_verified,
            phone_verified: info.phone_verified,
        })
    }

    pub fn get(&self, id: &Uuid) -> Result<UserView, UserError> {
        let record = self.load_live(id)?;
        self.view(&record)
    }

    /// The live account that holds a normalised email or phone.
    pub(super) fn find_record(
        &self,
        field: IndexField,
        hash: &[u8; 32],
    ) -> Result<Option<proto::Record>, UserError> {
        let Some(id) = self.store.lookup(field, hash)? else {
            return Ok(None);
        };
        let Some(record) = self.get_record(&Uuid::from_bytes(id))? else {
            return Ok(None);
        };
        let holds = match field {
            IndexField::Email => record.email_index.as_slice() == hash,
            IndexField::Phone => record.phone_index.as_slice() == hash,
        };
        // An index entry whose record no longer holds the value is stale or forged.
        if !holds || record.tombstone || record.status == Status::Merged as i32 {
            return Ok(None);
        }
        Ok(Some(record))
    }

    pub fn find_by_email(&self, raw: &str) -> Result<UserView, UserError> {
        let email =
            normalize_email(raw).map_err(|p| UserError::Invalid(vec![Problem::new("email", p)]))?;
        match self.find_record(IndexField::Email, &self.index.email(&email))? {
            Some(r) => self.view(&r),
            None => Err(UserError::NotFound),
        }
    }

    pub fn find_by_phone(&self, raw: &str) -> Result<UserView, UserError> {
        let phone =
            normalize_phone(raw).map_err(|p| UserError::Invalid(vec![Problem::new("phone", p)]))?;
        match self.find_record(IndexField::Phone, &self.index.phone(&phone))? {
            Some(r) => self.view(&r),
            None => Err(UserError::NotFound),
        }
    }

    pub fn digest(&self) -> Result<(u64, String), UserError> {
        let (count, digest) = self.store.digest()?;
        Ok((count, hex::encode(digest)))
    }
}

#[cfg(test)]
mod tests {
    use crate::accounts::error::UserError;
    use crate::accounts::users::testkit::{new_user, users};
    use crate::storage::store::CF_RECORDS;

    #[test]
    fn flipping_any_stored_byte_makes_the_read_fail_the_same_way() {
        let dir = tempfile::tempdir().unwrap();
        let users = users(dir.path());
        let (id, _) = users.create(new_user("ada@example.com")).unwrap();
        let key = *id.as_bytes();
        let original = users.store().raw_get(CF_RECORDS, &key).unwrap().unwrap();
        assert!(users.get(&id).is_ok());
        for i in 0..original.len() {
            for bit in [0x01u8, 0x80] {
                let mut bytes = original.clone();
                bytes[i] ^= bit;
                users.store().raw_put(CF_RECORDS, &key, &bytes).unwrap();
                match users.get(&id) {
                    Err(UserError::Unreadable) => {}
                    other => panic!("byte {i} bit {bit:#x}: expected Unreadable, got {other:?}"),
                }
            }
        }
        users.store().raw_put(CF_RECORDS, &key, &original).unwrap();
        assert_eq!(users.get(&id).unwrap().email, "ada@example.com");
    }

    #[test]
    fn a_swapped_index_entry_does_not_lead_to_another_account() {
        let dir = tempfile::tempdir().unwrap();
        let users = users(dir.path());
        let (a, _) = users.create(new_user("a@example.com")).unwrap();
        let mut b = new_user("b@example.com");
        b.phone = None;
        let (b, _) = users.create(b).unwrap();
        // Point a's email entry at b.
        let h = users.email_index("a@example.com");
        users
            .store()
            .raw_put(crate::storage::store::CF_EMAIL, &h, b.as_bytes())
            .unwrap();
        assert!(matches!(
            users.find_by_email("a@example.com"),
            Err(UserError::NotFound)
        ));
        assert_eq!(users.get(&a).unwrap().email, "a@example.com");
    }
}
