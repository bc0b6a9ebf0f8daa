//! Interface lifecycle on real namespaces: an interface that appears after start and matches a
//! configured pattern is attached (netlink event) and its traffic counted exactly; its metadata is
//! published, and a tombstone follows when it is deleted.

mod common;

use std::net::{Ipv4Addr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use common::require_root;
use flowlens_collector::config::Config;
use flowlens_runtime::Shutdown;
use flowlens_schemas::{decode, Interface, RawFlow};
use flowlens_testkit::{in_netns, read_topic, unique, NetnsPair, Tansu};
use rdkafka::Message;

fn ip(args: &[&str]) {
    let ok = Command::new("ip").args(args).status().unwrap().success();
    assert!(ok, "ip {args:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interfaces_added_later_are_attached_and_removed_ones_tombstoned() {
    require_root();
    let broker = Tansu::start();
    let pair = std::sync::Arc::new(NetnsPair::new("l"));
    let tag = format!("fx{}", std::process::id() % 100_000);
    let (new_a, new_b) = (format!("{tag}a"), format!("{tag}b"));
    let net = pair.ip_a.octets()[1];
    let (ip_a, ip_b) = (Ipv4Addr::new(10, net, 1, 1), Ipv4Addr::new(10, net, 1, 2));

    let mut config = Config::default();
    config.kafka.brokers = vec![broker.broker()];
    config.kafka.partitions = 1;
    config.kafka.topics.raw_flows = unique("raw");
    config.kafka.topics.interfaces = unique("ifaces");
    config.collector.host = "lifecycle".into();
    config.collector.netns = pair.ns_a.clone();
    config.collector.interfaces = vec!["fx*".into()];
    config.collector.scan_interval_ms = 200;
    // Polling would find the new interface too, but not within this test: netlink must.
    config.collector.interface_refresh_ms = 3_600_000;
    let topics = config.kafka.topics.clone();
    let shutdown = Shutdown::new();
    let collector = tokio::spawn(flowlens_collector::run(config, shutdown.clone()));
    let (b, t) = (broker.broker(), topics.interfaces.clone());
    tokio::task::spawn_blocking(move || read_topic(&b, &t, 2, Duration::from_secs(30)))
        .await
        .unwrap();

    // A new veth pair appears between the namespaces.
    ip(&[
        "link", "add", &new_a, "netns", &pair.ns_a, "type", "veth", "peer", "name", &new_b,
        "netns", &pair.ns_b,
    ]);
    ip(&[
        "-n",
        &pair.ns_a,
        "addr",
        "add",
        &format!("{ip_a}/24"),
        "dev",
        &new_a,
    ]);
    ip(&[
        "-n",
        &pair.ns_b,
        "addr",
        "add",
        &format!("{ip_b}/24"),
        "dev",
        &new_b,
    ]);
    ip(&["-n", &pair.ns_a, "link", "set", &new_a, "up"]);
    ip(&["-n", &pair.ns_b, "link", "set", &new_b, "up"]);

    // Wait until its metadata is published: then the programs are attached to it.
    let (b, t, name) = (broker.broker(), topics.interfaces.clone(), new_a.clone());
    let new_iface: Interface = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        loop {
            let found = read_topic(&b, &t, 1, Duration::from_secs(5))
                .iter()
                .filter_map(|m| m.payload().and_then(|p| decode::<Interface>(p).ok()))
                .find(|i| i.name == name);
            if let Some(i) = found {
                return i;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no record for {name}"
            );
        }
    })
    .await
    .unwrap();
    assert_eq!(
        (new_iface.kind.as_str(), new_iface.host.as_str()),
        ("veth", "lifecycle")
    );

    let p = pair.clone();
    tokio::task::spawn_blocking(move || {
        let rx = in_netns(&p.ns_b, || UdpSocket::bind((ip_b, 7000)).unwrap());
        let tx = in_netns(&p.ns_a, || UdpSocket::bind((ip_a, 7001)).unwrap());
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 512];
        for _ in 0..20 {
            tx.send_to(&[5u8; 300], (ip_b, 7000)).unwrap();
            rx.recv_from(&mut buf).unwrap();
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Deleting it publishes a tombstone for its key.
    ip(&["-n", &pair.ns_a, "link", "del", &new_a]);
    let key = format!("lifecycle/{}", new_iface.ifindex);
    let (b, t, k) = (broker.broker(), topics.interfaces.clone(), key.clone());
    let tombstoned = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            let gone = read_topic(&b, &t, 1, Duration::from_secs(5))
                .iter()
                .any(|m| m.key() == Some(k.as_bytes()) && m.payload().is_none());
            if gone {
                return true;
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(tombstoned, "no tombstone for {key}");

    shutdown.trigger();
    collector.await.unwrap().expect("collector exits cleanly");
    let (b, t) = (broker.broker(), topics.raw_flows.clone());
    let flows: Vec<RawFlow> =
        tokio::task::spawn_blocking(move || read_topic(&b, &t, 1, Duration::from_secs(30)))
            .await
            .unwrap()
            .iter()
            .map(|m| decode(m.payload().unwrap()).unwrap())
            .collect();
    let ours: Vec<&RawFlow> = flows
        .iter()
        .filter(|f| f.ifindex == new_iface.ifindex && f.src_port == 7001 && f.dst_port == 7000)
        .collect();
    let packets: i64 = ours.iter().map(|f| f.packets).sum();
    let bytes: i64 = ours.iter().map(|f| f.bytes).sum();
    assert_eq!((packets, bytes), (20, 20 * (14 + 20 + 8 + 300)));
}
