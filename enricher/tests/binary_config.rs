//! Configuration keys through the real `flowlens-enricher` binary (tansu as the broker), each
//! checked by what comes out: `kubernetes.source = "snapshot"` + `snapshot_path` put the pod
//! of the snapshot on the flows; `snapshot_poll_ms` picks up a changed file (a later flow gets
//! the address's new holder); `cluster_cidrs` makes an unknown address inside them count as in
//! the cluster (`locality = "cluster"`, not `"external"`); `ready_timeout_ms` bounds the wait
//! for the first view and `/readyz` names `kubernetes` until it is loaded;
//! `kafka.create_topics` + `partitions` make the topics with that many partitions (the
//! broker's metadata); `telemetry.log_format = "json"` makes every line JSON.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use flowlens_runtime::testkit::{free_port, topic_partitions, wait_probe, ChildGuard, Tansu};
use flowlens_schemas::EnrichedFlow;
use rdkafka::Message;
use serde_json::json;

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

/// A snapshot where pod `name` (node `node-1`) holds 10.1.0.1, written atomically.
fn write_snapshot(path: &Path, name: &str) {
    let pod = json!({"kind": "Pod", "metadata": {"name": name, "namespace": "shop", "uid": name,
        "creationTimestamp": "2024-01-01T00:00:00Z"},
        "spec": {"nodeName": "node-1"}, "status": {"phase": "Running", "podIP": "10.1.0.1",
        "podIPs": [{"ip": "10.1.0.1"}]}});
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json!({"kind": "List", "items": [pod]}).to_string()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn publish(brokers: &str, topic: &str, n: i64) {
    let mut f = flow("node-1", 7, n);
    let now = now_ns();
    (f.time_flow_start_ns, f.time_flow_end_ns, f.time_exported_ns) = (now - 1_000, now, now);
    send(
        &producer(brokers),
        topic,
        0,
        &format!("flow-{n}"),
        Some(&encoded(&f)),
    )
    .await;
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
    let tansu = Tansu::start();
    let brokers = tansu.broker();
    let c = config(&brokers, true);
    let t = &c.kafka.topics;
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("k8s.json");
    write_snapshot(&snapshot, "web-a");
    let metrics = free_port();
    let file = dir.path().join("enricher.toml");
    std::fs::write(
        &file,
        format!(
            "[enricher]\ngroup_id = \"{}\"\n\
             [kubernetes]\nsource = \"snapshot\"\nsnapshot_path = \"{}\"\nsnapshot_poll_ms = 100\n\
             ready_timeout_ms = 20000\ncluster_cidrs = [\"10.1.0.0/16\"]\n\
             [kafka]\nbrokers = [\"{brokers}\"]\ncreate_topics = true\npartitions = 3\n\
             [kafka.topics]\nraw_flows = \"{}\"\ninterfaces = \"{}\"\nenriched_flows = \"{}\"\n\
             dead_letter = \"{}\"\n\
             [telemetry]\nmetrics_listen = \"127.0.0.1:{metrics}\"\nlog_format = \"json\"\n",
            c.enricher.group_id,
            snapshot.display(),
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
    tokio::task::spawn_blocking(move || {
        wait_probe(metrics, "/readyz", 200, "ready", Duration::from_secs(60))
    })
    .await
    .unwrap();

    publish(&brokers, &t.raw_flows, 0).await;
    let e = enriched(&brokers, &t.enriched_flows, 0).await;
    assert_eq!(e.src_pod.as_deref(), Some("web-a"));
    assert_eq!(e.src_namespace.as_deref(), Some("shop"));
    // 10.1.0.2 is no pod, but inside cluster_cidrs.
    assert_eq!(e.dst_pod, None);
    assert_eq!(e.locality.as_deref(), Some("cluster"));

    // The address changes hands in the file: a later flow gets the new holder.
    write_snapshot(&snapshot, "web-b");
    tokio::time::sleep(Duration::from_secs(2)).await;
    publish(&brokers, &t.raw_flows, 1).await;
    let e = enriched(&brokers, &t.enriched_flows, 1).await;
    assert_eq!(e.src_pod.as_deref(), Some("web-b"));

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
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.lines().count() > 3, "{logged}");
    for line in logged.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
}
