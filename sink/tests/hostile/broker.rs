//! Producing to the broker, and reading back offsets, commits, rows and dead letters.

use super::*;

/// A record to produce: (partition, key, value).
pub(crate) type Outgoing = (i32, Option<Vec<u8>>, Option<Vec<u8>>);

/// A producer like any client's, allowed records up to 200 MB (tansu takes them).
pub(crate) fn producer(brokers: &str) -> FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.max.bytes", "200000000")
        .set("compression.type", "none")
        .set("message.timeout.ms", "120000")
        .create()
        .unwrap()
}

/// Produces `records` in order, each acknowledged before the next; returns their offsets.
pub(crate) async fn produce(p: &FutureProducer, topic: &str, records: &[Outgoing]) -> Vec<i64> {
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

/// The good rows of `host` in ClickHouse: (src_port, if_name) -> copies.
pub(crate) fn rows(clickhouse: &Chdb, host: &str) -> BTreeMap<(i64, String), u64> {
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
pub(crate) type Expected = BTreeMap<String, (Bad, &'static str)>;

/// The bad records of the three topics' plans, by where the broker put them.
pub(crate) fn sources(names: &Names, interfaces: &Plan, raw: &Plan, enriched: &Plan) -> Expected {
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
pub(crate) fn ends_of(plan: &Plan) -> Vec<Option<i64>> {
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
pub(crate) async fn dead_letters(
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
pub(crate) async fn read_ends(brokers: &str, topic: &str, at_least: usize) -> Vec<Option<i64>> {
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
pub(crate) async fn wait_committed(
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
pub(crate) fn check_dead_letters(dead: &[OwnedMessage], expected: &Expected) {
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
