//! SIP/SIPS URIs (RFC 3261 §19.1, §25.1), tel URIs (RFC 3966), name-addr
//! (§20.10, §25.1), Via (§20.42, RFC 3581) and CSeq (§20.16).

use std::fmt;

use super::{Method, ParseError};
use crate::header;

fn bad(what: &str, s: &str) -> ParseError {
    ParseError::Unparseable(format!("malformed {what}: {s:?}"))
}

/// A generic `;name[=value]` parameter list, order kept, names compared case-insensitively.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(pub Vec<(String, Option<String>)>);

impl Params {
    /// Value of a parameter: `Some(Some(v))` with value, `Some(None)` flag, `None` absent.
    pub fn get(&self, name: &str) -> Option<Option<&str>> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    /// Set (replace or append) a parameter.
    pub fn set(&mut self, name: &str, value: Option<&str>) {
        let value = value.map(str::to_owned);
        match self
            .0
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some(slot) => slot.1 = value,
            None => self.0.push((name.to_string(), value)),
        }
    }

    /// Parse `;a=b;c` (the leading `;` optional). Quoted values keep their quotes.
    fn parse(s: &str) -> Result<Params, ParseError> {
        let mut out = Vec::new();
        for part in split_unquoted(s, Some(b';')) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (name, value) = match part.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().to_string())),
                None => (part, None),
            };
            if name.is_empty() || !name.bytes().all(is_token_char) {
                return Err(bad("parameter", part));
            }
            out.push((name.to_string(), value));
        }
        Ok(Params(out))
    }
}

impl fmt::Display for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, v) in &self.0 {
            match v {
                Some(v) => write!(f, ";{n}={v}")?,
                None => write!(f, ";{n}")?,
            }
        }
        Ok(())
    }
}

/// RFC 3261 §25.1 `token` characters.
pub(super) fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// Split on `sep` (ASCII) outside double quotes and angle brackets
/// (`None`: the whole of `s`, once). An iterator rather than a `Vec`: every
/// message's Vias, parameters and list headers go through here. Bytes, not
/// chars: every byte looked for is ASCII, which no byte of a multi-byte
/// UTF-8 character is, so the pieces are the same.
pub(super) fn split_unquoted(s: &str, sep: Option<u8>) -> SplitUnquoted<'_> {
    SplitUnquoted { rest: Some(s), sep }
}

/// The pieces of [`split_unquoted`], in order.
pub(super) struct SplitUnquoted<'a> {
    rest: Option<&'a str>,
    sep: Option<u8>,
}

impl<'a> Iterator for SplitUnquoted<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let s = self.rest?;
        // A split happens only outside quotes and brackets, so each piece
        // starts in the state the whole string starts in.
        let (mut quoted, mut angle, mut escaped) = (false, false, false);
        for (i, c) in s.bytes().enumerate() {
            if escaped {
                // The escaped character may be a multi-byte one: its other
                // bytes are not ASCII and match nothing below.
                escaped = false;
                continue;
            }
            match c {
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                b'<' if !quoted => angle = true,
                b'>' if !quoted => angle = false,
                c if Some(c) == self.sep && !quoted && !angle => {
                    self.rest = Some(&s[i + 1..]);
                    return Some(&s[..i]);
                }
                _ => {}
            }
        }
        self.rest = None;
        Some(s)
    }
}

/// URI scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheme {
    /// sip:
    Sip,
    /// sips:
    Sips,
    /// tel: (RFC 3966)
    Tel,
}

/// A SIP, SIPS (RFC 3261 §19.1) or tel (RFC 3966) URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    /// Scheme.
    pub scheme: Scheme,
    /// User part (sip/sips, password included if any), or the telephone-subscriber number (tel), as on the wire.
    pub user: Option<String>,
    /// Host: domain, IPv4, or IPv6 *with* brackets (`[2001:db8::1]`). Empty for tel.
    pub host: String,
    /// Port.
    pub port: Option<u16>,
    /// `;params`.
    pub params: Params,
    /// `?headers` (e.g. `Replaces=...`), raw `name=value` pairs, still escaped.
    pub headers: Vec<(String, String)>,
}

impl Uri {
    /// Parse a URI.
    pub fn parse(s: &str) -> Result<Uri, ParseError> {
        let s = s.trim();
        let (scheme, rest) = s.split_once(':').ok_or_else(|| bad("URI", s))?;
        let scheme = [
            ("sip", Scheme::Sip),
            ("sips", Scheme::Sips),
            ("tel", Scheme::Tel),
        ]
        .into_iter()
        .find(|(name, _)| scheme.eq_ignore_ascii_case(name))
        .map(|(_, k)| k)
        .ok_or_else(|| bad("URI scheme", s))?;
        if rest.is_empty() || rest.bytes().any(|b| b <= b' ' || b == b'<' || b == b'>') {
            return Err(bad("URI", s));
        }
        if scheme == Scheme::Tel {
            let (number, params) = rest.split_once(';').unwrap_or((rest, ""));
            if number.is_empty() {
                return Err(bad("tel URI", s));
            }
            return Ok(Uri {
                scheme,
                user: Some(number.to_string()),
                host: String::new(),
                port: None,
                params: Params::parse(params)?,
                headers: Vec::new(),
            });
        }
        let (main, headers) = match rest.split_once('?') {
            Some((m, h)) => (m, parse_uri_headers(h)?),
            None => (rest, Vec::new()),
        };
        // The user part cannot hold an unescaped '@', so the first one ends it.
        let (user, hostpart) = match main.split_once('@') {
            Some((u, h)) if !u.is_empty() => (Some(u.to_string()), h),
            Some(_) => return Err(bad("URI user", s)),
            None => (None, main),
        };
        let (host, port, params) = split_hostport(hostpart).ok_or_else(|| bad("URI host", s))?;
        Ok(Uri {
            scheme,
            user,
            host: host.to_string(),
            port,
            params: Params::parse(params)?,
            headers,
        })
    }
}

fn parse_uri_headers(h: &str) -> Result<Vec<(String, String)>, ParseError> {
    h.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            if n.is_empty() {
                Err(bad("URI header", h))
            } else {
                Ok((n.to_string(), v.to_string()))
            }
        })
        .collect()
}

/// `host[:port][;params]` → (host, port, params-with-leading-';').
fn split_hostport(s: &str) -> Option<(&str, Option<u16>, &str)> {
    let (host, rest) = if s.starts_with('[') {
        let end = s.find(']')?;
        let inner = &s[1..end];
        inner.parse::<std::net::Ipv6Addr>().ok()?;
        (&s[..=end], &s[end + 1..])
    } else {
        let end = s.find([':', ';']).unwrap_or(s.len());
        (&s[..end], &s[end..])
    };
    if host.is_empty()
        || (!host.starts_with('[')
            && !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'))
    {
        return None;
    }
    let (port, params) = match rest.strip_prefix(':') {
        Some(r) => {
            let end = r.find(';').unwrap_or(r.len());
            let digits = r[..end].trim();
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (Some(digits.parse().ok()?), &r[end..])
        }
        None => (None, rest),
    };
    if !params.is_empty() && !params.starts_with(';') {
        return None;
    }
    Some((host, port, params))
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.scheme {
            Scheme::Sip => "sip:",
            Scheme::Sips => "sips:",
            Scheme::Tel => "tel:",
        })?;
        if let Some(u) = &self.user {
            f.write_str(u)?;
            if self.scheme != Scheme::Tel {
                f.write_str("@")?;
            }
        }
        f.write_str(&self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write!(f, "{}", self.params)?;
        for (i, (n, v)) in self.headers.iter().enumerate() {
            write!(f, "{}{n}={v}", if i == 0 { '?' } else { '&' })?;
        }
        Ok(())
    }
}

/// `name-addr` / `addr-spec` with header params (From, To, Contact, Refer-To, Route, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// Display name, unquoted.
    pub display: Option<String>,
    /// URI.
    pub uri: Uri,
    /// Header parameters (after `>`), e.g. `tag`.
    pub params: Params,
}

impl NameAddr {
    /// Parse one element (`"Bob" <sip:b@h>;tag=x` or `sip:b@h;tag=x`).
    pub fn parse(s: &str) -> Result<NameAddr, ParseError> {
        let s = s.trim();
        let (display, rest) = if let Some(q) = s.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, e)) = chars.next() {
                            out.push(e);
                        }
                    }
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    c => out.push(c),
                }
            }
            let end = end.ok_or_else(|| bad("display name", s))?;
            (Some(out), q[end + 1..].trim_start())
        } else if let Some(lt) = s.find('<') {
            let d = s[..lt].trim();
            ((!d.is_empty()).then(|| d.to_string()), &s[lt..])
        } else {
            (None, s)
        };
        if let Some(inner) = rest.strip_prefix('<') {
            let end = inner.find('>').ok_or_else(|| bad("name-addr", s))?;
            Ok(NameAddr {
                display,
                uri: Uri::parse(&inner[..end])?,
                params: Params::parse(&inner[end + 1..])?,
            })
        } else if display.is_some() {
            Err(bad("name-addr", s))
        } else {
            // addr-spec: URI parameters are header parameters here (§20.10).
            let (uri, params) = rest.split_once(';').unwrap_or((rest, ""));
            if uri.contains(['?', ',']) {
                return Err(bad("addr-spec", s));
            }
            Ok(NameAddr {
                display: None,
                uri: Uri::parse(uri)?,
                params: Params::parse(params)?,
            })
        }
    }

    /// The `tag` parameter.
    pub fn tag(&self) -> Option<&str> {
        self.params.get("tag").flatten()
    }
}

impl fmt::Display for NameAddr {
    /// Always written in `name-addr` form (`<uri>`), which is safe for every header.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.display {
            f.write_str("\"")?;
            for c in d.chars() {
                if c == '"' || c == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
            f.write_str("\" ")?;
        }
        write!(f, "<{}>{}", self.uri, self.params)
    }
}

/// One Via element (RFC 3261 §20.42, RFC 3581 rport).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// Transport token, upper-case (`UDP`, `TCP`, `TLS`, `WS`, …).
    pub transport: String,
    /// sent-by host (IPv6 with brackets).
    pub host: String,
    /// sent-by port.
    pub port: Option<u16>,
    /// Parameters (`branch`, `rport`, `received`, …).
    pub params: Params,
}

impl Via {
    /// Parse one Via element.
    pub fn parse(s: &str) -> Result<Via, ParseError> {
        let s = s.trim();
        // sent-protocol is "SIP / 2.0 / UDP" with optional LWS around the slashes.
        let mut rest = s;
        let mut parts = [""; 3];
        for (i, part) in parts.iter_mut().enumerate() {
            rest = rest.trim_start();
            let end = if i < 2 {
                rest.find('/').ok_or_else(|| bad(header::VIA, s))?
            } else {
                rest.find(|c: char| c.is_ascii_whitespace())
                    .ok_or_else(|| bad(header::VIA, s))?
            };
            *part = rest[..end].trim();
            rest = if i < 2 {
                &rest[end + 1..]
            } else {
                &rest[end..]
            };
        }
        if !parts[0].eq_ignore_ascii_case("SIP") || parts[1] != "2.0" || parts[2].is_empty() {
            return Err(bad("Via protocol", s));
        }
        // Copied only when there is white space to squeeze out (LWS around
        // ':' and ';' is allowed): most Vias have none but the one before sent-by.
        let rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace());
        let hostpart: std::borrow::Cow<'_, str> =
            if rest.contains(|c: char| c.is_ascii_whitespace()) {
                rest.chars()
                    .filter(|c| !c.is_ascii_whitespace())
                    .collect::<String>()
                    .into()
            } else {
                rest.into()
            };
        // Drop a trailing comment, which some old stacks add.
        let hostpart = hostpart.split('(').next().unwrap_or("");
        let (host, port, params) = split_hostport(hostpart).ok_or_else(|| bad("Via sent-by", s))?;
        Ok(Via {
            transport: parts[2].to_ascii_uppercase(),
            host: host.to_string(),
            port,
            params: Params::parse(params)?,
        })
    }

    /// The branch parameter.
    pub fn branch(&self) -> Option<&str> {
        self.params.get("branch").flatten()
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SIP/2.0/{} {}", self.transport, self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write!(f, "{}", self.params)
    }
}

/// CSeq (RFC 3261 §20.16).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    /// Sequence number (< 2^31).
    pub seq: u32,
    /// Method.
    pub method: Method,
}

impl CSeq {
    /// Parse.
    pub fn parse(s: &str) -> Result<CSeq, ParseError> {
        let mut it = s.split_ascii_whitespace();
        let (Some(num), Some(method), None) = (it.next(), it.next(), it.next()) else {
            return Err(bad(header::CSEQ, s));
        };
        let seq: u32 = num
            .parse()
            .ok()
            .filter(|n| *n < 1 << 31 && num.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| bad("CSeq number", s))?;
        if !method.bytes().all(is_token_char) {
            return Err(bad("CSeq method", s));
        }
        Ok(CSeq {
            seq,
            method: Method::from_token(method),
        })
    }
}

impl fmt::Display for CSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.seq, self.method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_uri_with_everything() {
        let u = Uri::parse(
            "sips:alice:pw@[2001:db8::1]:5061;transport=tcp;lr?Replaces=a%40b%3Bto-tag%3D1&X=y",
        )
        .unwrap();
        assert_eq!(u.scheme, Scheme::Sips);
        assert_eq!(u.user.as_deref(), Some("alice:pw"));
        assert_eq!(u.host, "[2001:db8::1]");
        assert_eq!(u.port, Some(5061));
        assert_eq!(u.params.get("transport"), Some(Some("tcp")));
        assert_eq!(u.params.get("LR"), Some(None));
        assert_eq!(
            u.headers[0],
            ("Replaces".into(), "a%40b%3Bto-tag%3D1".into())
        );
        assert_eq!(Uri::parse(&u.to_string()).unwrap(), u);
    }

    #[test]
    fn tel_uri() {
        let u = Uri::parse("tel:+49-30-123456;phone-context=example.com").unwrap();
        assert_eq!(u.scheme, Scheme::Tel);
        assert_eq!(u.user.as_deref(), Some("+49-30-123456"));
        assert_eq!(u.to_string(), "tel:+49-30-123456;phone-context=example.com");
    }

    #[test]
    fn bad_uris() {
        for s in [
            "",
            "sip:",
            "http://x",
            "sip:a@",
            "sip:h:port",
            "sip:[::1",
            "sip:a b@h",
            "sip:@h",
        ] {
            assert!(Uri::parse(s).is_err(), "{s:?} accepted");
        }
    }

    #[test]
    fn name_addr_forms() {
        let n =
            NameAddr::parse("\"Bob \\\"B\\\" Smith\" <sip:bob@h;transport=udp>;tag=a1").unwrap();
        assert_eq!(n.display.as_deref(), Some("Bob \"B\" Smith"));
        assert_eq!(n.uri.params.get("transport"), Some(Some("udp")));
        assert_eq!(n.tag(), Some("a1"));
        assert_eq!(NameAddr::parse(&n.to_string()).unwrap(), n);
        let n = NameAddr::parse("sip:bob@h;tag=xyz").unwrap();
        assert_eq!(n.tag(), Some("xyz"));
        assert!(
            n.uri.params.0.is_empty(),
            "addr-spec params belong to the header"
        );
        let n = NameAddr::parse("Anonymous <sip:a@h>").unwrap();
        assert_eq!(n.display.as_deref(), Some("Anonymous"));
    }

    #[test]
    fn via_forms() {
        let v = Via::parse(
            "SIP / 2.0 / udp  [2001:db8::9]:5070 ;branch=z9hG4bK1;rport;received=1.2.3.4",
        )
        .unwrap();
        assert_eq!(
            (v.transport.as_str(), v.host.as_str(), v.port),
            ("UDP", "[2001:db8::9]", Some(5070))
        );
        assert_eq!(v.branch(), Some("z9hG4bK1"));
        assert_eq!(v.params.get("rport"), Some(None));
        assert_eq!(Via::parse(&v.to_string()).unwrap(), v);
        assert!(Via::parse("SIP/2.0/UDP").is_err());
        assert!(Via::parse("HTTP/1.1/TCP host").is_err());
    }

    #[test]
    fn cseq_forms() {
        assert_eq!(CSeq::parse("  42   INVITE ").unwrap().seq, 42);
        assert_eq!(
            CSeq::parse("1 FOO").unwrap().method,
            Method::Other("FOO".into())
        );
        for s in [
            "",
            "x INVITE",
            "1",
            "1 INVITE extra",
            "-1 BYE",
            "2147483648 BYE",
        ] {
            assert!(CSeq::parse(s).is_err(), "{s:?} accepted");
        }
    }
}
