//! The flow table (layout: `flowlens_common::table`): one slot per flow shared by every CPU,
//! found through a line of tags, counted with atomic adds. A packet of a known flow reads one
//! tag line and its slot; a flow's first packet also looks for its opposite direction and claims
//! a free slot; a packet of a flow that finds no room reads two tag lines and counts in the
//! per-interface overflow entry.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    helpers::bpf_get_smp_processor_id,
    macros::map,
    maps::{Array, PerCpuArray, PerCpuHashMap},
};
use flowlens_common::{
    table::{
        buckets_of, flow_hash, tag, FlowSlot, OverflowKey, TableLayout, BUCKET_SLOTS,
        FIRST_BUCKET_FILL, SLOT_FLOW_FLAGS_SHIFT, SLOT_RACED, TABLE_LAYOUT_VERSION, TAG_BUSY,
        TAG_FREE, TAG_LIVE,
    },
    FlowKey, FlowStats, COUNTER_TABLE_FULL, FLOW_INITIATOR,
};

use crate::atomic;
use crate::count;

/// Tags of each bucket's slots. Its size is set at load (`TableLayout::buckets`).
#[map]
static FLOW_TAGS: Array<[u64; BUCKET_SLOTS]> = Array::with_max_entries(2, BPF_F_MMAPABLE);

/// The slots (`buckets * BUCKET_SLOTS`, set at load).
#[map]
static FLOW_SLOTS: Array<FlowSlot> =
    Array::with_max_entries(2 * BUCKET_SLOTS as u32, BPF_F_MMAPABLE);

/// This CPU's room for the key of a new flow's opposite direction (off the 512-byte stack).
#[map]
static ANSWER: PerCpuArray<FlowKey> = PerCpuArray::with_max_entries(1, 0);

/// Packets of flows that found no free slot, per interface, direction, IP version and tunnel.
#[map]
static FLOW_OVERFLOW: PerCpuHashMap<OverflowKey, FlowStats> =
    PerCpuHashMap::with_max_entries(4096, 0);

/// The table's layout (set at load).
#[unsafe(no_mangle)]
static TABLE: TableLayout = TableLayout {
    version: TABLE_LAYOUT_VERSION,
    buckets: 2,
    seed: 0,
};

/// What one bucket holds for a key.
struct Probe {
    slot: *mut FlowSlot,
    /// The bucket has a free slot.
    room: bool,
}

/// Adds `packets` packets (`bytes` bytes, TCP flags `tcp_flags`) seen at `now` to the flow
/// `key`; returns true when this created the flow's slot.
#[inline(always)]
pub fn add(key: &FlowKey, packets: u64, bytes: u64, tcp_flags: u16, now: u64) -> bool {
    flowlens_table_add(key, packets, bytes, tcp_flags as u64, now) != 0
}

/// [`add`] as a global BPF function: the verifier checks it once, on its own, instead of at
/// every call site of every program (the programs stay within its instruction budget).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn flowlens_table_add(
    key: *const FlowKey,
    packets: u64,
    bytes: u64,
    tcp_flags: u64,
    now: u64,
) -> u64 {
    // SAFETY: the verifier checks the pointer's type (56 readable bytes) or null.
    let Some(key) = (unsafe { key.as_ref() }) else {
        return 0;
    };
    add_to_table(key, packets, bytes, tcp_flags as u16, now) as u64
}

#[inline(always)]
fn add_to_table(key: &FlowKey, packets: u64, bytes: u64, tcp_flags: u16, now: u64) -> bool {
    let (buckets, seed) = layout();
    let hash = flow_hash(key, seed);
    let (first, second) = buckets_of(hash, buckets);
    let live = tag(hash, TAG_LIVE);
    let a = probe(key, first, live);
    if !a.slot.is_null() {
        update(a.slot, packets, bytes, tcp_flags, now);
        return false;
    }
    let b = probe(key, second, live);
    if !b.slot.is_null() {
        update(b.slot, packets, bytes, tcp_flags, now);
        return false;
    }
    if !a.room && !b.room {
        overflow(key, packets, bytes, now);
        return false;
    }
    new_flow(key, packets, bytes, tcp_flags, now)
}

/// Whether the opposite direction of `key` has a slot, crossing the interface either way.
#[inline(always)]
fn answered(key: &FlowKey) -> bool {
    let Some(answer) = ANSWER.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: per-CPU slot; a program runs to completion on its CPU before the next.
    let answer = unsafe { &mut *answer };
    for d in key.answer_directions() {
        *answer = *key;
        if !answer.become_answer(d) {
            return false;
        }
        if live_slots(answer) > 0 {
            return true;
        }
    }
    false
}

/// How many live slots hold `key` (more than one when two CPUs created it at once).
#[inline(always)]
fn live_slots(key: &FlowKey) -> u32 {
    flowlens_live_slots(key) as u32
}

/// [`live_slots`] as a global BPF function: the first packet of a flow calls it up to three
/// times, the verifier checks it once.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn flowlens_live_slots(key: *const FlowKey) -> u64 {
    // SAFETY: the verifier checks the pointer's type (56 readable bytes) or null.
    let Some(key) = (unsafe { key.as_ref() }) else {
        return 0;
    };
    count_live(key) as u64
}

#[inline(always)]
fn count_live(key: &FlowKey) -> u32 {
    let (buckets, seed) = layout();
    let hash = flow_hash(key, seed);
    let (first, second) = buckets_of(hash, buckets);
    let live = tag(hash, TAG_LIVE);
    let mut n = 0;
    for bucket in [first, second] {
        let Some(tags) = FLOW_TAGS.get_ptr(bucket) else {
            continue;
        };
        for i in 0..BUCKET_SLOTS {
            // SAFETY: a tag of the map value, written by other CPUs only with atomics.
            if unsafe { core::ptr::read_volatile(&raw const (*tags)[i]) } != live {
                continue;
            }
            if let Some(slot) = FLOW_SLOTS.get_ptr(bucket * BUCKET_SLOTS as u32 + i as u32) {
                if same_key(unsafe { &(*slot).key }, key) {
                    n += 1;
                }
            }
        }
    }
    n
}

/// Free slots of `bucket`.
#[inline(always)]
fn free_slots(bucket: u32) -> usize {
    let Some(tags) = FLOW_TAGS.get_ptr(bucket) else {
        return 0;
    };
    let mut free = 0;
    for i in 0..BUCKET_SLOTS {
        // SAFETY: a tag of the map value.
        if unsafe { core::ptr::read_volatile(&raw const (*tags)[i]) } == TAG_FREE {
            free += 1;
        }
    }
    free
}

#[inline(always)]
fn layout() -> (u32, u64) {
    // Read from the read-only data the loader filled (the compiler must not fold the default).
    let buckets = unsafe { core::ptr::read_volatile(&raw const TABLE.buckets) };
    let seed = unsafe { core::ptr::read_volatile(&raw const TABLE.seed) };
    (buckets, seed)
}

/// The live slot of `key` in `bucket` (null if none), and whether the bucket has room.
#[inline(always)]
fn probe(key: &FlowKey, bucket: u32, live: u64) -> Probe {
    let mut found = Probe {
        slot: core::ptr::null_mut(),
        room: false,
    };
    let Some(tags) = FLOW_TAGS.get_ptr(bucket) else {
        return found;
    };
    // SAFETY: a map value of BUCKET_SLOTS tags, written by other CPUs only with atomics.
    let tags = unsafe { &*tags };
    for (i, t) in tags.iter().enumerate() {
        let t = unsafe { core::ptr::read_volatile(t) };
        if t == TAG_FREE {
            found.room = true;
        } else if t == live {
            let Some(slot) = FLOW_SLOTS.get_ptr_mut(bucket * BUCKET_SLOTS as u32 + i as u32) else {
                continue;
            };
            if same_key(unsafe { &(*slot).key }, key) {
                found.slot = slot;
                return found;
            }
        }
    }
    found
}

#[inline(always)]
fn same_key(a: &FlowKey, b: &FlowKey) -> bool {
    // SAFETY: FlowKey is seven 8-aligned words without implicit padding.
    let (a, b) = unsafe {
        (
            &*(a as *const FlowKey as *const [u64; 7]),
            &*(b as *const FlowKey as *const [u64; 7]),
        )
    };
    a[0] == b[0]
        && a[1] == b[1]
        && a[2] == b[2]
        && a[3] == b[3]
        && a[4] == b[4]
        && a[5] == b[5]
        && a[6] == b[6]
}

#[inline(always)]
fn update(slot: *mut FlowSlot, packets: u64, bytes: u64, tcp_flags: u16, now: u64) {
    let flags = tcp_flags as u64;
    // SAFETY: a live slot of the table. Its owner CPU is the only writer of `packets` and
    // `bytes` (one TC program at a time per CPU); the others add atomically.
    unsafe {
        let slot = &mut *slot;
        if slot.owner_cpu == bpf_get_smp_processor_id() {
            slot.packets += packets;
            slot.bytes += bytes;
        } else {
            atomic::add(&raw mut slot.shared_packets, packets);
            atomic::add(&raw mut slot.shared_bytes, bytes);
        }
        core::ptr::write_volatile(&raw mut slot.last_seen_ns, now);
        if flags & !core::ptr::read_volatile(&raw const slot.flags) != 0 {
            atomic::or(&raw mut slot.flags, flags);
        }
    }
}

/// The first packet of a flow (off the per-packet fast path): marks the side that spoke first,
/// i.e. the opposite direction has no slot, whichever way it crossed the interface (the other
/// way on a host's own interface, the same way on a mirror port), and claims a free slot.
#[inline(never)]
fn new_flow(key: &FlowKey, packets: u64, bytes: u64, tcp_flags: u16, now: u64) -> bool {
    let answered = answered(key);
    let initiator = if answered { 0 } else { FLOW_INITIATOR as u64 };
    let flags = tcp_flags as u64 | initiator << SLOT_FLOW_FLAGS_SHIFT;
    let (buckets, seed) = layout();
    let hash = flow_hash(key, seed);
    let (first, second) = buckets_of(hash, buckets);
    let bucket = match (free_slots(first), free_slots(second)) {
        (free, _) if BUCKET_SLOTS - free < FIRST_BUCKET_FILL => first,
        (free_first, free_second) if free_second > free_first => second,
        _ => first,
    };
    if let Some(tags) = FLOW_TAGS.get_ptr_mut(bucket) {
        for i in 0..BUCKET_SLOTS {
            // SAFETY: a tag of the map value; claimed with a compare-and-swap.
            let t = unsafe { &raw mut (*tags)[i] };
            if unsafe { core::ptr::read_volatile(t) } != TAG_FREE {
                continue;
            }
            let busy = tag(hash, TAG_BUSY);
            if unsafe { atomic::compare_exchange(t, TAG_FREE, busy) } != TAG_FREE {
                continue;
            }
            let Some(slot) = FLOW_SLOTS.get_ptr_mut(bucket * BUCKET_SLOTS as u32 + i as u32) else {
                unsafe { atomic::compare_exchange(t, busy, TAG_FREE) };
                continue;
            };
            // SAFETY: the slot is ours until its tag says live.
            unsafe {
                (*slot).key = *key;
                (*slot).packets = packets;
                (*slot).bytes = bytes;
                (*slot).first_seen_ns = now;
                (*slot).last_seen_ns = now;
                (*slot).flags = flags;
                (*slot).shared_packets = 0;
                (*slot).shared_bytes = 0;
                (*slot).owner_cpu = bpf_get_smp_processor_id();
                let live = tag(hash, TAG_LIVE);
                atomic::compare_exchange(t, busy, live);
                // Another CPU may have created the same flow meanwhile: whichever of the two
                // publishes last sees both and marks its slot for the readers.
                if live_slots(key) > 1 {
                    atomic::or(&raw mut (*slot).flags, SLOT_RACED);
                }
            }
            return true;
        }
    }
    // Every slot of the bucket was taken meanwhile.
    overflow(key, packets, bytes, now);
    false
}

/// Counts a packet of a flow without a slot in its interface's overflow entry.
#[inline(never)]
fn overflow(key: &FlowKey, packets: u64, bytes: u64, now: u64) {
    count(COUNTER_TABLE_FULL);
    let k = OverflowKey {
        ifindex: key.ifindex,
        etype: key.etype,
        direction: key.direction,
        tunnel: key.tunnel,
    };
    if let Some(stats) = FLOW_OVERFLOW.get_ptr_mut(&k) {
        add_local(stats, packets, bytes, now);
        return;
    }
    let fresh = FlowStats {
        packets,
        bytes,
        first_seen_ns: now,
        last_seen_ns: now,
        ..FlowStats::default()
    };
    // BPF_NOEXIST: if another CPU created the entry meanwhile, add to our slot of it instead.
    if FLOW_OVERFLOW.insert(&k, &fresh, 1).is_err() {
        if let Some(stats) = FLOW_OVERFLOW.get_ptr_mut(&k) {
            add_local(stats, packets, bytes, now);
        }
    }
}

#[inline(always)]
fn add_local(stats: *mut FlowStats, packets: u64, bytes: u64, now: u64) {
    // Per-CPU value: this CPU is its only writer.
    let stats = unsafe { &mut *stats };
    if stats.packets == 0 {
        stats.first_seen_ns = now;
    }
    stats.packets += packets;
    stats.bytes += bytes;
    stats.last_seen_ns = now;
}
