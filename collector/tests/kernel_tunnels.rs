//! Tunnels and double counting on real traffic: inner flows of VXLAN (a real vxlan device
//! between two namespaces; TCP through it arrives as tunnel GSO super-packets), Geneve and GRE
//! (hand-built frames sent with AF_PACKET on the veth: this kernel has no geneve/gre modules),
//! each linked to its outer flow and marked as a duplicate of it; and one flow forwarded through
//! a namespace acting as router, seen on two of its interfaces, counted once.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use common::run_collector;
use flowlens_schemas::{Direction, RawFlow};
use flowlens_testkit::{in_netns, NetnsPair};

const ETH: i64 = 14;
const IPV4: i64 = 20;
const UDP: i64 = 8;
const TCP_TS: i64 = 32;
const SYN_EXTRA: i64 = 8;

fn sh(ns: &str, cmd: &str) {
    NetnsPair::exec(ns, &cmd.split_whitespace().collect::<Vec<_>>());
}

fn inner_of(flows: &[RawFlow], tunnel: &str, dst: Ipv4Addr) -> Vec<RawFlow> {
    flows
        .iter()
        .filter(|f| f.tunnel == tunnel && f.dst_ip() == std::net::IpAddr::V4(dst))
        .cloned()
        .collect()
}

fn sum(flows: &[RawFlow]) -> (i64, i64) {
    flows
        .iter()
        .fold((0, 0), |(p, b), f| (p + f.packets, b + f.bytes))
}

/// What the VXLAN traffic produced on the sender side.
struct VxlanSent {
    udp_port: u16,
    tcp_bytes_sent: i64,
    tcp_segs_out: i64,
    tcp_segs_in: i64,
}

/// MAC addresses of the vxlan devices (A's and B's), fixed so each side's neighbour is static.
const VX_MAC_A: &str = "02:42:00:00:00:01";
const VX_MAC_B: &str = "02:42:00:00:00:02";
/// VXLAN encapsulation per packet: outer Ethernet, IPv4, UDP and the VXLAN header.
const VXLAN_OVERHEAD: i64 = ETH + IPV4 + UDP + 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vxlan_inner_flows_are_linked_to_the_outer_flow() {
    let run = run_collector("v", |_| {}, |p| {
        // Only the test's traffic crosses the tunnel: no IPv6 on it (neighbour discovery,
        // MLD) and static neighbours (no ARP), so the outer flows carry exactly the inner ones.
        for (ns, me, peer, inner, mac, peer_inner, peer_mac) in [
            (&p.ns_a, p.ip_a, p.ip_b, "192.168.42.1", VX_MAC_A, "192.168.42.2", VX_MAC_B),
            (&p.ns_b, p.ip_b, p.ip_a, "192.168.42.2", VX_MAC_B, "192.168.42.1", VX_MAC_A),
        ] {
            let dev = if ns == &p.ns_a { &p.if_a } else { &p.if_b };
            sh(ns, "sysctl -qw net.ipv6.conf.default.disable_ipv6=1");
            sh(
                ns,
                &format!(
                    "ip link add vx42 address {mac} type vxlan id 42 local {me} remote {peer} dstport 4789 dev {dev}"
                ),
            );
            sh(ns, &format!("ip addr add {inner}/24 dev vx42"));
            sh(
                ns,
                &format!("ip neigh add {peer_inner} lladdr {peer_mac} dev vx42 nud permanent"),
            );
            sh(ns, "ip link set vx42 up");
            sh(ns, "sysctl -qw net.ipv4.tcp_sack=0");
        }
        let inner_b = Ipv4Addr::new(192, 168, 42, 2);
        let rx = in_netns(&p.ns_b, || UdpSocket::bind((inner_b, 7000)).unwrap());
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let tx = in_netns(&p.ns_a, || UdpSocket::bind(("192.168.42.1", 0)).unwrap());
        let mut buf = [0u8; 512];
        for _ in 0..20 {
            tx.send_to(&[5u8; 100], (inner_b, 7000)).unwrap();
            rx.recv_from(&mut buf).expect("datagram through the tunnel");
        }
        // TCP through the tunnel: segments leave as UDP-tunnel GSO super-packets.
        let listener = in_netns(&p.ns_b, || TcpListener::bind((inner_b, 7001)).unwrap());
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            got.len()
        });
        let mut client = in_netns(&p.ns_a, || TcpStream::connect((inner_b, 7001)).unwrap());
        client.write_all(&vec![1u8; 300_000]).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(server.join().unwrap(), 300_000);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let info = common::tcp_info(&client);
        VxlanSent {
            udp_port: tx.local_addr().unwrap().port(),
            tcp_bytes_sent: info.tcpi_bytes_sent as i64,
            tcp_segs_out: info.tcpi_segs_out as i64,
            tcp_segs_in: info.tcpi_segs_in as i64,
        }
    })
    .await;
    let (p, sent) = (&run.pair, &run.sent);
    let inner = inner_of(&run.flows, "vxlan", Ipv4Addr::new(192, 168, 42, 2));
    let udp: Vec<_> = inner
        .iter()
        .filter(|f| f.dst_port == 7000)
        .cloned()
        .collect();
    assert!(!udp.is_empty(), "no inner VXLAN flow in {:#?}", run.flows);
    for f in &inner {
        assert_eq!((f.tunnel_id, f.duplicate), (42, true), "{f:?}");
        assert_eq!(f.src_ip().to_string(), "192.168.42.1");
        assert_eq!(f.outer_src_addr, Some(p.ip_a.to_ipv6_mapped()), "{f:?}");
        assert_eq!(f.outer_dst_addr, Some(p.ip_b.to_ipv6_mapped()), "{f:?}");
        assert_eq!(f.direction, Direction::Egress);
    }
    assert_eq!(udp[0].src_port as u16, sent.udp_port);
    // Inner frames: Ethernet + IPv4 + UDP + 100 bytes.
    assert_eq!(sum(&udp), (20, 20 * (ETH + IPV4 + UDP + 100)));
    let tcp: Vec<_> = inner
        .iter()
        .filter(|f| f.dst_port == 7001)
        .cloned()
        .collect();
    let tcp_out = (
        sent.tcp_segs_out,
        sent.tcp_bytes_sent + sent.tcp_segs_out * (ETH + IPV4 + TCP_TS) + SYN_EXTRA,
    );
    assert_eq!(
        sum(&tcp),
        tcp_out,
        "inner TCP A->B: every segment of the GSO super-packets, inner frame bytes"
    );
    // B's segments: ACKs (SYN-ACK with its options), FIN.
    let tcp_in = (
        sent.tcp_segs_in,
        sent.tcp_segs_in * (ETH + IPV4 + TCP_TS) + SYN_EXTRA,
    );
    let reverse = tcp.iter().fold((0, 0), |(p, b), f| {
        (p + f.reverse_packets, b + f.reverse_bytes)
    });
    assert_eq!(reverse, tcp_in, "inner TCP B->A");
    assert_eq!(inner.len(), udp.len() + tcp.len(), "no other inner flow");
    // The outer flows (UDP to 4789, one per direction and inner flow) carry exactly those
    // packets once more, with the encapsulation on each, and are not duplicates.
    let outer_from =
        |src: std::net::Ipv4Addr| outer(&run.flows, |f| f.dst_port == 4789 && f.src_ip() == src);
    let (out, back) = (outer_from(p.ip_a), outer_from(p.ip_b));
    let udp_in = 20 * (ETH + IPV4 + UDP + 100);
    let outer_out = (
        20 + tcp_out.0,
        udp_in + tcp_out.1 + (20 + tcp_out.0) * VXLAN_OVERHEAD,
    );
    assert_eq!(sum(&out), outer_out, "outer VXLAN A->B: {out:#?}");
    let outer_back = (tcp_in.0, tcp_in.1 + tcp_in.0 * VXLAN_OVERHEAD);
    assert_eq!(sum(&back), outer_back, "outer VXLAN B->A: {back:#?}");
}

/// Builds an Ethernet + IPv4 frame around `payload` (IP protocol `proto`).
fn ipv4_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    f.extend_from_slice(&ipv4_packet(src, dst, proto, payload));
    f
}

fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0, 0, 64, proto, 0, 0];
    ip[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let mut sum = 0u32;
    for w in ip.chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    ip.extend_from_slice(payload);
    ip
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

fn mac(ns: &str, ifname: &str) -> [u8; 6] {
    let text = NetnsPair::exec(ns, &["cat", &format!("/sys/class/net/{ifname}/address")]);
    let mut out = [0u8; 6];
    for (o, part) in out.iter_mut().zip(text.trim().split(':')) {
        *o = u8::from_str_radix(part, 16).unwrap();
    }
    out
}

/// Sends raw frames out of `ifname` in namespace `ns` (AF_PACKET).
fn send_frames(ns: &str, ifname: &str, frames: &[Vec<u8>]) {
    in_netns(ns, || {
        let ifindex = nix_ifindex(ifname);
        // SAFETY: plain socket calls with valid buffers.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(fd >= 0, "AF_PACKET socket");
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = ifindex;
            addr.sll_halen = 6;
            for f in frames {
                let n = libc::sendto(
                    fd,
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                assert_eq!(n, f.len() as isize, "frame sent");
            }
            libc::close(fd);
        }
    });
}

fn nix_ifindex(name: &str) -> i32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert!(i > 0, "interface {name}");
    i as i32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn geneve_and_gre_inner_flows_from_hand_built_frames() {
    let run = run_collector(
        "g",
        |_| {},
        |p| {
            let (dmac, smac) = (mac(&p.ns_b, &p.if_b), mac(&p.ns_a, &p.if_a));
            let payload = [6u8; 64];
            let inner_udp = udp(3333, 4444, &payload);
            // Geneve: 8-byte header with one 8-byte option, VNI 7, Ethernet inside.
            let inner_eth = ipv4_frame(
                [2, 0, 0, 0, 0, 2],
                [2, 0, 0, 0, 0, 1],
                Ipv4Addr::new(192, 168, 43, 1),
                Ipv4Addr::new(192, 168, 43, 2),
                17,
                &inner_udp,
            );
            let mut geneve = vec![0x02, 0, 0x65, 0x58, 0, 0, 7, 0];
            geneve.extend_from_slice(&[0x01, 0x02, 0x03, 0x01, 0, 0, 0, 0]);
            geneve.extend_from_slice(&inner_eth);
            let outer_geneve =
                ipv4_frame(dmac, smac, p.ip_a, p.ip_b, 17, &udp(50000, 6081, &geneve));
            // GRE with key 5 (flags K), IPv4 inside (no inner Ethernet).
            let inner_ip = ipv4_packet(
                Ipv4Addr::new(192, 168, 44, 1),
                Ipv4Addr::new(192, 168, 44, 2),
                17,
                &inner_udp,
            );
            let mut gre = vec![0x20, 0, 0x08, 0x00, 0, 0, 0, 5];
            gre.extend_from_slice(&inner_ip);
            let outer_gre = ipv4_frame(dmac, smac, p.ip_a, p.ip_b, 47, &gre);
            send_frames(&p.ns_a, &p.if_a, &vec![outer_geneve; 10]);
            send_frames(&p.ns_a, &p.if_a, &vec![outer_gre; 12]);
            (inner_eth.len() as i64, inner_ip.len() as i64)
        },
    )
    .await;
    let (p, (eth_len, ip_len)) = (&run.pair, run.sent);
    let geneve = inner_of(&run.flows, "geneve", Ipv4Addr::new(192, 168, 43, 2));
    assert_eq!(sum(&geneve), (10, 10 * eth_len), "{geneve:#?}");
    let gre = inner_of(&run.flows, "gre", Ipv4Addr::new(192, 168, 44, 2));
    assert_eq!(sum(&gre), (12, 12 * ip_len), "{gre:#?}");
    for (f, id) in geneve
        .iter()
        .map(|f| (f, 7))
        .chain(gre.iter().map(|f| (f, 5)))
    {
        assert_eq!((f.tunnel_id, f.duplicate), (id, true), "{f:?}");
        assert_eq!((f.src_port, f.dst_port, f.proto), (3333, 4444, 17));
        assert_eq!(f.outer_dst_addr, Some(p.ip_b.to_ipv6_mapped()));
    }
    // The outer flows count every frame as sent and are not duplicates. GRE: Ethernet + IPv4
    // + GRE with key (8) + the inner IPv4 packet; Geneve: Ethernet + IPv4 + UDP + Geneve with
    // its option (16) + the inner Ethernet frame.
    let gre = outer(&run.flows, |f| f.proto == 47);
    assert_eq!(sum(&gre), (12, 12 * (ETH + IPV4 + 8 + ip_len)), "{gre:#?}");
    let geneve = outer(&run.flows, |f| f.src_port == 50000 && f.dst_port == 6081);
    let geneve_frame = ETH + IPV4 + UDP + 16 + eth_len;
    assert_eq!(sum(&geneve), (10, 10 * geneve_frame), "{geneve:#?}");
}

/// The plain (not inner) flows `which` selects; none may be marked duplicate.
fn outer(flows: &[RawFlow], which: impl Fn(&RawFlow) -> bool) -> Vec<RawFlow> {
    let out: Vec<_> = flows
        .iter()
        .filter(|f| f.tunnel.is_empty() && which(f))
        .cloned()
        .collect();
    assert!(out.iter().all(|f| !f.duplicate), "{out:#?}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_flow_seen_on_two_interfaces_counts_once() {
    // A routes between B (on the pair's veth) and a third namespace C (on a second veth whose
    // A end matches the pattern the collector watches).
    let run = run_collector(
        "r",
        |c| c.collector.interfaces.push("flx*".into()),
        |p| {
            let net = p.ip_a.octets()[1];
            let ns_c = format!("{}c", p.ns_a);
            let (x_a, x_c) = (
                format!("flx{}", &p.if_a[3..]),
                format!("fly{}", &p.if_a[3..]),
            );
            let ok = |args: &[&str]| {
                let s = std::process::Command::new("ip")
                    .args(args)
                    .status()
                    .unwrap();
                assert!(s.success(), "ip {args:?}");
            };
            ok(&["netns", "add", &ns_c]);
            ok(&[
                "link", "add", &x_a, "netns", &p.ns_a, "type", "veth", "peer", "name", &x_c,
                "netns", &ns_c,
            ]);
            sh(&p.ns_a, &format!("ip addr add 10.{net}.1.1/24 dev {x_a}"));
            sh(&p.ns_a, &format!("ip link set {x_a} up"));
            sh(&p.ns_a, "sysctl -qw net.ipv4.ip_forward=1");
            sh(&ns_c, &format!("ip addr add 10.{net}.1.2/24 dev {x_c}"));
            sh(&ns_c, &format!("ip link set {x_c} up"));
            sh(&ns_c, "ip link set lo up");
            sh(&ns_c, &format!("ip route add default via 10.{net}.1.1"));
            sh(
                &p.ns_b,
                &format!("ip route add 10.{net}.1.0/24 via {}", p.ip_a),
            );
            // Let the collector see the new interface and attach (netlink event).
            std::thread::sleep(Duration::from_millis(1500));
            let c_ip = Ipv4Addr::new(10, net, 1, 2);
            let rx = in_netns(&ns_c, || UdpSocket::bind((c_ip, 7100)).unwrap());
            rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let tx = in_netns(&p.ns_b, || UdpSocket::bind((p.ip_b, 0)).unwrap());
            let mut buf = [0u8; 256];
            for _ in 0..30 {
                tx.send_to(&[8u8; 50], (c_ip, 7100)).unwrap();
                rx.recv_from(&mut buf).expect("forwarded datagram");
            }
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &ns_c])
                .status();
            tx.local_addr().unwrap().port()
        },
    )
    .await;
    let ours: Vec<_> = run
        .flows
        .iter()
        .filter(|f| f.dst_port == 7100 && f.src_port as u16 == run.sent)
        .cloned()
        .collect();
    let ifaces: std::collections::BTreeSet<_> = ours.iter().map(|f| f.ifindex).collect();
    assert_eq!(ifaces.len(), 2, "seen on both interfaces: {ours:#?}");
    for i in &ifaces {
        let on: Vec<_> = ours.iter().filter(|f| f.ifindex == *i).cloned().collect();
        assert_eq!(sum(&on).0, 30, "every packet on interface {i}");
    }
    let counted: Vec<_> = ours.iter().filter(|f| !f.duplicate).cloned().collect();
    assert_eq!(
        sum(&counted),
        (30, 30 * (ETH + IPV4 + UDP + 50)),
        "{ours:#?}"
    );
    // Counted on one interface: where the packets arrived first (ingress from B) when one scan
    // read both entries; a scan that ran while the flow began may have read only one of them,
    // and the one whose records were exported first keeps being counted.
    let counted_on: std::collections::BTreeSet<_> = counted.iter().map(|f| f.ifindex).collect();
    assert_eq!(counted_on.len(), 1, "{counted:#?}");
}
