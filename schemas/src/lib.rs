//! flowlens schemas (work in progress).
