//! Fault switches for tests and the chaos harness.
//!
//! Every node holds one [`Faults`]; all switches start off and stay inert unless the
//! node was started with `[faults] enabled = true`, which is what exposes
//! `/v1/admin/faults` to change them. A production node cannot have them turned on
//! from the outside.
//!
//! - **Key availability**, per region: a region whose key service is "down" gets no
//!   wrapped key in what this node seals, and when it is this node's own region,
//!   nothing can be opened or sealed here. That is the state a real key service
//!   outage leaves, and what key recovery repairs.
//! - **Apply failures**: the next N applies of replicated events fail as a transient
//!   storage error would.
//! - **Poisoned records**: every apply of an event for one of these record ids fails
//!   until the id is taken off the list (a cause an operator can fix).
//! - **Clock offset**: the node's physical clock runs this many milliseconds ahead
//!   (or behind, when negative) of the wall clock: a skewed region, as the hybrid
//!   logical clock and the skew check see it.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use crate::common::hlc::{SystemClock, TimeSource};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Default)]
pub struct Faults {
    keys_down: RwLock<BTreeSet<String>>,
    apply_failures: AtomicU64,
    poisoned: RwLock<BTreeSet<Uuid>>,
    clock_offset_ms: AtomicI64,
}

/// The largest clock offset the switch accepts: a day either way.
pub const MAX_CLOCK_OFFSET_MS: i64 = 86_400_000;

/// The switches as the admin endpoint shows and takes them. Absent fields are left
/// as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FaultState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys_unavailable: Option<BTreeSet<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_failures: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poisoned_ids: Option<BTreeSet<Uuid>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_offset_ms: Option<i64>,
}

impl Faults {
    /// Whether `region`'s key service answers.
    pub fn key_available(&self, region: &str) -> bool {
        !self.keys_down.read().contains(region)
    }

    /// Takes one injected apply failure, if any are left.
    pub fn take_apply_failure(&self) -> bool {
        self.apply_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    pub fn is_poisoned(&self, id: &Uuid) -> bool {
        self.poisoned.read().contains(id)
    }

    pub fn state(&self) -> FaultState {
        FaultState {
            keys_unavailable: Some(self.keys_down.read().clone()),
            apply_failures: Some(self.apply_failures.load(Ordering::SeqCst)),
            poisoned_ids: Some(self.poisoned.read().clone()),
            clock_offset_ms: Some(self.clock_offset_ms.load(Ordering::SeqCst)),
        }
    }

    pub fn clock_offset_ms(&self) -> i64 {
        self.clock_offset_ms.load(Ordering::SeqCst)
    }

    pub fn set(&self, change: FaultState) {
        if let Some(k) = change.keys_unavailable {
            *self.keys_down.write() = k;
        }
        if let Some(n) = change.apply_failures {
            self.apply_failures.store(n, Ordering::SeqCst);
        }
        if let Some(p) = change.poisoned_ids {
            *self.poisoned.write() = p;
        }
        if let Some(o) = change.clock_offset_ms {
            self.clock_offset_ms.store(
                o.clamp(-MAX_CLOCK_OFFSET_MS, MAX_CLOCK_OFFSET_MS),
                Ordering::SeqCst,
            );
        }
    }
}

/// Wall-clock time shifted by the fault switch's clock offset.
pub struct FaultyClock(pub Arc<Faults>);

impl TimeSource for FaultyClock {
    fn now_ms(&self) -> u64 {
        SystemClock
            .now_ms()
            .saturating_add_signed(self.0.clock_offset_ms())
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FaultsConfig {
    /// Exposes `/v1/admin/faults` (key outages, failing applies) for tests and the
    /// chaos harness. Never in production. Default false.
    pub enabled: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switches_change_only_what_is_given() {
        let f = Faults::default();
        assert!(f.key_available("eu-west"));
        f.set(FaultState {
            keys_unavailable: Some(["eu-west".to_string()].into()),
            apply_failures: Some(2),
            ..Default::default()
        });
        assert!(!f.key_available("eu-west"));
        assert!(f.key_available("us-east"));
        f.set(FaultState::default());
        assert!(!f.key_available("eu-west"), "absent fields are kept");
        assert!(f.take_apply_failure());
        assert!(f.take_apply_failure());
        assert!(!f.take_apply_failure(), "exactly the injected number fail");
        let id = Uuid::new_v4();
        f.set(FaultState {
            poisoned_ids: Some([id].into()),
            keys_unavailable: Some(BTreeSet::new()),
            ..Default::default()
        });
        assert!(f.is_poisoned(&id));
        assert!(f.key_available("eu-west"));
    }

    #[test]
    fn the_clock_offset_shifts_the_node_clock_within_a_day() {
        let f = Arc::new(Faults::default());
        let clock = FaultyClock(f.clone());
        let before = SystemClock.now_ms();
        f.set(FaultState {
            clock_offset_ms: Some(60_000),
            ..Default::default()
        });
        let ahead = clock.now_ms();
        assert!(ahead >= before + 60_000 && ahead < before + 70_000);
        f.set(FaultState {
            clock_offset_ms: Some(i64::MIN),
            ..Default::default()
        });
        assert_eq!(f.clock_offset_ms(), -MAX_CLOCK_OFFSET_MS);
        assert!(clock.now_ms() < before);
    }
}
