//! `[webhooks]` against a real HTTP receiver on loopback: a flagged call is
//! POSTed while the call is still up, retried until taken, and alerts the
//! receiver could not take survive a restart in the spool.

mod support;

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use support::{fixture, Emonav, Uac};

const S: Duration = Duration::from_secs(1);

/// One POST the receiver got.
struct Post {
    path: String,
    headers: HashMap<String, String>,
    body: Value,
}

/// A minimal HTTP/1.1 receiver: answers each request with the next status of
/// its script (200 once the script is used up) and reports what it got.
struct Receiver_ {
    addr: SocketAddr,
    posts: Receiver<Post>,
}

impl Receiver_ {
    fn start(script: &[u16]) -> Self {
        Self::on(TcpListener::bind("127.0.0.1:0").unwrap(), script)
    }

    fn on(listener: TcpListener, script: &[u16]) -> Self {
        let addr = listener.local_addr().unwrap();
        let script = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
        let (tx, posts) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let mut r = BufReader::new(stream);
                let mut line = String::new();
                if r.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let mut headers = HashMap::new();
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = h.trim_end().split_once(':') {
                        headers.insert(k.to_ascii_lowercase(), v.trim().to_string());
                    }
                }
                let len: usize = headers
                    .get("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; len];
                if r.read_exact(&mut body).is_err() {
                    continue;
                }
                let status = script.lock().unwrap().pop_front().unwrap_or(200);
                let mut s = r.into_inner();
                let _ = write!(
                    s,
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if tx
                    .send(Post {
                        path,
                        headers,
                        body,
                    })
                    .is_err()
                {
                    break;
                }
            }
        });
        Self { addr, posts }
    }

    fn next(&self, timeout: Duration) -> Post {
        self.posts
            .recv_timeout(timeout)
            .expect("a webhook POST within the time")
    }
}

/// An agitated caller, answered, whose REFER has arrived (not answered yet:
/// the call is still up).
fn agitated_call_up_to_its_refer(emonav: &Emonav) -> (Uac, emonav_sip::message::Request) {
    let mut uac = Uac::new(emonav.sip);
    uac.send_invite(&uac.g711_offer());
    assert_eq!(uac.invite_final(5 * S).code, 200);
    uac.ack(true);
    uac.play(fixture("agitated.ul"), 0);
    let refer = uac.expect_request("REFER", 6 * S).expect("REFER");
    (uac, refer)
}

fn complete_transfer(uac: &mut Uac, refer: &emonav_sip::message::Request) {
    uac.respond(refer, 202, "Accepted");
    let n = uac.notify("SIP/2.0 200 OK", true);
    assert_eq!(uac.expect_response(&n, 2 * S).expect("200").code, 200);
    let bye = uac.expect_request("BYE", 3 * S).expect("BYE");
    uac.respond(&bye, 200, "OK");
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[test]
fn a_flagged_call_is_posted_while_still_up_and_retried_until_taken() {
    // The receiver fails the first POST.
    let receiver = Receiver_::start(&[503]);
    let emonav = Emonav::start(&format!(
        "[webhooks]\nurl = \"http://{}/hooks/emonav\"\nevents = [\"flag\", \"call_end\"]\n\
         authorization = \"Bearer s3cret\"\nretry_first_ms = 200\n",
        receiver.addr
    ));
    let (mut uac, refer) = agitated_call_up_to_its_refer(&emonav);

    // The alert comes with the decision: the REFER is still unanswered.
    let first = receiver.next(3 * S);
    assert_eq!(first.path, "/hooks/emonav");
    assert_eq!(first.headers["authorization"], "Bearer s3cret");
    assert_eq!(first.headers["content-type"], "application/json");
    let alert = &first.body;
    assert_eq!(alert["event"], "flag", "{alert}");
    assert_eq!(alert["call"]["call_id"], uac.call_id.as_str(), "{alert}");
    assert_eq!(alert["call"]["flagged"], true, "{alert}");
    assert_eq!(
        alert["call"]["queue"], "sip:deescalation@127.0.0.1:5070",
        "{alert}"
    );
    // Refused with 503: the same event again, same id, after the back-off.
    let again = receiver.next(3 * S);
    assert_eq!(again.body["id"], alert["id"], "{}", again.body);
    assert_eq!(again.body["event"], "flag");

    complete_transfer(&mut uac, &refer);
    let record = emonav.next_event(5 * S);
    assert_eq!(record["outcome"], "transferred");
    let end = receiver.next(3 * S);
    assert_eq!(end.body["event"], "call_end", "{}", end.body);
    assert_eq!(end.body["call"]["call_id"], uac.call_id.as_str());
    assert_eq!(end.body["call"]["outcome"], "transferred");
    assert_ne!(end.body["id"], alert["id"]);

    // The receiver reports a POST as it answers it: emonav counts the
    // delivery a moment later.
    let delivered = "emonav_webhook_events_total{result=\"delivered\"}";
    let deadline = std::time::Instant::now() + 2 * S;
    let text = loop {
        let (_, text) = emonav.http_get("/metrics");
        if metric(&text, delivered) == 2.0 || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(metric(&text, delivered), 2.0);
    assert_eq!(metric(&text, "emonav_webhook_retries_total"), 1.0);
    assert_eq!(metric(&text, "emonav_webhook_pending"), 0.0);
}

#[test]
fn alerts_the_receiver_missed_survive_a_restart_in_the_spool() {
    // A port with nobody on it yet: every POST is refused a connection.
    let port_holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = port_holder.local_addr().unwrap();
    drop(port_holder);
    let mut emonav = Emonav::start(&format!(
        "[webhooks]\nurl = \"http://{addr}/alerts\"\nspool_file = \"spool.jsonl\"\n\
         retry_first_ms = 100\nretry_max_s = 1\n"
    ));
    let spool = emonav.profile.parent().unwrap().join("spool.jsonl");
    let (mut uac, refer) = agitated_call_up_to_its_refer(&emonav);
    complete_transfer(&mut uac, &refer);
    assert_eq!(emonav.next_event(5 * S)["outcome"], "transferred");
    // Written while the receiver fails, and at the latest at shutdown.
    assert!(emonav.terminate(10 * S).is_some_and(|s| s.success()));
    let text = std::fs::read_to_string(&spool).expect("spool written");
    let spooled: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(spooled.len(), 1, "{text}");
    assert_eq!(spooled[0]["event"], "flag");
    assert_eq!(spooled[0]["call"]["call_id"], uac.call_id.as_str());

    // The receiver is back; so is emonav, with the same profile.
    let receiver = Receiver_::on(TcpListener::bind(addr).unwrap(), &[]);
    let mut emonav = Emonav::start_with_profile(&emonav.profile);
    let post = receiver.next(5 * S);
    assert_eq!(post.body["id"], spooled[0]["id"], "{}", post.body);
    assert_eq!(post.path, "/alerts");
    // Delivered: the spool goes.
    let deadline = std::time::Instant::now() + 5 * S;
    while spool.exists() {
        assert!(std::time::Instant::now() < deadline, "spool still there");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(emonav.terminate(10 * S).is_some_and(|s| s.success()));
    assert!(!spool.exists());
}
