//! The kernel table over anonymous memory: reads, folds of raced slots, takes and the grace period.

use super::*;
use flowlens_common::table::{SLOT_FLOW_FLAGS_SHIFT, TAG_BUSY};
use flowlens_common::FLOW_INITIATOR;

/// A table in anonymous memory that the tests write as the programs would.
pub(in crate::table) fn table(buckets: u32) -> KernelTable {
    let layout = TableLayout {
        version: 1,
        buckets,
        seed: 0x1234_5678,
    };
    KernelTable::in_memory(layout).unwrap()
}

pub(in crate::table) fn key(port: u16) -> FlowKey {
    FlowKey {
        src_addr: [1; 16],
        dst_addr: [2; 16],
        src_port: port,
        dst_port: 53,
        proto: 17,
        ifindex: 4,
        ..FlowKey::default()
    }
}

/// Writes `key` with `packets` packets (100 bytes each) into slot `i` of its first bucket,
/// in `state`; returns the slot index.
pub(in crate::table) fn put(
    t: &KernelTable,
    key: &FlowKey,
    i: usize,
    packets: u64,
    state: u64,
) -> usize {
    let hash = flow_hash(key, t.layout.seed);
    let (first, _) = buckets_of(hash, t.layout.buckets);
    let s = first as usize * BUCKET_SLOTS + i;
    set(t, s, key, packets, 0);
    t.tag(s).store(tag(hash, state), Ordering::Release);
    s
}

pub(in crate::table) fn set(t: &KernelTable, s: usize, key: &FlowKey, packets: u64, flags: u64) {
    set_seen(t, s, key, packets, flags, 10 + packets);
}

/// [`set`] with the flow's last packet at `last_seen_ns`.
pub(in crate::table) fn set_seen(
    t: &KernelTable,
    s: usize,
    key: &FlowKey,
    packets: u64,
    flags: u64,
    last_seen_ns: u64,
) {
    let slot = FlowSlot {
        key: *key,
        packets,
        bytes: packets * 100,
        first_seen_ns: 10,
        last_seen_ns,
        flags: flags | (FLOW_INITIATOR as u64) << SLOT_FLOW_FLAGS_SHIFT,
        ..FlowSlot::default()
    };
    let Slots::Memory(m) = &t.slots else {
        unreachable!("tests keep the slots in memory")
    };
    // SAFETY: a writable test mapping, in bounds.
    unsafe { std::ptr::write((m.at as *mut FlowSlot).add(s), slot) };
}

type Entries = Vec<(FlowKey, FlowStats)>;

fn read(t: &mut KernelTable, now: u64) -> (Entries, Entries) {
    let (mut out, mut late) = (Vec::new(), Vec::new());
    t.read(now, &mut out, &mut late).unwrap();
    (out, late)
}

#[test]
fn reads_live_slots_only() {
    let mut t = table(64);
    put(&t, &key(1), 0, 3, TAG_LIVE);
    put(&t, &key(2), 1, 4, TAG_BUSY);
    put(&t, &key(3), 2, 5, TAG_DEAD);
    let (out, late) = read(&mut t, 0);
    assert_eq!(out.len(), 1);
    assert_eq!(
        (out[0].0, out[0].1.packets, out[0].1.bytes),
        (key(1), 3, 300)
    );
    assert_eq!(out[0].1.flags, FLOW_INITIATOR);
    assert!(late.is_empty());
}

#[test]
fn slots_of_a_flow_two_cpus_created_are_folded() {
    let mut t = table(64);
    let first = put(&t, &key(7), 0, 3, TAG_LIVE);
    let second = put(&t, &key(7), 5, 2, TAG_LIVE);
    set(&t, second, &key(7), 2, SLOT_RACED);
    put(&t, &key(8), 6, 1, TAG_LIVE);
    let (out, _) = read(&mut t, 0);
    let sevens: Vec<_> = out.iter().filter(|(k, _)| *k == key(7)).collect();
    assert_eq!(sevens.len(), 1, "{out:?}");
    assert_eq!((sevens[0].1.packets, sevens[0].1.bytes), (5, 500));
    assert_eq!(out.len(), 2);
    // Taken together, both slots.
    assert_eq!(t.take(&key(7), 0).unwrap().map(|s| s.packets), Some(5));
    assert_eq!(t.tag(first).load(Ordering::Acquire) & TAG_STATE, TAG_DEAD);
    assert_eq!(t.tag(second).load(Ordering::Acquire) & TAG_STATE, TAG_DEAD);
}

#[test]
fn taken_slots_leave_reads_and_are_freed_after_the_grace_period_with_late_packets() {
    let mut t = table(64);
    let s = put(&t, &key(9), 3, 10, TAG_LIVE);
    assert_eq!(t.take(&key(9), 1_000).unwrap().map(|s| s.packets), Some(10));
    assert_eq!(t.take(&key(9), 1_000).unwrap(), None, "taken once");
    // A program that matched the tag before it turned dead adds two more packets.
    set(&t, s, &key(9), 12, 0);
    let (out, late) = read(&mut t, 1_000 + GRACE_NS - 1);
    assert!(
        out.is_empty() && late.is_empty(),
        "still in its grace period"
    );
    let (out, late) = read(&mut t, 1_000 + GRACE_NS);
    assert!(out.is_empty());
    assert_eq!(late.len(), 1);
    assert_eq!(
        (late[0].0, late[0].1.packets, late[0].1.bytes),
        (key(9), 2, 200)
    );
    assert_eq!(
        late[0].1.first_seen_ns, 20,
        "starts at the last packet taken"
    );
    assert_eq!(
        t.tag(s).load(Ordering::Acquire),
        TAG_FREE,
        "free for a new flow"
    );
}

#[test]
fn take_all_takes_every_live_flow_and_what_reached_taken_ones() {
    let mut t = table(64);
    put(&t, &key(1), 0, 1, TAG_LIVE);
    let raced = put(&t, &key(1), 1, 2, TAG_LIVE);
    set(&t, raced, &key(1), 2, SLOT_RACED);
    let taken = put(&t, &key(2), 2, 5, TAG_LIVE);
    t.take(&key(2), 0).unwrap();
    set(&t, taken, &key(2), 6, 0);
    let mut out = Vec::new();
    t.take_all(&mut out).unwrap();
    out.sort_by_key(|(k, _)| k.src_port);
    let packets: Vec<_> = out.iter().map(|(k, s)| (k.src_port, s.packets)).collect();
    assert_eq!(packets, vec![(1, 3), (2, 1)]);
    let (out, _) = read(&mut t, 0);
    assert!(out.is_empty());
}
