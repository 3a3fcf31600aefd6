//! Keyrings: each region's master keys, the blind-index key and the password pepper.
//!
//! A keyring file belongs to one region (its `owner`). It holds:
//! - the owner's master keys, versioned: one `active` key wraps new data keys, older
//!   `decrypt_only` keys still unwrap what they wrapped;
//! - the active wrapping key of each peer region (`role = "peer"`), so a write here can
//!   wrap its data key for every region — the part the original system delegated to
//!   each region's KMS. A node never unwraps with a peer's key;
//! - the blind-index key and the password pepper, the same in every region so lookups
//!   and logins work everywhere.
//!
//! Files are JSON, written with mode 0600; a node refuses a keyring that other users
//! can read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::common::config::{invalid, Invalid};
use crate::common::region::check_region_name;

pub const KEYRING_FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("read keyring {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("keyring {path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`")]
    Permissions { path: PathBuf, mode: u32 },
    #[error("parse keyring {path}: {problem}")]
    Parse { path: PathBuf, problem: String },
    #[error("write keyring {path}: {error}")]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("keyring {path} belongs to region {found}, expected {expected}")]
    WrongOwner {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("system random number generator failed")]
    Random,
}

/// A 256-bit secret that is wiped from memory when dropped.
pub type Secret = Zeroizing<[u8; 32]>;

pub fn random_secret() -> Result<Secret, KeyError> {
    let mut key = Zeroizing::new([0u8; 32]);
    SystemRandom::new()
        .fill(key.as_mut())
        .map_err(|_| KeyError::Random)?;
    Ok(key)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Wraps new data keys. Exactly one per region.
    Active,
    /// Unwraps what it wrapped; wraps nothing new.
    DecryptOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// This keyring's own region: wraps and unwraps.
    Own,
    /// A peer region: wrap only.
    Peer,
}

/// One master key version.
pub struct MasterKey {
    pub region: String,
    pub version: u32,
    pub state: KeyState,
    pub key: Secret,
}

impl MasterKey {
    /// The id stored beside every key this master key wraps.
    pub fn key_id(&self) -> String {
        key_id(&self.region, self.version)
    }
}

pub fn key_id(region: &str, version: u32) -> String {
    format!("{region}/v{version}")
}

/// A loaded, checked keyring.
pub struct Keyring {
    owner: String,
    index_key: Secret,
    pepper: Secret,
    /// region → versions, ascending.
    regions: BTreeMap<String, (Role, Vec<MasterKey>)>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Keyring")
            .field("owner", &self.owner)
            .field("regions", &self.regions.keys().collect::<Vec<_>>())
            .finish()
    }
}

// The file format.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    format: u32,
    owner: String,
    index_key: String,
    pepper: String,
    regions: BTreeMap<String, RegionFile>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionFile {
    role: Role,
    keys: Vec<KeyFile>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    version: u32,
    state: KeyState,
    key: String,
}

fn decode_secret(text: &str, what: &str) -> Result<Secret, String> {
    let bytes = Zeroizing::new(
        B64.decode(text.trim())
            .map_err(|_| format!("{what}: not base64"))?,
    );
    if bytes.len() != 32 {
        return Err(format!("{what}: must be 32 bytes, found {}", bytes.len()));
    }
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&bytes);
    Ok(out)
}

impl Keyring {
    /// Reads and checks a keyring file, refusing one that others can read.
    pub fn load(path: &Path) -> Result<Keyring, KeyError> {
        check_permissions(path)?;
        let text =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|error| KeyError::Read {
                    path: path.to_path_buf(),
                    error,
                })?,
            );
        Keyring::parse(&text).map_err(|problem| KeyError::Parse {
            path: path.to_path_buf(),
            problem,
        })
    }

    pub fn parse(text: &str) -> Result<Keyring, String> {
        let file: KeyringFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if file.format != KEYRING_FORMAT {
            return Err(format!(
                "format: unsupported version {} (expected {KEYRING_FORMAT})",
                file.format
            ));
        }
        check_region_name(&file.owner).map_err(|p| format!("owner: {p}"))?;
        let index_key = decode_secret(&file.index_key, "index_key")?;
        let pepper = decode_secret(&file.pepper, "pepper")?;
        let mut regions = BTreeMap::new();
        for (name, region) in file.regions {
            check_region_name(&name).map_err(|p| format!("regions: {p}"))?;
            let expected_role = if name == file.owner {
                Role::Own
            } else {
                Role::Peer
            };
            if region.role != expected_role {
                return Err(format!(
                    "regions.{name}.role: must be {expected_role:?} for owner {}",
                    file.owner
                ));
            }
            let mut keys = Vec::new();
            for (i, k) in region.keys.iter().enumerate() {
                if k.version == 0 {
                    return Err(format!(
                        "regions.{name}.keys[{i}].version: must be at least 1"
                    ));
                }
                keys.push(MasterKey {
                    region: name.clone(),
                    version: k.version,
                    state: k.state,
                    key: decode_secret(&k.key, &format!("regions.{name}.keys[{i}].key"))?,
                });
            }
            keys.sort_by_key(|k| k.version);
            if keys.windows(2).any(|w| w[0].version == w[1].version) {
                return Err(format!("regions.{name}.keys: duplicate version"));
            }
            let active = keys.iter().filter(|k| k.state == KeyState::Active).count();
            if active != 1 {
                return Err(format!(
                    "regions.{name}.keys: exactly one active key is required, found {active}"
                ));
            }
            regions.insert(name, (region.role, keys));
        }
        if !regions.contains_key(&file.owner) {
            return Err(format!("regions: no keys for the owner {}", file.owner));
        }
        Ok(Keyring {
            owner: file.owner,
            index_key,
            pepper,
            regions,
        })
    }

    fn to_file(&self) -> KeyringFile {
        KeyringFile {
            format: KEYRING_FORMAT,
            owner: self.owner.clone(),
            index_key: B64.encode(self.index_key.as_ref()),
            pepper: B64.encode(self.pepper.as_ref()),
            regions: self
                .regions
                .iter()
                .map(|(name, (role, keys))| {
                    (
                        name.clone(),
                        RegionFile {
                            role: *role,
                            keys: keys
                                .iter()
                                .map(|k| KeyFile {
                                    version: k.version,
                                    state: k.state,
                                    key: B64.encode(k.key.as_ref()),
                                })
                                .collect(),
                        },
                    )
                })
                .collect(),
        }
    }

    /// Writes the keyring with mode 0600, replacing any file atomically.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let text = Zeroizing::new(
            serde_json::to_string_pretty(&self.to_file()).expect("keyring serialises"),
        );
        write_private(path, text.as_bytes()).map_err(|error| KeyError::Write {
            path: path.to_path_buf(),
            error,
        })
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn index_key(&self) -> &[u8; 32] {
        &self.index_key
    }

    pub fn pepper(&self) -> &[u8; 32] {
        &self.pepper
    }

    /// Every region this keyring can wrap for, in name order.
    pub fn regions(&self) -> impl Iterator<Item = &str> {
        self.regions.keys().map(String::as_str)
    }

    /// The key that wraps new data keys for `region`.
    pub fn active_key(&self, region: &str) -> Option<&MasterKey> {
        self.regions
            .get(region)
            .and_then(|(_, keys)| keys.iter().find(|k| k.state == KeyState::Active))
    }

    /// One of the owner's own keys by version, for unwrapping. Peer keys never unwrap.
    pub fn own_key(&self, version: u32) -> Option<&MasterKey> {
        self.regions
            .get(&self.owner)
            .and_then(|(_, keys)| keys.iter().find(|k| k.version == version))
    }

    /// Same index key and pepper: keyrings of one deployment.
    pub fn shares_secrets_with(&self, other: &Keyring) -> bool {
        crate::crypto::primitives::ct_eq(&self.index_key[..], &other.index_key[..])
            & crate::crypto::primitives::ct_eq(&self.pepper[..], &other.pepper[..])
    }

    /// Adds a new active version of the owner's master key; the previous one becomes
    /// decrypt-only. Returns the new version.
    pub fn rotate(&mut self) -> Result<u32, KeyError> {
        let key = random_secret()?;
        let owner = self.owner.clone();
        let (_, keys) = self
            .regions
            .get_mut(&owner)
            .expect("a parsed keyring has its owner's keys");
        for k in keys.iter_mut() {
            k.state = KeyState::DecryptOnly;
        }
        let version = keys.last().map(|k| k.version).unwrap_or(0) + 1;
        keys.push(MasterKey {
            region: owner,
            version,
            state: KeyState::Active,
            key,
        });
        Ok(version)
    }

    /// The owner's key versions, ascending, and which one is active.
    pub fn own_versions(&self) -> (Vec<u32>, u32) {
        let (_, keys) = &self.regions[&self.owner];
        let active = keys
            .iter()
            .find(|k| k.state == KeyState::Active)
            .map_or(0, |k| k.version);
        (keys.iter().map(|k| k.version).collect(), active)
    }

    /// Destroys a decrypt-only version of the owner's master key: whatever is still
    /// wrapped under it (in this store, in a backup, in Kafka) can no longer be opened
    /// here. The active version cannot be retired.
    pub fn retire(&mut self, version: u32) -> Result<(), KeyError> {
        let owner = self.owner.clone();
        let (_, keys) = self
            .regions
            .get_mut(&owner)
            .expect("a parsed keyring has its owner's keys");
        match keys.iter().position(|k| k.version == version) {
            None => Err(KeyError::Invalid(format!(
                "region {owner} has no master key v{version}"
            ))),
            Some(i) if keys[i].state == KeyState::Active => Err(KeyError::Invalid(format!(
                "{owner}/v{version} is the active key; rotate first"
            ))),
            Some(i) => {
                keys.remove(i);
                Ok(())
            }
        }
    }

    /// Takes `peer`'s current active key as this keyring's wrapping key for that region.
    pub fn set_peer_key(&mut self, peer: &Keyring) -> Result<(), KeyError> {
        let active = peer
            .active_key(peer.owner())
            .expect("a parsed keyring has an active own key");
        if peer.owner() == self.owner {
            return Err(KeyError::Invalid("a keyring is not its own peer".into()));
        }
        self.regions.insert(
            peer.owner().to_string(),
            (
                Role::Peer,
                vec![MasterKey {
                    region: peer.owner().to_string(),
                    version: active.version,
                    state: KeyState::Active,
                    key: active.key.clone(),
                }],
            ),
        );
        Ok(())
    }
}

/// The keyring file name for a region inside a keys directory.
pub fn keyring_path(dir: &Path, region: &str) -> PathBuf {
    dir.join(format!("keyring-{region}.json"))
}

/// Creates keyrings for a set of regions that share one index key and pepper; each
/// holds its own master key and every peer's wrapping key.
pub fn init(regions: &[String]) -> Result<Vec<Keyring>, KeyError> {
    if regions.is_empty() {
        return Err(KeyError::Invalid("at least one region is required".into()));
    }
    for r in regions {
        check_region_name(r).map_err(KeyError::Invalid)?;
    }
    let mut sorted = regions.to_vec();
    sorted.sort();
    sorted.dedup();
    if sorted.len() != regions.len() {
        return Err(KeyError::Invalid("region names must be unique".into()));
    }
    let index_key = random_secret()?;
    let pepper = random_secret()?;
    let mut masters = BTreeMap::new();
    for r in regions {
        masters.insert(r.clone(), random_secret()?);
    }
    Ok(regions
        .iter()
        .map(|owner| Keyring {
            owner: owner.clone(),
            index_key: index_key.clone(),
            pepper: pepper.clone(),
            regions: masters
                .iter()
                .map(|(region, key)| {
                    let role = if region == owner {
                        Role::Own
                    } else {
                        Role::Peer
                    };
                    (
                        region.clone(),
                        (
                            role,
                            vec![MasterKey {
                                region: region.clone(),
                                version: 1,
                                state: KeyState::Active,
                                key: key.clone(),
                            }],
                        ),
                    )
                })
                .collect(),
        })
        .collect())
}

/// Rotates `region`'s master key in `dir` and hands the new wrapping key to every
/// other keyring in the directory that lists the region as a peer.
pub fn rotate_in_dir(dir: &Path, region: &str) -> Result<u32, KeyError> {
    let (path, mut own) = load_own(dir, region)?;
    let version = own.rotate()?;
    own.save(&path)?;
    let entries = std::fs::read_dir(dir).map_err(|error| KeyError::Read {
        path: dir.to_path_buf(),
        error,
    })?;
    for entry in entries.flatten() {
        let p = entry.path();
        let is_keyring = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("keyring-") && n.ends_with(".json"));
        if !is_keyring || p == path {
            continue;
        }
        let mut peer = Keyring::load(&p)?;
        if peer.regions.contains_key(region) {
            peer.set_peer_key(&own)?;
            peer.save(&p)?;
        }
    }
    Ok(version)
}

/// `region`'s keyring in `dir`, and its path, checked to belong to the region.
pub fn load_own(dir: &Path, region: &str) -> Result<(PathBuf, Keyring), KeyError> {
    let path = keyring_path(dir, region);
    let own = Keyring::load(&path)?;
    if own.owner() != region {
        return Err(KeyError::WrongOwner {
            path,
            found: own.owner().to_string(),
            expected: region.to_string(),
        });
    }
    Ok((path, own))
}

fn check_permissions(path: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|error| KeyError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Writes a file readable only by its owner, through a temporary file and a rename so
/// a reader never sees half a keyring. The temporary file has a random name and is
/// created new (`O_EXCL`), never through a symlink (`O_NOFOLLOW`): nobody who can write
/// to the directory can make it write the keys elsewhere or read them as they go.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let suffix: [u8; 8] = crate::crypto::primitives::random()
        .map_err(|_| std::io::Error::other("no randomness for a temporary name"))?;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{}.tmp", hex::encode(suffix)));
    let tmp = path.with_file_name(name);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    // The rename itself made durable.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// How often the keyring file is checked for a new version (rotation). Default 5 s.
    pub reload_interval_ms: u64,
    /// How often the re-wrap task looks for records under an older master key. Default 10 s.
    pub rewrap_interval_ms: u64,
    /// Records re-wrapped per round at most. Default 500.
    pub rewrap_batch: usize,
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            reload_interval_ms: 5_000,
            rewrap_interval_ms: 10_000,
            rewrap_batch: 500,
        }
    }
}

impl KeysConfig {
    /// Checks the `[keys]` section.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.reload_interval_ms < 100 {
            return Err(invalid("keys.reload_interval_ms", "must be at least 100"));
        }
        if self.rewrap_interval_ms < 100 {
            return Err(invalid("keys.rewrap_interval_ms", "must be at least 100"));
        }
        if self.rewrap_batch == 0 {
            return Err(invalid("keys.rewrap_batch", "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regions() -> Vec<String> {
        vec!["af-south".into(), "eu-west".into(), "us-east".into()]
    }

    #[test]
    fn init_shares_index_key_and_pepper_but_not_master_keys() {
        let rings = init(&regions()).unwrap();
        assert_eq!(rings.len(), 3);
        assert!(rings[0].shares_secrets_with(&rings[1]));
        let a = rings[0].active_key("af-south").unwrap();
        let b = rings[1].active_key("af-south").unwrap();
        assert_eq!(
            a.key.as_ref(),
            b.key.as_ref(),
            "peers wrap with af-south's key"
        );
        assert!(rings[1].own_key(1).unwrap().region == "eu-west");
        assert_ne!(
            rings[0].own_key(1).unwrap().key.as_ref(),
            rings[1].own_key(1).unwrap().key.as_ref()
        );
    }

    /// The attack: someone who can write to the keyring's directory plants a symlink
    /// where the temporary file used to go, to have the keys written to a file of
    /// theirs.
    #[test]
    fn a_keyring_write_never_follows_a_planted_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keyring.json");
        let theirs = dir.path().join("theirs");
        std::fs::write(&theirs, b"untouched").unwrap();
        std::os::unix::fs::symlink(&theirs, path.with_extension("tmp")).unwrap();
        write_private(&path, b"secret keys").unwrap();
        assert_eq!(std::fs::read(&theirs).unwrap(), b"untouched");
        assert_eq!(std::fs::read(&path).unwrap(), b"secret keys");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temporary file is left beside it.
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains(".tmp") && n != "keyring.tmp")
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn save_load_round_trip_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let rings = init(&regions()).unwrap();
        let path = keyring_path(dir.path(), "eu-west");
        rings[1].save(&path).unwrap();
        let loaded = Keyring::load(&path).unwrap();
        assert_eq!(loaded.owner(), "eu-west");
        assert_eq!(loaded.regions().count(), 3);
        assert!(loaded.shares_secrets_with(&rings[1]));
    }

    #[test]
    fn readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = keyring_path(dir.path(), "eu-west");
        init(&regions()).unwrap()[1].save(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Keyring::load(&path).unwrap_err();
        assert!(matches!(err, KeyError::Permissions { .. }), "{err}");
    }

    #[test]
    fn rotation_keeps_old_versions_for_decryption_and_updates_peers() {
        let dir = tempfile::tempdir().unwrap();
        for ring in init(&regions()).unwrap() {
            ring.save(&keyring_path(dir.path(), ring.owner())).unwrap();
        }
        assert_eq!(rotate_in_dir(dir.path(), "eu-west").unwrap(), 2);
        let own = Keyring::load(&keyring_path(dir.path(), "eu-west")).unwrap();
        assert_eq!(own.active_key("eu-west").unwrap().version, 2);
        assert_eq!(own.own_key(1).unwrap().state, KeyState::DecryptOnly);
        let peer = Keyring::load(&keyring_path(dir.path(), "us-east")).unwrap();
        let wrap = peer.active_key("eu-west").unwrap();
        assert_eq!(wrap.version, 2);
        assert_eq!(wrap.key.as_ref(), own.own_key(2).unwrap().key.as_ref());
    }

    #[test]
    fn malformed_keyrings_name_the_problem() {
        let err = Keyring::parse("{\"format\": 1}").unwrap_err();
        assert!(err.contains("missing field"), "{err}");
        let ring = init(&regions()).unwrap().remove(0);
        let mut file = serde_json::to_value(ring.to_file()).unwrap();
        file["pepper"] = "c2hvcnQ=".into();
        let err = Keyring::parse(&file.to_string()).unwrap_err();
        assert!(err.contains("pepper: must be 32 bytes"), "{err}");
    }
}
