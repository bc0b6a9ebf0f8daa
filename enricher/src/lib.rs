//! flowlens enricher: joins raw flows with interface metadata and publishes enriched flows,
//! committing a raw record's offset only after what it produced is acknowledged.
//!
//! Modules: [`config`] (settings), [`interfaces`] (interface cache fed by the compacted topic),
//! [`kubernetes`] (pod/service/node metadata with per-address history, from the API server or a
//! snapshot file, and its `[kubernetes]` section), [`decode`] (RawFlow, fast path with
//! apache-avro fallback), [`join`] (pure enrichment), [`offsets`] (in-order acknowledgement
//! tracking), [`pipeline`] (the Kafka consume-produce loop).

pub mod config;
pub mod interfaces;
pub mod join;
pub mod kubernetes;
pub mod offsets;
pub mod pipeline;

pub use config::Config;
pub use pipeline::run;
