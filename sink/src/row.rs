//! `FlowRow`: one `flows` table row in column order, built from an `EnrichedFlow` with range checks.
//!
//! RowBinary mapping: DateTime64(9) is `i64` nanoseconds, IPv6 is `Ipv6Addr` (16 bytes, network
//! order), `Enum8('ingress'=0,'egress'=1)` is an `i8` (serde_repr), Bool is one byte 0/1, unknown
//! Kubernetes metadata is "". A null process is pid 0, comm "", cgroup 0; a null outer address
//! is `::`.

use std::net::Ipv6Addr;

use clickhouse::Row;
use flowlens_schemas::{Direction, EnrichedFlow, Process};
use serde::Serialize;
use serde_repr::Serialize_repr;

/// `direction Enum8('ingress' = 0, 'egress' = 1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize_repr)]
#[repr(i8)]
pub enum DirectionColumn {
    Ingress = 0,
    Egress = 1,
}

impl From<Direction> for DirectionColumn {
    fn from(d: Direction) -> Self {
        match d {
            Direction::Ingress => DirectionColumn::Ingress,
            Direction::Egress => DirectionColumn::Egress,
        }
    }
}

/// A row of the `flows` table (sql/migrations/0001_flows.sql and later), fields in the order the
/// sink names the columns in its INSERT: the table's order up to `dst_service`, then the
/// columns of 0002 (kafka_*), 0003 and 0004 in `COLUMN_TYPES` order (0002's retransmits/drops
/// among 0004's). `time_inserted` is left to its `DEFAULT now64(3)`.
#[derive(Debug, Clone, PartialEq, Eq, Row, Serialize)]
pub struct FlowRow {
    pub time_flow_start: i64,
    pub time_flow_end: i64,
    pub time_exported: i64,
    pub host: String,
    pub ifindex: u32,
    pub if_name: String,
    pub if_mac: String,
    pub if_kind: String,
    pub if_netns: String,
    pub direction: DirectionColumn,
    pub etype: u16,
    pub vlan_id: u16,
    pub proto: u8,
    pub src_addr: Ipv6Addr,
    pub dst_addr: Ipv6Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub tcp_flags: u16,
    pub packets: u64,
    pub bytes: u64,
    pub sampling_rate: u32,
    pub src_pod: String,
    pub src_namespace: String,
    pub src_workload: String,
    pub src_workload_kind: String,
    pub src_node: String,
    pub src_service: String,
    pub dst_pod: String,
    pub dst_namespace: String,
    pub dst_workload: String,
    pub dst_workload_kind: String,
    pub dst_node: String,
    pub dst_service: String,
    /// Provenance (migration 0002): where the sink read the record. Set by the sink after the
    /// conversion (`FlowRow::try_from` leaves them empty); the sink reads `max(kafka_offset)`
    /// back after a restart to cut its first batch where the last stored one ended.
    pub kafka_topic: String,
    pub kafka_partition: u16,
    pub kafka_offset: u64,
    /// EnrichedFlow version 2 (migration 0003), "" when unknown or read from a version 1 record.
    pub src_pod_uid: String,
    pub dst_pod_uid: String,
    pub src_role: String,
    pub dst_role: String,
    pub locality: String,
    pub if_pod: String,
    pub if_namespace: String,
    /// EnrichedFlow version 3 (migration 0004; retransmits and drops are 0002's columns).
    pub reverse_packets: u64,
    pub reverse_bytes: u64,
    pub reverse_tcp_flags: u16,
    pub end_reason: String,
    pub rtt_ns: u64,
    pub retransmits: u32,
    pub drops: u32,
    pub drop_bytes: u64,
    pub drop_reason: String,
    pub src_pid: u32,
    pub src_comm: String,
    pub src_cgroup_id: u64,
    pub dst_pid: u32,
    pub dst_comm: String,
    pub dst_cgroup_id: u64,
    pub tunnel: String,
    pub tunnel_id: u32,
    /// `::` when there is no outer packet (`tunnel` = "").
    pub outer_src_addr: Ipv6Addr,
    pub outer_dst_addr: Ipv6Addr,
    pub duplicate: bool,
    /// Record identity (migration 0005): the incarnation of the Kafka topic the row was read
    /// from and the record's broker timestamp (set by the sink, like kafka_*), then its origin
    /// (EnrichedFlow v4 `origin`; for a record without one the sink writes its own position).
    pub kafka_stream: [u8; 16],
    pub kafka_timestamp: i64,
    pub origin_topic: String,
    pub origin_stream: [u8; 16],
    pub origin_partition: i32,
    pub origin_offset: i64,
}

/// A decoded record whose values do not fit the table's column types.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("field `{field}`: {value} does not fit {column_type}")]
pub struct RowError {
    pub field: &'static str,
    pub value: i64,
    pub column_type: &'static str,
}

fn fit<T: TryFrom<i64>>(
    field: &'static str,
    value: i64,
    column_type: &'static str,
) -> Result<T, RowError> {
    T::try_from(value).map_err(|_| RowError {
        field,
        value,
        column_type,
    })
}

/// Fixed RowBinary size of a row: everything except the strings' bytes and length prefixes.
const FIXED_LEN: usize = 3 * 8 + 4 + 1 + 2 + 2 + 1 + 16 + 16 + 2 + 2 + 1 + 1 + 2 + 8 + 8 + 4 + 2 + 8
    // version 3: reverse packets/bytes/flags, rtt, retransmits, drops, drop_bytes, the two
    // processes' pid and cgroup, tunnel_id, outer addresses, duplicate
    + 8 + 8 + 2 + 8 + 4 + 4 + 8 + 2 * (4 + 8) + 4 + 16 + 16 + 1
    // version 4 / migration 0005: kafka_stream, kafka_timestamp, origin stream, partition, offset
    + 16 + 8 + 16 + 4 + 8;

impl TryFrom<EnrichedFlow> for FlowRow {
    type Error = RowError;

    fn try_from(f: EnrichedFlow) -> Result<Self, RowError> {
        let process = |p: Option<Process>, pid: &'static str| -> Result<_, RowError> {
            let p = p.unwrap_or_default();
            Ok((
                fit(pid, p.pid.into(), "UInt32")?,
                p.comm,
                fit(pid, p.cgroup_id, "UInt64")?,
            ))
        };
        let (src_pid, src_comm, src_cgroup_id) = process(f.src_process, "src_process")?;
        let (dst_pid, dst_comm, dst_cgroup_id) = process(f.dst_process, "dst_process")?;
        Ok(FlowRow {
            time_flow_start: f.time_flow_start_ns,
            time_flow_end: f.time_flow_end_ns,
            time_exported: f.time_exported_ns,
            ifindex: fit("ifindex", f.ifindex.into(), "UInt32")?,
            host: f.host,
            if_name: f.if_name,
            if_mac: f.if_mac,
            if_kind: f.if_kind,
            if_netns: f.if_netns,
            direction: f.direction.into(),
            etype: fit("etype", f.etype.into(), "UInt16")?,
            vlan_id: fit("vlan_id", f.vlan_id.into(), "UInt16")?,
            proto: fit("proto", f.proto.into(), "UInt8")?,
            src_addr: f.src_addr,
            dst_addr: f.dst_addr,
            src_port: fit("src_port", f.src_port.into(), "UInt16")?,
            dst_port: fit("dst_port", f.dst_port.into(), "UInt16")?,
            icmp_type: fit("icmp_type", f.icmp_type.into(), "UInt8")?,
            icmp_code: fit("icmp_code", f.icmp_code.into(), "UInt8")?,
            tcp_flags: fit("tcp_flags", f.tcp_flags.into(), "UInt16")?,
            packets: fit("packets", f.packets, "UInt64")?,
            bytes: fit("bytes", f.bytes, "UInt64")?,
            sampling_rate: fit("sampling_rate", f.sampling_rate.into(), "UInt32")?,
            src_pod: f.src_pod.unwrap_or_default(),
            src_namespace: f.src_namespace.unwrap_or_default(),
            src_workload: f.src_workload.unwrap_or_default(),
            src_workload_kind: f.src_workload_kind.unwrap_or_default(),
            src_node: f.src_node.unwrap_or_default(),
            src_service: f.src_service.unwrap_or_default(),
            dst_pod: f.dst_pod.unwrap_or_default(),
            dst_namespace: f.dst_namespace.unwrap_or_default(),
            dst_workload: f.dst_workload.unwrap_or_default(),
            dst_workload_kind: f.dst_workload_kind.unwrap_or_default(),
            dst_node: f.dst_node.unwrap_or_default(),
            dst_service: f.dst_service.unwrap_or_default(),
            kafka_topic: String::new(),
            kafka_partition: 0,
            kafka_offset: 0,
            src_pod_uid: f.src_pod_uid.unwrap_or_default(),
            dst_pod_uid: f.dst_pod_uid.unwrap_or_default(),
            src_role: f.src_role.unwrap_or_default(),
            dst_role: f.dst_role.unwrap_or_default(),
            locality: f.locality.unwrap_or_default(),
            if_pod: f.if_pod.unwrap_or_default(),
            if_namespace: f.if_namespace.unwrap_or_default(),
            reverse_packets: fit("reverse_packets", f.reverse_packets, "UInt64")?,
            reverse_bytes: fit("reverse_bytes", f.reverse_bytes, "UInt64")?,
            reverse_tcp_flags: fit("reverse_tcp_flags", f.reverse_tcp_flags.into(), "UInt16")?,
            end_reason: f.end_reason,
            rtt_ns: fit("rtt_ns", f.rtt_ns, "UInt64")?,
            retransmits: fit("retransmits", f.retransmits, "UInt32")?,
            drops: fit("drops", f.drops, "UInt32")?,
            drop_bytes: fit("drop_bytes", f.drop_bytes, "UInt64")?,
            drop_reason: f.drop_reason,
            src_pid,
            src_comm,
            src_cgroup_id,
            dst_pid,
            dst_comm,
            dst_cgroup_id,
            tunnel: f.tunnel,
            tunnel_id: fit("tunnel_id", f.tunnel_id, "UInt32")?,
            outer_src_addr: f.outer_src_addr.unwrap_or(Ipv6Addr::UNSPECIFIED),
            outer_dst_addr: f.outer_dst_addr.unwrap_or(Ipv6Addr::UNSPECIFIED),
            duplicate: f.duplicate,
            kafka_stream: [0; 16],
            kafka_timestamp: 0,
            origin_topic: f
                .origin
                .as_ref()
                .map(|o| o.topic.clone())
                .unwrap_or_default(),
            origin_stream: f.origin.as_ref().map_or([0; 16], |o| o.stream),
            origin_partition: f.origin.as_ref().map_or(0, |o| o.partition),
            origin_offset: f.origin.as_ref().map_or(0, |o| o.offset),
        })
    }
}

impl FlowRow {
    /// Exact RowBinary size of this row (what the batch byte limit counts).
    pub fn encoded_len(&self) -> usize {
        let strings = [
            &self.host,
            &self.if_name,
            &self.if_mac,
            &self.if_kind,
            &self.if_netns,
            &self.src_pod,
            &self.src_namespace,
            &self.src_workload,
            &self.src_workload_kind,
            &self.src_node,
            &self.src_service,
            &self.dst_pod,
            &self.dst_namespace,
            &self.dst_workload,
            &self.dst_workload_kind,
            &self.dst_node,
            &self.dst_service,
            &self.kafka_topic,
            &self.src_pod_uid,
            &self.dst_pod_uid,
            &self.src_role,
            &self.dst_role,
            &self.locality,
            &self.if_pod,
            &self.if_namespace,
            &self.end_reason,
            &self.drop_reason,
            &self.src_comm,
            &self.dst_comm,
            &self.tunnel,
            &self.origin_topic,
        ];
        FIXED_LEN
            + strings
                .iter()
                .map(|s| varint_len(s.len()) + s.len())
                .sum::<usize>()
    }
}

/// Table column types `FlowRow` writes, in column order: (name, accepted types). Strings go to
/// `String` or `LowCardinality(String)` alike (same RowBinary encoding).
pub const COLUMN_TYPES: [(&str, &[&str]); 71] = {
    const S: &[&str] = &["String", "LowCardinality(String)"];
    const NS: &[&str] = &["DateTime64(9)", "DateTime64(9, 'UTC')"];
    [
        ("time_flow_start", NS),
        ("time_flow_end", NS),
        ("time_exported", NS),
        ("host", S),
        ("ifindex", &["UInt32"]),
        ("if_name", S),
        ("if_mac", S),
        ("if_kind", S),
        ("if_netns", S),
        ("direction", &["Enum8('ingress' = 0, 'egress' = 1)"]),
        ("etype", &["UInt16"]),
        ("vlan_id", &["UInt16"]),
        ("proto", &["UInt8"]),
        ("src_addr", &["IPv6"]),
        ("dst_addr", &["IPv6"]),
        ("src_port", &["UInt16"]),
        ("dst_port", &["UInt16"]),
        ("icmp_type", &["UInt8"]),
        ("icmp_code", &["UInt8"]),
        ("tcp_flags", &["UInt16"]),
        ("packets", &["UInt64"]),
        ("bytes", &["UInt64"]),
        ("sampling_rate", &["UInt32"]),
        ("src_pod", S),
        ("src_namespace", S),
        ("src_workload", S),
        ("src_workload_kind", S),
        ("src_node", S),
        ("src_service", S),
        ("dst_pod", S),
        ("dst_namespace", S),
        ("dst_workload", S),
        ("dst_workload_kind", S),
        ("dst_node", S),
        ("dst_service", S),
        ("kafka_topic", S),
        ("kafka_partition", &["UInt16"]),
        ("kafka_offset", &["UInt64"]),
        ("src_pod_uid", S),
        ("dst_pod_uid", S),
        ("src_role", S),
        ("dst_role", S),
        ("locality", S),
        ("if_pod", S),
        ("if_namespace", S),
        ("reverse_packets", &["UInt64"]),
        ("reverse_bytes", &["UInt64"]),
        ("reverse_tcp_flags", &["UInt16"]),
        ("end_reason", S),
        ("rtt_ns", &["UInt64"]),
        ("retransmits", &["UInt32"]),
        ("drops", &["UInt32"]),
        ("drop_bytes", &["UInt64"]),
        ("drop_reason", S),
        ("src_pid", &["UInt32"]),
        ("src_comm", S),
        ("src_cgroup_id", &["UInt64"]),
        ("dst_pid", &["UInt32"]),
        ("dst_comm", S),
        ("dst_cgroup_id", &["UInt64"]),
        ("tunnel", S),
        ("tunnel_id", &["UInt32"]),
        ("outer_src_addr", &["IPv6"]),
        ("outer_dst_addr", &["IPv6"]),
        ("duplicate", &["Bool", "UInt8"]),
        ("kafka_stream", &["FixedString(16)"]),
        (
            "kafka_timestamp",
            &["DateTime64(3)", "DateTime64(3, 'UTC')", "Int64"],
        ),
        ("origin_topic", S),
        ("origin_stream", &["FixedString(16)"]),
        ("origin_partition", &["Int32"]),
        ("origin_offset", &["Int64"]),
    ]
};

/// A row whose strings are borrowed (from a decoded Kafka payload or a `FlowRow`): what the
/// sink writes as RowBinary without allocating per row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowRef<'a> {
    pub time_flow_start: i64,
    pub time_flow_end: i64,
    pub time_exported: i64,
    pub host: &'a str,
    pub ifindex: u32,
    pub if_name: &'a str,
    pub if_mac: &'a str,
    pub if_kind: &'a str,
    pub if_netns: &'a str,
    pub direction: DirectionColumn,
    pub etype: u16,
    pub vlan_id: u16,
    pub proto: u8,
    pub src_addr: Ipv6Addr,
    pub dst_addr: Ipv6Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub tcp_flags: u16,
    pub packets: u64,
    pub bytes: u64,
    pub sampling_rate: u32,
    /// src_ pod, namespace, workload, workload_kind, node, service, then the same for dst_.
    pub k8s: [&'a str; 12],
    pub kafka_topic: &'a str,
    pub kafka_partition: u16,
    pub kafka_offset: u64,
    /// src_pod_uid, dst_pod_uid, src_role, dst_role, locality, if_pod, if_namespace
    /// (EnrichedFlow version 2, migration 0003).
    pub v2: [&'a str; 7],
    /// EnrichedFlow version 3 (migration 0004), as in `FlowRow`.
    pub reverse_packets: u64,
    pub reverse_bytes: u64,
    pub reverse_tcp_flags: u16,
    pub end_reason: &'a str,
    pub rtt_ns: u64,
    pub retransmits: u32,
    pub drops: u32,
    pub drop_bytes: u64,
    pub drop_reason: &'a str,
    /// src_process then dst_process: (pid, comm, cgroup_id), zeros and "" for null.
    pub processes: [(u32, &'a str, u64); 2],
    pub tunnel: &'a str,
    pub tunnel_id: u32,
    pub outer_src_addr: Ipv6Addr,
    pub outer_dst_addr: Ipv6Addr,
    pub duplicate: bool,
    /// Migration 0005, as in `FlowRow`.
    pub kafka_stream: [u8; 16],
    pub kafka_timestamp: i64,
    pub origin_topic: &'a str,
    pub origin_stream: [u8; 16],
    pub origin_partition: i32,
    pub origin_offset: i64,
}

impl RowRef<'_> {
    /// Appends the row in RowBinary (the column order of `COLUMN_TYPES`): exactly the bytes the
    /// `clickhouse` crate's serde serializer writes for the same `FlowRow`.
    pub fn write_row_binary(&self, out: &mut Vec<u8>) {
        fn string(out: &mut Vec<u8>, s: &str) {
            let mut n = s.len();
            while n >= 0x80 {
                out.push((n as u8) | 0x80);
                n >>= 7;
            }
            out.push(n as u8);
            out.extend_from_slice(s.as_bytes());
        }
        out.extend_from_slice(&self.time_flow_start.to_le_bytes());
        out.extend_from_slice(&self.time_flow_end.to_le_bytes());
        out.extend_from_slice(&self.time_exported.to_le_bytes());
        string(out, self.host);
        out.extend_from_slice(&self.ifindex.to_le_bytes());
        string(out, self.if_name);
        string(out, self.if_mac);
        string(out, self.if_kind);
        string(out, self.if_netns);
        out.push(self.direction as i8 as u8);
        out.extend_from_slice(&self.etype.to_le_bytes());
        out.extend_from_slice(&self.vlan_id.to_le_bytes());
        out.push(self.proto);
        out.extend_from_slice(&self.src_addr.octets());
        out.extend_from_slice(&self.dst_addr.octets());
        out.extend_from_slice(&self.src_port.to_le_bytes());
        out.extend_from_slice(&self.dst_port.to_le_bytes());
        out.push(self.icmp_type);
        out.push(self.icmp_code);
        out.extend_from_slice(&self.tcp_flags.to_le_bytes());
        out.extend_from_slice(&self.packets.to_le_bytes());
        out.extend_from_slice(&self.bytes.to_le_bytes());
        out.extend_from_slice(&self.sampling_rate.to_le_bytes());
        for s in self.k8s {
            string(out, s);
        }
        string(out, self.kafka_topic);
        out.extend_from_slice(&self.kafka_partition.to_le_bytes());
        out.extend_from_slice(&self.kafka_offset.to_le_bytes());
        for s in self.v2 {
            string(out, s);
        }
        out.extend_from_slice(&self.reverse_packets.to_le_bytes());
        out.extend_from_slice(&self.reverse_bytes.to_le_bytes());
        out.extend_from_slice(&self.reverse_tcp_flags.to_le_bytes());
        string(out, self.end_reason);
        out.extend_from_slice(&self.rtt_ns.to_le_bytes());
        out.extend_from_slice(&self.retransmits.to_le_bytes());
        out.extend_from_slice(&self.drops.to_le_bytes());
        out.extend_from_slice(&self.drop_bytes.to_le_bytes());
        string(out, self.drop_reason);
        for (pid, comm, cgroup_id) in self.processes {
            out.extend_from_slice(&pid.to_le_bytes());
            string(out, comm);
            out.extend_from_slice(&cgroup_id.to_le_bytes());
        }
        string(out, self.tunnel);
        out.extend_from_slice(&self.tunnel_id.to_le_bytes());
        out.extend_from_slice(&self.outer_src_addr.octets());
        out.extend_from_slice(&self.outer_dst_addr.octets());
        out.push(self.duplicate.into());
        out.extend_from_slice(&self.kafka_stream);
        out.extend_from_slice(&self.kafka_timestamp.to_le_bytes());
        string(out, self.origin_topic);
        out.extend_from_slice(&self.origin_stream);
        out.extend_from_slice(&self.origin_partition.to_le_bytes());
        out.extend_from_slice(&self.origin_offset.to_le_bytes());
    }

    /// The owned row.
    pub fn to_row(&self) -> FlowRow {
        let k = |i: usize| self.k8s[i].to_owned();
        let v = |i: usize| self.v2[i].to_owned();
        FlowRow {
            time_flow_start: self.time_flow_start,
            time_flow_end: self.time_flow_end,
            time_exported: self.time_exported,
            host: self.host.to_owned(),
            ifindex: self.ifindex,
            if_name: self.if_name.to_owned(),
            if_mac: self.if_mac.to_owned(),
            if_kind: self.if_kind.to_owned(),
            if_netns: self.if_netns.to_owned(),
            direction: self.direction,
            etype: self.etype,
            vlan_id: self.vlan_id,
            proto: self.proto,
            src_addr: self.src_addr,
            dst_addr: self.dst_addr,
            src_port: self.src_port,
            dst_port: self.dst_port,
            icmp_type: self.icmp_type,
            icmp_code: self.icmp_code,
            tcp_flags: self.tcp_flags,
            packets: self.packets,
            bytes: self.bytes,
            sampling_rate: self.sampling_rate,
            src_pod: k(0),
            src_namespace: k(1),
            src_workload: k(2),
            src_workload_kind: k(3),
            src_node: k(4),
            src_service: k(5),
            dst_pod: k(6),
            dst_namespace: k(7),
            dst_workload: k(8),
            dst_workload_kind: k(9),
            dst_node: k(10),
            dst_service: k(11),
            kafka_topic: self.kafka_topic.to_owned(),
            kafka_partition: self.kafka_partition,
            kafka_offset: self.kafka_offset,
            src_pod_uid: v(0),
            dst_pod_uid: v(1),
            src_role: v(2),
            dst_role: v(3),
            locality: v(4),
            if_pod: v(5),
            if_namespace: v(6),
            reverse_packets: self.reverse_packets,
            reverse_bytes: self.reverse_bytes,
            reverse_tcp_flags: self.reverse_tcp_flags,
            end_reason: self.end_reason.to_owned(),
            rtt_ns: self.rtt_ns,
            retransmits: self.retransmits,
            drops: self.drops,
            drop_bytes: self.drop_bytes,
            drop_reason: self.drop_reason.to_owned(),
            src_pid: self.processes[0].0,
            src_comm: self.processes[0].1.to_owned(),
            src_cgroup_id: self.processes[0].2,
            dst_pid: self.processes[1].0,
            dst_comm: self.processes[1].1.to_owned(),
            dst_cgroup_id: self.processes[1].2,
            tunnel: self.tunnel.to_owned(),
            tunnel_id: self.tunnel_id,
            outer_src_addr: self.outer_src_addr,
            outer_dst_addr: self.outer_dst_addr,
            duplicate: self.duplicate,
            kafka_stream: self.kafka_stream,
            kafka_timestamp: self.kafka_timestamp,
            origin_topic: self.origin_topic.to_owned(),
            origin_stream: self.origin_stream,
            origin_partition: self.origin_partition,
            origin_offset: self.origin_offset,
        }
    }
}

impl FlowRow {
    /// The row with borrowed strings.
    pub fn as_ref(&self) -> RowRef<'_> {
        RowRef {
            time_flow_start: self.time_flow_start,
            time_flow_end: self.time_flow_end,
            time_exported: self.time_exported,
            host: &self.host,
            ifindex: self.ifindex,
            if_name: &self.if_name,
            if_mac: &self.if_mac,
            if_kind: &self.if_kind,
            if_netns: &self.if_netns,
            direction: self.direction,
            etype: self.etype,
            vlan_id: self.vlan_id,
            proto: self.proto,
            src_addr: self.src_addr,
            dst_addr: self.dst_addr,
            src_port: self.src_port,
            dst_port: self.dst_port,
            icmp_type: self.icmp_type,
            icmp_code: self.icmp_code,
            tcp_flags: self.tcp_flags,
            packets: self.packets,
            bytes: self.bytes,
            sampling_rate: self.sampling_rate,
            k8s: [
                &self.src_pod,
                &self.src_namespace,
                &self.src_workload,
                &self.src_workload_kind,
                &self.src_node,
                &self.src_service,
                &self.dst_pod,
                &self.dst_namespace,
                &self.dst_workload,
                &self.dst_workload_kind,
                &self.dst_node,
                &self.dst_service,
            ],
            kafka_topic: &self.kafka_topic,
            kafka_partition: self.kafka_partition,
            kafka_offset: self.kafka_offset,
            v2: [
                &self.src_pod_uid,
                &self.dst_pod_uid,
                &self.src_role,
                &self.dst_role,
                &self.locality,
                &self.if_pod,
                &self.if_namespace,
            ],
            reverse_packets: self.reverse_packets,
            reverse_bytes: self.reverse_bytes,
            reverse_tcp_flags: self.reverse_tcp_flags,
            end_reason: &self.end_reason,
            rtt_ns: self.rtt_ns,
            retransmits: self.retransmits,
            drops: self.drops,
            drop_bytes: self.drop_bytes,
            drop_reason: &self.drop_reason,
            processes: [
                (self.src_pid, &self.src_comm, self.src_cgroup_id),
                (self.dst_pid, &self.dst_comm, self.dst_cgroup_id),
            ],
            tunnel: &self.tunnel,
            tunnel_id: self.tunnel_id,
            outer_src_addr: self.outer_src_addr,
            outer_dst_addr: self.outer_dst_addr,
            duplicate: self.duplicate,
            kafka_stream: self.kafka_stream,
            kafka_timestamp: self.kafka_timestamp,
            origin_topic: &self.origin_topic,
            origin_stream: self.origin_stream,
            origin_partition: self.origin_partition,
            origin_offset: self.origin_offset,
        }
    }

    /// Appends the row in RowBinary (see [`RowRef::write_row_binary`]).
    pub fn write_row_binary(&self, out: &mut Vec<u8>) {
        self.as_ref().write_row_binary(out);
    }
}

fn varint_len(mut n: usize) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}

/// Start time of `sample_flow(0)`.
#[doc(hidden)]
pub const SAMPLE_BASE_NS: i64 = 1_700_000_000_123_456_789;

/// Test and benchmark helper: a plausible flow with every field set, starting at
/// `SAMPLE_BASE_NS + i µs`. B never answers and no record is a duplicate (reverse counters 0,
/// `duplicate` false), so that every rollup sums to the `flows` totals; the other version 3
/// fields are set (processes, tunnel and outer addresses on some records).
#[doc(hidden)]
pub fn sample_flow(i: u32) -> EnrichedFlow {
    sample_flow_at(i, SAMPLE_BASE_NS)
}

/// Like [`sample_flow`], with flow times relative to `base_ns` (exported at `base_ns + 2 s`).
#[doc(hidden)]
pub fn sample_flow_at(i: u32, base_ns: i64) -> EnrichedFlow {
    use flowlens_schemas::ip_to_v6;
    let mut f = EnrichedFlow::from_raw(flowlens_schemas::RawFlow {
        host: "node-a".into(),
        ifindex: 3,
        direction: if i.is_multiple_of(2) {
            Direction::Ingress
        } else {
            Direction::Egress
        },
        time_flow_start_ns: base_ns + i64::from(i) * 1_000,
        time_flow_end_ns: base_ns + 1_000_000_000 + i64::from(i) * 1_000,
        time_exported_ns: base_ns + 2_000_000_000,
        etype: 0x0800,
        vlan_id: 0,
        proto: 6,
        src_addr: ip_to_v6(std::net::Ipv4Addr::new(10, 0, (i >> 8) as u8, i as u8).into()),
        dst_addr: "2001:db8::1".parse().unwrap(),
        src_port: 10_000 + (i % 50_000) as i32,
        dst_port: 443,
        icmp_type: 0,
        icmp_code: 0,
        tcp_flags: 0x18,
        packets: i64::from(i) + 1,
        bytes: (i64::from(i) + 1) * 100,
        sampling_rate: 1,
        ..Default::default()
    });
    f.if_name = "eth0".into();
    f.if_mac = "02:42:ac:11:00:02".into();
    f.if_kind = "veth".into();
    f.if_netns = "cni-1234".into();
    f.src_pod = Some(format!("web-{i}"));
    f.src_namespace = Some("shop".into());
    f.dst_service = Some("api".into());
    f.src_pod_uid = Some(format!("00000000-0000-4000-8000-{i:012}"));
    f.src_role = Some("client".into());
    f.dst_role = Some("server".into());
    f.locality = Some("external".into());
    f.if_pod = Some(format!("web-{i}"));
    f.if_namespace = Some("shop".into());
    f.end_reason = if i % 10 == 9 { "fin" } else { "" }.into();
    f.rtt_ns = 100_000 + i64::from(i % 1000) * 10;
    f.retransmits = i64::from(i % 3);
    f.drops = i64::from(i.is_multiple_of(5));
    f.drop_bytes = f.drops * 1_500;
    f.drop_reason = if f.drops > 0 { "NETFILTER_DROP" } else { "" }.into();
    f.src_process = Some(flowlens_schemas::Process {
        pid: 1_000 + (i % 30_000) as i32,
        comm: "curl".into(),
        cgroup_id: 5_000 + i64::from(i),
    });
    if i.is_multiple_of(7) {
        f.tunnel = "vxlan".into();
        f.tunnel_id = 42;
        f.outer_src_addr = Some(ip_to_v6(std::net::Ipv4Addr::new(192, 168, 0, 1).into()));
        f.outer_dst_addr = Some(ip_to_v6(std::net::Ipv4Addr::new(192, 168, 0, 2).into()));
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_every_field() {
        let row = FlowRow::try_from(sample_flow(7)).unwrap();
        assert_eq!(row.time_flow_start, 1_700_000_000_123_463_789);
        assert_eq!(row.time_exported, 1_700_000_002_123_456_789);
        assert_eq!(row.direction, DirectionColumn::Egress);
        assert_eq!(row.src_addr, "::ffff:10.0.0.7".parse::<Ipv6Addr>().unwrap());
        assert_eq!(row.dst_addr, "2001:db8::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!((row.src_port, row.dst_port, row.proto), (10_007, 443, 6));
        assert_eq!((row.packets, row.bytes, row.tcp_flags), (8, 800, 0x18));
        assert_eq!((row.etype, row.ifindex), (0x0800, 3));
        assert_eq!(row.if_name, "eth0");
        assert_eq!(row.src_pod, "web-7");
        assert_eq!(row.dst_service, "api");
        assert_eq!(row.src_pod_uid, "00000000-0000-4000-8000-000000000007");
        assert_eq!(
            (row.src_role.as_str(), row.dst_role.as_str()),
            ("client", "server")
        );
        assert_eq!(row.locality, "external");
        assert_eq!(
            (row.if_pod.as_str(), row.if_namespace.as_str()),
            ("web-7", "shop")
        );
        // None becomes "" (unknown).
        assert_eq!(row.dst_pod, "");
        assert_eq!(row.src_workload_kind, "");
        assert_eq!(row.dst_pod_uid, "");
        // Version 3: a null process is zeros, a null outer address `::`.
        assert_eq!((row.retransmits, row.drops, row.rtt_ns), (1, 0, 100_070));
        assert_eq!(
            (row.src_pid, row.src_comm.as_str(), row.src_cgroup_id),
            (1_007, "curl", 5_007)
        );
        assert_eq!(
            (row.dst_pid, row.dst_comm.as_str(), row.dst_cgroup_id),
            (0, "", 0)
        );
        assert_eq!((row.tunnel.as_str(), row.tunnel_id), ("vxlan", 42));
        assert_eq!(
            row.outer_dst_addr,
            "::ffff:192.168.0.2".parse::<Ipv6Addr>().unwrap()
        );
        let row = FlowRow::try_from(sample_flow(8)).unwrap();
        assert_eq!(row.outer_src_addr, Ipv6Addr::UNSPECIFIED);
        assert_eq!(row.tunnel, "");
        assert!(!row.duplicate);
        let mut f = sample_flow(1);
        f.reverse_packets = 4;
        f.reverse_bytes = 256;
        f.reverse_tcp_flags = 0x12;
        f.duplicate = true;
        f.end_reason = "rst".into();
        let row = FlowRow::try_from(f).unwrap();
        assert_eq!(
            (
                row.reverse_packets,
                row.reverse_bytes,
                row.reverse_tcp_flags
            ),
            (4, 256, 0x12)
        );
        assert!(row.duplicate);
        assert_eq!(row.end_reason, "rst");
    }

    #[test]
    fn out_of_range_values_are_rejected_with_the_field() {
        let mut f = sample_flow(1);
        f.src_port = 70_000;
        let e = FlowRow::try_from(f).unwrap_err();
        assert_eq!(e.field, "src_port");
        let mut f = sample_flow(1);
        f.bytes = -1;
        assert_eq!(FlowRow::try_from(f).unwrap_err().field, "bytes");
        for (field, set) in [
            (
                "reverse_bytes",
                (|f| f.reverse_bytes = -1) as fn(&mut EnrichedFlow),
            ),
            ("retransmits", |f| f.retransmits = 1 << 32),
            ("tunnel_id", |f| f.tunnel_id = -1),
            ("dst_process", |f| {
                f.dst_process = Some(flowlens_schemas::Process {
                    pid: -1,
                    ..Default::default()
                })
            }),
        ] {
            let mut f = sample_flow(1);
            set(&mut f);
            assert_eq!(FlowRow::try_from(f).unwrap_err().field, field);
        }
        let mut f = sample_flow(1);
        f.ifindex = -3;
        assert!(FlowRow::try_from(f)
            .unwrap_err()
            .to_string()
            .contains("UInt32"));
    }

    #[test]
    fn direction_is_the_enum8_value() {
        assert_eq!(DirectionColumn::from(Direction::Ingress) as i8, 0);
        assert_eq!(DirectionColumn::from(Direction::Egress) as i8, 1);
    }

    #[test]
    fn columns_are_in_table_order() {
        use clickhouse::Row as _;
        let cols = FlowRow::COLUMN_NAMES;
        assert_eq!(cols.len(), 71);
        assert_eq!(
            &cols[..4],
            &["time_flow_start", "time_flow_end", "time_exported", "host"]
        );
        assert_eq!(cols[9], "direction");
        assert_eq!(cols[34], "dst_service");
        assert_eq!(
            &cols[35..38],
            &["kafka_topic", "kafka_partition", "kafka_offset"]
        );
        // Migration 0003 appends the version 2 columns after kafka_offset.
        assert_eq!(
            &cols[38..45],
            &[
                "src_pod_uid",
                "dst_pod_uid",
                "src_role",
                "dst_role",
                "locality",
                "if_pod",
                "if_namespace"
            ]
        );
        // Then the version 3 columns (0004, with 0002's retransmits and drops).
        assert_eq!(cols[45], "reverse_packets");
        assert_eq!(cols[64], "duplicate");
        // Then the record identity (0005).
        assert_eq!(
            &cols[65..],
            &[
                "kafka_stream",
                "kafka_timestamp",
                "origin_topic",
                "origin_stream",
                "origin_partition",
                "origin_offset"
            ]
        );
    }

    #[test]
    fn column_types_follow_the_struct() {
        use clickhouse::Row as _;
        let names: Vec<&str> = COLUMN_TYPES.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, FlowRow::COLUMN_NAMES);
    }

    #[test]
    fn row_binary_has_the_encoded_len() {
        let mut row = FlowRow::try_from(sample_flow(300)).unwrap();
        row.kafka_topic = "x".repeat(200);
        let mut out = Vec::new();
        row.write_row_binary(&mut out);
        assert_eq!(out.len(), row.encoded_len());
        assert_eq!(row.as_ref().to_row(), row);
        assert_eq!(&out[..8], &row.time_flow_start.to_le_bytes());
        // The last columns are outer_dst_addr (`::`: 300 is no tunnel record), duplicate, then
        // the identity: zeros and "" before the sink sets them.
        assert_eq!(&out[out.len() - 70..], &[0u8; 70]);
    }

    /// Rows of every shape: long strings (two-byte length varints), non-ASCII text, tunnel and
    /// duplicate rows, reverse counters, processes on both ends, extreme integers.
    fn varied_rows() -> Vec<FlowRow> {
        (0..40u32)
            .map(|i| {
                let mut f = sample_flow(i * 7);
                f.reverse_packets = i64::from(i) * 3;
                f.reverse_bytes = i64::from(i) * 300;
                f.reverse_tcp_flags = 0x12;
                f.duplicate = i % 3 == 0;
                f.dst_process = Some(Process {
                    pid: 77,
                    comm: "nginx: wörker".into(),
                    cgroup_id: i64::MAX,
                });
                f.packets = i64::from(u32::MAX) * i64::from(i + 1);
                let mut row = FlowRow::try_from(f).unwrap();
                row.kafka_topic = format!("topic-{}", "é".repeat(i as usize * 5));
                row.kafka_partition = u16::MAX - i as u16;
                row.kafka_offset = u64::MAX - u64::from(i);
                row.if_netns = "n".repeat(130 + i as usize * 40);
                row
            })
            .collect()
    }

    /// Reads one HTTP/1.1 request from `stream` and answers 200; returns its body (chunked or
    /// with a Content-Length).
    async fn capture_body(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut data = Vec::new();
        let mut chunk = [0u8; 65536];
        let head_end = loop {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed in the headers");
            data.extend_from_slice(&chunk[..n]);
            if let Some(p) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
        };
        let head = String::from_utf8_lossy(&data[..head_end]).to_lowercase();
        let mut rest = data[head_end..].to_vec();
        let complete = |rest: &[u8]| -> Option<Vec<u8>> {
            if let Some(len) = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse::<usize>().unwrap())
            {
                return (rest.len() >= len).then(|| rest[..len].to_vec());
            }
            // Chunked: size in hex, CRLF, data, CRLF, ..., then a chunk of size 0.
            let (mut body, mut at) = (Vec::new(), 0);
            loop {
                let line_end = rest[at..].windows(2).position(|w| w == b"\r\n")? + at;
                let size = std::str::from_utf8(&rest[at..line_end]).unwrap();
                let size = usize::from_str_radix(size.split(';').next().unwrap(), 16).unwrap();
                if size == 0 {
                    return Some(body);
                }
                let start = line_end + 2;
                if rest.len() < start + size + 2 {
                    return None;
                }
                body.extend_from_slice(&rest[start..start + size]);
                at = start + size + 2;
            }
        };
        let body = loop {
            if let Some(body) = complete(&rest) {
                break body;
            }
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed in the body");
            rest.extend_from_slice(&chunk[..n]);
        };
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        body
    }

    /// The oracle is the `clickhouse` crate's own serde serializer: the body of its RowBinary
    /// INSERT of the same rows (no compression, no validation, caught by a listener standing in
    /// for the server) must be byte for byte what `write_row_binary` writes.
    #[tokio::test]
    async fn row_binary_is_byte_for_byte_the_crate_serializer() {
        let rows = varied_rows();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            capture_body(&mut stream).await
        });
        let client = clickhouse::Client::default()
            .with_url(url)
            .with_compression(clickhouse::Compression::None)
            .with_validation(false);
        let mut insert = client.insert::<FlowRow>("flows").await.unwrap();
        for row in &rows {
            insert.write(row).await.unwrap();
        }
        insert.end().await.unwrap();
        let crate_bytes = server.await.unwrap();

        let mut ours = Vec::new();
        for row in &rows {
            row.write_row_binary(&mut ours);
        }
        assert_eq!(
            ours.len(),
            rows.iter().map(FlowRow::encoded_len).sum::<usize>()
        );
        assert_eq!(crate_bytes.len(), ours.len());
        assert!(
            crate_bytes == ours,
            "RowBinary differs from the crate's serializer"
        );
    }

    #[test]
    fn encoded_len_counts_strings() {
        let row = FlowRow::try_from(sample_flow(7)).unwrap();
        let strings = "node-a".len()
            + "eth0".len()
            + "02:42:ac:11:00:02".len()
            + "veth".len()
            + "cni-1234".len()
            + "web-7".len()
            + "shop".len()
            + "api".len()
            + "00000000-0000-4000-8000-000000000007".len()
            + "client".len()
            + "server".len()
            + "external".len()
            + "web-7".len()
            + "shop".len()
            + "curl".len()
            + "vxlan".len();
        assert_eq!(row.encoded_len(), FIXED_LEN + 31 + strings);
        assert_eq!(FIXED_LEN, 259);
        assert_eq!(varint_len(127), 1);
        assert_eq!(varint_len(128), 2);
    }
}
