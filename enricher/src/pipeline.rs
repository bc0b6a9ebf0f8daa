//! The enrichment pipeline: consume raw flows in the consumer group, decode, join, encode and
//! produce to the enriched topic; bad records go to the dead-letter topic. A raw record's offset
//! is stored for commit only after the broker acknowledged what it produced (see `offsets`).

use std::time::Duration;

use anyhow::Context as _;
use flowlens_runtime::{DeadLetter, Shutdown};
use futures::future::{self, BoxFuture, FutureExt};
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::interfaces::{InterfaceReader, SharedCache};
use crate::join::{Joined, Kubernetes};
use crate::kubernetes::classify::Cidr;
use crate::kubernetes::store::SharedStore;
use crate::kubernetes::MetadataSource;
use crate::offsets::OffsetTracker;

/// Stage name in dead-letter headers and metric labels.
pub const STAGE: &str = "enricher";

/// How a consumed record was settled by the broker.
enum Outcome {
    Enriched,
    DeadLettered,
}

/// A consumed record's (partition, offset) and what became of it.
type Settled = (i32, i64, anyhow::Result<Outcome>);

/// Creates the topics (if configured to), fills the interface cache, then enriches until
/// `shutdown` is triggered or a record cannot be delivered (an error: nothing is skipped).
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
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

    let mut reader = InterfaceReader::start(kafka, shutdown.clone())?;
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

    let producer: FutureProducer = kafka
        .producer_config()
        .create()
        .context("creating producer")?;
    let consumer: StreamConsumer = kafka
        .consumer_config(&config.enricher.group_id)
        .create()
        .context("creating consumer")?;
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
        dead_letter: DeadLetter::new(producer.clone(), topics.dead_letter.clone(), STAGE),
        producer,
        consumer,
        cache: reader.cache.clone(),
        kubernetes: metadata.as_ref().map(|m| m.store.clone()),
        cidrs: config.kubernetes.cidrs(),
        input: topics.raw_flows.clone(),
        output: topics.enriched_flows.clone(),
        max_in_flight: config.enricher.max_in_flight,
        tracker: OffsetTracker::new(),
    };
    let result = pipeline.run(&shutdown).await;
    reader.stop().await;
    if let Some(metadata) = metadata {
        metadata.stop().await;
    }
    result
}

struct Pipeline {
    consumer: StreamConsumer,
    producer: FutureProducer,
    dead_letter: DeadLetter,
    cache: SharedCache,
    kubernetes: Option<SharedStore>,
    cidrs: Vec<Cidr>,
    input: String,
    output: String,
    max_in_flight: usize,
    tracker: OffsetTracker,
}

impl Pipeline {
    async fn run(mut self, shutdown: &Shutdown) -> anyhow::Result<()> {
        let mut in_flight: FuturesUnordered<BoxFuture<'static, Settled>> = FuturesUnordered::new();
        let mut failure = None;
        metrics::gauge!("flowlens_enricher_in_flight_records").set(0.0);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some(settled) = in_flight.next() => {
                    if let Err(e) = self.settle(settled) {
                        failure = Some(e);
                        break;
                    }
                }
                message = self.consumer.recv(), if in_flight.len() < self.max_in_flight => {
                    match message {
                        Ok(message) => {
                            self.tracker.consumed(message.partition(), message.offset());
                            let pending = self.process(&message).await;
                            in_flight.push(pending);
                        }
                        Err(e) => {
                            tracing::warn!(topic = %self.input, error = %e, "consume error");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
            metrics::gauge!("flowlens_enricher_in_flight_records").set(in_flight.len() as f64);
        }

        // Stop consuming; let every record already produced be acknowledged (or fail).
        tracing::info!(in_flight = in_flight.len(), "draining in-flight records");
        while let Some(settled) = in_flight.next().await {
            if let Err(e) = self.settle(settled) {
                failure.get_or_insert(e);
            }
        }
        metrics::gauge!("flowlens_enricher_in_flight_records").set(0.0);
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

    /// Decodes, joins and produces one raw record; returns the future of its acknowledgement.
    async fn process(&self, message: &BorrowedMessage<'_>) -> BoxFuture<'static, Settled> {
        let (partition, offset) = (message.partition(), message.offset());
        metrics::counter!("flowlens_enricher_records_in_total").increment(1);

        let raw = match crate::decode::raw_flow(message.payload().unwrap_or_default()) {
            Ok(raw) => raw,
            Err(e) => {
                metrics::counter!("flowlens_enricher_records_invalid_total").increment(1);
                let reason = format!("decoding RawFlow: {e}");
                tracing::warn!(topic = %self.input, partition, offset, %reason, "invalid raw flow");
                return self.dead_letter(message, reason);
            }
        };
        let lag_s = (crate::kubernetes::now_ns() - raw.time_exported_ns) as f64 / 1e9;
        metrics::histogram!("flowlens_enricher_record_lag_seconds").record(lag_s);
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
            joined.encode(&mut payload);
            joined.hits()
        };
        if hits.interface {
            metrics::counter!("flowlens_enricher_interface_join_hits_total").increment(1);
        } else {
            metrics::counter!("flowlens_enricher_interface_join_misses_total").increment(1);
        }
        if self.kubernetes.is_some() {
            for (end, hit) in [("src", hits.src), ("dst", hits.dst)] {
                let result = if hit { "hit" } else { "miss" };
                metrics::counter!("flowlens_enricher_kubernetes_lookups_total", "end" => end, "result" => result)
                    .increment(1);
            }
        }

        let delivery = loop {
            let mut record = FutureRecord::<[u8], [u8]>::to(&self.output).payload(&payload);
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            match self.producer.send_result(record) {
                Ok(delivery) => break delivery,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((e, _)) => {
                    let e = anyhow::anyhow!("producing to {}: {e}", self.output);
                    return future::ready((partition, offset, Err(e))).boxed();
                }
            }
        };
        let output = self.output.clone();
        async move {
            let result = match delivery.await {
                Ok(Ok(_)) => Ok(Outcome::Enriched),
                Ok(Err((e, _))) => Err(anyhow::anyhow!("delivery to {output} failed: {e}")),
                Err(_) => Err(anyhow::anyhow!("delivery to {output}: producer gone")),
            };
            (partition, offset, result)
        }
        .boxed()
    }

    fn dead_letter(
        &self,
        message: &BorrowedMessage<'_>,
        reason: String,
    ) -> BoxFuture<'static, Settled> {
        let (partition, offset) = (message.partition(), message.offset());
        let dead_letter = self.dead_letter.clone();
        let message = message.detach();
        async move {
            let result = dead_letter
                .send(&message, &reason)
                .await
                .map(|()| Outcome::DeadLettered);
            (partition, offset, result)
        }
        .boxed()
    }

    /// Books an acknowledgement and stores the partition's new committable offset. A failed
    /// delivery is returned as an error: its offset stays pending, so it is never committed past.
    fn settle(&mut self, (partition, offset, result): Settled) -> anyhow::Result<()> {
        match result {
            Ok(outcome) => {
                if matches!(outcome, Outcome::Enriched) {
                    metrics::counter!("flowlens_enricher_records_out_total").increment(1);
                }
                self.tracker.acknowledged(partition, offset);
                if let Some(position) = self.tracker.take_committable(partition) {
                    self.store(&[(partition, position)]);
                }
                Ok(())
            }
            Err(e) => {
                metrics::counter!("flowlens_enricher_delivery_errors_total").increment(1);
                tracing::error!(topic = %self.input, partition, offset, error = %e, "record not delivered; stopping");
                Err(e.context(format!("raw record {}/{partition}/{offset}", self.input)))
            }
        }
    }

    fn positions(&self, positions: &[(i32, i64)]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for &(partition, position) in positions {
            tpl.add_partition_offset(&self.input, partition, Offset::Offset(position))
                .expect("a concrete offset is always valid");
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
            .filter(|&(p, _)| assigned.find_partition(&self.input, p).is_some())
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
