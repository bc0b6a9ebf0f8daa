//! Reads the kernel flow table (a per-CPU hash `FlowKey -> FlowStats`) with the batched `bpf()`
//! calls, folding each entry's per-CPU values into one.

use std::io;
use std::os::fd::BorrowedFd;

use flowlens_common::{FlowKey, FlowStats};

use crate::bpf_map::{for_each_entry, take_entry};

/// Reads a per-CPU `FlowKey -> FlowStats` hash map in batches of `batch` entries, reusing its
/// buffers between calls.
pub struct TableReader {
    cpus: usize,
    keys: Vec<FlowKey>,
    values: Vec<FlowStats>,
}

impl TableReader {
    pub fn new(batch: u32, possible_cpus: usize) -> Self {
        let batch = batch as usize;
        Self {
            cpus: possible_cpus,
            keys: vec![FlowKey::default(); batch],
            values: vec![FlowStats::default(); batch * possible_cpus],
        }
    }

    /// Appends every entry of the map to `out` (merged over CPUs); with `delete` the map is
    /// emptied as it is read. Returns the number of syscalls made.
    pub fn read_all(
        &mut self,
        map: BorrowedFd<'_>,
        delete: bool,
        out: &mut Vec<(FlowKey, FlowStats)>,
    ) -> io::Result<usize> {
        for_each_entry(
            map,
            delete,
            self.cpus,
            &mut self.keys,
            &mut self.values,
            |key, values| {
                let merged = merged(values);
                if merged.packets > 0 {
                    out.push((*key, merged));
                }
            },
        )
    }

    /// Removes `key` and returns its counters at the instant of removal (nothing a packet adds
    /// between a read and the delete is lost). `None` if the key was not there.
    pub fn take(&mut self, map: BorrowedFd<'_>, key: &FlowKey) -> io::Result<Option<FlowStats>> {
        let values = &mut self.values[..self.cpus];
        Ok(take_entry(map, key, values)?.then(|| merged(values)))
    }
}

fn merged(values: &[FlowStats]) -> FlowStats {
    let mut merged = FlowStats::default();
    for cpu in values {
        merged.merge(cpu);
    }
    merged
}
