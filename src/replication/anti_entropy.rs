//! Anti-entropy: repairs what the stream cannot (an outage longer than the topic's
//! retention, a lost topic, a restored backup).
//!
//! Each round, for each peer with an HTTP address, this node fetches the peer's
//! per-bucket digests (256 buckets by the first byte of the random user id, each a
//! SHA-256 over (id, version, tombstone) in id order), compares them with its own, lists
//! the buckets that differ, and pulls the records the peer holds newer — ciphertext,
//! exactly as stored — applying them by the same timestamp-checked rule as replicated
//! events. Pulling only: what this side holds newer the peer pulls in its own round.
//! A pulled record that cannot be applied now is parked in the retry queue like a
//! streamed one.
//!
//! The internal endpoints are authenticated between regions with each region's own
//! signing key (its keyring's, so no extra secret is configured): header
//! `x-authsync-peer: <region>:<unix ms>:<hex nonce>:<signer key id>:<hex Ed25519
//! signature over (region, ms, nonce, method, path, SHA-256(body))>`, accepted within
//! a minute of the receiver's clock and once per nonce. Answers are read up to
//! [`MAX_PEER_RESPONSE`]; the records in them carry their writers' signatures, checked
//! as for streamed ones.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine as _;
use prost::Message as _;
use ring::hmac;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::accounts::error::Applied;
use crate::accounts::users::Users;
use crate::common::config::{invalid, Invalid};
use crate::common::hlc::Version;
use crate::common::metrics as m;
use crate::crypto::keyring::Keyring;
use crate::proto;
use crate::replication::retry_queue::{RetryQueue, Source};
use crate::storage::store::{record_rank, Stamp, BUCKETS};

pub const PEER_HEADER: &str = "x-authsync-peer";
/// How far a peer's signature time may be from ours.
const MAX_AGE_MS: u64 = 60_000;
/// Largest request body a peer may sign (an id list).
pub const MAX_SIGNED_BODY: usize = 64 * 1024;
/// Records fetched per request.
pub const MAX_FETCH: usize = 500;

/// Largest answer read from a peer: 500 records at their bound, with room to spare.
pub const MAX_PEER_RESPONSE: usize = 64 * 1024 * 1024;
/// The bytes of records and keys a node puts in one answer to `/v1/internal/records`,
/// before base64 and JSON: a quarter of what a peer reads, so an answer always fits.
pub const ANSWER_BUDGET: usize = MAX_PEER_RESPONSE / 4;
/// Peer request nonces remembered at most per peer (each for twice [`MAX_AGE_MS`]).
const MAX_NONCES: usize = 100_000;
/// Records one anti-entropy round asks a peer for at most.
const MAX_WANTED: usize = 50_000;

fn legacy_auth_key(keyring: &Keyring) -> hmac::Key {
    let k = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, keyring.index_key()),
        b"authsync/peer-auth/v1",
    );
    hmac::Key::new(hmac::HMAC_SHA256, k.as_ref())
}

fn signed_input(
    region: &str,
    ms: u64,
    nonce: &[u8],
    method: &str,
    path: &str,
    body: &[u8],
) -> Vec<u8> {
    let body_hash = ring::digest::digest(&ring::digest::SHA256, body);
    let ms = ms.to_be_bytes();
    // Format 1 signed no domain and no nonce.
    let mut parts: Vec<&[u8]> = vec![region.as_bytes(), &ms];
    let mut out = Vec::new();
    if !nonce.is_empty() {
        out.extend_from_slice(b"authsync/v2/peer-request\0");
        parts.push(nonce);
    }
    parts.extend([method.as_bytes(), path.as_bytes(), body_hash.as_ref()]);
    for part in parts {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// The header value that authenticates this region's request: `region:ms:nonce:signer:
/// signature`, an Ed25519 signature by this region's signing key over the region, the
/// time, a random nonce, the method, the path and the body's SHA-256. A legacy keyring
/// signs as format 1 did (`region:ms:HMAC` under a key every region holds).
pub fn sign(keyring: &Keyring, now_ms: u64, method: &str, path: &str, body: &[u8]) -> String {
    let region = keyring.owner();
    match (keyring.signer(), crate::crypto::primitives::random::<16>()) {
        (Some(signer), Ok(nonce)) => {
            let input = signed_input(region, now_ms, &nonce, method, path, body);
            format!(
                "{region}:{now_ms}:{}:{}:{}",
                hex::encode(nonce),
                signer.key_id,
                hex::encode(signer.pair.sign(&input).as_ref())
            )
        }
        _ => {
            let tag = hmac::sign(
                &legacy_auth_key(keyring),
                &signed_input(region, now_ms, &[], method, path, body),
            );
            format!("{region}:{now_ms}:{}", hex::encode(tag.as_ref()))
        }
    }
}

/// The nonces of peer requests seen within their window, per peer: a request is
/// taken once, and no peer can fill another's table.
#[derive(Default)]
pub struct Nonces {
    seen: parking_lot::Mutex<HashMap<String, NonceTable>>,
}

#[derive(Default)]
struct NonceTable {
    by_expiry: std::collections::BTreeSet<(u64, [u8; 16])>,
    present: std::collections::HashSet<[u8; 16]>,
}

impl Nonces {
    /// Records `nonce` of a request stamped `ms`, refused when already seen or when the
    /// table is full of live ones. It is kept until the last moment the request's age
    /// could pass, wherever its stamp lies in the window.
    fn take(&self, peer: &str, nonce: [u8; 16], ms: u64, now_ms: u64) -> Result<(), &'static str> {
        let mut tables = self.seen.lock();
        let t = tables.entry(peer.to_string()).or_default();
        while let Some(&(expiry, n)) = t.by_expiry.first() {
            if expiry > now_ms {
                break;
            }
            t.by_expiry.pop_first();
            t.present.remove(&n);
        }
        if t.present.contains(&nonce) {
            return Err("peer request replayed");
        }
        if t.present.len() >= MAX_NONCES {
            return Err("too many peer requests; try again");
        }
        t.present.insert(nonce);
        let expiry = ms.max(now_ms).saturating_add(MAX_AGE_MS).saturating_add(1);
        t.by_expiry.insert((expiry, nonce));
        Ok(())
    }
}

/// Checks a peer's header; returns the peer region. The signature must be by the
/// signing key of the region the header names, made within [`MAX_AGE_MS`] of this
/// node's clock, over this very request, with a nonce not seen before. A format 1
/// header is taken only while the keyring accepts legacy peers.
pub fn verify(
    keyring: &Keyring,
    nonces: &Nonces,
    header: &str,
    now_ms: u64,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<String, &'static str> {
    let parts: Vec<&str> = header.splitn(5, ':').collect();
    let (region, ms) = match parts.as_slice() {
        [region, ms, ..] if parts.len() == 3 || parts.len() == 5 => (*region, *ms),
        _ => return Err("malformed peer signature"),
    };
    let ms: u64 = ms.parse().map_err(|_| "malformed peer signature")?;
    if now_ms.abs_diff(ms) > MAX_AGE_MS {
        return Err("peer signature expired");
    }
    if !keyring.regions().any(|r| r == region) || region == keyring.owner() {
        return Err("unknown peer region");
    }
    if let [_, _, nonce, signer, sig] = parts.as_slice() {
        let nonce: [u8; 16] = hex::decode(nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or("malformed peer signature")?;
        let sig = hex::decode(sig).map_err(|_| "malformed peer signature")?;
        let public = keyring
            .verifying_key(region, signer)
            .ok_or("unknown peer signing key")?;
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public)
            .verify(&signed_input(region, ms, &nonce, method, path, body), &sig)
            .map_err(|_| "bad peer signature")?;
        nonces.take(region, nonce, ms, now_ms)?;
        return Ok(region.to_string());
    }
    if !keyring.accepts_legacy() {
        return Err("unsigned peer request: this region takes signed requests only");
    }
    let sig = hex::decode(parts[2]).map_err(|_| "malformed peer signature")?;
    hmac::verify(
        &legacy_auth_key(keyring),
        &signed_input(region, ms, &[], method, path, body),
        &sig,
    )
    .map_err(|_| "bad peer signature")?;
    Ok(region.to_string())
}

#[derive(Debug, Serialize, Deserialize)]
pub struct BucketDigest {
    pub count: u64,
    pub digest: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Digests {
    pub region: String,
    pub buckets: Vec<BucketDigest>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct StampJson {
    pub id: Uuid,
    pub physical_ms: u64,
    pub logical: u32,
    pub region: String,
    pub tombstone: bool,
    /// Regions the data key is wrapped for: at one version, more wins (key recovery).
    #[serde(default)]
    pub wraps: u32,
}

impl From<&Stamp> for StampJson {
    fn from(s: &Stamp) -> Self {
        StampJson {
            id: Uuid::from_bytes(s.id),
            physical_ms: s.version.physical_ms,
            logical: s.version.logical,
            region: s.version.region.clone(),
            tombstone: s.tombstone,
            wraps: s.wraps,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Stamps {
    pub stamps: Vec<StampJson>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchRequest {
    pub ids: Vec<Uuid>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct FetchResponse {
    /// Base64 of each stored `Record` (protobuf), ciphertext as stored.
    pub records: Vec<String>,
    /// Base64 of the `UserKey` of each live record sent, as stored (wrapped). A
    /// region that pulls records it missed (a restored backup, a lost topic) missed
    /// their keys too.
    #[serde(default)]
    pub user_keys: Vec<String>,
}

/// The answer to a peer's `/v1/internal/records`: each record of `ids` held here, as
/// stored (ciphertext and wrapped keys, with the MACs and signatures the receiver
/// checks), and the user key of each live one. It stops before `budget` bytes, after
/// at least one record: the peer asks again for what it still lacks.
pub fn answer(
    users: &Users,
    ids: &[Uuid],
    budget: usize,
) -> Result<FetchResponse, crate::storage::store::StoreError> {
    let b64 = |bytes: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(bytes);
    let (mut records, mut user_keys) = (Vec::with_capacity(ids.len()), Vec::new());
    let mut bytes = 0usize;
    for id in ids {
        let Some(r) = users.store().get(id.as_bytes())? else {
            continue;
        };
        let key = match r.tombstone {
            false => users.store().get_user_key(id.as_bytes())?,
            true => None,
        };
        let size = r.encoded_len() + key.as_ref().map_or(0, |k| k.encoded_len());
        if !records.is_empty() && bytes.saturating_add(size) > budget {
            break;
        }
        bytes = bytes.saturating_add(size);
        if let Some(k) = key {
            user_keys.push(b64(k.encode_to_vec()));
        }
        records.push(b64(r.encode_to_vec()));
    }
    Ok(FetchResponse { records, user_keys })
}

pub fn digests(users: &Users) -> Result<Digests, crate::storage::store::StoreError> {
    let buckets = users
        .store()
        .bucket_digests()?
        .into_iter()
        .map(|(count, d)| BucketDigest {
            count,
            digest: hex::encode(d),
        })
        .collect();
    Ok(Digests {
        region: users.region().to_string(),
        buckets,
    })
}

/// What one round with one peer did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RoundReport {
    pub buckets_differing: usize,
    pub pulled: usize,
    pub repaired: usize,
    pub parked: usize,
}

enum Pulled {
    Repaired,
    Skipped,
    Parked,
    Refused,
}

pub struct Peer {
    pub region: String,
    pub url: String,
}

struct PeerClient<'a> {
    http: &'a reqwest::Client,
    users: &'a Users,
    peer: &'a Peer,
}

impl PeerClient<'_> {
    fn signed(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Vec<u8>,
    ) -> reqwest::RequestBuilder {
        let header = sign(
            &self.users.keyring(),
            self.users.clock_now_ms(),
            method.as_str(),
            path,
            &body,
        );
        let req = self
            .http
            .request(
                method,
                format!("{}{path}", self.peer.url.trim_end_matches('/')),
            )
            .header(PEER_HEADER, header);
        if body.is_empty() {
            req
        } else {
            req.header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body)
        }
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let resp = req.send().await.context("request")?;
        let status = resp.status();
        if !status.is_success() {
            bail!("peer answered {status}");
        }
        let body = read_bounded(resp).await?;
        serde_json::from_slice(&body).context("decode peer answer")
    }
}

/// A peer's answer, read up to [`MAX_PEER_RESPONSE`] bytes and refused past it.
pub async fn read_bounded(mut resp: reqwest::Response) -> anyhow::Result<Vec<u8>> {
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_PEER_RESPONSE as u64)
    {
        bail!("peer answer larger than {MAX_PEER_RESPONSE} bytes");
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.context("read peer answer")? {
        if body.len() + chunk.len() > MAX_PEER_RESPONSE {
            bail!("peer answer larger than {MAX_PEER_RESPONSE} bytes");
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The HTTP client for requests to peers: bounded in time, trusting `ca_cert` (or the
/// system's roots) for https peers.
pub fn peer_http(ca_cert: Option<&std::path::Path>) -> anyhow::Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(5));
    Ok(crate::common::tls::trusting(builder, ca_cert)?.build()?)
}

/// One anti-entropy round against `peer`.
pub async fn round(
    http: &reqwest::Client,
    users: &Arc<Users>,
    queue: &Arc<RetryQueue>,
    peer: &Peer,
) -> anyhow::Result<RoundReport> {
    let client = PeerClient { http, users, peer };
    let theirs: Digests = client
        .json(client.signed(reqwest::Method::GET, "/v1/internal/digests", Vec::new()))
        .await
        .with_context(|| format!("digests of {}", peer.region))?;
    if theirs.buckets.len() != BUCKETS {
        bail!(
            "{} sent {} buckets, not {BUCKETS}",
            peer.region,
            theirs.buckets.len()
        );
    }
    let u = users.clone();
    let ours = tokio::task::spawn_blocking(move || digests(&u)).await??;
    let differing: Vec<usize> = (0..BUCKETS)
        .filter(|&b| {
            ours.buckets[b].digest != theirs.buckets[b].digest
                || ours.buckets[b].count != theirs.buckets[b].count
        })
        .collect();
    let mut report = RoundReport {
        buckets_differing: differing.len(),
        ..Default::default()
    };
    // At most MAX_WANTED ids a round, each once, each from the bucket asked for: the
    // rest come next round.
    let mut wanted: std::collections::BTreeSet<Uuid> = Default::default();
    for b in &differing {
        if wanted.len() >= MAX_WANTED {
            break;
        }
        let theirs: Stamps = client
            .json(client.signed(
                reqwest::Method::GET,
                &format!("/v1/internal/buckets/{b}"),
                Vec::new(),
            ))
            .await
            .with_context(|| format!("bucket {b} of {}", peer.region))?;
        let u = users.clone();
        let b = *b;
        let ours = tokio::task::spawn_blocking(move || u.store().stamps_in(b, b + 1)).await??;
        let ours: HashMap<[u8; 16], (bool, Version, u32)> = ours
            .into_iter()
            .map(|s| (s.id, (s.tombstone, s.version, s.wraps)))
            .collect();
        for s in theirs.stamps {
            if usize::from(s.id.as_bytes()[0]) != b || wanted.len() >= MAX_WANTED {
                continue;
            }
            let v = Version {
                physical_ms: s.physical_ms,
                logical: s.logical,
                region: s.region,
            };
            // Ranked as apply ranks them, and at one rank more wrapped keys win.
            if ours.get(s.id.as_bytes()).is_none_or(|mine| {
                (record_rank(mine.0, mine.1.clone()), mine.2)
                    < (record_rank(s.tombstone, v), s.wraps)
            }) {
                wanted.insert(s.id);
            }
        }
    }
    let wanted: Vec<Uuid> = wanted.into_iter().collect();
    for chunk in wanted.chunks(MAX_FETCH) {
        let fetched: FetchResponse = client
            .json(client.signed(
                reqwest::Method::POST,
                "/v1/internal/records",
                serde_json::to_vec(&FetchRequest {
                    ids: chunk.to_vec(),
                })?,
            ))
            .await
            .with_context(|| format!("records from {}", peer.region))?;
        // Keys first, so that the records they open are readable once applied. A key
        // that does not apply (an erased account, a bad copy) is simply not taken.
        for encoded in fetched.user_keys {
            let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&encoded) else {
                bail!("{} sent a user key that is not base64", peer.region);
            };
            let event = proto::ChangeEvent {
                origin_region: peer.region.clone(),
                user_key: proto::UserKey::decode(bytes.as_slice()).ok(),
                ..Default::default()
            };
            if event.user_key.is_none() {
                bail!("{} sent a user key that does not decode", peer.region);
            }
            let u = users.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || u.apply(&event)).await? {
                tracing::warn!(peer = %peer.region, error = %e, "anti-entropy user key refused");
            }
        }
        for encoded in fetched.records {
            report.pulled += 1;
            let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(&encoded) else {
                bail!("{} sent a record that is not base64", peer.region);
            };
            let record = proto::Record::decode(bytes.as_slice()).ok();
            // One id per pulled record version: pulled again next round while it
            // waits, it is not parked twice.
            let event_id = match &record {
                Some(r) => format!(
                    "anti-entropy:{}:{}:{}",
                    peer.region,
                    hex::encode(&r.id),
                    crate::storage::store::record_version(r).ts()
                ),
                None => String::new(),
            };
            let event = proto::ChangeEvent {
                event_id,
                origin_region: peer.region.clone(),
                sequence: 0,
                record,
                ..Default::default()
            };
            let (u, q, region) = (users.clone(), queue.clone(), peer.region.clone());
            let outcome = tokio::task::spawn_blocking(move || -> anyhow::Result<Pulled> {
                match u.apply(&event) {
                    Ok(Applied::Applied | Applied::Merged) => Ok(Pulled::Repaired),
                    Ok(Applied::Skipped) => Ok(Pulled::Skipped),
                    Err(e) if e.is_permanent() => {
                        // The peer's copy is bad (it reports it unreadable itself);
                        // parking it would add a dead letter every round.
                        tracing::error!(peer = %region, error = %e, "anti-entropy record refused");
                        metrics::counter!(m::ANTI_ENTROPY_REFUSED_TOTAL, "peer" => region)
                            .increment(1);
                        Ok(Pulled::Refused)
                    }
                    Err(e) => {
                        tracing::warn!(peer = %region, error = %e, "anti-entropy record parked");
                        let source = Source {
                            region,
                            topic: "anti-entropy".into(),
                            partition: -1,
                            offset: -1,
                        };
                        q.park(&event.encode_to_vec(), &source, &e, u.clock_now_ms())?;
                        Ok(Pulled::Parked)
                    }
                }
            })
            .await??;
            match outcome {
                Pulled::Repaired => report.repaired += 1,
                Pulled::Parked => report.parked += 1,
                Pulled::Skipped | Pulled::Refused => {}
            }
        }
    }
    Ok(report)
}

/// The anti-entropy sweeper: a round against each peer per run.
pub async fn sweeper(
    users: Arc<Users>,
    queue: Arc<RetryQueue>,
    peers: Vec<Peer>,
    ca_cert: Option<std::path::PathBuf>,
    every: Duration,
    stop: CancellationToken,
) {
    let http = match peer_http(ca_cert.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "anti-entropy HTTP client; sweeper not started");
            return;
        }
    };
    let http = Arc::new(http);
    let peers = Arc::new(peers);
    crate::common::schedule::run_every("anti_entropy", every, stop, || {
        let (http, users, queue, peers) = (http.clone(), users.clone(), queue.clone(), peers.clone());
        async move {
            let mut failed = 0;
            for peer in peers.iter() {
                match round(&http, &users, &queue, peer).await {
                    Ok(r) => {
                        metrics::counter!(m::ANTI_ENTROPY_ROUNDS_TOTAL, "peer" => peer.region.clone(), "outcome" => "ok").increment(1);
                        metrics::counter!(m::ANTI_ENTROPY_REPAIRED_TOTAL, "peer" => peer.region.clone())
                            .increment(r.repaired as u64);
                        metrics::gauge!(m::ANTI_ENTROPY_BUCKETS_DIFFERING, "peer" => peer.region.clone())
                            .set(r.buckets_differing as f64);
                        if r.repaired > 0 || r.parked > 0 {
                            tracing::info!(peer = %peer.region, ?r, "anti-entropy repaired records");
                        }
                    }
                    Err(e) => {
                        failed += 1;
                        metrics::counter!(m::ANTI_ENTROPY_ROUNDS_TOTAL, "peer" => peer.region.clone(), "outcome" => "error").increment(1);
                        tracing::warn!(peer = %peer.region, error = format!("{e:#}"), "anti-entropy round");
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} of {} peers could not be compared", peers.len());
            }
            Ok(())
        }
    })
    .await
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AntiEntropyConfig {
    /// How often each peer with an `http` address is compared. Default 60 s.
    pub interval_ms: u64,
    /// A PEM CA bundle trusted for peers' `https://` addresses, besides the system's
    /// roots.
    pub ca_cert: Option<std::path::PathBuf>,
}

impl Default for AntiEntropyConfig {
    fn default() -> Self {
        AntiEntropyConfig {
            interval_ms: 60_000,
            ca_cert: None,
        }
    }
}

impl AntiEntropyConfig {
    /// Checks the `[anti_entropy]` section (the CA bundle is read).
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.interval_ms < 100 {
            return Err(invalid("anti_entropy.interval_ms", "must be at least 100"));
        }
        if let Some(ca) = &self.ca_cert {
            crate::common::tls::read_roots(ca)
                .map_err(|e| invalid("anti_entropy.ca_cert", e.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_region_time_method_and_path() {
        let rings = crate::crypto::keyring::init(&["a".into(), "b".into()]).unwrap();
        let (a, b) = (&rings[0], &rings[1]);
        let now = 1_700_000_000_000;
        // A fresh table per check: these look at the signature, not at replays.
        let verify = |k: &Keyring, h: &str, now: u64, m: &str, p: &str, body: &[u8]| {
            verify(k, &Nonces::default(), h, now, m, p, body)
        };
        let h = sign(a, now, "GET", "/v1/internal/digests", b"");
        assert_eq!(
            verify(b, &h, now + 1000, "GET", "/v1/internal/digests", b""),
            Ok("a".into())
        );
        assert!(verify(b, &h, now, "POST", "/v1/internal/digests", b"").is_err());
        assert!(verify(b, &h, now, "GET", "/v1/internal/buckets/1", b"").is_err());
        assert_eq!(
            verify(
                b,
                &h,
                now + MAX_AGE_MS + 1,
                "GET",
                "/v1/internal/digests",
                b""
            ),
            Err("peer signature expired")
        );
        let forged = h.replacen("a:", "b:", 1);
        assert!(verify(a, &forged, now, "GET", "/v1/internal/digests", b"").is_err());
        // Naming b's signing key with a's signature does not pass either.
        let forged = h.replacen("a/s1", "b/s1", 1);
        assert!(verify(a, &forged, now, "GET", "/v1/internal/digests", b"").is_err());
        assert!(
            verify(a, &h, now, "GET", "/v1/internal/digests", b"").is_err(),
            "not from itself"
        );
        for junk in ["", "a", "a:b:c", "a:1:zz", ":::", "a:1:00:a/s1:00", "::::"] {
            assert!(verify(b, junk, now, "GET", "/", b"").is_err(), "{junk:?}");
        }
        let body = br#"{"ids":[]}"#;
        let post = sign(a, now, "POST", "/v1/internal/records", body);
        assert!(verify(b, &post, now, "POST", "/v1/internal/records", body).is_ok());
        assert!(
            verify(
                b,
                &post,
                now,
                "POST",
                "/v1/internal/records",
                br#"{"ids":[1]}"#
            )
            .is_err(),
            "another body"
        );
        let other = crate::crypto::keyring::init(&["a".into(), "b".into()]).unwrap();
        assert!(
            verify(&other[1], &h, now, "GET", "/v1/internal/digests", b"").is_err(),
            "another deployment's key"
        );
    }

    /// Records may be large (up to 256 KiB each, 500 asked at once): an answer that
    /// grew past what the peer reads would fail every round with that peer. It stops
    /// at its budget, always with at least one record, and the rest come next round.
    #[test]
    fn an_answer_stays_within_its_budget_and_the_rest_come_next() {
        use crate::common::hlc::{Hlc, SystemClock};
        use crate::crypto::password::{PasswordAlgorithm, Passwords};
        use crate::storage::store::{Store, StoreOptions};
        let dir = tempfile::tempdir().unwrap();
        let ring = crate::crypto::keyring::init(&["a".into(), "b".into()])
            .unwrap()
            .remove(0);
        let passwords = Passwords::new(PasswordAlgorithm::Argon2id, ring.pepper()).unwrap();
        let store = Arc::new(Store::open(dir.path(), &StoreOptions::default()).unwrap());
        let hlc = Arc::new(Hlc::new("a", 500, Box::new(SystemClock)));
        let users = Users::new(store, ring, passwords, hlc, 8);
        let mut ids = Vec::new();
        for i in 0..5 {
            let input = crate::accounts::input::new_user(
                &serde_json::json!({"email": format!("u{i}@example.com"), "password": "correct horse battery"}),
                8,
            )
            .unwrap();
            ids.push(users.create(input).unwrap().0);
        }
        ids.push(Uuid::new_v4()); // not held: skipped
        let all = answer(&users, &ids, usize::MAX).unwrap();
        assert_eq!((all.records.len(), all.user_keys.len()), (5, 5));
        let one = all.records[0].len() * 3 / 4 + all.user_keys[0].len() * 3 / 4;
        let some = answer(&users, &ids, 2 * one + one / 2).unwrap();
        assert_eq!(some.records.len(), 2, "stops before the budget");
        assert_eq!(some.records, all.records[..2].to_vec());
        let first = answer(&users, &ids, 1).unwrap();
        assert_eq!(first.records.len(), 1, "at least one, whatever its size");
    }

    /// The attack: a request captured on the wire (or in a proxy's log) sent again
    /// within its minute. Refused the second time; another nonce is another request.
    #[test]
    fn a_peer_request_is_taken_once() {
        let rings = crate::crypto::keyring::init(&["a".into(), "b".into()]).unwrap();
        let nonces = Nonces::default();
        let now = 1_700_000_000_000;
        let path = "/v1/internal/digests";
        let h = sign(&rings[0], now, "GET", path, b"");
        assert_eq!(
            verify(&rings[1], &nonces, &h, now, "GET", path, b""),
            Ok("a".into())
        );
        assert_eq!(
            verify(&rings[1], &nonces, &h, now + 10, "GET", path, b""),
            Err("peer request replayed")
        );
        let again = sign(&rings[0], now, "GET", path, b"");
        assert!(verify(&rings[1], &nonces, &again, now + 10, "GET", path, b"").is_ok());
        // Once its window is over it is refused as expired, and forgotten.
        assert_eq!(
            verify(
                &rings[1],
                &nonces,
                &h,
                now + 3 * MAX_AGE_MS,
                "GET",
                path,
                b""
            ),
            Err("peer signature expired")
        );
        assert!(nonces.seen.lock()["a"].present.len() <= 2);
        // A request stamped at the far edge of the window (its sender's clock a minute
        // ahead) is remembered for as long as its age passes: replayed a moment
        // before that, it is refused.
        let ahead = sign(&rings[0], now + MAX_AGE_MS, "GET", path, b"");
        assert!(verify(&rings[1], &nonces, &ahead, now, "GET", path, b"").is_ok());
        assert_eq!(
            verify(
                &rings[1],
                &nonces,
                &ahead,
                now + 2 * MAX_AGE_MS,
                "GET",
                path,
                b""
            ),
            Err("peer request replayed")
        );
    }

    /// The attack: a region holding every shared secret (the index key, the pepper)
    /// signs a request as another. Format 1's HMAC under the shared key let it; a
    /// format 2 keyring refuses that header outright, and an Ed25519 signature can be
    /// made only with the region's own key.
    #[test]
    fn a_region_cannot_sign_a_peer_request_as_another() {
        let legacy =
            crate::crypto::keyring::init_legacy(&["a".into(), "b".into(), "c".into()]).unwrap();
        let now = 1_700_000_000_000;
        let path = "/v1/internal/digests";
        let check = |ring: &Keyring, header: &str| {
            verify(ring, &Nonces::default(), header, now, "GET", path, b"")
        };
        let as_a = |ring: &Keyring| {
            let tag = hmac::sign(
                &legacy_auth_key(ring),
                &signed_input("a", now, &[], "GET", path, b""),
            );
            format!("a:{now}:{}", hex::encode(tag.as_ref()))
        };
        // c forges a's request with the shared key; a format 1 b takes it.
        assert!(check(&legacy[1], &as_a(&legacy[2])).is_ok());
        let rings = crate::crypto::keyring::init(&["a".into(), "b".into(), "c".into()]).unwrap();
        assert!(check(&rings[1], &as_a(&rings[2])).is_err());
        let signed_by_c = sign(&rings[2], now, "GET", path, b"").replacen("c:", "a:", 1);
        assert!(check(&rings[1], &signed_by_c).is_err());
        let signed_by_c = signed_by_c.replacen("c/s1", "a/s1", 1);
        assert_eq!(check(&rings[1], &signed_by_c), Err("bad peer signature"));
    }

    /// The attack: one peer sends as many signed requests as the nonce table holds, to
    /// have every other peer's anti-entropy refused. Each peer fills only its own.
    #[test]
    fn one_peer_cannot_fill_anothers_nonce_table() {
        let nonces = Nonces::default();
        let now = 1_700_000_000_000;
        for i in 0..MAX_NONCES as u128 {
            nonces.take("c", i.to_be_bytes(), now, now).unwrap();
        }
        assert_eq!(
            nonces.take("c", u128::MAX.to_be_bytes(), now, now),
            Err("too many peer requests; try again")
        );
        assert!(nonces.take("a", u128::MAX.to_be_bytes(), now, now).is_ok());
    }
}
