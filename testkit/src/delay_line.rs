//! A delay line between the two namespaces of a [`NetnsPair`]: this kernel has no netem, so
//! packets cross two TUN devices joined by a thread that forwards each one a fixed time after
//! reading it.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{in_netns, NetnsPair};

/// Forwards IP packets between a TUN device in each namespace after a fixed delay: the pair's
/// `10.N.1.1` (A) and `10.N.1.2` (B) are each other's peers through it.
pub struct DelayLine {
    /// A's address on the line.
    pub a: Ipv4Addr,
    /// B's address on the line.
    pub b: Ipv4Addr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

fn open_tun(name: &str) -> OwnedFd {
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    // SAFETY: plain open/ioctl with a valid request struct.
    unsafe {
        let fd = libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        );
        assert!(fd >= 0, "open /dev/net/tun");
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TUN | IFF_NO_PI,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        assert_eq!(libc::ioctl(fd, TUNSETIFF, &mut req), 0, "TUNSETIFF {name}");
        OwnedFd::from_raw_fd(fd)
    }
}

impl DelayLine {
    /// A line between the pair's namespaces holding every packet `delay` each way.
    pub fn new(pair: &NetnsPair, delay: Duration) -> Self {
        let [_, net, _, _] = pair.ip_a.octets();
        let (a, b) = (Ipv4Addr::new(10, net, 1, 1), Ipv4Addr::new(10, net, 1, 2));
        let (name_a, name_b) = (
            pair.if_a.replace("fla", "fta"),
            pair.if_a.replace("fla", "ftb"),
        );
        let tun_a = in_netns(&pair.ns_a, || open_tun(&name_a));
        let tun_b = in_netns(&pair.ns_b, || open_tun(&name_b));
        for (ns, name, me, peer) in [(&pair.ns_a, &name_a, a, b), (&pair.ns_b, &name_b, b, a)] {
            let (me, peer) = (me.to_string(), peer.to_string());
            NetnsPair::exec(ns, &["ip", "addr", "add", &me, "peer", &peer, "dev", name]);
            NetnsPair::exec(ns, &["ip", "link", "set", name, "up"]);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        let thread = std::thread::spawn(move || forward(&tun_a, &tun_b, delay, &halt));
        Self {
            a,
            b,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The delay line's loop: reads whatever either TUN has, writes each packet to the other one
/// `delay` after it was read. Returns the number of packets forwarded.
fn forward(a: &OwnedFd, b: &OwnedFd, delay: Duration, stop: &AtomicBool) -> u64 {
    let fds = [a.as_raw_fd(), b.as_raw_fd()];
    let mut queues: [VecDeque<(Instant, Vec<u8>)>; 2] = [VecDeque::new(), VecDeque::new()];
    let mut buf = vec![0u8; 65536];
    let mut forwarded = 0;
    while !stop.load(Ordering::Relaxed) {
        let next_due = queues
            .iter()
            .filter_map(|q| q.front().map(|(due, _)| *due))
            .min();
        let timeout = next_due.map_or(10, |due| {
            due.saturating_duration_since(Instant::now())
                .as_millis()
                .min(10) as i32
        });
        let mut polls = fds.map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: two valid pollfd entries.
        unsafe { libc::poll(polls.as_mut_ptr(), 2, timeout) };
        for (side, fd) in fds.iter().enumerate() {
            loop {
                // SAFETY: reading into our buffer from a non-blocking fd we own.
                let n = unsafe { libc::read(*fd, buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    break;
                }
                queues[side].push_back((Instant::now() + delay, buf[..n as usize].to_vec()));
            }
        }
        let now = Instant::now();
        for side in 0..2 {
            while queues[side].front().is_some_and(|(due, _)| *due <= now) {
                let (_, packet) = queues[side].pop_front().unwrap();
                // SAFETY: writing a packet we read to the other TUN.
                unsafe { libc::write(fds[1 - side], packet.as_ptr().cast(), packet.len()) };
                forwarded += 1;
            }
        }
    }
    forwarded
}
