//! Avro single-object encoding: `C3 01`, 8-byte CRC-64-AVRO fingerprint (little-endian), binary datum.

use std::io;

use apache_avro::types::Value;
use apache_avro::{from_value, write_avro_datum_ref, Schema};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{hex, SchemaError};
use crate::records::{EnrichedFlow, Interface, RawFlow};
use crate::schema::{AvroRecord, RecordKind};

/// The two marker bytes that start every single-object message.
pub const MAGIC: [u8; 2] = [0xC3, 0x01];
/// Length of the single-object header: marker plus fingerprint.
pub const HEADER_LEN: usize = 10;

/// Appends one single-object message (header + datum) for `record` to `out`.
///
/// On error `out` is left as it was. Reuse `out` across calls (clear it, or keep
/// appending) to avoid reallocations.
pub fn encode<R: AvroRecord + Serialize>(record: &R, out: &mut Vec<u8>) -> Result<(), SchemaError> {
    let fingerprint = R::fingerprint();
    let start = out.len();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&fingerprint);
    let result = match RecordKind::from_fingerprint(fingerprint) {
        Some(kind) => write_avro_datum_ref(&kind.compiled().inlined, record, out),
        // An AvroRecord implemented outside this crate: resolve its references on the fly.
        None => {
            let inlined = crate::schema::inlined(R::schema());
            write_avro_datum_ref(&inlined, record, out)
        }
    };
    result.map(drop).map_err(|e| {
        out.truncate(start);
        SchemaError::Datum(e.to_string())
    })
}

/// Decodes one single-object message holding an `R`.
///
/// The message may have been written with the current schema of `R` or any earlier version
/// this crate keeps ([`RecordKind::history`]): older records are resolved to the current schema
/// (fields added since take their defaults). The whole slice must be exactly one message:
/// trailing bytes are an error.
pub fn decode<R: AvroRecord + DeserializeOwned>(message: &[u8]) -> Result<R, SchemaError> {
    let fingerprint = peek_fingerprint(message)?;
    if fingerprint == R::fingerprint() {
        let found = RecordKind::from_fingerprint(fingerprint);
        match crate::schema::writer(fingerprint) {
            Some(w) => check_lengths(w.layout.as_ref(), message)?,
            None => {
                let layout = crate::binary::kind(R::schema(), &mut Vec::new());
                check_lengths(layout.as_ref(), message)?;
            }
        }
        let mut reader = EofTracking {
            rest: message,
            hit_eof: false,
        };
        let value = match found {
            Some(kind) => kind.compiled().reader.read_value(&mut reader),
            None => {
                reader.rest = &message[HEADER_LEN..];
                apache_avro::from_avro_datum(R::schema(), &mut reader, None)
            }
        };
        let value = finish(value, reader, message.len(), found)?;
        return from_value::<R>(&value).map_err(|e| SchemaError::Datum(e.to_string()));
    }
    let expected = RecordKind::from_fingerprint(R::fingerprint());
    match crate::schema::writer(fingerprint) {
        // An earlier version of the same record: resolve writer -> current reader schema.
        Some(w) if Some(w.kind) == expected => decode_resolved(message, w, w.kind.schema()),
        Some(w) => Err(SchemaError::WrongRecord {
            expected: expected.map_or("a record outside flowlens-schemas", RecordKind::full_name),
            found: w.kind.full_name(),
        }),
        None => Err(SchemaError::UnknownFingerprint {
            found: hex(&fingerprint),
        }),
    }
}

/// Decodes a message written with any schema version this crate knows (current or historic)
/// into `T` as described by `reader_schema`, through Avro schema resolution: fields the writer
/// did not have take the reader's defaults, fields the reader does not have are skipped.
///
/// This is how a consumer built against an *older* schema version reads *newer* records (keep
/// your old `.avsc` as `reader_schema` and your old struct as `T`), and how any reader reads any
/// known version. The reader schema must be compatible with the writer's (same record name).
pub fn decode_with_reader<T: DeserializeOwned>(
    message: &[u8],
    reader_schema: &Schema,
) -> Result<T, SchemaError> {
    let fingerprint = peek_fingerprint(message)?;
    let w = crate::schema::writer(fingerprint).ok_or_else(|| SchemaError::UnknownFingerprint {
        found: hex(&fingerprint),
    })?;
    decode_resolved(message, w, reader_schema)
}

fn decode_resolved<T: DeserializeOwned>(
    message: &[u8],
    writer: &crate::schema::Writer,
    reader_schema: &Schema,
) -> Result<T, SchemaError> {
    let value = resolved_value(message, writer, reader_schema)?;
    from_value::<T>(&value).map_err(|e| SchemaError::Datum(e.to_string()))
}

/// Decodes a message written with any schema version this crate knows into apache-avro's
/// generic value, resolved to the current schema of its record (fields added since take their
/// defaults): the generic path for tools that show every field without naming any, e.g. as
/// JSON with [`crate::json::to_json`]. `apache_avro::from_value` turns it into the typed record.
pub fn decode_value(message: &[u8]) -> Result<(RecordKind, Value), SchemaError> {
    let fingerprint = peek_fingerprint(message)?;
    let w = crate::schema::writer(fingerprint).ok_or_else(|| SchemaError::UnknownFingerprint {
        found: hex(&fingerprint),
    })?;
    Ok((w.kind, resolved_value(message, w, w.kind.schema())?))
}

/// Reads the datum of `message` with its writer schema, resolved to `reader_schema`.
fn resolved_value(
    message: &[u8],
    writer: &crate::schema::Writer,
    reader_schema: &Schema,
) -> Result<Value, SchemaError> {
    check_lengths(writer.layout.as_ref(), message)?;
    let mut reader = EofTracking {
        rest: &message[HEADER_LEN..],
        hit_eof: false,
    };
    let value = apache_avro::from_avro_datum(&writer.schema, &mut reader, Some(reader_schema));
    finish(value, reader, message.len(), Some(writer.kind))
}

/// Refuses a message whose datum claims a string or bytes longer than what follows it, before
/// apache-avro allocates that length (see [`crate::binary::length_past_end`]). A writer whose
/// layout the check cannot describe is left to apache-avro (every flowlens writer has one:
/// `tests/bounded.rs`).
fn check_lengths(layout: Option<&crate::binary::Kind>, message: &[u8]) -> Result<(), SchemaError> {
    let (Some(layout), Some(datum)) = (layout, message.get(HEADER_LEN..)) else {
        return Ok(());
    };
    match crate::binary::length_past_end(layout, datum) {
        Some(past) => Err(SchemaError::LengthPastEnd {
            len: message.len(),
            at: past.at,
            claimed: past.claimed,
            left: past.left,
        }),
        None => Ok(()),
    }
}

/// Common checks after reading a datum: no EOF inside it, no bytes after it.
fn finish(
    value: apache_avro::AvroResult<apache_avro::types::Value>,
    reader: EofTracking<'_>,
    len: usize,
    kind: Option<RecordKind>,
) -> Result<apache_avro::types::Value, SchemaError> {
    // apache-avro 0.21 turns an EOF inside a string, bool or union index into a null value
    // instead of an error, so a truncated message can "decode"; the reader remembers EOFs.
    if reader.hit_eof {
        return Err(SchemaError::Truncated { len, part: "datum" });
    }
    let value = value.map_err(|e| datum_error(e, len))?;
    if !reader.rest.is_empty() {
        return Err(SchemaError::TrailingBytes {
            record: kind.map_or("record", RecordKind::full_name),
            count: reader.rest.len(),
        });
    }
    Ok(value)
}

/// Checks the marker and returns the writer-schema fingerprint (header byte order)
/// without decoding the datum.
pub fn peek_fingerprint(message: &[u8]) -> Result<[u8; 8], SchemaError> {
    let marker_len = message.len().min(MAGIC.len());
    if message[..marker_len] != MAGIC[..marker_len] {
        return Err(SchemaError::NotSingleObject {
            found: hex(&message[..marker_len]),
        });
    }
    match message.get(MAGIC.len()..HEADER_LEN) {
        Some(fp) => Ok(fp.try_into().expect("slice of 8")),
        None => Err(SchemaError::Truncated {
            len: message.len(),
            part: "header",
        }),
    }
}

/// Which flowlens record a message holds, from its header alone.
pub fn peek_kind(message: &[u8]) -> Result<RecordKind, SchemaError> {
    RecordKind::for_fingerprint(peek_fingerprint(message)?)
}

/// Any flowlens record, as returned by [`decode_any`].
// Short-lived (decoded, then matched and moved out): not worth boxing EnrichedFlow.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnyRecord {
    /// An `io.flowlens.RawFlow` message.
    RawFlow(RawFlow),
    /// An `io.flowlens.Interface` message.
    Interface(Interface),
    /// An `io.flowlens.EnrichedFlow` message.
    EnrichedFlow(EnrichedFlow),
}

impl AnyRecord {
    /// The kind of record held.
    pub fn kind(&self) -> RecordKind {
        match self {
            AnyRecord::RawFlow(_) => RecordKind::RawFlow,
            AnyRecord::Interface(_) => RecordKind::Interface,
            AnyRecord::EnrichedFlow(_) => RecordKind::EnrichedFlow,
        }
    }
}

/// Decodes a message of any flowlens record type, chosen by its fingerprint.
pub fn decode_any(message: &[u8]) -> Result<AnyRecord, SchemaError> {
    Ok(match peek_kind(message)? {
        RecordKind::RawFlow => AnyRecord::RawFlow(decode(message)?),
        RecordKind::Interface => AnyRecord::Interface(decode(message)?),
        RecordKind::EnrichedFlow => AnyRecord::EnrichedFlow(decode(message)?),
    })
}

/// A byte-slice reader that remembers whether anyone tried to read past its end.
struct EofTracking<'a> {
    rest: &'a [u8],
    hit_eof: bool,
}

impl io::Read for EofTracking<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.rest.is_empty() && !buf.is_empty() {
            self.hit_eof = true;
        }
        self.rest.read(buf)
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        if buf.len() > self.rest.len() {
            self.hit_eof = true;
            self.rest = &[];
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let (head, tail) = self.rest.split_at(buf.len());
        buf.copy_from_slice(head);
        self.rest = tail;
        Ok(())
    }
}

/// Maps an apache-avro decoding error, telling truncation (an EOF anywhere in the error
/// chain) apart from other datum errors.
fn datum_error(err: apache_avro::Error, len: usize) -> SchemaError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::UnexpectedEof {
                return SchemaError::Truncated { len, part: "datum" };
            }
        }
        source = e.source();
    }
    SchemaError::Datum(err.to_string())
}
