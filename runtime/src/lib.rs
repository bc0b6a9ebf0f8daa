//! flowlens runtime (work in progress).
