//! `/healthz` and `/readyz` of the real `flowlens-collector` binary (eBPF programs on a veth in
//! a namespace pair, Kafka = librdkafka's mock cluster in this process): ready once its
//! programs are attached and the broker answers; while the broker is down, not ready (Kafka
//! named) but alive, and the traffic of the outage is not lost: once the broker is back, the
//! packets of both flows add up exactly to the datagrams sent.

mod common;

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::require_root;
use flowlens_schemas::{decode, RawFlow};
use flowlens_testkit::{
    assert_alive_for, free_port, in_netns, read_topic, unique, wait_probe, ChildGuard, NetnsPair,
};
use rdkafka::mocking::MockCluster;
use rdkafka::Message;

const COLLECTOR: &str = env!("CARGO_BIN_EXE_flowlens-collector");
const DATAGRAMS: u64 = 20;
const PAYLOAD: usize = 100;

/// Sends [`DATAGRAMS`] from A:`port` to B:`port`, each checked on arrival.
fn udp(pair: &NetnsPair, port: u16) {
    let rx = in_netns(&pair.ns_b, || UdpSocket::bind((pair.ip_b, port)).unwrap());
    let tx = in_netns(&pair.ns_a, || UdpSocket::bind((pair.ip_a, port)).unwrap());
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 256];
    for _ in 0..DATAGRAMS {
        tx.send_to(&[5u8; PAYLOAD], (pair.ip_b, port)).unwrap();
        rx.recv_from(&mut buf).unwrap();
    }
}

#[test]
fn broker_down_makes_it_unready_but_alive_and_loses_nothing() {
    require_root();
    let pair = NetnsPair::new("h");
    let mock = MockCluster::new(1).unwrap();
    let brokers = mock.bootstrap_servers();
    let topic = unique("raw");
    mock.create_topic(&topic, 1, 1).unwrap();
    mock.create_topic(&format!("{topic}-ifaces"), 1, 1).unwrap();
    let metrics = free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("collector.log");
    let mut cmd = Command::new(COLLECTOR);
    cmd.env("FLOWLENS_COLLECTOR__KAFKA__BROKERS", &brokers)
        .env("FLOWLENS_COLLECTOR__KAFKA__CREATE_TOPICS", "false")
        .env("FLOWLENS_COLLECTOR__KAFKA__TOPICS__RAW_FLOWS", &topic)
        .env(
            "FLOWLENS_COLLECTOR__KAFKA__TOPICS__INTERFACES",
            format!("{topic}-ifaces"),
        )
        .env("FLOWLENS_COLLECTOR__COLLECTOR__NETNS", &pair.ns_a)
        .env("FLOWLENS_COLLECTOR__COLLECTOR__INTERFACES", &pair.if_a)
        .env("FLOWLENS_COLLECTOR__COLLECTOR__SCAN_INTERVAL_MS", "300")
        .env(
            "FLOWLENS_COLLECTOR__TELEMETRY__METRICS_LISTEN",
            format!("127.0.0.1:{metrics}"),
        )
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    let mut collector = ChildGuard::spawn("flowlens-collector", &mut cmd, &log);
    let ready = wait_probe(metrics, "/readyz", 200, "ready", Duration::from_secs(90));
    assert_eq!(ready, "ready\n");
    udp(&pair, 7201);

    mock.broker_down(1).unwrap();
    let why = wait_probe(metrics, "/readyz", 503, "kafka", Duration::from_secs(60));
    eprintln!("Kafka down, /readyz says:\n{why}");
    udp(&pair, 7202);
    assert_alive_for(metrics, Duration::from_secs(8));
    mock.broker_up(1).unwrap();
    wait_probe(metrics, "/readyz", 200, "ready", Duration::from_secs(60));
    // SIGTERM: final drain, flush, exit 0.
    assert!(collector.stop_with(libc::SIGTERM, Duration::from_secs(40)));
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("collector stopped"),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );

    let records = read_topic(&brokers, &topic, 1, Duration::from_secs(30));
    for port in [7201i32, 7202] {
        let (packets, bytes) = records
            .iter()
            .map(|m| decode::<RawFlow>(m.payload().unwrap()).unwrap())
            .filter(|f| !f.duplicate && f.src_port == port && f.dst_port == port)
            .fold((0, 0), |(p, b), f| (p + f.packets, b + f.bytes));
        assert_eq!(
            (packets as u64, bytes as u64),
            (DATAGRAMS, DATAGRAMS * (14 + 20 + 8 + PAYLOAD as u64)),
            "flow on port {port}"
        );
    }
}
