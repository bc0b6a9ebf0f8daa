//! What the running kernel lets the socket programs do, read from its BTF before the object is
//! loaded: struct offsets, the raw tracepoints' argument types, `enum skb_drop_reason`, and which
//! hook the owner program uses; a feature the kernel lacks is disabled with the reason.

use aya::EbpfLoader;
use flowlens_common::sockets::{
    SockOffsets, OFFSET_UNAVAILABLE, SOCK_DROPS_MAP, SOCK_OFFSETS_GLOBAL, SOCK_OWNERS_MAP,
    SOCK_TCP_MAP, SOCK_WINDOW, TCP_RETRANSMIT_ERR_PROGRAM, TCP_RETRANSMIT_PROGRAM,
};

use super::DropReasons;
use crate::btf::Btf;

/// What the socket programs may do; the defaults enable everything the kernel supports.
#[derive(Debug, Clone)]
pub struct SocketOptions {
    /// false: load none of the socket programs.
    pub enabled: bool,
    /// Entries of the LRU maps of TCP sockets and of socket owners.
    pub map_size: u32,
    /// Entries of the per-CPU LRU map of (dropped conversation, reason) (memory: about
    /// entries x CPUs x 24 B plus the keys).
    pub drop_map_size: u32,
    /// Use the kprobes for socket owners even where the sock_send_length/sock_recv_length
    /// tracepoints exist (tests the fallback).
    pub force_kprobes: bool,
    /// Inode number of the network namespace whose drops may become drop-only records (the
    /// collector's, see `SocketStats::unclaimed_drops`); 0: every namespace.
    pub netns_inode: u32,
}

impl Default for SocketOptions {
    fn default() -> Self {
        Self {
            enabled: true,
            map_size: 32_768,
            drop_map_size: 4_096,
            force_kprobes: false,
            netns_inode: 0,
        }
    }
}

/// The socket features, each with its own programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    /// tcp_probe: srtt of local TCP sockets.
    Rtt,
    /// tcp_retransmit_skb: retransmitted segments.
    Retransmits,
    /// kfree_skb: dropped packets with the reason.
    Drops,
    /// sock_send_length/sock_recv_length (or kprobes): the process owning a socket.
    Processes,
}

impl Feature {
    pub const ALL: [Feature; 4] = [
        Feature::Rtt,
        Feature::Retransmits,
        Feature::Drops,
        Feature::Processes,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Feature::Rtt => "rtt",
            Feature::Retransmits => "retransmits",
            Feature::Drops => "drops",
            Feature::Processes => "processes",
        }
    }
}

/// Where the owner program attaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum OwnerHooks {
    /// Raw tracepoints sock_send_length and sock_recv_length.
    Tracepoints,
    /// Kprobes on these functions.
    Kprobes(Vec<&'static str>),
}

/// Kernel functions whose first argument is the `struct sock *` a process sends or receives on.
const OWNER_KPROBES: [&str; 6] = [
    "tcp_sendmsg",
    "tcp_recvmsg",
    "udp_sendmsg",
    "udp_recvmsg",
    "udpv6_sendmsg",
    "udpv6_recvmsg",
];

/// The perf PMU kprobes attach through (absent when the kernel is built without kprobes).
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";

/// What the running kernel supports, found before the object is loaded.
#[derive(Debug, Clone)]
pub struct SocketPlan {
    pub offsets: SockOffsets,
    map_size: u32,
    drop_map_size: u32,
    /// Features that will not run, with why.
    pub(super) disabled: Vec<(Feature, String)>,
    pub(super) retransmit_program: &'static str,
    pub(super) owner_hooks: OwnerHooks,
    pub(super) reasons: DropReasons,
}

impl SocketPlan {
    /// Reads the kernel's BTF and decides which features can run.
    pub fn discover(options: &SocketOptions) -> Self {
        let mut plan = Self {
            offsets: SockOffsets::default(),
            map_size: options.map_size.max(1),
            drop_map_size: options.drop_map_size.max(1),
            disabled: Vec::new(),
            retransmit_program: TCP_RETRANSMIT_PROGRAM,
            owner_hooks: OwnerHooks::Tracepoints,
            reasons: DropReasons::default(),
        };
        if !options.enabled {
            plan.disable_all("disabled by configuration");
            return plan;
        }
        let btf = match Btf::from_kernel() {
            Ok(btf) => btf,
            Err(e) => {
                plan.disable_all(&format!("{e:#}"));
                return plan;
            }
        };
        plan.fill_from_btf(&btf, options);
        plan
    }

    fn disable_all(&mut self, why: &str) {
        self.disabled = Feature::ALL.iter().map(|f| (*f, why.to_string())).collect();
    }

    fn disable(&mut self, feature: Feature, why: String) {
        if !self.is_enabled(feature) {
            return;
        }
        self.disabled.push((feature, why));
    }

    pub fn is_enabled(&self, feature: Feature) -> bool {
        !self.disabled.iter().any(|(f, _)| *f == feature)
    }

    fn fill_from_btf(&mut self, btf: &Btf, options: &SocketOptions) {
        // (struct, member path, expected size) -> offset, or the name of what is missing.
        let member = |st: &str, path: &str, size: u32| -> Result<u32, String> {
            match btf.member(st, path) {
                Some(m) if m.size == size => Ok(m.offset),
                Some(m) => Err(format!(
                    "BTF: {st}.{path} is {} bytes, expected {size}",
                    m.size
                )),
                None => Err(format!("BTF: no member {st}.{path}")),
            }
        };
        let o = &mut self.offsets;
        let mut socket_missing = Vec::new();
        for (slot, path, size) in [
            (&mut o.sock_family, "__sk_common.skc_family", 2),
            (&mut o.sock_daddr, "__sk_common.skc_daddr", 4),
            (&mut o.sock_rcv_saddr, "__sk_common.skc_rcv_saddr", 4),
            (&mut o.sock_dport, "__sk_common.skc_dport", 2),
            (&mut o.sock_num, "__sk_common.skc_num", 2),
        ] {
            match member("sock", path, size) {
                Ok(off) => *slot = off,
                Err(e) => socket_missing.push(e),
            }
        }
        // Without IPv6 in the kernel these are absent: IPv4 sockets still work.
        o.sock_v6_daddr =
            member("sock", "__sk_common.skc_v6_daddr", 16).unwrap_or(OFFSET_UNAVAILABLE);
        o.sock_v6_rcv_saddr =
            member("sock", "__sk_common.skc_v6_rcv_saddr", 16).unwrap_or(OFFSET_UNAVAILABLE);
        // The key fields are read in one window of SOCK_WINDOW bytes.
        let fields: Vec<(u32, u32)> = [
            (o.sock_family, 2),
            (o.sock_daddr, 4),
            (o.sock_rcv_saddr, 4),
            (o.sock_dport, 2),
            (o.sock_num, 2),
            (o.sock_v6_daddr, 16),
            (o.sock_v6_rcv_saddr, 16),
        ]
        .into_iter()
        .filter(|(off, _)| *off != OFFSET_UNAVAILABLE)
        .collect();
        if socket_missing.is_empty() {
            let start = fields.iter().map(|(off, _)| *off).min().unwrap_or(0);
            let end = fields
                .iter()
                .map(|(off, size)| off + size)
                .max()
                .unwrap_or(0);
            if end - start <= SOCK_WINDOW {
                o.sock_window = start;
            } else {
                socket_missing.push(format!(
                    "BTF: the sock_common key fields span {} bytes, more than {SOCK_WINDOW}",
                    end - start
                ));
            }
        }
        let protocol = member("sock", "sk_protocol", 2);
        o.sock_protocol = *protocol.as_ref().unwrap_or(&OFFSET_UNAVAILABLE);
        let srtt = member("tcp_sock", "srtt_us", 4);
        o.tcp_srtt_us = *srtt.as_ref().unwrap_or(&OFFSET_UNAVAILABLE);
        let mut skb_missing = Vec::new();
        for (slot, path, size) in [
            (&mut o.skb_head, "head", 8),
            (&mut o.skb_len, "len", 4),
            (&mut o.skb_protocol, "protocol", 2),
            (&mut o.skb_network_header, "network_header", 2),
        ] {
            match member("sk_buff", path, size) {
                Ok(off) => *slot = off,
                Err(e) => skb_missing.push(e),
            }
        }
        // Where a dropped packet's network namespace is; without them every drop counts as the
        // collector's own.
        for (slot, st, path) in [
            (&mut o.skb_dev, "sk_buff", "dev"),
            (&mut o.skb_sk, "sk_buff", "sk"),
            (&mut o.dev_net, "net_device", "nd_net.net"),
            (&mut o.sock_net, "sock", "__sk_common.skc_net.net"),
        ] {
            *slot = member(st, path, 8).unwrap_or(OFFSET_UNAVAILABLE);
        }
        o.net_inum = member("net", "ns.inum", 4).unwrap_or(OFFSET_UNAVAILABLE);
        if o.net_inum == OFFSET_UNAVAILABLE || o.skb_dev == OFFSET_UNAVAILABLE {
            tracing::warn!(
                "BTF: no net.ns.inum or sk_buff.dev: drops of every network namespace can \
                 become drop-only records"
            );
        }
        o.watched_netns = options.netns_inode;
        // Segments per retransmitted skb; without it each retransmission counts once.
        if let (Ok(cb), Ok(segs)) = (
            member("sk_buff", "cb", 48),
            member("tcp_skb_cb", "tcp_gso_segs", 2),
        ) {
            o.skb_tcp_gso_segs = cb + segs;
        } else {
            tracing::warn!("BTF: no tcp_skb_cb.tcp_gso_segs: retransmits count skbs, not segments");
        }
        let socket = if socket_missing.is_empty() {
            Ok(())
        } else {
            Err(socket_missing.join(", "))
        };

        let args = |tp: &str| btf.tracepoint_args(tp);
        let starts = |args: &Option<Vec<String>>, want: &[&str]| -> bool {
            args.as_ref()
                .is_some_and(|a| a.len() >= want.len() && a.iter().zip(want).all(|(x, y)| x == y))
        };

        // RTT.
        let probe = args("tcp_probe");
        if !starts(&probe, &["*sock", "*sk_buff"]) {
            self.disable(Feature::Rtt, describe_missing("tcp_probe", &probe));
        }
        if let Err(e) = &socket {
            self.disable(Feature::Rtt, e.clone());
        }
        if let Err(e) = srtt {
            self.disable(Feature::Rtt, e);
        }

        // Retransmits.
        let retransmit = args("tcp_retransmit_skb");
        match retransmit.as_deref() {
            Some([sk, skb]) if sk == "*sock" && skb == "*sk_buff" => {
                self.retransmit_program = TCP_RETRANSMIT_PROGRAM
            }
            Some([sk, skb, err, ..]) if sk == "*sock" && skb == "*sk_buff" && err == "int" => {
                self.retransmit_program = TCP_RETRANSMIT_ERR_PROGRAM
            }
            _ => self.disable(
                Feature::Retransmits,
                describe_missing("tcp_retransmit_skb", &retransmit),
            ),
        }
        if let Err(e) = &socket {
            self.disable(Feature::Retransmits, e.clone());
        }

        // Drops.
        let kfree = args("kfree_skb");
        let reasons = btf.enum_values("skb_drop_reason");
        if !starts(&kfree, &["*sk_buff", "*void", "enum skb_drop_reason"]) {
            self.disable(Feature::Drops, describe_missing("kfree_skb", &kfree));
        }
        match reasons {
            Some(values) => {
                self.reasons = DropReasons::new(&values, btf.enum_values("skb_drop_reason_subsys"));
                let value = |name: &str, default: u32| {
                    values
                        .iter()
                        .find(|(n, _)| n == name)
                        .map_or(default, |(_, v)| *v as u32)
                };
                self.offsets.reason_not_dropped = value("SKB_NOT_DROPPED_YET", 0);
                self.offsets.reason_consumed = value("SKB_CONSUMED", 1);
            }
            None => self.disable(Feature::Drops, "BTF: no enum skb_drop_reason".into()),
        }
        if !skb_missing.is_empty() {
            self.disable(Feature::Drops, skb_missing.join(", "));
        }

        // Processes.
        let send = args("sock_send_length");
        let recv = args("sock_recv_length");
        let tracepoints =
            starts(&send, &["*sock", "int", "int"]) && starts(&recv, &["*sock", "int", "int"]);
        if tracepoints && !options.force_kprobes {
            self.owner_hooks = OwnerHooks::Tracepoints;
        } else {
            let functions: Vec<&'static str> = OWNER_KPROBES
                .into_iter()
                .filter(|f| btf.has_function(f))
                .collect();
            if !std::path::Path::new(KPROBE_PMU).exists() {
                self.disable(
                    Feature::Processes,
                    format!(
                        "no sock_send_length/sock_recv_length tracepoints{} and no kprobes in \
                         this kernel ({KPROBE_PMU} missing: CONFIG_KPROBES off)",
                        if tracepoints { " wanted" } else { "" }
                    ),
                );
            } else if functions.is_empty() {
                self.disable(
                    Feature::Processes,
                    "no sock_send_length/sock_recv_length tracepoints and none of \
                     tcp_sendmsg/udp_sendmsg/... in BTF"
                        .into(),
                );
            }
            self.owner_hooks = OwnerHooks::Kprobes(functions);
        }
        if let Err(e) = &socket {
            self.disable(Feature::Processes, e.clone());
        }
        if let Err(e) = protocol {
            self.disable(Feature::Processes, e);
        }
    }

    /// Sets the maps' sizes and the offsets global on the loader of the collector's object.
    pub fn configure<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        loader
            .map_max_entries(SOCK_TCP_MAP, self.map_size)
            .map_max_entries(SOCK_DROPS_MAP, self.drop_map_size)
            .map_max_entries(SOCK_OWNERS_MAP, self.map_size)
            .override_global(SOCK_OFFSETS_GLOBAL, &self.offsets, true);
    }
}

fn describe_missing(tracepoint: &str, args: &Option<Vec<String>>) -> String {
    match args {
        None => {
            format!("the kernel has no raw tracepoint {tracepoint} (BTF btf_trace_{tracepoint})")
        }
        Some(a) => format!(
            "raw tracepoint {tracepoint} has unexpected arguments ({})",
            a.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernel_supports_every_feature() {
        let plan = SocketPlan::discover(&SocketOptions::default());
        if Btf::from_kernel().is_err() {
            return;
        }
        assert!(plan.disabled.is_empty(), "{:?}", plan.disabled);
        assert_ne!(plan.offsets.skb_tcp_gso_segs, OFFSET_UNAVAILABLE);
        assert_eq!(plan.reasons.name(plan.offsets.reason_consumed), "CONSUMED");
    }
}
