//! IP protocol numbers (the records' `proto`) and the names people use for them, as in
//! /etc/protocols.

/// The protocols flowlens parses ports or types for, by number and name.
const NAMES: [(u8, &str); 5] = [
    (1, "icmp"),
    (6, "tcp"),
    (17, "udp"),
    (58, "icmpv6"),
    (132, "sctp"),
];

/// The number of protocol `text`: a name of [`protocol_name`] (any case, `ipv6-icmp` too) or a
/// number 0-255.
pub fn protocol_number(text: &str) -> Option<u8> {
    let lower = text.to_ascii_lowercase();
    let name = if lower == "ipv6-icmp" {
        "icmpv6"
    } else {
        &lower
    };
    NAMES
        .iter()
        .find(|(_, n)| *n == name)
        .map(|(p, _)| *p)
        .or_else(|| lower.parse().ok())
}

/// The name of protocol `proto` (`tcp`), or its number.
pub fn protocol_name(proto: u8) -> String {
    NAMES
        .iter()
        .find(|(p, _)| *p == proto)
        .map_or_else(|| proto.to_string(), |(_, n)| (*n).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_both_ways() {
        assert_eq!(protocol_number("TCP"), Some(6));
        assert_eq!(protocol_number("ipv6-icmp"), Some(58));
        assert_eq!(protocol_number("47"), Some(47));
        assert_eq!(protocol_number("bogus"), None);
        assert_eq!(protocol_name(132), "sctp");
        assert_eq!(protocol_name(47), "47");
    }
}
