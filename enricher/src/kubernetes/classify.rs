//! Flow classification from the two ends' metadata: locality (same node, same cluster,
//! external) and client/server roles.

use std::net::Ipv6Addr;

use flowlens_schemas::RawFlow;

use super::peer::{Peer, PeerKind};

pub const NODE: &str = "node";
pub const CLUSTER: &str = "cluster";
pub const EXTERNAL: &str = "external";
pub const CLIENT: &str = "client";
pub const SERVER: &str = "server";

/// An IPv4 or IPv6 prefix, held in the IPv4-mapped 16-byte form flows use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: u128,
    mask: u128,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not address/length"))?;
        let ip: std::net::IpAddr = addr.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let len: u32 = len.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let (v6, len) = match ip {
            std::net::IpAddr::V4(v4) if len <= 32 => (v4.to_ipv6_mapped(), len + 96),
            std::net::IpAddr::V6(v6) if len <= 128 => (v6, len),
            _ => return Err(format!("{s:?}: prefix length too long")),
        };
        let mask = if len == 0 {
            0
        } else {
            u128::MAX << (128 - len)
        };
        Ok(Cidr {
            net: u128::from(v6) & mask,
            mask,
        })
    }
}

impl Cidr {
    pub fn contains(&self, addr: &Ipv6Addr) -> bool {
        u128::from(*addr) & self.mask == self.net
    }
}

/// Where a flow stayed. `None` when neither end is known to be in the cluster (nothing to say
/// without metadata).
pub fn locality(
    src: Option<&Peer>,
    dst: Option<&Peer>,
    src_in_cluster: bool,
    dst_in_cluster: bool,
) -> Option<&'static str> {
    let src_in = src.is_some() || src_in_cluster;
    let dst_in = dst.is_some() || dst_in_cluster;
    match (src_in, dst_in) {
        (false, false) => None,
        (true, false) | (false, true) => Some(EXTERNAL),
        (true, true) => {
            fn node(p: Option<&Peer>) -> Option<&str> {
                p.and_then(|p| p.node.as_deref())
            }
            match (node(src), node(dst)) {
                (Some(a), Some(b)) if a == b => Some(NODE),
                _ => Some(CLUSTER),
            }
        }
    }
}

const SYN: i32 = 0x02;
const ACK: i32 = 0x10;

/// A SYN without any ACK among the flags OR-ed over one side's packets: that side only tried
/// to open a connection.
fn syn_only(flags: i32) -> bool {
    flags & SYN != 0 && flags & ACK == 0
}

/// Roles of (source, destination), or `None` each when undecided. `flow.src_*` is side A, the
/// end the collector saw speak first (RawFlow version 2; a version 1 record is one direction
/// and reads as a conversation B never answered). In order:
/// - TCP: a side whose flags are a SYN without ACK opened the connection (A first); both sides
///   sent a SYN (the handshake is in the record: SYN, then SYN-ACK) — A, the first to speak,
///   is the client. A SYN with an ACK on one side only (e.g. a SYN-ACK whose SYN went by
///   another path) decides nothing: the ports do.
/// - ICMP echo request/reply (the type of the A→B packets).
/// - A port the other end is known to serve (container or service port); a well-known port
///   (< 1024) against a non-well-known one; a registered port against an ephemeral one
///   (>= 32768).
/// - Last, a conversation both ends spoke in (B answered): A, the one that spoke first.
pub fn roles(
    flow: &RawFlow,
    src: Option<&Peer>,
    dst: Option<&Peer>,
) -> (Option<&'static str>, Option<&'static str>) {
    const CLIENT_SERVER: (Option<&str>, Option<&str>) = (Some(CLIENT), Some(SERVER));
    const SERVER_CLIENT: (Option<&str>, Option<&str>) = (Some(SERVER), Some(CLIENT));
    let (a, b) = (flow.tcp_flags, flow.reverse_tcp_flags);
    match flow.proto {
        6 if syn_only(a) => return CLIENT_SERVER,
        6 if syn_only(b) => return SERVER_CLIENT,
        6 if a & SYN != 0 && b & SYN != 0 => return CLIENT_SERVER,
        1 => {
            return match flow.icmp_type {
                8 => CLIENT_SERVER,
                0 => SERVER_CLIENT,
                _ => (None, None),
            }
        }
        58 => {
            return match flow.icmp_type {
                128 => CLIENT_SERVER,
                129 => SERVER_CLIENT,
                _ => (None, None),
            }
        }
        6 | 17 | 132 => {}
        _ => return (None, None),
    }
    let answered = flow.reverse_packets > 0;
    let by_initiator = if answered {
        CLIENT_SERVER
    } else {
        (None, None)
    };
    let (src_port, dst_port) = (flow.src_port, flow.dst_port);
    let (Ok(sp), Ok(dp)) = (u16::try_from(src_port), u16::try_from(dst_port)) else {
        return by_initiator;
    };
    if sp == 0 || dp == 0 {
        return by_initiator;
    }
    let p = flow.proto as u8;
    let serves = |peer: Option<&Peer>, port: u16| {
        peer.is_some_and(|peer| {
            peer.server_ports.contains(&(p, port))
                // A ClusterIP serves its service ports whatever they are.
                || (peer.kind == PeerKind::Service && peer.server_ports.is_empty())
        })
    };
    match (serves(src, sp), serves(dst, dp)) {
        (false, true) => return CLIENT_SERVER,
        (true, false) => return SERVER_CLIENT,
        _ => {}
    }
    match (sp < 1024, dp < 1024) {
        (false, true) => return CLIENT_SERVER,
        (true, false) => return SERVER_CLIENT,
        _ => {}
    }
    match (sp >= 32768, dp >= 32768) {
        (true, false) => CLIENT_SERVER,
        (false, true) => SERVER_CLIENT,
        _ => by_initiator,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(node: &str, ports: &[(u8, u16)]) -> Peer {
        Peer {
            kind: PeerKind::Pod,
            pod: Some("p".into()),
            pod_uid: None,
            namespace: Some("ns".into()),
            workload: None,
            workload_kind: None,
            node: Some(node.into()),
            service: None,
            server_ports: ports.to_vec(),
        }
    }

    #[test]
    fn locality_from_nodes() {
        let (a, b, c) = (pod("n1", &[]), pod("n1", &[]), pod("n2", &[]));
        assert_eq!(locality(Some(&a), Some(&b), false, false), Some(NODE));
        assert_eq!(locality(Some(&a), Some(&c), false, false), Some(CLUSTER));
        assert_eq!(locality(Some(&a), None, false, false), Some(EXTERNAL));
        assert_eq!(locality(None, Some(&a), false, false), Some(EXTERNAL));
        assert_eq!(locality(Some(&a), None, false, true), Some(CLUSTER));
        assert_eq!(locality(None, None, false, false), None);
        let mut svc = pod("n1", &[]);
        svc.kind = PeerKind::Service;
        svc.node = None;
        assert_eq!(locality(Some(&a), Some(&svc), false, false), Some(CLUSTER));
    }

    /// A record with these A->B signals (B silent, like a version 1 record).
    fn flow(proto: i32, tcp_flags: i32, icmp_type: i32, src_port: i32, dst_port: i32) -> RawFlow {
        RawFlow {
            proto,
            tcp_flags,
            icmp_type,
            src_port,
            dst_port,
            packets: 1,
            ..Default::default()
        }
    }

    /// The same with B's answer: its packets and flags.
    fn answered(mut f: RawFlow, reverse_tcp_flags: i32) -> RawFlow {
        f.reverse_packets = 1;
        f.reverse_tcp_flags = reverse_tcp_flags;
        f
    }

    fn roles(
        proto: i32,
        tcp_flags: i32,
        icmp_type: i32,
        src_port: i32,
        dst_port: i32,
        src: Option<&Peer>,
        dst: Option<&Peer>,
    ) -> (Option<&'static str>, Option<&'static str>) {
        super::roles(
            &flow(proto, tcp_flags, icmp_type, src_port, dst_port),
            src,
            dst,
        )
    }

    #[test]
    fn roles_by_flags_icmp_and_ports() {
        let web = pod("n", &[(6, 8080)]);
        assert_eq!(
            roles(6, 0x02, 0, 50000, 9999, None, None),
            (Some(CLIENT), Some(SERVER))
        );
        // SYN+ACK only: undecided by flags, the ports then decide.
        assert_eq!(
            roles(6, 0x12, 0, 8080, 50000, Some(&web), None),
            (Some(SERVER), Some(CLIENT))
        );
        assert_eq!(
            roles(6, 0x18, 0, 40000, 8080, None, Some(&web)),
            (Some(CLIENT), Some(SERVER))
        );
        assert_eq!(
            roles(17, 0, 0, 40000, 53, None, None),
            (Some(CLIENT), Some(SERVER))
        );
        assert_eq!(
            roles(17, 0, 0, 443, 40000, None, None),
            (Some(SERVER), Some(CLIENT))
        );
        assert_eq!(
            roles(17, 0, 0, 5000, 45000, None, None),
            (Some(SERVER), Some(CLIENT))
        );
        assert_eq!(roles(17, 0, 0, 5000, 6000, None, None), (None, None));
        assert_eq!(
            roles(1, 0, 8, 0, 0, None, None),
            (Some(CLIENT), Some(SERVER))
        );
        assert_eq!(
            roles(58, 0, 129, 0, 0, None, None),
            (Some(SERVER), Some(CLIENT))
        );
        assert_eq!(roles(47, 0, 0, 0, 0, None, None), (None, None));
    }

    /// Conversations (RawFlow version 2): B's flags and B's answer count too.
    #[test]
    fn roles_of_conversations() {
        let cs = (Some(CLIENT), Some(SERVER));
        let sc = (Some(SERVER), Some(CLIENT));
        // The whole handshake in one record: A's SYN + ACKs, B's SYN-ACK + ACKs. The ports
        // alone would say the opposite (A on a well-known port).
        let hs = answered(flow(6, 0x02 | 0x10 | 0x08, 0, 80, 40000), 0x12 | 0x08);
        assert_eq!(super::roles(&hs, None, None), cs);
        // B only sent a bare SYN (A's SYN-ACK answered it).
        let f = answered(flow(6, 0x12, 0, 8080, 50000), 0x02);
        assert_eq!(super::roles(&f, None, None), sc);
        // A SYN-ACK seen with no SYN (asymmetric path): the ports decide.
        let f = answered(flow(6, 0x12 | 0x10, 0, 443, 50000), 0x10);
        assert_eq!(super::roles(&f, None, None), sc);
        // No handshake, no port clue: the side that spoke first, if B answered.
        let f = flow(17, 0, 0, 5000, 6000);
        assert_eq!(super::roles(&f, None, None), (None, None));
        assert_eq!(super::roles(&answered(f, 0), None, None), cs);
        assert_eq!(
            super::roles(&answered(flow(132, 0, 0, 0, 0), 0), None, None),
            cs
        );
        // Ports still outrank the initiator.
        let f = answered(flow(17, 0, 0, 53, 40000), 0);
        assert_eq!(super::roles(&f, None, None), sc);
    }

    #[test]
    fn cidrs() {
        let c: Cidr = "10.244.0.0/16".parse().unwrap();
        assert!(c.contains(
            &"10.244.3.4"
                .parse::<std::net::Ipv4Addr>()
                .unwrap()
                .to_ipv6_mapped()
        ));
        assert!(!c.contains(
            &"10.245.0.1"
                .parse::<std::net::Ipv4Addr>()
                .unwrap()
                .to_ipv6_mapped()
        ));
        let c6: Cidr = "fd00::/8".parse().unwrap();
        assert!(c6.contains(&"fd12::1".parse().unwrap()));
        assert!("10.0.0.0".parse::<Cidr>().is_err());
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
    }
}
