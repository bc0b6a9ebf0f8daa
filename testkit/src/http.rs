//! One-request HTTP/1.0 clients for the stages' probes and the ClickHouse fronts.

use std::net::TcpStream;
use std::time::{Duration, Instant};

/// One HTTP/1.0 request to 127.0.0.1:`port`; returns (status, body).
pub fn http(port: u16, method: &str, path_and_query: &str, body: &str) -> (u16, String) {
    let addr = format!("127.0.0.1:{port}");
    http_to(&addr, method, path_and_query, body, Duration::from_secs(20)).unwrap()
}

/// One HTTP/1.0 request to `addr` (`host:port`), each read and write bounded by `timeout`;
/// returns (status, body), or the connection's error.
pub fn http_to(
    addr: &str,
    method: &str,
    path_and_query: &str,
    body: &str,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    http_with_headers(addr, method, path_and_query, "", body, timeout)
}

/// [`http_to`] with more request `headers` (each line ending in `\r\n`).
pub fn http_with_headers(
    addr: &str,
    method: &str,
    path_and_query: &str,
    headers: &str,
    body: &str,
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "{method} {path_and_query} HTTP/1.0\r\nHost: {addr}\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// `GET path` on 127.0.0.1:`port`: `(status, body)`, `None` while nothing listens there or
/// the connection fails (a server starting or stopping may reset it).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = format!("127.0.0.1:{port}");
    http_to(&addr, "GET", path, "", Duration::from_secs(20)).ok()
}

/// Polls `GET path` (a stage's `/readyz` or `/healthz`) until it answers `status` with a body
/// containing `needle`, at most `timeout`; returns that body, panics with the last answer.
pub fn wait_probe(port: u16, path: &str, status: u16, needle: &str, timeout: Duration) -> String {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < timeout {
        last = http_get(port, path);
        if let Some((s, body)) = &last {
            if *s == status && body.contains(needle) {
                return body.clone();
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "{path} on :{port} never answered {status} with `{needle}` in {timeout:?}; last: {last:?}"
    );
}

/// Polls `GET /healthz` every half second for `period`: it must answer 200 each time.
pub fn assert_alive_for(port: u16, period: Duration) {
    let start = Instant::now();
    while start.elapsed() < period {
        let (status, body) = http_get(port, "/healthz").expect("metrics endpoint listening");
        assert_eq!(status, 200, "/healthz: {body}");
        std::thread::sleep(Duration::from_millis(500));
    }
}
