//! Scale-out: Kamailio's dispatcher (sip-profiles/kamailio/kamailio.cfg and
//! dispatcher.list, as shipped, with the test's ports filled in) in front of
//! three emonav instances running sip-profiles/kamailio/emonav.toml, each
//! with its own SIP port, HTTP port and RTP range. SIPp places a few hundred
//! calls with audio through the proxy; one instance is killed (SIGKILL) and
//! another drained (SIGTERM) while they run. What an operator checks
//! afterwards, from Kamailio's log, each instance's event lines and SIPp's
//! log: every call the proxy sent to a live instance was answered and
//! transferred, the calls were spread, the killed instance left rotation
//! within one probe interval plus one probe timeout, the drained one took no
//! new call and exited 0 after its last one, and nothing leaked. The
//! instances share one throw-away PostgreSQL ([history] backend =
//! "postgres"): a caller's third call goes to a distinct queue whichever
//! instance took the earlier two, and the line-adaptation window of every
//! instance is in the database, where an instance started afterwards loads
//! it. The figures are printed (`cargo test --test scale_out -- --nocapture`) and
//! quoted in docs/scale-out.md.

#[path = "support/kamailio.rs"]
mod kamailio_proc;
#[path = "support/postgres.rs"]
mod postgres;
mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kamailio_proc::{free_port, temp_dir, Kamailio};
use postgres::Postgres;
use support::{root, Emonav};

/// Callers, each calling once per round, rounds in turn: a caller's calls
/// are `CALLERS / RATE` seconds apart.
const CALLERS: usize = 100;
const ROUNDS: usize = 3;
/// Calls placed, and at what rate (calls per second).
const CALLS: usize = CALLERS * ROUNDS;
const RATE: usize = 10;
/// When the instances are stopped, seconds into the run.
const KILL_AT_S: u64 = 10;
const DRAIN_AT_S: u64 = 17;
/// The cfg's probe interval (PING_S) and branch timeout (FR_MS), as shipped.
const PING_S: f64 = 1.0;
const FR_S: f64 = 2.0;
/// The queue of the history rule the test adds: a caller's third call in
/// 24 h (two earlier ones recorded), whatever it sounds like.
const REPEAT_MIN: usize = 2;
/// `[history] pool_size` (the default): PostgreSQL connections an instance
/// may keep open.
const POOL_SIZE: usize = 4;

/// Seconds since the epoch, as Kamailio's `$TV(Sn)` writes them.
fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Replace `from` by `to` in `text`, which must hold it: a template that no
/// longer has the placeholder must fail the test, not run with defaults.
fn fill(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "template lost {from:?}");
    text.replace(from, to)
}

/// One emonav instance from the shipped profile: queues on the proxy at
/// `kamailio`, RTP ports `rtp_base`.. (1,000 of them, as the profile
/// splits them); SIP and HTTP on free ports; the caller history (and with
/// it the line statistics) in the PostgreSQL at `pg_url`, and a first rule
/// that sends repeat callers to `sip:repeat@<proxy>`.
fn instance(kamailio: SocketAddr, rtp_base: u16, pg_url: &str) -> Emonav {
    let shipped =
        std::fs::read_to_string(root().join("sip-profiles/kamailio/emonav.toml")).unwrap();
    let mut profile = fill(&shipped, "127.0.0.1:5060", &kamailio.to_string());
    profile = fill(
        &profile,
        "rtp_port_min = 20000",
        &format!("rtp_port_min = {rtp_base}"),
    );
    profile = fill(
        &profile,
        "rtp_port_max = 20999",
        &format!("rtp_port_max = {}", rtp_base + 999),
    );
    profile = fill(
        &profile,
        "[[policy.rules]]\nlabel = \"agitated\"",
        &format!(
            "[[policy.rules]]\nlabel = \"repeat\"\nrepeat_calls_24h_min = {REPEAT_MIN}\n\
             queue = \"sip:repeat@{kamailio}\"\n\n[[policy.rules]]\nlabel = \"agitated\""
        ),
    );
    profile.push_str(&format!(
        "\n[history]\nbackend = \"postgres\"\npostgres_url = \"{pg_url}\"\n\
         pool_size = {POOL_SIZE}\n"
    ));
    let path = temp_dir("scale-profile").join("emonav.toml");
    std::fs::write(&path, profile).unwrap();
    Emonav::start_with_profile(&path)
}

/// The shipped dispatcher.list with the instances' and the queue's ports.
fn dispatcher_list(instances: &[SocketAddr], queue: SocketAddr) -> PathBuf {
    let shipped =
        std::fs::read_to_string(root().join("sip-profiles/kamailio/dispatcher.list")).unwrap();
    let mut list = fill(&shipped, "127.0.0.1:5070", &queue.to_string());
    for (i, addr) in instances.iter().enumerate() {
        list = fill(&list, &format!("127.0.0.1:{}", 5061 + i), &addr.to_string());
    }
    let path = temp_dir("scale-ds").join("dispatcher.list");
    std::fs::write(&path, list).unwrap();
    path
}

/// A SIPp process of a tests/scale_out/ scenario, its logs in a folder.
struct Sipp {
    child: Child,
    dir: PathBuf,
}

impl Sipp {
    fn spawn(scenario: &str, args: &[String]) -> Sipp {
        let dir = temp_dir("scale-sipp");
        let xml = std::fs::read_to_string(root().join("tests/scale_out").join(scenario))
            .unwrap()
            .replace(
                "../fixtures/agitated-pcmu.pcap",
                root()
                    .join("tests/fixtures/agitated-pcmu.pcap")
                    .to_str()
                    .unwrap(),
            );
        std::fs::write(dir.join(scenario), xml).unwrap();
        let media = 30_000 + 4 * fastrand::u16(0..5_000);
        let child = Command::new("sipp")
            .args(args)
            .arg("-sf")
            .arg(dir.join(scenario))
            .args(["-i", "127.0.0.1", "-mi", "127.0.0.1"])
            .args(["-mp", &media.to_string(), "-nostdin"])
            .args(["-trace_logs", "-log_file"])
            .arg(dir.join("actions.log"))
            .args(["-trace_err", "-error_file"])
            .arg(dir.join("errors.log"))
            .args(["-trace_stat", "-fd", "1", "-stf"])
            .arg(dir.join("stats.csv"))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sipp is installed (Debian package sip-tester; scripts/test.sh installs it)");
        Sipp { child, dir }
    }

    /// Wait up to `timeout` for it to exit (then kill it); its exit code.
    fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A cumulative counter of SIPp's own statistics (`-trace_stat`), as
    /// of its last dump (at exit).
    fn stat(&self, column: &str) -> Option<u64> {
        let csv = std::fs::read_to_string(self.dir.join("stats.csv")).ok()?;
        let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
        let header: Vec<&str> = lines.next()?.split(';').collect();
        let i = header.iter().position(|h| *h == column)?;
        lines.next_back()?.split(';').nth(i)?.trim().parse().ok()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("actions.log")).unwrap_or_default()
    }

    fn errors(&self) -> String {
        std::fs::read_to_string(self.dir.join("errors.log")).unwrap_or_default()
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Values of `KEY: value` lines in a SIPp -trace_logs file.
fn logged<'a>(log: &'a str, key: &str) -> Vec<&'a str> {
    let prefix = format!("{key}: ");
    log.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .collect()
}

/// Kamailio's `kamailio: <what> <a> to|at <b> at <time>` lines, as
/// (first word after `what`, second, time): the dispatch of a Call-ID to an
/// instance, or a destination going down.
fn kamailio_lines(log: &str, what: &str) -> Vec<(String, String, f64)> {
    let marker = format!("kamailio: {what} ");
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find(&marker)? + marker.len()..];
            let words: Vec<&str> = rest.split_whitespace().collect();
            match words.as_slice() {
                [a, "to", b, "at", t] => Some((a.to_string(), b.to_string(), t.parse().ok()?)),
                [a, "at", t] => Some((a.to_string(), String::new(), t.parse().ok()?)),
                _ => None,
            }
        })
        .collect()
}

/// Every call-end event line an instance wrote, until its output closes or
/// stays quiet for `quiet`.
fn events(e: &Emonav, quiet: Duration) -> Vec<serde_json::Value> {
    std::iter::from_fn(|| e.next_event_opt(quiet)).collect()
}

/// Open file descriptors of a process: all of them, and how many are TCP
/// connections to `port` (its PostgreSQL pool, which keeps up to
/// [`POOL_SIZE`] connections open between calls by design).
fn open_fds(pid: u32, port: u16) -> (usize, usize) {
    let mut to_port = HashSet::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            let rem_port = cols
                .get(2)
                .and_then(|r| r.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if rem_port == Some(port) {
                if let Some(inode) = cols.get(9) {
                    to_port.insert(format!("socket:[{inode}]"));
                }
            }
        }
    }
    let links: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .map(|l| l.to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let pg = links.iter().filter(|l| to_port.contains(*l)).count();
    (links.len(), pg)
}

/// The callers' -inf file: every caller once per round, rounds in turn.
fn callers_file() -> PathBuf {
    let mut csv = String::from("SEQUENTIAL\n");
    for round in 1..=ROUNDS {
        for c in 1..=CALLERS {
            csv.push_str(&format!("c{c:03};{round}\n"));
        }
    }
    let path = temp_dir("scale-callers").join("callers.csv");
    std::fs::write(&path, csv).unwrap();
    path
}

/// A number after `key=` in a log line.
fn log_field(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(&format!("{key}="))? + key.len() + 1..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Which instances answered each caller (the From URI of its INVITE): the
/// precondition of the repeat-caller check, callers served by several
/// instances.
fn callers_across_instances(
    per_instance: &[(&str, &[serde_json::Value])],
) -> BTreeMap<String, HashSet<String>> {
    let mut callers: BTreeMap<String, HashSet<String>> = BTreeMap::new();
    for (name, events) in per_instance {
        for ev in *events {
            let from = ev["from"].as_str().unwrap_or_default();
            // The caller's identity is its URI, not the per-call tag.
            let uri = from.split(";tag=").next().unwrap_or(from).to_string();
            callers.entry(uri).or_default().insert(name.to_string());
        }
    }
    callers
}

#[test]
fn dispatcher_spreads_calls_fails_over_a_killed_instance_and_drains_another() {
    let kam_port = free_port();
    let kam_addr = SocketAddr::from(([127, 0, 0, 1], kam_port));
    let queue_port = free_port();
    let queue_addr = SocketAddr::from(([127, 0, 0, 1], queue_port));
    let mut queue = Sipp::spawn("uas_queue.xml", &["-p".into(), queue_port.to_string()]);
    let pg = Postgres::start();

    // Disjoint RTP ranges, 1,000 ports each, as the profile splits them.
    let rtp = 20_000 + 4_000 * fastrand::u16(0..6);
    let mut inst: Vec<Emonav> = (0..3u16)
        .map(|i| instance(kam_addr, rtp + 1_000 * i, &pg.url()))
        .collect();
    let names = ["killed", "drained", "survivor"];
    let sips: Vec<SocketAddr> = inst.iter().map(|e| e.sip).collect();
    let list = dispatcher_list(&sips, queue_addr);
    let kamailio = Kamailio::start_cfg(
        &root().join("sip-profiles/kamailio/kamailio.cfg"),
        kam_port,
        &[format!("DS_LIST=\"{}\"", list.display())],
    );
    // The first probe round: every instance answered 2xx.
    std::thread::sleep(Duration::from_millis(1_500));
    let survivor_fds = open_fds(inst[2].pid(), pg.port());
    let pids: Vec<u32> = inst.iter().map(|e| e.pid()).collect();

    let t0 = Instant::now();
    let mut callers = Sipp::spawn(
        "uac_caller.xml",
        &[
            kam_addr.to_string(),
            "-p".into(),
            free_port().to_string(),
            "-m".into(),
            CALLS.to_string(),
            "-r".into(),
            RATE.to_string(),
            "-l".into(),
            "200".into(),
            "-recv_timeout".into(),
            "20000".into(),
            "-timeout".into(),
            "120".into(),
            "-inf".into(),
            callers_file().to_string_lossy().into_owned(),
        ],
    );

    std::thread::sleep(Duration::from_secs(KILL_AT_S).saturating_sub(t0.elapsed()));
    let killed_at = now_s();
    inst[0].signal("KILL");
    std::thread::sleep(Duration::from_secs(DRAIN_AT_S).saturating_sub(t0.elapsed()));
    let drained_at = now_s();
    inst[1].signal("TERM");

    let drained_exit = inst[1].wait_exit(Duration::from_secs(30));
    let code = callers.wait(Duration::from_secs(90));
    let run_s = t0.elapsed().as_secs_f64();
    let per_instance: Vec<Vec<serde_json::Value>> = inst
        .iter()
        .map(|e| events(e, Duration::from_millis(1_500)))
        .collect();
    let klog = kamailio.log_text();
    let sipp_log = callers.log();
    let context = format!(
        "SIPp exit {code:?}, errors (head):\n{}\nKamailio log (tail):\n{}",
        callers.errors().chars().take(4_000).collect::<String>(),
        klog.lines()
            .rev()
            .take(80)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );

    // Where Kamailio sent each call: its last dispatch is the instance that
    // had it (earlier ones failed over).
    let mut dispatches: HashMap<String, Vec<(String, f64)>> = HashMap::new();
    for (cid, dst, t) in kamailio_lines(&klog, "dispatch") {
        dispatches.entry(cid).or_default().push((dst, t));
    }
    assert_eq!(
        dispatches.len(),
        CALLS,
        "calls the proxy dispatched\n{context}"
    );
    assert!(!klog.contains("bypasses emonav"), "{context}");
    let uri = |a: &SocketAddr| format!("sip:{a}");
    let index_of = |dst: &str| sips.iter().position(|a| uri(a) == dst);
    let done: HashSet<&str> = logged(&sipp_log, "DONE").into_iter().collect();
    let transferred: Vec<HashMap<String, &serde_json::Value>> = per_instance
        .iter()
        .map(|evs| {
            evs.iter()
                .map(|e| (e["call_id"].as_str().unwrap().to_string(), e))
                .collect()
        })
        .collect();

    let mut split = [0usize; 3];
    let mut lost = Vec::new();
    let mut record_lost_with_process = Vec::new();
    for (cid, tries) in &dispatches {
        let (dst, at) = tries.last().unwrap();
        let i = index_of(dst).unwrap_or_else(|| panic!("{cid} dispatched to {dst}\n{context}"));
        split[i] += 1;
        let ok = done.contains(cid.as_str());
        let event = transferred[i].get(cid);
        if i == 0 && *at < killed_at {
            // In flight on the killed instance: may be lost, and only then.
            match (ok, event) {
                (false, _) => lost.push(cid.clone()),
                (true, None) => record_lost_with_process.push(cid.clone()),
                (true, Some(ev)) => assert_eq!(ev["outcome"], "transferred", "{ev}"),
            }
            continue;
        }
        assert!(
            ok,
            "{cid} went to live instance {} at {at} and did not complete\n{context}",
            names[i]
        );
        let ev = event.unwrap_or_else(|| panic!("{cid}: no event on {}\n{context}", names[i]));
        assert_eq!(ev["outcome"], "transferred", "{ev}\n{context}");
        assert_eq!(ev["refer_attempts"][0]["response"], 202, "{ev}");
    }
    assert_eq!(done.len() + lost.len(), CALLS, "{context}");
    // SIPp's own count agrees: the lost calls are the calls it failed.
    assert_eq!(
        callers.stat("SuccessfulCall(C)"),
        Some(done.len() as u64),
        "{context}"
    );
    assert_eq!(
        callers.stat("FailedCall(C)"),
        Some(lost.len() as u64),
        "{context}"
    );

    // Out of rotation: no dispatch to the killed instance after one probe
    // interval and one probe timeout (plus scheduling slack).
    let bound = PING_S + FR_S + 1.0;
    let last_to_killed = dispatches
        .values()
        .flatten()
        .filter(|(d, _)| *d == uri(&sips[0]))
        .map(|(_, t)| *t)
        .fold(0.0, f64::max);
    assert!(
        last_to_killed < killed_at + bound,
        "dispatched to the killed instance {:.2} s after the kill\n{context}",
        last_to_killed - killed_at
    );
    let down_after = |i: usize, since: f64| {
        kamailio_lines(&klog, "destination down")
            .into_iter()
            .find(|(d, _, t)| *d == uri(&sips[i]) && *t >= since)
            .map(|(_, _, t)| t - since)
    };
    let killed_down = down_after(0, killed_at)
        .unwrap_or_else(|| panic!("the killed instance never went down\n{context}"));
    assert!(killed_down < bound, "{killed_down} s\n{context}");
    let drained_down = down_after(1, drained_at)
        .unwrap_or_else(|| panic!("the drained instance never went down\n{context}"));
    assert!(drained_down < bound, "{drained_down} s\n{context}");

    // The drained instance took no new call and exited 0 after its last:
    // every call it had started before it first refused one (503 to an
    // INVITE, or the probe that took it down), which came right after the
    // SIGTERM.
    let drained_exit = drained_exit.expect("the drained instance did not exit within 30 s");
    assert!(drained_exit.success(), "{drained_exit:?}");
    let drain_seen = drained_at + drained_down;
    // The drain had calls to finish (and they completed: checked above).
    let finished_in_drain = per_instance[1]
        .iter()
        .filter(|ev| {
            let start = ev["started_unix_ms"].as_u64().unwrap();
            let end = start + ev["duration_ms"].as_u64().unwrap();
            end as f64 / 1000.0 > drained_at
        })
        .count();
    assert!(finished_in_drain > 0, "no call in progress at the SIGTERM");
    for ev in &per_instance[1] {
        let started = ev["started_unix_ms"].as_u64().unwrap() as f64 / 1000.0;
        assert!(
            started < drain_seen,
            "call started {:.3} s after the drain was seen: {ev}",
            started - drain_seen
        );
    }
    let failed_over_from_drained = dispatches
        .values()
        .filter(|tries| {
            tries.len() > 1
                && tries[..tries.len() - 1]
                    .iter()
                    .any(|(d, t)| *d == uri(&sips[1]) && *t >= drained_at)
        })
        .count();

    // Spread: round robin over the instances that were up.
    for (i, n) in split.iter().enumerate() {
        assert!(
            *n >= 15,
            "{} took {n} calls: {split:?}\n{context}",
            names[i]
        );
    }
    let failovers = dispatches.values().filter(|t| t.len() > 1).count();

    // Every transfer went to a queue on the proxy.
    let refer_to = logged(&sipp_log, "REFER-TO");
    assert!(
        refer_to
            .iter()
            .all(|r| r.ends_with(&format!("@{kam_addr}"))),
        "{refer_to:?}"
    );

    let repeat = callers_across_instances(&[
        (names[0], &per_instance[0]),
        (names[1], &per_instance[1]),
        (names[2], &per_instance[2]),
    ]);
    assert!(
        repeat.values().any(|seen| seen.len() == 3),
        "no caller reached all three instances: {repeat:?}"
    );

    // Repeat callers, whichever instance answers: a call whose caller has
    // REPEAT_MIN earlier calls recorded (ended with an event line, hence a
    // history row) goes to the repeat queue, and no other call does. An
    // earlier call on the killed instance whose record may or may not have
    // reached the database as the process died leaves its caller's later
    // calls unchecked (counted).
    let repeat_queue = format!("sip:repeat@{kam_addr}");
    let placed: HashMap<&str, (&str, usize)> = logged(&sipp_log, "CALL")
        .into_iter()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            Some((*w.first()?, (*w.get(1)?, w.get(2)?.parse().ok()?)))
        })
        .collect();
    assert_eq!(placed.len(), CALLS, "CALL lines in SIPp's log");
    // Per call: answered by (instance), recorded in the history (None: unknown).
    let fate = |cid: &str| -> (usize, Option<bool>) {
        let (dst, _) = dispatches[cid].last().unwrap();
        let i = index_of(dst).unwrap();
        let recorded = match transferred[i].get(cid) {
            Some(ev) if i == 0 => {
                let end =
                    ev["started_unix_ms"].as_u64().unwrap() + ev["duration_ms"].as_u64().unwrap();
                ((end as f64 / 1000.0) < killed_at - 1.0).then_some(true)
            }
            Some(_) => Some(true),
            // Never answered to the end on the killed instance: no record.
            None if i == 0 && !done.contains(cid) => Some(false),
            None => None,
        };
        (i, recorded)
    };
    let mut by_caller: HashMap<&str, Vec<(usize, &str)>> = HashMap::new();
    for (cid, (caller, round)) in &placed {
        by_caller.entry(caller).or_default().push((*round, cid));
    }
    let (mut checked, mut unknown, mut recognised, mut across) = (0, 0, 0, 0);
    let mut wrong = Vec::new();
    for calls in by_caller.values_mut() {
        calls.sort();
        for (k, (_, cid)) in calls.iter().enumerate() {
            let (i, _) = fate(cid);
            let Some(ev) = transferred[i].get(*cid) else {
                continue;
            };
            let earlier: Vec<(usize, Option<bool>)> =
                calls[..k].iter().map(|(_, c)| fate(c)).collect();
            if earlier.iter().any(|(_, r)| r.is_none()) {
                unknown += 1;
                continue;
            }
            checked += 1;
            let expect = earlier.iter().filter(|(_, r)| *r == Some(true)).count() >= REPEAT_MIN;
            let got = ev["queue"] == repeat_queue.as_str();
            if got != expect {
                wrong.push(format!(
                    "{cid} on {}: {earlier:?} -> {}",
                    names[i], ev["queue"]
                ));
            }
            if got {
                recognised += 1;
                if earlier.iter().all(|(j, _)| *j != i) {
                    across += 1;
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "repeat callers misrouted: {wrong:#?}\n{context}"
    );
    assert!(
        across > 0 && recognised >= CALLERS / 2,
        "recognised {recognised}, {across} on an instance that took neither earlier call"
    );

    // The REFER's target through the proxy: a transferee INVITEs the
    // Refer-To URI (the proxy), which relays it to the queue platform.
    let target = refer_to.first().expect("a REFER").to_string();
    let user = target
        .strip_prefix("sip:")
        .and_then(|t| t.split('@').next())
        .unwrap()
        .to_string();
    let mut transferee = Sipp::spawn(
        "uac_transferee.xml",
        &[
            kam_addr.to_string(),
            "-s".into(),
            user.clone(),
            "-p".into(),
            free_port().to_string(),
            "-m".into(),
            "1".into(),
            "-timeout".into(),
            "20".into(),
        ],
    );
    let code = transferee.wait(Duration::from_secs(25));
    assert_eq!(code, Some(0), "{}\n{context}", transferee.errors());
    let rr = logged(&transferee.log(), "QUEUE-RR").join(" ");
    assert!(rr.contains(&format!("sip:{kam_addr};lr")), "{rr}");

    // Nothing leaked: the survivor is back to its idle descriptors, then
    // drains and exits 0; the queue saw the transferee through the proxy.
    // Its database connections are the pool's, at most POOL_SIZE.
    let deadline = Instant::now() + Duration::from_secs(10);
    let other = |(all, pg): (usize, usize)| all - pg;
    let mut fds = open_fds(inst[2].pid(), pg.port());
    while other(fds) > other(survivor_fds) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        fds = open_fds(inst[2].pid(), pg.port());
    }
    assert!(
        other(fds) <= other(survivor_fds) && fds.1 <= POOL_SIZE,
        "survivor holds {fds:?} descriptors (all, PostgreSQL), {survivor_fds:?} before the run"
    );
    let (_, metrics) = inst[2].http_get("/metrics");
    assert!(metrics.contains("emonav_calls_active 0\n"), "{metrics}");
    for zero in [
        "emonav_history_misses_total{reason=\"timeout\"} 0\n",
        "emonav_history_misses_total{reason=\"error\"} 0\n",
        "emonav_line_stats_sync_failures_total{op=\"save\"} 0\n",
        "emonav_line_stats_sync_failures_total{op=\"load\"} 0\n",
    ] {
        assert!(metrics.contains(zero), "{zero}{metrics}");
    }
    let status = inst[2]
        .terminate(Duration::from_secs(10))
        .expect("the survivor did not exit within 10 s of SIGTERM");
    assert!(status.success(), "{status:?}");

    // The line statistics: every call with enough speech that ended on the
    // drained and the surviving instance (both wrote the rest at their
    // SIGTERM) is a row of the shared window, under that instance's name.
    let rows_of: HashMap<u32, u64> = pg
        .query("SELECT instance, count(*) FROM emonav_line_calls WHERE layout LIKE '8000Hz-%' GROUP BY instance")
        .lines()
        .filter_map(|l| {
            let (name, n) = l.split_once('|')?;
            Some((name.rsplit('/').next()?.parse().ok()?, n.parse().ok()?))
        })
        .collect();
    let mut line_rows = [0u64; 3];
    for i in 0..3 {
        line_rows[i] = rows_of.get(&pids[i]).copied().unwrap_or(0);
        if i == 0 {
            continue; // what it had not written yet died with it
        }
        let speech = per_instance[i]
            .iter()
            .filter(|e| e["speech_ms"].as_u64().unwrap_or(0) >= 1_000)
            .count() as u64;
        assert!(
            line_rows[i] >= speech.max(1) && line_rows[i] <= per_instance[i].len() as u64,
            "{}: {} rows for {} calls, {speech} with 1 s of speech: {rows_of:?}",
            names[i],
            line_rows[i],
            per_instance[i].len()
        );
    }
    let total_rows: u64 = rows_of.values().sum();

    // An instance started now loads them: it scores its first call through
    // the deployment's statistics, not from nothing.
    let late = instance(kam_addr, rtp + 3_000, &pg.url());
    let loaded = (0..2)
        .filter_map(|_| {
            late.wait_log(
                "line statistics loaded from PostgreSQL",
                Duration::from_secs(10),
            )
        })
        .find(|l| l.contains("8000Hz-"))
        .expect("the later instance logged no load of the 8 kHz line statistics");
    assert_eq!(log_field(&loaded, "rows"), Some(total_rows), "{loaded}");
    assert_eq!(log_field(&loaded, "calls"), Some(total_rows), "{loaded}");
    let (_, m) = late.http_get("/metrics");
    assert!(m.contains("emonav_calls_active 0\n"), "{m}");
    let mut late = late;
    let status = late.terminate(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let _ = queue.wait(Duration::from_millis(100));
    let qlog = queue.log();
    assert!(
        logged(&qlog, "QUEUE-RURI").contains(&format!("sip:{user}@{queue_addr}").as_str()),
        "{qlog}"
    );
    assert!(
        logged(&qlog, "QUEUE-VIA")
            .iter()
            .any(|v| v.contains(&format!("SIP/2.0/UDP {kam_addr};"))),
        "{qlog}"
    );

    println!(
        "scale-out: {CALLS} calls at {RATE}/s in {run_s:.1} s; completed {}, lost on the killed \
         instance {} (in flight at the kill), of which the caller finished but the record died \
         with the process {}; split killed/drained/survivor {split:?}; failed over {failovers} \
         ({failed_over_from_drained} refused by the draining one); killed instance out of \
         rotation {killed_down:.2} s after SIGKILL, drained one {drained_down:.2} s after SIGTERM \
         ({finished_in_drain} calls finished during its drain); repeat callers: {recognised} \
         calls recognised ({across} by an instance that took neither earlier call), {checked} \
         checked, {unknown} unchecked; line-statistics rows killed/drained/survivor \
         {line_rows:?}, loaded by a later instance {total_rows}; survivor descriptors \
         (all, PostgreSQL) {survivor_fds:?} before, {fds:?} after",
        done.len(),
        lost.len(),
        record_lost_with_process.len(),
    );
}

#[test]
fn with_every_instance_down_the_proxy_sends_the_caller_to_the_default_queue() {
    // No caller stranded: the instances of dispatcher.list are not running
    // (ports nobody listens on), the probes take them out, and the call goes
    // to the default queue without analysis.
    let kam_port = free_port();
    let kam_addr = SocketAddr::from(([127, 0, 0, 1], kam_port));
    let queue_port = free_port();
    let queue_addr = SocketAddr::from(([127, 0, 0, 1], queue_port));
    let mut queue = Sipp::spawn("uas_queue.xml", &["-p".into(), queue_port.to_string()]);
    let dead: Vec<SocketAddr> = (0..3)
        .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
        .collect();
    let list = dispatcher_list(&dead, queue_addr);
    let kamailio = Kamailio::start_cfg(
        &root().join("sip-profiles/kamailio/kamailio.cfg"),
        kam_port,
        &[format!("DS_LIST=\"{}\"", list.display())],
    );
    let downs = |log: &str| {
        kamailio_lines(log, "destination down")
            .into_iter()
            .map(|(d, _, _)| d)
            .collect::<HashSet<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while downs(&kamailio.log_text()).len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = kamailio.log_text();
    assert_eq!(
        downs(&log).len(),
        3,
        "the probes took every instance out\n{log}"
    );

    let mut caller = Sipp::spawn(
        "uac_transferee.xml",
        &[
            kam_addr.to_string(),
            "-s".into(),
            "emonav".into(),
            "-p".into(),
            free_port().to_string(),
            "-m".into(),
            "1".into(),
            "-timeout".into(),
            "20".into(),
        ],
    );
    let code = caller.wait(Duration::from_secs(25));
    let log = kamailio.log_text();
    assert_eq!(code, Some(0), "{}\n{log}", caller.errors());
    assert!(log.contains("no emonav instance up"), "{log}");
    assert!(log.contains("bypasses emonav to default"), "{log}");
    let _ = queue.wait(Duration::from_millis(100));
    let qlog = queue.log();
    assert_eq!(
        logged(&qlog, "QUEUE-RURI"),
        [format!("sip:default@{queue_addr}")],
        "{qlog}"
    );
}
