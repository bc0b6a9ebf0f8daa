//! Console configuration: `[console]`, `[clickhouse]`, `[telemetry]`, loaded from TOML plus
//! `FLOWLENS_CONSOLE__SECTION__KEY` environment overrides and validated key by key.

use std::net::SocketAddr;
use std::path::Path;

use flowlens_runtime::config::{check_range, read_secret_file, Secret};
use flowlens_runtime::telemetry::TelemetryConfig;
use flowlens_runtime::{ConfigError, Validate};
use serde::Deserialize;

use crate::net::Net;

/// Prefix of the environment overrides (`FLOWLENS_CONSOLE__CONSOLE__TOKEN=...`).
pub const ENV_PREFIX: &str = "FLOWLENS_CONSOLE";

/// The whole console configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub console: ConsoleConfig,
    pub clickhouse: ClickHouseConfig,
    pub telemetry: TelemetryConfig,
}

/// `[console]`: what the page and API serve.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Address the page and the API listen on.
    pub listen: String,
    /// When set, every /api/* request needs `Authorization: Bearer <token>`.
    pub token: Option<Secret>,
    /// Names for addresses of ends without a pod, first match wins.
    pub groups: Vec<GroupConfig>,
    /// Prometheus endpoints of the stages, for the health view.
    pub stages: Vec<StageConfig>,
    /// Ranges up to this many seconds read the raw `flows` table, longer ones the rollups.
    pub raw_max_range_s: u64,
    /// How often each stage is scraped, in milliseconds.
    pub scrape_interval_ms: u64,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9400".into(),
            token: None,
            groups: Vec::new(),
            stages: Vec::new(),
            raw_max_range_s: 21_600,
            scrape_interval_ms: 5_000,
        }
    }
}

/// `[[console.groups]]`: ends without a pod whose address lies in `cidr` show as node `name`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    pub name: String,
    pub cidr: String,
}

/// `[[console.stages]]`: a stage's Prometheus endpoint, e.g. http://127.0.0.1:9101/metrics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    pub name: String,
    pub url: String,
}

/// `[clickhouse]`: where the flows are read from (the sink's keys, same meaning).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP interface, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    pub database: String,
    /// Best the read-only `flowlens_analyst` of sql/security/users.sql.
    pub user: String,
    /// Never logged; best set through `FLOWLENS_CONSOLE__CLICKHOUSE__PASSWORD` or
    /// `password_file`.
    pub password: Secret,
    /// File holding the password (a mounted secret); trailing newlines are ignored.
    pub password_file: String,
    /// Upper bound on one query (send, run, read the answer), in milliseconds.
    pub timeout_ms: u64,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            database: "default".into(),
            user: "default".into(),
            password: Secret::default(),
            password_file: String::new(),
            timeout_ms: 30_000,
        }
    }
}

/// A `[[console.groups]]` entry, its CIDR parsed.
#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub net: Net,
}

impl ConsoleConfig {
    /// The groups with their CIDRs parsed (validated before).
    pub fn parsed_groups(&self) -> Vec<Group> {
        self.groups
            .iter()
            .filter_map(|g| {
                Some(Group {
                    name: g.name.clone(),
                    net: g.cidr.parse().ok()?,
                })
            })
            .collect()
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        self.telemetry.validate("telemetry")?;
        let c = &self.console;
        if c.listen.parse::<SocketAddr>().is_err() {
            return Err(ConfigError::invalid(
                "console.listen",
                format!("`{}` is not an address like 127.0.0.1:9400", c.listen),
            ));
        }
        if c.token
            .as_ref()
            .is_some_and(|t| t.expose().trim().is_empty())
        {
            return Err(ConfigError::invalid(
                "console.token",
                "is set but empty (leave it out to serve the API without a token)",
            ));
        }
        for (i, g) in c.groups.iter().enumerate() {
            if g.name.trim().is_empty() {
                return Err(ConfigError::invalid(
                    format!("console.groups[{i}].name"),
                    "must not be empty",
                ));
            }
            if let Err(e) = g.cidr.parse::<Net>() {
                return Err(ConfigError::invalid(format!("console.groups[{i}].cidr"), e));
            }
        }
        for (i, s) in c.stages.iter().enumerate() {
            if s.name.trim().is_empty() {
                return Err(ConfigError::invalid(
                    format!("console.stages[{i}].name"),
                    "must not be empty",
                ));
            }
            if crate::health::split_url(&s.url).is_none() {
                return Err(ConfigError::invalid(
                    format!("console.stages[{i}].url"),
                    format!(
                        "`{}` is not an http:// URL like http://127.0.0.1:9101/metrics",
                        s.url
                    ),
                ));
            }
        }
        check_range(
            "console.raw_max_range_s",
            c.raw_max_range_s,
            1,
            400 * 86_400,
        )?;
        check_range(
            "console.scrape_interval_ms",
            c.scrape_interval_ms,
            100,
            3_600_000,
        )?;
        let ch = &self.clickhouse;
        if !ch.url.starts_with("http://") || ch.url.len() <= "http://".len() {
            return Err(ConfigError::invalid(
                "clickhouse.url",
                format!("`{}` is not an http:// URL", ch.url),
            ));
        }
        if ch.database.is_empty()
            || !ch
                .database
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(ConfigError::invalid(
                "clickhouse.database",
                format!(
                    "`{}` must be a non-empty identifier [A-Za-z0-9_]",
                    ch.database
                ),
            ));
        }
        if ch.user.is_empty() {
            return Err(ConfigError::invalid("clickhouse.user", "must not be empty"));
        }
        if !ch.password.is_empty() && !ch.password_file.is_empty() {
            return Err(ConfigError::invalid(
                "clickhouse.password_file",
                "set either clickhouse.password or clickhouse.password_file, not both",
            ));
        }
        check_range("clickhouse.timeout_ms", ch.timeout_ms, 100, 3_600_000)?;
        Ok(())
    }
}

impl Config {
    /// What the binary does at start: the file (if any) and `FLOWLENS_CONSOLE__*` overrides,
    /// validated, then the files the configuration names.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        flowlens_runtime::service::load(file, ENV_PREFIX)
    }
}

impl flowlens_runtime::service::ServiceConfig for Config {
    fn telemetry(&self) -> &TelemetryConfig {
        &self.telemetry
    }

    /// Reads `clickhouse.password_file`.
    fn resolve(&mut self) -> Result<(), ConfigError> {
        let ch = &mut self.clickhouse;
        if !ch.password_file.is_empty() {
            ch.password = read_secret_file("clickhouse.password_file", &ch.password_file)?;
        }
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
        assert_eq!(c.console.listen, "127.0.0.1:9400");
        assert_eq!(c.console.raw_max_range_s, 21_600);
        assert!(c.console.token.is_none());
    }

    #[test]
    fn example_file_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("console.example.toml");
        let c = Config::load(Some(&path)).unwrap();
        assert_eq!(format!("{c:?}"), format!("{:?}", Config::default()));
    }

    #[test]
    fn bad_keys_are_named() {
        for (text, key) in [
            ("[console]\nlisten = \"nowhere\"\n", "console.listen"),
            ("[console]\ntoken = \"\"\n", "console.token"),
            (
                "[console]\nraw_max_range_s = 0\n",
                "console.raw_max_range_s",
            ),
            (
                "[[console.groups]]\nname = \"lan\"\ncidr = \"10.0.0.0/33\"\n",
                "console.groups[0].cidr",
            ),
            (
                "[[console.groups]]\nname = \"\"\ncidr = \"10.0.0.0/8\"\n",
                "console.groups[0].name",
            ),
            (
                "[[console.stages]]\nname = \"sink\"\nurl = \"https://x/metrics\"\n",
                "console.stages[0].url",
            ),
            ("[clickhouse]\nurl = \"tcp://x:9000\"\n", "clickhouse.url"),
            ("[clickhouse]\ndatabase = \"a;b\"\n", "clickhouse.database"),
            ("[clickhouse]\ntimeout_ms = 1\n", "clickhouse.timeout_ms"),
            ("[console]\nlsiten = \"x\"\n", "lsiten"),
        ] {
            let f = write(text);
            let e = Config::load(Some(f.path())).unwrap_err().to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }

    #[test]
    fn token_and_password_are_never_printed() {
        let f = write("[console]\ntoken = \"t0ken-xyz\"\n[clickhouse]\npassword = \"pw-abc\"\n");
        let c = Config::load(Some(f.path())).unwrap();
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("t0ken-xyz") && !shown.contains("pw-abc"),
            "{shown}"
        );
    }
}
