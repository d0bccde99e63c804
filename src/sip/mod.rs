//! SIP signalling (RFC 3261 and friends).
pub mod message;
