//! The container files, checked without a Docker engine: the image builds what
//! `cargo build --release --locked` builds from every input of that build, and the
//! compose file mounts files that exist, with one node, broker, keyring and data
//! volume per region.

use std::path::Path;

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("read {path}: {e}"))
}

#[test]
fn the_image_builds_the_release_binary_from_every_build_input() {
    let dockerfile = read("Dockerfile");
    let copied: Vec<&str> = dockerfile
        .lines()
        .filter_map(|l| l.trim().strip_prefix("COPY "))
        .filter(|l| !l.starts_with("--from"))
        .flat_map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            parts[..parts.len() - 1].to_vec()
        })
        .collect();
    // Everything Cargo reads to build the binary: the manifest declares the benches
    // and the workspace members, so their sources must be there too.
    for input in [
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "proto",
        "src",
        "benches",
        "tests",
        "chaos",
    ] {
        assert!(copied.contains(&input), "Dockerfile does not COPY {input}");
        assert!(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(input).exists(),
            "{input} missing"
        );
    }
    assert!(dockerfile.contains("cargo build --release --locked --bin authsync"));
    // Run stage: non-root, with a health check on /readyz.
    let run_stage = dockerfile.rsplit("FROM ").next().unwrap();
    assert!(run_stage.contains("USER authsync"));
    assert!(run_stage.contains("HEALTHCHECK") && run_stage.contains("/readyz"));
    let ignore = read(".dockerignore");
    for never in ["target/", "config/keys/", "data/"] {
        assert!(
            ignore.lines().any(|l| l == never),
            ".dockerignore lacks {never}"
        );
    }
}

#[test]
fn compose_runs_three_regions_with_their_own_brokers_keys_and_volumes() {
    let compose = read("docker-compose.yml");
    for region in ["af-south", "eu-west", "us-east"] {
        for service in [format!("authsync-{region}:"), format!("kafka-{region}:")] {
            assert!(
                compose.contains(&format!("\n  {service}\n")),
                "no service {service}"
            );
        }
        for volume in [
            format!("keys-{region}:/keys/{region}"),
            format!("data-{region}:/var/lib/authsync/data"),
        ] {
            assert!(compose.contains(&volume), "no mount {volume}");
        }
    }
    for service in ["keys-init:", "prometheus:", "grafana:"] {
        assert!(
            compose.contains(&format!("\n  {service}\n")),
            "no service {service}"
        );
    }
    // Every file or directory mounted from the repository exists.
    let mut mounts = 0;
    for line in compose.lines() {
        if let Some(rest) = line.trim().strip_prefix("- ./") {
            let path = rest.split(':').next().unwrap();
            assert!(
                Path::new(env!("CARGO_MANIFEST_DIR")).join(path).exists(),
                "compose mounts ./{path}, which does not exist"
            );
            mounts += 1;
        }
    }
    assert!(mounts >= 8, "{mounts} mounts");
    // Keyrings are made at first start, never baked into the image.
    assert!(!read("Dockerfile").contains("keys init"));
    assert!(compose.contains("authsync keys init"));
}
