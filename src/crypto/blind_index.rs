//! Blind indexes: HMAC-SHA256 of the normalised value, full length, with one key per
//! field derived by HKDF from the keyring's index key (the same in every region, so a
//! lookup works everywhere).

use ring::hmac;

use crate::crypto::primitives::derive;

/// Blind index keys, one per searchable field.
pub struct BlindIndex {
    email: hmac::Key,
    phone: hmac::Key,
}

impl BlindIndex {
    pub fn new(index_key: &[u8; 32]) -> BlindIndex {
        BlindIndex {
            email: hmac::Key::new(
                hmac::HMAC_SHA256,
                derive(index_key, b"authsync/v1/blind-index/email").as_ref(),
            ),
            phone: hmac::Key::new(
                hmac::HMAC_SHA256,
                derive(index_key, b"authsync/v1/blind-index/phone").as_ref(),
            ),
        }
    }

    /// Index of a normalised email.
    pub fn email(&self, normalised: &str) -> [u8; 32] {
        tag32(&self.email, normalised)
    }

    /// Index of an E.164 phone number.
    pub fn phone(&self, normalised: &str) -> [u8; 32] {
        tag32(&self.phone, normalised)
    }
}

fn tag32(key: &hmac::Key, value: &str) -> [u8; 32] {
    let tag = hmac::sign(key, value.as_bytes());
    tag.as_ref().try_into().expect("HMAC-SHA256 is 32 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keyring;

    fn regions() -> Vec<String> {
        vec!["af-south".into(), "eu-west".into(), "us-east".into()]
    }

    #[test]
    fn blind_indexes_are_keyed_and_per_field() {
        let rings = keyring::init(&regions()).unwrap();
        let a = BlindIndex::new(rings[0].index_key());
        let b = BlindIndex::new(rings[2].index_key());
        assert_eq!(a.email("ada@example.com"), b.email("ada@example.com"));
        assert_ne!(a.email("+1415"), a.phone("+1415"));
        let other = keyring::init(&regions()).unwrap();
        let c = BlindIndex::new(other[0].index_key());
        assert_ne!(a.email("ada@example.com"), c.email("ada@example.com"));
    }
}
