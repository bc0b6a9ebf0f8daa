//! Per-address history: who held each IP address from when until when, bounded per address,
//! over all addresses and in time. A flow is attributed to the holder of its address *at the
//! flow's time*, so an address reused by another pod does not rewrite the past.

use std::collections::VecDeque;
use std::net::Ipv6Addr;
use std::sync::Arc;

use super::peer::Peer;

/// Open end of an interval: the holder still holds the address.
pub const OPEN: i64 = i64::MAX;

/// Who held an address from `from` (inclusive) until `until` (exclusive, [`OPEN`] if still).
#[derive(Debug, Clone)]
pub struct Assignment {
    pub from: i64,
    pub until: i64,
    pub holder: Holder,
    pub peer: Arc<Peer>,
}

/// The object behind an assignment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Holder {
    /// Pod UID.
    Pod(String),
    /// Node name.
    Node(String),
    /// namespace/name.
    Service(String),
    /// namespace/name of the EndpointSlice.
    Slice(String),
}

/// Bounds of the history.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Assignments kept per address (the open one and the most recent closed ones).
    pub per_ip: usize,
    /// Closed assignments kept over all addresses; the oldest-ended go first.
    pub max_closed: usize,
    /// Closed assignments that ended longer ago than this are dropped (ns).
    pub retention_ns: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_ip: 8,
            max_closed: 100_000,
            retention_ns: 3_600 * 1_000_000_000,
        }
    }
}

/// The assignments of every address, oldest first per address.
#[derive(Debug)]
pub struct History {
    limits: Limits,
    ips: foldhash::HashMap<Ipv6Addr, VecDeque<Assignment>>,
    closed: usize,
    /// No closed assignment ended before this (a lower bound: sweeps recompute it).
    oldest_closed: i64,
    evicted: u64,
}

impl Default for History {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl History {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            ips: Default::default(),
            closed: 0,
            oldest_closed: OPEN,
            evicted: 0,
        }
    }

    /// Who held `addr` at `time` (ns): among the assignments whose interval contains `time`,
    /// the one that started last (a new holder wins over one whose end was not seen yet).
    pub fn lookup(&self, addr: &Ipv6Addr, time: i64) -> Option<&Arc<Peer>> {
        let history = self.ips.get(addr)?;
        let mut best: Option<&Assignment> = None;
        for a in history {
            if a.from <= time && time < a.until && best.is_none_or(|b| a.from >= b.from) {
                best = Some(a);
            }
        }
        best.map(|a| &a.peer)
    }

    /// The assignments of one address (oldest first).
    pub fn of(&self, addr: &Ipv6Addr) -> Vec<Assignment> {
        self.ips
            .get(addr)
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Addresses with at least one assignment.
    pub fn addresses(&self) -> usize {
        self.ips.len()
    }

    /// Assignments still open.
    pub fn open_count(&self) -> usize {
        let total: usize = self.ips.values().map(VecDeque::len).sum();
        total - self.closed
    }

    /// Assignments that ended and are still kept.
    pub fn closed_count(&self) -> usize {
        self.closed
    }

    /// Closed assignments dropped by the bounds since the start.
    pub fn evicted_total(&self) -> u64 {
        self.evicted
    }

    /// Moves `holder` from addresses `old` to `new`: closes the ones it left, opens (or
    /// refreshes) the ones it holds.
    pub fn reassign(
        &mut self,
        holder: &Holder,
        old: Vec<Ipv6Addr>,
        new: &[Ipv6Addr],
        from: Option<i64>,
        peer: Arc<Peer>,
        now: i64,
    ) {
        let left: Vec<Ipv6Addr> = old.into_iter().filter(|ip| !new.contains(ip)).collect();
        self.close_all(holder, &left, now);
        for ip in new {
            self.open(*ip, holder, from, peer.clone(), now);
        }
    }

    fn open(
        &mut self,
        ip: Ipv6Addr,
        holder: &Holder,
        from: Option<i64>,
        peer: Arc<Peer>,
        now: i64,
    ) {
        let history = self.ips.entry(ip).or_default();
        if let Some(a) = history
            .iter_mut()
            .find(|a| a.holder == *holder && a.until == OPEN)
        {
            a.peer = peer;
            return;
        }
        // Start: the object's own start time, never later than now (clock skew). Unknown: the
        // beginning of time for an address nobody else held, else first seen (now).
        let from = match from {
            Some(t) => t.min(now),
            None if history.is_empty() => i64::MIN,
            None => now,
        };
        // An address has one holder at a time: another open holder that started earlier left
        // when this one started (its end may not have been seen yet, e.g. a missed delete).
        for a in history.iter_mut() {
            if a.until == OPEN && a.from < from {
                a.until = from;
                self.closed += 1;
                self.oldest_closed = self.oldest_closed.min(from);
            }
        }
        let at = history.partition_point(|a| a.from <= from);
        history.insert(
            at,
            Assignment {
                from,
                until: OPEN,
                holder: holder.clone(),
                peer,
            },
        );
        // Per-address bound: drop the oldest closed entries.
        while history.len() > self.limits.per_ip {
            let Some(i) = history
                .iter()
                .enumerate()
                .filter(|(_, a)| a.until != OPEN)
                .min_by_key(|(_, a)| a.until)
                .map(|(i, _)| i)
            else {
                break;
            };
            history.remove(i);
            self.closed -= 1;
            self.evicted += 1;
        }
    }

    /// Ends at `now` the open assignments of `holder` on `ips`.
    pub fn close_all(&mut self, holder: &Holder, ips: &[Ipv6Addr], now: i64) {
        for ip in ips {
            if let Some(history) = self.ips.get_mut(ip) {
                for a in history.iter_mut() {
                    if a.holder == *holder && a.until == OPEN {
                        a.until = now.max(a.from.saturating_add(1));
                        self.closed += 1;
                        self.oldest_closed = self.oldest_closed.min(a.until);
                    }
                }
            }
        }
    }

    /// The open assignments of `holder` on `ips` take `peer` (its metadata changed).
    pub fn update_open(&mut self, holder: &Holder, ips: &[Ipv6Addr], peer: &Arc<Peer>) {
        for ip in ips {
            if let Some(history) = self.ips.get_mut(ip) {
                for a in history.iter_mut() {
                    if a.holder == *holder && a.until == OPEN && *a.peer != **peer {
                        a.peer = peer.clone();
                    }
                }
            }
        }
    }

    /// Drops closed history past the retention, then the oldest-ended beyond `max_closed`.
    pub fn trim(&mut self, now: i64) {
        let horizon = now.saturating_sub(self.limits.retention_ns);
        let over = self.closed.saturating_sub(self.limits.max_closed);
        if over == 0 && self.oldest_closed >= horizon {
            return;
        }
        // Cut-off: everything that ended before `cut` goes.
        let mut cut = horizon;
        if over > 0 {
            let mut ends: Vec<i64> = self.closed_ends().collect();
            ends.sort_unstable();
            // Remove a tenth more than needed so the sweep does not run on every change.
            let n = (over + self.limits.max_closed / 10).min(ends.len());
            if n > 0 {
                cut = cut.max(ends[n - 1].saturating_add(1));
            }
        }
        let mut removed = 0usize;
        self.ips.retain(|_, history| {
            history.retain(|a| {
                let drop = a.until != OPEN && a.until < cut;
                removed += usize::from(drop);
                !drop
            });
            !history.is_empty()
        });
        self.closed -= removed;
        self.evicted += removed as u64;
        self.oldest_closed = self.closed_ends().min().unwrap_or(OPEN);
    }

    /// End times of every closed assignment.
    fn closed_ends(&self) -> impl Iterator<Item = i64> + '_ {
        self.ips
            .values()
            .flat_map(|h| h.iter())
            .filter(|a| a.until != OPEN)
            .map(|a| a.until)
    }
}
