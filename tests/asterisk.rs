//! A real Asterisk 22 (PJSIP, app_queue) in front of the real binary on
//! loopback, configured with the shipped samples (sip-profiles/asterisk/
//! pjsip.conf, extensions.conf and queues.conf, `#include`d unchanged by the
//! templates in tests/asterisk/, which add only the test's callers, agents
//! and ports) and emonav running sip-profiles/asterisk.toml (its addresses
//! moved to the test's ports). SIPp callers dial the sample's entry extension;
//! SIPp agents answer the sample queues' members. Besides the sample's
//! emonav, a second instance sits behind a `direct_media = yes` copy of its
//! endpoint and a third behind one that allows Opus. One Asterisk serves
//! every call; the calls that can run at once do. The scores each fixture
//! got through Asterisk are printed (`-- --nocapture`).
//!
//! Asterisk is the shared prebuilt tree (../shared/tools/asterisk, installed
//! to /opt/asterisk-emonav by scripts/test.sh); without it this test fails
//! and says how to install it.

mod support;

#[path = "asterisk/pbx.rs"]
mod pbx;
#[path = "asterisk/peers.rs"]
mod peers;

use std::time::Duration;

use pbx::{free_port, temp_dir, AgentPorts, Asterisk};
use peers::{transferor, wait, Agent, Caller, RtpCount, Run};
use support::{root, Emonav};

/// emonav with sip-profiles/asterisk.toml, registering to `asterisk` as
/// `name` (the sample's endpoint `emonav`, or the test's copies of it).
fn emonav(asterisk: &Asterisk, name: &str) -> Emonav {
    let mut profile = std::fs::read_to_string(root().join("sip-profiles/asterisk.toml")).unwrap();
    profile = profile.replace("127.0.0.1:5070", &asterisk.sip.to_string());
    if name != "emonav" {
        profile = profile
            .replace("user = \"emonav\"", &format!("user = \"{name}\""))
            .replace("username = \"emonav\"", &format!("username = \"{name}\""))
            .replace("sip:emonav@", &format!("sip:{name}@"));
    }
    // The test's own RTP range, on top of the sample's [media].
    assert_eq!(profile.matches("\n[media]\n").count(), 1, "{profile}");
    let base = 20_000 + 2 * fastrand::u16(0..10_000);
    profile = profile.replace(
        "\n[media]\n",
        &format!(
            "\n[media]\nrtp_port_min = {base}\nrtp_port_max = {}\n",
            base + 200
        ),
    );
    let path = temp_dir("profile").join(format!("{name}.toml"));
    std::fs::write(&path, profile).unwrap();
    let e = Emonav::start_with_profile(&path);
    assert!(
        e.wait_log(": registered", Duration::from_secs(10))
            .is_some(),
        "{name} did not register to Asterisk:\n{}",
        asterisk.log()
    );
    e
}

/// The call's event line, its agent's SIPp run and RTP, its caller's run.
struct Routed {
    event: serde_json::Value,
    agent: Run,
    rtp: RtpCount,
    caller: Run,
}

/// Check what a user checks: the caller's call ended cleanly, emonav routed
/// it to `queue` and transferred it, and the queue's agent got the call with
/// emonav's verdict in its INVITE and the caller's voice on its audio port.
fn assert_reached_agent(r: &Routed, queue: &str, emotion: &str, asterisk: &Asterisk) {
    let ev = &r.event;
    let context = format!(
        "event {ev}\ncaller errors:\n{}\nagent errors:\n{}\nAsterisk log:\n{}",
        r.caller.errors,
        r.agent.errors,
        asterisk.log()
    );
    assert!(r.caller.status.success(), "caller failed\n{context}");
    assert!(r.agent.status.success(), "agent failed\n{context}");
    assert_eq!(
        (ev["outcome"].as_str(), ev["emotion"].as_str()),
        (Some("transferred"), Some(emotion)),
        "{context}"
    );
    let target = format!("sip:{queue}@{}", asterisk.sip);
    assert_eq!(ev["queue"], target.as_str(), "{context}");
    // Asterisk answered the REFER (2xx), with no NOTIFY to wait for.
    assert_eq!(ev["refer_attempts"][0]["response"], 200, "{context}");
    assert_eq!(r.agent.logged("AGENT-EMOTION"), [emotion], "{context}");
    let arousal = format!("{:.2}", ev["arousal"].as_f64().unwrap());
    assert_eq!(
        r.agent.logged("AGENT-AROUSAL"),
        [arousal.as_str()],
        "{context}"
    );
    // The queue's dialplan read the values from TRANSFER_DATA.
    let noop = format!("emonav: queue {queue} emotion={emotion} arousal={arousal}");
    assert!(asterisk.log().contains(&noop), "no {noop:?}\n{context}");
    // At least 2 s of the caller talking to the agent (50 packets a second).
    assert!(r.rtp.voiced >= 100, "agent heard {:?}\n{context}", r.rtp);
    println!("{queue} agent heard the caller: {:?}", r.rtp);
}

/// The calls' event lines, in the order they ended.
fn events_by_queue(emonav: &Emonav, n: usize) -> Vec<serde_json::Value> {
    (0..n)
        .map(|_| emonav.next_event(Duration::from_secs(30)))
        .collect()
}

fn find<'a>(events: &'a [serde_json::Value], queue: &str) -> &'a serde_json::Value {
    events
        .iter()
        .find(|e| e["queue"].as_str().is_some_and(|q| q.contains(queue)))
        .unwrap_or_else(|| panic!("no call went to {queue}: {events:?}"))
}

/// The scores a fixture's call reported through Asterisk, for the
/// test output (`cargo test --test asterisk -- --nocapture`).
fn report(what: &str, ev: &serde_json::Value) {
    println!(
        "through Asterisk: {what}: anger {} arousal {} confidence {} emotion {} codec {} reason {}",
        ev["anger"],
        ev["arousal"],
        ev["confidence"],
        ev["emotion"],
        ev["codec"],
        ev["decision_reason"]
    );
}

#[test]
fn asterisk_with_the_shipped_samples_queues_callers_by_emotion() {
    let ports = AgentPorts {
        deescalation: free_port(),
        standard: free_port(),
        operator: free_port(),
        default: free_port(),
        transferor: free_port(),
    };
    let asterisk = Asterisk::start(&ports);
    // Every SIP message in Asterisk's log, to check what it sent and got.
    asterisk.cli("pjsip set logger on");

    // Registration with digest: Asterisk challenged, emonav answered.
    let mut plain = emonav(&asterisk, "emonav");
    let mut direct = emonav(&asterisk, "emonav-dm");
    let mut opus = emonav(&asterisk, "emonav-opus");
    let log = asterisk.log();
    assert!(log.contains("SIP/2.0 401 Unauthorized"), "{log}");
    assert!(
        log.contains("Authorization: Digest username=\"emonav\""),
        "{log}"
    );
    let contacts = asterisk.cli("pjsip show contacts");
    for (name, e) in [
        ("emonav", &plain),
        ("emonav-dm", &direct),
        ("emonav-opus", &opus),
    ] {
        let binding = format!("{name}/sip:{name}@{}", e.sip);
        assert!(contacts.contains(&binding), "no {binding}:\n{contacts}");
    }

    // Three callers at once: agitated (μ-law), calm on an A-law-only trunk,
    // and one who presses 0 and then talks. A fourth, meanwhile, is
    // transferred by a SIPp that asks for progress reports, to the default
    // queue where no agent answers.
    let agents = [
        Agent::start(ports.deescalation),
        Agent::start(ports.standard),
        Agent::start(ports.operator),
    ];
    let progress = transferor(ports.transferor, "default");
    std::thread::sleep(Duration::from_millis(300));
    let callers = [
        Caller {
            scenario: "uac_asterisk_caller.xml",
            service: "3666",
            user: "caller",
            codecs: "0 8 101",
            audio: ["agitated-pcmu.pcap"; 2],
            media_port: Caller::media_port(),
        },
        Caller {
            scenario: "uac_asterisk_caller.xml",
            service: "3666",
            user: "caller-alaw",
            codecs: "8 0 101",
            audio: ["calm-pcma.pcap"; 2],
            media_port: Caller::media_port(),
        },
        Caller {
            scenario: "uac_asterisk_caller.xml",
            service: "3666",
            user: "caller",
            codecs: "0 8 101",
            audio: ["/usr/share/sip-tester/dtmf_2833_0.pcap", "calm-pcmu.pcap"],
            media_port: Caller::media_port(),
        },
        Caller {
            scenario: "uac_asterisk_caller.xml",
            service: "3668",
            user: "caller",
            codecs: "0 8 101",
            audio: ["calm-pcmu.pcap"; 2],
            media_port: Caller::media_port(),
        },
    ];
    let runs: Vec<Run> = std::thread::scope(|s| {
        let handles: Vec<_> = callers
            .iter()
            .map(|c| s.spawn(|| c.run(asterisk.sip)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let heard: Vec<(Run, RtpCount)> = agents.into_iter().map(Agent::finish).collect();
    // refer_blind_progress = no (the sample): NOTIFY 100 and 200 within 2 s
    // of the REFER, though no agent ever answers. Asterisk's default would
    // send nothing until the caller leaves the queue.
    let progress = wait(progress);
    assert!(
        progress.status.success(),
        "no prompt NOTIFY 200 with refer_blind_progress = no:\n{}\n{}",
        progress.errors,
        asterisk.log()
    );
    assert_eq!(progress.logged("NOTIFY"), ["SIP/2.0 100", "SIP/2.0 200"]);
    let events = events_by_queue(&plain, 3);
    assert!(runs[3].status.success(), "{}", runs[3].errors);
    let mut routed = runs
        .into_iter()
        .zip(heard)
        .zip(["deescalation", "standard", "operator"])
        .map(|((caller, (agent, rtp)), queue)| Routed {
            event: find(&events, queue).clone(),
            agent,
            rtp,
            caller,
        });
    let agitated = routed.next().unwrap();
    assert_reached_agent(&agitated, "deescalation", "agitated", &asterisk);
    assert_eq!(agitated.event["codec"], "pcmu");
    let calm = routed.next().unwrap();
    assert_reached_agent(&calm, "standard", "calm", &asterisk);
    // Asterisk offered A-law first for the A-law trunk: answered A-law.
    assert_eq!(calm.event["codec"], "pcma", "{}", calm.event);
    let operator = routed.next().unwrap();
    assert_reached_agent(&operator, "operator", "operator", &asterisk);
    assert_eq!(operator.event["decision_reason"], "dtmf");
    report("agitated fixture", &agitated.event);
    report("calm fixture (A-law)", &calm.event);

    // What docs/pbx.md says Asterisk does with the transfer: its INVITE
    // offers norefersub, emonav's REFER declines the subscription, Asterisk
    // echoes it and sends no NOTIFY.
    let log = asterisk.log();
    assert!(log.contains("Supported: 100rel, timer, replaces, norefersub"));
    assert!(log.contains("Refer-Sub: false"));
    assert!(
        !log.contains("NOTIFY sip:emonav"),
        "Asterisk sent emonav a NOTIFY:\n{log}"
    );
    assert!(!log.contains("No application"), "{log}");

    // direct_media = yes: Asterisk sends the caller's audio straight to
    // emonav (re-INVITE), then takes it back for the queue.
    let agent = Agent::start(ports.deescalation);
    std::thread::sleep(Duration::from_millis(300));
    let caller = Caller {
        scenario: "uac_asterisk_caller_direct.xml",
        service: "3667",
        user: "caller-dm",
        codecs: "0 8 101",
        audio: ["agitated-pcmu.pcap"; 2],
        media_port: Caller::media_port(),
    };
    // Meanwhile an Opus-only caller through the Opus-capable instance.
    let opus_agent = Agent::start(ports.standard);
    let opus_caller = Caller {
        scenario: "uac_asterisk_caller.xml",
        service: "3669",
        user: "caller-opus",
        codecs: "96",
        audio: ["calm-opus.pcap"; 2],
        media_port: Caller::media_port(),
    };
    let (caller_run, opus_run) = std::thread::scope(|s| {
        let opus = s.spawn(|| opus_caller.run(asterisk.sip));
        (caller.run(asterisk.sip), opus.join().unwrap())
    });
    let (agent_run, rtp) = agent.finish();
    let dm = Routed {
        event: direct.next_event(Duration::from_secs(30)),
        agent: agent_run,
        rtp,
        caller: caller_run,
    };
    assert_reached_agent(&dm, "deescalation", "agitated", &asterisk);
    report("agitated fixture, direct media", &dm.event);
    let latched = direct.drain_log();
    let from_caller = format!("source=127.0.0.1:{}", caller.media_port);
    assert!(
        latched
            .iter()
            .any(|l| l.contains("RTP latched") && l.contains(&from_caller)),
        "emonav-dm did not get the caller's RTP directly ({from_caller}):\n{}",
        latched.join("\n")
    );
    // The re-INVITE taking the media back may cross emonav's BYE: 481.
    if latched
        .iter()
        .any(|l| l.contains("after the session ended: 481"))
    {
        println!("direct media: Asterisk's re-INVITE crossed emonav's BYE and got 481");
    }

    // Opus without codec_opus (docs/pbx.md, step 3): Asterisk offers emonav
    // the caller's Opus first and emonav answers Opus, so the call is
    // analysed; the G.711 agent then gets the call but Asterisk cannot
    // translate, and drops the caller.
    let ev = opus.next_event(Duration::from_secs(30));
    report("calm fixture, Opus through Asterisk", &ev);
    assert_eq!(
        (
            ev["codec"].as_str(),
            ev["emotion"].as_str(),
            ev["outcome"].as_str()
        ),
        (Some("opus"), Some("calm"), Some("transferred")),
        "{ev}"
    );
    // Its endpoint hangs up after 2 s without RTP from emonav (test glue's
    // rtp_timeout = 2): a call decided later lived on the sparse keepalive.
    assert!(ev["answer_to_refer_ms"].as_u64().unwrap() > 2_500, "{ev}");
    let (opus_agent, _) = opus_agent.finish();
    assert!(opus_agent.status.success(), "{}", opus_agent.errors);
    let log = asterisk.log();
    assert!(
        log.contains("couldn't make PJSIP/caller-opus"),
        "Asterisk bridged Opus to G.711 after all:\n{log}"
    );
    assert!(!opus_run.status.success() && opus_run.errors.contains("unexpected BYE"));

    // SIGTERM: all un-REGISTER, and Asterisk drops their bindings.
    for e in [&mut plain, &mut direct, &mut opus] {
        let status = e
            .terminate(Duration::from_secs(5))
            .expect("exit on SIGTERM");
        assert!(status.success(), "{status:?}");
    }
    let contacts = asterisk.cli("pjsip show contacts");
    assert!(
        !contacts.contains("emonav/")
            && !contacts.contains("emonav-dm/")
            && !contacts.contains("emonav-opus/"),
        "bindings left after SIGTERM:\n{contacts}"
    );
}
