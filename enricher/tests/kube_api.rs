//! The Kubernetes API source (kube-rs watchers) against a fake API server: no API server can
//! run on the development machine, so this test serves real-shaped list and watch responses
//! over HTTP/1.1 itself: lists with a resourceVersion, watches as chunked JSON lines (ADDED,
//! MODIFIED, DELETED, BOOKMARK), a `410 Gone` ERROR event for a compacted resourceVersion
//! (which must make the client re-list), and dropped connections (which must make it resume).
//! The client is configured through a kubeconfig file, as outside a cluster. Through the
//! binary: `kubernetes.kubeconfig` + `kubernetes.context` pick the named context's API server,
//! not the file's current one.
#![cfg(feature = "kube")]

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::rfc3339;
use flowlens_enricher::kubernetes::config::{KubernetesConfig, Source};
use flowlens_enricher::kubernetes::store::{SharedStore, Store};
use flowlens_enricher::kubernetes::{api, now_ns};
use flowlens_runtime::Shutdown;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

const S: i64 = 1_000_000_000;

/// One collection served by the fake server.
struct Collection {
    api_version: &'static str,
    kind: &'static str,
    /// Served as PartialObjectMetadata (metadata-only requests).
    metadata_only: bool,
    items: BTreeMap<String, Value>,
    /// (resourceVersion, event type, object).
    log: Vec<(u64, &'static str, Value)>,
    /// Watches from a resourceVersion below this get 410 Gone (history compacted).
    floor: u64,
}

#[derive(Default)]
struct State {
    rv: u64,
    collections: BTreeMap<&'static str, Collection>,
    /// Every request line received, in order.
    requests: Vec<String>,
    /// Bumped to cut every open watch connection.
    generation: u64,
}

#[derive(Clone)]
struct FakeApi {
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
}

impl FakeApi {
    fn new() -> Self {
        let mut state = State::default();
        for (path, api_version, kind, metadata_only) in [
            ("/api/v1/pods", "v1", "Pod", false),
            ("/api/v1/services", "v1", "Service", false),
            ("/api/v1/nodes", "v1", "Node", false),
            (
                "/apis/discovery.k8s.io/v1/endpointslices",
                "discovery.k8s.io/v1",
                "EndpointSlice",
                false,
            ),
            ("/apis/apps/v1/replicasets", "apps/v1", "ReplicaSet", true),
            ("/apis/batch/v1/jobs", "batch/v1", "Job", true),
        ] {
            state.collections.insert(
                path,
                Collection {
                    api_version,
                    kind,
                    metadata_only,
                    items: BTreeMap::new(),
                    log: Vec::new(),
                    floor: 0,
                },
            );
        }
        Self {
            state: Arc::new(Mutex::new(state)),
            changed: Arc::new(Notify::new()),
        }
    }

    /// Adds, replaces or deletes (`None`) an object; logs the watch event.
    fn put(&self, path: &'static str, name: &str, object: Option<Value>) {
        let mut s = self.state.lock().unwrap();
        s.rv += 1;
        let rv = s.rv;
        let c = s.collections.get_mut(path).unwrap();
        match object {
            Some(mut o) => {
                o["apiVersion"] = json!(c.api_version);
                o["kind"] = json!(c.kind);
                o["metadata"]["resourceVersion"] = json!(rv.to_string());
                let kind = if c.items.contains_key(name) {
                    "MODIFIED"
                } else {
                    "ADDED"
                };
                c.items.insert(name.to_string(), o.clone());
                c.log.push((rv, kind, o));
            }
            None => {
                let mut o = c.items.remove(name).expect("deleting a known object");
                o["metadata"]["resourceVersion"] = json!(rv.to_string());
                c.log.push((rv, "DELETED", o));
            }
        }
        drop(s);
        self.changed.notify_waiters();
    }

    /// Forgets watch history up to now (etcd compaction): resuming from an older
    /// resourceVersion gets 410 Gone.
    fn compact(&self) {
        let mut s = self.state.lock().unwrap();
        let rv = s.rv + 1;
        for c in s.collections.values_mut() {
            c.floor = rv;
            c.log.clear();
        }
    }

    /// Cuts every open watch connection (no terminating chunk: like a dying load balancer).
    fn drop_watches(&self) {
        self.state.lock().unwrap().generation += 1;
        self.changed.notify_waiters();
    }

    fn requests(&self, prefix: &str) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter(|r| r.starts_with(prefix))
            .cloned()
            .collect()
    }

    async fn serve(self, listener: TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(self.clone().connection(stream));
        }
    }

    async fn connection(self, mut stream: TcpStream) {
        let mut buf = Vec::new();
        let head = loop {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break String::from_utf8_lossy(&buf[..end]).to_string();
            }
        };
        let target = head
            .lines()
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or("/")
            .to_string();
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let params: BTreeMap<&str, &str> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        self.state
            .lock()
            .unwrap()
            .requests
            .push(format!("{path}?{query}"));
        if !self.state.lock().unwrap().collections.contains_key(path) {
            let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#;
            let _ = respond(&mut stream, 404, body).await;
            return;
        }
        let path: &'static str = self
            .state
            .lock()
            .unwrap()
            .collections
            .keys()
            .find(|k| **k == path)
            .copied()
            .unwrap();
        if matches!(params.get("watch"), Some(&"true") | Some(&"1")) {
            let from: u64 = params
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            self.watch(stream, path, from).await;
        } else {
            let body = {
                let s = self.state.lock().unwrap();
                let c = &s.collections[path];
                let items: Vec<Value> = c.items.values().map(|o| shape(c, o)).collect();
                let kind = if c.metadata_only {
                    "PartialObjectMetadataList".to_string()
                } else {
                    format!("{}List", c.kind)
                };
                let api_version = if c.metadata_only {
                    "meta.k8s.io/v1"
                } else {
                    c.api_version
                };
                json!({"apiVersion": api_version, "kind": kind,
                       "metadata": {"resourceVersion": s.rv.to_string()}, "items": items})
                .to_string()
            };
            let _ = respond(&mut stream, 200, &body).await;
        }
    }

    async fn watch(self, mut stream: TcpStream, path: &'static str, from: u64) {
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let (generation, gone) = {
            let s = self.state.lock().unwrap();
            (s.generation, from < s.collections[path].floor)
        };
        if gone {
            let e = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                "metadata": {}, "status": "Failure",
                "message": format!("too old resource version: {from}"),
                "reason": "Expired", "code": 410}});
            let _ = chunk(&mut stream, &e.to_string()).await;
            let _ = stream.write_all(b"0\r\n\r\n").await;
            return;
        }
        let mut sent = from;
        loop {
            let notified = self.changed.notified();
            let (events, bookmark, cut) = {
                let s = self.state.lock().unwrap();
                let c = &s.collections[path];
                let events: Vec<(u64, String)> = c
                    .log
                    .iter()
                    .filter(|(rv, _, _)| *rv > sent)
                    .map(|(rv, t, o)| (*rv, json!({"type": t, "object": shape(c, o)}).to_string()))
                    .collect();
                let bookmark = json!({"type": "BOOKMARK", "object": {"kind": c.kind,
                    "apiVersion": c.api_version,
                    "metadata": {"resourceVersion": s.rv.to_string(),
                                 "annotations": {"k8s.io/initial-events-end": "true"}}}})
                .to_string();
                (events, (s.rv, bookmark), s.generation != generation)
            };
            if cut {
                return; // dropped without the terminating chunk
            }
            for (rv, line) in events {
                if chunk(&mut stream, &line).await.is_err() {
                    return;
                }
                sent = rv;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(300)) => {
                    // Idle: a bookmark moves the client's resume point forward.
                    if chunk(&mut stream, &bookmark.1).await.is_err() {
                        return;
                    }
                    sent = sent.max(bookmark.0);
                }
            }
        }
    }
}

/// An object as a list item / watch object: metadata only for metadata-only collections.
fn shape(c: &Collection, o: &Value) -> Value {
    if c.metadata_only {
        json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": o["metadata"]})
    } else {
        o.clone()
    }
}

async fn respond(stream: &mut TcpStream, status: u16, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.flush().await
}

async fn chunk(stream: &mut TcpStream, line: &str) -> std::io::Result<()> {
    let data = format!("{line}\n");
    stream
        .write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())
        .await?;
    stream.flush().await
}

fn pod(name: &str, ip: &str, start_s: i64) -> Value {
    json!({
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
            "labels": {"app": "web", "pod-template-hash": "5d4f"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d4f",
                                  "uid": "uid-rs", "controller": true, "blockOwnerDeletion": true}],
            "creationTimestamp": rfc3339(start_s)},
        "spec": {"nodeName": "node-1", "containers": [{"name": "web", "image": "nginx",
                  "ports": [{"containerPort": 8080, "protocol": "TCP"}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "192.168.0.1",
                   "startTime": rfc3339(start_s)}
    })
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn who(store: &SharedStore, ip: &str, at: i64) -> Option<(String, Option<String>, Option<String>)> {
    let addr = flowlens_schemas::ip_to_v6(ip.parse::<IpAddr>().unwrap());
    let s = store.read().unwrap();
    s.lookup(&addr, at).map(|p| {
        (
            p.pod
                .clone()
                .or(p.service.clone())
                .or(p.node.clone())
                .unwrap_or_default(),
            p.workload.clone(),
            p.service.clone(),
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_survive_drops_bookmarks_and_410_gone() {
    if std::env::var_os("RUST_LOG").is_some() {
        flowlens_runtime::telemetry::init_logging(&Default::default());
    }
    let api = FakeApi::new();
    let t0 = now_ns() / S - 3_600;
    api.put(
        "/apis/apps/v1/replicasets",
        "web-5d4f",
        Some(
            json!({"metadata": {"name": "web-5d4f", "namespace": "shop", "uid": "uid-rs",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                                 "uid": "uid-dep", "controller": true}]},
            "spec": {"replicas": 2}}),
        ),
    );
    api.put("/api/v1/pods", "a", Some(pod("a", "10.1.0.5", t0)));
    api.put(
        "/api/v1/services",
        "web",
        Some(json!({"metadata": {"name": "web", "namespace": "shop", "uid": "uid-svc",
            "creationTimestamp": rfc3339(t0 - 60)},
            "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                     "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}})),
    );
    api.put(
        "/api/v1/nodes",
        "node-1",
        Some(json!({"metadata": {"name": "node-1", "uid": "uid-node"},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.1"},
                                     {"type": "Hostname", "address": "node-1"}]}})),
    );
    api.put(
        "/apis/discovery.k8s.io/v1/endpointslices",
        "web-x1",
        Some(json!({"metadata": {"name": "web-x1", "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.1.0.5"], "conditions": {"ready": true},
                           "targetRef": {"kind": "Pod", "name": "a", "namespace": "shop", "uid": "uid-a"}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})),
    );

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(api.clone().serve(listener));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\nclusters:\n- name: fake\n  cluster:\n    server: http://127.0.0.1:{port}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: u\n    namespace: default\nusers:\n- name: u\n  user:\n    token: test-token\n"
        ),
    )
    .unwrap();
    let config = KubernetesConfig {
        source: Source::Api,
        kubeconfig: kubeconfig.display().to_string(),
        ..Default::default()
    };
    let store: SharedStore = Arc::new(std::sync::RwLock::new(Store::new(config.limits())));
    let (ready_tx, mut ready) = watch::channel(false);
    let shutdown = Shutdown::new();
    let task = tokio::spawn({
        let (store, shutdown) = (store.clone(), shutdown.clone());
        async move { api::run(&config, store, ready_tx, shutdown).await }
    });

    // 1. Initial lists: pod -> ReplicaSet -> Deployment, the service by selector and slice,
    //    the ClusterIP, the node.
    tokio::time::timeout(Duration::from_secs(30), ready.wait_for(|r| *r))
        .await
        .expect("every kind listed")
        .unwrap();
    let now = now_ns();
    assert_eq!(
        who(&store, "10.1.0.5", now),
        Some(("a".into(), Some("web".into()), Some("web".into())))
    );
    {
        let s = store.read().unwrap();
        let p = s
            .lookup(
                &flowlens_schemas::ip_to_v6("10.1.0.5".parse().unwrap()),
                now,
            )
            .unwrap();
        assert_eq!(p.workload_kind.as_deref(), Some("Deployment"));
        assert_eq!(p.node.as_deref(), Some("node-1"));
        assert_eq!(p.pod_uid.as_deref(), Some("uid-a"));
    }
    assert_eq!(who(&store, "10.96.0.20", now).unwrap().0, "web");
    assert_eq!(who(&store, "192.168.0.1", now).unwrap().0, "node-1");
    // The watch follows the list (asynchronously: it may not have been sent yet).
    eventually("a pod watch with bookmarks", || {
        api.requests("/api/v1/pods")
            .iter()
            .any(|r| r.contains("watch=true") && r.contains("allowWatchBookmarks=true"))
    })
    .await;

    // 2. A watch event.
    api.put("/api/v1/pods", "b", Some(pod("b", "10.1.0.6", t0 + 10)));
    eventually("pod b from the watch", || {
        who(&store, "10.1.0.6", now_ns()).is_some_and(|w| w.0 == "b")
    })
    .await;

    // 3. Connections dropped: the client resumes from its last resourceVersion (bookmarks keep
    //    it current) without listing again, and gets what happened meanwhile.
    // A change elsewhere moves the global resourceVersion past the last pod event: only a
    // bookmark can tell the pod watch about it.
    api.put(
        "/api/v1/nodes",
        "node-2",
        Some(json!({"metadata": {"name": "node-2", "uid": "uid-node-2"},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.2"}]}})),
    );
    let bookmarked = api.state.lock().unwrap().rv;
    tokio::time::sleep(Duration::from_millis(900)).await; // idle: bookmarks arrive
    let lists_before = pod_lists(&api);
    let watches_before = api.requests("/api/v1/pods").len();
    api.drop_watches();
    api.put("/api/v1/pods", "c", Some(pod("c", "10.1.0.7", t0 + 20)));
    eventually("pod c after the reconnect", || {
        who(&store, "10.1.0.7", now_ns()).is_some_and(|w| w.0 == "c")
    })
    .await;
    assert_eq!(pod_lists(&api), lists_before, "resumed, not re-listed");
    let resumed: Vec<String> = api
        .requests("/api/v1/pods")
        .into_iter()
        .filter(|r| r.contains("watch=true"))
        .collect();
    assert!(resumed.len() >= 2, "{resumed:?}");
    let resume = &api.requests("/api/v1/pods")[watches_before];
    assert!(
        resume.contains(&format!("resourceVersion={bookmarked}&"))
            || resume.ends_with(&format!("resourceVersion={bookmarked}")),
        "resumed from the bookmark's resourceVersion {bookmarked}: {resume}"
    );

    // 4. History compacted while the connection is down, and meanwhile pod a deleted and its
    //    address given to pod d: the resume gets 410 Gone, the client re-lists; the re-list
    //    lacks a, which is closed; flows before the switch still belong to a, after it to d.
    api.compact();
    api.drop_watches();
    let switch_s = now_ns() / S + 1;
    api.put("/api/v1/pods", "a", None);
    api.put("/api/v1/pods", "d", Some(pod("d", "10.1.0.5", switch_s)));
    eventually("re-list after 410 Gone", || pod_lists(&api) > lists_before).await;
    eventually("pod d after the re-list", || {
        who(&store, "10.1.0.5", (switch_s + 1) * S).is_some_and(|w| w.0 == "d")
    })
    .await;
    assert_eq!(
        who(&store, "10.1.0.5", (t0 + 5) * S).unwrap().0,
        "a",
        "before the switch"
    );
    assert_eq!(who(&store, "10.1.0.5", (switch_s + 1) * S).unwrap().0, "d");
    assert_eq!(who(&store, "10.1.0.6", now_ns()).unwrap().0, "b", "kept");

    // 5. Watch deletes after the re-list still apply.
    api.put("/api/v1/services", "web", None);
    eventually("service deleted", || {
        who(&store, "10.96.0.20", now_ns()).is_none()
    })
    .await;
    eventually("pods lose the service", || {
        who(&store, "10.1.0.6", now_ns()).is_some_and(|w| w.2.is_none())
    })
    .await;

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("stops on shutdown")
        .unwrap()
        .unwrap();
}

/// Pod list requests (not watches) so far.
fn pod_lists(api: &FakeApi) -> usize {
    api.requests("/api/v1/pods")
        .iter()
        .filter(|r| !r.contains("watch="))
        .count()
}

/// The `flowlens-enricher` binary with `source = "api"`, `kubeconfig` naming a file of two
/// contexts, each with its own fake API server where a different pod holds 10.1.0.5, and
/// `context` naming the one that is not current: the flows get that context's pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_uses_the_kubeconfig_context() {
    use flowlens_testkit::{free_port, wait_probe, ChildGuard, Tansu};
    use rdkafka::Message;

    let mut servers = Vec::new();
    for name in ["current-pod", "chosen-pod"] {
        let api = FakeApi::new();
        api.put(
            "/api/v1/pods",
            name,
            Some(pod(name, "10.1.0.5", now_ns() / S - 600)),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        servers.push(listener.local_addr().unwrap().port());
        tokio::spawn(api.serve(listener));
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let (current, chosen) = (servers[0], servers[1]);
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: current\nclusters:\n\
             - name: current\n  cluster:\n    server: http://127.0.0.1:{current}\n\
             - name: chosen\n  cluster:\n    server: http://127.0.0.1:{chosen}\n\
             contexts:\n\
             - name: current\n  context:\n    cluster: current\n    user: u\n\
             - name: chosen\n  context:\n    cluster: chosen\n    user: u\n\
             users:\n- name: u\n  user:\n    token: test-token\n"
        ),
    )
    .unwrap();

    let tansu = Tansu::start();
    let brokers = tansu.broker();
    let c = common::config(&brokers, true);
    let t = &c.kafka.topics;
    let metrics = free_port();
    let file = dir.path().join("enricher.toml");
    std::fs::write(
        &file,
        format!(
            "[enricher]\ngroup_id = \"{}\"\n\
             [kubernetes]\nsource = \"api\"\nkubeconfig = \"{}\"\ncontext = \"chosen\"\n\
             [kafka]\nbrokers = [\"{brokers}\"]\npartitions = 1\n\
             [kafka.topics]\nraw_flows = \"{}\"\ninterfaces = \"{}\"\nenriched_flows = \"{}\"\n\
             dead_letter = \"{}\"\n\
             [telemetry]\nmetrics_listen = \"127.0.0.1:{metrics}\"\n",
            c.enricher.group_id,
            kubeconfig.display(),
            t.raw_flows,
            t.interfaces,
            t.enriched_flows,
            t.dead_letter
        ),
    )
    .unwrap();
    let log = dir.path().join("enricher.log");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_flowlens-enricher"));
    cmd.arg("--config")
        .arg(&file)
        .env_remove("RUST_LOG")
        .env_remove("KUBECONFIG");
    let mut enricher = ChildGuard::spawn("flowlens-enricher", &mut cmd, &log);
    tokio::task::spawn_blocking(move || {
        wait_probe(metrics, "/readyz", 200, "ready", Duration::from_secs(60))
    })
    .await
    .unwrap();

    let mut f = common::flow("node-1", 7, 0);
    f.src_addr = flowlens_schemas::ip_to_v6("10.1.0.5".parse().unwrap());
    let now = now_ns();
    (f.time_flow_start_ns, f.time_flow_end_ns, f.time_exported_ns) = (now - 1_000, now, now);
    let input = common::producer(&brokers);
    common::send(&input, &t.raw_flows, 0, "k8s-0", Some(&common::encoded(&f))).await;
    let (b, topic) = (brokers.clone(), t.enriched_flows.clone());
    let out = tokio::task::spawn_blocking(move || {
        common::read_topic(&b, &topic, 1, Duration::from_secs(60))
    })
    .await
    .unwrap();
    let e: flowlens_schemas::EnrichedFlow =
        flowlens_schemas::decode(out[0].payload().unwrap()).unwrap();
    assert_eq!(e.src_pod.as_deref(), Some("chosen-pod"));
    assert!(enricher.stop_with(libc::SIGTERM, Duration::from_secs(30)));
}
