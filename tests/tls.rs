//! HTTPS on the node's listener: the API over TLS with a private CA, plain HTTP and
//! untrusted clients refused, the CLI through `--ca-cert`, a renewed certificate
//! served without a restart (and a broken renewal not served), and bad certificate
//! configuration refused at start naming the key.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{metric_value, TestNode, API_KEY};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use serde_json::json;

/// A private CA, and a leaf certificate it signed for 127.0.0.1 and localhost.
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn pki(name: &str) -> Pki {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("authsync test CA {name}"),
    );
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let key = KeyPair::generate().expect("node key");
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("node params")
        .signed_by(&key, &ca_cert, &ca_key)
        .expect("node certificate");
    Pki {
        ca_pem: ca_cert.pem(),
        cert_pem: leaf.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// Writes `pki`'s files under `dir`: (ca, cert, key).
fn write(dir: &Path, pki: &Pki) -> (PathBuf, PathBuf, PathBuf) {
    let paths = (
        dir.join("ca.pem"),
        dir.join("node.crt"),
        dir.join("node.key"),
    );
    std::fs::write(&paths.0, &pki.ca_pem).unwrap();
    std::fs::write(&paths.1, &pki.cert_pem).unwrap();
    std::fs::write(&paths.2, &pki.key_pem).unwrap();
    (paths.0, paths.1, paths.2)
}

fn tls_section(cert: &Path, key: &Path) -> String {
    format!(
        "\n[http.tls]\ncert = \"{}\"\nkey = \"{}\"\nreload_interval_ms = 1000\n",
        cert.display(),
        key.display()
    )
}

fn trusting(ca_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn metrics(http: &reqwest::Client, url: &str) -> String {
    http.get(format!("{url}/metrics"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("metrics over https")
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_is_served_over_https_and_plain_or_untrusted_clients_are_refused() {
    let files = tempfile::tempdir().unwrap();
    let first = pki("one");
    let (ca, cert, key) = write(files.path(), &first);
    let node = TestNode::start_with(&tls_section(&cert, &key));
    assert!(node.url.starts_with("https://"), "{}", node.url);
    assert!(node.log().contains("https=true"), "{}", node.log());
    let http = trusting(&first.ca_pem);

    // The API works end to end: create, log in, read.
    let created = http
        .post(format!("{}/v1/users", node.url))
        .bearer_auth(API_KEY)
        .json(&json!({"email": "tls@example.com", "password": "correct horse battery"}))
        .send()
        .await
        .expect("create over https");
    assert_eq!(created.status(), 201);
    let id = created.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let login = http
        .post(format!("{}/v1/login", node.url))
        .bearer_auth(API_KEY)
        .json(&json!({"login": "tls@example.com", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let body: serde_json::Value = login.json().await.unwrap();
    assert_eq!(body["user_id"], id);
    assert!(body["access_token"].as_str().is_some_and(|t| !t.is_empty()));
    let read = http
        .get(format!("{}/v1/users/{id}", node.url))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(
        read.json::<serde_json::Value>().await.unwrap()["email"],
        "tls@example.com"
    );

    // A client that does not trust the CA is refused by its own TLS check.
    let untrusted = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .get(format!("{}/healthz", node.url))
        .send()
        .await;
    assert!(
        untrusted.is_err(),
        "a client without the CA got {untrusted:?}"
    );

    // Plain HTTP on the TLS port gets no HTTP answer at all.
    let plain_url = node.url.replacen("https://", "http://", 1);
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .get(format!("{plain_url}/healthz"))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
    let text = metrics(&http, &node.url).await;
    let failures = metric_value(&text, "authsync_tls_handshake_failures_total", &[]).unwrap_or(0.0);
    assert!(failures >= 2.0, "handshake failures counted: {failures}");

    // The CLI reaches the node through --ca-cert, and fails clearly without it.
    let cli = |with_ca: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_authsync"));
        cmd.args(["api-keys", "list", "--url", &node.url, "--api-key", API_KEY]);
        if with_ca {
            cmd.arg("--ca-cert").arg(&ca);
        }
        cmd.env_remove("AUTHSYNC_CA_CERT").output().unwrap()
    };
    let listed = cli(true);
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    assert!(String::from_utf8_lossy(&listed.stdout).contains("test"));
    let refused = cli(false);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("reach https://"), "{err}");

    // SIGTERM still stops the node in order, open HTTPS connections included.
    let mut node = node;
    node.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart_and_a_broken_one_is_not() {
    let files = tempfile::tempdir().unwrap();
    let first = pki("one");
    let (_, cert, key) = write(files.path(), &first);
    let node = TestNode::start_with(&tls_section(&cert, &key));
    let old = trusting(&first.ca_pem);
    assert_eq!(
        old.get(format!("{}/healthz", node.url))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // A half-written renewal (a key with no certificate) is not served.
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = metrics(&old, &node.url).await;
        if metric_value(
            &text,
            "authsync_tls_reloads_total",
            &[("outcome", "failed")],
        )
        .unwrap_or(0.0)
            >= 1.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "the broken file was never tried");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        node.log().contains("TLS certificate not reloaded"),
        "{}",
        node.log()
    );

    // The renewal from another CA: served within a few reload intervals.
    let second = pki("two");
    std::fs::write(&key, &second.key_pem).unwrap();
    std::fs::write(&cert, &second.cert_pem).unwrap();
    let new = trusting(&second.ca_pem);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // A fresh client each time: no pooled connection from before the renewal.
        let fresh = trusting(&second.ca_pem);
        if let Ok(r) = fresh.get(format!("{}/healthz", node.url)).send().await {
            assert_eq!(r.status(), 200);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = metrics(&new, &node.url).await;
    assert!(
        metric_value(
            &text,
            "authsync_tls_reloads_total",
            &[("outcome", "loaded")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    // New connections no longer present the old chain.
    let stale = trusting(&first.ca_pem)
        .get(format!("{}/healthz", node.url))
        .send()
        .await;
    assert!(
        stale.is_err(),
        "the old certificate is still served: {stale:?}"
    );
}

#[test]
fn bad_certificate_settings_are_refused_at_start_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let one = pki("one");
    let two = pki("two");
    let (_, cert, key) = write(dir.path(), &one);
    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, &two.key_pem).unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "hello\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let base = format!(
        "region = \"eu-west\"\ndata_dir = \"{}\"\nkeyring = \"k\"\n[[api_keys]]\nname = \"a\"\nsha256 = \"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\"\n",
        dir.path().join("data").display()
    );
    for (section, wanted) in [
        (tls_section(&missing, &key), "missing.pem"),
        (tls_section(&garbage, &key), "holds no PEM"),
        (tls_section(&cert, &garbage), "garbage.pem"),
        (
            tls_section(&cert, &other_key),
            "is not the key of the first certificate",
        ),
        (
            format!("\n[anti_entropy]\nca_cert = \"{}\"\n", garbage.display()),
            "anti_entropy.ca_cert",
        ),
    ] {
        let path = dir.path().join("node.toml");
        std::fs::write(&path, format!("{base}{section}")).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_authsync"))
            .args(["node", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{section} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(wanted), "{wanted} not in: {err}");
        assert!(
            !dir.path().join("data").exists(),
            "{section}: data dir created"
        );
    }
}

/// Kafka's own TLS and SASL are librdkafka settings passed through `[kafka.client]`:
/// a CA file that does not exist stops the node at start, in librdkafka's words.
#[test]
fn kafka_tls_and_sasl_settings_reach_librdkafka() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    common::init_keys(&keys);
    let path = dir.path().join("node.toml");
    std::fs::write(
        &path,
        format!(
            r#"region = "eu-west"
data_dir = "{data}"
keyring = "{keyring}"
[http]
listen = "127.0.0.1:0"
[[api_keys]]
name = "a"
sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
[kafka]
bootstrap_servers = "127.0.0.1:1"
[kafka.client]
"security.protocol" = "sasl_ssl"
"sasl.mechanism" = "SCRAM-SHA-512"
"sasl.username" = "authsync"
"sasl.password" = "not-logged"
"ssl.ca.location" = "{ca}"
[[peers]]
region = "us-east"
"#,
            data = dir.path().join("data").display(),
            keyring = keys.join("keyring-eu-west.json").display(),
            ca = dir.path().join("no-such-ca.pem").display(),
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_authsync"))
        .args(["node", "--config"])
        .arg(&path)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ssl.ca.location"), "{err}");
    assert!(
        !err.contains("not-logged"),
        "the SASL password was printed: {err}"
    );
}
