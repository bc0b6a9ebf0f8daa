//! `clickhouse.cluster`: the migrations rewritten for a cluster parse with the ClickHouse 26.9
//! engine (chdb has no cluster, so `formatQuery` checks the syntax and nothing more); the real
//! binary refuses a cluster name that is not an identifier and sends its DDL `ON CLUSTER`.
//!
//! Needs /opt/flowlens-venv (chdb); `FLOWLENS_SKIP_CHDB=1` skips.

mod common;

use common::{run as sink, text};
use flowlens_sink::cluster::{replicated_tables, Cluster};
use flowlens_sink::migrate::{embedded, for_cluster, migrations_table_statement};
use flowlens_testkit::{require, Chdb, VENV_PYTHON};

/// Every statement the sink sends with `clickhouse.cluster` set: the database, the replicated
/// `schema_migrations`, every statement of every embedded migration, and the Distributed read
/// tables. Each must parse (`formatQuery`) and come back formatted with its `ON CLUSTER` and,
/// for CREATE TABLE, its Replicated* engine: ClickHouse read what the rewrite meant.
#[test]
fn rewritten_migrations_parse_with_clickhouse_26_9() {
    if require(VENV_PYTHON, "CHDB") {
        return;
    }
    let chdb = Chdb::start();
    let cluster = Cluster::new("flows_cluster", "flowlens");
    let migrations = embedded().unwrap();
    let mut statements = vec![
        cluster
            .rewrite("CREATE DATABASE IF NOT EXISTS `flowlens`")
            .unwrap(),
        cluster.rewrite(&migrations_table_statement()).unwrap(),
    ];
    for m in for_cluster(&migrations, &cluster).unwrap() {
        statements.extend(m.statements);
    }
    let tables = replicated_tables(
        migrations
            .iter()
            .flat_map(|m| m.statements.iter().map(String::as_str)),
    );
    for (_, read) in cluster.read_tables(&tables, "flows") {
        statements.extend(read);
    }
    let client = clickhouse::Client::default().with_url(chdb.url());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut replicated = 0;
    for s in &statements {
        let formatted: String = rt
            .block_on(
                client
                    .query("SELECT formatQuery(?)")
                    .bind(s.as_str())
                    .fetch_one(),
            )
            .unwrap_or_else(|e| panic!("{s}: {e}"));
        assert!(
            formatted.contains("ON CLUSTER flows_cluster"),
            "{s}\n=> {formatted}"
        );
        if formatted.contains("ENGINE = Replicated") {
            replicated += 1;
            assert!(
                formatted.contains("MergeTree('/clickhouse/tables/{shard}/flowlens/"),
                "{formatted}"
            );
        }
    }
    // schema_migrations, flows and the eight rollups.
    assert_eq!(replicated, 10);
    assert_eq!(
        statements
            .iter()
            .filter(|s| s.contains("ENGINE = Distributed('flows_cluster', 'flowlens', "))
            .count(),
        9
    );
}

/// Through the binary: `FLOWLENS_SINK__CLICKHOUSE__CLUSTER` that is not an identifier stops
/// `flowlens-sink migrate` at start (exit 2) naming the key; a valid one makes the first DDL
/// go out `ON CLUSTER` (the front's request log), which a server without that cluster refuses
/// (exit 1, ClickHouse's error in the output).
#[test]
fn the_binary_validates_the_cluster_and_migrates_on_it() {
    if require(VENV_PYTHON, "CHDB") {
        return;
    }
    let chdb = Chdb::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sink.toml");
    std::fs::write(
        &config,
        format!(
            "[clickhouse]\nurl = \"{}\"\ndatabase = \"flowlens_cl\"\n",
            chdb.url()
        ),
    )
    .unwrap();
    for bad in ["two words", "a-b", "x;DROP"] {
        let out = sink(
            &config,
            &["migrate"],
            &[("FLOWLENS_SINK__CLICKHOUSE__CLUSTER", bad)],
        );
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out));
        assert!(text(&out).contains("clickhouse.cluster"), "{}", text(&out));
    }
    assert!(!chdb.log().contains("flowlens_cl"), "{}", chdb.log());

    let out = sink(
        &config,
        &["migrate"],
        &[("FLOWLENS_SINK__CLICKHOUSE__CLUSTER", "flows_cluster")],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("creating database `flowlens_cl`"),
        "{}",
        text(&out)
    );
    assert!(
        chdb.log()
            .contains("CREATE DATABASE IF NOT EXISTS `flowlens_cl` ON CLUSTER flows_cluster"),
        "{}",
        chdb.log()
    );
}
