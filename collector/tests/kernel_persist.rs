//! `collector.pin_path` through the real `flowlens-collector` binary (eBPF on a veth between two
//! namespaces, tansu, a bpf filesystem mounted for the test): the collector is SIGKILLed twice in
//! the middle of a known UDP transfer and started again; the records it published add up to
//! exactly the datagrams the receiving socket got (none lost while no collector ran, none
//! twice). Then a collector with another `table_size` discards the pinned table (warning and
//! metric) and counts a second transfer exactly; with no collector running the pinned
//! programs go on counting into the pinned table, and removing the pin directory detaches them.

mod common;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::require_root;
use flowlens_runtime::testkit::{
    free_port, http, in_netns, read_topic, unique, wait_probe, ChildGuard, NetnsPair, Tansu,
};
use flowlens_schemas::{decode, Direction, RawFlow};
use rdkafka::Message;

const PAYLOAD: usize = 100;
/// Ethernet + IPv4 + UDP headers and the payload.
const FRAME: u64 = 14 + 20 + 8 + PAYLOAD as u64;

/// A bpf filesystem of the test's own, unmounted on drop.
struct BpfFs(tempfile::TempDir);

impl BpfFs {
    fn mount() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount -t bpf");
        Self(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// One collector binary run with its config file, log and metrics port.
struct Collector {
    guard: ChildGuard,
    log: PathBuf,
    metrics: u16,
}

impl Collector {
    fn start(dir: &Path, n: usize, config: &str) -> Self {
        let metrics = free_port();
        let file = dir.join(format!("collector-{n}.toml"));
        std::fs::write(
            &file,
            format!("{config}[telemetry]\nmetrics_listen = \"127.0.0.1:{metrics}\"\n"),
        )
        .unwrap();
        let log = dir.join(format!("collector-{n}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowlens-collector"));
        cmd.arg("--config").arg(&file).env_remove("RUST_LOG");
        let guard = ChildGuard::spawn("flowlens-collector", &mut cmd, &log);
        let c = Self {
            guard,
            log,
            metrics,
        };
        wait_probe(metrics, "/readyz", 200, "ready", Duration::from_secs(90));
        c
    }

    fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = http(self.metrics, "GET", "/metrics", "");
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Sends `n` datagrams of `PAYLOAD` bytes from A to B:`port` on one flow, in bursts of 100
/// every `pace`, each burst received in full before the next; `sent` counts the datagrams
/// received so far. Returns the source port.
fn transfer(pair: &NetnsPair, n: u64, port: u16, pace: Duration, sent: &AtomicU64) -> u16 {
    let rx = in_netns(&pair.ns_b, || UdpSocket::bind((pair.ip_b, port)).unwrap());
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let tx = in_netns(&pair.ns_a, || UdpSocket::bind((pair.ip_a, 0)).unwrap());
    let mut buf = [0u8; PAYLOAD + 1];
    let mut done = 0;
    while done < n {
        let burst = (n - done).min(100);
        for _ in 0..burst {
            tx.send_to(&[5u8; PAYLOAD], (pair.ip_b, port)).unwrap();
        }
        for _ in 0..burst {
            let (len, _) = rx.recv_from(&mut buf).expect("every datagram arrives");
            assert_eq!(len, PAYLOAD);
            done += 1;
            sent.store(done, Ordering::Relaxed);
        }
        std::thread::sleep(pace);
    }
    tx.local_addr().unwrap().port()
}

/// Packets and bytes of the A->B flow from source port `sport` to `port` over `records`.
fn flow_total(records: &[RawFlow], sport: u16, port: u16) -> (u64, u64, usize) {
    let mine: Vec<&RawFlow> = records
        .iter()
        .filter(|f| f.proto == 17 && f.src_port as u16 == sport && f.dst_port as u16 == port)
        .collect();
    for f in &mine {
        assert_eq!(f.direction, Direction::Egress, "{f:?}");
        assert!(!f.duplicate, "{f:?}");
    }
    (
        mine.iter().map(|f| f.packets as u64).sum(),
        mine.iter().map(|f| f.bytes as u64).sum(),
        mine.len(),
    )
}

/// Packets counted in every slot of the pinned table `slots` (its own handle on the map).
fn slot_packets(slots: &aya::maps::Array<aya::maps::MapData, [u64; 16]>) -> u64 {
    (0..slots.len())
        .map(|i| {
            let s = slots.get(&i, 0).unwrap();
            // FlowSlot: packets at byte 56, shared_packets at byte 96.
            s[7] + s[12]
        })
        .sum()
}

#[test]
fn a_killed_collector_loses_no_packet_and_another_layout_starts_over() {
    require_root();
    let pair = Arc::new(NetnsPair::new("pin"));
    let tansu = Tansu::start();
    let fs = BpfFs::mount();
    let pins = fs.path().join("flowlens").join("node-a");
    let topic = unique("raw");
    let dir = tempfile::tempdir().unwrap();
    let config = |table_size: u32| {
        format!(
            "[collector]\ninterfaces = [\"{}\"]\nnetns = \"{}\"\nscan_interval_ms = 200\n\
             table_size = {table_size}\nsocket_metrics = false\npin_path = \"{}\"\n\
             [kafka]\nbrokers = [\"{}\"]\npartitions = 1\n\
             [kafka.topics]\nraw_flows = \"{topic}\"\ninterfaces = \"{topic}-ifaces\"\n",
            pair.if_a,
            pair.ns_a,
            pins.display(),
            tansu.broker()
        )
    };

    // 1. 20,000 datagrams over about 5 s; the collector is SIGKILLed at 30 % and at 65 % and
    //    started again 0.5 s after each kill.
    let mut collector = Collector::start(dir.path(), 0, &config(1024));
    assert_eq!(
        collector.metric("flowlens_collector_pinned_table_total{outcome=\"created\"}"),
        Some(1.0)
    );
    const N: u64 = 20_000;
    let progress = Arc::new(AtomicU64::new(0));
    let traffic = {
        let (pair, progress) = (pair.clone(), progress.clone());
        std::thread::spawn(move || transfer(&pair, N, 7400, Duration::from_millis(25), &progress))
    };
    let mut gaps = Vec::new();
    for (n, at) in [(1, N * 30 / 100), (2, N * 65 / 100)] {
        while progress.load(Ordering::Relaxed) < at {
            std::thread::sleep(Duration::from_millis(5));
        }
        let killed_at = progress.load(Ordering::Relaxed);
        let killed = Instant::now();
        assert!(collector.guard.stop_with(libc::SIGKILL, Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(500));
        collector = Collector::start(dir.path(), n, &config(1024));
        let gap = killed.elapsed();
        let during = progress.load(Ordering::Relaxed) - killed_at;
        eprintln!(
            "kill {n}: at datagram {killed_at}, a collector ready again {gap:?} later, \
             {during} datagrams received meanwhile"
        );
        assert!(during > 0, "traffic went on while no collector ran");
        gaps.push((gap, during));
        assert_eq!(
            collector.metric("flowlens_collector_pinned_table_total{outcome=\"adopted\"}"),
            Some(1.0),
            "{}",
            collector.log()
        );
    }
    let sport = traffic.join().unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    // SIGTERM: one last scan; the table stays pinned.
    assert!(collector
        .guard
        .stop_with(libc::SIGTERM, Duration::from_secs(60)));
    assert!(
        collector.log().contains("stay pinned"),
        "{}",
        collector.log()
    );
    let records: Vec<RawFlow> = read_topic(&tansu.broker(), &topic, 3, Duration::from_secs(30))
        .iter()
        .map(|m| decode(m.payload().unwrap()).unwrap())
        .collect();
    let (packets, bytes, n_records) = flow_total(&records, sport, 7400);
    eprintln!(
        "datagrams received: {N}; packets in {n_records} records: {packets}, bytes {bytes} \
         (expected {})",
        N * FRAME
    );
    assert_eq!((packets, bytes), (N, N * FRAME));

    // 2. With no collector running the pinned programs go on counting into the pinned table.
    let slots_map = aya::maps::MapData::from_pin(pins.join("FLOW_SLOTS")).unwrap();
    let slots: aya::maps::Array<_, [u64; 16]> =
        aya::maps::Array::try_from(aya::maps::Map::Array(slots_map)).unwrap();
    let before = slot_packets(&slots);
    let unwatched = AtomicU64::new(0);
    transfer(&pair, 500, 7401, Duration::ZERO, &unwatched);
    assert_eq!(slot_packets(&slots) - before, 500, "counted with no collector");

    // 3. Another table size: the pinned table (with those 500 packets) is discarded, with a
    //    warning and the metric; the new table counts a transfer exactly.
    let collector = Collector::start(dir.path(), 3, &config(2048));
    assert_eq!(
        collector.metric("flowlens_collector_pinned_table_total{outcome=\"discarded\"}"),
        Some(1.0)
    );
    assert!(
        collector.log().contains("pinned flow table discarded")
            && collector.log().contains("table_size changed"),
        "{}",
        collector.log()
    );
    let second = AtomicU64::new(0);
    let sport2 = transfer(&pair, 3_000, 7402, Duration::from_millis(5), &second);
    std::thread::sleep(Duration::from_millis(1000));
    let mut collector = collector;
    assert!(collector
        .guard
        .stop_with(libc::SIGTERM, Duration::from_secs(60)));
    let records: Vec<RawFlow> = read_topic(&tansu.broker(), &topic, 3, Duration::from_secs(30))
        .iter()
        .map(|m| decode(m.payload().unwrap()).unwrap())
        .collect();
    let (packets, bytes, _) = flow_total(&records, sport2, 7402);
    assert_eq!((packets, bytes), (3_000, 3_000 * FRAME));
    assert_eq!(
        flow_total(&records, 0, 7401).0,
        0,
        "nothing of the discarded table"
    );

    // 4. Removing the pin directory detaches the programs: the (new) table counts no more.
    let slots_map = aya::maps::MapData::from_pin(pins.join("FLOW_SLOTS")).unwrap();
    let slots: aya::maps::Array<_, [u64; 16]> =
        aya::maps::Array::try_from(aya::maps::Map::Array(slots_map)).unwrap();
    std::fs::remove_dir_all(&pins).unwrap();
    let before = slot_packets(&slots);
    transfer(&pair, 500, 7403, Duration::ZERO, &unwatched);
    assert_eq!(slot_packets(&slots), before, "still counting after removal");
}
