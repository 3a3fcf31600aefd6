//! Brute-force protection of logins, per account and shared by every region.
//!
//! After [`FREE_FAILURES`] consecutive failed logins, each further attempt must wait
//! 2^(n−5) s after the last failure, n being the failures so far, at most
//! [`MAX_WAIT_MS`]; after [`DAILY_CEILING`] failures, a day. A good password resets
//! the count, and so does a day without failures ([`IDLE_RESET_MS`], longer than any
//! wait, so waiting out the backoff never brings the free attempts back). An attempt
//! that comes too early is refused without hashing.
//!
//! What that leaves an attacker who paces guesses at the allowed rate, against one
//! account, all regions together: 5 at once, 10 more within 17 minutes, then one every
//! 15 minutes up to [`DAILY_CEILING`] (50) failures about 9 hours in, then one a day.
//! Measured by `a_paced_attacker_gets_at_most_the_daily_ceiling_per_day`.
//!
//! The count is kept as replicated [`crate::accounts::entries`], one per (subject, region). Each
//! region writes only its own entry: its current streak of failures, and when it last
//! saw a good password. No two regions ever write the same entry, so nothing is lost to
//! last-writer-wins. The count a region acts on is the sum of every region's streak
//! that began after the latest good password anywhere, so an attacker gains nothing by
//! switching regions (within the replication lag).
//!
//! Within a region, an attempt is checked and counted in one step
//! ([`Lockout::begin`]): attempts whose password is still being verified count as
//! failures to the attempts that come after them, so concurrent guesses cannot all pass
//! the check before the first failure is written.
//!
//! The subject is the account's id, or, for a login that matches no account, the
//! login's blind index. Unknown logins are counted and refused exactly like known
//! ones, so the answers do not tell whether an account exists.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use prost::Message;

use crate::accounts::entries::Entries;
use crate::accounts::error::UserError;
use crate::proto::{self, EntryKind};

/// Failures allowed before attempts have to wait.
pub const FREE_FAILURES: u32 = 5;
/// The longest wait between attempts below the daily ceiling: 15 minutes.
pub const MAX_WAIT_MS: u64 = 15 * 60 * 1000;
const DAY_MS: u64 = 24 * 60 * 60 * 1000;
/// Failures after which every further attempt waits a day.
pub const DAILY_CEILING: u32 = 50;
/// Without a failure for this long, the count starts again: longer than any wait.
pub const IDLE_RESET_MS: u64 = DAY_MS + 60 * 60 * 1000;

/// How long the attempt after `failures` consecutive failures must wait after the last.
pub fn wait_ms(failures: u32) -> u64 {
    if failures < FREE_FAILURES {
        return 0;
    }
    if failures >= DAILY_CEILING {
        return DAY_MS;
    }
    let exp = failures - FREE_FAILURES;
    if exp >= 20 {
        return MAX_WAIT_MS;
    }
    (1000u64 << exp).min(MAX_WAIT_MS)
}

/// An account's standing, from every region's entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Standing {
    /// Consecutive failures that count.
    pub failures: u32,
    /// The last of them.
    pub last_failure_ms: u64,
    /// The latest good password seen in any region.
    pub cleared_ms: u64,
}

impl Standing {
    /// From each region's entry, at `now_ms`.
    pub fn of(entries: &[proto::LoginFailures], now_ms: u64) -> Standing {
        let cleared_ms = entries.iter().map(|e| e.cleared_ms).max().unwrap_or(0);
        let mut s = Standing {
            cleared_ms,
            ..Default::default()
        };
        let counting = || {
            entries
                .iter()
                .filter(move |e| e.count > 0 && e.first_ms > cleared_ms)
        };
        // The streak is idle only when it is idle everywhere: a region that stopped
        // failing keeps its count while another goes on.
        let last_ms = counting().map(|e| e.last_ms).max().unwrap_or(0);
        if now_ms >= last_ms.saturating_add(IDLE_RESET_MS) {
            return s;
        }
        for e in counting() {
            s.failures = s.failures.saturating_add(e.count);
        }
        s.last_failure_ms = last_ms;
        s
    }

    /// How long from `now_ms` until the next attempt may be made (0: now).
    pub fn retry_after_ms(&self, now_ms: u64) -> u64 {
        self.last_failure_ms
            .saturating_add(wait_ms(self.failures))
            .saturating_sub(now_ms)
    }

    /// This standing with `pending` attempts, still being verified, counted as failures
    /// made at `now_ms`.
    fn with_pending(&self, pending: u32, now_ms: u64) -> Standing {
        if pending == 0 {
            return *self;
        }
        Standing {
            failures: self.failures.saturating_add(pending),
            last_failure_ms: self.last_failure_ms.max(now_ms),
            cleared_ms: self.cleared_ms,
        }
    }
}

/// Stripes of the in-flight attempts, so that logins to different accounts rarely
/// wait for each other's check.
const STRIPES: usize = 64;

/// One stripe: subject → attempts of it in flight.
type Stripe = Mutex<HashMap<Vec<u8>, u32>>;

pub struct Lockout {
    entries: Arc<Entries>,
    region: String,
    /// Subject → attempts between their check and their outcome, by stripe.
    in_flight: Box<[Stripe]>,
}

/// A login attempt that passed the check ([`Lockout::begin`]); until it is dropped it
/// counts as a failure to the attempts after it. Record its outcome with
/// [`Lockout::failed`] or [`Lockout::succeeded`] before dropping it.
pub struct Attempt<'a> {
    lockout: &'a Lockout,
    subject: Vec<u8>,
    standing: Standing,
}

impl Attempt<'_> {
    /// The standing the check read (the attempts in flight not counted).
    pub fn standing(&self) -> &Standing {
        &self.standing
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        let mut flying = self.lockout.stripe(&self.subject).lock();
        if let Some(n) = flying.get_mut(&self.subject) {
            *n -= 1;
            if *n == 0 {
                flying.remove(&self.subject);
            }
        }
    }
}

/// The entry key of (subject, region): the subject's length first, so that subjects of
/// different lengths never share a prefix.
fn key(subject: &[u8], region: &str) -> Vec<u8> {
    let mut k = prefix(subject);
    k.extend_from_slice(region.as_bytes());
    k
}

fn prefix(subject: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + subject.len() + 16);
    k.push(subject.len() as u8);
    k.extend_from_slice(subject);
    k
}

impl Lockout {
    pub fn new(entries: Arc<Entries>, region: &str) -> Lockout {
        Lockout {
            entries,
            region: region.to_string(),
            in_flight: (0..STRIPES).map(|_| Mutex::default()).collect(),
        }
    }

    fn stripe(&self, subject: &[u8]) -> &Stripe {
        let h = subject.iter().fold(0usize, |h, b| {
            h.wrapping_mul(31).wrapping_add(usize::from(*b))
        });
        &self.in_flight[h % STRIPES]
    }

    /// Checks an attempt for `subject` at `now_ms` and, when it may go ahead, holds its
    /// place: the attempts of this region still in flight count as failures, so of many
    /// concurrent attempts only as many pass as the standing allows. Refused with
    /// [`UserError::TooManyAttempts`] before any hashing.
    pub fn begin(&self, subject: &[u8], now_ms: u64) -> Result<Attempt<'_>, UserError> {
        let mut flying = self.stripe(subject).lock();
        // Read under the stripe's lock: a failure is written before its attempt leaves
        // the in-flight count, so every finished attempt is in one or the other.
        let standing = self.standing_of(subject, now_ms)?;
        let pending = flying.get(subject).copied().unwrap_or(0);
        let retry_after_ms = standing
            .with_pending(pending, now_ms)
            .retry_after_ms(now_ms);
        if retry_after_ms > 0 {
            return Err(UserError::TooManyAttempts { retry_after_ms });
        }
        *flying.entry(subject.to_vec()).or_default() += 1;
        Ok(Attempt {
            lockout: self,
            subject: subject.to_vec(),
            standing,
        })
    }

    /// Removes the entries of every subject whose entries all stopped counting: no
    /// failure for [`IDLE_RESET_MS`] in any region, or an account that `erased` says
    /// is gone. Returns how many were removed.
    pub fn sweep(&self, now_ms: u64, erased: impl Fn(&[u8]) -> bool) -> Result<usize, UserError> {
        let idle = |e: &proto::LoginFailures| {
            now_ms >= e.last_ms.max(e.cleared_ms).saturating_add(IDLE_RESET_MS)
        };
        let mut by_subject: std::collections::BTreeMap<Vec<u8>, Vec<(Vec<u8>, bool)>> =
            Default::default();
        for e in self.entries.all(EntryKind::LoginFailures)? {
            let Some(subject) = e
                .key
                .first()
                .and_then(|&n| e.key.get(1..1 + usize::from(n)))
            else {
                continue;
            };
            let dead = proto::LoginFailures::decode(e.value.as_slice()).is_ok_and(|f| idle(&f));
            by_subject
                .entry(subject.to_vec())
                .or_default()
                .push((e.key, dead));
        }
        let mut removed = 0;
        for (subject, keys) in by_subject {
            let gone = erased(&subject);
            if !gone && !keys.iter().all(|(_, dead)| *dead) {
                continue;
            }
            for (key, _) in keys {
                let still_dead = |e: &proto::Entry| {
                    gone || proto::LoginFailures::decode(e.value.as_slice()).is_ok_and(|f| idle(&f))
                };
                if self
                    .entries
                    .remove_if(EntryKind::LoginFailures, &key, still_dead)?
                {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Every region's entry for `subject`, by entry key.
    fn read(&self, subject: &[u8]) -> Result<Vec<(Vec<u8>, proto::LoginFailures)>, UserError> {
        Ok(self
            .entries
            .with_prefix(EntryKind::LoginFailures, &prefix(subject))?
            .into_iter()
            .filter_map(|e| {
                let f = proto::LoginFailures::decode(e.value.as_slice()).ok()?;
                Some((e.key, f))
            })
            .collect())
    }

    fn standing(all: &[(Vec<u8>, proto::LoginFailures)], now_ms: u64) -> Standing {
        let entries: Vec<proto::LoginFailures> = all.iter().map(|(_, f)| *f).collect();
        Standing::of(&entries, now_ms)
    }

    /// `subject`'s standing now: an attempt must wait `retry_after_ms` of it.
    pub fn standing_of(&self, subject: &[u8], now_ms: u64) -> Result<Standing, UserError> {
        Ok(Self::standing(&self.read(subject)?, now_ms))
    }

    /// Counts a failed attempt; returns the standing it leaves.
    pub fn failed(&self, subject: &[u8], now_ms: u64) -> Result<Standing, UserError> {
        let mut all = self.read(subject)?;
        let cleared_ms = all.iter().map(|(_, e)| e.cleared_ms).max().unwrap_or(0);
        // Idle everywhere: every region's streak is over.
        let idle = Self::standing(&all, now_ms).failures == 0;
        let own_key = key(subject, &self.region);
        let written = self
            .entries
            .update(EntryKind::LoginFailures, &own_key, |stored| {
                let mut own = stored
                    .and_then(|e| proto::LoginFailures::decode(e.value.as_slice()).ok())
                    .unwrap_or_default();
                let streak_over = own.count == 0 || own.first_ms <= cleared_ms || idle;
                if streak_over {
                    own.count = 1;
                    // After the clear, even when the clock says otherwise.
                    own.first_ms = now_ms.max(cleared_ms.saturating_add(1));
                } else {
                    own.count = own.count.saturating_add(1);
                }
                own.last_ms = now_ms.max(own.first_ms);
                Some(own.encode_to_vec())
            })?;
        // The entries as read, with this region's replaced by what was written.
        all.retain(|(k, _)| *k != own_key);
        if let Some(own) =
            written.and_then(|e| proto::LoginFailures::decode(e.value.as_slice()).ok())
        {
            all.push((own_key, own));
        }
        Ok(Self::standing(&all, now_ms))
    }

    /// A good password: the count starts again, in every region. Nothing is written
    /// when `before` (the standing read for this attempt) had nothing to reset.
    pub fn succeeded(
        &self,
        subject: &[u8],
        now_ms: u64,
        before: &Standing,
    ) -> Result<(), UserError> {
        if before.failures == 0 {
            return Ok(());
        }
        self.entries.update(
            EntryKind::LoginFailures,
            &key(subject, &self.region),
            |_| {
                Some(
                    proto::LoginFailures {
                        count: 0,
                        first_ms: 0,
                        last_ms: 0,
                        cleared_ms: now_ms,
                    }
                    .encode_to_vec(),
                )
            },
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_from_the_sixth_attempt_up_to_fifteen_minutes() {
        assert_eq!((0..5).map(wait_ms).collect::<Vec<_>>(), vec![0; 5]);
        assert_eq!(wait_ms(5), 1_000);
        assert_eq!(wait_ms(6), 2_000);
        assert_eq!(wait_ms(10), 32_000);
        assert_eq!(wait_ms(14), 512_000);
        assert_eq!(wait_ms(15), MAX_WAIT_MS);
        assert_eq!(wait_ms(DAILY_CEILING - 1), MAX_WAIT_MS);
        assert_eq!(wait_ms(DAILY_CEILING), DAY_MS);
        assert_eq!(wait_ms(u32::MAX), DAY_MS);
        const { assert!(IDLE_RESET_MS > DAY_MS, "waiting never resets the count") };
    }

    fn streak(count: u32, first_ms: u64, last_ms: u64) -> proto::LoginFailures {
        proto::LoginFailures {
            count,
            first_ms,
            last_ms,
            cleared_ms: 0,
        }
    }

    #[test]
    fn streaks_add_up_across_regions_until_a_good_password_or_idle_time() {
        let now = 10_000_000;
        let a = streak(3, now - 5_000, now - 1_000);
        let b = streak(3, now - 4_000, now - 500);
        let s = Standing::of(&[a, b], now);
        assert_eq!((s.failures, s.last_failure_ms), (6, now - 500));
        assert_eq!(s.retry_after_ms(now), 1_500, "2 s after the last failure");
        // A good password in a third region after both streaks began: nothing counts.
        let cleared = proto::LoginFailures {
            cleared_ms: now - 100,
            ..Default::default()
        };
        assert_eq!(Standing::of(&[a, b, cleared], now).failures, 0);
        // A streak that began after the clear counts.
        let early_clear = proto::LoginFailures {
            cleared_ms: now - 4_500,
            ..Default::default()
        };
        assert_eq!(Standing::of(&[a, b, early_clear], now).failures, 3);
        // Idle past the reset: nothing counts.
        assert_eq!(Standing::of(&[a, b], now + IDLE_RESET_MS).failures, 0);
    }

    fn lockouts(dir: &std::path::Path, regions: &[&str]) -> Vec<Lockout> {
        let store = Arc::new(
            crate::storage::store::Store::open(
                dir,
                &crate::storage::store::StoreOptions::default(),
            )
            .unwrap(),
        );
        let hlc = Arc::new(crate::common::hlc::Hlc::new(
            "af-south",
            500,
            Box::new(crate::common::hlc::SystemClock),
        ));
        let entries = Arc::new(Entries::new(
            store,
            hlc,
            crate::crypto::keyring::test_keyring("af-south"),
            Arc::new(tokio::sync::Notify::new()),
        ));
        regions
            .iter()
            .map(|r| Lockout::new(entries.clone(), r))
            .collect()
    }

    /// The attack: guesses paced at exactly the rate the lockout allows, for three days,
    /// round-robin over three regions (which share one store here, as replication
    /// would make them after the lag).
    #[test]
    fn a_paced_attacker_gets_at_most_the_daily_ceiling_per_day() {
        let dir = tempfile::tempdir().unwrap();
        let regions = lockouts(dir.path(), &["af-south", "eu-west", "us-east"]);
        let start = 10_000_000_000u64;
        let mut now = start;
        let mut per_day = [0u32; 3];
        let mut turn = 0;
        while now < start + 3 * DAY_MS {
            let region = &regions[turn % 3];
            let attempt = region.begin(b"victim", now);
            match attempt {
                Ok(a) => {
                    region.failed(b"victim", now).unwrap();
                    drop(a);
                    per_day[((now - start) / DAY_MS) as usize] += 1;
                    turn += 1;
                }
                Err(UserError::TooManyAttempts { retry_after_ms }) => now += retry_after_ms,
                Err(e) => panic!("{e:?}"),
            }
        }
        assert!(per_day[0] <= DAILY_CEILING, "{per_day:?}");
        assert!(per_day[1] <= 2 && per_day[2] <= 2, "{per_day:?}");
    }

    #[test]
    fn the_sweep_removes_subjects_idle_in_every_region_and_erased_accounts() {
        let dir = tempfile::tempdir().unwrap();
        let mut both = lockouts(dir.path(), &["af-south", "eu-west"]);
        let there = both.pop().unwrap();
        let here = both.pop().unwrap();
        let now = 10_000_000_000;
        let long_ago = now - IDLE_RESET_MS - 1;
        here.failed(b"idle", long_ago).unwrap();
        there.failed(b"idle", long_ago).unwrap();
        here.failed(b"busy", now - 1_000).unwrap();
        // Idle here, not in eu-west: the subject still counts, so both entries stay.
        here.failed(b"mixed", long_ago).unwrap();
        there.failed(b"mixed", now - 1_000).unwrap();
        here.failed(b"an erased account", now - 1_000).unwrap();
        let removed = here
            .sweep(now, |subject| subject == b"an erased account")
            .unwrap();
        assert_eq!(removed, 3, "idle in both regions, and the erased account");
        assert!(here.read(b"idle").unwrap().is_empty());
        assert!(here.read(b"an erased account").unwrap().is_empty());
        assert_eq!(here.read(b"mixed").unwrap().len(), 2);
        assert_eq!(here.standing_of(b"busy", now).unwrap().failures, 1);
        assert_eq!(
            here.sweep(now, |_| false).unwrap(),
            0,
            "nothing left to remove"
        );
    }
}
