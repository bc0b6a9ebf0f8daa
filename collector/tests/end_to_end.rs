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

use common::{
    between_pair, expected_flows, require_root, send_known_traffic, FlowId, Pipeline, Totals,
};
use flowlens_testkit::{http, unique, Chdb, NetnsPair, Tansu};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_become_clickhouse_rows() {
    require_root();
    let broker = Tansu::start();
    let clickhouse = Chdb::start();
    let pair = std::sync::Arc::new(NetnsPair::new("e"));
    let host = unique("e2e-host");

    let mut pipeline = Pipeline::new(&broker.broker(), &clickhouse.url(), &pair, &host)
        .start()
        .await;

    let p = pair.clone();
    let sent = tokio::task::spawn_blocking(move || send_known_traffic(&p))
        .await
        .unwrap();
    pipeline.stop_collector().await;
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

    pipeline.stop().await;
}

/// Per-direction totals from the `flows` table (one conversation may span several rows: one
/// per scan; each row's A->B part and its B->A `reverse_*` part are split back apart).
fn query_flows(clickhouse: &Chdb, filter: &str) -> BTreeMap<FlowId, Totals> {
    let sql = format!(
        "SELECT e, proto, s, sp, d, dp, t, sum(p), sum(b) FROM ( \
           SELECT direction = 'egress' AS e, proto, IPv6NumToString(src_addr) AS s, \
                  src_port AS sp, IPv6NumToString(dst_addr) AS d, dst_port AS dp, \
                  icmp_type AS t, packets AS p, bytes AS b \
           FROM flows WHERE {filter} AND duplicate = 0 AND packets > 0 \
           UNION ALL \
           SELECT direction != 'egress', proto, IPv6NumToString(dst_addr), dst_port, \
                  IPv6NumToString(src_addr), src_port, \
                  multiIf(proto = 1 AND icmp_type = 8, 0, proto = 58 AND icmp_type = 128, 129, icmp_type), \
                  reverse_packets, reverse_bytes \
           FROM flows WHERE {filter} AND duplicate = 0 AND reverse_packets > 0 \
         ) GROUP BY ALL FORMAT TSV"
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
