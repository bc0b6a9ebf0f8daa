//! Reading back what ClickHouse holds of one enriched partition (`dedup::Stored`), through the
//! aggregate projections of `flows` (migration 0005; on a table without them, such as the
//! ClickHouse 18.16 test table, the same queries read the table), and checking a stored
//! incarnation against the record Kafka now holds at its highest stored offset.

use std::collections::HashMap;

use anyhow::Context as _;
use flowlens_runtime::incarnation::{parse_hex, Probe, StreamId};

use crate::dedup::{Check, Stored, StoredStream};

#[derive(clickhouse::Row, serde::Deserialize)]
struct PositionRow {
    stream: String,
    max_offset: u64,
    timestamp_ms: i64,
    origin_stream: String,
    origin_partition: i32,
    origin_offset: i64,
}

#[derive(clickhouse::Row, serde::Deserialize)]
struct MarkRow {
    origin_stream: String,
    origin_partition: i32,
    max_offset: i64,
}

/// The recovery queries of one table.
#[derive(Debug, Clone)]
pub struct Queries {
    positions: String,
    marks: String,
}

impl Queries {
    /// The queries for `table`, whose `kafka_timestamp` column has type `timestamp_type`
    /// (`DateTime64(3)`, or `Int64` milliseconds on the 18.16 test table).
    pub fn new(table: &str, timestamp_type: &str) -> Self {
        let ts = if timestamp_type.starts_with("DateTime64") {
            "toUnixTimestamp64Milli(argMax(kafka_timestamp, kafka_offset))"
        } else {
            "toInt64(argMax(kafka_timestamp, kafka_offset))"
        };
        Self {
            positions: format!(
                "SELECT hex(kafka_stream) AS stream, max(kafka_offset) AS max_offset, \
                 {ts} AS timestamp_ms, \
                 hex(argMax(origin_stream, kafka_offset)) AS origin_stream, \
                 argMax(origin_partition, kafka_offset) AS origin_partition, \
                 argMax(origin_offset, kafka_offset) AS origin_offset \
                 FROM `{table}` WHERE kafka_topic = ? AND kafka_partition = ? \
                 GROUP BY kafka_topic, kafka_partition, kafka_stream"
            ),
            marks: format!(
                "SELECT hex(origin_stream) AS origin_stream, origin_partition, \
                 max(origin_offset) AS max_offset \
                 FROM `{table}` WHERE kafka_topic = ? AND kafka_partition = ? \
                 GROUP BY kafka_topic, kafka_partition, origin_stream, origin_partition"
            ),
        }
    }

    /// The queries for `table` as it is in ClickHouse (its `kafka_timestamp` type).
    pub async fn for_table(client: &clickhouse::Client, table: &str) -> anyhow::Result<Self> {
        let types: Vec<String> = client
            .query(
                "SELECT type FROM system.columns \
                 WHERE database = currentDatabase() AND table = ? AND name = 'kafka_timestamp'",
            )
            .bind(table)
            .fetch_all()
            .await
            .with_context(|| format!("reading the type of `{table}`.kafka_timestamp"))?;
        let Some(ty) = types.first() else {
            // No such column: let the server say whether the table is there at all.
            client
                .query(&format!("SELECT 1 FROM `{table}` LIMIT 0"))
                .execute()
                .await
                .with_context(|| format!("reading table `{table}`"))?;
            anyhow::bail!("table `{table}` has no kafka_timestamp column (migration 0005)");
        };
        Ok(Self::new(table, ty))
    }

    /// The positions query's text (for EXPLAIN in tests).
    pub fn positions_sql(&self) -> &str {
        &self.positions
    }

    /// The marks query's text (for EXPLAIN in tests).
    pub fn marks_sql(&self) -> &str {
        &self.marks
    }

    /// What `table` holds of (`topic`, `partition`).
    pub async fn stored(
        &self,
        client: &clickhouse::Client,
        topic: &str,
        partition: i32,
    ) -> anyhow::Result<Stored> {
        let positions: Vec<PositionRow> = client
            .query(&self.positions)
            .bind(topic)
            .bind(partition as u16)
            .fetch_all()
            .await
            .with_context(|| format!("reading back the stored positions of {topic}/{partition}"))?;
        let marks: Vec<MarkRow> = client
            .query(&self.marks)
            .bind(topic)
            .bind(partition as u16)
            .fetch_all()
            .await
            .with_context(|| format!("reading back the stored origins of {topic}/{partition}"))?;
        let id = |hex: &str| parse_hex(&hex.to_ascii_lowercase()).unwrap_or_default();
        let streams = positions
            .iter()
            .map(|p| StoredStream {
                stream: id(&p.stream),
                max_offset: p.max_offset as i64,
                timestamp_ms: p.timestamp_ms,
                origin: (id(&p.origin_stream), p.origin_partition, p.origin_offset),
            })
            .collect();
        let hwm: HashMap<(StreamId, i32), i64> = marks
            .iter()
            .map(|m| ((id(&m.origin_stream), m.origin_partition), m.max_offset))
            .collect();
        Ok(Stored { streams, hwm })
    }
}

/// Compares the stored row at a stream's highest offset with the record Kafka holds there now
/// (its broker timestamp and its identity).
pub fn check(
    probe: &Probe,
    topic: &str,
    partition: i32,
    stored: &StoredStream,
) -> anyhow::Result<Check> {
    let Some(now) = probe.record_at(topic, partition, stored.max_offset)? else {
        return Ok(Check::Gone);
    };
    let origin = crate::decode::origin_of(&now.value, stored.stream, partition, now.offset);
    Ok(
        if now.timestamp_ms == stored.timestamp_ms && origin == Some(stored.origin) {
            Check::Same
        } else {
            Check::Differs
        },
    )
}
