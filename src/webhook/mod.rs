//! Alerts and per-call events to an HTTP receiver (`[webhooks]`): a flagged
//! call is POSTed the moment it is decided, not at its end.
//!
//! Call tasks hand events over with `try_send` on a bounded channel and
//! never wait: a slow or dead receiver costs them nothing, and a full
//! channel drops the event and counts it. One task owns the [`Outbox`]
//! (order, retries, bound) and POSTs with hyper's HTTP/1.1 client (RFC 9110
//! §9.3.3, one connection per event: alerts are a few per minute, and a
//! fresh connection never finds a half-closed one). While the receiver
//! fails, what waits is written to the spool file (at most once a second)
//! and at shutdown, and read back at start: undelivered events survive a
//! restart.

mod outbox;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

pub(crate) use outbox::{Attempt, Outbox};

use crate::metrics::Metrics;

/// `[webhooks]` of a profile.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://host[:port]/path` to POST events to; empty: off.
    pub url: String,
    /// Which events: `flag`, `decision`, `call_end`.
    pub events: Vec<String>,
    /// Sent as the `Authorization` header when not empty.
    pub authorization: String,
    /// One POST's time limit (connect and answer), ms.
    pub timeout_ms: u64,
    /// First retry after this many ms; doubling up to `retry_max_s`.
    pub retry_first_ms: u64,
    /// Longest wait between two tries, s.
    pub retry_max_s: u64,
    /// Spool file, relative to the profile's folder; empty: no spool.
    pub spool_file: String,
    /// Most events kept waiting; beyond it the oldest are dropped.
    pub spool_max: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            events: vec!["flag".into()],
            authorization: String::new(),
            timeout_ms: 2000,
            retry_first_ms: 500,
            retry_max_s: 60,
            spool_file: "webhook-spool.jsonl".into(),
            spool_max: 10_000,
        }
    }
}

/// The event names `[webhooks] events` may list.
const EVENT_KINDS: [&str; 3] = ["flag", "decision", "call_end"];

/// Spool writes at most this often: a failing receiver and a burst of
/// calls cost one file write a second, not one per event.
const SPOOL_EVERY: Duration = Duration::from_secs(1);

/// Events handed over but not yet in the outbox: a burst of call ends is
/// absorbed here; beyond it events are dropped and counted.
const CHANNEL: usize = 1024;

impl WebhookConfig {
    /// What `check-config` and a reload refuse.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.url.is_empty() {
            return Ok(());
        }
        Target::parse(&self.url)?;
        if let Some(e) = self
            .events
            .iter()
            .find(|e| !EVENT_KINDS.contains(&e.as_str()))
        {
            return Err(format!(
                "webhooks.events: unknown event {e:?} (one of {EVENT_KINDS:?})"
            ));
        }
        if self.timeout_ms == 0 || self.retry_first_ms == 0 || self.spool_max == 0 {
            return Err("webhooks: timeout_ms, retry_first_ms and spool_max must be > 0".into());
        }
        Ok(())
    }
}

/// Where events go: parsed once from `[webhooks] url`.
#[derive(Debug, Clone)]
struct Target {
    /// `host:port` to connect to.
    authority: String,
    /// The Host header (the URL's authority as written).
    host: String,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, String> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| format!("webhooks.url: {url:?}: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "webhooks.url: {url:?}: only http:// is supported (for https, a local TLS-terminating relay)"
            ));
        }
        let host = uri
            .host()
            .ok_or_else(|| format!("webhooks.url: {url:?}: no host"))?;
        let port = uri.port_u16().unwrap_or(80);
        Ok(Self {
            authority: format!("{host}:{port}"),
            host: uri
                .authority()
                .map_or_else(|| host.to_string(), |a| a.to_string()),
            path: uri
                .path_and_query()
                .map_or_else(|| "/".into(), |p| p.to_string()),
        })
    }
}

/// The handle call tasks and the SIP task hold.
#[derive(Debug, Clone)]
pub(crate) struct Webhooks {
    tx: mpsc::Sender<String>,
    kinds: [bool; 3],
    /// `<process start, unix ms>-<n>`: unique across restarts, for the
    /// receiver to drop retried duplicates.
    seq: Arc<std::sync::atomic::AtomicU64>,
    run: u64,
    metrics: Arc<Metrics>,
    stop: Arc<tokio::sync::Notify>,
}

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    event: &'a str,
    id: String,
    time_unix_ms: u64,
    call: &'a T,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Webhooks {
    /// Start the delivery task of a profile's `[webhooks]`, if it has a URL;
    /// `base` is the profile's folder (for the spool file).
    pub(crate) fn start(
        cfg: &WebhookConfig,
        base: &std::path::Path,
        metrics: Arc<Metrics>,
    ) -> Option<(Self, tokio::task::JoinHandle<()>)> {
        let target = Target::parse(&cfg.url).ok()?;
        let (tx, rx) = mpsc::channel(CHANNEL);
        let kinds = EVENT_KINDS.map(|k| cfg.events.iter().any(|e| e == k));
        let spool = (!cfg.spool_file.is_empty()).then(|| base.join(&cfg.spool_file));
        let stop = Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn(deliver(
            cfg.clone(),
            target,
            spool,
            (rx, stop.clone()),
            metrics.clone(),
        ));
        let hooks = Self {
            tx,
            kinds,
            seq: Arc::default(),
            run: unix_ms(),
            metrics,
            stop,
        };
        Some((hooks, task))
    }

    /// Hand an event over if the profile wants its kind. Never waits.
    pub(crate) fn notify(&self, kind: &'static str, call: &impl Serialize) {
        let Some(i) = EVENT_KINDS.iter().position(|k| *k == kind) else {
            return;
        };
        if !self.kinds[i] {
            return;
        }
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let env = Envelope {
            event: kind,
            id: format!("{}-{n}", self.run),
            time_unix_ms: unix_ms(),
            call,
        };
        let Ok(json) = serde_json::to_string(&env) else {
            return;
        };
        if self.tx.try_send(json).is_err() {
            self.metrics.webhook_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Shutting down: the task takes what is already handed over, tries
    /// what waits once more, briefly, and writes the spool; await its handle.
    pub(crate) fn stop(&self) {
        self.stop.notify_one();
    }
}

/// The delivery task: the outbox, its POSTs and its spool.
async fn deliver(
    cfg: WebhookConfig,
    target: Target,
    spool: Option<PathBuf>,
    (mut rx, stop): (mpsc::Receiver<String>, Arc<tokio::sync::Notify>),
    metrics: Arc<Metrics>,
) {
    let mut outbox = Outbox::new(
        cfg.spool_max,
        Duration::from_millis(cfg.retry_first_ms),
        Duration::from_secs(cfg.retry_max_s),
    );
    // A spool on disk that no longer matches the outbox is rewritten (or
    // removed) soon, so a crash does not deliver the same events again.
    let mut on_disk = false;
    if let Some(path) = &spool {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                on_disk = true;
                let n = outbox.load_spool(&text);
                tracing::info!(file = %path.display(), events = n, "webhook spool loaded");
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read the webhook spool")
            }
        }
    }
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let mut last_spool = Instant::now();
    let mut open = true;
    while open {
        let now = Instant::now();
        if let Some(body) = outbox.poll_send(now.into_std()) {
            let result = post(&target, &cfg.authorization, body, timeout).await;
            outbox.on_result(result, Instant::now().into_std());
            publish(&outbox, &metrics);
            continue;
        }
        let spool_due = (outbox.failing() || on_disk) && outbox.dirty();
        if spool_due && now >= last_spool + SPOOL_EVERY {
            on_disk = write_spool(spool.as_deref(), &mut outbox)
                .await
                .unwrap_or(on_disk);
            last_spool = now;
            continue;
        }
        let mut wake = outbox
            .poll_timeout()
            .map_or(now + Duration::from_secs(3600), Instant::from_std);
        if spool_due {
            wake = wake.min(last_spool + SPOOL_EVERY);
        }
        tokio::select! {
            event = rx.recv() => match event {
                Some(json) => {
                    outbox.push(json);
                    publish(&outbox, &metrics);
                }
                None => open = false,
            },
            () = stop.notified() => open = false,
            () = tokio::time::sleep_until(wake) => {}
        }
    }
    // What was handed over before the stop.
    while let Ok(json) = rx.try_recv() {
        outbox.push(json);
    }
    // Shutting down: one more quick try of what waits (a receiver that just
    // came back gets it now), then the rest goes to disk.
    while let Some(body) = outbox.poll_send(Instant::now().into_std()) {
        let result = post(
            &target,
            &cfg.authorization,
            body,
            timeout.min(Duration::from_millis(500)),
        )
        .await;
        outbox.on_result(result, Instant::now().into_std());
        if result == Attempt::Retry {
            break;
        }
    }
    publish(&outbox, &metrics);
    write_spool(spool.as_deref(), &mut outbox).await;
    if outbox.len() > 0 {
        tracing::warn!(
            events = outbox.len(),
            "webhook events undelivered at shutdown, kept in the spool"
        );
    }
}

fn publish(outbox: &Outbox, metrics: &Metrics) {
    let s = outbox.stats();
    metrics
        .webhook_delivered
        .store(s.delivered, Ordering::Relaxed);
    metrics.webhook_refused.store(s.refused, Ordering::Relaxed);
    metrics
        .webhook_outbox_dropped
        .store(s.dropped, Ordering::Relaxed);
    metrics.webhook_retries.store(s.retries, Ordering::Relaxed);
    metrics
        .webhook_pending
        .store(outbox.len() as u64, Ordering::Relaxed);
}

/// Write the spool (or remove it when empty), off the runtime's threads, if
/// the outbox changed; whether a spool file is left on disk.
async fn write_spool(path: Option<&std::path::Path>, outbox: &mut Outbox) -> Option<bool> {
    let (Some(path), Some(text)) = (path, outbox.take_spool()) else {
        return None;
    };
    let path = path.to_path_buf();
    let left = !text.is_empty();
    let r = tokio::task::spawn_blocking(move || {
        if text.is_empty() {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        } else {
            // Write then rename: a crash mid-write leaves the old spool.
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path))
        }
        .map_err(|e| (path, e))
    })
    .await;
    match r {
        Ok(Err((path, e))) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot write the webhook spool");
            None
        }
        _ => Some(left),
    }
}

/// One POST; what to do with the event next.
async fn post(target: &Target, authorization: &str, body: String, timeout: Duration) -> Attempt {
    match tokio::time::timeout(timeout, try_post(target, authorization, body)).await {
        Ok(Ok(status)) if (200..300).contains(&status) => Attempt::Delivered,
        Ok(Ok(status)) if (400..500).contains(&status) && status != 408 && status != 429 => {
            tracing::warn!(status, url = %target.path, "webhook receiver refused an event; dropped");
            Attempt::Refused
        }
        Ok(Ok(status)) => {
            tracing::debug!(status, "webhook receiver failed; will retry");
            Attempt::Retry
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "webhook POST failed; will retry");
            Attempt::Retry
        }
        Err(_) => {
            tracing::debug!("webhook POST timed out; will retry");
            Attempt::Retry
        }
    }
}

async fn try_post(
    target: &Target,
    authorization: &str,
    body: String,
) -> Result<u16, Box<dyn std::error::Error + Send + Sync>> {
    let stream = tokio::net::TcpStream::connect(&target.authority).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn);
    let mut req = hyper::Request::post(target.path.as_str())
        .header(hyper::header::HOST, target.host.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("emonav/", env!("CARGO_PKG_VERSION")),
        );
    if !authorization.is_empty() {
        req = req.header(hyper::header::AUTHORIZATION, authorization);
    }
    let resp = sender.send_request(req.body(body)?).await;
    conn.abort();
    Ok(resp?.status().as_u16())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("http://127.0.0.1:8080/hooks/emonav?x=1").unwrap();
        assert_eq!(t.authority, "127.0.0.1:8080");
        assert_eq!(t.path, "/hooks/emonav?x=1");
        let t = Target::parse("http://alerts.example").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.path.as_str()),
            ("alerts.example:80", "/")
        );
        assert!(Target::parse("https://alerts.example/").is_err());
        assert!(Target::parse("alerts").is_err());
    }

    #[test]
    fn validation() {
        let mut c = WebhookConfig::default();
        assert!(c.validate().is_ok(), "off");
        c.url = "http://127.0.0.1:9/".into();
        assert!(c.validate().is_ok());
        c.events = vec!["flagged".into()];
        assert!(c.validate().unwrap_err().contains("flagged"));
    }
}
