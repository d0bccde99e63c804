//! The tokio edge: sockets, tasks and timers around the sans-IO cores.
//!
//! One task reads the SIP socket, answers what needs no call state (OPTIONS,
//! 400, 481, 405, 501) and hands everything with a known Call-ID to that
//! call's task over a channel. Each call task owns its RTP socket and its
//! [`Call`] state machine; the per-packet path (RTP in → decode → analyse)
//! runs there without allocating or locking.
//!
//! The SIP task also drives the `[[registration]]` accounts: one
//! [`Registration`] each, sending over the same socket (so the registrar sees
//! the address it will send INVITEs to) and removing the bindings on shutdown.
//!
//! SIP over TCP (RFC 3261 §18): a listener on the UDP socket's address and
//! port, and one task per connection, accepted or opened by us. A connection
//! task frames messages ([`StreamFramer`]) and hands them to the SIP task,
//! which dispatches them exactly as datagrams, tagged with the transport and
//! the connection's remote address. Sends name a transport and, for TCP, the
//! connection to reuse while it is open (the request's, or the dialog's);
//! otherwise a new connection is opened to the destination (§18.1.1, §18.2.2).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::call::{reply_datagram, stateless_response, uri_host, Call, CallSettings, Output};
use crate::config::Profile;
use crate::events::{EventSink, Metrics};
use crate::sip::message::{parse_datagram, Message, Method, ParseError, Request, Response, Uri};
use crate::sip::registration::{self, Account, Registration, State};
use crate::sip::session_timer;
use crate::sip::transaction::Timers;
use crate::sip::transport::{Frame, FrameError, StreamFramer, Transport};

/// How long a shutdown waits for the registrars to answer the un-REGISTERs.
const UNREGISTER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A SIP message for a call task, with where it came from.
type CallInput = (Message, SocketAddr);

/// Where a message came from: the transport, and the source address (for
/// TCP, the connection's remote address, which names the connection).
#[derive(Debug, Clone, Copy)]
struct Peer {
    addr: SocketAddr,
    transport: Transport,
}

/// A message read from a TCP connection, for the SIP task.
type Inbound = (Message, Peer);

/// One open TCP connection, as the senders see it.
struct ConnHandle {
    id: u64,
    /// Messages to write, in order.
    tx: mpsc::UnboundedSender<Vec<u8>>,
    /// Calls whose dialog uses this connection: it is not closed for idleness.
    dialogs: Arc<AtomicUsize>,
}

/// The TCP connections, by remote address.
struct TcpConns {
    conns: Mutex<HashMap<SocketAddr, ConnHandle>>,
    next_id: AtomicU64,
    /// Connection tasks hand what they read to the SIP task here.
    inbound: mpsc::UnboundedSender<Inbound>,
    /// A connection no dialog uses is closed after this long without traffic.
    idle: std::time::Duration,
}

/// Keeps a connection open while a dialog uses it.
struct DialogHold(Arc<AtomicUsize>);

impl Drop for DialogHold {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl TcpConns {
    /// Register a connection; returns its id, the queue to write and its dialog count.
    fn register(
        &self,
        peer: SocketAddr,
    ) -> (u64, mpsc::UnboundedReceiver<Vec<u8>>, Arc<AtomicUsize>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
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

    /// Queue `data` on the connection to `peer`; gives it back if there is none.
    fn try_send(&self, peer: SocketAddr, data: Vec<u8>) -> Result<(), Vec<u8>> {
        match self.lock().get(&peer) {
            Some(c) => c.tx.send(data).map_err(|e| e.0),
            None => Err(data),
        }
    }

    fn hold(&self, peer: SocketAddr) -> Option<DialogHold> {
        let conns = self.lock();
        let c = conns.get(&peer)?;
        c.dialogs.fetch_add(1, Ordering::Relaxed);
        Some(DialogHold(c.dialogs.clone()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, ConnHandle>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Shared by the SIP task and every call task.
struct Shared {
    settings: Arc<CallSettings>,
    sip: Arc<UdpSocket>,
    /// TCP connections; `None` when the profile does not list "tcp".
    tcp: Option<TcpConns>,
    events: EventSink,
    metrics: Metrics,
    rtp_ip: std::net::IpAddr,
    rtp_advertised: std::net::IpAddr,
    rtp_range: (u16, u16),
    rtp_cursor: AtomicU16,
}

/// A bound, not yet running, endpoint.
pub struct Server {
    shared: Arc<Shared>,
    tcp: Option<TcpListener>,
    inbound: mpsc::UnboundedReceiver<Inbound>,
    http: Option<TcpListener>,
    accounts: Vec<(Account, String)>,
    reg_settings: registration::Settings,
}

impl Server {
    /// Bind the SIP socket (and the HTTP listener) of a profile.
    pub async fn bind(profile: &Profile, events: EventSink) -> std::io::Result<Server> {
        let (sip, tcp) = bind_sip(profile).await?;
        let port = sip.local_addr()?.port();
        let (inbound_tx, inbound) = mpsc::unbounded_channel();
        let http = match profile.http.listen {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        let (lo, hi) = (profile.media.rtp_port_min, profile.media.rtp_port_max);
        let accounts = accounts(profile, port)?;
        let shared = Shared {
            settings: Arc::new(CallSettings::from_profile(profile, port)),
            sip: Arc::new(sip),
            tcp: tcp.is_some().then(|| TcpConns {
                conns: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                inbound: inbound_tx,
                idle: profile.t1() * 64,
            }),
            events,
            metrics: Metrics::default(),
            rtp_ip: profile.sip.listen.ip(),
            rtp_advertised: profile.advertised_ip(),
            rtp_range: (lo, hi),
            rtp_cursor: AtomicU16::new(lo + fastrand::u16(..=(hi - lo)) / 2 * 2),
        };
        Ok(Server {
            shared: Arc::new(shared),
            tcp,
            inbound,
            http,
            accounts,
            reg_settings: registration::Settings {
                timers: Timers {
                    t1: profile.t1(),
                    t2: profile.t2(),
                    ..Timers::default()
                },
                user_agent: Some(profile.sip.user_agent.clone()),
                ..registration::Settings::default()
            },
        })
    }

    /// The SIP address actually bound.
    pub fn sip_addr(&self) -> std::io::Result<SocketAddr> {
        self.shared.sip.local_addr()
    }

    /// The SIP over TCP address actually bound, if TCP is on.
    pub fn sip_tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The HTTP address actually bound.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serve until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        if let Some(listener) = self.http {
            tokio::spawn(serve_http(listener, self.shared.clone()));
        }
        if let Some(listener) = self.tcp {
            tokio::spawn(accept_tcp(listener, self.shared.clone()));
        }
        let now = Instant::now().into_std();
        let regs = Registrations::new(
            self.accounts
                .into_iter()
                .map(|(account, target)| {
                    let reg = Registration::with_settings(account, self.reg_settings.clone(), now);
                    (reg, target)
                })
                .collect(),
        );
        sip_loop(self.shared, regs, self.inbound, shutdown).await;
    }
}

/// Bind the UDP socket and, when the profile lists "tcp", a TCP listener on
/// the same address and port. With port 0 the UDP port is chosen by the
/// system; if TCP cannot have the same one, both are bound again.
async fn bind_sip(profile: &Profile) -> std::io::Result<(UdpSocket, Option<TcpListener>)> {
    let want_tcp = profile.sip.transports.contains(&Transport::Tcp);
    let mut tries = 0;
    loop {
        let udp = UdpSocket::bind(profile.sip.listen).await?;
        // tokio's try_send_to goes by cached readiness, which a fresh socket
        // does not have yet: without this the first datagram (a REGISTER
        // sent at start-up) failed with "would block" and went out only on
        // its retransmission.
        udp.writable().await?;
        if !want_tcp {
            return Ok((udp, None));
        }
        let addr = udp.local_addr()?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, Some(tcp))),
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && profile.sip.listen.port() == 0
                    && tries < 16 =>
            {
                tries += 1;
            }
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("cannot bind tcp:{addr}: {e}"),
                ))
            }
        }
    }
}

/// The `[[registration]]` accounts of a profile, with our Contact (the user
/// at the advertised address and the bound port) and the `host:port` to
/// send to.
fn accounts(profile: &Profile, sip_port: u16) -> std::io::Result<Vec<(Account, String)>> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    let mut out = Vec::new();
    for r in &profile.registrations {
        let registrar = r.registrar_uri().map_err(invalid)?;
        let user = r.contact_user.as_deref().unwrap_or(&profile.sip.user);
        let contact = Uri::parse(&format!(
            "sip:{user}@{}:{sip_port}",
            uri_host(profile.advertised_ip())
        ))
        .map_err(|e| invalid(format!("registration contact: {e}")))?;
        // UDP only: a sips: registrar still gets its port or 5061.
        let port = registrar.port.unwrap_or(match registrar.scheme {
            crate::sip::message::Scheme::Sips => 5061,
            _ => 5060,
        });
        let target = format!("{}:{port}", registrar.host);
        out.push((
            Account {
                aor: r.aor_uri().map_err(invalid)?,
                registrar,
                username: r.username.clone(),
                password: r.password.expose().to_string(),
                contact,
                expires: r.expires,
            },
            target,
        ));
    }
    Ok(out)
}

/// One registration and where its registrar is.
struct RegSlot {
    reg: Registration,
    /// `host:port` of the registrar URI.
    target: String,
    dest: Option<SocketAddr>,
    resolving: bool,
    /// Last state logged, to log changes only.
    logged: Option<State>,
}

/// The registrations the SIP task drives.
struct Registrations {
    slots: Vec<RegSlot>,
    resolved_tx: mpsc::UnboundedSender<(usize, Option<SocketAddr>)>,
    resolved_rx: mpsc::UnboundedReceiver<(usize, Option<SocketAddr>)>,
}

impl Registrations {
    fn new(regs: Vec<(Registration, String)>) -> Self {
        let (resolved_tx, resolved_rx) = mpsc::unbounded_channel();
        Self {
            slots: regs
                .into_iter()
                .map(|(reg, target)| RegSlot {
                    dest: target.parse().ok(),
                    reg,
                    target,
                    resolving: false,
                    logged: None,
                })
                .collect(),
            resolved_tx,
            resolved_rx,
        }
    }

    /// Hand a response to its registration; false if it is none of ours.
    fn handle_response(&mut self, resp: &Response, now: std::time::Instant) -> bool {
        let Some(call_id) = resp.call_id() else {
            return false;
        };
        match self.slots.iter_mut().find(|s| s.reg.call_id() == call_id) {
            Some(slot) => {
                slot.reg.handle_response(resp, now);
                true
            }
            None => false,
        }
    }

    fn next_timeout(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|s| s.reg.poll_timeout())
            .min()
            .map(Instant::from_std)
    }

    fn handle_timeout(&mut self, now: std::time::Instant) {
        for s in &mut self.slots {
            if s.reg.poll_timeout().is_some_and(|t| t <= now) {
                s.reg.handle_timeout(now);
            }
        }
    }

    fn unregister(&mut self, now: std::time::Instant) {
        for s in &mut self.slots {
            s.reg.unregister(now);
        }
    }

    fn all_unregistered(&self) -> bool {
        self.slots
            .iter()
            .all(|s| matches!(s.reg.state(), State::Unregistered))
    }

    /// Send what the registrations have to send, and log state changes.
    fn flush(&mut self, sock: &UdpSocket) {
        for (i, s) in self.slots.iter_mut().enumerate() {
            while let Some(req) = s.reg.poll_output() {
                match s.dest {
                    Some(dest) => send(sock, dest, &req.to_bytes()),
                    // Dropped: the transaction retransmits once the name is resolved.
                    None if !s.resolving => {
                        s.resolving = true;
                        let (tx, target) = (self.resolved_tx.clone(), s.target.clone());
                        tokio::spawn(async move {
                            let addr = tokio::net::lookup_host(target.as_str())
                                .await
                                .map_err(|e| {
                                    tracing::warn!(registrar = %target, error = %e, "cannot resolve the registrar");
                                })
                                .ok()
                                .and_then(|mut a| a.next());
                            let _ = tx.send((i, addr));
                        });
                    }
                    None => {}
                }
            }
            let state = s.reg.state();
            if s.logged.as_ref() != Some(state) {
                log_state(&s.reg, state);
                s.logged = Some(state.clone());
            }
        }
    }

    fn resolved(&mut self, i: usize, addr: Option<SocketAddr>) {
        if let Some(s) = self.slots.get_mut(i) {
            s.resolving = false;
            s.dest = addr;
        }
    }
}

fn log_state(reg: &Registration, state: &State) {
    let a = reg.account();
    let (aor, registrar) = (a.aor.to_string(), a.registrar.to_string());
    match state {
        State::Registering => tracing::info!(%aor, %registrar, "registering"),
        State::Registered { expires_at } => {
            let secs = expires_at
                .saturating_duration_since(std::time::Instant::now())
                .as_secs();
            tracing::info!(%aor, %registrar, expires_in_s = secs, "registered")
        }
        State::Failed { retry_at, reason } => {
            let secs = retry_at
                .saturating_duration_since(std::time::Instant::now())
                .as_secs();
            tracing::warn!(%aor, %registrar, %reason, retry_in_s = secs, "registration failed")
        }
        State::Unregistering => tracing::info!(%aor, %registrar, "unregistering"),
        State::Unregistered => tracing::info!(%aor, %registrar, "unregistered"),
    }
}

async fn sip_loop(
    shared: Arc<Shared>,
    mut regs: Registrations,
    mut inbound: mpsc::UnboundedReceiver<Inbound>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut calls: HashMap<String, mpsc::UnboundedSender<CallInput>> = HashMap::new();
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<String>();
    let mut buf = vec![0u8; 65_535];
    regs.flush(&shared.sip);
    loop {
        let wake = regs.next_timeout();
        tokio::select! {
            r = shared.sip.recv_from(&mut buf) => match r {
                Ok((n, src)) => on_datagram(&shared, &mut calls, &mut regs, &ended_tx, &buf[..n], src),
                Err(e) => tracing::warn!(error = %e, "SIP socket receive error"),
            },
            Some((msg, peer)) = inbound.recv() => {
                dispatch(&shared, &mut calls, &mut regs, &ended_tx, msg, peer);
            }
            Some(id) = ended_rx.recv() => { calls.remove(&id); }
            Some((i, addr)) = regs.resolved_rx.recv() => regs.resolved(i, addr),
            _ = tokio::time::sleep_until(wake.unwrap_or_else(far_future)), if wake.is_some() => {
                regs.handle_timeout(Instant::now().into_std());
            }
            _ = &mut shutdown => break,
        }
        regs.flush(&shared.sip);
    }
    if regs.slots.is_empty() {
        return;
    }
    // Remove the bindings, so the registrar stops sending calls to an address
    // nobody answers; a registrar that does not answer in time is not waited for.
    regs.unregister(Instant::now().into_std());
    regs.flush(&shared.sip);
    let give_up = Instant::now() + UNREGISTER_WAIT;
    while !regs.all_unregistered() {
        let wake = regs.next_timeout().map_or(give_up, |t| t.min(give_up));
        tokio::select! {
            r = shared.sip.recv_from(&mut buf) => {
                if let Ok((n, _)) = r {
                    if let Ok(Message::Response(resp)) = parse_datagram(&buf[..n]) {
                        regs.handle_response(&resp, Instant::now().into_std());
                    }
                }
            }
            Some((i, addr)) = regs.resolved_rx.recv() => regs.resolved(i, addr),
            _ = tokio::time::sleep_until(wake) => {
                if Instant::now() >= give_up {
                    tracing::warn!("registrar did not confirm the un-REGISTER in time");
                    break;
                }
                regs.handle_timeout(Instant::now().into_std());
            }
        }
        regs.flush(&shared.sip);
    }
}

fn on_datagram(
    shared: &Arc<Shared>,
    calls: &mut HashMap<String, mpsc::UnboundedSender<CallInput>>,
    regs: &mut Registrations,
    ended_tx: &mpsc::UnboundedSender<String>,
    data: &[u8],
    src: SocketAddr,
) {
    // RFC 5626 §4.4.1 keep-alives (CRLF) carry no message.
    if data.iter().all(|b| matches!(b, b'\r' | b'\n')) {
        return;
    }
    let peer = Peer {
        addr: src,
        transport: Transport::Udp,
    };
    let msg = match parse_datagram(data) {
        Ok(m) => m,
        Err(ParseError::BadRequest { reason, request }) => {
            shared
                .metrics
                .sip_bad_request
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(%src, %reason, "malformed SIP request: 400");
            if request.method != Method::Ack {
                reply(
                    shared,
                    &request,
                    peer,
                    400,
                    &format!("Bad Request ({reason})"),
                );
            }
            return;
        }
        Err(e) => {
            shared
                .metrics
                .sip_unparseable
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%src, error = %e, len = data.len(), "dropping unparseable SIP datagram");
            return;
        }
    };
    dispatch(shared, calls, regs, ended_tx, msg, peer);
}

/// A parsed message, whatever transport it came on: to its call, its
/// registration, or answered here.
fn dispatch(
    shared: &Arc<Shared>,
    calls: &mut HashMap<String, mpsc::UnboundedSender<CallInput>>,
    regs: &mut Registrations,
    ended_tx: &mpsc::UnboundedSender<String>,
    msg: Message,
    peer: Peer,
) {
    let src = peer.addr;
    if let Message::Response(r) = &msg {
        if regs.handle_response(r, Instant::now().into_std()) {
            return;
        }
    }
    let call_id = match &msg {
        Message::Request(r) => r.call_id(),
        Message::Response(r) => r.call_id(),
    }
    .unwrap_or("")
    .to_string();
    let msg = match calls.get(&call_id) {
        Some(tx) => match tx.send((msg, src)) {
            Ok(()) => return,
            Err(mpsc::error::SendError((msg, _))) => {
                calls.remove(&call_id);
                msg
            }
        },
        None => msg,
    };
    let req = match msg {
        Message::Request(r) => r,
        Message::Response(r) => {
            tracing::debug!(%src, code = r.code, %call_id, "response for no call: dropped");
            return;
        }
    };
    let has_to_tag = req.to().is_some_and(|t| t.tag().is_some());
    match &req.method {
        Method::Invite if !has_to_tag => {
            // RFC 4028 §9: refused statelessly, so that the caller's retry
            // with a larger interval (same Call-ID) starts a fresh call.
            if let Err(e) = session_timer::negotiate(&req, shared.settings.min_se) {
                let mut resp = stateless_response(
                    &req,
                    422,
                    "Session Interval Too Small",
                    &shared.settings.user_agent,
                );
                resp.headers.push("Min-SE", e.min_se.to_string());
                let dest = crate::sip::dialog::reply_dest(&req, src);
                send(&shared.sip, dest, &resp.to_bytes());
                return;
            }
            let (tx, rx) = mpsc::unbounded_channel();
            calls.insert(call_id.clone(), tx);
            shared.metrics.calls_started.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(call_task(shared.clone(), req, peer, rx, ended_tx.clone()));
        }
        Method::Ack => {}
        Method::Options if !has_to_tag => reply(shared, &req, peer, 200, "OK"),
        Method::Register
        | Method::Subscribe
        | Method::Publish
        | Method::Message
        | Method::Refer
            if !has_to_tag =>
        {
            reply(shared, &req, peer, 405, "Method Not Allowed")
        }
        Method::Other(_) => reply(shared, &req, peer, 501, "Not Implemented"),
        _ => reply(shared, &req, peer, 481, "Call/Transaction Does Not Exist"),
    }
}

/// A stateless response, on the transport (and connection) the request came on.
fn reply(shared: &Arc<Shared>, req: &Request, peer: Peer, code: u16, reason: &str) {
    let (dest, data) = reply_datagram(req, peer.addr, code, reason, &shared.settings.user_agent);
    let connection = peer.transport.is_reliable().then_some(peer.addr);
    send_on(shared, peer.transport, dest, connection, data);
}

/// Send a message on `transport`. For TCP: on the connection to
/// `connection` while it is open, else on one to `dest`, opened if needed.
fn send_on(
    shared: &Arc<Shared>,
    transport: Transport,
    dest: SocketAddr,
    connection: Option<SocketAddr>,
    data: Vec<u8>,
) {
    match transport {
        Transport::Udp => send(&shared.sip, dest, &data),
        Transport::Tcp => {
            let Some(tcp) = &shared.tcp else {
                tracing::warn!(%dest, "TCP is not enabled in the profile: message dropped");
                return;
            };
            let data = match connection {
                Some(c) => match tcp.try_send(c, data) {
                    Ok(()) => return,
                    Err(data) => data,
                },
                None => data,
            };
            let data = match tcp.try_send(dest, data) {
                Ok(()) => return,
                Err(data) => data,
            };
            // §18.1.1 / §18.2.2: no open connection, open one. Registered at
            // once so that what follows queues behind this message.
            let (id, rx, dialogs) = tcp.register(dest);
            let shared = shared.clone();
            tokio::spawn(async move {
                let connect =
                    tokio::time::timeout(shared.settings.timers.t1 * 64, TcpStream::connect(dest));
                match connect.await {
                    Ok(Ok(stream)) => {
                        tracing::debug!(%dest, "TCP connection opened");
                        let _ = stream.set_nodelay(true);
                        let mut stream = stream;
                        if stream.write_all(&data).await.is_ok() {
                            run_connection(shared, stream, dest, id, rx, dialogs).await;
                            return;
                        }
                    }
                    Ok(Err(e)) => tracing::warn!(%dest, error = %e, "cannot open a TCP connection"),
                    Err(_) => tracing::warn!(%dest, "TCP connection timed out"),
                }
                if let Some(tcp) = &shared.tcp {
                    tcp.unregister(dest, id);
                }
            });
        }
    }
}

/// Accept SIP over TCP connections, one task each.
async fn accept_tcp(listener: TcpListener, shared: Arc<Shared>) {
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
        let Some(tcp) = &shared.tcp else { return };
        tracing::debug!(%peer, "TCP connection accepted");
        let _ = stream.set_nodelay(true);
        let (id, rx, dialogs) = tcp.register(peer);
        tokio::spawn(run_connection(
            shared.clone(),
            stream,
            peer,
            id,
            rx,
            dialogs,
        ));
    }
}

/// One TCP connection: frames what it reads for the SIP task, writes what is
/// queued for it, and closes on a framing error (after a 400 or 513 to a
/// request), when the peer closes, or when idle with no dialog using it.
async fn run_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    mut out: mpsc::UnboundedReceiver<Vec<u8>>,
    dialogs: Arc<AtomicUsize>,
) {
    let Some(tcp) = &shared.tcp else { return };
    let (mut rd, mut wr) = stream.into_split();
    let mut framer = StreamFramer::default();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut last = Instant::now();
    let from = Peer {
        addr: peer,
        transport: Transport::Tcp,
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
                            if tcp.inbound.send((msg, from)).is_err() {
                                break 'conn;
                            }
                        }
                        Err(e) => {
                            if let Some(resp) = framing_error(&shared, peer, e) {
                                let _ = wr.write_all(&resp).await;
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

/// Log a stream that cannot go on; the response to send before closing, if
/// the message was a request we could read enough of.
fn framing_error(shared: &Shared, peer: SocketAddr, e: FrameError) -> Option<Vec<u8>> {
    let ua = &shared.settings.user_agent;
    match e {
        FrameError::TooLarge { request } => {
            shared
                .metrics
                .sip_bad_request
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, "SIP message over TCP too large: closing the connection");
            let req = request.filter(|r| r.method != Method::Ack)?;
            Some(stateless_response(&req, 513, "Message Too Large", ua).to_bytes())
        }
        FrameError::BadRequest { reason, request } => {
            shared
                .metrics
                .sip_bad_request
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(%peer, %reason, "malformed SIP request over TCP: 400, closing the connection");
            (request.method != Method::Ack).then(|| {
                stateless_response(&request, 400, &format!("Bad Request ({reason})"), ua).to_bytes()
            })
        }
        FrameError::Unparseable(why) => {
            shared
                .metrics
                .sip_unparseable
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, error = %why, "unparseable SIP over TCP: closing the connection");
            None
        }
    }
}

/// The media socket a call's packet leaves from: RTCP from our RTCP port
/// unless it could not be bound (then, like RTCP with rtcp-mux, RFC 5761,
/// from the RTP socket).
fn media_socket<'a>(
    rtp: &'a UdpSocket,
    rtcp: Option<&'a UdpSocket>,
    socket: crate::call::Socket,
) -> &'a UdpSocket {
    match socket {
        crate::call::Socket::Rtcp => rtcp.unwrap_or(rtp),
        _ => rtp,
    }
}

fn send(sock: &UdpSocket, dest: SocketAddr, data: &[u8]) {
    // A full socket buffer loses the datagram; the transaction layer retransmits.
    if let Err(e) = sock.try_send_to(data, dest) {
        tracing::warn!(%dest, error = %e, "SIP send failed");
    }
}

/// Bind an RTP socket on an even port of the profile's range (RFC 3550 §11).
async fn bind_rtp(shared: &Shared) -> Option<(UdpSocket, Option<UdpSocket>)> {
    let (lo, hi) = shared.rtp_range;
    let slots = (hi - lo) / 2 + 1;
    for _ in 0..slots.min(64) {
        let port = shared
            .rtp_cursor
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                Some(if p + 2 > hi { lo } else { p + 2 })
            })
            .unwrap_or(lo);
        // Even ports only; an odd `rtp_port_min` starts one above.
        let port = if port & 1 == 1 { port + 1 } else { port };
        if port > hi {
            continue;
        }
        if let Ok(s) = UdpSocket::bind(SocketAddr::new(shared.rtp_ip, port)).await {
            // RTCP's conventional port (RFC 3550 §11), when free: what
            // arrives there is counted and read for sender reports, and our
            // receiver reports go from it unless rtcp-mux was negotiated
            // (RTCP on the RTP port is accepted either way).
            let rtcp = UdpSocket::bind(SocketAddr::new(shared.rtp_ip, port + 1))
                .await
                .ok();
            return Some((s, rtcp));
        }
    }
    None
}

async fn call_task(
    shared: Arc<Shared>,
    invite: Request,
    peer: Peer,
    mut rx: mpsc::UnboundedReceiver<CallInput>,
    ended: mpsc::UnboundedSender<String>,
) {
    use crate::call::{Socket, Transmit};
    let src = peer.addr;
    let call_id = invite.call_id().unwrap_or("").to_string();
    // The connection the dialog came on stays open while the call lasts.
    let _hold = match (&shared.tcp, peer.transport) {
        (Some(tcp), Transport::Tcp) => tcp.hold(src),
        _ => None,
    };
    let Some((rtp, rtcp)) = bind_rtp(&shared).await else {
        tracing::error!(%call_id, "no free RTP port in the profile's range");
        reply(
            &shared,
            &invite,
            peer,
            503,
            "Service Unavailable (no media port)",
        );
        let _ = ended.send(call_id);
        return;
    };
    let local_rtp = match rtp.local_addr() {
        Ok(a) => SocketAddr::new(shared.rtp_advertised, a.port()),
        Err(_) => return,
    };
    let mut call = match Call::new_on(
        shared.settings.clone(),
        invite.clone(),
        src,
        peer.transport,
        local_rtp,
        Instant::now().into_std(),
    ) {
        Ok(c) => c,
        Err(e) => {
            reply(&shared, &invite, peer, 400, &format!("Bad Request ({e})"));
            let _ = ended.send(call_id);
            return;
        }
    };
    drop(invite);
    tracing::info!(%call_id, %src, transport = %peer.transport, rtp = %local_rtp, "call started");
    let mut rtp = Some(rtp);
    let mut rtcp = rtcp;
    let mut buf = [0u8; 2048];
    let mut rtcp_buf = [0u8; 1500];
    loop {
        while let Some(out) = call.poll_output() {
            match out {
                Output::Transmit(Transmit {
                    socket:
                        Socket::Sip {
                            transport,
                            connection,
                        },
                    dest,
                    payload,
                }) => send_on(&shared, transport, dest, connection, payload.into_owned()),
                Output::Transmit(Transmit {
                    socket,
                    dest,
                    payload,
                }) => {
                    if let Some(sock) = &rtp {
                        // A full buffer loses a silence packet or a report: nothing to retry.
                        let _ =
                            media_socket(sock, rtcp.as_ref(), socket).try_send_to(&payload, dest);
                    }
                }
                Output::Record(record) => {
                    shared.metrics.call_ended(&record);
                    shared.events.write(&record);
                }
            }
        }
        if call.is_finished() {
            break;
        }
        if !call.wants_media() {
            rtp = None;
            rtcp = None;
        }
        let wake = call.poll_timeout().map(Instant::from_std);
        tokio::select! {
            input = rx.recv() => match input {
                Some((Message::Request(r), from)) => call.handle_request(&r, from, Instant::now().into_std()),
                Some((Message::Response(r), _)) => call.handle_response(&r, Instant::now().into_std()),
                None => break,
            },
            r = recv_rtp(rtp.as_ref(), &mut buf) => {
                if let Ok((n, from)) = r {
                    call.handle_rtp_from(&buf[..n], Some(from), Instant::now().into_std());
                }
            }
            r = recv_rtp(rtcp.as_ref(), &mut rtcp_buf) => {
                if let Ok((n, from)) = r {
                    call.handle_rtcp(&rtcp_buf[..n], Some(from), Instant::now().into_std());
                }
            }
            _ = tokio::time::sleep_until(wake.unwrap_or_else(far_future)), if wake.is_some() => {
                call.handle_timeout(Instant::now().into_std());
            }
        }
    }
    let _ = ended.send(call_id);
}

async fn recv_rtp(
    sock: Option<&UdpSocket>,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr)> {
    match sock {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

fn far_future() -> Instant {
    Instant::now() + std::time::Duration::from_secs(86_400)
}

/// `/healthz` and `/metrics`. A dozen lines of HTTP/1.0 do not justify an HTTP
/// framework yet; the dashboard will bring one.
async fn serve_http(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            // Read the request head (bounded in size and time); the body, if
            // any, is of no interest.
            let mut req = [0u8; 2048];
            let mut n = 0;
            let read_head = async {
                while n < req.len() && !req[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut req[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                }
            };
            if tokio::time::timeout(std::time::Duration::from_secs(5), read_head)
                .await
                .is_err()
            {
                return;
            }
            let line = String::from_utf8_lossy(&req[..n]);
            let path = line.split_whitespace().nth(1).unwrap_or("/");
            let (status, body) = match path {
                "/healthz" => ("200 OK", "ok\n".to_string()),
                "/metrics" => ("200 OK", shared.metrics.render()),
                _ => ("404 Not Found", "not found\n".to_string()),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(resp.as_bytes()).await;
        });
    }
}
