//! SIPp, a real independent SIP peer, drives the real binary: the scenarios a
//! tester runs by hand (tests/sipp/README.md) must pass here too.

mod support;

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{root, Emonav};

/// A UDP port free at the time of asking.
fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Run {
    status: std::process::ExitStatus,
    log: String,
}

/// A TCP port free at the time of asking.
fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Run a scenario file once against `emonav`; `pcap` replaces the scenario's audio.
fn sipp(emonav: &Emonav, scenario: &str, pcap: Option<&str>) -> Run {
    sipp_on(emonav, scenario, pcap, false)
}

/// [`sipp`] over UDP, or over TCP (`-t t1`: one connection for the call).
fn sipp_on(emonav: &Emonav, scenario: &str, pcap: Option<&str>, tcp: bool) -> Run {
    let dir = std::env::temp_dir().join(format!(
        "emonav-sipp-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut xml = std::fs::read_to_string(root().join("tests/sipp").join(scenario)).unwrap();
    let fixtures = root().join("tests/fixtures");
    let audio = fixtures.join(pcap.unwrap_or("agitated-pcmu.pcap"));
    xml = xml.replace("../fixtures/agitated-pcmu.pcap", audio.to_str().unwrap());
    xml = xml.replace("../fixtures/agitated-opus.pcap", audio.to_str().unwrap());
    let sf = dir.join(scenario);
    std::fs::write(&sf, xml).unwrap();
    let log = dir.join("actions.log");
    let media = 30_000 + 4 * fastrand::u16(0..5_000);
    let (target, transport, port) = if tcp {
        let addr = emonav.sip_tcp.expect("emonav listens on TCP");
        (addr, "t1", free_tcp_port())
    } else {
        (emonav.sip, "u1", free_port())
    };
    let status = Command::new("sipp")
        .arg(target.to_string())
        .args(["-sf"])
        .arg(&sf)
        .args(["-t", transport])
        .args(["-m", "1", "-l", "1", "-i", "127.0.0.1", "-mi", "127.0.0.1"])
        .args(["-p", &port.to_string(), "-mp", &media.to_string()])
        .args([
            "-timeout",
            "30",
            "-timeout_error",
            "-nostdin",
            "-trace_logs",
            "-log_file",
        ])
        .arg(&log)
        .args(["-trace_err", "-error_file"])
        .arg(dir.join("errors.log"))
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("sipp is installed (Debian package sip-tester; scripts/test.sh installs it)");
    let errors = std::fs::read_to_string(dir.join("errors.log")).unwrap_or_default();
    if !status.success() {
        eprintln!("sipp errors:\n{errors}");
    }
    Run {
        status,
        log: std::fs::read_to_string(&log).unwrap_or_default(),
    }
}

/// Start SIPp as a server (`uas` side, no remote host) on `port` with a
/// scenario; returns the process and the folder of its logs.
fn sipp_server(scenario: &str, port: u16) -> (std::process::Child, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "emonav-sipp-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let sf = root().join("tests/sipp").join(scenario);
    let child = Command::new("sipp")
        .arg("-sf")
        .arg(&sf)
        .args(["-m", "1", "-i", "127.0.0.1", "-p", &port.to_string()])
        .args([
            "-timeout",
            "30",
            "-timeout_error",
            "-nostdin",
            "-trace_logs",
            "-log_file",
        ])
        .arg(dir.join("actions.log"))
        .args(["-trace_err", "-error_file"])
        .arg(dir.join("errors.log"))
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sipp is installed");
    (child, dir)
}

/// Wait for a child to exit, killing it after `timeout`.
fn wait_child(child: &mut std::process::Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            return child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn refer_targets(log: &str) -> Vec<&str> {
    log.lines()
        .filter_map(|l| l.strip_prefix("REFER-TO: "))
        .collect()
}

#[test]
fn sipp_agitated_caller_is_referred_to_deescalation() {
    let emonav = Emonav::start("");
    let run = sipp(&emonav, "uac_refer.xml", None);
    assert!(run.status.success(), "sipp failed: {:?}", run.status);
    assert_eq!(refer_targets(&run.log), ["sip:deescalation@127.0.0.1:5070"]);
    let ev = emonav.next_event(Duration::from_secs(5));
    assert_eq!(ev["outcome"], "transferred");
    assert!(ev["answer_to_refer_ms"].as_u64().unwrap() <= 3500, "{ev}");
}

#[test]
fn sipp_over_tcp_agitated_caller_is_referred_to_deescalation() {
    let emonav = Emonav::start("");
    let run = sipp_on(&emonav, "uac_refer.xml", None, true);
    assert!(run.status.success(), "sipp failed: {:?}", run.status);
    assert_eq!(refer_targets(&run.log), ["sip:deescalation@127.0.0.1:5070"]);
    let ev = emonav.next_event(Duration::from_secs(5));
    assert_eq!(ev["outcome"], "transferred");
    assert!(emonav
        .drain_log()
        .iter()
        .any(|l| l.contains("call started") && l.contains("transport=tcp")));
}

#[test]
fn sipp_calm_caller_is_referred_to_standard() {
    let emonav = Emonav::start("");
    let run = sipp(&emonav, "uac_refer.xml", Some("calm-pcmu.pcap"));
    assert!(run.status.success(), "sipp failed: {:?}", run.status);
    assert_eq!(refer_targets(&run.log), ["sip:standard@127.0.0.1:5070"]);
    assert_eq!(emonav.next_event(Duration::from_secs(5))["emotion"], "calm");
}

#[test]
fn sipp_calm_caller_on_alaw_is_referred_to_standard() {
    // PCMA only: take the offer's PCMU out of our preferences.
    let emonav = Emonav::start("[media]\ncodecs = [\"pcma\"]\n");
    let run = sipp(&emonav, "uac_refer.xml", Some("calm-pcma.pcap"));
    assert!(run.status.success(), "sipp failed: {:?}", run.status);
    assert_eq!(refer_targets(&run.log), ["sip:standard@127.0.0.1:5070"]);
    assert_eq!(emonav.next_event(Duration::from_secs(5))["codec"], "pcma");
}

#[test]
fn sipp_declined_transfer_falls_back_to_the_default_queue() {
    let emonav = Emonav::start("");
    let run = sipp(&emonav, "uac_refer_decline.xml", None);
    assert!(run.status.success(), "sipp failed: {:?}", run.status);
    assert_eq!(
        refer_targets(&run.log),
        [
            "sip:deescalation@127.0.0.1:5070",
            "sip:default@127.0.0.1:5070"
        ]
    );
    assert_eq!(
        emonav.next_event(Duration::from_secs(5))["outcome"],
        "transferred_to_fallback"
    );
}

#[test]
fn sipp_cancel_before_answer() {
    let emonav = Emonav::start("[sip]\nanswer_delay_ms = 3000\n");
    let run = sipp(&emonav, "uac_cancel.xml", None);
    assert!(run.status.success(), "sipp failed: {:?}", run.status);
    assert_eq!(
        emonav.next_event(Duration::from_secs(5))["outcome"],
        "cancelled"
    );
}

#[test]
fn sipp_registrar_challenges_and_emonav_registers_then_unregisters_on_sigterm() {
    let port = free_port();
    let (mut registrar, dir) = sipp_server("uas_registrar.xml", port);
    // Give SIPp time to bind; a REGISTER lost before that is retransmitted anyway.
    std::thread::sleep(Duration::from_millis(300));
    let mut emonav = Emonav::start(&format!(
        "[[registration]]\nregistrar = \"sip:127.0.0.1:{port}\"\naor = \"sip:emonav@127.0.0.1\"\n\
         username = \"emonav\"\npassword = \"secret\"\nexpires = 120\n"
    ));
    let line = emonav
        .wait_log(": registered", Duration::from_secs(10))
        .expect("emonav did not register");
    assert!(
        line.contains("expires_in_s=59") || line.contains("expires_in_s=60"),
        "{line}"
    );
    let status = emonav
        .terminate(Duration::from_secs(5))
        .expect("emonav did not exit within 5 s of SIGTERM");
    assert!(status.success(), "{status:?}");
    let sipp_status = wait_child(&mut registrar, Duration::from_secs(10));
    let log = std::fs::read_to_string(dir.join("actions.log")).unwrap_or_default();
    if !sipp_status.success() {
        eprintln!(
            "sipp errors:\n{}",
            std::fs::read_to_string(dir.join("errors.log")).unwrap_or_default()
        );
    }
    assert!(sipp_status.success(), "sipp failed: {sipp_status:?}\n{log}");
    assert!(log.contains("REGISTERED: sip:emonav@127.0.0.1:"), "{log}");
    assert!(log.contains("UNREGISTERED"), "{log}");
}

#[test]
fn sipp_challenged_refer_and_bye_are_resent_with_credentials() {
    let emonav = Emonav::start("[sip]\nauth_username = \"emonav\"\nauth_password = \"secret\"\n");
    let run = sipp(&emonav, "uac_refer_auth.xml", None);
    assert!(
        run.status.success(),
        "sipp failed: {:?}\n{}",
        run.status,
        run.log
    );
    assert_eq!(refer_targets(&run.log), ["sip:deescalation@127.0.0.1:5070"]);
    assert!(run.log.contains("PROXY-AUTHORIZATION: "), "{}", run.log);
    assert!(run.log.contains("BYE AUTHORISED"), "{}", run.log);
    let ev = emonav.next_event(Duration::from_secs(5));
    assert_eq!(ev["outcome"], "transferred");
    assert_eq!(ev["refer_attempts"][0]["response"], 202);
}

#[test]
fn sipp_agitated_opus_caller_is_referred_to_deescalation() {
    let emonav = Emonav::start("");
    let run = sipp(&emonav, "uac_refer_opus.xml", Some("agitated-opus.pcap"));
    assert!(run.status.success(), "sipp failed: {:?}", run.status);
    assert_eq!(refer_targets(&run.log), ["sip:deescalation@127.0.0.1:5070"]);
    let ev = emonav.next_event(Duration::from_secs(5));
    assert_eq!(
        (&ev["codec"], &ev["outcome"]),
        (&"opus".into(), &"transferred".into()),
        "{ev}"
    );
    assert_eq!(ev["rtp"]["malformed"], 0, "{ev}");
}

#[test]
fn sipp_calm_opus_caller_is_referred_to_standard() {
    let emonav = Emonav::start("");
    let run = sipp(&emonav, "uac_refer_opus.xml", Some("calm-opus.pcap"));
    assert!(run.status.success(), "sipp failed: {:?}", run.status);
    assert_eq!(refer_targets(&run.log), ["sip:standard@127.0.0.1:5070"]);
    let ev = emonav.next_event(Duration::from_secs(5));
    assert_eq!(
        (&ev["codec"], &ev["emotion"]),
        (&"opus".into(), &"calm".into()),
        "{ev}"
    );
}

#[test]
fn sipp_hold_and_unhold_by_reinvite_before_the_transfer() {
    let emonav = Emonav::start("");
    let run = sipp(&emonav, "uac_reinvite_hold.xml", None);
    assert!(
        run.status.success(),
        "sipp failed: {:?}\n{}",
        run.status,
        run.log
    );
    assert!(run.log.contains("HOLD-ANSWER: recvonly"), "{}", run.log);
    assert!(run.log.contains("UNHOLD-ANSWER: sendrecv"), "{}", run.log);
    assert_eq!(refer_targets(&run.log), ["sip:deescalation@127.0.0.1:5070"]);
    let ev = emonav.next_event(Duration::from_secs(5));
    assert_eq!(ev["outcome"], "transferred", "{ev}");
    // The 4 s hold does not count against the 3 s decision deadline.
    assert!(ev["answer_to_refer_ms"].as_u64().unwrap() >= 4000, "{ev}");
}

#[test]
fn sipp_retransmitted_invite_is_one_call() {
    let emonav = Emonav::start("[sip]\nanswer_delay_ms = 1000\n");
    let run = sipp(&emonav, "uac_invite_retrans.xml", None);
    assert!(
        run.status.success(),
        "sipp failed: {:?}\n{}",
        run.status,
        run.log
    );
    assert_eq!(refer_targets(&run.log), ["sip:deescalation@127.0.0.1:5070"]);
    assert_eq!(
        emonav.next_event(Duration::from_secs(5))["outcome"],
        "transferred"
    );
    assert!(
        emonav.next_event_opt(Duration::from_secs(2)).is_none(),
        "a second call was started"
    );
    let (_, metrics) = emonav.http_get("/metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("emonav_calls_started_total") && l.ends_with(" 1")),
        "{metrics}"
    );
}

#[test]
fn sipp_keypad_zero_sends_the_caller_to_the_operator() {
    // SIPp's own RFC 4733 recording of digit 0 (telephone-event, PT 101, as
    // uac_refer.xml offers it), shipped with the sip-tester package.
    let dtmf = "/usr/share/sip-tester/dtmf_2833_0.pcap";
    assert!(
        std::path::Path::new(dtmf).exists(),
        "{dtmf} comes with SIPp (Debian package sip-tester)"
    );
    let emonav = Emonav::start(
        "[[policy.dtmf]]\ndigit = \"0\"\nlabel = \"operator\"\nqueue = \"sip:operator@127.0.0.1:5070\"\n",
    );
    let run = sipp(&emonav, "uac_refer.xml", Some(dtmf));
    assert!(run.status.success(), "sipp failed: {:?}", run.status);
    assert_eq!(refer_targets(&run.log), ["sip:operator@127.0.0.1:5070"]);
    let ev = emonav.next_event(Duration::from_secs(5));
    assert_eq!(ev["decision_reason"], "dtmf", "{ev}");
    assert_eq!(ev["outcome"], "transferred");
    assert!(ev["answer_to_refer_ms"].as_u64().unwrap() < 1000, "{ev}");
}
