//! The `bpf()` map commands on a map's fd, for maps held as raw fds (aya has no batch API):
//! BPF_MAP_LOOKUP_BATCH to read every entry, BPF_MAP_LOOKUP_AND_DELETE_BATCH to empty a map,
//! BPF_MAP_LOOKUP_ELEM, BPF_MAP_LOOKUP_AND_DELETE_ELEM to take one entry atomically,
//! BPF_MAP_DELETE_ELEM. The flow table and the socket tables use them.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `enum bpf_cmd` values (linux/bpf.h).
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
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

fn bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<()> {
    // SAFETY: `attr` is the matching member of union bpf_attr and outlives the call; the
    // pointers it holds are valid for the sizes the map was created with (callers' contract).
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut A, std::mem::size_of::<A>()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Reads every entry of a hash map in batches of `keys.len()` entries (`delete`: emptying it as
/// it goes) and hands each key with its `cpus` values (1 for a shared map) to `each`. `keys`
/// and `values` (`keys.len() * cpus` long) are the batch buffers, grown when one hash bucket
/// holds more entries than a batch. `K` and `V` must be the map's key and value types (`V`
/// 8-byte aligned, the kernel's per-CPU stride). Returns the number of syscalls made.
pub(crate) fn for_each_entry<K: Copy + Default, V: Copy + Default>(
    map: BorrowedFd<'_>,
    delete: bool,
    cpus: usize,
    keys: &mut Vec<K>,
    values: &mut Vec<V>,
    mut each: impl FnMut(&K, &[V]),
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
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: keys.len() as u32,
            map_fd: map.as_raw_fd() as u32,
            ..Default::default()
        };
        calls += 1;
        let result = bpf(cmd, &mut attr);
        let n = attr.count as usize;
        for (i, key) in keys[..n].iter().enumerate() {
            each(key, &values[i * cpus..(i + 1) * cpus]);
        }
        match result {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(calls),
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && n == 0 => {
                // One hash bucket holds more entries than a batch: grow and retry.
                let batch = keys.len() * 2;
                keys.resize(batch, K::default());
                values.resize(batch * cpus, V::default());
                continue;
            }
            Err(e) => return Err(e),
        }
        token = next_token;
        first = false;
    }
}

/// Removes `key` and writes its value(s) at the instant of removal into `values` (one per
/// CPU); `false` if the key was not there.
pub(crate) fn take_entry<K, V>(map: BorrowedFd<'_>, key: &K, values: &mut [V]) -> io::Result<bool> {
    let mut attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key as *const K as u64,
        value: values.as_mut_ptr() as u64,
        ..Default::default()
    };
    match bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM, &mut attr) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Reads the value of `key` into `value`; `false` if the key is not there.
pub(crate) fn lookup_entry<K, V>(map: BorrowedFd<'_>, key: &K, value: &mut V) -> io::Result<bool> {
    let mut attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key as *const K as u64,
        value: value as *mut V as u64,
        ..Default::default()
    };
    match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes `key` if it is there.
pub(crate) fn delete_entry<K>(map: BorrowedFd<'_>, key: &K) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key as *const K as u64,
        ..Default::default()
    };
    match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
        _ => Ok(()),
    }
}
