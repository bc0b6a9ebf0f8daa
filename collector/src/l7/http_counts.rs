//! HTTP/1.x counts per conversation: requests, final responses by status class, each response
//! timed from the oldest unanswered request of its conversation (HTTP/1.x answers in order), the
//! last request's method and path and the last status.

use std::collections::{HashMap, VecDeque};

use flowlens_common::FlowKey;
use flowlens_schemas::Http;

use super::http::Message;
use super::ledger::{destination, source, Conversation, Latencies, Ledger};
use crate::sockets::Endpoint;

/// Requests of one conversation waiting for their response, at most (more are counted, not
/// timed).
pub const MAX_PENDING: usize = 64;

/// What a call to [`HttpCounts::expire`] found since the last one (for the metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Conversations whose counts no record took within the idle timeout.
    pub unclaimed: u64,
    /// Requests whose response did not come within the idle timeout.
    pub unanswered: u64,
    /// Requests not timed because [`MAX_PENDING`] of their conversation were waiting.
    pub untimed: u64,
}

/// The HTTP counts of every conversation since its last record.
#[derive(Default)]
pub struct HttpCounts {
    ledger: Ledger<Http>,
    /// Request times, oldest first, by (conversation, the client's end).
    pending: HashMap<(Conversation, Endpoint), VecDeque<u64>>,
    untimed: u64,
}

impl HttpCounts {
    /// Counts message `m`, carried by a packet of flow `key` at `ktime_ns` (CLOCK_MONOTONIC).
    pub fn add(&mut self, key: &FlowKey, ktime_ns: u64, m: &Message) {
        let conversation = Conversation::of(key);
        match m {
            Message::Request { method, path } => {
                let http = self.ledger.counts(conversation, ktime_ns);
                http.requests += 1;
                http.last_method = Some((*method).to_string());
                http.last_path = Some(path.clone());
                let waiting = self.pending.entry((conversation, source(key))).or_default();
                if waiting.len() < MAX_PENDING {
                    waiting.push_back(ktime_ns);
                } else {
                    self.untimed += 1;
                }
            }
            // Interim responses (100 Continue, 103 Early Hints) precede the final one.
            Message::Response { status } if *status < 200 => {}
            Message::Response { status } => {
                let http = self.ledger.counts(conversation, ktime_ns);
                http.responses += 1;
                http.last_status = i32::from(*status);
                match status / 100 {
                    2 => http.status_2xx += 1,
                    3 => http.status_3xx += 1,
                    4 => http.status_4xx += 1,
                    5 => http.status_5xx += 1,
                    _ => http.status_other += 1,
                }
                let client = (conversation, destination(key));
                if let Some(asked) = self.pending.get_mut(&client).and_then(VecDeque::pop_front) {
                    Latencies {
                        answered: &mut http.answered,
                        sum_ns: &mut http.latency_sum_ns,
                        max_ns: &mut http.latency_max_ns,
                        list_us: &mut http.latencies_us,
                    }
                    .add(ktime_ns.saturating_sub(asked));
                }
            }
        }
    }

    /// The counts of the conversation of flow `key` since its last record (taken).
    pub fn take(&mut self, key: &FlowKey) -> Option<Http> {
        self.ledger.take(key)
    }

    /// Forgets counts and requests older than `idle_ns` at `now_ns`.
    pub fn expire(&mut self, now_ns: u64, idle_ns: u64) -> Outcome {
        let mut unanswered = 0;
        self.pending.retain(|_, waiting| {
            while waiting
                .front()
                .is_some_and(|asked| now_ns.saturating_sub(*asked) >= idle_ns)
            {
                waiting.pop_front();
                unanswered += 1;
            }
            !waiting.is_empty()
        });
        Outcome {
            unclaimed: self.ledger.expire(now_ns, idle_ns),
            unanswered,
            untimed: std::mem::take(&mut self.untimed),
        }
    }

    /// Requests waiting for their response.
    pub fn pending(&self) -> usize {
        self.pending.values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::l7::dns_counts::tests::key;

    fn get(path: &str) -> Message {
        Message::Request {
            method: "GET",
            path: path.into(),
        }
    }

    #[test]
    fn responses_answer_requests_in_order() {
        let mut h = HttpCounts::default();
        let c = key(1, 40000, 2, 80, 6);
        let s = key(2, 80, 1, 40000, 6);
        h.add(&c, 1_000, &get("/a"));
        h.add(&c, 2_000, &get("/b"));
        h.add(&s, 3_000, &Message::Response { status: 100 });
        h.add(&s, 11_000, &Message::Response { status: 200 });
        h.add(&s, 22_000, &Message::Response { status: 503 });
        h.add(&s, 23_000, &Message::Response { status: 404 }); // no request left
        let r = h.take(&c).unwrap();
        assert_eq!(
            (
                r.requests,
                r.responses,
                r.status_2xx,
                r.status_4xx,
                r.status_5xx
            ),
            (2, 3, 1, 1, 1)
        );
        assert_eq!(
            (r.answered, r.latency_sum_ns, r.latency_max_ns),
            (2, 30_000, 20_000)
        );
        assert_eq!(r.latencies_us, vec![10, 20]);
        assert_eq!(
            (
                r.last_method.as_deref(),
                r.last_path.as_deref(),
                r.last_status
            ),
            (Some("GET"), Some("/b"), 404)
        );
        assert_eq!(h.pending(), 0);
    }

    #[test]
    fn unanswered_requests_expire() {
        let mut h = HttpCounts::default();
        let c = key(1, 40000, 2, 80, 6);
        for t in 0..(MAX_PENDING as u64 + 3) {
            h.add(&c, t, &get("/"));
        }
        let o = h.expire(1_000, 100);
        assert_eq!(
            (o.unclaimed, o.unanswered, o.untimed),
            (1, MAX_PENDING as u64, 3)
        );
        assert!(h.take(&c).is_none());
    }
}
