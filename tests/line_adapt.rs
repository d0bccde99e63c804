//! Adaptation to the line over real calls: statistics grow with each
//! analysed call, later calls are scored through them, and they survive a
//! restart (`[adapt]`, src/adapt.rs).

mod support;

use std::time::Duration;

use support::{fixture, Emonav, Uac};

const S: Duration = Duration::from_secs(1);

/// One calm call through to the transfer; returns its event line.
fn call(emonav: &Emonav) -> serde_json::Value {
    let mut uac = Uac::new(emonav.sip);
    uac.send_invite(&uac.g711_offer());
    assert_eq!(uac.invite_final(5 * S).code, 200);
    uac.ack(true);
    uac.play(fixture("calm.ul"), 0);
    let refer = uac.expect_request("REFER", 6 * S).expect("REFER");
    uac.respond(&refer, 202, "Accepted");
    uac.notify("SIP/2.0 200 OK", true);
    let bye = uac.expect_request("BYE", 3 * S).expect("BYE");
    uac.respond(&bye, 200, "OK");
    emonav.next_event(5 * S)
}

#[test]
fn later_calls_are_scored_through_the_line_and_it_survives_a_restart() {
    let extra = "[adapt]\nmin_calls = 4\nwindow = 16\nfile = \"line.json\"\n";
    let mut emonav = Emonav::start(extra);
    let file = emonav.profile.with_file_name("line.json");
    let adapted: Vec<bool> = (0..5)
        .map(|_| call(&emonav)["line_adapted"].as_bool().unwrap())
        .collect();
    assert_eq!(
        adapted,
        [false, false, false, false, true],
        "adapted after four calls"
    );
    assert!(!file.exists(), "written every 20 calls or at shutdown");
    emonav.terminate(10 * S).expect("emonav exits on SIGTERM");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("statistics written")).unwrap();
    assert_eq!(saved["seen"], 5, "{saved}");

    // Restarted on the same profile: the first call is adapted already.
    let emonav = Emonav::start_with_profile(&emonav.profile.clone());
    let ev = call(&emonav);
    assert_eq!(ev["line_adapted"], true, "{ev}");
    assert_eq!(ev["queue"], "sip:standard@127.0.0.1:5070", "{ev}");
}
