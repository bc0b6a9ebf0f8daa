//! IP address helpers: IPv4-mapped IPv6 conversion, address ranges in that 16-byte form, and
//! the serde mapping of `Ipv6Addr` to the Avro `IPv6Address` fixed(16).

use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

/// Maps any IP address onto the 16-byte wire form: IPv6 as is, IPv4 as `::ffff:a.b.c.d`.
pub fn ip_to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Inverse of [`ip_to_v6`]: IPv4-mapped addresses become `IpAddr::V4`, everything else stays IPv6.
///
/// IPv4-compatible addresses (`::a.b.c.d`, deprecated) are left as IPv6 on purpose.
pub fn v6_to_ip(addr: Ipv6Addr) -> IpAddr {
    match addr.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(addr),
    }
}

/// An IP address or CIDR (`10.0.0.0/8`, `fd00::/64`, `10.1.2.3`) as a range of the 16-byte
/// form records use (IPv4 as IPv4-mapped IPv6).
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
        let (max, offset) = match ip {
            IpAddr::V4(_) => (32, 96),
            IpAddr::V6(_) => (128, 0),
        };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(Net {
            base: u128::from(ip_to_v6(ip)),
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

    /// Whether `addr` (16-byte form) lies in the range.
    pub fn contains(&self, addr: Ipv6Addr) -> bool {
        u128::from(addr) & self.mask() == self.base & self.mask()
    }

    /// The lowest address of the range.
    pub fn first(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.base & self.mask())
    }

    /// The highest address of the range.
    pub fn last(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.base | !self.mask())
    }
}

/// `#[serde(with = "...")]` module writing an `Ipv6Addr` as an Avro fixed of 16 bytes (network order).
///
/// Goes through `apache_avro::serde_avro_fixed` so that both apache-avro serializers (the
/// schema-aware one and `to_value`) produce a fixed rather than bytes.
pub(crate) mod fixed16 {
    use serde::{Deserializer, Serializer};
    use std::net::Ipv6Addr;

    pub fn serialize<S: Serializer>(addr: &Ipv6Addr, serializer: S) -> Result<S::Ok, S::Error> {
        apache_avro::serde_avro_fixed::serialize(&addr.octets(), serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Ipv6Addr, D::Error> {
        let octets: [u8; 16] = apache_avro::serde_avro_fixed::deserialize(deserializer)?;
        Ok(Ipv6Addr::from(octets))
    }
}

/// `#[serde(with = "...")]` module for `Option<Ipv6Addr>` as the Avro union `["null", IPv6Address]`.
pub(crate) mod fixed16_opt {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::net::Ipv6Addr;

    #[derive(Serialize, Deserialize)]
    struct Fixed(#[serde(with = "super::fixed16")] Ipv6Addr);

    pub fn serialize<S: Serializer>(
        addr: &Option<Ipv6Addr>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        addr.map(Fixed).serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Ipv6Addr>, D::Error> {
        Ok(Option::<Fixed>::deserialize(deserializer)?.map(|f| f.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn v4_maps_and_unmaps() {
        let v4 = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
        let v6 = ip_to_v6(v4);
        assert_eq!(v6, "::ffff:10.1.2.3".parse::<Ipv6Addr>().unwrap());
        assert_eq!(v6_to_ip(v6), v4);
    }

    #[test]
    fn v6_stays_v6() {
        for s in ["2001:db8::1", "::1", "::", "::10.1.2.3", "fe80::1"] {
            let a: Ipv6Addr = s.parse().unwrap();
            assert_eq!(ip_to_v6(IpAddr::V6(a)), a);
            assert_eq!(v6_to_ip(a), IpAddr::V6(a), "{s}");
        }
    }
}
