//! A node under a flood, from the outside: logins past the hashing bound are refused at
//! once with 503 and Retry-After instead of queueing in threads, a client that never
//! finishes its headers is disconnected, and connections past the cap wait unserved
//! until one closes.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{TestNode, API_KEY};
use serde_json::json;

fn addr(node: &TestNode) -> String {
    node.url.trim_start_matches("http://").to_string()
}

/// A raw connection with `timeout` on its reads.
fn connect(node: &TestNode, timeout: Duration) -> TcpStream {
    let s = TcpStream::connect(addr(node)).expect("connect");
    s.set_read_timeout(Some(timeout)).unwrap();
    s
}

/// Sends `GET /healthz` on `s` (keeping it open) and reads the answer: `None` when
/// nothing came within the connection's read timeout.
fn health_over(s: &mut TcpStream) -> Option<String> {
    get_over(s, "/healthz")
}

/// Sends `GET path` on `s` (keeping it open) and reads the answer's first bytes.
fn get_over(s: &mut TcpStream, path: &str) -> Option<String> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: node\r\n\r\n").as_bytes())
        .expect("write request");
    let mut buf = [0u8; 4096];
    match s.read(&mut buf) {
        Ok(0) => Some(String::new()),
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(e) => panic!("read: {e}"),
    }
}

/// Sends a request for `path` whose headers never end, and reads until the node
/// closes the connection (true) or the read timeout passes with it open (false).
fn closed_while_half_sent(s: &mut TcpStream, path: &str) -> bool {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: node\r\nX-Slow: ").as_bytes())
        .unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            // hyper may say 408 before it closes.
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// The attack: many logins at once, more than the node hashes in parallel. Past the
/// bound each is answered 503 with Retry-After at once, none waits in a thread, and
/// the node logs in normally once the flood is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_past_the_hashing_bound_is_refused_at_once_with_retry_after() {
    let node =
        TestNode::start_with("http.max_hashing_in_flight = 1\n[rate_limit]\nper_second = 0\n");
    let client = node.client();
    client
        .create("ada@example.com", "correct horse battery")
        .await;
    let http = reqwest::Client::new();
    let flood = 40;
    let answers = futures::future::join_all((0..flood).map(|i| {
        let http = http.clone();
        let url = node.url.clone();
        async move {
            // Each a different login, so that no account's lockout refuses first.
            let resp = http
                .post(format!("{url}/v1/login"))
                .bearer_auth(API_KEY)
                .json(&json!({"login": format!("flood{i}@example.com"), "password": "wrong horse battery"}))
                .send()
                .await
                .expect("login request");
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let status = resp.status().as_u16();
            let body: serde_json::Value = resp.json().await.unwrap_or_default();
            (status, retry_after, body)
        }
    }))
    .await;
    let overloaded: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 503).collect();
    assert!(
        !overloaded.is_empty(),
        "40 logins at once against one hashing place: none was refused"
    );
    for (status, retry_after, body) in &answers {
        match status {
            401 => assert_eq!(body["error"], "invalid_credentials", "{body}"),
            503 => {
                assert_eq!(body["error"], "overloaded", "{body}");
                assert_eq!(retry_after.as_deref(), Some("1"), "{body}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    // The flood is over: a login goes through.
    let resp = http
        .post(format!("{}/v1/login", node.url))
        .bearer_auth(API_KEY)
        .json(&json!({"login": "ada@example.com", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// The attack: a client opens connections and sends its headers a byte at a time, or
/// never finishes them (slowloris), to hold the node's connections.
#[test]
fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let node = TestNode::start_with("http.header_read_timeout_ms = 300\n");
    let mut s = connect(&node, Duration::from_secs(10));
    assert!(
        closed_while_half_sent(&mut s, "/healthz"),
        "the half-sent request still holds its connection after 10 s"
    );
    // A client that finishes its request in time is served as usual.
    let mut s = connect(&node, Duration::from_secs(10));
    let answer = health_over(&mut s).expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// The attack: more connections than the node should hold. Past the cap, a new one
/// waits unserved (in the listen backlog) until one of the open ones closes.
#[test]
fn connections_past_the_cap_wait_until_one_closes() {
    let node =
        TestNode::start_with("http.max_connections = 2\nhttp.header_read_timeout_ms = 60000\n");
    // Give a readiness check's connection time to close (it may still be open).
    std::thread::sleep(Duration::from_millis(500));
    let mut held: Vec<TcpStream> = (0..2)
        .map(|i| {
            let mut s = connect(&node, Duration::from_secs(10));
            let answer = health_over(&mut s).unwrap_or_else(|| panic!("connection {i} unserved"));
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            s
        })
        .collect();
    let mut third = connect(&node, Duration::from_secs(2));
    assert_eq!(
        health_over(&mut third),
        None,
        "a third connection was served while two were open"
    );
    drop(held.pop());
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = third
        .read(&mut buf)
        .expect("the third is served once one closes");
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// `/metrics` on a listener of its own (`http.metrics_listen`): gone from the API's
/// listener, served there, and bounded the same way (a half-sent request there is
/// disconnected too).
#[test]
fn metrics_can_have_a_listener_of_their_own_with_the_same_bounds() {
    let port = common::free_port();
    let node = TestNode::start_with(&format!(
        "http.metrics_listen = \"127.0.0.1:{port}\"\nhttp.header_read_timeout_ms = 300\n"
    ));
    let mut api = connect(&node, Duration::from_secs(10));
    let answer = get_over(&mut api, "/metrics").expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    let metrics_at = || {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics listener");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    };
    let mut m = metrics_at();
    let answer = get_over(&mut m, "/metrics").expect("an answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let mut slow = metrics_at();
    assert!(
        closed_while_half_sent(&mut slow, "/metrics"),
        "a half-sent request held the metrics listener for 10 s"
    );
}

/// The attack: one host opening connections until the node holds no more. With
/// `http.max_connections_per_address`, its connections past the share are closed at
/// once while another address is still served.
#[test]
fn an_address_past_its_share_of_connections_is_closed_at_once() {
    let node = TestNode::start_with(
        "http.max_connections_per_address = 2\nhttp.header_read_timeout_ms = 60000\n",
    );
    std::thread::sleep(Duration::from_millis(500));
    let held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = connect(&node, Duration::from_secs(10));
            let answer = health_over(&mut s).expect("served");
            assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
            s
        })
        .collect();
    let mut third = connect(&node, Duration::from_secs(10));
    let _ = third.write_all(b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n");
    let mut buf = [0u8; 256];
    let closed = match third.read(&mut buf) {
        Ok(0) => true,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        Ok(n) => panic!("served: {}", String::from_utf8_lossy(&buf[..n])),
    };
    assert!(closed, "a third connection from one address was kept");
    // Another address (loopback has many: this one connects from 127.0.0.2) is served
    // meanwhile.
    let to: std::net::SocketAddr = addr(&node).parse().unwrap();
    let answer = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            let mut other = socket.connect(to).await.expect("connect from 127.0.0.2");
            other
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n")
                .await
                .unwrap();
            let mut buf = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(10), other.read(&mut buf))
                .await
                .expect("served within 10 s")
                .unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(held);
}
