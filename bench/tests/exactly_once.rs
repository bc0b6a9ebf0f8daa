//! Exactly once through the enricher and the sink, whatever is killed or reset (issues 18 and
//! 19), on real components: the `flowlens-enricher` and `flowlens-sink` binaries (built beside
//! this test's binary: `scripts/test.sh` builds them first), tansu, and ClickHouse 26.9 behind
//! the chdb front.
//!
//! Input: RawFlow records written by a plain client (rdkafka from this test, no key, no origin:
//! what a stock producer writes), each unique by (src_addr, src_port), with `packets = i + 1`.
//! Oracle: those ids and sums, known before anything runs, against what ClickHouse holds: rows =
//! records, every id once, and every rollup table summing to the same totals as `flows`.
//!
//! * `sigkill_enricher_and_sink_at_random_moments`: both binaries SIGKILLed at random moments,
//!   several times each in the same run, while records are being produced, and restarted.
//! * `broker_and_topics_reset_under_running_stages`: tansu restarted empty on the same port
//!   (fresh topics, offsets from 0, no committed offsets) while ClickHouse keeps its rows; then
//!   the raw topic deleted and re-created under the running enricher; then the enriched topic
//!   under the running sink. Stages that stop on a fatal producer error (the idempotent producer
//!   meets a broker that does not know it) are restarted, as a supervisor would.
//! * `broker_down_during_enrichment`: librdkafka's mock cluster takes its broker down and up
//!   while the enricher produces and the sink consumes (both in-process here: the mock cluster
//!   lives in this process).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowlens_runtime::kafka::KafkaConfig;
use flowlens_schemas::{ip_to_v6, Direction, RawFlow};
use flowlens_testkit::{
    committed, delete_topics, end_offsets, require, unique, Chdb, ChildGuard, Tansu, TANSU,
    VENV_PYTHON,
};
use rdkafka::producer::{FutureProducer, FutureRecord};

fn skip() -> bool {
    require(VENV_PYTHON, "CHDB") || require(TANSU, "CHDB")
}

/// A binary of the workspace, built beside this test's binary.
fn binary(name: &str) -> PathBuf {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_flowlens-bench"));
    let path = bench.parent().unwrap().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p flowlens-enricher -p flowlens-sink` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Record `i`: unique (src_addr, src_port), `packets = i + 1`, an hour old (inside every TTL).
fn raw(i: u32, base_ns: i64) -> RawFlow {
    RawFlow {
        host: "node-eo".into(),
        ifindex: 2,
        direction: Direction::Egress,
        time_flow_start_ns: base_ns + i64::from(i) * 1_000,
        time_flow_end_ns: base_ns + 1_000_000 + i64::from(i) * 1_000,
        time_exported_ns: base_ns + 2_000_000_000,
        etype: 0x0800,
        proto: 17,
        src_addr: ip_to_v6(std::net::Ipv4Addr::from(0x0a00_0000 | (i >> 16)).into()),
        dst_addr: ip_to_v6("10.255.0.1".parse().unwrap()),
        src_port: (i & 0xffff) as i32,
        dst_port: 53,
        packets: i64::from(i) + 1,
        bytes: (i64::from(i) + 1) * 100,
        ..Default::default()
    }
}

fn base_ns() -> i64 {
    flowlens_testkit::hour_ago_ns()
}

/// Names and settings of one run.
struct Names {
    raw: String,
    interfaces: String,
    enriched: String,
    dead_letter: String,
    enricher_group: String,
    sink_group: String,
    partitions: i32,
}

impl Names {
    fn new(partitions: i32) -> Self {
        let n = unique("eo");
        Self {
            raw: format!("{n}.raw"),
            interfaces: format!("{n}.interfaces"),
            enriched: format!("{n}.enriched"),
            dead_letter: format!("{n}.dlq"),
            enricher_group: format!("{n}-enricher"),
            sink_group: format!("{n}-sink"),
            partitions,
        }
    }

    fn kafka(&self, brokers: &str) -> KafkaConfig {
        let mut k = KafkaConfig {
            brokers: vec![brokers.into()],
            client_id: "exactly-once".into(),
            partitions: self.partitions,
            ..Default::default()
        };
        k.topics.raw_flows = self.raw.clone();
        k.topics.interfaces = self.interfaces.clone();
        k.topics.enriched_flows = self.enriched.clone();
        k.topics.dead_letter = self.dead_letter.clone();
        k
    }

    async fn create_topics(&self, brokers: &str) {
        self.kafka(brokers)
            .ensure_topics(&[
                (&self.raw, false),
                (&self.interfaces, true),
                (&self.enriched, false),
                (&self.dead_letter, false),
            ])
            .await
            .unwrap();
    }

    fn kafka_toml(&self, brokers: &str) -> String {
        format!(
            r#"[kafka]
brokers = ["{brokers}"]
client_id = "exactly-once"
partitions = {p}
[kafka.topics]
raw_flows = "{raw}"
interfaces = "{ifs}"
enriched_flows = "{enriched}"
dead_letter = "{dlq}"
[kafka.properties]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "500"
# The enricher commits every 5 s: a kill almost always leaves produced records uncommitted.
"auto.commit.interval.ms" = "5000"
# Static membership: a restarted stage takes its dead process's place in the group. tansu 0.6
# keeps a member that died in the middle of a rebalance (librdkafka crashing as a topic it
# fetches is deleted, ARCHITECTURE.md) as the group's leader for ever otherwise, and the group
# never assigns a partition again.
"group.instance.id" = "exactly-once"
{debug}"#,
            debug = std::env::var("EO_KAFKA_DEBUG")
                .map(|d| format!("\"debug\" = \"{d}\"\n"))
                .unwrap_or_default(),
            p = self.partitions,
            raw = self.raw,
            ifs = self.interfaces,
            enriched = self.enriched,
            dlq = self.dead_letter,
        )
    }

    /// Writes both stages' configuration files into `dir`.
    fn write_configs(&self, dir: &Path, brokers: &str, clickhouse: &str) -> (PathBuf, PathBuf) {
        let enricher = dir.join("enricher.toml");
        std::fs::write(
            &enricher,
            format!(
                "[enricher]\ngroup_id = \"{g}\"\ninterfaces_ready_timeout_ms = 2000\n\
                 [telemetry]\nlog_level = \"info\"\n{k}",
                g = self.enricher_group,
                k = self.kafka_toml(brokers)
            ),
        )
        .unwrap();
        let sink = dir.join("sink.toml");
        std::fs::write(
            &sink,
            format!(
                "[clickhouse]\nurl = \"{clickhouse}\"\ntimeout_ms = 10000\n\
                 [batch]\nmax_rows = 2000\nmax_age_ms = 300\n\
                 [sink]\ngroup_id = \"{g}\"\nretry_initial_ms = 100\nretry_max_ms = 1000\n\
                 [telemetry]\nlog_level = \"info\"\n{k}",
                g = self.sink_group,
                k = self.kafka_toml(brokers)
            ),
        )
        .unwrap();
        (enricher, sink)
    }
}

/// One stage binary, restarted on demand; each run logs to its own file.
struct Stage {
    name: &'static str,
    binary: PathBuf,
    config: PathBuf,
    dir: PathBuf,
    runs: u32,
    kills: u32,
    child: Option<ChildGuard>,
}

impl Stage {
    fn new(name: &'static str, config: PathBuf, dir: &Path) -> Self {
        Self {
            name,
            binary: binary(&format!("flowlens-{name}")),
            config,
            dir: dir.to_path_buf(),
            runs: 0,
            kills: 0,
            child: None,
        }
    }

    fn start(&mut self) {
        self.runs += 1;
        let log = self.dir.join(format!("{}-{}.log", self.name, self.runs));
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--config").arg(&self.config).env_remove("RUST_LOG");
        self.child = Some(ChildGuard::spawn("stage", &mut cmd, &log));
    }

    fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.stop_with(libc::SIGKILL, Duration::from_secs(10));
            self.kills += 1;
        }
    }

    /// Restarts the stage if it exited by itself (as a supervisor would); true if it did.
    fn supervise(&mut self) -> bool {
        let exited = self.child.as_mut().is_none_or(|c| c.exited());
        if exited {
            // Why: the run's last ERROR line, if any (a crash leaves none).
            let log = self.dir.join(format!("{}-{}.log", self.name, self.runs));
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let why = text
                .lines()
                .map(plain)
                .rfind(|l| l.contains("ERROR"))
                .unwrap_or_else(|| "no error logged".into());
            eprintln!(
                "{} exited by itself (run {}): {why}; restarting",
                self.name, self.runs
            );
            self.start();
        }
        exited
    }

    /// Every log line of every run containing `needle`, without terminal colours.
    fn log_lines(&self, needle: &str) -> Vec<String> {
        (1..=self.runs)
            .flat_map(|r| {
                std::fs::read_to_string(self.dir.join(format!("{}-{r}.log", self.name)))
                    .unwrap_or_default()
                    .lines()
                    .map(plain)
                    .filter(|l| l.contains(needle))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

impl Drop for Stage {
    /// A failing test shows the end of each run's log.
    fn drop(&mut self) {
        if std::thread::panicking() {
            for r in 1..=self.runs {
                let text = std::fs::read_to_string(self.dir.join(format!("{}-{r}.log", self.name)))
                    .unwrap_or_default();
                let lines: Vec<String> = text.lines().map(plain).collect();
                let tail = &lines[lines.len().saturating_sub(40)..];
                eprintln!(
                    "--- {} run {r} (last lines) ---\n{}",
                    self.name,
                    tail.join("\n")
                );
            }
        }
    }
}

/// `line` without ANSI colour sequences (ESC [ ... m).
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Writes records `ids` to the raw topic, no key, round-robin over the partitions, and waits
/// for every acknowledgement.
async fn produce(brokers: &str, names: &Names, ids: std::ops::Range<u32>, base: i64) {
    produce_to(brokers, &names.raw, names.partitions, ids, base).await
}

async fn produce_to(
    brokers: &str,
    topic: &str,
    partitions: i32,
    ids: std::ops::Range<u32>,
    base: i64,
) {
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.timeout.ms", "60000")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let ids: Vec<u32> = ids.collect();
    for chunk in ids.chunks(5_000) {
        let payloads: Vec<(i32, Vec<u8>)> = chunk
            .iter()
            .map(|&i| {
                let mut buf = Vec::new();
                flowlens_schemas::encode(&raw(i, base), &mut buf).unwrap();
                ((i % partitions as u32) as i32, buf)
            })
            .collect();
        let sends = payloads.iter().map(|(p, buf)| {
            producer.send(
                FutureRecord::<(), [u8]>::to(topic)
                    .payload(buf)
                    .partition(*p),
                Duration::from_secs(60),
            )
        });
        for d in futures::future::join_all(sends).await {
            d.unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"));
        }
    }
}

fn clickhouse(url: &str) -> clickhouse::Client {
    clickhouse::Client::default().with_url(url)
}

async fn rows(ch: &clickhouse::Client) -> u64 {
    ch.query("SELECT count() FROM flows")
        .fetch_one::<u64>()
        .await
        .unwrap_or(0)
}

/// Brokers, and topics with the group reading each, whose end offsets and committed offsets a
/// failed wait prints, and the broker's log directory, whose logs' last lines it prints.
type Diagnose = (String, Vec<(String, String)>, PathBuf);
static DIAGNOSE: std::sync::Mutex<Option<Diagnose>> = std::sync::Mutex::new(None);

/// Waits (bounded) until `flows` holds `n` rows, never more; `tick` runs every poll (e.g. a
/// supervisor).
async fn wait_rows(ch: &clickhouse::Client, n: u64, timeout: Duration, mut tick: impl FnMut()) {
    let start = Instant::now();
    loop {
        let got = rows(ch).await;
        assert!(got <= n, "{got} rows > {n} records: duplicates");
        if got == n {
            return;
        }
        if start.elapsed() >= timeout {
            let topics = DIAGNOSE.lock().unwrap().clone();
            let state = match topics {
                Some((brokers, names, logs)) => tokio::task::spawn_blocking(move || {
                    let ends = names
                        .iter()
                        .map(|(t, g)| {
                            format!(
                                "{t}: ends {:?} (tansu reports them short), committed by {g} {:?}",
                                end_offsets(&brokers, t),
                                committed(&brokers, g, t)
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; ");
                    let mut logs: Vec<_> = std::fs::read_dir(logs)
                        .into_iter()
                        .flatten()
                        .flatten()
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|x| x == "log"))
                        .collect();
                    logs.sort();
                    let tails = logs
                        .iter()
                        .map(|p| {
                            let text = std::fs::read_to_string(p).unwrap_or_default();
                            let lines: Vec<&str> = text.lines().collect();
                            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
                            format!("\n--- {} (last lines) ---\n{tail}", p.display())
                        })
                        .collect::<String>();
                    format!("{ends}{tails}")
                })
                .await
                .unwrap_or_default(),
                None => String::new(),
            };
            panic!("only {got}/{n} rows after {timeout:?}; topics: {state}");
        }
        tick();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Records `0..n` are each stored exactly once, and every rollup sums to `flows`' totals.
async fn assert_exact(ch: &clickhouse::Client, n: u32) {
    let n = u64::from(n);
    let (count, ids, packets, bytes): (u64, u64, u64, u64) = ch
        .query("SELECT count(), uniqExact(src_addr, src_port), sum(packets), sum(bytes) FROM flows")
        .fetch_one()
        .await
        .unwrap();
    assert_eq!((count, ids), (n, n), "each record once");
    assert_eq!(packets, n * (n + 1) / 2, "packets");
    assert_eq!(bytes, 100 * n * (n + 1) / 2, "bytes");
    let tables: Vec<String> = ch
        .query(
            "SELECT name FROM system.tables WHERE database = currentDatabase() \
             AND match(name, '^flows_.*_1[mh]$') ORDER BY name",
        )
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(tables.len(), 8, "{tables:?}");
    for table in &tables {
        let (flows, sum): (u64, u64) = ch
            .query(&format!("SELECT sum(flows), sum(packets) FROM `{table}`"))
            .fetch_one()
            .await
            .unwrap();
        assert_eq!((flows, sum), (count, packets), "rollup {table} vs flows");
    }
}

/// xorshift64: reproducible "random moments" from a seed printed in the log.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_enricher_and_sink_at_random_moments() {
    if skip() {
        return;
    }
    let (tansu, chdb) = (Tansu::start(), Chdb::start());
    let names = Names::new(2);
    names.create_topics(&tansu.broker()).await;
    let dir = tempfile::tempdir().unwrap();
    let (enricher_toml, sink_toml) = names.write_configs(dir.path(), &tansu.broker(), &chdb.url());
    let mut enricher = Stage::new("enricher", enricher_toml, dir.path());
    let mut sink = Stage::new("sink", sink_toml, dir.path());
    enricher.start();
    sink.start();

    // Batches of 2,000 records every 1.5 s, at least 30 of them, and on until the kill schedule
    // is done: every kill lands while records are still arriving, however slow the machine.
    const BATCH: u32 = 2_000;
    let kills_done = Arc::new(AtomicBool::new(false));
    let base = base_ns();
    let brokers = tansu.broker();
    let producing = {
        let (topic, partitions) = (names.raw.clone(), names.partitions);
        let kills_done = kills_done.clone();
        tokio::spawn(async move {
            let mut k = 0u32;
            while k < 30 || !kills_done.load(Ordering::Relaxed) {
                produce_to(
                    &brokers,
                    &topic,
                    partitions,
                    k * BATCH..(k + 1) * BATCH,
                    base,
                )
                .await;
                k += 1;
                tokio::time::sleep(Duration::from_millis(1_500)).await;
            }
            k * BATCH
        })
    };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    eprintln!("kill schedule seed {seed}");
    let mut rng = Rng(seed);
    let ch = clickhouse(&chdb.url());
    // Both killed at least 3 times each while records are being produced, enriched and
    // inserted: each kill comes at a random moment 0.2 to 2.2 s after rows were seen arriving
    // since the previous restart. A kill of the enricher right after its commit leaves nothing
    // to replay: the enricher is killed again (up to 10 times) until one kill has left records
    // the sink then dropped as replays.
    let replayed = |sink: &Stage| {
        sink.log_lines("upstream_replays")
            .iter()
            .any(|l| !l.contains("upstream_replays=0"))
    };
    while enricher.kills < 3 || sink.kills < 3 || (!replayed(&sink) && enricher.kills < 10) {
        let (before, since) = (rows(&ch).await, Instant::now());
        while rows(&ch).await == before {
            assert!(
                since.elapsed() < Duration::from_secs(90),
                "no progress after a restart"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(200 + rng.next(2_000))).await;
        let victim = if enricher.kills >= 3 && sink.kills < 3 {
            &mut sink
        } else if enricher.kills >= 3 || sink.kills >= 3 || rng.next(2) == 0 {
            &mut enricher
        } else {
            &mut sink
        };
        victim.sigkill();
        eprintln!("SIGKILL {} at {} rows", victim.name, rows(&ch).await);
        tokio::time::sleep(Duration::from_millis(rng.next(500))).await;
        victim.start();
    }
    kills_done.store(true, Ordering::Relaxed);
    let n = producing.await.unwrap();
    wait_rows(&ch, u64::from(n), Duration::from_secs(240), || {
        enricher.supervise();
        sink.supervise();
    })
    .await;
    // Nothing more arrives later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_exact(&ch, n).await;
    // The cost of the identity columns on disk (reported, not asserted): compressed bytes per
    // row of the 0005 columns against the whole row. Per-column sizes exist only in wide
    // parts: the table is merged into wide parts first.
    for sql in [
        "ALTER TABLE flows MODIFY SETTING min_bytes_for_wide_part = 0, min_rows_for_wide_part = 0",
        "OPTIMIZE TABLE flows FINAL",
    ] {
        ch.query(sql).execute().await.unwrap();
    }
    let (identity, all): (u64, u64) = ch
        .query(
            "SELECT sumIf(column_data_compressed_bytes, column IN ('kafka_stream', \
             'kafka_timestamp', 'origin_topic', 'origin_stream', 'origin_partition', \
             'origin_offset')), sum(column_data_compressed_bytes) FROM system.parts_columns \
             WHERE database = currentDatabase() AND table = 'flows' AND active",
        )
        .fetch_one()
        .await
        .unwrap();
    eprintln!(
        "flows on disk: {:.2} bytes/row, of which the identity columns {:.2} bytes/row",
        all as f64 / f64::from(n),
        identity as f64 / f64::from(n)
    );
    let upstream: Vec<String> = sink
        .log_lines("upstream_replays")
        .into_iter()
        .filter(|l| !l.contains("upstream_replays=0"))
        .collect();
    assert!(
        !upstream.is_empty(),
        "no enricher kill left records to replay: the run proved nothing about them"
    );
    eprintln!(
        "{n} records exactly once; enricher killed {} times, sink {} times; the sink dropped replays {} times:\n{}",
        enricher.kills,
        sink.kills,
        upstream.len(),
        upstream.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_and_topics_reset_under_running_stages() {
    if skip() {
        return;
    }
    let (mut tansu, chdb) = (Tansu::start(), Chdb::start());
    let brokers = tansu.broker();
    let names = Names::new(2);
    names.create_topics(&brokers).await;
    let dir = tempfile::tempdir().unwrap();
    let (enricher_toml, sink_toml) = names.write_configs(dir.path(), &brokers, &chdb.url());
    let mut enricher = Stage::new("enricher", enricher_toml, dir.path());
    let mut sink = Stage::new("sink", sink_toml, dir.path());
    enricher.start();
    sink.start();
    *DIAGNOSE.lock().unwrap() = Some((
        brokers.clone(),
        vec![
            (names.raw.clone(), names.enricher_group.clone()),
            (names.enriched.clone(), names.sink_group.clone()),
        ],
        tansu.log_dir(),
    ));
    let ch = clickhouse(&chdb.url());
    let base = base_ns();
    const STEP: u32 = 4_000;
    let timeout = Duration::from_secs(90);
    let mut supervise = || {
        enricher.supervise();
        sink.supervise();
    };

    // 1. Before any reset.
    produce(&brokers, &names, 0..STEP, base).await;
    wait_rows(&ch, u64::from(STEP), timeout, &mut supervise).await;

    // 2. The broker restarted empty: same address, fresh topics whose offsets start at 0 again,
    //    no committed offsets; ClickHouse keeps its rows.
    tansu.restart_empty();
    names.create_topics(&brokers).await;
    produce(&brokers, &names, STEP..2 * STEP, base).await;
    wait_rows(&ch, u64::from(2 * STEP), timeout, &mut supervise).await;

    // 3. The raw topic deleted and created again under the running enricher.
    delete_topics(&brokers, &[&names.raw]).await;
    names.create_topics(&brokers).await;
    produce(&brokers, &names, 2 * STEP..3 * STEP, base).await;
    wait_rows(&ch, u64::from(3 * STEP), timeout, &mut supervise).await;

    // 4. The enriched topic deleted and created again under the running sink.
    delete_topics(&brokers, &[&names.enriched]).await;
    names.create_topics(&brokers).await;
    produce(&brokers, &names, 3 * STEP..4 * STEP, base).await;
    wait_rows(&ch, u64::from(4 * STEP), timeout, &mut supervise).await;

    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_exact(&ch, 4 * STEP).await;
    let changes = sink.log_lines("new incarnation");
    eprintln!(
        "{} records exactly once across 3 resets; enricher runs {}, sink runs {}; sink incarnation changes:\n{}",
        4 * STEP,
        enricher.runs,
        sink.runs,
        changes.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_during_enrichment() {
    use rdkafka::mocking::MockCluster;
    if skip() {
        return;
    }
    let chdb = Chdb::start();
    let mock = MockCluster::new(1).unwrap();
    let brokers = mock.bootstrap_servers();
    let names = Names::new(2);
    for (topic, partitions) in [
        (&names.raw, 2),
        (&names.interfaces, 1),
        (&names.enriched, 2),
        (&names.dead_letter, 1),
    ] {
        mock.create_topic(topic, partitions, 1).unwrap();
    }
    let mut kafka = names.kafka(&brokers);
    kafka.create_topics = false;
    kafka
        .properties
        .insert("session.timeout.ms".into(), "6000".into());
    let mut enricher = flowlens_enricher::config::Config {
        kafka: kafka.clone(),
        ..Default::default()
    };
    enricher.enricher.group_id = names.enricher_group.clone();
    enricher.enricher.interfaces_ready_timeout_ms = 1_000;
    let mut sink = flowlens_sink::Config {
        kafka,
        ..Default::default()
    };
    sink.clickhouse.url = chdb.url();
    sink.batch.max_rows = 2_000;
    sink.batch.max_age_ms = 300;
    sink.sink.group_id = names.sink_group.clone();
    sink.sink.retry_initial_ms = 100;
    sink.sink.retry_max_ms = 1_000;

    const N: u32 = 30_000;
    let base = base_ns();
    produce(&brokers, &names, 0..N / 2, base).await;
    let shutdown = flowlens_runtime::Shutdown::new();
    let sink_task = tokio::spawn(flowlens_sink::run(sink, shutdown.clone()));
    let enricher_task = tokio::spawn(flowlens_enricher::run(enricher, shutdown.clone()));
    let ch = clickhouse(&chdb.url());
    let start = Instant::now();
    while rows(&ch).await < u64::from(N / 8) {
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The broker goes away while the enricher has records in flight, then comes back.
    mock.broker_down(1).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    mock.broker_up(1).unwrap();
    produce(&brokers, &names, N / 2..N, base).await;
    wait_rows(&ch, u64::from(N), Duration::from_secs(180), || {}).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_exact(&ch, N).await;
    shutdown.trigger();
    for task in [enricher_task, sink_task] {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("stage stops")
            .unwrap()
            .unwrap();
    }
}
