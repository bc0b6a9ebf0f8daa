//! `flowlens observe` as a binary against tansu: designed EnrichedFlow records (one written with
//! the historic v2 schema by apache-avro's generic writer, one not Avro at all) on a two-partition
//! topic; each filter, window and output format must print exactly the records the test made
//! for it (each carries its own `host`), follow mode must print records produced after it
//! started and end cleanly on SIGINT, and the broker must know no consumer group afterwards.
//!
//! Needs /opt/flowlens-venv (tansu); `FLOWLENS_SKIP_TANSU=1` skips.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flowlens_schemas::apache_avro::types::Value;
use flowlens_schemas::apache_avro::{GenericSingleObjectWriter, Schema};
use flowlens_schemas::{ip_to_v6, EnrichedFlow, RawFlow, ENRICHED_FLOW_V2_AVSC};
use flowlens_testkit::{producer, require, unique, Tansu, TANSU};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value as Json;

const BIN: &str = env!("CARGO_BIN_EXE_flowlens");

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// A conversation ending `ago` before now, identified by `host`.
fn flow(
    host: &str,
    ago: Duration,
    proto: i32,
    src: &str,
    dst: &str,
    ports: (i32, i32),
) -> EnrichedFlow {
    let end = now_ns() - ago.as_nanos() as i64;
    let mut f = EnrichedFlow::from_raw(RawFlow {
        host: host.into(),
        ifindex: 3,
        time_flow_start_ns: end - 1_000_000_000,
        time_flow_end_ns: end,
        time_exported_ns: end + 1_000_000,
        etype: if src.contains(':') { 0x86DD } else { 0x0800 },
        proto,
        src_addr: ip_to_v6(src.parse().unwrap()),
        dst_addr: ip_to_v6(dst.parse().unwrap()),
        src_port: ports.0,
        dst_port: ports.1,
        packets: 10,
        bytes: 1_500,
        reverse_packets: 8,
        reverse_bytes: 900,
        sampling_rate: 1,
        ..Default::default()
    });
    f.if_name = "eth0".into();
    f
}

fn some(s: &str) -> Option<String> {
    Some(s.to_string())
}

/// The designed records: (partition, record).
fn records() -> Vec<(i32, EnrichedFlow)> {
    let mut web = flow(
        "obs-web",
        Duration::from_secs(30),
        6,
        "10.1.0.11",
        "10.1.0.21",
        (40_000, 8_080),
    );
    web.src_namespace = some("shop");
    web.src_pod = some("web-1");
    web.src_workload = some("web");
    web.src_node = some("n1");
    web.dst_namespace = some("shop");
    web.dst_pod = some("api-1");
    web.dst_workload = some("api");
    web.dst_service = some("api");
    web.dst_node = some("n2");
    web.locality = some("cluster");
    web.tcp_flags = 0x02 | 0x10 | 0x01;
    web.reverse_tcp_flags = 0x12 | 0x01;
    web.end_reason = "fin".into();
    web.rtt_ns = 2_000_000;

    let mut dns = flow(
        "obs-dns",
        Duration::from_secs(20),
        17,
        "fd00:1::5",
        "fd00:1::53",
        (50_000, 53),
    );
    dns.src_namespace = some("kube-system");
    dns.src_pod = some("coredns-1");
    dns.src_workload = some("coredns");
    dns.dst_namespace = some("kube-system");
    dns.dst_pod = some("coredns-2");
    dns.dst_workload = some("coredns");
    dns.locality = some("node");
    dns.drops = 3;
    dns.drop_bytes = 240;
    dns.drop_reason = "NETFILTER_DROP".into();

    let mut out = flow(
        "obs-out",
        Duration::from_secs(10),
        6,
        "10.1.0.12",
        "203.0.113.9",
        (41_000, 443),
    );
    out.src_namespace = some("shop");
    out.src_pod = some("web-2");
    out.locality = some("external");
    out.end_reason = "rst".into();
    out.tcp_flags = 0x04;
    out.rtt_ns = 50_000_000;
    out.sampling_rate = 10;

    vec![(0, web), (1, dns), (0, out)]
}

/// The record written three hours ago with EnrichedFlow v2 (an older enricher): ICMP, no Kubernetes.
fn old_record() -> EnrichedFlow {
    let mut f = flow(
        "obs-old",
        Duration::from_secs(3 * 3_600),
        1,
        "192.0.2.1",
        "192.0.2.2",
        (0, 0),
    );
    f.icmp_type = 8;
    // v2 has no reverse counters: they read back as 0.
    f.reverse_packets = 0;
    f.reverse_bytes = 0;
    f
}

/// `record` as a producer of an older schema wrote it: its fields that version has, through
/// apache-avro's generic single-object writer.
fn old_message(record: &EnrichedFlow, old_avsc: &str) -> Vec<u8> {
    let old = Schema::parse_str(old_avsc).unwrap();
    let Schema::Record(r) = &old else {
        panic!("a record")
    };
    let Value::Record(fields) = flowlens_schemas::apache_avro::to_value(record).unwrap() else {
        panic!("a record")
    };
    let fields = fields
        .into_iter()
        .filter(|(name, _)| r.lookup.contains_key(name))
        .collect();
    let value = Value::Record(fields).resolve(&old).unwrap();
    let mut w = GenericSingleObjectWriter::new_with_capacity(&old, 256).unwrap();
    let mut out = Vec::new();
    w.write_value(value, &mut out).unwrap();
    out
}

async fn send(p: &FutureProducer, topic: &str, partition: i32, payload: &[u8], ts_ms: Option<i64>) {
    let mut r = FutureRecord::<str, [u8]>::to(topic)
        .partition(partition)
        .key("k")
        .payload(payload);
    if let Some(ts) = ts_ms {
        r = r.timestamp(ts);
    }
    p.send(r, Duration::from_secs(10))
        .await
        .unwrap_or_else(|(e, _)| panic!("producing: {e}"));
}

fn observe(broker: &str, topic: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("observe")
        .args(["--brokers", broker, "--topic", topic])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The hosts of the records printed as JSON lines, in output order.
fn hosts(broker: &str, topic: &str, args: &[&str]) -> Vec<String> {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    let out = observe(broker, topic, &all);
    assert!(
        out.status.success(),
        "observe {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let j: Json = serde_json::from_str(l).unwrap();
            j["host"].as_str().unwrap().to_string()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_filters_windows_formats_and_follow() {
    if require(TANSU, "TANSU") {
        return;
    }
    let tansu = Tansu::start();
    let broker = tansu.broker();
    let topic = unique("observe");
    let kafka = flowlens_runtime::kafka::KafkaConfig {
        brokers: vec![broker.clone()],
        partitions: 2,
        ..Default::default()
    };
    kafka.ensure_topics(&[(&topic, false)]).await.unwrap();
    let p = producer(&broker);
    let old = old_record();
    let three_hours_ago_ms = old.time_flow_end_ns / 1_000_000;
    send(
        &p,
        &topic,
        1,
        &old_message(&old, ENRICHED_FLOW_V2_AVSC),
        Some(three_hours_ago_ms),
    )
    .await;
    let designed = records();
    for (partition, f) in &designed {
        let mut buf = Vec::new();
        flowlens_schemas::encode(f, &mut buf).unwrap();
        send(&p, &topic, *partition, &buf, None).await;
    }
    send(&p, &topic, 1, b"not avro at all", None).await;

    // Everything, oldest flow first; the foreign message is named on stderr and skipped.
    let all = observe(&broker, &topic, &["-o", "json"]);
    let stderr = String::from_utf8_lossy(&all.stderr);
    assert!(all.status.success(), "{stderr}");
    let stderr = String::from_utf8_lossy(&all.stderr);
    assert!(
        stderr.contains(&format!("skipping {topic}/1@2")),
        "{stderr}"
    );
    let lines: Vec<Json> = String::from_utf8(all.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let order: Vec<&str> = lines.iter().map(|j| j["host"].as_str().unwrap()).collect();
    assert_eq!(order, ["obs-old", "obs-web", "obs-dns", "obs-out"]);
    // Every field of the current schema, values as the test wrote them.
    let web = &lines[1];
    assert_eq!(web["src_addr"], "10.1.0.11");
    assert_eq!(web["dst_port"], 8_080);
    assert_eq!(web["dst_service"], "api");
    assert_eq!(web["rtt_ns"], 2_000_000);
    assert_eq!(web["reverse_bytes"], 900);
    assert_eq!(web["src_process"], Json::Null);
    assert_eq!(lines[2]["dst_addr"], "fd00:1::53");
    assert_eq!(lines[0]["icmp_type"], 8);
    assert_eq!(lines[0]["reverse_bytes"], 0, "v2 has no reverse counters");
    let fields = flowlens_schemas::RecordKind::EnrichedFlow.schema();
    let Schema::Record(r) = fields else { panic!() };
    for line in &lines {
        assert_eq!(line.as_object().unwrap().len(), r.fields.len(), "{line}");
    }

    let h = |args: &[&str]| hosts(&broker, &topic, args);
    assert_eq!(h(&["--last", "2"]), ["obs-dns", "obs-out"]);
    assert_eq!(h(&["--since", "1h"]), ["obs-web", "obs-dns", "obs-out"]);
    assert_eq!(h(&["--since", "4h", "--protocol", "icmp"]), ["obs-old"]);
    assert_eq!(h(&["--namespace", "shop"]), ["obs-web", "obs-out"]);
    assert_eq!(
        h(&["--namespace", "kube-system", "--namespace", "nowhere"]),
        ["obs-dns"]
    );
    assert_eq!(h(&["--pod", "shop/web-1"]), ["obs-web"]);
    assert_eq!(h(&["--pod", "api-1"]), ["obs-web"]);
    assert_eq!(h(&["--pod", "kube-system/api-1"]), Vec::<String>::new());
    assert_eq!(h(&["--workload", "coredns"]), ["obs-dns"]);
    assert_eq!(h(&["--service", "shop/api"]), ["obs-web"]);
    assert_eq!(h(&["--node", "n2"]), ["obs-web"]);
    assert_eq!(h(&["--ip", "10.1.0.0/16"]), ["obs-web", "obs-out"]);
    assert_eq!(h(&["--ip", "203.0.113.9"]), ["obs-out"]);
    assert_eq!(h(&["--ip", "fd00:1::/64"]), ["obs-dns"]);
    assert_eq!(
        h(&["--port", "53", "--port", "443"]),
        ["obs-dns", "obs-out"]
    );
    assert_eq!(h(&["--protocol", "udp"]), ["obs-dns"]);
    assert_eq!(h(&["--protocol", "6"]), ["obs-web", "obs-out"]);
    assert_eq!(h(&["--locality", "external"]), ["obs-out"]);
    assert_eq!(h(&["--drops"]), ["obs-dns"]);
    assert_eq!(h(&["--rtt-above", "10ms"]), ["obs-out"]);
    assert_eq!(h(&["--rtt-above", "1ms"]), ["obs-web", "obs-out"]);
    assert_eq!(h(&["--end-reason", "fin"]), ["obs-web"]);
    assert_eq!(
        h(&[
            "--protocol",
            "tcp",
            "--end-reason",
            "rst",
            "--namespace",
            "shop"
        ]),
        ["obs-out"]
    );

    // Table: a header and one aligned row per record; compact: one line per record.
    let table = observe(&broker, &topic, &["--namespace", "shop"]);
    let text = String::from_utf8(table.stdout).unwrap();
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows.len(), 3, "{text}");
    assert!(
        rows[0].starts_with("TIME") && rows[0].contains("DESTINATION"),
        "{text}"
    );
    assert!(
        rows[1].contains("obs-web/eth0") && rows[1].contains("shop/web-1:40000"),
        "{text}"
    );
    assert!(
        rows[1].contains("shop/api-1:8080") && rows[1].contains("1500/900"),
        "{text}"
    );
    assert!(
        rows[1].contains("end=fin") && rows[1].contains("rtt=2.000ms"),
        "{text}"
    );
    assert!(
        rows[2].contains("203.0.113.9:443") && rows[2].contains("sampled=1:10"),
        "{text}"
    );
    let col = rows[0].find("DESTINATION").unwrap();
    assert_eq!(rows[1].find("shop/api-1"), Some(col), "{text}");
    let compact = observe(&broker, &topic, &["-o", "compact", "--drops"]);
    let text = String::from_utf8(compact.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("obs-dns/eth0 kube-system/coredns-1:50000 -> kube-system/coredns-2:53 UDP")
            && text.contains("drops=3(NETFILTER_DROP)"),
        "{text}"
    );

    // Follow: only records produced after the start, filtered, until SIGINT (exit 0).
    let mut child = Command::new(BIN)
        .args(["observe", "--brokers", &broker, "--topic", &topic])
        .args(["-f", "-o", "json", "--namespace", "shop"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let _ = tx.send(line.unwrap());
        }
    });
    let mut later = flow(
        "obs-later",
        Duration::ZERO,
        6,
        "10.1.0.11",
        "10.1.0.21",
        (40_001, 8_080),
    );
    later.src_namespace = some("shop");
    let other = flow(
        "obs-other",
        Duration::ZERO,
        17,
        "10.9.0.1",
        "10.9.0.2",
        (1, 2),
    );
    let start = Instant::now();
    let mut seen = Vec::new();
    // The command assigns its partitions at their ends when it starts: produce until it prints.
    while seen.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "follow printed nothing"
        );
        for (i, f) in [&other, &later].into_iter().enumerate() {
            let mut buf = Vec::new();
            flowlens_schemas::encode(f, &mut buf).unwrap();
            send(&p, &topic, i as i32, &buf, None).await;
        }
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
            seen.push(line);
        }
    }
    for line in &seen {
        let j: Json = serde_json::from_str(line).unwrap();
        assert_eq!(j["host"], "obs-later", "{line}");
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "observe -f did not end on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "observe -f exited with {status}");

    // Nothing above joined or created a consumer group.
    let admin: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker)
        .create()
        .unwrap();
    let groups = admin
        .fetch_group_list(None, Duration::from_secs(10))
        .unwrap();
    let names: Vec<&str> = groups.groups().iter().map(|g| g.name()).collect();
    assert!(names.is_empty(), "consumer groups on the broker: {names:?}");

    // Connection problems name what failed.
    let down = Command::new(BIN)
        .args(["observe", "--brokers", "127.0.0.1:1", "--topic", &topic])
        .output()
        .unwrap();
    assert_eq!(down.status.code(), Some(1));
    let e = String::from_utf8_lossy(&down.stderr);
    assert!(e.contains("127.0.0.1:1"), "{e}");
    let bad = observe(&broker, &topic, &["-X", "no.such.property=1"]);
    assert_eq!(bad.status.code(), Some(1));
    let e = String::from_utf8_lossy(&bad.stderr);
    assert!(e.contains("no.such.property"), "{e}");
    // FLOWLENS_BROKERS and FLOWLENS_TOPIC stand for the flags.
    let env = Command::new(BIN)
        .args(["observe", "-o", "json", "--drops"])
        .env("FLOWLENS_BROKERS", &broker)
        .env("FLOWLENS_TOPIC", &topic)
        .output()
        .unwrap();
    assert!(
        env.status.success(),
        "{}",
        String::from_utf8_lossy(&env.stderr)
    );
    assert_eq!(String::from_utf8(env.stdout).unwrap().lines().count(), 1);
}
