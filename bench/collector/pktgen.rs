//! pktgen: a fast UDP frame generator for the collector benchmark. AF_PACKET + sendmmsg on one
//! interface, `--flows` distinct 5-tuples cycled round robin, at maximum rate or `--pps`, for
//! `--seconds`. Frames go to a locally administered MAC nobody owns, so the receiving stack drops
//! them right after the TC hooks (no replies); with `--dst-mac` and `--dst-ip` (the receiver's)
//! they are delivered to UDP port 9 there. Standalone (std only):
//!     rustc -O --edition 2021 bench/collector/pktgen.rs -o target/pktgen
//! Prints `sent <packets> <seconds>` on stdout.

use std::ffi::CString;
use std::time::{Duration, Instant};

const AF_PACKET: i32 = 17;
const SOCK_RAW: i32 = 3;
const ETH_P_ALL: u16 = 0x0003;
const BATCH: usize = 256;

#[repr(C)]
struct SockaddrLl {
    family: u16,
    protocol: u16,
    ifindex: i32,
    hatype: u16,
    pkttype: u8,
    halen: u8,
    addr: [u8; 8],
}

#[path = "mmsg.rs"]
mod mmsg;
use mmsg::{Iovec, Mmsghdr};

extern "C" {
    fn socket(domain: i32, ty: i32, protocol: i32) -> i32;
    fn bind(fd: i32, addr: *const SockaddrLl, len: u32) -> i32;
    fn sendmmsg(fd: i32, msgs: *mut Mmsghdr, n: u32, flags: i32) -> i32;
    fn if_nametoindex(name: *const i8) -> u32;
}

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("number"))
        .unwrap_or(default)
}

fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// 60-byte Ethernet/IPv4/UDP frame of flow `i` to `dst_mac`/`dst_ip` port 9: source
/// 10.250.<i/64000>.<1..>, port 1024 + i%64000.
fn frame(i: u64, dst_mac: [u8; 6], dst_ip: [u8; 4]) -> [u8; 60] {
    let mut f = [0u8; 60];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&46u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    let hi = (i / 64_000) as u16;
    ip[12..16].copy_from_slice(&[10, 250, (hi >> 8) as u8 + 1, hi as u8]);
    ip[16..20].copy_from_slice(&dst_ip);
    let c = checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let udp = &mut f[34..42];
    udp[0..2].copy_from_slice(&(1024 + (i % 64_000) as u16).to_be_bytes());
    udp[2..4].copy_from_slice(&9u16.to_be_bytes());
    udp[4..6].copy_from_slice(&26u16.to_be_bytes());
    f
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let ifname = args
        .iter()
        .position(|a| a == "--ifname")
        .and_then(|i| args.get(i + 1))
        .expect("--ifname NAME");
    let flows = arg(&args, "--flows", 16).max(1);
    let seconds = arg(&args, "--seconds", 5);
    let pps = arg(&args, "--pps", 0);
    let text = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let dst_mac: [u8; 6] = text("--dst-mac").map_or([0x02, 0, 0, 0, 0, 0x01], |m| {
        let b: Vec<u8> = m
            .split(':')
            .map(|x| u8::from_str_radix(x, 16).expect("--dst-mac aa:bb:cc:dd:ee:ff"))
            .collect();
        b.try_into().expect("--dst-mac has 6 bytes")
    });
    let dst_ip: [u8; 4] = text("--dst-ip").map_or([10, 251, 0, 2], |a| {
        a.parse::<std::net::Ipv4Addr>()
            .expect("--dst-ip a.b.c.d")
            .octets()
    });

    let name = CString::new(ifname.as_str()).unwrap();
    let ifindex = unsafe { if_nametoindex(name.as_ptr()) };
    assert!(ifindex != 0, "no interface {ifname}");
    let fd = unsafe { socket(AF_PACKET, SOCK_RAW, i32::from(ETH_P_ALL.to_be())) };
    assert!(fd >= 0, "AF_PACKET socket (needs CAP_NET_RAW)");
    let addr = SockaddrLl {
        family: AF_PACKET as u16,
        protocol: ETH_P_ALL.to_be(),
        ifindex: ifindex as i32,
        hatype: 0,
        pkttype: 0,
        halen: 6,
        addr: [0x02, 0, 0, 0, 0, 0x01, 0, 0],
    };
    assert_eq!(unsafe { bind(fd, &addr, std::mem::size_of::<SockaddrLl>() as u32) }, 0);

    let mut frames: Vec<[u8; 60]> = (0..flows.min(1 << 21))
        .map(|i| frame(i, dst_mac, dst_ip))
        .collect();
    let n = frames.len();
    let mut iovs: Vec<Iovec> = (0..BATCH)
        .map(|_| Iovec {
            base: std::ptr::null_mut(),
            len: 60,
        })
        .collect();
    let mut msgs = mmsg::headers(&mut iovs);
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut sent: u64 = 0;
    let mut next = 0usize;
    while Instant::now() < end {
        if pps > 0 {
            let due = (start.elapsed().as_secs_f64() * pps as f64) as u64;
            if sent >= due {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
        }
        for (k, iov) in iovs.iter_mut().enumerate() {
            iov.base = frames[(next + k) % n].as_mut_ptr();
            msgs[k].hdr.iov = iov;
        }
        let r = unsafe { sendmmsg(fd, msgs.as_mut_ptr(), BATCH as u32, 0) };
        if r > 0 {
            sent += r as u64;
            next = (next + r as usize) % n;
        }
    }
    println!("sent {sent} {:.3}", start.elapsed().as_secs_f64());
}
