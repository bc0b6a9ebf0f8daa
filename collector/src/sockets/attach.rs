//! Loading and attaching the socket programs the plan enables (raw tracepoints, or kprobes for
//! socket owners on kernels without the tracepoints), and taking their maps out of the object.

use aya::maps::{Map, MapData, PerCpuArray};
use aya::programs::{KProbe, RawTracePoint};
use aya::Ebpf;
use flowlens_common::sockets::{
    KFREE_SKB_PROGRAM, SOCK_COUNTERS_MAP, SOCK_DROPS_MAP, SOCK_OWNERS_MAP,
    SOCK_OWNER_KPROBE_PROGRAM, SOCK_OWNER_PROGRAM, SOCK_TCP_MAP, TCP_PROBE_PROGRAM,
};

use super::plan::OwnerHooks;
use super::{DropReasons, Feature, SocketPlan};

/// The loaded socket programs' maps and counters, handed from `crate::programs::Programs` to
/// [`SocketStats`](super::SocketStats).
pub struct SocketProbes {
    pub(super) tcp: MapData,
    pub(super) drops: MapData,
    pub(super) owners: MapData,
    /// Possible CPUs (the per-CPU drops map holds one value per CPU).
    pub(super) cpus: usize,
    pub(super) counters: PerCpuArray<MapData, u64>,
    pub(super) disabled: Vec<(Feature, String)>,
    pub(super) programs: Vec<&'static str>,
    pub(super) reasons: DropReasons,
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
