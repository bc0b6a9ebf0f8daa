//! `/healthz` and `/readyz` of the real `flowlens-enricher` binary: ready only once its
//! interface cache caught up with the topic; while librdkafka's mock cluster (in this process)
//! has its broker down, not ready (Kafka named) but alive; ready again once it is back, and
//! every raw record (unique key) comes out enriched.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use flowlens_enricher::config::Config;
use flowlens_testkit::{assert_alive_for, free_port, wait_probe, ChildGuard};
use rdkafka::message::OwnedMessage;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::Message;

async fn wait(port: u16, path: &'static str, status: u16, needle: &'static str) -> String {
    tokio::task::spawn_blocking(move || {
        wait_probe(port, path, status, needle, Duration::from_secs(60))
    })
    .await
    .unwrap()
}

async fn publish_flows(brokers: &str, topic: &str, from: i64, to: i64) {
    let p = producer(brokers);
    for n in from..to {
        let f = flow("node-1", 7, n);
        send(
            &p,
            topic,
            (n % 2) as i32,
            &format!("flow-{n}"),
            Some(&encoded(&f)),
        )
        .await;
    }
}

/// librdkafka's mock cluster (in this process) with the enricher's four topics, node-1's
/// interface 7 published, and the enricher's configuration for it.
async fn cluster() -> (MockCluster<'static, DefaultProducerContext>, String, Config) {
    let mock = MockCluster::new(1).unwrap();
    let brokers = mock.bootstrap_servers();
    let c = config(&brokers, false);
    let t = &c.kafka.topics;
    mock.create_topic(&t.raw_flows, 2, 1).unwrap();
    mock.create_topic(&t.interfaces, 1, 1).unwrap();
    mock.create_topic(&t.enriched_flows, 2, 1).unwrap();
    mock.create_topic(&t.dead_letter, 1, 1).unwrap();
    let p = producer(&brokers);
    let eth = encoded(&interface("node-1", 7, "veth7"));
    send(&p, &t.interfaces, 0, "node-1/7", Some(&eth)).await;
    (mock, brokers, c)
}

/// The enricher binary's configuration file for `c` in `dir`, with `extra` TOML at its end.
fn config_file(dir: &Path, brokers: &str, c: &Config, extra: &str) -> PathBuf {
    let t = &c.kafka.topics;
    let file = dir.join("enricher.toml");
    std::fs::write(
        &file,
        format!(
            "[enricher]\ngroup_id = \"{}\"\n[kafka]\nbrokers = [\"{brokers}\"]\n\
             create_topics = false\n[kafka.topics]\nraw_flows = \"{}\"\ninterfaces = \"{}\"\n\
             enriched_flows = \"{}\"\ndead_letter = \"{}\"\n\
             [kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n{extra}",
            c.enricher.group_id, t.raw_flows, t.interfaces, t.enriched_flows, t.dead_letter
        ),
    )
    .unwrap();
    file
}

/// At least `n` records of the enriched topic, and their keys.
async fn enriched(brokers: &str, topic: &str, n: i64) -> (Vec<OwnedMessage>, BTreeSet<String>) {
    let (b, topic) = (brokers.to_owned(), topic.to_owned());
    let out = tokio::task::spawn_blocking(move || {
        read_topic(&b, &topic, n as usize, Duration::from_secs(60))
    })
    .await
    .unwrap();
    let keys = out
        .iter()
        .map(|m| String::from_utf8_lossy(m.key().unwrap()).into_owned())
        .collect();
    (out, keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_makes_it_unready_but_alive() {
    let (mock, brokers, c) = cluster().await;
    let t = &c.kafka.topics;
    const N: i64 = 300;
    publish_flows(&brokers, &t.raw_flows, 0, N / 2).await;

    let metrics = free_port();
    let dir = tempfile::tempdir().unwrap();
    let file = config_file(
        dir.path(),
        &brokers,
        &c,
        &format!("[telemetry]\nmetrics_listen = \"127.0.0.1:{metrics}\"\n"),
    );
    let log = dir.path().join("enricher.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowlens-enricher"));
    cmd.arg("--config").arg(&file).env_remove("RUST_LOG");
    let mut enricher = ChildGuard::spawn("flowlens-enricher", &mut cmd, &log);
    let ready = wait(metrics, "/readyz", 200, "ready").await;
    assert_eq!(ready, "ready\n");
    // Ready means the interface cache caught up: the log says so before.
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("interface cache caught up"),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );

    mock.broker_down(1).unwrap();
    let why = wait(metrics, "/readyz", 503, "kafka").await;
    eprintln!("Kafka down, /readyz says:\n{why}");
    tokio::task::spawn_blocking(move || assert_alive_for(metrics, Duration::from_secs(8)))
        .await
        .unwrap();
    mock.broker_up(1).unwrap();
    wait(metrics, "/readyz", 200, "ready").await;
    publish_flows(&brokers, &t.raw_flows, N / 2, N).await;

    // Every raw record came out (at least once: the enricher's guarantee), joined.
    let (out, keys) = enriched(&brokers, &t.enriched_flows, N).await;
    assert_eq!(keys, (0..N).map(|n| format!("flow-{n}")).collect());
    for m in &out {
        let e: flowlens_schemas::EnrichedFlow =
            flowlens_schemas::decode(m.payload().unwrap()).unwrap();
        assert_eq!(e.if_name, "veth7");
    }
    assert!(
        !enricher.exited(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(enricher.stop_with(libc::SIGTERM, Duration::from_secs(30)));
}

/// A producer that delivers nothing (every Produce request answered with a retriable error, as
/// a broker that keeps refusing the producer's id does) stops the enricher after
/// `DELIVERY_STALL` with its records in flight, without committing them; restarted once the
/// broker accepts again, it enriches every record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_that_delivers_nothing_stops_it_without_committing() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let (mock, brokers, c) = cluster().await;
    let t = &c.kafka.topics;
    const N: i64 = 20;
    publish_flows(&brokers, &t.raw_flows, 0, N).await;
    // Every Produce request from now on is refused, retriably: librdkafka retries for ever
    // (no message timeout) and no delivery report comes.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 100_000],
    );

    let dir = tempfile::tempdir().unwrap();
    let file = config_file(dir.path(), &brokers, &c, "");
    let spawn = |log: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowlens-enricher"));
        // The short form of --config.
        cmd.arg("-c").arg(&file).env_remove("RUST_LOG");
        ChildGuard::spawn("flowlens-enricher", &mut cmd, &dir.path().join(log))
    };
    let started = std::time::Instant::now();
    let mut stuck = spawn("stuck.log");
    while !stuck.exited() {
        assert!(
            started.elapsed() < Duration::from_secs(150),
            "the enricher never gave up on its producer"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stalled_after = started.elapsed();
    let log = std::fs::read_to_string(dir.path().join("stuck.log")).unwrap();
    assert!(
        log.contains("no delivery report for") && log.contains("stopping without committing"),
        "{log}"
    );
    assert!(
        stalled_after >= flowlens_enricher::pipeline::DELIVERY_STALL,
        "gave up after {stalled_after:?}"
    );
    let (b, g, raw) = (
        brokers.clone(),
        c.enricher.group_id.clone(),
        t.raw_flows.clone(),
    );
    let committed = tokio::task::spawn_blocking(move || flowlens_testkit::committed(&b, &g, &raw))
        .await
        .unwrap();
    // Nothing delivered: no position past a record (none, or the partitions' starts).
    assert!(
        committed.iter().all(|c| c.unwrap_or(0) == 0),
        "nothing delivered, nothing committed: {committed:?}"
    );
    eprintln!("gave up {stalled_after:?} after its start; committed {committed:?}");

    mock.clear_request_errors(RDKafkaApiKey::Produce);
    let mut enricher = spawn("again.log");
    let (_, keys) = enriched(&brokers, &t.enriched_flows, N).await;
    assert_eq!(keys, (0..N).map(|n| format!("flow-{n}")).collect());
    assert!(enricher.stop_with(libc::SIGTERM, Duration::from_secs(30)));
}
