//! The enricher against librdkafka's mock cluster: the happy path (join, dead letter, commits)
//! and a failed delivery that must hold back the committed offset.

mod common;

use common::*;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

fn mock_with_topics(
    config: &flowlens_enricher::Config,
    raw_partitions: i32,
) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let mock = MockCluster::new(1).unwrap();
    let t = &config.kafka.topics;
    mock.create_topic(&t.raw_flows, raw_partitions, 1).unwrap();
    mock.create_topic(&t.interfaces, 1, 1).unwrap();
    mock.create_topic(&t.enriched_flows, 2, 1).unwrap();
    mock.create_topic(&t.dead_letter, 1, 1).unwrap();
    mock
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enriches_dead_letters_and_commits_everything() {
    // Placeholder brokers: replaced once the mock cluster is up.
    let mut config = config("127.0.0.1:1", false);
    let mock = mock_with_topics(&config, 2);
    config.kafka.brokers = vec![mock.bootstrap_servers()];
    happy_path(config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_delivery_is_never_committed_past() {
    init_logging();
    let mut config = config("127.0.0.1:1", false);
    let mock = mock_with_topics(&config, 1);
    let brokers = mock.bootstrap_servers();
    config.kafka.brokers = vec![brokers.clone()];
    // One record at a time, so each Produce request carries exactly one enriched record.
    config.enricher.max_in_flight = 1;
    let t = config.kafka.topics.clone();
    let p = producer(&brokers);
    send(
        &p,
        &t.interfaces,
        0,
        "node-1/7",
        Some(&encoded(&interface("node-1", 7, "veth7"))),
    )
    .await;
    for n in 0..10 {
        send(
            &p,
            &t.raw_flows,
            0,
            "node-1/7",
            Some(&encoded(&flow("node-1", 7, n))),
        )
        .await;
    }
    drop(p);

    // From now on: 5 Produce requests succeed, then every one fails with a permanent error.
    const OK: usize = 5;
    let mut errors = vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR; OK];
    errors.extend([RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 50]);
    mock.request_errors(RDKafkaApiKey::Produce, &errors);

    let shutdown = flowlens_runtime::Shutdown::new();
    let result = tokio::time::timeout(TIMEOUT, flowlens_enricher::run(config.clone(), shutdown))
        .await
        .expect("enricher must stop by itself on a failed delivery");
    let err = result.expect_err("a failed delivery must fail the enricher");
    let text = format!("{err:#}");
    assert!(text.contains(&format!("{}/0/{OK}", t.raw_flows)), "{text}");

    let group = config.enricher.group_id.clone();
    let (committed, enriched_end) = tokio::task::spawn_blocking(move || {
        (
            committed(&brokers, &group, &t.raw_flows),
            end_offsets(&brokers, &t.enriched_flows),
        )
    })
    .await
    .unwrap();
    assert_eq!(
        enriched_end.iter().sum::<i64>(),
        OK as i64,
        "records delivered"
    );
    assert_eq!(
        committed,
        vec![Some(OK as i64)],
        "commit stops at the first undelivered record"
    );
}
