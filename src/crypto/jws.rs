//! Compact JWS (RFC 7515), as authsync signs and reads it: the access and ID tokens it
//! issues, the signed requests of member platforms, and the client assertions of
//! clients that authenticate with `private_key_jwt` (RFC 7523).
//!
//! Only the algorithms named here are taken: EdDSA (Ed25519), ES256 (P-256, the
//! 64-byte `r || s` form), RS256 (RSA PKCS#1 v1.5, 2048 bits or more) and HS256 for
//! a shared secret. `none` and everything else is refused, and a key verifies only the
//! algorithm it was registered for, so no header can choose how it is checked.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use ring::{hmac, signature};
use serde_json::{json, Value};

/// The longest token read: anything longer is refused unread.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// A token split into its parts, the header and claims decoded; not yet verified.
pub struct Compact<'a> {
    pub header: Value,
    pub claims: Value,
    signed: &'a [u8],
    signature: Vec<u8>,
}

/// Splits `token` (`header.claims.signature`, base64url without padding, the header
/// and claims JSON objects); `None` for anything else.
pub fn parse(token: &str) -> Option<Compact<'_>> {
    let token = token.trim();
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let object = |part: &str| {
        B64.decode(part)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .filter(Value::is_object)
    };
    Some(Compact {
        header: object(h)?,
        claims: object(c)?,
        signed: &token.as_bytes()[..h.len() + 1 + c.len()],
        signature: B64.decode(s).ok()?,
    })
}

impl Compact<'_> {
    pub fn alg(&self) -> &str {
        self.header["alg"].as_str().unwrap_or_default()
    }

    pub fn kid(&self) -> Option<&str> {
        self.header["kid"].as_str()
    }

    /// Whether `key` signed this, with the one algorithm `key` is for.
    pub fn verifies(&self, key: &PublicKey) -> bool {
        self.alg() == key.alg() && key.verify(self.signed, &self.signature)
    }
}

/// A key that checks signatures.
#[derive(Debug)]
pub enum PublicKey {
    Ed25519(Vec<u8>),
    /// The uncompressed point, 65 bytes.
    P256(Vec<u8>),
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    Hs256(hmac::Key),
}

/// The smallest RSA modulus taken, in bytes (2048 bits).
const MIN_RSA_BYTES: usize = 256;

impl PublicKey {
    /// The JWS `alg` this key verifies.
    pub fn alg(&self) -> &'static str {
        match self {
            PublicKey::Ed25519(_) => "EdDSA",
            PublicKey::P256(_) => "ES256",
            PublicKey::Rsa { .. } => "RS256",
            PublicKey::Hs256(_) => "HS256",
        }
    }

    fn verify(&self, signed: &[u8], sig: &[u8]) -> bool {
        match self {
            PublicKey::Ed25519(pk) => signature::UnparsedPublicKey::new(&signature::ED25519, pk)
                .verify(signed, sig)
                .is_ok(),
            PublicKey::P256(pk) => {
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, pk)
                    .verify(signed, sig)
                    .is_ok()
            }
            PublicKey::Rsa { n, e } => signature::RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, signed, sig)
                .is_ok(),
            PublicKey::Hs256(k) => hmac::verify(k, signed, sig).is_ok(),
        }
    }

    /// A public JWK (RFC 7517): OKP Ed25519, EC P-256 or RSA of 2048 bits or more.
    /// Refused with the reason: anything else, a private key (`d`, `p`, ...), or an
    /// `alg` that is not the key type's.
    pub fn from_jwk(jwk: &Value) -> Result<PublicKey, &'static str> {
        let Some(fields) = jwk.as_object() else {
            return Err("a key must be a JSON object");
        };
        const PRIVATE: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];
        if PRIVATE.iter().any(|f| fields.contains_key(*f)) {
            return Err("a key must be public: it holds private key material");
        }
        let part = |name: &str| {
            fields
                .get(name)
                .and_then(Value::as_str)
                .and_then(|v| B64.decode(v).ok())
        };
        let key = match (
            fields.get("kty").and_then(Value::as_str),
            fields.get("crv").and_then(Value::as_str),
        ) {
            (Some("OKP"), Some("Ed25519")) => match part("x") {
                Some(x) if x.len() == 32 => {
                    if !ed25519_strong(&x) {
                        return Err("an Ed25519 key's point is not on the curve or of small order");
                    }
                    PublicKey::Ed25519(x)
                }
                _ => return Err("an Ed25519 key's x must be 32 bytes"),
            },
            (Some("EC"), Some("P-256")) => match (part("x"), part("y")) {
                (Some(x), Some(y)) if x.len() == 32 && y.len() == 32 => {
                    let point = [&[4u8][..], &x, &y].concat();
                    // The point must be on the curve: checked now, not at first use.
                    if !p256_point_valid(&point) {
                        return Err("an EC key's point is not on P-256");
                    }
                    PublicKey::P256(point)
                }
                _ => return Err("a P-256 key's x and y must be 32 bytes each"),
            },
            (Some("RSA"), None) => match (part("n"), part("e")) {
                (Some(n), Some(e)) => {
                    let n = n
                        .iter()
                        .skip_while(|b| **b == 0)
                        .copied()
                        .collect::<Vec<_>>();
                    if n.len() < MIN_RSA_BYTES || n.len() > 1024 || e.is_empty() || e.len() > 8 {
                        return Err("an RSA key must have 2048 to 8192 bits");
                    }
                    PublicKey::Rsa { n, e }
                }
                _ => return Err("an RSA key needs n and e"),
            },
            _ => return Err("a key must be OKP Ed25519, EC P-256 or RSA"),
        };
        match fields.get("alg") {
            None => Ok(key),
            Some(a) if a.as_str() == Some(key.alg()) => Ok(key),
            Some(_) => Err("a key's alg must be EdDSA, ES256 or RS256, as its type says"),
        }
    }
}

/// Whether `x` is an Ed25519 point of the large prime order subgroup's kind: on the
/// curve and not of small order. A small-order key (the identity, say) would let
/// anyone make signatures that verify under it.
fn ed25519_strong(x: &[u8]) -> bool {
    let Ok(bytes) = <[u8; 32]>::try_from(x) else {
        return false;
    };
    curve25519_dalek::edwards::CompressedEdwardsY(bytes)
        .decompress()
        .is_some_and(|p| !p.is_small_order())
}

/// A P-256 point as the SEC1 uncompressed encoding, on the curve.
pub fn p256_point_valid(point: &[u8]) -> bool {
    point.len() == 65 && point[0] == 4 && p256::PublicKey::from_sec1_bytes(point).is_ok()
}

/// The most keys a client may register.
pub const MAX_KEYS: usize = 4;
/// The longest key set taken, as JSON text.
pub const MAX_KEY_SET_LEN: usize = 8 * 1024;

/// A public JWK set (`{"keys": [...]}`, 1 to [`MAX_KEYS`] keys) as a client registers
/// it: each key with its `kid`, which must be unique, and set when there are several.
pub fn public_key_set(jwks: &Value) -> Result<Vec<(Option<String>, PublicKey)>, String> {
    if jwks.to_string().len() > MAX_KEY_SET_LEN {
        return Err(format!("a key set is at most {MAX_KEY_SET_LEN} bytes"));
    }
    let Some(list) = jwks.get("keys").and_then(Value::as_array) else {
        return Err("a key set is {\"keys\": [...]}".into());
    };
    if list.is_empty() || list.len() > MAX_KEYS {
        return Err(format!("a key set holds 1 to {MAX_KEYS} keys"));
    }
    let mut out: Vec<(Option<String>, PublicKey)> = Vec::new();
    for (i, jwk) in list.iter().enumerate() {
        let key = PublicKey::from_jwk(jwk).map_err(|why| format!("keys[{i}]: {why}"))?;
        let kid = match jwk.get("kid") {
            None => None,
            Some(Value::String(k)) if !k.is_empty() && k.len() <= 128 => Some(k.clone()),
            Some(_) => return Err(format!("keys[{i}].kid must be 1 to 128 characters")),
        };
        if list.len() > 1 && kid.is_none() {
            return Err(format!("keys[{i}] needs a kid: the set has several keys"));
        }
        if kid.is_some() && out.iter().any(|(k, _)| *k == kid) {
            return Err(format!("keys[{i}].kid is not unique"));
        }
        out.push((kid, key));
    }
    Ok(out)
}

/// Encodes `header` and `claims` and signs them with `sign`.
pub fn encode(header: &Value, claims: &Value, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let sig = sign(input.as_bytes());
    format!("{input}.{}", B64.encode(sig))
}

/// A P-256 signing key derived from a 32-byte seed (HKDF-SHA256, its own label), so
/// that a region's Ed25519 seed gives it an ES256 key too without a second secret to
/// seal, rotate and count.
pub struct Es256Key(p256::ecdsa::SigningKey);

impl Es256Key {
    /// `None` only if 256 derived values in a row were not P-256 scalars (each is
    /// with a chance of about 2^-32).
    pub fn derive(seed: &[u8; 32]) -> Option<Es256Key> {
        let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"authsync es256").extract(seed);
        for counter in 0u8..=u8::MAX {
            let info = [&b"authsync es256 signing key "[..], &[counter]];
            let mut scalar = zeroize::Zeroizing::new([0u8; 32]);
            let filled = prk
                .expand(&info, ring::hkdf::HKDF_SHA256)
                .and_then(|okm| okm.fill(scalar.as_mut()));
            if filled.is_ok() {
                if let Ok(key) = p256::ecdsa::SigningKey::from_slice(scalar.as_ref()) {
                    return Some(Es256Key(key));
                }
            }
        }
        None
    }

    /// The uncompressed public point, 65 bytes.
    pub fn public_key(&self) -> Vec<u8> {
        self.0
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec()
    }

    /// An ES256 signature: `r || s`, 64 bytes (deterministic, RFC 6979).
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        use p256::ecdsa::signature::Signer as _;
        let sig: p256::ecdsa::Signature = self.0.sign(msg);
        sig.to_bytes().to_vec()
    }
}

/// A P-256 public point as a JWK's `x` and `y`.
pub fn p256_jwk(point: &[u8], kid: &str) -> Option<Value> {
    (point.len() == 65 && point[0] == 4).then(|| {
        json!({
            "kty": "EC",
            "crv": "P-256",
            "x": B64.encode(&point[1..33]),
            "y": B64.encode(&point[33..]),
            "kid": kid,
            "use": "sig",
            "alg": "ES256",
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real Ed25519 public key (of seed 2).
    const ED_KEY: &str = "gTl3Dqh9F19Wo1Rmw0x-zMuNipG07jeiXfYPW4_Js5Q";

    fn es256_token(key: &Es256Key, claims: &Value) -> String {
        encode(&json!({"alg": "ES256"}), claims, |m| key.sign(m))
    }

    #[test]
    fn an_es256_key_from_a_seed_signs_what_its_jwk_verifies_and_nothing_else() {
        let key = Es256Key::derive(&[7; 32]).unwrap();
        assert_eq!(
            key.public_key(),
            Es256Key::derive(&[7; 32]).unwrap().public_key()
        );
        assert_ne!(
            key.public_key(),
            Es256Key::derive(&[8; 32]).unwrap().public_key()
        );
        let jwk = p256_jwk(&key.public_key(), "k1").unwrap();
        let public = PublicKey::from_jwk(&jwk).unwrap();
        let token = es256_token(&key, &json!({"sub": "a"}));
        assert!(parse(&token).unwrap().verifies(&public));
        // Another key's signature, a changed claim, another alg in the header: refused.
        let other = es256_token(&Es256Key::derive(&[8; 32]).unwrap(), &json!({"sub": "a"}));
        assert!(!parse(&other).unwrap().verifies(&public));
        let (head, rest) = token.split_once('.').unwrap();
        let sig = rest.split_once('.').unwrap().1;
        let changed = format!("{head}.{}.{sig}", B64.encode(r#"{"sub":"b"}"#));
        assert!(!parse(&changed).unwrap().verifies(&public));
        let relabelled = format!("{}.{rest}", B64.encode(r#"{"alg":"none"}"#));
        assert!(!parse(&relabelled).unwrap().verifies(&public));
    }

    #[test]
    fn only_public_keys_of_the_known_types_are_taken() {
        let point = Es256Key::derive(&[1; 32]).unwrap().public_key();
        let mut ec = p256_jwk(&point, "k").unwrap();
        ec["d"] = json!(B64.encode([1u8; 32]));
        assert!(PublicKey::from_jwk(&ec).unwrap_err().contains("private"));
        let mut off_curve = p256_jwk(&point, "k").unwrap();
        off_curve["y"] = json!(B64.encode([1u8; 32]));
        assert!(PublicKey::from_jwk(&off_curve).is_err());
        let mut wrong_alg = p256_jwk(&point, "k").unwrap();
        wrong_alg["alg"] = json!("HS256");
        assert!(PublicKey::from_jwk(&wrong_alg).is_err());
        let small_rsa = json!({"kty": "RSA", "n": B64.encode([0xc1u8; 128]), "e": "AQAB"});
        assert!(PublicKey::from_jwk(&small_rsa)
            .unwrap_err()
            .contains("2048"));
        let rsa = json!({"kty": "RSA", "n": B64.encode([0xc1u8; 256]), "e": "AQAB"});
        assert_eq!(PublicKey::from_jwk(&rsa).unwrap().alg(), "RS256");
        let oct = json!({"kty": "oct", "k": "c2VjcmV0"});
        assert!(PublicKey::from_jwk(&oct).is_err());
        let ed = json!({"kty": "OKP", "crv": "Ed25519", "x": ED_KEY});
        assert_eq!(PublicKey::from_jwk(&ed).unwrap().alg(), "EdDSA");
        // The identity point: under it, a signature of R = identity, S = 0 verifies for
        // every message.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let weak = json!({"kty": "OKP", "crv": "Ed25519", "x": B64.encode(identity)});
        assert!(PublicKey::from_jwk(&weak)
            .unwrap_err()
            .contains("small order"));
        assert!(PublicKey::from_jwk(&json!("a string")).is_err());
    }

    #[test]
    fn a_key_set_is_small_its_keys_public_and_their_kids_unique() {
        let ed = |kid: &str| json!({"kty": "OKP", "crv": "Ed25519", "x": ED_KEY, "kid": kid});
        assert_eq!(
            public_key_set(&json!({"keys": [ed("a"), ed("b")]}))
                .unwrap()
                .len(),
            2
        );
        let no_kid = json!({"kty": "OKP", "crv": "Ed25519", "x": ED_KEY});
        assert!(public_key_set(&json!({"keys": [no_kid.clone()]})).is_ok());
        for (bad, why) in [
            (json!({"keys": []}), "1 to"),
            (
                json!({"keys": [ed("a"), ed("b"), ed("c"), ed("d"), ed("e")]}),
                "1 to",
            ),
            (json!({"keys": [ed("a"), ed("a")]}), "unique"),
            (json!({"keys": [ed("a"), no_kid]}), "needs a kid"),
            (json!([ed("a")]), "keys"),
            (
                json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}),
                "keys[0]",
            ),
        ] {
            let err = public_key_set(&bad).err().unwrap_or_default();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn what_is_not_a_compact_jws_does_not_parse() {
        for bad in [
            "",
            "a.b",
            "a.b.c.d",
            "e30.e30.!!",
            "bnVsbA.e30.c2ln", // a header that is JSON null
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
        let long = format!("e30.{}.c2ln", "A".repeat(MAX_TOKEN_LEN));
        assert!(parse(&long).is_none());
        assert!(parse("e30.e30.c2ln").is_some());
    }
}
