//! Addresses shown the way people write them (IPv4 dotted), and the address ranges of the
//! filters and groups (`flowlens_schemas::Net`, the 16-byte form of the `flows` table).

use std::net::Ipv6Addr;

pub use flowlens_schemas::Net;

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
        assert_eq!(n.first().to_string(), "::ffff:10.1.0.0");
        assert_eq!(n.last().to_string(), "::ffff:10.1.255.255");
        let one: Net = "192.168.1.7".parse().unwrap();
        assert_eq!(one.first(), one.last());
        let v6: Net = "fd00::/64".parse().unwrap();
        assert_eq!(v6.last().to_string(), "fd00::ffff:ffff:ffff:ffff");
        assert!("10.0.0.0/33".parse::<Net>().is_err());
        assert!("nope".parse::<Net>().is_err());
        let all: Net = "::/0".parse().unwrap();
        assert_eq!(all.first().to_string(), "::");
    }

    #[test]
    fn addresses_show_dotted_when_mapped() {
        assert_eq!(show_addr("::ffff:10.0.0.1"), "10.0.0.1");
        assert_eq!(show_addr("fd00::1"), "fd00::1");
        assert_eq!(show_endpoint("::ffff:10.0.0.1", 53), "10.0.0.1:53");
        assert_eq!(show_endpoint("fd00::1", 443), "[fd00::1]:443");
    }
}
