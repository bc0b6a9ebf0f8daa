//! Collector configuration (`[collector]`, `[kafka]`, `[telemetry]`), file + environment
//! (`FLOWLENS_COLLECTOR__...`), validated at start with errors naming the key.

use flowlens_runtime::kafka::KafkaConfig;
use flowlens_runtime::telemetry::TelemetryConfig;
use flowlens_runtime::{ConfigError, Validate};
use serde::Deserialize;

use crate::filter::FilterConfig;

pub const ENV_PREFIX: &str = "FLOWLENS_COLLECTOR";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub collector: CollectorConfig,
    pub kafka: KafkaConfig,
    pub telemetry: TelemetryConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollectorConfig {
    /// Host name put on every record; defaults to the kernel's host name.
    pub host: String,
    /// Interfaces to attach to, by name; empty means every interface but loopback.
    pub interfaces: Vec<String>,
    /// Network namespace holding the interfaces: a name under /var/run/netns or a path
    /// (e.g. /proc/PID/ns/net); empty means the collector's own namespace.
    pub netns: String,
    /// How often the kernel flow table is drained and exported, in milliseconds.
    pub scan_interval_ms: u64,
    /// A flow whose last packet is older than this leaves the kernel table (after a last export);
    /// live flows stay and are exported every scan.
    pub idle_timeout_ms: u64,
    /// A TCP conversation that ended (RST, or FIN in both directions) leaves the table once it
    /// has been quiet this long, so its last record carries the end reason without waiting for
    /// the idle timeout.
    pub closed_timeout_ms: u64,
    /// Join the two directions of a conversation into one record (A->B counters plus reverse_*
    /// for B->A). false: one record per direction, reverse_* always 0 (what RawFlow v1
    /// consumers expect).
    pub bidirectional: bool,
    /// Slots of the kernel flow table (rounded up to whole buckets of 8): one per flow
    /// direction, live or not yet idle; 136 bytes of kernel memory each (the default, 1 Mi
    /// slots, is 136 MiB and holds about 900,000 flow directions).
    pub table_size: u32,
    /// Flow records queued in the Kafka producer and not yet acknowledged, at most: bounds the
    /// collector's memory at any number of flows.
    pub max_in_flight: u32,
    /// How often interface metadata is re-read (changes are published), in milliseconds.
    pub interface_refresh_ms: u64,
    /// 1:N packet sampling in the kernel (1 = every packet); records carry the rate.
    pub sampling: u32,
    /// In-kernel filters applied before a packet reaches the flow table (and to dropped packets).
    pub filter: FilterConfig,
    /// Per-conversation TCP RTT, retransmits, kernel drops with reason and the processes owning
    /// local sockets (tracepoints off the packet path); features the kernel lacks are disabled
    /// with a warning.
    pub socket_metrics: bool,
    /// Entries of the kernel tables of TCP sockets and of socket owners (LRU).
    pub socket_table_size: u32,
    /// Entries of the kernel table of dropped conversations by reason (per-CPU LRU).
    pub drop_table_size: u32,
    /// UDP and TCP ports whose packets are parsed as DNS (empty: DNS visibility off):
    /// queries, responses by code, latency and the last query name per conversation.
    pub dns_ports: Vec<u16>,
    /// TCP ports whose HTTP/1.x request and status lines are parsed (empty: off): requests,
    /// responses by status class, latency, the last method, path and status per conversation.
    /// At most 8 ports with `dns_ports`.
    pub http_ports: Vec<u16>,
    /// Directory on a bpf filesystem where the flow table, what was exported of it and the TCX
    /// links are pinned, so that they outlive the process and the next collector continues
    /// (`crate::pins`); empty: the table lives and dies with the process.
    pub pin_path: String,
}

impl Default for CollectorConfig {
    fn default() -> Self {
        Self {
            host: String::new(),
            interfaces: Vec::new(),
            netns: String::new(),
            scan_interval_ms: 5_000,
            idle_timeout_ms: 15_000,
            closed_timeout_ms: 1_000,
            bidirectional: true,
            table_size: 1_048_576,
            max_in_flight: 50_000,
            interface_refresh_ms: 10_000,
            sampling: 1,
            filter: FilterConfig::default(),
            socket_metrics: true,
            socket_table_size: 32_768,
            drop_table_size: 4_096,
            dns_ports: vec![53],
            http_ports: vec![80, 8080],
            pin_path: String::new(),
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.collector;
        flowlens_runtime::config::check_range(
            "collector.scan_interval_ms",
            c.scan_interval_ms,
            100,
            3_600_000,
        )?;
        flowlens_runtime::config::check_range(
            "collector.idle_timeout_ms",
            c.idle_timeout_ms,
            100,
            3_600_000,
        )?;
        flowlens_runtime::config::check_range(
            "collector.closed_timeout_ms",
            c.closed_timeout_ms,
            0,
            c.idle_timeout_ms,
        )?;
        flowlens_runtime::config::check_range(
            "collector.table_size",
            c.table_size.into(),
            1_024,
            1 << 24,
        )?;
        flowlens_runtime::config::check_range(
            "collector.max_in_flight",
            c.max_in_flight.into(),
            1,
            10_000_000,
        )?;
        flowlens_runtime::config::check_range(
            "collector.socket_table_size",
            c.socket_table_size.into(),
            64,
            1 << 24,
        )?;
        flowlens_runtime::config::check_range(
            "collector.drop_table_size",
            c.drop_table_size.into(),
            64,
            1 << 22,
        )?;
        flowlens_runtime::config::check_range(
            "collector.interface_refresh_ms",
            c.interface_refresh_ms,
            100,
            3_600_000,
        )?;
        flowlens_runtime::config::check_range("collector.sampling", c.sampling.into(), 1, 1 << 20)?;
        c.filter.parse()?;
        if let Err(e) = crate::l7::ports(&c.dns_ports, &c.http_ports) {
            return Err(ConfigError::invalid(
                "collector.dns_ports / collector.http_ports",
                e.to_string(),
            ));
        }
        if let Some(bad) = c
            .interfaces
            .iter()
            .find(|i| i.is_empty() || i.len() >= libc::IFNAMSIZ || i.contains('/'))
        {
            return Err(ConfigError::invalid(
                "collector.interfaces",
                format!("`{bad}` is not an interface name"),
            ));
        }
        if !c.netns.is_empty() && !crate::netns::resolve(&c.netns).exists() {
            return Err(ConfigError::invalid(
                "collector.netns",
                format!(
                    "`{}` does not exist (looked at {})",
                    c.netns,
                    crate::netns::resolve(&c.netns).display()
                ),
            ));
        }
        if !c.pin_path.is_empty() {
            let path = std::path::Path::new(&c.pin_path);
            if !path.is_absolute() {
                return Err(ConfigError::invalid(
                    "collector.pin_path",
                    format!("`{}` is not an absolute path", c.pin_path),
                ));
            }
            if !crate::pins::on_bpffs(path) {
                return Err(ConfigError::invalid(
                    "collector.pin_path",
                    format!(
                        "`{}` is not on a bpf filesystem (mount one: mount -t bpf bpf /sys/fs/bpf)",
                        c.pin_path
                    ),
                ));
            }
        }
        self.kafka.validate("kafka")?;
        self.telemetry.validate("telemetry")
    }
}

impl CollectorConfig {
    /// The configured host name, or the kernel's.
    pub fn host_name(&self) -> String {
        if !self.host.is_empty() {
            return self.host.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into())
    }
}

impl flowlens_runtime::service::ServiceConfig for Config {
    fn telemetry(&self) -> &flowlens_runtime::telemetry::TelemetryConfig {
        &self.telemetry
    }

    /// Reads `kafka.sasl_password_file`.
    fn resolve(&mut self) -> Result<(), ConfigError> {
        self.kafka.resolve("kafka")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn interfaces_and_brokers_are_lists_in_the_environment() {
        // SAFETY: variable names unique to this test (prefix FLOWLENS_COLLECTOR_T1).
        unsafe {
            std::env::set_var("FLOWLENS_COLLECTOR_T1__COLLECTOR__INTERFACES", "eth0,eth1");
            std::env::set_var("FLOWLENS_COLLECTOR_T1__KAFKA__BROKERS", "a:1,b:2");
            std::env::set_var("FLOWLENS_COLLECTOR_T1__COLLECTOR__SCAN_INTERVAL_MS", "2000");
            std::env::set_var("FLOWLENS_COLLECTOR_T1__COLLECTOR__DNS_PORTS", "53, 5353");
        }
        let c: Config = flowlens_runtime::load_config(None, "FLOWLENS_COLLECTOR_T1").unwrap();
        assert_eq!(c.collector.interfaces, vec!["eth0", "eth1"]);
        assert_eq!(c.kafka.brokers, vec!["a:1", "b:2"]);
        assert_eq!(c.collector.scan_interval_ms, 2000);
        assert_eq!(c.collector.dns_ports, vec![53, 5353]);
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut c = Config::default();
        c.collector.scan_interval_ms = 5;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("collector.scan_interval_ms"));
        let mut c = Config::default();
        c.collector.interfaces = vec!["a-name-that-is-far-too-long".into()];
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("collector.interfaces"));
        for bad in ["relative/pins", "/tmp"] {
            let mut c = Config::default();
            c.collector.pin_path = bad.into();
            assert!(c
                .validate()
                .unwrap_err()
                .to_string()
                .contains("collector.pin_path"));
        }
        for (dns, http) in [
            (vec![0], vec![]),
            (vec![53, 53], vec![]),
            (vec![53], vec![53]),
            ((1..=7).collect(), vec![80, 8080]),
        ] {
            let mut c = Config::default();
            (c.collector.dns_ports, c.collector.http_ports) = (dns, http);
            assert!(c
                .validate()
                .unwrap_err()
                .to_string()
                .contains("collector.http_ports"));
        }
        let mut c = Config::default();
        c.collector.netns = "flowlens-no-such-netns".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("collector.netns"));
    }
}
