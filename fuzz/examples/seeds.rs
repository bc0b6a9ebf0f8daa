//! Writes the seed inputs of every fuzz target into `corpus/<target>/`: valid messages of every
//! writer version the schemas crate knows (older versions through apache-avro's generic writer
//! and the historic `.avsc`), interface records and tombstones, and a `kubectl -o json` list
//! with one object of each kind the enricher reads. The fuzzer mutates from there.
//!
//!   cargo run --manifest-path fuzz/Cargo.toml --example seeds

use std::path::Path;

use flowlens_schemas::apache_avro::types::Value;
use flowlens_schemas::apache_avro::{to_value, GenericSingleObjectWriter, Schema};
use flowlens_schemas::{
    encode, ip_to_v6, Direction, Dns, EnrichedFlow, Http, Interface, Process, RawFlow, RecordKind,
};

fn raw(host: &str, conversation: bool) -> RawFlow {
    let mut f = RawFlow {
        host: host.into(),
        ifindex: 7,
        direction: Direction::Egress,
        time_flow_start_ns: 1_700_000_000_000_000_000,
        time_flow_end_ns: 1_700_000_000_900_000_000,
        time_exported_ns: 1_700_000_001_000_000_000,
        etype: 0x0800,
        proto: 6,
        src_addr: ip_to_v6("10.244.1.17".parse().unwrap()),
        dst_addr: "2001:db8::10".parse().unwrap(),
        src_port: 43_512,
        dst_port: 53,
        tcp_flags: 0x13,
        packets: 12,
        bytes: 18_168,
        sampling_rate: 1,
        ..Default::default()
    };
    if conversation {
        f.reverse_packets = 9;
        f.reverse_bytes = 594;
        f.end_reason = "fin".into();
        f.rtt_ns = 1_250_000;
        f.drops = 1;
        f.drop_reason = "NETFILTER_DROP".into();
        f.src_process = Some(Process {
            pid: 4_242,
            comm: "curl".into(),
            cgroup_id: 9_876_543_210,
        });
        f.tunnel = "vxlan".into();
        f.outer_dst_addr = Some("2001:db8::ff".parse().unwrap());
        f.duplicate = true;
        f.dns = Some(Dns {
            queries: 3,
            responses: 3,
            noerror: 2,
            nxdomain: 1,
            answered: 3,
            latency_sum_ns: 1_500_000,
            latency_max_ns: 900_000,
            latencies_us: vec![200, 400, 900],
            last_query: Some("web.shop.svc.cluster.local".into()),
            last_query_type: 28,
            ..Dns::default()
        });
        f.http = Some(Http {
            requests: 3,
            responses: 3,
            status_2xx: 1,
            status_4xx: 1,
            status_5xx: 1,
            answered: 3,
            latency_sum_ns: 4_500_000,
            latency_max_ns: 3_000_000,
            latencies_us: vec![500, 1_000, 3_000],
            last_method: Some("GET".into()),
            last_path: Some("/api/cart".into()),
            last_status: 503,
            ..Http::default()
        });
    }
    f
}

fn enriched(raw: RawFlow) -> EnrichedFlow {
    let mut e = EnrichedFlow::from_raw(raw);
    e.if_name = "veth3f2a9c1".into();
    e.if_kind = "veth".into();
    e.src_pod = Some("web-7d9f-abcde".into());
    e.src_namespace = Some("shop".into());
    e.dst_service = Some(String::new());
    e.src_role = Some("client".into());
    e.locality = Some("cluster".into());
    e
}

fn interface() -> Interface {
    Interface {
        host: "node-1".into(),
        ifindex: 7,
        name: "veth7".into(),
        mac: "02:00:00:00:00:07".into(),
        mtu: 1500,
        kind: "veth".into(),
        netns: "pod-ns".into(),
        netns_inode: 4_026_532_000,
        oper_state: "up".into(),
        time_observed_ns: 1,
    }
}

/// `record` as a writer with `schema` (an earlier version) wrote it: the fields it has.
fn as_version<R: serde::Serialize>(record: &R, schema: &Schema) -> Vec<u8> {
    let Schema::Record(fields_of) = schema else {
        panic!("not a record schema")
    };
    let Value::Record(fields) = to_value(record).unwrap() else {
        panic!("not a record value")
    };
    let fields = fields
        .into_iter()
        .filter(|(n, _)| fields_of.lookup.contains_key(n))
        .collect();
    let mut w = GenericSingleObjectWriter::new_with_capacity(schema, 256).unwrap();
    let mut out = Vec::new();
    w.write_value(Value::Record(fields).resolve(schema).unwrap(), &mut out)
        .unwrap();
    out
}

/// One message per (record, writer version), each record in a bare and a full variant.
fn messages() -> Vec<(RecordKind, u32, Vec<u8>)> {
    let mut out = Vec::new();
    for (kind, version, fingerprint, schema) in RecordKind::known_writers() {
        let current = fingerprint == kind.fingerprint();
        let mut add = |bytes: Vec<u8>| out.push((kind, version, bytes));
        match kind {
            RecordKind::RawFlow => {
                for f in [raw("n", false), raw("node-a.example", true)] {
                    add(if current {
                        let mut b = Vec::new();
                        encode(&f, &mut b).unwrap();
                        b
                    } else {
                        as_version(&f, schema)
                    });
                }
            }
            RecordKind::EnrichedFlow => {
                for f in [
                    EnrichedFlow::from_raw(raw("n", false)),
                    enriched(raw("node-a", true)),
                ] {
                    add(if current {
                        let mut b = Vec::new();
                        encode(&f, &mut b).unwrap();
                        b
                    } else {
                        as_version(&f, schema)
                    });
                }
            }
            RecordKind::Interface => {
                let mut b = Vec::new();
                encode(&interface(), &mut b).unwrap();
                add(b);
            }
        }
    }
    out
}

fn kubectl_list() -> String {
    serde_json::json!({
        "apiVersion": "v1", "kind": "List",
        "items": [
            {"kind": "Pod", "metadata": {"name": "web-1", "namespace": "shop", "uid": "u1",
                "labels": {"app": "web"}, "creationTimestamp": "2024-05-01T12:00:00Z",
                "ownerReferences": [{"kind": "ReplicaSet", "name": "web-7d9f", "uid": "u2", "controller": true}]},
             "spec": {"nodeName": "node-a", "containers": [{"ports": [{"containerPort": 8080, "protocol": "TCP"}]}]},
             "status": {"phase": "Running", "podIP": "10.244.1.17", "podIPs": [{"ip": "10.244.1.17"}, {"ip": "fd00::17"}],
                 "hostIP": "192.168.1.10", "startTime": "2024-05-01T12:00:01.5+02:00"}},
            {"kind": "ReplicaSet", "metadata": {"name": "web-7d9f", "namespace": "shop", "uid": "u2",
                "ownerReferences": [{"kind": "Deployment", "name": "web", "uid": "u3", "controller": true}]}},
            {"kind": "Job", "metadata": {"name": "batch", "namespace": "shop", "uid": "u4"}},
            {"kind": "Service", "metadata": {"name": "web", "namespace": "shop", "uid": "u5"},
             "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "selector": {"app": "web"},
                 "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}]}},
            {"kind": "EndpointSlice", "metadata": {"name": "web-abc", "namespace": "shop", "uid": "u6",
                "labels": {"kubernetes.io/service-name": "web"}},
             "endpoints": [{"addresses": ["10.244.1.17"], "nodeName": "node-a",
                 "targetRef": {"kind": "Pod", "name": "web-1", "namespace": "shop", "uid": "u1"}}]},
            {"kind": "Node", "metadata": {"name": "node-a", "uid": "u7"},
             "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.10"}]}},
            {"kind": "PodList", "items": [{"metadata": {"name": "b", "namespace": "x", "uid": "u8"}}]}
        ]
    })
    .to_string()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let messages = messages();
    let writers: Vec<[u8; 8]> = RecordKind::known_writers().map(|w| w.2).collect();
    for (i, (kind, version, bytes)) in messages.iter().enumerate() {
        let name = format!("seed-{kind:?}-v{version}-{i}");
        write(&corpus.join("schemas_reader"), &name, bytes);
        // The datum after a selector byte choosing its own writer.
        let selector = writers
            .iter()
            .position(|fp| fp[..] == bytes[2..10])
            .unwrap() as u8;
        let mut datum = vec![selector];
        datum.extend_from_slice(&bytes[10..]);
        write(
            &corpus.join("schemas_reader"),
            &format!("{name}-datum"),
            &datum,
        );
        match kind {
            RecordKind::RawFlow => write(&corpus.join("raw_flow"), &name, bytes),
            RecordKind::EnrichedFlow => write(&corpus.join("enriched_flow"), &name, bytes),
            RecordKind::Interface => {
                let key = b"node-1/7";
                let mut record = vec![3, key.len() as u8];
                record.extend_from_slice(key);
                record.extend_from_slice(bytes);
                write(&corpus.join("interface_record"), &name, &record);
            }
        }
    }
    let mut tombstone = vec![1, 8];
    tombstone.extend_from_slice(b"node-1/7");
    write(
        &corpus.join("interface_record"),
        "seed-tombstone",
        &tombstone,
    );
    write(
        &corpus.join("kubernetes_snapshot"),
        "seed-list",
        kubectl_list().as_bytes(),
    );
    println!("seeds written under {}", corpus.display());
}
