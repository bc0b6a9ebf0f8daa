//! In-kernel selection on real veth traffic: filters (ports, protocols, CIDRs) keep exactly the
//! flows they name with exact counts, and 1:N sampling keeps a share of packets within
//! statistical bounds while records carry the rate.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{
    between_pair, expected_flows, require_root, send_known_traffic, send_udp_flow, FlowId, Totals,
};
use flowlens_collector::config::Config;
use flowlens_collector::filter::FilterConfig;
use flowlens_runtime::testkit::{read_topic, unique, NetnsPair, Tansu};
use flowlens_runtime::Shutdown;
use flowlens_schemas::{decode, Direction, RawFlow};
use rdkafka::Message;

/// Runs a collector on the pair's A side with `tune` applied, lets `traffic` run, stops, and
/// returns every raw record it published.
async fn collect<T: Send + 'static>(
    tune: impl FnOnce(&mut Config),
    traffic: impl FnOnce(&NetnsPair) -> T + Send + 'static,
) -> (std::sync::Arc<NetnsPair>, T, Vec<RawFlow>) {
    require_root();
    let broker = Tansu::start();
    let pair = std::sync::Arc::new(NetnsPair::new("f"));
    let mut config = Config::default();
    config.kafka.brokers = vec![broker.broker()];
    config.kafka.partitions = 1;
    config.kafka.topics.raw_flows = unique("raw");
    config.kafka.topics.interfaces = unique("ifaces");
    config.collector.netns = pair.ns_a.clone();
    config.collector.interfaces = vec![pair.if_a.clone()];
    config.collector.scan_interval_ms = 300;
    tune(&mut config);
    let topics = config.kafka.topics.clone();
    let shutdown = Shutdown::new();
    let collector = tokio::spawn(flowlens_collector::run(config, shutdown.clone()));
    let (b, t) = (broker.broker(), topics.interfaces.clone());
    tokio::task::spawn_blocking(move || read_topic(&b, &t, 2, Duration::from_secs(30)))
        .await
        .unwrap();
    let p = pair.clone();
    let sent = tokio::task::spawn_blocking(move || traffic(&p))
        .await
        .unwrap();
    shutdown.trigger();
    collector.await.unwrap().expect("collector exits cleanly");
    let (b, t) = (broker.broker(), topics.raw_flows.clone());
    let raw = tokio::task::spawn_blocking(move || read_topic(&b, &t, 1, Duration::from_secs(30)))
        .await
        .unwrap();
    let flows = raw
        .iter()
        .map(|m| decode(m.payload().unwrap()).unwrap())
        .collect();
    (pair, sent, flows)
}

fn totals(flows: &[RawFlow]) -> BTreeMap<FlowId, Totals> {
    let mut out: BTreeMap<FlowId, Totals> = BTreeMap::new();
    for f in flows {
        let id = (
            f.direction == Direction::Egress,
            f.proto as u8,
            f.src_ip(),
            f.src_port as u16,
            f.dst_ip(),
            f.dst_port as u16,
            f.icmp_type as u8,
        );
        let t = out.entry(id).or_default();
        t.packets += f.packets as u64;
        t.bytes += f.bytes as u64;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_and_protocol_filters_keep_exactly_the_named_flows() {
    let (pair, sent, flows) = collect(
        |c| {
            c.collector.filter = FilterConfig {
                ports: vec![5000],
                protocols: vec!["udp".into()],
                ..Default::default()
            }
        },
        send_known_traffic,
    )
    .await;
    let expected: BTreeMap<_, _> = expected_flows(&pair, &sent)
        .into_iter()
        .filter(|((_, proto, _, sport, _, dport, _), _)| {
            *proto == 17 && (*sport == 5000 || *dport == 5000)
        })
        .collect();
    assert_eq!(expected.len(), 4, "the four UDP flows to port 5000");
    // Nothing else at all: not even neighbour discovery passes the filter.
    assert_eq!(totals(&flows), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cidr_filter_keeps_flows_touching_the_network() {
    let (pair, sent, flows) = collect(
        |c| {
            c.collector.filter = FilterConfig {
                cidrs: vec!["fd00::/8".into()],
                ..Default::default()
            }
        },
        send_known_traffic,
    )
    .await;
    let expected: BTreeMap<_, _> = expected_flows(&pair, &sent)
        .into_iter()
        .filter(|((_, _, src, ..), _)| src.is_ipv6())
        .collect();
    assert_eq!(expected.len(), 1, "the UDP-over-IPv6 flow");
    let seen = totals(&flows);
    assert!(seen
        .keys()
        .all(|(_, _, src, _, dst, ..)| src.is_ipv6() || dst.is_ipv6()));
    assert_eq!(between_pair(&pair, seen), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_in_ten_sampling_stays_within_bounds() {
    const N: u64 = 20_000;
    let (pair, port, flows) = collect(
        |c| c.collector.sampling = 10,
        |p| send_udp_flow(p, N, 64, 6000),
    )
    .await;
    assert!(flows.iter().all(|f| f.sampling_rate == 10));
    let key = (
        true,
        17,
        std::net::IpAddr::V4(pair.ip_a),
        port,
        std::net::IpAddr::V4(pair.ip_b),
        6000,
        0,
    );
    let kept = totals(&flows).get(&key).copied().unwrap_or_default();
    // Binomial(N, 0.1): mean 2000, sd 42.4; ±5 sd fails by chance about once in 3.5 million runs.
    assert!(
        (1788..=2212).contains(&kept.packets),
        "kept {} of {N} packets at 1:10",
        kept.packets
    );
    assert_eq!(kept.bytes, kept.packets * (14 + 20 + 8 + 64));
}
