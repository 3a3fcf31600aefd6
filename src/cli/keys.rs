//! `authsync keys retire`: destroys an old master key version once the region's node
//! says nothing uses it.

use anyhow::bail;

use crate::cli::admin_client::{AdminClient, NodeAddress};

/// Retires master key `version` of `region` in the keyring directory `dir`, once the
/// region's node at `node` reports that nothing it holds still uses it.
pub async fn retire_key(
    node: &NodeAddress,
    dir: &std::path::Path,
    region: &str,
    version: u32,
) -> anyhow::Result<()> {
    // Retired in memory first: what the keyring alone refuses (the active version, a
    // version it does not hold) is refused before the node is asked anything. Peers
    // hold only active versions, so only this file changes.
    let (path, mut keyring) = authsync::crypto::keyring::load_own(dir, region)?;
    keyring.retire(version)?;
    let admin = AdminClient::new(node)?;
    let usage = admin
        .expect(reqwest::Method::GET, "/v1/admin/keys/usage", None, 200)
        .await?;
    if usage["region"] != region {
        bail!(
            "{} is the node of region {}, not {region}",
            node.url,
            usage["region"]
        );
    }
    if usage["active"] == version {
        bail!(
            "the node of {region} still wraps new data under v{version}: it has not \
             reloaded the rotated keyring yet; try again after keys.reload_interval_ms"
        );
    }
    let Some(held) = usage["versions"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["version"] == version))
    else {
        bail!(
            "the node of {region} does not hold v{version} (already retired, or not yet reloaded)"
        );
    };
    let n = |field: &str| held[field].as_u64().unwrap_or(0);
    let (records, user_keys, signing_keys) = (n("records"), n("user_keys"), n("signing_keys"));
    if records + user_keys + signing_keys > 0 {
        bail!(
            "{region}/v{version} is still used by {records} records, {user_keys} user keys and \
             {signing_keys} signing keys: key recovery moves records and user keys to the \
             active version every keys.rewrap_interval_ms, and `authsync api-keys \
             rotate-signing-key` moves the signing key once its successor signs; try again then"
        );
    }
    keyring.save(&path)?;
    println!(
        "region {region}: master key v{version} retired; nothing sealed under it can be opened \
         any more, backups included. The node drops it at its next keyring reload."
    );
    Ok(())
}
