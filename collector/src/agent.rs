//! The collector's main loop: attach, publish interface metadata, then every scan interval read
//! the kernel flow table and publish what each flow added; on shutdown drain the table, flush and
//! detach, or, with `collector.pin_path`, export one last scan and leave the table and the
//! programs pinned for the next collector.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use flowlens_common::{
    TunnelOuter, COUNTER_FILTERED, COUNTER_FRAGMENT_UNMATCHED, COUNTER_L7_LOST, COUNTER_MALFORMED,
    COUNTER_NON_IP, COUNTER_SAMPLED_OUT, COUNTER_TABLE_FULL, TUNNEL_NONE,
};
use flowlens_runtime::{health, kafka_probe, Shutdown};
use flowlens_schemas::{Interface, RawFlow};

use crate::clock::{monotonic_now_ns, Clock};
use crate::config::Config;
use crate::interfaces::{self, InterfaceInfo};
use crate::l7::L7Tap;
use crate::netns;
use crate::pins::PinDir;
use crate::programs::Programs;
use crate::publish::{Delivery, Publisher};

use crate::raw_flow::{add_socket_fields, drop_only, fill_raw_flow};
use crate::sockets::{SocketOptions, SocketStats};
use crate::table::{Exported, FlowTable, Timeouts};

/// How often the L7 tap's ring buffer is read between scans: at 100,000 DNS packets/s, half of
/// the ring buffer's 11,000 events.
const L7_READ_INTERVAL: Duration = Duration::from_millis(50);

/// Readiness condition: the programs are loaded and attached to the interfaces found at start.
pub const ATTACHED: &str = "programs_attached";

/// Runs the collector until `shutdown` fires.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let c = &config.collector;
    let attached_condition = health::condition(ATTACHED);
    attached_condition.set_failing("loading the eBPF programs");
    crate::privileges::check(!c.netns.is_empty())?;
    kafka_probe::watch(&config.kafka, &shutdown).await?;
    let host = c.host_name();
    let topics = &config.kafka.topics;
    let wanted = [
        (topics.raw_flows.as_str(), false),
        (topics.interfaces.as_str(), true),
    ];
    tokio::select! {
        created = config.kafka.ensure_topics(&wanted) => created.context("creating topics")?,
        _ = shutdown.cancelled() => return Ok(()),
    }
    let publisher = Publisher::from_config(
        &config.kafka.producer_config(),
        &topics.raw_flows,
        &topics.interfaces,
    )
    .context("creating the Kafka producer")?
    .with_max_in_flight(c.max_in_flight as usize);

    let netns_inode = netns::inode(&if c.netns.is_empty() {
        std::path::PathBuf::from("/proc/self/ns/net")
    } else {
        netns::resolve(&c.netns)
    });
    let pins = if c.pin_path.is_empty() {
        None
    } else {
        Some(PinDir::open(std::path::Path::new(&c.pin_path))?)
    };
    let mut probe = Programs::load_pinned(
        c.table_size,
        c.sampling,
        &c.filter.parse()?,
        &SocketOptions {
            enabled: c.socket_metrics,
            map_size: c.socket_table_size,
            drop_map_size: c.drop_table_size,
            netns_inode: netns_inode as u32,
            ..SocketOptions::default()
        },
        &crate::l7::ports(&c.dns_ports, &c.http_ports)?,
        pins,
    )?;
    let l7 = if c.dns_ports.is_empty() && c.http_ports.is_empty() {
        None
    } else {
        Some(L7Tap::new(
            probe
                .take_l7()
                .context("the L7 ring buffer was already taken")?,
            &c.dns_ports,
            &c.http_ports,
        ))
    };
    let sockets = if c.socket_metrics {
        Some(SocketStats::new(
            probe
                .take_sockets()
                .context("the socket maps were already taken")?,
            Duration::from_millis(c.idle_timeout_ms),
        ))
    } else {
        None
    };
    let mut attached = BTreeMap::new();
    let mut known = netns::within(&c.netns, || {
        let all = interfaces::list()?;
        for (name, ifindex) in targets(&c.interfaces, &all, true)? {
            probe.attach(&name)?;
            attached.insert(name, ifindex);
        }
        Ok(all)
    })?;
    probe.remove_stale_links()?;
    let (link_events, mut link_changed) = tokio::sync::mpsc::channel(1);
    interfaces::LinkWatch::open(&c.netns, None)?.spawn(link_events)?;
    let describe = |i: &InterfaceInfo| Interface {
        host: host.clone(),
        ifindex: i.ifindex as i32,
        name: i.name.clone(),
        mac: i.mac.clone(),
        mtu: i.mtu as i32,
        kind: i.kind.clone(),
        netns: c.netns.clone(),
        netns_inode: netns_inode as i64,
        oper_state: if i.up { "up" } else { "down" }.into(),
        time_observed_ns: Clock::now().unix_now_ns(),
    };
    for iface in known.values() {
        publisher.publish_interface(&describe(iface)).await?;
    }
    attached_condition.set_ok();
    tracing::info!(
        host = %host,
        interfaces = ?probe.attached(),
        netns = %c.netns,
        table_size = c.table_size,
        scan_interval_ms = c.scan_interval_ms,
        idle_timeout_ms = c.idle_timeout_ms,
        sampling = c.sampling,
        dns_ports = ?c.dns_ports,
        http_ports = ?c.http_ports,
        "collector running"
    );

    let mut exporter = Exporter {
        table: FlowTable::new(
            probe.flow_table()?,
            Timeouts {
                idle_ns: c.idle_timeout_ms * 1_000_000,
                closed_ns: c.closed_timeout_ms * 1_000_000,
                bidirectional: c.bidirectional,
            },
        ),
        cost: (Duration::ZERO, 0),
        exported: (0, 0),
        entries: Vec::new(),
        flows: Vec::new(),
        host: host.clone(),
        sampling: c.sampling,
        sockets,
        l7,
        idle_ns: c.idle_timeout_ms * 1_000_000,
    };
    // The tap's ring buffer is read often enough not to fill between scans.
    let mut l7_read = tokio::time::interval(L7_READ_INTERVAL);
    l7_read.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut scan = tokio::time::interval(Duration::from_millis(c.scan_interval_ms));
    scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    scan.tick().await;
    let mut refresh = tokio::time::interval(Duration::from_millis(c.interface_refresh_ms));
    refresh.tick().await;
    // A pass is a scan (waiting at most message.timeout.ms, 120 s, for its deliveries) or an
    // interface re-read.
    let alive = health::watch_loop(
        "collector",
        Duration::from_millis(2 * c.scan_interval_ms) + Duration::from_secs(150),
    );
    loop {
        alive.beat();
        tokio::select! {
            _ = scan.tick() => exporter.export(&probe, &publisher, Scan::Interval).await?,
            _ = l7_read.tick(), if exporter.l7.is_some() => exporter.read_l7(),
            _ = async {
                tokio::select! {
                    _ = refresh.tick() => {},
                    _ = link_changed.recv() => {},
                }
            } => {
                let ns = c.netns.clone();
                let now = tokio::task::spawn_blocking(move || netns::within(&ns, interfaces::list))
                    .await??;
                let (changed, removed) = interfaces::diff(&known, &now);
                for iface in &changed {
                    tracing::info!(interface = %iface.name, ifindex = iface.ifindex, "interface changed");
                    publisher.publish_interface(&describe(iface)).await?;
                }
                for ifindex in removed {
                    tracing::info!(ifindex, "interface removed");
                    publisher.remove_interface(&host, ifindex).await?;
                }
                reconcile(&mut probe, &mut attached, &c.interfaces, &now, &c.netns)?;
                known = now;
            }
            _ = shutdown.cancelled() => break,
        }
    }
    alive.retire();
    if let Some(pins) = probe.pin_dir() {
        // The table stays: the programs go on counting into it and the next collector
        // exports what they count from where this scan leaves it.
        tracing::info!("last scan before exit");
        exporter.export(&probe, &publisher, Scan::Interval).await?;
        publisher.flush(Duration::from_secs(30))?;
        tracing::info!(
            pin_path = %pins.root().display(),
            packets_exported = exporter.exported.0,
            bytes_exported = exporter.exported.1,
            "collector stopped; the flow table and the programs stay pinned"
        );
        return Ok(());
    }
    tracing::info!("final drain before exit");
    exporter.export(&probe, &publisher, Scan::Final).await?;
    publisher.flush(Duration::from_secs(30))?;
    drop(probe);
    tracing::info!(
        packets_exported = exporter.exported.0,
        bytes_exported = exporter.exported.1,
        "programs detached, collector stopped"
    );
    Ok(())
}

/// The interfaces to attach to among `all`: those matching a configured name or pattern (`*`,
/// `?`), or every one but loopback when none is configured. At start (`strict`) a plain name
/// that does not exist is an error; patterns may match nothing yet.
fn targets(
    wanted: &[String],
    all: &BTreeMap<u32, InterfaceInfo>,
    strict: bool,
) -> anyhow::Result<Vec<(String, u32)>> {
    if strict {
        for name in wanted.iter().filter(|w| !w.contains(['*', '?'])) {
            if !all.values().any(|i| &i.name == name) {
                anyhow::bail!("collector.interfaces: interface `{name}` does not exist");
            }
        }
    }
    Ok(all
        .values()
        .filter(|i| {
            if wanted.is_empty() {
                !i.loopback
            } else {
                wanted.iter().any(|w| interfaces::matches(w, &i.name))
            }
        })
        .map(|i| (i.name.clone(), i.ifindex))
        .collect())
}

/// Brings attachments in line with the interfaces present now: attach to new matches, forget
/// interfaces that are gone or were re-created under the same name.
fn reconcile(
    probe: &mut Programs,
    attached: &mut BTreeMap<String, u32>,
    wanted: &[String],
    now: &BTreeMap<u32, InterfaceInfo>,
    netns_name: &str,
) -> anyhow::Result<()> {
    let targets: BTreeMap<String, u32> = targets(wanted, now, false)?.into_iter().collect();
    let stale: Vec<String> = attached
        .iter()
        .filter(|(name, ifindex)| targets.get(*name) != Some(ifindex))
        .map(|(name, _)| name.clone())
        .collect();
    for name in stale {
        probe.detach(&name);
        attached.remove(&name);
    }
    let new: Vec<(String, u32)> = targets
        .into_iter()
        .filter(|(name, _)| !attached.contains_key(name))
        .collect();
    if new.is_empty() {
        return Ok(());
    }
    netns::within(netns_name, || {
        for (name, ifindex) in &new {
            match probe.attach(name) {
                Ok(()) => {
                    attached.insert(name.clone(), *ifindex);
                }
                // It may have vanished again since it was listed: try at the next change.
                Err(e) => {
                    tracing::warn!(interface = %name, error = format!("{e:#}"), "attach failed")
                }
            }
        }
        Ok(())
    })
}

/// The outer addresses of an inner flow's A->B packets (from the B->A entry, swapped, when A
/// sent nothing in this interval).
fn tunnel_outer(probe: &Programs, e: &Exported) -> Option<TunnelOuter> {
    let c = &e.conversation;
    let key = c.key();
    if let Some(o) = probe.tunnel_outer(&key) {
        return Some(o);
    }
    let reverse = c.b_to_a.map(|(k, _)| k).or_else(|| key.reverse())?;
    probe.tunnel_outer(&reverse).map(|o| TunnelOuter {
        src_addr: o.dst_addr,
        dst_addr: o.src_addr,
    })
}

/// An interval scan keeps live flows in the kernel; the final one empties the table.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scan {
    Interval,
    Final,
}

/// Turns scans of the kernel table into published records.
struct Exporter {
    table: FlowTable,
    /// Kernel run time and packets of the programs at the previous scan (bpf_stats).
    cost: (Duration, u64),
    /// Packets and bytes exported since start.
    exported: (u64, u64),
    entries: Vec<Exported>,
    /// Records of one chunk, reused from chunk to chunk and scan to scan.
    flows: Vec<RawFlow>,
    host: String,
    sampling: u32,
    /// RTT, retransmits, drops and socket owners (None when `socket_metrics` is off).
    sockets: Option<SocketStats>,
    /// DNS and HTTP counts per conversation (None when no port is watched).
    l7: Option<L7Tap>,
    /// How long socket extras wait for their conversation's record (the idle timeout).
    idle_ns: u64,
}

impl Exporter {
    /// Reads the L7 tap's ring buffer.
    fn read_l7(&mut self) {
        if let Some(l7) = self.l7.as_mut() {
            l7.drain();
        }
    }

    /// One scan: read the kernel table, publish what every flow added, update the metrics.
    async fn export(
        &mut self,
        probe: &Programs,
        publisher: &Publisher,
        scan: Scan,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let (calls, occupancy) = match scan {
            Scan::Interval => {
                let s = self
                    .table
                    .begin(monotonic_now_ns())
                    .context("reading the flow table")?;
                (s.syscalls, s.entries)
            }
            Scan::Final => {
                let taken = self
                    .table
                    .begin_drain()
                    .context("draining the flow table")?;
                (0, taken)
            }
        };
        let rule = self.table.duplicates();
        // After the table's read: every packet it counts has its tap event in the ring buffer
        // (the programs tap before they count).
        self.read_l7();
        // The table's part of the scan: this read, and each chunk's export below.
        let mut read = started.elapsed();
        if let Some(sockets) = self.sockets.as_mut() {
            if let Err(e) = sockets.scan() {
                tracing::warn!(error = %e, "reading the socket tables failed; records of this scan carry no RTT, retransmits, drops or processes");
            }
        }
        // Records are made a chunk at a time (the publisher's in-flight window): a scan never
        // holds every conversation or RawFlow at once.
        let (mut records, mut packets, mut bytes) = (0u64, 0u64, 0u64);
        let mut evicted = if scan == Scan::Final { occupancy } else { 0 };
        let mut delivery = Delivery::default();
        let chunk = publisher.max_in_flight().max(1);
        let mut flows = std::mem::take(&mut self.flows);
        let mut clock = Clock::now();
        loop {
            let started = Instant::now();
            self.entries.clear();
            let next = self
                .table
                .next(&mut self.entries, chunk)
                .context("reading the flow table")?;
            read += started.elapsed();
            if next.done {
                break;
            }
            evicted += next.evicted;
            // Sampled after the chunk's read: no packet its records count is later than their
            // export time.
            clock = Clock::now();
            let entries = &self.entries;
            if flows.len() < entries.len() {
                flows.resize_with(entries.len(), RawFlow::default);
            }
            for (e, f) in entries.iter().zip(flows.iter_mut()) {
                let key = e.conversation.key();
                let duplicate = rule.is_duplicate(&e.conversation);
                let outer = (key.tunnel != TUNNEL_NONE)
                    .then(|| tunnel_outer(probe, e))
                    .flatten();
                fill_raw_flow(f, &self.host, e, duplicate, outer, clock, self.sampling);
                if let Some(l7) = self.l7.as_mut() {
                    (f.dns, f.http) = l7.take(&key);
                }
                if let Some(sockets) = self.sockets.as_mut() {
                    // Counters go to the record that counts the packets (or, for a tunnel's
                    // inner flow, to the record of the conversation the sockets belong to).
                    let claim = !duplicate || key.tunnel != TUNNEL_NONE;
                    add_socket_fields(f, &key, sockets, claim);
                }
                if !f.duplicate {
                    packets += (f.packets + f.reverse_packets) as u64;
                    bytes += (f.bytes + f.reverse_bytes) as u64;
                }
            }
            records += entries.len() as u64;
            let d = match publisher.publish_flows(&flows[..entries.len()]).await {
                Ok(d) => d,
                Err(e) => {
                    self.flows = flows;
                    return Err(e);
                }
            };
            delivery.delivered += d.delivered;
            delivery.failed += d.failed;
            // Kept (pinned table) only while every record of the scan so far was delivered:
            // what was not stays to be exported again by the next collector.
            if delivery.failed == 0 {
                self.table
                    .commit()
                    .context("keeping the exported counts beside the pinned table")?;
            }
        }
        // Drops of conversations no watched interface saw in this interval.
        self.flows = flows;
        if let Some(l7) = self.l7.as_mut() {
            l7.expire(monotonic_now_ns(), self.idle_ns);
        }
        if let Some(sockets) = self.sockets.as_mut() {
            let mut flows = Vec::new();
            for (proto, a, b, extras) in sockets.unclaimed_drops(self.idle_ns) {
                flows.push(drop_only(
                    &self.host,
                    proto,
                    &a,
                    &b,
                    extras,
                    clock,
                    self.sampling,
                ));
            }
            if !flows.is_empty() {
                records += flows.len() as u64;
                let d = publisher.publish_flows(&flows).await?;
                delivery.delivered += d.delivered;
                delivery.failed += d.failed;
            }
        }

        metrics::histogram!("flowlens_collector_drain_seconds").record(read.as_secs_f64());
        metrics::gauge!("flowlens_collector_table_entries").set(occupancy as f64);
        metrics::counter!("flowlens_collector_flows_evicted_total").increment(evicted as u64);
        metrics::counter!("flowlens_collector_flows_exported_total").increment(records);
        self.exported.0 += packets;
        self.exported.1 += bytes;
        metrics::counter!("flowlens_collector_packets_total").increment(packets);
        metrics::counter!("flowlens_collector_bytes_total").increment(bytes);
        let (run_time, runs) = probe.kernel_cost();
        if runs > self.cost.1 {
            let ns = (run_time - self.cost.0).as_nanos() as f64 / (runs - self.cost.1) as f64;
            metrics::gauge!("flowlens_collector_kernel_ns_per_packet").set(ns);
        }
        self.cost = (run_time, runs);
        let counters = probe.counters()?;
        for (name, idx) in [
            ("table_full", COUNTER_TABLE_FULL),
            ("non_ip", COUNTER_NON_IP),
            ("fragment_unmatched", COUNTER_FRAGMENT_UNMATCHED),
            ("malformed", COUNTER_MALFORMED),
            ("filtered", COUNTER_FILTERED),
            ("sampled_out", COUNTER_SAMPLED_OUT),
            ("l7_lost", COUNTER_L7_LOST),
        ] {
            metrics::counter!("flowlens_collector_kernel_packets_total", "reason" => name)
                .absolute(counters[idx as usize]);
        }
        tracing::debug!(
            flows = records,
            table_entries = occupancy,
            evicted,
            syscalls = calls,
            read_ms = read.as_secs_f64() * 1e3,
            delivered = delivery.delivered,
            failed = delivery.failed,
            table_full = counters[COUNTER_TABLE_FULL as usize],
            "scan exported"
        );
        if delivery.failed > 0 {
            anyhow::bail!(
                "{} flow records could not be delivered to Kafka",
                delivery.failed
            );
        }
        Ok(())
    }
}
