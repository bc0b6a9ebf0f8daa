//! Errors returned when encoding or decoding flowlens messages.

use thiserror::Error;

/// Everything that can go wrong turning records into messages and back.
#[derive(Debug, Error)]
pub enum SchemaError {
    /// The message does not start with the Avro single-object marker `C3 01`.
    #[error("not an Avro single-object message: expected marker C3 01, found {found}")]
    NotSingleObject {
        /// Hex of the first (up to two) bytes of the message.
        found: String,
    },

    /// The message ends before the header or the datum is complete.
    #[error("truncated message: {len} bytes end inside the {part}")]
    Truncated {
        /// Length of the message that was given.
        len: usize,
        /// Which part was cut short: "header" or "datum".
        part: &'static str,
    },

    /// A string or bytes length (or an array's item count) in the datum claims more bytes (or
    /// items) than the message has left (a cut-off message or a corrupt length); refused before
    /// anything is allocated for it.
    #[error(
        "truncated message: a length of {claimed} bytes (items for an array) at datum byte {at} \
         runs past the end of the {len}-byte message ({left} bytes left)"
    )]
    LengthPastEnd {
        /// Length of the message that was given.
        len: usize,
        /// Offset of the length in the datum (after the 10-byte header).
        at: usize,
        /// The length (or item count) the datum claims.
        claimed: u64,
        /// Bytes the message has after that length.
        left: usize,
    },

    /// The writer-schema fingerprint is not one of the flowlens schemas this crate knows.
    #[error("unknown writer schema fingerprint {found} (CRC-64-AVRO, header byte order)")]
    UnknownFingerprint {
        /// Hex of the 8 fingerprint bytes as they appear in the header.
        found: String,
    },

    /// The message holds another flowlens record than the one asked for.
    #[error("wrong record: expected {expected}, message holds {found}")]
    WrongRecord {
        /// Full name of the record the caller asked for.
        expected: &'static str,
        /// Full name of the record in the message.
        found: &'static str,
    },

    /// The datum is complete but more bytes follow it.
    #[error("{count} trailing bytes after the {record} datum")]
    TrailingBytes {
        /// Full name of the decoded record.
        record: &'static str,
        /// Number of unread bytes.
        count: usize,
    },

    /// The datum could not be encoded or decoded against the schema.
    #[error("Avro datum error: {0}")]
    Datum(String),
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
