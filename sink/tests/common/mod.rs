//! What the sink's binary tests share: running `flowlens-sink` with a configuration file and a
//! clean environment, recent sample records with unique ids, ClickHouse counts.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use flowlens_runtime::kafka::KafkaConfig;
use flowlens_sink::row::sample_flow_at;
use flowlens_testkit::{send_tracking_ends, ChildGuard, Outgoing};
use rdkafka::producer::FutureProducer;

pub const SINK: &str = env!("CARGO_BIN_EXE_flowlens-sink");

/// `flowlens-sink --config <config> <args>` with `env` and none of the caller's FLOWLENS_* or
/// RUST_LOG variables.
pub fn command(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(SINK);
    for (name, _) in std::env::vars() {
        if name.starts_with("FLOWLENS_") || name == "RUST_LOG" {
            cmd.env_remove(name);
        }
    }
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .envs(env.iter().copied());
    cmd
}

/// Runs the binary to its end.
pub fn run(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    command(config, args, env)
        .output()
        .expect("running flowlens-sink")
}

/// Starts the binary in the background, logging to `log`.
pub fn spawn(config: &Path, env: &[(&str, &str)], log: &Path) -> ChildGuard {
    ChildGuard::spawn("flowlens-sink", &mut command(config, &[], env), log)
}

/// Everything the binary printed.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Recent flow times (the tables drop rows older than their TTL at insert).
pub fn base_ns() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    (now - 3600) * 1_000_000_000 + 123_456_789
}

/// Produces records `from..to` (their unique id: `src_pod = "web-<i>"`) to `topic` over
/// `partitions`, through a producer of `kafka` (its security settings included).
pub async fn produce(kafka: &KafkaConfig, topic: &str, partitions: i32, from: u32, to: u32) {
    let producer: FutureProducer = kafka
        .producer_config()
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let base = base_ns();
    let records: Vec<Outgoing> = (from..to)
        .map(|i| {
            let mut buf = Vec::new();
            flowlens_schemas::encode(&sample_flow_at(i, base), &mut buf).unwrap();
            ((i % partitions as u32) as i32, i.to_string(), buf)
        })
        .collect();
    let mut ends = Default::default();
    send_tracking_ends(&producer, topic, records, &mut ends).await;
}

/// `(rows, distinct ids)` of `table` (`src_pod` is the id).
pub async fn rows_and_ids(ch: &clickhouse::Client, table: &str) -> (u64, u64) {
    ch.query(&format!("SELECT count(), uniqExact(src_pod) FROM {table}"))
        .fetch_one()
        .await
        .unwrap_or((0, 0))
}

/// Waits (bounded) until `table` holds `n` distinct ids, then checks each is there once.
pub async fn wait_exactly_once(ch: &clickhouse::Client, table: &str, n: u64, timeout: Duration) {
    let start = Instant::now();
    loop {
        let (rows, ids) = rows_and_ids(ch, table).await;
        assert!(rows <= n, "{rows} rows > {n} records (duplicates)");
        if ids == n {
            assert_eq!(rows, n, "duplicates");
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "{ids}/{n} ids in {table} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
