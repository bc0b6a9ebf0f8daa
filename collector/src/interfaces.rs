//! Interface metadata (index, name, MAC, MTU, kind, state) read in the calling thread's network
//! namespace through `if_nameindex` and interface ioctls, the change detection that decides
//! which records to (re)publish, and the netlink watch whose every event, or lost event
//! (receive buffer overflow), triggers a full re-read.

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::Context;

/// What the collector knows of one interface (without host/netns, added when publishing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceInfo {
    pub ifindex: u32,
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    /// Driver name as reported by ethtool (veth, bridge, vxlan, virtio_net, ...) or `loopback`.
    pub kind: String,
    pub up: bool,
    pub loopback: bool,
}

/// Lists the interfaces of the calling thread's network namespace, by index.
pub fn list() -> anyhow::Result<BTreeMap<u32, InterfaceInfo>> {
    // SAFETY: a datagram socket used only for interface ioctls; closed by OwnedFd.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error()).context("socket for interface ioctls");
    }
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut out = BTreeMap::new();
    for (ifindex, name) in names()? {
        let flags = ioctl_ifreq(&sock, &name, libc::SIOCGIFFLAGS)
            .map(|r| unsafe { r.ifr_ifru.ifru_flags } as i32)
            .unwrap_or(0);
        let mtu = ioctl_ifreq(&sock, &name, libc::SIOCGIFMTU)
            .map(|r| unsafe { r.ifr_ifru.ifru_mtu } as u32)
            .unwrap_or(0);
        let mac = ioctl_ifreq(&sock, &name, libc::SIOCGIFHWADDR)
            .map(|r| format_mac(unsafe { &r.ifr_ifru.ifru_hwaddr.sa_data }))
            .unwrap_or_default();
        let loopback = flags & libc::IFF_LOOPBACK != 0;
        let kind = if loopback {
            "loopback".to_string()
        } else {
            driver(&sock, &name).unwrap_or_else(|| "unknown".into())
        };
        out.insert(
            ifindex,
            InterfaceInfo {
                ifindex,
                name,
                mac,
                mtu,
                kind,
                up: flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0,
                loopback,
            },
        );
    }
    Ok(out)
}

/// What changed between two listings: interfaces new or different, and indexes that are gone.
pub fn diff(
    old: &BTreeMap<u32, InterfaceInfo>,
    new: &BTreeMap<u32, InterfaceInfo>,
) -> (Vec<InterfaceInfo>, Vec<u32>) {
    let changed = new
        .values()
        .filter(|i| old.get(&i.ifindex) != Some(i))
        .cloned()
        .collect();
    let removed = old
        .keys()
        .filter(|k| !new.contains_key(k))
        .copied()
        .collect();
    (changed, removed)
}

/// Shell-style match of an interface name against a pattern (`*` any run, `?` one character).
pub fn matches(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

/// What one wait on the link-event socket brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkEvent {
    /// At least one link message arrived.
    Changed,
    /// The kernel dropped messages (ENOBUFS: the socket's receive buffer overflowed): what
    /// changed is unknown, only a full re-read tells.
    Overflow,
    /// Nothing within the wait (one second).
    Quiet,
}

/// A netlink socket subscribed to link changes (RTMGRP_LINK) of one network namespace.
pub struct LinkWatch {
    sock: OwnedFd,
}

impl LinkWatch {
    /// Subscribes in network namespace `netns` ("" = our own). `receive_buffer`: SO_RCVBUF in
    /// bytes (the kernel doubles it and keeps a minimum), `None` = the kernel's default.
    pub fn open(netns: &str, receive_buffer: Option<usize>) -> anyhow::Result<Self> {
        const RTMGRP_LINK: u32 = 1;
        let sock = crate::netns::within(netns, || {
            // SAFETY: plain socket calls on a fresh fd owned by OwnedFd.
            let raw = unsafe {
                libc::socket(
                    libc::AF_NETLINK,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    libc::NETLINK_ROUTE,
                )
            };
            if raw < 0 {
                return Err(std::io::Error::last_os_error()).context("netlink socket");
            }
            let sock = unsafe { OwnedFd::from_raw_fd(raw) };
            if let Some(bytes) = receive_buffer {
                let bytes = bytes.min(i32::MAX as usize) as libc::c_int;
                setsockopt(&sock, libc::SO_RCVBUF, &bytes).context("netlink SO_RCVBUF")?;
            }
            let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
            addr.nl_family = libc::AF_NETLINK as u16;
            addr.nl_groups = RTMGRP_LINK;
            let rc = unsafe {
                libc::bind(
                    sock.as_raw_fd(),
                    (&addr as *const libc::sockaddr_nl).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as u32,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error())
                    .context("binding netlink to RTMGRP_LINK");
            }
            let timeout = libc::timeval {
                tv_sec: 1,
                tv_usec: 0,
            };
            setsockopt(&sock, libc::SO_RCVTIMEO, &timeout).context("netlink SO_RCVTIMEO")?;
            Ok(sock)
        })?;
        Ok(Self { sock })
    }

    /// Waits up to a second for the next message (read into `buf`) or error.
    pub fn wait(&self, buf: &mut [u8]) -> anyhow::Result<LinkEvent> {
        // SAFETY: reads at most buf.len() bytes into buf.
        let n = unsafe { libc::recv(self.sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n > 0 {
            return Ok(LinkEvent::Changed);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            _ if n == 0 => Ok(LinkEvent::Quiet),
            Some(libc::ENOBUFS) => Ok(LinkEvent::Overflow),
            Some(libc::EAGAIN | libc::EINTR) => Ok(LinkEvent::Quiet),
            _ => Err(e).context("reading link events"),
        }
    }

    /// Reads events from a thread of its own and signals `changed` after each change or
    /// overflow (coalesced: one pending signal triggers one full re-read); the thread ends
    /// once the receiver is dropped.
    pub fn spawn(self, changed: tokio::sync::mpsc::Sender<()>) -> anyhow::Result<()> {
        std::thread::Builder::new()
            .name("netlink-links".into())
            .spawn(move || {
                let mut buf = vec![0u8; 16 * 1024];
                while !changed.is_closed() {
                    match self.wait(&mut buf) {
                        Ok(LinkEvent::Quiet) => continue,
                        Ok(LinkEvent::Changed) => {}
                        Ok(LinkEvent::Overflow) => {
                            metrics::counter!("flowlens_collector_netlink_overflows_total")
                                .increment(1);
                            tracing::warn!(
                                "link events lost (netlink receive buffer overflowed): \
                                 re-reading every interface"
                            );
                        }
                        Err(e) => {
                            tracing::warn!(error = format!("{e:#}"), "re-reading every interface");
                            std::thread::sleep(std::time::Duration::from_secs(1));
                        }
                    }
                    let _ = changed.try_send(());
                }
            })?;
        Ok(())
    }
}

fn setsockopt<T>(sock: &OwnedFd, option: libc::c_int, value: &T) -> std::io::Result<()> {
    // SAFETY: `value` is a live T of the size given.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn names() -> anyhow::Result<Vec<(u32, String)>> {
    // SAFETY: if_nameindex returns a list terminated by a zero entry, freed below.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Err(std::io::Error::last_os_error()).context("if_nameindex");
    }
    let mut out = Vec::new();
    let mut p = list;
    unsafe {
        while (*p).if_index != 0 {
            let name = CStr::from_ptr((*p).if_name).to_string_lossy().into_owned();
            out.push(((*p).if_index, name));
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    Ok(out)
}

fn ifreq_for(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *dst = src as libc::c_char;
    }
    req
}

fn ioctl_ifreq(sock: &OwnedFd, name: &str, request: libc::Ioctl) -> Option<libc::ifreq> {
    let mut req = ifreq_for(name);
    // SAFETY: the request reads/writes only the ifreq it is given.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request, &mut req) };
    (rc == 0).then_some(req)
}

/// `struct ethtool_drvinfo` (linux/ethtool.h).
#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

fn driver(sock: &OwnedFd, name: &str) -> Option<String> {
    const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
    // SAFETY: plain data; the kernel fills it for ETHTOOL_GDRVINFO.
    let mut info: EthtoolDrvinfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut req = ifreq_for(name);
    req.ifr_ifru.ifru_data = (&mut info as *mut EthtoolDrvinfo).cast();
    // SAFETY: SIOCETHTOOL with a valid ethtool_drvinfo buffer.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) };
    if rc != 0 {
        return None;
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    let driver = String::from_utf8_lossy(&info.driver[..end]).into_owned();
    (!driver.is_empty()).then_some(driver)
}

fn format_mac(data: &[libc::c_char; 14]) -> String {
    let bytes: Vec<u8> = data[..6].iter().map(|&b| b as u8).collect();
    if bytes.iter().all(|&b| b == 0) {
        return String::new();
    }
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_loopback_of_this_namespace() {
        let all = list().unwrap();
        let lo = all.values().find(|i| i.name == "lo").expect("lo exists");
        assert!(lo.loopback);
        assert_eq!(lo.kind, "loopback");
        assert_eq!(lo.mtu, 65536);
        assert_eq!(lo.mac, "");
    }

    #[test]
    fn patterns_match_like_a_shell() {
        assert!(matches("veth*", "veth12ab"));
        assert!(matches("eth?", "eth0"));
        assert!(!matches("eth?", "eth10"));
        assert!(matches("*", "lo"));
        assert!(matches("eth0", "eth0"));
        assert!(!matches("eth0", "eth01"));
        assert!(matches("c*i*m", "cilium"));
    }

    #[test]
    fn diff_reports_changes_and_removals() {
        let a = InterfaceInfo {
            ifindex: 2,
            name: "eth0".into(),
            mac: "02:00:00:00:00:01".into(),
            mtu: 1500,
            kind: "veth".into(),
            up: true,
            loopback: false,
        };
        let mut b = a.clone();
        b.mtu = 9000;
        let old = BTreeMap::from([
            (2, a.clone()),
            (
                3,
                InterfaceInfo {
                    ifindex: 3,
                    ..a.clone()
                },
            ),
        ]);
        let new = BTreeMap::from([(2, b.clone())]);
        let (changed, removed) = diff(&old, &new);
        assert_eq!(changed, vec![b]);
        assert_eq!(removed, vec![3]);
        assert_eq!(diff(&new, &new), (vec![], vec![]));
    }
}
