//! SIP signalling (RFC 3261 and friends).
pub mod dialog;
pub mod message;
pub mod refer;
pub mod transaction;
