//! The consume → batch → insert → commit loop, and why its effect in ClickHouse is exactly once.
//!
//! # Delivery rules
//! * Offsets are committed explicitly (`enable.auto.commit=false`), and only after ClickHouse
//!   acknowledged the INSERT holding every row up to them: at-least-once delivery. Commits are
//!   asynchronous (in order per partition; failures logged and counted): a lost commit only
//!   means a replay, which the recovery check below turns into a no-op.
//! * An undecodable record (or one whose values do not fit the table) goes to the dead-letter
//!   topic with the reason in a header, is counted, and its offset counts as handled, so it
//!   never blocks its partition — unless the dead-letter topic is unavailable under
//!   `dead_letter.when_unavailable = "stop"`: the loop then waits for it, committing nothing.
//! * While an insert is being retried (capped exponential backoff) the assigned partitions are
//!   paused and the consumer keeps being polled, so it stays in the group however long
//!   ClickHouse is down; records already fetched still join open batches (bounded by
//!   librdkafka's fetch queue), nothing is committed, and the loop recovers by itself.
//! * On a rebalance the open and sealed batches of revoked partitions are dropped; their new
//!   owner reads them again from the last committed offset. Revocations are applied right
//!   after `recv()` returns and before its record is handled: the callback runs inside that
//!   `recv()`, and the record it returns may already belong to the new assignment (found by
//!   `rebalance_two_sinks`: applied after the record, that record was dropped with the
//!   revoked batch and its offset later committed past it — a loss).
//! * On shutdown every open batch is sealed, inserted and committed; if ClickHouse is down at
//!   that moment the batches are abandoned uncommitted (read again later) and `run` returns `Ok`.
//!
//! # Exactly-once effect: at-least-once + two idempotence mechanisms
//! A replay happens when rows reached ClickHouse but their offsets were not committed: the
//! sink was killed between the INSERT and the commit, the commit failed, the partition was
//! revoked, or the acknowledgement of a successful INSERT was lost (timeout, connection reset).
//!
//! 1. **Batches are per partition and inserted in offset order.** A batch holds the rows of one
//!    partition only; sealed batches wait in one FIFO queue and the next one is not inserted
//!    before the previous one was acknowledged (retried as long as needed). Every row carries
//!    `kafka_topic`, `kafka_partition`, `kafka_offset` (migration 0002). A batch smaller than
//!    ClickHouse's `max_insert_block_size` (1,048,576 rows; `batch.max_rows` is ≤ 10M but
//!    50k by default) is one block, stored atomically; a bigger one is several blocks stored in
//!    order. Hence, for a partition resumed at committed offset `c`, the rows stored but not
//!    committed are exactly the rows with offsets in `[c, m]`, `m` being the largest
//!    `kafka_offset` of that partition in `flows` with `kafka_offset >= c`.
//! 2. **Recovery by reading ClickHouse back.** Before the first INSERT of a partition after it
//!    was assigned (start, restart, rebalance), the sink queries that `m` once
//!    (`SELECT count(), max(kafka_offset) ... WHERE` topic and partition match `AND
//!    kafka_offset >=` the batch's first offset) and drops every row at or below it from its batches
//!    (counted in `flowlens_sink_rows_already_stored_total`). This needs no agreement on where
//!    batches were cut, so a restart with other limits or timing is still exact.
//! 3. **Deduplication token for retries of the same batch.** Each INSERT carries
//!    `insert_deduplication_token = "<topic>/<partition>/<first row offset>-<last row offset>"`
//!    and `deduplicate_blocks_in_dependent_materialized_views = 1`; `flows` and every rollup
//!    have `non_replicated_deduplication_window = 1000` (Replicated tables deduplicate by
//!    default). A batch whose acknowledgement was lost is retried with identical rows and
//!    token, so ClickHouse stores it once, in `flows` and in the rollups.
//!
//! What remains: an INSERT still running inside ClickHouse after the client gave up (timeout)
//! *and* after the partition moved to another sink instance that already ran its recovery
//! query could be stored twice (once by each). That needs an insert slower than
//! `clickhouse.timeout_ms` plus a rebalance in that window; raise the timeout if it matters.
//! Dead-lettered records are delivered at least once to the dead-letter topic (a replay can
//! send one again).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use flowlens_runtime::health::{self, LoopWatch};
use flowlens_runtime::{kafka_probe, DeadLetter, Shutdown};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::batch::{token, Batches, PartitionKey};
use crate::config::Config;
use crate::insert::{Backoff, Inserter};

/// Failpoint for the fault tests (sink/tests/faults.rs): with this variable set to N, the
/// process aborts right after its N-th acknowledged INSERT, before committing its offset —
/// the worst moment for a crash. Never set it in production.
pub const CRASH_AFTER_INSERTS_ENV: &str = "FLOWLENS_SINK_TEST_CRASH_AFTER_INSERTS";

/// Slack over the longest legitimate pause of the loop before `/healthz` reports it stuck.
const LIVENESS_MARGIN: Duration = Duration::from_secs(30);

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

    /// Outcome of the asynchronous offset commits (see `Sink::commit_front`).
    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        match result {
            Ok(()) => tracing::debug!(?offsets, "offsets committed"),
            Err(e) => {
                metrics::counter!("flowlens_sink_commit_errors_total").increment(1);
                tracing::warn!(error = %e, ?offsets,
                    "offset commit failed after a successful insert; the rows will be skipped when read again");
            }
        }
    }
}

type SinkConsumer = StreamConsumer<SinkContext>;

/// Runs the sink until `shutdown`: schema (migrations or version check), then the consume loop.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    for condition in [crate::migrate::CONDITION, crate::insert::REACHABLE] {
        health::condition(condition);
    }
    health::condition(crate::insert::INSERTS).set_ok();
    kafka_probe::watch(&config.kafka, &shutdown).await?;
    crate::insert::watch(&config.clickhouse, shutdown.clone())?;
    if !prepare_schema(&config, &shutdown).await? {
        return Ok(());
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
    let dead_letter = DeadLetter::new(
        config.kafka.producer_config(),
        topics.dead_letter.clone(),
        STAGE,
        &config.dead_letter,
        shutdown.clone(),
    );
    tracing::info!(
        topic = %topics.enriched_flows,
        group = %config.sink.group_id,
        clickhouse = %config.clickhouse.url,
        table = %config.clickhouse.table,
        "sink started"
    );

    // One pass of the loop takes at most an INSERT (timeout_ms) and a retry wait.
    let alive = health::watch_loop(
        "sink",
        Duration::from_millis(config.clickhouse.timeout_ms + config.sink.retry_max_ms)
            + LIVENESS_MARGIN,
    );
    let mut sink = Sink {
        alive,
        consumer,
        inserter: Inserter::new(&config.clickhouse)?,
        table: config.clickhouse.table.clone(),
        batches: Batches::new(config.batch.clone()),
        stored_through: HashMap::new(),
        backoff: Backoff::new(&config.sink),
        dead_letter,
        shutdown,
        scratch: Vec::with_capacity(512),
        inserts: 0,
        crash_after_inserts: std::env::var(CRASH_AFTER_INSERTS_ENV)
            .ok()
            .and_then(|v| v.parse().ok()),
    };
    let result = sink.run_loop().await;
    sink.alive.clone().retire();
    result
}

/// Applies migrations and retention (`sink.migrate_on_start`) or checks that the schema has
/// every migration this sink needs. Unreachable ClickHouse is retried (capped backoff) until
/// shutdown (then `Ok(false)`); a schema that is too old and may not be migrated is an error.
async fn prepare_schema(config: &Config, shutdown: &Shutdown) -> anyhow::Result<bool> {
    let migrations = crate::migrate::embedded()?;
    let mut backoff = Backoff::new(&config.sink);
    loop {
        let attempt = async {
            if config.sink.migrate_on_start {
                crate::migrate::migrate(&config.clickhouse, &config.retention, &migrations).await?;
                Ok(Ok(()))
            } else {
                crate::migrate::check(&config.clickhouse, &migrations).await
            }
        };
        match attempt.await {
            Ok(Ok(())) => return Ok(true),
            Ok(Err(too_old)) => anyhow::bail!(too_old),
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::error!(
                    error = format!("{e:#}"),
                    attempt = backoff.attempts(),
                    retry_in_ms = delay.as_millis() as u64,
                    "ClickHouse schema not ready; retrying"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(false),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

struct Sink {
    /// Liveness: beaten by every pass of the loops below.
    alive: LoopWatch,
    consumer: SinkConsumer,
    inserter: Inserter,
    table: String,
    batches: Batches,
    /// Per partition, since it was assigned: the highest offset already in ClickHouse at or
    /// after the resume offset (-1: none). Absent: not yet checked (see module docs).
    stored_through: HashMap<PartitionKey, i64>,
    backoff: Backoff,
    dead_letter: DeadLetter,
    shutdown: Shutdown,
    /// Reused buffer for one decoded record (RowBinary).
    scratch: Vec<u8>,
    /// Acknowledged INSERTs so far, for the `CRASH_AFTER_INSERTS_ENV` failpoint.
    inserts: u64,
    crash_after_inserts: Option<u64>,
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct StoredThrough {
    rows: u64,
    max_offset: u64,
}

impl Sink {
    async fn run_loop(&mut self) -> anyhow::Result<()> {
        let mut beat = tokio::time::interval(Duration::from_secs(1));
        loop {
            self.alive.beat();
            if self.batches.sealed_len() > 0 {
                if !self.flush_sealed().await? {
                    break;
                }
                continue;
            }
            let deadline = self.batches.deadline();
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = beat.tick() => {}
                _ = sleep_until(deadline), if deadline.is_some() => {
                    self.batches.seal_expired(Instant::now());
                }
                received = self.consumer.recv() => match received {
                    Ok(message) => {
                        let message = message.detach();
                        // A rebalance served inside this recv() came before this record (which
                        // may already be from the new assignment): forget the revoked
                        // partitions first, or the record would be dropped with them.
                        self.apply_revocations();
                        self.handle(&message).await?;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Kafka consumer error");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
            self.apply_revocations();
            self.batches.seal_expired(Instant::now());
        }
        self.batches.seal_all();
        if self.flush_sealed().await? && self.batches.is_empty() {
            tracing::info!("sink stopped, pending rows flushed and committed");
        } else {
            tracing::warn!(
                "sink stopped while ClickHouse was failing; pending rows left uncommitted"
            );
        }
        Ok(())
    }

    /// Decodes one record into its partition's batch, or dead-letters it.
    async fn handle<M: Message>(&mut self, message: &M) -> anyhow::Result<()> {
        metrics::counter!("flowlens_sink_records_received_total").increment(1);
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        self.scratch.clear();
        let outcome = match message.payload() {
            None => Err(("empty", "record has no payload".to_owned())),
            Some(payload) => {
                crate::decode::write_row(payload, topic, partition, offset, &mut self.scratch)
            }
        };
        let now = Instant::now();
        match outcome {
            Ok(()) => self
                .batches
                .push(topic, partition, offset, &self.scratch, now),
            Err((kind, reason)) => {
                metrics::counter!("flowlens_sink_records_invalid_total", "reason" => kind)
                    .increment(1);
                self.dead_letter
                    .send(message, &reason)
                    .await
                    .context("record not dead-lettered; stopping without committing it")?;
                self.batches.skip(topic, partition, offset, now);
            }
        }
        Ok(())
    }

    fn apply_revocations(&mut self) -> bool {
        let revoked = std::mem::take(&mut *self.consumer.context().revoked.lock().unwrap());
        if revoked.is_empty() {
            return false;
        }
        for k in &revoked {
            self.stored_through.remove(k);
        }
        let dropped = self.batches.drop_partitions(&revoked);
        if dropped > 0 {
            metrics::counter!("flowlens_sink_rows_dropped_on_revoke_total")
                .increment(dropped as u64);
            tracing::info!(
                rows = dropped,
                "dropped uncommitted rows of revoked partitions"
            );
        }
        true
    }

    /// Inserts and commits the sealed batches in order, retrying the front one (capped
    /// backoff, consumption paused) until it succeeds. `Ok(false)`: shutdown while failing.
    async fn flush_sealed(&mut self) -> anyhow::Result<bool> {
        let mut paused = false;
        while self.batches.sealed_len() > 0 {
            match self.store_front().await {
                Ok(()) => {
                    self.backoff.reset();
                    self.commit_front();
                }
                Err(e) => {
                    if self.shutdown.is_triggered() {
                        self.resume(paused);
                        return Ok(false);
                    }
                    let delay = self.backoff.next_delay();
                    tracing::error!(
                        error = format!("{e:#}"),
                        rows = self.batches.rows_held(),
                        attempt = self.backoff.attempts(),
                        retry_in_ms = delay.as_millis() as u64,
                        "ClickHouse insert failed; offsets not committed, retrying"
                    );
                    self.pause();
                    paused = true;
                    self.poll_while_waiting(delay).await?;
                }
            }
        }
        self.resume(paused);
        Ok(true)
    }

    /// Recovery check (first batch of a partition since assignment), then the INSERT of the
    /// front batch's rows not yet in ClickHouse, with its deduplication token.
    async fn store_front(&mut self) -> anyhow::Result<()> {
        let Some(front) = self.batches.front() else {
            return Ok(());
        };
        if front.inserted {
            return Ok(());
        }
        let key = (front.topic.clone(), front.partition);
        let through = match self.stored_through.get(&key) {
            Some(t) => *t,
            None => {
                let found: StoredThrough = self
                    .inserter
                    .client()
                    .query(&format!(
                        "SELECT count() AS rows, max(kafka_offset) AS max_offset FROM `{}` \
                         WHERE kafka_topic = ? AND kafka_partition = ? AND kafka_offset >= ?",
                        self.table
                    ))
                    .bind(&key.0)
                    .bind(key.1 as u16)
                    .bind(front.first_offset.max(0) as u64)
                    .fetch_one()
                    .await
                    .context("reading back the last stored offset")?;
                let through = if found.rows > 0 {
                    found.max_offset as i64
                } else {
                    -1
                };
                if through >= 0 {
                    tracing::info!(topic = %key.0, partition = key.1, from = front.first_offset,
                        through, "rows already stored but not committed: skipping them");
                }
                self.stored_through.insert(key, through);
                through
            }
        };
        if through >= 0 {
            let skipped = front.rows.drop_through(through);
            if skipped > 0 {
                metrics::counter!("flowlens_sink_rows_already_stored_total")
                    .increment(skipped as u64);
                front.token = match (front.rows.first_offset(), front.rows.last_offset()) {
                    (Some(a), Some(b)) => Some(token(&front.topic, front.partition, a, b)),
                    _ => None,
                };
            }
        }
        let (rows, bytes) = (front.rows.len(), front.rows.bytes());
        if rows > 0 {
            self.inserter
                .write_encoded(&front.rows.data, rows, front.token.as_deref())
                .await?;
            metrics::histogram!("flowlens_sink_batch_rows").record(rows as f64);
            metrics::histogram!("flowlens_sink_batch_bytes").record(bytes as f64);
            self.inserts += 1;
            if self.crash_after_inserts == Some(self.inserts) {
                eprintln!(
                    "{CRASH_AFTER_INSERTS_ENV}: aborting after insert {}",
                    self.inserts
                );
                std::process::abort();
            }
        }
        front.inserted = true;
        Ok(())
    }

    /// Keeps the consumer alive for `delay`: serves rebalances, adds any record that arrives.
    async fn poll_while_waiting(&mut self, delay: Duration) -> anyhow::Result<()> {
        let until = tokio::time::Instant::now() + delay;
        loop {
            self.alive.beat();
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                _ = self.shutdown.cancelled() => break,
                received = self.consumer.recv() => match received {
                    Ok(message) => {
                        let message = message.detach();
                        if self.apply_revocations() {
                            self.pause();
                        }
                        self.handle(&message).await?;
                    }
                    Err(e) => tracing::warn!(error = %e, "Kafka consumer error"),
                },
            }
            if self.apply_revocations() {
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

    /// Commits the front batch's next offset (asynchronously) and drops the batch. A commit
    /// that fails is logged and counted (`commit_callback`): the rows are in ClickHouse, and
    /// the recovery check skips them when they are read again. Not synchronous: librdkafka's
    /// synchronous commit waits without a time limit, and was seen never returning after the
    /// group coordinator restarted (`broker_restart` in tests/faults.rs), which froze the sink.
    fn commit_front(&mut self) {
        let Some(done) = self.batches.pop_front() else {
            return;
        };
        let mut tpl = TopicPartitionList::new();
        if let Err(e) = tpl.add_partition_offset(
            &done.topic,
            done.partition,
            Offset::Offset(done.next_offset),
        ) {
            tracing::error!(error = %e, "cannot build commit list");
            return;
        }
        tracing::debug!(
            topic = %done.topic,
            partition = done.partition,
            next_offset = done.next_offset,
            rows = done.rows.len(),
            reason = ?done.reason,
            "committing"
        );
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            metrics::counter!("flowlens_sink_commit_errors_total").increment(1);
            tracing::warn!(error = %e, topic = %done.topic, partition = done.partition,
                next_offset = done.next_offset,
                "offset commit failed after a successful insert; the rows will be skipped when read again");
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
