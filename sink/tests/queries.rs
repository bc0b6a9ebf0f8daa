//! Every query in sql/queries/ on pipeline data: a designed set of EnrichedFlow records goes
//! through Kafka (tansu) and the real sink into ClickHouse (26.9 engine behind the chdb
//! front), migrations and materialized views included; then each query file is sent as is,
//! with its parameters, and its TSV result compared exactly with what the records imply.
//!
//! Needs /opt/flowlens-venv; `FLOWLENS_SKIP_CHDB=1` skips.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use flowlens_runtime::kafka::KafkaConfig;
use flowlens_runtime::testkit::{
    http, repo_root, require, unique, Chdb, Tansu, TANSU, VENV_PYTHON,
};
use flowlens_runtime::Shutdown;
use flowlens_schemas::{ip_to_v6, Direction, EnrichedFlow, RawFlow};
use flowlens_sink::config::{BatchConfig, ClickHouseConfig, SinkConfig};
use flowlens_sink::Config;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// One end of a flow: address and Kubernetes metadata ("" = unknown).
#[derive(Clone, Copy)]
struct End {
    ip: &'static str,
    pod: &'static str,
    ns: &'static str,
    workload: &'static str,
    kind: &'static str,
    service: &'static str,
    node: &'static str,
}

const WEB1: End = End {
    ip: "10.1.0.11",
    pod: "web-1",
    ns: "shop",
    workload: "web",
    kind: "Deployment",
    service: "",
    node: "n1",
};
const WEB2: End = End {
    ip: "10.1.0.12",
    pod: "web-2",
    node: "n2",
    ..WEB1
};
const API1: End = End {
    ip: "10.1.0.21",
    pod: "api-1",
    ns: "shop",
    workload: "api",
    kind: "Deployment",
    service: "api",
    node: "n1",
};
const PG0: End = End {
    ip: "10.2.0.5",
    pod: "pg-0",
    ns: "db",
    workload: "pg",
    kind: "StatefulSet",
    service: "pg",
    node: "n2",
};
const EXTERNAL: End = End {
    ip: "203.0.113.9",
    pod: "",
    ns: "",
    workload: "",
    kind: "",
    service: "",
    node: "",
};

#[allow(clippy::too_many_arguments)]
fn flow(
    src: End,
    dst: End,
    proto: i32,
    dst_port: i32,
    bytes: i64,
    packets: i64,
    tcp_flags: i32,
    if_name: &str,
    direction: Direction,
    end_ns: i64,
) -> EnrichedFlow {
    let ip = |s: &str| ip_to_v6(s.parse::<IpAddr>().unwrap());
    let mut f = EnrichedFlow::from_raw(RawFlow {
        host: "node-a".into(),
        ifindex: 2,
        direction,
        time_flow_start_ns: end_ns - 1_000_000_000,
        time_flow_end_ns: end_ns,
        time_exported_ns: end_ns + 500_000_000,
        etype: 0x0800,
        vlan_id: 0,
        proto,
        src_addr: ip(src.ip),
        dst_addr: ip(dst.ip),
        src_port: 40_000,
        dst_port,
        icmp_type: 0,
        icmp_code: 0,
        tcp_flags,
        packets,
        bytes,
        sampling_rate: 1,
        ..Default::default()
    });
    f.if_name = if_name.into();
    f.if_kind = "veth".into();
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    f.src_pod = opt(src.pod);
    f.src_namespace = opt(src.ns);
    f.src_workload = opt(src.workload);
    f.src_workload_kind = opt(src.kind);
    f.src_service = opt(src.service);
    f.src_node = opt(src.node);
    f.dst_pod = opt(dst.pod);
    f.dst_namespace = opt(dst.ns);
    f.dst_workload = opt(dst.workload);
    f.dst_workload_kind = opt(dst.kind);
    f.dst_service = opt(dst.service);
    f.dst_node = opt(dst.node);
    // EnrichedFlow v2 (migration 0003), as the enricher sets them: the source is the client,
    // locality from the nodes (no node on one side: outside the cluster), UIDs of known pods,
    // the interface's pod is the end on this side of the veth.
    f.src_role = Some("client".into());
    f.dst_role = Some("server".into());
    f.locality = Some(
        if src.node.is_empty() || dst.node.is_empty() {
            "external"
        } else if src.node == dst.node {
            "node"
        } else {
            "cluster"
        }
        .into(),
    );
    let uid = |e: End| (!e.pod.is_empty()).then(|| format!("uid-{}", e.pod));
    f.src_pod_uid = uid(src);
    f.dst_pod_uid = uid(dst);
    let local = if direction == Direction::Egress {
        src
    } else {
        dst
    };
    f.if_pod = opt(local.pod);
    f.if_namespace = opt(local.ns);
    f
}

/// The records: (src, dst, proto, port, bytes, packets, flags, interface, direction).
fn records(end_ns: i64) -> Vec<EnrichedFlow> {
    use Direction::{Egress, Ingress};
    const SYN: i32 = 0x02;
    const PSH_ACK: i32 = 0x18;
    const RST_ACK: i32 = 0x14;
    vec![
        flow(WEB1, API1, 6, 8080, 1000, 10, SYN, "eth0", Egress, end_ns),
        flow(
            WEB1, API1, 6, 8080, 3000, 20, PSH_ACK, "eth0", Egress, end_ns,
        ),
        flow(WEB2, API1, 6, 8080, 2000, 5, SYN, "eth0", Egress, end_ns),
        flow(API1, PG0, 6, 5432, 5000, 40, SYN, "eth1", Egress, end_ns),
        flow(
            EXTERNAL, WEB1, 6, 443, 700, 7, RST_ACK, "eth0", Ingress, end_ns,
        ),
        flow(WEB2, PG0, 17, 5432, 300, 3, 0, "eth1", Egress, end_ns),
    ]
}

fn run_query(chdb: &Chdb, file: &str, params: &str) -> String {
    let sql = std::fs::read_to_string(repo_root().join("sql/queries").join(file)).unwrap();
    let (status, body) = http(
        chdb.port,
        "POST",
        &format!("/?{params}&default_format=TSV"),
        &sql,
    );
    assert_eq!(status, 200, "{file}: {body}");
    body
}

fn tsv(rows: &[&str]) -> String {
    rows.iter().map(|r| format!("{r}\n")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_on_pipeline_data() {
    if require(VENV_PYTHON, "CHDB") || require(TANSU, "CHDB") {
        return;
    }
    let chdb = Chdb::start();
    let tansu = Tansu::start();
    let name = unique("queries");
    let mut kafka = KafkaConfig {
        brokers: vec![tansu.broker()],
        client_id: name.clone(),
        partitions: 1,
        ..Default::default()
    };
    kafka.topics.enriched_flows = format!("{name}.enriched");
    kafka.topics.dead_letter = format!("{name}.dlq");
    let config = Config {
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
        .ensure_topics(&[
            (&config.kafka.topics.enriched_flows, false),
            (&config.kafka.topics.dead_letter, false),
        ])
        .await
        .unwrap();
    // Two minutes ago: inside every query window, in one minute and one hour bucket.
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let end_ns = (now_s - 120) * 1_000_000_000;
    let producer: FutureProducer = config.kafka.producer_config().create().unwrap();
    let flows = records(end_ns);
    for (i, f) in flows.iter().enumerate() {
        let mut buf = Vec::new();
        flowlens_schemas::encode(f, &mut buf).unwrap();
        producer
            .send(
                FutureRecord::to(&config.kafka.topics.enriched_flows)
                    .key(&i.to_string())
                    .payload(&buf),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let shutdown = Shutdown::new();
    let sink = tokio::spawn(flowlens_sink::run(config.clone(), shutdown.clone()));
    let start = Instant::now();
    while http(chdb.port, "POST", "/", "SELECT count() FROM flows")
        .1
        .trim()
        != flows.len().to_string()
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "rows never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.trigger();
    sink.await.unwrap().unwrap();
    let p = "param_minutes=60&param_limit=20";

    assert_eq!(
        run_query(&chdb, "top_talkers.sql", p),
        tsv(&[
            "10.1.0.21\t10.2.0.5\t5000\t40\t1\t[6]\tapi-1\tpg-0",
            "10.1.0.11\t10.1.0.21\t4000\t30\t2\t[6]\tweb-1\tapi-1",
            "10.1.0.12\t10.1.0.21\t2000\t5\t1\t[6]\tweb-2\tapi-1",
            "203.0.113.9\t10.1.0.11\t700\t7\t1\t[6]\t\tweb-1",
            "10.1.0.12\t10.2.0.5\t300\t3\t1\t[17]\tweb-2\tpg-0",
        ])
    );
    // 60 minutes: bytes * 8 / 3600 s.
    assert_eq!(
        run_query(&chdb, "traffic_per_interface.sql", p),
        tsv(&[
            "node-a\teth0\tingress\t700\t7\t1\t1.6",
            "node-a\teth0\tegress\t6000\t35\t3\t13.3",
            "node-a\teth1\tegress\t5300\t43\t2\t11.8",
        ])
    );
    assert_eq!(
        run_query(&chdb, "pod_traffic_matrix.sql", p),
        tsv(&[
            "shop/api-1\tdb/pg-0\t5000\t40\t1",
            "shop/web-1\tshop/api-1\t4000\t30\t2",
            "shop/web-2\tshop/api-1\t2000\t5\t1",
            "(unknown)\tshop/web-1\t700\t7\t1",
            "shop/web-2\tdb/pg-0\t300\t3\t1",
        ])
    );
    assert_eq!(
        run_query(&chdb, "service_traffic_matrix.sql", p),
        tsv(&[
            "shop/web\tshop/api\t6000\t35\t3",
            "shop/api\tdb/pg\t5000\t40\t1",
            "(external)\tshop/web\t700\t7\t1",
            "shop/web\tdb/pg\t300\t3\t1",
        ])
    );
    // retransmits/drops are 0 until the collector reports them: the reset is the hot spot.
    assert_eq!(
        run_query(&chdb, "hot_spots.sql", p),
        tsv(&["node-a\teth0\t203.0.113.9\tshop/web\t0\t0\t1\t7\t0"])
    );
    // SYN without ACK: web-1 and web-2 -> api (2), api-1 -> pg (1); 60 minutes.
    assert_eq!(
        run_query(&chdb, "new_connections_per_service.sql", p),
        tsv(&["shop/api\t2\t0.033\t2", "db/pg\t1\t0.017\t1"])
    );
    assert_eq!(
        run_query(&chdb, "traffic_by_locality.sql", p),
        tsv(&[
            "cluster\tcross-namespace\t5000\t40\t1",
            "cluster\tsame-namespace\t2000\t5\t1",
            "external\tunknown\t700\t7\t1",
            "node\tcross-namespace\t300\t3\t1",
            "node\tsame-namespace\t4000\t30\t2",
        ])
    );
    // The version 2 columns (migration 0003) in `flows` and the locality of both k8s rollups.
    let (status, body) = http(
        chdb.port,
        "POST",
        "/?default_format=TSV",
        "SELECT locality, src_role, dst_role, src_pod_uid, dst_pod_uid, if_pod, if_namespace, \
         sum(bytes) FROM flows GROUP BY ALL ORDER BY ALL",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        tsv(&[
            "cluster\tclient\tserver\tuid-api-1\tuid-pg-0\tapi-1\tshop\t5000",
            "cluster\tclient\tserver\tuid-web-2\tuid-api-1\tweb-2\tshop\t2000",
            "external\tclient\tserver\t\tuid-web-1\tweb-1\tshop\t700",
            "node\tclient\tserver\tuid-web-1\tuid-api-1\tweb-1\tshop\t4000",
            "node\tclient\tserver\tuid-web-2\tuid-pg-0\tweb-2\tshop\t300",
        ])
    );
    for rollup in ["flows_k8s_1m", "flows_k8s_1h"] {
        let (status, body) = http(
            chdb.port,
            "POST",
            "/?default_format=TSV",
            &format!(
                "SELECT locality, sum(bytes) FROM {rollup} GROUP BY locality ORDER BY locality"
            ),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body,
            tsv(&["cluster\t7000", "external\t700", "node\t4300"]),
            "{rollup}"
        );
    }
    assert_eq!(
        run_query(&chdb, "topology_edges.sql", p),
        tsv(&[
            "shop/web\tDeployment\tshop/api\tDeployment\t6000\t35\t3\t[6]\t[8080]",
            "shop/api\tDeployment\tdb/pg\tStatefulSet\t5000\t40\t1\t[6]\t[5432]",
            "203.0.113.9\tIP\tshop/web\tDeployment\t700\t7\t1\t[6]\t[443]",
            "shop/web\tDeployment\tdb/pg\tStatefulSet\t300\t3\t1\t[17]\t[5432]",
        ])
    );
    let hour = (end_ns / 1_000_000_000) / 3600 * 3600;
    let hour = http(
        chdb.port,
        "POST",
        "/",
        &format!("SELECT toString(toDateTime({hour}))"),
    )
    .1;
    let hour = hour.trim();
    assert_eq!(
        run_query(&chdb, "traffic_per_interface_hourly.sql", "param_hours=3"),
        tsv(&[
            &format!("{hour}\tnode-a\teth0\tingress\t700\t7\t1"),
            &format!("{hour}\tnode-a\teth0\tegress\t6000\t35\t3"),
            &format!("{hour}\tnode-a\teth1\tegress\t5300\t43\t2"),
        ])
    );
}

/// sql/security/users.sql (values substituted as `envsubst` would) is valid ClickHouse 26.9
/// SQL, statement by statement. chdb has no access-control storage, so the grants cannot be
/// executed here: this checks the syntax with `formatQuery`, nothing more.
#[test]
fn security_sql_parses() {
    if require(VENV_PYTHON, "CHDB") {
        return;
    }
    let chdb = Chdb::start();
    let mut sql = std::fs::read_to_string(repo_root().join("sql/security/users.sql")).unwrap();
    for (var, value) in [
        ("FLOWLENS_DB", "flowlens"),
        ("FLOWLENS_SINK_PASSWORD_SHA256", &"a".repeat(64)[..]),
        ("FLOWLENS_ANALYST_PASSWORD_SHA256", &"b".repeat(64)[..]),
        ("FLOWLENS_MIGRATOR_PASSWORD_SHA256", &"c".repeat(64)[..]),
    ] {
        sql = sql.replace(&format!("${{{var}}}"), value);
    }
    assert!(!sql.contains("${"), "unsubstituted variable");
    let statements = flowlens_sink::migrate::split_statements(&sql);
    assert_eq!(statements.len(), 16);
    for s in &statements {
        let quoted = s.replace('\\', "\\\\").replace('\'', "\\'");
        let (status, body) = http(
            chdb.port,
            "POST",
            "/",
            &format!("SELECT formatQuery('{quoted}')"),
        );
        assert_eq!(status, 200, "{s}: {body}");
    }
}
