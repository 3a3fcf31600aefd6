//! Who wrote it: Ed25519 signatures by the writing region on everything that
//! replicates.
//!
//! Every record, entry and user key a region writes is signed with that region's
//! signing key (its keyring's `signing`), and a region takes one from the network only
//! when the signature verifies against the public key of the region it claims: the one
//! its version names (records, entries), or its `signer` (user keys, which have no
//! version). The shared MAC under the index key (`crate::crypto::envelope::MessageMac`)
//! stays as the store's integrity check, but every region can compute it, so it proves
//! nothing about the writer; the signature does.
//!
//! The signature is the writer's and travels with the object, not with the event that
//! carried it: records also reach a region through anti-entropy (pulled from any peer)
//! and key recovery (a peer adds wraps at the writer's version), and a per-event
//! signature would prove only who relayed them. What a relay may change is left out of
//! the signed bytes, and each is checked another way:
//! - a record's wrapped keys and envelope MAC: each wrap's key must match the
//!   envelope's `key_check`, which is signed, so a wrap of another key is refused when
//!   opened;
//! - a user key's wraps: the same, through the user key's `key_check`;
//! - the shared MAC fields, which the receiver computes again.

use prost::Message;
use ring::signature::{UnparsedPublicKey, ED25519};

use crate::crypto::keyring::Keyring;
use crate::crypto::primitives::CryptoError;
use crate::proto;

/// A message that carries its writer's signature.
pub trait Signed: Message + Clone {
    /// Prefixed to the signed bytes: no type's signature passes as another's.
    const DOMAIN: &'static [u8];
    fn signature(&self) -> (&[u8], &str);
    fn signature_mut(&mut self) -> (&mut Vec<u8>, &mut String);
    /// Clears what is not signed: the signature, the shared MAC and what relays change.
    fn clear_unsigned(&mut self);
    /// When it was written, by its version (user keys have none).
    fn written_ms(&self) -> Option<u64>;
}

/// The accessors of the `signature` and `signer` fields every signed message has.
macro_rules! signature_fields {
    () => {
        fn signature(&self) -> (&[u8], &str) {
            (&self.signature, &self.signer)
        }
        fn signature_mut(&mut self) -> (&mut Vec<u8>, &mut String) {
            (&mut self.signature, &mut self.signer)
        }
    };
}

impl Signed for proto::Record {
    const DOMAIN: &'static [u8] = b"authsync/v2/record-signature\0";
    signature_fields!();
    fn clear_unsigned(&mut self) {
        self.signature.clear();
        self.record_mac.clear();
        if let Some(env) = self.info.as_mut() {
            env.keys.clear();
            env.mac.clear();
        }
    }
    fn written_ms(&self) -> Option<u64> {
        self.version.as_ref().map(|v| v.physical_ms)
    }
}

impl Signed for proto::Entry {
    const DOMAIN: &'static [u8] = b"authsync/v2/entry-signature\0";
    signature_fields!();
    fn clear_unsigned(&mut self) {
        self.signature.clear();
        self.mac.clear();
    }
    fn written_ms(&self) -> Option<u64> {
        self.version.as_ref().map(|v| v.physical_ms)
    }
}

impl Signed for proto::UserKey {
    const DOMAIN: &'static [u8] = b"authsync/v2/user-key-signature\0";
    signature_fields!();
    fn clear_unsigned(&mut self) {
        self.signature.clear();
        self.mac.clear();
        self.wraps.clear();
    }
    fn written_ms(&self) -> Option<u64> {
        None
    }
}

fn signed_bytes<M: Signed>(message: &M) -> Vec<u8> {
    let mut view = message.clone();
    view.clear_unsigned();
    let mut out = Vec::with_capacity(M::DOMAIN.len() + view.encoded_len());
    out.extend_from_slice(M::DOMAIN);
    view.encode(&mut out).expect("a Vec grows as needed");
    out
}

/// Signs `message` as this keyring's region. A legacy (format 1) keyring has no
/// signing key and leaves the message unsigned, as format 1 nodes did.
pub fn sign<M: Signed>(keyring: &Keyring, message: &mut M) {
    let Some(signer) = keyring.signer() else {
        return;
    };
    {
        let (signature, key_id) = message.signature_mut();
        signature.clear();
        key_id.clone_from(&signer.key_id);
    }
    let bytes = signed_bytes(message);
    *message.signature_mut().0 = signer.pair.sign(&bytes).as_ref().to_vec();
}

/// What [`verify`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// Signed by the region claimed.
    Signed,
    /// Unsigned, from a format 1 node, accepted while the keyring accepts legacy
    /// events: the caller still checks the shared MAC.
    Legacy,
}

/// Checks that `message` was signed by `region`: its signer names one of `region`'s
/// signing keys, and the signature over everything but what relays may change
/// verifies against it. Unsigned messages pass only while the keyring accepts legacy
/// events. Every failure is the same [`CryptoError::Integrity`].
pub fn verify<M: Signed>(
    keyring: &Keyring,
    message: &M,
    region: &str,
) -> Result<Verified, CryptoError> {
    let (signature, key_id) = message.signature();
    if signature.is_empty() && key_id.is_empty() {
        // Once this region signs (format 2), never one that claims this region: key
        // recovery would otherwise sign a forgery as its own.
        let claims_this_signer = keyring.signer().is_some() && region == keyring.owner();
        return if keyring.accepts_unsigned_from(message.written_ms()) && !claims_this_signer {
            Ok(Verified::Legacy)
        } else {
            Err(CryptoError::Integrity)
        };
    }
    if keyring.signer().is_none() {
        // A format 1 keyring holds no region's verifying key: during an upgrade, what
        // the nodes that already reloaded send is checked as a format 1 node checks
        // everything, by the shared MAC (the caller's next step).
        return Ok(Verified::Legacy);
    }
    let public = keyring
        .verifying_key(region, key_id)
        .ok_or(CryptoError::Integrity)?;
    UnparsedPublicKey::new(&ED25519, public)
        .verify(&signed_bytes(message), signature)
        .map_err(|_| CryptoError::Integrity)?;
    Ok(Verified::Signed)
}

/// The region a signer key id (`region/sN`) names, if it is one.
pub fn signer_region(key_id: &str) -> Option<&str> {
    let (region, version) = key_id.rsplit_once("/s")?;
    version.parse::<u32>().ok().map(|_| region)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keyring;

    fn rings() -> Vec<Keyring> {
        keyring::init(&["af-south".into(), "eu-west".into(), "us-east".into()]).unwrap()
    }

    fn entry(region: &str) -> proto::Entry {
        proto::Entry {
            kind: 1,
            key: b"k".to_vec(),
            version: Some(proto::Version {
                physical_ms: 1,
                logical: 0,
                region: region.into(),
            }),
            value: b"v".to_vec(),
            ..Default::default()
        }
    }

    /// The attack: eu-west, holding every shared secret, writes an entry that claims
    /// af-south's version. It can sign only as eu-west, and a signature is checked
    /// against the region claimed.
    #[test]
    fn a_region_cannot_sign_as_another() {
        let rings = rings();
        let mut forged = entry("af-south");
        sign(&rings[1], &mut forged);
        assert_eq!(signer_region(&forged.signer), Some("eu-west"));
        assert_eq!(
            verify(&rings[2], &forged, "af-south"),
            Err(CryptoError::Integrity)
        );
        // Naming af-south's key id does not help: the signature is eu-west's.
        forged.signer = rings[0].signer().unwrap().key_id.clone();
        assert_eq!(
            verify(&rings[2], &forged, "af-south"),
            Err(CryptoError::Integrity)
        );
        let mut honest = entry("af-south");
        sign(&rings[0], &mut honest);
        assert_eq!(verify(&rings[2], &honest, "af-south"), Ok(Verified::Signed));
        // Any change to a signed field breaks it.
        honest.value = b"w".to_vec();
        assert_eq!(
            verify(&rings[2], &honest, "af-south"),
            Err(CryptoError::Integrity)
        );
    }

    #[test]
    fn unsigned_messages_pass_only_while_legacy_events_are_accepted() {
        let rings = rings();
        assert_eq!(
            verify(&rings[0], &entry("eu-west"), "eu-west"),
            Err(CryptoError::Integrity)
        );
        let legacy = keyring::init_legacy(&["af-south".into(), "eu-west".into()]).unwrap();
        assert_eq!(
            verify(&legacy[0], &entry("eu-west"), "eu-west"),
            Ok(Verified::Legacy)
        );
        // A legacy keyring signs nothing.
        let mut e = entry("af-south");
        sign(&legacy[0], &mut e);
        assert!(e.signature.is_empty() && e.signer.is_empty());
        // During the upgrade window, unsigned input is taken, but never one claiming
        // the receiver's own region, which signs now: its key recovery would sign it.
        let dir = tempfile::tempdir().unwrap();
        for ring in &legacy {
            ring.save(&keyring::keyring_path(dir.path(), ring.owner()))
                .unwrap();
        }
        keyring::upgrade_in_dir(dir.path()).unwrap();
        let upgraded = keyring::load_own(dir.path(), "af-south").unwrap().1;
        assert_eq!(
            verify(&upgraded, &entry("eu-west"), "eu-west"),
            Ok(Verified::Legacy)
        );
        assert_eq!(
            verify(&upgraded, &entry("af-south"), "af-south"),
            Err(CryptoError::Integrity)
        );
    }

    fn upgraded_dir(regions: &[&str]) -> (tempfile::TempDir, Vec<Keyring>) {
        let names: Vec<String> = regions.iter().map(|r| r.to_string()).collect();
        let legacy = keyring::init_legacy(&names).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for ring in &legacy {
            ring.save(&keyring::keyring_path(dir.path(), ring.owner()))
                .unwrap();
        }
        keyring::upgrade_in_dir(dir.path()).unwrap();
        (dir, legacy)
    }

    /// The upgrade's failure mode: the nodes reload their keyrings one at a time, and
    /// one still on format 1 holds no region's verifying key. What the others sign
    /// must still pass there by the shared MAC, as everything did before, not be
    /// refused (and dead-lettered as junk, where entries would be lost).
    #[test]
    fn a_node_still_on_format_1_takes_what_upgraded_nodes_sign() {
        let (dir, legacy) = upgraded_dir(&["af-south", "eu-west"]);
        let eu_west = keyring::load_own(dir.path(), "eu-west").unwrap().1;
        let mut e = entry("eu-west");
        sign(&eu_west, &mut e);
        assert!(!e.signature.is_empty());
        assert_eq!(verify(&legacy[0], &e, "eu-west"), Ok(Verified::Legacy));
    }

    /// After `keys upgrade --finish`, unsigned messages are refused, except those
    /// written before it: a node that catches up from the topics later (rebuilt,
    /// restored) must still take an API key revocation made under format 1, or the
    /// revoked key works again there. Never one claiming the receiver's own region,
    /// and nothing written after the finish.
    #[test]
    fn after_the_upgrade_unsigned_messages_written_before_it_still_pass() {
        let (dir, _) = upgraded_dir(&["af-south", "eu-west"]);
        keyring::finish_upgrade_in_dir(dir.path()).unwrap();
        let ring = keyring::load_own(dir.path(), "af-south").unwrap().1;
        assert!(!ring.accepts_legacy());
        let at = |region: &str, ms: u64| {
            let mut e = entry(region);
            e.version.as_mut().unwrap().physical_ms = ms;
            e
        };
        let finished = ring.legacy_before_ms();
        assert_eq!(
            verify(&ring, &at("eu-west", finished - 60_000), "eu-west"),
            Ok(Verified::Legacy)
        );
        assert_eq!(
            verify(&ring, &at("eu-west", finished), "eu-west"),
            Err(CryptoError::Integrity)
        );
        assert_eq!(
            verify(&ring, &at("af-south", finished - 60_000), "af-south"),
            Err(CryptoError::Integrity)
        );
        // A user key has no version: unsigned, it is refused.
        let key = proto::UserKey {
            user_id: vec![1; 16],
            ..Default::default()
        };
        assert_eq!(verify(&ring, &key, "eu-west"), Err(CryptoError::Integrity));
    }

    /// What a relay may change (wraps, the shared MAC) is outside the signature;
    /// everything else is inside.
    #[test]
    fn a_records_signature_leaves_out_only_wraps_and_macs() {
        let rings = rings();
        let mut record = proto::Record {
            id: vec![1; 16],
            version: Some(proto::Version {
                physical_ms: 5,
                logical: 0,
                region: "us-east".into(),
            }),
            info: Some(proto::Envelope {
                ciphertext: vec![9; 32],
                key_check: vec![3; 32],
                ..Default::default()
            }),
            ..Default::default()
        };
        sign(&rings[2], &mut record);
        let mut relayed = record.clone();
        let env = relayed.info.as_mut().unwrap();
        env.keys.push(proto::WrappedKey::default());
        env.mac = vec![1; 32];
        relayed.record_mac = vec![2; 32];
        assert_eq!(verify(&rings[0], &relayed, "us-east"), Ok(Verified::Signed));
        for change in [
            |r: &mut proto::Record| r.info.as_mut().unwrap().ciphertext[0] ^= 1,
            |r: &mut proto::Record| r.info.as_mut().unwrap().key_check[0] ^= 1,
            |r: &mut proto::Record| r.status = 2,
            |r: &mut proto::Record| r.tombstone = true,
            |r: &mut proto::Record| r.version.as_mut().unwrap().logical = 1,
        ] {
            let mut altered = record.clone();
            change(&mut altered);
            assert_eq!(
                verify(&rings[0], &altered, "us-east"),
                Err(CryptoError::Integrity)
            );
        }
    }
}
