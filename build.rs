fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/authsync.proto");
    let mut config = prost_build::Config::new();
    // Deterministic encoding: stored records are re-encoded and compared byte for byte
    // to detect tampering, so map order must not depend on a hash seed.
    config.btree_map(["."]);
    config.compile_protos(&["proto/authsync.proto"], &["proto"])?;
    Ok(())
}
