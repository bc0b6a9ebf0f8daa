//! `flowlens check`: loads a stage's configuration exactly as that stage's binary does (its own
//! `Config` type, file plus `FLOWLENS_<STAGE>__*` environment, validation) without starting it.

use std::path::PathBuf;
use std::process::ExitCode;

use flowlens_runtime::service::ServiceConfig;
use flowlens_runtime::ConfigError;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The stage whose configuration this is.
    #[arg(long, value_enum)]
    stage: Stage,
    /// TOML file; without it only the environment and the defaults are checked, as the stage
    /// would run without --config.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Stage {
    Collector,
    Enricher,
    Sink,
}

/// Exit 0 when the stage would accept the configuration; 2 with the key named when not.
pub fn run(args: &Args) -> ExitCode {
    let file = args.config.as_deref();
    let (name, result) = match args.stage {
        Stage::Collector => (
            "collector",
            load::<flowlens_collector::Config>(file, flowlens_collector::config::ENV_PREFIX),
        ),
        Stage::Enricher => (
            "enricher",
            load::<flowlens_enricher::config::Config>(file, flowlens_enricher::config::ENV_PREFIX),
        ),
        Stage::Sink => (
            "sink",
            load::<flowlens_sink::Config>(file, flowlens_sink::config::ENV_PREFIX),
        ),
    };
    let source = file.map_or("defaults and environment".to_string(), |f| {
        f.display().to_string()
    });
    match result {
        Ok(()) => {
            println!("{source}: a valid {name} configuration");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flowlens check: {source}: not a valid {name} configuration: {e}");
            ExitCode::from(2)
        }
    }
}

/// What `runtime::service::run_main` does with the configuration before starting the stage.
fn load<C: ServiceConfig>(
    file: Option<&std::path::Path>,
    env_prefix: &str,
) -> Result<(), ConfigError> {
    flowlens_runtime::service::load::<C>(file, env_prefix).map(drop)
}
