//! The checks after the faults stop, each a count that must be zero.
//!
//! - **lost**: an acknowledged write whose effect, or a newer change of the same
//!   record, is missing in some region. A create must read everywhere unless the account
//!   was deleted or merged (both answer 404). An update or status change must read at
//!   its acknowledged version or a newer one. A delete must answer 404 everywhere.
//! - **diverged**: the regions' digests (of every record's id, version and tombstone)
//!   still differ when the convergence timeout ends.
//! - **duplicates**: more than one live (not merged) account with the same email in a
//!   region, among
//!   the accounts created with the emails that clients created at the same moment in
//!   different regions.
//! - **plaintext**: a marker of the emails, phones and names the workload wrote, found in
//!   any file of any data directory or in any Kafka message.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::stream::{self, StreamExt};
use serde::Serialize;
use tokio::time::Instant;

use crate::workload::{Api, Kind, Op, Outcome};

/// One region's answer for one user: the status code and `version.ts` when it read.
#[derive(Debug, Clone, Copy)]
struct Seen {
    status: u16,
    version: Option<u64>,
}

/// Polls every region's digest until they agree; the time it took, or `None`.
pub async fn converge(api: &Api, urls: &[String], within: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        let mut digests = BTreeSet::new();
        let mut all = true;
        for url in urls {
            match api
                .send(
                    reqwest::Method::GET,
                    &format!("{url}/v1/admin/digest"),
                    None,
                )
                .await
            {
                Ok((200, body)) => {
                    digests.insert(body["digest"].to_string());
                }
                _ => all = false,
            }
        }
        if all && digests.len() == 1 {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// Every region's answer for every user the log touched.
async fn read_all(api: &Api, urls: &[String], log: &[Op]) -> Vec<BTreeMap<String, Seen>> {
    let users: BTreeSet<String> = log.iter().filter_map(|o| o.user.clone()).collect();
    let mut out = Vec::new();
    for url in urls {
        let seen: BTreeMap<String, Seen> = stream::iter(users.iter().cloned())
            .map(|id| async move {
                let answer = api
                    .send(reqwest::Method::GET, &format!("{url}/v1/users/{id}"), None)
                    .await;
                let seen = match answer {
                    Ok((status, body)) => Seen {
                        status,
                        version: body["version"]["ts"].as_u64(),
                    },
                    Err(_) => Seen {
                        status: 0,
                        version: None,
                    },
                };
                (id, seen)
            })
            .buffer_unordered(16)
            .collect()
            .await;
        out.push(seen);
    }
    out
}

/// Acknowledged writes missing somewhere, described one per line. A region that
/// answers 503 for some record (it holds the record but not yet a key to open it,
/// until key recovery re-wraps it) is asked again until `within` has passed.
/// Also returns how long it took until no region answered 503.
pub async fn lost(
    api: &Api,
    urls: &[String],
    log: &[Op],
    within: Duration,
) -> (Vec<String>, Duration) {
    let started = Instant::now();
    let mut seen = read_all(api, urls, log).await;
    while seen.iter().any(|r| r.values().any(|s| s.status == 503)) && started.elapsed() < within {
        tokio::time::sleep(Duration::from_secs(1)).await;
        seen = read_all(api, urls, log).await;
    }
    let readable_after = started.elapsed();
    // A delete that may have happened (acknowledged or unknown) or an email other
    // clients also created (a merge) explains a 404.
    let may_be_gone: BTreeSet<&str> = log
        .iter()
        .filter(|o| {
            (o.kind == Kind::Delete && !matches!(o.outcome, Outcome::Refused(_)))
                || o.kind == Kind::CreateSameEmail
        })
        .filter_map(|o| o.user.as_deref())
        .collect();
    let mut lost = Vec::new();
    for op in log.iter().filter(|o| o.outcome == Outcome::Acked) {
        let Some(user) = op.user.as_deref() else {
            continue;
        };
        for (region, answers) in seen.iter().enumerate() {
            let Some(s) = answers.get(user).copied() else {
                continue;
            };
            let ok = match op.kind {
                Kind::Delete => s.status == 404,
                _ if s.status == 404 => may_be_gone.contains(user),
                Kind::Create | Kind::CreateSameEmail | Kind::Password => s.status == 200,
                Kind::Update | Kind::Status => {
                    s.status == 200 && s.version >= op.version_ts && s.version.is_some()
                }
            };
            if !ok {
                lost.push(format!(
                    "op {} ({:?} of {user} in region {}, version {:?}): region {region} answers {} at version {:?}",
                    op.id, op.kind, op.region, op.version_ts, s.status, s.version
                ));
            }
        }
    }
    (lost, readable_after)
}

/// Emails with more than one live account in some region.
pub async fn duplicates(api: &Api, urls: &[String], log: &[Op]) -> Vec<String> {
    let mut by_email: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for op in log.iter().filter(|o| o.kind == Kind::CreateSameEmail) {
        if let (Some(email), Some(user)) = (op.email.as_deref(), op.user.as_deref()) {
            by_email.entry(email).or_default().insert(user);
        }
    }
    let mut found = Vec::new();
    for (region, url) in urls.iter().enumerate() {
        for (email, ids) in &by_email {
            let mut live = Vec::new();
            for id in ids {
                if let Ok((200, body)) = api
                    .send(reqwest::Method::GET, &format!("{url}/v1/users/{id}"), None)
                    .await
                {
                    // A merged account still reads, as `merged`, pointing at the winner.
                    if body["email"].as_str() == Some(*email) && body["status"] != "merged" {
                        live.push(*id);
                    }
                }
            }
            if live.len() > 1 {
                found.push(format!("{email} in region {region}: {live:?}"));
            }
        }
    }
    found
}

/// What the run found, for the report.
#[derive(Debug, Default, Serialize)]
pub struct Verdict {
    pub lost: Vec<String>,
    pub diverged: bool,
    pub duplicates: Vec<String>,
    pub plaintext: Vec<crate::plaintext::Finding>,
    /// After convergence, how long until every record read in every region (a region
    /// whose key service was down answers 503 until key recovery re-wraps its key).
    pub readable_after_ms: u64,
    /// Kafka messages scanned for plaintext (local target).
    pub kafka_messages: usize,
    /// Broker log directories scanned as files (compose target).
    pub broker_logs: usize,
    /// Why the plaintext scan could not finish (a broker that stopped answering, say):
    /// a violation, since nothing then shows the data is not there.
    pub scan_error: Option<String>,
}

impl Verdict {
    pub fn violations(&self) -> usize {
        self.lost.len()
            + usize::from(self.diverged)
            + self.duplicates.len()
            + self.plaintext.len()
            + usize::from(self.scan_error.is_some())
    }
}

#[cfg(test)]
mod verdict_tests {
    use super::*;

    #[test]
    fn a_plaintext_scan_that_did_not_finish_is_a_violation() {
        let mut v = Verdict::default();
        assert_eq!(v.violations(), 0);
        v.scan_error = Some("read a topic: gave up after 60s".into());
        assert_eq!(v.violations(), 1);
    }
}
