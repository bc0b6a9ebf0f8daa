//! Loading the kernel programs and maps (aya) and attaching them with TCX to the ingress and
//! egress of the chosen interfaces; loading and attaching the socket programs (TCP RTT and
//! retransmits, drops, socket owners: `crate::sockets`), which fail soft. Dropping the
//! [`Programs`] detaches everything, unless they were loaded with a pin directory
//! (`crate::pins`): then the flow table and the TCX links stay pinned, the programs keep
//! counting, and the next [`Programs`] adopts the table and swaps its programs into the links
//! (one atomic link update per hook: no packet goes uncounted or is counted twice).

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use aya::maps::{Map, MapData, PerCpuArray};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, SchedClassifierLinkId, TcAttachType};
use aya::programs::SchedClassifier;
use aya::{Ebpf, EbpfLoader};
use flowlens_common::l7::{L7Ports, L7_EVENTS_MAP, L7_PORTS_GLOBAL};
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
use crate::pins::{Outcome, PinDir, TableMaps, PROGRAM_MAPS};
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
    attached: BTreeMap<String, Links>,
    /// The socket programs' maps and what is enabled, until `take_sockets` hands them over.
    sockets: Option<SocketProbes>,
    /// The L7 tap's ring buffer, until `take_l7` hands it over.
    l7: Option<aya::maps::RingBuf<MapData>>,
    /// Where the table and links are pinned, with the table's export maps and what became of
    /// a previously pinned table (`None`: everything dies with the process).
    pinned: Option<(PinDir, TableMaps, Outcome)>,
}

/// The links of one interface.
enum Links {
    /// Held by the programs: detached when they are dropped.
    Owned(Vec<(&'static str, SchedClassifierLinkId)>),
    /// Pinned (attached until the pin is removed), with our handle on each.
    Pinned(Vec<(PathBuf, FdLink)>),
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
        Self::load_pinned(
            table_size,
            sampling,
            filters,
            sockets,
            &L7Ports::default(),
            None,
        )
    }

    /// [`Programs::load_with_sockets`] with the flow table kept in `pins` (see `crate::pins`):
    /// the table pinned there is adopted when its layout fits (`table_size` included), else
    /// replaced by a new one; interfaces are then attached through their pinned links. Packets
    /// to or from the ports of `l7` go to the L7 tap (`crate::l7::ports`; none: it is off).
    pub fn load_pinned(
        table_size: u32,
        sampling: u32,
        filters: &Filters,
        sockets: &SocketOptions,
        l7: &L7Ports,
        pins: Option<PinDir>,
    ) -> anyhow::Result<Self> {
        let flags = filters.flags();
        let plan = SocketPlan::discover(sockets);
        let buckets = buckets_for(table_size);
        let fresh = TableLayout {
            version: TABLE_LAYOUT_VERSION,
            buckets,
            seed: random_seed(),
        };
        let (layout, outcome) = match &pins {
            Some(pins) => pins.prepare(buckets, fresh)?,
            None => (fresh, Outcome::Created),
        };
        let mut loader = EbpfLoader::new();
        plan.configure(&mut loader);
        if let Some(pins) = &pins {
            for name in PROGRAM_MAPS {
                loader.map_pin_path(name, pins.map_path(name));
            }
        }
        let mut ebpf = loader
            .map_max_entries(FLOW_TAGS_MAP, buckets)
            .map_max_entries(FLOW_SLOTS_MAP, buckets * BUCKET_SLOTS as u32)
            .override_global(TABLE_GLOBAL, &layout, true)
            .override_global(SAMPLING_GLOBAL, &sampling, true)
            .override_global(FILTERS_GLOBAL, &flags, true)
            .override_global(L7_PORTS_GLOBAL, l7, true)
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
        let l7 = match ebpf.take_map(L7_EVENTS_MAP) {
            Some(map) => Some(aya::maps::RingBuf::try_from(map)?),
            None => bail!("map {L7_EVENTS_MAP} missing"),
        };
        let pinned = match pins {
            Some(pins) => {
                let maps = pins.table_maps(layout, &outcome)?;
                Some((pins, maps, outcome))
            }
            None => None,
        };
        Ok(Self {
            pinned,
            layout,
            flow_maps: [tags, slots, overflow],
            counters,
            tunnels,
            attached: BTreeMap::new(),
            sockets: Some(SocketProbes::start(&mut ebpf, plan)),
            l7,
            ebpf,
        })
    }

    /// Attaches ingress and egress programs to `interface` (in the calling thread's namespace).
    /// With a pin directory the links are pinned, and a link a previous collector pinned for
    /// the interface gets these programs in its place, atomically.
    pub fn attach(&mut self, interface: &str) -> anyhow::Result<()> {
        if self.pinned.is_some() {
            return self.attach_pinned(interface);
        }
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
        self.attached
            .insert(interface.to_string(), Links::Owned(links));
        Ok(())
    }

    fn attach_pinned(&mut self, interface: &str) -> anyhow::Result<()> {
        let Some((pins, _, _)) = &self.pinned else {
            bail!("no pin directory");
        };
        let ifindex = if_index(interface)?;
        let mut links = Vec::with_capacity(2);
        let mut adopted = 0;
        for (name, hook, hook_name) in [
            (INGRESS_PROGRAM, TcAttachType::Ingress, "ingress"),
            (EGRESS_PROGRAM, TcAttachType::Egress, "egress"),
        ] {
            let path = pins.link_path(ifindex, hook_name);
            let program: &mut SchedClassifier = self
                .ebpf
                .program_mut(name)
                .with_context(|| format!("program {name}"))?
                .try_into()?;
            let link = if pins.has_link(&path, ifindex)? {
                let pinned = PinnedLink::from_pin(&path)
                    .with_context(|| format!("opening link {}", path.display()))?;
                let link = SchedClassifierLink::try_from(FdLink::from(pinned))
                    .with_context(|| format!("link {} is not a TCX link", path.display()))?;
                let id = program
                    .attach_to_link(link)
                    .with_context(|| format!("replacing the program of link {}", path.display()))?;
                adopted += 1;
                FdLink::try_from(program.take_link(id)?)?
            } else {
                let id = program
                    .attach(interface, hook)
                    .with_context(|| format!("attaching {name} to interface {interface}"))?;
                let link = FdLink::try_from(program.take_link(id)?)?;
                FdLink::from(
                    link.pin(&path)
                        .with_context(|| format!("pinning link {}", path.display()))?,
                )
            };
            links.push((path, link));
        }
        tracing::info!(
            interface,
            adopted,
            "attached ingress and egress programs (pinned links)"
        );
        self.attached
            .insert(interface.to_string(), Links::Pinned(links));
        Ok(())
    }

    /// Removes the pinned links of interfaces this collector did not attach to (no-op without
    /// a pin directory).
    pub fn remove_stale_links(&self) -> anyhow::Result<()> {
        let Some((pins, _, _)) = &self.pinned else {
            return Ok(());
        };
        let keep: BTreeSet<PathBuf> = self
            .attached
            .values()
            .filter_map(|l| match l {
                Links::Pinned(links) => Some(links.iter().map(|(p, _)| p.clone())),
                Links::Owned(_) => None,
            })
            .flatten()
            .collect();
        pins.remove_links_except(&keep)
    }

    /// The pin directory, if the table is pinned.
    pub fn pin_dir(&self) -> Option<&PinDir> {
        self.pinned.as_ref().map(|(p, _, _)| p)
    }

    /// Forgets an interface that disappeared (the kernel already removed its links) or detaches
    /// from one that is still there.
    pub fn detach(&mut self, interface: &str) {
        let links = match self.attached.remove(interface) {
            Some(Links::Owned(links)) => links,
            Some(Links::Pinned(links)) => {
                for (path, link) in links {
                    // Without its pin and our handle the link is released (detached).
                    if let Err(e) = std::fs::remove_file(&path) {
                        tracing::warn!(link = %path.display(), error = %e, "removing a pinned link failed");
                    }
                    drop(link);
                }
                tracing::info!(interface, "detached");
                return;
            }
            None => return,
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

    /// Hands over the L7 tap's ring buffer (once; `None` afterwards).
    pub fn take_l7(&mut self) -> Option<aya::maps::RingBuf<MapData>> {
        self.l7.take()
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
        let table = KernelTable::new(
            self.layout,
            tags.fd().as_fd(),
            slots.fd().as_fd(),
            overflow.fd().as_fd(),
            cpus,
        )
        .context("mapping the flow table")?;
        match &self.pinned {
            Some((_, maps, _)) => table
                .persist(
                    maps.exported.as_fd(),
                    maps.overflow_exported.as_fd(),
                    crate::clock::monotonic_now_ns(),
                )
                .context("resuming the pinned flow table's export state"),
            None => Ok(table),
        }
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

/// The index of `interface` in the calling thread's network namespace.
fn if_index(interface: &str) -> anyhow::Result<u32> {
    let name = std::ffi::CString::new(interface)?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("interface {interface}"));
    }
    Ok(ifindex)
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
