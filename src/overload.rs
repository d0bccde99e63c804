//! Overload control (`[overload]`): admission of new work by a count and by
//! measured headroom, and per-source rate limits, decided without sockets.
//!
//! - RFC 3261 §21.5.4: a new INVITE refused for load gets `503` with
//!   `Retry-After`, and so does OPTIONS, so that a proxy probing with it
//!   (RFC 3263 §4.3 failover, Kamailio's dispatcher) takes the instance out
//!   of rotation while it is full. Calls already up are not touched: their
//!   messages are routed by Call-ID before any of this is asked.
//! - RFC 6357 §3 (overload in SIP): refusing early and cheaply is what keeps
//!   a server from the collapse in which late answers cause retransmissions
//!   that add load; the headroom measure here is the runtime's scheduling
//!   lag (how late a periodic timer fires), which grows with every kind of
//!   backlog (packets, SIP, DSP) and costs one timer wake-up per interval.
//! - Per-source token buckets for INVITE, REGISTER and OPTIONS bound what
//!   one address can make us do, whatever the global load.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// `[overload]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OverloadConfig {
    /// Calls in progress (our BYE not yet sent) above which new INVITEs get
    /// 503; 0: no count limit.
    pub max_calls: usize,
    /// Runtime scheduling lag, in milliseconds, above which new INVITEs and
    /// OPTIONS get 503 until it is back under half of it; 0: off.
    pub max_lag_ms: u64,
    /// The `Retry-After` seconds of those 503s.
    pub retry_after_s: u32,
    /// New INVITEs per second each source address may send; 0: no limit.
    pub invite_per_source: f64,
    /// REGISTERs per second each source address may send; 0: no limit.
    pub register_per_source: f64,
    /// OPTIONS per second each source address may send; 0: no limit.
    pub options_per_source: f64,
    /// Burst allowed above those rates, in seconds' worth of requests.
    pub burst_s: f64,
}

impl Default for OverloadConfig {
    fn default() -> Self {
        Self {
            max_calls: 0,
            max_lag_ms: 0,
            retry_after_s: 5,
            invite_per_source: 0.0,
            register_per_source: 0.0,
            options_per_source: 0.0,
            burst_s: 2.0,
        }
    }
}

impl OverloadConfig {
    /// Check the keys.
    pub(crate) fn validate(&self) -> Result<(), String> {
        for (k, v) in [
            ("invite_per_source", self.invite_per_source),
            ("register_per_source", self.register_per_source),
            ("options_per_source", self.options_per_source),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(format!("overload.{k} must be 0 or a positive number"));
            }
        }
        if !self.burst_s.is_finite() || self.burst_s < 1.0 {
            return Err("overload.burst_s must be at least 1".into());
        }
        Ok(())
    }
}

/// Which request a limit applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A dialog-creating INVITE.
    Invite = 0,
    /// REGISTER.
    Register = 1,
    /// Out-of-dialog OPTIONS.
    Options = 2,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `max_calls` calls are up.
    MaxCalls,
    /// The scheduling lag is over `max_lag_ms`.
    Lag,
    /// Its source is over its rate.
    RateLimited,
}

impl Refusal {
    /// Its label in `emonav_sip_rejected_total{reason}` and in logs.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::MaxCalls => "max_calls",
            Refusal::Lag => "lag",
            Refusal::RateLimited => "rate_limited",
        }
    }
}

/// One source's buckets, in tokens (requests).
#[derive(Debug, Clone, Copy)]
struct Buckets {
    tokens: [f64; 3],
    at: Instant,
}

/// Sources tracked at most: an address-spoofing flood must not grow the
/// table without bound. Past it, idle sources are forgotten, and if none
/// is, new sources are not limited (logged by the caller through the count).
const MAX_SOURCES: usize = 16_384;

/// The admission state.
#[derive(Debug)]
pub(crate) struct Overload {
    cfg: OverloadConfig,
    active: usize,
    lag: Duration,
    lagging: bool,
    sources: HashMap<IpAddr, Buckets>,
}

impl Overload {
    /// Admission by `cfg`.
    pub(crate) fn new(cfg: OverloadConfig) -> Self {
        Self {
            cfg,
            active: 0,
            lag: Duration::ZERO,
            lagging: false,
            sources: HashMap::new(),
        }
    }

    /// The `Retry-After` of a refusal.
    pub(crate) fn retry_after_s(&self) -> u32 {
        self.cfg.retry_after_s
    }

    /// The load as the edge measured it: calls in progress and the latest
    /// scheduling lag. The lag limit has hysteresis (in at `max_lag_ms`, out
    /// under half), so that admission does not flap on every sample.
    pub(crate) fn set_load(&mut self, active: usize, lag: Duration) {
        self.active = active;
        self.lag = lag;
        if self.cfg.max_lag_ms > 0 {
            let max = Duration::from_millis(self.cfg.max_lag_ms);
            if lag > max {
                self.lagging = true;
            } else if lag < max / 2 {
                self.lagging = false;
            }
        }
    }

    /// Why new calls are refused now, if they are (`/readyz`).
    pub(crate) fn overloaded(&self) -> Option<Refusal> {
        if self.cfg.max_calls > 0 && self.active >= self.cfg.max_calls {
            Some(Refusal::MaxCalls)
        } else if self.lagging {
            Some(Refusal::Lag)
        } else {
            None
        }
    }

    /// Whether a `kind` request from `src` is taken at `now`. INVITE and
    /// OPTIONS are refused while overloaded; every kind is refused when its
    /// source is over its rate (a refused request still costs a token, so
    /// a flood that ignores Retry-After stays refused).
    pub(crate) fn admit(&mut self, kind: Kind, src: IpAddr, now: Instant) -> Result<(), Refusal> {
        let rate_limited = !self.take_token(kind, src, now);
        if kind != Kind::Register {
            if let Some(r) = self.overloaded() {
                return Err(r);
            }
        }
        if rate_limited {
            return Err(Refusal::RateLimited);
        }
        Ok(())
    }

    fn rate(&self, kind: Kind) -> f64 {
        match kind {
            Kind::Invite => self.cfg.invite_per_source,
            Kind::Register => self.cfg.register_per_source,
            Kind::Options => self.cfg.options_per_source,
        }
    }

    /// Take a token from `src`'s `kind` bucket; false when empty.
    fn take_token(&mut self, kind: Kind, src: IpAddr, now: Instant) -> bool {
        let rate = self.rate(kind);
        if rate <= 0.0 {
            return true;
        }
        let depths = [Kind::Invite, Kind::Register, Kind::Options]
            .map(|k| (self.rate(k) * self.cfg.burst_s).max(1.0));
        if !self.sources.contains_key(&src) && self.sources.len() >= MAX_SOURCES {
            self.forget_idle(now, &depths);
            if self.sources.len() >= MAX_SOURCES {
                return true;
            }
        }
        let rates = [Kind::Invite, Kind::Register, Kind::Options].map(|k| self.rate(k));
        let b = self.sources.entry(src).or_insert(Buckets {
            tokens: depths,
            at: now,
        });
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        b.at = now;
        for i in 0..3 {
            b.tokens[i] = (b.tokens[i] + dt * rates[i]).min(depths[i]);
        }
        let t = &mut b.tokens[kind as usize];
        if *t >= 1.0 {
            *t -= 1.0;
            true
        } else {
            // Debt down to one burst: a source that keeps sending while
            // refused waits longer, but not forever.
            *t = (*t - 1.0).max(-depths[kind as usize]);
            false
        }
    }

    /// Drop the sources whose buckets would be full by now.
    fn forget_idle(&mut self, now: Instant, depths: &[f64; 3]) {
        let rates = [Kind::Invite, Kind::Register, Kind::Options].map(|k| self.rate(k));
        self.sources.retain(|_, b| {
            let dt = now.saturating_duration_since(b.at).as_secs_f64();
            (0..3).any(|i| rates[i] > 0.0 && b.tokens[i] + dt * rates[i] < depths[i])
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn max_calls_refuses_invite_and_options_not_register() {
        let mut o = Overload::new(OverloadConfig {
            max_calls: 2,
            ..OverloadConfig::default()
        });
        let now = Instant::now();
        o.set_load(1, Duration::ZERO);
        assert_eq!(o.admit(Kind::Invite, ip("127.0.0.1"), now), Ok(()));
        o.set_load(2, Duration::ZERO);
        assert_eq!(
            o.admit(Kind::Invite, ip("127.0.0.1"), now),
            Err(Refusal::MaxCalls)
        );
        assert_eq!(
            o.admit(Kind::Options, ip("127.0.0.1"), now),
            Err(Refusal::MaxCalls)
        );
        assert_eq!(o.admit(Kind::Register, ip("127.0.0.1"), now), Ok(()));
        o.set_load(1, Duration::ZERO);
        assert_eq!(o.overloaded(), None);
    }

    #[test]
    fn lag_limit_has_hysteresis() {
        let mut o = Overload::new(OverloadConfig {
            max_lag_ms: 100,
            ..OverloadConfig::default()
        });
        let now = Instant::now();
        o.set_load(0, Duration::from_millis(90));
        assert_eq!(o.overloaded(), None);
        o.set_load(0, Duration::from_millis(150));
        assert_eq!(
            o.admit(Kind::Invite, ip("::1"), now),
            Err(Refusal::Lag),
            "over the limit"
        );
        o.set_load(0, Duration::from_millis(60));
        assert_eq!(o.overloaded(), Some(Refusal::Lag), "not yet under half");
        o.set_load(0, Duration::from_millis(40));
        assert_eq!(o.overloaded(), None);
    }

    #[test]
    fn per_source_rate_limits_one_source_not_the_others() {
        let mut o = Overload::new(OverloadConfig {
            invite_per_source: 10.0,
            burst_s: 1.0,
            ..OverloadConfig::default()
        });
        let t0 = Instant::now();
        let flood = ip("127.0.0.2");
        let taken = (0..50)
            .filter(|_| o.admit(Kind::Invite, flood, t0).is_ok())
            .count();
        assert_eq!(taken, 10, "one burst");
        assert_eq!(o.admit(Kind::Invite, ip("127.0.0.3"), t0), Ok(()));
        assert_eq!(
            o.admit(Kind::Options, flood, t0),
            Ok(()),
            "OPTIONS unlimited"
        );
        // In debt by a burst: over a second at 10/s before the next one.
        let later = t0 + Duration::from_millis(500);
        assert_eq!(
            o.admit(Kind::Invite, flood, later),
            Err(Refusal::RateLimited)
        );
        let later = later + Duration::from_millis(1_000);
        assert_eq!(o.admit(Kind::Invite, flood, later), Ok(()));
    }

    #[test]
    fn source_table_is_bounded() {
        let mut o = Overload::new(OverloadConfig {
            options_per_source: 1.0,
            ..OverloadConfig::default()
        });
        let now = Instant::now();
        for i in 0..(MAX_SOURCES as u32 + 100) {
            let _ = o.admit(Kind::Options, IpAddr::from(i.to_be_bytes()), now);
        }
        assert!(o.sources.len() <= MAX_SOURCES);
        // Once idle, they are forgotten for new sources.
        let later = now + Duration::from_secs(10);
        assert_eq!(o.admit(Kind::Options, ip("10.0.0.1"), later), Ok(()));
        assert!(o.sources.len() < 10);
    }
}
