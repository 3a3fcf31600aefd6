//! The import rule of `src/lib.rs`, checked on every file under `src/`: a file imports
//! only from lower layers (and `proto`), crypto and storage never import each other,
//! and inside a layer each file imports only the files its map puts before it. Also:
//! only `api/mod.rs` builds routes, and only `api/error.rs` chooses an HTTP status.
//!
//! A violation names the file and line and what it reached. `AUTHSYNC_LAYERS_SRC=DIR`
//! checks another tree (an old checkout, say) instead of this crate's `src/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The layers, lowest first: (folder, rank). Equal ranks may not import each other.
const LAYERS: &[(&str, u32)] = &[
    ("common", 0),
    ("crypto", 1),
    ("storage", 1),
    ("accounts", 2),
    ("replication", 3),
    ("api", 4),
    ("node", 5),
];

/// Inside each layer: (unit, rank), where a unit is a file or folder of the layer
/// (`""` is the layer's `mod.rs`). A unit may import units of lower rank, and itself.
const UNITS: &[(&str, &[(&str, u32)])] = &[
    (
        "common",
        &[
            ("config", 0),
            ("region", 0),
            ("metrics", 0),
            ("replay", 0),
            ("hlc", 1),
            ("faults", 2),
            ("schedule", 2),
            ("tls", 2),
            ("serve", 3),
            ("", 4),
        ],
    ),
    (
        "crypto",
        &[
            ("primitives", 0),
            ("jws", 0),
            ("keyring", 1),
            ("totp", 1),
            ("wraps", 1),
            ("envelope", 2),
            ("signatures", 2),
            ("blind_index", 2),
            ("password", 2),
            ("", 3),
        ],
    ),
    ("storage", &[("store", 0), ("", 1)]),
    (
        "accounts",
        &[
            ("error", 0),
            ("input", 1),
            ("bounds", 1),
            ("entries", 2),
            ("lockout", 3),
            ("api_keys", 3),
            ("users", 4),
            ("tokens", 5),
            ("oidc", 6),
            ("", 7),
        ],
    ),
    (
        "replication",
        &[
            ("config", 0),
            ("topics", 1),
            ("retry_queue", 2),
            ("publisher", 3),
            ("consumer", 3),
            ("anti_entropy", 3),
            ("forward", 4),
            ("", 5),
        ],
    ),
    (
        "api",
        &[
            ("config", 0),
            ("delivery", 0),
            ("error", 0),
            ("middleware::rate_limit", 0),
            ("middleware::signing", 0),
            ("state", 1),
            ("extract", 1),
            ("schema", 0),
            ("middleware", 2),
            ("handlers", 2),
            ("openapi", 3),
            ("", 4),
        ],
    ),
    (
        "node",
        &[
            ("config", 0),
            ("sweepers", 0),
            ("launcher", 0),
            ("local_cluster", 1),
            ("", 2),
            ("process", 3),
        ],
    ),
];

/// What API handlers may import of their own layer: `schema` only names the shapes
/// their OpenAPI attributes describe.
const HANDLER_IMPORTS: &[&str] = &["state", "error", "extract", "schema"];

#[derive(Debug, Clone, PartialEq, Eq)]
struct Violation {
    file: String,
    line: usize,
    problem: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.problem)
    }
}

fn layer_rank(name: &str) -> Option<u32> {
    LAYERS.iter().find(|(l, _)| *l == name).map(|(_, r)| *r)
}

fn units(layer: &str) -> &'static [(&'static str, u32)] {
    UNITS
        .iter()
        .find(|(l, _)| *l == layer)
        .map(|(_, u)| *u)
        .unwrap_or(&[])
}

/// The unit a path inside `layer` falls in: the longest unit name that prefixes
/// `segments` (`["middleware", "signing", "Verifier"]` → `middleware::signing`);
/// `""` (the layer's mod.rs) when none does.
fn unit_of(layer: &str, segments: &[&str]) -> &'static str {
    let mut best: &'static str = "";
    for (unit, _) in units(layer) {
        if unit.is_empty() {
            continue;
        }
        let parts: Vec<&str> = unit.split("::").collect();
        if segments.len() >= parts.len()
            && segments[..parts.len()] == parts[..]
            && unit.len() > best.len()
        {
            best = unit;
        }
    }
    best
}

fn unit_rank(layer: &str, unit: &str) -> Option<u32> {
    units(layer)
        .iter()
        .find(|(u, _)| *u == unit)
        .map(|(_, r)| *r)
}

/// The text of a line outside comments (`//` to the end of the line, `/* */` on one
/// line). Good enough for this code base: no string here holds `crate::`.
fn code_of(line: &str) -> String {
    let mut out = line.to_string();
    while let (Some(a), Some(b)) = (out.find("/*"), out.find("*/")) {
        if b > a {
            out.replace_range(a..b + 2, "");
        } else {
            break;
        }
    }
    match out.find("//") {
        Some(i) => out[..i].to_string(),
        None => out,
    }
}

/// Every `crate::` path in `code`, as its segments, with `crate::{a::b, c}` groups
/// expanded (nested groups too).
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        let after = &rest[i + "crate::".len()..];
        rest = after;
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue; // `authsync_crate::`, `$crate::`-like or a longer path
        }
        expand(after, &mut Vec::new(), &mut out);
    }
    out
}

/// Reads one path (or brace group) at the start of `text` under `prefix`.
fn expand(text: &str, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    let text = text.trim_start();
    if let Some(group) = text.strip_prefix('{') {
        // Split the group's top level on commas.
        let mut depth = 0;
        let mut start = 0;
        let bytes: Vec<char> = group.chars().collect();
        let mut items = Vec::new();
        for (i, c) in bytes.iter().enumerate() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    items.push(bytes[start..i].iter().collect::<String>());
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(bytes[start..i].iter().collect::<String>());
                    start = i + 1;
                }
                _ => {}
            }
        }
        for item in items {
            let item = item.trim();
            if item.is_empty() || item == "self" {
                if item == "self" && !prefix.is_empty() {
                    out.push(prefix.clone());
                }
                continue;
            }
            let mut p = prefix.clone();
            expand(item, &mut p, out);
        }
        return;
    }
    let ident: String = text
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if ident.is_empty() {
        if !prefix.is_empty() {
            out.push(prefix.clone());
        }
        return;
    }
    prefix.push(ident.clone());
    let rest = &text[ident.len()..];
    match rest.strip_prefix("::") {
        Some(more) => expand(more, prefix, out),
        None => out.push(prefix.clone()),
    }
}

/// Where a file sits: its layer folder and its segments below it (`src/api/handlers/
/// users.rs` → `("api", ["handlers", "users"])`; a `mod.rs` names its folder).
fn place(rel: &Path) -> Option<(String, Vec<String>)> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let file = parts.pop()?;
    let stem = file.strip_suffix(".rs")?.to_string();
    if stem != "mod" {
        parts.push(stem);
    }
    if parts.is_empty() {
        return None;
    }
    let layer = parts.remove(0);
    Some((layer, parts))
}

/// Checks one library file's text; `rel` is its path under `src/`.
fn check_file(rel: &Path, text: &str) -> Vec<Violation> {
    let name = format!("src/{}", rel.display());
    let mut found = Vec::new();
    let Some((layer, own)) = place(rel) else {
        return found;
    };
    let Some(own_rank) = layer_rank(&layer) else {
        found.push(Violation {
            file: name,
            line: 1,
            problem: format!(
                "`{layer}` is not a layer: library files live in {}",
                LAYERS
                    .iter()
                    .map(|(l, _)| *l)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
        return found;
    };
    let own_refs: Vec<&str> = own.iter().map(String::as_str).collect();
    let own_unit = unit_of(&layer, &own_refs);
    let mapped = unit_rank(&layer, own_unit).filter(|_| own.is_empty() || !own_unit.is_empty());
    let Some(own_unit_rank) = mapped else {
        found.push(Violation {
            file: name,
            line: 1,
            problem: format!("is not in the map of layer `{layer}` (tests/layers.rs UNITS)"),
        });
        return found;
    };
    let is_handler = layer == "api" && own_unit == "handlers";
    for (n, line) in text.lines().enumerate() {
        let code = code_of(line);
        let mut problem = |p: String| {
            found.push(Violation {
                file: name.clone(),
                line: n + 1,
                problem: p,
            })
        };
        if code.contains("super::super") {
            problem(
                "reaches past its parent with `super::super`; name the path from `crate::`".into(),
            );
        }
        if code.contains("StatusCode::") && !(layer == "api" && own == ["error"]) {
            problem("chooses an HTTP status outside api/error.rs".into());
        }
        if (code.contains("Router::new") || code.contains(".route("))
            && !(layer == "api" && own.is_empty())
        {
            problem("builds routes outside api/mod.rs".into());
        }
        for path in crate_paths(&code) {
            let target = path.join("::");
            let Some(top) = path.first() else { continue };
            if top == "proto" {
                continue;
            }
            let Some(rank) = layer_rank(top) else {
                problem(format!("uses `crate::{target}`, which is in no layer"));
                continue;
            };
            if *top != layer {
                if rank > own_rank {
                    problem(format!(
                        "uses `crate::{target}`: layer `{top}` is above `{layer}`"
                    ));
                } else if rank == own_rank {
                    problem(format!(
                        "uses `crate::{target}`: `{top}` and `{layer}` share a layer and never import each other"
                    ));
                }
                continue;
            }
            let rest: Vec<&str> = path[1..].iter().map(String::as_str).collect();
            let unit = unit_of(&layer, &rest);
            if unit == own_unit {
                continue;
            }
            if is_handler && !HANDLER_IMPORTS.contains(&unit) {
                problem(format!(
                    "uses `crate::{target}`: API handlers import only state, error and extract"
                ));
                continue;
            }
            match unit_rank(&layer, unit) {
                Some(r) if r < own_unit_rank => {}
                _ => problem(format!(
                    "uses `crate::{target}`: in `{layer}`, `{}` may not import `{}`",
                    if own_unit.is_empty() {
                        "mod.rs"
                    } else {
                        own_unit
                    },
                    if unit.is_empty() { "mod.rs" } else { unit },
                )),
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every violation in the library files of the tree at `src` (the binary's
/// `main.rs` and `cli/` use the library from outside and are not checked; `lib.rs`
/// only declares the layers).
fn check_tree(src: &Path) -> Vec<Violation> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut found = Vec::new();
    for path in files {
        let rel = path.strip_prefix(src).expect("under src").to_path_buf();
        let first = rel.iter().next().map(|p| p.to_string_lossy().into_owned());
        if matches!(first.as_deref(), Some("lib.rs" | "main.rs" | "cli")) {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read source file");
        found.extend(check_file(&rel, &text));
    }
    found
}

#[test]
fn every_import_in_src_goes_down_the_layers() {
    let src = std::env::var_os("AUTHSYNC_LAYERS_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let found = check_tree(&src);
    let mut by_file: BTreeMap<&str, usize> = BTreeMap::new();
    for v in &found {
        *by_file.entry(&v.file).or_default() += 1;
    }
    assert!(
        found.is_empty(),
        "{} imports break the layering of src/lib.rs ({} files):\n{}",
        found.len(),
        by_file.len(),
        found
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_map_names_every_unit_of_the_tree() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for (layer, units) in UNITS {
        for (unit, _) in *units {
            if unit.is_empty() {
                continue;
            }
            let rel = unit.replace("::", "/");
            let file = src.join(layer).join(format!("{rel}.rs"));
            let folder = src.join(layer).join(&rel).join("mod.rs");
            assert!(
                file.exists() || folder.exists(),
                "the map names {layer}::{unit}, which is not in src/"
            );
        }
    }
}

fn violations(rel: &str, text: &str) -> Vec<String> {
    check_file(Path::new(rel), text)
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn an_upward_import_is_named_with_its_file_and_line() {
    let found = violations(
        "storage/store.rs",
        "use std::sync::Arc;\n\nuse crate::accounts::users::Users;\n",
    );
    assert_eq!(
        found,
        ["src/storage/store.rs:3: uses `crate::accounts::users::Users`: layer `accounts` is above `storage`"]
    );
}

#[test]
fn crypto_and_storage_never_import_each_other() {
    let found = violations(
        "crypto/envelope.rs",
        "fn f() { crate::storage::store::Store::open(); }",
    );
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("share a layer"), "{found:?}");
    assert!(
        violations("storage/store.rs", "use crate::crypto::primitives::sha256;")[0]
            .contains("share a layer")
    );
}

#[test]
fn grouped_imports_are_each_checked_and_comments_are_not() {
    let found = violations(
        "common/hlc.rs",
        "use crate::{proto, common::config::Invalid, storage::{store::Store, self}};\n// crate::api::x\n/// [`crate::node::Node`]\n",
    );
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found.iter().all(|v| v.starts_with("src/common/hlc.rs:1:")));
    assert!(
        found[0].contains("crate::storage::store::Store"),
        "{found:?}"
    );
}

#[test]
fn inside_a_layer_the_map_s_order_holds() {
    // entries comes before users: users may use entries, never the reverse.
    assert!(violations(
        "accounts/users/login.rs",
        "use crate::accounts::entries::Entries;"
    )
    .is_empty());
    let found = violations("accounts/entries.rs", "use crate::accounts::users::Users;");
    assert!(
        found[0].contains("`entries` may not import `users`"),
        "{found:?}"
    );
    // lockout and api_keys share a rank: neither imports the other.
    assert_eq!(
        violations(
            "accounts/lockout.rs",
            "use crate::accounts::api_keys::Scope;"
        )
        .len(),
        1
    );
    // A file inside users/ uses its siblings freely.
    assert!(violations(
        "accounts/users/login.rs",
        "use crate::accounts::users::sealing::x;"
    )
    .is_empty());
}

#[test]
fn api_handlers_use_only_state_error_and_extract_and_only_mod_rs_routes() {
    let ok = "use crate::api::state::AppState;\nuse crate::api::error::ApiError;\nuse crate::api::extract::JsonBody;\nuse crate::accounts::users::Users;";
    assert!(violations("api/handlers/users.rs", ok).is_empty());
    let found = violations(
        "api/handlers/admin.rs",
        "use crate::api::middleware::require_peer;",
    );
    assert!(
        found[0].contains("only state, error and extract"),
        "{found:?}"
    );
    let found = violations(
        "api/handlers/admin.rs",
        "let r = Router::new().route(\"/x\", get(f));",
    );
    assert!(found[0].contains("routes outside api/mod.rs"), "{found:?}");
    assert!(violations("api/mod.rs", "let r = Router::new().route(\"/x\", get(f));").is_empty());
    let found = violations("api/handlers/users.rs", "Ok(StatusCode::CREATED)");
    assert!(
        found[0].contains("HTTP status outside api/error.rs"),
        "{found:?}"
    );
}

#[test]
fn a_file_outside_the_layers_is_refused() {
    // The flat tree this map replaced: every file beside lib.rs.
    let found = violations("users.rs", "use crate::store::Store;");
    assert!(
        found[0].starts_with("src/users.rs:1: `users` is not a layer"),
        "{found:?}"
    );
    let found = violations("accounts/sessions.rs", "");
    assert!(
        found[0].contains("not in the map of layer `accounts`"),
        "{found:?}"
    );
}
