//! Flow table management: every scan exports what each conversation added since the last export
//! (active timeout = the scan interval) while live flows stay in the kernel table, so the
//! per-packet path never pays a re-insert; conversations idle longer than the idle timeout, or
//! TCP-closed (RST, FIN both ways) and quiet for the closed timeout, are taken out atomically
//! (lookup-and-delete of each direction's key) with their last counts. At shutdown the whole
//! table is drained.

use std::io;
use std::os::fd::BorrowedFd;

use crate::conversation::{Conversation, Ending};

mod ledger;
mod reader;

use ledger::Ledger;
pub use reader::TableReader;

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

/// The user-space side of the kernel table: batched reads through the reader, and the ledger
/// of what each live entry already exported.
pub struct FlowTable {
    reader: TableReader,
    ledger: Ledger,
}

impl FlowTable {
    pub fn new(reader: TableReader, timeouts: Timeouts) -> Self {
        Self {
            reader,
            ledger: Ledger::new(timeouts),
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
        self.ledger.read.clear();
        let syscalls = self.reader.read_all(map, false, &mut self.ledger.read)?;
        let entries = self.ledger.read.len();
        let reader = &mut self.reader;
        let evicted = self
            .ledger
            .export_read(now_ns, out, |key| reader.take(map, key))?;
        Ok(ScanStats {
            entries,
            evicted,
            syscalls: syscalls + evicted,
        })
    }

    /// Empties the kernel table and appends every conversation's counts since its previous
    /// export, all ending with `Ending::Shutdown` (or FIN/RST when the TCP end was seen).
    pub fn drain(&mut self, map: BorrowedFd<'_>, out: &mut Vec<Exported>) -> io::Result<usize> {
        self.ledger.read.clear();
        let calls = self.reader.read_all(map, true, &mut self.ledger.read)?;
        self.ledger.export_all(out);
        Ok(calls)
    }
}
