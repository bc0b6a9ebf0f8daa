//! A real HTTP/1.1 server (Python's http.server, keep-alive) inside a namespace, answering
//! known paths with known statuses, and curl as the client whose own timings are the oracle.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::ChildGuard;

/// What the server answers: `/ok*` 200, `/moved` 301, `/fail` 500, `/slow` 200 after
/// [`SLOW_MS`], a POST 201, anything else 404; bodies are "body of <path>\n".
const SERVER: &str = r#"
import sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self, status):
        body = ("body of %s\n" % self.path).encode()
        self.send_response(status)
        if status == 301:
            self.send_header("Location", "/ok")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        if self.path.startswith("/ok"):
            self.answer(200)
        elif self.path == "/moved":
            self.answer(301)
        elif self.path == "/fail":
            self.answer(500)
        elif self.path == "/slow":
            time.sleep(int(sys.argv[3]) / 1000)
            self.answer(200)
        else:
            self.answer(404)
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.answer(201)
    def log_message(self, *args):
        pass

ThreadingHTTPServer((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()
"#;

/// How long `/slow` waits before answering.
pub const SLOW_MS: u64 = 150;

/// The server process, stopped on drop.
pub struct WebServer {
    _dir: tempfile::TempDir,
    _child: ChildGuard,
}

/// Starts the server on `listen`:`port` in namespace `ns` and waits until it answers.
pub fn web_server(ns: &str, listen: Ipv4Addr, port: u16) -> WebServer {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("server.py");
    std::fs::write(&script, SERVER).unwrap();
    let child = ChildGuard::spawn(
        "http.server",
        Command::new("ip")
            .args(["netns", "exec", ns, "/usr/bin/python3"])
            .arg(&script)
            .args([listen.to_string(), port.to_string(), SLOW_MS.to_string()]),
        &dir.path().join("server.log"),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while curl(
        ns,
        None,
        &[format!("http://{listen}:{port}/ok-probe")],
        None,
    )
    .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "http.server on {listen}:{port} not answering"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    WebServer {
        _dir: dir,
        _child: child,
    }
}

/// One transfer as curl reported it.
#[derive(Debug, Clone, PartialEq)]
pub struct Transfer {
    pub status: u16,
    /// From the start until the request could be sent (`time_pretransfer`), seconds.
    pub pretransfer_s: f64,
    /// From the start until the first response byte (`time_starttransfer`), seconds.
    pub starttransfer_s: f64,
}

impl Transfer {
    /// curl's view of the server's latency: request sent to first response byte, ms.
    pub fn latency_ms(&self) -> f64 {
        (self.starttransfer_s - self.pretransfer_s) * 1e3
    }
}

/// One curl run from namespace `ns` (source port `local_port` if given) over `urls`, one
/// connection kept alive across them; `post` sends that body as a POST. Empty when curl
/// failed to connect.
pub fn curl(
    ns: &str,
    local_port: Option<u16>,
    urls: &[String],
    post: Option<&str>,
) -> Vec<Transfer> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "curl", "-s", "-o", "/dev/null"])
        .args(["--max-time", "20"])
        .args([
            "-w",
            "%{http_code} %{time_pretransfer} %{time_starttransfer}\\n",
        ]);
    if let Some(port) = local_port {
        cmd.args(["--local-port", &port.to_string()]);
    }
    if let Some(body) = post {
        cmd.args(["--data-binary", body]);
    }
    let out = cmd.args(urls).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let status: u16 = w.next()?.parse().ok()?;
            (status != 0).then_some(Transfer {
                status,
                pretransfer_s: w.next()?.parse().ok()?,
                starttransfer_s: w.next()?.parse().ok()?,
            })
        })
        .collect()
}
