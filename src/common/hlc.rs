//! Hybrid logical clock and record versions.
//!
//! A version is `(physical_ms, logical, region)`. Physical time is wall-clock
//! milliseconds; the logical counter orders events within one millisecond and events
//! received from a clock that runs ahead. Versions are totally ordered, which is what
//! last-writer-wins needs: two regions comparing the same pair of versions always pick
//! the same winner.
//!
//! The logical counter is kept below [`LOGICAL_LIMIT`] (1024) so that a version packs
//! into one integer below 2^53 (`physical_ms * 1024 + logical`), exact in every JSON
//! implementation. When more than 1024 events fall in one millisecond the clock borrows
//! the next millisecond, as HLC does when the counter would overflow.

use std::cmp::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::common::config::{invalid, Invalid};
use crate::proto;
use serde::{Deserialize, Serialize};

/// Logical ticks per millisecond.
pub const LOGICAL_LIMIT: u32 = 1024;

/// A record version: HLC timestamp plus origin region.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version {
    pub physical_ms: u64,
    pub logical: u32,
    pub region: String,
}

impl Version {
    /// Below every real version: what a record or entry without one counts as.
    pub fn zero() -> Version {
        Version {
            physical_ms: 0,
            logical: 0,
            region: String::new(),
        }
    }

    /// The packed timestamp shown to API callers: `physical_ms * 1024 + logical`.
    pub fn ts(&self) -> u64 {
        // Saturating: a version from the network may carry any value.
        self.physical_ms
            .saturating_mul(u64::from(LOGICAL_LIMIT))
            .saturating_add(u64::from(self.logical))
    }

    pub fn to_proto(&self) -> proto::Version {
        proto::Version {
            physical_ms: self.physical_ms,
            logical: self.logical,
            region: self.region.clone(),
        }
    }

    pub fn from_proto(v: &proto::Version) -> Version {
        Version {
            physical_ms: v.physical_ms,
            logical: v.logical,
            region: v.region.clone(),
        }
    }

    /// Canonical bytes for hashing and associated data: fixed-width, then the region
    /// with its length so no two versions share an encoding.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.physical_ms.to_be_bytes());
        out.extend_from_slice(&self.logical.to_be_bytes());
        out.extend_from_slice(&(self.region.len() as u32).to_be_bytes());
        out.extend_from_slice(self.region.as_bytes());
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.physical_ms, self.logical, self.region.as_str()).cmp(&(
            other.physical_ms,
            other.logical,
            other.region.as_str(),
        ))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Why a remote timestamp was not taken into the clock.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("timestamp {remote_ms} ms is {ahead_ms} ms ahead of local time (limit {limit_ms} ms)")]
pub struct ClockSkew {
    pub remote_ms: u64,
    pub ahead_ms: u64,
    pub limit_ms: u64,
}

/// Where physical time comes from; tests and fault injection shift it.
pub trait TimeSource: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// Wall-clock time.
#[derive(Debug, Default)]
pub struct SystemClock;

impl TimeSource for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A hybrid logical clock for one region.
pub struct Hlc {
    region: String,
    max_skew_ms: u64,
    time: Box<dyn TimeSource>,
    last: Mutex<(u64, u32)>,
}

impl Hlc {
    pub fn new(region: impl Into<String>, max_skew_ms: u64, time: Box<dyn TimeSource>) -> Hlc {
        Hlc {
            region: region.into(),
            max_skew_ms,
            time,
            last: Mutex::new((0, 0)),
        }
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    /// Current physical time in milliseconds.
    pub fn physical_now(&self) -> u64 {
        self.time.now_ms()
    }

    /// A new version for a local write: strictly greater than every version this clock
    /// has issued or observed.
    pub fn tick(&self) -> Version {
        let now = self.time.now_ms();
        let mut last = self.last.lock();
        let (pt, l) = *last;
        let next = if now > pt { (now, 0) } else { bump(pt, l) };
        *last = next;
        Version {
            physical_ms: next.0,
            logical: next.1,
            region: self.region.clone(),
        }
    }

    /// A new version for a local change of a record whose stored version is `previous`:
    /// greater than `previous` whatever the wall clock says (after a restart the clock
    /// starts from wall time, which may be behind versions received from a peer whose
    /// clock ran ahead). `previous` was accepted before, so no skew check applies.
    pub fn tick_after(&self, previous: Option<&Version>) -> Version {
        if let Some(p) = previous {
            let mut last = self.last.lock();
            let seen = (p.physical_ms, p.logical.min(LOGICAL_LIMIT - 1));
            if seen > *last {
                *last = seen;
            }
        }
        self.tick()
    }

    /// Takes a version seen from elsewhere into the clock so later local writes order
    /// after it. A timestamp further ahead of local time than the configured skew is
    /// refused and leaves the clock unchanged.
    pub fn observe(&self, seen: &Version) -> Result<(), ClockSkew> {
        let now = self.time.now_ms();
        if seen.physical_ms > now.saturating_add(self.max_skew_ms) {
            return Err(ClockSkew {
                remote_ms: seen.physical_ms,
                ahead_ms: seen.physical_ms - now,
                limit_ms: self.max_skew_ms,
            });
        }
        let mut last = self.last.lock();
        let remote = (seen.physical_ms, seen.logical.min(LOGICAL_LIMIT - 1));
        if remote > *last {
            *last = remote;
        }
        Ok(())
    }
}

fn bump(pt: u64, l: u32) -> (u64, u32) {
    if l + 1 >= LOGICAL_LIMIT {
        (pt + 1, 0)
    } else {
        (pt, l + 1)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClockConfig {
    /// How far ahead of local time a received timestamp may be. Default 500 ms.
    pub max_skew_ms: u64,
}

impl Default for ClockConfig {
    fn default() -> Self {
        ClockConfig { max_skew_ms: 500 }
    }
}

impl ClockConfig {
    /// Checks the `[clock]` section.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.max_skew_ms == 0 || self.max_skew_ms > 3_600_000 {
            return Err(invalid(
                "clock.max_skew_ms",
                "must be between 1 and 3600000",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
    use std::sync::Arc;

    struct Fixed(Arc<AtomicU64>);
    impl TimeSource for Fixed {
        fn now_ms(&self) -> u64 {
            self.0.load(AtomicOrdering::SeqCst)
        }
    }

    fn clock(at: u64) -> (Hlc, Arc<AtomicU64>) {
        let t = Arc::new(AtomicU64::new(at));
        (Hlc::new("eu-west", 500, Box::new(Fixed(t.clone()))), t)
    }

    #[test]
    fn ticks_are_strictly_increasing_when_time_stands_still() {
        let (hlc, _) = clock(1_000);
        let mut prev = hlc.tick();
        for _ in 0..5_000 {
            let next = hlc.tick();
            assert!(next > prev, "{next:?} must follow {prev:?}");
            assert!(next.logical < LOGICAL_LIMIT);
            assert!(next.ts() > prev.ts(), "packed ts must increase too");
            prev = next;
        }
    }

    #[test]
    fn ticks_follow_observed_remote_versions() {
        let (hlc, _) = clock(1_000);
        let remote = Version {
            physical_ms: 1_400,
            logical: 7,
            region: "us-east".into(),
        };
        hlc.observe(&remote).unwrap();
        let local = hlc.tick();
        assert!(local > remote);
        assert_eq!(local.physical_ms, 1_400);
    }

    #[test]
    fn timestamps_beyond_the_skew_limit_are_refused_and_ignored() {
        let (hlc, _) = clock(1_000);
        let remote = Version {
            physical_ms: 1_501,
            logical: 0,
            region: "us-east".into(),
        };
        let err = hlc.observe(&remote).unwrap_err();
        assert_eq!(err.ahead_ms, 501);
        assert_eq!(hlc.tick().physical_ms, 1_000, "clock did not jump");
    }

    #[test]
    fn a_change_orders_after_the_version_it_replaces_even_after_a_restart() {
        let (hlc, _) = clock(1_000);
        let stored = Version {
            physical_ms: 1_400,
            logical: 3,
            region: "us-east".into(),
        };
        let next = hlc.tick_after(Some(&stored));
        assert!(next > stored, "{next:?}");
    }

    #[test]
    fn region_breaks_ties_between_equal_timestamps() {
        let a = Version {
            physical_ms: 5,
            logical: 1,
            region: "af-south".into(),
        };
        let b = Version {
            region: "eu-west".into(),
            ..a.clone()
        };
        assert!(a < b);
        assert_eq!(a.clone().max(b.clone()), b);
    }
}
