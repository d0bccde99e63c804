//! ITU-T G.711 μ-law and A-law, by the reference algorithm (G.191's
//! `g711.c`, as in RFC 3551 §4.5.14). Decoding goes through 256-entry tables
//! built at compile time; encoding is the segment search (only tests and
//! fixture tools encode).

const fn ulaw_decode(u: u8) -> i16 {
    let u = !u;
    let t = (((u & 0x0f) as i32) << 3) + 0x84;
    let t = t << ((u & 0x70) >> 4);
    (if u & 0x80 != 0 { 0x84 - t } else { t - 0x84 }) as i16
}

const fn alaw_decode(a: u8) -> i16 {
    let a = a ^ 0x55;
    let mut t = ((a & 0x0f) as i32) << 4;
    let seg = ((a & 0x70) >> 4) as i32;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

const fn table(alaw: bool) -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = if alaw {
            alaw_decode(i as u8)
        } else {
            ulaw_decode(i as u8)
        };
        i += 1;
    }
    t
}

static ULAW: [i16; 256] = table(false);
static ALAW: [i16; 256] = table(true);

/// Decode μ-law bytes into `out` (same length; extra output is left untouched).
pub fn decode_ulaw(input: &[u8], out: &mut [i16]) {
    for (o, &b) in out.iter_mut().zip(input) {
        *o = ULAW[b as usize];
    }
}

/// Decode A-law bytes into `out` (same length; extra output is left untouched).
pub fn decode_alaw(input: &[u8], out: &mut [i16]) {
    for (o, &b) in out.iter_mut().zip(input) {
        *o = ALAW[b as usize];
    }
}

fn segment(v: i32, ends: &[i32; 8]) -> usize {
    ends.iter().position(|&e| v <= e).unwrap_or(8)
}

fn ulaw_encode(pcm: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const ENDS: [i32; 8] = [0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF, 0x3FFF, 0x7FFF];
    // The reference works on 14-bit magnitudes.
    let mut v = (pcm as i32) >> 2;
    let mask = if v < 0 {
        v = -v;
        0x7F
    } else {
        0xFF
    };
    let v = (v.min(8159)) + (BIAS >> 2);
    let seg = segment(v, &ENDS.map(|e| e >> 2));
    if seg >= 8 {
        return (0x7F ^ mask) as u8;
    }
    let u = ((seg as i32) << 4) | ((v >> (seg + 1)) & 0xF);
    (u ^ mask) as u8
}

fn alaw_encode(pcm: i16) -> u8 {
    const ENDS: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];
    let mut v = (pcm as i32) >> 3;
    let mask = if v >= 0 {
        0xD5
    } else {
        v = -v - 1;
        0x55
    };
    let seg = segment(v, &ENDS);
    if seg >= 8 {
        return (0x7F ^ mask) as u8;
    }
    let mut a = (seg as i32) << 4;
    a |= if seg < 2 {
        (v >> 1) & 0xF
    } else {
        (v >> seg) & 0xF
    };
    (a ^ mask) as u8
}

/// Encode linear PCM to μ-law.
pub fn encode_ulaw(input: &[i16], out: &mut [u8]) {
    for (o, &s) in out.iter_mut().zip(input) {
        *o = ulaw_encode(s);
    }
}

/// One sample through a μ-law encoder and decoder: what a G.711 μ-law
/// line does to it. A 128 KB table built on first use: rendering a corpus
/// or a long recording spends most of this in the encoder's segment search
/// otherwise (offline only; a call decodes, it never encodes).
pub fn ulaw_round_trip(s: i16) -> i16 {
    UlawRoundTrip::get().apply(s)
}

/// [`ulaw_round_trip`] with the table fetched once, for a loop over many
/// samples (the per-sample first-use check was a third of the loop).
#[derive(Clone, Copy)]
pub struct UlawRoundTrip(&'static [i16; 65536]);

impl UlawRoundTrip {
    /// The table, built on first use.
    pub fn get() -> Self {
        static TABLE: std::sync::OnceLock<Box<[i16; 65536]>> = std::sync::OnceLock::new();
        Self(TABLE.get_or_init(|| {
            let t: Box<[i16]> = (i16::MIN..=i16::MAX)
                .map(|v| ULAW[ulaw_encode(v) as usize])
                .collect();
            t.try_into().expect("one entry per 16-bit value")
        }))
    }

    /// One sample through the encoder and decoder.
    #[inline]
    pub fn apply(self, s: i16) -> i16 {
        // Offset binary: i16::MIN is entry 0.
        self.0[(s as u16 ^ 0x8000) as usize]
    }
}

/// Encode linear PCM to A-law.
pub fn encode_alaw(input: &[i16], out: &mut [u8]) {
    for (o, &s) in out.iter_mut().zip(input) {
        *o = alaw_encode(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_reference_points() {
        // μ-law: 0xFF and 0x7F are the two zeros, 0x00 / 0x80 the extremes.
        assert_eq!(ULAW[0xFF], 0);
        assert_eq!(ULAW[0x7F], 0);
        assert_eq!(ULAW[0x00], -32124);
        assert_eq!(ULAW[0x80], 32124);
        // A-law: 0xD5 / 0x55 are the smallest magnitudes, 0xAA / 0x2A the extremes.
        assert_eq!(ALAW[0xD5], 8);
        assert_eq!(ALAW[0x55], -8);
        assert_eq!(ALAW[0xAA], 32256);
        assert_eq!(ALAW[0x2A], -32256);
    }

    #[test]
    fn every_code_round_trips() {
        for code in 0..=255u8 {
            let mut pcm = [0i16];
            let mut back = [0u8];
            decode_ulaw(&[code], &mut pcm);
            encode_ulaw(&pcm, &mut back);
            let expect = if code == 0x7F { 0xFF } else { code }; // -0 encodes as +0
            assert_eq!(
                back[0], expect,
                "μ-law {code:#04x} -> {} -> {:#04x}",
                pcm[0], back[0]
            );
            decode_alaw(&[code], &mut pcm);
            encode_alaw(&pcm, &mut back);
            assert_eq!(
                back[0], code,
                "A-law {code:#04x} -> {} -> {:#04x}",
                pcm[0], back[0]
            );
        }
    }

    #[test]
    fn decoding_is_monotonic_in_magnitude() {
        // Within each sign, larger codes (after inversion) mean larger magnitudes.
        let mags: Vec<i32> = (0x80..=0xFFu8)
            .rev()
            .map(|c| ULAW[c as usize] as i32)
            .collect();
        assert!(mags.windows(2).all(|w| w[0] < w[1]), "{mags:?}");
    }

    #[test]
    fn encoding_error_is_bounded() {
        for x in (-32768i32..=32767).step_by(7) {
            let x = x as i16;
            let (mut u, mut a, mut d) = ([0u8], [0u8], [0i16]);
            encode_ulaw(&[x], &mut u);
            decode_ulaw(&u, &mut d);
            let err = (d[0] as i32 - x as i32).abs();
            assert!(
                err <= (x as i32).abs() / 16 + 8 || err <= 1100,
                "μ {x} -> {}",
                d[0]
            );
            encode_alaw(&[x], &mut a);
            decode_alaw(&a, &mut d);
            let err = (d[0] as i32 - x as i32).abs();
            assert!(
                err <= (x as i32).abs() / 16 + 16 || err <= 1100,
                "A {x} -> {}",
                d[0]
            );
        }
    }
}
