//! The fast path against the generic decoder, for every EnrichedFlow version and for bad input.

use super::plan::{plan, Step, Target};
use super::*;
use crate::row::sample_flow;
use flowlens_schemas::{
    AvroRecord, Dns, Http, ENRICHED_FLOW_V1_AVSC, ENRICHED_FLOW_V2_AVSC, ENRICHED_FLOW_V3_AVSC,
    ENRICHED_FLOW_V4_AVSC, MAGIC,
};

/// The plan for the writer with this fingerprint (a header with an empty datum).
fn plan_of(fingerprint: &[u8]) -> Option<&'static [Step]> {
    let header = [&MAGIC[..], fingerprint].concat();
    plan(&header).map(|(plan, _)| plan)
}

fn encoded(f: &EnrichedFlow) -> Vec<u8> {
    let mut buf = Vec::new();
    flowlens_schemas::encode(f, &mut buf).unwrap();
    buf
}

/// A message exactly as a producer of an older version wrote it: `f`'s fields that version
/// has, written with its schema (apache-avro's generic single-object writer).
fn old_message(f: &EnrichedFlow, avsc: &str) -> Vec<u8> {
    use flowlens_schemas::apache_avro::{types::Value, GenericSingleObjectWriter, Schema};
    let old = Schema::parse_str(avsc).unwrap();
    let Schema::Record(record) = &old else {
        panic!("not a record");
    };
    let Value::Record(fields) = flowlens_schemas::apache_avro::to_value(f).unwrap() else {
        panic!("not a record");
    };
    let fields = fields
        .into_iter()
        .filter(|(name, _)| record.lookup.contains_key(name))
        .collect();
    let value = Value::Record(fields).resolve(&old).unwrap();
    let mut w = GenericSingleObjectWriter::new_with_capacity(&old, 256).unwrap();
    let mut out = Vec::new();
    w.write_value(value, &mut out).unwrap();
    out
}

/// Records that exercise every column: sample flows, Unicode and extremes, conversations
/// with reverse traffic, duplicates, both processes, no process, IPv6 outer addresses, DNS
/// statistics at their bounds (64 latencies, an empty one, no query name, an empty name), and
/// HTTP statistics the same way (with DNS beside them, or alone).
fn variants() -> Vec<EnrichedFlow> {
    let mut variants = Vec::new();
    for i in [0u32, 1, 7, 127, 128, 300, 65_535, 1 << 20, u32::MAX] {
        variants.push(sample_flow(i));
    }
    let mut f = sample_flow(3);
    f.src_pod = None;
    f.dst_pod = Some("é-ünïcode-pod".into());
    f.dst_workload_kind = Some(String::new());
    f.host = String::new();
    f.time_flow_start_ns = -5;
    f.time_flow_end_ns = i64::MAX;
    f.packets = i64::MAX;
    f.src_addr = "2001:db8::dead:beef".parse().unwrap();
    f.src_pod_uid = None;
    f.locality = Some("cluster".into());
    f.if_namespace = Some("ñs".into());
    f.if_pod = None;
    f.src_process = None;
    variants.push(f);
    let mut f = sample_flow(14);
    f.reverse_packets = i64::MAX;
    f.reverse_bytes = 1 << 40;
    f.reverse_tcp_flags = 0xff;
    f.end_reason = "shutdown".into();
    f.rtt_ns = i64::MAX;
    f.retransmits = u32::MAX.into();
    f.drops = 128;
    f.drop_reason = "SKB_ÜNKNOWN".into();
    f.dst_process = Some(flowlens_schemas::Process {
        pid: i32::MAX,
        comm: "pöstgres".into(),
        cgroup_id: i64::MAX,
    });
    f.tunnel = "geneve".into();
    f.tunnel_id = u32::MAX.into();
    f.outer_src_addr = Some("2001:db8::1".parse().unwrap());
    f.outer_dst_addr = None;
    f.duplicate = true;
    variants.push(f);
    let mut f = sample_flow(15);
    f.origin = Some(flowlens_schemas::Origin {
        topic: "flowlens.flows.raw".into(),
        stream: [0xfe; 16],
        partition: i32::MAX,
        offset: i64::MAX,
    });
    variants.push(f);
    let mut f = sample_flow(16);
    f.dns = Some(Dns {
        queries: u32::MAX.into(),
        responses: 70,
        noerror: 60,
        nxdomain: 5,
        servfail: 3,
        refused: 1,
        other_rcode: 1,
        answered: 68,
        latency_sum_ns: i64::MAX,
        latency_max_ns: 1 << 40,
        latencies_us: (0..64).map(|i| i << 26).chain([u32::MAX.into()]).collect(),
        last_query: Some(format!("{}.ëxample", "a".repeat(240))),
        last_query_type: u16::MAX.into(),
    });
    variants.push(f);
    let mut f = sample_flow(17);
    f.dns = Some(Dns::default());
    variants.push(f);
    let mut f = sample_flow(18);
    f.dns = Some(Dns {
        responses: 1,
        servfail: 1,
        last_query: Some(String::new()),
        latencies_us: vec![0],
        ..Dns::default()
    });
    variants.push(f);
    let mut f = sample_flow(19);
    f.http = Some(Http {
        requests: u32::MAX.into(),
        responses: 70,
        status_2xx: 60,
        status_3xx: 5,
        status_4xx: 3,
        status_5xx: 1,
        status_other: 1,
        answered: 68,
        latency_sum_ns: i64::MAX,
        latency_max_ns: 1 << 40,
        latencies_us: (0..64).map(|i| i << 26).chain([u32::MAX.into()]).collect(),
        last_method: Some("PROPFIND".into()),
        last_path: Some(format!("/{}%C3%A9", "p".repeat(121))),
        last_status: u16::MAX.into(),
    });
    variants.push(f);
    let mut f = sample_flow(21);
    assert!(f.dns.is_some());
    f.http = Some(Http::default());
    variants.push(f);
    let mut f = sample_flow(22);
    f.http = Some(Http {
        responses: 1,
        status_5xx: 1,
        last_method: Some(String::new()),
        last_path: None,
        latencies_us: vec![0],
        ..Http::default()
    });
    variants.push(f);
    variants
}

const AT: Position<'static> = Position {
    topic: "topic",
    partition: 3,
    offset: 77,
    stream: [7; 16],
    timestamp_ms: 1_700_000_000_123,
};

/// The row `write_row` must write for `row` read at `AT`.
fn placed(mut row: FlowRow, has_origin: bool) -> FlowRow {
    row.kafka_topic = AT.topic.into();
    row.kafka_partition = AT.partition as u16;
    row.kafka_offset = AT.offset as u64;
    row.kafka_stream = AT.stream;
    row.kafka_timestamp = AT.timestamp_ms;
    if !has_origin {
        row.origin_topic = AT.topic.into();
        row.origin_stream = AT.stream;
        row.origin_partition = AT.partition;
        row.origin_offset = AT.offset;
    }
    row
}

/// Both paths give the same row and the same bytes.
fn check_fast_matches_generic(buf: &[u8], what: &str) {
    let (fast, has_origin) =
        fast(buf).unwrap_or_else(|| panic!("fast path declined {what}: {:?}", generic(buf)));
    assert_eq!(Ok((fast.to_row(), has_origin)), generic(buf), "{what}");
    let want = placed(generic(buf).unwrap().0, has_origin);
    let mut a = Vec::new();
    want.write_row_binary(&mut a);
    let mut b = vec![9u8];
    let key = write_row(buf, &AT, &mut b).unwrap();
    assert_eq!(&b[1..], &a[..], "{what}");
    let identity = (
        want.origin_stream,
        want.origin_partition,
        want.origin_offset,
    );
    assert_eq!(key, identity, "{what}");
    assert_eq!(
        origin_of(buf, AT.stream, AT.partition, AT.offset),
        Some(identity)
    );
}

#[test]
fn fast_path_matches_generic_decoder() {
    for f in &variants() {
        check_fast_matches_generic(&encoded(f), &format!("v5 {f:?}"));
        for (v, avsc) in [
            (1, ENRICHED_FLOW_V1_AVSC),
            (2, ENRICHED_FLOW_V2_AVSC),
            (3, ENRICHED_FLOW_V3_AVSC),
            (4, ENRICHED_FLOW_V4_AVSC),
        ] {
            check_fast_matches_generic(&old_message(f, avsc), &format!("v{v} {f:?}"));
        }
    }
}

/// The current schema's plan reads every field into a column (none skipped, none missing).
#[test]
fn current_plan_feeds_every_column() {
    let current = plan_of(&<EnrichedFlow as AvroRecord>::fingerprint()).expect("a plan for v5");
    assert_eq!(current.len(), 61);
    assert!(current.iter().all(|(_, t)| *t != Target::Skip));
    for (i, (_, a)) in current.iter().enumerate() {
        assert!(current[..i].iter().all(|(_, b)| b != a), "{a:?} twice");
    }
    for (v, avsc) in [
        (1, ENRICHED_FLOW_V1_AVSC),
        (2, ENRICHED_FLOW_V2_AVSC),
        (3, ENRICHED_FLOW_V3_AVSC),
        (4, ENRICHED_FLOW_V4_AVSC),
    ] {
        let fp = flowlens_schemas::apache_avro::Schema::parse_str(avsc)
            .unwrap()
            .fingerprint::<flowlens_schemas::apache_avro::rabin::Rabin>()
            .bytes;
        assert!(plan_of(&fp).is_some(), "no fast plan for v{v}");
    }
}

#[test]
fn older_records_get_empty_newer_columns() {
    // Version 4: the DNS and HTTP columns are zeros, [] and "".
    let mut f = sample_flow(5);
    f.http = sample_flow(6).http;
    assert!(f.dns.is_some() && f.http.is_some());
    let row = flow_row(&old_message(&f, ENRICHED_FLOW_V4_AVSC)).unwrap();
    f.dns = None;
    f.http = None;
    assert_eq!(row, FlowRow::try_from(f).unwrap());
    assert!(row.dns_latencies_us.is_empty() && row.dns_last_query.is_empty());
    assert!(row.http_latencies_us.is_empty() && row.http_last_path.is_empty());
    let f = variants()[11].clone();
    assert!(f.origin.is_some());
    let full = FlowRow::try_from(f.clone()).unwrap();
    // Version 2: the version 3 columns are zero, "" and `::`.
    let row = flow_row(&old_message(&f, ENRICHED_FLOW_V2_AVSC)).unwrap();
    let mut want = FlowRow::try_from(EnrichedFlow {
        reverse_packets: 0,
        reverse_bytes: 0,
        reverse_tcp_flags: 0,
        end_reason: String::new(),
        rtt_ns: 0,
        retransmits: 0,
        drops: 0,
        drop_bytes: 0,
        drop_reason: String::new(),
        src_process: None,
        dst_process: None,
        tunnel: String::new(),
        tunnel_id: 0,
        outer_src_addr: None,
        outer_dst_addr: None,
        duplicate: false,
        origin: None,
        ..f
    })
    .unwrap();
    assert_eq!(row, want);
    assert_ne!(row, full);
    // Version 1: the version 2 columns too.
    let row = flow_row(&old_message(&sample_flow(5), ENRICHED_FLOW_V1_AVSC)).unwrap();
    want = FlowRow::try_from(EnrichedFlow {
        dns: None,
        ..sample_flow(5)
    })
    .unwrap();
    assert_eq!(want.locality, "external");
    for c in [
        &mut want.src_pod_uid,
        &mut want.dst_pod_uid,
        &mut want.src_role,
        &mut want.dst_role,
        &mut want.locality,
        &mut want.if_pod,
        &mut want.if_namespace,
        &mut want.end_reason,
        &mut want.drop_reason,
        &mut want.src_comm,
        &mut want.tunnel,
    ] {
        c.clear();
    }
    (want.rtt_ns, want.retransmits, want.drops, want.drop_bytes) = (0, 0, 0, 0);
    (want.src_pid, want.src_cgroup_id) = (0, 0);
    assert_eq!(row, want);
    let mut out = Vec::new();
    write_row(
        &old_message(&sample_flow(5), ENRICHED_FLOW_V1_AVSC),
        &AT,
        &mut out,
    )
    .unwrap();
    let want = placed(want, false);
    assert_eq!(out.len(), want.encoded_len());
    assert_eq!(out, {
        let mut a = Vec::new();
        want.write_row_binary(&mut a);
        a
    });
}

#[test]
fn everything_else_goes_to_the_generic_path() {
    // Out of column range: the fast path declines, the generic one names the field.
    let mut f = sample_flow(1);
    f.src_port = 70_000;
    let buf = encoded(&f);
    assert!(fast(&buf).is_none());
    let e = flow_row(&buf).unwrap_err();
    assert_eq!(e.0, "range");
    assert!(e.1.contains("src_port"), "{e:?}");
    let mut f = sample_flow(1);
    f.bytes = -1;
    assert!(fast(&encoded(&f)).is_none());
    for (field, set) in [
        (
            "reverse_packets",
            (|f| f.reverse_packets = -1) as fn(&mut EnrichedFlow),
        ),
        ("drops", |f| f.drops = 1 << 32),
        ("tunnel_id", |f| f.tunnel_id = 1 << 32),
        ("dns", |f| {
            f.dns = Some(Dns {
                nxdomain: 1 << 32,
                ..Dns::default()
            })
        }),
        ("dns", |f| {
            f.dns = Some(Dns {
                latencies_us: vec![5, -1],
                ..Dns::default()
            })
        }),
        ("dns", |f| {
            f.dns = Some(Dns {
                last_query_type: -1,
                ..Dns::default()
            })
        }),
        ("http", |f| {
            f.http = Some(Http {
                status_5xx: 1 << 32,
                ..Http::default()
            })
        }),
        ("http", |f| {
            f.http = Some(Http {
                latencies_us: vec![5, -1],
                ..Http::default()
            })
        }),
        ("http", |f| {
            f.http = Some(Http {
                last_status: 70_000,
                ..Http::default()
            })
        }),
        ("src_process", |f| {
            f.src_process = Some(flowlens_schemas::Process {
                pid: -7,
                comm: "x".into(),
                cgroup_id: 1,
            })
        }),
    ] {
        let mut f = sample_flow(1);
        set(&mut f);
        let buf = encoded(&f);
        assert!(fast(&buf).is_none(), "{field}");
        let e = flow_row(&buf).unwrap_err();
        assert_eq!(e.0, "range");
        assert!(e.1.contains(field), "{e:?}");
    }
    // Truncated, trailing bytes, garbage, another fingerprint.
    let good = encoded(&sample_flow(9));
    let mut out = vec![1u8, 2];
    assert!(write_row(b"\xC3\x01garbage", &AT, &mut out).is_err());
    assert_eq!(out, [1, 2]);
    for bad in [
        &good[..good.len() - 1],
        &[good.as_slice(), &[0u8]].concat()[..],
        b"\xC3\x01garbage",
        b"",
    ] {
        assert!(fast(bad).is_none());
        assert_eq!(flow_row(bad).unwrap_err().0, "decode");
    }
    let mut other = good.clone();
    other[5] ^= 0xff;
    assert!(fast(&other).is_none());
    assert_eq!(flow_row(&good), generic(&good).map(|r| r.0));
}
