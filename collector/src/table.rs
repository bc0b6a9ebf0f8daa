//! Flow table management: every scan exports what each flow added since the last export
//! (active timeout = the scan interval) while live flows stay in the kernel table, so the
//! per-packet path never pays a re-insert; flows idle longer than the idle timeout are taken out
//! atomically (lookup-and-delete of that key) with their last counts. At shutdown the whole
//! table is drained.

use std::collections::HashMap;
use std::io;
use std::os::fd::BorrowedFd;

use flowlens_common::{FlowKey, FlowStats};

use crate::drain::Drainer;

/// What one scan found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanStats {
    /// Entries in the kernel table when it was read.
    pub entries: usize,
    /// Idle flows removed from the kernel table.
    pub evicted: usize,
    pub syscalls: usize,
}

/// The user-space side of the kernel table: what was already exported for each live flow.
pub struct FlowTable {
    drainer: Drainer,
    idle_ns: u64,
    exported: HashMap<FlowKey, FlowStats>,
    read: Vec<(FlowKey, FlowStats)>,
}

impl FlowTable {
    pub fn new(drainer: Drainer, idle_timeout_ms: u64) -> Self {
        Self {
            drainer,
            idle_ns: idle_timeout_ms * 1_000_000,
            exported: HashMap::new(),
            read: Vec::new(),
        }
    }

    /// Reads the table; appends to `out` each flow's counts since its previous export, and evicts
    /// flows whose last packet is older than the idle timeout at `now_ns` (monotonic clock).
    pub fn scan(
        &mut self,
        map: BorrowedFd<'_>,
        now_ns: u64,
        out: &mut Vec<(FlowKey, FlowStats)>,
    ) -> io::Result<ScanStats> {
        self.read.clear();
        let mut stats = ScanStats {
            syscalls: self.drainer.read_all(map, false, &mut self.read)?,
            entries: self.read.len(),
            ..ScanStats::default()
        };
        let mut seen = HashMap::with_capacity(self.read.len());
        for i in 0..self.read.len() {
            let (key, mut current) = self.read[i];
            let idle = current.last_seen_ns.saturating_add(self.idle_ns) < now_ns;
            if idle {
                stats.syscalls += 1;
                match self.drainer.take(map, &key)? {
                    Some(last) => current = last,
                    None => continue,
                }
                stats.evicted += 1;
            }
            if let Some(delta) = since(self.exported.get(&key), &current) {
                out.push((key, delta));
            }
            if !idle {
                seen.insert(key, current);
            }
        }
        self.exported = seen;
        Ok(stats)
    }

    /// Empties the kernel table and appends every flow's counts since its previous export.
    pub fn drain(
        &mut self,
        map: BorrowedFd<'_>,
        out: &mut Vec<(FlowKey, FlowStats)>,
    ) -> io::Result<usize> {
        self.read.clear();
        let calls = self.drainer.read_all(map, true, &mut self.read)?;
        for (key, current) in &self.read {
            if let Some(delta) = since(self.exported.get(key), current) {
                out.push((*key, delta));
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
        _pad: [0; 6],
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
            _pad: [0; 6],
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
