//! The plan for reading each known EnrichedFlow writer version straight into a row: which
//! column every field feeds and the kind it must have, decided once per writer schema
//! (`flowlens_schemas::reader::WriterPlans`, the contract's guard rule for hand-written readers).

use std::sync::OnceLock;

use flowlens_schemas::binary::{kind, zero_default, Kind};
use flowlens_schemas::reader::WriterPlans;
use flowlens_schemas::RecordKind;

/// Where a field goes in the `FlowRow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
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
    /// `["null", Dns]`: the dns_* columns (migration 0007).
    Dns,
    /// `["null", Http]`: the http_* columns (migration 0007).
    Http,
    /// A field the table has no column for: read and dropped.
    Skip,
}

pub(super) const K8S_FIELDS: [&str; 12] = [
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
pub(super) const V2_FIELDS: [&str; 7] = [
    "src_pod_uid",
    "dst_pod_uid",
    "src_role",
    "dst_role",
    "locality",
    "if_pod",
    "if_namespace",
];

/// One field of a writer's datum: its kind and the column it feeds.
pub(super) type Step = (Kind, Target);

type Plan = Vec<Step>;

/// The decoding plan for `payload`'s writer (any known EnrichedFlow version) and its datum, or
/// `None`: not a single-object message, an unknown fingerprint, or a schema the plans cannot
/// handle (then those records take the generic path).
pub(super) fn plan(payload: &[u8]) -> Option<(&'static [Step], &[u8])> {
    static PLANS: OnceLock<WriterPlans<Plan>> = OnceLock::new();
    PLANS
        .get_or_init(|| WriterPlans::new(RecordKind::EnrichedFlow, build_plan))
        .datum(payload)
        .map(|(plan, datum)| (plan.as_slice(), datum))
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
        "dns" => {
            let mut fields = vec![Kind::Long; 10];
            fields.extend([
                Kind::Array(Box::new(Kind::Long)),
                Kind::Union(vec![Kind::Null, Kind::Str]),
                Kind::Int,
            ]);
            return (Target::Dns, opt(Kind::Record(fields)));
        }
        "http" => {
            let mut fields = vec![Kind::Long; 10];
            fields.extend([
                Kind::Array(Box::new(Kind::Long)),
                Kind::Union(vec![Kind::Null, Kind::Str]),
                Kind::Union(vec![Kind::Null, Kind::Str]),
                Kind::Int,
            ]);
            return (Target::Http, opt(Kind::Record(fields)));
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
