//! Cost of the L7 tap (DNS visibility), in one run: the kernel's own timing of each program on
//! one frame (BPF_PROG_TEST_RUN, min of 20 × 5,000 runs) for the empty program (the floor),
//! flowlens with `dns_ports` empty (the tap off) and with `[53]`, each on a plain UDP frame and
//! on a DNS query to port 53 (with the tap on: the copy to the ring buffer); then user space's
//! part per tapped message (ring buffer read, DNS parse, count on its conversation).
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

fn main() -> anyhow::Result<()> {
    let plain = frame(1);
    let query = dns_query("known.flowlens.test");
    let empty = empty_program::load("flowlens_empty")?;
    let floor = |data: &[u8]| {
        (0..20)
            .map(|_| run(empty.as_fd(), data, REPEAT))
            .min()
            .unwrap()
    };
    println!("| program | plain UDP frame, ns | DNS query frame, ns |");
    println!("|---|---|---|");
    println!(
        "| empty program (floor) | {} | {} |",
        floor(&plain),
        floor(&query)
    );
    let sockets = SocketOptions {
        enabled: false,
        ..SocketOptions::default()
    };
    let mut user = None;
    for (label, ports) in [
        ("flowlens, dns_ports = []", &[][..]),
        ("flowlens, dns_ports = [53]", &[53][..]),
    ] {
        let mut probe =
            Programs::load_pinned(65_536, 1, &Filters::default(), &sockets, ports, None)?;
        let mut tap = L7Tap::new(probe.take_l7().expect("ring buffer"));
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
        let (a, b) = (time(&plain), time(&query));
        println!("| {label} | {a} | {b} |");
        if drained.0 > 0 {
            user = Some(drained.1.as_nanos() as f64 / drained.0 as f64);
        }
    }
    if let Some(ns) = user {
        println!("\nuser space per tapped DNS query (read, parse, count): {ns:.0} ns");
    }
    Ok(())
}
