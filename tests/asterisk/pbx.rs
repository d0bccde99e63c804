//! A throw-away Asterisk for tests/asterisk.rs: the shared prebuilt 22.10.1
//! (`../shared/tools/asterisk/install.sh`, which `scripts/test.sh` runs when
//! `/opt/asterisk-emonav/sbin/asterisk` is missing) in the foreground, with a
//! configuration directory made from the templates next to this file. Those
//! `#include` the shipped samples in sip-profiles/asterisk/ unchanged and add
//! only the test's callers, agents and ports.

use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::root;

/// Where install.sh puts Asterisk (its paths are compiled in).
const ASTERISK: &str = "/opt/asterisk-emonav/sbin/asterisk";

/// A UDP port free at the time of asking.
pub(crate) fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh temporary folder (short: Asterisk's control socket lives in it).
pub(crate) fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "emonav-{what}-{}-{}",
        std::process::id(),
        fastrand::u32(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The queue agents' SIP ports, by queue name (the queues.conf sample's
/// members are `PJSIP/agent-<queue>`).
pub(crate) struct AgentPorts {
    pub(crate) deescalation: u16,
    pub(crate) standard: u16,
    pub(crate) operator: u16,
    pub(crate) default: u16,
    /// The transferor asking for REFER progress (extension 3668).
    pub(crate) transferor: u16,
}

/// A running Asterisk; stopped (`core stop now`, then SIGKILL) on drop.
pub(crate) struct Asterisk {
    child: Child,
    conf: PathBuf,
    dir: PathBuf,
    /// Its PJSIP UDP transport.
    pub(crate) sip: SocketAddr,
}

impl Asterisk {
    /// Configure and start it; returns once its CLI answers and PJSIP is up.
    pub(crate) fn start(agents: &AgentPorts) -> Asterisk {
        let binary = Path::new(ASTERISK);
        assert!(
            binary.is_file(),
            "Asterisk is not installed at {ASTERISK}: run scripts/test.sh (it runs \
             ../shared/tools/asterisk/install.sh when it is missing), or that script by hand"
        );
        let dir = temp_dir("ast");
        for sub in ["etc", "var", "spool", "run", "log", "cache"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let port = free_port();
        // Apart from emonav's (20000-40200 in tests/support) and SIPp's
        // (30000-50003) media ports.
        let rtp = 50_100 + 1_000 * fastrand::u16(0..10);
        let values = [
            ("@DIR@", dir.display().to_string()),
            ("@REPO@", root().display().to_string()),
            ("@SIP_PORT@", port.to_string()),
            ("@RTP_START@", rtp.to_string()),
            ("@RTP_END@", (rtp + 998).to_string()),
            ("@AGENT_DEESCALATION@", agents.deescalation.to_string()),
            ("@AGENT_STANDARD@", agents.standard.to_string()),
            ("@AGENT_OPERATOR@", agents.operator.to_string()),
            ("@AGENT_DEFAULT@", agents.default.to_string()),
            ("@TRANSFEROR@", agents.transferor.to_string()),
        ];
        let templates = root().join("tests/asterisk");
        for name in [
            "asterisk.conf",
            "modules.conf",
            "logger.conf",
            "rtp.conf",
            "pjsip.conf",
            "extensions.conf",
            "queues.conf",
        ] {
            let mut text = std::fs::read_to_string(templates.join(name)).unwrap();
            for (key, value) in &values {
                text = text.replace(key, value);
            }
            let to = if name == "asterisk.conf" {
                dir.join(name)
            } else {
                dir.join("etc").join(name)
            };
            std::fs::write(to, text).unwrap();
        }
        let conf = dir.join("asterisk.conf");
        let child = Command::new(binary)
            .arg("-f")
            .arg("-C")
            .arg(&conf)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("log/console.txt")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn asterisk");
        let mut a = Asterisk {
            child,
            conf,
            dir,
            sip: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        a.wait_ready(Duration::from_secs(20));
        a
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("asterisk exited ({status}):\n{}", self.console());
            }
            let transports = self.try_cli("pjsip show transports");
            if transports.is_some_and(|t| t.contains(&self.sip.to_string())) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "asterisk did not come up on {}:\n{}",
                self.sip,
                self.console()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn try_cli(&self, command: &str) -> Option<String> {
        let out = Command::new(ASTERISK)
            .arg("-C")
            .arg(&self.conf)
            .args(["-rx", command])
            .stdin(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && !text.contains("Unable to connect")).then_some(text)
    }

    /// A CLI command's output (`asterisk -rx`).
    pub(crate) fn cli(&self, command: &str) -> String {
        self.try_cli(command)
            .unwrap_or_else(|| panic!("asterisk -rx {command:?} failed"))
    }

    /// Its log (notices, warnings, the dialplan's verbose lines).
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log/messages.log")).unwrap_or_default()
    }

    fn console(&self) -> String {
        std::fs::read_to_string(self.dir.join("log/console.txt")).unwrap_or_default()
    }
}

impl Drop for Asterisk {
    fn drop(&mut self) {
        let _ = self.try_cli("core stop now");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}
