//! The hosted page's second step: a customer whose password was right, for an account
//! with a second factor, is asked the code on a page of its own. Between the two, a
//! pending sign-in lives in the memory of this node for [`PENDING_TTL_MS`], named by a
//! secret the page carries (only its SHA-256 is kept), good for
//! [`MAX_TRIES`] codes; each code goes through the account's lockout as a login does
//! ([`crate::accounts::users::Users::login_second_factor`]).

use std::collections::HashMap;

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
/// The most one account has pending at once; past it, its own oldest goes (so that
/// the password of one account cannot push out everyone else's).
const MAX_PENDING_PER_ACCOUNT: usize = 4;

/// The sign-ins waiting on this node, by the SHA-256 of their secret.
#[derive(Debug, Default)]
pub struct PendingSet {
    by_key: HashMap<[u8; 32], Pending>,
    /// The order they came in, for the oldest to go first.
    next: u64,
}

/// A sign-in waiting for its second factor.
#[derive(Debug, Clone)]
pub struct Pending {
    order: u64,
    pub user: Uuid,
    pub credentials_ms: u64,
    /// The client the sign-in is for: the code must come with its request.
    client_id: String,
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
        client_id: &str,
    ) -> Result<String, UserError> {
        let secret = random::<32>()?;
        let now = self.now_ms();
        let mut set = self.pending.lock();
        let order = set.next;
        set.next += 1;
        let pending = &mut set.by_key;
        pending.retain(|_, p| p.expires_ms > now);
        let mut own: Vec<([u8; 32], u64)> = pending
            .iter()
            .filter(|(_, p)| p.user == user)
            .map(|(k, p)| (*k, p.order))
            .collect();
        own.sort_by_key(|(_, order)| *order);
        let excess = (own.len() + 1).saturating_sub(MAX_PENDING_PER_ACCOUNT);
        for (k, _) in own.iter().take(excess) {
            pending.remove(k);
        }
        if pending.len() >= MAX_PENDING {
            if let Some(oldest) = pending.iter().min_by_key(|(_, p)| p.order).map(|(k, _)| *k) {
                pending.remove(&oldest);
            }
        }
        pending.insert(
            sha256(&secret),
            Pending {
                order,
                user,
                credentials_ms,
                client_id: client_id.to_string(),
                expires_ms: now + PENDING_TTL_MS,
                tries: 0,
            },
        );
        Ok(format!("sf1.{}", B64.encode(secret)))
    }

    /// The pending sign-in `token` names for `client_id`, counting one try; `None`
    /// once it expired, used up its tries, is another client's, or never was.
    pub fn second_factor_try(&self, token: &str, client_id: &str) -> Option<Pending> {
        let key = pending_key(token)?;
        let now = self.now_ms();
        let mut set = self.pending.lock();
        let pending = &mut set.by_key;
        let p = pending.get_mut(&key)?;
        if p.client_id != client_id {
            return None;
        }
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
            self.pending.lock().by_key.remove(&key);
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
        let token = o.begin_second_factor(user, 7, "c_shop").unwrap();
        assert!(
            o.second_factor_try(&token, "c_other").is_none(),
            "another client's"
        );
        for _ in 0..MAX_TRIES {
            let p = o.second_factor_try(&token, "c_shop").unwrap();
            assert_eq!((p.user, p.credentials_ms), (user, 7));
        }
        assert!(
            o.second_factor_try(&token, "c_shop").is_none(),
            "tries used up"
        );
        for bad in ["", "sf1.", "sf1.AAAA", &token.replace("sf1.", "sf2.")] {
            assert!(o.second_factor_try(bad, "c_shop").is_none(), "{bad}");
        }
        let other = o.begin_second_factor(user, 7, "c_shop").unwrap();
        o.end_second_factor(&other);
        assert!(o.second_factor_try(&other, "c_shop").is_none(), "ended");
    }

    /// The attack: the password of one's own account, signed in over and over, to
    /// push everyone else's pending sign-ins out. Only one's own go.
    #[test]
    fn one_account_keeps_only_a_few_sign_ins_pending() {
        let dir = tempfile::tempdir().unwrap();
        let o = crate::accounts::oidc::tests::oidc(dir.path());
        let victim = o
            .begin_second_factor(Uuid::from_bytes([1; 16]), 0, "c")
            .unwrap();
        let mine: Vec<String> = (0..50)
            .map(|_| {
                o.begin_second_factor(Uuid::from_bytes([2; 16]), 0, "c")
                    .unwrap()
            })
            .collect();
        assert_eq!(o.pending.lock().by_key.len(), 1 + MAX_PENDING_PER_ACCOUNT);
        assert!(o.second_factor_try(&victim, "c").is_some());
        assert!(
            o.second_factor_try(&mine[0], "c").is_none(),
            "its own oldest went"
        );
        assert!(o.second_factor_try(&mine[49], "c").is_some());
    }
}
