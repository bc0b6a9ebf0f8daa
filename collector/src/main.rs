//! flowlens collector (work in progress).
fn main() {}
