//! Schema migrations: the `sql/migrations/NNNN_name.sql` files embedded at build time, applied in
//! version order, each recorded in `schema_migrations` so that running again applies nothing;
//! then the `[retention]` TTLs.

use anyhow::Context;
use clickhouse::{Client, Row};
use flowlens_runtime::health;
use serde::Deserialize;

use crate::cluster::Cluster;
use crate::config::{ClickHouseConfig, RetentionConfig};

/// `(file name, contents)` of every `sql/migrations/*.sql`, sorted by file name (see build.rs).
pub const EMBEDDED: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// Readiness condition: the schema has every migration this sink needs (applied or checked).
pub const CONDITION: &str = "schema";

/// The table recording applied migrations.
pub const MIGRATIONS_TABLE: &str = "schema_migrations";

/// One migration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub version: u32,
    pub name: String,
    /// The file's statements, comments removed, without the trailing `;`.
    pub statements: Vec<String>,
}

impl Migration {
    /// Parses `NNNN_name.sql` and splits its statements.
    pub fn parse(file_name: &str, sql: &str) -> anyhow::Result<Self> {
        let stem = file_name
            .strip_suffix(".sql")
            .with_context(|| format!("migration `{file_name}`: name must end in .sql"))?;
        let (version, name) = stem
            .split_once('_')
            .with_context(|| format!("migration `{file_name}`: name must be NNNN_name.sql"))?;
        let version: u32 = version.parse().ok().filter(|v| *v > 0).with_context(|| {
            format!("migration `{file_name}`: `{version}` is not a version > 0")
        })?;
        let statements = split_statements(sql);
        anyhow::ensure!(
            !statements.is_empty(),
            "migration `{file_name}` has no statement"
        );
        Ok(Self {
            version,
            name: name.to_owned(),
            statements,
        })
    }
}

/// Parses `files`, sorted by version; duplicate versions are an error.
pub fn parse_all(files: &[(&str, &str)]) -> anyhow::Result<Vec<Migration>> {
    let mut all = files
        .iter()
        .map(|(name, sql)| Migration::parse(name, sql))
        .collect::<anyhow::Result<Vec<_>>>()?;
    all.sort_by_key(|m| m.version);
    if let Some(w) = all.windows(2).find(|w| w[0].version == w[1].version) {
        anyhow::bail!(
            "migrations `{}` and `{}` share version {}",
            w[0].name,
            w[1].name,
            w[0].version
        );
    }
    Ok(all)
}

/// `migrations` with every statement rewritten for `cluster` (an error names the migration and
/// statement that cannot run on a cluster).
pub fn for_cluster(migrations: &[Migration], cluster: &Cluster) -> anyhow::Result<Vec<Migration>> {
    migrations
        .iter()
        .map(|m| {
            let statements = m
                .statements
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    cluster.rewrite(s).with_context(|| {
                        format!("migration {:04}_{} statement {}", m.version, m.name, i + 1)
                    })
                })
                .collect::<anyhow::Result<_>>()?;
            Ok(Migration {
                statements,
                ..m.clone()
            })
        })
        .collect()
}

/// The embedded migrations, parsed and ordered.
pub fn embedded() -> anyhow::Result<Vec<Migration>> {
    parse_all(EMBEDDED)
}

/// Splits SQL text into statements on `;` outside quotes and comments; drops comments and empty
/// statements. Quotes: '...', "...", `...` with backslash escapes; comments: `-- ...`, `/* ... */`.
pub fn split_statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' | '`' => {
                cur.push(c);
                while let Some(d) = chars.next() {
                    cur.push(d);
                    if d == '\\' {
                        if let Some(e) = chars.next() {
                            cur.push(e);
                        }
                    } else if d == c {
                        break;
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                for d in chars.by_ref() {
                    if d == '\n' {
                        cur.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                for d in chars.by_ref() {
                    if prev == '*' && d == '/' {
                        break;
                    }
                    prev = d;
                }
                cur.push(' ');
            }
            ';' => {
                let s = cur.trim();
                if !s.is_empty() {
                    out.push(s.to_owned());
                }
                cur.clear();
            }
            _ => cur.push(c),
        }
    }
    let s = cur.trim();
    if !s.is_empty() {
        out.push(s.to_owned());
    }
    out
}

#[derive(Debug, Row, Deserialize)]
struct Applied {
    version: u32,
}

/// What `flowlens-sink migrate` does, and the sink at start with `sink.migrate_on_start`: the
/// missing migrations, then the `[retention]` TTLs.
pub async fn migrate(
    config: &ClickHouseConfig,
    retention: &RetentionConfig,
    migrations: &[Migration],
) -> anyhow::Result<()> {
    let condition = health::condition(CONDITION);
    let applied = apply(config, migrations)
        .await
        .inspect_err(|e| condition.set_failing(format!("migrating: {e:#}")))?;
    let altered = apply_retention(config, retention)
        .await
        .inspect_err(|e| condition.set_failing(format!("setting the retention: {e:#}")))?;
    condition.set_ok();
    tracing::info!(
        ?applied,
        available = migrations.len(),
        retention_set_on = ?altered,
        "schema migrated"
    );
    Ok(())
}

/// Creates the database if needed, then applies every migration of `migrations` not yet in
/// `schema_migrations`, in version order. Returns the versions applied now.
///
/// With `clickhouse.cluster`, every statement runs `ON CLUSTER` with Replicated* engines
/// (`cluster::Cluster::rewrite`, all rewritten before anything runs), `schema_migrations` is
/// replicated too, and the Distributed read tables are (re)created after a migration was
/// applied or when one is missing. An `ON CLUSTER` statement waits for every host of the
/// cluster, so the database and `schema_migrations` are only created when this server lacks
/// them: a start with nothing to migrate needs only this server.
pub async fn apply(
    config: &ClickHouseConfig,
    migrations: &[Migration],
) -> anyhow::Result<Vec<u32>> {
    let cluster = Cluster::of(config);
    let for_server = |statement: String| match &cluster {
        Some(c) => c.rewrite(&statement),
        None => Ok(statement),
    };
    let prepared = match &cluster {
        Some(c) => for_cluster(migrations, c)?,
        None => migrations.to_vec(),
    };
    // Statements are sent verbatim (query_raw: no `?` binding) and without row validation.
    let mut server = crate::insert::client(config)?.with_validation(false);
    let db = &config.database;
    // The database may not exist yet: create it through a client without a default database.
    let no_database = crate::insert::client(&ClickHouseConfig {
        database: String::new(),
        ..config.clone()
    })?
    .with_validation(false);
    let has_database = cluster.is_some() && has(&no_database, HAS_DATABASE, db, config).await?;
    if !has_database {
        no_database
            .query_raw(&for_server(format!(
                "CREATE DATABASE IF NOT EXISTS `{db}`"
            ))?)
            .execute()
            .await
            .with_context(|| format!("creating database `{db}` on {}", config.endpoint()))?;
    }
    server = server.with_database(db);

    let has_migrations_table =
        cluster.is_some() && has(&server, HAS_TABLE, MIGRATIONS_TABLE, config).await?;
    if !has_migrations_table {
        server
            .query_raw(&for_server(migrations_table_statement())?)
            .execute()
            .await
            .with_context(|| format!("creating `{MIGRATIONS_TABLE}` on {}", config.endpoint()))?;
    }
    let applied = applied_versions(&server).await?;
    let mut now_applied = Vec::new();
    for m in &prepared {
        if applied.contains(&m.version) {
            tracing::debug!(version = m.version, name = %m.name, "migration already applied");
            continue;
        }
        tracing::info!(version = m.version, name = %m.name, "applying migration");
        for (i, statement) in m.statements.iter().enumerate() {
            server
                .query_raw(statement)
                .execute()
                .await
                .with_context(|| {
                    format!(
                        "migration {:04}_{} statement {} failed",
                        m.version,
                        m.name,
                        i + 1
                    )
                })?;
        }
        server
            .query(&format!(
                "INSERT INTO {MIGRATIONS_TABLE} (version, name, applied_at) VALUES (?, ?, now())"
            ))
            .bind(m.version)
            .bind(m.name.as_str())
            .execute()
            .await
            .with_context(|| format!("recording migration {}", m.version))?;
        now_applied.push(m.version);
    }
    if let Some(c) = &cluster {
        let tables = crate::cluster::replicated_tables(
            migrations
                .iter()
                .flat_map(|m| m.statements.iter().map(String::as_str)),
        );
        for (name, statements) in c.read_tables(&tables, &config.table) {
            if !now_applied.is_empty() || !has(&server, HAS_TABLE, &name, config).await? {
                tracing::info!(table = %name, cluster = %c.name, "creating the distributed read table");
                for sql in &statements {
                    server
                        .query_raw(sql)
                        .execute()
                        .await
                        .with_context(|| format!("creating `{name}` on cluster `{}`", c.name))?;
                }
            }
        }
    }
    Ok(now_applied)
}

/// The statement creating `schema_migrations` (on one server).
pub fn migrations_table_statement() -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} \
         (version UInt32, name String, applied_at DateTime) \
         ENGINE = MergeTree ORDER BY version"
    )
}

/// [`has`]: a database of the server.
const HAS_DATABASE: &str = "SELECT count() FROM system.databases WHERE name = ?";
/// [`has`]: a table or view of the current database.
const HAS_TABLE: &str =
    "SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = ?";

/// Whether the server of `config` has `name`, looked up with `lookup` ([`HAS_DATABASE`] or
/// [`HAS_TABLE`]).
async fn has(
    server: &Client,
    lookup: &str,
    name: &str,
    config: &ClickHouseConfig,
) -> anyhow::Result<bool> {
    let n: u64 = server
        .query(lookup)
        .bind(name)
        .fetch_one()
        .await
        .with_context(|| format!("looking for `{name}` on {}", config.endpoint()))?;
    Ok(n > 0)
}

/// Without migrating: checks that every migration of `migrations` is recorded in
/// `schema_migrations`. `Err`: ClickHouse could not be asked; `Ok(Err(message))`: the schema is
/// older than this sink (the message says what to run). A schema newer than the sink is
/// accepted with a warning (migrations only add).
pub async fn check(
    config: &ClickHouseConfig,
    migrations: &[Migration],
) -> anyhow::Result<Result<(), String>> {
    let condition = health::condition(CONDITION);
    let result = check_versions(config, migrations).await;
    match &result {
        Ok(Ok(())) => condition.set_ok(),
        Ok(Err(too_old)) => condition.set_failing(too_old.clone()),
        Err(e) => condition.set_failing(format!("checking: {e:#}")),
    }
    result
}

async fn check_versions(
    config: &ClickHouseConfig,
    migrations: &[Migration],
) -> anyhow::Result<Result<(), String>> {
    let server = crate::insert::client(config)?.with_validation(false);
    let applied = if has(&server, HAS_TABLE, MIGRATIONS_TABLE, config)
        .await
        .context("checking the schema")?
    {
        applied_versions(&server).await?
    } else {
        Vec::new()
    };
    let missing: Vec<String> = migrations
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .map(|m| format!("{:04}_{}", m.version, m.name))
        .collect();
    if !missing.is_empty() {
        return Ok(Err(format!(
            "ClickHouse schema in database `{}` is older than this sink: missing migrations {} \
             (applied: {:?}). Run `flowlens-sink migrate` with a user allowed to create and alter \
             tables, or set sink.migrate_on_start = true",
            config.database,
            missing.join(", "),
            applied
        )));
    }
    let known: Vec<u32> = migrations.iter().map(|m| m.version).collect();
    let newer: Vec<u32> = applied.into_iter().filter(|v| !known.contains(v)).collect();
    if !newer.is_empty() {
        tracing::warn!(
            ?newer,
            "schema has migrations newer than this sink; continuing"
        );
    }
    Ok(Ok(()))
}

/// The TTL expression of each table for `retention`.
pub fn retention_ttls(retention: &RetentionConfig) -> Vec<(&'static str, String)> {
    let mut out = vec![(
        "flows",
        format!(
            "toDateTime(time_flow_end) + toIntervalDay({})",
            retention.raw_days
        ),
    )];
    for (tables, days) in [
        (
            [
                "flows_iface_1m",
                "flows_k8s_1m",
                "flows_port_1m",
                "flows_topology_1m",
            ],
            retention.minute_days,
        ),
        (
            [
                "flows_iface_1h",
                "flows_k8s_1h",
                "flows_port_1h",
                "flows_topology_1h",
            ],
            retention.hour_days,
        ),
    ] {
        for t in tables {
            out.push((t, format!("time + toIntervalDay({days})")));
        }
    }
    out
}

/// Sets the TTL of `flows` and the rollups to `retention` where it differs (tables that do
/// not exist are skipped). Returns the tables altered.
pub async fn apply_retention(
    config: &ClickHouseConfig,
    retention: &RetentionConfig,
) -> anyhow::Result<Vec<&'static str>> {
    #[derive(Row, Deserialize)]
    struct Table {
        name: String,
        engine_full: String,
    }
    let server = crate::insert::client(config)?.with_validation(false);
    let tables: Vec<Table> = server
        .query("SELECT name, engine_full FROM system.tables WHERE database = currentDatabase()")
        .fetch_all()
        .await
        .with_context(|| format!("reading table definitions on {}", config.endpoint()))?;
    let mut altered = Vec::new();
    for (table, ttl) in retention_ttls(retention) {
        let Some(t) = tables.iter().find(|t| t.name == table) else {
            continue;
        };
        if t.engine_full.contains(&format!("TTL {ttl} "))
            || t.engine_full.ends_with(&format!("TTL {ttl}"))
        {
            continue;
        }
        tracing::info!(table, %ttl, "applying retention");
        let alter = format!("ALTER TABLE `{table}` MODIFY TTL {ttl}");
        let alter = match Cluster::of(config) {
            Some(c) => c.rewrite(&alter)?,
            None => alter,
        };
        server
            .query_raw(&alter)
            .execute()
            .await
            .with_context(|| format!("setting the TTL of `{table}`"))?;
        altered.push(table);
    }
    Ok(altered)
}

/// Versions recorded in `schema_migrations`.
pub async fn applied_versions(server: &Client) -> anyhow::Result<Vec<u32>> {
    let rows: Vec<Applied> = server
        .query(&format!(
            "SELECT toUInt32(version) AS version FROM {MIGRATIONS_TABLE} ORDER BY version"
        ))
        .fetch_all()
        .await
        .context("reading schema_migrations")?;
    Ok(rows.into_iter().map(|a| a.version).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_statements_outside_quotes_and_comments() {
        let sql = "-- header; with a semicolon\n\
                   CREATE TABLE a (x String DEFAULT ';') ENGINE = Memory;\n\
                   /* block; comment */ ALTER TABLE a COMMENT COLUMN x 'it''s; \\' fine';\n\
                   \n  ;  \n";
        let s = split_statements(sql);
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(
            s[0],
            "CREATE TABLE a (x String DEFAULT ';') ENGINE = Memory"
        );
        assert!(
            s[1].starts_with("ALTER TABLE a COMMENT COLUMN x 'it''s; \\' fine'"),
            "{s:?}"
        );
        assert_eq!(split_statements("SELECT 1"), vec!["SELECT 1"]);
        assert!(split_statements("-- only a comment\n").is_empty());
    }

    #[test]
    fn parses_names_and_orders_by_version() {
        let all = parse_all(&[
            ("0010_later.sql", "SELECT 10;"),
            ("0002_second.sql", "SELECT 2; SELECT 22;"),
            ("0001_flows.sql", "SELECT 1"),
        ])
        .unwrap();
        let v: Vec<(u32, &str, usize)> = all
            .iter()
            .map(|m| (m.version, m.name.as_str(), m.statements.len()))
            .collect();
        assert_eq!(v, [(1, "flows", 1), (2, "second", 2), (10, "later", 1)]);
    }

    #[test]
    fn rejects_bad_names_duplicates_and_empty_files() {
        for bad in [
            "flows.sql",
            "x_flows.sql",
            "0000_zero.sql",
            "0001_flows.txt",
        ] {
            assert!(Migration::parse(bad, "SELECT 1").is_err(), "{bad}");
        }
        let e = parse_all(&[("0001_a.sql", "SELECT 1"), ("0001_b.sql", "SELECT 1")]).unwrap_err();
        assert!(e.to_string().contains("share version 1"), "{e}");
        assert!(Migration::parse("0003_empty.sql", "-- nothing\n").is_err());
    }

    #[test]
    fn embedded_migrations_parse() {
        let all = embedded().unwrap();
        // The first migration, when present, creates the flows table.
        if let Some(first) = all.first() {
            assert_eq!(first.version, 1);
            assert!(
                first.statements.iter().any(|s| s.contains("flows")),
                "{first:?}"
            );
        }
    }
}
