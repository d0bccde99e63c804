//! The tokio edge: sockets, tasks and timers around the sans-IO cores.
//!
//! One task reads the SIP socket and hands each message to the [`Endpoint`],
//! which decides (answer statelessly, start a call, route to a call, feed a
//! registration); this task only executes the decision. Each call task owns
//! its RTP socket and its [`Call`] state machine; the per-packet path (RTP in
//! → decode → analyse) runs there without allocating or locking.
//!
//! The SIP task also drives the `[[registration]]` accounts, sending over
//! the same socket (so the registrar sees the address it will send INVITEs
//! to) and removing the bindings on shutdown.
//!
//! SIP over TCP (RFC 3261 §18): a listener on the UDP socket's address and
//! port, and one task per connection, accepted or opened by us. A connection
//! task frames messages ([`StreamFramer`](emonav_sip::transport::StreamFramer)) and hands them to the SIP task,
//! which dispatches them exactly as datagrams, tagged with the transport and
//! the connection's remote address. Sends name a transport and, for TCP, the
//! connection to reuse while it is open (the request's, or the dialog's);
//! otherwise a new connection is opened to the destination (§18.1.1, §18.2.2).
//!
//! Every queue fed from the network is bounded (see the constants); a full
//! one drops and counts ([`DropLog`]), except TCP reads, which wait.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::call::{Call, CallSettings, Output, RelaySide};
use crate::config::Profile;
use crate::decisions::Decisions;
use crate::endpoint::registrations::accounts;
use crate::endpoint::{
    self, offer, DropLog, Endpoint, Event, Offer, RegOutput, Registrations, Transmit,
};
use crate::events::{EventSink, Metrics};
use crate::lifecycle::{ActiveCall, Control, Lifecycle, ServerHandle};
use crate::live::Live;
use crate::metrics::Direction;
use emonav_sip::message::{parse_datagram, Message, Request};
use emonav_sip::registration::{self, Account, Registration};
use emonav_sip::transaction::Timers;
use emonav_sip::transport::{Peer, Transport};

/// How long a shutdown waits for the registrars to answer the un-REGISTERs.
const UNREGISTER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Messages queued for one call task. A legitimate peer has a few
/// transactions open per call (plus their UDP retransmissions), and the call
/// task reads its queue at least every packet time; 64 absorbs any real
/// burst while a flood on one Call-ID holds at most 64 messages.
const CALL_QUEUE: usize = 64;

mod media_io;
use media_io::Datagrams;
mod tcp;
use tcp::{accept_tcp, TcpConns, TCP_INBOUND_QUEUE};

/// A SIP message for a call task, with where it came from: its transport
/// and connection, on which a request is answered (RFC 3261 §18.2.2).
/// Boxed: tokio's channel allocates its slots 32 at a time when it is
/// created, and 32 unboxed messages made every call's queue 6.9 KiB (massif,
/// docs/performance.md "Memory per call"); a box per SIP message is a few
/// allocations per call, none per RTP packet.
type CallInput = (Box<Message>, Peer);

/// The endpoint's handle on a call: its task's queue.
type CallTx = mpsc::Sender<CallInput>;

/// A message read from a TCP connection, for the SIP task.
type Inbound = (Message, Peer);

/// Shared by the SIP task and every call task.
struct Shared {
    /// The settings at start, for what a reload does not change (timers,
    /// User-Agent, line adapters); a new call takes [`Lifecycle::settings`].
    settings: Arc<CallSettings>,
    /// Drain, reload, readiness.
    life: Arc<Lifecycle>,
    /// `[shutdown] drain_timeout_s`.
    drain_timeout_s: u32,
    sip: Arc<UdpSocket>,
    /// TCP connections; `None` when the profile does not list "tcp".
    tcp: Option<TcpConns>,
    /// TLS connections; `None` without `[sip] tls_listen`.
    tls: Option<TcpConns>,
    events: EventSink,
    metrics: Arc<Metrics>,
    /// Messages dropped on full call queues.
    call_drops: DropLog,
    /// Published routing decisions (`GET /decisions/{key}`).
    decisions: Arc<Decisions>,
    /// Calls in progress and their events (`/calls`, `/events`).
    live: Arc<Live>,
    rtp_ip: std::net::IpAddr,
    rtp_advertised: std::net::IpAddr,
    rtp_range: (u16, u16),
    rtp_cursor: AtomicU16,
    /// `[history]`: the caller history store, if on, and its settings.
    history: Option<(crate::history::HistoryStore, crate::history::HistoryConfig)>,
    /// `[webhooks]`, if a URL is set.
    webhooks: Option<crate::webhook::Webhooks>,
    /// DNS for registrars (RFC 3263); `None` if it could not be set up.
    locator: Option<crate::locate::Locator>,
    /// Connections we could not open (or whose TLS handshake failed), for
    /// the registrations to fail over at once (RFC 3263 §4.3).
    conn_failed: mpsc::UnboundedSender<SocketAddr>,
}

/// A bound, not yet running, endpoint.
pub struct Server {
    shared: Arc<Shared>,
    tcp: Option<TcpListener>,
    /// SIP over TLS (`[sip] tls_listen`).
    tls: Option<TcpListener>,
    inbound: mpsc::Receiver<Inbound>,
    http: Option<TcpListener>,
    accounts: Vec<(Account, crate::locate::Locate)>,
    reg_settings: registration::Settings,
    control: mpsc::UnboundedReceiver<Control>,
    /// `[security]`: who may send requests no call owns.
    trust: Option<crate::trust::TrustPolicy>,
    /// `[overload]`: admission control.
    overload: crate::overload::OverloadConfig,
    /// The webhook delivery task, awaited at shutdown (it writes its spool).
    webhook_task: Option<tokio::task::JoinHandle<()>>,
    /// Where [`Shared::conn_failed`] reports arrive.
    conn_failed: mpsc::UnboundedReceiver<SocketAddr>,
}

impl Server {
    /// Bind the SIP socket (and the HTTP listener) of a profile.
    pub async fn bind(profile: &Profile, events: EventSink) -> std::io::Result<Server> {
        let (sip, tcp) = bind_sip(profile).await?;
        let port = sip.local_addr()?.port();
        let (inbound_tx, inbound) = mpsc::channel(TCP_INBOUND_QUEUE);
        let tls_config = crate::tls::Tls::from_config(&profile.sip)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let tls = match (profile.sip.tls_listen, &tls_config) {
            (Some(addr), Some(_)) => Some(TcpListener::bind(addr).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot bind tls:{addr}: {e}"))
            })?),
            _ => None,
        };
        let http = match profile.http.listen {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        let (lo, hi) = (profile.media.rtp_port_min, profile.media.rtp_port_max);
        let accounts = accounts(profile, port)?;
        let now = Instant::now().into_std();
        let settings = Arc::new(CallSettings::from_profile(profile, port));
        let (life, control) = Lifecycle::new(settings.clone(), profile);
        let history = crate::history::HistoryStore::open(&profile.history, profile.base_dir())
            .map_err(|e| std::io::Error::other(format!("[history]: {e}")))?
            .map(|s| (s, profile.history.clone()));
        let metrics = Arc::new(Metrics::default());
        let (webhooks, webhook_task) =
            crate::webhook::Webhooks::start(&profile.webhooks, profile.base_dir(), metrics.clone())
                .unzip();
        let locator = match crate::locate::Locator::new(&profile.sip.dns_servers) {
            Ok(l) => Some(l),
            Err(e) => {
                // IP-literal registrars still work; named ones are reported.
                tracing::warn!(error = %e, "no DNS resolver");
                None
            }
        };
        // Unbounded, yet bounded in practice: one report per failed connection
        // attempt, and attempts follow our own sends.
        let (conn_failed_tx, conn_failed) = mpsc::unbounded_channel();
        let shared = Shared {
            history,
            webhooks,
            locator,
            conn_failed: conn_failed_tx,
            settings,
            life,
            drain_timeout_s: profile.shutdown.drain_timeout_s,
            sip: Arc::new(sip),
            tcp: tcp
                .is_some()
                .then(|| TcpConns::new(inbound_tx.clone(), profile.t1() * 64)),
            tls: tls_config.map(|t| TcpConns::tls(inbound_tx, profile.t1() * 64, t)),
            events,
            metrics,
            call_drops: DropLog::new(now),
            decisions: Arc::new(Decisions::default()),
            live: Arc::new(Live::default()),
            rtp_ip: profile.sip.listen.ip(),
            rtp_advertised: profile.advertised_ip(),
            rtp_range: (lo, hi),
            rtp_cursor: AtomicU16::new(lo + fastrand::u16(..=(hi - lo)) / 2 * 2),
        };
        Ok(Server {
            shared: Arc::new(shared),
            tcp,
            tls,
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
            control,
            trust: profile.security.policy(),
            overload: profile.overload.clone(),
            webhook_task,
            conn_failed,
        })
    }

    /// Where a reload (SIGHUP, `POST /reload`) reads the profile from: the
    /// same way as at start, so that it is refused with the same errors.
    /// Without one, a reload is refused.
    pub fn reload_with(
        self,
        load: impl Fn() -> Result<Profile, crate::config::ConfigError> + Send + Sync + 'static,
    ) -> Self {
        self.handle().set_loader(Box::new(load));
        self
    }

    /// A handle to drain, stop or reload the server once it runs.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle(self.shared.life.clone())
    }

    /// The SIP address actually bound.
    pub fn sip_addr(&self) -> std::io::Result<SocketAddr> {
        self.shared.sip.local_addr()
    }

    /// The SIP over TCP address actually bound, if TCP is on.
    pub fn sip_tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The SIP over TLS address actually bound, if TLS is on.
    pub fn sip_tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The HTTP address actually bound.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serve until a [`ServerHandle`] drains or stops it.
    pub async fn run(self) {
        if let Some(listener) = self.http {
            tokio::spawn(crate::http::serve(
                listener,
                crate::http::Http {
                    metrics: self.shared.metrics.clone(),
                    life: self.shared.life.clone(),
                    decisions: self.shared.decisions.clone(),
                    live: self.shared.live.clone(),
                },
            ));
        }
        if let Some(listener) = self.tcp {
            tokio::spawn(accept_tcp(listener, self.shared.clone(), Transport::Tcp));
        }
        if let Some(listener) = self.tls {
            tokio::spawn(accept_tcp(listener, self.shared.clone(), Transport::Tls));
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
        let endpoint = Endpoint::new(
            self.shared.settings.user_agent.clone(),
            self.shared.settings.min_se,
            regs,
            self.shared.metrics.clone(),
        )
        .with_trust(self.trust)
        .with_overload(crate::overload::Overload::new(self.overload));
        tokio::spawn(probe_lag(Arc::downgrade(&self.shared.metrics)));
        crate::trim::spawn(&self.shared.life, &self.shared.decisions);
        let line_sync = line_sync(&self.shared);
        let shared = self.shared.clone();
        sip_loop(
            self.shared,
            endpoint,
            (self.inbound, self.conn_failed),
            self.control,
        )
        .await;
        // Undelivered alerts go to the spool rather than away with the process.
        if let (Some(hooks), Some(task)) = (&shared.webhooks, self.webhook_task) {
            hooks.stop();
            if tokio::time::timeout(std::time::Duration::from_secs(5), task)
                .await
                .is_err()
            {
                tracing::warn!("webhook delivery did not stop within 5 s");
            }
        }
        // What the line taught since the last write survives the restart.
        for line in &shared.settings.lines {
            if let Some(json) = line.unsaved() {
                line.write(&json);
            }
        }
        if let Some(sync) = line_sync {
            sync.flush().await;
        }
    }
}

/// With the PostgreSQL history, the line statistics are shared through it:
/// the exchange runs in a task of its own; the handle writes the rest at
/// shutdown.
fn line_sync(shared: &Shared) -> Option<Arc<crate::adapt::shared::LineSync>> {
    let Some((crate::history::HistoryStore::Postgres(store), _)) = &shared.history else {
        return None;
    };
    let sync = crate::adapt::shared::LineSync::new(
        store.clone(),
        &shared.settings.lines,
        shared.settings.sip_addr,
        shared.metrics.clone(),
    );
    let sync = Arc::new(sync);
    tokio::spawn(sync.clone().run());
    Some(sync)
}

/// Bind the UDP socket and, when the profile lists "tcp", a TCP listener on
/// the same address and port. With port 0 the UDP port is chosen by the
/// system; if TCP cannot have the same one, both are bound again.
async fn bind_sip(profile: &Profile) -> std::io::Result<(UdpSocket, Option<TcpListener>)> {
    let want_tcp = profile.sip.transports.contains(&Transport::Tcp);
    let mut tries = 0;
    loop {
        let udp = UdpSocket::bind(profile.sip.listen).await?;
        udp_buffers(&udp, profile.sip.udp_buffer_kib);
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

/// Size the SIP socket's kernel buffers (`[sip] udp_buffer_kib`): a burst
/// waits there instead of being dropped. Linux caps the request at
/// `net.core.rmem_max` / `wmem_max` and reports twice what it granted.
fn udp_buffers(udp: &UdpSocket, kib: u32) {
    if kib == 0 {
        return;
    }
    let want = kib as usize * 1024;
    let sock = socket2::SockRef::from(udp);
    let set = [
        (
            "receive",
            "net.core.rmem_max",
            sock.set_recv_buffer_size(want)
                .and_then(|()| sock.recv_buffer_size()),
        ),
        (
            "send",
            "net.core.wmem_max",
            sock.set_send_buffer_size(want)
                .and_then(|()| sock.send_buffer_size()),
        ),
    ];
    for (way, sysctl, got) in set {
        match got {
            Ok(got) if got >= want => {}
            Ok(got) => tracing::warn!(
                asked_kib = kib,
                got_kib = got / 1024,
                "SIP UDP {way} buffer smaller than [sip] udp_buffer_kib: raise {sysctl}"
            ),
            Err(e) => tracing::warn!(error = %e, "SIP UDP {way} buffer not sized"),
        }
    }
}

/// A located registrar: which registration, and its addresses in order.
type Resolved = (usize, Vec<SocketAddr>);

async fn sip_loop(
    shared: Arc<Shared>,
    mut endpoint: Endpoint<CallTx>,
    (mut inbound, mut conn_failed): (mpsc::Receiver<Inbound>, mpsc::UnboundedReceiver<SocketAddr>),
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let mut active = shared.life.active();
    // Set when draining: when the wait for the calls in progress ends.
    let mut drain_until: Option<Instant> = None;
    // Unbounded, yet bounded in practice: one message per call task and one
    // per registrar lookup (at most one in flight per account), none from the
    // network.
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<String>();
    let (resolved_tx, mut resolved_rx) = mpsc::unbounded_channel::<Resolved>();
    // A call's other Call-IDs (its B2BUA queue legs): one per queue tried.
    let (alias_tx, mut alias_rx) = mpsc::unbounded_channel::<(String, CallTx)>();
    let ended = Ended {
        ended: ended_tx,
        alias: alias_tx,
    };
    let mut buf = vec![0u8; 65_535];
    flush_registrations(&shared, &mut endpoint, &resolved_tx);
    loop {
        let wake = endpoint
            .registrations()
            .poll_timeout()
            .map(Instant::from_std);
        tokio::select! {
            r = shared.sip.recv_from(&mut buf) => match r {
                Ok((n, src)) => {
                    shared.metrics.sip_message(Direction::Received, &buf[..n]);
                    add_aliases(&mut endpoint, &mut alias_rx);
                    set_load(&shared, &mut endpoint);
                    let event = endpoint.handle_datagram(&buf[..n], src, Instant::now().into_std());
                    execute(&shared, &mut endpoint, &ended, event);
                }
                Err(e) => tracing::warn!(error = %e, "SIP socket receive error"),
            },
            Some((msg, peer)) = inbound.recv() => {
                shared.metrics.sip_parsed(&msg);
                add_aliases(&mut endpoint, &mut alias_rx);
                set_load(&shared, &mut endpoint);
                let event = endpoint.handle(msg, peer, Instant::now().into_std());
                execute(&shared, &mut endpoint, &ended, event);
            }
            Some(id) = ended_rx.recv() => endpoint.remove_call(&id),
            Some((id, tx)) = alias_rx.recv() => endpoint.insert_call(id, tx),
            Some((i, addr)) = resolved_rx.recv() => endpoint.registrations().resolved(i, addr),
            Some(addr) = conn_failed.recv() => endpoint.registrations().transport_failed(addr, Instant::now().into_std()),
            _ = tokio::time::sleep_until(wake.unwrap_or_else(far_future)), if wake.is_some() => {
                endpoint.registrations().handle_timeout(Instant::now().into_std());
            }
            Some(c) = control.recv() => match c {
                Control::Stop => {
                    tracing::warn!(calls = *active.borrow(), "second signal: exiting now, calls in progress abandoned");
                    return;
                }
                Control::Drain => {
                    let secs = shared.drain_timeout_s;
                    endpoint.drain(secs);
                    drain_until = Some(Instant::now() + std::time::Duration::from_secs(secs.into()));
                    tracing::info!(calls = *active.borrow(), timeout_s = secs, "draining: new calls get 503, calls in progress go on (a second signal exits at once)");
                }
            },
            Ok(()) = active.changed(), if drain_until.is_some() => {}
            _ = tokio::time::sleep_until(drain_until.unwrap_or_else(far_future)), if drain_until.is_some() => {
                tracing::warn!(calls = *active.borrow(), "drain timeout: calls in progress abandoned");
                break;
            }
        }
        flush_registrations(&shared, &mut endpoint, &resolved_tx);
        // Calls that ended change /readyz as well as messages do.
        set_load(&shared, &mut endpoint);
        if drain_until.is_some() && *active.borrow_and_update() == 0 {
            tracing::info!("drained: every call in progress has ended");
            break;
        }
    }
    if endpoint.registrations().is_empty() {
        return;
    }
    // Remove the bindings, so the registrar stops sending calls to an address
    // nobody answers; a registrar that does not answer in time is not waited for.
    endpoint
        .registrations()
        .unregister(Instant::now().into_std());
    flush_registrations(&shared, &mut endpoint, &resolved_tx);
    let give_up = Instant::now() + UNREGISTER_WAIT;
    while !endpoint.registrations().all_unregistered() {
        let wake = endpoint
            .registrations()
            .poll_timeout()
            .map_or(give_up, |t| Instant::from_std(t).min(give_up));
        tokio::select! {
            r = shared.sip.recv_from(&mut buf) => {
                if let Ok((n, _)) = r {
                    if let Ok(Message::Response(resp)) = parse_datagram(&buf[..n]) {
                        endpoint.registrations().handle_response(&resp, Instant::now().into_std());
                    }
                }
            }
            // Over TCP/TLS the registrar's answer comes on its connection.
            Some((msg, _)) = inbound.recv() => {
                if let Message::Response(resp) = msg {
                    endpoint.registrations().handle_response(&resp, Instant::now().into_std());
                }
            }
            Some((i, addr)) = resolved_rx.recv() => endpoint.registrations().resolved(i, addr),
            Some(addr) = conn_failed.recv() => endpoint.registrations().transport_failed(addr, Instant::now().into_std()),
            _ = tokio::time::sleep_until(wake) => {
                if Instant::now() >= give_up {
                    tracing::warn!("registrar did not confirm the un-REGISTER in time");
                    break;
                }
                endpoint.registrations().handle_timeout(Instant::now().into_std());
            }
        }
        flush_registrations(&shared, &mut endpoint, &resolved_tx);
    }
}

/// Route the Call-IDs calls announced before reading the next message: a
/// call announces its queue leg's before sending the INVITE, so the first
/// response to it already finds the call (a plain select could read the
/// datagram first).
fn add_aliases(
    endpoint: &mut Endpoint<CallTx>,
    rx: &mut mpsc::UnboundedReceiver<(String, CallTx)>,
) {
    while let Ok((id, tx)) = rx.try_recv() {
        endpoint.insert_call(id, tx);
    }
}

/// Send what the registrations have to send; resolve registrar names.
fn flush_registrations(
    shared: &Arc<Shared>,
    endpoint: &mut Endpoint<CallTx>,
    resolved: &mpsc::UnboundedSender<Resolved>,
) {
    for out in endpoint.registrations().drain_output() {
        match out {
            RegOutput::Send {
                transport: Transport::Tls,
                dest,
                data,
                server_name: Some(name),
            } => {
                shared.metrics.sip_message(Direction::Sent, &data);
                tcp::send(shared, Transport::Tls, dest, None, data, Some(&name));
            }
            RegOutput::Send {
                transport,
                dest,
                data,
                ..
            } => send_on(shared, transport, dest, None, data),
            RegOutput::Resolve { slot, target } => {
                let tx = resolved.clone();
                let locator = shared.locator.clone();
                tokio::spawn(async move {
                    let addrs = match &locator {
                        Some(l) => l.locate(&target).await,
                        None => Vec::new(),
                    };
                    if addrs.is_empty() {
                        tracing::warn!(registrar = %target, "cannot locate the registrar (RFC 3263: NAPTR, SRV, A/AAAA)");
                    }
                    let _ = tx.send((slot, addrs));
                });
            }
        }
    }
    shared
        .life
        .set_registered(endpoint.registrations().all_registered());
    shared
        .metrics
        .registrations(endpoint.registrations().each());
}

/// How often the scheduling lag is sampled: cheap (one timer wake-up),
/// and quick enough to refuse calls within a fraction of a second of a
/// backlog building up.
const LAG_PROBE: std::time::Duration = std::time::Duration::from_millis(50);

/// RFC 6357 §3's headroom measure, as the runtime sees it: how late a
/// periodic timer fires. Every backlog (RTP, SIP, DSP) delays it. Ends with
/// the server (its metrics dropped).
async fn probe_lag(metrics: std::sync::Weak<Metrics>) {
    let mut due = Instant::now() + LAG_PROBE;
    loop {
        tokio::time::sleep_until(due).await;
        let now = Instant::now();
        let Some(m) = metrics.upgrade() else { return };
        let lag = now.saturating_duration_since(due);
        m.event_loop_lag_us.store(
            u64::try_from(lag.as_micros()).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        due = now + LAG_PROBE;
    }
}

/// Give the endpoint the load before it decides on a message, and tell
/// `/readyz`.
fn set_load(shared: &Shared, endpoint: &mut Endpoint<CallTx>) {
    let lag = std::time::Duration::from_micros(
        shared
            .metrics
            .event_loop_lag_us
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    // Sessions, not records: a call whose BYE waits for Timer F is over.
    let over = endpoint.set_load(shared.life.sessions(), lag);
    shared.life.set_overloaded(over.is_some());
}

/// Carry out what the endpoint decided.
fn execute(
    shared: &Arc<Shared>,
    endpoint: &mut Endpoint<CallTx>,
    ended: &Ended,
    mut event: Option<Event<CallTx>>,
) {
    while let Some(ev) = event.take() {
        match ev {
            Event::Respond(t) => transmit(shared, t),
            Event::NewCall {
                call_id,
                invite,
                peer,
            } => {
                let (tx, rx) = mpsc::channel(CALL_QUEUE);
                let me = tx.downgrade();
                endpoint.insert_call(call_id, tx);
                let active = shared.life.call_started();
                // Boxed: the call's future (its Call and receive buffers,
                // several KiB) was copied four times on its way into the
                // task; a pointer to it is copied instead.
                tokio::spawn(Box::pin(call_task(
                    shared.clone(),
                    invite,
                    peer,
                    (rx, me),
                    ended.clone(),
                    active,
                )));
            }
            Event::ToCall {
                handle,
                call_id,
                msg,
                peer,
            } => {
                let now = Instant::now().into_std();
                let counter = &shared.metrics.sip_call_queue_dropped;
                match offer(
                    &handle,
                    (Box::new(msg), peer),
                    &shared.call_drops,
                    counter,
                    now,
                ) {
                    Offer::Queued => {}
                    Offer::Dropped { warn: None } => {
                        tracing::trace!(%call_id, "call's SIP queue full: message dropped");
                    }
                    Offer::Dropped { warn: Some(n) } => {
                        tracing::warn!(%call_id, dropped = n, "call's SIP queue full: messages dropped");
                    }
                    // The call ended before its end was seen here: the
                    // message is handled as one for no call.
                    Offer::Closed((msg, _)) => {
                        endpoint.remove_call(&call_id);
                        event = endpoint.handle(*msg, peer, now);
                    }
                }
            }
        }
    }
}

/// How a call task tells the SIP task about its Call-IDs.
#[derive(Clone)]
struct Ended {
    /// A Call-ID no longer routed (the call ended).
    ended: mpsc::UnboundedSender<String>,
    /// Route another Call-ID to a call.
    alias: mpsc::UnboundedSender<(String, CallTx)>,
}

/// A stateless response, on the transport (and connection) the request came on.
fn reply(shared: &Arc<Shared>, req: &Request, peer: Peer, code: u16, reason: &str) {
    let t = endpoint::reply(req, peer, code, reason, &shared.settings.user_agent);
    transmit(shared, t);
}

fn transmit(shared: &Arc<Shared>, t: Transmit) {
    send_on(shared, t.transport, t.dest, t.connection, t.data);
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
    shared.metrics.sip_message(Direction::Sent, &data);
    match transport {
        Transport::Udp => send(&shared.sip, dest, &data),
        Transport::Tcp | Transport::Tls => {
            tcp::send(shared, transport, dest, connection, data, None);
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

/// The media relay's queue-side socket: an RTP port of the range like the
/// caller's. The RTCP port bound with it is let go: RTCP is not relayed
/// (src/call/thirdparty/media.rs says why).
async fn bind_relay(shared: &Shared) -> Option<UdpSocket> {
    let (rtp, _rtcp) = bind_rtp(shared).await?;
    // A fresh socket has no cached write readiness (see `bind_sip`).
    rtp.writable().await.ok()?;
    Some(rtp)
}

/// A relayed datagram on its way; a full socket buffer loses it, as the
/// network would.
fn forward(sock: Option<&UdpSocket>, dest: Option<SocketAddr>, datagram: &[u8]) {
    if let (Some(sock), Some(dest)) = (sock, dest) {
        let _ = sock.try_send_to(datagram, dest);
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

/// What woke a call task.
enum CallEvent {
    /// A SIP message routed to the call, or `None` when the endpoint let go.
    Sip(Option<CallInput>),
    /// The call's next deadline (`Call::poll_timeout`).
    Timer,
    /// Datagrams read into the task's [`Datagrams`]: on the caller's RTP
    /// socket or the relay's queue-side one.
    Rtp(RelaySide, std::io::Result<usize>),
    /// Datagrams read on the RTCP port.
    Rtcp(std::io::Result<usize>),
    /// Time for the live view's snapshot of the scores.
    Snapshot,
    /// The caller history lookup answered (or gave up).
    History(Result<HistoryAnswer, tokio::sync::oneshot::error::RecvError>),
}

async fn call_task(
    shared: Arc<Shared>,
    invite: Request,
    peer: Peer,
    (mut rx, me): (mpsc::Receiver<CallInput>, mpsc::WeakSender<CallInput>),
    ended: Ended,
    mut active: ActiveCall,
) {
    let mut aliases: Vec<String> = Vec::new();
    use crate::call::{Socket, Transmit};
    let src = peer.addr;
    let call_id = invite.call_id().unwrap_or("").to_string();
    // The connection the dialog came on stays open while the call lasts.
    let _hold = match (&shared.tcp, peer.transport) {
        (Some(tcp), Transport::Tcp) => tcp.hold(src),
        _ if peer.transport == Transport::Tls => shared.tls.as_ref().and_then(|t| t.hold(src)),
        _ => None,
    };
    let Some((rtp, rtcp)) = bind_rtp(&shared).await else {
        tracing::error!(%call_id, "no free RTP port in the profile's range");
        shared
            .metrics
            .sip_no_media_port
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        reply(
            &shared,
            &invite,
            peer,
            503,
            "Service Unavailable (no media port)",
        );
        shared.metrics.calls_ended.fetch_add(1, Ordering::Relaxed);
        let _ = ended.ended.send(call_id);
        return;
    };
    let local_rtp = match rtp.local_addr() {
        Ok(a) => SocketAddr::new(shared.rtp_advertised, a.port()),
        Err(_) => return,
    };
    // The policy snapshot this call keeps, whatever a reload does meanwhile.
    let mut call = match Call::new_on(
        shared.life.settings(),
        invite.clone(),
        src,
        peer.transport,
        local_rtp,
        Instant::now().into_std(),
    ) {
        Ok(c) => c,
        Err(e) => {
            reply(&shared, &invite, peer, 400, &format!("Bad Request ({e})"));
            // Counted as started by the endpoint: without this the
            // emonav_calls_active gauge kept every such INVITE forever.
            shared.metrics.calls_ended.fetch_add(1, Ordering::Relaxed);
            let _ = ended.ended.send(call_id);
            return;
        }
    };
    let started_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    shared.live.started(
        &call_id,
        invite.headers.get("From").unwrap_or(""),
        started_unix_ms,
    );
    let caller = shared.history.as_ref().and_then(|(_, cfg)| {
        crate::history::caller_key(invite.headers.get("From").unwrap_or(""), &cfg.hash_salt)
    });
    let mut history = start_lookup(&shared, caller.as_deref());
    drop(invite);
    tracing::info!(%call_id, %src, transport = %peer.transport, rtp = %local_rtp, "call started");
    // The live view's snapshot of this call's scores, a few times a second.
    let mut snapshot = tokio::time::interval(crate::live::SNAPSHOT_EVERY);
    snapshot.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rtp = Some(rtp);
    let mut rtcp = rtcp;
    // The media relay's queue-side socket (`[transfer] media`).
    let mut relay: Option<UdpSocket> = None;
    let mut datagrams = Datagrams::new();
    // One timer for the call's next deadline, moved only when it changes: a
    // fresh `sleep_until` per packet went through the timer wheel twice.
    let sleep = tokio::time::sleep_until(far_future());
    tokio::pin!(sleep);
    let mut armed: Option<Instant> = None;
    // Set once the call's record is out: the live view has dropped the call,
    // and a call lingers for Timer J (32 s over UDP) after its BYE, when a
    // snapshot every 500 ms was 64 wake-ups of nothing.
    let mut recorded = false;
    loop {
        let mut relay_wanted = false;
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
                    if let Some(l) = &record.line_sample {
                        let line = shared.settings.lines[l.slot].clone();
                        if let Some(json) = line.observe(&l.raw, l.speech_ms) {
                            tokio::task::spawn_blocking(move || line.write(&json));
                        }
                    }
                    if let (Some(caller), Some((store, cfg))) = (&caller, &shared.history) {
                        record_call(store.clone(), cfg.retention_days, caller.clone(), &record);
                    }
                    shared.metrics.call_ended(&record);
                    shared.live.ended(&record);
                    if let Some(hooks) = &shared.webhooks {
                        hooks.notify("call_end", &record);
                    }
                    shared.events.write(&record);
                    active.done();
                    recorded = true;
                }
                Output::Alias(id) => {
                    if let Some(tx) = me.upgrade() {
                        let _ = ended.alias.send((id.clone(), tx));
                        aliases.push(id);
                    }
                }
                Output::Decision(note) => {
                    if let crate::decisions::DecisionNote::Decided(_, d) = &note {
                        shared.live.decided(d);
                        if let Some(hooks) = &shared.webhooks {
                            hooks.notify("decision", d);
                            if d.flagged {
                                hooks.notify("flag", d);
                            }
                        }
                    }
                    shared.decisions.note(note, Instant::now().into_std());
                }
                Output::RelayPort => relay_wanted = true,
            }
        }
        if relay_wanted {
            relay = bind_relay(&shared).await;
            let local = relay
                .as_ref()
                .and_then(|s| s.local_addr().ok())
                .map(|a| SocketAddr::new(shared.rtp_advertised, a.port()));
            call.relay_port(local, Instant::now().into_std());
            continue;
        }
        if call.is_finished() {
            break;
        }
        if call.is_over() {
            // Admission (`max_calls`) counts sessions: a BYE left unanswered
            // by a caller that gave up must not hold a slot for Timer F.
            active.session_over();
        }
        if !call.wants_media() {
            rtp = None;
            rtcp = None;
        }
        if !call.relaying() {
            relay = None;
        }
        let wake = call.poll_timeout().map(Instant::from_std);
        if wake != armed {
            if let Some(w) = wake {
                sleep.as_mut().reset(w);
            }
            armed = wake;
        }
        // SIP first, then timers, then media: a flood on the RTP port delays
        // neither a BYE nor the decision deadline. Polled by hand rather than
        // with `select!`, which built and dropped a read future per socket
        // at every packet.
        let event = std::future::poll_fn(|cx| {
            use std::future::Future;
            use std::task::Poll;
            if let Poll::Ready(m) = rx.poll_recv(cx) {
                return Poll::Ready(CallEvent::Sip(m));
            }
            if armed.is_some() && sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(CallEvent::Timer);
            }
            if let Some(h) = history.as_mut() {
                if let Poll::Ready(r) = std::pin::Pin::new(h).poll(cx) {
                    return Poll::Ready(CallEvent::History(r));
                }
            }
            if !recorded && snapshot.poll_tick(cx).is_ready() {
                return Poll::Ready(CallEvent::Snapshot);
            }
            for (sock, from) in [
                (rtp.as_ref(), RelaySide::Caller),
                (relay.as_ref(), RelaySide::Queue),
            ] {
                if let Some(sock) = sock {
                    if let Poll::Ready(r) = datagrams.poll_recv(sock, cx) {
                        return Poll::Ready(CallEvent::Rtp(from, r));
                    }
                }
            }
            if let Some(sock) = rtcp.as_ref() {
                if let Poll::Ready(r) = datagrams.poll_recv(sock, cx) {
                    return Poll::Ready(CallEvent::Rtcp(r));
                }
            }
            Poll::Pending
        })
        .await;
        match event {
            CallEvent::Sip(input) => match input.map(|(m, from)| (*m, from)) {
                Some((Message::Request(r), from)) => {
                    call.handle_request(&r, from, Instant::now().into_std())
                }
                Some((Message::Response(r), _)) => {
                    call.handle_response(&r, Instant::now().into_std())
                }
                None => break,
            },
            CallEvent::Timer => {
                // Re-armed next time round even if the deadline stays.
                armed = None;
                call.handle_timeout(Instant::now().into_std());
            }
            CallEvent::Rtp(side, r) => {
                let now = Instant::now().into_std();
                for i in 0..r.unwrap_or(0) {
                    let (bytes, from) = datagrams.get(i);
                    match side {
                        RelaySide::Caller if call.relaying() => {
                            let dest = call.relay_rtp(RelaySide::Caller, bytes, from, now);
                            forward(relay.as_ref(), dest, bytes);
                        }
                        RelaySide::Caller => call.handle_rtp_from(bytes, Some(from), now),
                        RelaySide::Queue => {
                            let dest = call.relay_rtp(RelaySide::Queue, bytes, from, now);
                            forward(rtp.as_ref(), dest, bytes);
                        }
                    }
                }
            }
            CallEvent::Rtcp(r) => {
                let now = Instant::now().into_std();
                for i in 0..r.unwrap_or(0) {
                    let (bytes, from) = datagrams.get(i);
                    call.handle_rtcp(bytes, Some(from), now);
                }
            }
            CallEvent::Snapshot => shared.live.score(&call_id, &call.estimate()),
            CallEvent::History(r) => {
                history = None;
                let miss = match r {
                    Ok(Ok(Ok(facts))) => (!call.set_history(facts)).then_some(2),
                    Ok(Ok(Err(e))) => {
                        tracing::warn!(%call_id, error = %e, "caller history lookup failed: routed without it");
                        Some(1)
                    }
                    Ok(Err(_)) => Some(0),
                    Err(_) => Some(1),
                };
                if let Some(i) = miss {
                    tracing::debug!(%call_id, reason = ["timeout", "error", "late"][i], "call routed without its caller history");
                    shared.metrics.history_misses[i].fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    for id in aliases.into_iter().chain([call_id]) {
        let _ = ended.ended.send(id);
    }
}

/// The caller's history, looked up in its own task, bounded by the
/// decision deadline: the deadline runs from the answer or the first audio,
/// both after now, so an answer that comes at all comes before it. `None`
/// when the store is off, the caller anonymous, or no rule asks.
type Lookup = tokio::sync::oneshot::Receiver<HistoryAnswer>;

/// What the history lookup task sends back: the facts, the store's error,
/// or the deadline's.
type HistoryAnswer = Result<
    Result<crate::history::CallerFacts, crate::history::HistoryError>,
    tokio::time::error::Elapsed,
>;

fn start_lookup(shared: &Arc<Shared>, caller: Option<&str>) -> Option<Lookup> {
    let (store, _) = shared.history.as_ref()?;
    let caller = caller?.to_string();
    let settings = shared.life.settings();
    let policy = &settings.policy;
    if !policy.uses_history() {
        return None;
    }
    let budget = std::time::Duration::from_millis(policy.decision_deadline_ms);
    let store = store.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let r = tokio::time::timeout(budget, store.lookup(&caller, crate::history::now_ms())).await;
        let _ = tx.send(r);
    });
    Some(rx)
}

/// Keep a finished call in the history, off the call's task.
fn record_call(
    store: crate::history::HistoryStore,
    retention_days: u32,
    caller: String,
    record: &crate::events::CallRecord,
) {
    let entry = crate::history::CallEntry {
        caller,
        at_ms: record.started_unix_ms as i64,
        arousal: record.arousal,
        anger: record.anger,
        queue: record.queue.clone(),
        flagged: record.flagged,
    };
    tokio::spawn(async move {
        if let Err(e) = store.record(entry, retention_days).await {
            tracing::warn!(error = %e, "caller history: call not recorded");
        }
    });
}

fn far_future() -> Instant {
    Instant::now() + std::time::Duration::from_secs(86_400)
}
