//! The product's story, end to end on real components: packets cross a veth pair between two
//! network namespaces; the collector's eBPF programs count them in the kernel and publish Avro
//! records to a Kafka-protocol broker (tansu); the enricher joins each flow with its interface;
//! the sink batches them into ClickHouse (the 26.9 engine behind the chdb front). ClickHouse must
//! then hold exactly the flows that were sent, with exact packet and byte counts and the
//! interface name that only enrichment can supply.

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::{between_pair, expected_flows, require_root, send_known_traffic, FlowId, Totals};
use flowlens_runtime::testkit::{http, unique, Chdb, NetnsPair, Tansu};
use flowlens_runtime::Shutdown;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_become_clickhouse_rows() {
    require_root();
    let broker = Tansu::start();
    let clickhouse = Chdb::start();
    let pair = std::sync::Arc::new(NetnsPair::new("e"));
    let host = unique("e2e-host");

    // One set of topics for the three stages.
    let mut kafka = flowlens_runtime::kafka::KafkaConfig {
        brokers: vec![broker.broker()],
        partitions: 2,
        ..Default::default()
    };
    kafka.topics.raw_flows = unique("raw");
    kafka.topics.interfaces = unique("ifaces");
    kafka.topics.enriched_flows = unique("enriched");
    kafka.topics.dead_letter = unique("dlq");

    let mut sink = flowlens_sink::Config {
        kafka: kafka.clone(),
        ..Default::default()
    };
    sink.clickhouse.url = clickhouse.url();
    sink.batch.max_age_ms = 500;
    sink.sink.group_id = unique("sink");
    let mut enricher = flowlens_enricher::config::Config {
        kafka: kafka.clone(),
        ..Default::default()
    };
    enricher.enricher.group_id = unique("enricher");
    let mut collector = flowlens_collector::Config {
        kafka,
        ..Default::default()
    };
    collector.collector.host = host.clone();
    collector.collector.netns = pair.ns_a.clone();
    collector.collector.interfaces = vec![pair.if_a.clone()];
    collector.collector.scan_interval_ms = 500;

    let stop_pipeline = Shutdown::new();
    let stop_collector = Shutdown::new();
    let sink_task = tokio::spawn(flowlens_sink::run(sink, stop_pipeline.clone()));
    let enricher_task = tokio::spawn(flowlens_enricher::run(enricher, stop_pipeline.clone()));
    let collector_task = tokio::spawn(flowlens_collector::run(collector, stop_collector.clone()));
    // The collector publishes interface metadata once attached; give the stages time to start.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!collector_task.is_finished(), "collector stopped early");

    let p = pair.clone();
    let sent = tokio::task::spawn_blocking(move || send_known_traffic(&p))
        .await
        .unwrap();
    stop_collector.trigger();
    collector_task
        .await
        .unwrap()
        .expect("collector exits cleanly");
    let expected = expected_flows(&pair, &sent);

    // Rows arrive through two topics and a batch; wait until ClickHouse holds every packet.
    let want_packets: u64 = expected.values().map(|t| t.packets).sum();
    let filter = format!("host = '{host}' AND if_name = '{}'", pair.if_a);
    let started = Instant::now();
    let rows = loop {
        let rows = query_flows(&clickhouse, &filter);
        let got: u64 = between_pair(&pair, rows.clone())
            .values()
            .map(|t| t.packets)
            .sum();
        if got >= want_packets || started.elapsed() > Duration::from_secs(60) {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        between_pair(&pair, rows),
        expected,
        "ClickHouse rows vs traffic sent"
    );

    // Enrichment filled the interface columns on every row of this host.
    let (_, text) = http(
        clickhouse.port,
        "POST",
        "/",
        &format!("SELECT DISTINCT if_name, if_kind, if_netns FROM flows WHERE host = '{host}'"),
    );
    assert_eq!(text.trim(), format!("{}\tveth\t{}", pair.if_a, pair.ns_a));

    stop_pipeline.trigger();
    enricher_task
        .await
        .unwrap()
        .expect("enricher exits cleanly");
    sink_task.await.unwrap().expect("sink exits cleanly");
}

/// Per-flow totals from the `flows` table (one flow may span several rows: one per scan).
fn query_flows(clickhouse: &Chdb, filter: &str) -> BTreeMap<FlowId, Totals> {
    let sql = format!(
        "SELECT direction = 'egress', proto, IPv6NumToString(src_addr), src_port, \
         IPv6NumToString(dst_addr), dst_port, icmp_type, sum(packets), sum(bytes) \
         FROM flows WHERE {filter} GROUP BY ALL FORMAT TSV"
    );
    let (status, text) = http(clickhouse.port, "POST", "/", &sql);
    assert_eq!(status, 200, "{text}");
    text.lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            let ip = |s: &str| -> IpAddr {
                let v6: std::net::Ipv6Addr = s.parse().unwrap();
                flowlens_schemas::v6_to_ip(v6)
            };
            (
                (
                    f[0] == "1",
                    f[1].parse().unwrap(),
                    ip(f[2]),
                    f[3].parse().unwrap(),
                    ip(f[4]),
                    f[5].parse().unwrap(),
                    f[6].parse().unwrap(),
                ),
                Totals {
                    packets: f[7].parse().unwrap(),
                    bytes: f[8].parse().unwrap(),
                },
            )
        })
        .collect()
}
