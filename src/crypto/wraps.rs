//! How many times each master key has wrapped a key here.
//!
//! Wraps are AES-256-GCM with random 96-bit nonces. NIST SP 800-38D bounds the
//! messages one key may seal with random nonces to 2^32 (the chance of a repeated
//! nonce, which would expose the key's authentication, then reaches 2^-32). Every
//! region wraps with every region's master key, so a key's wraps are the sum over all
//! regions: each node counts its own per key id, persists the counts in its store
//! and exports them as `authsync_master_key_wraps{key}`, and refuses to wrap once its own count reaches
//! its share of the bound ([`share`]): 2^32 divided by the number of regions. The
//! alert `AuthsyncMasterKeyWornOut` fires at half that, well before; `authsync keys
//! rotate` makes a fresh key, and the old one only unwraps from then on.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::crypto::primitives::CryptoError;

/// The bound on one key's wraps across every region.
pub const WRAP_LIMIT: u64 = 1 << 32;

static COUNTS: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());

/// This node's share of a key's bound in a deployment of `regions` regions.
pub fn share(regions: usize) -> u64 {
    WRAP_LIMIT / (regions.max(1) as u64)
}

/// Counts one wrap under `key_id`, refused once this node's count has reached `limit`.
pub(crate) fn count(key_id: &str, limit: u64) -> Result<(), CryptoError> {
    let mut counts = COUNTS.lock().unwrap_or_else(|p| p.into_inner());
    let n = counts.entry(key_id.to_string()).or_insert(0);
    if *n >= limit {
        return Err(CryptoError::KeyWornOut(key_id.to_string()));
    }
    *n += 1;
    Ok(())
}

/// The counts so far, by key id.
pub fn counts() -> BTreeMap<String, u64> {
    COUNTS.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Takes counts persisted before this process started: each key's count becomes at
/// least the persisted one.
pub fn seed(persisted: impl IntoIterator<Item = (String, u64)>) {
    let mut counts = COUNTS.lock().unwrap_or_else(|p| p.into_inner());
    for (key, n) in persisted {
        let c = counts.entry(key).or_insert(0);
        *c = (*c).max(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key past its share refuses to wrap: the records it would seal stay unwritten
    /// (the caller reports the error) rather than risk a repeated nonce.
    #[test]
    fn a_key_refuses_to_wrap_past_its_share_and_counts_survive_a_restart() {
        let key = "worn-out-test/v1";
        seed([(key.to_string(), share(3) - 2)]);
        assert!(count(key, share(3)).is_ok());
        assert!(count(key, share(3)).is_ok());
        assert!(matches!(count(key, share(3)), Err(CryptoError::KeyWornOut(k)) if k == key));
        assert_eq!(counts()[key], share(3));
        // A lower persisted count never lowers the one counted here.
        seed([(key.to_string(), 5)]);
        assert_eq!(counts()[key], share(3));
        assert_eq!(share(3), (1 << 32) / 3);
    }
}
