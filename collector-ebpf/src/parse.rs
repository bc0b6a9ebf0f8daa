//! Packet parsing for the flow key: link layer (VLAN tags), network layer (IPv4, IPv6 and its
//! extension headers, fragments), transport ports/flags and the inner flow of VXLAN, Geneve and
//! GRE packets, plus GSO-aware packet/byte counts.
//! The first `HEADERS` bytes are copied once with `bpf_skb_load_bytes` (one helper call per
//! packet; works for non-linear GSO skbs too) and parsed from the stack.

use aya_ebpf::{
    bindings::__sk_buff, cty::c_void, helpers::generated::bpf_skb_load_bytes, macros::map,
    maps::PerCpuArray, programs::TcContext,
};
use flowlens_common::{
    FlowKey, FragmentKey, FragmentTransport, TunnelOuter, COUNTER_FRAGMENT_UNMATCHED,
    COUNTER_MALFORMED, COUNTER_NON_IP, TUNNEL_GENEVE, TUNNEL_GRE, TUNNEL_VXLAN,
};

use crate::{count, fragment_transport, remember_fragment};

const ETH_HLEN: usize = 14;
const VLAN_TAG_LEN: u64 = 4;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
/// Transparent Ethernet bridging: the tunnel carries Ethernet frames.
const ETH_P_TEB: u16 = 0x6558;

const VXLAN_PORT: u16 = 4789;
const GENEVE_PORT: u16 = 6081;
const GRE_CSUM: u16 = 0x8000;
const GRE_KEY: u16 = 0x2000;
const GRE_SEQ: u16 = 0x1000;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_GRE: u8 = 47;
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
    /// This is a tunnel packet: the flow inside is in this CPU's [`INNER`] slot.
    pub tunnel: bool,
    /// Bytes of a VLAN tag kept in the skb instead of the frame (0 or 4), per packet: counted
    /// in `bytes`, not in the header offsets.
    pub offloaded_tag: u64,
    /// Where the TCP or UDP payload starts (0: not known here: other protocols, fragments,
    /// tunnel packets).
    pub payload: u64,
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

/// Unused room after the copied headers. Every read is checked against the copied length, but
/// the compiler may merge those checks so that the verifier only sees "offset < HEADERS" plus a
/// constant field offset; the slack keeps such reads inside the buffer.
const SLACK: usize = 64;

/// Per-CPU scratch space for the copied headers (the BPF stack is only 512 bytes).
#[map]
static HEADER_SCRATCH: PerCpuArray<[u8; HEADERS + SLACK]> = PerCpuArray::with_max_entries(1, 0);

/// The packet's first bytes: read in place when the skb's linear part holds them (direct packet
/// access, the common case), else copied to this CPU's scratch buffer (non-linear skbs).
struct Headers {
    /// Address of byte 0 (packet data or the scratch buffer).
    base: usize,
    /// One past the last readable byte (`data_end`, or scratch + copied length).
    end: usize,
    /// Bytes copied to the scratch buffer (0: read in place).
    copied: usize,
}

impl Headers {
    #[inline(always)]
    fn load(ctx: &TcContext, packet_len: usize) -> Option<Self> {
        let want = if packet_len < HEADERS {
            packet_len
        } else {
            HEADERS
        };
        if want < ETH_HLEN {
            return None;
        }
        let (data, data_end) = (ctx.data(), ctx.data_end());
        if data + want <= data_end {
            return Some(Headers {
                base: data,
                end: data_end,
                copied: 0,
            });
        }
        // SAFETY: per-CPU slot; a program runs to completion on its CPU before the next.
        let buf = unsafe { &mut *HEADER_SCRATCH.get_ptr_mut(0)? };
        // The raw helper, so the verifier sees `want` within [ETH_HLEN, HEADERS].
        let rc = unsafe {
            bpf_skb_load_bytes(
                ctx.skb.skb as *const c_void,
                0,
                buf.as_mut_ptr() as *mut c_void,
                want as u32,
            )
        };
        if rc != 0 {
            return None;
        }
        let base = buf.as_ptr() as usize;
        Some(Headers {
            base,
            end: base + want,
            copied: want,
        })
    }

    /// The headers [`Headers::load`] found, again (in a function of its own): in place, or the
    /// `copied` bytes already in this CPU's scratch buffer.
    #[inline(always)]
    fn again(ctx: &TcContext, copied: usize) -> Option<Self> {
        if copied == 0 {
            return Some(Headers {
                base: ctx.data(),
                end: ctx.data_end(),
                copied: 0,
            });
        }
        if copied > HEADERS {
            return None;
        }
        // SAFETY: per-CPU slot filled by `load` earlier in this program run.
        let buf = unsafe { &*HEADER_SCRATCH.get_ptr(0)? };
        let base = buf.as_ptr() as usize;
        Some(Headers {
            base,
            end: base + copied,
            copied,
        })
    }

    /// The `N` bytes at `off`, if the packet has them: one length check per field, not per
    /// byte (the buffer's slack keeps the read in bounds for the verifier).
    #[inline(always)]
    fn field<const N: usize>(&self, off: usize) -> Option<&[u8; N]> {
        // The constant bound keeps the offset small for the verifier (and, for the scratch
        // buffer, inside it with its slack); the second check is the packet's own length.
        if off > HEADERS - N {
            return None;
        }
        let at = self.base + off;
        if at + N > self.end {
            return None;
        }
        // SAFETY: [at, at + N) lies within the packet's linear data or the scratch buffer.
        Some(unsafe { &*(at as *const [u8; N]) })
    }

    #[inline(always)]
    fn u8(&self, off: usize) -> Option<u8> {
        self.field::<1>(off).map(|b| b[0])
    }

    #[inline(always)]
    fn be16(&self, off: usize) -> Option<u16> {
        self.field::<2>(off).map(|b| u16::from_be_bytes(*b))
    }

    #[inline(always)]
    fn be32(&self, off: usize) -> Option<u32> {
        self.field::<4>(off).map(|b| u32::from_be_bytes(*b))
    }

    #[inline(always)]
    fn bytes<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        self.field::<N>(off).copied()
    }

    /// The 16 bytes at `off` as two words in memory order.
    #[inline(always)]
    fn u64_pair(&self, off: usize) -> Option<(u64, u64)> {
        let at = self.field::<16>(off)?.as_ptr();
        // SAFETY: 16 readable bytes; unaligned reads.
        unsafe {
            Some((
                core::ptr::read_unaligned(at as *const u64),
                core::ptr::read_unaligned(at.add(8) as *const u64),
            ))
        }
    }
}

/// Per-CPU slot for the packet being parsed (keeps the keys off the 512-byte stack).
#[map]
static PACKET: PerCpuArray<Packet> = PerCpuArray::with_max_entries(1, 0);

/// The packet [`parse`] left in this CPU's slot in this program run.
#[inline(always)]
pub fn current() -> Option<&'static Packet> {
    // SAFETY: per-CPU slot written by `parse` earlier in this program run.
    Some(unsafe { &*PACKET.get_ptr(0)? })
}

/// Parses the packet into this CPU's [`PACKET`] slot; `None` when it is not recorded (the
/// reason is counted).
#[inline(always)]
pub fn parse(ctx: &TcContext, direction: u8) -> Option<&'static Packet> {
    let skb = unsafe { &*ctx.skb.skb };
    // SAFETY: per-CPU slot; a program runs to completion on its CPU before the next.
    let packet = unsafe { &mut *PACKET.get_ptr_mut(0)? };
    let key = &mut packet.key;
    clear(key);
    key.ifindex = skb.ifindex;
    key.direction = direction;
    // A tag the driver (or the stack, on receive) already took out of the frame lives in the
    // skb: its id counts like an in-band tag's, its 4 bytes were on the wire. In-band tags are
    // walked below. Without one, vlan_tci is 0. (No branch: one path less for the verifier.)
    key.vlan_id = (skb.vlan_tci & 0x0fff) as u16;
    let offloaded_tag = (skb.vlan_present != 0) as u64 * VLAN_TAG_LEN;

    let Some(h) = Headers::load(ctx, skb.len as usize) else {
        count(COUNTER_MALFORMED);
        return None;
    };
    let h = &h;
    let Some((etype, l3)) = ethernet(h, 0, key) else {
        count(COUNTER_MALFORMED);
        return None;
    };
    let transport = match etype {
        ETH_P_IP => parse_ipv4(h, l3, key),
        ETH_P_IPV6 => parse_ipv6(h, l3, key),
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

    let mut l4 = L4::default();
    if t.later_fragment {
        match fragment_transport(&fragment_key(key, &t)) {
            Some(p) => {
                key.src_port = p.src_port;
                key.dst_port = p.dst_port;
                key.icmp_type = p.icmp_type;
                key.icmp_code = p.icmp_code;
            }
            None => count(COUNTER_FRAGMENT_UNMATCHED),
        }
    } else {
        l4 = transport_header(h, &t, key);
        if t.first_fragment {
            remember_fragment(
                &fragment_key(key, &t),
                &FragmentTransport {
                    src_port: key.src_port,
                    dst_port: key.dst_port,
                    icmp_type: key.icmp_type,
                    icmp_code: key.icmp_code,
                },
            );
        }
    }

    // A tunnel packet also yields the flow it carries (only whole datagrams are decapsulated).
    let mut headers_end = t.offset + l4.header_len;
    let mut tunneled = false;
    let candidate = match key.proto {
        IPPROTO_UDP => key.dst_port == VXLAN_PORT || key.dst_port == GENEVE_PORT,
        IPPROTO_GRE => true,
        _ => false,
    };
    if candidate && !t.later_fragment && !t.first_fragment {
        let end = flowlens_tunnel(ctx.skb.skb, t.offset as u64, h.copied as u64);
        if end != 0 {
            headers_end = end as usize;
            tunneled = true;
        }
    }

    // A GSO super-packet leaves the host as `gso_segs` frames, each repeating the headers
    // (for a tunnel packet: outer and inner headers) and any offloaded VLAN tag.
    let len = skb.len as u64;
    let segs = skb.gso_segs as u64;
    (packet.packets, packet.bytes) = if segs > 1 && l4.header_len > 0 {
        (segs, len + (segs - 1) * headers_end as u64)
    } else {
        (1, len)
    };
    packet.bytes += packet.packets * offloaded_tag;
    packet.offloaded_tag = offloaded_tag;
    packet.tcp_flags = l4.tcp_flags;
    packet.tunnel = tunneled;
    packet.payload = match key.proto {
        IPPROTO_TCP | IPPROTO_UDP
            if l4.header_len > 0 && !tunneled && !t.later_fragment && !t.first_fragment =>
        {
            headers_end as u64
        }
        _ => 0,
    };
    Some(packet)
}

/// Key of the fragment map for the datagram `t` of flow `key`.
#[inline(always)]
fn fragment_key(key: &FlowKey, t: &Transport) -> FragmentKey {
    FragmentKey {
        src_addr: key.src_addr,
        dst_addr: key.dst_addr,
        id: t.fragment_id,
        proto: t.proto,
        _pad: [0; 3],
    }
}

/// Ethernet header at `off` with up to two VLAN tags (802.1Q, QinQ; the innermost id wins):
/// the L3 ethertype and where the L3 header starts.
#[inline(always)]
fn ethernet(h: &Headers, off: usize, key: &mut FlowKey) -> Option<(u16, usize)> {
    let mut l3 = off + ETH_HLEN;
    let mut etype = h.be16(off + 12)?;
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
    Some((etype, l3))
}

/// What the transport header contributes: TCP flags and its length (0 when unknown, which
/// disables the GSO header arithmetic).
#[derive(Default, Clone, Copy)]
struct L4 {
    tcp_flags: u16,
    header_len: usize,
}

/// Ports (or ICMP type/code) and TCP flags of a packet whose transport header is present.
#[inline(always)]
fn transport_header(h: &Headers, t: &Transport, key: &mut FlowKey) -> L4 {
    let mut l4 = L4::default();
    match t.proto {
        IPPROTO_TCP => {
            key.src_port = h.be16(t.offset).unwrap_or(0);
            key.dst_port = h.be16(t.offset + 2).unwrap_or(0);
            // Data offset (4 bits), reserved, NS; then CWR..FIN.
            if let Some(word) = h.be16(t.offset + 12) {
                l4.tcp_flags = word & 0x01ff;
                l4.header_len = ((word >> 12) as usize) * 4;
            }
        }
        IPPROTO_UDP | IPPROTO_UDPLITE | IPPROTO_SCTP => {
            key.src_port = h.be16(t.offset).unwrap_or(0);
            key.dst_port = h.be16(t.offset + 2).unwrap_or(0);
            l4.header_len = 8;
        }
        IPPROTO_GRE => {
            // The GRE base header; a tunnel's options are accounted by `tunnel`.
            l4.header_len = 4;
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            key.icmp_type = h.u8(t.offset).unwrap_or(0);
            key.icmp_code = h.u8(t.offset + 1).unwrap_or(0);
        }
        _ => {}
    }
    l4
}

/// The inner flow of a VXLAN, Geneve or GRE packet.
pub struct Inner {
    pub key: FlowKey,
    pub outer: TunnelOuter,
    pub tcp_flags: u16,
    /// Offset of the inner frame (Ethernet, or IP for L3 GRE/Geneve): the encapsulation
    /// overhead per packet.
    pub inner_start: u16,
}

/// Per-CPU slot for the inner flow of the packet being parsed (keeps it off the 512-byte stack).
#[map]
static INNER: PerCpuArray<Inner> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's inner flow, valid after `parse` returned a packet with `tunnel` set.
#[inline(always)]
pub fn inner() -> Option<&'static Inner> {
    // SAFETY: per-CPU slot, written and read by the same program run.
    unsafe { INNER.get_ptr(0).map(|p| &*p) }
}

/// [`tunnel`] as a global BPF function, for the packet in this CPU's [`PACKET`] slot whose
/// outer transport header starts at `transport` (headers as `Headers::load` found them, see
/// [`Headers::again`]): the verifier checks the inner parse once, on its own, instead of once
/// per way of reaching it. Returns the end of the inner transport header, or 0.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn flowlens_tunnel(skb: *mut __sk_buff, transport: u64, copied: u64) -> u64 {
    let ctx = TcContext::new(skb);
    let transport = transport as usize;
    if transport > HEADERS {
        return 0;
    }
    let Some(h) = Headers::again(&ctx, copied as usize) else {
        return 0;
    };
    let Some(packet) = PACKET.get_ptr(0) else {
        return 0;
    };
    // SAFETY: per-CPU slot written by `parse` earlier in this program run.
    let outer = unsafe { &(*packet).key };
    tunnel(&h, transport, outer).map_or(0, |end| end as u64)
}

/// Decapsulates the packet whose outer transport header (of `outer`) starts at `transport` if
/// it is a tunnel this parser knows: the inner flow goes to this CPU's [`INNER`] slot; returns
/// the end of the inner transport header (the headers every GSO segment repeats).
#[inline(always)]
fn tunnel(h: &Headers, transport: usize, outer: &FlowKey) -> Option<usize> {
    // The tunnel's kind and id and where its payload starts, before anything is written: most
    // packets are not tunnel packets.
    let (kind, id, start, ethernet_inner, proto_type) = match (outer.proto, outer.dst_port) {
        (IPPROTO_UDP, VXLAN_PORT) => {
            let vxlan = transport + 8;
            // I flag: the VNI is valid.
            if h.u8(vxlan)? & 0x08 == 0 {
                return None;
            }
            let vni = h.be32(vxlan + 4)? >> 8;
            (TUNNEL_VXLAN, vni, vxlan + 8, true, 0)
        }
        (IPPROTO_UDP, GENEVE_PORT) => {
            let geneve = transport + 8;
            let ver_opt = h.u8(geneve)?;
            if ver_opt >> 6 != 0 {
                return None;
            }
            let proto_type = h.be16(geneve + 2)?;
            let vni = h.be32(geneve + 4)? >> 8;
            let start = geneve + 8 + ((ver_opt & 0x3f) as usize) * 4;
            (
                TUNNEL_GENEVE,
                vni,
                start,
                proto_type == ETH_P_TEB,
                proto_type,
            )
        }
        (IPPROTO_GRE, _) => {
            let flags = h.be16(transport)?;
            // Version 0 only, no routing (RFC 2784/2890).
            if flags & 0x4007 != 0 {
                return None;
            }
            let proto_type = h.be16(transport + 2)?;
            let mut off = transport + 4;
            if flags & GRE_CSUM != 0 {
                off += 4;
            }
            let mut key_id = 0;
            if flags & GRE_KEY != 0 {
                key_id = h.be32(off)?;
                off += 4;
            }
            if flags & GRE_SEQ != 0 {
                off += 4;
            }
            (TUNNEL_GRE, key_id, off, proto_type == ETH_P_TEB, proto_type)
        }
        _ => return None,
    };
    // SAFETY: per-CPU slot; a program runs to completion on its CPU before the next.
    let slot = unsafe { &mut *INNER.get_ptr_mut(0)? };
    let key = &mut slot.key;
    clear(key);
    key.ifindex = outer.ifindex;
    key.direction = outer.direction;
    key.tunnel = kind;
    key.tunnel_id = id;
    let (etype, l3) = if ethernet_inner {
        ethernet(h, start, key)?
    } else {
        key.etype = proto_type;
        (proto_type, start)
    };
    let it = match etype {
        ETH_P_IP => parse_ipv4(h, l3, key)?,
        ETH_P_IPV6 => parse_ipv6(h, l3, key)?,
        _ => return None,
    };
    key.proto = it.proto;
    let mut l4 = L4::default();
    if !it.later_fragment {
        l4 = transport_header(h, &it, key);
    }
    slot.tcp_flags = l4.tcp_flags;
    slot.outer = TunnelOuter {
        src_addr: outer.src_addr,
        dst_addr: outer.dst_addr,
    };
    slot.inner_start = start as u16;
    Some(it.offset + l4.header_len)
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
    set_mapped(&mut key.src_addr, src);
    set_mapped(&mut key.dst_addr, dst);
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
    set_address(&mut key.src_addr, h.u64_pair(l3 + 8)?);
    set_address(&mut key.dst_addr, h.u64_pair(l3 + 24)?);
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

/// Zeroes a key with seven word stores (assigning `FlowKey::default()` compiles to a call).
#[inline(always)]
fn clear(key: &mut FlowKey) {
    let words = key as *mut FlowKey as *mut u64;
    for i in 0..7 {
        // SAFETY: FlowKey is seven 8-aligned words.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
}

/// Writes an IPv4 address as IPv4-mapped IPv6 (`::ffff:a.b.c.d`), word by word.
#[inline(always)]
fn set_mapped(address: &mut [u8; 16], v4: [u8; 4]) {
    let at = address.as_mut_ptr();
    // SAFETY: the key's addresses are 8-aligned fields of 16 bytes.
    unsafe {
        core::ptr::write_volatile(at as *mut u64, 0);
        core::ptr::write_volatile(
            at.add(8) as *mut u32,
            u32::from_ne_bytes([0, 0, 0xff, 0xff]),
        );
        core::ptr::write_volatile(at.add(12) as *mut u32, u32::from_ne_bytes(v4));
    }
}

/// Writes a 16-byte address read as two words.
#[inline(always)]
fn set_address(address: &mut [u8; 16], words: (u64, u64)) {
    let at = address.as_mut_ptr() as *mut u64;
    // SAFETY: the key's addresses are 8-aligned fields of 16 bytes.
    unsafe {
        core::ptr::write_volatile(at, words.0);
        core::ptr::write_volatile(at.add(1), words.1);
    }
}
