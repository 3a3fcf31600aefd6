//! Importing legacy accounts: each item creates an account or is merged into the one
//! that holds its email (or else its phone).

use uuid::Uuid;

use super::{ImportOutcome, ImportResult, Users, LOCK_RETRIES};
use crate::accounts::error::{Problem, UserError};
use crate::accounts::input::ImportItem;
use crate::common::metrics as m;
use crate::crypto::password::SaltPosition;
use crate::proto::{self, Status};
use crate::storage::store::IndexField;

impl Users {
    /// Imports legacy accounts in order. An item whose email (or else phone) belongs
    /// to an account already here is merged into it: missing profile fields are
    /// added (existing values win), the legacy hash joins `old_hashes` (unless the
    /// account has [`super::MAX_LEGACY_HASHES`] already: `legacy_hash_kept` is then
    /// false), a phone the account lacks is taken if free. Items are validated by the caller first.
    pub fn import(&self, items: Vec<ImportItem>) -> Result<Vec<ImportResult>, UserError> {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let r = self.import_one(item)?;
            metrics::counter!(
                m::IMPORT_ITEMS_TOTAL,
                "outcome" => match r.outcome { ImportOutcome::Created => "created", ImportOutcome::Merged => "merged" }
            )
            .increment(1);
            out.push(r);
        }
        Ok(out)
    }

    fn import_one(&self, item: ImportItem) -> Result<ImportResult, UserError> {
        let email_idx = self.index.email(&item.email);
        let phone_idx = item.phone.as_deref().map(|p| self.index.phone(p));
        let legacy = proto::LegacyHash {
            algorithm: item.legacy_hash.algorithm.clone(),
            hash: item.legacy_hash.hash.clone(),
            salt: item.legacy_hash.salt.clone().unwrap_or_default(),
            source: item.source.clone(),
            salt_suffix: item.legacy_hash.salt_position == SaltPosition::Suffix,
        };
        // The account to merge into is known only after a lookup, and its id must be
        // locked too: lock, look up, and retry if the answer moved meanwhile.
        let mut target: Option<[u8; 16]> = None;
        // The id a new account would get is locked with the rest: stripe locks are not
        // reentrant, so nothing may be locked a second time while these are held.
        let new_id = Uuid::new_v4();
        for _ in 0..LOCK_RETRIES {
            let mut keys: Vec<&[u8]> = vec![&email_idx, new_id.as_bytes()];
            if let Some(p) = &phone_idx {
                keys.push(p);
            }
            if let Some(t) = &target {
                keys.push(t);
            }
            let _locked = self.store.lock(&keys);
            let by_email = self.find_record(IndexField::Email, &email_idx)?;
            let by_phone = match (&by_email, &phone_idx) {
                (None, Some(p)) => self.find_record(IndexField::Phone, p)?,
                _ => None,
            };
            let existing = by_email.or(by_phone);
            let existing_id = existing
                .as_ref()
                .and_then(|r| <[u8; 16]>::try_from(r.id.as_slice()).ok());
            if existing_id != target {
                target = existing_id;
                continue;
            }
            return match existing {
                None => {
                    let id = new_id;
                    let record = proto::Record {
                        id: id.as_bytes().to_vec(),
                        status: Status::Active as i32,
                        email_index: email_idx.to_vec(),
                        phone_index: phone_idx.map(|p| p.to_vec()).unwrap_or_default(),
                        ..Default::default()
                    };
                    let info = proto::Info {
                        email: item.email,
                        phone: item.phone.unwrap_or_default(),
                        profile: item.profile,
                        old_hashes: vec![legacy],
                        ..Default::default()
                    };
                    self.commit(None, record, &info, "import")?;
                    Ok(ImportResult {
                        id,
                        outcome: ImportOutcome::Created,
                        legacy_hash_kept: true,
                    })
                }
                Some(previous) => {
                    let id = Uuid::from_slice(&previous.id).map_err(|_| UserError::Unreadable)?;
                    let (mut info, key) = self.opened(&previous)?;
                    let mut record = previous.clone();
                    for (k, v) in item.profile {
                        info.profile.entry(k).or_insert(v);
                    }
                    let legacy_hash_kept = super::add_legacy_hash(&mut info, legacy);
                    if info.email != item.email && !info.other_emails.contains(&item.email) {
                        info.other_emails.push(item.email);
                    }
                    if let (Some(phone), Some(h)) = (item.phone, phone_idx) {
                        if info.phone.is_empty() && !self.taken(IndexField::Phone, &h, Some(&id))? {
                            info.phone = phone;
                            record.phone_index = h.to_vec();
                        } else if info.phone != phone && !info.other_phones.contains(&phone) {
                            info.other_phones.push(phone);
                        }
                    }
                    self.commit(Some((&previous, &key)), record, &info, "import_merge")?;
                    Ok(ImportResult {
                        id,
                        outcome: ImportOutcome::Merged,
                        legacy_hash_kept,
                    })
                }
            };
        }
        Err(UserError::Conflict(vec![Problem::new(
            "email",
            "changed concurrently during import; retry",
        )]))
    }
}

#[cfg(test)]
mod tests {
    use crate::accounts::input;
    use crate::accounts::users::testkit::users;
    use crate::accounts::users::ImportOutcome;

    fn items(email: &str) -> Vec<crate::accounts::input::ImportItem> {
        // MD5 of "correct horse battery", as a legacy shop stored it.
        let body = serde_json::json!([{"email": email, "source": "legacy-shop",
            "legacy_hash": {"algorithm": "md5", "hash": "88e4ddd2402d92d50e1879d6ecd9ffd4"}}]);
        input::import(&body, 10).unwrap()
    }

    #[test]
    fn an_imported_account_logs_in_with_its_old_password_and_a_second_import_merges() {
        let dir = tempfile::tempdir().unwrap();
        let u = users(dir.path());
        let first = u.import(items("grace@example.com")).unwrap();
        assert_eq!(first[0].outcome, ImportOutcome::Created);
        let again = u.import(items("Grace@Example.com")).unwrap();
        assert_eq!(again[0].outcome, ImportOutcome::Merged);
        assert_eq!(again[0].id, first[0].id, "merged into the same account");
        assert_eq!(
            u.login("grace@example.com", "correct horse battery")
                .unwrap(),
            first[0].id
        );
        // The legacy hash was replaced by a current one: the password still works.
        assert_eq!(
            u.login("grace@example.com", "correct horse battery")
                .unwrap(),
            first[0].id
        );
        assert!(u.login("grace@example.com", "wrong password!").is_err());
    }
}
