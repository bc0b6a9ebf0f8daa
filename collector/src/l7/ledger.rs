//! Counts per conversation for the L7 parsers: what each message adds to its conversation (on
//! its interface), kept until the conversation's record takes it or it is older than the idle
//! timeout; and the latency fields both protocols share.

use std::collections::HashMap;

use flowlens_common::FlowKey;

use crate::sockets::Endpoint;

/// Latencies a record lists, at most (its `answered` and sums count them all).
pub const MAX_LATENCIES: usize = 64;

/// A conversation on one interface, either way round: ends in address order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Conversation {
    ifindex: u32,
    proto: u8,
    ends: (Endpoint, Endpoint),
}

impl Conversation {
    pub fn of(key: &FlowKey) -> Self {
        let (a, b) = Endpoint::ends((key.src_addr, key.src_port), (key.dst_addr, key.dst_port));
        Self {
            ifindex: key.ifindex,
            proto: key.proto,
            ends: if a <= b { (a, b) } else { (b, a) },
        }
    }
}

/// The source end of flow `key`.
pub fn source(key: &FlowKey) -> Endpoint {
    Endpoint {
        addr: key.src_addr,
        port: key.src_port,
    }
}

/// The destination end of flow `key`.
pub fn destination(key: &FlowKey) -> Endpoint {
    Endpoint {
        addr: key.dst_addr,
        port: key.dst_port,
    }
}

/// Counts not yet taken by a record, with the time of their last message.
struct Open<T> {
    counts: T,
    last_ns: u64,
}

/// The counts `T` of every conversation since its last record.
pub struct Ledger<T> {
    open: HashMap<Conversation, Open<T>>,
}

impl<T: Default> Default for Ledger<T> {
    fn default() -> Self {
        Self {
            open: HashMap::new(),
        }
    }
}

impl<T: Default> Ledger<T> {
    /// The counts of `conversation`, which has a message at `ktime_ns`.
    pub fn counts(&mut self, conversation: Conversation, ktime_ns: u64) -> &mut T {
        let open = self.open.entry(conversation).or_insert_with(|| Open {
            counts: T::default(),
            last_ns: ktime_ns,
        });
        open.last_ns = open.last_ns.max(ktime_ns);
        &mut open.counts
    }

    /// The counts of the conversation of flow `key` since its last record (taken).
    pub fn take(&mut self, key: &FlowKey) -> Option<T> {
        if self.open.is_empty() {
            return None;
        }
        self.open.remove(&Conversation::of(key)).map(|o| o.counts)
    }

    /// Forgets counts with no message for `idle_ns` at `now_ns`; returns how many
    /// conversations' counts were forgotten.
    pub fn expire(&mut self, now_ns: u64, idle_ns: u64) -> u64 {
        let before = self.open.len();
        self.open
            .retain(|_, o| now_ns.saturating_sub(o.last_ns) < idle_ns);
        (before - self.open.len()) as u64
    }
}

/// The latency fields of a record (DNS's and HTTP's are the same four).
pub struct Latencies<'a> {
    pub answered: &'a mut i64,
    pub sum_ns: &'a mut i64,
    pub max_ns: &'a mut i64,
    pub list_us: &'a mut Vec<i64>,
}

impl Latencies<'_> {
    /// Adds one answer that took `ns`.
    pub fn add(self, ns: u64) {
        *self.answered += 1;
        *self.sum_ns += ns as i64;
        *self.max_ns = (*self.max_ns).max(ns as i64);
        if self.list_us.len() < MAX_LATENCIES {
            self.list_us.push((ns / 1_000) as i64);
        }
    }
}
