//! The consume → batch → insert → commit loop.
//!
//! Delivery is at-least-once, and an offset is committed only after ClickHouse acknowledged the
//! INSERT holding every row up to it:
//! * offsets are committed explicitly and synchronously (`enable.auto.commit=false`,
//!   `CommitMode::Sync`) right after a successful insert, never before and never on failure;
//! * an undecodable record goes to the dead-letter topic (with the reason header) and its offset
//!   counts as handled, so it never blocks its partition;
//! * while an insert is being retried (capped exponential backoff) the assigned partitions are
//!   paused and the consumer keeps being polled, so it stays in the group however long
//!   ClickHouse is down (no `max.poll.interval.ms` eviction); a record that still arrives joins
//!   the pending batch;
//! * on a rebalance the rows and offsets of revoked partitions are dropped from the pending batch
//!   (their new owner reads them again from the last committed offset): no loss, possible
//!   duplicates only if a commit fails after its insert succeeded;
//! * on shutdown the pending batch is flushed and committed; if ClickHouse is down at that moment
//!   the batch is abandoned uncommitted (it will be read again) and `run` still returns `Ok`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use flowlens_runtime::{DeadLetter, Shutdown};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::batch::{Batch, PartitionKey};
use crate::config::Config;
use crate::insert::{Backoff, Inserter};
use crate::row::FlowRow;

/// The stage name in dead-letter headers and logs.
pub const STAGE: &str = "sink";

/// Consumer context remembering revoked partitions until the loop drops their pending rows.
#[derive(Default)]
pub struct SinkContext {
    revoked: Mutex<Vec<PartitionKey>>,
}

impl ClientContext for SinkContext {}

impl ConsumerContext for SinkContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let gone: Vec<PartitionKey> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                tracing::info!(partitions = ?gone, "partitions revoked");
                self.revoked.lock().unwrap().extend(gone);
            }
            Rebalance::Assign(tpl) => {
                let new: Vec<PartitionKey> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                tracing::info!(partitions = ?new, "partitions assigned");
                // A partition given back to us is read again from its committed offset; rows of
                // it still pending were dropped at revocation.
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

type SinkConsumer = StreamConsumer<SinkContext>;

/// Runs the sink until `shutdown`: migrations (if configured), then the consume loop.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    if config.sink.migrate_on_start {
        let migrations = crate::migrate::embedded()?;
        let applied = crate::migrate::apply(&config.clickhouse, &migrations).await?;
        tracing::info!(?applied, available = migrations.len(), "migrations checked");
    }
    let topics = &config.kafka.topics;
    config
        .kafka
        .ensure_topics(&[
            (&topics.enriched_flows, false),
            (&topics.dead_letter, false),
        ])
        .await?;

    let mut consumer_config = config.kafka.consumer_config(&config.sink.group_id);
    // Explicit synchronous commits after each acknowledged insert (see module docs).
    consumer_config.set("enable.auto.commit", "false");
    for (k, v) in &config.kafka.properties {
        // User overrides still win, except that auto-commit must stay off.
        if k != "enable.auto.commit" {
            consumer_config.set(k, v);
        }
    }
    let consumer: SinkConsumer = consumer_config
        .create_with_context(SinkContext::default())
        .context("creating Kafka consumer")?;
    consumer
        .subscribe(&[topics.enriched_flows.as_str()])
        .context("subscribing")?;
    let producer: FutureProducer = config
        .kafka
        .producer_config()
        .create()
        .context("creating dead-letter producer")?;
    let dead_letter = DeadLetter::new(producer, topics.dead_letter.clone(), STAGE);
    tracing::info!(
        topic = %topics.enriched_flows,
        group = %config.sink.group_id,
        clickhouse = %config.clickhouse.url,
        table = %config.clickhouse.table,
        "sink started"
    );

    let mut sink = Sink {
        consumer,
        inserter: Inserter::new(&config.clickhouse),
        batch: Batch::new(config.batch.clone()),
        backoff: Backoff::new(&config.sink),
        dead_letter,
        shutdown,
    };
    sink.run_loop().await
}

struct Sink {
    consumer: SinkConsumer,
    inserter: Inserter,
    batch: Batch,
    backoff: Backoff,
    dead_letter: DeadLetter,
    shutdown: Shutdown,
}

enum Flushed {
    Committed,
    /// Shutdown while ClickHouse kept failing: nothing committed.
    Abandoned,
}

impl Sink {
    async fn run_loop(&mut self) -> anyhow::Result<()> {
        loop {
            let deadline = self.batch.deadline();
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = sleep_until(deadline), if deadline.is_some() => {}
                received = self.consumer.recv() => match received {
                    Ok(message) => {
                        let message = message.detach();
                        self.handle(&message).await?;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Kafka consumer error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
            self.apply_revocations();
            if self.batch.is_ready(Instant::now()) {
                self.flush().await?;
            }
        }
        match self.flush().await? {
            Flushed::Committed => {
                tracing::info!("sink stopped, pending rows flushed and committed")
            }
            Flushed::Abandoned => tracing::warn!(
                "sink stopped while ClickHouse was failing; pending rows left uncommitted"
            ),
        }
        Ok(())
    }

    /// Decodes one record into the batch, or dead-letters it.
    async fn handle<M: Message>(&mut self, message: &M) -> anyhow::Result<()> {
        metrics::counter!("flowlens_sink_records_received_total").increment(1);
        let outcome = match message.payload() {
            None => Err(("empty", "record has no payload".to_owned())),
            Some(payload) => {
                match flowlens_schemas::decode::<flowlens_schemas::EnrichedFlow>(payload) {
                    Err(e) => Err(("decode", format!("cannot decode EnrichedFlow: {e}"))),
                    Ok(flow) => FlowRow::try_from(flow).map_err(|e| {
                        ("range", format!("EnrichedFlow does not fit the table: {e}"))
                    }),
                }
            }
        };
        let now = Instant::now();
        match outcome {
            Ok(row) => self.batch.push(
                message.topic(),
                message.partition(),
                message.offset(),
                row,
                now,
            ),
            Err((kind, reason)) => {
                metrics::counter!("flowlens_sink_records_invalid_total", "reason" => kind)
                    .increment(1);
                self.dead_letter
                    .send(message, &reason)
                    .await
                    .context("dead-letter topic unavailable; stopping without committing")?;
                self.batch
                    .skip(message.topic(), message.partition(), message.offset(), now);
            }
        }
        Ok(())
    }

    fn apply_revocations(&mut self) {
        let revoked = std::mem::take(&mut *self.consumer.context().revoked.lock().unwrap());
        if revoked.is_empty() {
            return;
        }
        let dropped = self.batch.drop_partitions(&revoked);
        if dropped > 0 {
            metrics::counter!("flowlens_sink_rows_dropped_on_revoke_total")
                .increment(dropped as u64);
            tracing::info!(
                rows = dropped,
                "dropped uncommitted rows of revoked partitions"
            );
        }
    }

    /// Inserts the batch (retrying until it succeeds or shutdown), then commits its offsets.
    async fn flush(&mut self) -> anyhow::Result<Flushed> {
        if self.batch.is_empty() {
            return Ok(Flushed::Committed);
        }
        let mut paused = false;
        loop {
            let rows = self.batch.len();
            let bytes = self.batch.bytes();
            match self.inserter.write(self.batch.rows()).await {
                Ok(()) => {
                    metrics::histogram!("flowlens_sink_batch_rows").record(rows as f64);
                    metrics::histogram!("flowlens_sink_batch_bytes").record(bytes as f64);
                    break;
                }
                Err(e) => {
                    if self.shutdown.is_triggered() {
                        self.resume(paused);
                        return Ok(Flushed::Abandoned);
                    }
                    let delay = self.backoff.next_delay();
                    tracing::error!(
                        error = %e,
                        rows,
                        attempt = self.backoff.attempts(),
                        retry_in_ms = delay.as_millis() as u64,
                        "ClickHouse insert failed; offsets not committed, retrying"
                    );
                    self.pause();
                    paused = true;
                    self.poll_while_waiting(delay).await?;
                    if self.batch.is_empty() {
                        // Every partition of the batch was revoked meanwhile.
                        self.resume(paused);
                        self.backoff.reset();
                        return Ok(Flushed::Committed);
                    }
                }
            }
        }
        self.backoff.reset();
        self.resume(paused);
        self.commit();
        self.batch.clear();
        Ok(Flushed::Committed)
    }

    /// Keeps the consumer alive for `delay`: serves rebalances, adds any record that arrives.
    async fn poll_while_waiting(&mut self, delay: Duration) -> anyhow::Result<()> {
        let until = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                _ = self.shutdown.cancelled() => break,
                received = self.consumer.recv() => match received {
                    Ok(message) => {
                        let message = message.detach();
                        self.handle(&message).await?;
                    }
                    Err(e) => tracing::warn!(error = %e, "Kafka consumer error"),
                },
            }
            let had_revocations = !self.consumer.context().revoked.lock().unwrap().is_empty();
            self.apply_revocations();
            if had_revocations {
                // The new assignment must not be fetched while we are still retrying.
                self.pause();
            }
        }
        Ok(())
    }

    fn pause(&self) {
        match self.consumer.assignment() {
            Ok(tpl) if tpl.count() > 0 => {
                if let Err(e) = self.consumer.pause(&tpl) {
                    tracing::warn!(error = %e, "cannot pause partitions");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read assignment"),
        }
    }

    fn resume(&self, paused: bool) {
        if !paused {
            return;
        }
        match self.consumer.assignment() {
            Ok(tpl) if tpl.count() > 0 => {
                if let Err(e) = self.consumer.resume(&tpl) {
                    tracing::warn!(error = %e, "cannot resume partitions");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read assignment"),
        }
    }

    /// Commits the batch's next offsets synchronously. A failure is logged and counted: the
    /// rows are in ClickHouse, so they may be inserted again after a restart (at-least-once).
    fn commit(&self) {
        let offsets = self.batch.commit_offsets();
        let mut tpl = TopicPartitionList::new();
        for (topic, partition, next) in &offsets {
            if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next)) {
                tracing::error!(error = %e, "cannot build commit list");
                return;
            }
        }
        match self.consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => tracing::debug!(?offsets, rows = self.batch.len(), "offsets committed"),
            Err(e) => {
                metrics::counter!("flowlens_sink_commit_errors_total").increment(1);
                tracing::error!(error = %e, ?offsets, "offset commit failed after a successful insert; rows may be inserted again");
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(d.into()).await;
    } else {
        futures::future::pending::<()>().await;
    }
}
