//! Cost of the L7 tap (DNS and HTTP visibility), in one run: the kernel's own timing of each
//! program on one frame (BPF_PROG_TEST_RUN, min of 20 × 5,000 runs) for the empty program (the
//! floor), flowlens with no L7 port (the tap off) and with `dns_ports = [53]`, `http_ports =
//! [80]`, each on a plain UDP frame, a DNS query to port 53, an HTTP request to port 80 (with
//! the tap on: copied to the ring buffer) and a TCP segment to port 80 that starts no HTTP
//! message (a body: four bytes read and compared); then user space's part per tapped message
//! (ring buffer read, parse, count on its conversation).
//!
//! `sudo ./target/release/examples/l7_cost`

use std::os::fd::AsFd;
use std::time::Instant;

use flowlens_collector::filter::Filters;
use flowlens_collector::l7::L7Tap;
use flowlens_collector::programs::Programs;
use flowlens_collector::sockets::SocketOptions;
use flowlens_common::INGRESS_PROGRAM;

#[path = "../../bench/collector/test_run.rs"]
mod test_run;
use test_run::{frame, run};

#[path = "../../bench/collector/empty_program.rs"]
#[allow(dead_code)]
mod empty_program;

const REPEAT: u32 = 5_000;

/// An Ethernet/IPv4/UDP frame carrying a DNS query (id 0x1234, type A) for `name`, to port 53.
fn dns_query(name: &str) -> Vec<u8> {
    let mut dns = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        dns.push(label.len() as u8);
        dns.extend_from_slice(label.as_bytes());
    }
    dns.extend_from_slice(&[0, 0, 1, 0, 1]);
    let mut f = frame(1)[..42].to_vec();
    let udp_len = (8 + dns.len()) as u16;
    f[16..18].copy_from_slice(&(20 + udp_len).to_be_bytes());
    f[36..38].copy_from_slice(&53u16.to_be_bytes());
    f[38..40].copy_from_slice(&udp_len.to_be_bytes());
    f.extend_from_slice(&dns);
    f
}

/// An Ethernet/IPv4/TCP frame (ACK|PSH, no options) to port 80 carrying `payload`.
fn tcp_segment(payload: &[u8]) -> Vec<u8> {
    let mut f = frame(1)[..34].to_vec();
    f[16..18].copy_from_slice(&((20 + 20 + payload.len()) as u16).to_be_bytes());
    f[23] = 6;
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&40_000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x18;
    f.extend_from_slice(&tcp);
    f.extend_from_slice(payload);
    f
}

fn main() -> anyhow::Result<()> {
    let frames = [
        frame(1).to_vec(),
        dns_query("known.flowlens.test"),
        tcp_segment(b"GET /index.html HTTP/1.1\r\nHost: flowlens.test\r\n\r\n"),
        tcp_segment(&[0x42; 200]),
    ];
    let empty = empty_program::load("flowlens_empty")?;
    let floor = |data: &[u8]| {
        (0..20)
            .map(|_| run(empty.as_fd(), data, REPEAT))
            .min()
            .unwrap()
    };
    println!(
        "| program | plain UDP frame, ns | DNS query, ns | HTTP request, ns | TCP body segment to port 80, ns |"
    );
    println!("|---|---|---|---|---|");
    let row: Vec<String> = frames.iter().map(|f| floor(f).to_string()).collect();
    println!("| empty program (floor) | {} |", row.join(" | "));
    let sockets = SocketOptions {
        enabled: false,
        ..SocketOptions::default()
    };
    let mut user = None;
    for (label, dns, http) in [
        ("flowlens, no L7 port", &[][..], &[][..]),
        (
            "flowlens, dns_ports = [53], http_ports = [80]",
            &[53][..],
            &[80][..],
        ),
    ] {
        let ports = flowlens_collector::l7::ports(dns, http)?;
        let mut probe =
            Programs::load_pinned(65_536, 1, &Filters::default(), &sockets, &ports, None)?;
        let mut tap = L7Tap::new(probe.take_l7().expect("ring buffer"), dns, http);
        let prog = probe.program_fd(INGRESS_PROGRAM)?;
        let mut drained = (0u64, std::time::Duration::ZERO);
        let mut time = |data: &[u8]| {
            (0..20)
                .map(|_| {
                    let ns = run(prog, data, REPEAT);
                    // The ring buffer holds ~11,000 events: read them after every call.
                    let started = Instant::now();
                    drained.0 += tap.drain();
                    drained.1 += started.elapsed();
                    ns
                })
                .min()
                .unwrap()
        };
        let row: Vec<String> = frames.iter().map(|f| time(f).to_string()).collect();
        println!("| {label} | {} |", row.join(" | "));
        if drained.0 > 0 {
            user = Some(drained.1.as_nanos() as f64 / drained.0 as f64);
        }
    }
    if let Some(ns) = user {
        println!("\nuser space per tapped message (read, parse, count): {ns:.0} ns");
    }
    Ok(())
}
