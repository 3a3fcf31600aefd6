//! Single-use account tokens: a password reset, or the proof of an email or phone.
//!
//! A platform asks for one ([`Users::mint_token`]); authsync makes a token of 32
//! random bytes, keeps only their SHA-256 in a replicated entry (`AccountToken`), and
//! hands the token to the operator's delivery hook (`api/delivery.rs`), never to the
//! caller. The token names the region that made it (`at1.<region>.<id>.<secret>`):
//! a redemption anywhere is sent to that region, which takes it under the entry's lock,
//! so it is used once however many regions it is brought to at once. A use also
//! replicates, and copies merge by the earliest use.
//!
//! Redeeming a reset sets the password (which ends every session and refresh token, in
//! every region, and clears the lockout) and proves the email it was sent to; a
//! verification token proves its address. Each proves only the address it was sent to:
//! an address changed since is not proven by it, and a reset sent to an address the
//! account no longer has, or made before its credentials last changed, is refused.
//! A locked or disabled account redeems none.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use prost::Message as _;
use uuid::Uuid;

use super::Users;
use crate::accounts::error::{Problem, UserError};
use crate::proto::{self, EntryKind, Status};

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Reset,
    VerifyEmail,
    VerifyPhone,
}

impl Purpose {
    pub fn parse(s: &str) -> Option<Purpose> {
        match s {
            "reset" => Some(Purpose::Reset),
            "verify_email" => Some(Purpose::VerifyEmail),
            "verify_phone" => Some(Purpose::VerifyPhone),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Purpose::Reset => "reset",
            Purpose::VerifyEmail => "verify_email",
            Purpose::VerifyPhone => "verify_phone",
        }
    }

    /// How long a token lives: 30 minutes for a reset, a day for a verification.
    pub fn ttl_ms(self) -> u64 {
        match self {
            Purpose::Reset => 30 * 60 * 1000,
            Purpose::VerifyEmail | Purpose::VerifyPhone => 24 * 60 * 60 * 1000,
        }
    }
}

/// A token made, for the delivery hook: where to send it and what it does.
#[derive(Debug, Clone)]
pub struct Minted {
    pub token: String,
    pub user: Uuid,
    pub purpose: Purpose,
    /// The email or phone to send it to.
    pub address: String,
    pub expires_ms: u64,
}

/// What a redeemed token did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redeemed {
    pub user: Uuid,
    pub purpose: Purpose,
}

/// A token's region, id and secret.
fn parts(token: &str) -> Option<(&str, [u8; 16], [u8; 32])> {
    let mut p = token.trim().split('.');
    let (Some("at1"), Some(region), Some(id), Some(secret), None) =
        (p.next(), p.next(), p.next(), p.next(), p.next())
    else {
        return None;
    };
    let id = B64.decode(id).ok()?.try_into().ok()?;
    let secret = B64.decode(secret).ok()?.try_into().ok()?;
    Some((region, id, secret))
}

/// The region that made `token`, which alone redeems it.
pub fn token_region(token: &str) -> Option<&str> {
    parts(token).map(|(region, _, _)| region)
}

fn refused() -> UserError {
    UserError::Invalid(vec![Problem::new(
        "token",
        "is not a live token: unknown, used, expired, or for another purpose",
    )])
}

impl Users {
    /// Makes a token for account `id`. Refused for an account that cannot sign in
    /// (locked, disabled, merged) and for a phone verification without a phone.
    pub fn mint_token(&self, id: &Uuid, purpose: Purpose) -> Result<Minted, UserError> {
        let record = self.load_changeable(id)?;
        if record.status != Status::Active as i32 {
            return Err(UserError::Forbidden(
                if record.status == Status::Locked as i32 {
                    "locked"
                } else {
                    "disabled"
                },
            ));
        }
        let info = self.open_info(&record)?;
        let (address, index) = match purpose {
            Purpose::Reset | Purpose::VerifyEmail => (info.email, record.email_index),
            Purpose::VerifyPhone => (info.phone, record.phone_index),
        };
        if address.is_empty() || index.is_empty() {
            return Err(UserError::Invalid(vec![Problem::new(
                "purpose",
                "the account has no address to send it to",
            )]));
        }
        let token_id = crate::crypto::primitives::random::<16>().map_err(UserError::Crypto)?;
        let secret = crate::crypto::primitives::random::<32>().map_err(UserError::Crypto)?;
        let now = self.clock_now_ms();
        let expires_ms = now + purpose.ttl_ms();
        let entry = proto::AccountToken {
            user_id: id.as_bytes().to_vec(),
            purpose: purpose.name().into(),
            secret_hash: crate::crypto::primitives::sha256(&secret).to_vec(),
            address_index: index,
            created_ms: now,
            expires_ms,
            used_ms: 0,
        };
        self.entries
            .put(EntryKind::AccountToken, &token_id, entry.encode_to_vec())?;
        Ok(Minted {
            token: format!(
                "at1.{}.{}.{}",
                self.region,
                B64.encode(token_id),
                B64.encode(secret)
            ),
            user: *id,
            purpose,
            address,
            expires_ms,
        })
    }

    /// Redeems a token made here, once: a reset with the new `password` (checked by
    /// the caller), a verification without. Anything else is refused as one error.
    pub fn redeem_token(
        &self,
        token: &str,
        purpose: Purpose,
        password: Option<&str>,
    ) -> Result<Redeemed, UserError> {
        let Some((region, id, secret)) = parts(token) else {
            return Err(refused());
        };
        if region != self.region || (purpose == Purpose::Reset) != password.is_some() {
            return Err(refused());
        }
        let hash = crate::crypto::primitives::sha256(&secret);
        let now = self.clock_now_ms();
        // Checked before it is spent, and answered as one refusal whatever fails, so
        // that nothing is learnt of the account without the secret:
        // - made here (written by this region: a token entry another region wrote is
        //   never redeemed here), the secret right, live, for this purpose;
        // - for an account that can sign in;
        // - a reset only to the email it was sent to, and made after the account's
        //   credentials last changed (a password change cancels the resets before it);
        // - a new password the account would refuse is refused, the token unspent.
        let entry = self
            .entries
            .get(EntryKind::AccountToken, &id)?
            .filter(|e| e.version.as_ref().is_some_and(|v| v.region == self.region))
            .ok_or_else(refused)?;
        let stored = proto::AccountToken::decode(entry.value.as_slice()).map_err(|_| refused())?;
        let live = |t: &proto::AccountToken| {
            crate::crypto::primitives::ct_eq(&t.secret_hash, &hash)
                && t.used_ms == 0
                && now < t.expires_ms
                && t.purpose == purpose.name()
        };
        if !live(&stored) {
            return Err(refused());
        }
        let user = Uuid::from_slice(&stored.user_id).map_err(|_| refused())?;
        let record = match self.load_changeable(&user) {
            Ok(r) => r,
            Err(UserError::NotFound | UserError::Merged(_)) => return Err(refused()),
            Err(e) => return Err(e),
        };
        let reset_stale = purpose == Purpose::Reset
            && (record.email_index != stored.address_index
                || stored.created_ms < record.credentials_changed_ms);
        if record.status != Status::Active as i32 || reset_stale {
            return Err(refused());
        }
        if let Some(password) = password {
            let info = self.open_info(&record)?;
            if !info.email.is_empty() && password.to_lowercase() == info.email.to_lowercase() {
                return Err(UserError::Invalid(vec![Problem::new(
                    "password",
                    "must not be the email address",
                )]));
            }
        }
        // Taken under the entry's lock, with no record lock held: spent before it acts,
        // so a second redemption, concurrent or later, finds it used.
        let mut taken = None;
        self.entries
            .update(EntryKind::AccountToken, &id, |stored| {
                let mut t = proto::AccountToken::decode(stored?.value.as_slice()).ok()?;
                if !live(&t) {
                    return None;
                }
                t.used_ms = now.max(1);
                taken = Some(t.clone());
                Some(t.encode_to_vec())
            })?;
        let t = taken.ok_or_else(refused)?;
        let user = Uuid::from_slice(&t.user_id).map_err(|_| UserError::Unreadable)?;
        if let Some(password) = password {
            self.set_password(&user, password)?;
        }
        self.mark_verified(&user, purpose, &t.address_index)?;
        Ok(Redeemed { user, purpose })
    }

    /// Marks the address whose blind index is `index` proven, if it is still the
    /// account's: an address changed since the token was sent is not.
    fn mark_verified(&self, id: &Uuid, purpose: Purpose, index: &[u8]) -> Result<(), UserError> {
        let _locked = self.store.lock(&[id.as_bytes()]);
        let previous = self.load_changeable(id)?;
        let (mut info, key) = self.opened(&previous)?;
        let changed = match purpose {
            Purpose::Reset | Purpose::VerifyEmail if previous.email_index == index => {
                !std::mem::replace(&mut info.email_verified, true)
            }
            Purpose::VerifyPhone if previous.phone_index == index => {
                !std::mem::replace(&mut info.phone_verified, true)
            }
            _ => false,
        };
        if changed {
            self.commit(Some((&previous, &key)), previous.clone(), &info, "verified")?;
        }
        Ok(())
    }

    /// Removes the account tokens that can never be used again: expired (a used one is
    /// kept until then, so no late copy without the use brings it back).
    pub fn sweep_account_tokens(&self) -> Result<usize, UserError> {
        let now = self.clock_now_ms();
        self.entries.sweep(EntryKind::AccountToken, |e| {
            proto::AccountToken::decode(e.value.as_slice()).is_ok_and(|t| now >= t.expires_ms)
        })
    }
}
