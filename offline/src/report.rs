//! `emonav report`: a service report from the per-call event lines (the
//! `[events]` JSON lines a running emonav writes): calls per hour and queue,
//! the emotion mix, the flag rate, how long decisions took, transfer
//! failures by cause, repeat callers. As JSON, or as one self-contained
//! HTML page whose charts are inline SVG drawn by `plotters`.
//!
//! Lines are read leniently: a line that is not a call record (another
//! tool's output, a torn last line) is counted as skipped, not fatal, so a
//! report can be made from a log that is still being written.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use plotters::prelude::*;
use serde::Serialize;

/// Which calls a report covers: started in `[since, until)`, unix ms.
#[derive(Debug, Clone, Copy, Default)]
pub struct Window {
    /// Earliest start included.
    pub since_ms: Option<u64>,
    /// First start excluded.
    pub until_ms: Option<u64>,
}

/// Buckets of the decision-time histogram, ms wide, up to [`DELAY_MAX_MS`].
const DELAY_BIN_MS: u64 = 250;
/// Decisions slower than this go in the last bucket.
const DELAY_MAX_MS: u64 = 10_000;

/// One hour's calls (UTC), by queue.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Hour {
    /// Start of the hour, unix seconds.
    pub hour_unix: u64,
    /// The same as RFC 3339, for people.
    pub hour: String,
    /// Calls that started in it.
    pub calls: u64,
    /// Of them, by queue (`none`: no queue chosen, e.g. the caller hung up first).
    pub by_queue: BTreeMap<String, u64>,
    /// Of them, flagged high-risk.
    pub flagged: u64,
}

/// A caller seen more than once in the window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RepeatCaller {
    /// The From URI's user part (or the whole URI when it has none).
    pub caller: String,
    /// Calls in the window.
    pub calls: u64,
    /// Of them, flagged.
    pub flagged: u64,
    /// The queue of their latest call.
    pub last_queue: Option<String>,
}

/// Percentiles of a delay, ms.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Default)]
pub struct Delays {
    /// How many calls had one.
    pub count: u64,
    /// Median.
    pub p50: Option<u64>,
    /// 90th percentile.
    pub p90: Option<u64>,
    /// 99th percentile.
    pub p99: Option<u64>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Report {
    /// Call records counted.
    pub calls: u64,
    /// Lines that were not call records (or did not parse).
    pub skipped_lines: u64,
    /// Calls outside the window.
    pub outside_window: u64,
    /// First and last call start in the window, RFC 3339.
    pub first_call: Option<String>,
    /// Last call start.
    pub last_call: Option<String>,
    /// Calls with a routing decision (a queue chosen).
    pub decided: u64,
    /// Flagged high-risk calls.
    pub flagged: u64,
    /// `flagged / decided`.
    pub flag_rate: Option<f64>,
    /// Calls by outcome (`transferred`, `bridged`, `failed`, `caller_hangup`…).
    pub by_outcome: BTreeMap<String, u64>,
    /// Calls by chosen queue.
    pub by_queue: BTreeMap<String, u64>,
    /// Decided calls by emotion label of the matching rule.
    pub by_emotion: BTreeMap<String, u64>,
    /// Decided calls by why the decision came when it did.
    pub by_reason: BTreeMap<String, u64>,
    /// Calls that reached no queue, by cause.
    pub failures_by_cause: BTreeMap<String, u64>,
    /// Answer → REFER (or → queue INVITE), ms.
    pub answer_to_refer_ms: Delays,
    /// First audio → decision, ms.
    pub first_audio_to_decision_ms: Delays,
    /// Calls per hour (UTC), hours without calls included.
    pub hours: Vec<Hour>,
    /// Callers seen more than once, most calls first (at most 50).
    pub repeat_callers: Vec<RepeatCaller>,
    /// Answer → REFER histogram: calls per 250 ms bucket up to 10 s (last:
    /// slower).
    #[serde(skip)]
    delay_histogram: Vec<u64>,
}

fn rfc3339(unix_ms: u64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms),
    )
    .to_string()
}

/// The caller of a From header value: `"Alice" <sip:alice@host>;tag=x` → `alice`.
fn caller_of(from: &str) -> String {
    let uri = match (from.find('<'), from.find('>')) {
        (Some(a), Some(b)) if a < b => &from[a + 1..b],
        _ => from.split(';').next().unwrap_or(from),
    };
    let rest = uri
        .strip_prefix("sips:")
        .or_else(|| uri.strip_prefix("sip:"))
        .or_else(|| uri.strip_prefix("tel:"));
    match rest {
        Some(r) => match r.split_once('@') {
            Some((user, _)) => user.split(';').next().unwrap_or(user).to_string(),
            None => r.split(';').next().unwrap_or(r).to_string(),
        },
        None => uri.trim().to_string(),
    }
}

fn percentiles(mut v: Vec<u64>) -> Delays {
    v.sort_unstable();
    let at = |q: f64| -> Option<u64> {
        if v.is_empty() {
            return None;
        }
        // Nearest rank.
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        Some(v[rank - 1])
    };
    Delays {
        count: v.len() as u64,
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
    }
}

/// Build the report of the call records in `text` (one JSON object a line).
pub fn build(text: &str, window: Window) -> Report {
    let mut r = Report {
        delay_histogram: vec![0; (DELAY_MAX_MS / DELAY_BIN_MS) as usize + 1],
        ..Report::default()
    };
    let mut hours: BTreeMap<u64, Hour> = BTreeMap::new();
    let mut callers: BTreeMap<String, (u64, RepeatCaller)> = BTreeMap::new();
    let (mut a2r, mut a2d) = (Vec::new(), Vec::new());
    let (mut first, mut last) = (u64::MAX, 0u64);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            r.skipped_lines += 1;
            continue;
        };
        let (Some("call_end"), Some(started)) =
            (v["event"].as_str(), v["started_unix_ms"].as_u64())
        else {
            r.skipped_lines += 1;
            continue;
        };
        if window.since_ms.is_some_and(|s| started < s)
            || window.until_ms.is_some_and(|u| started >= u)
        {
            r.outside_window += 1;
            continue;
        }
        r.calls += 1;
        first = first.min(started);
        last = last.max(started);
        let flagged = v["flagged"].as_bool().unwrap_or(false);
        let queue = v["queue"].as_str().map(str::to_string);
        let outcome = v["outcome"].as_str().unwrap_or("unknown").to_string();
        *r.by_outcome.entry(outcome.clone()).or_default() += 1;
        if let Some(q) = &queue {
            r.decided += 1;
            *r.by_queue.entry(q.clone()).or_default() += 1;
            if let Some(e) = v["emotion"].as_str() {
                *r.by_emotion.entry(e.to_string()).or_default() += 1;
            }
            if let Some(reason) = v["decision_reason"].as_str() {
                *r.by_reason.entry(reason.to_string()).or_default() += 1;
            }
        }
        if flagged {
            r.flagged += 1;
        }
        if outcome == "failed" {
            let cause = v["failure_cause"].as_str().unwrap_or("unknown");
            *r.failures_by_cause.entry(cause.to_string()).or_default() += 1;
        }
        if let Some(ms) = v["answer_to_refer_ms"].as_u64() {
            a2r.push(ms);
            let bin = (ms / DELAY_BIN_MS).min(DELAY_MAX_MS / DELAY_BIN_MS) as usize;
            r.delay_histogram[bin] += 1;
        }
        if let Some(ms) = v["first_audio_to_decision_ms"].as_u64() {
            a2d.push(ms);
        }
        let hour_unix = started / 1000 / 3600 * 3600;
        let h = hours.entry(hour_unix).or_insert_with(|| Hour {
            hour_unix,
            hour: rfc3339(hour_unix * 1000),
            calls: 0,
            by_queue: BTreeMap::new(),
            flagged: 0,
        });
        h.calls += 1;
        h.flagged += u64::from(flagged);
        *h.by_queue
            .entry(queue.clone().unwrap_or_else(|| "none".into()))
            .or_default() += 1;
        let who = caller_of(v["from"].as_str().unwrap_or(""));
        if !who.is_empty() {
            let c = callers.entry(who.clone()).or_insert_with(|| {
                (
                    0,
                    RepeatCaller {
                        caller: who,
                        calls: 0,
                        flagged: 0,
                        last_queue: None,
                    },
                )
            });
            c.1.calls += 1;
            c.1.flagged += u64::from(flagged);
            if started >= c.0 {
                c.0 = started;
                c.1.last_queue = queue;
            }
        }
    }
    if r.calls > 0 {
        r.first_call = Some(rfc3339(first));
        r.last_call = Some(rfc3339(last));
    }
    r.flag_rate = (r.decided > 0).then(|| r.flagged as f64 / r.decided as f64);
    r.answer_to_refer_ms = percentiles(a2r);
    r.first_audio_to_decision_ms = percentiles(a2d);
    // Every hour between the first and the last, quiet ones as zero: a gap
    // in the chart is an outage to see, not to hide.
    if let (Some(&lo), Some(&hi)) = (hours.keys().next(), hours.keys().next_back()) {
        for h in (lo..=hi).step_by(3600) {
            hours.entry(h).or_insert_with(|| Hour {
                hour_unix: h,
                hour: rfc3339(h * 1000),
                calls: 0,
                by_queue: BTreeMap::new(),
                flagged: 0,
            });
        }
    }
    r.hours = hours.into_values().collect();
    let mut repeat: Vec<RepeatCaller> = callers
        .into_values()
        .map(|(_, c)| c)
        .filter(|c| c.calls > 1)
        .collect();
    repeat.sort_by(|a, b| b.calls.cmp(&a.calls).then(a.caller.cmp(&b.caller)));
    repeat.truncate(50);
    r.repeat_callers = repeat;
    r
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Colours of the queues' bars, in queue order.
const PALETTE: [RGBColor; 8] = [
    RGBColor(66, 133, 244),
    RGBColor(219, 68, 55),
    RGBColor(244, 180, 0),
    RGBColor(15, 157, 88),
    RGBColor(171, 71, 188),
    RGBColor(0, 172, 193),
    RGBColor(255, 112, 67),
    RGBColor(120, 144, 156),
];

type Drawn = Result<(), Box<dyn std::error::Error>>;

/// Calls per hour, stacked by queue.
fn hours_svg(r: &Report, out: &mut String) -> Drawn {
    // The queues, then calls that reached none, if any did.
    let mut groups: Vec<&str> = r.by_queue.keys().map(String::as_str).collect();
    if r.hours.iter().any(|h| h.by_queue.contains_key("none")) {
        groups.push("none");
    }
    let max = r.hours.iter().map(|h| h.calls).max().unwrap_or(1).max(1);
    let root = SVGBackend::with_string(out, (900, 320)).into_drawing_area();
    root.fill(&WHITE)?;
    let n = r.hours.len().max(1) as u32;
    let mut chart = ChartBuilder::on(&root)
        .caption("Calls per hour (UTC), by queue", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0u32..n, 0u64..max + max / 10 + 1)?;
    let labels: Vec<String> = r.hours.iter().map(|h| h.hour[11..16].to_string()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n.min(24) as usize)
        .x_label_formatter(&|i| labels.get(*i as usize).cloned().unwrap_or_default())
        .y_desc("calls")
        .draw()?;
    for (qi, q) in groups.iter().enumerate() {
        let color = PALETTE[qi % PALETTE.len()];
        let bars = r.hours.iter().enumerate().filter_map(|(i, h)| {
            let below: u64 = groups
                .iter()
                .take(qi)
                .map(|q| h.by_queue.get(*q).copied().unwrap_or(0))
                .sum();
            let mine = h.by_queue.get(*q).copied().unwrap_or(0);
            (mine > 0).then(|| {
                Rectangle::new(
                    [(i as u32, below), (i as u32 + 1, below + mine)],
                    color.filled(),
                )
            })
        });
        chart
            .draw_series(bars)?
            .label(*q)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}

/// The answer → REFER histogram.
fn delays_svg(r: &Report, out: &mut String) -> Drawn {
    let max = r.delay_histogram.iter().copied().max().unwrap_or(1).max(1);
    let root = SVGBackend::with_string(out, (900, 280)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Answer → REFER (s)", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(
            0f64..(DELAY_MAX_MS + DELAY_BIN_MS) as f64 / 1000.0,
            0u64..max + 1,
        )?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc("seconds (last bar: slower than 10 s)")
        .y_desc("calls")
        .draw()?;
    let w = DELAY_BIN_MS as f64 / 1000.0;
    chart.draw_series(r.delay_histogram.iter().enumerate().map(|(i, &c)| {
        let x = i as f64 * w;
        Rectangle::new([(x, 0), (x + w * 0.9, c)], PALETTE[0].filled())
    }))?;
    root.present()?;
    Ok(())
}

fn table(out: &mut String, title: &str, head: (&str, &str), rows: &BTreeMap<String, u64>) {
    let _ = write!(
        out,
        "<h2>{}</h2><table><tr><th>{}</th><th>{}</th></tr>",
        esc(title),
        esc(head.0),
        esc(head.1)
    );
    for (k, v) in rows {
        let _ = write!(out, "<tr><td>{}</td><td class=n>{v}</td></tr>", esc(k));
    }
    out.push_str("</table>\n");
}

/// The report as one HTML page (charts inline, no external resources).
pub fn html(r: &Report) -> String {
    let mut out = String::from(
        "<!doctype html><html><head><meta charset=utf-8><title>emonav service report</title>\
         <style>body{font-family:sans-serif;margin:2em;max-width:960px}\
         table{border-collapse:collapse;margin-bottom:1em}td,th{border-bottom:1px solid #ddd;\
         padding:.25em .8em;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}\
         </style></head><body><h1>emonav service report</h1>\n",
    );
    let pct = |x: Option<f64>| x.map_or("–".into(), |x| format!("{:.1} %", 100.0 * x));
    let ms = |x: Option<u64>| x.map_or("–".into(), |x| format!("{x} ms"));
    let _ = write!(
        out,
        "<table id=summary><tr><th>calls</th><td class=n>{}</td></tr>\
         <tr><th>first / last call</th><td>{} / {}</td></tr>\
         <tr><th>decided</th><td class=n>{}</td></tr>\
         <tr><th>flagged</th><td class=n>{} ({})</td></tr>\
         <tr><th>answer → REFER p50 / p90 / p99</th><td>{} / {} / {}</td></tr>\
         <tr><th>first audio → decision p50 / p90</th><td>{} / {}</td></tr>\
         <tr><th>lines skipped (not call records)</th><td class=n>{}</td></tr></table>",
        r.calls,
        esc(r.first_call.as_deref().unwrap_or("–")),
        esc(r.last_call.as_deref().unwrap_or("–")),
        r.decided,
        r.flagged,
        pct(r.flag_rate),
        ms(r.answer_to_refer_ms.p50),
        ms(r.answer_to_refer_ms.p90),
        ms(r.answer_to_refer_ms.p99),
        ms(r.first_audio_to_decision_ms.p50),
        ms(r.first_audio_to_decision_ms.p90),
        r.skipped_lines,
    );
    out.push('\n');
    for draw in [hours_svg, delays_svg] {
        let mut svg = String::new();
        match draw(r, &mut svg) {
            Ok(()) => out.push_str(&svg),
            Err(e) => {
                let _ = write!(out, "<p>chart not drawn: {}</p>", esc(&e.to_string()));
            }
        }
        out.push('\n');
    }
    table(&mut out, "Calls by queue", ("queue", "calls"), &r.by_queue);
    table(&mut out, "Emotion mix", ("emotion", "calls"), &r.by_emotion);
    table(
        &mut out,
        "Decision reasons",
        ("reason", "calls"),
        &r.by_reason,
    );
    table(&mut out, "Outcomes", ("outcome", "calls"), &r.by_outcome);
    table(
        &mut out,
        "Transfer failures by cause",
        ("cause", "calls"),
        &r.failures_by_cause,
    );
    out.push_str("<h2>Repeat callers</h2><table id=repeat><tr><th>caller</th><th>calls</th><th>flagged</th><th>last queue</th></tr>");
    for c in &r.repeat_callers {
        let _ = write!(
            out,
            "<tr><td>{}</td><td class=n>{}</td><td class=n>{}</td><td>{}</td></tr>",
            esc(&c.caller),
            c.calls,
            c.flagged,
            esc(c.last_queue.as_deref().unwrap_or("–"))
        );
    }
    out.push_str("</table></body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(
        started: u64,
        from: &str,
        queue: Option<&str>,
        flagged: bool,
        outcome: &str,
        a2r: Option<u64>,
    ) -> String {
        serde_json::json!({
            "event": "call_end", "started_unix_ms": started, "from": from,
            "queue": queue, "emotion": queue.map(|q| if q.contains("deesc") { "agitated" } else { "calm" }),
            "decision_reason": "confident", "flagged": flagged, "outcome": outcome,
            "failure_cause": (outcome == "failed").then_some("refer_rejected"),
            "answer_to_refer_ms": a2r,
        })
        .to_string()
    }

    #[test]
    fn counts_every_call_once_and_fills_quiet_hours() {
        let h0 = 1_764_320_400_000u64; // 2025-11-28T09:00:00Z
        let text = [
            line(
                h0,
                "\"A\" <sip:alice@pbx>;tag=1",
                Some("sip:deesc@q"),
                true,
                "transferred",
                Some(1300),
            ),
            line(
                h0 + 60_000,
                "<sip:bob@pbx>",
                Some("sip:standard@q"),
                false,
                "transferred",
                Some(3000),
            ),
            "not json".into(),
            r#"{"event":"something_else"}"#.into(),
            line(
                h0 + 2 * 3_600_000,
                "sip:alice@pbx;tag=9",
                Some("sip:deesc@q"),
                false,
                "failed",
                None,
            ),
            line(
                h0 + 3 * 3_600_000,
                "<tel:+4930123>",
                None,
                false,
                "caller_hangup",
                None,
            ),
        ]
        .join("\n");
        let r = build(&text, Window::default());
        assert_eq!(
            (r.calls, r.skipped_lines, r.decided, r.flagged),
            (4, 2, 3, 1)
        );
        assert_eq!(r.by_queue["sip:deesc@q"], 2);
        assert_eq!(r.by_outcome["failed"], 1);
        assert_eq!(r.failures_by_cause["refer_rejected"], 1);
        assert_eq!(r.by_emotion["agitated"], 2);
        assert_eq!(r.hours.len(), 4, "09, 10 (quiet), 11, 12");
        assert_eq!(
            r.hours.iter().map(|h| h.calls).collect::<Vec<_>>(),
            [2, 0, 1, 1]
        );
        assert_eq!(r.hours[3].by_queue["none"], 1);
        assert_eq!(r.hours[0].hour, "2025-11-28T09:00:00Z");
        assert_eq!(r.repeat_callers.len(), 1);
        assert_eq!(r.repeat_callers[0].caller, "alice");
        assert_eq!(r.repeat_callers[0].calls, 2);
        assert_eq!(
            r.repeat_callers[0].last_queue.as_deref(),
            Some("sip:deesc@q")
        );
        assert_eq!(r.answer_to_refer_ms.p50, Some(1300));
        assert_eq!(r.answer_to_refer_ms.p99, Some(3000));
        let sum: u64 = r.delay_histogram.iter().sum();
        assert_eq!(sum, 2);
        // The window.
        let w = build(
            &text,
            Window {
                since_ms: Some(h0 + 3_600_000),
                until_ms: Some(h0 + 3 * 3_600_000),
            },
        );
        assert_eq!((w.calls, w.outside_window), (1, 3));
        let page = html(&r);
        assert!(page.contains("<svg") && page.contains("alice"), "{page}");
    }

    #[test]
    fn callers() {
        assert_eq!(
            caller_of("\"SIPp\" <sip:caller@127.0.0.1:5061>;tag=1"),
            "caller"
        );
        assert_eq!(caller_of("<sip:+4930@gw;user=phone>"), "+4930");
        assert_eq!(caller_of("tel:+4930123;tag=x"), "+4930123");
        assert_eq!(caller_of("<sip:gw.example>"), "gw.example");
    }
}
