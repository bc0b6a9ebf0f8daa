//! What a run measured: the data of the report (written as `<name>.json` and rendered by
//! [`crate::report`]). The time series' [`Sample`] and [`CpuUse`] come from [`crate::monitor`],
//! the codec timings from [`crate::codec`].

use serde::Serialize;

use crate::codec::CodecCosts;
use crate::monitor::{CpuUse, Sample};
use crate::relay::Floors;

/// Per-process cost over one phase.
#[derive(Debug, Clone, Serialize)]
pub struct StageCost {
    pub name: String,
    /// Records/s the stage handled in the phase (when it counts records).
    pub records_per_s: Option<f64>,
    pub cpu_s: f64,
    pub cpu_s_per_million: f64,
    pub max_rss_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Baseline {
    pub records: u64,
    pub produce_only_per_s: f64,
    pub pass_through_per_s: f64,
    pub seconds: f64,
    pub costs: Vec<StageCost>,
    pub cpu: CpuUse,
    /// Pass-through rate of every repetition (the best one is reported above).
    pub repeats: Vec<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub records: u64,
    pub target_rate: f64,
    pub produce_per_s: f64,
    /// Records / (first send → last row inserted).
    pub end_to_end_per_s: f64,
    pub seconds: f64,
    pub costs: Vec<StageCost>,
    pub cpu: CpuUse,
    pub latency_ms_p50: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Losses {
    pub sent: u64,
    pub acked: u64,
    pub delivery_failures: u64,
    pub rows: u64,
    pub unique_ids: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub dead_lettered: f64,
}

/// Latency of the sustained phase per second of export time.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyPoint {
    pub t_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: String,
    pub command: String,
    pub quick: bool,
    /// Which broker and ClickHouse the run used.
    pub services: String,
    /// `chdb` or `server18`.
    pub engine: String,
    /// Caveats specific to this run's services, printed under the header of the report.
    pub notes: Vec<String>,
    pub started_utc: String,
    /// /proc/loadavg (1, 5, 15 min) before the services started and after the run: other work
    /// on the machine shows here.
    pub load_before: String,
    pub load_after: String,
    pub partitions: i32,
    pub sink_batch_age_ms: Option<u64>,
    pub record_bytes: usize,
    pub processes: Vec<String>,
    pub baseline: Baseline,
    /// The Kafka clients' floors under the enricher and the sink.
    pub floors: Floors,
    pub saturation: Phase,
    pub sustained: Phase,
    /// saturation.end_to_end_per_s / baseline.pass_through_per_s
    pub ratio_to_broker: f64,
    /// The same per CPU second: all processes' CPU per record in the baseline / in the
    /// saturation phase. The throughput ratio when both phases get the same cores, so its
    /// ceiling on shared cores.
    pub ratio_per_cpu: f64,
    pub losses: Losses,
    pub codec: CodecCosts,
    pub samples: Vec<Sample>,
    pub latency: Vec<LatencyPoint>,
}
