//! udp_sink: receives the benchmark's delivered frames (UDP port 9) as fast as it can, with
//! recvmmsg in batches and a 256 MiB receive buffer, so the generated traffic is consumed by a
//! socket instead of dropped. Standalone (std only):
//!     rustc -O --edition 2021 bench/collector/udp_sink.rs -o target/udp_sink
//! Runs until killed; prints nothing.

use std::os::fd::AsRawFd;

const BATCH: usize = 256;
const SOL_SOCKET: i32 = 1;
const SO_RCVBUFFORCE: i32 = 33;

#[path = "mmsg.rs"]
mod mmsg;
use mmsg::{Iovec, Mmsghdr};

extern "C" {
    fn recvmmsg(fd: i32, msgs: *mut Mmsghdr, n: u32, flags: i32, timeout: *mut u8) -> i32;
    fn setsockopt(fd: i32, level: i32, name: i32, value: *const i32, len: u32) -> i32;
}

fn main() {
    let socket = std::net::UdpSocket::bind("0.0.0.0:9").expect("binding UDP port 9");
    let fd = socket.as_raw_fd();
    let size: i32 = 256 << 20;
    // SAFETY: valid socket and option value.
    unsafe { setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, 4) };
    let mut buffers = vec![[0u8; 64]; BATCH];
    let mut iovs: Vec<Iovec> = buffers
        .iter_mut()
        .map(|b| Iovec {
            base: b.as_mut_ptr(),
            len: b.len(),
        })
        .collect();
    let mut msgs = mmsg::headers(&mut iovs);
    loop {
        // SAFETY: BATCH headers pointing at live buffers.
        unsafe {
            recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                BATCH as u32,
                0,
                std::ptr::null_mut(),
            )
        };
    }
}
