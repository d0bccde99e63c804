//! emonav: an emotion-aware SIP call router.
//!
//! The library holds the sans-IO protocol cores (SDP, RTP, the per-call
//! state machine and the routing policy; SIP itself is the `emonav-sip`
//! crate) and the tokio edge that drives them.
//!
//! # API
//!
//! The API is what this file re-exports, and nothing else: every module is
//! private. It is what the `emonav` binary, the benches and the integration
//! tests use:
//!
//! - running the endpoint: [`Profile`] (the configuration) and why one is
//!   refused, [`ConfigError`], [`Server`] and its [`ServerHandle`] (drain,
//!   reload),
//!   [`EventSink`] (where call records go);
//! - the routing decision: [`Policy`], [`Decision`], and the call's decision
//!   clock [`Decider`] (also driven by `emonav analyze`);
//! - one call driven without sockets (the allocation test): [`Call`],
//!   [`CallSettings`], and what it emits, [`Output`], [`Transmit`],
//!   [`Socket`], [`DecisionNote`] and [`PublishedDecision`];
//! - the pieces benched or checked on their own: [`RtpReceiver`] and
//!   [`RtpEvent`], [`parse_sdp`] and [`CodecName`];
//! - the caller history ([`HistoryStore`], `[history]`), which the tests read.
//!
//! Inside the crate, an item not re-exported here is `pub(crate)` (or
//! narrower); the `unreachable_pub` lint keeps it so.

mod adapt;
mod call;
mod config;
mod decisions;
mod endpoint;
mod events;
#[doc(hidden)]
pub mod fuzz;
mod history;
mod http;
mod lifecycle;
mod live;
mod locate;
mod media;
mod metrics;
mod overload;
mod policy;
mod replay;
mod sdes;
mod sdp;
mod server;
mod tls;
mod trim;
mod trust;
mod webhook;

pub use call::{Call, CallSettings, Output, RelaySide, Socket, Transmit};
pub use config::{ConfigError, Profile, SrtpMode};
pub use decisions::{DecisionNote, PublishedDecision};
pub use events::EventSink;
pub use history::{
    caller_key, postgres::PgStore, sqlite::SqliteStore, Backend as HistoryBackend, CallEntry,
    CallerFacts, HistoryConfig, HistoryError, HistoryStore,
};
pub use lifecycle::ServerHandle;
pub use media::rtp::{RtpEvent, RtpReceiver};
pub use policy::{Decider, Decision, Policy};
pub use replay::{replay, ReplayError, Replayed};
pub use sdp::{parse as parse_sdp, CodecName};
pub use server::Server;
