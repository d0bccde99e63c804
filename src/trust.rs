//! Trusted peers: the part of a trust domain (RFC 3325 §2.3, "Spec(T)")
//! that an endpoint without TLS can check, the source address of what it
//! reads. Out-of-dialog requests from outside the set are refused (`403`) or
//! dropped unanswered (src/endpoint.rs), and our RTP never goes to an
//! address outside it (src/media/session.rs), so that a spoofed INVITE can
//! neither start a call nor aim our media at a third party.
//!
//! Addresses are written as in RFC 4632 §3.1 (CIDR `prefix/length`), or a
//! plain address for one host. IPv4-mapped IPv6 sources (`::ffff:a.b.c.d`,
//! what a dual-stack socket reports) match their IPv4 entries.

use std::net::IpAddr;
use std::str::FromStr;

use serde::Deserialize;

/// An address block: `10.0.0.0/8`, `2001:db8::/32`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cidr {
    net: IpAddr,
    len: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&l| l <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0..={max}"))?,
        };
        Ok(Cidr { net, len })
    }
}

impl Cidr {
    /// Whether `ip` is in the block.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.len),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.len),
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it carries.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let (whole, rest) = (usize::from(bits / 8), bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || {
        let mask = 0xFFu8 << (8 - rest);
        a[whole] & mask == b[whole] & mask
    }
}

/// A set of address blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TrustedSet(Vec<Cidr>);

impl TrustedSet {
    /// Parse every entry; the error names the first bad one.
    pub(crate) fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        entries
            .iter()
            .map(|e| e.as_ref().parse())
            .collect::<Result<_, _>>()
            .map(TrustedSet)
    }

    /// Whether `ip` is in one of the blocks.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The union of two sets.
    pub(crate) fn union(&self, other: &TrustedSet) -> TrustedSet {
        TrustedSet(self.0.iter().chain(&other.0).copied().collect())
    }
}

/// What an out-of-dialog request from an untrusted source gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum Untrusted {
    /// `403 Forbidden` (RFC 3261 §21.4.4): a misconfigured peer sees why.
    #[default]
    #[serde(rename = "403")]
    Forbidden,
    /// Nothing: a scanner learns nothing, and a spoofed source gets no
    /// reflected response.
    #[serde(rename = "drop")]
    Drop,
}

/// `[security]`: which peers may start calls and receive our media.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// Addresses and CIDR blocks out-of-dialog requests are taken from.
    /// Empty (and `trust_registrars` off): everyone is trusted.
    pub trusted_sources: Vec<String>,
    /// Also trust the address every `[[registration]]` registrar resolved
    /// to (the one REGISTERs go to).
    pub trust_registrars: bool,
    /// What untrusted sources get: `"403"` or `"drop"`.
    pub untrusted: Untrusted,
    /// Further blocks our RTP may go to (media gateways and relays that
    /// never send SIP), when the trusted set is on.
    pub trusted_media: Vec<String>,
}

impl SecurityConfig {
    /// The trusted set is on.
    pub fn enabled(&self) -> bool {
        !self.trusted_sources.is_empty() || self.trust_registrars
    }

    /// Check the keys; `registrations` is how many `[[registration]]` the
    /// profile has.
    pub(crate) fn validate(&self, registrations: usize) -> Result<(), String> {
        TrustedSet::parse(&self.trusted_sources)
            .map_err(|e| format!("security.trusted_sources: {e}"))?;
        TrustedSet::parse(&self.trusted_media)
            .map_err(|e| format!("security.trusted_media: {e}"))?;
        if self.trust_registrars && registrations == 0 && self.trusted_sources.is_empty() {
            return Err(
                "security.trust_registrars is on but there is no [[registration]] \
                        and no trusted_sources: every request would be refused"
                    .into(),
            );
        }
        Ok(())
    }

    /// The endpoint's policy, when the set is on.
    pub(crate) fn policy(&self) -> Option<TrustPolicy> {
        self.enabled().then(|| TrustPolicy {
            sources: TrustedSet::parse(&self.trusted_sources).unwrap_or_default(),
            registrars: self.trust_registrars,
            untrusted: self.untrusted,
        })
    }

    /// Where our media may go besides the call's own signalling source,
    /// when the set is on: `trusted_sources` and `trusted_media`.
    pub(crate) fn media_set(&self) -> Option<TrustedSet> {
        self.enabled().then(|| {
            let s = TrustedSet::parse(&self.trusted_sources).unwrap_or_default();
            s.union(&TrustedSet::parse(&self.trusted_media).unwrap_or_default())
        })
    }
}

/// The endpoint's admission rule for out-of-dialog requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TrustPolicy {
    /// `trusted_sources`.
    pub sources: TrustedSet,
    /// `trust_registrars`.
    pub registrars: bool,
    /// `untrusted`.
    pub untrusted: Untrusted,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_match_by_prefix_and_mapped_v4_matches_v4() {
        let set = TrustedSet::parse(&["127.0.0.1/32", "10.1.0.0/16", "2001:db8::/33", "192.0.2.9"])
            .unwrap();
        assert!(set.contains(ip("127.0.0.1")));
        assert!(!set.contains(ip("127.0.0.2")), "/32 is one host");
        assert!(set.contains(ip("10.1.255.3")));
        assert!(!set.contains(ip("10.2.0.1")));
        assert!(set.contains(ip("2001:db8:7fff::1")));
        assert!(
            !set.contains(ip("2001:db8:8000::1")),
            "the 33rd bit differs"
        );
        assert!(set.contains(ip("192.0.2.9")));
        assert!(
            set.contains(ip("::ffff:10.1.0.7")),
            "dual-stack socket's view"
        );
        assert!(!set.contains(ip("::1")));
        let odd = TrustedSet::parse(&["172.16.0.0/12"]).unwrap();
        assert!(odd.contains(ip("172.31.255.255")));
        assert!(!odd.contains(ip("172.32.0.0")));
        let all = TrustedSet::parse(&["0.0.0.0/0"]).unwrap();
        assert!(all.contains(ip("203.0.113.1")) && !all.contains(ip("::2")));
    }

    #[test]
    fn bad_entries_are_named() {
        for (bad, needle) in [
            ("10.0.0.0/33", "0..=32"),
            ("pbx.example.com", "not an IP"),
            ("::/129", "0..=128"),
            ("10.0.0.0/x", "prefix length"),
        ] {
            let err = TrustedSet::parse(&[bad]).unwrap_err();
            assert!(err.contains(needle) && err.contains(bad), "{bad}: {err}");
        }
    }
}
