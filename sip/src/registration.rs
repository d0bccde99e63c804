//! Registration client (RFC 3261 §10.2), sans-IO.
//!
//! [`Registration`] keeps one Contact bound to an address of record at a
//! registrar: it builds the REGISTER requests (§10.2: same Call-ID and From
//! tag for every refresh, CSeq up by one each time, a fresh Via branch per
//! transaction), answers Digest challenges (§22.2, §22.3, through
//! [`digest`]), follows `423 Interval Too Brief` (§10.2.8),
//! reads the expiry the registrar granted (§10.2.4), refreshes before it runs
//! out, backs off after failures and removes the binding on shutdown
//! (§10.2.2, `Expires: 0`).
//!
//! Each REGISTER runs in a [`ClientNonInvite`] (§17.1.2: timers E, F, K), so
//! retransmissions and the 32-second give-up come from the same code as our
//! REFER and BYE. A retransmission is the same [`Request`] handed out again
//! by [`poll_output`](Registration::poll_output).
//!
//! The owner resolves the registrar URI and sends what `poll_output` yields
//! there (RFC 3263 is not done here), passes every response whose Call-ID is
//! [`call_id`](Registration::call_id) to
//! [`handle_response`](Registration::handle_response), and calls
//! [`handle_timeout`](Registration::handle_timeout) at
//! [`poll_timeout`](Registration::poll_timeout).
//!
//! Choices the RFC leaves open:
//! - Refresh: at half the granted interval for short ones, at expiry minus
//!   64·T1 (32 s) for intervals longer than 128·T1. 64·T1 is Timer F, so a
//!   refresh that needs every retransmission still ends before the binding
//!   does, and long registrations are not refreshed twice as often as needed.
//! - A granted interval longer than the one requested is treated as the
//!   requested one: refreshing early is always safe.
//! - The Via sent-by is the Contact's host and port, with `rport` (RFC 3581)
//!   so that responses find us behind a NAT.
//! - Only one challenge per header kind is answered (one realm for the
//!   registrar, one for a proxy).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::digest::{self, AuthKind, Authenticator, DigestError};
use super::message::{CSeq, Headers, Method, NameAddr, Request, Response, Scheme, Uri, Via};
use super::transaction::{Action, ClientNonInvite, Timers};
use crate::header;

/// The account to register. Its `Debug` output hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Account {
    /// Request-URI of the REGISTER (§10.2: the registrar's domain, e.g. `sip:pbx.example.com`).
    pub registrar: Uri,
    /// Address of record, sent in To and From.
    pub aor: Uri,
    /// Digest user name.
    pub username: String,
    /// Digest password.
    pub password: String,
    /// Where we take calls: the Contact to bind.
    pub contact: Uri,
    /// Expiry to ask for, in seconds (§10.2.1.1).
    pub expires: u32,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("registrar", &self.registrar.to_string())
            .field("aor", &self.aor.to_string())
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .field("contact", &self.contact.to_string())
            .field("expires", &self.expires)
            .finish()
    }
}

/// Timing knobs; [`Default`] gives RFC 3261 timers and a 30 s back-off
/// doubling up to 30 min.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Transaction timers (T1 also sets the refresh margin).
    pub timers: Timers,
    /// Wait after the first failure.
    pub retry_initial: Duration,
    /// Longest wait between attempts; the doubling stops here.
    pub retry_max: Duration,
    /// How many REGISTERs may follow one another at once (after a challenge
    /// or a 423) before the attempt counts as failed: a registrar that
    /// challenges every answer with a new nonce must not make us loop.
    pub max_immediate_resends: u32,
    /// `User-Agent` header, if any.
    pub user_agent: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            timers: Timers::default(),
            retry_initial: Duration::from_secs(30),
            retry_max: Duration::from_secs(30 * 60),
            max_immediate_resends: 5,
            user_agent: None,
        }
    }
}

/// Why the last registration attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// A final response we cannot act on (403, 404, 503, a 423 without a usable Min-Expires, …).
    #[error("registrar answered {code} {reason}")]
    Rejected {
        /// Status code.
        code: u16,
        /// Reason phrase.
        reason: String,
    },
    /// Challenged again for the nonce we had just answered, without
    /// `stale=true`: the user name or password is wrong.
    #[error("credentials refused")]
    BadCredentials,
    /// The challenge cannot be answered (unknown algorithm, not Digest, …).
    #[error("cannot answer the challenge: {0}")]
    Challenge(#[from] DigestError),
    /// More immediate re-sends than [`Settings::max_immediate_resends`].
    #[error("too many challenges or 423s in a row")]
    TooManyResends,
    /// No final response before Timer F.
    #[error("no response from the registrar")]
    TimedOut,
    /// The connection (TCP/TLS) to the registrar could not be opened or
    /// failed (RFC 3261 §8.1.3.1: as a 503, the transaction is over).
    #[error("cannot reach the registrar (connection failed)")]
    Transport,
    /// A 2xx that grants our Contact an expiry of 0.
    #[error("registrar accepted but granted no time")]
    NoBinding,
}

/// Where the registration stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// A REGISTER is out and no binding is known to exist.
    Registering,
    /// Bound until `expires_at`. A refresh may be in flight: the old binding
    /// holds until it answers.
    Registered {
        /// When the registrar drops the binding unless refreshed.
        expires_at: Instant,
    },
    /// The last attempt failed; the next one goes out at `retry_at`.
    Failed {
        /// When the next REGISTER is sent.
        retry_at: Instant,
        /// Why the last one failed.
        reason: Failure,
    },
    /// The un-REGISTER (`Expires: 0`) is out.
    Unregistering,
    /// Done: the binding was removed, or the un-REGISTER failed (a shutdown
    /// does not wait for a registrar that refuses or does not answer).
    Unregistered,
}

/// The REGISTER currently in its transaction.
#[derive(Debug)]
struct Pending {
    tx: ClientNonInvite,
    request: Request,
    branch: String,
    cseq: u32,
    /// Nonces our credentials in this request answered, per header kind.
    answered: Vec<(AuthKind, String)>,
    expires: u32,
}

/// A registration client for one account; see the module documentation.
#[derive(Debug)]
pub struct Registration {
    account: Account,
    settings: Settings,
    call_id: String,
    from_tag: String,
    cseq: u32,
    /// What we ask for; raised by a 423.
    expires: u32,
    www: Option<Authenticator>,
    proxy: Option<Authenticator>,
    pending: Option<Pending>,
    outbox: VecDeque<Request>,
    state: State,
    /// When a REGISTER goes out by itself (refresh or retry).
    next_attempt: Option<Instant>,
    /// Consecutive failed attempts, for the back-off.
    failures: u32,
    /// REGISTERs sent at once in the current attempt.
    resends: u32,
    unregistering: bool,
}

impl Registration {
    /// Start registering `account` with [`Settings::default`]: the first
    /// REGISTER is ready in [`poll_output`](Self::poll_output).
    pub fn new(account: Account, now: Instant) -> Self {
        Self::with_settings(account, Settings::default(), now)
    }

    /// Start registering with explicit settings.
    pub fn with_settings(account: Account, settings: Settings, now: Instant) -> Self {
        let call_id = format!(
            "{:016x}{:08x}@{}",
            fastrand::u64(..),
            fastrand::u32(..),
            account.contact.host
        );
        let mut reg = Self {
            expires: account.expires,
            account,
            settings,
            call_id,
            from_tag: format!("{:012x}", fastrand::u64(..) & 0xffff_ffff_ffff),
            cseq: 0,
            www: None,
            proxy: None,
            pending: None,
            outbox: VecDeque::new(),
            state: State::Registering,
            next_attempt: None,
            failures: 0,
            resends: 0,
            unregistering: false,
        };
        reg.send_register(now);
        reg
    }

    /// Where the registration stands.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The Call-ID of every REGISTER of this registration (to route responses here).
    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    /// The account being registered.
    pub fn account(&self) -> &Account {
        &self.account
    }

    /// The next request to send to the registrar (new or retransmitted).
    pub fn poll_output(&mut self) -> Option<Request> {
        self.outbox.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let tx = self.pending.as_ref().and_then(|p| p.tx.poll_timeout());
        // While a refresh is in flight, wake at expiry to stop claiming a binding.
        let lapse = match (&self.state, self.next_attempt) {
            (State::Registered { expires_at }, None) => Some(*expires_at),
            _ => None,
        };
        [tx, self.next_attempt, lapse].into_iter().flatten().min()
    }

    /// Drive the timers: retransmissions, Timer F, refresh and retry.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(p) = &mut self.pending {
            if p.tx.poll_timeout().is_some_and(|t| t <= now) {
                match p.tx.on_timeout(now) {
                    Action::Retransmit => self.outbox.push_back(p.request.clone()),
                    Action::TimedOut => {
                        self.pending = None;
                        self.fail(Failure::TimedOut, None, now);
                    }
                    Action::None => {
                        if p.tx.is_terminated() {
                            self.pending = None;
                        }
                    }
                }
            }
        }
        if let State::Registered { expires_at } = self.state {
            if self.next_attempt.is_none() && now >= expires_at {
                self.state = State::Registering;
            }
        }
        if self.next_attempt.is_some_and(|t| t <= now) {
            self.next_attempt = None;
            self.resends = 0;
            if matches!(self.state, State::Failed { .. }) {
                self.state = State::Registering;
            }
            self.send_register(now);
        }
    }

    /// The transport reported that the REGISTER in flight cannot reach the
    /// registrar (a refused connection, a failed TLS handshake): the attempt
    /// fails now rather than at Timer F.
    pub fn transport_failed(&mut self, now: Instant) {
        if self.pending.take().is_some() {
            self.fail(Failure::Transport, None, now);
        }
    }

    /// Try again at once after a failed attempt, not after its back-off (the
    /// next server of the registrar's name, RFC 3263 §4.3): the failure
    /// does not count towards the back-off.
    pub fn retry_now(&mut self, now: Instant) {
        if matches!(self.state, State::Failed { .. }) {
            self.failures = self.failures.saturating_sub(1);
            self.next_attempt = Some(now);
        }
    }

    /// A response whose Call-ID is ours. Responses of other transactions
    /// (an older branch or CSeq) and retransmitted finals are ignored.
    pub fn handle_response(&mut self, resp: &Response, now: Instant) {
        let Some(p) = &mut self.pending else {
            return;
        };
        let ours = resp.call_id() == Some(self.call_id.as_str())
            && resp.top_via().as_ref().and_then(Via::branch) == Some(p.branch.as_str())
            && resp
                .cseq()
                .is_some_and(|c| c.seq == p.cseq && c.method == Method::Register);
        if !ours || !p.tx.on_response(resp.code, now) || resp.code < 200 {
            return;
        }
        let answered = std::mem::take(&mut p.answered);
        let asked = p.expires;
        match resp.code {
            200..=299 => self.on_success(resp, asked, now),
            401 | 407 => self.on_challenge(resp, &answered, now),
            423 => {
                let min = resp
                    .headers
                    .get(header::MIN_EXPIRES)
                    .and_then(|v| v.trim().parse::<u32>().ok());
                match min {
                    Some(m) if m > asked && !self.unregistering => {
                        self.expires = m;
                        self.resend(now);
                    }
                    _ => self.fail(rejected(resp), None, now),
                }
            }
            _ => {
                let retry_after = resp
                    .headers
                    .get(header::RETRY_AFTER)
                    .and_then(|v| {
                        let digits: String =
                            v.trim().chars().take_while(char::is_ascii_digit).collect();
                        digits.parse::<u64>().ok()
                    })
                    .map(Duration::from_secs);
                self.fail(rejected(resp), retry_after, now);
            }
        }
    }

    /// Remove our binding (shutdown): sends REGISTER with `Expires: 0`,
    /// answering challenges as usual, and ends in [`State::Unregistered`]
    /// whatever the registrar answers. Any refresh or retry is cancelled.
    pub fn unregister(&mut self, now: Instant) {
        if self.unregistering {
            return;
        }
        self.unregistering = true;
        self.state = State::Unregistering;
        self.next_attempt = None;
        self.resends = 0;
        self.send_register(now);
    }

    fn on_success(&mut self, resp: &Response, asked: u32, now: Instant) {
        if self.unregistering {
            self.finish_unregister();
            return;
        }
        let granted = self.granted_expiry(resp).unwrap_or(asked).min(asked);
        if granted == 0 {
            self.fail(Failure::NoBinding, None, now);
            return;
        }
        let granted = Duration::from_secs(granted.into());
        self.failures = 0;
        self.resends = 0;
        self.state = State::Registered {
            expires_at: later(now, granted),
        };
        self.next_attempt = Some(later(now, self.refresh_delay(granted)));
    }

    fn on_challenge(&mut self, resp: &Response, answered: &[(AuthKind, String)], now: Instant) {
        let (kind, challenge) = match digest::response_challenge(resp) {
            Ok(c) => c,
            Err(e) => return self.fail(e.into(), None, now),
        };
        let repeated = answered
            .iter()
            .any(|(k, n)| *k == kind && *n == challenge.nonce);
        let slot = match kind {
            AuthKind::Www => &mut self.www,
            AuthKind::Proxy => &mut self.proxy,
        };
        if repeated && !challenge.stale {
            // Forget the nonce so that the retry starts from a fresh challenge.
            *slot = None;
            return self.fail(Failure::BadCredentials, None, now);
        }
        // A new nonce (a re-REGISTER challenged afresh, or stale=true) is
        // simply answered.
        match slot {
            Some(auth) => auth.rechallenge(challenge),
            None => *slot = Some(Authenticator::new(kind, challenge)),
        }
        self.resend(now);
    }

    /// The expiry the registrar gave our Contact (§10.2.4): its `expires`
    /// parameter in the 2xx, else the Expires header.
    fn granted_expiry(&self, resp: &Response) -> Option<u32> {
        let from_contact = resp
            .headers
            .get_all(header::CONTACT)
            .into_iter()
            .filter_map(|c| NameAddr::parse(c).ok())
            .find(|c| same_contact(&c.uri, &self.account.contact))
            .and_then(|c| c.params.get("expires").flatten()?.trim().parse().ok());
        from_contact.or_else(|| resp.headers.get(header::EXPIRES)?.trim().parse().ok())
    }

    fn refresh_delay(&self, granted: Duration) -> Duration {
        let margin = self.settings.timers.t1 * 64;
        if granted > margin * 2 {
            granted - margin
        } else {
            granted / 2
        }
    }

    /// Send again at once (after a challenge or a 423), up to the cap.
    fn resend(&mut self, now: Instant) {
        self.resends += 1;
        if self.resends > self.settings.max_immediate_resends {
            self.fail(Failure::TooManyResends, None, now);
        } else {
            self.send_register(now);
        }
    }

    fn fail(&mut self, reason: Failure, at_least: Option<Duration>, now: Instant) {
        self.resends = 0;
        if self.unregistering {
            self.finish_unregister();
            return;
        }
        self.failures = self.failures.saturating_add(1);
        let s = &self.settings;
        let doubling = 1u32 << (self.failures - 1).min(31);
        let mut wait = s
            .retry_initial
            .checked_mul(doubling)
            .unwrap_or(s.retry_max)
            .min(s.retry_max);
        if let Some(d) = at_least {
            // Retry-After is honoured, but a huge one must not park us for good.
            wait = wait.max(d.min(s.retry_max));
        }
        let retry_at = later(now, wait);
        self.state = State::Failed { retry_at, reason };
        self.next_attempt = Some(retry_at);
    }

    fn finish_unregister(&mut self) {
        self.state = State::Unregistered;
        self.next_attempt = None;
    }

    fn send_register(&mut self, now: Instant) {
        self.cseq = self.cseq.wrapping_add(1) & 0x7fff_ffff;
        let expires = if self.unregistering { 0 } else { self.expires };
        let branch = format!("z9hG4bK{:016x}", fastrand::u64(..));
        let a = &self.account;

        let transport = via_transport(&a.contact);
        let reliable = transport != "UDP";
        let mut via = Via {
            transport,
            host: a.contact.host.clone(),
            port: a.contact.port,
            params: Default::default(),
        };
        via.params.set("branch", Some(&branch));
        via.params.set("rport", None);
        let mut from = NameAddr {
            display: None,
            uri: a.aor.clone(),
            params: Default::default(),
        };
        from.params.set("tag", Some(&self.from_tag));

        let mut headers = Headers::default();
        headers.push(header::VIA, via.to_string());
        headers.push(header::MAX_FORWARDS, "70");
        headers.push(header::FROM, from.to_string());
        headers.push(header::TO, format!("<{}>", a.aor));
        headers.push(header::CALL_ID, self.call_id.clone());
        headers.push(
            header::CSEQ,
            CSeq {
                seq: self.cseq,
                method: Method::Register,
            }
            .to_string(),
        );
        headers.push(header::CONTACT, format!("<{}>", a.contact));
        headers.push(header::EXPIRES, expires.to_string());
        let uri = a.registrar.to_string();
        let mut answered = Vec::new();
        for auth in [&mut self.www, &mut self.proxy].into_iter().flatten() {
            let value = auth.authorization(&a.username, &a.password, "REGISTER", &uri, b"");
            headers.push(auth.kind().credentials_header(), value);
            answered.push((auth.kind(), auth.challenge().nonce.clone()));
        }
        if let Some(ua) = &self.settings.user_agent {
            headers.push(header::USER_AGENT, ua.clone());
        }
        let request = Request {
            method: Method::Register,
            uri: a.registrar.clone(),
            headers,
            body: Vec::new(),
        };
        self.outbox.push_back(request.clone());
        self.pending = Some(Pending {
            tx: ClientNonInvite::over(now, self.settings.timers, reliable),
            request,
            branch,
            cseq: self.cseq,
            answered,
            expires,
        });
    }
}

fn rejected(resp: &Response) -> Failure {
    Failure::Rejected {
        code: resp.code,
        reason: resp.reason.clone(),
    }
}

/// `now + d`, saturating far in the future instead of panicking on overflow.
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(86_400)))
        .unwrap_or(now)
}

/// The Via transport for requests to a Contact: its `transport` parameter,
/// TLS for sips, else UDP.
fn via_transport(contact: &Uri) -> String {
    match contact.params.get("transport").flatten() {
        Some(t) => t.to_ascii_uppercase(),
        None if contact.scheme == Scheme::Sips => "TLS".into(),
        None => "UDP".into(),
    }
}

/// Is a Contact in a 2xx ours? Scheme, user, host and port, with the default
/// port filled in; parameters are ignored because registrars add and drop
/// them (a looser match than §19.1.4, on purpose).
fn same_contact(a: &Uri, b: &Uri) -> bool {
    let port = |u: &Uri| {
        u.port
            .unwrap_or(if u.scheme == Scheme::Sips { 5061 } else { 5060 })
    };
    a.scheme == b.scheme
        && a.user == b.user
        && a.host.eq_ignore_ascii_case(&b.host)
        && port(a) == port(b)
}

#[cfg(test)]
mod tests;
