//! The handlers, one file per API area. Each uses only `state`, `error` and
//! `extract` of the API layer; `api/mod.rs` routes to them.

pub mod account_tokens;
pub mod admin;
pub mod factors;
pub mod health;
pub mod oauth;
pub mod peers;
pub mod sessions;
pub mod users;
