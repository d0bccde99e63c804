//! Locating SIP servers (RFC 3263 §4) for the requests emonav starts outside
//! a dialog (its REGISTERs): a URI's host becomes an ordered list of
//! addresses to try, the next one used when the one before times out or
//! answers 503 (§4.3).
//!
//! - An IP literal is used as is; a name with a port is looked up with
//!   A/AAAA only (§4.2).
//! - A name without a port: NAPTR records (RFC 3403) whose service is the
//!   transport we send on (`SIP+D2U`, `SIP+D2T`, `SIPS+D2T`), lowest order
//!   and preference first, give the SRV name; without them the SRV name is
//!   `_sip._udp`/`_sip._tcp`/`_sips._tcp` + the host (§4.1). The transport
//!   itself is the URI's (`;transport=`, `sips:`), never changed by DNS:
//!   our Contact already names it.
//! - SRV records (RFC 2782) in priority order, weighted-random within a
//!   priority; each target's A/AAAA addresses with the record's port. No SRV
//!   record: the host's A/AAAA addresses on the default port (§4.2).
//!
//! Lookups go through `hickory-resolver` (docs/dependencies.md), to the
//! system's servers or `[sip] dns_servers`; only the ordering is ours.

use std::net::{IpAddr, SocketAddr};

use emonav_sip::message::Uri;
use emonav_sip::transport::Transport;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;

/// What to locate: a URI's host, port and the transport we send on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Locate {
    /// Host name or IP literal (without brackets).
    pub(crate) host: String,
    /// The URI's port, if it has one.
    pub(crate) port: Option<u16>,
    /// The transport.
    pub(crate) transport: Transport,
}

impl Locate {
    /// The target of `uri`, sent to over `transport`.
    pub(crate) fn of(uri: &Uri, transport: Transport) -> Self {
        Self {
            host: uri
                .host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port: uri.port,
            transport,
        }
    }

    fn default_port(&self) -> u16 {
        if self.transport == Transport::Tls {
            5061
        } else {
            5060
        }
    }

    /// The address when the host is an IP literal: no lookup needed.
    pub(crate) fn literal(&self) -> Option<SocketAddr> {
        let ip: IpAddr = self.host.parse().ok()?;
        Some(SocketAddr::new(
            ip,
            self.port.unwrap_or(self.default_port()),
        ))
    }

    /// The NAPTR service for our transport (RFC 3263 §4.1).
    fn naptr_service(&self) -> &'static str {
        match self.transport {
            Transport::Udp => "SIP+D2U",
            Transport::Tcp => "SIP+D2T",
            Transport::Tls => "SIPS+D2T",
        }
    }

    /// The SRV name without NAPTR (RFC 3263 §4.1).
    fn srv_name(&self) -> String {
        let prefix = match self.transport {
            Transport::Udp => "_sip._udp",
            Transport::Tcp => "_sip._tcp",
            Transport::Tls => "_sips._tcp",
        };
        format!("{prefix}.{}", fqdn(&self.host))
    }
}

impl std::fmt::Display for Locate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write!(f, ";transport={}", self.transport)
    }
}

/// Absolute: a name is never tried under the search domains.
fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

/// One SRV record: priority, weight, port, target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Srv {
    pub(crate) priority: u16,
    pub(crate) weight: u16,
    pub(crate) port: u16,
    pub(crate) target: String,
}

/// RFC 2782's order: priorities ascending; within one, repeatedly pick a
/// record with probability proportional to its weight (zero-weight records
/// get a small chance, first in line as the RFC places them). `pick(total)`
/// returns a number in `0..=total`.
pub(crate) fn order_srv(mut records: Vec<Srv>, mut pick: impl FnMut(u32) -> u32) -> Vec<Srv> {
    records.sort_by_key(|r| (r.priority, r.weight != 0));
    let mut out = Vec::with_capacity(records.len());
    while !records.is_empty() {
        let prio = records[0].priority;
        let end = records.iter().take_while(|r| r.priority == prio).count();
        let mut group: Vec<Srv> = records.drain(..end).collect();
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
            let n = pick(total);
            let mut running = 0;
            let i = group
                .iter()
                .position(|r| {
                    running += u32::from(r.weight);
                    running >= n
                })
                .unwrap_or(0);
            out.push(group.remove(i));
        }
    }
    out
}

/// Why a resolver could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up DNS resolution: {0}")]
pub(crate) struct LocateError(String);

/// The edge's resolver.
#[derive(Clone)]
pub(crate) struct Locator {
    resolver: TokioResolver,
}

impl std::fmt::Debug for Locator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locator").finish_non_exhaustive()
    }
}

impl Locator {
    /// Resolve through `servers` (address and port each), or the system's
    /// (`/etc/resolv.conf`) when empty.
    pub(crate) fn new(servers: &[SocketAddr]) -> Result<Self, LocateError> {
        let err = |e: &dyn std::fmt::Display| LocateError(e.to_string());
        let builder = if servers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| err(&e))?
        } else {
            let ns = servers
                .iter()
                .map(|s| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = s.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = s.port();
                    NameServerConfig::new(s.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(ns),
                TokioRuntimeProvider::default(),
            )
        };
        Ok(Self {
            resolver: builder.build().map_err(|e| err(&e))?,
        })
    }

    /// The addresses to try for `t`, in order (empty: nothing found).
    pub(crate) async fn locate(&self, t: &Locate) -> Vec<SocketAddr> {
        if let Some(a) = t.literal() {
            return vec![a];
        }
        if let Some(port) = t.port {
            return self.addresses(&t.host, port).await;
        }
        let srv_name = self.naptr(t).await.unwrap_or_else(|| t.srv_name());
        let records = self.srv(&srv_name).await;
        if records.is_empty() {
            return self.addresses(&t.host, t.default_port()).await;
        }
        let mut out = Vec::new();
        for r in order_srv(records, |total| fastrand::u32(0..=total)) {
            for a in self.addresses(&r.target, r.port).await {
                if !out.contains(&a) {
                    out.push(a);
                }
            }
        }
        out
    }

    /// The SRV name the host's NAPTR records give for our transport.
    async fn naptr(&self, t: &Locate) -> Option<String> {
        let lookup = self
            .resolver
            .lookup(fqdn(&t.host), RecordType::NAPTR)
            .await
            .ok()?;
        let mut rules: Vec<(u16, u16, String)> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::NAPTR(n)
                    if n.flags.eq_ignore_ascii_case(b"s")
                        && n.services
                            .eq_ignore_ascii_case(t.naptr_service().as_bytes()) =>
                {
                    Some((n.order, n.preference, n.replacement.to_string()))
                }
                _ => None,
            })
            .collect();
        rules.sort();
        rules.into_iter().next().map(|(_, _, name)| name)
    }

    async fn srv(&self, name: &str) -> Vec<Srv> {
        let Ok(lookup) = self.resolver.lookup(fqdn(name), RecordType::SRV).await else {
            return Vec::new();
        };
        lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => Some(Srv {
                    priority: s.priority,
                    weight: s.weight,
                    port: s.port,
                    target: s.target.to_string(),
                }),
                _ => None,
            })
            // RFC 2782: a target of "." means the service is not offered.
            .filter(|s| s.target != ".")
            .collect()
    }

    async fn addresses(&self, host: &str, port: u16) -> Vec<SocketAddr> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return vec![SocketAddr::new(ip, port)];
        }
        match self.resolver.lookup_ip(fqdn(host)).await {
            Ok(ips) => ips.iter().map(|ip| SocketAddr::new(ip, port)).collect(),
            Err(e) => {
                tracing::debug!(%host, error = %e, "no A/AAAA records");
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srv(priority: u16, weight: u16, target: &str) -> Srv {
        Srv {
            priority,
            weight,
            port: 5060,
            target: target.into(),
        }
    }

    #[test]
    fn srv_order_is_by_priority_then_weight() {
        let records = vec![srv(20, 0, "c"), srv(10, 1, "a"), srv(10, 99, "b")];
        // Always the first candidate: a, then b (priority 10), then c.
        let names = |v: Vec<Srv>| v.into_iter().map(|s| s.target).collect::<Vec<_>>();
        assert_eq!(names(order_srv(records.clone(), |_| 0)), ["a", "b", "c"]);
        // The heaviest share of the weight: b first.
        assert_eq!(names(order_srv(records.clone(), |t| t)), ["b", "a", "c"]);
        // Over many draws b (weight 99) leads about 99 % of the time.
        let mut rng = fastrand::Rng::with_seed(7);
        let b_first = (0..1000)
            .filter(|_| order_srv(records.clone(), |t| rng.u32(0..=t))[0].target == "b")
            .count();
        assert!((950..=1000).contains(&b_first), "{b_first}");
    }

    #[test]
    fn targets_of_uris() {
        let t = Locate::of(&Uri::parse("sip:pbx.example.com").unwrap(), Transport::Udp);
        assert_eq!(t.literal(), None);
        assert_eq!(t.srv_name(), "_sip._udp.pbx.example.com.");
        let t = Locate::of(&Uri::parse("sip:192.0.2.1").unwrap(), Transport::Tls);
        assert_eq!(t.literal(), Some("192.0.2.1:5061".parse().unwrap()));
        assert_eq!(t.naptr_service(), "SIPS+D2T");
        let t = Locate::of(
            &Uri::parse("sip:[2001:db8::1]:5070").unwrap(),
            Transport::Udp,
        );
        assert_eq!(t.literal(), Some("[2001:db8::1]:5070".parse().unwrap()));
    }
}
