//! What an attacker or an auditor would check: no plaintext at rest, tamper
//! detection, legacy hashes, merges on import, key rotation, and retiring an old
//! master key so that a backup made before it cannot be read.

mod common;

use std::time::Duration;

use authsync::crypto::keyring::{keyring_path, Keyring};
use authsync::storage::store::{Store, StoreOptions, CF_RECORDS, CF_USER_KEYS};
use common::{files_under, metric_value, TestNode};
use serde_json::json;

const PW: &str = "correct horse battery";

#[tokio::test]
async fn no_plaintext_personal_data_in_any_file_or_log() {
    let mut node = TestNode::start();
    let c = node.client();
    let mut markers: Vec<String> = Vec::new();
    for i in 0..20 {
        let email = format!("zelda.quartermaine{i}@plaintext-probe.example");
        let phone = format!("+1415555{:04}", 3000 + i);
        let given = format!("Zenobia{i}Xylophone");
        let secret = format!("unguessable passphrase {i}");
        let r = c
            .post(
                "/v1/users",
                json!({"email": email, "phone": phone, "password": secret,
                       "profile": {"given_name": given, "street": format!("{i} Quillfeather Lane")}}),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.text);
        let id = r.body["id"].as_str().unwrap().to_string();
        // Updates and an import produce more events and more versions.
        let r = c
            .send(
                "PATCH",
                &format!("/v1/users/{id}"),
                Some(json!({"profile": {"family_name": format!("Wolfeschlegel{i}")}})),
            )
            .await;
        assert_eq!(r.status, 200);
        markers.extend([
            email,
            phone.clone(),
            phone[1..].to_string(),
            given,
            secret,
            format!("Wolfeschlegel{i}"),
        ]);
    }
    markers.push("Quillfeather".into());
    let r = c
        .post(
            "/v1/users/import",
            json!([{"email": "legacy.quinoa@plaintext-probe.example", "source": "shop",
                    "legacy_hash": {"algorithm": "sha1", "hash": "8be3c943b1609fffbfc51aad666d0a04adf83c9d"},
                    "profile": {"given_name": "Quetzalcoatlus"}}]),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    markers.extend([
        "legacy.quinoa".into(),
        "Quetzalcoatlus".into(),
        "plaintext-probe".into(),
    ]);

    let data_dir = node.data_dir();
    let scan = |stage: &str| {
        let files = files_under(&data_dir);
        assert!(!files.is_empty());
        for f in &files {
            let bytes = std::fs::read(f).unwrap();
            for m in &markers {
                assert!(
                    !bytes.windows(m.len()).any(|w| w == m.as_bytes()),
                    "{stage}: {m:?} found in {}",
                    f.display()
                );
            }
        }
    };
    scan("running (WAL)");
    node.stop(); // flushes memtables into SST files
    scan("stopped (SST)");
    let log = node.log();
    for m in &markers {
        assert!(!log.contains(m.as_str()), "{m:?} found in the node log");
    }

    // The outbox events themselves: decode every one and look inside.
    let store = Store::open(&node.data_dir(), &StoreOptions::default()).unwrap();
    let events = store.outbox_head(10_000).unwrap();
    assert_eq!(
        events.len(),
        63,
        "20 creates + 20 updates + 1 import, the 21 accounts' user keys, and the region's first token signing key"
    );
    for (_, bytes) in events {
        for m in &markers {
            assert!(
                !bytes.windows(m.len()).any(|w| w == m.as_bytes()),
                "{m:?} in an outbox event"
            );
        }
    }
}

#[tokio::test]
async fn tampered_records_fail_with_one_generic_error_and_a_metric() {
    let mut node = TestNode::start();
    let c = node.client();
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(c.create(&format!("t{i}@example.com"), PW).await);
    }
    node.stop();
    {
        let store = Store::open(&node.data_dir(), &StoreOptions::default()).unwrap();
        // Flip one byte at a different place in each of the first five records:
        // start, a third, the middle, two thirds, the last byte.
        for (n, id) in ids.iter().take(5).enumerate() {
            let key = *uuid::Uuid::parse_str(id).unwrap().as_bytes();
            let mut bytes = store.raw_get(CF_RECORDS, &key).unwrap().unwrap();
            let at = (bytes.len() - 1) * n / 4;
            bytes[at] ^= 0x04;
            store.raw_put(CF_RECORDS, &key, &bytes).unwrap();
        }
    }
    node.start_again();
    let c = node.client();
    let mut bodies = Vec::new();
    for id in ids.iter().take(5) {
        let r = c.get(&format!("/v1/users/{id}")).await;
        assert_eq!(r.status, 500, "{}", r.text);
        bodies.push(r.text);
    }
    assert!(
        bodies.iter().all(|b| *b == bodies[0]),
        "one generic error: {bodies:?}"
    );
    assert!(bodies[0].contains("record_unreadable"));
    let login = c
        .post(
            "/v1/login",
            json!({"login": "t0@example.com", "password": PW}),
        )
        .await;
    assert!(login.status == 500 || login.status == 401, "{}", login.text);
    assert_ne!(login.status, 200);
    // The untouched record is fine, and the node still serves.
    assert_eq!(c.get(&format!("/v1/users/{}", ids[5])).await.status, 200);
    let metrics = c.metrics().await;
    let n = metric_value(
        &metrics,
        "authsync_records_unreadable_total",
        &[("reason", "integrity")],
    )
    .unwrap();
    assert!(n >= 5.0, "{metrics}");
}

/// Legacy hashes for the password "hunter2 legacy".
fn legacy_hashes() -> Vec<(&'static str, serde_json::Value)> {
    use md5::Digest;
    let pw = "hunter2 legacy";
    let md5 = hex::encode(md5::Md5::digest(pw.as_bytes()));
    let md5_salted = hex::encode(md5::Md5::digest(format!("s4lt{pw}").as_bytes()));
    let sha1 = hex::encode(sha1::Sha1::digest(pw.as_bytes()));
    let sha256_suffix = hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        format!("{pw}pepper!").as_bytes(),
    ));
    let bcrypt = bcrypt::hash(pw, 4).unwrap();
    let mut out = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(1000).unwrap(),
        b"djangosalt",
        pw.as_bytes(),
        &mut out,
    );
    use base64::Engine;
    let django = format!(
        "pbkdf2_sha256$1000$djangosalt${}",
        base64::engine::general_purpose::STANDARD.encode(out)
    );
    use argon2::password_hash::{PasswordHasher, SaltString};
    let argon = argon2::Argon2::default()
        .hash_password(
            pw.as_bytes(),
            &SaltString::encode_b64(b"legacy-salt-0001").unwrap(),
        )
        .unwrap()
        .to_string();
    vec![
        ("md5", json!({"algorithm": "md5", "hash": md5})),
        (
            "md5-salted",
            json!({"algorithm": "md5", "hash": md5_salted, "salt": "s4lt"}),
        ),
        ("sha1", json!({"algorithm": "sha1", "hash": sha1})),
        (
            "sha256-suffix",
            json!({"algorithm": "sha256", "hash": sha256_suffix, "salt": "pepper!", "salt_position": "suffix"}),
        ),
        ("bcrypt", json!({"algorithm": "bcrypt", "hash": bcrypt})),
        (
            "pbkdf2",
            json!({"algorithm": "pbkdf2-sha256", "hash": django}),
        ),
        ("argon2id", json!({"algorithm": "argon2id", "hash": argon})),
    ]
}

#[tokio::test]
async fn legacy_hashes_log_in_and_are_upgraded_on_first_login() {
    let mut node = TestNode::start();
    let c = node.client();
    let hashes = legacy_hashes();
    let items: Vec<_> = hashes
        .iter()
        .map(|(name, h)| json!({"email": format!("{name}@legacy.example"), "legacy_hash": h, "source": "old-shop"}))
        .collect();
    let r = c.post("/v1/users/import", json!(items)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let results = r.body.as_array().unwrap();
    assert_eq!(results.len(), hashes.len());
    for (i, res) in results.iter().enumerate() {
        assert_eq!(res["index"], i);
        assert_eq!(res["outcome"], "created");
    }
    for (name, _) in &hashes {
        let login = format!("{name}@legacy.example");
        let wrong = c
            .post(
                "/v1/login",
                json!({"login": login, "password": "hunter3 legacy"}),
            )
            .await;
        assert_eq!(wrong.status, 401, "{name}");
        let before = c
            .get(&format!("/v1/users?email={name}%40legacy.example"))
            .await
            .body["version"]["ts"]
            .clone();
        let ok = c
            .post(
                "/v1/login",
                json!({"login": login, "password": "hunter2 legacy"}),
            )
            .await;
        assert_eq!(ok.status, 200, "{name}: {}", ok.text);
        let after = c
            .get(&format!("/v1/users?email={name}%40legacy.example"))
            .await
            .body["version"]["ts"]
            .clone();
        assert_ne!(
            before, after,
            "{name}: the first good login stores a current hash"
        );
        let again = c
            .post(
                "/v1/login",
                json!({"login": login, "password": "hunter2 legacy"}),
            )
            .await;
        assert_eq!(again.status, 200, "{name}");
        let last = c
            .get(&format!("/v1/users?email={name}%40legacy.example"))
            .await
            .body["version"]["ts"]
            .clone();
        assert_eq!(after, last, "{name}: no second upgrade");
    }
    let metrics = c.metrics().await;
    assert_eq!(
        metric_value(&metrics, "authsync_password_upgrades_total", &[]),
        Some(hashes.len() as f64)
    );

    // On disk: a current Argon2id hash, and the legacy hashes are gone.
    node.stop();
    let store = Store::open(&node.data_dir(), &StoreOptions::default()).unwrap();
    let keyring = Keyring::load(&keyring_path(&node.keys_dir(), "af-south")).unwrap();
    for r in store.scan_records(None, 100).unwrap().0 {
        assert!(
            r.secret.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{}",
            r.secret
        );
        let id: [u8; 16] = r.id.as_slice().try_into().unwrap();
        let key = store.get_user_key(&id).unwrap().expect("the account's key");
        let user = authsync::crypto::envelope::open_user_key(&key, &keyring).unwrap();
        let info = authsync::crypto::envelope::open(&r, &keyring, &user).unwrap();
        assert!(info.old_hashes.is_empty());
    }
}

#[tokio::test]
async fn import_merges_into_existing_accounts_instead_of_duplicating() {
    let node = TestNode::start();
    let c = node.client();
    let r = c
        .post(
            "/v1/users",
            json!({"email": "merge@example.com", "password": PW, "profile": {"given_name": "Ada"}}),
        )
        .await;
    let id = r.body["id"].as_str().unwrap().to_string();
    let hashes = legacy_hashes();
    let r = c
        .post(
            "/v1/users/import",
            json!([
                {"email": "MERGE@example.com", "phone": "+14155552671", "source": "shop",
                 "profile": {"given_name": "Other", "city": "Lagos"}, "legacy_hash": hashes[0].1},
                {"email": "fresh@example.com", "source": "forum", "legacy_hash": hashes[2].1, "profile": {"a": "1"}},
                {"email": "fresh@example.com", "source": "blog", "legacy_hash": hashes[3].1, "profile": {"b": "2"}},
            ]),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let res = r.body.as_array().unwrap();
    assert_eq!(res[0]["outcome"], "merged");
    assert_eq!(res[0]["id"], id.as_str());
    assert_eq!(res[1]["outcome"], "created");
    assert_eq!(res[2]["outcome"], "merged");
    assert_eq!(res[2]["id"], res[1]["id"]);

    let u = c.get(&format!("/v1/users/{id}")).await.body;
    assert_eq!(u["profile"]["given_name"], "Ada", "existing values win");
    assert_eq!(u["profile"]["city"], "Lagos", "missing fields are added");
    assert_eq!(u["phone"], "+14155552671", "a free phone is taken");
    let fresh = c.get("/v1/users?email=fresh%40example.com").await.body;
    assert_eq!(fresh["profile"], json!({"a": "1", "b": "2"}));
    assert_eq!(c.digest().await.0, 2, "two accounts, not four");

    // Both the current and the imported password open the merged account.
    assert_eq!(
        c.post(
            "/v1/login",
            json!({"login": "merge@example.com", "password": PW})
        )
        .await
        .status,
        200
    );
    let legacy = c
        .post(
            "/v1/login",
            json!({"login": "merge@example.com", "password": "hunter2 legacy"}),
        )
        .await;
    assert_eq!(legacy.status, 200, "{}", legacy.text);
    let sha256_login = c
        .post(
            "/v1/login",
            json!({"login": "fresh@example.com", "password": "hunter2 legacy"}),
        )
        .await;
    assert_eq!(sha256_login.status, 200, "{}", sha256_login.text);
}

#[tokio::test]
async fn key_rotation_needs_no_restart_and_old_records_are_rewrapped() {
    let mut node = TestNode::start();
    let c = node.client();
    let old = c.create("before-rotation@example.com", PW).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_authsync"))
        .args(["keys", "rotate", "--region", "af-south", "--dir"])
        .arg(node.keys_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The node notices the new keyring and re-wraps the older record by itself.
    let mut rotated = false;
    for _ in 0..100 {
        let m = c.metrics().await;
        if metric_value(&m, "authsync_keyring_active_version", &[]) == Some(2.0)
            && metric_value(&m, "authsync_rewrapped_records_total", &[]).unwrap_or(0.0) >= 1.0
        {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        rotated,
        "keyring not reloaded or record not re-wrapped; log:\n{}",
        node.log()
    );
    let new = c.create("after-rotation@example.com", PW).await;
    for id in [&old, &new] {
        assert_eq!(c.get(&format!("/v1/users/{id}")).await.status, 200);
    }
    assert_eq!(
        c.post(
            "/v1/login",
            json!({"login": "before-rotation@example.com", "password": PW})
        )
        .await
        .status,
        200
    );
    node.stop();
    let store = Store::open(&node.data_dir(), &StoreOptions::default()).unwrap();
    for r in store.scan_records(None, 100).unwrap().0 {
        let env = r.info.as_ref().unwrap();
        let own = env.keys.iter().find(|k| k.region == "af-south").unwrap();
        assert_eq!(own.key_version, 2, "every record now uses af-south/v2");
        assert_eq!(env.keys.len(), 3, "still wrapped for every region");
    }
}

#[tokio::test]
async fn a_keyring_readable_by_others_is_refused_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let mut node = TestNode::start();
    node.stop();
    let path = keyring_path(&node.keys_dir(), "af-south");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_authsync"))
        .args(["node", "--config"])
        .arg(node.config_path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("readable by other users"), "{err}");
}

#[test]
fn a_bad_config_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    for (text, key) in [
        (
            "region = \"eu-west\"\ndata_dir = \"d\"\nkeyring = \"k\"\n[http]\nlisten = \"x\"\n",
            "http.listen",
        ),
        (
            "region = \"eu-west\"\ndata_dir = \"d\"\nkeyring = \"k\"\nbogus = 1\n",
            "bogus",
        ),
        (
            "region = \"eu-west\"\ndata_dir = \"d\"\nkeyring = \"k\"\n",
            "api_keys",
        ),
        ("region = 5\n", "region"),
        (
            "region = \"eu-west\"\ndata_dir = \"d\"\nkeyring = \"k\"\n[[api_keys]]\nname = \"a\"\nsha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\nscopes = [\"root\"]\n",
            "api_keys[0].scopes",
        ),
        (
            "region = \"eu-west\"\ndata_dir = \"d\"\nkeyring = \"k\"\n[[api_keys]]\nname = \"a\"\nsha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\n[rate_limit]\nper_second = -1.0\n",
            "rate_limit.per_second",
        ),
        (
            "region = \"eu-west\"\ndata_dir = \"d\"\nkeyring = \"k\"\n[[api_keys]]\nname = \"a\"\nsha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\n[request_signing]\nrequired = true\n[[request_signing.clients]]\nkid = \"x\"\nalg = \"HS256\"\nsecret_hex = \"abcd\"\n",
            "request_signing: clients[0].secret_hex",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_authsync"))
            .args(["node", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{key} not named in: {err}");
    }
}

#[tokio::test]
async fn bytes_changed_inside_an_sst_file_fail_the_read_the_same_way() {
    let mut node = TestNode::start();
    let c = node.client();
    let id = c.create("on-disk@example.com", PW).await;
    node.stop(); // flushes the record into an SST file
                 // A slice of this record's ciphertext, found in the files as written.
    let needle = {
        let store = Store::open(&node.data_dir(), &StoreOptions::default()).unwrap();
        let key = *uuid::Uuid::parse_str(&id).unwrap().as_bytes();
        let bytes = store.raw_get(CF_RECORDS, &key).unwrap().unwrap();
        let record = authsync::storage::store::decode_record(&key, &bytes).unwrap();
        record.info.unwrap().ciphertext[..24].to_vec()
    };
    let mut changed = 0;
    for f in files_under(&node.data_dir())
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "sst"))
    {
        let mut bytes = std::fs::read(&f).unwrap();
        // The outbox event embeds the record too; change the records file only.
        if bytes.windows(6).any(|w| w == b"outbox") {
            continue;
        }
        if let Some(at) = bytes
            .windows(needle.len())
            .position(|w| w == needle.as_slice())
        {
            bytes[at + 10] ^= 0x20;
            std::fs::write(&f, bytes).unwrap();
            changed += 1;
        }
    }
    assert!(
        changed >= 1,
        "the record's ciphertext was not found in any SST file"
    );
    node.start_again();
    let c = node.client();
    let r = c.get(&format!("/v1/users/{id}")).await;
    assert_eq!(r.status, 500, "{}", r.text);
    assert_eq!(r.body["error"], "record_unreadable");
    let metrics = c.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "authsync_records_unreadable_total",
            &[("reason", "integrity")]
        )
        .unwrap()
            >= 1.0
    );
    // The node keeps serving.
    assert_eq!(c.get("/healthz").await.status, 200);
}

/// `authsync keys retire` for af-south, against the node at `url`: (success, stderr).
fn retire(node: &TestNode, version: &str) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_authsync"))
        .args([
            "keys",
            "retire",
            "--region",
            "af-south",
            "--version",
            version,
        ])
        .arg("--dir")
        .arg(node.keys_dir())
        .args(["--url", &node.url, "--api-key", common::API_KEY])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_master_key_leaves_a_backup_from_before_it_unreadable() {
    let mut node = TestNode::start_with("[tokens]\npublish_lead_s = 0\n");
    let id = node.client().create("retire@example.com", PW).await;
    let path = format!("/v1/users/{id}");
    // A backup: the record and its user key as they are now, under af-south/v1.
    node.stop();
    let uuid = uuid::Uuid::parse_str(&id).unwrap();
    let (record, key) = {
        let store = Store::open(&node.data_dir(), &StoreOptions::default()).unwrap();
        (
            store.raw_get(CF_RECORDS, uuid.as_bytes()).unwrap().unwrap(),
            store
                .raw_get(CF_USER_KEYS, uuid.as_bytes())
                .unwrap()
                .unwrap(),
        )
    };
    node.start_again();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_authsync"))
        .args(["keys", "rotate", "--region", "af-south", "--dir"])
        .arg(node.keys_dir())
        .output()
        .unwrap();
    assert!(out.status.success());
    // Before the node has reloaded its keyring, v1 is still active there: refused.
    let c = node.client();
    for _ in 0..100 {
        if c.get("/v1/admin/keys/usage").await.body["active"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The signing key's seed is still sealed under v1: retiring it is refused.
    let (ok, err) = retire(&node, "1");
    assert!(!ok && err.contains("is still used by"), "{err}");
    assert_eq!(
        c.post("/v1/admin/signing-keys/rotate", json!({}))
            .await
            .status,
        201
    );
    // Key recovery moves the record and the user key to v2; then nothing uses v1.
    let mut unused = false;
    for _ in 0..150 {
        let usage = c.get("/v1/admin/keys/usage").await.body;
        let v1 = &usage["versions"][0];
        assert_eq!(v1["version"], 1, "{usage}");
        if v1["records"] == 0 && v1["user_keys"] == 0 && v1["signing_keys"] == 0 {
            unused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(unused, "v1 still in use; log:\n{}", node.log());
    let (ok, err) = retire(&node, "1");
    assert!(ok, "{err}");
    let (ok, err) = retire(&node, "2");
    assert!(!ok && err.contains("active key"), "{err}");
    // The node drops v1 at its next keyring reload, and serves as before.
    let mut dropped = false;
    for _ in 0..100 {
        if c.get("/v1/admin/keys/usage").await.body["versions"]
            == json!([{"version": 2, "records": 1, "user_keys": 1, "signing_keys": 1}])
        {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dropped, "{}", c.get("/v1/admin/keys/usage").await.text);
    assert_eq!(c.get(&path).await.status, 200);
    let login = c
        .post(
            "/v1/login",
            json!({"login": "retire@example.com", "password": PW}),
        )
        .await;
    assert_eq!(login.status, 200, "{}", login.text);

    // The backup restored in place: its data key and user key are under v1, which no
    // longer exists anywhere.
    node.stop();
    {
        let store = Store::open(&node.data_dir(), &StoreOptions::default()).unwrap();
        store.raw_put(CF_RECORDS, uuid.as_bytes(), &record).unwrap();
        store.raw_put(CF_USER_KEYS, uuid.as_bytes(), &key).unwrap();
    }
    node.start_again();
    let read = node.client().get(&path).await;
    assert_eq!(read.status, 503, "{}", read.text);
    assert!(!read.text.contains("retire@example.com"));
}
