//! flowlens-bench: the load-test harness (synthetic flows → broker → enricher → sink →
//! ClickHouse, measured against the broker alone in the same run) and the capacity model.
//!
//! Modules: [`gen`] (record shapes), [`produce`] (rate-limited producer with delivery
//! accounting), [`probe`] (/proc, Prometheus and ClickHouse readings), [`run`] (the phases),
//! [`report`] (markdown, JSON, PNG plots), [`capacity`] (partitions/instances/shards for N nodes),
//! [`server18`] (clickhouse-server 18.16 as the run's ClickHouse), [`collector_plot`] (the plot of
//! `bench/collector/run.sh`'s table).

pub mod capacity;
pub mod collector_plot;
pub mod gen;
pub mod probe;
pub mod produce;
pub mod report;
pub mod run;
pub mod server18;
