//! Configuration keys through the real `flowlens-collector` binary (eBPF on a veth between two
//! namespaces, tansu), each checked by what it published or what the kernel counted:
//! `collector.host` on every record; `filter.ports` / `protocols` / `cidrs`: only UDP to or
//! from port 7301 inside the pair's network (UDP to 7302 and pings leave nothing);
//! `sampling = 2`: records carry `sampling_rate = 2`; `bidirectional = false`: answers are
//! records of their own (`reverse_*` 0, the answer's direction ingress); `table_size = 1024`:
//! 3,000 flows overflow the kernel table (its `table_full` counter on `/metrics`, and the
//! interface's overflow record);
//! `idle_timeout_ms = 1000`: quiet flows leave the kernel table within seconds (its occupancy
//! on `/metrics`); `max_in_flight = 64` still delivers every record; `socket_metrics =
//! false`: no record of kernel drops (those come from a host-wide tracepoint the packet
//! filters do not see); `telemetry.log_format = "json"`: every log line is JSON.

mod common;

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::require_root;
use flowlens_runtime::testkit::{
    free_port, http, in_netns, read_topic, unique, wait_probe, ChildGuard, NetnsPair, Tansu,
};
use flowlens_schemas::{decode, Direction, RawFlow};
use rdkafka::Message;

#[test]
fn filter_sampling_direction_table_and_log_keys_take_effect() {
    require_root();
    let pair = NetnsPair::new("k");
    let tansu = Tansu::start();
    let topic = unique("raw");
    let metrics = free_port();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("collector.toml");
    let net = format!("{}/24", pair.ip_a).replace(".1/24", ".0/24");
    std::fs::write(
        &file,
        format!(
            "[collector]\nhost = \"keys-host\"\ninterfaces = [\"{}\"]\nnetns = \"{}\"\n\
             scan_interval_ms = 300\nbidirectional = false\ntable_size = 1024\n\
             max_in_flight = 64\nsampling = 2\nsocket_metrics = false\nidle_timeout_ms = 1000\n\
             [collector.filter]\ncidrs = [\"{net}\"]\nports = [7301]\nprotocols = [\"udp\"]\n\
             [kafka]\nbrokers = [\"{}\"]\npartitions = 1\n\
             [kafka.topics]\nraw_flows = \"{topic}\"\ninterfaces = \"{topic}-ifaces\"\n\
             [telemetry]\nmetrics_listen = \"127.0.0.1:{metrics}\"\nlog_format = \"json\"\n",
            pair.if_a,
            pair.ns_a,
            tansu.broker()
        ),
    )
    .unwrap();
    let log = dir.path().join("collector.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowlens-collector"));
    cmd.arg("--config")
        .arg(&file)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    let mut collector = ChildGuard::spawn("flowlens-collector", &mut cmd, &log);
    wait_probe(metrics, "/readyz", 200, "ready", Duration::from_secs(90));

    // 20 conversations answered (A -> B:7301 and back), then 3,000 one-datagram flows to
    // 7301 (more than the table holds even at 1:2), UDP to 7302 and pings (filtered out).
    let rx = in_netns(&pair.ns_b, || UdpSocket::bind((pair.ip_b, 7301)).unwrap());
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 256];
    for _ in 0..20 {
        let tx = in_netns(&pair.ns_a, || UdpSocket::bind((pair.ip_a, 0)).unwrap());
        tx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        tx.send_to(&[1u8; 64], (pair.ip_b, 7301)).unwrap();
        let (_, from) = rx.recv_from(&mut buf).unwrap();
        rx.send_to(&[2u8; 32], from).unwrap();
        tx.recv_from(&mut buf).unwrap();
    }
    let other = in_netns(&pair.ns_b, || UdpSocket::bind((pair.ip_b, 7302)).unwrap());
    let tx = in_netns(&pair.ns_a, || UdpSocket::bind((pair.ip_a, 0)).unwrap());
    for _ in 0..50 {
        tx.send_to(&[3u8; 64], (pair.ip_b, 7302)).unwrap();
    }
    NetnsPair::exec(
        &pair.ns_a,
        &["ping", "-c", "3", "-i", "0.2", "-q", &pair.ip_b.to_string()],
    );
    for _ in 0..3_000 {
        let tx = in_netns(&pair.ns_a, || UdpSocket::bind((pair.ip_a, 0)).unwrap());
        tx.send_to(&[4u8; 16], (pair.ip_b, 7301)).unwrap();
    }
    drop((rx, other));
    // The kernel counters reach /metrics at the next scan.
    let start = std::time::Instant::now();
    loop {
        let (_, exposition) = http(metrics, "GET", "/metrics", "");
        let table_full: f64 = exposition
            .lines()
            .find(|l| {
                l.starts_with("flowlens_collector_kernel_packets_total") && l.contains("table_full")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0);
        if table_full > 0.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "table never full:\n{exposition}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // Quiet flows leave the kernel table after idle_timeout_ms (1 s; the default keeps them
    // 15 s): the table's occupancy falls to 0 within a few scans.
    let start = std::time::Instant::now();
    loop {
        let (_, exposition) = http(metrics, "GET", "/metrics", "");
        let entries = exposition
            .lines()
            .find_map(|l| l.strip_prefix("flowlens_collector_table_entries "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        if entries == Some(0.0) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "table still holds {entries:?} entries"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(collector.stop_with(libc::SIGTERM, Duration::from_secs(60)));

    let records: Vec<RawFlow> = read_topic(&tansu.broker(), &topic, 1, Duration::from_secs(30))
        .iter()
        .map(|m| decode(m.payload().unwrap()).unwrap())
        .collect();
    assert!(records.len() > 100, "{} records", records.len());
    // Packets of flows that found no room in the full table are counted in the interface's
    // overflow record (unspecified addresses, protocol 0): present, and the only other kind.
    let (overflow, records): (Vec<RawFlow>, Vec<RawFlow>) =
        records.into_iter().partition(|f| f.proto == 0);
    assert!(!overflow.is_empty(), "no overflow record for a full table");
    assert!(overflow.iter().all(|f| f.src_port == 0 && f.packets > 0));
    for f in &records {
        assert_eq!(f.host, "keys-host");
        assert_eq!(f.sampling_rate, 2, "{f:?}");
        assert_eq!(f.proto, 17, "{f:?}");
        assert!(f.src_port == 7301 || f.dst_port == 7301, "{f:?}");
        assert_eq!((f.reverse_packets, f.reverse_bytes), (0, 0), "{f:?}");
        assert_eq!((f.drops, f.rtt_ns), (0, 0), "{f:?}");
    }
    let answers = records
        .iter()
        .filter(|f| f.src_port == 7301 && f.direction == Direction::Ingress)
        .count();
    assert!(
        answers > 0,
        "no answer record of its own (bidirectional = false)"
    );

    let logged = std::fs::read_to_string(&log).unwrap();
    for line in logged.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
}
