//! SRTP (RFC 3711, SDES keys of RFC 4568) against the real binary over
//! loopback: a real client, baresip with its `srtp` media encryption, calls
//! emonav, which must decrypt its audio, analyse it, send it our own SRTP
//! back, and transfer it by REFER; and the profile's `[media] srtp` modes
//! refuse what they must (488).

mod support;

use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{root, Emonav, Uac};

const S: Duration = Duration::from_secs(1);

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// calm.wav three times over (13.5 s): baresip's file source ends the call
/// at the end of its file, and the transfer must come first.
fn long_calm_wav(dir: &Path) -> PathBuf {
    let wav = std::fs::read(root().join("tests/fixtures/calm.wav")).unwrap();
    // A canonical 44-byte header (the fixture's, written by SoX).
    assert_eq!(&wav[36..40], b"data");
    let data = &wav[44..];
    let mut out = wav[..44].to_vec();
    for _ in 0..3 {
        out.extend_from_slice(data);
    }
    let len = (data.len() * 3) as u32;
    out[40..44].copy_from_slice(&len.to_le_bytes());
    out[4..8].copy_from_slice(&(len + 36).to_le_bytes());
    let path = dir.join("calm3.wav");
    std::fs::write(&path, out).unwrap();
    path
}

/// baresip calling `target` with `mediaenc`, its SIP on a free port,
/// audio from `wav`, quitting after `secs`.
struct Baresip {
    child: Child,
}

impl Baresip {
    fn call(dir: &Path, mediaenc: &str, target: SocketAddr, wav: &Path, secs: u32) -> Baresip {
        let conf = dir.join("baresip");
        std::fs::create_dir_all(&conf).unwrap();
        let modules = ["/usr/lib/baresip/modules", "/usr/lib64/baresip/modules"]
            .into_iter()
            .find(|d| Path::new(d).join("srtp.so").exists())
            .expect("baresip with its srtp module (Debian package baresip-core; scripts/test.sh installs it)");
        std::fs::write(
            conf.join("config"),
            format!(
                "poll_method epoll\nsip_listen 127.0.0.1:{sip}\ncall_local_timeout 30\n\
                 audio_player aufile,{out}\naudio_source aufile,{wav}\naudio_alert aufile,{out}\n\
                 rtp_stats yes\nmodule_path {modules}\nmodule stdio.so\nmodule g711.so\n\
                 module aufile.so\nmodule srtp.so\nmodule_app account.so\nmodule_app menu.so\n",
                sip = free_udp_port(),
                out = dir.join("heard.wav").display(),
                wav = wav.display(),
            ),
        )
        .unwrap();
        std::fs::write(
            conf.join("accounts"),
            format!("<sip:caller@127.0.0.1>;regint=0;mediaenc={mediaenc};audio_codecs=PCMU\n"),
        )
        .unwrap();
        let child = Command::new("baresip")
            .arg("-f")
            .arg(&conf)
            .args(["-e", &format!("/dial sip:emonav@{target}")])
            .args(["-t", &secs.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "baresip is installed (Debian package baresip-core; scripts/test.sh installs it)",
            );
        Baresip { child }
    }

    /// Its output once it has quit (after `-t`), or killed at `timeout`.
    fn output(mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        while self.child.try_wait().unwrap().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut out = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        out
    }
}

/// The queue the caller is transferred to: answers an INVITE 200 with an
/// SDP of the same profile and a crypto line of its own (it never looks at
/// media), ACKs and BYEs answered, until `stop`. Returns the INVITEs' texts.
fn queue(sock: UdpSocket, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut invites = Vec::new();
        let mut buf = [0u8; 65535];
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let method = text.split(' ').next().unwrap_or("");
            if !matches!(method, "INVITE" | "BYE") {
                continue;
            }
            let headers: String = text
                .split("\r\n")
                .filter(|l| {
                    let l = l.to_ascii_lowercase();
                    ["via:", "from:", "call-id:", "cseq:", "v:", "f:", "i:"]
                        .iter()
                        .any(|h| l.starts_with(h))
                })
                .map(|l| format!("{l}\r\n"))
                .collect();
            let to = text
                .split("\r\n")
                .find(|l| l.to_ascii_lowercase().starts_with("to:") || l.starts_with("t:"))
                .unwrap_or("To: <sip:queue@127.0.0.1>")
                .to_string();
            let me = sock.local_addr().unwrap();
            let (to, body) = if method == "INVITE" {
                let proto = if text.contains("RTP/SAVP") {
                    "RTP/SAVP"
                } else {
                    "RTP/AVP"
                };
                let body = format!(
                    "v=0\r\no=q 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                     m=audio {port} {proto} 0\r\na=rtpmap:0 PCMU/8000\r\n\
                     a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n",
                    port = free_udp_port()
                );
                invites.push(text.clone());
                (format!("{to};tag=queue1"), body)
            } else {
                (to, String::new())
            };
            let ctype = if body.is_empty() {
                ""
            } else {
                "Content-Type: application/sdp\r\n"
            };
            let resp = format!(
                "SIP/2.0 200 OK\r\n{headers}{to}\r\nContact: <sip:queue@{me}>\r\n{ctype}Content-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.send_to(resp.as_bytes(), from);
        }
        invites
    })
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "emonav-srtp-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A call from baresip with `mediaenc` to emonav with `[media] srtp = "required"`.
fn baresip_call_is_analysed_and_transferred(mediaenc: &str) {
    let dir = temp_dir();
    let q = UdpSocket::bind("127.0.0.1:0").unwrap();
    let qaddr = q.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let queue = queue(q, stop.clone());
    let emonav = Emonav::start(&format!(
        "[media]\nsrtp = \"required\"\n\
         [policy]\ndefault_queue = \"sip:default@{qaddr}\"\n\
         [[policy.rules]]\nlabel = \"agitated\"\narousal_min = 0.5\nqueue = \"sip:deescalation@{qaddr}\"\n\
         [[policy.rules]]\nlabel = \"calm\"\narousal_max = 0.5\nqueue = \"sip:standard@{qaddr}\"\n"
    ));
    let wav = long_calm_wav(&dir);
    let baresip = Baresip::call(&dir, mediaenc, emonav.sip, &wav, 9);
    let ev = emonav.next_event(20 * S);
    let out = baresip.output(10 * S);
    stop.store(true, Ordering::Relaxed);
    let invites = queue.join().unwrap();
    eprintln!("[baresip]\n{out}");

    // Encrypted both ways: baresip says so, and with SRTP required nothing
    // plain would have been analysed.
    assert!(
        out.contains("SRTP is Enabled (cryptosuite=AES_CM_128_HMAC_SHA1_80)"),
        "{out}"
    );
    assert_eq!(ev["codec"], "pcmu", "{ev}");
    let received = ev["rtp"]["received"].as_u64().unwrap();
    assert!(received > 100, "emonav decrypted {received} packets: {ev}");
    // A few of baresip's RTCP (a plain APP keepalive, its BYE) may be
    // refused; its audio never.
    assert!(ev["rtp"]["srtp_refused"].as_u64().unwrap() <= 3, "{ev}");
    // Analysed with speech, decided and transferred.
    assert!(ev["speech_ms"].as_u64().unwrap() >= 1000, "{ev}");
    assert_ne!(ev["decision_reason"], "no_speech", "{ev}");
    assert_eq!(ev["emotion"], "calm", "{ev}");
    assert_eq!(ev["outcome"], "transferred", "{ev}");
    assert_eq!(ev["queue"], format!("sip:standard@{qaddr}"), "{ev}");
    assert_eq!(invites.len(), 1, "baresip called the queue once");
    assert!(invites[0].starts_with(&format!("INVITE sip:standard@{qaddr}")));
    // baresip decrypted our SRTP (silence and RTCP): its receive counter,
    // with no errors.
    let rx_packets = out
        .lines()
        .find_map(|l| l.strip_prefix("packets:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no RTP statistics from baresip:\n{out}"));
    assert!(rx_packets > 100, "baresip received {rx_packets}:\n{out}");
    let errors = out
        .lines()
        .find_map(|l| l.strip_prefix("errors:"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>());
    assert_eq!(errors, Some(vec!["0", "0"]), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn baresip_srtp_mandatory_savp_call_is_analysed_and_transferred() {
    // RTP/SAVP with a=crypto (RFC 4568).
    baresip_call_is_analysed_and_transferred("srtp-mand");
}

#[test]
fn baresip_best_effort_srtp_call_is_analysed_and_transferred() {
    // RTP/AVP with a=crypto: SRTP when the answer has a key.
    baresip_call_is_analysed_and_transferred("srtp");
}

fn final_code(emonav: &Emonav, sdp: &str) -> (u16, Option<String>) {
    let mut uac = Uac::new(emonav.sip);
    uac.send_invite(sdp);
    let r = uac.invite_final(5 * S);
    if r.code >= 300 {
        uac.ack(false);
    }
    (r.code, Some(String::from_utf8_lossy(&r.body).into_owned()))
}

#[test]
fn profile_modes_refuse_what_they_must() {
    let key = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";
    let required = Emonav::start("[media]\nsrtp = \"required\"\n");
    let uac = Uac::new(required.sip);
    let plain = uac.g711_offer();
    let savp = plain.replace("RTP/AVP", "RTP/SAVP")
        + &format!("a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:{key}\r\n");
    assert_eq!(final_code(&required, &plain).0, 488, "plain RTP refused");
    let (code, body) = final_code(&required, &savp);
    assert_eq!(code, 200);
    let body = body.unwrap();
    assert!(body.contains(" RTP/SAVP "), "{body}");
    let crypto = body
        .lines()
        .find_map(|l| l.strip_prefix("a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:"))
        .unwrap_or_else(|| panic!("our key in the answer: {body}"));
    assert_ne!(crypto, key, "our own key, not the caller's");
    // SAVP with nothing we can do (AES-256): 488 even when SRTP is wanted.
    let aes256 = savp.replace("AES_CM_128_HMAC_SHA1_32", "AES_256_CM_HMAC_SHA1_80");
    assert_eq!(final_code(&required, &aes256).0, 488);

    let off = Emonav::start("");
    assert_eq!(final_code(&off, &savp).0, 488, "SRTP is off by default");
    let (code, body) = final_code(&off, &plain);
    assert_eq!(code, 200);
    assert!(!body.unwrap().contains("a=crypto"));
}
