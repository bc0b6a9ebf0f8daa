//! The kernel flow table (layout: `flowlens_common::table`) read through memory mappings: the
//! tags stay mapped (ending a flow turns its tags dead with a compare-and-swap), the slots are
//! read a window at a time (a scan costs no system call per flow, and the process never holds
//! the whole table in its memory), single slots with a map lookup. Dead slots are freed for new
//! flows once no program can still be adding to them. Packets of flows that found no slot are
//! read from the per-interface overflow map. A pinned table ([`KernelTable::persist`]) also
//! keeps, beside the slots, what each slot and overflow entry exported up to the last
//! acknowledged chunk, so a collector started after a crash resumes from there.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use flowlens_common::table::{
    buckets_of, flow_hash, tag, FlowSlot, OverflowKey, TableLayout, BUCKET_SLOTS, SLOT_RACED,
    TAG_DEAD, TAG_FREE, TAG_LIVE, TAG_STATE,
};
use flowlens_common::{FlowKey, FlowStats};

use super::ledger::Baseline;
use super::mapping::Mapping;
use crate::bpf_map::{for_each_entry, lookup_entry, update_entry};
use crate::conversation::{fast_map, FastMap};

/// How long a slot stays dead before it is reused. A program adds to a slot within
/// microseconds of matching its tag; this leaves room for a stalled virtual CPU.
pub const GRACE_NS: u64 = 1_000_000_000;

/// Slots mapped at a time by a scan: 4 MiB.
const WINDOW_SLOTS: usize = 32_768;

/// Bytes of a slot in the map (the array's element size).
const SLOT_BYTES: usize = std::mem::size_of::<FlowSlot>();

/// A slot taken out of the table: freed after [`GRACE_NS`]; what a program added after it was
/// taken leaves then, as a record of its own.
#[derive(Debug, Clone, Copy)]
struct Dying {
    slot: u32,
    taken_ns: u64,
    /// The slot's counts when it was taken.
    taken: FlowStats,
}

/// What one read found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReadStats {
    /// Live slots (a flow created by two CPUs at once counts once per slot).
    pub live: usize,
    /// Dead slots freed for new flows.
    pub freed: usize,
}

/// What a slot exported up to the last acknowledged chunk, as kept in the pinned
/// `FLOW_EXPORTED` array (one per slot, memory-mapped). It belongs to the flow whose first
/// packet was at `first_seen_ns`: a slot freed and taken by another flow does not match it.
/// 32 bytes.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SlotBaseline {
    pub packets: u64,
    pub bytes: u64,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
}

impl SlotBaseline {
    fn of(stats: &FlowStats) -> Self {
        Self {
            packets: stats.packets,
            bytes: stats.bytes,
            first_seen_ns: stats.first_seen_ns,
            last_seen_ns: stats.last_seen_ns,
        }
    }
}

/// The export state of a pinned table and the writes of the chunk being published, applied
/// by [`KernelTable::commit`] once the broker acknowledged it.
struct Persisted {
    /// `FLOW_EXPORTED`: a [`SlotBaseline`] per slot.
    exported: Mapping,
    /// `OVERFLOW_EXPORTED`: overflow key -> counts exported (`None` in tests).
    overflow: Option<OwnedFd>,
    /// Baselines of the slots exported in the chunk being published.
    slots: Vec<(u32, SlotBaseline)>,
    /// Dead slots whose late packets are in the scan's last chunk: freed when it is committed.
    free: Vec<u32>,
    /// Overflow counts in the scan's last chunk.
    overflow_seen: Vec<(OverflowKey, FlowStats)>,
}

/// Where the slots are read from.
enum Slots {
    /// The array map: windows of it mapped while scanning, single slots looked up.
    Map(OwnedFd),
    /// All of them in memory (tests, which write them as the programs would).
    #[cfg(test)]
    Memory(Mapping),
}

/// The collector's view of the kernel flow table.
pub struct KernelTable {
    layout: TableLayout,
    tags: Mapping,
    slots: Slots,
    /// The per-CPU overflow map (`None` in tests).
    overflow: Option<OwnedFd>,
    cpus: usize,
    dying: Vec<Dying>,
    /// Slot index of each entry of the last read, in read (slot) order.
    read_slots: Vec<u32>,
    /// Per-interface overflow counts at the previous read.
    overflow_seen: FastMap<OverflowKey, FlowStats>,
    /// Raced keys of the last read: their first slot -> each of their slots with its own
    /// counts.
    raced_parts: FastMap<u32, Vec<(u32, FlowStats)>>,
    /// Export state kept with a pinned table (`None`: the table dies with the process).
    persisted: Option<Persisted>,
}

impl KernelTable {
    /// Maps the table whose tags and slots are the array maps `tags` and `slots`, laid out as
    /// `layout`, with the per-CPU overflow map `overflow` (`cpus` possible CPUs).
    pub fn new(
        layout: TableLayout,
        tags: BorrowedFd<'_>,
        slots: BorrowedFd<'_>,
        overflow: BorrowedFd<'_>,
        cpus: usize,
    ) -> io::Result<Self> {
        let buckets = layout.buckets as usize;
        Ok(Self {
            layout,
            tags: Mapping::new(Some(tags), 0, buckets * 64, true)?,
            slots: Slots::Map(slots.try_clone_to_owned()?),
            overflow: Some(overflow.try_clone_to_owned()?),
            cpus,
            dying: Vec::new(),
            read_slots: Vec::new(),
            overflow_seen: fast_map(0),
            raced_parts: fast_map(0),
            persisted: None,
        })
    }

    /// A table in anonymous memory, without overflow map (tests).
    #[cfg(test)]
    pub(super) fn in_memory(layout: TableLayout) -> io::Result<Self> {
        let buckets = layout.buckets as usize;
        Ok(Self {
            layout,
            tags: Mapping::new(None, 0, buckets * 64, true)?,
            slots: Slots::Memory(Mapping::new(
                None,
                0,
                buckets * BUCKET_SLOTS * SLOT_BYTES,
                true,
            )?),
            overflow: None,
            cpus: 1,
            dying: Vec::new(),
            read_slots: Vec::new(),
            overflow_seen: fast_map(0),
            raced_parts: fast_map(0),
            persisted: None,
        })
    }

    pub fn layout(&self) -> TableLayout {
        self.layout
    }

    /// Keeps the baselines in anonymous memory, as a pinned table does (tests).
    #[cfg(test)]
    pub(super) fn with_memory_baselines(mut self) -> Self {
        let len = self.slot_count() * std::mem::size_of::<SlotBaseline>();
        self.persisted = Some(Persisted {
            exported: Mapping::new(None, 0, len, true).unwrap(),
            overflow: None,
            slots: Vec::new(),
            free: Vec::new(),
            overflow_seen: Vec::new(),
        });
        self
    }

    /// The state bits of slot `slot`'s tag (tests).
    #[cfg(test)]
    pub(super) fn tag_state(&self, slot: usize) -> u64 {
        self.tag(slot).load(Ordering::Acquire) & TAG_STATE
    }

    /// Loses what only the process knew, as a collector killed at `now_ns` does, and resumes as
    /// the next collector would from what the table keeps (tests).
    #[cfg(test)]
    pub(super) fn restart(mut self, now_ns: u64) -> Self {
        self.dying.clear();
        self.read_slots.clear();
        self.raced_parts.clear();
        self.overflow_seen.clear();
        if let Some(p) = self.persisted.as_mut() {
            p.slots.clear();
            p.free.clear();
            p.overflow_seen.clear();
        }
        self.resume_dead(now_ns).unwrap();
        self
    }

    /// Keeps the export state in the pinned maps `exported` (the mmapable array of
    /// [`SlotBaseline`]s, one per slot) and `overflow_exported` (hash `OverflowKey` ->
    /// `FlowStats`), and resumes from what they hold: the overflow counts already exported, and
    /// every dead slot (taken by a previous collector) as dying since `now_ns` from its
    /// baseline, so what it counted past that leaves as a late record. Live slots resume from
    /// their baselines when first read ([`KernelTable::exported_baseline`]).
    pub fn persist(
        mut self,
        exported: BorrowedFd<'_>,
        overflow_exported: BorrowedFd<'_>,
        now_ns: u64,
    ) -> io::Result<Self> {
        let mapping = Mapping::new(
            Some(exported),
            0,
            self.slot_count() * std::mem::size_of::<SlotBaseline>(),
            true,
        )?;
        let (mut keys, mut values) = (
            vec![OverflowKey::default(); 256],
            vec![FlowStats::default(); 256],
        );
        let seen = &mut self.overflow_seen;
        for_each_entry(
            overflow_exported,
            false,
            1,
            &mut keys,
            &mut values,
            |k, v| {
                seen.insert(*k, v[0]);
            },
        )?;
        self.persisted = Some(Persisted {
            exported: mapping,
            overflow: Some(overflow_exported.try_clone_to_owned()?),
            slots: Vec::new(),
            free: Vec::new(),
            overflow_seen: Vec::new(),
        });
        self.resume_dead(now_ns)?;
        Ok(self)
    }

    /// Every dead slot becomes dying since `now_ns`, taken at its baseline.
    fn resume_dead(&mut self, now_ns: u64) -> io::Result<()> {
        let mut dead = Vec::new();
        self.for_each_in_state(TAG_DEAD, |i, slot| dead.push((i, slot.first_seen_ns)))?;
        for (i, first_seen_ns) in dead {
            let b = self.baseline(i, first_seen_ns);
            self.dying.push(Dying {
                slot: i as u32,
                taken_ns: now_ns,
                taken: FlowStats {
                    packets: b.packets,
                    bytes: b.bytes,
                    first_seen_ns,
                    last_seen_ns: if b.packets == 0 {
                        first_seen_ns
                    } else {
                        b.last_seen_ns
                    },
                    ..FlowStats::default()
                },
            });
        }
        Ok(())
    }

    /// The baseline kept for slot `i` if it belongs to the flow that started at
    /// `first_seen_ns`.
    fn baseline(&self, i: usize, first_seen_ns: u64) -> SlotBaseline {
        let Some(p) = &self.persisted else {
            return SlotBaseline::default();
        };
        debug_assert!(i < self.slot_count());
        // SAFETY: one SlotBaseline per slot in the mapping, 8-aligned; volatile: shared memory.
        let b = unsafe { std::ptr::read_volatile((p.exported.at as *const SlotBaseline).add(i)) };
        if b.first_seen_ns == first_seen_ns && b.packets > 0 {
            b
        } else {
            SlotBaseline::default()
        }
    }

    /// Calls `each` with the slots of entry `at` of the last read (counts `stats`), each with
    /// its own counts.
    fn for_each_part(&self, at: usize, stats: &FlowStats, mut each: impl FnMut(u32, &FlowStats)) {
        let slot = self.read_slots[at];
        match self.raced_parts.get(&slot) {
            Some(parts) => parts.iter().for_each(|(s, own)| each(*s, own)),
            None => each(slot, stats),
        }
    }

    /// What entry `at` of the last read (with counts `stats`) exported up to the last
    /// acknowledged chunk, as a previous collector left it in a pinned table (nothing
    /// otherwise).
    pub(super) fn exported_baseline(&self, at: usize, stats: &FlowStats) -> Baseline {
        let mut total = Baseline::default();
        if self.persisted.is_none() {
            return total;
        }
        self.for_each_part(at, stats, |slot, own| {
            let b = self.baseline(slot as usize, own.first_seen_ns);
            total.packets += b.packets;
            total.bytes += b.bytes;
            total.last_seen_ns = total.last_seen_ns.max(b.last_seen_ns);
        });
        total
    }

    /// Entry `at` of the last read was exported with its counts as read (`stats`): its
    /// baseline is written at the next [`KernelTable::commit`].
    pub(super) fn exported(&mut self, at: usize, stats: &FlowStats) {
        let Some(mut p) = self.persisted.take() else {
            return;
        };
        self.for_each_part(at, stats, |s, own| p.slots.push((s, SlotBaseline::of(own))));
        self.persisted = Some(p);
    }

    /// The chunk published since the previous commit was acknowledged: writes its baselines
    /// (and, when it was the scan's last chunk, `last`, its overflow counts, and frees the dead
    /// slots whose late packets it carried). Nothing to do for a table that is not pinned.
    pub fn commit(&mut self, last: bool) -> io::Result<()> {
        let Some(p) = self.persisted.as_mut() else {
            return Ok(());
        };
        for (slot, b) in p.slots.drain(..) {
            // SAFETY: one SlotBaseline per slot in the writable mapping.
            unsafe {
                std::ptr::write_volatile((p.exported.at as *mut SlotBaseline).add(slot as usize), b)
            };
        }
        if !last {
            return Ok(());
        }
        if let Some(map) = &p.overflow {
            for (k, v) in p.overflow_seen.drain(..) {
                update_entry(map.as_fd(), &k, &v)?;
            }
        }
        let free = std::mem::take(&mut p.free);
        for slot in free {
            self.tag(slot as usize).store(TAG_FREE, Ordering::Release);
        }
        Ok(())
    }

    fn slot_count(&self) -> usize {
        self.layout.buckets as usize * BUCKET_SLOTS
    }

    fn tag(&self, slot: usize) -> &AtomicU64 {
        debug_assert!(slot < self.slot_count());
        // SAFETY: `slot` < buckets * BUCKET_SLOTS; the tags are 8-aligned u64s in the mapping.
        unsafe { &*(self.tags.at as *const AtomicU64).add(slot) }
    }

    /// The slot's contents now (fields a program is updating may be a packet apart).
    fn slot(&self, slot: usize) -> io::Result<FlowSlot> {
        debug_assert!(slot < self.slot_count());
        match &self.slots {
            Slots::Map(fd) => {
                let mut value = FlowSlot::default();
                lookup_entry(fd.as_fd(), &(slot as u32), &mut value)?;
                Ok(value)
            }
            // SAFETY: in the mapping; a volatile read, as programs write it concurrently.
            #[cfg(test)]
            Slots::Memory(m) => {
                Ok(unsafe { std::ptr::read_volatile((m.at as *const FlowSlot).add(slot)) })
            }
        }
    }

    /// Calls `each` with the index and contents of every slot whose tag is live, in slot
    /// order, reading the slots a window at a time.
    fn for_each_live(&self, each: impl FnMut(usize, &FlowSlot)) -> io::Result<()> {
        self.for_each_in_state(TAG_LIVE, each)
    }

    /// [`KernelTable::for_each_live`] for the slots whose tag is in `state`.
    fn for_each_in_state(
        &self,
        state: u64,
        mut each: impl FnMut(usize, &FlowSlot),
    ) -> io::Result<()> {
        let n = self.slot_count();
        let live = |i: usize| self.tag(i).load(Ordering::Acquire) & TAG_STATE == state;
        let mut start = 0;
        while start < n {
            let end = (start + WINDOW_SLOTS).min(n);
            if !(start..end).any(live) {
                start = end;
                continue;
            }
            let window;
            let base = match &self.slots {
                Slots::Map(fd) => {
                    window = Mapping::new(
                        Some(fd.as_fd()),
                        start * SLOT_BYTES,
                        (end - start) * SLOT_BYTES,
                        false,
                    )?;
                    window.at as *const FlowSlot
                }
                // SAFETY: `start` is within the mapping.
                #[cfg(test)]
                Slots::Memory(m) => unsafe { (m.at as *const FlowSlot).add(start) },
            };
            for i in (start..end).filter(|&i| live(i)) {
                // SAFETY: slot `i` lies in the window; volatile: programs write it concurrently.
                let slot = unsafe { std::ptr::read_volatile(base.add(i - start)) };
                each(i, &slot);
            }
            start = end;
        }
        Ok(())
    }

    /// Appends every live flow to `out` (the slots of a flow two CPUs created at once folded
    /// into one entry) and frees the slots that were taken out at least [`GRACE_NS`] before
    /// `now_ns`; what a program added to those after they were taken is appended to `late`.
    pub fn read(
        &mut self,
        now_ns: u64,
        out: &mut Vec<(FlowKey, FlowStats)>,
        late: &mut Vec<(FlowKey, FlowStats)>,
    ) -> io::Result<ReadStats> {
        let mut stats = ReadStats {
            freed: self.free_dead(now_ns, late)?,
            ..ReadStats::default()
        };
        out.clear();
        self.raced_parts.clear();
        let mut read_slots = std::mem::take(&mut self.read_slots);
        read_slots.clear();
        let mut raced = Vec::new();
        self.for_each_live(|i, slot| {
            if slot.flags & SLOT_RACED != 0 {
                raced.push(out.len());
            }
            out.push((slot.key, slot.stats()));
            read_slots.push(i as u32);
        })?;
        self.read_slots = read_slots;
        stats.live = out.len();
        if !raced.is_empty() {
            self.fold_raced(out, &raced)?;
        }
        Ok(stats)
    }

    /// Folds the slots of each raced key into the entry of its first slot read.
    fn fold_raced(
        &mut self,
        out: &mut Vec<(FlowKey, FlowStats)>,
        raced: &[usize],
    ) -> io::Result<()> {
        let mut gone = vec![false; out.len()];
        for &at in raced {
            if gone[at] {
                continue;
            }
            let key = out[at].0;
            let positions: Vec<usize> = self
                .live_slots(&key)?
                .into_iter()
                .filter_map(|s| self.read_slots.binary_search(&(s as u32)).ok())
                .collect();
            let Some(&keep) = positions.iter().min() else {
                continue;
            };
            let parts = positions
                .iter()
                .map(|&p| (self.read_slots[p], out[p].1))
                .collect();
            self.raced_parts.insert(self.read_slots[keep], parts);
            for &p in &positions {
                if p != keep && !gone[p] {
                    let other = out[p].1;
                    out[keep].1.merge(&other);
                    gone[p] = true;
                }
            }
        }
        let mut i = 0;
        out.retain(|_| {
            i += 1;
            !gone[i - 1]
        });
        let mut i = 0;
        self.read_slots.retain(|_| {
            i += 1;
            !gone[i - 1]
        });
        Ok(())
    }

    /// The live slots holding `key`.
    fn live_slots(&self, key: &FlowKey) -> io::Result<Vec<usize>> {
        let hash = flow_hash(key, self.layout.seed);
        let (first, second) = buckets_of(hash, self.layout.buckets);
        let live = tag(hash, TAG_LIVE);
        let mut found = Vec::new();
        for bucket in [first, second] {
            for i in 0..BUCKET_SLOTS {
                let s = bucket as usize * BUCKET_SLOTS + i;
                if self.tag(s).load(Ordering::Acquire) == live && self.slot(s)?.key == *key {
                    found.push(s);
                }
            }
        }
        Ok(found)
    }

    /// Takes the flow `key` out of the table: programs stop adding to its slots, which are
    /// freed after the grace period. Returns its counts at that instant (`None` if it had no
    /// live slot).
    pub fn take(&mut self, key: &FlowKey, now_ns: u64) -> io::Result<Option<FlowStats>> {
        let mut total: Option<FlowStats> = None;
        for s in self.live_slots(key)? {
            let live = self.tag(s).load(Ordering::Acquire);
            let dead = (live & !TAG_STATE) | TAG_DEAD;
            if self
                .tag(s)
                .compare_exchange(live, dead, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            let taken = self.slot(s)?.stats();
            if let Some(p) = self.persisted.as_mut() {
                p.slots.push((s as u32, SlotBaseline::of(&taken)));
            }
            self.dying.push(Dying {
                slot: s as u32,
                taken_ns: now_ns,
                taken,
            });
            match total.as_mut() {
                Some(t) => t.merge(&taken),
                None => total = Some(taken),
            }
        }
        Ok(total)
    }

    /// Takes every live flow out of the table (see [`KernelTable::take`]) and appends it to
    /// `out`, with what reached slots taken earlier (nothing is freed: no grace period is left).
    pub fn take_all(&mut self, out: &mut Vec<(FlowKey, FlowStats)>) -> io::Result<()> {
        out.clear();
        let mut raced = false;
        let mut taken = Vec::new();
        // Dead first, read after: what a program adds meanwhile is in the counts read.
        for i in 0..self.slot_count() {
            let live = self.tag(i).load(Ordering::Acquire);
            if live & TAG_STATE != TAG_LIVE {
                continue;
            }
            let dead = (live & !TAG_STATE) | TAG_DEAD;
            if self
                .tag(i)
                .compare_exchange(live, dead, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                taken.push(i);
            }
        }
        let mut next = taken.iter().peekable();
        self.for_each_in_state(TAG_DEAD, |i, slot| {
            if next.next_if_eq(&&i).is_some() {
                raced |= slot.flags & SLOT_RACED != 0;
                out.push((slot.key, slot.stats()));
            }
        })?;
        for d in std::mem::take(&mut self.dying) {
            if let Some(extra) = self.late(&d)? {
                out.push(extra);
            }
        }
        if raced {
            // Rare: fold the slots of keys two CPUs created at once.
            let mut first: FastMap<FlowKey, usize> = fast_map(out.len());
            let mut folded: Vec<(FlowKey, FlowStats)> = Vec::with_capacity(out.len());
            for (key, stats) in out.drain(..) {
                match first.get(&key) {
                    Some(&at) => folded[at].1.merge(&stats),
                    None => {
                        first.insert(key, folded.len());
                        folded.push((key, stats));
                    }
                }
            }
            *out = folded;
        }
        Ok(())
    }

    /// Frees the dead slots whose grace period is over; appends what reached them after they
    /// were taken to `late`. Returns how many were freed.
    fn free_dead(
        &mut self,
        now_ns: u64,
        late: &mut Vec<(FlowKey, FlowStats)>,
    ) -> io::Result<usize> {
        let mut freed = 0;
        let mut i = 0;
        while i < self.dying.len() {
            let d = self.dying[i];
            if d.taken_ns.saturating_add(GRACE_NS) > now_ns {
                i += 1;
                continue;
            }
            if let Some(extra) = self.late(&d)? {
                late.push(extra);
            }
            match self.persisted.as_mut() {
                // Freed once the record of its late packets is acknowledged.
                Some(p) => p.free.push(d.slot),
                None => self.tag(d.slot as usize).store(TAG_FREE, Ordering::Release),
            }
            self.dying.swap_remove(i);
            freed += 1;
        }
        Ok(freed)
    }

    /// What programs added to a taken slot after it was taken.
    fn late(&self, d: &Dying) -> io::Result<Option<(FlowKey, FlowStats)>> {
        let now = self.slot(d.slot as usize)?;
        let current = now.stats();
        Ok((current.packets > d.taken.packets).then(|| {
            (
                now.key,
                FlowStats {
                    packets: current.packets - d.taken.packets,
                    bytes: current.bytes.saturating_sub(d.taken.bytes),
                    first_seen_ns: d.taken.last_seen_ns,
                    ..current
                },
            )
        }))
    }

    /// Appends the packets each interface's overflow entry gained since the previous call, as
    /// entries of [`FlowKey::overflow`] keys. Returns the number of system calls made.
    pub fn read_overflow(&mut self, out: &mut Vec<(FlowKey, FlowStats)>) -> io::Result<usize> {
        let Some(overflow) = self.overflow.as_ref() else {
            return Ok(0);
        };
        let (mut keys, mut values) = (
            vec![OverflowKey::default(); 256],
            vec![FlowStats::default(); 256 * self.cpus],
        );
        let seen = &mut self.overflow_seen;
        let mut pending = self.persisted.as_mut().map(|p| &mut p.overflow_seen);
        for_each_entry(
            overflow.as_fd(),
            false,
            self.cpus,
            &mut keys,
            &mut values,
            |k, per_cpu| {
                let mut now = FlowStats::default();
                for v in per_cpu {
                    now.merge(v);
                }
                let before = seen.insert(*k, now).unwrap_or_default();
                if now.packets > before.packets {
                    if let Some(p) = pending.as_mut() {
                        p.push((*k, now));
                    }
                    out.push((
                        FlowKey::overflow(k),
                        FlowStats {
                            packets: now.packets - before.packets,
                            bytes: now.bytes.saturating_sub(before.bytes),
                            first_seen_ns: if before.packets == 0 {
                                now.first_seen_ns
                            } else {
                                before.last_seen_ns
                            },
                            ..now
                        },
                    ));
                }
            },
        )
    }
}

#[cfg(test)]
pub(super) mod tests;
