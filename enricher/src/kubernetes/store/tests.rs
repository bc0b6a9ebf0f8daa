use super::*;
use serde_json::json;

use crate::kubernetes::history::OPEN;
use crate::kubernetes::peer::PeerKind;

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
