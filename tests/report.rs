//! `emonav report` over the event lines of real calls: three SIPp callers
//! (the same number twice agitated, once calm) through a running emonav,
//! then the report of its event lines, as JSON and as the HTML page.

#[path = "support/sipp.rs"]
mod sipp;
mod support;

use std::time::Duration;

use serde_json::Value;
use support::{cli, Emonav};

#[test]
fn a_report_of_real_calls_counts_queues_flags_and_the_repeat_caller() {
    let emonav = Emonav::start("");
    let mut lines = String::new();
    for pcap in ["agitated-pcmu.pcap", "calm-pcmu.pcap", "agitated-pcmu.pcap"] {
        assert!(sipp::Sipp::refer_call(emonav.sip, pcap), "SIPp call failed");
        let record = emonav.next_event(Duration::from_secs(5));
        assert_eq!(record["outcome"], "transferred", "{record}");
        lines.push_str(&record.to_string());
        lines.push('\n');
    }
    // Another tool's line in the same log is skipped, not fatal.
    lines.push_str("{\"level\":\"info\",\"msg\":\"rotated\"}\n");
    let dir = emonav.profile.parent().unwrap().to_path_buf();
    let events = dir.join("events.jsonl");
    std::fs::write(&events, lines).unwrap();
    let html = dir.join("report.html");

    let (ok, out, err) = cli(&[
        "report",
        "--events",
        events.to_str().unwrap(),
        "--since",
        "1h",
        "--out",
        html.to_str().unwrap(),
        "--json",
    ]);
    assert!(ok, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["calls"], 3, "{r:#}");
    assert_eq!(r["skipped_lines"], 1, "{r:#}");
    assert_eq!(r["by_queue"]["sip:deescalation@127.0.0.1:5070"], 2, "{r:#}");
    assert_eq!(r["by_queue"]["sip:standard@127.0.0.1:5070"], 1, "{r:#}");
    assert_eq!(r["by_outcome"]["transferred"], 3, "{r:#}");
    assert_eq!(r["by_emotion"]["agitated"], 2, "{r:#}");
    assert_eq!(r["flagged"], 2, "{r:#}");
    assert_eq!(r["answer_to_refer_ms"]["count"], 3, "{r:#}");
    let per_hour: u64 = r["hours"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["calls"].as_u64().unwrap())
        .sum();
    assert_eq!(per_hour, 3, "{r:#}");
    assert_eq!(r["repeat_callers"][0]["caller"], "caller", "{r:#}");
    assert_eq!(r["repeat_callers"][0]["calls"], 3, "{r:#}");
    assert_eq!(r["repeat_callers"][0]["flagged"], 2, "{r:#}");
    assert_eq!(
        r["repeat_callers"][0]["last_queue"], "sip:deescalation@127.0.0.1:5070",
        "{r:#}"
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert_eq!(page.matches("<svg").count(), 2, "two charts");
    assert!(page.contains("Calls per hour (UTC), by queue"));
    assert!(page.contains("sip:deescalation@127.0.0.1:5070"));
    assert!(page.contains("<td>caller</td><td class=n>3</td>"));

    // A window before these calls holds none of them.
    let (ok, out, _) = cli(&[
        "report",
        "--events",
        events.to_str().unwrap(),
        "--until",
        "1h",
        "--json",
    ]);
    assert!(ok);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (r["calls"].as_u64(), r["outside_window"].as_u64()),
        (Some(0), Some(3))
    );

    // A bad instant is refused with what was expected.
    let (ok, _, err) = cli(&[
        "report",
        "--events",
        events.to_str().unwrap(),
        "--json",
        "--since",
        "yesterday",
    ]);
    assert!(!ok);
    assert!(err.contains("RFC 3339"), "{err}");
}
