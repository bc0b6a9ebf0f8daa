//! The API's query string → a time range, the filters of `flowlens observe` as a SQL WHERE with
//! bound values, and the table that can answer: the raw `flows` table, or a topology rollup
//! when the range is long and every filter and dimension asked for is one the rollup has.

use std::collections::BTreeMap;

use crate::clickhouse::Params;
use crate::error::ApiError;
use crate::net::Net;

/// The tables the console reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Raw,
    Minute,
    Hour,
}

/// Ranges longer than this read the hourly rollup (the per-minute one below).
const MINUTE_ROLLUP_MAX_S: u64 = 7 * 86_400;

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Raw => "flows",
            Table::Minute => "flows_topology_1m",
            Table::Hour => "flows_topology_1h",
        }
    }

    /// The table for a range of `range_s` seconds: raw up to `raw_max_range_s` or when
    /// `needs_raw`, then the per-minute rollup up to 7 days, the hourly one beyond.
    pub fn choose(range_s: u64, raw_max_range_s: u64, needs_raw: bool) -> Table {
        if needs_raw || range_s <= raw_max_range_s {
            Table::Raw
        } else if range_s <= MINUTE_ROLLUP_MAX_S {
            Table::Minute
        } else {
            Table::Hour
        }
    }

    /// The time column: when the flow ended (raw), the start of the minute or hour (rollups).
    pub fn time_column(self) -> &'static str {
        match self {
            Table::Raw => "time_flow_end",
            _ => "time",
        }
    }

    /// The SQL of one summed measure of a row of this table.
    pub fn measure(self, m: Measure) -> &'static str {
        match (self, m) {
            (Table::Raw, Measure::Bytes) => "est_bytes + est_reverse_bytes",
            (Table::Raw, Measure::Packets) => "est_packets + est_reverse_packets",
            (Table::Raw, Measure::Flows) => "toUInt64(1)",
            (Table::Raw, Measure::RttSum) => "rtt_ns",
            (Table::Raw, Measure::RttSamples) => "toUInt64(rtt_ns > 0)",
            (Table::Raw, Measure::SamplingRate) => "sampling_rate",
            (_, Measure::Bytes) => "bytes",
            (_, Measure::Packets) => "packets",
            (_, Measure::Flows) => "flows",
            (_, Measure::RttSum) => "rtt_ns_sum",
            (_, Measure::RttSamples) => "rtt_samples",
            (_, Measure::SamplingRate) => "max_sampling_rate",
            (_, Measure::Retransmits) => "retransmits",
            (_, Measure::Drops) => "drops",
        }
    }
}

/// What the views sum per row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    Bytes,
    Packets,
    Flows,
    Retransmits,
    Drops,
    RttSum,
    RttSamples,
    SamplingRate,
}

/// `from` / `to` (unix seconds, UTC), `to` excluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub from: u64,
    pub to: u64,
}

/// The longest range asked for: the hourly rollup's retention.
const MAX_RANGE_S: u64 = 400 * 86_400;

impl Range {
    pub fn seconds(&self) -> u64 {
        self.to - self.from
    }

    /// `time_column` within the range.
    pub fn sql(&self, table: Table, p: &mut Params) -> String {
        let (from, to) = (
            p.bind("UInt32", self.from.to_string()),
            p.bind("UInt32", self.to.to_string()),
        );
        let t = table.time_column();
        format!("{t} >= toDateTime({from}) AND {t} < toDateTime({to})")
    }
}

/// The query string's pairs, by key, in order.
#[derive(Debug, Default)]
pub struct QueryString {
    pairs: BTreeMap<String, Vec<String>>,
}

impl QueryString {
    /// A key with an empty value (`group=`) counts as not given.
    pub fn parse(raw: Option<&str>) -> Self {
        let mut pairs: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            if !v.trim().is_empty() {
                pairs
                    .entry(k.into_owned())
                    .or_default()
                    .push(v.into_owned());
            }
        }
        Self { pairs }
    }

    /// The value of a key given at most once (400 when repeated).
    pub fn one(&mut self, key: &str) -> Result<Option<String>, ApiError> {
        match self.pairs.remove(key) {
            None => Ok(None),
            Some(mut v) if v.len() == 1 => Ok(v.pop()),
            Some(_) => Err(ApiError::bad(format!("`{key}` is given more than once"))),
        }
    }

    /// A number given at most once, with a default, in `[min, max]`.
    pub fn number(&mut self, key: &str, default: u64, min: u64, max: u64) -> Result<u64, ApiError> {
        let Some(text) = self.one(key)? else {
            return Ok(default);
        };
        text.trim()
            .parse::<u64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| {
                ApiError::bad(format!("`{key}={text}` is not a number in [{min}, {max}]"))
            })
    }

    /// `from` and `to`: unix seconds; `to` defaults to now, `from` to an hour before `to`.
    pub fn range(&mut self) -> Result<Range, ApiError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut seconds = |key: &str, default: u64| -> Result<u64, ApiError> {
            match self.one(key)? {
                None => Ok(default),
                Some(t) => t
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|s| *s <= u32::MAX as u64)
                    .ok_or_else(|| ApiError::bad(format!("`{key}={t}` is not unix seconds"))),
            }
        };
        let to = seconds("to", now)?;
        let from = seconds("from", to.saturating_sub(3600))?;
        if from >= to {
            return Err(ApiError::bad(format!(
                "`from={from}` is not before `to={to}`"
            )));
        }
        if to - from > MAX_RANGE_S {
            return Err(ApiError::bad(format!(
                "the range {from}..{to} is longer than {MAX_RANGE_S} s"
            )));
        }
        Ok(Range { from, to })
    }

    /// Every key left is a filter; an unknown one is a 400.
    pub fn filters(self) -> Result<Filters, ApiError> {
        let mut filters = Vec::new();
        for (key, values) in self.pairs {
            filters.push(Filter::parse(&key, &values)?);
        }
        Ok(Filters(filters))
    }
}

/// One filter key with all its values (OR).
#[derive(Debug, Clone, PartialEq)]
enum Filter {
    Namespace(Vec<String>),
    Pod(Vec<String>),
    Workload(Vec<String>),
    Service(Vec<String>),
    Node(Vec<String>),
    Ip(Vec<Net>),
    Port(Vec<u16>),
    Protocol(Vec<u8>),
    Locality(Vec<String>),
    Drops,
    RttAboveMs(f64),
    EndReason(Vec<String>),
}

/// The filter keys, as in `flowlens observe`.
pub const FILTER_KEYS: &[&str] = &[
    "namespace",
    "pod",
    "workload",
    "service",
    "node",
    "ip",
    "port",
    "protocol",
    "locality",
    "drops",
    "rtt_above_ms",
    "end_reason",
];

/// SQL turning a `proto` column into the names of [`flowlens_schemas::protocol_name`].
pub const PROTOCOL_NAME_SQL: &str =
    "transform(proto, [1, 6, 17, 58, 132], ['icmp', 'tcp', 'udp', 'icmpv6', 'sctp'], toString(proto))";

impl Filter {
    fn parse(key: &str, values: &[String]) -> Result<Self, ApiError> {
        let bad = |v: &str, what: &str| ApiError::bad(format!("`{key}={v}`: {what}"));
        let names = || -> Result<Vec<String>, ApiError> {
            values
                .iter()
                .map(|v| {
                    let v = v.trim();
                    if v.is_empty() || v.split('/').count() > 2 {
                        Err(bad(v, "expected NAME or NAMESPACE/NAME"))
                    } else {
                        Ok(v.to_owned())
                    }
                })
                .collect()
        };
        let one_of = |allowed: &[&str]| -> Result<Vec<String>, ApiError> {
            values
                .iter()
                .map(|v| {
                    let v = v.trim().to_ascii_lowercase();
                    if allowed.contains(&v.as_str()) {
                        Ok(v)
                    } else {
                        Err(bad(&v, &format!("expected one of {}", allowed.join(", "))))
                    }
                })
                .collect()
        };
        Ok(match key {
            "namespace" => Filter::Namespace(names()?),
            "pod" => Filter::Pod(names()?),
            "workload" => Filter::Workload(names()?),
            "service" => Filter::Service(names()?),
            "node" => Filter::Node(names()?),
            "ip" => Filter::Ip(
                values
                    .iter()
                    .map(|v| {
                        v.parse::<Net>()
                            .map_err(|e| ApiError::bad(format!("`ip`: {e}")))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            "port" => Filter::Port(
                values
                    .iter()
                    .map(|v| {
                        v.trim()
                            .parse::<u16>()
                            .map_err(|_| bad(v, "not a port 0-65535"))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            "protocol" => Filter::Protocol(
                values
                    .iter()
                    .map(|v| {
                        flowlens_schemas::protocol_number(v.trim())
                            .ok_or_else(|| bad(v, "expected tcp, udp, icmp, icmpv6, sctp or 0-255"))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            "locality" => Filter::Locality(one_of(&["node", "cluster", "external"])?),
            "end_reason" => Filter::EndReason(one_of(&["fin", "rst", "idle", "shutdown"])?),
            "drops" => {
                if let Some(v) = values.iter().find(|v| v.trim() != "1") {
                    return Err(bad(v, "only drops=1 (conversations with kernel drops)"));
                }
                Filter::Drops
            }
            "rtt_above_ms" => Filter::RttAboveMs(
                values
                    .iter()
                    .map(|v| {
                        v.trim()
                            .parse::<f64>()
                            .ok()
                            .filter(|ms| ms.is_finite() && *ms >= 0.0)
                            .ok_or_else(|| bad(v, "not a number of milliseconds >= 0"))
                    })
                    .collect::<Result<Vec<_>, _>>()?
                    .into_iter()
                    .fold(f64::INFINITY, f64::min),
            ),
            other => {
                return Err(ApiError::bad(format!(
                    "unknown parameter `{other}` (filters: {})",
                    FILTER_KEYS.join(", ")
                )))
            }
        })
    }

    /// Whether only the raw table has what this filter reads.
    fn needs_raw(&self) -> bool {
        matches!(
            self,
            Filter::Service(_)
                | Filter::Ip(_)
                | Filter::Drops
                | Filter::RttAboveMs(_)
                | Filter::EndReason(_)
        )
    }

    fn sql(&self, table: Table, p: &mut Params) -> String {
        let either = |column: &str, p: &mut Params, values: &[String]| -> String {
            let list = bind_list(p, values);
            format!("(src_{column} IN ({list}) OR dst_{column} IN ({list}))")
        };
        match self {
            Filter::Namespace(v) => either("namespace", p, v),
            Filter::Node(v) => either("node", p, v),
            Filter::Locality(v) => format!("locality IN ({})", bind_list(p, v)),
            Filter::EndReason(v) => format!("end_reason IN ({})", bind_list(p, v)),
            Filter::Pod(v) => named(p, "pod", v),
            Filter::Workload(v) => named(p, "workload", v),
            Filter::Service(v) => named(p, "service", v),
            Filter::Ip(nets) => {
                let mut any = Vec::new();
                for n in nets {
                    let (lo, hi) = (
                        p.bind("IPv6", n.first().to_string()),
                        p.bind("IPv6", n.last().to_string()),
                    );
                    for end in ["src", "dst"] {
                        any.push(format!("{end}_addr BETWEEN {lo} AND {hi}"));
                    }
                }
                format!("({})", any.join(" OR "))
            }
            Filter::Port(ports) => {
                let list = ports
                    .iter()
                    .map(|port| p.bind("UInt16", port.to_string()))
                    .collect::<Vec<_>>()
                    .join(", ");
                if table == Table::Raw {
                    format!("(src_port IN ({list}) OR dst_port IN ({list}))")
                } else {
                    format!("dst_port IN ({list})")
                }
            }
            Filter::Protocol(protos) => {
                let list = protos
                    .iter()
                    .map(|n| p.bind("UInt8", n.to_string()))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("proto IN ({list})")
            }
            Filter::Drops => "drops > 0".into(),
            Filter::RttAboveMs(ms) => {
                let ns = (ms * 1e6).floor() as u64;
                format!("rtt_ns > {}", p.bind("UInt64", ns.to_string()))
            }
        }
    }
}

fn bind_list(p: &mut Params, values: &[String]) -> String {
    values
        .iter()
        .map(|v| p.bind("String", v.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `NAME` matches either end's `column`, `NAMESPACE/NAME` its namespace too.
fn named(p: &mut Params, column: &str, values: &[String]) -> String {
    let mut any = Vec::new();
    for v in values {
        match v.split_once('/') {
            Some((ns, name)) => {
                let (ns, name) = (p.bind("String", ns), p.bind("String", name));
                for end in ["src", "dst"] {
                    any.push(format!(
                        "({end}_namespace = {ns} AND {end}_{column} = {name})"
                    ));
                }
            }
            None => {
                let name = p.bind("String", v.as_str());
                for end in ["src", "dst"] {
                    any.push(format!("{end}_{column} = {name}"));
                }
            }
        }
    }
    format!("({})", any.join(" OR "))
}

/// The filters of a request: different keys AND, a key's values OR.
#[derive(Debug, Default)]
pub struct Filters(Vec<Filter>);

impl Filters {
    /// Whether only the raw table can apply these filters.
    pub fn need_raw(&self) -> bool {
        self.0.iter().any(Filter::needs_raw)
    }

    /// The WHERE of a query on `table` over `range` with these filters (duplicates left out).
    pub fn where_sql(&self, table: Table, range: &Range, p: &mut Params) -> String {
        let mut all = vec![range.sql(table, p)];
        if table == Table::Raw {
            all.push("NOT duplicate".into());
        }
        all.extend(self.0.iter().map(|f| f.sql(table, p)));
        all.join("\n  AND ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filters(q: &str) -> Result<Filters, ApiError> {
        QueryString::parse(Some(q)).filters()
    }

    #[test]
    fn tables_follow_the_range_and_the_filters() {
        assert_eq!(Table::choose(3600, 21_600, false), Table::Raw);
        assert_eq!(Table::choose(86_400, 21_600, false), Table::Minute);
        assert_eq!(Table::choose(30 * 86_400, 21_600, false), Table::Hour);
        assert_eq!(Table::choose(30 * 86_400, 21_600, true), Table::Raw);
        assert!(filters("service=dns&namespace=a").unwrap().need_raw());
        assert!(filters("rtt_above_ms=5").unwrap().need_raw());
        assert!(!filters("namespace=a&port=53&protocol=udp")
            .unwrap()
            .need_raw());
    }

    #[test]
    fn values_are_bound_never_spliced() {
        let f =
            filters("namespace=x'%20OR%201=1&pod=ns/web-1&ip=10.0.0.0/8&port=53&port=80").unwrap();
        let mut p = Params::default();
        let range = Range { from: 10, to: 20 };
        let sql = f.where_sql(Table::Raw, &range, &mut p);
        assert!(!sql.contains("OR 1=1"), "{sql}");
        assert!(sql.contains("src_namespace IN ({p"), "{sql}");
        assert!(sql.contains("src_addr BETWEEN {p"), "{sql}");
        assert!(sql.contains("(src_port IN ("), "{sql}");
        let rollup = f.where_sql(Table::Minute, &range, &mut Params::default());
        assert!(
            rollup.contains("dst_port IN (") && !rollup.contains("src_port"),
            "{rollup}"
        );
    }

    #[test]
    fn bad_input_names_the_parameter() {
        for (q, needle) in [
            ("colour=red", "`colour`"),
            ("protocol=tcpp", "protocol=tcpp"),
            ("port=70000", "port=70000"),
            ("ip=10.0.0.0/40", "`ip`"),
            ("locality=moon", "locality=moon"),
            ("drops=2", "drops=2"),
            ("rtt_above_ms=-1", "rtt_above_ms=-1"),
            ("end_reason=boom", "end_reason=boom"),
            ("pod=a/b/c", "pod=a/b/c"),
        ] {
            let e = filters(q).unwrap_err();
            assert!(e.message.contains(needle), "{q}: {}", e.message);
        }
        let mut q = QueryString::parse(Some("from=20&to=10"));
        assert!(q.range().is_err());
        let mut q = QueryString::parse(Some("from=abc"));
        assert!(q.range().unwrap_err().message.contains("from=abc"));
        let mut q = QueryString::parse(Some("to=5&to=6"));
        assert!(q.range().is_err());
        let mut q = QueryString::parse(Some("group=&namespace=&from=1&to=2"));
        assert_eq!(q.one("group").unwrap(), None);
        assert_eq!(q.range().unwrap(), Range { from: 1, to: 2 });
        assert!(!q.filters().unwrap().need_raw());
    }
}
