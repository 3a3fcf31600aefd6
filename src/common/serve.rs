//! The HTTP listeners: an axum router served by hyper-util over plain TCP or TLS, with
//! the bounds a listener open to the Internet needs.
//!
//! - At most `max_connections` connections are served at once; further ones wait in
//!   the kernel's listen backlog until one closes. With `max_per_address`, an address
//!   past its share has new connections closed at once.
//! - A client has `header_read_timeout` to send each request's headers (HTTP/1.1), on
//!   a new connection and between requests on a kept-alive one, and
//!   [`tls::HANDSHAKE_TIMEOUT`] for its TLS handshake; slower ones are closed.
//! - HTTP/2 is offered only over TLS (by ALPN), its connections pinged every
//!   `header_read_timeout` and closed when a ping goes unanswered as long; plain TCP
//!   is HTTP/1.1 only.
//! - On shutdown the listener closes and open connections finish their requests.
//!
//! Handlers see the client's address as `ConnectInfo<SocketAddr>`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::common::tls;

/// The bounds of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    /// Connections one client address may hold at once; 0: no bound (what a node
    /// behind a load balancer, where every connection comes from it, needs).
    pub max_per_address: usize,
    pub header_read_timeout: Duration,
}

/// Open connections by client address, for [`Limits::max_per_address`].
type PerAddress = Arc<parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>;

/// One connection counted against its address until dropped.
struct Counted {
    per_address: PerAddress,
    ip: std::net::IpAddr,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut open = self.per_address.lock();
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Serves `app` on `listener` (over TLS with `tls`) until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tls::Acceptor>,
    app: axum::Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let stop = CancellationToken::new();
    let _stop_reloads = stop.clone().drop_guard();
    let tls = tls.map(|a| a.start(stop));
    tokio::pin!(shutdown);
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    if tls.is_some() {
        // HTTP/2 only by ALPN over TLS; an idle connection is pinged and closed when
        // the pings go unanswered.
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(limits.header_read_timeout)
            .keep_alive_timeout(limits.header_read_timeout)
            .max_concurrent_streams(256);
    } else {
        // No cleartext HTTP/2 (h2c): it would have no header timeout, and no client
        // of this API needs it.
        builder = builder.http1_only();
    }
    let places = Arc::new(Semaphore::new(limits.max_connections));
    let per_address: PerAddress = Arc::default();
    loop {
        // A place first: past the bound, connections wait unaccepted.
        let place = tokio::select! {
            _ = &mut shutdown => break,
            place = places.clone().acquire_owned() => match place {
                Ok(place) => place,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: keep
                    // serving, without spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let counted = if limits.max_per_address > 0 {
            let mut open = per_address.lock();
            let n = open.entry(peer.ip()).or_insert(0);
            if *n >= limits.max_per_address {
                // Closed at once: this address holds its share already.
                metrics::counter!(crate::common::metrics::CONNECTIONS_REFUSED_TOTAL).increment(1);
                continue;
            }
            *n += 1;
            Some(Counted {
                per_address: per_address.clone(),
                ip: peer.ip(),
            })
        } else {
            None
        };
        let connection = Connection {
            builder: builder.clone(),
            app: app.clone(),
            peer,
            watcher: graceful.watcher(),
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            let _place = place;
            let _counted = counted;
            match tls {
                None => connection.serve(tcp).await,
                Some(acceptor) => {
                    match tokio::time::timeout(tls::HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => connection.serve(stream).await,
                        Ok(Err(e)) => {
                            metrics::counter!(crate::common::metrics::TLS_HANDSHAKE_FAILURES_TOTAL)
                                .increment(1);
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            metrics::counter!(crate::common::metrics::TLS_HANDSHAKE_FAILURES_TOTAL)
                                .increment(1);
                            tracing::debug!(%peer, "TLS handshake timed out");
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// One accepted connection, before its stream is known (plain or TLS).
struct Connection {
    builder: Builder<TokioExecutor>,
    app: axum::Router,
    peer: SocketAddr,
    watcher: hyper_util::server::graceful::Watcher,
}

impl Connection {
    async fn serve<S>(self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            builder,
            app,
            peer,
            watcher,
        } = self;
        let service = hyper::service::service_fn(move |request: hyper::Request<_>| {
            let mut request = request.map(axum::body::Body::new);
            request
                .extensions_mut()
                .insert(ConnectInfo::<SocketAddr>(peer));
            app.clone().oneshot(request)
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        if let Err(e) = watcher.watch(connection).await {
            tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
        }
    }
}
