//! Sink configuration: `[kafka]`, `[telemetry]`, `[clickhouse]`, `[batch]`, `[sink]`, `[retention]`,
//! `[dead_letter]`, loaded from TOML plus `FLOWLENS_SINK__SECTION__KEY` environment overrides and
//! validated key by key.

use std::path::Path;
use std::time::Duration;

use flowlens_runtime::config::{check_file, check_range, read_secret_file, Secret};
use flowlens_runtime::dead_letter::DeadLetterConfig;
use flowlens_runtime::kafka::KafkaConfig;
use flowlens_runtime::telemetry::TelemetryConfig;
use flowlens_runtime::{ConfigError, Validate};
use serde::Deserialize;

/// Prefix of the environment overrides (`FLOWLENS_SINK__CLICKHOUSE__PASSWORD=...`).
pub const ENV_PREFIX: &str = "FLOWLENS_SINK";

/// The whole sink configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub telemetry: TelemetryConfig,
    pub clickhouse: ClickHouseConfig,
    pub batch: BatchConfig,
    pub sink: SinkConfig,
    pub retention: RetentionConfig,
    pub dead_letter: DeadLetterConfig,
}

/// `[clickhouse]`: where rows go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP interface, e.g. `http://127.0.0.1:8123` or `https://clickhouse:8443`.
    pub url: String,
    pub database: String,
    /// The table the sink inserts into and reads back from. With `cluster`, the local
    /// replicated table of the shard `url` points to (see `cluster`).
    pub table: String,
    /// Name of a cluster of the server's `remote_servers` ([A-Za-z_][A-Za-z0-9_]*); empty: one
    /// server. Set, the migrations run `ON CLUSTER` with Replicated* engines and create a
    /// Distributed `<table>_distributed` for reads of every table (sql/README.md, Cluster).
    pub cluster: String,
    pub user: String,
    /// Never logged; best set through `FLOWLENS_SINK__CLICKHOUSE__PASSWORD` or read from
    /// `password_file`.
    pub password: Secret,
    /// File holding the password (e.g. a mounted secret); trailing newlines are ignored. Read
    /// at start instead of `password`.
    pub password_file: String,
    /// https:// only: PEM file of the CA(s) that signed the server's certificate; empty: the
    /// system's CA certificates. The server's name is always verified.
    pub tls_ca_file: String,
    /// https:// only: client certificate (PEM) with `tls_key_file`, for servers that ask for one.
    pub tls_cert_file: String,
    pub tls_key_file: String,
    /// Check the table's column types (system.columns) against the rows the sink writes, once
    /// before the first insert and after any failed one. Turn off for servers too old to
    /// describe their columns the same way (ClickHouse < 24.x, e.g. 18.16).
    pub validation: bool,
    /// Upper bound on one INSERT (send and server acknowledgement) and on each read-back query,
    /// in milliseconds.
    pub timeout_ms: u64,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            database: "default".into(),
            table: "flows".into(),
            cluster: String::new(),
            user: "default".into(),
            password: Secret::default(),
            password_file: String::new(),
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            validation: true,
            timeout_ms: 30_000,
        }
    }
}

impl ClickHouseConfig {
    /// The URL and, for https://, whose certificates it trusts: for error messages.
    pub fn endpoint(&self) -> String {
        if !self.url.starts_with("https://") {
            return self.url.clone();
        }
        if self.tls_ca_file.is_empty() {
            format!("{} (TLS, the system's CA certificates)", self.url)
        } else {
            format!(
                "{} (TLS, CA file `{}` from clickhouse.tls_ca_file)",
                self.url, self.tls_ca_file
            )
        }
    }
}

/// `[batch]`: one batch per Kafka partition, written when any limit is reached.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    pub max_rows: usize,
    /// RowBinary size of the rows (before LZ4).
    pub max_bytes: usize,
    /// Age of the oldest record in the batch. 1 s by default: with two INSERTs in flight the
    /// end-to-end p99 stays within ~2 s at 60 % of saturation (bench/README.md).
    pub max_age_ms: u64,
    /// Adaptive age limit: a partition whose batches are cut by age with fewer than
    /// `small_batch_rows` rows waits twice as long for the next one, up to this (so trickles do
    /// not make one part per partition every `max_age_ms`). Back to `max_age_ms` when a batch
    /// fills up. Values below `max_age_ms` disable the adaptation.
    pub max_idle_age_ms: u64,
    pub small_batch_rows: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_rows: 50_000,
            max_bytes: 32 * 1024 * 1024,
            max_age_ms: 1_000,
            max_idle_age_ms: 8_000,
            small_batch_rows: 1_000,
        }
    }
}

impl BatchConfig {
    pub fn max_age(&self) -> Duration {
        Duration::from_millis(self.max_age_ms)
    }

    pub fn max_idle_age(&self) -> Duration {
        Duration::from_millis(self.max_idle_age_ms)
    }
}

/// `[retention]`: TTLs in days, applied by `flowlens-sink migrate` (and by the sink at start
/// when `sink.migrate_on_start`) with `ALTER TABLE ... MODIFY TTL`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// The raw `flows` table.
    pub raw_days: u32,
    /// The per-minute rollups (`flows_*_1m`).
    pub minute_days: u32,
    /// The per-hour rollups (`flows_*_1h`).
    pub hour_days: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            raw_days: 30,
            minute_days: 90,
            hour_days: 400,
        }
    }
}

/// `[sink]`: consumer group, migrations and retry policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    pub group_id: String,
    /// Apply missing `sql/migrations` before consuming.
    pub migrate_on_start: bool,
    /// First wait after a failed insert; doubles up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            group_id: "flowlens-sink".into(),
            migrate_on_start: true,
            retry_initial_ms: 200,
            retry_max_ms: 10_000,
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate("kafka")?;
        self.telemetry.validate("telemetry")?;
        self.dead_letter.validate("dead_letter")?;
        let ch = &self.clickhouse;
        let scheme_ok = ch.url.starts_with("http://") || ch.url.starts_with("https://");
        if !scheme_ok || ch.url.len() <= "https://".len() {
            return Err(ConfigError::invalid(
                "clickhouse.url",
                format!("`{}` is not an http:// or https:// URL", ch.url),
            ));
        }
        for (key, value) in [
            ("clickhouse.database", &ch.database),
            ("clickhouse.table", &ch.table),
        ] {
            if value.is_empty() || !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(ConfigError::invalid(
                    key,
                    format!("`{value}` must be a non-empty identifier [A-Za-z0-9_]"),
                ));
            }
        }
        let mut cluster = ch.cluster.chars();
        let plain = cluster
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && cluster.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ch.cluster.is_empty() && !plain {
            return Err(ConfigError::invalid(
                "clickhouse.cluster",
                format!(
                    "`{}` must be empty (one server) or a cluster name [A-Za-z_][A-Za-z0-9_]*",
                    ch.cluster
                ),
            ));
        }
        check_range("clickhouse.timeout_ms", ch.timeout_ms, 100, 3_600_000)?;
        // At most ClickHouse's default max_insert_block_size: a batch is one block, so one part,
        // stored whole or not at all (ARCHITECTURE.md, Delivery).
        check_range("batch.max_rows", self.batch.max_rows as u64, 1, 1_048_576)?;
        check_range(
            "batch.max_bytes",
            self.batch.max_bytes as u64,
            1024,
            1 << 32,
        )?;
        check_range("batch.max_age_ms", self.batch.max_age_ms, 1, 3_600_000)?;
        check_range(
            "batch.max_idle_age_ms",
            self.batch.max_idle_age_ms,
            1,
            3_600_000,
        )?;
        check_range(
            "retention.raw_days",
            self.retention.raw_days.into(),
            1,
            36_500,
        )?;
        check_range(
            "retention.minute_days",
            self.retention.minute_days.into(),
            1,
            36_500,
        )?;
        check_range(
            "retention.hour_days",
            self.retention.hour_days.into(),
            1,
            36_500,
        )?;
        if !ch.password.is_empty() && !ch.password_file.is_empty() {
            return Err(ConfigError::invalid(
                "clickhouse.password_file",
                "set either clickhouse.password or clickhouse.password_file, not both",
            ));
        }
        for (key, path) in [
            ("clickhouse.tls_ca_file", &ch.tls_ca_file),
            ("clickhouse.tls_cert_file", &ch.tls_cert_file),
            ("clickhouse.tls_key_file", &ch.tls_key_file),
        ] {
            if !path.is_empty() && !ch.url.starts_with("https://") {
                return Err(ConfigError::invalid(
                    key,
                    format!("is set but clickhouse.url `{}` is not https://", ch.url),
                ));
            }
            check_file(key, path)?;
        }
        if ch.tls_cert_file.is_empty() != ch.tls_key_file.is_empty() {
            return Err(ConfigError::invalid(
                "clickhouse.tls_key_file",
                "a client certificate needs both tls_cert_file and tls_key_file",
            ));
        }
        if self.sink.group_id.trim().is_empty() {
            return Err(ConfigError::invalid("sink.group_id", "must not be empty"));
        }
        check_range(
            "sink.retry_initial_ms",
            self.sink.retry_initial_ms,
            1,
            600_000,
        )?;
        check_range(
            "sink.retry_max_ms",
            self.sink.retry_max_ms,
            self.sink.retry_initial_ms,
            3_600_000,
        )?;
        Ok(())
    }
}

impl Config {
    /// What the binary does at start: the file (if any) and `FLOWLENS_SINK__*` overrides,
    /// validated, then the files the configuration names (`ServiceConfig::resolve`).
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        flowlens_runtime::service::load(file, ENV_PREFIX)
    }
}

impl flowlens_runtime::service::ServiceConfig for Config {
    fn telemetry(&self) -> &flowlens_runtime::telemetry::TelemetryConfig {
        &self.telemetry
    }

    /// Reads `clickhouse.password_file` and `kafka.sasl_password_file`, and loads the TLS files
    /// once so that a bad certificate stops the sink at start, naming its key.
    fn resolve(&mut self) -> Result<(), ConfigError> {
        self.kafka.resolve("kafka")?;
        let ch = &mut self.clickhouse;
        if !ch.password_file.is_empty() {
            ch.password = read_secret_file("clickhouse.password_file", &ch.password_file)?;
        }
        crate::tls::client_config(ch)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn defaults_are_valid() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.clickhouse.url, "http://127.0.0.1:8123");
        assert_eq!(c.batch.max_bytes, 32 * 1024 * 1024);
        assert_eq!(c.sink.group_id, "flowlens-sink");
        assert!(c.clickhouse.validation && c.sink.migrate_on_start);
    }

    #[test]
    fn bad_keys_are_named() {
        let f = write("[clickhouse]\nurl = \"tcp://x:9000\"\n");
        let e = Config::load(Some(f.path())).unwrap_err().to_string();
        assert!(e.contains("clickhouse.url"), "{e}");

        for rows in [0, 1_048_577] {
            let f = write(&format!("[batch]\nmax_rows = {rows}\n"));
            let e = Config::load(Some(f.path())).unwrap_err().to_string();
            assert!(e.contains("batch.max_rows"), "{e}");
        }

        let f = write("[sink]\nretry_initial_ms = 500\nretry_max_ms = 100\n");
        let e = Config::load(Some(f.path())).unwrap_err().to_string();
        assert!(e.contains("sink.retry_max_ms"), "{e}");

        let f = write("[clickhouse]\ntabel = \"x\"\n");
        let e = Config::load(Some(f.path())).unwrap_err().to_string();
        assert!(e.contains("tabel"), "{e}");

        let f = write("[clickhouse]\ntable = \"flows; DROP\"\n");
        let e = Config::load(Some(f.path())).unwrap_err().to_string();
        assert!(e.contains("clickhouse.table"), "{e}");

        for bad in [
            "9lives",
            "a-b",
            "a.b",
            "`a`",
            "c' ON CLUSTER x",
            "ünï",
            " c",
        ] {
            let f = write(&format!("[clickhouse]\ncluster = {bad:?}\n"));
            let e = Config::load(Some(f.path())).unwrap_err().to_string();
            assert!(e.contains("clickhouse.cluster"), "{bad}: {e}");
        }
        for good in ["flows_cluster", "_c", "C2"] {
            let f = write(&format!("[clickhouse]\ncluster = {good:?}\n"));
            assert_eq!(
                Config::load(Some(f.path())).unwrap().clickhouse.cluster,
                good
            );
        }
    }

    #[test]
    fn example_file_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("sink.example.toml");
        let c = Config::load(Some(&path)).unwrap();
        let d = Config::default();
        assert_eq!(format!("{c:?}"), format!("{d:?}"));
    }

    #[test]
    fn password_comes_from_a_file() {
        let mut secret = tempfile::NamedTempFile::new().unwrap();
        secret.write_all(b"s3cret\n").unwrap();
        let f = write(&format!(
            "[clickhouse]\npassword_file = {:?}\n",
            secret.path().display().to_string()
        ));
        let c = Config::load(Some(f.path())).unwrap();
        assert_eq!(c.clickhouse.password.expose(), "s3cret");
        assert!(!format!("{c:?}").contains("s3cret"));
        let f = write("[clickhouse]\npassword = \"x\"\npassword_file = \"/nonexistent\"\n");
        let e = Config::load(Some(f.path())).unwrap_err().to_string();
        assert!(e.contains("password_file"), "{e}");
    }

    #[test]
    fn password_is_never_printed() {
        let c = ClickHouseConfig {
            password: Secret::new("hunter2"),
            ..Default::default()
        };
        let shown = format!(
            "{:?}",
            Config {
                clickhouse: c,
                ..Default::default()
            }
        );
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
