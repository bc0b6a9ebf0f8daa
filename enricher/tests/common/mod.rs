//! Helpers shared by the enricher integration tests: records, a producer, topic readers and
//! the group's committed offsets.
#![allow(dead_code)]

use std::time::Duration;

use rdkafka::Message;

use flowlens_enricher::Config;
use flowlens_schemas::{ip_to_v6, Direction, Interface, RawFlow};
#[allow(unused_imports)]
pub use flowlens_testkit::{committed, end_offsets, header, producer, read_topic, send, unique};

pub const TIMEOUT: Duration = Duration::from_secs(20);

/// Logs to stderr when RUST_LOG is set (quiet otherwise).
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        flowlens_runtime::telemetry::init_logging(&Default::default());
    }
}

/// An enricher configuration on `brokers` with topic, group and client names unique to one test.
pub fn config(brokers: &str, create_topics: bool) -> Config {
    let mut c = Config::default();
    c.kafka.brokers = brokers.split(',').map(str::to_owned).collect();
    c.kafka.create_topics = create_topics;
    c.kafka.partitions = 2;
    c.kafka.client_id = unique("enricher-test");
    c.kafka.topics.raw_flows = unique("raw");
    c.kafka.topics.interfaces = unique("interfaces");
    c.kafka.topics.enriched_flows = unique("enriched");
    c.kafka.topics.dead_letter = unique("deadletter");
    c.enricher.group_id = unique("group");
    c.enricher.interfaces_ready_timeout_ms = 10_000;
    c
}

pub fn flow(host: &str, ifindex: i32, n: i64) -> RawFlow {
    RawFlow {
        host: host.into(),
        ifindex,
        direction: Direction::Ingress,
        time_flow_start_ns: 1_000 + n,
        time_flow_end_ns: 2_000 + n,
        time_exported_ns: 3_000 + n,
        etype: 0x0800,
        vlan_id: 0,
        proto: 17,
        src_addr: ip_to_v6("10.1.0.1".parse().unwrap()),
        dst_addr: ip_to_v6("10.1.0.2".parse().unwrap()),
        src_port: 5000 + n as i32,
        dst_port: 53,
        icmp_type: 0,
        icmp_code: 0,
        tcp_flags: 0,
        packets: n + 1,
        bytes: 100 * (n + 1),
        sampling_rate: 1,
        ..Default::default()
    }
}

pub fn interface(host: &str, ifindex: i32, name: &str) -> Interface {
    Interface {
        host: host.into(),
        ifindex,
        name: name.into(),
        mac: "02:00:00:00:00:07".into(),
        mtu: 1500,
        kind: "veth".into(),
        netns: "pod-ns".into(),
        netns_inode: 4026532000,
        oper_state: "up".into(),
        time_observed_ns: 1,
    }
}

pub fn encoded<R: flowlens_schemas::AvroRecord + serde::Serialize>(record: &R) -> Vec<u8> {
    let mut buf = Vec::new();
    flowlens_schemas::encode(record, &mut buf).unwrap();
    buf
}

/// Raw flows produced by [`publish_inputs`]: every 5th one is on interface 8, whose metadata was
/// tombstoned, the others on interface 7 (`veth7`).
pub const FLOWS: i64 = 20;
pub const GARBAGE: &[u8] = b"this is not avro";

pub fn ifindex_of(n: i64) -> i32 {
    if n % 5 == 4 {
        8
    } else {
        7
    }
}

/// Publishes the interfaces (node-1/7 known, node-1/8 added then tombstoned) and [`FLOWS`] raw
/// flows over 2 partitions, with one garbage message in the middle of partition 0.
pub async fn publish_inputs(config: &Config) -> Inputs {
    let brokers = config.kafka.brokers.join(",");
    let t = &config.kafka.topics;
    let p = producer(&brokers);
    let eth = encoded(&interface("node-1", 7, "veth7"));
    send(&p, &t.interfaces, 0, "node-1/7", Some(&eth)).await;
    let gone = encoded(&interface("node-1", 8, "veth8"));
    send(&p, &t.interfaces, 0, "node-1/8", Some(&gone)).await;
    send(&p, &t.interfaces, 0, "node-1/8", None).await;
    let mut inputs = Inputs {
        garbage_offset: -1,
        raw_end: vec![0, 0],
        positions: Default::default(),
    };
    for n in 0..FLOWS {
        if n == FLOWS / 2 {
            inputs.garbage_offset = send(&p, &t.raw_flows, 0, "garbage", Some(GARBAGE)).await;
        }
        let f = flow("node-1", ifindex_of(n), n);
        let key = format!("node-1/{}", f.ifindex);
        let partition = (n % 2) as usize;
        let offset = send(&p, &t.raw_flows, partition as i32, &key, Some(&encoded(&f))).await;
        inputs.positions.insert(n, (partition as i32, offset));
        inputs.raw_end[partition] = inputs.raw_end[partition].max(offset + 1);
    }
    inputs.raw_end[0] = inputs.raw_end[0].max(inputs.garbage_offset + 1);
    inputs
}

/// Where [`publish_inputs`] put things.
pub struct Inputs {
    pub garbage_offset: i64,
    /// One past the last offset written, per raw partition.
    pub raw_end: Vec<i64>,
    /// Where each flow `n` was written (partition, offset), from the delivery reports.
    pub positions: std::collections::BTreeMap<i64, (i32, i64)>,
}

/// Runs the enricher in-process over [`publish_inputs`]'s records and checks the outputs and
/// the committed offsets.
pub async fn happy_path(config: Config) {
    init_logging();
    let brokers = config.kafka.brokers.join(",");
    let topics = config.kafka.topics.clone();
    let inputs = publish_inputs(&config).await;

    let shutdown = flowlens_runtime::Shutdown::new();
    let enricher = tokio::spawn(flowlens_enricher::run(config.clone(), shutdown.clone()));

    let (b, t) = (brokers.clone(), topics.enriched_flows.clone());
    let enriched = tokio::task::spawn_blocking(move || read_topic(&b, &t, FLOWS as usize, TIMEOUT));
    let (b, t) = (brokers.clone(), topics.dead_letter.clone());
    let dead = tokio::task::spawn_blocking(move || read_topic(&b, &t, 1, TIMEOUT));
    let (enriched, dead) = (enriched.await.unwrap(), dead.await.unwrap());

    shutdown.trigger();
    tokio::time::timeout(TIMEOUT, enricher)
        .await
        .expect("enricher did not stop after shutdown")
        .unwrap()
        .expect("enricher failed");

    // Exactly one enriched record per raw flow, joined on (host, ifindex), its origin the raw
    // record's position (delivery reports) in the raw topic's incarnation (the broker's id).
    assert_eq!(enriched.len(), FLOWS as usize, "enriched records");
    let (b, t) = (brokers.clone(), topics.raw_flows.clone());
    let raw_stream = tokio::task::spawn_blocking(move || {
        let probe = flowlens_runtime::incarnation::Probe::new(
            &flowlens_runtime::kafka::KafkaConfig {
                brokers: vec![b],
                ..Default::default()
            },
            TIMEOUT,
        )
        .unwrap();
        probe
            .topic_id(&t)
            .unwrap()
            .expect("the broker gives topic ids")
    })
    .await
    .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for m in &enriched {
        let e: flowlens_schemas::EnrichedFlow =
            flowlens_schemas::decode(m.payload().unwrap()).unwrap();
        let n = (e.src_port - 5000) as i64;
        assert!(seen.insert(n), "flow {n} enriched twice");
        assert_eq!(e.ifindex, ifindex_of(n));
        assert_eq!(
            m.key(),
            Some(format!("node-1/{}", e.ifindex).as_bytes()),
            "key kept"
        );
        let mut expected = flowlens_schemas::EnrichedFlow::from_raw(flow("node-1", e.ifindex, n));
        if e.ifindex == 7 {
            expected.if_name = "veth7".into();
            expected.if_mac = "02:00:00:00:00:07".into();
            expected.if_kind = "veth".into();
            expected.if_netns = "pod-ns".into();
        }
        let (partition, offset) = inputs.positions[&n];
        expected.origin = Some(flowlens_schemas::Origin {
            topic: topics.raw_flows.clone(),
            stream: raw_stream,
            partition,
            offset,
        });
        assert_eq!(e, expected, "flow {n}");
    }
    // Nothing more than those: read again, now that the enricher stopped, asking for one more.
    // (Counted by reading, not from the high watermarks: tansu 0.6 reports a high watermark of
    // last batch base offset + 1, so multi-record batches undercount.)
    let (b, t, g) = (
        brokers.clone(),
        topics.clone(),
        config.enricher.group_id.clone(),
    );
    let (again, committed) = tokio::task::spawn_blocking(move || {
        let again = read_topic(
            &b,
            &t.enriched_flows,
            FLOWS as usize + 1,
            Duration::from_secs(3),
        );
        (again, committed(&b, &g, &t.raw_flows))
    })
    .await
    .unwrap();
    assert_eq!(again.len(), FLOWS as usize, "no duplicates written");

    // The garbage went to the dead-letter topic, untouched, with the reason.
    assert_eq!(dead.len(), 1, "dead-lettered records");
    assert_eq!(dead[0].payload(), Some(GARBAGE));
    assert_eq!(dead[0].key(), Some(&b"garbage"[..]));
    let reason = header(&dead[0], flowlens_runtime::dead_letter::HEADER_REASON).expect("reason");
    assert!(reason.contains("RawFlow"), "reason: {reason}");
    assert_eq!(
        header(&dead[0], flowlens_runtime::dead_letter::HEADER_SOURCE).as_deref(),
        Some(format!("{}/0/{}", topics.raw_flows, inputs.garbage_offset).as_str())
    );

    // Everything consumed is committed: the committed offset of each raw partition is its end.
    let raw_end: Vec<Option<i64>> = inputs.raw_end.into_iter().map(Some).collect();
    assert_eq!(committed, raw_end, "committed offsets == end offsets");
}

#[allow(unused_imports)] // not every test binary including this module uses it
pub use flowlens_testkit::rfc3339;
