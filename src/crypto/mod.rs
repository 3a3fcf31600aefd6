//! Layer 1, crypto: primitives, keyrings, the envelope with user keys and MACs, the
//! writers' signatures, blind indexes, password hashing and the count of wraps per
//! format 1 master key. Inside it, `primitives` is below `keyring` and `wraps`, which
//! are below the rest. It may use common; never storage (storage never uses it either).

pub mod blind_index;
pub mod envelope;
pub mod jws;
pub mod keyring;
pub mod password;
pub mod primitives;
pub mod signatures;
pub mod totp;
pub mod wraps;
