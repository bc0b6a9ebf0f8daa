//! The ClickHouse side: one `INSERT INTO table(columns)` per batch (LZ4 compressed), successful
//! only when the server acknowledged it, and the capped exponential backoff used between failed
//! attempts (the retry loop itself lives in `run.rs`, which keeps the Kafka consumer polled
//! while it waits).
//!
//! Rows arrive already in RowBinary (`decode::write_row`, or `FlowRow::write_row_binary`), one
//! buffer per batch, and are sent with the crate's `insert_formatted_with`. With
//! `clickhouse.validation` the column types of the table are checked once against
//! `row::COLUMN_TYPES` (again after any failed insert, as the table may have changed) instead
//! of per row by the crate's validating serializer, which cost ~40 % of the insert CPU
//! (bench/results/sink.md); knowing them, the batch goes as one Native block (`FORMAT Native`,
//! `row::NativeLayout`), which the server parses for less CPU per row
//! (bench/results/insert-formats.md). Without validation (a server whose types are not
//! checked, e.g. 18.16) it goes as `FORMAT RowBinary`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clickhouse::{Client, Compression, Row as _};
use flowlens_runtime::{health, Shutdown};

use crate::config::{ClickHouseConfig, SinkConfig};
use crate::row::{FlowRow, NativeLayout, COLUMN_TYPES};

/// Builds the client for `config`: URL (TLS for https://, see `tls`), database, credentials,
/// LZ4, validation.
pub fn client(config: &ClickHouseConfig) -> anyhow::Result<Client> {
    let base = match crate::tls::client_config(config)? {
        None => Client::default(),
        Some(tls) => Client::with_http_client(
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_idle_timeout(crate::tls::POOL_IDLE_TIMEOUT)
                .build(crate::tls::connector(tls)),
        ),
    };
    let mut client = base
        .with_url(&config.url)
        .with_database(&config.database)
        .with_compression(Compression::Lz4)
        .with_validation(config.validation);
    if !config.user.is_empty() {
        client = client.with_user(&config.user);
    }
    if !config.password.is_empty() {
        client = client.with_password(config.password.expose());
    }
    Ok(client)
}

/// Readiness condition: ClickHouse answers (a `SELECT 1` every [`PROBE_INTERVAL`]).
pub const REACHABLE: &str = "clickhouse";
/// Readiness condition: the last INSERT was acknowledged (none failed yet counts as met).
pub const INSERTS: &str = "clickhouse_inserts";
const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// Keeps [`REACHABLE`] up to date until `shutdown`, from a task of its own.
pub fn watch(config: &ClickHouseConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    let client = client(config)?.with_validation(false);
    let endpoint = config.endpoint();
    let timeout = Duration::from_millis(config.timeout_ms).min(PROBE_INTERVAL);
    let condition = health::condition(REACHABLE);
    tokio::spawn(async move {
        loop {
            let answer =
                tokio::time::timeout(timeout, client.query("SELECT 1").fetch_one::<u8>()).await;
            match answer {
                Ok(Ok(_)) => condition.set_ok(),
                Ok(Err(e)) => condition.set_failing(format!("{endpoint}: {e}")),
                Err(_) => condition.set_failing(format!("{endpoint}: no answer in {timeout:?}")),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            }
        }
    });
    Ok(())
}

/// Writes batches of `FlowRow` into one table.
#[derive(Clone)]
pub struct Inserter {
    client: Client,
    /// `ClickHouseConfig::endpoint`, for error messages.
    endpoint: String,
    table: String,
    timeout: Duration,
    validation: bool,
    /// The table's column types were checked and match (reset after a failed insert).
    checked: Arc<AtomicBool>,
    /// The table's columns as a Native block names them, once checked (`None`: RowBinary).
    native: Arc<Mutex<Option<NativeLayout>>>,
    /// `INSERT INTO table(columns) FORMAT ` (the format's name follows).
    sql: String,
}

impl Inserter {
    pub fn new(config: &ClickHouseConfig) -> anyhow::Result<Self> {
        let columns: Vec<String> = FlowRow::COLUMN_NAMES
            .iter()
            .map(|c| format!("`{c}`"))
            .collect();
        Ok(Self {
            client: client(config)?,
            endpoint: config.endpoint(),
            table: config.table.clone(),
            timeout: Duration::from_millis(config.timeout_ms),
            validation: config.validation,
            checked: Arc::new(AtomicBool::new(false)),
            native: Arc::new(Mutex::new(None)),
            sql: format!(
                "INSERT INTO `{}`({}) FORMAT ",
                config.table,
                columns.join(",")
            ),
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `clickhouse.timeout_ms`: the longest wait for one INSERT or read-back query.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Inserts `rows` in one INSERT; `Ok` only once ClickHouse acknowledged all of them.
    /// With a `token`, the INSERT carries `insert_deduplication_token` (and deduplicates the
    /// blocks pushed to the materialized views too): a replay of the same batch is a no-op
    /// on tables with a deduplication window (migration 0002).
    /// Records `flowlens_sink_insert_duration_seconds` and, on failure,
    /// `flowlens_sink_insert_errors_total`.
    pub async fn write(&self, rows: &[FlowRow], token: Option<&str>) -> anyhow::Result<()> {
        let mut data = Vec::with_capacity(rows.iter().map(FlowRow::encoded_len).sum());
        for row in rows {
            row.write_row_binary(&mut data);
        }
        self.write_encoded(&data, rows.len(), token).await
    }

    /// Like [`Inserter::write`], for `rows` rows already in RowBinary (`FlowRow` column order).
    pub async fn write_encoded(
        &self,
        data: &[u8],
        rows: usize,
        token: Option<&str>,
    ) -> anyhow::Result<()> {
        if rows == 0 {
            return Ok(());
        }
        let started = Instant::now();
        let result = self
            .write_inner(data, rows, token)
            .await
            .with_context(|| format!("inserting into `{}` at {}", self.table, self.endpoint));
        let elapsed = started.elapsed();
        match &result {
            Ok(format) => {
                health::condition(INSERTS).set_ok();
                metrics::histogram!("flowlens_sink_insert_duration_seconds")
                    .record(elapsed.as_secs_f64());
                metrics::counter!("flowlens_sink_rows_inserted_total").increment(rows as u64);
                metrics::counter!("flowlens_sink_batches_total").increment(1);
                tracing::debug!(
                    table = %self.table,
                    rows,
                    format,
                    ms = elapsed.as_millis() as u64,
                    "batch inserted"
                );
            }
            Err(e) => {
                health::condition(INSERTS).set_failing(format!("{e:#}"));
                metrics::counter!("flowlens_sink_insert_errors_total").increment(1);
                tracing::warn!(table = %self.table, rows, error = format!("{e:#}"), "insert failed");
                // The table may have been (re)created with other columns: check them again.
                self.checked.store(false, Ordering::Relaxed);
            }
        }
        result.map(|_| ())
    }

    /// Compares the table's columns with `COLUMN_TYPES`; an error names every mismatch.
    async fn check_columns(&self) -> anyhow::Result<()> {
        let columns: Vec<(String, String)> = self
            .client
            .query(
                "SELECT name, type FROM system.columns \
                 WHERE database = currentDatabase() AND table = ?",
            )
            .bind(&self.table)
            .fetch_all()
            .await
            .with_context(|| format!("reading the columns of `{}`", self.table))?;
        let mut wrong = Vec::new();
        for (name, accepted) in COLUMN_TYPES {
            match columns.iter().find(|(n, _)| n == name) {
                None => wrong.push(format!("`{name}` missing")),
                Some((_, t)) if !accepted.contains(&t.as_str()) => wrong.push(format!(
                    "`{name}` is {t}, expected {}",
                    accepted.join(" or ")
                )),
                Some(_) => {}
            }
        }
        anyhow::ensure!(
            wrong.is_empty(),
            "table `{}` does not match the rows this sink writes: {}",
            self.table,
            wrong.join("; ")
        );
        let native = NativeLayout::for_table(&columns);
        tracing::info!(table = %self.table, format = if native.is_some() { "Native" } else { "RowBinary" },
            "table columns checked; insert format chosen");
        *self.native.lock().unwrap_or_else(|p| p.into_inner()) = native;
        Ok(())
    }

    /// The INSERT's format and body for `rows` RowBinary rows `data`: Native once the table's
    /// columns were checked and all have a Native layout (only with `clickhouse.validation`).
    fn body(&self, data: &[u8], rows: usize) -> anyhow::Result<(&'static str, bytes::Bytes)> {
        let native = self.native.lock().unwrap_or_else(|p| p.into_inner());
        match native.as_ref() {
            Some(layout) => {
                let mut block = Vec::new();
                layout
                    .write_block(data, rows, &mut block)
                    .context("writing the batch as a Native block")?;
                Ok(("Native", block.into()))
            }
            _ => Ok(("RowBinary", bytes::Bytes::copy_from_slice(data))),
        }
    }

    async fn write_inner(
        &self,
        data: &[u8],
        rows: usize,
        token: Option<&str>,
    ) -> anyhow::Result<&'static str> {
        if self.validation && !self.checked.load(Ordering::Relaxed) {
            self.check_columns().await?;
            self.checked.store(true, Ordering::Relaxed);
        }
        let (format, body) = self.body(data, rows)?;
        let mut insert = self
            .client
            .insert_formatted_with(format!("{}{format}", self.sql))
            .with_timeouts(Some(self.timeout), Some(self.timeout));
        if let Some(token) = token {
            insert = insert
                .with_setting("insert_deduplicate", "1")
                .with_setting("insert_deduplication_token", token)
                .with_setting("deduplicate_blocks_in_dependent_materialized_views", "1");
        }
        insert.send(body).await?;
        insert.end().await?;
        Ok(format)
    }
}

/// Capped exponential backoff: `initial`, `2*initial`, ... up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    attempts: u32,
}

impl Backoff {
    pub fn new(config: &SinkConfig) -> Self {
        let initial = Duration::from_millis(config.retry_initial_ms);
        Self {
            initial,
            max: Duration::from_millis(config.retry_max_ms),
            next: initial,
            attempts: 0,
        }
    }

    /// The wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        self.attempts += 1;
        delay
    }

    /// Failed attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    pub fn reset(&mut self) {
        self.next = self.initial;
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Backoff::new(&SinkConfig {
            retry_initial_ms: 100,
            retry_max_ms: 500,
            ..Default::default()
        });
        let delays: Vec<u64> = (0..5).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        assert_eq!(b.attempts(), 5);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[tokio::test]
    async fn unreachable_server_is_an_error() {
        // Nothing listens on port 9 (discard) of localhost in the test environment.
        let inserter = Inserter::new(&ClickHouseConfig {
            url: "http://127.0.0.1:9".into(),
            validation: false,
            timeout_ms: 2_000,
            ..Default::default()
        })
        .unwrap();
        let row = FlowRow::try_from(crate::row::sample_flow(1)).unwrap();
        assert!(inserter.write(&[row], Some("t/0/1-1")).await.is_err());
        assert!(inserter.write(&[], None).await.is_ok());
    }
}
