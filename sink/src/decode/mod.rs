//! Kafka record → RowBinary row, with a fast path for every known `EnrichedFlow` schema version.
//!
//! The generic path (`flowlens_schemas::decode`, then `FlowRow::try_from`) goes through
//! apache-avro's `Value` tree: ~5 µs per record, most of a sink's CPU on that path
//! (bench/results/sink.md). Records written with the current schema or an
//! earlier version the schemas crate keeps (by fingerprint: v1 to v4) are read here straight
//! from the Avro binary datum into a `RowRef` (strings borrowed from the payload) and written as
//! RowBinary into the batch buffer: no allocation per record. The reading follows a plan
//! derived once from each writer schema (field order and types; fields without a column are
//! read and dropped; columns an older version does not have keep their zero value, which is
//! checked to be the current schema's default), so a new schema version keeps the fast path
//! without code changes here. Anything the fast path does not accept exactly — an unknown
//! fingerprint, a malformed or truncated datum, trailing bytes, invalid UTF-8, an int out of
//! range, a value that does not fit its column — is handed to the generic path, which decides
//! (and words the error for the dead-letter header). `fast_path_matches_generic_decoder` checks
//! that both paths give the same row and the same bytes, for every version.

mod fast;
mod plan;
#[cfg(test)]
mod tests;

use flowlens_schemas::EnrichedFlow;

use crate::row::{FlowRow, RowRef};
use fast::fast;

/// Why a record cannot become a row: (metric label, reason for the dead-letter header).
pub type Rejection = (&'static str, String);

/// A record's identity: (origin stream, origin partition, origin offset).
pub type OriginKey = ([u8; 16], i32, i64);

/// Where the sink read a record: what its row's kafka_* columns hold, and its own origin when
/// the record carries none.
#[derive(Debug, Clone, Copy)]
pub struct Position<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// The incarnation of `topic` the record was read from.
    pub stream: [u8; 16],
    /// The record's broker timestamp (ms).
    pub timestamp_ms: i64,
}

/// Decodes one Kafka payload read `at` a position and appends it to `out` as one RowBinary row
/// (`out` is unchanged on error); returns the record's identity. The fast path allocates
/// nothing.
pub fn write_row(
    payload: &[u8],
    at: &Position<'_>,
    out: &mut Vec<u8>,
) -> Result<OriginKey, Rejection> {
    if let Some((mut row, has_origin)) = fast(payload) {
        place(&mut row, at, has_origin);
        row.write_row_binary(out);
        return Ok((row.origin_stream, row.origin_partition, row.origin_offset));
    }
    let (row, has_origin) = generic(payload)?;
    let mut row = row.as_ref();
    place(&mut row, at, has_origin);
    row.write_row_binary(out);
    Ok((row.origin_stream, row.origin_partition, row.origin_offset))
}

/// Sets the columns of where the row was read, and its origin when the record has none.
fn place<'a>(row: &mut RowRef<'a>, at: &Position<'a>, has_origin: bool) {
    row.kafka_topic = at.topic;
    row.kafka_partition = at.partition as u16;
    row.kafka_offset = at.offset as u64;
    row.kafka_stream = at.stream;
    row.kafka_timestamp = at.timestamp_ms;
    if !has_origin {
        row.origin_topic = at.topic;
        row.origin_stream = at.stream;
        row.origin_partition = at.partition;
        row.origin_offset = at.offset;
    }
}

/// The identity of an EnrichedFlow payload read at (`stream`, `partition`, `offset`), or
/// `None` if it does not decode (what the sink compares with a stored row).
pub fn origin_of(
    payload: &[u8],
    stream: [u8; 16],
    partition: i32,
    offset: i64,
) -> Option<OriginKey> {
    let (key, has_origin) = match fast(payload) {
        Some((row, has)) => (
            (row.origin_stream, row.origin_partition, row.origin_offset),
            has,
        ),
        None => {
            let (row, has) = generic(payload).ok()?;
            (
                (row.origin_stream, row.origin_partition, row.origin_offset),
                has,
            )
        }
    };
    Some(if has_origin {
        key
    } else {
        (stream, partition, offset)
    })
}

/// Decodes one Kafka payload into a row (kafka_* fields left empty, origin_* as the record has
/// them).
pub fn flow_row(payload: &[u8]) -> Result<FlowRow, Rejection> {
    if let Some((row, _)) = fast(payload) {
        return Ok(row.to_row());
    }
    generic(payload).map(|(row, _)| row)
}

/// The apache-avro path: the row and whether the record carries an origin.
fn generic(payload: &[u8]) -> Result<(FlowRow, bool), Rejection> {
    match flowlens_schemas::decode::<EnrichedFlow>(payload) {
        Err(e) => Err(("decode", format!("cannot decode EnrichedFlow: {e}"))),
        Ok(flow) => {
            let has_origin = flow.origin.is_some();
            FlowRow::try_from(flow)
                .map(|row| (row, has_origin))
                .map_err(|e| ("range", format!("EnrichedFlow does not fit the table: {e}")))
        }
    }
}
