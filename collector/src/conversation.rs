//! Conversations: the two directions of a flow on one interface joined into one record (side A,
//! the initiator, and side B), why a conversation ended, and which conversations repeat packets
//! already counted elsewhere on the host (another interface, or the outer flow of a tunnel).
//!
//! The two directions of a conversation cross a host's own interface in opposite directions
//! (egress and ingress); on a port that receives copies of both (mirror, SPAN, TAP) both arrive
//! as ingress. Either way they are one conversation, and only records of the same ends on
//! *another* interface (or an inner flow and its tunnel's outer flow) are duplicates.
//!
//! Which end is A: the direction whose kernel entry was created while the opposite direction
//! had none on that interface (`FLOW_INITIATOR`, set by the kernel on a flow's first packet).
//! When both or neither carry the mark (both created at once on two CPUs, or one side evicted
//! and re-created), the direction seen first is A; on a tie, the end with the higher port
//! (the ephemeral one) is A. The rule is decided on the kernel's cumulative entries, so it is
//! the same in every interval of a conversation.

use std::collections::HashMap;

use flowlens_common::{FlowKey, FlowStats, FLOW_INITIATOR, TUNNEL_NONE};

/// A hash map with a fast non-cryptographic hasher, randomly seeded per process (keys are
/// kernel flow keys, which remote peers choose in part).
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// An empty [`FastMap`] with room for `n` entries.
pub fn fast_map<K, V>(n: usize) -> FastMap<K, V> {
    HashMap::with_capacity_and_hasher(n, foldhash::fast::RandomState::default())
}

/// TCP flags (low byte of `FlowStats::tcp_flags`).
pub const TCP_FIN: u16 = 0x01;
pub const TCP_RST: u16 = 0x04;

/// Why a conversation's record is its last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ending {
    /// Still live: an interval export.
    #[default]
    Open,
    /// TCP FIN in both directions (or one, then silence).
    Fin,
    /// TCP RST.
    Rst,
    /// No packet for the idle timeout.
    Idle,
    /// The collector stopped and drained the table.
    Shutdown,
}

impl Ending {
    /// The RawFlow `end_reason` text.
    pub fn as_str(self) -> &'static str {
        match self {
            Ending::Open => "",
            Ending::Fin => "fin",
            Ending::Rst => "rst",
            Ending::Idle => "idle",
            Ending::Shutdown => "shutdown",
        }
    }
}

/// One conversation on one interface: the A->B entry and the B->A entry (at least one is set).
/// `a_to_b` keys are oriented A->B, `b_to_a` keys B->A, as in the kernel table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conversation {
    /// The conversation's key oriented A->B: the A->B entry's key, or, when A's direction has
    /// no entry, B->A's key with the ends swapped and the direction A's packets would have
    /// (kept when a delta leaves out the A->B part).
    pub key: FlowKey,
    pub a_to_b: Option<(FlowKey, FlowStats)>,
    pub b_to_a: Option<(FlowKey, FlowStats)>,
}

impl Conversation {
    /// A conversation of one direction (A->B) only.
    pub fn one_way(entry: (FlowKey, FlowStats)) -> Self {
        Conversation {
            key: entry.0,
            a_to_b: Some(entry),
            b_to_a: None,
        }
    }

    /// The conversation's key oriented A->B.
    pub fn key(&self) -> FlowKey {
        self.key
    }

    /// Both directions' keys as they are in the kernel table.
    pub fn keys(&self) -> impl Iterator<Item = FlowKey> + '_ {
        self.a_to_b
            .iter()
            .chain(self.b_to_a.iter())
            .map(|(k, _)| *k)
    }

    fn stats(&self) -> impl Iterator<Item = &FlowStats> {
        self.a_to_b.iter().chain(self.b_to_a.iter()).map(|(_, s)| s)
    }

    /// First packet (either direction).
    pub fn first_seen_ns(&self) -> u64 {
        self.stats().map(|s| s.first_seen_ns).min().unwrap_or(0)
    }

    /// Last packet (either direction).
    pub fn last_seen_ns(&self) -> u64 {
        self.stats().map(|s| s.last_seen_ns).max().unwrap_or(0)
    }

    /// The TCP end seen so far, if any: RST in either direction, or FIN in both (a one-sided
    /// FIN counts once the conversation went quiet, see [`Conversation::ending`]).
    pub fn tcp_end(&self) -> Option<Ending> {
        let flags = |d: &Option<(FlowKey, FlowStats)>| d.map_or(0, |(_, s)| s.tcp_flags);
        let (ab, ba) = (flags(&self.a_to_b), flags(&self.b_to_a));
        if (ab | ba) & TCP_RST != 0 {
            Some(Ending::Rst)
        } else if (ab | ba) & TCP_FIN != 0 {
            Some(Ending::Fin)
        } else {
            None
        }
    }

    /// Whether the conversation (cumulative kernel counters) ends at `now_ns`: TCP closed (RST,
    /// or FIN in both directions) and quiet for `closed_ns`, or quiet for `idle_ns` (then the
    /// reason is FIN/RST if one was seen, else idle).
    pub fn ending(&self, now_ns: u64, idle_ns: u64, closed_ns: u64) -> Ending {
        let quiet = now_ns.saturating_sub(self.last_seen_ns());
        let fin_both = [&self.a_to_b, &self.b_to_a]
            .iter()
            .all(|d| d.is_some_and(|(_, s)| s.tcp_flags & TCP_FIN != 0));
        match self.tcp_end() {
            Some(Ending::Rst) if quiet > closed_ns => Ending::Rst,
            Some(Ending::Fin) if fin_both && quiet > closed_ns => Ending::Fin,
            end if quiet > idle_ns => end.unwrap_or(Ending::Idle),
            _ => Ending::Open,
        }
    }
}

/// The key with ends swapped and direction flipped, for keys without a protocol-level reverse
/// (ICMP errors): used only to orient a lone B->A entry, which cannot happen for them.
fn swapped(k: &FlowKey) -> FlowKey {
    FlowKey {
        src_addr: k.dst_addr,
        dst_addr: k.src_addr,
        src_port: k.dst_port,
        dst_port: k.src_port,
        direction: k.direction ^ 1,
        ..*k
    }
}

impl Conversation {
    /// One table read's entry, joined with the entry of the opposite direction if there is one
    /// (either direction across the interface), oriented by the rule in the module doc.
    pub fn join(x: (FlowKey, FlowStats), reverse: Option<(FlowKey, FlowStats)>) -> Self {
        let (a_to_b, b_to_a) = match reverse {
            Some(y) if is_a(&x, Some(&y)) => (x, Some(y)),
            Some(y) => (y, Some(x)),
            None if is_a(&x, None) => (x, None),
            None => {
                // A lone answer (its opposite direction has no entry): oriented as on a host's
                // own interface, where A's packets cross the other way.
                let key = x.0.reverse().unwrap_or_else(|| swapped(&x.0));
                return Conversation {
                    key,
                    a_to_b: None,
                    b_to_a: Some(x),
                };
            }
        };
        Conversation {
            key: a_to_b.0,
            a_to_b: Some(a_to_b),
            b_to_a,
        }
    }
}

/// Whether `x` is the A->B direction (see the module doc).
fn is_a(x: &(FlowKey, FlowStats), other: Option<&(FlowKey, FlowStats)>) -> bool {
    let x_initiated = x.1.flags & FLOW_INITIATOR != 0;
    let Some(y) = other else {
        // A lone entry created as an answer is B->A; without a reverse type it can only be A.
        return x_initiated || x.0.reverse().is_none();
    };
    let y_initiated = y.1.flags & FLOW_INITIATOR != 0;
    if x_initiated != y_initiated {
        return x_initiated;
    }
    if x.1.first_seen_ns != y.1.first_seen_ns {
        return x.1.first_seen_ns < y.1.first_seen_ns;
    }
    if x.0.src_port != y.0.src_port {
        return x.0.src_port > y.0.src_port;
    }
    x.0.src_addr <= y.0.src_addr
}

/// Marks which records of one scan only repeat packets counted by another record of the host:
/// every inner (tunnel) conversation, and, of the ends seen on several interfaces, the records
/// of every interface but one (the interface kept is the one whose conversation exported
/// records before, then the one of the record seen first, then the lowest interface index).
/// Records of the same ends on one interface never mark each other: they count different
/// packets (the two directions of a conversation on a mirror port, VLANs, ICMP errors each
/// way). Overflow records (`FlowKey::overflow`: packets of flows without a
/// slot, no ends to compare) are duplicates only as tunnels' inner packets. Returns one flag per
/// conversation.
pub fn duplicates<'a>(
    conversations: impl ExactSizeIterator<Item = &'a Conversation> + Clone,
) -> Vec<bool> {
    let rule = Duplicates::of(conversations.clone());
    conversations.map(|c| rule.is_duplicate(c)).collect()
}

/// The rule of [`duplicates`] decided over all of a scan's conversations, then asked one
/// conversation at a time (records are made a chunk at a time).
#[derive(Debug, Default)]
pub struct Duplicates {
    /// Per set of ends: the interface kept, by (nothing exported before, first packet,
    /// interface index); `None` when every conversation is on one interface (nothing repeats
    /// another interface's records: only tunnels' inner flows are duplicates; also
    /// `Duplicates::default()`).
    kept: Option<FastMap<Ends, (bool, u64, u32)>>,
}

impl Duplicates {
    pub fn of<C: std::borrow::Borrow<Conversation>>(
        conversations: impl Iterator<Item = C> + Clone,
    ) -> Self {
        Self::ranked(conversations.map(|c| (c, false)))
    }

    /// [`Duplicates::of`] over every live conversation (whether or not it has anything new in
    /// this scan), each with whether it exported records before: the ends' interface whose
    /// records were exported before keeps being counted. A scan is not a snapshot (a
    /// conversation created while it runs may be read on one interface and not yet on the
    /// other): the next scan must not count again, on the other interface, packets the first
    /// one counted.
    pub fn ranked<C: std::borrow::Borrow<Conversation>>(
        conversations: impl Iterator<Item = (C, bool)> + Clone,
    ) -> Self {
        let mut interfaces = conversations.clone().map(|c| c.0.borrow().key().ifindex);
        let first = interfaces.next();
        if interfaces.all(|i| Some(i) == first) {
            return Self { kept: None };
        }
        let mut kept: FastMap<Ends, (bool, u64, u32)> = fast_map(conversations.size_hint().0);
        for (c, exported) in conversations {
            let c = c.borrow();
            let key = c.key();
            if key.tunnel == TUNNEL_NONE && !key.is_overflow() {
                let rank = (!exported, c.first_seen_ns(), key.ifindex);
                kept.entry(Ends::of(&key))
                    .and_modify(|r| *r = (*r).min(rank))
                    .or_insert(rank);
            }
        }
        Self { kept: Some(kept) }
    }

    /// Whether `c`'s record only repeats packets another record of the scan counts.
    pub fn is_duplicate(&self, c: &Conversation) -> bool {
        let key = c.key();
        if key.tunnel != TUNNEL_NONE {
            return true;
        }
        match &self.kept {
            Some(kept) if !key.is_overflow() => kept
                .get(&Ends::of(&key))
                .is_some_and(|r| r.2 != key.ifindex),
            _ => false,
        }
    }
}

/// A conversation's identity regardless of interface, direction, VLAN and orientation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Ends {
    low: ([u8; 16], u16),
    high: ([u8; 16], u16),
    proto: u8,
    icmp: (u8, u8),
}

impl Ends {
    fn of(k: &FlowKey) -> Self {
        let a = (k.src_addr, k.src_port);
        let b = (k.dst_addr, k.dst_port);
        let (low, high) = if a <= b { (a, b) } else { (b, a) };
        // Echo request and reply are one conversation: keep the request's type.
        let icmp_type = match (k.proto, k.icmp_type) {
            (1, 0) => 8,
            (58, 129) => 128,
            (_, t) => t,
        };
        Ends {
            low,
            high,
            proto: k.proto,
            icmp: (icmp_type, k.icmp_code),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use flowlens_common::{DIRECTION_EGRESS, DIRECTION_INGRESS, TUNNEL_VXLAN};

    /// A TCP key on interface 2 between addresses made of one repeated byte.
    pub(crate) fn key(src: u8, sport: u16, dst: u8, dport: u16, direction: u8) -> FlowKey {
        FlowKey {
            src_addr: [src; 16],
            dst_addr: [dst; 16],
            src_port: sport,
            dst_port: dport,
            proto: 6,
            direction,
            ifindex: 2,
            ..Default::default()
        }
    }

    fn stats(first: u64, last: u64, flags: u8, tcp: u16) -> FlowStats {
        FlowStats {
            packets: 1,
            bytes: 60,
            first_seen_ns: first,
            last_seen_ns: last,
            tcp_flags: tcp,
            flags,
            _pad: [0; 5],
        }
    }

    #[test]
    fn initiator_mark_decides_a_even_when_answer_listed_first() {
        let client = (
            key(1, 40000, 2, 80, DIRECTION_EGRESS),
            stats(10, 20, FLOW_INITIATOR, 0x12),
        );
        let server = (
            key(2, 80, 1, 40000, DIRECTION_INGRESS),
            stats(5, 30, 0, 0x12),
        );
        let c = Conversation::join(server, Some(client));
        assert_eq!(c.a_to_b, Some(client));
        assert_eq!(c.b_to_a, Some(server));
        assert_eq!(c.key(), client.0);
        assert_eq!((c.first_seen_ns(), c.last_seen_ns()), (5, 30));
    }

    #[test]
    fn lone_answer_is_b_to_a_and_ties_go_to_first_seen_then_high_port() {
        let answer = (
            key(2, 80, 1, 40000, DIRECTION_INGRESS),
            stats(5, 30, 0, 0x10),
        );
        let c = Conversation::join(answer, None);
        assert_eq!((c.a_to_b, c.b_to_a), (None, Some(answer)));
        assert_eq!(c.key(), key(1, 40000, 2, 80, DIRECTION_EGRESS));

        let x = (key(1, 40000, 2, 80, DIRECTION_EGRESS), stats(7, 9, 0, 0));
        let y = (key(2, 80, 1, 40000, DIRECTION_INGRESS), stats(7, 9, 0, 0));
        assert_eq!(Conversation::join(y, Some(x)).a_to_b, Some(x));
        let earlier_y = (y.0, stats(6, 9, 0, 0));
        assert_eq!(
            Conversation::join(x, Some(earlier_y)).a_to_b,
            Some(earlier_y)
        );
    }

    #[test]
    fn endings() {
        let open = |tcp_a: u16, tcp_b: u16| {
            Conversation::join(
                (key(1, 4, 2, 80, 1), stats(0, 100, 1, tcp_a)),
                Some((key(2, 80, 1, 4, 0), stats(0, 100, 0, tcp_b))),
            )
        };
        let (idle, closed) = (1000, 10);
        assert_eq!(open(0x10, 0x10).ending(105, idle, closed), Ending::Open);
        assert_eq!(open(0x10, 0x10).ending(1101, idle, closed), Ending::Idle);
        assert_eq!(open(0x11, 0x11).ending(105, idle, closed), Ending::Open);
        assert_eq!(open(0x11, 0x11).ending(111, idle, closed), Ending::Fin);
        assert_eq!(open(0x11, 0x10).ending(111, idle, closed), Ending::Open);
        assert_eq!(open(0x11, 0x10).ending(1101, idle, closed), Ending::Fin);
        assert_eq!(open(0x14, 0x10).ending(111, idle, closed), Ending::Rst);
    }

    #[test]
    fn same_packets_on_two_interfaces_and_tunnels_are_duplicates() {
        let on = |ifindex: u32, first: u64| {
            Conversation::one_way((
                FlowKey {
                    ifindex,
                    ..key(1, 4, 2, 80, 0)
                },
                stats(first, 100, 1, 0),
            ))
        };
        let tunnel = Conversation::one_way((
            FlowKey {
                tunnel: TUNNEL_VXLAN,
                tunnel_id: 42,
                ..key(1, 4, 2, 80, 0)
            },
            stats(1, 100, 1, 0),
        ));
        let other = Conversation::one_way((key(3, 4, 2, 80, 0), stats(1, 100, 1, 0)));
        let flags = duplicates([on(7, 20), on(3, 10), tunnel, on(5, 10), other].iter());
        assert_eq!(flags, vec![true, false, true, true, false]);
    }

    #[test]
    fn both_directions_ingress_on_a_mirror_port_are_one_conversation() {
        // A DNS query and its answer, both arriving as ingress (a mirror/SPAN/TAP port).
        let query = (
            FlowKey {
                proto: 17,
                ..key(1, 40000, 2, 53, DIRECTION_INGRESS)
            },
            stats(10, 10, FLOW_INITIATOR, 0),
        );
        let answer = (
            FlowKey {
                proto: 17,
                ..key(2, 53, 1, 40000, DIRECTION_INGRESS)
            },
            stats(12, 12, 0, 0),
        );
        assert_eq!(query.0.answer(DIRECTION_INGRESS), Some(answer.0));
        let c = Conversation::join(answer, Some(query));
        assert_eq!((c.a_to_b, c.b_to_a), (Some(query), Some(answer)));
        assert_eq!(c.key().direction, DIRECTION_INGRESS, "A's packets: ingress");
        // Delta with only the answer's direction keeps A's orientation and direction.
        let delta = Conversation { a_to_b: None, ..c };
        assert_eq!(delta.key(), query.0);
        assert_eq!(duplicates([c].iter()), vec![false]);
    }

    #[test]
    fn records_of_the_same_ends_on_one_interface_are_never_duplicates() {
        // The same ends on one interface in two VLANs, and as two one-way records (ICMP errors
        // have no answer type): different packets, all counted. A third record on interface 9
        // repeats them.
        let vlan = |vlan_id: u16, first: u64| {
            Conversation::one_way((
                FlowKey {
                    vlan_id,
                    ..key(1, 4, 2, 80, DIRECTION_INGRESS)
                },
                stats(first, 100, FLOW_INITIATOR, 0),
            ))
        };
        let unreachable = |src: u8, dst: u8, ifindex: u32| {
            Conversation::one_way((
                FlowKey {
                    proto: 1,
                    icmp_type: 3,
                    icmp_code: 1,
                    src_port: 0,
                    dst_port: 0,
                    ifindex,
                    ..key(src, 0, dst, 0, DIRECTION_INGRESS)
                },
                stats(5, 5, FLOW_INITIATOR, 0),
            ))
        };
        let elsewhere = Conversation::one_way((
            FlowKey {
                ifindex: 9,
                ..key(1, 4, 2, 80, DIRECTION_EGRESS)
            },
            stats(30, 100, FLOW_INITIATOR, 0),
        ));
        let all = [
            vlan(10, 20),
            vlan(20, 25),
            elsewhere,
            unreachable(1, 2, 2),
            unreachable(2, 1, 2),
        ];
        assert_eq!(
            duplicates(all.iter()),
            vec![false, false, true, false, false]
        );
    }
}
