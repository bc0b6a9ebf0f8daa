//! `FlowRow`: one `flows` table row in column order, built from an `EnrichedFlow` with range checks;
//! its column list (`columns`), its RowBinary writer (`binary`), a batch of its rows as one
//! Native block (`native`) and a sample flow for tests (`sample`).
//!
//! RowBinary mapping: DateTime64(9) is `i64` nanoseconds, IPv6 is `Ipv6Addr` (16 bytes, network
//! order), `Enum8('ingress'=0,'egress'=1)` is an `i8` (serde_repr), Bool is one byte 0/1, unknown
//! Kubernetes metadata is "". A null process is pid 0, comm "", cgroup 0; a null outer address
//! is `::`; a null `dns` or `http` is zeros, no latency and "" (`Array(UInt32)` is a length
//! varint, then the values).

use std::net::Ipv6Addr;

use clickhouse::Row;
use flowlens_schemas::{Direction, EnrichedFlow, Process};
use serde::Serialize;
use serde_repr::Serialize_repr;

mod binary;
mod columns;
mod native;
mod sample;
#[cfg(test)]
mod tests;

pub use binary::{Latencies, RowRef};
pub use columns::COLUMN_TYPES;
pub use native::NativeLayout;
#[doc(hidden)]
pub use sample::{sample_flow, sample_flow_at, SAMPLE_BASE_NS};

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
/// columns of 0002 (kafka_*), 0003, 0004, 0005 and 0007 in `COLUMN_TYPES` order (0002's
/// retransmits/drops among 0004's). `time_inserted` is left to its `DEFAULT now64(3)`.
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
    /// EnrichedFlow v5 `dns` (migration 0007): zeros, no latency and "" for a record without
    /// one (or from an older version).
    pub dns_queries: u32,
    pub dns_responses: u32,
    pub dns_noerror: u32,
    pub dns_nxdomain: u32,
    pub dns_servfail: u32,
    pub dns_refused: u32,
    pub dns_other_rcode: u32,
    pub dns_answered: u32,
    pub dns_latency_sum_ns: u64,
    pub dns_latency_max_ns: u64,
    /// The interval's first matched latencies (µs, at most 64 from the collector).
    pub dns_latencies_us: Vec<u32>,
    /// "" when the conversation carried no query.
    pub dns_last_query: String,
    pub dns_last_query_type: u16,
    /// EnrichedFlow v5 `http` (migration 0007): zeros, no latency and "" for a record without
    /// one (or from an older version).
    pub http_requests: u32,
    pub http_responses: u32,
    pub http_2xx: u32,
    pub http_3xx: u32,
    pub http_4xx: u32,
    pub http_5xx: u32,
    pub http_status_other: u32,
    pub http_answered: u32,
    pub http_latency_sum_ns: u64,
    pub http_latency_max_ns: u64,
    /// The interval's first matched latencies (µs, at most 64 from the collector).
    pub http_latencies_us: Vec<u32>,
    /// "" when the conversation carried no request.
    pub http_last_method: String,
    pub http_last_path: String,
    /// 0 when the conversation carried no final response.
    pub http_last_status: u16,
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
        let dns = f.dns.unwrap_or_default();
        let count = |value: i64| fit("dns", value, "UInt32");
        let dns_latencies_us = dns
            .latencies_us
            .iter()
            .map(|l| fit("dns", *l, "UInt32"))
            .collect::<Result<_, _>>()?;
        let http = f.http.unwrap_or_default();
        let http_count = |value: i64| fit("http", value, "UInt32");
        let http_latencies_us = http
            .latencies_us
            .iter()
            .map(|l| fit("http", *l, "UInt32"))
            .collect::<Result<_, _>>()?;
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
            dns_queries: count(dns.queries)?,
            dns_responses: count(dns.responses)?,
            dns_noerror: count(dns.noerror)?,
            dns_nxdomain: count(dns.nxdomain)?,
            dns_servfail: count(dns.servfail)?,
            dns_refused: count(dns.refused)?,
            dns_other_rcode: count(dns.other_rcode)?,
            dns_answered: count(dns.answered)?,
            dns_latency_sum_ns: fit("dns", dns.latency_sum_ns, "UInt64")?,
            dns_latency_max_ns: fit("dns", dns.latency_max_ns, "UInt64")?,
            dns_latencies_us,
            dns_last_query: dns.last_query.unwrap_or_default(),
            dns_last_query_type: fit("dns", dns.last_query_type.into(), "UInt16")?,
            http_requests: http_count(http.requests)?,
            http_responses: http_count(http.responses)?,
            http_2xx: http_count(http.status_2xx)?,
            http_3xx: http_count(http.status_3xx)?,
            http_4xx: http_count(http.status_4xx)?,
            http_5xx: http_count(http.status_5xx)?,
            http_status_other: http_count(http.status_other)?,
            http_answered: http_count(http.answered)?,
            http_latency_sum_ns: fit("http", http.latency_sum_ns, "UInt64")?,
            http_latency_max_ns: fit("http", http.latency_max_ns, "UInt64")?,
            http_latencies_us,
            http_last_method: http.last_method.unwrap_or_default(),
            http_last_path: http.last_path.unwrap_or_default(),
            http_last_status: fit("http", http.last_status.into(), "UInt16")?,
        })
    }
}
