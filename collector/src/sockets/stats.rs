//! The socket maps read every scan: the kernel's cumulative counters turned into what each
//! conversation added since the previous scan, waiting to be claimed by a record (or becoming a
//! drop-only record); socket owners by local end; idle entries taken out of the kernel maps.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use aya::Pod;
use flowlens_common::sockets::{
    DropKey, DropStats, SockKey, SockOwner, TcpConnStats, SOCK_COUNTER_COUNT, SOCK_COUNTER_DROPS,
    SOCK_COUNTER_DROPS_FILTERED, SOCK_COUNTER_DROPS_UNPARSED, SOCK_COUNTER_MAP_FAILED,
    SOCK_COUNTER_OWNER_WRITES, SOCK_COUNTER_READ_FAILED, SOCK_COUNTER_RETRANSMITS,
    SOCK_COUNTER_RTT_SAMPLES,
};

use super::{ConnExtras, Endpoint, Feature, ProcessInfo, SocketProbes};
use crate::bpf_map::{delete_entry, for_each_entry, take_entry};
use crate::clock::monotonic_now_ns;

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
    /// Some of the drops happened in the collector's network namespace.
    watched: bool,
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
    /// Reads the maps of `probes`; entries idle longer than `idle_timeout` leave the kernel maps
    /// (socket owners after `max(idle_timeout, 60 s)`: a quiet socket keeps its owner).
    pub fn new(probes: SocketProbes, idle_timeout: Duration) -> Self {
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
        let now = monotonic_now_ns();
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
                p.watched |= key.watched != 0;
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
                ("drops_filtered", SOCK_COUNTER_DROPS_FILTERED),
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
        let (a, b) = Endpoint::ends((key.src_addr, key.src_port), (key.dst_addr, key.dst_port));
        self.pending
            .entry(conversation(key.proto, &a, &b))
            .or_insert_with(|| Pending {
                a,
                b,
                extras: ConnExtras::default(),
                rtt_at: 0,
                drop_at: 0,
                watched: false,
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
    /// drop-only records), but only those with a drop in the collector's network namespace:
    /// drops elsewhere of packets no watched interface saw in this interval are not this
    /// collector's to report (they leave, counted in
    /// `flowlens_collector_socket_drops_elsewhere_total`). Extras without drops stay pending
    /// for a later record of their conversation (a closing TCP conversation's last record is
    /// held back for a while) unless their last sample is older than `keep_ns`.
    pub fn unclaimed_drops(&mut self, keep_ns: u64) -> Vec<(u8, Endpoint, Endpoint, ConnExtras)> {
        let now = monotonic_now_ns();
        let mut out = Vec::new();
        let mut elsewhere = 0;
        self.pending.retain(|(proto, _, _), p| {
            if p.extras.drops > 0 {
                if p.watched {
                    out.push((*proto, p.a, p.b, std::mem::take(&mut p.extras)));
                } else {
                    elsewhere += p.extras.drops;
                }
                return false;
            }
            p.rtt_at.max(p.drop_at).saturating_add(keep_ns) >= now
        });
        metrics::counter!("flowlens_collector_socket_drops_elsewhere_total").increment(elsewhere);
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
    fn conversation_is_orientation_free() {
        let a = Endpoint::new("10.0.0.1".parse().unwrap(), 1000);
        let b = Endpoint::new("10.0.0.2".parse().unwrap(), 80);
        assert_eq!(conversation(6, &a, &b), conversation(6, &b, &a));
        assert_ne!(conversation(6, &a, &b), conversation(17, &a, &b));
        assert_eq!(a.addr[10..12], [0xff, 0xff]);
    }
}
