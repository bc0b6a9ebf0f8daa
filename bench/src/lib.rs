//! flowlens-bench: the load-test harness (synthetic flows → broker → enricher → sink →
//! ClickHouse, measured against the broker alone in the same run) and the capacity model.
//!
//! A run ([`run`]) starts its [`services`] and [`stages`], creates its [`topics`], and measures
//! the broker alone ([`baseline`]) and the pipeline ([`phase`]: one driver for the saturation
//! and the sustained phases) while the [`monitor`] samples, and the client library's floor
//! under the enricher ([`relay`]); [`verify`] counts losses and
//! latencies in ClickHouse, [`results`] holds what was measured and [`report`] writes it
//! (markdown, JSON, PNG plots). Beside them: [`gen`] (record shapes), [`produce`] (rate-limited
//! producer with delivery accounting), [`probe`] (/proc, Prometheus and ClickHouse readings),
//! [`codec`] (per-record CPU of the codecs), [`progress`] (bars and messages), [`server18`]
//! (what clickhouse-server 18.16 needs as the run's ClickHouse), [`capacity`]
//! (partitions/instances/shards for N nodes), [`collector_plot`] (the plot of
//! `bench/collector/run.sh`'s table), [`console`] (the web console's latency over a
//! generated day of flows).

pub mod baseline;
pub mod capacity;
pub mod codec;
pub mod collector_plot;
pub mod console;
pub mod gen;
pub mod monitor;
pub mod phase;
pub mod probe;
pub mod produce;
pub mod progress;
pub mod relay;
pub mod report;
pub mod results;
pub mod run;
pub mod server18;
pub mod services;
pub mod stages;
pub mod topics;
pub mod verify;
