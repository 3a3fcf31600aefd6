//! The API keys a node accepts, and what each may do.
//!
//! Keys come from two places. The `[[api_keys]]` of the config are there from the start.
//! Keys added at runtime (`POST /v1/admin/api-keys`, `authsync api-keys add`) are
//! replicated [`crate::accounts::entries`]. A revocation is an entry too, for a key of either
//! kind, so a revoked key stops working in every region without a restart, and stays
//! revoked across restarts even when it is still in a config.
//!
//! Only SHA-256 hashes of keys are held. A key's public id is the first 8 bytes of its
//! hash, in hex.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::accounts::entries::Entries;
use crate::accounts::error::UserError;
use crate::common::config::{invalid, Invalid};
use crate::crypto::primitives::{random, sha256, CryptoError};
use crate::proto::{self, EntryKind};

/// What a key may do. `/v1/admin/*` needs `admin`; reads, lookups and logins need
/// `read`; every other change needs `write`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Write, Scope::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.name() == name)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    pub fn all() -> Scopes {
        Scopes(Scope::ALL.iter().fold(0, |b, s| b | s.bit()))
    }

    pub fn contains(self, s: Scope) -> bool {
        self.0 & s.bit() != 0
    }

    pub fn list(self) -> Vec<Scope> {
        Scope::ALL
            .into_iter()
            .filter(|s| self.contains(*s))
            .collect()
    }

    /// Scope names, each known and none repeated, at least one.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Scopes, String> {
        let mut bits = 0;
        for n in names {
            let s = Scope::parse(n.as_ref().trim()).ok_or_else(|| {
                format!(
                    "unknown scope {:?} (read, write, admin)",
                    n.as_ref().chars().take(32).collect::<String>()
                )
            })?;
            bits |= s.bit();
        }
        if bits == 0 {
            return Err("at least one scope is required (read, write, admin)".into());
        }
        Ok(Scopes(bits))
    }

    fn names(self) -> Vec<String> {
        self.list().iter().map(|s| s.name().to_string()).collect()
    }
}

/// One key as `GET /v1/admin/api-keys` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub name: String,
    pub scopes: Vec<Scope>,
    /// `config` or `runtime`.
    pub source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at_ms: Option<u64>,
}

#[derive(Debug, Clone)]
struct Key {
    name: String,
    scopes: Scopes,
    from_config: bool,
    created_at_ms: Option<u64>,
    revoked_at_ms: Option<u64>,
}

pub fn key_id(hash: &[u8; 32]) -> String {
    hex::encode(&hash[..8])
}

pub fn hash_key(key: &str) -> [u8; 32] {
    sha256(key.as_bytes())
}

pub struct ApiKeys {
    keys: RwLock<HashMap<[u8; 32], Key>>,
}

/// Why an add or a revoke was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Invalid(String),
    #[error("no API key has the id {0}")]
    NotFound(String),
    #[error(transparent)]
    User(#[from] UserError),
}

impl ApiKeys {
    /// The config's keys (name, SHA-256, scopes), then every stored entry over them.
    pub fn load(
        config: &[(String, [u8; 32], Scopes)],
        entries: &Entries,
    ) -> Result<Arc<ApiKeys>, UserError> {
        let keys = config
            .iter()
            .map(|(name, hash, scopes)| {
                (
                    *hash,
                    Key {
                        name: name.clone(),
                        scopes: *scopes,
                        from_config: true,
                        created_at_ms: None,
                        revoked_at_ms: None,
                    },
                )
            })
            .collect();
        let this = Arc::new(ApiKeys {
            keys: RwLock::new(keys),
        });
        for e in entries.all(EntryKind::ApiKey)? {
            this.take(&e);
        }
        let watcher = Arc::downgrade(&this);
        entries.watch(move |e| {
            if let Some(keys) = watcher.upgrade() {
                keys.take(e);
            }
        });
        Ok(this)
    }

    /// Follows one stored API key entry.
    fn take(&self, entry: &proto::Entry) {
        if entry.kind != EntryKind::ApiKey as u32 {
            return;
        }
        let (Ok(hash), Ok(value)) = (
            <[u8; 32]>::try_from(entry.key.as_slice()),
            proto::ApiKey::decode(entry.value.as_slice()),
        ) else {
            return;
        };
        let mut keys = self.keys.write();
        let from_config = keys.get(&hash).is_some_and(|k| k.from_config);
        // Unknown scope names (from a newer node) grant nothing here.
        let scopes = Scopes(
            value
                .scopes
                .iter()
                .filter_map(|s| Scope::parse(s))
                .fold(0, |b, s| b | s.bit()),
        );
        keys.insert(
            hash,
            Key {
                name: value.name,
                scopes,
                from_config,
                created_at_ms: (value.created_at_ms > 0).then_some(value.created_at_ms),
                revoked_at_ms: (value.revoked_at_ms > 0).then_some(value.revoked_at_ms),
            },
        );
    }

    /// The scopes of `presented`, or `None` when it is not a live key.
    pub fn authorize(&self, presented: &str) -> Option<Scopes> {
        let hash = hash_key(presented);
        self.keys
            .read()
            .get(&hash)
            .filter(|k| k.revoked_at_ms.is_none())
            .map(|k| k.scopes)
    }

    /// Adds a new random key; returns it (shown once, never stored) and its info.
    pub fn add(
        &self,
        entries: &Entries,
        name: &str,
        scopes: Scopes,
        now_ms: u64,
    ) -> Result<(String, KeyInfo), KeyError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
            return Err(KeyError::Invalid(
                "name must be 1 to 64 characters, none of them control characters".into(),
            ));
        }
        let key = new_api_key().map_err(|e| KeyError::Invalid(e.to_string()))?;
        let hash = hash_key(&key);
        let value = proto::ApiKey {
            name: name.to_string(),
            scopes: scopes.names(),
            created_at_ms: now_ms,
            revoked_at_ms: 0,
        };
        entries.put(EntryKind::ApiKey, &hash, value.encode_to_vec())?;
        let info = self.info(&hash).expect("just added");
        Ok((key, info))
    }

    /// Revokes the key with public id `id`, in every region. Revoking a revoked key
    /// changes nothing.
    pub fn revoke(&self, entries: &Entries, id: &str, now_ms: u64) -> Result<KeyInfo, KeyError> {
        let found = self
            .keys
            .read()
            .iter()
            .find(|(h, _)| key_id(h) == id)
            .map(|(h, k)| (*h, k.clone()));
        let Some((hash, key)) = found else {
            return Err(KeyError::NotFound(id.chars().take(32).collect()));
        };
        if key.revoked_at_ms.is_none() {
            let value = proto::ApiKey {
                name: key.name.clone(),
                scopes: key.scopes.names(),
                created_at_ms: key.created_at_ms.unwrap_or(0),
                revoked_at_ms: now_ms.max(1),
            };
            entries.put(EntryKind::ApiKey, &hash, value.encode_to_vec())?;
        }
        Ok(self.info(&hash).expect("known"))
    }

    fn info(&self, hash: &[u8; 32]) -> Option<KeyInfo> {
        self.keys.read().get(hash).map(|k| KeyInfo {
            id: key_id(hash),
            name: k.name.clone(),
            scopes: k.scopes.list(),
            source: if k.from_config { "config" } else { "runtime" },
            created_at_ms: k.created_at_ms,
            revoked_at_ms: k.revoked_at_ms,
        })
    }

    /// Every key, revoked ones included, by name then id.
    pub fn list(&self) -> Vec<KeyInfo> {
        let hashes: Vec<[u8; 32]> = self.keys.read().keys().copied().collect();
        let mut out: Vec<KeyInfo> = hashes.iter().filter_map(|h| self.info(h)).collect();
        out.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        out
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// A label for logs and metrics; never the key itself.
    pub name: String,
    /// Hex SHA-256 of the key as callers send it.
    pub sha256: String,
    /// What the key may do: "read", "write", "admin". Default: all three.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
}

impl ApiKeyConfig {
    /// Checks the `[[api_keys]]` entries: (name, SHA-256 of the key, scopes) of each.
    pub fn resolve(keys: &[ApiKeyConfig]) -> Result<Vec<(String, [u8; 32], Scopes)>, Invalid> {
        if keys.is_empty() {
            return Err(invalid(
                "api_keys",
                "at least one key is required (see `authsync keys api-key`)",
            ));
        }
        let mut out = Vec::with_capacity(keys.len());
        for (i, key) in keys.iter().enumerate() {
            if key.name.trim().is_empty() {
                return Err(invalid(&format!("api_keys[{i}].name"), "must not be empty"));
            }
            let mut hash = [0u8; 32];
            hex::decode_to_slice(key.sha256.trim(), &mut hash).map_err(|_| {
                invalid(
                    &format!("api_keys[{i}].sha256"),
                    "must be 64 hex digits (the SHA-256 of the key)",
                )
            })?;
            let scopes = match &key.scopes {
                None => Scopes::all(),
                Some(names) => Scopes::parse(names)
                    .map_err(|e| invalid(&format!("api_keys[{i}].scopes"), e))?,
            };
            out.push((key.name.clone(), hash, scopes));
        }
        Ok(out)
    }
}

/// A random API key: 32 bytes, URL-safe base64, beginning with a letter or digit (a
/// key beginning with `-` would read as an option on a command line).
pub fn new_api_key() -> Result<String, CryptoError> {
    use base64::Engine as _;
    loop {
        let key = zeroize::Zeroizing::new(random::<32>()?);
        let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.as_ref());
        if text.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Ok(text);
        }
    }
}

/// Hex SHA-256 of a key as callers send it: what `[[api_keys]] sha256` holds.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(sha256(text.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_from_known_names_only() {
        let s = Scopes::parse(&["read", " admin "]).unwrap();
        assert!(s.contains(Scope::Read) && s.contains(Scope::Admin) && !s.contains(Scope::Write));
        assert_eq!(s.list(), vec![Scope::Read, Scope::Admin]);
        assert_eq!(
            Scopes::parse(&["write", "write"]).unwrap().list(),
            vec![Scope::Write]
        );
        assert!(Scopes::parse(&["root"])
            .unwrap_err()
            .contains("unknown scope \"root\""));
        assert!(Scopes::parse::<&str>(&[])
            .unwrap_err()
            .contains("at least one"));
        assert_eq!(Scopes::all().list(), Scope::ALL.to_vec());
    }

    #[test]
    fn api_keys_are_long_random_and_never_read_as_an_option() {
        let keys: Vec<String> = (0..200).map(|_| new_api_key().unwrap()).collect();
        for k in &keys {
            assert_eq!(k.len(), 43);
            assert!(k.starts_with(|c: char| c.is_ascii_alphanumeric()), "{k}");
        }
        let distinct: std::collections::BTreeSet<_> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len());
    }
}
