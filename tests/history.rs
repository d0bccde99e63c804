//! Caller history (src/history/) with the real binary and real SIPp calls:
//! a third call in 24 h from the same caller goes to the advisor queue, in
//! the embedded SQLite store (callers hashed, a corrupt file recreated) and
//! in a throw-away PostgreSQL cluster; a stopped database still lets the
//! call be routed by emotion within the deadline, the miss counted.

#[path = "support/sipp.rs"]
mod sipp;
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sipp::{refer_targets, Sipp};
use support::Emonav;

const S: Duration = Duration::from_secs(1);
const ADVISOR: &str = "sip:advisor@127.0.0.1:5070";
const DEESCALATION: &str = "sip:deescalation@127.0.0.1:5070";

/// The history rule first, then the emotion rules of the default profile.
fn profile(history: &str) -> String {
    format!(
        "[history]\n{history}\n\
         [[policy.rules]]\nlabel = \"repeat\"\nrepeat_calls_24h_min = 2\nqueue = \"{ADVISOR}\"\n\
         [[policy.rules]]\nlabel = \"agitated\"\narousal_min = 0.5\nqueue = \"{DEESCALATION}\"\n\
         [[policy.rules]]\nlabel = \"calm\"\narousal_max = 0.5\nqueue = \"sip:standard@127.0.0.1:5070\"\n"
    )
}

/// One SIPp call (always From `sip:caller@…`): its REFER target, after its event line.
fn call(emonav: &Emonav) -> String {
    let (status, log) = Sipp::call(emonav.sip, "uac_refer.xml").finish(30 * S);
    assert!(status.success(), "sipp failed: {status:?}\n{log}");
    let ev = emonav.next_event(10 * S);
    assert_eq!(ev["outcome"], "transferred", "{ev}");
    // The row is written as the call ends, off the call's task.
    std::thread::sleep(Duration::from_millis(300));
    refer_targets(&log).concat()
}

fn three_calls_third_to_advisor(emonav: &Emonav) {
    assert_eq!(call(emonav), DEESCALATION, "first call: by emotion");
    assert_eq!(call(emonav), DEESCALATION, "second call: by emotion");
    assert_eq!(call(emonav), ADVISOR, "third call in 24 h: advisor queue");
}

fn profile_dir(emonav: &Emonav) -> PathBuf {
    emonav.profile.parent().unwrap().to_path_buf()
}

fn metric(emonav: &Emonav, line_start: &str) -> Option<f64> {
    let (_, body) = emonav.http_get("/metrics");
    body.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn sqlite_third_call_goes_to_advisor_callers_hashed_corrupt_file_recreated() {
    let emonav = Emonav::start(&profile(
        "backend = \"sqlite\"\nfile = \"calls.sqlite\"\nhash_salt = \"test-salt\"\n",
    ));
    three_calls_third_to_advisor(&emonav);
    let file = profile_dir(&emonav).join("calls.sqlite");
    let db = rusqlite::Connection::open(&file).unwrap();
    let mut st = db.prepare("SELECT caller, queue FROM calls").unwrap();
    let rows: Vec<(String, String)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 3, "{rows:?}");
    let key = emonav::caller_key("<sip:caller@127.0.0.1>", "test-salt").unwrap();
    assert!(
        rows.iter().all(|(c, _)| *c == key && c.len() == 64),
        "{rows:?}"
    );
    assert_eq!(rows[2].1, ADVISOR);
    drop(st);
    drop(db);
    for f in std::fs::read_dir(profile_dir(&emonav)).unwrap() {
        let path = f.unwrap().path();
        if path.to_string_lossy().contains("calls.sqlite") {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(10).any(|w| w == b"sip:caller"),
                "{} holds the caller in clear",
                path.display()
            );
        }
    }
    assert_eq!(
        metric(&emonav, "emonav_history_misses_total{reason=\"error\"}"),
        Some(0.0)
    );
}

#[test]
fn sqlite_corrupt_file_is_moved_aside_and_recreated() {
    let dir = std::env::temp_dir().join(format!("emonav-hist-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("calls.sqlite"), vec![0x5a; 8192]).unwrap();
    let emonav = Emonav::start(&profile(&format!(
        "backend = \"sqlite\"\nfile = \"{}\"\n",
        dir.join("calls.sqlite").display()
    )));
    // (The warning comes before the "listening" line the start-up waits for,
    // so it is consumed there; the file moved aside below is the proof.)
    assert_eq!(call(&emonav), DEESCALATION);
    let db = rusqlite::Connection::open(dir.join("calls.sqlite")).unwrap();
    let n: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM calls WHERE caller = 'caller'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1, "the new file holds the call (unhashed: no salt)");
    let aside = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("calls.sqlite.corrupt-")
        })
        .expect("corrupt file kept aside");
    assert_eq!(std::fs::read(aside.path()).unwrap(), vec![0x5a; 8192]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A throw-away PostgreSQL cluster on a free loopback port, stopped on drop.
struct Postgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl Postgres {
    fn bin_dir() -> PathBuf {
        if let Ok(out) = Command::new("sh")
            .args(["-c", "command -v initdb"])
            .output()
        {
            let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !p.is_empty() {
                return Path::new(&p).parent().unwrap().to_path_buf();
            }
        }
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is not installed (scripts/test.sh installs it)")
            .filter_map(|e| Some(e.ok()?.path().join("bin")))
            .filter(|p| p.join("initdb").exists())
            .collect();
        dirs.sort();
        dirs.pop()
            .expect("no initdb under /usr/lib/postgresql/*/bin")
    }

    fn run(&self, prog: &str, args: &[&str]) -> std::process::Output {
        let exe = self.bin.join(prog);
        let mut cmd = if self.as_postgres {
            // initdb and postgres refuse to run as root.
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        cmd.args(args).output().expect(prog)
    }

    fn start() -> Postgres {
        let dir = std::env::temp_dir().join(format!("emonav-pg-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let as_postgres = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
        if as_postgres {
            assert!(Command::new("chown")
                .args(["-R", "postgres"])
                .arg(&dir)
                .status()
                .unwrap()
                .success());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = Postgres {
            bin: Self::bin_dir(),
            dir,
            port,
            as_postgres,
        };
        let data = pg.dir.join("data");
        let out = pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "emonav",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.ctl_start();
        pg
    }

    fn ctl_start(&self) {
        let data = self.dir.join("data");
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("pg.log");
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &opts,
                "-w",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn stop(&self) {
        let data = self.dir.join("data");
        let _ = self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    fn url(&self) -> String {
        format!("postgres://emonav@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn postgres_third_call_goes_to_advisor_and_a_stopped_database_only_costs_the_history() {
    let pg = Postgres::start();
    let emonav = Emonav::start(&profile(&format!(
        "backend = \"postgres\"\npostgres_url = \"{}\"\nhash_salt = \"s\"\n",
        pg.url()
    )));
    three_calls_third_to_advisor(&emonav);

    pg.stop();
    let started = Instant::now();
    assert_eq!(
        call(&emonav),
        DEESCALATION,
        "routed by emotion without the history"
    );
    assert!(started.elapsed() < 15 * S, "{:?}", started.elapsed());
    let misses = metric(&emonav, "emonav_history_misses_total{reason=\"error\"}").unwrap_or(0.0)
        + metric(&emonav, "emonav_history_misses_total{reason=\"timeout\"}").unwrap_or(0.0);
    assert_eq!(misses, 1.0, "the miss is counted once");
}
