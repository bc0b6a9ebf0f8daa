//! The consume → batch → insert → commit loop, consuming on while INSERTs are in flight
//! (`in_flight`: up to [`INSERTS_IN_FLIGHT`], of distinct partitions). Offsets are committed
//! (asynchronously, with the incarnation as commit metadata) only after ClickHouse
//! acknowledged every row up to them; records already stored are dropped before their INSERT
//! by their identity (`dedup`, `recovery`); undecodable records go to the dead-letter topic;
//! while ClickHouse is down the partitions are paused and nothing is committed; a revocation
//! waits for the INSERTs in flight of its partitions, and revoked partitions' batches are
//! dropped right after the `recv()` whose callback revoked them; at shutdown open batches are
//! inserted and committed. ARCHITECTURE.md ("Delivery", "The sink's loop") has the rules and
//! why the effect in ClickHouse is exactly once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use flowlens_runtime::health::{self, LoopWatch};
use flowlens_runtime::incarnation::{self, Probe, StreamId};
use flowlens_runtime::kafka::CONSUME_BATCH;
use flowlens_runtime::{consumer_lag, kafka_probe, DeadLetter, Shutdown};
use futures::FutureExt as _;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::batch::{content_token, Batches, PartitionKey, Sealed};
use crate::config::Config;
use crate::decode::Position;
use crate::dedup::{self, Check, PartitionDedup, Verdict};
use crate::insert::{Backoff, Inserter};
use crate::recovery::Queries;

mod in_flight;
mod partitions;

use in_flight::{InFlight, InsertGate, Outcome};

/// How often the input topic's id is read again to notice a new incarnation.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(5);

/// How long a probe of the broker (topic id, one record, committed offsets) may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the sink knows of an input partition since it was assigned.
#[derive(Debug, Clone, Copy)]
struct Input {
    /// The id its records are named by now (topic id, or from its earliest record).
    base: StreamId,
    /// The id its rows are stored under (`base`, or a successor: `dedup::resolve`).
    stream: StreamId,
    from_topic_id: bool,
    /// The incarnation the group's committed position was stored under (commit metadata).
    committed_under: Option<StreamId>,
    /// The first offset read since the assignment (where the group's position was).
    first_offset: i64,
    last_offset: i64,
}

/// Failpoint for the fault tests (sink/tests/faults.rs): with this variable set to N, the
/// process aborts right after its N-th acknowledged INSERT, before committing its offset —
/// the worst moment for a crash. Never set it in production.
pub const CRASH_AFTER_INSERTS_ENV: &str = "FLOWLENS_SINK_TEST_CRASH_AFTER_INSERTS";

/// Slack over the longest legitimate pause of the loop before `/healthz` reports it stuck.
const LIVENESS_MARGIN: Duration = Duration::from_secs(30);

/// The stage name in dead-letter headers and logs.
pub const STAGE: &str = "sink";

/// Sealed batches that may wait behind the INSERTs in flight before consumption pauses: with
/// one open batch per partition and the batches in flight, the bound on the rows held.
const SEALED_AHEAD: usize = 4;

/// INSERTs in flight at once, never two of one partition: while one is parsed and written by
/// ClickHouse, the next is sent, so the server's work is not serialised behind the sink's
/// (bench/README.md, "Two INSERTs in flight").
pub const INSERTS_IN_FLIGHT: usize = 2;

/// Consumer context remembering revoked partitions until the loop drops their pending rows;
/// a revocation first waits for the INSERT in flight of a revoked partition (`InsertGate`).
pub struct SinkContext {
    revoked: Mutex<Vec<PartitionKey>>,
    gate: Arc<InsertGate>,
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
                self.gate.wait_before_revoking(&gone);
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
    consumer_lag::watch(
        &config.kafka,
        STAGE,
        &config.sink.group_id,
        &config.kafka.topics.enriched_flows,
        &shutdown,
    )?;
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
    // An INSERT ends within its two timeouts (body sent, answer read) and its column check.
    let insert_limit = Duration::from_millis(3 * config.clickhouse.timeout_ms) + LIVENESS_MARGIN;
    let gate = Arc::new(InsertGate::new(insert_limit));
    let consumer: SinkConsumer = consumer_config
        .create_with_context(SinkContext {
            revoked: Mutex::default(),
            gate: gate.clone(),
        })
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
    let probe = Probe::new(&config.kafka, PROBE_TIMEOUT)?;
    let mut sink = Sink {
        alive,
        consumer: Arc::new(consumer),
        gate,
        in_flight: Vec::new(),
        inserter: Inserter::new(&config.clickhouse)?,
        table: config.clickhouse.table.clone(),
        batches: Batches::new(config.batch.clone()),
        dedup: HashMap::new(),
        inputs: HashMap::new(),
        restarted: HashSet::new(),
        probe,
        queries: None,
        backoff: Backoff::new(&config.sink),
        dead_letter,
        shutdown,
        scratch: Vec::with_capacity(512),
        key: PartitionKey::default(),
        received: metrics::counter!("flowlens_sink_records_received_total"),
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
    /// Shared with the loops, whose records borrow it while `self` is changed.
    consumer: Arc<SinkConsumer>,
    gate: Arc<InsertGate>,
    /// The INSERTs running while the loop consumes on (their batches are out of `batches`
    /// meanwhile), at most one per partition.
    in_flight: Vec<InFlight>,
    inserter: Inserter,
    table: String,
    batches: Batches,
    /// Per partition, since the first INSERT after its assignment: what is already stored.
    dedup: HashMap<PartitionKey, PartitionDedup>,
    /// Per partition, since its first record after its assignment: its incarnation.
    inputs: HashMap<PartitionKey, Input>,
    /// Partitions sent back to their beginning by a new incarnation (their committed position
    /// is known to be of the old one).
    restarted: HashSet<PartitionKey>,
    probe: Probe,
    queries: Option<Queries>,
    backoff: Backoff,
    dead_letter: DeadLetter,
    shutdown: Shutdown,
    /// Reused buffer for one decoded record (RowBinary).
    scratch: Vec<u8>,
    /// The partition of the last record handled (`handle`).
    key: PartitionKey,
    /// `flowlens_sink_records_received_total` (resolved once: a lookup per record otherwise).
    received: metrics::Counter,
    /// Acknowledged INSERTs so far, for the `CRASH_AFTER_INSERTS_ENV` failpoint.
    inserts: u64,
    crash_after_inserts: Option<u64>,
}

impl Sink {
    async fn run_loop(&mut self) -> anyhow::Result<()> {
        let consumer = self.consumer.clone();
        let mut beat = tokio::time::interval(Duration::from_secs(1));
        let mut watch = tokio::time::interval(WATCH_INTERVAL);
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.alive.beat();
            if let Err(e) = self.start_inserts().await {
                if !self.flush_sealed(Some(e)).await? {
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
                _ = watch.tick() => self.watch_topic_ids(),
                (i, outcome) = in_flight::ended(&mut self.in_flight) => {
                    if let Err(e) = self.finish_insert(i, outcome)? {
                        if !self.flush_sealed(Some(e)).await? {
                            break;
                        }
                    }
                }
                received = consumer.recv(), if self.consuming() => {
                    // The records already fetched are taken in the same pass (one wakeup, one
                    // timer), up to CONSUME_BATCH or until a sealed batch waits for its INSERT.
                    // One clock read per pass: a batch's age counts from its first pass.
                    let now = Instant::now();
                    let mut next = Some(received);
                    let mut taken = 0;
                    while let Some(received) = next.take() {
                        match received {
                            Ok(message) => {
                                // A rebalance served inside this recv() came before this record
                                // (which may already be from the new assignment): forget the
                                // revoked partitions first, or the record would be dropped with
                                // them.
                                self.apply_revocations();
                                self.handle(&message, now).await?;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "Kafka consumer error");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                break;
                            }
                        }
                        taken += 1;
                        if taken < CONSUME_BATCH && self.startable().is_none() && self.consuming() {
                            next = consumer.recv().now_or_never();
                        }
                    }
                }
            }
            self.apply_revocations();
            self.batches.seal_expired(Instant::now());
        }
        // A failed INSERT is back at the front of the queue, retried below.
        let _ = self.finish_in_flight().await?;
        self.batches.seal_all();
        if self.flush_sealed(None).await? && self.batches.is_empty() {
            tracing::info!("sink stopped, pending rows flushed and committed");
        } else {
            tracing::warn!(
                "sink stopped while ClickHouse was failing; pending rows left uncommitted"
            );
        }
        Ok(())
    }

    /// Whether the loop takes records: not while `SEALED_AHEAD` sealed batches wait.
    fn consuming(&self) -> bool {
        self.batches.sealed_len() < SEALED_AHEAD
    }

    /// The sealed batch whose INSERT could start now, by its index: while fewer than
    /// [`INSERTS_IN_FLIGHT`] run, the first in sealing order whose partition has none in
    /// flight (so the earliest batch of its partition).
    fn startable(&self) -> Option<usize> {
        if self.in_flight.len() >= INSERTS_IN_FLIGHT {
            return None;
        }
        self.batches.first_sealed(|key| !self.inserting(key))
    }

    /// Whether an INSERT of partition `key` is in flight.
    fn inserting(&self, (topic, partition): (&str, i32)) -> bool {
        self.in_flight
            .iter()
            .any(|f| f.batch.partition == partition && f.batch.topic == topic)
    }

    /// Judges the [`Sink::startable`] batches and starts their INSERTs, each in its own task
    /// (`in_flight`); a batch left without rows is committed at once, and the next one taken.
    async fn start_inserts(&mut self) -> anyhow::Result<()> {
        while let Some(i) = self.startable() {
            if !self.judge(i).await? {
                // Its partition was sent back to be read again: its batches are gone.
                continue;
            }
            let batch = self.batches.take_sealed(i).expect("judged");
            if batch.inserted || batch.rows.is_empty() {
                self.commit(batch);
                continue;
            }
            self.in_flight
                .push(InFlight::start(batch, &self.inserter, &self.gate));
        }
        Ok(())
    }

    /// Waits for every INSERT in flight and finishes each ([`Sink::finish_insert`]); the first
    /// failure, if any (`Ok(Err)`), its batch back in the queue.
    async fn finish_in_flight(&mut self) -> anyhow::Result<Result<(), anyhow::Error>> {
        let mut failure = None;
        while !self.in_flight.is_empty() {
            let (i, outcome) = in_flight::ended(&mut self.in_flight).await;
            if let Err(e) = self.finish_insert(i, outcome)? {
                failure.get_or_insert(e);
            }
        }
        Ok(failure.map_or(Ok(()), Err))
    }

    /// INSERT `i` of `in_flight` ended: acknowledged, its offset is committed; failed, its
    /// batch goes back to the front of the queue and the error is returned (`Ok(Err)`), for
    /// the retries of `flush_sealed`. A batch whose partition was revoked meanwhile is
    /// forgotten either way: its next owner reads it again from the committed offset.
    fn finish_insert(
        &mut self,
        i: usize,
        outcome: Outcome,
    ) -> anyhow::Result<Result<(), anyhow::Error>> {
        // A revocation served since the INSERT started concerns it.
        self.apply_revocations();
        let flight = self.in_flight.remove(i);
        let (data, result) = outcome.context("the INSERT's task")?;
        let mut batch = flight.batch;
        batch.rows.data = data;
        if flight.revoked {
            tracing::debug!(topic = %batch.topic, partition = batch.partition, ok = result.is_ok(),
                "INSERT of a revoked partition ended; its next owner reads it again");
            return Ok(Ok(()));
        }
        match result {
            Ok(()) => {
                self.acknowledged(batch.rows.len(), batch.rows.bytes());
                batch.inserted = true;
                self.backoff.reset();
                self.commit(batch);
                Ok(Ok(()))
            }
            Err(e) => {
                self.batches.push_front(batch);
                Ok(Err(e))
            }
        }
    }

    /// Decodes one record, taken at `now`, into its partition's batch, or dead-letters it.
    async fn handle<M: Message>(&mut self, message: &M, now: Instant) -> anyhow::Result<()> {
        self.received.increment(1);
        let (topic, partition) = (message.topic(), message.partition());
        // The partition's key, made once per run of records of one partition.
        let mut key = std::mem::take(&mut self.key);
        if key.1 != partition || key.0 != topic {
            key = (topic.to_owned(), partition);
        }
        let handled = self.handle_of(&key, message, now).await;
        self.key = key;
        handled
    }

    /// [`Sink::handle`] for a record of partition `key`.
    async fn handle_of<M: Message>(
        &mut self,
        key: &PartitionKey,
        message: &M,
        now: Instant,
    ) -> anyhow::Result<()> {
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        let Some(stream) = self.admit(key, offset).await else {
            return Ok(());
        };
        let at = Position {
            topic,
            partition,
            offset,
            stream,
            timestamp_ms: message.timestamp().to_millis().unwrap_or(0),
        };
        self.scratch.clear();
        let outcome = match message.payload() {
            None => Err(("empty", "record has no payload".to_owned())),
            Some(payload) => crate::decode::write_row(payload, &at, &mut self.scratch),
        };
        match outcome {
            Ok(origin) => self
                .batches
                .push(key, stream, offset, origin, &self.scratch, now),
            Err((kind, reason)) => {
                metrics::counter!("flowlens_sink_records_invalid_total", "reason" => kind)
                    .increment(1);
                self.dead_letter
                    .send(message, &reason)
                    .await
                    .context("record not dead-lettered; stopping without committing it")?;
                self.batches.skip(key, stream, offset, now);
            }
        }
        Ok(())
    }

    /// Lets the INSERTs in flight end, then inserts and commits the sealed batches in order,
    /// one at a time, retrying the front one (capped backoff, consumption paused) until it
    /// succeeds; `failed`: the front batch's last attempt failed with it. `Ok(false)`:
    /// shutdown while failing.
    async fn flush_sealed(&mut self, mut failed: Option<anyhow::Error>) -> anyhow::Result<bool> {
        if let Err(e) = self.finish_in_flight().await? {
            failed.get_or_insert(e);
        }
        let mut paused = false;
        loop {
            // Revocations served by the last poll (also one whose select then ended by the
            // timer or the shutdown) come before any INSERT: a revoked partition's batches are
            // its next owner's to store.
            if self.apply_revocations() && paused {
                self.pause();
            }
            if let Some(e) = failed.take() {
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
            if self.batches.sealed_len() == 0 {
                break;
            }
            match self.store_front().await {
                Ok(()) => {
                    self.backoff.reset();
                    self.commit_front();
                }
                Err(e) => failed = Some(e),
            }
        }
        self.resume(paused);
        Ok(true)
    }

    /// Judges the front batch, if any, then INSERTs the rows not yet stored, with their
    /// deduplication token, and waits for the acknowledgement.
    async fn store_front(&mut self) -> anyhow::Result<()> {
        if !self.prepare_front().await? {
            return Ok(());
        }
        let front = self.batches.front().expect("prepared");
        let (rows, bytes) = (front.rows.len(), front.rows.bytes());
        if !front.inserted && rows > 0 {
            self.inserter
                .write_encoded(&front.rows.data, rows, front.token.as_deref())
                .await?;
            front.inserted = true;
            self.acknowledged(rows, bytes);
        }
        Ok(())
    }

    /// Judges the front batch ([`Sink::judge`]; no INSERT is in flight). `Ok(false)`: no
    /// batch is left (a partition sent back to be read again drops its batches, and the next
    /// front is judged in its place).
    async fn prepare_front(&mut self) -> anyhow::Result<bool> {
        loop {
            if self.batches.sealed_len() == 0 {
                return Ok(false);
            }
            if self.judge(0).await? {
                return Ok(true);
            }
        }
    }

    /// Counts an acknowledged INSERT of `rows` rows in `bytes` bytes (RowBinary); the
    /// `CRASH_AFTER_INSERTS_ENV` failpoint.
    fn acknowledged(&mut self, rows: usize, bytes: usize) {
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

    /// Judges sealed batch `i`, the earliest of its partition, unless it was (first: what
    /// ClickHouse holds of the partition, and its incarnation): drops its rows already stored
    /// and fixes its token. `Ok(false)`: the partition was sent back to be read again instead
    /// (its rows were named by an id that names an older life of the topic, or it resumed
    /// from another incarnation's position), and its batches are dropped.
    async fn judge(&mut self, i: usize) -> anyhow::Result<bool> {
        let front = self.batches.sealed_mut(i).expect("a sealed batch");
        if front.judged {
            return Ok(true);
        }
        let (key, stream) = ((front.topic.clone(), front.partition), front.stream);
        let (first_offset, commit) = (front.first_offset, front.commit);
        if !self.dedup.contains_key(&key) {
            let client = self.inserter.client().clone();
            // A server that accepts and never answers fails the read-back after
            // `clickhouse.timeout_ms`, and the batch is retried as a failed INSERT would be.
            let timeout = self.inserter.timeout();
            let answer = |what: &'static str| {
                move |_| anyhow::anyhow!("{what}: no answer from ClickHouse in {timeout:?}")
            };
            let queries = match &self.queries {
                Some(q) => q.clone(),
                None => {
                    let q = tokio::time::timeout(timeout, Queries::for_table(&client, &self.table))
                        .await
                        .map_err(answer("reading the table's columns"))??;
                    self.queries = Some(q.clone());
                    q
                }
            };
            let stored = tokio::time::timeout(timeout, queries.stored(&client, &key.0, key.1))
                .await
                .map_err(answer("reading back what is stored of the partition"))??;
            tracing::info!(topic = %key.0, partition = key.1, streams = stored.streams.len(),
                origins = stored.hwm.len(), "read back what is stored of the partition");
            self.dedup.insert(key.clone(), PartitionDedup::new(stored));
        }
        let dedup = self.dedup.get_mut(&key).expect("inserted above");
        if dedup.resolved(&stream).is_none() {
            let mut failure = None;
            let resolved = tokio::task::block_in_place(|| {
                dedup::resolve(stream, &dedup.stored, |s| {
                    crate::recovery::check(&self.probe, &key.0, key.1, s).unwrap_or_else(|e| {
                        failure.get_or_insert(e);
                        Check::Same
                    })
                })
            });
            if let Some(e) = failure {
                return Err(e.context("checking the stored incarnation against Kafka"));
            }
            for (id, check) in &resolved.changes {
                metrics::counter!("flowlens_sink_incarnation_changes_total").increment(1);
                tracing::warn!(topic = %key.0, partition = key.1, stream = %incarnation::hex(id), ?check,
                    "the stored rows of this stream id are not what Kafka holds now: a new incarnation under the same id; nothing is skipped by offset, rows go under a new id");
            }
            dedup.set_resolved(stream, &resolved);
            let input = self.inputs.get(&key).copied();
            let committed_under = input.and_then(|i| i.committed_under);
            // Resumed inside a log of which nothing is stored, from a position without
            // incarnation (a broker that keeps no commit metadata): the position can only be
            // another incarnation's. Reading this one from its beginning doubles nothing.
            let foreign_position = committed_under.is_none()
                && resolved.stored_through < 0
                && match input {
                    Some(i) if i.first_offset > 0 => {
                        let (low, _) =
                            tokio::task::block_in_place(|| self.probe.watermarks(&key.0, key.1))?;
                        i.first_offset > low
                    }
                    _ => false,
                };
            let restart = if !commit {
                None
            } else if foreign_position || committed_under.is_some_and(|c| c != resolved.stream) {
                Some(Offset::Beginning)
            } else if resolved.stream != stream {
                Some(Offset::Offset(first_offset))
            } else {
                None
            };
            if let Some(at) = restart {
                metrics::counter!("flowlens_sink_incarnation_changes_total").increment(1);
                tracing::warn!(topic = %key.0, partition = key.1, ?at,
                    committed_under = ?committed_under.map(|c| incarnation::hex(&c)),
                    stream = %incarnation::hex(&resolved.stream),
                    "the partition resumed from another incarnation's position or under an old id: reading it again");
                self.batches.drop_partitions(std::slice::from_ref(&key));
                if let Some(input) = self.inputs.get_mut(&key) {
                    input.stream = resolved.stream;
                    input.committed_under = Some(resolved.stream);
                    input.last_offset = -1;
                }
                self.seek(&key, at);
                return Ok(false);
            }
        }
        let front = self.batches.sealed_mut(i).expect("a sealed batch");
        let dedup = self.dedup.get_mut(&key).expect("inserted above");
        let (mut own, mut upstream) = (0u64, 0u64);
        front
            .rows
            .retain(|offset, origin| match dedup.judge(stream, offset, origin) {
                Verdict::New => true,
                Verdict::OwnReplay => {
                    own += 1;
                    false
                }
                Verdict::UpstreamReplay => {
                    upstream += 1;
                    false
                }
            });
        if own + upstream > 0 {
            metrics::counter!("flowlens_sink_rows_already_stored_total", "kind" => "own_replay")
                .increment(own);
            metrics::counter!("flowlens_sink_rows_already_stored_total", "kind" => "upstream_replay")
                .increment(upstream);
            tracing::info!(topic = %key.0, partition = key.1, from = first_offset,
                own_replays = own, upstream_replays = upstream,
                "rows already stored but not committed: skipping them");
        }
        front.token = (!front.rows.is_empty()).then(|| content_token(&front.rows.data));
        front.judged = true;
        Ok(true)
    }

    /// Keeps the consumer alive for `delay`: serves rebalances, adds any record that arrives.
    async fn poll_while_waiting(&mut self, delay: Duration) -> anyhow::Result<()> {
        let until = tokio::time::Instant::now() + delay;
        let consumer = self.consumer.clone();
        loop {
            self.alive.beat();
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                _ = self.shutdown.cancelled() => break,
                received = consumer.recv() => match received {
                    Ok(message) => {
                        if self.apply_revocations() {
                            self.pause();
                        }
                        self.handle(&message, Instant::now()).await?;
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

    /// Commits the front batch's next offset and drops the batch (see [`Sink::commit`]).
    fn commit_front(&mut self) {
        if let Some(done) = self.batches.pop_front() {
            self.commit(done);
        }
    }

    /// Commits a stored batch's next offset (asynchronously). A commit that fails is logged
    /// and counted (`commit_callback`): the rows are in ClickHouse, and the recovery check
    /// skips them when they are read again. Not synchronous: librdkafka's synchronous commit
    /// waits without a time limit, and was seen never returning after the group coordinator
    /// restarted (`broker_restart` in tests/faults.rs), which froze the sink.
    fn commit(&mut self, done: Sealed) {
        if !done.commit {
            tracing::debug!(topic = %done.topic, partition = done.partition,
                next_offset = done.next_offset, "stored, not committed: an ended incarnation");
            return;
        }
        let mut tpl = TopicPartitionList::new();
        if let Err(e) = tpl.add_partition_offset(
            &done.topic,
            done.partition,
            Offset::Offset(done.next_offset),
        ) {
            tracing::error!(error = %e, "cannot build commit list");
            return;
        }
        // The incarnation the position belongs to, read back at the next assignment.
        if let Some(mut e) = tpl.find_partition(&done.topic, done.partition) {
            e.set_metadata(incarnation::hex(&done.stream));
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
