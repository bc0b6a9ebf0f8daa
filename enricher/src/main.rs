//! `flowlens-enricher`: loads the configuration, starts telemetry and runs the pipeline until
//! SIGTERM or SIGINT. Exit codes: 0 clean stop, 1 runtime failure, 2 bad configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use flowlens_enricher::config::{Config, ENV_PREFIX};
use flowlens_runtime::telemetry::{init_logging, init_metrics};
use flowlens_runtime::{load_config, Shutdown};

/// Joins raw flows with interface metadata and publishes enriched flows.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file; every key can be overridden by FLOWLENS_ENRICHER__SECTION__KEY.
    #[arg(long, env = "FLOWLENS_ENRICHER_CONFIG")]
    config: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let config: Config = match load_config(cli.config.as_deref(), ENV_PREFIX) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("flowlens-enricher: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config.telemetry);
    if let Err(e) = init_metrics(&config.telemetry) {
        tracing::error!(error = %e, "cannot start metrics endpoint");
        return ExitCode::FAILURE;
    }
    let shutdown = Shutdown::new();
    if let Err(e) = shutdown.on_signals() {
        tracing::error!(error = %e, "cannot install signal handlers");
        return ExitCode::FAILURE;
    }
    match flowlens_enricher::run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "enricher failed");
            ExitCode::FAILURE
        }
    }
}
