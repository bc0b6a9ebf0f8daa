//! The socket programs on real traffic between two network namespaces: TCP RTT over a 20 ms
//! each-way delay line, retransmissions under deterministic loss bounded by the sockets'
//! TCP_INFO, drops with the kernel's reason against nftables' own counters, and the process and
//! cgroup owning each end. Everything is read through `SocketStats`, the API the collector's
//! record builder uses.
//!
//! This kernel has no netem (CONFIG_NET_SCH_NETEM is not set, nor fq/etf), so the delay comes
//! from a user-space delay line: two TUN devices, one in each namespace, joined by a thread that
//! forwards each packet 20 ms after reading it. Loss comes from an nftables rule in B's input
//! dropping every 33rd packet of the transfer (`numgen inc`), so there always is loss.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::require_root;
use flowlens_collector::filter::FilterConfig;
use flowlens_collector::programs::Programs;
use flowlens_collector::sockets::{ConnExtras, Endpoint, ProcessInfo, SocketOptions, SocketStats};
use flowlens_testkit::{in_netns, DelayLine, NetnsPair};

/// One test at a time: each loads its own host-wide programs, and the machine has two cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn load(options: &SocketOptions) -> (Programs, SocketStats) {
    let (probe, stats) = load_soft(options);
    assert!(stats.disabled().is_empty(), "{:?}", stats.disabled());
    (probe, stats)
}

/// Loads even if some socket feature is disabled.
fn load_soft(options: &SocketOptions) -> (Programs, SocketStats) {
    let filters = FilterConfig::default().parse().unwrap();
    let mut probe = Programs::load_with_sockets(4096, 1, &filters, options).expect("loading");
    let stats = SocketStats::new(probe.take_sockets().unwrap(), Duration::from_secs(60));
    (probe, stats)
}

fn ep(ip: impl Into<IpAddr>, port: u16) -> Endpoint {
    Endpoint::new(ip.into(), port)
}

fn nft(ns: &str, command: &str) {
    NetnsPair::exec(ns, &["nft", command]);
}

/// (packets, bytes) of the only `counter` in chain `inet fl input` of namespace `ns`.
fn nft_counter(ns: &str) -> (u64, u64) {
    let out = NetnsPair::exec(ns, &["nft", "list", "chain", "inet", "fl", "input"]);
    let words: Vec<&str> = out.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| *w == "counter")
        .unwrap_or_else(|| panic!("no counter in {out}"));
    assert_eq!(
        (words[at + 1], words[at + 3]),
        ("packets", "bytes"),
        "{out}"
    );
    (
        words[at + 2].parse().unwrap(),
        words[at + 4].parse().unwrap(),
    )
}

/// A drop rule (`rule`, with `counter drop` appended) in B's input hook.
fn drop_in_input(ns: &str, rule: &str) {
    nft(ns, "add table inet fl");
    nft(
        ns,
        "add chain inet fl input { type filter hook input priority 0; policy accept; }",
    );
    nft(ns, &format!("add rule inet fl input {rule} counter drop"));
}

fn tcp_info(fd: RawFd) -> libc::tcp_info {
    // SAFETY: tcp_info is plain data; getsockopt fills at most `len` bytes.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO");
    info
}

/// A TcpExt counter (/proc/net/netstat) of namespace `ns`.
fn tcp_ext(ns: &str, name: &str) -> u64 {
    let text = in_netns(ns, || {
        std::fs::read_to_string("/proc/thread-self/net/netstat").unwrap()
    });
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("TcpExt:")).collect();
    let names = lines[0].split_whitespace();
    let values = lines[1].split_whitespace();
    names
        .zip(values)
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or_else(|| panic!("no TcpExt {name}"))
}

/// Scans and takes the extras of (proto, a, b), failing if there are none.
fn scan_take(stats: &mut SocketStats, proto: u8, a: &Endpoint, b: &Endpoint) -> ConnExtras {
    stats.scan().unwrap();
    stats
        .take(proto, a, b)
        .unwrap_or_else(|| panic!("no extras for {proto} {a:?} {b:?}"))
}

/// UDP (IPv4, then IPv6) to a port that nftables drops in B's input: every datagram is counted
/// once, with its IP length and the reason NETFILTER_DROP; a later scan only has what was dropped since; a
/// conversation nobody claims comes back from `unclaimed` in the packets' orientation.
#[test]
fn udp_drops_with_reason_and_exact_bytes() {
    require_root();
    let _serial = serial();
    let pair = NetnsPair::new("d");
    let (_probe, mut stats) = load(&SocketOptions::default());
    drop_in_input(&pair.ns_b, "udp dport 7777");

    let tx = in_netns(&pair.ns_a, || UdpSocket::bind((pair.ip_a, 0)).unwrap());
    let port = tx.local_addr().unwrap().port();
    let (a, b) = (ep(pair.ip_a, port), ep(pair.ip_b, 7777));
    let send = |n: usize, payload: usize| {
        for _ in 0..n {
            tx.send_to(&vec![5u8; payload], (pair.ip_b, 7777)).unwrap();
        }
        // The veth hands each datagram to B's backlog; let the softirq drop them.
        std::thread::sleep(Duration::from_millis(200));
    };

    send(50, 100);
    let first = scan_take(&mut stats, 17, &b, &a);
    println!("first scan: {first:?}");
    assert_eq!(
        first,
        ConnExtras {
            drops: 50,
            drop_bytes: 50 * (20 + 8 + 100),
            drop_reason: "NETFILTER_DROP".into(),
            drops_by_reason: vec![("NETFILTER_DROP".into(), 50, 50 * 128)],
            ..Default::default()
        }
    );
    assert_eq!(nft_counter(&pair.ns_b), (50, 50 * 128));

    // Nothing new: nothing to take.
    stats.scan().unwrap();
    assert_eq!(stats.take(17, &a, &b), None);

    // Ten more of another size: only those.
    send(10, 300);
    stats.scan().unwrap();
    let unclaimed = stats.unclaimed();
    let ours: Vec<_> = unclaimed
        .iter()
        .filter(|(proto, x, y, _)| *proto == 17 && (*x == a || *y == a))
        .collect();
    assert_eq!(ours.len(), 1, "{unclaimed:?}");
    let (_, src, dst, extras) = ours[0];
    assert_eq!((src, dst), (&a, &b), "oriented as the dropped packets");
    assert_eq!(
        (extras.drops, extras.drop_bytes, extras.drop_reason.as_str()),
        (10, 10 * (20 + 8 + 300), "NETFILTER_DROP")
    );
    assert_eq!(stats.take(17, &a, &b), None, "unclaimed removed it");

    // IPv6: the addresses and the 40-byte header from the packet itself.
    let tx6 = in_netns(&pair.ns_a, || UdpSocket::bind((pair.ip6_a, 0)).unwrap());
    for _ in 0..20 {
        tx6.send_to(&[6u8; 100], (pair.ip6_b, 7777)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let (a6, b6) = (
        ep(pair.ip6_a, tx6.local_addr().unwrap().port()),
        ep(pair.ip6_b, 7777),
    );
    let v6 = scan_take(&mut stats, 17, &a6, &b6);
    assert_eq!(
        (v6.drops, v6.drop_bytes, v6.drop_reason.as_str()),
        (20, 20 * (40 + 8 + 100), "NETFILTER_DROP")
    );
}

/// A 8 MB transfer through an nftables rule dropping every 33rd data packet in B's input: the
/// segments the kernel retransmitted are counted per conversation and bounded by TCP_INFO.
///
/// The bound: `tcpi_total_retrans` adds `tcp_skb_pcount(skb)` (segments) for every retransmit
/// attempt in `__tcp_retransmit_skb`, before the packet is handed to IP; the program adds the
/// same `tcp_gso_segs` only when the tracepoint reports success (err == 0). With GSO on the veth
/// one retransmitted skb may carry several segments, so counting tracepoint events would
/// undercount: it is segments on both sides. Hence
/// `total_retrans(A)+total_retrans(B) - TCPRetransFail - SYN-ACK retransmits <= retransmits
/// <= total_retrans(A)+total_retrans(B)`: a SYN-ACK resent by B's request socket (a lost
/// handshake ACK on a loaded machine) goes through tcp_rtx_synack, not the tracepoint, yet the
/// accepted socket starts with `total_retrans = req->num_retrans`; B's TCPSynRetrans counts them
/// (B sends no SYN of its own).
/// The dropped packets themselves are drops with reason NETFILTER_DROP, as many as nftables
/// counted (one per skb, GSO or not, bytes = skb->len = nftables' bytes); B's TCP drops others
/// itself (duplicates of data it already had, out-of-window segments), each with its reason.
#[test]
fn retransmits_bounded_by_tcp_info_and_drops_by_nftables() {
    require_root();
    let _serial = serial();
    let pair = NetnsPair::new("r");
    let (probe, mut stats) = load(&SocketOptions::default());
    drop_in_input(
        &pair.ns_b,
        &format!(
            "ip saddr {} tcp dport 5005 ct state established numgen inc mod 33 == 7",
            pair.ip_a
        ),
    );
    let cost_before = probe.socket_cost();

    const BYTES: usize = 8 << 20;
    let listener = in_netns(&pair.ns_b, || TcpListener::bind((pair.ip_b, 5005)).unwrap());
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        (got.len(), s)
    });
    let started = Instant::now();
    let mut client = in_netns(&pair.ns_a, || {
        TcpStream::connect(SocketAddr::from((pair.ip_b, 5005))).unwrap()
    });
    let port = client.local_addr().unwrap().port();
    client.write_all(&vec![1u8; BYTES]).unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let (received, server_stream) = server.join().unwrap();
    assert_eq!(received, BYTES);
    let elapsed = started.elapsed();
    std::thread::sleep(Duration::from_millis(300));

    let total = |c: &TcpStream, s: &TcpStream| {
        u64::from(tcp_info(c.as_raw_fd()).tcpi_total_retrans)
            + u64::from(tcp_info(s.as_raw_fd()).tcpi_total_retrans)
    };
    let failed = tcp_ext(&pair.ns_a, "TCPRetransFail") + tcp_ext(&pair.ns_b, "TCPRetransFail");
    let synack_resent = tcp_ext(&pair.ns_b, "TCPSynRetrans");
    let before = total(&client, &server_stream);
    let dropped_before = nft_counter(&pair.ns_b);
    let (a, b) = (ep(pair.ip_a, port), ep(pair.ip_b, 5005));
    let extras = scan_take(&mut stats, 6, &a, &b);
    let after = total(&client, &server_stream);
    let dropped_after = nft_counter(&pair.ns_b);
    println!(
        "8 MB in {elapsed:?}: retransmits {} (tcpi_total_retrans {before}..{after}, \
         TCPRetransFail {failed}, SYN-ACKs resent {synack_resent}), drops {} / {} B by reason {:?} (nftables \
         {dropped_before:?}..{dropped_after:?}), last reason {}",
        extras.retransmits,
        extras.drops,
        extras.drop_bytes,
        extras.drops_by_reason,
        extras.drop_reason
    );
    assert!(extras.retransmits > 0, "{extras:?}");
    assert!(
        before.saturating_sub(failed + synack_resent) <= extras.retransmits
            && extras.retransmits <= after,
        "retransmits {} outside [{before} - {failed} - {synack_resent}, {after}]",
        extras.retransmits
    );
    let (_, nf_packets, nf_bytes) = extras
        .drops_by_reason
        .iter()
        .find(|(r, _, _)| r == "NETFILTER_DROP")
        .cloned()
        .unwrap_or_else(|| panic!("no NETFILTER_DROP in {extras:?}"));
    assert!(
        (dropped_before.0..=dropped_after.0).contains(&nf_packets)
            && (dropped_before.1..=dropped_after.1).contains(&nf_bytes),
        "NETFILTER_DROP {nf_packets} / {nf_bytes} B vs nftables {dropped_before:?}..{dropped_after:?}"
    );
    assert!(dropped_before.0 > 0);
    let by_reason: u64 = extras.drops_by_reason.iter().map(|(_, n, _)| n).sum();
    let bytes_by_reason: u64 = extras.drops_by_reason.iter().map(|(_, _, b)| b).sum();
    assert_eq!(
        (by_reason, bytes_by_reason),
        (extras.drops, extras.drop_bytes)
    );
    assert!(extras.rtt_ns > 0, "a veth RTT sample");

    // Kernel cost of the socket programs during the transfer (kernel.bpf_stats_enabled=1).
    for (name, time, runs) in probe.socket_cost() {
        let (t0, r0) = cost_before
            .iter()
            .find(|(n, _, _)| *n == name)
            .map_or((Duration::ZERO, 0), |(_, t, r)| (*t, *r));
        let runs = runs - r0;
        if runs > 0 {
            println!(
                "{name}: {runs} runs, {:.0} ns/run",
                (time - t0).as_nanos() as f64 / runs as f64
            );
        }
    }
    drop(server_stream);
}

/// TCP request/response over a path with 20 ms of delay each way: the RTT the kernel measured
/// (srtt, taken by tcp_probe at the last segment received) is the 40 ms round trip plus the
/// delay line's own latency.
#[test]
fn rtt_over_a_40_ms_round_trip() {
    require_root();
    let _serial = serial();
    let pair = NetnsPair::new("t");
    let line = DelayLine::new(&pair, Duration::from_millis(20));
    let (_probe, mut stats) = load(&SocketOptions::default());

    let listener = in_netns(&pair.ns_b, || TcpListener::bind((line.b, 5004)).unwrap());
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut request = [0u8; 1000];
        while s.read_exact(&mut request).is_ok() {
            s.write_all(&request).unwrap();
        }
    });
    let mut client = in_netns(&pair.ns_a, || {
        TcpStream::connect(SocketAddr::from((line.b, 5004))).unwrap()
    });
    client.set_nodelay(true).unwrap();
    let port = client.local_addr().unwrap().port();
    let started = Instant::now();
    let rounds = 15;
    let mut reply = [0u8; 1000];
    for i in 0..rounds {
        client.write_all(&[i as u8; 1000]).unwrap();
        client.read_exact(&mut reply).unwrap();
    }
    let per_round = started.elapsed() / rounds;
    let extras = scan_take(&mut stats, 6, &ep(line.a, port), &ep(line.b, 5004));
    let kernel_rtt_us = tcp_info(client.as_raw_fd()).tcpi_rtt;
    println!(
        "rtt_ns {} (TCP_INFO srtt {kernel_rtt_us} us, application round trip {per_round:?})",
        extras.rtt_ns
    );
    assert!(
        (38_000_000..=60_000_000).contains(&extras.rtt_ns),
        "rtt {} ns outside 38-60 ms",
        extras.rtt_ns
    );
    assert_eq!(
        (extras.retransmits, extras.drops),
        (0, 0),
        "no loss on the delay line"
    );
    drop(client);
    server.join().unwrap();
    drop(line);
}

/// The cgroup v2 hierarchy's mount point.
fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&"cgroup2"))
        .map(|f| PathBuf::from(f[1]))
        .expect("a cgroup2 mount (the programs report cgroup v2 ids)")
}

/// This process's cgroup v2 id: the inode of its directory in the cgroup2 hierarchy.
fn own_cgroup_id(root: &std::path::Path) -> u64 {
    let me = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let path = me
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 line in /proc/self/cgroup");
    std::fs::metadata(root.join(path.trim_start_matches('/')))
        .unwrap()
        .ino()
}

/// Which process owns each end: a child process `flsender` (bash under another name) in its own
/// cgroup connects from A, a thread `flreceiver` of this process answers in B; unconnected UDP
/// sockets (one bound to B's wildcard address) resolve through their local end. Checked with
/// the sock_send_length/sock_recv_length tracepoints and with the kprobe fallback (on a kernel
/// without kprobes: that the feature is disabled with the reason, the rest still running).
#[test]
fn processes_and_cgroups_of_both_ends() {
    require_root();
    let _serial = serial();
    let root = cgroup2_root();
    let own_cgroup = own_cgroup_id(&root);
    let me = std::process::id();
    for force_kprobes in [false, true] {
        let pair = NetnsPair::new("o");
        let options = SocketOptions {
            force_kprobes,
            ..Default::default()
        };
        let (probe, mut stats) = load_soft(&options);
        if force_kprobes && !std::path::Path::new("/sys/bus/event_source/devices/kprobe").exists() {
            println!("no kprobes in this kernel: {:?}", stats.disabled());
            assert_eq!(stats.disabled().len(), 1, "{:?}", stats.disabled());
            let (feature, why) = &stats.disabled()[0];
            assert_eq!(feature.name(), "processes");
            assert!(why.contains("CONFIG_KPROBES"), "{why}");
            assert_eq!(stats.programs().len(), 3, "the other features run");
            continue;
        }
        assert!(stats.disabled().is_empty(), "{:?}", stats.disabled());
        let expect_program = if force_kprobes {
            "flowlens_sock_owner_kprobe"
        } else {
            "flowlens_sock_owner"
        };
        assert!(
            stats.programs().contains(&expect_program),
            "{:?}",
            stats.programs()
        );

        // TCP: a child process in a fresh cgroup -> this process.
        let cgroup = root.join(format!("flowlens-test-{me}-{force_kprobes}"));
        std::fs::create_dir_all(&cgroup).unwrap();
        let cgroup_id = std::fs::metadata(&cgroup).unwrap().ino();
        let dir = tempfile::tempdir().unwrap();
        let sender = dir.path().join("flsender");
        std::os::unix::fs::symlink("/usr/bin/bash", &sender).unwrap();
        let listener = in_netns(&pair.ns_b, || TcpListener::bind((pair.ip_b, 5006)).unwrap());
        let receiver = std::thread::Builder::new()
            .name("flreceiver".into())
            .spawn(move || {
                let (mut s, peer) = listener.accept().unwrap();
                let mut line = [0u8; 6];
                s.read_exact(&mut line).unwrap();
                s.write_all(b"bye\n").unwrap();
                (peer.port(), s)
            })
            .unwrap();
        // Into the cgroup first: `ip netns exec` remounts /sys for the namespace, where the
        // cgroup2 mount is not visible; the cgroup is inherited across fork and exec.
        let script = format!(
            "echo $$ > {procs} && exec ip netns exec {ns} {sender} -c 'echo $$; \
             exec 3<>/dev/tcp/{b}/5006; printf \"hello\\n\" >&3; read -r reply <&3; \
             echo \"$reply\"'",
            procs = cgroup.join("cgroup.procs").display(),
            ns = pair.ns_a,
            sender = sender.display(),
            b = pair.ip_b,
        );
        let out = Command::new("sh")
            .args(["-c", &script])
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        assert!(out.status.success());
        let stdout = String::from_utf8(out.stdout).unwrap();
        let mut lines = stdout.lines();
        let child: u32 = lines.next().unwrap().parse().unwrap();
        assert_eq!(lines.next(), Some("bye"));
        let (child_port, _stream) = receiver.join().unwrap();
        std::fs::remove_dir(&cgroup).unwrap();

        // UDP: unconnected sockets; B's bound to the wildcard address.
        let udp_rx = std::thread::Builder::new()
            .name("fludprecv".into())
            .spawn({
                let ns = pair.ns_b.clone();
                let rx = in_netns(&ns, || {
                    UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 5007)).unwrap()
                });
                move || {
                    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    let mut buf = [0u8; 64];
                    for _ in 0..3 {
                        rx.recv_from(&mut buf).unwrap();
                    }
                }
            })
            .unwrap();
        let (ns_a, ip_a, ip_b) = (pair.ns_a.clone(), pair.ip_a, pair.ip_b);
        let udp_port = std::thread::Builder::new()
            .name("fludpsend".into())
            .spawn(move || {
                let tx = in_netns(&ns_a, || UdpSocket::bind((ip_a, 0)).unwrap());
                for _ in 0..3 {
                    tx.send_to(b"ping", (ip_b, 5007)).unwrap();
                }
                tx.local_addr().unwrap().port()
            })
            .unwrap()
            .join()
            .unwrap();
        udp_rx.join().unwrap();

        stats.scan().unwrap();
        let (a, b) = (ep(pair.ip_a, child_port), ep(pair.ip_b, 5006));
        let proc = |comm: &str, pid: u32, cgroup_id: u64| ProcessInfo {
            pid,
            comm: comm.into(),
            cgroup_id,
        };
        println!(
            "kprobes {force_kprobes}: A {:?}, B {:?}",
            stats.process(6, &a, &b),
            stats.process(6, &b, &a)
        );
        assert_eq!(
            stats.process(6, &a, &b),
            Some(proc("flsender", child, cgroup_id))
        );
        assert_eq!(
            stats.process(6, &b, &a),
            Some(proc("flreceiver", me, own_cgroup))
        );
        let (ua, ub) = (ep(pair.ip_a, udp_port), ep(pair.ip_b, 5007));
        assert_eq!(
            stats.process(17, &ua, &ub),
            Some(proc("fludpsend", me, own_cgroup))
        );
        assert_eq!(
            stats.process(17, &ub, &ua),
            Some(proc("fludprecv", me, own_cgroup))
        );
        assert_eq!(
            stats.process(17, &ua, &b),
            Some(proc("fludpsend", me, own_cgroup))
        );
        assert_eq!(stats.process(6, &ua, &ub), None, "no such TCP socket");
        drop(probe);
    }
}

/// Least privilege: this test binary re-runs itself as user nobody holding only CAP_BPF,
/// CAP_PERFMON and CAP_NET_ADMIN (what the collector's DaemonSet has) and loads every socket
/// program (raw tracepoints need no tracefs access).
#[test]
fn socket_programs_load_with_bpf_perfmon_net_admin_only() {
    require_root();
    let _serial = serial();
    let set = "-all,+bpf,+perfmon,+net_admin";
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args([
            &format!("--inh-caps={set}"),
            &format!("--ambient-caps={set}"),
            &format!("--bounding-set={set}"),
        ])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "unprivileged_load", "--ignored", "--nocapture"])
        .env("FLOWLENS_TCP_UNPRIVILEGED", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
    assert!(
        stdout.contains("loaded as uid 65534"),
        "the child ran the load"
    );
}

/// Run by [`socket_programs_load_with_bpf_perfmon_net_admin_only`] only.
#[test]
#[ignore]
fn unprivileged_load() {
    if std::env::var_os("FLOWLENS_TCP_UNPRIVILEGED").is_none() {
        return;
    }
    let (_probe, stats) = load(&SocketOptions::default());
    println!(
        "loaded as uid {}: {:?}",
        unsafe { libc::geteuid() },
        stats.programs()
    );
    assert_eq!(stats.programs().len(), 4);
}
