//! The workload: clients writing to every region at once, each operation logged with
//! its outcome as the client saw it.
//!
//! - **acknowledged**: a 2xx answer. Its effect, or a newer change of the same record,
//!   must be in every region at the end.
//! - **refused**: a 4xx answer (or 503 `key_unavailable`). It changed nothing.
//! - **unknown**: no answer (timeout, reset, a node killed mid-request) or another 5xx.
//!   It may or may not have taken effect; either is correct.
//!
//! Operations: creates; updates, password changes and status changes of a few shared
//! hot users that every client touches; deletes of accounts the client created; and
//! creates of the same email in several regions at once, which must end as one live
//! account. Every email, phone and name a client writes carries a marker, so the
//! plaintext check can look for all of them at once; so do the secrets of the second
//! factor one hot user turns on ([`second_factor_markers`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::Instant;

/// In every email the workload writes.
pub const EMAIL_MARKER: &str = "@chaos.example";
/// In every name the workload writes.
pub const NAME_MARKER: &str = "Chaosname";
/// In every phone the workload writes (E.164, as stored).
pub const PHONE_MARKER: &str = "+442079460";

pub const PASSWORD: &str = "correct horse battery";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Create,
    /// A create of an email other clients create at the same moment in other regions.
    CreateSameEmail,
    Update,
    Password,
    Status,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome", content = "detail")]
pub enum Outcome {
    Acked,
    Refused(u16),
    Unknown(String),
}

/// One logged operation.
#[derive(Debug, Clone, Serialize)]
pub struct Op {
    pub id: u64,
    pub client: usize,
    pub region: usize,
    pub kind: Kind,
    pub user: Option<String>,
    pub email: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub started_ms: u64,
    pub ended_ms: u64,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The version the node answered with (`version.ts`), when it gives one.
    pub version_ts: Option<u64>,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An HTTP client of the cluster with its API key.
#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    key: String,
}

impl Api {
    pub fn new(key: &str) -> anyhow::Result<Api> {
        Ok(Api {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
            key: key.to_string(),
        })
    }

    /// The status and body, or why there was no answer.
    pub async fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let mut req = self.client.request(method, url).bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }
}

fn classify(answer: &Result<(u16, Value), String>) -> Outcome {
    match answer {
        Ok((s, _)) if (200..300).contains(s) => Outcome::Acked,
        Ok((503, body)) if body["error"] == "key_unavailable" => Outcome::Refused(503),
        Ok((s, _)) if (400..500).contains(s) => Outcome::Refused(*s),
        Ok((s, body)) => Outcome::Unknown(format!("{s} {body}")),
        Err(e) => Outcome::Unknown(e.clone()),
    }
}

/// Shared by every client: the log, the operation counter, the regions' URLs.
pub struct Workload {
    pub urls: Vec<String>,
    pub api: Api,
    pub hot: Vec<String>,
    next_op: AtomicU64,
    log: parking_lot::Mutex<Vec<Op>>,
}

impl Workload {
    pub fn new(urls: Vec<String>, api: Api, hot: Vec<String>) -> Arc<Workload> {
        Arc::new(Workload {
            urls,
            api,
            hot,
            next_op: AtomicU64::new(0),
            log: Default::default(),
        })
    }

    pub fn take_log(&self) -> Vec<Op> {
        let mut log = std::mem::take(&mut *self.log.lock());
        log.sort_by_key(|o| o.id);
        log
    }

    /// Runs one operation in `region` and logs it.
    #[allow(clippy::too_many_arguments)]
    pub async fn run(
        &self,
        client: usize,
        region: usize,
        kind: Kind,
        method: reqwest::Method,
        path: String,
        body: Option<Value>,
        user: Option<String>,
        email: Option<String>,
    ) -> Op {
        let id = self.next_op.fetch_add(1, Ordering::Relaxed);
        let started_ms = now_ms();
        let answer = self
            .api
            .send(method, &format!("{}{path}", self.urls[region]), body)
            .await;
        let outcome = classify(&answer);
        let (user, version_ts) = match (&answer, &outcome) {
            (Ok((_, body)), Outcome::Acked) => (
                user.or_else(|| body["id"].as_str().map(str::to_string)),
                body["version"]["ts"].as_u64(),
            ),
            _ => (user, None),
        };
        let op = Op {
            id,
            client,
            region,
            kind,
            user,
            email,
            started_ms,
            ended_ms: now_ms(),
            outcome,
            version_ts,
        };
        self.log.lock().push(op.clone());
        op
    }
}

/// Turns a TOTP authenticator on for account `id` at `url`, as its app would (the
/// first code made from the seed); returns what must never be found in plaintext: the
/// seed raw and in base32, and each recovery code as shown and without its dashes.
pub async fn second_factor_markers(api: &Api, url: &str, id: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let (status, enrolment) = api
        .send(
            reqwest::Method::POST,
            &format!("{url}/v1/users/{id}/factors/totp"),
            None,
        )
        .await
        .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(status == 200, "enrol a second factor: {status} {enrolment}");
    let base32 = enrolment["secret"].as_str().unwrap_or_default().to_string();
    let seed = base32_decode(&base32);
    anyhow::ensure!(seed.len() == 20, "a 20-byte seed, not {base32:?}");
    let step = now_ms() / 1000 / authsync::crypto::totp::STEP_S;
    let code = format!("{:06}", authsync::crypto::totp::hotp(&seed, step));
    let (status, confirmed) = api
        .send(
            reqwest::Method::POST,
            &format!("{url}/v1/users/{id}/factors/totp/confirm"),
            Some(json!({"code": code})),
        )
        .await
        .map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        status == 200,
        "confirm the second factor: {status} {confirmed}"
    );
    let mut markers = vec![seed, base32.into_bytes()];
    for c in confirmed["recovery_codes"].as_array().into_iter().flatten() {
        let c = c.as_str().unwrap_or_default();
        markers.push(c.as_bytes().to_vec());
        markers.push(c.replace('-', "").into_bytes());
    }
    anyhow::ensure!(markers.len() == 22, "ten recovery codes: {confirmed}");
    Ok(markers)
}

/// RFC 4648 base32 (no padding) back to bytes.
fn base32_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut out, mut buffer, mut bits) = (Vec::new(), 0u32, 0u32);
    for c in s.bytes() {
        let Some(v) = ALPHABET.iter().position(|a| *a == c) else {
            return Vec::new();
        };
        buffer = (buffer << 5) | v as u32;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    out
}

/// Creates the hot users in the first region and returns their ids once every region
/// has them.
pub async fn create_hot_users(api: &Api, urls: &[String], n: usize) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    for i in 0..n {
        let body = json!({"email": format!("hot-{i}{EMAIL_MARKER}"),
                          "phone": format!("{PHONE_MARKER}{i:03}"),
                          "password": PASSWORD,
                          "profile": {"given_name": format!("{NAME_MARKER}Hot{i}")}});
        let (status, resp) = api
            .send(
                reqwest::Method::POST,
                &format!("{}/v1/users", urls[0]),
                Some(body),
            )
            .await
            .map_err(anyhow::Error::msg)?;
        anyhow::ensure!(status == 201, "create hot user {i}: {status} {resp}");
        ids.push(resp["id"].as_str().unwrap_or_default().to_string());
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for url in urls {
        for id in &ids {
            loop {
                let found = api
                    .send(reqwest::Method::GET, &format!("{url}/v1/users/{id}"), None)
                    .await
                    .is_ok_and(|(s, _)| s == 200);
                if found {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "hot user {id} did not reach {url}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    Ok(ids)
}

/// One client: writes to region `client % regions` until `until`.
pub async fn client(work: Arc<Workload>, client: usize, seed: u64, until: Instant) {
    let mut rng = StdRng::seed_from_u64(seed ^ (client as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let region = client % work.urls.len();
    let mut mine: Vec<String> = Vec::new();
    let mut created = 0u64;
    let mut last_slot = u64::MAX;
    while Instant::now() < until {
        let hot = work.hot[rng.gen_range(0..work.hot.len())].clone();
        let roll = rng.gen_range(0..100);
        match roll {
            0..=24 => {
                created += 1;
                let email = format!("c{client}-{created}{EMAIL_MARKER}");
                let body = json!({"email": email, "password": PASSWORD,
                                  "profile": {"given_name": format!("{NAME_MARKER}{client}x{created}")}});
                let op = work
                    .run(
                        client,
                        region,
                        Kind::Create,
                        reqwest::Method::POST,
                        "/v1/users".into(),
                        Some(body),
                        None,
                        Some(email),
                    )
                    .await;
                if let (Outcome::Acked, Some(id)) = (&op.outcome, op.user) {
                    mine.push(id);
                }
            }
            25..=54 => {
                let body = json!({"profile": {"given_name": format!("{NAME_MARKER}{client}n{}", rng.gen::<u32>())}});
                work.run(
                    client,
                    region,
                    Kind::Update,
                    reqwest::Method::PATCH,
                    format!("/v1/users/{hot}"),
                    Some(body),
                    Some(hot),
                    None,
                )
                .await;
            }
            55..=62 => {
                let body = json!({"password": format!("{PASSWORD} {}", rng.gen::<u32>())});
                work.run(
                    client,
                    region,
                    Kind::Password,
                    reqwest::Method::PUT,
                    format!("/v1/users/{hot}/password"),
                    Some(body),
                    Some(hot),
                    None,
                )
                .await;
            }
            63..=72 => {
                let status = ["active", "locked", "disabled"][rng.gen_range(0..3)];
                work.run(
                    client,
                    region,
                    Kind::Status,
                    reqwest::Method::PUT,
                    format!("/v1/users/{hot}/status"),
                    Some(json!({"status": status})),
                    Some(hot),
                    None,
                )
                .await;
            }
            73..=82 if !mine.is_empty() => {
                let id = mine.swap_remove(rng.gen_range(0..mine.len()));
                work.run(
                    client,
                    region,
                    Kind::Delete,
                    reqwest::Method::DELETE,
                    format!("/v1/users/{id}"),
                    None,
                    Some(id),
                    None,
                )
                .await;
            }
            _ => {
                // Every client creates the same email in the same two-second slot, each
                // in its own region.
                let slot = now_ms() / 2000;
                if slot == last_slot {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                last_slot = slot;
                let email = format!("same-{slot}{EMAIL_MARKER}");
                let body = json!({"email": email, "password": PASSWORD,
                                  "profile": {"given_name": format!("{NAME_MARKER}Same{slot}")}});
                work.run(
                    client,
                    region,
                    Kind::CreateSameEmail,
                    reqwest::Method::POST,
                    "/v1/users".into(),
                    Some(body),
                    None,
                    Some(email),
                )
                .await;
            }
        }
    }
}
