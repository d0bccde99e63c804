//! SDP (RFC 8866, formerly 4566) parsing and the offer/answer model (RFC 3264)
//! for one audio stream.
//!
//! A small strict parser rather than a crate: emonav reads six line types and
//! must name the offending line when it refuses an offer; the issue allowed
//! either, and this keeps the error messages ours.

use std::net::{IpAddr, SocketAddr};

use crate::config::SrtpMode;
use crate::sdes::{self, Crypto, MasterKey, Suite};

/// Why an SDP body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    /// The body is not valid SDP (line, and what is wrong with it).
    #[error("malformed SDP: {0}")]
    Malformed(String),
    /// No audio stream in the offer.
    #[error("no audio stream offered")]
    NoAudio,
    /// SRTP refused or required and not offered (`[media] srtp`; → 488).
    #[error("{0}")]
    Srtp(&'static str),
    /// None of our codecs was offered (→ 488 Not Acceptable Here).
    #[error("no common codec (offered: {offered})")]
    NoCommonCodec {
        /// The offered encodings, for the log and the Warning header.
        offered: String,
    },
}

/// Codecs emonav can decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CodecName {
    /// G.711 μ-law, static payload type 0.
    Pcmu,
    /// G.711 A-law, static payload type 8.
    Pcma,
    /// Opus (RFC 7587), dynamic payload type.
    Opus,
}

/// Media direction attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// a=sendrecv (default)
    SendRecv,
    /// a=sendonly
    SendOnly,
    /// a=recvonly
    RecvOnly,
    /// a=inactive
    Inactive,
}

/// `a=rtpmap` (or the static payload type's implied mapping).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    /// Payload type.
    pub pt: u8,
    /// Encoding name as written (case kept).
    pub encoding: String,
    /// Clock rate.
    pub clock_rate: u32,
    /// Channels (defaults to 1).
    pub channels: u8,
}

/// One `m=` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    /// `audio`, `video`, …
    pub kind: String,
    /// Port (0 = rejected/disabled stream).
    pub port: u16,
    /// Transport protocol (`RTP/AVP`, `RTP/SAVP`, …).
    pub proto: String,
    /// Payload types in preference order.
    pub formats: Vec<u8>,
    /// rtpmaps, including implied static ones (0 PCMU/8000, 8 PCMA/8000).
    pub rtpmaps: Vec<RtpMap>,
    /// `a=fmtp:<pt> <params>`.
    pub fmtps: Vec<(u8, String)>,
    /// Media-level `c=` address.
    pub connection: Option<IpAddr>,
    /// Direction.
    pub direction: Direction,
    /// `a=ptime`.
    pub ptime: Option<u32>,
    /// `a=rtcp-mux` (RFC 5761 §5.1.1).
    pub rtcp_mux: bool,
    /// `a=rtcp:<port> [IN IP4|IP6 <addr>]` (RFC 3605).
    pub rtcp: Option<(u16, Option<IpAddr>)>,
    /// Usable `a=crypto` lines (RFC 4568), in the offer's order.
    pub crypto: Vec<Crypto>,
}

/// A parsed session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    /// `o=` session id.
    pub session_id: u64,
    /// `o=` session version.
    pub session_version: u64,
    /// Session-level `c=` address.
    pub connection: Option<IpAddr>,
    /// Session-level direction.
    pub direction: Direction,
    /// Media sections in order.
    pub media: Vec<Media>,
}

/// Parse an SDP body.
pub fn parse(body: &str) -> Result<SessionDescription, SdpError> {
    let mut sd = SessionDescription {
        session_id: 0,
        session_version: 0,
        connection: None,
        direction: Direction::SendRecv,
        media: Vec::new(),
    };
    let mut seen_v = false;
    let mut seen_o = false;
    for (n, raw) in body.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.trim().is_empty() {
            continue;
        }
        let bad =
            |why: &str| SdpError::Malformed(format!("line {}: {why}: {:?}", n + 1, truncate(line)));
        let (kind, value) = match line.as_bytes() {
            [k, b'=', ..] if k.is_ascii_lowercase() => (*k, &line[2..]),
            _ => return Err(bad("not <type>=<value>")),
        };
        if !seen_v && kind != b'v' {
            return Err(bad("SDP must start with v="));
        }
        match kind {
            b'v' if value.trim() == "0" => seen_v = true,
            b'v' => return Err(bad("unsupported version")),
            b'o' => {
                let f: Vec<&str> = value.split_ascii_whitespace().collect();
                if f.len() != 6 {
                    return Err(bad("o= needs 6 fields"));
                }
                sd.session_id = f[1].parse().map_err(|_| bad("bad session id"))?;
                sd.session_version = f[2].parse().map_err(|_| bad("bad session version"))?;
                seen_o = true;
            }
            b'c' => {
                let addr = parse_connection(value).ok_or_else(|| bad("bad connection address"))?;
                match sd.media.last_mut() {
                    Some(m) => m.connection = Some(addr),
                    None => sd.connection = Some(addr),
                }
            }
            b'm' => {
                let f: Vec<&str> = value.split_ascii_whitespace().collect();
                if f.len() < 4 {
                    return Err(bad("m= needs media, port, proto and formats"));
                }
                // "port/count" is allowed by the grammar; we use the first port.
                let port: u16 = f[1]
                    .split('/')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| bad("bad port"))?;
                let is_rtp = f[2].to_ascii_uppercase().starts_with("RTP/");
                let mut formats = Vec::new();
                if is_rtp {
                    for pt in &f[3..] {
                        let pt: u8 = pt
                            .parse()
                            .ok()
                            .filter(|p| *p < 128)
                            .ok_or_else(|| bad("bad payload type"))?;
                        formats.push(pt);
                    }
                }
                let rtpmaps = formats.iter().filter_map(|&pt| static_rtpmap(pt)).collect();
                sd.media.push(Media {
                    kind: f[0].to_string(),
                    port,
                    proto: f[2].to_string(),
                    formats,
                    rtpmaps,
                    fmtps: Vec::new(),
                    connection: None,
                    direction: sd.direction,
                    ptime: None,
                    rtcp_mux: false,
                    rtcp: None,
                    crypto: Vec::new(),
                });
            }
            b'a' => {
                let (name, val) = value.split_once(':').unwrap_or((value, ""));
                if let Some(dir) = direction(name) {
                    match sd.media.last_mut() {
                        Some(m) => m.direction = dir,
                        None => sd.direction = dir,
                    }
                    continue;
                }
                let Some(m) = sd.media.last_mut() else {
                    continue;
                };
                match name {
                    "rtpmap" => {
                        let map = parse_rtpmap(val).ok_or_else(|| bad("bad rtpmap"))?;
                        m.rtpmaps.retain(|r| r.pt != map.pt);
                        m.rtpmaps.push(map);
                    }
                    "fmtp" => {
                        let (pt, params) = val.split_once(' ').unwrap_or((val, ""));
                        let pt: u8 = pt.trim().parse().map_err(|_| bad("bad fmtp"))?;
                        m.fmtps.push((pt, params.trim().to_string()));
                    }
                    "ptime" => m.ptime = val.trim().parse().ok(),
                    "rtcp-mux" => m.rtcp_mux = true,
                    // Unreadable: ignored (RTP port + 1 then), as RFC 3605 §2.1 allows.
                    "rtcp" => m.rtcp = parse_rtcp(val),
                    // Lines we cannot honour are skipped (RFC 4568 §6.3.2).
                    "crypto" => m.crypto.extend(sdes::parse(val)),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    if !seen_v || !seen_o {
        return Err(SdpError::Malformed("missing v= or o= line".into()));
    }
    Ok(sd)
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(60) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn parse_connection(value: &str) -> Option<IpAddr> {
    let f: Vec<&str> = value.split_ascii_whitespace().collect();
    let [net, kind, addr] = f.as_slice() else {
        return None;
    };
    if *net != "IN" {
        return None;
    }
    // Multicast TTL/count suffixes ("/127") are not for us but must parse.
    let addr = addr.split('/').next()?;
    match *kind {
        "IP4" => addr.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4),
        "IP6" => addr.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6),
        _ => None,
    }
}

/// `a=rtcp:<port> [<nettype> <addrtype> <address>]` (RFC 3605 §2.1).
fn parse_rtcp(value: &str) -> Option<(u16, Option<IpAddr>)> {
    let value = value.trim();
    let (port, addr) = value.split_once(' ').unwrap_or((value, ""));
    let port = port.parse().ok().filter(|&p| p != 0)?;
    match addr.trim() {
        "" => Some((port, None)),
        a => Some((port, Some(parse_connection(a)?))),
    }
}

fn direction(name: &str) -> Option<Direction> {
    match name {
        "sendrecv" => Some(Direction::SendRecv),
        "sendonly" => Some(Direction::SendOnly),
        "recvonly" => Some(Direction::RecvOnly),
        "inactive" => Some(Direction::Inactive),
        _ => None,
    }
}

fn static_rtpmap(pt: u8) -> Option<RtpMap> {
    // RFC 3551 Table 4: the static audio types a PBX may list without rtpmap.
    let (encoding, clock_rate) = match pt {
        0 => ("PCMU", 8000),
        3 => ("GSM", 8000),
        4 => ("G723", 8000),
        8 => ("PCMA", 8000),
        9 => ("G722", 8000),
        18 => ("G729", 8000),
        _ => return None,
    };
    Some(RtpMap {
        pt,
        encoding: encoding.into(),
        clock_rate,
        channels: 1,
    })
}

fn parse_rtpmap(val: &str) -> Option<RtpMap> {
    let (pt, rest) = val.trim().split_once(' ')?;
    let mut parts = rest.trim().split('/');
    let encoding = parts.next()?.to_string();
    let clock_rate = parts.next()?.parse().ok()?;
    let channels = match parts.next() {
        Some(c) => c.parse().ok()?,
        None => 1,
    };
    Some(RtpMap {
        pt: pt.parse().ok().filter(|p: &u8| *p < 128)?,
        encoding,
        clock_rate,
        channels,
    })
}

/// The outcome of negotiating an audio offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Negotiated {
    /// Index of the accepted audio `m=` line in the offer.
    pub media_index: usize,
    /// The chosen codec.
    pub codec: CodecName,
    /// Its payload type (as the offerer numbered it).
    pub pt: u8,
    /// Clock rate of the chosen codec.
    pub clock_rate: u32,
    /// Channels of the chosen codec.
    pub channels: u8,
    /// fmtp of the chosen codec, if any.
    pub fmtp: Option<String>,
    /// telephone-event payload type (RFC 4733), when offered at the codec's rate (or 8000).
    pub telephone_event_pt: Option<u8>,
    /// Where the offerer wants RTP (c= + m= port).
    pub remote_rtp: SocketAddr,
    /// Direction we answer with.
    pub direction: Direction,
    /// Offered ptime, if any.
    pub ptime: Option<u32>,
    /// The offer asked for rtcp-mux, and the answer accepts it (RFC 5761).
    pub rtcp_mux: bool,
    /// Where the offerer wants RTCP when it said so (`a=rtcp`, RFC 3605).
    pub remote_rtcp: Option<SocketAddr>,
    /// The SRTP keys when the media is encrypted (RFC 3711 with RFC 4568).
    pub srtp: Option<SrtpKeys>,
}

/// The keys of an SRTP session negotiated by SDES (RFC 4568).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SrtpKeys {
    /// The accepted `a=crypto` line's tag, echoed in the answer.
    pub tag: u32,
    /// The crypto suite.
    pub suite: Suite,
    /// The offerer's key: what it sends with.
    pub remote: MasterKey,
    /// Ours, fresh for the call: what we send with.
    pub local: MasterKey,
}

impl CodecName {
    fn matches(self, map: &RtpMap) -> bool {
        let (name, rate) = match self {
            CodecName::Pcmu => ("PCMU", 8000),
            CodecName::Pcma => ("PCMA", 8000),
            CodecName::Opus => ("opus", 48000),
        };
        map.encoding.eq_ignore_ascii_case(name) && map.clock_rate == rate
    }
}

/// Pick the offerer's preferred codec among those we accept (`accepted`; its
/// order does not matter), accept telephone-event if offered.
///
/// The offerer's order wins (RFC 3264 §6.1 lets the answerer choose, and
/// §5.1 says the offer's order is its preference): a PBX lists first the
/// codec it can carry to the caller without transcoding (Asterisk puts the
/// caller's codec first), so answering with another makes it transcode, or
/// fail the call when it has no translator (Opus without `codec_opus`).
///
/// `srtp` says whether `RTP/SAVP` and `a=crypto` (RFC 4568) are taken:
/// with `optional` or `required` the first usable crypto line of the
/// stream makes it SRTP, keyed with a fresh key of ours.
pub(crate) fn negotiate(
    offer: &SessionDescription,
    accepted: &[CodecName],
    srtp: SrtpMode,
) -> Result<Negotiated, SdpError> {
    negotiate_keeping(offer, accepted, None, srtp)
}

/// [`negotiate`], but `keep` wins when the offer still has it: a re-offer
/// (RFC 3264 §8) that still lists the codec in use does not switch decoders.
pub(crate) fn negotiate_keeping(
    offer: &SessionDescription,
    accepted: &[CodecName],
    keep: Option<CodecName>,
    srtp: SrtpMode,
) -> Result<Negotiated, SdpError> {
    let audio = |m: &Media| m.kind == "audio" && m.port != 0;
    // RTP/AVP(F) streams, and the secure profile (RFC 3711 §3) when we do
    // SRTP; of those, with SRTP on, the first that carries a usable key
    // (an offer of one stream per profile gets its secure one).
    let candidates: Vec<(usize, &Media)> = offer
        .media
        .iter()
        .enumerate()
        .filter(|(_, m)| {
            audio(m) && (is_rtp_avp(&m.proto) || (srtp != SrtpMode::Off && is_rtp_savp(&m.proto)))
        })
        .collect();
    let keyed = candidates
        .iter()
        .find(|(_, m)| srtp != SrtpMode::Off && !m.crypto.is_empty());
    let (media_index, m) = *keyed.or(candidates.first()).ok_or_else(|| {
        if offer
            .media
            .iter()
            .any(|m| audio(m) && is_rtp_savp(&m.proto))
        {
            SdpError::Srtp("SRTP (RTP/SAVP) is off here")
        } else {
            SdpError::NoAudio
        }
    })?;
    let srtp = srtp_keys(m, srtp)?;
    let offered = || {
        m.formats
            .iter()
            .filter_map(|pt| m.rtpmaps.iter().find(|r| r.pt == *pt))
    };
    let kept = keep
        .filter(|k| accepted.contains(k))
        .and_then(|k| offered().find(|r| k.matches(r)).map(|r| (k, r)));
    let chosen = kept.or_else(|| {
        offered().find_map(|r| accepted.iter().find(|c| c.matches(r)).map(|&c| (c, r)))
    });
    let Some((codec, map)) = chosen else {
        let offered = m
            .formats
            .iter()
            .map(|pt| match m.rtpmaps.iter().find(|r| r.pt == *pt) {
                Some(r) => format!("{}/{}", r.encoding, r.clock_rate),
                None => pt.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" ");
        return Err(SdpError::NoCommonCodec { offered });
    };
    let events: Vec<&RtpMap> = m
        .formats
        .iter()
        .filter_map(|pt| m.rtpmaps.iter().find(|r| r.pt == *pt))
        .filter(|r| r.encoding.eq_ignore_ascii_case("telephone-event"))
        .collect();
    let telephone_event_pt = events
        .iter()
        .find(|r| r.clock_rate == map.clock_rate)
        .or_else(|| events.iter().find(|r| r.clock_rate == 8000))
        .or(events.first())
        .map(|r| r.pt);
    let ip = m
        .connection
        .or(offer.connection)
        .ok_or_else(|| SdpError::Malformed("no c= line for the audio stream".into()))?;
    let direction = match m.direction {
        Direction::SendRecv => Direction::SendRecv,
        Direction::SendOnly => Direction::RecvOnly,
        Direction::RecvOnly => Direction::SendOnly,
        Direction::Inactive => Direction::Inactive,
    };
    // RFC 2543 hold (RFC 3264 §8.4): `c=0.0.0.0` means "send me nothing",
    // whatever the attribute says.
    let direction = match direction {
        Direction::SendRecv if ip.is_unspecified() => Direction::RecvOnly,
        Direction::SendOnly if ip.is_unspecified() => Direction::Inactive,
        d => d,
    };
    Ok(Negotiated {
        media_index,
        codec,
        pt: map.pt,
        clock_rate: map.clock_rate,
        channels: map.channels,
        fmtp: m
            .fmtps
            .iter()
            .find(|(pt, _)| *pt == map.pt)
            .map(|(_, f)| f.clone()),
        telephone_event_pt,
        remote_rtp: SocketAddr::new(ip, m.port),
        direction,
        ptime: m.ptime,
        rtcp_mux: m.rtcp_mux,
        remote_rtcp: m
            .rtcp
            .map(|(port, addr)| SocketAddr::new(addr.unwrap_or(ip), port)),
        srtp,
    })
}

fn is_rtp_avp(proto: &str) -> bool {
    // RTP/AVP and RTP/AVPF (RFC 4585).
    proto.to_ascii_uppercase().starts_with("RTP/AVP")
}

fn is_rtp_savp(proto: &str) -> bool {
    // RTP/SAVP (RFC 3711 §12) and RTP/SAVPF (RFC 5124).
    proto.to_ascii_uppercase().starts_with("RTP/SAVP")
}

/// The SRTP keys of the chosen stream under `mode`. A `RTP/SAVP` stream
/// must have a usable `a=crypto`; an `RTP/AVP` one with `a=crypto` is
/// "best effort" SRTP (what baresip's `srtp` media encryption offers) and
/// is taken too; `required` refuses plain RTP.
fn srtp_keys(m: &Media, mode: SrtpMode) -> Result<Option<SrtpKeys>, SdpError> {
    if mode == SrtpMode::Off {
        return Ok(None);
    }
    let Some(c) = m.crypto.first() else {
        return match mode {
            _ if is_rtp_savp(&m.proto) => Err(SdpError::Srtp(
                "RTP/SAVP without a usable a=crypto (AES_CM_128_HMAC_SHA1_80/32, one inline key)",
            )),
            SrtpMode::Required => Err(SdpError::Srtp("SRTP required: plain RTP refused")),
            _ => Ok(None),
        };
    };
    let local =
        MasterKey::random().map_err(|_| SdpError::Srtp("no random source for an SRTP key"))?;
    Ok(Some(SrtpKeys {
        tag: c.tag,
        suite: c.suite,
        remote: c.key.clone(),
        local,
    }))
}

impl Negotiated {
    /// The caller holds the call: anything but `sendrecv` (RFC 3264 §8.4 —
    /// `a=sendonly` with music on hold, `a=inactive`, `c=0.0.0.0`, or a
    /// caller that only listens). What it sends then is not the caller talking.
    pub(crate) fn is_hold(&self) -> bool {
        self.direction != Direction::SendRecv
    }
}

/// Our SDP offer for a re-INVITE that came without one (RFC 3261 §14.2,
/// RFC 3264 §8): the session as it stands (codec, payload types, telephone
/// events), `sendrecv`, at our RTP address; the answer comes in the ACK.
pub(crate) fn offer(
    neg: &Negotiated,
    local_rtp: SocketAddr,
    session_id: u64,
    version: u64,
) -> String {
    let audio = Media {
        kind: "audio".into(),
        port: neg.remote_rtp.port(),
        // Our re-offer keeps the session's key and so its profile.
        proto: if neg.srtp.is_some() {
            "RTP/SAVP"
        } else {
            "RTP/AVP"
        }
        .into(),
        formats: std::iter::once(neg.pt)
            .chain(neg.telephone_event_pt)
            .collect(),
        rtpmaps: Vec::new(),
        fmtps: Vec::new(),
        connection: None,
        direction: Direction::SendRecv,
        ptime: neg.ptime,
        rtcp_mux: neg.rtcp_mux,
        rtcp: None,
        crypto: Vec::new(),
    };
    let sd = SessionDescription {
        session_id,
        session_version: version,
        connection: None,
        direction: Direction::SendRecv,
        media: vec![audio],
    };
    let ours = Negotiated {
        media_index: 0,
        direction: Direction::SendRecv,
        ..neg.clone()
    };
    answer(&sd, &ours, local_rtp, session_id, version)
}

/// The `a=fmtp` of our Opus answer (RFC 7587 §6.1): nothing above the rate
/// calls decode at (`media::session::OPUS_ANALYSIS_RATE`) is of use, mono preferred,
/// in-band FEC welcome.
pub(crate) const OPUS_ANSWER_FMTP: &str = "maxplaybackrate=8000;stereo=0;useinbandfec=1";

/// Build the SDP answer (RFC 3264 §6): same number of m= lines as the offer,
/// non-audio and extra audio streams rejected with port 0, our RTP address in c=/m=.
pub(crate) fn answer(
    offer: &SessionDescription,
    neg: &Negotiated,
    local_rtp: SocketAddr,
    session_id: u64,
    session_version: u64,
) -> String {
    use std::fmt::Write;
    let (family, addr) = match local_rtp.ip() {
        IpAddr::V4(ip) => ("IP4", ip.to_string()),
        IpAddr::V6(ip) => ("IP6", ip.to_string()),
    };
    let mut s = String::with_capacity(256);
    let _ = write!(
        s,
        "v=0\r\no=emonav {session_id} {session_version} IN {family} {addr}\r\ns=emonav\r\nc=IN {family} {addr}\r\nt=0 0\r\n"
    );
    for (i, m) in offer.media.iter().enumerate() {
        if i != neg.media_index {
            let first = m.formats.first().map_or("0".to_string(), |f| f.to_string());
            let _ = write!(s, "m={} 0 {} {first}\r\n", m.kind, m.proto);
            continue;
        }
        let _ = write!(s, "m=audio {} {} {}", local_rtp.port(), m.proto, neg.pt);
        if let Some(ev) = neg.telephone_event_pt {
            let _ = write!(s, " {ev}");
        }
        s.push_str("\r\n");
        let (name, rate) = match neg.codec {
            CodecName::Pcmu => ("PCMU", "8000"),
            CodecName::Pcma => ("PCMA", "8000"),
            CodecName::Opus => ("opus", "48000/2"),
        };
        let _ = write!(s, "a=rtpmap:{} {name}/{rate}\r\n", neg.pt);
        match (neg.codec, &neg.fmtp) {
            // RFC 7587 §6.1: Opus fmtp parameters describe what the *receiver*
            // of the stream wants, so the offer's are not ours to echo. We
            // decode wideband mono and can rebuild a lost packet from the
            // next one's in-band FEC.
            (CodecName::Opus, _) => {
                let _ = write!(s, "a=fmtp:{} {OPUS_ANSWER_FMTP}\r\n", neg.pt);
            }
            (_, Some(f)) => {
                let _ = write!(s, "a=fmtp:{} {f}\r\n", neg.pt);
            }
            (_, None) => {}
        }
        if let Some(ev) = neg.telephone_event_pt {
            let rate = m
                .rtpmaps
                .iter()
                .find(|r| r.pt == ev)
                .map_or(8000, |r| r.clock_rate);
            let _ = write!(
                s,
                "a=rtpmap:{ev} telephone-event/{rate}\r\na=fmtp:{ev} 0-16\r\n"
            );
        }
        if let Some(p) = neg.ptime {
            let _ = write!(s, "a=ptime:{p}\r\n");
        }
        let dir = match neg.direction {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        };
        let _ = write!(s, "a={dir}\r\n");
        if neg.rtcp_mux {
            s.push_str("a=rtcp-mux\r\n");
        }
        if let Some(k) = &neg.srtp {
            let ours = Crypto {
                tag: k.tag,
                suite: k.suite,
                key: k.local.clone(),
            };
            let _ = write!(s, "a={}\r\n", sdes::format(&ours));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFS: [CodecName; 2] = [CodecName::Pcmu, CodecName::Pcma];

    fn offer(m: &str) -> String {
        format!("v=0\r\no=- 42 7 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n{m}")
    }

    #[test]
    fn asterisk_style_alaw_offer_is_answered_alaw_with_telephone_event() {
        // An A-law caller through Asterisk: Asterisk lists PCMA first. Our
        // profile's order (PCMU first) must not make it transcode.
        let sd = parse(&offer(
            "m=audio 10000 RTP/AVP 8 0 3 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n",
        ))
        .unwrap();
        let n = negotiate(&sd, &PREFS, SrtpMode::Off).unwrap();
        assert_eq!(
            (n.codec, n.pt, n.telephone_event_pt),
            (CodecName::Pcma, 8, Some(101))
        );
        assert_eq!(n.remote_rtp, "192.0.2.1:10000".parse().unwrap());
        let a = answer(&sd, &n, "127.0.0.1:20000".parse().unwrap(), 1, 1);
        assert!(a.contains("m=audio 20000 RTP/AVP 8 101\r\n"), "{a}");
        assert!(a.contains("a=rtpmap:8 PCMA/8000\r\n"), "{a}");
        assert!(a.contains("a=rtpmap:101 telephone-event/8000\r\n"));
        assert!(a.contains("a=ptime:20\r\n"));
        let back = parse(&a).unwrap();
        assert_eq!(back.media[0].formats, [8, 101]);
    }

    #[test]
    fn the_offerers_order_wins_among_the_codecs_we_accept() {
        let order = |formats: &str, accepted: &[CodecName]| {
            let sd = parse(&offer(&format!(
                "m=audio 4000 RTP/AVP {formats}\r\na=rtpmap:96 opus/48000/2\r\n\
                 a=rtpmap:18 G729/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
            )))
            .unwrap();
            negotiate(&sd, accepted, SrtpMode::Off).map(|n| n.codec)
        };
        let all = [CodecName::Pcmu, CodecName::Pcma, CodecName::Opus];
        // μ-law caller: μ-law, whatever our list's order.
        assert_eq!(order("0 8 101", &all), Ok(CodecName::Pcmu));
        assert_eq!(
            order("0 8 101", &[CodecName::Pcma, CodecName::Pcmu]),
            Ok(CodecName::Pcmu)
        );
        // Codecs we do not decode are skipped, not chosen.
        assert_eq!(order("18 101 8 0", &all), Ok(CodecName::Pcma));
        // Opus caller through Asterisk without codec_opus: Opus first, and
        // Opus is what the path can carry.
        assert_eq!(order("96 0 8 101", &all), Ok(CodecName::Opus));
        // G.711 first: G.711, even where Opus is accepted.
        assert_eq!(order("0 96 101", &all), Ok(CodecName::Pcmu));
        // Opus first but not accepted: the offer's next codec we take.
        assert_eq!(order("96 8 0", &PREFS), Ok(CodecName::Pcma));
    }

    #[test]
    fn a_re_offer_keeps_the_codec_in_use_while_it_is_offered() {
        let sd = parse(&offer("m=audio 4000 RTP/AVP 0 8\r\n")).unwrap();
        let kept = negotiate_keeping(&sd, &PREFS, Some(CodecName::Pcma), SrtpMode::Off).unwrap();
        assert_eq!((kept.codec, kept.pt), (CodecName::Pcma, 8));
        // Gone from the offer, or no longer accepted: the offerer's first.
        let sd = parse(&offer("m=audio 4000 RTP/AVP 0\r\n")).unwrap();
        let n = negotiate_keeping(&sd, &PREFS, Some(CodecName::Pcma), SrtpMode::Off).unwrap();
        assert_eq!(n.codec, CodecName::Pcmu);
        let sd = parse(&offer("m=audio 4000 RTP/AVP 8 0\r\n")).unwrap();
        let n = negotiate_keeping(
            &sd,
            &[CodecName::Pcmu],
            Some(CodecName::Pcma),
            SrtpMode::Off,
        )
        .unwrap();
        assert_eq!(n.codec, CodecName::Pcmu);
    }

    #[test]
    fn rtcp_mux_and_rtcp_attribute() {
        let sd = parse(&offer(
            "m=audio 10000 RTP/AVP 0\r\na=rtcp:10001 IN IP4 192.0.2.9\r\na=rtcp-mux\r\n",
        ))
        .unwrap();
        let n = negotiate(&sd, &PREFS, SrtpMode::Off).unwrap();
        assert!(n.rtcp_mux);
        assert_eq!(n.remote_rtcp, Some("192.0.2.9:10001".parse().unwrap()));
        let a = answer(&sd, &n, "127.0.0.1:20000".parse().unwrap(), 1, 1);
        assert!(a.ends_with("a=sendrecv\r\na=rtcp-mux\r\n"), "{a}");
        assert!(parse(&a).unwrap().media[0].rtcp_mux);
        // Port only: the connection address; garbage: ignored; no mux, none answered.
        let sd = parse(&offer("m=audio 10000 RTP/AVP 0\r\na=rtcp:10007\r\n")).unwrap();
        let n = negotiate(&sd, &PREFS, SrtpMode::Off).unwrap();
        assert_eq!(n.remote_rtcp, Some("192.0.2.1:10007".parse().unwrap()));
        assert!(!n.rtcp_mux);
        assert!(!answer(&sd, &n, "127.0.0.1:20000".parse().unwrap(), 1, 1).contains("rtcp"));
        let sd = parse(&offer("m=audio 10000 RTP/AVP 0\r\na=rtcp:x IN\r\n")).unwrap();
        assert_eq!(
            negotiate(&sd, &PREFS, SrtpMode::Off).unwrap().remote_rtcp,
            None
        );
    }

    #[test]
    fn static_payload_types_need_no_rtpmap_and_lf_only_is_accepted() {
        let sd = parse(
            "v=0\no=- 1 1 IN IP4 10.0.0.1\ns=-\nc=IN IP4 10.0.0.1\nt=0 0\nm=audio 4000 RTP/AVP 8\n",
        )
        .unwrap();
        assert_eq!(
            negotiate(&sd, &PREFS, SrtpMode::Off).unwrap().codec,
            CodecName::Pcma
        );
    }

    #[test]
    fn audio_and_video_answer_rejects_video_with_port_zero() {
        let sd = parse(&offer(
            "m=video 5000 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\nm=audio 5002 RTP/AVP 0\r\nc=IN IP6 2001:db8::5\r\n",
        ))
        .unwrap();
        let n = negotiate(&sd, &PREFS, SrtpMode::Off).unwrap();
        assert_eq!(n.media_index, 1);
        assert_eq!(n.remote_rtp, "[2001:db8::5]:5002".parse().unwrap());
        let a = answer(&sd, &n, "127.0.0.1:20000".parse().unwrap(), 1, 1);
        let m: Vec<&str> = a.lines().filter(|l| l.starts_with("m=")).collect();
        assert_eq!(m, ["m=video 0 RTP/AVP 96", "m=audio 20000 RTP/AVP 0"]);
    }

    #[test]
    fn rfc2543_hold_with_zero_address_is_answered_recvonly() {
        let o = parse(
            "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n",
        )
        .unwrap();
        let n = negotiate(&o, &[CodecName::Pcmu], SrtpMode::Off).unwrap();
        assert_eq!(n.direction, Direction::RecvOnly);
        assert!(n.is_hold());
        let o = parse(
            "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=recvonly\r\n",
        )
        .unwrap();
        assert_eq!(
            negotiate(&o, &[CodecName::Pcmu], SrtpMode::Off)
                .unwrap()
                .direction,
            Direction::Inactive
        );
    }

    #[test]
    fn our_offer_keeps_the_session_and_is_sendrecv() {
        let o = parse(&offer(
            "m=audio 4000 RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=sendonly\r\n",
        ))
        .unwrap();
        let n = negotiate(&o, &[CodecName::Pcma], SrtpMode::Off).unwrap();
        let text = super::offer(&n, "127.0.0.1:20000".parse().unwrap(), 7, 9);
        let back = parse(&text).unwrap();
        assert_eq!(back.session_version, 9);
        let m = &back.media[0];
        assert_eq!((m.port, &m.formats[..]), (20000, &[8, 101][..]));
        assert_eq!(m.direction, Direction::SendRecv);
        assert!(text.contains("a=rtpmap:101 telephone-event/8000"), "{text}");
    }

    #[test]
    fn hold_offer_is_answered_recvonly() {
        let sd = parse(&offer("m=audio 4000 RTP/AVP 0\r\na=sendonly\r\n")).unwrap();
        assert_eq!(
            negotiate(&sd, &PREFS, SrtpMode::Off).unwrap().direction,
            Direction::RecvOnly
        );
    }

    #[test]
    fn g729_only_is_no_common_codec() {
        let sd = parse(&offer(
            "m=audio 4000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n",
        ))
        .unwrap();
        match negotiate(&sd, &PREFS, SrtpMode::Off) {
            Err(SdpError::NoCommonCodec { offered }) => assert_eq!(offered, "G729/8000"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_audio_and_disabled_audio() {
        let sd = parse(&offer("m=video 4000 RTP/AVP 96\r\n")).unwrap();
        assert_eq!(
            negotiate(&sd, &PREFS, SrtpMode::Off),
            Err(SdpError::NoAudio)
        );
        let sd = parse(&offer("m=audio 0 RTP/AVP 0\r\n")).unwrap();
        assert_eq!(
            negotiate(&sd, &PREFS, SrtpMode::Off),
            Err(SdpError::NoAudio)
        );
    }

    #[test]
    fn malformed_lines_are_named() {
        for (body, needle) in [
            ("", "missing"),
            ("o=- 1 1 IN IP4 1.2.3.4\r\n", "v="),
            ("v=0\r\no=- x 1 IN IP4 h\r\n", "line 2"),
            (
                "v=0\r\no=- 1 1 IN IP4 h\r\nc=IN IP4 999.1.1.1\r\n",
                "connection",
            ),
            ("v=0\r\no=- 1 1 IN IP4 h\r\nm=audio x RTP/AVP 0\r\n", "port"),
            ("v=0\r\nthis is not sdp\r\n", "line 2"),
        ] {
            let e = parse(body).unwrap_err().to_string();
            assert!(e.contains(needle), "{body:?}: {e}");
        }
    }

    const OPUS_FIRST: [CodecName; 3] = [CodecName::Opus, CodecName::Pcmu, CodecName::Pcma];

    #[test]
    fn opus_offer_keeps_its_payload_type_and_fmtp() {
        // WebRTC and Asterisk number Opus 111, SIPp scenarios 96: neither is assumed.
        for pt in [96u8, 111, 127] {
            let sd = parse(&offer(&format!(
                "m=audio 4000 RTP/AVP {pt} 0 101\r\na=rtpmap:{pt} opus/48000/2\r\n\
                 a=fmtp:{pt} minptime=10;useinbandfec=1\r\na=rtpmap:101 telephone-event/48000\r\n\
                 a=rtpmap:0 PCMU/8000\r\n"
            )))
            .unwrap();
            let n = negotiate(&sd, &OPUS_FIRST, SrtpMode::Off).unwrap();
            assert_eq!(
                (n.codec, n.pt, n.clock_rate, n.channels),
                (CodecName::Opus, pt, 48000, 2)
            );
            assert_eq!(n.fmtp.as_deref(), Some("minptime=10;useinbandfec=1"));
            assert_eq!(n.telephone_event_pt, Some(101), "the 48 kHz event type");
            let a = answer(&sd, &n, "127.0.0.1:20000".parse().unwrap(), 1, 1);
            assert!(
                a.contains(&format!("m=audio 20000 RTP/AVP {pt} 101\r\n")),
                "{a}"
            );
            assert!(
                a.contains(&format!("a=rtpmap:{pt} opus/48000/2\r\n")),
                "{a}"
            );
            assert!(
                a.contains(&format!("a=fmtp:{pt} {OPUS_ANSWER_FMTP}\r\n")),
                "{a}"
            );
            assert!(OPUS_ANSWER_FMTP.contains("useinbandfec=1"));
            let back = parse(&a).unwrap();
            assert_eq!(negotiate(&back, &OPUS_FIRST, SrtpMode::Off).unwrap().pt, pt);
        }
    }

    #[test]
    fn opus_needs_its_rtpmap_and_to_be_accepted() {
        // Without an rtpmap a dynamic type means nothing.
        let sd = parse(&offer("m=audio 4000 RTP/AVP 96\r\n")).unwrap();
        assert!(matches!(
            negotiate(&sd, &OPUS_FIRST, SrtpMode::Off),
            Err(SdpError::NoCommonCodec { .. })
        ));
        // Opus at another clock rate is not RFC 7587 Opus.
        let sd = parse(&offer(
            "m=audio 4000 RTP/AVP 96\r\na=rtpmap:96 opus/16000\r\n",
        ))
        .unwrap();
        assert!(negotiate(&sd, &OPUS_FIRST, SrtpMode::Off).is_err());
        // A G.711-only profile does not take an Opus offer; one that
        // accepts Opus takes it when the offerer lists it first.
        let both = parse(&offer(
            "m=audio 4000 RTP/AVP 96 0\r\na=rtpmap:96 opus/48000/2\r\n",
        ))
        .unwrap();
        assert_eq!(
            negotiate(&both, &PREFS, SrtpMode::Off).unwrap().codec,
            CodecName::Pcmu
        );
        assert_eq!(
            negotiate(&both, &OPUS_FIRST, SrtpMode::Off).unwrap().codec,
            CodecName::Opus
        );
        let g711_first = parse(&offer(
            "m=audio 4000 RTP/AVP 0 96\r\na=rtpmap:96 opus/48000/2\r\n",
        ))
        .unwrap();
        assert_eq!(
            negotiate(&g711_first, &OPUS_FIRST, SrtpMode::Off)
                .unwrap()
                .codec,
            CodecName::Pcmu
        );
        let opus_only = parse(&offer(
            "m=audio 4000 RTP/AVP 96\r\na=rtpmap:96 OPUS/48000/2\r\n",
        ))
        .unwrap();
        assert!(negotiate(&opus_only, &PREFS, SrtpMode::Off).is_err());
        let n = negotiate(&opus_only, &OPUS_FIRST, SrtpMode::Off).unwrap();
        assert_eq!((n.pt, n.fmtp), (96, None), "no fmtp offered, none invented");
    }

    #[test]
    fn random_input_never_panics() {
        let base = offer("m=audio 4000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n")
            .into_bytes();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..5000 {
            let mut b = base.clone();
            for _ in 0..rng.usize(1..8) {
                let i = rng.usize(..b.len());
                b[i] = rng.u8(..);
            }
            b.truncate(rng.usize(..=b.len()));
            if let Ok(s) = std::str::from_utf8(&b) {
                if let Ok(sd) = parse(s) {
                    let _ = negotiate(&sd, &PREFS, SrtpMode::Off);
                }
            }
        }
    }

    const KEY: &str = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";

    fn savp(proto: &str, crypto: &str) -> SessionDescription {
        parse(&offer(&format!("m=audio 4000 {proto} 0\r\n{crypto}"))).unwrap()
    }

    #[test]
    fn srtp_offers_follow_the_profile() {
        let crypto = format!(
            "a=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:{KEY}{KEY}\r\n\
             a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{KEY}|2^20\r\n\
             a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:{KEY}\r\n"
        );
        let o = savp("RTP/SAVP", &crypto);
        // Off: the secure profile is refused (488), its keys never read.
        assert!(matches!(
            negotiate(&o, &PREFS, SrtpMode::Off),
            Err(SdpError::Srtp(_))
        ));
        for mode in [SrtpMode::Optional, SrtpMode::Required] {
            let n = negotiate(&o, &PREFS, mode).unwrap();
            let k = n.srtp.clone().unwrap();
            // The first line we can honour, in the offer's order (RFC 4568 §6.3.2).
            assert_eq!((k.tag, k.suite), (2, Suite::AesCm128HmacSha1_32));
            assert_ne!(k.local, k.remote);
            let a = answer(&o, &n, "192.0.2.1:20000".parse().unwrap(), 1, 1);
            assert!(a.contains("m=audio 20000 RTP/SAVP 0\r\n"), "{a}");
            let line = a.lines().find(|l| l.starts_with("a=crypto:")).unwrap();
            let ours = sdes::parse(line.strip_prefix("a=crypto:").unwrap()).unwrap();
            assert_eq!((ours.tag, ours.suite, &ours.key), (2, k.suite, &k.local));
            assert_eq!(a.matches("a=crypto").count(), 1, "{a}");
        }
        // Two offers get two keys of ours.
        let (a, b) = (
            negotiate(&o, &PREFS, SrtpMode::Optional).unwrap(),
            negotiate(&o, &PREFS, SrtpMode::Optional).unwrap(),
        );
        assert_ne!(a.srtp.unwrap().local, b.srtp.unwrap().local);
    }

    #[test]
    fn plain_rtp_under_each_mode() {
        let plain = savp("RTP/AVP", "");
        assert_eq!(negotiate(&plain, &PREFS, SrtpMode::Off).unwrap().srtp, None);
        assert_eq!(
            negotiate(&plain, &PREFS, SrtpMode::Optional).unwrap().srtp,
            None
        );
        assert!(matches!(
            negotiate(&plain, &PREFS, SrtpMode::Required),
            Err(SdpError::Srtp(_))
        ));
        // RTP/AVP with a=crypto ("best effort", baresip's `srtp`): SRTP when we do it.
        let best = savp(
            "RTP/AVP",
            &format!("a=crypto:5 AES_CM_128_HMAC_SHA1_80 inline:{KEY}\r\n"),
        );
        assert_eq!(negotiate(&best, &PREFS, SrtpMode::Off).unwrap().srtp, None);
        let n = negotiate(&best, &PREFS, SrtpMode::Required).unwrap();
        assert_eq!(n.srtp.as_ref().unwrap().tag, 5);
        let a = answer(&best, &n, "192.0.2.1:20000".parse().unwrap(), 1, 1);
        assert!(
            a.contains("m=audio 20000 RTP/AVP 0\r\n") && a.contains("a=crypto:5 "),
            "{a}"
        );
        // RTP/SAVP with nothing usable: refused whatever the mode.
        let bad = savp(
            "RTP/SAVP",
            &format!("a=crypto:1 F8_128_HMAC_SHA1_80 inline:{KEY}\r\n"),
        );
        for mode in [SrtpMode::Off, SrtpMode::Optional, SrtpMode::Required] {
            assert!(
                matches!(negotiate(&bad, &PREFS, mode), Err(SdpError::Srtp(_))),
                "{mode:?}"
            );
        }
        // Both profiles offered as two streams: with SRTP off, the plain one.
        let both = parse(&offer(&format!(
            "m=audio 4000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}\r\nm=audio 4002 RTP/AVP 0\r\n"
        )))
        .unwrap();
        let n = negotiate(&both, &PREFS, SrtpMode::Off).unwrap();
        assert_eq!((n.media_index, n.srtp), (1, None));
        // With SRTP on, the secure one, whichever comes first.
        for mode in [SrtpMode::Optional, SrtpMode::Required] {
            let n = negotiate(&both, &PREFS, mode).unwrap();
            assert_eq!(n.media_index, 0, "{mode:?}");
            assert!(n.srtp.is_some());
        }
        let plain_first = parse(&offer(&format!(
            "m=audio 4002 RTP/AVP 0\r\nm=audio 4000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}\r\n"
        )))
        .unwrap();
        let n = negotiate(&plain_first, &PREFS, SrtpMode::Required).unwrap();
        assert_eq!(n.media_index, 1);
        let a = answer(&plain_first, &n, "192.0.2.1:20000".parse().unwrap(), 1, 1);
        assert!(
            a.contains("m=audio 0 RTP/AVP 0\r\nm=audio 20000 RTP/SAVP 0\r\n"),
            "{a}"
        );
    }

    #[test]
    fn our_re_offer_keeps_the_profile_and_key() {
        let o = savp(
            "RTP/SAVP",
            &format!("a=crypto:9 AES_CM_128_HMAC_SHA1_80 inline:{KEY}\r\n"),
        );
        let n = negotiate(&o, &PREFS, SrtpMode::Optional).unwrap();
        let ours = super::offer(&n, "192.0.2.1:20000".parse().unwrap(), 1, 2);
        assert!(ours.contains("RTP/SAVP 0"), "{ours}");
        let c = ours
            .lines()
            .find_map(|l| l.strip_prefix("a=crypto:"))
            .unwrap();
        assert_eq!(sdes::parse(c).unwrap().key, n.srtp.unwrap().local);
    }
}
