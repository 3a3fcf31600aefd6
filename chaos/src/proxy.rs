//! A TCP proxy between one listen address and one upstream that breaks the link on
//! demand.
//!
//! Each accepted connection gets its own connection to the upstream, and bytes are
//! pumped both ways. Each direction is a reader and a writer joined by a bounded FIFO
//! queue of chunks, each stamped with the time it may be released: the reader stamps a
//! chunk with "now + latency" when it arrives, the writer waits for that time and then
//! decides whether the chunk goes out. Because the queue is FIFO, jitter delays chunks
//! but never reorders them, and because the decision is taken at release, a fault
//! switched on also catches what is already queued. The bounded queue keeps the usual
//! backpressure: a sender gets ahead of the delayed link by at most one queue of data.
//!
//! Faults are switched through [`LinkFaults`], a cheap cloneable handle, and apply to
//! existing and new connections:
//!
//! - **latency**: every chunk waits `base + uniform [0, jitter]`;
//! - **blackhole**: both sides are read, nothing is forwarded, what was read is lost;
//! - **one-way partition**: the same, in one direction only;
//! - **reset all**: every current connection is closed with an RST on both sides;
//! - **refuse**: new connections are accepted and reset at once, like a service that is
//!   down; current ones are reset when it is switched on.
//!
//! An end of stream is forwarded as a half-close, and, like data, it is lost when the
//! direction discards at that moment: a dropped FIN, which the endpoints only notice
//! through their own timeouts. A connection whose pump fails (a reset or a write to a
//! closed peer) is reset on both sides, so each endpoint sees the abrupt end the other
//! one saw.
//!
//! Either end can be inside a network namespace: [`Proxy::start_on`] takes a listener
//! made in one with [`Namespace::listen`], and [`Upstream::In`] connects into one. That
//! is how the harness gives each node its own link under an address every node shares
//! (see [`crate::netns`]).
//!
//! Every task is tracked and ends with the proxy: [`Proxy::stop`] waits for them, and
//! dropping the proxy tells them to end.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use parking_lot::Mutex;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::netns::Namespace;

/// The most one read takes from a socket, and so the largest chunk in a queue.
const CHUNK_BYTES: usize = 16 * 1024;

/// Chunks queued per direction: with latency, what a sender can have in flight beyond
/// the sockets' own buffers (1 MiB).
const QUEUE_CHUNKS: usize = 64;

/// The pause after a failed accept (out of file descriptors, say), so the loop waits
/// for the condition to clear instead of spinning.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);

/// Where the proxy connects for each connection it accepts. A bare address converts to
/// [`Upstream::Host`].
#[derive(Debug, Clone)]
pub enum Upstream {
    /// An address in the proxy's own network namespace.
    Host(SocketAddr),
    /// An address inside a network namespace, such as a node's HTTP port in the
    /// namespace it runs in.
    In(Arc<Namespace>, SocketAddr),
}

impl Upstream {
    /// Connects to the upstream. Entering a namespace blocks (see
    /// [`Namespace::connect`]), so that connect runs on a blocking thread of `tasks`.
    async fn connect(&self, tasks: &TaskTracker) -> io::Result<TcpStream> {
        match self {
            Upstream::Host(addr) => TcpStream::connect(addr).await,
            Upstream::In(namespace, addr) => {
                let (namespace, addr) = (namespace.clone(), *addr);
                let stream = tasks
                    .spawn_blocking(move || namespace.connect(addr))
                    .await
                    .map_err(io::Error::other)??;
                TcpStream::from_std(stream)
            }
        }
    }
}

impl From<SocketAddr> for Upstream {
    fn from(addr: SocketAddr) -> Upstream {
        Upstream::Host(addr)
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Upstream::Host(addr) => write!(f, "{addr}"),
            Upstream::In(_, addr) => write!(f, "{addr} in a network namespace"),
        }
    }
}

/// One direction of a proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the connecting client to the upstream.
    ClientToUpstream,
    /// From the upstream back to the client.
    UpstreamToClient,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Direction::ClientToUpstream => 0,
            Direction::UpstreamToClient => 1,
        }
    }
}

/// What the proxy has done since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Client connections accepted, refused ones included.
    pub connections_accepted: u64,
    /// Connections the proxy closed with an RST: by [`LinkFaults::reset_all`], by
    /// refusal, after a failure on one side, or because the upstream could not be
    /// reached.
    pub connections_reset: u64,
    /// Connections to the upstream that could not be opened.
    pub upstream_connect_failures: u64,
    /// Bytes written to the upstream.
    pub bytes_client_to_upstream: u64,
    /// Bytes written to clients.
    pub bytes_upstream_to_client: u64,
    /// Bytes read and thrown away by a blackhole or a one-way partition, both ways.
    pub bytes_discarded: u64,
}

/// The fault switches; all off is a transparent proxy.
#[derive(Debug, Default)]
struct Switches {
    latency: Duration,
    jitter: Duration,
    blackhole: bool,
    /// Indexed by [`Direction::index`].
    partitioned: [bool; 2],
    refuse: bool,
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    reset: AtomicU64,
    upstream_failures: AtomicU64,
    /// Indexed by [`Direction::index`].
    forwarded: [AtomicU64; 2],
    discarded: AtomicU64,
}

/// What the proxy's tasks and its handles share.
#[derive(Debug)]
struct Link {
    upstream: Mutex<Upstream>,
    switches: Mutex<Switches>,
    /// Bumped to reset every current connection; each connection watches it from the
    /// moment it is accepted.
    resets: watch::Sender<u64>,
    counters: Counters,
}

impl Link {
    /// How long a chunk read now waits before it is released.
    fn delay(&self) -> Duration {
        let (base, jitter) = {
            let switches = self.switches.lock();
            (switches.latency, switches.jitter)
        };
        if jitter.is_zero() {
            base
        } else {
            base + rand::thread_rng().gen_range(Duration::ZERO..=jitter)
        }
    }

    /// Whether what is released in `direction` now is thrown away.
    fn discards(&self, direction: Direction) -> bool {
        let switches = self.switches.lock();
        switches.blackhole || switches.partitioned[direction.index()]
    }

    fn reset_all(&self) {
        self.resets
            .send_modify(|epoch| *epoch = epoch.wrapping_add(1));
    }

    fn stats(&self) -> Stats {
        let c = &self.counters;
        Stats {
            connections_accepted: c.accepted.load(Ordering::Relaxed),
            connections_reset: c.reset.load(Ordering::Relaxed),
            upstream_connect_failures: c.upstream_failures.load(Ordering::Relaxed),
            bytes_client_to_upstream: c.forwarded[Direction::ClientToUpstream.index()]
                .load(Ordering::Relaxed),
            bytes_upstream_to_client: c.forwarded[Direction::UpstreamToClient.index()]
                .load(Ordering::Relaxed),
            bytes_discarded: c.discarded.load(Ordering::Relaxed),
        }
    }
}

/// The fault switches of one proxy. Clones share the proxy; switches outlive it
/// harmlessly (they change nothing once it is gone).
#[derive(Debug, Clone)]
pub struct LinkFaults {
    link: Arc<Link>,
}

impl LinkFaults {
    /// Delays every chunk in either direction by `base` plus a uniform random share of
    /// `jitter`, keeping each direction's order. Zero for both turns latency off;
    /// chunks already queued keep the release time they were given.
    pub fn latency(&self, base: Duration, jitter: Duration) {
        let mut switches = self.link.switches.lock();
        switches.latency = base;
        switches.jitter = jitter;
    }

    /// While on, reads both sides and forwards nothing; what is read meanwhile is lost.
    pub fn blackhole(&self, on: bool) {
        self.link.switches.lock().blackhole = on;
    }

    /// Drops everything sent in `direction` until [`LinkFaults::heal`]; the other
    /// direction still flows.
    pub fn one_way(&self, direction: Direction) {
        self.link.switches.lock().partitioned[direction.index()] = true;
    }

    /// Clears the blackhole, one-way partitions and latency. Refusal stays as it is:
    /// it models the service being down, not the network.
    pub fn heal(&self) {
        let mut switches = self.link.switches.lock();
        switches.latency = Duration::ZERO;
        switches.jitter = Duration::ZERO;
        switches.blackhole = false;
        switches.partitioned = [false; 2];
    }

    /// Closes every current connection with an RST on both sides; new connections are
    /// accepted as before.
    pub fn reset_all(&self) {
        self.link.reset_all();
    }

    /// While on, new connections are accepted and reset at once; switching it on also
    /// resets every current connection.
    pub fn refuse(&self, on: bool) {
        // Set before the reset, so a connection accepted in between is refused rather
        // than left open.
        self.link.switches.lock().refuse = on;
        if on {
            self.link.reset_all();
        }
    }
}

/// A running proxy. [`Proxy::stop`] ends it and waits for its tasks; dropping it ends
/// them without waiting.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    link: Arc<Link>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Proxy {
    /// Listens on `listen` (port 0 picks a free port, see [`Proxy::addr`]) and proxies
    /// each connection to `upstream`.
    pub async fn start(listen: SocketAddr, upstream: impl Into<Upstream>) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("bind proxy listener on {listen}"))?;
        Proxy::launch(listener, upstream.into())
    }

    /// Proxies each connection `listener` accepts to `upstream`. With a listener from
    /// [`Namespace::listen`], the proxy listens inside that namespace while its tasks
    /// and its connections to a [`Upstream::Host`] stay in the host namespace. Must be
    /// called within a tokio runtime.
    pub fn start_on(
        listener: std::net::TcpListener,
        upstream: impl Into<Upstream>,
    ) -> anyhow::Result<Proxy> {
        // A blocking listener would stall the tokio worker that accepts on it.
        listener
            .set_nonblocking(true)
            .context("make the proxy listener nonblocking")?;
        let listener =
            TcpListener::from_std(listener).context("register the proxy listener with tokio")?;
        Proxy::launch(listener, upstream.into())
    }

    fn launch(listener: TcpListener, upstream: Upstream) -> anyhow::Result<Proxy> {
        let addr = listener
            .local_addr()
            .context("read the proxy listener's address")?;
        let link = Arc::new(Link {
            upstream: Mutex::new(upstream),
            switches: Mutex::default(),
            resets: watch::Sender::new(0),
            counters: Counters::default(),
        });
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(accept(
            listener,
            link.clone(),
            shutdown.clone(),
            tasks.clone(),
        ));
        Ok(Proxy {
            addr,
            link,
            shutdown,
            tasks,
        })
    }

    /// The address the proxy listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The switches for this proxy's faults.
    pub fn faults(&self) -> LinkFaults {
        LinkFaults {
            link: self.link.clone(),
        }
    }

    pub fn stats(&self) -> Stats {
        self.link.stats()
    }

    /// Sends connections accepted from now on to `upstream`; current ones stay where
    /// they are.
    pub fn set_upstream(&self, upstream: impl Into<Upstream>) {
        *self.link.upstream.lock() = upstream.into();
    }

    /// Stops accepting, closes every connection and returns once all of the proxy's
    /// tasks have ended (the listen port is closed by then).
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn accept(
    listener: TcpListener,
    link: Arc<Link>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((client, peer)) => {
                link.counters.accepted.fetch_add(1, Ordering::Relaxed);
                // Subscribed here rather than in the task, so a reset that follows the
                // accept reaches this connection even before its task first runs.
                let resets = link.resets.subscribe();
                tasks.spawn(serve(
                    client,
                    peer,
                    link.clone(),
                    resets,
                    shutdown.clone(),
                    tasks.clone(),
                ));
            }
            Err(e) => {
                debug!(error = %e, "proxy accept failed");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(ACCEPT_RETRY) => {}
                }
            }
        }
    }
}

/// How a proxied connection came to an end.
enum Ended {
    /// Both directions reached their end of stream.
    Closed,
    Stopped,
    Reset,
    Failed,
}

async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    link: Arc<Link>,
    mut resets: watch::Receiver<u64>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    if link.switches.lock().refuse {
        abort(&link, [client]);
        return;
    }
    let target = link.upstream.lock().clone();
    let upstream = tokio::select! {
        _ = shutdown.cancelled() => return,
        Ok(()) = resets.changed() => {
            abort(&link, [client]);
            return;
        }
        connected = target.connect(&tasks) => match connected {
            Ok(upstream) => upstream,
            Err(e) => {
                debug!(%peer, upstream = %target, error = %e, "proxy could not reach upstream");
                link.counters.upstream_failures.fetch_add(1, Ordering::Relaxed);
                abort(&link, [client]);
                return;
            }
        },
    };
    // The proxy forwards chunks as they come; Nagle's algorithm would add delays of
    // its own on top of the injected ones.
    for stream in [&client, &upstream] {
        if let Err(e) = stream.set_nodelay(true) {
            debug!(%peer, error = %e, "proxy could not set TCP_NODELAY");
        }
    }

    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut upstream_rx, mut upstream_tx) = upstream.into_split();
    let ended = tokio::select! {
        _ = shutdown.cancelled() => Ended::Stopped,
        Ok(()) = resets.changed() => Ended::Reset,
        pumped = async {
            tokio::try_join!(
                pump(&mut client_rx, &mut upstream_tx, Direction::ClientToUpstream, &link),
                pump(&mut upstream_rx, &mut client_tx, Direction::UpstreamToClient, &link),
            )
        } => match pumped {
            Ok(_) => Ended::Closed,
            Err(e) => {
                debug!(%peer, upstream = %target, error = %e, "proxied connection failed");
                Ended::Failed
            }
        },
    };
    match ended {
        Ended::Closed | Ended::Stopped => {}
        Ended::Reset | Ended::Failed => {
            // Reunited, the streams close without the FIN a dropped write half sends,
            // so the peers see only the RST.
            let client = client_rx
                .reunite(client_tx)
                .expect("both halves come from the client stream");
            let upstream = upstream_rx
                .reunite(upstream_tx)
                .expect("both halves come from the upstream stream");
            abort(&link, [client, upstream]);
        }
    }
}

/// Closes the streams of one connection with an RST.
fn abort<const N: usize>(link: &Link, streams: [TcpStream; N]) {
    for stream in streams {
        if let Err(e) = stream.set_zero_linger() {
            debug!(error = %e, "proxy could not set SO_LINGER 0; the close will be a FIN");
        }
    }
    link.counters.reset.fetch_add(1, Ordering::Relaxed);
}

/// Forwards `src` to `dst` until the end of stream, through the delay queue. Returns
/// the first error on either side.
async fn pump(
    src: &mut OwnedReadHalf,
    dst: &mut OwnedWriteHalf,
    direction: Direction,
    link: &Link,
) -> io::Result<()> {
    // `None` marks the end of stream, which waits its turn behind the data before it.
    let (queue, mut due) = mpsc::channel::<(Instant, Option<Vec<u8>>)>(QUEUE_CHUNKS);
    let read = async move {
        let mut buf = vec![0; CHUNK_BYTES];
        loop {
            let n = src.read(&mut buf).await?;
            let release = Instant::now() + link.delay();
            let chunk = (n > 0).then(|| buf[..n].to_vec());
            // The writer only goes away on an error, which ends the pump anyway.
            if queue.send((release, chunk)).await.is_err() || n == 0 {
                return Ok::<_, io::Error>(());
            }
        }
    };
    let write = async {
        while let Some((release, chunk)) = due.recv().await {
            if release > Instant::now() {
                tokio::time::sleep_until(release).await;
            }
            let discard = link.discards(direction);
            match chunk {
                None if discard => return Ok(()),
                None => return dst.shutdown().await,
                Some(bytes) if discard => {
                    link.counters
                        .discarded
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                }
                Some(bytes) => {
                    dst.write_all(&bytes).await?;
                    link.counters.forwarded[direction.index()]
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                }
            }
        }
        Ok(())
    };
    tokio::try_join!(read, write).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::time::timeout;

    /// The generous bound on anything that should happen promptly.
    const PATIENCE: Duration = Duration::from_secs(5);

    const GREETING: &[u8] = b"hello from upstream\n";

    fn loopback() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    /// An upstream that echoes every byte back; counts the connections it accepted.
    async fn echo_server() -> (SocketAddr, Arc<AtomicU64>) {
        let listener = TcpListener::bind(loopback())
            .await
            .expect("bind echo server");
        let addr = listener.local_addr().expect("echo server address");
        let connections = Arc::new(AtomicU64::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut rx, mut tx) = stream.split();
                    let _ = tokio::io::copy(&mut rx, &mut tx).await;
                });
            }
        });
        (addr, connections)
    }

    /// An upstream that sends [`GREETING`] on connect and counts the bytes it receives.
    async fn greeting_server() -> (SocketAddr, Arc<AtomicU64>) {
        let listener = TcpListener::bind(loopback())
            .await
            .expect("bind greeting server");
        let addr = listener.local_addr().expect("greeting server address");
        let received = Arc::new(AtomicU64::new(0));
        let counted = received.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    if stream.write_all(GREETING).await.is_err() {
                        return;
                    }
                    let mut buf = [0; 1024];
                    while let Ok(n @ 1..) = stream.read(&mut buf).await {
                        counted.fetch_add(n as u64, Ordering::SeqCst);
                    }
                });
            }
        });
        (addr, received)
    }

    async fn start(upstream: SocketAddr) -> Proxy {
        Proxy::start(loopback(), upstream)
            .await
            .expect("start proxy")
    }

    async fn connect(addr: SocketAddr) -> TcpStream {
        let stream = TcpStream::connect(addr).await.expect("connect to proxy");
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        stream
    }

    /// Sends `message` and returns what comes back, failing the test after [`PATIENCE`].
    async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Vec<u8> {
        let mut echoed = vec![0; message.len()];
        timeout(PATIENCE, async {
            stream.write_all(message).await?;
            stream.read_exact(&mut echoed).await
        })
        .await
        .expect("echo arrived in time")
        .expect("round trip through the proxy");
        echoed
    }

    /// Asserts that the peer closed or reset `stream` within [`PATIENCE`].
    async fn assert_closed(stream: &mut TcpStream) {
        let mut buf = [0; 64];
        match timeout(PATIENCE, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(n)) => panic!("read {n} bytes from a connection that should be closed"),
            Err(_) => panic!("connection still open after {PATIENCE:?}"),
        }
    }

    /// Waits up to [`PATIENCE`] for `condition`.
    async fn eventually(condition: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if condition() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        condition()
    }

    #[tokio::test]
    async fn bytes_round_trip_unchanged_and_in_order() {
        let (upstream, _) = echo_server().await;
        let proxy = start(upstream).await;
        let mut stream = connect(proxy.addr()).await;

        assert_eq!(round_trip(&mut stream, b"ping").await, b"ping");

        // Written and read at once: 1 MiB is more than the sockets and queues hold.
        let payload: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
        let mut echoed = vec![0; payload.len()];
        let (mut rx, mut tx) = stream.split();
        timeout(PATIENCE, async {
            tokio::try_join!(tx.write_all(&payload), rx.read_exact(&mut echoed))
        })
        .await
        .expect("1 MiB echoed in time")
        .expect("1 MiB round trip");
        assert!(echoed == payload, "1 MiB came back changed or reordered");

        let stats = proxy.stats();
        let total = payload.len() as u64 + 4;
        assert_eq!(stats.connections_accepted, 1);
        assert_eq!(stats.bytes_client_to_upstream, total);
        assert_eq!(stats.bytes_upstream_to_client, total);
        assert_eq!(stats.bytes_discarded, 0);
    }

    #[tokio::test]
    async fn latency_delays_each_direction_and_keeps_order() {
        let (upstream, _) = echo_server().await;
        let proxy = start(upstream).await;
        let mut stream = connect(proxy.addr()).await;

        proxy
            .faults()
            .latency(Duration::from_millis(200), Duration::ZERO);
        let started = Instant::now();
        assert_eq!(round_trip(&mut stream, b"slow").await, b"slow");
        // Delayed on the way there and on the way back.
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(350),
            "round trip took {elapsed:?} with 200 ms each way"
        );

        // Jitter far above the gap between writes would reorder chunks if each were
        // merely slept on; the queue must keep them in order.
        proxy
            .faults()
            .latency(Duration::from_millis(5), Duration::from_millis(50));
        let (mut rx, mut tx) = stream.split();
        let sent: Vec<u8> = (0..100u32).flat_map(u32::to_be_bytes).collect();
        let mut echoed = vec![0; sent.len()];
        timeout(PATIENCE, async {
            let write = async {
                for number in sent.chunks(4) {
                    tx.write_all(number).await?;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Ok(())
            };
            tokio::try_join!(write, rx.read_exact(&mut echoed))
        })
        .await
        .expect("jittered echo arrived in time")
        .expect("jittered round trip");
        assert_eq!(echoed, sent, "jitter reordered the bytes");
    }

    #[tokio::test]
    async fn blackhole_drops_everything_until_healed() {
        let (upstream, _) = echo_server().await;
        let proxy = start(upstream).await;
        let faults = proxy.faults();

        faults.blackhole(true);
        let mut stream = connect(proxy.addr()).await;
        stream.write_all(b"into the void").await.expect("write");
        let mut buf = [0; 64];
        let read = timeout(Duration::from_millis(500), stream.read(&mut buf)).await;
        assert!(read.is_err(), "blackholed write got an answer: {read:?}");
        assert!(eventually(|| proxy.stats().bytes_discarded >= 13).await);

        faults.heal();
        let mut fresh = connect(proxy.addr()).await;
        assert_eq!(round_trip(&mut fresh, b"back").await, b"back");
    }

    #[tokio::test]
    async fn one_way_partition_drops_one_direction_only() {
        let (upstream, received) = greeting_server().await;
        let proxy = start(upstream).await;
        let faults = proxy.faults();

        faults.one_way(Direction::ClientToUpstream);
        let mut stream = connect(proxy.addr()).await;
        let mut greeting = vec![0; GREETING.len()];
        timeout(PATIENCE, stream.read_exact(&mut greeting))
            .await
            .expect("greeting arrived in time")
            .expect("read greeting");
        assert_eq!(greeting, GREETING, "upstream to client still flows");

        stream.write_all(b"lost").await.expect("write");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(received.load(Ordering::SeqCst), 0, "upstream got data");
        assert_eq!(proxy.stats().bytes_discarded, 4);

        // Healing resumes the same connection; what was dropped stays lost.
        faults.heal();
        stream.write_all(b"kept").await.expect("write");
        assert!(eventually(|| received.load(Ordering::SeqCst) == 4).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(received.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn reset_all_closes_current_connections_only() {
        let (upstream, _) = echo_server().await;
        let proxy = start(upstream).await;
        let mut stream = connect(proxy.addr()).await;
        assert_eq!(round_trip(&mut stream, b"before").await, b"before");

        proxy.faults().reset_all();
        assert_closed(&mut stream).await;
        assert_eq!(proxy.stats().connections_reset, 1);

        let mut fresh = connect(proxy.addr()).await;
        assert_eq!(round_trip(&mut fresh, b"after").await, b"after");
    }

    #[tokio::test]
    async fn refuse_resets_old_and_new_connections_until_lifted() {
        let (upstream, _) = echo_server().await;
        let proxy = start(upstream).await;
        let faults = proxy.faults();
        let mut old = connect(proxy.addr()).await;
        assert_eq!(round_trip(&mut old, b"before").await, b"before");

        faults.refuse(true);
        assert_closed(&mut old).await;
        // The kernel completes the handshake before the proxy accepts, so the refusal
        // shows as a reset of a connection that seemed open.
        if let Ok(mut refused) = TcpStream::connect(proxy.addr()).await {
            assert_closed(&mut refused).await;
        }
        assert!(eventually(|| proxy.stats().connections_reset >= 2).await);

        faults.refuse(false);
        let mut fresh = connect(proxy.addr()).await;
        assert_eq!(round_trip(&mut fresh, b"after").await, b"after");
    }

    #[tokio::test]
    async fn set_upstream_moves_new_connections_only() {
        let (first, first_connections) = echo_server().await;
        let (second, second_connections) = echo_server().await;
        let proxy = start(first).await;
        let mut old = connect(proxy.addr()).await;
        assert_eq!(round_trip(&mut old, b"one").await, b"one");

        proxy.set_upstream(second);
        let mut fresh = connect(proxy.addr()).await;
        assert_eq!(round_trip(&mut fresh, b"two").await, b"two");
        assert_eq!(round_trip(&mut old, b"still one").await, b"still one");
        assert_eq!(first_connections.load(Ordering::SeqCst), 1);
        assert_eq!(second_connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn stop_closes_connections_and_the_port() {
        let (upstream, _) = echo_server().await;
        let proxy = start(upstream).await;
        let addr = proxy.addr();
        let mut stream = connect(addr).await;
        assert_eq!(round_trip(&mut stream, b"open").await, b"open");

        timeout(PATIENCE, proxy.stop())
            .await
            .expect("proxy tasks ended in time");
        assert_closed(&mut stream).await;
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "stopped proxy still accepts"
        );
    }

    #[tokio::test]
    async fn drop_closes_connections() {
        let (upstream, _) = echo_server().await;
        let proxy = start(upstream).await;
        let mut stream = connect(proxy.addr()).await;
        assert_eq!(round_trip(&mut stream, b"open").await, b"open");

        drop(proxy);
        assert_closed(&mut stream).await;
    }
}
