//! Sampling honest downstream, end to end on real components: a UDP client in one network
//! namespace sends requests to an echo server in the other and gets every one answered (the
//! sockets count them: the oracle); the collector counts them at 1:N in the kernel, the
//! enricher places both ends in Kubernetes pods (a snapshot file), the sink writes ClickHouse
//! (the 26.9 engine behind the chdb front). Every total ClickHouse offers must then estimate
//! the traffic that was sent: the raw table's estimates, every rollup, every ready query of
//! sql/queries that shows this traffic, and every panel of the Grafana traffic dashboard.
//!
//! The bound: each packet is kept with probability p = 1/N, independently, so of n packets
//! k ~ Binomial(n, p) are counted and N * k estimates n with standard deviation
//! sqrt(n * (N - 1)). With n = 20,000 per direction at N = 10 that is 424 packets (2.1 %); the
//! test accepts 5 standard deviations (17,880 ..= 22,120, i.e. 1,788 ..= 2,212 counted). The
//! exact binomial probability of falling outside is 5.8e-7 per direction, 1.2e-6 for the two
//! independent directions: about one false failure in 860,000 runs. Everything downstream of the
//! raw table is then checked exactly against N * counted (the same samples), so it adds no
//! chance of failing.

mod common;

use std::collections::BTreeMap;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::{require_root, Pipeline};
use flowlens_collector::filter::FilterConfig;
use flowlens_enricher::kubernetes::snapshot::serde_json::{self, json, Value};
use flowlens_testkit::{
    dashboard_queries, end_offsets, http, in_netns, repo_root, unique, Chdb, NetnsPair, PanelQuery,
    Tansu,
};

/// 1:N sampling in the kernel.
const N: u64 = 10;
/// Requests sent A -> B, and answers B -> A.
const DATAGRAMS: u64 = 20_000;
const REQUEST: usize = 64;
const ANSWER: usize = 200;
const PORT: u16 = 7007;
/// Frames on the veth: Ethernet + IPv4 + UDP + payload.
const REQUEST_FRAME: u64 = 14 + 20 + 8 + REQUEST as u64;
const ANSWER_FRAME: u64 = 14 + 20 + 8 + ANSWER as u64;
/// The accepted distance from the truth, in standard deviations of the estimate.
const SIGMAS: f64 = 5.0;

/// Sends DATAGRAMS requests from A to B:PORT (in bursts of 100) and receives an answer to each
/// from an echo server in B. Blocking; every request and answer is checked on arrival.
fn echo_exchange(pair: &NetnsPair) {
    let server = in_netns(&pair.ns_b, || UdpSocket::bind((pair.ip_b, PORT)).unwrap());
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let client = in_netns(&pair.ns_a, || UdpSocket::bind((pair.ip_a, 0)).unwrap());
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        for _ in 0..DATAGRAMS {
            let (len, from) = server.recv_from(&mut buf).expect("every request arrives");
            assert_eq!(len, REQUEST);
            server.send_to(&[5u8; ANSWER], from).unwrap();
        }
    });
    let mut buf = [0u8; 2048];
    let mut sent = 0;
    while sent < DATAGRAMS {
        let burst = (DATAGRAMS - sent).min(100);
        for _ in 0..burst {
            client.send_to(&[3u8; REQUEST], (pair.ip_b, PORT)).unwrap();
        }
        for _ in 0..burst {
            let len = client.recv(&mut buf).expect("every answer arrives");
            assert_eq!(len, ANSWER);
        }
        sent += burst;
    }
    echo.join().unwrap();
}

/// A client pod (DaemonSet loadgen, namespace load) at A's address and an echo pod
/// (StatefulSet echo, namespace web, behind Service echo) at B's, both on `node`.
fn snapshot(pair: &NetnsPair, node: &str) -> Value {
    let pod = |name: &str, ns: &str, app: &str, kind: &str, ip: String| {
        json!({"kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"),
                "labels": {"app": app},
                "ownerReferences": [{"kind": kind, "name": app, "uid": format!("uid-{app}"),
                    "controller": true}]},
            "spec": {"nodeName": node},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
    };
    json!({"apiVersion": "v1", "kind": "List", "items": [
        pod("loadgen-x1", "load", "loadgen", "DaemonSet", pair.ip_a.to_string()),
        pod("echo-0", "web", "echo", "StatefulSet", pair.ip_b.to_string()),
        {"kind": "Service",
            "metadata": {"name": "echo", "namespace": "web", "uid": "uid-svc-echo"},
            "spec": {"type": "ClusterIP", "clusterIP": "10.96.70.7", "selector": {"app": "echo"},
                "ports": [{"port": PORT, "protocol": "UDP"}]}}
    ]})
}

/// Rows of a TSVWithNames answer, each as column name -> value.
fn rows(chdb: &Chdb, path_and_query: &str, sql: &str) -> Vec<BTreeMap<String, String>> {
    let (status, body) = http(chdb.port, "POST", path_and_query, sql);
    assert_eq!(status, 200, "{sql}: {body}");
    let mut lines = body.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let names: Vec<&str> = header.split('\t').collect();
    lines
        .map(|line| {
            names
                .iter()
                .zip(line.split('\t'))
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

fn select(chdb: &Chdb, sql: &str) -> Vec<BTreeMap<String, String>> {
    rows(chdb, "/?default_format=TSVWithNames", sql)
}

fn num(row: &BTreeMap<String, String>, column: &str) -> f64 {
    let v = row
        .get(column)
        .unwrap_or_else(|| panic!("no column {column} in {row:?}"));
    v.parse()
        .unwrap_or_else(|_| panic!("{column} = {v} is not a number"))
}

/// One direction of the exchange at A's interface (requests leave, answers arrive): the traffic
/// sent and what the collector counted of it.
#[derive(Debug, Clone, Copy)]
struct Leg {
    /// Packets sent (the sockets' count) and the size of each frame.
    sent: u64,
    frame: u64,
    /// Packets and bytes counted in the kernel (the `flows` rows before any scaling).
    counted_packets: u64,
    counted_bytes: u64,
}

impl Leg {
    fn est_packets(&self) -> f64 {
        (N * self.counted_packets) as f64
    }
    fn est_bytes(&self) -> f64 {
        (N * self.counted_bytes) as f64
    }
}

/// What a column of a query or panel adds up to over its rows (after multiplying by `scale`):
/// N x the counted bytes or packets (within the bound of the traffic sent, checked once on
/// the raw table), or a constant in every row.
#[derive(Clone, Copy)]
enum Total {
    Bytes,
    Packets,
    /// Every row holds N.
    SamplingRate,
    /// Every row holds 0.
    Zero,
}

type Reading = (&'static str, Total, f64);

const BYTES: Reading = ("bytes", Total::Bytes, 1.0);
const PACKETS: Reading = ("packets", Total::Packets, 1.0);
const RATE: Reading = ("max_sampling_rate", Total::SamplingRate, 1.0);

/// Checks `rows` (one query's or panel's answer) exactly against N x counted: each reading's
/// column summed over the rows, per `direction` when the rows have that column (egress =
/// A -> B), else over both directions.
fn check(what: &str, rows: &[BTreeMap<String, String>], readings: &[Reading], dirs: [Leg; 2]) {
    assert!(!rows.is_empty(), "{what}: no rows");
    let per_direction = rows[0].contains_key("direction");
    for &(column, total, scale) in readings {
        let mut sums: BTreeMap<String, f64> = BTreeMap::new();
        for row in rows {
            let value = num(row, column);
            match total {
                Total::SamplingRate => assert_eq!(value, N as f64, "{what}: {column} in {row:?}"),
                Total::Zero => assert_eq!(value, 0.0, "{what}: {column} in {row:?}"),
                Total::Bytes | Total::Packets => {
                    let key = if per_direction {
                        row["direction"].clone()
                    } else {
                        String::new()
                    };
                    *sums.entry(key).or_default() += value * scale;
                }
            }
        }
        let estimate = |d: &Leg| match total {
            Total::Bytes => d.est_bytes(),
            _ => d.est_packets(),
        };
        let expected: BTreeMap<String, f64> = match total {
            Total::SamplingRate | Total::Zero => continue,
            _ if per_direction => [
                ("egress".to_string(), estimate(&dirs[0])),
                ("ingress".to_string(), estimate(&dirs[1])),
            ]
            .into(),
            _ => [(String::new(), estimate(&dirs[0]) + estimate(&dirs[1]))].into(),
        };
        assert_eq!(
            sums.keys().collect::<Vec<_>>(),
            expected.keys().collect::<Vec<_>>(),
            "{what}: {column} rows"
        );
        for (key, want) in &expected {
            let got = sums[key];
            assert!(
                (got - want).abs() <= 1e-9 * want,
                "{what}: {column} {key} = {got}, N x counted = {want}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_traffic_totals_estimate_the_real_traffic_everywhere() {
    require_root();
    let broker = Tansu::start();
    let chdb = Chdb::start();
    let pair = std::sync::Arc::new(NetnsPair::new("smp"));
    let host = unique("sampling-node");
    let dir = tempfile::tempdir().unwrap();
    let cluster = dir.path().join("cluster.json");
    std::fs::write(
        &cluster,
        serde_json::to_vec(&snapshot(&pair, &host)).unwrap(),
    )
    .unwrap();

    let mut pipeline = Pipeline::new(&broker.broker(), &chdb.url(), &pair, &host);
    pipeline.collector.collector.sampling = N as u32;
    // Only this exchange is counted (not the kernel's own neighbour discovery): every row in
    // ClickHouse is traffic the sockets counted.
    pipeline.collector.collector.filter = FilterConfig {
        ports: vec![PORT],
        protocols: vec!["udp".into()],
        ..Default::default()
    };
    // The socket tracepoints see the whole machine (and the filter does not apply to them):
    // other processes' drops would come as drop-only records. This UDP exchange has neither
    // retransmits nor drops to report.
    pipeline.collector.collector.socket_metrics = false;
    pipeline.enricher.kubernetes.source = flowlens_enricher::kubernetes::config::Source::Snapshot;
    pipeline.enricher.kubernetes.snapshot_path = cluster.display().to_string();
    let raw_topic = pipeline.collector.kafka.topics.raw_flows.clone();
    let mut pipeline = pipeline.start().await;

    let p = pair.clone();
    tokio::task::spawn_blocking(move || echo_exchange(&p))
        .await
        .unwrap();
    pipeline.stop_collector().await;

    // Every record the collector published becomes one row.
    let records: i64 = end_offsets(&broker.broker(), &raw_topic).iter().sum();
    assert!(records > 0, "the collector published no record");
    let started = Instant::now();
    loop {
        let stored = &select(&chdb, "SELECT count() AS n FROM flows")[0]["n"];
        if stored == &records.to_string() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{stored} of {records} records in ClickHouse"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The raw table: what was counted per direction at A's interface (A->B leaves it, B->A
    // arrives), each row at 1:N, each counted packet a whole frame of its direction.
    let raw = &select(
        &chdb,
        "SELECT min(sampling_rate) AS min_rate, max(sampling_rate) AS max_rate, \
         countIf(duplicate) AS duplicates, countIf(src_pod = '' OR dst_pod = '') AS unnamed, \
         sumIf(packets, direction = 'egress') + sumIf(reverse_packets, direction = 'ingress') AS out_p, \
         sumIf(bytes, direction = 'egress') + sumIf(reverse_bytes, direction = 'ingress') AS out_b, \
         sumIf(packets, direction = 'ingress') + sumIf(reverse_packets, direction = 'egress') AS in_p, \
         sumIf(bytes, direction = 'ingress') + sumIf(reverse_bytes, direction = 'egress') AS in_b, \
         sumIf(est_packets, direction = 'egress') + sumIf(est_reverse_packets, direction = 'ingress') AS out_est_p, \
         sumIf(est_bytes, direction = 'egress') + sumIf(est_reverse_bytes, direction = 'ingress') AS out_est_b, \
         sumIf(est_packets, direction = 'ingress') + sumIf(est_reverse_packets, direction = 'egress') AS in_est_p, \
         sumIf(est_bytes, direction = 'ingress') + sumIf(est_reverse_bytes, direction = 'egress') AS in_est_b \
         FROM flows",
    )[0];
    assert_eq!(
        (num(raw, "min_rate"), num(raw, "max_rate")),
        (N as f64, N as f64),
        "every row carries the rate"
    );
    assert_eq!(num(raw, "duplicates"), 0.0);
    assert_eq!(num(raw, "unnamed"), 0.0, "both ends are pods on every row");
    let leg = |p: &str, b: &str, sent: u64, frame: u64| Leg {
        sent,
        frame,
        counted_packets: num(raw, p) as u64,
        counted_bytes: num(raw, b) as u64,
    };
    let dirs = [
        leg("out_p", "out_b", DATAGRAMS, REQUEST_FRAME),
        leg("in_p", "in_b", DATAGRAMS, ANSWER_FRAME),
    ];
    eprintln!(
        "1:{N}: counted {} of {DATAGRAMS} requests, {} of {DATAGRAMS} answers",
        dirs[0].counted_packets, dirs[1].counted_packets
    );
    // The estimate N x counted against the packets the sockets counted: within SIGMAS standard
    // deviations sqrt(n (N - 1)). Bytes are whole frames, so their estimate is N x counted x
    // frame: within the same bound, scaled by the frame.
    for (d, name) in dirs.iter().zip(["requests (A->B)", "answers (B->A)"]) {
        assert_eq!(
            d.counted_bytes,
            d.counted_packets * d.frame,
            "{name}: {d:?}"
        );
        let sd = (d.sent as f64 * (N - 1) as f64).sqrt();
        let off = (d.est_packets() - d.sent as f64) / sd;
        assert!(
            off.abs() <= SIGMAS,
            "{name}: estimated {} packets, sent {}: {off:.1} standard deviations ({sd:.0}) away",
            d.est_packets(),
            d.sent
        );
    }
    // The est_* columns, per direction.
    let est = [
        BTreeMap::from([
            ("direction".to_string(), "egress".to_string()),
            ("bytes".to_string(), raw["out_est_b"].clone()),
            ("packets".to_string(), raw["out_est_p"].clone()),
        ]),
        BTreeMap::from([
            ("direction".to_string(), "ingress".to_string()),
            ("bytes".to_string(), raw["in_est_b"].clone()),
            ("packets".to_string(), raw["in_est_p"].clone()),
        ]),
    ];
    check("flows est_*", &est, &[BYTES, PACKETS], dirs);

    // Every rollup: per direction (interface, port) or both directions per pod pair.
    for table in [
        "flows_iface_1m",
        "flows_iface_1h",
        "flows_port_1m",
        "flows_port_1h",
    ] {
        let sql = format!(
            "SELECT direction, sum(bytes) AS bytes, sum(packets) AS packets, \
             max(max_sampling_rate) AS max_sampling_rate FROM {table} GROUP BY direction"
        );
        check(table, &select(&chdb, &sql), &[BYTES, PACKETS, RATE], dirs);
    }
    // Both directions per pair of console nodes (migration 0008).
    for table in ["flows_topology_1m", "flows_topology_1h"] {
        let sql = format!(
            "SELECT sum(bytes) AS bytes, sum(packets) AS packets, \
             max(max_sampling_rate) AS max_sampling_rate FROM {table}"
        );
        check(table, &select(&chdb, &sql), &[BYTES, PACKETS, RATE], dirs);
    }
    for table in ["flows_k8s_1m", "flows_k8s_1h"] {
        let sql = format!(
            "SELECT sum(bytes) AS bytes, sum(packets) AS packets, \
             max(max_sampling_rate) AS max_sampling_rate FROM {table}"
        );
        check(table, &select(&chdb, &sql), &[BYTES, PACKETS, RATE], dirs);
        // The B->A share, per initiator (the side whose packet was sampled first): N x the
        // counted reverse_* of the raw rows.
        let sql = format!(
            "SELECT src_pod, sum(reverse_bytes), sum(reverse_packets) FROM {table} \
             GROUP BY src_pod ORDER BY src_pod FORMAT TSV"
        );
        let scaled = format!(
            "SELECT src_pod, sum(reverse_bytes) * {N}, sum(reverse_packets) * {N} FROM flows \
             GROUP BY src_pod ORDER BY src_pod FORMAT TSV"
        );
        assert_eq!(
            http(chdb.port, "POST", "/", &sql).1,
            http(chdb.port, "POST", "/", &scaled).1,
            "{table}: reverse_* per initiator"
        );
    }

    // Every ready query showing this traffic; the others find none (UDP without retransmits
    // or drops) and are checked exactly on designed rows in sink/tests/queries/.
    let query = |file: &str, params: &str| {
        let sql = std::fs::read_to_string(repo_root().join("sql/queries").join(file)).unwrap();
        rows(
            &chdb,
            &format!("/?{params}&default_format=TSVWithNames"),
            &sql,
        )
    };
    let p = "param_minutes=60&param_limit=20&param_namespace=";
    let traffic = [BYTES, PACKETS, RATE];
    let with_traffic: [(&str, &str, &[Reading]); 7] = [
        ("top_talkers.sql", p, &traffic),
        ("traffic_per_interface.sql", p, &traffic),
        (
            "traffic_per_interface_hourly.sql",
            "param_hours=3",
            &traffic,
        ),
        ("pod_traffic_matrix.sql", p, &traffic),
        ("service_traffic_matrix.sql", p, &traffic),
        ("traffic_by_locality.sql", p, &traffic),
        ("topology_edges.sql", p, &traffic),
    ];
    for (file, params, readings) in with_traffic {
        check(file, &query(file, params), readings, dirs);
    }
    // (No DNS or HTTP either: the traffic's port is 7007.)
    let without_traffic = [
        "dns_errors_by_name.sql",
        "dns_latency.sql",
        "drops_by_reason.sql",
        "hot_spots.sql",
        "http_errors_by_path.sql",
        "http_latency.sql",
        "new_connections_per_service.sql",
        "tcp_health.sql",
    ];
    for file in without_traffic {
        assert_eq!(query(file, p), Vec::new(), "{file}");
    }
    let mut files: Vec<String> = std::fs::read_dir(repo_root().join("sql/queries"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    let mut covered: Vec<&str> = with_traffic
        .iter()
        .map(|(f, ..)| *f)
        .chain(without_traffic)
        .collect();
    covered.sort();
    assert_eq!(files, covered, "every query file is checked");

    // Every ClickHouse panel of the traffic dashboard, with the macros replaced as
    // check_dashboards.py does (last hour, 60 s intervals).
    let per_second = 60.0;
    let bits = 60.0 / 8.0;
    let panels: [(&str, &[Reading]); 11] = [
        ("Packet sampling", &[RATE]),
        (
            "Traffic by direction",
            &[("bits_per_second", Total::Bytes, bits)],
        ),
        (
            "Packets by protocol",
            &[("packets_per_second", Total::Packets, per_second)],
        ),
        ("Top talkers", &[BYTES, PACKETS]),
        ("Top nodes", &[BYTES]),
        ("Workload-to-workload matrix (bytes)", &[BYTES]),
        ("Top destination ports", &[BYTES]),
        (
            "Retransmits, drops, resets and unanswered SYNs",
            &[
                ("retransmits_per_second", Total::Zero, 1.0),
                ("drops_per_second", Total::Zero, 1.0),
                ("rst_flows_per_second", Total::Zero, 1.0),
                ("unanswered_syn_flows_per_second", Total::Zero, 1.0),
            ],
        ),
        (
            "Flows per node and interface",
            &[BYTES, PACKETS, RATE, ("duplicate_bytes", Total::Zero, 1.0)],
        ),
        ("TCP round-trip time", &[]),
        ("Drops by reason", &[]),
    ];
    let traffic_dashboard: Vec<PanelQuery> = dashboard_queries()
        .into_iter()
        .filter(|t| t.dashboard == "deploy/grafana/dashboards/flowlens-traffic.json")
        .collect();
    assert_eq!(
        traffic_dashboard
            .iter()
            .map(|t| t.panel.as_str())
            .collect::<Vec<_>>(),
        panels.iter().map(|(title, _)| *title).collect::<Vec<_>>(),
        "every panel of the traffic dashboard is checked"
    );
    for (target, (title, readings)) in traffic_dashboard.into_iter().zip(panels) {
        let answer = select(&chdb, &target.sql);
        if readings.is_empty() {
            assert_eq!(answer, Vec::new(), "{title}: no TCP, no drops");
        } else {
            check(title, &answer, readings, dirs);
        }
    }

    pipeline.stop().await;
}
