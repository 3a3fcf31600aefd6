//! The binary's commands beyond `node`: they use the library (`authsync::…`) like any
//! other client of it, and the library never uses them.

pub mod admin_client;
pub mod api_keys;
pub mod bench;
pub mod demo;
pub mod dlq;
pub mod keys;
pub mod oauth_clients;
