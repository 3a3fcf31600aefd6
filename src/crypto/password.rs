//! Password hashing: current hashes, legacy hashes, and the pepper.
//!
//! New hashes are PHC strings over the *peppered* password, HMAC-SHA256(pepper,
//! password): a stolen database without the keyring cannot be attacked offline.
//! Argon2id at the OWASP parameters (m=19 MiB, t=2, p=1) is the default; PBKDF2-HMAC-
//! SHA256 at 600,000 iterations can be chosen instead. A verified hash whose algorithm
//! or cost differs from the configured one is flagged for rehash.
//!
//! Legacy hashes imported from older systems are verified against the raw password
//! (those systems had no pepper) and replaced by a current hash on the first good
//! login.

use argon2::password_hash::{PasswordHash, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Block, Params};
use base64::engine::general_purpose::{STANDARD as B64, STANDARD_NO_PAD as B64_NOPAD};
use base64::Engine as _;
use md5::Digest as _;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use std::num::NonZeroU32;
use std::time::Duration;
use zeroize::Zeroizing;

use crate::common::config::{invalid, Invalid};
use serde::{Deserialize, Serialize};

pub const ARGON2_M_KIB: u32 = 19 * 1024;
pub const ARGON2_T: u32 = 2;
pub const ARGON2_P: u32 = 1;
pub const PBKDF2_ITERATIONS: u32 = 600_000;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("hash the password: {0}")]
    Hash(String),
    #[error("system random number generator failed")]
    Random,
}

/// Result of checking a password against a stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    No,
    Yes,
    /// Correct, but stored with another algorithm or cost: store a new hash.
    YesRehash,
}

/// Hashes and verifies current passwords.
pub struct Passwords {
    algorithm: PasswordAlgorithm,
    pepper: hmac::Key,
    /// A hash of a random password, verified when the login is unknown so that an
    /// unknown login costs the same as a wrong password.
    dummy: String,
    dummy_cost: Duration,
    gate: HashGate,
}

/// A counting semaphore for the blocking threads that hash: at most one hash per core
/// runs at a time, and the rest wait their turn asleep. Each slot keeps its Argon2
/// working memory between hashes.
///
/// Without it every concurrent login or create runs its own hash. On two cores, eight
/// hashes at once each take four times as long, hold 19 MiB apiece, and take the CPU from
/// the work that is cheap and should stay fast (profile writes, reads, applying
/// replicated events) in proportion to their number. With it, hashes queue behind each
/// other at the same total rate, and the other work competes with one hash per core.
///
/// Reusing the memory saves what a fresh 19 MiB costs on every hash: mapping it, a
/// page fault and a zeroed page for each 4 KiB, and unmapping it (about a quarter of
/// a login's CPU time in a profile). It is wiped after each use.
struct HashGate {
    free: parking_lot::Mutex<usize>,
    freed: parking_lot::Condvar,
    memory: parking_lot::Mutex<Vec<Vec<Block>>>,
}

impl HashGate {
    fn new(slots: usize) -> HashGate {
        HashGate {
            free: parking_lot::Mutex::new(slots.max(1)),
            freed: parking_lot::Condvar::new(),
            memory: parking_lot::Mutex::new(Vec::new()),
        }
    }

    /// Runs `f` in a free slot, with that slot's Argon2 memory (`ARGON2_M_KIB` blocks).
    /// The time waited and the time spent are added to this thread's [`spent`].
    fn run<T>(&self, f: impl FnOnce(&mut [Block]) -> T) -> T {
        let asked = std::time::Instant::now();
        {
            let mut free = self.free.lock();
            while *free == 0 {
                self.freed.wait(&mut free);
            }
            *free -= 1;
        }
        let started = std::time::Instant::now();
        struct Release<'a>(&'a HashGate, Vec<Block>);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.1.fill(Block::default());
                self.0.memory.lock().push(std::mem::take(&mut self.1));
                *self.0.free.lock() += 1;
                self.0.freed.notify_one();
            }
        }
        let memory = self
            .memory
            .lock()
            .pop()
            .unwrap_or_else(|| vec![Block::default(); ARGON2_M_KIB as usize]);
        let mut slot = Release(self, memory);
        let out = f(&mut slot.1);
        SPENT.with(|spent| {
            let mut now = spent.get();
            now.waited += started.duration_since(asked);
            now.hashed += started.elapsed();
            now.slots += 1;
            spent.set(now);
        });
        out
    }
}

/// Password work done by one thread so far ([`spent`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spent {
    /// Waiting for a hashing slot.
    pub waited: Duration,
    /// Hashing.
    pub hashed: Duration,
    /// Times a hashing slot was taken (one per login).
    pub slots: u64,
    /// Hashes and verifications made, current and legacy.
    pub checks: u64,
}

/// Counts one hash or verification in this thread's [`spent`].
fn checked() {
    SPENT.with(|s| {
        let mut now = s.get();
        now.checks += 1;
        s.set(now);
    });
}

impl std::ops::Sub for Spent {
    type Output = Spent;
    fn sub(self, earlier: Spent) -> Spent {
        Spent {
            waited: self.waited.saturating_sub(earlier.waited),
            hashed: self.hashed.saturating_sub(earlier.hashed),
            slots: self.slots.saturating_sub(earlier.slots),
            checks: self.checks.saturating_sub(earlier.checks),
        }
    }
}

thread_local! {
    static SPENT: std::cell::Cell<Spent> = const {
        std::cell::Cell::new(Spent {
            waited: Duration::ZERO,
            hashed: Duration::ZERO,
            slots: 0,
            checks: 0,
        })
    };
}

/// What this thread has spent on password work so far. Callers take the difference
/// around a piece of work, so that one login is measured and reported as one, however
/// many hashes it verified.
pub fn spent() -> Spent {
    SPENT.with(|s| s.get())
}

/// Records one piece of password work in the hash metrics: one sample of waiting and
/// one of hashing.
pub fn record_spent(waited: Duration, hashed: Duration) {
    metrics::histogram!(crate::common::metrics::PASSWORD_HASH_WAIT_SECONDS)
        .record(waited.as_secs_f64());
    metrics::histogram!(crate::common::metrics::PASSWORD_HASH_SECONDS).record(hashed.as_secs_f64());
}

impl Passwords {
    pub fn new(
        algorithm: PasswordAlgorithm,
        pepper: &[u8; 32],
    ) -> Result<Passwords, PasswordError> {
        let mut p = Passwords {
            algorithm,
            pepper: hmac::Key::new(hmac::HMAC_SHA256, pepper),
            dummy: String::new(),
            dummy_cost: Duration::ZERO,
            gate: HashGate::new(
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1),
            ),
        };
        let mut random = [0u8; 24];
        SystemRandom::new()
            .fill(&mut random)
            .map_err(|_| PasswordError::Random)?;
        let started = std::time::Instant::now();
        p.dummy = p.hash(&B64.encode(random))?;
        p.dummy_cost = started.elapsed();
        Ok(p)
    }

    pub fn algorithm(&self) -> PasswordAlgorithm {
        self.algorithm
    }

    fn pepper(&self, password: &str) -> Zeroizing<Vec<u8>> {
        // Hashers take bytes; the HMAC output is base64-encoded so PBKDF2 and Argon2
        // both see printable input, as some verifiers elsewhere expect.
        let tag = hmac::sign(&self.pepper, password.as_bytes());
        Zeroizing::new(B64.encode(tag.as_ref()).into_bytes())
    }

    /// A PHC string for `password` with the configured algorithm, recorded in the
    /// hash metrics.
    pub fn hash(&self, password: &str) -> Result<String, PasswordError> {
        let before = spent();
        let out = self.gate.run(|memory| self.hash_now(password, memory));
        let this = spent() - before;
        record_spent(this.waited, this.hashed);
        out
    }

    fn hash_now(&self, password: &str, memory: &mut [Block]) -> Result<String, PasswordError> {
        checked();
        let peppered = self.pepper(password);
        let mut salt = [0u8; 16];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| PasswordError::Random)?;
        match self.algorithm {
            PasswordAlgorithm::Argon2id => {
                let mut out = [0u8; 32];
                argon2_current()
                    .hash_password_into_with_memory(&peppered, &salt, &mut out, memory)
                    .map_err(|e| PasswordError::Hash(e.to_string()))?;
                Ok(format!(
                    "$argon2id$v=19$m={ARGON2_M_KIB},t={ARGON2_T},p={ARGON2_P}${}${}",
                    B64_NOPAD.encode(salt),
                    B64_NOPAD.encode(out)
                ))
            }
            PasswordAlgorithm::Pbkdf2Sha256 => {
                let mut out = [0u8; 32];
                ring::pbkdf2::derive(
                    ring::pbkdf2::PBKDF2_HMAC_SHA256,
                    NonZeroU32::new(PBKDF2_ITERATIONS).expect("non-zero"),
                    &salt,
                    &peppered,
                    &mut out,
                );
                Ok(format!(
                    "$pbkdf2-sha256$i={PBKDF2_ITERATIONS},l=32${}${}",
                    B64_NOPAD.encode(salt),
                    B64_NOPAD.encode(out)
                ))
            }
        }
    }

    /// Checks `password` against a PHC string made by [`Passwords::hash`].
    pub fn verify(&self, password: &str, phc: &str) -> Verified {
        self.gate
            .run(|memory| self.verify_now(password, phc, memory))
    }

    fn verify_now(&self, password: &str, phc: &str, memory: &mut [Block]) -> Verified {
        checked();
        let peppered = self.pepper(password);
        let (ok, current) = if phc.starts_with("$argon2id$") {
            let ok = verify_argon2_in(&peppered, phc, memory);
            let current = self.algorithm == PasswordAlgorithm::Argon2id
                && PasswordHash::new(phc)
                    .ok()
                    .and_then(|h| Params::try_from(&h).ok())
                    .is_some_and(|p| {
                        p.m_cost() == ARGON2_M_KIB
                            && p.t_cost() == ARGON2_T
                            && p.p_cost() == ARGON2_P
                    });
            (ok, current)
        } else if phc.starts_with("$pbkdf2-sha256$") {
            match verify_pbkdf2_phc(&peppered, phc) {
                Some(iterations) => (
                    true,
                    self.algorithm == PasswordAlgorithm::Pbkdf2Sha256
                        && iterations == PBKDF2_ITERATIONS,
                ),
                None => (false, false),
            }
        } else {
            (false, false)
        };
        match (ok, current) {
            (false, _) => Verified::No,
            (true, true) => Verified::Yes,
            (true, false) => Verified::YesRehash,
        }
    }

    /// Runs `f` in one hashing slot, held throughout: every verification it makes
    /// through the [`Slot`] uses that slot, so a piece of work (one login) waits for a
    /// core once however many hashes it checks.
    pub fn in_slot<T>(&self, f: impl FnOnce(&mut Slot<'_>) -> T) -> T {
        self.gate.run(|memory| {
            f(&mut Slot {
                passwords: self,
                memory,
            })
        })
    }

    /// How long hashing the dummy password took when this was made: what one
    /// verification costs here, about.
    pub fn dummy_cost(&self) -> Duration {
        self.dummy_cost
    }
}

/// A hashing slot held by [`Passwords::in_slot`].
pub struct Slot<'a> {
    passwords: &'a Passwords,
    memory: &'a mut [Block],
}

impl Slot<'_> {
    /// [`Passwords::verify`], in this slot.
    pub fn verify(&mut self, password: &str, phc: &str) -> Verified {
        self.passwords.verify_now(password, phc, self.memory)
    }

    /// Spends the time of one verification on nothing, for unknown logins.
    pub fn verify_dummy(&mut self, password: &str) {
        let dummy = &self.passwords.dummy;
        let _ = self.passwords.verify_now(password, dummy, self.memory);
    }

    /// [`verify_legacy`], in this slot.
    pub fn verify_legacy(
        &mut self,
        algorithm: &str,
        hash: &str,
        salt: Option<&str>,
        position: SaltPosition,
        password: &str,
    ) -> bool {
        checked();
        verify_legacy(algorithm, hash, salt, position, password)
    }
}

fn argon2_current() -> Argon2<'static> {
    Argon2::new(
        Algorithm::Argon2id,
        argon2::Version::V0x13,
        Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, Some(32))
            .expect("OWASP parameters are valid"),
    )
}

/// Largest Argon2 cost a stored or imported hash may ask for: 64 MiB, t=10, p=4.
/// The parameters come from the hash itself, so an imported hash must not be able to
/// make one login allocate gigabytes or run for minutes.
const ARGON2_MAX_M_KIB: u32 = 64 * 1024;
const ARGON2_MAX_T: u32 = 10;
const ARGON2_MAX_P: u32 = 4;
/// Largest bcrypt cost accepted (2^14 rounds).
const BCRYPT_MAX_COST: u32 = 14;
/// Largest PBKDF2 iteration count accepted.
const PBKDF2_MAX_ITERATIONS: u32 = 2_000_000;

fn argon2_params_ok(h: &PasswordHash<'_>) -> bool {
    Params::try_from(h).is_ok_and(|p| {
        p.m_cost() <= ARGON2_MAX_M_KIB && p.t_cost() <= ARGON2_MAX_T && p.p_cost() <= ARGON2_MAX_P
    })
}

fn verify_argon2(password: &[u8], phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) if argon2_params_ok(&h) => Argon2::default().verify_password(password, &h).is_ok(),
        _ => false,
    }
}

/// [`verify_argon2`] for an Argon2id hash, in `memory` when the hash's cost fits it.
fn verify_argon2_in(password: &[u8], phc: &str, memory: &mut [Block]) -> bool {
    let Ok(h) = PasswordHash::new(phc) else {
        return false;
    };
    let version = match h.version.map(argon2::Version::try_from) {
        None => Ok(argon2::Version::V0x13),
        Some(v) => v,
    };
    let fits = Params::try_from(&h).ok().filter(|p| {
        argon2_params_ok(&h)
            && p.block_count() <= memory.len()
            && h.algorithm.as_str() == "argon2id"
    });
    let (Some(params), Ok(version), Some(salt), Some(expected)) = (fits, version, h.salt, h.hash)
    else {
        return verify_argon2(password, phc);
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    Argon2::new(Algorithm::Argon2id, version, params)
        .hash_password_into_with_memory(password, salt, &mut out, memory)
        .is_ok()
        && subtle::ConstantTimeEq::ct_eq(out.as_slice(), expected.as_bytes()).into()
}

/// Verifies `$pbkdf2-sha256$i=N[,l=L]$salt$hash` (standard base64, padding optional).
/// Returns the iteration count on success.
fn verify_pbkdf2_phc(password: &[u8], phc: &str) -> Option<u32> {
    let mut parts = phc.split('$');
    let (_, alg, params, salt, hash) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if alg != "pbkdf2-sha256" || parts.next().is_some() {
        return None;
    }
    // PHC form `i=N[,l=L]`, or passlib's bare round count.
    let mut iterations = params.parse::<u32>().ok();
    for p in params.split(',') {
        if let Some(v) = p.strip_prefix("i=") {
            iterations = v.parse::<u32>().ok();
        }
    }
    let iterations = iterations?;
    let salt = decode_b64_any(salt)?;
    let hash = decode_b64_any(hash)?;
    verify_pbkdf2(password, iterations, &salt, &hash).then_some(iterations)
}

fn verify_pbkdf2(password: &[u8], iterations: u32, salt: &[u8], expected: &[u8]) -> bool {
    // Bounded so an imported hash cannot make one login cost minutes.
    if !(1..=PBKDF2_MAX_ITERATIONS).contains(&iterations)
        || expected.is_empty()
        || expected.len() > 64
    {
        return false;
    }
    ring::pbkdf2::verify(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::new(iterations).expect("checked above"),
        salt,
        password,
        expected,
    )
    .is_ok()
}

fn decode_b64_any(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
    B64.decode(s)
        .or_else(|_| B64_NOPAD.decode(s))
        .or_else(|_| URL_SAFE.decode(s))
        .or_else(|_| URL_SAFE_NO_PAD.decode(s))
        // passlib's "adapted base64" uses '.' for '+'.
        .or_else(|_| B64_NOPAD.decode(s.replace('.', "+")))
        .ok()
}

/// Where a legacy salt was placed around the password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SaltPosition {
    Prefix,
    Suffix,
}

/// The canonical name of a legacy algorithm, accepting common spellings
/// (`PBKDF2_SHA256`, `sha-256`, `bcrypt`, `md5`).
pub fn canonical_legacy_algorithm(name: &str) -> Option<&'static str> {
    let n = name.trim().to_ascii_lowercase().replace('_', "-");
    let found = match n.as_str() {
        "bcrypt" | "2a" | "2b" | "2y" => "bcrypt",
        "md5" | "md-5" => "md5",
        "sha1" | "sha-1" => "sha1",
        "sha256" | "sha-256" => "sha256",
        "pbkdf2-sha256" | "pbkdf2-hmac-sha256" => "pbkdf2-sha256",
        "argon2id" => "argon2id",
        _ => return None,
    };
    Some(found)
}

/// Legacy hash algorithms accepted by import.
pub const LEGACY_ALGORITHMS: &[&str] = &[
    "bcrypt",
    "md5",
    "sha1",
    "sha256",
    "pbkdf2-sha256",
    "argon2id",
];

/// Checks that a legacy hash is well formed, so import can refuse it up front.
pub fn check_legacy(algorithm: &str, hash: &str, salt: Option<&str>) -> Result<(), String> {
    let hex_len = |n: usize| -> Result<(), String> {
        if hash.len() == n && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(())
        } else {
            Err(format!("must be {n} hex digits for {algorithm}"))
        }
    };
    match algorithm {
        "bcrypt" => {
            if salt.is_some() {
                return Err("bcrypt hashes carry their own salt".into());
            }
            match hash.parse::<bcrypt::HashParts>() {
                Ok(parts) if parts.get_cost() <= BCRYPT_MAX_COST => Ok(()),
                Ok(_) => Err(format!("bcrypt cost above {BCRYPT_MAX_COST} is refused")),
                Err(_) => Err("not a bcrypt hash ($2a$/$2b$/$2y$)".into()),
            }
        }
        "md5" => hex_len(32),
        "sha1" => hex_len(40),
        "sha256" => hex_len(64),
        "pbkdf2-sha256" => {
            if parse_django_pbkdf2(hash).is_some()
                || hash.starts_with("$pbkdf2-sha256$") && hash.split('$').count() == 5
            {
                Ok(())
            } else {
                Err("not a pbkdf2-sha256 hash ($pbkdf2-sha256$i=N$salt$hash or pbkdf2_sha256$N$salt$hash)".into())
            }
        }
        "argon2id" => match PasswordHash::new(hash) {
            Ok(h) if h.algorithm.as_str() == "argon2id" && argon2_params_ok(&h) => Ok(()),
            Ok(h) if h.algorithm.as_str() == "argon2id" => Err(format!(
                "argon2id cost above m={ARGON2_MAX_M_KIB},t={ARGON2_MAX_T},p={ARGON2_MAX_P} is refused"
            )),
            _ => Err("not an argon2id PHC string".into()),
        },
        other => Err(format!(
            "unsupported algorithm {other:?}; one of {}",
            LEGACY_ALGORITHMS.join(", ")
        )),
    }
}

fn parse_django_pbkdf2(hash: &str) -> Option<(u32, &str, &str)> {
    let mut parts = hash.split('$');
    let (alg, iter, salt, digest) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if alg != "pbkdf2_sha256" || parts.next().is_some() {
        return None;
    }
    Some((iter.parse().ok()?, salt, digest))
}

/// Verifies `password` against a legacy hash. Digest comparisons are constant time.
pub fn verify_legacy(
    algorithm: &str,
    hash: &str,
    salt: Option<&str>,
    position: SaltPosition,
    password: &str,
) -> bool {
    let salted = |pw: &str| -> Zeroizing<Vec<u8>> {
        let s = salt.unwrap_or("");
        Zeroizing::new(match position {
            SaltPosition::Prefix => [s.as_bytes(), pw.as_bytes()].concat(),
            SaltPosition::Suffix => [pw.as_bytes(), s.as_bytes()].concat(),
        })
    };
    let hex_eq = |digest: &[u8]| -> bool {
        match hex::decode(hash) {
            Ok(expected) => crate::crypto::primitives::ct_eq(digest, &expected),
            Err(_) => false,
        }
    };
    match algorithm {
        "bcrypt" => {
            hash.parse::<bcrypt::HashParts>()
                .is_ok_and(|p| p.get_cost() <= BCRYPT_MAX_COST)
                && bcrypt::verify(password, hash).unwrap_or(false)
        }
        "md5" => hex_eq(&md5::Md5::digest(salted(password).as_slice())),
        "sha1" => hex_eq(&sha1::Sha1::digest(salted(password).as_slice())),
        "sha256" => hex_eq(ring::digest::digest(&ring::digest::SHA256, &salted(password)).as_ref()),
        "pbkdf2-sha256" => {
            if let Some((iterations, salt, digest)) = parse_django_pbkdf2(hash) {
                match B64.decode(digest) {
                    Ok(expected) => {
                        verify_pbkdf2(password.as_bytes(), iterations, salt.as_bytes(), &expected)
                    }
                    Err(_) => false,
                }
            } else {
                verify_pbkdf2_phc(password.as_bytes(), hash).is_some()
            }
        }
        "argon2id" => verify_argon2(password.as_bytes(), hash),
        _ => false,
    }
}

/// The algorithm for new password hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum PasswordAlgorithm {
    /// Argon2id, m=19 MiB, t=2, p=1 (OWASP). Default.
    #[serde(rename = "argon2id")]
    Argon2id,
    /// PBKDF2-HMAC-SHA256, 600,000 iterations (OWASP).
    #[serde(rename = "pbkdf2-sha256")]
    Pbkdf2Sha256,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordConfig {
    pub algorithm: PasswordAlgorithm,
    /// Shortest accepted password, in characters. Default 8 (NIST SP 800-63B).
    pub min_length: usize,
}

impl Default for PasswordConfig {
    fn default() -> Self {
        PasswordConfig {
            algorithm: PasswordAlgorithm::Argon2id,
            min_length: 8,
        }
    }
}

impl PasswordConfig {
    /// Checks the `[passwords]` section.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !(8..=64).contains(&self.min_length) {
            return Err(invalid("passwords.min_length", "must be between 8 and 64"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher as _, SaltString};

    fn passwords(alg: PasswordAlgorithm) -> Passwords {
        Passwords::new(alg, &[9u8; 32]).unwrap()
    }

    #[test]
    fn argon2_in_reused_memory_agrees_with_the_reference_implementation() {
        let p = passwords(PasswordAlgorithm::Argon2id);
        let mut memory = vec![Block::default(); ARGON2_M_KIB as usize];
        // Ours, checked by the argon2 crate's own verifier (and by ours after the
        // memory held another hash).
        let ours = p.hash("correct horse battery").unwrap();
        let peppered = p.pepper("correct horse battery");
        assert!(verify_argon2(&peppered, &ours));
        assert!(verify_argon2_in(&peppered, &ours, &mut memory));
        assert!(verify_argon2_in(&peppered, &ours, &mut memory));
        assert!(!verify_argon2_in(&p.pepper("wrong"), &ours, &mut memory));
        // The crate's, checked by ours.
        let salt = SaltString::encode_b64(&[7u8; 16]).unwrap();
        let reference = argon2_current()
            .hash_password(&peppered, &salt)
            .unwrap()
            .to_string();
        assert!(verify_argon2_in(&peppered, &reference, &mut memory));
        assert_eq!(p.verify("correct horse battery", &reference), Verified::Yes);
        // A lower cost runs in the same memory; a higher one than it holds still
        // verifies (in memory of its own).
        for m in [8 * 1024, 32 * 1024] {
            let other = Argon2::new(
                Algorithm::Argon2id,
                argon2::Version::V0x13,
                Params::new(m, 1, 1, Some(32)).unwrap(),
            )
            .hash_password(&peppered, &salt)
            .unwrap()
            .to_string();
            assert!(verify_argon2_in(&peppered, &other, &mut memory), "m={m}");
            assert!(
                !verify_argon2_in(&p.pepper("wrong"), &other, &mut memory),
                "m={m}"
            );
        }
        // One changed character of the hash fails.
        let mut tampered = ours.clone();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        assert!(!verify_argon2_in(&peppered, &tampered, &mut memory));
    }

    #[test]
    fn no_more_hashes_run_at_once_than_the_gate_has_slots() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let gate = std::sync::Arc::new(HashGate::new(2));
        let (running, most, done) = (
            std::sync::Arc::new(AtomicUsize::new(0)),
            std::sync::Arc::new(AtomicUsize::new(0)),
            std::sync::Arc::new(AtomicUsize::new(0)),
        );
        let threads: Vec<_> = (0..6)
            .map(|_| {
                let (gate, running, most, done) =
                    (gate.clone(), running.clone(), most.clone(), done.clone());
                std::thread::spawn(move || {
                    gate.run(|_| {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(20));
                        running.fetch_sub(1, Ordering::SeqCst);
                    });
                    done.fetch_add(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(done.load(Ordering::SeqCst), 6, "every caller got a slot");
        assert!(most.load(Ordering::SeqCst) <= 2, "at most two at once");
        // A panicking hash gives its slot back.
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            gate.run(|_| panic!("hash failed"))
        }));
        assert!(r.is_err());
        assert_eq!(*gate.free.lock(), 2);
    }

    #[test]
    fn argon2id_hashes_verify_and_use_owasp_parameters() {
        let p = passwords(PasswordAlgorithm::Argon2id);
        let h = p.hash("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert_eq!(p.verify("correct horse battery", &h), Verified::Yes);
        assert_eq!(p.verify("correct horse batterx", &h), Verified::No);
    }

    #[test]
    fn the_pepper_is_part_of_the_hash() {
        let p = passwords(PasswordAlgorithm::Argon2id);
        let other = Passwords::new(PasswordAlgorithm::Argon2id, &[8u8; 32]).unwrap();
        let h = p.hash("correct horse battery").unwrap();
        assert_eq!(other.verify("correct horse battery", &h), Verified::No);
    }

    #[test]
    fn pbkdf2_hashes_verify_and_switching_algorithm_asks_for_rehash() {
        let p = passwords(PasswordAlgorithm::Pbkdf2Sha256);
        let h = p.hash("correct horse battery").unwrap();
        assert!(h.starts_with("$pbkdf2-sha256$i=600000,l=32$"), "{h}");
        assert_eq!(p.verify("correct horse battery", &h), Verified::Yes);
        let argon = Passwords::new(PasswordAlgorithm::Argon2id, &[9u8; 32]).unwrap();
        assert_eq!(
            argon.verify("correct horse battery", &h),
            Verified::YesRehash
        );
    }

    #[test]
    fn legacy_digests_verify_with_salt_in_either_position() {
        let md5_plain = hex::encode(md5::Md5::digest(b"hunter22"));
        assert!(verify_legacy(
            "md5",
            &md5_plain,
            None,
            SaltPosition::Prefix,
            "hunter22"
        ));
        assert!(!verify_legacy(
            "md5",
            &md5_plain,
            None,
            SaltPosition::Prefix,
            "hunter23"
        ));
        let sha1_salted = hex::encode(sha1::Sha1::digest(b"NaClhunter22"));
        assert!(verify_legacy(
            "sha1",
            &sha1_salted,
            Some("NaCl"),
            SaltPosition::Prefix,
            "hunter22"
        ));
        let sha256_suffix =
            hex::encode(ring::digest::digest(&ring::digest::SHA256, b"hunter22NaCl"));
        assert!(verify_legacy(
            "sha256",
            &sha256_suffix,
            Some("NaCl"),
            SaltPosition::Suffix,
            "hunter22"
        ));
        assert!(!verify_legacy(
            "sha256",
            &sha256_suffix,
            Some("NaCl"),
            SaltPosition::Prefix,
            "hunter22"
        ));
    }

    #[test]
    fn legacy_bcrypt_pbkdf2_and_argon2_verify() {
        let b = bcrypt::hash("hunter22", 4).unwrap();
        check_legacy("bcrypt", &b, None).unwrap();
        assert!(verify_legacy(
            "bcrypt",
            &b,
            None,
            SaltPosition::Prefix,
            "hunter22"
        ));
        assert!(!verify_legacy(
            "bcrypt",
            &b,
            None,
            SaltPosition::Prefix,
            "hunter2"
        ));

        let mut out = [0u8; 32];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA256,
            NonZeroU32::new(1000).unwrap(),
            b"saltsalt",
            b"hunter22",
            &mut out,
        );
        let django = format!("pbkdf2_sha256$1000$saltsalt${}", B64.encode(out));
        check_legacy("pbkdf2-sha256", &django, None).unwrap();
        assert!(verify_legacy(
            "pbkdf2-sha256",
            &django,
            None,
            SaltPosition::Prefix,
            "hunter22"
        ));
        let phc = format!(
            "$pbkdf2-sha256$i=1000${}${}",
            B64_NOPAD.encode(b"saltsalt"),
            B64_NOPAD.encode(out)
        );
        assert!(verify_legacy(
            "pbkdf2-sha256",
            &phc,
            None,
            SaltPosition::Prefix,
            "hunter22"
        ));
        let passlib = format!(
            "$pbkdf2-sha256$1000${}${}",
            B64_NOPAD.encode(b"saltsalt").replace('+', "."),
            B64_NOPAD.encode(out).replace('+', ".")
        );
        check_legacy("pbkdf2-sha256", &passlib, None).unwrap();
        assert!(verify_legacy(
            "pbkdf2-sha256",
            &passlib,
            None,
            SaltPosition::Prefix,
            "hunter22"
        ));
        assert!(!verify_legacy(
            "pbkdf2-sha256",
            &phc,
            None,
            SaltPosition::Prefix,
            "hunter2"
        ));

        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        let a = Argon2::default()
            .hash_password(b"hunter22", &salt)
            .unwrap()
            .to_string();
        check_legacy("argon2id", &a, None).unwrap();
        assert!(verify_legacy(
            "argon2id",
            &a,
            None,
            SaltPosition::Prefix,
            "hunter22"
        ));
    }

    #[test]
    fn legacy_hashes_cannot_ask_for_unbounded_work() {
        let huge = "$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA";
        assert!(check_legacy("argon2id", huge, None)
            .unwrap_err()
            .contains("refused"));
        assert!(!verify_legacy(
            "argon2id",
            huge,
            None,
            SaltPosition::Prefix,
            "x"
        ));
        let slow = "$2b$31$abcdefghijklmnopqrstuu5QZ5BBp0sY8Q0fG7e2Gf0/Xv7bT6T9S";
        assert!(check_legacy("bcrypt", slow, None).is_err());
        assert!(!verify_legacy(
            "bcrypt",
            slow,
            None,
            SaltPosition::Prefix,
            "x"
        ));
    }

    #[test]
    fn malformed_legacy_hashes_are_refused_up_front() {
        assert!(check_legacy("md5", "xyz", None).is_err());
        assert!(check_legacy("sha256", &"a".repeat(63), None).is_err());
        assert!(check_legacy("bcrypt", "$2b$nope", None).is_err());
        assert!(check_legacy("crc32", "abcd", None)
            .unwrap_err()
            .contains("unsupported"));
    }
}
