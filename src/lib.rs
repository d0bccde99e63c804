//! emonav: an emotion-aware SIP call router.
//!
//! The library holds the sans-IO protocol cores (SIP, SDP, RTP, the per-call
//! state machine and the routing policy) and the tokio edge that drives them.
#![warn(missing_docs)]

pub mod call;
pub mod config;
pub mod endpoint;
pub mod events;
pub mod http;
pub mod media;
pub mod policy;
pub mod sdp;
pub mod server;
