//! Media relay (`[transfer] media`): when the caller's UA cannot take a
//! re-INVITE with the queue's media address (it refuses it, never answers
//! it, or answers without SDP) or the profile says `relay`, emonav answers
//! the queue's offer itself, with a second RTP port of its own, and relays
//! the RTP between the legs. The caller keeps the session it has with us
//! and never sees a re-INVITE.
//!
//! The state machine decides *that* it relays and how (addresses, payload
//! type map); the edge binds the port ([`Output::RelayPort`],
//! [`Call::relay_port`]) and moves each datagram after asking
//! [`Call::relay_rtp`] where it goes. Nothing is allocated per packet: the
//! payload type is rewritten in place and counted in the call record.
//!
//! The queue's packets are forwarded with their SSRC, sequence and
//! timestamps: to the caller that is a new synchronisation source, which
//! RFC 3550 §8.2 allows. Our silence keepalive toward the caller stops at
//! the first of them. RTCP is not relayed: each leg's reports would
//! describe the other leg's streams wrongly (RFC 3550 §7.2 would have us
//! translate them), and neither side needs them to play audio.
//!
//! SRTP on the caller's leg is not relayed: emonav would have to decrypt
//! and re-encrypt every packet with keys the queue leg never negotiated;
//! the call ends with the failure tone and a `Reason` saying so.

use std::net::SocketAddr;
use std::time::Instant;

use super::super::{Call, Output, Phase};
use crate::config::{BridgeMedia, SrtpMode};
use crate::sdp::{self, Negotiated};

/// A relay being set up (waiting for the edge's port) or running.
#[derive(Debug)]
pub(super) struct MediaRelay {
    /// The queue's session as we answer it: its payload types, its address.
    queue: Negotiated,
    /// The queue's offer, for our answer's `m=` lines.
    offer: sdp::SessionDescription,
    /// Our queue-side RTP address, once the edge bound it.
    local: Option<SocketAddr>,
    /// Payload types: `(caller's, queue's)`, audio first, telephone-event
    /// second when both legs have it.
    pts: [Option<(u8, u8)>; 2],
    /// A packet from the queue went to the caller: our keepalive stops.
    queue_flowing: bool,
}

/// Which leg a relayed datagram came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelaySide {
    /// The caller's RTP socket.
    Caller,
    /// The queue-side RTP socket.
    Queue,
}

impl MediaRelay {
    /// The other leg's payload type for `pt` coming from `from`.
    fn map(&self, from: RelaySide, pt: u8) -> Option<u8> {
        self.pts
            .iter()
            .flatten()
            .find_map(|&(caller, queue)| match from {
                RelaySide::Caller => (caller == pt).then_some(queue),
                RelaySide::Queue => (queue == pt).then_some(caller),
            })
    }
}

/// Rewrite an RTP datagram's payload type (RFC 3550 §5.1, the marker bit
/// kept) to the other leg's; `None` when it is not RTP version 2 or its
/// payload type is not one the legs share.
fn rewrite_pt(datagram: &mut [u8], map: impl Fn(u8) -> Option<u8>) -> Option<()> {
    if datagram.len() < 12 || datagram[0] >> 6 != 2 {
        return None;
    }
    let new = map(datagram[1] & 0x7f)?;
    datagram[1] = (datagram[1] & 0x80) | new;
    Some(())
}

impl Call {
    /// True once the call relays media (the edge keeps both sockets).
    pub fn relaying(&self) -> bool {
        matches!(self.phase, Phase::Bridged)
            && self.b2b.media.as_ref().is_some_and(|r| r.local.is_some())
    }

    /// Our silence keepalive still holds the caller's line: the relay is
    /// up but nothing came from the queue yet.
    pub(in crate::call) fn relay_awaits_queue_media(&self) -> bool {
        self.relaying() && self.b2b.media.as_ref().is_some_and(|r| !r.queue_flowing)
    }

    /// The caller refused the queue's media: with `auto`, relay it instead.
    /// A `481` says the caller's dialog is gone (RFC 3261 §14.1): no relay.
    pub(super) fn relay_instead(&self, code: Option<u16>) -> bool {
        self.s.bridge_media == BridgeMedia::Auto && code != Some(481) && self.b2b.media.is_none()
    }

    /// Answer the queue's offer with a relay port of ours: the edge is
    /// asked for the port; [`Call::relay_port`] goes on.
    pub(super) fn relay_media(&mut self, now: Instant) {
        let codec = self.media.as_ref().map(|m| m.codec());
        let (Some(codec), Some(caller)) = (codec, self.mid.neg.clone()) else {
            return self.bridge_failed(Some(488), "media relay: no media on the caller's leg", now);
        };
        if caller.srtp.is_some() {
            return self.bridge_failed(
                Some(488),
                "media relay: the caller's leg is SRTP, which emonav does not relay",
                now,
            );
        }
        let offer = self
            .b2b
            .queue_remote
            .as_deref()
            .map(sdp::parse)
            .and_then(Result::ok);
        let Some(offer) = offer else {
            return self.bridge_failed(Some(488), "media relay: unusable SDP from the queue", now);
        };
        let queue = match sdp::negotiate_keeping(&offer, &[codec], Some(codec), SrtpMode::Off) {
            Ok(q) => q,
            Err(e) => {
                let cause = format!("media relay: no codec in common with the queue ({e})");
                return self.bridge_failed(Some(488), &cause, now);
            }
        };
        let events = caller.telephone_event_pt.zip(queue.telephone_event_pt);
        tracing::info!(call_id = %self.dialog.call_id, queue_rtp = %queue.remote_rtp, caller_pt = caller.pt, queue_pt = queue.pt, "B2BUA: relaying the media through emonav");
        self.b2b.media = Some(Box::new(MediaRelay {
            pts: [Some((caller.pt, queue.pt)), events],
            queue,
            offer,
            local: None,
            queue_flowing: false,
        }));
        self.out.push(Output::RelayPort);
    }

    /// The edge bound the relay's queue-side RTP socket (advertised
    /// address), or could not (`None`). Our answer goes in the ACK of the
    /// queue's 2xx: bridged, media relayed.
    pub fn relay_port(&mut self, local: Option<SocketAddr>, now: Instant) {
        self.out.now = now;
        let waiting = self.b2b.media.as_ref().is_some_and(|r| r.local.is_none());
        if !waiting || !matches!(self.phase, Phase::Bridging) {
            return;
        }
        let Some(local) = local else {
            self.b2b.media = None;
            return self.bridge_failed(Some(503), "media relay: no free RTP port", now);
        };
        let Some(relay) = &mut self.b2b.media else {
            return;
        };
        relay.local = Some(local);
        let id = fastrand::u64(1..u64::MAX / 2);
        let answer = sdp::answer(&relay.offer, &relay.queue, local, id, 1);
        // The caller keeps the session it has: refreshes get our SDP again.
        self.b2b.caller_sdp = self.mid.last_sdp.clone();
        self.bridged(answer.into_bytes(), now);
        if matches!(self.phase, Phase::Bridged) {
            self.record.bridge_media = Some("relay");
        }
    }

    /// Where a datagram relayed from `from` goes, its payload type
    /// rewritten in place for the other leg; `None`: not relayed (a host
    /// other than the leg's, not RTP, a payload type the legs do not share).
    /// Counted in the call record. Allocation-free.
    pub fn relay_rtp(
        &mut self,
        from: RelaySide,
        datagram: &mut [u8],
        source: SocketAddr,
        now: Instant,
    ) -> Option<SocketAddr> {
        self.out.now = now;
        let dest = self.relay_dest(from, datagram, source, now);
        let stats = &mut self.record.relay;
        match (dest, from) {
            (None, _) => stats.dropped += 1,
            (Some(_), RelaySide::Caller) => {
                stats.to_queue_packets += 1;
                stats.to_queue_bytes += datagram.len() as u64;
            }
            (Some(_), RelaySide::Queue) => {
                stats.to_caller_packets += 1;
                stats.to_caller_bytes += datagram.len() as u64;
            }
        }
        dest
    }

    fn relay_dest(
        &mut self,
        from: RelaySide,
        datagram: &mut [u8],
        source: SocketAddr,
        now: Instant,
    ) -> Option<SocketAddr> {
        if !self.relaying() {
            return None;
        }
        let relay = self.b2b.media.as_ref()?;
        let queue = relay.queue.remote_rtp;
        match from {
            RelaySide::Caller => {
                // The caller's stream as before the transfer: latched and
                // counted (RFC 4961); a stray source is not relayed.
                let m = self.media.as_mut()?;
                let call_id = &self.dialog.call_id;
                let heard = m.on_rtp(datagram, Some(source), now, false, false, call_id);
                if matches!(heard, crate::media::session::Heard::Stray) {
                    return None;
                }
                rewrite_pt(datagram, |pt| relay.map(from, pt))?;
                Some(queue)
            }
            RelaySide::Queue => {
                if source.ip() != queue.ip() {
                    return None;
                }
                rewrite_pt(datagram, |pt| relay.map(from, pt))?;
                let dest = self.media.as_ref()?.rtp_dest()?;
                if let Some(r) = &mut self.b2b.media {
                    r.queue_flowing = true;
                }
                Some(dest)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_type_is_rewritten_keeping_the_marker() {
        let mut p = [0u8; 20];
        p[0] = 0x80;
        p[1] = 0x80 | 111;
        assert!(rewrite_pt(&mut p, |pt| (pt == 111).then_some(96)).is_some());
        assert_eq!(p[1], 0x80 | 96);
        p[1] = 8;
        assert!(rewrite_pt(&mut p, |pt| (pt == 111).then_some(96)).is_none());
        assert!(rewrite_pt(&mut p[..11], |_| Some(0)).is_none(), "short");
        p[0] = 0x40;
        assert!(rewrite_pt(&mut p, |_| Some(0)).is_none(), "not RTP v2");
    }
}
