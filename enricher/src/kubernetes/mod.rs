//! Kubernetes metadata for the join: a cache of pods, services, EndpointSlices, nodes and the
//! owner chain ([`store`]) with the per-address [`history`] of what each address resolved to
//! ([`peer`]), fed by one of two sources: the API server through kube-rs watches (`api`,
//! cargo feature `kube`, on by default) or a `kubectl get -o json` snapshot file
//! ([`snapshot`]), as the `[kubernetes]` section ([`config`]) says. [`classify`] derives
//! locality and roles.

mod addressed;
#[cfg(feature = "kube")]
pub mod api;
pub mod classify;
pub mod config;
pub mod history;
pub mod model;
pub mod peer;
pub mod snapshot;
pub mod store;

use std::time::Duration;

use flowlens_runtime::Shutdown;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use config::{KubernetesConfig, Source};
use store::{SharedStore, Stats, Store};

/// Wall-clock time in Unix epoch nanoseconds (the flows' clock).
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Publishes the cache sizes as gauges.
pub fn publish_stats(s: &Stats) {
    for (kind, n) in [
        ("pod", s.pods),
        ("service", s.services),
        ("endpointslice", s.endpoint_slices),
        ("node", s.nodes),
        ("owner", s.owners),
    ] {
        metrics::gauge!("flowlens_enricher_kubernetes_objects", "kind" => kind).set(n as f64);
    }
    metrics::gauge!("flowlens_enricher_kubernetes_addresses").set(s.addresses as f64);
    metrics::gauge!("flowlens_enricher_kubernetes_assignments", "state" => "open")
        .set(s.open as f64);
    metrics::gauge!("flowlens_enricher_kubernetes_assignments", "state" => "closed")
        .set(s.closed as f64);
    metrics::gauge!("flowlens_enricher_kubernetes_history_evicted").set(s.evicted_total as f64);
}

/// Readiness condition (with a source configured): a first full view was loaded.
pub const CONDITION: &str = "kubernetes";

/// A running metadata source.
pub struct MetadataSource {
    pub store: SharedStore,
    ready: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl MetadataSource {
    /// Starts the configured source; `None` when `source = "none"`.
    pub fn start(config: &KubernetesConfig, shutdown: Shutdown) -> anyhow::Result<Option<Self>> {
        let store = SharedStore::new(std::sync::RwLock::new(Store::new(config.limits())));
        let (ready_tx, ready) = watch::channel(false);
        let task = match config.source {
            Source::None => return Ok(None),
            Source::Snapshot => tokio::spawn(snapshot::follow(
                config.snapshot_path.clone().into(),
                Duration::from_millis(config.snapshot_poll_ms),
                store.clone(),
                ready_tx,
                shutdown,
            )),
            #[cfg(feature = "kube")]
            Source::Api => {
                let store = store.clone();
                let config = config.clone();
                tokio::spawn(async move {
                    if let Err(e) = api::run(&config, store, ready_tx, shutdown).await {
                        tracing::error!(error = format!("{e:#}"), "kubernetes API source stopped");
                    }
                })
            }
            #[cfg(not(feature = "kube"))]
            Source::Api => anyhow::bail!(
                "kubernetes.source = \"api\" needs flowlens-enricher built with the `kube` feature"
            ),
        };
        let condition = flowlens_runtime::health::condition(CONDITION);
        condition.set_failing(format!(
            "waiting for a first full view from kubernetes.source = {:?}",
            config.source
        ));
        let mut loaded = ready.clone();
        tokio::spawn(async move {
            if loaded.wait_for(|ready| *ready).await.is_ok() {
                condition.set_ok();
            }
        });
        Ok(Some(Self { store, ready, task }))
    }

    /// Waits until the source delivered a first full view, at most `timeout`.
    pub async fn wait_ready(&mut self, timeout: Duration) -> bool {
        matches!(
            tokio::time::timeout(timeout, self.ready.wait_for(|ready| *ready)).await,
            Ok(Ok(_))
        )
    }

    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}
