//! Fake-clock tests of the registration client: every path of the state
//! machine, driven only through the public API.

use super::*;
use crate::digest::{AuthKind, Authenticator, Challenge};

const REALM: &str = "pbx";

fn account() -> Account {
    Account {
        registrar: Uri::parse("sip:pbx.example.com").unwrap(),
        aor: Uri::parse("sip:emonav@pbx.example.com").unwrap(),
        username: "emonav".into(),
        password: "secret".into(),
        contact: Uri::parse("sip:emonav@192.0.2.9:5060").unwrap(),
        expires: 3600,
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A registration and its first REGISTER.
fn start() -> (Registration, Instant, Request) {
    start_with(Settings::default())
}

fn start_with(settings: Settings) -> (Registration, Instant, Request) {
    let t0 = Instant::now();
    let mut reg = Registration::with_settings(account(), settings, t0);
    let req = reg.poll_output().expect("first REGISTER");
    assert!(reg.poll_output().is_none());
    (reg, t0, req)
}

/// The next request the registration sends by itself, firing timers until
/// one comes (timer K and similar quiet wake-ups are skipped).
fn next_sent(reg: &mut Registration) -> (Instant, Request) {
    for _ in 0..50 {
        let at = reg.poll_timeout().expect("a timer is armed");
        reg.handle_timeout(at);
        if let Some(r) = reg.poll_output() {
            return (at, r);
        }
    }
    panic!("no request after 50 wake-ups");
}

fn sent_now(reg: &mut Registration) -> Request {
    let r = reg.poll_output().expect("a request at once");
    assert!(reg.poll_output().is_none());
    r
}

fn reply(req: &Request, code: u16) -> Response {
    let mut resp = req.make_response(code, "Whatever");
    let mut to = resp.to().unwrap();
    to.params.set("tag", Some("reg1"));
    resp.headers.set("To", to.to_string());
    resp
}

fn ok(req: &Request) -> Response {
    reply(req, 200)
}

fn challenge_header(nonce: &str, stale: bool) -> String {
    format!(
        "Digest realm=\"{REALM}\", nonce=\"{nonce}\", qop=\"auth\", algorithm=MD5{}",
        if stale { ", stale=true" } else { "" }
    )
}

fn challenge(req: &Request, nonce: &str, stale: bool) -> Response {
    let mut resp = reply(req, 401);
    resp.headers
        .push("WWW-Authenticate", challenge_header(nonce, stale));
    resp
}

fn cseq(req: &Request) -> u32 {
    req.cseq().unwrap().seq
}

fn branch(req: &Request) -> String {
    req.top_via().unwrap().branch().unwrap().to_string()
}

fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers.get(name)
}

fn param(value: &str, name: &str) -> Option<String> {
    value
        .trim_start_matches("Digest ")
        .split(", ")
        .find_map(|p| p.strip_prefix(&format!("{name}=")))
        .map(|v| v.trim_matches('"').to_string())
}

/// Check the credentials as the registrar would: recompute the response
/// for `nonce` and count `nc`.
fn assert_credentials(req: &Request, header_name: &str, nonce: &str, nc: u32) {
    let h = header(req, header_name).unwrap_or_else(|| panic!("no {header_name}"));
    assert_eq!(param(h, "nonce").as_deref(), Some(nonce), "{h}");
    assert_eq!(param(h, "nc"), Some(format!("{nc:08x}")), "{h}");
    assert_eq!(param(h, "username").as_deref(), Some("emonav"));
    assert_eq!(param(h, "uri").as_deref(), Some("sip:pbx.example.com"));
    let cnonce = param(h, "cnonce").unwrap();
    let kind = if header_name == "Authorization" {
        AuthKind::Www
    } else {
        AuthKind::Proxy
    };
    let mut a = Authenticator::new(
        kind,
        Challenge::parse(&challenge_header(nonce, false)).unwrap(),
    );
    for _ in 1..nc {
        a.authorization("x", "y", "REGISTER", "sip:x", b"");
    }
    let want = a.authorization_with_cnonce(
        "emonav",
        "secret",
        "REGISTER",
        "sip:pbx.example.com",
        b"",
        &cnonce,
    );
    assert_eq!(param(h, "response"), param(&want, "response"));
}

/// Register through one challenge; returns the time of the 200 and the last REGISTER.
fn registered(expires_header: Option<u32>) -> (Registration, Instant, Request) {
    let (mut reg, t0, first) = start();
    reg.handle_response(&challenge(&first, "n1", false), t0);
    let second = sent_now(&mut reg);
    let mut resp = ok(&second);
    if let Some(e) = expires_header {
        resp.headers.push("Expires", e.to_string());
    }
    let t = t0 + Duration::from_millis(40);
    reg.handle_response(&resp, t);
    (reg, t, second)
}

#[test]
fn first_register_is_well_formed() {
    let (reg, _, req) = start();
    assert_eq!(req.method, Method::Register);
    assert_eq!(req.uri.to_string(), "sip:pbx.example.com");
    let via = req.top_via().unwrap();
    assert_eq!(
        (via.transport.as_str(), via.host.as_str(), via.port),
        ("UDP", "192.0.2.9", Some(5060))
    );
    assert!(via.branch().unwrap().starts_with("z9hG4bK"));
    assert_eq!(via.params.get("rport"), Some(None));
    let from = req.from().unwrap();
    assert_eq!(from.uri.to_string(), "sip:emonav@pbx.example.com");
    assert!(from.tag().is_some());
    let to = req.to().unwrap();
    assert_eq!(
        (to.uri.to_string(), to.tag()),
        ("sip:emonav@pbx.example.com".into(), None)
    );
    assert_eq!(req.call_id(), Some(reg.call_id()));
    assert_eq!(header(&req, "CSeq"), Some("1 REGISTER"));
    assert_eq!(header(&req, "Contact"), Some("<sip:emonav@192.0.2.9:5060>"));
    assert_eq!(header(&req, "Expires"), Some("3600"));
    assert_eq!(header(&req, "Max-Forwards"), Some("70"));
    assert_eq!(header(&req, "Authorization"), None);
    assert_eq!(reg.state(), &State::Registering);
    // What we send parses back as a valid request.
    let bytes = req.to_bytes();
    assert!(matches!(
        crate::message::parse_datagram(&bytes),
        Ok(crate::message::Message::Request(_))
    ));
}

#[test]
fn challenge_then_200() {
    let (mut reg, t0, first) = start();
    reg.handle_response(&reply(&first, 100), t0);
    assert!(reg.poll_output().is_none(), "provisional changes nothing");
    reg.handle_response(&challenge(&first, "n1", false), t0 + secs(1));
    let second = sent_now(&mut reg);
    assert_eq!(cseq(&second), 2);
    assert_ne!(branch(&second), branch(&first));
    assert_eq!(second.call_id(), first.call_id());
    assert_eq!(second.from().unwrap().tag(), first.from().unwrap().tag());
    assert_credentials(&second, "Authorization", "n1", 1);
    assert_eq!(reg.state(), &State::Registering);

    let t = t0 + secs(2);
    reg.handle_response(&ok(&second), t);
    assert_eq!(
        reg.state(),
        &State::Registered {
            expires_at: t + secs(3600)
        }
    );
    assert!(reg.poll_output().is_none());
}

#[test]
fn proxy_challenge_is_answered_with_proxy_authorization() {
    let (mut reg, t0, first) = start();
    let mut resp = reply(&first, 407);
    resp.headers
        .push("Proxy-Authenticate", challenge_header("p1", false));
    reg.handle_response(&resp, t0);
    let second = sent_now(&mut reg);
    assert_credentials(&second, "Proxy-Authorization", "p1", 1);
    assert_eq!(header(&second, "Authorization"), None);
    // Then the registrar challenges too: both are answered.
    reg.handle_response(&challenge(&second, "n1", false), t0);
    let third = sent_now(&mut reg);
    assert_credentials(&third, "Authorization", "n1", 1);
    assert_credentials(&third, "Proxy-Authorization", "p1", 2);
}

#[test]
fn wrong_password_backs_off_and_retries_without_stale_credentials() {
    let (mut reg, t0, first) = start();
    reg.handle_response(&challenge(&first, "n1", false), t0);
    let second = sent_now(&mut reg);
    let t = t0 + secs(1);
    reg.handle_response(&challenge(&second, "n1", false), t);
    assert!(reg.poll_output().is_none(), "no third try at once");
    assert_eq!(
        reg.state(),
        &State::Failed {
            retry_at: t + secs(30),
            reason: Failure::BadCredentials
        }
    );
    let (at, retry) = next_sent(&mut reg);
    assert_eq!(at, t + secs(30));
    assert_eq!(cseq(&retry), 3);
    assert_eq!(header(&retry, "Authorization"), None);
    assert_eq!(reg.state(), &State::Registering);
}

#[test]
fn stale_nonce_is_answered_at_once() {
    let (mut reg, t0, first) = start();
    reg.handle_response(&challenge(&first, "n1", false), t0);
    let second = sent_now(&mut reg);
    reg.handle_response(&challenge(&second, "n2", true), t0);
    let third = sent_now(&mut reg);
    assert_credentials(&third, "Authorization", "n2", 1);
    // stale=true even for the nonce just answered is not a wrong password;
    // the count goes on for that nonce.
    reg.handle_response(&challenge(&third, "n2", true), t0);
    let fourth = sent_now(&mut reg);
    assert_credentials(&fourth, "Authorization", "n2", 2);
    reg.handle_response(&ok(&fourth), t0);
    assert!(matches!(reg.state(), State::Registered { .. }));
}

#[test]
fn rechallenged_refresh_just_gets_credentials_again() {
    let (mut reg, t, _) = registered(None);
    let (at, refresh) = next_sent(&mut reg);
    assert_eq!(at, t + secs(3600 - 32));
    // Credentials are sent at once with the known nonce, nc counting on.
    assert_credentials(&refresh, "Authorization", "n1", 2);
    // This registrar wants a fresh nonce for each REGISTER (no stale flag).
    reg.handle_response(&challenge(&refresh, "n2", false), at);
    let again = sent_now(&mut reg);
    assert_credentials(&again, "Authorization", "n2", 1);
    reg.handle_response(&ok(&again), at);
    assert_eq!(
        reg.state(),
        &State::Registered {
            expires_at: at + secs(3600)
        }
    );
}

#[test]
fn endless_fresh_challenges_end_in_failure() {
    let (mut reg, t0, mut req) = start();
    for i in 0..5 {
        reg.handle_response(&challenge(&req, &format!("n{i}"), false), t0);
        req = sent_now(&mut reg);
    }
    reg.handle_response(&challenge(&req, "n5", false), t0);
    assert!(reg.poll_output().is_none());
    assert!(matches!(
        reg.state(),
        State::Failed {
            reason: Failure::TooManyResends,
            ..
        }
    ));
}

#[test]
fn unanswerable_challenge_fails() {
    let (mut reg, t0, first) = start();
    let mut resp = reply(&first, 401);
    resp.headers.push("WWW-Authenticate", "Basic realm=\"x\"");
    reg.handle_response(&resp, t0);
    assert!(matches!(
        reg.state(),
        State::Failed {
            reason: Failure::Challenge(DigestError::NotDigest(_)),
            ..
        }
    ));
}

#[test]
fn interval_too_brief_retries_with_min_expires() {
    let (mut reg, t0, first) = start();
    let mut resp = reply(&first, 423);
    resp.headers.push("Min-Expires", "7200");
    reg.handle_response(&resp, t0);
    let second = sent_now(&mut reg);
    assert_eq!(header(&second, "Expires"), Some("7200"));
    assert_eq!(cseq(&second), 2);
    reg.handle_response(&ok(&second), t0);
    assert_eq!(
        reg.state(),
        &State::Registered {
            expires_at: t0 + secs(7200)
        }
    );
    // Refreshes keep asking for the raised interval.
    let (_, refresh) = next_sent(&mut reg);
    assert_eq!(header(&refresh, "Expires"), Some("7200"));
}

#[test]
fn interval_too_brief_without_a_usable_min_expires_fails() {
    for min in [None, Some("3600"), Some("60"), Some("soon")] {
        let (mut reg, t0, first) = start();
        let mut resp = reply(&first, 423);
        if let Some(m) = min {
            resp.headers.push("Min-Expires", m);
        }
        reg.handle_response(&resp, t0);
        assert!(reg.poll_output().is_none(), "{min:?}");
        assert!(
            matches!(
                reg.state(),
                State::Failed {
                    reason: Failure::Rejected { code: 423, .. },
                    ..
                }
            ),
            "{min:?}: {:?}",
            reg.state()
        );
    }
}

#[test]
fn expiry_from_our_contact_param() {
    let (mut reg, t0, first) = start();
    let mut resp = ok(&first);
    // Another device of the same AOR, then ours as the registrar rewrote it.
    resp.headers
        .push("Contact", "<sip:phone@198.51.100.7>;expires=3000");
    resp.headers
        .push("Contact", "<sip:emonav@192.0.2.9;transport=udp>;expires=60");
    resp.headers.push("Expires", "600");
    reg.handle_response(&resp, t0);
    assert_eq!(
        reg.state(),
        &State::Registered {
            expires_at: t0 + secs(60)
        }
    );
    let (at, _) = next_sent(&mut reg);
    assert_eq!(at, t0 + secs(30), "half of a short interval");
}

#[test]
fn expiry_from_the_expires_header() {
    let (mut reg, t0, first) = start();
    let mut resp = ok(&first);
    resp.headers
        .push("Contact", "<sip:phone@198.51.100.7>;expires=3000");
    resp.headers.push("Expires", "300");
    reg.handle_response(&resp, t0);
    assert_eq!(
        reg.state(),
        &State::Registered {
            expires_at: t0 + secs(300)
        }
    );
    let (at, _) = next_sent(&mut reg);
    assert_eq!(at, t0 + secs(300 - 32), "64·T1 before a long interval ends");
}

#[test]
fn expiry_longer_than_asked_is_capped_and_zero_is_a_failure() {
    let (mut reg, t0, first) = start();
    let mut resp = ok(&first);
    resp.headers.push("Expires", "86400");
    reg.handle_response(&resp, t0);
    assert_eq!(
        reg.state(),
        &State::Registered {
            expires_at: t0 + secs(3600)
        }
    );

    let (mut reg, t0, first) = start();
    let mut resp = ok(&first);
    resp.headers
        .push("Contact", "<sip:emonav@192.0.2.9:5060>;expires=0");
    reg.handle_response(&resp, t0);
    assert!(matches!(
        reg.state(),
        State::Failed {
            reason: Failure::NoBinding,
            ..
        }
    ));
}

#[test]
fn refresh_timing() {
    // (granted, refresh after): half up to 128·T1 = 64 s, then minus 64·T1 = 32 s.
    for (granted, refresh_ms) in [
        (3600, 3_568_000),
        (600, 568_000),
        (65, 33_000),
        (64, 32_000),
        (60, 30_000),
        (1, 500),
    ] {
        let (mut reg, t0, first) = start();
        let mut resp = ok(&first);
        resp.headers.push("Expires", granted.to_string());
        reg.handle_response(&resp, t0);
        let (at, req) = next_sent(&mut reg);
        assert_eq!(
            at - t0,
            Duration::from_millis(refresh_ms),
            "granted {granted}"
        );
        assert_eq!(cseq(&req), 2);
        assert_ne!(branch(&req), branch(&first));
        assert_eq!(req.call_id(), first.call_id());
        assert_eq!(req.from().unwrap().tag(), first.from().unwrap().tag());
        assert_eq!(
            reg.state(),
            &State::Registered {
                expires_at: t0 + secs(granted)
            },
            "still bound while the refresh is out"
        );
    }
}

#[test]
fn refresh_without_answer_lapses_then_fails() {
    let (mut reg, t0, first) = start();
    let mut resp = ok(&first);
    resp.headers.push("Expires", "60");
    reg.handle_response(&resp, t0);
    let (at, _) = next_sent(&mut reg);
    assert_eq!(at, t0 + secs(30));
    // Retransmissions only, until the binding runs out at 60 s …
    while reg.poll_timeout().unwrap() < t0 + secs(60) {
        let (_, r) = next_sent(&mut reg);
        assert_eq!(cseq(&r), 2);
    }
    reg.handle_timeout(t0 + secs(60));
    assert_eq!(reg.state(), &State::Registering);
    // … and Timer F at 30 + 32 s.
    while !matches!(reg.state(), State::Failed { .. }) {
        let at = reg.poll_timeout().unwrap();
        reg.handle_timeout(at);
        while reg.poll_output().is_some() {}
    }
    assert_eq!(
        reg.state(),
        &State::Failed {
            retry_at: t0 + secs(62 + 30),
            reason: Failure::TimedOut
        }
    );
}

#[test]
fn backoff_doubles_to_the_cap_and_resets_on_success() {
    let (mut reg, t0, first) = start();
    let mut req = first;
    let mut now = t0;
    let mut waits = Vec::new();
    for _ in 0..9 {
        reg.handle_response(&reply(&req, 503), now);
        let State::Failed { retry_at, reason } = reg.state().clone() else {
            panic!("{:?}", reg.state())
        };
        assert_eq!(
            reason,
            Failure::Rejected {
                code: 503,
                reason: "Whatever".into()
            }
        );
        waits.push((retry_at - now).as_secs());
        let (at, r) = next_sent(&mut reg);
        assert_eq!(at, retry_at);
        (now, req) = (at, r);
    }
    assert_eq!(waits, [30, 60, 120, 240, 480, 960, 1800, 1800, 1800]);
    reg.handle_response(&ok(&req), now);
    let (at, refresh) = next_sent(&mut reg);
    reg.handle_response(&reply(&refresh, 500), at);
    assert!(matches!(reg.state(), State::Failed { retry_at, .. } if *retry_at == at + secs(30)));
}

#[test]
fn backoff_is_configurable_and_honours_retry_after() {
    let settings = Settings {
        retry_initial: secs(5),
        retry_max: secs(12),
        ..Settings::default()
    };
    let (mut reg, t0, first) = start_with(settings);
    reg.handle_response(&reply(&first, 404), t0);
    let (at, second) = next_sent(&mut reg);
    assert_eq!(at, t0 + secs(5));
    reg.handle_response(&reply(&second, 404), at);
    let (at2, third) = next_sent(&mut reg);
    assert_eq!(at2, at + secs(10));
    reg.handle_response(&reply(&third, 404), at2);
    let (at3, fourth) = next_sent(&mut reg);
    assert_eq!(at3, at2 + secs(12), "capped");
    // Retry-After beyond the back-off is honoured, up to the cap.
    let mut resp = reply(&fourth, 503);
    resp.headers
        .push("Retry-After", "11 (maintenance);duration=60");
    let (mut reg2, t, first2) = start();
    let mut r2 = reply(&first2, 503);
    r2.headers.push("Retry-After", "120");
    reg2.handle_response(&r2, t);
    assert!(matches!(reg2.state(), State::Failed { retry_at, .. } if *retry_at == t + secs(120)));
    reg.handle_response(&resp, at3);
    assert!(matches!(reg.state(), State::Failed { retry_at, .. } if *retry_at == at3 + secs(12)));
}

#[test]
fn timer_f_timeout_backs_off_then_retries_with_a_new_transaction() {
    let (mut reg, t0, first) = start();
    let mut retransmits = Vec::new();
    loop {
        let at = reg.poll_timeout().unwrap();
        reg.handle_timeout(at);
        match reg.poll_output() {
            Some(r) => {
                assert_eq!(r, first, "a retransmission is the same request");
                retransmits.push((at - t0).as_millis());
            }
            None => break,
        }
    }
    assert_eq!(
        retransmits,
        [500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
    );
    assert_eq!(
        reg.state(),
        &State::Failed {
            retry_at: t0 + secs(32 + 30),
            reason: Failure::TimedOut
        }
    );
    // A late answer to the dead transaction changes nothing.
    reg.handle_response(&ok(&first), t0 + secs(40));
    assert!(matches!(reg.state(), State::Failed { .. }));
    let (at, retry) = next_sent(&mut reg);
    assert_eq!(at, t0 + secs(62));
    assert_eq!(cseq(&retry), 2);
    assert_ne!(branch(&retry), branch(&first));
}

#[test]
fn foreign_and_repeated_responses_are_ignored() {
    let (mut reg, t0, first) = start();
    let mut wrong_branch = ok(&first);
    let mut via = wrong_branch.top_via().unwrap();
    via.params.set("branch", Some("z9hG4bKother"));
    wrong_branch.headers.set("Via", via.to_string());
    let mut wrong_cseq = ok(&first);
    wrong_cseq.headers.set("CSeq", "7 REGISTER");
    let mut wrong_method = ok(&first);
    wrong_method.headers.set("CSeq", "1 OPTIONS");
    let mut wrong_call = ok(&first);
    wrong_call.headers.set("Call-ID", "someone-else");
    let mut no_via = ok(&first);
    no_via.headers.remove("Via");
    for r in [wrong_branch, wrong_cseq, wrong_method, wrong_call, no_via] {
        reg.handle_response(&r, t0);
        assert_eq!(reg.state(), &State::Registering);
    }
    reg.handle_response(&challenge(&first, "n1", false), t0);
    let second = sent_now(&mut reg);
    // The 401 retransmitted (old branch) must not count as a second challenge.
    reg.handle_response(&challenge(&first, "n1", false), t0);
    assert!(reg.poll_output().is_none());
    reg.handle_response(&ok(&second), t0);
    let bound = reg.state().clone();
    // A retransmitted 200 is absorbed by the transaction.
    reg.handle_response(&ok(&second), t0 + secs(1));
    assert_eq!(reg.state(), &bound);
}

#[test]
fn unregister_sends_expires_zero_and_stops() {
    let (mut reg, t, last) = registered(None);
    let now = t + secs(100);
    reg.unregister(now);
    let bye = sent_now(&mut reg);
    assert_eq!(header(&bye, "Expires"), Some("0"));
    assert_eq!(header(&bye, "Contact"), Some("<sip:emonav@192.0.2.9:5060>"));
    assert_eq!(cseq(&bye), cseq(&last) + 1);
    assert_credentials(&bye, "Authorization", "n1", 2);
    assert_eq!(reg.state(), &State::Unregistering);
    reg.unregister(now);
    assert!(reg.poll_output().is_none(), "a second call does nothing");
    // Challenged afresh: answered, still with Expires: 0.
    reg.handle_response(&challenge(&bye, "n9", false), now);
    let again = sent_now(&mut reg);
    assert_eq!(header(&again, "Expires"), Some("0"));
    assert_credentials(&again, "Authorization", "n9", 1);
    reg.handle_response(&ok(&again), now);
    assert_eq!(reg.state(), &State::Unregistered);
    // Only Timer K is left, then nothing: no refresh.
    while let Some(at) = reg.poll_timeout() {
        assert!(at <= now + secs(5));
        reg.handle_timeout(at);
        assert!(reg.poll_output().is_none());
    }
}

#[test]
fn unregister_gives_up_on_failure_or_timeout() {
    let (mut reg, t, _) = registered(None);
    reg.unregister(t);
    let bye = sent_now(&mut reg);
    reg.handle_response(&reply(&bye, 500), t);
    assert_eq!(reg.state(), &State::Unregistered);

    let (mut reg, t, _) = registered(None);
    reg.unregister(t);
    while reg.state() != &State::Unregistered {
        let at = reg.poll_timeout().expect("timer until the end");
        assert!(at <= t + secs(32));
        reg.handle_timeout(at);
        while reg.poll_output().is_some() {}
    }
    assert_eq!(reg.poll_timeout(), None);

    // Also from a failed state: the retry is cancelled.
    let (mut reg, t0, first) = start();
    reg.handle_response(&reply(&first, 403), t0);
    reg.unregister(t0);
    let bye = sent_now(&mut reg);
    assert_eq!(header(&bye, "Expires"), Some("0"));
    reg.handle_response(&ok(&bye), t0);
    assert_eq!(reg.state(), &State::Unregistered);
}

#[test]
fn debug_output_hides_the_password() {
    let (reg, _, _) = start();
    let shown = format!("{reg:?}");
    assert!(!shown.contains("secret"), "{shown}");
    assert!(shown.contains("<hidden>"));
}

#[test]
fn arbitrary_responses_never_panic() {
    let mut rng = fastrand::Rng::with_seed(5);
    let junk = [
        ("WWW-Authenticate", "Digest realm=\"r\", nonce=\"\\"),
        ("WWW-Authenticate", "Digest realm=r, nonce=n, stale=true"),
        ("Proxy-Authenticate", "Digest nonce=\"n\""),
        ("Min-Expires", "99999999999999"),
        ("Min-Expires", "4294967295"),
        ("Expires", "-1"),
        ("Expires", "4294967295"),
        ("Retry-After", "18446744073709551615"),
        ("Contact", "<sip:emonav@192.0.2.9:5060>;expires=4294967295"),
        ("Contact", "*"),
        ("Contact", "<garbage"),
    ];
    for _ in 0..300 {
        let t0 = Instant::now();
        let mut reg = Registration::new(account(), t0);
        let mut now = t0;
        for _ in 0..20 {
            let Some(req) = reg.poll_output() else {
                match reg.poll_timeout() {
                    Some(at) => {
                        now = at;
                        reg.handle_timeout(at);
                    }
                    None => break,
                }
                continue;
            };
            let code = [100, 200, 202, 401, 407, 423, 403, 503][rng.usize(..8)];
            let mut resp = reply(&req, code);
            for _ in 0..rng.usize(0..3) {
                let (n, v) = junk[rng.usize(..junk.len())];
                resp.headers.push(n, v);
            }
            reg.handle_response(&resp, now);
            if rng.u8(..) < 10 {
                reg.unregister(now);
            }
        }
    }
}

#[test]
fn over_tcp_the_register_is_not_retransmitted_and_timer_f_still_ends_it() {
    let t0 = Instant::now();
    let mut a = account();
    a.contact = Uri::parse("sip:emonav@192.0.2.9:5060;transport=tcp").unwrap();
    let mut reg = Registration::with_settings(a, Settings::default(), t0);
    let first = reg.poll_output().expect("first REGISTER");
    assert!(header(&first, "Via").unwrap().starts_with("SIP/2.0/TCP"));
    // Only Timer F (64·T1) is armed: no Timer E retransmission before it.
    assert_eq!(reg.poll_timeout(), Some(t0 + secs(32)));
    reg.handle_timeout(t0 + secs(32));
    assert!(reg.poll_output().is_none(), "nothing resent over TCP");
    assert!(matches!(
        reg.state(),
        State::Failed {
            reason: Failure::TimedOut,
            ..
        }
    ));
}
