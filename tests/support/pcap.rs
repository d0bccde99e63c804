//! RTP streams as classic libpcap files, for SIPp's `play_pcap_audio`: the
//! writer behind `examples/rtp_pcap.rs` (which includes this file) and the
//! tests that make their streams at test time. Written by hand: the format is
//! 40 lines and the only pcap writer crates pull in libpcap.
#![allow(dead_code)]

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

/// G.711-style payload (one byte per sample at `clock` Hz): `audio` cut into
/// packets of `clock·ptime` bytes.
pub(crate) fn g711_pcap(pt: u8, ptime_ms: u32, clock: u32, audio: &[u8]) -> Vec<u8> {
    let per_packet = (clock as usize * ptime_ms as usize / 1000).max(1);
    rtp_pcap(pt, ptime_ms, clock, audio.chunks(per_packet))
}

/// One RTP packet per payload with payload type `pt`, consecutive sequence
/// numbers, timestamps `clock·ptime` apart and pcap timestamps `ptime` apart
/// (SIPp paces playback by them).
pub(crate) fn rtp_pcap<'a>(
    pt: u8,
    ptime_ms: u32,
    clock: u32,
    payloads: impl Iterator<Item = &'a [u8]>,
) -> Vec<u8> {
    let mut out = Vec::new();
    // Global header: magic, v2.4, GMT offset, accuracy, snaplen, LINKTYPE_ETHERNET.
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    for v in [0u32, 0, 65_535, 1] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let per_packet = (clock as usize * ptime_ms as usize / 1000).max(1);
    let ssrc: u32 = 0x454d_4f4e; // "EMON": fixed so the files are reproducible
    for (i, chunk) in payloads.enumerate() {
        let mut rtp = Vec::with_capacity(12 + chunk.len());
        rtp.push(0x80);
        rtp.push(pt | if i == 0 { 0x80 } else { 0 });
        rtp.extend_from_slice(&(i as u16).to_be_bytes());
        rtp.extend_from_slice(&((i * per_packet) as u32).to_be_bytes());
        rtp.extend_from_slice(&ssrc.to_be_bytes());
        rtp.extend_from_slice(chunk);
        let f = frame(&rtp, i as u16);
        let usec = i as u64 * ptime_ms as u64 * 1000;
        out.extend_from_slice(&((usec / 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&((usec % 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(&(f.len() as u32).to_le_bytes());
        out.extend_from_slice(&f);
    }
    out
}

/// 16 kHz mono PCM as Opus packets of `ptime_ms` each (libopus through
/// audiopus: VoIP mode, 24 kbit/s, complexity 10, in-band FEC for 5 % loss;
/// fixed so that the streams do not depend on libopus' defaults). The last
/// frame is padded with silence: Opus frames have fixed lengths.
pub(crate) fn opus_packets(pcm_16k: &[i16], ptime_ms: u32) -> Result<Vec<Vec<u8>>, String> {
    use audiopus::coder::Encoder;
    use audiopus::{Application, Bitrate, Channels, SampleRate};
    let oops = |e: audiopus::Error| format!("opus encoder: {e}");
    let mut enc =
        Encoder::new(SampleRate::Hz16000, Channels::Mono, Application::Voip).map_err(oops)?;
    enc.set_bitrate(Bitrate::BitsPerSecond(24_000))
        .map_err(oops)?;
    enc.set_complexity(10).map_err(oops)?;
    enc.enable_inband_fec().map_err(oops)?;
    enc.set_packet_loss_perc(5).map_err(oops)?;
    let frame = (16_000 * ptime_ms / 1000) as usize;
    let mut packets = Vec::new();
    let mut buf = [0u8; 1500];
    for chunk in pcm_16k.chunks(frame) {
        let mut f = chunk.to_vec();
        f.resize(frame, 0);
        let n = enc.encode(&f, &mut buf).map_err(oops)?;
        packets.push(buf[..n].to_vec());
    }
    Ok(packets)
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
        let p = g711_pcap(8, 20, 8000, &[0xd5; 400]);
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
        let p = rtp_pcap(96, 20, 48_000, [&[1u8, 2][..], &[3u8][..]].into_iter());
        let second = 24 + 16 + 42 + 12 + 2;
        let rtp = second + 16 + 42;
        assert_eq!(p[rtp + 1], 96);
        assert_eq!(
            u32::from_be_bytes(p[rtp + 4..rtp + 8].try_into().unwrap()),
            960
        );
        assert_eq!(p.len(), rtp + 12 + 1);
        let packets = opus_packets(&vec![0i16; 16_000 * 9 / 2], 20).unwrap();
        assert_eq!(packets.len(), 225, "4.5 s in 20 ms frames");
        assert!(packets.iter().all(|p| !p.is_empty() && p.len() < 200));
    }
}
