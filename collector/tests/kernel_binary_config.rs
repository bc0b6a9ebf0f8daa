//! Configuration keys through the real `flowlens-collector` binary (eBPF on a veth between two
//! namespaces, tansu), each checked by what it published or what the kernel counted:
//! `collector.host` on every record; `filter.ports` / `protocols` / `cidrs`: only UDP to or
//! from port 7301 inside the pair's network (UDP to 7302 and pings leave nothing);
//! `sampling = 2`: records carry `sampling_rate = 2`; `bidirectional = false`: answers are
//! records of their own (`reverse_*` 0, the answer's direction ingress); `table_size = 1024`:
//! 3,000 flows overflow the kernel table (its `table_full` counter on `/metrics`, and the
//! interface's overflow record);
//! `idle_timeout_ms = 4000`: quiet flows leave the kernel table within seconds (its occupancy
//! on `/metrics`); `closed_timeout_ms = 2000`: a TCP connection refused (SYN, RST) is exported
//! with end reason "rst" about 2 s after the refusal (librdkafka's timestamp on the record;
//! the default would take 1 s, the idle timeout 4 s); `max_in_flight = 64`: no Produce
//! request on the wire carries more records (and every record is delivered);
//! `socket_metrics = false`: no record of kernel drops (those come from a
//! host-wide tracepoint the packet filters do not see); `socket_table_size` /
//! `drop_table_size`: the kernel's sizes of the collector's socket maps (their ids from
//! /proc/PID/fdinfo, their names and sizes from the kernel); `interface_refresh_ms = 200`: the
//! interfaces are re-read from inside the namespace five times a second (inotify counts the
//! opens of its /var/run/netns file); `kafka.client_id`: the collector's Produce requests
//! carry it (a relay in front of the broker keeps them), and so do `kafka.properties`
//! (`client.software.name` in librdkafka's ApiVersions requests) and `kafka.partitions` +
//! `replication_factor` (the CreateTopics request); `telemetry.log_format = "json"`:
//! every log line is JSON.

mod common;

use std::net::{TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::require_root;
use flowlens_schemas::{decode, Direction, RawFlow};
use flowlens_testkit::{
    free_port, http, in_netns, read_topic, unique, wait_probe, ChildGuard, NetnsPair, Tansu,
};
use rdkafka::{Message, Timestamp};

/// (name, max_entries) of every BPF map process `pid` holds a descriptor of.
fn maps_of(pid: u32) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).unwrap() {
        let info = std::fs::read_to_string(fd.unwrap().path()).unwrap_or_default();
        let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix("map_id:"))
            .and_then(|v| v.trim().parse::<u32>().ok())
        else {
            continue;
        };
        let map = aya::maps::MapInfo::from_id(id).unwrap();
        out.push((
            map.name_as_str().unwrap_or("").to_owned(),
            map.max_entries(),
        ));
    }
    out
}

/// Counts the opens of `path` (inotify) until `stop` is set.
fn count_opens(
    path: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        use std::sync::atomic::Ordering;
        // SAFETY: plain syscalls on a descriptor owned here.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0);
        let c = std::ffi::CString::new(path).unwrap();
        assert!(unsafe { libc::inotify_add_watch(fd, c.as_ptr(), libc::IN_OPEN) } >= 0);
        let mut opens = 0;
        let mut buf = [0u8; 4096];
        // Read often: an event identical to the unread one before it is merged into it.
        while !stop.load(Ordering::Relaxed) {
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                opens += n as usize / std::mem::size_of::<libc::inotify_event>();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        unsafe { libc::close(fd) };
        opens
    })
}

#[test]
fn filter_sampling_direction_table_and_log_keys_take_effect() {
    require_root();
    let pair = NetnsPair::new("k");
    let (tansu, wire) = Tansu::start_behind_relay();
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
             max_in_flight = 64\nsampling = 2\nsocket_metrics = false\nidle_timeout_ms = 4000\n\
             closed_timeout_ms = 2000\nsocket_table_size = 4099\ndrop_table_size = 1031\n\
             interface_refresh_ms = 200\n\
             [collector.filter]\ncidrs = [\"{net}\"]\nports = [7301]\nprotocols = [\"udp\", \"tcp\"]\n\
             [kafka]\nbrokers = [\"{}\"]\nclient_id = \"keys-collector\"\npartitions = 1\n\
             replication_factor = 2\n\
             [kafka.properties]\n\"client.software.name\" = \"keys-props\"\n\
             [kafka.topics]\nraw_flows = \"{topic}\"\ninterfaces = \"{topic}-ifaces\"\n\
             [telemetry]\nmetrics_listen = \"127.0.0.1:{metrics}\"\nlog_format = \"json\"\n",
            pair.if_a,
            pair.ns_a,
            wire.address()
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
    let maps = maps_of(collector.id());
    for (name, size) in [
        ("SOCK_TCP", 4099),
        ("SOCK_OWNERS", 4099),
        ("SOCK_DROPS", 1031),
    ] {
        assert!(
            maps.contains(&(name.to_owned(), size)),
            "no map {name} of {size} entries: {maps:?}"
        );
    }

    // TCP connections refused (SYN, RST): conversations ended by RST. At 1:2 sampling a
    // conversation whose RST was not sampled has no end; 12 make one with an RST certain.
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let first_refused_ms = now_ms();
    for _ in 0..12 {
        let refused = in_netns(&pair.ns_a, || TcpStream::connect((pair.ip_b, 7301)));
        assert!(refused.is_err(), "nothing listens on TCP 7301");
    }
    let last_refused_ms = now_ms();

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
    // From here on the test enters no namespace: the opens of ns_a's file are the collector's.
    let stop_counting = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let counting = std::time::Instant::now();
    let opens = count_opens(
        format!("/var/run/netns/{}", pair.ns_a),
        stop_counting.clone(),
    );
    // Quiet flows leave the kernel table after idle_timeout_ms (4 s; the default keeps them
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
            start.elapsed() < Duration::from_secs(12),
            "table still holds {entries:?} entries"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    stop_counting.store(true, std::sync::atomic::Ordering::Relaxed);
    let (opens, counted) = (opens.join().unwrap(), counting.elapsed());
    // One re-read per 200 ms (the default: one per 10 s); half of them is plenty of margin.
    let expected = counted.as_millis() as usize / 200;
    eprintln!("{opens} namespace opens in {counted:?}");
    assert!(
        opens >= expected / 2,
        "{opens} re-reads of the namespace's interfaces in {counted:?}"
    );
    assert!(collector.stop_with(libc::SIGTERM, Duration::from_secs(60)));

    let messages = read_topic(&tansu.broker(), &topic, 1, Duration::from_secs(30));
    let records: Vec<RawFlow> = messages
        .iter()
        .map(|m| decode(m.payload().unwrap()).unwrap())
        .collect();
    assert!(records.len() > 100, "{} records", records.len());
    // The refused connection leaves the table closed_timeout_ms after its RST.
    let rst: Vec<i64> = messages
        .iter()
        .filter_map(|m| {
            let f: RawFlow = decode(m.payload().unwrap()).unwrap();
            (f.proto == 6 && f.end_reason == "rst").then(|| match m.timestamp() {
                Timestamp::CreateTime(ms) => ms,
                other => panic!("{other:?}"),
            })
        })
        .collect();
    assert!(!rst.is_empty(), "no record of a refused TCP connection");
    let (earliest, latest) = (
        rst.iter().min().unwrap() - last_refused_ms,
        rst.iter().max().unwrap() - first_refused_ms,
    );
    eprintln!("refused connections exported {earliest}..{latest} ms after their RSTs");
    assert!(
        earliest >= 1_900 && latest < 3_800,
        "refused connections exported {earliest}..{latest} ms after their RSTs"
    );
    // Packets of flows that found no room in the full table are counted in the interface's
    // overflow record (unspecified addresses, protocol 0): present, and the only other kind.
    let (overflow, records): (Vec<RawFlow>, Vec<RawFlow>) = records
        .into_iter()
        .filter(|f| f.proto != 6)
        .partition(|f| f.proto == 0);
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

    // kafka.client_id on the wire: the collector's records come in requests that carry it.
    let produced = wire
        .kafka_requests()
        .iter()
        .filter(|r| r.api_key == 0)
        .map(|r| r.client_id.clone())
        .collect::<std::collections::BTreeSet<_>>();
    assert_eq!(
        produced,
        [Some("keys-collector".to_owned())].into(),
        "Produce requests' client ids"
    );
    // max_in_flight = 64: never more records in the producer than that, so no Produce request
    // carries more (the default sends the scans of this flood in requests of hundreds).
    let sizes = wire.records_per_produce("keys-collector");
    assert!(sizes.iter().sum::<usize>() >= messages.len(), "{sizes:?}");
    assert!(
        sizes.iter().all(|&n| n <= 64),
        "records per Produce request: {sizes:?}"
    );
    eprintln!("records per Produce request: {sizes:?}");
    // kafka.properties reach librdkafka: its ApiVersions requests name the software so.
    let requests = wire.kafka_requests();
    let versions = requests
        .iter()
        .filter(|r| r.api_key == 18 && r.client_id.as_deref() == Some("keys-collector"));
    assert!(versions.clone().count() > 0);
    assert!(
        versions
            .clone()
            .all(|r| r.rest.windows(10).any(|w| w == b"keys-props")),
        "an ApiVersions request without kafka.properties' client.software.name"
    );
    // kafka.partitions + replication_factor: what the CreateTopics request asked for.
    let created = wire.created_topics();
    for name in [topic.clone(), format!("{topic}-ifaces")] {
        assert!(created.contains(&(name, 1, 2)), "{created:?}");
    }

    let logged = std::fs::read_to_string(&log).unwrap();
    for line in logged.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
}
