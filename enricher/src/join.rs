//! The join: a raw flow plus the interface cache (and, when configured, the Kubernetes
//! metadata cache) gives an enriched flow. Pure, no I/O, no state: any instance of the
//! enricher in the consumer group can enrich any record.

use std::sync::LazyLock;

use flowlens_schemas::writer as avro;
use flowlens_schemas::{Direction, EnrichedFlow, Interface, RawFlow, RecordKind, SchemaError};

use crate::interfaces::InterfaceCache;
use crate::kubernetes::classify::{self, Cidr};
use crate::kubernetes::peer::{Peer, PeerKind};
use crate::kubernetes::store::Store;

/// Fingerprint (single-object header byte order) of the `enriched_flow.avsc` that
/// [`Joined::encode`] writes: EnrichedFlow version 5. Change it only together with that writer.
pub const WRITTEN_FOR: [u8; 8] = [0x31, 0x89, 0x6b, 0x73, 0x30, 0xf3, 0x78, 0x46];

/// The single-object header, when the embedded schema is the one [`Joined::encode`] writes.
static HEADER: LazyLock<Option<[u8; 10]>> = LazyLock::new(|| {
    let header = avro::fast_header(RecordKind::EnrichedFlow, WRITTEN_FOR);
    if header.is_none() {
        tracing::warn!(
            "enriched_flow.avsc is not the version enricher/src/join.rs was written for: \
             using the generic (slower) Avro encoder"
        );
    }
    header
});

/// Which lookups found something.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hits {
    pub interface: bool,
    pub src: bool,
    pub dst: bool,
}

/// The Kubernetes side of the join.
#[derive(Debug, Clone, Copy)]
pub struct Kubernetes<'a> {
    pub store: &'a Store,
    /// Pod/service/node networks: an unknown address inside them is still in the cluster.
    pub cluster_cidrs: &'a [Cidr],
}

/// Enriches `raw` with the metadata of interface (`raw.host`, `raw.ifindex`).
///
/// Returns the enriched flow and whether the interface was known. An unknown interface leaves
/// the `if_*` fields empty; Kubernetes fields stay `None`.
pub fn join(raw: RawFlow, cache: &InterfaceCache) -> (EnrichedFlow, bool) {
    let (flow, hits) = enrich(raw, cache, None);
    (flow, hits.interface)
}

/// The time a record is attributed at: the flow's first packet in the record (the collector
/// always sets it; the end or export time stand in for a zero).
pub fn flow_time(raw: &RawFlow) -> i64 {
    [
        raw.time_flow_start_ns,
        raw.time_flow_end_ns,
        raw.time_exported_ns,
    ]
    .into_iter()
    .find(|&t| t != 0)
    .unwrap_or(0)
}

/// Enriches `raw` with its interface and, with `kubernetes`, the pods, services, workloads and
/// nodes at both ends *as they were at the flow's time*, its locality and the ends' roles.
pub fn enrich(
    raw: RawFlow,
    interfaces: &InterfaceCache,
    kubernetes: Option<Kubernetes<'_>>,
) -> (EnrichedFlow, Hits) {
    let joined = Joined::new(&raw, interfaces, kubernetes);
    let hits = joined.hits();
    let mut flow = EnrichedFlow::from_raw(raw.clone());
    joined.fill(&mut flow);
    (flow, hits)
}

/// The result of the join, borrowing from the record and the caches: what [`enrich`] copies
/// into an [`EnrichedFlow`], and what [`Joined::encode`] writes straight into an Avro message
/// without building one (no allocation per field: the pipeline's path).
#[derive(Debug, Clone, Copy)]
pub struct Joined<'a> {
    pub raw: &'a RawFlow,
    pub interface: Option<&'a Interface>,
    pub src: Option<&'a Peer>,
    pub dst: Option<&'a Peer>,
    /// The pod owning the interface.
    pub if_pod: Option<&'a Peer>,
    pub locality: Option<&'static str>,
    pub src_role: Option<&'static str>,
    pub dst_role: Option<&'static str>,
}

impl<'a> Joined<'a> {
    /// Looks everything up (pure; nothing is copied).
    pub fn new(
        raw: &'a RawFlow,
        interfaces: &'a InterfaceCache,
        kubernetes: Option<Kubernetes<'a>>,
    ) -> Self {
        let interface = interfaces.get(&raw.host, raw.ifindex);
        let time = flow_time(raw);
        let (src, dst) = match kubernetes {
            Some(k) => (
                k.store.lookup(&raw.src_addr, time).map(|p| &**p),
                k.store.lookup(&raw.dst_addr, time).map(|p| &**p),
            ),
            None => (None, None),
        };
        let if_pod = interface.and_then(|i| interface_pod(i, raw, src, dst));
        let (locality, (src_role, dst_role)) = match kubernetes {
            Some(k) => {
                let in_cidrs = |a| k.cluster_cidrs.iter().any(|c: &Cidr| c.contains(a));
                let src_in = src.is_none() && in_cidrs(&raw.src_addr);
                let dst_in = dst.is_none() && in_cidrs(&raw.dst_addr);
                (
                    classify::locality(src, dst, src_in, dst_in),
                    classify::roles(raw, src, dst),
                )
            }
            None => (None, (None, None)),
        };
        Joined {
            raw,
            interface,
            src,
            dst,
            if_pod,
            locality,
            src_role,
            dst_role,
        }
    }

    pub fn hits(&self) -> Hits {
        Hits {
            interface: self.interface.is_some(),
            src: self.src.is_some(),
            dst: self.dst.is_some(),
        }
    }

    /// Copies the join results into `flow` (which holds the raw fields already).
    pub fn fill(&self, flow: &mut EnrichedFlow) {
        if let Some(i) = self.interface {
            flow.if_name.clone_from(&i.name);
            flow.if_mac.clone_from(&i.mac);
            flow.if_kind.clone_from(&i.kind);
            flow.if_netns.clone_from(&i.netns);
        }
        if let Some(p) = self.if_pod {
            flow.if_pod.clone_from(&p.pod);
            flow.if_namespace.clone_from(&p.namespace);
        }
        if let Some(p) = self.src {
            flow.src_pod.clone_from(&p.pod);
            flow.src_pod_uid.clone_from(&p.pod_uid);
            flow.src_namespace.clone_from(&p.namespace);
            flow.src_workload.clone_from(&p.workload);
            flow.src_workload_kind.clone_from(&p.workload_kind);
            flow.src_node.clone_from(&p.node);
            flow.src_service.clone_from(&p.service);
        }
        if let Some(p) = self.dst {
            flow.dst_pod.clone_from(&p.pod);
            flow.dst_pod_uid.clone_from(&p.pod_uid);
            flow.dst_namespace.clone_from(&p.namespace);
            flow.dst_workload.clone_from(&p.workload);
            flow.dst_workload_kind.clone_from(&p.workload_kind);
            flow.dst_node.clone_from(&p.node);
            flow.dst_service.clone_from(&p.service);
        }
        flow.locality = self.locality.map(str::to_string);
        flow.src_role = self.src_role.map(str::to_string);
        flow.dst_role = self.dst_role.map(str::to_string);
    }

    /// Appends the single-object Avro message of the enriched flow to `out`: the same bytes as
    /// `flowlens_schemas::encode(&enriched_flow, out)` (checked by the tests), written directly
    /// from the record and the caches while the embedded schema is the version this writes
    /// ([`WRITTEN_FOR`]); otherwise through the generic encoder. Field order is the schema's
    /// (avro/enriched_flow.avsc). On error (generic encoder only) `out` is unchanged.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), SchemaError> {
        let Some(header) = &*HEADER else {
            let mut flow = EnrichedFlow::from_raw(self.raw.clone());
            self.fill(&mut flow);
            return flowlens_schemas::encode(&flow, out);
        };
        let r = self.raw;
        out.extend_from_slice(header);
        avro::string(out, &r.host);
        avro::long(out, r.ifindex.into());
        avro::long(out, matches!(r.direction, Direction::Egress).into());
        avro::long(out, r.time_flow_start_ns);
        avro::long(out, r.time_flow_end_ns);
        avro::long(out, r.time_exported_ns);
        avro::long(out, r.etype.into());
        avro::long(out, r.vlan_id.into());
        avro::long(out, r.proto.into());
        out.extend_from_slice(&r.src_addr.octets());
        out.extend_from_slice(&r.dst_addr.octets());
        avro::long(out, r.src_port.into());
        avro::long(out, r.dst_port.into());
        avro::long(out, r.icmp_type.into());
        avro::long(out, r.icmp_code.into());
        avro::long(out, r.tcp_flags.into());
        avro::long(out, r.packets);
        avro::long(out, r.bytes);
        avro::long(out, r.sampling_rate.into());
        let i = self.interface;
        avro::string(out, i.map_or("", |i| &i.name));
        avro::string(out, i.map_or("", |i| &i.mac));
        avro::string(out, i.map_or("", |i| &i.kind));
        avro::string(out, i.map_or("", |i| &i.netns));
        for p in [self.src, self.dst] {
            let f = |get: fn(&Peer) -> &Option<String>| p.and_then(|p| get(p).as_deref());
            avro::optional(out, f(|p| &p.pod));
            avro::optional(out, f(|p| &p.namespace));
            avro::optional(out, f(|p| &p.workload));
            avro::optional(out, f(|p| &p.workload_kind));
            avro::optional(out, f(|p| &p.node));
            avro::optional(out, f(|p| &p.service));
        }
        avro::optional(out, self.src.and_then(|p| p.pod_uid.as_deref()));
        avro::optional(out, self.dst.and_then(|p| p.pod_uid.as_deref()));
        avro::optional(out, self.src_role);
        avro::optional(out, self.dst_role);
        avro::optional(out, self.locality);
        avro::optional(out, self.if_pod.and_then(|p| p.pod.as_deref()));
        avro::optional(out, self.if_pod.and_then(|p| p.namespace.as_deref()));
        // Version 3: the fields RawFlow version 2 appended, in its order.
        avro::long(out, r.reverse_packets);
        avro::long(out, r.reverse_bytes);
        avro::long(out, r.reverse_tcp_flags.into());
        avro::string(out, &r.end_reason);
        avro::long(out, r.rtt_ns);
        avro::long(out, r.retransmits);
        avro::long(out, r.drops);
        avro::long(out, r.drop_bytes);
        avro::string(out, &r.drop_reason);
        for p in [&r.src_process, &r.dst_process] {
            avro::process(out, p.as_ref());
        }
        avro::string(out, &r.tunnel);
        avro::long(out, r.tunnel_id);
        for a in [r.outer_src_addr, r.outer_dst_addr] {
            avro::address(out, a);
        }
        out.push(r.duplicate.into());
        // Version 4.
        avro::origin(out, r.origin.as_ref());
        // Version 5: the fields RawFlow version 4 appended.
        avro::dns(out, r.dns.as_ref());
        avro::http(out, r.http.as_ref());
        Ok(())
    }
}

/// The pod a veth (host side, or the end inside the pod's network namespace) belongs to: the
/// end of the flow on the pod's side of the interface, if that end is a pod on this host.
/// Inside the pod namespace, egress packets come from the pod; on the host side, egress
/// packets go into the pod.
fn interface_pod<'p>(
    i: &Interface,
    flow: &RawFlow,
    src: Option<&'p Peer>,
    dst: Option<&'p Peer>,
) -> Option<&'p Peer> {
    let inside = !i.netns.is_empty();
    if !inside && i.kind != "veth" {
        return None;
    }
    let pod_is_src = inside == (flow.direction == Direction::Egress);
    let peer = if pod_is_src { src } else { dst }?;
    let node = peer.node.as_deref()?;
    let on_this_host = flow.host == node
        || flow
            .host
            .strip_prefix(node)
            .is_some_and(|rest| rest.starts_with('.'));
    (peer.kind == PeerKind::Pod && on_this_host).then_some(peer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowlens_schemas::{ip_to_v6, Direction, Interface};

    pub(crate) fn raw(host: &str, ifindex: i32) -> RawFlow {
        RawFlow {
            host: host.into(),
            ifindex,
            direction: Direction::Egress,
            time_flow_start_ns: 10,
            time_flow_end_ns: 20,
            time_exported_ns: 30,
            etype: 0x0800,
            vlan_id: 0,
            proto: 6,
            src_addr: ip_to_v6("10.0.0.1".parse().unwrap()),
            dst_addr: ip_to_v6("10.0.0.2".parse().unwrap()),
            src_port: 40000,
            dst_port: 443,
            icmp_type: 0,
            icmp_code: 0,
            tcp_flags: 0x18,
            packets: 3,
            bytes: 1500,
            sampling_rate: 1,
            ..Default::default()
        }
    }

    fn iface(host: &str, ifindex: i32, name: &str) -> Interface {
        Interface {
            host: host.into(),
            ifindex,
            name: name.into(),
            mac: "aa:bb:cc:dd:ee:ff".into(),
            mtu: 1500,
            kind: "veth".into(),
            netns: "cni-1234".into(),
            netns_inode: 4026532000,
            oper_state: "up".into(),
            time_observed_ns: 5,
        }
    }

    #[test]
    fn written_for_the_current_schema() {
        assert_eq!(
            RecordKind::EnrichedFlow.fingerprint(),
            WRITTEN_FOR,
            "schemas/avro/enriched_flow.avsc changed: update Joined::encode and WRITTEN_FOR to \
             the new schema; until then the enricher uses the generic encoder"
        );
        assert!(HEADER.is_some());
    }

    #[test]
    fn known_interface_fills_if_fields_and_keeps_raw_fields() {
        let mut cache = InterfaceCache::default();
        cache.upsert(iface("node-1", 7, "veth7"));
        cache.upsert(iface("node-2", 7, "other"));
        let (flow, found) = join(raw("node-1", 7), &cache);
        assert!(found);
        assert_eq!(flow.if_name, "veth7");
        assert_eq!(flow.if_mac, "aa:bb:cc:dd:ee:ff");
        assert_eq!(flow.if_kind, "veth");
        assert_eq!(flow.if_netns, "cni-1234");
        let mut expected = EnrichedFlow::from_raw(raw("node-1", 7));
        expected.if_name = "veth7".into();
        expected.if_mac = "aa:bb:cc:dd:ee:ff".into();
        expected.if_kind = "veth".into();
        expected.if_netns = "cni-1234".into();
        assert_eq!(flow, expected);
        assert_eq!(flow.src_pod, None);
    }

    #[test]
    fn unknown_host_or_ifindex_leaves_if_fields_empty() {
        let mut cache = InterfaceCache::default();
        cache.upsert(iface("node-1", 7, "veth7"));
        for (host, ifindex) in [("node-1", 8), ("node-2", 7)] {
            let (flow, found) = join(raw(host, ifindex), &cache);
            assert!(!found, "{host}/{ifindex}");
            assert_eq!(flow, EnrichedFlow::from_raw(raw(host, ifindex)));
        }
    }

    #[test]
    fn latest_interface_wins_and_removal_forgets_it() {
        let mut cache = InterfaceCache::default();
        cache.upsert(iface("node-1", 7, "old"));
        cache.upsert(iface("node-1", 7, "new"));
        assert_eq!(join(raw("node-1", 7), &cache).0.if_name, "new");
        assert!(cache.remove("node-1", 7));
        assert!(!join(raw("node-1", 7), &cache).1);
        assert_eq!(cache.len(), 0);
    }

    /// Sets every field RawFlow versions 2 to 4 added (dns and http included), differently for each `i` (0..6): processes
    /// and outer addresses present or absent, IPv4-mapped or IPv6, Unicode, extreme values.
    fn fill_conversation(r: &mut RawFlow, i: usize) {
        use flowlens_schemas::Process;
        let process = |pid: i32, comm: &str, cgroup_id: i64| {
            Some(Process {
                pid,
                comm: comm.into(),
                cgroup_id,
            })
        };
        r.reverse_packets = [0, 1, 127, 128, i64::MAX, 9][i];
        r.reverse_bytes = [0, 64, 1 << 40, -1, i64::MIN, 1_514][i];
        r.reverse_tcp_flags = [0, 0x12, 0x10, 0x04, 0xff, i32::MIN][i];
        r.end_reason = ["", "fin", "rst", "idle", "shutdown", "ünknown"][i].into();
        r.rtt_ns = [0, 1, 250_000, i64::MAX, -1, 1 << 33][i];
        r.retransmits = [0, 1, 2, 300, i64::MAX, 7][i];
        r.drops = [0, 3, 0, 1, 64, i64::MAX][i];
        r.drop_bytes = [0, 4_542, 0, 66, 1 << 20, i64::MIN][i];
        r.drop_reason = ["", "NETFILTER_DROP", "", "TCP_CSUM", "NO_SOCKET", "é"][i].into();
        r.src_process = [
            None,
            process(1, "curl", 1),
            process(i32::MAX, "", i64::MIN),
            None,
            process(4242, "pg-wörker", 9_876_543_210),
            process(-1, "x", -1),
        ][i]
            .clone();
        r.dst_process = [
            None,
            None,
            process(7, "postgres", 12),
            process(0, "nginx: worker", 0),
            process(i32::MIN, "ŝ", i64::MAX),
            None,
        ][i]
            .clone();
        r.tunnel = ["", "vxlan", "geneve", "gre", "", "vxlan"][i].into();
        r.tunnel_id = [0, 4_096, 16_777_215, u32::MAX.into(), -1, i64::MAX][i];
        let v4 = |s: &str| Some(ip_to_v6(s.parse().unwrap()));
        let v6 = |s: &str| Some(s.parse().unwrap());
        r.outer_src_addr = [
            None,
            v4("192.168.1.1"),
            v6("2001:db8::1"),
            None,
            v6("::"),
            v4("10.0.0.9"),
        ][i];
        r.outer_dst_addr = [
            None,
            v4("192.168.1.2"),
            None,
            v6("fd00::1"),
            v6("::"),
            v4("10.0.0.10"),
        ][i];
        r.duplicate = i % 2 == 1;
        r.origin = (i % 2 == 1).then(|| flowlens_schemas::Origin {
            topic: ["", "flowlens.flows.raw", "ü"][i % 3].into(),
            stream: [i as u8 ^ 0xa5; 16],
            partition: [0, 1, i32::MAX, 7, 3, -1][i],
            offset: [0, 1, i64::MAX, 1 << 40, 5, -1][i],
        });
        r.dns = (!i.is_multiple_of(3)).then(|| dns(i));
        r.http = (!i.is_multiple_of(2)).then(|| http(i));
    }

    /// HTTP/1.x statistics that differ with `i`: latencies none, a few or the full 64, a
    /// method and path or none, extreme values.
    fn http(i: usize) -> flowlens_schemas::Http {
        flowlens_schemas::Http {
            requests: [0, 1, 64, i64::MAX, 7, 3][i],
            responses: [1, 1, 63, i64::MIN, 7, 0][i],
            status_2xx: [0, 1, 58, 2, 3, 0][i],
            status_3xx: [1, 0, 2, 0, 1, 0][i],
            status_4xx: [0, 0, 2, 0, 1, 0][i],
            status_5xx: [0, 0, 1, 0, 1, 0][i],
            status_other: [0, 0, 0, 0, 1, -1][i],
            answered: [0, 1, 63, 0, 5, 0][i],
            latency_sum_ns: [0, 350_000, 1 << 41, 0, 6_000_000, -1][i],
            latency_max_ns: [0, 350_000, 1 << 34, 0, 3_000_000, i64::MAX][i],
            latencies_us: match i {
                1 => vec![350],
                2 => (0..64).map(|l| l * 2_000).collect(),
                4 => vec![600, 3_000, 1_000, 900, 500],
                _ => Vec::new(),
            },
            last_method: [None, Some("GET"), Some(""), None, Some("DELETE"), None][i]
                .map(str::to_string),
            last_path: [
                None,
                Some("/caf%C3%A9"),
                Some(""),
                None,
                Some("/api/v1/items/42"),
                None,
            ][i]
                .map(str::to_string),
            last_status: [0, 200, 404, 0, 503, i32::MAX][i],
        }
    }

    /// DNS statistics that differ with `i`: latencies none, a few or the full 64, a query
    /// name or none, extreme values.
    fn dns(i: usize) -> flowlens_schemas::Dns {
        flowlens_schemas::Dns {
            queries: [0, 1, 64, i64::MAX, 7, 3][i],
            responses: [1, 1, 63, i64::MIN, 7, 0][i],
            noerror: [0, 1, 60, 2, 4, 0][i],
            nxdomain: [1, 0, 2, 0, 1, 0][i],
            servfail: [0, 0, 1, 0, 1, 0][i],
            refused: [0, 0, 0, 0, 1, 0][i],
            other_rcode: [0, 0, 0, 0, 0, -1][i],
            answered: [0, 1, 63, 0, 5, 0][i],
            latency_sum_ns: [0, 250_000, 1 << 40, 0, 5_000_000, -1][i],
            latency_max_ns: [0, 250_000, 1 << 33, 0, 2_000_000, i64::MAX][i],
            latencies_us: match i {
                1 => vec![250],
                2 => (0..64).map(|l| l * 1_000).collect(),
                4 => vec![500, 2_000, 1_000, 1_000, 500],
                _ => Vec::new(),
            },
            last_query: [
                None,
                Some("db.nä.svc.cluster.local"),
                Some(""),
                None,
                Some("a.b"),
                None,
            ][i]
                .map(str::to_string),
            last_query_type: [0, 1, 28, 0, 33, i32::MAX][i],
        }
    }

    /// A raw flow's DNS statistics come out unchanged in the enriched flow, through `enrich`
    /// and through the direct encoder (decoded back), known interface and Kubernetes or not.
    #[test]
    fn dns_is_carried_unchanged() {
        let mut cache = InterfaceCache::default();
        cache.upsert(iface("node-1", 7, "veth7"));
        let store = Store::new(crate::kubernetes::history::Limits::default());
        let cidrs: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let kubernetes = Kubernetes {
            store: &store,
            cluster_cidrs: &cidrs,
        };
        for i in [1, 2, 4] {
            for (ifindex, k) in [(7, None), (8, Some(kubernetes))] {
                let mut r = raw("node-1", ifindex);
                (r.proto, r.src_port, r.dst_port) = (17, 40_000, 53);
                r.dns = Some(dns(i));
                let (flow, _) = enrich(r.clone(), &cache, k);
                assert_eq!(flow.dns, r.dns);
                let mut msg = Vec::new();
                Joined::new(&r, &cache, k).encode(&mut msg).unwrap();
                let back: EnrichedFlow = flowlens_schemas::decode(&msg).unwrap();
                assert_eq!(back.dns, Some(dns(i)));
                assert_eq!(back, flow);
            }
        }
        let (flow, _) = join(raw("node-1", 7), &cache);
        assert_eq!(flow.dns, None);
    }

    /// The same for HTTP/1.x statistics, beside DNS ones or alone.
    #[test]
    fn http_is_carried_unchanged() {
        let mut cache = InterfaceCache::default();
        cache.upsert(iface("node-1", 7, "veth7"));
        let store = Store::new(crate::kubernetes::history::Limits::default());
        let cidrs: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let kubernetes = Kubernetes {
            store: &store,
            cluster_cidrs: &cidrs,
        };
        for i in [1, 2, 4] {
            for (ifindex, k) in [(7, None), (8, Some(kubernetes))] {
                let mut r = raw("node-1", ifindex);
                (r.proto, r.src_port, r.dst_port) = (6, 40_000, 8080);
                r.http = Some(http(i));
                r.dns = (i == 2).then(|| dns(i));
                let (flow, _) = enrich(r.clone(), &cache, k);
                assert_eq!(flow.http, r.http);
                let mut msg = Vec::new();
                Joined::new(&r, &cache, k).encode(&mut msg).unwrap();
                let back: EnrichedFlow = flowlens_schemas::decode(&msg).unwrap();
                assert_eq!(back.http, Some(http(i)));
                assert_eq!(back, flow);
            }
        }
        let (flow, _) = join(raw("node-1", 7), &cache);
        assert_eq!(flow.http, None);
    }

    /// The pipeline's direct encoder writes exactly what the schemas crate writes for the
    /// enriched flow `enrich` builds, over every combination of known/unknown interface and
    /// ends, IPv4/IPv6, extreme values, Unicode, with and without every field RawFlow versions
    /// 2 to 4 added; and the message decodes back to it.
    #[test]
    fn direct_encoding_matches_the_schema_encoder() {
        use crate::kubernetes::history::Limits;
        use crate::kubernetes::model::Object;
        use crate::kubernetes::store::Change;
        let mut store = Store::new(Limits::default());
        let pod = |name: &str, ip: &str, node: &str| {
            Object::from_json(
                "Pod",
                serde_json::json!({"metadata": {"name": name, "namespace": "nä", "uid": format!("u-{name}"),
                    "labels": {"app": name},
                    "ownerReferences": [{"kind": "StatefulSet", "name": "db", "uid": "s1", "controller": true}]},
                    "spec": {"nodeName": node, "containers": [{"ports": [{"containerPort": 5432}]}]},
                    "status": {"podIP": ip, "podIPs": [{"ip": ip}]}}),
            )
            .unwrap()
            .unwrap()
        };
        let svc = Object::from_json(
            "Service",
            serde_json::json!({"metadata": {"name": "db", "namespace": "nä"},
                "spec": {"clusterIP": "10.96.0.1", "selector": {"app": "db-0"}, "ports": [{"port": 5432}]}}),
        )
        .unwrap()
        .unwrap();
        store.apply_all(
            [
                Change::Upsert(pod("db-0", "10.0.0.1", "node-1")),
                Change::Upsert(pod("web", "fd00::7", "node-2")),
                Change::Upsert(svc),
            ],
            1,
        );
        let mut cache = InterfaceCache::default();
        cache.upsert(iface("node-1", 7, "veth-ü"));
        let mut host_side = iface("node-1", 8, "cali123");
        host_side.netns = String::new();
        cache.upsert(host_side);
        let cidrs: Vec<Cidr> = vec!["10.0.0.0/8".parse().unwrap()];
        let addrs = [
            "10.0.0.1",
            "fd00::7",
            "10.96.0.1",
            "10.9.9.9",
            "8.8.8.8",
            "::",
        ];
        let mut n = 0;
        for (ai, a) in addrs.iter().enumerate() {
            for b in &addrs {
                for (ifindex, dir) in [
                    (7, Direction::Egress),
                    (8, Direction::Ingress),
                    (9, Direction::Egress),
                ] {
                    let mut r = raw("node-1", ifindex);
                    r.direction = dir;
                    r.src_addr = ip_to_v6(a.parse().unwrap());
                    r.dst_addr = ip_to_v6(b.parse().unwrap());
                    r.proto = [6, 17, 1, 58, 47, 132][ai];
                    r.icmp_type = 8;
                    r.tcp_flags = 0x02;
                    r.src_port = [0, 1, 5432, 40000, 65535, -1][ai];
                    r.dst_port = 5432;
                    r.time_flow_start_ns = [i64::MIN, -1, 0, 5, i64::MAX, 1 << 40][ai];
                    r.packets = i64::MAX;
                    r.bytes = i64::MIN;
                    r.ifindex = ifindex;
                    r.host = if ai == 5 {
                        "ünï".into()
                    } else {
                        "node-1".into()
                    };
                    let plain = r.clone();
                    let mut conversation = r.clone();
                    fill_conversation(&mut conversation, ai);
                    let kubernetes = Kubernetes {
                        store: &store,
                        cluster_cidrs: &cidrs,
                    };
                    let cases = [&plain, &conversation]
                        .map(|r| [(r, None), (r, Some(kubernetes))])
                        .concat();
                    for (r, k) in cases {
                        let (flow, _) = enrich(r.clone(), &cache, k);
                        let mut ours = Vec::new();
                        Joined::new(r, &cache, k).encode(&mut ours).unwrap();
                        let mut theirs = Vec::new();
                        flowlens_schemas::encode(&flow, &mut theirs).unwrap();
                        assert_eq!(ours, theirs, "{flow:?}");
                        let back: EnrichedFlow = flowlens_schemas::decode(&ours).unwrap();
                        assert_eq!(back, flow);
                        n += 1;
                    }
                }
            }
        }
        assert_eq!(n, 6 * 6 * 3 * 2 * 2);
        // Spot checks that the Kubernetes side was exercised.
        let mut r = raw("node-1", 7);
        r.src_addr = ip_to_v6("10.0.0.1".parse().unwrap());
        r.dst_addr = ip_to_v6("fd00::7".parse().unwrap());
        (r.src_port, r.dst_port) = (5432, 40000);
        let k = Kubernetes {
            store: &store,
            cluster_cidrs: &cidrs,
        };
        let (flow, hits) = enrich(r, &cache, Some(k));
        assert_eq!(
            hits,
            Hits {
                interface: true,
                src: true,
                dst: true
            }
        );
        assert_eq!(flow.src_workload.as_deref(), Some("db"));
        assert_eq!(flow.src_workload_kind.as_deref(), Some("StatefulSet"));
        assert_eq!(flow.src_service.as_deref(), Some("db"));
        assert_eq!(flow.locality.as_deref(), Some("cluster"));
        assert_eq!(
            flow.if_pod.as_deref(),
            Some("db-0"),
            "inside the pod netns, egress: source"
        );
        assert_eq!(
            flow.src_role.as_deref(),
            Some("server"),
            "5432 is served by db-0"
        );
    }
}
