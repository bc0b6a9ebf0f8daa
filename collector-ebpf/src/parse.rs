//! Packet parsing for the flow key: link layer (VLAN tags), network layer (IPv4, IPv6 and its
//! extension headers, fragments) and transport ports/flags, plus GSO-aware packet/byte counts.
//! The first `HEADERS` bytes are copied once with `bpf_skb_load_bytes` (one helper call per
//! packet; works for non-linear GSO skbs too) and parsed from the stack.

use aya_ebpf::{
    cty::c_void, helpers::generated::bpf_skb_load_bytes, macros::map, maps::PerCpuArray,
    programs::TcContext,
};
use flowlens_common::{
    FlowKey, FragmentKey, FragmentPorts, COUNTER_FRAGMENT_UNMATCHED, COUNTER_MALFORMED,
    COUNTER_NON_IP,
};

use crate::{count, fragment_ports, remember_fragment};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_DSTOPTS: u8 = 60;
const IPPROTO_SCTP: u8 = 132;
const IPPROTO_UDPLITE: u8 = 136;

/// How many IPv6 extension headers are walked before giving up on finding the transport header.
const MAX_IPV6_EXT_HEADERS: usize = 6;

/// One parsed packet: its flow key and what it adds to the flow.
pub struct Packet {
    pub key: FlowKey,
    pub packets: u64,
    pub bytes: u64,
    pub tcp_flags: u16,
}

/// Where the transport header starts and whether it is present in this packet.
struct Transport {
    offset: usize,
    proto: u8,
    /// Non-first fragment: no transport header here, ports come from the fragment map.
    later_fragment: bool,
    /// First fragment of a fragmented datagram: remember its ports.
    first_fragment: bool,
    fragment_id: u32,
}

/// Bytes of each packet copied for parsing: Ethernet + 2 VLAN tags + IPv6 + several extension
/// headers + the transport header fit; deeper headers count as malformed.
const HEADERS: usize = 192;

/// Per-CPU scratch space for the copied headers (the BPF stack is only 512 bytes).
#[map]
static HEADER_SCRATCH: PerCpuArray<[u8; HEADERS]> = PerCpuArray::with_max_entries(1, 0);

/// The packet's first bytes, copied to this CPU's scratch buffer.
struct Headers {
    buf: &'static [u8; HEADERS],
    len: usize,
}

impl Headers {
    #[inline(always)]
    fn load(ctx: &TcContext, packet_len: usize) -> Option<Self> {
        let len = if packet_len < HEADERS {
            packet_len
        } else {
            HEADERS
        };
        if len < ETH_HLEN {
            return None;
        }
        // SAFETY: per-CPU slot; a program runs to completion on its CPU before the next.
        let buf = unsafe { &mut *HEADER_SCRATCH.get_ptr_mut(0)? };
        // The raw helper, so the verifier sees `len` within [ETH_HLEN, HEADERS].
        let rc = unsafe {
            bpf_skb_load_bytes(
                ctx.skb.skb as *const c_void,
                0,
                buf.as_mut_ptr() as *mut c_void,
                len as u32,
            )
        };
        if rc != 0 {
            return None;
        }
        Some(Headers { buf, len })
    }

    #[inline(always)]
    fn u8(&self, off: usize) -> Option<u8> {
        if off >= self.len {
            return None;
        }
        self.buf.get(off).copied()
    }

    #[inline(always)]
    fn be16(&self, off: usize) -> Option<u16> {
        Some(u16::from_be_bytes([self.u8(off)?, self.u8(off + 1)?]))
    }

    #[inline(always)]
    fn be32(&self, off: usize) -> Option<u32> {
        Some(u32::from_be_bytes([
            self.u8(off)?,
            self.u8(off + 1)?,
            self.u8(off + 2)?,
            self.u8(off + 3)?,
        ]))
    }

    #[inline(always)]
    fn bytes<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        if off + N > self.len || off + N > HEADERS {
            return None;
        }
        let mut out = [0u8; N];
        out.copy_from_slice(self.buf.get(off..off + N)?);
        Some(out)
    }
}

#[inline(always)]
pub fn parse(ctx: &TcContext, direction: u8) -> Option<Packet> {
    let skb = unsafe { &*ctx.skb.skb };
    let mut key = FlowKey {
        ifindex: skb.ifindex,
        direction,
        ..FlowKey::default()
    };
    // A tag the driver already stripped lives in the skb; in-band tags are walked below.
    if skb.vlan_tci != 0 {
        key.vlan_id = (skb.vlan_tci & 0x0fff) as u16;
    }

    let Some(h) = Headers::load(ctx, skb.len as usize) else {
        count(COUNTER_MALFORMED);
        return None;
    };
    let h = &h;
    let mut l3 = ETH_HLEN;
    let Some(mut etype) = h.be16(12) else {
        count(COUNTER_MALFORMED);
        return None;
    };
    // 802.1Q and QinQ: at most two in-band tags; the innermost VLAN id wins.
    for _ in 0..2 {
        if etype != ETH_P_8021Q && etype != ETH_P_8021AD {
            break;
        }
        let tci = h.be16(l3)?;
        key.vlan_id = tci & 0x0fff;
        etype = h.be16(l3 + 2)?;
        l3 += 4;
    }
    key.etype = etype;

    let transport = match etype {
        ETH_P_IP => parse_ipv4(h, l3, &mut key),
        ETH_P_IPV6 => parse_ipv6(h, l3, &mut key),
        _ => {
            count(COUNTER_NON_IP);
            return None;
        }
    };
    let Some(t) = transport else {
        count(COUNTER_MALFORMED);
        return None;
    };
    key.proto = t.proto;

    let mut tcp_flags = 0u16;
    let mut l4_header_len = 0usize;
    let frag_key = FragmentKey {
        src_addr: key.src_addr,
        dst_addr: key.dst_addr,
        id: t.fragment_id,
        proto: t.proto,
        _pad: [0; 3],
    };
    if t.later_fragment {
        match fragment_ports(&frag_key) {
            Some(p) => {
                key.src_port = p.src_port;
                key.dst_port = p.dst_port;
            }
            None => count(COUNTER_FRAGMENT_UNMATCHED),
        }
    } else {
        match t.proto {
            IPPROTO_TCP => {
                key.src_port = h.be16(t.offset).unwrap_or(0);
                key.dst_port = h.be16(t.offset + 2).unwrap_or(0);
                // Data offset (4 bits), reserved, NS; then CWR..FIN.
                if let Some(word) = h.be16(t.offset + 12) {
                    tcp_flags = word & 0x01ff;
                    l4_header_len = ((word >> 12) as usize) * 4;
                }
            }
            IPPROTO_UDP | IPPROTO_UDPLITE | IPPROTO_SCTP => {
                key.src_port = h.be16(t.offset).unwrap_or(0);
                key.dst_port = h.be16(t.offset + 2).unwrap_or(0);
                l4_header_len = 8;
            }
            IPPROTO_ICMP | IPPROTO_ICMPV6 => {
                key.icmp_type = h.u8(t.offset).unwrap_or(0);
                key.icmp_code = h.u8(t.offset + 1).unwrap_or(0);
            }
            _ => {}
        }
        if t.first_fragment {
            remember_fragment(
                &frag_key,
                &FragmentPorts {
                    src_port: key.src_port,
                    dst_port: key.dst_port,
                },
            );
        }
    }

    // A GSO super-packet leaves the host as `gso_segs` frames, each repeating the headers.
    let len = skb.len as u64;
    let segs = skb.gso_segs as u64;
    let (packets, bytes) = if segs > 1 && l4_header_len > 0 {
        let headers = (t.offset + l4_header_len) as u64;
        (segs, len + (segs - 1) * headers)
    } else {
        (1, len)
    };
    Some(Packet {
        key,
        packets,
        bytes,
        tcp_flags,
    })
}

#[inline(always)]
fn parse_ipv4(h: &Headers, l3: usize, key: &mut FlowKey) -> Option<Transport> {
    let ver_ihl = h.u8(l3)?;
    let ihl = ((ver_ihl & 0x0f) as usize) * 4;
    if ver_ihl >> 4 != 4 || ihl < 20 {
        return None;
    }
    let id = h.be16(l3 + 4)? as u32;
    let frag = h.be16(l3 + 6)?;
    let proto = h.u8(l3 + 9)?;
    let src = h.bytes::<4>(l3 + 12)?;
    let dst = h.bytes::<4>(l3 + 16)?;
    key.src_addr = mapped(src);
    key.dst_addr = mapped(dst);
    let more_fragments = frag & 0x2000 != 0;
    let frag_offset = frag & 0x1fff;
    Some(Transport {
        offset: l3 + ihl,
        proto,
        later_fragment: frag_offset != 0,
        first_fragment: frag_offset == 0 && more_fragments,
        fragment_id: id,
    })
}

#[inline(always)]
fn parse_ipv6(h: &Headers, l3: usize, key: &mut FlowKey) -> Option<Transport> {
    if h.u8(l3)? >> 4 != 6 {
        return None;
    }
    let mut next = h.u8(l3 + 6)?;
    key.src_addr = h.bytes::<16>(l3 + 8)?;
    key.dst_addr = h.bytes::<16>(l3 + 24)?;
    let mut off = l3 + 40;
    let mut t = Transport {
        offset: off,
        proto: next,
        later_fragment: false,
        first_fragment: false,
        fragment_id: 0,
    };
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let hdr_next = h.u8(off)?;
                let len = (h.u8(off + 1)? as usize + 1) * 8;
                next = hdr_next;
                off += len;
            }
            IPPROTO_AH => {
                let hdr_next = h.u8(off)?;
                let len = (h.u8(off + 1)? as usize + 2) * 4;
                next = hdr_next;
                off += len;
            }
            IPPROTO_FRAGMENT => {
                let hdr_next = h.u8(off)?;
                let frag = h.be16(off + 2)?;
                t.fragment_id = h.be32(off + 4)?;
                let frag_offset = frag >> 3;
                t.later_fragment = frag_offset != 0;
                t.first_fragment = frag_offset == 0 && frag & 1 != 0;
                next = hdr_next;
                off += 8;
            }
            _ => break,
        }
    }
    t.offset = off;
    t.proto = next;
    Some(t)
}

/// IPv4 address as IPv4-mapped IPv6 (`::ffff:a.b.c.d`).
#[inline(always)]
fn mapped(v4: [u8; 4]) -> [u8; 16] {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}
