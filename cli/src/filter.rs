//! `flowlens observe` filters: each given flag must match (AND), any of a repeated flag's values
//! may (OR); endpoint filters match either end of the conversation.

use std::time::Duration;

use flowlens_schemas::{protocol_number, EnrichedFlow, Net};

#[derive(Debug, Default, clap::Args)]
#[command(next_help_heading = "Filters (a flag given twice matches either value)")]
pub struct Filters {
    /// Either end is in this Kubernetes namespace.
    #[arg(long, value_name = "NAME")]
    pub namespace: Vec<String>,
    /// Either end is this pod: NAME or NAMESPACE/NAME.
    #[arg(long, value_name = "POD")]
    pub pod: Vec<String>,
    /// Either end belongs to this workload (Deployment, StatefulSet, ...): NAME or NAMESPACE/NAME.
    #[arg(long, value_name = "WORKLOAD")]
    pub workload: Vec<String>,
    /// Either end is this Kubernetes service: NAME or NAMESPACE/NAME.
    #[arg(long, value_name = "SERVICE")]
    pub service: Vec<String>,
    /// Either end runs on this Kubernetes node.
    #[arg(long, value_name = "NODE")]
    pub node: Vec<String>,
    /// Either end's address is this IP or lies in this CIDR (10.0.0.0/8, fd00::/64).
    #[arg(long = "ip", value_name = "ADDR[/PREFIX]")]
    pub ip: Vec<Net>,
    /// Either end's port.
    #[arg(long, value_name = "PORT")]
    pub port: Vec<u16>,
    /// IP protocol: tcp, udp, icmp, icmpv6, sctp or a number.
    #[arg(long, value_name = "PROTO", value_parser = parse_protocol)]
    pub protocol: Vec<u8>,
    /// Locality the enricher gave: node, cluster or external.
    #[arg(long, value_name = "LOCALITY", value_parser = ["node", "cluster", "external"])]
    pub locality: Vec<String>,
    /// Only conversations with kernel drops.
    #[arg(long)]
    pub drops: bool,
    /// Only conversations whose smoothed RTT is above this, e.g. 10ms.
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse)]
    pub rtt_above: Option<Duration>,
    /// How the conversation ended: fin, rst, idle or shutdown.
    #[arg(long, value_name = "REASON", value_parser = ["fin", "rst", "idle", "shutdown"])]
    pub end_reason: Vec<String>,
}

/// Protocol names as in /etc/protocols, or the number.
pub fn parse_protocol(text: &str) -> Result<u8, String> {
    protocol_number(text)
        .ok_or_else(|| format!("`{text}` is not a protocol: tcp, udp, icmp, icmpv6, sctp or 0-255"))
}

/// `NAME` matches the name, `NAMESPACE/NAME` both, against one end's (namespace, name).
fn named(wanted: &str, namespace: &Option<String>, name: &Option<String>) -> bool {
    let Some(name) = name.as_deref() else {
        return false;
    };
    match wanted.split_once('/') {
        Some((ns, n)) => namespace.as_deref() == Some(ns) && name == n,
        None => name == wanted,
    }
}

fn any_or_empty<T>(wanted: &[T], matches: impl Fn(&T) -> bool) -> bool {
    wanted.is_empty() || wanted.iter().any(matches)
}

impl Filters {
    pub fn matches(&self, f: &EnrichedFlow) -> bool {
        let ends = [
            (
                &f.src_namespace,
                &f.src_pod,
                &f.src_workload,
                &f.src_service,
                &f.src_node,
            ),
            (
                &f.dst_namespace,
                &f.dst_pod,
                &f.dst_workload,
                &f.dst_service,
                &f.dst_node,
            ),
        ];
        let either = |check: &dyn Fn(usize) -> bool| check(0) || check(1);
        any_or_empty(&self.namespace, |w| {
            either(&|i| ends[i].0.as_deref() == Some(w.as_str()))
        }) && any_or_empty(&self.pod, |w| either(&|i| named(w, ends[i].0, ends[i].1)))
            && any_or_empty(&self.workload, |w| {
                either(&|i| named(w, ends[i].0, ends[i].2))
            })
            && any_or_empty(&self.service, |w| {
                either(&|i| named(w, ends[i].0, ends[i].3))
            })
            && any_or_empty(&self.node, |w| {
                either(&|i| ends[i].4.as_deref() == Some(w.as_str()))
            })
            && any_or_empty(&self.ip, |n| {
                n.contains(f.src_addr) || n.contains(f.dst_addr)
            })
            && any_or_empty(&self.port, |p| {
                i32::from(*p) == f.src_port || i32::from(*p) == f.dst_port
            })
            && any_or_empty(&self.protocol, |p| i32::from(*p) == f.proto)
            && any_or_empty(&self.locality, |l| {
                f.locality.as_deref() == Some(l.as_str())
            })
            && (!self.drops || f.drops > 0)
            && self
                .rtt_above
                .is_none_or(|d| i128::from(f.rtt_ns) > d.as_nanos() as i128)
            && any_or_empty(&self.end_reason, |r| &f.end_reason == r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowlens_schemas::ip_to_v6;

    fn parse_net(text: &str) -> Result<Net, String> {
        text.parse()
    }

    #[test]
    fn cidrs_cover_v4_and_v6() {
        let net = parse_net("10.1.0.0/16").unwrap();
        assert!(net.contains(ip_to_v6("10.1.200.3".parse().unwrap())));
        assert!(!net.contains(ip_to_v6("10.2.0.1".parse().unwrap())));
        let one = parse_net("10.1.0.11").unwrap();
        assert!(one.contains(ip_to_v6("10.1.0.11".parse().unwrap())));
        assert!(!one.contains(ip_to_v6("10.1.0.12".parse().unwrap())));
        let v6 = parse_net("fd00:1::/32").unwrap();
        assert!(v6.contains("fd00:1:2::9".parse().unwrap()));
        assert!(parse_net("0.0.0.0/0")
            .unwrap()
            .contains(ip_to_v6("8.8.8.8".parse().unwrap())));
        for bad in ["10.0.0.0/33", "nope", "fd00::/129", "10.0.0.0/x"] {
            assert!(parse_net(bad).unwrap_err().contains(bad));
        }
    }
}
