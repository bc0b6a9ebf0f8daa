//! `flowlens-collector`: command line, configuration, telemetry, then [`flowlens_collector::run`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use flowlens_collector::config::{Config, ENV_PREFIX};
use flowlens_runtime::{load_config, telemetry, Shutdown};

/// Kernel flow accounting agent: attaches eBPF programs, publishes flows to Kafka.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// TOML configuration file; every key can be overridden by FLOWLENS_COLLECTOR__SECTION__KEY.
    #[arg(long, short, env = "FLOWLENS_COLLECTOR_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config: Config = match load_config(cli.config.as_deref(), ENV_PREFIX) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("flowlens-collector: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_logging(&config.telemetry);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        telemetry::init_metrics(&config.telemetry)?;
        let shutdown = Shutdown::new();
        shutdown.on_signals()?;
        flowlens_collector::run(config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "collector failed");
            eprintln!("flowlens-collector: {e:#}");
            ExitCode::FAILURE
        }
    }
}
