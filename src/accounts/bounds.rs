//! Bounds on what arrives from another region, checked after its MAC and before any of
//! it is used: a region that holds the deployment's keys, or a bug in one, must not be
//! able to break an invariant of the others with a number.
//!
//! - A version more than [`MAX_AHEAD_MS`] ahead of this node's clock is malformed,
//!   not a skew to wait out: it would sit in the retry queue until that day.
//! - Times a record or entry carries lie between [`EPOCH_MS`] and a day past its own
//!   version (a value of 0 means "never" where the field allows it); an account's
//!   creation version is no later than its version, so that a made-up early creation
//!   cannot win every merge of duplicates.
//! - A refresh token family expires at most [`MAX_REFRESH_TTL_MS`] after it was made,
//!   and holds hashes of the right size and no more history than a family keeps.
//!
//! Whatever fails is refused as [`ApplyError::Malformed`]: a dead letter, never
//! applied. Arithmetic on the values that pass stays checked all the same.

use prost::Message as _;

use crate::accounts::error::ApplyError;
use crate::common::hlc::{Hlc, Version, LOGICAL_LIMIT};
use crate::proto::{self, EntryKind};

/// 2020-01-01T00:00:00Z: no authsync node wrote anything earlier.
pub const EPOCH_MS: u64 = 1_577_836_800_000;
/// How far past its version a carried time may be, and how far ahead of this node's
/// clock a version may be before it is refused rather than waited for.
pub const MAX_AHEAD_MS: u64 = 24 * 60 * 60 * 1000;
/// The longest refresh token lifetime a node can be configured with: a year.
pub const MAX_REFRESH_TTL_MS: u64 = 365 * 24 * 60 * 60 * 1000;
/// The most earlier secrets a refresh token family keeps.
pub const MAX_FAMILY_HISTORY: usize = 32;
/// The largest encoded account record a region takes: well above the largest a node
/// writes (a full profile, the legacy hashes it keeps), far below what would let a few
/// records fill a peer's answer or the disk.
pub const MAX_RECORD_BYTES: usize = 256 * 1024;
/// The most wrapped keys an envelope or user key may carry: one per region.
pub const MAX_WRAPS: usize = 64;
/// The scopes an OAuth client may be allowed (`crate::accounts::oidc`).
pub const OAUTH_SCOPES: &[&str] = &["openid", "email", "phone", "profile", "offline_access"];
/// The longest redirect URI, client id or scope string taken.
pub const MAX_OAUTH_LEN: usize = 512;
/// The most spent recovery codes remembered per account (several sets' worth).
pub const MAX_SPENT_CODES: usize = 64;
/// The longest browser session a node may be configured with: 30 days.
pub const MAX_SESSION_MS: u64 = 30 * 86_400_000;

/// Whether `uri` may be an OAuth client's redirect URI: absolute, `https` (or `http`
/// to a loopback host, for native apps and development, as RFC 8252 allows), with no
/// fragment and no credentials in it.
pub fn redirect_uri(uri: &str) -> Result<(), &'static str> {
    if uri.len() > MAX_OAUTH_LEN {
        return Err("is longer than 512 characters");
    }
    let parsed = url::Url::parse(uri).map_err(|_| "is not an absolute URL")?;
    if parsed.fragment().is_some() {
        return Err("must not have a fragment (#...)");
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry credentials");
    }
    let loopback = matches!(
        parsed.host(),
        Some(url::Host::Domain("localhost"))
            | Some(url::Host::Ipv4(std::net::Ipv4Addr::LOCALHOST))
            | Some(url::Host::Ipv6(std::net::Ipv6Addr::LOCALHOST))
    );
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err("must be https (http only to localhost, 127.0.0.1 or [::1])"),
    }
}

fn oauth_scopes<'a>(mut scopes: impl Iterator<Item = &'a str>) -> Check {
    if scopes.all(|s| OAUTH_SCOPES.contains(&s)) {
        Ok(())
    } else {
        Err("a scope that is not one of openid, email, phone, profile, offline_access")
    }
}

/// How long before signing a key may be published, at most (`tokens.publish_lead_s`).
const MAX_PUBLISH_LEAD_MS: u64 = 7 * 24 * 60 * 60 * 1000;

type Check = Result<(), &'static str>;

fn malformed(problem: &'static str) -> ApplyError {
    ApplyError::Malformed(problem)
}

/// `version` as seen by `hlc`: refused as malformed when it is more than
/// [`MAX_AHEAD_MS`] ahead, as a skew (to be tried again) when only a little.
pub fn observe(hlc: &Hlc, version: &Version) -> Result<(), ApplyError> {
    hlc.observe(version).map_err(|skew| {
        if skew.ahead_ms > MAX_AHEAD_MS {
            malformed("version more than a day ahead of this node's clock")
        } else {
            ApplyError::Skew(skew)
        }
    })
}

fn valid_version(v: Option<&proto::Version>) -> Result<Version, &'static str> {
    let v = v.ok_or("without a version")?;
    if v.logical >= LOGICAL_LIMIT || v.physical_ms < EPOCH_MS {
        return Err("version out of range");
    }
    Ok(Version::from_proto(v))
}

/// A time carried beside `version`: 0 (never) when `optional`, else from
/// [`EPOCH_MS`] to a day past the version.
fn time(ms: u64, version: &Version, optional: bool, problem: &'static str) -> Check {
    if ms == 0 && optional {
        return Ok(());
    }
    let latest = version.physical_ms.saturating_add(MAX_AHEAD_MS);
    if (EPOCH_MS..=latest).contains(&ms) {
        Ok(())
    } else {
        Err(problem)
    }
}

/// Checks a replicated account record.
pub fn record(r: &proto::Record) -> Result<(), ApplyError> {
    check_record(r).map_err(malformed)
}

fn check_record(r: &proto::Record) -> Check {
    let version = valid_version(r.version.as_ref())?;
    if r.encoded_len() > MAX_RECORD_BYTES {
        return Err("record larger than 256 KiB");
    }
    if let Some(env) = &r.info {
        let regions: std::collections::BTreeSet<&str> =
            env.keys.iter().map(|k| k.region.as_str()).collect();
        if env.keys.len() > MAX_WRAPS || regions.len() != env.keys.len() {
            return Err("wrapped keys: more than 64, or a region twice");
        }
    }
    if let Some(created) = &r.created {
        let created = valid_version(Some(created)).map_err(|_| "creation version out of range")?;
        if created > version {
            return Err("created after its own version");
        }
    }
    time(
        r.created_at_ms,
        &version,
        true,
        "created_at_ms out of range",
    )?;
    time(
        r.updated_at_ms,
        &version,
        true,
        "updated_at_ms out of range",
    )?;
    time(
        r.credentials_changed_ms,
        &version,
        true,
        "credentials_changed_ms out of range",
    )?;
    if !(r.merged_into.is_empty() || r.merged_into.len() == 16) {
        return Err("merged_into is not 16 bytes");
    }
    Ok(())
}

/// Checks a replicated entry's version and, for the kinds this node knows, its value.
pub fn entry(e: &proto::Entry) -> Result<(), ApplyError> {
    check_entry(e).map_err(malformed)
}

fn check_entry(e: &proto::Entry) -> Check {
    let version = valid_version(e.version.as_ref())?;
    let v = e.value.as_slice();
    match EntryKind::try_from(e.kind as i32) {
        Ok(EntryKind::TokenFamily) => {
            let f = proto::TokenFamily::decode(v).map_err(|_| "token family does not decode")?;
            token_family(&f, &version)
        }
        Ok(EntryKind::LoginFailures) => {
            let f = proto::LoginFailures::decode(v).map_err(|_| "login failures do not decode")?;
            time(f.first_ms, &version, true, "first_ms out of range")?;
            time(f.last_ms, &version, true, "last_ms out of range")?;
            time(f.cleared_ms, &version, true, "cleared_ms out of range")?;
            if f.count > 0 && f.first_ms > f.last_ms {
                return Err("a streak that ends before it begins");
            }
            Ok(())
        }
        Ok(EntryKind::ApiKey) => {
            let k = proto::ApiKey::decode(v).map_err(|_| "API key does not decode")?;
            time(
                k.created_at_ms,
                &version,
                true,
                "created_at_ms out of range",
            )?;
            time(
                k.revoked_at_ms,
                &version,
                true,
                "revoked_at_ms out of range",
            )
        }
        Ok(EntryKind::SigningKey) => {
            let k = proto::SigningKey::decode(v).map_err(|_| "signing key does not decode")?;
            let lead = Version {
                physical_ms: version.physical_ms.saturating_add(MAX_PUBLISH_LEAD_MS),
                ..version.clone()
            };
            time(k.published_ms, &version, true, "published_ms out of range")?;
            time(k.signs_from_ms, &lead, true, "signs_from_ms out of range")?;
            time(k.retired_ms, &lead, true, "retired_ms out of range")?;
            time(k.es256_from_ms, &lead, true, "es256_from_ms out of range")?;
            // A point off the curve would sit in every region's JWKS, where a platform's
            // library may refuse the whole set.
            if k.es256_public_key.is_empty()
                || crate::crypto::jws::p256_point_valid(&k.es256_public_key)
            {
                Ok(())
            } else {
                Err("signing key's ES256 public key is not a P-256 point")
            }
        }
        Ok(EntryKind::OauthClient) => {
            let c = proto::OAuthClient::decode(v).map_err(|_| "OAuth client does not decode")?;
            if c.client_id.as_bytes() != e.key.as_slice() || c.client_id.len() > 512 {
                return Err("OAuth client id differs from its key");
            }
            // How it authenticates decides what it holds: a secret's hash, keys, or
            // neither; never a public client that a made-up hash or key would let in.
            let (hash, keys) = (c.secret_hash.len(), !c.jwks.is_empty());
            let held = match c.auth_method.as_str() {
                "client_secret_basic" | "client_secret_post" => hash == 32 && !keys,
                "private_key_jwt" => {
                    hash == 0
                        && c.jwks.len() <= crate::crypto::jws::MAX_KEY_SET_LEN
                        && serde_json::from_str(&c.jwks)
                            .is_ok_and(|set| crate::crypto::jws::public_key_set(&set).is_ok())
                }
                "none" => hash == 0 && !keys,
                _ => false,
            };
            if !held {
                return Err("OAuth client's authentication method and credentials disagree");
            }
            if !matches!(c.id_token_alg.as_str(), "" | "EdDSA" | "ES256") {
                return Err("OAuth client's ID token alg is not EdDSA or ES256");
            }
            if c.redirect_uris.len() > 10 || c.post_logout_redirect_uris.len() > 10 {
                return Err("OAuth client has more than 10 redirect URIs");
            }
            for uri in c.redirect_uris.iter().chain(&c.post_logout_redirect_uris) {
                redirect_uri(uri).map_err(|_| "OAuth client redirect URI not allowed")?;
            }
            oauth_scopes(c.scopes.iter().map(String::as_str))?;
            if c.name.chars().count() > 100 {
                return Err("OAuth client name out of range");
            }
            time(c.created_ms, &version, true, "created_ms out of range")?;
            time(c.removed_ms, &version, true, "removed_ms out of range")
        }
        Ok(EntryKind::AccountToken) => {
            let t = proto::AccountToken::decode(v).map_err(|_| "account token does not decode")?;
            if e.key.len() != 16 || t.user_id.len() != 16 || t.secret_hash.len() != 32 {
                return Err("account token: id, user id or hash of the wrong size");
            }
            if !matches!(
                t.purpose.as_str(),
                "reset" | "verify_email" | "verify_phone"
            ) || t.address_index.len() != 32
            {
                return Err("account token: purpose or address out of range");
            }
            time(
                t.created_ms,
                &version,
                false,
                "account token: created_ms out of range",
            )?;
            time(
                t.used_ms,
                &version,
                true,
                "account token: used_ms out of range",
            )?;
            // A day at most, as the longest purpose lives.
            if t.expires_ms <= t.created_ms || t.expires_ms - t.created_ms > 86_400_000 {
                return Err("account token: lives longer than a day");
            }
            Ok(())
        }
        Ok(EntryKind::FactorUses) => {
            let u = proto::FactorUses::decode(v).map_err(|_| "factor uses do not decode")?;
            if e.key.len() != 16 {
                return Err("factor uses: the key is not a user id");
            }
            // A step past its writer's time would refuse the account's authenticator
            // until then: no honest writer takes one past its now and the window.
            let latest = version.physical_ms / 1000 / crate::crypto::totp::STEP_S
                + crate::crypto::totp::WINDOW;
            if u.totp_step > latest {
                return Err("factor uses: a TOTP step ahead of its writer's time");
            }
            // Turned on or removed in the future would stand over every later change:
            // a minute past the writer's version at most (one change after another
            // may run a little ahead of the clock).
            let now_ish = Version {
                physical_ms: version.physical_ms.saturating_sub(MAX_AHEAD_MS - 60_000),
                ..version.clone()
            };
            time(
                u.enabled_ms,
                &now_ish,
                true,
                "factor uses: enabled_ms out of range",
            )?;
            time(
                u.removed_ms,
                &now_ish,
                true,
                "factor uses: removed_ms out of range",
            )?;
            if u.recovery_used.len() > MAX_SPENT_CODES
                || u.recovery_used.iter().any(|h| h.len() != 32)
            {
                return Err("factor uses: spent codes out of bounds");
            }
            Ok(())
        }
        Ok(EntryKind::BrowserSession) => {
            let b =
                proto::BrowserSession::decode(v).map_err(|_| "browser session does not decode")?;
            if e.key.len() != 16 || b.user_id.len() != 16 || b.secret_hash.len() != 32 {
                return Err("browser session: id, user id or hash of the wrong size");
            }
            time(b.auth_time_ms, &version, false, "auth_time_ms out of range")?;
            time(b.ended_ms, &version, true, "ended_ms out of range")?;
            time(
                b.credentials_changed_ms,
                &version,
                true,
                "credentials_changed_ms out of range",
            )?;
            if b.expires_ms < b.auth_time_ms || b.expires_ms - b.auth_time_ms > MAX_SESSION_MS {
                return Err("browser session lasts longer than 30 days");
            }
            Ok(())
        }
        // Kinds a newer node knows are kept as they are.
        _ => Ok(()),
    }
}

fn token_family(f: &proto::TokenFamily, version: &Version) -> Check {
    if f.user_id.len() != 16 {
        return Err("token family's user id is not 16 bytes");
    }
    if f.current_hash.len() != 32 || f.previous_hashes.iter().any(|h| h.len() != 32) {
        return Err("token family hash is not 32 bytes");
    }
    if f.previous_hashes.len() > MAX_FAMILY_HISTORY {
        return Err("token family keeps too many earlier secrets");
    }
    if f.generation == u32::MAX {
        return Err("token family generation out of range");
    }
    if f.client_id.len() > MAX_OAUTH_LEN || f.scope.len() > MAX_OAUTH_LEN {
        return Err("token family client or scope too long");
    }
    oauth_scopes(f.scope.split(' ').filter(|s| !s.is_empty()))?;
    time(
        f.created_ms,
        version,
        false,
        "token family created_ms out of range",
    )?;
    if f.expires_ms < f.created_ms || f.expires_ms - f.created_ms > MAX_REFRESH_TTL_MS {
        return Err("token family expires_ms out of range");
    }
    time(
        f.revoked_ms,
        version,
        true,
        "token family revoked_ms out of range",
    )?;
    time(
        f.credentials_changed_ms,
        version,
        true,
        "token family credentials_changed_ms out of range",
    )?;
    if f.revoked_reason.len() > 32 {
        return Err("token family revoked_reason too long");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(ms: u64) -> Option<proto::Version> {
        Some(proto::Version {
            physical_ms: ms,
            logical: 0,
            region: "af-south".into(),
        })
    }

    const NOW: u64 = 1_800_000_000_000;

    /// The attack: values a writer of replicated records could choose to break an
    /// invariant elsewhere, each refused.
    #[test]
    fn records_that_would_break_an_invariant_are_refused() {
        let wrap = |region: &str| proto::WrappedKey {
            region: region.into(),
            ..Default::default()
        };
        let good = proto::Record {
            id: vec![1; 16],
            version: v(NOW),
            created: v(NOW - 1000),
            created_at_ms: NOW - 1000,
            updated_at_ms: NOW,
            ..Default::default()
        };
        assert!(record(&good).is_ok());
        let bad: Vec<(&str, proto::Record)> = vec![
            // Created at 0: the earliest account, winning every merge.
            (
                "created 0",
                proto::Record {
                    created: v(0),
                    ..good.clone()
                },
            ),
            (
                "created after",
                proto::Record {
                    created: v(NOW + 1),
                    ..good.clone()
                },
            ),
            (
                "version 0",
                proto::Record {
                    version: v(0),
                    created: None,
                    ..good.clone()
                },
            ),
            (
                "no version",
                proto::Record {
                    version: None,
                    ..good.clone()
                },
            ),
            (
                "credentials in the far future",
                proto::Record {
                    credentials_changed_ms: u64::MAX,
                    ..good.clone()
                },
            ),
            (
                "updated_at overflow",
                proto::Record {
                    updated_at_ms: u64::MAX,
                    ..good.clone()
                },
            ),
            (
                "merged_into short",
                proto::Record {
                    merged_into: vec![1],
                    ..good.clone()
                },
            ),
            // A relay's growth: a record of a megabyte, wraps for a region twice, or
            // for more regions than any deployment has.
            (
                "a megabyte",
                proto::Record {
                    secret: "7".repeat(1 << 20),
                    ..good.clone()
                },
            ),
            (
                "a region wrapped twice",
                proto::Record {
                    info: Some(proto::Envelope {
                        keys: vec![wrap("eu-west"), wrap("eu-west")],
                        ..Default::default()
                    }),
                    ..good.clone()
                },
            ),
            (
                "65 wraps",
                proto::Record {
                    info: Some(proto::Envelope {
                        keys: (0..65).map(|i| wrap(&format!("r{i}"))).collect(),
                        ..Default::default()
                    }),
                    ..good.clone()
                },
            ),
        ];
        for (name, r) in bad {
            assert!(
                matches!(record(&r), Err(ApplyError::Malformed(_))),
                "{name} was accepted"
            );
        }
    }

    #[test]
    fn entries_that_would_break_an_invariant_are_refused() {
        let made = |kind: EntryKind, value: Vec<u8>| proto::Entry {
            kind: kind as u32,
            key: b"k".to_vec(),
            version: v(NOW),
            value,
            ..Default::default()
        };
        let family = proto::TokenFamily {
            user_id: vec![1; 16],
            generation: 3,
            current_hash: vec![2; 32],
            previous_hashes: vec![vec![3; 32]; 3],
            created_ms: NOW - 1000,
            expires_ms: NOW + 1000,
            ..Default::default()
        };
        let failures = proto::LoginFailures {
            count: 3,
            first_ms: NOW - 10,
            last_ms: NOW,
            cleared_ms: 0,
        };
        assert!(entry(&made(EntryKind::TokenFamily, family.encode_to_vec())).is_ok());
        assert!(entry(&made(EntryKind::LoginFailures, failures.encode_to_vec())).is_ok());
        let good_client = proto::OAuthClient {
            client_id: "c_1".into(),
            name: "Shop".into(),
            redirect_uris: vec!["https://shop.example/cb".into()],
            scopes: vec!["openid".into(), "email".into()],
            auth_method: "client_secret_basic".into(),
            secret_hash: vec![7; 32],
            created_ms: NOW,
            ..Default::default()
        };
        let good_token = proto::AccountToken {
            user_id: vec![1; 16],
            purpose: "reset".into(),
            secret_hash: vec![2; 32],
            address_index: vec![3; 32],
            created_ms: NOW,
            expires_ms: NOW + 1_800_000,
            used_ms: 0,
        };
        let made_token = |t: proto::AccountToken| proto::Entry {
            key: vec![4; 16],
            ..made(EntryKind::AccountToken, t.encode_to_vec())
        };
        let uses = |u: proto::FactorUses| proto::Entry {
            key: vec![1; 16],
            ..made(EntryKind::FactorUses, u.encode_to_vec())
        };
        let client = |c: proto::OAuthClient| proto::Entry {
            key: b"c_1".to_vec(),
            ..made(EntryKind::OauthClient, c.encode_to_vec())
        };
        let bad: Vec<(&str, proto::Entry)> = vec![
            (
                "a family that never expires",
                made(
                    EntryKind::TokenFamily,
                    proto::TokenFamily {
                        expires_ms: u64::MAX,
                        ..family.clone()
                    }
                    .encode_to_vec(),
                ),
            ),
            (
                "a family that expires before it is made",
                made(
                    EntryKind::TokenFamily,
                    proto::TokenFamily {
                        expires_ms: 1,
                        ..family.clone()
                    }
                    .encode_to_vec(),
                ),
            ),
            (
                "a family with a long history",
                made(
                    EntryKind::TokenFamily,
                    proto::TokenFamily {
                        previous_hashes: vec![vec![3; 32]; 100],
                        ..family.clone()
                    }
                    .encode_to_vec(),
                ),
            ),
            (
                "a family at the last generation",
                made(
                    EntryKind::TokenFamily,
                    proto::TokenFamily {
                        generation: u32::MAX,
                        ..family.clone()
                    }
                    .encode_to_vec(),
                ),
            ),
            (
                "a clear in the far future (an overflow)",
                made(
                    EntryKind::LoginFailures,
                    proto::LoginFailures {
                        cleared_ms: u64::MAX,
                        ..failures
                    }
                    .encode_to_vec(),
                ),
            ),
            (
                "a streak ending before it begins",
                made(
                    EntryKind::LoginFailures,
                    proto::LoginFailures {
                        first_ms: NOW,
                        last_ms: NOW - 10,
                        ..failures
                    }
                    .encode_to_vec(),
                ),
            ),
            (
                "a signing key whose ES256 half is off the curve",
                made(
                    EntryKind::SigningKey,
                    proto::SigningKey {
                        es256_public_key: [vec![4], vec![1; 64]].concat(),
                        ..Default::default()
                    }
                    .encode_to_vec(),
                ),
            ),
            (
                "a signing key retired at the end of time",
                made(
                    EntryKind::SigningKey,
                    proto::SigningKey {
                        retired_ms: u64::MAX,
                        ..Default::default()
                    }
                    .encode_to_vec(),
                ),
            ),
            ("junk", made(EntryKind::TokenFamily, vec![0xff; 7])),
            // What a region could replicate to redirect every region's customers, or
            // release more at userinfo than was granted.
            (
                "a client redirecting to javascript:",
                client(proto::OAuthClient {
                    redirect_uris: vec!["javascript:alert(1)".into()],
                    ..good_client.clone()
                }),
            ),
            (
                "a client redirecting over plain http",
                client(proto::OAuthClient {
                    post_logout_redirect_uris: vec!["http://evil.example/".into()],
                    ..good_client.clone()
                }),
            ),
            (
                "a private_key_jwt client without keys, that would pass as public",
                client(proto::OAuthClient {
                    auth_method: "private_key_jwt".into(),
                    secret_hash: Vec::new(),
                    ..good_client.clone()
                }),
            ),
            (
                "a private_key_jwt client whose key is private",
                client(proto::OAuthClient {
                    auth_method: "private_key_jwt".into(),
                    secret_hash: Vec::new(),
                    jwks: r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"gTl3Dqh9F19Wo1Rmw0x-zMuNipG07jeiXfYPW4_Js5Q","d":"AQ"}]}"#.into(),
                    ..good_client.clone()
                }),
            ),
            (
                "a public client with keys",
                client(proto::OAuthClient {
                    auth_method: "none".into(),
                    secret_hash: Vec::new(),
                    jwks: r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"gTl3Dqh9F19Wo1Rmw0x-zMuNipG07jeiXfYPW4_Js5Q"}]}"#.into(),
                    ..good_client.clone()
                }),
            ),
            // What a region could replicate to keep a reset token good for a week, or
            // one that proves nothing it was sent to.
            (
                "an account token living a week",
                made_token(proto::AccountToken {
                    expires_ms: NOW + 7 * 86_400_000,
                    ..good_token.clone()
                }),
            ),
            (
                "an account token for a purpose there is not",
                made_token(proto::AccountToken {
                    purpose: "unlock".into(),
                    ..good_token.clone()
                }),
            ),
            // What a region could replicate to refuse an account's authenticator
            // for good, or to grow the entry without bound.
            (
                "second-factor uses at a step an hour past the writer's time",
                uses(proto::FactorUses {
                    totp_step: (NOW + 3_600_000) / 30_000,
                    ..Default::default()
                }),
            ),
            (
                "second-factor uses removed a day after the writer's time",
                uses(proto::FactorUses {
                    removed_ms: NOW + 86_400_000,
                    ..Default::default()
                }),
            ),
            (
                "second-factor uses with a spent code not a hash",
                uses(proto::FactorUses {
                    totp_step: 1,
                    recovery_used: vec![vec![1; 5]],
                    ..Default::default()
                }),
            ),
            (
                "second-factor uses with more spent codes than any account has",
                uses(proto::FactorUses {
                    totp_step: 1,
                    recovery_used: (0..=MAX_SPENT_CODES as u8).map(|i| vec![i; 32]).collect(),
                    ..Default::default()
                }),
            ),
            (
                "second-factor uses under a key that is no user id",
                made(
                    EntryKind::FactorUses,
                    proto::FactorUses::default().encode_to_vec(),
                ),
            ),
            (
                "a client signing ID tokens with none",
                client(proto::OAuthClient {
                    id_token_alg: "none".into(),
                    ..good_client.clone()
                }),
            ),
            (
                "a client with a made-up scope",
                client(proto::OAuthClient {
                    scopes: vec!["openid".into(), "admin".into()],
                    ..good_client.clone()
                }),
            ),
            (
                "a client under another id than its key",
                made(
                    EntryKind::OauthClient,
                    proto::OAuthClient {
                        client_id: "c_other".into(),
                        ..good_client.clone()
                    }
                    .encode_to_vec(),
                ),
            ),
            (
                "a family granting a made-up scope",
                made(
                    EntryKind::TokenFamily,
                    proto::TokenFamily {
                        client_id: "c_1".into(),
                        scope: "openid everything".into(),
                        ..family.clone()
                    }
                    .encode_to_vec(),
                ),
            ),
            (
                "a browser session of a year",
                proto::Entry {
                    key: vec![1; 16],
                    ..made(
                        EntryKind::BrowserSession,
                        proto::BrowserSession {
                            user_id: vec![1; 16],
                            secret_hash: vec![2; 32],
                            auth_time_ms: NOW,
                            expires_ms: NOW + 365 * 86_400_000,
                            ..Default::default()
                        }
                        .encode_to_vec(),
                    )
                },
            ),
        ];
        assert!(entry(&client(good_client.clone())).is_ok());
        assert!(entry(&made_token(good_token.clone())).is_ok());
        assert!(entry(&uses(proto::FactorUses {
            totp_step: NOW / 30_000 + 1,
            recovery_used: vec![vec![1; 32]],
            enabled_ms: NOW,
            removed_ms: NOW - 1,
        }))
        .is_ok());
        let keyed = proto::OAuthClient {
            auth_method: "private_key_jwt".into(),
            secret_hash: Vec::new(),
            id_token_alg: "ES256".into(),
            jwks: r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"gTl3Dqh9F19Wo1Rmw0x-zMuNipG07jeiXfYPW4_Js5Q"}]}"#.into(),
            ..good_client.clone()
        };
        assert!(entry(&client(keyed)).is_ok());
        for (name, e) in bad {
            assert!(
                matches!(entry(&e), Err(ApplyError::Malformed(_))),
                "{name} was accepted"
            );
        }
    }

    /// The attack: events stamped far in the future, which a node would keep in its
    /// retry queue until its clock got there.
    #[test]
    fn a_version_far_ahead_is_malformed_a_little_ahead_waits() {
        let hlc = Hlc::new("eu-west", 500, Box::new(crate::common::hlc::SystemClock));
        let now = hlc.physical_now();
        let at = |ms: u64| Version::from_proto(&v(ms).unwrap());
        assert!(observe(&hlc, &at(now)).is_ok());
        assert!(matches!(
            observe(&hlc, &at(now + 60_000)),
            Err(ApplyError::Skew(_))
        ));
        assert!(matches!(
            observe(&hlc, &at(now + 2 * MAX_AHEAD_MS)),
            Err(ApplyError::Malformed(_))
        ));
        assert!(matches!(
            observe(&hlc, &at(u64::MAX)),
            Err(ApplyError::Malformed(_))
        ));
    }
}
