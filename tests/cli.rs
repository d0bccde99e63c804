//! The binary's verbs, as an operator uses them.

mod support;

use support::cli as emonav;

#[test]
fn check_config_accepts_the_default_profile() {
    let (ok, out, _) = emonav(&["check-config"]);
    assert!(ok);
    assert!(out.contains("sip-profiles/default.toml: ok"), "{out}");
    assert!(out.contains("udp:127.0.0.1:5060"), "{out}");
    assert!(out.contains("sip:deescalation@127.0.0.1:5070"), "{out}");
    assert!(
        out.contains("digit 0 -> sip:operator@127.0.0.1:5070"),
        "{out}"
    );
}

#[test]
fn check_config_names_the_bad_key() {
    let path = std::env::temp_dir().join(format!("emonav-bad-{}.toml", std::process::id()));
    std::fs::write(&path, "[policy]\nconfidence_treshold = 0.5\n").unwrap();
    let (ok, _, err) = emonav(&["check-config", "--profile", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("confidence_treshold"), "{err}");
}

#[test]
fn run_refuses_a_missing_profile_clearly() {
    let (ok, _, err) = emonav(&["run", "--profile", "/nonexistent/profile.toml"]);
    assert!(!ok);
    assert!(
        err.contains("cannot read profile /nonexistent/profile.toml"),
        "{err}"
    );
}

#[test]
fn analyze_reports_the_decision_a_call_would_take() {
    let (ok, out, err) = emonav(&["analyze", "--json", "tests/fixtures/agitated.wav"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["decision"]["queue"], "sip:deescalation@127.0.0.1:5070");
    assert_eq!(v["decision"]["reason"], "confident");
    assert!(v["decision_ms"].as_u64().unwrap() < 3000, "{v}");
    assert!(v["functionals"]["speech_ms"].as_u64().unwrap() > 3000);
    assert_eq!(
        v["timeline"].as_array().unwrap().len(),
        9,
        "every 500 ms over 4.5 s"
    );

    let (ok, table, _) = emonav(&["analyze", "tests/fixtures/calm.wav"]);
    assert!(ok);
    assert!(
        table.contains("calm -> sip:standard@127.0.0.1:5070"),
        "{table}"
    );
    assert!(table.contains("F0 mean st"), "{table}");

    let (ok, out, _) = emonav(&["analyze", "--json", "tests/fixtures/silence.wav"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["decision"]["reason"], "no_speech");
    assert_eq!(v["decision_ms"], 3000);
}

#[test]
fn analyze_plots_loudness_pitch_and_arousal_with_the_decision() {
    let svg = std::env::temp_dir().join(format!("emonav-plot-{}.svg", std::process::id()));
    let (ok, _, err) = emonav(&[
        "analyze",
        "tests/fixtures/agitated.wav",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(&svg).unwrap();
    std::fs::remove_file(&svg).unwrap();
    assert!(text.starts_with("<svg"), "{}", &text[..100.min(text.len())]);
    assert!(
        text.contains("agitated.wav -&gt; sip:deescalation@127.0.0.1:5070")
            || text.contains("agitated.wav -> sip:deescalation@127.0.0.1:5070")
    );
    for axis in ["loudness", "F0 (Hz)", "P(high arousal)", "seconds of audio"] {
        assert!(text.contains(axis), "{axis}");
    }
    // The decision instant the table reports is the one drawn.
    assert!(
        text.contains("decision at 1.26 s"),
        "the fixture decides at 1260 ms"
    );
}

#[test]
fn analyze_judges_each_rtp_stream_of_a_capture_as_a_call_would() {
    let decide = |pcap: &str| -> serde_json::Value {
        let (ok, out, err) = emonav(&["analyze", "--json", pcap]);
        assert!(ok, "{err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 1, "one stream: {v}");
        v[0].clone()
    };
    let agitated = decide("tests/fixtures/agitated-pcmu.pcap");
    assert_eq!(agitated["codec"], "pcmu");
    assert_eq!(agitated["stream"]["packets"], 225);
    assert_eq!(
        agitated["decision"]["queue"], "sip:deescalation@127.0.0.1:5070",
        "{agitated}"
    );
    assert_eq!(agitated["decision"]["reason"], "confident");
    // The same speech as a recording decides after the same audio; the
    // capture's clock adds the jitter buffer's delay.
    let (_, out, _) = emonav(&["analyze", "--json", "tests/fixtures/agitated.wav"]);
    let wav: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let (live, offline) = (
        agitated["decision_ms"].as_i64().unwrap(),
        wav["decision_ms"].as_i64().unwrap(),
    );
    assert!((0..=100).contains(&(live - offline)), "{live} vs {offline}");
    for (pcap, codec) in [
        ("tests/fixtures/calm-pcma.pcap", "pcma"),
        ("tests/fixtures/calm-opus.pcap", "opus"),
    ] {
        let calm = decide(pcap);
        assert_eq!(calm["codec"], codec);
        assert_eq!(
            calm["decision"]["queue"], "sip:standard@127.0.0.1:5070",
            "{calm}"
        );
    }
}

#[test]
fn analyze_refuses_a_file_that_is_not_wav() {
    let (ok, _, err) = emonav(&["analyze", "tests/fixtures/calm.ul"]);
    assert!(!ok);
    assert!(err.contains("cannot read tests/fixtures/calm.ul"), "{err}");
}

#[test]
fn check_config_accepts_every_shipped_profile() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sip-profiles");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let rel = format!(
            "sip-profiles/{}",
            path.file_name().unwrap().to_string_lossy()
        );
        let (ok, out, err) = emonav(&["check-config", "--profile", &rel]);
        assert!(ok, "{rel}: {err}");
        assert!(out.contains(&format!("{rel}: ok")), "{out}");
        checked.push(rel);
    }
    checked.sort();
    assert_eq!(
        checked,
        [
            "sip-profiles/asterisk.toml",
            "sip-profiles/carrier-peering.toml",
            "sip-profiles/default.toml",
            "sip-profiles/freeswitch.toml"
        ]
    );
}

#[test]
fn check_config_lists_registration_accounts_without_the_password() {
    let (ok, out, err) = emonav(&["check-config", "--profile", "sip-profiles/asterisk.toml"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("registration          sip:emonav@127.0.0.1 at sip:127.0.0.1:5070 as emonav"),
        "{out}"
    );
    assert!(!out.contains("secret"), "{out}");
    let (ok, out, _) = emonav(&[
        "check-config",
        "--profile",
        "sip-profiles/carrier-peering.toml",
    ]);
    assert!(ok);
    assert!(out.contains("registration          none"), "{out}");
    assert!(out.contains("-> tel:+493012345671"), "{out}");
}

/// Run the binary with `args` in `dir` (not the repository): (success, stdout, stderr).
fn emonav_in(dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_emonav"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn runs_from_any_folder_with_the_embedded_default_profile() {
    let dir = std::env::temp_dir().join(format!("emonav-anywhere-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let wav = support::root().join("tests/fixtures/agitated.wav");
    let (ok, out, err) = emonav_in(&dir, &["analyze", "--json", wav.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(err.contains("embedded default profile"), "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["decision"]["queue"], "sip:deescalation@127.0.0.1:5070");

    let (ok, out, err) = emonav_in(&dir, &["check-config"]);
    assert!(ok, "{err}");
    assert!(out.contains("(embedded default profile): ok"), "{out}");
    assert!(out.contains("udp:127.0.0.1:5060"), "{out}");

    // What --print-default writes is the shipped default.toml, and loads.
    let (ok, text, _) = emonav_in(&dir, &["check-config", "--print-default"]);
    assert!(ok);
    let shipped = std::fs::read_to_string(support::root().join("sip-profiles/default.toml"));
    assert_eq!(text, shipped.unwrap());
    std::fs::write(dir.join("mine.toml"), &text).unwrap();
    let (ok, out, err) = emonav_in(&dir, &["check-config", "--profile", "mine.toml"]);
    assert!(ok, "{err}");
    assert!(out.contains("mine.toml: ok"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn check_config_warns_about_a_queue_on_emonavs_own_address() {
    let path = std::env::temp_dir().join(format!("emonav-loop-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "[sip]\nlisten = \"127.0.0.1:5060\"\n[policy]\ndefault_queue = \"sip:default@127.0.0.1\"\n",
    )
    .unwrap();
    let (ok, out, err) = emonav(&["check-config", "--profile", path.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("warning: policy.default_queue sip:default@127.0.0.1 is emonav's own SIP address (127.0.0.1:5060)"),
        "{out}"
    );
    let (_, out, _) = emonav(&["check-config"]);
    assert!(!out.contains("warning"), "{out}");
}
