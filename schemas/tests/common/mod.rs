//! Sample records shared by the integration tests.
#![allow(dead_code)]

use flowlens_schemas::{
    ip_to_v6, Direction, Dns, EnrichedFlow, Http, Interface, Origin, Process, RawFlow,
};

pub fn raw_v4() -> RawFlow {
    RawFlow {
        host: "node-a.example".into(),
        ifindex: 7,
        direction: Direction::Egress,
        time_flow_start_ns: 1_700_000_000_000_000_000,
        time_flow_end_ns: 1_700_000_000_900_000_000,
        time_exported_ns: 1_700_000_001_000_000_000,
        etype: 0x0800,
        vlan_id: 0,
        proto: 6,
        src_addr: ip_to_v6("10.244.1.17".parse().unwrap()),
        dst_addr: ip_to_v6("10.96.0.10".parse().unwrap()),
        src_port: 43_512,
        dst_port: 53,
        icmp_type: 0,
        icmp_code: 0,
        tcp_flags: 0x02 | 0x10 | 0x01,
        packets: 12,
        bytes: 1_514 * 12,
        sampling_rate: 1,
        ..Default::default()
    }
}

/// `raw_v4` as one conversation with every field RawFlow versions 2, 3 and 4 added set
/// (processes, outer addresses, origin, dns and http included): its version 1 projection is exactly
/// `raw_v4()`, its version 2 projection `raw_conversation_v2()`, its version 3 projection
/// `raw_conversation_v3()`.
pub fn raw_conversation() -> RawFlow {
    RawFlow {
        reverse_packets: 9,
        reverse_bytes: 66 * 9,
        reverse_tcp_flags: 0x12 | 0x10 | 0x01,
        end_reason: "fin".into(),
        rtt_ns: 1_250_000,
        retransmits: 2,
        drops: 1,
        drop_bytes: 1_514,
        drop_reason: "NETFILTER_DROP".into(),
        src_process: Some(Process {
            pid: 4_242,
            comm: "curl".into(),
            cgroup_id: 9_876_543_210,
        }),
        dst_process: Some(Process {
            pid: i32::MAX,
            comm: "cörédns".into(),
            cgroup_id: i64::MIN,
        }),
        tunnel: "vxlan".into(),
        tunnel_id: 4_096,
        outer_src_addr: Some(ip_to_v6("192.168.10.1".parse().unwrap())),
        outer_dst_addr: Some("2001:db8::ff".parse().unwrap()),
        duplicate: true,
        origin: Some(origin()),
        dns: Some(dns()),
        http: Some(http()),
        ..raw_v4()
    }
}

/// DNS statistics with every field set (latencies beyond 32 bits of nanoseconds, a name with
/// a non-ASCII label, a QTYPE above 255).
pub fn dns() -> Dns {
    Dns {
        queries: 5,
        responses: 4,
        noerror: 1,
        nxdomain: 1,
        servfail: 1,
        refused: 0,
        other_rcode: 1,
        answered: 3,
        latency_sum_ns: 7_300_000_000,
        latency_max_ns: 5_000_000_000,
        latencies_us: vec![300_000, 2_000_000, 5_000_000],
        last_query: Some("api.shop.svc.cluster.local".into()),
        last_query_type: 65,
    }
}

/// HTTP/1.x statistics with every field set (latencies beyond 32 bits of nanoseconds, a
/// percent-encoded path, a status outside 200-599).
pub fn http() -> Http {
    Http {
        requests: 6,
        responses: 5,
        status_2xx: 2,
        status_3xx: 0,
        status_4xx: 1,
        status_5xx: 1,
        status_other: 1,
        answered: 4,
        latency_sum_ns: 9_100_000_000,
        latency_max_ns: 6_000_000_000,
        latencies_us: vec![1_000, 100_000, 3_000_000, 6_000_000],
        last_method: Some("POST".into()),
        last_path: Some("/api/caf%C3%A9/orders".into()),
        last_status: 999,
    }
}

/// `raw_conversation()` as RawFlow version 3 had it: without dns and http.
pub fn raw_conversation_v3() -> RawFlow {
    RawFlow {
        dns: None,
        http: None,
        ..raw_conversation()
    }
}

/// An origin with every field set (a 16-byte stream id with high bits, a partition and offset
/// beyond 32 bits).
pub fn origin() -> Origin {
    Origin {
        topic: "flowlens.flows.raw".into(),
        stream: std::array::from_fn(|i| 0xf0 ^ i as u8),
        partition: 11,
        offset: 5_000_000_000,
    }
}

/// `raw_conversation()` as RawFlow version 2 had it: without an origin.
pub fn raw_conversation_v2() -> RawFlow {
    RawFlow {
        origin: None,
        ..raw_conversation_v3()
    }
}

pub fn raw_v6() -> RawFlow {
    RawFlow {
        host: "node-b".into(),
        ifindex: i32::MAX,
        direction: Direction::Ingress,
        time_flow_start_ns: i64::MIN,
        time_flow_end_ns: i64::MAX,
        time_exported_ns: -1,
        etype: 0x86DD,
        vlan_id: 4094,
        proto: 58,
        src_addr: "2001:db8::1".parse().unwrap(),
        dst_addr: "ff02::1:ff00:1".parse().unwrap(),
        src_port: 0,
        dst_port: 0,
        icmp_type: 135,
        icmp_code: 0,
        tcp_flags: 0,
        packets: i64::MAX,
        bytes: 0,
        sampling_rate: 1000,
        ..Default::default()
    }
}

pub fn interface() -> Interface {
    Interface {
        host: "node-a.example".into(),
        ifindex: 7,
        name: "veth3f2a9c1".into(),
        mac: "aa:bb:cc:dd:ee:ff".into(),
        mtu: 1450,
        kind: "veth".into(),
        netns: "cni-1234-üñí".into(),
        netns_inode: 4_026_532_000,
        oper_state: "up".into(),
        time_observed_ns: 1_700_000_000_000_000_000,
    }
}

/// Every field set (the raw part is `raw_conversation()`), some nullable ones null or empty.
pub fn enriched_full() -> EnrichedFlow {
    enriched(raw_conversation())
}

/// `raw` with the join results of `enriched_full()`.
pub fn enriched(raw: RawFlow) -> EnrichedFlow {
    let mut e = EnrichedFlow::from_raw(raw);
    e.if_name = "veth3f2a9c1".into();
    e.if_mac = "aa:bb:cc:dd:ee:ff".into();
    e.if_kind = "veth".into();
    e.if_netns = "cni-1234".into();
    e.src_pod = Some("web-7d9f-abcde".into());
    e.src_namespace = Some("shop".into());
    e.src_workload = Some("web".into());
    e.src_workload_kind = Some("Deployment".into());
    e.src_node = Some("node-a".into());
    e.src_service = None;
    e.dst_pod = None;
    e.dst_namespace = Some("kube-system".into());
    e.dst_workload = None;
    e.dst_workload_kind = None;
    e.dst_node = None;
    e.dst_service = Some(String::new());
    e.src_pod_uid = Some("0b5c3a52-4a8e-4f0e-9c1d-2f7e8a9b1c3d".into());
    e.src_role = Some("client".into());
    e.dst_role = Some("server".into());
    e.locality = Some("cluster".into());
    e.if_pod = Some("web-7d9f-abcde".into());
    e.if_namespace = Some("shop".into());
    e
}

pub fn enriched_bare() -> EnrichedFlow {
    EnrichedFlow::from_raw(raw_v6())
}

/// One valid message of each record type.
pub fn messages() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    flowlens_schemas::encode(&raw_v4(), &mut buf).unwrap();
    out.push(("RawFlow", std::mem::take(&mut buf)));
    flowlens_schemas::encode(&interface(), &mut buf).unwrap();
    out.push(("Interface", std::mem::take(&mut buf)));
    flowlens_schemas::encode(&enriched_full(), &mut buf).unwrap();
    out.push(("EnrichedFlow", std::mem::take(&mut buf)));
    out
}
