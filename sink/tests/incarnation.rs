//! Topic incarnations and the recovery queries, on real components (tansu, the sink binary,
//! ClickHouse 26.9 behind the chdb front).
//!
//! * `enriched_topic_recreated_under_a_running_sink`: records 0..N1 stored, the topic deleted and
//!   created again (offsets from 0 again, as after a memory broker's restart), records N1..N
//!   produced: every record once (oracle: the unique `src_pod = web-<i>` of each record), the
//!   rows of each life under the topic id the broker gave it (oracle: the broker's own ids,
//!   read before and after the re-creation). librdkafka 2.12 can crash (SIGSEGV in its
//!   metadata cache, from a Fetch response's leader-discovery tags naming no topic) when tansu
//!   deletes a topic it is fetching: the test restarts the sink if it died, as a supervisor
//!   would, and the restarted sink must not resume inside the new topic at the old topic's
//!   committed position (tansu keeps no commit metadata). The sink is a static member of its
//!   group: tansu 0.6 keeps a member that died in the middle of a rebalance as the group's leader
//!   for ever, and only the same instance id rejoining takes its place.
//! * `recovery_queries_read_the_projections`: EXPLAIN of both recovery queries on the migrated
//!   `flows` table names the projections of migration 0005, not the table.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use flowlens_runtime::incarnation::{hex, Probe};
use flowlens_runtime::kafka::KafkaConfig;
use flowlens_sink::row::sample_flow_at;
use flowlens_testkit::{
    delete_topics, require, send_tracking_ends, unique, Chdb, ChildGuard, Outgoing, Tansu, TANSU,
    VENV_PYTHON,
};

fn skip() -> bool {
    require(VENV_PYTHON, "CHDB") || require(TANSU, "CHDB")
}

fn base_ns() -> i64 {
    flowlens_testkit::hour_ago_ns()
}

async fn produce(kafka: &KafkaConfig, ids: std::ops::Range<u32>, base: i64) {
    let producer: rdkafka::producer::FutureProducer = kafka
        .producer_config()
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let records: Vec<Outgoing> = ids
        .map(|i| {
            let mut buf = Vec::new();
            flowlens_schemas::encode(&sample_flow_at(i, base), &mut buf).unwrap();
            ((i % 2) as i32, i.to_string(), buf)
        })
        .collect();
    let mut ends = Default::default();
    send_tracking_ends(&producer, &kafka.topics.enriched_flows, records, &mut ends).await;
}

async fn wait_rows(ch: &clickhouse::Client, n: u64, log: &Path, mut tick: impl FnMut()) {
    let start = Instant::now();
    loop {
        tick();
        let rows: u64 = ch
            .query("SELECT count() FROM flows")
            .fetch_one()
            .await
            .unwrap_or(0);
        assert!(rows <= n, "{rows} rows > {n} records: duplicates");
        if rows == n {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{rows}/{n} rows; sink log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enriched_topic_recreated_under_a_running_sink() {
    if skip() {
        return;
    }
    let (tansu, chdb) = (Tansu::start(), Chdb::start());
    let name = unique("reborn");
    let mut kafka = KafkaConfig {
        brokers: vec![tansu.broker()],
        client_id: name.clone(),
        partitions: 2,
        ..Default::default()
    };
    kafka.topics.enriched_flows = format!("{name}.enriched");
    kafka.topics.dead_letter = format!("{name}.dlq");
    let topic = kafka.topics.enriched_flows.clone();
    kafka
        .ensure_topics(&[(&topic, false), (&kafka.topics.dead_letter, false)])
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sink.toml");
    std::fs::write(
        &config,
        format!(
            "[clickhouse]\nurl = \"{ch}\"\n[batch]\nmax_rows = 500\nmax_age_ms = 300\n\
             [sink]\ngroup_id = \"{name}-sink\"\nretry_initial_ms = 100\nretry_max_ms = 1000\n\
             [kafka]\nbrokers = [\"{b}\"]\nclient_id = \"{name}\"\npartitions = 2\n\
             [kafka.topics]\nenriched_flows = \"{topic}\"\ndead_letter = \"{name}.dlq\"\n\
             [kafka.properties]\n\"group.instance.id\" = \"{name}\"\n\
             [telemetry]\nlog_level = \"info,flowlens_sink=debug,flowlens_runtime=debug\"\n",
            ch = chdb.url(),
            b = tansu.broker(),
        ),
    )
    .unwrap();
    let log = dir.path().join("sink.log");
    let start_sink = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowlens-sink"));
        cmd.arg("-c").arg(&config).env_remove("RUST_LOG");
        // Appends: every run's lines stay in the log.
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        cmd.stdout(out.try_clone().unwrap()).stderr(out);
        ChildGuard::spawn_with_output("flowlens-sink", &mut cmd)
    };
    let mut sink = start_sink();
    let mut restarts = 0;
    let mut supervise = || {
        if sink.exited() {
            restarts += 1;
            eprintln!("the sink died; restarting it");
            sink = start_sink();
        }
    };
    let probe = Probe::new(&kafka, Duration::from_secs(10)).unwrap();
    let first = probe.topic_id(&topic).unwrap().expect("a topic id");

    const N1: u32 = 3_000;
    const N: u32 = 5_000;
    let base = base_ns();
    let ch = clickhouse::Client::default().with_url(chdb.url());
    produce(&kafka, 0..N1, base).await;
    wait_rows(&ch, u64::from(N1), &log, &mut supervise).await;

    delete_topics(&tansu.broker(), &[&topic]).await;
    kafka.ensure_topics(&[(&topic, false)]).await.unwrap();
    let second = probe.topic_id(&topic).unwrap().expect("a topic id");
    assert_ne!(first, second);
    produce(&kafka, N1..N, base).await;
    wait_rows(&ch, u64::from(N), &log, &mut supervise).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (rows, ids): (u64, u64) = ch
        .query("SELECT count(), uniqExact(src_pod) FROM flows")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        (rows, ids),
        (u64::from(N), u64::from(N)),
        "each record once"
    );
    let per_stream: Vec<(String, u64, u64)> = ch
        .query(
            "SELECT lower(hex(kafka_stream)), count(), max(kafka_offset) FROM flows \
             GROUP BY kafka_stream ORDER BY min(time_inserted)",
        )
        .fetch_all()
        .await
        .unwrap();
    let per_partition = |n: u32| u64::from(n / 2 - 1);
    assert_eq!(
        per_stream,
        [
            (hex(&first), u64::from(N1), per_partition(N1)),
            (hex(&second), u64::from(N - N1), per_partition(N - N1)),
        ],
        "each life under its topic id, offsets from 0 again"
    );
    eprintln!("sink restarts after a crash: {restarts}");
}

#[tokio::test]
async fn recovery_queries_read_the_projections() {
    if require(VENV_PYTHON, "CHDB") {
        return;
    }
    let chdb = Chdb::start();
    let config = flowlens_sink::config::ClickHouseConfig {
        url: chdb.url(),
        ..Default::default()
    };
    let migrations = flowlens_sink::migrate::embedded().unwrap();
    flowlens_sink::migrate::apply(&config, &migrations)
        .await
        .unwrap();
    let inserter = flowlens_sink::insert::Inserter::new(&config).unwrap();
    let rows: Vec<_> = (0..1_000u32)
        .map(|i| {
            let mut row =
                flowlens_sink::row::FlowRow::try_from(sample_flow_at(i, base_ns())).unwrap();
            row.kafka_topic = "t".into();
            row.kafka_partition = (i % 2) as u16;
            row.kafka_offset = u64::from(i / 2);
            row.kafka_stream = [1; 16];
            row.origin_stream = [2; 16];
            row.origin_offset = i64::from(i);
            row
        })
        .collect();
    inserter.write(&rows, None).await.unwrap();
    let client = flowlens_sink::insert::client(&config).unwrap();
    let queries = flowlens_sink::recovery::Queries::for_table(&client, "flows")
        .await
        .unwrap();
    for (sql, projection) in [
        (queries.positions_sql(), "kafka_positions"),
        (queries.marks_sql(), "origin_positions"),
    ] {
        let plan: Vec<String> = client
            .query(&format!("EXPLAIN {sql}"))
            .bind("t")
            .bind(1u16)
            .fetch_all()
            .await
            .unwrap();
        let plan = plan.join("\n");
        assert!(
            plan.contains(&format!("ReadFromMergeTree ({projection})")),
            "{projection} not read:\n{plan}"
        );
    }
    let stored = queries.stored(&client, "t", 1).await.unwrap();
    assert_eq!(stored.streams.len(), 1);
    assert_eq!(stored.streams[0].max_offset, 499);
    assert_eq!(stored.hwm[&([2; 16], 0)], 999);
}
