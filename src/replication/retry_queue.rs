//! The durable retry queue and the dead-letter queue for replicated events.
//!
//! The stream is the fast path: a consumer applies each event as it arrives. An event
//! that cannot be applied now (this region's key service is unavailable, a transient
//! storage error, a clock too far ahead, an injected fault) is parked here, durably,
//! before the consumer stores its offset, so the partition moves on and nothing is
//! lost. The retry sweeper tries parked events again with exponential backoff and
//! jitter, by the same timestamp-checked rule; after the last attempt an event moves
//! to the dead-letter queue with its whole history. An event parked for want of a key
//! does not wait out its backoff once the key is here: when its account's user key
//! arrives (or this region's key service answers again), the next sweep tries it. Events that can never apply (they
//! do not decode, or fail their integrity check) go there at once.
//!
//! Layout (column family `retry`):
//! - `e` + id (8 bytes, big-endian) → `RetryEntry`;
//! - `d` + next attempt (ms, 8 bytes BE) + id → empty: the due index, so a sweep reads
//!   only what is due.
//!
//! Column family `dead_letters`: id (8 bytes BE) → `RetryEntry` with `dead_at_ms`.
//! Ids come from one sequence (persisted in `meta`) and keep their value when an entry
//! moves to dead letters.
//!
//! The queue is bounded by entries and bytes. A full queue refuses to park: the
//! consumer then holds its position and tries the event again in place, and the
//! `authsync_retry_queue_full` gauge says so. Nothing is dropped.
//!
//! Dead letters are bounded too, by count and bytes (`retry.max_dead_letters`,
//! `retry.max_dead_bytes`): whoever can write junk to a topic must not fill the disk.
//! Past either bound the oldest dead letters are dropped to make room, and counted in
//! `authsync_dead_letters_dropped_total`. Their payloads live on disk only; memory
//! holds a hash of each.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::accounts::error::{Applied, ApplyError};
use crate::accounts::users::{KeyArrivals, Users};
use crate::common::config::{invalid, Invalid};
use crate::common::hlc::Version;
use crate::common::metrics as m;
use crate::common::schedule::run_every;
use crate::proto;
use crate::storage::store::{KvOp, Store, StoreError, CF_DEAD, CF_RETRY};

const META_NEXT_ID: &[u8] = b"retry_next_id";
const ENTRY: u8 = b'e';
const DUE: u8 = b'd';
/// Attempts kept in an entry's history: every one up to `retry.max_attempts` (at most
/// 1000); replays of a dead letter beyond that keep the first half and the latest.
const HISTORY_LIMIT: usize = 1024;

/// How parked events are retried and how much may be parked.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the one that parked the event included.
    pub max_attempts: u32,
    pub base_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub max_entries: u64,
    pub max_bytes: u64,
    /// Bounds on dead letters: past either, the oldest are dropped (and counted).
    pub max_dead_letters: u64,
    pub max_dead_bytes: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            base_backoff_ms: 1_000,
            max_backoff_ms: 300_000,
            max_entries: 100_000,
            max_bytes: 256 << 20,
            max_dead_letters: 100_000,
            max_dead_bytes: 256 << 20,
        }
    }
}

/// The delay before attempt `attempt + 1`, after `attempt` failures: exponential from
/// `base`, capped at `max`, with "equal jitter" (half fixed, half random, from
/// `unit` in [0, 1)) so that events parked together do not retry together.
pub fn backoff_ms(attempt: u32, base: u64, max: u64, unit: f64) -> u64 {
    let exp = base.saturating_mul(1u64 << attempt.saturating_sub(1).min(32));
    let capped = exp.min(max).max(1);
    let half = capped / 2;
    half + ((capped - half) as f64 * unit.clamp(0.0, 1.0)) as u64
}

/// Where a parked event came from.
#[derive(Debug, Clone, Default)]
pub struct Source {
    pub region: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("retry queue is full ({entries} entries, {bytes} bytes)")]
    Full { entries: u64, bytes: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where an event went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parked {
    Retry(u64),
    /// Junk (it never passed a MAC) not kept: the dead letters are full of what did.
    Dropped,
    Dead(u64),
}

/// What replaying a dead letter did.
#[derive(Debug)]
pub enum Replayed {
    Done(Applied),
    Failed(String),
    NotFound,
}

/// Counts of one sweep, by outcome.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepReport {
    pub applied: usize,
    pub skipped: usize,
    pub rescheduled: usize,
    pub dead_lettered: usize,
    /// Entries brought forward because their key arrived.
    pub expedited: usize,
}

#[derive(Debug, Default)]
struct Counts {
    entries: u64,
    bytes: u64,
    dead: u64,
    dead_bytes: u64,
    /// The dead letters that never passed a MAC (junk), oldest first: (id, bytes,
    /// payload hash). Only these are dropped to keep within the bounds.
    junk: std::collections::VecDeque<(u64, u64, [u8; 32])>,
    next_id: u64,
    /// SHA-256 of the payload → entry id: a redelivered event (the same bytes) does
    /// not park twice.
    by_payload: HashMap<[u8; 32], u64>,
    /// Payload hashes of the dead letters, for the same reason.
    dead_payloads: HashMap<[u8; 32], u64>,
    /// Account id → entries waiting for its key (reason `key_unavailable`).
    waiting_for_key: HashMap<[u8; 16], Vec<u64>>,
    full: bool,
}

impl Counts {
    fn wait_for_key(&mut self, entry: &proto::RetryEntry) {
        if let Some(account) = waiting_key(entry) {
            self.waiting_for_key
                .entry(account)
                .or_default()
                .push(entry.id);
        }
    }

    fn stop_waiting(&mut self, entry: &proto::RetryEntry) {
        let Some(account) = waiting_key(entry) else {
            return;
        };
        if let Some(ids) = self.waiting_for_key.get_mut(&account) {
            ids.retain(|id| *id != entry.id);
            if ids.is_empty() {
                self.waiting_for_key.remove(&account);
            }
        }
    }
}

/// The account whose key `entry` waits for, when it waits for one.
fn waiting_key(entry: &proto::RetryEntry) -> Option<[u8; 16]> {
    if entry.reason != "key_unavailable" {
        return None;
    }
    <[u8; 16]>::try_from(entry.record_id.as_slice()).ok()
}

pub struct RetryQueue {
    store: Arc<Store>,
    policy: RetryPolicy,
    counts: Mutex<Counts>,
}

fn entry_key(id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(ENTRY);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn due_key(at_ms: u64, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(DUE);
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn payload_hash(payload: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, payload).as_ref());
    out
}

fn decode_entry(bytes: &[u8]) -> Result<proto::RetryEntry, StoreError> {
    proto::RetryEntry::decode(bytes).map_err(|_| StoreError::Corrupt {
        what: "retry entry",
    })
}

/// Whether a dead letter is junk: its event does not decode, or failed its MAC. Whoever
/// can write to a topic can make as many as they like, so these, and only these, are
/// dropped to keep the dead letters within their bounds.
fn is_junk(entry: &proto::RetryEntry) -> bool {
    entry.reason == "integrity" || entry.event_id.is_empty()
}

fn push_history(entry: &mut proto::RetryEntry, at_ms: u64, error: String) {
    if entry.history.len() >= HISTORY_LIMIT {
        // Keep the first attempts (how it started) and the latest ones.
        entry.history.remove(HISTORY_LIMIT / 2);
    }
    entry.history.push(proto::Attempt { at_ms, error });
}

impl RetryQueue {
    /// Opens the queue over `store`, counting what is parked.
    pub fn open(store: Arc<Store>, policy: RetryPolicy) -> Result<RetryQueue, StoreError> {
        let mut counts = Counts {
            next_id: store.meta_u64(META_NEXT_ID)?.max(1),
            ..Default::default()
        };
        let mut from = Vec::new();
        loop {
            let page = store.scan_kv(CF_RETRY, &[ENTRY], &from, 1024)?;
            let Some((last, _)) = page.last() else { break };
            from = last.clone();
            from.push(0);
            for (k, v) in &page {
                counts.entries += 1;
                counts.bytes += (k.len() + v.len()) as u64;
                let Ok(e) = decode_entry(v) else {
                    tracing::error!("a retry entry does not decode; it stays for an operator");
                    continue;
                };
                counts.next_id = counts.next_id.max(e.id.saturating_add(1));
                counts.by_payload.insert(payload_hash(&e.event), e.id);
                counts.wait_for_key(&e);
            }
        }
        let mut from = Vec::new();
        loop {
            let page = store.scan_kv(CF_DEAD, &[], &from, 1024)?;
            let Some((last, _)) = page.last() else { break };
            from = last.clone();
            from.push(0);
            for (k, v) in &page {
                counts.dead += 1;
                let size = (k.len() + v.len()) as u64;
                counts.dead_bytes += size;
                if let Ok(id) = <[u8; 8]>::try_from(k.as_slice()) {
                    let id = u64::from_be_bytes(id);
                    counts.next_id = counts.next_id.max(id.saturating_add(1));
                    if let Ok(e) = decode_entry(v) {
                        let hash = payload_hash(&e.event);
                        counts.dead_payloads.insert(hash, id);
                        if is_junk(&e) {
                            counts.junk.push_back((id, size, hash));
                        }
                    }
                }
            }
        }
        let q = RetryQueue {
            store,
            policy,
            counts: Mutex::new(counts),
        };
        Ok(q)
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// (entries, bytes, dead letters).
    pub fn sizes(&self) -> (u64, u64, u64) {
        let c = self.counts.lock();
        (c.entries, c.bytes, c.dead)
    }

    /// Parks an event that failed with `error`. Permanent failures go to dead letters
    /// (never refused); the rest to the retry queue, unless it is full.
    pub fn park(
        &self,
        payload: &[u8],
        source: &Source,
        error: &ApplyError,
        now_ms: u64,
    ) -> Result<Parked, QueueError> {
        let event = proto::ChangeEvent::decode(payload).ok();
        let mut entry = proto::RetryEntry {
            event: payload.to_vec(),
            source_region: source.region.clone(),
            topic: source.topic.clone(),
            partition: source.partition,
            offset: source.offset,
            attempts: 1,
            first_failed_ms: now_ms,
            last_error: error.to_string(),
            reason: error.reason().to_string(),
            ..Default::default()
        };
        if let Some(e) = &event {
            entry.event_id = e.event_id.clone();
            if let Some(r) = &e.record {
                entry.record_id = r.id.clone();
                entry.version = r.version.clone();
            }
        }
        push_history(&mut entry, now_ms, error.to_string());
        let hash = payload_hash(payload);
        let mut c = self.counts.lock();
        if let Some(id) = c.dead_payloads.get(&hash) {
            // Already a dead letter (delivered again after a crash).
            return Ok(Parked::Dead(*id));
        }
        if error.is_permanent() {
            entry.id = c.next_id;
            entry.dead_at_ms = now_ms;
            let kept = self.bury(
                &mut c,
                &entry,
                hash,
                vec![KvOp::MaxU64 {
                    key: META_NEXT_ID,
                    value: entry.id + 1,
                }],
            )?;
            metrics::counter!(m::DEAD_LETTERS_TOTAL, "reason" => error.reason()).increment(1);
            if !kept {
                return Ok(Parked::Dropped);
            }
            c.next_id += 1;
            return Ok(Parked::Dead(entry.id));
        }
        if let Some(id) = c.by_payload.get(&hash) {
            // Delivered again (a replay after a crash before the offset was stored):
            // it is already waiting.
            return Ok(Parked::Retry(*id));
        }
        entry.id = c.next_id;
        entry.next_attempt_ms = self.next_attempt(1, error, now_ms);
        let value = entry.encode_to_vec();
        let key = entry_key(entry.id);
        let size = (key.len() + value.len()) as u64;
        if c.entries + 1 > self.policy.max_entries || c.bytes + size > self.policy.max_bytes {
            c.full = true;
            metrics::gauge!(m::RETRY_QUEUE_FULL).set(1.0);
            metrics::counter!(m::RETRY_QUEUE_REFUSED_TOTAL).increment(1);
            return Err(QueueError::Full {
                entries: c.entries,
                bytes: c.bytes,
            });
        }
        self.store.write_kv(&[
            KvOp::Put {
                cf: CF_RETRY,
                key,
                value,
            },
            KvOp::Put {
                cf: CF_RETRY,
                key: due_key(entry.next_attempt_ms, entry.id),
                value: Vec::new(),
            },
            KvOp::MaxU64 {
                key: META_NEXT_ID,
                value: entry.id + 1,
            },
        ])?;
        c.next_id += 1;
        c.entries += 1;
        c.bytes += size;
        c.by_payload.insert(hash, entry.id);
        c.wait_for_key(&entry);
        metrics::counter!(m::RETRY_PARKED_TOTAL, "reason" => error.reason()).increment(1);
        Ok(Parked::Retry(entry.id))
    }

    /// When to try again after `attempts` failures. An event from a clock that runs
    /// ahead is not tried before local time has caught up with it, so waiting for the
    /// clock does not use up its attempts.
    fn next_attempt(&self, attempts: u32, error: &ApplyError, now_ms: u64) -> u64 {
        let backoff = now_ms.saturating_add(backoff_ms(
            attempts,
            self.policy.base_backoff_ms,
            self.policy.max_backoff_ms,
            rand::random::<f64>(),
        ));
        match error {
            ApplyError::Skew(s) => {
                let fits = now_ms
                    .saturating_add(s.ahead_ms.saturating_sub(s.limit_ms))
                    .saturating_add(1);
                backoff.max(fits)
            }
            _ => backoff,
        }
    }

    /// Parked entries due at `now_ms`, earliest first, at most `limit`.
    pub fn due(&self, now_ms: u64, limit: usize) -> Result<Vec<proto::RetryEntry>, StoreError> {
        let mut out = Vec::new();
        for (k, _) in self.store.scan_kv(CF_RETRY, &[DUE], &[], limit)? {
            let Ok(at) = <[u8; 8]>::try_from(&k[1..9.min(k.len())]) else {
                continue;
            };
            if u64::from_be_bytes(at) > now_ms {
                break;
            }
            let Ok(id) = <[u8; 8]>::try_from(&k[9.min(k.len())..]) else {
                continue;
            };
            if let Some(v) = self
                .store
                .get_kv(CF_RETRY, &entry_key(u64::from_be_bytes(id)))?
            {
                match decode_entry(&v) {
                    Ok(e) => out.push(e),
                    // Left in place for an operator; the sweep goes on with the rest.
                    Err(_) => tracing::error!("a retry entry does not decode"),
                }
            }
        }
        Ok(out)
    }

    /// Removes an entry whose event was applied (or found not newer).
    fn resolve(&self, entry: &proto::RetryEntry) -> Result<(), StoreError> {
        let mut c = self.counts.lock();
        let key = entry_key(entry.id);
        let Some(stored) = self.store.get_kv(CF_RETRY, &key)? else {
            return Ok(());
        };
        self.store.write_kv(&[
            KvOp::Delete {
                cf: CF_RETRY,
                key: key.clone(),
            },
            KvOp::Delete {
                cf: CF_RETRY,
                key: due_key(entry.next_attempt_ms, entry.id),
            },
        ])?;
        c.entries = c.entries.saturating_sub(1);
        c.bytes = c.bytes.saturating_sub((key.len() + stored.len()) as u64);
        c.by_payload.remove(&payload_hash(&entry.event));
        c.stop_waiting(entry);
        self.clear_full(&mut c);
        Ok(())
    }

    /// Brings forward to `now_ms` the entries waiting for a key that `arrivals` says is
    /// here now. Returns how many.
    fn expedite(&self, arrivals: &KeyArrivals, now_ms: u64) -> Result<usize, StoreError> {
        let mut c = self.counts.lock();
        let ids: Vec<u64> = if arrivals.all {
            c.waiting_for_key.values().flatten().copied().collect()
        } else {
            arrivals
                .accounts
                .iter()
                .filter_map(|a| c.waiting_for_key.get(a.as_bytes()))
                .flatten()
                .copied()
                .collect()
        };
        let mut expedited = 0;
        for id in ids {
            let key = entry_key(id);
            let Some(stored) = self.store.get_kv(CF_RETRY, &key)? else {
                continue;
            };
            let Ok(mut entry) = decode_entry(&stored) else {
                continue;
            };
            if entry.next_attempt_ms <= now_ms {
                continue;
            }
            let old_due = due_key(entry.next_attempt_ms, id);
            entry.next_attempt_ms = now_ms;
            let value = entry.encode_to_vec();
            let new_size = (key.len() + value.len()) as u64;
            self.store.write_kv(&[
                KvOp::Delete {
                    cf: CF_RETRY,
                    key: old_due,
                },
                KvOp::Put {
                    cf: CF_RETRY,
                    key: due_key(now_ms, id),
                    value: Vec::new(),
                },
                KvOp::Put {
                    cf: CF_RETRY,
                    key: key.clone(),
                    value,
                },
            ])?;
            c.bytes = c.bytes.saturating_sub((key.len() + stored.len()) as u64) + new_size;
            expedited += 1;
        }
        Ok(expedited)
    }

    fn clear_full(&self, c: &mut Counts) {
        if c.full && c.entries < self.policy.max_entries && c.bytes < self.policy.max_bytes {
            c.full = false;
            metrics::gauge!(m::RETRY_QUEUE_FULL).set(0.0);
        }
    }

    /// Records a failed attempt: reschedules the entry, or moves it to dead letters
    /// when its attempts are spent or the failure is permanent. True when it died.
    fn failed(
        &self,
        mut entry: proto::RetryEntry,
        error: &ApplyError,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut c = self.counts.lock();
        let old_key = entry_key(entry.id);
        let Some(stored) = self.store.get_kv(CF_RETRY, &old_key)? else {
            return Ok(false);
        };
        let old_due = due_key(entry.next_attempt_ms, entry.id);
        c.stop_waiting(&entry);
        entry.attempts += 1;
        entry.last_error = error.to_string();
        entry.reason = error.reason().to_string();
        push_history(&mut entry, now_ms, error.to_string());
        let dies = error.is_permanent() || entry.attempts >= self.policy.max_attempts;
        let mut ops = vec![KvOp::Delete {
            cf: CF_RETRY,
            key: old_due,
        }];
        let old_size = (old_key.len() + stored.len()) as u64;
        let mut no_room = false;
        if dies {
            entry.dead_at_ms = now_ms;
            let next_attempt_ms = std::mem::take(&mut entry.next_attempt_ms);
            let mut burying = ops.clone();
            burying.push(KvOp::Delete {
                cf: CF_RETRY,
                key: old_key.clone(),
            });
            let hash = payload_hash(&entry.event);
            match self.bury(&mut c, &entry, hash, burying) {
                Ok(_) => {
                    c.entries = c.entries.saturating_sub(1);
                    c.bytes = c.bytes.saturating_sub(old_size);
                    c.by_payload.remove(&hash);
                    self.clear_full(&mut c);
                    metrics::counter!(m::DEAD_LETTERS_TOTAL, "reason" => error.reason())
                        .increment(1);
                    return Ok(true);
                }
                Err(QueueError::Store(e)) => return Err(e),
                Err(QueueError::Full { .. }) => {
                    // No room among the dead letters (only authenticated ones are
                    // left there): it stays parked, tried again after the longest
                    // backoff.
                    entry.dead_at_ms = 0;
                    entry.next_attempt_ms = next_attempt_ms;
                    no_room = true;
                }
            }
        }
        entry.next_attempt_ms = if no_room {
            now_ms.saturating_add(self.policy.max_backoff_ms)
        } else {
            self.next_attempt(entry.attempts, error, now_ms)
        };
        let value = entry.encode_to_vec();
        let new_size = (old_key.len() + value.len()) as u64;
        ops.push(KvOp::Put {
            cf: CF_RETRY,
            key: old_key,
            value,
        });
        ops.push(KvOp::Put {
            cf: CF_RETRY,
            key: due_key(entry.next_attempt_ms, entry.id),
            value: Vec::new(),
        });
        self.store.write_kv(&ops)?;
        // History grows the entry a little; the bound is checked when parking.
        c.bytes = c.bytes.saturating_sub(old_size) + new_size;
        c.wait_for_key(&entry);
        Ok(false)
    }

    /// One sweep: the entries whose key arrived since the last one are due at once,
    /// then every due entry (at most `limit`) is tried once.
    pub fn sweep(
        &self,
        users: &Users,
        now_ms: u64,
        limit: usize,
    ) -> Result<SweepReport, StoreError> {
        let mut report = SweepReport {
            expedited: self.expedite(&users.take_key_arrivals(), now_ms)?,
            ..Default::default()
        };
        for entry in self.due(now_ms, limit)? {
            let result =
                crate::replication::topics::decode_event(&entry.event, &entry.source_region)
                    .and_then(|event| users.apply(&event));
            let outcome = match result {
                Ok(applied) => {
                    self.resolve(&entry)?;
                    match applied {
                        Applied::Applied => {
                            report.applied += 1;
                            "applied"
                        }
                        Applied::Merged => {
                            report.applied += 1;
                            "merged"
                        }
                        Applied::Skipped => {
                            report.skipped += 1;
                            "skipped"
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        entry = entry.id,
                        attempts = entry.attempts + 1,
                        error = %e,
                        "retry of a parked event failed"
                    );
                    if self.failed(entry, &e, now_ms)? {
                        report.dead_lettered += 1;
                        "dead_lettered"
                    } else {
                        report.rescheduled += 1;
                        "rescheduled"
                    }
                }
            };
            metrics::counter!(m::RETRIES_TOTAL, "outcome" => outcome).increment(1);
        }
        Ok(report)
    }

    /// Parked entries after id `after`, at most `limit`, in id order.
    pub fn list_retry(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<proto::RetryEntry>, StoreError> {
        let from = entry_key(after.saturating_add(1));
        self.store
            .scan_kv(CF_RETRY, &[ENTRY], &from, limit)?
            .iter()
            .map(|(_, v)| decode_entry(v))
            .collect()
    }

    /// Dead letters after id `after`, at most `limit`, in id order.
    pub fn list_dead(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<proto::RetryEntry>, StoreError> {
        let from = after.saturating_add(1).to_be_bytes();
        self.store
            .scan_kv(CF_DEAD, &[], &from, limit)?
            .iter()
            .map(|(_, v)| decode_entry(v))
            .collect()
    }

    pub fn get_dead(&self, id: u64) -> Result<Option<proto::RetryEntry>, StoreError> {
        self.store
            .get_kv(CF_DEAD, &id.to_be_bytes())?
            .map(|v| decode_entry(&v))
            .transpose()
    }

    /// Deletes a dead letter. False when there was none with this id.
    pub fn drop_dead(&self, id: u64) -> Result<bool, StoreError> {
        let mut c = self.counts.lock();
        let Some(stored) = self.store.get_kv(CF_DEAD, &id.to_be_bytes())? else {
            return Ok(false);
        };
        if let Ok(e) = decode_entry(&stored) {
            c.dead_payloads.remove(&payload_hash(&e.event));
        }
        self.store.write_kv(&[KvOp::Delete {
            cf: CF_DEAD,
            key: id.to_be_bytes().to_vec(),
        }])?;
        c.dead = c.dead.saturating_sub(1);
        c.dead_bytes = c.dead_bytes.saturating_sub((8 + stored.len()) as u64);
        c.junk.retain(|(junk_id, _, _)| *junk_id != id);
        Ok(true)
    }

    /// Writes `entry` as a dead letter with `ops`, in one batch with the removal of as
    /// many of the oldest junk dead letters ([`is_junk`]) as the bounds need to make
    /// room for it. Events that passed their MAC are never dropped: when only they
    /// would be left to drop, an authenticated `entry` is refused (`Full`: the consumer
    /// holds its position, the sweeper keeps it parked) and a junk one is not kept
    /// (`Ok(false)`, counted as dropped).
    fn bury(
        &self,
        c: &mut Counts,
        entry: &proto::RetryEntry,
        hash: [u8; 32],
        mut ops: Vec<KvOp>,
    ) -> Result<bool, QueueError> {
        let key = entry.id.to_be_bytes().to_vec();
        let value = entry.encode_to_vec();
        let size = (key.len() + value.len()) as u64;
        let over = |dead: u64, bytes: u64| {
            dead.saturating_add(1) > self.policy.max_dead_letters
                || bytes.saturating_add(size) > self.policy.max_dead_bytes
        };
        let (mut dead, mut bytes) = (c.dead, c.dead_bytes);
        let mut dropped = 0usize;
        while over(dead, bytes) && dropped < c.junk.len() {
            let (id, junk_size, _) = c.junk[dropped];
            dead -= 1;
            bytes = bytes.saturating_sub(junk_size);
            ops.push(KvOp::Delete {
                cf: CF_DEAD,
                key: id.to_be_bytes().to_vec(),
            });
            dropped += 1;
        }
        let junk = is_junk(entry);
        if over(dead, bytes) {
            if !junk {
                return Err(QueueError::Full {
                    entries: c.dead,
                    bytes: c.dead_bytes,
                });
            }
            // Junk, and no junk older than it to make room: it is the one not kept.
            metrics::counter!(m::DEAD_LETTERS_DROPPED_TOTAL).increment(1);
            return Ok(false);
        }
        ops.push(KvOp::Put {
            cf: CF_DEAD,
            key,
            value,
        });
        self.store.write_kv(&ops)?;
        for (id, _, h) in c.junk.drain(..dropped) {
            if c.dead_payloads.get(&h) == Some(&id) {
                c.dead_payloads.remove(&h);
            }
        }
        if dropped > 0 {
            metrics::counter!(m::DEAD_LETTERS_DROPPED_TOTAL).increment(dropped as u64);
            tracing::warn!(
                dropped,
                "dead letters past their bound: the oldest unauthenticated ones were dropped"
            );
        }
        c.dead = dead + 1;
        c.dead_bytes = bytes + size;
        c.dead_payloads.insert(hash, entry.id);
        if junk {
            c.junk.push_back((entry.id, size, hash));
        }
        Ok(true)
    }

    /// Applies a dead letter now, by the same rule as every replicated event. Applied
    /// (or found not newer), it leaves the queue; failing, it stays with the attempt
    /// added to its history.
    pub fn replay_dead(&self, users: &Users, id: u64) -> Result<Replayed, StoreError> {
        let Some(mut entry) = self.get_dead(id)? else {
            return Ok(Replayed::NotFound);
        };
        let result = crate::replication::topics::decode_event(&entry.event, &entry.source_region)
            .and_then(|event| users.apply(&event));
        let now = users.clock_now_ms();
        match result {
            Ok(applied) => {
                if self.drop_dead(id)? {
                    metrics::counter!(m::RETRIES_TOTAL, "outcome" => "replayed").increment(1);
                }
                Ok(Replayed::Done(applied))
            }
            Err(e) => {
                let mut c = self.counts.lock();
                if let Some(stored) = self.store.get_kv(CF_DEAD, &id.to_be_bytes())? {
                    entry.attempts = entry.attempts.saturating_add(1);
                    entry.last_error = e.to_string();
                    entry.reason = e.reason().to_string();
                    push_history(&mut entry, now, format!("replay: {e}"));
                    let value = entry.encode_to_vec();
                    c.dead_bytes = c
                        .dead_bytes
                        .saturating_sub(stored.len() as u64)
                        .saturating_add(value.len() as u64);
                    self.store.write_kv(&[KvOp::Put {
                        cf: CF_DEAD,
                        key: id.to_be_bytes().to_vec(),
                        value,
                    }])?;
                }
                Ok(Replayed::Failed(e.to_string()))
            }
        }
    }

    /// Sets the queue gauges.
    pub fn report(&self, now_ms: u64) -> Result<(), StoreError> {
        let (entries, bytes, dead) = self.sizes();
        metrics::gauge!(m::RETRY_QUEUE_ENTRIES).set(entries as f64);
        metrics::gauge!(m::RETRY_QUEUE_BYTES).set(bytes as f64);
        metrics::gauge!(m::DEAD_LETTERS).set(dead as f64);
        // Ids grow with time, so the first entry is the oldest.
        let oldest = self
            .list_retry(0, 1)?
            .first()
            .map(|e| now_ms.saturating_sub(e.first_failed_ms) as f64 / 1000.0)
            .unwrap_or(0.0);
        metrics::gauge!(m::RETRY_QUEUE_OLDEST_AGE_SECONDS).set(oldest);
        let full = self.counts.lock().full;
        metrics::gauge!(m::RETRY_QUEUE_FULL).set(if full { 1.0 } else { 0.0 });
        Ok(())
    }
}

/// An entry as the admin API and the CLI show it: never the payload (ciphertext).
pub fn entry_json(e: &proto::RetryEntry) -> serde_json::Value {
    let version = e.version.as_ref().map(Version::from_proto);
    serde_json::json!({
        "id": e.id,
        "event_id": e.event_id,
        "source_region": e.source_region,
        "topic": e.topic,
        "partition": e.partition,
        "offset": e.offset,
        "record_id": Uuid::from_slice(&e.record_id).ok().map(|u| u.to_string()),
        "version": version.map(|v| serde_json::json!({"ts": v.ts(), "region": v.region})),
        "reason": e.reason,
        "attempts": e.attempts,
        "first_failed_ms": e.first_failed_ms,
        "next_attempt_ms": (e.next_attempt_ms > 0).then_some(e.next_attempt_ms),
        "dead_at_ms": (e.dead_at_ms > 0).then_some(e.dead_at_ms),
        "last_error": e.last_error,
        "bytes": e.event.len(),
        "history": e.history.iter().map(|a| serde_json::json!({"at_ms": a.at_ms, "error": a.error})).collect::<Vec<_>>(),
    })
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// How often the retry sweeper looks for due events. Default 1 s.
    pub sweep_interval_ms: u64,
    /// Events tried per sweep at most. Default 500.
    pub sweep_batch: usize,
    /// Attempts before an event becomes a dead letter, the first included. Default 10.
    pub max_attempts: u32,
    /// First retry delay; doubles per attempt, with jitter. Default 1 s.
    pub backoff_base_ms: u64,
    /// Longest retry delay. Default 5 min.
    pub backoff_max_ms: u64,
    /// Bound on parked events. Default 100000.
    pub max_entries: u64,
    /// Bound on parked bytes. Default 256 MiB.
    pub max_bytes: u64,
    /// Bound on dead letters; past it the oldest are dropped. Default 100000.
    pub max_dead_letters: u64,
    /// Bound on dead-letter bytes; past it the oldest are dropped. Default 256 MiB.
    pub max_dead_bytes: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            sweep_interval_ms: 1_000,
            sweep_batch: 500,
            max_attempts: 10,
            backoff_base_ms: 1_000,
            backoff_max_ms: 300_000,
            max_entries: 100_000,
            max_bytes: 256 << 20,
            max_dead_letters: 100_000,
            max_dead_bytes: 256 << 20,
        }
    }
}

impl RetryConfig {
    /// Checks the `[retry]` section.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.sweep_interval_ms < 10 {
            return Err(invalid("retry.sweep_interval_ms", "must be at least 10"));
        }
        if self.sweep_batch == 0 {
            return Err(invalid("retry.sweep_batch", "must be at least 1"));
        }
        if !(1..=1000).contains(&self.max_attempts) {
            return Err(invalid("retry.max_attempts", "must be between 1 and 1000"));
        }
        if self.backoff_base_ms == 0 || self.backoff_base_ms > self.backoff_max_ms {
            return Err(invalid(
                "retry.backoff_base_ms",
                "must be at least 1 and at most retry.backoff_max_ms",
            ));
        }
        if self.max_entries == 0 {
            return Err(invalid("retry.max_entries", "must be at least 1"));
        }
        if self.max_bytes < 4096 {
            return Err(invalid("retry.max_bytes", "must be at least 4096"));
        }
        if self.max_dead_letters == 0 {
            return Err(invalid("retry.max_dead_letters", "must be at least 1"));
        }
        if self.max_dead_bytes < 4096 {
            return Err(invalid("retry.max_dead_bytes", "must be at least 4096"));
        }
        Ok(())
    }
}

/// The retry sweeper: every `every`, tries up to `batch` due events again, dead
/// letters those past their last attempt, and reports the queue's size.
pub async fn sweeper(
    queue: Arc<RetryQueue>,
    users: Arc<Users>,
    every: std::time::Duration,
    batch: usize,
    stop: CancellationToken,
) {
    run_every("retry", every, stop, || {
        let queue = queue.clone();
        let users = users.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let now = users.clock_now_ms();
                let report = queue.sweep(&users, now, batch)?;
                if report != Default::default() {
                    tracing::info!(?report, "retry sweep");
                }
                queue.report(users.clock_now_ms())?;
                anyhow::Ok(())
            })
            .await?
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::faults::FaultState;
    use crate::common::hlc::{Hlc, SystemClock, TimeSource};
    use crate::crypto::keyring::Keyring;
    use crate::crypto::password::PasswordAlgorithm;
    use crate::crypto::password::Passwords;
    use crate::storage::store::StoreOptions;

    fn users_in(dir: &std::path::Path, keyring: Keyring, time: Box<dyn TimeSource>) -> Arc<Users> {
        let region = keyring.owner().to_string();
        let store = Arc::new(Store::open(dir, &StoreOptions::default()).unwrap());
        let passwords = Passwords::new(PasswordAlgorithm::Argon2id, keyring.pepper()).unwrap();
        let hlc = Arc::new(Hlc::new(region, 500, time));
        Arc::new(Users::new(store, keyring, passwords, hlc, 8))
    }

    /// Region a with one account created, and region b, empty.
    struct Pair {
        _dirs: (tempfile::TempDir, tempfile::TempDir),
        b: Arc<Users>,
        /// The account's record event, not applied at b.
        event: Vec<u8>,
        /// Its user key event, applied at b unless the pair came from `pair_without_key`.
        key_event: Vec<u8>,
        id: Uuid,
    }

    fn pair(time_b: Box<dyn TimeSource>) -> Pair {
        let p = pair_without_key(time_b);
        apply(&p.b, &p.key_event).unwrap();
        p
    }

    fn pair_without_key(time_b: Box<dyn TimeSource>) -> Pair {
        let mut rings = crate::crypto::keyring::init(&["a".into(), "b".into()]).unwrap();
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let ring_b = rings.remove(1);
        let a = users_in(da.path(), rings.remove(0), Box::new(SystemClock));
        let b = users_in(db.path(), ring_b, time_b);
        let input = crate::accounts::input::new_user(
            &serde_json::json!({"email": "parked@example.com", "password": "correct horse battery"}),
            8,
        )
        .unwrap();
        let (id, _) = a.create(input).unwrap();
        // The account's key reaches b on its own topic; the record is the event here.
        let (mut event, mut key_event) = (Vec::new(), Vec::new());
        for (_, bytes) in a.store().outbox_head(10).unwrap() {
            let decoded = proto::ChangeEvent::decode(bytes.as_slice()).unwrap();
            if decoded.user_key.is_some() {
                key_event = bytes;
            } else if decoded.record.is_some() && event.is_empty() {
                event = bytes;
            }
        }
        assert!(!event.is_empty() && !key_event.is_empty());
        Pair {
            _dirs: (da, db),
            b,
            event,
            key_event,
            id,
        }
    }

    fn queue(users: &Users, policy: RetryPolicy) -> RetryQueue {
        RetryQueue::open(users.store().clone(), policy).unwrap()
    }

    /// An account at b with the email of the pair's account: applying the pair's
    /// event merges the two, which opens both, so it needs the incoming one's key.
    fn duplicate_at_b(p: &Pair) {
        let input = crate::accounts::input::new_user(
            &serde_json::json!({"email": "parked@example.com", "password": "another horse battery"}),
            8,
        )
        .unwrap();
        p.b.create(input).unwrap();
    }

    impl RetryQueue {
        /// When parked entry `id` is next due.
        fn due_at(&self, id: u64) -> Option<u64> {
            let v = self.store.get_kv(CF_RETRY, &entry_key(id)).unwrap()?;
            Some(decode_entry(&v).unwrap().next_attempt_ms)
        }
    }

    fn source() -> Source {
        Source {
            region: "a".into(),
            topic: "authsync.changes.a".into(),
            partition: 0,
            offset: 7,
        }
    }

    fn apply(users: &Users, payload: &[u8]) -> Result<Applied, ApplyError> {
        users.apply(&proto::ChangeEvent::decode(payload).unwrap())
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_half_of_it_jittered() {
        assert_eq!(backoff_ms(1, 1000, 60_000, 0.0), 500);
        assert_eq!(backoff_ms(1, 1000, 60_000, 1.0), 1000);
        assert_eq!(backoff_ms(3, 1000, 60_000, 0.0), 2000);
        assert_eq!(backoff_ms(3, 1000, 60_000, 1.0), 4000);
        assert_eq!(backoff_ms(20, 1000, 60_000, 1.0), 60_000);
        assert_eq!(backoff_ms(20, 1000, 60_000, 0.0), 30_000);
        assert_eq!(backoff_ms(u32::MAX, u64::MAX, u64::MAX, 1.0), u64::MAX);
    }

    #[test]
    fn a_transient_failure_is_parked_retried_and_applied() {
        let p = pair(Box::new(SystemClock));
        let q = queue(&p.b, RetryPolicy::default());
        p.b.faults().set(FaultState {
            apply_failures: Some(2),
            ..Default::default()
        });
        let err = apply(&p.b, &p.event).unwrap_err();
        assert_eq!(err.reason(), "injected");
        let now = p.b.clock_now_ms();
        assert_eq!(
            q.park(&p.event, &source(), &err, now).unwrap(),
            Parked::Retry(1)
        );
        // The same event delivered again waits in the same entry.
        assert_eq!(
            q.park(&p.event, &source(), &err, now).unwrap(),
            Parked::Retry(1)
        );
        assert_eq!(q.sizes().0, 1);
        assert_eq!(
            q.sweep(&p.b, now, 10).unwrap(),
            SweepReport::default(),
            "not due yet"
        );
        let later = now + 3_600_000;
        let r = q.sweep(&p.b, later, 10).unwrap();
        assert_eq!(r.rescheduled, 1, "the second injected failure");
        let r = q.sweep(&p.b, later + 3_600_000, 10).unwrap();
        assert_eq!(r.applied, 1);
        assert_eq!(q.sizes(), (0, 0, 0));
        assert_eq!(p.b.get(&p.id).unwrap().email, "parked@example.com");
        // The parked entry kept where it came from.
        assert!(q.list_retry(0, 10).unwrap().is_empty());
    }

    #[test]
    fn an_event_waiting_for_its_key_is_tried_as_soon_as_the_key_arrives() {
        let p = pair_without_key(Box::new(SystemClock));
        duplicate_at_b(&p);
        let q = queue(&p.b, RetryPolicy::default());
        let err = apply(&p.b, &p.event).unwrap_err();
        assert_eq!(err.reason(), "key_unavailable");
        let mut t = p.b.clock_now_ms();
        q.park(&p.event, &source(), &err, t).unwrap();
        // Tried while the key is still missing: the backoff grows to minutes.
        for _ in 0..8 {
            t = q.due_at(1).unwrap();
            let r = q.sweep(&p.b, t, 10).unwrap();
            assert_eq!((r.rescheduled, r.expedited), (1, 0));
        }
        let next = q.due_at(1).unwrap();
        assert!(next - t >= 60_000, "backoff {} ms", next - t);
        // Swept before its key arrives: nothing is due.
        assert_eq!(q.sweep(&p.b, t + 1, 10).unwrap(), SweepReport::default());
        // Its key arrives: the next sweep applies it, long before its backoff is up.
        apply(&p.b, &p.key_event).unwrap();
        let r = q.sweep(&p.b, t + 2, 10).unwrap();
        assert_eq!((r.expedited, r.applied), (1, 1));
        assert_eq!(q.sizes().0, 0);
    }

    #[test]
    fn events_waiting_for_this_regions_key_service_are_tried_once_it_answers() {
        let p = pair(Box::new(SystemClock));
        duplicate_at_b(&p);
        let q = queue(&p.b, RetryPolicy::default());
        p.b.faults().set(FaultState {
            keys_unavailable: Some(["b".to_string()].into()),
            ..Default::default()
        });
        let err = apply(&p.b, &p.event).unwrap_err();
        assert_eq!(err.reason(), "key_unavailable");
        let mut t = p.b.clock_now_ms();
        q.park(&p.event, &source(), &err, t).unwrap();
        for _ in 0..6 {
            t = q.due_at(1).unwrap();
            assert_eq!(q.sweep(&p.b, t, 10).unwrap().rescheduled, 1);
        }
        // Counted again from disk, as after a restart: it still waits for its key.
        drop(q);
        let q = queue(&p.b, RetryPolicy::default());
        p.b.faults().set(FaultState {
            keys_unavailable: Some(Default::default()),
            ..Default::default()
        });
        let r = q.sweep(&p.b, t + 1, 10).unwrap();
        assert_eq!((r.expedited, r.applied), (1, 1));
        assert_eq!(q.sizes().0, 0);
    }

    #[test]
    fn a_poison_event_dies_after_its_attempts_and_replays_once_fixed() {
        let p = pair(Box::new(SystemClock));
        let q = queue(
            &p.b,
            RetryPolicy {
                max_attempts: 3,
                ..Default::default()
            },
        );
        p.b.faults().set(FaultState {
            poisoned_ids: Some([p.id].into()),
            ..Default::default()
        });
        let now = p.b.clock_now_ms();
        let err = apply(&p.b, &p.event).unwrap_err();
        q.park(&p.event, &source(), &err, now).unwrap();
        let mut t = now;
        let mut report = SweepReport::default();
        for _ in 0..5 {
            t += 3_600_000;
            let r = q.sweep(&p.b, t, 10).unwrap();
            report.rescheduled += r.rescheduled;
            report.dead_lettered += r.dead_lettered;
        }
        assert_eq!((report.rescheduled, report.dead_lettered), (1, 1));
        assert_eq!(q.sizes(), (0, 0, 1));
        let dead = q.list_dead(0, 10).unwrap();
        assert_eq!(dead.len(), 1);
        let d = &dead[0];
        assert_eq!((d.attempts, d.history.len()), (3, 3));
        assert_eq!(
            (d.partition, d.offset, d.topic.as_str()),
            (0, 7, "authsync.changes.a")
        );
        assert_eq!(d.record_id, p.id.as_bytes().to_vec());
        assert!(d.dead_at_ms >= now && d.last_error.contains("poisoned"));
        // Replayed before the cause is fixed: it stays, with one more attempt.
        assert!(matches!(
            q.replay_dead(&p.b, d.id).unwrap(),
            Replayed::Failed(_)
        ));
        assert_eq!(q.get_dead(d.id).unwrap().unwrap().attempts, 4);
        p.b.faults().set(FaultState {
            poisoned_ids: Some(Default::default()),
            ..Default::default()
        });
        assert!(matches!(
            q.replay_dead(&p.b, d.id).unwrap(),
            Replayed::Done(Applied::Applied)
        ));
        assert_eq!(q.sizes(), (0, 0, 0));
        assert!(p.b.get(&p.id).is_ok());
        assert!(matches!(
            q.replay_dead(&p.b, d.id).unwrap(),
            Replayed::NotFound
        ));
    }

    #[test]
    fn events_that_can_never_apply_go_straight_to_dead_letters() {
        let p = pair(Box::new(SystemClock));
        let q = queue(&p.b, RetryPolicy::default());
        let garbage = b"\xff\xff not protobuf";
        let err = ApplyError::Malformed("event does not decode");
        assert_eq!(
            q.park(garbage, &source(), &err, p.b.clock_now_ms())
                .unwrap(),
            Parked::Dead(1)
        );
        let mut altered = proto::ChangeEvent::decode(p.event.as_slice()).unwrap();
        altered.record.as_mut().unwrap().status = proto::Status::Disabled as i32;
        let err = p.b.apply(&altered).unwrap_err();
        assert_eq!(err.reason(), "integrity");
        let parked = q
            .park(
                &altered.encode_to_vec(),
                &source(),
                &err,
                p.b.clock_now_ms(),
            )
            .unwrap();
        assert_eq!(parked, Parked::Dead(2));
        assert_eq!(q.sizes(), (0, 0, 2));
        assert!(q.drop_dead(1).unwrap());
        assert!(!q.drop_dead(1).unwrap());
        assert_eq!(q.sizes().2, 1);
    }

    /// The attack: a writer of junk to a replication topic, every message a dead
    /// letter. The oldest go, the newest stay, within both bounds, across a restart.
    #[test]
    fn a_flood_of_junk_keeps_the_dead_letters_within_their_bounds() {
        let p = pair(Box::new(SystemClock));
        let policy = RetryPolicy {
            max_dead_letters: 5,
            ..Default::default()
        };
        let q = queue(&p.b, policy.clone());
        let err = ApplyError::Malformed("event does not decode");
        let now = p.b.clock_now_ms();
        for i in 0..20u32 {
            let junk = format!("junk number {i}").into_bytes();
            assert!(matches!(
                q.park(&junk, &source(), &err, now).unwrap(),
                Parked::Dead(_)
            ));
        }
        let ids = |q: &RetryQueue| -> Vec<u64> {
            q.list_dead(0, 100).unwrap().iter().map(|e| e.id).collect()
        };
        assert_eq!(ids(&q), vec![16, 17, 18, 19, 20]);
        assert_eq!(q.sizes().2, 5);
        // A dropped one is no longer known: delivered again, it is a dead letter anew.
        assert_eq!(
            q.park(b"junk number 0", &source(), &err, now).unwrap(),
            Parked::Dead(21)
        );
        drop(q);
        let q = queue(&p.b, policy);
        assert_eq!(ids(&q), vec![17, 18, 19, 20, 21]);

        // The byte bound: 1 KiB payloads against 4 KiB of dead letters.
        let q = queue(
            &p.b,
            RetryPolicy {
                max_dead_bytes: 4096,
                ..Default::default()
            },
        );
        for i in 0..10u8 {
            q.park(&[i; 1024], &source(), &err, now).unwrap();
        }
        let kept = q.list_dead(0, 100).unwrap();
        let bytes: usize = kept.iter().map(|e| 8 + e.encode_to_vec().len()).sum();
        assert!(
            !kept.is_empty() && bytes <= 4096,
            "{} kept, {bytes} bytes",
            kept.len()
        );
        assert_eq!(
            kept.last().unwrap().event,
            vec![9u8; 1024],
            "the newest stays"
        );

        // What passed its MAC is never dropped for junk, nor for another of its kind:
        // past the bound it is refused (the consumer holds its place) and junk is not
        // kept.
        let p = pair(Box::new(SystemClock));
        let q = queue(
            &p.b,
            RetryPolicy {
                max_dead_letters: 2,
                ..Default::default()
            },
        );
        let signed = |seq: u64| {
            let mut e = proto::ChangeEvent::decode(p.event.as_slice()).unwrap();
            e.event_id = format!("a:{seq}");
            e.encode_to_vec()
        };
        let refused = ApplyError::Malformed("created after its own version");
        for seq in 1..=2 {
            assert!(matches!(
                q.park(&signed(seq), &source(), &refused, now).unwrap(),
                Parked::Dead(_)
            ));
        }
        assert!(matches!(
            q.park(&signed(3), &source(), &refused, now),
            Err(QueueError::Full { .. })
        ));
        assert_eq!(
            q.park(b"more junk", &source(), &err, now).unwrap(),
            Parked::Dropped
        );
        assert_eq!(q.sizes().2, 2);
    }

    #[test]
    fn the_bound_refuses_new_entries_and_holds_across_restarts() {
        let p = pair(Box::new(SystemClock));
        let policy = RetryPolicy {
            max_entries: 2,
            ..Default::default()
        };
        let q = queue(&p.b, policy.clone());
        let err = ApplyError::Injected("transient apply failure");
        let now = p.b.clock_now_ms();
        let mut events = Vec::new();
        for seq in 0..3u64 {
            let mut e = proto::ChangeEvent::decode(p.event.as_slice()).unwrap();
            e.event_id = format!("a:{}", 100 + seq);
            events.push(e.encode_to_vec());
        }
        q.park(&events[0], &source(), &err, now).unwrap();
        q.park(&events[1], &source(), &err, now).unwrap();
        assert!(matches!(
            q.park(&events[2], &source(), &err, now),
            Err(QueueError::Full { entries: 2, .. })
        ));
        assert_eq!(q.sizes().0, 2);
        drop(q);
        // Counted again from disk: still full, nothing lost.
        let q = queue(&p.b, policy);
        assert_eq!(q.sizes().0, 2);
        assert!(q.park(&events[2], &source(), &err, now).is_err());
        // Once due entries apply, there is room again.
        let r = q.sweep(&p.b, now + 3_600_000, 10).unwrap();
        assert_eq!(r.applied + r.skipped, 2);
        assert_eq!(
            q.park(&events[2], &source(), &err, now).unwrap(),
            Parked::Retry(3)
        );
    }

    /// Physical time that follows tokio's (paused) clock.
    struct TokioTime {
        start: tokio::time::Instant,
        base_ms: u64,
    }

    impl TimeSource for TokioTime {
        fn now_ms(&self) -> u64 {
            self.base_ms + self.start.elapsed().as_millis() as u64
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_retry_sweeper_applies_a_parked_event_on_its_backoff_schedule() {
        let time = TokioTime {
            start: tokio::time::Instant::now(),
            base_ms: SystemClock.now_ms(),
        };
        let p = pair(Box::new(time));
        let q = Arc::new(queue(
            &p.b,
            RetryPolicy {
                base_backoff_ms: 1_000,
                max_backoff_ms: 8_000,
                ..Default::default()
            },
        ));
        p.b.faults().set(FaultState {
            apply_failures: Some(4),
            ..Default::default()
        });
        let err = apply(&p.b, &p.event).unwrap_err();
        let parked_at = p.b.clock_now_ms();
        q.park(&p.event, &source(), &err, parked_at).unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(sweeper(
            q.clone(),
            p.b.clone(),
            std::time::Duration::from_millis(100),
            100,
            stop.clone(),
        ));
        // Three more failures, waiting at most 1 + 2 + 4 + 8 s: applied within 16 s.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(q.sizes().0, 1, "not applied before its first backoff");
        tokio::time::sleep(std::time::Duration::from_secs(16)).await;
        assert_eq!(q.sizes(), (0, 0, 0));
        assert!(p.b.get(&p.id).is_ok());
        stop.cancel();
        task.await.unwrap();
    }
}
