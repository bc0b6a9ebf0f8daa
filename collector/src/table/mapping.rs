//! One `mmap` of a BPF map's values (or anonymous memory, for tests), unmapped on drop.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

const PAGE: usize = 4096;

/// One `mmap` of a map's values.
pub(super) struct Mapping {
    pub(super) at: *mut u8,
    pub(super) len: usize,
}

// SAFETY: the mapping is plain shared memory; every access goes through `&self` methods that
// read or use atomics.
unsafe impl Send for Mapping {}

impl Mapping {
    /// `len` bytes of the map `fd` from byte `offset` (a page multiple; `None`: anonymous
    /// memory, for tests).
    pub(super) fn new(
        fd: Option<BorrowedFd<'_>>,
        offset: usize,
        len: usize,
        writable: bool,
    ) -> io::Result<Self> {
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        let (flags, fd) = match fd {
            Some(fd) => (libc::MAP_SHARED, fd.as_raw_fd()),
            None => (libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1),
        };
        let len = len.div_ceil(PAGE) * PAGE;
        // SAFETY: a fresh mapping of `len` bytes; checked below.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                flags,
                fd,
                offset as libc::off_t,
            )
        };
        if at == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            at: at as *mut u8,
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: mapped in `new` with this length.
        unsafe { libc::munmap(self.at as *mut libc::c_void, self.len) };
    }
}
