//! Configuration keys through the real `flowlens-sink` binary (its own start-up path: file,
//! environment, validation, files it names), against the ClickHouse 26.9 engine behind the
//! chdb front. The oracle is ClickHouse itself: what the tables say after the binary ran, or
//! whether it let the binary in.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{run as sink, text};
use flowlens_testkit::{require, Chdb, TANSU, VENV_PYTHON};

fn skip() -> bool {
    require(VENV_PYTHON, "CHDB") || require(TANSU, "CHDB")
}

/// `flowlens-sink migrate` with the password in `clickhouse.password_file` against a front that
/// requires it: the migrations land in `clickhouse.database` and every table gets the
/// `[retention]` TTL of the file (read back from `system.tables`). A file with the wrong
/// password is refused by ClickHouse, and the password shows up nowhere.
#[test]
fn migrate_uses_the_password_file_and_applies_retention() {
    if skip() {
        return;
    }
    const SECRET: &str = "file-Pa55-quux";
    let chdb = Chdb::start_with_auth("flowlens_sink", SECRET);
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("password");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let config = dir.path().join("sink.toml");
    let write_config = |password_file: &Path| {
        std::fs::write(
            &config,
            format!(
                "[clickhouse]\nurl = \"{}\"\ndatabase = \"flowlens_cfg\"\nuser = \"flowlens_sink\"\n\
                 password_file = \"{}\"\n[retention]\nraw_days = 7\nminute_days = 14\nhour_days = 60\n",
                chdb.url(),
                password_file.display()
            ),
        )
        .unwrap();
    };
    write_config(&secret);
    let out = sink(&config, &["migrate"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains(SECRET), "{}", text(&out));

    let rt = tokio::runtime::Runtime::new().unwrap();
    let tables: Vec<(String, String)> = rt.block_on(async {
        clickhouse::Client::default()
            .with_url(chdb.url())
            .with_user("flowlens_sink")
            .with_password(SECRET)
            .query(
                "SELECT name, engine_full FROM system.tables WHERE database = 'flowlens_cfg' \
                 AND name LIKE 'flows%' AND engine LIKE '%MergeTree' ORDER BY name",
            )
            .fetch_all()
            .await
            .unwrap()
    });
    let names: Vec<&str> = tables.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "flows",
            "flows_iface_1h",
            "flows_iface_1m",
            "flows_k8s_1h",
            "flows_k8s_1m",
            "flows_port_1h",
            "flows_port_1m",
            "flows_topology_1h",
            "flows_topology_1m"
        ]
    );
    for (name, engine) in &tables {
        let days = match name.as_str() {
            "flows" => 7,
            n if n.ends_with("_1m") => 14,
            _ => 60,
        };
        assert!(
            engine.contains(&format!("toIntervalDay({days})")),
            "{name}: {engine}"
        );
    }

    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-Pa55\n").unwrap();
    write_config(&wrong);
    let out = sink(&config, &["migrate"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("AUTHENTICATION_FAILED"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("not-the-Pa55"), "{}", text(&out));

    // A password file that cannot be read is a configuration error naming the key.
    write_config(&dir.path().join("missing"));
    let out = sink(&config, &["migrate"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("clickhouse.password_file"),
        "{}",
        text(&out)
    );
}

/// The front's request log from byte `from` on (one line per request, with the query's head).
fn front_log_since(chdb: &Chdb, from: usize) -> String {
    chdb.log().get(from..).unwrap_or_default().to_string()
}

/// Keys whose effect shows outside the sink, through the binary: the rows go to
/// `clickhouse.table` of `clickhouse.database` (not `flows`); `clickhouse.validation = false`
/// sends no column check (the front's request log has no `system.columns` query) and the
/// batches go as RowBinary;
/// `sink.migrate_on_start = false` creates nothing and reads `schema_migrations`;
/// `batch.max_bytes` cuts the batches (many INSERTs for one partition's records although
/// `max_rows` and `max_age_ms` never trigger); `kafka.create_topics` + `kafka.partitions` make
/// the dead-letter topic with that many partitions (the broker's metadata);
/// `telemetry.log_format = "json"` makes every line JSON and `telemetry.log_level` lets the
/// sink's debug lines through; `sink.group_id` is the group that committed every record (the
/// broker's committed offsets). On the wire (a relay in front of the broker keeps every
/// request): `kafka.client_id` names the sink's clients (group membership, commits),
/// `kafka.replication_factor` is what the CreateTopics request asks for, and
/// `kafka.properties` reach librdkafka (`client.software.name` in its ApiVersions requests).
/// Then `batch.max_idle_age_ms` + `small_batch_rows`: a trickle (one record every 100 ms for
/// 6 s) with `max_age_ms = 200` becomes a handful of INSERTs, not one per 200 ms. Last,
/// `clickhouse.timeout_ms` + `sink.retry_initial_ms` / `retry_max_ms` against a ClickHouse
/// that stops answering (a relay that holds every request): each read-back query and each
/// INSERT waits `timeout_ms`
/// before the sink gives up on it (the relay sees the connection closed), the next comes
/// after the backoff (doubling, capped), and nothing is lost once ClickHouse answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_table_schema_and_log_keys_take_effect() {
    use flowlens_runtime::kafka::KafkaConfig;
    use flowlens_testkit::{committed, topic_partitions, unique, Relay, Tansu};
    if skip() {
        return;
    }
    let chdb = Chdb::start();
    let (tansu, wire) = Tansu::start_behind_relay();
    let dir = tempfile::tempdir().unwrap();
    let migrate = dir.path().join("migrate.toml");
    std::fs::write(
        &migrate,
        format!(
            "[clickhouse]\nurl = \"{}\"\ndatabase = \"keys_db\"\n",
            chdb.url()
        ),
    )
    .unwrap();
    let out = sink(&migrate, &["migrate"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let ch = clickhouse::Client::default()
        .with_url(chdb.url())
        .with_database("keys_db");
    ch.query("CREATE TABLE flows_copy AS flows")
        .execute()
        .await
        .unwrap();

    let topic = unique("keys");
    let kafka = KafkaConfig {
        brokers: vec![tansu.broker()],
        partitions: 1,
        ..Default::default()
    };
    kafka.ensure_topics(&[(&topic, false)]).await.unwrap();
    const N: u32 = 300;
    common::produce(&kafka, &topic, 1, 0, N).await;
    let config = dir.path().join("sink.toml");
    let write_to = |url: &str, clickhouse: &str, batch: &str, sink: &str, topic: &str| {
        std::fs::write(
            &config,
            format!(
                "[clickhouse]\nurl = \"{url}\"\ndatabase = \"keys_db\"\ntable = \"flows_copy\"\n\
                 validation = false\n{clickhouse}\n[batch]\n{batch}\n\
                 [sink]\ngroup_id = \"{topic}-g\"\nmigrate_on_start = false\n{sink}\n\
                 [kafka]\nbrokers = [\"{}\"]\nclient_id = \"keys-sink\"\npartitions = 3\n\
                 replication_factor = 3\n\
                 [kafka.properties]\n\"client.software.name\" = \"keys-props\"\n\
                 [kafka.topics]\nenriched_flows = \"{topic}\"\ndead_letter = \"{topic}.dlq\"\n\
                 [telemetry]\nlog_format = \"json\"\nlog_level = \"warn,flowlens_sink=debug\"\n",
                wire.address()
            ),
        )
        .unwrap()
    };
    let write =
        |batch: &str, topic: &str| write_to(&chdb.url(), "timeout_ms = 20000", batch, "", topic);
    write(
        "max_rows = 1000000\nmax_bytes = 4096\nmax_age_ms = 60000\nmax_idle_age_ms = 60000",
        &topic,
    );
    let mark = chdb.log().len();
    let log = dir.path().join("sink.log");
    let mut run = common::spawn(&config, &[], &log);
    // Full batches go as they fill; the last, partial one when the sink stops (SIGTERM
    // flushes), as max_age_ms is a minute.
    let start = std::time::Instant::now();
    while common::rows_and_ids(&ch, "flows_copy").await.1 + 20 < u64::from(N) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "batches never went"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every record has been read by then (they were all there before the start).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(run.stop_with(libc::SIGTERM, Duration::from_secs(20)));
    common::wait_exactly_once(&ch, "flows_copy", u64::from(N), Duration::from_secs(10)).await;
    assert_eq!(common::rows_and_ids(&ch, "flows").await, (0, 0));
    let requests = front_log_since(&chdb, mark);
    let inserts = requests.matches("INSERT INTO `flows_copy`").count();
    // ~280 bytes of RowBinary a row: a 4 KiB batch holds about 14.
    assert!(inserts >= 10, "{inserts} INSERTs:\n{requests}");
    // validation = false: no column type check (the recovery's own lookup of one column stays).
    assert!(
        !requests.contains("SELECT name, type FROM system.columns"),
        "{requests}"
    );
    assert!(!requests.contains("CREATE"), "{requests}");
    assert!(requests.contains("schema_migrations"), "{requests}");
    let logged = std::fs::read_to_string(&log).unwrap();
    let (mut debug, mut batches) = (0, 0);
    for line in logged.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let ours = v["target"]
            .as_str()
            .unwrap_or("")
            .starts_with("flowlens_sink");
        if v["level"] == "DEBUG" && ours {
            debug += 1;
        }
        // validation = false: the table's types are unknown, the batches go as RowBinary.
        if v["message"] == "batch inserted" {
            assert_eq!(v["format"], "RowBinary", "{line}");
            batches += 1;
        }
        // warn for everything else: no info line from librdkafka or the runtime.
        assert!(ours || v["level"] != "INFO", "{line}");
    }
    assert!(debug > 0, "no debug line:\n{logged}");
    assert!(batches >= 10, "{batches} batches logged:\n{logged}");
    let (brokers, dlq) = (tansu.broker(), format!("{topic}.dlq"));
    let partitions = tokio::task::spawn_blocking(move || topic_partitions(&brokers, &dlq))
        .await
        .unwrap();
    assert_eq!(
        partitions, 3,
        "dead-letter topic created with kafka.partitions"
    );
    let (brokers, group, t) = (tansu.broker(), format!("{topic}-g"), topic.clone());
    let done = tokio::task::spawn_blocking(move || committed(&brokers, &group, &t))
        .await
        .unwrap();
    assert_eq!(
        done,
        [Some(i64::from(N))],
        "sink.group_id's committed offsets"
    );
    let requests = wire.kafka_requests();
    let sink_apis: std::collections::BTreeSet<i16> = requests
        .iter()
        .filter(|r| r.client_id.as_deref() == Some("keys-sink"))
        .map(|r| r.api_key)
        .collect();
    // 18 ApiVersions, 3 Metadata, 11 JoinGroup, 8 OffsetCommit.
    for api in [18, 3, 11, 8] {
        assert!(
            sink_apis.contains(&api),
            "no request {api} as keys-sink: {sink_apis:?}"
        );
    }
    assert!(
        requests
            .iter()
            .filter(|r| r.api_key == 18 && r.client_id.as_deref() == Some("keys-sink"))
            .all(|r| r.rest.windows(10).any(|w| w == b"keys-props")),
        "an ApiVersions request without kafka.properties' client.software.name"
    );
    let created = wire.created_topics();
    assert!(
        created.contains(&(format!("{topic}.dlq"), 3, 3)),
        "CreateTopics without kafka.partitions / replication_factor: {created:?}"
    );

    // The trickle.
    let trickle = unique("trickle");
    kafka.ensure_topics(&[(&trickle, false)]).await.unwrap();
    write(
        "max_age_ms = 200\nmax_idle_age_ms = 4000\nsmall_batch_rows = 1000",
        &trickle,
    );
    let mark = chdb.log().len();
    let mut run = common::spawn(&config, &[], &dir.path().join("trickle.log"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    for i in 0..60 {
        common::produce(&kafka, &trickle, 1, 10_000 + i, 10_001 + i).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    common::wait_exactly_once(
        &ch,
        "flows_copy",
        u64::from(N) + 60,
        Duration::from_secs(60),
    )
    .await;
    assert!(run.stop_with(libc::SIGTERM, Duration::from_secs(20)));
    let inserts = front_log_since(&chdb, mark)
        .matches("INSERT INTO `flows_copy`")
        .count();
    // Without the adaptation: about one INSERT per 200 ms, 30 or more.
    assert!(
        (1..=15).contains(&inserts),
        "{inserts} INSERTs for a 6 s trickle"
    );

    // ClickHouse stops answering once the sink has started: the partition's read-back
    // queries (before its first INSERT) are given up after timeout_ms and retried; then the
    // first record goes through, and every connection is held again for the INSERTs.
    let front = Relay::start(chdb.port);
    let stalls = unique("stalls");
    kafka.ensure_topics(&[(&stalls, false)]).await.unwrap();
    write_to(
        &front.url(),
        "timeout_ms = 300",
        "max_age_ms = 100\nmax_idle_age_ms = 100",
        "retry_initial_ms = 500\nretry_max_ms = 1000",
        &stalls,
    );
    let log = dir.path().join("stalls.log");
    let mut run = common::spawn(&config, &[], &log);
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&log).is_ok_and(|l| l.contains("sink started")) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the sink never started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    front.hold(true);
    common::produce(&kafka, &stalls, 1, 20_000, 20_001).await;
    // The partition is assigned, its record read and its batch sealed: then its read-back
    // queries meet the held ClickHouse, twice at least (a retry after the backoff).
    let read_back = || -> Vec<_> {
        front
            .connections()
            .into_iter()
            .filter(|c| {
                let sent = String::from_utf8_lossy(&c.sent);
                c.held && c.closed.is_some() && sent.contains("kafka_timestamp")
            })
            .collect()
    };
    while read_back().len() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "no read-back query was held and given up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    front.hold(false);
    let read_back = read_back();
    for c in &read_back {
        let waited = c.closed.expect("given up") - c.accepted;
        assert!(
            (Duration::from_millis(280)..Duration::from_millis(1_000)).contains(&waited),
            "a read-back query given up after {waited:?}"
        );
    }
    common::wait_exactly_once(
        &ch,
        "flows_copy",
        u64::from(N) + 61,
        Duration::from_secs(60),
    )
    .await;
    front.hold(true);
    common::produce(&kafka, &stalls, 1, 20_001, 20_004).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    front.hold(false);
    common::wait_exactly_once(
        &ch,
        "flows_copy",
        u64::from(N) + 64,
        Duration::from_secs(60),
    )
    .await;
    assert!(run.stop_with(libc::SIGTERM, Duration::from_secs(20)));
    let held: Vec<_> = front
        .connections()
        .into_iter()
        .filter(|c| c.held && String::from_utf8_lossy(&c.sent).contains("INSERT"))
        .collect();
    assert!(held.len() >= 4, "{} INSERT attempts in 5 s", held.len());
    eprintln!(
        "INSERTs held (ms after the first, ms until given up): {:?}",
        held.iter()
            .map(|c| (
                (c.accepted - held[0].accepted).as_millis(),
                c.closed.map(|t| (t - c.accepted).as_millis())
            ))
            .collect::<Vec<_>>()
    );
    // Each attempt is given up after timeout_ms (300 ms; the default waits 30 s).
    for c in &held[..4] {
        let waited = c.closed.expect("an INSERT never given up") - c.accepted;
        assert!(
            (Duration::from_millis(280)..Duration::from_millis(1_000)).contains(&waited),
            "an INSERT given up after {waited:?}"
        );
    }
    // Attempt to attempt: 300 ms + the backoff (500 ms, then 1000 ms: doubled and capped).
    let gaps: Vec<u128> = held
        .windows(2)
        .map(|w| (w[1].accepted - w[0].accepted).as_millis())
        .take(3)
        .collect();
    assert!(
        (780..1_150).contains(&gaps[0]) && gaps[1..].iter().all(|g| (1_280..1_700).contains(g)),
        "attempts {gaps:?} ms apart"
    );
}
