//! Unit tests of `FlowRow` and its RowBinary writer.

use super::binary::{varint_len, FIXED_LEN};
use super::*;

#[test]
fn maps_every_field() {
    let row = FlowRow::try_from(sample_flow(7)).unwrap();
    assert_eq!(row.time_flow_start, 1_700_000_000_123_463_789);
    assert_eq!(row.time_exported, 1_700_000_002_123_456_789);
    assert_eq!(row.direction, DirectionColumn::Egress);
    assert_eq!(row.src_addr, "::ffff:10.0.0.7".parse::<Ipv6Addr>().unwrap());
    assert_eq!(row.dst_addr, "2001:db8::1".parse::<Ipv6Addr>().unwrap());
    assert_eq!((row.src_port, row.dst_port, row.proto), (10_007, 443, 6));
    assert_eq!((row.packets, row.bytes, row.tcp_flags), (8, 800, 0x18));
    assert_eq!((row.etype, row.ifindex), (0x0800, 3));
    assert_eq!(row.if_name, "eth0");
    assert_eq!(row.src_pod, "web-7");
    assert_eq!(row.dst_service, "api");
    assert_eq!(row.src_pod_uid, "00000000-0000-4000-8000-000000000007");
    assert_eq!(
        (row.src_role.as_str(), row.dst_role.as_str()),
        ("client", "server")
    );
    assert_eq!(row.locality, "external");
    assert_eq!(
        (row.if_pod.as_str(), row.if_namespace.as_str()),
        ("web-7", "shop")
    );
    // None becomes "" (unknown).
    assert_eq!(row.dst_pod, "");
    assert_eq!(row.src_workload_kind, "");
    assert_eq!(row.dst_pod_uid, "");
    // Version 3: a null process is zeros, a null outer address `::`.
    assert_eq!((row.retransmits, row.drops, row.rtt_ns), (1, 0, 100_070));
    assert_eq!(
        (row.src_pid, row.src_comm.as_str(), row.src_cgroup_id),
        (1_007, "curl", 5_007)
    );
    assert_eq!(
        (row.dst_pid, row.dst_comm.as_str(), row.dst_cgroup_id),
        (0, "", 0)
    );
    assert_eq!((row.tunnel.as_str(), row.tunnel_id), ("vxlan", 42));
    assert_eq!(
        row.outer_dst_addr,
        "::ffff:192.168.0.2".parse::<Ipv6Addr>().unwrap()
    );
    let row = FlowRow::try_from(sample_flow(8)).unwrap();
    assert_eq!(row.outer_src_addr, Ipv6Addr::UNSPECIFIED);
    assert_eq!(row.tunnel, "");
    assert!(!row.duplicate);
    let mut f = sample_flow(1);
    f.reverse_packets = 4;
    f.reverse_bytes = 256;
    f.reverse_tcp_flags = 0x12;
    f.duplicate = true;
    f.end_reason = "rst".into();
    let row = FlowRow::try_from(f).unwrap();
    assert_eq!(
        (
            row.reverse_packets,
            row.reverse_bytes,
            row.reverse_tcp_flags
        ),
        (4, 256, 0x12)
    );
    assert!(row.duplicate);
    assert_eq!(row.end_reason, "rst");
    // Version 5: dns, or zeros, [] and "" without it.
    assert_eq!(row.dns_queries, 2, "sample 1 carries DNS");
    assert_eq!(
        (row.dns_responses, row.dns_noerror, row.dns_nxdomain),
        (2, 1, 1)
    );
    assert_eq!(
        (row.dns_servfail, row.dns_refused, row.dns_other_rcode),
        (0, 0, 0)
    );
    assert_eq!(
        (
            row.dns_answered,
            row.dns_latency_sum_ns,
            row.dns_latency_max_ns
        ),
        (2, 1_701_000, 1_500_000)
    );
    assert_eq!(row.dns_latencies_us, [201, 1_500]);
    assert_eq!(
        (row.dns_last_query.as_str(), row.dns_last_query_type),
        ("api.shop.svc.cluster.local", 28)
    );
    let row = FlowRow::try_from(sample_flow(7)).unwrap();
    assert_eq!(
        (row.dns_queries, row.dns_answered, row.dns_latency_max_ns),
        (0, 0, 0)
    );
    assert!(row.dns_latencies_us.is_empty());
    assert_eq!(
        (row.dns_last_query.as_str(), row.dns_last_query_type),
        ("", 0)
    );
    // http, or zeros, [] and "" without it (sample 7 carries none, sample 1 neither).
    assert_eq!(
        (
            row.http_requests,
            row.http_answered,
            row.http_latency_max_ns
        ),
        (0, 0, 0)
    );
    assert!(row.http_latencies_us.is_empty());
    assert_eq!(
        (
            row.http_last_method.as_str(),
            row.http_last_path.as_str(),
            row.http_last_status
        ),
        ("", "", 0)
    );
    let row = FlowRow::try_from(sample_flow(2)).unwrap();
    assert_eq!(row.dns_queries, 0);
    assert_eq!(
        (row.http_requests, row.http_responses, row.http_answered),
        (2, 2, 2),
        "sample 2 carries HTTP"
    );
    assert_eq!(
        (
            row.http_2xx,
            row.http_3xx,
            row.http_4xx,
            row.http_5xx,
            row.http_status_other
        ),
        (1, 0, 0, 1, 0)
    );
    assert_eq!(
        (row.http_latency_sum_ns, row.http_latency_max_ns),
        (48_002_000, 45_000_000)
    );
    assert_eq!(row.http_latencies_us, [3_002, 45_000]);
    assert_eq!(
        (
            row.http_last_method.as_str(),
            row.http_last_path.as_str(),
            row.http_last_status
        ),
        ("GET", "/api/cart", 503)
    );
}

#[test]
fn out_of_range_values_are_rejected_with_the_field() {
    let mut f = sample_flow(1);
    f.src_port = 70_000;
    let e = FlowRow::try_from(f).unwrap_err();
    assert_eq!(e.field, "src_port");
    let mut f = sample_flow(1);
    f.bytes = -1;
    assert_eq!(FlowRow::try_from(f).unwrap_err().field, "bytes");
    for (field, set) in [
        (
            "reverse_bytes",
            (|f| f.reverse_bytes = -1) as fn(&mut EnrichedFlow),
        ),
        ("retransmits", |f| f.retransmits = 1 << 32),
        ("tunnel_id", |f| f.tunnel_id = -1),
        ("dst_process", |f| {
            f.dst_process = Some(flowlens_schemas::Process {
                pid: -1,
                ..Default::default()
            })
        }),
    ] {
        let mut f = sample_flow(1);
        set(&mut f);
        assert_eq!(FlowRow::try_from(f).unwrap_err().field, field);
    }
    for set in [
        (|d| d.queries = 1 << 32) as fn(&mut flowlens_schemas::Dns),
        |d| d.answered = -1,
        |d| d.latency_sum_ns = -1,
        |d| d.latencies_us.push(1 << 32),
        |d| d.latencies_us.push(-1),
        |d| d.last_query_type = 65_536,
    ] {
        let mut f = sample_flow(1);
        set(f.dns.as_mut().unwrap());
        assert_eq!(FlowRow::try_from(f).unwrap_err().field, "dns");
    }
    for set in [
        (|h| h.requests = 1 << 32) as fn(&mut flowlens_schemas::Http),
        |h| h.status_4xx = -1,
        |h| h.latency_max_ns = -1,
        |h| h.latencies_us.push(1 << 32),
        |h| h.latencies_us.push(-1),
        |h| h.last_status = 65_536,
        |h| h.last_status = -1,
    ] {
        let mut f = sample_flow(2);
        set(f.http.as_mut().unwrap());
        assert_eq!(FlowRow::try_from(f).unwrap_err().field, "http");
    }
    let mut f = sample_flow(1);
    f.ifindex = -3;
    assert!(FlowRow::try_from(f)
        .unwrap_err()
        .to_string()
        .contains("UInt32"));
}

#[test]
fn direction_is_the_enum8_value() {
    assert_eq!(DirectionColumn::from(Direction::Ingress) as i8, 0);
    assert_eq!(DirectionColumn::from(Direction::Egress) as i8, 1);
}

#[test]
fn columns_are_in_table_order() {
    use clickhouse::Row as _;
    let cols = FlowRow::COLUMN_NAMES;
    assert_eq!(cols.len(), 98);
    assert_eq!(
        &cols[..4],
        &["time_flow_start", "time_flow_end", "time_exported", "host"]
    );
    assert_eq!(cols[9], "direction");
    assert_eq!(cols[34], "dst_service");
    assert_eq!(
        &cols[35..38],
        &["kafka_topic", "kafka_partition", "kafka_offset"]
    );
    // Migration 0003 appends the version 2 columns after kafka_offset.
    assert_eq!(
        &cols[38..45],
        &[
            "src_pod_uid",
            "dst_pod_uid",
            "src_role",
            "dst_role",
            "locality",
            "if_pod",
            "if_namespace"
        ]
    );
    // Then the version 3 columns (0004, with 0002's retransmits and drops).
    assert_eq!(cols[45], "reverse_packets");
    assert_eq!(cols[64], "duplicate");
    // Then the record identity (0005).
    assert_eq!(
        &cols[65..71],
        &[
            "kafka_stream",
            "kafka_timestamp",
            "origin_topic",
            "origin_stream",
            "origin_partition",
            "origin_offset"
        ]
    );
    // Then the DNS statistics (0007).
    assert_eq!(cols[71], "dns_queries");
    assert_eq!(cols[81], "dns_latencies_us");
    assert_eq!(cols[83], "dns_last_query_type");
    // Then the HTTP statistics (0007 too).
    assert_eq!(cols[84], "http_requests");
    assert_eq!(cols[94], "http_latencies_us");
    assert_eq!(cols[97], "http_last_status");
}

#[test]
fn column_types_follow_the_struct() {
    use clickhouse::Row as _;
    let names: Vec<&str> = COLUMN_TYPES.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, FlowRow::COLUMN_NAMES);
}

#[test]
fn row_binary_has_the_encoded_len() {
    let mut row = FlowRow::try_from(sample_flow(300)).unwrap();
    row.kafka_topic = "x".repeat(200);
    let mut out = Vec::new();
    row.write_row_binary(&mut out);
    assert_eq!(out.len(), row.encoded_len());
    assert_eq!(row.as_ref().to_row(), row);
    assert_eq!(&out[..8], &row.time_flow_start.to_le_bytes());
    // The last columns are outer_dst_addr (`::`: 300 is no tunnel record), duplicate, the
    // identity (zeros and "" before the sink sets them), then the DNS and HTTP columns: 300
    // carries neither, so zeros, empty arrays and "".
    assert_eq!(&out[out.len() - 70 - 52 - 53..], &[0u8; 70 + 52 + 53]);
    // With DNS: the counts, sum and max, the array (length, then the values), the name, the type.
    let row = FlowRow::try_from(sample_flow(301)).unwrap();
    let mut out = Vec::new();
    row.write_row_binary(&mut out);
    assert_eq!(out.len(), row.encoded_len());
    let name = b"api.shop.svc.cluster.local";
    let mut tail = Vec::new();
    for count in [2u32, 2, 1, 1, 0, 0, 0, 2] {
        tail.extend_from_slice(&count.to_le_bytes());
    }
    tail.extend_from_slice(&2_001_000u64.to_le_bytes());
    tail.extend_from_slice(&1_500_000u64.to_le_bytes());
    tail.push(2);
    tail.extend_from_slice(&501u32.to_le_bytes());
    tail.extend_from_slice(&1_500u32.to_le_bytes());
    tail.push(name.len() as u8);
    tail.extend_from_slice(name);
    tail.extend_from_slice(&28u16.to_le_bytes());
    // No HTTP: zeros, an empty array and "".
    tail.extend_from_slice(&[0u8; 53]);
    assert_eq!(&out[out.len() - tail.len()..], &tail[..]);
    // With HTTP: the counts, sum and max, the array, the method, the path, the status.
    let row = FlowRow::try_from(sample_flow(302)).unwrap();
    let mut out = Vec::new();
    row.write_row_binary(&mut out);
    assert_eq!(out.len(), row.encoded_len());
    let mut tail = Vec::new();
    for count in [2u32, 2, 1, 0, 0, 1, 0, 2] {
        tail.extend_from_slice(&count.to_le_bytes());
    }
    tail.extend_from_slice(&48_302_000u64.to_le_bytes());
    tail.extend_from_slice(&45_000_000u64.to_le_bytes());
    tail.push(2);
    tail.extend_from_slice(&3_302u32.to_le_bytes());
    tail.extend_from_slice(&45_000u32.to_le_bytes());
    for s in [&b"GET"[..], b"/api/cart"] {
        tail.push(s.len() as u8);
        tail.extend_from_slice(s);
    }
    tail.extend_from_slice(&503u16.to_le_bytes());
    assert_eq!(&out[out.len() - tail.len()..], &tail[..]);
}

/// Rows of every shape: long strings (two-byte length varints), non-ASCII text, tunnel and
/// duplicate rows, reverse counters, processes on both ends, extreme integers.
fn varied_rows() -> Vec<FlowRow> {
    (0..40u32)
        .map(|i| {
            let mut f = sample_flow(i * 7);
            f.reverse_packets = i64::from(i) * 3;
            f.reverse_bytes = i64::from(i) * 300;
            f.reverse_tcp_flags = 0x12;
            f.duplicate = i % 3 == 0;
            f.dst_process = Some(Process {
                pid: 77,
                comm: "nginx: wörker".into(),
                cgroup_id: i64::MAX,
            });
            f.packets = i64::from(u32::MAX) * i64::from(i + 1);
            if i % 5 == 2 {
                f.dns = Some(flowlens_schemas::Dns {
                    queries: i64::from(u32::MAX),
                    latency_max_ns: i64::MAX,
                    latencies_us: (0..i64::from(i) * 2).map(|l| l << 24).collect(),
                    last_query: Some(format!("{}.ëxample", "q".repeat(i as usize * 6))),
                    last_query_type: u16::MAX.into(),
                    ..Default::default()
                });
            }
            let mut row = FlowRow::try_from(f).unwrap();
            row.kafka_topic = format!("topic-{}", "é".repeat(i as usize * 5));
            row.kafka_partition = u16::MAX - i as u16;
            row.kafka_offset = u64::MAX - u64::from(i);
            row.if_netns = "n".repeat(130 + i as usize * 40);
            row
        })
        .collect()
}

/// Reads one HTTP/1.1 request from `stream` and answers 200; returns its body (chunked or
/// with a Content-Length).
async fn capture_body(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut data = Vec::new();
    let mut chunk = [0u8; 65536];
    let head_end = loop {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed in the headers");
        data.extend_from_slice(&chunk[..n]);
        if let Some(p) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_lowercase();
    let mut rest = data[head_end..].to_vec();
    let complete = |rest: &[u8]| -> Option<Vec<u8>> {
        if let Some(len) = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map(|v| v.trim().parse::<usize>().unwrap())
        {
            return (rest.len() >= len).then(|| rest[..len].to_vec());
        }
        // Chunked: size in hex, CRLF, data, CRLF, ..., then a chunk of size 0.
        let (mut body, mut at) = (Vec::new(), 0);
        loop {
            let line_end = rest[at..].windows(2).position(|w| w == b"\r\n")? + at;
            let size = std::str::from_utf8(&rest[at..line_end]).unwrap();
            let size = usize::from_str_radix(size.split(';').next().unwrap(), 16).unwrap();
            if size == 0 {
                return Some(body);
            }
            let start = line_end + 2;
            if rest.len() < start + size + 2 {
                return None;
            }
            body.extend_from_slice(&rest[start..start + size]);
            at = start + size + 2;
        }
    };
    let body = loop {
        if let Some(body) = complete(&rest) {
            break body;
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed in the body");
        rest.extend_from_slice(&chunk[..n]);
    };
    stream
        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    body
}

/// The oracle is the `clickhouse` crate's own serde serializer: the body of its RowBinary
/// INSERT of the same rows (no compression, no validation, caught by a listener standing in
/// for the server) must be byte for byte what `write_row_binary` writes.
#[tokio::test]
async fn row_binary_is_byte_for_byte_the_crate_serializer() {
    let rows = varied_rows();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        capture_body(&mut stream).await
    });
    let client = clickhouse::Client::default()
        .with_url(url)
        .with_compression(clickhouse::Compression::None)
        .with_validation(false);
    let mut insert = client.insert::<FlowRow>("flows").await.unwrap();
    for row in &rows {
        insert.write(row).await.unwrap();
    }
    insert.end().await.unwrap();
    let crate_bytes = server.await.unwrap();

    let mut ours = Vec::new();
    for row in &rows {
        row.write_row_binary(&mut ours);
    }
    assert_eq!(
        ours.len(),
        rows.iter().map(FlowRow::encoded_len).sum::<usize>()
    );
    assert_eq!(crate_bytes.len(), ours.len());
    assert!(
        crate_bytes == ours,
        "RowBinary differs from the crate's serializer"
    );
}

#[test]
fn encoded_len_counts_strings() {
    let row = FlowRow::try_from(sample_flow(7)).unwrap();
    let strings = "node-a".len()
        + "eth0".len()
        + "02:42:ac:11:00:02".len()
        + "veth".len()
        + "cni-1234".len()
        + "web-7".len()
        + "shop".len()
        + "api".len()
        + "00000000-0000-4000-8000-000000000007".len()
        + "client".len()
        + "server".len()
        + "external".len()
        + "web-7".len()
        + "shop".len()
        + "curl".len()
        + "vxlan".len();
    assert_eq!(row.encoded_len(), FIXED_LEN + 34 + 2 + strings);
    assert_eq!(FIXED_LEN, 359);
    // A row with DNS: the name, and the array's length and four bytes per value.
    let with_dns = FlowRow::try_from(sample_flow(5)).unwrap();
    let without = FlowRow {
        dns_latencies_us: Vec::new(),
        dns_last_query: String::new(),
        ..with_dns.clone()
    };
    assert_eq!(
        with_dns.encoded_len() - without.encoded_len(),
        "api.shop.svc.cluster.local".len() + 2 * 4
    );
    // A row with HTTP: the method, the path, and the array.
    let with_http = FlowRow::try_from(sample_flow(6)).unwrap();
    let without = FlowRow {
        http_latencies_us: Vec::new(),
        http_last_method: String::new(),
        http_last_path: String::new(),
        ..with_http.clone()
    };
    assert_eq!(
        with_http.encoded_len() - without.encoded_len(),
        "GET".len() + "/api/cart".len() + 2 * 4
    );
    assert_eq!(varint_len(127), 1);
    assert_eq!(varint_len(128), 2);
}
