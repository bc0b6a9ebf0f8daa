//! Synthetic raw flows with realistic shapes: Zipf-distributed hosts, destination services and
//! pods, heavy-tailed (Pareto) flow sizes, an IPv4/IPv6 mix; every record carries a unique
//! sequence number in `time_flow_start_ns` (= run base + sequence) so that losses and
//! duplicates can be counted exactly in ClickHouse. Records are conversations (RawFlow v2):
//! the initiator's packets, the answer (reverse_*: ACK-sized against data, data against ACKs,
//! DNS-like UDP replies, echo replies; some SYNs and UDP packets unanswered), and for TCP
//! occasional RTT samples, retransmits and end reasons.

use std::net::{Ipv4Addr, Ipv6Addr};

use flowlens_schemas::{ip_to_v6, Direction, Interface, RawFlow};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Ranks 0..n drawn with P(k) ∝ 1/(k+1)^s (inverse CDF by binary search).
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: usize, s: f64) -> Self {
        assert!(n >= 1, "Zipf needs at least one rank");
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0;
        for k in 0..n {
            acc += 1.0 / ((k + 1) as f64).powf(s);
            cdf.push(acc);
        }
        for c in &mut cdf {
            *c /= acc;
        }
        Self { cdf }
    }

    /// Probability of rank `k` (0-based).
    pub fn p(&self, k: usize) -> f64 {
        self.cdf[k] - if k == 0 { 0.0 } else { self.cdf[k - 1] }
    }

    pub fn len(&self) -> usize {
        self.cdf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cdf.is_empty()
    }

    pub fn sample(&self, rng: &mut impl Rng) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|c| *c < u).min(self.cdf.len() - 1)
    }
}

/// Pareto(x_min, alpha) truncated at `max`: packets per flow (most flows are a few packets,
/// a few carry most of the traffic).
#[derive(Debug, Clone, Copy)]
pub struct Pareto {
    pub x_min: f64,
    pub alpha: f64,
    pub max: f64,
}

impl Pareto {
    pub fn sample(&self, rng: &mut impl Rng) -> f64 {
        let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        (self.x_min / u.powf(1.0 / self.alpha)).min(self.max)
    }
}

/// Destination ports ranked by popularity (the Zipf rank picks from this list; past its end a
/// high port is used).
const SERVICE_PORTS: &[u16] = &[
    443, 80, 53, 8080, 6443, 9092, 5432, 3306, 22, 8443, 9100, 2379, 10250, 6379, 11211, 9200,
    27017, 5672, 8125, 4317, 3000, 9090, 8000, 25, 123,
];

/// Shape of the synthetic traffic.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Distinct nodes (`host`), Zipf-weighted.
    pub hosts: usize,
    pub host_zipf_s: f64,
    /// Distinct destination ports, Zipf-weighted (s = `port_zipf_s`).
    pub ports: usize,
    pub port_zipf_s: f64,
    /// Pods per node (source addresses), Zipf-weighted.
    pub pods_per_host: usize,
    /// Destination addresses (services), Zipf-weighted.
    pub destinations: usize,
    /// Share of IPv6 flows.
    pub ipv6_share: f64,
    pub packets: Pareto,
    /// Interfaces per host (ifindex 1..=n), published to the interfaces topic.
    pub interfaces_per_host: i32,
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            hosts: 1000,
            host_zipf_s: 1.0,
            ports: 2000,
            port_zipf_s: 1.2,
            pods_per_host: 64,
            destinations: 5000,
            ipv6_share: 0.3,
            packets: Pareto {
                x_min: 1.0,
                alpha: 1.2,
                max: 10_000_000.0,
            },
            interfaces_per_host: 4,
        }
    }
}

/// Draws records; deterministic for a given seed.
pub struct Generator {
    shape: Shape,
    hosts: Zipf,
    ports: Zipf,
    pods: Zipf,
    destinations: Zipf,
    ifaces: Zipf,
    host_names: Vec<String>,
    rng: SmallRng,
    /// `time_flow_start_ns` of sequence number 0.
    pub base_ns: i64,
}

impl Generator {
    pub fn new(shape: Shape, run: &str, base_ns: i64, seed: u64) -> Self {
        let host_names = (0..shape.hosts)
            .map(|i| format!("{run}-node-{i:05}"))
            .collect();
        Self {
            hosts: Zipf::new(shape.hosts, shape.host_zipf_s),
            ports: Zipf::new(shape.ports, shape.port_zipf_s),
            pods: Zipf::new(shape.pods_per_host, 1.0),
            destinations: Zipf::new(shape.destinations, 1.0),
            ifaces: Zipf::new(shape.interfaces_per_host.max(1) as usize, 1.5),
            host_names,
            rng: SmallRng::seed_from_u64(seed),
            base_ns,
            shape,
        }
    }

    pub fn host_names(&self) -> &[String] {
        &self.host_names
    }

    /// Interface records for every host (what collectors would have published).
    pub fn interfaces(&self, now_ns: i64) -> Vec<Interface> {
        let mut out = Vec::new();
        for (h, host) in self.host_names.iter().enumerate() {
            for ifindex in 1..=self.shape.interfaces_per_host {
                let (name, kind) = if ifindex == 1 {
                    ("eth0".to_string(), "device")
                } else {
                    (format!("veth{h:x}{ifindex}"), "veth")
                };
                out.push(Interface {
                    host: host.clone(),
                    ifindex,
                    name,
                    mac: format!(
                        "02:00:{:02x}:{:02x}:00:{ifindex:02x}",
                        h >> 8 & 0xff,
                        h & 0xff
                    ),
                    mtu: 1500,
                    kind: kind.into(),
                    netns: if ifindex == 1 {
                        String::new()
                    } else {
                        format!("cni-{h}-{ifindex}")
                    },
                    netns_inode: 4_026_531_840 + ifindex as i64,
                    oper_state: "up".into(),
                    time_observed_ns: now_ns,
                });
            }
        }
        out
    }

    /// The record with sequence number `seq`, exported at `now_ns`.
    pub fn record(&mut self, seq: u64, now_ns: i64) -> RawFlow {
        let rng = &mut self.rng;
        let h = self.hosts.sample(rng);
        let pod = self.pods.sample(rng);
        let dst = self.destinations.sample(rng);
        let v6 = rng.random::<f64>() < self.shape.ipv6_share;
        let (src_addr, dst_addr, etype) = if v6 {
            (
                Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, h as u16, pod as u16 + 1),
                Ipv6Addr::new(0xfd00, 0x5e, 0, 0, 0, 0, (dst >> 16) as u16, dst as u16),
                0x86DD,
            )
        } else {
            (
                ip_to_v6(Ipv4Addr::new(10, (h >> 8) as u8, h as u8, pod as u8 + 1).into()),
                ip_to_v6(
                    Ipv4Addr::new(172, 16 + (dst >> 16) as u8, (dst >> 8) as u8, dst as u8).into(),
                ),
                0x0800,
            )
        };
        let roll: f64 = rng.random();
        let proto = if roll < 0.80 {
            6
        } else if roll < 0.98 {
            17
        } else if v6 {
            58
        } else {
            1
        };
        let port_rank = self.ports.sample(rng);
        let dst_port = SERVICE_PORTS
            .get(port_rank)
            .copied()
            .unwrap_or(1024 + (port_rank as u16).wrapping_mul(7919) % 60000);
        let (src_port, dst_port, icmp_type) = match proto {
            6 | 17 => (rng.random_range(32768..61000), dst_port as i32, 0),
            _ => (0, 0, 8),
        };
        let packets = self.shape.packets.sample(rng).round().max(1.0) as i64;
        // Bimodal packet sizes: ACK-sized and MTU-sized, plus a uniform middle.
        let size_roll: f64 = rng.random();
        let mean_size = if size_roll < 0.4 {
            66
        } else if size_roll < 0.8 {
            1448
        } else {
            rng.random_range(90..1400)
        };
        let start = self.base_ns + seq as i64;
        let duration = rng
            .random_range(0..5_000_000_000i64)
            .min(packets * 1_000_000);
        // A's flags and B's answer to them: handshake with data, data, ACKs, FIN, a bare SYN
        // nobody answered, a reset.
        let (tcp_flags, reverse_tcp_flags) = if proto == 6 {
            [
                (0x10, 0x18),
                (0x18, 0x10),
                (0x1a, 0x1a),
                (0x19, 0x19),
                (0x02, 0x00),
                (0x14, 0x10),
            ][rng.random_range(0..6)]
        } else {
            (0, 0)
        };
        let answered = match proto {
            6 => reverse_tcp_flags != 0,
            17 => rng.random::<f64>() < 0.9,
            _ => true,
        };
        // The answer: data-sized against ACK-sized requests and the other way round (one ACK
        // per one or two segments), similar sizes for UDP and ICMP.
        let (reverse_packets, reverse_size) = if !answered {
            (0, 0)
        } else if proto != 6 {
            (packets, mean_size)
        } else if mean_size == 66 {
            ((packets * rng.random_range(8..=12) / 10).max(1), 1448)
        } else {
            ((packets * rng.random_range(5..=10) / 10).max(1), 66)
        };
        let mut flow = RawFlow {
            host: self.host_names[h].clone(),
            ifindex: 1 + self.ifaces.sample(rng) as i32,
            direction: if rng.random::<bool>() {
                Direction::Egress
            } else {
                Direction::Ingress
            },
            time_flow_start_ns: start,
            time_flow_end_ns: start + duration,
            time_exported_ns: now_ns,
            etype,
            vlan_id: 0,
            proto,
            src_addr,
            dst_addr,
            src_port,
            dst_port,
            icmp_type,
            icmp_code: 0,
            tcp_flags,
            packets,
            bytes: packets * mean_size,
            sampling_rate: 1,
            reverse_packets,
            reverse_bytes: reverse_packets * reverse_size,
            reverse_tcp_flags,
            ..Default::default()
        };
        if proto == 6 && answered {
            // A local socket's smoothed RTT on a third of the records: 50 µs .. 50 ms,
            // log-uniform; a retransmit now and then, more on big flows.
            if rng.random::<f64>() < 0.33 {
                flow.rtt_ns = (50_000.0 * 1000f64.powf(rng.random::<f64>())) as i64;
            }
            if rng.random::<f64>() < 0.02 {
                flow.retransmits = 1 + packets / 1000 + rng.random_range(0..3);
            }
            let both = tcp_flags | reverse_tcp_flags;
            flow.end_reason = if both & 0x04 != 0 {
                "rst"
            } else if both & 0x01 != 0 {
                "fin"
            } else {
                ""
            }
            .into();
        }
        flow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_frequencies_follow_the_law() {
        let z = Zipf::new(1000, 1.0);
        let mut rng = SmallRng::seed_from_u64(7);
        let n = 200_000;
        let mut counts = vec![0u32; 1000];
        for _ in 0..n {
            counts[z.sample(&mut rng)] += 1;
        }
        // H(1000) ≈ 7.485: rank 0 has p ≈ 0.1336, rank 1 half of that, rank 9 a tenth.
        let f = |k: usize| counts[k] as f64 / n as f64;
        assert!((f(0) - 0.1336).abs() < 0.005, "rank 0: {}", f(0));
        assert!(
            (f(0) / f(1) - 2.0).abs() < 0.15,
            "ratio 0/1: {}",
            f(0) / f(1)
        );
        assert!(
            (f(0) / f(9) - 10.0).abs() < 1.5,
            "ratio 0/9: {}",
            f(0) / f(9)
        );
        assert!((z.p(0) - 0.1336).abs() < 0.001);
    }

    #[test]
    fn pareto_tail_is_heavy() {
        let p = Pareto {
            x_min: 1.0,
            alpha: 1.2,
            max: 1e12,
        };
        let mut rng = SmallRng::seed_from_u64(9);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| p.sample(&mut rng)).collect();
        // P(X > x) = x^-alpha: 10 -> 6.3 %, 100 -> 0.40 %.
        let above = |x: f64| xs.iter().filter(|v| **v > x).count() as f64 / n as f64;
        assert!((above(10.0) - 0.0631).abs() < 0.004, "{}", above(10.0));
        assert!((above(100.0) - 0.00398).abs() < 0.0008, "{}", above(100.0));
        // Heavy tail: the top 1 % of flows carry a large share of the packets.
        let mut sorted = xs.clone();
        sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
        let total: f64 = sorted.iter().sum();
        let top: f64 = sorted[..n / 100].iter().sum();
        assert!(top / total > 0.3, "top 1 % share {}", top / total);
    }

    #[test]
    fn records_have_unique_ids_and_the_requested_mix() {
        let mut g = Generator::new(Shape::default(), "t", 1_000_000_000, 1);
        let n = 50_000;
        let recs: Vec<RawFlow> = (0..n).map(|i| g.record(i, 5)).collect();
        let ids: std::collections::HashSet<i64> =
            recs.iter().map(|r| r.time_flow_start_ns).collect();
        assert_eq!(ids.len(), n as usize);
        let v6 = recs.iter().filter(|r| r.etype == 0x86DD).count() as f64 / n as f64;
        assert!((v6 - 0.3).abs() < 0.015, "ipv6 share {v6}");
        let https = recs.iter().filter(|r| r.dst_port == 443).count() as f64 / n as f64;
        assert!(https > 0.1 && https < 0.4, "port 443 share {https}");
        let top_host =
            recs.iter().filter(|r| r.host == g.host_names()[0]).count() as f64 / n as f64;
        assert!(
            (top_host - Zipf::new(1000, 1.0).p(0)).abs() < 0.01,
            "{top_host}"
        );
        for r in &recs {
            assert!(r.packets >= 1 && r.bytes >= r.packets * 66);
            assert!((1..=4).contains(&r.ifindex));
            assert_eq!(r.src_ip().is_ipv6(), r.etype == 0x86DD);
            assert!(r.reverse_bytes >= r.reverse_packets * 66);
            assert_eq!(r.reverse_packets == 0, r.reverse_bytes == 0);
            if r.proto != 6 {
                assert_eq!((r.rtt_ns, r.retransmits, r.reverse_tcp_flags), (0, 0, 0));
            }
            assert!(!r.duplicate);
        }
        // Conversations: most are answered (all but the bare SYNs and 10 % of UDP), about a
        // third of the answered TCP ones carry an RTT, a few retransmit.
        let share =
            |f: &dyn Fn(&RawFlow) -> bool| recs.iter().filter(|r| f(r)).count() as f64 / n as f64;
        let answered = share(&|r| r.reverse_packets > 0);
        assert!(answered > 0.8 && answered < 0.9, "answered {answered}");
        assert!(share(&|r| r.tcp_flags == 0x02 && r.reverse_packets > 0) == 0.0);
        let rtt = share(&|r| r.rtt_ns > 0) / share(&|r| r.proto == 6 && r.reverse_packets > 0);
        assert!((rtt - 0.33).abs() < 0.02, "rtt share {rtt}");
        assert!(recs
            .iter()
            .all(|r| r.rtt_ns == 0 || (50_000..=50_000_000).contains(&r.rtt_ns)));
        let retransmitting = share(&|r| r.retransmits > 0);
        assert!(
            retransmitting > 0.005 && retransmitting < 0.03,
            "{retransmitting}"
        );
        assert!(share(&|r| r.end_reason == "fin") > 0.05);
    }
}
