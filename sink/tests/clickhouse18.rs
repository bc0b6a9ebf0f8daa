//! The sink's insert path (FlowRow batches, RowBinary, LZ4, validation off) against Debian's
//! genuine clickhouse-server 18.16 with sql/clickhouse18/flows_minimal.sql; rows are read back
//! over plain HTTP as TSV and compared value by value.
//!
//! Needs /usr/sbin/clickhouse-server; `FLOWLENS_SKIP_CLICKHOUSE18=1` skips.

use std::time::Instant;

use flowlens_runtime::testkit::{http, repo_root, require, ClickHouse18};
use flowlens_sink::config::ClickHouseConfig;
use flowlens_sink::insert::Inserter;
use flowlens_sink::migrate::split_statements;
use flowlens_sink::row::{sample_flow, FlowRow};

fn query_tsv(port: u16, sql: &str) -> String {
    let (status, body) = http(port, "POST", "/", sql);
    assert_eq!(status, 200, "{sql}: {body}");
    body
}

#[tokio::test]
async fn flow_rows_are_accepted_by_clickhouse_18() {
    if require("/usr/sbin/clickhouse-server", "CLICKHOUSE18") {
        return;
    }
    let server = ClickHouse18::start();
    let ddl = std::fs::read_to_string(repo_root().join("sql/clickhouse18/flows_minimal.sql"))
        .expect("sql/clickhouse18/flows_minimal.sql");
    for statement in split_statements(&ddl) {
        query_tsv(server.http_port, &statement);
    }

    let config = ClickHouseConfig {
        url: server.url(),
        validation: false,
        timeout_ms: 20_000,
        ..Default::default()
    };
    let inserter = Inserter::new(&config).unwrap();
    const N: u32 = 20_000;
    let rows: Vec<FlowRow> = (0..N)
        .map(|i| {
            let mut row = FlowRow::try_from(sample_flow(i)).unwrap();
            // The identity columns (migration 0005), read back below by the recovery queries.
            row.kafka_stream = [3; 16];
            row.kafka_offset = u64::from(i);
            row.kafka_timestamp = 1_700_000_000_000 + i64::from(i);
            row.origin_stream = [4; 16];
            row.origin_partition = (i % 2) as i32;
            row.origin_offset = 2 * i64::from(i);
            row
        })
        .collect();
    // Two batches, like two flushes of the sink.
    let started = Instant::now();
    let (a, b) = rows.split_at(rows.len() / 2);
    inserter
        .write(a, None)
        .await
        .expect("insert into ClickHouse 18.16");
    inserter
        .write(b, None)
        .await
        .expect("insert into ClickHouse 18.16");
    let elapsed = started.elapsed();
    eprintln!(
        "inserted {N} rows into ClickHouse 18.16 in {elapsed:?} ({:.0} rows/s)",
        f64::from(N) / elapsed.as_secs_f64()
    );

    // The sink's recovery queries work on this server too (no projections: they read the table).
    let client = flowlens_sink::insert::client(&config).unwrap();
    let queries = flowlens_sink::recovery::Queries::for_table(&client, "flows")
        .await
        .unwrap();
    let stored = queries.stored(&client, "", 0).await.unwrap();
    let last = i64::from(N) - 1;
    assert_eq!(
        stored.streams,
        [flowlens_sink::dedup::StoredStream {
            stream: [3; 16],
            max_offset: last,
            timestamp_ms: 1_700_000_000_000 + last,
            origin: ([4; 16], (last % 2) as i32, 2 * last),
        }]
    );
    assert_eq!(
        stored.hwm,
        [(([4; 16], 0), 2 * (last - 1)), (([4; 16], 1), 2 * last)]
            .into_iter()
            .collect()
    );

    let n = u64::from(N);
    let totals = query_tsv(
        server.http_port,
        "SELECT count(), sum(bytes), sum(packets), uniqExact(src_pod) FROM flows FORMAT TSV",
    );
    assert_eq!(
        totals.trim(),
        format!("{n}\t{}\t{}\t{n}", 100 * n * (n + 1) / 2, n * (n + 1) / 2)
    );
    let row = query_tsv(
        server.http_port,
        "SELECT time_flow_start, time_flow_end, time_exported, host, ifindex, if_name, if_mac, \
         if_kind, if_netns, direction, etype, vlan_id, proto, hex(src_addr), hex(dst_addr), \
         src_port, dst_port, icmp_type, icmp_code, tcp_flags, packets, bytes, sampling_rate, \
         src_pod, src_namespace, src_workload, dst_pod, dst_service, kafka_topic, \
         src_pod_uid, dst_pod_uid, src_role, dst_role, locality, if_pod, if_namespace, \
         reverse_packets, reverse_bytes, reverse_tcp_flags, end_reason, rtt_ns, retransmits, \
         drops, drop_bytes, drop_reason, src_pid, src_comm, src_cgroup_id, dst_pid, dst_comm, \
         dst_cgroup_id, tunnel, tunnel_id, hex(outer_src_addr), hex(outer_dst_addr), duplicate \
         FROM flows WHERE src_pod = 'web-777' FORMAT TSV",
    );
    let expected = [
        "1700000000124233789",
        "1700000001124233789",
        "1700000002123456789",
        "node-a",
        "3",
        "eth0",
        "02:42:ac:11:00:02",
        "veth",
        "cni-1234",
        "egress",
        "2048",
        "0",
        "6",
        "00000000000000000000FFFF0A000309",
        "20010DB8000000000000000000000001",
        "10777",
        "443",
        "0",
        "0",
        "24",
        "778",
        "77800",
        "1",
        "web-777",
        "shop",
        "",
        "",
        "api",
        "",
        "00000000-0000-4000-8000-000000000777",
        "",
        "client",
        "server",
        "external",
        "web-777",
        "shop",
        // EnrichedFlow v3 (777 = 7 * 111: a tunnel record; 777 % 5 != 0: no drop).
        "0",
        "0",
        "0",
        "",
        "107770",
        "0",
        "0",
        "0",
        "",
        "1777",
        "curl",
        "5777",
        "0",
        "",
        "0",
        "vxlan",
        "42",
        "00000000000000000000FFFFC0A80001",
        "00000000000000000000FFFFC0A80002",
        "0",
    ];
    assert_eq!(
        row.trim_end_matches('\n').split('\t').collect::<Vec<_>>(),
        expected
    );
    // Sums over the version 3 columns of every row (what sample_flow sets).
    let sums = query_tsv(
        server.http_port,
        "SELECT sum(retransmits), sum(drops), sum(drop_bytes), countIf(tunnel = 'vxlan'), \
         countIf(end_reason = 'fin'), sum(src_pid > 0), sum(duplicate) FROM flows FORMAT TSV",
    );
    let m = |k: u64| (0..n).filter(|i| i % k == 0).count();
    let retransmits: u64 = (0..n).map(|i| i % 3).sum();
    assert_eq!(
        sums.trim(),
        format!(
            "{retransmits}\t{}\t{}\t{}\t{}\t{n}\t0",
            m(5),
            1_500 * m(5),
            m(7),
            (0..n).filter(|i| i % 10 == 9).count()
        )
    );
    // Ingress rows too (Enum8 value 0).
    assert_eq!(
        query_tsv(
            server.http_port,
            "SELECT direction, count() FROM flows GROUP BY direction ORDER BY direction FORMAT TSV"
        ),
        format!("ingress\t{}\negress\t{}\n", n / 2, n / 2)
    );
}
