//! Flow table management: every scan exports what each conversation added since the last export
//! (active timeout = the scan interval) while live flows stay in the kernel table, so the
//! per-packet path never pays a re-insert; conversations idle longer than the idle timeout, or
//! TCP-closed (RST, FIN both ways) and quiet for the closed timeout, are taken out (each
//! direction's slots marked dead, kernel.rs) with their last counts. At shutdown the whole
//! table is drained, unless it is pinned: then what each chunk exported is kept beside it once
//! acknowledged ([`FlowTable::commit`]), and the next collector resumes from there.

use std::io;

use flowlens_common::{FlowKey, FlowStats};

use crate::conversation::{Conversation, Duplicates, Ending};

mod kernel;
mod ledger;
mod mapping;

pub use kernel::{KernelTable, ReadStats, SlotBaseline, GRACE_NS};
use ledger::Ledger;

/// What one scan found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanStats {
    /// Entries in the kernel table when it was read.
    pub entries: usize,
    /// Entries removed from the kernel table (idle or closed conversations).
    pub evicted: usize,
    pub syscalls: usize,
}

/// One conversation's part of a scan: what each direction added since its previous export
/// (`None` for a direction with nothing new), and whether this is its last record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exported {
    pub conversation: Conversation,
    pub ending: Ending,
}

/// Table timing: idle flows leave after `idle_ns`, closed TCP conversations after `closed_ns`
/// of quiet; `bidirectional` joins the two directions of a conversation.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub idle_ns: u64,
    pub closed_ns: u64,
    pub bidirectional: bool,
}

/// The user-space side of the kernel table: its mapping, and the ledger of what each live entry
/// already exported. A scan is read at once ([`FlowTable::begin`]) and exported a chunk of
/// conversations at a time ([`FlowTable::next`]), so a scan of a million flows never holds a
/// million records.
pub struct FlowTable {
    kernel: KernelTable,
    ledger: Ledger,
    /// Entries that are not the ledger's: what reached taken slots, overflow counts.
    extra: Vec<(FlowKey, FlowStats)>,
    scan: Option<Cursor>,
    /// The scan's last chunk (late packets, overflow) was handed out and is not committed yet.
    last_out: bool,
}

/// Where the scan in progress is.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    now_ns: u64,
    /// The table was emptied: every conversation ends.
    drained: bool,
    next: usize,
    touched: usize,
    /// Ending of the extra entries (late packets: `idle`; overflow: open or `shutdown`).
    late_ending: Ending,
    overflow_from: usize,
    extra_done: bool,
}

/// One chunk of a scan.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Entries taken out of the kernel table for this chunk.
    pub evicted: usize,
    /// The scan is over: nothing was appended.
    pub done: bool,
}

impl FlowTable {
    pub fn new(kernel: KernelTable, timeouts: Timeouts) -> Self {
        Self {
            kernel,
            ledger: Ledger::new(timeouts),
            extra: Vec::new(),
            scan: None,
            last_out: false,
        }
    }

    /// Reads the table at `now_ns` (monotonic clock); [`FlowTable::next`] then exports each
    /// conversation's counts since its previous export and takes out conversations that ended
    /// (idle, or TCP closed and quiet), both directions at once. Also exported, after them:
    /// packets that reached a flow in the instant it was taken out (a record of their own,
    /// ending `idle`, one grace period later) and the packets of flows that found no room (per
    /// interface, see `FlowKey::overflow`).
    pub fn begin(&mut self, now_ns: u64) -> io::Result<ScanStats> {
        self.extra.clear();
        self.kernel
            .read(now_ns, &mut self.ledger.read, &mut self.extra)?;
        let entries = self.ledger.read.len();
        let overflow_from = self.extra.len();
        let syscalls = self.kernel.read_overflow(&mut self.extra)?;
        let kernel = &self.kernel;
        let touched = self
            .ledger
            .file_read(|at, stats| kernel.exported_baseline(at, stats));
        self.scan = Some(Cursor {
            now_ns,
            drained: false,
            next: 0,
            touched,
            late_ending: Ending::Idle,
            overflow_from,
            extra_done: false,
        });
        Ok(ScanStats {
            entries,
            evicted: 0,
            syscalls,
        })
    }

    /// Empties the kernel table; [`FlowTable::next`] then exports every conversation's counts
    /// since its previous export, all ending with `Ending::Shutdown` (or FIN/RST when the TCP
    /// end was seen). Returns the number of entries taken.
    pub fn begin_drain(&mut self) -> io::Result<usize> {
        self.extra.clear();
        self.kernel.take_all(&mut self.ledger.read)?;
        let entries = self.ledger.read.len();
        self.kernel.read_overflow(&mut self.extra)?;
        self.scan = Some(Cursor {
            now_ns: u64::MAX,
            drained: true,
            next: 0,
            touched: self.ledger.file_read(|_, _| Default::default()),
            late_ending: Ending::Shutdown,
            overflow_from: 0,
            extra_done: false,
        });
        Ok(entries)
    }

    /// Appends the next conversations of the scan in progress to `out`, at most `max` of the
    /// table's (the scan's extra entries come in one last chunk).
    pub fn next(&mut self, out: &mut Vec<Exported>, max: usize) -> io::Result<Chunk> {
        let Some(mut c) = self.scan else {
            return Ok(Chunk {
                evicted: 0,
                done: true,
            });
        };
        let mut chunk = Chunk::default();
        if c.next < c.touched {
            let range = c.next..(c.next + max.max(1)).min(c.touched);
            c.next = range.end;
            if c.drained {
                self.ledger.export_ended(range, out);
            } else {
                let (kernel, now) = (&mut self.kernel, c.now_ns);
                chunk.evicted = self
                    .ledger
                    .export_touched(range, now, out, |key| kernel.take(key, now))?;
                let mut kept = std::mem::take(&mut self.ledger.kept);
                for &at in &kept {
                    self.kernel
                        .exported(at as usize, &self.ledger.read[at as usize].1);
                }
                kept.clear();
                self.ledger.kept = kept;
            }
        } else if !c.extra_done {
            c.extra_done = true;
            self.last_out = true;
            for (i, entry) in self.extra.drain(..).enumerate() {
                let ending = match (i < c.overflow_from, c.drained) {
                    (true, _) => c.late_ending,
                    (false, true) => Ending::Shutdown,
                    (false, false) => Ending::Open,
                };
                out.push(Exported {
                    conversation: Conversation::one_way(entry),
                    ending,
                });
            }
            if c.drained {
                self.ledger.forget_all();
            }
        } else {
            self.scan = None;
            chunk.done = true;
            return Ok(chunk);
        }
        self.scan = Some(c);
        Ok(chunk)
    }

    /// The chunks handed out since the previous commit were acknowledged by the broker: a
    /// pinned table keeps what they exported (see `KernelTable::commit`); nothing to do for
    /// one that is not pinned. Not called for chunks that were not all delivered.
    pub fn commit(&mut self) -> io::Result<()> {
        let last = std::mem::take(&mut self.last_out);
        self.kernel.commit(last)
    }

    /// Which of the scan in progress's records repeat packets another one counts (see
    /// `conversation::duplicates`), decided before its first chunk on every conversation read
    /// (ended ones with the counts read, not those taken out; those with nothing new too, as
    /// they may be the ones counted), or at once when every entry is on one interface.
    pub fn duplicates(&self) -> Duplicates {
        let mut interfaces = self
            .ledger
            .read
            .iter()
            .chain(&self.extra)
            .map(|(k, _)| k.ifindex);
        let first = interfaces.next();
        if interfaces.all(|i| Some(i) == first) {
            return Duplicates::default();
        }
        let extra = self
            .extra
            .iter()
            .map(|e| (Conversation::one_way(*e), false));
        Duplicates::ranked(self.ledger.read_conversations().chain(extra))
    }

    /// The conversations the scan in progress will export, as read: ended ones with the counts
    /// read, not those taken out.
    pub fn preview(&self) -> impl Iterator<Item = Conversation> + Clone + '_ {
        let scan = self.scan;
        let ledger = &self.ledger;
        let (touched, now) = scan.map_or((0, 0), |c| (c.touched, c.now_ns));
        let drained = scan.is_some_and(|c| c.drained);
        (0..touched)
            .filter_map(move |i| {
                if drained {
                    ledger.preview(i, u64::MAX)
                } else {
                    ledger.preview(i, now)
                }
            })
            .chain(self.extra.iter().map(|e| Conversation::one_way(*e)))
    }

    /// Reads the table and appends every conversation's export to `out` (see
    /// [`FlowTable::begin`]).
    pub fn scan(&mut self, now_ns: u64, out: &mut Vec<Exported>) -> io::Result<ScanStats> {
        let mut stats = self.begin(now_ns)?;
        stats.evicted = self.rest(out)?;
        Ok(stats)
    }

    /// Empties the kernel table and appends every conversation's export to `out` (see
    /// [`FlowTable::begin_drain`]).
    pub fn drain(&mut self, out: &mut Vec<Exported>) -> io::Result<usize> {
        let entries = self.begin_drain()?;
        self.rest(out)?;
        Ok(entries)
    }

    fn rest(&mut self, out: &mut Vec<Exported>) -> io::Result<usize> {
        let mut evicted = 0;
        loop {
            let chunk = self.next(out, usize::MAX)?;
            if chunk.done {
                return Ok(evicted);
            }
            evicted += chunk.evicted;
        }
    }

    /// The table's layout (for metrics and logs).
    pub fn layout(&self) -> flowlens_common::table::TableLayout {
        self.kernel.layout()
    }
}

#[cfg(test)]
mod tests {
    use super::kernel::tests::{key, put, set, set_seen, table};
    use super::*;
    use flowlens_common::table::TAG_LIVE;

    fn timeouts() -> Timeouts {
        Timeouts {
            idle_ns: u64::MAX / 4,
            closed_ns: u64::MAX / 4,
            bidirectional: true,
        }
    }

    /// A table holding five one-way flows (ports 1..=5, n packets each).
    fn five_flows() -> FlowTable {
        let kernel = table(64);
        for port in 1..=5u16 {
            // Distinct positions: two keys may share a bucket.
            put(&kernel, &key(port), port as usize, port.into(), TAG_LIVE);
        }
        FlowTable::new(kernel, timeouts())
    }

    #[test]
    fn chunks_export_what_one_scan_exports() {
        let mut all = Vec::new();
        let stats = five_flows().scan(0, &mut all).unwrap();
        assert_eq!((stats.entries, all.len()), (5, 5));

        let mut t = five_flows();
        t.begin(0).unwrap();
        let previewed: Vec<_> = t.preview().collect();
        let (mut chunked, mut chunks) = (Vec::new(), 0);
        loop {
            let mut out = Vec::new();
            if t.next(&mut out, 2).unwrap().done {
                break;
            }
            assert!(out.len() <= 2);
            chunks += 1;
            chunked.extend(out);
        }
        assert_eq!(
            chunks, 4,
            "three of the table's, then the (empty) extra one"
        );
        assert_eq!(chunked, all);
        let exported: Vec<_> = all.iter().map(|e| e.conversation).collect();
        assert_eq!(previewed, exported, "what the scan exports, before it does");
        assert!(exported.iter().all(|c| !t.duplicates().is_duplicate(c)));
        // Nothing new since: the next scan exports nothing.
        let mut again = Vec::new();
        t.scan(1, &mut again).unwrap();
        assert!(again.is_empty(), "{again:?}");
    }

    /// Packets not marked duplicate, per interface, of one scan at `now`.
    fn counted(t: &mut FlowTable, now: u64) -> Vec<(u32, u64)> {
        t.begin(now).unwrap();
        let rule = t.duplicates();
        let mut out = Vec::new();
        t.rest(&mut out).unwrap();
        out.iter()
            .filter(|e| !rule.is_duplicate(&e.conversation))
            .filter_map(|e| e.conversation.a_to_b)
            .map(|(k, s)| (k.ifindex, s.packets))
            .collect()
    }

    #[test]
    fn packets_a_scan_counted_on_one_interface_are_not_counted_again_on_another() {
        // A scan is not a snapshot: the entry a forwarded flow makes on its second interface
        // may appear one scan after the one on its first (created while the scan ran, in a
        // slot it had passed). Either order, with other interfaces in the scan or not.
        for (first, second, other) in [(2, 3, true), (3, 2, true), (2, 3, false), (3, 2, false)] {
            let kernel = table(64);
            let on = |ifindex| FlowKey { ifindex, ..key(9) };
            let a = put(&kernel, &on(first), 0, 30, TAG_LIVE);
            if other {
                put(
                    &kernel,
                    &FlowKey {
                        ifindex: 7,
                        ..key(1)
                    },
                    2,
                    1,
                    TAG_LIVE,
                );
            }
            let mut t = FlowTable::new(kernel, timeouts());
            assert_eq!(
                counted(&mut t, 0).iter().find(|c| c.0 != 7),
                Some(&(first, 30))
            );
            let b = put(&t.kernel, &on(second), 1, 30, TAG_LIVE);
            assert_eq!(counted(&mut t, 1), vec![], "{first} -> {second}");
            // Both go on: once both exported, either one's new packets count once (the first
            // packet, then the lowest index, decide which).
            set(&t.kernel, a, &on(first), 35, 0);
            set(&t.kernel, b, &on(second), 35, 0);
            assert_eq!(counted(&mut t, 2), vec![(2, 5)]);
        }
        // Read in one scan: the first packet, then the lowest index, decide.
        let kernel = table(64);
        put(
            &kernel,
            &FlowKey {
                ifindex: 3,
                ..key(9)
            },
            0,
            30,
            TAG_LIVE,
        );
        put(
            &kernel,
            &FlowKey {
                ifindex: 2,
                ..key(9)
            },
            1,
            30,
            TAG_LIVE,
        );
        let mut t = FlowTable::new(kernel, timeouts());
        assert_eq!(counted(&mut t, 0), vec![(2, 30)]);
    }

    /// Packets of `port`'s flow over `exported`.
    fn packets(exported: &[Exported], port: u16) -> u64 {
        exported
            .iter()
            .filter_map(|e| e.conversation.a_to_b)
            .filter(|(k, _)| k.src_port == port)
            .map(|(_, s)| s.packets)
            .sum()
    }

    #[test]
    fn a_pinned_table_resumes_from_what_was_acknowledged() {
        let kernel = table(64).with_memory_baselines();
        let live = put(&kernel, &key(1), 0, 5, TAG_LIVE);
        let ending = put(&kernel, &key(2), 1, 4, TAG_LIVE);
        let mut t = FlowTable::new(
            kernel,
            Timeouts {
                idle_ns: 1_000,
                ..timeouts()
            },
        );
        // Scan 1, acknowledged: 5 and 4 packets.
        let mut out = Vec::new();
        t.scan(0, &mut out).unwrap();
        assert_eq!((packets(&out, 1), packets(&out, 2)), (5, 4));
        t.commit().unwrap();
        // Scan 2, never acknowledged: flow 1 grew to 8, flow 2 (idle) is taken out at 6.
        set_seen(&t.kernel, live, &key(1), 8, 0, 9_999);
        set(&t.kernel, ending, &key(2), 6, 0);
        out.clear();
        t.scan(10_000, &mut out).unwrap();
        assert_eq!((packets(&out, 1), packets(&out, 2)), (3, 2));
        // Killed. The programs go on: flow 1 reaches 10, a late packet reaches flow 2.
        set_seen(&t.kernel, live, &key(1), 10, 0, 19_999);
        set(&t.kernel, ending, &key(2), 7, 0);
        let mut t = FlowTable::new(t.kernel.restart(20_000), timeouts());
        out.clear();
        t.scan(20_000, &mut out).unwrap();
        assert_eq!(packets(&out, 1), 5, "3 not acknowledged + 2 new");
        assert_eq!(
            packets(&out, 2),
            0,
            "the dead slot waits for its grace period"
        );
        t.commit().unwrap();
        out.clear();
        t.scan(20_000 + GRACE_NS, &mut out).unwrap();
        assert_eq!(packets(&out, 2), 3, "2 not acknowledged + 1 late");
        assert_eq!(packets(&out, 1), 0);
        t.commit().unwrap();
        assert_eq!(
            t.kernel.tag_state(ending),
            flowlens_common::table::TAG_FREE,
            "freed once its last record was acknowledged"
        );
    }
}
