//! RTP streams out of a packet capture (pcap or pcapng), for `emonav analyze
//! FILE.pcap`: every UDP datagram that parses as RTP (RFC 3550 §5.1) is put
//! in its stream (source, destination, SSRC) with its capture time, and
//! each stream's payload type is mapped to a codec: 0 PCMU, 8 PCMA, and a
//! dynamic type by the capture's own SDP (`a=rtpmap:N opus/48000/2`,
//! RFC 4566 §6) or, with no SDP for it, Opus (the one dynamic codec the
//! endpoint answers with).
//!
//! File formats through `pcap-file`, link/IP/UDP layers through
//! `etherparse`; only RTP's fixed header is read here.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use pcap_file::pcap::PcapReader;
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::DataLink;

/// What reading a capture can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Neither pcap nor pcapng, or cut short in its header.
    #[error("{path} is not a pcap or pcapng capture: {message}")]
    Format {
        /// The file.
        path: String,
        /// What the reader said.
        message: String,
    },
}

/// The codec of a stream, as the endpoint would have negotiated it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamCodec {
    /// G.711 μ-law (static payload type 0).
    Pcmu,
    /// G.711 A-law (static payload type 8).
    Pcma,
    /// Opus (a dynamic payload type).
    Opus,
}

/// One RTP stream of the capture.
#[derive(Debug, Clone)]
pub struct RtpStream {
    /// Where it came from.
    pub source: SocketAddr,
    /// Where it went.
    pub destination: SocketAddr,
    /// Its SSRC.
    pub ssrc: u32,
    /// Its audio payload type (the most frequent one in the stream).
    pub pt: u8,
    /// The codec, if emonav decodes it.
    pub codec: Option<StreamCodec>,
    /// Each datagram with its time since the stream's first.
    pub packets: Vec<(Duration, Vec<u8>)>,
}

/// A datagram's RTP SSRC and payload type, if it looks like RTP: version 2
/// and a payload type outside RTCP's range (RFC 5761 §4).
fn rtp_header(d: &[u8]) -> Option<(u32, u8)> {
    if d.len() < 12 || d[0] >> 6 != 2 {
        return None;
    }
    let pt = d[1] & 0x7f;
    if (64..96).contains(&pt) {
        return None;
    }
    Some((u32::from_be_bytes([d[8], d[9], d[10], d[11]]), pt))
}

/// `a=rtpmap:<pt> <name>/...` lines of any SDP in a datagram.
fn rtpmaps(d: &[u8], into: &mut BTreeMap<u8, String>) {
    let Ok(text) = std::str::from_utf8(d) else {
        return;
    };
    for line in text.lines() {
        if let Some(rest) = line.trim().strip_prefix("a=rtpmap:") {
            if let Some((pt, enc)) = rest.split_once(' ') {
                if let Ok(pt) = pt.trim().parse() {
                    let name = enc.split('/').next().unwrap_or("").to_ascii_lowercase();
                    into.insert(pt, name);
                }
            }
        }
    }
}

fn udp(link: DataLink, frame: &[u8]) -> Option<(SocketAddr, SocketAddr, &[u8])> {
    let sliced = match link {
        DataLink::ETHERNET => SlicedPacket::from_ethernet(frame).ok()?,
        DataLink::LINUX_SLL => SlicedPacket::from_linux_sll(frame).ok()?,
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => SlicedPacket::from_ip(frame).ok()?,
        // BSD loopback: a 4-byte address family, then IP.
        DataLink::NULL | DataLink::LOOP => SlicedPacket::from_ip(frame.get(4..)?).ok()?,
        _ => return None,
    };
    let (src, dst): (IpAddr, IpAddr) = match sliced.net? {
        NetSlice::Ipv4(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        NetSlice::Ipv6(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        _ => return None,
    };
    match sliced.transport? {
        TransportSlice::Udp(u) => Some((
            SocketAddr::new(src, u.source_port()),
            SocketAddr::new(dst, u.destination_port()),
            u.payload(),
        )),
        _ => None,
    }
}

/// The RTP streams of a capture, in order of their first packet.
pub fn rtp_streams(path: &Path) -> Result<Vec<RtpStream>, CaptureError> {
    let io = |source| CaptureError::Io {
        path: path.display().to_string(),
        source,
    };
    let format = |message: String| CaptureError::Format {
        path: path.display().to_string(),
        message,
    };
    let bytes = std::fs::read(path).map_err(io)?;
    // (time, link, frame) of every packet.
    let mut frames: Vec<(Duration, DataLink, Vec<u8>)> = Vec::new();
    if bytes.starts_with(&[0x0a, 0x0d, 0x0d, 0x0a]) {
        let mut r = PcapNgReader::new(&bytes[..]).map_err(|e| format(e.to_string()))?;
        let mut links = Vec::new();
        while let Some(block) = r.next_block() {
            match block.map_err(|e| format(e.to_string()))? {
                Block::InterfaceDescription(i) => links.push(i.linktype),
                Block::EnhancedPacket(p) => {
                    if let Some(&link) = links.get(p.interface_id as usize) {
                        frames.push((p.timestamp, link, p.data.into_owned()));
                    }
                }
                _ => {}
            }
        }
    } else {
        let mut r = PcapReader::new(&bytes[..]).map_err(|e| format(e.to_string()))?;
        let link = r.header().datalink;
        while let Some(p) = r.next_packet() {
            let p = p.map_err(|e| format(e.to_string()))?;
            frames.push((p.timestamp, link, p.data.into_owned()));
        }
    }
    let mut maps = BTreeMap::new();
    let mut streams: Vec<RtpStream> = Vec::new();
    let mut starts: Vec<Duration> = Vec::new();
    let mut pts: Vec<BTreeMap<u8, usize>> = Vec::new();
    for (t, link, frame) in &frames {
        let Some((src, dst, payload)) = udp(*link, frame) else {
            continue;
        };
        let Some((ssrc, pt)) = rtp_header(payload) else {
            rtpmaps(payload, &mut maps);
            continue;
        };
        let i = match streams
            .iter()
            .position(|s| s.source == src && s.destination == dst && s.ssrc == ssrc)
        {
            Some(i) => i,
            None => {
                streams.push(RtpStream {
                    source: src,
                    destination: dst,
                    ssrc,
                    pt,
                    codec: None,
                    packets: Vec::new(),
                });
                starts.push(*t);
                pts.push(BTreeMap::new());
                streams.len() - 1
            }
        };
        *pts[i].entry(pt).or_default() += 1;
        streams[i]
            .packets
            .push((t.saturating_sub(starts[i]), payload.to_vec()));
    }
    for (s, counts) in streams.iter_mut().zip(&pts) {
        s.pt = counts
            .iter()
            .max_by_key(|(_, n)| **n)
            .map_or(s.pt, |(pt, _)| *pt);
        s.codec = match (s.pt, maps.get(&s.pt).map(String::as_str)) {
            (0, _) => Some(StreamCodec::Pcmu),
            (8, _) => Some(StreamCodec::Pcma),
            (96..=127, None | Some("opus")) => Some(StreamCodec::Opus),
            _ => None,
        };
    }
    Ok(streams)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtp_and_not_rtp() {
        let mut p = [0u8; 12];
        p[0] = 0x80;
        p[1] = 0x80 | 8; // marker, PCMA
        p[8..12].copy_from_slice(&7u32.to_be_bytes());
        assert_eq!(rtp_header(&p), Some((7, 8)));
        p[1] = 200; // RTCP SR
        assert_eq!(rtp_header(&p), None);
        assert_eq!(rtp_header(b"INVITE sip:x SIP/2.0\r\n"), None);
        let mut m = BTreeMap::new();
        rtpmaps(b"v=0\r\nm=audio 4000 RTP/AVP 96 101\r\na=rtpmap:96 opus/48000/2\r\na=rtpmap:101 telephone-event/8000\r\n", &mut m);
        assert_eq!(m[&96], "opus");
        assert_eq!(m[&101], "telephone-event");
    }
}
