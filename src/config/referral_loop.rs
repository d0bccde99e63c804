//! Queue URIs that would send a caller back to emonav itself.
//!
//! The caller's UA follows our REFER by sending an INVITE to the Refer-To
//! URI (RFC 3515 §2.4.2); a URI whose host and port are emonav's own SIP
//! address (RFC 3261 §19.1.2: port 5060 when absent, 5061 for sips) makes
//! the caller call emonav again, which answers, analyses and refers once
//! more, for ever. Only IP literals and `localhost` are compared: a profile
//! check does no DNS.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::Profile;
use emonav_sip::message::{Scheme, Uri};

impl Profile {
    /// One warning per queue URI (`[policy]` default queue, rules, keypad
    /// rules) that points at emonav's own SIP address.
    pub fn referral_loops(&self) -> Vec<String> {
        let p = &self.policy;
        let queues = std::iter::once(("policy.default_queue".to_string(), &p.default_queue))
            .chain(
                p.rules
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (format!("policy.rules[{i}].queue"), &r.queue)),
            )
            .chain(
                p.dtmf
                    .iter()
                    .enumerate()
                    .map(|(i, r)| (format!("policy.dtmf[{i}].queue"), &r.queue)),
            );
        queues
            .filter(|(_, q)| self.is_own_address(q))
            .map(|(key, q)| {
                format!(
                    "{key} {q} is emonav's own SIP address ({}): a caller referred there calls emonav again; point it at the PBX",
                    self.sip.listen
                )
            })
            .collect()
    }

    fn is_own_address(&self, queue: &str) -> bool {
        let Ok(uri) = Uri::parse(queue) else {
            return false;
        };
        let default_port = match uri.scheme {
            Scheme::Sip => 5060,
            Scheme::Sips => 5061,
            _ => return false,
        };
        let host = uri.host.trim_start_matches('[').trim_end_matches(']');
        let ip = if host.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            match host.parse::<IpAddr>() {
                Ok(ip) => ip,
                Err(_) => return false,
            }
        };
        let target = SocketAddr::new(ip, uri.port.unwrap_or(default_port));
        let listen = self.sip.listen;
        target.port() == listen.port()
            && (ip == listen.ip()
                || Some(ip) == self.sip.external_address
                || (listen.ip().is_unspecified() && ip.is_loopback()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loops(text: &str) -> Vec<String> {
        Profile::from_toml(text, "p").unwrap().referral_loops()
    }

    #[test]
    fn a_queue_on_emonavs_own_address_is_reported_with_its_key() {
        let w = loops(
            "[sip]\nlisten = \"127.0.0.1:5060\"\n[policy]\ndefault_queue = \"sip:q@127.0.0.1\"\n\
             [[policy.rules]]\nlabel = \"a\"\nqueue = \"sip:a@localhost:5060\"\n\
             [[policy.dtmf]]\ndigit = \"0\"\nqueue = \"sip:o@127.0.0.1:5070\"\n",
        );
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].starts_with("policy.default_queue sip:q@127.0.0.1 is emonav's own"));
        assert!(w[1].starts_with("policy.rules[0].queue"), "{w:?}");
    }

    #[test]
    fn other_hosts_ports_and_schemes_are_not_loops() {
        let none = [
            "[sip]\nlisten = \"127.0.0.1:5062\"\n[policy]\ndefault_queue = \"sip:q@127.0.0.1\"\n",
            "[policy]\ndefault_queue = \"sip:q@127.0.0.2\"\n",
            "[policy]\ndefault_queue = \"sips:q@127.0.0.1\"\n",
            "[policy]\ndefault_queue = \"tel:+4930123\"\n",
            "[policy]\ndefault_queue = \"sip:q@pbx.example.com:5060\"\n",
        ];
        for text in none {
            let text = format!(
                "{text}[[policy.rules]]\nlabel = \"a\"\nqueue = \"sip:a@127.0.0.1:5070\"\n"
            );
            assert!(loops(&text).is_empty(), "{text}");
        }
        // Listening on every address includes loopback.
        let w = loops(
            "[sip]\nlisten = \"0.0.0.0:5060\"\n[policy]\ndefault_queue = \"sip:q@127.0.0.1\"\n",
        );
        assert_eq!(w.len(), 1, "{w:?}");
    }

    #[test]
    fn the_default_profile_refers_to_a_separate_pbx_port() {
        assert!(Profile::from_toml("", "p")
            .unwrap()
            .referral_loops()
            .is_empty());
        let shipped = include_str!("../../sip-profiles/default.toml");
        assert!(Profile::from_toml(shipped, "p")
            .unwrap()
            .referral_loops()
            .is_empty());
    }
}
