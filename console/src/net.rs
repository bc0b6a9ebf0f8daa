//! Address ranges in the 16-byte space the `flows` table uses (IPv4 stored IPv4-mapped), and
//! addresses shown the way people write them (IPv4 dotted).

use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

/// An IP address or CIDR (`10.0.0.0/8`, `fd00::/64`, `10.1.2.3`) as an IPv6 range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    base: u128,
    prefix: u32,
}

impl FromStr for Net {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad =
            || format!("`{text}` is not an IP address or CIDR such as 10.0.0.0/8 or fd00::/64");
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((a, p)) => (a, Some(p.parse::<u32>().map_err(|_| bad())?)),
            None => (text.trim(), None),
        };
        let ip: IpAddr = addr.parse().map_err(|_| bad())?;
        let (v6, max, offset) = match ip {
            IpAddr::V4(v4) => (v4.to_ipv6_mapped(), 32, 96),
            IpAddr::V6(v6) => (v6, 128, 0),
        };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(Net {
            base: u128::from(v6),
            prefix: prefix + offset,
        })
    }
}

impl Net {
    fn mask(&self) -> u128 {
        if self.prefix == 0 {
            0
        } else {
            u128::MAX << (128 - self.prefix)
        }
    }

    /// The lowest address of the range (IPv6 text, what ClickHouse's toIPv6 reads).
    pub fn first(&self) -> String {
        Ipv6Addr::from(self.base & self.mask()).to_string()
    }

    /// The highest address of the range.
    pub fn last(&self) -> String {
        Ipv6Addr::from(self.base | !self.mask()).to_string()
    }
}

/// An address as ClickHouse's IPv6NumToString writes it, shown IPv4 dotted when IPv4-mapped.
pub fn show_addr(text: &str) -> String {
    match text.parse::<Ipv6Addr>() {
        Ok(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        },
        Err(_) => text.to_owned(),
    }
}

/// `ip:port`, with brackets around IPv6 addresses.
pub fn show_endpoint(addr: &str, port: u16) -> String {
    let shown = show_addr(addr);
    if shown.contains(':') {
        format!("[{shown}]:{port}")
    } else {
        format!("{shown}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_ipv4_mapped_and_ipv6() {
        let n: Net = "10.1.0.0/16".parse().unwrap();
        assert_eq!(n.first(), "::ffff:10.1.0.0");
        assert_eq!(n.last(), "::ffff:10.1.255.255");
        let one: Net = "192.168.1.7".parse().unwrap();
        assert_eq!(one.first(), one.last());
        let v6: Net = "fd00::/64".parse().unwrap();
        assert_eq!(v6.last(), "fd00::ffff:ffff:ffff:ffff");
        assert!("10.0.0.0/33".parse::<Net>().is_err());
        assert!("nope".parse::<Net>().is_err());
        let all: Net = "::/0".parse().unwrap();
        assert_eq!(all.first(), "::");
    }

    #[test]
    fn addresses_show_dotted_when_mapped() {
        assert_eq!(show_addr("::ffff:10.0.0.1"), "10.0.0.1");
        assert_eq!(show_addr("fd00::1"), "fd00::1");
        assert_eq!(show_endpoint("::ffff:10.0.0.1", 53), "10.0.0.1:53");
        assert_eq!(show_endpoint("fd00::1", 443), "[fd00::1]:443");
    }
}
