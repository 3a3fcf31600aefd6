//! Brute-force protection of logins, per account and shared by every region.
//!
//! After [`FREE_FAILURES`] consecutive failed logins, each further attempt must wait
//! 2^(n−5) s after the last failure, n being the failures so far, at most
//! [`MAX_WAIT_MS`]. A good password resets the count, and so do [`IDLE_RESET_MS`]
//! without failures. An attempt that comes too early is refused without hashing.
//!
//! The count is kept as replicated [`crate::accounts::entries`], one per (subject, region). Each
//! region writes only its own entry: its current streak of failures, and when it last
//! saw a good password. No two regions ever write the same entry, so nothing is lost to
//! last-writer-wins. The count a region acts on is the sum of every region's streak
//! that began after the latest good password anywhere, so an attacker gains nothing by
//! switching regions (within the replication lag).
//!
//! The subject is the account's id, or, for a login that matches no account, the
//! login's blind index. Unknown logins are counted and refused exactly like known
//! ones, so the answers do not tell whether an account exists.

use std::sync::Arc;

use prost::Message;

use crate::accounts::entries::Entries;
use crate::accounts::error::UserError;
use crate::proto::{self, EntryKind};

/// Failures allowed before attempts have to wait.
pub const FREE_FAILURES: u32 = 5;
/// The longest wait between attempts: 15 minutes.
pub const MAX_WAIT_MS: u64 = 15 * 60 * 1000;
/// Without a failure for this long, the count starts again.
pub const IDLE_RESET_MS: u64 = 15 * 60 * 1000;

/// How long the attempt after `failures` consecutive failures must wait after the last.
pub fn wait_ms(failures: u32) -> u64 {
    if failures < FREE_FAILURES {
        return 0;
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
        for e in entries {
            if e.count > 0 && e.first_ms > cleared_ms && now_ms < e.last_ms + IDLE_RESET_MS {
                s.failures = s.failures.saturating_add(e.count);
                s.last_failure_ms = s.last_failure_ms.max(e.last_ms);
            }
        }
        s
    }

    /// How long from `now_ms` until the next attempt may be made (0: now).
    pub fn retry_after_ms(&self, now_ms: u64) -> u64 {
        (self.last_failure_ms + wait_ms(self.failures)).saturating_sub(now_ms)
    }
}

pub struct Lockout {
    entries: Arc<Entries>,
    region: String,
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
        }
    }

    /// Removes the entries of every subject whose entries all stopped counting: no
    /// failure for [`IDLE_RESET_MS`] in any region, or an account that `erased` says
    /// is gone. Returns how many were removed.
    pub fn sweep(&self, now_ms: u64, erased: impl Fn(&[u8]) -> bool) -> Result<usize, UserError> {
        let idle = |e: &proto::LoginFailures| now_ms >= e.last_ms.max(e.cleared_ms) + IDLE_RESET_MS;
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
        let own_key = key(subject, &self.region);
        let written = self
            .entries
            .update(EntryKind::LoginFailures, &own_key, |stored| {
                let mut own = stored
                    .and_then(|e| proto::LoginFailures::decode(e.value.as_slice()).ok())
                    .unwrap_or_default();
                let streak_over = own.count == 0
                    || own.first_ms <= cleared_ms
                    || now_ms >= own.last_ms + IDLE_RESET_MS;
                if streak_over {
                    own.count = 1;
                    // After the clear, even when the clock says otherwise.
                    own.first_ms = now_ms.max(cleared_ms + 1);
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
        assert_eq!(wait_ms(u32::MAX), MAX_WAIT_MS);
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
        // Fifteen idle minutes: nothing counts.
        assert_eq!(Standing::of(&[a, b], now + IDLE_RESET_MS).failures, 0);
    }

    #[test]
    fn the_sweep_removes_subjects_idle_in_every_region_and_erased_accounts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            crate::storage::store::Store::open(
                dir.path(),
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
            &[1; 32],
            Arc::new(tokio::sync::Notify::new()),
        ));
        let here = Lockout::new(entries.clone(), "af-south");
        let there = Lockout::new(entries, "eu-west");
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
