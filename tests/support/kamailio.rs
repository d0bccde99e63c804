//! Kamailio, the real SIP proxy, run in the foreground on loopback for a
//! test: tests/kamailio.rs (registrar, tests/kamailio/kamailio.cfg) and
//! tests/scale_out.rs (dispatcher, sip-profiles/kamailio/kamailio.cfg).
//! The binary is the Debian package `kamailio` (scripts/test.sh installs it).
#![allow(dead_code)]

use std::fs::File;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::root;

/// A UDP port free at the time of asking.
pub(crate) fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh temporary folder.
pub(crate) fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "emonav-{what}-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The kamailio binary: `$KAMAILIO`, else on PATH, else /usr/sbin (Debian
/// installs it there, which is not on every user's PATH).
fn kamailio_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("KAMAILIO") {
        return p.into();
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|d| d.join("kamailio"))
        .find(|p| p.is_file());
    on_path.expect("kamailio is installed (Debian package kamailio; scripts/test.sh installs it)")
}

/// The folder holding Kamailio's modules (tm.so, ...): `$KAMAILIO_MODULES`,
/// else the default the binary was built with (printed by `kamailio -h`),
/// else the usual multiarch and lib64 locations.
fn module_path(kamailio: &Path) -> PathBuf {
    let has_tm = |d: &Path| d.join("tm.so").is_file();
    if let Some(p) = std::env::var_os("KAMAILIO_MODULES") {
        return p.into();
    }
    let help = Command::new(kamailio)
        .arg("-h")
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s
        })
        .unwrap_or_default();
    let built_in = help
        .lines()
        .find_map(|l| l.split("Modules search path (default: ").nth(1))
        .and_then(|rest| rest.split(')').next())
        .map(PathBuf::from);
    let mut candidates: Vec<PathBuf> = built_in.into_iter().collect();
    for lib in [
        "/usr/lib",
        "/usr/lib64",
        "/usr/local/lib",
        "/usr/local/lib64",
    ] {
        candidates.push(Path::new(lib).join("kamailio/modules"));
        if let Ok(entries) = std::fs::read_dir(lib) {
            for e in entries.flatten() {
                candidates.push(e.path().join("kamailio/modules"));
            }
        }
    }
    candidates
        .into_iter()
        .find(|d| has_tm(d))
        .unwrap_or_else(|| {
            panic!("no Kamailio module folder with tm.so found; set KAMAILIO_MODULES")
        })
}

/// Kamailio in the foreground (-DD -E) on 127.0.0.1:`port`, its log in a file.
/// Stopped with SIGTERM on drop (the main process then stops its children).
pub(crate) struct Kamailio {
    child: Child,
    /// Where it listens (UDP).
    pub(crate) addr: SocketAddr,
    log: PathBuf,
}

impl Kamailio {
    /// Start with tests/kamailio/kamailio.cfg and wait until it answers.
    pub(crate) fn start() -> Kamailio {
        Self::start_with(&[])
    }

    /// The same, with extra `-A` defines (switches of the config).
    pub(crate) fn start_with(defines: &[&str]) -> Kamailio {
        let port = free_port();
        let defines: Vec<String> = defines.iter().map(|d| d.to_string()).collect();
        Self::start_cfg(&root().join("tests/kamailio/kamailio.cfg"), port, &defines)
    }

    /// Start `cfg` on 127.0.0.1:`port` (`-A KAM_PORT=port`) with further
    /// `-A` defines, and wait until it answers.
    pub(crate) fn start_cfg(cfg: &Path, port: u16, defines: &[String]) -> Kamailio {
        let kamailio = kamailio_binary();
        let modules = module_path(&kamailio);
        let dir = temp_dir("kamailio");
        let log = dir.join("kamailio.log");
        let child = Command::new(&kamailio)
            .args(["-DD", "-E", "-f"])
            .arg(cfg)
            .arg("-L")
            .arg(&modules)
            .args(["-A", &format!("KAM_PORT={port}")])
            .args(defines.iter().flat_map(|d| ["-A", d.as_str()]))
            // Runtime and working folders: nothing under /var/run, no root needed.
            .arg("-Y")
            .arg(&dir)
            .arg("-w")
            .arg(&dir)
            .args(["-m", "32", "-M", "8"])
            // Its own process group: the workers can be killed with it.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("kamailio.out")).unwrap())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("spawn kamailio");
        let mut k = Kamailio {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
        };
        k.wait_ready(Duration::from_secs(15));
        k
    }

    /// Probe with OPTIONS until any response comes back.
    fn wait_ready(&mut self, timeout: Duration) {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let me = sock.local_addr().unwrap();
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        for n in 0.. {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("kamailio exited ({status}):\n{}", self.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "kamailio did not answer on {}:\n{}",
                self.addr,
                self.log_text()
            );
            let probe = format!(
                "OPTIONS sip:probe@{k} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKprobe{n};rport\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:probe@{me}>;tag=probe\r\nTo: <sip:probe@{k}>\r\n\
                 Call-ID: probe-{n}@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
                k = self.addr
            );
            let _ = sock.send_to(probe.as_bytes(), self.addr);
            if let Ok((len, _)) = sock.recv_from(&mut buf) {
                if buf[..len].starts_with(b"SIP/2.0 ") {
                    return;
                }
            }
        }
    }

    /// Wait until its log has a line containing `needle` (Kamailio logs
    /// after it has answered, so a peer may be faster than the log).
    pub(crate) fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_text().contains(needle) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its log so far (stderr, -E).
    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        // SIGTERM lets the main process stop its workers. Workers that hang
        // on in shutdown outlive it, so its process group (it leads one of
        // its own, see `start_with`) is then killed as a whole.
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}
