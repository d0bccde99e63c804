//! Caller history (src/history/) with the real binary and real SIPp calls:
//! a third call in 24 h from the same caller goes to the advisor queue, in
//! the embedded SQLite store (callers hashed, a corrupt file recreated) and
//! in a throw-away PostgreSQL cluster; a stopped database still lets the
//! call be routed by emotion within the deadline, the miss counted, and the
//! line statistics shared through it wait for it to come back.

#[path = "support/postgres.rs"]
mod postgres;
#[path = "support/sipp.rs"]
mod sipp;
mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use postgres::Postgres;
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

    // The line statistics shared through the same database: while it is
    // down the exchange fails (counted) and the calls wait; once it is back
    // every call this instance analysed is a row of the shared window.
    let failed = |op: &str| {
        metric(
            &emonav,
            &format!("emonav_line_stats_sync_failures_total{{op=\"{op}\"}}"),
        )
        .unwrap_or(0.0)
    };
    let deadline = Instant::now() + 25 * S;
    while failed("load") < 1.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(failed("load") >= 1.0, "no failed exchange counted");
    pg.ctl_start();
    let rows = || {
        pg.query("SELECT count(*) FROM emonav_line_calls")
            .trim()
            .to_string()
    };
    let deadline = Instant::now() + 25 * S;
    while rows() != "4" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        rows(),
        "4",
        "the four calls' vectors, one written after the restart"
    );
}
