//! SRTP and SRTCP (RFC 3711) for one call: the caller's packets
//! authenticated, checked against replay (§3.3.2, a 128-packet window) and
//! decrypted before anything reads them; ours encrypted on the way out.
//!
//! A self-contained transform over byte slices: the media session calls it
//! once where a datagram comes in (before RTP/RTCP parsing) and once where a
//! packet goes out, so the sockets around it may change freely. The keys
//! come from SDES (RFC 4568, `crate::sdes`): the caller's for what we
//! receive, ours (fresh per call) for what we send.
//!
//! The cryptography is libsrtp2's (crate `srtp`, docs/dependencies.md): it
//! transforms in place, so with buffers allocated here once per call no
//! packet allocates. libsrtp2 creates a stream's state on the first packet
//! of each SSRC that authenticates, so forged SSRCs cost nothing.

use srtp::{CryptoPolicy, Session, StreamPolicy};

use crate::sdes::{MasterKey, Suite};

/// Largest datagram transformed: an Ethernet MTU's UDP payload and then
/// some; libsrtp2 adds at most `SRTP_MAX_TRAILER_LEN` (16 + MKI) bytes.
const MAX_PACKET: usize = 1500;
const MAX_TRAILER: usize = 32;

/// SRTCP trailer (RFC 3711 §3.4): E flag + index (4 bytes) and an 80-bit tag.
const SRTCP_TRAILER: usize = 4 + 10;

/// Why a packet was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SrtpError {
    /// Too short or too long to be an (S)RTP/(S)RTCP packet of ours.
    #[error("not an SRTP packet (length or header)")]
    Malformed,
    /// libsrtp2 refused it: authentication failed, a replay, or a key past
    /// its lifetime.
    #[error("SRTP refused the packet: {0}")]
    Refused(&'static str),
}

/// The SRTP context of one call.
pub(crate) struct SrtpContext {
    /// Keyed with the caller's master key; any SSRC (template).
    inbound: Session,
    /// Keyed with ours.
    outbound: Session,
    rtp_tag: usize,
    /// Where received packets are decrypted (the socket's buffer is not ours to write).
    rx: Vec<u8>,
    /// Where our packets are encrypted.
    tx: Vec<u8>,
}

impl std::fmt::Debug for SrtpContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpContext").finish_non_exhaustive()
    }
}

fn policies(suite: Suite) -> (CryptoPolicy, CryptoPolicy, usize) {
    // RFC 4568 §6.2.2: the _32 suite shortens only the SRTP tag; SRTCP
    // keeps the 80-bit one (RFC 3711 §5.2 default).
    match suite {
        Suite::AesCm128HmacSha1_80 => (
            CryptoPolicy::aes_cm_128_hmac_sha1_80(),
            CryptoPolicy::aes_cm_128_hmac_sha1_80(),
            10,
        ),
        Suite::AesCm128HmacSha1_32 => (
            CryptoPolicy::aes_cm_128_hmac_sha1_32(),
            CryptoPolicy::aes_cm_128_hmac_sha1_80(),
            4,
        ),
    }
}

fn refused(e: srtp::Error) -> SrtpError {
    tracing::trace!(error = %e, "libsrtp2");
    SrtpError::Refused(match e {
        srtp::Error::AUTH_FAIL => "authentication failed",
        srtp::Error::REPLAY_FAIL | srtp::Error::REPLAY_OLD => "replayed or too old",
        srtp::Error::KEY_EXPIRED => "key expired",
        srtp::Error::NO_CTX => "no stream for the SSRC",
        srtp::Error::BAD_PARAM => "bad parameter",
        srtp::Error::CIPHER_FAIL => "cipher failed",
        srtp::Error::PARSE_ERR => "unparseable packet",
        // libsrtp2: an SRTCP packet without the E flag where the suite encrypts.
        srtp::Error::CANT_CHECK => "SRTCP not encrypted",
        _ => "other error",
    })
}

impl SrtpContext {
    /// A context receiving with `theirs` and sending with `ours`, both
    /// under `suite`.
    pub(crate) fn new(
        suite: Suite,
        theirs: &MasterKey,
        ours: &MasterKey,
    ) -> Result<Self, SrtpError> {
        let (rtp, rtcp, rtp_tag) = policies(suite);
        fn policy(rtp: CryptoPolicy, rtcp: CryptoPolicy, key: &MasterKey) -> StreamPolicy<'_> {
            StreamPolicy {
                rtp,
                rtcp,
                key: &key.as_bytes()[..],
                // 0: libsrtp2's default replay window (128 packets).
                window_size: 0,
                allow_repeat_tx: false,
                encrypt_extension_headers: &[],
            }
        }
        let inbound = Session::with_inbound_template(policy(rtp, rtcp, theirs))
            .map_err(|_| SrtpError::Refused("inbound policy"))?;
        let outbound = Session::with_outbound_template(policy(rtp, rtcp, ours))
            .map_err(|_| SrtpError::Refused("outbound policy"))?;
        Ok(SrtpContext {
            inbound,
            outbound,
            rtp_tag,
            rx: Vec::with_capacity(MAX_PACKET + MAX_TRAILER),
            tx: Vec::with_capacity(MAX_PACKET + MAX_TRAILER),
        })
    }

    /// An SRTP datagram from the caller, authenticated and decrypted, or
    /// why not. Allocation-free.
    pub(crate) fn unprotect_rtp(&mut self, datagram: &[u8]) -> Result<&[u8], SrtpError> {
        let header = rtp_header_len(datagram).ok_or(SrtpError::Malformed)?;
        if datagram.len() < header + self.rtp_tag || datagram.len() > MAX_PACKET {
            return Err(SrtpError::Malformed);
        }
        load(&mut self.rx, datagram);
        self.inbound.unprotect(&mut self.rx).map_err(refused)?;
        Ok(&self.rx)
    }

    /// An SRTCP datagram from the caller (its port, or the RTP port with
    /// rtcp-mux), authenticated and decrypted. Allocation-free.
    pub(crate) fn unprotect_rtcp(&mut self, datagram: &[u8]) -> Result<&[u8], SrtpError> {
        if datagram.len() < 8 + SRTCP_TRAILER || datagram.len() > MAX_PACKET {
            return Err(SrtpError::Malformed);
        }
        load(&mut self.rx, datagram);
        self.inbound.unprotect_rtcp(&mut self.rx).map_err(refused)?;
        Ok(&self.rx)
    }

    /// Our RTP packet, encrypted and tagged. Allocation-free.
    pub(crate) fn protect_rtp(&mut self, packet: &[u8]) -> Result<&[u8], SrtpError> {
        if rtp_header_len(packet).is_none() || packet.len() > MAX_PACKET {
            return Err(SrtpError::Malformed);
        }
        load(&mut self.tx, packet);
        self.outbound.protect(&mut self.tx).map_err(refused)?;
        Ok(&self.tx)
    }

    /// Our RTCP packet, encrypted, indexed and tagged. Allocation-free.
    pub(crate) fn protect_rtcp(&mut self, packet: &[u8]) -> Result<&[u8], SrtpError> {
        if packet.len() < 8 || packet.len() > MAX_PACKET {
            return Err(SrtpError::Malformed);
        }
        load(&mut self.tx, packet);
        self.outbound.protect_rtcp(&mut self.tx).map_err(refused)?;
        Ok(&self.tx)
    }
}

/// Copy into a buffer whose capacity (allocated once) already fits the
/// packet and the trailer, so neither this nor libsrtp's reserve allocates.
fn load(buf: &mut Vec<u8>, packet: &[u8]) {
    buf.clear();
    buf.extend_from_slice(packet);
}

/// The length of a valid RTP v2 header (fixed part, CSRCs, extension),
/// checked to lie within the datagram before libsrtp2 reads it.
fn rtp_header_len(p: &[u8]) -> Option<usize> {
    if p.len() < 12 || p[0] >> 6 != 2 {
        return None;
    }
    let mut len = 12 + 4 * usize::from(p[0] & 0x0f);
    if p[0] & 0x10 != 0 {
        let ext = p.get(len + 2..len + 4)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    (len <= p.len()).then_some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0xAB, 0xCD, 0, 1];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        p.extend((0..160).map(|i| i as u8));
        p
    }

    fn pair(suite: Suite) -> (SrtpContext, SrtpContext) {
        let (a, b) = (MasterKey::random().unwrap(), MasterKey::random().unwrap());
        (
            SrtpContext::new(suite, &b, &a).unwrap(),
            SrtpContext::new(suite, &a, &b).unwrap(),
        )
    }

    #[test]
    fn round_trip_both_suites_rtp_and_rtcp() {
        for (suite, tag) in [
            (Suite::AesCm128HmacSha1_80, 10),
            (Suite::AesCm128HmacSha1_32, 4),
        ] {
            let (mut us, mut them) = pair(suite);
            for seq in [65530u16, 65535, 0, 3] {
                let plain = rtp(seq);
                let wire = us.protect_rtp(&plain).unwrap().to_vec();
                assert_eq!(wire.len(), plain.len() + tag);
                assert_eq!(wire[..12], plain[..12], "header stays clear");
                assert_ne!(wire[12..plain.len()], plain[12..], "payload encrypted");
                assert_eq!(them.unprotect_rtp(&wire).unwrap(), &plain[..]);
            }
            // An RTCP receiver report (RFC 3550 §6.4.2), no report blocks.
            let rr = [0x80, 201, 0, 1, 0xAB, 0xCD, 0, 1];
            let wire = us.protect_rtcp(&rr).unwrap().to_vec();
            assert_eq!(wire.len(), rr.len() + SRTCP_TRAILER);
            assert_eq!(them.unprotect_rtcp(&wire).unwrap(), &rr[..]);
        }
    }

    #[test]
    fn replays_forgeries_and_garbage_are_refused() {
        let (mut us, mut them) = pair(Suite::AesCm128HmacSha1_80);
        let wire = us.protect_rtp(&rtp(7)).unwrap().to_vec();
        assert!(them.unprotect_rtp(&wire).is_ok());
        assert_eq!(
            them.unprotect_rtp(&wire),
            Err(SrtpError::Refused("replayed or too old"))
        );
        let mut forged = us.protect_rtp(&rtp(8)).unwrap().to_vec();
        forged[20] ^= 1;
        assert_eq!(
            them.unprotect_rtp(&forged),
            Err(SrtpError::Refused("authentication failed"))
        );
        // Plain RTP where SRTP was negotiated fails authentication.
        assert!(them.unprotect_rtp(&rtp(9)).is_err());
        // A packet from someone with another key, any SSRC.
        let (mut other, _) = pair(Suite::AesCm128HmacSha1_80);
        let mut p = rtp(10);
        p[8..12].copy_from_slice(&[1, 2, 3, 4]);
        let wire = other.protect_rtp(&p).unwrap().to_vec();
        assert!(them.unprotect_rtp(&wire).is_err());
        for junk in [&[][..], &[0x80; 11], &[0x9f; 40], &[0x80; 2000]] {
            assert_eq!(them.unprotect_rtp(junk), Err(SrtpError::Malformed));
        }
        assert!(them.unprotect_rtcp(&[0x80, 200, 0, 0]).is_err());
        // The genuine stream goes on after all that.
        let wire = us.protect_rtp(&rtp(11)).unwrap().to_vec();
        assert!(them.unprotect_rtp(&wire).is_ok());
    }

    /// Interoperability rests on both ends deriving the same session keys
    /// (RFC 3711 §4.3) from the SDES key: two contexts with one key agree.
    #[test]
    fn a_given_key_encrypts_deterministically() {
        let k = MasterKey::from_bytes([0x2b; 30]);
        let mut a = SrtpContext::new(Suite::AesCm128HmacSha1_80, &k, &k).unwrap();
        let mut b = SrtpContext::new(Suite::AesCm128HmacSha1_80, &k, &k).unwrap();
        let p = rtp(1);
        assert_eq!(a.protect_rtp(&p).unwrap(), b.protect_rtp(&p).unwrap());
    }
}
