//! `flowlens-sink [--config FILE] [run|migrate]`: command line, then the shared service skeleton
//! around [`flowlens_sink::run`] or the migrations. Exit codes: 0, 1 failure, 2 bad configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flowlens_sink::config::ENV_PREFIX;
use flowlens_sink::{migrate, Config};

#[derive(Parser)]
#[command(
    name = "flowlens-sink",
    version,
    about = "Writes enriched flows from Kafka into ClickHouse"
)]
struct Cli {
    /// TOML configuration file; `FLOWLENS_SINK__SECTION__KEY` variables override it.
    #[arg(long, short, env = "FLOWLENS_SINK_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Clone, Copy)]
enum Command {
    /// Consume and insert until SIGTERM/SIGINT (the default).
    Run,
    /// Apply the missing sql/migrations and the [retention] TTLs to ClickHouse and exit.
    Migrate,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run);
    flowlens_runtime::service::run_main(
        "flowlens-sink",
        cli.config.as_deref(),
        ENV_PREFIX,
        move |config: Config, shutdown| async move {
            match command {
                Command::Migrate => {
                    let migrations = migrate::embedded()?;
                    migrate::migrate(&config.clickhouse, &config.retention, &migrations).await
                }
                Command::Run => flowlens_sink::run(config, shutdown).await,
            }
        },
    )
}
