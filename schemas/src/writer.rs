//! Avro binary writers for the contract's hand-written encoders (the collector's RawFlow, the
//! enricher's EnrichedFlow): the primitives and optional records both write, and the one guard
//! rule every hand-written encoder follows: it writes only while the embedded schema is the
//! version it was written for ([`fast_header`]), and otherwise its caller falls back to
//! [`crate::encode`] (correct, slower).

use std::net::Ipv6Addr;

use crate::{Dns, Http, Origin, Process, RecordKind, MAGIC};

/// The single-object header for `kind`, when the embedded schema of `kind` has the fingerprint
/// `written_for` (the version a hand-written encoder writes); `None` otherwise: the encoder
/// must not be used.
pub fn fast_header(kind: RecordKind, written_for: [u8; 8]) -> Option<[u8; 10]> {
    let fingerprint = kind.fingerprint();
    if fingerprint != written_for {
        return None;
    }
    let mut header = [0u8; 10];
    header[..2].copy_from_slice(&MAGIC);
    header[2..].copy_from_slice(&fingerprint);
    Some(header)
}

/// Avro `long`: zig-zag, then a little-endian base-128 varint.
#[inline]
pub fn long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push(z as u8 | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// Avro `int`: the encoding of `long` for the sign-extended value.
#[inline]
pub fn int(out: &mut Vec<u8>, v: i32) {
    long(out, i64::from(v));
}

/// Avro `string`: length as `long`, then the UTF-8 bytes.
#[inline]
pub fn string(out: &mut Vec<u8>, s: &str) {
    long(out, s.len() as i64);
    out.extend_from_slice(s.as_bytes());
}

/// `["null", "string"]`: branch index, then the string.
#[inline]
pub fn optional(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        None => long(out, 0),
        Some(s) => {
            long(out, 1);
            string(out, s);
        }
    }
}

/// `["null", Process]`: branch index, then pid, comm, cgroup_id.
#[inline]
pub fn process(out: &mut Vec<u8>, p: Option<&Process>) {
    match p {
        None => long(out, 0),
        Some(p) => {
            long(out, 1);
            int(out, p.pid);
            string(out, &p.comm);
            long(out, p.cgroup_id);
        }
    }
}

/// `["null", Origin]`: branch index, then topic, stream (fixed 16), partition, offset.
#[inline]
pub fn origin(out: &mut Vec<u8>, o: Option<&Origin>) {
    match o {
        None => long(out, 0),
        Some(o) => {
            long(out, 1);
            string(out, &o.topic);
            out.extend_from_slice(&o.stream);
            int(out, o.partition);
            long(out, o.offset);
        }
    }
}

/// `["null", Dns]`: branch index, then the thirteen fields in schema order; `latencies_us` as
/// apache-avro writes an array (one block: count, items, then 0; an empty array is the 0 alone).
#[inline]
pub fn dns(out: &mut Vec<u8>, d: Option<&Dns>) {
    let Some(d) = d else {
        return long(out, 0);
    };
    // No `..`: a field added to Dns must be written here before this compiles.
    let Dns {
        queries,
        responses,
        noerror,
        nxdomain,
        servfail,
        refused,
        other_rcode,
        answered,
        latency_sum_ns,
        latency_max_ns,
        latencies_us,
        last_query,
        last_query_type,
    } = d;
    long(out, 1);
    for v in [
        queries,
        responses,
        noerror,
        nxdomain,
        servfail,
        refused,
        other_rcode,
        answered,
        latency_sum_ns,
        latency_max_ns,
    ] {
        long(out, *v);
    }
    if !latencies_us.is_empty() {
        long(out, latencies_us.len() as i64);
        for v in latencies_us {
            long(out, *v);
        }
    }
    long(out, 0);
    optional(out, last_query.as_deref());
    int(out, *last_query_type);
}

/// `["null", Http]`: branch index, then the fourteen fields in schema order; `latencies_us` as
/// apache-avro writes an array (one block, as [`dns`]).
#[inline]
pub fn http(out: &mut Vec<u8>, h: Option<&Http>) {
    let Some(h) = h else {
        return long(out, 0);
    };
    // No `..`: a field added to Http must be written here before this compiles.
    let Http {
        requests,
        responses,
        status_2xx,
        status_3xx,
        status_4xx,
        status_5xx,
        status_other,
        answered,
        latency_sum_ns,
        latency_max_ns,
        latencies_us,
        last_method,
        last_path,
        last_status,
    } = h;
    long(out, 1);
    for v in [
        requests,
        responses,
        status_2xx,
        status_3xx,
        status_4xx,
        status_5xx,
        status_other,
        answered,
        latency_sum_ns,
        latency_max_ns,
    ] {
        long(out, *v);
    }
    if !latencies_us.is_empty() {
        long(out, latencies_us.len() as i64);
        for v in latencies_us {
            long(out, *v);
        }
    }
    long(out, 0);
    optional(out, last_method.as_deref());
    optional(out, last_path.as_deref());
    int(out, *last_status);
}

/// `["null", IPv6Address]`: branch index, then the 16 bytes.
#[inline]
pub fn address(out: &mut Vec<u8>, a: Option<Ipv6Addr>) {
    match a {
        None => long(out, 0),
        Some(a) => {
            long(out, 1);
            out.extend_from_slice(&a.octets());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longs_are_zigzag_varints() {
        // Avro specification, "Binary Encoding": 0 → 00, -1 → 01, 1 → 02, -2 → 03, 2 → 04,
        // -64 → 7f, 64 → 80 01.
        for (v, bytes) in [
            (0i64, &[0x00u8][..]),
            (-1, &[0x01]),
            (1, &[0x02]),
            (-2, &[0x03]),
            (2, &[0x04]),
            (-64, &[0x7f]),
            (64, &[0x80, 0x01]),
        ] {
            let mut out = Vec::new();
            long(&mut out, v);
            assert_eq!(out, bytes, "{v}");
        }
        let mut out = Vec::new();
        long(&mut out, i64::MIN);
        assert_eq!(
            out,
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
    }

    /// `dns` writes what apache-avro writes for the field (the one before http, null here): null, an
    /// empty record, and one with every field set and a full latency array.
    #[test]
    fn dns_matches_apache_avro() {
        let full = Dns {
            queries: 70,
            responses: 68,
            noerror: 60,
            nxdomain: 4,
            servfail: 2,
            refused: 1,
            other_rcode: 1,
            answered: 66,
            latency_sum_ns: 1 << 40,
            latency_max_ns: i64::MAX,
            latencies_us: (0..64).map(|i| i * 1_000 - 3).collect(),
            last_query: Some("xn--nd-fka.example.com".into()),
            last_query_type: 28,
        };
        let mut without = Vec::new();
        crate::encode(&crate::RawFlow::default(), &mut without).unwrap();
        // Both dns and http null: one 0 each.
        let prefix = &without[..without.len() - 2];
        for d in [None, Some(Dns::default()), Some(full)] {
            let flow = crate::RawFlow {
                dns: d.clone(),
                ..Default::default()
            };
            let mut generic = Vec::new();
            crate::encode(&flow, &mut generic).unwrap();
            let mut ours = prefix.to_vec();
            dns(&mut ours, d.as_ref());
            http(&mut ours, None);
            assert_eq!(ours, generic, "{d:?}");
        }
    }

    /// `http` writes what apache-avro writes for the field (the last of RawFlow): null, an
    /// empty record, and one with every field set and a full latency array.
    #[test]
    fn http_matches_apache_avro() {
        let full = Http {
            requests: 70,
            responses: 68,
            status_2xx: 60,
            status_3xx: 4,
            status_4xx: 2,
            status_5xx: 1,
            status_other: 1,
            answered: 66,
            latency_sum_ns: 1 << 40,
            latency_max_ns: i64::MAX,
            latencies_us: (0..64).map(|i| i * 1_000 - 3).collect(),
            last_method: Some("POST".into()),
            last_path: Some("/api/v1/items%C3%A9".into()),
            last_status: 503,
        };
        let mut without = Vec::new();
        crate::encode(&crate::RawFlow::default(), &mut without).unwrap();
        let prefix = &without[..without.len() - 1];
        for h in [None, Some(Http::default()), Some(full)] {
            let flow = crate::RawFlow {
                http: h.clone(),
                ..Default::default()
            };
            let mut generic = Vec::new();
            crate::encode(&flow, &mut generic).unwrap();
            let mut ours = prefix.to_vec();
            http(&mut ours, h.as_ref());
            assert_eq!(ours, generic, "{h:?}");
        }
    }

    #[test]
    fn a_header_only_for_the_version_written_for() {
        let current = RecordKind::RawFlow.fingerprint();
        let header = fast_header(RecordKind::RawFlow, current).unwrap();
        assert_eq!((&header[..2], &header[2..]), (&MAGIC[..], &current[..]));
        assert_eq!(fast_header(RecordKind::RawFlow, [0; 8]), None);
    }
}
