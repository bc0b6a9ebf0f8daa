//! flowlens' documented counting rules applied to tshark's view of the replayed captures: the
//! conversation rows ClickHouse must hold, the totals, and the collector's kernel counters.
//! Every rule is stated where it is applied; the input is only what tshark dissected.
//!
//! 1. A frame whose EtherType (after VLAN tags) is IPv4 or IPv6 counts, with its `frame.len`
//!    (all its L2 bytes, VLAN tags included), when both addresses of that header can be read;
//!    otherwise it is *malformed*. Any other EtherType (ARP, ...) is *non-IP*. Neither kind is
//!    in a flow.
//! 2. A flow is (innermost VLAN id, addresses, IP protocol, ports or ICMP type and code). Its
//!    TCP flags are the OR of its packets' NS..FIN bits.
//! 3. A non-first fragment takes the ports (ICMP: type and code) of its datagram's first
//!    fragment (same addresses, id and protocol) if that was seen earlier, in any capture;
//!    otherwise it has none (0) and counts as an *unmatched fragment*.
//! 4. A conversation joins both directions of a flow. ICMP/ICMPv6 echo request and reply join
//!    (the requester is one end); every other ICMP type is one-way, a conversation of its own.
//!    Side A is the end that sent the conversation's first frame.
//! 5. A whole (not fragmented) VXLAN (UDP to 4789), Geneve (UDP to 6081) or GRE packet counts
//!    in its outer flow and also in the flow it carries, whose bytes start at the inner frame
//!    (its Ethernet header, or its IP header when there is none). That inner conversation is a
//!    *duplicate* (its packets are already in the outer one) and names the outer addresses of
//!    its first A->B packet. IPv6 in IPv4 (protocol 41) and in UDP (Teredo) are not
//!    decapsulated: only the outer flow counts.
//! 6. Every replayed frame arrives as ingress: both directions of every conversation too.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use super::tshark::{Frame, Kind, Net, Transport};

/// A conversation as a `flows` row identifies it, oriented A->B.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Row {
    pub vlan: u16,
    pub src: IpAddr,
    pub src_port: u16,
    pub dst: IpAddr,
    pub dst_port: u16,
    pub proto: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub tunnel: String,
    pub tunnel_id: u32,
    /// Outer source and destination of the A->B tunnel packets (inner conversations).
    pub outer: Option<(IpAddr, IpAddr)>,
    pub direction: String,
    pub duplicate: bool,
}

/// Packets, bytes and TCP flags A->B and B->A.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub packets: u64,
    pub bytes: u64,
    pub tcp_flags: u16,
    pub reverse_packets: u64,
    pub reverse_bytes: u64,
    pub reverse_tcp_flags: u16,
}

/// What ClickHouse and the collector's counters must show after the captures were replayed.
#[derive(Debug, Default)]
pub struct Expected {
    pub conversations: BTreeMap<Row, Counts>,
    /// Packets and bytes of the rows that are not duplicates.
    pub packets: u64,
    pub bytes: u64,
    pub malformed: u64,
    pub non_ip: u64,
    pub fragment_unmatched: u64,
    /// First fragments' transport fields by (source, destination, id, protocol).
    first_fragments: HashMap<(IpAddr, IpAddr, u32, u8), Transport>,
    /// Conversation identity -> its row (fixed by its first frame).
    rows: HashMap<Identity, Row>,
}

/// What makes two frames one conversation (rule 4): the ends unordered, except ICMP, where
/// an echo conversation is (requester, responder) and any other type is one-way.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Identity {
    vlan: u16,
    proto: u8,
    tunnel: (&'static str, u32),
    ends: [(IpAddr, u16); 2],
    icmp: (u8, u8),
}

/// A flow as one frame carries it (rules 2 and 3 applied).
#[derive(Debug, Clone, Copy)]
struct Flow {
    vlan: u16,
    src: (IpAddr, u16),
    dst: (IpAddr, u16),
    proto: u8,
    icmp: (u8, u8),
    tcp_flags: u16,
}

/// The TCP flag bits flowlens keeps (NS, CWR, ECE, URG, ACK, PSH, RST, SYN, FIN).
const TCP_FLAGS: u16 = 0x01ff;

impl Flow {
    fn identity(&self, tunnel: (&'static str, u32)) -> Identity {
        let (proto, (t, code)) = (self.proto, self.icmp);
        let (ends, icmp) = match (proto, t) {
            (1, 8) | (58, 128) => ([self.src, self.dst], (t, code)),
            (1, 0) => ([self.dst, self.src], (8, code)),
            (58, 129) => ([self.dst, self.src], (128, code)),
            (1 | 58, _) => ([self.src, self.dst], (t, code)),
            _ => {
                let mut ends = [self.src, self.dst];
                ends.sort();
                (ends, (0, 0))
            }
        };
        Identity {
            vlan: self.vlan,
            proto,
            tunnel,
            ends,
            icmp,
        }
    }
}

impl Expected {
    /// Applies the rules to one capture's frames, in replay order.
    pub fn add(&mut self, frames: &[Frame]) {
        for frame in frames {
            let packet = match &frame.kind {
                Kind::NonIp => {
                    self.non_ip += 1;
                    continue;
                }
                Kind::Malformed => {
                    self.malformed += 1;
                    continue;
                }
                Kind::Ip(p) => p,
            };
            self.packets += 1;
            self.bytes += frame.len;
            let outer = self.flow(packet.vlan, &packet.net, true);
            self.count(outer, ("", 0), frame.len, None);
            let whole = packet.net.fragment.is_none();
            let Some(inner) = packet.inner.as_ref().filter(|_| whole) else {
                continue;
            };
            let port = match packet.net.transport {
                Transport::Ports(_, dst) => dst,
                _ => 0,
            };
            let decapsulated = match inner.tunnel {
                "vxlan" => packet.net.proto == 17 && port == 4789,
                "geneve" => packet.net.proto == 17 && port == 6081,
                _ => packet.net.proto == 47,
            };
            if decapsulated {
                let flow = self.flow(inner.vlan, &inner.net, false);
                let outer_ends = (packet.net.src, packet.net.dst);
                self.count(
                    flow,
                    (inner.tunnel, inner.id),
                    frame.len - inner.offset,
                    Some(outer_ends),
                );
            }
        }
    }

    /// The flow of a network header, with rule 3 for fragments (`remember`: the outer packet,
    /// whose first fragments are remembered).
    fn flow(&mut self, vlan: u16, net: &Net, remember: bool) -> Flow {
        let mut transport = net.transport;
        if let (Some(f), true) = (net.fragment, remember) {
            let key = (net.src, net.dst, f.id, net.proto);
            if f.is_first() {
                self.first_fragments.insert(key, transport);
            } else if f.is_later() {
                transport = match self.first_fragments.get(&key) {
                    Some(t) => *t,
                    None => {
                        self.fragment_unmatched += 1;
                        Transport::None
                    }
                };
            }
        }
        let (ports, icmp) = match transport {
            Transport::Ports(s, d) => ((s, d), (0, 0)),
            Transport::Icmp(t, c) => ((0, 0), (t, c)),
            Transport::None => ((0, 0), (0, 0)),
        };
        Flow {
            vlan,
            src: (net.src, ports.0),
            dst: (net.dst, ports.1),
            proto: net.proto,
            icmp,
            tcp_flags: net.tcp_flags & TCP_FLAGS,
        }
    }

    fn count(
        &mut self,
        flow: Flow,
        tunnel: (&'static str, u32),
        bytes: u64,
        outer: Option<(IpAddr, IpAddr)>,
    ) {
        let row = self
            .rows
            .entry(flow.identity(tunnel))
            .or_insert_with(|| Row {
                vlan: flow.vlan,
                src: flow.src.0,
                src_port: flow.src.1,
                dst: flow.dst.0,
                dst_port: flow.dst.1,
                proto: flow.proto,
                icmp_type: flow.icmp.0,
                icmp_code: flow.icmp.1,
                tunnel: tunnel.0.to_string(),
                tunnel_id: tunnel.1,
                outer,
                direction: "ingress".into(),
                duplicate: !tunnel.0.is_empty(),
            })
            .clone();
        let c = self.conversations.entry(row.clone()).or_default();
        if (flow.src, flow.dst) == ((row.src, row.src_port), (row.dst, row.dst_port)) {
            c.packets += 1;
            c.bytes += bytes;
            c.tcp_flags |= flow.tcp_flags;
        } else {
            c.reverse_packets += 1;
            c.reverse_bytes += bytes;
            c.reverse_tcp_flags |= flow.tcp_flags;
        }
    }
}
