//! `flowlens_consumer_lag_records` of the real `flowlens-enricher` binary on tansu: while the
//! enricher is held before its consumer starts (its Kubernetes snapshot file is not there yet,
//! so it waits for its first view), the lag it serves per raw partition is the number of
//! records the test produced there and what the broker says (high watermark − the group's
//! committed offset, read by the test's own clients); once the snapshot is written it enriches
//! and commits, and the lag drops to 0. Then again with offsets committed: stopped, more
//! records, started held, the lag is the new records only. Last, with the broker gone, the
//! failed reads are counted and the gauges keep their last values.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use flowlens_enricher::Config;
use flowlens_testkit::{
    free_port, http_get, require, scraped_lag, wait_lag, ChildGuard, Tansu, TANSU,
};

const TIMEOUT: Duration = Duration::from_secs(90);

/// Starts the binary with its Kubernetes snapshot at `snapshot` (not written yet).
fn spawn(c: &Config, dir: &Path, snapshot: &Path, metrics: u16, name: &str) -> ChildGuard {
    let t = &c.kafka.topics;
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(
        &file,
        format!(
            "[enricher]\ngroup_id = \"{}\"\n\
             [kubernetes]\nsource = \"snapshot\"\nsnapshot_path = \"{}\"\nsnapshot_poll_ms = 100\n\
             ready_timeout_ms = 600000\n\
             [kafka]\nbrokers = [\"{}\"]\ncreate_topics = true\npartitions = 2\n\
             [kafka.topics]\nraw_flows = \"{}\"\ninterfaces = \"{}\"\nenriched_flows = \"{}\"\n\
             dead_letter = \"{}\"\n\
             [telemetry]\nmetrics_listen = \"127.0.0.1:{metrics}\"\n",
            c.enricher.group_id,
            snapshot.display(),
            c.kafka.brokers[0],
            t.raw_flows,
            t.interfaces,
            t.enriched_flows,
            t.dead_letter
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowlens-enricher"));
    cmd.arg("--config").arg(&file).env_remove("RUST_LOG");
    ChildGuard::spawn(
        "flowlens-enricher",
        &mut cmd,
        &dir.join(format!("{name}.log")),
    )
}

/// An empty snapshot: the enricher's first view, which lets it start consuming.
fn release(snapshot: &Path) {
    let tmp = snapshot.with_extension("tmp");
    std::fs::write(&tmp, r#"{"kind": "List", "items": []}"#).unwrap();
    std::fs::rename(&tmp, snapshot).unwrap();
}

/// Produces `counts[p]` raw flows to each partition `p`, numbered from `first`.
async fn produce(brokers: &str, topic: &str, counts: &[i64], first: i64) {
    let p = producer(brokers);
    let mut n = first;
    for (partition, &count) in counts.iter().enumerate() {
        for _ in 0..count {
            let f = encoded(&flow("node-1", 7, n));
            send(&p, topic, partition as i32, &format!("flow-{n}"), Some(&f)).await;
            n += 1;
        }
    }
}

async fn lag_is(c: &Config, metrics: u16, want: &[i64]) {
    let (brokers, group, topic) = (
        c.kafka.brokers[0].clone(),
        c.enricher.group_id.clone(),
        c.kafka.topics.raw_flows.clone(),
    );
    let want: BTreeMap<i32, i64> = (0..).zip(want.iter().copied()).collect();
    tokio::task::spawn_blocking(move || {
        wait_lag(
            &brokers,
            &group,
            &topic,
            (metrics, "enricher"),
            &want,
            TIMEOUT,
        )
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_the_uncommitted_records_and_drops_to_zero() {
    if require(TANSU, "TANSU") {
        return;
    }
    let tansu = Tansu::start();
    let brokers = tansu.broker();
    let c = config(&brokers, true);
    let raw = c.kafka.topics.raw_flows.clone();
    let dir = tempfile::tempdir().unwrap();

    // Nothing committed yet: the lag is every record of the partition.
    let (snapshot, metrics) = (dir.path().join("k8s-1.json"), free_port());
    let mut enricher = spawn(&c, dir.path(), &snapshot, metrics, "first");
    lag_is(&c, metrics, &[0, 0]).await; // topics created, still empty
    produce(&brokers, &raw, &[7, 4], 0).await;
    lag_is(&c, metrics, &[7, 4]).await;
    release(&snapshot);
    lag_is(&c, metrics, &[0, 0]).await;
    let group = c.enricher.group_id.clone();
    let positions = tokio::task::block_in_place(|| committed(&brokers, &group, &raw));
    assert_eq!(positions, [Some(7), Some(4)]);
    assert!(enricher.stop_with(libc::SIGTERM, Duration::from_secs(30)));

    // Offsets committed: the lag counts from them.
    produce(&brokers, &raw, &[3, 5], 100).await;
    let (snapshot, metrics) = (dir.path().join("k8s-2.json"), free_port());
    let mut enricher = spawn(&c, dir.path(), &snapshot, metrics, "second");
    lag_is(&c, metrics, &[3, 5]).await;
    release(&snapshot);
    lag_is(&c, metrics, &[0, 0]).await;
    let positions = tokio::task::block_in_place(|| committed(&brokers, &group, &raw));
    assert_eq!(positions, [Some(10), Some(9)]);
    let enriched = &c.kafka.topics.enriched_flows;
    let out = tokio::task::block_in_place(|| read_topic(&brokers, enriched, 19, TIMEOUT));
    assert!(out.len() >= 19, "{} enriched records of 19", out.len());

    // The broker gone: reads fail and are counted, the gauges keep their last values.
    drop(tansu);
    let errors = tokio::task::spawn_blocking(move || {
        let start = std::time::Instant::now();
        loop {
            let (_, text) = http_get(metrics, "/metrics").expect("metrics endpoint listening");
            let errors = text.lines().find_map(|l| {
                l.strip_prefix("flowlens_consumer_lag_read_errors_total{stage=\"enricher\"} ")?
                    .parse::<f64>()
                    .ok()
            });
            if let Some(n) = errors.filter(|&n| n >= 1.0) {
                return (n, scraped_lag(metrics, "enricher", &raw));
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "no failed lag read counted:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    })
    .await
    .unwrap();
    assert_eq!(errors.1, BTreeMap::from([(0, 0), (1, 0)]), "{errors:?}");
    assert!(!enricher.exited());
}
