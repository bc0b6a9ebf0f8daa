//! Every query in sql/queries/ and every ClickHouse panel of the Grafana dashboards on
//! pipeline data: a designed set of EnrichedFlow records goes through Kafka (tansu) and the
//! real sink into ClickHouse (26.9 engine behind the chdb front), migrations and materialized
//! views included; then each query file is sent as is, with its parameters, each panel's query
//! with its Grafana macros replaced, and the result compared exactly with what the records
//! imply.
//! The records are conversations (EnrichedFlow v3): most have reverse traffic, three are
//! duplicates (the same packets on a pod's veth, a tunnel's outer record) that totals must
//! not count, some carry RTT, retransmits, drops, processes and a tunnel. Three were counted
//! under 1:100 sampling: every bytes/packets total must be 100 x their counted values, while
//! their retransmits, drops and connections opened count as they are. Some carry DNS and
//! HTTP/1.x statistics (EnrichedFlow v5), duplicates included, for the DNS and HTTP queries and
//! panels.
//!
//! Needs /opt/flowlens-venv; `FLOWLENS_SKIP_CHDB=1` skips.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use flowlens_runtime::kafka::KafkaConfig;
use flowlens_runtime::Shutdown;
use flowlens_schemas::{ip_to_v6, Direction, EnrichedFlow, RawFlow};
use flowlens_sink::config::{BatchConfig, ClickHouseConfig, SinkConfig};
use flowlens_sink::Config;
use flowlens_testkit::{
    dashboard_queries, http, repo_root, require, unique, Chdb, Tansu, TANSU, VENV_PYTHON,
};
use rdkafka::producer::{FutureProducer, FutureRecord};

mod records;
use records::*;

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

fn tsv<S: AsRef<str>>(rows: &[S]) -> String {
    rows.iter().map(|r| format!("{}\n", r.as_ref())).collect()
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
    // Every namespace (the empty string).
    let p = "param_minutes=60&param_limit=20&param_namespace=";

    // Both directions, duplicates (#7, #8, #10) left out; #9 estimated: (450 + 3000) x 100
    // bytes, (3 + 2) x 100 packets; #11: 60 x 100 bytes, 100 packets.
    assert_eq!(
        run_query(&chdb, "top_talkers.sql", p),
        tsv(&[
            "10.1.0.11\t10.2.0.5\t345000\t500\t1\t[6]\tweb-1\tpg-0\t100",
            "10.1.0.21\t10.2.0.5\t25000\t70\t1\t[6]\tapi-1\tpg-0\t1",
            "10.1.0.11\t10.1.0.21\t8500\t43\t2\t[6]\tweb-1\tapi-1\t1",
            "10.1.0.12\t10.1.0.21\t8000\t105\t2\t[6]\tweb-2\tapi-1\t100",
            "10.1.0.12\t10.2.0.5\t1200\t6\t1\t[17]\tweb-2\tpg-0\t1",
            "203.0.113.9\t10.1.0.11\t1000\t10\t1\t[6]\t\tweb-1\t1",
        ])
    );
    // Per interface and direction: A->B under the record's direction, B->A under the other;
    // duplicates included and shown; #9 and #10 estimated (eth1 and vethweb1: + 45000 B, 300 p
    // one way, + 300000 B, 200 p the other). Then the highest sampling rate.
    let per_interface = [
        ("node-a\teth0\tingress\t5200\t20\t1\t0", "1"),
        ("node-a\teth0\tegress\t6300\t38\t3\t0", "1"),
        ("node-a\teth1\tingress\t342900\t263\t0\t22000", "100"),
        ("node-a\teth1\tegress\t55800\t383\t4\t5500", "100"),
        ("node-a\tvethweb1\tingress\t46000\t310\t2\t46000", "100"),
        ("node-a\tvethweb1\tegress\t304000\t208\t0\t304000", "100"),
        ("node-b\teth0\tegress\t6000\t100\t1\t0", "100"),
    ];
    // 60 minutes: bytes * 8 / 3600 s.
    let bits_per_s = ["11.6", "14", "762", "124", "102.2", "675.6", "13.3"];
    assert_eq!(
        run_query(&chdb, "traffic_per_interface.sql", p),
        tsv(&per_interface
            .iter()
            .zip(bits_per_s)
            .map(|((row, rate), bits)| format!("{row}\t{bits}\t{rate}"))
            .collect::<Vec<_>>())
    );
    assert_eq!(
        run_query(&chdb, "pod_traffic_matrix.sql", p),
        tsv(&[
            "shop/web-1\tdb/pg-0\t345000\t500\t1\t100",
            "shop/api-1\tdb/pg-0\t25000\t70\t1\t1",
            "shop/web-1\tshop/api-1\t8500\t43\t2\t1",
            "shop/web-2\tshop/api-1\t8000\t105\t2\t100",
            "shop/web-2\tdb/pg-0\t1200\t6\t1\t1",
            "(unknown)\tshop/web-1\t1000\t10\t1\t1",
        ])
    );
    // shop/web -> db/pg: #6 (1200 B, 6 p) and #9 (345000 B, 500 p estimated); shop/web ->
    // shop/api: #1, #2, #3 and #11 (6000 B, 100 p estimated).
    assert_eq!(
        run_query(&chdb, "service_traffic_matrix.sql", p),
        tsv(&[
            "shop/web\tdb/pg\t346200\t506\t2\t100",
            "shop/api\tdb/pg\t25000\t70\t1\t1",
            "shop/web\tshop/api\t16500\t148\t4\t100",
            "(external)\tshop/web\t1000\t10\t1\t1",
        ])
    );
    // Retransmits and drops (#1, #4, #5, #9); the reset came from B (#5). #9's retransmit and
    // 4 drops count as they are, its packets are estimated: (1 + 4) / (500 + #6's 6).
    assert_eq!(
        run_query(&chdb, "hot_spots.sql", p),
        tsv(&[
            "node-a\teth1\tshop/api\tdb/pg\t3\t2\t0\t70\t0.0714\t1",
            "node-a\teth1\tshop/web\tdb/pg\t1\t4\t0\t506\t0.0099\t100",
            "node-a\teth0\t203.0.113.9\tshop/web\t0\t1\t1\t10\t0.1\t1",
            "node-a\teth0\tshop/web\tshop/api\t1\t0\t0\t48\t0.0208\t1",
        ])
    );
    // Connections opened by A: #1, #4 and #9 (the handshake in the record), #3 and #11 (a bare
    // SYN); the duplicates #7 of #1 and #10 of #9 are not counted again, and a sampled
    // record's connection is not multiplied. 60 minutes.
    assert_eq!(
        run_query(&chdb, "new_connections_per_service.sql", p),
        tsv(&["shop/api\t3\t0.05\t2\t100", "db/pg\t2\t0.033\t2\t100"])
    );
    assert_eq!(
        run_query(&chdb, "traffic_by_locality.sql", p),
        tsv(&[
            "cluster\tcross-namespace\t370000\t570\t2\t100",
            "cluster\tsame-namespace\t8000\t105\t2\t100",
            "external\tunknown\t1000\t10\t1\t1",
            "node\tcross-namespace\t1200\t6\t1\t1",
            "node\tsame-namespace\t8500\t43\t2\t1",
        ])
    );
    // RTT percentiles (exact: the value at position level * n of the sorted RTTs), retransmit
    // ratio over both directions' packets (db/pg: 4 / (70 + 500 estimated), shop/api:
    // 1 / (48 + 100 estimated)), drop reasons, resets, per server (side B).
    assert_eq!(
        run_query(&chdb, "tcp_health.sql", p),
        tsv(&[
            "db/pg\t2\t2\t3\t3\t3\t4\t0.007\t6\t['NETFILTER_DROP']\t0\t100",
            "shop/api\t4\t3\t4\t4\t4\t1\t0.0068\t0\t[]\t0\t100",
            "shop/web\t1\t0\t0\t0\t0\t0\t0\t1\t['TCP_INVALID_SEQUENCE']\t1\t1",
        ])
    );
    // Drops as counted, also on the sampled #9: 2 + 4 packets, 3000 + 6000 bytes.
    assert_eq!(
        run_query(&chdb, "drops_by_reason.sql", p),
        tsv(&[
            "node-a\tNETFILTER_DROP\tdb/pg\t6\t9000\t2",
            "node-a\tTCP_INVALID_SEQUENCE\tshop/web\t1\t60\t1",
        ])
    );
    // DNS errors per client pod and name: #1 + #2 (web-1 asking api.shop: 2 NXDOMAIN, 1
    // SERVFAIL), #9 (web-1, pg.db: 1 SERVFAIL, sampled but not multiplied), #3 (web-2,
    // metrics.example.com: 1 NXDOMAIN); #4's REFUSED and #5's other codes are no such error,
    // the duplicates #7 and #10 are not counted again.
    assert_eq!(
        run_query(&chdb, "dns_errors_by_name.sql", p),
        tsv(&[
            "shop\tweb-1\tapi.shop.svc.cluster.local\t2\t1\t5\t5\t2\t1",
            "shop\tweb-1\tpg.db.svc.cluster.local\t0\t1\t1\t1\t1\t100",
            "shop\tweb-2\tmetrics.example.com\t1\t0\t4\t1\t1\t1",
        ])
    );
    // DNS latency per client and resolver, exact percentiles (the value at position level * n
    // of the sorted latencies): shop/web -> shop/api holds #1, #2, #3: 800, 1200, 2000, 3000,
    // 5000, 40000 µs (p50 the 4th, p99 the 6th; mean 52 ms / 6); shop/web -> db/pg #6 and #9:
    // 600, 9000 (p50 and p99 the 2nd); shop/api -> db/pg #4; #5 answered nothing (no query).
    assert_eq!(
        run_query(&chdb, "dns_latency.sql", p),
        tsv(&[
            "shop/web\tshop/api\t9\t6\t3\t40\t8.667\t40\t1",
            "shop/web\tdb/pg\t2\t2\t9\t9\t4.8\t9\t100",
            "shop/api\tdb/pg\t1\t1\t0.1\t0.1\t0.1\t0.1\t1",
            "203.0.113.9\tshop/web\t0\t0\t0\t0\t0\t0\t1",
        ])
    );
    // HTTP errors per server pod and path: #1 + #3 (shop/api/api-1, /api/cart: 4xx 1 + 2, 5xx
    // 1; 4 + 2 requests and responses), #2 (/api/orders: one 5xx); #11's /api/cart request has
    // no error (left out), #5's 200 neither, the duplicate #7 is not counted again.
    assert_eq!(
        run_query(&chdb, "http_errors_by_path.sql", p),
        tsv(&[
            "shop\tapi\tapi-1\t/api/cart\t3\t1\t6\t6\t2\t1",
            "shop\tapi\tapi-1\t/api/orders\t0\t1\t3\t3\t1\t1",
        ])
    );
    // HTTP latency per server, exact percentiles: shop/api holds #1, #2, #3 and #11: 500, 1000,
    // 1500, 2000, 3000, 4000, 7000, 30000, 80000 µs (p50 the 5th, p99 the 9th; mean 129 ms /
    // 9), 10 requests (#11's sampled one not multiplied: max_sampling_rate 100), 9 responses of
    // which 3 4xx and 2 5xx; shop/web (#5, external -> web-1): one 250 µs answer, a 200.
    assert_eq!(
        run_query(&chdb, "http_latency.sql", p),
        tsv(&[
            "shop/api\t10\t9\t9\t3\t80\t14.333\t80\t0.5556\t100",
            "shop/web\t1\t1\t1\t0.25\t0.25\t0.25\t0.25\t0\t1",
        ])
    );
    // One namespace: the rows with either end in `db`, i.e. every conversation towards
    // db/pg-0, as the answers above show them (raw flows and the Kubernetes rollup alike).
    let db = "param_minutes=60&param_limit=20&param_namespace=db";
    assert_eq!(
        run_query(&chdb, "top_talkers.sql", db),
        tsv(&[
            "10.1.0.11\t10.2.0.5\t345000\t500\t1\t[6]\tweb-1\tpg-0\t100",
            "10.1.0.21\t10.2.0.5\t25000\t70\t1\t[6]\tapi-1\tpg-0\t1",
            "10.1.0.12\t10.2.0.5\t1200\t6\t1\t[17]\tweb-2\tpg-0\t1",
        ])
    );
    assert_eq!(
        run_query(&chdb, "service_traffic_matrix.sql", db),
        tsv(&[
            "shop/web\tdb/pg\t346200\t506\t2\t100",
            "shop/api\tdb/pg\t25000\t70\t1\t1",
        ])
    );
    assert_eq!(
        run_query(&chdb, "traffic_by_locality.sql", db),
        tsv(&[
            "cluster\tcross-namespace\t370000\t570\t2\t100",
            "node\tcross-namespace\t1200\t6\t1\t1",
        ])
    );
    assert_eq!(
        run_query(&chdb, "tcp_health.sql", db),
        tsv(&["db/pg\t2\t2\t3\t3\t3\t4\t0.007\t6\t['NETFILTER_DROP']\t0\t100"])
    );
    assert_eq!(
        run_query(&chdb, "dns_errors_by_name.sql", db),
        tsv(&["shop\tweb-1\tpg.db.svc.cluster.local\t0\t1\t1\t1\t1\t100"])
    );
    assert_eq!(
        run_query(&chdb, "dns_latency.sql", db),
        tsv(&[
            "shop/web\tdb/pg\t2\t2\t9\t9\t4.8\t9\t100",
            "shop/api\tdb/pg\t1\t1\t0.1\t0.1\t0.1\t0.1\t1",
        ])
    );
    // No HTTP towards or from db.
    assert_eq!(run_query(&chdb, "http_errors_by_path.sql", db), "");
    assert_eq!(run_query(&chdb, "http_latency.sql", db), "");
    assert_eq!(
        run_query(
            &chdb,
            "tcp_health.sql",
            "param_minutes=60&param_limit=20&param_namespace=nowhere"
        ),
        ""
    );
    let select = |sql: &str| {
        let (status, body) = http(chdb.port, "POST", "/?default_format=TSV", sql);
        assert_eq!(status, 200, "{sql}: {body}");
        body
    };
    // The version 2 columns (migration 0003) in `flows` and the locality of both k8s rollups.
    assert_eq!(
        select(
            "SELECT locality, src_role, dst_role, src_pod_uid, dst_pod_uid, if_pod, if_namespace, \
             sum(bytes) FROM flows WHERE NOT duplicate GROUP BY ALL ORDER BY ALL"
        ),
        tsv(&[
            "cluster\tclient\tserver\tuid-api-1\tuid-pg-0\tapi-1\tshop\t5000",
            "cluster\tclient\tserver\tuid-web-1\tuid-pg-0\tweb-1\tshop\t450",
            "cluster\tclient\tserver\tuid-web-2\tuid-api-1\tweb-2\tshop\t2060",
            "external\tclient\tserver\t\tuid-web-1\tweb-1\tshop\t700",
            "node\tclient\tserver\tuid-web-1\tuid-api-1\tweb-1\tshop\t4000",
            "node\tclient\tserver\tuid-web-2\tuid-pg-0\tweb-2\tshop\t300",
        ])
    );
    // Estimated bytes and packets (cluster: #3, #4, #9 x 100 and #11 x 100), everything else as
    // counted.
    for rollup in ["flows_k8s_1m", "flows_k8s_1h"] {
        assert_eq!(
            select(&format!(
                "SELECT locality, sum(bytes), sum(packets), sum(reverse_bytes), \
                 sum(reverse_packets), sum(rtt_ns_sum), sum(rtt_samples), sum(retransmits), \
                 sum(drops), sum(drop_bytes), max(max_sampling_rate) \
                 FROM {rollup} GROUP BY locality ORDER BY locality"
            )),
            tsv(&[
                "cluster\t378000\t675\t320000\t230\t4000000\t2\t4\t6\t9000\t100",
                "external\t1000\t10\t300\t3\t0\t0\t0\t1\t60\t1",
                "node\t9700\t49\t5400\t16\t6000000\t2\t1\t0\t0\t1",
            ]),
            "{rollup}"
        );
    }
    // The version 3 columns (migration 0004), row by row.
    assert_eq!(
        select(
            "SELECT if_name, bytes, direction, duplicate, reverse_packets, reverse_bytes, \
             reverse_tcp_flags, end_reason, rtt_ns, retransmits, drops, drop_bytes, drop_reason, \
             src_pid, src_comm, src_cgroup_id, dst_pid, dst_comm, dst_cgroup_id, tunnel, tunnel_id, \
             IPv6NumToString(outer_src_addr), IPv6NumToString(outer_dst_addr), tcp_start \
             FROM flows ORDER BY if_name, bytes"
        ),
        tsv(&[
            "eth0\t60\tegress\tfalse\t0\t0\t0\t\t0\t0\t0\t0\t\t0\t\t0\t0\t\t0\t\t0\t::\t::\ttrue",
            "eth0\t700\tingress\tfalse\t3\t300\t20\trst\t0\t0\t1\t60\tTCP_INVALID_SEQUENCE\t0\t\t0\t0\t\t0\t\t0\t::\t::\tfalse",
            "eth0\t1000\tegress\tfalse\t8\t4000\t26\t\t2000000\t1\t0\t0\t\t4242\tcurl\t777\t0\t\t0\t\t0\t::\t::\ttrue",
            "eth0\t2000\tegress\tfalse\t0\t0\t0\t\t0\t0\t0\t0\t\t0\t\t0\t0\t\t0\t\t0\t::\t::\ttrue",
            "eth0\t3000\tegress\tfalse\t5\t500\t16\tfin\t4000000\t0\t0\t0\t\t0\t\t0\t0\t\t0\t\t0\t::\t::\tfalse",
            "eth1\t300\tegress\tfalse\t3\t900\t0\t\t0\t0\t0\t0\t\t0\t\t0\t0\t\t0\t\t0\t::\t::\tfalse",
            "eth1\t450\tegress\tfalse\t2\t3000\t26\t\t3000000\t1\t4\t6000\tNETFILTER_DROP\t0\t\t0\t0\t\t0\t\t0\t::\t::\ttrue",
            "eth1\t5000\tegress\tfalse\t30\t20000\t26\t\t1000000\t3\t2\t3000\tNETFILTER_DROP\t0\t\t0\t99\tpostgres\t555\tvxlan\t7\t::ffff:192.168.0.1\t::ffff:192.168.0.2\ttrue",
            "eth1\t5500\tegress\ttrue\t30\t22000\t0\t\t0\t0\t0\t0\t\t0\t\t0\t0\t\t0\t\t0\t::\t::\tfalse",
            "vethweb1\t450\tingress\ttrue\t2\t3000\t26\t\t3000000\t1\t4\t6000\tNETFILTER_DROP\t0\t\t0\t0\t\t0\t\t0\t::\t::\ttrue",
            "vethweb1\t1000\tingress\ttrue\t8\t4000\t26\t\t2000000\t1\t0\t0\t\t4242\tcurl\t777\t0\t\t0\t\t0\t::\t::\ttrue",
        ])
    );
    // The DNS columns (migration 0007), row by row: zeros, [] and '' without DNS (#8, #11).
    assert_eq!(
        select(
            "SELECT if_name, bytes, dns_queries, dns_responses, dns_noerror, dns_nxdomain, \
             dns_servfail, dns_refused, dns_other_rcode, dns_answered, dns_latency_sum_ns, \
             dns_latency_max_ns, dns_latencies_us, dns_last_query, dns_last_query_type \
             FROM flows ORDER BY if_name, bytes"
        ),
        tsv(&[
            "eth0\t60\t0\t0\t0\t0\t0\t0\t0\t0\t0\t0\t[]\t\t0",
            "eth0\t700\t0\t2\t0\t0\t0\t0\t2\t0\t0\t0\t[]\t\t0",
            "eth0\t1000\t3\t3\t1\t2\t0\t0\t0\t3\t7000000\t5000000\t[800,1200,5000]\tapi.shop.svc.cluster.local\t1",
            "eth0\t2000\t4\t1\t0\t1\t0\t0\t0\t1\t40000000\t40000000\t[40000]\tmetrics.example.com\t1",
            "eth0\t3000\t2\t2\t1\t0\t1\t0\t0\t2\t5000000\t3000000\t[2000,3000]\tapi.shop.svc.cluster.local\t28",
            "eth1\t300\t1\t1\t1\t0\t0\t0\t0\t1\t600000\t600000\t[600]\tpg.db.svc.cluster.local\t1",
            "eth1\t450\t1\t1\t0\t0\t1\t0\t0\t1\t9000000\t9000000\t[9000]\tpg.db.svc.cluster.local\t1",
            "eth1\t5000\t1\t1\t0\t0\t0\t1\t0\t1\t100000\t100000\t[100]\tpg.db.svc.cluster.local\t33",
            "eth1\t5500\t0\t0\t0\t0\t0\t0\t0\t0\t0\t0\t[]\t\t0",
            "vethweb1\t450\t1\t1\t0\t0\t1\t0\t0\t1\t9000000\t9000000\t[9000]\tpg.db.svc.cluster.local\t1",
            "vethweb1\t1000\t3\t3\t1\t2\t0\t0\t0\t3\t7000000\t5000000\t[800,1200,5000]\tapi.shop.svc.cluster.local\t1",
        ])
    );
    // The HTTP columns (migration 0007), row by row: zeros, [] and '' without HTTP.
    assert_eq!(
        select(
            "SELECT if_name, bytes, http_requests, http_responses, http_2xx, http_3xx, http_4xx, \
             http_5xx, http_status_other, http_answered, http_latency_sum_ns, \
             http_latency_max_ns, http_latencies_us, http_last_method, http_last_path, \
             http_last_status FROM flows ORDER BY if_name, bytes"
        ),
        tsv(&[
            "eth0\t60\t1\t0\t0\t0\t0\t0\t0\t0\t0\t0\t[]\tGET\t/api/cart\t0",
            "eth0\t700\t1\t1\t1\t0\t0\t0\t0\t1\t250000\t250000\t[250]\tGET\t/index.html\t200",
            "eth0\t1000\t4\t4\t2\t0\t1\t1\t0\t4\t37000000\t30000000\t[1000,2000,30000,4000]\tGET\t/api/cart\t503",
            "eth0\t2000\t2\t2\t0\t0\t2\t0\t0\t2\t10000000\t7000000\t[3000,7000]\tGET\t/api/cart\t404",
            "eth0\t3000\t3\t3\t1\t1\t0\t1\t0\t3\t82000000\t80000000\t[500,1500,80000]\tPOST\t/api/orders\t500",
            "eth1\t300\t0\t0\t0\t0\t0\t0\t0\t0\t0\t0\t[]\t\t\t0",
            "eth1\t450\t0\t0\t0\t0\t0\t0\t0\t0\t0\t0\t[]\t\t\t0",
            "eth1\t5000\t0\t0\t0\t0\t0\t0\t0\t0\t0\t0\t[]\t\t\t0",
            "eth1\t5500\t0\t0\t0\t0\t0\t0\t0\t0\t0\t0\t[]\t\t\t0",
            "vethweb1\t450\t0\t0\t0\t0\t0\t0\t0\t0\t0\t0\t[]\t\t\t0",
            "vethweb1\t1000\t4\t4\t2\t0\t1\t1\t0\t4\t37000000\t30000000\t[1000,2000,30000,4000]\tGET\t/api/cart\t503",
        ])
    );
    // The estimates (migration 0006): counted x sampling_rate, row by row.
    assert_eq!(
        select(
            "SELECT if_name, bytes, packets, reverse_bytes, reverse_packets, sampling_rate, \
             est_bytes, est_packets, est_reverse_bytes, est_reverse_packets \
             FROM flows ORDER BY if_name, bytes"
        ),
        tsv(&[
            "eth0\t60\t1\t0\t0\t100\t6000\t100\t0\t0",
            "eth0\t700\t7\t300\t3\t1\t700\t7\t300\t3",
            "eth0\t1000\t10\t4000\t8\t1\t1000\t10\t4000\t8",
            "eth0\t2000\t5\t0\t0\t1\t2000\t5\t0\t0",
            "eth0\t3000\t20\t500\t5\t1\t3000\t20\t500\t5",
            "eth1\t300\t3\t900\t3\t1\t300\t3\t900\t3",
            "eth1\t450\t3\t3000\t2\t100\t45000\t300\t300000\t200",
            "eth1\t5000\t40\t20000\t30\t1\t5000\t40\t20000\t30",
            "eth1\t5500\t40\t22000\t30\t1\t5500\t40\t22000\t30",
            "vethweb1\t450\t3\t3000\t2\t100\t45000\t300\t300000\t200",
            "vethweb1\t1000\t10\t4000\t8\t1\t1000\t10\t4000\t8",
        ])
    );
    // The per-interface rollups hold what traffic_per_interface.sql computes from `flows`.
    for rollup in ["flows_iface_1m", "flows_iface_1h"] {
        assert_eq!(
            select(&format!(
                "SELECT host, if_name, direction, sum(bytes), sum(packets), sum(flows), \
                 sumIf(r.bytes, duplicate), max(max_sampling_rate) \
                 FROM {rollup} AS r GROUP BY ALL ORDER BY ALL"
            )),
            tsv(&per_interface
                .iter()
                .map(|(row, rate)| format!("{row}\t{rate}"))
                .collect::<Vec<_>>()),
            "{rollup}"
        );
    }
    // The per-port rollups: per direction like the interface one, duplicates skipped; tcp/5432
    // holds #4 and #9 (estimated), tcp/8080 #11 (estimated) too.
    for rollup in ["flows_port_1m", "flows_port_1h"] {
        assert_eq!(
            select(&format!(
                "SELECT proto, port, direction, sum(bytes), sum(packets), sum(flows), \
                 max(max_sampling_rate) FROM {rollup} GROUP BY ALL ORDER BY ALL"
            )),
            tsv(&[
                "6\t443\tingress\t700\t7\t1\t1",
                "6\t443\tegress\t300\t3\t0\t1",
                "6\t5432\tingress\t320000\t230\t0\t100",
                "6\t5432\tegress\t50000\t340\t2\t100",
                "6\t8080\tingress\t4500\t13\t0\t1",
                "6\t8080\tegress\t12000\t135\t4\t100",
                "17\t5432\tingress\t900\t3\t0\t1",
                "17\t5432\tegress\t300\t3\t1\t1",
            ]),
            "{rollup}"
        );
    }
    assert_eq!(
        run_query(&chdb, "topology_edges.sql", p),
        tsv(&[
            "shop/web\tDeployment\tdb/pg\tStatefulSet\t346200\t506\t2\t[6,17]\t[5432]\t100",
            "shop/api\tDeployment\tdb/pg\tStatefulSet\t25000\t70\t1\t[6]\t[5432]\t1",
            "shop/web\tDeployment\tshop/api\tDeployment\t16500\t148\t4\t[6]\t[8080]\t100",
            "203.0.113.9\tIP\tshop/web\tDeployment\t1000\t10\t1\t[6]\t[443]\t1",
        ])
    );
    let hour = (end_ns / 1_000_000_000) / 3600 * 3600;
    let hour = select(&format!("SELECT toString(toDateTime({hour}))"));
    let hour = hour.trim();
    assert_eq!(
        run_query(&chdb, "traffic_per_interface_hourly.sql", "param_hours=3"),
        tsv(&per_interface
            .iter()
            .map(|(row, rate)| format!("{hour}\t{row}\t{rate}"))
            .collect::<Vec<_>>())
    );
    // Every query file is checked above.
    let mut files: Vec<String> = std::fs::read_dir(repo_root().join("sql/queries"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, CHECKED);

    check_dashboards(&chdb, end_ns);

    // A rate below 1 (flowlens never writes one, another producer might) reads as 1: the
    // estimates are the counted values.
    select(
        "INSERT INTO flows (time_flow_start, time_flow_end, time_exported, host, packets, bytes, \
         reverse_packets, reverse_bytes, sampling_rate) \
         VALUES (now64(9), now64(9), now64(9), 'rate-zero', 7, 700, 2, 200, 0)",
    );
    assert_eq!(
        select(
            "SELECT est_packets, est_bytes, est_reverse_packets, est_reverse_bytes \
             FROM flows WHERE host = 'rate-zero'"
        ),
        tsv(&["7\t700\t2\t200"])
    );
}

/// Every ClickHouse panel of the Grafana dashboards on the same records (macros replaced: the
/// last hour, 60 s intervals), each answer compared exactly (numbers to 1e-9 relative: rates
/// are floats).
fn check_dashboards(chdb: &Chdb, end_ns: i64) {
    let targets = dashboard_queries();
    let select = |sql: &str| {
        let (status, body) = http(chdb.port, "POST", "/?default_format=TSV", sql);
        assert_eq!(status, 200, "{sql}: {body}");
        body
    };
    let end_s = end_ns / 1_000_000_000;
    let minute = select(&format!("SELECT toStartOfMinute(toDateTime({end_s}))"));
    let minute = minute.trim();
    let exported = select(&format!(
        "SELECT fromUnixTimestamp64Nano(toInt64({}))",
        end_ns + 500_000_000
    ));
    let exported = exported.trim();
    let at =
        |rows: &[&str]| -> Vec<String> { rows.iter().map(|r| format!("{minute}\t{r}")).collect() };
    let rows = |rows: &[&str]| -> Vec<String> { rows.iter().map(|r| r.to_string()).collect() };
    // Per panel: the rows (timeseries: in any order within the minute), all estimates of the
    // non-duplicate records unless said otherwise.
    let expected: Vec<(&str, Vec<String>)> = vec![
        // flowlens-dns.json. NXDOMAIN 2 (#1) + 1 (#3), SERVFAIL 1 (#2) + 1 (#9) per 60 s, the
        // duplicates left out; p99 of the nine latencies of #1 to #9 (the 9th: 40000 µs).
        (
            "DNS errors and latency",
            at(&["0.05\t0.03333333333333333\t40"]),
        ),
        // flowlens-dns.json too. 4xx 1 (#1) + 2 (#3), 5xx 1 (#1) + 1 (#2) per 60 s, the
        // duplicate #7 left out; p99 of the ten latencies of #1, #2, #3 and #5 (the 10th: 80000
        // µs; #11 answered nothing).
        (
            "HTTP errors and latency",
            at(&["0.05\t0.03333333333333333\t80"]),
        ),
        // The highest rate of the rows in range (#9, #10, #11).
        ("Packet sampling", rows(&["100"])),
        // Egress: A->B of the egress records + B->A of #5; ingress the rest: bytes * 8 / 60 s.
        (
            "Traffic by direction",
            at(&["egress\t8346.666666666666", "ingress\t43480"]),
        ),
        // TCP: 728 packets (#11: 100), UDP: 6, per 60 s.
        (
            "Packets by protocol",
            at(&["TCP\t12.133333333333333", "UDP\t0.1"]),
        ),
        (
            "Top talkers",
            rows(&[
                "10.1.0.11\tshop/web-1\t10.2.0.5\tdb/pg-0\t345000\t500\t1",
                "10.1.0.21\tshop/api-1\t10.2.0.5\tdb/pg-0\t25000\t70\t1",
                "10.1.0.11\tshop/web-1\t10.1.0.21\tshop/api-1\t8500\t43\t2",
                "10.1.0.12\tshop/web-2\t10.1.0.21\tshop/api-1\t8000\t105\t2",
                "10.1.0.12\tshop/web-2\t10.2.0.5\tdb/pg-0\t1200\t6\t1",
                "203.0.113.9\t\t10.1.0.11\tshop/web-1\t1000\t10\t1",
            ]),
        ),
        ("Top nodes", rows(&["node-a\t382700", "node-b\t6000"])),
        (
            "Workload-to-workload matrix (bytes)",
            rows(&[
                "shop/web\tdb/pg\t346200",
                "shop/api\tdb/pg\t25000",
                "shop/web\tshop/api\t16500",
                "unknown\tshop/web\t1000",
            ]),
        ),
        (
            "Top destination ports",
            rows(&[
                "tcp/5432\t370000",
                "tcp/8080\t16500",
                "udp/5432\t1200",
                "tcp/443\t1000",
            ]),
        ),
        // Retransmits 1 + 3 + 1 and drops 2 + 1 + 4 as counted, resets: #5; unanswered SYNs:
        // #3 only (#11, sampled, may have been answered by packets not sampled). Per 60 s.
        (
            "Retransmits, drops, resets and unanswered SYNs",
            at(&["0.08333333333333333\t0.11666666666666667\t0.016666666666666666\t0.016666666666666666"]),
        ),
        // Every record, duplicates included and shown.
        (
            "Flows per node and interface",
            [
                "node-a\teth1\tveth\t4\t646\t398700\t27500\t100",
                "node-a\tvethweb1\tveth\t2\t518\t350000\t350000\t100",
                "node-a\teth0\tveth\t4\t58\t11500\t0\t1",
                "node-b\teth0\tveth\t1\t100\t6000\t0\t100",
            ]
            .iter()
            .map(|r| format!("{r}\t{exported}"))
            .collect(),
        ),
        // RTTs 1, 2, 3, 4 ms (#4, #1, #9, #2): interpolated percentiles.
        ("TCP round-trip time", at(&["2.5\t3.7\t3.97"])),
        (
            "Drops by reason",
            rows(&[
                "node-a\tNETFILTER_DROP\tdb/pg\t6\t9000\t2",
                "node-a\tTCP_INVALID_SEQUENCE\tshop/web\t1\t60\t1",
            ]),
        ),
    ];
    assert_eq!(
        targets.iter().map(|t| t.panel.as_str()).collect::<Vec<_>>(),
        expected.iter().map(|(title, _)| *title).collect::<Vec<_>>(),
        "every ClickHouse panel is checked"
    );
    for (target, (title, want)) in targets.iter().zip(expected) {
        let got = select(&target.sql);
        let mut got: Vec<&str> = got.lines().collect();
        let mut want: Vec<&str> = want.iter().map(String::as_str).collect();
        if want.first().is_some_and(|r| r.starts_with(minute)) {
            got.sort();
            want.sort();
        }
        assert_eq!(got.len(), want.len(), "{title}: {got:?}");
        for (g, w) in got.iter().zip(&want) {
            let (gc, wc): (Vec<&str>, Vec<&str>) =
                (g.split('\t').collect(), w.split('\t').collect());
            let same = gc.len() == wc.len()
                && gc.iter().zip(&wc).all(|(a, b)| {
                    a == b
                        || matches!((a.parse::<f64>(), b.parse::<f64>()),
                            (Ok(x), Ok(y)) if (x - y).abs() <= 1e-9 * y.abs())
                });
            assert!(same, "{title}:\n got  {g}\n want {w}");
        }
    }
}

/// The query files `queries_on_pipeline_data` checks.
const CHECKED: [&str; 15] = [
    "dns_errors_by_name.sql",
    "dns_latency.sql",
    "drops_by_reason.sql",
    "hot_spots.sql",
    "http_errors_by_path.sql",
    "http_latency.sql",
    "new_connections_per_service.sql",
    "pod_traffic_matrix.sql",
    "service_traffic_matrix.sql",
    "tcp_health.sql",
    "top_talkers.sql",
    "topology_edges.sql",
    "traffic_by_locality.sql",
    "traffic_per_interface.sql",
    "traffic_per_interface_hourly.sql",
];

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
