//! Kamailio, a real SIP proxy and registrar, in front of the real binary on
//! loopback: emonav registers to it with digest authentication, SIPp calls
//! emonav's address of record through it, and the transfer (REFER, NOTIFY,
//! BYE) follows the Record-Route set through the proxy. The configuration is
//! tests/kamailio/kamailio.cfg (see tests/kamailio/README.md); Kamailio is the
//! Debian package `kamailio` (scripts/test.sh installs it).

#[path = "support/kamailio.rs"]
mod kamailio_proc;
mod support;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kamailio_proc::{free_port, temp_dir, Kamailio};
use support::{root, Emonav};

/// emonav with an account on `kamailio`, plus `extra` profile TOML.
fn emonav_registered_to(kamailio: &Kamailio, password: &str, extra: &str) -> Emonav {
    Emonav::start(&format!(
        "{extra}[[registration]]\nregistrar = \"sip:{k}\"\naor = \"sip:emonav@127.0.0.1\"\n\
         username = \"emonav\"\npassword = \"{password}\"\nexpires = 120\n",
        k = kamailio.addr
    ))
}

/// Kamailio (with `defines`) and emonav (`extra` profile TOML) registered to it.
fn registered(defines: &[&str], extra: &str) -> (Kamailio, Emonav) {
    let kamailio = Kamailio::start_with(defines);
    let emonav = emonav_registered_to(&kamailio, "secret", extra);
    assert!(
        emonav
            .wait_log(": registered", Duration::from_secs(10))
            .is_some(),
        "emonav did not register to Kamailio\n{}",
        kamailio.log_text()
    );
    (kamailio, emonav)
}

struct Run {
    status: std::process::ExitStatus,
    log: String,
    errors: String,
}

/// Run `scenario` as a caller through the proxy, playing the agitated
/// fixture; fails with SIPp's and Kamailio's logs unless SIPp exits 0, and
/// returns the run with that context for further assertions.
fn call_through(kamailio: &Kamailio, scenario: &str) -> (Run, String) {
    let run = sipp(kamailio.addr, scenario, "agitated-pcmu.pcap");
    let context = format!(
        "SIPp log:\n{}\nSIPp errors:\n{}\nKamailio log:\n{}",
        run.log,
        run.errors,
        kamailio.log_text()
    );
    assert!(
        run.status.success(),
        "sipp failed: {:?}\n{context}",
        run.status
    );
    (run, context)
}

/// Run a SIPp scenario once as a caller towards `remote`.
fn sipp(remote: SocketAddr, scenario: &str, pcap: &str) -> Run {
    let dir = temp_dir("sipp");
    let mut xml = std::fs::read_to_string(root().join("tests/sipp").join(scenario)).unwrap();
    let audio = root().join("tests/fixtures").join(pcap);
    xml = xml.replace("../fixtures/agitated-pcmu.pcap", audio.to_str().unwrap());
    let sf = dir.join(scenario);
    std::fs::write(&sf, xml).unwrap();
    let log = dir.join("actions.log");
    let media = 30_000 + 4 * fastrand::u16(0..5_000);
    let status = Command::new("sipp")
        .arg(remote.to_string())
        .arg("-sf")
        .arg(&sf)
        .args(["-m", "1", "-l", "1", "-i", "127.0.0.1", "-mi", "127.0.0.1"])
        .args(["-p", &free_port().to_string(), "-mp", &media.to_string()])
        .args(["-timeout", "30", "-timeout_error", "-nostdin"])
        .args(["-trace_logs", "-log_file"])
        .arg(&log)
        .args(["-trace_msg", "-message_file"])
        .arg(dir.join("messages.log"))
        .args(["-trace_err", "-error_file"])
        .arg(dir.join("errors.log"))
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("sipp is installed (Debian package sip-tester; scripts/test.sh installs it)");
    let mut errors = std::fs::read_to_string(dir.join("errors.log")).unwrap_or_default();
    if !status.success() {
        errors.push_str("\n--- SIPp messages ---\n");
        errors.push_str(&std::fs::read_to_string(dir.join("messages.log")).unwrap_or_default());
    }
    Run {
        status,
        log: std::fs::read_to_string(&log).unwrap_or_default(),
        errors,
    }
}

/// Values of `KEY: value` lines in a SIPp -trace_logs file.
fn logged<'a>(log: &'a str, key: &str) -> Vec<&'a str> {
    let prefix = format!("{key}: ");
    log.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .collect()
}

#[test]
fn kamailio_registers_emonav_and_routes_the_call_and_the_transfer_through_itself() {
    let kamailio = Kamailio::start();
    let mut emonav = emonav_registered_to(&kamailio, "secret", "");
    let line = emonav.wait_log(": registered", Duration::from_secs(10));
    assert!(
        line.is_some(),
        "emonav did not register to Kamailio\n{}",
        kamailio.log_text()
    );
    let line = line.unwrap();
    // The granted 120 s, less the time the answer took.
    assert!(
        line.contains("expires_in_s=119") || line.contains("expires_in_s=120"),
        "{line}"
    );
    assert!(
        kamailio.wait_log(
            "registered sip:emonav@127.0.0.1 at ",
            Duration::from_secs(2)
        ),
        "{}",
        kamailio.log_text()
    );

    let (run, context) = call_through(&kamailio, "uac_refer_via_proxy.xml");
    assert_eq!(
        logged(&run.log, "REFER-TO"),
        ["sip:deescalation@127.0.0.1:5070"],
        "{context}"
    );
    // Kamailio record-routed the INVITE (its address, loose routing) ...
    let rr = logged(&run.log, "INVITE-RR");
    let kam = format!("sip:{};lr", kamailio.addr);
    assert!(
        rr.len() == 1 && rr[0].contains(&kam),
        "{rr:?} lacks {kam}\n{context}"
    );
    // ... and emonav's REFER and BYE came through it: its Via is on top.
    let kam_via = format!("SIP/2.0/UDP {};", kamailio.addr);
    for key in ["REFER-VIA", "BYE-VIA"] {
        let via = logged(&run.log, key);
        assert!(
            via.len() == 1 && via[0].contains(&kam_via),
            "{key} {via:?} is not Kamailio's ({kam_via})\n{context}"
        );
    }
    let ev = emonav.next_event(Duration::from_secs(5));
    assert_eq!(ev["outcome"], "transferred", "{ev}\n{context}");
    assert_eq!(ev["refer_attempts"][0]["response"], 202, "{ev}");
    for method in ["ACK", "REFER", "NOTIFY", "BYE"] {
        let line = format!("in-dialog {method} loose-routed");
        assert!(
            kamailio.wait_log(&line, Duration::from_secs(2)),
            "{line}\n{context}"
        );
    }

    // On SIGTERM emonav removes its binding, and Kamailio confirms it.
    let status = emonav
        .terminate(Duration::from_secs(5))
        .expect("emonav did not exit within 5 s of SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(
        emonav
            .wait_log(": unregistered", Duration::from_secs(2))
            .is_some(),
        "no un-REGISTER confirmed\n{}",
        kamailio.log_text()
    );
}

#[test]
fn kamailio_refuses_a_wrong_password_and_has_no_binding_for_the_call() {
    let kamailio = Kamailio::start();
    let emonav = emonav_registered_to(&kamailio, "wrong", "");
    let line = emonav.wait_log("registration failed", Duration::from_secs(10));
    assert!(
        line.is_some(),
        "emonav did not give up on the wrong password\n{}",
        kamailio.log_text()
    );
    assert!(!kamailio.log_text().contains("registered sip:emonav"));
}

#[test]
fn kamailio_carries_a_declined_transfer_and_the_fallback_refer() {
    // The plain scenario works through the proxy as is: the proxy looks the
    // Request-URI's user up, and [routes] carries the Record-Route.
    let (kamailio, emonav) = registered(&[], "");
    let (run, context) = call_through(&kamailio, "uac_refer_decline.xml");
    assert_eq!(
        logged(&run.log, "REFER-TO"),
        [
            "sip:deescalation@127.0.0.1:5070",
            "sip:default@127.0.0.1:5070"
        ],
        "{context}"
    );
    let ev = emonav.next_event(Duration::from_secs(5));
    assert_eq!(ev["outcome"], "transferred_to_fallback", "{ev}\n{context}");
}

#[test]
fn kamailio_relays_a_cancel_before_the_answer() {
    let (kamailio, emonav) = registered(&[], "[sip]\nanswer_delay_ms = 3000\n");
    let (_, context) = call_through(&kamailio, "uac_cancel.xml");
    let ev = emonav.next_event(Duration::from_secs(5));
    assert_eq!(ev["outcome"], "cancelled", "{ev}\n{context}");
}

#[test]
fn kamailio_challenges_the_refer_and_bye_and_emonav_answers_with_its_account() {
    // No [sip] auth_username: the 407's realm (127.0.0.1) is the registrar's
    // host, so emonav answers with the [[registration]] account.
    let (kamailio, emonav) = registered(&["WITH_INDIALOG_AUTH"], "");
    let (run, context) = call_through(&kamailio, "uac_refer_via_proxy.xml");
    assert_eq!(
        logged(&run.log, "REFER-TO"),
        ["sip:deescalation@127.0.0.1:5070"],
        "{context}"
    );
    for method in ["REFER", "BYE"] {
        let line = format!("in-dialog {method} authenticated as emonav");
        assert!(
            kamailio.wait_log(&line, Duration::from_secs(2)),
            "{line}\n{context}"
        );
    }
    let ev = emonav.next_event(Duration::from_secs(5));
    assert_eq!(ev["outcome"], "transferred", "{ev}\n{context}");
}

/// SIPp in the background with `subs` replacing `[key]` in the scenario
/// text: a client of `remote`, or (`None`) a server on `port`.
fn spawn_sipp(
    scenario: &str,
    remote: Option<SocketAddr>,
    port: u16,
    subs: &[(&str, String)],
) -> (Child, PathBuf) {
    let dir = temp_dir("sipp");
    let mut xml = std::fs::read_to_string(root().join("tests/sipp").join(scenario)).unwrap();
    let audio = root().join("tests/fixtures/agitated-pcmu.pcap");
    xml = xml.replace("../fixtures/agitated-pcmu.pcap", audio.to_str().unwrap());
    for (k, v) in subs {
        xml = xml.replace(&format!("[{k}]"), v);
    }
    let sf = dir.join(scenario);
    std::fs::write(&sf, xml).unwrap();
    let mut cmd = Command::new("sipp");
    if let Some(r) = remote {
        cmd.arg(r.to_string());
    }
    let media = 30_000 + 4 * fastrand::u16(0..5_000);
    cmd.arg("-sf")
        .arg(&sf)
        .args(["-m", "1", "-l", "1", "-i", "127.0.0.1", "-mi", "127.0.0.1"])
        .args(["-p", &port.to_string(), "-mp", &media.to_string()])
        .args([
            "-timeout",
            "40",
            "-timeout_error",
            "-nostdin",
            "-trace_logs",
        ])
        .arg("-log_file")
        .arg(dir.join("actions.log"))
        .args(["-trace_err", "-error_file"])
        .arg(dir.join("errors.log"))
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    (cmd.spawn().expect("sipp is installed"), dir)
}

/// Wait for a SIPp started by [`spawn_sipp`]: (success, log, errors).
fn finish_sipp((mut child, dir): (Child, PathBuf), timeout: Duration) -> (bool, String, String) {
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    (status.success(), read("actions.log"), read("errors.log"))
}

#[test]
fn kamailio_carries_both_b2bua_legs_when_the_refer_is_refused() {
    // Issue 16: the caller's PBX refuses REFER (405); emonav calls the queue
    // through Kamailio ([transfer] outbound_proxy), which record-routes the
    // queue leg as it does the caller's.
    let kamailio = Kamailio::start_with(&["WITH_RELAY_TO_URI"]);
    let q = free_port();
    let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rtp_port = rtp.local_addr().unwrap().port();
    let queue = format!("sip:agents@127.0.0.1:{q}");
    let extra = format!(
        "[transfer]\ntransfer_mode = \"refer_then_b2bua\"\noutbound_proxy = \"sip:{k}\"\n\
         [policy]\ndecision_deadline_ms = 2000\n\
         [[policy.rules]]\nlabel = \"agitated\"\narousal_min = 0.5\nqueue = \"{queue}\"\n\
         [[policy.rules]]\nlabel = \"calm\"\narousal_max = 0.5\nqueue = \"{queue}\"\n",
        k = kamailio.addr
    );
    let emonav = emonav_registered_to(&kamailio, "secret", &extra);
    assert!(emonav
        .wait_log(": registered", Duration::from_secs(10))
        .is_some());
    let queue_sipp = spawn_sipp(
        "uas_queue.xml",
        None,
        q,
        &[
            ("rtp_port", rtp_port.to_string()),
            ("bye_side", "caller".into()),
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    rtp.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let counter = std::thread::spawn(move || {
        let mut n = 0;
        let deadline = Instant::now() + Duration::from_secs(12);
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            if let Ok((len, _)) = rtp.recv_from(&mut buf) {
                n += usize::from(len > 12 && buf[0] >> 6 == 2);
            }
        }
        n
    });
    let caller = spawn_sipp(
        "uac_b2bua.xml",
        Some(kamailio.addr),
        free_port(),
        &[("refer_code", "405".into())],
    );
    let (caller_ok, caller_log, caller_err) = finish_sipp(caller, Duration::from_secs(40));
    let (queue_ok, queue_log, queue_err) = finish_sipp(queue_sipp, Duration::from_secs(20));
    let context = format!(
        "caller:\n{caller_log}\n{caller_err}\nqueue:\n{queue_log}\n{queue_err}\nKamailio:\n{}",
        kamailio.log_text()
    );
    assert!(caller_ok && queue_ok, "{context}");
    let ev = emonav.next_event(Duration::from_secs(10));
    assert_eq!(ev["outcome"], "bridged", "{ev}\n{context}");
    let log = kamailio.log_text();
    assert!(
        log.contains(&format!("initial INVITE relayed to {queue}")),
        "the queue leg went through the proxy\n{context}"
    );
    assert!(
        log.contains("in-dialog ACK loose-routed to sip:agent@127.0.0.1"),
        "the queue's ACK followed its Record-Route\n{context}"
    );
    assert!(
        log.contains("in-dialog BYE loose-routed to sip:agent@127.0.0.1"),
        "the relayed BYE followed it too\n{context}"
    );
    let packets = counter.join().unwrap();
    assert!(
        packets >= 50,
        "{packets} RTP packets at the queue\n{context}"
    );
}

/// A TCP port free at the time of asking.
fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// SIP over TLS (RFC 3261 §26.2.1) with Kamailio's tls module as the peer,
/// both sides verifying the other's certificate against the test CA
/// (tests/fixtures/tls): SIPp calls Kamailio over UDP, Kamailio relays the
/// INVITE to emonav's `tls_listen` over TLS, and emonav's REFER and BYE go
/// back through Kamailio's TLS Record-Route entry on that connection.
#[test]
fn a_call_reaches_emonav_over_tls_through_kamailio_and_is_transferred_over_tls() {
    let certs = root().join("tests/fixtures/tls");
    let pem = |f: &str| certs.join(f).to_str().unwrap().to_string();
    let emonav_tls = free_tcp_port();
    let kam_tls = free_tcp_port();
    let kamailio = Kamailio::start_with(&[
        "WITH_TLS",
        &format!("KAM_TLS_PORT={kam_tls}"),
        &format!("KAM_TLS_CERT=\"{}\"", pem("loopback.pem")),
        &format!("KAM_TLS_KEY=\"{}\"", pem("loopback.key")),
        &format!("KAM_TLS_CA=\"{}\"", pem("ca.pem")),
        &format!("TLS_TARGET=\"sip:127.0.0.1:{emonav_tls};transport=tls\""),
    ]);
    let emonav = Emonav::start(&format!(
        "[sip]\ntls_listen = \"127.0.0.1:{emonav_tls}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n\
         tls_ca = \"{}\"\ntls_verify_clients = true\n",
        pem("loopback.pem"),
        pem("loopback.key"),
        pem("ca.pem")
    ));
    let (run, context) = call_through(&kamailio, "uac_refer_via_proxy.xml");
    assert!(
        kamailio.wait_log("initial INVITE relayed over TLS", Duration::from_secs(2)),
        "{context}"
    );
    assert_eq!(
        logged(&run.log, "REFER-TO"),
        ["sip:deescalation@127.0.0.1:5070"],
        "{context}"
    );
    // Kamailio record-routed both sides: its TLS entry faces emonav.
    let rr = logged(&run.log, "INVITE-RR");
    let kam_tls_rr = format!("sip:127.0.0.1:{kam_tls};transport=tls");
    assert!(
        rr.len() == 1 && rr[0].contains(&kam_tls_rr),
        "{rr:?} lacks {kam_tls_rr}\n{context}"
    );
    let ev = emonav.next_event(Duration::from_secs(5));
    assert_eq!(ev["outcome"], "transferred", "{ev}\n{context}");
    assert_eq!(ev["refer_attempts"][0]["response"], 202, "{ev}");
    // emonav's in-dialog requests came to Kamailio over TLS.
    for method in ["REFER", "BYE"] {
        let line = format!("in-dialog {method} loose-routed");
        assert!(
            kamailio.wait_log(&line, Duration::from_secs(2)),
            "{line}\n{context}"
        );
        let log = kamailio.log_text();
        let proto: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&line))
            .filter_map(|l| l.rsplit("came over ").next())
            .collect();
        assert_eq!(proto, ["tls"], "{method}\n{context}");
    }
}

/// REGISTER over TLS (a `;transport=tls` registrar): emonav opens the TLS
/// connection itself (presenting its certificate, verifying Kamailio's),
/// registers a `transport=tls` Contact at its `tls_listen` port, and a call
/// Kamailio routes by that binding reaches emonav over TLS and is
/// transferred, its REFER and BYE going back over TLS.
#[test]
fn emonav_registers_over_tls_and_the_call_by_that_binding_comes_over_tls() {
    let certs = root().join("tests/fixtures/tls");
    let pem = |f: &str| certs.join(f).to_str().unwrap().to_string();
    let emonav_tls = free_tcp_port();
    let kam_tls = free_tcp_port();
    let kamailio = Kamailio::start_with(&[
        "WITH_TLS",
        &format!("KAM_TLS_PORT={kam_tls}"),
        &format!("KAM_TLS_CERT=\"{}\"", pem("loopback.pem")),
        &format!("KAM_TLS_KEY=\"{}\"", pem("loopback.key")),
        &format!("KAM_TLS_CA=\"{}\"", pem("ca.pem")),
    ]);
    let emonav = Emonav::start(&format!(
        "[sip]\ntls_listen = \"127.0.0.1:{emonav_tls}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n\
         tls_ca = \"{}\"\n[[registration]]\nregistrar = \"sip:127.0.0.1:{kam_tls};transport=tls\"\n\
         aor = \"sip:emonav@127.0.0.1\"\nusername = \"emonav\"\npassword = \"secret\"\nexpires = 120\n",
        pem("loopback.pem"),
        pem("loopback.key"),
        pem("ca.pem")
    ));
    assert!(
        emonav
            .wait_log(": registered", Duration::from_secs(10))
            .is_some(),
        "emonav did not register over TLS\n{}",
        kamailio.log_text()
    );
    let binding = format!(
        "registered sip:emonav@127.0.0.1 at <sip:emonav@127.0.0.1:{emonav_tls};transport=tls> over tls"
    );
    assert!(
        kamailio.wait_log(&binding, Duration::from_secs(2)),
        "{binding}\n{}",
        kamailio.log_text()
    );
    let (run, context) = call_through(&kamailio, "uac_refer_via_proxy.xml");
    assert!(
        kamailio.wait_log("via location", Duration::from_secs(2)),
        "{context}"
    );
    assert_eq!(
        logged(&run.log, "REFER-TO"),
        ["sip:deescalation@127.0.0.1:5070"],
        "{context}"
    );
    let ev = emonav.next_event(Duration::from_secs(5));
    assert_eq!(ev["outcome"], "transferred", "{ev}\n{context}");
    let log = kamailio.log_text();
    for method in ["REFER", "BYE"] {
        let line = format!("in-dialog {method} loose-routed");
        let proto: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&line))
            .filter_map(|l| l.rsplit("came over ").next())
            .collect();
        assert_eq!(proto, ["tls"], "{method}\n{context}");
    }
}

/// A throw-away dnsmasq on loopback serving `records` (its command-line
/// record options), its queries logged; killed on drop.
struct Dns {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    log: std::path::PathBuf,
}

impl Dns {
    fn start(records: &[String]) -> Dns {
        let dir = temp_dir("dnsmasq");
        let port = free_port();
        let log = dir.join("dnsmasq.log");
        let child = std::process::Command::new(
            ["/usr/sbin/dnsmasq", "dnsmasq"]
                .into_iter()
                .find(|p| std::path::Path::new(p).exists())
                .unwrap_or("dnsmasq"),
        )
        .args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--log-queries",
            "--log-facility=-",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--pid-file={}", dir.join("pid").display()))
        // As root it would drop to "nobody"; the test's own user is fine.
        .arg("--user=root")
        .args(records)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::process::Stdio::from(
            std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
        ))
        .spawn()
        .expect("dnsmasq is installed (Debian package dnsmasq-base; scripts/test.sh installs it)");
        let dns = Dns {
            child,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !dns.log_text().contains("started") {
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not start: {}",
                dns.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        dns
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// RFC 3263: a registrar named without a port is located by NAPTR, then
/// SRV (priority order), then A records, from a real DNS server; the first
/// target never answers, so after Timer F the REGISTER goes to the second,
/// Kamailio, and emonav registers there.
#[test]
fn a_registrar_is_located_by_naptr_and_srv_and_fails_over_to_the_second_target() {
    let kamailio = Kamailio::start();
    // The first target: a socket that takes REGISTERs and never answers.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    dead.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    let dns = Dns::start(&[
        "--naptr-record=pbx.test,10,10,S,SIP+D2U,,_sip._udp.pbx.test".into(),
        format!("--srv-host=_sip._udp.pbx.test,alpha.pbx.test,{dead_port},10,0"),
        format!(
            "--srv-host=_sip._udp.pbx.test,beta.pbx.test,{},20,0",
            kamailio.addr.port()
        ),
        "--host-record=alpha.pbx.test,127.0.0.1".into(),
        "--host-record=beta.pbx.test,127.0.0.1".into(),
    ]);
    let emonav = Emonav::start(&format!(
        "[sip]\ndns_servers = [\"{}\"]\n[[registration]]\nregistrar = \"sip:pbx.test\"\n\
         aor = \"sip:emonav@127.0.0.1\"\nusername = \"emonav\"\npassword = \"secret\"\nexpires = 120\n",
        dns.addr
    ));
    let located = emonav
        .wait_log("registrar located", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("not located\n{}", dns.log_text()));
    let (alpha, beta) = (format!("127.0.0.1:{dead_port}"), kamailio.addr.to_string());
    let order = (located.find(&alpha), located.find(&beta));
    assert!(
        matches!(order, (Some(a), Some(b)) if a < b),
        "SRV priority order: {located}"
    );
    let log = dns.log_text();
    for q in [
        "query[NAPTR] pbx.test",
        "query[SRV] _sip._udp.pbx.test",
        "query[A] alpha.pbx.test",
    ] {
        assert!(log.contains(q), "{q}\n{log}");
    }
    // The first target got the REGISTER (and its retransmissions).
    let mut buf = [0u8; 4096];
    let (n, _) = dead
        .recv_from(&mut buf)
        .expect("a REGISTER to the first target");
    assert!(buf[..n].starts_with(b"REGISTER sip:pbx.test SIP/2.0"));
    // Timer F (64 × T1, 6.4 s with the test's T1 of 100 ms), then the second.
    assert!(
        emonav
            .wait_log("registrar failing over", Duration::from_secs(10))
            .is_some(),
        "{}",
        kamailio.log_text()
    );
    assert!(
        emonav
            .wait_log(": registered", Duration::from_secs(5))
            .is_some(),
        "{}",
        kamailio.log_text()
    );
    assert!(
        kamailio.wait_log(
            "registered sip:emonav@127.0.0.1 at ",
            Duration::from_secs(2)
        ),
        "{}",
        kamailio.log_text()
    );
}

/// `[sip] outbound_proxy`: the REGISTER for a registrar emonav cannot reach
/// itself (its name does not resolve) goes to the proxy, which handles it.
#[test]
fn registers_through_the_outbound_proxy() {
    let kamailio = Kamailio::start();
    let emonav = Emonav::start(&format!(
        "[sip]\noutbound_proxy = \"sip:{}\"\n[[registration]]\nregistrar = \"sip:registrar.invalid\"\n\
         aor = \"sip:emonav@127.0.0.1\"\nusername = \"emonav\"\npassword = \"secret\"\nexpires = 120\n",
        kamailio.addr
    ));
    assert!(
        emonav
            .wait_log(": registered", Duration::from_secs(10))
            .is_some(),
        "{}",
        kamailio.log_text()
    );
    assert!(
        kamailio.wait_log(
            "registered sip:emonav@127.0.0.1 at ",
            Duration::from_secs(2)
        ),
        "{}",
        kamailio.log_text()
    );
}

/// TLS to a registrar located by name (RFC 5922 §4): the server's
/// certificate must carry the registrar URI's host. Kamailio's certificate
/// names `pbx.test` (and 127.0.0.1): found as `sip:pbx.test;transport=tls`
/// through `_sips._tcp` SRV, emonav registers; found as
/// `sip:other.test;transport=tls` (same server), the handshake is refused
/// and nothing is sent.
#[test]
fn a_tls_registrar_located_by_name_must_present_a_certificate_for_that_name() {
    let certs = root().join("tests/fixtures/tls");
    let pem = |f: &str| certs.join(f).to_str().unwrap().to_string();
    let kam_tls = free_tcp_port();
    let kamailio = Kamailio::start_with(&[
        "WITH_TLS",
        &format!("KAM_TLS_PORT={kam_tls}"),
        &format!("KAM_TLS_CERT=\"{}\"", pem("pbx-test.pem")),
        &format!("KAM_TLS_KEY=\"{}\"", pem("pbx-test.key")),
        &format!("KAM_TLS_CA=\"{}\"", pem("ca.pem")),
    ]);
    let dns = Dns::start(&[
        format!("--srv-host=_sips._tcp.pbx.test,sip.pbx.test,{kam_tls},10,0"),
        format!("--srv-host=_sips._tcp.other.test,sip.pbx.test,{kam_tls},10,0"),
        "--host-record=sip.pbx.test,127.0.0.1".into(),
    ]);
    let start = |registrar: &str| {
        Emonav::start(&format!(
            "[sip]\ndns_servers = [\"{}\"]\ntls_listen = \"127.0.0.1:{}\"\ntls_cert = \"{}\"\n\
             tls_key = \"{}\"\ntls_ca = \"{}\"\n[[registration]]\nregistrar = \"{registrar}\"\n\
             aor = \"sip:emonav@127.0.0.1\"\nusername = \"emonav\"\npassword = \"secret\"\nexpires = 120\n",
            dns.addr,
            free_tcp_port(),
            pem("loopback.pem"),
            pem("loopback.key"),
            pem("ca.pem")
        ))
    };
    let good = start("sip:pbx.test;transport=tls");
    assert!(
        good.wait_log(": registered", Duration::from_secs(10))
            .is_some(),
        "{}\n{}",
        kamailio.log_text(),
        dns.log_text()
    );
    let bad = start("sip:other.test;transport=tls");
    let refused = bad
        .wait_log("TLS handshake failed", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("handshake not refused\n{}", dns.log_text()));
    assert!(refused.contains("pbx.test"), "{refused}");
    assert!(
        bad.wait_log(": registered", Duration::from_secs(2))
            .is_none(),
        "registered to a server whose certificate does not name pbx.test"
    );
}

/// RFC 3263 §4.3 over TLS: the first SRV target refuses the connection, so
/// the REGISTER fails at once (not at Timer F) and goes to the second.
#[test]
fn a_refused_tls_connection_fails_over_to_the_next_srv_target_at_once() {
    let certs = root().join("tests/fixtures/tls");
    let pem = |f: &str| certs.join(f).to_str().unwrap().to_string();
    let kam_tls = free_tcp_port();
    let closed = free_tcp_port();
    let kamailio = Kamailio::start_with(&[
        "WITH_TLS",
        &format!("KAM_TLS_PORT={kam_tls}"),
        &format!("KAM_TLS_CERT=\"{}\"", pem("pbx-test.pem")),
        &format!("KAM_TLS_KEY=\"{}\"", pem("pbx-test.key")),
        &format!("KAM_TLS_CA=\"{}\"", pem("ca.pem")),
    ]);
    let dns = Dns::start(&[
        format!("--srv-host=_sips._tcp.pbx.test,sip.pbx.test,{closed},10,0"),
        format!("--srv-host=_sips._tcp.pbx.test,sip.pbx.test,{kam_tls},20,0"),
        "--host-record=sip.pbx.test,127.0.0.1".into(),
    ]);
    let started = Instant::now();
    let emonav = Emonav::start(&format!(
        "[sip]\ndns_servers = [\"{}\"]\ntls_listen = \"127.0.0.1:{}\"\ntls_cert = \"{}\"\n\
         tls_key = \"{}\"\ntls_ca = \"{}\"\n[[registration]]\nregistrar = \"sip:pbx.test;transport=tls\"\n\
         aor = \"sip:emonav@127.0.0.1\"\nusername = \"emonav\"\npassword = \"secret\"\nexpires = 120\n",
        dns.addr,
        free_tcp_port(),
        pem("loopback.pem"),
        pem("loopback.key"),
        pem("ca.pem")
    ));
    let over = emonav
        .wait_log("registrar failing over", Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no failover\n{}", dns.log_text()));
    assert!(over.contains("cannot reach the registrar"), "{over}");
    assert!(
        emonav
            .wait_log(": registered", Duration::from_secs(5))
            .is_some(),
        "{}",
        kamailio.log_text()
    );
    // Timer F with the test's T1 would be 6.4 s.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "registered after {took:?}");
}
