//! Socket-level programs, off the TC packet path: raw tracepoints (no tracefs needed, CAP_BPF +
//! CAP_PERFMON suffice) that record per conversation
//! - the smoothed RTT of local TCP sockets (tcp_probe, on every segment an established socket
//!   receives) and their retransmitted segments (tcp_retransmit_skb);
//! - packets the kernel drops, with the `enum skb_drop_reason` (kfree_skb), keyed by the
//!   packet's own addresses and ports read from its IP/L4 headers;
//! - the process (tgid, comm, cgroup v2 id) sending or receiving on a TCP/UDP socket
//!   (sock_send_length / sock_recv_length, or kprobes on the tcp/udp send and receive functions
//!   on kernels without them).
//!
//! Struct member offsets come from user space ([`SOCK_OFFSETS`], read from BTF at start); every
//! kernel read goes through bpf_probe_read_kernel, so a wrong offset can only give wrong values,
//! never a fault. The TCP and owner maps are LRU hashes shared by all CPUs: every event of one
//! TCP socket runs under that socket's lock (tcp_rcv_established, the retransmit paths), so its
//! entry has one writer at a time and plain adds are exact (the bpfel target has no atomic
//! read-modify-write in stable Rust). Drops of one conversation can happen on several CPUs at
//! once, so that map is a per-CPU LRU hash (user space sums the CPUs).

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_ktime_get_ns, bpf_probe_read_kernel,
    },
    macros::{kprobe, map, raw_tracepoint},
    maps::{LruHashMap, LruPerCpuHashMap, PerCpuArray},
    programs::{ProbeContext, RawTracePointContext},
};
use flowlens_common::sockets::{
    DropKey, DropStats, SockKey, SockOffsets, SockOwner, TcpConnStats, OFFSET_UNAVAILABLE,
    SOCK_COUNTER_COUNT, SOCK_COUNTER_DROPS, SOCK_COUNTER_DROPS_FILTERED,
    SOCK_COUNTER_DROPS_UNPARSED, SOCK_COUNTER_MAP_FAILED, SOCK_COUNTER_OWNER_WRITES,
    SOCK_COUNTER_READ_FAILED, SOCK_COUNTER_RETRANSMITS, SOCK_COUNTER_RTT_SAMPLES, SOCK_WINDOW,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;
/// An owner entry of the same process is re-confirmed (its `seen_ns` refreshed) at most this
/// often: the common case costs one lookup and no write.
const OWNER_REFRESH_NS: u64 = 1_000_000_000;

/// RTT and retransmits per local TCP socket (local -> remote). Size set at load.
#[map]
static SOCK_TCP: LruHashMap<SockKey, TcpConnStats> = LruHashMap::with_max_entries(32768, 0);

/// Dropped packets per (source -> destination, reason), per CPU. Size set at load.
#[map]
static SOCK_DROPS: LruPerCpuHashMap<DropKey, DropStats> =
    LruPerCpuHashMap::with_max_entries(4096, 0);

/// The process of each local TCP/UDP socket (local -> remote). Size set at load.
#[map]
static SOCK_OWNERS: LruHashMap<SockKey, SockOwner> = LruHashMap::with_max_entries(32768, 0);

/// See `flowlens_common::sockets::SOCK_COUNTER_*`.
#[map]
static SOCK_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SOCK_COUNTER_COUNT, 0);

/// Kernel struct offsets from BTF (set at load; the defaults disable every read).
#[unsafe(no_mangle)]
static SOCK_OFFSETS: SockOffsets = SockOffsets::UNAVAILABLE;

/// One offset, read so the compiler cannot fold the default (the loader rewrites the global).
macro_rules! offset {
    ($field:ident) => {
        unsafe { core::ptr::read_volatile(&raw const SOCK_OFFSETS.$field) }
    };
}

#[raw_tracepoint(tracepoint = "tcp_probe")]
pub fn flowlens_tcp_probe(ctx: RawTracePointContext) -> i32 {
    let sk: u64 = ctx.arg(0);
    let Some(key) = sock_key(sk, IPPROTO_TCP) else {
        return 0;
    };
    let Some(srtt) = read::<u32>(sk, offset!(tcp_srtt_us)) else {
        return 0;
    };
    let srtt_us = srtt >> 3;
    if srtt_us == 0 {
        return 0;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    count(SOCK_COUNTER_RTT_SAMPLES);
    if let Some(stats) = SOCK_TCP.get_ptr_mut(&key) {
        set_rtt(stats, srtt_us, now);
        return 0;
    }
    let fresh = TcpConnStats {
        srtt_us,
        rtt_at_ns: now,
        last_ns: now,
        ..TcpConnStats::default()
    };
    if SOCK_TCP.insert(&key, &fresh, 1).is_ok() {
        return 0;
    }
    match SOCK_TCP.get_ptr_mut(&key) {
        Some(stats) => set_rtt(stats, srtt_us, now),
        None => count(SOCK_COUNTER_MAP_FAILED),
    }
    0
}

#[inline(always)]
fn set_rtt(stats: *mut TcpConnStats, srtt_us: u32, now: u64) {
    // Plain stores: the last writer wins, which is what "the last sample" means.
    unsafe {
        (*stats).srtt_us = srtt_us;
        (*stats).rtt_at_ns = now;
        (*stats).last_ns = now;
    }
}

/// tcp_retransmit_skb(sk, skb): kernels where the tracepoint fires only on success.
#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn flowlens_tcp_retransmit(ctx: RawTracePointContext) -> i32 {
    retransmit(ctx.arg(0), ctx.arg(1));
    0
}

/// tcp_retransmit_skb(sk, skb, err): only successful retransmissions count.
#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn flowlens_tcp_retransmit_err(ctx: RawTracePointContext) -> i32 {
    let err: u64 = ctx.arg(2);
    if err as i32 == 0 {
        retransmit(ctx.arg(0), ctx.arg(1));
    }
    0
}

#[inline(always)]
fn retransmit(sk: u64, skb: u64) {
    let Some(key) = sock_key(sk, IPPROTO_TCP) else {
        return;
    };
    // tcp_skb_pcount(skb): a retransmitted skb may carry several MSS-sized segments.
    let segs = match read::<u16>(skb, offset!(skb_tcp_gso_segs)) {
        Some(n) if n > 0 => n as u64,
        _ => 1,
    };
    let now = unsafe { bpf_ktime_get_ns() };
    count(SOCK_COUNTER_RETRANSMITS);
    if let Some(stats) = SOCK_TCP.get_ptr_mut(&key) {
        add_retransmit(stats, segs, now);
        return;
    }
    let fresh = TcpConnStats {
        retrans_segs: segs,
        retrans_events: 1,
        last_ns: now,
        ..TcpConnStats::default()
    };
    if SOCK_TCP.insert(&key, &fresh, 1).is_ok() {
        return;
    }
    match SOCK_TCP.get_ptr_mut(&key) {
        Some(stats) => add_retransmit(stats, segs, now),
        None => count(SOCK_COUNTER_MAP_FAILED),
    }
}

#[inline(always)]
fn add_retransmit(stats: *mut TcpConnStats, segs: u64, now: u64) {
    // Under the socket's lock: no concurrent writer of this entry.
    unsafe {
        (*stats).retrans_segs += segs;
        (*stats).retrans_events += 1;
        (*stats).last_ns = now;
    }
}

/// kfree_skb(skb, location, reason, ...): every freed skb that was dropped, not consumed.
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn flowlens_kfree_skb(ctx: RawTracePointContext) -> i32 {
    let skb: u64 = ctx.arg(0);
    let reason: u64 = ctx.arg(2);
    let reason = reason as u32;
    if reason == offset!(reason_not_dropped) || reason == offset!(reason_consumed) {
        return 0;
    }
    let Some((conv, len)) = dropped_packet(skb) else {
        count(SOCK_COUNTER_DROPS_UNPARSED);
        return 0;
    };
    if !crate::wanted(
        &conv.src_addr,
        &conv.dst_addr,
        conv.src_port,
        conv.dst_port,
        conv.proto,
    ) {
        count(SOCK_COUNTER_DROPS_FILTERED);
        return 0;
    }
    let key = DropKey {
        conv,
        reason,
        watched: watched(skb) as u32,
    };
    let now = unsafe { bpf_ktime_get_ns() };
    count(SOCK_COUNTER_DROPS);
    if let Some(stats) = SOCK_DROPS.get_ptr_mut(&key) {
        add_drop(stats, len, now);
        return 0;
    }
    let fresh = DropStats {
        packets: 1,
        bytes: len,
        last_ns: now,
    };
    if SOCK_DROPS.insert(&key, &fresh, 1).is_ok() {
        return 0;
    }
    match SOCK_DROPS.get_ptr_mut(&key) {
        Some(stats) => add_drop(stats, len, now),
        None => count(SOCK_COUNTER_MAP_FAILED),
    }
    0
}

#[inline(always)]
fn add_drop(stats: *mut DropStats, len: u64, now: u64) {
    // This CPU's slot: no other writer.
    unsafe {
        (*stats).packets += 1;
        (*stats).bytes += len;
        (*stats).last_ns = now;
    }
}

/// Whether the dropped packet is in the collector's network namespace: its device's, or, before
/// it has one (a local sender's packet), its socket's. True when that cannot be told.
#[inline(always)]
fn watched(skb: u64) -> bool {
    let wanted = offset!(watched_netns);
    if wanted == 0 {
        return true;
    }
    let owner = match read::<u64>(skb, offset!(skb_dev)) {
        Some(dev) if dev != 0 => read::<u64>(dev, offset!(dev_net)),
        _ => read::<u64>(skb, offset!(skb_sk)).and_then(|sk| read::<u64>(sk, offset!(sock_net))),
    };
    match owner.and_then(|net| read::<u32>(net, offset!(net_inum))) {
        Some(inum) => inum == wanted,
        None => true,
    }
}

/// The dropped packet's (protocol, addresses, ports) from its IP and L4 headers
/// (skb->head + skb->network_header), and skb->len.
#[inline(always)]
fn dropped_packet(skb: u64) -> Option<(SockKey, u64)> {
    let protocol = u16::from_be(read::<u16>(skb, offset!(skb_protocol))?);
    let head = read::<u64>(skb, offset!(skb_head))?;
    let network = read::<u16>(skb, offset!(skb_network_header))?;
    let len = read::<u32>(skb, offset!(skb_len))? as u64;
    let ip = head + network as u64;
    let mut key = SockKey::default();
    let l4 = match protocol {
        ETH_P_IP => {
            let h = read::<[u8; 20]>(ip, 0)?;
            if h[0] >> 4 != 4 {
                return None;
            }
            key.proto = h[9];
            key.src_addr = mapped(&[h[12], h[13], h[14], h[15]]);
            key.dst_addr = mapped(&[h[16], h[17], h[18], h[19]]);
            let fragment_offset = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
            if fragment_offset != 0 {
                return Some((key, len));
            }
            ip + ((h[0] & 0x0f) as u64) * 4
        }
        ETH_P_IPV6 => {
            let h = read::<[u8; 40]>(ip, 0)?;
            if h[0] >> 4 != 6 {
                return None;
            }
            key.src_addr.copy_from_slice(&h[8..24]);
            key.dst_addr.copy_from_slice(&h[24..40]);
            let mut next = h[6];
            let mut at = ip + 40;
            // Hop-by-hop, routing, destination options, fragment: a few are enough in practice.
            for _ in 0..4 {
                match next {
                    0 | 43 | 60 => {
                        let e = read::<[u8; 2]>(at, 0)?;
                        next = e[0];
                        at += (e[1] as u64 + 1) * 8;
                    }
                    44 => {
                        let f = read::<[u8; 4]>(at, 0)?;
                        next = f[0];
                        at += 8;
                        if u16::from_be_bytes([f[2], f[3]]) >> 3 != 0 {
                            key.proto = next;
                            return Some((key, len));
                        }
                    }
                    _ => break,
                }
            }
            key.proto = next;
            at
        }
        _ => return None,
    };
    if matches!(key.proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP) {
        let ports = read::<[u8; 4]>(l4, 0)?;
        key.src_port = u16::from_be_bytes([ports[0], ports[1]]);
        key.dst_port = u16::from_be_bytes([ports[2], ports[3]]);
    }
    Some((key, len))
}

/// sock_send_length / sock_recv_length(sk, ret, flags): the process using a socket.
#[raw_tracepoint]
pub fn flowlens_sock_owner(ctx: RawTracePointContext) -> i32 {
    owner(ctx.arg(0));
    0
}

/// The same on tcp_sendmsg/tcp_recvmsg/udp_sendmsg/... (first argument `struct sock *`).
#[kprobe]
pub fn flowlens_sock_owner_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        owner(sk);
    }
    0
}

#[inline(always)]
fn owner(sk: u64) {
    let Some(protocol) = read::<u16>(sk, offset!(sock_protocol)) else {
        return;
    };
    if protocol != IPPROTO_TCP as u16 && protocol != IPPROTO_UDP as u16 {
        return;
    }
    let Some(key) = sock_key(sk, protocol as u8) else {
        return;
    };
    if key.src_port == 0 {
        return;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid == 0 {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(known) = SOCK_OWNERS.get_ptr_mut(&key) {
        unsafe {
            if (*known).tgid == tgid {
                if now.wrapping_sub((*known).seen_ns) > OWNER_REFRESH_NS {
                    (*known).seen_ns = now;
                }
                return;
            }
        }
    }
    let owner = SockOwner {
        tgid,
        _pad: 0,
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        seen_ns: now,
        comm: bpf_get_current_comm().unwrap_or_default(),
    };
    count(SOCK_COUNTER_OWNER_WRITES);
    if SOCK_OWNERS.insert(&key, &owner, 0).is_err() {
        count(SOCK_COUNTER_MAP_FAILED);
    }
}

/// The socket's (local -> remote) key, from `struct sock_common`, with one kernel read.
#[inline(always)]
fn sock_key(sk: u64, proto: u8) -> Option<SockKey> {
    let window = offset!(sock_window);
    let w = read::<[u8; SOCK_WINDOW as usize]>(sk, window)?;
    let family = u16::from_ne_bytes(field::<2>(&w, window, offset!(sock_family))?);
    let mut key = SockKey {
        proto,
        ..SockKey::default()
    };
    match family {
        AF_INET => {
            key.src_addr = mapped(&field::<4>(&w, window, offset!(sock_rcv_saddr))?);
            key.dst_addr = mapped(&field::<4>(&w, window, offset!(sock_daddr))?);
        }
        AF_INET6 => {
            // IPv4 peers of a dual-stack socket are already ::ffff:a.b.c.d here.
            key.src_addr = field::<16>(&w, window, offset!(sock_v6_rcv_saddr))?;
            key.dst_addr = field::<16>(&w, window, offset!(sock_v6_daddr))?;
        }
        _ => return None,
    }
    key.src_port = u16::from_ne_bytes(field::<2>(&w, window, offset!(sock_num))?);
    key.dst_port = u16::from_be_bytes(field::<2>(&w, window, offset!(sock_dport))?);
    Some(key)
}

/// `N` bytes at kernel offset `offset` from a window read at `window`.
#[inline(always)]
fn field<const N: usize>(
    w: &[u8; SOCK_WINDOW as usize],
    window: u32,
    offset: u32,
) -> Option<[u8; N]> {
    let at = offset.checked_sub(window)? as usize;
    let bytes = w.get(at..at + N)?;
    let mut out = [0u8; N];
    out.copy_from_slice(bytes);
    Some(out)
}

/// IPv4 as ::ffff:a.b.c.d; the unset address 0.0.0.0 stays all zeros (like IPv6's ::).
#[inline(always)]
fn mapped(v4: &[u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    if *v4 != [0; 4] {
        out[10] = 0xff;
        out[11] = 0xff;
        out[12..].copy_from_slice(v4);
    }
    out
}

/// Reads a `T` at `base + offset` in kernel memory; `None` if the offset is unknown or the read
/// fails.
#[inline(always)]
fn read<T>(base: u64, offset: u32) -> Option<T> {
    if offset == OFFSET_UNAVAILABLE || base == 0 {
        return None;
    }
    match unsafe { bpf_probe_read_kernel((base + offset as u64) as *const T) } {
        Ok(v) => Some(v),
        Err(_) => {
            count(SOCK_COUNTER_READ_FAILED);
            None
        }
    }
}

#[inline(always)]
fn count(counter: u32) {
    if let Some(c) = SOCK_COUNTERS.get_ptr_mut(counter) {
        // Per-CPU slot: no other writer.
        unsafe { *c += 1 };
    }
}
