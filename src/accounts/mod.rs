//! Layer 2, accounts: every operation on accounts as one region performs it. Inside,
//! each file uses only those before it: `error` → {`input`, `bounds`} → `entries` →
//! {`lockout`, `api_keys`} → `users` → `tokens` → `oidc`. It may use common, crypto and storage.

pub mod api_keys;
pub mod bounds;
pub mod entries;
pub mod error;
pub mod input;
pub mod lockout;
pub mod oidc;
pub mod tokens;
pub mod users;
