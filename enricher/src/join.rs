//! The join: a raw flow plus the interface cache gives an enriched flow (pure, no I/O).

use flowlens_schemas::{EnrichedFlow, RawFlow};

use crate::interfaces::InterfaceCache;

/// Enriches `raw` with the metadata of interface (`raw.host`, `raw.ifindex`).
///
/// Returns the enriched flow and whether the interface was known. An unknown interface leaves
/// the `if_*` fields empty; Kubernetes fields stay `None` (filled by a later stage).
pub fn join(raw: RawFlow, cache: &InterfaceCache) -> (EnrichedFlow, bool) {
    let interface = cache.get(&raw.host, raw.ifindex).cloned();
    let mut flow = EnrichedFlow::from_raw(raw);
    let found = interface.is_some();
    if let Some(i) = interface {
        flow.if_name = i.name;
        flow.if_mac = i.mac;
        flow.if_kind = i.kind;
        flow.if_netns = i.netns;
    }
    (flow, found)
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
}
