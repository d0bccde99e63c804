//! emonav-dsp: codecs, voice features and emotion inference. No I/O, no async.
//!
//! A call feeds decoded PCM to an [`Analyzer`] and reads its [`Estimate`];
//! [`analyze_pcm`] runs the same pipeline over a whole recording.
#![warn(missing_docs)]

pub mod adapt;
mod analyzer;
pub mod condition;
pub mod estimator;
pub mod features;
pub mod formants;
pub mod g711;
mod kernels;
pub mod model;
pub mod pitch;
mod plans;
pub mod spectral;
mod table_math;
pub mod telephone;

pub use analyzer::{analyze_pcm, Analyzer, Report};
pub use estimator::{EmotionEstimator, Estimate, HeuristicArousal};
pub use features::{FrameFeatures, Functionals, Histogram, Running, Segments, SpectralStats};
pub use model::{Model, ModelEstimator, Scores};
pub use spectral::Spectral;
