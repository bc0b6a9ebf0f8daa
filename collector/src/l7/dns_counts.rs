//! DNS counts per conversation: queries, responses by code, each response timed from the query
//! of the same conversation with its transaction id, the last query's name and type.

use std::collections::HashMap;

use flowlens_common::FlowKey;
use flowlens_schemas::Dns;

use super::dns::{Message, RCODE_NOERROR, RCODE_NXDOMAIN, RCODE_REFUSED, RCODE_SERVFAIL};
use super::ledger::{destination, source, Conversation, Latencies, Ledger};
use crate::sockets::Endpoint;

/// Queries waiting for their response, at most (more are counted, not timed).
pub const MAX_PENDING: usize = 65_536;

/// What a call to [`DnsCounts::expire`] found since the last one (for the metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Conversations whose counts no record took within the idle timeout.
    pub unclaimed: u64,
    /// Queries whose response did not come within the idle timeout.
    pub unanswered: u64,
    /// Queries not timed because [`MAX_PENDING`] were waiting.
    pub untimed: u64,
}

/// The DNS counts of every conversation since its last record.
#[derive(Default)]
pub struct DnsCounts {
    ledger: Ledger<Dns>,
    /// Query time by (conversation, the querier's end, transaction id).
    pending: HashMap<(Conversation, Endpoint, u16), u64>,
    untimed: u64,
}

impl DnsCounts {
    /// Counts message `m`, carried by a packet of flow `key` at `ktime_ns` (CLOCK_MONOTONIC).
    pub fn add(&mut self, key: &FlowKey, ktime_ns: u64, m: &Message) {
        let conversation = Conversation::of(key);
        let dns = self.ledger.counts(conversation, ktime_ns);
        if !m.response {
            dns.queries += 1;
            dns.last_query = m.name.clone();
            dns.last_query_type = m.qtype as i32;
            let waiting = (conversation, source(key), m.id);
            // A query sent again with the same id is timed from its last copy (what dig does).
            if self.pending.len() < MAX_PENDING || self.pending.contains_key(&waiting) {
                self.pending.insert(waiting, ktime_ns);
            } else {
                self.untimed += 1;
            }
            return;
        }
        dns.responses += 1;
        match m.rcode {
            RCODE_NOERROR => dns.noerror += 1,
            RCODE_NXDOMAIN => dns.nxdomain += 1,
            RCODE_SERVFAIL => dns.servfail += 1,
            RCODE_REFUSED => dns.refused += 1,
            _ => dns.other_rcode += 1,
        }
        if let Some(asked) = self.pending.remove(&(conversation, destination(key), m.id)) {
            Latencies {
                answered: &mut dns.answered,
                sum_ns: &mut dns.latency_sum_ns,
                max_ns: &mut dns.latency_max_ns,
                list_us: &mut dns.latencies_us,
            }
            .add(ktime_ns.saturating_sub(asked));
        }
    }

    /// The counts of the conversation of flow `key` since its last record (taken).
    pub fn take(&mut self, key: &FlowKey) -> Option<Dns> {
        self.ledger.take(key)
    }

    /// Forgets counts and queries older than `idle_ns` at `now_ns`.
    pub fn expire(&mut self, now_ns: u64, idle_ns: u64) -> Outcome {
        let waiting = self.pending.len();
        self.pending
            .retain(|_, asked| now_ns.saturating_sub(*asked) < idle_ns);
        Outcome {
            unclaimed: self.ledger.expire(now_ns, idle_ns),
            unanswered: (waiting - self.pending.len()) as u64,
            untimed: std::mem::take(&mut self.untimed),
        }
    }

    /// Queries waiting for their response.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn key(src: u8, sport: u16, dst: u8, dport: u16, proto: u8) -> FlowKey {
        let mut k = FlowKey::default();
        k.src_addr[15] = src;
        k.dst_addr[15] = dst;
        k.src_port = sport;
        k.dst_port = dport;
        k.proto = proto;
        k.ifindex = 3;
        k
    }

    fn msg(id: u16, response: bool, rcode: u8) -> Message {
        Message {
            id,
            response,
            rcode,
            name: Some("a.example".into()),
            qtype: 28,
        }
    }

    #[test]
    fn response_is_timed_from_its_query() {
        let mut l = DnsCounts::default();
        let q = key(1, 40000, 2, 53, 17);
        let r = key(2, 53, 1, 40000, 17);
        l.add(&q, 1_000_000, &msg(7, false, 0));
        l.add(&q, 2_000_000, &msg(8, false, 0));
        l.add(&r, 5_000_000, &msg(7, true, RCODE_NXDOMAIN));
        l.add(&r, 6_000_000, &msg(9, true, RCODE_SERVFAIL)); // no such query
        let d = l.take(&r).unwrap();
        assert_eq!(
            (d.queries, d.responses, d.nxdomain, d.servfail),
            (2, 2, 1, 1)
        );
        assert_eq!(
            (d.answered, d.latency_sum_ns, d.latency_max_ns),
            (1, 4_000_000, 4_000_000)
        );
        assert_eq!(d.latencies_us, vec![4_000]);
        assert_eq!(
            (d.last_query.as_deref(), d.last_query_type),
            (Some("a.example"), 28)
        );
        assert!(l.take(&q).is_none());
        assert_eq!(l.pending(), 1);
        let o = l.expire(100_000_000_000, 15_000_000_000);
        assert_eq!((o.unclaimed, o.unanswered), (0, 1));
    }

    #[test]
    fn other_interfaces_and_conversations_are_apart() {
        let mut l = DnsCounts::default();
        let q = key(1, 40000, 2, 53, 17);
        let mut elsewhere = q;
        elsewhere.ifindex = 4;
        l.add(&q, 1, &msg(1, false, 0));
        l.add(&elsewhere, 1, &msg(1, false, 0));
        l.add(&key(1, 40001, 2, 53, 17), 1, &msg(1, false, 0));
        assert_eq!(l.take(&q).unwrap().queries, 1);
        assert_eq!(l.expire(2, 10).unclaimed, 0);
        assert_eq!(l.expire(100, 10).unclaimed, 2);
    }
}
