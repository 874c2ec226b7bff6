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
//! - a connection is *pending* from accept until it is upgraded to a
//!   WebSocket (an upgrade stops counting when it is answered, before the
//!   client reads the 101) or closes. At most
//!   `limits.max_pending_handshakes_per_address` may be pending from one
//!   client address: past it, that address's new connection is closed at
//!   once, before any byte is read, and counted in
//!   `ferry_connections_rejected_total{reason="handshakes_per_address"}`;
//! - at most `limits.max_pending_handshakes` may be pending in all: at the
//!   bound the *oldest* pending connection is closed to make room, and
//!   counted in `ferry_connections_rejected_total{reason="handshakes"}`. So
//!   many slow handshakes, even from many addresses, cannot lock a new
//!   client out until they time out: it is the slow ones that go first.
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

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::IpAddr;
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
    /// Connections in the handshake at once from one client address.
    pub max_pending_handshakes_per_address: usize,
}

/// The connections in the handshake, oldest first, and how many come from
/// each address. Its lock is held for a few map operations, never across
/// an await.
#[derive(Debug)]
struct Pending {
    settings: Settings,
    state: Mutex<PendingState>,
}

#[derive(Debug, Default)]
struct PendingState {
    next: u64,
    /// Sequence number → (address, closes the connection when cancelled).
    oldest_first: BTreeMap<u64, (IpAddr, CancellationToken)>,
    per_address: HashMap<IpAddr, usize>,
}

impl PendingState {
    fn remove(&mut self, seq: u64) -> Option<CancellationToken> {
        let (ip, evict) = self.oldest_first.remove(&seq)?;
        if let Some(count) = self.per_address.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                self.per_address.remove(&ip);
            }
        }
        Some(evict)
    }
}

impl Pending {
    /// Admits a new connection from `ip`, closing the oldest pending one if
    /// the total is at its bound; `None` if `ip` is at its own bound.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<PendingEntry> {
        let evict = CancellationToken::new();
        let mut state = self.state.lock().expect("pending handshakes lock");
        if state.per_address.get(&ip).copied().unwrap_or(0)
            >= self.settings.max_pending_handshakes_per_address
        {
            return None;
        }
        if state.oldest_first.len() >= self.settings.max_pending_handshakes {
            if let Some(oldest) = state.oldest_first.keys().next().copied() {
                if let Some(token) = state.remove(oldest) {
                    token.cancel();
                    metrics::connection_rejected("handshakes");
                }
            }
        }
        let seq = state.next;
        state.next += 1;
        state.oldest_first.insert(seq, (ip, evict.clone()));
        *state.per_address.entry(ip).or_insert(0) += 1;
        Some(PendingEntry { pending: self.clone(), seq, evict })
    }
}

/// One connection's place among the pending handshakes; dropping it (the
/// connection closed, or was upgraded) gives the place back.
#[derive(Debug)]
struct PendingEntry {
    pending: Arc<Pending>,
    seq: u64,
    /// Cancelled when the connection is evicted to make room.
    evict: CancellationToken,
}

impl Drop for PendingEntry {
    fn drop(&mut self) {
        self.pending.state.lock().expect("pending handshakes lock").remove(self.seq);
    }
}

/// A connection's place among the pending handshakes, in every request's
/// extensions, so that a handler whose response lives long (an SSE stream)
/// can stop counting against the handshake bounds.
#[derive(Debug, Clone)]
pub struct HandshakeSlot(Arc<Mutex<Option<PendingEntry>>>);

impl HandshakeSlot {
    /// Gives the place back (once; later calls do nothing). From then on the
    /// connection is never evicted to make room.
    pub fn release(&self) {
        let entry = self.0.lock().expect("handshake slot lock").take();
        drop(entry);
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
    let pending = Arc::new(Pending { settings, state: Mutex::default() });
    let connections = TaskTracker::new();
    let mut last_accept_error: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
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
        let Some(entry) = pending.admit(peer.ip()) else {
            metrics::connection_rejected("handshakes_per_address");
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
            entry,
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
    entry: PendingEntry,
    shutdown: CancellationToken,
) {
    // Held until the connection closes or is upgraded (this task ends
    // then), or a handler releases it.
    let evicted = entry.evict.clone();
    let slot = HandshakeSlot(Arc::new(Mutex::new(Some(entry))));
    let Some(tls) = tls else {
        return http(tcp, router, settings, deadline, shutdown, evicted, slot).await;
    };
    let handshake = tokio::select! {
        _ = shutdown.cancelled() => return,
        _ = evicted.cancelled() => return,
        handshake = tokio::time::timeout_at(deadline, tls.acceptor().accept(tcp)) => handshake,
    };
    match handshake {
        Ok(Ok(stream)) => http(stream, router, settings, deadline, shutdown, evicted, slot).await,
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
    evicted: CancellationToken,
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
            // Closed to make room for a newer connection (the socket is
            // dropped with the connection).
            _ = evicted.cancelled() => return,
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
