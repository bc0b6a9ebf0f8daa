//! The sink's insert path (FlowRow batches, RowBinary, LZ4, validation off) against Debian's
//! genuine clickhouse-server 18.16 with sql/clickhouse18/flows_minimal.sql; rows are read back
//! over plain HTTP as TSV and compared value by value. Then the same table on a cluster
//! (`clickhouse.cluster`): two replicas of one shard with Debian's ZooKeeper, one replica
//! killed and restarted during the inserts, every row once on both.
//!
//! Needs /usr/sbin/clickhouse-server (`FLOWLENS_SKIP_CLICKHOUSE18=1` skips) and, for the
//! cluster, /usr/share/java/zookeeper.jar (`FLOWLENS_SKIP_ZOOKEEPER=1` skips).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowlens_sink::cluster::Cluster;
use flowlens_sink::config::ClickHouseConfig;
use flowlens_sink::insert::Inserter;
use flowlens_sink::migrate::split_statements;
use flowlens_sink::row::{sample_flow, FlowRow};
use flowlens_testkit::{http, repo_root, require, ClickHouse18, ZooKeeper, ZOOKEEPER_JAR};

fn query_tsv(port: u16, sql: &str) -> String {
    let (status, body) = http(port, "POST", "/", sql);
    assert_eq!(status, 200, "{sql}: {body}");
    body
}

/// Sample rows `ids`, each with its id as Kafka offset (the identity columns of migration 0005
/// set as well, read back by the recovery queries).
fn flow_rows(ids: std::ops::Range<u32>) -> Vec<FlowRow> {
    ids.map(|i| {
        let mut row = FlowRow::try_from(sample_flow(i)).unwrap();
        row.kafka_stream = [3; 16];
        row.kafka_offset = u64::from(i);
        row.kafka_timestamp = 1_700_000_000_000 + i64::from(i);
        row.origin_stream = [4; 16];
        row.origin_partition = (i % 2) as i32;
        row.origin_offset = 2 * i64::from(i);
        row
    })
    .collect()
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
    let rows = flow_rows(0..N);
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
         dst_cgroup_id, tunnel, tunnel_id, hex(outer_src_addr), hex(outer_dst_addr), duplicate, \
         dns_queries, dns_responses, dns_noerror, dns_nxdomain, dns_servfail, dns_refused, \
         dns_other_rcode, dns_answered, dns_latency_sum_ns, dns_latency_max_ns, \
         dns_latencies_us, dns_last_query, dns_last_query_type, http_requests, http_5xx, \
         http_latencies_us, http_last_method, http_last_path, http_last_status \
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
        // EnrichedFlow v5 (777 % 4 = 1: DNS, latencies 200 + 777 and 1500 µs).
        "2",
        "2",
        "1",
        "1",
        "0",
        "0",
        "0",
        "2",
        "2477000",
        "1500000",
        "[977,1500]",
        "api.shop.svc.cluster.local",
        "28",
        // No HTTP on 777 (777 % 4 != 2): zeros, [] and ''.
        "0",
        "0",
        "[]",
        "",
        "",
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
    // The DNS columns of every row: sample_flow gives one in four two answered queries.
    let with_dns = (0..n).filter(|i| i % 4 == 1).count();
    let latencies: u64 = (0..n)
        .filter(|i| i % 4 == 1)
        .map(|i| 200 + i % 1000 + 1_500)
        .sum();
    assert_eq!(
        query_tsv(
            server.http_port,
            "SELECT sum(dns_queries), sum(dns_nxdomain), sum(length(dns_latencies_us)), \
             sum(arraySum(dns_latencies_us)), sum(dns_latency_sum_ns), \
             countIf(dns_last_query != '') FROM flows FORMAT TSV"
        )
        .trim(),
        format!(
            "{}\t{with_dns}\t{}\t{latencies}\t{}\t{with_dns}",
            2 * with_dns,
            2 * with_dns,
            latencies * 1_000
        )
    );
    // The HTTP columns of every row: one in four two answered requests, one a 5xx.
    let with_http = (0..n).filter(|i| i % 4 == 2).count();
    let latencies: u64 = (0..n)
        .filter(|i| i % 4 == 2)
        .map(|i| 3_000 + i % 1000 + 45_000)
        .sum();
    assert_eq!(
        query_tsv(
            server.http_port,
            "SELECT sum(http_requests), sum(http_5xx), sum(length(http_latencies_us)), \
             sum(arraySum(http_latencies_us)), sum(http_latency_sum_ns), \
             countIf(http_last_path = '/api/cart' AND http_last_status = 503) FROM flows FORMAT TSV"
        )
        .trim(),
        format!(
            "{}\t{with_http}\t{}\t{latencies}\t{}\t{with_http}",
            2 * with_http,
            2 * with_http,
            latencies * 1_000
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

const CLUSTER: &str = "flows_cluster";

/// config.d of one replica: ZooKeeper, the interserver port the other replica fetches parts
/// from, the cluster (one shard, both replicas, internal replication), the distributed DDL
/// queue, and the macros of the replicated tables' paths.
fn cluster_xml(zookeeper: u16, tcp_ports: [u16; 2], interserver: u16, replica: &str) -> String {
    let replicas: String = tcp_ports
        .iter()
        .map(|p| format!("<replica><host>127.0.0.1</host><port>{p}</port></replica>"))
        .collect();
    format!(
        "<?xml version=\"1.0\"?>\n<yandex>\n\
         <interserver_http_host>127.0.0.1</interserver_http_host>\n\
         <interserver_http_port>{interserver}</interserver_http_port>\n\
         <zookeeper><node><host>127.0.0.1</host><port>{zookeeper}</port></node>\
         <session_timeout_ms>10000</session_timeout_ms></zookeeper>\n\
         <remote_servers><{CLUSTER}><shard><internal_replication>true</internal_replication>\
         {replicas}</shard></{CLUSTER}></remote_servers>\n\
         <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>\n\
         <macros><shard>01</shard><replica>{replica}</replica></macros>\n</yandex>\n"
    )
}

/// Runs `statement` on the first replica; a failure shows both replicas' error logs.
fn on_cluster_ddl(replicas: &[ClickHouse18; 2], statement: &str) {
    let (status, body) = http(replicas[0].http_port, "POST", "/", statement);
    assert_eq!(
        status,
        200,
        "{statement}: {body}\nreplica a:\n{}\nreplica b:\n{}",
        replicas[0].error_log(80),
        replicas[1].error_log(20)
    );
}

/// What one replica holds: count, distinct ids, lowest and highest id, sum of the ids.
fn holdings(port: u16, table: &str) -> String {
    query_tsv(
        port,
        &format!(
            "SELECT count(), uniqExact(kafka_offset), min(kafka_offset), max(kafka_offset), \
             sum(kafka_offset) FROM {table} FORMAT TSV"
        ),
    )
    .trim()
    .to_owned()
}

/// `clickhouse.cluster` on a real cluster: two replicas of one shard (Debian's 18.16 and
/// ZooKeeper), the test table created with the sink's cluster rewrite (`ON CLUSTER`,
/// ReplicatedMergeTree under `{shard}`) and its Distributed read table. Batches go through the
/// sink's insert path to replica A (the sink's `url`), falling over to replica B when A does not
/// acknowledge; B is killed (SIGKILL) and restarted during the inserts, then A is. Last, every
/// batch is sent again to both replicas, as a replay after a crash would. The oracle is the ids
/// inserted: each replica, and the Distributed table, holds every id exactly once.
///
/// 18.16 has no insert_deduplication_token: its replicated tables deduplicate a repeated block
/// by a hash of its content, so the table's server-set `time_inserted` default (which would make
/// a repeat in another second a different block) is a constant here. The sink on a current
/// server names each batch with its token instead.
#[test]
fn two_replicas_keep_every_row_once_through_replica_crashes() {
    if require("/usr/sbin/clickhouse-server", "CLICKHOUSE18") || require(ZOOKEEPER_JAR, "ZOOKEEPER")
    {
        return;
    }
    let zookeeper = ZooKeeper::start();
    let replicas = [ClickHouse18::unstarted(), ClickHouse18::unstarted()];
    let tcp_ports = [replicas[0].tcp_port, replicas[1].tcp_port];
    for (server, name) in replicas.iter().zip(["a", "b"]) {
        let interserver = flowlens_testkit::free_port();
        server.add_config(
            "cluster",
            &cluster_xml(zookeeper.port, tcp_ports, interserver, name),
        );
        server.start_again();
    }
    let [a, b] = &replicas;

    let ddl = std::fs::read_to_string(repo_root().join("sql/clickhouse18/flows_minimal.sql"))
        .unwrap()
        .replace("DEFAULT toInt64(toUInt32(now())) * 1000", "DEFAULT 0");
    let cluster = Cluster::new(CLUSTER, "default");
    for statement in split_statements(&ddl) {
        let on_cluster = cluster.rewrite(&statement).unwrap();
        assert!(on_cluster.contains(
            "ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/default/flows', '{replica}')"
        ));
        on_cluster_ddl(&replicas, &on_cluster);
    }
    for (_, statements) in cluster.read_tables(&["flows".to_owned()], "flows") {
        for s in statements {
            on_cluster_ddl(&replicas, &s);
        }
    }
    for server in &replicas {
        assert_eq!(
            query_tsv(
                server.http_port,
                "SELECT engine FROM system.tables WHERE name LIKE 'flows%' ORDER BY name FORMAT TSV"
            ),
            "ReplicatedMergeTree\nDistributed\n"
        );
    }

    const BATCHES: u32 = 80;
    const ROWS: u32 = 400;
    const N: u64 = (BATCHES * ROWS) as u64;
    let batches: Arc<Vec<Vec<FlowRow>>> = Arc::new(
        (0..BATCHES)
            .map(|i| flow_rows(i * ROWS..(i + 1) * ROWS))
            .collect(),
    );
    let inserter = |server: &ClickHouse18| {
        Inserter::new(&ClickHouseConfig {
            url: server.url(),
            validation: false,
            timeout_ms: 5_000,
            ..Default::default()
        })
        .unwrap()
    };
    let targets = [inserter(a), inserter(b)];
    let acked = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let writer = {
        let (batches, targets) = (batches.clone(), targets.clone());
        let (acked, failed) = (acked.clone(), failed.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async {
                let mut target = 0;
                for batch in batches.iter() {
                    let started = Instant::now();
                    // A batch not acknowledged is sent again, to the other replica.
                    while targets[target].write(batch, None).await.is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                        assert!(started.elapsed() < Duration::from_secs(120));
                        target = 1 - target;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    target = 0;
                    acked.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
            })
        })
    };
    let wait_acked = |n: usize| {
        let start = Instant::now();
        while acked.load(Ordering::Relaxed) < n {
            assert!(!writer.is_finished() || acked.load(Ordering::Relaxed) >= n);
            assert!(start.elapsed() < Duration::from_secs(120), "stuck at {n}");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_acked(15);
    b.kill();
    wait_acked(30);
    b.start_again();
    wait_acked(45);
    a.kill();
    wait_acked(55);
    let during = acked.load(Ordering::Relaxed);
    a.start_again();
    writer.join().unwrap();
    assert!(
        during < BATCHES as usize,
        "the inserts ended before replica a came back"
    );
    assert!(
        failed.load(Ordering::Relaxed) > 0,
        "no insert saw a replica down"
    );

    // A replay of every batch through either replica stores nothing.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for batch in batches.iter() {
            for target in &targets {
                target.write(batch, None).await.expect("replayed batch");
            }
        }
    });

    let expected = format!("{N}\t{N}\t0\t{}\t{}", N - 1, N * (N - 1) / 2);
    for server in &replicas {
        let start = Instant::now();
        loop {
            let held = holdings(server.http_port, "flows");
            if held == expected {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "replica on {} holds {held}, expected {expected}",
                server.http_port
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(holdings(server.http_port, "flows_distributed"), expected);
    }
    eprintln!(
        "{BATCHES} batches of {ROWS} rows, {} failed attempts (falling over to the other \
         replica), {during} batches acknowledged when replica a was restarted; both replicas \
         hold every id once after a replay of every batch through each",
        failed.load(Ordering::Relaxed)
    );
    drop(zookeeper);
}
