//! Layer 1, storage: RocksDB, its column families, the one-batch write path with its
//! outbox, and the order of record copies. It stores bytes and protobuf messages it
//! does not open. It may use common; never crypto (crypto never uses it either).

pub mod store;
