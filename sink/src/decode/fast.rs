//! The fast path: an EnrichedFlow datum read by its writer's plan into a `RowRef` whose strings
//! borrow from the payload; `None` for anything it does not read exactly.

use std::net::Ipv6Addr;

use flowlens_schemas::binary::Reader;

use super::plan::{plan, Target};
use crate::row::{DirectionColumn, Latencies, RowRef};

/// The row and whether the record carries an origin.
pub(super) fn fast(payload: &[u8]) -> Option<(RowRef<'_>, bool)> {
    let (plan, datum) = plan(payload)?;
    let mut r = Reader::new(datum);
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
        dns_counts: [0; 8],
        dns_latency_sum_ns: 0,
        dns_latency_max_ns: 0,
        dns_latencies_us: Latencies::EMPTY,
        dns_last_query: "",
        dns_last_query_type: 0,
        http_counts: [0; 8],
        http_latency_sum_ns: 0,
        http_latency_max_ns: 0,
        http_latencies_us: Latencies::EMPTY,
        http_last_method: "",
        http_last_path: "",
        http_last_status: 0,
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
            Target::Dns => {
                if r.present()? {
                    dns(&mut r, &mut row)?;
                }
            }
            Target::Http => {
                if r.present()? {
                    http(&mut r, &mut row)?;
                }
            }
            Target::Skip => r.skip(kind)?,
        }
    }
    // One message is exactly one datum.
    r.rest().is_empty().then_some((row, has_origin))
}

/// The fields of a present `Dns` into the row's dns_* columns; the latencies stay in the datum
/// (checked here to fit `UInt32`), read again when the row is written.
fn dns<'a>(r: &mut Reader<'a>, row: &mut RowRef<'a>) -> Option<()> {
    for count in &mut row.dns_counts {
        *count = u32::try_from(r.long()?).ok()?;
    }
    row.dns_latency_sum_ns = u64::try_from(r.long()?).ok()?;
    row.dns_latency_max_ns = u64::try_from(r.long()?).ok()?;
    row.dns_latencies_us = latencies(r)?;
    row.dns_last_query = r.opt_str()?;
    row.dns_last_query_type = u16::try_from(r.int()?).ok()?;
    Some(())
}

/// The fields of a present `Http` into the row's http_* columns, as [`dns`].
fn http<'a>(r: &mut Reader<'a>, row: &mut RowRef<'a>) -> Option<()> {
    for count in &mut row.http_counts {
        *count = u32::try_from(r.long()?).ok()?;
    }
    row.http_latency_sum_ns = u64::try_from(r.long()?).ok()?;
    row.http_latency_max_ns = u64::try_from(r.long()?).ok()?;
    row.http_latencies_us = latencies(r)?;
    row.http_last_method = r.opt_str()?;
    row.http_last_path = r.opt_str()?;
    row.http_last_status = u16::try_from(r.int()?).ok()?;
    Some(())
}

/// A one-block array of latencies, each checked to fit `UInt32`, left in the datum.
fn latencies<'a>(r: &mut Reader<'a>) -> Option<Latencies<'a>> {
    let count = r.block()?;
    if count == 0 {
        return Some(Latencies::EMPTY);
    }
    let items = r.rest();
    for _ in 0..count {
        u32::try_from(r.long()?).ok()?;
    }
    let items = &items[..items.len() - r.rest().len()];
    r.block_end()?;
    Some(Latencies::Avro { count, items })
}
