//! The pipeline under load, and the one driver of every phase that sends records through it:
//! N records into the raw topic at a rate (0: as fast as the producer takes them) while the
//! monitor samples, until the sink has inserted all of them; then the phase's numbers from its
//! samples. The saturation and the sustained phases differ only in their rate and in how
//! their time is read ([`Timing`]).

use std::time::Duration;

use crate::gen::Generator;
use crate::monitor::{self, reached_at, CpuUse, Monitor, Sample};
use crate::produce::{self, now_ns, CountingProducer, Produced};
use crate::progress::Progress;
use crate::results::Phase;
use crate::stages::Stages;

/// Longest a phase may take until the sink inserted its last record.
const PHASE_TIMEOUT: Duration = Duration::from_secs(900);
/// Longest the warm-up may take.
const WARM_UP_TIMEOUT: Duration = Duration::from_secs(120);

/// The load generator, the stages and the monitor of a run.
pub struct Pipeline {
    pub producer: CountingProducer,
    pub generator: Generator,
    /// The raw topic.
    pub topic: String,
    pub monitor: Monitor,
    pub stages: Stages,
    /// Sampling period.
    pub every: Duration,
    /// Records sent so far: the sequence number (id) of the next one.
    pub seq: u64,
}

/// How a phase's time is read from its samples.
#[derive(Debug, Clone, Copy)]
pub enum Timing {
    /// From the first sample to the moment the sink's counter reached the phase's records
    /// (interpolated between samples), each stage's rate likewise to the moment its own
    /// counter did: the throughput of a phase sent as fast as possible.
    UntilLastRow,
    /// From the first sample to the last, each stage's rate its mean over that span: a phase
    /// sent at a fixed rate.
    FirstToLastSample,
}

/// One phase as driven: its samples and what the load generator did.
pub struct PhaseRun {
    pub records: u64,
    pub target_rate: f64,
    /// Ids of the phase's records: `first_seq .. first_seq + records`.
    pub first_seq: u64,
    /// The load generator's clock (ns) just before the first record was sent.
    pub exported_from: i64,
    pub produced: Produced,
    pub first: Sample,
    pub last: Sample,
    /// The samples from `first` to `last`.
    pub samples: Vec<Sample>,
}

impl Pipeline {
    /// `count` records through the pipeline before anything is measured: both stages have
    /// joined their groups and a first batch reached ClickHouse.
    pub fn warm_up(&mut self, count: u64, progress: &Progress) -> anyhow::Result<()> {
        progress.say(format!("warm-up: {count} records through the pipeline"));
        let pb = progress.bar(count, "warm-up");
        let first_seq = self.next_ids(count);
        produce::produce(
            &self.producer,
            &mut self.generator,
            &self.topic,
            first_seq,
            count,
            0.0,
            &pb,
        )?;
        let target = count as f64;
        self.monitor.sample_until(
            &mut self.stages,
            "warm-up",
            self.every,
            WARM_UP_TIMEOUT,
            &pb,
            |s| s.sink_inserted >= target,
        )?;
        pb.finish();
        Ok(())
    }

    /// Sends `count` records at `rate` records/s (0: as fast as the producer takes them) while
    /// sampling, until the sink inserted them all.
    pub fn drive(
        &mut self,
        phase: &'static str,
        count: u64,
        rate: f64,
        progress: &Progress,
    ) -> anyhow::Result<PhaseRun> {
        let pb = progress.bar(count, &format!("{phase} inserted"));
        let first = self.monitor.sample(phase);
        let already = first.sink_inserted;
        let first_seq = self.next_ids(count);
        let exported_from = now_ns();
        let pb_prod = progress.bar(count, &format!("{phase} produce"));
        let Self {
            producer,
            generator,
            topic,
            monitor,
            stages,
            every,
            ..
        } = self;
        let (produced, last) = std::thread::scope(|scope| -> anyhow::Result<_> {
            let prod = scope.spawn(|| {
                produce::produce(producer, generator, topic, first_seq, count, rate, &pb_prod)
            });
            let last = monitor.sample_until(stages, phase, *every, PHASE_TIMEOUT, &pb, |s| {
                s.sink_inserted >= already + count as f64
            })?;
            pb_prod.finish();
            let produced = prod
                .join()
                .map_err(|_| anyhow::anyhow!("producer panicked"))??;
            Ok((produced, last))
        })?;
        pb.finish();
        let samples = monitor
            .samples
            .iter()
            .filter(|s| s.t_s >= first.t_s)
            .cloned()
            .collect();
        Ok(PhaseRun {
            records: count,
            target_rate: rate,
            first_seq,
            exported_from,
            produced,
            first,
            last,
            samples,
        })
    }

    /// Reserves `count` ids; returns the first.
    fn next_ids(&mut self, count: u64) -> u64 {
        let first = self.seq;
        self.seq += count;
        first
    }
}

impl PhaseRun {
    /// The phase's numbers for processes `names` (the load generator first), read with
    /// `timing`; its latencies are ClickHouse's to tell (zero until then).
    pub fn summary(&self, timing: Timing, names: &[String]) -> Phase {
        let n = self.records as f64;
        let mut rates = vec![None; names.len()];
        rates[0] = Some(n / self.produced.seconds);
        let col = |name: &str| names.iter().position(|c| c == name);
        if let Some(i) = col("enricher") {
            rates[i] = self.stage_rate(timing, |s| s.enricher_out);
        }
        if let Some(i) = col("sink") {
            rates[i] = self.stage_rate(timing, |s| s.sink_inserted);
        }
        let seconds = self.seconds(timing);
        Phase {
            records: self.records,
            target_rate: self.target_rate,
            produce_per_s: n / self.produced.seconds,
            end_to_end_per_s: n / seconds,
            seconds,
            costs: monitor::costs(
                names,
                &self.first,
                &self.last,
                &self.samples,
                self.records,
                &rates,
            ),
            cpu: CpuUse::between(&self.first, &self.last),
            latency_ms_p50: 0.0,
            latency_ms_p99: 0.0,
            latency_ms_max: 0.0,
        }
    }

    fn seconds(&self, timing: Timing) -> f64 {
        let (first, last) = (&self.first, &self.last);
        match timing {
            Timing::UntilLastRow => {
                let already = first.sink_inserted;
                reached_at(
                    &self.samples,
                    |s| s.sink_inserted - already,
                    self.records as f64,
                )
                .unwrap_or(last.t_s)
                    - first.t_s
            }
            Timing::FirstToLastSample => last.t_s - first.t_s,
        }
    }

    /// Records/s of the stage whose output `counter` counts.
    fn stage_rate(&self, timing: Timing, counter: impl Fn(&Sample) -> f64) -> Option<f64> {
        let (first, last) = (&self.first, &self.last);
        let n = self.records as f64;
        match timing {
            Timing::UntilLastRow => {
                let from = counter(first);
                reached_at(&self.samples, |s| counter(s) - from, n).map(|t| n / (t - first.t_s))
            }
            Timing::FirstToLastSample => {
                Some((counter(last) - counter(first)) / (last.t_s - first.t_s))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_s: f64, enricher_out: f64, sink_inserted: f64, cpu: f64) -> Sample {
        Sample {
            t_s,
            phase: "test",
            produced: 0,
            enricher_in: enricher_out,
            enricher_out,
            sink_inserted,
            lag_enricher: 0.0,
            lag_sink: 0.0,
            cpu_s: vec![cpu, cpu / 2.0, cpu / 4.0],
            rss_bytes: vec![1, 2, 3],
            machine_busy_s: cpu * 2.0,
        }
    }

    /// 100 records (ids 10..110) in a phase starting at t = 10 s after 10 rows of an earlier
    /// phase: the enricher's output reaches +100 at t = 11.5, the sink's at t = 12.5 (halfway
    /// between the samples at 12 and 13), the last sample is at 13.
    fn run() -> PhaseRun {
        let samples = vec![
            sample(10.0, 10.0, 10.0, 1.0),
            sample(11.0, 60.0, 30.0, 2.0),
            sample(12.0, 160.0, 80.0, 3.0),
            sample(13.0, 160.0, 140.0, 4.0),
        ];
        PhaseRun {
            records: 100,
            target_rate: 40.0,
            first_seq: 10,
            exported_from: 0,
            produced: Produced {
                sent: 100,
                seconds: 0.5,
                queue_full_waits: 0,
            },
            first: samples[0].clone(),
            last: samples[3].clone(),
            samples,
        }
    }

    fn names() -> Vec<String> {
        ["load generator", "enricher", "sink"]
            .map(String::from)
            .to_vec()
    }

    #[test]
    fn until_last_row_reads_when_each_counter_reached_the_records() {
        let p = run().summary(Timing::UntilLastRow, &names());
        assert_eq!(p.seconds, 2.5);
        assert_eq!(p.end_to_end_per_s, 40.0);
        assert_eq!(p.produce_per_s, 200.0);
        assert_eq!(p.target_rate, 40.0);
        let rates: Vec<_> = p.costs.iter().map(|c| c.records_per_s).collect();
        // The enricher: +100 at 11.5 (halfway from +50 at 11 to +150 at 12).
        assert_eq!(rates, [Some(200.0), Some(100.0 / 1.5), Some(40.0)]);
        let cpu: Vec<_> = p.costs.iter().map(|c| c.cpu_s).collect();
        assert_eq!(cpu, [3.0, 1.5, 0.75]);
        assert_eq!(p.costs[0].cpu_s_per_million, 30_000.0);
    }

    #[test]
    fn first_to_last_sample_reads_the_whole_span() {
        let p = run().summary(Timing::FirstToLastSample, &names());
        assert_eq!(p.seconds, 3.0);
        assert_eq!(p.end_to_end_per_s, 100.0 / 3.0);
        let rates: Vec<_> = p.costs.iter().map(|c| c.records_per_s).collect();
        assert_eq!(rates, [Some(200.0), Some(50.0), Some(130.0 / 3.0)]);
        assert_eq!(p.cpu.run_cores, (3.0 + 1.5 + 0.75) / 3.0);
        assert_eq!(p.cpu.machine_cores, 2.0);
    }
}
