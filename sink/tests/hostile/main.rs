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
    committed, free_port, header, http, http_get, read_topic, stage_binary, unique, Chdb,
    ChildGuard, Tansu,
};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

mod broker;
mod records;
mod stages;
use broker::*;
use records::*;
use stages::*;

/// Waits of this test for the stages: readiness waits, not timings.
const WAIT: Duration = Duration::from_secs(240);

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
                        // Nothing listening yet (the stage is still starting): not ready.
                        let Some((status, text)) = http_get(port, "/readyz") else {
                            return false;
                        };
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
    // clickhouse.validation on (the default): the columns checked, the batches go as Native.
    let sink_log = std::fs::read_to_string(&run.stages.sink_log).unwrap();
    let chosen = sink_log
        .lines()
        .find(|l| l.contains("insert format chosen"));
    assert!(
        chosen.is_some_and(|l| l.contains("Native")),
        "{chosen:?}\n{sink_log}"
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
