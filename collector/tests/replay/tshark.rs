//! What tshark sees in a capture, frame by frame: the link (VLAN tags, the EtherType), the
//! network header (addresses, protocol, fragment fields), the transport fields (ports, ICMP
//! type and code) and, for VXLAN, Geneve and GRE, the same for the frame inside with where it
//! starts. Read from `tshark -T json -x` (reassembly off: every frame as it was on the wire);
//! nothing here parses packet bytes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// One frame of a capture as tshark dissected it.
#[derive(Debug, Clone)]
pub struct Frame {
    /// `frame.len`: bytes on the wire from the Ethernet header on (no FCS).
    pub len: u64,
    pub kind: Kind,
}

#[derive(Debug, Clone)]
pub enum Kind {
    /// The EtherType (innermost VLAN tag's) is neither IPv4 nor IPv6.
    NonIp,
    /// IPv4/IPv6 EtherType, but tshark could not read both addresses of that header.
    Malformed,
    Ip(Packet),
}

/// An IP packet: its innermost VLAN id (0 untagged), network header and transport fields.
#[derive(Debug, Clone)]
pub struct Packet {
    pub vlan: u16,
    pub net: Net,
    /// The flow a VXLAN, Geneve or GRE packet carries.
    pub inner: Option<Inner>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol of the transport header (IPv6: after the extension headers).
    pub proto: u8,
    pub transport: Transport,
    /// TCP flags (`tcp.flags`), 0 for other protocols or when the header ends before them.
    pub tcp_flags: u16,
    pub fragment: Option<Fragment>,
}

/// The transport fields of a packet's own header (none for a non-first fragment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    #[default]
    None,
    Ports(u16, u16),
    Icmp(u8, u8),
}

/// A fragment of a fragmented datagram (IPv4 fragment fields, IPv6 fragment header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    pub id: u32,
    pub offset: u32,
    pub more: bool,
}

impl Fragment {
    /// Offset 0 with more to come: it holds the transport header.
    pub fn is_first(&self) -> bool {
        self.offset == 0 && self.more
    }

    pub fn is_later(&self) -> bool {
        self.offset != 0
    }
}

#[derive(Debug, Clone)]
pub struct Inner {
    /// `vxlan`, `geneve` or `gre`.
    pub tunnel: &'static str,
    /// VNI or GRE key (0 without a key).
    pub id: u32,
    pub vlan: u16,
    pub net: Net,
    /// Where the inner frame (Ethernet, or the IP header) starts in the outer frame.
    pub offset: u64,
}

/// Dissects `pcap` with tshark.
pub fn frames(pcap: &Path) -> Vec<Frame> {
    let out = Command::new("tshark")
        .args(["-n", "-T", "json", "-x", "--no-duplicate-keys"])
        .args(["-o", "ip.defragment:FALSE", "-o", "ipv6.defragment:FALSE"])
        .arg("-r")
        .arg(pcap)
        .output()
        .unwrap_or_else(|e| panic!("running tshark (scripts/setup.sh installs it): {e}"));
    assert!(
        out.status.success(),
        "tshark -r {}: {}",
        pcap.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).expect("tshark's JSON");
    all.iter()
        .map(|f| Layers::new(&f["_source"]["layers"]).frame())
        .collect()
}

/// One frame's top-level layers, walked in the order `frame.protocols` lists them. A layer
/// name seen several times (outer and inner IP) is an array in tshark's JSON; layers nested
/// in another (the packet an ICMP error quotes) are not top-level and never walked.
struct Layers<'a> {
    layers: &'a Value,
    /// Top-level layer names in protocol order, with each one's occurrence index.
    order: Vec<(&'a str, usize)>,
    next: usize,
}

impl<'a> Layers<'a> {
    fn new(layers: &'a Value) -> Self {
        let protocols = layers["frame"]["frame.protocols"]
            .as_str()
            .expect("frame.protocols");
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut order = Vec::new();
        for name in protocols.split(':') {
            let count = occurrences(&layers[name]).len();
            let n = seen.entry(name).or_default();
            if *n < count {
                order.push((name, *n));
                *n += 1;
            }
        }
        Self {
            layers,
            order,
            next: 0,
        }
    }

    /// The next layer, if it is called `name`.
    fn take(&mut self, name: &str) -> Option<&'a Value> {
        let &(next, index) = self.order.get(self.next)?;
        if next != name {
            return None;
        }
        self.next += 1;
        Some(occurrences(&self.layers[name])[index])
    }

    /// The name of the next layer.
    fn peek(&self) -> Option<&'a str> {
        self.order.get(self.next).map(|(n, _)| *n)
    }

    /// Where the next layer starts in the frame.
    fn position(&self) -> Option<u64> {
        let &(name, index) = self.order.get(self.next)?;
        // `<name>_raw` = [hex, position, length, bitmask, type], one per occurrence.
        let raw = &self.layers[format!("{name}_raw")];
        let raw = match raw.as_array() {
            Some(a) if a.first().is_some_and(Value::is_array) => &a[index],
            _ => raw,
        };
        raw.get(1).and_then(Value::as_u64)
    }

    fn frame(mut self) -> Frame {
        let len = number(&self.layers["frame"]["frame.len"]);
        let kind = match self.link() {
            Some((vlan, ethertype)) => self.ip(vlan, ethertype),
            None => Kind::Malformed,
        };
        Frame { len, kind }
    }

    /// Ethernet and VLAN tags: (innermost VLAN id, innermost EtherType).
    fn link(&mut self) -> Option<(u16, u64)> {
        let eth = self.take("eth")?;
        let mut ethertype = hex(&eth["eth.type"]);
        let mut vlan = 0;
        while let Some(tag) = self.peek().filter(|n| *n == "vlan" || *n == "ieee8021ad") {
            let t = self.take(tag).unwrap();
            let fields = t.as_object().unwrap();
            vlan = number(&fields[&format!("{tag}.id")]) as u16;
            ethertype = fields
                .iter()
                .find(|(k, _)| k.ends_with(".etype"))
                .map(|(_, v)| hex(v))
                .unwrap_or(0);
        }
        Some((vlan, ethertype))
    }

    fn ip(&mut self, vlan: u16, ethertype: u64) -> Kind {
        let name = match ethertype {
            0x0800 => "ip",
            0x86dd => "ipv6",
            _ => return Kind::NonIp,
        };
        let Some(net) = self.net(name) else {
            return Kind::Malformed;
        };
        let inner = self.inner();
        Kind::Ip(Packet { vlan, net, inner })
    }

    /// The network header `name` (ip or ipv6) and the transport fields after it.
    fn net(&mut self, name: &str) -> Option<Net> {
        let h = self.take(name)?;
        let (src, dst) = (&h[format!("{name}.src")], &h[format!("{name}.dst")]);
        let (src, dst): (IpAddr, IpAddr) =
            (src.as_str()?.parse().ok()?, dst.as_str()?.parse().ok()?);
        let (proto, fragment) = if name == "ip" {
            let offset = number(&h["ip.frag_offset"]) as u32;
            let more = h["ip.flags_tree"]["ip.flags.mf"].as_str() == Some("1");
            let fragment = (offset != 0 || more).then(|| Fragment {
                id: hex(&h["ip.id"]) as u32,
                offset,
                more,
            });
            (number(&h["ip.proto"]) as u8, fragment)
        } else {
            ipv6_chain(h)
        };
        let later = fragment.is_some_and(|f| f.is_later());
        let (transport, tcp_flags) = if later {
            (Transport::None, 0)
        } else {
            self.transport(proto)
        };
        Some(Net {
            src,
            dst,
            proto,
            transport,
            tcp_flags,
            fragment,
        })
    }

    /// Ports or ICMP type/code, and TCP flags, from the transport layer right after the network
    /// header.
    fn transport(&mut self, proto: u8) -> (Transport, u16) {
        let name = match proto {
            6 => "tcp",
            17 => "udp",
            132 => "sctp",
            1 => "icmp",
            58 => "icmpv6",
            _ => return (Transport::None, 0),
        };
        let Some(l4) = self.take(name) else {
            return (Transport::None, 0);
        };
        let field = |f: &str| l4.get(format!("{name}.{f}")).map(number).unwrap_or(0);
        match proto {
            1 | 58 => (Transport::Icmp(field("type") as u8, field("code") as u8), 0),
            _ => {
                let flags = l4.get("tcp.flags").map(hex).unwrap_or(0) as u16;
                let ports = Transport::Ports(field("srcport") as u16, field("dstport") as u16);
                (ports, flags)
            }
        }
    }

    /// The flow inside a VXLAN, Geneve or GRE packet, as tshark decoded it.
    fn inner(&mut self) -> Option<Inner> {
        let tunnel = match self.peek()? {
            "vxlan" => "vxlan",
            "geneve" => "geneve",
            "gre" => "gre",
            _ => return None,
        };
        let t = self.take(tunnel).unwrap();
        let id = match tunnel {
            "vxlan" => number(&t["vxlan.vni"]),
            "geneve" => hex(&t["geneve.vni"]),
            _ => t.get("gre.key").map(hex).unwrap_or(0),
        } as u32;
        let offset = self.position()?;
        let (vlan, ethertype) = if self.peek() == Some("eth") {
            self.link()?
        } else {
            let proto_type = match tunnel {
                "geneve" => &t["geneve.proto_type"],
                _ => &t["gre.proto"],
            };
            (0, hex(proto_type))
        };
        let net = match ethertype {
            0x0800 => self.net("ip")?,
            0x86dd => self.net("ipv6")?,
            _ => return None,
        };
        Some(Inner {
            tunnel,
            id,
            vlan,
            net,
            offset,
        })
    }
}

/// The transport protocol and fragment header of an IPv6 header, following its chain of
/// extension headers (nested in the ipv6 layer by tshark).
fn ipv6_chain(h: &Value) -> (u8, Option<Fragment>) {
    let mut next = number(&h["ipv6.nxt"]) as u8;
    let mut fragment = None;
    let mut used: HashMap<&str, usize> = HashMap::new();
    loop {
        let name = match next {
            0 => "ipv6.hopopts",
            43 => "ipv6.routing",
            44 => "ipv6.fraghdr",
            60 => "ipv6.dstopts",
            _ => return (next, fragment),
        };
        let n = used.entry(name).or_default();
        let Some(ext) = occurrences(&h[name]).get(*n).copied() else {
            return (next, fragment);
        };
        *n += 1;
        if next == 44 {
            fragment = Some(Fragment {
                id: hex(&ext["ipv6.fraghdr.ident"]) as u32,
                offset: number(&ext["ipv6.fraghdr.offset"]) as u32,
                more: ext["ipv6.fraghdr.more"].as_str() == Some("1"),
            });
        }
        next = number(&ext[format!("{name}.nxt")]) as u8;
    }
}

/// A JSON value that is one object or an array of them (tshark's duplicate layers).
fn occurrences(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) if a.first().is_some_and(Value::is_object) => a.iter().collect(),
        Value::Object(_) => vec![v],
        _ => Vec::new(),
    }
}

fn number(v: &Value) -> u64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a number: {v}"))
}

/// `0x...` field values (tshark prints ids, EtherTypes and VNIs in hex).
fn hex(v: &Value) -> u64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("not a hex string: {v}"));
    u64::from_str_radix(s.trim_start_matches("0x"), 16)
        .unwrap_or_else(|_| panic!("not a hex number: {s}"))
}
