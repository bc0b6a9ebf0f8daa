//! `flowlens_consumer_lag_records` of the real `flowlens-sink` binary on tansu and the chdb
//! front: while ClickHouse is away (the sink waits for its schema, then retries its inserts),
//! the lag it serves per enriched partition is the number of records the test produced there
//! since the last commit and what the broker says (high watermark − the group's committed
//! offset, read by the test's own clients); once ClickHouse is back the rows are stored once,
//! the offsets committed, and the lag drops to 0. First with nothing committed, then with
//! offsets committed.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{base_ns, spawn, wait_exactly_once};
use flowlens_runtime::kafka::KafkaConfig;
use flowlens_sink::row::sample_flow_at;
use flowlens_testkit::{
    committed, free_port, producer, require, send, unique, wait_lag, Chdb, Tansu, TANSU,
    VENV_PYTHON,
};

const TIMEOUT: Duration = Duration::from_secs(90);

/// Produces records `from..to` (unique id `src_pod = "web-<i>"`) round-robin over 2
/// partitions, one at a time: tansu's high watermark counts a batch of several records as one.
async fn produce(brokers: &str, topic: &str, from: u32, to: u32) {
    let (p, base) = (producer(brokers), base_ns());
    for i in from..to {
        let mut buf = Vec::new();
        flowlens_schemas::encode(&sample_flow_at(i, base), &mut buf).unwrap();
        send(&p, topic, (i % 2) as i32, &i.to_string(), Some(&buf)).await;
    }
}

async fn lag_is(kafka: &KafkaConfig, group: &str, metrics: u16, want: &[i64]) {
    let (brokers, group, topic) = (
        kafka.brokers[0].clone(),
        group.to_owned(),
        kafka.topics.enriched_flows.clone(),
    );
    let want: BTreeMap<i32, i64> = (0..).zip(want.iter().copied()).collect();
    tokio::task::spawn_blocking(move || {
        wait_lag(&brokers, &group, &topic, (metrics, "sink"), &want, TIMEOUT)
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_the_uncommitted_records_and_drops_to_zero() {
    if require(VENV_PYTHON, "CHDB") || require(TANSU, "TANSU") {
        return;
    }
    let mut chdb = Chdb::start();
    chdb.stop();
    let tansu = Tansu::start();
    let topic = unique("lag");
    let group = format!("{topic}-sink");
    let mut kafka = KafkaConfig {
        brokers: vec![tansu.broker()],
        create_topics: true,
        partitions: 2,
        ..Default::default()
    };
    kafka.topics.enriched_flows = topic.clone();
    kafka.topics.dead_letter = format!("{topic}.dlq");
    kafka
        .ensure_topics(&[(&topic, false), (&kafka.topics.dead_letter, false)])
        .await
        .unwrap();
    let metrics = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sink.toml");
    std::fs::write(
        &config,
        format!(
            "[clickhouse]\nurl = \"{}\"\ntimeout_ms = 5000\n[batch]\nmax_age_ms = 300\n\
             [sink]\ngroup_id = \"{group}\"\nretry_initial_ms = 100\nretry_max_ms = 1000\n\
             [kafka]\nbrokers = [\"{}\"]\ncreate_topics = false\n\
             [kafka.topics]\nenriched_flows = \"{topic}\"\ndead_letter = \"{topic}.dlq\"\n\
             [telemetry]\nmetrics_listen = \"127.0.0.1:{metrics}\"\n",
            chdb.url(),
            tansu.broker()
        ),
    )
    .unwrap();
    let log = dir.path().join("sink.log");
    let mut sink = spawn(&config, &[], &log);

    // ClickHouse away at start: the sink waits for its schema, nothing is committed yet.
    lag_is(&kafka, &group, metrics, &[0, 0]).await;
    // Records 0..11 round-robin: 6 on partition 0, 5 on partition 1.
    produce(&kafka.brokers[0], &topic, 0, 11).await;
    lag_is(&kafka, &group, metrics, &[6, 5]).await;
    chdb.start_again();
    lag_is(&kafka, &group, metrics, &[0, 0]).await;
    let ch = clickhouse::Client::default().with_url(chdb.url());
    wait_exactly_once(&ch, "flows", 11, TIMEOUT).await;
    let positions = tokio::task::block_in_place(|| committed(&kafka.brokers[0], &group, &topic));
    assert_eq!(positions, [Some(6), Some(5)]);

    // ClickHouse away while running: inserts are retried, nothing more is committed.
    chdb.stop();
    produce(&kafka.brokers[0], &topic, 11, 18).await;
    lag_is(&kafka, &group, metrics, &[3, 4]).await;
    chdb.start_again();
    lag_is(&kafka, &group, metrics, &[0, 0]).await;
    wait_exactly_once(&ch, "flows", 18, TIMEOUT).await;
    let positions = tokio::task::block_in_place(|| committed(&kafka.brokers[0], &group, &topic));
    assert_eq!(positions, [Some(9), Some(9)]);
    assert!(sink.stop_with(libc::SIGTERM, Duration::from_secs(30)));
}
