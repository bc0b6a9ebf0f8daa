//! The console's ClickHouse client: one SELECT per HTTP POST, values bound as query parameters
//! (`{p0:String}` in the SQL, `param_p0=` in the URL), answers read as JSONEachRow, every query
//! run with `readonly = 2` and a time limit.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;

use crate::config::ClickHouseConfig;

/// Values bound to a query: each [`Params::bind`] names one `{pN:Type}` placeholder.
#[derive(Debug, Default, Clone)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Binds `value` and returns the placeholder to put in the SQL (`{p3:String}`).
    pub fn bind(&mut self, ty: &str, value: impl Into<String>) -> String {
        let name = format!("p{}", self.0.len());
        let placeholder = format!("{{{name}:{ty}}}");
        self.0.push((name, value.into()));
        placeholder
    }
}

/// Why a query gave no rows.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// ClickHouse refused or failed the query: its own message.
    #[error("ClickHouse answered HTTP {status}: {message}")]
    Server { status: u16, message: String },
    #[error("ClickHouse at {url}: {message}")]
    Transport { url: String, message: String },
    #[error("ClickHouse did not answer within {0:?}")]
    Timeout(Duration),
    #[error("ClickHouse's answer could not be read: {0}")]
    Decode(String),
}

/// A client for the server of `[clickhouse]`.
#[derive(Clone)]
pub struct ClickHouse {
    http: Client<HttpConnector, Full<Bytes>>,
    url: String,
    database: String,
    user: String,
    password: String,
    timeout: Duration,
}

impl ClickHouse {
    pub fn new(config: &ClickHouseConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        connector.set_nodelay(true);
        Self {
            http: Client::builder(TokioExecutor::new()).build(connector),
            url: config.url.trim_end_matches('/').to_owned(),
            database: config.database.clone(),
            user: config.user.clone(),
            password: config.password.expose().to_owned(),
            timeout: Duration::from_millis(config.timeout_ms),
        }
    }

    /// Runs `sql` (a SELECT without SETTINGS or FORMAT) with `params` and decodes each row;
    /// `endpoint` labels the query's duration metric.
    pub async fn rows<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        sql: &str,
        params: &Params,
    ) -> Result<Vec<T>, QueryError> {
        let start = Instant::now();
        let result = tokio::time::timeout(self.timeout, self.send(sql, params))
            .await
            .unwrap_or(Err(QueryError::Timeout(self.timeout)));
        let seconds = start.elapsed().as_secs_f64();
        metrics::histogram!("flowlens_console_clickhouse_query_seconds", "endpoint" => endpoint)
            .record(seconds);
        let body = match result {
            Ok(body) => body,
            Err(e) => {
                metrics::counter!("flowlens_console_clickhouse_errors_total", "endpoint" => endpoint)
                    .increment(1);
                tracing::warn!(endpoint, error = %e, seconds, "ClickHouse query failed");
                return Err(e);
            }
        };
        let rows = body
            .split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| serde_json::from_slice(line).map_err(|e| QueryError::Decode(e.to_string())))
            .collect::<Result<Vec<T>, _>>()?;
        tracing::debug!(endpoint, rows = rows.len(), seconds, "ClickHouse query");
        Ok(rows)
    }

    async fn send(&self, sql: &str, params: &Params) -> Result<Bytes, QueryError> {
        let query = {
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair("database", &self.database);
            query.append_pair("output_format_json_quote_64bit_integers", "0");
            for (name, value) in &params.0 {
                query.append_pair(&format!("param_{name}"), value);
            }
            query.finish()
        };
        // readonly sits in the query's own SETTINGS: it holds for this query whatever the
        // connection or the server's session carries, and ends with it.
        let body = format!(
            "{sql}\nSETTINGS readonly = 2, max_execution_time = {}\nFORMAT JSONEachRow",
            self.timeout.as_secs().max(1)
        );
        let mut request = hyper::Request::post(format!("{}/?{query}", self.url))
            .header("X-ClickHouse-User", &self.user)
            .header("Content-Type", "text/plain; charset=UTF-8");
        if !self.password.is_empty() {
            request = request.header("X-ClickHouse-Key", &self.password);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| self.transport(e))?;
        let response = self
            .http
            .request(request)
            .await
            .map_err(|e| self.transport(e))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| self.transport(e))?
            .to_bytes();
        if status != 200 {
            let text = String::from_utf8_lossy(&body);
            return Err(QueryError::Server {
                status,
                message: text.trim().chars().take(2000).collect(),
            });
        }
        Ok(body)
    }

    fn transport(&self, e: impl std::error::Error) -> QueryError {
        QueryError::Transport {
            url: self.url.clone(),
            message: error_chain(&e),
        }
    }
}

/// An error and its sources, `outer: inner: ...` (hyper's own message alone says little).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
