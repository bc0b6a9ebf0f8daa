//! The HTTP server: the page's routes, the API under /api (behind the token), a request counter
//! per endpoint and status, served on `console.listen` until shutdown.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;

use crate::clickhouse::ClickHouse;
use crate::config::Group;
use crate::health::Health;
use crate::{assets, auth, explore, flows, health, topology};

/// What the handlers share.
pub struct App {
    pub clickhouse: ClickHouse,
    pub groups: Vec<Group>,
    pub raw_max_range_s: u64,
    pub token: Option<String>,
    pub health: Health,
}

/// The routes.
pub fn router(app: Arc<App>) -> Router {
    let api = Router::new()
        .route("/api/topology", get(topology::handler))
        .route("/api/explore", get(explore::handler))
        .route("/api/flows", get(flows::handler))
        .route("/api/health", get(health::handler))
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            auth::require_token,
        ));
    Router::new()
        .route("/", get(assets::index))
        .route("/app.js", get(assets::app_js))
        .route("/style.css", get(assets::style_css))
        .merge(api)
        .layer(middleware::from_fn(count_requests))
        .with_state(app)
}

/// Counts every request by route and status (`flowlens_console_requests_total`) and logs it.
async fn count_requests(request: Request, next: Next) -> Response {
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let start = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    metrics::counter!("flowlens_console_requests_total",
        "endpoint" => endpoint.clone(), "status" => status.to_string())
    .increment(1);
    tracing::debug!(%endpoint, status, ms = start.elapsed().as_millis() as u64, "request");
    response
}
