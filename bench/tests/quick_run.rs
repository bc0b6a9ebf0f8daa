//! `flowlens-bench run --quick` end to end against the real local services (tansu, chdb):
//! the report, its JSON and plots are written, and ClickHouse holds every record exactly once.
//! Checks counts and the report's shape only, never timings.

use flowlens_testkit::{require, Chdb, TANSU, VENV_PYTHON};

/// Losses judged by ClickHouse, not by the report: the run writes into a chdb front of this
/// test's own (`--clickhouse-url`), whose `flows` must then hold the records generated (the
/// report's `sent`) once each, their unique ids (`time_flow_start` = base + sequence, in ns)
/// forming one range without a gap.
#[test]
fn quick_run_writes_a_report_with_zero_losses() {
    if require(TANSU, "TANSU") || require(VENV_PYTHON, "CHDB") {
        return;
    }
    let chdb = Chdb::start();
    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_flowlens-bench"))
        .args(["run", "--quick", "--no-progress", "--name", "t", "--out"])
        .arg(out.path())
        .args(["--clickhouse-url", &chdb.url()])
        .status()
        .unwrap();
    assert!(
        status.success(),
        "flowlens-bench run --quick failed: {status}"
    );

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("t.json")).unwrap()).unwrap();
    let losses = &json["losses"];
    let sent = losses["sent"].as_u64().unwrap();
    assert!(sent >= 5_000, "{losses}");
    let (rows, ids, span): (u64, u64, i64) = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(
            clickhouse::Client::default()
                .with_url(chdb.url())
                .query(
                    "SELECT count(), uniqExact(time_flow_start), \
                     toUnixTimestamp64Nano(max(time_flow_start)) - \
                     toUnixTimestamp64Nano(min(time_flow_start)) FROM flows",
                )
                .fetch_one(),
        )
        .unwrap();
    assert_eq!(
        (rows, ids, span),
        (sent, sent, sent as i64 - 1),
        "ClickHouse: rows, distinct ids, id range vs {sent} records generated"
    );
    assert_eq!(losses["unique_ids"].as_u64(), Some(sent), "{losses}");
    assert_eq!(losses["rows"].as_u64(), Some(sent), "{losses}");
    assert_eq!(losses["missing"].as_u64(), Some(0), "{losses}");
    assert_eq!(losses["delivery_failures"].as_u64(), Some(0), "{losses}");
    for key in ["baseline", "saturation", "sustained"] {
        let costs = json[key]["costs"].as_array().unwrap();
        let names: Vec<&str> = costs.iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert!(
            names.contains(&"enricher") && names.contains(&"sink"),
            "{names:?}"
        );
    }
    assert!(json["ratio_to_broker"].as_f64().unwrap() > 0.0);
    assert!(!json["samples"].as_array().unwrap().is_empty());
    // The Kafka floors: the relay and the bare consumer each went through the baseline's
    // records (5,000 in a quick run), with CPU of their own.
    for floor in ["relay", "consume"] {
        let f = &json["floors"][floor];
        assert_eq!(f["records"].as_u64(), Some(5_000), "{floor}: {f}");
        assert!(f["cpu_s"].as_f64().unwrap() > 0.0, "{floor}: {f}");
    }

    let md = std::fs::read_to_string(out.path().join("t.md")).unwrap();
    assert!(md.contains("zero losses"), "{md}");
    for row in ["the enricher's Kafka floor", "the sink's Kafka floor"] {
        assert!(md.contains(row), "{row}: {md}");
    }
    assert!(
        md.contains("cargo run --release -p flowlens-bench -- run --quick"),
        "{md}"
    );
    for plot in ["throughput", "lag", "latency", "cpu"] {
        let png = std::fs::read(out.path().join(format!("t-{plot}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{plot}");
    }
}

/// The same smoke run against Debian's clickhouse-server 18.16 (`--clickhouse server18`): the
/// minimal table, the settings filter, the loss check and latency on 18.16's types.
#[test]
fn quick_run_on_clickhouse_18_has_zero_losses() {
    if require(TANSU, "TANSU") || require("/usr/sbin/clickhouse-server", "CLICKHOUSE18") {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_flowlens-bench"))
        .args([
            "run",
            "--quick",
            "--clickhouse",
            "server18",
            "--no-progress",
            "--out",
        ])
        .arg(out.path())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "flowlens-bench run --quick --clickhouse server18 failed: {status}"
    );
    // Default name for this engine.
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("quick-server18.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["engine"].as_str(), Some("server18"));
    let losses = &json["losses"];
    let sent = losses["sent"].as_u64().unwrap();
    assert!(sent >= 5_000, "{losses}");
    assert_eq!(losses["unique_ids"].as_u64(), Some(sent), "{losses}");
    assert_eq!(losses["rows"].as_u64(), Some(sent), "{losses}");
    let names: Vec<&str> = json["sustained"]["costs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"ClickHouse (server 18.16)") && names.contains(&"sink"),
        "{names:?}"
    );
    assert!(json["sustained"]["latency_ms_p50"].as_f64().unwrap() > 0.0);
}
