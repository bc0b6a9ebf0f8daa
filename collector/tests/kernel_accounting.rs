//! The collector on real traffic: two network namespaces joined by a veth pair, the kernel
//! programs attached to one end, known UDP (IPv4 and IPv6), TCP and ICMP traffic, records read
//! back from a real Kafka-protocol broker (tansu). Packet and byte counts must be exact, TCP
//! counted as the wire sees it (GSO super-packets expanded into segments).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{between_pair, expected_flows, require_root, send_known_traffic, FlowId, Totals};
use flowlens_collector::config::Config;
use flowlens_runtime::testkit::{read_topic, unique, NetnsPair, Tansu};
use flowlens_runtime::Shutdown;
use flowlens_schemas::{decode, Direction, Interface, RawFlow};
use rdkafka::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_counts_for_udp_tcp_icmp_on_veth() {
    require_root();
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

    // Interface metadata comes first: it also tells us the programs are attached.
    let (b, t) = (brokers.clone(), topics.interfaces.clone());
    let ifaces =
        tokio::task::spawn_blocking(move || read_topic(&b, &t, 2, Duration::from_secs(30)))
            .await
            .unwrap();
    let ifaces: Vec<Interface> = ifaces
        .iter()
        .map(|m| decode(m.payload().unwrap()).unwrap())
        .collect();
    let veth = ifaces
        .iter()
        .find(|i| i.name == pair.if_a)
        .unwrap_or_else(|| panic!("no interface record for {}: {ifaces:?}", pair.if_a));
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
    assert!(ifaces
        .iter()
        .any(|i| i.name == "lo" && i.kind == "loopback"));
    let ifindex = veth.ifindex;

    let pair = std::sync::Arc::new(pair);
    let p = pair.clone();
    let sent = tokio::task::spawn_blocking(move || send_known_traffic(&p))
        .await
        .unwrap();

    // Stop: the collector drains the table once more and flushes before returning.
    shutdown.trigger();
    collector.await.unwrap().expect("collector exits cleanly");

    let (b, t) = (brokers.clone(), topics.raw_flows.clone());
    let raw = tokio::task::spawn_blocking(move || read_topic(&b, &t, 1, Duration::from_secs(30)))
        .await
        .unwrap();
    let flows: Vec<RawFlow> = raw
        .iter()
        .map(|m| decode(m.payload().unwrap()).unwrap())
        .collect();
    let mut seen: BTreeMap<FlowId, Totals> = BTreeMap::new();
    let mut flags: BTreeMap<FlowId, u16> = BTreeMap::new();
    for f in flows.iter().filter(|f| f.ifindex == ifindex) {
        assert!(f.time_flow_start_ns <= f.time_flow_end_ns, "{f:?}");
        assert!(f.time_flow_end_ns <= f.time_exported_ns, "{f:?}");
        assert_eq!((f.host.as_str(), f.sampling_rate), ("test-host", 1));
        let id = (
            f.direction == Direction::Egress,
            f.proto as u8,
            f.src_ip(),
            f.src_port as u16,
            f.dst_ip(),
            f.dst_port as u16,
            f.icmp_type as u8,
        );
        let t = seen.entry(id).or_default();
        t.packets += f.packets as u64;
        t.bytes += f.bytes as u64;
        *flags.entry(id).or_default() |= f.tcp_flags as u16;
    }
    let expected = expected_flows(&pair, &sent);
    assert_eq!(between_pair(&pair, seen), expected);

    let a = std::net::IpAddr::V4(pair.ip_a);
    let b = std::net::IpAddr::V4(pair.ip_b);
    let out = flags[&(true, 6, a, sent.tcp_port, b, 5002, 0)];
    let back = flags[&(false, 6, b, 5002, a, sent.tcp_port, 0)];
    assert_eq!(out & 0x1ff, sent.tcp_flags_out, "TCP flags A->B {out:#x}");
    assert_eq!(back & 0x1ff, sent.tcp_flags_in, "TCP flags B->A {back:#x}");
}

/// Live flows are exported every scan (deltas) and idle ones leave the table with their last
/// counts: a flow sent in bursts across many scans and evictions still adds up exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interval_exports_and_idle_evictions_lose_nothing() {
    require_root();
    let broker = Tansu::start();
    let pair = std::sync::Arc::new(NetnsPair::new("t"));
    let mut config = Config::default();
    config.kafka.brokers = vec![broker.broker()];
    config.kafka.partitions = 1;
    config.kafka.topics.raw_flows = unique("raw");
    config.kafka.topics.interfaces = unique("ifaces");
    config.collector.netns = pair.ns_a.clone();
    config.collector.interfaces = vec![pair.if_a.clone()];
    config.collector.scan_interval_ms = 150;
    config.collector.idle_timeout_ms = 400;
    let topics = config.kafka.topics.clone();
    let shutdown = Shutdown::new();
    let collector = tokio::spawn(flowlens_collector::run(config, shutdown.clone()));
    let (b, t) = (broker.broker(), topics.interfaces.clone());
    tokio::task::spawn_blocking(move || read_topic(&b, &t, 2, Duration::from_secs(30)))
        .await
        .unwrap();

    // Six bursts of 50 datagrams on one flow: 200 ms apart (exported while live), then 800 ms
    // apart (idle, evicted, re-created).
    let p = pair.clone();
    let port = tokio::task::spawn_blocking(move || {
        let rx = flowlens_runtime::testkit::in_netns(&p.ns_b, || {
            std::net::UdpSocket::bind((p.ip_b, 6100)).unwrap()
        });
        let tx = flowlens_runtime::testkit::in_netns(&p.ns_a, || {
            std::net::UdpSocket::bind((p.ip_a, 0)).unwrap()
        });
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
    .await
    .unwrap();
    shutdown.trigger();
    collector.await.unwrap().expect("collector exits cleanly");

    let (b, t) = (broker.broker(), topics.raw_flows.clone());
    let raw = tokio::task::spawn_blocking(move || read_topic(&b, &t, 1, Duration::from_secs(30)))
        .await
        .unwrap();
    let records: Vec<RawFlow> = raw
        .iter()
        .map(|m| decode::<RawFlow>(m.payload().unwrap()).unwrap())
        .filter(|f| f.src_port == i32::from(port) && f.dst_port == 6100)
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
