//! The user service: every operation on user records as one region performs it.
//!
//! Each change follows the same path: take the store locks of the user id and of
//! every index value being claimed, read the current record, decide, give the new
//! state a fresh HLC version, seal its personal data with a fresh data key for every
//! region, and commit record + index entries + outbox event in one durable batch.
//! Methods are synchronous (RocksDB and password hashing block); the API calls them
//! on the blocking pool.
//!
//! It owns the user records, their email and phone index entries, the accounts' user
//! keys and the outbox events its changes write. It may use common, crypto, storage
//! and proto, and of accounts the files before it: `error`, `input`, `entries`,
//! `lockout` and `api_keys`.
//!
//! One type, [`Users`], with one `impl` block per operation, each file with the unit
//! tests of what it holds (login, import and merging are tested through the API and
//! replication in `tests/`):
//!
//! - `mod.rs`: the type, its construction and accessors, and the small types and
//!   helpers the files share;
//! - `sealing`: which regions a data key is wrapped for, sealing, and opening records
//!   and user keys;
//! - `read`: authenticated loads, lookups by email or phone, views, full-scan reads;
//! - `commit`: the write path every local change ends in (version, seal, one batch);
//! - `write`: create, update, set_password, set_status;
//! - `erase`: delete (crypto-shredding, cascading to merged accounts);
//! - `login`: login behind the lockout, legacy hashes, the login-failure sweep;
//! - `factors`: second factors (TOTP, recovery codes), their enrolment and use;
//! - `account_tokens`: single-use reset and verification tokens;
//! - `import`: legacy accounts, created or merged;
//! - `apply`: change events replicated from other regions;
//! - `merge`: duplicate accounts found while applying;
//! - `key_recovery`: re-wrapping keys after a key outage or a rotation.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use uuid::Uuid;

use crate::accounts::entries::Entries;
use crate::accounts::lockout::Lockout;
use crate::common::faults::Faults;
use crate::common::hlc::{Hlc, Version};
use crate::crypto::blind_index::BlindIndex;
use crate::crypto::envelope::{RecordMac, UserKeyMac};
use crate::crypto::keyring::{Keyring, SharedKeyring};
use crate::crypto::password::Passwords;
use crate::proto::{self, Status};
use crate::storage::store::Store;

pub mod account_tokens;
mod apply;
mod commit;
mod erase;
pub mod factors;
mod import;
mod key_recovery;
mod login;
mod merge;
mod read;
mod sealing;
#[cfg(test)]
mod testkit;
mod write;

/// A record as the API shows it.
#[derive(Debug, Clone)]
pub struct UserView {
    pub id: Uuid,
    pub email: String,
    pub phone: Option<String>,
    pub status: &'static str,
    pub profile: BTreeMap<String, String>,
    pub version: Version,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    pub merged_into: Option<Uuid>,
    /// Proven by a token sent to the address.
    pub email_verified: bool,
    pub phone_verified: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportOutcome {
    Created,
    Merged,
}

#[derive(Debug, Clone)]
pub struct ImportResult {
    pub id: Uuid,
    pub outcome: ImportOutcome,
    /// Whether the item's legacy hash was kept: not when the account it was merged
    /// into holds [`MAX_LEGACY_HASHES`] already.
    pub legacy_hash_kept: bool,
}

/// This region's wraps by master key version ([`Users::key_usage`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KeyUsage {
    pub records: BTreeMap<u32, u64>,
    pub user_keys: BTreeMap<u32, u64>,
}

/// What one key-recovery round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryRound {
    pub scanned: usize,
    /// Moved to this region's current master key (same version, local).
    pub rewrapped: usize,
    /// Given a wrapped key for regions it lacked (a new version, replicated).
    pub recovered: usize,
    /// User keys given wraps they lacked (published) or moved to this region's
    /// current master key (local).
    pub user_keys: usize,
    /// Records and user keys written here before the keyring upgrade, signed now
    /// (same version, published).
    pub signed: usize,
}

/// `old_hashes` algorithm for a current (peppered PHC) hash kept from a merged account.
const CURRENT_HASH: &str = "authsync-phc";

pub fn status_name(status: i32) -> &'static str {
    match Status::try_from(status) {
        Ok(Status::Active) => "active",
        Ok(Status::Locked) => "locked",
        Ok(Status::Disabled) => "disabled",
        Ok(Status::Merged) => "merged",
        _ => "unknown",
    }
}

fn id_bytes(id: &Uuid) -> [u8; 16] {
    *id.as_bytes()
}

/// Attempts at a lock-then-read cycle whose lock set depended on a read.
const LOCK_RETRIES: usize = 8;

pub struct Users {
    region: String,
    store: Arc<Store>,
    keyring: SharedKeyring,
    index: BlindIndex,
    record_mac: RecordMac,
    user_key_mac: UserKeyMac,
    passwords: Passwords,
    hlc: Arc<Hlc>,
    min_password: usize,
    /// Woken after every commit that appended to the outbox.
    outbox_signal: Arc<tokio::sync::Notify>,
    faults: Arc<Faults>,
    /// Records this node sealed without some region's wrap (its key service was down),
    /// repaired first once every key service answers again. Memory only, and bounded:
    /// after a restart, or past the bound, the cursor scan finds them.
    short_wraps: parking_lot::Mutex<BTreeSet<Uuid>>,
    /// Replicated entries beside the records (API keys, login failures).
    entries: Arc<Entries>,
    lockout: Lockout,
    /// Keys that became available since the retry sweeper last asked.
    key_arrivals: parking_lot::Mutex<KeyArrivals>,
    /// Whether this region's key service answered when the sweeper last asked.
    own_key_was_available: AtomicBool,
    /// The most hashing time a failed login has taken here (µs, at most
    /// [`MAX_LOGIN_FLOOR`]), from twice a verification's cost at start: every failed
    /// login is answered as if it took this long.
    login_floor_us: std::sync::atomic::AtomicU64,
}

/// The most a failed login's answer is held back to look like the slowest one.
pub const MAX_LOGIN_FLOOR: std::time::Duration = std::time::Duration::from_secs(2);

/// At most this many legacy hashes (imported, or kept from merged accounts) are kept
/// per account and verified per login: each costs a hash on every wrong password.
pub const MAX_LEGACY_HASHES: usize = 4;

/// Adds `hash` to `info`'s legacy hashes unless the same hash is there already (from
/// any source); `false` when it is not kept because the account has
/// [`MAX_LEGACY_HASHES`] already.
pub(crate) fn add_legacy_hash(info: &mut proto::Info, hash: proto::LegacyHash) -> bool {
    let same = |h: &proto::LegacyHash| {
        h.algorithm == hash.algorithm
            && h.hash == hash.hash
            && h.salt == hash.salt
            && h.salt_suffix == hash.salt_suffix
    };
    if info.old_hashes.iter().any(same) {
        return true;
    }
    if info.old_hashes.len() >= MAX_LEGACY_HASHES {
        return false;
    }
    info.old_hashes.push(hash);
    true
}

/// Where an account stands for a refresh ([`Users::credentials_of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credentials {
    /// Live and active, its credentials last changed at this time (0: never).
    Active(u64),
    /// Erased, merged, locked or disabled.
    Inactive,
    /// No record here: not replicated yet, or never existed.
    NotHere,
}

/// Keys that became available since the retry sweeper last asked
/// ([`Users::take_key_arrivals`]): events parked because their key was missing are
/// tried again at once instead of waiting out their backoff.
#[derive(Debug, Default, PartialEq)]
pub struct KeyArrivals {
    /// Accounts whose user key arrived here, or gained a wrap.
    pub accounts: BTreeSet<Uuid>,
    /// Any account's key may have become available: this region's key service answers
    /// again, the keyring was reloaded, or more accounts arrived than are remembered.
    pub all: bool,
}

/// At most this many accounts are remembered between two retry sweeps; past it,
/// [`KeyArrivals::all`].
const KEY_ARRIVALS_REMEMBERED: usize = 10_000;

/// Where each master key's wrap count is kept in `meta`: this prefix, then the key id.
const WRAPS_PREFIX: &[u8] = b"wraps/";

/// Added to every persisted wrap count at start: the wraps made after the last
/// persist before a crash are counted, generously, rather than lost.
const WRAPS_UNPERSISTED: u64 = 1 << 20;

/// Takes the wrap counts persisted in `store` into [`crate::crypto::wraps`].
fn seed_wrap_counts(store: &Store) {
    match store.scan_kv(crate::storage::store::CF_META, WRAPS_PREFIX, &[], 100_000) {
        Ok(kvs) => crate::crypto::wraps::seed(kvs.into_iter().filter_map(|(k, v)| {
            let key = String::from_utf8(k.strip_prefix(WRAPS_PREFIX)?.to_vec()).ok()?;
            let n = u64::from_be_bytes(v.as_slice().try_into().ok()?);
            Some((key, n.saturating_add(WRAPS_UNPERSISTED)))
        })),
        Err(e) => tracing::warn!(error = %e, "read the persisted master key wrap counts"),
    }
}

/// At most this many ids are remembered for repair after a key outage.
const SHORT_WRAPS_REMEMBERED: usize = 100_000;

impl Users {
    pub fn new(
        store: Arc<Store>,
        keyring: Keyring,
        passwords: Passwords,
        hlc: Arc<Hlc>,
        min_password: usize,
    ) -> Users {
        let outbox_signal = Arc::new(tokio::sync::Notify::new());
        let index_key = *keyring.index_key();
        let region = keyring.owner().to_string();
        let keyring: SharedKeyring = Arc::new(RwLock::new(Arc::new(keyring)));
        let entries = Arc::new(Entries::new(
            store.clone(),
            hlc.clone(),
            keyring.clone(),
            outbox_signal.clone(),
        ));
        let lockout = Lockout::new(entries.clone(), &region);
        seed_wrap_counts(&store);
        // From the start as slow as an account with two hashes to check (its own and
        // one kept from a merge): the first probes after a restart tell nothing either.
        let initial_floor_us = u64::try_from(
            (passwords.dummy_cost() * 2)
                .min(MAX_LOGIN_FLOOR)
                .as_micros(),
        )
        .unwrap_or(0);
        Users {
            lockout,
            region,
            index: BlindIndex::new(&index_key),
            record_mac: RecordMac::new(&index_key),
            user_key_mac: UserKeyMac::new(&index_key),
            keyring,
            store,
            passwords,
            hlc,
            min_password,
            outbox_signal,
            faults: Arc::new(Faults::default()),
            short_wraps: Default::default(),
            entries,
            key_arrivals: Default::default(),
            own_key_was_available: AtomicBool::new(true),
            login_floor_us: std::sync::atomic::AtomicU64::new(initial_floor_us),
        }
    }

    /// Notes that account `id`'s user key arrived or gained a wrap.
    pub(super) fn note_key_arrival(&self, id: Uuid) {
        let mut arrivals = self.key_arrivals.lock();
        if arrivals.all {
            return;
        }
        if arrivals.accounts.len() >= KEY_ARRIVALS_REMEMBERED {
            arrivals.accounts.clear();
            arrivals.all = true;
        } else {
            arrivals.accounts.insert(id);
        }
    }

    /// The keys that became available since the last call, for the retry sweeper.
    pub fn take_key_arrivals(&self) -> KeyArrivals {
        let mut arrivals = std::mem::take(&mut *self.key_arrivals.lock());
        let available = self.faults.key_available(&self.region);
        let was_available = self
            .own_key_was_available
            .swap(available, Ordering::Relaxed);
        if available && !was_available {
            arrivals.all = true;
        }
        if arrivals.all {
            arrivals.accounts.clear();
        }
        arrivals
    }

    /// The replicated entries beside the records.
    pub fn entries(&self) -> &Arc<Entries> {
        &self.entries
    }

    /// Uses `faults` as the node's fault switches (shared with its clock, say).
    pub fn with_faults(mut self, faults: Arc<Faults>) -> Users {
        self.faults = faults;
        self
    }

    /// The node's fault switches (inert unless fault injection is enabled).
    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    /// Notified whenever the outbox has new events.
    pub fn outbox_signal(&self) -> Arc<tokio::sync::Notify> {
        self.outbox_signal.clone()
    }

    /// Physical time of this region's clock, in milliseconds.
    pub fn clock_now_ms(&self) -> u64 {
        self.hlc.physical_now()
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn min_password(&self) -> usize {
        self.min_password
    }

    pub fn keyring(&self) -> Arc<Keyring> {
        self.keyring.read().clone()
    }

    /// Swaps in a reloaded keyring (after a rotation). It must belong to the same
    /// region and deployment: the index key and pepper cannot change under a running
    /// node, or every lookup and login would silently fail.
    pub fn replace_keyring(&self, new: Keyring) -> Result<(), String> {
        let current = self.keyring();
        if new.owner() != current.owner() {
            return Err(format!(
                "keyring owner changed from {} to {}",
                current.owner(),
                new.owner()
            ));
        }
        if !new.shares_secrets_with(&current) {
            return Err(
                "keyring index key or pepper changed; restart with a migration instead".into(),
            );
        }
        *self.keyring.write() = Arc::new(new);
        // A master key it adds may open what was parked for want of one.
        self.key_arrivals.lock().all = true;
        Ok(())
    }
}
