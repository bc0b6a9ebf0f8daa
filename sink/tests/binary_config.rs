//! Configuration keys through the real `flowlens-sink` binary (its own start-up path: file,
//! environment, validation, files it names), against the ClickHouse 26.9 engine behind the
//! chdb front. The oracle is ClickHouse itself: what the tables say after the binary ran, or
//! whether it let the binary in.

mod common;

use std::path::Path;

use common::{run as sink, text};
use flowlens_runtime::testkit::{require, Chdb, TANSU, VENV_PYTHON};

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
            "flows_port_1m"
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
