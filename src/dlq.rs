//! `authsync dlq`: the dead-letter and retry queues of a running node, over its admin
//! API (the same endpoints an operator's tooling would use).

use anyhow::{bail, Context};
use serde_json::Value;

/// What to do.
#[derive(Debug, Clone)]
pub enum Action {
    /// Dead letters (or, with `retry`, parked events), one line each.
    List {
        retry: bool,
        limit: usize,
        after: u64,
    },
    /// One dead letter with its history, as JSON.
    Show { id: u64 },
    /// Apply a dead letter now.
    Replay { id: u64 },
    /// Delete a dead letter.
    Drop { id: u64 },
}

struct Admin {
    http: reqwest::Client,
    base: String,
    api_key: String,
}

impl Admin {
    /// Sends a request; an answer other than `want` becomes the error, named.
    async fn expect(
        &self,
        method: reqwest::Method,
        path: &str,
        want: u16,
    ) -> anyhow::Result<Value> {
        let (status, body) = self.call(method, path).await?;
        if status != want {
            return Err(fail(status, &body));
        }
        Ok(body)
    }

    async fn call(&self, method: reqwest::Method, path: &str) -> anyhow::Result<(u16, Value)> {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.api_key)
            .send()
            .await
            .with_context(|| format!("reach {}", self.base))?;
        let status = resp.status().as_u16();
        let text = resp.text().await.context("read answer")?;
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, body))
    }
}

fn fail(status: u16, body: &Value) -> anyhow::Error {
    let error = body["error"].as_str().unwrap_or("error");
    let details: Vec<String> = body["details"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|p| {
                    format!(
                        "{}: {}",
                        p["field"].as_str().unwrap_or(""),
                        p["problem"].as_str().unwrap_or("")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if details.is_empty() {
        anyhow::anyhow!("node answered {status} {error}")
    } else {
        anyhow::anyhow!("node answered {status} {error} ({})", details.join("; "))
    }
}

fn line(e: &Value) -> String {
    format!(
        "{:>8}  {:<10} {:<16} {:>3}  {:<36}  {}",
        e["id"],
        e["source_region"].as_str().unwrap_or("-"),
        e["reason"].as_str().unwrap_or("-"),
        e["attempts"],
        e["record_id"].as_str().unwrap_or("-"),
        e["last_error"].as_str().unwrap_or("")
    )
}

/// Runs `action` against the node at `base` and prints the result on stdout.
pub async fn run(base: &str, api_key: &str, action: Action) -> anyhow::Result<()> {
    let admin = Admin {
        http: reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .context("HTTP client")?,
        base: base.trim_end_matches('/').to_string(),
        api_key: api_key.to_string(),
    };
    match action {
        Action::List {
            retry,
            limit,
            after,
        } => {
            let path = if retry {
                "/v1/admin/retry"
            } else {
                "/v1/admin/dead-letters"
            };
            let body = admin
                .expect(
                    reqwest::Method::GET,
                    &format!("{path}?limit={limit}&after={after}"),
                    200,
                )
                .await?;
            let entries = body["entries"].as_array().cloned().unwrap_or_default();
            let what = if retry {
                "parked events"
            } else {
                "dead letters"
            };
            println!("{} {what}", body["count"]);
            if !entries.is_empty() {
                println!(
                    "{:>8}  {:<10} {:<16} {:>3}  {:<36}  last error",
                    "id", "source", "reason", "try", "record"
                );
            }
            for e in &entries {
                println!("{}", line(e));
            }
            if let Some(next) = body["next_after"].as_u64() {
                println!("more: --after {next}");
            }
        }
        Action::Show { id } => {
            let body = admin
                .expect(
                    reqwest::Method::GET,
                    &format!("/v1/admin/dead-letters/{id}"),
                    200,
                )
                .await?;
            println!("{}", serde_json::to_string_pretty(&body)?);
        }
        Action::Replay { id } => {
            let body = admin
                .expect(
                    reqwest::Method::POST,
                    &format!("/v1/admin/dead-letters/{id}/replay"),
                    200,
                )
                .await?;
            println!(
                "dead letter {id}: {}",
                body["outcome"].as_str().unwrap_or("?")
            );
        }
        Action::Drop { id } => {
            let _ = admin
                .expect(
                    reqwest::Method::DELETE,
                    &format!("/v1/admin/dead-letters/{id}"),
                    204,
                )
                .await?;
            println!("dead letter {id} dropped");
        }
    }
    Ok(())
}

/// Checks a node URL given on the command line.
pub fn check_url(url: &str) -> anyhow::Result<()> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        bail!("--url must start with http:// or https://, got {url:?}");
    }
    Ok(())
}
