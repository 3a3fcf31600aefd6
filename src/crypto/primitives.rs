//! The primitives every other crypto file builds on: the one error type, SHA-256,
//! the system RNG, constant-time comparison and the HKDF expansion that derives
//! every sub-key. Nothing here knows about keyrings or records.

use ring::hkdf::{Salt, HKDF_SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// The record, its envelope or a wrapped key was altered or is malformed. Kept
    /// deliberately uninformative.
    #[error("record failed its integrity check")]
    Integrity,
    /// The envelope holds no data key for this region (written while this region's key
    /// was unavailable); the key recovery sweeper re-wraps it.
    #[error("record has no data key wrapped for region {0}")]
    NoKeyForRegion(String),
    /// Wrapped under a master key version this keyring does not hold.
    #[error("master key {0} is not in this region's keyring")]
    UnknownMasterKey(String),
    #[error("no wrapping key for region {0}")]
    NoWrappingKey(String),
    #[error("system random number generator failed")]
    Random,
    /// This master key has made as many wraps here as its share of AES-GCM's bound
    /// allows (`crate::crypto::wraps`): rotate it.
    #[error("master key {0} has made its share of 2^32 wraps: rotate it (authsync keys rotate)")]
    KeyWornOut(String),
}

/// SHA-256 of `bytes` (API keys and refresh token secrets are stored only as this).
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// `N` bytes from the system's secure random number generator.
pub fn random<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| CryptoError::Random)?;
    Ok(out)
}

/// Constant-time equality of two byte strings (lengths are not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// HKDF-SHA256 expand of `ikm` with a fixed label.
pub fn derive(ikm: &[u8], label: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    Salt::new(HKDF_SHA256, b"authsync")
        .extract(ikm)
        .expand(&[label], HKDF_SHA256)
        .and_then(|okm| okm.fill(out.as_mut()))
        .expect("HKDF-SHA256 yields 32 bytes");
    out
}
