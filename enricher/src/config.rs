//! Enricher configuration: the `[kafka]`, `[telemetry]`, `[enricher]`, `[kubernetes]` (defined
//! in [`crate::kubernetes::config`]) and `[dead_letter]` sections, their defaults and the checks
//! that name a bad key. Environment overrides use the `FLOWLENS_ENRICHER` prefix.

use flowlens_runtime::config::check_range;
use flowlens_runtime::dead_letter::DeadLetterConfig;
use flowlens_runtime::kafka::KafkaConfig;
use flowlens_runtime::telemetry::TelemetryConfig;
use flowlens_runtime::{ConfigError, Validate};
use serde::Deserialize;

use crate::kubernetes::config::KubernetesConfig;

/// Prefix of the environment overrides, e.g. `FLOWLENS_ENRICHER__KAFKA__BROKERS=127.0.0.1:19092`.
pub const ENV_PREFIX: &str = "FLOWLENS_ENRICHER";

/// The whole enricher configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub telemetry: TelemetryConfig,
    pub enricher: EnricherConfig,
    pub kubernetes: KubernetesConfig,
    pub dead_letter: DeadLetterConfig,
}

/// `[enricher]` section: settings of this stage only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnricherConfig {
    /// Consumer group reading the raw flows topic.
    pub group_id: String,
    /// How long to wait at start for the interface cache to catch up with the interfaces topic
    /// before enriching anyway (flows seen meanwhile get empty interface fields).
    pub interfaces_ready_timeout_ms: u64,
    /// Records consumed but not yet acknowledged by the broker (enriched or dead-lettered) at most.
    pub max_in_flight: usize,
}

impl Default for EnricherConfig {
    fn default() -> Self {
        Self {
            group_id: "flowlens-enricher".into(),
            interfaces_ready_timeout_ms: 10_000,
            max_in_flight: 100_000,
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate("kafka")?;
        self.telemetry.validate("telemetry")?;
        self.dead_letter.validate("dead_letter")?;
        let e = &self.enricher;
        if e.group_id.trim().is_empty() {
            return Err(ConfigError::invalid(
                "enricher.group_id",
                "must not be empty",
            ));
        }
        check_range(
            "enricher.interfaces_ready_timeout_ms",
            e.interfaces_ready_timeout_ms,
            0,
            600_000,
        )?;
        check_range(
            "enricher.max_in_flight",
            e.max_in_flight as u64,
            1,
            1_000_000,
        )?;
        self.kubernetes.validate("kubernetes")?;
        Ok(())
    }
}

impl flowlens_runtime::service::ServiceConfig for Config {
    fn telemetry(&self) -> &flowlens_runtime::telemetry::TelemetryConfig {
        &self.telemetry
    }

    /// Reads `kafka.sasl_password_file`.
    fn resolve(&mut self) -> Result<(), ConfigError> {
        self.kafka.resolve("kafka")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubernetes::config::Source;
    use flowlens_runtime::load_config;
    use std::io::Write;

    fn load(text: &str, env_prefix: &str) -> Result<Config, ConfigError> {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        load_config(Some(f.path()), env_prefix)
    }

    #[test]
    fn defaults_apply_to_an_empty_file() {
        let c = load("", "FLOWLENS_ENRICHER_TEST_A").unwrap();
        assert_eq!(c.enricher.group_id, "flowlens-enricher");
        assert_eq!(c.enricher.interfaces_ready_timeout_ms, 10_000);
        assert_eq!(c.enricher.max_in_flight, 100_000);
        assert_eq!(c.kafka.topics.raw_flows, "flowlens.flows.raw");
        assert_eq!(c.kubernetes.source, Source::None);
        assert_eq!(c.kubernetes.history_per_ip, 8);
    }

    #[test]
    fn kubernetes_section() {
        let c = load(
            "[kubernetes]\nsource = \"snapshot\"\nsnapshot_path = \"/tmp/k.json\"\ncluster_cidrs = [\"10.244.0.0/16\"]\n",
            "FLOWLENS_ENRICHER_TEST_G",
        )
        .unwrap();
        assert_eq!(c.kubernetes.source, Source::Snapshot);
        assert_eq!(c.kubernetes.cidrs().len(), 1);
        let e = load(
            "[kubernetes]\nsource = \"snapshot\"\n",
            "FLOWLENS_ENRICHER_TEST_H",
        )
        .unwrap_err();
        assert!(e.to_string().contains("kubernetes.snapshot_path"), "{e}");
        let e = load(
            "[kubernetes]\ncluster_cidrs = [\"10.0.0.0\"]\n",
            "FLOWLENS_ENRICHER_TEST_I",
        )
        .unwrap_err();
        assert!(e.to_string().contains("kubernetes.cluster_cidrs"), "{e}");
        let e = load(
            "[kubernetes]\nsource = \"etcd\"\n",
            "FLOWLENS_ENRICHER_TEST_J",
        )
        .unwrap_err();
        assert!(e.to_string().contains("source"), "{e}");
    }

    #[test]
    fn bad_keys_are_named() {
        let e = load(
            "[enricher]\nmax_in_flight = 0\n",
            "FLOWLENS_ENRICHER_TEST_B",
        )
        .unwrap_err();
        assert!(e.to_string().contains("enricher.max_in_flight"), "{e}");
        let e = load("[enricher]\ngroup_id = \" \"\n", "FLOWLENS_ENRICHER_TEST_C").unwrap_err();
        assert!(e.to_string().contains("enricher.group_id"), "{e}");
        let e = load("[enricher]\ngroup = \"x\"\n", "FLOWLENS_ENRICHER_TEST_D").unwrap_err();
        assert!(e.to_string().contains("group"), "{e}");
        let e = load(
            "[kafka]\nbrokers = [\"nohost\"]\n",
            "FLOWLENS_ENRICHER_TEST_E",
        )
        .unwrap_err();
        assert!(e.to_string().contains("kafka.brokers"), "{e}");
    }

    #[test]
    fn environment_overrides_brokers() {
        // SAFETY: the variable name is unique to this test.
        unsafe {
            std::env::set_var(
                "FLOWLENS_ENRICHER_TEST_F__KAFKA__BROKERS",
                "127.0.0.1:19092",
            )
        };
        let c = load("", "FLOWLENS_ENRICHER_TEST_F").unwrap();
        assert_eq!(c.kafka.brokers, vec!["127.0.0.1:19092".to_string()]);
    }
}
