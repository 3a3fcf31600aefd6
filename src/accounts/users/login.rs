//! Login behind the per-account lockout, with legacy hashes and the rehash a login
//! triggers, and the sweep of login-failure entries.

use std::time::Duration;

use uuid::Uuid;

use super::factors::SecondFactor;
use super::{Users, CURRENT_HASH};
use crate::accounts::error::UserError;
use crate::accounts::input::{normalize_email, normalize_phone};
use crate::common::metrics as m;
use crate::crypto::password::{self, SaltPosition, Slot, Verified};
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

    /// Checks a login (email or phone) and password. Unknown logins and wrong
    /// passwords give the same error after the same hashing work; a correct password
    /// on a locked or disabled account is refused as such.
    ///
    /// It runs behind the per-account brute-force backoff ([`crate::accounts::lockout`]):
    /// too soon after repeated failures it is refused with
    /// [`UserError::TooManyAttempts`] before any hashing; a wrong password is counted
    /// and answered with [`UserError::LoginFailed`], saying how long the next attempt
    /// must wait. Unknown logins go through the same steps.
    ///
    /// An account with a second factor ([`super::factors`]) also needs `factor`.
    pub fn login(&self, login: &str, password: &str) -> Result<Uuid, UserError> {
        self.login_session(login, password, None).map(|(id, _)| id)
    }

    /// [`Users::login`], with the account's `credentials_changed_ms` as the password
    /// was checked against it: what a refresh token family issued now must carry
    /// ([`crate::accounts::tokens::Tokens::issue`]).
    pub fn login_session(
        &self,
        login: &str,
        password: &str,
        factor: Option<&SecondFactor>,
    ) -> Result<(Uuid, u64), UserError> {
        let (result, hold) = self.login_held(login, password, factor);
        std::thread::sleep(hold);
        result
    }

    /// [`Users::login_session`] without its wait: the answer, and how long to hold it
    /// back before giving it (the HTTP handler waits without holding a thread).
    ///
    /// A failed login is answered as if its hashing took as long as the slowest failed
    /// login this node has seen since it started (at most [`super::MAX_LOGIN_FLOOR`]),
    /// and is reported to the hash metrics as one sample of that length, whatever it
    /// verified: an unknown login, a wrong password and a wrong password against an
    /// account with legacy hashes look the same from outside, in time and in
    /// `/metrics`.
    pub fn login_held(
        &self,
        login: &str,
        password: &str,
        factor: Option<&SecondFactor>,
    ) -> (Result<(Uuid, u64), UserError>, Duration) {
        let before = password::spent();
        let result = self.login_guarded(login, password, factor);
        let spent = password::spent() - before;
        let hold = match &result {
            Err(UserError::LoginFailed { .. }) => self.hold_failure(spent.hashed),
            _ => Duration::ZERO,
        };
        if spent.slots > 0 {
            password::record_spent(spent.waited, spent.hashed + hold);
            metrics::histogram!(m::PASSWORD_HASH_DURATION_SECONDS)
                .record((spent.hashed + hold).as_secs_f64());
        }
        let outcome = match &result {
            Ok(_) => "success",
            Err(UserError::LoginFailed { .. }) => "invalid_credentials",
            Err(UserError::Forbidden(_)) => "forbidden",
            Err(UserError::TooManyAttempts { .. }) => "locked_out",
            Err(UserError::SecondFactorRequired { .. }) => "second_factor_required",
            Err(UserError::SecondFactorFailed { .. }) => "invalid_second_factor",
            Err(_) => "error",
        };
        metrics::counter!(m::LOGINS_TOTAL, "outcome" => outcome).increment(1);
        (result, hold)
    }

    /// The second step of a login whose password was right at credentials
    /// `credentials_ms` (the hosted page asks the code on a page of its own): the
    /// account's second `factor`, behind the same lockout. An account whose
    /// credentials changed since is refused as a wrong password would be.
    pub fn login_second_factor(
        &self,
        id: &Uuid,
        credentials_ms: u64,
        factor: &SecondFactor,
    ) -> Result<(Uuid, u64), UserError> {
        let now = self.clock_now_ms();
        let attempt = self.lockout.begin(id.as_bytes(), now)?;
        let standing = *attempt.standing();
        let record = match self.load_changeable(id) {
            Ok(r)
                if r.credentials_changed_ms == credentials_ms
                    && r.status == Status::Active as i32 =>
            {
                r
            }
            Ok(_) | Err(UserError::NotFound | UserError::Merged(_)) => {
                return Err(UserError::InvalidCredentials)
            }
            Err(e) => return Err(e),
        };
        let checked = self.check_second_factor(&record, Some(factor));
        self.second_factor_outcome(id.as_bytes(), now, &standing, checked)?;
        Ok((*id, credentials_ms))
    }

    /// Counts a second-factor check in the lockout: the right factor resets the count,
    /// a wrong one is a failure; the right password alone is neither (the attempt ends
    /// uncounted), so it cannot undo the count that wrong codes built.
    fn second_factor_outcome(
        &self,
        subject: &[u8],
        now: u64,
        standing: &crate::accounts::lockout::Standing,
        checked: Result<(), UserError>,
    ) -> Result<(), UserError> {
        match checked {
            Ok(()) => self.lockout.succeeded(subject, now, standing),
            Err(UserError::InvalidSecondFactor) => {
                let failed_at = self.clock_now_ms().max(now);
                let standing = self.lockout.failed(subject, failed_at)?;
                if standing.failures == crate::accounts::lockout::FREE_FAILURES {
                    metrics::counter!(m::LOGIN_LOCKOUTS_TOTAL).increment(1);
                }
                Err(UserError::SecondFactorFailed {
                    retry_after_ms: standing.retry_after_ms(failed_at),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// How long to hold back a failed login that hashed for `hashed`, raising the floor
    /// when it was the slowest yet.
    fn hold_failure(&self, hashed: Duration) -> Duration {
        // Whole microseconds, rounded up: never below what it took.
        let us = u64::try_from(hashed.min(super::MAX_LOGIN_FLOOR).as_nanos().div_ceil(1000))
            .unwrap_or(u64::MAX);
        let floor = self
            .login_floor_us
            .fetch_max(us, std::sync::atomic::Ordering::Relaxed)
            .max(us);
        Duration::from_micros(floor).saturating_sub(hashed)
    }

    fn login_guarded(
        &self,
        login: &str,
        password: &str,
        factor: Option<&SecondFactor>,
    ) -> Result<(Uuid, u64), UserError> {
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
        // Counted as a failure to concurrent attempts until its outcome is written.
        let attempt = self.lockout.begin(&subject, now)?;
        let standing = *attempt.standing();
        let credentials = record.as_ref().map_or(0, |r| r.credentials_changed_ms);
        let found = record.clone();
        match self.login_inner(record, password) {
            Err(UserError::InvalidCredentials) => {
                // Counted when the failure is known: time spent hashing or queued
                // does not shorten the next wait.
                let failed_at = self.clock_now_ms().max(now);
                let standing = self.lockout.failed(&subject, failed_at)?;
                if standing.failures == crate::accounts::lockout::FREE_FAILURES {
                    metrics::counter!(m::LOGIN_LOCKOUTS_TOTAL).increment(1);
                }
                Err(UserError::LoginFailed {
                    retry_after_ms: standing.retry_after_ms(failed_at),
                })
            }
            // The right password: the count starts again, once the second factor, if
            // the account has one, is right too.
            Ok(id) => {
                let checked = match &found {
                    Some(r) => self.check_second_factor(r, factor),
                    None => Ok(()),
                };
                self.second_factor_outcome(&subject, now, &standing, checked)?;
                Ok((id, credentials))
            }
            Err(e @ UserError::Forbidden(_)) => {
                self.lockout.succeeded(&subject, now, &standing)?;
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Checks `password` against `record` (none: an unknown login) in one hashing slot,
    /// then stores a rehash when one is due, outside it.
    fn login_inner(
        &self,
        record: Option<proto::Record>,
        password: &str,
    ) -> Result<Uuid, UserError> {
        let (outcome, upgrade) = self
            .passwords
            .in_slot(|slot| self.check_password(slot, record.as_ref(), password));
        if let (Ok(id), Some(legacy), Some(record)) = (&outcome, upgrade, &record) {
            // The password is right whatever happens to the upgrade; it is tried
            // again on the next login.
            if let Err(e) = self.upgrade_password(id, record, password, legacy) {
                tracing::warn!(error = %e, "store upgraded password hash after login");
            }
        }
        outcome
    }

    /// The verification of [`Users::login_inner`]: the outcome, and the rehash to
    /// store after it (`Some(None)`: the account's own outdated hash, `Some(Some(i))`:
    /// legacy hash `i` matched).
    fn check_password(
        &self,
        slot: &mut Slot<'_>,
        record: Option<&proto::Record>,
        password: &str,
    ) -> (Result<Uuid, UserError>, Option<Option<usize>>) {
        let Some(record) = record else {
            slot.verify_dummy(password);
            return (Err(UserError::InvalidCredentials), None);
        };
        let Ok(id) = Uuid::from_slice(&record.id) else {
            slot.verify_dummy(password);
            return (Err(UserError::Unreadable), None);
        };
        let status_refusal = |r: &proto::Record| match Status::try_from(r.status) {
            Ok(Status::Active) => None,
            Ok(Status::Locked) => Some(UserError::Forbidden("locked")),
            Ok(Status::Disabled) => Some(UserError::Forbidden("disabled")),
            _ => Some(UserError::InvalidCredentials),
        };
        if !record.secret.is_empty() {
            match slot.verify(password, &record.secret) {
                Verified::Yes => return (status_refusal(record).map_or(Ok(id), Err), None),
                Verified::YesRehash => {
                    return match status_refusal(record) {
                        Some(e) => (Err(e), None),
                        None => (Ok(id), Some(None)),
                    };
                }
                Verified::No => {}
            }
        }
        // Legacy hashes imported from older systems. A record that cannot be opened
        // answers like a wrong password, after the same work.
        let Ok(info) = self.open_info(record) else {
            if record.secret.is_empty() {
                slot.verify_dummy(password);
            }
            return (Err(UserError::InvalidCredentials), None);
        };
        // At most MAX_LEGACY_HASHES verified, whatever an older record holds.
        let matched = info
            .old_hashes
            .iter()
            .take(super::MAX_LEGACY_HASHES)
            .position(|h| {
                if h.algorithm == CURRENT_HASH {
                    return slot.verify(password, &h.hash) != Verified::No;
                }
                let position = if h.salt_suffix {
                    SaltPosition::Suffix
                } else {
                    SaltPosition::Prefix
                };
                let salt = (!h.salt.is_empty()).then_some(h.salt.as_str());
                slot.verify_legacy(&h.algorithm, &h.hash, salt, position, password)
            });
        let Some(matched) = matched else {
            if record.secret.is_empty() {
                // Same Argon2 work as a known account with a wrong password.
                slot.verify_dummy(password);
            }
            return (Err(UserError::InvalidCredentials), None);
        };
        if let Some(e) = status_refusal(record) {
            return (Err(e), None);
        }
        let upgrade = (info.old_hashes[matched].algorithm != CURRENT_HASH).then_some(Some(matched));
        (Ok(id), upgrade)
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
    use crate::accounts::lockout::FREE_FAILURES;
    use crate::accounts::users::testkit::{self, new_user, users};

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

    /// The attack: many wrong passwords at once against one account. Each attempt
    /// that reaches the hash is a guess; the lockout allows `FREE_FAILURES` before the
    /// first wait, however the guesses are timed.
    #[test]
    fn concurrent_wrong_passwords_get_no_more_guesses_than_the_lockout_allows() {
        let dir = tempfile::tempdir().unwrap();
        // The clock stands still: on a loaded machine the guesses may take longer than
        // the first wait (1 s), and one more guess is then allowed, rightly.
        let u = std::sync::Arc::new(testkit::users_stopped(dir.path()));
        u.create(new_user("ada@example.com")).unwrap();
        let attempts = 50;
        // `attempts` wrong passwords for `login`, all released at once.
        let guesses = |login: &'static str| -> Vec<UserError> {
            let start = std::sync::Arc::new(std::sync::Barrier::new(attempts));
            (0..attempts)
                .map(|i| {
                    let (u, start) = (u.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        u.login(login, &format!("guess number {i}")).unwrap_err()
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|t| t.join().unwrap())
                .collect()
        };
        let outcomes = guesses("ada@example.com");
        // LoginFailed is the answer of a verified (hashed) guess; TooManyAttempts is
        // refused before hashing.
        let verified = outcomes
            .iter()
            .filter(|e| matches!(e, UserError::LoginFailed { .. }))
            .count();
        let refused = outcomes
            .iter()
            .filter(|e| matches!(e, UserError::TooManyAttempts { .. }))
            .count();
        assert_eq!(verified + refused, attempts, "{outcomes:?}");
        assert!(
            verified <= FREE_FAILURES as usize,
            "{verified} of {attempts} concurrent guesses were verified"
        );
        // The same holds for a login that names no account.
        let verified = guesses("nobody@example.com")
            .iter()
            .filter(|e| matches!(e, UserError::LoginFailed { .. }))
            .count();
        // (Unknown logins count against their blind index, like accounts.)
        assert!(
            verified <= FREE_FAILURES as usize,
            "{verified} unknown-login guesses"
        );
    }

    fn import_items(
        email: &str,
        hashes: &[serde_json::Value],
    ) -> Vec<crate::accounts::input::ImportItem> {
        let items: Vec<serde_json::Value> = hashes
            .iter()
            .enumerate()
            .map(|(i, h)| serde_json::json!({"email": email, "legacy_hash": h, "source": format!("shop{i}")}))
            .collect();
        crate::accounts::input::import(&serde_json::Value::Array(items), 1000).unwrap()
    }

    /// The attack: an import (or a chain of merges) piles hashes onto one account, so
    /// that every wrong password against it costs a hash for each.
    #[test]
    fn an_account_keeps_and_verifies_at_most_the_legacy_hash_bound() {
        use crate::accounts::users::MAX_LEGACY_HASHES;
        let dir = tempfile::tempdir().unwrap();
        let u = users(dir.path());
        let md5 =
            |i: usize| serde_json::json!({"algorithm": "md5", "hash": format!("{:032x}", i + 1)});
        let mut hashes: Vec<serde_json::Value> = (0..10).map(md5).collect();
        // The first one again, from another source: the same hash, kept once.
        hashes.insert(1, md5(0));
        let results = u.import(import_items("pile@example.com", &hashes)).unwrap();
        let kept: Vec<bool> = results.iter().map(|r| r.legacy_hash_kept).collect();
        assert_eq!(
            kept,
            [
                vec![true; MAX_LEGACY_HASHES + 1],
                vec![false; 11 - MAX_LEGACY_HASHES - 1]
            ]
            .concat()
        );
        let id = results[0].id;
        let record = u.get_record(&id).unwrap().unwrap();
        assert_eq!(
            u.open_info(&record).unwrap().old_hashes.len(),
            MAX_LEGACY_HASHES
        );
        // A wrong password: one Argon2 (the account has no current hash, so the
        // dummy) and the kept legacy hashes, no more.
        let before = crate::crypto::password::spent();
        assert!(u.login("pile@example.com", "not the password").is_err());
        let spent = crate::crypto::password::spent() - before;
        assert_eq!(spent.checks, 1 + MAX_LEGACY_HASHES as u64, "{spent:?}");
        // All in one hashing slot: one wait for a core, as for any login.
        assert_eq!(spent.slots, 1, "{spent:?}");
    }

    /// The attack: telling accounts that exist from logins that do not by how long a
    /// wrong password takes, an account with slow legacy hashes being the slowest.
    #[test]
    fn a_failed_login_takes_as_long_as_the_slowest_whatever_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let u = users(dir.path());
        u.create(new_user("ada@example.com")).unwrap();
        // Slow legacy hashes: PBKDF2 at a million iterations each.
        let slow: Vec<serde_json::Value> = (0..3)
            .map(|i| {
                let digest = base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    [i as u8; 32],
                );
                serde_json::json!({"algorithm": "pbkdf2-sha256", "hash": format!("pbkdf2_sha256$1000000$salt{i}${digest}")})
            })
            .collect();
        u.import(import_items("legacy@example.com", &slow)).unwrap();
        let answered_after = |login: &str| {
            let before = crate::crypto::password::spent();
            let (result, hold) = u.login_held(login, "not the password", None);
            assert!(
                matches!(result, Err(UserError::LoginFailed { .. })),
                "{result:?}"
            );
            let spent = crate::crypto::password::spent() - before;
            (spent.hashed, spent.hashed + hold)
        };
        let (legacy_work, _) = answered_after("legacy@example.com");
        for login in ["ada@example.com", "nobody@example.com", "+27 82 555 0100"] {
            let (work, answered) = answered_after(login);
            assert!(
                work < legacy_work,
                "{login}: the legacy account was not the slowest"
            );
            assert!(
                answered >= legacy_work,
                "{login} answered after {answered:?}, the legacy account after {legacy_work:?}"
            );
        }
    }

    /// The attack: keep an account locked out by guessing again each time the wait
    /// ends. An operator's password reset, or unlock, gives it back at once.
    #[test]
    fn a_password_reset_clears_the_failed_login_streak() {
        let dir = tempfile::tempdir().unwrap();
        let u = users(dir.path());
        let (id, _) = u.create(new_user("ada@example.com")).unwrap();
        for i in 0..FREE_FAILURES {
            assert!(u.login("ada@example.com", &format!("guess {i}")).is_err());
        }
        assert!(matches!(
            u.login("ada@example.com", "correct horse battery"),
            Err(UserError::TooManyAttempts { .. })
        ));
        u.set_password(&id, "a brand new passphrase").unwrap();
        assert_eq!(
            u.login("ada@example.com", "a brand new passphrase")
                .unwrap(),
            id
        );
        for i in 0..FREE_FAILURES {
            assert!(u.login("ada@example.com", &format!("guess {i}")).is_err());
        }
        u.set_status(&id, SettableStatus::Active).unwrap();
        assert_eq!(
            u.login("ada@example.com", "a brand new passphrase")
                .unwrap(),
            id
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
