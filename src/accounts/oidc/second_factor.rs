//! The hosted page's second step: a customer whose password was right, for an account
//! with a second factor, is asked the code on a page of its own. Between the two, a
//! pending sign-in lives in the memory of this node for [`PENDING_TTL_MS`], named by a
//! secret the page carries (only its SHA-256 is kept), good for
//! [`MAX_TRIES`] codes; each code goes through the account's lockout as a login does
//! ([`crate::accounts::users::Users::login_second_factor`]).

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use uuid::Uuid;

use super::{random, sha256, Oidc};
use crate::accounts::error::UserError;

/// How long a pending sign-in waits for its code.
pub const PENDING_TTL_MS: u64 = 5 * 60 * 1000;
/// Codes one pending sign-in takes before the customer must sign in again.
pub const MAX_TRIES: u32 = 5;
/// The most pending sign-ins a node holds; past it, the oldest expire first.
const MAX_PENDING: usize = 10_000;

/// A sign-in waiting for its second factor.
#[derive(Debug, Clone)]
pub struct Pending {
    pub user: Uuid,
    pub credentials_ms: u64,
    expires_ms: u64,
    tries: u32,
}

impl Oidc {
    /// Holds a sign-in of `user` whose password was right (at credentials
    /// `credentials_ms`) until its code comes; returns the secret the page carries.
    pub fn begin_second_factor(
        &self,
        user: Uuid,
        credentials_ms: u64,
    ) -> Result<String, UserError> {
        let secret = random::<32>()?;
        let now = self.now_ms();
        let mut pending = self.pending.lock();
        pending.retain(|_, p| p.expires_ms > now);
        if pending.len() >= MAX_PENDING {
            if let Some(oldest) = pending
                .iter()
                .min_by_key(|(_, p)| p.expires_ms)
                .map(|(k, _)| *k)
            {
                pending.remove(&oldest);
            }
        }
        pending.insert(
            sha256(&secret),
            Pending {
                user,
                credentials_ms,
                expires_ms: now + PENDING_TTL_MS,
                tries: 0,
            },
        );
        Ok(format!("sf1.{}", B64.encode(secret)))
    }

    /// The pending sign-in `token` names, counting one try; `None` once it expired,
    /// used up its tries, or never was.
    pub fn second_factor_try(&self, token: &str) -> Option<Pending> {
        let key = pending_key(token)?;
        let now = self.now_ms();
        let mut pending = self.pending.lock();
        let p = pending.get_mut(&key)?;
        if p.expires_ms <= now || p.tries >= MAX_TRIES {
            pending.remove(&key);
            return None;
        }
        p.tries += 1;
        Some(p.clone())
    }

    /// Ends the pending sign-in `token` names (its code was right, or its account
    /// changed).
    pub fn end_second_factor(&self, token: &str) {
        if let Some(key) = pending_key(token) {
            self.pending.lock().remove(&key);
        }
    }
}

fn pending_key(token: &str) -> Option<[u8; 32]> {
    let secret = B64.decode(token.strip_prefix("sf1.")?).ok()?;
    (secret.len() == 32).then(|| sha256(&secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_sign_in_takes_a_few_tries_and_nothing_else_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let o = crate::accounts::oidc::tests::oidc(dir.path());
        let user = Uuid::from_bytes([3; 16]);
        let token = o.begin_second_factor(user, 7).unwrap();
        for _ in 0..MAX_TRIES {
            let p = o.second_factor_try(&token).unwrap();
            assert_eq!((p.user, p.credentials_ms), (user, 7));
        }
        assert!(o.second_factor_try(&token).is_none(), "tries used up");
        for bad in ["", "sf1.", "sf1.AAAA", &token.replace("sf1.", "sf2.")] {
            assert!(o.second_factor_try(bad).is_none(), "{bad}");
        }
        let other = o.begin_second_factor(user, 7).unwrap();
        o.end_second_factor(&other);
        assert!(o.second_factor_try(&other).is_none(), "ended");
    }
}
