//! flowlens sink (work in progress).
fn main() {}
