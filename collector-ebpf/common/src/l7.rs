//! The L7 tap: the first bytes of the transport payload of packets to or from a watched port
//! (DNS), copied to user space through a ring buffer, one [`L7Event`] per packet.

use crate::FlowKey;

/// Name of the ring buffer of [`L7Event`]s.
pub const L7_EVENTS_MAP: &str = "L7_EVENTS";
/// Its size in bytes (a power of two, a multiple of the page size): about 11,000 events.
pub const L7_RING_BYTES: u32 = 4 << 20;
/// Global (read-only at load) holding the watched ports, [`L7Ports`].
pub const L7_PORTS_GLOBAL: &str = "L7_PORTS";
/// Ports the tap can watch at once.
pub const L7_MAX_PORTS: usize = 8;
/// Payload bytes copied per packet: a DNS header and the longest question name (2 + 12 + 255 +
/// 4) fit.
pub const L7_CAPTURE: usize = 320;

/// The watched ports, in host order; 0 ends the list (all 0: the tap is off).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L7Ports {
    pub ports: [u16; L7_MAX_PORTS],
}

/// One tapped packet.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct L7Event {
    /// The packet's flow key (interface, direction, addresses, ports, protocol).
    pub key: FlowKey,
    /// When the packet passed, `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub ktime_ns: u64,
    /// The transport payload's length in the packet.
    pub payload_len: u32,
    /// Bytes of it copied to `data` (at most [`L7_CAPTURE`]; 0 when the copy failed).
    pub captured: u32,
    pub data: [u8; L7_CAPTURE],
}
