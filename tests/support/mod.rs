//! Test harness: the real `emonav` binary on loopback, and a small UAC that
//! speaks SIP and RTP to it over real UDP sockets. Requests are written as
//! plain text, the way a peer would send them; responses and emonav's requests
//! are read with emonav's own parser (SIPp tests give the independent check).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use emonav_sip::message::{parse_datagram, Message, Request, Response};

/// Run the binary with `args` from the repository root, as an operator
/// would: (exit status is success, stdout, stderr).
pub(crate) fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_emonav"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The repository root.
pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fixture file's bytes (under `tests/fixtures/`).
pub(crate) fn fixture(name: &str) -> Vec<u8> {
    fixture_path(&format!("fixtures/{name}"))
}

/// A file's bytes, relative to `tests/`.
pub(crate) fn fixture_path(rel: &str) -> Vec<u8> {
    let p = root().join("tests").join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A running emonav process.
pub(crate) struct Emonav {
    child: Child,
    /// Its SIP address (UDP).
    pub sip: SocketAddr,
    /// Its SIP over TCP address, when TCP is on (`sip_tcp=tcp:ADDR`).
    pub sip_tcp: Option<SocketAddr>,
    /// Its HTTP address.
    pub http: SocketAddr,
    events: Receiver<serde_json::Value>,
    log: Receiver<String>,
    /// Path of the profile it runs with.
    pub profile: PathBuf,
}

impl Emonav {
    /// Start with the built-in defaults plus `extra` TOML: keys of `[sip]`,
    /// `[media]` and `[transfer]` blocks in `extra` are merged into the test
    /// profile's own blocks, other blocks are appended.
    pub(crate) fn start(extra: &str) -> Emonav {
        let dir = std::env::temp_dir().join(format!(
            "emonav-test-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let profile = dir.join("profile.toml");
        let base = 20_000 + 2 * fastrand::u16(0..10_000);
        let defaults = [
            ("sip", "listen = \"127.0.0.1:0\"\nt1_ms = 100\n".to_string()),
            (
                "media",
                format!("rtp_port_min = {base}\nrtp_port_max = {}\n", base + 200),
            ),
            ("transfer", "notify_timeout_ms = 4000\n".to_string()),
        ];
        let mut text = String::new();
        for (name, body) in &defaults {
            text.push_str(&format!("[{name}]\n{body}{}\n", section(extra, name)));
        }
        text.push_str(&without(extra, &defaults.map(|(n, _)| n)));
        std::fs::write(&profile, text).unwrap();
        Self::start_with_profile(&profile)
    }

    /// Start with a given profile file (SIP/HTTP listen overridden to free ports).
    pub(crate) fn start_with_profile(profile: &Path) -> Emonav {
        let mut child = Command::new(env!("CARGO_BIN_EXE_emonav"))
            .args(["run", "--profile"])
            .arg(profile)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--events",
                "-",
            ])
            .env("RUST_LOG", "emonav=debug,info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn emonav");
        let (ev_tx, events) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: serde_json::Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line}"));
                if ev_tx.send(v).is_err() {
                    break;
                }
            }
        });
        let (log_tx, log) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[emonav] {line}");
                if log_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let (sip, sip_tcp, http) = loop {
            let line = log
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("emonav did not report its listening address");
            let field = |name: &str| -> Option<SocketAddr> {
                let rest = line.split(name).nth(1)?;
                rest.split_whitespace().next()?.parse().ok()
            };
            if let (Some(sip), Some(http)) = (field("sip=udp:"), field("http=")) {
                break (sip, field("sip_tcp=tcp:"), http);
            }
        };
        Emonav {
            child,
            sip,
            sip_tcp,
            http,
            events,
            log,
            profile: profile.to_path_buf(),
        }
    }

    /// The next call event line.
    pub(crate) fn next_event(&self, timeout: Duration) -> serde_json::Value {
        self.events
            .recv_timeout(timeout)
            .expect("no call event line in time")
    }

    /// The next call event line, if one comes in time.
    pub(crate) fn next_event_opt(&self, timeout: Duration) -> Option<serde_json::Value> {
        self.events.recv_timeout(timeout).ok()
    }

    /// GET a path from the HTTP server; returns (status line, body).
    pub(crate) fn http_get(&self, path: &str) -> (String, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (head.lines().next().unwrap().to_string(), body.to_string())
    }

    /// Wait for a log line containing `needle` (earlier lines are consumed).
    pub(crate) fn wait_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = self.log.recv_timeout(left).ok()?;
            if line.contains(needle) {
                return Some(line);
            }
        }
    }

    /// Stop it the way an init system does (SIGTERM) and wait for the exit.
    pub(crate) fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill(1)");
        assert!(status.success());
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Send a signal (`"TERM"`, `"HUP"`…) without waiting.
    pub(crate) fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill(1)");
        assert!(status.success());
    }

    /// Wait for the process to exit.
    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// An HTTP request without a body; returns (status line, body).
    pub(crate) fn http(&self, method: &str, path: &str) -> (String, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(
            format!("{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (head.lines().next().unwrap().to_string(), body.to_string())
    }

    /// Its process id (for /proc checks).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Log lines so far.
    pub(crate) fn drain_log(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }
}

impl Drop for Emonav {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn section(extra: &str, name: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in extra.lines() {
        if line.trim_start().starts_with('[') {
            inside = line.trim() == format!("[{name}]");
            continue;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn without(extra: &str, names: &[&str]) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in extra.lines() {
        if line.trim_start().starts_with('[') {
            inside = names.iter().any(|n| line.trim() == format!("[{n}]"));
        }
        if !inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// A minimal UAC on loopback.
pub(crate) struct Uac {
    /// SIP socket.
    pub sip: UdpSocket,
    /// RTP socket.
    pub rtp: UdpSocket,
    /// Where emonav is.
    pub remote: SocketAddr,
    /// Call-ID.
    pub call_id: String,
    /// Our From tag.
    pub tag: String,
    /// emonav's To tag, once answered.
    pub remote_tag: Option<String>,
    /// Our CSeq.
    pub cseq: u32,
    /// INVITE branch.
    pub invite_branch: String,
    /// Where emonav wants RTP.
    pub remote_rtp: Option<SocketAddr>,
    /// Last INVITE text.
    pub invite_text: String,
    /// Requests received while waiting for something else.
    pending: Vec<Request>,
}

impl Uac {
    /// A UAC for `remote`.
    pub(crate) fn new(remote: SocketAddr) -> Uac {
        let sip = UdpSocket::bind("127.0.0.1:0").unwrap();
        let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
        Uac {
            sip,
            rtp,
            remote,
            call_id: format!("{:x}@test", fastrand::u64(..)),
            tag: format!("{:x}", fastrand::u32(..)),
            remote_tag: None,
            cseq: 1,
            invite_branch: format!("z9hG4bK{:x}", fastrand::u64(..)),
            remote_rtp: None,
            invite_text: String::new(),
            pending: Vec::new(),
        }
    }

    /// Our SIP address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.sip.local_addr().unwrap()
    }

    /// Send raw text.
    pub(crate) fn send_raw(&self, text: &str) {
        self.sip.send_to(text.as_bytes(), self.remote).unwrap();
    }

    /// An SDP offer with our RTP port and the given payload types.
    pub(crate) fn offer(&self, formats: &str, rtpmaps: &str) -> String {
        let port = self.rtp.local_addr().unwrap().port();
        format!(
            "v=0\r\no=test 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio {port} RTP/AVP {formats}\r\n{rtpmaps}a=ptime:20\r\na=sendrecv\r\n"
        )
    }

    /// The usual PCMU/PCMA/telephone-event offer.
    pub(crate) fn g711_offer(&self) -> String {
        self.offer(
            "0 8 101",
            "a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n",
        )
    }

    /// Send the INVITE with `sdp`.
    pub(crate) fn send_invite(&mut self, sdp: &str) {
        let me = self.addr();
        self.invite_text = format!(
            "INVITE sip:emonav@{r} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {me};branch={b};rport\r\n\
             Max-Forwards: 70\r\n\
             From: \"Test Caller\" <sip:caller@{me}>;tag={t}\r\n\
             To: <sip:emonav@{r}>\r\n\
             Call-ID: {c}\r\n\
             CSeq: {n} INVITE\r\n\
             Contact: <sip:caller@{me}>\r\n\
             Content-Type: application/sdp\r\n\
             Content-Length: {len}\r\n\r\n{sdp}",
            r = self.remote,
            b = self.invite_branch,
            t = self.tag,
            c = self.call_id,
            n = self.cseq,
            len = sdp.len()
        );
        self.send_raw(&self.invite_text.clone());
    }

    /// Receive the next SIP message.
    pub(crate) fn recv(&mut self, timeout: Duration) -> Option<Message> {
        self.sip.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 65535];
        match self.sip.recv_from(&mut buf) {
            Ok((n, _)) => Some(parse_datagram(&buf[..n]).expect("emonav sent unparseable SIP")),
            Err(_) => None,
        }
    }

    /// Receive the next datagram as text.
    pub(crate) fn recv_text(&mut self, timeout: Duration) -> Option<String> {
        self.sip.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 65535];
        let (n, _) = self.sip.recv_from(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Wait for a final response to the INVITE, keeping the To tag and SDP.
    pub(crate) fn invite_final(&mut self, timeout: Duration) -> Response {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).expect("no final response to INVITE") {
                Message::Response(r) if r.code >= 200 => {
                    self.remote_tag = r.to().and_then(|t| t.tag().map(str::to_owned));
                    if r.code == 200 {
                        let body = String::from_utf8_lossy(&r.body).to_string();
                        let port: u16 = body
                            .lines()
                            .find_map(|l| l.strip_prefix("m=audio "))
                            .and_then(|l| l.split_whitespace().next())
                            .and_then(|p| p.parse().ok())
                            .expect("m=audio port in answer");
                        self.remote_rtp = Some(SocketAddr::new(self.remote.ip(), port));
                    }
                    return r;
                }
                Message::Response(_) => {}
                Message::Request(r) => self.pending.push(r),
            }
        }
    }

    /// The To header with emonav's tag.
    fn to_header(&self) -> String {
        format!(
            "<sip:emonav@{}>;tag={}",
            self.remote,
            self.remote_tag.as_deref().unwrap_or("")
        )
    }

    /// ACK a 2xx (new branch) or a non-2xx (INVITE's branch).
    pub(crate) fn ack(&self, for_2xx: bool) {
        let me = self.addr();
        let branch = if for_2xx {
            format!("z9hG4bK{:x}", fastrand::u64(..))
        } else {
            self.invite_branch.clone()
        };
        self.send_raw(&format!(
            "ACK sip:emonav@{r} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:caller@{me}>;tag={t}\r\nTo: {to}\r\n\
             Call-ID: {c}\r\nCSeq: {n} ACK\r\nContent-Length: 0\r\n\r\n",
            r = self.remote,
            t = self.tag,
            to = self.to_header(),
            c = self.call_id,
            n = self.cseq,
        ));
    }

    /// Send an in-dialog request with a new CSeq; returns its branch.
    pub(crate) fn request(&mut self, method: &str, extra_headers: &str, body: &str) -> String {
        self.cseq += 1;
        let me = self.addr();
        let branch = format!("z9hG4bK{:x}", fastrand::u64(..));
        self.send_raw(&format!(
            "{method} sip:emonav@{r} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:caller@{me}>;tag={t}\r\nTo: {to}\r\n\
             Call-ID: {c}\r\nCSeq: {n} {method}\r\nContact: <sip:caller@{me}>\r\n{extra_headers}\
             Content-Length: {len}\r\n\r\n{body}",
            r = self.remote,
            t = self.tag,
            to = self.to_header(),
            c = self.call_id,
            n = self.cseq,
            len = body.len(),
        ));
        branch
    }

    /// Send NOTIFY with a sipfrag status line.
    pub(crate) fn notify(&mut self, status_line: &str, terminated: bool) -> String {
        let state = if terminated {
            "terminated;reason=noresource"
        } else {
            "active;expires=60"
        };
        self.request(
            "NOTIFY",
            &format!(
                "Event: refer\r\nSubscription-State: {state}\r\nContent-Type: message/sipfrag;version=2.0\r\n"
            ),
            &format!("{status_line}\r\n"),
        )
    }

    /// Wait for a request of `method` from emonav (answering nothing).
    pub(crate) fn expect_request(&mut self, method: &str, timeout: Duration) -> Option<Request> {
        if let Some(i) = self
            .pending
            .iter()
            .position(|r| r.method.as_str() == method)
        {
            return Some(self.pending.remove(i));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.recv(left)? {
                Message::Request(r) if r.method.as_str() == method => return Some(r),
                Message::Request(r) => self.pending.push(r),
                Message::Response(_) => {}
            }
        }
    }

    /// Wait for a response whose Via branch is `branch`.
    pub(crate) fn expect_response(&mut self, branch: &str, timeout: Duration) -> Option<Response> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.recv(left)? {
                Message::Response(r)
                    if r.code >= 200
                        && r.top_via()
                            .and_then(|v| v.branch().map(str::to_owned))
                            .as_deref()
                            == Some(branch) =>
                {
                    return Some(r)
                }
                Message::Request(r) => self.pending.push(r),
                Message::Response(_) => {}
            }
        }
    }

    /// Answer a request from emonav.
    pub(crate) fn respond(&self, req: &Request, code: u16, reason: &str) {
        let mut resp = req.make_response(code, reason);
        resp.headers
            .push("Contact", format!("<sip:caller@{}>", self.addr()));
        let dest = req
            .top_via()
            .map(|v| {
                let host = v.host.trim_matches(|c| c == '[' || c == ']');
                SocketAddr::new(host.parse().unwrap(), v.port.unwrap_or(5060))
            })
            .unwrap_or(self.remote);
        self.sip.send_to(&resp.to_bytes(), dest).unwrap();
    }

    /// Send an RFC 4733 digit on payload type 101 as a real phone does: three
    /// progress packets, then the end packet three times, one RTP timestamp.
    pub(crate) fn send_digit(&self, event: u8, seq_base: u16) {
        let dest = self.remote_rtp.expect("answered with SDP");
        let ts: u32 = 0x0100_0000;
        for (i, (end, duration)) in [
            (false, 160u16),
            (false, 320),
            (false, 480),
            (true, 640),
            (true, 640),
            (true, 640),
        ]
        .into_iter()
        .enumerate()
        {
            let mut pkt = vec![0x80, 101 | if i == 0 { 0x80 } else { 0 }];
            pkt.extend_from_slice(&seq_base.wrapping_add(i as u16).to_be_bytes());
            pkt.extend_from_slice(&ts.to_be_bytes());
            pkt.extend_from_slice(&0x1234_5678u32.to_be_bytes());
            pkt.extend_from_slice(&[event, if end { 0x80 | 10 } else { 10 }]);
            pkt.extend_from_slice(&duration.to_be_bytes());
            self.rtp.send_to(&pkt, dest).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stream a G.711 payload as RTP with payload type `pt`, 20 ms packets,
    /// paced in real time, in a background thread; returns when started.
    pub(crate) fn play(&self, payload: Vec<u8>, pt: u8) -> std::thread::JoinHandle<()> {
        self.play_from(&self.rtp, payload, pt, 0x1234_5678)
    }

    /// [`play`](Self::play) from another socket than the SDP's, with `ssrc`.
    #[allow(dead_code)]
    pub(crate) fn play_from(
        &self,
        sock: &UdpSocket,
        payload: Vec<u8>,
        pt: u8,
        ssrc: u32,
    ) -> std::thread::JoinHandle<()> {
        let sock = sock.try_clone().unwrap();
        let dest = self.remote_rtp.expect("answered with SDP");
        std::thread::spawn(move || {
            let start = Instant::now();
            for (i, chunk) in payload.chunks(160).enumerate() {
                let due = start + Duration::from_millis(20 * i as u64);
                if let Some(d) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
                let mut pkt = Vec::with_capacity(12 + chunk.len());
                pkt.extend_from_slice(&[0x80, pt]);
                pkt.extend_from_slice(&(i as u16).to_be_bytes());
                pkt.extend_from_slice(&((i as u32) * 160).to_be_bytes());
                pkt.extend_from_slice(&ssrc.to_be_bytes());
                pkt.extend_from_slice(chunk);
                if sock.send_to(&pkt, dest).is_err() {
                    return;
                }
            }
        })
    }
}
