//! The region's RocksDB store.
//!
//! Column families:
//! - `records`: user id (16 bytes) → `Record` (protobuf);
//! - `idx_email`, `idx_phone`: blind index (32 bytes) → user id;
//! - `outbox`: sequence number (8 bytes, big-endian) → `ChangeEvent`, in commit order;
//! - `meta`: small bookkeeping values (the next outbox sequence number);
//! - `retry`, `dead_letters`: replicated events that could not be applied yet or
//!   ever (see `retry.rs`, which owns their layout).
//!
//! Every change is one `WriteBatch` holding the record, its index entries and its
//! outbox event, written with the configured WAL sync policy: when [`Store::commit`]
//! returns, all of it is durable or none of it is.
//!
//! Callers serialise changes that touch the same keys with [`Store::lock`], striped
//! in-process locks taken in a fixed order, so writes to different users run in
//! parallel and RocksDB can group their WAL syncs.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, MutexGuard};
use prost::Message;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, Direction, IteratorMode,
    MergeOperands, Options, WriteBatch, WriteOptions, DB,
};

use crate::common::config::{invalid, Invalid};
use crate::common::hlc::Version;
use crate::proto;
use serde::{Deserialize, Serialize};

pub const CF_RECORDS: &str = "records";
pub const CF_EMAIL: &str = "idx_email";
pub const CF_PHONE: &str = "idx_phone";
pub const CF_OUTBOX: &str = "outbox";
pub const CF_META: &str = "meta";
pub const CF_RETRY: &str = "retry";
pub const CF_DEAD: &str = "dead_letters";
/// Replicated entries beside the records (API keys, ...): `kind (4 bytes BE) || key`.
pub const CF_ENTRIES: &str = "entries";
/// Each account's user key: user id (16 bytes) → `UserKey`. Deleted with the account.
pub const CF_USER_KEYS: &str = "user_keys";
/// Accounts merged into another: winner id ‖ merged id (16 bytes each) → empty. An
/// erase of the winner erases them too.
pub const CF_MERGED: &str = "merged";
const COLUMN_FAMILIES: [&str; 10] = [
    CF_RECORDS,
    CF_EMAIL,
    CF_PHONE,
    CF_OUTBOX,
    CF_META,
    CF_RETRY,
    CF_DEAD,
    CF_ENTRIES,
    CF_USER_KEYS,
    CF_MERGED,
];

/// A key and its value, as [`Store::scan_kv`] returns them.
pub type KvEntry = (Vec<u8>, Vec<u8>);

/// One write of a [`Store::write_kv`] batch.
#[derive(Debug, Clone)]
pub enum KvOp {
    Put {
        cf: &'static str,
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        cf: &'static str,
        key: Vec<u8>,
    },
    /// Raises a big-endian u64 in `meta` to at least `value` (a sequence mark).
    MaxU64 {
        key: &'static [u8],
        value: u64,
    },
}

/// The number of anti-entropy buckets: records fall into one by the first byte of
/// their (random) id, so each bucket is one contiguous key range.
pub const BUCKETS: usize = 256;

/// A record's place in a bucket listing: enough to tell which side is newer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub id: [u8; 16],
    pub version: Version,
    pub tombstone: bool,
    /// Regions the data key is wrapped for.
    pub wraps: u32,
}

const META_NEXT_SEQ: &[u8] = b"outbox_next_seq";
const LOCK_STRIPES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{context}: {source}")]
    Db {
        context: &'static str,
        source: rocksdb::Error,
    },
    /// Stored bytes that do not decode, or decode to something else than was written.
    #[error("stored {what} is corrupt")]
    Corrupt { what: &'static str },
}

fn db_err(context: &'static str) -> impl FnOnce(rocksdb::Error) -> StoreError {
    move |source| StoreError::Db { context, source }
}

/// For reads of one record or entry: a block that fails RocksDB's own checksum is the
/// same thing to a caller as bytes that fail ours — corrupt stored data.
fn read_err(
    context: &'static str,
    what: &'static str,
) -> impl FnOnce(rocksdb::Error) -> StoreError {
    move |source| match source.kind() {
        rocksdb::ErrorKind::Corruption => StoreError::Corrupt { what },
        _ => StoreError::Db { context, source },
    }
}

/// Store tuning, from the node config.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub wal_sync: WalSync,
    pub block_cache_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            wal_sync: WalSync::Always,
            block_cache_bytes: 64 << 20,
        }
    }
}

pub struct Store {
    db: DB,
    /// Kept for its statistics (tickers).
    options: Options,
    sync: bool,
    next_seq: AtomicU64,
    locks: Vec<Mutex<()>>,
    outbox: Mutex<OutboxScan>,
}

/// Where the publisher's outbox scans start. Published entries are deleted, and a scan
/// from the first key would step over every deletion still in the memtable: a queue
/// in RocksDB must start past them. Sequences are taken before their batch is written,
/// so a lower sequence can land after a higher one was read; the floor never passes
/// a sequence still being written.
#[derive(Default)]
struct OutboxScan {
    /// Every entry below this was published and removed, and none is still coming.
    floor: u64,
    /// Sequences taken by batches not yet written.
    writing: std::collections::BTreeSet<u64>,
    /// The last scan: the lowest sequence still being written when it began (every
    /// entry below it was present) and the sequences it returned.
    last: Option<(u64, Vec<u64>)>,
}

/// Held while a change to the locked keys is read, decided and committed.
pub struct Locked<'a> {
    _guards: Vec<MutexGuard<'a, ()>>,
}

fn max_merge(_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    let decode = |b: &[u8]| <[u8; 8]>::try_from(b).map(u64::from_be_bytes).unwrap_or(0);
    let mut max = existing.map(decode).unwrap_or(0);
    for op in operands {
        max = max.max(decode(op));
    }
    Some(max.to_be_bytes().to_vec())
}

/// One record change inside a batch.
pub struct Change<'a> {
    /// The record as stored before (its index entries are moved).
    pub previous: Option<&'a proto::Record>,
    pub record: &'a proto::Record,
    /// Append a change event to the outbox (local changes); applied remote changes
    /// are not re-published.
    pub outbox: bool,
    /// The account's new user key, written with it (and published, with `outbox`).
    pub user_key: Option<&'a proto::UserKey>,
}

/// Outcome of [`Store::commit`].
#[derive(Debug)]
pub struct Committed {
    /// The outbox event, when one was written.
    pub event: Option<proto::ChangeEvent>,
}

impl Store {
    pub fn open(path: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        let cache = Cache::new_lru_cache(options.block_cache_bytes);
        let cf_options = |name: &str| {
            let mut o = Options::default();
            // Values are ciphertext and hashes: compression would only cost CPU. It is
            // also kept off so that a scan of the files sees the bytes as written.
            o.set_compression_type(DBCompressionType::None);
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            if name != CF_OUTBOX {
                table.set_bloom_filter(10.0, false);
            }
            o.set_block_based_table_factory(&table);
            if name == CF_META {
                o.set_merge_operator_associative("max_u64", max_merge);
            }
            ColumnFamilyDescriptor::new(name, o)
        };
        let mut db_options = Options::default();
        db_options.create_if_missing(true);
        db_options.create_missing_column_families(true);
        db_options.set_max_background_jobs(2);
        db_options.set_keep_log_file_num(4);
        db_options.set_compression_type(DBCompressionType::None);
        // Tickers for the block cache hit ratio and write stalls (a few % of CPU).
        db_options.enable_statistics();
        let db = DB::open_cf_descriptors(
            &db_options,
            path,
            COLUMN_FAMILIES.iter().map(|n| cf_options(n)),
        )
        .map_err(db_err("open RocksDB"))?;
        let store = Store {
            db,
            options: db_options,
            sync: options.wal_sync == WalSync::Always,
            next_seq: AtomicU64::new(0),
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            outbox: Mutex::new(OutboxScan::default()),
        };
        let from_meta = store
            .db
            .get_cf(store.cf(CF_META), META_NEXT_SEQ)
            .map_err(db_err("read outbox sequence"))?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        // The outbox tail only raises the sequence above the persisted mark; a
        // corrupt tail block must not keep the node from starting.
        let from_outbox = match store
            .db
            .iterator_cf(store.cf(CF_OUTBOX), IteratorMode::End)
            .next()
            .transpose()
        {
            Ok(tail) => tail
                .and_then(|(k, _)| <[u8; 8]>::try_from(&*k).ok())
                .map(|k| u64::from_be_bytes(k) + 1)
                .unwrap_or(0),
            Err(e) => {
                tracing::error!(error = %e, "read outbox tail; using the persisted sequence");
                0
            }
        };
        store
            .next_seq
            .store(from_meta.max(from_outbox).max(1), Ordering::SeqCst);
        Ok(store)
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("every column family is opened with the database")
    }

    fn write_options(&self) -> WriteOptions {
        let mut w = WriteOptions::default();
        w.set_sync(self.sync);
        w
    }

    /// Locks the stripes of `keys` (user ids, index hashes) in a fixed order. The locks
    /// are not reentrant: a thread holding a [`Locked`] must not call `lock` again
    /// before dropping it (two keys may share a stripe).
    pub fn lock(&self, keys: &[&[u8]]) -> Locked<'_> {
        let mut stripes: Vec<usize> = keys
            .iter()
            .map(|k| {
                let mut h = DefaultHasher::new();
                k.hash(&mut h);
                (h.finish() as usize) % LOCK_STRIPES
            })
            .collect();
        stripes.sort_unstable();
        stripes.dedup();
        Locked {
            _guards: stripes.into_iter().map(|i| self.locks[i].lock()).collect(),
        }
    }

    /// The record stored under `id`. Bytes that do not decode to exactly what is stored
    /// are reported as corrupt.
    pub fn get(&self, id: &[u8; 16]) -> Result<Option<proto::Record>, StoreError> {
        match self
            .db
            .get_pinned_cf(self.cf(CF_RECORDS), id)
            .map_err(read_err("read record", "record"))?
        {
            None => Ok(None),
            Some(bytes) => decode_record(id, &bytes).map(Some),
        }
    }

    fn index_cf(field: IndexField) -> &'static str {
        match field {
            IndexField::Email => CF_EMAIL,
            IndexField::Phone => CF_PHONE,
        }
    }

    /// The user id an index hash points at.
    pub fn lookup(&self, field: IndexField, hash: &[u8]) -> Result<Option<[u8; 16]>, StoreError> {
        match self
            .db
            .get_pinned_cf(self.cf(Self::index_cf(field)), hash)
            .map_err(read_err("read index", "index entry"))?
        {
            None => Ok(None),
            Some(v) => <[u8; 16]>::try_from(&*v)
                .map(Some)
                .map_err(|_| StoreError::Corrupt {
                    what: "index entry",
                }),
        }
    }

    /// Writes `record` (replacing `previous`), moves its index entries, and — when
    /// `outbox` is set — appends its change event, all in one durable batch. The
    /// caller holds the locks of the id and of every index hash involved.
    pub fn commit(
        &self,
        previous: Option<&proto::Record>,
        record: &proto::Record,
        outbox: bool,
    ) -> Result<Committed, StoreError> {
        let mut events = self.commit_many(&[Change {
            previous,
            record,
            outbox,
            user_key: None,
        }])?;
        Ok(Committed {
            event: events.pop().flatten(),
        })
    }

    /// Several changes in one durable batch: all of them or none. Used where one
    /// decision touches several records (a duplicate account merged into another).
    pub fn commit_many(
        &self,
        changes: &[Change<'_>],
    ) -> Result<Vec<Option<proto::ChangeEvent>>, StoreError> {
        self.commit_many_opt(changes, self.sync)
    }

    /// [`Store::commit`] without an outbox event and without waiting for the WAL to
    /// reach the disk: the write is visible at once and durable after the next
    /// [`Store::sync_wal`]. Applying a batch of replicated events uses it so that the
    /// batch costs one fsync instead of one per event; the consumer stores its offsets
    /// only after the sync, so a crash before it replays the events.
    pub fn commit_unsynced(
        &self,
        previous: Option<&proto::Record>,
        record: &proto::Record,
    ) -> Result<(), StoreError> {
        self.commit_many_opt(
            &[Change {
                previous,
                record,
                outbox: false,
                user_key: None,
            }],
            false,
        )
        .map(drop)
    }

    /// Makes every write so far durable, under the configured WAL policy (with
    /// `wal_sync = "never"` it does nothing, as the writes themselves would not sync).
    pub fn sync_wal(&self) -> Result<(), StoreError> {
        if !self.sync {
            return Ok(());
        }
        self.db.flush_wal(true).map_err(db_err("sync WAL"))
    }

    fn commit_many_opt(
        &self,
        changes: &[Change<'_>],
        sync: bool,
    ) -> Result<Vec<Option<proto::ChangeEvent>>, StoreError> {
        let mut batch = WriteBatch::default();
        let mut events = Vec::with_capacity(changes.len());
        // Its sequences stop counting as being written when this returns, either way.
        struct Writing<'a>(Vec<u64>, &'a Mutex<OutboxScan>);
        impl Drop for Writing<'_> {
            fn drop(&mut self) {
                if !self.0.is_empty() {
                    let mut scan = self.1.lock();
                    for s in &self.0 {
                        scan.writing.remove(s);
                    }
                }
            }
        }
        let mut writing = Writing(Vec::new(), &self.outbox);
        // Index entries as this batch leaves them so far: a later change must see
        // what an earlier change in the same batch wrote or removed.
        let mut pending: std::collections::HashMap<(IndexField, Vec<u8>), Option<[u8; 16]>> =
            std::collections::HashMap::new();
        for change in changes {
            let record = change.record;
            let id: [u8; 16] = record
                .id
                .as_slice()
                .try_into()
                .map_err(|_| StoreError::Corrupt { what: "record id" })?;
            batch.put_cf(self.cf(CF_RECORDS), id, record.encode_to_vec());
            for field in [IndexField::Email, IndexField::Phone] {
                let new = indexed(record, field);
                let old = change.previous.and_then(|p| indexed(p, field));
                if let Some(old) = old.filter(|o| Some(*o) != new) {
                    // Only remove an entry that still points here: another account
                    // may have taken the value since.
                    let owner = match pending.get(&(field, old.to_vec())) {
                        Some(o) => *o,
                        None => self.lookup(field, old)?,
                    };
                    if owner == Some(id) {
                        batch.delete_cf(self.cf(Self::index_cf(field)), old);
                        pending.insert((field, old.to_vec()), None);
                    }
                }
                if let Some(new) = new {
                    batch.put_cf(self.cf(Self::index_cf(field)), new, id);
                    pending.insert((field, new.to_vec()), Some(id));
                }
            }
            let merged_entry = |r: &proto::Record| {
                (r.status == proto::Status::Merged as i32
                    && !r.tombstone
                    && r.merged_into.len() == 16)
                    .then(|| [r.merged_into.as_slice(), &id].concat())
            };
            let (was, now) = (change.previous.and_then(merged_entry), merged_entry(record));
            if was != now {
                if let Some(was) = was {
                    batch.delete_cf(self.cf(CF_MERGED), was);
                }
                if let Some(now) = now {
                    batch.put_cf(self.cf(CF_MERGED), now, []);
                }
            }
            if let Some(key) = change.user_key {
                batch.put_cf(self.cf(CF_USER_KEYS), id, key.encode_to_vec());
                if change.outbox {
                    let (seq, _) = self.append_outbox(&mut batch, record.version.as_ref(), |e| {
                        e.user_key = Some(key.clone())
                    });
                    writing.0.push(seq);
                }
            }
            events.push(if change.outbox {
                let (seq, event) = self.append_outbox(&mut batch, record.version.as_ref(), |e| {
                    e.record = Some(record.clone())
                });
                writing.0.push(seq);
                Some(event)
            } else {
                None
            });
            if record.tombstone {
                // Crypto-shredding: the account's key goes with its data, here and
                // (through the outbox) from this region's user-key topic, whether the
                // erase was made here or applied from a peer.
                batch.delete_cf(self.cf(CF_USER_KEYS), id);
                let (seq, _) = self.append_outbox(&mut batch, record.version.as_ref(), |e| {
                    e.erased_user = id.to_vec()
                });
                writing.0.push(seq);
            }
        }
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        self.db
            .write_opt(batch, &options)
            .map_err(db_err("write change batch"))?;
        Ok(events)
    }

    /// The accounts merged into `winner`.
    pub fn merged_into(&self, winner: &[u8; 16]) -> Result<Vec<[u8; 16]>, StoreError> {
        let mut out = Vec::new();
        let from = IteratorMode::From(winner, rocksdb::Direction::Forward);
        for item in self.db.iterator_cf(self.cf(CF_MERGED), from) {
            let (k, _) = item.map_err(db_err("scan merged accounts"))?;
            if !k.starts_with(winner) {
                break;
            }
            let merged = k[16..].try_into().map_err(|_| StoreError::Corrupt {
                what: "merged account key",
            })?;
            out.push(merged);
        }
        Ok(out)
    }

    /// The user key of account `id`, undecodable bytes reported as corrupt.
    pub fn get_user_key(&self, id: &[u8; 16]) -> Result<Option<proto::UserKey>, StoreError> {
        self.db
            .get_pinned_cf(self.cf(CF_USER_KEYS), id)
            .map_err(read_err("read user key", "user key"))?
            .map(|v| {
                proto::UserKey::decode(v.as_ref())
                    .map_err(|_| StoreError::Corrupt { what: "user key" })
            })
            .transpose()
    }

    /// Writes a user key received from a peer or re-wrapped by key recovery, with its
    /// change event when `publish` names its origin and time (a re-wrap is published for the regions it
    /// adds). The caller holds the account's lock and has checked that the account is
    /// not erased.
    pub fn put_user_key(
        &self,
        key: &proto::UserKey,
        publish: Option<&proto::Version>,
        sync: bool,
    ) -> Result<(), StoreError> {
        let id: [u8; 16] = key
            .user_id
            .as_slice()
            .try_into()
            .map_err(|_| StoreError::Corrupt {
                what: "user key id",
            })?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_USER_KEYS), id, key.encode_to_vec());
        let event = publish
            .is_some()
            .then_some(|e: &mut proto::ChangeEvent| e.user_key = Some(key.clone()));
        self.write_with_event(batch, publish, event, sync, "write user key")
            .map(drop)
    }

    /// Up to `limit` user keys after account id `after`, in id order.
    pub fn scan_user_keys(
        &self,
        after: Option<[u8; 16]>,
        limit: usize,
    ) -> Result<Vec<proto::UserKey>, StoreError> {
        let mode = match &after {
            Some(a) => IteratorMode::From(a, rocksdb::Direction::Forward),
            None => IteratorMode::Start,
        };
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_USER_KEYS), mode) {
            let (k, v) = item.map_err(db_err("scan user keys"))?;
            if after.is_some_and(|a| a.as_slice() == &*k) {
                continue;
            }
            out.push(
                proto::UserKey::decode(v.as_ref())
                    .map_err(|_| StoreError::Corrupt { what: "user key" })?,
            );
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Takes the next outbox sequence (now being written: the caller releases it
    /// from `OutboxScan::writing` once its batch is written or dropped) and puts the
    /// event `fill` completes into `batch`.
    fn append_outbox(
        &self,
        batch: &mut WriteBatch,
        version: Option<&proto::Version>,
        fill: impl FnOnce(&mut proto::ChangeEvent),
    ) -> (u64, proto::ChangeEvent) {
        let seq = {
            let mut scan = self.outbox.lock();
            let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
            scan.writing.insert(seq);
            seq
        };
        let origin = version.map(|v| v.region.clone()).unwrap_or_default();
        let written_ms = version.map_or_else(
            || crate::common::hlc::TimeSource::now_ms(&crate::common::hlc::SystemClock),
            |v| v.physical_ms,
        );
        let mut event = proto::ChangeEvent {
            event_id: format!("{origin}:{seq}"),
            origin_region: origin,
            sequence: seq,
            written_ms,
            ..Default::default()
        };
        fill(&mut event);
        batch.put_cf(self.cf(CF_OUTBOX), seq.to_be_bytes(), event.encode_to_vec());
        batch.merge_cf(self.cf(CF_META), META_NEXT_SEQ, (seq + 1).to_be_bytes());
        (seq, event)
    }

    /// Writes `entry` under its (kind, key), with its change event when `outbox` is
    /// set, in one batch (synced when `sync`). The caller holds the entry's lock and
    /// has decided that `entry` is newer than what is stored.
    pub fn commit_entry(
        &self,
        entry: &proto::Entry,
        outbox: bool,
        sync: bool,
    ) -> Result<Option<proto::ChangeEvent>, StoreError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(
            self.cf(CF_ENTRIES),
            entry_key(entry.kind, &entry.key),
            entry.encode_to_vec(),
        );
        let event = outbox.then_some(|e: &mut proto::ChangeEvent| e.entry = Some(entry.clone()));
        self.write_with_event(batch, entry.version.as_ref(), event, sync, "write entry")
    }

    /// Writes `batch` (synced when `sync` and the WAL policy syncs), with the outbox
    /// event `fill` completes when there is one, and releases that event's sequence
    /// whether the write succeeded or not.
    fn write_with_event(
        &self,
        mut batch: WriteBatch,
        version: Option<&proto::Version>,
        fill: Option<impl FnOnce(&mut proto::ChangeEvent)>,
        sync: bool,
        context: &'static str,
    ) -> Result<Option<proto::ChangeEvent>, StoreError> {
        let appended = fill.map(|fill| self.append_outbox(&mut batch, version, fill));
        let mut options = WriteOptions::default();
        options.set_sync(sync && self.sync);
        let written = self.db.write_opt(batch, &options).map_err(db_err(context));
        if let Some((seq, _)) = &appended {
            self.outbox.lock().writing.remove(seq);
        }
        written?;
        Ok(appended.map(|(_, event)| event))
    }

    /// Removes the entry under (kind, key) from this store only (the entry sweeps:
    /// every region removes its own copy by the same rule). The caller holds the
    /// entry's lock.
    pub fn delete_entry(&self, kind: u32, key: &[u8]) -> Result<(), StoreError> {
        self.db
            .delete_cf_opt(
                self.cf(CF_ENTRIES),
                entry_key(kind, key),
                &self.write_options(),
            )
            .map_err(db_err("delete entry"))
    }

    /// The entry stored under (kind, key), undecoded entries reported as corrupt.
    pub fn get_entry(&self, kind: u32, key: &[u8]) -> Result<Option<proto::Entry>, StoreError> {
        self.db
            .get_cf(self.cf(CF_ENTRIES), entry_key(kind, key))
            .map_err(read_err("read entry", "entry"))?
            .map(|v| {
                proto::Entry::decode(v.as_slice())
                    .map_err(|_| StoreError::Corrupt { what: "entry" })
            })
            .transpose()
    }

    /// Every entry of `kind` whose key starts with `key_prefix`, in key order;
    /// entries that do not decode are skipped.
    pub fn entries(&self, kind: u32, key_prefix: &[u8]) -> Result<Vec<proto::Entry>, StoreError> {
        let prefix = entry_key(kind, key_prefix);
        let mut out = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(CF_ENTRIES),
            IteratorMode::From(&prefix, Direction::Forward),
        ) {
            let (k, v) = item.map_err(db_err("scan entries"))?;
            if !k.starts_with(&prefix) {
                break;
            }
            if let Ok(e) = proto::Entry::decode(v.as_ref()) {
                out.push(e);
            }
        }
        Ok(out)
    }

    /// Up to `limit` outbox entries in sequence order, from the oldest.
    pub fn outbox_head(&self, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let (floor, lowest_writing) = {
            let scan = self.outbox.lock();
            let lowest = scan
                .writing
                .first()
                .copied()
                .unwrap_or_else(|| self.next_seq.load(Ordering::SeqCst));
            (scan.floor, lowest)
        };
        let mut out = Vec::new();
        let from = floor.to_be_bytes();
        let mode = IteratorMode::From(&from, Direction::Forward);
        for item in self.db.iterator_cf(self.cf(CF_OUTBOX), mode) {
            let (k, v) = item.map_err(db_err("scan outbox"))?;
            let seq = <[u8; 8]>::try_from(&*k)
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt { what: "outbox key" })?;
            out.push((seq, v.to_vec()));
            if out.len() >= limit {
                break;
            }
        }
        self.outbox.lock().last = Some((lowest_writing, out.iter().map(|(s, _)| *s).collect()));
        Ok(out)
    }

    /// Removes published outbox entries.
    pub fn outbox_remove(&self, seqs: &[u64]) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for s in seqs {
            batch.delete_cf(self.cf(CF_OUTBOX), s.to_be_bytes());
        }
        self.db
            .write_opt(batch, &self.write_options())
            .map_err(db_err("remove published outbox entries"))?;
        // Past the removed prefix of the last scan, but not past anything that was still
        // being written when it began.
        let mut scan = self.outbox.lock();
        if let Some((lowest_writing, returned)) = scan.last.take() {
            let past_removed = match returned.iter().find(|s| !seqs.contains(s)) {
                Some(kept) => *kept,
                None => returned.last().map_or(scan.floor, |s| s + 1),
            };
            scan.floor = scan.floor.max(past_removed.min(lowest_writing));
        }
        Ok(())
    }

    /// Records after `after` in id order, from at most `limit` rows; for background
    /// scans. Also returns where the next scan starts (`None`: the end was reached).
    pub fn scan_records(
        &self,
        after: Option<[u8; 16]>,
        limit: usize,
    ) -> Result<(Vec<proto::Record>, Option<[u8; 16]>), StoreError> {
        let mode = match &after {
            Some(id) => IteratorMode::From(id, Direction::Forward),
            None => IteratorMode::Start,
        };
        let mut out = Vec::new();
        let mut seen = 0;
        let mut last = None;
        for item in self.db.iterator_cf(self.cf(CF_RECORDS), mode) {
            let (k, v) = item.map_err(db_err("scan records"))?;
            if after.is_some_and(|a| *k == a) {
                continue;
            }
            seen += 1;
            let Ok(id) = <[u8; 16]>::try_from(&*k) else {
                continue;
            };
            last = Some(id);
            // A record that does not decode is skipped here: reads report it, and
            // anti-entropy replaces it from a peer.
            if let Ok(record) = decode_record(&id, &v) {
                out.push(record);
            }
            if seen >= limit {
                break;
            }
        }
        Ok((out, if seen >= limit { last } else { None }))
    }

    /// `(count, SHA-256)` over every record's (id, version, tombstone flag) in id order:
    /// two regions holding the same versions give the same digest.
    pub fn digest(&self) -> Result<(u64, [u8; 32]), StoreError> {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut count = 0u64;
        let mut buf = Vec::with_capacity(64);
        for item in self
            .db
            .iterator_cf(self.cf(CF_RECORDS), IteratorMode::Start)
        {
            let (k, v) = item.map_err(db_err("scan records for digest"))?;
            let id = <[u8; 16]>::try_from(&*k)
                .map_err(|_| StoreError::Corrupt { what: "record key" })?;
            let record = decode_record(&id, &v)?;
            buf.clear();
            stamp_bytes(
                &Stamp {
                    id,
                    version: record_version(&record),
                    tombstone: record.tombstone,
                    wraps: 0,
                },
                &mut buf,
            );
            ctx.update(&buf);
            count += 1;
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        Ok((count, out))
    }

    /// Live records (not tombstones) whose account key is not here: records this
    /// region cannot read yet, their key still on its way on the user-key topic.
    pub fn unkeyed_records(&self) -> Result<u64, StoreError> {
        let mut unkeyed = 0;
        for item in self
            .db
            .iterator_cf(self.cf(CF_RECORDS), IteratorMode::Start)
        {
            let (k, v) = item.map_err(db_err("scan records for keys"))?;
            let id = <[u8; 16]>::try_from(&*k)
                .map_err(|_| StoreError::Corrupt { what: "record key" })?;
            if !decode_record(&id, &v)?.tombstone
                && self
                    .db
                    .get_pinned_cf(self.cf(CF_USER_KEYS), id)
                    .map_err(db_err("read user key"))?
                    .is_none()
            {
                unkeyed += 1;
            }
        }
        Ok(unkeyed)
    }

    /// `(count, SHA-256)` per bucket over the same (id, version, tombstone) as
    /// [`Store::digest`], in one scan.
    pub fn bucket_digests(&self) -> Result<Vec<(u64, [u8; 32])>, StoreError> {
        let mut ctxs: Vec<(u64, ring::digest::Context)> = (0..BUCKETS)
            .map(|_| (0, ring::digest::Context::new(&ring::digest::SHA256)))
            .collect();
        let mut buf = Vec::with_capacity(64);
        for stamp in self.stamps_in(0, BUCKETS)? {
            buf.clear();
            stamp_bytes(&stamp, &mut buf);
            buf.extend_from_slice(&stamp.wraps.to_be_bytes());
            let (count, ctx) = &mut ctxs[usize::from(stamp.id[0])];
            ctx.update(&buf);
            *count += 1;
        }
        Ok(ctxs
            .into_iter()
            .map(|(count, ctx)| {
                let mut out = [0u8; 32];
                out.copy_from_slice(ctx.finish().as_ref());
                (count, out)
            })
            .collect())
    }

    /// The stamps of every record in buckets `from..to`, in id order. A record that
    /// does not decode gets the lowest version, so that any peer's copy replaces it.
    pub fn stamps_in(&self, from: usize, to: usize) -> Result<Vec<Stamp>, StoreError> {
        let mut out = Vec::new();
        if from >= BUCKETS {
            return Ok(out);
        }
        let start = [from as u8];
        let mode = IteratorMode::From(&start, Direction::Forward);
        for item in self.db.iterator_cf(self.cf(CF_RECORDS), mode) {
            let (k, v) = item.map_err(db_err("scan records"))?;
            if usize::from(k.first().copied().unwrap_or(0)) >= to {
                break;
            }
            let Ok(id) = <[u8; 16]>::try_from(&*k) else {
                tracing::error!("record key of the wrong length; skipped by anti-entropy");
                continue;
            };
            out.push(match decode_record(&id, &v) {
                Ok(record) => Stamp {
                    id,
                    version: record_version(&record),
                    tombstone: record.tombstone,
                    wraps: record.info.as_ref().map_or(0, |e| e.keys.len() as u32),
                },
                Err(_) => Stamp {
                    id,
                    version: Version {
                        physical_ms: 0,
                        logical: 0,
                        region: String::new(),
                    },
                    tombstone: false,
                    wraps: 0,
                },
            });
        }
        Ok(out)
    }

    /// Writes `ops` as one durable batch.
    pub fn write_kv(&self, ops: &[KvOp]) -> Result<(), StoreError> {
        let mut batch = WriteBatch::default();
        for op in ops {
            match op {
                KvOp::Put { cf, key, value } => batch.put_cf(self.cf(cf), key, value),
                KvOp::Delete { cf, key } => batch.delete_cf(self.cf(cf), key),
                KvOp::MaxU64 { key, value } => {
                    batch.merge_cf(self.cf(CF_META), key, value.to_be_bytes())
                }
            }
        }
        self.db
            .write_opt(batch, &self.write_options())
            .map_err(db_err("write batch"))
    }

    /// Reads one value of `cf`.
    pub fn get_kv(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get_cf(self.cf(cf), key)
            .map_err(read_err("read entry", "entry"))
    }

    /// Entries of `cf` whose keys start with `prefix`, from `from` (inclusive; the
    /// prefix itself when empty), at most `limit`.
    pub fn scan_kv(
        &self,
        cf: &str,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<Vec<KvEntry>, StoreError> {
        let start = if from.is_empty() { prefix } else { from };
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(self.cf(cf), IteratorMode::From(start, Direction::Forward))
        {
            let (k, v) = item.map_err(db_err("scan entries"))?;
            if !k.starts_with(prefix) || out.len() >= limit {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// A big-endian u64 kept in `meta` (0 when absent).
    pub fn meta_u64(&self, key: &[u8]) -> Result<u64, StoreError> {
        Ok(self
            .db
            .get_cf(self.cf(CF_META), key)
            .map_err(db_err("read meta"))?
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }

    /// Exports RocksDB's health as metrics: write stops and delays, stall time,
    /// pending compaction, SST and memtable sizes, block cache usage and hits.
    pub fn record_health(&self) {
        use crate::common::metrics as m;
        use rocksdb::statistics::Ticker;
        let db_int = |name: &str| self.db.property_int_value(name).ok().flatten().unwrap_or(0);
        let cf_int = |cf: &str, name: &str| {
            self.db
                .property_int_value_cf(self.cf(cf), name)
                .ok()
                .flatten()
                .unwrap_or(0)
        };
        metrics::gauge!(m::ROCKSDB_WRITE_STOPPED).set(db_int("rocksdb.is-write-stopped") as f64);
        metrics::gauge!(m::ROCKSDB_DELAYED_WRITE_RATE_BYTES)
            .set(db_int("rocksdb.actual-delayed-write-rate") as f64);
        let mut pending = 0;
        let mut memtables = 0;
        for cf in COLUMN_FAMILIES {
            pending += cf_int(cf, "rocksdb.estimate-pending-compaction-bytes");
            memtables += cf_int(cf, "rocksdb.cur-size-all-mem-tables");
            metrics::gauge!(m::ROCKSDB_SST_BYTES, "cf" => cf)
                .set(cf_int(cf, "rocksdb.total-sst-files-size") as f64);
        }
        metrics::gauge!(m::ROCKSDB_PENDING_COMPACTION_BYTES).set(pending as f64);
        metrics::gauge!(m::ROCKSDB_MEMTABLE_BYTES).set(memtables as f64);
        // One cache shared by every column family.
        metrics::gauge!(m::ROCKSDB_BLOCK_CACHE_USAGE_BYTES)
            .set(cf_int(CF_RECORDS, "rocksdb.block-cache-usage") as f64);
        metrics::counter!(m::ROCKSDB_BLOCK_CACHE_HITS_TOTAL)
            .absolute(self.options.get_ticker_count(Ticker::BlockCacheHit));
        metrics::counter!(m::ROCKSDB_BLOCK_CACHE_MISSES_TOTAL)
            .absolute(self.options.get_ticker_count(Ticker::BlockCacheMiss));
        metrics::counter!(m::ROCKSDB_STALL_SECONDS_TOTAL)
            .absolute(self.options.get_ticker_count(Ticker::StallMicros) / 1_000_000);
    }

    /// Approximate number of entries in a column family (RocksDB's estimate).
    pub fn estimate_keys(&self, cf: &str) -> u64 {
        self.db
            .property_int_value_cf(self.cf(cf), "rocksdb.estimate-num-keys")
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    /// Flushes memtables to SST files (tests and shutdown use it).
    pub fn flush(&self) -> Result<(), StoreError> {
        for name in COLUMN_FAMILIES {
            self.db
                .flush_cf(self.cf(name))
                .map_err(db_err("flush memtable"))?;
        }
        self.db.flush_wal(true).map_err(db_err("sync WAL"))
    }

    /// Raw access for tests that tamper with stored bytes.
    #[doc(hidden)]
    pub fn raw_put(&self, cf: &str, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.db
            .put_cf_opt(self.cf(cf), key, value, &self.write_options())
            .map_err(db_err("raw put"))
    }

    #[doc(hidden)]
    pub fn raw_get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.get_cf(self.cf(cf), key).map_err(db_err("raw get"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IndexField {
    Email,
    Phone,
}

/// The index hash a record holds for `field`, when the record is indexed at all:
/// tombstones and merged accounts are not.
pub fn indexed(record: &proto::Record, field: IndexField) -> Option<&[u8]> {
    if record.tombstone || record.status == proto::Status::Merged as i32 {
        return None;
    }
    let h = match field {
        IndexField::Email => &record.email_index,
        IndexField::Phone => &record.phone_index,
    };
    (!h.is_empty()).then_some(h.as_slice())
}

fn stamp_bytes(stamp: &Stamp, out: &mut Vec<u8>) {
    out.extend_from_slice(&stamp.id);
    stamp.version.encode_into(out);
    out.push(u8::from(stamp.tombstone));
}

/// The `entries` key of (kind, key).
fn entry_key(kind: u32, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + key.len());
    k.extend_from_slice(&kind.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// How replicated copies of one record replace each other, on apply and in
/// anti-entropy: an erase above any live version (ids are never reused and an erased
/// account's key is gone, so it stays erased whatever a concurrent change carries),
/// then the later version, last writer wins.
pub fn record_rank(tombstone: bool, version: Version) -> (bool, Version) {
    (tombstone, version)
}

pub fn record_version(record: &proto::Record) -> Version {
    record
        .version
        .as_ref()
        .map(Version::from_proto)
        .unwrap_or_else(Version::zero)
}

/// Decodes a stored record. Protobuf ignores unknown fields and accepts several
/// encodings of one message; re-encoding and comparing makes every stored byte count.
pub fn decode_record(id: &[u8; 16], bytes: &[u8]) -> Result<proto::Record, StoreError> {
    let record =
        proto::Record::decode(bytes).map_err(|_| StoreError::Corrupt { what: "record" })?;
    if record.id.as_slice() != id || record.encode_to_vec() != bytes {
        return Err(StoreError::Corrupt { what: "record" });
    }
    Ok(record)
}

/// When a write counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WalSync {
    /// fsync the write-ahead log before acknowledging (survives power loss). Default.
    Always,
    /// Leave the WAL in the OS page cache (survives a process crash, not power loss).
    Never,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub wal_sync: WalSync,
    /// RocksDB block cache size. Default 64 MiB.
    pub block_cache_mb: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            wal_sync: WalSync::Always,
            block_cache_mb: 64,
        }
    }
}

impl StorageConfig {
    /// Checks the `[storage]` section.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.block_cache_mb == 0 {
            return Err(invalid("storage.block_cache_mb", "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u8, email: Option<u8>, ms: u64) -> proto::Record {
        proto::Record {
            id: vec![id; 16],
            version: Some(proto::Version {
                physical_ms: ms,
                logical: 0,
                region: "eu-west".into(),
            }),
            status: proto::Status::Active as i32,
            email_index: email.map(|e| vec![e; 32]).unwrap_or_default(),
            ..Default::default()
        }
    }

    #[test]
    fn commit_moves_index_entries_and_appends_events_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let a1 = record(1, Some(10), 1);
        store.commit(None, &a1, true).unwrap();
        assert_eq!(
            store.lookup(IndexField::Email, &[10; 32]).unwrap(),
            Some([1; 16])
        );
        let a2 = record(1, Some(11), 2);
        store.commit(Some(&a1), &a2, true).unwrap();
        assert_eq!(store.lookup(IndexField::Email, &[10; 32]).unwrap(), None);
        assert_eq!(
            store.lookup(IndexField::Email, &[11; 32]).unwrap(),
            Some([1; 16])
        );
        let head = store.outbox_head(10).unwrap();
        assert_eq!(head.len(), 2);
        assert!(head[0].0 < head[1].0);
        let ev = proto::ChangeEvent::decode(head[1].1.as_slice()).unwrap();
        assert_eq!(ev.record.unwrap(), a2);
    }

    #[test]
    fn outbox_scans_skip_what_was_published_but_not_an_entry_still_being_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let seqs = |head: &[(u64, Vec<u8>)]| head.iter().map(|(s, _)| *s).collect::<Vec<_>>();
        // A batch takes sequence 0 and has not written it yet when 1 and 2 land.
        let slow = {
            let mut scan = store.outbox.lock();
            let seq = store.next_seq.fetch_add(1, Ordering::SeqCst);
            scan.writing.insert(seq);
            seq
        };
        store.commit(None, &record(1, None, 1), true).unwrap();
        store.commit(None, &record(2, None, 1), true).unwrap();
        let head = store.outbox_head(10).unwrap();
        assert_eq!(seqs(&head), [slow + 1, slow + 2]);
        store.outbox_remove(&seqs(&head)).unwrap();
        assert_eq!(
            store.outbox.lock().floor,
            slow,
            "held at the unwritten sequence"
        );
        // The slow batch lands; the next scan still finds it.
        let event = proto::ChangeEvent {
            sequence: slow,
            ..Default::default()
        };
        store
            .raw_put(CF_OUTBOX, &slow.to_be_bytes(), &event.encode_to_vec())
            .unwrap();
        store.outbox.lock().writing.remove(&slow);
        let head = store.outbox_head(10).unwrap();
        assert_eq!(seqs(&head), [slow]);
        store.outbox_remove(&[slow]).unwrap();
        // Nothing is outstanding now: scans start past what they published, and only
        // the published prefix of a scan moves the floor.
        assert_eq!(store.outbox.lock().floor, slow + 1);
        let next = slow + 3;
        for i in 3..6 {
            store.commit(None, &record(i, None, 1), true).unwrap();
        }
        let head = store.outbox_head(10).unwrap();
        assert_eq!(seqs(&head), [next, next + 1, next + 2]);
        store.outbox_remove(&[next, next + 2]).unwrap();
        assert_eq!(store.outbox.lock().floor, next + 1);
        assert_eq!(seqs(&store.outbox_head(10).unwrap()), [next + 1]);
    }

    #[test]
    fn outbox_sequence_survives_reopen_after_draining() {
        let dir = tempfile::tempdir().unwrap();
        let last = {
            let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
            for i in 0..5 {
                store.commit(None, &record(i, None, 1), true).unwrap();
            }
            let head = store.outbox_head(10).unwrap();
            store
                .outbox_remove(&head.iter().map(|(s, _)| *s).collect::<Vec<_>>())
                .unwrap();
            head.last().unwrap().0
        };
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let ev = store
            .commit(None, &record(9, None, 1), true)
            .unwrap()
            .event
            .unwrap();
        assert!(ev.sequence > last, "{} must follow {last}", ev.sequence);
    }

    #[test]
    fn bytes_that_do_not_re_encode_identically_are_corrupt() {
        // Field values are bound by the envelope MAC (see crypto); here the encoding
        // itself: extra fields, alternative encodings and a foreign id are refused.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        let r = record(3, Some(1), 5);
        store.commit(None, &r, false).unwrap();
        let bytes = store.raw_get(CF_RECORDS, &[3; 16]).unwrap().unwrap();
        assert_eq!(decode_record(&[3; 16], &bytes).unwrap(), r);
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0xA0, 0x01, 0x01]); // field 20 (unknown), varint 1
        assert!(decode_record(&[3; 16], &longer).is_err());
        let mut repeated = bytes.clone();
        repeated.extend_from_slice(&[0x18, 0x01]); // status again: last one wins in protobuf
        assert!(decode_record(&[3; 16], &repeated).is_err());
        assert!(decode_record(&[4; 16], &bytes).is_err());
        assert!(decode_record(&[3; 16], &bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn scans_step_over_a_corrupt_record_instead_of_stopping() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        for id in [1u8, 2, 3] {
            store.commit(None, &record(id, None, 100), false).unwrap();
        }
        store
            .raw_put(CF_RECORDS, &[2; 16], b"\xff\x00 not a record")
            .unwrap();
        // Background scans go on past it, and the cursor moves over it.
        let (first, next) = store.scan_records(None, 2).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(next, Some([2; 16]));
        let (rest, next) = store.scan_records(next, 2).unwrap();
        assert_eq!((rest.len(), next), (1, None));
        // Anti-entropy sees it at the lowest version, so any peer's copy replaces it.
        let stamps = store.stamps_in(0, BUCKETS).unwrap();
        assert_eq!(stamps.len(), 3);
        assert_eq!(stamps[1].version.physical_ms, 0);
        assert_eq!(stamps[0].version.physical_ms, 100);
        assert_eq!(store.bucket_digests().unwrap()[2].0, 1);
        assert!(store.stamps_in(BUCKETS, BUCKETS + 1).unwrap().is_empty());
    }

    #[test]
    fn digest_depends_on_versions_and_tombstones_only() {
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        let s1 = Store::open(d1.path(), &StoreOptions::default()).unwrap();
        let s2 = Store::open(d2.path(), &StoreOptions::default()).unwrap();
        for i in [5u8, 1, 3] {
            s1.commit(None, &record(i, Some(i), 7), true).unwrap();
        }
        for i in [3u8, 5, 1] {
            s2.commit(None, &record(i, Some(i), 7), false).unwrap();
        }
        assert_eq!(s1.digest().unwrap(), s2.digest().unwrap());
        let mut t = record(1, None, 8);
        t.tombstone = true;
        s2.commit(Some(&record(1, Some(1), 7)), &t, false).unwrap();
        assert_ne!(s1.digest().unwrap().1, s2.digest().unwrap().1);
        assert_eq!(s2.lookup(IndexField::Email, &[1; 32]).unwrap(), None);
    }
}
