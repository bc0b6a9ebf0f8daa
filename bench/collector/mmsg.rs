//! The `sendmmsg`/`recvmmsg` message headers (std has none), shared by the benchmark's
//! standalone tools (`pktgen.rs`, `udp_sink.rs`).

#[repr(C)]
pub struct Iovec {
    pub base: *mut u8,
    pub len: usize,
}

#[repr(C)]
pub struct Msghdr {
    pub name: *mut u8,
    pub namelen: u32,
    pub iov: *mut Iovec,
    pub iovlen: usize,
    pub control: *mut u8,
    pub controllen: usize,
    pub flags: i32,
}

#[repr(C)]
pub struct Mmsghdr {
    pub hdr: Msghdr,
    pub len: u32,
}

/// One header per I/O vector, each for one datagram.
pub fn headers(iovs: &mut [Iovec]) -> Vec<Mmsghdr> {
    iovs.iter_mut()
        .map(|iov| Mmsghdr {
            hdr: Msghdr {
                name: std::ptr::null_mut(),
                namelen: 0,
                iov,
                iovlen: 1,
                control: std::ptr::null_mut(),
                controllen: 0,
                flags: 0,
            },
            len: 0,
        })
        .collect()
}
