//! When REFER cannot pass (issue 16): the real binary, a SIPp caller whose
//! PBX refuses REFER (405, 403) or does not allow it at all, and a SIPp
//! queue (UAS). emonav connects them by third-party call control (RFC 3725):
//! the caller's RTP is counted where the queue's SDP said its media is (a
//! socket of this test), and a BYE from either side ends both legs. The
//! decision API is read by long-poll while a `decision_only` call is under
//! way. A caller that refuses the re-INVITE, or any caller with `[transfer]
//! media = "relay"`, has its RTP relayed by emonav: counted at both ends.
//! Everything on loopback.

mod support;

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use support::{root, Emonav};

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A SIPp run in the background: the process and its logs' folder.
struct Sipp {
    child: Child,
    dir: PathBuf,
}

impl Sipp {
    /// Start SIPp with `scenario`; `remote` makes it a client of that
    /// address, else it serves on `port`. `keys` replace `[key]` in the
    /// scenario's text (SIPp's `-key` cannot reach a response's status code).
    fn start(scenario: &str, remote: Option<String>, port: u16, keys: &[(&str, String)]) -> Sipp {
        let dir = std::env::temp_dir().join(format!(
            "emonav-b2bua-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let xml = std::fs::read_to_string(root().join("tests/sipp").join(scenario)).unwrap();
        let audio = root().join("tests/fixtures/agitated-pcmu.pcap");
        let mut xml = xml.replace("../fixtures/agitated-pcmu.pcap", audio.to_str().unwrap());
        for (k, v) in keys {
            xml = xml.replace(&format!("[{k}]"), v);
        }
        let sf = dir.join(scenario);
        std::fs::write(&sf, xml).unwrap();
        let mut cmd = Command::new("sipp");
        if let Some(r) = remote {
            cmd.arg(r);
        }
        cmd.arg("-sf").arg(&sf);
        cmd.args(["-m", "1", "-l", "1", "-i", "127.0.0.1", "-mi", "127.0.0.1"]);
        cmd.args(["-p", &port.to_string()]);
        cmd.args(["-mp", &(30_000 + 4 * fastrand::u16(0..5_000)).to_string()]);
        cmd.args([
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
        let child = cmd
            .spawn()
            .expect("sipp is installed (Debian package sip-tester; scripts/test.sh installs it)");
        Sipp { child, dir }
    }

    /// Wait for the exit (killed after `timeout`); the status and the log.
    fn wait(mut self, timeout: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let log = std::fs::read_to_string(self.dir.join("actions.log")).unwrap_or_default();
        if !status.success() {
            eprintln!(
                "sipp {} errors:\n{}",
                self.dir.display(),
                std::fs::read_to_string(self.dir.join("errors.log")).unwrap_or_default()
            );
            eprintln!("sipp log:\n{log}");
        }
        (status, log)
    }
}

/// The value logged after `tag` in a SIPp log, e.g. `ACK-SDP: `.
fn logged<'a>(log: &'a str, tag: &str) -> Option<&'a str> {
    log.lines()
        .find_map(|l| l.split_once(tag).map(|(_, v)| v.trim()))
}

/// RTP counted on a socket standing for the queue's media: (packets, sources).
fn count_rtp(
    sock: UdpSocket,
    for_: Duration,
) -> std::thread::JoinHandle<Vec<std::net::SocketAddr>> {
    std::thread::spawn(move || {
        let mut from = Vec::new();
        let deadline = Instant::now() + for_;
        let mut buf = [0u8; 2048];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            if let Ok((n, src)) = sock.recv_from(&mut buf) {
                // RTP version 2, payload type PCMU.
                if n > 12 && buf[0] >> 6 == 2 && buf[1] & 0x7f == 0 {
                    from.push(src);
                }
            }
        }
        from
    })
}

/// A profile where every decision goes to `queue`, the default queue being
/// `default`, in `mode`.
fn profile(mode: &str, queue: &str, default: &str) -> String {
    format!(
        "[transfer]\ntransfer_mode = \"{mode}\"\nqueue_answer_timeout_ms = 5000\n\
         [policy]\ndecision_deadline_ms = 2000\ndefault_queue = \"{default}\"\n\
         [[policy.rules]]\nlabel = \"agitated\"\narousal_min = 0.5\nqueue = \"{queue}\"\n\
         [[policy.rules]]\nlabel = \"calm\"\narousal_max = 0.5\nqueue = \"{queue}\"\n"
    )
}

struct Bridged {
    record: serde_json::Value,
    caller_log: String,
    queue_log: String,
    rtp_from: Vec<std::net::SocketAddr>,
}

/// One call through emonav to a SIPp queue: the caller runs `caller` with
/// `caller_keys`, the queue `uas_queue.xml` ending by `bye_side`; `busy`
/// puts a busy queue (486) first, so the answering one is the default queue.
fn bridge_call(
    caller: &str,
    caller_keys: &[(&str, String)],
    bye_side: &str,
    busy: bool,
) -> (Emonav, Bridged) {
    bridge_call_to("uas_queue.xml", caller, caller_keys, bye_side, busy)
}

/// As [`bridge_call`], the answering queue playing `queue_scenario`.
fn bridge_call_to(
    queue_scenario: &str,
    caller: &str,
    caller_keys: &[(&str, String)],
    bye_side: &str,
    busy: bool,
) -> (Emonav, Bridged) {
    let (q, qd) = (free_port(), free_port());
    let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rtp_port = rtp.local_addr().unwrap().port();
    let answering = if busy { qd } else { q };
    let emonav = Emonav::start(&profile(
        "refer_then_b2bua",
        &format!("sip:agents@127.0.0.1:{q}"),
        &format!("sip:default@127.0.0.1:{qd}"),
    ));
    let queue = Sipp::start(
        queue_scenario,
        None,
        answering,
        &[
            ("rtp_port", rtp_port.to_string()),
            ("bye_side", bye_side.to_string()),
        ],
    );
    let busy_queue = busy.then(|| Sipp::start("uas_queue_busy.xml", None, q, &[]));
    std::thread::sleep(Duration::from_millis(300));
    let counter = count_rtp(rtp, Duration::from_secs(12));
    let caller = Sipp::start(
        caller,
        Some(emonav.sip.to_string()),
        free_port(),
        caller_keys,
    );
    let (caller_status, caller_log) = caller.wait(Duration::from_secs(40));
    let (queue_status, queue_log) = queue.wait(Duration::from_secs(20));
    if let Some(b) = busy_queue {
        let (s, _) = b.wait(Duration::from_secs(10));
        assert!(s.success(), "the busy queue got its ACK");
    }
    assert!(caller_status.success(), "caller scenario failed");
    assert!(queue_status.success(), "queue scenario failed");
    let record = emonav.next_event(Duration::from_secs(10));
    let rtp_from = counter.join().unwrap();
    (
        emonav,
        Bridged {
            record,
            caller_log,
            queue_log,
            rtp_from,
        },
    )
}

/// What every bridged call shows: the caller's media reached the queue
/// directly, the SDPs crossed, the record says bridged.
fn assert_bridged(b: &Bridged, queue: &str) {
    let r = &b.record;
    assert_eq!(r["outcome"], "bridged", "{r}");
    assert_eq!(r["transfer_mode"], "refer_then_b2bua");
    let last = r["bridge_attempts"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert!(last["target"].as_str().unwrap().starts_with(queue), "{r}");
    assert_eq!(last["response"], 200);
    assert_eq!(last["caller_reinvite"], 200);
    assert_eq!(r["bridge_media"], "direct", "{r}");
    // The caller got the queue's media address, the queue the caller's.
    let reinvite = logged(&b.caller_log, "REINVITE-SDP:").expect("re-INVITE logged");
    let ack = logged(&b.queue_log, "ACK-SDP:").expect("ACK SDP logged");
    let caller_port: u16 = ack.trim_start_matches("m=audio ").parse().unwrap();
    assert!(
        b.queue_log.contains("X-Emonav-Emotion:"),
        "the queue's INVITE carries the decision headers"
    );
    let queue_port: u16 = reinvite.trim_start_matches("m=audio ").parse().unwrap();
    assert_ne!(queue_port, caller_port);
    // RTP from the caller's media port arrived at the queue's, directly.
    let direct = b
        .rtp_from
        .iter()
        .filter(|a| a.port() == caller_port)
        .count();
    assert!(
        direct >= 50,
        "{direct} RTP packets from the caller at the queue (of {} seen)",
        b.rtp_from.len()
    );
}

#[test]
fn refer_refused_with_405_is_bridged_and_the_callers_bye_ends_the_queue_leg() {
    let (emonav, b) = bridge_call(
        "uac_b2bua.xml",
        &[("refer_code", "405".into())],
        "caller",
        false,
    );
    assert_bridged(&b, "sip:agents@127.0.0.1:");
    assert_eq!(b.record["refer_attempts"][0]["response"], 405);
    assert!(logged(&b.caller_log, "REFER-TO:").is_some());
    let (_, metrics) = emonav.http_get("/metrics");
    assert!(
        metrics.contains("emonav_calls_routed_total{mode=\"b2bua\"} 1"),
        "{metrics}"
    );
}

#[test]
fn refer_forbidden_403_then_a_busy_queue_bridges_to_the_default_queue() {
    let (_emonav, b) = bridge_call(
        "uac_b2bua.xml",
        &[("refer_code", "403".into())],
        "caller",
        true,
    );
    assert_bridged(&b, "sip:default@127.0.0.1:");
    assert_eq!(b.record["refer_attempts"][0]["response"], 403);
    let attempts = b.record["bridge_attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{}", b.record);
    assert_eq!(attempts[0]["response"], 486);
}

#[test]
fn a_caller_without_refer_in_allow_is_bridged_at_once_and_the_queues_bye_ends_the_call() {
    let (_emonav, b) = bridge_call("uac_b2bua_no_refer.xml", &[], "queue", false);
    assert_bridged(&b, "sip:agents@127.0.0.1:");
    assert_eq!(
        b.record["refer_attempts"].as_array().unwrap().len(),
        0,
        "no REFER to a caller that does not allow it"
    );
}

#[test]
fn the_callers_hold_and_resume_are_relayed_to_the_queue_and_media_flows_after() {
    // Every route is this queue: no audio before the bridge, so the
    // decision is the deadline's (the default queue).
    let q = free_port();
    let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rtp_port = rtp.local_addr().unwrap().port();
    let emonav = Emonav::start(&profile(
        "b2bua",
        &format!("sip:agents@127.0.0.1:{q}"),
        &format!("sip:default@127.0.0.1:{q}"),
    ));
    let queue = Sipp::start(
        "uas_queue_hold.xml",
        None,
        q,
        &[("rtp_port", rtp_port.to_string())],
    );
    std::thread::sleep(Duration::from_millis(300));
    let counter = count_rtp(rtp, Duration::from_secs(14));
    let caller = Sipp::start(
        "uac_b2bua_hold.xml",
        Some(emonav.sip.to_string()),
        free_port(),
        &[],
    );
    let (caller_status, caller_log) = caller.wait(Duration::from_secs(40));
    let (queue_status, queue_log) = queue.wait(Duration::from_secs(20));
    assert!(caller_status.success(), "caller scenario failed");
    assert!(queue_status.success(), "queue scenario failed");
    let record = emonav.next_event(Duration::from_secs(10));
    let rtp_from = counter.join().unwrap();
    assert_eq!(record["outcome"], "bridged", "{record}");
    // The queue saw the caller's own SDP: hold, then resume, at the
    // caller's media port (the one in the set-up's ACK).
    let caller_m = logged(&queue_log, "ACK-SDP:").expect("ACK SDP logged");
    assert_eq!(
        logged(&queue_log, "QUEUE-HOLD-OFFER:"),
        Some(format!("a=sendonly {caller_m}").as_str())
    );
    assert_eq!(
        logged(&queue_log, "QUEUE-RESUME-OFFER:"),
        Some(format!("a=sendrecv {caller_m}").as_str())
    );
    // The caller got the queue's answers, the queue's media port in each.
    assert_eq!(
        logged(&caller_log, "HOLD-ANSWER:"),
        Some(format!("a=recvonly m=audio {rtp_port}").as_str())
    );
    assert_eq!(
        logged(&caller_log, "RESUME-ANSWER:"),
        Some(format!("a=sendrecv m=audio {rtp_port}").as_str())
    );
    // The caller played speech only after the resume: it reached the queue.
    let caller_port: u16 = caller_m.trim_start_matches("m=audio ").parse().unwrap();
    let direct = rtp_from.iter().filter(|a| a.port() == caller_port).count();
    assert!(
        direct >= 50,
        "{direct} RTP packets from the caller at the queue after the resume (of {})",
        rtp_from.len()
    );
}

#[test]
fn the_queue_leg_runs_a_session_timer_and_the_queues_update_refresh_gets_200() {
    let (_emonav, b) = bridge_call_to(
        "uas_queue_timer.xml",
        "uac_b2bua.xml",
        &[("refer_code", "405".into())],
        "caller",
        false,
    );
    assert_bridged(&b, "sip:agents@127.0.0.1:");
    // emonav's INVITE offered RFC 4028 (1800 s, our Min-SE 90)...
    assert_eq!(
        logged(&b.queue_log, "INVITE-TIMER:"),
        Some("Session-Expires: 1800 Supported: timer")
    );
    // ... and its 200 to the queue's refresh names the queue as refresher.
    assert_eq!(
        logged(&b.queue_log, "REFRESH-200:"),
        Some("Session-Expires: 90;refresher=uac")
    );
}

#[test]
fn decision_only_publishes_the_decision_by_long_poll_and_in_the_bye() {
    let emonav = Emonav::start(&profile(
        "decision_only",
        "sip:agents@127.0.0.1:5999",
        "sip:default@127.0.0.1",
    ));
    let caller = Sipp::start(
        "uac_decision.xml",
        Some(emonav.sip.to_string()),
        free_port(),
        &[],
    );
    // The caller's ACK: the call is up and being analysed.
    emonav
        .wait_log("ACK call_id", Duration::from_secs(10))
        .expect("the call was answered");
    // The call is being analysed: the request waits for the decision.
    let asked = Instant::now();
    let (status, body) = emonav.http_get("/decisions/pbx-key-1?wait_ms=15000");
    let waited = asked.elapsed();
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["queue"], "sip:agents@127.0.0.1:5999");
    assert_eq!(v["transfer_mode"], "decision_only");
    assert!(
        v["arousal"].as_f64().is_some() && v["reason"].is_string(),
        "{v}"
    );
    assert!(
        waited > Duration::from_millis(300),
        "answered after {waited:?}: it was a long-poll on a call in progress"
    );
    let (status, queue) = emonav.http_get(&format!(
        "/decisions/{}?format=queue",
        v["call_id"].as_str().unwrap().replace('@', "%40")
    ));
    assert_eq!(
        (status.as_str(), queue.as_str()),
        ("HTTP/1.1 200 OK", "sip:agents@127.0.0.1:5999")
    );
    let (status, _) = emonav.http_get("/decisions/no-such-call?wait_ms=10");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (caller_status, log) = caller.wait(Duration::from_secs(30));
    assert!(caller_status.success());
    assert_eq!(
        logged(&log, "BYE-QUEUE:"),
        Some("X-Emonav-Queue: sip:agents@127.0.0.1:5999")
    );
    assert!(
        logged(&log, "BYE-REASON:").is_some_and(|r| r.contains("cause=200")),
        "{log}"
    );
    let record = emonav.next_event(Duration::from_secs(10));
    assert_eq!(record["outcome"], "decided");
    let (_, metrics) = emonav.http_get("/metrics");
    assert!(
        metrics.contains("emonav_calls_routed_total{mode=\"decision\"} 1"),
        "{metrics}"
    );
}

/// Stands for the caller's phone at its SDP address: sends 20 ms PCMU
/// packets of quiet noise from `sock` (so emonav latches onto it) and, until
/// `stop`, notes the level (RMS of the decoded μ-law) of every RTP packet
/// that comes back.
fn caller_phone(
    sock: UdpSocket,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<f64>> {
    std::thread::spawn(move || {
        let mut dest = None;
        let mut levels = Vec::new();
        let mut buf = [0u8; 2048];
        let mut pkt = [0u8; 172];
        pkt[0] = 0x80;
        let (mut seq, mut ts) = (1u16, 160u32);
        let mut next = Instant::now();
        sock.set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let (Some(d), true) = (dest, Instant::now() >= next) {
                pkt[2..4].copy_from_slice(&seq.to_be_bytes());
                pkt[4..8].copy_from_slice(&ts.to_be_bytes());
                pkt[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
                for b in &mut pkt[12..] {
                    // μ-law codes near silence (0xF0..0xFF): quiet noise.
                    *b = 0xF0 | fastrand::u8(..16);
                }
                let _ = sock.send_to(&pkt, d);
                (seq, ts) = (seq.wrapping_add(1), ts.wrapping_add(160));
                next += Duration::from_millis(20);
            }
            if let Ok((n, src)) = sock.recv_from(&mut buf) {
                if n > 12 && buf[0] >> 6 == 2 && buf[1] & 0x7f == 0 {
                    dest.get_or_insert(src);
                    let mut pcm = vec![0i16; n - 12];
                    emonav_dsp::g711::decode_ulaw(&buf[12..n], &mut pcm);
                    let e = pcm.iter().map(|&s| (s as f64).powi(2)).sum::<f64>();
                    levels.push((e / pcm.len() as f64).sqrt());
                }
            }
        }
        levels
    })
}

#[test]
fn when_every_queue_is_busy_the_caller_hears_the_congestion_tone_before_the_bye() {
    let (q, qd) = (free_port(), free_port());
    let phone = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rtp_port = phone.local_addr().unwrap().port();
    let emonav = Emonav::start(&profile(
        "refer_then_b2bua",
        &format!("sip:agents@127.0.0.1:{q}"),
        &format!("sip:default@127.0.0.1:{qd}"),
    ));
    // Quiet noise is no speech: the decision is the default queue, busy.
    let busy_default = Sipp::start("uas_queue_busy.xml", None, qd, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // emonav's keepalive reaches the phone first; the phone answers from the
    // same port (symmetric RTP), so the latch keeps it.
    let phone = caller_phone(phone, stop.clone());
    let started = Instant::now();
    let caller = Sipp::start(
        "uac_b2bua_failure.xml",
        Some(emonav.sip.to_string()),
        free_port(),
        &[("rtp_port", rtp_port.to_string())],
    );
    let (status, log) = caller.wait(Duration::from_secs(30));
    let bye_after = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let levels = phone.join().unwrap();
    assert!(status.success(), "caller scenario failed");
    assert!(
        busy_default.wait(Duration::from_secs(10)).0.success(),
        "the busy queue got its ACK"
    );
    let reason = logged(&log, "BYE-REASON:").unwrap_or_default().to_string();
    assert!(reason.contains("cause=486"), "{reason}");
    // Until the decision our silence (level 0); then 3 s of a 425 Hz tone,
    // 250 ms on / 250 ms off: about 75 loud packets, and nothing after the BYE.
    let loud = levels.iter().filter(|&&l| l > 1_000.0).count();
    assert!(
        (55..=95).contains(&loud),
        "{loud} loud packets of {} before the BYE (at {bye_after:?})",
        levels.len()
    );
    let first_loud = levels.iter().position(|&l| l > 1_000.0).unwrap();
    assert!(
        levels[..first_loud].iter().all(|&l| l < 50.0),
        "silence before the tone"
    );
    let record = emonav.next_event(Duration::from_secs(10));
    assert_eq!(record["outcome"], "failed", "{record}");
    let attempts = record["bridge_attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{record}");
    assert_eq!(attempts[0]["response"], 486, "{record}");
}

/// The SSRC of the queue's packets (the test's socket standing for the
/// queue's media), told apart from emonav's own keepalive at the caller.
const QUEUE_SSRC: u32 = 0x0abc_d001;

/// The queue's media: every PCMU packet that arrives is counted by source
/// and answered with a packet of ours to that source (what an agent's phone
/// does with symmetric RTP), until `stop`.
fn queue_media(
    sock: UdpSocket,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<std::net::SocketAddr>> {
    std::thread::spawn(move || {
        let mut from = Vec::new();
        let mut buf = [0u8; 2048];
        let mut pkt = [0u8; 172];
        pkt[0] = 0x80;
        pkt[8..12].copy_from_slice(&QUEUE_SSRC.to_be_bytes());
        let mut seq = 1u16;
        sock.set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok((n, src)) = sock.recv_from(&mut buf) {
                if n > 12 && buf[0] >> 6 == 2 && buf[1] & 0x7f == 0 {
                    from.push(src);
                    pkt[2..4].copy_from_slice(&seq.to_be_bytes());
                    pkt[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
                    seq = seq.wrapping_add(1);
                    let _ = sock.send_to(&pkt, src);
                }
            }
        }
        from
    })
}

/// The caller's phone for the relay: once emonav's first packet shows
/// where to send (symmetric RTP), 20 ms PCMU packets; counts what arrives:
/// (the queue's packets, everything else).
fn relay_phone(
    sock: UdpSocket,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(usize, usize)> {
    std::thread::spawn(move || {
        let (mut dest, mut next) = (None, Instant::now());
        let (mut queue, mut other) = (0, 0);
        let mut buf = [0u8; 2048];
        let mut pkt = [0xffu8; 172];
        pkt[..2].copy_from_slice(&[0x80, 0]);
        pkt[8..12].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        let mut seq = 1u16;
        sock.set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if let (Some(d), true) = (dest, Instant::now() >= next) {
                pkt[2..4].copy_from_slice(&seq.to_be_bytes());
                pkt[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
                let _ = sock.send_to(&pkt, d);
                seq = seq.wrapping_add(1);
                next += Duration::from_millis(20);
            }
            if let Ok((n, src)) = sock.recv_from(&mut buf) {
                if n > 12 && buf[0] >> 6 == 2 && buf[1] & 0x7f == 0 {
                    dest.get_or_insert(src);
                    if buf[8..12] == QUEUE_SSRC.to_be_bytes() {
                        queue += 1;
                    } else {
                        other += 1;
                    }
                }
            }
        }
        (queue, other)
    })
}

/// One call whose media emonav relays: `media` in the profile, the caller
/// playing `caller` (keys added to its `rtp_port`), the queue hanging up
/// by `bye_side`. Asserts what every relayed call shows; the record.
fn relayed_call(
    media: &str,
    caller: &str,
    caller_keys: &[(&str, String)],
    bye_side: &str,
) -> serde_json::Value {
    let q = free_port();
    let queue_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let queue_rtp = queue_sock.local_addr().unwrap().port();
    let phone_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let phone_rtp = phone_sock.local_addr().unwrap().port();
    let queue_uri = format!("sip:agents@127.0.0.1:{q}");
    let emonav = Emonav::start(&profile("b2bua", &queue_uri, &queue_uri).replace(
        "[transfer]\n",
        &format!("[transfer]\nmedia = \"{media}\"\n"),
    ));
    let queue = Sipp::start(
        "uas_queue.xml",
        None,
        q,
        &[
            ("rtp_port", queue_rtp.to_string()),
            ("bye_side", bye_side.to_string()),
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let at_queue = queue_media(queue_sock, stop.clone());
    let phone = relay_phone(phone_sock, stop.clone());
    let mut keys = vec![("rtp_port", phone_rtp.to_string())];
    keys.extend(caller_keys.iter().map(|(k, v)| (*k, v.clone())));
    let caller = Sipp::start(caller, Some(emonav.sip.to_string()), free_port(), &keys);
    let (caller_status, _) = caller.wait(Duration::from_secs(40));
    let (queue_status, queue_log) = queue.wait(Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (from_queue, from_emonav) = phone.join().unwrap();
    let at_queue = at_queue.join().unwrap();
    assert!(caller_status.success(), "caller scenario failed");
    assert!(queue_status.success(), "queue scenario failed");
    let record = emonav.next_event(Duration::from_secs(10));
    assert_eq!(record["outcome"], "bridged", "{record}");
    assert_eq!(record["bridge_media"], "relay", "{record}");
    // The queue was answered with emonav's relay port, not the caller's.
    let ack = logged(&queue_log, "ACK-SDP:").expect("ACK SDP logged");
    let relay_port: u16 = ack.trim_start_matches("m=audio ").parse().unwrap();
    assert_ne!(relay_port, phone_rtp);
    let relayed = at_queue.iter().filter(|a| a.port() == relay_port).count();
    assert!(
        relayed >= 40 && relayed == at_queue.len(),
        "{relayed} of {} packets at the queue from emonav's relay port",
        at_queue.len()
    );
    assert!(
        from_queue >= 40,
        "{from_queue} of the queue's packets reached the caller ({from_emonav} others)"
    );
    // Our keepalive held the line until the queue's media flowed (about the
    // 2 s decision deadline: 100 packets), not for the whole call.
    assert!(
        (50..150).contains(&from_emonav),
        "{from_emonav} keepalive packets at the caller"
    );
    let r = &record["relay"];
    assert!(
        r["to_queue_packets"].as_u64().unwrap() >= relayed as u64,
        "{r}"
    );
    assert!(
        r["to_caller_packets"].as_u64().unwrap() >= from_queue as u64,
        "{r}"
    );
    // Both legs over: no call left in /calls or the active gauge.
    let (_, calls) = emonav.http_get("/calls");
    assert_eq!(calls, "[]");
    let (_, metrics) = emonav.http_get("/metrics");
    for want in [
        "emonav_calls_active 0\n",
        "emonav_calls_bridged_relay_total 1\n",
        &format!(
            "emonav_relay_packets_total{{direction=\"to_queue\"}} {}\n",
            r["to_queue_packets"]
        ),
    ] {
        assert!(metrics.contains(want), "{want} in\n{metrics}");
    }
    record
}

#[test]
fn a_caller_refusing_the_reinvite_gets_the_media_relayed_and_the_queues_bye_ends_it() {
    let record = relayed_call("auto", "uac_b2bua_refuse_reinvite.xml", &[], "queue");
    assert_eq!(
        record["bridge_attempts"][0]["caller_reinvite"], 488,
        "{record}"
    );
}

#[test]
fn media_relay_never_reinvites_the_caller_and_the_callers_bye_ends_both_legs() {
    let record = relayed_call(
        "relay",
        "uac_b2bua_relay.xml",
        &[("hold_ms", "6000".into())],
        "caller",
    );
    assert!(
        record["bridge_attempts"][0]["caller_reinvite"].is_null(),
        "{record}"
    );
}
