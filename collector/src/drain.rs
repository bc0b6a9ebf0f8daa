//! Batched reads of the kernel flow table through the `bpf()` syscall on the map fd (aya has no
//! batch API): BPF_MAP_LOOKUP_BATCH to read every entry, BPF_MAP_LOOKUP_AND_DELETE_BATCH to empty
//! the table, BPF_MAP_LOOKUP_AND_DELETE_ELEM to take one entry atomically. Per-CPU values are
//! folded into one entry per flow.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use flowlens_common::{FlowKey, FlowStats};

/// `enum bpf_cmd` values (linux/bpf.h).
const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_LOOKUP_AND_DELETE_BATCH: libc::c_long = 25;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// The element member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Reads a per-CPU `FlowKey -> FlowStats` hash map in batches of `batch` entries, reusing its
/// buffers between calls.
pub struct Drainer {
    batch: usize,
    cpus: usize,
    keys: Vec<FlowKey>,
    values: Vec<FlowStats>,
}

impl Drainer {
    pub fn new(batch: u32, possible_cpus: usize) -> Self {
        let batch = batch as usize;
        Self {
            batch,
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
        let cmd = if delete {
            BPF_MAP_LOOKUP_AND_DELETE_BATCH
        } else {
            BPF_MAP_LOOKUP_BATCH
        };
        let mut token = [0u64; 2];
        let mut next_token = [0u64; 2];
        let mut first = true;
        let mut calls = 0;
        loop {
            let mut attr = BatchAttr {
                in_batch: if first { 0 } else { token.as_ptr() as u64 },
                out_batch: next_token.as_mut_ptr() as u64,
                keys: self.keys.as_mut_ptr() as u64,
                values: self.values.as_mut_ptr() as u64,
                count: self.batch as u32,
                map_fd: map.as_raw_fd() as u32,
                ..Default::default()
            };
            calls += 1;
            // SAFETY: the buffers hold `count` keys and `count * cpus` values (FlowStats is
            // 8-byte aligned, the kernel's per-CPU value stride); attr outlives the call.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    cmd,
                    &mut attr as *mut BatchAttr,
                    std::mem::size_of::<BatchAttr>(),
                )
            };
            let err = (rc < 0).then(io::Error::last_os_error);
            let n = attr.count as usize;
            for i in 0..n {
                let merged = self.merged(i);
                if merged.packets > 0 {
                    out.push((self.keys[i], merged));
                }
            }
            match err {
                None => {}
                Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(calls),
                Some(e) if e.raw_os_error() == Some(libc::ENOSPC) && n == 0 => {
                    // One hash bucket holds more entries than a batch: grow and retry.
                    self.grow();
                    continue;
                }
                Some(e) => return Err(e),
            }
            token = next_token;
            first = false;
        }
    }

    /// Removes `key` and returns its counters at the instant of removal (nothing a packet adds
    /// between a read and the delete is lost). `None` if the key was not there.
    pub fn take(&mut self, map: BorrowedFd<'_>, key: &FlowKey) -> io::Result<Option<FlowStats>> {
        let mut attr = ElemAttr {
            map_fd: map.as_raw_fd() as u32,
            key: key as *const FlowKey as u64,
            value: self.values.as_mut_ptr() as u64,
            ..Default::default()
        };
        // SAFETY: `values` holds at least one per-CPU value set; attr outlives the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_AND_DELETE_ELEM,
                &mut attr as *mut ElemAttr,
                std::mem::size_of::<ElemAttr>(),
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOENT) => Ok(None),
                _ => Err(e),
            };
        }
        Ok(Some(self.merged(0)))
    }

    fn merged(&self, i: usize) -> FlowStats {
        let mut merged = FlowStats::default();
        for cpu in &self.values[i * self.cpus..(i + 1) * self.cpus] {
            merged.merge(cpu);
        }
        merged
    }

    fn grow(&mut self) {
        self.batch *= 2;
        self.keys.resize(self.batch, FlowKey::default());
        self.values
            .resize(self.batch * self.cpus, FlowStats::default());
    }
}
