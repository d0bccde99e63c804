//! The dashboard page in a real browser (issue 12, item 2): headless Debian
//! `chromium` opens `/`, two SIPp callers are analysed and transferred, and
//! the DOM the page's own JavaScript built from `/calls` and `/events` shows
//! each call with its queue, the agitated one highlighted as flagged. The
//! browser is driven over the Chrome DevTools Protocol (a WebSocket, through
//! `tungstenite`); a screenshot is left under `target/` as an artefact.

#[path = "support/sipp.rs"]
mod sipp;
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{root, Emonav};

/// Headless Chromium with one page open, and a DevTools session to it.
struct Browser {
    child: Child,
    ws: tungstenite::WebSocket<TcpStream>,
    next_id: u64,
}

impl Browser {
    /// Start `chromium` on `url` with a DevTools port on loopback.
    fn open(url: &str) -> Browser {
        let profile = std::env::temp_dir().join(format!(
            "emonav-chromium-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        let mut child = Command::new("chromium")
            .args([
                "--headless",
                // Tests run as root in CI containers, where the sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1200,900",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium is installed (Debian package chromium; scripts/test.sh installs it)");
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/…"
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if let Some(rest) = line.split("ws://").nth(1) {
                    let _ = tx.send(rest.split('/').next().unwrap_or("").to_string());
                }
            }
        });
        let devtools = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("chromium printed its DevTools address");
        // The page target's own WebSocket, from the DevTools HTTP list.
        let deadline = Instant::now() + Duration::from_secs(10);
        let page_ws = loop {
            let list: Value =
                serde_json::from_str(&http_body(&devtools, "/json/list")).unwrap_or(Value::Null);
            let page = list.as_array().and_then(|l| {
                l.iter()
                    .find(|t| t["type"] == "page" && t["url"].as_str() == Some(url))
            });
            if let Some(p) = page {
                break p["webSocketDebuggerUrl"].as_str().unwrap().to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no page target for {url}: {list}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let stream = TcpStream::connect(&devtools).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let (ws, _) = tungstenite::client(page_ws.as_str(), stream).unwrap();
        Browser {
            child,
            ws,
            next_id: 1,
        }
    }

    /// One DevTools command; its `result`.
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({ "id": id, "method": method, "params": params });
        self.ws
            .send(tungstenite::Message::text(msg.to_string()))
            .unwrap();
        loop {
            // Events the page emits in between are skipped.
            let m = self.ws.read().unwrap();
            let Ok(text) = m.to_text() else { continue };
            let v: Value = serde_json::from_str(text).unwrap();
            if v["id"] == id {
                assert!(v["error"].is_null(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluate `expr` in the page; its value (JSON).
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expr, "returnByValue": true }),
        );
        assert!(r["exceptionDetails"].is_null(), "{expr}: {r}");
        r["result"]["value"].clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Body of a plain HTTP/1.1 GET to `host:port`. Chromium's DevTools server
/// answers HTTP/1.0 requests with nothing and keeps HTTP/1.1 connections
/// open even when asked to close, so the body is read by its Content-Length.
fn http_body(addr: &str, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    let mut r = BufReader::new(s);
    let mut length = 0;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return String::new();
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    if r.read_exact(&mut body).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// What the page shows: rows of the calls table, queue counts, status line.
const READ_PAGE: &str = r##"({
  status: document.getElementById("status").textContent,
  calls: [...document.querySelectorAll("#calls tbody tr")].map(tr => ({
    id: tr.dataset.callId,
    cls: tr.className,
    background: getComputedStyle(tr).backgroundColor,
    cells: [...tr.cells].map(c => c.textContent),
    sparkline_points: (tr.querySelector("polyline") || {getAttribute: () => ""}).getAttribute("points"),
  })),
  queues: [...document.querySelectorAll("#queues tbody tr")].map(tr => [...tr.cells].map(c => c.textContent)),
  recent: [...document.querySelectorAll("#recent li")].map(li => li.className + "|" + li.textContent),
})"##;

#[test]
fn dashboard_in_chromium_shows_each_call_its_queue_and_the_flag() {
    let emonav = Emonav::start("");
    let url = format!("http://{}/", emonav.http);
    let mut browser = Browser::open(&url);
    // The page is live once its EventSource is open.
    let deadline = Instant::now() + Duration::from_secs(10);
    // `?.`: the first evaluations can run before the document is parsed.
    while browser.eval(r#"document.getElementById("status")?.textContent"#) != "live" {
        assert!(Instant::now() < deadline, "{}", browser.eval(READ_PAGE));
        std::thread::sleep(Duration::from_millis(100));
    }

    assert!(
        sipp::Sipp::refer_call(emonav.sip, "agitated-pcmu.pcap"),
        "SIPp call 1 failed"
    );
    assert!(
        sipp::Sipp::refer_call(emonav.sip, "calm-pcmu.pcap"),
        "SIPp call 2 failed"
    );
    let ids: Vec<String> = (0..2)
        .map(|_| {
            let e = emonav.next_event(Duration::from_secs(5));
            assert_eq!(e["outcome"], "transferred", "{e}");
            e["call_id"].as_str().unwrap().to_string()
        })
        .collect();

    // Both ends have reached the page once both rows say "ended".
    let deadline = Instant::now() + Duration::from_secs(5);
    let page = loop {
        let page = browser.eval(READ_PAGE);
        let ended = page["calls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["cells"][1] == "ended")
            .count();
        if ended == 2 {
            break page;
        }
        assert!(Instant::now() < deadline, "{page:#}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let shot = screenshot(&mut browser);
    println!("dashboard screenshot: {}", shot.display());

    let row = |id: &str| -> &Value {
        page["calls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("no row for {id}: {page:#}"))
    };
    let (agitated, calm) = (row(&ids[0]), row(&ids[1]));
    // Caller, queue, scores the JavaScript formatted.
    assert!(
        agitated["cells"][0]
            .as_str()
            .unwrap()
            .contains("sip:caller@127.0.0.1"),
        "{page:#}"
    );
    assert_eq!(
        agitated["cells"][5], "sip:deescalation@127.0.0.1:5070",
        "{page:#}"
    );
    assert_eq!(calm["cells"][5], "sip:standard@127.0.0.1:5070", "{page:#}");
    let arousal = |r: &Value| r["cells"][2].as_str().unwrap().parse::<f64>().unwrap();
    assert!(arousal(agitated) > arousal(calm), "{page:#}");
    // The score events drew a sparkline.
    assert!(
        agitated["sparkline_points"].as_str().unwrap().contains(' '),
        "{page:#}"
    );
    // Flagged: the class, and the style the browser actually applies.
    assert_eq!(agitated["cls"], "flagged ended", "{page:#}");
    assert_eq!(agitated["background"], "rgb(255, 221, 221)", "{page:#}");
    assert_eq!(calm["cls"], "ended", "{page:#}");
    assert_ne!(calm["background"], "rgb(255, 221, 221)", "{page:#}");
    // Per-queue counts and the decision list.
    assert_eq!(
        page["queues"],
        json!([
            ["sip:deescalation@127.0.0.1:5070", "1", "1"],
            ["sip:standard@127.0.0.1:5070", "1", "0"]
        ]),
        "{page:#}"
    );
    let recent = page["recent"].as_array().unwrap();
    assert_eq!(recent.len(), 2, "{page:#}");
    assert!(
        recent[1].as_str().unwrap().starts_with("flagged|")
            && recent[1].as_str().unwrap().contains("FLAGGED"),
        "{page:#}"
    );
    assert_eq!(page["status"], "live", "{page:#}");
}

/// A PNG of the page under `target/`.
fn screenshot(browser: &mut Browser) -> PathBuf {
    let r = browser.call("Page.captureScreenshot", json!({ "format": "png" }));
    let png = data_encoding::BASE64
        .decode(r["data"].as_str().unwrap().as_bytes())
        .unwrap();
    let dir = root().join("target/test-artefacts");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dashboard.png");
    std::fs::write(&path, png).unwrap();
    path
}
