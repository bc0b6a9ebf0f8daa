//! Known traffic between two namespaces and the exact flows it must produce, shared by the
//! collector's kernel test and the end-to-end test.
#![allow(dead_code)]

pub mod cluster;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use flowlens_collector::config::Config;
use flowlens_runtime::Shutdown;
use flowlens_schemas::{decode, Direction, Interface, RawFlow};
use flowlens_testkit::{in_netns, read_topic, unique, NetnsPair, Tansu};
use rdkafka::Message;

const ETH: u64 = 14;
const IPV4: u64 = 20;
const IPV6: u64 = 40;
const UDP: u64 = 8;
const ICMP_ECHO: u64 = 8 + 56;
/// TCP header with the timestamp option, as Linux sends every segment after the handshake.
const TCP_TS: u64 = 32;
/// SYN and SYN-ACK carry 8 more option bytes (MSS, SACK permitted, window scale).
const SYN_EXTRA: u64 = 8;

pub const UDP_FLOWS: usize = 4;
pub const UDP_DATAGRAMS: u64 = 25;
pub const UDP_PAYLOAD: usize = 100;
pub const UDP6_DATAGRAMS: u64 = 10;
pub const UDP6_PAYLOAD: usize = 200;
pub const TCP_BYTES: usize = 1_000_000;
pub const PINGS: u64 = 3;

/// A flow as both tests identify it: (egress?, protocol, source, source port, destination,
/// destination port, ICMP type).
pub type FlowId = (bool, u8, IpAddr, u16, IpAddr, u16, u8);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub packets: u64,
    pub bytes: u64,
}

/// What the traffic generator learned while sending (ports chosen by the kernel, TCP counters).
pub struct Sent {
    pub udp_ports: Vec<u16>,
    /// TCP payload bytes A put on the wire (`tcpi_bytes_sent`; `send_known_traffic` checks
    /// that nothing was retransmitted).
    pub tcp_bytes_sent: u64,
    pub udp6_port: u16,
    pub tcp_port: u16,
    pub tcp_segs_out: u64,
    pub tcp_segs_in: u64,
    pub tcp_flags_out: u16,
    pub tcp_flags_in: u16,
}

/// Sends, from namespace A to B: UDP over IPv4 (4 flows × 25 datagrams × 100 bytes), UDP over
/// IPv6 (10 × 200 bytes), a 1 MB TCP transfer (GSO super-packets on the veth), and 3 pings.
/// Blocking; every datagram and byte is checked on arrival.
pub fn send_known_traffic(pair: &NetnsPair) -> Sent {
    let (ip_a, ip_b, ip6_a, ip6_b) = (pair.ip_a, pair.ip_b, pair.ip6_a, pair.ip6_b);
    let rx = in_netns(&pair.ns_b, || UdpSocket::bind((ip_b, 5000)).unwrap());
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut udp_ports = Vec::new();
    for _ in 0..UDP_FLOWS {
        let tx = in_netns(&pair.ns_a, || UdpSocket::bind((ip_a, 0)).unwrap());
        udp_ports.push(tx.local_addr().unwrap().port());
        for _ in 0..UDP_DATAGRAMS {
            tx.send_to(&[7u8; UDP_PAYLOAD], (ip_b, 5000)).unwrap();
        }
    }
    let mut buf = [0u8; 2048];
    for _ in 0..UDP_FLOWS as u64 * UDP_DATAGRAMS {
        rx.recv_from(&mut buf).expect("every datagram arrives");
    }

    let rx6 = in_netns(&pair.ns_b, || UdpSocket::bind((ip6_b, 5001)).unwrap());
    rx6.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let tx6 = in_netns(&pair.ns_a, || UdpSocket::bind((ip6_a, 0)).unwrap());
    for _ in 0..UDP6_DATAGRAMS {
        tx6.send_to(&[9u8; UDP6_PAYLOAD], (ip6_b, 5001)).unwrap();
    }
    for _ in 0..UDP6_DATAGRAMS {
        rx6.recv_from(&mut buf)
            .expect("every IPv6 datagram arrives");
    }

    let listener = in_netns(&pair.ns_b, || TcpListener::bind((ip_b, 5002)).unwrap());
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got.len()
    });
    let mut client = in_netns(&pair.ns_a, || {
        TcpStream::connect(SocketAddr::from((ip_b, 5002))).unwrap()
    });
    let tcp_port = client.local_addr().unwrap().port();
    client.write_all(&vec![1u8; TCP_BYTES]).unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(server.join().unwrap(), TCP_BYTES);
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    // The ACK of the server's FIN is sent on its arrival; give it a moment before reading counters.
    std::thread::sleep(Duration::from_millis(200));
    let info = tcp_info(&client);
    assert_eq!(
        info.tcpi_total_retrans, 0,
        "no retransmissions expected on a veth"
    );

    NetnsPair::exec(
        &pair.ns_a,
        &[
            "ping",
            "-c",
            &PINGS.to_string(),
            "-i",
            "0.2",
            "-q",
            &ip_b.to_string(),
        ],
    );
    Sent {
        udp_ports,
        udp6_port: tx6.local_addr().unwrap().port(),
        tcp_port,
        tcp_bytes_sent: info.tcpi_bytes_sent,
        tcp_segs_out: info.tcpi_segs_out.into(),
        tcp_segs_in: info.tcpi_segs_in.into(),
        // SYN, PSH, ACK, FIN from the client; SYN, ACK, FIN from the server.
        tcp_flags_out: 0x1b,
        tcp_flags_in: 0x13,
    }
}

/// The exact flows the collector on A's veth must report for `sent`, with packets and bytes as
/// on the wire (Ethernet frame without FCS; TCP segments, not GSO super-packets).
pub fn expected_flows(pair: &NetnsPair, sent: &Sent) -> BTreeMap<FlowId, Totals> {
    let (a, b) = (IpAddr::V4(pair.ip_a), IpAddr::V4(pair.ip_b));
    let (a6, b6) = (IpAddr::V6(pair.ip6_a), IpAddr::V6(pair.ip6_b));
    let mut out = BTreeMap::new();
    for port in &sent.udp_ports {
        out.insert(
            (true, 17, a, *port, b, 5000, 0),
            repeated(UDP_DATAGRAMS, ETH + IPV4 + UDP + UDP_PAYLOAD as u64),
        );
    }
    out.insert(
        (true, 17, a6, sent.udp6_port, b6, 5001, 0),
        repeated(UDP6_DATAGRAMS, ETH + IPV6 + UDP + UDP6_PAYLOAD as u64),
    );
    out.insert(
        (true, 6, a, sent.tcp_port, b, 5002, 0),
        Totals {
            packets: sent.tcp_segs_out,
            bytes: sent.tcp_bytes_sent + sent.tcp_segs_out * (ETH + IPV4 + TCP_TS) + SYN_EXTRA,
        },
    );
    out.insert(
        (false, 6, b, 5002, a, sent.tcp_port, 0),
        Totals {
            packets: sent.tcp_segs_in,
            bytes: sent.tcp_segs_in * (ETH + IPV4 + TCP_TS) + SYN_EXTRA,
        },
    );
    out.insert(
        (true, 1, a, 0, b, 0, 8),
        repeated(PINGS, ETH + IPV4 + ICMP_ECHO),
    );
    out.insert(
        (false, 1, b, 0, a, 0, 0),
        repeated(PINGS, ETH + IPV4 + ICMP_ECHO),
    );
    out
}

/// Keeps only the flows between the pair's addresses (drops IPv6 neighbour discovery and the
/// like, which the kernel sends on its own) so the comparison is exact for what the test sent.
pub fn between_pair(pair: &NetnsPair, flows: BTreeMap<FlowId, Totals>) -> BTreeMap<FlowId, Totals> {
    let ours = [
        IpAddr::V4(pair.ip_a),
        IpAddr::V4(pair.ip_b),
        IpAddr::V6(pair.ip6_a),
        IpAddr::V6(pair.ip6_b),
    ];
    flows
        .into_iter()
        .filter(|((_, proto, src, _, dst, _, _), _)| {
            ours.contains(src) && ours.contains(dst) && *proto != 58
        })
        .collect()
}

fn repeated(packets: u64, frame: u64) -> Totals {
    Totals {
        packets,
        bytes: packets * frame,
    }
}

pub fn tcp_info(stream: &TcpStream) -> libc::tcp_info {
    // SAFETY: tcp_info is plain data; getsockopt fills at most `len` bytes.
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

pub fn require_root() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "this test loads eBPF programs and creates network namespaces: run it as root"
    );
}

/// Sends `n` UDP datagrams of `payload` bytes from A to B:`port` (IPv4) on one flow (paced in
/// bursts so the receiver keeps up); returns the source port. Every datagram is checked on arrival.
pub fn send_udp_flow(pair: &NetnsPair, n: u64, payload: usize, port: u16) -> u16 {
    send_udp_between(pair, pair.ip_a.into(), pair.ip_b.into(), n, payload, port)
}

/// Like [`send_udp_flow`], from address `a` (of namespace A) to `b`:`port` (of namespace B).
pub fn send_udp_between(
    pair: &NetnsPair,
    a: IpAddr,
    b: IpAddr,
    n: u64,
    payload: usize,
    port: u16,
) -> u16 {
    let rx = in_netns(&pair.ns_b, || UdpSocket::bind((b, port)).unwrap());
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let tx = in_netns(&pair.ns_a, || UdpSocket::bind((a, 0)).unwrap());
    let data = vec![3u8; payload];
    let mut buf = vec![0u8; payload + 1];
    let mut sent = 0;
    while sent < n {
        let burst = (n - sent).min(100);
        for _ in 0..burst {
            tx.send_to(&data, (b, port)).unwrap();
        }
        for _ in 0..burst {
            rx.recv_from(&mut buf).expect("every datagram arrives");
        }
        sent += burst;
    }
    tx.local_addr().unwrap().port()
}

/// What a collector run produced.
pub struct Run<T> {
    pub pair: std::sync::Arc<NetnsPair>,
    /// What the traffic closure returned.
    pub sent: T,
    /// Every raw flow record published, in order.
    pub flows: Vec<RawFlow>,
    /// Every interface record published at start.
    pub interfaces: Vec<Interface>,
}

/// Runs a collector on a fresh pair's A side (its own tansu, unique topics, 300 ms scans) with
/// `tune` applied; once its interface records are out (programs attached) runs `traffic`, then
/// stops it (final drain, flush) and reads back everything it published.
pub async fn run_collector<T: Send + 'static>(
    tag: &str,
    tune: impl FnOnce(&mut Config),
    traffic: impl FnOnce(&NetnsPair) -> T + Send + 'static,
) -> Run<T> {
    require_root();
    let broker = Tansu::start();
    let pair = std::sync::Arc::new(NetnsPair::new(tag));
    let mut config = Config::default();
    config.kafka.brokers = vec![broker.broker()];
    config.kafka.partitions = 1;
    config.kafka.topics.raw_flows = unique("raw");
    config.kafka.topics.interfaces = unique("ifaces");
    config.collector.netns = pair.ns_a.clone();
    config.collector.interfaces = vec![pair.if_a.clone()];
    config.collector.scan_interval_ms = 300;
    tune(&mut config);
    let topics = config.kafka.topics.clone();
    let shutdown = Shutdown::new();
    let collector = tokio::spawn(flowlens_collector::run(config, shutdown.clone()));
    let read = |topic: &str, min: usize| {
        let (b, t) = (broker.broker(), topic.to_string());
        tokio::task::spawn_blocking(move || read_topic(&b, &t, min, Duration::from_secs(30)))
    };
    let interfaces = read(&topics.interfaces, 2)
        .await
        .unwrap()
        .iter()
        .map(|m| decode(m.payload().unwrap()).unwrap())
        .collect();
    let p = pair.clone();
    let sent = tokio::task::spawn_blocking(move || traffic(&p))
        .await
        .unwrap();
    shutdown.trigger();
    collector.await.unwrap().expect("collector exits cleanly");
    let flows = read(&topics.raw_flows, 1)
        .await
        .unwrap()
        .iter()
        .map(|m| decode(m.payload().unwrap()).unwrap())
        .collect();
    Run {
        pair,
        sent,
        flows,
        interfaces,
    }
}

/// The identity the tests compare flows by.
pub fn flow_id(f: &RawFlow) -> FlowId {
    (
        f.direction == Direction::Egress,
        f.proto as u8,
        f.src_ip(),
        f.src_port as u16,
        f.dst_ip(),
        f.dst_port as u16,
        f.icmp_type as u8,
    )
}

/// The B->A identity of a conversation record: ends swapped, the other direction on the
/// interface, the answer's ICMP type.
pub fn reverse_id(f: &RawFlow) -> FlowId {
    let icmp = match (f.proto, f.icmp_type) {
        (1, 8) => 0,
        (58, 128) => 129,
        (_, t) => t as u8,
    };
    (
        f.direction != Direction::Egress,
        f.proto as u8,
        f.dst_ip(),
        f.dst_port as u16,
        f.src_ip(),
        f.src_port as u16,
        icmp,
    )
}

/// Packets and bytes per direction of each flow, summed over every record that is not a
/// duplicate: each conversation record splits into its A->B part and its B->A (reverse_*) part.
pub fn totals(flows: &[RawFlow]) -> BTreeMap<FlowId, Totals> {
    let mut out: BTreeMap<FlowId, Totals> = BTreeMap::new();
    for f in flows.iter().filter(|f| !f.duplicate) {
        for (id, packets, bytes) in [
            (flow_id(f), f.packets, f.bytes),
            (reverse_id(f), f.reverse_packets, f.reverse_bytes),
        ] {
            if packets > 0 {
                let t = out.entry(id).or_default();
                t.packets += packets as u64;
                t.bytes += bytes as u64;
            }
        }
    }
    out
}

/// The three stages wired together: one set of unique topics on `broker`, the sink writing to
/// `clickhouse_url` (flushing every 500 ms), the collector on the pair's A side as `host`
/// (500 ms scans). Tests adjust the configs before [`Pipeline::start`].
pub struct Pipeline {
    pub sink: flowlens_sink::Config,
    pub enricher: flowlens_enricher::config::Config,
    pub collector: Config,
}

/// A started [`Pipeline`]: the collector stops on its own, then the enricher and the sink.
pub struct RunningPipeline {
    stop_pipeline: Shutdown,
    stop_collector: Shutdown,
    sink: tokio::task::JoinHandle<anyhow::Result<()>>,
    enricher: tokio::task::JoinHandle<anyhow::Result<()>>,
    collector: Option<Collector>,
}

/// The collector of a running pipeline: a task of this process, or its real binary.
enum Collector {
    Task(tokio::task::JoinHandle<anyhow::Result<()>>),
    Process(CollectorProcess),
}

/// The `flowlens-collector` binary, configured only through `FLOWLENS_COLLECTOR__*`
/// environment variables, serving its metrics on a free port; killed if still running on drop.
pub struct CollectorProcess {
    child: std::process::Child,
    pub metrics_port: u16,
    log: tempfile::NamedTempFile,
}

impl CollectorProcess {
    /// Starts the binary with `config`'s Kafka settings and topics, host, namespace,
    /// interfaces, scan interval, DNS and HTTP ports.
    pub fn spawn(config: &Config) -> Self {
        let list = |ports: &[u16]| {
            ports
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let metrics_port = flowlens_testkit::free_port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let (c, k) = (&config.collector, &config.kafka);
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_flowlens-collector"))
            .env("FLOWLENS_COLLECTOR__KAFKA__BROKERS", k.brokers.join(","))
            .env(
                "FLOWLENS_COLLECTOR__KAFKA__PARTITIONS",
                k.partitions.to_string(),
            )
            .env(
                "FLOWLENS_COLLECTOR__KAFKA__TOPICS__RAW_FLOWS",
                &k.topics.raw_flows,
            )
            .env(
                "FLOWLENS_COLLECTOR__KAFKA__TOPICS__INTERFACES",
                &k.topics.interfaces,
            )
            .env("FLOWLENS_COLLECTOR__COLLECTOR__HOST", &c.host)
            .env("FLOWLENS_COLLECTOR__COLLECTOR__NETNS", &c.netns)
            .env(
                "FLOWLENS_COLLECTOR__COLLECTOR__INTERFACES",
                c.interfaces.join(","),
            )
            .env(
                "FLOWLENS_COLLECTOR__COLLECTOR__SCAN_INTERVAL_MS",
                c.scan_interval_ms.to_string(),
            )
            .env(
                "FLOWLENS_COLLECTOR__COLLECTOR__DNS_PORTS",
                list(&c.dns_ports),
            )
            .env(
                "FLOWLENS_COLLECTOR__COLLECTOR__HTTP_PORTS",
                list(&c.http_ports),
            )
            .env(
                "FLOWLENS_COLLECTOR__TELEMETRY__METRICS_LISTEN",
                format!("127.0.0.1:{metrics_port}"),
            )
            .stdin(std::process::Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("starting flowlens-collector");
        Self {
            child,
            metrics_port,
            log,
        }
    }

    /// What the binary logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// The value of metric `name` with exactly `labels` (e.g. `reason="malformed"`) on its
    /// /metrics endpoint, if it is there.
    pub fn metric(&self, name: &str, labels: &str) -> Option<f64> {
        let (status, text) = flowlens_testkit::http(self.metrics_port, "GET", "/metrics", "");
        assert_eq!(status, 200, "GET /metrics: {text}");
        let series = if labels.is_empty() {
            format!("{name} ")
        } else {
            format!("{name}{{{labels}}} ")
        };
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .map(|v| v.trim().parse().unwrap())
    }

    /// SIGTERM, then waits for the final drain and flush; the binary must exit with status 0.
    pub fn stop(mut self) {
        // SAFETY: signalling our own child.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) },
            0
        );
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the collector did not stop within 60 s of SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(
            status.success(),
            "collector exited with {status}:\n{}",
            self.log()
        );
    }
}

impl Drop for CollectorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Pipeline {
    pub fn new(broker: &str, clickhouse_url: &str, pair: &NetnsPair, host: &str) -> Self {
        let mut kafka = flowlens_runtime::kafka::KafkaConfig {
            brokers: vec![broker.to_string()],
            partitions: 2,
            ..Default::default()
        };
        kafka.topics.raw_flows = unique("raw");
        kafka.topics.interfaces = unique("ifaces");
        kafka.topics.enriched_flows = unique("enriched");
        kafka.topics.dead_letter = unique("dlq");
        let mut sink = flowlens_sink::Config {
            kafka: kafka.clone(),
            ..Default::default()
        };
        sink.clickhouse.url = clickhouse_url.to_string();
        sink.batch.max_age_ms = 500;
        sink.sink.group_id = unique("sink");
        let mut enricher = flowlens_enricher::config::Config {
            kafka: kafka.clone(),
            ..Default::default()
        };
        enricher.enricher.group_id = unique("enricher");
        let mut collector = Config {
            kafka,
            ..Default::default()
        };
        collector.collector.host = host.to_string();
        collector.collector.netns = pair.ns_a.clone();
        collector.collector.interfaces = vec![pair.if_a.clone()];
        collector.collector.scan_interval_ms = 500;
        Self {
            sink,
            enricher,
            collector,
        }
    }

    /// Starts the three stages in-process and gives them time to join their groups and attach.
    pub async fn start(self) -> RunningPipeline {
        let stop_collector = Shutdown::new();
        let task = tokio::spawn(flowlens_collector::run(
            self.collector.clone(),
            stop_collector.clone(),
        ));
        self.started(Collector::Task(task), stop_collector).await
    }

    /// Starts the enricher and the sink in-process and the collector as its binary
    /// ([`CollectorProcess`]), and gives them time to join their groups and attach.
    pub async fn start_with_collector_binary(self) -> RunningPipeline {
        let process = CollectorProcess::spawn(&self.collector);
        self.started(Collector::Process(process), Shutdown::new())
            .await
    }

    async fn started(self, mut collector: Collector, stop_collector: Shutdown) -> RunningPipeline {
        let stop_pipeline = Shutdown::new();
        let sink = tokio::spawn(flowlens_sink::run(self.sink, stop_pipeline.clone()));
        let enricher = tokio::spawn(flowlens_enricher::run(self.enricher, stop_pipeline.clone()));
        let (brokers, interfaces) = (
            self.collector.kafka.brokers.join(","),
            self.collector.kafka.topics.interfaces.clone(),
        );
        // The collector publishes its interfaces once its programs are attached (loading and
        // verifying them can take seconds on a busy machine): traffic may start after that.
        let published = tokio::task::spawn_blocking(move || {
            read_topic(&brokers, &interfaces, 2, Duration::from_secs(60))
        })
        .await
        .unwrap();
        let running = match &mut collector {
            Collector::Task(task) => !task.is_finished(),
            Collector::Process(p) => p.child.try_wait().unwrap().is_none(),
        };
        let log = match &collector {
            Collector::Process(p) => p.log(),
            Collector::Task(_) => String::new(),
        };
        assert!(
            published.len() >= 2,
            "the collector published no interfaces\n{log}"
        );
        assert!(running, "collector stopped early\n{log}");
        // The consumer groups of the enricher and the sink have joined meanwhile.
        tokio::time::sleep(Duration::from_secs(1)).await;
        RunningPipeline {
            stop_pipeline,
            stop_collector,
            sink,
            enricher,
            collector: Some(collector),
        }
    }
}

impl RunningPipeline {
    /// Stops the collector: it drains the kernel table once more and flushes before returning.
    pub async fn stop_collector(&mut self) {
        match self.collector.take() {
            Some(Collector::Task(task)) => {
                self.stop_collector.trigger();
                task.await.unwrap().expect("collector exits cleanly");
            }
            Some(Collector::Process(p)) => {
                tokio::task::spawn_blocking(move || p.stop()).await.unwrap()
            }
            None => {}
        }
    }

    /// The collector binary of [`Pipeline::start_with_collector_binary`] while it runs.
    pub fn collector_process(&self) -> &CollectorProcess {
        match &self.collector {
            Some(Collector::Process(p)) => p,
            _ => panic!("the collector is not running as a binary"),
        }
    }

    /// Stops every stage and checks each exited cleanly.
    pub async fn stop(mut self) {
        self.stop_collector().await;
        self.stop_pipeline.trigger();
        self.enricher
            .await
            .unwrap()
            .expect("enricher exits cleanly");
        self.sink.await.unwrap().expect("sink exits cleanly");
    }
}
