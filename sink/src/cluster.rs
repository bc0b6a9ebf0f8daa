//! Migrations for a ClickHouse cluster (`clickhouse.cluster`): every migration statement
//! rewritten to run `ON CLUSTER` with Replicated* engines, and the Distributed read tables.
//!
//! * CREATE / ALTER / DROP / RENAME / TRUNCATE / OPTIMIZE of tables, views and databases get
//!   `ON CLUSTER <name>`; any other statement is refused (a new migration must say how it runs
//!   on a cluster).
//! * `ENGINE = <X>MergeTree[(args)]` becomes `ENGINE = Replicated<X>MergeTree(
//!   '/clickhouse/tables/{shard}/<database>/<table>', '{replica}'[, args])`: `{shard}` and
//!   `{replica}` are the servers' macros, database and table are written out (what the
//!   `{database}`/`{table}` macros expand to, also understood by servers without them).
//! * `non_replicated_deduplication_window` becomes `replicated_deduplication_window` (the
//!   insert deduplication window of a replicated table, kept in ZooKeeper per shard).
//! * [`Cluster::read_tables`]: `<table>_distributed` over every replicated table of the
//!   migrations, created from the local table (again after each migration: its columns).

use anyhow::Context as _;

use crate::config::ClickHouseConfig;

/// Suffix of the Distributed read table of each replicated table.
pub const DISTRIBUTED_SUFFIX: &str = "_distributed";

/// Sharding key of the sink table's Distributed table: one Kafka partition's rows on one shard,
/// so that a batch written through it meets the deduplication tokens of its earlier attempts.
pub const SHARDING_KEY: &str = "kafka_partition";

/// A cluster of `remote_servers` and the database the migrations write into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub name: String,
    pub database: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Word,
    Quoted,
    Literal,
    Punct(char),
}

#[derive(Debug, Clone, Copy)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
}

/// Splits `sql` (comments already removed) into words, quoted identifiers, string literals and
/// single punctuation characters.
fn tokens(sql: &str) -> Vec<Token> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        let kind = if c.is_ascii_whitespace() {
            i += 1;
            continue;
        } else if c == b'\'' || c == b'`' || c == b'"' {
            i += 1;
            while i < bytes.len() {
                if bytes[i] == b'\\' {
                    i += 2;
                    continue;
                }
                if bytes[i] == c {
                    // A doubled quote is one quote character inside the literal.
                    if bytes.get(i + 1) == Some(&c) {
                        i += 2;
                        continue;
                    }
                    break;
                }
                i += 1;
            }
            i = (i + 1).min(bytes.len());
            if c == b'\'' {
                Kind::Literal
            } else {
                Kind::Quoted
            }
        } else if c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80 {
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] >= 0x80)
            {
                i += 1;
            }
            Kind::Word
        } else {
            i += 1;
            Kind::Punct(c as char)
        };
        out.push(Token {
            kind,
            start,
            end: i,
        });
    }
    out
}

/// A statement as tokens, with keyword matching.
struct Statement<'a> {
    sql: &'a str,
    tokens: Vec<Token>,
}

impl<'a> Statement<'a> {
    fn new(sql: &'a str) -> Self {
        Self {
            sql,
            tokens: tokens(sql),
        }
    }

    fn text(&self, i: usize) -> &'a str {
        self.tokens.get(i).map_or("", |t| &self.sql[t.start..t.end])
    }

    fn is(&self, i: usize, keyword: &str) -> bool {
        self.tokens.get(i).is_some_and(|t| t.kind == Kind::Word)
            && self.text(i).eq_ignore_ascii_case(keyword)
    }

    /// Whether `keywords` follow from `i`; the index after them.
    fn keywords(&self, i: usize, keywords: &[&str]) -> Option<usize> {
        keywords
            .iter()
            .enumerate()
            .all(|(k, w)| self.is(i + k, w))
            .then_some(i + keywords.len())
    }

    fn skip(&self, i: usize, keywords: &[&str]) -> usize {
        self.keywords(i, keywords).unwrap_or(i)
    }

    fn is_name(&self, i: usize) -> bool {
        self.tokens
            .get(i)
            .is_some_and(|t| matches!(t.kind, Kind::Word | Kind::Quoted))
    }

    /// `name` or `db.name` from `i`: the index after it.
    fn name(&self, i: usize) -> anyhow::Result<usize> {
        anyhow::ensure!(self.is_name(i), "expected a name at `{}`", self.text(i));
        if self.tokens.get(i + 1).map(|t| t.kind) == Some(Kind::Punct('.')) && self.is_name(i + 2) {
            return Ok(i + 3);
        }
        Ok(i + 1)
    }

    /// The unquoted last part of the name spanning tokens `from..to`.
    fn bare_name(&self, from: usize, to: usize) -> (Option<String>, String) {
        let unquote = |i: usize| self.text(i).trim_matches(['`', '"']).to_owned();
        if to - from == 3 {
            (Some(unquote(from)), unquote(from + 2))
        } else {
            (None, unquote(from))
        }
    }

    /// Byte offset where token `i` ends.
    fn end_of(&self, i: usize) -> usize {
        self.tokens[i].end
    }

    /// The index of the `)` closing the `(` at `open`.
    fn closing(&self, open: usize) -> anyhow::Result<usize> {
        let mut depth = 0usize;
        for (i, t) in self.tokens.iter().enumerate().skip(open) {
            match t.kind {
                Kind::Punct('(') => depth += 1,
                Kind::Punct(')') => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(i);
                    }
                }
                _ => {}
            }
        }
        anyhow::bail!("unbalanced parentheses")
    }

    /// Indices of the tokens outside parentheses.
    fn top_level(&self) -> Vec<usize> {
        let mut depth = 0i32;
        let mut out = Vec::new();
        for (i, t) in self.tokens.iter().enumerate() {
            match t.kind {
                Kind::Punct('(') => depth += 1,
                Kind::Punct(')') => depth -= 1,
                _ if depth == 0 => out.push(i),
                _ => {}
            }
        }
        out
    }
}

/// One text replacement: bytes `start..end` of the statement become `with`.
struct Edit {
    start: usize,
    end: usize,
    with: String,
}

fn apply_edits(sql: &str, mut edits: Vec<Edit>) -> String {
    edits.sort_by_key(|e| e.start);
    let mut out = String::with_capacity(sql.len() + 128);
    let mut at = 0;
    for e in edits {
        out.push_str(&sql[at..e.start]);
        out.push_str(&e.with);
        at = e.end;
    }
    out.push_str(&sql[at..]);
    out
}

/// Where the `ON CLUSTER` clause goes, and for CREATE TABLE / MATERIALIZED VIEW the object
/// whose engine may be replicated.
struct Target {
    /// Index of the token after which `ON CLUSTER` is written.
    after: usize,
    /// `(database, table)` of a CREATE that may hold an ENGINE clause.
    creates: Option<(Option<String>, String)>,
}

fn target(s: &Statement) -> anyhow::Result<Target> {
    let named = |i: usize, creates: bool| -> anyhow::Result<Target> {
        let end = s.name(i)?;
        Ok(Target {
            after: end - 1,
            creates: creates.then(|| s.bare_name(i, end)),
        })
    };
    if s.is(0, "CREATE") {
        let i = s.skip(1, &["OR", "REPLACE"]);
        let i = s.skip(i, &["TEMPORARY"]);
        let (i, engine) = if let Some(i) = s.keywords(i, &["TABLE"]) {
            (i, true)
        } else if let Some(i) = s.keywords(i, &["MATERIALIZED", "VIEW"]) {
            (i, true)
        } else if let Some(i) = s
            .keywords(i, &["VIEW"])
            .or_else(|| s.keywords(i, &["DICTIONARY"]))
            .or_else(|| s.keywords(i, &["DATABASE"]))
        {
            (i, false)
        } else {
            anyhow::bail!("unknown CREATE statement");
        };
        return named(s.skip(i, &["IF", "NOT", "EXISTS"]), engine);
    }
    if let Some(i) = s.keywords(0, &["ALTER", "TABLE"]) {
        return named(i, false);
    }
    if s.is(0, "DROP") || s.is(0, "TRUNCATE") {
        let i = ["TABLE", "VIEW", "DICTIONARY", "DATABASE"]
            .iter()
            .find_map(|k| s.keywords(1, &[k]))
            .or_else(|| s.is(0, "TRUNCATE").then_some(1))
            .context("unknown DROP or TRUNCATE statement")?;
        return named(s.skip(i, &["IF", "EXISTS"]), false);
    }
    if let Some(i) = s.keywords(0, &["OPTIMIZE", "TABLE"]) {
        return named(i, false);
    }
    if s.keywords(0, &["RENAME", "TABLE"]).is_some()
        || s.keywords(0, &["RENAME", "DICTIONARY"]).is_some()
    {
        return Ok(Target {
            after: s.tokens.len() - 1,
            creates: None,
        });
    }
    anyhow::bail!(
        "not a CREATE, ALTER, DROP, RENAME, TRUNCATE or OPTIMIZE of a table, view or database"
    )
}

impl Cluster {
    /// `clickhouse.cluster` with the database the migrations write into; `None` when unset.
    pub fn of(config: &ClickHouseConfig) -> Option<Self> {
        (!config.cluster.is_empty()).then(|| Self::new(&config.cluster, &config.database))
    }

    pub fn new(name: &str, database: &str) -> Self {
        Self {
            name: name.to_owned(),
            database: database.to_owned(),
        }
    }

    /// ZooKeeper path of the replicated table `table` of `database` (the shard's macro kept).
    pub fn zookeeper_path(database: &str, table: &str) -> String {
        format!("/clickhouse/tables/{{shard}}/{database}/{table}")
    }

    /// `statement` (one statement, comments removed, no trailing `;`) for this cluster.
    pub fn rewrite(&self, statement: &str) -> anyhow::Result<String> {
        let s = Statement::new(statement);
        let shown = || statement.chars().take(80).collect::<String>();
        let target = target(&s).with_context(|| {
            format!(
                "statement `{}...` cannot run on cluster `{}`",
                shown(),
                self.name
            )
        })?;
        // Where ON CLUSTER would go: after the name, anywhere in a RENAME (it goes last there).
        let named = if s.is(0, "RENAME") {
            (0..s.tokens.len()).any(|i| s.keywords(i, &["ON", "CLUSTER"]).is_some())
        } else {
            s.keywords(target.after + 1, &["ON", "CLUSTER"]).is_some()
        };
        anyhow::ensure!(
            !named,
            "statement `{}...` already names a cluster (migrations are written for one server)",
            shown()
        );
        let mut edits = vec![Edit {
            start: s.end_of(target.after),
            end: s.end_of(target.after),
            with: format!(" ON CLUSTER {}", self.name),
        }];
        for (i, t) in s.tokens.iter().enumerate() {
            if t.kind == Kind::Word && s.text(i) == "non_replicated_deduplication_window" {
                edits.push(Edit {
                    start: t.start,
                    end: t.end,
                    with: "replicated_deduplication_window".into(),
                });
            }
        }
        if let Some((database, table)) = target.creates {
            let database = database.unwrap_or_else(|| self.database.clone());
            if let Some(edit) = replicated_engine(&s, &database, &table)? {
                edits.push(edit);
            }
        }
        Ok(apply_edits(statement, edits))
    }

    /// For each table of `tables`: its Distributed read table `<t>_distributed` and the
    /// statements (re)creating it from the local table (`DROP` then `CREATE`, which every
    /// server version has), sharded by [`SHARDING_KEY`] for `sink_table` and unsharded for the
    /// others (read only: a write through those is refused on several shards).
    pub fn read_tables(&self, tables: &[String], sink_table: &str) -> Vec<(String, [String; 2])> {
        tables
            .iter()
            .map(|t| {
                let name = format!("{t}{DISTRIBUTED_SUFFIX}");
                let key = if t == sink_table {
                    format!(", {SHARDING_KEY}")
                } else {
                    String::new()
                };
                let (db, c) = (&self.database, &self.name);
                let statements = [
                    format!("DROP TABLE IF EXISTS `{db}`.`{name}` ON CLUSTER {c}"),
                    format!(
                        "CREATE TABLE `{db}`.`{name}` ON CLUSTER {c} AS `{db}`.`{t}` \
                         ENGINE = Distributed('{c}', '{db}', '{t}'{key})"
                    ),
                ];
                (name, statements)
            })
            .collect()
    }
}

/// The edit turning a MergeTree-family ENGINE clause of a CREATE into its Replicated variant,
/// `None` for any other engine (or none: `CREATE TABLE ... AS other` copies the engine of
/// `other` only when it names no engine, which the migrations do not rely on).
fn replicated_engine(s: &Statement, database: &str, table: &str) -> anyhow::Result<Option<Edit>> {
    let top = s.top_level();
    let Some(pos) = top.iter().position(|&i| s.is(i, "ENGINE")) else {
        return Ok(None);
    };
    let mut i = top[pos] + 1;
    if s.tokens.get(i).map(|t| t.kind) == Some(Kind::Punct('=')) {
        i += 1;
    }
    let engine = s.text(i);
    if !engine.ends_with("MergeTree") || engine.starts_with("Replicated") {
        return Ok(None);
    }
    let mut args = vec![
        format!("'{}'", Cluster::zookeeper_path(database, table)),
        "'{replica}'".to_owned(),
    ];
    let mut end = s.tokens[i].end;
    if s.tokens.get(i + 1).map(|t| t.kind) == Some(Kind::Punct('(')) {
        let close = s.closing(i + 1)?;
        let inner = s.sql[s.tokens[i + 1].end..s.tokens[close].start].trim();
        if !inner.is_empty() {
            args.push(inner.to_owned());
        }
        end = s.tokens[close].end;
    }
    Ok(Some(Edit {
        start: s.tokens[i].start,
        end,
        with: format!("Replicated{engine}({})", args.join(", ")),
    }))
}

/// Tables created by `statements` with a MergeTree-family engine, in order of creation: the
/// tables that are replicated on a cluster and get a Distributed read table.
pub fn replicated_tables<'a>(statements: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for statement in statements {
        let s = Statement::new(statement);
        let Ok(Target {
            creates: Some((_, table)),
            ..
        }) = target(&s)
        else {
            continue;
        };
        let is_table = s.is(1, "TABLE") || s.keywords(1, &["OR", "REPLACE", "TABLE"]).is_some();
        if is_table
            && matches!(replicated_engine(&s, "", &table), Ok(Some(_)))
            && !out.contains(&table)
        {
            out.push(table);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrate::embedded;

    fn cluster() -> Cluster {
        Cluster::new("flows_cluster", "flowlens")
    }

    #[test]
    fn on_cluster_goes_after_the_name() {
        let c = cluster();
        let cases = [
            (
                "CREATE DATABASE IF NOT EXISTS `flowlens`",
                "CREATE DATABASE IF NOT EXISTS `flowlens` ON CLUSTER flows_cluster",
            ),
            (
                "ALTER TABLE flows ADD COLUMN IF NOT EXISTS x UInt8",
                "ALTER TABLE flows ON CLUSTER flows_cluster ADD COLUMN IF NOT EXISTS x UInt8",
            ),
            (
                "alter table db.`t` MODIFY TTL time + INTERVAL 1 DAY",
                "alter table db.`t` ON CLUSTER flows_cluster MODIFY TTL time + INTERVAL 1 DAY",
            ),
            (
                "DROP VIEW IF EXISTS flows_iface_1m_mv",
                "DROP VIEW IF EXISTS flows_iface_1m_mv ON CLUSTER flows_cluster",
            ),
            ("DROP TABLE t", "DROP TABLE t ON CLUSTER flows_cluster"),
            (
                "RENAME TABLE a TO b, c TO d",
                "RENAME TABLE a TO b, c TO d ON CLUSTER flows_cluster",
            ),
            (
                "TRUNCATE TABLE IF EXISTS t",
                "TRUNCATE TABLE IF EXISTS t ON CLUSTER flows_cluster",
            ),
            (
                "CREATE MATERIALIZED VIEW IF NOT EXISTS v TO t AS SELECT 1 AS x FROM flows",
                "CREATE MATERIALIZED VIEW IF NOT EXISTS v ON CLUSTER flows_cluster TO t AS \
                 SELECT 1 AS x FROM flows",
            ),
        ];
        for (statement, expected) in cases {
            assert_eq!(c.rewrite(statement).unwrap(), expected);
        }
    }

    #[test]
    fn merge_tree_engines_become_replicated_with_their_arguments() {
        let c = cluster();
        assert_eq!(
            c.rewrite(
                "CREATE TABLE IF NOT EXISTS t (x UInt8, s UInt64) ENGINE = MergeTree ORDER BY x"
            )
            .unwrap(),
            "CREATE TABLE IF NOT EXISTS t ON CLUSTER flows_cluster (x UInt8, s UInt64) ENGINE = \
             ReplicatedMergeTree('/clickhouse/tables/{shard}/flowlens/t', '{replica}') ORDER BY x"
        );
        assert_eq!(
            c.rewrite("CREATE TABLE t2 AS t ENGINE=SummingMergeTree((s, y)) ORDER BY x SETTINGS non_replicated_deduplication_window = 1000")
                .unwrap(),
            "CREATE TABLE t2 ON CLUSTER flows_cluster AS t ENGINE=ReplicatedSummingMergeTree(\
             '/clickhouse/tables/{shard}/flowlens/t2', '{replica}', (s, y)) ORDER BY x SETTINGS \
             replicated_deduplication_window = 1000"
        );
        assert_eq!(
            c.rewrite("CREATE TABLE other.r (v UInt8, ver UInt32) ENGINE = ReplacingMergeTree(ver) ORDER BY v")
                .unwrap(),
            "CREATE TABLE other.r ON CLUSTER flows_cluster (v UInt8, ver UInt32) ENGINE = \
             ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/other/r', '{replica}', ver) \
             ORDER BY v"
        );
        // A join condition on a column named `cluster` is not a cluster clause.
        assert_eq!(
            c.rewrite("CREATE VIEW v AS SELECT * FROM a JOIN b ON cluster = b.c")
                .unwrap(),
            "CREATE VIEW v ON CLUSTER flows_cluster AS SELECT * FROM a JOIN b ON cluster = b.c"
        );
        // Other engines, and a column or comment merely named like one, are left alone.
        assert_eq!(
            c.rewrite(
                "CREATE TABLE m (engine String COMMENT 'ENGINE = MergeTree') ENGINE = Memory"
            )
            .unwrap(),
            "CREATE TABLE m ON CLUSTER flows_cluster (engine String COMMENT 'ENGINE = MergeTree') \
             ENGINE = Memory"
        );
        assert_eq!(
            c.rewrite(
                "ALTER TABLE flows MODIFY SETTING non_replicated_deduplication_window = 1000"
            )
            .unwrap(),
            "ALTER TABLE flows ON CLUSTER flows_cluster MODIFY SETTING \
             replicated_deduplication_window = 1000"
        );
    }

    #[test]
    fn other_statements_are_refused() {
        let c = cluster();
        for bad in [
            "INSERT INTO flows SELECT * FROM x",
            "SELECT 1",
            "SYSTEM SYNC REPLICA flows",
            "ALTER TABLE flows ON CLUSTER c DROP COLUMN x",
            "RENAME TABLE a TO b ON CLUSTER c",
        ] {
            let e = c.rewrite(bad).unwrap_err();
            assert!(
                format!("{e:#}").contains(bad.split_whitespace().next().unwrap()),
                "{e:#}"
            );
        }
    }

    /// Every statement of every embedded migration: ON CLUSTER right after the object's name,
    /// every MergeTree engine replicated under its own table's path, no unreplicated
    /// deduplication window left, and nothing else changed (the rewrite with the added text
    /// taken out again is the statement).
    #[test]
    fn every_embedded_migration_rewrites() {
        let c = cluster();
        let migrations = embedded().unwrap();
        let rewritten = crate::migrate::for_cluster(&migrations, &c).unwrap();
        let mut engines = 0;
        for (m, r) in migrations.iter().zip(&rewritten) {
            assert_eq!(m.statements.len(), r.statements.len());
            for (before, after) in m.statements.iter().zip(&r.statements) {
                assert_eq!(
                    after.matches(" ON CLUSTER flows_cluster").count(),
                    1,
                    "{after}"
                );
                assert!(!after.contains("non_replicated"), "{after}");
                let words: Vec<&str> = before.split_whitespace().collect();
                let head = if words[0] == "CREATE" || words[0] == "DROP" {
                    // CREATE|DROP <kind> [IF [NOT] EXISTS] <name>
                    let kind = if words[1] == "MATERIALIZED" { 3 } else { 2 };
                    let ifs = match words[kind] {
                        "IF" if words[kind + 1] == "NOT" => 3,
                        "IF" => 2,
                        _ => 0,
                    };
                    kind + ifs + 1
                } else {
                    assert_eq!(&words[..2], ["ALTER", "TABLE"], "{before}");
                    3
                };
                let name = words[head - 1];
                let expected_head = format!("{} ON CLUSTER flows_cluster", words[..head].join(" "));
                assert!(
                    after
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                        .starts_with(&expected_head),
                    "{after}"
                );
                let engine = before
                    .split_once("ENGINE = ")
                    .map(|(_, e)| e.split_whitespace().next().unwrap());
                let mut undone = after.replacen(" ON CLUSTER flows_cluster", "", 1);
                if let Some(engine) = engine {
                    engines += 1;
                    assert!(engine.ends_with("MergeTree"), "{before}");
                    let replicated = format!(
                        "ENGINE = Replicated{engine}('/clickhouse/tables/{{shard}}/flowlens/{name}', '{{replica}}')"
                    );
                    assert!(after.contains(&replicated), "{after}");
                    undone = undone.replacen(&replicated, &format!("ENGINE = {engine}"), 1);
                }
                let original = before.replace(
                    "non_replicated_deduplication_window",
                    "replicated_deduplication_window",
                );
                assert_eq!(undone, original);
            }
        }
        // flows and the eight rollups.
        assert_eq!(engines, 9);
        assert_eq!(
            replicated_tables(
                migrations
                    .iter()
                    .flat_map(|m| m.statements.iter().map(String::as_str))
            ),
            [
                "flows",
                "flows_iface_1m",
                "flows_iface_1h",
                "flows_k8s_1m",
                "flows_k8s_1h",
                "flows_port_1m",
                "flows_port_1h",
                "flows_topology_1m",
                "flows_topology_1h"
            ]
        );
    }

    #[test]
    fn read_tables_shard_the_sink_table_by_kafka_partition() {
        let tables = vec!["flows".to_owned(), "flows_iface_1m".to_owned()];
        let read = cluster().read_tables(&tables, "flows");
        assert_eq!(read[0].0, "flows_distributed");
        assert_eq!(
            read[0].1,
            [
                "DROP TABLE IF EXISTS `flowlens`.`flows_distributed` ON CLUSTER flows_cluster",
                "CREATE TABLE `flowlens`.`flows_distributed` ON CLUSTER flows_cluster AS \
                 `flowlens`.`flows` ENGINE = Distributed('flows_cluster', 'flowlens', 'flows', \
                 kafka_partition)"
            ]
        );
        assert!(
            read[1].1[1].ends_with("Distributed('flows_cluster', 'flowlens', 'flows_iface_1m')")
        );
    }
}
