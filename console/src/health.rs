//! The stages' health: each `[[console.stages]]` Prometheus endpoint scraped in the background,
//! the last two scrapes kept; `GET /api/health` shows whether a stage is up, the per-second
//! rates of its counters (records in and out, errors, dead letters...) between the two scrapes
//! and the values of its gauges (consumer lag, in-flight records...).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::Json;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use crate::config::StageConfig;
use crate::server::App;
use flowlens_runtime::Shutdown;

/// `(authority, path)` of an `http://host:port/path` URL, `None` for anything else.
pub fn split_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let valid = !authority.is_empty()
        && !authority.contains(['@', ' ', '?', '#'])
        && format!("http://{authority}{path}")
            .parse::<hyper::Uri>()
            .is_ok();
    valid.then(|| (authority.to_owned(), path.to_owned()))
}

/// What a metric family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// A scrape's counters and gauges, each summed over its label sets (histograms and summaries
/// are left out).
pub type Samples = BTreeMap<String, (Kind, f64)>;

/// Parses the Prometheus text format.
pub fn parse(text: &str) -> Samples {
    let mut types: BTreeMap<&str, &str> = BTreeMap::new();
    let mut out = Samples::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                types.insert(name, kind);
            }
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = sample(line) else {
            continue;
        };
        let kind = match types.get(name).copied() {
            Some("counter") => Kind::Counter,
            Some("gauge") => Kind::Gauge,
            Some(_) => continue,
            None if histogram_part(name, &types) => continue,
            None if name.ends_with("_total") => Kind::Counter,
            None => Kind::Gauge,
        };
        let entry = out.entry(name.to_owned()).or_insert((kind, 0.0));
        entry.1 += value;
    }
    out
}

/// Whether `name` is the `_bucket`, `_sum` or `_count` series of a histogram or summary.
fn histogram_part(name: &str, types: &BTreeMap<&str, &str>) -> bool {
    ["_bucket", "_sum", "_count"].iter().any(|suffix| {
        name.strip_suffix(suffix)
            .and_then(|family| types.get(family))
            .is_some_and(|t| matches!(*t, "histogram" | "summary"))
    })
}

/// `(name, value)` of a sample line `name{labels} value [timestamp]`.
fn sample(line: &str) -> Option<(&str, f64)> {
    let name_end = line.find(['{', ' ', '\t'])?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    if rest.starts_with('{') {
        let mut quoted = false;
        let mut escaped = false;
        let mut close = None;
        for (i, c) in rest.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                '}' if !quoted => {
                    close = Some(i);
                    break;
                }
                _ => {}
            }
        }
        rest = &rest[close? + 1..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    (!name.is_empty()).then_some((name, value))
}

/// One scrape: when, and the samples or why there are none.
#[derive(Debug, Clone)]
struct Scrape {
    at: Instant,
    result: Result<Samples, String>,
}

#[derive(Debug, Default)]
struct StageState {
    previous: Option<Scrape>,
    last: Option<Scrape>,
}

/// The stages and their last two scrapes.
#[derive(Clone)]
pub struct Health {
    stages: Arc<Vec<(StageConfig, Mutex<StageState>)>>,
}

#[derive(Debug, Serialize)]
pub struct HealthView {
    pub stages: Vec<StageView>,
}

#[derive(Debug, Serialize)]
pub struct StageView {
    pub name: String,
    pub url: String,
    pub up: bool,
    pub error: Option<String>,
    pub rates: BTreeMap<String, f64>,
    pub values: BTreeMap<String, f64>,
}

impl Health {
    pub fn new(stages: &[StageConfig]) -> Self {
        Self {
            stages: Arc::new(
                stages
                    .iter()
                    .map(|s| (s.clone(), Mutex::new(StageState::default())))
                    .collect(),
            ),
        }
    }

    /// Scrapes every stage each `interval` until `shutdown`.
    pub fn spawn_scraper(&self, interval: Duration, shutdown: Shutdown) {
        let client: Client<HttpConnector, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build(HttpConnector::new());
        let timeout = interval.clamp(Duration::from_secs(1), Duration::from_secs(10));
        for i in 0..self.stages.len() {
            let (health, client, shutdown) = (self.clone(), client.clone(), shutdown.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tick.tick() => {}
                    }
                    let (stage, state) = &health.stages[i];
                    let result = scrape(&client, &stage.url, timeout).await;
                    let outcome = if result.is_ok() { "ok" } else { "error" };
                    metrics::counter!("flowlens_console_scrapes_total",
                        "stage" => stage.name.clone(), "result" => outcome)
                    .increment(1);
                    if let Err(e) = &result {
                        tracing::debug!(stage = %stage.name, url = %stage.url, error = %e, "scrape failed");
                    }
                    let mut s = state.lock().expect("health state lock");
                    s.previous = s.last.take();
                    s.last = Some(Scrape {
                        at: Instant::now(),
                        result: result.map(|text| parse(&text)),
                    });
                }
            });
        }
    }

    /// What `/api/health` answers.
    pub fn view(&self) -> HealthView {
        let stages = self
            .stages
            .iter()
            .map(|(stage, state)| {
                let s = state.lock().expect("health state lock");
                let mut view = StageView {
                    name: stage.name.clone(),
                    url: stage.url.clone(),
                    up: false,
                    error: None,
                    rates: BTreeMap::new(),
                    values: BTreeMap::new(),
                };
                match s.last.as_ref().map(|l| (l.at, &l.result)) {
                    None => view.error = Some("not scraped yet".into()),
                    Some((_, Err(e))) => view.error = Some(e.clone()),
                    Some((at, Ok(last))) => {
                        view.up = true;
                        for (name, (kind, value)) in last {
                            if *kind == Kind::Gauge {
                                view.values.insert(name.clone(), *value);
                            }
                        }
                        if let Some(Scrape {
                            at: before,
                            result: Ok(previous),
                        }) = &s.previous
                        {
                            let dt = at.duration_since(*before).as_secs_f64();
                            view.rates = rates(previous, last, dt);
                        }
                    }
                }
                view
            })
            .collect();
        HealthView { stages }
    }
}

/// Per-second increase of each counter between two scrapes `dt` seconds apart (a counter that
/// went down, a restart, is left out).
pub fn rates(previous: &Samples, last: &Samples, dt: f64) -> BTreeMap<String, f64> {
    if dt <= 0.0 {
        return BTreeMap::new();
    }
    last.iter()
        .filter(|(_, (kind, _))| *kind == Kind::Counter)
        .filter_map(|(name, (_, now))| {
            let (_, before) = previous.get(name)?;
            (now >= before).then(|| (name.clone(), (now - before) / dt))
        })
        .collect()
}

async fn scrape(
    client: &Client<HttpConnector, Empty<Bytes>>,
    url: &str,
    timeout: Duration,
) -> Result<String, String> {
    let get = async {
        let response = client
            .get(url.parse::<hyper::Uri>().map_err(|e| e.to_string())?)
            .await
            .map_err(|e| crate::clickhouse::error_chain(&e))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        String::from_utf8(body.to_vec()).map_err(|_| "the answer is not UTF-8".to_owned())
    };
    tokio::time::timeout(timeout, get)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

pub async fn handler(State(app): State<Arc<App>>) -> Json<HealthView> {
    Json(app.health.view())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP flowlens_sink_rows_inserted_total rows\n\
        # TYPE flowlens_sink_rows_inserted_total counter\n\
        flowlens_sink_rows_inserted_total{table=\"flows\"} 100\n\
        flowlens_sink_rows_inserted_total{table=\"a b}\"} 20\n\
        # TYPE flowlens_consumer_lag_records gauge\n\
        flowlens_consumer_lag_records{partition=\"0\"} 3 1700000000000\n\
        flowlens_consumer_lag_records{partition=\"1\"} 4\n\
        # TYPE flowlens_sink_batch_rows histogram\n\
        flowlens_sink_batch_rows_bucket{le=\"+Inf\"} 5\n\
        flowlens_sink_batch_rows_sum 50\n\
        flowlens_sink_batch_rows_count 5\n\
        flowlens_untyped_total 7\n";

    #[test]
    fn parses_counters_and_gauges_summed_over_labels() {
        let s = parse(TEXT);
        assert_eq!(
            s["flowlens_sink_rows_inserted_total"],
            (Kind::Counter, 120.0)
        );
        assert_eq!(s["flowlens_consumer_lag_records"], (Kind::Gauge, 7.0));
        assert_eq!(s["flowlens_untyped_total"], (Kind::Counter, 7.0));
        assert!(
            !s.keys().any(|k| k.starts_with("flowlens_sink_batch_rows")),
            "{s:?}"
        );
    }

    #[test]
    fn rates_are_per_second_and_skip_resets() {
        let before = parse("a_total 10\nb_total 50\ng 1\n");
        let after = parse("a_total 30\nb_total 5\ng 2\n");
        let r = rates(&before, &after, 2.0);
        assert_eq!(r.get("a_total"), Some(&10.0));
        assert!(!r.contains_key("b_total") && !r.contains_key("g"), "{r:?}");
    }

    #[test]
    fn only_http_urls() {
        assert_eq!(
            split_url("http://127.0.0.1:9101/metrics"),
            Some(("127.0.0.1:9101".into(), "/metrics".into()))
        );
        assert!(split_url("https://x/metrics").is_none());
        assert!(split_url("http:///metrics").is_none());
        assert!(split_url("127.0.0.1:9101").is_none());
    }
}
