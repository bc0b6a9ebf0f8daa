//! The parts of Kubernetes objects the enricher needs, as serde structs that read the JSON the
//! API server (and `kubectl get -o json`) prints. Everything else in an object is ignored, so
//! the cache holds a small fraction of each object.

use std::collections::BTreeMap;

use serde::Deserialize;

/// `metadata` (subset).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Meta {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub owner_references: Vec<OwnerRef>,
    pub creation_timestamp: Option<String>,
    pub deletion_timestamp: Option<String>,
    pub resource_version: String,
}

/// `metadata.ownerReferences[]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OwnerRef {
    pub kind: String,
    pub name: String,
    pub uid: String,
    pub controller: Option<bool>,
}

impl Meta {
    /// The controlling owner (`controller: true`), else the first owner.
    pub fn controller(&self) -> Option<&OwnerRef> {
        self.owner_references
            .iter()
            .find(|o| o.controller == Some(true))
            .or_else(|| self.owner_references.first())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Pod {
    pub metadata: Meta,
    pub spec: PodSpec,
    pub status: PodStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PodSpec {
    pub node_name: Option<String>,
    pub host_network: Option<bool>,
    pub containers: Vec<Container>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Container {
    pub ports: Vec<ContainerPort>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ContainerPort {
    pub container_port: i32,
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PodStatus {
    pub phase: Option<String>,
    #[serde(rename = "podIP")]
    pub pod_ip: Option<String>,
    #[serde(rename = "podIPs")]
    pub pod_ips: Vec<IpEntry>,
    #[serde(rename = "hostIP")]
    pub host_ip: Option<String>,
    pub start_time: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct IpEntry {
    pub ip: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Service {
    pub metadata: Meta,
    pub spec: ServiceSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServiceSpec {
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    #[serde(rename = "clusterIPs")]
    pub cluster_ips: Vec<String>,
    pub selector: Option<BTreeMap<String, String>>,
    pub ports: Vec<ServicePort>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ServicePort {
    pub port: i32,
    pub protocol: Option<String>,
    /// A number or a container port name.
    pub target_port: Option<serde_json::Value>,
}

/// `discovery.k8s.io/v1` EndpointSlice (subset).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct EndpointSlice {
    pub metadata: Meta,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Endpoint {
    pub addresses: Vec<String>,
    pub target_ref: Option<ObjectRef>,
    pub node_name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ObjectRef {
    pub kind: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

/// Label naming an EndpointSlice's service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Node {
    pub metadata: Meta,
    pub status: NodeStatus,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NodeStatus {
    pub addresses: Vec<NodeAddress>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct NodeAddress {
    #[serde(rename = "type")]
    pub kind: String,
    pub address: String,
}

/// Any owner in a pod's owner chain (ReplicaSet, Job, Deployment, StatefulSet, ...): only its
/// metadata matters (its own owner).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Owner {
    pub kind: String,
    pub metadata: Meta,
}

/// Kinds kept as owners (the links of the owner chain that have owners themselves).
pub const OWNER_KINDS: [&str; 2] = ["ReplicaSet", "Job"];

/// One object of a kind the enricher knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Pod(Box<Pod>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Node(Box<Node>),
    Owner(Box<Owner>),
}

/// Which collection an object belongs to (a re-list replaces one collection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Pod,
    Service,
    EndpointSlice,
    Node,
    /// ReplicaSets or Jobs (by their `kind`).
    Owner(&'static str),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Pod(_) => Kind::Pod,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Node(_) => Kind::Node,
            Object::Owner(o) => Kind::Owner(owner_kind(&o.kind).unwrap_or("ReplicaSet")),
        }
    }

    pub fn meta(&self) -> &Meta {
        match self {
            Object::Pod(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::Owner(o) => &o.metadata,
        }
    }

    /// Reads one object from its JSON; `kind` is the object's kind (its `kind` field, or the
    /// item kind of the list it came from). Kinds the enricher does not use give `Ok(None)`.
    pub fn from_json(kind: &str, value: serde_json::Value) -> Result<Option<Object>, String> {
        let err = |e: serde_json::Error| format!("{kind}: {e}");
        Ok(Some(match kind {
            "Pod" => Object::Pod(Box::new(serde_json::from_value(value).map_err(err)?)),
            "Service" => Object::Service(Box::new(serde_json::from_value(value).map_err(err)?)),
            "EndpointSlice" => {
                Object::EndpointSlice(Box::new(serde_json::from_value(value).map_err(err)?))
            }
            "Node" => Object::Node(Box::new(serde_json::from_value(value).map_err(err)?)),
            k if owner_kind(k).is_some() => {
                let mut owner: Owner = serde_json::from_value(value).map_err(err)?;
                owner.kind = k.to_string();
                Object::Owner(Box::new(owner))
            }
            _ => return Ok(None),
        }))
    }
}

pub fn owner_kind(kind: &str) -> Option<&'static str> {
    OWNER_KINDS.into_iter().find(|k| *k == kind)
}

/// Parses an RFC 3339 timestamp as the API server writes them (`2024-05-01T12:00:00Z`, with
/// optional fraction and offset) into Unix epoch nanoseconds.
pub fn parse_time(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut nanos = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let mut n: i64 = 0;
        for (i, c) in frac[..digits].bytes().enumerate() {
            if i < 9 {
                n = n * 10 + i64::from(c - b'0');
            }
        }
        for _ in digits..9 {
            n *= 10;
        }
        nanos = n;
        rest = &frac[digits..];
    }
    let offset_s = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            let o = oh * 3600 + om * 60;
            if rest.starts_with('-') {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_s;
    secs.checked_mul(1_000_000_000)?.checked_add(nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_time("2024-05-01T12:00:00Z"),
            Some(1_714_564_800_000_000_000)
        );
        assert_eq!(
            parse_time("2024-05-01T12:00:00.5Z"),
            Some(1_714_564_800_500_000_000)
        );
        assert_eq!(
            parse_time("2024-05-01T14:00:00+02:00"),
            Some(1_714_564_800_000_000_000)
        );
        assert_eq!(
            parse_time("2000-02-29T00:00:00.123456789Z"),
            Some(951_782_400_123_456_789)
        );
        assert_eq!(parse_time("2024-05-01"), None);
        assert_eq!(parse_time("2024-13-01T00:00:00Z"), None);
        assert_eq!(parse_time("2024-05-01T00:00:00"), None);
    }

    #[test]
    fn objects_from_kubectl_json() {
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u1",
                "labels": {"app": "web"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d", "uid": "rs1", "controller": true}]},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"containerPort": 8080, "protocol": "TCP"}]}]},
            "status": {"phase": "Running", "podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}], "hostIP": "192.168.1.1", "startTime": "2024-05-01T12:00:00Z"}
        });
        let Some(Object::Pod(p)) = Object::from_json("Pod", pod).unwrap() else {
            panic!()
        };
        assert_eq!(p.metadata.controller().unwrap().name, "web-5d");
        assert_eq!(p.status.pod_ips.len(), 2);
        assert_eq!(p.spec.containers[0].ports[0].container_port, 8080);
        assert!(Object::from_json("ConfigMap", serde_json::json!({}))
            .unwrap()
            .is_none());
        let rs =
            serde_json::json!({"kind": "ReplicaSet", "metadata": {"name": "web-5d", "uid": "rs1"}});
        let o = Object::from_json("ReplicaSet", rs).unwrap().unwrap();
        assert_eq!(o.kind(), Kind::Owner("ReplicaSet"));
        assert!(Object::from_json("Pod", serde_json::json!({"spec": 3})).is_err());
    }
}
