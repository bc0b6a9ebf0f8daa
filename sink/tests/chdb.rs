//! End to end against real components: tansu (Kafka protocol) and the ClickHouse 26.9 engine
//! behind scripts/stack/chdb_http.py. The sink runs in-process; results are read back from
//! ClickHouse with the clickhouse crate and from Kafka with rdkafka.
//!
//! Needs /opt/flowlens-venv (chdb + tansu); `FLOWLENS_SKIP_CHDB=1` skips.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use flowlens_runtime::kafka::KafkaConfig;
use flowlens_runtime::Shutdown;
use flowlens_sink::config::{BatchConfig, ClickHouseConfig, SinkConfig};
use flowlens_sink::row::sample_flow_at;
use flowlens_sink::Config;
use flowlens_testkit::{
    require, send_tracking_ends, unique, Chdb, Outgoing, Tansu, TANSU, VENV_PYTHON,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};

const PARTITIONS: i32 = 2;
const GARBAGE: &[u8] = b"\xC3\x01not an avro record at all";

fn skip() -> bool {
    require(VENV_PYTHON, "CHDB") || require(TANSU, "CHDB")
}

fn config(tansu: &Tansu, chdb: &Chdb, name: &str) -> Config {
    let mut kafka = KafkaConfig {
        brokers: vec![tansu.broker()],
        client_id: name.into(),
        partitions: PARTITIONS,
        ..Default::default()
    };
    kafka.topics.enriched_flows = format!("{name}.enriched");
    kafka.topics.dead_letter = format!("{name}.dlq");
    Config {
        kafka,
        clickhouse: ClickHouseConfig {
            url: chdb.url(),
            ..Default::default()
        },
        batch: BatchConfig {
            max_rows: 300,
            max_age_ms: 300,
            ..Default::default()
        },
        sink: SinkConfig {
            group_id: format!("{name}-group"),
            retry_initial_ms: 100,
            retry_max_ms: 400,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Flow times of the produced records: recent, because the flows table drops rows older than
/// its TTL (30 days) at insert time. Whole seconds + 123456789 ns.
fn base_ns() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    (now - 3600) * 1_000_000_000 + 123_456_789
}

/// Produces `n` sample flows (keyed, spread over the partitions), plus `GARBAGE` if asked.
/// Returns the end offset (last delivered offset + 1) of each partition, from the delivery
/// reports: tansu's ListOffsets (`fetch_watermarks`) answers with batch counts, not offsets.
async fn produce(config: &Config, n: u32, garbage: bool, base: i64) -> Ends {
    config
        .kafka
        .ensure_topics(&[
            (&config.kafka.topics.enriched_flows, false),
            (&config.kafka.topics.dead_letter, false),
        ])
        .await
        .unwrap();
    let producer: FutureProducer = config.kafka.producer_config().create().unwrap();
    let mut records: Vec<Outgoing> = (0..n)
        .map(|i| {
            let mut buf = Vec::new();
            flowlens_schemas::encode(&sample_flow_at(i, base), &mut buf).unwrap();
            ((i % PARTITIONS as u32) as i32, i.to_string(), buf)
        })
        .collect();
    if garbage {
        records.insert(n as usize / 2 + 1, (1, "garbage".into(), GARBAGE.to_vec()));
    }
    let mut ends = Ends::new();
    send_tracking_ends(
        &producer,
        &config.kafka.topics.enriched_flows,
        records,
        &mut ends,
    )
    .await;
    assert_eq!(ends.len(), PARTITIONS as usize);
    ends
}

type Ends = BTreeMap<i32, i64>;

/// (committed, end) offsets of the sink's group per partition of the input topic.
fn offsets(config: &Config, ends: &Ends) -> BTreeMap<i32, (Option<i64>, i64)> {
    let consumer: BaseConsumer = config
        .kafka
        .consumer_config(&config.sink.group_id)
        .create()
        .unwrap();
    let topic = &config.kafka.topics.enriched_flows;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    (0..PARTITIONS)
        .map(|p| {
            let high = ends[&p];
            let c = match committed.find_partition(topic, p).unwrap().offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            (p, (c, high))
        })
        .collect()
}

fn all_committed(o: &BTreeMap<i32, (Option<i64>, i64)>) -> bool {
    o.values().all(|(c, end)| *c == Some(*end))
}

async fn count(client: &clickhouse::Client) -> u64 {
    client
        .query("SELECT count() FROM flows")
        .fetch_one::<u64>()
        .await
        .unwrap_or_else(|e| {
            eprintln!("count: {e}");
            0
        })
}

/// Waits until the table has `n` rows and the group committed up to the end of every partition.
async fn wait_done(
    config: &Config,
    ends: &Ends,
    client: &clickhouse::Client,
    n: u64,
    timeout: Duration,
) {
    let start = Instant::now();
    loop {
        let rows = count(client).await;
        let o = offsets(config, ends);
        if rows == n && all_committed(&o) {
            return;
        }
        assert!(
            rows <= n,
            "more rows than records produced: {rows} > {n} (duplicates)"
        );
        assert!(
            start.elapsed() < timeout,
            "after {timeout:?}: {rows}/{n} rows, offsets (committed, end) = {o:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn read_dead_letters(config: &Config) -> Vec<(Vec<u8>, String)> {
    let consumer: BaseConsumer = config.kafka.reader_config().create().unwrap();
    let topic = &config.kafka.topics.dead_letter;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let reason = m
                .headers()
                .and_then(|h| {
                    h.iter()
                        .find(|h| h.key == flowlens_runtime::dead_letter::HEADER_REASON)
                        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
                })
                .unwrap_or_default();
            out.push((m.payload().unwrap_or_default().to_vec(), reason));
            if !out.is_empty() {
                // Give a possible duplicate a moment to show up, then stop.
                if start.elapsed() > Duration::from_secs(2) {
                    break;
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_reach_clickhouse_and_offsets_follow() {
    if skip() {
        return;
    }
    let chdb = Chdb::start();
    let tansu = Tansu::start();
    let name = unique("e2e");
    let config = config(&tansu, &chdb, &name);
    const N: u32 = 1000;
    let base = base_ns();
    let ends = produce(&config, N, true, base).await;

    let shutdown = Shutdown::new();
    let started = Instant::now();
    let sink = tokio::spawn(flowlens_sink::run(config.clone(), shutdown.clone()));
    let client = flowlens_sink::insert::client(&config.clickhouse).unwrap();
    wait_done(&config, &ends, &client, N as u64, Duration::from_secs(40)).await;
    eprintln!(
        "{N} records consumed, inserted and committed in {:?}",
        started.elapsed()
    );

    // Exact values.
    let (rows, bytes, packets): (u64, u64, u64) = client
        .query("SELECT count(), sum(bytes), sum(packets) FROM flows")
        .fetch_one()
        .await
        .unwrap();
    let n = u64::from(N);
    assert_eq!(rows, n);
    assert_eq!(packets, n * (n + 1) / 2);
    assert_eq!(bytes, 100 * n * (n + 1) / 2);
    #[derive(Debug, clickhouse::Row, serde::Deserialize, PartialEq)]
    struct Picked {
        src: String,
        dst: String,
        src_port: u16,
        dst_port: u16,
        if_name: String,
        direction: String,
        start_ns: i64,
        src_pod: String,
        dst_pod: String,
        dst_service: String,
    }
    let row: Picked = client
        .query(
            "SELECT IPv6NumToString(src_addr) AS src, IPv6NumToString(dst_addr) AS dst, \
             src_port, dst_port, toString(if_name) AS if_name, toString(direction) AS direction, \
             toUnixTimestamp64Nano(time_flow_start) AS start_ns, toString(src_pod) AS src_pod, \
             toString(dst_pod) AS dst_pod, toString(dst_service) AS dst_service \
             FROM flows WHERE src_pod = 'web-777'",
        )
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        row,
        Picked {
            src: "::ffff:10.0.3.9".into(),
            dst: "2001:db8::1".into(),
            src_port: 10_777,
            dst_port: 443,
            if_name: "eth0".into(),
            direction: "egress".into(),
            start_ns: base + 777_000,
            src_pod: "web-777".into(),
            dst_pod: String::new(),
            dst_service: "api".into(),
        }
    );

    // The garbage record is on the dead-letter topic, with its reason.
    let dead = read_dead_letters(&config);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, GARBAGE);
    assert!(dead[0].1.contains("decode"), "reason: {}", dead[0].1);

    // Migrations are recorded and idempotent.
    let migrations = flowlens_sink::migrate::embedded().unwrap();
    let again = flowlens_sink::migrate::apply(&config.clickhouse, &migrations)
        .await
        .unwrap();
    assert!(again.is_empty(), "re-applied {again:?}");

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(15), sink)
        .await
        .expect("sink stops on shutdown")
        .unwrap()
        .unwrap();
    assert_eq!(count(&client).await, n);
    drop(chdb);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_insert_commits_nothing_then_recovers_exactly_once() {
    if skip() {
        return;
    }
    let chdb = Chdb::start();
    let tansu = Tansu::start();
    let name = unique("fail");
    let mut config = config(&tansu, &chdb, &name);
    // The schema is in place, then `flows` is detached: the sink starts (its schema check
    // passes) and every read-back and insert fails with UNKNOWN_TABLE.
    let migrations = flowlens_sink::migrate::embedded().unwrap();
    flowlens_sink::migrate::apply(&config.clickhouse, &migrations)
        .await
        .unwrap();
    let admin = flowlens_sink::insert::client(&config.clickhouse)
        .unwrap()
        .with_validation(false);
    admin.query("DETACH TABLE flows").execute().await.unwrap();
    config.sink.migrate_on_start = false;
    const N: u32 = 400;
    let ends = produce(&config, N, false, base_ns()).await;
    let before = offsets(&config, &ends);
    assert!(before.values().all(|(c, _)| c.is_none()), "{before:?}");

    let shutdown = Shutdown::new();
    let sink = tokio::spawn(flowlens_sink::run(config.clone(), shutdown.clone()));
    // Let the sink read everything and fail several attempts (batches are ready after 300 ms).
    let start = Instant::now();
    while chdb.log().matches("UNKNOWN_TABLE").count() < 3 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the sink never tried to insert:\n{}",
            chdb.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!sink.is_finished(), "the sink must keep retrying");
    let during = offsets(&config, &ends);
    assert!(
        during.values().all(|(c, _)| c.is_none()),
        "offsets committed although no insert succeeded: {during:?}"
    );

    // Fix ClickHouse: attach the table again. The running sink's retries now succeed.
    admin.query("ATTACH TABLE flows").execute().await.unwrap();
    let client = flowlens_sink::insert::client(&config.clickhouse).unwrap();
    wait_done(
        &config,
        &ends,
        &client,
        u64::from(N),
        Duration::from_secs(30),
    )
    .await;
    // Still exactly N a little later (no duplicate insert of a retried batch).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rows, distinct): (u64, u64) = client
        .query("SELECT count(), uniqExact(src_pod) FROM flows")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!((rows, distinct), (u64::from(N), u64::from(N)));

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(15), sink)
        .await
        .expect("sink stops on shutdown")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn older_schema_stops_with_a_clear_message() {
    if skip() {
        return;
    }
    let chdb = Chdb::start();
    let config = Config {
        clickhouse: ClickHouseConfig {
            url: chdb.url(),
            ..Default::default()
        },
        sink: SinkConfig {
            migrate_on_start: false,
            ..Default::default()
        },
        ..Default::default()
    };
    // Only the first migration applied: an older schema.
    let all = flowlens_sink::migrate::embedded().unwrap();
    flowlens_sink::migrate::apply(&config.clickhouse, &all[..1])
        .await
        .unwrap();
    let e = flowlens_sink::run(config.clone(), Shutdown::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing migrations 0002_"), "{e}");
    assert!(e.contains("flowlens-sink migrate"), "{e}");
    // `migrate` brings it up to date; then the same check passes.
    let applied = flowlens_sink::migrate::apply(&config.clickhouse, &all)
        .await
        .unwrap();
    assert_eq!(
        applied,
        all[1..].iter().map(|m| m.version).collect::<Vec<_>>()
    );
    assert!(flowlens_sink::migrate::check(&config.clickhouse, &all)
        .await
        .unwrap()
        .is_ok());
    // Retention from the config is applied once, then nothing changes.
    let retention = flowlens_sink::config::RetentionConfig {
        raw_days: 7,
        minute_days: 30,
        hour_days: 365,
    };
    let altered = flowlens_sink::migrate::apply_retention(&config.clickhouse, &retention)
        .await
        .unwrap();
    assert_eq!(altered.len(), 9, "{altered:?}");
    let again = flowlens_sink::migrate::apply_retention(&config.clickhouse, &retention)
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
}

/// The deduplication token: the same batch sent twice (an INSERT whose acknowledgement was
/// lost, then retried) is stored once, in `flows` and in every rollup; another token is a new
/// batch.
#[tokio::test]
async fn same_token_is_stored_once_in_flows_and_rollups() {
    if skip() {
        return;
    }
    let chdb = Chdb::start();
    let config = ClickHouseConfig {
        url: chdb.url(),
        ..Default::default()
    };
    let migrations = flowlens_sink::migrate::embedded().unwrap();
    flowlens_sink::migrate::apply(&config, &migrations)
        .await
        .unwrap();
    let inserter = flowlens_sink::insert::Inserter::new(&config).unwrap();
    let base = base_ns();
    let rows: Vec<flowlens_sink::FlowRow> = (0..1000u32)
        .map(|i| {
            let mut r = flowlens_sink::FlowRow::try_from(sample_flow_at(i, base)).unwrap();
            r.kafka_topic = "t".into();
            r.kafka_offset = u64::from(i);
            r
        })
        .collect();
    let client = flowlens_sink::insert::client(&config).unwrap();
    let totals = || async {
        let mut out = Vec::new();
        for table in [
            "flows",
            "flows_iface_1m",
            "flows_iface_1h",
            "flows_k8s_1m",
            "flows_k8s_1h",
            "flows_port_1m",
            "flows_port_1h",
        ] {
            let sql = format!("SELECT sum(packets) FROM {table}");
            out.push(client.query(&sql).fetch_one::<u64>().await.unwrap());
        }
        out
    };
    let one = 1000 * 1001 / 2;
    inserter.write(&rows, Some("t/0/0-999")).await.unwrap();
    assert_eq!(totals().await, vec![one; 7]);
    inserter.write(&rows, Some("t/0/0-999")).await.unwrap();
    assert_eq!(
        totals().await,
        vec![one; 7],
        "a retried batch was stored twice"
    );
    inserter.write(&rows, Some("t/0/1000-1999")).await.unwrap();
    assert_eq!(totals().await, vec![2 * one; 7]);
}
