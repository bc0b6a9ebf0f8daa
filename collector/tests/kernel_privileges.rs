//! Least privilege, proven on the real binary: run as an unprivileged user (nobody) inside a
//! network namespace with only CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN, the collector attaches
//! and counts traffic exactly; without any one of them it stops at start with an error naming
//! the missing capability. The broker (tansu) runs in the peer namespace, reached over the veth.

mod common;

use std::net::{IpAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::require_root;
use flowlens_schemas::{decode, RawFlow};
use flowlens_testkit::{in_netns, read_topic, unique, NetnsPair, Tansu};
use rdkafka::Message;

const COLLECTOR: &str = env!("CARGO_BIN_EXE_flowlens-collector");

/// The collector as user nobody in `pair.ns_a` holding exactly `caps`.
fn collector(pair: &NetnsPair, caps: &[&str], broker: &str, topic: &str) -> Command {
    let set = caps
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(",");
    let set = if set.is_empty() {
        "-all".to_string()
    } else {
        format!("-all,{set}")
    };
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &pair.ns_a,
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
    ])
    .args([
        "--clear-groups",
        &format!("--inh-caps={set}"),
        &format!("--ambient-caps={set}"),
    ])
    .args([&format!("--bounding-set={set}"), COLLECTOR])
    .env("FLOWLENS_COLLECTOR__KAFKA__BROKERS", broker)
    .env("FLOWLENS_COLLECTOR__KAFKA__PARTITIONS", "1")
    .env("FLOWLENS_COLLECTOR__KAFKA__TOPICS__RAW_FLOWS", topic)
    .env(
        "FLOWLENS_COLLECTOR__KAFKA__TOPICS__INTERFACES",
        format!("{topic}-ifaces"),
    )
    .env("FLOWLENS_COLLECTOR__COLLECTOR__INTERFACES", &pair.if_a)
    .env("FLOWLENS_COLLECTOR__COLLECTOR__SCAN_INTERVAL_MS", "300")
    .env("RUST_LOG", "warn")
    .stdin(Stdio::null());
    cmd
}

#[test]
fn runs_with_bpf_perfmon_net_admin_only_and_names_what_is_missing() {
    require_root();
    let pair = NetnsPair::new("p");
    let tansu = Tansu::start_in_netns(&pair.ns_b, IpAddr::V4(pair.ip_b));
    let broker = format!("{}:{}", pair.ip_b, tansu.port);

    for (caps, missing) in [
        (&["net_admin", "perfmon"][..], "CAP_BPF"),
        (&["bpf", "net_admin"][..], "CAP_PERFMON"),
        (&["bpf", "perfmon"][..], "CAP_NET_ADMIN"),
    ] {
        let out = collector(&pair, caps, &broker, &unique("raw"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "with {caps:?}: {stderr}");
        assert!(
            stderr.contains(missing),
            "with {caps:?} the error names {missing}: {stderr}"
        );
    }

    let topic = unique("raw");
    let child = collector(&pair, &["bpf", "perfmon", "net_admin"], &broker, &topic)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ifaces = format!("{topic}-ifaces");
    let seen = in_netns(&pair.ns_a, || {
        read_topic(&broker, &ifaces, 2, Duration::from_secs(30))
    });
    assert!(seen.len() >= 2, "the collector published its interfaces");

    let rx = in_netns(&pair.ns_b, || UdpSocket::bind((pair.ip_b, 7100)).unwrap());
    let tx = in_netns(&pair.ns_a, || UdpSocket::bind((pair.ip_a, 7101)).unwrap());
    rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 256];
    for _ in 0..30 {
        tx.send_to(&[1u8; 120], (pair.ip_b, 7100)).unwrap();
        rx.recv_from(&mut buf).unwrap();
    }
    // SIGTERM: final drain, flush, detach, exit 0.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let records = in_netns(&pair.ns_a, || {
        read_topic(&broker, &topic, 1, Duration::from_secs(30))
    });
    let (packets, bytes) = records
        .iter()
        .map(|m| decode::<RawFlow>(m.payload().unwrap()).unwrap())
        .filter(|f| f.src_port == 7101 && f.dst_port == 7100)
        .fold((0, 0), |(p, b), f| (p + f.packets, b + f.bytes));
    assert_eq!((packets, bytes), (30, 30 * (14 + 20 + 8 + 120)));
}
