//! The kernel state a collector keeps in a bpf filesystem (`collector.pin_path`) so that it
//! outlives the process: the flow table's maps, what each slot and overflow entry exported
//! (`FLOW_EXPORTED`, `OVERFLOW_EXPORTED`), the table's layout (`TABLE_META`) and the TCX links
//! (`links/<ifindex>-<ingress|egress>`). While no collector runs the programs keep counting into
//! the pinned table; the next collector adopts it when its layout is the one it was built for,
//! and otherwise discards it (a warning and `flowlens_collector_pinned_table_total{outcome=
//! "discarded"}`) and starts an empty one.

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::Context;
use flowlens_common::table::{
    FlowSlot, OverflowKey, TableLayout, BUCKET_SLOTS, FLOW_OVERFLOW_MAP, FLOW_SLOTS_MAP,
    FLOW_TAGS_MAP, TABLE_LAYOUT_VERSION,
};
use flowlens_common::{FlowKey, FlowStats, TunnelOuter, COUNTERS_MAP, COUNTER_COUNT, TUNNELS_MAP};

use crate::bpf_map::{
    create_map, lookup_entry, map_shape, pin_object, pinned_object, tcx_link_ifindex, update_entry,
    MapShape, BPF_F_MMAPABLE, BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_LRU_HASH,
    BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_PERCPU_HASH,
};
use crate::table::SlotBaseline;

/// One-entry array holding the [`PinnedMeta`] of the table; pinned last, so a directory
/// without it holds no complete table.
pub const META_MAP: &str = "TABLE_META";
/// Array of a [`SlotBaseline`] per slot (memory-mappable).
pub const EXPORTED_MAP: &str = "FLOW_EXPORTED";
/// Hash `OverflowKey` -> `FlowStats`: the overflow counts already exported.
pub const OVERFLOW_EXPORTED_MAP: &str = "OVERFLOW_EXPORTED";
/// Maps of the program object kept in the directory (the programs' other maps are per load).
pub const PROGRAM_MAPS: [&str; 5] = [
    FLOW_TAGS_MAP,
    FLOW_SLOTS_MAP,
    FLOW_OVERFLOW_MAP,
    TUNNELS_MAP,
    COUNTERS_MAP,
];
/// Version of what this module keeps beside the table (the meta record, the baselines);
/// the table's own is `TABLE_LAYOUT_VERSION`. A pinned table of another version of either is
/// discarded.
pub const PIN_FORMAT_VERSION: u32 = 1;
/// `statfs` magic of a bpf filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// What [`META_MAP`] holds. 32 bytes.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PinnedMeta {
    pub layout: TableLayout,
    pub format: u32,
    pub slot_bytes: u32,
    pub key_bytes: u32,
    pub baseline_bytes: u32,
}

impl PinnedMeta {
    /// The record this build writes for `layout`.
    pub fn current(layout: TableLayout) -> Self {
        Self {
            layout,
            format: PIN_FORMAT_VERSION,
            slot_bytes: std::mem::size_of::<FlowSlot>() as u32,
            key_bytes: std::mem::size_of::<FlowKey>() as u32,
            baseline_bytes: std::mem::size_of::<SlotBaseline>() as u32,
        }
    }
}

/// What became of the directory's table at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing was pinned: a new table.
    Created,
    /// A table of this build's layout was pinned: the collector continues it.
    Adopted,
    /// A table was pinned that this build cannot read (the reason): removed, a new table.
    Discarded(String),
}

impl Outcome {
    fn label(&self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Adopted => "adopted",
            Outcome::Discarded(_) => "discarded",
        }
    }
}

/// The pin directory of one collector, locked (`flock`) while it runs: a second collector on
/// the same directory would export the same counts.
#[derive(Debug)]
pub struct PinDir {
    root: PathBuf,
    _lock: std::fs::File,
}

/// The maps a pinned table adds to the programs' (see [`PinDir::table_maps`]).
pub struct TableMaps {
    pub exported: OwnedFd,
    pub overflow_exported: OwnedFd,
}

/// Whether `path` (or, when it does not exist yet, its nearest existing ancestor) is on a bpf
/// filesystem.
pub fn on_bpffs(path: &Path) -> bool {
    let Some(existing) = path.ancestors().find(|p| p.exists()) else {
        return false;
    };
    let Ok(name) = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: `st` is plain data that statfs fills.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out pointer.
    let rc = unsafe { libc::statfs(name.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// What the maps of a table of `buckets` buckets must look like: (name, shape), max_entries 0
/// where any size is fine.
fn expected_maps(buckets: u32) -> [(&'static str, MapShape); 8] {
    let slots = buckets * BUCKET_SLOTS as u32;
    let shape = |map_type, key: usize, value: usize, max_entries| MapShape {
        map_type,
        key_size: key as u32,
        value_size: value as u32,
        max_entries,
    };
    [
        (FLOW_TAGS_MAP, shape(BPF_MAP_TYPE_ARRAY, 4, 64, buckets)),
        (
            FLOW_SLOTS_MAP,
            shape(
                BPF_MAP_TYPE_ARRAY,
                4,
                std::mem::size_of::<FlowSlot>(),
                slots,
            ),
        ),
        (
            FLOW_OVERFLOW_MAP,
            shape(
                BPF_MAP_TYPE_PERCPU_HASH,
                std::mem::size_of::<OverflowKey>(),
                std::mem::size_of::<FlowStats>(),
                0,
            ),
        ),
        (
            TUNNELS_MAP,
            shape(
                BPF_MAP_TYPE_LRU_HASH,
                std::mem::size_of::<FlowKey>(),
                std::mem::size_of::<TunnelOuter>(),
                0,
            ),
        ),
        (
            COUNTERS_MAP,
            shape(BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, COUNTER_COUNT),
        ),
        (
            EXPORTED_MAP,
            shape(
                BPF_MAP_TYPE_ARRAY,
                4,
                std::mem::size_of::<SlotBaseline>(),
                slots,
            ),
        ),
        (
            OVERFLOW_EXPORTED_MAP,
            shape(
                BPF_MAP_TYPE_HASH,
                std::mem::size_of::<OverflowKey>(),
                std::mem::size_of::<FlowStats>(),
                0,
            ),
        ),
        (
            META_MAP,
            shape(BPF_MAP_TYPE_ARRAY, 4, std::mem::size_of::<PinnedMeta>(), 1),
        ),
    ]
}

/// Whether a pinned table can be adopted by a collector wanting `buckets` buckets: `meta` is
/// its [`META_MAP`] record (`None`: not pinned), `found` the shape of each expected map
/// (`None`: not pinned). `Ok(None)`: nothing is pinned; `Ok(Some(layout))`: adopt it;
/// `Err(reason)`: discard it.
pub fn judge(
    meta: Option<PinnedMeta>,
    found: &[(&str, Option<MapShape>)],
    buckets: u32,
) -> Result<Option<TableLayout>, String> {
    let Some(meta) = meta else {
        return match found.iter().find(|(_, s)| s.is_some()) {
            Some((name, _)) => Err(format!(
                "{name} is pinned without a {META_MAP} record (a collector stopped while creating it)"
            )),
            None => Ok(None),
        };
    };
    let ours = PinnedMeta::current(TableLayout {
        buckets,
        ..meta.layout
    });
    if meta.format != ours.format || meta.layout.version != TABLE_LAYOUT_VERSION {
        return Err(format!(
            "pinned by another version (table layout {}, pin format {}; this collector: {}, {})",
            meta.layout.version, meta.format, TABLE_LAYOUT_VERSION, PIN_FORMAT_VERSION
        ));
    }
    if meta != ours {
        return Err(if meta.layout.buckets != buckets {
            format!(
                "collector.table_size changed: the pinned table has {} slots, the configuration asks for {}",
                meta.layout.buckets as usize * BUCKET_SLOTS,
                buckets as usize * BUCKET_SLOTS
            )
        } else {
            format!("pinned record sizes differ: {meta:?}, this collector: {ours:?}")
        });
    }
    for (name, want) in expected_maps(buckets) {
        let got = found.iter().find(|(n, _)| *n == name).and_then(|(_, s)| *s);
        let Some(got) = got else {
            return Err(format!("{name} is not pinned"));
        };
        let fits = got.map_type == want.map_type
            && got.key_size == want.key_size
            && got.value_size == want.value_size
            && (want.max_entries == 0 || got.max_entries == want.max_entries);
        if !fits {
            return Err(format!(
                "{name} is {got:?}, this collector expects {want:?}"
            ));
        }
    }
    Ok(Some(meta.layout))
}

impl PinDir {
    /// The directory `root` (created, on a bpf filesystem), with its `links/` directory.
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        anyhow::ensure!(
            on_bpffs(root),
            "collector.pin_path: {} is not on a bpf filesystem (mount -t bpf bpf /sys/fs/bpf)",
            root.display()
        );
        std::fs::create_dir_all(root.join("links"))
            .with_context(|| format!("collector.pin_path: creating {}", root.display()))?;
        let lock = std::fs::File::open(root)
            .with_context(|| format!("collector.pin_path: opening {}", root.display()))?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            anyhow::bail!(
                "collector.pin_path: {} is in use by another collector ({})",
                root.display(),
                io::Error::last_os_error()
            );
        }
        Ok(Self {
            root: root.into(),
            _lock: lock,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the map `name` is pinned.
    pub fn map_path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Decides what to do with the pinned table for a table of `buckets` buckets: adopt it (its
    /// layout, hash seed included), or remove it and start one laid out as `fresh`. Logs and
    /// counts the outcome.
    pub fn prepare(
        &self,
        buckets: u32,
        fresh: TableLayout,
    ) -> anyhow::Result<(TableLayout, Outcome)> {
        let (layout, outcome) = match self.inspect(buckets) {
            Ok(Some(layout)) => (layout, Outcome::Adopted),
            Ok(None) => (fresh, Outcome::Created),
            Err(reason) => {
                for (name, _) in expected_maps(buckets) {
                    match std::fs::remove_file(self.map_path(name)) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => {
                            return Err(e).with_context(|| {
                                format!("removing {}", self.map_path(name).display())
                            })
                        }
                        _ => {}
                    }
                }
                tracing::warn!(
                    pin_path = %self.root.display(),
                    reason = %reason,
                    "pinned flow table discarded: what it counted since its last export is lost; a new table starts"
                );
                (fresh, Outcome::Discarded(reason))
            }
        };
        if outcome == Outcome::Adopted {
            tracing::info!(
                pin_path = %self.root.display(),
                slots = layout.buckets as usize * BUCKET_SLOTS,
                "pinned flow table adopted: counting went on while no collector ran"
            );
        }
        metrics::counter!("flowlens_collector_pinned_table_total", "outcome" => outcome.label())
            .increment(1);
        Ok((layout, outcome))
    }

    /// The pinned table's layout if it can be adopted (see [`judge`]).
    fn inspect(&self, buckets: u32) -> Result<Option<TableLayout>, String> {
        let mut found = Vec::new();
        for (name, _) in expected_maps(buckets) {
            let shape = match pinned_object(&self.map_path(name)) {
                Ok(fd) => Some(map_shape(fd.as_fd()).map_err(|e| format!("{name}: {e}"))?),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(format!("{name}: {e}")),
            };
            found.push((name, shape));
        }
        let meta = match found.iter().find(|(n, _)| *n == META_MAP) {
            Some((_, Some(shape))) if shape.value_size as usize == size_of::<PinnedMeta>() => {
                let fd = pinned_object(&self.map_path(META_MAP)).map_err(|e| e.to_string())?;
                let mut meta = PinnedMeta::default();
                lookup_entry(fd.as_fd(), &0u32, &mut meta).map_err(|e| e.to_string())?;
                Some(meta)
            }
            Some((_, Some(shape))) => {
                return Err(format!(
                    "{META_MAP} holds {} bytes, this collector writes {}",
                    shape.value_size,
                    size_of::<PinnedMeta>()
                ))
            }
            _ => None,
        };
        judge(meta, &found, buckets)
    }

    /// The export maps of the table laid out as `layout`: the pinned ones when it was adopted,
    /// else new ones, pinned, and then the [`META_MAP`] record that completes the table. Call
    /// after the programs' maps are pinned.
    pub fn table_maps(&self, layout: TableLayout, outcome: &Outcome) -> anyhow::Result<TableMaps> {
        let open = |name: &str| {
            pinned_object(&self.map_path(name))
                .with_context(|| format!("opening {}", self.map_path(name).display()))
        };
        if *outcome == Outcome::Adopted {
            return Ok(TableMaps {
                exported: open(EXPORTED_MAP)?,
                overflow_exported: open(OVERFLOW_EXPORTED_MAP)?,
            });
        }
        let shapes = expected_maps(layout.buckets);
        let shape = |name: &str| shapes.iter().find(|(n, _)| *n == name).map(|(_, s)| *s);
        let create = |name: &str, flags: u32, max_entries: u32| -> anyhow::Result<OwnedFd> {
            let s = shape(name).context("no such map")?;
            let fd = create_map(
                s.map_type,
                s.key_size,
                s.value_size,
                max_entries,
                flags,
                name,
            )
            .with_context(|| format!("creating map {name}"))?;
            pin_object(fd.as_fd(), &self.map_path(name))
                .with_context(|| format!("pinning {}", self.map_path(name).display()))?;
            Ok(fd)
        };
        let slots = layout.buckets * BUCKET_SLOTS as u32;
        let exported = create(EXPORTED_MAP, BPF_F_MMAPABLE, slots)?;
        let overflow_exported = create(OVERFLOW_EXPORTED_MAP, 0, 4096)?;
        let meta = create_map(
            BPF_MAP_TYPE_ARRAY,
            4,
            size_of::<PinnedMeta>() as u32,
            1,
            0,
            META_MAP,
        )
        .context("creating the table's meta map")?;
        update_entry(meta.as_fd(), &0u32, &PinnedMeta::current(layout))
            .context("writing the table's meta record")?;
        pin_object(meta.as_fd(), &self.map_path(META_MAP))
            .with_context(|| format!("pinning {}", self.map_path(META_MAP).display()))?;
        Ok(TableMaps {
            exported,
            overflow_exported,
        })
    }

    /// Where the link of `hook` ("ingress", "egress") on interface `ifindex` is pinned.
    pub fn link_path(&self, ifindex: u32, hook: &str) -> PathBuf {
        self.root.join("links").join(format!("{ifindex}-{hook}"))
    }

    /// Whether the link pinned at `path` is attached to interface `ifindex` (a previous
    /// collector's); a pin of a link whose interface is gone (or another one) is removed.
    pub fn has_link(&self, path: &Path, ifindex: u32) -> anyhow::Result<bool> {
        let fd = match pinned_object(path) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        let target = tcx_link_ifindex(fd.as_fd())
            .with_context(|| format!("reading link {}", path.display()))?;
        if target == Some(ifindex) {
            return Ok(true);
        }
        std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
        Ok(false)
    }

    /// Removes the pinned links not in `keep` (their interfaces are no longer watched): the
    /// programs leave those interfaces.
    pub fn remove_links_except(&self, keep: &BTreeSet<PathBuf>) -> anyhow::Result<()> {
        let dir = self.root.join("links");
        for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
            let path = entry?.path();
            if !keep.contains(&path) {
                tracing::info!(link = %path.display(), "pinned link of an interface no longer watched removed");
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing {}", path.display()))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(buckets: u32) -> TableLayout {
        TableLayout {
            version: TABLE_LAYOUT_VERSION,
            buckets,
            seed: 42,
        }
    }

    fn all_pinned(buckets: u32) -> Vec<(&'static str, Option<MapShape>)> {
        expected_maps(buckets)
            .into_iter()
            .map(|(n, mut s)| {
                if s.max_entries == 0 {
                    s.max_entries = 4096;
                }
                (n, Some(s))
            })
            .collect()
    }

    #[test]
    fn records_are_pinned_in_size() {
        assert_eq!(size_of::<PinnedMeta>(), 32);
        assert_eq!(size_of::<SlotBaseline>(), 32);
    }

    #[test]
    fn nothing_pinned_is_a_new_table() {
        let none: Vec<_> = expected_maps(128).map(|(n, _)| (n, None)).into();
        assert_eq!(judge(None, &none, 128), Ok(None));
    }

    #[test]
    fn the_same_layout_is_adopted_with_its_seed() {
        let meta = PinnedMeta::current(layout(128));
        assert_eq!(
            judge(Some(meta), &all_pinned(128), 128),
            Ok(Some(layout(128)))
        );
    }

    #[test]
    fn another_layout_is_discarded_with_the_reason() {
        // Another table layout version.
        let mut meta = PinnedMeta::current(layout(128));
        meta.layout.version = TABLE_LAYOUT_VERSION + 1;
        let e = judge(Some(meta), &all_pinned(128), 128).unwrap_err();
        assert!(e.contains("another version"), "{e}");
        // Another pin format.
        let mut meta = PinnedMeta::current(layout(128));
        meta.format = PIN_FORMAT_VERSION + 1;
        assert!(judge(Some(meta), &all_pinned(128), 128).is_err());
        // Another slot size under the same version numbers.
        let mut meta = PinnedMeta::current(layout(128));
        meta.slot_bytes += 8;
        let e = judge(Some(meta), &all_pinned(128), 128).unwrap_err();
        assert!(e.contains("sizes differ"), "{e}");
        // Another table size.
        let meta = PinnedMeta::current(layout(128));
        let e = judge(Some(meta), &all_pinned(128), 256).unwrap_err();
        assert!(e.contains("table_size changed"), "{e}");
        // A map whose value is not what this build reads.
        let meta = PinnedMeta::current(layout(128));
        let mut found = all_pinned(128);
        found[1].1.as_mut().unwrap().value_size = 96;
        let e = judge(Some(meta), &found, 128).unwrap_err();
        assert!(e.contains(FLOW_SLOTS_MAP), "{e}");
        // A map missing.
        let mut found = all_pinned(128);
        found[0].1 = None;
        assert!(judge(Some(meta), &found, 128).is_err());
        // Maps without the record a complete table has.
        let e = judge(None, &all_pinned(128), 128).unwrap_err();
        assert!(e.contains(META_MAP), "{e}");
    }
}
