//! A plausible `EnrichedFlow` with every field set, for tests and benchmarks.

use flowlens_schemas::{Direction, EnrichedFlow};

/// Start time of `sample_flow(0)`.
#[doc(hidden)]
pub const SAMPLE_BASE_NS: i64 = 1_700_000_000_123_456_789;

/// Test and benchmark helper: a plausible flow with every field set, starting at
/// `SAMPLE_BASE_NS + i µs`. B never answers and no record is a duplicate (reverse counters 0,
/// `duplicate` false), so that every rollup sums to the `flows` totals; the other version 3
/// fields are set (processes, tunnel and outer addresses on some records), one record in four
/// (`i % 4 == 1`) carries DNS statistics and one in four (`i % 4 == 2`) HTTP/1.x statistics.
#[doc(hidden)]
pub fn sample_flow(i: u32) -> EnrichedFlow {
    sample_flow_at(i, SAMPLE_BASE_NS)
}

/// Like [`sample_flow`], with flow times relative to `base_ns` (exported at `base_ns + 2 s`).
#[doc(hidden)]
pub fn sample_flow_at(i: u32, base_ns: i64) -> EnrichedFlow {
    use flowlens_schemas::ip_to_v6;
    let mut f = EnrichedFlow::from_raw(flowlens_schemas::RawFlow {
        host: "node-a".into(),
        ifindex: 3,
        direction: if i.is_multiple_of(2) {
            Direction::Ingress
        } else {
            Direction::Egress
        },
        time_flow_start_ns: base_ns + i64::from(i) * 1_000,
        time_flow_end_ns: base_ns + 1_000_000_000 + i64::from(i) * 1_000,
        time_exported_ns: base_ns + 2_000_000_000,
        etype: 0x0800,
        vlan_id: 0,
        proto: 6,
        src_addr: ip_to_v6(std::net::Ipv4Addr::new(10, 0, (i >> 8) as u8, i as u8).into()),
        dst_addr: "2001:db8::1".parse().unwrap(),
        src_port: 10_000 + (i % 50_000) as i32,
        dst_port: 443,
        icmp_type: 0,
        icmp_code: 0,
        tcp_flags: 0x18,
        packets: i64::from(i) + 1,
        bytes: (i64::from(i) + 1) * 100,
        sampling_rate: 1,
        ..Default::default()
    });
    f.if_name = "eth0".into();
    f.if_mac = "02:42:ac:11:00:02".into();
    f.if_kind = "veth".into();
    f.if_netns = "cni-1234".into();
    f.src_pod = Some(format!("web-{i}"));
    f.src_namespace = Some("shop".into());
    f.dst_service = Some("api".into());
    f.src_pod_uid = Some(format!("00000000-0000-4000-8000-{i:012}"));
    f.src_role = Some("client".into());
    f.dst_role = Some("server".into());
    f.locality = Some("external".into());
    f.if_pod = Some(format!("web-{i}"));
    f.if_namespace = Some("shop".into());
    f.end_reason = if i % 10 == 9 { "fin" } else { "" }.into();
    f.rtt_ns = 100_000 + i64::from(i % 1000) * 10;
    f.retransmits = i64::from(i % 3);
    f.drops = i64::from(i.is_multiple_of(5));
    f.drop_bytes = f.drops * 1_500;
    f.drop_reason = if f.drops > 0 { "NETFILTER_DROP" } else { "" }.into();
    f.src_process = Some(flowlens_schemas::Process {
        pid: 1_000 + (i % 30_000) as i32,
        comm: "curl".into(),
        cgroup_id: 5_000 + i64::from(i),
    });
    if i.is_multiple_of(7) {
        f.tunnel = "vxlan".into();
        f.tunnel_id = 42;
        f.outer_src_addr = Some(ip_to_v6(std::net::Ipv4Addr::new(192, 168, 0, 1).into()));
        f.outer_dst_addr = Some(ip_to_v6(std::net::Ipv4Addr::new(192, 168, 0, 2).into()));
    }
    if i % 4 == 1 {
        let latencies = vec![200 + i64::from(i % 1000), 1_500];
        f.dns = Some(flowlens_schemas::Dns {
            queries: 2,
            responses: 2,
            noerror: 1,
            nxdomain: 1,
            answered: 2,
            latency_sum_ns: latencies.iter().sum::<i64>() * 1_000,
            latency_max_ns: 1_500_000,
            latencies_us: latencies,
            last_query: Some("api.shop.svc.cluster.local".into()),
            last_query_type: 28,
            ..Default::default()
        });
    }
    if i % 4 == 2 {
        let latencies = vec![3_000 + i64::from(i % 1000), 45_000];
        f.http = Some(flowlens_schemas::Http {
            requests: 2,
            responses: 2,
            status_2xx: 1,
            status_5xx: 1,
            answered: 2,
            latency_sum_ns: latencies.iter().sum::<i64>() * 1_000,
            latency_max_ns: 45_000_000,
            latencies_us: latencies,
            last_method: Some("GET".into()),
            last_path: Some("/api/cart".into()),
            last_status: 503,
            ..Default::default()
        });
    }
    f
}
