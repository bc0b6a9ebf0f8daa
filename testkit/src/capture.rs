//! A packet capture on one interface of a namespace (dumpcap, from Debian's Wireshark), read
//! back with tshark: the capture's own times of queries and answers (DNS matched by Wireshark
//! by id, HTTP status lines to request lines in order) are the L7 tests' oracle for the
//! latencies flowlens measures.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::ChildGuard;

/// A running capture; [`Capture::stop`] ends it.
pub struct Capture {
    dir: tempfile::TempDir,
    child: ChildGuard,
}

impl Capture {
    /// Starts capturing on `interface` in namespace `ns` and waits until packets are recorded.
    pub fn start(ns: &str, interface: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("capture.pcapng");
        let log = dir.path().join("dumpcap.log");
        let child = ChildGuard::spawn(
            "dumpcap",
            Command::new("ip")
                .args(["netns", "exec", ns, "dumpcap", "-q", "-i", interface, "-w"])
                .arg(&file),
            &log,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("Capturing on")
        {
            assert!(
                Instant::now() < deadline,
                "dumpcap did not start on {interface}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { dir, child }
    }

    /// Stops the capture (all packets written) and returns the file.
    pub fn stop(mut self) -> CaptureFile {
        assert!(self.child.stop_with(libc::SIGINT, Duration::from_secs(20)));
        CaptureFile {
            path: self.dir.path().join("capture.pcapng"),
            _dir: self.dir,
        }
    }
}

/// A finished capture.
pub struct CaptureFile {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl CaptureFile {
    /// tshark's fields `fields` of the packets matching display filter `filter`, one Vec per
    /// packet.
    pub fn fields(&self, filter: &str, fields: &[&str]) -> Vec<Vec<String>> {
        let mut cmd = Command::new("tshark");
        cmd.arg("-r")
            .arg(&self.path)
            .args(["-Y", filter, "-T", "fields"]);
        for f in fields {
            cmd.args(["-e", f]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "tshark: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect()
    }

    /// Wireshark's DNS response times (`dns.time`, query to response, matched by id), in ms, by
    /// the client's port.
    pub fn dns_times_ms(&self) -> BTreeMap<u16, Vec<f64>> {
        let mut by_port: BTreeMap<u16, Vec<f64>> = BTreeMap::new();
        let fields = ["udp.dstport", "tcp.dstport", "dns.time"];
        for row in self.fields("dns.flags.response == 1", &fields) {
            let port = row[0].parse().or_else(|_| row[1].parse()).unwrap();
            if let Ok(s) = row[2].parse::<f64>() {
                by_port.entry(port).or_default().push(s * 1e3);
            }
        }
        by_port
    }

    /// HTTP/1.x response times by the capture's clock, in ms, by the client's port, in order:
    /// each TCP segment from `server_port` whose payload starts with "HTTP/1." answers the
    /// oldest unanswered segment to it that starts a request line. (Wireshark's own `http.time`
    /// runs to the segment that completes the response, its body's last, not to the status
    /// line.)
    pub fn http_times_ms(&self, server_port: u16) -> BTreeMap<u16, Vec<f64>> {
        let mut asked: BTreeMap<u16, std::collections::VecDeque<f64>> = BTreeMap::new();
        let mut times: BTreeMap<u16, Vec<f64>> = BTreeMap::new();
        let filter = format!("tcp.port == {server_port} && tcp.len > 0");
        let fields = [
            "frame.time_relative",
            "tcp.srcport",
            "tcp.dstport",
            "tcp.payload",
        ];
        for row in self.fields(&filter, &fields) {
            let at: f64 = row[0].parse().unwrap();
            let (src, dst): (u16, u16) = (row[1].parse().unwrap(), row[2].parse().unwrap());
            let start: Vec<u8> = (0..row[3].len().min(16) / 2)
                .map(|i| u8::from_str_radix(&row[3][2 * i..2 * i + 2], 16).unwrap())
                .collect();
            if src == server_port && start.starts_with(b"HTTP/1.") {
                if let Some(t) = asked.get_mut(&dst).and_then(|q| q.pop_front()) {
                    times.entry(dst).or_default().push((at - t) * 1e3);
                }
            } else if dst == server_port
                && ["GET ", "POST ", "PUT ", "HEAD ", "DELETE "]
                    .iter()
                    .any(|m| start.starts_with(m.as_bytes()))
            {
                asked.entry(src).or_default().push_back(at);
            }
        }
        times
    }
}
