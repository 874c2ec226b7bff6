//! The gateway's own listener: accepts TCP connections, optionally wraps
//! them in TLS, and serves HTTP/1.1 (with upgrades, for `/ws`) through
//! hyper.
//!
//! Two defences against slow handshakes (slowloris):
//!
//! - every connection must finish its TLS handshake and send its first
//!   request's headers within `server.header_read_timeout_ms` (one deadline
//!   for both), and a keep-alive connection may idle at most that long
//!   between requests;
//! - at most `limits.max_pending_handshakes` connections may be in the
//!   handshake at once (accepted, not yet upgraded to a WebSocket or
//!   closed): each holds a permit from accept until then (an upgrade gives
//!   it back when it is answered, before the client reads the 101). Past the bound a
//!   new connection is closed at once, before any byte is read, and counted
//!   in `ferry_connections_rejected_total{reason="handshakes"}`.
//!
//! A WebSocket, once upgraded, no longer counts here: it holds a
//! `limits.max_connections` permit instead (see `ws.rs`). A Server-Sent
//! Events stream neither: its handler releases the connection's
//! [`HandshakeSlot`] (found in the request's extensions) once the stream
//! is accepted, and holds a `limits.max_connections` permit instead.
//!
//! Shutdown: when the token is cancelled the listener closes, connections
//! still speaking HTTP finish their current response and close, and
//! [`serve`] returns once they are gone. Upgraded sockets are the sessions'
//! business (they close with 1001).

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::tls::Tls;
use crate::metrics;

/// At most one log line per this interval while accepting keeps failing.
const ACCEPT_ERROR_LOG_EVERY: Duration = Duration::from_secs(5);

/// How the listener treats connections that are not WebSockets yet.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// TLS handshake plus first request headers, and keep-alive idle time.
    pub header_read_timeout: Duration,
    /// Connections in the handshake at once.
    pub max_pending_handshakes: usize,
}

/// A connection's pending-handshake permit, in every request's extensions,
/// so that a handler whose response lives long (an SSE stream) can stop
/// counting against `limits.max_pending_handshakes`.
#[derive(Debug, Clone)]
pub struct HandshakeSlot(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl HandshakeSlot {
    /// Gives the permit back (once; later calls do nothing).
    pub fn release(&self) {
        self.0.lock().expect("handshake slot lock").take();
    }
}

/// Serves `router` on `listener` until `shutdown` is cancelled and the
/// connections still speaking HTTP have finished.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<Tls>>,
    router: Router,
    settings: Settings,
    shutdown: CancellationToken,
) {
    let pending = Arc::new(Semaphore::new(settings.max_pending_handshakes));
    let connections = TaskTracker::new();
    let mut last_accept_error: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _peer)) => tcp,
            Err(e) => {
                if !is_connection_error(&e) {
                    // Out of file descriptors or similar: back off instead
                    // of spinning on the same error, and log it at most
                    // every few seconds.
                    if last_accept_error.is_none_or(|at| at.elapsed() > ACCEPT_ERROR_LOG_EVERY) {
                        last_accept_error = Some(Instant::now());
                        tracing::error!(error = %e, "accepting a connection failed");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
                continue;
            }
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            metrics::connection_rejected("handshakes");
            drop(tcp);
            continue;
        };
        // Frames are small and latency matters: no Nagle delay on sockets
        // (the writer batches queued frames into one write itself).
        let _ = tcp.set_nodelay(true);
        let deadline = Instant::now() + settings.header_read_timeout;
        connections.spawn(connection(
            tcp,
            tls.clone(),
            router.clone(),
            settings,
            deadline,
            permit,
            shutdown.clone(),
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Errors of one accepted connection, not of the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}

async fn connection(
    tcp: TcpStream,
    tls: Option<Arc<Tls>>,
    router: Router,
    settings: Settings,
    deadline: Instant,
    permit: OwnedSemaphorePermit,
    shutdown: CancellationToken,
) {
    // Held until the connection closes or is upgraded (this task ends
    // then), or a handler releases it.
    let slot = HandshakeSlot(Arc::new(Mutex::new(Some(permit))));
    let Some(tls) = tls else {
        return http(tcp, router, settings, deadline, shutdown, slot).await;
    };
    let handshake = tokio::select! {
        _ = shutdown.cancelled() => return,
        handshake = tokio::time::timeout_at(deadline, tls.acceptor().accept(tcp)) => handshake,
    };
    match handshake {
        Ok(Ok(stream)) => http(stream, router, settings, deadline, shutdown, slot).await,
        Ok(Err(e)) => {
            metrics::connection_rejected("tls_handshake");
            tracing::debug!(error = %e, "TLS handshake failed");
        }
        Err(_) => metrics::connection_rejected("handshake_timeout"),
    }
}

/// Serves HTTP/1.1 on one connection until it closes or is upgraded.
async fn http<I>(
    io: I,
    router: Router,
    settings: Settings,
    deadline: Instant,
    shutdown: CancellationToken,
    slot: HandshakeSlot,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let requested = Arc::new(AtomicBool::new(false));
    let inner = TowerToHyperService::new(router);
    let service = FirstRequest { inner, seen: requested.clone(), slot };
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut conn = pin!(conn);
    let mut first_headers = pin!(tokio::time::sleep_until(deadline));
    let mut waiting_for_headers = true;
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    if e.is_timeout() && !requested.load(Ordering::Relaxed) {
                        metrics::connection_rejected("handshake_timeout");
                    }
                    tracing::debug!(error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            _ = first_headers.as_mut(), if waiting_for_headers => {
                if !requested.load(Ordering::Relaxed) {
                    metrics::connection_rejected("handshake_timeout");
                    return;
                }
                waiting_for_headers = false;
            }
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Notes that the first request's headers have arrived (the service is
/// called only then), so the handshake deadline no longer applies; hands
/// each request the connection's [`HandshakeSlot`].
#[derive(Debug, Clone)]
struct FirstRequest<S> {
    inner: S,
    seen: Arc<AtomicBool>,
    slot: HandshakeSlot,
}

impl<S, B> hyper::service::Service<Request<Incoming>> for FirstRequest<S>
where
    S: hyper::service::Service<Request<Incoming>, Response = hyper::Response<B>>,
    S::Future: Future + Send + 'static,
    S::Error: 'static,
    B: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        self.seen.store(true, Ordering::Relaxed);
        request.extensions_mut().insert(self.slot.clone());
        let (response, slot) = (self.inner.call(request), self.slot.clone());
        Box::pin(async move {
            let response = response.await?;
            if response.status() == hyper::StatusCode::SWITCHING_PROTOCOLS {
                // Upgraded: the socket leaves the handshake before the
                // client can read the 101.
                slot.release();
            }
            Ok(response)
        })
    }
}
