//! In-kernel flow selection: the `[collector.filter]` settings (CIDRs, ports, protocols) parsed
//! and checked, then written into the kernel's filter maps, plus 1:N sampling. Both apply before
//! a packet reaches the flow table.

use std::net::IpAddr;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData};
use aya::Ebpf;
use flowlens_common::{
    FILTER_CIDR, FILTER_CIDRS_MAP, FILTER_PORT, FILTER_PORTS_MAP, FILTER_PROTOCOL,
    FILTER_PROTOCOLS_MAP,
};
use flowlens_runtime::ConfigError;
use serde::Deserialize;

/// `[collector.filter]`: a flow is recorded when every non-empty list matches it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    /// Source or destination address inside one of these networks ("10.0.0.0/8", "fd00::/8",
    /// a bare address means a single host).
    pub cidrs: Vec<String>,
    /// Source or destination port among these.
    pub ports: Vec<u16>,
    /// IP protocol among these: names (tcp, udp, icmp, icmpv6, sctp, gre, esp) or numbers.
    pub protocols: Vec<String>,
}

/// Filters ready for the kernel maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    /// (prefix length over the 16-byte address, address) — IPv4 mapped, prefix + 96.
    pub cidrs: Vec<(u32, [u8; 16])>,
    pub ports: Vec<u16>,
    pub protocols: Vec<u8>,
}

impl FilterConfig {
    /// Parses every entry; an error names the key and the bad entry.
    pub fn parse(&self) -> Result<Filters, ConfigError> {
        let cidrs = self
            .cidrs
            .iter()
            .map(|c| {
                parse_cidr(c).ok_or_else(|| {
                    ConfigError::invalid(
                        "collector.filter.cidrs",
                        format!("`{c}` is not a network like 10.0.0.0/8 or fd00::/8"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        let protocols = self
            .protocols
            .iter()
            .map(|p| {
                parse_protocol(p).ok_or_else(|| {
                    ConfigError::invalid(
                        "collector.filter.protocols",
                        format!("`{p}` is not a protocol name (tcp, udp, icmp, ...) or number"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Filters {
            cidrs,
            ports: self.ports.clone(),
            protocols,
        })
    }
}

impl Filters {
    /// The `FILTER_*` bits for the kernel's FILTERS global.
    pub fn flags(&self) -> u32 {
        let mut f = 0;
        if !self.cidrs.is_empty() {
            f |= FILTER_CIDR;
        }
        if !self.ports.is_empty() {
            f |= FILTER_PORT;
        }
        if !self.protocols.is_empty() {
            f |= FILTER_PROTOCOL;
        }
        f
    }

    /// Writes the filter entries into the loaded programs' maps.
    pub fn install(&self, ebpf: &mut Ebpf) -> anyhow::Result<()> {
        let mut cidrs: LpmTrie<&mut MapData, [u8; 16], u8> = LpmTrie::try_from(
            ebpf.map_mut(FILTER_CIDRS_MAP)
                .ok_or_else(|| anyhow::anyhow!("map {FILTER_CIDRS_MAP} missing"))?,
        )?;
        for (len, addr) in &self.cidrs {
            cidrs.insert(&Key::new(*len, *addr), 1, 0)?;
        }
        let mut ports: HashMap<&mut MapData, u16, u8> = HashMap::try_from(
            ebpf.map_mut(FILTER_PORTS_MAP)
                .ok_or_else(|| anyhow::anyhow!("map {FILTER_PORTS_MAP} missing"))?,
        )?;
        for p in &self.ports {
            ports.insert(p, 1, 0)?;
        }
        let mut protocols: Array<&mut MapData, u8> = Array::try_from(
            ebpf.map_mut(FILTER_PROTOCOLS_MAP)
                .ok_or_else(|| anyhow::anyhow!("map {FILTER_PROTOCOLS_MAP} missing"))?,
        )?;
        for p in &self.protocols {
            protocols.set(u32::from(*p), 1, 0)?;
        }
        Ok(())
    }
}

fn parse_cidr(text: &str) -> Option<(u32, [u8; 16])> {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (
            a.trim().parse::<IpAddr>().ok()?,
            Some(l.trim().parse::<u32>().ok()?),
        ),
        None => (text.trim().parse::<IpAddr>().ok()?, None),
    };
    match addr {
        IpAddr::V4(v4) => {
            let len = len.unwrap_or(32);
            (len <= 32).then(|| (len + 96, v4.to_ipv6_mapped().octets()))
        }
        IpAddr::V6(v6) => {
            let len = len.unwrap_or(128);
            (len <= 128).then(|| (len, v6.octets()))
        }
    }
}

fn parse_protocol(text: &str) -> Option<u8> {
    let t = text.trim().to_ascii_lowercase();
    Some(match t.as_str() {
        "icmp" => 1,
        "tcp" => 6,
        "udp" => 17,
        "gre" => 47,
        "esp" => 50,
        "icmpv6" | "ipv6-icmp" => 58,
        "sctp" => 132,
        _ => return t.parse().ok(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_networks_protocols_and_flags() {
        let f = FilterConfig {
            cidrs: vec!["10.1.0.0/16".into(), "fd00::1".into()],
            ports: vec![53],
            protocols: vec!["UDP".into(), "132".into()],
        }
        .parse()
        .unwrap();
        let v4 = std::net::Ipv4Addr::new(10, 1, 0, 0)
            .to_ipv6_mapped()
            .octets();
        assert_eq!(f.cidrs[0], (112, v4));
        assert_eq!(f.cidrs[1].0, 128);
        assert_eq!(f.protocols, vec![17, 132]);
        assert_eq!(f.flags(), FILTER_CIDR | FILTER_PORT | FILTER_PROTOCOL);
        assert_eq!(Filters::default().flags(), 0);
    }

    #[test]
    fn bad_entries_name_their_key() {
        let e = FilterConfig {
            cidrs: vec!["10.0.0.0/33".into()],
            ..Default::default()
        }
        .parse()
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("collector.filter.cidrs") && e.contains("10.0.0.0/33"),
            "{e}"
        );
        let e = FilterConfig {
            protocols: vec!["tcpp".into()],
            ..Default::default()
        }
        .parse()
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("collector.filter.protocols") && e.contains("tcpp"),
            "{e}"
        );
    }
}
