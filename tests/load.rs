//! The short CI version of the load harness (benches/load/, issue 11 item 5):
//! SIPp callers with RTP audio (benches/load/uac_load.xml) against the real
//! binary on loopback, driven by benches/load/ramp.py (python3, standard
//! library only; scripts/test.sh installs python3 and SIPp when missing).
//! Figures are not asserted here, only outcomes a user would check: every
//! call transferred at a moderate rate, and an overload refused with fast
//! `503`s carrying Retry-After instead of timeouts.

mod support;

use std::process::Command;

use serde_json::Value;
use support::root;

/// One ramp step's result line from `ramp.py --json`.
fn ramp(args: &[&str]) -> Value {
    let out = Command::new("python3")
        .arg(root().join("benches/load/ramp.py"))
        .args([
            "--binary",
            env!("CARGO_BIN_EXE_emonav"),
            "--json",
            "--no-pin",
        ])
        .args(["--pause", "0", "--settle", "0"])
        .args(args)
        .output()
        .expect("python3 is installed (scripts/test.sh installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ramp.py failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let step = stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v.get("offered_cps").is_some())
        .expect("a step line");
    eprintln!("{step}");
    step
}

fn n(step: &Value, key: &str) -> u64 {
    step[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {step}"))
}

#[test]
fn moderate_rate_every_call_is_transferred() {
    let step = ramp(&["--rates", "30", "--calls", "240"]);
    assert_eq!(n(&step, "failed"), 0, "{step}");
    assert_eq!(n(&step, "refused_503"), 0, "{step}");
    assert_eq!(n(&step, "answered"), 240, "{step}");
    assert_eq!(n(&step, "transferred"), 240, "{step}");
    // Several calls overlapped: this was load, not calls one after another.
    assert!(n(&step, "concurrent") >= 10, "{step}");
}

#[test]
fn overload_gets_fast_503_and_admitted_calls_are_transferred() {
    // 120 calls in about a second against room for 10 at a time: most are
    // refused, each admitted call must still end in a transfer. A 503
    // without Retry-After fails its call in the scenario (check_it).
    let step = ramp(&["--max-calls", "10", "--rates", "100", "--calls", "120"]);
    let (refused, transferred) = (n(&step, "refused_503"), n(&step, "transferred"));
    assert_eq!(n(&step, "failed"), 0, "{step}");
    assert!(refused >= 60, "{step}");
    assert!(transferred >= 10, "{step}");
    assert_eq!(n(&step, "answered"), transferred, "{step}");
    assert_eq!(refused + transferred, 120, "{step}");
    // Fast: refused before any call state exists; a timeout would take
    // seconds (SIPp retransmits the INVITE from 500 ms on).
    let p99 = step["refused_p99_ms"].as_f64().unwrap();
    assert!(p99 < 250.0, "INVITE->503 p99 {p99} ms: {step}");
}
