//! What the second ClickHouse engine of a run (`--clickhouse server18`) needs besides the
//! server: Debian's genuine clickhouse-server 18.16, a native server (started by the test kit's
//! `ClickHouse18`, scripts/stack/clickhouse18.sh on free ports), gets the `flows` table of
//! sql/clickhouse18/flows_minimal.sql (byte-compatible with the sink's RowBinary rows, no
//! rollups).
//!
//! Two things the sink needs are absent from 18.16, and the run supplies them without changing
//! the sink:
//!
//! - **migrations**: the sink runs with `sink.migrate_on_start = false` and
//!   `clickhouse.validation = false` (as sink/tests/clickhouse18.rs configures it); its start-up
//!   check wants every migration recorded in `schema_migrations`, so [`prepare`] records them
//!   (the minimal table stands for them: it holds every column they give `flows`).
//! - **the settings of its INSERTs**: every batch carries `insert_deduplication_token` and
//!   `deduplicate_blocks_in_dependent_materialized_views`, which 18.16 refuses ("Unknown
//!   setting", code 115). [`serve_filter`] is a small HTTP relay in a process of its own
//!   (`flowlens-bench settings-filter`) that removes those two query parameters and forwards
//!   everything else byte for byte; its CPU is measured and reported as a process of its own,
//!   not as ClickHouse's. (18.16's non-replicated MergeTree has no insert deduplication
//!   anyway: the exactly-once read-back after a reassignment still works, retries of a batch
//!   whose acknowledgement was lost could duplicate rows, which the loss check would show.)

use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use flowlens_testkit::{self as testkit, ChildGuard};

use crate::probe::ClickHouse;

/// Query parameters (settings) the sink sends that 18.16 does not know.
pub const UNKNOWN_TO_18: &[&str] = &[
    "insert_deduplication_token",
    "deduplicate_blocks_in_dependent_materialized_views",
];

/// The report's notes on a run with this engine.
pub fn notes() -> Vec<String> {
    vec![
        "ClickHouse is Debian's clickhouse-server 18.16 with the byte-compatible `flows` \
         table of sql/clickhouse18/flows_minimal.sql: no rollup tables or materialized \
         views (the chdb runs feed four rollups per row), the sink with \
         `sink.migrate_on_start = false` and `clickhouse.validation = false`."
            .to_string(),
        format!(
            "18.16 refuses the settings {:?} the sink sends with every INSERT: the sink \
             writes through `flowlens-bench settings-filter`, a relay in a process of its \
             own that drops them; its CPU is the row \"settings filter\", not counted as \
             ClickHouse's.",
            UNKNOWN_TO_18
        ),
        "Latency: 18.16's `time_inserted` is `now()` in whole seconds (no now64): each \
         row's latency is taken at the midpoint of its second, ± 500 ms."
            .to_string(),
    ]
}

/// Creates `flows` from sql/clickhouse18/flows_minimal.sql and records every migration the
/// sink embeds in `schema_migrations`, so the sink starts without migrating.
pub fn prepare(clickhouse: &ClickHouse) -> anyhow::Result<()> {
    let path = testkit::repo_root().join("sql/clickhouse18/flows_minimal.sql");
    let ddl = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    for statement in flowlens_sink::migrate::split_statements(&ddl) {
        clickhouse.query(&statement)?;
    }
    let table = flowlens_sink::migrate::MIGRATIONS_TABLE;
    clickhouse.query(&format!(
        "CREATE TABLE IF NOT EXISTS {table} (version UInt32, name String, applied_at DateTime) \
         ENGINE = MergeTree ORDER BY version"
    ))?;
    let values: Vec<String> = flowlens_sink::migrate::embedded()?
        .iter()
        .map(|m| format!("({}, '{}', now())", m.version, m.name.replace('\'', "")))
        .collect();
    clickhouse.query(&format!(
        "INSERT INTO {table} (version, name, applied_at) VALUES {}",
        values.join(", ")
    ))?;
    Ok(())
}

/// The settings filter in a process of its own (this binary's hidden `settings-filter`
/// subcommand), listening on a free port; killed on drop.
pub struct FilterProcess {
    pub port: u16,
    guard: ChildGuard,
}

impl FilterProcess {
    /// Starts the filter in front of `upstream` (`host:port`) and waits until it listens; its
    /// log goes to `dir`.
    pub fn spawn(upstream: &str, dir: &Path) -> Self {
        let port = testkit::free_port();
        let log = dir.join("settings-filter.log");
        let exe = std::env::current_exe().expect("the harness's own executable");
        let mut guard = ChildGuard::spawn(
            "settings filter",
            Command::new(exe)
                .args(["settings-filter", "--listen"])
                .arg(format!("127.0.0.1:{port}"))
                .args(["--upstream", upstream]),
            &log,
        );
        testkit::wait_port(port, &mut guard, &log, Duration::from_secs(10));
        Self { port, guard }
    }

    pub fn pid(&self) -> u32 {
        self.guard.id()
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Serves the filter forever: each client connection gets its own upstream connection;
/// requests go up with the `drop` query parameters removed, responses come back untouched.
pub fn serve_filter(listen: &str, upstream: &str, drop: &[&str]) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    let drop: Vec<String> = drop.iter().map(|s| s.to_string()).collect();
    for conn in listener.incoming() {
        let Ok(client) = conn else { continue };
        let upstream = upstream.to_string();
        let drop = drop.clone();
        std::thread::spawn(move || {
            if let Err(e) = relay(client, &upstream, &drop) {
                eprintln!("settings filter: {e}");
            }
        });
    }
    Ok(())
}

/// `GET /?a=1&b=2 HTTP/1.1\r\n` with the parameters named in `drop` removed.
pub fn filter_request_line(line: &str, drop: &[String]) -> String {
    let mut parts = line.splitn(3, ' ');
    let (Some(method), Some(target), Some(rest)) = (parts.next(), parts.next(), parts.next())
    else {
        return line.to_string();
    };
    let Some((path, query)) = target.split_once('?') else {
        return line.to_string();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or_default();
            !drop.iter().any(|d| d == name)
        })
        .collect();
    if kept.is_empty() {
        format!("{method} {path} {rest}")
    } else {
        format!("{method} {path}?{} {rest}", kept.join("&"))
    }
}

fn read_line(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> io::Result<bool> {
    buf.clear();
    Ok(reader.read_until(b'\n', buf)? > 0)
}

fn relay(client: TcpStream, upstream: &str, drop: &[String]) -> io::Result<()> {
    client.set_nodelay(true)?;
    let server = TcpStream::connect(upstream)?;
    server.set_nodelay(true)?;
    // Responses: copied back as they come (the server closes idle connections: so do we).
    let mut from_server = server.try_clone()?;
    let mut to_client = client.try_clone()?;
    let back = std::thread::spawn(move || {
        let _ = io::copy(&mut from_server, &mut to_client);
        let _ = to_client.shutdown(Shutdown::Both);
    });
    let mut reader = BufReader::with_capacity(64 * 1024, client);
    let mut out = BufWriter::with_capacity(64 * 1024, server.try_clone()?);
    let mut line = Vec::with_capacity(1024);
    let result = (|| -> io::Result<()> {
        while read_line(&mut reader, &mut line)? {
            if line == b"\r\n" {
                continue; // stray CRLF between requests
            }
            let request = String::from_utf8_lossy(&line);
            out.write_all(filter_request_line(&request, drop).as_bytes())?;
            // Headers: framing of the body.
            let mut length = 0u64;
            let mut chunked = false;
            loop {
                if !read_line(&mut reader, &mut line)? {
                    return Ok(());
                }
                out.write_all(&line)?;
                if line == b"\r\n" || line == b"\n" {
                    break;
                }
                let text = String::from_utf8_lossy(&line).to_ascii_lowercase();
                if let Some((name, value)) = text.split_once(':') {
                    match name.trim() {
                        "content-length" => length = value.trim().parse().unwrap_or(0),
                        "transfer-encoding" => chunked = value.contains("chunked"),
                        _ => {}
                    }
                }
            }
            out.flush()?; // a client may wait for `100 Continue` before its body
            if chunked {
                loop {
                    if !read_line(&mut reader, &mut line)? {
                        return Ok(());
                    }
                    out.write_all(&line)?;
                    let size = String::from_utf8_lossy(&line);
                    let size = size.trim().split(';').next().unwrap_or_default();
                    let size = u64::from_str_radix(size, 16).unwrap_or(0);
                    if size == 0 {
                        // Trailers up to the empty line.
                        while read_line(&mut reader, &mut line)? {
                            out.write_all(&line)?;
                            if line == b"\r\n" || line == b"\n" {
                                break;
                            }
                        }
                        break;
                    }
                    // The chunk and its CRLF.
                    io::copy(&mut (&mut reader).take(size + 2), &mut out)?;
                }
            } else if length > 0 {
                io::copy(&mut (&mut reader).take(length), &mut out)?;
            }
            out.flush()?;
        }
        Ok(())
    })();
    let _ = out.flush();
    let _ = server.shutdown(Shutdown::Write);
    let _ = back.join();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_line_loses_only_the_named_settings() {
        let drop: Vec<String> = UNKNOWN_TO_18.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            filter_request_line(
                "POST /?database=default&query=INSERT+INTO+t&decompress=1&insert_deduplicate=1\
                 &insert_deduplication_token=t%2F0%2F1-9\
                 &deduplicate_blocks_in_dependent_materialized_views=1 HTTP/1.1\r\n",
                &drop
            ),
            "POST /?database=default&query=INSERT+INTO+t&decompress=1&insert_deduplicate=1 \
             HTTP/1.1\r\n"
        );
        assert_eq!(
            filter_request_line("GET /?insert_deduplication_token=x HTTP/1.1\r\n", &drop),
            "GET / HTTP/1.1\r\n"
        );
        assert_eq!(
            filter_request_line("GET /ping HTTP/1.1\r\n", &drop),
            "GET /ping HTTP/1.1\r\n"
        );
    }

    /// Through a real socket pair: a chunked request and a Content-Length one on the same
    /// connection arrive upstream intact, with the query filtered.
    #[test]
    fn relays_chunked_and_sized_bodies() {
        let up = TcpListener::bind("127.0.0.1:0").unwrap();
        let up_addr = up.local_addr().unwrap().to_string();
        let front = TcpListener::bind("127.0.0.1:0").unwrap();
        let front_addr = front.local_addr().unwrap();
        std::thread::spawn(move || {
            let (c, _) = front.accept().unwrap();
            let drop = vec!["insert_deduplication_token".to_string()];
            relay(c, &up_addr, &drop).unwrap();
        });
        let mut client = TcpStream::connect(front_addr).unwrap();
        let sent = "POST /?q=1&insert_deduplication_token=a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                    5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\n\r\n\
                    POST /?q=2 HTTP/1.1\r\nContent-Length: 4\r\n\r\nwxyz";
        client.write_all(sent.as_bytes()).unwrap();
        let (mut server, _) = up.accept().unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let expected = sent.replace("&insert_deduplication_token=a", "");
        let mut got = vec![0u8; expected.len()];
        server.read_exact(&mut got).unwrap();
        assert_eq!(String::from_utf8(got).unwrap(), expected);
        server.write_all(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
        let mut back = [0u8; 19];
        client.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"HTTP/1.1 200 OK\r\n\r\n");
    }
}
