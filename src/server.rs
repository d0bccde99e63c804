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

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::call::{reply_datagram, stateless_response, uri_host, Call, CallSettings, Output};
use crate::config::Profile;
use crate::events::{EventSink, Metrics};
use crate::sip::message::{parse_datagram, Message, Method, ParseError, Request, Response, Uri};
use crate::sip::registration::{self, Account, Registration, State};
use crate::sip::session_timer;
use crate::sip::transaction::Timers;

/// How long a shutdown waits for the registrars to answer the un-REGISTERs.
const UNREGISTER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A SIP message for a call task, with where it came from.
type CallInput = (Message, SocketAddr);

/// Shared by the SIP task and every call task.
struct Shared {
    settings: Arc<CallSettings>,
    sip: Arc<UdpSocket>,
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
    http: Option<TcpListener>,
    accounts: Vec<(Account, String)>,
    reg_settings: registration::Settings,
}

impl Server {
    /// Bind the SIP socket (and the HTTP listener) of a profile.
    pub async fn bind(profile: &Profile, events: EventSink) -> std::io::Result<Server> {
        let sip = UdpSocket::bind(profile.sip.listen).await?;
        let port = sip.local_addr()?.port();
        let http = match profile.http.listen {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        let (lo, hi) = (profile.media.rtp_port_min, profile.media.rtp_port_max);
        let accounts = accounts(profile, port)?;
        let shared = Shared {
            settings: Arc::new(CallSettings::from_profile(profile, port)),
            sip: Arc::new(sip),
            events,
            metrics: Metrics::default(),
            rtp_ip: profile.sip.listen.ip(),
            rtp_advertised: profile.advertised_ip(),
            rtp_range: (lo, hi),
            rtp_cursor: AtomicU16::new(lo + fastrand::u16(..=(hi - lo)) / 2 * 2),
        };
        Ok(Server {
            shared: Arc::new(shared),
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

    /// The HTTP address actually bound.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serve until `shutdown` completes.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        if let Some(listener) = self.http {
            tokio::spawn(serve_http(listener, self.shared.clone()));
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
        sip_loop(self.shared, regs, shutdown).await;
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
                    src,
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
                let dest = req
                    .top_via()
                    .map(|v| crate::sip::dialog::response_destination(&v, src))
                    .unwrap_or(src);
                send(&shared.sip, dest, &resp.to_bytes());
                return;
            }
            let (tx, rx) = mpsc::unbounded_channel();
            calls.insert(call_id.clone(), tx);
            shared.metrics.calls_started.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(call_task(shared.clone(), req, src, rx, ended_tx.clone()));
        }
        Method::Ack => {}
        Method::Options if !has_to_tag => reply(shared, &req, src, 200, "OK"),
        Method::Register
        | Method::Subscribe
        | Method::Publish
        | Method::Message
        | Method::Refer
            if !has_to_tag =>
        {
            reply(shared, &req, src, 405, "Method Not Allowed")
        }
        Method::Other(_) => reply(shared, &req, src, 501, "Not Implemented"),
        _ => reply(shared, &req, src, 481, "Call/Transaction Does Not Exist"),
    }
}

fn reply(shared: &Shared, req: &Request, src: SocketAddr, code: u16, reason: &str) {
    let (dest, data) = reply_datagram(req, src, code, reason, &shared.settings.user_agent);
    send(&shared.sip, dest, &data);
}

fn send(sock: &UdpSocket, dest: SocketAddr, data: &[u8]) {
    // A full socket buffer loses the datagram; the transaction layer retransmits.
    if let Err(e) = sock.try_send_to(data, dest) {
        tracing::warn!(%dest, error = %e, "SIP send failed");
    }
}

/// Bind an RTP socket on an even port of the profile's range (RFC 3550 §11).
async fn bind_rtp(shared: &Shared) -> Option<UdpSocket> {
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
            return Some(s);
        }
    }
    None
}

async fn call_task(
    shared: Arc<Shared>,
    invite: Request,
    src: SocketAddr,
    mut rx: mpsc::UnboundedReceiver<CallInput>,
    ended: mpsc::UnboundedSender<String>,
) {
    let call_id = invite.call_id().unwrap_or("").to_string();
    let Some(rtp) = bind_rtp(&shared).await else {
        tracing::error!(%call_id, "no free RTP port in the profile's range");
        reply(
            &shared,
            &invite,
            src,
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
    let mut call = match Call::new(
        shared.settings.clone(),
        invite.clone(),
        src,
        local_rtp,
        Instant::now().into_std(),
    ) {
        Ok(c) => c,
        Err(e) => {
            reply(&shared, &invite, src, 400, &format!("Bad Request ({e})"));
            let _ = ended.send(call_id);
            return;
        }
    };
    drop(invite);
    tracing::info!(%call_id, %src, rtp = %local_rtp, "call started");
    let mut rtp = Some(rtp);
    let mut buf = [0u8; 2048];
    loop {
        while let Some(out) = call.poll_output() {
            match out {
                Output::Send { dest, data } => send(&shared.sip, dest, &data),
                Output::Ended(record) => {
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
        }
        let wake = call.poll_timeout().map(Instant::from_std);
        tokio::select! {
            input = rx.recv() => match input {
                Some((Message::Request(r), from)) => call.handle_request(&r, from, Instant::now().into_std()),
                Some((Message::Response(r), _)) => call.handle_response(&r, Instant::now().into_std()),
                None => break,
            },
            r = recv_rtp(rtp.as_ref(), &mut buf) => {
                if let Ok(n) = r {
                    call.handle_rtp(&buf[..n], Instant::now().into_std());
                }
            }
            _ = tokio::time::sleep_until(wake.unwrap_or_else(far_future)), if wake.is_some() => {
                call.handle_timeout(Instant::now().into_std());
            }
        }
    }
    let _ = ended.send(call_id);
}

async fn recv_rtp(sock: Option<&UdpSocket>, buf: &mut [u8]) -> std::io::Result<usize> {
    match sock {
        Some(s) => s.recv_from(buf).await.map(|(n, _)| n),
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
