//! The collector's main loop: attach, publish interface metadata, then every scan interval drain
//! the kernel flow table and publish one record per flow; on shutdown drain once more, flush and
//! detach.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use flowlens_common::{
    FlowKey, FlowStats, COUNTER_FRAGMENT_UNMATCHED, COUNTER_MALFORMED, COUNTER_NON_IP,
    COUNTER_TABLE_FULL,
};
use flowlens_runtime::Shutdown;
use flowlens_schemas::Interface;
use rdkafka::producer::FutureProducer;

use crate::config::Config;
use crate::drain::Drainer;
use crate::interfaces::{self, InterfaceInfo};
use crate::netns;
use crate::probe::Probe;
use crate::publish::Publisher;
use crate::record::{raw_flow, Clock};

/// Runs the collector until `shutdown` fires.
pub async fn run(config: Config, shutdown: Shutdown) -> anyhow::Result<()> {
    let c = &config.collector;
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
    let producer: FutureProducer = config
        .kafka
        .producer_config()
        .create()
        .context("creating the Kafka producer")?;
    let publisher = Publisher::new(producer, &topics.raw_flows, &topics.interfaces);

    let mut probe = Probe::load(c.table_size)?;
    let known = netns::within(&c.netns, || {
        let all = interfaces::list()?;
        for name in targets(&c.interfaces, &all)? {
            probe.attach(&name)?;
        }
        Ok(all)
    })?;
    let netns_inode = netns::inode(&if c.netns.is_empty() {
        std::path::PathBuf::from("/proc/self/ns/net")
    } else {
        netns::resolve(&c.netns)
    });
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
    tracing::info!(
        host = %host,
        interfaces = ?probe.attached,
        netns = %c.netns,
        table_size = c.table_size,
        scan_interval_ms = c.scan_interval_ms,
        "collector running"
    );

    let cpus = aya::util::nr_cpus().map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?;
    let mut drainer = Drainer::new(c.drain_batch, cpus);
    let mut entries = Vec::new();
    let mut scan = tokio::time::interval(Duration::from_millis(c.scan_interval_ms));
    scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    scan.tick().await;
    let mut refresh = tokio::time::interval(Duration::from_millis(c.interface_refresh_ms));
    refresh.tick().await;
    let mut known = known;
    loop {
        tokio::select! {
            _ = scan.tick() => {
                export(&probe, &mut drainer, &mut entries, &host, &publisher).await?;
            }
            _ = refresh.tick() => {
                let ns = c.netns.clone();
                let now = tokio::task::spawn_blocking(move || netns::within(&ns, interfaces::list)).await??;
                let (changed, removed) = interfaces::diff(&known, &now);
                for iface in &changed {
                    tracing::info!(interface = %iface.name, ifindex = iface.ifindex, "interface changed");
                    publisher.publish_interface(&describe(iface)).await?;
                }
                for ifindex in removed {
                    tracing::info!(ifindex, "interface removed");
                    publisher.remove_interface(&host, ifindex).await?;
                }
                known = now;
            }
            _ = shutdown.cancelled() => break,
        }
    }
    tracing::info!("final drain before exit");
    export(&probe, &mut drainer, &mut entries, &host, &publisher).await?;
    publisher.flush(Duration::from_secs(30))?;
    drop(probe);
    tracing::info!("programs detached, collector stopped");
    Ok(())
}

/// The interfaces to attach to: the configured ones (each must exist), or all but loopback.
fn targets(wanted: &[String], all: &BTreeMap<u32, InterfaceInfo>) -> anyhow::Result<Vec<String>> {
    if wanted.is_empty() {
        return Ok(all
            .values()
            .filter(|i| !i.loopback)
            .map(|i| i.name.clone())
            .collect());
    }
    for name in wanted {
        if !all.values().any(|i| &i.name == name) {
            anyhow::bail!("collector.interfaces: interface `{name}` does not exist");
        }
    }
    Ok(wanted.to_vec())
}

/// One scan: drain the kernel table, publish every flow, update the metrics.
async fn export(
    probe: &Probe,
    drainer: &mut Drainer,
    entries: &mut Vec<(FlowKey, FlowStats)>,
    host: &str,
    publisher: &Publisher,
) -> anyhow::Result<()> {
    let started = Instant::now();
    entries.clear();
    let calls = drainer
        .drain(probe.flows_fd(), entries)
        .context("draining the flow table")?;
    let drained = started.elapsed();
    let clock = Clock::now();
    let flows: Vec<_> = entries
        .iter()
        .map(|(k, s)| raw_flow(host, k, s, clock))
        .collect();
    let delivery = publisher.publish_flows(&flows).await?;

    metrics::histogram!("flowlens_collector_drain_seconds").record(drained.as_secs_f64());
    metrics::gauge!("flowlens_collector_table_entries").set(flows.len() as f64);
    metrics::counter!("flowlens_collector_flows_exported_total").increment(flows.len() as u64);
    let counters = probe.counters()?;
    for (name, idx) in [
        ("table_full", COUNTER_TABLE_FULL),
        ("non_ip", COUNTER_NON_IP),
        ("fragment_unmatched", COUNTER_FRAGMENT_UNMATCHED),
        ("malformed", COUNTER_MALFORMED),
    ] {
        metrics::counter!("flowlens_collector_kernel_packets_total", "reason" => name)
            .absolute(counters[idx as usize]);
    }
    tracing::debug!(
        flows = flows.len(),
        syscalls = calls,
        drain_ms = drained.as_secs_f64() * 1e3,
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
