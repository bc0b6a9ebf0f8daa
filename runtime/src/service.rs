//! The shape every flowlens binary shares: load and validate the configuration and read the
//! files it names (exit 2 naming the bad key), start logging, the tokio runtime, the metrics endpoint and signal handling, run
//! the stage until SIGTERM/SIGINT, and map the outcome to an exit code (0 clean, 1 failure).

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

use serde::de::DeserializeOwned;

use crate::telemetry::{self, TelemetryConfig};
use crate::{load_config, ConfigError, Shutdown, Validate};

/// A stage's configuration: validated, with a `[telemetry]` section.
pub trait ServiceConfig: DeserializeOwned + Validate {
    fn telemetry(&self) -> &TelemetryConfig;

    /// Reads what the validated configuration names by path (password files); errors name
    /// the key.
    fn resolve(&mut self) -> Result<(), ConfigError> {
        Ok(())
    }
}

/// The configuration as the binaries get it: file and environment, validated, resolved.
pub fn load<C: ServiceConfig>(file: Option<&Path>, env_prefix: &str) -> Result<C, ConfigError> {
    let mut config: C = load_config(file, env_prefix)?;
    config.resolve()?;
    Ok(config)
}

/// Runs `stage` as the process's main job; see the module doc.
pub fn run_main<C, F, Fut>(
    name: &str,
    config_file: Option<&Path>,
    env_prefix: &str,
    stage: F,
) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C, Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let config: C = match load(config_file, env_prefix) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_logging(config.telemetry());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        telemetry::init_metrics(config.telemetry())?;
        let shutdown = Shutdown::new();
        shutdown.on_signals()?;
        stage(config, shutdown).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "{name} failed");
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
