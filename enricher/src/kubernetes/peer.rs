//! What an address resolves to: a [`Peer`], with everything a flow needs already resolved
//! (pod, namespace, workload through the owner chain, services, node, ports served), built
//! from the objects that hold addresses.

use std::collections::{BTreeSet, HashMap};

use super::model::{self, Meta, SERVICE_NAME_LABEL};

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

impl Peer {
    /// A peer of `kind` with nothing known about it yet.
    fn bare(kind: PeerKind) -> Self {
        Self {
            kind,
            pod: None,
            pod_uid: None,
            namespace: None,
            workload: None,
            workload_kind: None,
            node: None,
            service: None,
            server_ports: Vec::new(),
        }
    }

    /// A node's address (or a hostNetwork pod's on that node).
    pub fn node(name: &str) -> Self {
        Self {
            node: Some(name.to_string()).filter(|n| !n.is_empty()),
            ..Self::bare(PeerKind::Node)
        }
    }

    /// A Service's ClusterIP.
    pub fn service(service: &model::Service) -> Self {
        Self {
            namespace: Some(service.metadata.namespace.clone()),
            service: Some(service.metadata.name.clone()),
            server_ports: service
                .spec
                .ports
                .iter()
                .filter_map(|p| Some((proto_number(p.protocol.as_deref()), port(p.port)?)))
                .collect(),
            ..Self::bare(PeerKind::Service)
        }
    }

    /// An EndpointSlice address without a pod behind it.
    pub fn endpoint(slice: &model::EndpointSlice) -> Self {
        Self {
            namespace: Some(slice.metadata.namespace.clone()),
            service: slice.metadata.labels.get(SERVICE_NAME_LABEL).cloned(),
            ..Self::bare(PeerKind::Endpoint)
        }
    }

    /// A pod: its workload through the owner chain (`owners` by UID), the services of its
    /// namespace that select it by label or list it in an EndpointSlice, the ports it serves.
    pub fn pod<'a>(
        pod: &model::Pod,
        owners: &HashMap<String, model::Owner>,
        services: impl Iterator<Item = &'a model::Service>,
        slices: impl Iterator<Item = &'a model::EndpointSlice>,
    ) -> Self {
        let meta = &pod.metadata;
        let (workload, workload_kind) = workload(owners, meta);
        let mut selecting: BTreeSet<&str> = BTreeSet::new();
        let mut server_ports: Vec<(u8, u16)> = pod
            .spec
            .containers
            .iter()
            .flat_map(|c| c.ports.iter())
            .filter_map(|p| Some((proto_number(p.protocol.as_deref()), port(p.container_port)?)))
            .collect();
        for s in services {
            let selected = s.spec.selector.as_ref().is_some_and(|sel| {
                !sel.is_empty() && sel.iter().all(|(k, v)| meta.labels.get(k) == Some(v))
            });
            if selected {
                selecting.insert(&s.metadata.name);
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
        for slice in slices {
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
                selecting.insert(service);
            }
        }
        server_ports.sort();
        server_ports.dedup();
        Self {
            kind: PeerKind::Pod,
            pod: Some(meta.name.clone()),
            pod_uid: Some(meta.uid.clone()).filter(|u| !u.is_empty()),
            namespace: Some(meta.namespace.clone()),
            workload,
            workload_kind,
            node: pod.spec.node_name.clone(),
            service: if selecting.is_empty() {
                None
            } else {
                Some(selecting.into_iter().collect::<Vec<_>>().join(","))
            },
            server_ports,
        }
    }
}

/// Follows controller owner references to the top: Pod -> ReplicaSet -> Deployment,
/// Pod -> Job -> CronJob, Pod -> StatefulSet/DaemonSet. An owner not in `owners` ends the
/// chain with its reference (a ReplicaSet named `<deployment>-<pod-template-hash>` is taken
/// for its Deployment).
fn workload(
    owners: &HashMap<String, model::Owner>,
    meta: &Meta,
) -> (Option<String>, Option<String>) {
    let Some(mut top) = meta.controller() else {
        return (None, None);
    };
    for _ in 0..8 {
        let owner_key = if top.uid.is_empty() {
            format!("{}/{}", meta.namespace, top.name)
        } else {
            top.uid.clone()
        };
        match owners.get(&owner_key) {
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
