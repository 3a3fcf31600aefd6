//! The user service: every operation on user records as one region performs it.
//!
//! Each change follows the same path: take the store locks of the user id and of
//! every index value being claimed, read the current record, decide, give the new
//! state a fresh HLC version, seal its personal data with a fresh data key for every
//! region, and commit record + index entries + outbox event in one durable batch.
//! Methods are synchronous (RocksDB and password hashing block); the API calls them
//! on the blocking pool.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::RwLock;
use uuid::Uuid;

use crate::accounts::entries::Entries;
use crate::accounts::error::{Applied, ApplyError, Problem, UserError};
use crate::accounts::input::{
    normalize_email, normalize_phone, Change, ImportItem, NewUser, SettableStatus, UserPatch,
};
use crate::accounts::lockout::Lockout;
use crate::common::faults::Faults;
use crate::common::hlc::{Hlc, Version};
use crate::common::metrics as m;
use crate::crypto::blind_index::BlindIndex;
use crate::crypto::envelope::{self, RecordMac, UserKeyMac, UserSecret};
use crate::crypto::keyring::Keyring;
use crate::crypto::password::{self, Passwords, SaltPosition, Verified};
use crate::crypto::primitives::CryptoError;
use crate::proto::{self, Status};
use crate::storage::store::{
    record_rank, record_version, Change as StoreChange, IndexField, Store, StoreError,
};

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
}

/// Order of precedence between duplicate accounts: the earlier creation wins, then
/// the lower id. Records without a creation version rank by their version.
fn merge_rank(r: &proto::Record) -> (Version, Vec<u8>) {
    let created = r
        .created
        .as_ref()
        .map(Version::from_proto)
        .unwrap_or_else(|| record_version(r));
    (created, r.id.clone())
}

/// Folds a duplicate account into the winner: the winner's values stand, missing
/// profile fields and a missing phone are taken, every password hash is kept as a
/// legacy hash so either account's password still logs in, and the loser's other
/// addresses are remembered.
fn fold_into(
    winner: &mut proto::Record,
    info: &mut proto::Info,
    loser: &proto::Record,
    loser_info: &proto::Info,
) {
    for (k, v) in &loser_info.profile {
        info.profile.entry(k.clone()).or_insert_with(|| v.clone());
    }
    for h in &loser_info.old_hashes {
        if !info.old_hashes.contains(h) {
            info.old_hashes.push(h.clone());
        }
    }
    if winner.secret.is_empty() {
        winner.secret = loser.secret.clone();
    } else if !loser.secret.is_empty() && loser.secret != winner.secret {
        let h = proto::LegacyHash {
            algorithm: CURRENT_HASH.into(),
            hash: loser.secret.clone(),
            source: "merged-account".into(),
            ..Default::default()
        };
        if !info.old_hashes.contains(&h) {
            info.old_hashes.push(h);
        }
    }
    let mut emails = vec![loser_info.email.clone()];
    emails.extend(loser_info.other_emails.iter().cloned());
    for e in emails {
        if !e.is_empty() && e != info.email && !info.other_emails.contains(&e) {
            info.other_emails.push(e);
        }
    }
    let mut phones = Vec::new();
    if !loser_info.phone.is_empty() {
        if info.phone.is_empty() && !loser.phone_index.is_empty() {
            info.phone = loser_info.phone.clone();
            winner.phone_index = loser.phone_index.clone();
        } else {
            phones.push(loser_info.phone.clone());
        }
    }
    phones.extend(loser_info.other_phones.iter().cloned());
    for p in phones {
        if p != info.phone && !info.other_phones.contains(&p) {
            info.other_phones.push(p);
        }
    }
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
    keyring: RwLock<Arc<Keyring>>,
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
        let entries = Arc::new(Entries::new(
            store.clone(),
            hlc.clone(),
            keyring.index_key(),
            outbox_signal.clone(),
        ));
        let lockout = Lockout::new(entries.clone(), keyring.owner());
        Users {
            lockout,
            region: keyring.owner().to_string(),
            index: BlindIndex::new(keyring.index_key()),
            record_mac: RecordMac::new(keyring.index_key()),
            user_key_mac: UserKeyMac::new(keyring.index_key()),
            keyring: RwLock::new(Arc::new(keyring)),
            store,
            passwords,
            hlc,
            min_password,
            outbox_signal,
            faults: Arc::new(Faults::default()),
            short_wraps: Default::default(),
            entries,
        }
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
        Ok(())
    }

    /// The regions a new data key is wrapped for: every region whose key service
    /// answers. Sealing needs this region's own key: without it nothing written here
    /// could be read here.
    fn wrap_regions(&self, keyring: &Keyring) -> Result<Vec<String>, UserError> {
        self.own_key_available()?;
        Ok(keyring
            .regions()
            .filter(|r| self.faults.key_available(r))
            .map(str::to_string)
            .collect())
    }

    /// Seals `info` into `record` for `regions` (those whose key service answers,
    /// from [`Users::wrap_regions`]) under `user`'s key, and remembers the record for
    /// key recovery when that is not all of the keyring's regions.
    fn seal(
        &self,
        record: &mut proto::Record,
        info: &proto::Info,
        keyring: &Keyring,
        regions: &[String],
        user: &UserSecret,
    ) -> Result<(), UserError> {
        envelope::seal(record, info, keyring, regions, user).map_err(UserError::Crypto)?;
        if regions.len() < keyring.regions().count() {
            if let Ok(id) = Uuid::from_slice(&record.id) {
                let mut short = self.short_wraps.lock();
                if short.len() < SHORT_WRAPS_REMEMBERED {
                    short.insert(id);
                }
            }
        }
        Ok(())
    }

    fn own_key_available(&self) -> Result<(), UserError> {
        if self.faults.key_available(&self.region) {
            Ok(())
        } else {
            Err(UserError::KeyUnavailable(self.region.clone()))
        }
    }

    pub fn email_index(&self, normalised: &str) -> [u8; 32] {
        self.index.email(normalised)
    }

    /// The stored user key of account `id`, authenticated.
    fn user_key(&self, id: &[u8]) -> Result<Option<proto::UserKey>, UserError> {
        let Ok(id) = <[u8; 16]>::try_from(id) else {
            return Err(UserError::Unreadable);
        };
        let unreadable = || {
            metrics::counter!(m::RECORDS_UNREADABLE_TOTAL, "reason" => "integrity").increment(1);
            UserError::Unreadable
        };
        match self.store.get_user_key(&id) {
            Ok(Some(key)) => {
                self.user_key_mac.verify(&key).map_err(|_| unreadable())?;
                if key.user_id != id {
                    return Err(unreadable());
                }
                Ok(Some(key))
            }
            Ok(None) => Ok(None),
            Err(StoreError::Corrupt { .. }) => Err(unreadable()),
            Err(other) => Err(UserError::Store(other)),
        }
    }

    /// The opened key of the account `record` belongs to. Not here yet (its user key
    /// travels on its own topic and may arrive after the record) is a key not yet
    /// available, like a wrap not yet repaired.
    /// A record sealed under another key than the one held fails in
    /// [`envelope::open`], which checks the key id the envelope names.
    fn user_secret(
        &self,
        record: &proto::Record,
        keyring: &Keyring,
    ) -> Result<UserSecret, UserError> {
        let Some(key) = self.user_key(&record.id)? else {
            metrics::counter!(m::RECORDS_UNREADABLE_TOTAL, "reason" => "no_user_key").increment(1);
            return Err(UserError::KeyUnavailable(self.region.clone()));
        };
        envelope::open_user_key(&key, keyring).map_err(|e| self.crypto_failure(e))
    }

    /// Counts a failed open by reason and maps it to what callers are told.
    fn crypto_failure(&self, e: CryptoError) -> UserError {
        let reason = match &e {
            CryptoError::Integrity => "integrity",
            CryptoError::NoKeyForRegion(_) => "no_key",
            CryptoError::UnknownMasterKey(_) => "unknown_key",
            _ => "other",
        };
        metrics::counter!(m::RECORDS_UNREADABLE_TOTAL, "reason" => reason).increment(1);
        match e {
            CryptoError::NoKeyForRegion(r) | CryptoError::UnknownMasterKey(r) => {
                UserError::KeyUnavailable(r)
            }
            CryptoError::Integrity => UserError::Unreadable,
            other => UserError::Crypto(other),
        }
    }

    fn open_info(&self, record: &proto::Record) -> Result<proto::Info, UserError> {
        Ok(self.opened(record)?.0)
    }

    /// The record's `Info`, and its account's key for sealing the change that follows:
    /// the key is read and unwrapped once per change.
    fn opened(&self, record: &proto::Record) -> Result<(proto::Info, UserSecret), UserError> {
        self.own_key_available()?;
        let keyring = self.keyring();
        let user = self.user_secret(record, &keyring)?;
        let info = envelope::open(record, &keyring, &user).map_err(|e| self.crypto_failure(e))?;
        Ok((info, user))
    }

    /// Whether `id` names a live, active account (not deleted, merged, locked or
    /// disabled).
    pub fn is_active(&self, id: &Uuid) -> Result<bool, UserError> {
        Ok(self
            .get_record(id)?
            .is_some_and(|r| !r.tombstone && Status::try_from(r.status) == Ok(Status::Active)))
    }

    /// How many records and user keys here have this region's wrap under each of its
    /// master key versions: a full scan, for deciding whether an old version can be
    /// retired (`authsync keys retire`).
    pub fn key_usage(&self) -> Result<KeyUsage, UserError> {
        let mut usage = KeyUsage::default();
        let own_version = |wraps: &[proto::WrappedKey]| {
            wraps
                .iter()
                .find(|w| w.region == self.region)
                .map(|w| w.key_version)
        };
        let mut cursor = None;
        loop {
            let (batch, next) = self.store.scan_records(cursor, 1000)?;
            for r in &batch {
                if let Some(v) = r.info.as_ref().and_then(|e| own_version(&e.keys)) {
                    *usage.records.entry(v).or_default() += 1;
                }
            }
            match next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        let mut after = None;
        loop {
            let keys = self.store.scan_user_keys(after, 1000)?;
            for k in &keys {
                if let Some(v) = own_version(&k.wraps) {
                    *usage.user_keys.entry(v).or_default() += 1;
                }
            }
            match keys.last() {
                Some(last) => after = <[u8; 16]>::try_from(last.user_id.as_slice()).ok(),
                None => break,
            }
            if after.is_none() {
                break;
            }
        }
        Ok(usage)
    }

    /// Whether `id` names an erased account (a tombstone here). An id not seen here
    /// yet is not erased.
    pub fn is_erased(&self, id: &Uuid) -> bool {
        matches!(self.store.get(id.as_bytes()), Ok(Some(r)) if r.tombstone)
    }

    /// The login-failure sweep ([`crate::accounts::lockout::Lockout::sweep`]) at this node's
    /// time: subjects idle everywhere, and erased accounts.
    pub fn sweep_login_failures(&self) -> Result<usize, UserError> {
        self.lockout.sweep(self.clock_now_ms(), |subject| {
            Uuid::from_slice(subject).is_ok_and(|id| self.is_erased(&id))
        })
    }

    /// The stored record, authenticated: corrupt or tampered bytes give the one
    /// generic [`UserError::Unreadable`] and count in the metric.
    fn get_record(&self, id: &Uuid) -> Result<Option<proto::Record>, UserError> {
        let unreadable = || {
            metrics::counter!(m::RECORDS_UNREADABLE_TOTAL, "reason" => "integrity").increment(1);
            UserError::Unreadable
        };
        match self.store.get(&id_bytes(id)) {
            Ok(Some(record)) => {
                self.record_mac.verify(&record).map_err(|_| unreadable())?;
                Ok(Some(record))
            }
            Ok(None) => Ok(None),
            Err(StoreError::Corrupt { .. }) => Err(unreadable()),
            Err(other) => Err(UserError::Store(other)),
        }
    }

    /// The live record under `id`: tombstones are not found.
    fn load_live(&self, id: &Uuid) -> Result<proto::Record, UserError> {
        match self.get_record(id)? {
            Some(r) if !r.tombstone => Ok(r),
            _ => Err(UserError::NotFound),
        }
    }

    /// Like [`Users::load_live`], refusing merged accounts for changes.
    fn load_changeable(&self, id: &Uuid) -> Result<proto::Record, UserError> {
        let r = self.load_live(id)?;
        if r.status == Status::Merged as i32 {
            let into = Uuid::from_slice(&r.merged_into).unwrap_or_default();
            return Err(UserError::Merged(into));
        }
        Ok(r)
    }

    /// Gives `record` a new version, seals `info` into it and commits it: a change to
    /// `previous` under that account's key, or a new account with a key made here.
    fn commit(
        &self,
        previous: Option<(&proto::Record, &UserSecret)>,
        mut record: proto::Record,
        info: &proto::Info,
        kind: &'static str,
    ) -> Result<Version, UserError> {
        let (previous, user) = previous.unzip();
        let version = self.hlc.tick_after(previous.map(record_version).as_ref());
        record.version = Some(version.to_proto());
        record.updated_at_ms = version.physical_ms;
        if previous.is_none() {
            record.created_at_ms = version.physical_ms;
            record.created = Some(version.to_proto());
        }
        let keyring = self.keyring();
        let regions = self.wrap_regions(&keyring)?;
        match user {
            Some(user) => {
                self.seal(&mut record, info, &keyring, &regions, user)?;
                self.commit_sealed(previous, &mut record, kind)?;
            }
            None => {
                // A new account: its key is made here, wrapped for the same regions as
                // its record, and written and published with its first version.
                let (mut key, user) = envelope::new_user_key(&record.id, &keyring, &regions)
                    .map_err(UserError::Crypto)?;
                self.user_key_mac.sign(&mut key);
                self.seal(&mut record, info, &keyring, &regions, &user)?;
                self.record_mac.sign(&mut record);
                let started = Instant::now();
                self.store.commit_many(&[StoreChange {
                    previous: None,
                    record: &record,
                    outbox: true,
                    user_key: Some(&key),
                }])?;
                self.committed(kind, started);
            }
        }
        Ok(version)
    }

    fn commit_sealed(
        &self,
        previous: Option<&proto::Record>,
        record: &mut proto::Record,
        kind: &'static str,
    ) -> Result<(), UserError> {
        self.record_mac.sign(record);
        let started = Instant::now();
        self.store.commit(previous, record, true)?;
        self.committed(kind, started);
        Ok(())
    }

    fn committed(&self, kind: &'static str, started: Instant) {
        self.outbox_signal.notify_one();
        metrics::histogram!(m::STORE_COMMIT_DURATION_SECONDS)
            .record(started.elapsed().as_secs_f64());
        metrics::counter!(m::STORE_COMMITS_TOTAL, "kind" => kind).increment(1);
        metrics::counter!(m::OUTBOX_EVENTS_TOTAL).increment(1);
    }

    fn hash_password(&self, password: &str) -> Result<String, UserError> {
        let started = Instant::now();
        let h = self.passwords.hash(password)?;
        metrics::histogram!(m::PASSWORD_HASH_DURATION_SECONDS)
            .record(started.elapsed().as_secs_f64());
        Ok(h)
    }

    fn verify_password(&self, password: &str, phc: &str) -> Verified {
        let started = Instant::now();
        let v = self.passwords.verify(password, phc);
        metrics::histogram!(m::PASSWORD_HASH_DURATION_SECONDS)
            .record(started.elapsed().as_secs_f64());
        v
    }

    /// Who holds an index value now, other than `except`.
    fn taken(
        &self,
        field: IndexField,
        hash: &[u8],
        except: Option<&Uuid>,
    ) -> Result<bool, UserError> {
        Ok(match self.store.lookup(field, hash)? {
            Some(owner) => except.is_none_or(|e| *e.as_bytes() != owner),
            None => false,
        })
    }

    pub fn create(&self, input: NewUser) -> Result<(Uuid, Version), UserError> {
        let secret = self.hash_password(&input.password)?;
        let email_idx = self.index.email(&input.email);
        let phone_idx = input.phone.as_deref().map(|p| self.index.phone(p));
        let id = Uuid::new_v4();
        let mut keys: Vec<&[u8]> = vec![id.as_bytes(), &email_idx];
        if let Some(p) = &phone_idx {
            keys.push(p);
        }
        let _locked = self.store.lock(&keys);
        let mut conflicts = Vec::new();
        if self.taken(IndexField::Email, &email_idx, None)? {
            conflicts.push(Problem::new("email", "is already taken"));
        }
        if let Some(p) = &phone_idx {
            if self.taken(IndexField::Phone, p, None)? {
                conflicts.push(Problem::new("phone", "is already taken"));
            }
        }
        if !conflicts.is_empty() {
            return Err(UserError::Conflict(conflicts));
        }
        let record = proto::Record {
            id: id.as_bytes().to_vec(),
            status: Status::Active as i32,
            email_index: email_idx.to_vec(),
            phone_index: phone_idx.map(|p| p.to_vec()).unwrap_or_default(),
            secret,
            ..Default::default()
        };
        let info = proto::Info {
            email: input.email,
            phone: input.phone.unwrap_or_default(),
            profile: input.profile,
            ..Default::default()
        };
        let version = self.commit(None, record, &info, "create")?;
        Ok((id, version))
    }

    fn view(&self, record: &proto::Record) -> Result<UserView, UserError> {
        let info = self.open_info(record)?;
        Ok(UserView {
            id: Uuid::from_slice(&record.id).map_err(|_| UserError::Unreadable)?,
            email: info.email,
            phone: (!info.phone.is_empty()).then_some(info.phone),
            status: status_name(record.status),
            profile: info.profile,
            version: record_version(record),
            created_at_ms: record.created_at_ms,
            updated_at_ms: record.updated_at_ms,
            merged_into: Uuid::from_slice(&record.merged_into).ok(),
        })
    }

    pub fn get(&self, id: &Uuid) -> Result<UserView, UserError> {
        let record = self.load_live(id)?;
        self.view(&record)
    }

    /// The live account that holds a normalised email or phone.
    fn find_record(
        &self,
        field: IndexField,
        hash: &[u8; 32],
    ) -> Result<Option<proto::Record>, UserError> {
        let Some(id) = self.store.lookup(field, hash)? else {
            return Ok(None);
        };
        let Some(record) = self.get_record(&Uuid::from_bytes(id))? else {
            return Ok(None);
        };
        let holds = match field {
            IndexField::Email => record.email_index.as_slice() == hash,
            IndexField::Phone => record.phone_index.as_slice() == hash,
        };
        // An index entry whose record no longer holds the value is stale or forged.
        if !holds || record.tombstone || record.status == Status::Merged as i32 {
            return Ok(None);
        }
        Ok(Some(record))
    }

    pub fn find_by_email(&self, raw: &str) -> Result<UserView, UserError> {
        let email =
            normalize_email(raw).map_err(|p| UserError::Invalid(vec![Problem::new("email", p)]))?;
        match self.find_record(IndexField::Email, &self.index.email(&email))? {
            Some(r) => self.view(&r),
            None => Err(UserError::NotFound),
        }
    }

    pub fn find_by_phone(&self, raw: &str) -> Result<UserView, UserError> {
        let phone =
            normalize_phone(raw).map_err(|p| UserError::Invalid(vec![Problem::new("phone", p)]))?;
        match self.find_record(IndexField::Phone, &self.index.phone(&phone))? {
            Some(r) => self.view(&r),
            None => Err(UserError::NotFound),
        }
    }

    pub fn update(&self, id: &Uuid, patch: UserPatch) -> Result<Version, UserError> {
        let email_idx = patch.email.as_deref().map(|e| self.index.email(e));
        let phone_idx = match &patch.phone {
            Change::Set(p) => Some(self.index.phone(p)),
            _ => None,
        };
        let mut keys: Vec<&[u8]> = vec![id.as_bytes()];
        keys.extend(email_idx.iter().map(|h| h.as_slice()));
        keys.extend(phone_idx.iter().map(|h| h.as_slice()));
        let _locked = self.store.lock(&keys);
        let previous = self.load_changeable(id)?;
        let (mut info, key) = self.opened(&previous)?;
        let mut conflicts = Vec::new();
        if let Some(h) = &email_idx {
            if self.taken(IndexField::Email, h, Some(id))? {
                conflicts.push(Problem::new("email", "is already taken"));
            }
        }
        if let Some(h) = &phone_idx {
            if self.taken(IndexField::Phone, h, Some(id))? {
                conflicts.push(Problem::new("phone", "is already taken"));
            }
        }
        if !conflicts.is_empty() {
            return Err(UserError::Conflict(conflicts));
        }
        let mut record = previous.clone();
        if let (Some(email), Some(h)) = (patch.email, email_idx) {
            info.email = email;
            record.email_index = h.to_vec();
        }
        match patch.phone {
            Change::Keep => {}
            Change::Clear => {
                info.phone.clear();
                record.phone_index.clear();
            }
            Change::Set(p) => {
                info.phone = p;
                record.phone_index = phone_idx.expect("hashed above").to_vec();
            }
        }
        for (k, v) in patch.profile {
            match v {
                Some(v) => info.profile.insert(k, v),
                None => info.profile.remove(&k),
            };
        }
        self.commit(Some((&previous, &key)), record, &info, "update")
    }

    pub fn set_password(&self, id: &Uuid, password: &str) -> Result<Version, UserError> {
        let secret = self.hash_password(password)?;
        let _locked = self.store.lock(&[id.as_bytes()]);
        let previous = self.load_changeable(id)?;
        let (mut info, key) = self.opened(&previous)?;
        if !info.email.is_empty() && password.to_lowercase() == info.email.to_lowercase() {
            return Err(UserError::Invalid(vec![Problem::new(
                "password",
                "must not be the email address",
            )]));
        }
        // A new password supersedes every imported one.
        info.old_hashes.clear();
        let mut record = previous.clone();
        record.secret = secret;
        self.commit(Some((&previous, &key)), record, &info, "password")
    }

    pub fn set_status(&self, id: &Uuid, status: SettableStatus) -> Result<Version, UserError> {
        let _locked = self.store.lock(&[id.as_bytes()]);
        let previous = self.load_changeable(id)?;
        let (info, key) = self.opened(&previous)?;
        let mut record = previous.clone();
        record.status = match status {
            SettableStatus::Active => Status::Active,
            SettableStatus::Locked => Status::Locked,
            SettableStatus::Disabled => Status::Disabled,
        } as i32;
        self.commit(Some((&previous, &key)), record, &info, "status")
    }

    /// Erases the account: a tombstone (id and version only) in place of the record,
    /// its index entries and its user key gone in the same batch, so that no earlier
    /// copy can be decrypted again (crypto-shredding). Accounts merged into it are the
    /// same person's and are erased with it, each with its own tombstone. Erasing an
    /// erased account again finishes what an interrupted erase left of those, and
    /// answers [`UserError::NotFound`].
    pub fn delete(&self, id: &Uuid) -> Result<Version, UserError> {
        let version = match self.erase_one(id) {
            Ok(v) => Some(v),
            Err(UserError::NotFound) if self.is_erased(id) => None,
            Err(e) => return Err(e),
        };
        let mut pending = self.store.merged_into(id.as_bytes())?;
        let mut seen = BTreeSet::from([*id]);
        while let Some(merged) = pending.pop() {
            let merged = Uuid::from_bytes(merged);
            if !seen.insert(merged) {
                continue;
            }
            match self.erase_one(&merged) {
                Ok(_) | Err(UserError::NotFound) => {}
                Err(e) => return Err(e),
            }
            pending.extend(self.store.merged_into(merged.as_bytes())?);
        }
        version.ok_or(UserError::NotFound)
    }

    fn erase_one(&self, id: &Uuid) -> Result<Version, UserError> {
        let _locked = self.store.lock(&[id.as_bytes()]);
        let previous = match self.get_record(id)? {
            Some(r) if !r.tombstone => r,
            _ => return Err(UserError::NotFound),
        };
        let version = self.hlc.tick_after(Some(&record_version(&previous)));
        let mut tombstone = proto::Record {
            id: id.as_bytes().to_vec(),
            version: Some(version.to_proto()),
            tombstone: true,
            ..Default::default()
        };
        self.commit_sealed(Some(&previous), &mut tombstone, "delete")?;
        Ok(version)
    }

    /// Checks a login (email or phone) and password. Unknown logins and wrong
    /// passwords give the same error after the same hashing work; a correct password
    /// on a locked or disabled account is refused as such.
    /// Checks a login, behind the per-account brute-force backoff ([`crate::accounts::lockout`]):
    /// too soon after repeated failures it is refused with
    /// [`UserError::TooManyAttempts`] before any hashing; a wrong password is counted
    /// and answered with [`UserError::LoginFailed`], saying how long the next attempt
    /// must wait. Unknown logins go through the same steps.
    pub fn login(&self, login: &str, password: &str) -> Result<Uuid, UserError> {
        let result = self.login_guarded(login, password);
        let outcome = match &result {
            Ok(_) => "success",
            Err(UserError::LoginFailed { .. }) => "invalid_credentials",
            Err(UserError::Forbidden(_)) => "forbidden",
            Err(UserError::TooManyAttempts { .. }) => "locked_out",
            Err(_) => "error",
        };
        metrics::counter!(m::LOGINS_TOTAL, "outcome" => outcome).increment(1);
        result
    }

    fn login_guarded(&self, login: &str, password: &str) -> Result<Uuid, UserError> {
        let (record, subject) = if login.contains('@') {
            match normalize_email(login) {
                Ok(e) => {
                    let hash = self.index.email(&e);
                    (self.find_record(IndexField::Email, &hash)?, hash)
                }
                Err(_) => (None, self.index.email(&login.trim().to_lowercase())),
            }
        } else {
            match normalize_phone(login) {
                Ok(p) => {
                    let hash = self.index.phone(&p);
                    (self.find_record(IndexField::Phone, &hash)?, hash)
                }
                Err(_) => (None, self.index.phone(login.trim())),
            }
        };
        // An account is one subject whichever login names it.
        let subject: Vec<u8> = match &record {
            Some(r) => r.id.clone(),
            None => subject.to_vec(),
        };
        let now = self.clock_now_ms();
        let standing = self.lockout.standing_of(&subject, now)?;
        let retry_after_ms = standing.retry_after_ms(now);
        if retry_after_ms > 0 {
            return Err(UserError::TooManyAttempts { retry_after_ms });
        }
        match self.login_inner(record, password) {
            Err(UserError::InvalidCredentials) => {
                let standing = self.lockout.failed(&subject, now)?;
                if standing.failures == crate::accounts::lockout::FREE_FAILURES {
                    metrics::counter!(m::LOGIN_LOCKOUTS_TOTAL).increment(1);
                }
                Err(UserError::LoginFailed {
                    retry_after_ms: standing.retry_after_ms(now),
                })
            }
            // The right password: the count starts again.
            result @ (Ok(_) | Err(UserError::Forbidden(_))) => {
                self.lockout.succeeded(&subject, now, &standing)?;
                result
            }
            other => other,
        }
    }

    fn login_inner(
        &self,
        record: Option<proto::Record>,
        password: &str,
    ) -> Result<Uuid, UserError> {
        let Some(record) = record else {
            self.passwords.verify_dummy(password);
            return Err(UserError::InvalidCredentials);
        };
        let id = Uuid::from_slice(&record.id).map_err(|_| UserError::Unreadable)?;
        let status_refusal = |r: &proto::Record| match Status::try_from(r.status) {
            Ok(Status::Active) => None,
            Ok(Status::Locked) => Some(UserError::Forbidden("locked")),
            Ok(Status::Disabled) => Some(UserError::Forbidden("disabled")),
            _ => Some(UserError::InvalidCredentials),
        };
        if !record.secret.is_empty() {
            match self.verify_password(password, &record.secret) {
                Verified::Yes => return status_refusal(&record).map_or(Ok(id), Err),
                Verified::YesRehash => {
                    if let Some(e) = status_refusal(&record) {
                        return Err(e);
                    }
                    if let Err(e) = self.upgrade_password(&id, &record, password, None) {
                        tracing::warn!(error = %e, "store rehashed password after login");
                    }
                    return Ok(id);
                }
                Verified::No => {}
            }
        }
        // Legacy hashes imported from older systems. A record that cannot be opened
        // answers like a wrong password, after the same work.
        let info = match self.open_info(&record) {
            Ok(i) => i,
            Err(_) => {
                if record.secret.is_empty() {
                    self.passwords.verify_dummy(password);
                }
                return Err(UserError::InvalidCredentials);
            }
        };
        let matched = info.old_hashes.iter().position(|h| {
            let position = if h.salt_suffix {
                SaltPosition::Suffix
            } else {
                SaltPosition::Prefix
            };
            if h.algorithm == CURRENT_HASH {
                return self.verify_password(password, &h.hash) != Verified::No;
            }
            let salt = (!h.salt.is_empty()).then_some(h.salt.as_str());
            self.passwords.with_hash_slot(|| {
                password::verify_legacy(&h.algorithm, &h.hash, salt, position, password)
            })
        });
        let Some(matched) = matched else {
            if record.secret.is_empty() {
                // Same Argon2 work as a known account with a wrong password.
                self.passwords.verify_dummy(password);
            }
            return Err(UserError::InvalidCredentials);
        };
        if let Some(e) = status_refusal(&record) {
            return Err(e);
        }
        if info.old_hashes[matched].algorithm != CURRENT_HASH {
            // The password is right whatever happens to the upgrade; it is tried
            // again on the next login.
            if let Err(e) = self.upgrade_password(&id, &record, password, Some(matched)) {
                tracing::warn!(error = %e, "store upgraded password hash after login");
            }
        }
        Ok(id)
    }

    /// Stores a current hash of a password just verified against an older one. With
    /// `legacy` (the index of the legacy hash that matched) that hash is removed: it
    /// becomes the account's password hash when the account had none, or else a
    /// current hash kept beside it (merged accounts keep every member's password).
    /// Without, the account's own outdated hash is replaced.
    fn upgrade_password(
        &self,
        id: &Uuid,
        seen: &proto::Record,
        password: &str,
        legacy: Option<usize>,
    ) -> Result<(), UserError> {
        let secret = self.hash_password(password)?;
        let _locked = self.store.lock(&[id.as_bytes()]);
        let previous = self.load_changeable(id)?;
        if previous.version != seen.version {
            // Changed meanwhile (a password change, say): that change stands.
            return Ok(());
        }
        let (mut info, key) = self.opened(&previous)?;
        let mut record = previous.clone();
        match legacy {
            Some(i) if i < info.old_hashes.len() => {
                info.old_hashes.remove(i);
                if record.secret.is_empty() {
                    record.secret = secret;
                } else {
                    info.old_hashes.push(proto::LegacyHash {
                        algorithm: CURRENT_HASH.into(),
                        hash: secret,
                        source: "upgraded".into(),
                        ..Default::default()
                    });
                }
            }
            Some(_) => return Ok(()),
            None => record.secret = secret,
        }
        self.commit(Some((&previous, &key)), record, &info, "password_upgrade")?;
        metrics::counter!(m::PASSWORD_UPGRADES_TOTAL).increment(1);
        Ok(())
    }

    /// Imports legacy accounts in order. An item whose email (or else phone) belongs
    /// to an account already here is merged into it: missing profile fields are
    /// added (existing values win), the legacy hash joins `old_hashes`, a phone the
    /// account lacks is taken if free. Items are validated by the caller first.
    pub fn import(&self, items: Vec<ImportItem>) -> Result<Vec<ImportResult>, UserError> {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let r = self.import_one(item)?;
            metrics::counter!(
                m::IMPORT_ITEMS_TOTAL,
                "outcome" => match r.outcome { ImportOutcome::Created => "created", ImportOutcome::Merged => "merged" }
            )
            .increment(1);
            out.push(r);
        }
        Ok(out)
    }

    fn import_one(&self, item: ImportItem) -> Result<ImportResult, UserError> {
        let email_idx = self.index.email(&item.email);
        let phone_idx = item.phone.as_deref().map(|p| self.index.phone(p));
        let legacy = proto::LegacyHash {
            algorithm: item.legacy_hash.algorithm.clone(),
            hash: item.legacy_hash.hash.clone(),
            salt: item.legacy_hash.salt.clone().unwrap_or_default(),
            source: item.source.clone(),
            salt_suffix: item.legacy_hash.salt_position == SaltPosition::Suffix,
        };
        // The account to merge into is known only after a lookup, and its id must be
        // locked too: lock, look up, and retry if the answer moved meanwhile.
        let mut target: Option<[u8; 16]> = None;
        // The id a new account would get is locked with the rest: stripe locks are not
        // reentrant, so nothing may be locked a second time while these are held.
        let new_id = Uuid::new_v4();
        for _ in 0..LOCK_RETRIES {
            let mut keys: Vec<&[u8]> = vec![&email_idx, new_id.as_bytes()];
            if let Some(p) = &phone_idx {
                keys.push(p);
            }
            if let Some(t) = &target {
                keys.push(t);
            }
            let _locked = self.store.lock(&keys);
            let by_email = self.find_record(IndexField::Email, &email_idx)?;
            let by_phone = match (&by_email, &phone_idx) {
                (None, Some(p)) => self.find_record(IndexField::Phone, p)?,
                _ => None,
            };
            let existing = by_email.or(by_phone);
            let existing_id = existing
                .as_ref()
                .and_then(|r| <[u8; 16]>::try_from(r.id.as_slice()).ok());
            if existing_id != target {
                target = existing_id;
                continue;
            }
            return match existing {
                None => {
                    let id = new_id;
                    let record = proto::Record {
                        id: id.as_bytes().to_vec(),
                        status: Status::Active as i32,
                        email_index: email_idx.to_vec(),
                        phone_index: phone_idx.map(|p| p.to_vec()).unwrap_or_default(),
                        ..Default::default()
                    };
                    let info = proto::Info {
                        email: item.email,
                        phone: item.phone.unwrap_or_default(),
                        profile: item.profile,
                        old_hashes: vec![legacy],
                        ..Default::default()
                    };
                    self.commit(None, record, &info, "import")?;
                    Ok(ImportResult {
                        id,
                        outcome: ImportOutcome::Created,
                    })
                }
                Some(previous) => {
                    let id = Uuid::from_slice(&previous.id).map_err(|_| UserError::Unreadable)?;
                    let (mut info, key) = self.opened(&previous)?;
                    let mut record = previous.clone();
                    for (k, v) in item.profile {
                        info.profile.entry(k).or_insert(v);
                    }
                    if !info.old_hashes.contains(&legacy) {
                        info.old_hashes.push(legacy);
                    }
                    if info.email != item.email && !info.other_emails.contains(&item.email) {
                        info.other_emails.push(item.email);
                    }
                    if let (Some(phone), Some(h)) = (item.phone, phone_idx) {
                        if info.phone.is_empty() && !self.taken(IndexField::Phone, &h, Some(&id))? {
                            info.phone = phone;
                            record.phone_index = h.to_vec();
                        } else if info.phone != phone && !info.other_phones.contains(&phone) {
                            info.other_phones.push(phone);
                        }
                    }
                    self.commit(Some((&previous, &key)), record, &info, "import_merge")?;
                    Ok(ImportResult {
                        id,
                        outcome: ImportOutcome::Merged,
                    })
                }
            };
        }
        Err(UserError::Conflict(vec![Problem::new(
            "email",
            "changed concurrently during import; retry",
        )]))
    }

    /// Applies a change replicated from another region: stored only when its version
    /// is newer than the stored one, so replays, duplicates and any reordering leave
    /// the same state. Erases are the exception that keeps this true for an erased
    /// account: a tombstone replaces any live version, and only a later tombstone
    /// replaces it. An applied account that claims an email or phone held by
    /// another live account is a duplicate: the one with the lower (created version,
    /// id) wins and the other is merged into it, the same decision in every region.
    pub fn apply(&self, event: &proto::ChangeEvent) -> Result<Applied, ApplyError> {
        self.apply_with(event, true)
    }

    /// [`Users::apply`] for one event of a batch: a plain apply is written without
    /// waiting for the disk, and is durable once the caller has called
    /// [`crate::storage::store::Store::sync_wal`] (which it must do before it records the event as done). A
    /// merge of duplicates, which writes new versions of its own, is synced at once.
    pub fn apply_deferred(&self, event: &proto::ChangeEvent) -> Result<Applied, ApplyError> {
        self.apply_with(event, false)
    }

    fn apply_with(&self, event: &proto::ChangeEvent, sync: bool) -> Result<Applied, ApplyError> {
        let commit = |previous: Option<&proto::Record>, record: &proto::Record| {
            if sync {
                self.store.commit(previous, record, false).map(drop)
            } else {
                self.store.commit_unsynced(previous, record)
            }
        };
        if let (None, Some(entry)) = (&event.record, &event.entry) {
            return self.entries.apply(entry, sync);
        }
        if let (None, Some(key)) = (&event.record, &event.user_key) {
            return self.apply_user_key(key, sync);
        }
        if event.record.is_none() && !event.erased_user.is_empty() {
            // Only ever published as a null value; the erase itself travels as the
            // record's tombstone.
            return Err(ApplyError::Malformed("an erase is never sent as a value"));
        }
        let incoming = event
            .record
            .as_ref()
            .ok_or(ApplyError::Malformed("event without a record"))?;
        let id = Uuid::from_slice(&incoming.id)
            .map_err(|_| ApplyError::Malformed("record id is not 16 bytes"))?;
        if incoming
            .version
            .as_ref()
            .is_none_or(|v| v.logical >= crate::common::hlc::LOGICAL_LIMIT)
        {
            return Err(ApplyError::Malformed("record without a valid version"));
        }
        self.record_mac
            .verify(incoming)
            .map_err(|_| ApplyError::Integrity)?;
        let version = record_version(incoming);
        self.hlc.observe(&version)?;
        if self.faults.take_apply_failure() {
            return Err(ApplyError::Injected("transient apply failure"));
        }
        if self.faults.is_poisoned(&id) {
            return Err(ApplyError::Injected("record is poisoned"));
        }
        let claims: Vec<(IndexField, Vec<u8>)> = [IndexField::Email, IndexField::Phone]
            .into_iter()
            .filter_map(|f| crate::storage::store::indexed(incoming, f).map(|h| (f, h.to_vec())))
            .collect();
        let mut owners: Vec<[u8; 16]> = Vec::new();
        for _ in 0..LOCK_RETRIES {
            let mut keys: Vec<&[u8]> = vec![id.as_bytes()];
            keys.extend(claims.iter().map(|(_, h)| h.as_slice()));
            keys.extend(owners.iter().map(|o| o.as_slice()));
            let _locked = self.store.lock(&keys);
            // A local copy that fails its integrity check is replaced by the incoming one.
            let current = match self.get_record(&id) {
                Ok(c) => c,
                Err(UserError::Unreadable) => None,
                Err(e) => return Err(e.into()),
            };
            let rank = record_rank(incoming.tombstone, version.clone());
            if let Some((c, held)) = current
                .as_ref()
                .map(|c| (c, record_rank(c.tombstone, record_version(c))))
                .filter(|(_, held)| *held >= rank)
            {
                // The same version with more wrapped keys: key recovery's repair.
                if held == rank && envelope::extends_wraps(c, incoming) {
                    commit(Some(c), incoming)?;
                    return Ok(Applied::Applied);
                }
                return Ok(Applied::Skipped);
            }
            let mut found: Vec<proto::Record> = Vec::new();
            for (field, hash) in &claims {
                let hash: [u8; 32] = hash
                    .as_slice()
                    .try_into()
                    .map_err(|_| ApplyError::Malformed("index hash"))?;
                if let Some(other) = self.find_record(*field, &hash)? {
                    if other.id != incoming.id && !found.iter().any(|f| f.id == other.id) {
                        found.push(other);
                    }
                }
            }
            let mut found_ids: Vec<[u8; 16]> = found
                .iter()
                .filter_map(|r| <[u8; 16]>::try_from(r.id.as_slice()).ok())
                .collect();
            found_ids.sort_unstable();
            if found_ids != owners {
                owners = found_ids;
                continue;
            }
            if found.is_empty() {
                commit(current.as_ref(), incoming)?;
                return Ok(Applied::Applied);
            }
            self.merge_duplicates(current.as_ref(), incoming.clone(), found)?;
            return Ok(Applied::Merged);
        }
        Err(ApplyError::User(UserError::Conflict(vec![Problem::new(
            "id",
            "index owners kept changing while applying; retry",
        )])))
    }

    /// Stores a user key received from a peer: a new one as it is, a known one with the
    /// wraps it adds ([`envelope::merge_user_key`]). An erased account takes none, or
    /// a late key event would undo the erase here.
    fn apply_user_key(&self, key: &proto::UserKey, sync: bool) -> Result<Applied, ApplyError> {
        let id = Uuid::from_slice(&key.user_id)
            .map_err(|_| ApplyError::Malformed("user key's account id is not 16 bytes"))?;
        if key.key_id.len() != envelope::USER_KEY_ID_LEN {
            return Err(ApplyError::Malformed("user key id is not 8 bytes"));
        }
        self.user_key_mac
            .verify(key)
            .map_err(|_| ApplyError::Integrity)?;
        let _locked = self.store.lock(&[id.as_bytes()]);
        match self.get_record(&id) {
            Ok(Some(r)) if r.tombstone => return Ok(Applied::Skipped),
            Ok(_) | Err(UserError::Unreadable) => {}
            Err(e) => return Err(e.into()),
        }
        let mut stored = match self.user_key(&key.user_id) {
            Ok(None) | Err(UserError::Unreadable) => key.clone(),
            Ok(Some(local)) => match envelope::merge_user_key(&local, key) {
                Some(merged) => merged,
                None => return Ok(Applied::Skipped),
            },
            Err(e) => return Err(e.into()),
        };
        self.user_key_mac.sign(&mut stored);
        self.store
            .put_user_key(&stored, None, sync)
            .map_err(UserError::from)?;
        Ok(Applied::Applied)
    }

    /// Gives a record derived from `base` (and replacing `stored`) a version above both,
    /// seals `info` into it with a fresh data key and signs it.
    fn reseal(
        &self,
        record: &mut proto::Record,
        (info, user): (&proto::Info, &UserSecret),
        base: &proto::Record,
        stored: Option<&proto::Record>,
    ) -> Result<(), UserError> {
        let after = stored.map(record_version).max(Some(record_version(base)));
        record.version = Some(self.hlc.tick_after(after.as_ref()).to_proto());
        record.updated_at_ms = self.hlc.physical_now();
        let keyring = self.keyring();
        let regions = self.wrap_regions(&keyring)?;
        self.seal(record, info, &keyring, &regions, user)?;
        self.record_mac.sign(record);
        Ok(())
    }

    /// Merges duplicate accounts: `incoming` (replacing `current` under its id) and
    /// the live accounts that hold its email or phone. The callers hold every lock.
    fn merge_duplicates(
        &self,
        current: Option<&proto::Record>,
        incoming: proto::Record,
        others: Vec<proto::Record>,
    ) -> Result<(), UserError> {
        // (record, what it replaces in the store)
        let mut accounts: Vec<(proto::Record, Option<proto::Record>)> =
            vec![(incoming, current.cloned())];
        accounts.extend(others.into_iter().map(|o| (o.clone(), Some(o))));
        accounts.sort_by_key(|a| merge_rank(&a.0));
        let (winner, winner_prev) = accounts.remove(0);
        let winner_id = winner.id.clone();
        let (mut winner_info, winner_key) = self.opened(&winner)?;
        let mut winner_record = winner.clone();
        let mut merged: Vec<(proto::Record, Option<proto::Record>)> = Vec::new();
        for (loser, loser_prev) in accounts {
            let (info, key) = self.opened(&loser)?;
            fold_into(&mut winner_record, &mut winner_info, &loser, &info);
            let mut record = loser.clone();
            record.status = Status::Merged as i32;
            record.merged_into = winner_id.clone();
            self.reseal(&mut record, (&info, &key), &loser, loser_prev.as_ref())?;
            merged.push((record, loser_prev));
        }
        self.reseal(
            &mut winner_record,
            (&winner_info, &winner_key),
            &winner,
            winner_prev.as_ref(),
        )?;
        // Losers first: their index entries go before the winner (re)claims them.
        let mut changes: Vec<StoreChange<'_>> = merged
            .iter()
            .map(|(r, prev)| StoreChange {
                previous: prev.as_ref(),
                record: r,
                outbox: true,
                user_key: None,
            })
            .collect();
        changes.push(StoreChange {
            previous: winner_prev.as_ref(),
            record: &winner_record,
            outbox: true,
            user_key: None,
        });
        self.store.commit_many(&changes)?;
        self.outbox_signal.notify_one();
        metrics::counter!(m::STORE_COMMITS_TOTAL, "kind" => "merge")
            .increment(changes.len() as u64);
        Ok(())
    }

    pub fn digest(&self) -> Result<(u64, String), UserError> {
        let (count, digest) = self.store.digest()?;
        Ok((count, hex::encode(digest)))
    }

    /// One round of key recovery over the records after `cursor` (at most `limit`):
    ///
    /// - a record whose data key lacks a wrapped key for a region whose key service
    ///   answers (written while that region's key was unavailable) gets its data key
    ///   wrapped for every such region, at the same version, published like any other
    ///   change so that region can read it again (peers take it by
    ///   `envelope::extends_wraps`, and it never competes with a real change);
    /// - a record whose key for this region is under an older master key (after a
    ///   rotation) is moved to the active one, in place: every region moves its own.
    ///
    /// Records this node itself sealed short of a wrap are remembered, and all of them
    /// are repaired in the first round after every key service answers again, ahead of
    /// the scan: the scan alone would take `records / limit` rounds to reach them all.
    ///
    /// The ciphertext is never touched. Returns the round's counts and the next
    /// cursor (`None` once the scan wrapped around).
    pub fn recover_keys_round(
        &self,
        cursor: Option<[u8; 16]>,
        limit: usize,
    ) -> Result<(RecoveryRound, Option<[u8; 16]>), UserError> {
        let (batch, next) = self.store.scan_records(cursor, limit)?;
        let mut round = RecoveryRound {
            scanned: batch.len(),
            ..Default::default()
        };
        if self.own_key_available().is_err() {
            return Ok((round, next));
        }
        // First what this node sealed short during a key outage, all of it, once every
        // key service answers: those records read 503 in the regions they lack.
        let keyring = self.keyring();
        if keyring.regions().all(|r| self.faults.key_available(r)) {
            let noted = std::mem::take(&mut *self.short_wraps.lock());
            for id in noted {
                if let Some(seen) = self.get_record(&id).ok().flatten() {
                    self.repair_keys(&seen, &mut round)?;
                    self.repair_user_key(&id, &mut round)?;
                }
            }
        }
        for seen in batch {
            self.repair_keys(&seen, &mut round)?;
            if let (false, Ok(id)) = (seen.tombstone, Uuid::from_slice(&seen.id)) {
                self.repair_user_key(&id, &mut round)?;
            }
        }
        Ok((round, next))
    }

    /// Key recovery for the user key of account `id`, as [`Users::repair_keys`] does
    /// for records: wraps for the regions it lacks (published, so they can read the
    /// account), and this region's wrap moved to its active master key (kept here).
    fn repair_user_key(&self, id: &Uuid, round: &mut RecoveryRound) -> Result<(), UserError> {
        let _locked = self.store.lock(&[id.as_bytes()]);
        let key = match self.user_key(id.as_bytes()) {
            Ok(Some(k)) => k,
            Ok(None) | Err(UserError::Unreadable) => return Ok(()),
            Err(e) => return Err(e),
        };
        let repair = self.wraps_repair(&key.wraps);
        let regions = match &repair {
            KeyRepair::None => return Ok(()),
            KeyRepair::Missing(regions) => regions.clone(),
            KeyRepair::OwnKeyOld => vec![self.region.clone()],
        };
        let mut fixed = key;
        if !rewrapped(envelope::rewrap_user_key(
            &mut fixed,
            &self.keyring(),
            &regions,
        ))? {
            return Ok(());
        }
        self.user_key_mac.sign(&mut fixed);
        let publish = matches!(repair, KeyRepair::Missing(_));
        // Published for the regions it adds, stamped with this region and its time.
        let stamp = publish.then(|| {
            crate::common::hlc::Version {
                physical_ms: self.clock_now_ms(),
                logical: 0,
                region: self.region.clone(),
            }
            .to_proto()
        });
        self.store.put_user_key(&fixed, stamp.as_ref(), true)?;
        if publish {
            self.outbox_signal.notify_one();
        }
        let reason = if publish { "missing" } else { "rotation" };
        metrics::counter!(m::USER_KEYS_REWRAPPED_TOTAL, "reason" => reason).increment(1);
        round.user_keys += 1;
        Ok(())
    }

    /// Re-wraps `seen`'s data key where [`Users::key_repair`] says so, unless the record
    /// changed since it was read.
    fn repair_keys(
        &self,
        seen: &proto::Record,
        round: &mut RecoveryRound,
    ) -> Result<(), UserError> {
        if self.key_repair(seen) == KeyRepair::None {
            return Ok(());
        }
        let Ok(id) = Uuid::from_slice(&seen.id) else {
            return Ok(());
        };
        let _locked = self.store.lock(&[id.as_bytes()]);
        let previous = match self.get_record(&id) {
            Ok(Some(p)) => p,
            // Unreadable records are counted by get_record; the scan goes on.
            Ok(None) | Err(UserError::Unreadable) => return Ok(()),
            Err(e) => return Err(e),
        };
        let repair = self.key_repair(&previous);
        if previous != *seen || repair == KeyRepair::None {
            return Ok(());
        }
        let keyring = self.keyring();
        let regions = match &repair {
            KeyRepair::Missing(regions) => regions.clone(),
            _ => vec![self.region.clone()],
        };
        // Same version: only wraps change, and every region takes a record that
        // adds wraps at the version it holds (`envelope::extends_wraps`). A new
        // version would compete with real changes under last-writer-wins.
        let mut record = previous.clone();
        if !rewrapped(envelope::rewrap(&mut record, &keyring, &regions))? {
            return Ok(());
        }
        self.record_mac.sign(&mut record);
        if matches!(repair, KeyRepair::Missing(_)) {
            self.store.commit(Some(&previous), &record, true)?;
            self.outbox_signal.notify_one();
            metrics::counter!(m::STORE_COMMITS_TOTAL, "kind" => "key_recovery").increment(1);
            metrics::counter!(m::KEY_RECOVERIES_TOTAL).increment(1);
            round.recovered += 1;
        } else {
            // Same version, not published: moving this region's own wrap to its
            // new master key changes nothing another region reads.
            self.store.commit(Some(&previous), &record, false)?;
            metrics::counter!(m::STORE_COMMITS_TOTAL, "kind" => "rewrap").increment(1);
            metrics::counter!(m::REWRAPPED_RECORDS_TOTAL).increment(1);
            round.rewrapped += 1;
        }
        Ok(())
    }

    /// What key recovery would do to `record` here. Only records this region can
    /// open are repaired by it.
    fn key_repair(&self, record: &proto::Record) -> KeyRepair {
        let Some(env) = record.info.as_ref() else {
            return KeyRepair::None;
        };
        if record.tombstone {
            return KeyRepair::None;
        }
        self.wraps_repair(&env.keys)
    }

    /// What key recovery would do to a key wrapped as `wraps` (a record's data key or
    /// an account's key). Only keys this region can open are repaired by it.
    fn wraps_repair(&self, wraps: &[proto::WrappedKey]) -> KeyRepair {
        let keyring = self.keyring();
        let Some(own) = wraps.iter().find(|k| k.region == keyring.owner()) else {
            return KeyRepair::None;
        };
        let missing: Vec<String> = keyring
            .regions()
            .filter(|r| self.faults.key_available(r) && !wraps.iter().any(|k| k.region == *r))
            .map(str::to_string)
            .collect();
        if !missing.is_empty() {
            return KeyRepair::Missing(missing);
        }
        match keyring.active_key(keyring.owner()) {
            Some(active) if own.key_version != active.version => KeyRepair::OwnKeyOld,
            _ => KeyRepair::None,
        }
    }
}

/// Whether key recovery's re-wrap of one key went through: not this region's to
/// repair (it holds no wrap it can open: another region's job) and unreadable (counted)
/// are `false`, so the round goes on; only a failure of the node itself is an error.
fn rewrapped(result: Result<(), CryptoError>) -> Result<bool, UserError> {
    match result {
        Ok(()) => Ok(true),
        Err(CryptoError::NoKeyForRegion(_)) | Err(CryptoError::UnknownMasterKey(_)) => Ok(false),
        Err(CryptoError::Integrity) => {
            metrics::counter!(m::RECORDS_UNREADABLE_TOTAL, "reason" => "integrity").increment(1);
            Ok(false)
        }
        Err(e) => Err(UserError::Crypto(e)),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyRepair {
    None,
    /// Lacks a wrapped key for these regions, whose key services answer.
    Missing(Vec<String>),
    /// This region's wrap is under an older master key.
    OwnKeyOld,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::input;
    use crate::common::hlc::SystemClock;
    use crate::crypto::password::PasswordAlgorithm;
    use crate::storage::store::{StoreOptions, CF_RECORDS};

    fn users(dir: &std::path::Path) -> Users {
        let regions: Vec<String> = ["af-south", "eu-west", "us-east"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        users_with(
            dir,
            crate::crypto::keyring::init(&regions).unwrap().remove(0),
        )
    }

    fn users_with(dir: &std::path::Path, keyring: Keyring) -> Users {
        let region = keyring.owner().to_string();
        let store = Arc::new(Store::open(dir, &StoreOptions::default()).unwrap());
        let passwords = Passwords::new(PasswordAlgorithm::Argon2id, keyring.pepper()).unwrap();
        let hlc = Arc::new(Hlc::new(region, 500, Box::new(SystemClock)));
        Users::new(store, keyring, passwords, hlc, 8)
    }

    /// af-south and eu-west of one deployment, each with its own store (kept while
    /// the directories live).
    fn two_regions() -> (Vec<tempfile::TempDir>, Users, Users) {
        let regions: Vec<String> = ["af-south", "eu-west"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut rings = crate::crypto::keyring::init(&regions).unwrap();
        let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        let b = users_with(dirs[1].path(), rings.remove(1));
        let a = users_with(dirs[0].path(), rings.remove(0));
        (dirs, a, b)
    }

    /// Every event in `u`'s outbox, oldest first, taken out of it.
    fn drain(u: &Users) -> Vec<proto::ChangeEvent> {
        let head = u.store().outbox_head(10_000).unwrap();
        let seqs: Vec<u64> = head.iter().map(|(s, _)| *s).collect();
        u.store().outbox_remove(&seqs).unwrap();
        head.iter()
            .map(|(_, b)| <proto::ChangeEvent as prost::Message>::decode(b.as_slice()).unwrap())
            .collect()
    }

    /// The first record change among `events`.
    fn record_event(events: &[proto::ChangeEvent]) -> proto::ChangeEvent {
        events.iter().find(|e| e.record.is_some()).cloned().unwrap()
    }

    /// The first user key among `events`.
    fn key_event(events: &[proto::ChangeEvent]) -> proto::ChangeEvent {
        events
            .iter()
            .find(|e| e.user_key.is_some())
            .cloned()
            .unwrap()
    }

    fn new_user(email: &str) -> NewUser {
        input::new_user(
            &serde_json::json!({"email": email, "phone": "+14155552671", "password": "correct horse battery",
                                "profile": {"given_name": "Ada"}}),
            8,
        )
        .unwrap()
    }

    #[test]
    fn flipping_any_stored_byte_makes_the_read_fail_the_same_way() {
        let dir = tempfile::tempdir().unwrap();
        let users = users(dir.path());
        let (id, _) = users.create(new_user("ada@example.com")).unwrap();
        let key = *id.as_bytes();
        let original = users.store().raw_get(CF_RECORDS, &key).unwrap().unwrap();
        assert!(users.get(&id).is_ok());
        for i in 0..original.len() {
            for bit in [0x01u8, 0x80] {
                let mut bytes = original.clone();
                bytes[i] ^= bit;
                users.store().raw_put(CF_RECORDS, &key, &bytes).unwrap();
                match users.get(&id) {
                    Err(UserError::Unreadable) => {}
                    other => panic!("byte {i} bit {bit:#x}: expected Unreadable, got {other:?}"),
                }
            }
        }
        users.store().raw_put(CF_RECORDS, &key, &original).unwrap();
        assert_eq!(users.get(&id).unwrap().email, "ada@example.com");
    }

    #[test]
    fn a_swapped_index_entry_does_not_lead_to_another_account() {
        let dir = tempfile::tempdir().unwrap();
        let users = users(dir.path());
        let (a, _) = users.create(new_user("a@example.com")).unwrap();
        let mut b = new_user("b@example.com");
        b.phone = None;
        let (b, _) = users.create(b).unwrap();
        // Point a's email entry at b.
        let h = users.email_index("a@example.com");
        users
            .store()
            .raw_put(crate::storage::store::CF_EMAIL, &h, b.as_bytes())
            .unwrap();
        assert!(matches!(
            users.find_by_email("a@example.com"),
            Err(UserError::NotFound)
        ));
        assert_eq!(users.get(&a).unwrap().email, "a@example.com");
    }

    struct Ahead(u64);
    impl crate::common::hlc::TimeSource for Ahead {
        fn now_ms(&self) -> u64 {
            SystemClock.now_ms() + self.0
        }
    }

    #[test]
    fn events_from_a_clock_too_far_ahead_are_refused_and_change_nothing() {
        use crate::common::hlc::TimeSource;
        let rings =
            crate::crypto::keyring::init(&["af-south".to_string(), "eu-west".to_string()]).unwrap();
        let mut rings = rings.into_iter();
        let (a, b) = (rings.next().unwrap(), rings.next().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let fast = Users::new(
            Arc::new(Store::open(&dir.path().join("a"), &StoreOptions::default()).unwrap()),
            a,
            Passwords::new(PasswordAlgorithm::Argon2id, &[1; 32]).unwrap(),
            Arc::new(Hlc::new("af-south", 500, Box::new(Ahead(10_000)))),
            8,
        );
        let local = Users::new(
            Arc::new(Store::open(&dir.path().join("b"), &StoreOptions::default()).unwrap()),
            b,
            Passwords::new(PasswordAlgorithm::Argon2id, &[1; 32]).unwrap(),
            Arc::new(Hlc::new("eu-west", 500, Box::new(SystemClock))),
            8,
        );
        fast.create(new_user("future@example.com")).unwrap();
        let event = record_event(&drain(&fast));
        match local.apply(&event) {
            Err(ApplyError::Skew(e)) => assert!(e.ahead_ms >= 9_000, "{e}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(local.digest().unwrap().0, 0, "nothing stored");
        // The local clock did not jump either.
        assert!(local.hlc.tick().physical_ms < SystemClock.now_ms() + 1_000);
    }

    #[test]
    fn events_altered_in_transit_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let regions: Vec<String> = ["af-south", "eu-west"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut rings = crate::crypto::keyring::init(&regions).unwrap().into_iter();
        let origin = users_with(&dir.path().join("o"), rings.next().unwrap());
        origin.create(new_user("transit@example.com")).unwrap();
        let event = record_event(&drain(&origin));
        let target = users_with(&dir.path().join("t"), rings.next().unwrap());
        let mut locked = event.clone();
        locked.record.as_mut().unwrap().status = Status::Locked as i32;
        assert!(matches!(target.apply(&locked), Err(ApplyError::Integrity)));
        let mut newer = event.clone();
        newer
            .record
            .as_mut()
            .unwrap()
            .version
            .as_mut()
            .unwrap()
            .logical += 1;
        assert!(matches!(target.apply(&newer), Err(ApplyError::Integrity)));
        let mut empty = event.clone();
        empty.record = None;
        assert!(matches!(
            target.apply(&empty),
            Err(ApplyError::Malformed(_))
        ));
        assert_eq!(target.digest().unwrap().0, 0);
        // The genuine event applies, once.
        assert_eq!(target.apply(&event).unwrap(), Applied::Applied);
        assert_eq!(target.apply(&event).unwrap(), Applied::Skipped);
    }

    #[test]
    fn concurrent_creates_with_one_email_give_one_account() {
        let dir = tempfile::tempdir().unwrap();
        let users = Arc::new(users(dir.path()));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let u = users.clone();
                std::thread::spawn(move || {
                    let mut n = new_user("same@example.com");
                    n.phone = None;
                    u.create(n).is_ok()
                })
            })
            .collect();
        let created = handles
            .into_iter()
            .filter(|_| true)
            .map(|h| h.join().unwrap())
            .filter(|ok| *ok)
            .count();
        assert_eq!(created, 1);
        assert_eq!(users.digest().unwrap().0, 1);
    }

    #[test]
    fn every_record_sealed_during_a_key_outage_is_repaired_in_the_first_round_after_it() {
        let regions: Vec<String> = ["af-south", "eu-west"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut rings = crate::crypto::keyring::init(&regions).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let a = users_with(dir.path(), rings.remove(0));
        a.faults().set(crate::common::faults::FaultState {
            keys_unavailable: Some(["eu-west".to_string()].into()),
            ..Default::default()
        });
        for n in 0..5 {
            let user = input::new_user(
                &serde_json::json!({"email": format!("u{n}@example.com"),
                                    "password": "correct horse battery"}),
                8,
            )
            .unwrap();
            a.create(user).unwrap();
        }
        // Still down: nothing can be repaired, and nothing is forgotten.
        assert_eq!(a.recover_keys_round(None, 1).unwrap().0.recovered, 0);
        a.faults().set(crate::common::faults::FaultState {
            keys_unavailable: Some(Default::default()),
            ..Default::default()
        });
        // A scan of one record per round would need five rounds; the noted ones go
        // first, each record with its account's key.
        let (round, _) = a.recover_keys_round(None, 1).unwrap();
        assert_eq!((round.scanned, round.recovered, round.user_keys), (1, 5, 5));
        let (round, _) = a.recover_keys_round(None, 100).unwrap();
        assert_eq!(
            (round.scanned, round.recovered),
            (5, 0),
            "all were repaired"
        );
    }

    #[test]
    fn records_written_during_a_key_outage_are_repaired_without_beating_later_changes() {
        let regions: Vec<String> = ["af-south", "eu-west", "us-east"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut rings = crate::crypto::keyring::init(&regions).unwrap();
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let c = users_with(dirs[2].path(), rings.remove(2));
        let b = users_with(dirs[1].path(), rings.remove(1));
        let a = users_with(dirs[0].path(), rings.remove(0));
        let outage = crate::common::faults::FaultState {
            keys_unavailable: Some(["eu-west".to_string()].into()),
            ..Default::default()
        };
        a.faults().set(outage.clone());
        b.faults().set(outage);
        // eu-west itself can neither seal nor open while its key service is down.
        assert!(matches!(
            b.create(new_user("b@example.com")),
            Err(UserError::KeyUnavailable(_))
        ));
        let (id, _) = a.create(new_user("ada@example.com")).unwrap();
        let events = drain(&a);
        let (written, key) = (record_event(&events), key_event(&events));
        let env = written.record.as_ref().unwrap().info.as_ref().unwrap();
        assert!(env.keys.iter().all(|k| k.region != "eu-west"));
        let wraps = &key.user_key.as_ref().unwrap().wraps;
        assert!(wraps.iter().all(|k| k.region != "eu-west"));
        // Stored in eu-west all the same (no plaintext is needed to apply it) ...
        for region in [&b, &c] {
            assert_eq!(region.apply(&key).unwrap(), Applied::Applied);
            assert_eq!(region.apply(&written).unwrap(), Applied::Applied);
        }
        // ... but not readable there, even once its own key service is back.
        let over = crate::common::faults::FaultState {
            keys_unavailable: Some(Default::default()),
            ..Default::default()
        };
        b.faults().set(over.clone());
        assert!(matches!(b.get(&id), Err(UserError::KeyUnavailable(_))));
        // Nothing to repair while the key service is still down for af-south.
        let (round, _) = a.recover_keys_round(None, 100).unwrap();
        assert_eq!((round.scanned, round.recovered), (1, 0));
        a.faults().set(over);
        let (round, _) = a.recover_keys_round(None, 100).unwrap();
        assert_eq!(
            (round.recovered, round.user_keys),
            (1, 1),
            "the record and its key"
        );
        let events = drain(&a);
        let (repaired, repaired_key) = (record_event(&events), key_event(&events));
        let (v0, v1) = (
            record_version(written.record.as_ref().unwrap()),
            record_version(repaired.record.as_ref().unwrap()),
        );
        assert_eq!(v1, v0, "the same version, only wraps added");
        assert_eq!(
            a.recover_keys_round(None, 100).unwrap().0.recovered,
            0,
            "done once"
        );
        // A change made in us-east after the write wins over the repair everywhere,
        // however close in time: the repair keeps the version it repaired.
        let patch = input::user_patch(&serde_json::json!({"profile": {"city": "Lagos"}})).unwrap();
        c.update(&id, patch).unwrap();
        assert_eq!(c.apply(&repaired).unwrap(), Applied::Skipped);
        // eu-west reads the record once both repairs arrive.
        assert_eq!(b.apply(&repaired).unwrap(), Applied::Applied);
        assert_eq!(b.apply(&repaired).unwrap(), Applied::Skipped, "once");
        assert!(matches!(b.get(&id), Err(UserError::KeyUnavailable(_))));
        assert_eq!(b.apply(&repaired_key).unwrap(), Applied::Applied);
        assert_eq!(b.apply(&repaired_key).unwrap(), Applied::Skipped, "once");
        assert_eq!(b.get(&id).unwrap().email, "ada@example.com");
        assert_eq!(a.get(&id).unwrap().email, "ada@example.com");
    }

    #[test]
    fn an_erase_destroys_the_accounts_key_in_every_region_and_old_copies_stay_ciphertext() {
        let (_dirs, a, b) = two_regions();
        let (id, _) = a.create(new_user("erase@example.com")).unwrap();
        let created = drain(&a);
        for event in &created {
            assert_eq!(b.apply(event).unwrap(), Applied::Applied);
        }
        assert_eq!(b.get(&id).unwrap().email, "erase@example.com");
        let old_copy = record_event(&created).record.unwrap();

        a.delete(&id).unwrap();
        assert!(a.store().get_user_key(id.as_bytes()).unwrap().is_none());
        let erased = drain(&a);
        let tombstone = record_event(&erased);
        assert!(tombstone.record.as_ref().unwrap().tombstone);
        assert!(
            erased.iter().any(|e| e.erased_user == id.as_bytes()),
            "a null for the key topic"
        );
        // The peer destroys its copy of the key when the tombstone arrives, and
        // publishes the null on its own key topic too.
        assert_eq!(b.apply(&tombstone).unwrap(), Applied::Applied);
        assert!(b.store().get_user_key(id.as_bytes()).unwrap().is_none());
        assert!(drain(&b).iter().any(|e| e.erased_user == id.as_bytes()));
        // A key event arriving late (a replay, a re-wrap in flight) does not undo it.
        assert_eq!(b.apply(&key_event(&created)).unwrap(), Applied::Skipped);
        assert!(b.store().get_user_key(id.as_bytes()).unwrap().is_none());
        // What remains: the id, the version and the tombstone flag, nothing sealed.
        let stored = b.store().get(id.as_bytes()).unwrap().unwrap();
        assert!(stored.tombstone && stored.info.is_none() && stored.secret.is_empty());
        assert!(stored.email_index.is_empty() && stored.phone_index.is_empty());
        assert!(matches!(
            b.find_by_email("erase@example.com"),
            Err(UserError::NotFound)
        ));
        // A copy from before the erase (an old SST, a backup, a Kafka message), put
        // back in place, holds a data key this region's master key still opens, but
        // not the user key the encryption key also needs: it stays ciphertext.
        for region in [&a, &b] {
            region
                .store()
                .raw_put(
                    crate::storage::store::CF_RECORDS,
                    id.as_bytes(),
                    &prost::Message::encode_to_vec(&old_copy),
                )
                .unwrap();
            assert!(matches!(region.get(&id), Err(UserError::KeyUnavailable(_))));
            assert!(envelope::rewrap(&mut old_copy.clone(), &region.keyring(), &[]).is_ok());
        }
    }

    #[test]
    fn an_erase_wins_over_a_concurrent_later_change_in_every_region() {
        let (_dirs, a, b) = two_regions();
        let (id, _) = a.create(new_user("both@example.com")).unwrap();
        for event in drain(&a) {
            b.apply(&event).unwrap();
        }
        // Erased in af-south; changed in eu-west after it, before the erase arrives.
        a.delete(&id).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let patch = input::user_patch(&serde_json::json!({"profile": {"city": "Lagos"}})).unwrap();
        let changed = b.update(&id, patch).unwrap();
        let erase = record_event(&drain(&a));
        let change = record_event(&drain(&b));
        assert!(record_version(change.record.as_ref().unwrap()) == changed);
        assert!(changed > record_version(erase.record.as_ref().unwrap()));
        assert_eq!(a.apply(&change).unwrap(), Applied::Skipped);
        assert_eq!(b.apply(&erase).unwrap(), Applied::Applied);
        for region in [&a, &b] {
            assert!(matches!(region.get(&id), Err(UserError::NotFound)));
            assert!(region
                .store()
                .get_user_key(id.as_bytes())
                .unwrap()
                .is_none());
        }
        assert_eq!(a.digest().unwrap(), b.digest().unwrap());
    }

    #[test]
    fn erasing_an_account_erases_the_accounts_merged_into_it_in_every_region() {
        let (_dirs, a, b) = two_regions();
        // The same person signs up in both regions before either hears of the other.
        let (first, _) = a.create(new_user("twice@example.com")).unwrap();
        let (second, _) = b.create(new_user("twice@example.com")).unwrap();
        for event in drain(&b) {
            a.apply(&event).unwrap();
        }
        for event in drain(&a) {
            b.apply(&event).unwrap();
        }
        let winner = a.find_by_email("twice@example.com").unwrap().id;
        let loser = if winner == first { second } else { first };
        assert_eq!(a.get(&loser).unwrap().merged_into, Some(winner));
        assert_eq!(
            a.store().merged_into(winner.as_bytes()).unwrap(),
            vec![*loser.as_bytes()]
        );

        a.delete(&winner).unwrap();
        // As the consumers see them: the erases' nulls for the key topic are skipped.
        for event in drain(&a).iter().filter(|e| e.erased_user.is_empty()) {
            b.apply(event).unwrap();
        }
        for region in [&a, &b] {
            for id in [winner, loser] {
                assert!(matches!(region.get(&id), Err(UserError::NotFound)));
                assert!(region
                    .store()
                    .get_user_key(id.as_bytes())
                    .unwrap()
                    .is_none());
            }
            assert!(region
                .store()
                .merged_into(winner.as_bytes())
                .unwrap()
                .is_empty());
        }
        assert!(matches!(a.delete(&winner), Err(UserError::NotFound)));
    }
}
