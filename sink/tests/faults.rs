//! Fault tests with exact ground truth: a known set of records (unique ids: `src_pod =
//! "web-<i>"`) goes through the real sink into ClickHouse (the 26.9 engine behind the chdb
//! front), and after each fault ClickHouse must hold every record exactly once — in `flows`
//! and in the rollups — with the consumer group committed up to the end of every partition.
//!
//! * `sigkill_mid_batch`: the sink binary is killed with SIGKILL three times while inserting,
//!   and once more aborts itself right after an acknowledged INSERT, before the commit (the
//!   failpoint `FLOWLENS_SINK_TEST_CRASH_AFTER_INSERTS`: the worst moment, made certain).
//! * `clickhouse_down_30s`: the ClickHouse front is stopped for 30 s and started again on the
//!   same data and port while the sink binary keeps running.
//! * `rebalance_two_sinks`: a second sink process joins the group mid-stream, then the first
//!   one leaves (SIGTERM): partitions move twice.
//! * `rebalance_mid_insert`: the first sink reaches ClickHouse through a slow link (its
//!   INSERTs land seconds after they are sent, and the sink consumes on meanwhile) when a
//!   second sink, with other batch sizes (so that no deduplication token can hide a repeat),
//!   joins the group: the partitions move while an INSERT of theirs is in flight.
//! * `inserts_in_flight`: the sink reaches ClickHouse through a slow link (each request lands
//!   1 s after it is sent) with a backlog to store: on three partitions two INSERTs are
//!   outstanding at once and never three, on one partition never two (the link's own view of
//!   each request: when it came, when its answer began), and every record is stored once.
//! * `broker_restart`: librdkafka's mock cluster (in-process, real protocol) takes its broker
//!   down and up while the sink (in-process here) consumes and commits. tansu, the real
//!   broker used elsewhere, keeps everything in memory, so restarting it would lose the topic.
//! * A poison record sits mid-stream in every scenario: it must reach the dead-letter topic and
//!   never block its partition.
//!
//! Waits are bounded and on real conditions (rows in ClickHouse, committed offsets, a process
//! exit); the only fixed wait is the 30 s outage itself. Needs /opt/flowlens-venv;
//! `FLOWLENS_SKIP_CHDB=1` skips.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use flowlens_runtime::kafka::KafkaConfig;
use flowlens_runtime::Shutdown;
use flowlens_sink::row::sample_flow_at;
use flowlens_testkit::{
    committed, header, read_topic, require, send_tracking_ends, unique, Chdb, ChildGuard, Outgoing,
    Relay, Tansu, TANSU, VENV_PYTHON,
};
use rdkafka::producer::FutureProducer;

const POISON: &[u8] = b"\xC3\x01poison: not an avro record";

fn skip() -> bool {
    require(VENV_PYTHON, "CHDB") || require(TANSU, "CHDB")
}

/// Recent flow times (the tables drop rows older than their TTL at insert).
fn base_ns() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    (now - 3600) * 1_000_000_000 + 123_456_789
}

/// One scenario's names and settings.
#[derive(Clone)]
struct Setup {
    brokers: String,
    topic: String,
    dlq: String,
    group: String,
    partitions: i32,
    clickhouse: String,
    max_rows: usize,
}

impl Setup {
    fn new(brokers: String, clickhouse: String, partitions: i32, max_rows: usize) -> Self {
        let name = unique("fault");
        Self {
            brokers,
            topic: format!("{name}.enriched"),
            dlq: format!("{name}.dlq"),
            group: format!("{name}-sink"),
            partitions,
            clickhouse,
            max_rows,
        }
    }

    fn kafka(&self) -> KafkaConfig {
        let mut kafka = KafkaConfig {
            brokers: vec![self.brokers.clone()],
            client_id: "faults".into(),
            partitions: self.partitions,
            ..Default::default()
        };
        kafka.topics.enriched_flows = self.topic.clone();
        kafka.topics.dead_letter = self.dlq.clone();
        kafka
    }

    /// The sink configuration as a file for the binary.
    fn write_config(&self, dir: &Path) -> PathBuf {
        let path = dir.join(format!("{}.toml", self.group));
        std::fs::write(
            &path,
            format!(
                r#"[clickhouse]
url = "{ch}"
timeout_ms = 10000
[batch]
max_rows = {rows}
max_age_ms = 300
[sink]
group_id = "{group}"
retry_initial_ms = 100
retry_max_ms = 1000
[kafka]
brokers = ["{brokers}"]
client_id = "faults"
partitions = {partitions}
[kafka.topics]
enriched_flows = "{topic}"
dead_letter = "{dlq}"
[kafka.properties]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
[telemetry]
log_level = "info,flowlens_sink=debug"
"#,
                ch = self.clickhouse,
                rows = self.max_rows,
                group = self.group,
                brokers = self.brokers,
                partitions = self.partitions,
                topic = self.topic,
                dlq = self.dlq,
            ),
        )
        .unwrap();
        path
    }
}

/// The sink binary with `config`, logging to `log`.
fn spawn_sink(config: &Path, log: &Path, crash_after_inserts: Option<u32>) -> ChildGuard {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowlens-sink"));
    cmd.arg("--config").arg(config);
    cmd.env_remove("RUST_LOG");
    if let Some(n) = crash_after_inserts {
        cmd.env(flowlens_sink::run::CRASH_AFTER_INSERTS_ENV, n.to_string());
    }
    ChildGuard::spawn("flowlens-sink", &mut cmd, log)
}

type Ends = BTreeMap<i32, i64>;

/// Produces records `from..to` (keyed, round-robin over the partitions) and, if asked, the
/// poison record in the middle; adds the delivered end offsets to `ends`.
async fn produce(setup: &Setup, from: u32, to: u32, poison: bool, base: i64, ends: &mut Ends) {
    let producer: FutureProducer = setup
        .kafka()
        .producer_config()
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut records: Vec<Outgoing> = (from..to)
        .map(|i| {
            let mut buf = Vec::new();
            flowlens_schemas::encode(&sample_flow_at(i, base), &mut buf).unwrap();
            ((i % setup.partitions as u32) as i32, i.to_string(), buf)
        })
        .collect();
    if poison {
        records.insert(
            ((to - from) / 2) as usize + 1,
            (0, "poison".into(), POISON.to_vec()),
        );
    }
    send_tracking_ends(&producer, &setup.topic, records, ends).await;
}

/// Waits (bounded) until the log file `log` contains `needle`; `what` names the failure.
async fn wait_log(log: &Path, needle: &str, timeout: Duration, what: &str) {
    let start = Instant::now();
    while !std::fs::read_to_string(log).unwrap().contains(needle) {
        assert!(start.elapsed() < timeout, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn client(url: &str) -> clickhouse::Client {
    clickhouse::Client::default().with_url(url)
}

async fn count(ch: &clickhouse::Client) -> u64 {
    ch.query("SELECT count() FROM flows")
        .fetch_one::<u64>()
        .await
        .unwrap_or(0)
}

/// Waits (bounded) until `flows` has at least `n` rows; never more than `max`.
async fn wait_rows(ch: &clickhouse::Client, n: u64, max: u64, timeout: Duration) {
    let start = Instant::now();
    loop {
        let rows = count(ch).await;
        assert!(rows <= max, "{rows} rows > {max} records (duplicates)");
        if rows >= n {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "only {rows}/{n} rows after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until ClickHouse holds `n` rows and the group committed every partition to
/// its end, then checks exactly-once in `flows` and in the rollups.
async fn assert_exactly_once(setup: &Setup, ends: &Ends, n: u32, timeout: Duration) {
    let ch = client(&setup.clickhouse);
    let start = Instant::now();
    let want: Vec<Option<i64>> = (0..setup.partitions).map(|p| Some(ends[&p])).collect();
    loop {
        let rows = count(&ch).await;
        assert!(
            rows <= u64::from(n),
            "{rows} rows > {n} records (duplicates)"
        );
        let offsets = committed(&setup.brokers, &setup.group, &setup.topic);
        if rows == u64::from(n) && offsets == want {
            break;
        }
        assert!(
            start.elapsed() < timeout,
            "after {timeout:?}: {rows}/{n} rows, committed {offsets:?}, ends {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let n = u64::from(n);
    let (rows, ids, packets, offsets_seen): (u64, u64, u64, u64) = ch
        .query(
            "SELECT count(), uniqExact(src_pod), sum(packets), \
             uniqExact(kafka_partition, kafka_offset) FROM flows",
        )
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        (rows, ids, offsets_seen),
        (n, n, n),
        "flows: each record once"
    );
    assert_eq!(packets, n * (n + 1) / 2);
    for table in ["flows_iface_1m", "flows_k8s_1m", "flows_port_1h"] {
        let (flows, packets): (u64, u64) = ch
            .query(&format!("SELECT sum(flows), sum(packets) FROM {table}"))
            .fetch_one()
            .await
            .unwrap();
        assert_eq!((flows, packets), (n, n * (n + 1) / 2), "rollup {table}");
    }
}

/// The poison record reached the dead-letter topic (at least once) with its reason.
async fn assert_poison_dead_lettered(setup: &Setup) {
    let (brokers, dlq) = (setup.brokers.clone(), setup.dlq.clone());
    let dead =
        tokio::task::spawn_blocking(move || read_topic(&brokers, &dlq, 1, Duration::from_secs(20)))
            .await
            .unwrap();
    assert!(!dead.is_empty(), "poison record not dead-lettered");
    for m in &dead {
        use rdkafka::Message;
        assert_eq!(m.payload(), Some(POISON));
        let reason = header(m, flowlens_runtime::dead_letter::HEADER_REASON).unwrap_or_default();
        assert!(reason.contains("decode"), "reason: {reason}");
    }
}

async fn create_topics(setup: &Setup) {
    let kafka = setup.kafka();
    kafka
        .ensure_topics(&[(&setup.topic, false), (&setup.dlq, false)])
        .await
        .unwrap();
}

async fn migrate(url: &str) {
    let config = flowlens_sink::config::ClickHouseConfig {
        url: url.into(),
        ..Default::default()
    };
    let migrations = flowlens_sink::migrate::embedded().unwrap();
    flowlens_sink::migrate::apply(&config, &migrations)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_batch() {
    if skip() {
        return;
    }
    let started = Instant::now();
    let chdb = Chdb::start();
    let tansu = Tansu::start();
    let setup = Setup::new(tansu.broker(), chdb.url(), 2, 5_000);
    const N: u32 = 100_000;
    create_topics(&setup).await;
    let mut ends = Ends::new();
    produce(&setup, 0, N, true, base_ns(), &mut ends).await;
    let dir = tempfile::tempdir().unwrap();
    let config = setup.write_config(dir.path());
    let ch = client(&setup.clickhouse);

    // 1. The failpoint: abort right after the 3rd acknowledged INSERT, before its commit.
    let log = dir.path().join("sink-0.log");
    let mut sink = spawn_sink(&config, &log, Some(3));
    let start = Instant::now();
    while !sink.exited() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "failpoint never hit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("aborting after insert 3"), "{text}");
    let stored = count(&ch).await;
    assert!(stored >= 5_000, "{stored}");

    // 2. Three SIGKILLs while rows are flowing in.
    for (round, fraction) in [(1, 3), (2, 5), (3, 7)] {
        let log = dir.path().join(format!("sink-{round}.log"));
        let mut sink = spawn_sink(&config, &log, None);
        let threshold = u64::from(N) * fraction / 10;
        wait_rows(&ch, threshold, u64::from(N), Duration::from_secs(60)).await;
        sink.stop_with(libc::SIGKILL, Duration::from_secs(5));
        eprintln!(
            "SIGKILL {round} at {} rows ({:?})",
            count(&ch).await,
            started.elapsed()
        );
    }

    // 3. A last run finishes the job.
    let _sink = spawn_sink(&config, &dir.path().join("sink-last.log"), None);
    assert_exactly_once(&setup, &ends, N, Duration::from_secs(90)).await;
    assert_poison_dead_lettered(&setup).await;
    let logs: String = (1..=3)
        .map(|r| std::fs::read_to_string(dir.path().join(format!("sink-{r}.log"))).unwrap())
        .collect::<Vec<_>>()
        .join("");
    // The first restart found the rows of the aborted run's last batch and skipped them.
    assert!(
        logs.contains("rows already stored but not committed"),
        "{logs}"
    );
    eprintln!(
        "sigkill_mid_batch: {N} records exactly once in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_down_30s() {
    if skip() {
        return;
    }
    let started = Instant::now();
    let mut chdb = Chdb::start();
    let tansu = Tansu::start();
    let setup = Setup::new(tansu.broker(), chdb.url(), 2, 5_000);
    const N: u32 = 50_000;
    create_topics(&setup).await;
    let base = base_ns();
    let mut ends = Ends::new();
    produce(&setup, 0, N / 2, true, base, &mut ends).await;
    let dir = tempfile::tempdir().unwrap();
    let config = setup.write_config(dir.path());
    let log = dir.path().join("sink.log");
    let mut sink = spawn_sink(&config, &log, None);
    let ch = client(&setup.clickhouse);
    wait_rows(&ch, u64::from(N / 4), u64::from(N), Duration::from_secs(60)).await;

    chdb.stop();
    let down = Instant::now();
    produce(&setup, N / 2, N, false, base, &mut ends).await;
    // Let the sink hit the outage, then take the committed offsets: they must not move while
    // ClickHouse is down, and stay short of the end.
    wait_log(
        &log,
        "ClickHouse insert failed",
        Duration::from_secs(20),
        "no failed insert",
    )
    .await;
    let during = committed(&setup.brokers, &setup.group, &setup.topic);
    let rss_kb = std::fs::read_to_string(format!("/proc/{}/status", sink.id()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap();
    let outage = Duration::from_secs(30);
    tokio::time::sleep(outage.saturating_sub(down.elapsed())).await;
    assert!(!sink.exited(), "the sink must survive the outage");
    let after = committed(&setup.brokers, &setup.group, &setup.topic);
    assert_eq!(during, after, "offsets committed while ClickHouse was down");
    let total: i64 = ends.values().sum();
    let done: i64 = after.iter().map(|o| o.unwrap_or(0)).sum();
    assert!(done < total, "{after:?} vs {ends:?}");
    // Bounded memory while paused (about 25k rows buffered here).
    assert!(rss_kb < 400_000, "sink RSS {rss_kb} kB during the outage");

    chdb.start_again();
    eprintln!("ClickHouse back after {:?}", down.elapsed());
    assert_exactly_once(&setup, &ends, N, Duration::from_secs(90)).await;
    assert_poison_dead_lettered(&setup).await;
    eprintln!(
        "clickhouse_down_30s: {N} records exactly once in {:?}, sink RSS {rss_kb} kB in the outage",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_two_sinks() {
    if skip() {
        return;
    }
    let started = Instant::now();
    let chdb = Chdb::start();
    let tansu = Tansu::start();
    let setup = Setup::new(tansu.broker(), chdb.url(), 4, 2_000);
    const N: u32 = 60_000;
    create_topics(&setup).await;
    let base = base_ns();
    let mut ends = Ends::new();
    let dir = tempfile::tempdir().unwrap();
    let config = setup.write_config(dir.path());
    let ch = client(&setup.clickhouse);

    produce(&setup, 0, N / 3, false, base, &mut ends).await;
    let log_a = dir.path().join("sink-a.log");
    let mut a = spawn_sink(&config, &log_a, None);
    wait_rows(&ch, u64::from(N / 6), u64::from(N), Duration::from_secs(60)).await;
    // B joins: the partitions are split between A and B.
    let log_b = dir.path().join("sink-b.log");
    let _b = spawn_sink(&config, &log_b, None);
    produce(&setup, N / 3, 2 * N / 3, true, base, &mut ends).await;
    wait_log(
        &log_b,
        "partitions assigned",
        Duration::from_secs(30),
        "B never joined",
    )
    .await;
    wait_rows(&ch, u64::from(N / 2), u64::from(N), Duration::from_secs(60)).await;
    // A leaves: B takes every partition.
    assert!(a.stop_with(libc::SIGTERM, Duration::from_secs(20)));
    produce(&setup, 2 * N / 3, N, false, base, &mut ends).await;
    assert_exactly_once(&setup, &ends, N, Duration::from_secs(90)).await;
    assert_poison_dead_lettered(&setup).await;
    let text_a = std::fs::read_to_string(&log_a).unwrap();
    assert!(text_a.contains("partitions revoked"), "{text_a}");
    eprintln!(
        "rebalance_two_sinks: {N} records exactly once in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebalance_mid_insert() {
    if skip() {
        return;
    }
    let started = Instant::now();
    let chdb = Chdb::start();
    let tansu = Tansu::start();
    let setup = Setup::new(tansu.broker(), chdb.url(), 2, 2_000);
    const N: u32 = 12_000;
    create_topics(&setup).await;
    let base = base_ns();
    let mut ends = Ends::new();
    produce(&setup, 0, N, true, base, &mut ends).await;

    // A reaches ClickHouse through a relay that, once A stored its first batch, holds each
    // request 10 s on the way; B joins while the next INSERT of A is held: it lands long after
    // it was sent (after B read back what is stored, had A's revocation not waited for it).
    let slow = Relay::start(chdb.port);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config_a = Setup {
        clickhouse: slow.url(),
        ..setup.clone()
    }
    .write_config(dir_a.path());
    // A's INSERTs take 10 s to land and must not time out: an INSERT whose answer never came
    // may land at any later moment, which no sink can wait for (ARCHITECTURE.md).
    let text = std::fs::read_to_string(&config_a).unwrap();
    std::fs::write(
        &config_a,
        text.replace("timeout_ms = 10000", "timeout_ms = 30000"),
    )
    .unwrap();
    let log_a = dir_a.path().join("sink-a.log");
    let _a = spawn_sink(&config_a, &log_a, None);
    let ch = client(&setup.clickhouse);
    wait_rows(&ch, 2_000, u64::from(N), Duration::from_secs(60)).await;
    let inserts_sent = || -> usize {
        slow.connections()
            .iter()
            .map(|c| c.sent.windows(12).filter(|w| w == b"query=INSERT").count())
            .sum()
    };
    slow.delay(Duration::from_secs(10));
    let before = inserts_sent();
    let start = Instant::now();
    while inserts_sent() == before {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "A sent no INSERT"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // B, straight to ClickHouse, batches of 1,500: a repeat of A's rows would be another
    // block, not deduplicated by token.
    let config_b = Setup {
        max_rows: 1_500,
        ..setup.clone()
    }
    .write_config(dir_b.path());
    let log_b = dir_b.path().join("sink-b.log");
    let _b = spawn_sink(&config_b, &log_b, None);
    wait_log(
        &log_b,
        "read back what is stored of the partition",
        Duration::from_secs(60),
        "B stored nothing",
    )
    .await;
    slow.delay(Duration::ZERO);
    assert_exactly_once(&setup, &ends, N, Duration::from_secs(120)).await;
    assert_poison_dead_lettered(&setup).await;
    let text_a = std::fs::read_to_string(&log_a).unwrap();
    assert!(text_a.contains("partitions revoked"), "{text_a}");
    assert!(
        text_a.contains("revocation waited for the INSERT in flight"),
        "A gave up no partition mid-INSERT: {text_a}"
    );
    eprintln!(
        "rebalance_mid_insert: {N} records exactly once in {:?}",
        started.elapsed()
    );
}

/// The most INSERT requests outstanding at one moment, as `link` saw them (sent → answer).
fn most_inserts_outstanding(link: &Relay) -> usize {
    let mut edges: Vec<(Instant, i32)> = Vec::new();
    for r in link.requests() {
        if r.head.windows(12).any(|w| w == b"query=INSERT") {
            let answered = r.answered.expect("every INSERT was answered");
            edges.extend([(r.sent, 1), (answered, -1)]);
        }
    }
    // An answer and a request at the same instant: the answer first.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    most as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_in_flight() {
    if skip() {
        return;
    }
    let started = Instant::now();
    let chdb = Chdb::start();
    migrate(&chdb.url()).await;
    let tansu = Tansu::start();
    let ch = client(&chdb.url());
    const N: u32 = 3_000;
    for (partitions, most) in [(1, 1), (3, flowlens_sink::run::INSERTS_IN_FLIGHT)] {
        // A link of its own per case, slow from the start; batches of 500 rows.
        let link = Relay::start(chdb.port);
        link.delay(Duration::from_secs(1));
        let setup = Setup::new(tansu.broker(), link.url(), partitions, 500);
        create_topics(&setup).await;
        let mut ends = Ends::new();
        produce(&setup, 0, N, false, base_ns(), &mut ends).await;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("sink.log");
        let _sink = spawn_sink(&setup.write_config(dir.path()), &log, None);
        let want: Vec<Option<i64>> = (0..partitions).map(|p| Some(ends[&p])).collect();
        let query = "SELECT count(), uniqExact(src_pod) FROM flows WHERE kafka_topic = ?";
        let start = Instant::now();
        loop {
            let (rows, ids): (u64, u64) = ch
                .query(query)
                .bind(&setup.topic)
                .fetch_one()
                .await
                .unwrap();
            assert!(rows <= u64::from(N), "{rows} rows > {N} records");
            let offsets = committed(&setup.brokers, &setup.group, &setup.topic);
            if rows == u64::from(N) && offsets == want {
                assert_eq!(ids, rows, "each record once");
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "{partitions} partitions: {rows}/{N} rows, committed {offsets:?}, ends {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(
            most_inserts_outstanding(&link),
            most,
            "{partitions} partitions: INSERTs outstanding at once"
        );
    }
    eprintln!("inserts_in_flight: done in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart() {
    use rdkafka::mocking::MockCluster;
    if skip() {
        return;
    }
    if std::env::var_os("RUST_LOG").is_some() {
        flowlens_runtime::telemetry::init_logging(&Default::default());
    }
    let started = Instant::now();
    let chdb = Chdb::start();
    migrate(&chdb.url()).await;
    let mock = MockCluster::new(1).unwrap();
    let setup = Setup::new(mock.bootstrap_servers(), chdb.url(), 2, 5_000);
    mock.create_topic(&setup.topic, 2, 1).unwrap();
    mock.create_topic(&setup.dlq, 1, 1).unwrap();
    const N: u32 = 50_000;
    let base = base_ns();
    let mut ends = Ends::new();
    produce(&setup, 0, N / 2, true, base, &mut ends).await;

    let mut kafka = setup.kafka();
    kafka.create_topics = false;
    kafka
        .properties
        .insert("session.timeout.ms".into(), "6000".into());
    let config = flowlens_sink::Config {
        kafka,
        clickhouse: flowlens_sink::config::ClickHouseConfig {
            url: setup.clickhouse.clone(),
            ..Default::default()
        },
        batch: flowlens_sink::config::BatchConfig {
            max_rows: setup.max_rows,
            max_age_ms: 300,
            ..Default::default()
        },
        sink: flowlens_sink::config::SinkConfig {
            group_id: setup.group.clone(),
            retry_initial_ms: 100,
            retry_max_ms: 1000,
            ..Default::default()
        },
        ..Default::default()
    };
    let shutdown = Shutdown::new();
    let sink = tokio::spawn(flowlens_sink::run(config, shutdown.clone()));
    let ch = client(&setup.clickhouse);
    wait_rows(&ch, u64::from(N / 4), u64::from(N), Duration::from_secs(60)).await;

    // The broker goes away while batches are being committed, then comes back.
    mock.broker_down(1).unwrap();
    let down = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    mock.broker_up(1).unwrap();
    eprintln!("broker back after {:?}", down.elapsed());
    produce(&setup, N / 2, N, false, base, &mut ends).await;
    assert_exactly_once(&setup, &ends, N, Duration::from_secs(90)).await;
    assert_poison_dead_lettered(&setup).await;
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(20), sink)
        .await
        .expect("sink stops")
        .unwrap()
        .unwrap();
    eprintln!(
        "broker_restart: {N} records exactly once in {:?}",
        started.elapsed()
    );
}

/// Credentials: the password comes from the environment (or `clickhouse.password_file`), works
/// against a front that requires it, and appears in no log line, neither on success nor when
/// ClickHouse rejects it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_from_env_never_logged() {
    if skip() {
        return;
    }
    const SECRET: &str = "s3cr3t-Pa55-xyzzy";
    let chdb = flowlens_testkit::Chdb::start_with_auth("flowlens_sink", SECRET);
    let tansu = Tansu::start();
    let url = chdb.url();
    let setup = Setup::new(tansu.broker(), url.clone(), 1, 1_000);
    create_topics(&setup).await;
    let mut ends = Ends::new();
    const N: u32 = 500;
    produce(&setup, 0, N, false, base_ns(), &mut ends).await;
    let dir = tempfile::tempdir().unwrap();
    let config = setup.write_config(dir.path());

    // Wrong password first: the sink keeps retrying (schema step) and says why, not what.
    let log_bad = dir.path().join("bad.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowlens-sink"));
    cmd.arg("--config")
        .arg(&config)
        .env("FLOWLENS_SINK__CLICKHOUSE__USER", "flowlens_sink")
        .env("FLOWLENS_SINK__CLICKHOUSE__PASSWORD", "wrong-Pa55");
    let mut bad = ChildGuard::spawn("flowlens-sink", &mut cmd, &log_bad);
    wait_log(
        &log_bad,
        "AUTHENTICATION_FAILED",
        Duration::from_secs(30),
        "no auth error logged",
    )
    .await;
    bad.stop_with(libc::SIGTERM, Duration::from_secs(10));
    let text = std::fs::read_to_string(&log_bad).unwrap();
    assert!(!text.contains("wrong-Pa55"), "password in the log:\n{text}");

    // The right one, from the environment.
    let log = dir.path().join("good.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowlens-sink"));
    cmd.arg("--config")
        .arg(&config)
        .env("FLOWLENS_SINK__CLICKHOUSE__USER", "flowlens_sink")
        .env("FLOWLENS_SINK__CLICKHOUSE__PASSWORD", SECRET);
    let mut sink = ChildGuard::spawn("flowlens-sink", &mut cmd, &log);
    let ch = client(&url)
        .with_user("flowlens_sink")
        .with_password(SECRET);
    let start = Instant::now();
    while count(&ch).await < u64::from(N) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "rows never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(sink.stop_with(libc::SIGTERM, Duration::from_secs(20)));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("sink started"), "{text}");
    assert!(!text.contains(SECRET), "password in the log:\n{text}");
    assert!(
        !chdb.log().contains(SECRET),
        "password in the ClickHouse front's log"
    );
}
