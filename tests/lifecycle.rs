//! Drain and reload, as an init system and an operator use them: SIGTERM
//! while a real SIPp call is in progress, a second signal, SIGHUP and
//! `POST /reload` with a changed and with a broken profile.

#[path = "support/sipp.rs"]
mod sipp;
mod support;

use std::time::Duration;

use emonav_sip::message::Message;
use sipp::{refer_targets, Sipp};
use support::{Emonav, Uac};

const S: Duration = Duration::from_secs(1);

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An out-of-dialog OPTIONS (a proxy's keep-alive probe); its final response.
fn options(emonav: &Emonav) -> emonav_sip::message::Response {
    let mut probe = Uac::new(emonav.sip);
    let me = probe.addr();
    probe.send_raw(&format!(
        "OPTIONS sip:emonav@{r} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKopt{n:x};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@{me}>;tag=p1\r\nTo: <sip:emonav@{r}>\r\n\
         Call-ID: opt-{n:x}@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        r = emonav.sip,
        n = fastrand::u64(..)
    ));
    match probe.recv(5 * S) {
        Some(Message::Response(r)) => r,
        other => panic!("no response to OPTIONS: {other:?}"),
    }
}

/// The rule that sends agitated callers to another queue than the default's.
const PRIORITY_RULE: &str = "\n[[policy.rules]]\nlabel = \"agitated\"\narousal_min = 0.5\n\
                             queue = \"sip:priority@127.0.0.1:5070\"\n";

#[test]
fn sigterm_lets_the_call_in_progress_be_transferred_refuses_new_ones_then_unregisters() {
    let port = free_port();
    let registrar = Sipp::server("uas_registrar.xml", port);
    // Give SIPp time to bind; a REGISTER lost before that is retransmitted anyway.
    std::thread::sleep(Duration::from_millis(300));
    let mut emonav = Emonav::start(&format!(
        "[[registration]]\nregistrar = \"sip:127.0.0.1:{port}\"\naor = \"sip:emonav@127.0.0.1\"\n\
         username = \"emonav\"\npassword = \"secret\"\nexpires = 120\n\
         [shutdown]\ndrain_timeout_s = 20\n"
    ));
    emonav
        .wait_log(": registered", 10 * S)
        .expect("emonav did not register");
    // Readiness follows the registration as a probe sees it: soon after.
    let t0 = std::time::Instant::now();
    while emonav.http("GET", "/readyz").0 != "HTTP/1.1 200 OK" {
        assert!(t0.elapsed() < 2 * S, "/readyz not 200 once registered");
        std::thread::sleep(Duration::from_millis(20));
    }

    let caller = Sipp::call(emonav.sip, "uac_refer.xml");
    emonav
        .wait_log("call started", 10 * S)
        .expect("SIPp's call did not start");
    emonav.signal("TERM");
    emonav
        .wait_log("draining", 5 * S)
        .expect("no drain on SIGTERM");
    assert_eq!(
        emonav.http("GET", "/readyz"),
        (
            "HTTP/1.1 503 Service Unavailable".into(),
            "draining\n".into()
        )
    );

    // A new call and a keep-alive probe are refused, pointing elsewhere.
    let mut late = Uac::new(emonav.sip);
    let offer = late.g711_offer();
    late.send_invite(&offer);
    let refused = late.invite_final(5 * S);
    late.ack(false);
    assert_eq!(refused.code, 503);
    assert_eq!(refused.headers.get("Retry-After"), Some("20"));
    let probe = options(&emonav);
    assert_eq!(
        (probe.code, probe.headers.get("Retry-After")),
        (503, Some("20"))
    );
    // Both refusals counted; the account stays registered while draining.
    let (_, metrics) = emonav.http("GET", "/metrics");
    for line in [
        "emonav_sip_rejected_total{reason=\"draining\"} 2\n",
        "emonav_registration_up{account=\"sip:emonav@127.0.0.1\"} 1\n",
    ] {
        assert!(metrics.contains(line), "{line}not in:\n{metrics}");
    }

    // The call in progress reaches its decision and transfer.
    let (status, log) = caller.finish(30 * S);
    assert!(status.success(), "sipp failed: {status:?}\n{log}");
    assert_eq!(refer_targets(&log), ["sip:deescalation@127.0.0.1:5070"]);
    let ev = emonav.next_event(5 * S);
    assert_eq!(ev["outcome"], "transferred", "{ev}");
    assert!(
        emonav.next_event_opt(Duration::from_millis(200)).is_none(),
        "the refused INVITE started a call"
    );

    // Then the binding is removed and emonav exits 0.
    let exit = emonav
        .wait_exit(10 * S)
        .expect("emonav did not exit after the drain");
    assert!(exit.success(), "{exit:?}");
    let lines = emonav.drain_log();
    let at = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in the log"))
    };
    assert!(at("drained: every call in progress has ended") < at("unregistering"));
    let (status, log) = registrar.finish(10 * S);
    assert!(status.success(), "registrar sipp failed: {status:?}\n{log}");
    assert!(log.contains("UNREGISTERED"), "{log}");
}

#[test]
fn a_second_signal_exits_at_once_without_waiting_for_the_call() {
    let mut emonav = Emonav::start("");
    let _caller = Sipp::call(emonav.sip, "uac_refer.xml");
    emonav
        .wait_log("call started", 10 * S)
        .expect("SIPp's call did not start");
    emonav.signal("TERM");
    emonav.wait_log("draining", 5 * S).expect("no drain");
    emonav.signal("INT");
    let exit = emonav
        .wait_exit(S)
        .expect("emonav did not exit within 1 s of the second signal");
    assert!(exit.success(), "{exit:?}");
    assert!(
        emonav.next_event_opt(Duration::ZERO).is_none(),
        "the call had time to end: the test proves nothing"
    );
}

#[test]
fn sighup_changes_the_queue_of_the_next_call_not_of_the_call_in_progress() {
    let emonav = Emonav::start("");
    let first = Sipp::call(emonav.sip, "uac_refer.xml");
    emonav
        .wait_log("call started", 10 * S)
        .expect("SIPp's call did not start");
    let mut text = std::fs::read_to_string(&emonav.profile).unwrap();
    text.push_str(PRIORITY_RULE);
    std::fs::write(&emonav.profile, text).unwrap();
    emonav.signal("HUP");
    let line = emonav
        .wait_log("profile reloaded", 5 * S)
        .expect("no reload on SIGHUP");
    assert!(line.contains("1 rules"), "{line}");
    assert!(
        emonav.next_event_opt(Duration::ZERO).is_none(),
        "the first call ended before the reload: the test proves nothing"
    );

    let (status, log) = first.finish(30 * S);
    assert!(status.success(), "sipp failed: {status:?}\n{log}");
    assert_eq!(refer_targets(&log), ["sip:deescalation@127.0.0.1:5070"]);
    assert_eq!(emonav.next_event(5 * S)["outcome"], "transferred");

    let (status, log) = Sipp::call(emonav.sip, "uac_refer.xml").finish(30 * S);
    assert!(status.success(), "sipp failed: {status:?}\n{log}");
    assert_eq!(refer_targets(&log), ["sip:priority@127.0.0.1:5070"]);
    assert_eq!(
        emonav.next_event(5 * S)["queue"],
        "sip:priority@127.0.0.1:5070"
    );
}

#[test]
fn a_broken_profile_is_refused_with_check_configs_error_and_the_running_one_kept() {
    let emonav = Emonav::start("");
    let good = std::fs::read_to_string(&emonav.profile).unwrap();
    std::fs::write(
        &emonav.profile,
        format!("{good}\n[policy]\nconfidence_treshold = 0.5\n"),
    )
    .unwrap();
    let path = emonav.profile.to_str().unwrap();
    let (ok, _, err) = support::cli(&["check-config", "--profile", path]);
    assert!(!ok);
    let expected = err
        .lines()
        .next()
        .unwrap()
        .strip_prefix("emonav: ")
        .unwrap()
        .to_string();
    assert!(
        expected.contains("confidence_treshold") || expected.contains(path),
        "{expected}"
    );

    emonav.signal("HUP");
    let line = emonav
        .wait_log("reload refused", 5 * S)
        .expect("the broken profile was not refused");
    assert!(line.contains(&expected), "{line}\nexpected: {expected}");
    let (status, body) = emonav.http("POST", "/reload");
    assert_eq!(status, "HTTP/1.1 422 Unprocessable Content", "{body}");
    assert!(body.starts_with(&expected), "{body}");

    let (status, log) = Sipp::call(emonav.sip, "uac_refer.xml").finish(30 * S);
    assert!(status.success(), "sipp failed: {status:?}\n{log}");
    assert_eq!(refer_targets(&log), ["sip:deescalation@127.0.0.1:5070"]);
    assert_eq!(emonav.next_event(5 * S)["outcome"], "transferred");

    // Repaired and reloaded over HTTP: the next call follows the new rule.
    std::fs::write(&emonav.profile, format!("{good}{PRIORITY_RULE}")).unwrap();
    assert_eq!(
        emonav.http("GET", "/reload").0,
        "HTTP/1.1 405 Method Not Allowed"
    );
    let (status, body) = emonav.http("POST", "/reload");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(body.contains("1 rules"), "{body}");
    let (status, log) = Sipp::call(emonav.sip, "uac_refer.xml").finish(30 * S);
    assert!(status.success(), "sipp failed: {status:?}\n{log}");
    assert_eq!(refer_targets(&log), ["sip:priority@127.0.0.1:5070"]);
}

#[test]
fn readyz_is_503_until_the_registrar_has_accepted_the_binding() {
    // A registrar that never answers: the REGISTER goes unanswered.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let emonav = Emonav::start(&format!(
        "[[registration]]\nregistrar = \"sip:127.0.0.1:{port}\"\naor = \"sip:emonav@127.0.0.1\"\n\
         username = \"emonav\"\npassword = \"secret\"\n"
    ));
    let mut buf = [0u8; 4096];
    silent.set_read_timeout(Some(5 * S)).unwrap();
    let (n, _) = silent.recv_from(&mut buf).expect("no REGISTER");
    assert!(buf[..n].starts_with(b"REGISTER "));
    assert_eq!(
        emonav.http("GET", "/readyz"),
        (
            "HTTP/1.1 503 Service Unavailable".into(),
            "not registered\n".into()
        )
    );
    assert_eq!(
        emonav.http("GET", "/healthz").1,
        "ok\n",
        "alive all the same"
    );
}

#[test]
fn the_drain_timeout_bounds_the_wait_for_calls_in_progress() {
    let mut emonav = Emonav::start("[shutdown]\ndrain_timeout_s = 1\n");
    // A caller that sends no audio: no decision before the 3 s deadline.
    let mut uac = Uac::new(emonav.sip);
    let offer = uac.g711_offer();
    uac.send_invite(&offer);
    assert_eq!(uac.invite_final(5 * S).code, 200);
    uac.ack(true);
    let t0 = std::time::Instant::now();
    emonav.signal("TERM");
    let exit = emonav
        .wait_exit(5 * S)
        .expect("emonav did not exit after the drain timeout");
    let waited = t0.elapsed();
    assert!(exit.success(), "{exit:?}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(2500),
        "{waited:?}"
    );
    assert!(
        uac.expect_request("REFER", Duration::from_millis(100))
            .is_none(),
        "the call was decided before the drain timeout: the test proves nothing"
    );
    assert!(
        emonav
            .drain_log()
            .iter()
            .any(|l| l.contains("drain timeout: calls in progress abandoned")
                && l.contains("calls=1"))
    );
}
