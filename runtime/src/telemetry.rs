//! Telemetry: structured `tracing` logs (text or JSON) and the endpoint serving Prometheus
//! metrics and the health probes.

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

/// Starts the endpoint on `metrics_listen` (if set): `/metrics` (Prometheus), `/healthz` and
/// `/readyz` (see [`crate::health`]). Must run inside a tokio runtime.
pub fn init_metrics(config: &TelemetryConfig) -> anyhow::Result<()> {
    if config.metrics_listen.is_empty() {
        return Ok(());
    }
    let addr: SocketAddr = config.metrics_listen.parse()?;
    let listener = std::net::TcpListener::bind(addr)
        .map_err(|e| anyhow::anyhow!("metrics endpoint on {addr}: {e}"))?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("metrics recorder: {e}"))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let _ = serve_one(stream, &handle).await;
            });
        }
    });
    tracing::info!(%addr, "metrics and health endpoint listening (/metrics, /healthz, /readyz)");
    Ok(())
}

/// Answers one HTTP/1.x request (GET only) and closes the connection.
async fn serve_one(
    mut stream: tokio::net::TcpStream,
    handle: &metrics_exporter_prometheus::PrometheusHandle,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut request = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let read = async {
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            request.extend_from_slice(&chunk[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), read)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let line = request.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => (200, "text/plain; version=0.0.4", handle.render()),
        ("GET", "/healthz") => {
            let (ok, text) = crate::health::liveness();
            (if ok { 200 } else { 503 }, "text/plain", text)
        }
        ("GET", "/readyz") => {
            let (ok, text) = crate::health::readiness();
            (if ok { 200 } else { 503 }, "text/plain", text)
        }
        ("GET", _) => (
            404,
            "text/plain",
            "not found: /metrics, /healthz, /readyz\n".into(),
        ),
        _ => (405, "text/plain", "only GET\n".into()),
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
