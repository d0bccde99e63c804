//! Session timers (RFC 4028) on the UAS side: read `Session-Expires` and
//! `Min-SE` from an INVITE, re-INVITE or UPDATE, refuse intervals below our
//! minimum with `422`, and say what the 2xx must carry and when the session
//! expires if nobody refreshes it.

use std::time::Duration;

use super::message::{Headers, Request};
use crate::header;

/// Who refreshes the session (RFC 4028 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresher {
    /// The caller.
    Uac,
    /// Us.
    Uas,
}

/// The session timer agreed for a 2xx.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimer {
    /// Session interval, seconds.
    pub interval: u32,
    /// Who refreshes.
    pub refresher: Refresher,
    /// The UAC supports the extension (`Supported: timer`): the 2xx then
    /// carries `Require: timer` (§9).
    pub require: bool,
}

/// The request's interval is below our minimum (→ `422` with `Min-SE`, §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("session interval too small (Min-SE {min_se})")]
pub struct TooSmall {
    /// The `Min-SE` to put in the 422.
    pub min_se: u32,
}

/// Does a header list (`Supported`, `Require`) name `option`?
pub fn lists_option(headers: &Headers, name: &str, option: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .any(|v| v.trim().eq_ignore_ascii_case(option))
}

/// Negotiate the session timer for a request (RFC 4028 §9). `Ok(None)`: the
/// request has no `Session-Expires`, so no timer runs (for a refresh, the
/// timer is switched off). `min_se` is our minimum (`[sip] min_se_s`).
pub fn negotiate(req: &Request, min_se: u32) -> Result<Option<SessionTimer>, TooSmall> {
    let Some(se) = req.headers.get(header::SESSION_EXPIRES) else {
        return Ok(None);
    };
    let mut parts = se.split(';');
    let interval: u32 = match parts.next().and_then(|v| v.trim().parse().ok()) {
        Some(v) => v,
        // A value we cannot read is treated as no timer rather than a failure.
        None => return Ok(None),
    };
    let requested = parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("refresher")
            .then(|| v.trim().to_ascii_lowercase())
    });
    let their_min = req
        .headers
        .get(header::MIN_SE)
        .and_then(|v| v.split(';').next()?.trim().parse::<u32>().ok())
        .unwrap_or(0);
    let floor = min_se.max(their_min);
    if interval < min_se {
        return Err(TooSmall { min_se: floor });
    }
    let supports = lists_option(&req.headers, header::SUPPORTED, "timer")
        || lists_option(&req.headers, header::REQUIRE, "timer");
    let refresher = match requested.as_deref() {
        // §9: a refresher the request names is copied.
        Some("uas") => Refresher::Uas,
        Some("uac") => Refresher::Uac,
        // We prefer the caller to refresh, which it can only if it supports
        // the extension; otherwise the UAS must be the refresher.
        _ if supports => Refresher::Uac,
        _ => Refresher::Uas,
    };
    Ok(Some(SessionTimer {
        interval,
        refresher,
        require: supports,
    }))
}

impl SessionTimer {
    /// The `Session-Expires` value of our 2xx.
    pub fn header(&self) -> String {
        let who = match self.refresher {
            Refresher::Uac => "uac",
            Refresher::Uas => "uas",
        };
        format!("{};refresher={who}", self.interval)
    }

    /// How long after a refresh we give up and send BYE when the caller is
    /// the refresher: the interval minus min(32 s, interval/3) (§10).
    pub fn bye_after(&self) -> Duration {
        let i = Duration::from_secs(self.interval.into());
        i - (i / 3).min(Duration::from_secs(32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{parse_datagram, Message};

    fn req(extra: &str) -> Request {
        let text = format!(
            "INVITE sip:emonav@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKx\r\n\
             From: <sip:c@127.0.0.1>;tag=1\r\nTo: <sip:emonav@127.0.0.1>\r\nCall-ID: st\r\n\
             CSeq: 1 INVITE\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        match parse_datagram(text.as_bytes()).unwrap() {
            Message::Request(r) => r,
            Message::Response(_) => unreachable!(),
        }
    }

    #[test]
    fn no_session_expires_no_timer() {
        assert_eq!(negotiate(&req("Supported: timer\r\n"), 90), Ok(None));
    }

    #[test]
    fn caller_supporting_timer_is_made_the_refresher_with_require() {
        let t = negotiate(
            &req("Supported: 100rel, timer\r\nSession-Expires: 1800\r\n"),
            90,
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.refresher, Refresher::Uac);
        assert!(t.require);
        assert_eq!(t.header(), "1800;refresher=uac");
        assert_eq!(t.bye_after(), Duration::from_secs(1800 - 32));
    }

    #[test]
    fn refresher_in_the_request_is_copied_and_no_support_means_uas() {
        let t = negotiate(
            &req("Session-Expires: 600;refresher=uas\r\nSupported: timer\r\n"),
            90,
        )
        .unwrap()
        .unwrap();
        assert_eq!(t.refresher, Refresher::Uas);
        // A proxy added the header; the caller cannot refresh.
        let t = negotiate(&req("x: 600\r\n"), 90).unwrap().unwrap();
        assert_eq!((t.refresher, t.require), (Refresher::Uas, false));
    }

    #[test]
    fn too_small_interval_is_422_with_the_larger_min_se() {
        assert_eq!(
            negotiate(&req("Session-Expires: 60\r\nSupported: timer\r\n"), 90),
            Err(TooSmall { min_se: 90 })
        );
        assert_eq!(
            negotiate(&req("Session-Expires: 60\r\nMin-SE: 120\r\n"), 90),
            Err(TooSmall { min_se: 120 })
        );
        assert!(negotiate(&req("Session-Expires: 90\r\n"), 90).is_ok());
    }

    #[test]
    fn short_interval_expires_a_third_early() {
        let t = SessionTimer {
            interval: 90,
            refresher: Refresher::Uac,
            require: true,
        };
        assert_eq!(t.bye_after(), Duration::from_secs(60));
    }
}
