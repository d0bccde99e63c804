//! A small fixed-delay jitter buffer (RFC 3550 §6.4.1 / §A.8 semantics):
//! packets are held for a configurable playout delay after the time their
//! RTP timestamp says they are due, then released in sequence order, so the
//! analyser sees one continuous, ordered stream.
//!
//! * Fixed capacity: [`CAPACITY`] slots (a ring indexed by sequence number)
//!   over one contiguous byte area sized for what the call negotiated (160 B
//!   a slot for G.711 at 20 ms rather than [`MAX_PAYLOAD`]: 5 KiB a call
//!   instead of 48 KiB). A payload longer than a slot grows the area once, to
//!   the next power of two (capped at [`MAX_PAYLOAD`]), so a stream's packets
//!   allocate at most a few times in its life, never in steady state.
//! * Reordering within the delay is fixed; a packet for a slot already played
//!   out is *late* and dropped; a packet seen twice is a *duplicate*.
//! * Gaps are reported with the next released packet (`lost` frames before
//!   it) so the decoder conceals them.
//! * 16-bit sequence wrap is handled; an SSRC change, or a sequence restart
//!   (a jump beyond RFC 3550 A.1's `MAX_DROPOUT`/`MAX_MISORDER` confirmed by
//!   the next packet), flushes the old stream (its packets are released at
//!   once, in order) and restarts.
//! * A packet too far ahead for the ring (the sender's clock runs fast, or a
//!   burst) makes the oldest packets leave early (`overflowed`) rather than
//!   be dropped.
//!
//! Sans-IO: [`push`](JitterBuffer::push) and [`pop`](JitterBuffer::pop) take
//! `now`; [`poll_timeout`](JitterBuffer::poll_timeout) says when the next
//! packet is due.

use std::time::{Duration, Instant};

/// Slots in the ring (a power of two, so that `seq % CAPACITY` is stable
/// across the 16-bit wrap): 640 ms of 20 ms packets.
pub(crate) const CAPACITY: usize = 32;
/// Largest payload kept (bytes); longer payloads are truncated.
pub(crate) const MAX_PAYLOAD: usize = 1500;
/// Smallest slot: an RFC 4733 event or a comfort-noise packet always fits.
const MIN_SLOT: usize = 16;
/// The default playout delay.
#[cfg(test)]
pub(crate) const DEFAULT_DELAY: Duration = Duration::from_millis(60);

const MAX_DROPOUT: u16 = 3000;
const MAX_MISORDER: u16 = 100;
/// A timestamp this far from the anchor re-anchors the playout clock.
const MAX_TS_JUMP_S: i64 = 10;

/// Counters, for the call's event record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct JitterStats {
    /// Packets accepted into the buffer.
    pub received: u64,
    /// Frames missing from the released sequence (reported to the decoder).
    pub lost: u64,
    /// Packets that arrived after their slot was played out (dropped).
    pub late: u64,
    /// Packets already buffered or played (dropped).
    pub duplicated: u64,
    /// Packets that arrived out of order and were put back in order.
    pub reordered: u64,
    /// Most packets held at once.
    pub max_depth: u64,
    /// Packets released before their playout time because the ring was full.
    pub overflowed: u64,
    /// Stream restarts (SSRC change or sequence restart).
    pub restarts: u64,
}

/// What [`JitterBuffer::push`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Held for playout.
    Buffered,
    /// Seen already: dropped.
    Duplicate,
    /// Its slot was already played out (or an unconfirmed sequence jump): dropped.
    Late,
}

/// A packet leaving the buffer, in sequence order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Released<'a> {
    /// Frames missing right before this one (0 when contiguous).
    pub lost: u16,
    /// Sequence number.
    pub seq: u16,
    /// RTP timestamp.
    pub timestamp: u32,
    /// Payload type, as pushed.
    pub pt: u8,
    /// Payload (truncated to [`MAX_PAYLOAD`]).
    pub payload: &'a [u8],
}

/// A packet's description; its bytes are in [`Payloads`].
#[derive(Clone, Copy)]
struct Slot {
    used: bool,
    seq: u16,
    ts: u32,
    pt: u8,
    len: u16,
    due: Instant,
}

impl Slot {
    fn new(now: Instant) -> Self {
        Self {
            used: false,
            seq: 0,
            ts: 0,
            pt: 0,
            len: 0,
            due: now,
        }
    }
}

/// The bytes of the ring's slots and of the stash (index [`STASH`]), one
/// contiguous area of equal-sized cells.
struct Payloads {
    cell: usize,
    bytes: Box<[u8]>,
}

/// The stash's cell, after the ring's.
const STASH: usize = CAPACITY;

impl Payloads {
    fn new(cell: usize) -> Self {
        let cell = cell.clamp(MIN_SLOT, MAX_PAYLOAD);
        Self {
            cell,
            bytes: vec![0; (CAPACITY + 1) * cell].into_boxed_slice(),
        }
    }

    fn get(&self, i: usize, len: u16) -> &[u8] {
        &self.bytes[i * self.cell..][..len as usize]
    }

    /// Store `payload` (truncated to [`MAX_PAYLOAD`]) in cell `i`, growing
    /// every cell first if it does not fit; returns the length kept.
    fn put(&mut self, i: usize, payload: &[u8], slots: &[Slot], stash: &Slot) -> u16 {
        let n = payload.len().min(MAX_PAYLOAD);
        if n > self.cell {
            self.grow(n, slots, stash);
        }
        self.bytes[i * self.cell..][..n].copy_from_slice(&payload[..n]);
        n as u16
    }

    /// Room for `n`-byte payloads, the held ones kept. Rounding up to a power
    /// of two bounds the reallocations of one stream to a handful.
    #[cold]
    fn grow(&mut self, n: usize, slots: &[Slot], stash: &Slot) {
        let mut bigger = Self::new(n.next_power_of_two());
        let held = slots.iter().chain(std::iter::once(stash)).enumerate();
        for (i, s) in held.filter(|(_, s)| s.used) {
            let len = usize::from(s.len);
            bigger.bytes[i * bigger.cell..][..len]
                .copy_from_slice(&self.bytes[i * self.cell..][..len]);
        }
        *self = bigger;
    }

    /// Move cell `from`'s first `len` bytes to cell `to`.
    fn copy(&mut self, from: usize, to: usize, len: u16) {
        let c = self.cell;
        self.bytes
            .copy_within(from * c..from * c + usize::from(len), to * c);
    }
}

/// Why the stash holds a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    None,
    /// First packet of a new stream (SSRC change or restart): release the old one first.
    NewStream {
        ssrc: u32,
    },
    /// Too far ahead for the ring: release the oldest first.
    Overflow,
}

/// One stream's jitter buffer.
pub(crate) struct JitterBuffer {
    delay: Duration,
    clock_rate: u32,
    slots: [Slot; CAPACITY],
    /// A packet waiting for room (see [`Pending`]).
    stash: Slot,
    /// The bytes of `slots` and `stash`.
    data: Payloads,
    pending: Pending,
    ssrc: Option<u32>,
    /// Sequence number of the next packet to release.
    next: u16,
    /// Offsets (from `next`) below this may be occupied.
    span: u16,
    depth: usize,
    /// Bit i: `next - 1 - i` was received (duplicate detection after playout).
    history: u64,
    /// Frames skipped by a forced advance, reported with the next release.
    carry_lost: u16,
    /// (arrival, timestamp) the playout clock is anchored on.
    anchor: Option<(Instant, u32)>,
    /// A sequence jump waiting for confirmation by its successor (RFC 3550 A.1).
    bad_seq: Option<u16>,
    stats: JitterStats,
}

impl std::fmt::Debug for JitterBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JitterBuffer")
            .field("delay", &self.delay)
            .field("next", &self.next)
            .field("depth", &self.depth)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl JitterBuffer {
    /// A buffer holding packets `delay` beyond their due time, for an RTP
    /// clock of `clock_rate` Hz, with room for `payload`-byte packets (longer
    /// ones grow it once). Allocates its ring here.
    pub(crate) fn new(delay: Duration, clock_rate: u32, payload: usize, now: Instant) -> Self {
        Self {
            delay,
            clock_rate: clock_rate.max(1),
            slots: [Slot::new(now); CAPACITY],
            stash: Slot::new(now),
            data: Payloads::new(payload),
            pending: Pending::None,
            ssrc: None,
            next: 0,
            span: 0,
            depth: 0,
            history: 0,
            carry_lost: 0,
            anchor: None,
            bad_seq: None,
            stats: JitterStats::default(),
        }
    }

    /// Forget the stream (keeping the statistics): the next packet starts
    /// afresh, with no gap reported (a hold, a re-negotiation).
    pub(crate) fn reset(&mut self) {
        for s in self.slots.iter_mut() {
            s.used = false;
        }
        self.pending = Pending::None;
        self.ssrc = None;
        self.span = 0;
        self.depth = 0;
        self.history = 0;
        self.carry_lost = 0;
        self.anchor = None;
        self.bad_seq = None;
    }

    /// Statistics so far.
    pub(crate) fn stats(&self) -> JitterStats {
        self.stats
    }

    #[cfg(test)]
    /// Packets held (not counting one waiting for room).
    pub(crate) fn depth(&self) -> usize {
        self.depth
    }

    /// When the next packet is due, if any is held.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.pending != Pending::None {
            return Some(
                self.stash
                    .due
                    .min(self.head_due().unwrap_or(self.stash.due)),
            );
        }
        self.head_due()
    }

    fn head_due(&self) -> Option<Instant> {
        if self.depth == 0 {
            return None;
        }
        (0..self.span)
            .map(|o| &self.slots[Self::index(self.next.wrapping_add(o))])
            .find(|s| s.used)
            .map(|s| s.due)
    }

    fn index(seq: u16) -> usize {
        seq as usize % CAPACITY
    }

    /// When a packet with timestamp `ts` (None: untimed, e.g. an RFC 4733
    /// event) arriving at `now` is to be played out.
    fn due(&mut self, ts: Option<u32>, now: Instant) -> Instant {
        let Some(ts) = ts else {
            return now + self.delay;
        };
        let (at, base) = *self.anchor.get_or_insert((now, ts));
        let off_us = ts.wrapping_sub(base) as i32 as i64 * 1_000_000 / self.clock_rate as i64;
        let start = at + self.delay;
        let due = if off_us >= 0 {
            start + Duration::from_micros(off_us as u64)
        } else {
            start
                .checked_sub(Duration::from_micros(off_us.unsigned_abs()))
                .unwrap_or(at)
        };
        // Behind schedule with nothing queued (a stall, a talkspurt after
        // silence, a slower sender clock), or a timestamp jump: re-anchor, so
        // the packet gets the full delay again.
        if (due < now && self.depth == 0) || off_us.abs() > MAX_TS_JUMP_S * 1_000_000 {
            self.anchor = Some((now, ts));
            return now + self.delay;
        }
        due
    }

    /// Offer one packet of stream `ssrc`. `ts` is its RTP timestamp, or None
    /// for packets whose timestamp says nothing about their playout time
    /// (RFC 4733 events share the sequence space but not the timing): those
    /// are due `delay` after arrival. `pt` is returned on release.
    pub(crate) fn push(
        &mut self,
        ssrc: u32,
        seq: u16,
        ts: Option<u32>,
        pt: u8,
        payload: &[u8],
        now: Instant,
    ) -> Pushed {
        if self.pending != Pending::None {
            // The caller did not pop since the last push: make room by force.
            self.settle_pending();
        }
        let Some(cur) = self.ssrc else {
            self.ssrc = Some(ssrc);
            self.next = seq;
            return self.store(0, seq, ts, pt, payload, now);
        };
        if cur != ssrc {
            return self.new_stream(ssrc, seq, ts, pt, payload, now);
        }
        let d = seq.wrapping_sub(self.next);
        if d < MAX_DROPOUT {
            self.bad_seq = None;
            if (d as usize) < CAPACITY {
                let slot = &self.slots[Self::index(seq)];
                if slot.used && slot.seq == seq {
                    self.stats.duplicated += 1;
                    return Pushed::Duplicate;
                }
                return self.store(d, seq, ts, pt, payload, now);
            }
            // Too far ahead for the ring: the oldest leave early.
            let due = self.due(ts, now);
            self.fill(STASH, seq, ts.unwrap_or(0), pt, payload, due);
            self.pending = Pending::Overflow;
            self.stats.received += 1;
            return Pushed::Buffered;
        }
        let back = self.next.wrapping_sub(seq);
        if back <= MAX_MISORDER {
            let i = back - 1;
            if i < 64 && self.history & (1 << i) != 0 {
                self.stats.duplicated += 1;
                return Pushed::Duplicate;
            }
            self.stats.late += 1;
            return Pushed::Late;
        }
        // A big jump: a restarted sequence if the next packet follows it.
        if self.bad_seq == Some(seq) {
            self.bad_seq = None;
            return self.new_stream(ssrc, seq, ts, pt, payload, now);
        }
        self.bad_seq = Some(seq.wrapping_add(1));
        self.stats.late += 1;
        Pushed::Late
    }

    fn new_stream(
        &mut self,
        ssrc: u32,
        seq: u16,
        ts: Option<u32>,
        pt: u8,
        payload: &[u8],
        now: Instant,
    ) -> Pushed {
        self.stats.restarts += 1;
        self.stats.received += 1;
        let due = now + self.delay;
        self.fill(STASH, seq, ts.unwrap_or(0), pt, payload, due);
        self.pending = Pending::NewStream { ssrc };
        // The new stream's timing starts from this packet.
        self.anchor = ts.map(|ts| (now, ts));
        Pushed::Buffered
    }

    /// Put a packet in ring slot `i` or, with [`STASH`], in the stash.
    fn fill(&mut self, i: usize, seq: u16, ts: u32, pt: u8, payload: &[u8], due: Instant) {
        let len = self.data.put(i, payload, &self.slots, &self.stash);
        let s = if i == STASH {
            &mut self.stash
        } else {
            &mut self.slots[i]
        };
        *s = Slot {
            used: true,
            seq,
            ts,
            pt,
            len,
            due,
        };
    }

    fn store(
        &mut self,
        d: u16,
        seq: u16,
        ts: Option<u32>,
        pt: u8,
        payload: &[u8],
        now: Instant,
    ) -> Pushed {
        if d + 1 < self.span {
            self.stats.reordered += 1;
        }
        let due = self.due(ts, now);
        self.fill(Self::index(seq), seq, ts.unwrap_or(0), pt, payload, due);
        self.span = self.span.max(d + 1);
        self.depth += 1;
        self.stats.received += 1;
        self.stats.max_depth = self.stats.max_depth.max(self.depth as u64);
        Pushed::Buffered
    }

    /// Make room for the stash without anyone to hand packets to: the old
    /// packets in the way are skipped (reported as lost with the next release).
    fn settle_pending(&mut self) {
        match self.pending {
            Pending::None => {}
            Pending::NewStream { ssrc } => {
                for s in self.slots.iter_mut() {
                    s.used = false;
                }
                self.stats.overflowed += self.depth as u64;
                self.depth = 0;
                self.start_from_stash(ssrc);
            }
            Pending::Overflow => {
                while self.stash.seq.wrapping_sub(self.next) as usize >= CAPACITY {
                    let i = Self::index(self.next);
                    if self.slots[i].used {
                        self.slots[i].used = false;
                        self.depth -= 1;
                        self.stats.overflowed += 1;
                    }
                    self.advance(1, false);
                    self.carry_lost = self.carry_lost.saturating_add(1);
                }
                self.stash_into_ring();
            }
        }
    }

    fn start_from_stash(&mut self, ssrc: u32) {
        self.ssrc = Some(ssrc);
        self.next = self.stash.seq;
        self.span = 0;
        self.history = 0;
        self.carry_lost = 0;
        self.stash_into_ring();
    }

    fn stash_into_ring(&mut self) {
        let d = self.stash.seq.wrapping_sub(self.next);
        let i = Self::index(self.stash.seq);
        self.data.copy(STASH, i, self.stash.len);
        self.slots[i] = self.stash;
        self.stash.used = false;
        self.span = self.span.max(d + 1);
        self.depth += 1;
        self.stats.max_depth = self.stats.max_depth.max(self.depth as u64);
        self.pending = Pending::None;
    }

    /// Move `next` on by `n` slots, the last of which was received if `got`.
    fn advance(&mut self, n: u16, got: bool) {
        self.history = if n >= 64 { 0 } else { self.history << n };
        if got {
            self.history |= 1;
        }
        self.next = self.next.wrapping_add(n);
        self.span = self.span.saturating_sub(n);
    }

    /// The next packet due at `now`, in sequence order, with the number of
    /// frames missing before it. Call until None after every push and timeout.
    pub(crate) fn pop(&mut self, now: Instant) -> Option<Released<'_>> {
        let (i, lost) = self.next_release(now)?;
        let s = &self.slots[i];
        Some(Released {
            lost,
            seq: s.seq,
            timestamp: s.ts,
            pt: s.pt,
            payload: self.data.get(i, s.len),
        })
    }

    fn next_release(&mut self, now: Instant) -> Option<(usize, u16)> {
        let forced = match self.pending {
            Pending::None => false,
            Pending::NewStream { ssrc } => {
                if self.depth == 0 {
                    self.start_from_stash(ssrc);
                    false
                } else {
                    true
                }
            }
            Pending::Overflow => {
                if (self.stash.seq.wrapping_sub(self.next) as usize) < CAPACITY {
                    self.stash_into_ring();
                    false
                } else if self.depth == 0 {
                    // Nothing in the way but a gap wider than the ring.
                    let gap = self.stash.seq.wrapping_sub(self.next) - (CAPACITY as u16 - 1);
                    self.advance(gap, false);
                    self.carry_lost = self.carry_lost.saturating_add(gap);
                    self.stash_into_ring();
                    false
                } else {
                    true
                }
            }
        };
        if self.depth == 0 {
            return None;
        }
        let o =
            (0..self.span).find(|&o| self.slots[Self::index(self.next.wrapping_add(o))].used)?;
        let i = Self::index(self.next.wrapping_add(o));
        if !forced && self.slots[i].due > now {
            return None;
        }
        if forced && self.slots[i].due > now && self.pending == Pending::Overflow {
            self.stats.overflowed += 1;
        }
        self.slots[i].used = false;
        self.depth -= 1;
        self.advance(o + 1, true);
        let lost = o.saturating_add(std::mem::take(&mut self.carry_lost));
        self.stats.lost += lost as u64;
        Some((i, lost))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A buffer with the default delay at 8 kHz, and its clock's zero.
    fn jb() -> (JitterBuffer, Instant) {
        let t0 = Instant::now();
        (JitterBuffer::new(DEFAULT_DELAY, 8000, 160, t0), t0)
    }

    fn push(jb: &mut JitterBuffer, seq: u16, at: Instant) -> Pushed {
        push_ssrc(jb, 7, seq, at)
    }

    fn push_ssrc(jb: &mut JitterBuffer, ssrc: u32, seq: u16, at: Instant) -> Pushed {
        jb.push(ssrc, seq, Some(seq as u32 * 160), 0, &seq.to_be_bytes(), at)
    }

    /// Everything released at `now`: (lost, seq).
    fn drain(jb: &mut JitterBuffer, now: Instant) -> Vec<(u16, u16)> {
        let mut out = vec![];
        while let Some(p) = jb.pop(now) {
            assert_eq!(p.payload, p.seq.to_be_bytes());
            out.push((p.lost, p.seq));
        }
        out
    }

    #[test]
    fn holds_for_the_delay_then_releases_in_order() {
        let (mut jb, t0) = jb();
        assert_eq!(push(&mut jb, 10, t0), Pushed::Buffered);
        assert_eq!(jb.poll_timeout(), Some(t0 + 60 * MS));
        assert!(drain(&mut jb, t0 + 59 * MS).is_empty());
        assert_eq!(drain(&mut jb, t0 + 60 * MS), [(0, 10)]);
        assert_eq!(jb.poll_timeout(), None);
    }

    #[test]
    fn reordering_is_fixed() {
        let (mut jb, t0) = jb();
        // 1 2 4 3 5: 3 arrives 20 ms late, well within the delay.
        for (k, seq) in [1u16, 2, 4, 3, 5].into_iter().enumerate() {
            push(&mut jb, seq, t0 + 20 * k as u32 * MS);
        }
        let out = drain(&mut jb, t0 + 500 * MS);
        assert_eq!(out, [(0, 1), (0, 2), (0, 3), (0, 4), (0, 5)]);
        let st = jb.stats();
        assert_eq!((st.reordered, st.lost, st.late, st.received), (1, 0, 0, 5));
    }

    #[test]
    fn sequence_wraps_at_65535() {
        let (mut jb, t0) = jb();
        let seqs = [65533u16, 65534, 0, 65535, 1, 2];
        let mut out = vec![];
        for (k, &seq) in seqs.iter().enumerate() {
            let at = t0 + 20 * k as u32 * MS;
            // Timestamps continue across the wrap.
            let ts = (seq.wrapping_sub(65533) as u32) * 160;
            jb.push(7, seq, Some(ts), 0, &seq.to_be_bytes(), at);
            out.extend(drain(&mut jb, at));
        }
        out.extend(drain(&mut jb, t0 + 1000 * MS));
        assert_eq!(
            out.iter().map(|p| p.1).collect::<Vec<_>>(),
            [65533, 65534, 65535, 0, 1, 2]
        );
        assert!(out.iter().all(|p| p.0 == 0));
        assert_eq!(jb.stats().lost, 0);
    }

    #[test]
    fn duplicates_before_and_after_playout_are_dropped() {
        let (mut jb, t0) = jb();
        push(&mut jb, 1, t0);
        assert_eq!(push(&mut jb, 1, t0 + MS), Pushed::Duplicate);
        assert_eq!(drain(&mut jb, t0 + 100 * MS), [(0, 1)]);
        assert_eq!(push(&mut jb, 1, t0 + 101 * MS), Pushed::Duplicate);
        assert_eq!(jb.stats().duplicated, 2);
        assert_eq!(jb.stats().late, 0);
    }

    #[test]
    fn late_packet_is_dropped_and_its_gap_reported_lost() {
        let (mut jb, t0) = jb();
        push(&mut jb, 1, t0);
        push(&mut jb, 3, t0 + 40 * MS);
        assert_eq!(drain(&mut jb, t0 + 60 * MS), [(0, 1)]);
        // 2 never came by 3's playout time: 3 leaves, reporting one lost frame.
        assert_eq!(drain(&mut jb, t0 + 100 * MS), [(1, 3)]);
        assert_eq!(push(&mut jb, 2, t0 + 120 * MS), Pushed::Late);
        let st = jb.stats();
        assert_eq!((st.late, st.lost, st.received), (1, 1, 2));
    }

    #[test]
    fn loss_is_reported_as_frames_to_conceal() {
        let (mut jb, t0) = jb();
        let mut out = vec![];
        for seq in [0u16, 1, 2, 6, 7, 8] {
            let at = t0 + 20 * seq as u32 * MS;
            push(&mut jb, seq, at);
            out.extend(drain(&mut jb, at));
        }
        out.extend(drain(&mut jb, t0 + 1000 * MS));
        assert_eq!(out, [(0, 0), (0, 1), (0, 2), (3, 6), (0, 7), (0, 8)]);
        assert_eq!(jb.stats().lost, 3);
    }

    #[test]
    fn ssrc_change_flushes_the_old_stream_and_restarts() {
        let (mut jb, t0) = jb();
        push_ssrc(&mut jb, 1, 100, t0);
        push_ssrc(&mut jb, 1, 101, t0 + 20 * MS);
        // New source mid-way: the old packets leave at once, in order, then
        // the new stream plays with its own sequence and timing.
        assert_eq!(push_ssrc(&mut jb, 2, 9000, t0 + 30 * MS), Pushed::Buffered);
        assert_eq!(drain(&mut jb, t0 + 30 * MS), [(0, 100), (0, 101)]);
        assert_eq!(drain(&mut jb, t0 + 89 * MS), []);
        assert_eq!(drain(&mut jb, t0 + 90 * MS), [(0, 9000)]);
        push_ssrc(&mut jb, 2, 9001, t0 + 50 * MS);
        assert_eq!(drain(&mut jb, t0 + 200 * MS), [(0, 9001)]);
        let st = jb.stats();
        assert_eq!((st.restarts, st.lost, st.received), (1, 0, 4));
    }

    #[test]
    fn sequence_restart_needs_confirmation() {
        let (mut jb, t0) = jb();
        push(&mut jb, 10, t0);
        assert_eq!(drain(&mut jb, t0 + 100 * MS), [(0, 10)]);
        assert_eq!(push(&mut jb, 30_000, t0 + 120 * MS), Pushed::Late);
        assert_eq!(push(&mut jb, 30_001, t0 + 140 * MS), Pushed::Buffered);
        assert_eq!(drain(&mut jb, t0 + 300 * MS), [(0, 30_001)]);
        assert_eq!(jb.stats().restarts, 1);
    }

    #[test]
    fn capacity_overflow_releases_the_oldest_early() {
        let (mut jb, t0) = jb();
        // A burst of 40 packets at one instant: the ring takes 32.
        let mut out = vec![];
        for seq in 0..40u16 {
            push(&mut jb, seq, t0);
            out.extend(drain(&mut jb, t0));
        }
        assert!(jb.depth() <= CAPACITY);
        assert_eq!(out.len(), 8, "{out:?}");
        out.extend(drain(&mut jb, t0 + 2000 * MS));
        assert_eq!(
            out,
            (0..40u16).map(|s| (0, s)).collect::<Vec<_>>(),
            "nothing lost, order kept"
        );
        let st = jb.stats();
        assert_eq!((st.overflowed, st.lost, st.max_depth), (8, 0, 32));
        // Without pops in between, the packets in the way are skipped, and
        // reported lost with the next one released.
        for seq in 40..80u16 {
            push(&mut jb, seq, t0 + 3000 * MS);
        }
        let out = drain(&mut jb, t0 + 9000 * MS);
        assert_eq!(out.first(), Some(&(7, 47)));
        assert_eq!(out.len(), 33);
        assert_eq!(out.last(), Some(&(0, 79)));
    }

    #[test]
    fn gap_wider_than_the_ring_is_reported() {
        let (mut jb, t0) = jb();
        push(&mut jb, 0, t0);
        assert_eq!(drain(&mut jb, t0 + 60 * MS), [(0, 0)]);
        push(&mut jb, 100, t0 + 2000 * MS);
        assert_eq!(drain(&mut jb, t0 + 2060 * MS), [(99, 100)]);
        assert_eq!(jb.stats().lost, 99);
    }

    #[test]
    fn untimed_packets_keep_their_slot_and_stall_resyncs_the_clock() {
        let (mut jb, t0) = jb();
        push(&mut jb, 0, t0);
        jb.push(7, 1, None, 101, &[1, 2], t0 + 20 * MS);
        push(&mut jb, 2, t0 + 40 * MS);
        let pts: Vec<_> =
            std::iter::from_fn(|| jb.pop(t0 + 200 * MS).map(|p| (p.lost, p.pt))).collect();
        assert_eq!(pts, [(0, 0), (0, 101), (0, 0)]);
        // 1 s stall, the buffer empty: the next packet gets the full delay again.
        push(&mut jb, 3, t0 + 1060 * MS);
        assert_eq!(jb.poll_timeout(), Some(t0 + 1120 * MS));
    }

    #[test]
    fn reset_forgets_the_stream_without_reporting_a_gap() {
        let (mut jb, t0) = jb();
        push(&mut jb, 1, t0);
        push(&mut jb, 2, t0);
        jb.reset();
        assert_eq!(jb.depth(), 0);
        push(&mut jb, 500, t0 + 5000 * MS);
        assert_eq!(drain(&mut jb, t0 + 6000 * MS), [(0, 500)]);
    }

    #[test]
    fn slots_are_sized_by_the_call_and_grow_once_for_longer_packets() {
        let (mut jb, t0) = jb();
        assert_eq!(jb.data.cell, 160);
        let g711 = |seq: u16| [seq as u8; 160];
        for seq in 0..3u16 {
            jb.push(7, seq, Some(seq as u32 * 160), 0, &g711(seq), t0);
        }
        // A 30 ms packet amid held 20 ms ones: one growth, the held bytes kept.
        let long = [9u8; 240];
        jb.push(7, 3, Some(480), 0, &long, t0);
        assert_eq!(jb.data.cell, 256);
        let area = jb.data.bytes.as_ptr();
        for seq in 4..40u16 {
            jb.push(
                7,
                seq,
                Some(seq as u32 * 160),
                0,
                &long,
                t0 + 20 * seq as u32 * MS,
            );
            while jb.pop(t0 + 20 * seq as u32 * MS).is_some() {}
        }
        assert_eq!(
            jb.data.bytes.as_ptr(),
            area,
            "no reallocation in steady state"
        );
        let mut jb2 = JitterBuffer::new(DEFAULT_DELAY, 8000, 160, t0);
        for seq in 0..3u16 {
            jb2.push(7, seq, Some(seq as u32 * 160), 0, &g711(seq), t0);
        }
        jb2.push(7, 3, Some(480), 0, &long, t0);
        let out: Vec<Vec<u8>> =
            std::iter::from_fn(|| jb2.pop(t0 + 500 * MS).map(|p| p.payload.to_vec())).collect();
        assert_eq!(
            out,
            [
                g711(0).to_vec(),
                g711(1).to_vec(),
                g711(2).to_vec(),
                long.to_vec()
            ]
        );
        // Past the cap: truncated to it, as before.
        jb2.push(7, 4, Some(640), 0, &[1u8; 3000], t0 + 600 * MS);
        assert_eq!(jb2.data.cell, MAX_PAYLOAD);
        assert_eq!(
            jb2.pop(t0 + 2000 * MS).map(|p| p.payload.len()),
            Some(MAX_PAYLOAD)
        );
    }

    #[test]
    fn a_stashed_packet_survives_growth_and_the_move_into_the_ring() {
        let (mut jb, t0) = jb();
        push_ssrc(&mut jb, 1, 100, t0);
        // New stream, its first packet waiting in the stash, then a longer packet grows the area.
        jb.push(2, 9000, Some(0), 0, &[5u8; 100], t0 + 10 * MS);
        assert_eq!(drain(&mut jb, t0 + 10 * MS), [(0, 100)]);
        jb.push(2, 9001, Some(160), 0, &[6u8; 700], t0 + 20 * MS);
        assert_eq!(jb.data.cell, 1024);
        let out: Vec<(u16, Vec<u8>)> =
            std::iter::from_fn(|| jb.pop(t0 + 500 * MS).map(|p| (p.seq, p.payload.to_vec())))
                .collect();
        assert_eq!(out, [(9000, vec![5u8; 100]), (9001, vec![6u8; 700])]);
    }

    #[test]
    fn random_input_never_panics() {
        let (mut jb, t0) = jb();
        let mut rng = fastrand::Rng::with_seed(5);
        let mut now = t0;
        for _ in 0..50_000 {
            now += Duration::from_micros(rng.u64(..30_000));
            let seq = if rng.bool() {
                rng.u16(..)
            } else {
                rng.u16(0..40)
            };
            let len = rng.usize(..2000);
            let payload = vec![0u8; len];
            jb.push(rng.u32(0..3), seq, Some(rng.u32(..)), 0, &payload, now);
            while let Some(p) = jb.pop(now) {
                assert!(p.payload.len() <= MAX_PAYLOAD);
            }
            assert!(jb.depth() <= CAPACITY);
        }
    }
}
