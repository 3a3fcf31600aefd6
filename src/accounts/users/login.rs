//! Login behind the per-account lockout, with legacy hashes and the rehash a login
//! triggers, and the sweep of login-failure entries.

use std::time::Instant;

use uuid::Uuid;

use super::{Users, CURRENT_HASH};
use crate::accounts::error::UserError;
use crate::accounts::input::{normalize_email, normalize_phone};
use crate::common::metrics as m;
use crate::crypto::password::{self, SaltPosition, Verified};
use crate::proto::{self, Status};
use crate::storage::store::IndexField;

impl Users {
    /// The login-failure sweep ([`crate::accounts::lockout::Lockout::sweep`]) at this node's
    /// time: subjects idle everywhere, and erased accounts.
    pub fn sweep_login_failures(&self) -> Result<usize, UserError> {
        self.lockout.sweep(self.clock_now_ms(), |subject| {
            Uuid::from_slice(subject).is_ok_and(|id| self.is_erased(&id))
        })
    }

    fn verify_password(&self, password: &str, phc: &str) -> Verified {
        let started = Instant::now();
        let v = self.passwords.verify(password, phc);
        metrics::histogram!(m::PASSWORD_HASH_DURATION_SECONDS)
            .record(started.elapsed().as_secs_f64());
        v
    }

    /// Checks a login (email or phone) and password. Unknown logins and wrong
    /// passwords give the same error after the same hashing work; a correct password
    /// on a locked or disabled account is refused as such.
    ///
    /// It runs behind the per-account brute-force backoff ([`crate::accounts::lockout`]):
    /// too soon after repeated failures it is refused with
    /// [`UserError::TooManyAttempts`] before any hashing; a wrong password is counted
    /// and answered with [`UserError::LoginFailed`], saying how long the next attempt
    /// must wait. Unknown logins go through the same steps.
    pub fn login(&self, login: &str, password: &str) -> Result<Uuid, UserError> {
        let result = self.login_guarded(login, password);
        let outcome = match &result {
            Ok(_) => "success",
            Err(UserError::LoginFailed { .. }) => "invalid_credentials",
            Err(UserError::Forbidden(_)) => "forbidden",
            Err(UserError::TooManyAttempts { .. }) => "locked_out",
            Err(_) => "error",
        };
        metrics::counter!(m::LOGINS_TOTAL, "outcome" => outcome).increment(1);
        result
    }

    fn login_guarded(&self, login: &str, password: &str) -> Result<Uuid, UserError> {
        let (record, subject) = if login.contains('@') {
            match normalize_email(login) {
                Ok(e) => {
                    let hash = self.index.email(&e);
                    (self.find_record(IndexField::Email, &hash)?, hash)
                }
                Err(_) => (None, self.index.email(&login.trim().to_lowercase())),
            }
        } else {
            match normalize_phone(login) {
                Ok(p) => {
                    let hash = self.index.phone(&p);
                    (self.find_record(IndexField::Phone, &hash)?, hash)
                }
                Err(_) => (None, self.index.phone(login.trim())),
            }
        };
        // An account is one subject whichever login names it.
        let subject: Vec<u8> = match &record {
            Some(r) => r.id.clone(),
            None => subject.to_vec(),
        };
        let now = self.clock_now_ms();
        let standing = self.lockout.standing_of(&subject, now)?;
        let retry_after_ms = standing.retry_after_ms(now);
        if retry_after_ms > 0 {
            return Err(UserError::TooManyAttempts { retry_after_ms });
        }
        match self.login_inner(record, password) {
            Err(UserError::InvalidCredentials) => {
                let standing = self.lockout.failed(&subject, now)?;
                if standing.failures == crate::accounts::lockout::FREE_FAILURES {
                    metrics::counter!(m::LOGIN_LOCKOUTS_TOTAL).increment(1);
                }
                Err(UserError::LoginFailed {
                    retry_after_ms: standing.retry_after_ms(now),
                })
            }
            // The right password: the count starts again.
            result @ (Ok(_) | Err(UserError::Forbidden(_))) => {
                self.lockout.succeeded(&subject, now, &standing)?;
                result
            }
            other => other,
        }
    }

    fn login_inner(
        &self,
        record: Option<proto::Record>,
        password: &str,
    ) -> Result<Uuid, UserError> {
        let Some(record) = record else {
            self.passwords.verify_dummy(password);
            return Err(UserError::InvalidCredentials);
        };
        let id = Uuid::from_slice(&record.id).map_err(|_| UserError::Unreadable)?;
        let status_refusal = |r: &proto::Record| match Status::try_from(r.status) {
            Ok(Status::Active) => None,
            Ok(Status::Locked) => Some(UserError::Forbidden("locked")),
            Ok(Status::Disabled) => Some(UserError::Forbidden("disabled")),
            _ => Some(UserError::InvalidCredentials),
        };
        if !record.secret.is_empty() {
            match self.verify_password(password, &record.secret) {
                Verified::Yes => return status_refusal(&record).map_or(Ok(id), Err),
                Verified::YesRehash => {
                    if let Some(e) = status_refusal(&record) {
                        return Err(e);
                    }
                    if let Err(e) = self.upgrade_password(&id, &record, password, None) {
                        tracing::warn!(error = %e, "store rehashed password after login");
                    }
                    return Ok(id);
                }
                Verified::No => {}
            }
        }
        // Legacy hashes imported from older systems. A record that cannot be opened
        // answers like a wrong password, after the same work.
        let info = match self.open_info(&record) {
            Ok(i) => i,
            Err(_) => {
                if record.secret.is_empty() {
                    self.passwords.verify_dummy(password);
                }
                return Err(UserError::InvalidCredentials);
            }
        };
        let matched = info.old_hashes.iter().position(|h| {
            let position = if h.salt_suffix {
                SaltPosition::Suffix
            } else {
                SaltPosition::Prefix
            };
            if h.algorithm == CURRENT_HASH {
                return self.verify_password(password, &h.hash) != Verified::No;
            }
            let salt = (!h.salt.is_empty()).then_some(h.salt.as_str());
            self.passwords.with_hash_slot(|| {
                password::verify_legacy(&h.algorithm, &h.hash, salt, position, password)
            })
        });
        let Some(matched) = matched else {
            if record.secret.is_empty() {
                // Same Argon2 work as a known account with a wrong password.
                self.passwords.verify_dummy(password);
            }
            return Err(UserError::InvalidCredentials);
        };
        if let Some(e) = status_refusal(&record) {
            return Err(e);
        }
        if info.old_hashes[matched].algorithm != CURRENT_HASH {
            // The password is right whatever happens to the upgrade; it is tried
            // again on the next login.
            if let Err(e) = self.upgrade_password(&id, &record, password, Some(matched)) {
                tracing::warn!(error = %e, "store upgraded password hash after login");
            }
        }
        Ok(id)
    }

    /// Stores a current hash of a password just verified against an older one. With
    /// `legacy` (the index of the legacy hash that matched) that hash is removed: it
    /// becomes the account's password hash when the account had none, or else a
    /// current hash kept beside it (merged accounts keep every member's password).
    /// Without, the account's own outdated hash is replaced.
    fn upgrade_password(
        &self,
        id: &Uuid,
        seen: &proto::Record,
        password: &str,
        legacy: Option<usize>,
    ) -> Result<(), UserError> {
        let secret = self.hash_password(password)?;
        let _locked = self.store.lock(&[id.as_bytes()]);
        let previous = self.load_changeable(id)?;
        if previous.version != seen.version {
            // Changed meanwhile (a password change, say): that change stands.
            return Ok(());
        }
        let (mut info, key) = self.opened(&previous)?;
        let mut record = previous.clone();
        match legacy {
            Some(i) if i < info.old_hashes.len() => {
                info.old_hashes.remove(i);
                if record.secret.is_empty() {
                    record.secret = secret;
                } else {
                    info.old_hashes.push(proto::LegacyHash {
                        algorithm: CURRENT_HASH.into(),
                        hash: secret,
                        source: "upgraded".into(),
                        ..Default::default()
                    });
                }
            }
            Some(_) => return Ok(()),
            None => record.secret = secret,
        }
        self.commit(Some((&previous, &key)), record, &info, "password_upgrade")?;
        metrics::counter!(m::PASSWORD_UPGRADES_TOTAL).increment(1);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::accounts::error::UserError;
    use crate::accounts::input::SettableStatus;
    use crate::accounts::users::testkit::{new_user, users};

    #[test]
    fn a_good_password_logs_in_and_a_wrong_one_fails_like_an_unknown_login() {
        let dir = tempfile::tempdir().unwrap();
        let u = users(dir.path());
        let (id, _) = u.create(new_user("ada@example.com")).unwrap();
        assert_eq!(
            u.login("ada@example.com", "correct horse battery").unwrap(),
            id
        );
        let wrong = u.login("ada@example.com", "not the password").unwrap_err();
        let unknown = u
            .login("nobody@example.com", "correct horse battery")
            .unwrap_err();
        assert!(matches!(wrong, UserError::LoginFailed { .. }), "{wrong:?}");
        assert_eq!(
            std::mem::discriminant(&wrong),
            std::mem::discriminant(&unknown),
            "an unknown login must not be told apart: {unknown:?}"
        );
    }

    #[test]
    fn a_locked_account_is_refused_even_with_its_password() {
        let dir = tempfile::tempdir().unwrap();
        let u = users(dir.path());
        let (id, _) = u.create(new_user("ada@example.com")).unwrap();
        u.set_status(&id, SettableStatus::Locked).unwrap();
        let e = u
            .login("ada@example.com", "correct horse battery")
            .unwrap_err();
        assert!(matches!(e, UserError::Forbidden("locked")), "{e:?}");
        u.set_status(&id, SettableStatus::Active).unwrap();
        assert_eq!(
            u.login("ada@example.com", "correct horse battery").unwrap(),
            id
        );
    }
}
