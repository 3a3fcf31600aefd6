//! Envelope encryption of personal data, user keys, message MACs and sealed secrets.
//!
//! Sealing a record:
//! 1. a fresh 256-bit data key from the system RNG;
//! 2. HKDF-SHA256 derives the AES-256 encryption key from the data key and the user's
//!    key together, and the HMAC-SHA256 key from the data key;
//! 3. the `Info` message is encrypted with AES-256-CBC (PKCS#7, random IV);
//! 4. HMAC-SHA256 over (associated data ‖ IV ‖ ciphertext) — encrypt-then-MAC;
//! 5. the data key is wrapped with AES-256-GCM under the active master key of every
//!    region, each wrap bound to the record id, region and key id.
//!
//! The user's key (a [`proto::UserKey`], one per account) is itself wrapped under
//! every region's master key, but kept apart from the records: in the `user_keys`
//! column family and a compacted Kafka topic. Erasing an account destroys it, and
//! from then on no copy of the account's records (an old SST file, a backup, a Kafka
//! message) can be decrypted, master keys or not: crypto-shredding. The MAC key does
//! not depend on it, so key recovery can re-wrap a record's data key and renew its
//! MAC without the user's key.
//!
//! The associated data covers every field of the record that is stored outside the
//! ciphertext (id, version, format, status, index hashes, password hash, timestamps,
//! merge target, and the id of every wrapped key), so changing any stored byte makes
//! opening fail. Opening checks the MAC in constant time before touching the padding,
//! and every failure after the key lookup is the same [`CryptoError::Integrity`].

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use prost::Message;
use ring::aead::{self, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::hmac;
use zeroize::Zeroizing;

use crate::common::hlc::Version;
use crate::crypto::keyring::{key_id, Keyring, MasterKey, Material};
use crate::crypto::primitives::{derive, random, CryptoError};
use crate::proto;

/// The envelope layout described above (1 was the same without the user's key).
pub const ENVELOPE_FORMAT: u32 = 2;

/// Length of a user key's id.
pub const USER_KEY_ID_LEN: usize = 8;

const IV_LEN: usize = 16;
const MAC_LEN: usize = 32;
const NONCE_LEN: usize = 12;

type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;
type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The canonical associated data of a record: everything stored outside the
/// ciphertext, length-prefixed so no two records share an encoding.
pub fn associated_data(r: &proto::Record) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    put(&mut out, b"authsync/record");
    put(&mut out, &r.id);
    let version = r
        .version
        .as_ref()
        .map(Version::from_proto)
        .unwrap_or_else(|| Version {
            physical_ms: 0,
            logical: 0,
            region: String::new(),
        });
    version.encode_into(&mut out);
    let format = r.info.as_ref().map(|e| e.format).unwrap_or(0);
    out.extend_from_slice(&format.to_be_bytes());
    out.extend_from_slice(&r.status.to_be_bytes());
    put(&mut out, &r.email_index);
    put(&mut out, &r.phone_index);
    put(&mut out, r.secret.as_bytes());
    out.push(u8::from(r.tombstone));
    out.extend_from_slice(&r.created_at_ms.to_be_bytes());
    out.extend_from_slice(&r.updated_at_ms.to_be_bytes());
    put(&mut out, &r.merged_into);
    let keys = r.info.as_ref().map(|e| e.keys.as_slice()).unwrap_or(&[]);
    out.extend_from_slice(&(keys.len() as u32).to_be_bytes());
    for k in keys {
        put(&mut out, k.region.as_bytes());
        put(&mut out, k.key_id.as_bytes());
        out.extend_from_slice(&k.key_version.to_be_bytes());
    }
    put(
        &mut out,
        r.info
            .as_ref()
            .map(|e| e.user_key_id.as_slice())
            .unwrap_or(&[]),
    );
    out
}

fn wrap_aad(record_id: &[u8], region: &str, key_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    put(&mut out, b"authsync/wrap");
    put(&mut out, record_id);
    put(&mut out, region.as_bytes());
    put(&mut out, key_id.as_bytes());
    out
}

fn user_key_aad(user_id: &[u8], user_key_id: &[u8], region: &str, key_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(80);
    put(&mut out, b"authsync/user-key");
    put(&mut out, user_id);
    put(&mut out, user_key_id);
    put(&mut out, region.as_bytes());
    put(&mut out, key_id.as_bytes());
    out
}

fn mac_input(aad: &[u8], iv: &[u8], ct: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(aad.len() + iv.len() + ct.len() + 8);
    out.extend_from_slice(&(aad.len() as u64).to_be_bytes());
    out.extend_from_slice(aad);
    out.extend_from_slice(iv);
    out.extend_from_slice(ct);
    out
}

struct DataKey(Zeroizing<[u8; 32]>);

impl DataKey {
    fn fresh() -> Result<DataKey, CryptoError> {
        Ok(DataKey(Zeroizing::new(random::<32>()?)))
    }
    /// The encryption key: needs the user's key as well as the data key.
    fn enc_key(&self, user: &UserSecret) -> Zeroizing<[u8; 32]> {
        let mut ikm = Zeroizing::new([0u8; 64]);
        ikm[..32].copy_from_slice(self.0.as_ref());
        ikm[32..].copy_from_slice(user.key.as_ref());
        derive(ikm.as_ref(), b"authsync/v2/envelope/enc")
    }
    /// What the signed envelope commits to: a wrap of any other key fails it.
    fn check(&self) -> Vec<u8> {
        derive(self.0.as_ref(), b"authsync/v2/data-key-check").to_vec()
    }
    fn mac_key(&self) -> hmac::Key {
        hmac::Key::new(
            hmac::HMAC_SHA256,
            derive(self.0.as_ref(), b"authsync/v1/envelope/mac").as_ref(),
        )
    }
}

fn gcm_key(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("32-byte AES-256-GCM key"))
}

/// Wraps `key` for each of `regions` with that region's active key, each wrap bound to
/// `aad(region, master key id)`. A region whose key the keyring lacks is reported, so
/// the caller decides whether that is fatal.
fn wrap_all(
    key: &[u8; 32],
    keyring: &Keyring,
    regions: &[String],
    aad: impl Fn(&str, &str) -> Vec<u8>,
) -> Result<Vec<proto::WrappedKey>, CryptoError> {
    let mut out = Vec::with_capacity(regions.len());
    for region in regions {
        let master = keyring
            .active_key(region)
            .ok_or_else(|| CryptoError::NoWrappingKey(region.clone()))?;
        out.push(wrap(master, &aad(region, &master.key_id()), key, keyring)?);
    }
    Ok(out)
}

/// The wrap in `wraps` for this region, opened with the master key version it names.
fn unwrap_own_of(
    wraps: &[proto::WrappedKey],
    keyring: &Keyring,
    aad: impl Fn(&str, &str) -> Vec<u8>,
) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    let owner = keyring.owner();
    let wrapped = wraps
        .iter()
        .find(|k| k.region == owner)
        .ok_or_else(|| CryptoError::NoKeyForRegion(owner.to_string()))?;
    let master = keyring
        .own_key(wrapped.key_version)
        .ok_or_else(|| CryptoError::UnknownMasterKey(key_id(owner, wrapped.key_version)))?;
    unwrap(master, &aad(owner, &wrapped.key_id), wrapped)
}

/// `key` wrapped for `master`, bound to `aad`: to its X25519 public key, or (a format 1
/// AES key) under the key itself, counted and refused once it has made its share of
/// wraps here ([`crate::crypto::wraps`]).
fn wrap(
    master: &MasterKey,
    aad: &[u8],
    key: &[u8; 32],
    keyring: &Keyring,
) -> Result<proto::WrappedKey, CryptoError> {
    let (nonce, ephemeral, kek) = match &master.material {
        Material::Symmetric(secret) => {
            crate::crypto::wraps::count(
                &master.key_id(),
                crate::crypto::wraps::share(keyring.regions().count()),
            )?;
            (random::<NONCE_LEN>()?, Vec::new(), secret.clone())
        }
        Material::Private(_, public) | Material::Public(public) => {
            let one_time = x25519_dalek::StaticSecret::from(random::<32>()?);
            let ephemeral = x25519_dalek::PublicKey::from(&one_time).to_bytes();
            let shared = one_time.diffie_hellman(&x25519_dalek::PublicKey::from(*public));
            if !shared.was_contributory() {
                return Err(CryptoError::Integrity);
            }
            let kek = x25519_kek(shared.as_bytes(), &ephemeral, public);
            ([0; NONCE_LEN], ephemeral.to_vec(), kek)
        }
    };
    let mut buf = key.to_vec();
    gcm_key(&kek)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(aad.to_vec()),
            &mut buf,
        )
        .map_err(|_| CryptoError::Integrity)?;
    Ok(proto::WrappedKey {
        region: master.region.clone(),
        key_id: master.key_id(),
        key_version: master.version,
        nonce: if ephemeral.is_empty() {
            nonce.to_vec()
        } else {
            Vec::new()
        },
        ciphertext: buf,
        ephemeral,
    })
}

/// The wrapping key of an X25519 wrap: HKDF-SHA256 over the shared secret, bound to
/// both public keys (as HPKE's DHKEM binds its `kem_context`). Each wrap has a fresh
/// one-time key, so each wrapping key seals exactly one key and a fixed nonce is safe.
fn x25519_kek(
    shared: &[u8; 32],
    ephemeral: &[u8; 32],
    recipient: &[u8; 32],
) -> Zeroizing<[u8; 32]> {
    let mut label = Vec::with_capacity(96);
    label.extend_from_slice(b"authsync/v2/x25519-wrap");
    label.extend_from_slice(ephemeral);
    label.extend_from_slice(recipient);
    derive(shared, &label)
}

/// The 32-byte key `wrapped` holds, opened with `master` (one of this region's own) and
/// checked against `aad`.
fn unwrap(
    master: &MasterKey,
    aad: &[u8],
    wrapped: &proto::WrappedKey,
) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    if wrapped.key_id != master.key_id() {
        return Err(CryptoError::Integrity);
    }
    let (nonce, kek) = match &master.material {
        Material::Symmetric(secret) if wrapped.ephemeral.is_empty() => {
            let nonce: [u8; NONCE_LEN] = wrapped
                .nonce
                .as_slice()
                .try_into()
                .map_err(|_| CryptoError::Integrity)?;
            (nonce, secret.clone())
        }
        Material::Private(private, public) if wrapped.nonce.is_empty() => {
            let ephemeral: [u8; 32] = wrapped
                .ephemeral
                .as_slice()
                .try_into()
                .map_err(|_| CryptoError::Integrity)?;
            let shared = private.diffie_hellman(&x25519_dalek::PublicKey::from(ephemeral));
            if !shared.was_contributory() {
                return Err(CryptoError::Integrity);
            }
            (
                [0; NONCE_LEN],
                x25519_kek(shared.as_bytes(), &ephemeral, public),
            )
        }
        _ => return Err(CryptoError::Integrity),
    };
    let mut buf = Zeroizing::new(wrapped.ciphertext.clone());
    let plain = gcm_key(&kek)
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(aad.to_vec()),
            buf.as_mut_slice(),
        )
        .map_err(|_| CryptoError::Integrity)?;
    let key: [u8; 32] = plain.try_into().map_err(|_| CryptoError::Integrity)?;
    Ok(Zeroizing::new(key))
}

fn unwrap_own(record: &proto::Record, keyring: &Keyring) -> Result<DataKey, CryptoError> {
    let env = record.info.as_ref().ok_or(CryptoError::Integrity)?;
    let key = unwrap_own_of(&env.keys, keyring, |region, key_id| {
        wrap_aad(&record.id, region, key_id)
    })?;
    Ok(DataKey(key))
}

/// Seals `info` into `record` with a fresh data key wrapped for `regions`, encrypted
/// under a key that also needs `user`'s key. Every other field of `record` must already
/// hold its final value: they are bound into the MAC.
pub fn seal(
    record: &mut proto::Record,
    info: &proto::Info,
    keyring: &Keyring,
    regions: &[String],
    user: &UserSecret,
) -> Result<(), CryptoError> {
    let dk = DataKey::fresh()?;
    let keys = wrap_all(&dk.0, keyring, regions, |region, key_id| {
        wrap_aad(&record.id, region, key_id)
    })?;
    let iv = random::<IV_LEN>()?;
    let plain = Zeroizing::new(info.encode_to_vec());
    let ct = Aes256CbcEnc::new(dk.enc_key(user).as_ref().into(), &iv.into())
        .encrypt_padded_vec_mut::<Pkcs7>(&plain);
    record.info = Some(proto::Envelope {
        format: ENVELOPE_FORMAT,
        iv: iv.to_vec(),
        ciphertext: ct,
        mac: Vec::new(),
        keys,
        user_key_id: user.id.clone(),
        // Only with a signature to carry it: a format 1 node writes what format 1
        // nodes read (they would drop the field, and the MAC with it).
        key_check: keyring.signer().map(|_| dk.check()).unwrap_or_default(),
    });
    finish_mac(record, &dk);
    Ok(())
}

fn finish_mac(record: &mut proto::Record, dk: &DataKey) {
    let aad = associated_data(record);
    let env = record.info.as_mut().expect("envelope set before MAC");
    let tag = hmac::sign(&dk.mac_key(), &mac_input(&aad, &env.iv, &env.ciphertext));
    env.mac = tag.as_ref().to_vec();
}

/// The id of the user key `record` was sealed with (empty for a tombstone).
pub fn user_key_id(record: &proto::Record) -> &[u8] {
    record
        .info
        .as_ref()
        .map(|e| e.user_key_id.as_slice())
        .unwrap_or(&[])
}

/// Opens the envelope of `record` with this region's key and the user's key.
pub fn open(
    record: &proto::Record,
    keyring: &Keyring,
    user: &UserSecret,
) -> Result<proto::Info, CryptoError> {
    let dk = opened_data_key(record, keyring)?;
    let env = record.info.as_ref().ok_or(CryptoError::Integrity)?;
    if env.user_key_id != user.id {
        return Err(CryptoError::Integrity);
    }
    let iv: [u8; IV_LEN] = env
        .iv
        .as_slice()
        .try_into()
        .map_err(|_| CryptoError::Integrity)?;
    let plain = Zeroizing::new(
        Aes256CbcDec::new(dk.enc_key(user).as_ref().into(), &iv.into())
            .decrypt_padded_vec_mut::<Pkcs7>(&env.ciphertext)
            .map_err(|_| CryptoError::Integrity)?,
    );
    proto::Info::decode(plain.as_slice()).map_err(|_| CryptoError::Integrity)
}

/// The data key of `record`, opened with this region's wrap and checked against what
/// the envelope commits to: the signed check value, and the envelope MAC over the
/// wraps' list, the IV and the ciphertext (constant-time, before any padding is looked
/// at). What a relay may change (the wraps, the envelope MAC) is trusted only once this
/// has passed.
fn opened_data_key(record: &proto::Record, keyring: &Keyring) -> Result<DataKey, CryptoError> {
    let dk = unwrap_own(record, keyring)?;
    let env = record.info.as_ref().ok_or(CryptoError::Integrity)?;
    if !key_checks(&env.key_check, &dk.check(), !record.signature.is_empty())
        || env.format != ENVELOPE_FORMAT
        || env.iv.len() != IV_LEN
        || env.mac.len() != MAC_LEN
    {
        return Err(CryptoError::Integrity);
    }
    let aad = associated_data(record);
    hmac::verify(
        &dk.mac_key(),
        &mac_input(&aad, &env.iv, &env.ciphertext),
        &env.mac,
    )
    .map_err(|_| CryptoError::Integrity)?;
    Ok(dk)
}

/// Re-wraps the record's existing data key for `regions` under their active keys —
/// replacing their wraps, adding the missing ones, keeping every other region's — and
/// renews the MAC for the record's current fields. The ciphertext is left as it is:
/// no personal data is decrypted or re-encrypted. Wraps stay in region order, so two
/// regions adding the same wraps list the same regions the same way.
pub fn rewrap(
    record: &mut proto::Record,
    keyring: &Keyring,
    regions: &[String],
) -> Result<(), CryptoError> {
    let dk = unwrap_own(record, keyring)?;
    let env = record.info.as_ref().ok_or(CryptoError::Integrity)?;
    if !key_checks(&env.key_check, &dk.check(), !record.signature.is_empty()) {
        return Err(CryptoError::Integrity);
    }
    let fresh = wrap_all(&dk.0, keyring, regions, |region, key_id| {
        wrap_aad(&record.id, region, key_id)
    })?;
    let env = record.info.as_mut().ok_or(CryptoError::Integrity)?;
    env.keys.retain(|k| !regions.contains(&k.region));
    env.keys.extend(fresh);
    env.keys.sort_by(|a, b| a.region.cmp(&b.region));
    finish_mac(record, &dk);
    Ok(())
}

/// Whether an opened key matches the commitment its signed message carries: required
/// of every signed message, checked whenever present (format 1 wrote none).
fn key_checks(committed: &[u8], opened: &[u8], signed: bool) -> bool {
    if committed.is_empty() {
        !signed
    } else {
        crate::crypto::primitives::ct_eq(committed, opened)
    }
}

fn user_key_check(key: &[u8; 32]) -> Vec<u8> {
    derive(key, b"authsync/v2/user-key-check").to_vec()
}

/// The regions a record's data key is wrapped for.
pub fn wrapped_regions(record: &proto::Record) -> Vec<&str> {
    record
        .info
        .as_ref()
        .map(|e| e.keys.iter().map(|k| k.region.as_str()).collect())
        .unwrap_or_default()
}

/// Whether `incoming` is `current` with its data key wrapped for more regions: the
/// same version and content, only wraps added (key recovery's repair). Such a record
/// replaces the stored one at the same version.
pub fn extends_wraps(
    current: &proto::Record,
    incoming: &proto::Record,
    known: impl Fn(&str) -> bool,
) -> bool {
    let strip = |r: &proto::Record| {
        let mut r = r.clone();
        r.record_mac.clear();
        if let Some(env) = r.info.as_mut() {
            env.keys.clear();
            env.mac.clear();
        }
        r
    };
    if current.info.is_none() || strip(current) != strip(incoming) {
        return false;
    }
    let (have, offered) = (wrapped_regions(current), wrapped_regions(incoming));
    // Only regions of the deployment, each once: made-up wraps would otherwise grow
    // the record without bound, and break its envelope MAC for everyone.
    let distinct: std::collections::BTreeSet<&str> = offered.iter().copied().collect();
    distinct.len() == offered.len()
        && offered.iter().all(|r| known(r))
        && offered.len() > have.len()
        && have.iter().all(|r| offered.contains(r))
}

/// A user's key, opened: what [`seal`] and [`open`] need besides the keyring.
pub struct UserSecret {
    id: Vec<u8>,
    key: Zeroizing<[u8; 32]>,
}

impl UserSecret {
    pub fn id(&self) -> &[u8] {
        &self.id
    }
}

/// A new key for the account `user_id`, wrapped for `regions`, and the key itself.
pub fn new_user_key(
    user_id: &[u8],
    keyring: &Keyring,
    regions: &[String],
) -> Result<(proto::UserKey, UserSecret), CryptoError> {
    let secret = UserSecret {
        id: random::<USER_KEY_ID_LEN>()?.to_vec(),
        key: Zeroizing::new(random::<32>()?),
    };
    let mut wraps = wrap_all(&secret.key, keyring, regions, |region, key_id| {
        user_key_aad(user_id, &secret.id, region, key_id)
    })?;
    wraps.sort_by(|a, b| a.region.cmp(&b.region));
    let key = proto::UserKey {
        user_id: user_id.to_vec(),
        key_id: secret.id.clone(),
        wraps,
        key_check: keyring
            .signer()
            .map(|_| user_key_check(&secret.key))
            .unwrap_or_default(),
        ..Default::default()
    };
    Ok((key, secret))
}

/// Opens `key` with this region's master key.
pub fn open_user_key(key: &proto::UserKey, keyring: &Keyring) -> Result<UserSecret, CryptoError> {
    if key.key_id.len() != USER_KEY_ID_LEN {
        return Err(CryptoError::Integrity);
    }
    let opened = unwrap_own_of(&key.wraps, keyring, |region, key_id| {
        user_key_aad(&key.user_id, &key.key_id, region, key_id)
    })?;
    if !key_checks(
        &key.key_check,
        &user_key_check(&opened),
        !key.signature.is_empty(),
    ) {
        return Err(CryptoError::Integrity);
    }
    Ok(UserSecret {
        id: key.key_id.clone(),
        key: opened,
    })
}

/// Wraps `key` afresh for `regions` under their active master keys, keeping every
/// other region's wrap (key recovery and rotation, as [`rewrap`] does for records).
pub fn rewrap_user_key(
    key: &mut proto::UserKey,
    keyring: &Keyring,
    regions: &[String],
) -> Result<(), CryptoError> {
    let secret = open_user_key(key, keyring)?;
    let fresh = wrap_all(&secret.key, keyring, regions, |region, key_id| {
        user_key_aad(&key.user_id, &key.key_id, region, key_id)
    })?;
    key.wraps.retain(|w| !regions.contains(&w.region));
    key.wraps.extend(fresh);
    key.wraps.sort_by(|a, b| a.region.cmp(&b.region));
    Ok(())
}

/// Sets the envelope's check value from the record's data key, opened here: what a
/// record sealed by a format 1 node lacks before its writer signs it.
pub fn set_key_check(record: &mut proto::Record, keyring: &Keyring) -> Result<(), CryptoError> {
    let dk = unwrap_own(record, keyring)?;
    record
        .info
        .as_mut()
        .ok_or(CryptoError::Integrity)?
        .key_check = dk.check();
    Ok(())
}

/// Sets `key`'s check value from the key itself, opened here: what a format 1 key
/// lacks before its maker signs it.
pub fn set_user_key_check(key: &mut proto::UserKey, keyring: &Keyring) -> Result<(), CryptoError> {
    let secret = open_user_key(key, keyring)?;
    key.key_check = user_key_check(&secret.key);
    Ok(())
}

/// `local`, written before signatures, with the check value and signature its maker
/// added since (`incoming`, whose signature the caller has verified) and the wraps
/// either holds. `None` unless `incoming` is the same key, signed.
pub fn adopt_signature(
    local: &proto::UserKey,
    incoming: &proto::UserKey,
) -> Option<proto::UserKey> {
    if !local.signature.is_empty()
        || incoming.signature.is_empty()
        || local.user_id != incoming.user_id
        || local.key_id != incoming.key_id
    {
        return None;
    }
    let mut signed = local.clone();
    signed.key_check.clone_from(&incoming.key_check);
    signed.signature.clone_from(&incoming.signature);
    signed.signer.clone_from(&incoming.signer);
    Some(merge_user_key(&signed, incoming).unwrap_or(signed))
}

/// Whether two records hold the same content, whatever their wraps, MACs, signatures
/// and key check values: a record written before signatures and the same record
/// signed since.
pub fn same_content(a: &proto::Record, b: &proto::Record) -> bool {
    let strip = |r: &proto::Record| {
        let mut r = r.clone();
        r.record_mac.clear();
        r.signature.clear();
        r.signer.clear();
        if let Some(env) = r.info.as_mut() {
            env.keys.clear();
            env.mac.clear();
            env.key_check.clear();
        }
        r
    };
    strip(a) == strip(b)
}

/// Checks this region's wrap of `record`'s data key, if it has one: it must open to the
/// key the envelope's check value commits to, and that key must verify the envelope
/// MAC. Anyone can wrap to a public key, and a relay can rewrite the wraps and the
/// envelope MAC, so neither is trusted until it has passed here.
pub fn check_own_wrap(record: &proto::Record, keyring: &Keyring) -> Result<(), CryptoError> {
    if wrap_for(record, keyring.owner()).is_none() || record.tombstone {
        return Ok(());
    }
    opened_data_key(record, keyring).map(drop)
}

/// Whether this region can open `record` (its wrap opens and the envelope verifies):
/// false for a tombstone, a record without a wrap for this region, or one that fails.
pub fn opens_here(record: &proto::Record, keyring: &Keyring) -> bool {
    wrap_for(record, keyring.owner()).is_some()
        && !record.tombstone
        && opened_data_key(record, keyring).is_ok()
}

/// [`check_own_wrap`] for a user key.
pub fn check_own_user_key_wrap(key: &proto::UserKey, keyring: &Keyring) -> Result<(), CryptoError> {
    if !key.wraps.iter().any(|w| w.region == keyring.owner()) {
        return Ok(());
    }
    open_user_key(key, keyring).map(drop)
}

/// The wrap of `record`'s data key for `region`, if any.
pub fn wrap_for<'a>(record: &'a proto::Record, region: &str) -> Option<&'a proto::WrappedKey> {
    record
        .info
        .as_ref()
        .and_then(|e| e.keys.iter().find(|k| k.region == region))
}

/// `local` with what `incoming` adds: for each region the wrap under the newer master
/// key version. `None` when it adds nothing, or is another key (the first key of an
/// account stays its key). Each wrap is authenticated on its own when opened, so the
/// union is as trustworthy as its parts.
pub fn merge_user_key(local: &proto::UserKey, incoming: &proto::UserKey) -> Option<proto::UserKey> {
    if local.user_id != incoming.user_id
        || local.key_id != incoming.key_id
        || local.key_check != incoming.key_check
    {
        return None;
    }
    let mut merged = local.clone();
    // Its maker's signature, added since (the caller has verified it).
    let mut changed = merged.signature.is_empty() && !incoming.signature.is_empty();
    if changed {
        merged.signature.clone_from(&incoming.signature);
        merged.signer.clone_from(&incoming.signer);
    }
    for wrap in &incoming.wraps {
        match merged.wraps.iter_mut().find(|w| w.region == wrap.region) {
            Some(w) if w.key_version >= wrap.key_version => {}
            Some(w) => {
                *w = wrap.clone();
                changed = true;
            }
            None => {
                merged.wraps.push(wrap.clone());
                changed = true;
            }
        }
    }
    merged.wraps.sort_by(|a, b| a.region.cmp(&b.region));
    changed.then_some(merged)
}

/// A protobuf message that carries its own MAC in one of its fields.
pub trait Authenticated: Message + Clone {
    /// The HKDF label of its MAC key: one per type, so that no type's tag passes as
    /// another's.
    const LABEL: &'static [u8];
    fn mac_field(&mut self) -> &mut Vec<u8>;
}

impl Authenticated for proto::Record {
    const LABEL: &'static [u8] = b"authsync/v1/record-mac";
    fn mac_field(&mut self) -> &mut Vec<u8> {
        &mut self.record_mac
    }
}

impl Authenticated for proto::Entry {
    const LABEL: &'static [u8] = b"authsync/v1/entry-mac";
    fn mac_field(&mut self) -> &mut Vec<u8> {
        &mut self.mac
    }
}

impl Authenticated for proto::UserKey {
    const LABEL: &'static [u8] = b"authsync/v1/user-key-mac";
    fn mac_field(&mut self) -> &mut Vec<u8> {
        &mut self.mac
    }
}

/// HMAC-SHA256 over a message's encoding with its MAC field empty, under a key
/// derived from the index key, which every region holds: what lets a region check a
/// record (tombstones included), an entry or a user key it cannot open.
pub struct MessageMac<M> {
    key: hmac::Key,
    message: std::marker::PhantomData<fn(&M)>,
}

impl<M: Authenticated> MessageMac<M> {
    pub fn new(index_key: &[u8; 32]) -> MessageMac<M> {
        MessageMac {
            key: hmac::Key::new(hmac::HMAC_SHA256, derive(index_key, M::LABEL).as_ref()),
            message: std::marker::PhantomData,
        }
    }

    /// Sets the MAC field over every other field.
    pub fn sign(&self, message: &mut M) {
        message.mac_field().clear();
        let tag = hmac::sign(&self.key, &message.encode_to_vec());
        *message.mac_field() = tag.as_ref().to_vec();
    }

    /// Checks the MAC field in constant time.
    pub fn verify(&self, message: &M) -> Result<(), CryptoError> {
        let mut unsigned = message.clone();
        let tag = std::mem::take(unsigned.mac_field());
        hmac::verify(&self.key, &unsigned.encode_to_vec(), &tag).map_err(|_| CryptoError::Integrity)
    }
}

pub type RecordMac = MessageMac<proto::Record>;
pub type EntryMac = MessageMac<proto::Entry>;
pub type UserKeyMac = MessageMac<proto::UserKey>;

fn secret_aad(purpose: &[u8], region: &str, key_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    put(&mut out, b"authsync/secret");
    put(&mut out, purpose);
    put(&mut out, region.as_bytes());
    put(&mut out, key_id.as_bytes());
    out
}

/// Seals a 32-byte secret of this region (a signing key's seed) under its active
/// master key, bound to `purpose` (what the secret is for, say its key id).
pub fn seal_secret(
    keyring: &Keyring,
    purpose: &[u8],
    secret: &[u8; 32],
) -> Result<proto::WrappedKey, CryptoError> {
    let owner = keyring.owner();
    let master = keyring
        .active_key(owner)
        .ok_or_else(|| CryptoError::NoWrappingKey(owner.to_string()))?;
    wrap(
        master,
        &secret_aad(purpose, owner, &master.key_id()),
        secret,
        keyring,
    )
}

/// Opens what [`seal_secret`] sealed for the same `purpose`, with any master key
/// version this region still holds.
pub fn open_secret(
    keyring: &Keyring,
    purpose: &[u8],
    sealed: &proto::WrappedKey,
) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    let owner = keyring.owner();
    if sealed.region != owner {
        return Err(CryptoError::NoKeyForRegion(owner.to_string()));
    }
    let master = keyring
        .own_key(sealed.key_version)
        .ok_or_else(|| CryptoError::UnknownMasterKey(key_id(owner, sealed.key_version)))?;
    unwrap(master, &secret_aad(purpose, owner, &sealed.key_id), sealed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keyring;

    fn regions() -> Vec<String> {
        vec!["af-south".into(), "eu-west".into(), "us-east".into()]
    }

    /// A key for the sample record's account, wrapped for every region.
    fn user_key(rings: &[Keyring]) -> proto::UserKey {
        new_user_key(&[7; 16], &rings[0], &regions()).unwrap().0
    }

    fn secret(key: &proto::UserKey, ring: &Keyring) -> UserSecret {
        open_user_key(key, ring).unwrap()
    }

    fn open_with(
        record: &proto::Record,
        ring: &Keyring,
        key: &proto::UserKey,
    ) -> Result<proto::Info, CryptoError> {
        open(record, ring, &open_user_key(key, ring)?)
    }

    /// The sample record sealed by `ring` for `regions` under the user key `uk`.
    fn sealed_sample(
        ring: &Keyring,
        regions: &[String],
        uk: &proto::UserKey,
    ) -> (proto::Record, proto::Info) {
        let (mut record, info) = sample();
        seal(&mut record, &info, ring, regions, &secret(uk, ring)).unwrap();
        (record, info)
    }

    fn sample() -> (proto::Record, proto::Info) {
        let record = proto::Record {
            id: vec![7; 16],
            version: Some(proto::Version {
                physical_ms: 1_700_000_000_000,
                logical: 3,
                region: "eu-west".into(),
            }),
            status: proto::Status::Active as i32,
            email_index: vec![1; 32],
            secret: "$argon2id$v=19$...".into(),
            created_at_ms: 1,
            updated_at_ms: 2,
            ..Default::default()
        };
        let mut info = proto::Info {
            email: "ada@example.com".into(),
            phone: "+14155552671".into(),
            ..Default::default()
        };
        info.profile.insert("given_name".into(), "Ada".into());
        (record, info)
    }

    #[test]
    fn a_sealed_secret_opens_only_in_its_region_for_its_purpose_across_rotations() {
        let mut rings = keyring::init(&regions()).unwrap();
        let secret = [9u8; 32];
        let sealed = seal_secret(&rings[0], b"kid-1", &secret).unwrap();
        assert!(!sealed.ciphertext.windows(8).any(|w| w == [9u8; 8]));
        assert_eq!(*open_secret(&rings[0], b"kid-1", &sealed).unwrap(), secret);
        assert!(
            open_secret(&rings[0], b"kid-2", &sealed).is_err(),
            "bound to its purpose"
        );
        assert!(
            open_secret(&rings[1], b"kid-1", &sealed).is_err(),
            "another region"
        );
        let mut altered = sealed.clone();
        altered.ciphertext[0] ^= 1;
        assert!(open_secret(&rings[0], b"kid-1", &altered).is_err());
        // After a master key rotation the old version still opens it.
        rings[0].rotate().unwrap();
        assert_eq!(*open_secret(&rings[0], b"kid-1", &sealed).unwrap(), secret);
    }

    #[test]
    fn every_region_opens_what_one_region_sealed() {
        let rings = keyring::init(&regions()).unwrap();
        let uk = user_key(&rings);
        let (record, info) = sealed_sample(&rings[1], &regions(), &uk);
        for ring in &rings {
            assert_eq!(
                open_with(&record, ring, &uk).unwrap(),
                info,
                "{}",
                ring.owner()
            );
        }
        let ct = &record.info.as_ref().unwrap().ciphertext;
        assert!(!ct.windows(3).any(|w| w == b"Ada"));
    }

    #[test]
    fn each_seal_uses_a_fresh_data_key_and_iv() {
        let rings = keyring::init(&regions()).unwrap();
        let uk = user_key(&rings);
        let (mut a, info) = sample();
        let mut b = a.clone();
        seal(
            &mut a,
            &info,
            &rings[0],
            &regions(),
            &secret(&uk, &rings[0]),
        )
        .unwrap();
        seal(
            &mut b,
            &info,
            &rings[0],
            &regions(),
            &secret(&uk, &rings[0]),
        )
        .unwrap();
        let (ea, eb) = (a.info.unwrap(), b.info.unwrap());
        assert_ne!(ea.iv, eb.iv);
        assert_ne!(ea.ciphertext, eb.ciphertext);
        assert_ne!(ea.keys[0].ciphertext, eb.keys[0].ciphertext);
    }

    #[test]
    fn changing_any_bound_field_fails_with_one_error() {
        let rings = keyring::init(&regions()).unwrap();
        let uk = user_key(&rings);
        let (record, _) = sealed_sample(&rings[0], &regions(), &uk);
        let mut cases: Vec<proto::Record> = Vec::new();
        let mut r = record.clone();
        r.status = proto::Status::Locked as i32;
        cases.push(r);
        let mut r = record.clone();
        r.version.as_mut().unwrap().logical += 1;
        cases.push(r);
        let mut r = record.clone();
        r.email_index[0] ^= 1;
        cases.push(r);
        let mut r = record.clone();
        r.secret.push('x');
        cases.push(r);
        let mut r = record.clone();
        r.info.as_mut().unwrap().ciphertext[5] ^= 0x80;
        cases.push(r);
        let mut r = record.clone();
        r.info.as_mut().unwrap().iv[0] ^= 1;
        cases.push(r);
        let mut r = record.clone();
        r.info.as_mut().unwrap().keys[0].ciphertext[0] ^= 1;
        cases.push(r);
        let mut r = record.clone();
        r.id[0] ^= 1;
        cases.push(r);
        for (i, case) in cases.iter().enumerate() {
            assert_eq!(
                open_with(case, &rings[0], &uk),
                Err(CryptoError::Integrity),
                "case {i}"
            );
        }
    }

    #[test]
    fn a_region_without_its_wrapped_key_says_so() {
        let rings = keyring::init(&regions()).unwrap();
        let uk = user_key(&rings);
        let (record, _) = sealed_sample(&rings[0], &regions()[..2], &uk);
        assert_eq!(
            open_with(&record, &rings[2], &uk),
            Err(CryptoError::NoKeyForRegion("us-east".into()))
        );
    }

    /// `ring` edited to claim `region` as its owner, as whoever holds `ring`'s file
    /// would: `None` when the file holds nothing to open `region`'s wraps with.
    fn claim_as(ring: &Keyring, region: &str) -> Option<Keyring> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        ring.save(&path).unwrap();
        let mut file: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        file["owner"] = region.into();
        file["regions"][region]["role"] = "own".into();
        file["regions"][ring.owner()]["role"] = "peer".into();
        Keyring::parse(&file.to_string()).ok()
    }

    /// The attack: eu-west's operator, or whoever takes eu-west's node, edits its keyring
    /// to claim af-south and opens what is wrapped for af-south alone. A format 1 file
    /// holds af-south's AES key, so it works there; a format 2 file holds af-south's
    /// public key only.
    #[test]
    fn one_regions_keyring_cannot_open_another_regions_wraps() {
        let legacy = keyring::init_legacy(&regions()).unwrap();
        let (key, made) = new_user_key(&[7; 16], &legacy[0], &regions()).unwrap();
        let forged = claim_as(&legacy[1], "af-south").expect("format 1 holds af-south's key");
        assert_eq!(open_user_key(&key, &forged).unwrap().key[..], made.key[..]);

        let rings = keyring::init(&regions()).unwrap();
        let key = user_key(&rings);
        assert!(claim_as(&rings[1], "af-south").is_none());
        // Each wrap opens in its own region only.
        for (i, ring) in rings.iter().enumerate() {
            let theirs = proto::UserKey {
                wraps: key
                    .wraps
                    .iter()
                    .filter(|w| w.region != ring.owner())
                    .cloned()
                    .collect(),
                ..key.clone()
            };
            assert!(open_user_key(&theirs, ring).is_err(), "ring {i}");
            assert!(open_user_key(&key, ring).is_ok(), "ring {i}");
        }
        // A one-time key of low order (which would make the shared secret known) is
        // refused.
        let mut low = key.clone();
        for w in &mut low.wraps {
            w.ephemeral = vec![0; 32];
        }
        assert!(matches!(
            open_user_key(&low, &rings[0]),
            Err(CryptoError::Integrity)
        ));
    }

    /// Records and user keys sealed before `keys upgrade` open after it, key recovery's
    /// re-wrap moves them onto the X25519 version, and new seals use it alone.
    #[test]
    fn what_format_1_sealed_opens_after_the_upgrade_and_moves_to_x25519() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = keyring::init_legacy(&regions()).unwrap();
        for ring in &legacy {
            ring.save(&keyring::keyring_path(dir.path(), ring.owner()))
                .unwrap();
        }
        let mut uk = new_user_key(&[7; 16], &legacy[0], &regions()).unwrap().0;
        let (mut record, info) = sealed_sample(&legacy[1], &regions(), &uk);
        keyring::upgrade_in_dir(dir.path()).unwrap();
        let rings: Vec<Keyring> = regions()
            .iter()
            .map(|r| keyring::load_own(dir.path(), r).unwrap().1)
            .collect();
        for ring in &rings {
            assert_eq!(open_with(&record, ring, &uk).unwrap(), info);
        }
        rewrap(&mut record, &rings[1], &["eu-west".to_string()]).unwrap();
        rewrap_user_key(&mut uk, &rings[1], &["eu-west".to_string()]).unwrap();
        let own = |wraps: &[proto::WrappedKey]| {
            let w = wraps
                .iter()
                .find(|k| k.region == "eu-west")
                .unwrap()
                .clone();
            (w.key_version, w.ephemeral.len(), w.nonce.len())
        };
        assert_eq!(own(&record.info.as_ref().unwrap().keys), (2, 32, 0));
        assert_eq!(own(&uk.wraps), (2, 32, 0));
        for ring in &rings {
            assert_eq!(open_with(&record, ring, &uk).unwrap(), info);
        }
        let fresh = new_user_key(&[8; 16], &rings[2], &regions()).unwrap().0;
        assert!(fresh
            .wraps
            .iter()
            .all(|w| w.key_version == 2 && w.ephemeral.len() == 32));
    }

    #[test]
    fn rewrap_moves_to_the_new_master_key_without_reencrypting() {
        let mut rings = keyring::init(&regions()).unwrap();
        let uk = user_key(&rings);
        let (mut record, info) = sealed_sample(&rings[1], &regions(), &uk);
        let ct_before = record.info.as_ref().unwrap().ciphertext.clone();
        rings[1].rotate().unwrap();
        record.version.as_mut().unwrap().logical += 1;
        rewrap(&mut record, &rings[1], &regions()).unwrap();
        let env = record.info.as_ref().unwrap();
        assert_eq!(env.ciphertext, ct_before);
        let own = env.keys.iter().find(|k| k.region == "eu-west").unwrap();
        assert_eq!(own.key_version, 2);
        assert_eq!(open_with(&record, &rings[1], &uk).unwrap(), info);
        assert_eq!(open_with(&record, &rings[0], &uk).unwrap(), info);
    }

    #[test]
    fn adding_wraps_keeps_the_others_and_is_recognised_as_an_extension() {
        let rings = keyring::init(&regions()).unwrap();
        let uk = user_key(&rings);
        let (mut record, info) = sample();
        let without_west = vec!["af-south".to_string(), "us-east".to_string()];
        seal(
            &mut record,
            &info,
            &rings[0],
            &without_west,
            &secret(&uk, &rings[0]),
        )
        .unwrap();
        assert!(open_with(&record, &rings[1], &uk).is_err());
        let mut repaired = record.clone();
        rewrap(&mut repaired, &rings[2], &["eu-west".to_string()]).unwrap();
        assert_eq!(
            wrapped_regions(&repaired),
            vec!["af-south", "eu-west", "us-east"]
        );
        // The other regions' wraps are the ones they had.
        let wrap = |r: &proto::Record, region: &str| {
            r.info
                .as_ref()
                .unwrap()
                .keys
                .iter()
                .find(|k| k.region == region)
                .cloned()
        };
        assert_eq!(wrap(&repaired, "af-south"), wrap(&record, "af-south"));
        for ring in &rings {
            assert_eq!(open_with(&repaired, ring, &uk).unwrap(), info);
        }
        let known = |r: &str| regions().iter().any(|k| k == r);
        assert!(extends_wraps(&record, &repaired, known));
        assert!(!extends_wraps(&repaired, &record, known), "fewer wraps");
        assert!(!extends_wraps(&repaired, &repaired, known), "nothing added");
        let mut changed = repaired.clone();
        changed.status += 1;
        assert!(
            !extends_wraps(&record, &changed, known),
            "content changed too"
        );
        // Wraps for a region the deployment does not have, or a region twice, are not
        // an extension: a relay would grow the record without bound.
        let mut made_up = repaired.clone();
        let mut extra = wrap(&repaired, "us-east").unwrap();
        extra.region = "zz-made-up".into();
        made_up.info.as_mut().unwrap().keys.push(extra);
        assert!(!extends_wraps(&repaired, &made_up, known), "unknown region");
        let mut twice = record.clone();
        let extra = wrap(&record, "us-east").unwrap();
        twice.info.as_mut().unwrap().keys.push(extra);
        assert!(!extends_wraps(&record, &twice, known), "a region twice");
    }

    #[test]
    fn without_its_user_key_a_record_stays_ciphertext_whatever_master_keys_are_held() {
        let rings = keyring::init(&regions()).unwrap();
        let uk = user_key(&rings);
        let (record, info) = sealed_sample(&rings[0], &regions(), &uk);
        assert_eq!(user_key_id(&record), uk.key_id.as_slice());
        // Another account's key, even with the right id forced onto it, does not open
        // it: the encryption key derives from the user key's bytes.
        let other = new_user_key(&[7; 16], &rings[0], &regions()).unwrap().0;
        assert_eq!(
            open_with(&record, &rings[0], &other),
            Err(CryptoError::Integrity)
        );
        let mut forged = other.clone();
        forged.key_id = uk.key_id.clone();
        assert!(open_with(&record, &rings[0], &forged).is_err());
        // Naming another key in the envelope breaks its MAC.
        let mut renamed = record.clone();
        renamed.info.as_mut().unwrap().user_key_id = other.key_id.clone();
        assert_eq!(
            open_with(&renamed, &rings[0], &other),
            Err(CryptoError::Integrity)
        );
        // Key recovery re-wraps the data key without the user key.
        let mut rewrapped = record.clone();
        rewrap(&mut rewrapped, &rings[1], &["eu-west".to_string()]).unwrap();
        assert_eq!(open_with(&rewrapped, &rings[1], &uk).unwrap(), info);
    }

    #[test]
    fn a_user_key_opens_in_each_region_it_is_wrapped_for_and_merges_by_union() {
        let mut rings = keyring::init(&regions()).unwrap();
        let two = vec!["af-south".to_string(), "eu-west".to_string()];
        let (short, made) = new_user_key(&[7; 16], &rings[0], &two).unwrap();
        assert_eq!(short.key_id.len(), USER_KEY_ID_LEN);
        for ring in &rings[..2] {
            assert_eq!(open_user_key(&short, ring).unwrap().key[..], made.key[..]);
        }
        assert_eq!(
            open_user_key(&short, &rings[2]).err(),
            Some(CryptoError::NoKeyForRegion("us-east".into()))
        );
        // Bound to its account and key id.
        let mut moved = short.clone();
        moved.user_id = vec![8; 16];
        assert_eq!(
            open_user_key(&moved, &rings[0]).err(),
            Some(CryptoError::Integrity)
        );
        // Key recovery adds the missing region; merging adds it to the short copy,
        // and merging again adds nothing.
        let mut full = short.clone();
        rewrap_user_key(&mut full, &rings[1], &["us-east".to_string()]).unwrap();
        assert_eq!(
            open_user_key(&full, &rings[2]).unwrap().key[..],
            made.key[..]
        );
        let merged = merge_user_key(&short, &full).expect("adds us-east");
        assert_eq!(merged.wraps, full.wraps);
        assert_eq!(merge_user_key(&merged, &short), None);
        assert_eq!(merge_user_key(&merged, &full), None);
        // A rotated master key replaces that region's wrap.
        rings[0].rotate().unwrap();
        let mut rotated = merged.clone();
        rewrap_user_key(&mut rotated, &rings[0], &["af-south".to_string()]).unwrap();
        let newer = merge_user_key(&merged, &rotated).expect("newer af-south wrap");
        assert_eq!(newer.wraps[0].key_version, 2);
        assert_eq!(
            open_user_key(&newer, &rings[0]).unwrap().key[..],
            made.key[..]
        );
        // Another key for the same account is not merged into the first.
        let (second, _) = new_user_key(&[7; 16], &rings[0], &regions()).unwrap();
        assert_eq!(merge_user_key(&merged, &second), None);
        // The MAC covers every field.
        let mac = UserKeyMac::new(&[3; 32]);
        let mut signed = merged.clone();
        mac.sign(&mut signed);
        assert!(mac.verify(&signed).is_ok());
        signed.wraps[1].ciphertext[0] ^= 1;
        assert_eq!(mac.verify(&signed), Err(CryptoError::Integrity));
    }

    #[test]
    fn record_mac_covers_tombstones_and_every_field() {
        let rings = keyring::init(&regions()).unwrap();
        let mac = RecordMac::new(rings[0].index_key());
        let mut tomb = proto::Record {
            id: vec![1; 16],
            version: Some(proto::Version {
                physical_ms: 9,
                logical: 0,
                region: "eu-west".into(),
            }),
            tombstone: true,
            ..Default::default()
        };
        mac.sign(&mut tomb);
        RecordMac::new(rings[2].index_key()).verify(&tomb).unwrap();
        let mut older = tomb.clone();
        older.version.as_mut().unwrap().physical_ms = 8;
        assert_eq!(mac.verify(&older), Err(CryptoError::Integrity));
        let mut revived = tomb.clone();
        revived.tombstone = false;
        assert_eq!(mac.verify(&revived), Err(CryptoError::Integrity));
    }

    #[test]
    /// With the keyring: a retired master key version is gone, and what it wrapped
    /// no longer opens.
    fn a_retired_version_is_gone_and_the_active_one_cannot_be_retired() {
        let dir = tempfile::tempdir().unwrap();
        for ring in keyring::init(&regions()).unwrap() {
            ring.save(&keyring::keyring_path(dir.path(), ring.owner()))
                .unwrap();
        }
        let retire = |version| {
            let (path, mut own) = keyring::load_own(dir.path(), "eu-west")?;
            own.retire(version)?;
            own.save(&path)
        };
        let err = retire(1).unwrap_err();
        assert!(err.to_string().contains("is the active key"), "{err}");
        keyring::rotate_in_dir(dir.path(), "eu-west").unwrap();
        let err = retire(7).unwrap_err();
        assert!(err.to_string().contains("no master key v7"), "{err}");
        retire(1).unwrap();
        let own = Keyring::load(&keyring::keyring_path(dir.path(), "eu-west")).unwrap();
        assert!(own.own_key(1).is_none());
        assert_eq!(own.own_versions(), (vec![2], 2));
        // What v1 wrapped no longer opens here.
        let (key, _) =
            new_user_key(&[1; 16], &keyring::init(&regions()).unwrap()[1], &regions()).unwrap();
        let mut wrapped_v1 = key.clone();
        wrapped_v1.wraps.retain(|w| w.region == "eu-west");
        assert!(matches!(
            open_user_key(&wrapped_v1, &own),
            Err(CryptoError::UnknownMasterKey(_))
        ));
    }
}
