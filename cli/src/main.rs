//! `flowlens`: the command line for people and scripts: live flows from Kafka (`observe`), the
//! ready queries of sql/queries against ClickHouse (one subcommand per file), the schemas and
//! their fingerprints (`schema`), and configuration checks (`check`). Exit codes: 0 success,
//! 1 failure (named), 2 bad usage or an invalid configuration (`check`).

mod check;
mod duration;
mod filter;
mod flows;
mod observe;
mod queries;
mod schemas;
mod table;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "flowlens",
    version,
    about = "Network flows from the flowlens pipeline: live from Kafka, summarized from ClickHouse",
    long_about = "Network flows from the flowlens pipeline.\n\n\
        Live: `flowlens observe` reads the enriched flows topic without joining a consumer group, \
        e.g. `flowlens observe --namespace shop --drops -f`.\n\
        Summaries: one subcommand per ready query of sql/queries, run by ClickHouse with its \
        parameters bound, e.g. `flowlens top --since 15m --limit 10`, `flowlens tcp-health -o json`.\n\
        Contract: `flowlens schema` lists every Avro schema version and its fingerprint.\n\
        Operations: `flowlens check --stage sink --config sink.toml` validates a configuration \
        as the stage would.",
    after_help = "Connection defaults come from the environment: FLOWLENS_BROKERS, FLOWLENS_TOPIC, \
        FLOWLENS_CLICKHOUSE_URL, FLOWLENS_CLICKHOUSE_DATABASE, FLOWLENS_CLICKHOUSE_USER, \
        FLOWLENS_CLICKHOUSE_PASSWORD."
)]
struct Cli {
    #[command(subcommand)]
    command: Fixed,
}

// Parsed once per run: not worth boxing the observe flags.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Fixed {
    /// Live enriched flows from Kafka, filtered, as a table, JSON lines or one-liners.
    Observe(observe::Args),
    /// Every Avro schema version the pipeline decodes, with fingerprints; or one schema's text.
    Schema(schemas::Args),
    /// Check a stage's configuration as the stage would load it, without starting anything.
    Check(check::Args),
}

/// ClickHouse connection and output flags of every query subcommand.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "ClickHouse")]
pub struct ClickHouseArgs {
    /// HTTP interface URL.
    #[arg(
        long = "clickhouse",
        env = "FLOWLENS_CLICKHOUSE_URL",
        default_value = "http://127.0.0.1:8123",
        value_name = "URL"
    )]
    pub url: String,
    #[arg(long, env = "FLOWLENS_CLICKHOUSE_DATABASE", default_value = "default")]
    pub database: String,
    #[arg(long, env = "FLOWLENS_CLICKHOUSE_USER", default_value = "default")]
    pub user: String,
    #[arg(
        long,
        env = "FLOWLENS_CLICKHOUSE_PASSWORD",
        default_value = "",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub password: String,
    /// Output format.
    #[arg(
        short,
        long,
        value_enum,
        default_value = "table",
        help_heading = "Output"
    )]
    pub output: queries::Output,
}

/// A closed stdout (`flowlens observe | head`) ends the command quietly and successfully.
pub fn quiet_on_broken_pipe(result: std::io::Result<()>) -> anyhow::Result<()> {
    match result {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        other => Ok(other?),
    }
}

fn main() -> ExitCode {
    let all = queries::all();
    let mut command = Cli::command();
    for q in &all {
        command = command.subcommand(q.command());
    }
    let matches = command.get_matches();
    let result = match matches.subcommand() {
        Some((name, sub)) if all.iter().any(|q| q.name == name) => {
            let query = all.iter().find(|q| q.name == name).expect("found");
            queries::run(query, sub)
        }
        _ => {
            let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
            match &cli.command {
                Fixed::Observe(args) => observe::run(args),
                Fixed::Schema(args) => schemas::run(args),
                Fixed::Check(args) => return check::run(args),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flowlens: {e:#}");
            ExitCode::FAILURE
        }
    }
}
