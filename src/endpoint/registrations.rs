//! The `[[registration]]` accounts (RFC 3261 §10) the endpoint keeps bound,
//! sans-IO: each [`Registration`] produces REGISTERs, this set says where
//! they go, or that the registrar's name must first be resolved (DNS is the
//! edge's business). A registration goes over the transport its Contact
//! names (`;transport=tcp|tls`, from the registrar URI's): UDP from the SIP
//! socket, or a TCP/TLS connection the edge opens and keeps (RFC 5626 is not
//! used: the registrar reaches us on our listening port), so that the
//! registrar sees the address it will send INVITEs to.

use std::net::SocketAddr;
use std::time::Instant;

use crate::call::uri_host;
use crate::config::Profile;
use emonav_sip::message::{Response, Scheme, Uri};
use emonav_sip::registration::{Account, Failure, Registration, State};

use crate::locate::Locate;
use emonav_sip::transport::Transport;

/// What the registrations ask the edge to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RegOutput {
    /// Send a REGISTER.
    Send {
        /// Over UDP, TCP or TLS.
        transport: Transport,
        /// The registrar's address.
        dest: SocketAddr,
        /// Serialised request.
        data: Vec<u8>,
        /// The name a TLS server's certificate must carry (RFC 5922 §4):
        /// the located URI's host, when it is a name.
        server_name: Option<String>,
    },
    /// Locate `target` (RFC 3263) and hand the addresses to
    /// [`Registrations::resolved`]. The REGISTER that needed it is held and
    /// sent once the address is known (over TCP/TLS nothing retransmits it).
    Resolve {
        /// Which registration.
        slot: usize,
        /// The registrar's (or outbound proxy's) host, port and transport.
        target: Locate,
    },
}

/// One registration and where its registrar is.
struct RegSlot {
    reg: Registration,
    /// What to locate: the registrar URI's (or the outbound proxy's) host.
    target: Locate,
    /// Where it is, in the order to try (RFC 3263 §4.3), and which one is
    /// in use.
    dests: Vec<SocketAddr>,
    at: usize,
    /// The transport the Contact names.
    transport: Transport,
    resolving: bool,
    /// The REGISTER waiting for the registrar's address (the latest only: a
    /// UDP retransmission replaces it).
    held: Option<Vec<u8>>,
    /// Last state logged, to log changes only.
    logged: Option<State>,
}

/// The registrations the SIP task drives.
#[derive(Default)]
pub(crate) struct Registrations {
    slots: Vec<RegSlot>,
}

impl Registrations {
    /// Registrations and what to locate for each (an IP literal needs no
    /// lookup).
    pub(crate) fn new(regs: Vec<(Registration, Locate)>) -> Self {
        Self {
            slots: regs
                .into_iter()
                .map(|(reg, target)| RegSlot {
                    dests: target.literal().into_iter().collect(),
                    at: 0,
                    transport: contact_transport(&reg.account().contact),
                    reg,
                    target,
                    resolving: false,
                    held: None,
                    logged: None,
                })
                .collect(),
        }
    }

    /// Whether `ip` is where a registrar's REGISTERs go (`[security]
    /// trust_registrars`).
    pub(crate) fn is_registrar(&self, ip: std::net::IpAddr) -> bool {
        self.slots
            .iter()
            .flat_map(|s| &s.dests)
            .any(|d| d.ip() == ip)
    }

    /// No accounts configured.
    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    #[cfg(test)]
    /// The state of registration `slot`.
    pub(crate) fn state(&self, slot: usize) -> Option<&State> {
        self.slots.get(slot).map(|s| s.reg.state())
    }

    /// Hand a response to its registration; false if it is none of ours.
    pub(crate) fn handle_response(&mut self, resp: &Response, now: Instant) -> bool {
        let Some(call_id) = resp.call_id() else {
            return false;
        };
        match self.slots.iter_mut().find(|s| s.reg.call_id() == call_id) {
            Some(slot) => {
                let before = failed(&slot.reg);
                slot.reg.handle_response(resp, now);
                slot.fail_over(before, now);
                true
            }
            None => false,
        }
    }

    /// A connection to `addr` could not be opened (or broke): registrations
    /// whose REGISTER went there over TCP/TLS fail now and fail over.
    pub(crate) fn transport_failed(&mut self, addr: SocketAddr, now: Instant) {
        for s in &mut self.slots {
            if s.transport != Transport::Udp && s.dests.get(s.at) == Some(&addr) {
                let before = failed(&s.reg);
                s.reg.transport_failed(now);
                s.fail_over(before, now);
            }
        }
    }

    /// The earliest timer of any registration.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.slots.iter().filter_map(|s| s.reg.poll_timeout()).min()
    }

    /// Fire the timers that are due.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        for s in &mut self.slots {
            if s.reg.poll_timeout().is_some_and(|t| t <= now) {
                let before = failed(&s.reg);
                s.reg.handle_timeout(now);
                s.fail_over(before, now);
            }
        }
    }

    /// Remove every binding (shutdown).
    pub(crate) fn unregister(&mut self, now: Instant) {
        for s in &mut self.slots {
            s.reg.unregister(now);
        }
    }

    /// Every binding is removed (or was never made).
    pub(crate) fn all_unregistered(&self) -> bool {
        self.slots
            .iter()
            .all(|s| matches!(s.reg.state(), State::Unregistered))
    }

    /// Every account holds a binding (true without accounts): `/readyz`.
    pub(crate) fn all_registered(&self) -> bool {
        self.slots
            .iter()
            .all(|s| matches!(s.reg.state(), State::Registered { .. }))
    }

    /// Each account's address of record and whether it is registered.
    pub(crate) fn each(&self) -> impl Iterator<Item = (&emonav_sip::message::Uri, bool)> + '_ {
        self.slots.iter().map(|s| {
            (
                &s.reg.account().aor,
                matches!(s.reg.state(), State::Registered { .. }),
            )
        })
    }

    /// What the registrations have to send or resolve; logs state changes.
    pub(crate) fn drain_output(&mut self) -> Vec<RegOutput> {
        let mut out = Vec::new();
        for (i, s) in self.slots.iter_mut().enumerate() {
            let held = s.held.take();
            let fresh = std::iter::from_fn(|| s.reg.poll_output()).map(|r| r.to_bytes());
            let requests: Vec<Vec<u8>> = held.into_iter().chain(fresh).collect();
            for data in requests {
                match s.dests.get(s.at).copied() {
                    Some(dest) => out.push(RegOutput::Send {
                        transport: s.transport,
                        server_name: s.target.literal().is_none().then(|| s.target.host.clone()),
                        dest,
                        data,
                    }),
                    None => {
                        s.held = Some(data);
                        if !s.resolving {
                            s.resolving = true;
                            out.push(RegOutput::Resolve {
                                slot: i,
                                target: s.target.clone(),
                            });
                        }
                    }
                }
            }
            let state = s.reg.state();
            if s.logged.as_ref() != Some(state) {
                log_state(&s.reg, state);
                s.logged = Some(state.clone());
            }
        }
        out
    }

    /// The registrar of `slot` is at `addrs`, in the order to try (empty:
    /// not found; the next attempt locates it again).
    pub(crate) fn resolved(&mut self, slot: usize, addrs: Vec<SocketAddr>) {
        if let Some(s) = self.slots.get_mut(slot) {
            s.resolving = false;
            if addrs.is_empty() {
                // Not found: the attempt ends at Timer F and the next one
                // locates the name again.
                s.held = None;
            } else {
                tracing::info!(registrar = %s.target, targets = ?addrs, "registrar located");
            }
            s.dests = addrs;
            s.at = 0;
        }
    }
}

/// Whether the registration is in a failed attempt.
fn failed(reg: &Registration) -> bool {
    matches!(reg.state(), State::Failed { .. })
}

impl RegSlot {
    /// RFC 3263 §4.3: an attempt that just failed by timeout or 503 is
    /// retried at once on the next address; past the last, the back-off
    /// retry starts again from the first.
    fn fail_over(&mut self, was_failed: bool, now: Instant) {
        let State::Failed { reason, .. } = self.reg.state() else {
            return;
        };
        let server_down = matches!(
            reason,
            Failure::TimedOut | Failure::Transport | Failure::Rejected { code: 503, .. }
        );
        if was_failed || !server_down || self.dests.len() < 2 {
            return;
        }
        if self.at + 1 < self.dests.len() {
            let (from, to) = (self.dests[self.at], self.dests[self.at + 1]);
            self.at += 1;
            tracing::warn!(registrar = %self.target, %from, %to, %reason, "registrar failing over");
            self.reg.retry_now(now);
        } else {
            self.at = 0;
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

/// The `[[registration]]` accounts of a profile, with our Contact (the user
/// at the advertised address and the bound port) and the `host:port` to
/// send to.
pub(crate) fn accounts(
    profile: &Profile,
    sip_port: u16,
) -> std::io::Result<Vec<(Account, Locate)>> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    let mut out = Vec::new();
    for r in &profile.registrations {
        let registrar = r.registrar_uri().map_err(invalid)?;
        let user = r.contact_user.as_deref().unwrap_or(&profile.sip.user);
        let (port, param) = match registrar_transport(&registrar) {
            Transport::Udp => (sip_port, ""),
            Transport::Tcp if profile.sip.transports.contains(&Transport::Tcp) => {
                (sip_port, ";transport=tcp")
            }
            Transport::Tcp => {
                return Err(invalid(format!(
                    "registration to {registrar}: TCP needs \"tcp\" in sip.transports"
                )))
            }
            Transport::Tls => {
                let tls = profile.sip.tls_listen.ok_or_else(|| {
                    invalid(format!(
                        "registration to {registrar}: TLS needs sip.tls_listen"
                    ))
                })?;
                (tls.port(), ";transport=tls")
            }
        };
        let contact = Uri::parse(&format!(
            "sip:{user}@{}:{port}{param}",
            uri_host(profile.advertised_ip())
        ))
        .map_err(|e| invalid(format!("registration contact: {e}")))?;
        let transport = registrar_transport(&registrar);
        let target = match &profile.sip.outbound_proxy {
            Some(p) => Locate::of(
                &Uri::parse(p).map_err(|e| invalid(format!("sip.outbound_proxy: {e}")))?,
                transport,
            ),
            None => Locate::of(&registrar, transport),
        };
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

/// The transport a registrar URI asks for: its `transport` parameter, TLS
/// for `sips:` (RFC 3261 §19.1.2), else UDP.
fn registrar_transport(registrar: &Uri) -> Transport {
    match registrar.params.get("transport").flatten() {
        Some(t) if t.eq_ignore_ascii_case("tls") => Transport::Tls,
        Some(t) if t.eq_ignore_ascii_case("tcp") => Transport::Tcp,
        _ if registrar.scheme == Scheme::Sips => Transport::Tls,
        _ => Transport::Udp,
    }
}

/// The transport our Contact names (what [`accounts`] wrote into it).
fn contact_transport(contact: &Uri) -> Transport {
    registrar_transport(contact)
}
