//! Keyrings: each region's master keys, its signing key, the blind-index key and the
//! password pepper.
//!
//! A keyring file belongs to one region (its `owner`). Format 2 holds:
//! - the owner's master keys, versioned: X25519 private keys. The `active` one's
//!   public key is what every region wraps data keys to for this region; older
//!   `decrypt_only` versions still unwrap what was wrapped to them;
//! - each peer region's active master *public* key, so a write here can wrap its data
//!   key for every region, and no region holds a secret that opens another's wraps;
//! - the owner's Ed25519 signing key, which signs every record, entry and user key this
//!   region writes and every request its anti-entropy makes, and each peer's signing
//!   public keys, which check theirs;
//! - the blind-index key and the password pepper, the same in every region so lookups
//!   and logins work everywhere.
//!
//! Format 1 (before signatures and public-key wraps) held every peer's AES-256-GCM
//! master key verbatim: one region's keyring opened every region's wraps. Such a
//! keyring still loads, as a legacy keyring that signs nothing, until `authsync keys
//! upgrade` turns a directory of them into format 2: the old AES keys stay as
//! decrypt-only versions of their own region (and leave the peers' files), key
//! recovery moves every wrap onto the new X25519 versions, and `authsync keys retire`
//! destroys the old ones. Until `authsync keys upgrade --finish`, a format 2 keyring
//! still accepts what legacy nodes send (`accept_legacy`).
//!
//! Files are JSON, written with mode 0600; a node refuses a keyring that other users
//! can read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::common::config::{invalid, Invalid};
use crate::common::region::check_region_name;

/// The format `init`, `rotate` and `upgrade` write.
pub const KEYRING_FORMAT: u32 = 2;
/// The format before public-key wraps and signatures; loaded as a legacy keyring.
pub const LEGACY_FORMAT: u32 = 1;

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
    /// Wraps new data keys (or signs). Exactly one per region.
    Active,
    /// Unwraps what it wrapped (or checks what it signed); wraps nothing new.
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

/// What kind of key a master key version is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    /// Format 1: an AES-256-GCM key, which wraps and unwraps alike.
    #[default]
    Aes256Gcm,
    /// An X25519 key pair: anyone with the public key wraps, only the private key
    /// unwraps (`crate::crypto::envelope`).
    X25519,
}

/// The key material of one master key version.
pub enum Material {
    /// A format 1 AES-256-GCM key: the owner's own, or (in a legacy keyring only) a
    /// peer's, held verbatim.
    Symmetric(Secret),
    /// The owner's X25519 private key, and its public key.
    Private(x25519_dalek::StaticSecret, [u8; 32]),
    /// A peer's X25519 public key: wraps to it, opens nothing.
    Public([u8; 32]),
}

impl Material {
    /// The X25519 public key data keys are wrapped to, if this is an X25519 key.
    pub fn public(&self) -> Option<&[u8; 32]> {
        match self {
            Material::Private(_, public) | Material::Public(public) => Some(public),
            Material::Symmetric(_) => None,
        }
    }
}

/// One master key version.
pub struct MasterKey {
    pub region: String,
    pub version: u32,
    pub state: KeyState,
    pub material: Material,
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

/// The id a signature names its key by: `region/sN`.
pub fn signing_key_id(region: &str, version: u32) -> String {
    format!("{region}/s{version}")
}

/// One version of a region's Ed25519 signing key: the seed for the owner's own.
pub struct SigningKey {
    pub version: u32,
    pub state: KeyState,
    pub public: [u8; 32],
    seed: Option<Secret>,
}

/// The owner's active signing key, ready to sign.
pub struct Signer {
    pub key_id: String,
    pub pair: Ed25519KeyPair,
}

/// The keyring a node runs with, swapped whole when the file is reloaded: readers take
/// the current `Arc` and keep a consistent keyring for as long as they hold it.
pub type SharedKeyring = std::sync::Arc<parking_lot::RwLock<std::sync::Arc<Keyring>>>;

/// A loaded, checked keyring.
pub struct Keyring {
    format: u32,
    owner: String,
    index_key: Secret,
    pepper: Secret,
    accept_legacy: bool,
    /// Set by `keys upgrade --finish`: unsigned messages written before it (by their
    /// version) are still taken from peers, so that what the regions wrote under
    /// format 1 keeps replicating to a node that catches up later.
    legacy_before_ms: u64,
    /// region → versions, ascending.
    regions: BTreeMap<String, (Role, Vec<MasterKey>)>,
    /// region → signing key versions, ascending (empty in a legacy keyring).
    signing: BTreeMap<String, Vec<SigningKey>>,
    signer: Option<Signer>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("Keyring")
            .field("format", &self.format)
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
    /// Format 2 only: events from nodes that still run format 1 keyrings (unsigned,
    /// checked by the shared MAC alone) are accepted. Set by `keys upgrade`, cleared by
    /// `keys upgrade --finish`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    accept_legacy: bool,
    /// Format 2 only, set by `keys upgrade --finish` (unix ms): unsigned events written
    /// before it are still accepted from peers (they were written under format 1).
    #[serde(default, skip_serializing_if = "is_zero")]
    legacy_before_ms: u64,
    regions: BTreeMap<String, RegionFile>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionFile {
    role: Role,
    keys: Vec<KeyFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    signing: Vec<SigningFile>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    version: u32,
    state: KeyState,
    #[serde(default)]
    kind: KeyKind,
    /// The secret: an AES key, or an X25519 private key (own keys only in format 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    /// A peer's X25519 public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    public: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SigningFile {
    version: u32,
    state: KeyState,
    /// The owner's Ed25519 seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seed: Option<String>,
    public: String,
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

fn decode_public(text: &str, what: &str) -> Result<[u8; 32], String> {
    Ok(*decode_secret(text, what)?)
}

fn x25519_private(secret: &Secret) -> Material {
    let private = x25519_dalek::StaticSecret::from(**secret);
    let public = x25519_dalek::PublicKey::from(&private).to_bytes();
    Material::Private(private, public)
}

fn ed25519_public(seed: &Secret) -> Result<[u8; 32], String> {
    let pair = Ed25519KeyPair::from_seed_unchecked(seed.as_ref())
        .map_err(|_| "signing seed: not an Ed25519 seed".to_string())?;
    pair.public_key()
        .as_ref()
        .try_into()
        .map_err(|_| "signing seed: unexpected public key length".to_string())
}

fn parse_key(
    format: u32,
    region: &str,
    role: Role,
    i: usize,
    k: &KeyFile,
) -> Result<MasterKey, String> {
    let at = format!("regions.{region}.keys[{i}]");
    if k.version == 0 {
        return Err(format!("{at}.version: must be at least 1"));
    }
    let material = match (k.kind, role, &k.key, &k.public) {
        (KeyKind::Aes256Gcm, Role::Peer, Some(_), _) if format >= KEYRING_FORMAT => {
            return Err(format!(
                "{at}: a format {format} keyring holds a peer's public key only, never its \
                 secret"
            ))
        }
        (KeyKind::Aes256Gcm, _, Some(key), None) => {
            Material::Symmetric(decode_secret(key, &format!("{at}.key"))?)
        }
        (KeyKind::X25519, _, _, _) if format < KEYRING_FORMAT => {
            return Err(format!(
                "{at}.kind: x25519 keys need format {KEYRING_FORMAT}"
            ))
        }
        (KeyKind::X25519, Role::Own, Some(key), None) => {
            x25519_private(&decode_secret(key, &format!("{at}.key"))?)
        }
        (KeyKind::X25519, Role::Peer, None, Some(public)) => {
            Material::Public(decode_public(public, &format!("{at}.public"))?)
        }
        (KeyKind::Aes256Gcm, _, _, _) => return Err(format!("{at}: an AES key needs `key` only")),
        (KeyKind::X25519, Role::Own, _, _) => {
            return Err(format!("{at}: the owner's X25519 key needs `key` only"))
        }
        (KeyKind::X25519, Role::Peer, _, _) => {
            return Err(format!("{at}: a peer's X25519 key needs `public` only"))
        }
    };
    Ok(MasterKey {
        region: region.to_string(),
        version: k.version,
        state: k.state,
        material,
    })
}

fn parse_signing(
    region: &str,
    role: Role,
    i: usize,
    s: &SigningFile,
) -> Result<SigningKey, String> {
    let at = format!("regions.{region}.signing[{i}]");
    if s.version == 0 {
        return Err(format!("{at}.version: must be at least 1"));
    }
    let public = decode_public(&s.public, &format!("{at}.public"))?;
    let seed = match (role, &s.seed) {
        (Role::Own, Some(seed)) => {
            let seed = decode_secret(seed, &format!("{at}.seed"))?;
            if ed25519_public(&seed)? != public {
                return Err(format!("{at}.public: does not match the seed"));
            }
            Some(seed)
        }
        (Role::Own, None) => return Err(format!("{at}.seed: the owner's signing key needs it")),
        (Role::Peer, Some(_)) => {
            return Err(format!(
                "{at}.seed: a peer's signing key is its public key only"
            ))
        }
        (Role::Peer, None) => None,
    };
    Ok(SigningKey {
        version: s.version,
        state: s.state,
        public,
        seed,
    })
}

fn check_versions<T>(
    what: &str,
    keys: &mut [T],
    version: impl Fn(&T) -> u32,
    active: impl Fn(&T) -> bool,
) -> Result<(), String> {
    keys.sort_by_key(&version);
    if keys.windows(2).any(|w| version(&w[0]) == version(&w[1])) {
        return Err(format!("{what}: duplicate version"));
    }
    let n = keys.iter().filter(|k| active(k)).count();
    if n != 1 {
        return Err(format!(
            "{what}: exactly one active key is required, found {n}"
        ));
    }
    Ok(())
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
        let format = file.format;
        if format != KEYRING_FORMAT && format != LEGACY_FORMAT {
            return Err(format!(
                "format: unsupported version {format} (expected {KEYRING_FORMAT}, or \
                 {LEGACY_FORMAT} before `authsync keys upgrade`)"
            ));
        }
        if format == LEGACY_FORMAT && file.accept_legacy {
            return Err("accept_legacy: only a format 2 keyring has it".into());
        }
        if format == LEGACY_FORMAT && file.legacy_before_ms != 0 {
            return Err("legacy_before_ms: only a format 2 keyring has it".into());
        }
        check_region_name(&file.owner).map_err(|p| format!("owner: {p}"))?;
        let index_key = decode_secret(&file.index_key, "index_key")?;
        let pepper = decode_secret(&file.pepper, "pepper")?;
        let mut regions = BTreeMap::new();
        let mut signing = BTreeMap::new();
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
            let mut keys = region
                .keys
                .iter()
                .enumerate()
                .map(|(i, k)| parse_key(format, &name, region.role, i, k))
                .collect::<Result<Vec<_>, _>>()?;
            check_versions(
                &format!("regions.{name}.keys"),
                &mut keys,
                |k| k.version,
                |k| k.state == KeyState::Active,
            )?;
            if format == KEYRING_FORMAT {
                let active = keys.iter().find(|k| k.state == KeyState::Active);
                if active.is_some_and(|k| k.material.public().is_none()) {
                    return Err(format!(
                        "regions.{name}.keys: the active key of a format 2 keyring is X25519"
                    ));
                }
                let mut versions = region
                    .signing
                    .iter()
                    .enumerate()
                    .map(|(i, s)| parse_signing(&name, region.role, i, s))
                    .collect::<Result<Vec<_>, _>>()?;
                check_versions(
                    &format!("regions.{name}.signing"),
                    &mut versions,
                    |s| s.version,
                    |s| s.state == KeyState::Active,
                )?;
                signing.insert(name.clone(), versions);
            } else if !region.signing.is_empty() {
                return Err(format!(
                    "regions.{name}.signing: a format 1 keyring has no signing keys"
                ));
            }
            regions.insert(name, (region.role, keys));
        }
        if !regions.contains_key(&file.owner) {
            return Err(format!("regions: no keys for the owner {}", file.owner));
        }
        let signer = match signing.get(&file.owner) {
            None => None,
            Some(versions) => {
                let active = versions
                    .iter()
                    .find(|s| s.state == KeyState::Active)
                    .expect("checked: one active signing key");
                let seed = active.seed.as_ref().expect("checked: own keys have seeds");
                Some(Signer {
                    key_id: signing_key_id(&file.owner, active.version),
                    pair: Ed25519KeyPair::from_seed_unchecked(seed.as_ref())
                        .map_err(|_| "signing seed: not an Ed25519 seed".to_string())?,
                })
            }
        };
        Ok(Keyring {
            format,
            owner: file.owner,
            index_key,
            pepper,
            accept_legacy: file.accept_legacy,
            legacy_before_ms: file.legacy_before_ms,
            regions,
            signing,
            signer,
        })
    }

    fn to_file(&self) -> KeyringFile {
        KeyringFile {
            format: self.format,
            owner: self.owner.clone(),
            index_key: B64.encode(self.index_key.as_ref()),
            pepper: B64.encode(self.pepper.as_ref()),
            accept_legacy: self.accept_legacy,
            legacy_before_ms: self.legacy_before_ms,
            regions: self
                .regions
                .iter()
                .map(|(name, (role, keys))| {
                    let key_file = |k: &MasterKey| {
                        let (kind, key, public) = match &k.material {
                            Material::Symmetric(key) => {
                                (KeyKind::Aes256Gcm, Some(B64.encode(key.as_ref())), None)
                            }
                            Material::Private(private, _) => {
                                (KeyKind::X25519, Some(B64.encode(private.as_bytes())), None)
                            }
                            Material::Public(public) => {
                                (KeyKind::X25519, None, Some(B64.encode(public)))
                            }
                        };
                        KeyFile {
                            version: k.version,
                            state: k.state,
                            kind,
                            key,
                            public,
                        }
                    };
                    let signing = self
                        .signing
                        .get(name)
                        .map(|versions| {
                            versions
                                .iter()
                                .map(|s| SigningFile {
                                    version: s.version,
                                    state: s.state,
                                    seed: s.seed.as_ref().map(|seed| B64.encode(seed.as_ref())),
                                    public: B64.encode(s.public),
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    (
                        name.clone(),
                        RegionFile {
                            role: *role,
                            keys: keys.iter().map(key_file).collect(),
                            signing,
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

    /// The file format: [`KEYRING_FORMAT`], or [`LEGACY_FORMAT`] before an upgrade.
    pub fn format(&self) -> u32 {
        self.format
    }

    /// Whether what a format 1 node sends (unsigned, checked by the shared MAC only) is
    /// accepted: always by a legacy keyring, by a format 2 one until the upgrade is
    /// finished.
    pub fn accepts_legacy(&self) -> bool {
        self.format == LEGACY_FORMAT || self.accept_legacy
    }

    /// Whether an unsigned message written at `written_ms` (its version's time) is
    /// taken from a peer: while [`Keyring::accepts_legacy`], or when it was written
    /// before the upgrade was finished.
    pub fn accepts_unsigned_from(&self, written_ms: Option<u64>) -> bool {
        self.accepts_legacy() || written_ms.is_some_and(|ms| ms < self.legacy_before_ms)
    }

    /// When `keys upgrade --finish` ended the upgrade's window (0 before it).
    pub fn legacy_before_ms(&self) -> u64 {
        self.legacy_before_ms
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

    /// The owner's active signing key; `None` in a legacy keyring, which signs nothing.
    pub fn signer(&self) -> Option<&Signer> {
        self.signer.as_ref()
    }

    /// The Ed25519 public key `key_id` names, if it is one of `region`'s: a signature
    /// is checked only against the key of the region it claims to come from.
    pub fn verifying_key(&self, region: &str, key_id: &str) -> Option<&[u8; 32]> {
        self.signing
            .get(region)?
            .iter()
            .find(|s| signing_key_id(region, s.version) == key_id)
            .map(|s| &s.public)
    }

    /// Same index key and pepper: keyrings of one deployment.
    pub fn shares_secrets_with(&self, other: &Keyring) -> bool {
        crate::crypto::primitives::ct_eq(&self.index_key[..], &other.index_key[..])
            & crate::crypto::primitives::ct_eq(&self.pepper[..], &other.pepper[..])
    }

    fn own_keys_mut(&mut self) -> &mut Vec<MasterKey> {
        let owner = self.owner.clone();
        &mut self
            .regions
            .get_mut(&owner)
            .expect("a parsed keyring has its owner's keys")
            .1
    }

    /// Adds a new active version of the owner's master key; the previous one becomes
    /// decrypt-only. Returns the new version.
    pub fn rotate(&mut self) -> Result<u32, KeyError> {
        if self.format == LEGACY_FORMAT {
            return Err(KeyError::Invalid(format!(
                "the keyring of {} is format 1: run `authsync keys upgrade` on its directory \
                 first",
                self.owner
            )));
        }
        let material = x25519_private(&random_secret()?);
        let owner = self.owner.clone();
        let keys = self.own_keys_mut();
        for k in keys.iter_mut() {
            k.state = KeyState::DecryptOnly;
        }
        let version = keys.last().map(|k| k.version).unwrap_or(0) + 1;
        keys.push(MasterKey {
            region: owner,
            version,
            state: KeyState::Active,
            material,
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
        let keys = self.own_keys_mut();
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

    /// Takes `peer`'s current active master public key as this keyring's wrapping key
    /// for that region, and its signing public keys.
    pub fn set_peer_key(&mut self, peer: &Keyring) -> Result<(), KeyError> {
        if peer.owner() == self.owner {
            return Err(KeyError::Invalid("a keyring is not its own peer".into()));
        }
        let active = peer
            .active_key(peer.owner())
            .expect("a parsed keyring has an active own key");
        let (Some(public), KEYRING_FORMAT) = (active.material.public(), self.format) else {
            return Err(KeyError::Invalid(format!(
                "keyrings of {} and {}: run `authsync keys upgrade` on their directory first",
                self.owner,
                peer.owner()
            )));
        };
        self.regions.insert(
            peer.owner().to_string(),
            (
                Role::Peer,
                vec![MasterKey {
                    region: peer.owner().to_string(),
                    version: active.version,
                    state: KeyState::Active,
                    material: Material::Public(*public),
                }],
            ),
        );
        let signing = peer.signing.get(peer.owner()).map(|versions| {
            versions
                .iter()
                .map(|s| SigningKey {
                    version: s.version,
                    state: s.state,
                    public: s.public,
                    seed: None,
                })
                .collect()
        });
        self.signing
            .insert(peer.owner().to_string(), signing.unwrap_or_default());
        Ok(())
    }

    /// Turns a format 1 keyring into format 2 with `master` (a fresh X25519 key) as its
    /// new active master key and `seed` as its signing key. Every old own key stays,
    /// decrypt-only; peers' keys are dropped here and set from their upgraded keyrings
    /// by [`upgrade_in_dir`].
    fn upgraded(&self, master: &Secret, seed: &Secret) -> Result<Keyring, String> {
        let mut own: Vec<MasterKey> = self.regions[&self.owner]
            .1
            .iter()
            .map(|k| MasterKey {
                region: k.region.clone(),
                version: k.version,
                state: KeyState::DecryptOnly,
                material: match &k.material {
                    Material::Symmetric(key) => Material::Symmetric(key.clone()),
                    Material::Private(private, public) => {
                        Material::Private(private.clone(), *public)
                    }
                    Material::Public(public) => Material::Public(*public),
                },
            })
            .collect();
        let version = own.last().map(|k| k.version).unwrap_or(0) + 1;
        own.push(MasterKey {
            region: self.owner.clone(),
            version,
            state: KeyState::Active,
            material: x25519_private(master),
        });
        let public = ed25519_public(seed)?;
        Ok(Keyring {
            format: KEYRING_FORMAT,
            owner: self.owner.clone(),
            index_key: self.index_key.clone(),
            pepper: self.pepper.clone(),
            accept_legacy: true,
            legacy_before_ms: 0,
            regions: BTreeMap::from([(self.owner.clone(), (Role::Own, own))]),
            signing: BTreeMap::from([(
                self.owner.clone(),
                vec![SigningKey {
                    version: 1,
                    state: KeyState::Active,
                    public,
                    seed: Some(seed.clone()),
                }],
            )]),
            signer: Some(Signer {
                key_id: signing_key_id(&self.owner, 1),
                pair: Ed25519KeyPair::from_seed_unchecked(seed.as_ref())
                    .map_err(|_| "signing seed: not an Ed25519 seed".to_string())?,
            }),
        })
    }
}

fn is_zero(ms: &u64) -> bool {
    *ms == 0
}

/// The keyring file name for a region inside a keys directory.
pub fn keyring_path(dir: &Path, region: &str) -> PathBuf {
    dir.join(format!("keyring-{region}.json"))
}

/// A format 2 keyring of `owner` holding only its own keys: `master` (X25519) as v1
/// and `seed` as its signing key.
fn fresh(owner: &str, index_key: &Secret, pepper: &Secret) -> Result<Keyring, KeyError> {
    let legacy = Keyring {
        format: LEGACY_FORMAT,
        owner: owner.to_string(),
        index_key: index_key.clone(),
        pepper: pepper.clone(),
        accept_legacy: false,
        legacy_before_ms: 0,
        regions: BTreeMap::from([(owner.to_string(), (Role::Own, Vec::new()))]),
        signing: BTreeMap::new(),
        signer: None,
    };
    let mut ring = legacy
        .upgraded(&random_secret()?, &random_secret()?)
        .map_err(KeyError::Invalid)?;
    ring.accept_legacy = false;
    Ok(ring)
}

/// Creates keyrings for a set of regions that share one index key and pepper; each
/// holds its own master and signing keys and every peer's public keys.
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
    let mut rings = regions
        .iter()
        .map(|r| fresh(r, &index_key, &pepper))
        .collect::<Result<Vec<_>, _>>()?;
    introduce(&mut rings)?;
    Ok(rings)
}

/// Gives every keyring in `rings` every other's public keys.
fn introduce(rings: &mut [Keyring]) -> Result<(), KeyError> {
    for i in 0..rings.len() {
        for j in 0..rings.len() {
            if i != j {
                let (a, b) = if i < j {
                    let (left, right) = rings.split_at_mut(j);
                    (&mut left[i], &right[0])
                } else {
                    let (left, right) = rings.split_at_mut(i);
                    (&mut right[0], &left[j])
                };
                a.set_peer_key(b)?;
            }
        }
    }
    Ok(())
}

/// Every `keyring-*.json` in `dir`, with its path.
fn keyrings_in(dir: &Path) -> Result<Vec<(PathBuf, Keyring)>, KeyError> {
    let entries = std::fs::read_dir(dir).map_err(|error| KeyError::Read {
        path: dir.to_path_buf(),
        error,
    })?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let p = entry.path();
        let is_keyring = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("keyring-") && n.ends_with(".json"));
        if is_keyring {
            let ring = Keyring::load(&p)?;
            out.push((p, ring));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Rotates `region`'s master key in `dir` and hands the new wrapping key to every
/// other keyring in the directory that lists the region as a peer.
pub fn rotate_in_dir(dir: &Path, region: &str) -> Result<u32, KeyError> {
    let (path, mut own) = load_own(dir, region)?;
    let version = own.rotate()?;
    own.save(&path)?;
    for (p, mut peer) in keyrings_in(dir)? {
        if p != path && peer.regions.contains_key(region) {
            peer.set_peer_key(&own)?;
            peer.save(&p)?;
        }
    }
    Ok(version)
}

/// What `authsync keys upgrade` did to one region's keyring.
#[derive(Debug, PartialEq, Eq)]
pub struct Upgraded {
    pub region: String,
    /// The new active (X25519) master key version.
    pub active: u32,
    /// The old versions, now decrypt-only until retired.
    pub legacy: Vec<u32>,
}

/// Upgrades every format 1 keyring in `dir` to format 2 at once: each region gets an
/// X25519 master key (a new active version; its old AES versions stay, decrypt-only,
/// until key recovery has moved every wrap and `keys retire` destroys them) and an
/// Ed25519 signing key, and keeps only its peers' public keys. The keyrings accept
/// legacy events until [`finish_upgrade_in_dir`]. Every region a keyring names must
/// have its keyring in `dir`, as `keys init` left them.
pub fn upgrade_in_dir(dir: &Path) -> Result<Vec<Upgraded>, KeyError> {
    let found = keyrings_in(dir)?;
    if found.is_empty() {
        return Err(KeyError::Invalid(format!(
            "no keyring-*.json in {}",
            dir.display()
        )));
    }
    if found.iter().all(|(_, r)| r.format == KEYRING_FORMAT) {
        return Ok(Vec::new());
    }
    if let Some((p, _)) = found.iter().find(|(_, r)| r.format == KEYRING_FORMAT) {
        return Err(KeyError::Invalid(format!(
            "{} is already format 2 while others are not: upgrade a directory of format 1 \
             keyrings together",
            p.display()
        )));
    }
    let owners: Vec<&str> = found.iter().map(|(_, r)| r.owner()).collect();
    for (p, ring) in &found {
        if let Some(missing) = ring.regions().find(|r| !owners.contains(r)) {
            return Err(KeyError::Invalid(format!(
                "{} names region {missing}, whose keyring is not in {}: every region's \
                 keyring must be upgraded together",
                p.display(),
                dir.display()
            )));
        }
        if !ring.shares_secrets_with(&found[0].1) {
            return Err(KeyError::Invalid(format!(
                "{} is from another deployment (its index key or pepper differs)",
                p.display()
            )));
        }
    }
    let mut upgraded = Vec::with_capacity(found.len());
    let mut report = Vec::with_capacity(found.len());
    for (_, ring) in &found {
        let next = ring
            .upgraded(&random_secret()?, &random_secret()?)
            .map_err(KeyError::Invalid)?;
        let (versions, active) = next.own_versions();
        report.push(Upgraded {
            region: ring.owner().to_string(),
            active,
            legacy: versions.into_iter().filter(|v| *v != active).collect(),
        });
        upgraded.push(next);
    }
    introduce(&mut upgraded)?;
    for ((path, _), ring) in found.iter().zip(&upgraded) {
        ring.save(path)?;
    }
    Ok(report)
}

/// Ends the upgrade's window: the keyrings in `dir` stop accepting unsigned events.
/// Run it once every node runs its format 2 keyring. Returns the regions changed.
pub fn finish_upgrade_in_dir(dir: &Path) -> Result<Vec<String>, KeyError> {
    let found = keyrings_in(dir)?;
    if let Some((p, _)) = found.iter().find(|(_, r)| r.format != KEYRING_FORMAT) {
        return Err(KeyError::Invalid(format!(
            "{} is still format 1: run `authsync keys upgrade` first",
            p.display()
        )));
    }
    let mut changed = Vec::new();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    for (path, mut ring) in found {
        if ring.accept_legacy {
            ring.accept_legacy = false;
            ring.legacy_before_ms = now_ms;
            ring.save(&path)?;
            changed.push(ring.owner().to_string());
        }
    }
    Ok(changed)
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

/// One deployment's keyrings (af-south, eu-west, us-east) for other modules' unit
/// tests, made once per process: what one region signs, the others verify.
#[cfg(test)]
pub(crate) fn test_keyring(region: &str) -> SharedKeyring {
    use std::sync::OnceLock;
    static FILES: OnceLock<BTreeMap<String, String>> = OnceLock::new();
    let files = FILES.get_or_init(|| {
        init(&["af-south".into(), "eu-west".into(), "us-east".into()])
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.owner().to_string(),
                    serde_json::to_string(&r.to_file()).unwrap(),
                )
            })
            .collect()
    });
    let ring = Keyring::parse(&files[region]).unwrap();
    std::sync::Arc::new(parking_lot::RwLock::new(std::sync::Arc::new(ring)))
}

/// Keyrings as format 1 made them (every region's AES master key in every keyring, no
/// signing keys): what `authsync keys upgrade` starts from, kept so the upgrade can be
/// tested against the real thing.
pub fn init_legacy(regions: &[String]) -> Result<Vec<Keyring>, KeyError> {
    let index_key = random_secret()?;
    let pepper = random_secret()?;
    let mut masters = BTreeMap::new();
    for r in regions {
        check_region_name(r).map_err(KeyError::Invalid)?;
        masters.insert(r.clone(), random_secret()?);
    }
    Ok(regions
        .iter()
        .map(|owner| Keyring {
            format: LEGACY_FORMAT,
            owner: owner.clone(),
            index_key: index_key.clone(),
            pepper: pepper.clone(),
            accept_legacy: false,
            legacy_before_ms: 0,
            regions: masters
                .iter()
                .map(|(region, key)| {
                    let role = if region == owner {
                        Role::Own
                    } else {
                        Role::Peer
                    };
                    let key = MasterKey {
                        region: region.clone(),
                        version: 1,
                        state: KeyState::Active,
                        material: Material::Symmetric(key.clone()),
                    };
                    (region.clone(), (role, vec![key]))
                })
                .collect(),
            signing: BTreeMap::new(),
            signer: None,
        })
        .collect())
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

    fn secret_of(key: &MasterKey) -> Option<Vec<u8>> {
        match &key.material {
            Material::Symmetric(k) => Some(k.to_vec()),
            Material::Private(p, _) => Some(p.as_bytes().to_vec()),
            Material::Public(_) => None,
        }
    }

    /// What makes "wrapped for region R" mean "only R can open it": no keyring holds
    /// another region's secret, only its public keys.
    #[test]
    fn init_shares_index_key_and_pepper_and_only_public_keys_of_peers() {
        let rings = init(&regions()).unwrap();
        assert_eq!(rings.len(), 3);
        assert!(rings[0].shares_secrets_with(&rings[1]));
        for ring in &rings {
            assert_eq!(ring.format(), KEYRING_FORMAT);
            assert!(!ring.accepts_legacy());
            for peer in rings.iter().filter(|p| p.owner() != ring.owner()) {
                let held = ring.active_key(peer.owner()).unwrap();
                assert!(secret_of(held).is_none(), "{} holds a secret", ring.owner());
                let theirs = peer.active_key(peer.owner()).unwrap();
                assert_eq!(held.material.public(), theirs.material.public());
                let signer = peer.signer().unwrap();
                assert_eq!(
                    ring.verifying_key(peer.owner(), &signer.key_id).unwrap()[..],
                    *signer.pair.public_key().as_ref()
                );
                // A key is looked up only under the region it belongs to.
                assert!(ring.verifying_key(ring.owner(), &signer.key_id).is_none());
            }
            // Nothing in the file a peer could open with.
            let text = serde_json::to_string(&ring.to_file()).unwrap();
            for peer in rings.iter().filter(|p| p.owner() != ring.owner()) {
                let secret = secret_of(peer.own_key(1).unwrap()).unwrap();
                assert!(!text.contains(&B64.encode(&secret)));
            }
        }
        assert_ne!(
            secret_of(rings[0].own_key(1).unwrap()),
            secret_of(rings[1].own_key(1).unwrap())
        );
    }

    /// A format 2 file that holds a peer's secret (format 1's way) is refused: a
    /// keyring copied from one region to another cannot quietly open its wraps.
    #[test]
    fn a_format_2_keyring_with_a_peers_secret_is_refused() {
        let ring = init(&regions()).unwrap().remove(0);
        let mut file = serde_json::to_value(ring.to_file()).unwrap();
        file["regions"]["eu-west"]["keys"][0] = serde_json::json!({
            "version": 1, "state": "active", "kind": "aes256_gcm",
            "key": B64.encode([7u8; 32]),
        });
        let err = Keyring::parse(&file.to_string()).unwrap_err();
        assert!(err.contains("public key only"), "{err}");
        let mut file = serde_json::to_value(ring.to_file()).unwrap();
        file["regions"]["eu-west"]["signing"][0]["seed"] = B64.encode([7u8; 32]).into();
        let err = Keyring::parse(&file.to_string()).unwrap_err();
        assert!(err.contains("public key only"), "{err}");
    }

    #[test]
    fn upgrade_moves_a_directory_of_format_1_keyrings_to_public_keys() {
        let dir = tempfile::tempdir().unwrap();
        let old = init_legacy(&regions()).unwrap();
        for ring in &old {
            ring.save(&keyring_path(dir.path(), ring.owner())).unwrap();
        }
        let text = std::fs::read_to_string(keyring_path(dir.path(), "af-south")).unwrap();
        let loaded = Keyring::parse(&text).unwrap();
        assert_eq!(loaded.format(), LEGACY_FORMAT);
        assert!(loaded.signer().is_none() && loaded.accepts_legacy());
        // A legacy keyring is upgraded, never rotated on its own.
        assert!(rotate_in_dir(dir.path(), "af-south").is_err());

        let report = upgrade_in_dir(dir.path()).unwrap();
        assert_eq!(report.len(), 3);
        assert!(report.iter().all(|u| u.active == 2 && u.legacy == vec![1]));
        let new: Vec<Keyring> = regions()
            .iter()
            .map(|r| load_own(dir.path(), r).unwrap().1)
            .collect();
        for (before, after) in old.iter().zip(&new) {
            assert_eq!(after.format(), KEYRING_FORMAT);
            assert!(after.accepts_legacy(), "until --finish");
            assert!(after.shares_secrets_with(before));
            // The old AES key still opens what it wrapped; it wraps nothing new.
            let v1 = after.own_key(1).unwrap();
            assert_eq!(v1.state, KeyState::DecryptOnly);
            assert_eq!(secret_of(v1), secret_of(before.own_key(1).unwrap()));
            assert!(after
                .active_key(after.owner())
                .unwrap()
                .material
                .public()
                .is_some());
            for peer in new.iter().filter(|p| p.owner() != after.owner()) {
                let held = after.active_key(peer.owner()).unwrap();
                assert_eq!(held.version, 2);
                assert!(secret_of(held).is_none());
            }
        }
        // Twice is harmless; --finish closes the window.
        assert!(upgrade_in_dir(dir.path()).unwrap().is_empty());
        assert_eq!(finish_upgrade_in_dir(dir.path()).unwrap().len(), 3);
        let done = load_own(dir.path(), "eu-west").unwrap().1;
        assert!(!done.accepts_legacy());
        assert_eq!(rotate_in_dir(dir.path(), "eu-west").unwrap(), 3);
    }

    /// An upgrade with a region's keyring missing would leave its peers unable to wrap
    /// for it: refused, and nothing changes.
    #[test]
    fn an_upgrade_without_every_regions_keyring_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        for ring in init_legacy(&regions()).unwrap().iter().take(2) {
            ring.save(&keyring_path(dir.path(), ring.owner())).unwrap();
        }
        let before = std::fs::read(keyring_path(dir.path(), "af-south")).unwrap();
        let err = upgrade_in_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("us-east"), "{err}");
        assert_eq!(
            std::fs::read(keyring_path(dir.path(), "af-south")).unwrap(),
            before
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
        assert_eq!(
            wrap.material.public(),
            own.own_key(2).unwrap().material.public()
        );
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
