//! The SIPp peers around Asterisk in tests/asterisk.rs: callers
//! (tests/sipp/uac_asterisk_caller*.xml) and queue agents
//! (tests/sipp/uas_asterisk_agent.xml) whose audio socket is the test's own,
//! so that the caller's RTP reaching an agent is counted, not assumed.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::pbx::{free_port, temp_dir};
use crate::support::root;

/// What a SIPp run left behind.
pub(crate) struct Run {
    pub(crate) status: ExitStatus,
    /// The -trace_logs file (the scenario's `<log>` lines).
    pub(crate) log: String,
    /// Errors, and every message when it failed.
    pub(crate) errors: String,
}

impl Run {
    /// Values of `KEY: value` lines in the log.
    pub(crate) fn logged(&self, key: &str) -> Vec<String> {
        let prefix = format!("{key}: ");
        self.log
            .lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .map(str::to_owned)
            .collect()
    }
}

/// SIPp with the usual trace files in `dir`.
fn sipp(dir: &Path, scenario: &Path, args: &[String]) -> Command {
    let mut cmd = Command::new("sipp");
    cmd.arg("-sf")
        .arg(scenario)
        .args(args)
        .args(["-m", "1", "-i", "127.0.0.1", "-nostdin"])
        .args(["-timeout", "40", "-timeout_error"])
        .args(["-trace_logs", "-log_file"])
        .arg(dir.join("actions.log"))
        .args(["-trace_msg", "-message_file"])
        .arg(dir.join("messages.log"))
        .args(["-trace_err", "-error_file"])
        .arg(dir.join("errors.log"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

fn finish(dir: &Path, status: ExitStatus) -> Run {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let mut errors = read("errors.log");
    if !status.success() {
        errors.push_str("\n--- SIPp messages ---\n");
        errors.push_str(&read("messages.log"));
    }
    Run {
        status,
        log: read("actions.log"),
        errors,
    }
}

/// A queue agent's phone: a SIPp UAS on `port` taking one call, its audio
/// port a socket of ours that counts the RTP packets Asterisk sends it.
pub(crate) struct Agent {
    child: Child,
    dir: PathBuf,
    stop: Arc<AtomicBool>,
    counter: JoinHandle<RtpCount>,
}

/// RTP packets an agent received.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RtpCount {
    /// All RTP (version 2) packets.
    pub(crate) packets: u32,
    /// Those whose G.711 payload is not all silence: someone talking.
    pub(crate) voiced: u32,
}

impl Agent {
    /// Start it (it waits up to 40 s for the call).
    pub(crate) fn start(port: u16) -> Agent {
        let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
        rtp.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let rtp_port = rtp.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let counter = {
            let stop = stop.clone();
            std::thread::spawn(move || count_rtp(&rtp, &stop))
        };
        let dir = temp_dir("agent");
        let scenario = root().join("tests/sipp/uas_asterisk_agent.xml");
        let args = [
            "-p".to_string(),
            port.to_string(),
            "-key".into(),
            "agent_rtp".into(),
            rtp_port.to_string(),
        ];
        let child = sipp(&dir, &scenario, &args)
            .spawn()
            .expect("sipp is installed (Debian package sip-tester; scripts/test.sh installs it)");
        Agent {
            child,
            dir,
            stop,
            counter,
        }
    }

    /// Wait for it to end (the caller hung up) and count what it heard.
    pub(crate) fn finish(mut self) -> (Run, RtpCount) {
        let status = self.child.wait().unwrap();
        self.stop.store(true, Ordering::Relaxed);
        let count = self.counter.join().unwrap();
        (finish(&self.dir, status), count)
    }
}

fn count_rtp(sock: &UdpSocket, stop: &AtomicBool) -> RtpCount {
    let mut count = RtpCount {
        packets: 0,
        voiced: 0,
    };
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        let Ok(n) = sock.recv(&mut buf) else {
            continue;
        };
        if n <= 12 || buf[0] >> 6 != 2 {
            continue;
        }
        count.packets += 1;
        // G.711 silence is 0xFF/0x7F (μ-law) or 0xD5/0x55 (A-law).
        if buf[12..n]
            .iter()
            .any(|b| !matches!(b, 0xFF | 0x7F | 0xD5 | 0x55))
        {
            count.voiced += 1;
        }
    }
    count
}

/// tests/sipp/uas_asterisk_transferor.xml on `port`: takes one call and
/// REFERs it to `queue` asking for progress; runs in the background.
pub(crate) fn transferor(port: u16, queue: &str) -> (Child, PathBuf) {
    let dir = temp_dir("transferor");
    let scenario = root().join("tests/sipp/uas_asterisk_transferor.xml");
    let args = [
        "-p".to_string(),
        port.to_string(),
        "-key".into(),
        "transfer_to".into(),
        queue.into(),
        "-mi".into(),
        "127.0.0.1".into(),
        "-mp".into(),
        Caller::media_port().to_string(),
    ];
    let child = sipp(&dir, &scenario, &args)
        .spawn()
        .expect("sipp is installed (Debian package sip-tester; scripts/test.sh installs it)");
    (child, dir)
}

/// Wait for a background SIPp run to end.
pub(crate) fn wait((mut child, dir): (Child, PathBuf)) -> Run {
    let status = child.wait().unwrap();
    finish(&dir, status)
}

/// One caller through Asterisk.
pub(crate) struct Caller<'a> {
    /// Scenario file in tests/sipp/.
    pub(crate) scenario: &'a str,
    /// Extension dialled (-s).
    pub(crate) service: &'a str,
    /// From user: the pjsip.conf endpoint it is identified as.
    pub(crate) user: &'a str,
    /// Payload types offered, in order.
    pub(crate) codecs: &'a str,
    /// The recording played first (to emonav) and second (to the agent):
    /// a file name under tests/fixtures/, or an absolute path.
    pub(crate) audio: [&'a str; 2],
    /// Its media port (-mp).
    pub(crate) media_port: u16,
}

impl Caller<'_> {
    /// A media port for SIPp (it takes this one and the next three).
    pub(crate) fn media_port() -> u16 {
        30_000 + 4 * fastrand::u16(0..5_000)
    }

    /// Run the call to its end.
    pub(crate) fn run(&self, asterisk: SocketAddr) -> Run {
        let dir = temp_dir("caller");
        let text = std::fs::read_to_string(root().join("tests/sipp").join(self.scenario)).unwrap();
        let placeholder = "play_pcap_audio=\"../fixtures/agitated-pcmu.pcap\"";
        let path = |audio: &str| {
            let p = Path::new(audio);
            let p = if p.is_absolute() {
                p.to_path_buf()
            } else {
                root().join("tests/fixtures").join(p)
            };
            assert!(p.is_file(), "{} is missing", p.display());
            format!("play_pcap_audio=\"{}\"", p.display())
        };
        let text = text
            .replacen(placeholder, &path(self.audio[0]), 1)
            .replace(placeholder, &path(self.audio[1]));
        let scenario = dir.join(self.scenario);
        std::fs::write(&scenario, text).unwrap();
        let args = [
            asterisk.to_string(),
            "-s".into(),
            self.service.into(),
            "-key".into(),
            "caller_user".into(),
            self.user.into(),
            "-key".into(),
            "codecs".into(),
            self.codecs.into(),
            "-l".into(),
            "1".into(),
            "-mi".into(),
            "127.0.0.1".into(),
            "-p".into(),
            free_port().to_string(),
            "-mp".into(),
            self.media_port.to_string(),
        ];
        let status = sipp(&dir, &scenario, &args)
            .status()
            .expect("sipp is installed (Debian package sip-tester; scripts/test.sh installs it)");
        finish(&dir, status)
    }
}
