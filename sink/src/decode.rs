//! Kafka record → RowBinary row, with a fast path for every known `EnrichedFlow` schema version.
//!
//! The generic path (`flowlens_schemas::decode`, then `FlowRow::try_from`) goes through
//! apache-avro's `Value` tree: ~5 µs per record, most of a sink's CPU on that path
//! (bench/results/sink.md). Records written with the current schema or an
//! earlier version the schemas crate keeps (by fingerprint: v1, v2, v3) are read here straight
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

use std::net::Ipv6Addr;
use std::sync::OnceLock;

use flowlens_schemas::binary::{kind, zero_default, Kind, Reader};
use flowlens_schemas::{AvroRecord, EnrichedFlow, RecordKind, HEADER_LEN, MAGIC};

use crate::row::{DirectionColumn, FlowRow, RowRef};

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

/// Where a field goes in the `FlowRow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Host,
    Ifindex,
    Direction,
    TimeStart,
    TimeEnd,
    TimeExported,
    Etype,
    VlanId,
    Proto,
    SrcAddr,
    DstAddr,
    SrcPort,
    DstPort,
    IcmpType,
    IcmpCode,
    TcpFlags,
    Packets,
    Bytes,
    SamplingRate,
    IfName,
    IfMac,
    IfKind,
    IfNetns,
    /// Index into `K8S_FIELDS`.
    K8s(usize),
    /// Index into `V2_FIELDS`.
    V2(usize),
    ReversePackets,
    ReverseBytes,
    ReverseTcpFlags,
    EndReason,
    RttNs,
    Retransmits,
    Drops,
    DropBytes,
    DropReason,
    /// `["null", Process]`: 0 src_process, 1 dst_process.
    Process(usize),
    Tunnel,
    TunnelId,
    /// `["null", IPv6Address]`: 0 outer_src_addr, 1 outer_dst_addr.
    OuterAddr(usize),
    Duplicate,
    /// `["null", Origin]`: origin_topic, origin_stream, origin_partition, origin_offset.
    Origin,
    /// A field the table has no column for: read and dropped.
    Skip,
}

const K8S_FIELDS: [&str; 12] = [
    "src_pod",
    "src_namespace",
    "src_workload",
    "src_workload_kind",
    "src_node",
    "src_service",
    "dst_pod",
    "dst_namespace",
    "dst_workload",
    "dst_workload_kind",
    "dst_node",
    "dst_service",
];

/// The nullable strings EnrichedFlow version 2 added, in `RowRef::v2` order (migration 0003).
const V2_FIELDS: [&str; 7] = [
    "src_pod_uid",
    "dst_pod_uid",
    "src_role",
    "dst_role",
    "locality",
    "if_pod",
    "if_namespace",
];

type Plan = Vec<(Kind, Target)>;

/// The decoding plan for the writer schema with this fingerprint (any known EnrichedFlow
/// version), or `None`: an unknown fingerprint, or a schema the plans cannot handle (then
/// those records take the generic path).
fn plan(fingerprint: &[u8]) -> Option<&'static [(Kind, Target)]> {
    static PLANS: OnceLock<Vec<([u8; 8], Option<Plan>)>> = OnceLock::new();
    PLANS
        .get_or_init(|| {
            let current = <EnrichedFlow as AvroRecord>::schema();
            RecordKind::known_writers()
                .filter(|w| w.0 == RecordKind::EnrichedFlow)
                .map(|(_, _, fp, writer)| (fp, build_plan(writer, current)))
                .collect()
        })
        .iter()
        .find(|(fp, _)| fp[..] == *fingerprint)
        .and_then(|(_, plan)| plan.as_deref())
}

/// The column a field feeds and the kind it must have.
fn target(name: &str) -> (Target, Option<Kind>) {
    let opt = |k: Kind| Some(Kind::Union(vec![Kind::Null, k]));
    let (target, kind) = match name {
        "host" => (Target::Host, Kind::Str),
        "ifindex" => (Target::Ifindex, Kind::Int),
        "direction" => (
            Target::Direction,
            Kind::Enum(vec!["INGRESS".into(), "EGRESS".into()]),
        ),
        "time_flow_start_ns" => (Target::TimeStart, Kind::Long),
        "time_flow_end_ns" => (Target::TimeEnd, Kind::Long),
        "time_exported_ns" => (Target::TimeExported, Kind::Long),
        "etype" => (Target::Etype, Kind::Int),
        "vlan_id" => (Target::VlanId, Kind::Int),
        "proto" => (Target::Proto, Kind::Int),
        "src_addr" => (Target::SrcAddr, Kind::Fixed(16)),
        "dst_addr" => (Target::DstAddr, Kind::Fixed(16)),
        "src_port" => (Target::SrcPort, Kind::Int),
        "dst_port" => (Target::DstPort, Kind::Int),
        "icmp_type" => (Target::IcmpType, Kind::Int),
        "icmp_code" => (Target::IcmpCode, Kind::Int),
        "tcp_flags" => (Target::TcpFlags, Kind::Int),
        "packets" => (Target::Packets, Kind::Long),
        "bytes" => (Target::Bytes, Kind::Long),
        "sampling_rate" => (Target::SamplingRate, Kind::Int),
        "if_name" => (Target::IfName, Kind::Str),
        "if_mac" => (Target::IfMac, Kind::Str),
        "if_kind" => (Target::IfKind, Kind::Str),
        "if_netns" => (Target::IfNetns, Kind::Str),
        "reverse_packets" => (Target::ReversePackets, Kind::Long),
        "reverse_bytes" => (Target::ReverseBytes, Kind::Long),
        "reverse_tcp_flags" => (Target::ReverseTcpFlags, Kind::Int),
        "end_reason" => (Target::EndReason, Kind::Str),
        "rtt_ns" => (Target::RttNs, Kind::Long),
        "retransmits" => (Target::Retransmits, Kind::Long),
        "drops" => (Target::Drops, Kind::Long),
        "drop_bytes" => (Target::DropBytes, Kind::Long),
        "drop_reason" => (Target::DropReason, Kind::Str),
        "src_process" | "dst_process" => {
            let process = Kind::Record(vec![Kind::Int, Kind::Str, Kind::Long]);
            let i = usize::from(name == "dst_process");
            return (Target::Process(i), opt(process));
        }
        "tunnel" => (Target::Tunnel, Kind::Str),
        "tunnel_id" => (Target::TunnelId, Kind::Long),
        "outer_src_addr" | "outer_dst_addr" => {
            let i = usize::from(name == "outer_dst_addr");
            return (Target::OuterAddr(i), opt(Kind::Fixed(16)));
        }
        "duplicate" => (Target::Duplicate, Kind::Bool),
        "origin" => {
            let origin = Kind::Record(vec![Kind::Str, Kind::Fixed(16), Kind::Int, Kind::Long]);
            return (Target::Origin, opt(origin));
        }
        name => {
            return match (
                K8S_FIELDS.iter().position(|f| *f == name),
                V2_FIELDS.iter().position(|f| *f == name),
            ) {
                (Some(i), _) => (Target::K8s(i), opt(Kind::Str)),
                (None, Some(i)) => (Target::V2(i), opt(Kind::Str)),
                (None, None) => (Target::Skip, None),
            };
        }
    };
    (target, Some(kind))
}

/// The plan for reading `writer`'s datums, or `None` if it has a field the plan cannot handle
/// or a known field with an unexpected type. Every column of the current schema (`current`)
/// must be fed by the writer, or else take its zero value ("", 0, false, null) — which must
/// be that field's default in the current schema (what schema resolution would give).
fn build_plan(
    writer: &flowlens_schemas::apache_avro::Schema,
    current: &flowlens_schemas::apache_avro::Schema,
) -> Option<Plan> {
    use flowlens_schemas::apache_avro::Schema;
    let (Schema::Record(record), Schema::Record(current)) = (writer, current) else {
        return None;
    };
    let mut named: Vec<(String, Kind)> = Vec::new();
    let mut plan = Vec::new();
    for field in &record.fields {
        let k = kind(&field.schema, &mut named)?;
        let (target, want) = target(&field.name);
        if want.is_some_and(|want| want != k) {
            return None;
        }
        plan.push((k, target));
    }
    for field in &current.fields {
        let (target, _) = target(&field.name);
        let fed = target == Target::Skip || plan.iter().any(|(_, t)| *t == target);
        if !fed && !zero_default(field) {
            return None;
        }
    }
    Some(plan)
}

/// The row and whether the record carries an origin.
fn fast(payload: &[u8]) -> Option<(RowRef<'_>, bool)> {
    if payload.len() < HEADER_LEN || payload[..2] != MAGIC {
        return None;
    }
    let plan = plan(&payload[2..HEADER_LEN])?;
    let mut r = Reader::new(&payload[HEADER_LEN..]);
    let mut row = RowRef {
        time_flow_start: 0,
        time_flow_end: 0,
        time_exported: 0,
        host: "",
        ifindex: 0,
        if_name: "",
        if_mac: "",
        if_kind: "",
        if_netns: "",
        direction: DirectionColumn::Ingress,
        etype: 0,
        vlan_id: 0,
        proto: 0,
        src_addr: Ipv6Addr::UNSPECIFIED,
        dst_addr: Ipv6Addr::UNSPECIFIED,
        src_port: 0,
        dst_port: 0,
        icmp_type: 0,
        icmp_code: 0,
        tcp_flags: 0,
        packets: 0,
        bytes: 0,
        sampling_rate: 0,
        k8s: [""; 12],
        kafka_topic: "",
        kafka_partition: 0,
        kafka_offset: 0,
        v2: [""; 7],
        reverse_packets: 0,
        reverse_bytes: 0,
        reverse_tcp_flags: 0,
        end_reason: "",
        rtt_ns: 0,
        retransmits: 0,
        drops: 0,
        drop_bytes: 0,
        drop_reason: "",
        processes: [(0, "", 0); 2],
        tunnel: "",
        tunnel_id: 0,
        outer_src_addr: Ipv6Addr::UNSPECIFIED,
        outer_dst_addr: Ipv6Addr::UNSPECIFIED,
        duplicate: false,
        kafka_stream: [0; 16],
        kafka_timestamp: 0,
        origin_topic: "",
        origin_stream: [0; 16],
        origin_partition: 0,
        origin_offset: 0,
    };
    let mut has_origin = false;
    for (kind, target) in plan {
        match target {
            Target::Host => row.host = r.str()?,
            Target::Ifindex => row.ifindex = u32::try_from(r.int()?).ok()?,
            Target::Direction => {
                row.direction = match r.long()? {
                    0 => DirectionColumn::Ingress,
                    1 => DirectionColumn::Egress,
                    _ => return None,
                }
            }
            Target::TimeStart => row.time_flow_start = r.long()?,
            Target::TimeEnd => row.time_flow_end = r.long()?,
            Target::TimeExported => row.time_exported = r.long()?,
            Target::Etype => row.etype = u16::try_from(r.int()?).ok()?,
            Target::VlanId => row.vlan_id = u16::try_from(r.int()?).ok()?,
            Target::Proto => row.proto = u8::try_from(r.int()?).ok()?,
            Target::SrcAddr => row.src_addr = r.addr()?,
            Target::DstAddr => row.dst_addr = r.addr()?,
            Target::SrcPort => row.src_port = u16::try_from(r.int()?).ok()?,
            Target::DstPort => row.dst_port = u16::try_from(r.int()?).ok()?,
            Target::IcmpType => row.icmp_type = u8::try_from(r.int()?).ok()?,
            Target::IcmpCode => row.icmp_code = u8::try_from(r.int()?).ok()?,
            Target::TcpFlags => row.tcp_flags = u16::try_from(r.int()?).ok()?,
            Target::Packets => row.packets = u64::try_from(r.long()?).ok()?,
            Target::Bytes => row.bytes = u64::try_from(r.long()?).ok()?,
            Target::SamplingRate => row.sampling_rate = u32::try_from(r.int()?).ok()?,
            Target::IfName => row.if_name = r.str()?,
            Target::IfMac => row.if_mac = r.str()?,
            Target::IfKind => row.if_kind = r.str()?,
            Target::IfNetns => row.if_netns = r.str()?,
            Target::K8s(i) => row.k8s[*i] = r.opt_str()?,
            Target::V2(i) => row.v2[*i] = r.opt_str()?,
            Target::ReversePackets => row.reverse_packets = u64::try_from(r.long()?).ok()?,
            Target::ReverseBytes => row.reverse_bytes = u64::try_from(r.long()?).ok()?,
            Target::ReverseTcpFlags => row.reverse_tcp_flags = u16::try_from(r.int()?).ok()?,
            Target::EndReason => row.end_reason = r.str()?,
            Target::RttNs => row.rtt_ns = u64::try_from(r.long()?).ok()?,
            Target::Retransmits => row.retransmits = u32::try_from(r.long()?).ok()?,
            Target::Drops => row.drops = u32::try_from(r.long()?).ok()?,
            Target::DropBytes => row.drop_bytes = u64::try_from(r.long()?).ok()?,
            Target::DropReason => row.drop_reason = r.str()?,
            Target::Process(i) => {
                if r.present()? {
                    row.processes[*i] = (
                        u32::try_from(r.int()?).ok()?,
                        r.str()?,
                        u64::try_from(r.long()?).ok()?,
                    );
                }
            }
            Target::Tunnel => row.tunnel = r.str()?,
            Target::TunnelId => row.tunnel_id = u32::try_from(r.long()?).ok()?,
            Target::OuterAddr(0) => {
                if r.present()? {
                    row.outer_src_addr = r.addr()?;
                }
            }
            Target::OuterAddr(_) => {
                if r.present()? {
                    row.outer_dst_addr = r.addr()?;
                }
            }
            Target::Duplicate => row.duplicate = r.bool()?,
            Target::Origin => {
                has_origin = r.present()?;
                if has_origin {
                    row.origin_topic = r.str()?;
                    row.origin_stream = r.bytes(16)?.try_into().ok()?;
                    row.origin_partition = r.int()?;
                    row.origin_offset = r.long()?;
                }
            }
            Target::Skip => r.skip(kind)?,
        }
    }
    // One message is exactly one datum.
    r.rest().is_empty().then_some((row, has_origin))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::sample_flow;
    use flowlens_schemas::{ENRICHED_FLOW_V1_AVSC, ENRICHED_FLOW_V2_AVSC, ENRICHED_FLOW_V3_AVSC};

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
    /// with reverse traffic, duplicates, both processes, no process, IPv6 outer addresses.
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
            check_fast_matches_generic(&encoded(f), &format!("v4 {f:?}"));
            for (v, avsc) in [
                (1, ENRICHED_FLOW_V1_AVSC),
                (2, ENRICHED_FLOW_V2_AVSC),
                (3, ENRICHED_FLOW_V3_AVSC),
            ] {
                check_fast_matches_generic(&old_message(f, avsc), &format!("v{v} {f:?}"));
            }
        }
    }

    /// The current schema's plan reads every field into a column (none skipped, none missing).
    #[test]
    fn current_plan_feeds_every_column() {
        let current = plan(&<EnrichedFlow as AvroRecord>::fingerprint()).expect("a plan for v4");
        assert_eq!(current.len(), 59);
        assert!(current.iter().all(|(_, t)| *t != Target::Skip));
        for (i, (_, a)) in current.iter().enumerate() {
            assert!(current[..i].iter().all(|(_, b)| b != a), "{a:?} twice");
        }
        for (v, avsc) in [
            (1, ENRICHED_FLOW_V1_AVSC),
            (2, ENRICHED_FLOW_V2_AVSC),
            (3, ENRICHED_FLOW_V3_AVSC),
        ] {
            let fp = flowlens_schemas::apache_avro::Schema::parse_str(avsc)
                .unwrap()
                .fingerprint::<flowlens_schemas::apache_avro::rabin::Rabin>()
                .bytes;
            assert!(plan(&fp).is_some(), "no fast plan for v{v}");
        }
    }

    #[test]
    fn older_records_get_empty_newer_columns() {
        let f = variants().pop().unwrap();
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
        want = FlowRow::try_from(sample_flow(5)).unwrap();
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
}
