//! `flowlens-console [--config FILE]`: command line, then the shared service skeleton around
//! [`flowlens_console::run`]. Exit codes: 0 clean stop, 1 failure, 2 bad configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use flowlens_console::config::{Config, ENV_PREFIX};

/// Serves the flowlens web console and its API.
#[derive(Debug, Parser)]
#[command(name = "flowlens-console", version, about)]
struct Cli {
    /// TOML configuration file; every key can be overridden by FLOWLENS_CONSOLE__SECTION__KEY.
    #[arg(long, short, env = "FLOWLENS_CONSOLE_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    flowlens_runtime::service::run_main(
        "flowlens-console",
        cli.config.as_deref(),
        ENV_PREFIX,
        |config: Config, shutdown| flowlens_console::run(config, shutdown),
    )
}
