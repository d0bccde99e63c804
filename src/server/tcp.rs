//! SIP over TCP (RFC 3261 §18.3): the connections, accepted or opened by
//! us, each a task that frames what it reads for the SIP task and writes
//! what is queued for it. Responses reuse the request's connection while it
//! is open, else a new one is opened to the destination (§18.1.1, §18.2.2).
//!
//! SIP over TLS (§26.2.1) is the same with a TLS stream over the TCP one:
//! a second set of connections, its own listener, the same tasks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Inbound, Shared};
use crate::endpoint::{self, offer, DropLog, Offer};
use crate::events::Metrics;
use emonav_sip::transport::{Frame, Peer, StreamFramer, Transport};

/// Messages read from all TCP connections, not yet taken by the SIP task.
/// When full, connection tasks stop reading until there is room: TCP flow
/// control then slows the senders, and nothing is dropped, since over a
/// reliable transport no one would retransmit it (RFC 3261 §17.1.1.2).
pub(super) const TCP_INBOUND_QUEUE: usize = 256;

/// Messages queued for writing on one TCP connection. A peer that lets more
/// pile up is not reading; further ones are dropped rather than kept.
const TCP_SEND_QUEUE: usize = 64;

/// One open TCP connection, as the senders see it.
struct ConnHandle {
    id: u64,
    /// Messages to write, in order.
    tx: mpsc::Sender<Vec<u8>>,
    /// Calls whose dialog uses this connection: it is not closed for idleness.
    dialogs: Arc<AtomicUsize>,
}

/// The TCP (or TLS) connections, by remote address.
pub(super) struct TcpConns {
    /// The TLS configurations, for TLS.
    tls: Option<crate::tls::Tls>,
    conns: Mutex<HashMap<SocketAddr, ConnHandle>>,
    next_id: AtomicU64,
    /// Connection tasks hand what they read to the SIP task here.
    inbound: mpsc::Sender<Inbound>,
    /// A connection no dialog uses is closed after this long without traffic.
    idle: std::time::Duration,
    /// Messages dropped on full send queues.
    send_drops: DropLog,
}

/// Keeps a connection open while a dialog uses it.
pub(super) struct DialogHold(Arc<AtomicUsize>);

impl Drop for DialogHold {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl TcpConns {
    pub(super) fn new(inbound: mpsc::Sender<Inbound>, idle: std::time::Duration) -> Self {
        Self {
            tls: None,
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            inbound,
            idle,
            send_drops: DropLog::new(Instant::now().into_std()),
        }
    }

    /// The connections of SIP over TLS.
    pub(super) fn tls(
        inbound: mpsc::Sender<Inbound>,
        idle: std::time::Duration,
        tls: crate::tls::Tls,
    ) -> Self {
        Self {
            tls: Some(tls),
            ..Self::new(inbound, idle)
        }
    }

    /// Register a connection; returns its id, the queue to write and its dialog count.
    fn register(&self, peer: SocketAddr) -> (u64, mpsc::Receiver<Vec<u8>>, Arc<AtomicUsize>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(TCP_SEND_QUEUE);
        let dialogs = Arc::new(AtomicUsize::new(0));
        let handle = ConnHandle {
            id,
            tx,
            dialogs: dialogs.clone(),
        };
        self.lock().insert(peer, handle);
        (id, rx, dialogs)
    }

    fn unregister(&self, peer: SocketAddr, id: u64) {
        let mut conns = self.lock();
        if conns.get(&peer).is_some_and(|c| c.id == id) {
            conns.remove(&peer);
        }
    }

    /// Queue `data` on the connection to `peer`; gives it back if there is
    /// none. A full queue drops it (counted): the connection is open, so
    /// opening another would not help.
    fn try_send(&self, peer: SocketAddr, data: Vec<u8>, metrics: &Metrics) -> Result<(), Vec<u8>> {
        let now = Instant::now().into_std();
        let counter = &metrics.sip_tcp_send_dropped;
        let offered = match self.lock().get(&peer) {
            Some(c) => offer(&c.tx, data, &self.send_drops, counter, now),
            None => return Err(data),
        };
        match offered {
            Offer::Queued => Ok(()),
            Offer::Dropped { warn: None } => {
                tracing::trace!(%peer, "TCP send queue full: SIP message dropped");
                Ok(())
            }
            Offer::Dropped { warn: Some(n) } => {
                tracing::warn!(%peer, dropped = n, "TCP send queue full: SIP messages dropped");
                Ok(())
            }
            Offer::Closed(data) => Err(data),
        }
    }

    pub(super) fn hold(&self, peer: SocketAddr) -> Option<DialogHold> {
        let conns = self.lock();
        let c = conns.get(&peer)?;
        c.dialogs.fetch_add(1, Ordering::Relaxed);
        Some(DialogHold(c.dialogs.clone()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, ConnHandle>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The connections of `transport`, if it is on.
fn conns(shared: &Shared, transport: Transport) -> Option<&TcpConns> {
    match transport {
        Transport::Tcp => shared.tcp.as_ref(),
        Transport::Tls => shared.tls.as_ref(),
        Transport::Udp => None,
    }
}

/// Send `data` on the connection to `connection` while it is open, else on
/// one to `dest`, opened if needed. A TLS connection we open verifies the
/// server's certificate against `name` (RFC 5922 §4: the domain of the URI
/// that was located) when given, else against the address dialled.
pub(super) fn send(
    shared: &Arc<Shared>,
    transport: Transport,
    dest: SocketAddr,
    connection: Option<SocketAddr>,
    data: Vec<u8>,
    name: Option<&str>,
) {
    let Some(tcp) = conns(shared, transport) else {
        tracing::warn!(%dest, %transport, "transport is not enabled in the profile: message dropped");
        return;
    };
    let data = match connection {
        Some(c) => match tcp.try_send(c, data, &shared.metrics) {
            Ok(()) => return,
            Err(data) => data,
        },
        None => data,
    };
    let data = match tcp.try_send(dest, data, &shared.metrics) {
        Ok(()) => return,
        Err(data) => data,
    };
    // A TLS connection of ours must verify the server (§26.2.1): without CA
    // certificates to verify it against, none is opened.
    let connector = match &tcp.tls {
        Some(tls) => match &tls.connector {
            Some(c) => Some(c.clone()),
            None => {
                tracing::warn!(%dest, "no sip.tls_ca to verify a TLS server with: message dropped");
                return;
            }
        },
        None => None,
    };
    // §18.1.1 / §18.2.2: no open connection, open one. Registered at
    // once so that what follows queues behind this message.
    let name_for_log = name.map(str::to_string);
    let server_name = name
        .and_then(|n| tokio_rustls::rustls::pki_types::ServerName::try_from(n.to_string()).ok())
        .unwrap_or_else(|| tokio_rustls::rustls::pki_types::ServerName::from(dest.ip()));
    let (id, rx, dialogs) = tcp.register(dest);
    let shared = shared.clone();
    tokio::spawn(async move {
        let timeout = shared.settings.timers.t1 * 64;
        match tokio::time::timeout(timeout, TcpStream::connect(dest)).await {
            Ok(Ok(stream)) => {
                tracing::debug!(%dest, %transport, "connection opened");
                let _ = stream.set_nodelay(true);
                match connector {
                    None => {
                        let mut stream = stream;
                        if stream.write_all(&data).await.is_ok() {
                            run_connection(shared, transport, stream, dest, id, rx, dialogs).await;
                            return;
                        }
                    }
                    Some(connector) => {
                        let handshake = connector.connect(server_name, stream);
                        match tokio::time::timeout(timeout, handshake).await {
                            Ok(Ok(mut stream)) => {
                                if stream.write_all(&data).await.is_ok() {
                                    run_connection(
                                        shared, transport, stream, dest, id, rx, dialogs,
                                    )
                                    .await;
                                    return;
                                }
                            }
                            Ok(Err(e)) => {
                                tracing::warn!(%dest, name = ?name_for_log, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::warn!(%dest, "TLS handshake timed out"),
                        }
                    }
                }
            }
            Ok(Err(e)) => tracing::warn!(%dest, %transport, error = %e, "cannot open a connection"),
            Err(_) => tracing::warn!(%dest, %transport, "connection attempt timed out"),
        }
        if let Some(tcp) = conns(&shared, transport) {
            tcp.unregister(dest, id);
        }
        let _ = shared.conn_failed.send(dest);
    });
}

/// Accept SIP over TCP (or TLS) connections, one task each.
pub(super) async fn accept_tcp(listener: TcpListener, shared: Arc<Shared>, transport: Transport) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors, typically: do not spin.
                tracing::warn!(error = %e, "TCP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(tcp) = conns(&shared, transport) else {
            return;
        };
        tracing::debug!(%peer, %transport, "connection accepted");
        let _ = stream.set_nodelay(true);
        let Some(tls) = &tcp.tls else {
            let (id, rx, dialogs) = tcp.register(peer);
            tokio::spawn(run_connection(
                shared.clone(),
                transport,
                stream,
                peer,
                id,
                rx,
                dialogs,
            ));
            continue;
        };
        // The handshake in the connection's task: a slow peer holds up no one.
        let acceptor = tls.acceptor.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let timeout = shared.settings.timers.t1 * 64;
            let stream = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::warn!(%peer, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::warn!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let Some(tcp) = conns(&shared, transport) else {
                return;
            };
            let (id, rx, dialogs) = tcp.register(peer);
            run_connection(shared, transport, stream, peer, id, rx, dialogs).await;
        });
    }
}

/// One TCP connection: frames what it reads for the SIP task, writes what is
/// queued for it, and closes on a framing error (after a 400 or 513 to a
/// request), when the peer closes, or when idle with no dialog using it.
async fn run_connection<S: AsyncRead + AsyncWrite + Send + 'static>(
    shared: Arc<Shared>,
    transport: Transport,
    stream: S,
    peer: SocketAddr,
    id: u64,
    mut out: mpsc::Receiver<Vec<u8>>,
    dialogs: Arc<AtomicUsize>,
) {
    let Some(tcp) = conns(&shared, transport) else {
        return;
    };
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut framer = StreamFramer::default();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut last = Instant::now();
    let from = Peer {
        addr: peer,
        transport,
    };
    'conn: loop {
        tokio::select! {
            r = rd.read(&mut chunk) => {
                let n = match r {
                    Ok(0) => {
                        tracing::debug!(%peer, "TCP connection closed by the peer");
                        break;
                    }
                    Ok(n) => n,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "TCP read error");
                        break;
                    }
                };
                last = Instant::now();
                framer.push(&chunk[..n]);
                loop {
                    match framer.next_frame() {
                        Ok(None) => break,
                        Ok(Some(Frame::Ping)) => {
                            if wr.write_all(b"\r\n").await.is_err() {
                                break 'conn;
                            }
                        }
                        Ok(Some(Frame::Message(msg))) => {
                            // Waits while the SIP task is behind (TCP_INBOUND_QUEUE).
                            if tcp.inbound.send((msg, from)).await.is_err() {
                                break 'conn;
                            }
                        }
                        Err(e) => {
                            // On this connection, which is the request's (§18.2.2).
                            let ua = &shared.settings.user_agent;
                            if let Some(t) = endpoint::framing_error(e, from, ua, &shared.metrics) {
                                let _ = wr.write_all(&t.data).await;
                            }
                            break 'conn;
                        }
                    }
                }
            }
            Some(data) = out.recv() => {
                last = Instant::now();
                if let Err(e) = wr.write_all(&data).await {
                    tracing::warn!(%peer, error = %e, "TCP write failed");
                    break;
                }
            }
            _ = tokio::time::sleep_until(last + tcp.idle) => {
                if dialogs.load(Ordering::Relaxed) == 0 {
                    tracing::debug!(%peer, "idle TCP connection closed");
                    break;
                }
                last = Instant::now();
            }
        }
    }
    tcp.unregister(peer, id);
}
