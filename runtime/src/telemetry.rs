//! Telemetry: structured `tracing` logs (text or JSON) and the Prometheus metrics endpoint.

use std::net::SocketAddr;

use serde::Deserialize;

/// `[telemetry]` section shared by every service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Address of the Prometheus `/metrics` endpoint; empty disables it.
    pub metrics_listen: String,
    /// `text` or `json`.
    pub log_format: String,
    /// An `EnvFilter` directive, overridden by `RUST_LOG`.
    pub log_level: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            metrics_listen: String::new(),
            log_format: "text".into(),
            log_level: "info".into(),
        }
    }
}

impl TelemetryConfig {
    pub fn validate(&self, section: &str) -> Result<(), crate::ConfigError> {
        if !self.metrics_listen.is_empty() && self.metrics_listen.parse::<SocketAddr>().is_err() {
            return Err(crate::ConfigError::invalid(
                format!("{section}.metrics_listen"),
                format!(
                    "`{}` is not an address like 127.0.0.1:9101",
                    self.metrics_listen
                ),
            ));
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(crate::ConfigError::invalid(
                format!("{section}.log_format"),
                format!("`{}` is not one of text, json", self.log_format),
            ));
        }
        Ok(())
    }
}

/// Installs the global tracing subscriber (idempotent: later calls are ignored).
pub fn init_logging(config: &TelemetryConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(config.log_level.as_str()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if config.log_format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Starts the Prometheus exporter on `metrics_listen` (if set). Must run inside a tokio runtime.
pub fn init_metrics(config: &TelemetryConfig) -> anyhow::Result<()> {
    if config.metrics_listen.is_empty() {
        return Ok(());
    }
    let addr: SocketAddr = config.metrics_listen.parse()?;
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| anyhow::anyhow!("metrics endpoint on {addr}: {e}"))?;
    tracing::info!(%addr, "prometheus metrics endpoint listening");
    Ok(())
}
