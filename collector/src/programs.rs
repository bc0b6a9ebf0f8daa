//! Loading the kernel programs and maps (aya) and attaching them with TCX to the ingress and
//! egress of the chosen interfaces; loading and attaching the socket programs (TCP RTT and
//! retransmits, drops, socket owners: `crate::sockets`), which fail soft. Dropping the
//! [`Programs`] detaches everything.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use anyhow::{bail, Context};
use aya::maps::{Map, MapData, PerCpuArray};
use aya::programs::tc::{SchedClassifierLinkId, TcAttachType};
use aya::programs::SchedClassifier;
use aya::{Ebpf, EbpfLoader};
use flowlens_common::sockets::{
    KFREE_SKB_PROGRAM, SOCK_OWNER_KPROBE_PROGRAM, SOCK_OWNER_PROGRAM, TCP_PROBE_PROGRAM,
    TCP_RETRANSMIT_ERR_PROGRAM, TCP_RETRANSMIT_PROGRAM,
};
use flowlens_common::table::{
    buckets_for, TableLayout, BUCKET_SLOTS, FLOW_OVERFLOW_MAP, FLOW_SLOTS_MAP, FLOW_TAGS_MAP,
    TABLE_GLOBAL, TABLE_LAYOUT_VERSION,
};
use flowlens_common::{
    FlowKey, TunnelOuter, COUNTERS_MAP, COUNTER_COUNT, EGRESS_PROGRAM, FILTERS_GLOBAL,
    INGRESS_PROGRAM, SAMPLING_GLOBAL, TUNNELS_MAP,
};

use crate::filter::Filters;
use crate::sockets::{SocketOptions, SocketPlan, SocketProbes};
use crate::table::KernelTable;

/// The kernel object built from collector-ebpf/.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flowlens"));

/// Loaded programs, the flow table and the counters.
pub struct Programs {
    ebpf: Ebpf,
    layout: TableLayout,
    /// The flow table: tags, slots, overflow entries (see `flowlens_common::table`).
    flow_maps: [MapData; 3],
    counters: PerCpuArray<MapData, u64>,
    /// Outer addresses of tunnel flows (inner key -> outer).
    tunnels: aya::maps::HashMap<MapData, FlowKey, TunnelOuter>,
    /// Attached interfaces by name, with the ingress and egress links.
    attached: BTreeMap<String, Vec<(&'static str, SchedClassifierLinkId)>>,
    /// The socket programs' maps and what is enabled, until `take_sockets` hands them over.
    sockets: Option<SocketProbes>,
}

impl Programs {
    /// Loads the programs with a flow table of at least `table_size` slots (whole buckets),
    /// 1:`sampling` packet sampling and the given filters.
    pub fn load(table_size: u32, sampling: u32, filters: &Filters) -> anyhow::Result<Self> {
        Self::load_with_sockets(table_size, sampling, filters, &SocketOptions::default())
    }

    /// [`Programs::load`] with the socket programs configured by `sockets`. A socket feature the
    /// kernel cannot support (tracepoint, BTF type or permission missing) is disabled with a
    /// warning naming what is missing; the flow programs are unaffected.
    pub fn load_with_sockets(
        table_size: u32,
        sampling: u32,
        filters: &Filters,
        sockets: &SocketOptions,
    ) -> anyhow::Result<Self> {
        let flags = filters.flags();
        let plan = SocketPlan::discover(sockets);
        let buckets = buckets_for(table_size);
        let layout = TableLayout {
            version: TABLE_LAYOUT_VERSION,
            buckets,
            seed: random_seed(),
        };
        let mut loader = EbpfLoader::new();
        plan.configure(&mut loader);
        let mut ebpf = loader
            .map_max_entries(FLOW_TAGS_MAP, buckets)
            .map_max_entries(FLOW_SLOTS_MAP, buckets * BUCKET_SLOTS as u32)
            .override_global(TABLE_GLOBAL, &layout, true)
            .override_global(SAMPLING_GLOBAL, &sampling, true)
            .override_global(FILTERS_GLOBAL, &flags, true)
            .load(EBPF_OBJECT)
            .map_err(explain_load_error)?;
        filters.install(&mut ebpf)?;
        for name in [INGRESS_PROGRAM, EGRESS_PROGRAM] {
            let program: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the object"))?
                .try_into()?;
            program
                .load()
                .with_context(|| format!("loading program {name} (verifier)"))?;
        }
        let mut array = |name: &str| match ebpf.take_map(name) {
            Some(Map::Array(data)) => Ok(data),
            _ => Err(anyhow::anyhow!("map {name} missing or not an array")),
        };
        let tags = array(FLOW_TAGS_MAP)?;
        let slots = array(FLOW_SLOTS_MAP)?;
        let overflow = match ebpf.take_map(FLOW_OVERFLOW_MAP) {
            Some(Map::PerCpuHashMap(data)) => data,
            _ => bail!("map {FLOW_OVERFLOW_MAP} missing or not a per-CPU hash"),
        };
        let counters = ebpf
            .take_map(COUNTERS_MAP)
            .with_context(|| format!("map {COUNTERS_MAP} missing"))?
            .try_into()?;
        let tunnels = ebpf
            .take_map(TUNNELS_MAP)
            .with_context(|| format!("map {TUNNELS_MAP} missing"))?
            .try_into()?;
        Ok(Self {
            layout,
            flow_maps: [tags, slots, overflow],
            counters,
            tunnels,
            attached: BTreeMap::new(),
            sockets: Some(SocketProbes::start(&mut ebpf, plan)),
            ebpf,
        })
    }

    /// Attaches ingress and egress programs to `interface` (in the calling thread's namespace).
    pub fn attach(&mut self, interface: &str) -> anyhow::Result<()> {
        let mut links = Vec::with_capacity(2);
        for (name, hook) in [
            (INGRESS_PROGRAM, TcAttachType::Ingress),
            (EGRESS_PROGRAM, TcAttachType::Egress),
        ] {
            let program: &mut SchedClassifier = self
                .ebpf
                .program_mut(name)
                .with_context(|| format!("program {name}"))?
                .try_into()?;
            let link = program
                .attach(interface, hook)
                .with_context(|| format!("attaching {name} to interface {interface}"))?;
            links.push((name, link));
        }
        tracing::info!(interface, "attached ingress and egress programs");
        self.attached.insert(interface.to_string(), links);
        Ok(())
    }

    /// Forgets an interface that disappeared (the kernel already removed its links) or detaches
    /// from one that is still there.
    pub fn detach(&mut self, interface: &str) {
        let Some(links) = self.attached.remove(interface) else {
            return;
        };
        for (name, link) in links {
            let program: Result<&mut SchedClassifier, _> = match self.ebpf.program_mut(name) {
                Some(p) => p.try_into(),
                None => continue,
            };
            if let Ok(program) = program {
                // The link is gone with its device; taking and dropping it closes our fd.
                let _ = program.take_link(link);
            }
        }
        tracing::info!(interface, "detached");
    }

    /// Names of the interfaces the programs are attached to.
    pub fn attached(&self) -> Vec<String> {
        self.attached.keys().cloned().collect()
    }

    pub fn is_attached(&self, interface: &str) -> bool {
        self.attached.contains_key(interface)
    }

    /// Total time the kernel spent in both programs and how many packets they ran for; both
    /// stay 0 unless `sysctl kernel.bpf_stats_enabled=1`.
    pub fn kernel_cost(&self) -> (Duration, u64) {
        let mut total = (Duration::ZERO, 0);
        for name in [INGRESS_PROGRAM, EGRESS_PROGRAM] {
            if let Some(info) = self.ebpf.program(name).and_then(|p| p.info().ok()) {
                total.0 += info.run_time();
                total.1 += info.run_count();
            }
        }
        total
    }

    /// Kernel run time and runs of one program by name (0 unless kernel.bpf_stats_enabled=1);
    /// `None` if it is not loaded.
    pub fn program_cost(&self, name: &str) -> Option<(Duration, u64)> {
        let info = self.ebpf.program(name)?.info().ok()?;
        Some((info.run_time(), info.run_count()))
    }

    /// Kernel run time and runs of each loaded socket program (0 unless
    /// kernel.bpf_stats_enabled=1).
    pub fn socket_cost(&self) -> Vec<(&'static str, Duration, u64)> {
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
            let (time, runs) = self.program_cost(name)?;
            (runs > 0 || time > Duration::ZERO).then_some((name, time, runs))
        })
        .collect()
    }

    /// Hands over the socket programs' maps (once; `None` afterwards).
    pub fn take_sockets(&mut self) -> Option<SocketProbes> {
        self.sockets.take()
    }

    /// What the kernel reports about a loaded program (instructions the verifier processed,
    /// translated and JIT-compiled sizes, run counts); `None` if it is not loaded.
    pub fn program_info(&self, name: &str) -> Option<aya::programs::ProgramInfo> {
        self.ebpf.program(name)?.info().ok()
    }

    /// The file descriptor of a loaded program (for BPF_PROG_TEST_RUN in benchmarks).
    pub fn program_fd(&self, name: &str) -> anyhow::Result<BorrowedFd<'_>> {
        let program: &SchedClassifier = self
            .ebpf
            .program(name)
            .with_context(|| format!("program {name}"))?
            .try_into()?;
        Ok(program.fd()?.as_fd())
    }

    /// The flow table mapped into this process (see [`KernelTable`]).
    pub fn flow_table(&self) -> anyhow::Result<KernelTable> {
        let [tags, slots, overflow] = &self.flow_maps;
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
        KernelTable::new(
            self.layout,
            tags.fd().as_fd(),
            slots.fd().as_fd(),
            overflow.fd().as_fd(),
            cpus,
        )
        .context("mapping the flow table")
    }

    /// The outer addresses of the tunnel packets carrying the inner flow `key`, if known.
    pub fn tunnel_outer(&self, key: &FlowKey) -> Option<TunnelOuter> {
        self.tunnels.get(key, 0).ok()
    }

    /// Kernel counters summed over CPUs, indexed by `flowlens_common::COUNTER_*`.
    pub fn counters(&self) -> anyhow::Result<[u64; COUNTER_COUNT as usize]> {
        let mut out = [0u64; COUNTER_COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = self.counters.get(&(i as u32), 0)?.iter().sum();
        }
        Ok(out)
    }
}

/// A random hash seed per table (keys are partly chosen by remote peers).
fn random_seed() -> u64 {
    let mut seed = [0u8; 8];
    // SAFETY: fills the 8-byte buffer; a short or failed read leaves a weaker seed, not a fault.
    unsafe { libc::getrandom(seed.as_mut_ptr() as *mut libc::c_void, seed.len(), 0) };
    u64::from_ne_bytes(seed) ^ std::process::id() as u64
}

fn explain_load_error(e: aya::EbpfError) -> anyhow::Error {
    let text = e.to_string();
    let hint = if text.contains("Operation not permitted") || text.contains("Permission denied") {
        " (needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN)"
    } else {
        ""
    };
    anyhow::anyhow!("loading the kernel programs failed{hint}: {text}")
}
