//! Every query subcommand as a binary against ClickHouse 26.9 (chdb front, with a user and a
//! password) holding rows the real sink wrote from designed records (tansu, sink in process):
//! for each file of sql/queries, `flowlens <file-name> -o json` must print exactly the rows the
//! same file gives when sent to ClickHouse directly with the same parameters (ClickHouse is the
//! oracle), and no file may come back empty on these records. Also: the table output and its
//! sampling note, the short aliases, the environment, and errors naming what failed.
//!
//! Needs /opt/flowlens-venv; `FLOWLENS_SKIP_CHDB=1` skips.

use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flowlens_runtime::kafka::KafkaConfig;
use flowlens_runtime::Shutdown;
use flowlens_schemas::{ip_to_v6, EnrichedFlow, RawFlow};
use flowlens_sink::config::{BatchConfig, ClickHouseConfig, SinkConfig};
use flowlens_testkit::{http, repo_root, require, unique, Chdb, Tansu, TANSU, VENV_PYTHON};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value as Json;

const BIN: &str = env!("CARGO_BIN_EXE_flowlens");
const USER: &str = "analyst";
const PASSWORD: &str = "s3cret";

fn some(s: &str) -> Option<String> {
    Some(s.into())
}

fn records(end_ns: i64) -> Vec<EnrichedFlow> {
    let base = |host: &str, proto: i32, src: &str, dst: &str, dport: i32| {
        EnrichedFlow::from_raw(RawFlow {
            host: host.into(),
            ifindex: 2,
            time_flow_start_ns: end_ns - 2_000_000_000,
            time_flow_end_ns: end_ns,
            time_exported_ns: end_ns + 1_000_000,
            etype: 0x0800,
            proto,
            src_addr: ip_to_v6(src.parse().unwrap()),
            dst_addr: ip_to_v6(dst.parse().unwrap()),
            src_port: 40_000,
            dst_port: dport,
            packets: 10,
            bytes: 1_500,
            reverse_packets: 8,
            reverse_bytes: 900,
            sampling_rate: 1,
            ..Default::default()
        })
    };
    let mut web = base("q-node-1", 6, "10.1.0.11", "10.1.0.21", 8_080);
    web.if_name = "eth0".into();
    web.src_namespace = some("shop");
    web.src_pod = some("web-1");
    web.src_workload = some("web");
    web.src_workload_kind = some("Deployment");
    web.dst_namespace = some("shop");
    web.dst_pod = some("api-1");
    web.dst_workload = some("api");
    web.dst_workload_kind = some("Deployment");
    web.dst_service = some("api");
    web.locality = some("cluster");
    web.tcp_flags = 0x02 | 0x10 | 0x01;
    web.reverse_tcp_flags = 0x12 | 0x01;
    web.end_reason = "fin".into();
    web.rtt_ns = 2_000_000;
    web.retransmits = 3;
    web.http = Some(flowlens_schemas::Http {
        requests: 4,
        responses: 4,
        status_2xx: 2,
        status_4xx: 1,
        status_5xx: 1,
        answered: 4,
        latency_sum_ns: 37_000_000,
        latency_max_ns: 30_000_000,
        latencies_us: vec![1_000, 2_000, 30_000, 4_000],
        last_method: some("GET"),
        last_path: some("/api/cart"),
        last_status: 503,
        ..Default::default()
    });
    let mut dns = base("q-node-1", 17, "10.1.0.12", "10.1.0.53", 53);
    dns.if_name = "eth0".into();
    dns.src_namespace = some("kube-system");
    dns.src_pod = some("coredns-1");
    dns.dst_namespace = some("kube-system");
    dns.dst_pod = some("coredns-2");
    dns.dst_service = some("kube-dns");
    dns.locality = some("node");
    dns.drops = 2;
    dns.drop_bytes = 160;
    dns.drop_reason = "NETFILTER_DROP".into();
    dns.dns = Some(flowlens_schemas::Dns {
        queries: 5,
        responses: 5,
        noerror: 3,
        nxdomain: 1,
        servfail: 1,
        answered: 5,
        latency_sum_ns: 11_800_000,
        latency_max_ns: 9_000_000,
        latencies_us: vec![300, 500, 800, 1_200, 9_000],
        last_query: some("api.shop.svc.cluster.local"),
        last_query_type: 1,
        ..Default::default()
    });
    let mut out = base("q-node-2", 6, "10.1.0.13", "203.0.113.9", 443);
    out.if_name = "eth1".into();
    out.src_namespace = some("shop");
    out.src_pod = some("web-2");
    out.locality = some("external");
    out.tcp_flags = 0x02 | 0x04;
    out.sampling_rate = 10;
    vec![web, dns, out]
}

fn flowlens(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "flowlens failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn json_lines(text: &str) -> Vec<Json> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_query_subcommand_prints_what_clickhouse_answers() {
    if require(VENV_PYTHON, "CHDB") || require(TANSU, "CHDB") {
        return;
    }
    let chdb = Chdb::start_with_auth(USER, PASSWORD);
    let tansu = Tansu::start();
    let name = unique("cliq");
    let mut kafka = KafkaConfig {
        brokers: vec![tansu.broker()],
        client_id: name.clone(),
        partitions: 1,
        ..Default::default()
    };
    kafka.topics.enriched_flows = format!("{name}.enriched");
    kafka.topics.dead_letter = format!("{name}.dlq");
    let config = flowlens_sink::Config {
        kafka,
        clickhouse: ClickHouseConfig {
            url: chdb.url(),
            user: USER.into(),
            password: flowlens_runtime::Secret::new(PASSWORD),
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
        .ensure_topics(&[
            (&config.kafka.topics.enriched_flows, false),
            (&config.kafka.topics.dead_letter, false),
        ])
        .await
        .unwrap();
    // Two minutes ago: inside every window below.
    let now_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let flows = records((now_s - 120) * 1_000_000_000);
    let producer: FutureProducer = config.kafka.producer_config().create().unwrap();
    for f in &flows {
        let mut buf = Vec::new();
        flowlens_schemas::encode(f, &mut buf).unwrap();
        producer
            .send(
                FutureRecord::to(&config.kafka.topics.enriched_flows)
                    .key("k")
                    .payload(&buf),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let shutdown = Shutdown::new();
    let sink = tokio::spawn(flowlens_sink::run(config.clone(), shutdown.clone()));
    let auth = format!("user={USER}&password={PASSWORD}");
    let start = Instant::now();
    while http(
        chdb.port,
        "POST",
        &format!("/?{auth}"),
        "SELECT count() FROM flows",
    )
    .1
    .trim()
        != flows.len().to_string()
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "rows never arrived"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shutdown.trigger();
    sink.await.unwrap().unwrap();

    let url = chdb.url();
    let connection = ["--clickhouse", &url, "--user", USER, "--password", PASSWORD];
    let mut files: Vec<_> = std::fs::read_dir(repo_root().join("sql/queries"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "{files:?}");
    for path in &files {
        let sql = std::fs::read_to_string(path).unwrap();
        let stem = path.file_stem().unwrap().to_str().unwrap();
        let mut args = vec![stem.replace('_', "-"), "-o".into(), "json".into()];
        let mut params = String::new();
        if sql.contains("{minutes:UInt32}") {
            args.extend(["--since".into(), "1h".into()]);
            params.push_str("&param_minutes=60");
        }
        if sql.contains("{hours:UInt32}") {
            args.extend(["--since".into(), "3h".into()]);
            params.push_str("&param_hours=3");
        }
        if sql.contains("{limit:UInt32}") {
            args.extend(["--limit".into(), "20".into()]);
            params.push_str("&param_limit=20");
        }
        // --namespace defaults to every namespace (the empty string); one namespace below.
        let namespaced = sql.contains("{namespace:String}");
        if namespaced {
            params.push_str("&param_namespace=");
        }
        let (status, direct) = http(
            chdb.port,
            "POST",
            &format!(
                "/?{auth}{params}&default_format=JSONEachRow&output_format_json_quote_64bit_integers=0"
            ),
            &sql,
        );
        assert_eq!(status, 200, "{stem}: {direct}");
        let expected = json_lines(&direct);
        assert!(
            !expected.is_empty(),
            "{stem}: no rows on the designed records"
        );
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend_from_slice(&connection);
        let got = json_lines(&stdout(&flowlens(&all)));
        assert_eq!(got, expected, "{stem}");
        if namespaced {
            let (status, direct) = http(
                chdb.port,
                "POST",
                &format!(
                    "/?{auth}{params}shop&default_format=JSONEachRow&output_format_json_quote_64bit_integers=0"
                ),
                &sql,
            );
            assert_eq!(status, 200, "{stem}: {direct}");
            all.extend_from_slice(&["--namespace", "shop"]);
            let got = json_lines(&stdout(&flowlens(&all)));
            assert_eq!(got, json_lines(&direct), "{stem} --namespace shop");
        }
    }

    // One namespace: only the DNS conversation has an end in kube-system.
    let mut args = vec!["top", "--namespace", "kube-system", "-o", "json"];
    args.extend_from_slice(&connection);
    let rows = json_lines(&stdout(&flowlens(&args)));
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["src"], "10.1.0.12", "{rows:?}");

    // The alias, the table, its sampling note; the environment stands for the flags.
    let table = Command::new(BIN)
        .args(["top", "--since", "30m"])
        .env("FLOWLENS_CLICKHOUSE_URL", &url)
        .env("FLOWLENS_CLICKHOUSE_USER", USER)
        .env("FLOWLENS_CLICKHOUSE_PASSWORD", PASSWORD)
        .env("FLOWLENS_CLICKHOUSE_DATABASE", "default")
        .output()
        .unwrap();
    let text = stdout(&table);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("src") && lines[0].contains("max_sampling_rate"),
        "{text}"
    );
    // 203.0.113.9 first: (1500 + 900) x 10 bytes estimated, then the two 1:1 rows.
    assert!(
        lines[1].starts_with("10.1.0.13") && lines[1].contains("24000"),
        "{text}"
    );
    assert_eq!(lines.len(), 5, "{text}");
    assert!(lines[4].contains("up to 1:10"), "{text}");
    let one = json_lines(&stdout(&flowlens(
        &[
            &["drops", "--limit", "1", "-o", "json"][..],
            &connection[..],
        ]
        .concat(),
    )));
    assert_eq!(one.len(), 1);
    assert_eq!(one[0]["drop_reason"], "NETFILTER_DROP");
    assert_eq!(one[0]["drops"], 2);

    // Failures name what failed: wrong password, unknown database, unreachable server.
    let wrong = flowlens(&[
        "top",
        "--clickhouse",
        &url,
        "--user",
        USER,
        "--password",
        "nope",
    ]);
    assert_eq!(wrong.status.code(), Some(1));
    let e = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        e.contains("Authentication failed") && e.contains(&url),
        "{e}"
    );
    let db = flowlens(&[&["top", "--database", "nosuchdb"][..], &connection[..]].concat());
    assert_eq!(db.status.code(), Some(1));
    let e = String::from_utf8_lossy(&db.stderr);
    assert!(e.contains("nosuchdb"), "{e}");
    let down = flowlens(&["tcp-health", "--clickhouse", "http://127.0.0.1:1"]);
    assert_eq!(down.status.code(), Some(1));
    let e = String::from_utf8_lossy(&down.stderr);
    assert!(
        e.contains("http://127.0.0.1:1") && e.contains("tcp_health.sql"),
        "{e}"
    );
    let bad = flowlens(&["top", "--since", "soon"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("`soon`"));
}
