//! The ClickHouse side: one `INSERT ... FORMAT RowBinary[WithNamesAndTypes]` per batch (LZ4
//! compressed), successful only when the server acknowledged it, and the capped exponential
//! backoff used between failed attempts (the retry loop itself lives in `run.rs`, which keeps
//! the Kafka consumer polled while it waits).

use std::time::{Duration, Instant};

use clickhouse::{Client, Compression};

use crate::config::{ClickHouseConfig, SinkConfig};
use crate::row::FlowRow;

/// Builds the client for `config`: URL, database, credentials, LZ4, validation.
pub fn client(config: &ClickHouseConfig) -> Client {
    let mut client = Client::default()
        .with_url(&config.url)
        .with_database(&config.database)
        .with_compression(Compression::Lz4)
        .with_validation(config.validation);
    if !config.user.is_empty() {
        client = client.with_user(&config.user);
    }
    if !config.password.is_empty() {
        client = client.with_password(&config.password);
    }
    client
}

/// Writes batches of `FlowRow` into one table.
#[derive(Clone)]
pub struct Inserter {
    client: Client,
    table: String,
    timeout: Duration,
}

impl Inserter {
    pub fn new(config: &ClickHouseConfig) -> Self {
        Self {
            client: client(config),
            table: config.table.clone(),
            timeout: Duration::from_millis(config.timeout_ms),
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Inserts `rows` in one INSERT; `Ok` only once ClickHouse acknowledged all of them.
    /// Records `flowlens_sink_insert_duration_seconds` and, on failure,
    /// `flowlens_sink_insert_errors_total`.
    pub async fn write(&self, rows: &[FlowRow]) -> Result<(), clickhouse::error::Error> {
        if rows.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let result = self.write_inner(rows).await;
        let elapsed = started.elapsed();
        match &result {
            Ok(()) => {
                metrics::histogram!("flowlens_sink_insert_duration_seconds")
                    .record(elapsed.as_secs_f64());
                metrics::counter!("flowlens_sink_rows_inserted_total").increment(rows.len() as u64);
                metrics::counter!("flowlens_sink_batches_total").increment(1);
                tracing::debug!(
                    table = %self.table,
                    rows = rows.len(),
                    ms = elapsed.as_millis() as u64,
                    "batch inserted"
                );
            }
            Err(e) => {
                metrics::counter!("flowlens_sink_insert_errors_total").increment(1);
                tracing::warn!(table = %self.table, rows = rows.len(), error = %e, "insert failed");
                // The table may have been (re)created with other columns: fetch them again.
                self.client.clear_cached_metadata().await;
            }
        }
        result
    }

    async fn write_inner(&self, rows: &[FlowRow]) -> Result<(), clickhouse::error::Error> {
        let mut insert = self
            .client
            .insert::<FlowRow>(&self.table)
            .await?
            .with_timeouts(Some(self.timeout), Some(self.timeout));
        for row in rows {
            insert.write(row).await?;
        }
        insert.end().await
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
        });
        let row = FlowRow::try_from(crate::row::sample_flow(1)).unwrap();
        assert!(inserter.write(&[row]).await.is_err());
        assert!(inserter.write(&[]).await.is_ok());
    }
}
