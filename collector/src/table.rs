//! Flow table management: every scan exports what each conversation added since the last export
//! (active timeout = the scan interval) while live flows stay in the kernel table, so the
//! per-packet path never pays a re-insert; conversations idle longer than the idle timeout, or
//! TCP-closed (RST, FIN both ways) and quiet for the closed timeout, are taken out atomically
//! (lookup-and-delete of each direction's key) with their last counts. At shutdown the whole
//! table is drained.

use std::io;
use std::os::fd::BorrowedFd;

use flowlens_common::{FlowKey, FlowStats};

use crate::conversation::{fast_map, pair, Conversation, Ending, FastMap};
use crate::drain::Drainer;

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

/// The user-space side of the kernel table: what was already exported for each live flow.
pub struct FlowTable {
    drainer: Drainer,
    timeouts: Timeouts,
    exported: FastMap<FlowKey, FlowStats>,
    read: Vec<(FlowKey, FlowStats)>,
}

impl FlowTable {
    pub fn new(drainer: Drainer, timeouts: Timeouts) -> Self {
        Self {
            drainer,
            timeouts,
            exported: fast_map(0),
            read: Vec::new(),
        }
    }

    /// Reads the table; appends to `out` each conversation's counts since its previous export,
    /// and evicts conversations that ended (idle, or TCP closed and quiet) at `now_ns`
    /// (monotonic clock), both directions at once.
    pub fn scan(
        &mut self,
        map: BorrowedFd<'_>,
        now_ns: u64,
        out: &mut Vec<Exported>,
    ) -> io::Result<ScanStats> {
        self.read.clear();
        let mut stats = ScanStats {
            syscalls: self.drainer.read_all(map, false, &mut self.read)?,
            entries: self.read.len(),
            ..ScanStats::default()
        };
        let t = self.timeouts;
        for mut conversation in pair(&self.read, t.bidirectional) {
            let ending = conversation.ending(now_ns, t.idle_ns, t.closed_ns);
            if ending == Ending::Open && conversation.tcp_end().is_some() {
                // Closing: hold the last counts back (at most the closed timeout) so they
                // leave with the end reason in one record; the exported baseline stays.
                continue;
            }
            if ending != Ending::Open {
                for side in [&mut conversation.a_to_b, &mut conversation.b_to_a] {
                    let Some((key, current)) = side else { continue };
                    stats.syscalls += 1;
                    match self.drainer.take(map, key)? {
                        Some(last) => *current = last,
                        None => *side = None,
                    }
                    stats.evicted += 1;
                }
            }
            let mut delta = conversation;
            for side in [&mut delta.a_to_b, &mut delta.b_to_a] {
                let Some((key, current)) = side else { continue };
                // One hash lookup per live entry, updated in place: entries leave the kernel
                // table only through the deletes above, so the map holds no stale keys.
                let d = if ending == Ending::Open {
                    match self.exported.get_mut(key) {
                        Some(before) => {
                            let d = since(Some(before), current);
                            *before = *current;
                            d
                        }
                        None => {
                            self.exported.insert(*key, *current);
                            Some(*current)
                        }
                    }
                } else {
                    since(self.exported.remove(key).as_ref(), current)
                };
                match d {
                    Some(d) => *current = d,
                    None => *side = None,
                }
            }
            if delta.a_to_b.is_some() || delta.b_to_a.is_some() {
                out.push(Exported {
                    conversation: delta,
                    ending,
                });
            }
        }
        Ok(stats)
    }

    /// Empties the kernel table and appends every conversation's counts since its previous
    /// export, all ending with `Ending::Shutdown` (or FIN/RST when the TCP end was seen).
    pub fn drain(&mut self, map: BorrowedFd<'_>, out: &mut Vec<Exported>) -> io::Result<usize> {
        self.read.clear();
        let calls = self.drainer.read_all(map, true, &mut self.read)?;
        for conversation in pair(&self.read, self.timeouts.bidirectional) {
            let ending = match conversation.ending(u64::MAX, u64::MAX - 1, 0) {
                Ending::Open | Ending::Idle => Ending::Shutdown,
                end => end,
            };
            let mut delta = conversation;
            for side in [&mut delta.a_to_b, &mut delta.b_to_a] {
                let Some((key, current)) = side else { continue };
                match since(self.exported.get(key), current) {
                    Some(d) => *current = d,
                    None => *side = None,
                }
            }
            if delta.a_to_b.is_some() || delta.b_to_a.is_some() {
                out.push(Exported {
                    conversation: delta,
                    ending,
                });
            }
        }
        self.exported.clear();
        Ok(calls)
    }
}

/// The part of `current` (cumulative) not yet in `before`; `None` when nothing new arrived.
/// The delta starts at the last packet already exported (the kernel keeps no per-interval first
/// packet time), or at the flow's first packet.
fn since(before: Option<&FlowStats>, current: &FlowStats) -> Option<FlowStats> {
    let Some(b) = before else {
        return Some(*current);
    };
    if current.packets <= b.packets {
        return None;
    }
    Some(FlowStats {
        packets: current.packets - b.packets,
        bytes: current.bytes.saturating_sub(b.bytes),
        first_seen_ns: b.last_seen_ns,
        last_seen_ns: current.last_seen_ns,
        tcp_flags: current.tcp_flags,
        flags: current.flags,
        _pad: [0; 5],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(since(None, &first), Some(first));
        assert_eq!(since(Some(&first), &first), None);
        let later = stats(5, 520, 10, 40);
        assert_eq!(since(Some(&first), &later), Some(stats(2, 220, 20, 40)));
    }
}
