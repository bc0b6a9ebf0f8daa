//! flowlens enricher (work in progress).
fn main() {}
