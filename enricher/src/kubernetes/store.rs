//! The Kubernetes metadata cache: the current objects (compact) and, per IP address, a bounded
//! history of who held it when. A flow is attributed to the holder of the address *at the
//! flow's time*, so an IP reused by another pod does not rewrite the past.
//!
//! Every address maps to a [`Peer`] with everything a flow needs already resolved (pod,
//! namespace, workload through the owner chain, services, node, ports served), so the per-record
//! lookup is one hash probe plus a scan of a few history entries.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, RwLock};

use flowlens_schemas::ip_to_v6;

use crate::fasthash::FastMap;

use super::model::{self, Kind, Meta, Object, SERVICE_NAME_LABEL};

/// Open end of an interval: the holder still holds the address.
pub const OPEN: i64 = i64::MAX;

/// What an address belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    /// A pod with its own network namespace.
    Pod,
    /// A node address (also what a hostNetwork pod's address maps to).
    Node,
    /// A Service ClusterIP.
    Service,
    /// An EndpointSlice address without a pod behind it (e.g. an external endpoint).
    Endpoint,
}

/// Everything the enricher writes about one end of a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub kind: PeerKind,
    pub pod: Option<String>,
    pub pod_uid: Option<String>,
    pub namespace: Option<String>,
    pub workload: Option<String>,
    pub workload_kind: Option<String>,
    pub node: Option<String>,
    /// Services (comma-separated, sorted) selecting the pod, or the service of a ClusterIP.
    pub service: Option<String>,
    /// (IP protocol number, port) this end serves: container ports, service ports.
    pub server_ports: Vec<(u8, u16)>,
}

/// Who held an address from `from` (inclusive) until `until` (exclusive, [`OPEN`] if still).
#[derive(Debug, Clone)]
pub struct Assignment {
    pub from: i64,
    pub until: i64,
    pub holder: Holder,
    pub peer: Arc<Peer>,
}

/// The object behind an assignment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Holder {
    /// Pod UID.
    Pod(String),
    /// Node name.
    Node(String),
    /// namespace/name.
    Service(String),
    /// namespace/name of the EndpointSlice.
    Slice(String),
}

/// Bounds of the history.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Assignments kept per address (the open one and the most recent closed ones).
    pub per_ip: usize,
    /// Closed assignments kept over all addresses; the oldest-ended go first.
    pub max_closed: usize,
    /// Closed assignments that ended longer ago than this are dropped (ns).
    pub retention_ns: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_ip: 8,
            max_closed: 100_000,
            retention_ns: 3_600 * 1_000_000_000,
        }
    }
}

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
    /// Addresses (and holder kind) the pod's assignments were opened for.
    held: Vec<Ipv6Addr>,
    holder: Holder,
}

#[derive(Debug, Clone)]
struct ServiceEntry {
    service: Box<model::Service>,
    ips: Vec<Ipv6Addr>,
}

#[derive(Debug, Clone)]
struct SliceEntry {
    slice: Box<model::EndpointSlice>,
    /// Addresses without a pod behind them.
    ips: Vec<Ipv6Addr>,
}

#[derive(Debug, Clone)]
struct NodeEntry {
    ips: Vec<Ipv6Addr>,
}

/// The cache. Writers: the sources; readers: the join, through [`SharedStore`].
#[derive(Debug, Default)]
pub struct Store {
    limits: Limits,
    pods: HashMap<String, PodEntry>,
    pods_by_ns: HashMap<String, HashSet<String>>,
    /// namespace -> name -> service.
    services: HashMap<String, HashMap<String, ServiceEntry>>,
    /// namespace -> name -> EndpointSlice.
    slices: HashMap<String, HashMap<String, SliceEntry>>,
    nodes: HashMap<String, NodeEntry>,
    /// Owner objects by UID: (kind, name, namespace, controller owner).
    owners: HashMap<String, model::Owner>,
    ips: FastMap<Ipv6Addr, VecDeque<Assignment>>,
    closed: usize,
    /// No closed assignment ended before this (a lower bound: sweeps recompute it).
    oldest_closed: i64,
    evicted: u64,
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

fn key(meta: &Meta) -> String {
    format!("{}/{}", meta.namespace, meta.name)
}

fn parse_ip(s: &str) -> Option<Ipv6Addr> {
    s.parse::<IpAddr>().ok().map(ip_to_v6)
}

fn proto_number(p: Option<&str>) -> u8 {
    match p.unwrap_or("TCP") {
        "UDP" => 17,
        "SCTP" => 132,
        _ => 6,
    }
}

fn port(p: i32) -> Option<u16> {
    u16::try_from(p).ok().filter(|&p| p != 0)
}

impl Store {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            oldest_closed: OPEN,
            ..Default::default()
        }
    }

    /// Who held `addr` at `time` (ns): among the assignments whose interval contains `time`,
    /// the one that started last (a new holder wins over one whose end was not seen yet).
    pub fn lookup(&self, addr: &Ipv6Addr, time: i64) -> Option<&Arc<Peer>> {
        let history = self.ips.get(addr)?;
        let mut best: Option<&Assignment> = None;
        for a in history {
            if a.from <= time && time < a.until && best.is_none_or(|b| a.from >= b.from) {
                best = Some(a);
            }
        }
        best.map(|a| &a.peer)
    }

    /// The history of one address (oldest first), for inspection and tests.
    pub fn history(&self, addr: IpAddr) -> Vec<Assignment> {
        self.ips
            .get(&ip_to_v6(addr))
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default()
    }

    pub fn is_synced(&self) -> bool {
        self.synced
    }

    pub fn mark_synced(&mut self) {
        self.synced = true;
    }

    pub fn stats(&self) -> Stats {
        let addresses = self.ips.len();
        let total: usize = self.ips.values().map(VecDeque::len).sum();
        Stats {
            pods: self.pods.len(),
            services: self.services.values().map(HashMap::len).sum(),
            endpoint_slices: self.slices.values().map(HashMap::len).sum(),
            nodes: self.nodes.len(),
            owners: self.owners.len(),
            addresses,
            open: total - self.closed,
            closed: self.closed,
            evicted_total: self.evicted,
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
        self.trim(now);
    }

    /// Metadata of every object of `kind` held now.
    fn metas(&self, kind: Kind) -> Vec<Meta> {
        match kind {
            Kind::Pod => self.pods.values().map(|p| p.pod.metadata.clone()).collect(),
            Kind::Service => self
                .services
                .values()
                .flat_map(HashMap::values)
                .map(|s| s.service.metadata.clone())
                .collect(),
            Kind::EndpointSlice => self
                .slices
                .values()
                .flat_map(HashMap::values)
                .map(|s| s.slice.metadata.clone())
                .collect(),
            Kind::Node => self
                .nodes
                .keys()
                .map(|name| Meta {
                    name: name.clone(),
                    ..Default::default()
                })
                .collect(),
            Kind::Owner(k) => self
                .owners
                .values()
                .filter(|o| o.kind == k)
                .map(|o| o.metadata.clone())
                .collect(),
        }
    }

    fn upsert(&mut self, object: Object, now: i64) {
        match object {
            Object::Pod(pod) => self.upsert_pod(pod, now),
            Object::Service(service) => {
                let k = key(&service.metadata);
                let ns = service.metadata.namespace.clone();
                let name = service.metadata.name.clone();
                let from = created(&service.metadata);
                let mut ips: Vec<Ipv6Addr> = service
                    .spec
                    .cluster_ips
                    .iter()
                    .chain(service.spec.cluster_ip.iter())
                    .filter_map(|s| parse_ip(s))
                    .collect();
                ips.sort();
                ips.dedup();
                let peer = Arc::new(Peer {
                    kind: PeerKind::Service,
                    pod: None,
                    pod_uid: None,
                    namespace: Some(ns.clone()),
                    workload: None,
                    workload_kind: None,
                    node: None,
                    service: Some(service.metadata.name.clone()),
                    server_ports: service
                        .spec
                        .ports
                        .iter()
                        .filter_map(|p| Some((proto_number(p.protocol.as_deref()), port(p.port)?)))
                        .collect(),
                });
                let holder = Holder::Service(k.clone());
                let old = self.services.entry(ns.clone()).or_default().insert(
                    name,
                    ServiceEntry {
                        service,
                        ips: ips.clone(),
                    },
                );
                let old = old.map(|o| o.ips).unwrap_or_default();
                self.reassign(&holder, old, &ips, from, peer, now);
                self.refresh_namespace(&ns);
            }
            Object::EndpointSlice(slice) => {
                let k = key(&slice.metadata);
                let ns = slice.metadata.namespace.clone();
                let name = slice.metadata.name.clone();
                let ips: Vec<Ipv6Addr> = slice
                    .endpoints
                    .iter()
                    .filter(|e| e.target_ref.as_ref().is_none_or(|t| t.kind != "Pod"))
                    .flat_map(|e| e.addresses.iter())
                    .filter_map(|a| parse_ip(a))
                    .collect();
                let service = slice.metadata.labels.get(SERVICE_NAME_LABEL).cloned();
                let peer = Arc::new(Peer {
                    kind: PeerKind::Endpoint,
                    pod: None,
                    pod_uid: None,
                    namespace: Some(ns.clone()),
                    workload: None,
                    workload_kind: None,
                    node: None,
                    service,
                    server_ports: Vec::new(),
                });
                let from = created(&slice.metadata);
                let holder = Holder::Slice(k.clone());
                let old = self.slices.entry(ns.clone()).or_default().insert(
                    name,
                    SliceEntry {
                        slice,
                        ips: ips.clone(),
                    },
                );
                let old = old.map(|o| o.ips).unwrap_or_default();
                self.reassign(&holder, old, &ips, from, peer, now);
                self.refresh_namespace(&ns);
            }
            Object::Node(node) => {
                let name = node.metadata.name.clone();
                let mut ips: Vec<Ipv6Addr> = node
                    .status
                    .addresses
                    .iter()
                    .filter(|a| a.kind == "InternalIP" || a.kind == "ExternalIP")
                    .filter_map(|a| parse_ip(&a.address))
                    .collect();
                ips.sort();
                ips.dedup();
                let holder = Holder::Node(name.clone());
                let old = self
                    .nodes
                    .insert(name.clone(), NodeEntry { ips: ips.clone() });
                self.reassign(
                    &holder,
                    old.map(|o| o.ips).unwrap_or_default(),
                    &ips,
                    None,
                    Arc::new(node_peer(&name)),
                    now,
                );
            }
            Object::Owner(owner) => {
                let ns = owner.metadata.namespace.clone();
                self.owners.insert(owner.metadata.uid.clone(), *owner);
                self.refresh_namespace(&ns);
            }
        }
    }

    fn delete(&mut self, kind: Kind, meta: &Meta, now: i64) {
        match kind {
            Kind::Pod => {
                if let Some(entry) = self.pods.remove(&meta.uid) {
                    self.release(&entry.holder, &entry.held, now);
                    if let Some(set) = self.pods_by_ns.get_mut(&entry.pod.metadata.namespace) {
                        set.remove(&meta.uid);
                        if set.is_empty() {
                            self.pods_by_ns.remove(&entry.pod.metadata.namespace);
                        }
                    }
                }
            }
            Kind::Service => {
                let removed = remove_nested(&mut self.services, &meta.namespace, &meta.name);
                if let Some(entry) = removed {
                    self.close_all(&Holder::Service(key(meta)), &entry.ips, now);
                    self.refresh_namespace(&meta.namespace);
                }
            }
            Kind::EndpointSlice => {
                let removed = remove_nested(&mut self.slices, &meta.namespace, &meta.name);
                if let Some(entry) = removed {
                    self.close_all(&Holder::Slice(key(meta)), &entry.ips, now);
                    self.refresh_namespace(&meta.namespace);
                }
            }
            Kind::Node => {
                if let Some(entry) = self.nodes.remove(&meta.name) {
                    self.close_all(&Holder::Node(meta.name.clone()), &entry.ips, now);
                }
            }
            Kind::Owner(_) => {
                if self.owners.remove(&meta.uid).is_some() {
                    self.refresh_namespace(&meta.namespace);
                }
            }
        }
    }

    fn upsert_pod(&mut self, pod: Box<model::Pod>, now: i64) {
        let uid = pod.metadata.uid.clone();
        let ns = pod.metadata.namespace.clone();
        let host_network = pod.spec.host_network == Some(true);
        // A finished pod (Succeeded/Failed) keeps its object but no longer its address.
        let terminal = matches!(pod.status.phase.as_deref(), Some("Succeeded" | "Failed"));
        let mut ips: Vec<Ipv6Addr> = if terminal {
            Vec::new()
        } else {
            pod.status
                .pod_ips
                .iter()
                .map(|e| e.ip.as_str())
                .chain(pod.status.pod_ip.as_deref())
                .filter_map(parse_ip)
                .collect()
        };
        ips.sort();
        ips.dedup();
        let node = pod.spec.node_name.clone().unwrap_or_default();
        let (holder, peer, from) = if host_network {
            // The pod shares its node's addresses: they map to the node.
            (Holder::Node(node.clone()), Arc::new(node_peer(&node)), None)
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
        self.reassign(&holder, previous, &ips, from, peer, now);
        self.pods_by_ns.entry(ns).or_default().insert(uid);
    }

    /// Resolves a pod's metadata: workload through the owner chain, services by selector and
    /// by EndpointSlice, ports served.
    fn pod_peer(&self, pod: &model::Pod) -> Peer {
        let meta = &pod.metadata;
        let (workload, workload_kind) = self.workload(meta);
        let mut services: BTreeSet<&str> = BTreeSet::new();
        let mut server_ports: Vec<(u8, u16)> = pod
            .spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter())
            .filter_map(|p| Some((proto_number(p.protocol.as_deref()), port(p.container_port)?)))
            .collect();
        let no_services = HashMap::new();
        let in_ns = self.services.get(&meta.namespace).unwrap_or(&no_services);
        for entry in in_ns.values() {
            let s = &entry.service;
            let selected = s.spec.selector.as_ref().is_some_and(|sel| {
                !sel.is_empty() && sel.iter().all(|(k, v)| meta.labels.get(k) == Some(v))
            });
            if selected {
                services.insert(&s.metadata.name);
                for p in &s.spec.ports {
                    let target = match &p.target_port {
                        Some(serde_json::Value::Number(n)) => n.as_i64().map(|n| n as i32),
                        Some(_) => None,
                        None => Some(p.port),
                    };
                    if let Some(t) = target.and_then(port) {
                        server_ports.push((proto_number(p.protocol.as_deref()), t));
                    }
                }
            }
        }
        let no_slices = HashMap::new();
        for entry in self
            .slices
            .get(&meta.namespace)
            .unwrap_or(&no_slices)
            .values()
        {
            let slice = &entry.slice;
            let Some(service) = slice.metadata.labels.get(SERVICE_NAME_LABEL) else {
                continue;
            };
            let targets_pod = slice.endpoints.iter().any(|e| {
                e.target_ref.as_ref().is_some_and(|t| {
                    t.kind == "Pod"
                        && (t.uid == meta.uid || (t.uid.is_empty() && t.name == meta.name))
                })
            });
            if targets_pod {
                services.insert(service);
            }
        }
        server_ports.sort();
        server_ports.dedup();
        Peer {
            kind: PeerKind::Pod,
            pod: Some(meta.name.clone()),
            pod_uid: Some(meta.uid.clone()).filter(|u| !u.is_empty()),
            namespace: Some(meta.namespace.clone()),
            workload,
            workload_kind,
            node: pod.spec.node_name.clone(),
            service: if services.is_empty() {
                None
            } else {
                Some(services.into_iter().collect::<Vec<_>>().join(","))
            },
            server_ports,
        }
    }

    /// Follows controller owner references to the top: Pod -> ReplicaSet -> Deployment,
    /// Pod -> Job -> CronJob, Pod -> StatefulSet/DaemonSet. An owner not in the cache ends the
    /// chain with its reference (a ReplicaSet named `<deployment>-<pod-template-hash>` is taken
    /// for its Deployment).
    fn workload(&self, meta: &Meta) -> (Option<String>, Option<String>) {
        let Some(mut top) = meta.controller() else {
            return (None, None);
        };
        for _ in 0..8 {
            let owner_key = if top.uid.is_empty() {
                format!("{}/{}", meta.namespace, top.name)
            } else {
                top.uid.clone()
            };
            match self.owners.get(&owner_key) {
                Some(owner) => match owner.metadata.controller() {
                    Some(next) => top = next,
                    None => break,
                },
                None => {
                    if top.kind == "ReplicaSet" {
                        if let Some(hash) = meta.labels.get("pod-template-hash") {
                            if let Some(deployment) = top.name.strip_suffix(&format!("-{hash}")) {
                                return (Some(deployment.into()), Some("Deployment".into()));
                            }
                        }
                    }
                    break;
                }
            }
        }
        (Some(top.name.clone()), Some(top.kind.clone()))
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
            let peer = Arc::new(peer);
            for ip in held {
                if let Some(history) = self.ips.get_mut(&ip) {
                    for a in history.iter_mut() {
                        if a.holder == holder && a.until == OPEN && *a.peer != *peer {
                            a.peer = peer.clone();
                        }
                    }
                }
            }
        }
    }

    /// Moves `holder` from addresses `old` to `new`: closes the ones it left, opens (or
    /// refreshes) the ones it holds.
    fn reassign(
        &mut self,
        holder: &Holder,
        old: Vec<Ipv6Addr>,
        new: &[Ipv6Addr],
        from: Option<i64>,
        peer: Arc<Peer>,
        now: i64,
    ) {
        let left: Vec<Ipv6Addr> = old.into_iter().filter(|ip| !new.contains(ip)).collect();
        self.close_all(holder, &left, now);
        for ip in new {
            self.open(*ip, holder, from, peer.clone(), now);
        }
    }

    fn open(
        &mut self,
        ip: Ipv6Addr,
        holder: &Holder,
        from: Option<i64>,
        peer: Arc<Peer>,
        now: i64,
    ) {
        let history = self.ips.entry(ip).or_default();
        if let Some(a) = history
            .iter_mut()
            .find(|a| a.holder == *holder && a.until == OPEN)
        {
            a.peer = peer;
            return;
        }
        // Start: the object's own start time, never later than now (clock skew). Unknown: the
        // beginning of time for an address nobody else held, else first seen (now).
        let from = match from {
            Some(t) => t.min(now),
            None if history.is_empty() => i64::MIN,
            None => now,
        };
        // An address has one holder at a time: another open holder that started earlier left
        // when this one started (its end may not have been seen yet, e.g. a missed delete).
        for a in history.iter_mut() {
            if a.until == OPEN && a.from < from {
                a.until = from;
                self.closed += 1;
                self.oldest_closed = self.oldest_closed.min(from);
            }
        }
        let at = history.partition_point(|a| a.from <= from);
        history.insert(
            at,
            Assignment {
                from,
                until: OPEN,
                holder: holder.clone(),
                peer,
            },
        );
        // Per-address bound: drop the oldest closed entries.
        while history.len() > self.limits.per_ip {
            let Some(i) = history
                .iter()
                .enumerate()
                .filter(|(_, a)| a.until != OPEN)
                .min_by_key(|(_, a)| a.until)
                .map(|(i, _)| i)
            else {
                break;
            };
            history.remove(i);
            self.closed -= 1;
            self.evicted += 1;
        }
    }

    fn close_all(&mut self, holder: &Holder, ips: &[Ipv6Addr], now: i64) {
        for ip in ips {
            if let Some(history) = self.ips.get_mut(ip) {
                for a in history.iter_mut() {
                    if a.holder == *holder && a.until == OPEN {
                        a.until = now.max(a.from.saturating_add(1));
                        self.closed += 1;
                        self.oldest_closed = self.oldest_closed.min(a.until);
                    }
                }
            }
        }
    }

    /// A pod lets go of its addresses. A hostNetwork pod's addresses are its node's: they stay
    /// open while the Node object or another hostNetwork pod on that node still lists them.
    fn release(&mut self, holder: &Holder, ips: &[Ipv6Addr], now: i64) {
        let Holder::Node(node) = holder else {
            self.close_all(holder, ips, now);
            return;
        };
        let still: Vec<Ipv6Addr> = ips
            .iter()
            .copied()
            .filter(|ip| {
                !self.nodes.get(node).is_some_and(|n| n.ips.contains(ip))
                    && !self
                        .pods
                        .values()
                        .any(|p| p.holder == *holder && p.held.contains(ip))
            })
            .collect();
        self.close_all(holder, &still, now);
    }

    /// Drops closed history past the retention, then the oldest-ended beyond `max_closed`.
    fn trim(&mut self, now: i64) {
        let horizon = now.saturating_sub(self.limits.retention_ns);
        let over = self.closed.saturating_sub(self.limits.max_closed);
        if over == 0 && self.oldest_closed >= horizon {
            return;
        }
        // Cut-off: everything that ended before `cut` goes.
        let mut cut = horizon;
        if over > 0 {
            let mut ends: Vec<i64> = self
                .ips
                .values()
                .flat_map(|h| h.iter())
                .filter(|a| a.until != OPEN)
                .map(|a| a.until)
                .collect();
            ends.sort_unstable();
            // Remove a tenth more than needed so the sweep does not run on every change.
            let n = (over + self.limits.max_closed / 10).min(ends.len());
            if n > 0 {
                cut = cut.max(ends[n - 1].saturating_add(1));
            }
        }
        let mut removed = 0usize;
        self.ips.retain(|_, history| {
            history.retain(|a| {
                let drop = a.until != OPEN && a.until < cut;
                removed += usize::from(drop);
                !drop
            });
            !history.is_empty()
        });
        self.closed -= removed;
        self.evicted += removed as u64;
        self.oldest_closed = self
            .ips
            .values()
            .flat_map(|h| h.iter())
            .filter(|a| a.until != OPEN)
            .map(|a| a.until)
            .min()
            .unwrap_or(OPEN);
    }
}

fn node_peer(name: &str) -> Peer {
    Peer {
        kind: PeerKind::Node,
        pod: None,
        pod_uid: None,
        namespace: None,
        workload: None,
        workload_kind: None,
        node: Some(name.to_string()).filter(|n| !n.is_empty()),
        service: None,
        server_ports: Vec::new(),
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

/// Objects without a UID (hand-written snapshots) get `namespace/name` as one.
fn normalize(mut object: Object) -> Object {
    let meta = match &mut object {
        Object::Pod(o) => &mut o.metadata,
        Object::Owner(o) => &mut o.metadata,
        _ => return object,
    };
    if meta.uid.is_empty() {
        meta.uid = key(meta);
    }
    object
}

fn created(meta: &Meta) -> Option<i64> {
    meta.creation_timestamp
        .as_deref()
        .and_then(model::parse_time)
}

fn remove_nested<T>(
    map: &mut HashMap<String, HashMap<String, T>>,
    ns: &str,
    name: &str,
) -> Option<T> {
    let inner = map.get_mut(ns)?;
    let removed = inner.remove(name);
    if inner.is_empty() {
        map.remove(ns);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T0: i64 = 1_700_000_000_000_000_000;
    const S: i64 = 1_000_000_000;

    fn rfc3339(ns: i64) -> String {
        // Whole seconds after T0 only (enough for tests): 2023-11-14T22:13:20Z is T0.
        let secs = (ns - T0) / S;
        let (h, m, s) = (22 + secs / 3600, 13 + (secs % 3600) / 60, 20 + secs % 60);
        let (m, s) = (m + s / 60, s % 60);
        let (h, m) = (h + m / 60, m % 60);
        assert!(h < 24);
        format!("2023-11-14T{h:02}:{m:02}:{s:02}Z")
    }

    fn obj(kind: &str, v: serde_json::Value) -> Object {
        Object::from_json(kind, v).unwrap().unwrap()
    }

    fn pod(name: &str, uid: &str, ip: &str, start: i64, labels: serde_json::Value) -> Object {
        obj(
            "Pod",
            json!({
                "metadata": {"name": name, "namespace": "shop", "uid": uid, "labels": labels,
                    "ownerReferences": [{"kind": "ReplicaSet", "name": format!("{}-rs", name), "uid": format!("rs-{uid}"), "controller": true}]},
                "spec": {"nodeName": "node-1", "containers": [{"ports": [{"containerPort": 8080}]}]},
                "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "startTime": rfc3339(start)}
            }),
        )
    }

    fn ip(s: &str) -> Ipv6Addr {
        parse_ip(s).unwrap()
    }

    fn who(store: &Store, addr: &str, t: i64) -> Option<String> {
        store.lookup(&ip(addr), t).map(|p| {
            p.pod
                .clone()
                .or(p.service.clone())
                .or(p.node.clone())
                .unwrap_or_default()
        })
    }

    #[test]
    fn ip_reuse_is_attributed_by_flow_time() {
        let mut s = Store::new(Limits::default());
        s.apply(
            Change::Upsert(pod("a", "ua", "10.0.0.5", T0, json!({}))),
            T0 + S,
        );
        assert_eq!(who(&s, "10.0.0.5", T0 + 5 * S).as_deref(), Some("a"));
        assert_eq!(who(&s, "10.0.0.5", T0 - S), None, "before pod a started");
        // a is deleted at T0+60s; b gets the address at T0+70s.
        s.apply(
            Change::Delete(pod("a", "ua", "10.0.0.5", T0, json!({}))),
            T0 + 60 * S,
        );
        s.apply(
            Change::Upsert(pod("b", "ub", "10.0.0.5", T0 + 70 * S, json!({}))),
            T0 + 71 * S,
        );
        assert_eq!(who(&s, "10.0.0.5", T0 + 59 * S).as_deref(), Some("a"));
        assert_eq!(who(&s, "10.0.0.5", T0 + 65 * S), None, "nobody between");
        assert_eq!(who(&s, "10.0.0.5", T0 + 70 * S).as_deref(), Some("b"));
        assert_eq!(who(&s, "10.0.0.5", T0 + 999 * S).as_deref(), Some("b"));
        // Late records for the old pod, processed now, still go to a.
        assert_eq!(who(&s, "10.0.0.5", T0 + 30 * S).as_deref(), Some("a"));
        let h = s.history("10.0.0.5".parse().unwrap());
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].until, T0 + 60 * S);
        assert_eq!(h[1].until, OPEN);
    }

    #[test]
    fn a_new_holder_closes_one_whose_delete_was_missed() {
        let mut s = Store::new(Limits::default());
        s.apply(
            Change::Upsert(pod("a", "ua", "10.0.0.5", T0, json!({}))),
            T0,
        );
        // No delete seen for a (e.g. watch down); b shows up with a later start.
        s.apply(
            Change::Upsert(pod("b", "ub", "10.0.0.5", T0 + 10 * S, json!({}))),
            T0 + 20 * S,
        );
        assert_eq!(who(&s, "10.0.0.5", T0 + 9 * S).as_deref(), Some("a"));
        assert_eq!(who(&s, "10.0.0.5", T0 + 10 * S).as_deref(), Some("b"));
        // A re-list without a closes nothing more (already closed at b's start).
        s.apply(
            Change::Replace(
                Kind::Pod,
                vec![pod("b", "ub", "10.0.0.5", T0 + 10 * S, json!({}))],
            ),
            T0 + 30 * S,
        );
        assert_eq!(who(&s, "10.0.0.5", T0 + 9 * S).as_deref(), Some("a"));
        assert_eq!(s.stats().pods, 1);
    }

    #[test]
    fn relist_closes_what_vanished() {
        let mut s = Store::new(Limits::default());
        s.apply(
            Change::Replace(
                Kind::Pod,
                vec![
                    pod("a", "ua", "10.0.0.5", T0, json!({})),
                    pod("c", "uc", "10.0.0.6", T0, json!({})),
                ],
            ),
            T0,
        );
        s.apply(
            Change::Replace(Kind::Pod, vec![pod("c", "uc", "10.0.0.6", T0, json!({}))]),
            T0 + 50 * S,
        );
        assert_eq!(who(&s, "10.0.0.5", T0 + 49 * S).as_deref(), Some("a"));
        assert_eq!(who(&s, "10.0.0.5", T0 + 50 * S), None);
        assert_eq!(who(&s, "10.0.0.6", T0 + 50 * S).as_deref(), Some("c"));
    }

    #[test]
    fn owner_chain_services_nodes_and_host_network() {
        let mut s = Store::new(Limits::default());
        let rs = obj(
            "ReplicaSet",
            json!({"metadata": {"name": "a-rs", "namespace": "shop", "uid": "rs-ua",
                "ownerReferences": [{"kind": "Deployment", "name": "web", "uid": "d1", "controller": true}]}}),
        );
        let svc = obj(
            "Service",
            json!({"metadata": {"name": "web", "namespace": "shop", "creationTimestamp": rfc3339(T0)},
                "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "selector": {"app": "web"},
                         "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}}),
        );
        let node = obj(
            "Node",
            json!({"metadata": {"name": "node-1"}, "status": {"addresses": [
                {"type": "InternalIP", "address": "192.168.1.10"}, {"type": "Hostname", "address": "node-1"}]}}),
        );
        let hostnet = obj(
            "Pod",
            json!({"metadata": {"name": "agent", "namespace": "kube-system", "uid": "uh"},
                "spec": {"nodeName": "node-1", "hostNetwork": true},
                "status": {"phase": "Running", "podIP": "192.168.1.10", "hostIP": "192.168.1.10"}}),
        );
        // Pod first, its owner and service later: the pod's metadata follows.
        s.apply(
            Change::Upsert(pod("a", "ua", "10.0.0.5", T0, json!({"app": "web"}))),
            T0,
        );
        let p = s.lookup(&ip("10.0.0.5"), T0 + S).unwrap().clone();
        assert_eq!(p.workload.as_deref(), Some("a-rs"));
        assert_eq!(p.workload_kind.as_deref(), Some("ReplicaSet"));
        s.apply_all(
            [
                Change::Upsert(rs),
                Change::Upsert(svc),
                Change::Upsert(node),
                Change::Upsert(hostnet.clone()),
            ],
            T0 + S,
        );
        let p = s.lookup(&ip("10.0.0.5"), T0 + 2 * S).unwrap().clone();
        assert_eq!(p.pod.as_deref(), Some("a"));
        assert_eq!(p.pod_uid.as_deref(), Some("ua"));
        assert_eq!(p.namespace.as_deref(), Some("shop"));
        assert_eq!(
            (p.workload.as_deref(), p.workload_kind.as_deref()),
            (Some("web"), Some("Deployment"))
        );
        assert_eq!(p.service.as_deref(), Some("web"));
        assert_eq!(p.node.as_deref(), Some("node-1"));
        assert_eq!(p.server_ports, vec![(6, 8080)]);
        let c = s.lookup(&ip("10.96.0.10"), T0 + 2 * S).unwrap();
        assert_eq!(
            (c.kind, c.service.as_deref()),
            (PeerKind::Service, Some("web"))
        );
        let n = s.lookup(&ip("192.168.1.10"), T0 + 2 * S).unwrap();
        assert_eq!(
            (n.kind, n.node.as_deref(), n.pod.as_deref()),
            (PeerKind::Node, Some("node-1"), None)
        );
        // The hostNetwork pod going away does not take the node's address with it.
        s.apply(Change::Delete(hostnet), T0 + 3 * S);
        assert!(s.lookup(&ip("192.168.1.10"), T0 + 4 * S).is_some());
        // Service deleted: the pod loses it, the ClusterIP history ends.
        let svc_ref = obj(
            "Service",
            json!({"metadata": {"name": "web", "namespace": "shop"}}),
        );
        s.apply(Change::Delete(svc_ref), T0 + 5 * S);
        assert_eq!(s.lookup(&ip("10.0.0.5"), T0 + 6 * S).unwrap().service, None);
        assert!(s.lookup(&ip("10.96.0.10"), T0 + 6 * S).is_none());
        assert!(s.lookup(&ip("10.96.0.10"), T0 + 4 * S).is_some());
    }

    #[test]
    fn deployment_from_pod_template_hash_and_endpoint_slices() {
        let mut s = Store::new(Limits::default());
        let p = obj(
            "Pod",
            json!({"metadata": {"name": "api-7d9f-x", "namespace": "shop", "uid": "u1",
                "labels": {"pod-template-hash": "7d9f"},
                "ownerReferences": [{"kind": "ReplicaSet", "name": "api-7d9f", "uid": "r1", "controller": true}]},
                "spec": {"nodeName": "n"}, "status": {"podIP": "10.0.0.9"}}),
        );
        let slice = obj(
            "EndpointSlice",
            json!({"metadata": {"name": "api-abc", "namespace": "shop", "labels": {"kubernetes.io/service-name": "api"}},
                "endpoints": [{"addresses": ["10.0.0.9"], "targetRef": {"kind": "Pod", "name": "api-7d9f-x", "namespace": "shop", "uid": "u1"}},
                              {"addresses": ["172.16.0.1"]}]}),
        );
        s.apply_all([Change::Upsert(p), Change::Upsert(slice)], T0);
        let peer = s.lookup(&ip("10.0.0.9"), T0).unwrap();
        assert_eq!(peer.workload.as_deref(), Some("api"));
        assert_eq!(peer.workload_kind.as_deref(), Some("Deployment"));
        assert_eq!(peer.service.as_deref(), Some("api"));
        let ext = s.lookup(&ip("172.16.0.1"), T0).unwrap();
        assert_eq!(
            (ext.kind, ext.service.as_deref()),
            (PeerKind::Endpoint, Some("api"))
        );
    }

    #[test]
    fn finished_pods_release_their_address() {
        let mut s = Store::new(Limits::default());
        s.apply(
            Change::Upsert(pod("j", "uj", "10.0.0.7", T0, json!({}))),
            T0,
        );
        let Object::Pod(mut done) = pod("j", "uj", "10.0.0.7", T0, json!({})) else {
            unreachable!()
        };
        done.status.phase = Some("Succeeded".into());
        s.apply(Change::Upsert(Object::Pod(done)), T0 + 10 * S);
        assert_eq!(who(&s, "10.0.0.7", T0 + 5 * S).as_deref(), Some("j"));
        assert_eq!(who(&s, "10.0.0.7", T0 + 11 * S), None);
    }

    #[test]
    fn history_is_bounded_per_address_overall_and_in_time() {
        let limits = Limits {
            per_ip: 3,
            max_closed: 20,
            retention_ns: 1_000 * S,
        };
        let mut s = Store::new(limits);
        // 10 pods in turn on one address.
        for i in 0..10 {
            let t = T0 + i * 10 * S;
            s.apply(
                Change::Upsert(pod(
                    &format!("p{i}"),
                    &format!("u{i}"),
                    "10.0.0.5",
                    t,
                    json!({}),
                )),
                t,
            );
            s.apply(
                Change::Delete(pod(
                    &format!("p{i}"),
                    &format!("u{i}"),
                    "10.0.0.5",
                    t,
                    json!({}),
                )),
                t + 5 * S,
            );
        }
        assert!(s.history("10.0.0.5".parse().unwrap()).len() <= 3);
        assert_eq!(who(&s, "10.0.0.5", T0 + 92 * S).as_deref(), Some("p9"));
        assert_eq!(who(&s, "10.0.0.5", T0 + 2 * S), None, "evicted");
        // 50 addresses with one ended pod each: at most 20 closed entries survive.
        for i in 0..50 {
            let a = format!("10.1.0.{i}");
            let t = T0 + i * S;
            s.apply(
                Change::Upsert(pod(&format!("q{i}"), &format!("v{i}"), &a, t, json!({}))),
                t,
            );
            s.apply(
                Change::Delete(pod(&format!("q{i}"), &format!("v{i}"), &a, t, json!({}))),
                t + S,
            );
        }
        let st = s.stats();
        assert!(st.closed <= 20, "{st:?}");
        assert!(st.evicted_total > 0);
        assert_eq!(
            who(&s, "10.1.0.49", T0 + 49 * S).as_deref(),
            Some("q49"),
            "newest kept"
        );
        // Retention: everything ended more than 1000 s before `now` goes.
        s.apply(Change::Replace(Kind::Node, vec![]), T0 + 5_000 * S);
        assert_eq!(s.stats().closed, 0);
        assert_eq!(s.stats().addresses, 0);
    }
}
