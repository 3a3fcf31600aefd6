//! Local changes to an account: create, update, set_password and set_status, and the
//! timed password hashing they share with login's rehash.

use std::time::Instant;

use uuid::Uuid;

use super::Users;
use crate::accounts::error::{Problem, UserError};
use crate::accounts::input::{Change, NewUser, SettableStatus, UserPatch};
use crate::common::hlc::Version;
use crate::common::metrics as m;
use crate::proto::{self, Status};
use crate::storage::store::IndexField;

impl Users {
    pub(super) fn hash_password(&self, password: &str) -> Result<String, UserError> {
        let started = Instant::now();
        let h = self.passwords.hash(password)?;
        metrics::histogram!(m::PASSWORD_HASH_DURATION_SECONDS)
            .record(started.elapsed().as_secs_f64());
        Ok(h)
    }

    pub fn create(&self, input: NewUser) -> Result<(Uuid, Version), UserError> {
        let secret = self.hash_password(&input.password)?;
        let email_idx = self.index.email(&input.email);
        let phone_idx = input.phone.as_deref().map(|p| self.index.phone(p));
        let id = Uuid::new_v4();
        let mut keys: Vec<&[u8]> = vec![id.as_bytes(), &email_idx];
        if let Some(p) = &phone_idx {
            keys.push(p);
        }
        let _locked = self.store.lock(&keys);
        let mut conflicts = Vec::new();
        if self.taken(IndexField::Email, &email_idx, None)? {
            conflicts.push(Problem::new("email", "is already taken"));
        }
        if let Some(p) = &phone_idx {
            if self.taken(IndexField::Phone, p, None)? {
                conflicts.push(Problem::new("phone", "is already taken"));
            }
        }
        if !conflicts.is_empty() {
            return Err(UserError::Conflict(conflicts));
        }
        let record = proto::Record {
            id: id.as_bytes().to_vec(),
            status: Status::Active as i32,
            email_index: email_idx.to_vec(),
            phone_index: phone_idx.map(|p| p.to_vec()).unwrap_or_default(),
            secret,
            ..Default::default()
        };
        let info = proto::Info {
            email: input.email,
            phone: input.phone.unwrap_or_default(),
            profile: input.profile,
            ..Default::default()
        };
        let version = self.commit(None, record, &info, "create")?;
        Ok((id, version))
    }

    pub fn update(&self, id: &Uuid, patch: UserPatch) -> Result<Version, UserError> {
        let email_idx = patch.email.as_deref().map(|e| self.index.email(e));
        let phone_idx = match &patch.phone {
            Change::Set(p) => Some(self.index.phone(p)),
            _ => None,
        };
        let mut keys: Vec<&[u8]> = vec![id.as_bytes()];
        keys.extend(email_idx.iter().map(|h| h.as_slice()));
        keys.extend(phone_idx.iter().map(|h| h.as_slice()));
        let _locked = self.store.lock(&keys);
        let previous = self.load_changeable(id)?;
        let (mut info, key) = self.opened(&previous)?;
        let mut conflicts = Vec::new();
        if let Some(h) = &email_idx {
            if self.taken(IndexField::Email, h, Some(id))? {
                conflicts.push(Problem::new("email", "is already taken"));
            }
        }
        if let Some(h) = &phone_idx {
            if self.taken(IndexField::Phone, h, Some(id))? {
                conflicts.push(Problem::new("phone", "is already taken"));
            }
        }
        if !conflicts.is_empty() {
            return Err(UserError::Conflict(conflicts));
        }
        let mut record = previous.clone();
        if let (Some(email), Some(h)) = (patch.email, email_idx) {
            // A new address is not proven by what proved the old one.
            if record.email_index != h {
                info.email_verified = false;
            }
            info.email = email;
            record.email_index = h.to_vec();
        }
        match patch.phone {
            Change::Keep => {}
            Change::Clear => {
                info.phone.clear();
                info.phone_verified = false;
                record.phone_index.clear();
            }
            Change::Set(p) => {
                if phone_idx.is_some_and(|h| record.phone_index != h) {
                    info.phone_verified = false;
                }
                info.phone = p;
                record.phone_index = phone_idx.expect("hashed above").to_vec();
            }
        }
        for (k, v) in patch.profile {
            match v {
                Some(v) => info.profile.insert(k, v),
                None => info.profile.remove(&k),
            };
        }
        self.commit(Some((&previous, &key)), record, &info, "update")
    }

    /// Sets a new password (an operator's reset, or the user's change): imported hashes
    /// go, every session ends, and the account's failed-login streak is cleared, in
    /// every region.
    pub fn set_password(&self, id: &Uuid, password: &str) -> Result<Version, UserError> {
        let version = self.set_password_locked(id, password)?;
        self.clear_failures(id)?;
        Ok(version)
    }

    /// Clears account `id`'s failed-login streak, in every region (nothing is written
    /// when there is none). Called with no stripe lock held.
    fn clear_failures(&self, id: &Uuid) -> Result<(), UserError> {
        let now = self.clock_now_ms();
        let standing = self.lockout.standing_of(id.as_bytes(), now)?;
        self.lockout.succeeded(id.as_bytes(), now, &standing)
    }

    fn set_password_locked(&self, id: &Uuid, password: &str) -> Result<Version, UserError> {
        let secret = self.hash_password(password)?;
        let _locked = self.store.lock(&[id.as_bytes()]);
        let previous = self.load_changeable(id)?;
        let (mut info, key) = self.opened(&previous)?;
        if !info.email.is_empty() && password.to_lowercase() == info.email.to_lowercase() {
            return Err(UserError::Invalid(vec![Problem::new(
                "password",
                "must not be the email address",
            )]));
        }
        // A new password supersedes every imported one.
        info.old_hashes.clear();
        let mut record = previous.clone();
        record.secret = secret;
        self.credentials_changed(&mut record);
        self.commit(Some((&previous, &key)), record, &info, "password")
    }

    /// Sets an account's status; making it active again also clears its failed-login
    /// streak (an operator's unlock).
    pub fn set_status(&self, id: &Uuid, status: SettableStatus) -> Result<Version, UserError> {
        let version = self.set_status_locked(id, status)?;
        if status == SettableStatus::Active {
            self.clear_failures(id)?;
        }
        Ok(version)
    }

    fn set_status_locked(&self, id: &Uuid, status: SettableStatus) -> Result<Version, UserError> {
        let _locked = self.store.lock(&[id.as_bytes()]);
        let previous = self.load_changeable(id)?;
        let (info, key) = self.opened(&previous)?;
        let mut record = previous.clone();
        record.status = match status {
            SettableStatus::Active => Status::Active,
            SettableStatus::Locked => Status::Locked,
            SettableStatus::Disabled => Status::Disabled,
        } as i32;
        if record.status != previous.status {
            self.credentials_changed(&mut record);
        }
        self.commit(Some((&previous, &key)), record, &info, "status")
    }

    /// Marks `record`'s credentials as changed now: every refresh token family issued
    /// before is refused from here on, in every region the record reaches.
    pub(super) fn credentials_changed(&self, record: &mut proto::Record) {
        record.credentials_changed_ms = self
            .clock_now_ms()
            .max(record.credentials_changed_ms.saturating_add(1));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::accounts::users::testkit::{new_user, users};

    #[test]
    fn concurrent_creates_with_one_email_give_one_account() {
        let dir = tempfile::tempdir().unwrap();
        let users = Arc::new(users(dir.path()));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let u = users.clone();
                std::thread::spawn(move || {
                    let mut n = new_user("same@example.com");
                    n.phone = None;
                    u.create(n).is_ok()
                })
            })
            .collect();
        let created = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|ok| *ok)
            .count();
        assert_eq!(created, 1);
        assert_eq!(users.digest().unwrap().0, 1);
    }
}
