//! The collector on real traffic: two network namespaces joined by a veth pair, the kernel
//! programs attached to one end, known UDP (IPv4 and IPv6), TCP and ICMP traffic, records read
//! back from a real Kafka-protocol broker (tansu). Packet and byte counts must be exact, TCP
//! counted as the wire sees it (GSO super-packets expanded into segments).

mod common;

use std::time::Duration;

use common::{between_pair, expected_flows, run_collector, send_known_traffic, totals, PINGS};
use flowlens_testkit::in_netns;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_counts_for_udp_tcp_icmp_on_veth() {
    let run = run_collector(
        "k",
        |c| c.collector.host = "test-host".into(),
        send_known_traffic,
    )
    .await;
    let (pair, sent) = (&run.pair, &run.sent);
    let veth = run
        .interfaces
        .iter()
        .find(|i| i.name == pair.if_a)
        .unwrap_or_else(|| {
            panic!(
                "no interface record for {}: {:?}",
                pair.if_a, run.interfaces
            )
        });
    assert_eq!(
        (
            veth.kind.as_str(),
            veth.mtu,
            veth.host.as_str(),
            veth.oper_state.as_str()
        ),
        ("veth", 1500, "test-host", "up")
    );
    assert_eq!(veth.mac.len(), 17);
    assert_eq!(veth.netns, pair.ns_a);
    assert!(run
        .interfaces
        .iter()
        .any(|i| i.name == "lo" && i.kind == "loopback"));

    let ours: Vec<_> = run
        .flows
        .iter()
        .filter(|f| f.ifindex == veth.ifindex)
        .cloned()
        .collect();
    for f in &ours {
        assert!(f.time_flow_start_ns <= f.time_flow_end_ns, "{f:?}");
        assert!(f.time_flow_end_ns <= f.time_exported_ns, "{f:?}");
        assert_eq!((f.host.as_str(), f.sampling_rate), ("test-host", 1));
    }
    assert_eq!(
        between_pair(pair, totals(&ours)),
        expected_flows(pair, sent)
    );

    // One conversation per flow: A is the side that spoke first, its flags per direction.
    let a = std::net::IpAddr::V4(pair.ip_a);
    let tcp: Vec<_> = ours
        .iter()
        .filter(|f| {
            f.proto == 6
                && (f.src_port as u16 == sent.tcp_port || f.dst_port as u16 == sent.tcp_port)
        })
        .collect();
    assert!(!tcp.is_empty());
    let (mut out, mut back) = (0u16, 0u16);
    for f in &tcp {
        assert_eq!(
            (f.src_ip(), f.src_port as u16, f.dst_port),
            (a, sent.tcp_port, 5002),
            "{f:?}"
        );
        assert_eq!(f.direction, flowlens_schemas::Direction::Egress);
        out |= f.tcp_flags as u16;
        back |= f.reverse_tcp_flags as u16;
    }
    assert_eq!(out & 0x1ff, sent.tcp_flags_out, "TCP flags A->B {out:#x}");
    assert_eq!(back & 0x1ff, sent.tcp_flags_in, "TCP flags B->A {back:#x}");
    // Only the last record of the connection carries its end: FIN both ways.
    let (last, earlier) = tcp.split_last().unwrap();
    assert_eq!(last.end_reason, "fin", "{last:?}");
    assert!(
        earlier.iter().all(|f| f.end_reason.is_empty()),
        "{earlier:?}"
    );
    // What the socket programs add: RTT of the connection, the processes at both ends (this
    // test process: client and server threads are ours), UDP senders too.
    let me = std::process::id() as i32;
    let ours_at = |p: &Option<flowlens_schemas::Process>| {
        p.as_ref()
            .is_some_and(|p| p.pid == me && p.cgroup_id > 0 && !p.comm.is_empty())
    };
    assert!(
        tcp.iter().any(|f| f.rtt_ns > 0),
        "RTT on the TCP records: {tcp:#?}"
    );
    assert!(tcp.iter().all(|f| f.rtt_ns < 1_000_000_000), "{tcp:#?}");
    assert!(
        tcp.iter()
            .any(|f| ours_at(&f.src_process) && ours_at(&f.dst_process)),
        "processes at both ends: {tcp:#?}"
    );
    assert_eq!(tcp.iter().map(|f| f.retransmits).sum::<i64>(), 0);
    let udp: Vec<_> = ours
        .iter()
        .filter(|f| f.proto == 17 && f.dst_port == 5000)
        .collect();
    assert!(udp.iter().all(|f| ours_at(&f.src_process)), "{udp:#?}");
    let pings: Vec<_> = ours.iter().filter(|f| f.proto == 1).collect();
    assert!(
        pings.iter().all(|f| f.src_ip() == a && f.icmp_type == 8),
        "{pings:?}"
    );
    assert_eq!(
        pings.iter().map(|f| f.reverse_packets).sum::<i64>(),
        PINGS as i64
    );
    assert!(ours.iter().all(|f| !f.duplicate && f.tunnel.is_empty()));
}

/// Live flows are exported every scan (deltas) and idle ones leave the table with their last
/// counts: a flow sent in bursts across many scans and evictions still adds up exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_exports_and_idle_evictions_lose_nothing() {
    let tune = |c: &mut flowlens_collector::Config| {
        c.collector.scan_interval_ms = 150;
        c.collector.idle_timeout_ms = 400;
    };
    // Six bursts of 50 datagrams on one flow: 200 ms apart (exported while live), then 800 ms
    // apart (idle, evicted, re-created).
    let run = run_collector("t", tune, |p| {
        let rx = in_netns(&p.ns_b, || {
            std::net::UdpSocket::bind((p.ip_b, 6100)).unwrap()
        });
        let tx = in_netns(&p.ns_a, || std::net::UdpSocket::bind((p.ip_a, 0)).unwrap());
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 256];
        for (i, gap) in [200, 200, 200, 800, 800, 0].iter().enumerate() {
            for _ in 0..50 {
                tx.send_to(&[i as u8; 100], (p.ip_b, 6100)).unwrap();
                rx.recv_from(&mut buf).unwrap();
            }
            std::thread::sleep(Duration::from_millis(*gap));
        }
        tx.local_addr().unwrap().port()
    })
    .await;
    let records: Vec<_> = run
        .flows
        .iter()
        .filter(|f| f.src_port == i32::from(run.sent) && f.dst_port == 6100)
        .collect();
    let packets: i64 = records.iter().map(|f| f.packets).sum();
    let bytes: i64 = records.iter().map(|f| f.bytes).sum();
    assert_eq!((packets, bytes), (300, 300 * (14 + 20 + 8 + 100)));
    assert!(
        records.len() >= 5,
        "one record per scan with new packets, got {}",
        records.len()
    );
    // Records of one flow follow each other in time without overlap (each scan converts kernel
    // time to unix time on its own, so allow the microsecond of jitter that brings).
    for w in records.windows(2) {
        assert!(
            w[0].time_flow_end_ns <= w[1].time_flow_start_ns + 1_000,
            "{w:?}"
        );
    }
}

/// Kernel drops reach the records: UDP dropped by nftables in B's input crossed A's veth, so
/// its record carries the drops; UDP dropped in A's own output never reached the veth, so it
/// leaves as a drop-only record (no packets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drops_with_reason_reach_the_records() {
    let nft = |ns: &str, hook: &str, port: u16| {
        for cmd in [
            "add table inet fl".to_string(),
            format!("add chain inet fl {hook} {{ type filter hook {hook} priority 0 ; }}"),
            format!("add rule inet fl {hook} udp dport {port} drop"),
        ] {
            flowlens_testkit::NetnsPair::exec(ns, &["nft", &cmd]);
        }
    };
    let run = run_collector(
        "d",
        |_| {},
        move |p| {
            nft(&p.ns_b, "input", 6200);
            nft(&p.ns_a, "output", 6201);
            let tx = in_netns(&p.ns_a, || std::net::UdpSocket::bind((p.ip_a, 0)).unwrap());
            for _ in 0..20 {
                tx.send_to(&[1u8; 100], (p.ip_b, 6200)).unwrap();
            }
            let mut refused = 0;
            for _ in 0..15 {
                // A drop in the sender's own output is reported to it (EPERM).
                if tx.send_to(&[2u8; 60], (p.ip_b, 6201)).is_err() {
                    refused += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(700));
            (tx.local_addr().unwrap().port(), refused)
        },
    )
    .await;
    let (port, refused) = run.sent;
    assert_eq!(refused, 15);
    let to = |dport: i32| -> Vec<_> {
        run.flows
            .iter()
            .filter(|f| f.src_port == i32::from(port) && f.dst_port == dport)
            .cloned()
            .collect()
    };
    let sum = |fs: &[flowlens_schemas::RawFlow]| {
        fs.iter().fold((0, 0, 0), |(p, d, b), f| {
            (p + f.packets, d + f.drops, b + f.drop_bytes)
        })
    };
    let input = to(6200);
    // skb->len at an input drop starts at the IP header: 20 + 8 + 100 bytes.
    assert_eq!(sum(&input), (20, 20, 20 * 128), "{input:#?}");
    assert!(
        input.iter().any(|f| f.drop_reason == "NETFILTER_DROP"),
        "{input:#?}"
    );
    let output = to(6201);
    assert_eq!(
        (sum(&output).0, sum(&output).1),
        (0, 15),
        "a drop-only record: {output:#?}"
    );
    assert!(output
        .iter()
        .all(|f| f.drop_reason == "NETFILTER_DROP" && f.ifindex == 0));
}

/// A full kernel table still counts every packet: flows that find no slot count in their
/// interface's overflow record (unspecified addresses, protocol 0), and the records of one
/// interface add up to every datagram the receiver got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_table_still_counts_every_packet() {
    const FLOWS: usize = 3_000;
    const EACH: usize = 2;
    const PAYLOAD: usize = 100;
    let tune = |c: &mut flowlens_collector::Config| {
        c.collector.table_size = 1_024;
    };
    let run = run_collector("o", tune, |p| {
        let rx = in_netns(&p.ns_b, || {
            std::net::UdpSocket::bind((p.ip_b, 6300)).unwrap()
        });
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 256];
        let mut received = 0u64;
        for _ in 0..FLOWS {
            let tx = in_netns(&p.ns_a, || std::net::UdpSocket::bind((p.ip_a, 0)).unwrap());
            for _ in 0..EACH {
                tx.send_to(&[5u8; PAYLOAD], (p.ip_b, 6300)).unwrap();
            }
            for _ in 0..EACH {
                rx.recv_from(&mut buf).expect("every datagram arrives");
                received += 1;
            }
        }
        received
    })
    .await;
    let ifindex = run
        .interfaces
        .iter()
        .find(|i| i.name == run.pair.if_a)
        .map(|i| i.ifindex)
        .unwrap();
    let b = std::net::IpAddr::V4(run.pair.ip_b);
    let unspecified = std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
    let egress = |f: &&flowlens_schemas::RawFlow| {
        f.ifindex == ifindex && f.direction == flowlens_schemas::Direction::Egress
    };
    let flows: Vec<_> = run
        .flows
        .iter()
        .filter(egress)
        .filter(|f| f.dst_ip() == b && f.dst_port == 6300)
        .collect();
    let overflow: Vec<_> = run
        .flows
        .iter()
        .filter(egress)
        .filter(|f| f.src_ip() == unspecified && f.dst_ip() == unspecified)
        .collect();
    assert!(
        !overflow.is_empty(),
        "1,024 slots cannot hold {FLOWS} flows"
    );
    assert!(overflow
        .iter()
        .all(|f| f.proto == 0 && f.src_port == 0 && f.etype == 0x0800 && !f.duplicate));
    assert!(
        flows.len() >= 800,
        "most slots hold a flow: {}",
        flows.len()
    );
    let sum = |fs: &[&flowlens_schemas::RawFlow]| {
        fs.iter()
            .fold((0, 0), |(p, b), f| (p + f.packets, b + f.bytes))
    };
    let (p1, b1) = sum(&flows);
    let (p2, b2) = sum(&overflow);
    let wire = (14 + 20 + 8 + PAYLOAD) as i64;
    assert_eq!(
        (p1 + p2, b1 + b2),
        (run.sent as i64, run.sent as i64 * wire),
        "{} flow records, {} overflow records",
        flows.len(),
        overflow.len()
    );
}

/// Drops in a network namespace the collector does not watch, of packets no watched interface
/// saw, are not its to report: nftables counts them, yet no drop-only record names them, while
/// drops in the collector's own namespace still become drop-only records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drops_in_other_namespaces_are_not_drop_only_records() {
    let nft = |ns: &str, hook: &str, port: u16| {
        for cmd in [
            "add table inet fl".to_string(),
            format!("add chain inet fl {hook} {{ type filter hook {hook} priority 0 ; }}"),
            format!("add rule inet fl {hook} udp dport {port} counter drop"),
        ] {
            flowlens_testkit::NetnsPair::exec(ns, &["nft", &cmd]);
        }
    };
    let run = run_collector(
        "e",
        |_| {},
        move |p| {
            let other = flowlens_testkit::NetnsPair::new("x");
            nft(&other.ns_b, "input", 6500);
            nft(&p.ns_a, "output", 6501);
            let elsewhere = in_netns(&other.ns_a, || {
                std::net::UdpSocket::bind((other.ip_a, 0)).unwrap()
            });
            for _ in 0..20 {
                elsewhere.send_to(&[1u8; 100], (other.ip_b, 6500)).unwrap();
            }
            let here = in_netns(&p.ns_a, || std::net::UdpSocket::bind((p.ip_a, 0)).unwrap());
            for _ in 0..15 {
                // A drop in the sender's own output is reported to it (EPERM).
                let _ = here.send_to(&[2u8; 60], (p.ip_b, 6501));
            }
            std::thread::sleep(Duration::from_millis(700));
            let rules = flowlens_testkit::NetnsPair::exec(
                &other.ns_b,
                &["nft", "list", "chain", "inet", "fl", "input"],
            );
            let counted: u64 = rules
                .split_whitespace()
                .skip_while(|w| *w != "packets")
                .nth(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no nftables counter in {rules}"));
            (counted, here.local_addr().unwrap().port())
        },
    )
    .await;
    let (dropped_elsewhere, port) = run.sent;
    assert_eq!(
        dropped_elsewhere, 20,
        "nftables dropped them in the other namespace"
    );
    let elsewhere: Vec<_> = run.flows.iter().filter(|f| f.dst_port == 6500).collect();
    assert!(elsewhere.is_empty(), "{elsewhere:#?}");
    let here: i64 = run
        .flows
        .iter()
        .filter(|f| f.src_port == i32::from(port) && f.dst_port == 6501)
        .map(|f| f.drops)
        .sum();
    assert_eq!(
        here, 15,
        "drop-only records of the collector's own namespace"
    );
}
