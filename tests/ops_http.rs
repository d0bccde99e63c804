//! The operator's HTTP API over real sockets with real SIPp callers:
//! `/metrics` moves by exactly the calls made, `/calls` shows a call in
//! progress with its scores, `/events` streams its start, scores, decision
//! and end (issue 12).

#[path = "support/sipp.rs"]
mod sipp;
mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use support::Emonav;

/// Sample values of the exposition, by series (`name{labels}`).
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Sum of the series of `name` whose labels contain every one of `labels`.
fn sum(s: &HashMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    s.iter()
        .filter(|(k, _)| {
            (k.as_str() == name || k.starts_with(&format!("{name}{{")))
                && labels.iter().all(|l| k.contains(l))
        })
        .map(|(_, v)| v)
        .sum()
}

/// `(event, data)` pairs of `/events`, read on a thread.
fn subscribe(http: std::net::SocketAddr) -> mpsc::Receiver<(String, serde_json::Value)> {
    let mut s = TcpStream::connect(http).unwrap();
    s.write_all(b"GET /events HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n\r\n")
        .unwrap();
    // Subscribed once the response head is here: events from then on come.
    let mut reader = BufReader::new(s);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut event = String::new();
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if let Some(e) = line.strip_prefix("event: ") {
                event = e.to_string();
            } else if let Some(d) = line.strip_prefix("data: ") {
                if let Ok(v) = serde_json::from_str(d) {
                    if tx.send((event.clone(), v)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

#[test]
fn metrics_calls_and_events_follow_sipp_calls() {
    let emonav = Emonav::start("");
    let events = subscribe(emonav.http);
    let (status, text) = emonav.http_get("/metrics");
    assert!(status.contains("200"), "{status}");
    let before = samples(&text);
    assert_eq!(sum(&before, "emonav_calls_started_total", &[]), 0.0);

    // Call 1 (agitated), watched through /calls while it is analysed.
    let sip = emonav.sip;
    let caller = std::thread::spawn(move || sipp::Sipp::refer_call(sip, "agitated-pcmu.pcap"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let (status, body) = emonav.http_get("/calls");
        assert!(status.contains("200"), "{status}");
        let calls: serde_json::Value = serde_json::from_str(&body).unwrap();
        let scored = calls.as_array().unwrap().iter().find(|c| {
            c["speech_ms"].as_u64().unwrap_or(0) > 0 && c["arousal"].as_f64().unwrap_or(0.0) > 0.0
        });
        if let Some(c) = scored {
            break c.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no call with scores in /calls: {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        seen["phase"] == "analysing" || seen["phase"] == "decided",
        "{seen}"
    );
    assert!(
        seen["from"]
            .as_str()
            .unwrap()
            .contains("sip:caller@127.0.0.1"),
        "{seen}"
    );
    assert!(caller.join().unwrap(), "SIPp call 1 failed");
    assert_eq!(
        emonav.next_event(Duration::from_secs(5))["outcome"],
        "transferred"
    );
    // Call 2 (calm).
    assert!(
        sipp::Sipp::refer_call(sip, "calm-pcmu.pcap"),
        "SIPp call 2 failed"
    );
    assert_eq!(
        emonav.next_event(Duration::from_secs(5))["outcome"],
        "transferred"
    );
    let (_, body) = emonav.http_get("/calls");
    assert_eq!(body, "[]", "ended calls leave /calls");

    let (_, text) = emonav.http_get("/metrics");
    let after = samples(&text);
    let delta =
        |name: &str, labels: &[&str]| sum(&after, name, labels) - sum(&before, name, labels);
    for (name, labels, want) in [
        ("emonav_calls_started_total", &[][..], 2.0),
        ("emonav_calls_ended_total", &[], 2.0),
        ("emonav_calls_active", &[], 0.0),
        (
            "emonav_calls_by_outcome_total",
            &["outcome=\"transferred\""],
            2.0,
        ),
        ("emonav_calls_routed_total", &["mode=\"refer\""], 2.0),
        ("emonav_decisions_total", &[], 2.0),
        (
            "emonav_decisions_total",
            &["queue=\"sip:deescalation@", "emotion=\"agitated\""],
            1.0,
        ),
        (
            "emonav_decisions_total",
            &["queue=\"sip:standard@", "emotion=\"calm\""],
            1.0,
        ),
        ("emonav_answer_to_refer_seconds_count", &[], 2.0),
        ("emonav_first_audio_to_decision_seconds_count", &[], 2.0),
        ("emonav_decision_arousal_score_count", &[], 2.0),
        ("emonav_decision_anger_score_count", &[], 2.0),
        (
            "emonav_sip_requests_total",
            &["direction=\"received\"", "method=\"INVITE\""],
            2.0,
        ),
        (
            "emonav_sip_requests_total",
            &["direction=\"sent\"", "method=\"REFER\""],
            2.0,
        ),
        (
            "emonav_sip_responses_total",
            &["direction=\"received\"", "code=\"202\""],
            2.0,
        ),
        ("emonav_sip_rejected_total", &[], 0.0),
    ] {
        assert_eq!(delta(name, labels), want, "{name} {labels:?}:\n{text}");
    }
    // The score histograms hold both calls' scores.
    assert_eq!(
        sum(
            &after,
            "emonav_decision_arousal_score_bucket",
            &["le=\"+Inf\""]
        ),
        2.0
    );
    assert!(
        sum(&after, "emonav_rtp_packets_total", &[]) > 100.0,
        "{text}"
    );

    // The stream: both calls started, were scored, decided and ended.
    let mut got: Vec<(String, serde_json::Value)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.iter().filter(|(e, _)| e == "call_end").count() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(ev) => got.push(ev),
            Err(_) => panic!("missing call_end events; got {got:?}"),
        }
    }
    let of = |kind: &str| -> Vec<&serde_json::Value> {
        got.iter()
            .filter(|(e, _)| e == kind)
            .map(|(_, v)| v)
            .collect()
    };
    assert_eq!(of("call_started").len(), 2, "{got:?}");
    let decisions = of("decision");
    let queues: Vec<&str> = decisions
        .iter()
        .map(|d| d["queue"].as_str().unwrap())
        .collect();
    assert_eq!(
        queues,
        [
            "sip:deescalation@127.0.0.1:5070",
            "sip:standard@127.0.0.1:5070"
        ],
        "{got:?}"
    );
    // The agitated caller is flagged (default flag_arousal 0.8): a flag
    // event for it, as many as /metrics counts.
    let flagged = decisions.iter().filter(|d| d["flagged"] == true).count();
    assert_eq!(flagged, 1, "{got:?}");
    assert_eq!(of("flag").len(), 1, "{got:?}");
    assert_eq!(of("flag")[0]["queue"], "sip:deescalation@127.0.0.1:5070");
    assert_eq!(delta("emonav_calls_flagged_total", &[]), 1.0, "{text}");
    assert!(
        of("score")
            .iter()
            .any(|s| s["arousal"].as_f64().unwrap() > 0.0),
        "{got:?}"
    );
    assert!(
        of("call_end")
            .iter()
            .all(|e| e["outcome"] == "transferred" && e["answer_to_refer_ms"].as_u64().is_some()),
        "{got:?}"
    );
}

#[test]
fn routes_keep_their_answers_on_the_new_server() {
    let emonav = Emonav::start("");
    assert_eq!(
        emonav.http_get("/healthz"),
        ("HTTP/1.1 200 OK".into(), "ok\n".into())
    );
    assert_eq!(emonav.http_get("/nowhere").0, "HTTP/1.1 404 Not Found");
    assert_eq!(
        emonav.http_get("/reload").0,
        "HTTP/1.1 405 Method Not Allowed"
    );
    assert_eq!(
        emonav.http_get("/decisions/unknown?wait_ms=10").0,
        "HTTP/1.1 404 Not Found"
    );
    assert_eq!(
        emonav.http_get("/decisions/x?wait_ms=soon").0,
        "HTTP/1.1 400 Bad Request"
    );
    let (status, body) = emonav.http_get("/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        body.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF: {body}"
    );
    assert!(
        body.contains("# TYPE emonav_answer_to_refer_seconds histogram"),
        "{body}"
    );
}
