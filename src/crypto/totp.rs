//! Time-based one-time passwords (RFC 6238, over HOTP of RFC 4226) as authenticator
//! apps make them: HMAC-SHA1, 30-second steps, six digits, a 20-byte secret shown as
//! base32 and as an `otpauth://` URI (the QR code's content).
//!
//! A code is taken for the step it was made in or the one before or after (±30 s of
//! clock difference between the phone and the node), and only for a step later than
//! the last one used ([`verify`]'s `after`): each code is used once, and so is every
//! earlier one.

use ring::hmac;

/// Seconds per step.
pub const STEP_S: u64 = 30;
/// Digits per code.
pub const DIGITS: u32 = 6;
/// Steps either side of now that are taken.
pub const WINDOW: u64 = 1;
/// Bytes of a secret (160 bits, as RFC 4226 recommends).
pub const SECRET_LEN: usize = 20;

/// The HOTP value of `secret` at `counter`.
pub fn hotp(secret: &[u8], counter: u64) -> u32 {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let mac = hmac::sign(&key, &counter.to_be_bytes());
    let mac = mac.as_ref();
    let offset = usize::from(mac[mac.len() - 1] & 0x0f);
    let bin = u32::from_be_bytes([
        mac[offset] & 0x7f,
        mac[offset + 1],
        mac[offset + 2],
        mac[offset + 3],
    ]);
    bin % 10u32.pow(DIGITS)
}

/// The step of `now_s`.
pub fn step(now_s: u64) -> u64 {
    now_s / STEP_S
}

/// The step `code` was made in, if it is one of `secret`'s within the window of
/// `now_s` and later than step `after`; `None` for anything else, a code that is not
/// six digits included. Every step of the window is computed, whatever matches, and
/// compared in constant time.
pub fn verify(secret: &[u8], code: &str, now_s: u64, after: u64) -> Option<u64> {
    let code = code.trim();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let now = step(now_s);
    let mut found = None;
    for s in now.saturating_sub(WINDOW)..=now + WINDOW {
        let expected = format!("{:0width$}", hotp(secret, s), width = DIGITS as usize);
        let same = crate::crypto::primitives::ct_eq(expected.as_bytes(), code.as_bytes());
        if same && s > after && found.is_none() {
            found = Some(s);
        }
    }
    found
}

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32 without padding, as authenticator apps take a secret.
pub fn base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(BASE32[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(BASE32[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// The `otpauth://totp/` URI of `secret` for `account` at `issuer` (Google
/// Authenticator's key URI format), which a QR code carries to the app.
pub fn otpauth_uri(issuer: &str, account: &str, secret: &[u8]) -> String {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_S}",
        enc(issuer).replace('+', "%20"),
        enc(account).replace('+', "%20"),
        base32(secret),
        enc(issuer).replace('+', "%20"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1: the eight-digit values, whose last six digits are
    /// the six-digit codes.
    #[test]
    fn the_codes_are_those_of_rfc_6238() {
        let secret = b"12345678901234567890";
        for (t, eight) in [
            (59u64, 94287082u32),
            (1111111109, 7081804),
            (1111111111, 14050471),
            (1234567890, 89005924),
            (2000000000, 69279037),
            (20000000000, 65353130),
        ] {
            assert_eq!(hotp(secret, step(t)), eight % 1_000_000, "t = {t}");
        }
        // RFC 4226 appendix D: HOTP at counters 0 and 1.
        assert_eq!(hotp(secret, 0), 755224);
        assert_eq!(hotp(secret, 1), 287082);
    }

    #[test]
    fn a_code_is_taken_within_its_window_once_and_never_an_earlier_one() {
        let secret = [7u8; SECRET_LEN];
        let now = 1_800_000_000;
        let code = |s: u64| format!("{:06}", hotp(&secret, s));
        let here = step(now);
        assert_eq!(verify(&secret, &code(here), now, 0), Some(here));
        assert_eq!(verify(&secret, &code(here - 1), now, 0), Some(here - 1));
        assert_eq!(verify(&secret, &code(here + 1), now, 0), Some(here + 1));
        assert_eq!(verify(&secret, &code(here - 2), now, 0), None, "too old");
        assert_eq!(
            verify(&secret, &code(here + 2), now, 0),
            None,
            "too far ahead"
        );
        // Used at `here`: that code and the one before are spent, the next is not.
        assert_eq!(verify(&secret, &code(here), now, here), None);
        assert_eq!(verify(&secret, &code(here - 1), now, here), None);
        assert_eq!(verify(&secret, &code(here + 1), now, here), Some(here + 1));
        for bad in ["", "12345", "1234567", "12345a", "١٢٣٤٥٦"] {
            assert_eq!(verify(&secret, bad, now, 0), None, "{bad}");
        }
        assert_eq!(verify(&[8u8; SECRET_LEN], &code(here), now, 0), None);
    }

    #[test]
    fn secrets_are_base32_in_an_otpauth_uri() {
        assert_eq!(
            base32(b"12345678901234567890"),
            "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
        );
        assert_eq!(base32(b"f"), "MY");
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        let uri = otpauth_uri("Group Login", "ada@example.com", b"12345678901234567890");
        assert_eq!(
            uri,
            "otpauth://totp/Group%20Login:ada%40example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Group%20Login&algorithm=SHA1&digits=6&period=30"
        );
    }
}
