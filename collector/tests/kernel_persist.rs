//! `collector.pin_path` through the real `flowlens-collector` binary (eBPF on a veth between two
//! namespaces, tansu, a bpf filesystem mounted for the test): during 40 UDP conversations
//! (20,000 datagrams and 20,000 answers, and 3,000 one-datagram flows that overflow the table)
//! the collector is SIGKILLed three times between two scans and stopped once with SIGTERM (an
//! upgrade), each time started again after a random pause; the records it published add up, per
//! conversation and direction, to exactly what the sockets sent and received (none lost while
//! no collector ran, none twice). With no collector running the pinned programs go on counting
//! into the pinned table. A collector with another `table_size` discards that table (warning
//! and metric), removes a link pin of an interface it does not watch, refuses a second collector
//! on its directory and counts a second transfer exactly; removing the pin directory detaches
//! the programs. A `pin_path` outside a bpf filesystem stops the binary at start (exit 2).

mod common;

use std::net::{IpAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::require_root;
use flowlens_schemas::{decode, Direction, RawFlow};
use flowlens_testkit::{
    free_port, http, in_netns, read_topic, unique, wait_probe, ChildGuard, NetnsPair, Tansu,
};
use rdkafka::Message;

const PAYLOAD: usize = 100;
/// Ethernet + IPv4 + UDP headers and the payload.
const FRAME: u64 = 14 + 20 + 8 + PAYLOAD as u64;
const ANSWER: usize = 40;
const ANSWER_FRAME: u64 = 14 + 20 + 8 + ANSWER as u64;

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
        cmd.arg("-c").arg(&file).env_remove("RUST_LOG");
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

    /// Waits until the collector has published a scan's records.
    fn wait_for_a_scan(&self) {
        let series = "flowlens_collector_records_produced_total";
        let before = self.metric(series);
        let start = Instant::now();
        while self.metric(series) == before {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no scan published"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
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

/// `rounds` rounds of one datagram of `PAYLOAD` bytes on each of `flows` flows from A to
/// B:`port`, each answered by B with `ANSWER` bytes, and of `one_shots` flows of a single
/// datagram from a new socket to B:`port + 10`; every datagram and answer is received before
/// the next round, `pace` after it. `rounds_done` counts the rounds. Returns the conversations'
/// source ports.
fn conversations(
    pair: &NetnsPair,
    flows: usize,
    one_shots: usize,
    rounds: u64,
    port: u16,
    pace: Duration,
    rounds_done: &AtomicU64,
) -> Vec<u16> {
    let rx = in_netns(&pair.ns_b, || UdpSocket::bind((pair.ip_b, port)).unwrap());
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let rx_one = in_netns(&pair.ns_b, || {
        UdpSocket::bind((pair.ip_b, port + 10)).unwrap()
    });
    rx_one
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let tx: Vec<UdpSocket> = (0..flows)
        .map(|_| {
            let s = in_netns(&pair.ns_a, || UdpSocket::bind((pair.ip_a, 0)).unwrap());
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s
        })
        .collect();
    let mut buf = [0u8; PAYLOAD + 1];
    for round in 1..=rounds {
        for t in &tx {
            t.send_to(&[5u8; PAYLOAD], (pair.ip_b, port)).unwrap();
        }
        for _ in 0..flows {
            let (len, from) = rx.recv_from(&mut buf).expect("every datagram arrives");
            assert_eq!(len, PAYLOAD);
            rx.send_to(&[6u8; ANSWER], from).unwrap();
        }
        for t in &tx {
            let (len, _) = t.recv_from(&mut buf).expect("every answer arrives");
            assert_eq!(len, ANSWER);
        }
        for _ in 0..one_shots {
            let t = in_netns(&pair.ns_a, || UdpSocket::bind((pair.ip_a, 0)).unwrap());
            t.send_to(&[7u8; PAYLOAD], (pair.ip_b, port + 10)).unwrap();
        }
        for _ in 0..one_shots {
            let (len, _) = rx_one.recv_from(&mut buf).expect("every datagram arrives");
            assert_eq!(len, PAYLOAD);
        }
        rounds_done.store(round, Ordering::Relaxed);
        std::thread::sleep(pace);
    }
    tx.iter().map(|t| t.local_addr().unwrap().port()).collect()
}

/// A small pseudo-random number in [0, n) from the clock.
fn random_below(n: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    nanos.wrapping_mul(0x9E37_79B9_7F4A_7C15) % n
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

/// The maps of a pinned table, held by the test: slots and overflow entries.
struct PinnedTable {
    slots: aya::maps::Array<aya::maps::MapData, [u64; 16]>,
    overflow: aya::maps::PerCpuHashMap<aya::maps::MapData, [u8; 8], [u64; 5]>,
}

impl PinnedTable {
    fn open(pins: &Path) -> Self {
        let map = |name: &str| aya::maps::MapData::from_pin(pins.join(name)).unwrap();
        Self {
            slots: aya::maps::Array::try_from(aya::maps::Map::Array(map("FLOW_SLOTS"))).unwrap(),
            overflow: aya::maps::PerCpuHashMap::try_from(aya::maps::Map::PerCpuHashMap(map(
                "FLOW_OVERFLOW",
            )))
            .unwrap(),
        }
    }

    /// Packets counted in every slot and overflow entry.
    fn packets(&self) -> u64 {
        let slots: u64 = (0..self.slots.len())
            .map(|i| {
                let s = self.slots.get(&i, 0).unwrap();
                // FlowSlot: packets at byte 56, shared_packets at byte 96.
                s[7] + s[12]
            })
            .sum();
        let overflow: u64 = self
            .overflow
            .iter()
            .map(|e| e.unwrap().1.iter().map(|v| v[0]).sum::<u64>())
            .sum();
        slots + overflow
    }
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
            "[collector]\ninterfaces = [\"{}\"]\nnetns = \"{}\"\nscan_interval_ms = 500\n\
             table_size = {table_size}\nsocket_metrics = false\npin_path = \"{}\"\n\
             [kafka]\nbrokers = [\"{}\"]\npartitions = 1\n\
             [kafka.topics]\nraw_flows = \"{topic}\"\ninterfaces = \"{topic}-ifaces\"\n",
            pair.if_a,
            pair.ns_a,
            pins.display(),
            tansu.broker()
        )
    };

    // 0. A pin_path that is not on a bpf filesystem stops the binary at start, naming the key.
    {
        let not_bpffs = config(1024).replace(&pins.display().to_string(), "/tmp/flowlens-pins");
        let file = dir.path().join("collector-bad.toml");
        std::fs::write(&file, not_bpffs).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_flowlens-collector"))
            .arg("--config")
            .arg(&file)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{said}");
        assert!(said.contains("collector.pin_path"), "{said}");
    }

    // 1. 40 conversations of 500 datagrams and 500 answers each over about 10 s; the collector
    //    is SIGKILLed three times between two scans, then stopped with SIGTERM once, each time
    //    started again after a random pause.
    let mut collector = Collector::start(dir.path(), 0, &config(1024));
    assert_eq!(
        collector.metric("flowlens_collector_pinned_table_total{outcome=\"created\"}"),
        Some(1.0)
    );
    const FLOWS: usize = 40;
    const ROUNDS: u64 = 500;
    /// One-datagram flows per round: 3,000 in all, more than the 1,024-slot table holds.
    const ONE_SHOTS: usize = 6;
    let progress = Arc::new(AtomicU64::new(0));
    let traffic = {
        let (pair, progress) = (pair.clone(), progress.clone());
        std::thread::spawn(move || {
            conversations(
                &pair,
                FLOWS,
                ONE_SHOTS,
                ROUNDS,
                7400,
                Duration::from_millis(20),
                &progress,
            )
        })
    };
    for n in 1..=4u64 {
        let at = ROUNDS * (n * 20 + random_below(10)) / 100;
        while progress.load(Ordering::Relaxed) < at {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Between two scans: a kill while a scan's records are in flight repeats them (the
        // at-least-once window, ARCHITECTURE.md).
        collector.wait_for_a_scan();
        std::thread::sleep(Duration::from_millis(100 + random_below(100)));
        let killed_at = progress.load(Ordering::Relaxed);
        let killed = Instant::now();
        // The fourth stop is an upgrade's: SIGTERM (a last scan, the table left pinned).
        let signal = if n < 4 { libc::SIGKILL } else { libc::SIGTERM };
        assert!(collector.guard.stop_with(signal, Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(random_below(1_000)));
        collector = Collector::start(dir.path(), n as usize, &config(1024));
        let gap = killed.elapsed();
        let during = progress.load(Ordering::Relaxed) - killed_at;
        eprintln!(
            "{} {n}: after round {killed_at}, a collector ready again {gap:?} later, \
             {during} rounds ({} datagrams each way) meanwhile",
            if n < 4 { "SIGKILL" } else { "SIGTERM" },
            during * FLOWS as u64
        );
        assert_eq!(
            collector.metric("flowlens_collector_pinned_table_total{outcome=\"adopted\"}"),
            Some(1.0),
            "{}",
            collector.log()
        );
    }
    let sports = traffic.join().unwrap();
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
    let totals = common::totals(&records);
    let (mut sent, mut answered) = ((0, 0), (0, 0));
    for sport in &sports {
        let id = |egress, src, sp, dst, dp| {
            (egress, 17u8, IpAddr::V4(src), sp, IpAddr::V4(dst), dp, 0u8)
        };
        let ab = totals
            .get(&id(true, pair.ip_a, *sport, pair.ip_b, 7400))
            .copied()
            .unwrap_or_default();
        let ba = totals
            .get(&id(false, pair.ip_b, 7400, pair.ip_a, *sport))
            .copied()
            .unwrap_or_default();
        assert_eq!(
            (ab.packets, ab.bytes, ba.packets, ba.bytes),
            (ROUNDS, ROUNDS * FRAME, ROUNDS, ROUNDS * ANSWER_FRAME),
            "conversation from port {sport}"
        );
        sent = (sent.0 + ab.packets, sent.1 + ab.bytes);
        answered = (answered.0 + ba.packets, answered.1 + ba.bytes);
    }
    assert!(records
        .iter()
        .filter(|f| f.dst_port == 7400)
        .all(|f| f.src_ip() == IpAddr::V4(pair.ip_a) && !f.duplicate));
    // The one-datagram flows: in records of their own or, once the table is full, in the
    // interface's overflow record (IPv4, egress), itself carried across the restarts.
    let one_shots = ROUNDS * ONE_SHOTS as u64;
    let of = |keep: &dyn Fn(&RawFlow) -> bool| {
        records
            .iter()
            .filter(|f| keep(f))
            .fold((0u64, 0u64), |(p, b), f| {
                (p + f.packets as u64, b + f.bytes as u64)
            })
    };
    let own = of(&|f| f.dst_port == 7410);
    let overflow = of(&|f| f.proto == 0 && f.etype == 0x0800 && f.direction == Direction::Egress);
    eprintln!(
        "{one_shots} one-datagram flows: {} packets in records of their own, {} in overflow records",
        own.0, overflow.0
    );
    assert!(overflow.0 > 0, "the table never filled");
    assert_eq!(
        (own.0 + overflow.0, own.1 + overflow.1),
        (one_shots, one_shots * FRAME)
    );
    eprintln!(
        "sent {} datagrams and {} answers; in {} records: {} packets / {} bytes and {} packets / {} bytes",
        ROUNDS * FLOWS as u64,
        ROUNDS * FLOWS as u64,
        records.iter().filter(|f| f.dst_port == 7400).count(),
        sent.0,
        sent.1,
        answered.0,
        answered.1
    );

    // 2. With no collector running the pinned programs go on counting into the pinned table.
    let table = PinnedTable::open(&pins);
    let before = table.packets();
    let unwatched = AtomicU64::new(0);
    transfer(&pair, 500, 7401, Duration::ZERO, &unwatched);
    assert_eq!(table.packets() - before, 500, "counted with no collector");

    // 3. Another table size: the pinned table (with those 500 packets) is discarded, with a
    //    warning and the metric; the new table counts a transfer exactly. A link pinned for an
    //    interface it does not watch (any object under links/) is removed; a second collector
    //    on the same directory is refused.
    let stale = pins.join("links").join("999-ingress");
    aya::maps::MapData::from_pin(pins.join("TABLE_META"))
        .unwrap()
        .pin(&stale)
        .unwrap();
    let collector = Collector::start(dir.path(), 3, &config(2048));
    assert!(!stale.exists(), "a stale link pin is removed at start");
    {
        let file = dir.path().join("collector-second.toml");
        std::fs::write(&file, config(2048)).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_flowlens-collector"))
            .arg("--config")
            .arg(&file)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{log}");
        assert!(log.contains("in use by another collector"), "{log}");
    }
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
    assert!(
        !records.iter().any(|f| f.dst_port == 7401),
        "nothing of the discarded table"
    );

    // 4. Removing the pin directory detaches the programs: the (new) table counts no more.
    let table = PinnedTable::open(&pins);
    std::fs::remove_dir_all(&pins).unwrap();
    // The kernel releases an unpinned object after an RCU grace period: wait for a quiet table.
    let start = Instant::now();
    loop {
        let before = table.packets();
        transfer(&pair, 10, 7403, Duration::ZERO, &unwatched);
        if table.packets() == before {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still counting 10 s after removal"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = table.packets();
    transfer(&pair, 500, 7404, Duration::ZERO, &unwatched);
    assert_eq!(table.packets(), before, "still counting after removal");
}
