//! Avro binary readers for the contract's hand-written decoders, and the one guard rule every
//! hand-written decoder follows: it reads a record only if the record's writer schema is one of
//! the known versions (by fingerprint) and the decoder accepted that version's schema once
//! ([`WriterPlans`]); anything else (an unknown fingerprint, a rejected version, a datum it does
//! not read exactly) goes to [`crate::decode`] (apache-avro), which decodes it or words the error.
//!
//! The RawFlow reader ([`raw_flow`]) lives here; the sink's EnrichedFlow reader writes straight
//! into its ClickHouse row and so lives in the sink, under the same rule.

mod raw_flow;

use crate::binary::{kind, zero_default, Kind, Reader};
use crate::{Dns, Http, RecordKind, HEADER_LEN, MAGIC};

pub use raw_flow::raw_flow;

/// What a hand-written decoder decided, once, for each known writer version of one record kind:
/// `Some(plan)` if it reads that version, `None` if that version must go to apache-avro.
pub struct WriterPlans<P> {
    plans: Vec<([u8; 8], Option<P>)>,
}

impl<P> WriterPlans<P> {
    /// Asks `judge(writer, current)` once for every known writer schema of `kind`.
    pub fn new(
        kind: RecordKind,
        judge: impl Fn(&apache_avro::Schema, &apache_avro::Schema) -> Option<P>,
    ) -> Self {
        let current = kind.schema();
        let plans = RecordKind::known_writers()
            .filter(|w| w.0 == kind)
            .map(|(_, _, fingerprint, writer)| (fingerprint, judge(writer, current)))
            .collect();
        WriterPlans { plans }
    }

    /// The plan for `payload`'s writer and the datum after the header, if `payload` is a
    /// single-object message from a writer this decoder reads.
    pub fn datum<'a>(&self, payload: &'a [u8]) -> Option<(&P, &'a [u8])> {
        if payload.len() < HEADER_LEN || payload[..2] != MAGIC {
            return None;
        }
        let fingerprint = &payload[2..HEADER_LEN];
        let (_, plan) = self.plans.iter().find(|(fp, _)| fp[..] == *fingerprint)?;
        Some((plan.as_ref()?, &payload[HEADER_LEN..]))
    }
}

/// (name, kind, whether the default is a zero value) of each field of a record schema; empty
/// if it is not a record the kinds describe.
pub fn field_kinds(schema: &apache_avro::Schema) -> Vec<(String, Kind, bool)> {
    let apache_avro::Schema::Record(r) = schema else {
        return Vec::new();
    };
    let mut named = Vec::new();
    let mut out = Vec::new();
    for f in &r.fields {
        let Some(k) = kind(&f.schema, &mut named) else {
            return Vec::new();
        };
        out.push((f.name.clone(), k, zero_default(f)));
    }
    out
}

/// `["null", Dns]` (RawFlow version 4, EnrichedFlow version 5): the union index, then the
/// thirteen fields in schema order; `latencies_us` as one block ([`Reader::longs`]).
pub fn dns(r: &mut Reader<'_>) -> Option<Option<Dns>> {
    if !r.present()? {
        return Some(None);
    }
    let mut dns = Dns {
        queries: r.long()?,
        responses: r.long()?,
        noerror: r.long()?,
        nxdomain: r.long()?,
        servfail: r.long()?,
        refused: r.long()?,
        other_rcode: r.long()?,
        answered: r.long()?,
        latency_sum_ns: r.long()?,
        latency_max_ns: r.long()?,
        ..Dns::default()
    };
    r.longs(&mut dns.latencies_us)?;
    dns.last_query = match r.present()? {
        true => Some(r.str()?.to_owned()),
        false => None,
    };
    dns.last_query_type = r.int()?;
    Some(Some(dns))
}

/// `["null", Http]` (RawFlow version 4, EnrichedFlow version 5): the union index, then the
/// fourteen fields in schema order; `latencies_us` as one block ([`Reader::longs`]).
pub fn http(r: &mut Reader<'_>) -> Option<Option<Http>> {
    if !r.present()? {
        return Some(None);
    }
    let mut http = Http {
        requests: r.long()?,
        responses: r.long()?,
        status_2xx: r.long()?,
        status_3xx: r.long()?,
        status_4xx: r.long()?,
        status_5xx: r.long()?,
        status_other: r.long()?,
        answered: r.long()?,
        latency_sum_ns: r.long()?,
        latency_max_ns: r.long()?,
        ..Http::default()
    };
    r.longs(&mut http.latencies_us)?;
    http.last_method = optional_string(r)?;
    http.last_path = optional_string(r)?;
    http.last_status = r.int()?;
    Some(Some(http))
}

/// `["null", "string"]` as an owned string.
fn optional_string(r: &mut Reader<'_>) -> Option<Option<String>> {
    Some(match r.present()? {
        true => Some(r.str()?.to_owned()),
        false => None,
    })
}
