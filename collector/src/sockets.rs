//! Per-conversation socket metrics from the kernel's socket programs (collector-ebpf/src/
//! sockets.rs): the smoothed RTT and retransmitted segments of local TCP sockets, packets the
//! kernel dropped with its reason, and the process (pid, comm, cgroup v2 id) owning each local
//! TCP/UDP socket.
//!
//! - [`SocketPlan::discover`] reads the kernel's BTF at start: the struct offsets the programs
//!   need (no CO-RE in aya-ebpf), the raw tracepoints' argument types, `enum skb_drop_reason`.
//!   What the kernel lacks disables that feature with a warning naming it
//!   (`flowlens_collector_socket_probe_disabled{probe}` = 1); the flow programs are unaffected.
//! - [`SocketProbes::start`] loads and attaches the programs (raw tracepoints: CAP_BPF and
//!   CAP_PERFMON, no tracefs access needed; kprobes as the owner fallback on kernels before 6.4).
//! - [`SocketStats`] reads the LRU maps every scan and turns the kernel's cumulative counters into
//!   what each conversation added since the previous scan (like `table.rs` for flows); entries
//!   idle longer than the idle timeout are taken out of the kernel maps with their last counts.
//!
//! The maps are host-wide: a conversation is identified by protocol, addresses and ports (IPv4 as
//! `::ffff:a.b.c.d`), whatever network namespace its sockets live in.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use aya::maps::{Map, MapData, PerCpuArray};
use aya::programs::{KProbe, RawTracePoint};
use aya::{Ebpf, EbpfLoader, Pod};
use flowlens_common::sockets::{
    DropKey, DropStats, SockKey, SockOffsets, SockOwner, TcpConnStats, KFREE_SKB_PROGRAM,
    OFFSET_UNAVAILABLE, SOCK_COUNTERS_MAP, SOCK_COUNTER_COUNT, SOCK_COUNTER_DROPS,
    SOCK_COUNTER_DROPS_UNPARSED, SOCK_COUNTER_MAP_FAILED, SOCK_COUNTER_OWNER_WRITES,
    SOCK_COUNTER_READ_FAILED, SOCK_COUNTER_RETRANSMITS, SOCK_COUNTER_RTT_SAMPLES, SOCK_DROPS_MAP,
    SOCK_OFFSETS_GLOBAL, SOCK_OWNERS_MAP, SOCK_OWNER_KPROBE_PROGRAM, SOCK_OWNER_PROGRAM,
    SOCK_TCP_MAP, SOCK_WINDOW, TCP_PROBE_PROGRAM, TCP_RETRANSMIT_ERR_PROGRAM,
    TCP_RETRANSMIT_PROGRAM,
};

use crate::drain::{delete_entry, for_each_entry, take_entry};
use crate::kernel_offsets::Btf;
use crate::probe::Probe;
use crate::record::read_clock;

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
}

impl Default for SocketOptions {
    fn default() -> Self {
        Self {
            enabled: true,
            map_size: 32_768,
            drop_map_size: 4_096,
            force_kprobes: false,
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
enum OwnerHooks {
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
    disabled: Vec<(Feature, String)>,
    retransmit_program: &'static str,
    owner_hooks: OwnerHooks,
    reasons: DropReasons,
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

/// Names of `enum skb_drop_reason` values, without the `SKB_DROP_REASON_` prefix.
#[derive(Debug, Clone, Default)]
pub struct DropReasons {
    names: HashMap<u32, String>,
    subsystems: HashMap<u32, String>,
}

impl DropReasons {
    fn new(values: &[(String, u64)], subsystems: Option<Vec<(String, u64)>>) -> Self {
        let short = |n: &str, prefix: &str| n.strip_prefix(prefix).unwrap_or(n).to_string();
        Self {
            names: values
                .iter()
                .map(|(n, v)| {
                    let n = n.strip_prefix("SKB_DROP_REASON_").unwrap_or(n);
                    (*v as u32, short(n, "SKB_"))
                })
                .collect(),
            subsystems: subsystems
                .unwrap_or_default()
                .iter()
                .map(|(n, v)| (*v as u32, short(n, "SKB_DROP_REASON_SUBSYS_")))
                .collect(),
        }
    }

    /// The name of reason `value`: `NETFILTER_DROP`, or `<SUBSYSTEM>_<code>` for reasons of a
    /// subsystem (high 16 bits, e.g. mac80211), or `UNKNOWN_<value>`.
    pub fn name(&self, value: u32) -> String {
        if let Some(n) = self.names.get(&value) {
            return n.clone();
        }
        let subsystem = value >> 16;
        match self.subsystems.get(&subsystem) {
            Some(s) if subsystem != 0 => format!("{s}_{}", value & 0xffff),
            _ => format!("UNKNOWN_{value}"),
        }
    }
}

/// The loaded socket programs' maps and counters, handed from the [`Probe`] to [`SocketStats`].
pub struct SocketProbes {
    tcp: MapData,
    drops: MapData,
    owners: MapData,
    /// Possible CPUs (the per-CPU drops map holds one value per CPU).
    cpus: usize,
    counters: PerCpuArray<MapData, u64>,
    disabled: Vec<(Feature, String)>,
    programs: Vec<&'static str>,
    reasons: DropReasons,
}

impl SocketProbes {
    /// Loads and attaches the programs `plan` enables; a failure disables that feature with a
    /// warning. The maps exist whatever is enabled (empty when nothing writes to them).
    pub fn start(ebpf: &mut Ebpf, plan: SocketPlan) -> Self {
        let mut disabled = plan.disabled.clone();
        let mut programs = Vec::new();
        for feature in Feature::ALL {
            if !plan.is_enabled(feature) {
                continue;
            }
            let attached = match feature {
                Feature::Rtt => raw_tracepoint(ebpf, TCP_PROBE_PROGRAM, &["tcp_probe"]),
                Feature::Retransmits => {
                    raw_tracepoint(ebpf, plan.retransmit_program, &["tcp_retransmit_skb"])
                }
                Feature::Drops => raw_tracepoint(ebpf, KFREE_SKB_PROGRAM, &["kfree_skb"]),
                Feature::Processes => match &plan.owner_hooks {
                    OwnerHooks::Tracepoints => raw_tracepoint(
                        ebpf,
                        SOCK_OWNER_PROGRAM,
                        &["sock_send_length", "sock_recv_length"],
                    ),
                    OwnerHooks::Kprobes(functions) => kprobes(ebpf, functions),
                },
            };
            match attached {
                Ok(name) => programs.push(name),
                Err(e) => disabled.push((feature, format!("{e:#}"))),
            }
        }
        for feature in Feature::ALL {
            let why = disabled.iter().find(|(f, _)| *f == feature).map(|(_, w)| w);
            metrics::gauge!("flowlens_collector_socket_probe_disabled", "probe" => feature.name())
                .set(if why.is_some() { 1.0 } else { 0.0 });
            if let Some(why) = why {
                tracing::warn!(probe = feature.name(), reason = %why, "socket probe disabled");
            }
        }
        tracing::info!(
            enabled = ?Feature::ALL
                .iter()
                .filter(|f| !disabled.iter().any(|(d, _)| d == *f))
                .map(|f| f.name())
                .collect::<Vec<_>>(),
            owner_hooks = ?plan.owner_hooks,
            "socket probes attached"
        );
        let take = |ebpf: &mut Ebpf, name: &str| match ebpf.take_map(name) {
            Some(Map::LruHashMap(data) | Map::PerCpuLruHashMap(data)) => data,
            _ => panic!("map {name} missing from the object or not an LRU hash"),
        };
        Self {
            tcp: take(ebpf, SOCK_TCP_MAP),
            drops: take(ebpf, SOCK_DROPS_MAP),
            owners: take(ebpf, SOCK_OWNERS_MAP),
            cpus: aya::util::nr_cpus().unwrap_or(1),
            counters: ebpf
                .take_map(SOCK_COUNTERS_MAP)
                .and_then(|m| m.try_into().ok())
                .unwrap_or_else(|| {
                    panic!("map {SOCK_COUNTERS_MAP} missing or not a per-CPU array")
                }),
            disabled,
            programs,
            reasons: plan.reasons,
        }
    }
}

fn raw_tracepoint(
    ebpf: &mut Ebpf,
    program: &'static str,
    tracepoints: &[&str],
) -> anyhow::Result<&'static str> {
    use anyhow::Context;
    let p: &mut RawTracePoint = ebpf
        .program_mut(program)
        .with_context(|| format!("program {program} missing from the object"))?
        .try_into()?;
    p.load()
        .with_context(|| format!("loading program {program} (verifier)"))?;
    for tp in tracepoints {
        p.attach(tp)
            .with_context(|| format!("attaching {program} to raw tracepoint {tp}"))?;
    }
    Ok(program)
}

fn kprobes(ebpf: &mut Ebpf, functions: &[&'static str]) -> anyhow::Result<&'static str> {
    use anyhow::Context;
    let program = SOCK_OWNER_KPROBE_PROGRAM;
    let p: &mut KProbe = ebpf
        .program_mut(program)
        .with_context(|| format!("program {program} missing from the object"))?
        .try_into()?;
    p.load()
        .with_context(|| format!("loading program {program} (verifier)"))?;
    let mut attached = 0;
    for f in functions {
        match p.attach(f, 0) {
            Ok(_) => attached += 1,
            Err(e) => tracing::warn!(function = f, error = %e, "kprobe not attached"),
        }
    }
    if attached == 0 {
        anyhow::bail!("no kprobe of {functions:?} could be attached");
    }
    Ok(program)
}

/// Kernel run time and runs of each loaded socket program (0 unless kernel.bpf_stats_enabled=1).
pub fn kernel_cost(probe: &Probe) -> Vec<(&'static str, Duration, u64)> {
    [
        TCP_PROBE_PROGRAM,
        TCP_RETRANSMIT_PROGRAM,
        TCP_RETRANSMIT_ERR_PROGRAM,
        KFREE_SKB_PROGRAM,
        SOCK_OWNER_PROGRAM,
        SOCK_OWNER_KPROBE_PROGRAM,
    ]
    .into_iter()
    .filter_map(|name| {
        let (time, runs) = probe.program_cost(name)?;
        (runs > 0 || time > Duration::ZERO).then_some((name, time, runs))
    })
    .collect()
}

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

/// What one scan read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketScan {
    pub tcp_entries: usize,
    pub drop_entries: usize,
    pub owner_entries: usize,
    /// Idle entries taken out of the kernel maps.
    pub evicted: usize,
}

/// A conversation's extras waiting to be claimed, in the orientation first seen.
#[derive(Debug, Clone)]
struct Pending {
    a: Endpoint,
    b: Endpoint,
    extras: ConnExtras,
    rtt_at: u64,
    drop_at: u64,
}

/// The user-space side of the socket maps.
pub struct SocketStats {
    probes: SocketProbes,
    idle_ns: u64,
    owner_idle_ns: u64,
    tcp_seen: HashMap<SockKey, TcpConnStats>,
    drops_seen: HashMap<DropKey, DropStats>,
    owners: HashMap<SockKey, SockOwner>,
    pending: HashMap<(u8, Endpoint, Endpoint), Pending>,
    last: SocketScan,
}

impl SocketStats {
    /// Takes the socket maps from `probe`; entries idle longer than `idle_timeout` leave the
    /// kernel maps (socket owners after `max(idle_timeout, 60 s)`: a quiet socket keeps its owner).
    pub fn new(probe: &mut Probe, idle_timeout: Duration) -> anyhow::Result<Self> {
        let probes = probe
            .take_sockets()
            .ok_or_else(|| anyhow::anyhow!("the socket maps were already taken"))?;
        Ok(Self::from_probes(probes, idle_timeout))
    }

    pub fn from_probes(probes: SocketProbes, idle_timeout: Duration) -> Self {
        let idle_ns = idle_timeout.as_nanos() as u64;
        Self {
            probes,
            idle_ns,
            owner_idle_ns: idle_ns.max(60_000_000_000),
            tcp_seen: HashMap::new(),
            drops_seen: HashMap::new(),
            owners: HashMap::new(),
            pending: HashMap::new(),
            last: SocketScan::default(),
        }
    }

    /// Features that are not running, with why.
    pub fn disabled(&self) -> &[(Feature, String)] {
        &self.probes.disabled
    }

    /// Names of the attached socket programs.
    pub fn programs(&self) -> &[&'static str] {
        &self.probes.programs
    }

    /// What the last scan read.
    pub fn last_scan(&self) -> SocketScan {
        self.last
    }

    /// The programs' counters summed over CPUs, indexed by `SOCK_COUNTER_*`.
    pub fn counters(&self) -> io::Result<[u64; SOCK_COUNTER_COUNT as usize]> {
        let mut out = [0u64; SOCK_COUNTER_COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = self
                .probes
                .counters
                .get(&(i as u32), 0)
                .map_err(io::Error::other)?
                .iter()
                .sum();
        }
        Ok(out)
    }

    /// Reads the kernel maps; afterwards `take` returns what each conversation added since the
    /// previous scan. Extras nobody claimed (neither `take` nor `unclaimed`) carry over.
    pub fn scan(&mut self) -> io::Result<()> {
        let now = read_clock(libc::CLOCK_MONOTONIC) as u64;
        let mut scan = SocketScan::default();

        let tcp: Vec<(SockKey, TcpConnStats)> = read_all(self.probes.tcp.fd().as_fd(), 1)?;
        scan.tcp_entries = tcp.len();
        let mut seen = HashMap::with_capacity(tcp.len());
        for (key, mut current) in tcp {
            let idle = current.last_ns.saturating_add(self.idle_ns) < now;
            if idle {
                match take_elem::<_, TcpConnStats>(self.probes.tcp.fd().as_fd(), &key, 1)? {
                    Some(last) => current = last[0],
                    None => continue,
                }
                scan.evicted += 1;
            }
            let before = self.tcp_seen.get(&key);
            // Lower than at the previous scan: the LRU evicted the entry and it was created
            // again since, everything in it is new.
            let retransmits = current.retrans_segs
                - before
                    .map(|b| b.retrans_segs)
                    .filter(|b| *b <= current.retrans_segs)
                    .unwrap_or(0);
            let new_rtt =
                current.srtt_us > 0 && before.is_none_or(|b| current.rtt_at_ns > b.rtt_at_ns);
            if retransmits > 0 || new_rtt {
                let p = self.pending_for(&key);
                p.extras.retransmits += retransmits;
                if new_rtt && current.rtt_at_ns >= p.rtt_at {
                    p.rtt_at = current.rtt_at_ns;
                    p.extras.rtt_ns = u64::from(current.srtt_us) * 1_000;
                }
            }
            if !idle {
                seen.insert(key, current);
            }
        }
        self.tcp_seen = seen;

        let cpus = self.probes.cpus;
        let drops: Vec<(DropKey, DropStats)> = read_all(self.probes.drops.fd().as_fd(), cpus)?;
        scan.drop_entries = drops.len();
        let mut seen = HashMap::with_capacity(drops.len());
        for (key, mut current) in drops {
            let idle = current.last_ns.saturating_add(self.idle_ns) < now;
            if idle {
                match take_elem::<_, DropStats>(self.probes.drops.fd().as_fd(), &key, cpus)? {
                    Some(last) => current = merge_cpus(&last),
                    None => continue,
                }
                scan.evicted += 1;
            }
            // As for TCP: lower counts than before mean a re-created entry.
            let before = self
                .drops_seen
                .get(&key)
                .filter(|b| b.packets <= current.packets && b.bytes <= current.bytes);
            let packets = current.packets - before.map_or(0, |b| b.packets);
            if packets > 0 {
                let bytes = current.bytes - before.map_or(0, |b| b.bytes);
                let reason = self.probes.reasons.name(key.reason);
                metrics::counter!("flowlens_collector_socket_drops_total", "reason" => reason.clone())
                    .increment(packets);
                let p = self.pending_for(&key.conv);
                p.extras.drops += packets;
                p.extras.drop_bytes += bytes;
                match p
                    .extras
                    .drops_by_reason
                    .iter_mut()
                    .find(|(r, _, _)| *r == reason)
                {
                    Some((_, n, b)) => {
                        *n += packets;
                        *b += bytes;
                    }
                    None => p
                        .extras
                        .drops_by_reason
                        .push((reason.clone(), packets, bytes)),
                }
                p.extras
                    .drops_by_reason
                    .sort_by(|x, y| y.1.cmp(&x.1).then(x.0.cmp(&y.0)));
                if current.last_ns >= p.drop_at {
                    p.drop_at = current.last_ns;
                    p.extras.drop_reason = reason;
                }
            }
            if !idle {
                seen.insert(key, current);
            }
        }
        self.drops_seen = seen;

        let owners: Vec<(SockKey, SockOwner)> = read_all(self.probes.owners.fd().as_fd(), 1)?;
        scan.owner_entries = owners.len();
        self.owners.clear();
        for (key, owner) in owners {
            if owner.seen_ns.saturating_add(self.owner_idle_ns) < now {
                // A later send or receive writes it again.
                delete_entry(self.probes.owners.fd().as_fd(), &key)?;
                scan.evicted += 1;
                continue;
            }
            self.owners.insert(key, owner);
        }

        for (map, n) in [
            ("tcp", scan.tcp_entries),
            ("drops", scan.drop_entries),
            ("owners", scan.owner_entries),
        ] {
            metrics::gauge!("flowlens_collector_socket_map_entries", "map" => map).set(n as f64);
        }
        if let Ok(counters) = self.counters() {
            for (name, idx) in [
                ("rtt_samples", SOCK_COUNTER_RTT_SAMPLES),
                ("retransmits", SOCK_COUNTER_RETRANSMITS),
                ("drops", SOCK_COUNTER_DROPS),
                ("drops_unparsed", SOCK_COUNTER_DROPS_UNPARSED),
                ("owner_writes", SOCK_COUNTER_OWNER_WRITES),
                ("map_failed", SOCK_COUNTER_MAP_FAILED),
                ("read_failed", SOCK_COUNTER_READ_FAILED),
            ] {
                metrics::counter!("flowlens_collector_socket_kernel_events_total", "event" => name)
                    .absolute(counters[idx as usize]);
            }
        }
        self.last = scan;
        Ok(())
    }

    fn pending_for(&mut self, key: &SockKey) -> &mut Pending {
        let a = Endpoint {
            addr: key.src_addr,
            port: key.src_port,
        };
        let b = Endpoint {
            addr: key.dst_addr,
            port: key.dst_port,
        };
        self.pending
            .entry(conversation(key.proto, &a, &b))
            .or_insert_with(|| Pending {
                a,
                b,
                extras: ConnExtras::default(),
                rtt_at: 0,
                drop_at: 0,
            })
    }

    /// Extras of the conversation (proto, a, b) in either orientation, removed so they are
    /// attached to one record only.
    pub fn take(&mut self, proto: u8, a: &Endpoint, b: &Endpoint) -> Option<ConnExtras> {
        self.pending
            .remove(&conversation(proto, a, b))
            .map(|p| p.extras)
    }

    /// The local process whose socket is `local` talking to `remote` (not removed): the socket
    /// connected to `remote`, else an unconnected socket bound to `local` (address, then the
    /// wildcard address).
    pub fn process(&self, proto: u8, local: &Endpoint, remote: &Endpoint) -> Option<ProcessInfo> {
        let key = |src: [u8; 16], dst: &Endpoint| SockKey {
            src_addr: src,
            dst_addr: dst.addr,
            src_port: local.port,
            dst_port: dst.port,
            proto,
            _pad: [0; 3],
        };
        let any = Endpoint::default();
        [
            key(local.addr, remote),
            key(local.addr, &any),
            key([0; 16], remote),
            key([0; 16], &any),
        ]
        .iter()
        .find_map(|k| self.owners.get(k))
        .map(|o| ProcessInfo {
            pid: o.tgid,
            comm: String::from_utf8_lossy(&o.comm)
                .trim_end_matches('\0')
                .to_string(),
            cgroup_id: o.cgroup_id,
        })
    }

    /// Conversations with drops (or other extras) that no record claimed this scan: the owner
    /// emits them as drop-only records. Oriented as first seen (a dropped packet's source first,
    /// a socket's local end first). Includes RTT-only entries of sockets whose traffic the
    /// collector does not watch; filter on `drops > 0` for drop-only records.
    pub fn unclaimed(&mut self) -> Vec<(u8, Endpoint, Endpoint, ConnExtras)> {
        self.pending
            .drain()
            .map(|((proto, _, _), p)| (proto, p.a, p.b, p.extras))
            .collect()
    }
}

impl SocketStats {
    /// Like [`SocketStats::unclaimed`] for the conversations with drops (removed: they become
    /// drop-only records); extras without drops stay pending for a later record of their
    /// conversation (a closing TCP conversation's last record is held back for a while) unless
    /// their last sample is older than `keep_ns`.
    pub fn unclaimed_drops(&mut self, keep_ns: u64) -> Vec<(u8, Endpoint, Endpoint, ConnExtras)> {
        let now = read_clock(libc::CLOCK_MONOTONIC) as u64;
        let mut out = Vec::new();
        self.pending.retain(|(proto, _, _), p| {
            if p.extras.drops > 0 {
                out.push((*proto, p.a, p.b, std::mem::take(&mut p.extras)));
                return false;
            }
            p.rtt_at.max(p.drop_at).saturating_add(keep_ns) >= now
        });
        out
    }
}

/// The orientation-free identity of a conversation.
fn conversation(proto: u8, a: &Endpoint, b: &Endpoint) -> (u8, Endpoint, Endpoint) {
    if a <= b {
        (proto, *a, *b)
    } else {
        (proto, *b, *a)
    }
}

/// A value of a map with `cpus` values per key (1 for a shared map) folded into one.
trait Merge: Pod + Default {
    fn merge(values: &[Self]) -> Self;
}

impl Merge for TcpConnStats {
    fn merge(values: &[Self]) -> Self {
        values[0]
    }
}

impl Merge for SockOwner {
    fn merge(values: &[Self]) -> Self {
        values[0]
    }
}

impl Merge for DropStats {
    fn merge(values: &[Self]) -> Self {
        merge_cpus(values)
    }
}

/// Drop counts summed over CPUs, with the time of the latest drop.
fn merge_cpus(values: &[DropStats]) -> DropStats {
    let mut out = DropStats::default();
    for v in values {
        out.packets += v.packets;
        out.bytes += v.bytes;
        out.last_ns = out.last_ns.max(v.last_ns);
    }
    out
}

/// Every entry of a hash map with `cpus` values per key, merged over CPUs.
fn read_all<K: Pod + Default, V: Merge>(
    map: BorrowedFd<'_>,
    cpus: usize,
) -> io::Result<Vec<(K, V)>> {
    const BATCH: usize = 4096;
    let mut out = Vec::new();
    let (mut keys, mut values) = (vec![K::default(); BATCH], vec![V::default(); BATCH * cpus]);
    for_each_entry(map, false, cpus, &mut keys, &mut values, |k, v| {
        out.push((*k, V::merge(v)))
    })?;
    Ok(out)
}

/// Removes `key` and returns its value(s) (one per CPU) at the instant of removal; `None` if it
/// was not there.
fn take_elem<K: Pod, V: Pod + Default>(
    map: BorrowedFd<'_>,
    key: &K,
    cpus: usize,
) -> io::Result<Option<Vec<V>>> {
    let mut values = vec![V::default(); cpus];
    Ok(take_entry(map, key, &mut values)?.then_some(values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reason_names() {
        let r = DropReasons::new(
            &[
                ("SKB_NOT_DROPPED_YET".into(), 0),
                ("SKB_CONSUMED".into(), 1),
                ("SKB_DROP_REASON_NETFILTER_DROP".into(), 12),
            ],
            Some(vec![("SKB_DROP_REASON_SUBSYS_MAC80211_UNUSABLE".into(), 1)]),
        );
        assert_eq!(r.name(12), "NETFILTER_DROP");
        assert_eq!(r.name(1), "CONSUMED");
        assert_eq!(r.name(0x1_0003), "MAC80211_UNUSABLE_3");
        assert_eq!(r.name(999), "UNKNOWN_999");
    }

    #[test]
    fn conversation_is_orientation_free() {
        let a = Endpoint::new("10.0.0.1".parse().unwrap(), 1000);
        let b = Endpoint::new("10.0.0.2".parse().unwrap(), 80);
        assert_eq!(conversation(6, &a, &b), conversation(6, &b, &a));
        assert_ne!(conversation(6, &a, &b), conversation(17, &a, &b));
        assert_eq!(a.addr[10..12], [0xff, 0xff]);
    }

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
