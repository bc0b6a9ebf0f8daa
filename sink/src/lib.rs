//! flowlens sink: consumes `EnrichedFlow` records from Kafka and writes them to ClickHouse in
//! batches, committing offsets only after ClickHouse acknowledged the insert.

pub mod batch;
pub mod cluster;
pub mod config;
pub mod decode;
pub mod dedup;
pub mod insert;
pub mod migrate;
pub mod recovery;
pub mod row;
pub mod run;
pub mod tls;

pub use config::Config;
pub use row::FlowRow;
pub use run::run;
