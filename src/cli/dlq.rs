//! `authsync dlq`: the dead-letter and retry queues of a running node, over its admin
//! API (the same endpoints an operator's tooling would use).

use serde_json::Value;

use crate::cli::admin_client::AdminClient;

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

/// Runs `action` against `node` and prints the result on stdout.
pub async fn run(
    node: &crate::cli::admin_client::NodeAddress,
    action: Action,
) -> anyhow::Result<()> {
    let admin = AdminClient::new(node)?;
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
                    None,
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
                    None,
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
                    None,
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
                    None,
                    204,
                )
                .await?;
            println!("dead letter {id} dropped");
        }
    }
    Ok(())
}
