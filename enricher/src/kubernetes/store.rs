//! The Kubernetes metadata cache: the current objects (compact), kept by kind, and the
//! per-address [`History`] of who held which address when, which the join reads through
//! [`Store::lookup`]: one hash probe plus a scan of a few history entries per record.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, RwLock};

use flowlens_schemas::ip_to_v6;

use super::addressed::{key, parse_ip, sorted, Objects};
use super::history::{Assignment, History, Holder, Limits};
use super::model::{self, Kind, Meta, Object};
use super::peer::Peer;

/// A change from a source, observed at `now` (ns).
#[derive(Debug, Clone)]
pub enum Change {
    Upsert(Object),
    Delete(Object),
    /// A full list of one kind (initial list, re-list after 410 Gone, snapshot reload): objects
    /// of that kind not in it are gone.
    Replace(Kind, Vec<Object>),
}

#[derive(Debug, Clone)]
struct PodEntry {
    pod: Box<model::Pod>,
    /// Addresses the pod's assignments were opened for, and as whom.
    held: Vec<Ipv6Addr>,
    holder: Holder,
}

/// The cache. Writers: the sources; readers: the join, through [`SharedStore`].
#[derive(Debug, Default)]
pub struct Store {
    pods: HashMap<String, PodEntry>,
    pods_by_ns: HashMap<String, HashSet<String>>,
    services: Objects<model::Service>,
    slices: Objects<model::EndpointSlice>,
    nodes: Objects<model::Node>,
    /// Owner objects by UID: (kind, name, namespace, controller owner).
    owners: HashMap<String, model::Owner>,
    history: History,
    /// During a batch (a re-list), namespaces whose pods need their metadata recomputed.
    deferred: Option<HashSet<String>>,
    /// Whether any source has delivered a first complete view.
    synced: bool,
}

/// Sizes reported as metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub pods: usize,
    pub services: usize,
    pub endpoint_slices: usize,
    pub nodes: usize,
    pub owners: usize,
    pub addresses: usize,
    pub open: usize,
    pub closed: usize,
    pub evicted_total: u64,
}

pub type SharedStore = Arc<RwLock<Store>>;

impl Store {
    pub fn new(limits: Limits) -> Self {
        Self {
            history: History::new(limits),
            ..Default::default()
        }
    }

    /// Who held `addr` at `time` (ns): among the assignments whose interval contains `time`,
    /// the one that started last (a new holder wins over one whose end was not seen yet).
    pub fn lookup(&self, addr: &Ipv6Addr, time: i64) -> Option<&Arc<Peer>> {
        self.history.lookup(addr, time)
    }

    /// The history of one address (oldest first), for inspection and tests.
    pub fn history(&self, addr: IpAddr) -> Vec<Assignment> {
        self.history.of(&ip_to_v6(addr))
    }

    pub fn is_synced(&self) -> bool {
        self.synced
    }

    pub fn mark_synced(&mut self) {
        self.synced = true;
    }

    pub fn stats(&self) -> Stats {
        Stats {
            pods: self.pods.len(),
            services: self.services.count(),
            endpoint_slices: self.slices.count(),
            nodes: self.nodes.count(),
            owners: self.owners.len(),
            addresses: self.history.addresses(),
            open: self.history.open_count(),
            closed: self.history.closed_count(),
            evicted_total: self.history.evicted_total(),
        }
    }

    /// Applies one change observed at `now` (ns).
    pub fn apply(&mut self, change: Change, now: i64) {
        self.apply_all([change], now);
    }

    /// Applies several changes observed at `now`; pod metadata that depends on services,
    /// slices and owners is recomputed once per namespace at the end.
    pub fn apply_all(&mut self, changes: impl IntoIterator<Item = Change>, now: i64) {
        self.deferred = Some(HashSet::new());
        for change in changes {
            match change {
                Change::Upsert(o) => self.upsert(normalize(o), now),
                Change::Delete(o) => {
                    let o = normalize(o);
                    self.delete(o.kind(), o.meta(), now)
                }
                Change::Replace(kind, objects) => {
                    let objects: Vec<Object> = objects.into_iter().map(normalize).collect();
                    let present: HashSet<String> =
                        objects.iter().map(|o| ident(kind, o.meta())).collect();
                    let gone: Vec<Meta> = self
                        .metas(kind)
                        .into_iter()
                        .filter(|m| !present.contains(&ident(kind, m)))
                        .collect();
                    for m in gone {
                        self.delete(kind, &m, now);
                    }
                    for o in objects {
                        self.upsert(o, now);
                    }
                }
            }
        }
        let namespaces = self.deferred.take().unwrap_or_default();
        for ns in namespaces {
            self.refresh_namespace(&ns);
        }
        self.history.trim(now);
    }

    /// Metadata of every object of `kind` held now.
    fn metas(&self, kind: Kind) -> Vec<Meta> {
        match kind {
            Kind::Pod => self.pods.values().map(|p| p.pod.metadata.clone()).collect(),
            Kind::Service => self.services.metas().cloned().collect(),
            Kind::EndpointSlice => self.slices.metas().cloned().collect(),
            Kind::Node => self.nodes.metas().cloned().collect(),
            Kind::Owner(k) => self
                .owners
                .values()
                .filter(|o| o.kind == k)
                .map(|o| o.metadata.clone())
                .collect(),
        }
    }

    fn upsert(&mut self, object: Object, now: i64) {
        let ns = object.meta().namespace.clone();
        match object {
            Object::Pod(pod) => return self.upsert_pod(pod, now),
            Object::Service(s) => self.services.upsert(s, &mut self.history, now),
            Object::EndpointSlice(s) => self.slices.upsert(s, &mut self.history, now),
            // A node names no pod: no pod's metadata changes.
            Object::Node(n) => return self.nodes.upsert(n, &mut self.history, now),
            Object::Owner(owner) => {
                self.owners.insert(owner.metadata.uid.clone(), *owner);
            }
        }
        self.refresh_namespace(&ns);
    }

    fn delete(&mut self, kind: Kind, meta: &Meta, now: i64) {
        let removed = match kind {
            Kind::Pod => return self.delete_pod(&meta.uid, now),
            Kind::Service => self.services.delete(meta, &mut self.history, now),
            Kind::EndpointSlice => self.slices.delete(meta, &mut self.history, now),
            Kind::Node => {
                self.nodes.delete(meta, &mut self.history, now);
                return;
            }
            Kind::Owner(_) => self.owners.remove(&meta.uid).is_some(),
        };
        if removed {
            self.refresh_namespace(&meta.namespace);
        }
    }

    fn upsert_pod(&mut self, pod: Box<model::Pod>, now: i64) {
        let uid = pod.metadata.uid.clone();
        let ns = pod.metadata.namespace.clone();
        let host_network = pod.spec.host_network == Some(true);
        // A finished pod (Succeeded/Failed) keeps its object but no longer its address.
        let terminal = matches!(pod.status.phase.as_deref(), Some("Succeeded" | "Failed"));
        let ips = if terminal {
            Vec::new()
        } else {
            let ips = pod.status.pod_ips.iter().map(|e| e.ip.as_str());
            sorted(
                ips.chain(pod.status.pod_ip.as_deref())
                    .filter_map(parse_ip)
                    .collect(),
            )
        };
        let node = pod.spec.node_name.clone().unwrap_or_default();
        let (holder, peer, from) = if host_network {
            // The pod shares its node's addresses: they map to the node.
            (
                Holder::Node(node.clone()),
                Arc::new(Peer::node(&node)),
                None,
            )
        } else {
            let from = pod
                .status
                .start_time
                .as_deref()
                .and_then(model::parse_time)
                .or_else(|| {
                    pod.metadata
                        .creation_timestamp
                        .as_deref()
                        .and_then(model::parse_time)
                });
            (
                Holder::Pod(uid.clone()),
                Arc::new(self.pod_peer(&pod)),
                from,
            )
        };
        let old = self.pods.insert(
            uid.clone(),
            PodEntry {
                pod,
                held: ips.clone(),
                holder: holder.clone(),
            },
        );
        if let Some(old) = &old {
            if old.holder != holder {
                self.release(&old.holder, &old.held, now);
            }
        }
        let previous = old
            .filter(|o| o.holder == holder)
            .map(|o| o.held)
            .unwrap_or_default();
        self.history
            .reassign(&holder, previous, &ips, from, peer, now);
        self.pods_by_ns.entry(ns).or_default().insert(uid);
    }

    fn delete_pod(&mut self, uid: &str, now: i64) {
        let Some(entry) = self.pods.remove(uid) else {
            return;
        };
        self.release(&entry.holder, &entry.held, now);
        let ns = &entry.pod.metadata.namespace;
        if let Some(set) = self.pods_by_ns.get_mut(ns) {
            set.remove(uid);
            if set.is_empty() {
                self.pods_by_ns.remove(ns);
            }
        }
    }

    /// A pod's metadata from the owners, services and slices held now.
    fn pod_peer(&self, pod: &model::Pod) -> Peer {
        let ns = &pod.metadata.namespace;
        let (services, slices) = (self.services.in_namespace(ns), self.slices.in_namespace(ns));
        Peer::pod(pod, &self.owners, services, slices)
    }

    /// Recomputes the metadata of every pod in `ns` (after a service, slice or owner change);
    /// their open assignments take the new metadata.
    fn refresh_namespace(&mut self, ns: &str) {
        if let Some(deferred) = &mut self.deferred {
            deferred.insert(ns.to_string());
            return;
        }
        let Some(uids) = self.pods_by_ns.get(ns) else {
            return;
        };
        let mut updates = Vec::new();
        for uid in uids {
            if let Some(entry) = self.pods.get(uid) {
                if matches!(entry.holder, Holder::Pod(_)) {
                    let peer = self.pod_peer(&entry.pod);
                    updates.push((entry.holder.clone(), entry.held.clone(), peer));
                }
            }
        }
        for (holder, held, peer) in updates {
            self.history.update_open(&holder, &held, &Arc::new(peer));
        }
    }

    /// A pod lets go of its addresses. A hostNetwork pod's addresses are its node's: they stay
    /// open while the Node object or another hostNetwork pod on that node still lists them.
    fn release(&mut self, holder: &Holder, ips: &[Ipv6Addr], now: i64) {
        let Holder::Node(node) = holder else {
            self.history.close_all(holder, ips, now);
            return;
        };
        let still: Vec<Ipv6Addr> = ips
            .iter()
            .copied()
            .filter(|ip| {
                !self.nodes.get("", node).is_some_and(|n| n.ips.contains(ip))
                    && !self
                        .pods
                        .values()
                        .any(|p| p.holder == *holder && p.held.contains(ip))
            })
            .collect();
        self.history.close_all(holder, &still, now);
    }
}

/// Identity of an object within its kind: what a delete or re-list compares.
fn ident(kind: Kind, meta: &Meta) -> String {
    match kind {
        Kind::Pod | Kind::Owner(_) => meta.uid.clone(),
        Kind::Service | Kind::EndpointSlice => key(meta),
        Kind::Node => meta.name.clone(),
    }
}

/// Objects without a UID (hand-written snapshots) get `namespace/name` as one; nodes are
/// cluster-scoped, so a namespace written on one is ignored.
fn normalize(mut object: Object) -> Object {
    let meta = match &mut object {
        Object::Pod(o) => &mut o.metadata,
        Object::Owner(o) => &mut o.metadata,
        Object::Node(o) => {
            o.metadata.namespace.clear();
            return object;
        }
        _ => return object,
    };
    if meta.uid.is_empty() {
        meta.uid = key(meta);
    }
    object
}

#[cfg(test)]
mod tests;
