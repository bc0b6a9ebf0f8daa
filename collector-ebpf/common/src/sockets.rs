//! Types shared by the socket programs (collector-ebpf/src/sockets.rs: TCP RTT and retransmits,
//! packet drops with the kernel's reason, the process owning a socket) and their reader
//! (collector/src/sockets/). `#[repr(C)]` with explicit padding; keys are fully zeroed before
//! they are filled.
//!
//! aya-ebpf has no CO-RE, so the programs never hard-code a kernel struct offset: user space
//! reads them from the kernel's BTF at start and hands them over in [`SockOffsets`] (a read-only
//! global, constant for the verifier).

/// LRU hash `SockKey (local -> remote) -> TcpConnStats`, filled by the tcp_probe and
/// tcp_retransmit_skb programs.
pub const SOCK_TCP_MAP: &str = "SOCK_TCP";
/// Per-CPU LRU hash `DropKey (packet source -> destination, reason) -> DropStats`, filled by the
/// kfree_skb program.
pub const SOCK_DROPS_MAP: &str = "SOCK_DROPS";
/// LRU hash `SockKey (local -> remote, remote zero for an unconnected socket, local address zero
/// for a wildcard bind) -> SockOwner`, filled on socket sends and receives.
pub const SOCK_OWNERS_MAP: &str = "SOCK_OWNERS";
/// Per-CPU counters of the socket programs, indexed by the `SOCK_COUNTER_*` constants.
pub const SOCK_COUNTERS_MAP: &str = "SOCK_COUNTERS";
/// Read-only global holding the [`SockOffsets`] found in the kernel's BTF.
pub const SOCK_OFFSETS_GLOBAL: &str = "SOCK_OFFSETS";

/// Raw tracepoint tcp_probe(sk, skb): every segment received on an established TCP socket.
pub const TCP_PROBE_PROGRAM: &str = "flowlens_tcp_probe";
/// Raw tracepoint tcp_retransmit_skb(sk, skb) (kernels before the `err` argument).
pub const TCP_RETRANSMIT_PROGRAM: &str = "flowlens_tcp_retransmit";
/// Raw tracepoint tcp_retransmit_skb(sk, skb, err): counts only err == 0.
pub const TCP_RETRANSMIT_ERR_PROGRAM: &str = "flowlens_tcp_retransmit_err";
/// Raw tracepoint kfree_skb(skb, location, reason, ...).
pub const KFREE_SKB_PROGRAM: &str = "flowlens_kfree_skb";
/// Raw tracepoints sock_send_length / sock_recv_length(sk, ret, flags) (Linux 6.4+).
pub const SOCK_OWNER_PROGRAM: &str = "flowlens_sock_owner";
/// The same as a kprobe on tcp/udp send and receive functions (first argument `struct sock *`),
/// for kernels without those tracepoints.
pub const SOCK_OWNER_KPROBE_PROGRAM: &str = "flowlens_sock_owner_kprobe";

/// RTT samples taken (tcp_probe events on TCP/IP sockets).
pub const SOCK_COUNTER_RTT_SAMPLES: u32 = 0;
/// Successful retransmissions seen (one per skb, which may carry several segments).
pub const SOCK_COUNTER_RETRANSMITS: u32 = 1;
/// Dropped packets recorded.
pub const SOCK_COUNTER_DROPS: u32 = 2;
/// Dropped packets that were not IPv4/IPv6 or whose headers could not be read.
pub const SOCK_COUNTER_DROPS_UNPARSED: u32 = 3;
/// Dropped packets left out by the in-kernel filters (`collector.filter`).
pub const SOCK_COUNTER_DROPS_FILTERED: u32 = 7;
/// Writes of a socket's owner (first sight, or another process).
pub const SOCK_COUNTER_OWNER_WRITES: u32 = 4;
/// Map inserts that failed (should stay 0: the maps are LRU).
pub const SOCK_COUNTER_MAP_FAILED: u32 = 5;
/// Kernel reads (bpf_probe_read_kernel) that failed.
pub const SOCK_COUNTER_READ_FAILED: u32 = 6;
/// Number of counters in [`SOCK_COUNTERS_MAP`].
pub const SOCK_COUNTER_COUNT: u32 = 8;

/// An offset the kernel does not have (the feature needing it is disabled).
pub const OFFSET_UNAVAILABLE: u32 = u32::MAX;

/// Bytes of `struct sock` read at once from `SockOffsets::sock_window`: they hold every
/// `sock_common` field of the key (family, addresses, ports), so building a socket's key costs one
/// bpf_probe_read_kernel instead of six.
pub const SOCK_WINDOW: u32 = 96;

/// One end pair of a conversation: for sockets `src` is the local end and `dst` the remote one,
/// for drops `src` is the dropped packet's source. Addresses as in `FlowKey` (IPv4 mapped to
/// `::ffff:a.b.c.d`), except that an unset address (unconnected socket, wildcard bind) is all
/// zeros. Ports in host order. 40 bytes, no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SockKey {
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}

/// A TCP socket's smoothed RTT at its last received segment and its retransmissions
/// (cumulative; written under the socket's lock). Times are `bpf_ktime_get_ns`. 40 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpConnStats {
    /// Segments retransmitted (`tcp_skb_pcount` of each retransmitted skb).
    pub retrans_segs: u64,
    /// Retransmitted skbs (tracepoint events).
    pub retrans_events: u64,
    /// The kernel's srtt in microseconds (`tcp_sock.srtt_us >> 3`) at `rtt_at_ns`; 0 = none yet.
    pub srtt_us: u32,
    pub _pad: u32,
    pub rtt_at_ns: u64,
    /// Last event of any kind.
    pub last_ns: u64,
}

/// Key of the drops map: the dropped packets' conversation (source -> destination), the
/// kernel's reason (`enum skb_drop_reason` value) and whether the drop happened in the
/// collector's network namespace. 48 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DropKey {
    pub conv: SockKey,
    pub reason: u32,
    /// 1: the packet's device (or, without one, its socket) is in the network namespace
    /// `SockOffsets::watched_netns`, or that is 0 or unreadable; 0: another namespace.
    pub watched: u32,
}

/// Packets of one (source, destination, reason) dropped by the kernel on one CPU (cumulative).
/// User space sums the CPUs. 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropStats {
    pub packets: u64,
    /// Sum of skb->len at the drop.
    pub bytes: u64,
    pub last_ns: u64,
}

/// The process last seen sending or receiving on a socket. 40 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOwner {
    /// Thread-group id in the initial PID namespace.
    pub tgid: u32,
    pub _pad: u32,
    /// cgroup v2 id of the task (`bpf_get_current_cgroup_id`).
    pub cgroup_id: u64,
    /// Last time the owner was confirmed (refreshed at most once a second).
    pub seen_ns: u64,
    /// Task comm of the thread that wrote the entry, NUL-padded.
    pub comm: [u8; 16],
}

/// Byte offsets of the kernel struct members the socket programs read, from BTF (or
/// [`OFFSET_UNAVAILABLE`]). `sock_*` are offsets in `struct sock`, `skb_*` in `struct sk_buff`.
/// The key fields (`sock_family` .. `sock_v6_rcv_saddr`) all lie within [`SOCK_WINDOW`] bytes
/// from `sock_window`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockOffsets {
    pub sock_window: u32,
    pub sock_family: u32,
    pub sock_daddr: u32,
    pub sock_rcv_saddr: u32,
    pub sock_dport: u32,
    pub sock_num: u32,
    pub sock_v6_daddr: u32,
    pub sock_v6_rcv_saddr: u32,
    pub sock_protocol: u32,
    /// `tcp_sock.srtt_us`.
    pub tcp_srtt_us: u32,
    pub skb_head: u32,
    pub skb_len: u32,
    pub skb_protocol: u32,
    pub skb_network_header: u32,
    /// `sk_buff.cb` + `tcp_skb_cb.tcp_gso_segs`: segments in a TCP skb.
    pub skb_tcp_gso_segs: u32,
    /// `enum skb_drop_reason` values that are not drops (SKB_NOT_DROPPED_YET, SKB_CONSUMED).
    pub reason_not_dropped: u32,
    pub reason_consumed: u32,
    /// `sk_buff.dev`, `sk_buff.sk`, `net_device.nd_net.net`, `sock.__sk_common.skc_net.net` and
    /// `net.ns.inum`: where a dropped packet's network namespace is read.
    pub skb_dev: u32,
    pub skb_sk: u32,
    pub dev_net: u32,
    pub sock_net: u32,
    pub net_inum: u32,
    /// Inode number of the collector's network namespace (`ns.inum`); 0: every drop counts as
    /// watched.
    pub watched_netns: u32,
}

impl SockOffsets {
    /// Every offset unavailable (every read disabled), no namespace watched.
    pub const UNAVAILABLE: SockOffsets = SockOffsets {
        sock_window: OFFSET_UNAVAILABLE,
        sock_family: OFFSET_UNAVAILABLE,
        sock_daddr: OFFSET_UNAVAILABLE,
        sock_rcv_saddr: OFFSET_UNAVAILABLE,
        sock_dport: OFFSET_UNAVAILABLE,
        sock_num: OFFSET_UNAVAILABLE,
        sock_v6_daddr: OFFSET_UNAVAILABLE,
        sock_v6_rcv_saddr: OFFSET_UNAVAILABLE,
        sock_protocol: OFFSET_UNAVAILABLE,
        tcp_srtt_us: OFFSET_UNAVAILABLE,
        skb_head: OFFSET_UNAVAILABLE,
        skb_len: OFFSET_UNAVAILABLE,
        skb_protocol: OFFSET_UNAVAILABLE,
        skb_network_header: OFFSET_UNAVAILABLE,
        skb_tcp_gso_segs: OFFSET_UNAVAILABLE,
        reason_not_dropped: 0,
        reason_consumed: 1,
        skb_dev: OFFSET_UNAVAILABLE,
        skb_sk: OFFSET_UNAVAILABLE,
        dev_net: OFFSET_UNAVAILABLE,
        sock_net: OFFSET_UNAVAILABLE,
        net_inum: OFFSET_UNAVAILABLE,
        watched_netns: 0,
    };
}

impl Default for SockOffsets {
    fn default() -> Self {
        Self::UNAVAILABLE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<SockKey>(), 40);
        assert_eq!(core::mem::size_of::<TcpConnStats>(), 40);
        assert_eq!(core::mem::size_of::<DropKey>(), 48);
        assert_eq!(core::mem::size_of::<DropStats>(), 24);
        assert_eq!(core::mem::size_of::<SockOwner>(), 40);
        assert_eq!(core::mem::size_of::<SockOffsets>(), 23 * 4);
    }
}
