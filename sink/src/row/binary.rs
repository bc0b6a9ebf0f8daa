//! RowBinary for `flows` rows: [`RowRef`] (strings borrowed from a decoded payload or a
//! `FlowRow`) and its writer, the exact size of a row, and the conversions between the two.

use std::net::Ipv6Addr;

use flowlens_schemas::binary::Reader;

use super::{DirectionColumn, FlowRow};

/// Fixed RowBinary size of a row: everything except the strings' bytes and length prefixes.
pub(super) const FIXED_LEN: usize = 3 * 8 + 4 + 1 + 2 + 2 + 1 + 16 + 16 + 2 + 2 + 1 + 1 + 2 + 8 + 8 + 4 + 2 + 8
    // version 3: reverse packets/bytes/flags, rtt, retransmits, drops, drop_bytes, the two
    // processes' pid and cgroup, tunnel_id, outer addresses, duplicate
    + 8 + 8 + 2 + 8 + 4 + 4 + 8 + 2 * (4 + 8) + 4 + 16 + 16 + 1
    // version 4 / migration 0005: kafka_stream, kafka_timestamp, origin stream, partition, offset
    + 16 + 8 + 16 + 4 + 8
    // version 5 / migration 0007: the eight DNS counts, latency sum and max, last query type;
    // the eight HTTP counts, latency sum and max, last status
    + 8 * 4 + 8 + 8 + 2
    + 8 * 4 + 8 + 8 + 2;

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
            &self.dns_last_query,
            &self.http_last_method,
            &self.http_last_path,
        ];
        FIXED_LEN
            + strings
                .iter()
                .map(|s| varint_len(s.len()) + s.len())
                .sum::<usize>()
            + [&self.dns_latencies_us, &self.http_latencies_us]
                .iter()
                .map(|l| varint_len(l.len()) + 4 * l.len())
                .sum::<usize>()
    }
}

/// The values of `dns_latencies_us` or `http_latencies_us` without a copy: borrowed from a `FlowRow`, or still in the
/// Avro datum they were read from (zig-zag varints the fast path checked to fit `UInt32`).
#[derive(Debug, Clone, Copy)]
pub enum Latencies<'a> {
    Values(&'a [u32]),
    /// `count` Avro longs, each known to fit a `u32`, in `items`.
    Avro {
        count: usize,
        items: &'a [u8],
    },
}

impl<'a> Latencies<'a> {
    /// No latency.
    pub const EMPTY: Latencies<'static> = Latencies::Values(&[]);

    pub fn len(&self) -> usize {
        match self {
            Latencies::Values(v) => v.len(),
            Latencies::Avro { count, .. } => *count,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values in order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + 'a {
        let (values, count, items): (&'a [u32], usize, &'a [u8]) = match *self {
            Latencies::Values(v) => (v, 0, &[]),
            Latencies::Avro { count, items } => (&[], count, items),
        };
        let mut avro = Reader::new(items);
        values
            .iter()
            .copied()
            .chain((0..count).map(move |_| avro.long().map_or(0, |v| v as u32)))
    }
}

impl PartialEq for Latencies<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Latencies<'_> {}

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
    /// Migration 0007 (EnrichedFlow version 5 `dns`): queries, responses, noerror, nxdomain,
    /// servfail, refused, other_rcode, answered; then the rest as in `FlowRow`.
    pub dns_counts: [u32; 8],
    pub dns_latency_sum_ns: u64,
    pub dns_latency_max_ns: u64,
    pub dns_latencies_us: Latencies<'a>,
    pub dns_last_query: &'a str,
    pub dns_last_query_type: u16,
    /// Migration 0007 (EnrichedFlow version 5 `http`): requests, responses, 2xx, 3xx, 4xx,
    /// 5xx, status_other, answered; then the rest as in `FlowRow`.
    pub http_counts: [u32; 8],
    pub http_latency_sum_ns: u64,
    pub http_latency_max_ns: u64,
    pub http_latencies_us: Latencies<'a>,
    pub http_last_method: &'a str,
    pub http_last_path: &'a str,
    pub http_last_status: u16,
}

impl RowRef<'_> {
    /// Appends the row in RowBinary (the column order of `COLUMN_TYPES`): exactly the bytes the
    /// `clickhouse` crate's serde serializer writes for the same `FlowRow`.
    pub fn write_row_binary(&self, out: &mut Vec<u8>) {
        fn string(out: &mut Vec<u8>, s: &str) {
            write_varint(out, s.len());
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
        for count in self.dns_counts {
            out.extend_from_slice(&count.to_le_bytes());
        }
        out.extend_from_slice(&self.dns_latency_sum_ns.to_le_bytes());
        out.extend_from_slice(&self.dns_latency_max_ns.to_le_bytes());
        write_varint(out, self.dns_latencies_us.len());
        for latency in self.dns_latencies_us.iter() {
            out.extend_from_slice(&latency.to_le_bytes());
        }
        string(out, self.dns_last_query);
        out.extend_from_slice(&self.dns_last_query_type.to_le_bytes());
        for count in self.http_counts {
            out.extend_from_slice(&count.to_le_bytes());
        }
        out.extend_from_slice(&self.http_latency_sum_ns.to_le_bytes());
        out.extend_from_slice(&self.http_latency_max_ns.to_le_bytes());
        write_varint(out, self.http_latencies_us.len());
        for latency in self.http_latencies_us.iter() {
            out.extend_from_slice(&latency.to_le_bytes());
        }
        string(out, self.http_last_method);
        string(out, self.http_last_path);
        out.extend_from_slice(&self.http_last_status.to_le_bytes());
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
            dns_queries: self.dns_counts[0],
            dns_responses: self.dns_counts[1],
            dns_noerror: self.dns_counts[2],
            dns_nxdomain: self.dns_counts[3],
            dns_servfail: self.dns_counts[4],
            dns_refused: self.dns_counts[5],
            dns_other_rcode: self.dns_counts[6],
            dns_answered: self.dns_counts[7],
            dns_latency_sum_ns: self.dns_latency_sum_ns,
            dns_latency_max_ns: self.dns_latency_max_ns,
            dns_latencies_us: self.dns_latencies_us.iter().collect(),
            dns_last_query: self.dns_last_query.to_owned(),
            dns_last_query_type: self.dns_last_query_type,
            http_requests: self.http_counts[0],
            http_responses: self.http_counts[1],
            http_2xx: self.http_counts[2],
            http_3xx: self.http_counts[3],
            http_4xx: self.http_counts[4],
            http_5xx: self.http_counts[5],
            http_status_other: self.http_counts[6],
            http_answered: self.http_counts[7],
            http_latency_sum_ns: self.http_latency_sum_ns,
            http_latency_max_ns: self.http_latency_max_ns,
            http_latencies_us: self.http_latencies_us.iter().collect(),
            http_last_method: self.http_last_method.to_owned(),
            http_last_path: self.http_last_path.to_owned(),
            http_last_status: self.http_last_status,
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
            dns_counts: [
                self.dns_queries,
                self.dns_responses,
                self.dns_noerror,
                self.dns_nxdomain,
                self.dns_servfail,
                self.dns_refused,
                self.dns_other_rcode,
                self.dns_answered,
            ],
            dns_latency_sum_ns: self.dns_latency_sum_ns,
            dns_latency_max_ns: self.dns_latency_max_ns,
            dns_latencies_us: Latencies::Values(&self.dns_latencies_us),
            dns_last_query: &self.dns_last_query,
            dns_last_query_type: self.dns_last_query_type,
            http_counts: [
                self.http_requests,
                self.http_responses,
                self.http_2xx,
                self.http_3xx,
                self.http_4xx,
                self.http_5xx,
                self.http_status_other,
                self.http_answered,
            ],
            http_latency_sum_ns: self.http_latency_sum_ns,
            http_latency_max_ns: self.http_latency_max_ns,
            http_latencies_us: Latencies::Values(&self.http_latencies_us),
            http_last_method: &self.http_last_method,
            http_last_path: &self.http_last_path,
            http_last_status: self.http_last_status,
        }
    }

    /// Appends the row in RowBinary (see [`RowRef::write_row_binary`]).
    pub fn write_row_binary(&self, out: &mut Vec<u8>) {
        self.as_ref().write_row_binary(out);
    }
}

/// Appends `n` as RowBinary writes lengths (unsigned LEB128; Native uses the same).
pub(super) fn write_varint(out: &mut Vec<u8>, mut n: usize) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// The length at the start of `b` as [`write_varint`] writes it, and how many bytes it took.
pub(super) fn read_varint(b: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (i, byte) in b.iter().enumerate().take(10) {
        value |= ((byte & 0x7f) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

pub(super) fn varint_len(mut n: usize) -> usize {
    let mut len = 1;
    while n >= 0x80 {
        n >>= 7;
        len += 1;
    }
    len
}
