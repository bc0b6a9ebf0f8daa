//! The enrichment pipeline: consume raw flows in the consumer group, decode, join, encode and
//! produce to the enriched topic; bad records go to the dead-letter topic. A raw record's offset
//! is stored for commit only after the broker acknowledged what it produced (see `offsets`).
//!
//! Enriched records go through a `BaseProducer` (flowlens_runtime's `PolledProducer`) whose delivery opaque is the raw record's
//! (partition, offset): its context ([`Reports`]) sends each delivery report down a channel, and
//! the pipeline loop takes them in batches, acknowledging offsets and storing positions once per
//! batch. No future or oneshot per record: ~1.8 µs of CPU per record less than with
//! `FutureProducer` (bench/README.md). Dead letters are rare: each is sent by a task of its own
//! through the shared `DeadLetter` and reports down the same channel.
//!
//! Identity (ARCHITECTURE.md, Delivery): every enriched record carries its `origin`, the raw
//! record's own origin if it has one, else (raw topic's stream id, partition, offset). The stream
//! id of each input partition is named when its first record arrives after an assignment
//! (`runtime::incarnation::Probe`: the topic id, or an id from the partition's earliest record),
//! and checked: a committed position stored under another stream id (commit metadata), offsets
//! going backwards without a rebalance, or the topic id changing (read again every
//! [`WATCH_INTERVAL`]) mean a new incarnation of the raw topic: the partition is read again from
//! its beginning under the new id, and acknowledgements of records read before (an older
//! *epoch*) no longer move its committable position. The enriched-record producer is
//! idempotent with `enable.gapless.guarantee` and no message timeout: what it delivers to a
//! partition is always a prefix of what it sent there, which the sink's deduplication needs.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use flowlens_runtime::incarnation::{self, Probe, StreamId};
use flowlens_runtime::kafka::CONSUME_BATCH;
use flowlens_runtime::{consumer_lag, health, kafka_probe, DeadLetter, PolledProducer, Shutdown};
use flowlens_schemas::Origin;
use futures::FutureExt as _;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::interfaces::{InterfaceReader, SharedCache};
use crate::join::{Joined, Kubernetes};
use crate::kubernetes::classify::Cidr;
use crate::kubernetes::store::SharedStore;
use crate::kubernetes::MetadataSource;
use crate::offsets::OffsetTracker;

mod partitions;
mod record_metrics;

use record_metrics::RecordMetrics;

/// Stage name in dead-letter headers and metric labels.
pub const STAGE: &str = "enricher";

/// How a consumed record was settled by the broker.
enum Outcome {
    Enriched,
    DeadLettered,
}

/// A consumed record's (partition, offset, epoch) and what became of it.
type Settled = (i32, i64, u32, anyhow::Result<Outcome>);

/// How often the raw topic's id is read again to notice a new incarnation.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(5);

/// How long a probe of the broker (topic id, one record, committed offsets) may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Consumer context remembering revoked partitions until the loop forgets their state.
#[derive(Default)]
struct InputContext {
    revoked: Mutex<Vec<i32>>,
}

impl ClientContext for InputContext {}

impl ConsumerContext for InputContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let gone: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(partitions = ?gone, "partitions revoked");
            self.revoked.lock().unwrap().extend(gone);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let given: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            tracing::info!(partitions = ?given, "partitions assigned");
        }
    }
}

/// What the pipeline knows of an input partition since it was assigned.
#[derive(Debug, Clone, Copy)]
struct Input {
    /// The incarnation its records come from.
    stream: StreamId,
    /// Named by the topic id (watched), not by the earliest record.
    from_topic_id: bool,
    /// Acknowledgements of records consumed under another epoch are not booked.
    epoch: u32,
}

/// Most delivery reports settled in one batch.
const REPORT_BATCH: usize = 1024;
/// Records in flight and not one delivery report for this long: the producer is stuck (a broker
/// that lost its producer id and keeps refusing it, or an outage this long), and the enricher
/// stops without committing what is not acknowledged; restarted, it gets a new producer id and
/// reads those records again.
pub const DELIVERY_STALL: Duration = Duration::from_secs(30);

/// Producer context of the enriched topic: sends each record's delivery report, tagged with the
/// raw record's (partition, offset) carried as the delivery opaque, to the pipeline.
struct Reports(mpsc::UnboundedSender<Settled>);

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = Box<(i32, i64, u32)>;

    fn delivery(&self, result: &DeliveryResult<'_>, source: Box<(i32, i64, u32)>) {
        let (partition, offset, epoch) = *source;
        let outcome = match result {
            Ok(_) => Ok(Outcome::Enriched),
            Err((e, message)) => Err(anyhow::anyhow!(
                "delivery to {} failed: {e}",
                message.topic()
            )),
        };
        // Fails only once the pipeline is gone, and it waits for every report before it goes.
        let _ = self.0.send((partition, offset, epoch, outcome));
    }
}

/// Creates the topics (if configured to), fills the interface cache, then enriches until
/// `shutdown` is triggered or a record cannot be delivered (an error: nothing is skipped).
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    crate::interfaces::register_condition(&config.kafka.topics.interfaces);
    kafka_probe::watch(&config.kafka, &shutdown).await?;
    consumer_lag::watch(
        &config.kafka,
        STAGE,
        &config.enricher.group_id,
        &config.kafka.topics.raw_flows,
        &shutdown,
    )?;
    let kafka = &config.kafka;
    let topics = &kafka.topics;
    let wanted = [
        (topics.raw_flows.as_str(), false),
        (topics.interfaces.as_str(), true),
        (topics.enriched_flows.as_str(), false),
        (topics.dead_letter.as_str(), false),
    ];
    tokio::select! {
        // The admin API waits for brokers: a stop request must not wait for it.
        _ = shutdown.cancelled() => return Ok(()),
        created = kafka.ensure_topics(&wanted) => created.context("creating topics")?,
    }

    let dead_letter = DeadLetter::new(
        kafka.producer_config(),
        topics.dead_letter.clone(),
        STAGE,
        &config.dead_letter,
        shutdown.clone(),
    );
    let mut reader = InterfaceReader::start(kafka, dead_letter.clone(), shutdown.clone())?;
    let ready_timeout = Duration::from_millis(config.enricher.interfaces_ready_timeout_ms);
    tokio::select! {
        _ = shutdown.cancelled() => {
            reader.stop().await;
            return Ok(());
        }
        ready = reader.wait_ready(ready_timeout) => if !ready {
            tracing::warn!(
                topic = %topics.interfaces,
                timeout_ms = config.enricher.interfaces_ready_timeout_ms,
                "interface cache not caught up in time; enriching anyway"
            );
        }
    }

    let mut metadata = MetadataSource::start(&config.kubernetes, shutdown.clone())
        .context("starting the Kubernetes metadata source")?;
    if let Some(source) = &mut metadata {
        let timeout = Duration::from_millis(config.kubernetes.ready_timeout_ms);
        tokio::select! {
            _ = shutdown.cancelled() => {}
            ready = source.wait_ready(timeout) => if !ready {
                tracing::warn!(
                    source = ?config.kubernetes.source,
                    timeout_ms = config.kubernetes.ready_timeout_ms,
                    "kubernetes metadata not loaded in time; enriching anyway"
                );
            }
        }
    }

    let (report, reports) = mpsc::unbounded_channel();
    let producer = PolledProducer::new(&enriched_producer_config(kafka), Reports(report.clone()))
        .context("creating producer")?;
    let consumer: StreamConsumer<InputContext> = kafka
        .consumer_config(&config.enricher.group_id)
        .create_with_context(InputContext::default())
        .context("creating consumer")?;
    let probe = Probe::new(kafka, PROBE_TIMEOUT)?;
    let output_partitions = tokio::task::block_in_place(|| {
        producer
            .client()
            .fetch_metadata(Some(&topics.enriched_flows), PROBE_TIMEOUT)
            .map(|m| m.topics().first().map_or(0, |t| t.partitions().len()))
    })
    .context("reading the enriched topic's partitions")?;
    anyhow::ensure!(
        output_partitions > 0,
        "topic {} has no partitions",
        topics.enriched_flows
    );
    consumer
        .subscribe(&[topics.raw_flows.as_str()])
        .context("subscribing to raw flows")?;
    tracing::info!(
        group = %config.enricher.group_id,
        input = %topics.raw_flows,
        output = %topics.enriched_flows,
        "enricher started"
    );

    let pipeline = Pipeline {
        producer,
        consumer: std::sync::Arc::new(consumer),
        reports,
        report,
        dead_letter,
        cache: reader.cache.clone(),
        kubernetes: metadata.as_ref().map(|m| m.store.clone()),
        cidrs: config.kubernetes.cidrs(),
        input: topics.raw_flows.clone(),
        output: topics.enriched_flows.clone(),
        max_in_flight: config.enricher.max_in_flight,
        tracker: OffsetTracker::new(),
        in_flight: 0,
        probe,
        inputs: HashMap::new(),
        next_epoch: 0,
        output_partitions: output_partitions as i32,
        metrics: RecordMetrics::new(),
    };
    let result = pipeline.run(&shutdown).await;
    reader.stop().await;
    if let Some(metadata) = metadata {
        metadata.stop().await;
    }
    result
}

/// The enriched-record producer: the shared producer settings, then what keeps its deliveries
/// gapless per partition whatever `kafka.properties` says (librdkafka: with
/// `enable.gapless.guarantee` an error that could leave a gap is fatal for the producer; messages
/// failed by `message.timeout.ms` are not covered, so there is no timeout).
pub fn enriched_producer_config(kafka: &flowlens_runtime::kafka::KafkaConfig) -> ClientConfig {
    let mut c = kafka.producer_config();
    for (key, value) in [
        ("enable.idempotence", "true"),
        ("enable.gapless.guarantee", "true"),
        ("message.timeout.ms", "0"),
        ("acks", "all"),
        // A broker restarted empty must not get the enriched topic created by a metadata request
        // with its default partition count: records wait until the topic is created as it
        // should be (kafka.create_topics at start, or its operators).
        ("allow.auto.create.topics", "false"),
    ] {
        if c.get(key).is_some_and(|v| v != value) {
            tracing::warn!(
                key,
                value,
                "kafka.properties overridden for the enriched records (exactly-once needs it)"
            );
        }
        c.set(key, value);
    }
    c
}

struct Pipeline {
    consumer: std::sync::Arc<StreamConsumer<InputContext>>,
    producer: PolledProducer<Reports>,
    /// Delivery reports of the enriched records (from `producer`) and of the dead letters.
    reports: mpsc::UnboundedReceiver<Settled>,
    /// The sending end of `reports`, for the dead-letter tasks (it also keeps `reports` open).
    report: mpsc::UnboundedSender<Settled>,
    /// Its producer is created with the first bad record (a stream without bad records does
    /// not pay for a second producer and its polling thread).
    dead_letter: DeadLetter,
    cache: SharedCache,
    kubernetes: Option<SharedStore>,
    cidrs: Vec<Cidr>,
    input: String,
    output: String,
    max_in_flight: usize,
    tracker: OffsetTracker,
    /// Records consumed whose delivery report has not come in yet.
    in_flight: usize,
    probe: Probe,
    /// Input partitions whose incarnation is named (since their assignment).
    inputs: HashMap<i32, Input>,
    next_epoch: u32,
    /// Partitions of the enriched topic (a record without a key goes to one chosen by its origin).
    output_partitions: i32,
    metrics: RecordMetrics,
}

impl Pipeline {
    async fn run(mut self, shutdown: &Shutdown) -> anyhow::Result<()> {
        let mut batch = Vec::with_capacity(REPORT_BATCH);
        let mut failure = None;
        let in_flight_gauge = metrics::gauge!("flowlens_enricher_in_flight_records");
        in_flight_gauge.set(0.0);
        let stop = shutdown.cancelled();
        tokio::pin!(stop);
        // The loop beats every second whatever it waits for; 150 s of silence means it is stuck.
        let alive = health::watch_loop("enricher", Duration::from_secs(150));
        let mut beat = tokio::time::interval(Duration::from_secs(1));
        let consumer = self.consumer.clone();
        let mut watch = tokio::time::interval(WATCH_INTERVAL);
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The last delivery report, or the moment records went in flight after none were.
        let mut progress = Instant::now();
        let mut stalled = false;
        loop {
            alive.beat();
            tokio::select! {
                biased;
                _ = &mut stop => break,
                _ = self.reports.recv_many(&mut batch, REPORT_BATCH) => {
                    progress = Instant::now();
                    if let Err(e) = self.settle(&mut batch) {
                        failure = Some(e);
                        break;
                    }
                }
                _ = watch.tick() => self.watch_topic_id(),
                message = consumer.recv(), if self.in_flight < self.max_in_flight => {
                    // The records already fetched are taken in the same pass (one wakeup of
                    // the loop, one clock read), up to CONSUME_BATCH.
                    let mut next = Some(message);
                    let mut taken = 0;
                    let now_ns = crate::kubernetes::now_ns();
                    while let Some(received) = next.take() {
                        self.apply_revocations();
                        let message = match received {
                            Ok(message) => message,
                            Err(e) => {
                                tracing::warn!(topic = %self.input, error = %e, "consume error");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                break;
                            }
                        };
                        let (partition, offset) = (message.partition(), message.offset());
                        if let Some(input) = self.admit(partition, offset) {
                            self.tracker.consumed(partition, offset);
                            if let Err(e) = self.process(&message, input, now_ns).await {
                                failure = Some(self.failed(partition, offset, e));
                                break;
                            }
                            if self.in_flight == 0 {
                                progress = Instant::now();
                            }
                            self.in_flight += 1;
                        }
                        taken += 1;
                        if taken < CONSUME_BATCH && self.in_flight < self.max_in_flight {
                            next = consumer.recv().now_or_never();
                        }
                    }
                    if failure.is_some() {
                        break;
                    }
                }
                _ = beat.tick() => {
                    if self.in_flight > 0 && progress.elapsed() >= DELIVERY_STALL {
                        metrics::counter!("flowlens_enricher_delivery_stalls_total").increment(1);
                        failure = Some(anyhow::anyhow!(
                            "no delivery report for {:?} with {} records in flight: the producer \
                             is stuck (a broker that lost its producer id, or unreachable); \
                             stopping without committing them",
                            progress.elapsed(),
                            self.in_flight
                        ));
                        stalled = true;
                        break;
                    }
                }
            }
            in_flight_gauge.set(self.in_flight as f64);
        }
        alive.retire();

        // Stop consuming; let every record already produced be acknowledged (or fail).
        tracing::info!(in_flight = self.in_flight, "draining in-flight records");
        while self.in_flight > 0 && !stalled {
            // Never 0 (channel closed): `self.report` keeps it open.
            if self.reports.recv_many(&mut batch, REPORT_BATCH).await == 0 {
                break;
            }
            if let Err(e) = self.settle(&mut batch) {
                failure.get_or_insert(e);
            }
        }
        in_flight_gauge.set(0.0);
        let committed = self.commit_final();
        match (failure, committed) {
            (Some(e), _) => Err(e),
            (None, Err(e)) => Err(e),
            (None, Ok(())) => {
                tracing::info!("enricher stopped");
                Ok(())
            }
        }
    }

    /// Decodes, joins and produces one raw record (or sends it to the dead-letter topic); its
    /// delivery report comes later through `reports`. An error means it could not be queued.
    /// `now_ns`: the wall clock (Unix ns) for the record's lag.
    async fn process(
        &self,
        message: &BorrowedMessage<'_>,
        input: Input,
        now_ns: i64,
    ) -> anyhow::Result<()> {
        let (partition, offset) = (message.partition(), message.offset());
        self.metrics.records_in.increment(1);

        let mut raw = match flowlens_schemas::reader::raw_flow(
            message.payload().unwrap_or_default(),
        ) {
            Ok(raw) => raw,
            Err(e) => {
                self.metrics.invalid.increment(1);
                let reason = format!("decoding RawFlow: {e}");
                tracing::warn!(topic = %self.input, partition, offset, %reason, "invalid raw flow");
                return self.dead_letter(message, reason, input.epoch);
            }
        };
        let origin = raw.origin.get_or_insert_with(|| Origin {
            topic: self.input.clone(),
            stream: input.stream,
            partition,
            offset,
        });
        let routed = (u64::from_le_bytes(origin.stream[..8].try_into().unwrap())
            ^ origin.partition as u64)
            % self.output_partitions as u64;
        let lag_s = (now_ns - raw.time_exported_ns) as f64 / 1e9;
        self.metrics.lag.record(lag_s);
        // Join and encode in one pass, straight from the caches into the message.
        let mut payload = Vec::with_capacity(320);
        let hits = {
            let cache = self.cache.read().unwrap_or_else(|p| p.into_inner());
            let store = self
                .kubernetes
                .as_ref()
                .map(|s| s.read().unwrap_or_else(|p| p.into_inner()));
            let kubernetes = store.as_deref().map(|store| Kubernetes {
                store,
                cluster_cidrs: &self.cidrs,
            });
            let joined = Joined::new(&raw, &cache, kubernetes);
            joined.encode(&mut payload).map(|()| joined.hits())
        };
        let hits = match hits {
            Ok(hits) => hits,
            Err(e) => {
                self.metrics.invalid.increment(1);
                let reason = format!("encoding EnrichedFlow: {e}");
                tracing::warn!(topic = %self.input, partition, offset, %reason, "raw flow not enriched");
                return self.dead_letter(message, reason, input.epoch);
            }
        };
        self.metrics.joined(hits, self.kubernetes.is_some());

        let mut record = BaseRecord::<[u8], [u8], _>::with_opaque_to(
            &self.output,
            Box::new((partition, offset, input.epoch)),
        )
        .payload(&payload);
        // Every copy of a record goes to the same enriched partition: by key, or without one by
        // its origin (a random partition would put a replay beside another partition's copy).
        match message.key() {
            Some(key) => record = record.key(key),
            None => record = record.partition(routed as i32),
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _)) => {
                    // A raw record the join made too big for the producer (long strings).
                    self.metrics.invalid.increment(1);
                    let reason = format!(
                        "enriched record of {} bytes exceeds the producer's message.max.bytes",
                        payload.len()
                    );
                    tracing::warn!(topic = %self.input, partition, offset, %reason, "raw flow too large to enrich");
                    return self.dead_letter(message, reason, input.epoch);
                }
                Err((e, _)) => anyhow::bail!("producing to {}: {e}", self.output),
            }
        }
    }

    /// Copies `message` to the dead-letter topic from a task of its own, which reports the
    /// outcome down `reports` like any delivery.
    fn dead_letter(
        &self,
        message: &BorrowedMessage<'_>,
        reason: String,
        epoch: u32,
    ) -> anyhow::Result<()> {
        let (dead_letter, report) = (self.dead_letter.clone(), self.report.clone());
        let (partition, offset) = (message.partition(), message.offset());
        let message = message.detach();
        tokio::spawn(async move {
            let result = dead_letter.send(&message, &reason).await;
            let _ = report.send((
                partition,
                offset,
                epoch,
                result.map(|_| Outcome::DeadLettered),
            ));
        });
        Ok(())
    }

    /// Books a batch of reports: acknowledges each delivered record, then stores the new
    /// committable position of every partition the batch moved (one `store_offsets` per batch).
    /// A failed delivery is returned as an error (the batch's first; every one is logged and
    /// counted): its offset stays pending, so it is never committed past.
    fn settle(&mut self, batch: &mut Vec<Settled>) -> anyhow::Result<()> {
        let (mut enriched, mut failure) = (0, None);
        let mut partitions: Vec<i32> = Vec::new();
        for (partition, offset, epoch, result) in batch.drain(..) {
            self.in_flight -= 1;
            match result {
                Ok(outcome) => {
                    if matches!(outcome, Outcome::Enriched) {
                        enriched += 1;
                    }
                    if self.inputs.get(&partition).map(|i| i.epoch) != Some(epoch) {
                        // Read before a revocation or a new incarnation: not this position's.
                        continue;
                    }
                    self.tracker.acknowledged(partition, offset);
                    if !partitions.contains(&partition) {
                        partitions.push(partition);
                    }
                }
                Err(e) => {
                    let e = self.failed(partition, offset, e);
                    failure.get_or_insert(e);
                }
            }
        }
        metrics::counter!("flowlens_enricher_records_out_total").increment(enriched);
        let positions: Vec<(i32, i64)> = partitions
            .into_iter()
            .filter_map(|p| Some((p, self.tracker.take_committable(p)?)))
            .collect();
        if !positions.is_empty() {
            self.store(&positions);
        }
        failure.map_or(Ok(()), Err)
    }

    /// Counts and logs a record that was not delivered (or not even queued); the error to stop on.
    fn failed(&self, partition: i32, offset: i64, e: anyhow::Error) -> anyhow::Error {
        metrics::counter!("flowlens_enricher_delivery_errors_total").increment(1);
        tracing::error!(topic = %self.input, partition, offset, error = %e, "record not delivered; stopping");
        e.context(format!("raw record {}/{partition}/{offset}", self.input))
    }

    /// The positions to commit, each with its incarnation's stream id as commit metadata.
    fn positions(&self, positions: &[(i32, i64)]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for &(partition, position) in positions {
            tpl.add_partition_offset(&self.input, partition, Offset::Offset(position))
                .expect("a concrete offset is always valid");
            if let (Some(input), Some(mut e)) = (
                self.inputs.get(&partition),
                tpl.find_partition(&self.input, partition),
            ) {
                e.set_metadata(incarnation::hex(&input.stream));
            }
        }
        tpl
    }

    /// Stores positions for librdkafka's periodic commit (`store_offsets` keeps them as given).
    fn store(&self, positions: &[(i32, i64)]) {
        if let Err(e) = self.consumer.store_offsets(&self.positions(positions)) {
            // Typically the partition was revoked by a rebalance: its new owner resumes from the
            // last commit, so at worst records are enriched twice, never lost.
            tracing::debug!(error = %e, "offset not stored");
        }
    }

    /// Stores and synchronously commits the position of every partition still assigned.
    fn commit_final(&self) -> anyhow::Result<()> {
        let assigned = self.consumer.assignment().unwrap_or_default();
        let positions: Vec<(i32, i64)> = self
            .tracker
            .all_committable()
            .into_iter()
            .filter(|&(p, _)| {
                assigned.find_partition(&self.input, p).is_some() && self.inputs.contains_key(&p)
            })
            .collect();
        if positions.is_empty() {
            return Ok(());
        }
        self.store(&positions);
        self.consumer
            .commit(&self.positions(&positions), CommitMode::Sync)
            .context("committing offsets")?;
        tracing::info!(?positions, "offsets committed");
        Ok(())
    }
}
