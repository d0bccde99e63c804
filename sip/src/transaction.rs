//! SIP transactions over unreliable transport (RFC 3261 §17), sans-IO.
//!
//! Each struct is driven by the messages it sees and by `now`; it never sleeps.
//! The owner asks [`poll_timeout`](ClientNonInvite::poll_timeout) when to wake
//! it and calls `on_timeout(now)` then; the answer says whether to retransmit.
//!
//! - [`ClientNonInvite`]: §17.1.2, timers E, F and K (our REFER and BYE).
//! - [`ClientInvite`]: §17.1.1, timers A, B and D (our INVITEs of third-party
//!   call control, RFC 3725): the ACK of a non-2xx is the transaction's, the
//!   ACK of a 2xx the TU's (§13.2.2.4).
//! - [`ServerInvite`]: §17.2.1 timers G, H and I for a non-2xx final response,
//!   plus the UAS core's 2xx retransmission of §13.3.1.4 (same schedule, ends
//!   on the ACK, gives up after 64·T1) which RFC 3261 keeps above the
//!   transaction but which has exactly the same shape.
//! - [`ServerNonInvite`]: §17.2.2, Timer J (in-dialog BYE, NOTIFY, UPDATE,
//!   INFO… we answer): a retransmitted request gets the same response again
//!   without reaching the TU a second time.

use std::time::{Duration, Instant};

/// RFC 3261 timer base values (§17.1.1.1, Table 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// RTT estimate (500 ms by default).
    pub t1: Duration,
    /// Maximum retransmit interval for non-INVITE requests and INVITE responses (4 s).
    pub t2: Duration,
    /// Maximum time a message stays in the network (5 s).
    pub t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

/// A retransmission schedule: first after `T1`, doubling up to `T2`, until a deadline of 64·T1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Backoff {
    next: Instant,
    interval: Duration,
    cap: Duration,
    deadline: Instant,
}

impl Backoff {
    fn start(now: Instant, t: &Timers) -> Self {
        Self {
            next: now + t.t1,
            interval: t.t1,
            cap: t.t2,
            deadline: now + 64 * t.t1,
        }
    }

    fn advance(&mut self) {
        self.interval = (self.interval * 2).min(self.cap);
        self.next += self.interval;
    }
}

/// What the owner must do after a timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the stored message again.
    Retransmit,
    /// The transaction failed by timeout (F for a client, H for a server): report it.
    TimedOut,
    /// Nothing to send.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientState {
    Trying,
    Proceeding,
    Completed { until: Instant },
    Terminated,
}

/// Non-INVITE client transaction (§17.1.2.2).
#[derive(Debug, Clone)]
pub struct ClientNonInvite {
    state: ClientState,
    timers: Timers,
    retransmit: Backoff,
    reliable: bool,
}

impl ClientNonInvite {
    /// Start over UDP: the request has just been sent once.
    pub fn new(now: Instant, timers: Timers) -> Self {
        Self::over(now, timers, false)
    }

    /// Start over a reliable transport (TCP, TLS) or not. Over a reliable
    /// one Timer E never fires (the transport retransmits, §17.1.2.2) and
    /// Timer K is zero; Timer F still bounds the wait for a final response.
    pub fn over(now: Instant, timers: Timers, reliable: bool) -> Self {
        Self {
            state: ClientState::Trying,
            timers,
            retransmit: Backoff::start(now, &timers),
            reliable,
        }
    }

    /// A response matched this transaction. Returns true if it must be passed up
    /// to the TU (provisional, or the first final); retransmitted finals are absorbed.
    pub fn on_response(&mut self, code: u16, now: Instant) -> bool {
        match self.state {
            ClientState::Trying | ClientState::Proceeding if code < 200 => {
                self.state = ClientState::Proceeding;
                true
            }
            ClientState::Trying | ClientState::Proceeding => {
                let k = if self.reliable {
                    Duration::ZERO
                } else {
                    self.timers.t4
                };
                self.state = ClientState::Completed { until: now + k };
                true
            }
            ClientState::Completed { .. } | ClientState::Terminated => false,
        }
    }

    /// When to call [`on_timeout`](Self::on_timeout) next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            ClientState::Trying | ClientState::Proceeding if self.reliable => {
                Some(self.retransmit.deadline)
            }
            ClientState::Trying | ClientState::Proceeding => {
                Some(self.retransmit.next.min(self.retransmit.deadline))
            }
            ClientState::Completed { until } => Some(until),
            ClientState::Terminated => None,
        }
    }

    /// Timers E, F, K.
    pub fn on_timeout(&mut self, now: Instant) -> Action {
        match self.state {
            ClientState::Trying | ClientState::Proceeding if now >= self.retransmit.deadline => {
                self.state = ClientState::Terminated;
                Action::TimedOut
            }
            ClientState::Trying | ClientState::Proceeding
                if !self.reliable && now >= self.retransmit.next =>
            {
                if self.state == ClientState::Proceeding {
                    // §17.1.2.2: in Proceeding, retransmit every T2.
                    self.retransmit.interval = self.timers.t2;
                    self.retransmit.next += self.timers.t2;
                } else {
                    self.retransmit.advance();
                }
                Action::Retransmit
            }
            ClientState::Completed { until } if now >= until => {
                self.state = ClientState::Terminated;
                Action::None
            }
            _ => Action::None,
        }
    }

    /// No final response yet (Trying or Proceeding).
    pub fn awaiting_final(&self) -> bool {
        matches!(self.state, ClientState::Trying | ClientState::Proceeding)
    }

    /// True once a final response arrived and Timer K ran out, or Timer F fired.
    pub fn is_terminated(&self) -> bool {
        self.state == ClientState::Terminated
    }

    /// True once a final response arrived (or the transaction timed out).
    pub fn is_done(&self) -> bool {
        matches!(
            self.state,
            ClientState::Completed { .. } | ClientState::Terminated
        )
    }
}

/// What the owner of a [`ClientInvite`] does with a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteResponse {
    /// Pass it up (a provisional, or a 2xx: the TU ACKs it and absorbs its
    /// retransmissions itself, §13.2.2.4).
    PassUp,
    /// The first non-2xx final: send the ACK (§17.1.1.3) and pass it up.
    AckAndPassUp,
    /// A retransmitted non-2xx final: send the same ACK again, nothing else.
    ResendAck,
    /// Nothing to do (a late provisional).
    Absorb,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InviteClientState {
    Calling,
    Proceeding,
    Completed { until: Instant },
    Terminated,
}

/// INVITE client transaction (§17.1.1.2).
#[derive(Debug, Clone)]
pub struct ClientInvite {
    state: InviteClientState,
    timers: Timers,
    /// Timer A (retransmission) and B (64·T1 without any response).
    retransmit: Backoff,
    reliable: bool,
}

impl ClientInvite {
    /// Start: the INVITE has just been sent once, over a reliable transport
    /// or not (Timer A and a long Timer D are for unreliable ones only).
    pub fn new(now: Instant, timers: Timers, reliable: bool) -> Self {
        let mut retransmit = Backoff::start(now, &timers);
        // Timer A doubles without the T2 cap of non-INVITE requests.
        retransmit.cap = 64 * timers.t1;
        Self {
            state: InviteClientState::Calling,
            timers,
            retransmit,
            reliable,
        }
    }

    /// A response matched this transaction.
    pub fn on_response(&mut self, code: u16, now: Instant) -> InviteResponse {
        match self.state {
            InviteClientState::Calling | InviteClientState::Proceeding if code < 200 => {
                self.state = InviteClientState::Proceeding;
                InviteResponse::PassUp
            }
            InviteClientState::Calling | InviteClientState::Proceeding if code < 300 => {
                self.state = InviteClientState::Terminated;
                InviteResponse::PassUp
            }
            InviteClientState::Calling | InviteClientState::Proceeding => {
                // Timer D: at least 32 s over UDP, zero over a reliable transport.
                let d = if self.reliable {
                    Duration::ZERO
                } else {
                    Duration::from_secs(32).max(64 * self.timers.t1)
                };
                self.state = InviteClientState::Completed { until: now + d };
                InviteResponse::AckAndPassUp
            }
            InviteClientState::Completed { .. } if code >= 300 => InviteResponse::ResendAck,
            _ => InviteResponse::Absorb,
        }
    }

    /// When to call [`on_timeout`](Self::on_timeout) next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            InviteClientState::Calling if self.reliable => Some(self.retransmit.deadline),
            InviteClientState::Calling => Some(self.retransmit.next.min(self.retransmit.deadline)),
            InviteClientState::Completed { until } => Some(until),
            InviteClientState::Proceeding | InviteClientState::Terminated => None,
        }
    }

    /// Timers A, B, D.
    pub fn on_timeout(&mut self, now: Instant) -> Action {
        match self.state {
            InviteClientState::Calling if now >= self.retransmit.deadline => {
                self.state = InviteClientState::Terminated;
                Action::TimedOut
            }
            InviteClientState::Calling if !self.reliable && now >= self.retransmit.next => {
                self.retransmit.advance();
                Action::Retransmit
            }
            InviteClientState::Completed { until } if now >= until => {
                self.state = InviteClientState::Terminated;
                Action::None
            }
            _ => Action::None,
        }
    }

    /// No final response yet: a CANCEL still applies (§9.1).
    pub fn awaiting_final(&self) -> bool {
        matches!(
            self.state,
            InviteClientState::Calling | InviteClientState::Proceeding
        )
    }

    /// A provisional response came (§9.1: CANCEL only after one).
    pub fn is_proceeding(&self) -> bool {
        self.state == InviteClientState::Proceeding
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerState {
    Proceeding,
    /// A final response is out; retransmit it until the ACK.
    Completed(Backoff),
    /// ACK received for a non-2xx: absorb ACK retransmissions until Timer I.
    Confirmed {
        until: Instant,
    },
    Terminated,
}

/// INVITE server transaction (§17.2.1) with the 2xx retransmission of §13.3.1.4.
#[derive(Debug, Clone)]
pub struct ServerInvite {
    state: ServerState,
    timers: Timers,
    final_code: Option<u16>,
}

impl ServerInvite {
    /// Start: an INVITE arrived (the owner sends `100 Trying` at once, §17.2.1).
    pub fn new(timers: Timers) -> Self {
        Self {
            state: ServerState::Proceeding,
            timers,
            final_code: None,
        }
    }

    /// A final response was sent once: start retransmitting it until the ACK.
    pub fn on_final_sent(&mut self, code: u16, now: Instant) {
        if self.state == ServerState::Proceeding {
            self.final_code = Some(code);
            self.state = ServerState::Completed(Backoff::start(now, &self.timers));
        }
    }

    /// The final response code sent, if any.
    pub fn final_code(&self) -> Option<u16> {
        self.final_code
    }

    /// True while no final response has been sent (CANCEL still applies).
    pub fn is_proceeding(&self) -> bool {
        self.state == ServerState::Proceeding
    }

    /// The ACK for the final response arrived. Returns true the first time.
    pub fn on_ack(&mut self, now: Instant) -> bool {
        match self.state {
            ServerState::Completed(_) => {
                let is_2xx = self.final_code.is_some_and(|c| (200..300).contains(&c));
                self.state = if is_2xx {
                    ServerState::Terminated
                } else {
                    ServerState::Confirmed {
                        until: now + self.timers.t4,
                    }
                };
                true
            }
            _ => false,
        }
    }

    /// True until the ACK for the final response arrived.
    pub fn awaiting_ack(&self) -> bool {
        matches!(self.state, ServerState::Completed(_))
    }

    /// When to call [`on_timeout`](Self::on_timeout) next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            ServerState::Completed(b) => Some(b.next.min(b.deadline)),
            ServerState::Confirmed { until } => Some(until),
            ServerState::Proceeding | ServerState::Terminated => None,
        }
    }

    /// Timers G, H, I.
    pub fn on_timeout(&mut self, now: Instant) -> Action {
        match &mut self.state {
            ServerState::Completed(b) if now >= b.deadline => {
                self.state = ServerState::Terminated;
                Action::TimedOut
            }
            ServerState::Completed(b) if now >= b.next => {
                b.advance();
                Action::Retransmit
            }
            ServerState::Confirmed { until } if now >= *until => {
                self.state = ServerState::Terminated;
                Action::None
            }
            _ => Action::None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NonInviteServerState {
    Trying,
    Proceeding,
    Completed { until: Instant },
    Terminated,
}

/// Non-INVITE server transaction (§17.2.2), for UDP. The owner keeps the last
/// response sent and re-sends it whenever
/// [`on_retransmission`](ServerNonInvite::on_retransmission) says so.
#[derive(Debug, Clone)]
pub struct ServerNonInvite {
    state: NonInviteServerState,
    timers: Timers,
}

impl ServerNonInvite {
    /// Start: a request arrived and is passed to the TU once.
    pub fn new(timers: Timers) -> Self {
        Self {
            state: NonInviteServerState::Trying,
            timers,
        }
    }

    /// The TU sent a response: a provisional moves to Proceeding, a final to
    /// Completed, where Timer J (64·T1 over UDP) absorbs retransmissions.
    pub fn on_response_sent(&mut self, code: u16, now: Instant) {
        match self.state {
            NonInviteServerState::Trying | NonInviteServerState::Proceeding if code < 200 => {
                self.state = NonInviteServerState::Proceeding;
            }
            NonInviteServerState::Trying | NonInviteServerState::Proceeding => {
                self.state = NonInviteServerState::Completed {
                    until: now + 64 * self.timers.t1,
                };
            }
            _ => {}
        }
    }

    /// The request came again. True when the last response must be re-sent
    /// (Proceeding or Completed); in Trying there is nothing to send yet.
    /// Either way the TU must not see the request again.
    pub fn on_retransmission(&self) -> bool {
        matches!(
            self.state,
            NonInviteServerState::Proceeding | NonInviteServerState::Completed { .. }
        )
    }

    /// When to call [`on_timeout`](Self::on_timeout) next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            NonInviteServerState::Completed { until } => Some(until),
            _ => None,
        }
    }

    /// Timer J.
    pub fn on_timeout(&mut self, now: Instant) -> Action {
        if let NonInviteServerState::Completed { until } = self.state {
            if now >= until {
                self.state = NonInviteServerState::Terminated;
            }
        }
        Action::None
    }

    /// True once Timer J fired: the owner may forget the transaction.
    pub fn is_terminated(&self) -> bool {
        self.state == NonInviteServerState::Terminated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Drive a transaction to its next timeout and return (elapsed ms, action).
    fn fire_client(tx: &mut ClientNonInvite, t0: Instant) -> (u128, Action) {
        let at = tx.poll_timeout().expect("a timer is armed");
        ((at - t0).as_millis(), tx.on_timeout(at))
    }

    #[test]
    fn timer_e_doubles_to_t2_then_timer_f_gives_up_at_64_t1() {
        let t0 = Instant::now();
        let mut tx = ClientNonInvite::new(t0, Timers::default());
        let mut retransmits = vec![];
        loop {
            match fire_client(&mut tx, t0) {
                (at, Action::Retransmit) => retransmits.push(at),
                (at, Action::TimedOut) => {
                    assert_eq!(at, 32_000);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            retransmits,
            [500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
        );
        assert!(tx.is_terminated());
        assert_eq!(tx.poll_timeout(), None);
    }

    #[test]
    fn over_a_reliable_transport_timer_e_never_fires_and_timer_k_is_zero() {
        let t0 = Instant::now();
        let mut tx = ClientNonInvite::over(t0, Timers::default(), true);
        assert_eq!(fire_client(&mut tx, t0), (32_000, Action::TimedOut));
        let mut tx = ClientNonInvite::over(t0, Timers::default(), true);
        assert!(tx.on_response(200, t0 + ms(40)));
        assert_eq!(tx.poll_timeout(), Some(t0 + ms(40)));
        assert_eq!(tx.on_timeout(t0 + ms(40)), Action::None);
        assert!(tx.is_terminated());
    }

    #[test]
    fn provisional_switches_to_t2_and_final_absorbs_retransmissions_until_timer_k() {
        let t0 = Instant::now();
        let mut tx = ClientNonInvite::new(t0, Timers::default());
        assert!(tx.on_response(100, t0 + ms(100)));
        assert_eq!(fire_client(&mut tx, t0), (500, Action::Retransmit));
        assert_eq!(fire_client(&mut tx, t0), (4500, Action::Retransmit));
        assert!(tx.on_response(202, t0 + ms(5000)));
        assert!(tx.is_done());
        assert!(
            !tx.on_response(202, t0 + ms(5100)),
            "retransmitted final is absorbed"
        );
        assert_eq!(fire_client(&mut tx, t0), (10_000, Action::None));
        assert!(tx.is_terminated());
    }

    #[test]
    fn timer_g_retransmits_final_until_ack_then_timer_i() {
        let t0 = Instant::now();
        let mut tx = ServerInvite::new(Timers::default());
        assert!(tx.is_proceeding());
        tx.on_final_sent(487, t0);
        let at = tx.poll_timeout().unwrap();
        assert_eq!((at - t0, tx.on_timeout(at)), (ms(500), Action::Retransmit));
        let at = tx.poll_timeout().unwrap();
        assert_eq!((at - t0, tx.on_timeout(at)), (ms(1500), Action::Retransmit));
        assert!(tx.on_ack(t0 + ms(1600)));
        assert!(!tx.on_ack(t0 + ms(1700)), "ACK retransmission absorbed");
        let at = tx.poll_timeout().unwrap();
        assert_eq!((at - t0, tx.on_timeout(at)), (ms(6600), Action::None));
        assert_eq!(tx.poll_timeout(), None);
    }

    #[test]
    fn timer_h_reports_a_missing_ack_after_64_t1() {
        let t0 = Instant::now();
        let mut tx = ServerInvite::new(Timers::default());
        tx.on_final_sent(200, t0);
        let mut sent = 0;
        loop {
            let at = tx.poll_timeout().unwrap();
            match tx.on_timeout(at) {
                Action::Retransmit => sent += 1,
                Action::TimedOut => {
                    assert_eq!(at - t0, ms(32_000));
                    break;
                }
                Action::None => panic!("no idle wake-ups expected"),
            }
        }
        // 0.5, 1.5, 3.5, 7.5, then every 4 s up to 31.5.
        assert_eq!(sent, 10);
    }

    #[test]
    fn ack_for_2xx_terminates_at_once() {
        let t0 = Instant::now();
        let mut tx = ServerInvite::new(Timers::default());
        tx.on_final_sent(200, t0);
        assert!(tx.awaiting_ack());
        assert!(tx.on_ack(t0 + ms(20)));
        assert_eq!(tx.poll_timeout(), None);
    }

    #[test]
    fn server_non_invite_absorbs_retransmissions_until_timer_j() {
        let t0 = Instant::now();
        let mut tx = ServerNonInvite::new(Timers::default());
        assert!(!tx.on_retransmission(), "nothing sent yet in Trying");
        assert_eq!(tx.poll_timeout(), None);
        tx.on_response_sent(200, t0);
        assert!(tx.on_retransmission());
        let at = tx.poll_timeout().unwrap();
        assert_eq!(at - t0, ms(32_000), "Timer J = 64·T1 over UDP");
        assert_eq!(tx.on_timeout(t0 + ms(31_999)), Action::None);
        assert!(!tx.is_terminated());
        tx.on_timeout(at);
        assert!(tx.is_terminated());
        assert!(!tx.on_retransmission());
        assert_eq!(tx.poll_timeout(), None);
    }

    #[test]
    fn server_non_invite_provisional_then_final_and_timer_j_follows_t1() {
        let t0 = Instant::now();
        let timers = Timers {
            t1: ms(100),
            ..Timers::default()
        };
        let mut tx = ServerNonInvite::new(timers);
        tx.on_response_sent(100, t0);
        assert!(tx.on_retransmission(), "the 100 is re-sent");
        assert_eq!(tx.poll_timeout(), None, "no timer in Proceeding");
        tx.on_response_sent(200, t0 + ms(50));
        tx.on_response_sent(500, t0 + ms(60));
        assert_eq!(tx.poll_timeout(), Some(t0 + ms(50) + ms(6400)));
    }
    #[test]
    fn client_invite_timer_a_doubles_until_timer_b_and_a_provisional_stops_it() {
        let t0 = Instant::now();
        let mut tx = ClientInvite::new(t0, Timers::default(), false);
        let mut at = vec![];
        loop {
            let t = tx.poll_timeout().unwrap();
            match tx.on_timeout(t) {
                Action::Retransmit => at.push((t - t0).as_millis()),
                Action::TimedOut => {
                    assert_eq!(t - t0, ms(32_000));
                    break;
                }
                Action::None => panic!("no idle wake-up"),
            }
        }
        assert_eq!(at, [500, 1500, 3500, 7500, 15500, 31500]);
        let mut tx = ClientInvite::new(t0, Timers::default(), false);
        assert_eq!(tx.on_response(180, t0 + ms(10)), InviteResponse::PassUp);
        assert!(tx.is_proceeding() && tx.awaiting_final());
        assert_eq!(tx.poll_timeout(), None, "no Timer A or B once proceeding");
        assert_eq!(tx.on_response(200, t0 + ms(20)), InviteResponse::PassUp);
        assert!(!tx.awaiting_final());
        assert_eq!(tx.on_response(200, t0 + ms(30)), InviteResponse::Absorb);
    }

    #[test]
    fn client_invite_acks_a_failure_and_its_retransmissions_until_timer_d() {
        let t0 = Instant::now();
        let mut tx = ClientInvite::new(t0, Timers::default(), false);
        assert_eq!(tx.on_response(486, t0), InviteResponse::AckAndPassUp);
        assert_eq!(tx.on_response(486, t0 + ms(5)), InviteResponse::ResendAck);
        assert_eq!(tx.poll_timeout(), Some(t0 + ms(32_000)));
        let mut tcp = ClientInvite::new(t0, Timers::default(), true);
        assert_eq!(tcp.poll_timeout(), Some(t0 + ms(32_000)), "Timer B only");
        assert_eq!(tcp.on_response(503, t0), InviteResponse::AckAndPassUp);
        assert_eq!(tcp.poll_timeout(), Some(t0), "Timer D is zero on TCP");
    }
}
