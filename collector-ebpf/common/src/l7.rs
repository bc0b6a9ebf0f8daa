//! The L7 tap: the first bytes of the transport payload of packets to or from a watched port
//! (DNS; HTTP/1.x when the payload starts a request or a response), copied to user space
//! through a ring buffer, one [`L7Event`] per packet.

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

/// [`L7Ports::kinds`]: every TCP or UDP packet with payload is tapped.
pub const L7_DNS: u8 = 1;
/// [`L7Ports::kinds`]: TCP segments whose payload starts with "HTTP" or the first four bytes
/// of a method ([`HTTP_STARTS`]) are tapped.
pub const L7_HTTP: u8 = 2;

/// The first four bytes (as a big-endian word) of an HTTP/1.x message start: a status line
/// and the request lines of RFC 9110's methods and PATCH.
pub const HTTP_STARTS: [u32; 10] = [
    u32::from_be_bytes(*b"HTTP"),
    u32::from_be_bytes(*b"GET "),
    u32::from_be_bytes(*b"HEAD"),
    u32::from_be_bytes(*b"POST"),
    u32::from_be_bytes(*b"PUT "),
    u32::from_be_bytes(*b"DELE"),
    u32::from_be_bytes(*b"CONN"),
    u32::from_be_bytes(*b"OPTI"),
    u32::from_be_bytes(*b"TRAC"),
    u32::from_be_bytes(*b"PATC"),
];

/// The watched ports, in host order, and the kind of each (`L7_DNS`, `L7_HTTP`); port 0 ends
/// the list (all 0: the tap is off). 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L7Ports {
    pub ports: [u16; L7_MAX_PORTS],
    pub kinds: [u8; L7_MAX_PORTS],
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
