//! `/healthz`, `/metrics` and `/decisions/{key}` (src/decisions.rs) over
//! HTTP/1.1 (RFC 9112), one request per connection. A dozen lines of HTTP do not justify an HTTP framework yet;
//! the dashboard will bring one.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::decisions::{self, Decisions};
use crate::events::Metrics;

/// Serve `/healthz`, `/metrics` and `/decisions/` on `listener`, forever.
pub(crate) async fn serve(listener: TcpListener, metrics: Arc<Metrics>, store: Arc<Decisions>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
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
            let path = line.split_whitespace().nth(1).unwrap_or("/");
            let text = "text/plain; version=0.0.4";
            let (status, ctype, body) = match path {
                "/healthz" => ("200 OK", text, "ok\n".to_string()),
                "/metrics" => ("200 OK", text, metrics.render()),
                p => match decisions::get(&store, p).await {
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
