//! `flowlens-enricher`: command line, then the shared service skeleton around
//! [`flowlens_enricher::run`]. Exit codes: 0 clean stop, 1 runtime failure, 2 bad configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use flowlens_enricher::config::{Config, ENV_PREFIX};

/// Decoding a RawFlow allocates (the pipeline writes the joined fields straight into the Avro
/// message, but the record it reads owns its strings): mimalloc keeps that cheap
/// (bench/results/enricher.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Joins raw flows with interface metadata and publishes enriched flows.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file; every key can be overridden by FLOWLENS_ENRICHER__SECTION__KEY.
    #[arg(long, short, env = "FLOWLENS_ENRICHER_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    flowlens_runtime::service::run_main(
        "flowlens-enricher",
        cli.config.as_deref(),
        ENV_PREFIX,
        |config: Config, shutdown| flowlens_enricher::run(config, shutdown),
    )
}
