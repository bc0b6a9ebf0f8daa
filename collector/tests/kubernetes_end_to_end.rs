//! Kubernetes enrichment end to end, on real components: packets cross a veth pair between two
//! network namespaces, the collector counts them in the kernel, the enricher joins each flow
//! with a `kubectl get -o json` snapshot that places the namespaces' addresses in pods (owned by
//! ReplicaSets of Deployments, selected by Services), and the sink writes ClickHouse rows.
//!
//! Mid-run the pod at address B is deleted and B is given to another pod (the snapshot file is
//! rewritten, the enricher reloads it). Flows from before the switch must still name the old
//! pod, flows after it the new one, whatever the order in which the enricher processes them.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::cluster::{pod, replica_set, service, write_snapshot, NS};
use common::{expected_flows, require_root, send_known_traffic, Pipeline};
use flowlens_enricher::kubernetes::snapshot::serde_json;
use flowlens_schemas::{v6_to_ip, EnrichedFlow};
use flowlens_testkit::{http, read_topic, unique, Chdb, NetnsPair, Tansu};
use serde_json::json;

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// The Kubernetes columns of one side, as ClickHouse returns them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Side {
    pod: String,
    namespace: String,
    workload: String,
    workload_kind: String,
    service: String,
}

fn side(deployment: &str, hash: &str, service: &str) -> Side {
    Side {
        pod: format!("{deployment}-{hash}-x7k2p"),
        namespace: NS.into(),
        workload: deployment.into(),
        workload_kind: "Deployment".into(),
        service: service.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_metadata_reaches_clickhouse_and_ip_reuse_is_attributed_by_time() {
    require_root();
    let broker = Tansu::start();
    let clickhouse = Chdb::start();
    let pair = std::sync::Arc::new(NetnsPair::new("k"));
    let host = unique("k8s-node");
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("cluster.json");

    let (a4, a6) = (pair.ip_a.to_string(), pair.ip6_a.to_string());
    let (b4, b6) = (pair.ip_b.to_string(), pair.ip6_b.to_string());
    let long_ago = now_ns() / 1_000_000_000 - 3_600;
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": host, "uid": "uid-node"},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.10"}]}});
    // Before the switch: A is `client`, B is `web` (selected by Service web).
    write_snapshot(
        &snapshot,
        vec![
            node.clone(),
            replica_set("client", "6b8c"),
            replica_set("web", "5d4f"),
            pod("client", "6b8c", &host, &[a4.clone(), a6.clone()], long_ago),
            pod("web", "5d4f", &host, &[b4.clone(), b6.clone()], long_ago),
            service("web", "10.96.7.1"),
            service("api", "10.96.7.2"),
        ],
    );

    let mut pipeline = Pipeline::new(&broker.broker(), &clickhouse.url(), &pair, &host);
    pipeline.enricher.kubernetes.source = flowlens_enricher::kubernetes::config::Source::Snapshot;
    pipeline.enricher.kubernetes.snapshot_path = snapshot.display().to_string();
    pipeline.enricher.kubernetes.snapshot_poll_ms = 200;
    let enriched_topic = pipeline.collector.kafka.topics.enriched_flows.clone();
    let mut pipeline = pipeline.start().await;

    // Round 1: A talks to `web`.
    let p = pair.clone();
    let sent1 = tokio::task::spawn_blocking(move || send_known_traffic(&p))
        .await
        .unwrap();

    // The switch: `web` is deleted, its addresses go to a new pod `api` (Service api) that
    // started at `switch_s`. Round-1 records still on their way are enriched after this.
    let switch_s = now_ns() / 1_000_000_000 + 1;
    write_snapshot(
        &snapshot,
        vec![
            node,
            replica_set("client", "6b8c"),
            replica_set("api", "77c9"),
            pod("client", "6b8c", &host, &[a4.clone(), a6.clone()], long_ago),
            pod("api", "77c9", &host, &[b4.clone(), b6.clone()], switch_s),
            service("web", "10.96.7.1"),
            service("api", "10.96.7.2"),
        ],
    );
    let switch_ns = switch_s * 1_000_000_000;
    let wait = (switch_ns + 1_000_000_000 - now_ns()).max(0) as u64;
    tokio::time::sleep(Duration::from_nanos(wait)).await;

    // Round 2: A talks to `api` at the same address.
    let p = pair.clone();
    let sent2 = tokio::task::spawn_blocking(move || send_known_traffic(&p))
        .await
        .unwrap();
    pipeline.stop_collector().await;

    let want_packets: u64 = [&sent1, &sent2]
        .into_iter()
        .map(|s| {
            expected_flows(&pair, s)
                .values()
                .map(|t| t.packets)
                .sum::<u64>()
        })
        .sum();
    let ours: BTreeSet<IpAddr> = [
        IpAddr::V4(pair.ip_a),
        IpAddr::V4(pair.ip_b),
        IpAddr::V6(pair.ip6_a),
        IpAddr::V6(pair.ip6_b),
    ]
    .into();
    let a_side: BTreeSet<IpAddr> = [IpAddr::V4(pair.ip_a), IpAddr::V6(pair.ip6_a)].into();

    let started = Instant::now();
    let rows = loop {
        let rows = query_rows(&clickhouse, &host);
        let got: u64 = rows
            .iter()
            .filter(|r| ours.contains(&r.src) && ours.contains(&r.dst) && r.proto != 58)
            .map(|r| r.packets)
            .sum();
        if got >= want_packets || started.elapsed() > Duration::from_secs(90) {
            assert!(
                got >= want_packets,
                "{got} of {want_packets} packets in ClickHouse"
            );
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // Every row between the pair names the pods, namespaces, Deployments and Services at both
    // ends as they were when the flow was seen.
    let client = side("client", "6b8c", "");
    let web = side("web", "5d4f", "web");
    let api = side("api", "77c9", "api");
    let (mut before, mut after) = (0, 0);
    for r in rows
        .iter()
        .filter(|r| ours.contains(&r.src) && ours.contains(&r.dst))
    {
        let b_side = if r.time_flow_start < switch_ns {
            before += 1;
            &web
        } else {
            after += 1;
            &api
        };
        let expect = |ip: &IpAddr| if a_side.contains(ip) { &client } else { b_side };
        assert_eq!(&r.src_side, expect(&r.src), "source of {r:?}");
        assert_eq!(&r.dst_side, expect(&r.dst), "destination of {r:?}");
        // EnrichedFlow v2 columns (migration 0003): both pods on this node, the collector's
        // interface is A's, pod UIDs by time as the names, roles where the flow decides them.
        assert_eq!(r.locality, "node", "{r:?}");
        assert_eq!(
            (r.if_pod.as_str(), r.if_namespace.as_str()),
            ("client-6b8c-x7k2p", NS),
            "{r:?}"
        );
        let b_uid = if r.time_flow_start < switch_ns {
            "uid-web"
        } else {
            "uid-api"
        };
        let uid = |ip: &IpAddr| {
            if a_side.contains(ip) {
                "uid-client"
            } else {
                b_uid
            }
        };
        assert_eq!(
            (r.src_pod_uid.as_str(), r.dst_pod_uid.as_str()),
            (uid(&r.src), uid(&r.dst)),
            "{r:?}"
        );
        // UDP to port 5000 (served by web/api): A is the client; echo requests come from A.
        if r.proto == 17 && r.dst_port == 5000 {
            assert_eq!(
                (r.src_role.as_str(), r.dst_role.as_str()),
                ("client", "server"),
                "{r:?}"
            );
        }
        if r.proto == 1 && r.icmp_type == 8 {
            assert_eq!(r.src_role, "client", "{r:?}");
        }
    }
    assert!(
        before > 0 && after > 0,
        "rows before ({before}) and after ({after}) the switch"
    );
    let (_, distinct) = http(
        clickhouse.port,
        "POST",
        "/",
        &format!(
            "SELECT DISTINCT dst_pod FROM flows WHERE host = '{host}' AND dst_addr = toIPv6('::ffff:{}') ORDER BY dst_pod FORMAT TSV",
            pair.ip_b
        ),
    );
    assert_eq!(distinct.trim(), "api-77c9-x7k2p\nweb-5d4f-x7k2p");

    // The same fields on the enriched topic: locality (both pods on this node), pod UIDs,
    // client/server roles, the pod owning the interface.
    let messages = read_topic(
        &broker.broker(),
        &enriched_topic,
        1,
        Duration::from_secs(20),
    );
    let flows: Vec<EnrichedFlow> = messages
        .iter()
        .filter_map(|m| rdkafka::Message::payload(m))
        .map(|p| flowlens_schemas::decode(p).expect("enriched flow decodes"))
        .filter(|f: &EnrichedFlow| {
            ours.contains(&v6_to_ip(f.src_addr)) && ours.contains(&v6_to_ip(f.dst_addr))
        })
        .collect();
    assert!(!flows.is_empty());
    for f in &flows {
        assert_eq!(f.locality.as_deref(), Some("node"), "{f:?}");
        assert_eq!(f.if_pod.as_deref(), Some("client-6b8c-x7k2p"), "{f:?}");
        assert_eq!(f.if_namespace.as_deref(), Some(NS));
        let b_uid = if f.time_flow_start_ns < switch_ns {
            "uid-web"
        } else {
            "uid-api"
        };
        let uid = |ip| {
            if a_side.contains(&ip) {
                "uid-client"
            } else {
                b_uid
            }
        };
        assert_eq!(f.src_pod_uid.as_deref(), Some(uid(v6_to_ip(f.src_addr))));
        assert_eq!(f.dst_pod_uid.as_deref(), Some(uid(v6_to_ip(f.dst_addr))));
        // UDP to port 5000 (served by web/api): A is the client.
        if f.proto == 17 && f.dst_port == 5000 {
            assert_eq!(
                (f.src_role.as_deref(), f.dst_role.as_deref()),
                (Some("client"), Some("server")),
                "{f:?}"
            );
        }
        // Echo requests from A, replies from B.
        if f.proto == 1 && f.icmp_type == 8 {
            assert_eq!(f.src_role.as_deref(), Some("client"));
        }
    }

    pipeline.stop().await;
}

#[derive(Debug)]
struct Row {
    time_flow_start: i64,
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
    packets: u64,
    src_side: Side,
    dst_side: Side,
    dst_port: u16,
    icmp_type: u8,
    src_pod_uid: String,
    dst_pod_uid: String,
    src_role: String,
    dst_role: String,
    locality: String,
    if_pod: String,
    if_namespace: String,
}

fn query_rows(clickhouse: &Chdb, host: &str) -> Vec<Row> {
    let sql = format!(
        "SELECT toUnixTimestamp64Nano(time_flow_start), proto, IPv6NumToString(src_addr), \
         IPv6NumToString(dst_addr), packets + reverse_packets, \
         src_pod, src_namespace, src_workload, src_workload_kind, src_service, \
         dst_pod, dst_namespace, dst_workload, dst_workload_kind, dst_service, \
         dst_port, icmp_type, src_pod_uid, dst_pod_uid, src_role, dst_role, locality, if_pod, \
         if_namespace \
         FROM flows WHERE host = '{host}' FORMAT TSV"
    );
    let (status, text) = http(clickhouse.port, "POST", "/", &sql);
    assert_eq!(status, 200, "{text}");
    let ip = |s: &str| -> IpAddr { v6_to_ip(s.parse().unwrap()) };
    text.lines()
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            let side = |i: usize| Side {
                pod: f[i].into(),
                namespace: f[i + 1].into(),
                workload: f[i + 2].into(),
                workload_kind: f[i + 3].into(),
                service: f[i + 4].into(),
            };
            Row {
                time_flow_start: f[0].parse().unwrap(),
                proto: f[1].parse().unwrap(),
                src: ip(f[2]),
                dst: ip(f[3]),
                packets: f[4].parse().unwrap(),
                src_side: side(5),
                dst_side: side(10),
                dst_port: f[15].parse().unwrap(),
                icmp_type: f[16].parse().unwrap(),
                src_pod_uid: f[17].into(),
                dst_pod_uid: f[18].into(),
                src_role: f[19].into(),
                dst_role: f[20].into(),
                locality: f[21].into(),
                if_pod: f[22].into(),
                if_namespace: f[23].into(),
            }
        })
        .collect()
}
