//! Types shared by the kernel programs (collector-ebpf) and user space (collector): the flow
//! table's key and value, the kernel counters, and the map names. `#[repr(C)]` with explicit
//! padding so both sides agree byte for byte; keys are always fully zero-initialised.
#![no_std]

/// Name of the kernel flow table (a per-CPU hash map `FlowKey -> FlowStats`).
pub const FLOWS_MAP: &str = "FLOWS";
/// Name of the per-CPU counter array (indexed by the `COUNTER_*` constants).
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Name of the ingress and egress TC programs.
pub const INGRESS_PROGRAM: &str = "flowlens_ingress";
pub const EGRESS_PROGRAM: &str = "flowlens_egress";

/// Packets whose flow could not be recorded because the flow table was full.
pub const COUNTER_TABLE_FULL: u32 = 0;
/// Packets that were not IPv4/IPv6 (ARP, LLDP, ...): passed, not recorded.
pub const COUNTER_NON_IP: u32 = 1;
/// Non-first IP fragments whose first fragment was not seen (recorded without ports).
pub const COUNTER_FRAGMENT_UNMATCHED: u32 = 2;
/// Packets too short or malformed to parse past the link header: passed, not recorded.
pub const COUNTER_MALFORMED: u32 = 3;
/// Packets left out by the in-kernel filters.
pub const COUNTER_FILTERED: u32 = 4;
/// Packets left out by 1:N sampling.
pub const COUNTER_SAMPLED_OUT: u32 = 5;
/// Number of counters in [`COUNTERS_MAP`].
pub const COUNTER_COUNT: u32 = 6;

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

/// Flow table key: one entry per (interface, direction, VLAN, addresses, protocol, ports).
/// IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`). For ICMP/ICMPv6 the ports are 0 and
/// type/code are set. 48 bytes, no implicit padding.
#[repr(C)]
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
}

/// Per-CPU flow counters. User space sums packets/bytes, takes min first / max last seen and ORs
/// the TCP flags across CPUs. Times are `bpf_ktime_get_ns` (CLOCK_MONOTONIC). 40 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    pub packets: u64,
    pub bytes: u64,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    pub tcp_flags: u16,
    pub _pad: [u8; 6],
}

impl FlowStats {
    /// Folds another CPU's counters for the same key into this one.
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
    }
}

/// Key of the fragment map: remembers the ports of a fragmented datagram's first fragment so its
/// later fragments are counted in the same flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub id: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// Ports of a fragmented datagram (from its first fragment).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragmentPorts {
    pub src_port: u16,
    pub dst_port: u16,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data #[repr(C)] types without implicit padding.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowStats {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<FlowKey>(), 48);
        assert_eq!(core::mem::size_of::<FlowStats>(), 40);
        assert_eq!(core::mem::size_of::<FragmentKey>(), 40);
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
            _pad: [0; 6],
        };
        let c = FlowStats {
            packets: 1,
            bytes: 60,
            first_seen_ns: 40,
            last_seen_ns: 60,
            tcp_flags: 0x10,
            _pad: [0; 6],
        };
        a.merge(&b);
        a.merge(&FlowStats::default());
        a.merge(&c);
        assert_eq!((a.packets, a.bytes), (3, 160));
        assert_eq!(
            (a.first_seen_ns, a.last_seen_ns, a.tcp_flags),
            (40, 70, 0x12)
        );
    }
}
