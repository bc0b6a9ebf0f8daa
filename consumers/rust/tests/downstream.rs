//! Both example consumers against the real broker and ClickHouse: the test produces EnrichedFlow
//! records (current version, and versions 1 and 2 written by apache-avro's generic writer with
//! the historic schemas, as older enrichers did) plus one message that is not Avro to tansu; the
//! real sink (library, in process: no enricher, the records are the test's) stores them in
//! ClickHouse 26.9 (chdb front). Then `consumers/python/flowlens_consume.py` (confluent-kafka +
//! fastavro, its own venv) and `flowlens-consume` (Rust, flowlens-schemas) read the topic: every
//! record must be decoded by both, identically, the foreign message named by both, and every
//! field of every record equal to the row ClickHouse holds for its partition and offset.
//!
//! Needs /opt/flowlens-venv and /opt/flowlens-consumer-venv (scripts/setup.sh);
//! `FLOWLENS_SKIP_CHDB=1` skips.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flowlens_runtime::kafka::KafkaConfig;
use flowlens_runtime::Shutdown;
use flowlens_schemas::apache_avro::types::Value;
use flowlens_schemas::apache_avro::{GenericSingleObjectWriter, Schema};
use flowlens_schemas::{
    ip_to_v6, v6_to_ip, Direction, Dns, EnrichedFlow, Http, Process, RawFlow,
    ENRICHED_FLOW_V1_AVSC, ENRICHED_FLOW_V2_AVSC,
};
use flowlens_sink::config::{BatchConfig, ClickHouseConfig, SinkConfig};
use flowlens_testkit::{http, repo_root, require, unique, Chdb, Tansu, TANSU, VENV_PYTHON};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Map, Value as Json};

const CONSUMER_PYTHON: &str = "/opt/flowlens-consumer-venv/bin/python";
const RUST_CONSUMER: &str = env!("CARGO_BIN_EXE_flowlens-consume");

fn some(s: &str) -> Option<String> {
    Some(s.into())
}

/// Designed records, every field of the current version set somewhere.
fn records(end_ns: i64) -> Vec<EnrichedFlow> {
    let base = |i: i64, src: &str, dst: &str| {
        let mut f = EnrichedFlow::from_raw(RawFlow {
            host: format!("down-{i}"),
            ifindex: 2 + i as i32,
            direction: if i % 2 == 0 {
                Direction::Egress
            } else {
                Direction::Ingress
            },
            time_flow_start_ns: end_ns - 5_000_000_000 + i,
            time_flow_end_ns: end_ns + i * 1_000,
            time_exported_ns: end_ns + 1_000_000_000 + i,
            etype: if src.contains(':') { 0x86DD } else { 0x0800 },
            vlan_id: i as i32,
            proto: 6,
            src_addr: ip_to_v6(src.parse().unwrap()),
            dst_addr: ip_to_v6(dst.parse().unwrap()),
            src_port: 40_000 + i as i32,
            dst_port: 443,
            tcp_flags: 0x1b,
            packets: 10 + i,
            bytes: 1_000 * (i + 1),
            sampling_rate: 1,
            reverse_packets: 7 + i,
            reverse_bytes: 700 + i,
            reverse_tcp_flags: 0x12,
            ..Default::default()
        });
        f.if_name = format!("eth{i}");
        f.if_mac = "02:00:00:00:00:01".into();
        f.if_kind = "veth".into();
        f.if_netns = "cni-1234".into();
        f
    };
    let mut a = base(0, "10.1.0.11", "10.1.0.21");
    a.src_pod = some("web-1");
    a.src_namespace = some("shop");
    a.src_workload = some("web");
    a.src_workload_kind = some("Deployment");
    a.src_node = some("n1");
    a.dst_pod = some("api-1");
    a.dst_namespace = some("shop");
    a.dst_workload = some("api");
    a.dst_workload_kind = some("StatefulSet");
    a.dst_node = some("n2");
    a.dst_service = some("api");
    a.src_pod_uid = some("0b1e6a3c-0000-4000-8000-000000000001");
    a.dst_pod_uid = some("0b1e6a3c-0000-4000-8000-000000000002");
    a.src_role = some("client");
    a.dst_role = some("server");
    a.locality = some("cluster");
    a.if_pod = some("web-1");
    a.if_namespace = some("shop");
    a.end_reason = "fin".into();
    a.rtt_ns = 1_250_000;
    a.retransmits = 2;
    a.drops = 1;
    a.drop_bytes = 1_514;
    a.drop_reason = "NETFILTER_DROP".into();
    a.src_process = Some(Process {
        pid: 4_242,
        comm: "curl".into(),
        cgroup_id: 9_876_543_210,
    });
    a.dst_process = Some(Process {
        pid: 77,
        comm: "cörédns".into(),
        cgroup_id: 12,
    });
    a.dns = Some(Dns {
        queries: 4,
        responses: 4,
        noerror: 1,
        nxdomain: 1,
        servfail: 1,
        refused: 0,
        other_rcode: 1,
        answered: 3,
        latency_sum_ns: 5_500_000_000,
        latency_max_ns: 5_000_000_000,
        latencies_us: vec![150, 350_000, 5_000_000],
        last_query: some("api.shop.svc.cluster.local"),
        last_query_type: 28,
    });
    a.http = Some(Http {
        requests: 5,
        responses: 5,
        status_2xx: 1,
        status_3xx: 1,
        status_4xx: 1,
        status_5xx: 1,
        status_other: 1,
        answered: 4,
        latency_sum_ns: 6_600_000_000,
        latency_max_ns: 6_000_000_000,
        latencies_us: vec![250, 350_000, 250_000, 6_000_000],
        last_method: some("POST"),
        last_path: some("/api/caf%C3%A9/orders"),
        last_status: 503,
    });
    let mut b = base(1, "2001:db8::1", "2001:db8::2");
    b.proto = 17;
    b.tunnel = "vxlan".into();
    b.tunnel_id = 4_096;
    b.outer_src_addr = Some(ip_to_v6("192.168.10.1".parse().unwrap()));
    b.outer_dst_addr = Some("2001:db8::ff".parse().unwrap());
    b.duplicate = true;
    b.sampling_rate = 100;
    let mut c = base(2, "10.2.0.5", "203.0.113.9");
    c.locality = some("external");
    c.end_reason = "rst".into();
    c.dns = Some(Dns {
        responses: 2,
        refused: 2,
        ..Dns::default()
    });
    c.http = Some(Http {
        requests: 1,
        last_method: some("GET"),
        last_path: some("/"),
        ..Http::default()
    });
    vec![a, b, c]
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

/// ClickHouse's text of an address as the consumers print it (IPv4-mapped as a dotted quad).
fn address(text: &str) -> String {
    v6_to_ip(text.parse::<Ipv6Addr>().unwrap()).to_string()
}

/// Every difference between a consumer's record and the row ClickHouse holds for it. Columns
/// are named as the fields, except: times (`*_ns` ↔ DateTime64 read back as ns), the direction
/// enum (lower case), processes (`src_process` ↔ `src_pid`/`src_comm`/`src_cgroup_id`), `dns`
/// (`dns.queries` ↔ `dns_queries`, ...), `http` (`http.requests` ↔ `http_requests`,
/// `http.status_2xx` ↔ `http_2xx`, ...), and nulls (strings ↔ '', addresses ↔ '::', processes
/// ↔ zeros, dns and http ↔ zeros, [] and '').
fn differences(record: &Map<String, Json>, row: &Map<String, Json>) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |field: &str, got: Json, want: Json| {
        if got != want {
            out.push(format!("{field}: record {got}, row {want}"));
        }
    };
    for (field, value) in record {
        let column = row.get(field).cloned().unwrap_or(Json::Null);
        match field.as_str() {
            "direction" => check(field, value.as_str().unwrap().to_lowercase().into(), column),
            "src_process" | "dst_process" => {
                let side = &field[..3];
                let (pid, comm, cgroup) = match value {
                    Json::Null => (0.into(), "".into(), 0.into()),
                    p => (p["pid"].clone(), p["comm"].clone(), p["cgroup_id"].clone()),
                };
                check(
                    &format!("{field}.pid"),
                    pid,
                    row[&format!("{side}_pid")].clone(),
                );
                check(
                    &format!("{field}.comm"),
                    comm,
                    row[&format!("{side}_comm")].clone(),
                );
                check(
                    &format!("{field}.cgroup_id"),
                    cgroup,
                    row[&format!("{side}_cgroup_id")].clone(),
                );
            }
            "dns" => {
                let part = |key: &str, zero: Json| match value {
                    Json::Null => zero,
                    d => d[key].clone(),
                };
                for key in [
                    "queries",
                    "responses",
                    "noerror",
                    "nxdomain",
                    "servfail",
                    "refused",
                    "other_rcode",
                    "answered",
                    "latency_sum_ns",
                    "latency_max_ns",
                    "last_query_type",
                ] {
                    check(
                        &format!("dns.{key}"),
                        part(key, 0.into()),
                        row[&format!("dns_{key}")].clone(),
                    );
                }
                check(
                    "dns.latencies_us",
                    part("latencies_us", Json::Array(Vec::new())),
                    row["dns_latencies_us"].clone(),
                );
                let name = match part("last_query", Json::Null) {
                    Json::Null => "".into(),
                    name => name,
                };
                check("dns.last_query", name, row["dns_last_query"].clone());
            }
            "http" => {
                let part = |key: &str, zero: Json| match value {
                    Json::Null => zero,
                    h => h[key].clone(),
                };
                for (key, column) in [
                    ("requests", "http_requests"),
                    ("responses", "http_responses"),
                    ("status_2xx", "http_2xx"),
                    ("status_3xx", "http_3xx"),
                    ("status_4xx", "http_4xx"),
                    ("status_5xx", "http_5xx"),
                    ("status_other", "http_status_other"),
                    ("answered", "http_answered"),
                    ("latency_sum_ns", "http_latency_sum_ns"),
                    ("latency_max_ns", "http_latency_max_ns"),
                    ("last_status", "http_last_status"),
                ] {
                    check(
                        &format!("http.{key}"),
                        part(key, 0.into()),
                        row[column].clone(),
                    );
                }
                check(
                    "http.latencies_us",
                    part("latencies_us", Json::Array(Vec::new())),
                    row["http_latencies_us"].clone(),
                );
                for key in ["last_method", "last_path"] {
                    let text = match part(key, Json::Null) {
                        Json::Null => "".into(),
                        text => text,
                    };
                    check(
                        &format!("http.{key}"),
                        text,
                        row[&format!("http_{key}")].clone(),
                    );
                }
            }
            "src_addr" | "dst_addr" | "outer_src_addr" | "outer_dst_addr" => {
                let want = address(
                    column
                        .as_str()
                        .unwrap_or_else(|| panic!("{field}: {column}")),
                );
                let got = match value {
                    Json::Null => address("::"),
                    v => v.as_str().unwrap().to_string(),
                };
                check(field, got.into(), want.into());
            }
            "origin" => {
                // Null: the record's own enriched position is its origin (schemas/README.md).
                let want = |column: &str| row[column].clone();
                let (topic, stream, partition, offset) = match value {
                    Json::Null => (
                        want("kafka_topic"),
                        want("kafka_stream_hex"),
                        want("kafka_partition"),
                        want("kafka_offset"),
                    ),
                    o => (
                        o["topic"].clone(),
                        o["stream"].clone(),
                        o["partition"].clone(),
                        o["offset"].clone(),
                    ),
                };
                check("origin.topic", topic, want("origin_topic"));
                check("origin.stream", stream, want("origin_stream_hex"));
                check("origin.partition", partition, want("origin_partition"));
                check("origin.offset", offset, want("origin_offset"));
            }
            _ if !row.contains_key(field) => {
                check(field, value.clone(), "(no column in flows)".into())
            }
            _ => {
                let got = if value.is_null() {
                    Json::from("")
                } else {
                    value.clone()
                };
                check(field, got, column);
            }
        }
    }
    out
}

/// A consumer's JSON lines by (partition, offset), its stderr and exit code.
fn consume(cmd: &mut Command) -> (BTreeMap<(i64, i64), Json>, String, Option<i32>) {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let j: Json = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            (
                (
                    j["partition"].as_i64().unwrap(),
                    j["offset"].as_i64().unwrap(),
                ),
                j,
            )
        })
        .collect();
    (lines, stderr, out.status.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_rust_consumers_read_what_clickhouse_stored() {
    if require(VENV_PYTHON, "CHDB") || require(TANSU, "CHDB") || require(CONSUMER_PYTHON, "CHDB") {
        return;
    }
    let chdb = Chdb::start();
    let tansu = Tansu::start();
    let name = unique("downstream");
    let mut kafka = KafkaConfig {
        brokers: vec![tansu.broker()],
        client_id: name.clone(),
        partitions: 2,
        ..Default::default()
    };
    kafka.topics.enriched_flows = format!("{name}.enriched");
    kafka.topics.dead_letter = format!("{name}.dlq");
    let topic = kafka.topics.enriched_flows.clone();
    let config = flowlens_sink::Config {
        kafka,
        clickhouse: ClickHouseConfig {
            url: chdb.url(),
            ..Default::default()
        },
        batch: BatchConfig {
            max_age_ms: 200,
            ..Default::default()
        },
        sink: SinkConfig {
            group_id: format!("{name}-sink"),
            ..Default::default()
        },
        ..Default::default()
    };
    config
        .kafka
        .ensure_topics(&[(&topic, false), (&config.kafka.topics.dead_letter, false)])
        .await
        .unwrap();
    let end_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    let flows = records(end_ns);
    let mut messages: Vec<(i32, Vec<u8>)> = Vec::new();
    for (i, f) in flows.iter().enumerate() {
        let mut buf = Vec::new();
        flowlens_schemas::encode(f, &mut buf).unwrap();
        messages.push((i as i32 % 2, buf));
    }
    // The same conversation as older enrichers wrote it: versions 1 and 2.
    let mut v1 = flows[0].clone();
    v1.host = "down-v1".into();
    messages.push((1, old_message(&v1, ENRICHED_FLOW_V1_AVSC)));
    let mut v2 = flows[0].clone();
    v2.host = "down-v2".into();
    messages.push((0, old_message(&v2, ENRICHED_FLOW_V2_AVSC)));
    let producer: FutureProducer = config.kafka.producer_config().create().unwrap();
    for (partition, payload) in &messages {
        producer
            .send(
                FutureRecord::<str, [u8]>::to(&topic)
                    .partition(*partition)
                    .key("k")
                    .payload(payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let foreign = producer
        .send(
            FutureRecord::<str, [u8]>::to(&topic)
                .partition(1)
                .key("k")
                .payload(b"{\"not\": \"avro\"}"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();

    let shutdown = Shutdown::new();
    let sink = tokio::spawn(flowlens_sink::run(config.clone(), shutdown.clone()));
    let start = Instant::now();
    while http(chdb.port, "POST", "/", "SELECT count() FROM flows")
        .1
        .trim()
        != messages.len().to_string()
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "rows never arrived"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shutdown.trigger();
    sink.await.unwrap().unwrap();
    let (status, body) = http(
        chdb.port,
        "POST",
        "/?output_format_json_quote_64bit_integers=0",
        "SELECT * EXCEPT (origin_stream, kafka_stream), toUnixTimestamp64Nano(time_flow_start) AS time_flow_start_ns, \
         toUnixTimestamp64Nano(time_flow_end) AS time_flow_end_ns, \
         toUnixTimestamp64Nano(time_exported) AS time_exported_ns, \
         lower(hex(origin_stream)) AS origin_stream_hex, lower(hex(kafka_stream)) AS kafka_stream_hex \
         FROM flows FORMAT JSONEachRow",
    );
    assert_eq!(status, 200, "{body}");
    let rows: BTreeMap<(i64, i64), Map<String, Json>> = body
        .lines()
        .map(|l| {
            let row: Map<String, Json> = serde_json::from_str(l).unwrap();
            let key = (
                row["kafka_partition"].as_i64().unwrap(),
                row["kafka_offset"].as_i64().unwrap(),
            );
            (key, row)
        })
        .collect();
    assert_eq!(rows.len(), messages.len());

    let schemas_dir = repo_root().join("schemas/avro");
    let python = consume(
        Command::new(CONSUMER_PYTHON)
            .arg(repo_root().join("consumers/python/flowlens_consume.py"))
            .args(["--brokers", &tansu.broker(), "--topic", &topic])
            .arg("--schemas")
            .arg(&schemas_dir),
    );
    let rust = consume(Command::new(RUST_CONSUMER).args([
        "--brokers",
        &tansu.broker(),
        "--topic",
        &topic,
    ]));
    let foreign_at = format!("{topic}/1@{}", foreign.offset);
    for (who, (_, stderr, code)) in [("python", &python), ("rust", &rust)] {
        assert_eq!(
            *code,
            Some(3),
            "{who}: the foreign message makes exit code 3: {stderr}"
        );
        assert!(
            stderr.contains(&foreign_at),
            "{who} names {foreign_at}: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{who}: {stderr}");
    }
    assert_eq!(
        python.0, rust.0,
        "the Python and Rust consumers print the same"
    );
    assert_eq!(python.0.len(), messages.len(), "every record decoded");
    let mut versions = BTreeMap::new();
    for (key, line) in &python.0 {
        let row = rows
            .get(key)
            .unwrap_or_else(|| panic!("no row for {key:?}"));
        let record = line["record"].as_object().unwrap();
        let diff = differences(record, row);
        assert!(
            diff.is_empty(),
            "{key:?} {}:\n{}",
            record["host"],
            diff.join("\n")
        );
        *versions
            .entry(line["writer"]["file"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    let expected: BTreeMap<String, i32> = [
        ("avro/enriched_flow.avsc".to_string(), 3),
        ("avro/history/enriched_flow.v1.avsc".to_string(), 1),
        ("avro/history/enriched_flow.v2.avsc".to_string(), 1),
    ]
    .into();
    assert_eq!(versions, expected);
}
