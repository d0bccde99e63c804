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
//! playback by them). Written by hand: the format is 40 lines and the only pcap
//! writer crates pull in libpcap.

use std::io::Write;

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

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One Ethernet/IPv4/UDP frame carrying `payload` from 127.0.0.1:6000 to 127.0.0.1:6002
/// (SIPp rewrites the addresses when it plays the file).
fn frame(payload: &[u8], ident: u16) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let ip_len = 20 + udp_len;
    let mut f = Vec::with_capacity(14 + ip_len);
    f.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 1, 0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&ident.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[127, 0, 0, 1]);
    ip[16..20].copy_from_slice(&[127, 0, 0, 1]);
    let sum = ipv4_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&6000u16.to_be_bytes());
    f.extend_from_slice(&6002u16.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // UDP checksum optional over IPv4
    f.extend_from_slice(payload);
    f
}

/// G.711-style payload: `audio` cut into packets of `clock·ptime` bytes.
fn pcap(a: &Args, audio: &[u8]) -> Vec<u8> {
    let per_packet = (a.clock as usize * a.ptime_ms as usize / 1000).max(1);
    pcap_packets(a, audio.chunks(per_packet))
}

/// One RTP packet per payload, timestamps `clock·ptime` apart.
fn pcap_packets<'a>(a: &Args, payloads: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    // Global header: magic, v2.4, GMT offset, accuracy, snaplen, LINKTYPE_ETHERNET.
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    for v in [0u32, 0, 65_535, 1] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let per_packet = (a.clock as usize * a.ptime_ms as usize / 1000).max(1);
    let ssrc: u32 = 0x454d_4f4e; // "EMON": fixed so the files are reproducible
    for (i, chunk) in payloads.enumerate() {
        let mut rtp = Vec::with_capacity(12 + chunk.len());
        rtp.push(0x80);
        rtp.push(a.pt | if i == 0 { 0x80 } else { 0 });
        rtp.extend_from_slice(&(i as u16).to_be_bytes());
        rtp.extend_from_slice(&((i * per_packet) as u32).to_be_bytes());
        rtp.extend_from_slice(&ssrc.to_be_bytes());
        rtp.extend_from_slice(chunk);
        let f = frame(&rtp, i as u16);
        let usec = i as u64 * a.ptime_ms as u64 * 1000;
        out.extend_from_slice(&((usec / 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&((usec % 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(&f);
    }
    out
}

/// The WAV file `path` as Opus packets of `ptime_ms` each.
fn opus_packets(path: &str, ptime_ms: u32) -> Result<Vec<Vec<u8>>, String> {
    use audiopus::coder::Encoder;
    use audiopus::{Application, Bitrate, Channels, SampleRate};
    const RATE: u32 = 16_000;
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
    let pcm =
        emonav_dsp::telephone::resample(&pcm, spec.sample_rate, RATE).map_err(|e| e.to_string())?;
    let pcm: Vec<i16> = pcm
        .iter()
        .map(|&s| (s * 32768.0).clamp(-32768.0, 32767.0) as i16)
        .collect();
    let oops = |e: audiopus::Error| format!("opus encoder: {e}");
    let mut enc =
        Encoder::new(SampleRate::Hz16000, Channels::Mono, Application::Voip).map_err(oops)?;
    // Fixed settings, so the fixtures do not depend on libopus' defaults.
    enc.set_bitrate(Bitrate::BitsPerSecond(24_000))
        .map_err(oops)?;
    enc.set_complexity(10).map_err(oops)?;
    enc.enable_inband_fec().map_err(oops)?;
    enc.set_packet_loss_perc(5).map_err(oops)?;
    let frame = (RATE * ptime_ms / 1000) as usize;
    let mut packets = Vec::new();
    let mut buf = [0u8; 1500];
    for chunk in pcm.chunks(frame) {
        // The last frame padded with silence: Opus frames have fixed lengths.
        let mut f = chunk.to_vec();
        f.resize(frame, 0);
        let n = enc.encode(&f, &mut buf).map_err(oops)?;
        packets.push(buf[..n].to_vec());
    }
    Ok(packets)
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
        pcap_packets(&a, packets.iter().map(Vec::as_slice))
    } else {
        let audio = std::fs::read(&a.input).unwrap_or_else(|e| {
            eprintln!("rtp_pcap: {}: {e}", a.input);
            std::process::exit(1)
        });
        pcap(&a, &audio)
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
    fn ip_header_checksum_verifies_to_zero() {
        let f = frame(&[1, 2, 3], 7);
        let ip = &f[14..34];
        assert_eq!(ipv4_checksum(ip), 0);
        assert_eq!(u16::from_be_bytes([f[38], f[39]]), 11, "UDP length");
    }

    #[test]
    fn packets_are_paced_and_numbered() {
        let a = Args {
            opus: false,
            pt: 8,
            ptime_ms: 20,
            clock: 8000,
            input: String::new(),
            output: String::new(),
        };
        let p = pcap(&a, &[0xd5; 400]);
        // 24-byte header, then 3 records of 16 + 14 + 20 + 8 + 12 + payload.
        let first = 24;
        let second = first + 16 + 54 + 160;
        assert_eq!(
            u32::from_le_bytes(p[second + 4..second + 8].try_into().unwrap()),
            20_000
        );
        let rtp = second + 16 + 42;
        assert_eq!(p[rtp + 1], 8, "PT, no marker after the first");
        assert_eq!(u16::from_be_bytes([p[rtp + 2], p[rtp + 3]]), 1);
        assert_eq!(
            u32::from_be_bytes(p[rtp + 4..rtp + 8].try_into().unwrap()),
            160
        );
        let third = second + 16 + 54 + 160;
        assert_eq!(
            p.len(),
            third + 16 + 54 + 80,
            "last packet carries the 80-byte rest"
        );
    }

    #[test]
    fn opus_packets_are_timestamped_on_the_48_khz_clock() {
        let a = Args {
            opus: true,
            pt: 96,
            ptime_ms: 20,
            clock: 48_000,
            input: String::new(),
            output: String::new(),
        };
        let p = pcap_packets(&a, [&[1u8, 2][..], &[3u8][..]].into_iter());
        let second = 24 + 16 + 42 + 12 + 2;
        let rtp = second + 16 + 42;
        assert_eq!(p[rtp + 1], 96);
        assert_eq!(
            u32::from_be_bytes(p[rtp + 4..rtp + 8].try_into().unwrap()),
            960
        );
        assert_eq!(p.len(), rtp + 12 + 1);
        let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/calm.wav");
        let packets = opus_packets(fixture, 20).unwrap();
        assert_eq!(packets.len(), 225, "4.5 s in 20 ms frames");
        assert!(packets.iter().all(|p| !p.is_empty() && p.len() < 200));
    }
}
