//! The broker's own limit, measured in the run: the load generator produces N records to a
//! topic of their own while a plain consumer reads them back, no decoding, no processing.
//! Repeated, the best repetition kept: the limit is what the broker can do, and a stall in one
//! short repetition would understate it and flatter the pipeline's ratio.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use flowlens_runtime::kafka::KafkaConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::gen::{Generator, Shape};
use crate::monitor::{self, CpuUse, Monitor};
use crate::produce::{self, Deliveries};
use crate::progress::Progress;
use crate::results::Baseline;

/// What every repetition is made of.
pub struct BrokerAlone<'a> {
    pub kafka: &'a KafkaConfig,
    pub brokers: &'a str,
    pub run_id: &'a str,
    pub partitions: i32,
    /// Records per repetition.
    pub records: u64,
    pub shape: &'a Shape,
    pub seed: u64,
    /// The run's id base: the baseline's records get ids of their own, 1,000 s below it.
    pub base_ns: i64,
}

impl BrokerAlone<'_> {
    /// One repetition per topic of `topics`; the best one, with every repetition's rate.
    pub fn measure(
        &self,
        topics: &[String],
        monitor: &mut Monitor,
        progress: &Progress,
    ) -> anyhow::Result<Baseline> {
        let mut best: Option<Baseline> = None;
        let mut repeats = Vec::new();
        for (rep, topic) in topics.iter().enumerate() {
            progress.say(format!(
                "baseline {}/{}: {} records through the broker alone",
                rep + 1,
                topics.len(),
                self.records
            ));
            let this = self.repetition(rep, topic, monitor, progress)?;
            repeats.push(this.pass_through_per_s);
            if best
                .as_ref()
                .is_none_or(|b| this.pass_through_per_s > b.pass_through_per_s)
            {
                best = Some(this);
            }
        }
        let mut best = best.context("no baseline repetition")?;
        best.repeats = repeats;
        Ok(best)
    }

    fn repetition(
        &self,
        rep: usize,
        topic: &str,
        monitor: &mut Monitor,
        progress: &Progress,
    ) -> anyhow::Result<Baseline> {
        let n = self.records;
        let pb_base = progress.bar(n, "baseline produce");
        let pb_cons = progress.bar(n, "baseline consume");
        let first = monitor.sample("baseline");
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.brokers)
            .set("group.id", format!("{}_baseline{rep}", self.run_id))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()?;
        let mut assign = TopicPartitionList::new();
        for p in 0..self.partitions {
            assign.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        consumer.assign(&assign)?;
        let deliveries = Arc::new(Deliveries::default());
        let producer = produce::producer(self.kafka, deliveries)?;
        let started = Instant::now();
        let (produced, consumed_at) = std::thread::scope(|scope| -> anyhow::Result<_> {
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
            let mut generator = Generator::new(
                self.shape.clone(),
                self.run_id,
                self.base_ns - 1_000_000_000_000,
                self.seed + 1,
            );
            let produced = produce::produce(&producer, &mut generator, topic, 0, n, 0.0, &pb_base)?;
            let consumed = cons
                .join()
                .map_err(|_| anyhow::anyhow!("baseline consumer panicked"))??;
            Ok((produced, consumed))
        })?;
        pb_base.finish();
        pb_cons.finish();
        let last = monitor.sample("baseline");
        drop(consumer);
        drop(producer);
        let names = monitor.names();
        let mut rates = vec![None; names.len()];
        rates[0] = Some(n as f64 / produced.seconds);
        Ok(Baseline {
            records: n,
            produce_only_per_s: n as f64 / produced.seconds,
            pass_through_per_s: n as f64 / consumed_at,
            seconds: consumed_at,
            costs: monitor::costs(&names, &first, &last, &monitor.samples, n, &rates),
            cpu: CpuUse::between(&first, &last),
            repeats: Vec::new(),
        })
    }
}
