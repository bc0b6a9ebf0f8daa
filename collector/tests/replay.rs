//! The oracle suite: captures of every traffic shape flowlens says it parses
//! (`tests/captures/*.pcap`, written by `make_captures.py`) are replayed with tcpreplay onto a
//! veth between two namespaces, so every frame, both directions of every conversation, arrives
//! as ingress on the watched interface, exactly as on a mirror (SPAN/TAP) port. The collector
//! binary, the enricher and the sink carry them through tansu into ClickHouse (26.9, chdb).
//!
//! What ClickHouse must hold is computed from tshark's dissection of the same files
//! (`replay/tshark.rs`) with flowlens' documented counting rules applied to it
//! (`replay/expect.rs`), never from flowlens' own parser: every conversation row (ends,
//! VLAN, ports or ICMP type, tunnel, direction, duplicate flag) with its exact packets, L2
//! bytes and TCP flags each way, the non-duplicate totals, and the collector's kernel counters of malformed,
//! non-IP and unmatched-fragment frames (on its /metrics endpoint). The veth's own receive
//! counter proves every replayed frame reached the interface.

mod common;
#[path = "replay/expect.rs"]
mod expect;
#[path = "replay/tshark.rs"]
mod tshark;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{require_root, Pipeline};
use expect::{Counts, Expected, Row};
use flowlens_testkit::{http, unique, Chdb, NetnsPair, Tansu};

/// The captures, one traffic shape each, in replay order.
const CAPTURES: &[&str] = &[
    "mirror.pcap",
    "vlan.pcap",
    "ipv4_fragments.pcap",
    "ipv6_extension_headers.pcap",
    "sctp.pcap",
    "icmp.pcap",
    "tunnels.pcap",
    "ipv6_in_ipv4_and_udp.pcap",
    "malformed.pcap",
];

fn captures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/captures")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_captures_reach_clickhouse_as_tshark_counts_them() {
    require_root();
    for tool in ["tshark", "tcpreplay", "taskset"] {
        let found = Command::new(tool).arg("--version").output().is_ok();
        assert!(found, "{tool} is missing: run scripts/setup.sh");
    }
    let started = Instant::now();

    let mut expected = Expected::default();
    let mut shapes = Vec::new();
    for name in CAPTURES {
        let frames = tshark::frames(&captures().join(name));
        expected.add(&frames);
        shapes.push((*name, frames.len() as u64));
    }
    let frames: u64 = shapes.iter().map(|(_, n)| n).sum();

    let broker = Tansu::start();
    let clickhouse = Chdb::start();
    let pair = Arc::new(NetnsPair::new("y"));
    // No IPv6 on the link: the namespaces' own neighbour discovery stays off the interface.
    for (ns, ifname) in [(&pair.ns_a, &pair.if_a), (&pair.ns_b, &pair.if_b)] {
        let key = format!("net.ipv6.conf.{ifname}.disable_ipv6=1");
        NetnsPair::exec(ns, &["sysctl", "-qw", &key]);
    }
    let host = unique("replay-host");
    let mut pipeline = Pipeline::new(&broker.broker(), &clickhouse.url(), &pair, &host)
        .start_with_collector_binary()
        .await;

    let received_before = rx_packets(&pair);
    let p = pair.clone();
    tokio::task::spawn_blocking(move || {
        for name in CAPTURES {
            replay(&p, &captures().join(name));
        }
    })
    .await
    .unwrap();
    assert_eq!(
        rx_packets(&pair) - received_before,
        frames,
        "frames received by {} (its kernel counter) vs frames replayed",
        pair.if_a
    );

    // Kernel counters, as the collector exports them after its next scans.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let collector = pipeline.collector_process();
    for (reason, want) in [
        ("malformed", expected.malformed),
        ("non_ip", expected.non_ip),
        ("fragment_unmatched", expected.fragment_unmatched),
    ] {
        let got = collector.metric(
            "flowlens_collector_kernel_packets_total",
            &format!("reason=\"{reason}\""),
        );
        assert_eq!(got, Some(want as f64), "frames counted as {reason}");
    }
    pipeline.stop_collector().await;

    // Rows arrive through two topics and a batch: wait until ClickHouse holds every packet,
    // duplicates included.
    let all = |rows: &BTreeMap<Row, Counts>| -> u64 {
        rows.values().map(|c| c.packets + c.reverse_packets).sum()
    };
    let waiting = Instant::now();
    let rows = loop {
        let rows = conversations(&clickhouse, &host);
        if all(&rows) >= all(&expected.conversations) || waiting.elapsed() > Duration::from_secs(60)
        {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let report = differences(&expected.conversations, &rows);
    assert!(report.is_empty(), "ClickHouse vs tshark:\n{report}");
    assert_eq!(
        totals(&rows),
        (expected.packets, expected.bytes),
        "packets and bytes of the rows that are not duplicates vs tshark's IP frames"
    );
    pipeline.stop().await;

    eprintln!(
        "{} frames in {} conversations ({} malformed, {} non-IP, {} unmatched fragments) in {:.0?}:",
        frames,
        rows.len(),
        expected.malformed,
        expected.non_ip,
        expected.fragment_unmatched,
        started.elapsed()
    );
    for (name, n) in shapes {
        eprintln!("  {name}: {n} frames");
    }
}

/// Replays `pcap` out of B's end of the veth at the capture's own pace (one CPU, so the
/// receiving side sees the frames in capture order).
fn replay(pair: &NetnsPair, pcap: &Path) {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &pair.ns_b,
            "taskset",
            "-c",
            "0",
            "tcpreplay",
        ])
        .args(["-i", &pair.if_b])
        .arg(pcap)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("Failed packets:            0"),
        "tcpreplay {}: {text}{}",
        pcap.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Frames received by A's end of the veth (its kernel counter).
fn rx_packets(pair: &NetnsPair) -> u64 {
    let path = format!("/sys/class/net/{}/statistics/rx_packets", pair.if_a);
    NetnsPair::exec(&pair.ns_a, &["cat", &path])
        .trim()
        .parse()
        .unwrap()
}

/// Every conversation row of `host` with packets (drop-only records have none), summed over
/// scans.
fn conversations(clickhouse: &Chdb, host: &str) -> BTreeMap<Row, Counts> {
    let sql = format!(
        "SELECT vlan_id, IPv6NumToString(src_addr), src_port, IPv6NumToString(dst_addr), \
                dst_port, proto, icmp_type, icmp_code, tunnel, tunnel_id, \
                IPv6NumToString(outer_src_addr), IPv6NumToString(outer_dst_addr), direction, \
                duplicate, sum(packets), sum(bytes), groupBitOr(tcp_flags), \
                sum(reverse_packets), sum(reverse_bytes), groupBitOr(reverse_tcp_flags) \
         FROM flows WHERE host = '{host}' AND packets + reverse_packets > 0 \
         GROUP BY ALL FORMAT TSV"
    );
    let (status, text) = http(clickhouse.port, "POST", "/", &sql);
    assert_eq!(status, 200, "{text}");
    let ip = |s: &str| -> IpAddr { flowlens_schemas::v6_to_ip(s.parse().unwrap()) };
    text.lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            let n = |i: usize| -> u64 { f[i].parse().unwrap() };
            let outer = (f[10] != "::").then(|| (ip(f[10]), ip(f[11])));
            let row = Row {
                vlan: n(0) as u16,
                src: ip(f[1]),
                src_port: n(2) as u16,
                dst: ip(f[3]),
                dst_port: n(4) as u16,
                proto: n(5) as u8,
                icmp_type: n(6) as u8,
                icmp_code: n(7) as u8,
                tunnel: f[8].to_string(),
                tunnel_id: n(9) as u32,
                outer,
                direction: f[12].to_string(),
                duplicate: f[13] == "true",
            };
            let counts = Counts {
                packets: n(14),
                bytes: n(15),
                tcp_flags: n(16) as u16,
                reverse_packets: n(17),
                reverse_bytes: n(18),
                reverse_tcp_flags: n(19) as u16,
            };
            (row, counts)
        })
        .collect()
}

/// Packets and bytes of the rows that are not duplicates, both directions.
fn totals(rows: &BTreeMap<Row, Counts>) -> (u64, u64) {
    rows.iter()
        .filter(|(r, _)| !r.duplicate)
        .fold((0, 0), |(p, b), (_, c)| {
            (
                p + c.packets + c.reverse_packets,
                b + c.bytes + c.reverse_bytes,
            )
        })
}

/// One entry per conversation that is missing, unexpected or counted differently.
fn differences(expected: &BTreeMap<Row, Counts>, got: &BTreeMap<Row, Counts>) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for (row, want) in expected {
        match got.get(row) {
            None => writeln!(out, "missing     {row:?}\n  expected  {want:?}"),
            Some(c) if c != want => {
                writeln!(
                    out,
                    "different   {row:?}\n  expected  {want:?}\n  got       {c:?}"
                )
            }
            Some(_) => Ok(()),
        }
        .unwrap();
    }
    for (row, c) in got.iter().filter(|(row, _)| !expected.contains_key(row)) {
        writeln!(out, "unexpected  {row:?}\n  got       {c:?}").unwrap();
    }
    out
}
