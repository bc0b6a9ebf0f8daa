//! Kafka record → RowBinary row, with a fast path for the current `EnrichedFlow` schema.
//!
//! The generic path (`flowlens_schemas::decode`, then `FlowRow::try_from`) goes through
//! apache-avro's `Value` tree: ~5 µs per record on this machine, 85 % of the sink's CPU before
//! this module existed (bench/results/sink.md). Records written with the *current* schema (by
//! fingerprint) are read here straight from the Avro binary datum into a `RowRef` (strings
//! borrowed from the payload) and written as RowBinary into the batch buffer: no allocation per
//! record. The reading follows a plan derived once from that schema (field order and types;
//! fields without a column are read and dropped), so a new schema version keeps the fast path
//! without code changes here. Anything the fast path does not accept exactly — another schema
//! version, a malformed or truncated datum, trailing bytes, invalid UTF-8, an int out of range,
//! a value that does not fit its column — is handed to the generic path, which decides (and
//! words the error for the dead-letter header). `fast_path_matches_generic_decoder` checks that
//! both paths give the same row and the same bytes.

use std::net::Ipv6Addr;
use std::sync::OnceLock;

use flowlens_schemas::{AvroRecord, EnrichedFlow, HEADER_LEN, MAGIC};

use crate::row::{DirectionColumn, FlowRow, RowRef};

/// Why a record cannot become a row: (metric label, reason for the dead-letter header).
pub type Rejection = (&'static str, String);

/// Decodes one Kafka payload read at (`topic`, `partition`, `offset`) and appends it to `out`
/// as one RowBinary row (`out` is unchanged on error). The fast path allocates nothing.
pub fn write_row(
    payload: &[u8],
    topic: &str,
    partition: i32,
    offset: i64,
    out: &mut Vec<u8>,
) -> Result<(), Rejection> {
    if let Some(mut row) = fast(payload) {
        row.kafka_topic = topic;
        row.kafka_partition = partition as u16;
        row.kafka_offset = offset as u64;
        row.write_row_binary(out);
        return Ok(());
    }
    let mut row = generic(payload)?;
    row.kafka_topic = topic.to_owned();
    row.kafka_partition = partition as u16;
    row.kafka_offset = offset as u64;
    row.write_row_binary(out);
    Ok(())
}

/// Decodes one Kafka payload into a row (kafka_* fields left empty).
pub fn flow_row(payload: &[u8]) -> Result<FlowRow, Rejection> {
    if let Some(row) = fast(payload) {
        return Ok(row.to_row());
    }
    generic(payload)
}

fn generic(payload: &[u8]) -> Result<FlowRow, Rejection> {
    match flowlens_schemas::decode::<EnrichedFlow>(payload) {
        Err(e) => Err(("decode", format!("cannot decode EnrichedFlow: {e}"))),
        Ok(flow) => FlowRow::try_from(flow)
            .map_err(|e| ("range", format!("EnrichedFlow does not fit the table: {e}"))),
    }
}

fn current_fingerprint() -> &'static [u8; 8] {
    static FP: OnceLock<[u8; 8]> = OnceLock::new();
    FP.get_or_init(<EnrichedFlow as AvroRecord>::fingerprint)
}

/// How one field of the writer schema is encoded.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    Null,
    Bool,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    Str,
    /// Enum with its symbols.
    Enum(Vec<String>),
    Fixed(usize),
    Union(Vec<Kind>),
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

/// The decoding plan for the current writer schema, derived from the schema itself (so a new
/// schema version with added fields keeps the fast path), or `None` if the schema has a field
/// the plan cannot handle or a known field with an unexpected type: then every record takes
/// the generic path.
fn plan() -> Option<&'static [(Kind, Target)]> {
    static PLAN: OnceLock<Option<Vec<(Kind, Target)>>> = OnceLock::new();
    PLAN.get_or_init(|| build_plan(<EnrichedFlow as AvroRecord>::schema()))
        .as_deref()
}

fn build_plan(schema: &flowlens_schemas::apache_avro::Schema) -> Option<Vec<(Kind, Target)>> {
    use flowlens_schemas::apache_avro::Schema;
    let Schema::Record(record) = schema else {
        return None;
    };
    let mut named: Vec<(String, Kind)> = Vec::new();
    fn kind(s: &Schema, named: &mut Vec<(String, Kind)>) -> Option<Kind> {
        Some(match s {
            Schema::Null => Kind::Null,
            Schema::Boolean => Kind::Bool,
            Schema::Int => Kind::Int,
            Schema::Long => Kind::Long,
            Schema::Float => Kind::Float,
            Schema::Double => Kind::Double,
            Schema::Bytes => Kind::Bytes,
            Schema::String => Kind::Str,
            Schema::Enum(e) => {
                let k = Kind::Enum(e.symbols.clone());
                named.push((e.name.fullname(None), k.clone()));
                k
            }
            Schema::Fixed(f) => {
                let k = Kind::Fixed(f.size);
                named.push((f.name.fullname(None), k.clone()));
                k
            }
            Schema::Union(u) => Kind::Union(
                u.variants()
                    .iter()
                    .map(|v| kind(v, named))
                    .collect::<Option<Vec<_>>>()?,
            ),
            Schema::Ref { name } => {
                let full = name.fullname(None);
                named.iter().find(|(n, _)| *n == full)?.1.clone()
            }
            _ => return None,
        })
    }
    let opt_str = Kind::Union(vec![Kind::Null, Kind::Str]);
    let mut plan = Vec::new();
    for field in &record.fields {
        let k = kind(&field.schema, &mut named)?;
        let (target, want) = match field.name.as_str() {
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
            name => match (
                K8S_FIELDS.iter().position(|f| *f == name),
                V2_FIELDS.iter().position(|f| *f == name),
            ) {
                (Some(i), _) => (Target::K8s(i), opt_str.clone()),
                (None, Some(i)) => (Target::V2(i), opt_str.clone()),
                (None, None) => (Target::Skip, k.clone()),
            },
        };
        if k != want {
            return None;
        }
        plan.push((k, target));
    }
    // Every column must be fed by the schema.
    let has = |t: Target| plan.iter().any(|(_, x)| *x == t);
    let all = [
        Target::Host,
        Target::Ifindex,
        Target::Direction,
        Target::TimeStart,
        Target::TimeEnd,
        Target::TimeExported,
        Target::Etype,
        Target::VlanId,
        Target::Proto,
        Target::SrcAddr,
        Target::DstAddr,
        Target::SrcPort,
        Target::DstPort,
        Target::IcmpType,
        Target::IcmpCode,
        Target::TcpFlags,
        Target::Packets,
        Target::Bytes,
        Target::SamplingRate,
        Target::IfName,
        Target::IfMac,
        Target::IfKind,
        Target::IfNetns,
    ];
    if !all.into_iter().all(has)
        || !(0..K8S_FIELDS.len()).all(|i| has(Target::K8s(i)))
        || !(0..V2_FIELDS.len()).all(|i| has(Target::V2(i)))
    {
        return None;
    }
    Some(plan)
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn long(&mut self) -> Option<i64> {
        let mut value: u64 = 0;
        for (i, &b) in self.buf.iter().enumerate().take(10) {
            if i == 9 && b > 1 {
                return None; // more than 64 bits
            }
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.buf = &self.buf[i + 1..];
                return Some(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        None
    }

    fn int(&mut self) -> Option<i32> {
        i32::try_from(self.long()?).ok()
    }

    fn bytes(&mut self, len: usize) -> Option<&'a [u8]> {
        if self.buf.len() < len {
            return None;
        }
        let (head, rest) = self.buf.split_at(len);
        self.buf = rest;
        Some(head)
    }

    fn str(&mut self) -> Option<&'a str> {
        let len = usize::try_from(self.long()?).ok()?;
        std::str::from_utf8(self.bytes(len)?).ok()
    }

    /// Reads and drops one value of `kind`.
    fn skip(&mut self, kind: &Kind) -> Option<()> {
        match kind {
            Kind::Null => {}
            Kind::Bool => {
                if *self.bytes(1)?.first()? > 1 {
                    return None;
                }
            }
            Kind::Int => {
                self.int()?;
            }
            Kind::Long => {
                self.long()?;
            }
            Kind::Float => {
                self.bytes(4)?;
            }
            Kind::Double => {
                self.bytes(8)?;
            }
            Kind::Bytes => {
                let len = usize::try_from(self.long()?).ok()?;
                self.bytes(len)?;
            }
            Kind::Str => {
                self.str()?;
            }
            Kind::Enum(symbols) => {
                let i = usize::try_from(self.long()?).ok()?;
                if i >= symbols.len() {
                    return None;
                }
            }
            Kind::Fixed(n) => {
                self.bytes(*n)?;
            }
            Kind::Union(variants) => {
                let i = usize::try_from(self.long()?).ok()?;
                self.skip(variants.get(i)?)?;
            }
        }
        Some(())
    }

    /// `["null", "string"]`: null becomes "" (unknown), as in `FlowRow::try_from`.
    fn opt_str(&mut self) -> Option<&'a str> {
        match self.long()? {
            0 => Some(""),
            1 => self.str(),
            _ => None,
        }
    }
}

fn fast(payload: &[u8]) -> Option<RowRef<'_>> {
    if payload.len() < HEADER_LEN
        || payload[..2] != MAGIC
        || payload[2..HEADER_LEN] != current_fingerprint()[..]
    {
        return None;
    }
    let plan = plan()?;
    let mut r = Reader {
        buf: &payload[HEADER_LEN..],
    };
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
    };
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
            Target::SrcAddr => row.src_addr = <[u8; 16]>::try_from(r.bytes(16)?).ok()?.into(),
            Target::DstAddr => row.dst_addr = <[u8; 16]>::try_from(r.bytes(16)?).ok()?.into(),
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
            Target::Skip => r.skip(kind)?,
        }
    }
    // One message is exactly one datum.
    r.buf.is_empty().then_some(row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::sample_flow;

    fn encoded(f: &EnrichedFlow) -> Vec<u8> {
        let mut buf = Vec::new();
        flowlens_schemas::encode(f, &mut buf).unwrap();
        buf
    }

    #[test]
    fn fast_path_matches_generic_decoder() {
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
        variants.push(f);
        assert!(plan().is_some(), "no fast plan for the current schema");
        for f in &variants {
            let buf = encoded(f);
            let fast = fast(&buf)
                .unwrap_or_else(|| panic!("fast path declined {f:?}: {:?}", generic(&buf)));
            assert_eq!(Ok(fast.to_row()), generic(&buf), "{f:?}");
            // The bytes written are those of the generic row.
            let mut want = generic(&buf).unwrap();
            want.kafka_topic = "topic".into();
            want.kafka_partition = 3;
            want.kafka_offset = 77;
            let mut a = Vec::new();
            want.write_row_binary(&mut a);
            let mut b = vec![9u8];
            write_row(&buf, "topic", 3, 77, &mut b).unwrap();
            assert_eq!(&b[1..], &a[..]);
        }
    }

    /// A message exactly as a version 1 producer wrote it: `f` without the version 2 fields,
    /// written with the v1 schema (apache-avro's generic single-object writer).
    fn v1_message(f: &EnrichedFlow) -> Vec<u8> {
        use flowlens_schemas::apache_avro::{types::Value, GenericSingleObjectWriter, Schema};
        let v1 = Schema::parse_str(flowlens_schemas::ENRICHED_FLOW_V1_AVSC).unwrap();
        let Value::Record(fields) = flowlens_schemas::apache_avro::to_value(f).unwrap() else {
            panic!("not a record");
        };
        let fields = fields
            .into_iter()
            .filter(|(name, _)| !V2_FIELDS.contains(&name.as_str()))
            .collect();
        let value = Value::Record(fields).resolve(&v1).unwrap();
        let mut w = GenericSingleObjectWriter::new_with_capacity(&v1, 256).unwrap();
        let mut out = Vec::new();
        w.write_value(value, &mut out).unwrap();
        out
    }

    #[test]
    fn version_1_records_get_empty_version_2_columns() {
        let f = sample_flow(5);
        let buf = v1_message(&f);
        // Another fingerprint: the generic path reads it (schema resolution, nulls).
        assert!(fast(&buf).is_none());
        let row = flow_row(&buf).unwrap();
        let mut want = FlowRow::try_from(f).unwrap();
        assert_eq!(want.locality, "external");
        for c in [
            &mut want.src_pod_uid,
            &mut want.dst_pod_uid,
            &mut want.src_role,
            &mut want.dst_role,
            &mut want.locality,
            &mut want.if_pod,
            &mut want.if_namespace,
        ] {
            c.clear();
        }
        assert_eq!(row, want);
        let mut out = Vec::new();
        write_row(&buf, "t", 1, 2, &mut out).unwrap();
        want.kafka_topic = "t".into();
        want.kafka_partition = 1;
        want.kafka_offset = 2;
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
        // Truncated, trailing bytes, garbage, another fingerprint.
        let good = encoded(&sample_flow(9));
        let mut out = vec![1u8, 2];
        assert!(write_row(b"\xC3\x01garbage", "t", 0, 0, &mut out).is_err());
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
        assert_eq!(flow_row(&good), generic(&good));
    }
}
