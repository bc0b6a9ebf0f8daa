//! Enrichment throughput: the in-process join (records/s on one core, and on every core with
//! the shared caches), then end to end through a real Kafka-protocol broker (tansu).
//!
//! ```text
//! cargo run --release -p flowlens-enricher --example join_throughput [-- RECORDS [E2E_RECORDS]]
//! ```
//!
//! The cluster: 10,000 pods in 50 namespaces on 100 nodes, each pod owned by a ReplicaSet of a
//! Deployment, 500 Services selecting 20 pods each, 50 interfaces per node. Flows: 90 % between
//! two pods, 10 % from a pod to an external address; one in five pods' addresses was reused
//! (history: an ended pod, then the current one). The end-to-end part needs tansu
//! (scripts/setup.sh); it is skipped when the binary is missing.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use flowlens_enricher::interfaces::InterfaceCache;
use flowlens_enricher::join::{enrich, Joined, Kubernetes};
use flowlens_enricher::kubernetes::history::Limits;
use flowlens_enricher::kubernetes::model::Object;
use flowlens_enricher::kubernetes::store::{Change, Store};
use flowlens_schemas::{ip_to_v6, Direction, Interface, RawFlow};
use flowlens_testkit::cpu_time;
use serde_json::json;

/// The allocator of the `flowlens-enricher` binary (src/main.rs), so the numbers are the
/// binary's. `FLOWLENS_BENCH_GLIBC=1` is not possible at run time; see the results file for
/// the numbers with the system allocator (comment these two lines out).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PODS: usize = 10_000;
const NAMESPACES: usize = 50;
const NODES: usize = 100;
const SERVICES: usize = 500;
const IFACES_PER_NODE: i32 = 50;
const S: i64 = 1_000_000_000;

fn pod_ip(i: usize) -> String {
    format!("10.{}.{}.{}", 64 + i / 65_536, (i / 256) % 256, i % 256)
}

fn cluster(now: i64) -> (Store, InterfaceCache) {
    let mut changes = Vec::new();
    for n in 0..NODES {
        changes.push(Change::Upsert(
            Object::from_json(
                "Node",
                json!({"metadata": {"name": format!("node-{n}")},
                   "status": {"addresses": [{"type": "InternalIP", "address": format!("192.168.{}.{}", n / 256, n % 256)}]}}),
            )
            .unwrap()
            .unwrap(),
        ));
    }
    for s in 0..SERVICES {
        let ns = s % NAMESPACES;
        changes.push(Change::Upsert(
            Object::from_json(
                "Service",
                json!({"metadata": {"name": format!("svc-{s}"), "namespace": format!("ns-{ns}")},
                   "spec": {"clusterIP": format!("10.96.{}.{}", s / 256, s % 256),
                            "selector": {"app": format!("app-{s}")},
                            "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}}),
            )
            .unwrap()
            .unwrap(),
        ));
        changes.push(Change::Upsert(
            Object::from_json(
                "ReplicaSet",
                json!({"metadata": {"name": format!("app-{s}-5d4f"), "namespace": format!("ns-{ns}"), "uid": format!("rs-{s}"),
                   "ownerReferences": [{"kind": "Deployment", "name": format!("app-{s}"), "uid": format!("d-{s}"), "controller": true}]}}),
            )
            .unwrap()
            .unwrap(),
        ));
    }
    let pod = |i: usize, uid: String, start: i64| {
        let app = i % SERVICES;
        let ns = app % NAMESPACES;
        Object::from_json(
            "Pod",
            json!({"metadata": {"name": format!("app-{app}-5d4f-{i}"), "namespace": format!("ns-{ns}"), "uid": uid,
                   "labels": {"app": format!("app-{app}"), "pod-template-hash": "5d4f"},
                   "ownerReferences": [{"kind": "ReplicaSet", "name": format!("app-{app}-5d4f"), "uid": format!("rs-{app}"), "controller": true}]},
               "spec": {"nodeName": format!("node-{}", i % NODES), "containers": [{"ports": [{"containerPort": 8080}]}]},
               "status": {"phase": "Running", "podIP": pod_ip(i), "startTime": rfc3339(start)}}),
        )
        .unwrap()
        .unwrap()
    };
    let mut store = Store::new(Limits::default());
    store.apply_all(changes, now - 7_200 * S);
    // One pod in five replaced an earlier pod on the same address an hour ago.
    let t_old = now - 7_000 * S;
    let t_new = now - 3_600 * S;
    for i in (0..PODS).step_by(5) {
        store.apply(Change::Upsert(pod(i, format!("old-{i}"), t_old)), t_old);
        store.apply(Change::Delete(pod(i, format!("old-{i}"), t_old)), t_new - S);
    }
    let pods: Vec<Change> = (0..PODS)
        .map(|i| Change::Upsert(pod(i, format!("uid-{i}"), t_new)))
        .collect();
    store.apply_all(pods, t_new);

    let mut interfaces = InterfaceCache::default();
    for n in 0..NODES {
        for ifindex in 1..=IFACES_PER_NODE {
            interfaces.upsert(Interface {
                host: format!("node-{n}"),
                ifindex,
                name: format!("veth{n:03}{ifindex:03}"),
                mac: "aa:bb:cc:dd:ee:ff".into(),
                mtu: 1450,
                kind: "veth".into(),
                netns: String::new(),
                netns_inode: 4_026_532_000,
                oper_state: "up".into(),
                time_observed_ns: now,
            });
        }
    }
    (store, interfaces)
}

fn rfc3339(ns: i64) -> String {
    flowlens_testkit::rfc3339(ns.div_euclid(S))
}

/// Deterministic flows (xorshift), times within the last minute.
fn flows(n: usize, now: i64) -> Vec<RawFlow> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|_| {
            let a = next() as usize % PODS;
            let r = next();
            let dst = if r % 10 == 0 {
                format!("203.0.{}.{}", (r >> 8) % 256, (r >> 16) % 256)
            } else {
                pod_ip((r >> 8) as usize % PODS)
            };
            let t = now - (next() % (60 * S as u64)) as i64;
            RawFlow {
                host: format!("node-{}", a % NODES),
                ifindex: 1 + (next() % IFACES_PER_NODE as u64) as i32,
                direction: if r & 2 == 0 {
                    Direction::Egress
                } else {
                    Direction::Ingress
                },
                time_flow_start_ns: t,
                time_flow_end_ns: t + S,
                time_exported_ns: t + 2 * S,
                etype: 0x0800,
                vlan_id: 0,
                proto: 6,
                src_addr: ip_to_v6(pod_ip(a).parse().unwrap()),
                dst_addr: ip_to_v6(dst.parse().unwrap()),
                src_port: 40_000 + (r % 20_000) as i32,
                dst_port: 8080,
                icmp_type: 0,
                icmp_code: 0,
                tcp_flags: 0x18,
                packets: 10,
                bytes: 6_000,
                sampling_rate: 1,
                // A conversation (RawFlow v2): the answer, an RTT sample, the local client
                // process on every other record.
                reverse_packets: 8,
                reverse_bytes: 4_000,
                reverse_tcp_flags: 0x18,
                rtt_ns: 250_000 + (r % 1000) as i64,
                src_process: (r % 2 == 0).then(|| flowlens_schemas::Process {
                    pid: 1_000 + (r % 5_000) as i32,
                    comm: "java".into(),
                    cgroup_id: 4_026_532_000 + (r % 100) as i64,
                }),
                ..Default::default()
            }
        })
        .collect()
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("RECORDS [E2E_RECORDS]"))
        .collect();
    let n = args.first().copied().unwrap_or(2_000_000);
    let e2e_n = args.get(1).copied().unwrap_or(200_000);
    let now = flowlens_enricher::kubernetes::now_ns();
    let t = Instant::now();
    let (store, interfaces) = cluster(now);
    println!(
        "cluster built in {:.2} s: {:?}",
        t.elapsed().as_secs_f64(),
        store.stats()
    );
    let cidrs = vec!["10.64.0.0/10".parse().unwrap()];
    let input = flows(n, now);

    // 1. The join alone, one core, caches borrowed directly: lookups, classification, and the
    //    enriched record written out as its Avro message (the pipeline's path, `Joined`).
    let k = Kubernetes {
        store: &store,
        cluster_cidrs: &cidrs,
    };
    let t = Instant::now();
    let (mut hits, mut pods) = (0usize, 0usize);
    let mut out = Vec::with_capacity(512);
    for raw in &input {
        let joined = Joined::new(raw, &interfaces, Some(k));
        out.clear();
        joined.encode(&mut out).unwrap();
        let h = joined.hits();
        hits += usize::from(h.interface && h.src);
        pods += usize::from(h.dst);
        std::hint::black_box(&out);
    }
    let join = t.elapsed();
    // The same join building an owned EnrichedFlow instead (`enrich`: ~20 strings copied).
    let batch = input.clone();
    let t = Instant::now();
    for raw in batch {
        std::hint::black_box(enrich(raw, &interfaces, Some(k)));
    }
    let owned = t.elapsed();
    // For scale: the interface join alone (owned record), and the two address lookups alone.
    let batch = input.clone();
    let t = Instant::now();
    for raw in batch {
        std::hint::black_box(enrich(raw, &interfaces, None));
    }
    let iface_only = t.elapsed();
    let t = Instant::now();
    let mut found = 0usize;
    for raw in &input {
        let time = flowlens_enricher::join::flow_time(raw);
        found += usize::from(store.lookup(&raw.src_addr, time).is_some());
        found += usize::from(store.lookup(&raw.dst_addr, time).is_some());
    }
    std::hint::black_box(found);
    let lookups = t.elapsed();
    println!(
        "join + direct Avro encode (1 core): {:>10.0} records/s  ({n} records, {:.1} % src+iface hits, {:.1} % dst known)",
        rate(n, join),
        100.0 * hits as f64 / n as f64,
        100.0 * pods as f64 / n as f64
    );
    println!(
        "join into an owned EnrichedFlow (1 core): {:>10.0} records/s",
        rate(n, owned)
    );
    println!(
        "  for scale: interface join + record copy alone {:>10.0} records/s; two address lookups alone {:>10.0} records/s",
        rate(n, iface_only),
        rate(n, lookups)
    );

    // 2. As the pipeline does it: per record, read-lock both caches, join, Avro-encode; and
    //    decode first (the whole CPU work per record, Kafka client excluded).
    let store = Arc::new(RwLock::new(store));
    let interfaces = Arc::new(RwLock::new(interfaces));
    let encoded: Vec<Vec<u8>> = input
        .iter()
        .map(|r| {
            let mut b = Vec::new();
            flowlens_schemas::encode(r, &mut b).unwrap();
            b
        })
        .collect();
    // RawFlow decode alone: apache-avro's generic path, and the enricher's (fast path).
    let t = Instant::now();
    for m in &encoded {
        std::hint::black_box(flowlens_schemas::decode::<RawFlow>(m).unwrap());
    }
    let generic = t.elapsed();
    let t = Instant::now();
    for m in &encoded {
        std::hint::black_box(flowlens_schemas::reader::raw_flow(m).unwrap());
    }
    let fast = t.elapsed();
    println!(
        "RawFlow decode (1 core): apache-avro {:>9.0} records/s ({:.2} µs), enricher fast path {:>9.0} records/s ({:.3} µs)",
        rate(n, generic),
        generic.as_secs_f64() * 1e6 / n as f64,
        rate(n, fast),
        fast.as_secs_f64() * 1e6 / n as f64
    );
    let work = |msgs: &[Vec<u8>]| {
        let mut out = Vec::with_capacity(512);
        for m in msgs {
            let raw: RawFlow = flowlens_schemas::reader::raw_flow(m).unwrap();
            let i = interfaces.read().unwrap();
            let s = store.read().unwrap();
            let k = Kubernetes {
                store: &s,
                cluster_cidrs: &cidrs,
            };
            out.clear();
            Joined::new(&raw, &i, Some(k)).encode(&mut out).unwrap();
            std::hint::black_box(&out);
        }
    };
    let t = Instant::now();
    work(&encoded);
    let full = t.elapsed();
    println!(
        "decode + locks + join + encode, as the pipeline (1 core): {:>7.0} records/s",
        rate(n, full)
    );
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let t = Instant::now();
    std::thread::scope(|s| {
        for chunk in encoded.chunks(n.div_ceil(cores)) {
            s.spawn(|| work(chunk));
        }
    });
    let all = t.elapsed();
    println!(
        "decode + locks + join + encode ({cores} threads, shared caches): {:>7.0} records/s",
        rate(n, all)
    );

    // 3. End to end through tansu.
    let tansu_bin = flowlens_testkit::TANSU;
    if !std::path::Path::new(tansu_bin).exists() {
        println!("end to end: skipped ({tansu_bin} missing; run scripts/setup.sh)");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(end_to_end(encoded, e2e_n));
}

/// Counts `flowlens_enricher_records_out_total` (enriched records acknowledged by the broker):
/// tansu's offsets do not count records one by one, so the topic's end offsets cannot.
struct OutCounter(Arc<std::sync::atomic::AtomicU64>);

struct Add(Arc<std::sync::atomic::AtomicU64>);

impl metrics::CounterFn for Add {
    fn increment(&self, value: u64) {
        self.0
            .fetch_add(value, std::sync::atomic::Ordering::Relaxed);
    }
    fn absolute(&self, _value: u64) {}
}

impl metrics::Recorder for OutCounter {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        if key.name() == "flowlens_enricher_records_out_total" {
            metrics::Counter::from_arc(Arc::new(Add(self.0.clone())))
        } else {
            metrics::Counter::noop()
        }
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

async fn end_to_end(encoded: Vec<Vec<u8>>, n: usize) {
    use flowlens_testkit::{unique, Tansu};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let tansu = Tansu::start();
    let mut config = flowlens_enricher::Config::default();
    config.kafka.brokers = vec![tansu.broker()];
    config.kafka.partitions = 2;
    config.kafka.topics.raw_flows = unique("raw");
    config.kafka.topics.interfaces = unique("ifaces");
    config.kafka.topics.enriched_flows = unique("enriched");
    config.kafka.topics.dead_letter = unique("dlq");
    config.enricher.group_id = unique("bench");
    config.enricher.interfaces_ready_timeout_ms = 2_000;
    let t = &config.kafka.topics;
    config
        .kafka
        .ensure_topics(&[
            (t.raw_flows.as_str(), false),
            (t.interfaces.as_str(), true),
            (t.enriched_flows.as_str(), false),
            (t.dead_letter.as_str(), false),
        ])
        .await
        .unwrap();

    // The enricher reads the same cluster through its snapshot source (current pods only).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.json");
    write_snapshot(&path);
    config.kubernetes.source = flowlens_enricher::kubernetes::config::Source::Snapshot;
    config.kubernetes.snapshot_path = path.display().to_string();

    // Load the raw topic first (the collector's producer settings), then enrich it all.
    let producer: FutureProducer = config.kafka.producer_config().create().unwrap();
    let started = Instant::now();
    let mut pending = Vec::with_capacity(10_000);
    for (i, m) in encoded.iter().cycle().take(n).enumerate() {
        let key = format!("k{}", i % 1024);
        loop {
            match producer.send_result(
                FutureRecord::<str, [u8]>::to(&config.kafka.topics.raw_flows)
                    .key(&key)
                    .payload(m),
            ) {
                Ok(d) => {
                    pending.push(d);
                    break;
                }
                Err(_) => {
                    for d in pending.drain(..) {
                        d.await.unwrap().unwrap();
                    }
                }
            }
        }
        if pending.len() >= 10_000 {
            for d in pending.drain(..) {
                d.await.unwrap().unwrap();
            }
        }
    }
    for d in pending.drain(..) {
        d.await.unwrap().unwrap();
    }
    println!(
        "end to end: {n} raw records produced to tansu in {:.2} s ({:.0}/s)",
        started.elapsed().as_secs_f64(),
        rate(n, started.elapsed())
    );

    let out = Arc::new(std::sync::atomic::AtomicU64::new(0));
    metrics::set_global_recorder(OutCounter(out.clone())).expect("first recorder");
    let shutdown = flowlens_runtime::Shutdown::new();
    let task = tokio::spawn(flowlens_enricher::run(config, shutdown.clone()));
    let mut first: Option<(Instant, usize, f64)> = None;
    let mut last = (Instant::now(), 0usize, 0.0);
    let done = loop {
        let c = out.load(std::sync::atomic::Ordering::Relaxed) as usize;
        if c > 0 && first.is_none() {
            first = Some((Instant::now(), c, cpu_time(libc::RUSAGE_SELF).as_secs_f64()));
        }
        if c != last.1 {
            last = (Instant::now(), c, cpu_time(libc::RUSAGE_SELF).as_secs_f64());
        }
        if c >= n || last.0.elapsed() > Duration::from_secs(10) {
            break last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("end to end: {} of {n} records enriched", done.1);
    shutdown.trigger();
    task.await.unwrap().unwrap();
    let (t0, c0, cpu0) = first.expect("enriched records");
    println!(
        "end to end: enricher CPU {:.2} µs per record (this process between the first and the \
         last record out: the stage's threads and librdkafka's; the broker not included)",
        (done.2 - cpu0) * 1e6 / (done.1 - c0).max(1) as f64
    );
    println!(
        "end to end: {} records enriched through tansu (consume, join, produce, acks, offsets) at {:.0} records/s",
        done.1,
        rate(done.1 - c0, done.0 - t0)
    );
}

/// The cluster's current pods, services, nodes and owners as a kubectl-style List file.
fn write_snapshot(path: &std::path::Path) {
    let now = flowlens_enricher::kubernetes::now_ns();
    let mut items = Vec::new();
    for n in 0..NODES {
        items.push(json!({"kind": "Node", "metadata": {"name": format!("node-{n}")},
            "status": {"addresses": [{"type": "InternalIP", "address": format!("192.168.{}.{}", n / 256, n % 256)}]}}));
    }
    for s in 0..SERVICES {
        let ns = s % NAMESPACES;
        items.push(json!({"kind": "Service", "metadata": {"name": format!("svc-{s}"), "namespace": format!("ns-{ns}")},
            "spec": {"clusterIP": format!("10.96.{}.{}", s / 256, s % 256), "selector": {"app": format!("app-{s}")},
                     "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}}));
        items.push(json!({"kind": "ReplicaSet", "metadata": {"name": format!("app-{s}-5d4f"), "namespace": format!("ns-{ns}"), "uid": format!("rs-{s}"),
            "ownerReferences": [{"kind": "Deployment", "name": format!("app-{s}"), "uid": format!("d-{s}"), "controller": true}]}}));
    }
    for i in 0..PODS {
        let app = i % SERVICES;
        let ns = app % NAMESPACES;
        items.push(json!({"kind": "Pod", "metadata": {"name": format!("app-{app}-5d4f-{i}"), "namespace": format!("ns-{ns}"), "uid": format!("uid-{i}"),
               "labels": {"app": format!("app-{app}"), "pod-template-hash": "5d4f"},
               "ownerReferences": [{"kind": "ReplicaSet", "name": format!("app-{app}-5d4f"), "uid": format!("rs-{app}"), "controller": true}]},
           "spec": {"nodeName": format!("node-{}", i % NODES), "containers": [{"ports": [{"containerPort": 8080}]}]},
           "status": {"phase": "Running", "podIP": pod_ip(i), "startTime": rfc3339(now - 3_600 * S)}}));
    }
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    std::fs::write(path, serde_json::to_vec(&list).unwrap()).unwrap();
}
