//! flowlens console: a web page (topology, explorer, health) and the JSON API behind it, reading
//! flows from ClickHouse and the stages' metrics from their Prometheus endpoints.

pub mod assets;
pub mod auth;
pub mod clickhouse;
pub mod config;
pub mod error;
pub mod explore;
pub mod filter;
pub mod flows;
pub mod health;
pub mod net;
pub mod node;
pub mod server;
pub mod topology;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use flowlens_runtime::Shutdown;

pub use config::Config;

/// Serves the console on `console.listen` until `shutdown`.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let c = &config.console;
    let health = health::Health::new(&c.stages);
    health.spawn_scraper(
        Duration::from_millis(c.scrape_interval_ms),
        shutdown.clone(),
    );
    let app = Arc::new(server::App {
        clickhouse: clickhouse::ClickHouse::new(&config.clickhouse),
        groups: c.parsed_groups(),
        raw_max_range_s: c.raw_max_range_s,
        token: c.token.as_ref().map(|t| t.expose().to_owned()),
        health,
    });
    let listener = tokio::net::TcpListener::bind(&c.listen)
        .await
        .with_context(|| format!("console.listen: cannot listen on {}", c.listen))?;
    tracing::info!(
        listen = %c.listen,
        clickhouse = %config.clickhouse.url,
        database = %config.clickhouse.database,
        token = c.token.is_some(),
        groups = c.groups.len(),
        stages = c.stages.len(),
        "console listening"
    );
    axum::serve(listener, server::router(app))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("serving the console")
}
