//! One benchmark run, in phases on the same services and the same machine:
//!
//! 1. **broker baseline** ([`crate::baseline`]): the load generator produces N records to a
//!    topic while a plain consumer reads them back, no decoding, no processing: the broker's
//!    pass-through limit (repeated, the best repetition kept).
//!    Then the **floors** ([`crate::relay`]): those records consumed and produced unchanged
//!    through the enricher's clients and settings, in a process of its own (the floor under the
//!    enricher's CPU per record), then consumed only (the sink's Kafka side).
//! 2. **pipeline saturation** ([`crate::phase`]): the same N records into the raw topic as fast
//!    as the producer goes, with the enricher and the sink (each in its own process, through
//!    their `run` APIs: [`crate::stages`]) carrying them into ClickHouse; throughput = N / time
//!    until the sink inserted the last.
//! 3. **sustained** (the same driver): a fixed rate (default 60 % of phase 2) for a duration,
//!    sampled over time ([`crate::monitor`]: rates, consumer lag, CPU, memory); end-to-end
//!    latency from ClickHouse itself (`time_inserted` − `time_exported`, both set on this
//!    machine's clock).
//!
//! Every record carries a unique id (`time_flow_start` = base + sequence), so losses and
//! duplicates are counted exactly in ClickHouse at the end ([`crate::verify`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use flowlens_testkit as testkit;

use crate::baseline::BrokerAlone;
use crate::codec::codec_costs;
use crate::gen::{Generator, Shape};
use crate::monitor::{Groups, Monitor};
use crate::phase::{Pipeline, Timing};
use crate::probe::{loadavg, machine, utc_now};
use crate::produce::{self, now_ns, Deliveries};
use crate::progress::Progress;
use crate::relay;
use crate::results::{Report, StageCost};
use crate::services::{ClickHouseTarget, Engine, Services};
use crate::stages::{StageSettings, Stages};
use crate::topics::Topics;
use crate::verify::Stored;

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

/// Runs the whole benchmark; writes nothing (see `report::write`).
pub fn run(opts: &Options) -> anyhow::Result<Report> {
    Services::check(opts)?;
    let progress = Progress::new(opts.progress);
    let load_before = loadavg();
    // Codec costs first, on a quiet process (same record shapes, another seed).
    let codec = codec_costs(
        &mut Generator::new(opts.shape.clone(), "codec", 1, opts.seed + 2),
        opts.records.clamp(1_000, 100_000),
    )?;
    let work = tempfile::tempdir()?;
    // Local services unless existing ones were given; dropped (stopped) at the end.
    let services = Services::start(opts, &progress, work.path())?;
    let clickhouse = services.clickhouse()?;

    let run_id = testkit::unique("bench");
    let tokio_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let topics = Topics::create(
        &run_id,
        &services.brokers,
        opts.partitions,
        opts.baseline_repeats,
        &tokio_rt,
    )?;
    let kafka = &topics.kafka;
    let base_ns = now_ns();
    let mut generator = Generator::new(opts.shape.clone(), &run_id, base_ns, opts.seed);
    let record_bytes = {
        let mut buf = Vec::new();
        flowlens_schemas::encode(&generator.record(0, base_ns), &mut buf)?;
        buf.len()
    };
    topics.publish_interfaces(&generator, base_ns)?;

    let deliveries = Arc::new(Deliveries::default());
    let mut pipeline = start_pipeline(
        opts,
        &services,
        &topics,
        &run_id,
        generator,
        deliveries.clone(),
        work.path(),
    )?;
    let names = pipeline.monitor.names();

    pipeline.warm_up(opts.warmup, &progress)?;
    // 1. Broker baseline: produce + consume concurrently, no processing.
    let n = opts.records;
    let baseline = BrokerAlone {
        kafka,
        brokers: &services.brokers,
        run_id: &run_id,
        partitions: opts.partitions,
        records: n,
        shape: &opts.shape,
        seed: opts.seed,
        base_ns,
    }
    .measure(&topics.baseline, &mut pipeline.monitor, &progress)?;
    // 1b. The floors: the first repetition's records relayed unchanged, then consumed only.
    progress.say(format!(
        "floors: {n} records relayed through the enricher's clients, then consumed only"
    ));
    let from = &topics.baseline[0];
    let floors = relay::Floors {
        relay: relay::measure(
            kafka,
            from,
            Some(&topics.relay),
            &format!("{run_id}_relay"),
            n,
        )?,
        consume: relay::measure(kafka, from, None, &format!("{run_id}_consume"), n)?,
    };
    // 2. Saturation: the same number of records through the whole pipeline, as fast as it goes.
    progress.say(format!("saturation: {n} records through enricher and sink"));
    let sat_run = pipeline.drive("saturation", n, 0.0, &progress)?;
    let mut saturation = sat_run.summary(Timing::UntilLastRow, &names);
    // 3. Sustained rate.
    let rate = if opts.rate > 0.0 {
        opts.rate
    } else {
        (saturation.end_to_end_per_s * 0.6).round().max(100.0)
    };
    let m = (rate * opts.duration_s).round() as u64;
    progress.say(format!(
        "sustained: {rate:.0} records/s for {:.0} s ({m} records)",
        opts.duration_s
    ));
    let sus_run = pipeline.drive("sustained", m, rate, &progress)?;
    let mut sustained = sus_run.summary(Timing::FirstToLastSample, &names);

    // Stop the stages cleanly (the sink flushes and commits).
    progress.say("stopping the stages; counting rows in ClickHouse".into());
    let dead_lettered = pipeline.stages.dead_lettered();
    pipeline.stages.stop()?;
    if !services.local_broker() {
        topics.delete(&tokio_rt, &progress)?;
    }

    let stored = Stored {
        clickhouse: &clickhouse,
        engine: services.engine,
        run_id: &run_id,
        base_ns,
    };
    let losses = stored.losses(
        pipeline.seq,
        (
            deliveries.acked.load(Ordering::Relaxed),
            deliveries.failed.load(Ordering::Relaxed),
        ),
        dead_lettered,
    )?;
    let sus_ids = sus_run.first_seq..sus_run.first_seq + m;
    stored.phase_latency(&mut saturation, sat_run.first_seq..sus_run.first_seq)?;
    stored.phase_latency(&mut sustained, sus_ids.clone())?;
    let latency = stored.latency_series(sus_ids, sus_run.exported_from)?;

    let per_record = |c: &[StageCost]| c.iter().map(|c| c.cpu_s_per_million).sum::<f64>();
    Ok(Report {
        machine: machine(),
        command: opts.command.clone(),
        quick: opts.quick,
        services: services.description(),
        engine: services.engine_name(),
        notes: services.notes.clone(),
        started_utc: utc_now(),
        load_before,
        load_after: loadavg(),
        partitions: opts.partitions,
        sink_batch_age_ms: opts.sink_batch_age_ms,
        record_bytes,
        processes: names,
        ratio_to_broker: saturation.end_to_end_per_s / baseline.pass_through_per_s,
        ratio_per_cpu: per_record(&baseline.costs) / per_record(&saturation.costs).max(1e-9),
        baseline,
        floors,
        saturation,
        sustained,
        losses,
        codec,
        samples: pipeline.monitor.samples,
        latency,
    })
}

/// Starts the stages on the run's topics and the monitor of every process of the run: the
/// pipeline, ready for its first record.
fn start_pipeline(
    opts: &Options,
    services: &Services,
    topics: &Topics,
    run_id: &str,
    generator: Generator,
    deliveries: Arc<Deliveries>,
    work: &Path,
) -> anyhow::Result<Pipeline> {
    let kafka = &topics.kafka;
    let (enricher_group, sink_group) = (format!("{run_id}_enricher"), format!("{run_id}_sink"));
    let stages = Stages::spawn(
        kafka,
        StageSettings {
            brokers: &services.brokers,
            partitions: opts.partitions,
            enricher_group: &enricher_group,
            sink_group: &sink_group,
            sink_clickhouse: services.sink_clickhouse_env(),
            sink_batch_age_ms: opts.sink_batch_age_ms,
        },
        work,
    )?;
    let mut pids = vec![("load generator".to_string(), std::process::id())];
    pids.extend(services.broker_processes());
    pids.push(("enricher".into(), stages.enricher.pid()));
    pids.push(("sink".into(), stages.sink.pid()));
    pids.extend(services.clickhouse_processes()?);
    let groups = Groups {
        brokers: &services.brokers,
        partitions: opts.partitions,
        enricher: (&enricher_group, &kafka.topics.raw_flows),
        sink: (&sink_group, &kafka.topics.enriched_flows),
    };
    Ok(Pipeline {
        producer: produce::producer(kafka, deliveries.clone())?,
        generator,
        topic: kafka.topics.raw_flows.clone(),
        monitor: Monitor::new(pids, &stages, &groups, deliveries)?,
        stages,
        every: Duration::from_millis(opts.sample_ms),
        seq: 0,
    })
}
