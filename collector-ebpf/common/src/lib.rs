//! Types shared by the kernel programs (collector-ebpf) and user space (collector): the flow
//! key and counters, the flow table's layout (`table`), the L7 tap's events (`l7`), the kernel
//! counters, and the map names.
//! `#[repr(C)]` with explicit padding so both sides agree byte for byte; keys are always fully
//! zero-initialised.
#![no_std]

pub mod l7;
pub mod sockets;
pub mod table;

/// Name of the per-CPU counter array (indexed by the `COUNTER_*` constants).
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Name of the ingress and egress TC programs.
pub const INGRESS_PROGRAM: &str = "flowlens_ingress";
pub const EGRESS_PROGRAM: &str = "flowlens_egress";

/// Packets of flows that found no free slot in the flow table (counted per interface in
/// `table::FLOW_OVERFLOW_MAP` instead).
pub const COUNTER_TABLE_FULL: u32 = 0;
/// Packets that were not IPv4/IPv6 (ARP, LLDP, ...): passed, not recorded.
pub const COUNTER_NON_IP: u32 = 1;
/// Non-first IP fragments whose first fragment was not seen (recorded without ports, ICMP
/// type or code).
pub const COUNTER_FRAGMENT_UNMATCHED: u32 = 2;
/// Packets too short or malformed to parse past the link header: passed, not recorded.
pub const COUNTER_MALFORMED: u32 = 3;
/// Packets left out by the in-kernel filters.
pub const COUNTER_FILTERED: u32 = 4;
/// Packets left out by 1:N sampling.
pub const COUNTER_SAMPLED_OUT: u32 = 5;
/// Packets the L7 tap wanted to copy to user space but found its ring buffer full (`l7`).
pub const COUNTER_L7_LOST: u32 = 6;
/// Number of counters in [`COUNTERS_MAP`].
pub const COUNTER_COUNT: u32 = 7;

/// Global (read-only at load) holding N of 1:N packet sampling; 0 or 1 counts every packet.
pub const SAMPLING_GLOBAL: &str = "SAMPLING";
/// Global (read-only at load) holding the `FILTER_*` bits of the filters in force.
pub const FILTERS_GLOBAL: &str = "FILTERS";
/// Only flows with a source or destination address in `FILTER_CIDRS_MAP`.
pub const FILTER_CIDR: u32 = 1;
/// Only flows with a source or destination port in `FILTER_PORTS_MAP`.
pub const FILTER_PORT: u32 = 2;
/// Only flows whose IP protocol is marked in `FILTER_PROTOCOLS_MAP`.
pub const FILTER_PROTOCOL: u32 = 4;
/// LPM trie of 16-byte addresses (IPv4 as ::ffff:a.b.c.d, prefix length + 96).
pub const FILTER_CIDRS_MAP: &str = "FILTER_CIDRS";
/// Hash of allowed ports (u16, host order) -> 1.
pub const FILTER_PORTS_MAP: &str = "FILTER_PORTS";
/// Array of 256 bytes indexed by IP protocol: 1 = allowed.
pub const FILTER_PROTOCOLS_MAP: &str = "FILTER_PROTOCOLS";

pub const DIRECTION_INGRESS: u8 = 0;
pub const DIRECTION_EGRESS: u8 = 1;

/// `FlowKey::tunnel` of a plain flow.
pub const TUNNEL_NONE: u8 = 0;
/// Inner flow of a VXLAN packet (UDP port 4789); `tunnel_id` is the VNI.
pub const TUNNEL_VXLAN: u8 = 1;
/// Inner flow of a Geneve packet (UDP port 6081); `tunnel_id` is the VNI.
pub const TUNNEL_GENEVE: u8 = 2;
/// Inner flow of a GRE packet (IP protocol 47); `tunnel_id` is the GRE key (0 without key).
pub const TUNNEL_GRE: u8 = 3;

/// Name of the LRU map inner flow key -> [`TunnelOuter`] (the outer addresses of a tunnel flow).
pub const TUNNELS_MAP: &str = "TUNNELS";

/// `FlowStats::flags`: this direction's entry was created while the opposite direction of the
/// conversation had no entry on the same interface (crossing it either way, see
/// [`FlowKey::answer`]), i.e. this side spoke first (side A).
pub const FLOW_INITIATOR: u8 = 1;

/// Flow table key: one entry per (interface, direction, VLAN, addresses, protocol, ports,
/// tunnel). IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`). For ICMP/ICMPv6 the ports
/// are 0 and type/code are set. Inner flows of a tunnel carry its kind and id; their outer
/// addresses are in [`TUNNELS_MAP`]. 56 bytes, 8-aligned (hashed as seven words), no implicit
/// padding.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub ifindex: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub etype: u16,
    pub vlan_id: u16,
    pub proto: u8,
    pub direction: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// VNI or GRE key of the tunnel an inner flow travelled in, 0 for a plain flow.
    pub tunnel_id: u32,
    /// `TUNNEL_*`.
    pub tunnel: u8,
    pub _pad: [u8; 3],
}

impl FlowKey {
    /// The key the opposite direction of the same conversation has on the same interface:
    /// addresses and ports swapped, direction flipped, ICMP echo request <-> reply. `None` for
    /// ICMP messages without an answer type.
    pub fn reverse(&self) -> Option<FlowKey> {
        self.answer(self.direction ^ 1)
    }

    /// The key the opposite direction of the same conversation has on the same interface when
    /// its packets cross it in `direction`: flipped on a host's own interface ([`reverse`]), the
    /// same on a port that receives copies of both directions (mirror, SPAN, TAP: both arrive
    /// as ingress). Addresses and ports swapped, ICMP echo request <-> reply; `None` for ICMP
    /// messages without an answer type.
    ///
    /// [`reverse`]: FlowKey::reverse
    #[inline(always)]
    pub fn answer(&self, direction: u8) -> Option<FlowKey> {
        let mut r = *self;
        r.become_answer(direction).then_some(r)
    }

    /// Turns this key into [`FlowKey::answer`]`(direction)` in place; false (the key is then
    /// unusable) for ICMP messages without an answer type.
    #[inline(always)]
    pub fn become_answer(&mut self, direction: u8) -> bool {
        core::mem::swap(&mut self.src_addr, &mut self.dst_addr);
        core::mem::swap(&mut self.src_port, &mut self.dst_port);
        self.direction = direction;
        match (self.proto, self.icmp_type) {
            (1, 8) => self.icmp_type = 0,
            (1, 0) => self.icmp_type = 8,
            (58, 128) => self.icmp_type = 129,
            (58, 129) => self.icmp_type = 128,
            (1, _) | (58, _) => return false,
            _ => {}
        }
        true
    }

    /// Both directions the opposite direction's packets can cross the interface in (see
    /// [`FlowKey::answer`]): flipped first, then the same.
    pub fn answer_directions(&self) -> [u8; 2] {
        [self.direction ^ 1, self.direction]
    }
}

/// Outer addresses of the tunnel packets that carried an inner flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelOuter {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
}

/// A flow's counters as user space handles them (from a `table::FlowSlot`, or summed over
/// several with [`FlowStats::merge`]). Times are `bpf_ktime_get_ns` (CLOCK_MONOTONIC). 40 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    pub packets: u64,
    pub bytes: u64,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub tcp_flags: u16,
    /// `FLOW_*` bits.
    pub flags: u8,
    pub _pad: [u8; 5],
}

impl FlowStats {
    /// Folds other counters of the same key into these (packets and bytes summed, first and
    /// last packet widened, flags OR'ed).
    pub fn merge(&mut self, other: &FlowStats) {
        if other.packets == 0 {
            return;
        }
        if self.packets == 0 || other.first_seen_ns < self.first_seen_ns {
            self.first_seen_ns = other.first_seen_ns;
        }
        if other.last_seen_ns > self.last_seen_ns {
            self.last_seen_ns = other.last_seen_ns;
        }
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.tcp_flags |= other.tcp_flags;
        self.flags |= other.flags;
    }
}

/// Key of the fragment map: remembers the transport fields of a fragmented datagram's first
/// fragment so its later fragments are counted in the same flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub id: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// The transport fields of a fragmented datagram (from its first fragment): ports, or ICMP
/// type and code.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragmentTransport {
    pub src_port: u16,
    pub dst_port: u16,
    pub icmp_type: u8,
    pub icmp_code: u8,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data #[repr(C)] types without implicit padding.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowStats {}
    unsafe impl aya::Pod for super::sockets::SockKey {}
    unsafe impl aya::Pod for super::sockets::TcpConnStats {}
    unsafe impl aya::Pod for super::sockets::DropKey {}
    unsafe impl aya::Pod for super::sockets::DropStats {}
    unsafe impl aya::Pod for super::sockets::SockOwner {}
    unsafe impl aya::Pod for super::sockets::SockOffsets {}
    unsafe impl aya::Pod for super::TunnelOuter {}
    unsafe impl aya::Pod for super::l7::L7Ports {}
    unsafe impl aya::Pod for super::table::FlowSlot {}
    unsafe impl aya::Pod for super::table::TableLayout {}
    unsafe impl aya::Pod for super::table::OverflowKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<FlowKey>(), 56);
        assert_eq!(core::mem::size_of::<FlowStats>(), 40);
        assert_eq!(core::mem::size_of::<FragmentKey>(), 40);
        assert_eq!(core::mem::size_of::<FragmentTransport>(), 6);
    }

    #[test]
    fn merge_folds_cpus() {
        let mut a = FlowStats::default();
        let b = FlowStats {
            packets: 2,
            bytes: 100,
            first_seen_ns: 50,
            last_seen_ns: 70,
            tcp_flags: 0x02,
            flags: FLOW_INITIATOR,
            _pad: [0; 5],
        };
        let c = FlowStats {
            packets: 1,
            bytes: 60,
            first_seen_ns: 40,
            last_seen_ns: 60,
            tcp_flags: 0x10,
            flags: 0,
            _pad: [0; 5],
        };
        a.merge(&b);
        a.merge(&FlowStats::default());
        a.merge(&c);
        assert_eq!((a.packets, a.bytes), (3, 160));
        assert_eq!(
            (a.first_seen_ns, a.last_seen_ns, a.tcp_flags),
            (40, 70, 0x12)
        );
        assert_eq!(a.flags, FLOW_INITIATOR);
    }

    #[test]
    fn reverse_swaps_ends_and_echo_types() {
        let k = FlowKey {
            src_addr: [1; 16],
            dst_addr: [2; 16],
            src_port: 1000,
            dst_port: 80,
            proto: 6,
            direction: DIRECTION_EGRESS,
            ..Default::default()
        };
        let r = k.reverse().unwrap();
        assert_eq!((r.src_addr, r.dst_addr), ([2; 16], [1; 16]));
        assert_eq!(
            (r.src_port, r.dst_port, r.direction),
            (80, 1000, DIRECTION_INGRESS)
        );
        assert_eq!(r.reverse(), Some(k));
        let ping = FlowKey {
            proto: 1,
            icmp_type: 8,
            ..k
        };
        assert_eq!(ping.reverse().unwrap().icmp_type, 0);
        let unreachable = FlowKey {
            proto: 1,
            icmp_type: 3,
            ..k
        };
        assert_eq!(unreachable.reverse(), None);
        assert_eq!(unreachable.answer(DIRECTION_INGRESS), None);
    }

    #[test]
    fn answers_in_either_direction() {
        let k = FlowKey {
            src_addr: [1; 16],
            dst_addr: [2; 16],
            src_port: 1000,
            dst_port: 53,
            proto: 17,
            direction: DIRECTION_INGRESS,
            ..Default::default()
        };
        let [flipped, same] = k.answer_directions().map(|d| k.answer(d).unwrap());
        assert_eq!(Some(flipped), k.reverse());
        assert_eq!(
            (same.src_addr, same.src_port, same.dst_port, same.direction),
            ([2; 16], 53, 1000, DIRECTION_INGRESS)
        );
        assert_eq!(same.answer(DIRECTION_INGRESS), Some(k));
    }
}
