//! SIP signalling (RFC 3261 and friends).
pub mod dialog;
pub mod digest;
pub mod header;
pub mod message;
pub mod refer;
pub mod registration;
pub mod session_timer;
pub mod transaction;
pub mod transport;
