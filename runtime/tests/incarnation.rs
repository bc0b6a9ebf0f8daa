//! Topic incarnations against a real broker (tansu): the topic id read through
//! `rd_kafka_DescribeTopics` is stable while the topic lives and new after it is deleted and
//! created again (oracle: the broker's own DeleteTopics/CreateTopics); single records read back
//! by position equal what the producer was acknowledged for (oracle: the delivery reports).

use std::time::Duration;

use flowlens_runtime::incarnation::{fallback_id, Probe};
use flowlens_runtime::kafka::KafkaConfig;
use flowlens_testkit::{delete_topics, producer, require, send, unique, Tansu, TANSU};

fn kafka(tansu: &Tansu, topic: &str) -> KafkaConfig {
    let mut k = KafkaConfig {
        brokers: vec![tansu.broker()],
        client_id: "incarnation-test".into(),
        partitions: 2,
        ..Default::default()
    };
    k.topics.raw_flows = topic.into();
    k
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_ids_name_each_life_of_a_topic() {
    if require(TANSU, "TANSU") {
        return;
    }
    let tansu = Tansu::start();
    let topic = unique("incarnation");
    let k = kafka(&tansu, &topic);
    k.ensure_topics(&[(&topic, false)]).await.unwrap();
    let probe = Probe::new(&k, Duration::from_secs(10)).unwrap();
    let first = probe
        .topic_id(&topic)
        .unwrap()
        .expect("tansu gives topic ids");
    assert_eq!(probe.topic_id(&topic).unwrap(), Some(first));
    assert!(probe.topic_id("no-such-topic-here").is_err());

    let p = producer(&tansu.broker());
    let o0 = send(&p, &topic, 1, "k", Some(b"zero")).await;
    let o1 = send(&p, &topic, 1, "k", Some(b"one")).await;
    let at = probe
        .record_at(&topic, 1, o1)
        .unwrap()
        .expect("record 1 held");
    assert_eq!((at.offset, at.value.as_slice()), (o1, &b"one"[..]));
    assert!(at.timestamp_ms > 1_600_000_000_000);
    let earliest = probe.earliest(&topic, 1).unwrap().unwrap();
    assert_eq!(
        (earliest.offset, earliest.value.as_slice()),
        (o0, &b"zero"[..])
    );
    assert_eq!(probe.record_at(&topic, 1, o1 + 100).unwrap(), None);
    assert_eq!(probe.earliest(&topic, 0).unwrap(), None);
    assert_eq!(probe.stream_id(&topic, 1).unwrap(), Some(first));
    assert_ne!(
        fallback_id(&topic, 1, earliest.timestamp_ms, &earliest.value),
        first
    );

    delete_topics(&tansu.broker(), &[&topic]).await;
    // While the topic does not exist: an error naming it, not an id.
    let missing = probe.topic_id(&topic);
    assert!(missing.is_err(), "{missing:?}");
    k.ensure_topics(&[(&topic, false)]).await.unwrap();
    let second = probe.topic_id(&topic).unwrap().expect("a topic id again");
    assert_ne!(first, second, "a re-created topic has a new id");
    assert_eq!(probe.record_at(&topic, 1, o1).unwrap(), None);
}
