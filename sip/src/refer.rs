//! Call transfer with REFER (RFC 3515, RFC 7647), the `Referred-By` header
//! (RFC 3892), and the `message/sipfrag` progress NOTIFYs (RFC 3420) that tell
//! us how the transfer went. The transferor's BYE after success follows
//! RFC 5589 §6.

use super::message::{Request, Uri};
use crate::header;

/// Add the REFER-specific headers to an in-dialog request built by the
/// dialog, then the caller's `extra` headers in order.
pub fn add_refer_headers(
    req: &mut Request,
    target: &str,
    referred_by: &Uri,
    extra: &[(&str, String)],
) {
    // The target is used verbatim: carriers expect exactly the form configured.
    req.headers.push(header::REFER_TO, format!("<{target}>"));
    req.headers
        .push(header::REFERRED_BY, format!("<{referred_by}>"));
    for (name, value) in extra {
        req.headers.push(name, value.clone());
    }
}

/// What a NOTIFY for our REFER subscription said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReferNotify {
    /// Status code of the sipfrag's status line (`SIP/2.0 200 OK` → 200).
    pub status: u16,
    /// `Subscription-State: terminated`.
    pub terminated: bool,
}

impl ReferNotify {
    /// A final status (≥ 200) ends the transfer attempt one way or the other.
    pub fn is_final(&self) -> bool {
        self.status >= 200
    }
}

/// Why a NOTIFY cannot be taken as a refer progress report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    /// Not `Event: refer` (→ 489 Bad Event, RFC 6665 §4.1.3).
    #[error("Event is not refer")]
    BadEvent,
    /// The body is not a sipfrag status line (→ 400).
    #[error("body is not a message/sipfrag status line")]
    BadBody,
}

/// Read a NOTIFY's Event, Subscription-State and sipfrag body.
pub fn inspect_notify(req: &Request) -> Result<ReferNotify, NotifyError> {
    let event = req
        .headers
        .get(header::EVENT)
        .ok_or(NotifyError::BadEvent)?;
    // `refer` or `refer;id=1234` (RFC 3515 §2.4.6).
    let package = event.split(';').next().unwrap_or("").trim();
    if !package.eq_ignore_ascii_case("refer") {
        return Err(NotifyError::BadEvent);
    }
    let terminated = req
        .headers
        .get(header::SUBSCRIPTION_STATE)
        .is_some_and(|s| {
            s.split(';')
                .next()
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("terminated"))
        });
    let status = sipfrag_status(&req.body).ok_or(NotifyError::BadBody)?;
    Ok(ReferNotify { status, terminated })
}

/// The status code of a sipfrag body's first line (`SIP/2.0 180 Ringing`).
pub fn sipfrag_status(body: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(body).ok()?;
    let line = text.lines().next()?.trim();
    let mut parts = line.split_ascii_whitespace();
    let version = parts.next()?;
    if !version.eq_ignore_ascii_case("SIP/2.0") {
        return None;
    }
    let code: u16 = parts.next()?.parse().ok()?;
    (100..700).contains(&code).then_some(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sipfrag_status_lines() {
        assert_eq!(sipfrag_status(b"SIP/2.0 200 OK\r\n"), Some(200));
        assert_eq!(sipfrag_status(b"SIP/2.0 100 Trying"), Some(100));
        assert_eq!(
            sipfrag_status(b"SIP/2.0 603 Declined\r\nVia: x\r\n"),
            Some(603)
        );
        assert_eq!(sipfrag_status(b"HTTP/1.1 200 OK"), None);
        assert_eq!(sipfrag_status(b"SIP/2.0 99 Low"), None);
        assert_eq!(sipfrag_status(b"\xff\xfe"), None);
        assert_eq!(sipfrag_status(b""), None);
    }
}
