//! The `[kubernetes]` configuration section: where Kubernetes metadata comes from, the history
//! bounds and the cluster networks, their defaults and the checks that name a bad key.

use flowlens_runtime::config::check_range;
use flowlens_runtime::ConfigError;
use serde::Deserialize;

use super::classify::Cidr;
use super::history::Limits;

/// Where Kubernetes metadata comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// No Kubernetes metadata: the `src_*`/`dst_*` Kubernetes fields, roles and locality stay null.
    #[default]
    None,
    /// A `kubectl get pods,services,nodes,replicasets -A -o json` file, re-read on change.
    Snapshot,
    /// The API server (kube-rs watches): in-cluster service account, or a kubeconfig.
    Api,
}

/// `[kubernetes]` section: the Kubernetes metadata source and cache bounds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesConfig {
    pub source: Source,
    /// Snapshot file (source = "snapshot").
    pub snapshot_path: String,
    /// How often the snapshot file is checked for changes, ms.
    pub snapshot_poll_ms: u64,
    /// Kubeconfig file (source = "api"); empty: in-cluster config, else $KUBECONFIG or
    /// ~/.kube/config.
    pub kubeconfig: String,
    /// Kubeconfig context; empty: the current context.
    pub context: String,
    /// How long to wait at start for a first full view before enriching anyway, ms.
    pub ready_timeout_ms: u64,
    /// Assignments (pod/service/node that held it, with their time intervals) kept per address.
    pub history_per_ip: usize,
    /// Ended assignments kept over all addresses; the oldest-ended are evicted first.
    pub max_history: usize,
    /// Ended assignments older than this are dropped, seconds (flows later than this behind
    /// are attributed to nobody rather than to a wrong pod).
    pub history_retention_s: u64,
    /// Cluster networks (pod, service, node CIDRs): an unknown address inside them counts as
    /// in the cluster for `locality`.
    pub cluster_cidrs: Vec<String>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        Self {
            source: Source::None,
            snapshot_path: String::new(),
            snapshot_poll_ms: 2_000,
            kubeconfig: String::new(),
            context: String::new(),
            ready_timeout_ms: 10_000,
            history_per_ip: 8,
            max_history: 100_000,
            history_retention_s: 3_600,
            cluster_cidrs: Vec::new(),
        }
    }
}

impl KubernetesConfig {
    pub fn limits(&self) -> Limits {
        Limits {
            per_ip: self.history_per_ip,
            max_closed: self.max_history,
            retention_ns: (self.history_retention_s as i64).saturating_mul(1_000_000_000),
        }
    }

    /// The parsed `cluster_cidrs` (validated at load).
    pub fn cidrs(&self) -> Vec<Cidr> {
        self.cluster_cidrs
            .iter()
            .filter_map(|c| c.parse().ok())
            .collect()
    }

    /// Checks the section; errors name the key as `<section>.<key>`.
    pub fn validate(&self, section: &str) -> Result<(), ConfigError> {
        let key = |k: &str| format!("{section}.{k}");
        if self.source == Source::Snapshot && self.snapshot_path.trim().is_empty() {
            return Err(ConfigError::invalid(
                key("snapshot_path"),
                format!("must name a file when {} = \"snapshot\"", key("source")),
            ));
        }
        check_range(
            &key("snapshot_poll_ms"),
            self.snapshot_poll_ms,
            50,
            3_600_000,
        )?;
        check_range(&key("ready_timeout_ms"), self.ready_timeout_ms, 0, 600_000)?;
        check_range(&key("history_per_ip"), self.history_per_ip as u64, 1, 1_000)?;
        check_range(&key("max_history"), self.max_history as u64, 0, 100_000_000)?;
        check_range(
            &key("history_retention_s"),
            self.history_retention_s,
            1,
            30 * 86_400,
        )?;
        for cidr in &self.cluster_cidrs {
            cidr.parse::<Cidr>()
                .map_err(|e| ConfigError::invalid(key("cluster_cidrs"), e))?;
        }
        Ok(())
    }
}
