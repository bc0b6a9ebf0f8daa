//! The ledger of live kernel entries kept between scans: each entry indexed once to its
//! conversation's slot, what each side already exported, and the deltas and endings a scan
//! exports.

use std::io;

use flowlens_common::{FlowKey, FlowStats};

use super::{Exported, Timeouts};
use crate::conversation::{fast_map, Conversation, Ending, FastMap};

/// What was exported of every live kernel entry, kept between scans. Each entry is indexed
/// once to its conversation's slot, so a scan costs one hash lookup per live entry: pairing the
/// two directions and remembering the exported counts need no per-scan maps.
pub(super) struct Ledger {
    timeouts: Timeouts,
    /// Kernel key -> `slot << 1 | side` of its conversation.
    index: FastMap<FlowKey, u32>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// The current scan (never 0, which marks an empty side).
    generation: u32,
    /// The entries of the current scan's table read, and the slots they touched (in read
    /// order).
    pub(super) read: Vec<(FlowKey, FlowStats)>,
    touched: Vec<u32>,
    /// Positions in `read` of the entries exported since this was last emptied that stay in
    /// the kernel table (a pinned table keeps their baselines).
    pub(super) kept: Vec<u32>,
}

/// One conversation: its two kernel entries in the order they appeared (A and B are decided
/// per scan from the entries read, see [`Conversation::join`]).
#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    sides: [Side; 2],
    /// The last scan that read one of its entries.
    generation: u32,
}

/// One direction's kernel entry.
#[derive(Debug, Default, Clone, Copy)]
struct Side {
    /// The scan that last read the entry (0: no entry).
    generation: u32,
    /// Its position in `Ledger::read` when `generation` is the current scan.
    read_at: u32,
    /// Whether the current scan is the first to read the entry.
    new: bool,
    exported: Baseline,
}

/// Cumulative counts of one entry already exported (`packets == 0`: nothing yet).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Baseline {
    pub(super) packets: u64,
    pub(super) bytes: u64,
    pub(super) last_seen_ns: u64,
}

impl Ledger {
    pub(super) fn new(timeouts: Timeouts) -> Self {
        Self {
            timeouts,
            index: fast_map(0),
            slots: Vec::new(),
            free: Vec::new(),
            generation: 0,
            read: Vec::new(),
            touched: Vec::new(),
            kept: Vec::new(),
        }
    }

    /// Exports what every conversation in `read` added (see [`FlowTable::scan`]); `take`
    /// removes an ended conversation's entry from the kernel and returns its last counts.
    /// Returns the number of entries removed.
    #[cfg(test)]
    pub(super) fn export_read(
        &mut self,
        now_ns: u64,
        out: &mut Vec<Exported>,
        take: impl FnMut(&FlowKey) -> io::Result<Option<FlowStats>>,
    ) -> io::Result<usize> {
        self.index_read(|_, _| Baseline::default());
        self.export_touched(0..self.touched.len(), now_ns, out, take)
    }

    /// Files `read` (see [`Ledger::index_read`]); the touched conversations are then exported
    /// a range at a time with [`Ledger::export_touched`] or [`Ledger::export_ended`].
    pub(super) fn file_read(
        &mut self,
        exported: impl FnMut(usize, &FlowStats) -> Baseline,
    ) -> usize {
        self.index_read(exported);
        self.touched.len()
    }

    /// [`Ledger::export_read`] for the touched conversations `range` (of those `file_read`
    /// counted).
    pub(super) fn export_touched(
        &mut self,
        range: std::ops::Range<usize>,
        now_ns: u64,
        out: &mut Vec<Exported>,
        mut take: impl FnMut(&FlowKey) -> io::Result<Option<FlowStats>>,
    ) -> io::Result<usize> {
        let t = self.timeouts;
        let mut evicted = 0;
        for i in range {
            let slot = self.touched[i];
            let mut conversation = self.conversation(slot);
            let ending = conversation.ending(now_ns, t.idle_ns, t.closed_ns);
            if self.held_back(slot, &conversation, ending) {
                continue;
            }
            if ending != Ending::Open {
                for side in [&mut conversation.a_to_b, &mut conversation.b_to_a] {
                    let Some((key, current)) = side else { continue };
                    match take(key)? {
                        Some(last) => *current = last,
                        None => *side = None,
                    }
                    evicted += 1;
                }
            }
            self.export(slot, conversation, ending, out);
            if ending != Ending::Open {
                self.forget(slot);
            }
        }
        Ok(evicted)
    }

    /// What the touched conversation `i` would export at `now_ns`, as read (without taking
    /// ended ones out of the kernel): `None` when it is held back or has nothing new.
    pub(super) fn preview(&self, i: usize, now_ns: u64) -> Option<Conversation> {
        let t = self.timeouts;
        let slot = self.touched[i];
        let conversation = self.conversation(slot);
        let ending = conversation.ending(now_ns, t.idle_ns, t.closed_ns);
        if self.held_back(slot, &conversation, ending) {
            return None;
        }
        self.delta(slot, conversation)
    }

    /// Whether an open conversation's counts wait for a later scan (the exported baselines
    /// stay, so nothing is lost):
    /// - closing (TCP end seen, not yet quiet for the closed timeout): its last counts leave
    ///   with the end reason in one record;
    /// - a lone answer read for the first time: its A->B entry existed when the answer's was
    ///   created (else the kernel would have marked the answer `FLOW_INITIATOR`), so it is in
    ///   the table and the walk passed its place before it was created (a scan is not a
    ///   snapshot). The next scan reads both and records the conversation as A->B, with A's
    ///   direction, rather than guessing the direction from the answer alone.
    fn held_back(&self, slot: u32, conversation: &Conversation, ending: Ending) -> bool {
        if ending != Ending::Open {
            return false;
        }
        let lone_new_answer = conversation.a_to_b.is_none()
            && self.slots[slot as usize]
                .sides
                .iter()
                .all(|s| s.generation != self.generation || s.new);
        conversation.tcp_end().is_some() || lone_new_answer
    }

    /// Every conversation this scan read, as read (with or without anything new), and whether
    /// it exported records before this scan.
    pub(super) fn read_conversations(
        &self,
    ) -> impl Iterator<Item = (Conversation, bool)> + Clone + '_ {
        self.touched.iter().map(|&slot| {
            let exported = self.slots[slot as usize]
                .sides
                .iter()
                .any(|s| s.generation == self.generation && s.exported.packets > 0);
            (self.conversation(slot), exported)
        })
    }

    /// Exports the touched conversations `range` as ended (the table was emptied; then
    /// [`Ledger::forget_all`]).
    pub(super) fn export_ended(&mut self, range: std::ops::Range<usize>, out: &mut Vec<Exported>) {
        for i in range {
            let slot = self.touched[i];
            let conversation = self.conversation(slot);
            let ending = match conversation.ending(u64::MAX, u64::MAX - 1, 0) {
                Ending::Open | Ending::Idle => Ending::Shutdown,
                end => end,
            };
            self.export(slot, conversation, ending, out);
        }
    }

    /// Forgets every entry (the table was emptied).
    pub(super) fn forget_all(&mut self) {
        self.index.clear();
        self.slots.clear();
        self.free.clear();
    }

    /// Files every entry of `read` under its conversation's slot (a new entry joins the slot of
    /// its opposite direction, or gets a new one, starting from `exported(position, counts)`:
    /// what a previous collector exported of it) and lists the slots touched.
    fn index_read(&mut self, mut exported: impl FnMut(usize, &FlowStats) -> Baseline) {
        self.generation = self.generation.wrapping_add(1).max(1);
        let generation = self.generation;
        self.touched.clear();
        // Room for a table that grew, at once rather than by repeated doubling.
        self.index
            .reserve(self.read.len().saturating_sub(self.index.len()));
        for i in 0..self.read.len() {
            let key = &self.read[i].0;
            let (at, new) = match self.index.get(key) {
                Some(&at) => (at, false),
                None => {
                    let key = *key;
                    let at = self.place(&key);
                    self.index.insert(key, at);
                    (at, true)
                }
            };
            let resumed = new.then(|| exported(i, &self.read[i].1));
            let slot = &mut self.slots[(at >> 1) as usize];
            if slot.generation != generation {
                slot.generation = generation;
                self.touched.push(at >> 1);
            }
            let side = &mut slot.sides[(at & 1) as usize];
            side.generation = generation;
            side.read_at = i as u32;
            side.new = new;
            if let Some(b) = resumed {
                side.exported = b;
            }
        }
    }

    /// Where a key new to the ledger goes: the empty side of its opposite direction's slot
    /// (that direction seen either way across the interface, see `FlowKey::answer`), or a new
    /// slot.
    fn place(&mut self, key: &FlowKey) -> u32 {
        if self.timeouts.bidirectional {
            for direction in key.answer_directions() {
                let Some(answer) = key.answer(direction) else {
                    break;
                };
                let Some(other) = self.index.get(&answer).map(|at| at ^ 1) else {
                    continue;
                };
                let side = &self.slots[(other >> 1) as usize].sides[(other & 1) as usize];
                if side.generation == 0 {
                    return other;
                }
            }
        }
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(Slot::default());
            (self.slots.len() - 1) as u32
        });
        slot << 1
    }

    /// The conversation of `slot` as this scan read it.
    fn conversation(&self, slot: u32) -> Conversation {
        let [x, y] = self.slots[slot as usize]
            .sides
            .map(|s| (s.generation == self.generation).then(|| self.read[s.read_at as usize]));
        let (x, y) = match (x, y) {
            (Some(x), y) => (x, y),
            (None, Some(y)) => (y, None),
            (None, None) => unreachable!("a touched slot has an entry read in this scan"),
        };
        if self.timeouts.bidirectional {
            Conversation::join(x, y)
        } else {
            Conversation::one_way(x)
        }
    }

    /// Appends to `out` what `conversation` (this scan's cumulative counts of `slot`) added
    /// since its previous export, and records the new baselines.
    fn export(
        &mut self,
        slot: u32,
        current: Conversation,
        ending: Ending,
        out: &mut Vec<Exported>,
    ) {
        let delta = self.delta(slot, current);
        for (key, counts) in [current.a_to_b, current.b_to_a].into_iter().flatten() {
            if let Some(side) = self.side(slot, &key) {
                let side = &mut self.slots[slot as usize].sides[side];
                let now = Baseline {
                    packets: counts.packets,
                    bytes: counts.bytes,
                    last_seen_ns: counts.last_seen_ns,
                };
                if ending == Ending::Open && side.exported != now {
                    self.kept.push(side.read_at);
                }
                side.exported = now;
            }
        }
        if let Some(conversation) = delta {
            out.push(Exported {
                conversation,
                ending,
            });
        }
    }

    /// What `conversation` (cumulative counts of `slot`) added since its previous export;
    /// `None` when nothing.
    fn delta(&self, slot: u32, mut delta: Conversation) -> Option<Conversation> {
        for part in [&mut delta.a_to_b, &mut delta.b_to_a] {
            let Some((key, current)) = part else { continue };
            let Some(side) = self.side(slot, key) else {
                continue;
            };
            match since(&self.slots[slot as usize].sides[side].exported, current) {
                Some(d) => *current = d,
                None => *part = None,
            }
        }
        (delta.a_to_b.is_some() || delta.b_to_a.is_some()).then_some(delta)
    }

    /// Which side of `slot` this scan read `key` into.
    fn side(&self, slot: u32, key: &FlowKey) -> Option<usize> {
        self.slots[slot as usize].sides.iter().position(|s| {
            s.generation == self.generation && self.read[s.read_at as usize].0 == *key
        })
    }

    /// Drops the entries of `slot` read in this scan (they left the kernel table); the slot is
    /// reused once empty.
    fn forget(&mut self, slot: u32) {
        let generation = self.generation;
        let s = &mut self.slots[slot as usize];
        for side in &mut s.sides {
            if side.generation == generation {
                self.index.remove(&self.read[side.read_at as usize].0);
                *side = Side::default();
            }
        }
        if s.sides.iter().all(|side| side.generation == 0) {
            self.free.push(slot);
        }
    }
}

/// The part of `current` (cumulative) not yet in `before`; `None` when nothing new arrived.
/// The delta starts at the last packet already exported (the kernel keeps no per-interval first
/// packet time), or at the flow's first packet.
fn since(before: &Baseline, current: &FlowStats) -> Option<FlowStats> {
    if before.packets == 0 {
        return Some(*current);
    }
    if current.packets <= before.packets {
        return None;
    }
    Some(FlowStats {
        packets: current.packets - before.packets,
        bytes: current.bytes.saturating_sub(before.bytes),
        first_seen_ns: before.last_seen_ns,
        last_seen_ns: current.last_seen_ns,
        tcp_flags: current.tcp_flags,
        flags: current.flags,
        _pad: [0; 5],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversation::tests::key;
    use flowlens_common::{DIRECTION_EGRESS, DIRECTION_INGRESS, FLOW_INITIATOR};

    fn stats(packets: u64, bytes: u64, first: u64, last: u64) -> FlowStats {
        FlowStats {
            packets,
            bytes,
            first_seen_ns: first,
            last_seen_ns: last,
            tcp_flags: 0x10,
            flags: 0,
            _pad: [0; 5],
        }
    }

    #[test]
    fn deltas_between_exports() {
        let first = stats(3, 300, 10, 20);
        assert_eq!(since(&Baseline::default(), &first), Some(first));
        let before = Baseline {
            packets: 3,
            bytes: 300,
            last_seen_ns: 20,
        };
        assert_eq!(since(&before, &first), None);
        let later = stats(5, 520, 10, 40);
        assert_eq!(since(&before, &later), Some(stats(2, 220, 20, 40)));
    }

    /// A key and the key of the opposite direction.
    fn ends(k: FlowKey) -> (FlowKey, FlowKey) {
        (k, k.reverse().unwrap())
    }

    fn ledger(bidirectional: bool) -> Ledger {
        Ledger::new(Timeouts {
            idle_ns: 1_000,
            closed_ns: 10,
            bidirectional,
        })
    }

    type Entries = Vec<(FlowKey, FlowStats)>;

    /// One scan at `now` over the table `kernel` (its entries, in read order).
    fn scan(ledger: &mut Ledger, kernel: &mut Entries, now: u64) -> (Vec<Exported>, usize) {
        scan_read(ledger, kernel.clone(), kernel, now)
    }

    /// One scan at `now` that read `read`; ended entries are taken from `kernel` (which may
    /// have moved on since the read).
    fn scan_read(
        ledger: &mut Ledger,
        read: Entries,
        kernel: &mut Entries,
        now: u64,
    ) -> (Vec<Exported>, usize) {
        ledger.read = read;
        let mut out = Vec::new();
        let evicted = ledger
            .export_read(now, &mut out, |k| {
                let at = kernel.iter().position(|(x, _)| x == k);
                Ok(at.map(|i| kernel.remove(i).1))
            })
            .unwrap();
        (out, evicted)
    }

    #[test]
    fn directions_join_across_scans_and_export_only_what_is_new() {
        let (client, server) = ends(key(1, 40000, 2, 53, DIRECTION_EGRESS));
        let mut first = stats(1, 80, 10, 10);
        first.flags = FLOW_INITIATOR;
        let mut kernel = vec![(client, first)];
        let mut l = ledger(true);

        let (out, _) = scan(&mut l, &mut kernel, 100);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].conversation.a_to_b, Some((client, first)));
        assert_eq!(out[0].conversation.b_to_a, None);

        // The answer arrives and is listed first: it joins the client's conversation as B->A.
        let mut more = stats(3, 240, 10, 50);
        more.flags = FLOW_INITIATOR;
        kernel = vec![(server, stats(2, 400, 20, 40)), (client, more)];
        let (out, _) = scan(&mut l, &mut kernel, 100);
        assert_eq!(out.len(), 1);
        let c = out[0].conversation;
        assert_eq!(c.key(), client);
        let (ab, ba) = (c.a_to_b.unwrap().1, c.b_to_a.unwrap().1);
        assert_eq!((ab.packets, ab.bytes, ab.first_seen_ns), (2, 160, 10));
        assert_eq!((ba.packets, ba.bytes), (2, 400));
        assert_eq!(l.slots.len(), 1, "one slot for the conversation");

        // Nothing new: nothing exported.
        let (out, _) = scan(&mut l, &mut kernel, 100);
        assert!(out.is_empty());
    }

    #[test]
    fn mirror_port_directions_both_ingress_join_and_keep_their_orientation() {
        let client = key(1, 40000, 2, 80, DIRECTION_INGRESS);
        let server = key(2, 80, 1, 40000, DIRECTION_INGRESS);
        let initiator = |s: FlowStats| FlowStats {
            flags: FLOW_INITIATOR,
            ..s
        };
        let mut l = ledger(true);
        let mut kernel = vec![(client, initiator(stats(1, 74, 10, 10)))];
        assert_eq!(scan(&mut l, &mut kernel, 100).0.len(), 1);

        // The answer (also ingress) is listed first; it joins the client's slot as B->A.
        kernel = vec![
            (server, stats(1, 74, 20, 20)),
            (client, initiator(stats(2, 140, 10, 30))),
        ];
        let (out, _) = scan(&mut l, &mut kernel, 100);
        assert_eq!(out.len(), 1);
        let c = out[0].conversation;
        assert_eq!((c.key(), l.slots.len()), (client, 1));
        assert_eq!(c.b_to_a.map(|(k, s)| (k, s.packets)), Some((server, 1)));

        // Only the server sends: the delta has no A->B part and still says A's direction.
        kernel[0].1 = stats(4, 3_074, 20, 60);
        let (out, _) = scan(&mut l, &mut kernel, 100);
        let c = out[0].conversation;
        assert_eq!(c.a_to_b, None);
        assert_eq!(c.b_to_a.map(|(_, s)| s.packets), Some(3));
        assert_eq!(c.key(), client, "A = client, direction ingress");
    }

    #[test]
    fn answer_read_before_its_initiator_waits_one_scan_and_joins_it() {
        // Mirror port: both directions ingress. The walk passed the client's place before its
        // entry was created and read the server's answer, created after it (so not marked
        // initiator), alone.
        let client = key(1, 40000, 2, 80, DIRECTION_INGRESS);
        let server = key(2, 80, 1, 40000, DIRECTION_INGRESS);
        let initiator = FlowStats {
            flags: FLOW_INITIATOR,
            ..stats(1, 74, 10, 10)
        };
        let mut l = ledger(true);
        let read = vec![(server, stats(1, 74, 20, 20))];
        let mut kernel = vec![(client, initiator), read[0]];
        assert!(scan_read(&mut l, read, &mut kernel, 100).0.is_empty());
        let (out, _) = scan(&mut l, &mut kernel, 100);
        assert_eq!(out.len(), 1);
        let c = out[0].conversation;
        assert_eq!(c.key(), client, "A = client, direction ingress");
        assert_eq!(c.b_to_a.map(|(k, s)| (k, s.packets)), Some((server, 1)));

        // An answer that stays alone (its initiator's entry is gone) is exported one scan
        // later, oriented as on a host's own interface; an ending one at once.
        let lone = key(3, 80, 1, 40001, DIRECTION_INGRESS);
        let mut kernel = vec![(lone, stats(2, 148, 30, 30))];
        assert!(scan(&mut l, &mut kernel, 100).0.is_empty());
        let (out, _) = scan(&mut l, &mut kernel, 100);
        assert_eq!(out[0].conversation.b_to_a.map(|(_, s)| s.packets), Some(2));
        let ending = key(4, 80, 1, 40002, DIRECTION_INGRESS);
        let (out, _) = scan(&mut l, &mut vec![(ending, stats(1, 74, 30, 30))], 5_000);
        assert_eq!(out[0].ending, Ending::Idle);
    }

    #[test]
    fn ended_conversations_are_taken_with_their_last_counts_and_slots_reused() {
        let (a, b) = ends(key(1, 40000, 2, 53, DIRECTION_EGRESS));
        let mut l = ledger(true);
        let mut kernel = vec![(a, stats(1, 80, 10, 10)), (b, stats(1, 90, 11, 11))];
        scan(&mut l, &mut kernel, 100);
        // Between the read and the take, one more packet arrived on A->B.
        let read = kernel.clone();
        kernel[0].1 = stats(2, 160, 10, 900);
        let (out, evicted) = scan_read(&mut l, read, &mut kernel, 2_000);
        assert_eq!(evicted, 2);
        assert!(kernel.is_empty());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].ending, Ending::Idle);
        let c = out[0].conversation;
        assert_eq!(c.a_to_b.map(|(_, s)| s.packets), Some(1), "the late packet");
        assert_eq!(c.b_to_a, None, "nothing new on B->A");
        assert!(l.index.is_empty());
        assert_eq!(l.free, vec![0]);

        // A new flow reuses the slot and starts from zero.
        let c2 = (
            key(3, 1000, 2, 53, DIRECTION_EGRESS),
            FlowStats {
                flags: FLOW_INITIATOR,
                ..stats(4, 400, 3_000, 3_000)
            },
        );
        let (out, _) = scan(&mut l, &mut vec![c2], 3_000);
        assert_eq!(l.slots.len(), 1);
        assert_eq!(out[0].conversation.a_to_b, Some(c2));
    }

    #[test]
    fn closing_conversation_is_held_back_then_leaves_in_one_record() {
        let (a, b) = ends(key(1, 40000, 2, 80, DIRECTION_EGRESS));
        let fin = |packets, last| FlowStats {
            tcp_flags: 0x11,
            ..stats(packets, packets * 100, 0, last)
        };
        let mut l = ledger(true);
        let mut kernel = vec![(a, stats(5, 500, 0, 50)), (b, stats(5, 500, 1, 50))];
        assert_eq!(scan(&mut l, &mut kernel, 60).0.len(), 1);
        kernel = vec![(a, fin(7, 100)), (b, fin(6, 105))];
        assert!(scan(&mut l, &mut kernel, 110).0.is_empty(), "held back");
        let (out, evicted) = scan(&mut l, &mut kernel, 200);
        assert_eq!((out.len(), evicted), (1, 2));
        assert_eq!(out[0].ending, Ending::Fin);
        let c = out[0].conversation;
        assert_eq!(c.a_to_b.unwrap().1.packets + c.b_to_a.unwrap().1.packets, 3);
    }

    #[test]
    fn one_way_records_when_not_bidirectional() {
        let (a, b) = ends(key(1, 40000, 2, 53, DIRECTION_EGRESS));
        let mut l = ledger(false);
        let mut kernel = vec![(a, stats(1, 80, 10, 10)), (b, stats(1, 90, 11, 11))];
        let (out, _) = scan(&mut l, &mut kernel, 100);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|e| e.conversation.b_to_a.is_none()));
        assert_eq!(out[1].conversation.key(), b);
    }
}
