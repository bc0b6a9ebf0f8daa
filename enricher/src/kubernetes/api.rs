//! Kubernetes API source: kube-rs watchers on Pods, Services, EndpointSlices, Nodes and the
//! owner chain (ReplicaSets, Jobs; metadata only), feeding the store.
//!
//! kube-runtime's `watcher` does the list-then-watch protocol: an initial list, then a watch
//! from its resourceVersion with bookmarks (`allowWatchBookmarks`) so the resume point stays
//! fresh; a watch that ends or drops is resumed from the last resourceVersion (with backoff);
//! `410 Gone` (resourceVersion too old) makes it re-list. Every list, first or re-list,
//! arrives here as one `Change::Replace`: objects that vanished while the watch was down are
//! closed at the re-list time. This is the reflector pattern, with the store keeping only the
//! compact per-address history the join needs instead of whole objects.
//!
//! RBAC: `get`, `list`, `watch` on pods, services, nodes (core), endpointslices
//! (discovery.k8s.io), replicasets (apps), jobs (batch); see
//! `deploy/kubernetes/rbac.yaml`.

use std::collections::HashSet;
use std::fmt::Debug;

use anyhow::Context as _;
use flowlens_runtime::Shutdown;
use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use super::config::KubernetesConfig;
use super::model::{Kind, Object};
use super::store::{Change, SharedStore};
use super::{now_ns, publish_stats};

/// A client from the configured kubeconfig, else in-cluster / $KUBECONFIG / ~/.kube/config.
pub async fn client(config: &KubernetesConfig) -> anyhow::Result<Client> {
    let options = kube::config::KubeConfigOptions {
        context: Some(config.context.clone()).filter(|c| !c.is_empty()),
        ..Default::default()
    };
    let kube_config = if config.kubeconfig.is_empty() {
        if options.context.is_some() {
            kube::Config::from_kubeconfig(&options).await?
        } else {
            kube::Config::infer().await?
        }
    } else {
        let kubeconfig = kube::config::Kubeconfig::read_from(&config.kubeconfig)
            .with_context(|| format!("reading kubeconfig {}", config.kubeconfig))?;
        kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?
    };
    Ok(Client::try_from(kube_config)?)
}

/// One message from a watcher task.
struct Update {
    kind: Kind,
    change: Change,
    /// This change is a complete list (initial or re-list).
    listed: bool,
}

/// Watches everything until `shutdown`; `ready` turns true once every kind was listed.
pub async fn run(
    config: &KubernetesConfig,
    store: SharedStore,
    ready: watch::Sender<bool>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let client = client(config).await.context("kubernetes client")?;
    let (tx, mut rx) = mpsc::channel::<Update>(1024);
    let wc = || watcher::Config::default();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(forward(
        Kind::Pod,
        watcher(Api::<Pod>::all(client.clone()), wc()).boxed(),
        tx.clone(),
    ));
    tasks.spawn(forward(
        Kind::Service,
        watcher(Api::<Service>::all(client.clone()), wc()).boxed(),
        tx.clone(),
    ));
    tasks.spawn(forward(
        Kind::EndpointSlice,
        watcher(Api::<EndpointSlice>::all(client.clone()), wc()).boxed(),
        tx.clone(),
    ));
    tasks.spawn(forward(
        Kind::Node,
        watcher(Api::<Node>::all(client.clone()), wc()).boxed(),
        tx.clone(),
    ));
    tasks.spawn(forward(
        Kind::Owner("ReplicaSet"),
        watcher(
            Api::<PartialObjectMeta<ReplicaSet>>::all(client.clone()),
            wc(),
        )
        .boxed(),
        tx.clone(),
    ));
    tasks.spawn(forward(
        Kind::Owner("Job"),
        watcher(Api::<PartialObjectMeta<Job>>::all(client.clone()), wc()).boxed(),
        tx,
    ));
    let all = 6;
    let mut listed: HashSet<Kind> = HashSet::new();
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => break,
            u = rx.recv() => match u { Some(u) => u, None => break },
        };
        // Apply what has queued up in one write lock.
        let mut batch = vec![first];
        while batch.len() < 512 {
            match rx.try_recv() {
                Ok(u) => batch.push(u),
                Err(_) => break,
            }
        }
        for u in &batch {
            if u.listed {
                if !listed.insert(u.kind) {
                    metrics::counter!("flowlens_enricher_kubernetes_relists_total").increment(1);
                    tracing::info!(kind = ?u.kind, "kubernetes re-list applied");
                }
            } else {
                metrics::counter!("flowlens_enricher_kubernetes_events_total").increment(1);
            }
        }
        let stats = {
            let mut s = store.write().unwrap_or_else(|p| p.into_inner());
            s.apply_all(batch.into_iter().map(|u| u.change), now_ns());
            if listed.len() == all {
                s.mark_synced();
            }
            s.stats()
        };
        publish_stats(&stats);
        if listed.len() == all && !*ready.borrow() {
            tracing::info!(
                pods = stats.pods,
                services = stats.services,
                nodes = stats.nodes,
                "kubernetes metadata listed"
            );
            let _ = ready.send(true);
        }
    }
    tasks.abort_all();
    Ok(())
}

/// A full-object watcher with the default backoff (retries forever, exponential, capped).
fn watcher<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + Debug + Send + 'static,
{
    watcher::watcher(api, config).default_backoff()
}

/// Turns watcher events of one kind into store changes; a list (Init .. InitDone) becomes one
/// `Replace`.
async fn forward<T: Serialize>(
    kind: Kind,
    mut events: futures::stream::BoxStream<'static, Result<Event<T>, watcher::Error>>,
    tx: mpsc::Sender<Update>,
) {
    let name = match kind {
        Kind::Pod => "Pod",
        Kind::Service => "Service",
        Kind::EndpointSlice => "EndpointSlice",
        Kind::Node => "Node",
        Kind::Owner(k) => k,
    };
    let mut listing: Option<Vec<Object>> = None;
    while let Some(event) = events.next().await {
        let update = match event {
            Ok(Event::Init) => {
                listing = Some(Vec::new());
                continue;
            }
            Ok(Event::InitApply(o)) => {
                if let (Some(list), Some(o)) = (listing.as_mut(), convert(name, &o)) {
                    list.push(o);
                }
                continue;
            }
            Ok(Event::InitDone) => Update {
                kind,
                change: Change::Replace(kind, listing.take().unwrap_or_default()),
                listed: true,
            },
            Ok(Event::Apply(o)) => match convert(name, &o) {
                Some(o) => Update {
                    kind,
                    change: Change::Upsert(o),
                    listed: false,
                },
                None => continue,
            },
            Ok(Event::Delete(o)) => match convert(name, &o) {
                Some(o) => Update {
                    kind,
                    change: Change::Delete(o),
                    listed: false,
                },
                None => continue,
            },
            Err(e) => {
                metrics::counter!("flowlens_enricher_kubernetes_watch_errors_total", "kind" => name)
                    .increment(1);
                tracing::warn!(kind = name, error = %e, "kubernetes watch error; retrying");
                continue;
            }
        };
        if tx.send(update).await.is_err() {
            return;
        }
    }
}

/// Typed object -> the compact model (through its JSON form, which is the API's).
fn convert<T: Serialize>(kind: &str, object: &T) -> Option<Object> {
    let value = match serde_json::to_value(object) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(kind, error = %e, "cannot serialize kubernetes object");
            return None;
        }
    };
    match Object::from_json(kind, value) {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(kind, error = %e, "cannot read kubernetes object");
            None
        }
    }
}
