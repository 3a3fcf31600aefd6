//! Second factors: a TOTP authenticator and single-use recovery codes.
//!
//! Both secrets live in the account's sealed `Info`, like every personal field: the
//! TOTP seed (20 bytes) and the SHA-256 of each recovery code with the account id.
//! Enrolment is two steps: [`Users::enrol_totp`] makes a pending seed,
//! [`Users::confirm_totp`] turns it on with a first code and returns ten recovery
//! codes, shown that once.
//!
//! What has been used is kept apart, in a replicated entry per account
//! (`FactorUses`): the last TOTP step taken and the recovery codes spent. Copies from
//! two regions merge by the later step and the union of spent codes, so a code used in
//! one region is refused in every other as soon as the use has arrived (within the
//! replication lag, two regions can each take the same code once). Nothing of it is a
//! secret; a login never writes the record.
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

    /// Records a use, unless one as late (a step) or the same (a code) is there by
    /// now: `false` then, and the use is refused. Checked and written under the
    /// entry's lock, so two logins here cannot both take one code.
    fn take_use(
        &self,
        id: &Uuid,
        step: Option<u64>,
        code: Option<&[u8]>,
    ) -> Result<bool, UserError> {
        let mut taken = false;
        self.entries
            .update(EntryKind::FactorUses, id.as_bytes(), |stored| {
                let uses = stored
                    .and_then(|e| proto::FactorUses::decode(e.value.as_slice()).ok())
                    .unwrap_or_default();
                let fresh_step = step.is_none_or(|s| s > uses.totp_step);
                let fresh_code = code.is_none_or(|c| !uses.recovery_used.iter().any(|u| u == c));
                if !(fresh_step && fresh_code) {
                    return None;
                }
                taken = true;
                let used = proto::FactorUses {
                    totp_step: step.unwrap_or(0),
                    recovery_used: code.map(|c| vec![c.to_vec()]).unwrap_or_default(),
                };
                Some(merge_uses(&uses, &used).encode_to_vec())
            })?;
        Ok(taken)
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
        Ok(Factors {
            totp: !info.totp_secret.is_empty(),
            totp_pending: !info.totp_pending.is_empty(),
            recovery_codes_left: info
                .recovery_hashes
                .iter()
                .filter(|h| !uses.recovery_used.contains(h))
                .count(),
        })
    }

    /// Starts a TOTP enrolment: a new seed, pending (replacing one pending before)
    /// until [`Users::confirm_totp`] with a code it made. Refused while one is on.
    pub fn enrol_totp(&self, id: &Uuid) -> Result<Enrolment, UserError> {
        let _locked = self.store.lock(&[id.as_bytes()]);
        let previous = self.load_changeable(id)?;
        let (mut info, key) = self.opened(&previous)?;
        if !info.totp_secret.is_empty() {
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
    /// of recovery codes, shown this once.
    pub fn confirm_totp(&self, id: &Uuid, code: &str) -> Result<Vec<String>, UserError> {
        let _locked = self.store.lock(&[id.as_bytes()]);
        let previous = self.load_changeable(id)?;
        let (mut info, key) = self.opened(&previous)?;
        if info.totp_pending.is_empty() {
            return Err(invalid("code", "no TOTP enrolment is waiting: enrol first"));
        }
        let now_s = self.clock_now_ms() / 1000;
        let uses = self.factor_uses(id)?;
        let Some(step) = totp::verify(&info.totp_pending, code, now_s, uses.totp_step) else {
            return Err(invalid(
                "code",
                "is not the authenticator's current six-digit code",
            ));
        };
        if !self.take_use(id, Some(step), None)? {
            return Err(invalid("code", "was used already: wait for the next one"));
        }
        info.totp_secret = std::mem::take(&mut info.totp_pending);
        let codes = self.new_codes(id, &mut info)?;
        self.commit(
            Some((&previous, &key)),
            previous.clone(),
            &info,
            "totp_confirm",
        )?;
        Ok(codes)
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
        if info.totp_secret.is_empty() {
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
        let _locked = self.store.lock(&[id.as_bytes()]);
        let previous = self.load_changeable(id)?;
        let (mut info, key) = self.opened(&previous)?;
        if info.totp_secret.is_empty() && info.totp_pending.is_empty() {
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

    /// The second-factor check of a login whose password was right: nothing to check
    /// for an account without one; else `factor` must be a TOTP code later than the
    /// last one used, or a recovery code not spent, and it is spent now.
    pub(super) fn check_second_factor(
        &self,
        record: &proto::Record,
        factor: Option<&SecondFactor>,
    ) -> Result<(), UserError> {
        let info = self.open_info(record)?;
        if info.totp_secret.is_empty() {
            return Ok(());
        }
        let id = Uuid::from_slice(&record.id).map_err(|_| UserError::Unreadable)?;
        let uses = self.factor_uses(&id)?;
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
                    Some(step) => self.take_use(&id, Some(step), None)?,
                    None => false,
                }
            }
            Some(SecondFactor::RecoveryCode(code)) => {
                let h = recovery_hash(&id, code);
                info.recovery_hashes.contains(&h) && self.take_use(&id, None, Some(&h))?
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
