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

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Default)]
pub struct Faults {
    keys_down: RwLock<BTreeSet<String>>,
    apply_failures: AtomicU64,
    poisoned: RwLock<BTreeSet<Uuid>>,
}

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
        }
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
    }
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
}
