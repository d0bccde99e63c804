//! The operator's HTTP API (HTTP/1.1, RFC 9110/9112) on axum + hyper, a task
//! of the tokio runtime the SIP edge runs on, never on the packet path:
//! `/healthz`, `/readyz`, `/metrics`, `POST /reload`, `/decisions/{key}`
//! (src/decisions.rs), `/calls` and `/events` (src/live.rs), and `/`, the
//! dashboard: one static page (src/dashboard.html, compiled in; no build
//! step) that reads `/calls` and `/events`.
//!
//! Every response carries `Connection: close`: scrapers and probes make one
//! request per connection, and a connection left open by an idle client
//! would hold a task for nothing.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use futures_util::stream::{self, Stream};
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::RecvError;

use crate::decisions::{self, Decisions};
use crate::events::Metrics;
use crate::lifecycle::Lifecycle;
use crate::live::Live;

const TEXT: &str = "text/plain; charset=utf-8";

/// What the handlers read.
#[derive(Clone)]
pub(crate) struct Http {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) life: Arc<Lifecycle>,
    pub(crate) decisions: Arc<Decisions>,
    pub(crate) live: Arc<Live>,
}

/// Serve on `listener` until the process exits.
pub(crate) async fn serve(listener: TcpListener, state: Http) {
    let app = Router::new()
        .route(
            "/healthz",
            any(|| async { (StatusCode::OK, [(header::CONTENT_TYPE, TEXT)], "ok\n") }),
        )
        .route("/readyz", any(readyz))
        .route("/metrics", any(metrics))
        .route("/reload", any(reload))
        .route("/", get(dashboard))
        .route("/calls", get(calls))
        .route("/events", get(events))
        .fallback(fallback)
        .layer(middleware::from_fn(close))
        .with_state(state);
    let app = app.into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "HTTP server stopped");
    }
}

/// One request per connection (see the module comment). The event stream is
/// long-lived anyway and closes with its client.
async fn close(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

fn status(line: &str) -> StatusCode {
    line.split(' ')
        .next()
        .and_then(|c| c.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

async fn readyz(State(s): State<Http>) -> Response {
    match s.life.not_ready() {
        None => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, TEXT)],
            "ready\n".to_string(),
        ),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, TEXT)],
            format!("{why}\n"),
        ),
    }
    .into_response()
}

async fn metrics(State(s): State<Http>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        s.metrics.render(),
    )
        .into_response()
}

/// `POST /reload`: as SIGHUP, for a local operator only (it changes routing,
/// and there is no authentication): other peers get 403.
async fn reload(
    State(s): State<Http>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
) -> Response {
    let (code, body) = if method != Method::POST {
        (StatusCode::METHOD_NOT_ALLOWED, "POST /reload\n".to_string())
    } else if !peer.ip().is_loopback() {
        (
            StatusCode::FORBIDDEN,
            "reload is allowed from loopback only\n".to_string(),
        )
    } else {
        let life = s.life.clone();
        match tokio::task::spawn_blocking(move || life.reload()).await {
            Ok(Ok(summary)) => (StatusCode::OK, format!("{summary}\n")),
            Ok(Err(e)) => (StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")),
            Err(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "reload failed\n".to_string(),
            ),
        }
    };
    let mut resp = (code, [(header::CONTENT_TYPE, TEXT)], body).into_response();
    if code == StatusCode::UNPROCESSABLE_ENTITY {
        // RFC 9110 §15.5.21's name; the http crate still has RFC 4918's.
        resp.extensions_mut()
            .insert(hyper::ext::ReasonPhrase::from_static(
                b"Unprocessable Content",
            ));
    }
    if code == StatusCode::METHOD_NOT_ALLOWED {
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
    }
    resp
}

/// `/`: the dashboard page.
async fn dashboard() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("dashboard.html"),
    )
        .into_response()
}

/// `/calls`: the calls in progress with their latest scores.
async fn calls(State(s): State<Http>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        s.live.calls_json(),
    )
        .into_response()
}

/// `/events`: server-sent events (WHATWG HTML §9.2), one JSON object each,
/// `event:` naming its kind. A client too slow for the stream loses events
/// (counted in a `lagged` event), never slows a call.
async fn events(State(s): State<Http>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = stream::unfold(s.live.subscribe(), |mut rx| async move {
        let event = match rx.recv().await {
            Ok(ev) => Event::default().event(ev.kind).data(ev.json),
            Err(RecvError::Lagged(n)) => Event::default()
                .event("lagged")
                .data(format!("{{\"missed\":{n}}}")),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(event), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// `/decisions/{key}` (its path is percent-decoded by src/decisions.rs), or 404.
async fn fallback(State(s): State<Http>, req: Request) -> Response {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    match decisions::get(&s.decisions, &path).await {
        Some((line, ctype, body)) => {
            (status(line), [(header::CONTENT_TYPE, ctype)], body).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, TEXT)],
            "not found\n",
        )
            .into_response(),
    }
}
