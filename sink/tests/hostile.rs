//! Hostile input through the real binaries (issue 17): `flowlens-enricher` and `flowlens-sink`
//! as processes, on tansu and ClickHouse 26.9 (the chdb front), fed by a stock Kafka client
//! (librdkafka through rdkafka, the library under Python's confluent-kafka too).
//!
//! * `bad_records_never_stop_a_stage`: every case of the issue (empty value, 64 random bytes, an
//!   unknown fingerprint, a header cut short, a header without a body, a JSON object, 1,000,000
//!   random bytes, 300 bytes of 0xff, a null value; keys null or set) plus huge-length varints
//!   (2^62, 500,000,000, i64::MAX, an 11-byte varint), records of 1 MiB, 16 MiB and 64 MiB, a
//!   1 MB key and records that decode but cannot go on, on the raw, enriched AND interfaces
//!   topics, between good records. Both stages stay up; the good records land in ClickHouse
//!   exactly once (their unique ids, and the interface names the good interface records carry);
//!   every bad record is in the dead-letter topic exactly once (its source offset, from the
//!   broker's delivery report), with its reason, whole or as a prefix saying so.
//! * `unavailable_dead_letter_topic_stops_without_committing` and `..._skips_when_told`: the
//!   dead-letter topic is missing and the broker does not create topics; `[dead_letter]
//!   when_unavailable` decides, checked through logs, metrics, `/readyz` and the committed
//!   offsets (the broker's). With "stop", the waits between attempts stop growing at
//!   `dead_letter.retry_max_ms` (500 ms, logged with each attempt), and the enricher, whose
//!   interfaces reader is held at its bad record, enriches anyway once
//!   `enricher.interfaces_ready_timeout_ms` (3 s; the default waits 10 s) has passed: its records
//!   are in the enriched topic before the dead-letter topic exists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use flowlens_runtime::dead_letter::{
    HEADER_ORIGINAL_KEY_SIZE, HEADER_ORIGINAL_SIZE, HEADER_REASON, HEADER_SOURCE, HEADER_STAGE,
    HEADER_TRUNCATED,
};
use flowlens_runtime::kafka::KafkaConfig;
use flowlens_schemas::{
    encode, ip_to_v6, AvroRecord, Direction, EnrichedFlow, Interface, RawFlow, RecordKind,
};
use flowlens_testkit::{
    committed, free_port, header, http, read_topic, stage_binary, unique, Chdb, ChildGuard, Tansu,
};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

/// Waits of this test for the stages: readiness waits, not timings.
const WAIT: Duration = Duration::from_secs(240);

/// xorshift64*: reproducible random bytes without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(n);
        out
    }
}

/// Avro `long` as a zig-zag varint.
fn varint(value: i64, out: &mut Vec<u8>) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn header_of(fingerprint: [u8; 8]) -> Vec<u8> {
    let mut m = vec![0xC3, 0x01];
    m.extend_from_slice(&fingerprint);
    m
}

/// Topics, groups and ports of one run.
struct Names {
    raw: String,
    interfaces: String,
    enriched: String,
    dead_letter: String,
    enricher_group: String,
    sink_group: String,
    client_id: String,
    host: String,
    enricher_metrics: u16,
    sink_metrics: u16,
}

impl Names {
    fn new() -> Self {
        let name = unique("hostile");
        Self {
            raw: format!("{name}.raw"),
            interfaces: format!("{name}.interfaces"),
            enriched: format!("{name}.enriched"),
            dead_letter: format!("{name}.dlq"),
            enricher_group: format!("{name}-enricher"),
            sink_group: format!("{name}-sink"),
            client_id: name.clone(),
            host: name,
            enricher_metrics: free_port(),
            sink_metrics: free_port(),
        }
    }

    fn kafka(&self, brokers: &str) -> KafkaConfig {
        let mut k = KafkaConfig {
            brokers: vec![brokers.into()],
            partitions: 2,
            ..Default::default()
        };
        k.topics.raw_flows = self.raw.clone();
        k.topics.interfaces = self.interfaces.clone();
        k.topics.enriched_flows = self.enriched.clone();
        k.topics.dead_letter = self.dead_letter.clone();
        k
    }
}

/// The two stage binaries running with one configuration; killed on drop.
struct Stages {
    enricher: ChildGuard,
    sink: ChildGuard,
    enricher_log: PathBuf,
    sink_log: PathBuf,
    enricher_bin: PathBuf,
    enricher_config: PathBuf,
    dir: tempfile::TempDir,
}

fn spawn(name: &'static str, bin: &Path, config: &Path, log: &Path) -> ChildGuard {
    let mut cmd = Command::new(bin);
    cmd.arg("--config").arg(config).env_remove("RUST_LOG");
    ChildGuard::spawn(name, &mut cmd, log)
}

impl Stages {
    /// `dead_letter` and `kafka_extra` are TOML lines for `[dead_letter]` and `[kafka]`;
    /// `properties` for `[kafka.properties]`.
    fn start(
        names: &Names,
        brokers: &str,
        clickhouse: &str,
        dead_letter: &str,
        kafka_extra: &str,
        properties: &str,
        interfaces_ready_timeout_ms: u64,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kafka = format!(
            r#"[kafka]
brokers = ["{brokers}"]
client_id = "{client}"
partitions = 2
{kafka_extra}
[kafka.topics]
raw_flows = "{raw}"
interfaces = "{interfaces}"
enriched_flows = "{enriched}"
dead_letter = "{dlq}"
[kafka.properties]
{properties}
[dead_letter]
{dead_letter}
"#,
            client = names.client_id,
            raw = names.raw,
            interfaces = names.interfaces,
            enriched = names.enriched,
            dlq = names.dead_letter,
        );
        let enricher_config = dir.path().join("enricher.toml");
        std::fs::write(
            &enricher_config,
            format!(
                r#"[enricher]
group_id = "{group}"
interfaces_ready_timeout_ms = {interfaces_ready_timeout_ms}
[telemetry]
metrics_listen = "127.0.0.1:{port}"
{kafka}"#,
                group = names.enricher_group,
                port = names.enricher_metrics,
            ),
        )
        .unwrap();
        let sink_config = dir.path().join("sink.toml");
        std::fs::write(
            &sink_config,
            format!(
                r#"[clickhouse]
url = "{clickhouse}"
timeout_ms = 30000
[batch]
max_age_ms = 300
[sink]
group_id = "{group}"
retry_initial_ms = 100
retry_max_ms = 1000
[telemetry]
metrics_listen = "127.0.0.1:{port}"
{kafka}"#,
                group = names.sink_group,
                port = names.sink_metrics,
            ),
        )
        .unwrap();
        let enricher_bin = stage_binary("flowlens-enricher", "flowlens-enricher");
        let enricher_log = dir.path().join("enricher.log");
        let sink_log = dir.path().join("sink.log");
        let sink = spawn(
            "flowlens-sink",
            Path::new(env!("CARGO_BIN_EXE_flowlens-sink")),
            &sink_config,
            &sink_log,
        );
        let enricher = spawn(
            "flowlens-enricher",
            &enricher_bin,
            &enricher_config,
            &enricher_log,
        );
        Self {
            enricher,
            sink,
            enricher_log,
            sink_log,
            enricher_bin,
            enricher_config,
            dir,
        }
    }

    /// Stops the enricher (SIGTERM, it must exit by itself) and starts it again with the same
    /// configuration, logging to a new file.
    fn restart_enricher(&mut self) {
        assert!(
            self.enricher
                .stop_with(libc::SIGTERM, Duration::from_secs(60)),
            "the enricher did not stop on SIGTERM\n{}",
            self.logs()
        );
        self.enricher_log = self.dir.path().join("enricher.again.log");
        self.enricher = spawn(
            "flowlens-enricher",
            &self.enricher_bin,
            &self.enricher_config,
            &self.enricher_log,
        );
    }

    fn logs(&self) -> String {
        format!(
            "--- enricher log:\n{}\n--- sink log:\n{}",
            tail(&self.enricher_log),
            tail(&self.sink_log)
        )
    }

    /// Both processes are still running.
    fn assert_up(&mut self) {
        let logs = self.logs();
        assert!(!self.enricher.exited(), "the enricher exited\n{logs}");
        assert!(!self.sink.exited(), "the sink exited\n{logs}");
    }

    /// SIGTERM to both; each must exit by itself.
    fn stop(mut self) {
        let logs = self.logs();
        let enricher = self
            .enricher
            .stop_with(libc::SIGTERM, Duration::from_secs(60));
        let sink = self.sink.stop_with(libc::SIGTERM, Duration::from_secs(60));
        assert!(enricher && sink, "a stage did not stop on SIGTERM\n{logs}");
    }
}

/// The last 200 lines of a log file.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(200)..].join("\n")
}

fn wait_for(
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> bool,
    logs: impl Fn() -> String,
) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < timeout,
            "{what}: not after {timeout:?}\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The value of the metric line starting with `series` (name and labels) at `port`; 0 if absent.
fn metric(port: u16, series: &str) -> f64 {
    let (_, text) = http(port, "GET", "/metrics", "");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A record to produce: (partition, key, value).
type Outgoing = (i32, Option<Vec<u8>>, Option<Vec<u8>>);

/// A producer like any client's, allowed records up to 200 MB (tansu takes them).
fn producer(brokers: &str) -> FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.max.bytes", "200000000")
        .set("compression.type", "none")
        .set("message.timeout.ms", "120000")
        .create()
        .unwrap()
}

/// Produces `records` in order, each acknowledged before the next; returns their offsets.
async fn produce(p: &FutureProducer, topic: &str, records: &[Outgoing]) -> Vec<i64> {
    let mut offsets = Vec::new();
    for (partition, key, value) in records {
        let mut r = FutureRecord::<[u8], [u8]>::to(topic).partition(*partition);
        if let Some(k) = key {
            r = r.key(k);
        }
        if let Some(v) = value {
            r = r.payload(v);
        }
        let d = p
            .send(r, Duration::from_secs(120))
            .await
            .unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"));
        assert_eq!(d.partition, *partition);
        offsets.push(d.offset);
    }
    offsets
}

/// Now, in Unix nanoseconds: rows must be within the table's TTL.
fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn raw_flow(host: &str, n: i64) -> RawFlow {
    let now = now_ns();
    RawFlow {
        host: host.into(),
        ifindex: 100 + (n % 3) as i32,
        direction: Direction::Ingress,
        time_flow_start_ns: now - 2_000_000_000 + n,
        time_flow_end_ns: now - 1_000_000_000 + n,
        time_exported_ns: now + n,
        etype: 0x0800,
        proto: 17,
        src_addr: ip_to_v6("10.1.0.1".parse().unwrap()),
        dst_addr: ip_to_v6("10.1.0.2".parse().unwrap()),
        src_port: n as i32,
        dst_port: 53,
        packets: n + 1,
        bytes: 100 * (n + 1),
        sampling_rate: 1,
        ..Default::default()
    }
}

fn interface(host: &str, ifindex: i32) -> Interface {
    Interface {
        host: host.into(),
        ifindex,
        name: format!("hostile-if{ifindex}"),
        mac: "02:00:00:00:00:07".into(),
        mtu: 1500,
        kind: "veth".into(),
        netns: "pod-ns".into(),
        netns_inode: 4_026_532_000,
        oper_state: "up".into(),
        time_observed_ns: 1,
    }
}

fn encoded<R: AvroRecord + serde::Serialize>(r: &R) -> Vec<u8> {
    let mut buf = Vec::new();
    encode(r, &mut buf).unwrap();
    buf
}

/// A bad record and the dead-letter header values it must come back with.
#[derive(Clone)]
struct Bad {
    name: &'static str,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    /// Text the reason must contain ("" = any non-empty reason).
    reason: String,
}

fn bad(name: &'static str, key: Option<&[u8]>, value: Option<Vec<u8>>, reason: &str) -> Bad {
    Bad {
        name,
        key: key.map(<[u8]>::to_vec),
        value,
        reason: reason.into(),
    }
}

/// Every hostile case of the issue and more, for a topic whose records are `kind`; `valid` is
/// one good message of that kind (its datum follows a forged fingerprint).
fn hostile_cases(kind: RecordKind, valid: &[u8], rng: &mut Rng) -> Vec<Bad> {
    let fp = kind.fingerprint();
    let huge = |length: i64| {
        let mut m = header_of(fp);
        varint(length, &mut m);
        m.extend_from_slice(b"node-1 and then some bytes");
        m
    };
    let mut unknown = header_of([1, 2, 3, 4, 5, 6, 7, 8]);
    unknown.extend_from_slice(&valid[10..]);
    let mut overlong = header_of(fp);
    overlong.extend_from_slice(&[0xff; 10]);
    overlong.push(0x01);
    let key = Some(&b"hostile-key"[..]);
    vec![
        bad("empty value", key, Some(Vec::new()), ""),
        bad("64 random bytes", None, Some(rng.bytes(64)), ""),
        bad(
            "unknown fingerprint",
            key,
            Some(unknown),
            "0102030405060708",
        ),
        bad(
            "header cut short",
            None,
            Some(header_of(fp)[..5].to_vec()),
            "",
        ),
        bad(
            "header without a body",
            key,
            Some(header_of(fp)),
            "truncated",
        ),
        bad(
            "a JSON object",
            None,
            Some(br#"{"host":"node-1","ifindex":7,"bytes":1500}"#.to_vec()),
            "C3 01",
        ),
        bad(
            "1,000,000 random bytes",
            key,
            Some(rng.bytes(1_000_000)),
            "",
        ),
        bad("300 bytes of 0xff", None, Some(vec![0xff; 300]), ""),
        bad("a null value", Some(&b"hostile-null"[..]), None, ""),
        bad(
            "length 2^62",
            key,
            Some(huge(1 << 62)),
            "4611686018427387904",
        ),
        bad(
            "length 500,000,000",
            None,
            Some(huge(500_000_000)),
            "500000000",
        ),
        bad(
            "length i64::MAX",
            key,
            Some(huge(i64::MAX)),
            "9223372036854775807",
        ),
        bad("an 11-byte varint", None, Some(overlong), ""),
        bad("1 MiB", key, Some(rng.bytes(1 << 20)), ""),
        bad("16 MiB", None, Some(rng.bytes(16 << 20)), ""),
        bad("64 MiB", key, Some(rng.bytes(64 << 20)), ""),
        bad(
            "a 999,000-byte key",
            Some(&rng.bytes(999_000)),
            Some(rng.bytes(64)),
            "",
        ),
    ]
}

/// A topic's records: good and bad interleaved over two partitions.
struct Plan {
    records: Vec<Outgoing>,
    /// Index in `records` of each bad case.
    bad: Vec<(usize, Bad)>,
    /// Offset of each record produced so far (delivery reports), in `records` order.
    offsets: Vec<i64>,
}

impl Plan {
    /// Produces the records `range` of the plan to `topic`, in order.
    async fn produce(&mut self, p: &FutureProducer, topic: &str, range: std::ops::Range<usize>) {
        assert_eq!(range.start, self.offsets.len(), "produced in order");
        let offsets = produce(p, topic, &self.records[range]).await;
        self.offsets.extend(offsets);
    }
}

/// The good records spread evenly around the bad ones (the first and the last one good).
fn interleave(good: Vec<Vec<u8>>, bad: Vec<Bad>, good_key: impl Fn(usize) -> Vec<u8>) -> Plan {
    let (g, b) = (good.len(), bad.len());
    // Good record i goes before bad record slot(i) (slot b: after the last bad one).
    let slot = |i: usize| {
        if g <= 1 {
            0
        } else {
            (i * b + (g - 1) / 2) / (g - 1)
        }
    };
    let mut plan = Plan {
        records: Vec::new(),
        bad: Vec::new(),
        offsets: Vec::new(),
    };
    let mut good = good.into_iter().enumerate().peekable();
    let mut bad = bad.into_iter();
    for j in 0..=b {
        while let Some((i, value)) = good.next_if(|(i, _)| slot(*i) == j) {
            let partition = (plan.records.len() % 2) as i32;
            plan.records
                .push((partition, Some(good_key(i)), Some(value)));
        }
        if let Some(case) = bad.next() {
            let partition = (plan.records.len() % 2) as i32;
            plan.records
                .push((partition, case.key.clone(), case.value.clone()));
            plan.bad.push((plan.records.len() - 1, case));
        }
    }
    plan
}

/// The good rows of `host` in ClickHouse: (src_port, if_name) -> copies.
fn rows(clickhouse: &Chdb, host: &str) -> BTreeMap<(i64, String), u64> {
    let (status, text) = http(
        clickhouse.port,
        "POST",
        "/",
        &format!(
            "SELECT src_port, if_name, count() FROM flows WHERE host = '{host}' \
             GROUP BY src_port, if_name FORMAT TSV"
        ),
    );
    if status != 200 {
        eprintln!("rows of {host}: {status} {text}");
        return BTreeMap::new();
    }
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (
                (f[0].parse().unwrap(), f[1].to_string()),
                f[2].parse().unwrap(),
            )
        })
        .collect()
}

/// Each bad record by source (`topic/partition/offset`): the case and the stage dead-lettering it.
type Expected = BTreeMap<String, (Bad, &'static str)>;

/// The bad records of the three topics' plans, by where the broker put them.
fn sources(names: &Names, interfaces: &Plan, raw: &Plan, enriched: &Plan) -> Expected {
    [
        (&names.interfaces, interfaces, "enricher"),
        (&names.raw, raw, "enricher"),
        (&names.enriched, enriched, "sink"),
    ]
    .into_iter()
    .flat_map(|(topic, plan, stage)| {
        plan.bad.iter().map(move |(at, b)| {
            let (partition, _, _) = plan.records[*at];
            let source = format!("{topic}/{partition}/{}", plan.offsets[*at]);
            (source, (b.clone(), stage))
        })
    })
    .collect()
}

/// One past the last offset of each of the two partitions, from the delivery reports.
fn ends_of(plan: &Plan) -> Vec<Option<i64>> {
    (0..2)
        .map(|p| {
            plan.records
                .iter()
                .zip(&plan.offsets)
                .filter(|((partition, _, _), _)| *partition == p)
                .map(|(_, o)| o + 1)
                .max()
        })
        .collect()
}

/// The records of the dead-letter topic: at least `at_least`, or what came within `timeout`.
async fn dead_letters(
    brokers: &str,
    names: &Names,
    at_least: usize,
    timeout: Duration,
) -> Vec<OwnedMessage> {
    let (b, t) = (brokers.to_owned(), names.dead_letter.clone());
    tokio::task::spawn_blocking(move || read_topic(&b, &t, at_least, timeout))
        .await
        .unwrap()
}

/// One past the last offset of each of the two partitions of `topic`, read from the broker.
async fn read_ends(brokers: &str, topic: &str, at_least: usize) -> Vec<Option<i64>> {
    let (b, t) = (brokers.to_owned(), topic.to_owned());
    let written = tokio::task::spawn_blocking(move || read_topic(&b, &t, at_least, WAIT))
        .await
        .unwrap();
    assert!(
        written.len() >= at_least,
        "{topic}: {} records",
        written.len()
    );
    (0..2)
        .map(|p| {
            written
                .iter()
                .filter(|m| m.partition() == p)
                .map(|m| m.offset() + 1)
                .max()
        })
        .collect()
}

/// Waits until the groups committed exactly `raw_end` (enricher) and `enriched_end` (sink).
async fn wait_committed(
    brokers: &str,
    names: &Names,
    raw_end: &[Option<i64>],
    enriched_end: &[Option<i64>],
) {
    let start = Instant::now();
    loop {
        let (b, g) = (
            brokers.to_owned(),
            (
                names.enricher_group.clone(),
                names.sink_group.clone(),
                names.raw.clone(),
                names.enriched.clone(),
            ),
        );
        let (raw_committed, enriched_committed) = tokio::task::spawn_blocking(move || {
            (committed(&b, &g.0, &g.2), committed(&b, &g.1, &g.3))
        })
        .await
        .unwrap();
        if raw_committed == raw_end && enriched_committed == enriched_end {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "committed {raw_committed:?} / {enriched_committed:?}, ends {raw_end:?} / {enriched_end:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Checks the dead-letter topic holds exactly `expected` (by source), each with its reason.
fn check_dead_letters(dead: &[OwnedMessage], expected: &Expected) {
    let mut seen = BTreeSet::new();
    for m in dead {
        let source = header(m, HEADER_SOURCE).expect("source header");
        assert!(seen.insert(source.clone()), "{source} dead-lettered twice");
        let Some((bad, stage)) = expected.get(&source) else {
            panic!("{source} dead-lettered but it is not a bad record");
        };
        let what = format!("{} ({source})", bad.name);
        assert_eq!(header(m, HEADER_STAGE).as_deref(), Some(*stage), "{what}");
        let reason = header(m, HEADER_REASON).unwrap_or_default();
        assert!(
            !reason.is_empty() && reason.contains(&bad.reason),
            "{what}: reason {reason:?} lacks {:?}",
            bad.reason
        );
        let original = bad.value.as_deref().unwrap_or_default();
        assert_eq!(
            header(m, HEADER_ORIGINAL_SIZE),
            Some(original.len().to_string()),
            "{what}"
        );
        let value = m.payload().unwrap_or_default();
        let key = m.key();
        let truncated = header(m, HEADER_TRUNCATED);
        if truncated.as_deref() == Some("true") {
            assert!(
                value.len() + key.map_or(0, <[u8]>::len)
                    < original.len() + bad.key.as_ref().map_or(0, Vec::len),
                "{what}: truncated yet whole"
            );
            assert!(value.len() <= 1_000_000, "{what}: {} bytes", value.len());
        } else {
            assert_eq!(truncated.as_deref(), Some("false"), "{what}");
        }
        assert_eq!(
            value,
            &original[..value.len()],
            "{what}: a prefix of the value"
        );
        match (&bad.key, key) {
            (Some(k), Some(got)) => {
                assert_eq!(got, &k[..got.len()], "{what}: a prefix of the key");
                assert_eq!(
                    header(m, HEADER_ORIGINAL_KEY_SIZE),
                    Some(k.len().to_string()),
                    "{what}"
                );
            }
            (None, None) => {}
            (k, got) => panic!("{what}: key {:?} became {:?}", k.is_some(), got.is_some()),
        }
        if original.len() < 900_000 && bad.key.as_ref().is_none_or(|k| k.len() < 900_000) {
            assert_eq!(
                truncated.as_deref(),
                Some("false"),
                "{what}: small, kept whole"
            );
            assert_eq!(value.len(), original.len(), "{what}");
        }
    }
    let missing: Vec<&String> = expected.keys().filter(|s| !seen.contains(*s)).collect();
    assert!(missing.is_empty(), "not dead-lettered: {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_never_stop_a_stage() {
    let tansu = Tansu::start();
    let clickhouse = Chdb::start();
    let brokers = tansu.broker();
    let names = Names::new();
    let kafka = names.kafka(&brokers);
    kafka
        .ensure_topics(&[
            (names.raw.as_str(), false),
            (names.interfaces.as_str(), true),
            (names.enriched.as_str(), false),
            (names.dead_letter.as_str(), false),
        ])
        .await
        .unwrap();
    let host = names.host.clone();
    let direct_host = format!("{host}-direct");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);

    // Interfaces: three good records around the bad ones, then the raw flows join with them.
    let mut interfaces_bad = hostile_cases(
        RecordKind::Interface,
        &encoded(&interface(&host, 100)),
        &mut rng,
    );
    interfaces_bad.push(bad(
        "a tombstone keyed `nonsense`",
        Some(b"nonsense"),
        None,
        "host/ifindex",
    ));
    let good_interfaces = (100..103).map(|i| encoded(&interface(&host, i))).collect();
    let mut interfaces = interleave(good_interfaces, interfaces_bad, |i| {
        format!("{host}/{}", 100 + i).into_bytes()
    });

    // Raw flows: 24 good ones, the bad ones between them, and a valid RawFlow whose enriched
    // copy is over the producer's 1,000,000 bytes.
    let good_raw: Vec<Vec<u8>> = (0..24).map(|n| encoded(&raw_flow(&host, n))).collect();
    let mut raw_bad = hostile_cases(RecordKind::RawFlow, &good_raw[0], &mut rng);
    let mut huge_host = raw_flow(&"h".repeat(1_000_100), 99);
    huge_host.ifindex = 100;
    raw_bad.push(bad(
        "a RawFlow enriched beyond message.max.bytes",
        Some(b"huge-host"),
        Some(encoded(&huge_host)),
        "message.max.bytes",
    ));
    let mut raw = interleave(good_raw, raw_bad, |i| {
        format!("{host}/{}", 100 + i % 3).into_bytes()
    });

    // Enriched flows written directly: 24 good ones and the bad ones, one out of the table's range.
    let good_enriched: Vec<Vec<u8>> = (0..24)
        .map(|n| encoded(&EnrichedFlow::from_raw(raw_flow(&direct_host, 1_000 + n))))
        .collect();
    let mut enriched_bad = hostile_cases(RecordKind::EnrichedFlow, &good_enriched[0], &mut rng);
    let mut out_of_range = EnrichedFlow::from_raw(raw_flow(&direct_host, 5_000));
    out_of_range.dst_port = 70_000;
    enriched_bad.push(bad(
        "an EnrichedFlow out of the table's range",
        Some(b"range"),
        Some(encoded(&out_of_range)),
        "dst_port",
    ));
    let mut enriched = interleave(good_enriched, enriched_bad, |i| {
        format!("direct/{i}").into_bytes()
    });

    // Interfaces and a first half of each flow topic before the stages start, the rest after.
    let p = producer(&brokers);
    let (raw_half, enriched_half) = (raw.records.len() / 2, enriched.records.len() / 2);
    interfaces
        .produce(&p, &names.interfaces, 0..interfaces.records.len())
        .await;
    raw.produce(&p, &names.raw, 0..raw_half).await;
    enriched
        .produce(&p, &names.enriched, 0..enriched_half)
        .await;

    let mut stages = Stages::start(
        &names,
        &brokers,
        &clickhouse.url(),
        "",
        "create_topics = true",
        "",
        180_000,
    );
    raw.produce(&p, &names.raw, raw_half..raw.records.len())
        .await;
    enriched
        .produce(&p, &names.enriched, enriched_half..enriched.records.len())
        .await;
    let expected = sources(&names, &interfaces, &raw, &enriched);

    // Good rows: raw flows joined with the good interfaces, direct ones as written.
    let mut want: BTreeMap<(i64, String), u64> = (0..24)
        .map(|n| ((n, format!("hostile-if{}", 100 + n % 3)), 1))
        .collect();
    let want_direct: BTreeMap<(i64, String), u64> =
        (0..24).map(|n| ((1_000 + n, String::new()), 1)).collect();
    wait_for(
        "every good record in ClickHouse",
        WAIT,
        || {
            rows(&clickhouse, &host).len() >= want.len()
                && rows(&clickhouse, &direct_host).len() >= want_direct.len()
        },
        || {
            format!(
                "{}\nrows: {:?}\ndirect: {:?}",
                stages.logs(),
                rows(&clickhouse, &host),
                rows(&clickhouse, &direct_host)
            )
        },
    );
    let dead = dead_letters(&brokers, &names, expected.len(), WAIT).await;
    stages.assert_up();
    check_dead_letters(&dead, &expected);

    // Exactly once: read again after a pause, nothing more arrived.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        rows(&clickhouse, &host),
        std::mem::take(&mut want),
        "raw flows, joined"
    );
    assert_eq!(
        rows(&clickhouse, &direct_host),
        want_direct,
        "enriched flows"
    );
    let again = dead_letters(&brokers, &names, expected.len() + 1, Duration::from_secs(5)).await;
    assert_eq!(again.len(), expected.len(), "dead letters, read again");

    // Up, live and ready; the truncations were counted.
    stages.assert_up();
    for port in [names.enricher_metrics, names.sink_metrics] {
        assert_eq!(http(port, "GET", "/healthz", "").0, 200);
        let (status, text) = http(port, "GET", "/readyz", "");
        assert_eq!(status, 200, "{text}");
    }
    for (port, stage, truncated) in [
        (names.enricher_metrics, "enricher", 2 * 5 + 1),
        (names.sink_metrics, "sink", 5),
    ] {
        let got = metric(
            port,
            &format!("flowlens_dead_letter_truncated_total{{stage=\"{stage}\"}}"),
        );
        assert_eq!(got, f64::from(truncated), "{stage} truncated copies");
    }

    // A restart reads the whole interfaces topic again: the bad interface records are known
    // to be dead-lettered already (the reader group's commit) and are not copied again.
    stages.restart_enricher();
    wait_for(
        "the restarted enricher caught up with the interfaces topic",
        WAIT,
        || {
            std::fs::read_to_string(&stages.enricher_log)
                .is_ok_and(|l| l.contains("enricher started"))
        },
        || stages.logs(),
    );
    let restarted = std::fs::read_to_string(&stages.enricher_log).unwrap();
    assert_eq!(
        restarted
            .matches("bad interface record left out (dead-lettered before)")
            .count(),
        interfaces.bad.len(),
        "every bad interface record read again\n{restarted}"
    );
    let again = dead_letters(&brokers, &names, expected.len() + 1, Duration::from_secs(5)).await;
    assert_eq!(again.len(), expected.len(), "dead letters after a restart");

    // Everything consumed is committed: each group's offsets are the ends of its topic, as the
    // broker's delivery reports (raw) and a full read (enriched: the enricher writes there too)
    // give them; the enriched topic holds the records written to it and one per good raw flow.
    let enriched_end = read_ends(&brokers, &names.enriched, enriched.records.len() + 24).await;
    wait_committed(&brokers, &names, &ends_of(&raw), &enriched_end).await;
    stages.stop();
}

/// Rows of `host` per src_port.
fn ports(clickhouse: &Chdb, host: &str) -> BTreeMap<i64, u64> {
    let mut out = BTreeMap::new();
    for ((port, _), n) in rows(clickhouse, host) {
        *out.entry(port).or_default() += n;
    }
    out
}

/// A run whose dead-letter topic does not exist, on a broker that creates no topic on demand:
/// one bad record between good ones on each of the raw, enriched and interfaces topics.
struct Unavailable {
    tansu: Tansu,
    clickhouse: Chdb,
    names: Names,
    stages: Stages,
    raw: Plan,
    enriched: Plan,
    expected: Expected,
}

impl Unavailable {
    async fn start(policy: &str) -> Self {
        let tansu = Tansu::start();
        let clickhouse = Chdb::start();
        let brokers = tansu.broker();
        let names = Names::new();
        names
            .kafka(&brokers)
            .ensure_topics(&[
                (names.raw.as_str(), false),
                (names.interfaces.as_str(), true),
                (names.enriched.as_str(), false),
            ])
            .await
            .unwrap();
        let (host, direct) = (names.host.clone(), format!("{}-direct", names.host));
        let mut rng = Rng(7);
        let mut one_bad = || vec![bad("64 random bytes", None, Some(rng.bytes(64)), "")];
        let mut interfaces = interleave(
            (100..102).map(|i| encoded(&interface(&host, i))).collect(),
            one_bad(),
            |i| format!("{host}/{}", 100 + i).into_bytes(),
        );
        let mut raw = interleave(
            (0..6).map(|n| encoded(&raw_flow(&host, n))).collect(),
            one_bad(),
            |i| i.to_string().into_bytes(),
        );
        let mut enriched = interleave(
            (0..6)
                .map(|n| encoded(&EnrichedFlow::from_raw(raw_flow(&direct, 1_000 + n))))
                .collect(),
            one_bad(),
            |i| i.to_string().into_bytes(),
        );
        let p = producer(&brokers);
        for (plan, topic) in [
            (&mut interfaces, &names.interfaces),
            (&mut raw, &names.raw),
            (&mut enriched, &names.enriched),
        ] {
            plan.produce(&p, topic, 0..plan.records.len()).await;
        }
        let expected = sources(&names, &interfaces, &raw, &enriched);

        let stages = Stages::start(
            &names,
            &brokers,
            &clickhouse.url(),
            &format!("when_unavailable = \"{policy}\"\nretry_max_ms = 500"),
            "create_topics = false",
            "\"allow.auto.create.topics\" = \"false\"\n\"topic.metadata.propagation.max.ms\" = \"1000\"",
            3_000,
        );
        Self {
            tansu,
            clickhouse,
            names,
            stages,
            raw,
            enriched,
            expected,
        }
    }

    fn brokers(&self) -> String {
        self.tansu.broker()
    }

    /// Every good record is in ClickHouse, once.
    fn wait_good_rows(&self) {
        let (host, direct) = (
            self.names.host.clone(),
            format!("{}-direct", self.names.host),
        );
        let want: BTreeMap<i64, u64> = (0..6).map(|n| (n, 1)).collect();
        let want_direct: BTreeMap<i64, u64> = (0..6).map(|n| (1_000 + n, 1)).collect();
        wait_for(
            "every good record in ClickHouse",
            WAIT,
            || {
                ports(&self.clickhouse, &host) == want
                    && ports(&self.clickhouse, &direct) == want_direct
            },
            || {
                format!(
                    "{}\nrows: {:?} / {:?}",
                    self.stages.logs(),
                    ports(&self.clickhouse, &host),
                    ports(&self.clickhouse, &direct)
                )
            },
        );
    }

    /// `/readyz` of both stages: 503 naming the dead-letter topic, or 200.
    fn wait_ready(&self, ready: bool) {
        wait_for(
            if ready {
                "both stages ready"
            } else {
                "both stages not ready"
            },
            WAIT,
            || {
                [self.names.enricher_metrics, self.names.sink_metrics]
                    .iter()
                    .all(|&port| {
                        let (status, text) = http(port, "GET", "/readyz", "");
                        if ready {
                            status == 200
                        } else {
                            status == 503
                                && text.contains(&format!(
                                    "dead_letter: dead-letter topic {} unavailable",
                                    self.names.dead_letter
                                ))
                        }
                    })
            },
            || self.stages.logs(),
        );
    }

    /// The log at `log` holds `line`.
    fn assert_logged_by(&self, log: &Path, line: &str) {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        assert!(
            text.contains(line),
            "{} lacks {line:?}\n{}",
            log.display(),
            self.stages.logs()
        );
    }

    /// Both logs hold `line`.
    fn assert_logged(&self, line: &str) {
        for log in [&self.stages.enricher_log, &self.stages.sink_log] {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            assert!(
                text.contains(line),
                "{} lacks {line:?}\n{}",
                log.display(),
                self.stages.logs()
            );
        }
    }

    /// The dead-letter metric `name` of each stage.
    fn metrics(&self, name: &str) -> (f64, f64) {
        (
            metric(
                self.names.enricher_metrics,
                &format!("{name}{{stage=\"enricher\"}}"),
            ),
            metric(
                self.names.sink_metrics,
                &format!("{name}{{stage=\"sink\"}}"),
            ),
        )
    }

    async fn create_dead_letter_topic(&self) {
        self.names
            .kafka(&self.brokers())
            .ensure_topics(&[(self.names.dead_letter.as_str(), false)])
            .await
            .unwrap();
    }

    async fn dead_letters(&self, at_least: usize, timeout: Duration) -> Vec<OwnedMessage> {
        dead_letters(&self.brokers(), &self.names, at_least, timeout).await
    }

    /// Both groups committed everything.
    async fn wait_all_committed(&self) {
        let enriched_end = read_ends(
            &self.brokers(),
            &self.names.enriched,
            self.enriched.records.len() + 6,
        )
        .await;
        wait_committed(
            &self.brokers(),
            &self.names,
            &ends_of(&self.raw),
            &enriched_end,
        )
        .await;
    }
}

/// `when_unavailable = "stop"` (the default): neither stage commits past its bad record while
/// the dead-letter topic is missing; both say so (log line, metric, `/readyz`), stay up and
/// resume by themselves once the topic exists: then every bad record is in it once and every
/// good one in ClickHouse once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_dead_letter_topic_stops_without_committing() {
    let mut run = Unavailable::start("stop").await;
    run.wait_ready(false);
    run.assert_logged(
        "dead-letter topic unavailable; not committing past this record, retrying (dead_letter.when_unavailable = stop)",
    );
    let (enricher, sink) = run.metrics("flowlens_dead_letter_unavailable_total");
    assert!(
        enricher >= 1.0 && sink >= 1.0,
        "unavailable_total {enricher} / {sink}"
    );

    // A few auto-commit intervals later, neither group has committed past its bad record.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let brokers = run.brokers();
    // The interfaces reader never caught up (held at its bad record): the enricher went on
    // after interfaces_ready_timeout_ms, so the good raw records before its own bad one are
    // enriched already.
    let (b, topic, host) = (
        brokers.clone(),
        run.names.enriched.clone(),
        run.names.host.clone(),
    );
    let enriched_by_stage = tokio::task::spawn_blocking(move || {
        read_topic(&b, &topic, 1, Duration::from_secs(10))
            .iter()
            .filter_map(|m| flowlens_schemas::decode::<EnrichedFlow>(m.payload()?).ok())
            .filter(|f| f.host == host)
            .count()
    })
    .await
    .unwrap();
    assert!(
        enriched_by_stage > 0,
        "nothing enriched while the interfaces reader waits\n{}",
        run.stages.logs()
    );
    run.assert_logged_by(
        &run.stages.enricher_log,
        "interface cache not caught up in time; enriching anyway",
    );
    // dead_letter.retry_max_ms = 500: the waits double from 100 ms up to 500 ms, no further.
    for log in [&run.stages.enricher_log, &run.stages.sink_log] {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        // Without terminal colours (ESC [ ... m).
        let mut plain = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                chars.by_ref().find(|&c| c == 'm');
            } else {
                plain.push(c);
            }
        }
        let waits: BTreeSet<u64> = plain
            .lines()
            .filter(|l| l.contains("dead_letter.when_unavailable = stop"))
            .filter_map(|l| {
                l.split("retry_in_ms=")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse()
                    .ok()
            })
            .collect();
        assert_eq!(
            waits.iter().max(),
            Some(&500),
            "{}: waits {waits:?}",
            log.display()
        );
    }
    for (group, topic) in [
        (&run.names.enricher_group, &run.names.raw),
        (&run.names.sink_group, &run.names.enriched),
    ] {
        let (source, _) = run
            .expected
            .iter()
            .find(|(s, _)| s.starts_with(&format!("{topic}/")))
            .unwrap();
        let mut parts = source.rsplitn(3, '/');
        let offset: i64 = parts.next().unwrap().parse().unwrap();
        let partition: usize = parts.next().unwrap().parse().unwrap();
        let (b, g, t) = (brokers.clone(), group.clone(), topic.clone());
        let done = tokio::task::spawn_blocking(move || committed(&b, &g, &t))
            .await
            .unwrap();
        assert!(
            done[partition].is_none_or(|c| c <= offset),
            "{group} committed {done:?} past its bad record {source}"
        );
    }
    run.stages.assert_up();

    run.create_dead_letter_topic().await;
    let dead = run.dead_letters(run.expected.len(), WAIT).await;
    check_dead_letters(&dead, &run.expected);
    run.wait_good_rows();
    run.wait_ready(true);
    run.wait_all_committed().await;
    assert_eq!(
        run.metrics("flowlens_dead_letter_skipped_total"),
        (0.0, 0.0),
        "nothing skipped"
    );
    run.stages.assert_up();
    run.stages.stop();
}

/// `when_unavailable = "skip"`: the bad records are counted as lost and both stages go on:
/// every good record in ClickHouse once, everything committed, `/readyz` false, a log line; the
/// dead-letter topic, created afterwards, holds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_dead_letter_topic_skips_when_told() {
    let mut run = Unavailable::start("skip").await;
    run.wait_good_rows();
    run.wait_all_committed().await;
    run.wait_ready(false);
    run.assert_logged(
        "dead-letter topic unavailable; record skipped and lost (dead_letter.when_unavailable = skip)",
    );
    // The enricher skipped a raw and an interface record, the sink an enriched one.
    assert_eq!(
        run.metrics("flowlens_dead_letter_skipped_total"),
        (2.0, 1.0)
    );
    run.stages.assert_up();

    run.create_dead_letter_topic().await;
    let dead = run.dead_letters(1, Duration::from_secs(5)).await;
    assert!(
        dead.is_empty(),
        "{} records in the dead-letter topic",
        dead.len()
    );
    run.stages.stop();
}

/// A bad `[dead_letter]` value stops either binary at start (status 2) naming the key.
#[test]
fn bad_dead_letter_settings_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let enricher = stage_binary("flowlens-enricher", "flowlens-enricher");
    for (bin, text, key) in [
        (
            Path::new(env!("CARGO_BIN_EXE_flowlens-sink")),
            "[dead_letter]\nwhen_unavailable = \"maybe\"\n",
            "dead_letter.when_unavailable",
        ),
        (
            enricher.as_path(),
            "[dead_letter]\nwhen_unavailable = \"maybe\"\n",
            "dead_letter.when_unavailable",
        ),
        (
            Path::new(env!("CARGO_BIN_EXE_flowlens-sink")),
            "[dead_letter]\nretry_max_ms = 5\n",
            "dead_letter.retry_max_ms",
        ),
        (
            enricher.as_path(),
            "[dead_letter]\nretry_max_ms = 5\n",
            "dead_letter.retry_max_ms",
        ),
    ] {
        let config = dir.path().join("bad.toml");
        std::fs::write(&config, text).unwrap();
        let out = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", bin.display());
        assert!(stderr.contains(key), "{}: {stderr}", bin.display());
    }
}
