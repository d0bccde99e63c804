//! One signal path (issue 10.1): the same recording, carried as full-band
//! PCMU, band-limited PCMU and Opus over real RTP (SIPp) to the real binary,
//! must give the same P(high arousal), within 0.05, and the same queue. What
//! the line carries (band, codec, rate) must not decide where a caller goes.
//!
//! The recording is made at test time with espeak-ng (the agitated voice of
//! tests/fixtures/make-fixtures.sh, but at espeak's own 22.05 kHz, not
//! band-limited), and the three streams from it in-process: resampled to
//! 8 kHz and μ-law coded (full band, 0–4 kHz); the same through the telephone
//! conditions the model was trained under (`telephone_8k`: 300 Hz high-pass,
//! μ-law); resampled to 16 kHz and Opus-coded (tests/support/pcap.rs, as
//! examples/rtp_pcap.rs --opus).

mod support;

#[path = "support/pcap.rs"]
mod pcap;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use emonav_dsp::{g711, telephone};
use support::{root, Emonav};

const RATE: u32 = 22_050;

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "emonav-signal-path-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Shouted, fast, high phrases (make-fixtures.sh's agitated voice) at
/// 22.05 kHz, peak-normalised to -1 dBFS, 4.5 s.
fn agitated_recording(dir: &Path) -> Vec<f32> {
    let phrases = [
        (250, 90, "This is ridiculous!"),
        (260, 99, "I have called five times already!"),
        (250, 80, "Put me through to someone right now!"),
        (260, 95, "I am not waiting any longer!"),
    ];
    let mut audio = Vec::new();
    for (i, (speed, pitch, text)) in phrases.iter().enumerate() {
        let wav = dir.join(format!("phrase{i}.wav"));
        let status = Command::new("espeak-ng")
            .args(["-v", "en-us+f3", "-s", &speed.to_string()])
            .args(["-p", &pitch.to_string(), "-a", "200", "-w"])
            .arg(&wav)
            .arg(text)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("espeak-ng is installed (Debian package espeak-ng)");
        assert!(status.success(), "espeak-ng failed");
        let mut r = emonav_offline::hound::WavReader::open(&wav).unwrap();
        assert_eq!(r.spec().sample_rate, RATE, "espeak-ng's rate");
        audio.extend(r.samples::<i16>().map(|s| s.unwrap() as f32 / 32768.0));
    }
    audio.truncate(RATE as usize * 9 / 2);
    let peak = audio.iter().fold(0f32, |m, v| m.max(v.abs()));
    let gain = 10f32.powf(-1.0 / 20.0) / peak;
    audio.iter_mut().for_each(|v| *v *= gain);
    audio
}

fn ulaw(pcm: &[i16]) -> Vec<u8> {
    let mut out = vec![0u8; pcm.len()];
    g711::encode_ulaw(pcm, &mut out);
    out
}

fn to_i16(x: &[f32]) -> Vec<i16> {
    x.iter()
        .map(|v| (v * 32767.0).clamp(-32768.0, 32767.0) as i16)
        .collect()
}

/// The three streams as pcap files in `dir`: (condition, scenario, path).
fn streams(dir: &Path, audio: &[f32]) -> Vec<(&'static str, &'static str, PathBuf)> {
    let full = to_i16(&telephone::resample(audio, RATE, 8000).unwrap());
    let band = telephone::telephone_8k(audio, RATE).unwrap();
    let wide = to_i16(&telephone::resample(audio, RATE, 16_000).unwrap());
    let opus = pcap::opus_packets(&wide, 20).unwrap();
    let files = [
        (
            "pcmu-fullband",
            "uac_refer.xml",
            pcap::g711_pcap(0, 20, 8000, &ulaw(&full)),
        ),
        (
            "pcmu-band",
            "uac_refer.xml",
            pcap::g711_pcap(0, 20, 8000, &ulaw(&band)),
        ),
        (
            "opus",
            "uac_refer_opus.xml",
            pcap::rtp_pcap(96, 20, 48_000, opus.iter().map(Vec::as_slice)),
        ),
    ];
    files
        .into_iter()
        .map(|(name, scenario, bytes)| {
            let path = dir.join(format!("{name}.pcap"));
            std::fs::write(&path, bytes).unwrap();
            (name, scenario, path)
        })
        .collect()
}

/// One SIPp call from `scenario` playing `pcap`; true when SIPp succeeded.
fn sipp_call(emonav: &Emonav, dir: &Path, scenario: &str, pcap: &Path) -> bool {
    let xml = std::fs::read_to_string(root().join("tests/sipp").join(scenario))
        .unwrap()
        .replace("../fixtures/agitated-pcmu.pcap", pcap.to_str().unwrap())
        .replace("../fixtures/agitated-opus.pcap", pcap.to_str().unwrap());
    let sf = dir.join(format!(
        "{}.xml",
        pcap.file_stem().unwrap().to_str().unwrap()
    ));
    std::fs::write(&sf, xml).unwrap();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let media = 30_000 + 4 * fastrand::u16(0..5_000);
    Command::new("sipp")
        .arg(emonav.sip.to_string())
        .arg("-sf")
        .arg(&sf)
        .args(["-m", "1", "-l", "1", "-i", "127.0.0.1", "-mi", "127.0.0.1"])
        .args(["-p", &port.to_string(), "-mp", &media.to_string()])
        .args(["-timeout", "30", "-timeout_error", "-nostdin"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("sipp is installed (Debian package sip-tester; scripts/test.sh installs it)")
        .success()
}

#[test]
fn one_recording_gets_one_arousal_whatever_the_line_carries() {
    let dir = temp_dir();
    let audio = agitated_recording(&dir);
    let emonav = Emonav::start("");
    let mut seen = Vec::new();
    for (name, scenario, pcap) in streams(&dir, &audio) {
        assert!(
            sipp_call(&emonav, &dir, scenario, &pcap),
            "{name}: sipp failed"
        );
        let ev = emonav.next_event(Duration::from_secs(5));
        assert_eq!(ev["outcome"], "transferred", "{name}: {ev}");
        let arousal = ev["arousal"].as_f64().expect("arousal in the event");
        let queue = ev["queue"].as_str().unwrap().to_string();
        eprintln!(
            "{name:<14} codec {} P(high arousal) {arousal:.3} queue {queue} ({}, {} ms)",
            ev["codec"], ev["decision_reason"], ev["answer_to_refer_ms"]
        );
        seen.push((name, arousal, queue));
    }
    let (lo, hi) = seen
        .iter()
        .fold((1f64, 0f64), |(lo, hi), (_, p, _)| (lo.min(*p), hi.max(*p)));
    assert!(
        hi - lo <= 0.05,
        "P(high arousal) differs by {:.3} across the conditions: {seen:?}",
        hi - lo
    );
    assert!(
        seen.iter().all(|(_, _, q)| *q == seen[0].2),
        "the queue depends on the line: {seen:?}"
    );
}
