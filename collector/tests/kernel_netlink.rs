//! Lost link events: a netlink socket subscribed to link changes with the smallest receive
//! buffer the kernel allows, and a burst of interfaces created in its namespace while nobody
//! reads it. The kernel drops messages and says so (ENOBUFS); the watch must report the
//! overflow (the collector then re-reads every interface), and a full re-read must find every
//! interface the burst made (the oracle: the names `ip` created).

mod common;

use std::process::Command;

use common::require_root;
use flowlens_collector::interfaces::{self, LinkEvent, LinkWatch};
use flowlens_testkit::unique;

struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn overflow_is_reported_and_a_full_reread_finds_everything() {
    require_root();
    let name = unique("flnl").replace('_', "");
    let name = name[..name.len().min(15)].to_string();
    assert!(Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .unwrap()
        .success());
    let ns = Netns(name);
    let watch = LinkWatch::open(&ns.0, Some(1)).unwrap();

    const PAIRS: usize = 40;
    let batch: String = (0..PAIRS)
        .map(|i| format!("link add ovfa{i} type veth peer name ovfb{i}\n"))
        .collect();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), batch).unwrap();
    let out = Command::new("ip")
        .args(["-n", &ns.0, "-batch"])
        .arg(file.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut buf = vec![0u8; 16 * 1024];
    let mut events = Vec::new();
    loop {
        let e = watch.wait(&mut buf).unwrap();
        events.push(e);
        if e == LinkEvent::Quiet {
            break;
        }
    }
    assert!(
        events.contains(&LinkEvent::Overflow),
        "the kernel dropped link messages but no overflow was seen: {events:?}"
    );
    let changes = events.iter().filter(|e| **e == LinkEvent::Changed).count();
    assert!(
        changes < 2 * PAIRS,
        "{changes} messages read: nothing was lost, the test proves nothing"
    );

    let all = flowlens_collector::netns::within(&ns.0, interfaces::list).unwrap();
    let created = all
        .values()
        .filter(|i| i.name.starts_with("ovfa") || i.name.starts_with("ovfb"))
        .count();
    assert_eq!(created, 2 * PAIRS);
}
