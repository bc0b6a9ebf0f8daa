//! What the socket programs tell about one conversation: its extras (RTT, retransmits, drops),
//! its ends, and the processes owning them.

use std::net::IpAddr;

/// What the kernel saw of one conversation since the previous scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnExtras {
    /// Smoothed RTT (kernel srtt) at the last sample of either local socket, ns; 0 = no sample.
    pub rtt_ns: u64,
    /// Segments retransmitted by either local socket.
    pub retransmits: u64,
    /// Packets of the conversation (either direction) dropped by the kernel.
    pub drops: u64,
    /// Their bytes (skb->len at the drop: from the IP header on for received packets).
    pub drop_bytes: u64,
    /// Reason of the last drop (`enum skb_drop_reason` without `SKB_DROP_REASON_`); "" if none.
    pub drop_reason: String,
    /// The drops by reason: (reason, packets, bytes), most packets first.
    pub drops_by_reason: Vec<(String, u64, u64)>,
}

/// One end of a conversation. IPv4 as `::ffff:a.b.c.d`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub addr: [u8; 16],
    pub port: u16,
}

impl Endpoint {
    pub fn new(ip: IpAddr, port: u16) -> Self {
        let addr = match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        Self { addr, port }
    }

    /// The two ends (source, destination) of a key's addresses and ports.
    pub fn ends(src: ([u8; 16], u16), dst: ([u8; 16], u16)) -> (Self, Self) {
        (
            Self {
                addr: src.0,
                port: src.1,
            },
            Self {
                addr: dst.0,
                port: dst.1,
            },
        )
    }
}

/// A local process owning a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Thread-group id (the pid `ps` shows) in the initial PID namespace.
    pub pid: u32,
    /// Command name of the thread that used the socket (at most 15 bytes).
    pub comm: String,
    /// cgroup v2 id (the inode of its cgroup directory).
    pub cgroup_id: u64,
}
