//! Network namespaces, so that each node of a chaos cluster has a private view of the
//! network in which the harness owns every address the node dials.
//!
//! A Kafka broker advertises one address, and clients connect to whatever its metadata
//! says, so a proxy per node in front of one broker is bypassed after the first
//! metadata request. In a network namespace of its own, though, a node's 127.0.0.1 is
//! its own: the harness listens *inside* the namespace on the broker's advertised
//! address and forwards, from the host namespace, to the real broker, and every node
//! gets its own broker link under the same address. Links to peers work the same way,
//! and in the other direction the harness connects *into* a namespace to reach the
//! node's HTTP port.
//!
//! A [`Namespace`] is created without a process and kept alive by an open descriptor,
//! so it outlives the node run inside it: after a `kill -9` and a restart, the new node
//! finds the same proxies listening on the same addresses.
//!
//! A socket belongs to the namespace its creating thread was in, and `setns` moves only
//! the calling thread. So each entry into a namespace happens on a short-lived thread
//! of its own, never on the caller's thread or a tokio worker, which stay in the host
//! namespace; the sockets that thread creates keep working from any thread after it
//! has ended.
//!
//! Creating and entering network namespaces needs `CAP_SYS_ADMIN`: root, or root in a
//! user namespace (`unshare --user --map-root-user`). [`available`] tells the harness
//! whether it can, so it can fall back to proxies in the host namespace.

use std::fmt;
use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use tracing::warn;

/// How long [`Namespace::connect`] waits for the handshake. Everything inside a
/// namespace is on its loopback, so a connect that takes this long is not coming.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A network namespace, held open by a descriptor of its `/proc/…/ns/net` file: it
/// lives as long as this value, a socket in it, or a process in it does.
#[derive(Debug)]
pub struct Namespace {
    /// Opened close-on-exec (as `File::open` always does), so commands started in the
    /// namespace do not inherit it.
    file: File,
}

impl Namespace {
    /// Creates a namespace with no process in it, holding only its loopback interface,
    /// brought up.
    pub fn new() -> io::Result<Namespace> {
        on_own_thread(|| {
            // SAFETY: a system call without pointers; it moves only this thread, which
            // ends with the closure.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } == -1 {
                let e = io::Error::last_os_error();
                return Err(if e.raw_os_error() == Some(libc::EPERM) {
                    annotate(
                        e,
                        "create a network namespace (needs CAP_SYS_ADMIN: run as root \
                         or under `unshare --user --map-root-user`)",
                    )
                } else {
                    annotate(e, "create a network namespace")
                });
            }
            bring_loopback_up().map_err(|e| annotate(e, "bring up loopback in a new namespace"))?;
            let file = File::open("/proc/thread-self/ns/net")
                .map_err(|e| annotate(e, "open the new network namespace"))?;
            Ok(Namespace { file })
        })
    }

    /// The namespace process `pid` is in now. It stays valid after the process ends,
    /// but a restarted process is a new one: unless it was started in this namespace
    /// with [`Namespace::spawn`], it is elsewhere.
    pub fn of_pid(pid: u32) -> io::Result<Namespace> {
        let path = format!("/proc/{pid}/ns/net");
        let file = File::open(&path).map_err(|e| annotate(e, format_args!("open {path}")))?;
        Ok(Namespace { file })
    }

    /// Starts `cmd` inside this namespace.
    ///
    /// The hook that enters the namespace stays on `cmd` and refers to this value's
    /// descriptor: spawn `cmd` again only through this method, on the same namespace,
    /// while it is alive.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<Child> {
        let fd = self.file.as_raw_fd();
        // SAFETY: the hook runs in the forked child before `exec`, where only
        // async-signal-safe work is allowed. It makes one system call, `setns`, and on
        // failure builds an `io::Error` from errno, which does not allocate; it touches
        // no lock and no memory but the captured integer. `fd` is open in the child:
        // the fork copies the parent's descriptors while `self` is borrowed, and
        // close-on-exec closes it only at the `exec` that follows.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn().map_err(|e| {
            annotate(
                e,
                format_args!("start {:?} in a network namespace", cmd.get_program()),
            )
        })
    }

    /// Listens on `addr` inside this namespace, with `SO_REUSEADDR` (which std sets on
    /// every listener it binds on Unix) and nonblocking, ready for
    /// `tokio::net::TcpListener::from_std`.
    pub fn listen(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        self.within(|| {
            let listener = TcpListener::bind(addr)?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })
        .map_err(|e| annotate(e, format_args!("listen on {addr} in a network namespace")))
    }

    /// Connects to `addr` from inside this namespace, giving up after a few seconds.
    /// The stream is nonblocking, ready for `tokio::net::TcpStream::from_std`; the
    /// call itself blocks until the handshake ends.
    pub fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        self.within(|| {
            let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
            stream.set_nonblocking(true)?;
            Ok(stream)
        })
        .map_err(|e| annotate(e, format_args!("connect to {addr} in a network namespace")))
    }

    /// Runs `work` on a thread of its own that has entered this namespace.
    fn within<T: Send>(&self, work: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        on_own_thread(|| {
            // SAFETY: a system call on a descriptor `self` keeps open; it moves only
            // this thread, which ends with the closure.
            if unsafe { libc::setns(self.file.as_raw_fd(), libc::CLONE_NEWNET) } == -1 {
                return Err(annotate(
                    io::Error::last_os_error(),
                    "enter the network namespace",
                ));
            }
            work()
        })
    }
}

/// Whether this process may create and enter network namespaces. Tried once; the
/// reason it may not is logged.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| match Namespace::new() {
        Ok(_) => true,
        Err(e) => {
            warn!(error = %e, "network namespaces are not available");
            false
        }
    })
}

/// Runs `work` on a fresh thread that ends with it, so whatever namespace it enters
/// dies with the thread.
fn on_own_thread<T: Send>(work: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    thread::scope(|scope| {
        thread::Builder::new()
            .name("authsync-netns".into())
            .spawn_scoped(scope, work)?
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Sets `IFF_UP` on `lo` in the calling thread's namespace. A new namespace has its
/// loopback, with 127.0.0.1 and ::1, but down.
fn bring_loopback_up() -> io::Result<()> {
    // SAFETY: a system call without pointers.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `ifreq` is plain data, for which all zeroes is valid: an empty name and
    // zero flags.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: the ioctl reads the NUL-terminated name and writes the flags member of
    // `request`, which outlives the call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS has just filled the flags member.
    unsafe { request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: the ioctl reads the name and flags of `request`, which outlives the call.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Puts what was being done in front of `e`, keeping its kind.
fn annotate(e: io::Error, doing: impl fmt::Display) -> io::Error {
    io::Error::new(e.kind(), format!("{doing}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::unix::fs::MetadataExt;
    use std::sync::Arc;

    use tokio::io::AsyncReadExt;
    use tokio::time::{sleep, timeout, Instant};

    use crate::proxy::{Proxy, Upstream};

    /// The generous bound on anything that should happen promptly.
    const PATIENCE: Duration = Duration::from_secs(5);

    /// A node in miniature: it sends "ping" to the broker at 127.0.0.1:argv[1] and
    /// waits a second for the echo, then answers every connection to 127.0.0.1:argv[2]
    /// with its pid and what the broker said ("unreachable" if nothing came back).
    const NODE: &str = r#"
import os, socket, sys
broker_port, http_port = int(sys.argv[1]), int(sys.argv[2])
try:
    with socket.create_connection(("127.0.0.1", broker_port), timeout=1) as broker:
        broker.sendall(b"ping")
        echoed = b""
        while len(echoed) < 4:
            chunk = broker.recv(4 - len(echoed))
            if not chunk:
                break
            echoed += chunk
    said = echoed.decode() or "closed"
except OSError:
    said = "unreachable"
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", http_port))
server.listen()
while True:
    conn, _ = server.accept()
    conn.sendall(f"{os.getpid()} {said}\n".encode())
    conn.close()
"#;

    /// Whether to skip a test, saying why.
    fn skip() -> bool {
        let skip = !available();
        if skip {
            eprintln!("skipped: network namespaces are not available (needs CAP_SYS_ADMIN)");
        }
        skip
    }

    fn loopback(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// An address nothing listens on in the host namespace, so that connecting to it
    /// from the host is refused.
    fn unused_on_host() -> SocketAddr {
        let probe = TcpListener::bind(loopback(0)).expect("bind a probe listener");
        probe.local_addr().expect("probe listener address")
    }

    fn inode(namespace: &Namespace) -> u64 {
        namespace.file.metadata().expect("stat namespace").ino()
    }

    /// A broker stand-in in the host namespace that echoes every byte.
    async fn echo_server() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind(loopback(0))
            .await
            .expect("bind echo server");
        let addr = listener.local_addr().expect("echo server address");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut rx, mut tx) = stream.split();
                    let _ = tokio::io::copy(&mut rx, &mut tx).await;
                });
            }
        });
        addr
    }

    /// One region as the harness sets it up: a namespace for its node, a proxy inside
    /// it on the broker's advertised address, and a proxy in the host namespace to
    /// the node's HTTP port inside it.
    struct Region {
        namespace: Arc<Namespace>,
        advertised: SocketAddr,
        /// The node's HTTP address inside the namespace; unused on the host.
        node_http: SocketAddr,
        broker_link: Proxy,
        http_link: Proxy,
        node: Option<Child>,
    }

    impl Region {
        async fn start(broker: SocketAddr, advertised: SocketAddr) -> Region {
            let namespace = Arc::new(Namespace::new().expect("create namespace"));
            let listener = namespace
                .listen(advertised)
                .expect("listen on the advertised address in the namespace");
            let broker_link = Proxy::start_on(listener, broker).expect("start broker link");
            let node_http = unused_on_host();
            let http_link = Proxy::start(loopback(0), Upstream::In(namespace.clone(), node_http))
                .await
                .expect("start HTTP link");
            Region {
                namespace,
                advertised,
                node_http,
                broker_link,
                http_link,
                node: None,
            }
        }

        fn start_node(&mut self) -> u32 {
            let node = self
                .namespace
                .spawn(
                    Command::new("python3")
                        .args(["-c", NODE])
                        .arg(self.advertised.port().to_string())
                        .arg(self.node_http.port().to_string())
                        .stdin(std::process::Stdio::null())
                        .stdout(std::process::Stdio::null()),
                )
                .expect("start python3 in the namespace");
            let pid = node.id();
            self.node = Some(node);
            pid
        }

        fn kill_node(&mut self) {
            if let Some(mut node) = self.node.take() {
                let _ = node.kill();
                let _ = node.wait();
            }
        }

        /// What the node answers through the HTTP link, waiting for it to listen.
        async fn ask_node(&self) -> String {
            let deadline = Instant::now() + PATIENCE;
            loop {
                if let Some(answer) = read_answer(self.http_link.addr()).await {
                    return answer;
                }
                assert!(Instant::now() < deadline, "node silent for {PATIENCE:?}");
                sleep(Duration::from_millis(50)).await;
            }
        }
    }

    impl Drop for Region {
        fn drop(&mut self) {
            self.kill_node();
        }
    }

    /// The line `addr` sends before closing, or `None` if the connection fails or
    /// closes without one.
    async fn read_answer(addr: SocketAddr) -> Option<String> {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let mut answer = String::new();
        timeout(PATIENCE, stream.read_to_string(&mut answer))
            .await
            .ok()?
            .ok()?;
        answer.strip_suffix('\n').map(str::to_owned)
    }

    #[test]
    fn namespaces_have_their_own_addresses() {
        if skip() {
            return;
        }
        let (a, b) = (Namespace::new().expect("A"), Namespace::new().expect("B"));
        let addr = loopback(19092);
        let in_a = a.listen(addr).expect("listen in A");
        let in_b = b.listen(addr).expect("listen in B on the same address");
        let taken = a.listen(addr).expect_err("a second listener in A");
        assert_eq!(taken.kind(), io::ErrorKind::AddrInUse, "{taken}");

        let mut reuse: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: both pointers are to locals of the sizes passed.
        let got = unsafe {
            libc::getsockopt(
                in_a.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&mut reuse as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!((got, reuse), (0, 1), "SO_REUSEADDR is not set");

        // The handshake completes before `connect` returns, so the connection is
        // already waiting on the one listener it reached.
        let client = a.connect(addr).expect("connect in A");
        in_a.set_nonblocking(false).expect("blocking accept");
        let (_, peer) = in_a.accept().expect("A accepts");
        assert_eq!(peer, client.local_addr().expect("client address"));
        let stray = in_b.accept().map(|(_, peer)| peer);
        assert_eq!(
            stray.as_ref().map_err(io::Error::kind),
            Err(io::ErrorKind::WouldBlock),
            "B's listener got a connection made in A: {stray:?}"
        );
    }

    #[tokio::test]
    async fn node_reaches_the_broker_only_through_the_proxy_in_its_namespace() {
        if skip() {
            return;
        }
        let broker = echo_server().await;
        let mut region = Region::start(broker, unused_on_host()).await;
        let pid = region.start_node();

        assert_eq!(region.ask_node().await, format!("{pid} ping"));
        let stats = region.broker_link.stats();
        assert_eq!(stats.connections_accepted, 1);
        assert_eq!(stats.bytes_client_to_upstream, 4);
        assert_eq!(stats.bytes_upstream_to_client, 4);
        // The address the node dialled exists only inside its namespace.
        let host = tokio::net::TcpStream::connect(region.advertised).await;
        let refused = host.expect_err("the host reached the advertised address");
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[tokio::test]
    async fn host_reaches_a_node_only_through_a_proxy_into_its_namespace() {
        if skip() {
            return;
        }
        let broker = echo_server().await;
        let mut region = Region::start(broker, unused_on_host()).await;
        let pid = region.start_node();

        assert_eq!(region.ask_node().await, format!("{pid} ping"));
        assert!(region.http_link.stats().bytes_upstream_to_client > 0);
        let host = tokio::net::TcpStream::connect(region.node_http).await;
        let refused = host.expect_err("the host reached the node's port directly");
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
    }

    #[tokio::test]
    async fn namespace_and_its_proxies_outlive_the_node() {
        if skip() {
            return;
        }
        let broker = echo_server().await;
        let mut region = Region::start(broker, unused_on_host()).await;
        let first = region.start_node();
        assert_eq!(region.ask_node().await, format!("{first} ping"));

        // Asking while the node was starting failed as many times as it took.
        let failures = region.http_link.stats().upstream_connect_failures;
        region.kill_node();
        assert_eq!(read_answer(region.http_link.addr()).await, None);
        assert_eq!(
            region.http_link.stats().upstream_connect_failures,
            failures + 1
        );

        // No proxy is restarted or reconfigured: the new node dials the same address
        // in the same namespace and is reached at the same one.
        let second = region.start_node();
        assert_eq!(region.ask_node().await, format!("{second} ping"));
        assert_ne!(first, second);
        let its = Namespace::of_pid(second).expect("namespace of the new node");
        assert_eq!(inode(&its), inode(&region.namespace));
        assert_eq!(region.broker_link.stats().connections_accepted, 2);
    }

    #[tokio::test]
    async fn a_fault_on_one_namespace_leaves_the_other_alone() {
        if skip() {
            return;
        }
        let broker = echo_server().await;
        // Both nodes dial the same address, each reaching its own link.
        let advertised = unused_on_host();
        let mut cut = Region::start(broker, advertised).await;
        let mut whole = Region::start(broker, advertised).await;
        cut.broker_link.faults().blackhole(true);
        let (cut_pid, whole_pid) = (cut.start_node(), whole.start_node());

        assert_eq!(cut.ask_node().await, format!("{cut_pid} unreachable"));
        assert_eq!(whole.ask_node().await, format!("{whole_pid} ping"));
        let (cut, whole) = (cut.broker_link.stats(), whole.broker_link.stats());
        assert_eq!((cut.bytes_client_to_upstream, cut.bytes_discarded), (0, 4));
        assert_eq!(
            (whole.bytes_client_to_upstream, whole.bytes_discarded),
            (4, 0)
        );
    }
}
