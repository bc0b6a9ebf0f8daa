//! Builds the Avro `RawFlow` of an exported conversation (both directions' kernel entries), with
//! kernel monotonic timestamps converted to unix time, plus what the socket programs saw of it
//! (RTT, retransmits, drops, owning processes), and the drop-only records of conversations no
//! watched interface saw.

use std::net::Ipv6Addr;

use flowlens_common::{
    FlowKey, TunnelOuter, DIRECTION_INGRESS, TUNNEL_GENEVE, TUNNEL_GRE, TUNNEL_VXLAN,
};
use flowlens_schemas::{Direction, Process, RawFlow};

use crate::clock::Clock;
use crate::sockets::{ConnExtras, Endpoint, ProcessInfo, SocketStats};
use crate::table::Exported;

/// Builds the Avro record for one conversation counted under 1:`sampling` sampling. `outer`
/// holds the outer addresses of the A->B tunnel packets for an inner flow.
pub fn raw_flow(
    host: &str,
    exported: &Exported,
    duplicate: bool,
    outer: Option<TunnelOuter>,
    clock: Clock,
    sampling: u32,
) -> RawFlow {
    let mut flow = RawFlow::default();
    fill_raw_flow(&mut flow, host, exported, duplicate, outer, clock, sampling);
    flow
}

/// [`raw_flow`] into an existing record, reusing its strings' memory (a scan makes records a
/// chunk at a time into the same buffer: no allocation per record).
pub fn fill_raw_flow(
    flow: &mut RawFlow,
    host: &str,
    exported: &Exported,
    duplicate: bool,
    outer: Option<TunnelOuter>,
    clock: Clock,
    sampling: u32,
) {
    let reuse = |s: &mut String, value: &str| {
        let mut s = std::mem::take(s);
        s.clear();
        s.push_str(value);
        s
    };
    let c = &exported.conversation;
    let key = c.key();
    let (ab, ba) = (c.a_to_b.map(|(_, s)| s), c.b_to_a.map(|(_, s)| s));
    let ab = ab.unwrap_or_default();
    let ba = ba.unwrap_or_default();
    *flow = RawFlow {
        host: reuse(&mut flow.host, host),
        ifindex: key.ifindex as i32,
        direction: if key.direction == DIRECTION_INGRESS {
            Direction::Ingress
        } else {
            Direction::Egress
        },
        time_flow_start_ns: clock.to_unix_ns(c.first_seen_ns()),
        time_flow_end_ns: clock.to_unix_ns(c.last_seen_ns()),
        time_exported_ns: clock.unix_now_ns(),
        etype: key.etype.into(),
        vlan_id: key.vlan_id.into(),
        proto: key.proto.into(),
        src_addr: Ipv6Addr::from(key.src_addr),
        dst_addr: Ipv6Addr::from(key.dst_addr),
        src_port: key.src_port.into(),
        dst_port: key.dst_port.into(),
        icmp_type: key.icmp_type.into(),
        icmp_code: key.icmp_code.into(),
        tcp_flags: ab.tcp_flags.into(),
        packets: ab.packets as i64,
        bytes: ab.bytes as i64,
        sampling_rate: sampling.max(1) as i32,
        reverse_packets: ba.packets as i64,
        reverse_bytes: ba.bytes as i64,
        reverse_tcp_flags: ba.tcp_flags.into(),
        end_reason: reuse(&mut flow.end_reason, exported.ending.as_str()),
        tunnel: reuse(
            &mut flow.tunnel,
            match key.tunnel {
                TUNNEL_VXLAN => "vxlan",
                TUNNEL_GENEVE => "geneve",
                TUNNEL_GRE => "gre",
                _ => "",
            },
        ),
        drop_reason: reuse(&mut flow.drop_reason, ""),
        tunnel_id: key.tunnel_id.into(),
        outer_src_addr: outer.map(|o| Ipv6Addr::from(o.src_addr)),
        outer_dst_addr: outer.map(|o| Ipv6Addr::from(o.dst_addr)),
        duplicate,
        ..RawFlow::default()
    };
}

/// Fills the socket-derived fields of `flow`: the processes owning A's and B's local sockets,
/// and, when `claim` is set, the conversation's RTT, retransmits and drops since the previous
/// scan (taken from `sockets`, so they land on one record only).
pub fn add_socket_fields(
    flow: &mut RawFlow,
    key: &FlowKey,
    sockets: &mut SocketStats,
    claim: bool,
) {
    let proto = key.proto;
    let (a, b) = Endpoint::ends((key.src_addr, key.src_port), (key.dst_addr, key.dst_port));
    flow.src_process = sockets.process(proto, &a, &b).map(process);
    flow.dst_process = sockets.process(proto, &b, &a).map(process);
    if claim {
        if let Some(x) = sockets.take(proto, &a, &b) {
            set_extras(flow, x);
        }
    }
}

/// A record for a conversation the kernel dropped packets of while no watched interface saw it
/// in this interval (e.g. dropped on its way out, before egress): no packets, only the drops.
pub fn drop_only(
    host: &str,
    proto: u8,
    a: &Endpoint,
    b: &Endpoint,
    extras: ConnExtras,
    clock: Clock,
    sampling: u32,
) -> RawFlow {
    let v4 = Ipv6Addr::from(a.addr).to_ipv4_mapped().is_some();
    let now = clock.unix_now_ns();
    let mut flow = RawFlow {
        host: host.to_string(),
        time_flow_start_ns: now,
        time_flow_end_ns: now,
        time_exported_ns: now,
        etype: if v4 { 0x0800 } else { 0x86DD },
        proto: proto.into(),
        src_addr: Ipv6Addr::from(a.addr),
        dst_addr: Ipv6Addr::from(b.addr),
        src_port: a.port.into(),
        dst_port: b.port.into(),
        sampling_rate: sampling.max(1) as i32,
        ..RawFlow::default()
    };
    set_extras(&mut flow, extras);
    flow
}

fn set_extras(flow: &mut RawFlow, x: ConnExtras) {
    flow.rtt_ns = x.rtt_ns as i64;
    flow.retransmits = x.retransmits as i64;
    flow.drops = x.drops as i64;
    flow.drop_bytes = x.drop_bytes as i64;
    flow.drop_reason = x.drop_reason;
}

fn process(p: ProcessInfo) -> Process {
    Process {
        pid: p.pid as i32,
        comm: p.comm,
        cgroup_id: p.cgroup_id as i64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_conversation_and_times() {
        use crate::conversation::{Conversation, Ending};
        use flowlens_common::FlowStats;
        let key = FlowKey {
            src_addr: std::net::Ipv4Addr::new(10, 0, 0, 1)
                .to_ipv6_mapped()
                .octets(),
            dst_addr: Ipv6Addr::LOCALHOST.octets(),
            ifindex: 7,
            src_port: 1234,
            dst_port: 53,
            etype: 0x0800,
            proto: 17,
            direction: 1,
            tunnel: TUNNEL_VXLAN,
            tunnel_id: 42,
            ..Default::default()
        };
        let stats = |packets, first, last| FlowStats {
            packets,
            bytes: packets * 100,
            first_seen_ns: first,
            last_seen_ns: last,
            ..Default::default()
        };
        let exported = Exported {
            conversation: Conversation {
                key,
                a_to_b: Some((key, stats(3, 1_000, 2_000))),
                b_to_a: Some((key.reverse().unwrap(), stats(2, 1_500, 2_500))),
            },
            ending: Ending::Idle,
        };
        let clock = crate::clock::tests::clock_at(10_000, 5_000);
        let outer = TunnelOuter {
            src_addr: [1; 16],
            dst_addr: [2; 16],
        };
        let r = raw_flow("h", &exported, true, Some(outer), clock, 1);
        assert_eq!(r.direction, Direction::Egress);
        assert_eq!(r.src_ip().to_string(), "10.0.0.1");
        assert_eq!((r.time_flow_start_ns, r.time_flow_end_ns), (6_000, 7_500));
        assert_eq!((r.packets, r.bytes, r.dst_port, r.ifindex), (3, 300, 53, 7));
        assert_eq!((r.reverse_packets, r.reverse_bytes), (2, 200));
        assert_eq!((r.end_reason.as_str(), r.duplicate), ("idle", true));
        assert_eq!((r.tunnel.as_str(), r.tunnel_id), ("vxlan", 42));
        assert_eq!(r.outer_dst_addr, Some(Ipv6Addr::from([2; 16])));
    }
}
