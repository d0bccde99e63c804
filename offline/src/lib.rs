//! emonav-offline: the tools that work on recordings and corpora rather than
//! calls: `emonav analyze`, `train` and `eval`, and the plots they draw.
//!
//! Neither the endpoint library (`emonav`) nor the DSP crate depends on this
//! one, and this one depends only on `emonav-dsp`: the routing policy a
//! recording is judged by comes in through [`analyze::Decide`], so the
//! `emonav` binary can use these tools without a package cycle.
#![warn(missing_docs)]

pub mod analyze;
pub mod capture;
pub mod conditions;
pub mod corpus;
pub mod learn;
pub mod multi;
pub mod plot;
pub mod report;
pub mod timeline;

/// The WAV reader the tools use, for callers that read WAV files themselves.
pub use hound;
