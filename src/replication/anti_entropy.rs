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
//! The internal endpoints are authenticated between regions with a signature keyed
//! from the deployment's shared index key (so no extra secret is configured): header
//! `x-authsync-peer: <region>:<unix ms>:<hex HMAC-SHA256(region, ms, method, path,
//! SHA-256(body))>`, accepted within a minute of the receiver's clock.

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

fn auth_key(keyring: &Keyring) -> hmac::Key {
    let k = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, keyring.index_key()),
        b"authsync/peer-auth/v1",
    );
    hmac::Key::new(hmac::HMAC_SHA256, k.as_ref())
}

fn signed_input(region: &str, ms: u64, method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let body_hash = ring::digest::digest(&ring::digest::SHA256, body);
    let mut out = Vec::new();
    for part in [
        region.as_bytes(),
        &ms.to_be_bytes(),
        method.as_bytes(),
        path.as_bytes(),
        body_hash.as_ref(),
    ] {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// The header value that authenticates this region's request.
pub fn sign(keyring: &Keyring, now_ms: u64, method: &str, path: &str, body: &[u8]) -> String {
    let tag = hmac::sign(
        &auth_key(keyring),
        &signed_input(keyring.owner(), now_ms, method, path, body),
    );
    format!(
        "{}:{}:{}",
        keyring.owner(),
        now_ms,
        hex::encode(tag.as_ref())
    )
}

/// Checks a peer's header; returns the peer region.
pub fn verify(
    keyring: &Keyring,
    header: &str,
    now_ms: u64,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<String, &'static str> {
    let mut parts = header.splitn(3, ':');
    let (Some(region), Some(ms), Some(sig)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("malformed peer signature");
    };
    let ms: u64 = ms.parse().map_err(|_| "malformed peer signature")?;
    if now_ms.abs_diff(ms) > MAX_AGE_MS {
        return Err("peer signature expired");
    }
    if !keyring.regions().any(|r| r == region) || region == keyring.owner() {
        return Err("unknown peer region");
    }
    let sig = hex::decode(sig).map_err(|_| "malformed peer signature")?;
    hmac::verify(
        &auth_key(keyring),
        &signed_input(region, ms, method, path, body),
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
        resp.json().await.context("decode peer answer")
    }
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
    let mut wanted: Vec<Uuid> = Vec::new();
    for b in &differing {
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
                wanted.push(s.id);
            }
        }
    }
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
    let builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(5));
    let http = match crate::common::tls::trusting(builder, ca_cert.as_deref())
        .map_err(anyhow::Error::from)
        .and_then(|b| Ok(b.build()?))
    {
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
        assert!(
            verify(a, &h, now, "GET", "/v1/internal/digests", b"").is_err(),
            "not from itself"
        );
        for junk in ["", "a", "a:b:c", "a:1:zz", ":::"] {
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
}
