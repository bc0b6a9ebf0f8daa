//! What the harness samples while the pipeline runs: records produced, the stages' counters,
//! consumer lag by committed offsets, CPU and memory of every process of the run and of the
//! whole machine; and the per-process costs of a phase computed from those samples.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::probe::{self, metric_sum, proc_stat};
use crate::produce::Deliveries;
use crate::results::StageCost;
use crate::stages::Stages;

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
    pub fn between(first: &Sample, last: &Sample) -> Self {
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

/// The consumer groups whose committed offsets give the lag: the enricher's on the raw topic,
/// the sink's on the enriched topic.
pub struct Groups<'a> {
    pub brokers: &'a str,
    pub partitions: i32,
    /// The enricher's group and the topic it reads (raw flows).
    pub enricher: (&'a str, &'a str),
    /// The sink's group and the topic it reads (enriched flows).
    pub sink: (&'a str, &'a str),
}

/// Everything sampled during a run.
pub struct Monitor {
    start: Instant,
    pids: Vec<(String, u32)>,
    enricher_port: u16,
    sink_port: u16,
    enricher_group: BaseConsumer,
    sink_group: BaseConsumer,
    raw_tpl: TopicPartitionList,
    enriched_tpl: TopicPartitionList,
    deliveries: Arc<Deliveries>,
    pub samples: Vec<Sample>,
}

impl Monitor {
    /// Samples the processes `pids` (named, in the report's order), the stages' metrics and the
    /// groups' committed offsets; `deliveries` counts what the load generator had acknowledged.
    pub fn new(
        pids: Vec<(String, u32)>,
        stages: &Stages,
        groups: &Groups<'_>,
        deliveries: Arc<Deliveries>,
    ) -> anyhow::Result<Self> {
        let group_reader = |group: &str| -> anyhow::Result<BaseConsumer> {
            Ok(rdkafka::ClientConfig::new()
                .set("bootstrap.servers", groups.brokers)
                .set("group.id", group)
                .set("enable.auto.commit", "false")
                .create()?)
        };
        let tpl = |topic: &str| {
            let mut t = TopicPartitionList::new();
            for p in 0..groups.partitions {
                t.add_partition(topic, p);
            }
            t
        };
        Ok(Self {
            start: Instant::now(),
            pids,
            enricher_port: stages.enricher.metrics_port,
            sink_port: stages.sink.metrics_port,
            enricher_group: group_reader(groups.enricher.0)?,
            sink_group: group_reader(groups.sink.0)?,
            raw_tpl: tpl(groups.enricher.1),
            enriched_tpl: tpl(groups.sink.1),
            deliveries,
            samples: Vec::new(),
        })
    }

    /// The processes' names, in the order of every sample's `cpu_s` and `rss_bytes`.
    pub fn names(&self) -> Vec<String> {
        self.pids.iter().map(|(n, _)| n.clone()).collect()
    }

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

    /// Takes one sample, keeps it and returns it.
    pub fn sample(&mut self, phase: &'static str) -> Sample {
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

    /// Samples every `every` until `done(sample)`; fails after `timeout` or if a stage died.
    pub fn sample_until(
        &mut self,
        stages: &mut Stages,
        phase: &'static str,
        every: Duration,
        timeout: Duration,
        progress: &ProgressBar,
        mut done: impl FnMut(&Sample) -> bool,
    ) -> anyhow::Result<Sample> {
        let start = Instant::now();
        loop {
            let s = self.sample(phase);
            progress.set_position(s.sink_inserted as u64);
            progress.set_message(format!(
                "lag enricher {:>8.0}  sink {:>8.0}",
                s.lag_enricher, s.lag_sink
            ));
            if done(&s) {
                return Ok(s);
            }
            stages.check_running()?;
            anyhow::ensure!(
                start.elapsed() < timeout,
                "{phase}: not done after {timeout:?} (inserted {}, produced {})",
                s.sink_inserted,
                s.produced
            );
            std::thread::sleep(every);
        }
    }
}

/// Per-process cost between two samples, for `records` records; `rates` are the records/s of
/// the processes that count records (by column).
pub fn costs(
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
pub fn reached_at(
    samples: &[Sample],
    counter: impl Fn(&Sample) -> f64,
    target: f64,
) -> Option<f64> {
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
