//! Typed Rust records mirroring the `.avsc` files: `RawFlow`, `Interface`, `EnrichedFlow`, `Direction`, and the
//! nested `Process`, `Origin`, `Dns`, `Http`.
//!
//! Field order and enum variant order MUST match the schemas: apache-avro's serde writer
//! emits fields in Rust declaration order and enum symbols by variant index
//! (the `field_order_matches_schema` tests guard this).

use std::net::{IpAddr, Ipv6Addr};

use apache_avro::Schema;
use serde::{Deserialize, Serialize};

use crate::ip::{fixed16, fixed16_opt, v6_to_ip};
use crate::schema::{AvroRecord, RecordKind};

/// Traffic direction relative to the interface (Avro enum `io.flowlens.Direction`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Direction {
    /// Packets received by the interface.
    #[default]
    #[serde(rename = "INGRESS")]
    Ingress,
    /// Packets sent by the interface.
    #[serde(rename = "EGRESS")]
    Egress,
}

/// One conversation per interface and collector scan interval (`io.flowlens.RawFlow`); see
/// `avro/raw_flow.avsc` for field docs. `src_*` is side A (the initiator), `dst_*` side B.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawFlow {
    pub host: String,
    pub ifindex: i32,
    pub direction: Direction,
    pub time_flow_start_ns: i64,
    pub time_flow_end_ns: i64,
    pub time_exported_ns: i64,
    pub etype: i32,
    pub vlan_id: i32,
    pub proto: i32,
    /// IPv6, or IPv4-mapped IPv6 for IPv4; see [`crate::ip_to_v6`] and [`RawFlow::src_ip`].
    #[serde(with = "fixed16")]
    pub src_addr: Ipv6Addr,
    #[serde(with = "fixed16")]
    pub dst_addr: Ipv6Addr,
    pub src_port: i32,
    pub dst_port: i32,
    pub icmp_type: i32,
    pub icmp_code: i32,
    pub tcp_flags: i32,
    pub packets: i64,
    pub bytes: i64,
    pub sampling_rate: i32,
    // Version 2: all with defaults (readers of version 1 records get 0 / "" / None / false).
    pub reverse_packets: i64,
    pub reverse_bytes: i64,
    pub reverse_tcp_flags: i32,
    /// "", "fin", "rst", "idle" or "shutdown".
    pub end_reason: String,
    pub rtt_ns: i64,
    pub retransmits: i64,
    pub drops: i64,
    pub drop_bytes: i64,
    pub drop_reason: String,
    pub src_process: Option<Process>,
    pub dst_process: Option<Process>,
    /// "", "vxlan", "geneve" or "gre".
    pub tunnel: String,
    pub tunnel_id: i64,
    #[serde(with = "fixed16_opt")]
    pub outer_src_addr: Option<Ipv6Addr>,
    #[serde(with = "fixed16_opt")]
    pub outer_dst_addr: Option<Ipv6Addr>,
    pub duplicate: bool,
    // Version 3.
    /// The record's identity when its producer gives one; `None`: its raw-topic position is.
    pub origin: Option<Origin>,
    // Version 4.
    /// The conversation's DNS statistics in the interval; `None` when it carried no DNS.
    pub dns: Option<Dns>,
    /// The conversation's HTTP/1.x statistics in the interval; `None` when it carried no HTTP.
    pub http: Option<Http>,
}

/// Where a record first entered flowlens' Kafka streams (`io.flowlens.Origin`): (stream,
/// partition, offset) names one record; `topic` names the stream for people.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Origin {
    pub topic: String,
    /// The incarnation of the stream (Kafka topic id, or a derived id: see `runtime::incarnation`).
    #[serde(with = "apache_avro::serde_avro_fixed")]
    pub stream: [u8; 16],
    pub partition: i32,
    pub offset: i64,
}

/// What DNS traffic one conversation carried in one scan interval (`io.flowlens.Dns`); see
/// `avro/raw_flow.avsc` for field docs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Queries (QR = 0), either direction.
    pub queries: i64,
    /// Responses (QR = 1), either direction; the five RCODE counts below add up to it.
    pub responses: i64,
    pub noerror: i64,
    pub nxdomain: i64,
    pub servfail: i64,
    pub refused: i64,
    pub other_rcode: i64,
    /// Responses matched to an earlier query of the conversation by transaction id.
    pub answered: i64,
    pub latency_sum_ns: i64,
    pub latency_max_ns: i64,
    /// The interval's first 64 matched latencies, microseconds.
    pub latencies_us: Vec<i64>,
    /// QNAME of the last query (lower-case, dotted, no trailing dot); `None` without a query.
    pub last_query: Option<String>,
    /// QTYPE of the last query, 0 without a query.
    pub last_query_type: i32,
}

/// What HTTP/1.x traffic one conversation carried in one scan interval (`io.flowlens.Http`);
/// see `avro/raw_flow.avsc` for field docs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Http {
    /// Request lines (`METHOD SP target SP HTTP/1.x`), either direction.
    pub requests: i64,
    /// Final responses (status >= 200), either direction; the five status counts below add up
    /// to it.
    pub responses: i64,
    pub status_2xx: i64,
    pub status_3xx: i64,
    pub status_4xx: i64,
    pub status_5xx: i64,
    /// Final responses with a status outside 200-599.
    pub status_other: i64,
    /// Responses matched to the oldest unanswered request of the conversation.
    pub answered: i64,
    pub latency_sum_ns: i64,
    pub latency_max_ns: i64,
    /// The interval's first 64 matched latencies, microseconds.
    pub latencies_us: Vec<i64>,
    /// Method of the last request; `None` without a request.
    pub last_method: Option<String>,
    /// Path of the last request's target (no query or fragment, at most 128 bytes, bytes
    /// outside printable ASCII percent-encoded); `None` without a request.
    pub last_path: Option<String>,
    /// Status of the last final response, 0 without one.
    pub last_status: i32,
}

/// A local process owning one end's socket (`io.flowlens.Process`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Process {
    pub pid: i32,
    pub comm: String,
    pub cgroup_id: i64,
}

impl Default for RawFlow {
    /// Every field zero, empty, `None` or false; addresses `::`; direction ingress.
    fn default() -> Self {
        RawFlow {
            host: String::new(),
            ifindex: 0,
            direction: Direction::Ingress,
            time_flow_start_ns: 0,
            time_flow_end_ns: 0,
            time_exported_ns: 0,
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
            sampling_rate: 1,
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
            dns: None,
            http: None,
        }
    }
}

impl RawFlow {
    /// Source address with IPv4-mapped addresses unmapped to `IpAddr::V4`.
    pub fn src_ip(&self) -> IpAddr {
        v6_to_ip(self.src_addr)
    }

    /// Destination address with IPv4-mapped addresses unmapped to `IpAddr::V4`.
    pub fn dst_ip(&self) -> IpAddr {
        v6_to_ip(self.dst_addr)
    }
}

/// Interface metadata (`io.flowlens.Interface`), keyed by host/ifindex; see `avro/interface.avsc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub host: String,
    pub ifindex: i32,
    pub name: String,
    pub mac: String,
    pub mtu: i32,
    pub kind: String,
    pub netns: String,
    pub netns_inode: i64,
    pub oper_state: String,
    pub time_observed_ns: i64,
}

/// A `RawFlow` flattened together with interface and Kubernetes metadata (`io.flowlens.EnrichedFlow`):
/// the RawFlow fields of version 1, the join results, then the fields RawFlow versions 2, 3
/// and 4 appended; see `avro/enriched_flow.avsc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrichedFlow {
    pub host: String,
    pub ifindex: i32,
    pub direction: Direction,
    pub time_flow_start_ns: i64,
    pub time_flow_end_ns: i64,
    pub time_exported_ns: i64,
    pub etype: i32,
    pub vlan_id: i32,
    pub proto: i32,
    #[serde(with = "fixed16")]
    pub src_addr: Ipv6Addr,
    #[serde(with = "fixed16")]
    pub dst_addr: Ipv6Addr,
    pub src_port: i32,
    pub dst_port: i32,
    pub icmp_type: i32,
    pub icmp_code: i32,
    pub tcp_flags: i32,
    pub packets: i64,
    pub bytes: i64,
    pub sampling_rate: i32,
    /// From the Interface join, "" when unknown.
    pub if_name: String,
    pub if_mac: String,
    pub if_kind: String,
    pub if_netns: String,
    /// Kubernetes metadata, `None` when unknown.
    pub src_pod: Option<String>,
    pub src_namespace: Option<String>,
    pub src_workload: Option<String>,
    pub src_workload_kind: Option<String>,
    pub src_node: Option<String>,
    pub src_service: Option<String>,
    pub dst_pod: Option<String>,
    pub dst_namespace: Option<String>,
    pub dst_workload: Option<String>,
    pub dst_workload_kind: Option<String>,
    pub dst_node: Option<String>,
    pub dst_service: Option<String>,
    // Version 2 (all nullable, default null: readers of version 1 records get `None`).
    pub src_pod_uid: Option<String>,
    pub dst_pod_uid: Option<String>,
    /// "client" or "server".
    pub src_role: Option<String>,
    pub dst_role: Option<String>,
    /// "node", "cluster" or "external".
    pub locality: Option<String>,
    /// Pod owning the interface (`if_*`), and its namespace.
    pub if_pod: Option<String>,
    pub if_namespace: Option<String>,
    // Version 3: the fields RawFlow version 2 added, same names, types and defaults (readers of
    // older records get 0 / "" / None / false).
    pub reverse_packets: i64,
    pub reverse_bytes: i64,
    pub reverse_tcp_flags: i32,
    /// "", "fin", "rst", "idle" or "shutdown".
    pub end_reason: String,
    pub rtt_ns: i64,
    pub retransmits: i64,
    pub drops: i64,
    pub drop_bytes: i64,
    pub drop_reason: String,
    pub src_process: Option<Process>,
    pub dst_process: Option<Process>,
    /// "", "vxlan", "geneve" or "gre".
    pub tunnel: String,
    pub tunnel_id: i64,
    #[serde(with = "fixed16_opt")]
    pub outer_src_addr: Option<Ipv6Addr>,
    #[serde(with = "fixed16_opt")]
    pub outer_dst_addr: Option<Ipv6Addr>,
    pub duplicate: bool,
    // Version 4.
    /// Identity of the raw record this one was made from; `None` (older enrichers, other
    /// producers): this record's own enriched-topic position is its identity.
    pub origin: Option<Origin>,
    // Version 5: the fields RawFlow version 4 added.
    /// The conversation's DNS statistics in the interval; `None` when it carried no DNS.
    pub dns: Option<Dns>,
    /// The conversation's HTTP/1.x statistics in the interval; `None` when it carried no HTTP.
    pub http: Option<Http>,
}

impl EnrichedFlow {
    /// Copies every raw field (the destructuring names each one: a field added to `RawFlow`
    /// does not compile here until it is carried); interface fields empty, Kubernetes fields `None`.
    pub fn from_raw(raw: RawFlow) -> Self {
        let RawFlow {
            host,
            ifindex,
            direction,
            time_flow_start_ns,
            time_flow_end_ns,
            time_exported_ns,
            etype,
            vlan_id,
            proto,
            src_addr,
            dst_addr,
            src_port,
            dst_port,
            icmp_type,
            icmp_code,
            tcp_flags,
            packets,
            bytes,
            sampling_rate,
            reverse_packets,
            reverse_bytes,
            reverse_tcp_flags,
            end_reason,
            rtt_ns,
            retransmits,
            drops,
            drop_bytes,
            drop_reason,
            src_process,
            dst_process,
            tunnel,
            tunnel_id,
            outer_src_addr,
            outer_dst_addr,
            duplicate,
            origin,
            dns,
            http,
        } = raw;
        EnrichedFlow {
            host,
            ifindex,
            direction,
            time_flow_start_ns,
            time_flow_end_ns,
            time_exported_ns,
            etype,
            vlan_id,
            proto,
            src_addr,
            dst_addr,
            src_port,
            dst_port,
            icmp_type,
            icmp_code,
            tcp_flags,
            packets,
            bytes,
            sampling_rate,
            if_name: String::new(),
            if_mac: String::new(),
            if_kind: String::new(),
            if_netns: String::new(),
            src_pod: None,
            src_namespace: None,
            src_workload: None,
            src_workload_kind: None,
            src_node: None,
            src_service: None,
            dst_pod: None,
            dst_namespace: None,
            dst_workload: None,
            dst_workload_kind: None,
            dst_node: None,
            dst_service: None,
            src_pod_uid: None,
            dst_pod_uid: None,
            src_role: None,
            dst_role: None,
            locality: None,
            if_pod: None,
            if_namespace: None,
            reverse_packets,
            reverse_bytes,
            reverse_tcp_flags,
            end_reason,
            rtt_ns,
            retransmits,
            drops,
            drop_bytes,
            drop_reason,
            src_process,
            dst_process,
            tunnel,
            tunnel_id,
            outer_src_addr,
            outer_dst_addr,
            duplicate,
            origin,
            dns,
            http,
        }
    }

    /// Source address with IPv4-mapped addresses unmapped to `IpAddr::V4`.
    pub fn src_ip(&self) -> IpAddr {
        v6_to_ip(self.src_addr)
    }

    /// Destination address with IPv4-mapped addresses unmapped to `IpAddr::V4`.
    pub fn dst_ip(&self) -> IpAddr {
        v6_to_ip(self.dst_addr)
    }
}

macro_rules! avro_record {
    ($ty:ty, $kind:expr) => {
        impl AvroRecord for $ty {
            fn schema() -> &'static Schema {
                $kind.schema()
            }
            fn fingerprint() -> [u8; 8] {
                $kind.fingerprint()
            }
        }
    };
}

avro_record!(RawFlow, RecordKind::RawFlow);
avro_record!(Interface, RecordKind::Interface);
avro_record!(EnrichedFlow, RecordKind::EnrichedFlow);
