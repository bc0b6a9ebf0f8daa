//! The collector on real traffic: two network namespaces joined by a veth pair, the kernel
//! programs attached to one end, known UDP (IPv4 and IPv6), TCP and ICMP traffic, records read
//! back from a real Kafka-protocol broker (tansu). Packet and byte counts must be exact, TCP
//! counted as the wire sees it (GSO super-packets expanded into segments).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use flowlens_collector::config::Config;
use flowlens_runtime::testkit::{in_netns, read_topic, unique, NetnsPair, Tansu};
use flowlens_runtime::Shutdown;
use flowlens_schemas::{decode, Direction, Interface, RawFlow};

const ETH: u64 = 14;
const IPV4: u64 = 20;
const IPV6: u64 = 40;
const UDP: u64 = 8;
/// TCP header with the timestamp option, as Linux sends every segment after the handshake.
const TCP_TS: u64 = 32;
/// SYN and SYN-ACK carry 8 more option bytes (MSS, SACK permitted, window scale).
const SYN_EXTRA: u64 = 8;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Totals {
    packets: u64,
    bytes: u64,
    flags: u16,
}

type FlowId = (Direction, u8, IpAddr, u16, IpAddr, u16, u8);

fn totals(flows: &[RawFlow], ifindex: i32) -> HashMap<FlowId, Totals> {
    let mut out: HashMap<FlowId, Totals> = HashMap::new();
    for f in flows.iter().filter(|f| f.ifindex == ifindex) {
        let id = (
            f.direction,
            f.proto as u8,
            f.src_ip(),
            f.src_port as u16,
            f.dst_ip(),
            f.dst_port as u16,
            f.icmp_type as u8,
        );
        let t = out.entry(id).or_default();
        t.packets += f.packets as u64;
        t.bytes += f.bytes as u64;
        t.flags |= f.tcp_flags as u16;
        assert!(f.time_flow_start_ns <= f.time_flow_end_ns, "{f:?}");
    }
    out
}

fn tcp_info(stream: &TcpStream) -> libc::tcp_info {
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO");
    info
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_counts_for_udp_tcp_icmp_on_veth() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "this test loads eBPF programs and creates namespaces: run it as root"
    );
    let broker = Tansu::start();
    let pair = NetnsPair::new("k");
    let mut config = Config::default();
    config.kafka.brokers = vec![broker.broker()];
    config.kafka.partitions = 1;
    config.kafka.topics.raw_flows = unique("raw");
    config.kafka.topics.interfaces = unique("ifaces");
    config.collector.netns = pair.ns_a.clone();
    config.collector.interfaces = vec![pair.if_a.clone()];
    config.collector.scan_interval_ms = 300;
    config.collector.host = "test-host".into();
    let topics = config.kafka.topics.clone();
    let brokers = broker.broker();

    let shutdown = Shutdown::new();
    let collector = tokio::spawn(flowlens_collector::run(config, shutdown.clone()));

    // Interface metadata arrives first: it also tells us the programs are attached.
    let (b, t) = (brokers.clone(), topics.interfaces.clone());
    let ifaces =
        tokio::task::spawn_blocking(move || read_topic(&b, &t, 2, Duration::from_secs(30)))
            .await
            .unwrap();
    let ifaces: Vec<Interface> = ifaces
        .iter()
        .map(|(_, v)| decode(v.as_deref().unwrap()).unwrap())
        .collect();
    let veth = ifaces
        .iter()
        .find(|i| i.name == pair.if_a)
        .unwrap_or_else(|| panic!("no interface record for {}: {ifaces:?}", pair.if_a));
    assert_eq!(
        (veth.kind.as_str(), veth.mtu, veth.host.as_str()),
        ("veth", 1500, "test-host")
    );
    assert_eq!(veth.mac.len(), 17);
    assert_eq!(veth.netns, pair.ns_a);
    assert!(ifaces
        .iter()
        .any(|i| i.name == "lo" && i.kind == "loopback"));
    let ifindex = veth.ifindex;

    let p = (
        pair.ns_a.clone(),
        pair.ns_b.clone(),
        pair.ip_a,
        pair.ip_b,
        pair.ip6_a,
        pair.ip6_b,
    );
    let traffic = tokio::task::spawn_blocking(move || {
        let (ns_a, ns_b, ip_a, ip_b, ip6_a, ip6_b) = p;
        // UDP over IPv4: 4 flows of 25 datagrams with 100 bytes of payload.
        let rx = in_netns(&ns_b, || UdpSocket::bind((ip_b, 5000)).unwrap());
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut udp_ports = Vec::new();
        for _ in 0..4 {
            let tx = in_netns(&ns_a, || UdpSocket::bind((ip_a, 0)).unwrap());
            udp_ports.push(tx.local_addr().unwrap().port());
            for _ in 0..25 {
                tx.send_to(&[7u8; 100], (ip_b, 5000)).unwrap();
            }
        }
        let mut buf = [0u8; 2048];
        for _ in 0..100 {
            rx.recv_from(&mut buf).expect("every datagram arrives");
        }
        // UDP over IPv6: one flow of 10 datagrams with 200 bytes of payload.
        let rx6 = in_netns(&ns_b, || UdpSocket::bind((ip6_b, 5001)).unwrap());
        rx6.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let tx6 = in_netns(&ns_a, || UdpSocket::bind((ip6_a, 0)).unwrap());
        for _ in 0..10 {
            tx6.send_to(&[9u8; 200], (ip6_b, 5001)).unwrap();
        }
        for _ in 0..10 {
            rx6.recv_from(&mut buf)
                .expect("every IPv6 datagram arrives");
        }
        let udp6_port = tx6.local_addr().unwrap().port();

        // TCP: 1 MB from A to B (large writes: the stack hands the veth GSO super-packets).
        let listener = in_netns(&ns_b, || TcpListener::bind((ip_b, 5002)).unwrap());
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            got.len()
        });
        let mut client = in_netns(&ns_a, || {
            TcpStream::connect(SocketAddr::from((ip_b, 5002))).unwrap()
        });
        let tcp_port = client.local_addr().unwrap().port();
        client.write_all(&vec![1u8; 1_000_000]).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(server.join().unwrap(), 1_000_000);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let info = tcp_info(&client);

        // ICMP: three echo requests and their replies (56 bytes of payload each).
        NetnsPair::exec(
            &ns_a,
            &["ping", "-c", "3", "-i", "0.2", "-q", &ip_b.to_string()],
        );
        (udp_ports, udp6_port, tcp_port, info)
    });
    let (udp_ports, udp6_port, tcp_port, info) = traffic.await.unwrap();

    // Let one scan pass, then stop: the collector drains once more and flushes before returning.
    tokio::time::sleep(Duration::from_millis(500)).await;
    shutdown.trigger();
    collector.await.unwrap().expect("collector exits cleanly");

    let (b, t) = (brokers.clone(), topics.raw_flows.clone());
    let raw = tokio::task::spawn_blocking(move || read_topic(&b, &t, 1, Duration::from_secs(30)))
        .await
        .unwrap();
    let flows: Vec<RawFlow> = raw
        .iter()
        .map(|(_, v)| decode(v.as_deref().unwrap()).unwrap())
        .collect();
    assert!(flows
        .iter()
        .all(|f| f.host == "test-host" && f.sampling_rate == 1));
    let by_flow = totals(&flows, ifindex);
    let get = |id: FlowId| {
        *by_flow
            .get(&id)
            .unwrap_or_else(|| panic!("no flow {id:?} in {by_flow:#?}"))
    };
    let (a4, b4) = (IpAddr::V4(pair.ip_a), IpAddr::V4(pair.ip_b));

    for port in &udp_ports {
        let t = get((Direction::Egress, 17, a4, *port, b4, 5000, 0));
        assert_eq!(
            (t.packets, t.bytes),
            (25, 25 * (ETH + IPV4 + UDP + 100)),
            "UDP flow {port}"
        );
        assert!(!by_flow.contains_key(&(Direction::Ingress, 17, b4, 5000, a4, *port, 0)));
    }
    let (a6, b6): (IpAddr, IpAddr) = (pair.ip6_a.into(), pair.ip6_b.into());
    let t = get((Direction::Egress, 17, a6, udp6_port, b6, 5001, 0));
    assert_eq!(
        (t.packets, t.bytes),
        (10, 10 * (ETH + IPV6 + UDP + 200)),
        "UDP over IPv6"
    );

    let out = get((Direction::Egress, 6, a4, tcp_port, b4, 5002, 0));
    let back = get((Direction::Ingress, 6, b4, 5002, a4, tcp_port, 0));
    let (segs_out, segs_in) = (info.tcpi_segs_out as u64, info.tcpi_segs_in as u64);
    assert_eq!(
        info.tcpi_total_retrans, 0,
        "no retransmissions expected on a veth"
    );
    assert!(
        segs_out > 1_000_000 / 65_536,
        "the transfer took at least one GSO packet per 64 KiB"
    );
    assert_eq!(
        out.packets, segs_out,
        "TCP segments A->B as the wire sees them"
    );
    assert_eq!(
        out.bytes,
        1_000_000 + segs_out * (ETH + IPV4 + TCP_TS) + SYN_EXTRA,
        "TCP bytes A->B: payload plus every segment's headers"
    );
    assert_eq!(back.packets, segs_in, "TCP segments B->A");
    assert_eq!(
        back.bytes,
        segs_in * (ETH + IPV4 + TCP_TS) + SYN_EXTRA,
        "TCP bytes B->A"
    );
    assert_eq!(
        out.flags & 0x1b,
        0x1b,
        "SYN, ACK, PSH and FIN seen A->B: {:#x}",
        out.flags
    );
    assert_eq!(
        back.flags & 0x13,
        0x13,
        "SYN, ACK and FIN seen B->A: {:#x}",
        back.flags
    );

    let ping_out = get((Direction::Egress, 1, a4, 0, b4, 0, 8));
    let ping_back = get((Direction::Ingress, 1, b4, 0, a4, 0, 0));
    for t in [ping_out, ping_back] {
        assert_eq!(
            (t.packets, t.bytes),
            (3, 3 * (ETH + IPV4 + 8 + 56)),
            "ICMP echo"
        );
    }

    // Nothing we did not send: every IPv4 flow on the veth is one of the above.
    let known_v4 = udp_ports.len() + 2 + 2;
    let v4_flows = by_flow
        .keys()
        .filter(|(_, _, src, ..)| matches!(src, IpAddr::V4(_)))
        .count();
    assert_eq!(v4_flows, known_v4, "{by_flow:#?}");
}
