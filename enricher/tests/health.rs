//! `/healthz` and `/readyz` of the real `flowlens-enricher` binary: ready only once its
//! interface cache caught up with the topic; while librdkafka's mock cluster (in this process)
//! has its broker down, not ready (Kafka named) but alive; ready again once it is back, and
//! every raw record (unique key) comes out enriched.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::*;
use flowlens_runtime::testkit::{assert_alive_for, free_port, wait_probe, ChildGuard};
use rdkafka::mocking::MockCluster;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_makes_it_unready_but_alive() {
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
    const N: i64 = 300;
    publish_flows(&brokers, &t.raw_flows, 0, N / 2).await;

    let metrics = free_port();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("enricher.toml");
    std::fs::write(
        &file,
        format!(
            "[enricher]\ngroup_id = \"{}\"\n[kafka]\nbrokers = [\"{brokers}\"]\n\
             create_topics = false\n[kafka.topics]\nraw_flows = \"{}\"\ninterfaces = \"{}\"\n\
             enriched_flows = \"{}\"\ndead_letter = \"{}\"\n\
             [kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\
             [telemetry]\nmetrics_listen = \"127.0.0.1:{metrics}\"\n",
            c.enricher.group_id, t.raw_flows, t.interfaces, t.enriched_flows, t.dead_letter
        ),
    )
    .unwrap();
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
    let (b, topic) = (brokers.clone(), t.enriched_flows.clone());
    let out = tokio::task::spawn_blocking(move || {
        read_topic(&b, &topic, N as usize, Duration::from_secs(60))
    })
    .await
    .unwrap();
    let keys: BTreeSet<String> = out
        .iter()
        .map(|m| String::from_utf8_lossy(m.key().unwrap()).into_owned())
        .collect();
    let want: BTreeSet<String> = (0..N).map(|n| format!("flow-{n}")).collect();
    assert_eq!(keys, want);
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
