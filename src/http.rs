//! `/healthz`, `/readyz`, `/metrics`, `POST /reload` and `/decisions/{key}`
//! (src/decisions.rs) over HTTP/1.1 (RFC 9112), one request per connection. A dozen lines of HTTP do not justify an HTTP framework yet;
//! the dashboard will bring one.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::decisions::{self, Decisions};
use crate::events::Metrics;
use crate::lifecycle::Lifecycle;

/// Serve on `listener`, forever.
pub(crate) async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    life: Arc<Lifecycle>,
    store: Arc<Decisions>,
) {
    loop {
        let Ok((mut stream, peer)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        let life = life.clone();
        let store = store.clone();
        tokio::spawn(async move {
            // Read the request head (bounded in size and time); the body, if
            // any, is of no interest.
            let mut req = [0u8; 2048];
            let mut n = 0;
            let read_head = async {
                while n < req.len() && !req[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut req[n..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k,
                    }
                }
            };
            if tokio::time::timeout(std::time::Duration::from_secs(5), read_head)
                .await
                .is_err()
            {
                return;
            }
            let line = String::from_utf8_lossy(&req[..n]);
            let mut words = line.split_whitespace();
            let method = words.next().unwrap_or("GET");
            let path = words.next().unwrap_or("/");
            let text = "text/plain; version=0.0.4";
            let (status, ctype, body) = match (method, path) {
                (_, "/reload") => {
                    let (status, body) = reload(method, peer, &life).await;
                    (status, text, body)
                }
                (_, "/readyz") => match life.not_ready() {
                    None => ("200 OK", text, "ready\n".to_string()),
                    Some(why) => ("503 Service Unavailable", text, format!("{why}\n")),
                },
                (_, "/healthz") => ("200 OK", text, "ok\n".to_string()),
                (_, "/metrics") => ("200 OK", text, metrics.render()),
                (_, p) => match decisions::get(&store, p).await {
                    Some(answer) => answer,
                    None => ("404 Not Found", text, "not found\n".to_string()),
                },
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(resp.as_bytes()).await;
        });
    }
}

/// `POST /reload`: as SIGHUP, for a local operator only (it changes routing,
/// and there is no authentication): other peers get 403.
async fn reload(method: &str, peer: SocketAddr, life: &Arc<Lifecycle>) -> (&'static str, String) {
    if method != "POST" {
        return ("405 Method Not Allowed", "POST /reload\n".into());
    }
    if !peer.ip().is_loopback() {
        return (
            "403 Forbidden",
            "reload is allowed from loopback only\n".into(),
        );
    }
    let life = life.clone();
    match tokio::task::spawn_blocking(move || life.reload()).await {
        Ok(Ok(summary)) => ("200 OK", format!("{summary}\n")),
        Ok(Err(e)) => ("422 Unprocessable Content", format!("{e}\n")),
        Err(_) => ("500 Internal Server Error", "reload failed\n".into()),
    }
}
