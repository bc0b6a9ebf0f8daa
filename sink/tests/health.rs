//! `/healthz` and `/readyz` of the real `flowlens-sink` binary while its dependencies go away
//! and come back: ClickHouse (the chdb front stopped and started again on the same data) and
//! Kafka (librdkafka's mock cluster, in this process, taking its broker down and up). Each
//! time: not ready, naming the dependency, but alive; then ready again; and at the end
//! ClickHouse holds every record exactly once (by unique id).

mod common;

use std::time::Duration;

use common::{produce, spawn, wait_exactly_once};
use flowlens_runtime::kafka::KafkaConfig;
use flowlens_testkit::{
    assert_alive_for, free_port, require, unique, wait_probe, Chdb, TANSU, VENV_PYTHON,
};

fn skip() -> bool {
    require(VENV_PYTHON, "CHDB") || require(TANSU, "CHDB")
}

async fn alive_throughout(port: u16, period: Duration) {
    tokio::task::spawn_blocking(move || assert_alive_for(port, period))
        .await
        .unwrap();
}

async fn wait(port: u16, path: &'static str, status: u16, needle: &'static str) -> String {
    tokio::task::spawn_blocking(move || {
        wait_probe(port, path, status, needle, Duration::from_secs(60))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependencies_down_make_it_unready_but_alive() {
    use rdkafka::mocking::MockCluster;
    if skip() {
        return;
    }
    let mut chdb = Chdb::start();
    let mock = MockCluster::new(1).unwrap();
    let topic = unique("health");
    mock.create_topic(&topic, 2, 1).unwrap();
    mock.create_topic(&format!("{topic}.dlq"), 1, 1).unwrap();
    let kafka = KafkaConfig {
        brokers: vec![mock.bootstrap_servers()],
        ..Default::default()
    };
    let metrics = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sink.toml");
    std::fs::write(
        &config,
        format!(
            "[clickhouse]\nurl = \"{}\"\ntimeout_ms = 5000\n[batch]\nmax_age_ms = 300\n\
             [sink]\ngroup_id = \"{topic}-sink\"\nretry_initial_ms = 100\nretry_max_ms = 1000\n\
             [kafka]\nbrokers = [\"{}\"]\ncreate_topics = false\n\
             [kafka.topics]\nenriched_flows = \"{topic}\"\ndead_letter = \"{topic}.dlq\"\n\
             [kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\
             [telemetry]\nmetrics_listen = \"127.0.0.1:{metrics}\"\n",
            chdb.url(),
            mock.bootstrap_servers()
        ),
    )
    .unwrap();
    const N: u32 = 3_000;
    produce(&kafka, &topic, 2, 0, N / 3).await;
    let log = dir.path().join("sink.log");
    let mut sink = spawn(&config, &[], &log);
    let ready = wait(metrics, "/readyz", 200, "ready").await;
    assert_eq!(ready, "ready\n");
    let ch = clickhouse::Client::default().with_url(chdb.url());
    wait_exactly_once(&ch, "flows", u64::from(N / 3), Duration::from_secs(60)).await;

    // ClickHouse away: not ready (ClickHouse named), alive; records keep arriving meanwhile.
    chdb.stop();
    produce(&kafka, &topic, 2, N / 3, 2 * N / 3).await;
    let why = wait(metrics, "/readyz", 503, "clickhouse").await;
    eprintln!("ClickHouse down, /readyz says:\n{why}");
    alive_throughout(metrics, Duration::from_secs(8)).await;
    chdb.start_again();
    wait(metrics, "/readyz", 200, "ready").await;
    let ch = clickhouse::Client::default().with_url(chdb.url());
    wait_exactly_once(&ch, "flows", u64::from(2 * N / 3), Duration::from_secs(60)).await;

    // The broker away: not ready (Kafka named), alive.
    mock.broker_down(1).unwrap();
    let why = wait(metrics, "/readyz", 503, "kafka").await;
    eprintln!("Kafka down, /readyz says:\n{why}");
    alive_throughout(metrics, Duration::from_secs(8)).await;
    mock.broker_up(1).unwrap();
    wait(metrics, "/readyz", 200, "ready").await;
    produce(&kafka, &topic, 2, 2 * N / 3, N).await;
    wait_exactly_once(&ch, "flows", u64::from(N), Duration::from_secs(90)).await;
    assert!(!sink.exited(), "{}", std::fs::read_to_string(&log).unwrap());
    assert!(sink.stop_with(libc::SIGTERM, Duration::from_secs(20)));
}
