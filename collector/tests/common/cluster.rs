//! A Kubernetes cluster as `kubectl get -o json` shows it, for the enricher's snapshot source:
//! Deployments (ReplicaSet-owned pods), Services, and the file the enricher reads.

use std::path::Path;

use flowlens_enricher::kubernetes::snapshot::serde_json;
use flowlens_testkit::rfc3339;
use serde_json::{json, Value};

/// The namespace every object is in.
pub const NS: &str = "shop";

/// A pod of Deployment `deployment` (through ReplicaSet `<deployment>-<hash>`) on `node`.
pub fn pod(deployment: &str, hash: &str, node: &str, ips: &[String], start_s: i64) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("{deployment}-{hash}-x7k2p"), "namespace": NS,
            "uid": format!("uid-{deployment}"),
            "labels": {"app": deployment, "pod-template-hash": hash},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": format!("{deployment}-{hash}"), "uid": format!("uid-rs-{deployment}"),
                "controller": true, "blockOwnerDeletion": true}],
            "creationTimestamp": rfc3339(start_s)
        },
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "example",
            "ports": [{"containerPort": 5000, "protocol": "UDP"}]}]},
        "status": {"phase": "Running", "hostIP": "192.0.2.10",
            "podIP": ips[0], "podIPs": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
            "startTime": rfc3339(start_s)}
    })
}

pub fn replica_set(deployment: &str, hash: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": format!("{deployment}-{hash}"), "namespace": NS,
            "uid": format!("uid-rs-{deployment}"),
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment,
                "uid": format!("uid-deploy-{deployment}"), "controller": true}]},
        "spec": {"replicas": 1}
    })
}

pub fn service(name: &str, cluster_ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NS, "uid": format!("uid-svc-{name}"),
            "creationTimestamp": "2024-01-01T00:00:00Z"},
        "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
            "selector": {"app": name},
            "ports": [{"name": "udp", "port": 5000, "targetPort": 5000, "protocol": "UDP"}]}
    })
}

/// Writes the snapshot atomically (the enricher never sees half a file).
pub fn write_snapshot(path: &Path, items: Vec<Value>) {
    let list = json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items});
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&list).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
