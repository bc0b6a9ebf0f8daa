//! The ready queries of `sql/queries` as subcommands: each file's `{name:Type}` parameters become
//! flags, the values are bound by ClickHouse (`param_<name>`), the SQL is sent as written.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use clap::{value_parser, Arg, ArgMatches, Command};
use serde_json::Value as Json;

use crate::table::Table;

/// `(file name, contents)` of every `sql/queries/*.sql`, sorted by file name (see build.rs).
pub const EMBEDDED: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/queries.rs"));

/// Short names for the most used queries (the file-derived name always works too).
const ALIASES: &[(&str, &str)] = &[
    ("top_talkers", "top"),
    ("drops_by_reason", "drops"),
    ("service_traffic_matrix", "matrix"),
    ("topology_edges", "edges"),
];

/// One query file.
#[derive(Debug, Clone)]
pub struct Query {
    /// Subcommand name: the file stem with `-` for `_`, e.g. `tcp-health`.
    pub name: String,
    pub file: &'static str,
    pub sql: &'static str,
    /// The file's leading comment, parameters written as `<name>`.
    pub description: String,
    /// `(name, ClickHouse type)` of every `{name:Type}` in the file, in order of appearance.
    pub params: Vec<(String, String)>,
}

impl Query {
    pub fn parse(file: &'static str, sql: &'static str) -> Self {
        let stem = file.strip_suffix(".sql").unwrap_or(file);
        let comment: Vec<&str> = sql
            .lines()
            .map_while(|l| l.trim_start().strip_prefix("--"))
            .map(str::trim)
            .collect();
        let params = parameters(sql);
        let mut description = comment.join(" ");
        for (name, ty) in &params {
            description = description.replace(&format!("{{{name}:{ty}}}"), &format!("<{name}>"));
        }
        Self {
            name: stem.replace('_', "-"),
            file,
            sql,
            description,
            params,
        }
    }

    fn alias(&self) -> Option<&'static str> {
        let stem = self.file.strip_suffix(".sql").unwrap_or(self.file);
        ALIASES.iter().find(|(f, _)| *f == stem).map(|(_, a)| *a)
    }

    /// The subcommand: one flag per parameter plus the ClickHouse connection and output flags.
    pub fn command(&self) -> Command {
        // The first clause: up to the first ": ", " (" or ". ".
        let first_sentence = [": ", " (", ". "]
            .iter()
            .filter_map(|sep| self.description.find(sep))
            .min()
            .map_or(self.description.as_str(), |end| &self.description[..end]);
        let cmd = Command::new(self.name.clone());
        // The shared flags first: their struct's doc would otherwise replace the about text.
        let mut cmd = <crate::ClickHouseArgs as clap::Args>::augment_args(cmd)
            .about(first_sentence.trim_end_matches('.').to_string())
            .long_about(format!(
                "{}\n\nRuns sql/queries/{} with its parameters bound by ClickHouse.",
                self.description, self.file
            ));
        if let Some(alias) = self.alias() {
            cmd = cmd.visible_alias(alias);
        }
        for (name, ty) in &self.params {
            cmd = cmd.arg(param_arg(name, ty));
        }
        cmd
    }

    /// `(name, value)` of every parameter from the parsed flags.
    pub fn bindings(&self, matches: &ArgMatches) -> anyhow::Result<Vec<(String, String)>> {
        self.params
            .iter()
            .map(|(name, ty)| {
                let value = match name.as_str() {
                    "minutes" | "hours" => {
                        let since = matches.get_one::<Duration>("since").expect("has a default");
                        let unit = if name == "minutes" { 60 } else { 3_600 };
                        let whole = since.as_secs().div_ceil(unit).max(1);
                        anyhow::ensure!(whole <= u32::MAX as u64, "--since {since:?} is too long");
                        whole.to_string()
                    }
                    "limit" => matches
                        .get_one::<u32>("limit")
                        .expect("default")
                        .to_string(),
                    _ => matches
                        .get_one::<String>(name)
                        .cloned()
                        .with_context(|| format!("--{} ({ty}) is required", flag(name)))?,
                };
                Ok((name.clone(), value))
            })
            .collect()
    }
}

/// The flag of one parameter: `minutes`/`hours` → `--since`, `limit` → `--limit`, anything else
/// `--<name>` (strings default to empty).
fn param_arg(name: &str, ty: &str) -> Arg {
    match name {
        "minutes" | "hours" => {
            let (default, unit) = if name == "minutes" {
                ("1h", "minutes")
            } else {
                ("24h", "hours")
            };
            Arg::new("since")
                .long("since")
                .value_name("DURATION")
                .default_value(default)
                .value_parser(crate::duration::parse)
                .help(format!(
                    "Window ending now, e.g. 15m, 2h, 7d (whole {unit}, rounded up)"
                ))
        }
        "limit" => Arg::new("limit")
            .long("limit")
            .value_name("N")
            .default_value("20")
            .value_parser(value_parser!(u32))
            .help("Rows at most"),
        _ => {
            let arg = Arg::new(name.to_string())
                .long(flag(name))
                .value_name(ty.to_string())
                .help(format!("Query parameter `{name}` ({ty})"));
            if ty.contains("String") {
                arg.default_value("").help(format!(
                    "Query parameter `{name}` ({ty}); empty (the default) matches all"
                ))
            } else {
                arg.required(true)
            }
        }
    }
}

fn flag(name: &str) -> String {
    name.replace('_', "-")
}

/// `{name:Type}` placeholders in order of first appearance.
fn parameters(sql: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut rest = sql;
    while let Some(open) = rest.find('{') {
        rest = &rest[open + 1..];
        let Some(close) = rest.find('}') else { break };
        if let Some((name, ty)) = rest[..close].split_once(':') {
            let (name, ty) = (name.trim(), ty.trim());
            let ident = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
            if ident && !ty.is_empty() && !out.iter().any(|(n, _)| n == name) {
                out.push((name.to_string(), ty.to_string()));
            }
        }
    }
    out
}

/// Every embedded query, in file order.
pub fn all() -> Vec<Query> {
    EMBEDDED
        .iter()
        .map(|(file, sql)| Query::parse(file, sql))
        .collect()
}

/// How query results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns with a header.
    Table,
    /// One JSON object per row (columns in the query's order).
    Json,
}

/// A query's result: column names and types, then rows of JSON values.
struct Result_ {
    columns: Vec<(String, String)>,
    rows: Vec<Vec<Json>>,
}

/// Runs `query` with the flags in `matches` and prints the result to stdout.
pub fn run(query: &Query, matches: &ArgMatches) -> anyhow::Result<()> {
    let args = <crate::ClickHouseArgs as clap::FromArgMatches>::from_arg_matches(matches)?;
    let bindings = query.bindings(matches)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime
        .block_on(fetch(query, &args, &bindings))
        .with_context(|| {
            format!(
                "{} (sql/queries/{}) on ClickHouse at {}",
                query.name, query.file, args.url
            )
        })?;
    let mut out = std::io::stdout().lock();
    crate::quiet_on_broken_pipe(print(&result, args.output, &mut out))
}

async fn fetch(
    query: &Query,
    args: &crate::ClickHouseArgs,
    bindings: &[(String, String)],
) -> anyhow::Result<Result_> {
    let mut client = clickhouse::Client::default()
        .with_url(&args.url)
        .with_database(&args.database)
        .with_user(&args.user);
    if !args.password.is_empty() {
        client = client.with_password(&args.password);
    }
    let mut q = client
        .query(query.sql)
        .with_setting("output_format_json_quote_64bit_integers", "0");
    for (name, value) in bindings {
        q = q.param(name, value.as_str());
    }
    let body = q.fetch_bytes("JSONCompact")?.collect().await?;
    let parsed: Json =
        serde_json::from_slice(&body).context("ClickHouse answered no JSONCompact")?;
    let columns = parsed["meta"]
        .as_array()
        .context("JSONCompact without meta")?
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap_or_default().to_string(),
                c["type"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let rows = parsed["data"]
        .as_array()
        .context("JSONCompact without data")?
        .iter()
        .map(|r| r.as_array().cloned().unwrap_or_default())
        .collect();
    Ok(Result_ { columns, rows })
}

fn print(result: &Result_, output: Output, out: &mut impl Write) -> std::io::Result<()> {
    match output {
        Output::Json => {
            for row in &result.rows {
                let fields: Vec<String> = result
                    .columns
                    .iter()
                    .zip(row)
                    .map(|((name, _), v)| format!("{}:{}", Json::from(name.as_str()), v))
                    .collect();
                writeln!(out, "{{{}}}", fields.join(","))?;
            }
        }
        Output::Table => {
            let numeric: Vec<bool> = result.columns.iter().map(|(_, t)| is_numeric(t)).collect();
            let mut table = Table::new(
                result.columns.iter().map(|(n, _)| n.clone()).collect(),
                numeric,
            );
            for row in &result.rows {
                table.push(row.iter().map(cell).collect());
            }
            table.write(out)?;
            if let Some(rate) = max_sampling_rate(result).filter(|r| *r > 1) {
                writeln!(
                    out,
                    "(sampled records, up to 1:{rate}: traffic totals are estimates, counted x rate)"
                )?;
            }
        }
    }
    Ok(())
}

/// The highest `max_sampling_rate` of the rows, when the query has that column.
fn max_sampling_rate(result: &Result_) -> Option<u64> {
    let i = result
        .columns
        .iter()
        .position(|(n, _)| n == "max_sampling_rate")?;
    result.rows.iter().filter_map(|r| r.get(i)?.as_u64()).max()
}

fn is_numeric(ty: &str) -> bool {
    let inner = ty
        .trim_start_matches("Nullable(")
        .trim_start_matches("LowCardinality(");
    ["UInt", "Int", "Float", "Decimal"]
        .iter()
        .any(|p| inner.starts_with(p))
}

fn cell(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_parses_with_its_parameters() {
        let all = all();
        assert!(!all.is_empty());
        let top = all.iter().find(|q| q.name == "top-talkers").unwrap();
        assert_eq!(
            top.params,
            vec![
                ("minutes".to_string(), "UInt32".to_string()),
                ("namespace".to_string(), "String".to_string()),
                ("limit".to_string(), "UInt32".to_string())
            ]
        );
        assert!(
            top.description.contains("last <minutes> minutes"),
            "{}",
            top.description
        );
        for q in &all {
            assert!(
                !q.description.is_empty(),
                "{} has no leading comment",
                q.file
            );
            q.command().debug_assert();
        }
    }
}
