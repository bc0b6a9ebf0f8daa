//! The client library's floor under the enricher, measured in the run: a relay in a process of
//! its own (this binary's hidden `relay` subcommand) reads the baseline's records in a consumer
//! group and produces each one unchanged to a topic of its own, through the clients the enricher
//! uses with the enricher's settings (`KafkaConfig::consumer_config`,
//! `enriched_producer_config`), in the enricher's loop shape: `recv` then what is already
//! fetched, one boxed delivery opaque per record, reports taken in batches from a channel and
//! positions stored once per batch. No decoding, no join, no encoding: its CPU per record is
//! what consuming and producing one record costs there, which no enricher on these clients goes
//! below. Without an output topic it only consumes (positions stored the same way): the Kafka
//! side of the sink, whose consumer has the same settings.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use flowlens_runtime::kafka::{KafkaConfig, CONSUME_BATCH};
use flowlens_runtime::PolledProducer;
use futures::FutureExt as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// What the relay measured, from its first record consumed to its last delivery report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayCost {
    pub records: u64,
    pub seconds: f64,
    /// CPU of the relay's process (every thread, librdkafka's included).
    pub cpu_s: f64,
}

impl RelayCost {
    pub fn us_per_record(&self) -> f64 {
        self.cpu_s * 1e6 / self.records.max(1) as f64
    }

    pub fn records_per_s(&self) -> f64 {
        self.records as f64 / self.seconds.max(1e-9)
    }
}

/// The floors of a run: consuming and producing (the enricher's), consuming only (the sink's
/// Kafka side).
#[derive(Debug, Clone, Serialize)]
pub struct Floors {
    pub relay: RelayCost,
    pub consume: RelayCost,
}

/// Runs the relay process over `records` records of `from`, into `to` or (`None`) consuming
/// only, and returns what it measured.
pub fn measure(
    kafka: &KafkaConfig,
    from: &str,
    to: Option<&str>,
    group: &str,
    records: u64,
) -> anyhow::Result<RelayCost> {
    let mut command = Command::new(std::env::current_exe()?);
    command
        .args(["relay", "--brokers", &kafka.brokers.join(",")])
        .args(["--from", from, "--group", group])
        .args(["--records", &records.to_string()]);
    if let Some(to) = to {
        command.args(["--to", to]);
    }
    let output = command
        .stdin(Stdio::null())
        .output()
        .context("starting the relay")?;
    anyhow::ensure!(
        output.status.success(),
        "the relay failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().context("the relay printed nothing")?;
    serde_json::from_str(last).with_context(|| format!("the relay's result `{last}`"))
}

/// The relay's producer context: each delivery report, tagged with the input record's
/// (partition, offset), goes down a channel.
struct Acks(mpsc::UnboundedSender<(i32, i64, bool)>);

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = Box<(i32, i64)>;

    fn delivery(&self, result: &DeliveryResult<'_>, source: Box<(i32, i64)>) {
        let _ = self.0.send((source.0, source.1, result.is_ok()));
    }
}

/// CPU time of this process so far (s).
fn process_cpu_s() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// The relay process: consumes `records` records of `from`, produces them to `to` (if given),
/// waits for every delivery report and prints its [`RelayCost`] as one JSON line.
pub fn relay(
    brokers: &str,
    from: &str,
    to: Option<&str>,
    group: &str,
    records: u64,
) -> anyhow::Result<()> {
    let kafka = KafkaConfig {
        brokers: brokers.split(',').map(|b| b.trim().to_string()).collect(),
        client_id: group.to_string(),
        ..Default::default()
    };
    let max_in_flight = flowlens_enricher::Config::default().enricher.max_in_flight;
    let rt = tokio::runtime::Runtime::new()?;
    let cost = rt.block_on(async {
        let (ack, mut acks) = mpsc::unbounded_channel();
        let producer = to
            .map(|_| {
                PolledProducer::new(
                    &flowlens_enricher::pipeline::enriched_producer_config(&kafka),
                    Acks(ack.clone()),
                )
            })
            .transpose()?;
        let consumer: StreamConsumer = kafka.consumer_config(group).create()?;
        consumer.subscribe(&[from])?;
        let (mut consumed, mut delivered, mut in_flight) = (0u64, 0u64, 0usize);
        let mut started: Option<(Instant, f64)> = None;
        let mut batch = Vec::with_capacity(1024);
        let deadline = Instant::now() + Duration::from_secs(600);
        while delivered < records {
            anyhow::ensure!(
                Instant::now() < deadline,
                "relay stalled: {consumed} consumed, {delivered} delivered of {records}"
            );
            tokio::select! {
                biased;
                _ = acks.recv_many(&mut batch, 1024) => {
                    let mut positions: HashMap<i32, i64> = HashMap::new();
                    for (partition, offset, ok) in batch.drain(..) {
                        anyhow::ensure!(ok, "relay delivery failed at {partition}/{offset}");
                        in_flight -= 1;
                        delivered += 1;
                        let p = positions.entry(partition).or_insert(offset + 1);
                        *p = (*p).max(offset + 1);
                    }
                    let mut tpl = TopicPartitionList::new();
                    for (partition, position) in positions {
                        tpl.add_partition_offset(from, partition, Offset::Offset(position))?;
                    }
                    let _ = consumer.store_offsets(&tpl);
                }
                message = consumer.recv(), if consumed < records && in_flight < max_in_flight => {
                    started.get_or_insert_with(|| (Instant::now(), process_cpu_s()));
                    let mut next = Some(message);
                    let mut taken = 0;
                    while let Some(message) = next.take() {
                        let message = message?;
                        let (partition, offset) = (message.partition(), message.offset());
                        consumed += 1;
                        in_flight += 1;
                        taken += 1;
                        let (Some(to), Some(producer)) = (to, &producer) else {
                            // Consuming only: acknowledged at once, through the same channel.
                            let _ = ack.send((partition, offset, true));
                            if taken < CONSUME_BATCH && consumed < records {
                                next = consumer.recv().now_or_never();
                            }
                            continue;
                        };
                        let mut record = BaseRecord::<[u8], [u8], _>::with_opaque_to(
                            to,
                            Box::new((partition, offset)),
                        )
                        .payload(message.payload().unwrap_or_default());
                        record = match message.key() {
                            Some(key) => record.key(key),
                            None => record.partition(partition),
                        };
                        loop {
                            match producer.send(record) {
                                Ok(()) => break,
                                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                                    record = back;
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                }
                                Err((e, _)) => anyhow::bail!("relay producing to {to}: {e}"),
                            }
                        }
                        if taken < CONSUME_BATCH && consumed < records && in_flight < max_in_flight {
                            next = consumer.recv().now_or_never();
                        }
                    }
                }
            }
        }
        let (t0, cpu0) = started.context("no record consumed")?;
        Ok::<_, anyhow::Error>(RelayCost {
            records,
            seconds: t0.elapsed().as_secs_f64(),
            cpu_s: process_cpu_s() - cpu0,
        })
    })?;
    println!("{}", serde_json::to_string(&cost)?);
    Ok(())
}
