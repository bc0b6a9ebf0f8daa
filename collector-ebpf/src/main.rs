//! flowlens kernel programs: TC/TCX classifiers on ingress and egress that parse each packet
//! (Ethernet with 802.1Q/QinQ, IPv4, IPv6 with extension headers, TCP, UDP, SCTP, ICMP/ICMPv6,
//! fragments, VXLAN/Geneve/GRE inner flows) and add it to the flow table (table.rs); a new flow
//! is marked as the conversation's initiator when its opposite direction has no entry yet (seen
//! either way across the interface: mirror ports deliver both directions as ingress). They
//! never drop or change a packet: every path returns TC_ACT_UNSPEC (TCX "next"), and packets
//! that cannot be parsed are only counted. Packets of watched ports (DNS) are also copied to
//! user space (l7.rs).
#![no_std]
#![no_main]
#![feature(asm_experimental_arch)]

mod atomic;
mod l7;
mod parse;
mod sockets;
mod table;

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    helpers::{bpf_get_prandom_u32, generated::bpf_ktime_get_coarse_ns},
    macros::{classifier, map},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    programs::TcContext,
};
use flowlens_common::{
    FlowKey, FragmentKey, FragmentTransport, TunnelOuter, COUNTER_COUNT, COUNTER_FILTERED,
    COUNTER_SAMPLED_OUT, DIRECTION_EGRESS, DIRECTION_INGRESS, FILTER_CIDR, FILTER_PORT,
    FILTER_PROTOCOL,
};

/// Kernel-side counters, see `flowlens_common::COUNTER_*`.
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

/// Transport fields of in-flight fragmented datagrams, keyed by (addresses, id, protocol).
#[map]
static FRAGMENTS: LruHashMap<FragmentKey, FragmentTransport> =
    LruHashMap::with_max_entries(8192, 0);

/// Outer addresses of tunnel flows, keyed by the inner flow (written when the flow appears).
#[map]
static TUNNELS: LruHashMap<FlowKey, TunnelOuter> = LruHashMap::with_max_entries(16384, 0);

/// 1:N sampling (set at load; 0 or 1 = every packet).
#[unsafe(no_mangle)]
static SAMPLING: u32 = 1;

/// `FILTER_*` bits of the filters in force (set at load).
#[unsafe(no_mangle)]
static FILTERS: u32 = 0;

/// Addresses of interest (either end matches).
#[map]
static FILTER_CIDRS: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(1024, 0);

/// Ports of interest (either end matches).
#[map]
static FILTER_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(1024, 0);

/// IP protocols of interest, indexed by protocol number.
#[map]
static FILTER_PROTOCOLS: Array<u8> = Array::with_max_entries(256, 0);

#[classifier]
pub fn flowlens_ingress(ctx: TcContext) -> i32 {
    account(&ctx, DIRECTION_INGRESS);
    TC_ACT_UNSPEC
}

#[classifier]
pub fn flowlens_egress(ctx: TcContext) -> i32 {
    account(&ctx, DIRECTION_EGRESS);
    TC_ACT_UNSPEC
}

#[inline(always)]
fn account(ctx: &TcContext, direction: u8) {
    let Some(packet) = parse::parse(ctx, direction) else {
        return;
    };
    if !wanted_flow(&packet.key) {
        count(COUNTER_FILTERED);
        return;
    }
    let sampling = unsafe { core::ptr::read_volatile(&SAMPLING) };
    if sampling > 1 && unsafe { bpf_get_prandom_u32() } % sampling != 0 {
        count(COUNTER_SAMPLED_OUT);
        return;
    }
    // Before the packet is counted: an event is in the ring buffer when its packet is in the
    // table (user space reads the table, then the ring buffer).
    l7::tap(ctx, packet);
    // The tick-resolution clock (CLOCK_MONOTONIC_COARSE): a fraction of the cost of the
    // precise one, and flow times need no more than milliseconds.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    table::add(
        &packet.key,
        packet.packets,
        packet.bytes,
        packet.tcp_flags,
        now,
    );
    if !packet.tunnel {
        return;
    }
    if let Some(inner) = parse::inner() {
        let overhead = packet.packets * (inner.inner_start as u64 + packet.offloaded_tag);
        let bytes = packet.bytes.saturating_sub(overhead);
        if table::add(&inner.key, packet.packets, bytes, inner.tcp_flags, now) {
            let _ = TUNNELS.insert(&inner.key, &inner.outer, 0);
        }
    }
}

/// The in-kernel filters on a packet of flow `key`.
#[inline(always)]
fn wanted_flow(key: &FlowKey) -> bool {
    wanted(
        &key.src_addr,
        &key.dst_addr,
        key.src_port,
        key.dst_port,
        key.proto,
    )
}

/// The in-kernel filters (`collector.filter`): every configured kind must match (addresses,
/// ports, protocol; either end for addresses and ports). Used for flows and for dropped packets.
#[inline(always)]
pub(crate) fn wanted(
    src_addr: &[u8; 16],
    dst_addr: &[u8; 16],
    src_port: u16,
    dst_port: u16,
    proto: u8,
) -> bool {
    let filters = unsafe { core::ptr::read_volatile(&FILTERS) };
    if filters == 0 {
        return true;
    }
    if filters & FILTER_CIDR != 0
        && FILTER_CIDRS.get(&Key::new(128, *src_addr)).is_none()
        && FILTER_CIDRS.get(&Key::new(128, *dst_addr)).is_none()
    {
        return false;
    }
    if filters & FILTER_PORT != 0
        && unsafe { FILTER_PORTS.get(&src_port) }.is_none()
        && unsafe { FILTER_PORTS.get(&dst_port) }.is_none()
    {
        return false;
    }
    if filters & FILTER_PROTOCOL != 0 && FILTER_PROTOCOLS.get(proto as u32) != Some(&1) {
        return false;
    }
    true
}

#[inline(always)]
pub(crate) fn count(counter: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(counter) {
        // Per-CPU slot: no other writer.
        unsafe { *c += 1 };
    }
}

pub(crate) fn remember_fragment(key: &FragmentKey, transport: &FragmentTransport) {
    let _ = FRAGMENTS.insert(key, transport, 0);
}

pub(crate) fn fragment_transport(key: &FragmentKey) -> Option<FragmentTransport> {
    unsafe { FRAGMENTS.get(key).copied() }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
