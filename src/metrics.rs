//! `/metrics`: process-wide counters and histograms, encoded by
//! `prometheus-client` in the OpenMetrics text format (which Prometheus
//! scrapes natively; names by its conventions: `_total`, `_seconds`).
//!
//! The per-packet figures (RTP received, lost, late) are counted by each call
//! on its own and added here once, when its record comes out: nothing on the
//! packet path touches a shared counter. The plain counters are atomics the
//! SIP edge bumps; the labelled families and histograms are fed at call end,
//! per SIP message at the edge, and by the registration task.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{linear_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::events::{CallRecord, Outcome};

/// The exposition's content type (OpenMetrics 1.0).
pub(crate) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Label pairs; values come from the profile (queues, emotions) or from a
/// fixed set (outcomes, reasons, SIP methods and codes), never free text
/// from the network.
type Labels = Vec<(&'static str, String)>;

/// Seconds from answer to REFER, and from first audio to decision: the
/// decision deadline is a few seconds, a slow one tens.
const DELAY_BUCKETS: [f64; 12] = [
    0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 30.0,
];

/// Process-wide counters.
#[derive(Debug)]
pub(crate) struct Metrics {
    /// INVITEs that started a call.
    pub calls_started: AtomicU64,
    /// Calls that ended.
    pub calls_ended: AtomicU64,
    /// Calls transferred (first target or fallback).
    pub calls_transferred: AtomicU64,
    /// Calls whose transfer failed.
    pub calls_failed: AtomicU64,
    /// Calls flagged high-risk.
    pub calls_flagged: AtomicU64,
    /// SIP datagrams dropped as unparseable.
    pub sip_unparseable: AtomicU64,
    /// SIP requests answered with 400.
    pub sip_bad_request: AtomicU64,
    /// SIP requests from untrusted sources refused (403) or dropped.
    pub sip_untrusted: AtomicU64,
    /// Calls routed without their caller's history, by reason:
    /// `[timeout, error, late]` (src/history/).
    pub history_misses: [AtomicU64; 3],
    /// Webhook events dropped before the outbox (its channel full).
    pub webhook_dropped: AtomicU64,
    /// Webhook events the receiver took (src/webhook/).
    pub webhook_delivered: AtomicU64,
    /// Webhook events the receiver refused for good (4xx).
    pub webhook_refused: AtomicU64,
    /// Webhook events dropped because the outbox was full.
    pub webhook_outbox_dropped: AtomicU64,
    /// Webhook POSTs that failed and were retried.
    pub webhook_retries: AtomicU64,
    /// Webhook events waiting.
    pub webhook_pending: AtomicU64,
    /// Exchanges of the shared line statistics with PostgreSQL that
    /// failed: `[save, load]` (src/adapt/shared.rs).
    pub line_sync_failures: [AtomicU64; 2],
    /// SIP messages for a call dropped because its queue was full (a flood
    /// on one Call-ID, or a call task that stopped reading).
    pub sip_call_queue_dropped: AtomicU64,
    /// SIP messages not written because a TCP connection's send queue was
    /// full (a peer that does not read).
    pub sip_tcp_send_dropped: AtomicU64,
    /// INVITEs and OPTIONS answered 503 while draining (src/lifecycle.rs).
    pub sip_drain_rejected: AtomicU64,
    /// INVITEs answered 503 for want of a free RTP port (overload).
    pub sip_no_media_port: AtomicU64,
    /// INVITEs and OPTIONS answered 503: `[overload] max_calls` reached.
    pub sip_max_calls_rejected: AtomicU64,
    /// INVITEs and OPTIONS answered 503: scheduling lag over
    /// `[overload] max_lag_ms`.
    pub sip_lag_rejected: AtomicU64,
    /// INVITE, REGISTER, OPTIONS answered 503: their source over its
    /// `[overload]` rate.
    pub sip_rate_limited: AtomicU64,
    /// The runtime's latest scheduling lag, in microseconds (src/server.rs).
    pub event_loop_lag_us: AtomicU64,
    /// RTP packets accepted (summed at call end).
    pub rtp_packets: AtomicU64,
    /// RTP datagrams ignored as malformed, unknown PT or RTCP (summed at call end).
    pub rtp_ignored: AtomicU64,
    /// Frames concealed for lost RTP (jitter buffer, summed at call end).
    pub rtp_lost: AtomicU64,
    /// RTP packets dropped as late by the jitter buffer (summed at call end).
    pub rtp_late: AtomicU64,
    /// RTP datagrams from other sources than the latched one (summed at call end).
    pub rtp_stray: AtomicU64,
    /// Calls connected to a queue by third-party call control (RFC 3725).
    pub calls_bridged: AtomicU64,
    /// Calls whose decision was published and the PBX left to route.
    pub calls_decided: AtomicU64,
    /// Bridged calls whose media emonav relayed.
    pub calls_relayed: AtomicU64,
    /// RTP packets relayed, to the queue and to the caller (summed at call end).
    pub relay_packets: [AtomicU64; 2],
    /// Their bytes, same order.
    pub relay_bytes: [AtomicU64; 2],
    /// Calls failed after third-party call control was tried.
    pub calls_bridge_failed: AtomicU64,
    labelled: Labelled,
    sip: SipCounts,
    /// Each registration's state as last written to its gauge.
    registrations_seen: Mutex<Vec<bool>>,
}

/// The families and histograms, shared (by `Arc` inside) with each scrape's
/// registry.
#[derive(Debug, Clone)]
struct Labelled {
    outcome: Family<Labels, Counter>,
    decisions: Family<Labels, Counter>,
    answer_to_refer: Histogram,
    audio_to_decision: Histogram,
    arousal: Histogram,
    anger: Histogram,
    registration_up: Family<Labels, Gauge>,
}

impl Default for Labelled {
    fn default() -> Self {
        Self {
            outcome: Family::default(),
            decisions: Family::default(),
            answer_to_refer: Histogram::new(DELAY_BUCKETS),
            audio_to_decision: Histogram::new(DELAY_BUCKETS),
            arousal: Histogram::new(linear_buckets(0.1, 0.1, 10)),
            anger: Histogram::new(linear_buckets(0.1, 0.1, 10)),
            registration_up: Family::default(),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let z = || AtomicU64::new(0);
        Self {
            calls_started: z(),
            calls_ended: z(),
            calls_transferred: z(),
            calls_failed: z(),
            calls_flagged: z(),
            sip_unparseable: z(),
            sip_bad_request: z(),
            sip_untrusted: z(),
            history_misses: [z(), z(), z()],
            webhook_dropped: z(),
            webhook_delivered: z(),
            webhook_refused: z(),
            webhook_outbox_dropped: z(),
            webhook_retries: z(),
            webhook_pending: z(),
            line_sync_failures: [z(), z()],
            sip_call_queue_dropped: z(),
            sip_tcp_send_dropped: z(),
            sip_drain_rejected: z(),
            sip_no_media_port: z(),
            sip_max_calls_rejected: z(),
            sip_lag_rejected: z(),
            sip_rate_limited: z(),
            event_loop_lag_us: z(),
            rtp_packets: z(),
            rtp_ignored: z(),
            rtp_lost: z(),
            rtp_late: z(),
            rtp_stray: z(),
            calls_bridged: z(),
            calls_decided: z(),
            calls_relayed: z(),
            relay_packets: [z(), z()],
            relay_bytes: [z(), z()],
            calls_bridge_failed: z(),
            labelled: Labelled::default(),
            sip: SipCounts::default(),
            registrations_seen: Mutex::new(Vec::new()),
        }
    }
}

/// Which way a SIP message went.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Direction {
    /// From the network.
    Received = 0,
    /// Written by emonav.
    Sent = 1,
}

/// Direction labels, by [`Direction`] index.
const DIRECTIONS: [&str; 2] = ["received", "sent"];

/// Status codes 100..=699 counted by value; slot `CODES` is `other`.
const CODES: usize = 600;

/// SIP messages by direction and method or status code: plain atomics,
/// so that the per-message count is one add (boxed: ~10 KiB).
#[derive(Debug)]
struct SipCounts {
    requests: [[AtomicU64; METHODS.len() + 1]; 2],
    responses: Box<[[AtomicU64; CODES + 1]; 2]>,
}

impl Default for SipCounts {
    fn default() -> Self {
        Self {
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            responses: Box::new(std::array::from_fn(|_| {
                std::array::from_fn(|_| AtomicU64::new(0))
            })),
        }
    }
}

impl SipCounts {
    /// The families a scrape shows: only the slots counted at least once.
    fn families(&self) -> (Family<Labels, Counter>, Family<Labels, Counter>) {
        let requests = Family::<Labels, Counter>::default();
        let responses = Family::<Labels, Counter>::default();
        for (d, dir) in DIRECTIONS.iter().enumerate() {
            for (i, c) in self.requests[d].iter().enumerate() {
                let v = c.load(Ordering::Relaxed);
                if v > 0 {
                    let method = METHODS.get(i).copied().unwrap_or("other");
                    requests
                        .get_or_create(&vec![
                            ("direction", (*dir).into()),
                            ("method", method.into()),
                        ])
                        .inc_by(v);
                }
            }
            for (i, c) in self.responses[d].iter().enumerate() {
                let v = c.load(Ordering::Relaxed);
                if v > 0 {
                    let code = if i == CODES {
                        "other".to_string()
                    } else {
                        (i + 100).to_string()
                    };
                    responses
                        .get_or_create(&vec![("direction", (*dir).into()), ("code", code)])
                        .inc_by(v);
                }
            }
        }
        (requests, responses)
    }
}

/// The SIP methods counted by name; others are `other`, so that a peer
/// cannot grow the label set.
const METHODS: [&str; 14] = [
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "OPTIONS",
    "REGISTER",
    "REFER",
    "NOTIFY",
    "INFO",
    "UPDATE",
    "PRACK",
    "SUBSCRIBE",
    "MESSAGE",
    "PUBLISH",
];

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Pending => "pending",
        Outcome::Transferred => "transferred",
        Outcome::TransferredToFallback => "transferred_to_fallback",
        Outcome::Failed => "failed",
        Outcome::CallerHangup => "caller_hangup",
        Outcome::Cancelled => "cancelled",
        Outcome::Rejected => "rejected",
        Outcome::NoAck => "no_ack",
        Outcome::SessionExpired => "session_expired",
        Outcome::Bridged => "bridged",
        Outcome::Decided => "decided",
    }
}

impl Metrics {
    /// Account a finished call.
    pub(crate) fn call_ended(&self, r: &CallRecord) {
        self.calls_ended.fetch_add(1, Ordering::Relaxed);
        match r.outcome {
            Outcome::Transferred | Outcome::TransferredToFallback => {
                self.calls_transferred.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Failed | Outcome::NoAck | Outcome::SessionExpired => {
                self.calls_failed.fetch_add(1, Ordering::Relaxed);
                if !r.bridge_attempts.is_empty() {
                    self.calls_bridge_failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Outcome::Bridged => {
                self.calls_bridged.fetch_add(1, Ordering::Relaxed);
                if r.bridge_media == Some("relay") {
                    self.calls_relayed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Outcome::Decided => {
                self.calls_decided.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        if r.flagged {
            self.calls_flagged.fetch_add(1, Ordering::Relaxed);
        }
        self.rtp_packets
            .fetch_add(r.rtp.received, Ordering::Relaxed);
        self.rtp_ignored.fetch_add(
            r.rtp.malformed + r.rtp.unknown_pt + r.rtp.rtcp,
            Ordering::Relaxed,
        );
        let j = &r.media.jitter;
        self.rtp_lost.fetch_add(j.lost, Ordering::Relaxed);
        self.rtp_late.fetch_add(j.late, Ordering::Relaxed);
        self.rtp_stray
            .fetch_add(r.media.latch.stray, Ordering::Relaxed);
        let relay = &r.relay;
        for (i, (packets, bytes)) in [
            (relay.to_queue_packets, relay.to_queue_bytes),
            (relay.to_caller_packets, relay.to_caller_bytes),
        ]
        .into_iter()
        .enumerate()
        {
            self.relay_packets[i].fetch_add(packets, Ordering::Relaxed);
            self.relay_bytes[i].fetch_add(bytes, Ordering::Relaxed);
        }
        self.labelled_call_ended(r);
    }

    fn labelled_call_ended(&self, r: &CallRecord) {
        let l = &self.labelled;
        l.outcome
            .get_or_create(&vec![("outcome", outcome_name(r.outcome).to_string())])
            .inc();
        if let Some(queue) = &r.queue {
            let reason = r
                .decision_reason
                .and_then(|x| serde_json::to_value(x).ok())
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            l.decisions
                .get_or_create(&vec![
                    ("queue", queue.clone()),
                    ("emotion", r.emotion.clone().unwrap_or_default()),
                    ("reason", reason),
                ])
                .inc();
        }
        if let Some(ms) = r.answer_to_refer_ms {
            l.answer_to_refer.observe(ms as f64 / 1000.0);
        }
        if let Some(ms) = r.first_audio_to_decision_ms {
            l.audio_to_decision.observe(ms as f64 / 1000.0);
        }
        if let Some(a) = r.arousal {
            l.arousal.observe(f64::from(a));
        }
        if let Some(a) = r.anger {
            l.anger.observe(f64::from(a));
        }
    }

    /// One SIP message at the edge (its first line is enough). One
    /// relaxed atomic add into a pre-created slot: no lock, no allocation
    /// (the labelled families are built from the slots at scrape time).
    pub(crate) fn sip_message(&self, dir: Direction, data: &[u8]) {
        let d = dir as usize;
        let head = &data[..data.len().min(16)];
        if let Some(rest) = head.strip_prefix(b"SIP/2.0 ") {
            let slot = std::str::from_utf8(&rest[..rest.len().min(3)])
                .ok()
                .and_then(|c| c.parse::<usize>().ok())
                .filter(|c| (100..700).contains(c))
                .map_or(CODES, |c| c - 100);
            self.sip.responses[d][slot].fetch_add(1, Ordering::Relaxed);
        } else {
            let word = head.split(|&b| b == b' ').next().unwrap_or_default();
            let slot = METHODS
                .iter()
                .position(|m| m.as_bytes() == word)
                .unwrap_or(METHODS.len());
            self.sip.requests[d][slot].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A SIP message parsed before it reached the edge (TCP framing).
    pub(crate) fn sip_parsed(&self, msg: &emonav_sip::message::Message) {
        match msg {
            emonav_sip::message::Message::Request(r) => {
                self.sip_message(Direction::Received, r.method.as_str().as_bytes())
            }
            emonav_sip::message::Message::Response(r) => {
                let slot = usize::from(r.code)
                    .checked_sub(100)
                    .filter(|&c| c < CODES)
                    .unwrap_or(CODES);
                self.sip.responses[Direction::Received as usize][slot]
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Whether each `[[registration]]` account is registered. Called by the
    /// SIP task after every message it handles: the gauges are written only
    /// when a state changed.
    pub(crate) fn registrations<'a>(
        &self,
        accounts: impl Iterator<Item = (&'a emonav_sip::message::Uri, bool)>,
    ) {
        let mut last = self
            .registrations_seen
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        for (i, (aor, up)) in accounts.enumerate() {
            if last.get(i) == Some(&up) {
                continue;
            }
            if i >= last.len() {
                last.resize(i + 1, !up);
            }
            last[i] = up;
            self.labelled
                .registration_up
                .get_or_create(&vec![("account", aor.to_string())])
                .set(i64::from(up));
        }
    }

    /// The exposition (OpenMetrics text).
    pub(crate) fn render(&self) -> String {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut reg = Registry::default();
        let started = load(&self.calls_started);
        let ended = load(&self.calls_ended);
        // Counter names without `_total`: the encoder appends it.
        let counters: [(&str, &str, u64); 15] = [
            ("emonav_calls_started", "Calls answered or refused", started),
            ("emonav_calls_ended", "Calls ended", ended),
            (
                "emonav_calls_transferred",
                "Calls transferred",
                load(&self.calls_transferred),
            ),
            (
                "emonav_calls_transfer_failed",
                "Calls whose transfer failed",
                load(&self.calls_failed),
            ),
            (
                "emonav_calls_flagged",
                "Calls flagged high-risk",
                load(&self.calls_flagged),
            ),
            (
                "emonav_sip_unparseable",
                "SIP datagrams dropped as unparseable",
                load(&self.sip_unparseable),
            ),
            (
                "emonav_sip_bad_request",
                "SIP requests answered 400",
                load(&self.sip_bad_request),
            ),
            (
                "emonav_sip_untrusted",
                "SIP requests from untrusted sources refused or dropped ([security])",
                load(&self.sip_untrusted),
            ),
            (
                "emonav_sip_call_queue_dropped",
                "SIP messages dropped because their call's queue was full",
                load(&self.sip_call_queue_dropped),
            ),
            (
                "emonav_sip_tcp_send_dropped",
                "SIP messages dropped because a TCP connection's send queue was full",
                load(&self.sip_tcp_send_dropped),
            ),
            (
                "emonav_rtp_packets",
                "RTP packets accepted (ended calls)",
                load(&self.rtp_packets),
            ),
            (
                "emonav_rtp_ignored",
                "RTP datagrams ignored (ended calls)",
                load(&self.rtp_ignored),
            ),
            (
                "emonav_rtp_lost_frames",
                "RTP frames lost and concealed (ended calls)",
                load(&self.rtp_lost),
            ),
            (
                "emonav_rtp_late",
                "RTP packets too late for the jitter buffer (ended calls)",
                load(&self.rtp_late),
            ),
            (
                "emonav_rtp_stray",
                "RTP datagrams from other sources than the latched one (ended calls)",
                load(&self.rtp_stray),
            ),
        ];
        for (name, help, v) in counters {
            reg.register(name, help, ConstCounter::new(v));
        }
        reg.register(
            "emonav_calls_active",
            "Calls in progress",
            ConstGauge::new(i64::try_from(started.saturating_sub(ended)).unwrap_or(i64::MAX)),
        );
        self.register_by_mode(&mut reg);
        let l = self.labelled.clone();
        reg.register(
            "emonav_calls_by_outcome",
            "Calls ended, by outcome",
            l.outcome,
        );
        reg.register(
            "emonav_decisions",
            "Routing decisions of ended calls, by queue, emotion label and reason",
            l.decisions,
        );
        reg.register_with_unit(
            "emonav_answer_to_refer",
            "From our 200 OK to the first REFER",
            Unit::Seconds,
            l.answer_to_refer,
        );
        reg.register_with_unit(
            "emonav_first_audio_to_decision",
            "From the caller's first audio to the routing decision",
            Unit::Seconds,
            l.audio_to_decision,
        );
        reg.register(
            "emonav_decision_arousal_score",
            "Probability of high arousal at the decision",
            l.arousal,
        );
        reg.register(
            "emonav_decision_anger_score",
            "Probability of anger at the decision",
            l.anger,
        );
        let (sip_requests, sip_responses) = self.sip.families();
        reg.register(
            "emonav_sip_requests",
            "SIP requests at the edge, by direction and method",
            sip_requests,
        );
        reg.register(
            "emonav_sip_responses",
            "SIP responses at the edge, by direction and status code",
            sip_responses,
        );
        reg.register(
            "emonav_registration_up",
            "1 while the [[registration]] account is registered",
            l.registration_up,
        );
        let mut s = String::new();
        if let Err(e) = encode(&mut s, &reg) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        s
    }

    /// Calls that reached a queue, and calls that did not, by how emonav
    /// routed them (REFER, third-party call control, decision published).
    fn register_by_mode(&self, reg: &mut Registry) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let failed = load(&self.calls_failed);
        let bridge_failed = load(&self.calls_bridge_failed);
        let routed = Family::<Labels, Counter>::default();
        for (mode, v) in [
            ("refer", load(&self.calls_transferred)),
            ("b2bua", load(&self.calls_bridged)),
            ("decision", load(&self.calls_decided)),
        ] {
            routed.get_or_create(&vec![("mode", mode.into())]).inc_by(v);
        }
        reg.register(
            "emonav_calls_routed",
            "Calls that reached a queue, by mode",
            routed,
        );
        reg.register(
            "emonav_calls_bridged_relay",
            "Bridged calls whose media emonav relayed ([transfer] media)",
            ConstCounter::new(load(&self.calls_relayed)),
        );
        let (packets, bytes) = (
            Family::<Labels, Counter>::default(),
            Family::<Labels, Counter>::default(),
        );
        for (i, direction) in ["to_queue", "to_caller"].into_iter().enumerate() {
            let label = vec![("direction", direction.into())];
            packets
                .get_or_create(&label)
                .inc_by(load(&self.relay_packets[i]));
            bytes
                .get_or_create(&label)
                .inc_by(load(&self.relay_bytes[i]));
        }
        reg.register(
            "emonav_relay_packets",
            "RTP packets relayed between caller and queue, by direction (ended calls)",
            packets,
        );
        reg.register(
            "emonav_relay_bytes",
            "RTP bytes relayed between caller and queue, by direction (ended calls)",
            bytes,
        );
        let failed_by = Family::<Labels, Counter>::default();
        for (mode, v) in [
            ("refer", failed.saturating_sub(bridge_failed)),
            ("b2bua", bridge_failed),
        ] {
            failed_by
                .get_or_create(&vec![("mode", mode.into())])
                .inc_by(v);
        }
        reg.register(
            "emonav_calls_route_failed",
            "Calls that reached no queue, by the last mode tried",
            failed_by,
        );
        let rejected = Family::<Labels, Counter>::default();
        for (reason, v) in [
            ("draining", load(&self.sip_drain_rejected)),
            ("no_media_port", load(&self.sip_no_media_port)),
            ("max_calls", load(&self.sip_max_calls_rejected)),
            ("lag", load(&self.sip_lag_rejected)),
            ("rate_limited", load(&self.sip_rate_limited)),
        ] {
            rejected
                .get_or_create(&vec![("reason", reason.into())])
                .inc_by(v);
        }
        let misses = Family::<Labels, Counter>::default();
        for (i, reason) in ["timeout", "error", "late"].into_iter().enumerate() {
            misses
                .get_or_create(&vec![("reason", reason.into())])
                .inc_by(load(&self.history_misses[i]));
        }
        reg.register(
            "emonav_history_misses",
            "Calls decided without the caller's history: the store too slow (timeout), failing (error), or answering after the decision (late)",
            misses,
        );
        let webhook = Family::<Labels, Counter>::default();
        for (result, v) in [
            ("delivered", load(&self.webhook_delivered)),
            ("refused", load(&self.webhook_refused)),
            (
                "dropped",
                load(&self.webhook_dropped) + load(&self.webhook_outbox_dropped),
            ),
        ] {
            webhook
                .get_or_create(&vec![("result", result.into())])
                .inc_by(v);
        }
        reg.register(
            "emonav_webhook_events",
            "Webhook events ([webhooks]) by what became of them: delivered (2xx), refused for good (4xx), dropped (outbox full)",
            webhook,
        );
        reg.register(
            "emonav_webhook_retries",
            "Webhook POSTs that failed (no answer, 5xx, 408, 429) and were retried",
            ConstCounter::new(load(&self.webhook_retries)),
        );
        reg.register(
            "emonav_webhook_pending",
            "Webhook events waiting for delivery",
            ConstGauge::new(i64::try_from(load(&self.webhook_pending)).unwrap_or(i64::MAX)),
        );
        let line_sync = Family::<Labels, Counter>::default();
        for (i, op) in ["save", "load"].into_iter().enumerate() {
            line_sync
                .get_or_create(&vec![("op", op.into())])
                .inc_by(load(&self.line_sync_failures[i]));
        }
        reg.register(
            "emonav_line_stats_sync_failures",
            "Exchanges of the shared line-adaptation statistics with PostgreSQL that failed or timed out (calls were scored with what the instance had)",
            line_sync,
        );
        reg.register(
            "emonav_sip_rejected",
            "Requests no call owns answered 503: draining, no free RTP port, [overload] max_calls, scheduling lag, per-source rate",
            rejected,
        );
        reg.register_with_unit(
            "emonav_event_loop_lag",
            "How late the runtime's periodic probe timer last fired ([overload] max_lag_ms)",
            Unit::Seconds,
            ConstGauge::new(load(&self.event_loop_lag_us) as f64 / 1e6),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_labels_are_bounded_whatever_the_peer_sends() {
        let m = Metrics::default();
        m.sip_message(Direction::Received, b"INVITE sip:a@b SIP/2.0\r\n");
        m.sip_message(Direction::Received, b"XYZZY sip:a@b SIP/2.0\r\n");
        m.sip_message(Direction::Received, b"\xff\xfe garbage");
        m.sip_message(Direction::Sent, b"SIP/2.0 486 Busy Here\r\n");
        m.sip_message(Direction::Received, b"SIP/2.0 9999 What\r\n");
        m.sip_message(Direction::Received, b"");
        let text = m.render();
        for line in [
            "emonav_sip_requests_total{direction=\"received\",method=\"INVITE\"} 1\n",
            "emonav_sip_requests_total{direction=\"received\",method=\"other\"} 3\n",
            "emonav_sip_responses_total{direction=\"sent\",code=\"486\"} 1\n",
            "emonav_sip_responses_total{direction=\"received\",code=\"other\"} 1\n",
        ] {
            assert!(text.contains(line), "{line}not in:\n{text}");
        }
    }

    #[test]
    fn registration_gauges_follow_state_changes() {
        let m = Metrics::default();
        let a = emonav_sip::message::Uri::parse("sip:a@example.com").unwrap();
        let b = emonav_sip::message::Uri::parse("sip:b@example.com").unwrap();
        m.registrations([(&a, false), (&b, true)].into_iter());
        m.registrations([(&a, true), (&b, true)].into_iter());
        let text = m.render();
        assert!(
            text.contains("emonav_registration_up{account=\"sip:a@example.com\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("emonav_registration_up{account=\"sip:b@example.com\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn exposition_is_openmetrics_with_units_and_totals() {
        let text = Metrics::default().render();
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            text.contains("# UNIT emonav_answer_to_refer_seconds seconds\n"),
            "{text}"
        );
        assert!(text.contains("emonav_calls_started_total 0\n"), "{text}");
        assert!(text.contains("emonav_calls_active 0\n"), "{text}");
    }
}
