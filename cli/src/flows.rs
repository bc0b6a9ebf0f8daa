//! How `flowlens observe` prints a flow: an aligned table row, a compact one-liner, or the whole
//! record as one JSON object (every field, by the schema).

use std::io::{self, Write};
use std::net::IpAddr;

use flowlens_schemas::{json, EnrichedFlow, RecordKind};

/// Output formats of `flowlens observe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns under a header.
    Table,
    /// Every field of each record as one JSON object per line.
    Json,
    /// One short line per record.
    Compact,
}

/// One decoded record with the generic value it came from.
pub struct Decoded {
    pub flow: EnrichedFlow,
    pub value: flowlens_schemas::apache_avro::types::Value,
    pub partition: i32,
    pub offset: i64,
}

const HEADER: [&str; 8] = [
    "TIME",
    "NODE",
    "SOURCE",
    "DESTINATION",
    "PROTO",
    "BYTES",
    "PACKETS",
    "INFO",
];

/// Prints records in one format; the table header comes before the first row.
pub struct Printer<W: Write> {
    format: Format,
    out: W,
    header_written: bool,
}

impl<W: Write> Printer<W> {
    pub fn new(format: Format, out: W) -> Self {
        Self {
            format,
            out,
            header_written: false,
        }
    }

    pub fn print(&mut self, d: &Decoded) -> io::Result<()> {
        match self.format {
            Format::Json => writeln!(
                self.out,
                "{}",
                json::to_json(RecordKind::EnrichedFlow, &d.value)
            )?,
            Format::Table => {
                if !self.header_written {
                    self.header_written = true;
                    self.row(&HEADER.map(String::from))?;
                }
                self.row(&columns(&d.flow))?;
            }
            Format::Compact => {
                let [time, node, src, dst, proto, bytes, packets, info] = columns(&d.flow);
                let line = format!(
                    "{time} {node} {src} -> {dst} {proto} bytes {bytes} packets {packets} {info}"
                );
                writeln!(self.out, "{}", line.trim_end())?;
            }
        }
        self.out.flush()
    }

    /// Fixed widths, so that rows printed as they arrive stay aligned.
    fn row(&mut self, c: &[String; 8]) -> io::Result<()> {
        let line = format!(
            "{:<24}  {:<18}  {:<28}  {:<28}  {:<6}  {:>15}  {:>11}  {}",
            c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]
        );
        writeln!(self.out, "{}", line.trim_end())
    }
}

/// The table's cells: end time (UTC), host/interface, both ends, protocol, A→B/B→A counts, details.
fn columns(f: &EnrichedFlow) -> [String; 8] {
    let time = jiff::Timestamp::from_nanosecond(i128::from(f.time_flow_end_ns))
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|_| f.time_flow_end_ns.to_string());
    let interface = if f.if_name.is_empty() {
        f.ifindex.to_string()
    } else {
        f.if_name.clone()
    };
    let ports = matches!(f.proto, 6 | 17 | 132);
    let src = endpoint(f.src_ip(), f.src_port, ports, &f.src_namespace, &f.src_pod);
    let dst = endpoint(f.dst_ip(), f.dst_port, ports, &f.dst_namespace, &f.dst_pod);
    let mut info = Vec::new();
    if f.proto == 6 {
        info.push(tcp_flags(f.tcp_flags | f.reverse_tcp_flags));
    }
    if !f.end_reason.is_empty() {
        info.push(format!("end={}", f.end_reason));
    }
    if f.rtt_ns > 0 {
        info.push(format!("rtt={:.3}ms", f.rtt_ns as f64 / 1e6));
    }
    if f.retransmits > 0 {
        info.push(format!("retransmits={}", f.retransmits));
    }
    if f.drops > 0 {
        info.push(format!("drops={}({})", f.drops, f.drop_reason));
    }
    if let Some(l) = &f.locality {
        info.push(l.clone());
    }
    if f.sampling_rate > 1 {
        info.push(format!("sampled=1:{}", f.sampling_rate));
    }
    if let Some(d) = &f.dns {
        info.push(dns(d));
    }
    if let Some(h) = &f.http {
        info.push(http(h));
    }
    if f.duplicate {
        info.push("duplicate".into());
    }
    [
        time,
        format!("{}/{}", f.host, interface),
        src,
        dst,
        protocol_name(f.proto),
        format!("{}/{}", f.bytes, f.reverse_bytes),
        format!("{}/{}", f.packets, f.reverse_packets),
        info.into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
    ]
}

/// `namespace/pod:port` when the pod is known, else `address:port` (`[v6]:port`).
fn endpoint(
    ip: IpAddr,
    port: i32,
    ports: bool,
    ns: &Option<String>,
    pod: &Option<String>,
) -> String {
    let host = match (ns, pod) {
        (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
        (None, Some(pod)) => pod.clone(),
        _ => match ip {
            IpAddr::V6(v6) if ports => format!("[{v6}]"),
            other => other.to_string(),
        },
    };
    if ports {
        format!("{host}:{port}")
    } else {
        host
    }
}

fn protocol_name(proto: i32) -> String {
    match proto {
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        58 => "ICMPv6".into(),
        132 => "SCTP".into(),
        n => n.to_string(),
    }
}

fn tcp_flags(flags: i32) -> String {
    const NAMES: [(i32, &str); 6] = [
        (0x02, "SYN"),
        (0x10, "ACK"),
        (0x08, "PSH"),
        (0x01, "FIN"),
        (0x04, "RST"),
        (0x20, "URG"),
    ];
    NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join(",")
}

/// A conversation's DNS in one cell: queries/responses, the error codes seen, the slowest
/// answer and the last name asked, e.g. `dns=3q/3r,nxdomain=1,max=5.000ms,last=api.shop`.
fn dns(d: &flowlens_schemas::Dns) -> String {
    let mut s = format!("dns={}q/{}r", d.queries, d.responses);
    for (code, n) in [
        ("nxdomain", d.nxdomain),
        ("servfail", d.servfail),
        ("refused", d.refused),
    ] {
        if n > 0 {
            s.push_str(&format!(",{code}={n}"));
        }
    }
    if d.answered > 0 {
        s.push_str(&format!(",max={:.3}ms", d.latency_max_ns as f64 / 1e6));
    }
    if let Some(name) = &d.last_query {
        s.push_str(&format!(",last={name}"));
    }
    s
}

/// A conversation's HTTP/1.x in one cell: requests/responses, the error classes seen, the
/// slowest answer and the last request with its status, e.g.
/// `http=4req/4resp,4xx=1,5xx=1,max=30.000ms,last=GET /api/cart 503`.
fn http(h: &flowlens_schemas::Http) -> String {
    let mut s = format!("http={}req/{}resp", h.requests, h.responses);
    for (class, n) in [
        ("4xx", h.status_4xx),
        ("5xx", h.status_5xx),
        ("other", h.status_other),
    ] {
        if n > 0 {
            s.push_str(&format!(",{class}={n}"));
        }
    }
    if h.answered > 0 {
        s.push_str(&format!(",max={:.3}ms", h.latency_max_ns as f64 / 1e6));
    }
    match (&h.last_method, &h.last_path) {
        (Some(method), Some(path)) => s.push_str(&format!(",last={method} {path}")),
        (Some(method), None) => s.push_str(&format!(",last={method}")),
        (None, Some(path)) => s.push_str(&format!(",last={path}")),
        (None, None) => {}
    }
    if h.last_status > 0 {
        s.push_str(&format!(
            "{}{}",
            if h.last_method.is_some() || h.last_path.is_some() {
                " "
            } else {
                ",status="
            },
            h.last_status
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_in_the_info_cell() {
        let mut f = EnrichedFlow::from_raw(flowlens_schemas::RawFlow {
            proto: 17,
            dst_port: 53,
            ..Default::default()
        });
        assert!(!columns(&f)[7].contains("dns="));
        f.dns = Some(flowlens_schemas::Dns {
            queries: 3,
            responses: 3,
            noerror: 2,
            nxdomain: 1,
            answered: 3,
            latency_max_ns: 5_000_000,
            last_query: Some("api.shop".into()),
            ..Default::default()
        });
        assert_eq!(
            columns(&f)[7],
            "dns=3q/3r,nxdomain=1,max=5.000ms,last=api.shop"
        );
        f.dns = Some(flowlens_schemas::Dns {
            responses: 2,
            refused: 2,
            ..Default::default()
        });
        assert_eq!(columns(&f)[7], "dns=0q/2r,refused=2");
    }

    #[test]
    fn http_in_the_info_cell() {
        let mut f = EnrichedFlow::from_raw(flowlens_schemas::RawFlow {
            proto: 6,
            dst_port: 8080,
            ..Default::default()
        });
        assert!(!columns(&f)[7].contains("http="));
        f.http = Some(flowlens_schemas::Http {
            requests: 4,
            responses: 4,
            status_2xx: 2,
            status_4xx: 1,
            status_5xx: 1,
            answered: 4,
            latency_max_ns: 30_000_000,
            last_method: Some("GET".into()),
            last_path: Some("/api/cart".into()),
            last_status: 503,
            ..Default::default()
        });
        assert_eq!(
            columns(&f)[7],
            "http=4req/4resp,4xx=1,5xx=1,max=30.000ms,last=GET /api/cart 503"
        );
        f.http = Some(flowlens_schemas::Http {
            responses: 1,
            status_2xx: 1,
            last_status: 200,
            ..Default::default()
        });
        assert_eq!(columns(&f)[7], "http=0req/1resp,status=200");
        f.http = Some(flowlens_schemas::Http {
            requests: 1,
            last_method: Some("POST".into()),
            last_path: Some("/login".into()),
            ..Default::default()
        });
        assert_eq!(columns(&f)[7], "http=1req/0resp,last=POST /login");
    }
}
