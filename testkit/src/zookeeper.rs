//! Debian's ZooKeeper (package `zookeeper`) as a standalone server on a free loopback port with
//! a temporary data directory, run directly with java (not the system service); stopped on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{free_port, wait_port, ChildGuard};

/// The server's jar (its manifest names the libraries it needs).
pub const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";

pub struct ZooKeeper {
    pub port: u16,
    dir: tempfile::TempDir,
    _guard: ChildGuard,
}

impl ZooKeeper {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("zoo.cfg");
        std::fs::write(
            &config,
            format!(
                "tickTime=500\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={port}\n\
                 clientPortAddress=127.0.0.1\nadmin.enableServer=false\n\
                 4lw.commands.whitelist=srvr\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let log = dir.path().join("zookeeper.log");
        let mut guard = ChildGuard::spawn(
            "zookeeper",
            Command::new("java")
                .arg("-cp")
                .arg(format!("/etc/zookeeper/conf:{ZOOKEEPER_JAR}"))
                .arg(format!("-Dzookeeper.log.dir={}", dir.path().display()))
                .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
                .arg(&config),
            &log,
        );
        wait_port(port, &mut guard, &log, Duration::from_secs(60));
        let start = Instant::now();
        while !serving(port) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "zookeeper on {port} is not serving requests"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            port,
            dir,
            _guard: guard,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("zookeeper.log")).unwrap_or_default()
    }
}

/// The `srvr` four-letter command reports the server's mode: it serves sessions. (`ruok`
/// answers as soon as the process listens, before sessions are accepted; a ClickHouse 18.16
/// whose DDL worker meets a ZooKeeper that closes its handshake crashes.)
fn serving(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut answer = String::new();
    s.write_all(b"srvr").is_ok()
        && s.read_to_string(&mut answer).is_ok()
        && answer.contains("Mode: standalone")
}
