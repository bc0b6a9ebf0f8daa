//! In-kernel selection on real veth traffic: filters (ports, protocols, CIDRs) keep exactly the
//! flows they name with exact counts, and 1:N sampling keeps a share of packets within
//! statistical bounds while records carry the rate.

mod common;

use std::collections::BTreeMap;

use common::{
    between_pair, expected_flows, run_collector, send_known_traffic, send_udp_flow, totals,
};
use flowlens_collector::filter::FilterConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_and_protocol_filters_keep_exactly_the_named_flows() {
    let tune = |c: &mut flowlens_collector::Config| {
        c.collector.filter = FilterConfig {
            ports: vec![5000],
            protocols: vec!["udp".into()],
            ..Default::default()
        }
    };
    let run = run_collector("f", tune, send_known_traffic).await;
    let expected: BTreeMap<_, _> = expected_flows(&run.pair, &run.sent)
        .into_iter()
        .filter(|((_, proto, _, sport, _, dport, _), _)| {
            *proto == 17 && (*sport == 5000 || *dport == 5000)
        })
        .collect();
    assert_eq!(expected.len(), 4, "the four UDP flows to port 5000");
    // Nothing else at all: not even neighbour discovery passes the filter.
    assert_eq!(totals(&run.flows), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cidr_filter_keeps_flows_touching_the_network() {
    let tune = |c: &mut flowlens_collector::Config| {
        c.collector.filter = FilterConfig {
            cidrs: vec!["fd00::/8".into()],
            ..Default::default()
        }
    };
    let run = run_collector("c", tune, send_known_traffic).await;
    let expected: BTreeMap<_, _> = expected_flows(&run.pair, &run.sent)
        .into_iter()
        .filter(|((_, _, src, ..), _)| src.is_ipv6())
        .collect();
    assert_eq!(expected.len(), 1, "the UDP-over-IPv6 flow");
    let seen = totals(&run.flows);
    assert!(seen
        .keys()
        .all(|(_, _, src, _, dst, ..)| src.is_ipv6() || dst.is_ipv6()));
    assert_eq!(between_pair(&run.pair, seen), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_in_ten_sampling_stays_within_bounds() {
    const N: u64 = 20_000;
    let run = run_collector(
        "s",
        |c| c.collector.sampling = 10,
        |p| send_udp_flow(p, N, 64, 6000),
    )
    .await;
    assert!(run.flows.iter().all(|f| f.sampling_rate == 10));
    let key = (
        true,
        17,
        std::net::IpAddr::V4(run.pair.ip_a),
        run.sent,
        std::net::IpAddr::V4(run.pair.ip_b),
        6000,
        0,
    );
    let kept = totals(&run.flows).get(&key).copied().unwrap_or_default();
    // Binomial(N, 0.1): mean 2000, sd 42.4; ±5 sd fails by chance about once in 3.5 million runs.
    assert!(
        (1788..=2212).contains(&kept.packets),
        "kept {} of {N} packets at 1:10",
        kept.packets
    );
    assert_eq!(kept.bytes, kept.packets * (14 + 20 + 8 + 64));
}

/// The filters apply to the packets the kernel drops too: of two UDP ports dropped in the
/// sender's output (drop-only records), only the port the filter names is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_apply_to_dropped_packets() {
    let tune = |c: &mut flowlens_collector::Config| {
        c.collector.filter = FilterConfig {
            ports: vec![6600],
            ..Default::default()
        }
    };
    let run = run_collector("d", tune, |p| {
        for cmd in [
            "add table inet fl",
            "add chain inet fl output { type filter hook output priority 0 ; }",
            "add rule inet fl output udp dport { 6600, 6601 } drop",
        ] {
            flowlens_testkit::NetnsPair::exec(&p.ns_a, &["nft", cmd]);
        }
        let tx =
            flowlens_testkit::in_netns(&p.ns_a, || std::net::UdpSocket::bind((p.ip_a, 0)).unwrap());
        for port in [6600, 6601] {
            for _ in 0..10 {
                // A drop in the sender's own output is reported to it (EPERM).
                let _ = tx.send_to(&[3u8; 80], (p.ip_b, port));
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(700));
    })
    .await;
    let drops = |port: i32| -> i64 {
        run.flows
            .iter()
            .filter(|f| f.dst_port == port)
            .map(|f| f.drops)
            .sum()
    };
    assert_eq!((drops(6600), drops(6601)), (10, 0), "{:#?}", run.flows);
}
