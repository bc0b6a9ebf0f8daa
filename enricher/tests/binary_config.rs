//! Configuration keys through the real `flowlens-enricher` binary (tansu as the broker), each
//! checked by what comes out: `kubernetes.source = "snapshot"` + `snapshot_path` put the pod
//! of the snapshot on the flows; `snapshot_poll_ms` picks up a changed file (a later flow gets
//! the address's new holder); `cluster_cidrs` makes an unknown address inside them count as in
//! the cluster (`locality = "cluster"`, not `"external"`); `ready_timeout_ms = 1000` bounds the
//! wait for a first view (the file is written only later: a flow is enriched, without pods,
//! and the raw flows' consumer connects 1 s after the enricher's first connection, not the
//! default 10 s) and `/readyz` names `kubernetes` until it is loaded;
//! `kafka.create_topics` + `partitions` make the topics with that many partitions (the
//! broker's metadata); `telemetry.log_format = "json"` makes every line JSON.
//! The address history, with flows at past times: `history_per_ip = 2` forgets the third-last
//! holder of an address, `max_history = 1` the oldest-ended holder of all, and
//! `history_retention_s = 60` a holder that left two minutes ago (each would be found with the
//! defaults). `enricher.group_id` is the group that committed every raw record (the broker's
//! committed offsets); `kafka.client_id` names the enricher's clients on the wire (a relay in
//! front of the broker keeps every request), and `kafka.replication_factor` is what its
//! CreateTopics request asks for. `enricher.max_in_flight = 1` with
//! `kafka.properties` `linger.ms = 100`: each record waits for the previous one's delivery,
//! so a burst comes out one record per linger (the records' timestamps, set by librdkafka).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use flowlens_schemas::EnrichedFlow;
use flowlens_testkit::{free_port, http, topic_partitions, wait_probe, ChildGuard, Tansu};
use rdkafka::{Message, Timestamp};
use serde_json::{json, Value};

const S: i64 = 1_000_000_000;

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// Pod `name` (node `node-1`) holding `ip` since `start_s` (unix seconds); without one the
/// pod has no start or creation time, and holds the address from when it is first seen.
fn pod(name: &str, ip: &str, start_s: Option<i64>) -> Value {
    let mut pod = json!({"kind": "Pod", "metadata": {"name": name, "namespace": "shop", "uid": name},
        "spec": {"nodeName": "node-1"}, "status": {"phase": "Running", "podIP": ip,
        "podIPs": [{"ip": ip}]}});
    if let Some(start) = start_s {
        pod["status"]["startTime"] = json!(rfc3339(start));
    }
    pod
}

/// A snapshot of `pods`, written atomically.
fn write_snapshot(path: &Path, pods: &[Value]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json!({"kind": "List", "items": pods}).to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Publishes raw flow `n` from `src` at `time` (ns).
async fn publish_at(brokers: &str, topic: &str, n: i64, src: &str, time: i64) {
    let mut f = flow("node-1", 7, n);
    f.src_addr = flowlens_schemas::ip_to_v6(src.parse().unwrap());
    (f.time_flow_start_ns, f.time_flow_end_ns, f.time_exported_ns) = (time - 1_000, time, time);
    send(
        &producer(brokers),
        topic,
        0,
        &format!("flow-{n}"),
        Some(&encoded(&f)),
    )
    .await;
}

async fn publish(brokers: &str, topic: &str, n: i64) {
    publish_at(brokers, topic, n, "10.1.0.1", now_ns()).await;
}

/// The pods the enricher put on the sources of raw flows (`n`, source address, time in ns),
/// published in this order.
async fn src_pods(
    brokers: &str,
    raw: &str,
    out: &str,
    flows: &[(i64, &str, i64)],
) -> Vec<Option<String>> {
    for &(n, src, time) in flows {
        publish_at(brokers, raw, n, src, time).await;
    }
    let (b, topic) = (brokers.to_owned(), out.to_owned());
    let keys: Vec<String> = flows.iter().map(|(n, _, _)| format!("flow-{n}")).collect();
    tokio::task::spawn_blocking(move || {
        let start = std::time::Instant::now();
        loop {
            let all = read_topic(&b, &topic, keys.len(), Duration::from_secs(10));
            let found: Vec<Option<EnrichedFlow>> = keys
                .iter()
                .map(|k| {
                    let m = all.iter().find(|m| m.key() == Some(k.as_bytes()))?;
                    Some(flowlens_schemas::decode(m.payload().unwrap()).unwrap())
                })
                .collect();
            if found.iter().all(Option::is_some) {
                return found.into_iter().map(|e| e.unwrap().src_pod).collect();
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{keys:?} never all enriched"
            );
        }
    })
    .await
    .unwrap()
}

/// The enriched record of raw flow `n` (waits for it).
async fn enriched(brokers: &str, topic: &str, n: i64) -> EnrichedFlow {
    let (b, t, key) = (brokers.to_owned(), topic.to_owned(), format!("flow-{n}"));
    tokio::task::spawn_blocking(move || {
        let start = std::time::Instant::now();
        loop {
            let all = read_topic(&b, &t, 1, Duration::from_secs(10));
            if let Some(m) = all.iter().find(|m| m.key() == Some(key.as_bytes())) {
                return flowlens_schemas::decode(m.payload().unwrap()).unwrap();
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{key} never enriched"
            );
        }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_snapshot_topic_and_log_keys_take_effect() {
    let (tansu, wire) = Tansu::start_behind_relay();
    let brokers = tansu.broker();
    let c = config(&brokers, true);
    let t = &c.kafka.topics;
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("k8s.json");
    let now_s = now_ns() / S;
    // 10.1.0.3: db-x until db-y started two minutes ago; 10.1.0.4: db-m.
    let others = [
        pod("db-x", "10.1.0.3", Some(now_s - 200)),
        pod("db-y", "10.1.0.3", Some(now_s - 120)),
        pod("db-m", "10.1.0.4", Some(now_s - 100)),
    ];
    let snapshots = |holder: Value, rest: &[Value]| {
        let mut pods = vec![holder];
        pods.extend_from_slice(rest);
        write_snapshot(&snapshot, &pods)
    };
    let first = || snapshots(pod("web-a", "10.1.0.1", Some(1_704_067_200)), &others);
    let metrics = free_port();
    let file = dir.path().join("enricher.toml");
    std::fs::write(
        &file,
        format!(
            "[enricher]\ngroup_id = \"{}\"\nmax_in_flight = 1\n\
             [kubernetes]\nsource = \"snapshot\"\nsnapshot_path = \"{}\"\nsnapshot_poll_ms = 100\n\
             ready_timeout_ms = 1000\ncluster_cidrs = [\"10.1.0.0/16\"]\n\
             history_per_ip = 2\nmax_history = 1\nhistory_retention_s = 60\n\
             [kafka]\nbrokers = [\"{}\"]\nclient_id = \"keys-enricher\"\n\
             create_topics = true\npartitions = 3\nreplication_factor = 2\n\
             [kafka.properties]\n\"linger.ms\" = \"100\"\n\
             [kafka.topics]\nraw_flows = \"{}\"\ninterfaces = \"{}\"\nenriched_flows = \"{}\"\n\
             dead_letter = \"{}\"\n\
             [telemetry]\nmetrics_listen = \"127.0.0.1:{metrics}\"\nlog_format = \"json\"\n",
            c.enricher.group_id,
            snapshot.display(),
            wire.address(),
            t.raw_flows,
            t.interfaces,
            t.enriched_flows,
            t.dead_letter
        ),
    )
    .unwrap();
    let log = dir.path().join("enricher.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowlens-enricher"));
    cmd.arg("--config").arg(&file).env_remove("RUST_LOG");
    let mut enricher = ChildGuard::spawn("flowlens-enricher", &mut cmd, &log);
    // No snapshot yet: not ready, naming it, but enriching after ready_timeout_ms. (The raw
    // topic is the enricher's to create first, with its partitions.)
    let created = format!("\"created topic\",\"topic\":\"{}\"", t.raw_flows);
    let start = std::time::Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(&created)
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{created} never logged"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    publish(&brokers, &t.raw_flows, 9).await;
    let e = enriched(&brokers, &t.enriched_flows, 9).await;
    assert_eq!(e.src_pod, None);
    // The consumer of raw flows is made once the wait is over: on the wire, its connections
    // open ready_timeout_ms (1 s, not the default 10 s) after the enricher's first ones.
    let connections: Vec<_> = wire
        .connections()
        .into_iter()
        .map(|c| (c.accepted, c.kafka_requests()))
        .filter(|(_, r)| {
            r.first()
                .is_some_and(|r| r.client_id.as_deref() == Some("keys-enricher"))
        })
        .collect();
    let earliest = connections.iter().map(|(at, _)| *at).min().unwrap();
    let consumer = connections
        .iter()
        .filter(|(_, r)| r.iter().any(|r| r.api_key == 11))
        .map(|(at, _)| *at)
        .min()
        .expect("no JoinGroup");
    let waited = consumer - earliest;
    eprintln!("raw flows' consumer connected {waited:?} after the enricher's first connection");
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(6)).contains(&waited),
        "the consumer came {waited:?} after the first connection\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let (status, why) = tokio::task::spawn_blocking(move || http(metrics, "GET", "/readyz", ""))
        .await
        .unwrap();
    assert!(
        status == 503 && why.contains("kubernetes"),
        "{status} {why}"
    );
    first();
    tokio::task::spawn_blocking(move || {
        wait_probe(metrics, "/readyz", 200, "ready", Duration::from_secs(60))
    })
    .await
    .unwrap();

    let t_a = now_ns();
    publish(&brokers, &t.raw_flows, 0).await;
    let e = enriched(&brokers, &t.enriched_flows, 0).await;
    assert_eq!(e.src_pod.as_deref(), Some("web-a"));
    assert_eq!(e.src_namespace.as_deref(), Some("shop"));
    // 10.1.0.2 is no pod, but inside cluster_cidrs.
    assert_eq!(e.dst_pod, None);
    assert_eq!(e.locality.as_deref(), Some("cluster"));

    // history_retention_s = 60: db-x left 10.1.0.3 two minutes ago and is forgotten; its
    // successor db-y is known since.
    let (raw, out) = (t.raw_flows.as_str(), t.enriched_flows.as_str());
    let at = |s: i64| (now_s - s) * S;
    let pods = src_pods(
        &brokers,
        raw,
        out,
        &[(10, "10.1.0.3", at(150)), (11, "10.1.0.3", at(60))],
    )
    .await;
    assert_eq!(pods, [None, Some("db-y".into())]);

    // The address changes hands in the file: a later flow gets the new holder.
    snapshots(pod("web-b", "10.1.0.1", None), &others);
    tokio::time::sleep(Duration::from_secs(2)).await;
    publish(&brokers, &t.raw_flows, 1).await;
    let e = enriched(&brokers, &t.enriched_flows, 1).await;
    assert_eq!(e.src_pod.as_deref(), Some("web-b"));
    let t_b = now_ns();

    // A third holder (the first flow shows it is known): history_per_ip = 2 keeps web-b
    // (ended) and web-c, not web-a.
    snapshots(pod("web-c", "10.1.0.1", None), &others);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let flows = [
        (12, "10.1.0.1", now_ns()),
        (13, "10.1.0.1", t_a),
        (14, "10.1.0.1", t_b),
    ];
    let pods = src_pods(&brokers, raw, out, &flows).await;
    assert_eq!(pods, [Some("web-c".into()), None, Some("web-b".into())]);

    // db-m leaves 10.1.0.4 for db-n: two ended holders, max_history = 1 keeps the later.
    let mut moved = others.clone();
    moved[2] = pod("db-n", "10.1.0.4", None);
    snapshots(pod("web-c", "10.1.0.1", None), &moved);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let flows = [
        (15, "10.1.0.4", now_ns()),
        (16, "10.1.0.1", t_b),
        (17, "10.1.0.4", t_a),
    ];
    let pods = src_pods(&brokers, raw, out, &flows).await;
    assert_eq!(pods, [Some("db-n".into()), None, Some("db-m".into())]);

    // A burst of 10 with max_in_flight = 1 and a linger of 100 ms: one record per linger.
    // The ten raw records go in one batch, so they are all there to be consumed at once.
    let input = producer(&brokers);
    let records: Vec<(String, Vec<u8>)> = (100..110)
        .map(|n| {
            let mut f = flow("node-1", 7, n);
            let now = now_ns();
            (f.time_flow_start_ns, f.time_flow_end_ns, f.time_exported_ns) =
                (now - 1_000, now, now);
            (format!("flow-{n}"), encoded(&f))
        })
        .collect();
    futures::future::join_all(
        records
            .iter()
            .map(|(key, payload)| send(&input, raw, 0, key, Some(payload))),
    )
    .await;
    let burst = {
        let (b, topic) = (brokers.clone(), out.to_owned());
        tokio::task::spawn_blocking(move || {
            let start = std::time::Instant::now();
            loop {
                let mut times: Vec<i64> = read_topic(&b, &topic, 1, Duration::from_secs(10))
                    .iter()
                    .filter(|m| {
                        m.key()
                            .is_some_and(|k| k.starts_with(b"flow-10") && k.len() == 8)
                    })
                    .map(|m| match m.timestamp() {
                        Timestamp::CreateTime(ms) => ms,
                        other => panic!("{other:?}"),
                    })
                    .collect();
                if times.len() == 10 {
                    times.sort_unstable();
                    return times;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "burst: {times:?}"
                );
            }
        })
        .await
        .unwrap()
    };
    let gaps: Vec<i64> = burst.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.iter().all(|&g| g >= 90), "enriched {gaps:?} ms apart");

    let partitions = tokio::task::spawn_blocking({
        let (b, topics) = (brokers.clone(), t.clone());
        move || {
            [topics.raw_flows, topics.enriched_flows, topics.dead_letter]
                .map(|topic| topic_partitions(&b, &topic))
        }
    })
    .await
    .unwrap();
    assert_eq!(
        partitions,
        [3, 3, 3],
        "topics created with kafka.partitions"
    );

    assert!(enricher.stop_with(libc::SIGTERM, Duration::from_secs(30)));
    // Raw flows 0, 1, 9..=17 and the burst, all on partition 0.
    let (b, g, topic) = (
        brokers.clone(),
        c.enricher.group_id.clone(),
        t.raw_flows.clone(),
    );
    let done = tokio::task::spawn_blocking(move || committed(&b, &g, &topic))
        .await
        .unwrap();
    assert_eq!(
        done[0],
        Some(21),
        "enricher.group_id's committed offsets: {done:?}"
    );
    let created = wire.created_topics();
    for topic in [&t.raw_flows, &t.enriched_flows, &t.dead_letter] {
        assert!(
            created.contains(&(topic.clone(), 3, 2)),
            "CreateTopics without kafka.partitions / replication_factor: {created:?}"
        );
    }
    let apis: std::collections::BTreeSet<i16> = wire
        .kafka_requests()
        .iter()
        .filter(|r| r.client_id.as_deref() == Some("keys-enricher"))
        .map(|r| r.api_key)
        .collect();
    // 18 ApiVersions, 3 Metadata, 19 CreateTopics, 11 JoinGroup, 0 Produce.
    for api in [18, 3, 19, 11, 0] {
        assert!(
            apis.contains(&api),
            "no request {api} as keys-enricher: {apis:?}"
        );
    }
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.lines().count() > 3, "{logged}");
    for line in logged.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
}
