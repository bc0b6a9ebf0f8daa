//! `flowlens-collector`: command line, then the shared service skeleton around
//! [`flowlens_collector::run`]. Exit codes: 0 clean stop, 1 failure, 2 bad configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use flowlens_collector::config::ENV_PREFIX;
use flowlens_collector::Config;

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
    flowlens_runtime::service::run_main(
        "flowlens-collector",
        cli.config.as_deref(),
        ENV_PREFIX,
        |config: Config, shutdown| flowlens_collector::run(config, shutdown),
    )
}
