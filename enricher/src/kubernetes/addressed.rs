//! Objects that hold addresses of their own (Services, EndpointSlices, Nodes): what each kind
//! holds and as whom ([`Addressed`]), and their collection by namespace and name, which keeps
//! the objects' assignments in the history current ([`Objects`]).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use flowlens_schemas::ip_to_v6;

use super::history::{History, Holder};
use super::model::{self, Meta};
use super::peer::Peer;

/// A kind of object that holds addresses.
pub trait Addressed {
    fn meta(&self) -> &Meta;

    /// Who holds the object's addresses in the history.
    fn holder(meta: &Meta) -> Holder;

    /// The addresses it holds (any order, repeats allowed).
    fn addresses(&self) -> Vec<Ipv6Addr>;

    /// What its addresses resolve to.
    fn peer(&self) -> Peer;

    /// Since when it holds its addresses, if known.
    fn since(&self) -> Option<i64> {
        self.meta()
            .creation_timestamp
            .as_deref()
            .and_then(model::parse_time)
    }
}

impl Addressed for model::Service {
    fn meta(&self) -> &Meta {
        &self.metadata
    }

    fn holder(meta: &Meta) -> Holder {
        Holder::Service(key(meta))
    }

    fn addresses(&self) -> Vec<Ipv6Addr> {
        let ips = self
            .spec
            .cluster_ips
            .iter()
            .chain(self.spec.cluster_ip.iter());
        ips.filter_map(|s| parse_ip(s)).collect()
    }

    fn peer(&self) -> Peer {
        Peer::service(self)
    }
}

impl Addressed for model::EndpointSlice {
    fn meta(&self) -> &Meta {
        &self.metadata
    }

    fn holder(meta: &Meta) -> Holder {
        Holder::Slice(key(meta))
    }

    /// Endpoint addresses without a pod behind them (a pod's address is the pod's).
    fn addresses(&self) -> Vec<Ipv6Addr> {
        self.endpoints
            .iter()
            .filter(|e| e.target_ref.as_ref().is_none_or(|t| t.kind != "Pod"))
            .flat_map(|e| e.addresses.iter())
            .filter_map(|a| parse_ip(a))
            .collect()
    }

    fn peer(&self) -> Peer {
        Peer::endpoint(self)
    }
}

impl Addressed for model::Node {
    fn meta(&self) -> &Meta {
        &self.metadata
    }

    fn holder(meta: &Meta) -> Holder {
        Holder::Node(meta.name.clone())
    }

    fn addresses(&self) -> Vec<Ipv6Addr> {
        let ips = self.status.addresses.iter();
        ips.filter(|a| a.kind == "InternalIP" || a.kind == "ExternalIP")
            .filter_map(|a| parse_ip(&a.address))
            .collect()
    }

    fn peer(&self) -> Peer {
        Peer::node(&self.metadata.name)
    }

    /// A node's addresses are its own from the beginning of the history.
    fn since(&self) -> Option<i64> {
        None
    }
}

/// One object and the addresses it was given.
#[derive(Debug, Clone)]
pub struct Entry<T> {
    pub object: Box<T>,
    /// Sorted, without repeats.
    pub ips: Vec<Ipv6Addr>,
}

/// Objects of one kind: namespace -> name -> entry (cluster-scoped kinds: namespace "").
#[derive(Debug, Clone)]
pub struct Objects<T> {
    by_namespace: HashMap<String, HashMap<String, Entry<T>>>,
}

impl<T> Default for Objects<T> {
    fn default() -> Self {
        Self {
            by_namespace: HashMap::new(),
        }
    }
}

impl<T: Addressed> Objects<T> {
    /// Stores `object` and moves its holder in `history` to the addresses it holds now.
    pub fn upsert(&mut self, object: Box<T>, history: &mut History, now: i64) {
        let ips = sorted(object.addresses());
        let meta = object.meta();
        let (holder, from, peer) = (T::holder(meta), object.since(), Arc::new(object.peer()));
        let (namespace, name) = (meta.namespace.clone(), meta.name.clone());
        let entry = Entry {
            object,
            ips: ips.clone(),
        };
        let old = self
            .by_namespace
            .entry(namespace)
            .or_default()
            .insert(name, entry);
        let old = old.map(|o| o.ips).unwrap_or_default();
        history.reassign(&holder, old, &ips, from, peer, now);
    }

    /// Removes the object `meta` names and ends its assignments in `history`; whether it was
    /// there.
    pub fn delete(&mut self, meta: &Meta, history: &mut History, now: i64) -> bool {
        let Some(names) = self.by_namespace.get_mut(&meta.namespace) else {
            return false;
        };
        let removed = names.remove(&meta.name);
        if names.is_empty() {
            self.by_namespace.remove(&meta.namespace);
        }
        let Some(entry) = removed else {
            return false;
        };
        history.close_all(&T::holder(meta), &entry.ips, now);
        true
    }

    pub fn get(&self, namespace: &str, name: &str) -> Option<&Entry<T>> {
        self.by_namespace.get(namespace)?.get(name)
    }

    /// The objects of one namespace.
    pub fn in_namespace<'a>(&'a self, namespace: &str) -> impl Iterator<Item = &'a T> + 'a {
        let names = self.by_namespace.get(namespace).into_iter();
        names.flat_map(HashMap::values).map(|e| &*e.object)
    }

    /// Metadata of every object.
    pub fn metas(&self) -> impl Iterator<Item = &Meta> {
        let names = self.by_namespace.values().flat_map(HashMap::values);
        names.map(|e| e.object.meta())
    }

    /// How many objects.
    pub fn count(&self) -> usize {
        self.by_namespace.values().map(HashMap::len).sum()
    }
}

/// `namespace/name`: a namespaced object's identity.
pub fn key(meta: &Meta) -> String {
    format!("{}/{}", meta.namespace, meta.name)
}

pub fn parse_ip(s: &str) -> Option<Ipv6Addr> {
    s.parse::<IpAddr>().ok().map(ip_to_v6)
}

/// `ips` sorted, without repeats.
pub fn sorted(mut ips: Vec<Ipv6Addr>) -> Vec<Ipv6Addr> {
    ips.sort();
    ips.dedup();
    ips
}
