//! The L7 tap: a TCP or UDP packet with payload to or from a port of [`L7_PORTS`] has its flow
//! key, a precise timestamp and its payload's first bytes copied to user space through the
//! [`L7_EVENTS`] ring buffer, where it is parsed (`collector/src/l7`): every such packet of a
//! DNS port, and the TCP segments of an HTTP port whose payload starts an HTTP/1.x message
//! (four bytes read and compared here). Other packets pay one comparison per watched port; with
//! no port watched the tap is off.

use aya_ebpf::{
    bindings::__sk_buff,
    cty::c_void,
    helpers::generated::{bpf_ktime_get_ns, bpf_skb_load_bytes},
    macros::map,
    maps::RingBuf,
    programs::TcContext,
};
use flowlens_common::{
    l7::{L7Event, L7Ports, HTTP_STARTS, L7_CAPTURE, L7_HTTP, L7_MAX_PORTS, L7_RING_BYTES},
    COUNTER_L7_LOST,
};

use crate::count;
use crate::parse::Packet;

/// `bpf_ringbuf_submit` flag: no wakeup of a reader waiting on the ring buffer.
const BPF_RB_NO_WAKEUP: u64 = 1;

/// The watched ports (set at load; all 0: off).
#[unsafe(no_mangle)]
static L7_PORTS: L7Ports = L7Ports {
    ports: [0; L7_MAX_PORTS],
    kinds: [0; L7_MAX_PORTS],
};

const IPPROTO_TCP: u8 = 6;

/// Tapped packets, to user space.
#[map]
static L7_EVENTS: RingBuf = RingBuf::with_byte_size(L7_RING_BYTES, 0);

/// Copies `packet` to user space when one of its ports is watched.
#[inline(always)]
pub fn tap(ctx: &TcContext, packet: &Packet) {
    if packet.payload == 0 {
        return;
    }
    let watched = unsafe { core::ptr::read_volatile(&L7_PORTS) };
    let key = &packet.key;
    let mut kind = 0;
    for (port, k) in watched.ports.iter().zip(watched.kinds.iter()) {
        if *port == 0 {
            break;
        }
        if *port == key.src_port || *port == key.dst_port {
            kind = *k;
            break;
        }
    }
    if kind == 0 {
        return;
    }
    let len = ctx.len() as u64;
    if len <= packet.payload {
        return;
    }
    if kind == L7_HTTP && !(key.proto == IPPROTO_TCP && starts_http(ctx, packet.payload)) {
        return;
    }
    flowlens_l7_copy(ctx.skb.skb, packet.payload, len - packet.payload);
}

/// Whether the payload at `payload` starts with one of [`HTTP_STARTS`] (a shorter payload does
/// not: the helper fails).
#[inline(always)]
fn starts_http(ctx: &TcContext, payload: u64) -> bool {
    let mut first = [0u8; 4];
    // The raw helper with a constant length (aya's wrapper may ask for 0 bytes).
    let rc = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const c_void,
            payload as u32,
            first.as_mut_ptr() as *mut c_void,
            4,
        )
    };
    rc == 0 && HTTP_STARTS.contains(&u32::from_be_bytes(first))
}

/// The copy of the packet in this CPU's parse slot whose payload starts at `payload`, as a
/// global function: verified once, on its own. Returns the bytes copied (the verifier wants a
/// scalar).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn flowlens_l7_copy(skb: *mut __sk_buff, payload: u64, payload_len: u64) -> u64 {
    let Some(packet) = crate::parse::current() else {
        return 0;
    };
    let Some(mut entry) = L7_EVENTS.reserve::<L7Event>(0) else {
        count(COUNTER_L7_LOST);
        return 0;
    };
    let event = entry.as_mut_ptr();
    let want = if payload_len < L7_CAPTURE as u64 {
        payload_len
    } else {
        L7_CAPTURE as u64
    };
    // SAFETY: the reserved record is an L7Event's size; every field is written below.
    unsafe {
        (*event).key = packet.key;
        (*event).ktime_ns = bpf_ktime_get_ns();
        (*event).payload_len = payload_len as u32;
        let mut captured = 0;
        if want > 0 && want <= L7_CAPTURE as u64 {
            let rc = bpf_skb_load_bytes(
                skb as *mut c_void,
                payload as u32,
                (*event).data.as_mut_ptr() as *mut c_void,
                want as u32,
            );
            if rc == 0 {
                captured = want as u32;
            }
        }
        (*event).captured = captured;
        // User space reads on a timer, not on a wakeup: none is sent.
        entry.submit(BPF_RB_NO_WAKEUP);
        captured as u64
    }
}
