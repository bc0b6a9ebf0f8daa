//! The kernel flow table's layout, shared by the TC programs that fill it and the collector that
//! reads it. It is an open hash table in two array maps that user space maps into its memory:
//!
//! - [`FLOW_TAGS_MAP`]: one 64-byte line per bucket, the tags of its [`BUCKET_SLOTS`] slots;
//! - [`FLOW_SLOTS_MAP`]: the slots, [`FlowSlot`] (key and counters, 128 bytes: two cache lines).
//!
//! A key hashes ([`flow_hash`]) to two buckets ([`buckets_of`]); see [`FIRST_BUCKET_FILL`] for
//! where a new key goes. A tag is the key's hash with its two low bits replaced by the slot's state
//! ([`TAG_FREE`] .. [`TAG_DEAD`]), so one line of tags says which slot, if any, can hold a key
//! and whether a bucket has room: a packet of a known flow reads one tag line and one slot, a
//! packet of a flow that finds no room reads two tag lines.
//!
//! Life of a slot: FREE → BUSY (a program claims it with a compare-and-swap) → LIVE (its key and
//! first counts written) → DEAD (user space ended the flow; programs no longer match it) → FREE
//! (user space, after a grace period, when no program can still be adding to it). Programs add
//! to a LIVE slot with atomic adds, so every CPU shares one entry per flow. Two CPUs creating the
//! same flow at the same instant may each claim a slot; the later one marks its slot
//! ([`SLOT_RACED`]) and readers fold the slots of that key.
//!
//! Everything the table needs lives in the maps and in [`TableLayout`] (which a program reads
//! from its read-only data): nothing about the table exists only in a process, so the maps can
//! outlive the collector that created them. [`TABLE_LAYOUT_VERSION`] changes whenever any of
//! this does.

use crate::{FlowKey, FlowStats};

/// Version of everything in this module; a reader refuses a table of another version.
pub const TABLE_LAYOUT_VERSION: u32 = 1;

/// Array map: bucket index -> `[u64; BUCKET_SLOTS]` tags. Memory-mappable.
pub const FLOW_TAGS_MAP: &str = "FLOW_TAGS";
/// Array map: slot index (`bucket * BUCKET_SLOTS + i`) -> [`FlowSlot`]. Memory-mappable.
pub const FLOW_SLOTS_MAP: &str = "FLOW_SLOTS";
/// Per-CPU hash [`OverflowKey`] -> [`FlowStats`]: packets of flows that found no free slot.
pub const FLOW_OVERFLOW_MAP: &str = "FLOW_OVERFLOW";
/// Read-only global holding the [`TableLayout`].
pub const TABLE_GLOBAL: &str = "TABLE";

/// Slots per bucket: their tags fill one 64-byte cache line.
pub const BUCKET_SLOTS: usize = 8;

/// Mask of a tag's state bits.
pub const TAG_STATE: u64 = 0b11;
/// A slot nobody uses (the whole tag is 0).
pub const TAG_FREE: u64 = 0;
/// A slot claimed by a program that is writing its key.
pub const TAG_BUSY: u64 = 1;
/// A slot holding a flow that packets are added to.
pub const TAG_LIVE: u64 = 2;
/// A slot user space took out of the table; freed after a grace period.
pub const TAG_DEAD: u64 = 3;

/// Fixed at load: how the table is laid out. 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableLayout {
    /// [`TABLE_LAYOUT_VERSION`] of the maps.
    pub version: u32,
    /// Buckets in [`FLOW_TAGS_MAP`] (slots: `buckets * BUCKET_SLOTS`).
    pub buckets: u32,
    /// Seed of [`flow_hash`], random per table.
    pub seed: u64,
}

/// `FlowSlot::flags`: the flow's TCP flags are bits 0..16, its `FLOW_*` flags bits 32..40.
pub const SLOT_FLOW_FLAGS_SHIFT: u32 = 32;
/// `FlowSlot::flags`: the program that created this slot found another live slot of the same
/// key (two CPUs created the flow at once); readers fold the slots of such keys.
pub const SLOT_RACED: u64 = 1 << 48;

/// One flow: its key and cumulative counters. 128 bytes; slots start on 128-byte boundaries (the
/// map's values are page-aligned), so the key and the packet counter share a cache line and the
/// other counters fill the next one.
///
/// The CPU that created the slot (`owner_cpu`) adds to `packets` and `bytes` with plain adds: a
/// CPU runs one TC program at a time, so it is their only writer. Packets of the flow that other
/// CPUs see are added atomically to `shared_packets` and `shared_bytes`. A flow is mostly seen
/// on one CPU (receive queues and senders keep to theirs), so most packets pay no atomic
/// instruction; the counts are the sums.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSlot {
    pub key: FlowKey,
    pub packets: u64,
    pub bytes: u64,
    pub first_seen_ns: u64,
    /// Written by every packet (a plain store: concurrent CPUs may leave a slightly older time).
    pub last_seen_ns: u64,
    /// TCP flags OR'ed over the packets, and the `FLOW_*` flags (see [`SLOT_FLOW_FLAGS_SHIFT`]).
    pub flags: u64,
    pub shared_packets: u64,
    pub shared_bytes: u64,
    pub owner_cpu: u32,
    pub _reserved: [u32; 3],
}

impl FlowSlot {
    /// The counters as user space handles them.
    pub fn stats(&self) -> FlowStats {
        FlowStats {
            packets: self.packets + self.shared_packets,
            bytes: self.bytes + self.shared_bytes,
            first_seen_ns: self.first_seen_ns,
            last_seen_ns: self.last_seen_ns,
            tcp_flags: self.flags as u16,
            flags: (self.flags >> SLOT_FLOW_FLAGS_SHIFT) as u8,
            _pad: [0; 5],
        }
    }
}

/// Key of [`FLOW_OVERFLOW_MAP`]: packets of flows without a slot count per interface, direction,
/// IP version and tunnel kind (a tunnel's inner flows repeat packets their outer flow counts).
/// 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OverflowKey {
    pub ifindex: u32,
    /// The packets' L3 EtherType (0x0800, 0x86DD).
    pub etype: u16,
    pub direction: u8,
    /// `TUNNEL_*` of the flows.
    pub tunnel: u8,
}

impl FlowKey {
    /// The key of the record that carries an overflow entry's packets: its interface,
    /// direction, IP version and tunnel kind, unspecified addresses (`::ffff:0.0.0.0` for IPv4,
    /// `::` for IPv6), protocol 0, no ports.
    pub fn overflow(k: &OverflowKey) -> FlowKey {
        let mut unspecified = [0; 16];
        if k.etype == 0x0800 {
            unspecified[10] = 0xff;
            unspecified[11] = 0xff;
        }
        FlowKey {
            src_addr: unspecified,
            dst_addr: unspecified,
            ifindex: k.ifindex,
            etype: k.etype,
            direction: k.direction,
            tunnel: k.tunnel,
            ..FlowKey::default()
        }
    }

    /// Whether this is the key of an overflow record ([`FlowKey::overflow`]).
    pub fn is_overflow(&self) -> bool {
        const V4: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0];
        self.proto == 0
            && self.src_port == 0
            && self.dst_port == 0
            && self.src_addr == self.dst_addr
            && (self.src_addr == [0; 16] || self.src_addr == V4)
    }
}

/// Odd multipliers, one per key word.
const MULTIPLIERS: [u64; 7] = [
    0x9E37_79B9_7F4A_7C15,
    0xC2B2_AE3D_27D4_EB4F,
    0x1656_67B1_9E37_79F9,
    0xD6E8_FEB8_6659_FD93,
    0xA076_1D64_78BD_642F,
    0xE703_7ED1_A0B4_28DB,
    0x8EBC_6AF0_9C88_C6E3,
];

/// The hash of a key under `seed`: each seeded word times its own multiplier, summed (seven
/// independent multiplications, not a chain of them: a few nanoseconds on the packet path),
/// then mixed so every bit of the key moves every bit of the result. Keys are fully
/// zero-initialised, so equal flows hash equally.
#[inline(always)]
pub fn flow_hash(key: &FlowKey, seed: u64) -> u64 {
    // SAFETY: FlowKey is 56 bytes, 8-aligned, without implicit padding.
    let w = unsafe { &*(key as *const FlowKey as *const [u64; 7]) };
    let m = &MULTIPLIERS;
    // Written out: the verifier sees straight-line code.
    let a = (w[0] ^ seed).wrapping_mul(m[0]);
    let b = (w[1] ^ seed).wrapping_mul(m[1]);
    let c = (w[2] ^ seed).wrapping_mul(m[2]);
    let d = (w[3] ^ seed).wrapping_mul(m[3]);
    let e = (w[4] ^ seed).wrapping_mul(m[4]);
    let f = (w[5] ^ seed).wrapping_mul(m[5]);
    let g = (w[6] ^ seed).wrapping_mul(m[6]);
    let mut h =
        (a.wrapping_add(b)).wrapping_add(c.wrapping_add(d)) ^ (e.wrapping_add(f)).wrapping_add(g);
    h ^= h >> 32;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 29;
    h = h.wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 32)
}

/// The two buckets a key with hash `hash` may live in, among `buckets` (the first is tried
/// first). Each is a 32-bit half of the hash scaled to the bucket count.
#[inline(always)]
pub fn buckets_of(hash: u64, buckets: u32) -> (u32, u32) {
    let n = buckets as u64;
    let first = ((hash & 0xffff_ffff) * n) >> 32;
    let mut second = ((hash >> 32) * n) >> 32;
    if second == first {
        second = if first + 1 < n { first + 1 } else { 0 };
    }
    (first as u32, second as u32)
}

/// A new key goes to its first bucket while fewer than this many of its slots are taken, else
/// to the emptier of its two buckets: most keys are found in their first bucket, and the table
/// fills to about 90 % before a key finds no room.
pub const FIRST_BUCKET_FILL: usize = 6;

/// The tag of a slot holding a key with hash `hash`, in `state`.
#[inline(always)]
pub fn tag(hash: u64, state: u64) -> u64 {
    (hash & !TAG_STATE) | state
}

/// Buckets for a table of at least `slots` slots (at least 2: a key has two buckets).
pub fn buckets_for(slots: u32) -> u32 {
    slots.div_ceil(BUCKET_SLOTS as u32).max(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_are_pinned() {
        assert_eq!(core::mem::size_of::<FlowSlot>(), 128);
        assert_eq!(core::mem::offset_of!(FlowSlot, packets), 56);
        assert_eq!(core::mem::size_of::<TableLayout>(), 16);
        assert_eq!(core::mem::size_of::<OverflowKey>(), 8);
        assert_eq!(core::mem::align_of::<FlowKey>(), 8);
    }

    #[test]
    fn buckets_are_in_range_and_distinct() {
        for buckets in [2u32, 3, 7, 1000, 262_144] {
            for i in 0..10_000u64 {
                let h = flow_hash(
                    &FlowKey {
                        src_port: i as u16,
                        ifindex: (i >> 16) as u32,
                        ..FlowKey::default()
                    },
                    42,
                );
                let (a, b) = buckets_of(h, buckets);
                assert!(a < buckets && b < buckets && a != b, "{a} {b} of {buckets}");
            }
        }
    }

    #[test]
    fn the_hash_depends_on_every_field_and_the_seed() {
        let k = FlowKey {
            src_addr: [1; 16],
            dst_addr: [2; 16],
            ifindex: 3,
            src_port: 4,
            dst_port: 5,
            ..FlowKey::default()
        };
        let h = flow_hash(&k, 1);
        assert_ne!(h, flow_hash(&k, 2));
        for change in [
            FlowKey { tunnel: 1, ..k },
            FlowKey { direction: 1, ..k },
            FlowKey { vlan_id: 1, ..k },
            FlowKey { dst_port: 6, ..k },
        ] {
            assert_ne!(flow_hash(&change, 1), h);
        }
        assert_eq!(tag(h, TAG_LIVE) & TAG_STATE, TAG_LIVE);
        assert_eq!(tag(h, TAG_DEAD) & !TAG_STATE, tag(h, TAG_BUSY) & !TAG_STATE);
        assert!(!k.is_overflow());
    }

    #[test]
    fn overflow_keys_are_recognised() {
        for etype in [0x0800, 0x86DD] {
            let k = FlowKey::overflow(&OverflowKey {
                ifindex: 7,
                etype,
                direction: 1,
                tunnel: 0,
            });
            assert!(k.is_overflow());
            assert_eq!((k.ifindex, k.etype, k.direction), (7, etype, 1));
        }
    }
}
