//! Writes an RTP stream as a classic libpcap file, for SIPp's `play_pcap_audio`.
//!
//! `cargo run --example rtp_pcap -- --pt 0 [--ptime 20] [--clock 8000] IN.ul OUT.pcap`
//! `cargo run --example rtp_pcap -- --opus --pt 96 [--ptime 20] IN.wav OUT.pcap`
//!
//! IN is raw codec payload at one byte per sample (G.711 μ-law or A-law as
//! written by `sox -t raw -e mu-law`); it is cut into `clock·ptime/1000`-byte
//! packets with consecutive sequence numbers and timestamps. With `--opus`, IN
//! is a mono 16-bit WAV file at any rate instead: it is resampled to 16 kHz
//! and encoded with libopus (through audiopus, VoIP mode, in-band FEC on) in
//! `ptime` frames, timestamped on the 48 kHz RTP clock RFC 7587 prescribes;
//! SIPp cannot encode Opus, so this is how the Opus fixtures are made. Each
//! packet is
//! framed as Ethernet/IPv4/UDP with pcap timestamps `ptime` apart (SIPp paces
//! playback by them). The writer is tests/support/pcap.rs, shared with the
//! tests that make their streams at test time (tests/signal_path.rs).

use std::io::Write;

#[path = "../tests/support/pcap.rs"]
mod pcap;

struct Args {
    opus: bool,
    pt: u8,
    ptime_ms: u32,
    clock: u32,
    input: String,
    output: String,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        opus: false,
        pt: 0,
        ptime_ms: 20,
        clock: 8000,
        input: String::new(),
        output: String::new(),
    };
    let mut files = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |name: &str| -> Result<u32, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or(format!("{name} needs a number"))
        };
        match arg.as_str() {
            "--pt" => a.pt = num("--pt")?.try_into().map_err(|_| "--pt must be < 128")?,
            "--ptime" => a.ptime_ms = num("--ptime")?,
            "--clock" => a.clock = num("--clock")?,
            "--opus" => a.opus = true,
            _ => files.push(arg),
        }
    }
    let [input, output] = <[String; 2]>::try_from(files)
        .map_err(|_| "usage: rtp_pcap [--opus] --pt N [--ptime MS] [--clock HZ] IN OUT")?;
    if a.pt >= 128 || a.ptime_ms == 0 {
        return Err("--pt must be < 128 and --ptime > 0".into());
    }
    if a.opus {
        if ![10, 20, 40, 60].contains(&a.ptime_ms) {
            return Err("--opus takes --ptime 10, 20, 40 or 60".into());
        }
        a.clock = 48_000;
    }
    a.input = input;
    a.output = output;
    Ok(a)
}

/// The WAV file `path` resampled to 16 kHz, as Opus packets of `ptime_ms` each.
fn opus_packets(path: &str, ptime_ms: u32) -> Result<Vec<Vec<u8>>, String> {
    let mut wav =
        emonav_offline::hound::WavReader::open(path).map_err(|e| format!("{path}: {e}"))?;
    let spec = wav.spec();
    if spec.channels != 1 || spec.bits_per_sample != 16 {
        return Err(format!("{path}: mono 16-bit WAV expected"));
    }
    let pcm: Vec<f32> = wav
        .samples::<i16>()
        .map(|s| s.map(|s| s as f32 / 32768.0))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{path}: {e}"))?;
    let pcm = emonav_dsp::telephone::resample(&pcm, spec.sample_rate, 16_000)
        .map_err(|e| e.to_string())?;
    let pcm: Vec<i16> = pcm
        .iter()
        .map(|&s| (s * 32768.0).clamp(-32768.0, 32767.0) as i16)
        .collect();
    pcap::opus_packets(&pcm, ptime_ms)
}

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rtp_pcap: {e}");
            std::process::exit(2);
        }
    };
    let bytes = if a.opus {
        let packets = opus_packets(&a.input, a.ptime_ms).unwrap_or_else(|e| {
            eprintln!("rtp_pcap: {e}");
            std::process::exit(1)
        });
        pcap::rtp_pcap(a.pt, a.ptime_ms, a.clock, packets.iter().map(Vec::as_slice))
    } else {
        let audio = std::fs::read(&a.input).unwrap_or_else(|e| {
            eprintln!("rtp_pcap: {}: {e}", a.input);
            std::process::exit(1)
        });
        pcap::g711_pcap(a.pt, a.ptime_ms, a.clock, &audio)
    };
    if let Err(e) = std::fs::File::create(&a.output).and_then(|mut f| f.write_all(&bytes)) {
        eprintln!("rtp_pcap: {}: {e}", a.output);
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opus_fixture_wav_is_225_packets() {
        let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/calm.wav");
        let packets = opus_packets(fixture, 20).unwrap();
        assert_eq!(packets.len(), 225, "4.5 s in 20 ms frames");
        assert!(packets.iter().all(|p| !p.is_empty() && p.len() < 200));
    }
}
