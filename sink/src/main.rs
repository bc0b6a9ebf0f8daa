//! `flowlens-sink [--config FILE] [run|migrate]`: the sink binary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flowlens_runtime::{telemetry, Shutdown};
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
    /// Apply the missing sql/migrations to ClickHouse and exit.
    Migrate,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("flowlens-sink: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_logging(&config.telemetry);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("flowlens-sink: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Run) {
            Command::Migrate => {
                let migrations = migrate::embedded()?;
                let applied = migrate::apply(&config.clickhouse, &migrations).await?;
                tracing::info!(?applied, available = migrations.len(), "migrations done");
                Ok(())
            }
            Command::Run => {
                telemetry::init_metrics(&config.telemetry)?;
                let shutdown = Shutdown::new();
                shutdown.on_signals()?;
                flowlens_sink::run(config, shutdown).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "flowlens-sink failed");
            eprintln!("flowlens-sink: {e:#}");
            ExitCode::FAILURE
        }
    }
}
