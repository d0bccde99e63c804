//! HTTP Digest authentication as a SIP client uses it: RFC 3261 §22.4 (and
//! §20.27, §20.44 for the headers), with the algorithms and `qop` rules of
//! RFC 7616 §3.3–§3.5 that RFC 8760 brings into SIP (§2.1–§2.4 there).
//!
//! - [`Challenge::parse`] reads one `WWW-Authenticate` / `Proxy-Authenticate`
//!   value; [`Challenge::parse_all`] a value that holds several challenges.
//! - [`best_challenge`] picks the one to answer from a 401 or 407.
//! - [`Authenticator`] answers one challenge: it builds the `Authorization` /
//!   `Proxy-Authorization` value and keeps the nonce count (`nc`) for its nonce.
//!
//! What is left out: `userhash` (RFC 7616 §3.4.4) and the `username*`
//! encoding (§3.4.4 as well) for non-ASCII user names, `Authentication-Info`
//! checks (`rspauth`), and answering more than one realm at a time.

use std::fmt::Write as _;

use md5::Md5;
use sha2::{Digest, Sha256, Sha512_256};

use super::message::Response;
use crate::header;

/// Why a challenge cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// The challenge uses another scheme (`Basic`, `Bearer`, …).
    #[error("authentication scheme {0:?} is not Digest")]
    NotDigest(String),
    /// A parameter without which no answer can be built is absent.
    #[error("Digest challenge without {0}")]
    Missing(&'static str),
    /// The header value does not follow the challenge grammar.
    #[error("malformed challenge: {0}")]
    Malformed(String),
    /// An `algorithm` we do not implement.
    #[error("unsupported Digest algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// A `qop` list that names neither `auth` nor `auth-int`.
    #[error("no supported qop in {0:?}")]
    UnsupportedQop(String),
    /// A 401/407 without any challenge header.
    #[error("response carries no authentication challenge")]
    NoChallenge,
}

/// A Digest hash algorithm (RFC 7616 §3.2 registry; RFC 8760 §2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `MD5`, the RFC 3261 default.
    Md5,
    /// `MD5-sess`.
    Md5Sess,
    /// `SHA-256`.
    Sha256,
    /// `SHA-256-sess`.
    Sha256Sess,
    /// `SHA-512-256` (SHA-512/256), which RFC 8760 also names.
    Sha512_256,
    /// `SHA-512-256-sess`.
    Sha512_256Sess,
}

const ALGORITHMS: [(&str, Algorithm); 6] = [
    ("MD5", Algorithm::Md5),
    ("MD5-sess", Algorithm::Md5Sess),
    ("SHA-256", Algorithm::Sha256),
    ("SHA-256-sess", Algorithm::Sha256Sess),
    ("SHA-512-256", Algorithm::Sha512_256),
    ("SHA-512-256-sess", Algorithm::Sha512_256Sess),
];

impl Algorithm {
    /// The token as written in the `algorithm` parameter.
    pub fn as_str(self) -> &'static str {
        ALGORITHMS
            .iter()
            .find(|(_, a)| *a == self)
            .map(|(s, _)| *s)
            .unwrap_or("MD5")
    }

    /// Parse an `algorithm` token; tokens compare case-insensitively (RFC 7616 §3.3).
    pub fn from_token(s: &str) -> Option<Algorithm> {
        ALGORITHMS
            .iter()
            .find(|(t, _)| t.eq_ignore_ascii_case(s))
            .map(|(_, a)| *a)
    }

    /// True for the `-sess` variants, whose HA1 also covers nonce and cnonce.
    pub fn is_session(self) -> bool {
        matches!(
            self,
            Algorithm::Md5Sess | Algorithm::Sha256Sess | Algorithm::Sha512_256Sess
        )
    }

    /// Ranking for [`best_challenge`]: the hash's strength first; the plain
    /// form before `-sess` because more servers implement it correctly.
    fn strength(self) -> u8 {
        match self {
            Algorithm::Md5Sess => 0,
            Algorithm::Md5 => 1,
            Algorithm::Sha256Sess => 2,
            Algorithm::Sha256 => 3,
            Algorithm::Sha512_256Sess => 4,
            Algorithm::Sha512_256 => 5,
        }
    }

    /// Lower-case hex of H(data) (RFC 7616 §3.4.1).
    fn hash(self, data: impl AsRef<[u8]>) -> String {
        match self {
            Algorithm::Md5 | Algorithm::Md5Sess => hex(&Md5::digest(data)),
            Algorithm::Sha256 | Algorithm::Sha256Sess => hex(&Sha256::digest(data)),
            Algorithm::Sha512_256 | Algorithm::Sha512_256Sess => hex(&Sha512_256::digest(data)),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Quality of protection (RFC 7616 §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qop {
    /// `auth`: the request line is covered.
    Auth,
    /// `auth-int`: the body is covered too.
    AuthInt,
}

impl Qop {
    /// The token as written in `qop`.
    pub fn as_str(self) -> &'static str {
        match self {
            Qop::Auth => "auth",
            Qop::AuthInt => "auth-int",
        }
    }
}

/// One parsed Digest challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// `realm`, unquoted.
    pub realm: String,
    /// `nonce`, unquoted.
    pub nonce: String,
    /// `opaque`, echoed back unchanged when present.
    pub opaque: Option<String>,
    /// `algorithm` (MD5 when absent, RFC 3261 §22.4 / RFC 7616 §3.3).
    pub algorithm: Algorithm,
    /// The `qop` to answer with: `auth` whenever offered, else `auth-int`;
    /// `None` when the challenge has no `qop`, which asks for the RFC 2069 form.
    pub qop: Option<Qop>,
    /// `stale=true`: the nonce expired but the credentials were right, so
    /// answering the new nonce at once is expected (RFC 7616 §3.3).
    pub stale: bool,
}

impl Challenge {
    /// Parse one challenge, `Digest realm="…", nonce="…", …`. Parameter names
    /// compare case-insensitively, values may be quoted strings (with `\`
    /// escapes) or tokens, unknown parameters are ignored. A value holding
    /// several challenges answers the first one here; see [`parse_all`](Self::parse_all).
    pub fn parse(value: &str) -> Result<Challenge, DigestError> {
        let raw = split_challenges(value)?;
        let first = raw
            .into_iter()
            .next()
            .ok_or_else(|| DigestError::Malformed("empty header".into()))?;
        first.into_challenge()
    }

    /// Parse every challenge of a header value, each on its own, so that one
    /// we cannot answer does not hide another (RFC 7235 §4.1 allows a list).
    pub fn parse_all(value: &str) -> Vec<Result<Challenge, DigestError>> {
        match split_challenges(value) {
            Ok(raw) => raw.into_iter().map(RawChallenge::into_challenge).collect(),
            Err(e) => vec![Err(e)],
        }
    }
}

/// Which header pair a challenge came in (RFC 3261 §22.2 vs §22.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthKind {
    /// 401 with `WWW-Authenticate`, answered with `Authorization`.
    Www,
    /// 407 with `Proxy-Authenticate`, answered with `Proxy-Authorization`.
    Proxy,
}

impl AuthKind {
    /// The header that carries the challenge.
    pub fn challenge_header(self) -> &'static str {
        match self {
            AuthKind::Www => header::WWW_AUTHENTICATE,
            AuthKind::Proxy => header::PROXY_AUTHENTICATE,
        }
    }

    /// The header that carries our answer.
    pub fn credentials_header(self) -> &'static str {
        match self {
            AuthKind::Www => header::AUTHORIZATION,
            AuthKind::Proxy => header::PROXY_AUTHORIZATION,
        }
    }
}

/// Pick the challenge to answer among header values (one header line each).
///
/// The strongest supported algorithm wins (SHA-512-256, then SHA-256, then
/// MD5); among equals the topmost. RFC 8760 §2.4 has the UAC take the
/// topmost challenge it supports unless local policy says otherwise; ours
/// is strength first, so a server that lists MD5 above SHA-256 still gets
/// SHA-256. Challenges we cannot answer are skipped; if none is left, the
/// first one's error is returned.
pub fn best_challenge<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> Result<Challenge, DigestError> {
    let mut best: Option<Challenge> = None;
    let mut first_error = None;
    for result in values.into_iter().flat_map(Challenge::parse_all) {
        match result {
            Ok(c) => {
                if best
                    .as_ref()
                    .is_none_or(|b| c.algorithm.strength() > b.algorithm.strength())
                {
                    best = Some(c);
                }
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    best.ok_or(first_error.unwrap_or(DigestError::NoChallenge))
}

/// The challenge of a 401 (`WWW-Authenticate`) or 407 (`Proxy-Authenticate`),
/// via [`best_challenge`]. Other status codes carry none.
pub fn response_challenge(resp: &Response) -> Result<(AuthKind, Challenge), DigestError> {
    let kind = match resp.code {
        401 => AuthKind::Www,
        407 => AuthKind::Proxy,
        _ => return Err(DigestError::NoChallenge),
    };
    let values = resp.headers.get_all(kind.challenge_header());
    best_challenge(values).map(|c| (kind, c))
}

/// Answers one challenge, counting `nc` for its nonce (RFC 7616 §3.4: the
/// count starts at 1 for each new nonce and rises with every request that
/// reuses it, so the server can detect replays).
#[derive(Debug, Clone)]
pub struct Authenticator {
    kind: AuthKind,
    challenge: Challenge,
    nc: u32,
}

impl Authenticator {
    /// Start answering `challenge`, received in a `kind` header.
    pub fn new(kind: AuthKind, challenge: Challenge) -> Self {
        Self {
            kind,
            challenge,
            nc: 0,
        }
    }

    /// Take a new challenge of the same kind (stale nonce, or a server that
    /// challenges again). The nonce count restarts only if the nonce changed:
    /// counting again from 1 on a known nonce would look like a replay.
    pub fn rechallenge(&mut self, challenge: Challenge) {
        if challenge.nonce != self.challenge.nonce {
            self.nc = 0;
        }
        self.challenge = challenge;
    }

    /// The challenge being answered.
    pub fn challenge(&self) -> &Challenge {
        &self.challenge
    }

    /// Which header pair is in use.
    pub fn kind(&self) -> AuthKind {
        self.kind
    }

    /// How many answers have been built for this nonce so far.
    pub fn nonce_count(&self) -> u32 {
        self.nc
    }

    /// Build the credentials header value for a request with a fresh random
    /// cnonce; the next `nc` is used. `uri` is the Request-URI as sent;
    /// `body` matters only for `qop=auth-int`.
    pub fn authorization(
        &mut self,
        username: &str,
        password: &str,
        method: &str,
        uri: &str,
        body: &[u8],
    ) -> String {
        // 128 random bits: RFC 7616 §3.4 wants the cnonce unpredictable to the
        // server, so that a chosen-nonce attack cannot precompute responses.
        let cnonce = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        self.authorization_with_cnonce(username, password, method, uri, body, &cnonce)
    }

    /// As [`authorization`](Self::authorization) with a given cnonce (for
    /// reproducible test vectors).
    pub fn authorization_with_cnonce(
        &mut self,
        username: &str,
        password: &str,
        method: &str,
        uri: &str,
        body: &[u8],
        cnonce: &str,
    ) -> String {
        self.nc = self.nc.wrapping_add(1).max(1);
        let c = &self.challenge;
        let alg = c.algorithm;
        let nc = format!("{:08x}", self.nc);

        let mut ha1 = alg.hash(format!("{username}:{}:{password}", c.realm));
        if alg.is_session() {
            ha1 = alg.hash(format!("{ha1}:{}:{cnonce}", c.nonce));
        }
        let ha2 = match c.qop {
            Some(Qop::AuthInt) => alg.hash(format!("{method}:{uri}:{}", alg.hash(body))),
            _ => alg.hash(format!("{method}:{uri}")),
        };
        let response = match c.qop {
            Some(q) => alg.hash(format!(
                "{ha1}:{}:{nc}:{cnonce}:{}:{ha2}",
                c.nonce,
                q.as_str()
            )),
            None => alg.hash(format!("{ha1}:{}:{ha2}", c.nonce)),
        };

        // RFC 7616 §3.4: username, realm, nonce, uri, response, cnonce and
        // opaque are quoted strings; algorithm, qop and nc are tokens and
        // some servers reject them quoted.
        let mut out = format!(
            "Digest username={}, realm={}, nonce={}, uri={}, response={}, algorithm={}",
            quote(username),
            quote(&c.realm),
            quote(&c.nonce),
            quote(uri),
            quote(&response),
            alg.as_str()
        );
        // A `-sess` HA1 needs the cnonce even in the RFC 2069 form.
        if c.qop.is_some() || alg.is_session() {
            let _ = write!(out, ", cnonce={}", quote(cnonce));
        }
        if let Some(o) = &c.opaque {
            let _ = write!(out, ", opaque={}", quote(o));
        }
        if let Some(q) = c.qop {
            let _ = write!(out, ", qop={}, nc={nc}", q.as_str());
        }
        out
    }
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A challenge as written: scheme and `name=value` pairs, values unquoted.
#[derive(Debug)]
struct RawChallenge {
    scheme: String,
    params: Vec<(String, String)>,
}

impl RawChallenge {
    fn get(&self, name: &str) -> Option<&str> {
        // RFC 7616 §3.3 forbids repeats; the first one wins if a server repeats anyway.
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn into_challenge(self) -> Result<Challenge, DigestError> {
        if !self.scheme.eq_ignore_ascii_case("Digest") {
            return Err(DigestError::NotDigest(self.scheme));
        }
        let realm = self
            .get("realm")
            .ok_or(DigestError::Missing("realm"))?
            .to_string();
        let nonce = self
            .get("nonce")
            .filter(|n| !n.is_empty())
            .ok_or(DigestError::Missing("nonce"))?
            .to_string();
        let algorithm = match self.get("algorithm") {
            None => Algorithm::Md5,
            Some(a) => Algorithm::from_token(a.trim())
                .ok_or_else(|| DigestError::UnsupportedAlgorithm(a.to_string()))?,
        };
        let qop = match self.get("qop") {
            None => None,
            Some(list) => {
                let offered: Vec<&str> = list.split(',').map(str::trim).collect();
                let has = |t: &str| offered.iter().any(|o| o.eq_ignore_ascii_case(t));
                if has("auth") {
                    Some(Qop::Auth)
                } else if has("auth-int") {
                    Some(Qop::AuthInt)
                } else {
                    return Err(DigestError::UnsupportedQop(list.to_string()));
                }
            }
        };
        Ok(Challenge {
            realm,
            nonce,
            opaque: self.get("opaque").map(str::to_string),
            algorithm,
            qop,
            stale: self
                .get("stale")
                .is_some_and(|s| s.trim().eq_ignore_ascii_case("true")),
        })
    }
}

/// RFC 3261 §25.1 `token` characters.
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c)
}

/// Split a header value into challenges (RFC 7235 §2.1 / RFC 3261 §25.1
/// `challenge`): a scheme token, then comma-separated `name=value` pairs.
/// After each pair, a token *not* followed by `=` starts the next challenge.
/// A missing comma between pairs is tolerated, since some servers omit it.
fn split_challenges(value: &str) -> Result<Vec<RawChallenge>, DigestError> {
    let mut s = Scanner::new(value);
    let mut out: Vec<RawChallenge> = Vec::new();
    loop {
        s.skip(|c| c.is_ascii_whitespace() || c == ',');
        if s.at_end() {
            break;
        }
        let word = s.token();
        if word.is_empty() {
            return Err(s.error());
        }
        s.skip(|c| c.is_ascii_whitespace());
        match (s.peek(), out.last_mut()) {
            (Some('='), Some(current)) => {
                s.bump();
                s.skip(|c| c.is_ascii_whitespace());
                let v = if s.peek() == Some('"') {
                    s.quoted()?
                } else {
                    s.bare_value().to_string()
                };
                current.params.push((word.to_string(), v));
            }
            (Some('='), None) => return Err(s.error()),
            _ => out.push(RawChallenge {
                scheme: word.to_string(),
                params: Vec::new(),
            }),
        }
    }
    if out.is_empty() {
        return Err(DigestError::Malformed("empty header".into()));
    }
    Ok(out)
}

/// A cursor over a header value. Every delimiter is ASCII, so slicing at
/// the positions it finds never splits a UTF-8 character.
struct Scanner<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn new(s: &'a str) -> Self {
        Self { s, pos: 0 }
    }

    fn peek(&self) -> Option<char> {
        self.s[self.pos..].chars().next()
    }

    fn bump(&mut self) {
        if let Some(c) = self.peek() {
            self.pos += c.len_utf8();
        }
    }

    fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    fn skip(&mut self, f: impl Fn(char) -> bool) {
        while self.peek().is_some_and(&f) {
            self.bump();
        }
    }

    /// A scheme or parameter name.
    fn token(&mut self) -> &'a str {
        let start = self.pos;
        self.skip(is_token_char);
        &self.s[start..self.pos]
    }

    /// An unquoted value: up to the next comma or space. Wider than `token`
    /// because servers send base64 nonces (`/`, `=`) unquoted.
    fn bare_value(&mut self) -> &'a str {
        let start = self.pos;
        self.skip(|c| c != ',' && !c.is_ascii_whitespace());
        &self.s[start..self.pos]
    }

    /// A quoted string starting at `"`, with `\` escaping any character.
    fn quoted(&mut self) -> Result<String, DigestError> {
        self.bump();
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err(DigestError::Malformed("unterminated quoted string".into())),
                Some('"') => {
                    self.bump();
                    return Ok(out);
                }
                Some('\\') => {
                    self.bump();
                    if let Some(c) = self.peek() {
                        out.push(c);
                        self.bump();
                    }
                }
                Some(c) => {
                    out.push(c);
                    self.bump();
                }
            }
        }
    }

    fn error(&self) -> DigestError {
        let rest: String = self.s[self.pos..].chars().take(20).collect();
        DigestError::Malformed(format!("unexpected text at {rest:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7616 §3.9.1.
    const RFC7616_CHALLENGE: &str = "Digest\r\n realm=\"http-auth@example.org\",\r\n \
        qop=\"auth, auth-int\",\r\n algorithm=ALG,\r\n \
        nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\",\r\n \
        opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"";
    const RFC7616_CNONCE: &str = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";

    /// One parameter of an answer as written (quotes kept).
    fn param<'a>(header: &'a str, name: &str) -> Option<&'a str> {
        header
            .trim_start_matches("Digest ")
            .split(", ")
            .find_map(|p| p.strip_prefix(&format!("{name}=")))
    }

    fn rfc7616(alg: &str) -> String {
        let c = Challenge::parse(&RFC7616_CHALLENGE.replace("ALG", alg)).unwrap();
        Authenticator::new(AuthKind::Www, c).authorization_with_cnonce(
            "Mufasa",
            "Circle of Life",
            "GET",
            "/dir/index.html",
            b"",
            RFC7616_CNONCE,
        )
    }

    #[test]
    fn rfc7616_md5_vector() {
        let h = rfc7616("MD5");
        assert_eq!(
            param(&h, "response"),
            Some("\"8ca523f5e9506fed4657c9700eebdbec\"")
        );
        assert_eq!(param(&h, "qop"), Some("auth"));
        assert_eq!(param(&h, "nc"), Some("00000001"));
        assert_eq!(param(&h, "algorithm"), Some("MD5"));
        assert_eq!(
            param(&h, "opaque"),
            Some("\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"")
        );
        assert_eq!(param(&h, "cnonce"), Some(&*format!("\"{RFC7616_CNONCE}\"")));
    }

    #[test]
    fn rfc7616_sha256_vector() {
        let h = rfc7616("SHA-256");
        assert_eq!(
            param(&h, "response"),
            Some("\"753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1\"")
        );
        assert_eq!(param(&h, "algorithm"), Some("SHA-256"));
    }

    #[test]
    fn session_and_sha512_256_variants() {
        // Not published vectors: computed independently (Python hashlib) on
        // the RFC 7616 §3.9.1 inputs.
        for (alg, want) in [
            ("MD5-sess", "e783283f46242139c486a698fec7211d"),
            (
                "SHA-256-sess",
                "2fd51b3a77ad75bad6afad6003e818d767133c46d9e2749e7f5232ae1ea3efd7",
            ),
            (
                "SHA-512-256",
                "430d05014cecc49cab6fbe03176d41a1da86cbfe24a16580e22aaad928d960d0",
            ),
            (
                "sha-512-256-SESS",
                "3f2a34f923c38b0fb26dce2fdfc2ce326c23cecf86fbb1444f3e51fbbc2cb92e",
            ),
        ] {
            let h = rfc7616(alg);
            assert_eq!(
                param(&h, "response"),
                Some(&*format!("\"{want}\"")),
                "{alg}"
            );
        }
    }

    /// RFC 2617 §3.5 (RFC 3261 §22.4 reuses its values).
    const RFC2617_CHALLENGE: &str = "Digest realm=\"testrealm@host.com\", \
        qop=\"auth,auth-int\", nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", \
        opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"";

    #[test]
    fn rfc2617_vector_and_nc_per_nonce() {
        let c = Challenge::parse(RFC2617_CHALLENGE).unwrap();
        assert_eq!(c.qop, Some(Qop::Auth), "auth preferred over auth-int");
        let mut a = Authenticator::new(AuthKind::Www, c);
        let h = a.authorization_with_cnonce(
            "Mufasa",
            "Circle Of Life",
            "GET",
            "/dir/index.html",
            b"",
            "0a4f113b",
        );
        assert_eq!(
            h,
            "Digest username=\"Mufasa\", realm=\"testrealm@host.com\", \
             nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", uri=\"/dir/index.html\", \
             response=\"6629fae49393a05397450978507c4ef1\", algorithm=MD5, \
             cnonce=\"0a4f113b\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\", \
             qop=auth, nc=00000001"
        );
        let again = a.authorization("Mufasa", "Circle Of Life", "GET", "/dir/index.html", b"");
        assert_eq!(param(&again, "nc"), Some("00000002"));
        assert_eq!(a.nonce_count(), 2);
        let cnonce = param(&again, "cnonce").unwrap();
        assert_eq!(cnonce.len(), 34, "32 hex digits, quoted: {cnonce}");
    }

    #[test]
    fn rfc2069_form_without_qop() {
        let c = Challenge::parse(
            "Digest realm=\"testrealm@host.com\", nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\"",
        )
        .unwrap();
        assert_eq!((c.qop, c.algorithm), (None, Algorithm::Md5));
        let h = Authenticator::new(AuthKind::Proxy, c).authorization(
            "Mufasa",
            "Circle Of Life",
            "GET",
            "/dir/index.html",
            b"",
        );
        // H(HA1:nonce:HA2), computed independently.
        assert_eq!(
            param(&h, "response"),
            Some("\"670fd8c2df070c60b045671b8b24ff02\"")
        );
        for absent in ["cnonce", "nc", "qop", "opaque"] {
            assert_eq!(param(&h, absent), None, "{absent} in {h}");
        }
    }

    #[test]
    fn nonce_count_restarts_only_with_a_new_nonce() {
        let c = Challenge::parse(RFC2617_CHALLENGE).unwrap();
        let mut a = Authenticator::new(AuthKind::Www, c.clone());
        a.authorization("u", "p", "REGISTER", "sip:h", b"");
        a.rechallenge(Challenge {
            stale: true,
            ..c.clone()
        });
        let h = a.authorization("u", "p", "REGISTER", "sip:h", b"");
        assert_eq!(param(&h, "nc"), Some("00000002"), "same nonce counts on");
        a.rechallenge(Challenge {
            nonce: "other".into(),
            ..c
        });
        let h = a.authorization("u", "p", "REGISTER", "sip:h", b"");
        assert_eq!(param(&h, "nc"), Some("00000001"));
        assert_eq!(param(&h, "nonce"), Some("\"other\""));
    }

    #[test]
    fn auth_int_only_covers_the_body() {
        let c = Challenge::parse(
            "Digest realm=\"testrealm@host.com\", qop=\"auth-int\", \
             nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\"",
        )
        .unwrap();
        let mut a = Authenticator::new(AuthKind::Www, c);
        a.authorization("x", "y", "REGISTER", "sip:pbx.example.com", b"");
        let h = a.authorization_with_cnonce(
            "Mufasa",
            "Circle Of Life",
            "REGISTER",
            "sip:pbx.example.com",
            b"",
            "0a4f113b",
        );
        assert_eq!(param(&h, "qop"), Some("auth-int"));
        assert_eq!(
            param(&h, "response"),
            Some("\"b678544c56a946880ff5f40dc26b201b\"")
        );
    }

    #[test]
    fn quoted_strings_escapes_case_and_unknown_params() {
        let c = Challenge::parse(
            "digest REALM = \"a \\\"quoted\\\" realm\\\\x\" ,domain=\"sip:a sip:b\",\
             Nonce=abc/de+f==, ALGORITHM=sha-256, qop=auth, stale=TRUE, \
             charset=UTF-8, userhash=false, opaque=\"\"",
        )
        .unwrap();
        assert_eq!(c.realm, "a \"quoted\" realm\\x");
        assert_eq!(c.nonce, "abc/de+f==");
        assert_eq!(c.algorithm, Algorithm::Sha256);
        assert_eq!(c.qop, Some(Qop::Auth));
        assert!(c.stale);
        assert_eq!(c.opaque.as_deref(), Some(""));
        // The answer escapes what it quotes.
        let h = Authenticator::new(AuthKind::Www, c)
            .authorization("u\"1", "p", "REGISTER", "sip:h", b"");
        assert!(h.contains("username=\"u\\\"1\""), "{h}");
        assert!(h.contains("realm=\"a \\\"quoted\\\" realm\\\\x\""), "{h}");
        assert!(h.contains(", opaque=\"\""), "{h}");
        assert!(
            !Challenge::parse("Digest realm=r, nonce=n, stale=false")
                .unwrap()
                .stale
        );
    }

    #[test]
    fn missing_comma_between_params_is_tolerated() {
        let c = Challenge::parse("Digest realm=\"r\" nonce=\"n\"  algorithm=MD5").unwrap();
        assert_eq!((c.realm.as_str(), c.nonce.as_str()), ("r", "n"));
    }

    #[test]
    fn errors_are_specific() {
        assert_eq!(
            Challenge::parse("Basic realm=\"x\""),
            Err(DigestError::NotDigest("Basic".into()))
        );
        assert_eq!(
            Challenge::parse("Digest nonce=\"n\""),
            Err(DigestError::Missing("realm"))
        );
        assert_eq!(
            Challenge::parse("Digest realm=\"r\", opaque=\"o\""),
            Err(DigestError::Missing("nonce"))
        );
        assert_eq!(
            Challenge::parse("Digest realm=\"r\", nonce=\"\""),
            Err(DigestError::Missing("nonce"))
        );
        assert_eq!(
            Challenge::parse("Digest realm=\"r\", nonce=\"n\", algorithm=SHA-1"),
            Err(DigestError::UnsupportedAlgorithm("SHA-1".into()))
        );
        assert!(matches!(
            Challenge::parse("Digest realm=\"r\", nonce=\"n\", qop=\"auth-conf\""),
            Err(DigestError::UnsupportedQop(_))
        ));
        for bad in [
            "",
            "   ",
            "Digest realm=\"unterminated",
            "=x",
            "Digest realm=\"r\", nonce=\"n\", @",
        ] {
            assert!(
                matches!(Challenge::parse(bad), Err(DigestError::Malformed(_))),
                "{bad:?}: {:?}",
                Challenge::parse(bad)
            );
        }
    }

    #[test]
    fn strongest_challenge_wins_whatever_the_order() {
        let md5 = "Digest realm=\"r\", nonce=\"m\", qop=\"auth\"";
        let sha = "Digest realm=\"r\", nonce=\"s\", algorithm=SHA-256, qop=\"auth\"";
        let unknown = "Digest realm=\"r\", nonce=\"u\", algorithm=FOO";
        let basic = "Basic realm=\"r\"";
        for order in [
            vec![md5, sha],
            vec![sha, md5],
            vec![basic, unknown, md5, sha],
        ] {
            assert_eq!(best_challenge(order).unwrap().nonce, "s");
        }
        // Equal strength: the topmost.
        let md5b = "Digest realm=\"r\", nonce=\"m2\"";
        assert_eq!(best_challenge([md5b, md5]).unwrap().nonce, "m2");
        // Several challenges in one header value.
        assert_eq!(
            best_challenge([&*format!("{basic}, {md5}, {sha}")])
                .unwrap()
                .nonce,
            "s"
        );
        assert_eq!(
            best_challenge([basic, unknown]),
            Err(DigestError::NotDigest("Basic".into()))
        );
        assert_eq!(best_challenge([]), Err(DigestError::NoChallenge));
    }

    #[test]
    fn asterisk_style_401_through_the_message_parser() {
        // The challenge pair of tests/conformance/digest_qop_list.sip: SHA-256
        // listed first with a qop list, a comma inside the quoted nonce.
        let text = "SIP/2.0 401 Unauthorized\r\n\
            Via: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKreg\r\n\
            From: <sip:emonav@pbx.example.com>;tag=r1\r\n\
            To: <sip:emonav@pbx.example.com>;tag=as5f\r\n\
            Call-ID: reg-1\r\nCSeq: 1 REGISTER\r\n\
            WWW-Authenticate: Digest realm=\"asterisk\", qop=\"auth,auth-int\", \
            algorithm=SHA-256, nonce=\"1700000000/abc,def\", opaque=\"xyz\"\r\n\
            WWW-Authenticate: Digest realm=\"asterisk\", qop=\"auth\", algorithm=MD5, \
            nonce=\"1700000000/abc,def\"\r\n\
            Content-Length: 0\r\n\r\n";
        let resp = match crate::message::parse_datagram(text.as_bytes()) {
            Ok(crate::message::Message::Response(r)) => r,
            other => panic!("{other:?}"),
        };
        let (kind, c) = response_challenge(&resp).unwrap();
        assert_eq!(kind, AuthKind::Www);
        assert_eq!(c.algorithm, Algorithm::Sha256);
        assert_eq!(c.nonce, "1700000000/abc,def");
        assert_eq!(c.opaque.as_deref(), Some("xyz"));
        let mut not_a_challenge = resp.clone();
        not_a_challenge.code = 403;
        assert_eq!(
            response_challenge(&not_a_challenge),
            Err(DigestError::NoChallenge)
        );
    }

    #[test]
    fn arbitrary_input_never_panics() {
        let mut rng = fastrand::Rng::with_seed(11);
        let alphabet: Vec<char> =
            "Digest realm=\"\\,; \t\r\nnonce=qop=auth-int,stale=é€ä\u{0}Basic"
                .chars()
                .collect();
        for _ in 0..20_000 {
            let len = rng.usize(0..60);
            let s: String = (0..len)
                .map(|_| alphabet[rng.usize(..alphabet.len())])
                .collect();
            let _ = best_challenge([s.as_str()]);
            if let Ok(c) = Challenge::parse(&s) {
                let _ =
                    Authenticator::new(AuthKind::Www, c).authorization("u", "p", "M", "sip:x", b"");
            }
        }
    }
}
