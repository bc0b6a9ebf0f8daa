//! One benchmark run, in phases on the same services and the same machine:
//!
//! 1. **broker baseline**: the load generator produces N records to a topic while a plain
//!    consumer reads them back, no decoding, no processing: the broker's pass-through limit
//!    (repeated, the best repetition kept).
//! 2. **pipeline saturation**: the same N records into the raw topic as fast as the producer
//!    goes, with the enricher and the sink (each in its own process, through their `run` APIs)
//!    carrying them into ClickHouse; throughput = N / time until the sink inserted the last.
//! 3. **sustained**: a fixed rate (default 60 % of phase 2) for a duration, sampled over time
//!    (rates, consumer lag, CPU, memory); end-to-end latency from ClickHouse itself
//!    (`time_inserted` − `time_exported`, both set on this machine's clock).
//!
//! Every record carries a unique id (`time_flow_start` = base + sequence), so losses and
//! duplicates are counted exactly in ClickHouse at the end.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use flowlens_runtime::kafka::KafkaConfig;
use flowlens_runtime::testkit::{self, Chdb, Tansu};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::Producer;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Serialize;

use crate::gen::{Generator, Shape};
use crate::probe::{self, metric_sum, proc_stat, ClickHouse};
use crate::produce::{self, now_ns, Deliveries};
use crate::server18::{self, FilterProcess, Server18};

/// Which ClickHouse engine the sink writes to, started on this machine for the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Engine {
    /// The ClickHouse 26.9 engine (PyPI chdb-core) behind scripts/stack/chdb_http.py: the
    /// project's schema (sql/migrations, rollups fed by materialized views). With
    /// `--clickhouse-url`: that (modern) server instead.
    #[default]
    Chdb,
    /// Debian's genuine clickhouse-server 18.16 (native): the byte-compatible `flows` table of
    /// sql/clickhouse18/flows_minimal.sql, no rollups (see `server18`).
    Server18,
}

impl Engine {
    /// SQL for "the `time_flow_start` value of id `ns`" (DateTime64(9) on modern servers,
    /// Int64 nanoseconds in the 18.16 table).
    fn id(self, ns: i64) -> String {
        match self {
            Engine::Chdb => format!("fromUnixTimestamp64Nano(toInt64({ns}))"),
            Engine::Server18 => format!("toInt64({ns})"),
        }
    }

    /// SQL for `time_exported` in nanoseconds.
    fn exported_ns(self) -> &'static str {
        match self {
            Engine::Chdb => "toUnixTimestamp64Nano(time_exported)",
            Engine::Server18 => "time_exported",
        }
    }

    /// SQL for the latency of a row in ms: row written (server clock) − record exported (load
    /// generator, same clock). 18.16's `time_inserted` is `now()` in whole seconds (no now64
    /// there): its midpoint is taken, so each value is ± 500 ms.
    fn latency_ms(self) -> &'static str {
        match self {
            Engine::Chdb => {
                "(toUnixTimestamp64Milli(time_inserted) - intDiv(toUnixTimestamp64Nano(time_exported), 1000000))"
            }
            Engine::Server18 => "(time_inserted + 500 - intDiv(time_exported, 1000000))",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Records of the baseline and of the saturation phase.
    pub records: u64,
    /// Repetitions of the broker baseline (the best is kept).
    pub baseline_repeats: u32,
    /// Sustained phase length (s).
    pub duration_s: f64,
    /// Sustained rate (records/s); 0 = 60 % of the measured pipeline throughput.
    pub rate: f64,
    pub partitions: i32,
    pub warmup: u64,
    pub sample_ms: u64,
    /// The sink's `batch.max_age_ms`; `None` keeps its default.
    pub sink_batch_age_ms: Option<u64>,
    pub seed: u64,
    pub shape: Shape,
    /// Directory for the report, plots and JSON.
    pub out_dir: PathBuf,
    /// The command line that reproduces the run (written into the report).
    pub command: String,
    pub progress: bool,
    /// A smoke run (marked as such in the report).
    pub quick: bool,
    /// An existing Kafka cluster (bootstrap `host:port,...`) instead of a local tansu.
    pub brokers: Option<String>,
    /// An existing ClickHouse instead of the local chdb front.
    pub clickhouse: Option<ClickHouseTarget>,
    /// The local ClickHouse engine to start (when `clickhouse` is `None`).
    pub engine: Engine,
}

/// A ClickHouse server reached over HTTP.
#[derive(Debug, Clone)]
pub struct ClickHouseTarget {
    pub url: String,
    pub database: String,
    pub user: String,
    pub password: String,
}

/// One sample of the time series.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub phase: &'static str,
    pub produced: u64,
    pub enricher_in: f64,
    pub enricher_out: f64,
    pub sink_inserted: f64,
    /// Records produced to the raw topic not yet committed by the enricher's group.
    pub lag_enricher: f64,
    /// Records the enricher published not yet committed by the sink's group.
    pub lag_sink: f64,
    /// Cumulative CPU seconds per process (same order as `Report::processes`).
    pub cpu_s: Vec<f64>,
    pub rss_bytes: Vec<u64>,
    /// Cumulative busy CPU seconds of the whole machine (all cores, /proc/stat).
    pub machine_busy_s: f64,
}

/// How many cores a phase had: the run's own processes against the whole machine.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CpuUse {
    /// CPU seconds of the run's processes / wall seconds.
    pub run_cores: f64,
    /// Busy CPU seconds of the whole machine / wall seconds (the rest up to the core count was
    /// idle; machine − run is other work).
    pub machine_cores: f64,
}

impl CpuUse {
    fn between(first: &Sample, last: &Sample) -> Self {
        let dt = (last.t_s - first.t_s).max(1e-9);
        let run: f64 = last
            .cpu_s
            .iter()
            .zip(&first.cpu_s)
            .map(|(b, a)| b - a)
            .sum();
        Self {
            run_cores: run / dt,
            machine_cores: (last.machine_busy_s - first.machine_busy_s) / dt,
        }
    }
}

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

/// Single-thread CPU cost of the per-record work outside Kafka and ClickHouse, measured in this
/// process on the run's own records: what the load generator, the enricher and the sink spend
/// before any I/O, both on the paths the stages run now (hand-written decoders and encoders)
/// and on the generic `flowlens_schemas` codec they replaced.
#[derive(Debug, Clone, Serialize)]
pub struct CodecCosts {
    pub records: u64,
    /// Mean encoded sizes (single-object encoding), raw and enriched (as the enricher writes
    /// them: interface fields joined).
    pub raw_bytes_avg: f64,
    pub enriched_bytes_avg: f64,
    /// Generic Avro encode of a RawFlow: the load generator's path (the collector has its own
    /// hand-written encoder, not measured here).
    pub encode_raw_us: f64,
    /// Generic Avro decode of a RawFlow (the enricher's path before its fast decoder).
    pub decode_raw_us: f64,
    /// The enricher's RawFlow decoder (`flowlens_enricher::decode::raw_flow`).
    pub enricher_decode_raw_us: f64,
    /// The enricher's join with the interface cache and its direct encode of the EnrichedFlow
    /// (`join::Joined::new(..).encode`, no Kubernetes metadata: as the bench runs it).
    pub enricher_join_encode_us: f64,
    /// Generic Avro encode of an EnrichedFlow (the enricher's path before the direct encoder).
    pub encode_enriched_us: f64,
    /// Generic Avro decode of an EnrichedFlow.
    pub decode_enriched_us: f64,
    /// EnrichedFlow -> FlowRow (the generic row conversion with range checks).
    pub to_row_us: f64,
    /// Payload -> FlowRow through the sink's decoder (`flowlens_sink::decode::flow_row`).
    pub sink_flow_row_us: f64,
    /// Payload -> RowBinary bytes, the sink's path (`flowlens_sink::decode::write_row`).
    pub sink_write_row_us: f64,
}

/// Times the codec steps over `n` generated records.
pub fn codec_costs(generator: &mut Generator, n: u64) -> anyhow::Result<CodecCosts> {
    use flowlens_enricher::interfaces::InterfaceCache;
    use flowlens_enricher::join::Joined;
    use flowlens_schemas::{decode, encode, EnrichedFlow, RawFlow};
    let now = now_ns();
    let records: Vec<RawFlow> = (0..n).map(|i| generator.record(i, now)).collect();
    let per = |start: Instant| start.elapsed().as_secs_f64() * 1e6 / n as f64;
    let t = Instant::now();
    let mut raws = Vec::with_capacity(records.len());
    for r in &records {
        let mut buf = Vec::with_capacity(128);
        encode(r, &mut buf)?;
        raws.push(buf);
    }
    let encode_raw_us = per(t);
    drop(records);
    let t = Instant::now();
    let decoded: Vec<RawFlow> = raws.iter().map(|b| decode(b)).collect::<Result<_, _>>()?;
    let decode_raw_us = per(t);
    let t = Instant::now();
    let fast: Vec<RawFlow> = raws
        .iter()
        .map(|b| flowlens_enricher::decode::raw_flow(b))
        .collect::<Result<_, _>>()?;
    let enricher_decode_raw_us = per(t);
    anyhow::ensure!(fast == decoded, "the enricher's decoder disagrees");
    let mut cache = InterfaceCache::default();
    for iface in generator.interfaces(now) {
        cache.upsert(iface);
    }
    let t = Instant::now();
    let mut bufs = Vec::with_capacity(fast.len());
    for raw in &fast {
        let mut buf = Vec::with_capacity(320);
        Joined::new(raw, &cache, None).encode(&mut buf);
        bufs.push(buf);
    }
    let enricher_join_encode_us = per(t);
    drop(fast);
    let enriched: Vec<EnrichedFlow> = decoded
        .into_iter()
        .map(|r| {
            let mut e = EnrichedFlow::from_raw(r);
            e.if_name = "eth0".into();
            e.if_kind = "device".into();
            e
        })
        .collect();
    let t = Instant::now();
    let mut generic = Vec::with_capacity(enriched.len());
    for e in &enriched {
        let mut buf = Vec::with_capacity(256);
        encode(e, &mut buf)?;
        generic.push(buf);
    }
    let encode_enriched_us = per(t);
    drop(generic);
    // From here on, the enricher's own output.
    let t = Instant::now();
    let back: Vec<EnrichedFlow> = bufs.iter().map(|b| decode(b)).collect::<Result<_, _>>()?;
    let decode_enriched_us = per(t);
    let t = Instant::now();
    let mut rows = 0usize;
    for e in back {
        rows += flowlens_sink::FlowRow::try_from(e).is_ok() as usize;
    }
    let to_row_us = per(t);
    let t = Instant::now();
    let fast_rows = bufs
        .iter()
        .filter(|b| flowlens_sink::decode::flow_row(b).is_ok())
        .count();
    let sink_flow_row_us = per(t);
    let mut out = Vec::with_capacity(1 << 20);
    let t = Instant::now();
    let mut written = 0usize;
    for (i, b) in bufs.iter().enumerate() {
        if out.len() > (1 << 20) - 1024 {
            out.clear(); // a batch's buffer, reused
        }
        let at = flowlens_sink::decode::Position {
            topic: "flowlens.flows.enriched",
            partition: 0,
            offset: i as i64,
            stream: [1; 16],
            timestamp_ms: 1_700_000_000_000,
        };
        written += flowlens_sink::decode::write_row(b, &at, &mut out).is_ok() as usize;
    }
    let sink_write_row_us = per(t);
    for (what, got) in [
        ("row conversion", rows),
        ("the sink's decoder", fast_rows),
        ("the sink's RowBinary path", written),
    ] {
        anyhow::ensure!(
            got == n as usize,
            "{what} refused {} records",
            n as usize - got
        );
    }
    let raw_bytes_avg = raws.iter().map(Vec::len).sum::<usize>() as f64 / n as f64;
    let enriched_bytes_avg = bufs.iter().map(Vec::len).sum::<usize>() as f64 / n as f64;
    Ok(CodecCosts {
        records: n,
        raw_bytes_avg,
        enriched_bytes_avg,
        encode_raw_us,
        decode_raw_us,
        enricher_decode_raw_us,
        enricher_join_encode_us,
        encode_enriched_us,
        decode_enriched_us,
        to_row_us,
        sink_flow_row_us,
        sink_write_row_us,
    })
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

/// A stage (enricher or sink) in its own process: this binary's hidden `stage` subcommand.
struct StageProcess {
    name: &'static str,
    child: Child,
    metrics_port: u16,
    log: PathBuf,
}

impl StageProcess {
    fn spawn(name: &'static str, env: Vec<(String, String)>, dir: &Path) -> anyhow::Result<Self> {
        let metrics_port = testkit::free_port();
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log)?;
        let prefix = format!("FLOWLENS_{}", name.to_uppercase());
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["stage", name])
            .env(
                format!("{prefix}__TELEMETRY__METRICS_LISTEN"),
                format!("127.0.0.1:{metrics_port}"),
            )
            .env(format!("{prefix}__TELEMETRY__LOG_LEVEL"), "warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        for (k, v) in env {
            cmd.env(format!("{prefix}__{k}"), v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting the {name}"))?;
        Ok(Self {
            name,
            child,
            metrics_port,
            log,
        })
    }

    fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            anyhow::bail!("{} exited ({status}):\n{text}", self.name);
        }
        Ok(())
    }

    fn stop(mut self) -> anyhow::Result<()> {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::ensure!(
                    status.success(),
                    "{} stopped with {status}: {}",
                    self.name,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(30) {
                let _ = self.child.kill();
                anyhow::bail!("{} did not stop within 30 s of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for StageProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Everything sampled during a run.
struct Monitor {
    start: Instant,
    pids: Vec<(String, u32)>,
    enricher_port: u16,
    sink_port: u16,
    enricher_group: BaseConsumer,
    sink_group: BaseConsumer,
    raw_tpl: TopicPartitionList,
    enriched_tpl: TopicPartitionList,
    deliveries: Arc<Deliveries>,
    samples: Vec<Sample>,
}

impl Monitor {
    fn committed(consumer: &BaseConsumer, tpl: &TopicPartitionList) -> Option<f64> {
        let got = consumer
            .committed_offsets(tpl.clone(), Duration::from_secs(2))
            .ok()?;
        Some(
            got.elements()
                .iter()
                .map(|e| match e.offset() {
                    Offset::Offset(n) => n as f64,
                    _ => 0.0,
                })
                .sum(),
        )
    }

    fn sample(&mut self, phase: &'static str) -> Sample {
        let e = probe::scrape(self.enricher_port);
        let s = probe::scrape(self.sink_port);
        let produced = self.deliveries.acked.load(Ordering::Relaxed);
        let enricher_in = metric_sum(&e, "flowlens_enricher_records_in_total");
        let enricher_out = metric_sum(&e, "flowlens_enricher_records_out_total");
        let sink_inserted = metric_sum(&s, "flowlens_sink_rows_inserted_total");
        // Lag by committed offsets (fresh topics: offsets count records); without an answer
        // from the broker, by the stages' own counters.
        let lag_enricher = Self::committed(&self.enricher_group, &self.raw_tpl)
            .map_or(produced as f64 - enricher_in, |c| produced as f64 - c)
            .max(0.0);
        let lag_sink = Self::committed(&self.sink_group, &self.enriched_tpl)
            .map_or(enricher_out - sink_inserted, |c| enricher_out - c)
            .max(0.0);
        let stats: Vec<_> = self
            .pids
            .iter()
            .map(|(_, pid)| proc_stat(*pid).unwrap_or_default())
            .collect();
        let sample = Sample {
            t_s: self.start.elapsed().as_secs_f64(),
            phase,
            produced,
            enricher_in,
            enricher_out,
            sink_inserted,
            lag_enricher,
            lag_sink,
            cpu_s: stats.iter().map(|s| s.cpu_s).collect(),
            rss_bytes: stats.iter().map(|s| s.rss_bytes).collect(),
            machine_busy_s: probe::machine_busy_s().unwrap_or_default(),
        };
        self.samples.push(sample.clone());
        sample
    }
}

fn bar(multi: &MultiProgress, len: u64, label: &str) -> ProgressBar {
    let pb = multi.add(ProgressBar::new(len));
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:>22} [{bar:40}] {pos:>9}/{len:9} {per_sec:>14} {msg}",
        )
        .unwrap()
        .progress_chars("=> "),
    );
    pb.set_prefix(label.to_string());
    pb
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores ({cpu}), {mem_gib:.0} GiB, Linux {}",
        kernel.trim()
    )
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn utc_now() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Waits until `done(sample)` while sampling; fails after `timeout` or if a stage died.
fn sample_until(
    monitor: &mut Monitor,
    stages: &mut [&mut StageProcess],
    phase: &'static str,
    every: Duration,
    timeout: Duration,
    progress: &ProgressBar,
    mut done: impl FnMut(&Sample) -> bool,
) -> anyhow::Result<Sample> {
    let start = Instant::now();
    loop {
        let s = monitor.sample(phase);
        progress.set_position(s.sink_inserted as u64);
        progress.set_message(format!(
            "lag enricher {:>8.0}  sink {:>8.0}",
            s.lag_enricher, s.lag_sink
        ));
        if done(&s) {
            return Ok(s);
        }
        for st in stages.iter_mut() {
            st.check_running()?;
        }
        anyhow::ensure!(
            start.elapsed() < timeout,
            "{phase}: not done after {timeout:?} (inserted {}, produced {})",
            s.sink_inserted,
            s.produced
        );
        std::thread::sleep(every);
    }
}

fn costs(
    names: &[String],
    first: &Sample,
    last: &Sample,
    samples: &[Sample],
    records: u64,
    rates: &[Option<f64>],
) -> Vec<StageCost> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let cpu = last.cpu_s[i] - first.cpu_s[i];
            let max_rss = samples
                .iter()
                .filter(|s| s.t_s >= first.t_s && s.t_s <= last.t_s)
                .map(|s| s.rss_bytes[i])
                .max()
                .unwrap_or(0);
            StageCost {
                name: name.clone(),
                records_per_s: rates.get(i).copied().flatten(),
                cpu_s: cpu,
                cpu_s_per_million: cpu / records.max(1) as f64 * 1e6,
                max_rss_bytes: max_rss,
            }
        })
        .collect()
}

/// Time at which `counter(sample)` first reached `target`, linearly interpolated.
fn reached_at(samples: &[Sample], counter: impl Fn(&Sample) -> f64, target: f64) -> Option<f64> {
    let mut prev: Option<&Sample> = None;
    for s in samples {
        if counter(s) >= target {
            return Some(match prev {
                Some(p) if counter(s) > counter(p) => {
                    p.t_s + (s.t_s - p.t_s) * (target - counter(p)) / (counter(s) - counter(p))
                }
                _ => s.t_s,
            });
        }
        prev = Some(s);
    }
    None
}

/// Runs the whole benchmark; writes nothing (see `report::write`).
pub fn run(opts: &Options) -> anyhow::Result<Report> {
    anyhow::ensure!(
        opts.brokers.is_some() || Path::new(testkit::TANSU).exists(),
        "{} is missing: run scripts/setup.sh (or give --brokers)",
        testkit::TANSU
    );
    anyhow::ensure!(
        opts.clickhouse.is_some()
            || opts.engine != Engine::Chdb
            || Path::new(testkit::VENV_PYTHON).exists(),
        "{} is missing: run scripts/setup.sh (or give --clickhouse-url)",
        testkit::VENV_PYTHON
    );
    anyhow::ensure!(
        opts.engine == Engine::Chdb || opts.clickhouse.is_none(),
        "--clickhouse server18 starts a local clickhouse-server 18.16; --clickhouse-url is for \
         an existing (modern) ClickHouse"
    );
    let multi = MultiProgress::with_draw_target(if opts.progress {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let say = |m: &MultiProgress, text: String| {
        if opts.progress {
            let _ = m.println(text);
        } else {
            eprintln!("{text}");
        }
    };
    let load_before = loadavg();
    // Codec costs first, on a quiet process (same record shapes, another seed).
    let codec = codec_costs(
        &mut Generator::new(opts.shape.clone(), "codec", 1, opts.seed + 2),
        opts.records.clamp(1_000, 100_000),
    )?;
    let work = tempfile::tempdir()?;
    // Local services unless existing ones were given; the guards stop them at the end.
    let tansu = opts.brokers.is_none().then(|| {
        say(
            &multi,
            "starting tansu (local Kafka-protocol broker)".into(),
        );
        Tansu::start()
    });
    let chdb = (opts.clickhouse.is_none() && opts.engine == Engine::Chdb).then(|| {
        say(&multi, "starting the chdb ClickHouse front".into());
        Chdb::start()
    });
    let ch18 = match opts.engine {
        Engine::Server18 => {
            say(
                &multi,
                "starting Debian's clickhouse-server 18.16 (scripts/stack/clickhouse18.sh)".into(),
            );
            Some(Server18::start()?)
        }
        Engine::Chdb => None,
    };
    let brokers = match (&opts.brokers, &tansu) {
        (Some(b), _) => b.clone(),
        (None, Some(t)) => t.broker(),
        (None, None) => unreachable!("tansu started when no brokers are given"),
    };
    let local = |url: String| ClickHouseTarget {
        url,
        database: "default".into(),
        user: String::new(),
        password: String::new(),
    };
    let target = match (&opts.clickhouse, &chdb, &ch18) {
        (Some(c), _, _) => c.clone(),
        (None, Some(c), _) => local(c.url()),
        (None, None, Some(s)) => local(s.url()),
        (None, None, None) => unreachable!("a local ClickHouse started when none is given"),
    };
    let services = format!(
        "broker: {}; ClickHouse: {}",
        if tansu.is_some() {
            "tansu (memory storage) on this machine".to_string()
        } else {
            format!("Kafka at {brokers}")
        },
        if chdb.is_some() {
            "the chdb 26.9 engine behind scripts/stack/chdb_http.py on this machine".to_string()
        } else if ch18.is_some() {
            "Debian's clickhouse-server 18.16 (native server) on this machine, table \
             sql/clickhouse18/flows_minimal.sql (no rollups), the sink's INSERTs through the \
             bench's settings filter"
                .to_string()
        } else {
            format!("{} (database {})", target.url, target.database)
        }
    );
    let clickhouse = ClickHouse::new(
        &target.url,
        &target.database,
        &target.user,
        &target.password,
    )?;
    let mut notes = Vec::new();
    // 18.16: the minimal table, migrations recorded, and the filter in front for the sink.
    let filter = match &ch18 {
        Some(server) => {
            server18::prepare(&clickhouse)?;
            notes.push(
                "ClickHouse is Debian's clickhouse-server 18.16 with the byte-compatible `flows` \
                 table of sql/clickhouse18/flows_minimal.sql: no rollup tables or materialized \
                 views (the chdb runs feed four rollups per row), the sink with \
                 `sink.migrate_on_start = false` and `clickhouse.validation = false`."
                    .to_string(),
            );
            notes.push(format!(
                "18.16 refuses the settings {:?} the sink sends with every INSERT: the sink \
                 writes through `flowlens-bench settings-filter`, a relay in a process of its \
                 own that drops them; its CPU is the row \"settings filter\", not counted as \
                 ClickHouse's.",
                server18::UNKNOWN_TO_18
            ));
            notes.push(
                "Latency: 18.16's `time_inserted` is `now()` in whole seconds (no now64): each \
                 row's latency is taken at the midpoint of its second, ± 500 ms."
                    .to_string(),
            );
            Some(FilterProcess::spawn(
                &format!("127.0.0.1:{}", server.http_port),
                work.path(),
            )?)
        }
        None => None,
    };
    let engine = if opts.clickhouse.is_some() {
        Engine::Chdb
    } else {
        opts.engine
    };

    let run_id = testkit::unique("bench");
    let mut kafka = KafkaConfig {
        brokers: brokers.split(',').map(|b| b.trim().to_string()).collect(),
        partitions: opts.partitions,
        client_id: "flowlens-bench".into(),
        ..Default::default()
    };
    kafka.topics.raw_flows = format!("{run_id}_raw");
    kafka.topics.interfaces = format!("{run_id}_interfaces");
    kafka.topics.enriched_flows = format!("{run_id}_enriched");
    kafka.topics.dead_letter = format!("{run_id}_dlq");
    let baseline_topics: Vec<String> = (0..opts.baseline_repeats.max(1))
        .map(|i| format!("{run_id}_baseline{i}"))
        .collect();
    let tokio_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    tokio_rt.block_on(kafka.ensure_topics(&[
        (kafka.topics.raw_flows.as_str(), false),
        (kafka.topics.interfaces.as_str(), true),
        (kafka.topics.enriched_flows.as_str(), false),
        (kafka.topics.dead_letter.as_str(), false),
    ]))?;
    tokio_rt.block_on(
        kafka.ensure_topics(
            &baseline_topics
                .iter()
                .map(|t| (t.as_str(), false))
                .collect::<Vec<_>>(),
        ),
    )?;

    let base_ns = now_ns();
    let mut generator = Generator::new(opts.shape.clone(), &run_id, base_ns, opts.seed);
    let record_bytes = {
        let mut buf = Vec::new();
        flowlens_schemas::encode(&generator.record(0, base_ns), &mut buf)?;
        buf.len()
    };
    // Interface metadata first, so the enricher's join has something to find.
    let iface_deliveries = Arc::new(Deliveries::default());
    let iface_producer = produce::producer(&kafka, iface_deliveries.clone())?;
    let mut buf = Vec::new();
    for iface in generator.interfaces(base_ns) {
        buf.clear();
        flowlens_schemas::encode(&iface, &mut buf)?;
        let key = format!("{}/{}", iface.host, iface.ifindex);
        iface_producer
            .send(
                rdkafka::producer::BaseRecord::to(&kafka.topics.interfaces)
                    .key(&key)
                    .payload(&buf),
            )
            .map_err(|(e, _)| anyhow::anyhow!("interface record {key}: {e}"))?;
    }
    iface_producer.flush(Duration::from_secs(30))?;
    anyhow::ensure!(
        iface_deliveries.failed.load(Ordering::Relaxed) == 0,
        "interface records not delivered"
    );

    // The stages, each in its own process.
    let common = |group: &str| {
        vec![
            ("KAFKA__BROKERS".to_string(), brokers.clone()),
            ("KAFKA__PARTITIONS".into(), opts.partitions.to_string()),
            (
                "KAFKA__TOPICS__RAW_FLOWS".into(),
                kafka.topics.raw_flows.clone(),
            ),
            (
                "KAFKA__TOPICS__INTERFACES".into(),
                kafka.topics.interfaces.clone(),
            ),
            (
                "KAFKA__TOPICS__ENRICHED_FLOWS".into(),
                kafka.topics.enriched_flows.clone(),
            ),
            (
                "KAFKA__TOPICS__DEAD_LETTER".into(),
                kafka.topics.dead_letter.clone(),
            ),
            ("KAFKA__CLIENT_ID".into(), group.to_string()),
        ]
    };
    let enricher_group = format!("{run_id}_enricher");
    let sink_group = format!("{run_id}_sink");
    let mut env = common(&enricher_group);
    env.push(("ENRICHER__GROUP_ID".into(), enricher_group.clone()));
    let mut enricher = StageProcess::spawn("enricher", env, work.path())?;
    let mut env = common(&sink_group);
    env.push(("SINK__GROUP_ID".into(), sink_group.clone()));
    match &filter {
        Some(f) => {
            env.push(("CLICKHOUSE__URL".into(), f.url()));
            env.push(("CLICKHOUSE__VALIDATION".into(), "false".into()));
            env.push(("SINK__MIGRATE_ON_START".into(), "false".into()));
        }
        None => env.push(("CLICKHOUSE__URL".into(), target.url.clone())),
    }
    env.push(("CLICKHOUSE__DATABASE".into(), target.database.clone()));
    if !target.user.is_empty() {
        env.push(("CLICKHOUSE__USER".into(), target.user.clone()));
        env.push(("CLICKHOUSE__PASSWORD".into(), target.password.clone()));
    }
    if let Some(age) = opts.sink_batch_age_ms {
        env.push(("BATCH__MAX_AGE_MS".into(), age.to_string()));
    }
    let mut sink = StageProcess::spawn("sink", env, work.path())?;

    let mut pids = vec![("load generator".to_string(), std::process::id())];
    pids.extend(
        probe::child_pids("tansu")
            .into_iter()
            .map(|p| ("broker (tansu)".to_string(), p)),
    );
    pids.push(("enricher".into(), enricher.child.id()));
    pids.push(("sink".into(), sink.child.id()));
    if chdb.is_some() {
        pids.extend(
            probe::child_pids("python")
                .into_iter()
                .map(|p| ("ClickHouse (chdb front)".to_string(), p)),
        );
    }
    if let Some(server) = &ch18 {
        let pid = server
            .pid()
            .context("clickhouse-server 18.16 wrote no pid file")?;
        pids.push(("ClickHouse (server 18.16)".to_string(), pid));
    }
    if let Some(f) = &filter {
        pids.push(("settings filter (bench, 18.16 only)".to_string(), f.pid()));
    }
    let names: Vec<String> = pids.iter().map(|(n, _)| n.clone()).collect();
    let col = |name: &str| names.iter().position(|n| n == name);

    let group_reader = |group: &str| -> anyhow::Result<BaseConsumer> {
        Ok(rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()?)
    };
    let tpl = |topic: &str| {
        let mut t = TopicPartitionList::new();
        for p in 0..opts.partitions {
            t.add_partition(topic, p);
        }
        t
    };
    let deliveries = Arc::new(Deliveries::default());
    let producer = produce::producer(&kafka, deliveries.clone())?;
    let mut monitor = Monitor {
        start: Instant::now(),
        pids,
        enricher_port: enricher.metrics_port,
        sink_port: sink.metrics_port,
        enricher_group: group_reader(&enricher_group)?,
        sink_group: group_reader(&sink_group)?,
        raw_tpl: tpl(&kafka.topics.raw_flows),
        enriched_tpl: tpl(&kafka.topics.enriched_flows),
        deliveries: deliveries.clone(),
        samples: Vec::new(),
    };
    let every = Duration::from_millis(opts.sample_ms);

    // Warm-up: both stages joined their groups and a first batch reached ClickHouse.
    say(
        &multi,
        format!("warm-up: {} records through the pipeline", opts.warmup),
    );
    let pb = bar(&multi, opts.warmup, "warm-up");
    let mut seq = 0u64;
    produce::produce(
        &producer,
        &mut generator,
        &kafka.topics.raw_flows,
        seq,
        opts.warmup,
        0.0,
        &pb,
    )?;
    seq += opts.warmup;
    let target = opts.warmup as f64;
    sample_until(
        &mut monitor,
        &mut [&mut enricher, &mut sink],
        "warm-up",
        every,
        Duration::from_secs(120),
        &pb,
        |s| s.sink_inserted >= target,
    )?;
    pb.finish();

    // 1. Broker baseline: produce + consume concurrently, no processing; repeated, the best
    // repetition kept (the limit is what the broker can do: a stall in one short repetition
    // would understate it and flatter the ratio).
    let n = opts.records;
    let mut baseline: Option<Baseline> = None;
    let mut repeats = Vec::new();
    for (rep, baseline_topic) in baseline_topics.iter().enumerate() {
        say(
            &multi,
            format!(
                "baseline {}/{}: {n} records through the broker alone",
                rep + 1,
                baseline_topics.len()
            ),
        );
        let pb_base = bar(&multi, n, "baseline produce");
        let pb_cons = bar(&multi, n, "baseline consume");
        let base_first = monitor.sample("baseline");
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("{run_id}_baseline{rep}"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()?;
        let mut assign = TopicPartitionList::new();
        for p in 0..opts.partitions {
            assign.add_partition_offset(baseline_topic, p, Offset::Beginning)?;
        }
        consumer.assign(&assign)?;
        let base_deliveries = Arc::new(Deliveries::default());
        let base_producer = produce::producer(&kafka, base_deliveries.clone())?;
        let started = Instant::now();
        let (produced_base, consumed_at) = std::thread::scope(|scope| -> anyhow::Result<_> {
            let cons = scope.spawn(|| -> anyhow::Result<f64> {
                let mut got = 0u64;
                while got < n {
                    anyhow::ensure!(
                        started.elapsed() < Duration::from_secs(600),
                        "baseline consumer stalled at {got}"
                    );
                    if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                        let m = m?;
                        if m.payload().is_some() {
                            got += 1;
                        }
                        if got.is_multiple_of(4096) {
                            pb_cons.set_position(got);
                        }
                    }
                }
                pb_cons.set_position(got);
                Ok(started.elapsed().as_secs_f64())
            });
            let mut base_gen = Generator::new(
                opts.shape.clone(),
                &run_id,
                base_ns - 1_000_000_000_000,
                opts.seed + 1,
            );
            let produced = produce::produce(
                &base_producer,
                &mut base_gen,
                baseline_topic,
                0,
                n,
                0.0,
                &pb_base,
            )?;
            let consumed = cons
                .join()
                .map_err(|_| anyhow::anyhow!("baseline consumer panicked"))??;
            Ok((produced, consumed))
        })?;
        pb_base.finish();
        pb_cons.finish();
        let base_last = monitor.sample("baseline");
        drop(consumer);
        drop(base_producer);
        let mut base_rates = vec![None; names.len()];
        base_rates[0] = Some(n as f64 / produced_base.seconds);
        let this = Baseline {
            records: n,
            produce_only_per_s: n as f64 / produced_base.seconds,
            pass_through_per_s: n as f64 / consumed_at,
            seconds: consumed_at,
            costs: costs(
                &names,
                &base_first,
                &base_last,
                &monitor.samples,
                n,
                &base_rates,
            ),
            cpu: CpuUse::between(&base_first, &base_last),
            repeats: Vec::new(),
        };
        repeats.push(this.pass_through_per_s);
        if baseline
            .as_ref()
            .is_none_or(|b| this.pass_through_per_s > b.pass_through_per_s)
        {
            baseline = Some(this);
        }
    }
    let mut baseline = baseline.context("no baseline repetition")?;
    baseline.repeats = repeats;

    // 2. Saturation: the same number of records through the whole pipeline, as fast as it goes.
    say(
        &multi,
        format!("saturation: {n} records through enricher and sink"),
    );
    let pb = bar(&multi, n, "saturation inserted");
    let sat_first = monitor.sample("saturation");
    let already = sat_first.sink_inserted;
    let t0 = sat_first.t_s;
    let (sat_produced, sat_last) = {
        let pb_prod = bar(&multi, n, "saturation produce");
        std::thread::scope(|scope| -> anyhow::Result<_> {
            let prod = scope.spawn(|| {
                produce::produce(
                    &producer,
                    &mut generator,
                    &kafka.topics.raw_flows,
                    seq,
                    n,
                    0.0,
                    &pb_prod,
                )
            });
            let last = sample_until(
                &mut monitor,
                &mut [&mut enricher, &mut sink],
                "saturation",
                every,
                Duration::from_secs(900),
                &pb,
                |s| s.sink_inserted >= already + n as f64,
            )?;
            pb_prod.finish();
            let produced = prod
                .join()
                .map_err(|_| anyhow::anyhow!("producer panicked"))??;
            Ok((produced, last))
        })
    }?;
    seq += n;
    pb.finish();
    let sat_samples: Vec<Sample> = monitor
        .samples
        .iter()
        .filter(|s| s.t_s >= t0)
        .cloned()
        .collect();
    let stage_rate = |counter: &dyn Fn(&Sample) -> f64| {
        let from = counter(&sat_first);
        reached_at(&sat_samples, |s| counter(s) - from, n as f64).map(|t| n as f64 / (t - t0))
    };
    let mut sat_rates = vec![None; names.len()];
    sat_rates[0] = Some(n as f64 / sat_produced.seconds);
    if let Some(i) = col("enricher") {
        sat_rates[i] = stage_rate(&|s: &Sample| s.enricher_out);
    }
    if let Some(i) = col("sink") {
        sat_rates[i] = stage_rate(&|s: &Sample| s.sink_inserted);
    }
    let sat_seconds = reached_at(&sat_samples, |s| s.sink_inserted - already, n as f64)
        .unwrap_or(sat_last.t_s)
        - t0;
    let saturation_rate = n as f64 / sat_seconds;
    let sat_costs = costs(
        &names,
        &sat_first,
        &sat_last,
        &monitor.samples,
        n,
        &sat_rates,
    );

    // 3. Sustained rate.
    let rate = if opts.rate > 0.0 {
        opts.rate
    } else {
        (saturation_rate * 0.6).round().max(100.0)
    };
    let m = (rate * opts.duration_s).round() as u64;
    say(
        &multi,
        format!(
            "sustained: {rate:.0} records/s for {:.0} s ({m} records)",
            opts.duration_s
        ),
    );
    let pb = bar(&multi, m, "sustained inserted");
    let sus_first = monitor.sample("sustained");
    let already = sus_first.sink_inserted;
    let sus_seq = seq;
    let sus_exported_from = now_ns();
    let (sus_produced, sus_last) = {
        let pb_prod = bar(&multi, m, "sustained produce");
        std::thread::scope(|scope| -> anyhow::Result<_> {
            let prod = scope.spawn(|| {
                produce::produce(
                    &producer,
                    &mut generator,
                    &kafka.topics.raw_flows,
                    sus_seq,
                    m,
                    rate,
                    &pb_prod,
                )
            });
            let last = sample_until(
                &mut monitor,
                &mut [&mut enricher, &mut sink],
                "sustained",
                every,
                Duration::from_secs(900),
                &pb,
                |s| s.sink_inserted >= already + m as f64,
            )?;
            pb_prod.finish();
            let produced = prod
                .join()
                .map_err(|_| anyhow::anyhow!("producer panicked"))??;
            Ok((produced, last))
        })
    }?;
    seq += m;
    pb.finish();
    let mut sus_rates = vec![None; names.len()];
    sus_rates[0] = Some(m as f64 / sus_produced.seconds);
    if let Some(i) = col("enricher") {
        sus_rates[i] =
            Some((sus_last.enricher_out - sus_first.enricher_out) / (sus_last.t_s - sus_first.t_s));
    }
    if let Some(i) = col("sink") {
        sus_rates[i] = Some(
            (sus_last.sink_inserted - sus_first.sink_inserted) / (sus_last.t_s - sus_first.t_s),
        );
    }
    let sus_costs = costs(
        &names,
        &sus_first,
        &sus_last,
        &monitor.samples,
        m,
        &sus_rates,
    );

    // Stop the stages cleanly (the sink flushes and commits).
    say(
        &multi,
        "stopping the stages; counting rows in ClickHouse".into(),
    );
    let dead_letter = metric_sum(
        &probe::scrape(enricher.metrics_port),
        "flowlens_dead_letter_records_total",
    ) + metric_sum(
        &probe::scrape(sink.metrics_port),
        "flowlens_dead_letter_records_total",
    );
    enricher.stop()?;
    sink.stop()?;
    if tansu.is_none() {
        // An existing cluster keeps no trace of the run (best effort).
        use rdkafka::admin::{AdminClient, AdminOptions};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            kafka.producer_config().create()?;
        let mut topics = vec![
            kafka.topics.raw_flows.as_str(),
            kafka.topics.interfaces.as_str(),
            kafka.topics.enriched_flows.as_str(),
            kafka.topics.dead_letter.as_str(),
        ];
        topics.extend(baseline_topics.iter().map(String::as_str));
        if let Err(e) = tokio_rt.block_on(admin.delete_topics(&topics, &AdminOptions::new())) {
            say(
                &multi,
                format!("could not delete the run's topics {topics:?}: {e}"),
            );
        }
    }

    // Exact loss count: every id in [base, base + seq) must be there exactly once.
    let id_range = format!(
        "time_flow_start >= {} AND time_flow_start < {} AND startsWith(host, '{run_id}-')",
        engine.id(base_ns),
        engine.id(base_ns + seq as i64)
    );
    let counts = clickhouse.numbers(&format!(
        "SELECT count(), uniqExact(time_flow_start) FROM flows WHERE {id_range} FORMAT TSV"
    ))?;
    let (rows, unique_ids) = (counts[0] as u64, counts[1] as u64);
    let losses = Losses {
        sent: seq,
        acked: deliveries.acked.load(Ordering::Relaxed),
        delivery_failures: deliveries.failed.load(Ordering::Relaxed),
        rows,
        unique_ids,
        missing: seq.saturating_sub(unique_ids),
        duplicates: rows.saturating_sub(unique_ids),
        dead_lettered: dead_letter,
    };

    // Latency: time_inserted (server clock, ms) − time_exported (load generator, same clock).
    let lat_expr = engine.latency_ms();
    let exported_ns = engine.exported_ns();
    let phase_latency = |from: u64, to: u64| -> anyhow::Result<Vec<f64>> {
        clickhouse.numbers(&format!(
            "SELECT quantileExact(0.5)({lat_expr}), quantileExact(0.99)({lat_expr}), max({lat_expr}) \
             FROM flows WHERE time_flow_start >= {} AND time_flow_start < {} FORMAT TSV",
            engine.id(base_ns + from as i64),
            engine.id(base_ns + to as i64)
        ))
    };
    let sat_lat = phase_latency(sus_seq - n, sus_seq)?;
    let sus_lat = phase_latency(sus_seq, sus_seq + m)?;
    let series = clickhouse.query(&format!(
        "SELECT intDiv({exported_ns} - {sus_exported_from}, 1000000000) AS s, \
         quantileExact(0.5)({lat_expr}), quantileExact(0.99)({lat_expr}), max({lat_expr}) \
         FROM flows WHERE time_flow_start >= {} AND time_flow_start < {} \
         GROUP BY s ORDER BY s FORMAT TSV",
        engine.id(base_ns + sus_seq as i64),
        engine.id(base_ns + (sus_seq + m) as i64)
    ))?;
    let latency = series
        .lines()
        .filter_map(|l| {
            let v: Vec<f64> = l.split('\t').filter_map(|x| x.parse().ok()).collect();
            (v.len() == 4).then(|| LatencyPoint {
                t_s: v[0],
                p50_ms: v[1],
                p99_ms: v[2],
                max_ms: v[3],
            })
        })
        .collect();

    Ok(Report {
        machine: machine(),
        command: opts.command.clone(),
        quick: opts.quick,
        services,
        engine: match engine {
            Engine::Chdb if opts.clickhouse.is_some() => "existing server".into(),
            Engine::Chdb => "chdb".into(),
            Engine::Server18 => "server18".into(),
        },
        notes,
        started_utc: utc_now(),
        load_before,
        load_after: loadavg(),
        partitions: opts.partitions,
        sink_batch_age_ms: opts.sink_batch_age_ms,
        record_bytes,
        processes: names,
        ratio_to_broker: saturation_rate / baseline.pass_through_per_s,
        ratio_per_cpu: {
            let per_record = |c: &[StageCost]| c.iter().map(|c| c.cpu_s_per_million).sum::<f64>();
            per_record(&baseline.costs) / per_record(&sat_costs).max(1e-9)
        },
        baseline,
        saturation: Phase {
            records: n,
            target_rate: 0.0,
            produce_per_s: n as f64 / sat_produced.seconds,
            end_to_end_per_s: saturation_rate,
            seconds: sat_seconds,
            costs: sat_costs,
            cpu: CpuUse::between(&sat_first, &sat_last),
            latency_ms_p50: sat_lat[0],
            latency_ms_p99: sat_lat[1],
            latency_ms_max: sat_lat[2],
        },
        sustained: Phase {
            records: m,
            target_rate: rate,
            produce_per_s: m as f64 / sus_produced.seconds,
            end_to_end_per_s: m as f64 / (sus_last.t_s - sus_first.t_s),
            seconds: sus_last.t_s - sus_first.t_s,
            costs: sus_costs,
            cpu: CpuUse::between(&sus_first, &sus_last),
            latency_ms_p50: sus_lat[0],
            latency_ms_p99: sus_lat[1],
            latency_ms_max: sus_lat[2],
        },
        losses,
        codec,
        samples: monitor.samples,
        latency,
    })
}
