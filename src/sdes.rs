//! SDP Security Descriptions for media streams (RFC 4568, "SDES"): the
//! `a=crypto` attribute that carries an SRTP master key and salt (RFC 3711
//! §8.2) in the offer and in our answer.
//!
//! Only what emonav's SRTP context can honour is accepted (§6.3.2: the
//! answerer picks one offered line it supports): the AES_CM_128 suites with
//! one inline key, no MKI and no session parameters. Anything else is
//! skipped, so the offer's next line (or a 488) decides.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// Master key (16 bytes) and master salt (14 bytes) of the AES_CM_128
/// suites, concatenated as the inline key carries them (RFC 4568 §6.1).
pub(crate) const MASTER_LEN: usize = 30;

/// The crypto suites of RFC 4568 §6.2 we support (RFC 3711 §5: AES counter
/// mode, 128-bit key, HMAC-SHA1 authentication with an 80- or 32-bit tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    /// `AES_CM_128_HMAC_SHA1_80` (RFC 4568 §6.2.1), the default of RFC 3711.
    AesCm128HmacSha1_80,
    /// `AES_CM_128_HMAC_SHA1_32` (RFC 4568 §6.2.2): 32-bit SRTP tag, SRTCP keeps 80.
    AesCm128HmacSha1_32,
}

impl Suite {
    /// The suite's name in `a=crypto`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Suite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Suite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32]
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
    }
}

/// An SRTP master key and salt. Never shown by `Debug`: keys must not reach logs.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey([u8; MASTER_LEN]);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// A fresh key and salt from the operating system's CSPRNG (RFC 4568
    /// §6.1 and RFC 3711 §8.2 want them unpredictable; `fastrand` is not).
    pub(crate) fn random() -> Result<Self, getrandom::Error> {
        let mut k = [0; MASTER_LEN];
        getrandom::fill(&mut k)?;
        Ok(MasterKey(k))
    }

    /// A key from its bytes (tests, fuzzing).
    pub(crate) fn from_bytes(k: [u8; MASTER_LEN]) -> Self {
        MasterKey(k)
    }

    /// Key then salt, as libsrtp takes them.
    pub(crate) fn as_bytes(&self) -> &[u8; MASTER_LEN] {
        &self.0
    }
}

/// One usable `a=crypto` line (RFC 4568 §9.1 grammar).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crypto {
    /// The line's tag, echoed in the answer (§6.1).
    pub tag: u32,
    /// The crypto suite.
    pub suite: Suite,
    /// The sender's master key and salt.
    pub key: MasterKey,
}

/// Parse the value of `a=crypto:` (`<tag> <suite> <key-params> [<session-params>]`);
/// `None` when it is malformed or asks for something we do not do.
pub(crate) fn parse(value: &str) -> Option<Crypto> {
    let mut f = value.split_ascii_whitespace();
    let tag = f
        .next()?
        .parse::<u32>()
        .ok()
        .filter(|t| *t <= 999_999_999)?;
    let suite = Suite::parse(f.next()?)?;
    let key_params = f.next()?;
    // Session parameters (§6.3: UNENCRYPTED_SRTP, KDR, FEC_ORDER, …) change
    // the transform; libsrtp's defaults are what we run, so refuse the line.
    if f.next().is_some() {
        return None;
    }
    // Several keys (`;`-separated) only make sense with MKIs.
    if key_params.contains(';') {
        return None;
    }
    let inline = key_params.strip_prefix("inline:")?;
    let mut parts = inline.split('|');
    let key = parts.next()?;
    for p in parts {
        // A lifetime (`2^31` or decimal) is allowed and left to libsrtp's
        // own key-usage limits; an MKI (`1:4`) is not supported.
        if p.contains(':') || p.is_empty() {
            return None;
        }
    }
    let bytes = STANDARD.decode(key).ok()?;
    let key: [u8; MASTER_LEN] = bytes.try_into().ok()?;
    Some(Crypto {
        tag,
        suite,
        key: MasterKey(key),
    })
}

/// The `a=crypto` line of our answer (without `a=` and the line end).
pub(crate) fn format(c: &Crypto) -> String {
    format!(
        "crypto:{} {} inline:{}",
        c.tag,
        c.suite.name(),
        STANDARD.encode(c.key.0)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4568 §9.1's example key-params.
    const KEY: &str = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";

    #[test]
    fn the_rfc_example_and_its_variants() {
        let c = parse(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|2^20")).unwrap();
        assert_eq!((c.tag, c.suite), (1, Suite::AesCm128HmacSha1_80));
        let c = parse(&format!("7 aes_cm_128_hmac_sha1_32 inline:{KEY}")).unwrap();
        assert_eq!((c.tag, c.suite), (7, Suite::AesCm128HmacSha1_32));
        assert_eq!(
            format(&c),
            format!("crypto:7 AES_CM_128_HMAC_SHA1_32 inline:{KEY}")
        );
    }

    #[test]
    fn what_we_cannot_honour_is_skipped() {
        for v in [
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|2^20|1:4"), // MKI
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY};inline:{KEY}"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY} UNENCRYPTED_SRTP"),
            format!("1 AES_256_CM_HMAC_SHA1_80 inline:{KEY}"),
            format!("1 F8_128_HMAC_SHA1_80 inline:{KEY}"),
            "1 AES_CM_128_HMAC_SHA1_80 inline:c2hvcnQ=".into(), // 5 bytes
            "1 AES_CM_128_HMAC_SHA1_80 inline:!!!".into(),
            "x AES_CM_128_HMAC_SHA1_80 inline:".into(),
            "1 AES_CM_128_HMAC_SHA1_80".into(),
            String::new(),
        ] {
            assert_eq!(parse(&v), None, "{v}");
        }
    }

    #[test]
    fn keys_are_random_and_never_printed() {
        let (a, b) = (MasterKey::random().unwrap(), MasterKey::random().unwrap());
        assert_ne!(a, b);
        assert_eq!(format!("{a:?}"), "MasterKey(..)");
    }
}
