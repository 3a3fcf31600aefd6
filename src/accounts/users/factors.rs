//! Second factors: a TOTP authenticator and single-use recovery codes.
//!
//! Both secrets live in the account's sealed `Info`, like every personal field: the
//! TOTP seed (20 bytes) and the SHA-256 of each recovery code with the account id.
//! Enrolment is two steps: [`Users::enrol_totp`] makes a pending seed,
//! [`Users::confirm_totp`] turns it on with a first code and returns ten recovery
//! codes, shown that once.
//!
//! Whether a factor is on, and what has been used, is kept apart, in a replicated entry
//! per account (`FactorUses`): when an authenticator was last turned on and last
//! removed, the last TOTP step taken and the recovery codes spent. Copies from two
//! regions merge by the later of each and the union of spent codes, so a code used in
//! one region is refused in every other as soon as the use has arrived (within the
//! replication lag, two regions can each take the same code once), and a record written
//! concurrently elsewhere without the seed cannot turn the factor off: the login is
//! refused, never let through, until a new enrolment. Nothing of it is a secret; a
//! login never writes the record, and opens its envelope only for an account whose
//! factor is on.
//!
//! A login of an account with a second factor needs one of them after the right
//! password ([`UserError::SecondFactorRequired`] without); a wrong one counts as a
//! failed login in the account's lockout, and only the right one resets it.

use prost::Message as _;
use uuid::Uuid;

use super::Users;
use crate::accounts::entries::merge_uses;
use crate::accounts::error::{Problem, UserError};
pub use crate::accounts::input::SecondFactor;
use crate::crypto::totp;
use crate::proto::{self, EntryKind};

/// How many recovery codes a set holds.
pub const RECOVERY_CODES: usize = 10;

/// An account's second factors, as the API shows them (never a secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Factors {
    pub totp: bool,
    pub totp_pending: bool,
    pub recovery_codes_left: usize,
}

/// A new TOTP enrolment: the seed, to show as base32 and in an `otpauth://` URI.
pub struct Enrolment {
    pub secret: Vec<u8>,
    pub account: String,
}

fn random<const N: usize>() -> Result<[u8; N], UserError> {
    crate::crypto::primitives::random::<N>().map_err(UserError::Crypto)
}

/// A recovery code as shown: 12 base32 characters in groups of four (60 bits).
fn recovery_code() -> Result<String, UserError> {
    let raw = totp::base32(&random::<8>()?);
    Ok(format!("{}-{}-{}", &raw[0..4], &raw[4..8], &raw[8..12]))
}

/// What of a recovery code is compared: its characters without dashes or spaces,
/// upper case.
fn normalized(code: &str) -> String {
    code.chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .flat_map(char::to_uppercase)
        .collect()
}

fn recovery_hash(id: &Uuid, code: &str) -> Vec<u8> {
    let mut input = id.as_bytes().to_vec();
    input.extend_from_slice(normalized(code).as_bytes());
    crate::crypto::primitives::sha256(&input).to_vec()
}

fn invalid(field: &str, why: &str) -> UserError {
    UserError::Invalid(vec![Problem::new(field, why)])
}

impl Users {
    fn factor_uses(&self, id: &Uuid) -> Result<proto::FactorUses, UserError> {
        Ok(self
            .entries
            .get(EntryKind::FactorUses, id.as_bytes())?
            .and_then(|e| proto::FactorUses::decode(e.value.as_slice()).ok())
            .unwrap_or_default())
    }

    /// Whether account `id`'s second factor is on: turned on after its last removal.
    pub(super) fn factor_on(&self, id: &Uuid) -> Result<bool, UserError> {
        let u = self.factor_uses(id)?;
        Ok(u.enabled_ms > u.removed_ms)
    }

    /// Changes account `id`'s uses entry with `change` (`None`: nothing to write),
    /// under the entry's lock, so two logins here cannot both take one code.
    fn change_uses(
        &self,
        id: &Uuid,
        change: impl FnOnce(proto::FactorUses) -> Option<proto::FactorUses>,
    ) -> Result<bool, UserError> {
        let mut changed = false;
        self.entries
            .update(EntryKind::FactorUses, id.as_bytes(), |stored| {
                let uses = stored
                    .and_then(|e| proto::FactorUses::decode(e.value.as_slice()).ok())
                    .unwrap_or_default();
                let next = change(uses)?;
                changed = true;
                Some(next.encode_to_vec())
            })?;
        Ok(changed)
    }

    /// Records a use, unless one as late (a step) or the same (a code) is there by
    /// now: `false` then, and the use is refused. Spent codes not of `current` (the
    /// account's set) are dropped, so the list holds only what can still matter.
    fn take_use(
        &self,
        id: &Uuid,
        step: Option<u64>,
        code: Option<&[u8]>,
        current: &[Vec<u8>],
    ) -> Result<bool, UserError> {
        self.change_uses(id, |mut uses| {
            let fresh_step = step.is_none_or(|s| s > uses.totp_step);
            let fresh_code = code.is_none_or(|c| !uses.recovery_used.iter().any(|u| u == c));
            if !(fresh_step && fresh_code) {
                return None;
            }
            uses.recovery_used.retain(|h| current.contains(h));
            let used = proto::FactorUses {
                totp_step: step.unwrap_or(0),
                recovery_used: code.map(|c| vec![c.to_vec()]).unwrap_or_default(),
                ..Default::default()
            };
            Some(merge_uses(&uses, &used))
        })
    }

    /// Removes the second-factor uses of erased accounts (an erase removes the seeds
    /// with the record; what was used goes here).
    pub fn sweep_factor_uses(&self) -> Result<usize, UserError> {
        self.entries.sweep(EntryKind::FactorUses, |e| {
            Uuid::from_slice(&e.key).is_ok_and(|id| self.is_erased(&id))
        })
    }

    /// Account `id`'s second factors.
    pub fn factors(&self, id: &Uuid) -> Result<Factors, UserError> {
        let record = self.load_changeable(id)?;
        let info = self.open_info(&record)?;
        let uses = self.factor_uses(id)?;
        let on = uses.enabled_ms > uses.removed_ms;
        Ok(Factors {
            totp: on,
            totp_pending: !info.totp_pending.is_empty(),
            recovery_codes_left: if on {
                info.recovery_hashes
                    .iter()
                    .filter(|h| !uses.recovery_used.contains(h))
                    .count()
            } else {
                0
            },
        })
    }

    /// Starts a TOTP enrolment: a new seed, pending (replacing one pending before)
    /// until [`Users::confirm_totp`] with a code it made. Refused while one is on
    /// (unless its seed is lost: the new one mends it).
    pub fn enrol_totp(&self, id: &Uuid) -> Result<Enrolment, UserError> {
        let _locked = self.store.lock(&[id.as_bytes()]);
        let previous = self.load_changeable(id)?;
        let (mut info, key) = self.opened(&previous)?;
        if self.factor_on(id)? && !info.totp_secret.is_empty() {
            return Err(UserError::Conflict(vec![Problem::new(
                "totp",
                "is on already: remove it first to enrol another authenticator",
            )]));
        }
        let secret = random::<{ totp::SECRET_LEN }>()?.to_vec();
        info.totp_pending = secret.clone();
        let account = if info.email.is_empty() {
            info.phone.clone()
        } else {
            info.email.clone()
        };
        self.commit(
            Some((&previous, &key)),
            previous.clone(),
            &info,
            "totp_enrol",
        )?;
        Ok(Enrolment { secret, account })
    }

    /// Turns the pending TOTP seed on with a first `code` it made; returns a new set
    /// of recovery codes, shown this once. The account's credentials change: sessions
    /// opened with the password alone (a thief's among them) end everywhere.
    pub fn confirm_totp(&self, id: &Uuid, code: &str) -> Result<Vec<String>, UserError> {
        let (step, now, codes) = self.confirm_locked(id, code)?;
        // After the record's lock is let go: an entry's lock may share its stripe.
        // On after every removal this region has seen, and the first code spent.
        let on = self.change_uses(id, |mut u| {
            if step <= u.totp_step {
                return None;
            }
            u.totp_step = step;
            u.enabled_ms = now.max(u.removed_ms + 1).max(u.enabled_ms);
            u.recovery_used.clear();
            Some(u)
        })?;
        if !on {
            return Err(invalid("code", "was used already: wait for the next one"));
        }
        Ok(codes)
    }

    /// The record's part of [`Users::confirm_totp`], under its lock: the step taken,
    /// when, and the recovery codes.
    fn confirm_locked(&self, id: &Uuid, code: &str) -> Result<(u64, u64, Vec<String>), UserError> {
        let _locked = self.store.lock(&[id.as_bytes()]);
        let previous = self.load_changeable(id)?;
        let (mut info, key) = self.opened(&previous)?;
        if info.totp_pending.is_empty() {
            return Err(invalid("code", "no TOTP enrolment is waiting: enrol first"));
        }
        let now = self.clock_now_ms();
        let uses = self.factor_uses(id)?;
        let Some(step) = totp::verify(&info.totp_pending, code, now / 1000, uses.totp_step) else {
            return Err(invalid(
                "code",
                "is not the authenticator's current six-digit code",
            ));
        };
        info.totp_secret = std::mem::take(&mut info.totp_pending);
        let codes = self.new_codes(id, &mut info)?;
        let mut record = previous.clone();
        self.credentials_changed(&mut record);
        self.commit(Some((&previous, &key)), record, &info, "totp_confirm")?;
        Ok((step, now, codes))
    }

    fn new_codes(&self, id: &Uuid, info: &mut proto::Info) -> Result<Vec<String>, UserError> {
        let codes = (0..RECOVERY_CODES)
            .map(|_| recovery_code())
            .collect::<Result<Vec<_>, _>>()?;
        info.recovery_hashes = codes.iter().map(|c| recovery_hash(id, c)).collect();
        Ok(codes)
    }

    /// A new set of recovery codes in place of the old (all of which stop working);
    /// only with TOTP on.
    pub fn new_recovery_codes(&self, id: &Uuid) -> Result<Vec<String>, UserError> {
        let _locked = self.store.lock(&[id.as_bytes()]);
        let previous = self.load_changeable(id)?;
        let (mut info, key) = self.opened(&previous)?;
        if !self.factor_on(id)? || info.totp_secret.is_empty() {
            return Err(UserError::Conflict(vec![Problem::new(
                "totp",
                "is off: recovery codes come with an authenticator",
            )]));
        }
        let codes = self.new_codes(id, &mut info)?;
        self.commit(
            Some((&previous, &key)),
            previous.clone(),
            &info,
            "recovery_codes",
        )?;
        Ok(codes)
    }

    /// Removes the account's second factors (a pending enrolment included). Its
    /// credentials change: every session and refresh token ends, in every region.
    /// `false` when it had none.
    pub fn remove_totp(&self, id: &Uuid) -> Result<bool, UserError> {
        if !self.remove_locked(id)? {
            return Ok(false);
        }
        // After the record's lock is let go: an entry's lock may share its stripe.
        let now = self.clock_now_ms();
        self.change_uses(id, |mut u| {
            u.removed_ms = now.max(u.enabled_ms + 1).max(u.removed_ms);
            u.recovery_used.clear();
            Some(u)
        })?;
        Ok(true)
    }

    fn remove_locked(&self, id: &Uuid) -> Result<bool, UserError> {
        let _locked = self.store.lock(&[id.as_bytes()]);
        let previous = self.load_changeable(id)?;
        let (mut info, key) = self.opened(&previous)?;
        let on = self.factor_on(id)?;
        if !on && info.totp_secret.is_empty() && info.totp_pending.is_empty() {
            return Ok(false);
        }
        info.totp_secret.clear();
        info.totp_pending.clear();
        info.recovery_hashes.clear();
        let mut record = previous.clone();
        self.credentials_changed(&mut record);
        self.commit(Some((&previous, &key)), record, &info, "totp_remove")?;
        Ok(true)
    }

    /// After a merge took a loser's authenticator for the winner: the winner's factor
    /// is on from now, after any removal it had, and the loser's last step goes with
    /// it, so that the loser's latest code is not taken again. Called with no record
    /// lock held (an entry's lock may share its stripe).
    pub(super) fn inherit_factor(&self, winner: &Uuid, loser: &Uuid) -> Result<(), UserError> {
        let from = self.factor_uses(loser)?;
        let now = self.clock_now_ms();
        self.change_uses(winner, |mut u| {
            u.totp_step = u.totp_step.max(from.totp_step);
            u.enabled_ms = now.max(u.removed_ms + 1).max(u.enabled_ms);
            Some(u)
        })?;
        Ok(())
    }

    /// The second-factor check of a login whose password was right: nothing to check
    /// for an account whose factor is off (its envelope is not even opened); else
    /// `factor` must be a TOTP code later than the last one used, or a recovery code
    /// not spent, and it is spent now. A factor on whose seed is not in the record
    /// here is refused, never skipped.
    pub(super) fn check_second_factor(
        &self,
        record: &proto::Record,
        factor: Option<&SecondFactor>,
    ) -> Result<(), UserError> {
        let id = Uuid::from_slice(&record.id).map_err(|_| UserError::Unreadable)?;
        let uses = self.factor_uses(&id)?;
        if uses.enabled_ms <= uses.removed_ms {
            return Ok(());
        }
        let info = self.open_info(record)?;
        let taken = match factor {
            None => {
                return Err(UserError::SecondFactorRequired {
                    user: id,
                    credentials_ms: record.credentials_changed_ms,
                })
            }
            Some(SecondFactor::Totp(code)) => {
                let now_s = self.clock_now_ms() / 1000;
                match totp::verify(&info.totp_secret, code, now_s, uses.totp_step) {
                    Some(step) if !info.totp_secret.is_empty() => {
                        self.take_use(&id, Some(step), None, &info.recovery_hashes)?
                    }
                    _ => false,
                }
            }
            Some(SecondFactor::RecoveryCode(code)) => {
                let h = recovery_hash(&id, code);
                info.recovery_hashes.contains(&h)
                    && self.take_use(&id, None, Some(&h), &info.recovery_hashes)?
            }
        };
        if taken {
            Ok(())
        } else {
            Err(UserError::InvalidSecondFactor)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::users::testkit::{drain, new_user, two_regions, users};

    fn now_code(secret: &[u8]) -> String {
        let now_s = crate::common::hlc::TimeSource::now_ms(&crate::common::hlc::SystemClock) / 1000;
        format!("{:06}", totp::hotp(secret, totp::step(now_s)))
    }

    /// The attack: one code sent on many connections at once, each check reading the
    /// last step before any has written it. Taken once: the step is checked again
    /// under the entry's lock.
    #[test]
    fn one_code_checked_on_many_threads_at_once_is_taken_once() {
        let dir = tempfile::tempdir().unwrap();
        let u = std::sync::Arc::new(users(dir.path()));
        let (id, _) = u.create(new_user("ada@example.com")).unwrap();
        let enrolment = u.enrol_totp(&id).unwrap();
        u.confirm_totp(&id, &now_code(&enrolment.secret)).unwrap();
        let record = u.get_record(&id).unwrap().unwrap();
        let now_s = crate::common::hlc::TimeSource::now_ms(&crate::common::hlc::SystemClock) / 1000;
        let next = SecondFactor::Totp(format!(
            "{:06}",
            totp::hotp(&enrolment.secret, totp::step(now_s) + 1)
        ));
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (u, record, next, barrier) =
                    (u.clone(), record.clone(), next.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    u.check_second_factor(&record, Some(&next)).is_ok()
                })
            })
            .collect();
        let taken = threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|ok| *ok)
            .count();
        assert_eq!(taken, 1);
    }

    /// The attack: a write to the account in another region, made before the
    /// authenticator's confirmation arrived there (a profile change; or, by someone who
    /// has the password, a login that rehashes it), wins as the newer record and holds
    /// no seed. The factor stays on: the login is refused, never let through, until a
    /// new enrolment mends it.
    #[test]
    fn a_newer_record_without_the_seed_does_not_turn_the_factor_off() {
        let (_dirs, a, b) = two_regions();
        let (id, _) = a.create(new_user("ada@example.com")).unwrap();
        for e in drain(&a) {
            b.apply(&e).unwrap();
        }
        let enrolment = a.enrol_totp(&id).unwrap();
        a.confirm_totp(&id, &now_code(&enrolment.secret)).unwrap();
        let patch =
            crate::accounts::input::user_patch(&serde_json::json!({"profile": {"nickname": "A"}}))
                .unwrap();
        b.update(&id, patch).unwrap();
        // a's changes reach b, then b's newer record reaches a, and wins there.
        for e in drain(&a) {
            b.apply(&e).unwrap();
        }
        for e in drain(&b) {
            a.apply(&e).unwrap();
        }
        for users in [&a, &b] {
            assert!(users.factor_on(&id).unwrap());
            let r = users.login_session("ada@example.com", "correct horse battery", None);
            assert!(
                matches!(r, Err(UserError::SecondFactorRequired { .. })),
                "{r:?}"
            );
            let code = SecondFactor::Totp(now_code(&enrolment.secret));
            let r = users.login_session("ada@example.com", "correct horse battery", Some(&code));
            assert!(
                matches!(r, Err(UserError::SecondFactorFailed { .. })),
                "{r:?}"
            );
        }
        // A new enrolment mends it.
        let again = a.enrol_totp(&id).unwrap();
        assert!(a.factors(&id).unwrap().totp_pending);
        assert_ne!(again.secret, enrolment.secret);
    }

    #[test]
    fn recovery_codes_are_compared_without_dashes_spaces_or_case() {
        let id = Uuid::from_bytes([1; 16]);
        let code = recovery_code().unwrap();
        assert_eq!(code.len(), 14);
        assert_eq!(
            recovery_hash(&id, &code),
            recovery_hash(&id, &code.to_lowercase().replace('-', " "))
        );
        assert_ne!(
            recovery_hash(&id, &code),
            recovery_hash(&Uuid::from_bytes([2; 16]), &code)
        );
    }
}
