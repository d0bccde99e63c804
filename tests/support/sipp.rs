//! SIPp run in the background (tests/sipp.rs runs it to completion): a
//! call in progress while the test does something else to emonav.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A SIPp process and the folder of its logs.
pub(crate) struct Sipp {
    child: Child,
    dir: PathBuf,
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "emonav-sipp-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(dir: &PathBuf, args: Vec<String>) -> Child {
    Command::new("sipp")
        .args(args)
        .args([
            "-timeout",
            "30",
            "-timeout_error",
            "-nostdin",
            "-trace_logs",
        ])
        .arg("-log_file")
        .arg(dir.join("actions.log"))
        .args(["-trace_err", "-error_file"])
        .arg(dir.join("errors.log"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sipp is installed (Debian package sip-tester; scripts/test.sh installs it)")
}

impl Sipp {
    /// One call of `scenario` (tests/sipp/) to `target` over UDP, playing
    /// the agitated recording, started and not waited for.
    pub(crate) fn call(target: SocketAddr, scenario: &str) -> Sipp {
        let dir = temp_dir();
        let root = crate::support::root();
        let xml = std::fs::read_to_string(root.join("tests/sipp").join(scenario))
            .unwrap()
            .replace(
                "../fixtures/agitated-pcmu.pcap",
                root.join("tests/fixtures/agitated-pcmu.pcap")
                    .to_str()
                    .unwrap(),
            );
        std::fs::write(dir.join(scenario), xml).unwrap();
        let media = 30_000 + 4 * fastrand::u16(0..5_000);
        let args = [
            target.to_string(),
            "-sf".into(),
            dir.join(scenario).to_string_lossy().into_owned(),
            "-m".into(),
            "1".into(),
            "-l".into(),
            "1".into(),
            "-i".into(),
            "127.0.0.1".into(),
            "-mi".into(),
            "127.0.0.1".into(),
            "-p".into(),
            free_port().to_string(),
            "-mp".into(),
            media.to_string(),
        ];
        let child = spawn(&dir, args.to_vec());
        Sipp { child, dir }
    }

    /// Run `uac_refer.xml` once to `target` with `pcap` (under
    /// tests/fixtures/) as the caller's audio, to its end; true when SIPp
    /// saw the whole call (REFER accepted, BYE answered).
    pub(crate) fn refer_call(target: SocketAddr, pcap: &str) -> bool {
        let dir = temp_dir();
        let root = crate::support::root();
        let xml = std::fs::read_to_string(root.join("tests/sipp/uac_refer.xml"))
            .unwrap()
            .replace(
                "../fixtures/agitated-pcmu.pcap",
                root.join("tests/fixtures").join(pcap).to_str().unwrap(),
            );
        let sf = dir.join("uac_refer.xml");
        std::fs::write(&sf, xml).unwrap();
        let media = 30_000 + 4 * fastrand::u16(0..5_000);
        let args = [
            target.to_string(),
            "-sf".into(),
            sf.to_string_lossy().into_owned(),
            "-m".into(),
            "1".into(),
            "-l".into(),
            "1".into(),
            "-i".into(),
            "127.0.0.1".into(),
            "-mi".into(),
            "127.0.0.1".into(),
            "-p".into(),
            free_port().to_string(),
            "-mp".into(),
            media.to_string(),
        ];
        let mut child = spawn(&dir, args.to_vec());
        child.wait().expect("sipp ran").success()
    }

    /// A SIPp server (no remote host) on `port` running `scenario`.
    pub(crate) fn server(scenario: &str, port: u16) -> Sipp {
        let dir = temp_dir();
        let sf = crate::support::root().join("tests/sipp").join(scenario);
        let args = vec![
            "-sf".into(),
            sf.to_string_lossy().into_owned(),
            "-m".into(),
            "1".into(),
            "-i".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ];
        let child = spawn(&dir, args);
        Sipp { child, dir }
    }

    /// Its `<log>` lines so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("actions.log")).unwrap_or_default()
    }

    /// Wait for it to end (killed after `timeout`): its exit status and log.
    pub(crate) fn finish(mut self, timeout: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if !status.success() {
            eprintln!(
                "sipp errors:\n{}",
                std::fs::read_to_string(self.dir.join("errors.log")).unwrap_or_default()
            );
        }
        (status, self.log())
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `REFER-TO: <uri>` lines the scenarios log.
pub(crate) fn refer_targets(log: &str) -> Vec<&str> {
    log.lines()
        .filter_map(|l| l.strip_prefix("REFER-TO: "))
        .collect()
}
