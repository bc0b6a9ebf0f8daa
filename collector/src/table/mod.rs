//! Flow table management: every scan exports what each conversation added since the last export
//! (active timeout = the scan interval) while live flows stay in the kernel table, so the
//! per-packet path never pays a re-insert; conversations idle longer than the idle timeout, or
//! TCP-closed (RST, FIN both ways) and quiet for the closed timeout, are taken out (each
//! direction's slots marked dead, kernel.rs) with their last counts. At shutdown the whole
//! table is drained.

use std::io;

use flowlens_common::{FlowKey, FlowStats};

use crate::conversation::{Conversation, Ending};

mod kernel;
mod ledger;

pub use kernel::{KernelTable, ReadStats, GRACE_NS};
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
/// already exported.
pub struct FlowTable {
    kernel: KernelTable,
    ledger: Ledger,
    /// Entries that are not the ledger's: what reached taken slots, overflow counts.
    extra: Vec<(FlowKey, FlowStats)>,
}

impl FlowTable {
    pub fn new(kernel: KernelTable, timeouts: Timeouts) -> Self {
        Self {
            kernel,
            ledger: Ledger::new(timeouts),
            extra: Vec::new(),
        }
    }

    /// Reads the table; appends to `out` each conversation's counts since its previous export,
    /// and takes out conversations that ended (idle, or TCP closed and quiet) at `now_ns`
    /// (monotonic clock), both directions at once. Also appended: packets that reached a flow
    /// in the instant it was taken out (a record of their own, ending `idle`, one grace period
    /// later) and the packets of flows that found no room (per interface, see
    /// `FlowKey::overflow`).
    pub fn scan(&mut self, now_ns: u64, out: &mut Vec<Exported>) -> io::Result<ScanStats> {
        self.extra.clear();
        self.kernel
            .read(now_ns, &mut self.ledger.read, &mut self.extra);
        let entries = self.ledger.read.len();
        let kernel = &mut self.kernel;
        let evicted = self
            .ledger
            .export_read(now_ns, out, |key| Ok(kernel.take(key, now_ns)))?;
        self.push_extra(out, Ending::Idle);
        let syscalls = self.kernel.read_overflow(&mut self.extra)?;
        self.push_extra(out, Ending::Open);
        Ok(ScanStats {
            entries,
            evicted,
            syscalls,
        })
    }

    /// Empties the kernel table and appends every conversation's counts since its previous
    /// export, all ending with `Ending::Shutdown` (or FIN/RST when the TCP end was seen).
    /// Returns the number of system calls made.
    pub fn drain(&mut self, out: &mut Vec<Exported>) -> io::Result<usize> {
        self.kernel.take_all(&mut self.ledger.read);
        self.ledger.export_all(out);
        self.extra.clear();
        let syscalls = self.kernel.read_overflow(&mut self.extra)?;
        self.push_extra(out, Ending::Shutdown);
        Ok(syscalls)
    }

    /// The table's layout (for metrics and logs).
    pub fn layout(&self) -> flowlens_common::table::TableLayout {
        self.kernel.layout()
    }

    fn push_extra(&mut self, out: &mut Vec<Exported>, ending: Ending) {
        out.extend(self.extra.drain(..).map(|entry| Exported {
            conversation: Conversation::one_way(entry),
            ending,
        }));
    }
}
