//! The `emonav` binary.
fn main() {}
