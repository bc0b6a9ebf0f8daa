//! `FlowRow`: one `flows` table row in column order, built from an `EnrichedFlow` with range checks.
//!
//! RowBinary mapping: DateTime64(9) is `i64` nanoseconds, IPv6 is `Ipv6Addr` (16 bytes, network
//! order), `Enum8('ingress'=0,'egress'=1)` is an `i8` (serde_repr), unknown Kubernetes metadata is "".

use std::net::Ipv6Addr;

use clickhouse::Row;
use flowlens_schemas::{Direction, EnrichedFlow};
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

/// A row of the `flows` table (sql/migrations/0001_flows.sql), fields in table column order.
/// `time_inserted` is left to its `DEFAULT now64(3)`.
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
const FIXED_LEN: usize = 3 * 8 + 4 + 1 + 2 + 2 + 1 + 16 + 16 + 2 + 2 + 1 + 1 + 2 + 8 + 8 + 4;

impl TryFrom<EnrichedFlow> for FlowRow {
    type Error = RowError;

    fn try_from(f: EnrichedFlow) -> Result<Self, RowError> {
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
        ];
        FIXED_LEN
            + strings
                .iter()
                .map(|s| varint_len(s.len()) + s.len())
                .sum::<usize>()
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
/// `SAMPLE_BASE_NS + i µs`.
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
    });
    f.if_name = "eth0".into();
    f.if_mac = "02:42:ac:11:00:02".into();
    f.if_kind = "veth".into();
    f.if_netns = "cni-1234".into();
    f.src_pod = Some(format!("web-{i}"));
    f.src_namespace = Some("shop".into());
    f.dst_service = Some("api".into());
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
        // None becomes "" (unknown).
        assert_eq!(row.dst_pod, "");
        assert_eq!(row.src_workload_kind, "");
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
        assert_eq!(cols.len(), 35);
        assert_eq!(
            &cols[..4],
            &["time_flow_start", "time_flow_end", "time_exported", "host"]
        );
        assert_eq!(cols[9], "direction");
        assert_eq!(cols[34], "dst_service");
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
            + "api".len();
        assert_eq!(row.encoded_len(), FIXED_LEN + 17 + strings);
        assert_eq!(FIXED_LEN, 94);
        assert_eq!(varint_len(127), 1);
        assert_eq!(varint_len(128), 2);
    }
}
