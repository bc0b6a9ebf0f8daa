//! The designed records: the ends of each conversation and the EnrichedFlow records the
//! queries are checked on.

use super::*;

/// One end of a flow: address and Kubernetes metadata ("" = unknown).
#[derive(Clone, Copy)]
pub(crate) struct End {
    pub(crate) ip: &'static str,
    pub(crate) pod: &'static str,
    pub(crate) ns: &'static str,
    pub(crate) workload: &'static str,
    pub(crate) kind: &'static str,
    pub(crate) service: &'static str,
    pub(crate) node: &'static str,
}

pub(crate) const WEB1: End = End {
    ip: "10.1.0.11",
    pod: "web-1",
    ns: "shop",
    workload: "web",
    kind: "Deployment",
    service: "",
    node: "n1",
};
pub(crate) const WEB2: End = End {
    ip: "10.1.0.12",
    pod: "web-2",
    node: "n2",
    ..WEB1
};
pub(crate) const API1: End = End {
    ip: "10.1.0.21",
    pod: "api-1",
    ns: "shop",
    workload: "api",
    kind: "Deployment",
    service: "api",
    node: "n1",
};
pub(crate) const PG0: End = End {
    ip: "10.2.0.5",
    pod: "pg-0",
    ns: "db",
    workload: "pg",
    kind: "StatefulSet",
    service: "pg",
    node: "n2",
};
pub(crate) const EXTERNAL: End = End {
    ip: "203.0.113.9",
    pod: "",
    ns: "",
    workload: "",
    kind: "",
    service: "",
    node: "",
};
/// The nodes' own addresses (the VXLAN outer flow).
pub(crate) const NODE1: End = End {
    ip: "192.168.0.1",
    ..EXTERNAL
};
pub(crate) const NODE2: End = End {
    ip: "192.168.0.2",
    ..EXTERNAL
};

#[allow(clippy::too_many_arguments)]
pub(crate) fn flow(
    src: End,
    dst: End,
    proto: i32,
    dst_port: i32,
    bytes: i64,
    packets: i64,
    tcp_flags: i32,
    if_name: &str,
    direction: Direction,
    end_ns: i64,
) -> EnrichedFlow {
    let ip = |s: &str| ip_to_v6(s.parse::<IpAddr>().unwrap());
    let mut f = EnrichedFlow::from_raw(RawFlow {
        host: "node-a".into(),
        ifindex: 2,
        direction,
        time_flow_start_ns: end_ns - 1_000_000_000,
        time_flow_end_ns: end_ns,
        time_exported_ns: end_ns + 500_000_000,
        etype: 0x0800,
        vlan_id: 0,
        proto,
        src_addr: ip(src.ip),
        dst_addr: ip(dst.ip),
        src_port: 40_000,
        dst_port,
        icmp_type: 0,
        icmp_code: 0,
        tcp_flags,
        packets,
        bytes,
        sampling_rate: 1,
        ..Default::default()
    });
    f.if_name = if_name.into();
    f.if_kind = "veth".into();
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    f.src_pod = opt(src.pod);
    f.src_namespace = opt(src.ns);
    f.src_workload = opt(src.workload);
    f.src_workload_kind = opt(src.kind);
    f.src_service = opt(src.service);
    f.src_node = opt(src.node);
    f.dst_pod = opt(dst.pod);
    f.dst_namespace = opt(dst.ns);
    f.dst_workload = opt(dst.workload);
    f.dst_workload_kind = opt(dst.kind);
    f.dst_service = opt(dst.service);
    f.dst_node = opt(dst.node);
    // EnrichedFlow v2 (migration 0003), as the enricher sets them: the source is the client,
    // locality from the nodes (no node on one side: outside the cluster), UIDs of known pods,
    // the interface's pod is the end on this side of the veth.
    f.src_role = Some("client".into());
    f.dst_role = Some("server".into());
    f.locality = Some(
        if src.node.is_empty() || dst.node.is_empty() {
            "external"
        } else if src.node == dst.node {
            "node"
        } else {
            "cluster"
        }
        .into(),
    );
    let uid = |e: End| (!e.pod.is_empty()).then(|| format!("uid-{}", e.pod));
    f.src_pod_uid = uid(src);
    f.dst_pod_uid = uid(dst);
    let local = if direction == Direction::Egress {
        src
    } else {
        dst
    };
    f.if_pod = opt(local.pod);
    f.if_namespace = opt(local.ns);
    f
}

/// DNS statistics (EnrichedFlow v5, migration 0007): `queries`; the responses as (noerror,
/// nxdomain, servfail, refused, other); the matched latencies in µs; the last query and its type.
pub(crate) fn dns(
    queries: i64,
    (noerror, nxdomain, servfail, refused, other_rcode): (i64, i64, i64, i64, i64),
    latencies_us: &[i64],
    last_query: Option<(&str, i32)>,
) -> Option<flowlens_schemas::Dns> {
    Some(flowlens_schemas::Dns {
        queries,
        responses: noerror + nxdomain + servfail + refused + other_rcode,
        noerror,
        nxdomain,
        servfail,
        refused,
        other_rcode,
        answered: latencies_us.len() as i64,
        latency_sum_ns: latencies_us.iter().sum::<i64>() * 1_000,
        latency_max_ns: latencies_us.iter().max().map_or(0, |l| l * 1_000),
        latencies_us: latencies_us.to_vec(),
        last_query: last_query.map(|(name, _)| name.to_owned()),
        last_query_type: last_query.map_or(0, |(_, qtype)| qtype),
    })
}

/// HTTP/1.x statistics (EnrichedFlow v5, migration 0007): `requests`; the final responses as
/// (2xx, 3xx, 4xx, 5xx, other); the matched latencies in µs; the last request's method and
/// path; the last final response's status.
pub(crate) fn http(
    requests: i64,
    (status_2xx, status_3xx, status_4xx, status_5xx, status_other): (i64, i64, i64, i64, i64),
    latencies_us: &[i64],
    last_request: Option<(&str, &str)>,
    last_status: i32,
) -> Option<flowlens_schemas::Http> {
    Some(flowlens_schemas::Http {
        requests,
        responses: status_2xx + status_3xx + status_4xx + status_5xx + status_other,
        status_2xx,
        status_3xx,
        status_4xx,
        status_5xx,
        status_other,
        answered: latencies_us.len() as i64,
        latency_sum_ns: latencies_us.iter().sum::<i64>() * 1_000,
        latency_max_ns: latencies_us.iter().max().map_or(0, |l| l * 1_000),
        latencies_us: latencies_us.to_vec(),
        last_method: last_request.map(|(method, _)| method.to_owned()),
        last_path: last_request.map(|(_, path)| path.to_owned()),
        last_status,
    })
}

/// B's answer: its bytes, packets and TCP flags.
pub(crate) fn answered(
    mut f: EnrichedFlow,
    bytes: i64,
    packets: i64,
    tcp_flags: i32,
) -> EnrichedFlow {
    f.reverse_bytes = bytes;
    f.reverse_packets = packets;
    f.reverse_tcp_flags = tcp_flags;
    f
}

/// The records (src = A, the initiator; bytes/packets A->B, then B's answer):
///
/// | # | A -> B | proto/port | A->B | B->A | flags A / B | interface, direction | extra |
/// |---|---|---|---|---|---|---|---|
/// | 1 | web-1 -> api-1 | tcp/8080 | 1000 B, 10 p | 4000, 8 | SYN ACK PSH / SYN ACK PSH | eth0 egress | RTT 2 ms, 1 retransmit, curl |
/// | 2 | web-1 -> api-1 | tcp/8080 | 3000, 20 | 500, 5 | ACK PSH / ACK | eth0 egress | RTT 4 ms, fin |
/// | 3 | web-2 -> api-1 | tcp/8080 | 2000, 5 | - | SYN / - | eth0 egress | unanswered |
/// | 4 | api-1 -> pg-0 | tcp/5432 | 5000, 40 | 20000, 30 | SYN ACK PSH both | eth1 egress | RTT 1 ms, 3 retransmits, 2 drops (NETFILTER_DROP, 3000 B), in VXLAN 7, postgres |
/// | 5 | external -> web-1 | tcp/443 | 700, 7 | 300, 3 | ACK / RST ACK | eth0 ingress | 1 drop (TCP_INVALID_SEQUENCE, 60 B), rst |
/// | 6 | web-2 -> pg-0 | udp/5432 | 300, 3 | 900, 3 | - | eth1 egress | |
/// | 7 | #1 again on web-1's veth | | | | | vethweb1 ingress | duplicate |
/// | 8 | node 1 -> node 2 | udp/4789 | 5500, 40 | 22000, 30 | - | eth1 egress | duplicate (#4's outer flow) |
/// | 9 | web-1 -> pg-0 | tcp/5432 | 450, 3 counted at 1:100 | 3000, 2 counted | SYN ACK PSH both | eth1 egress | sampling_rate 100 (estimates 45000 B, 300 p / 300000 B, 200 p), RTT 3 ms, 1 retransmit, 4 drops (NETFILTER_DROP, 6000 B) |
/// | 10 | #9 again on web-1's veth | | | | | vethweb1 ingress | duplicate, sampling_rate 100 |
/// | 11 | web-2 -> api-1 (port 40001) | tcp/8080 | 60, 1 counted at 1:100 | - | SYN / - | eth0 egress of host node-b | sampling_rate 100 (estimates 6000 B, 100 p): the SYN sampled, the answer not |
///
/// DNS statistics ride on some of these conversations (the dns_* columns are read by the two
/// DNS queries and the DNS panel only, so every other answer is unchanged); the duplicates #7
/// and #10 carry the same as #1 and #9, which the DNS answers must not count again:
///
/// | # | queries | responses: noerror, nxdomain, servfail, refused, other | latencies (µs) | last query, type |
/// |---|---|---|---|---|
/// | 1 | 3 | 1, 2, 0, 0, 0 | 800, 1200, 5000 | api.shop.svc.cluster.local, A |
/// | 2 | 2 | 1, 0, 1, 0, 0 | 2000, 3000 | api.shop.svc.cluster.local, AAAA |
/// | 3 | 4 | 0, 1, 0, 0, 0 | 40000 | metrics.example.com, A |
/// | 4 | 1 | 0, 0, 0, 1, 0 | 100 | pg.db.svc.cluster.local, SRV |
/// | 5 | 0 | 0, 0, 0, 0, 2 | - | - (no query) |
/// | 6 | 1 | 1, 0, 0, 0, 0 | 600 | pg.db.svc.cluster.local, A |
/// | 9 | 1 (sampled 1:100: not multiplied) | 0, 0, 1, 0, 0 | 9000 | pg.db.svc.cluster.local, A |
///
/// HTTP/1.x statistics the same way (read by the two HTTP queries and the HTTP panel only);
/// the duplicate #7 carries the same as #1:
///
/// | # | requests | final responses: 2xx, 3xx, 4xx, 5xx, other | latencies (µs) | last request | last status |
/// |---|---|---|---|---|---|
/// | 1 | 4 | 2, 0, 1, 1, 0 | 1000, 2000, 30000, 4000 | GET /api/cart | 503 |
/// | 2 | 3 | 1, 1, 0, 1, 0 | 500, 1500, 80000 | POST /api/orders | 500 |
/// | 3 | 2 | 0, 0, 2, 0, 0 | 3000, 7000 | GET /api/cart | 404 |
/// | 5 | 1 | 1, 0, 0, 0, 0 | 250 | GET /index.html | 200 |
/// | 11 | 1 (sampled 1:100: not multiplied) | - | - | GET /api/cart | 0 (no response) |
pub(crate) fn records(end_ns: i64) -> Vec<EnrichedFlow> {
    use flowlens_schemas::Process;
    use Direction::{Egress, Ingress};
    const SYN: i32 = 0x02;
    const ACK: i32 = 0x10;
    const PSH_ACK: i32 = 0x18;
    const HANDSHAKE_DATA: i32 = SYN | PSH_ACK;
    const RST_ACK: i32 = 0x14;
    let ip = |s: &str| Some(ip_to_v6(s.parse::<IpAddr>().unwrap()));

    let mut r1 = answered(
        flow(
            WEB1,
            API1,
            6,
            8080,
            1000,
            10,
            HANDSHAKE_DATA,
            "eth0",
            Egress,
            end_ns,
        ),
        4000,
        8,
        HANDSHAKE_DATA,
    );
    r1.rtt_ns = 2_000_000;
    r1.retransmits = 1;
    r1.dns = dns(
        3,
        (1, 2, 0, 0, 0),
        &[800, 1200, 5000],
        Some(("api.shop.svc.cluster.local", 1)),
    );
    r1.http = http(
        4,
        (2, 0, 1, 1, 0),
        &[1000, 2000, 30_000, 4000],
        Some(("GET", "/api/cart")),
        503,
    );
    r1.src_process = Some(Process {
        pid: 4242,
        comm: "curl".into(),
        cgroup_id: 777,
    });
    let mut r2 = answered(
        flow(
            WEB1, API1, 6, 8080, 3000, 20, PSH_ACK, "eth0", Egress, end_ns,
        ),
        500,
        5,
        ACK,
    );
    r2.rtt_ns = 4_000_000;
    r2.end_reason = "fin".into();
    r2.dns = dns(
        2,
        (1, 0, 1, 0, 0),
        &[2000, 3000],
        Some(("api.shop.svc.cluster.local", 28)),
    );
    r2.http = http(
        3,
        (1, 1, 0, 1, 0),
        &[500, 1500, 80_000],
        Some(("POST", "/api/orders")),
        500,
    );
    let mut r3 = flow(WEB2, API1, 6, 8080, 2000, 5, SYN, "eth0", Egress, end_ns);
    r3.dns = dns(
        4,
        (0, 1, 0, 0, 0),
        &[40_000],
        Some(("metrics.example.com", 1)),
    );
    r3.http = http(
        2,
        (0, 0, 2, 0, 0),
        &[3000, 7000],
        Some(("GET", "/api/cart")),
        404,
    );
    let mut r4 = answered(
        flow(
            API1,
            PG0,
            6,
            5432,
            5000,
            40,
            HANDSHAKE_DATA,
            "eth1",
            Egress,
            end_ns,
        ),
        20_000,
        30,
        HANDSHAKE_DATA,
    );
    r4.rtt_ns = 1_000_000;
    r4.retransmits = 3;
    r4.drops = 2;
    r4.drop_bytes = 3000;
    r4.drop_reason = "NETFILTER_DROP".into();
    r4.tunnel = "vxlan".into();
    r4.tunnel_id = 7;
    (r4.outer_src_addr, r4.outer_dst_addr) = (ip(NODE1.ip), ip(NODE2.ip));
    r4.dst_process = Some(Process {
        pid: 99,
        comm: "postgres".into(),
        cgroup_id: 555,
    });
    r4.dns = dns(
        1,
        (0, 0, 0, 1, 0),
        &[100],
        Some(("pg.db.svc.cluster.local", 33)),
    );
    let mut r5 = answered(
        flow(EXTERNAL, WEB1, 6, 443, 700, 7, ACK, "eth0", Ingress, end_ns),
        300,
        3,
        RST_ACK,
    );
    r5.drops = 1;
    r5.drop_bytes = 60;
    r5.drop_reason = "TCP_INVALID_SEQUENCE".into();
    r5.end_reason = "rst".into();
    r5.dns = dns(0, (0, 0, 0, 0, 2), &[], None);
    r5.http = http(
        1,
        (1, 0, 0, 0, 0),
        &[250],
        Some(("GET", "/index.html")),
        200,
    );
    let mut r6 = answered(
        flow(WEB2, PG0, 17, 5432, 300, 3, 0, "eth1", Egress, end_ns),
        900,
        3,
        0,
    );
    r6.dns = dns(
        1,
        (1, 0, 0, 0, 0),
        &[600],
        Some(("pg.db.svc.cluster.local", 1)),
    );
    let mut r7 = r1.clone();
    r7.if_name = "vethweb1".into();
    r7.direction = Ingress;
    r7.duplicate = true;
    let mut r8 = answered(
        flow(NODE1, NODE2, 17, 4789, 5500, 40, 0, "eth1", Egress, end_ns),
        22_000,
        30,
        0,
    );
    r8.duplicate = true;
    let mut r9 = answered(
        flow(
            WEB1,
            PG0,
            6,
            5432,
            450,
            3,
            HANDSHAKE_DATA,
            "eth1",
            Egress,
            end_ns,
        ),
        3000,
        2,
        HANDSHAKE_DATA,
    );
    r9.sampling_rate = 100;
    r9.rtt_ns = 3_000_000;
    r9.retransmits = 1;
    r9.drops = 4;
    r9.drop_bytes = 6000;
    r9.drop_reason = "NETFILTER_DROP".into();
    r9.dns = dns(
        1,
        (0, 0, 1, 0, 0),
        &[9000],
        Some(("pg.db.svc.cluster.local", 1)),
    );
    let mut r10 = r9.clone();
    r10.if_name = "vethweb1".into();
    r10.direction = Ingress;
    r10.duplicate = true;
    let mut r11 = flow(WEB2, API1, 6, 8080, 60, 1, SYN, "eth0", Egress, end_ns);
    r11.host = "node-b".into();
    r11.src_port = 40_001;
    r11.sampling_rate = 100;
    r11.http = http(1, (0, 0, 0, 0, 0), &[], Some(("GET", "/api/cart")), 0);
    vec![r1, r2, r3, r4, r5, r6, r7, r8, r9, r10, r11]
}
