//! What the harness reads while a run goes on: CPU time and memory of processes and of the
//! machine (/proc), the stages' Prometheus counters, and ClickHouse over its HTTP interface.

use std::time::Duration;

use anyhow::Context;
use flowlens_testkit::http_to;

/// CPU seconds (user + system) and resident memory of one process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcStat {
    pub cpu_s: f64,
    pub rss_bytes: u64,
}

/// Reads /proc/PID/stat and /proc/PID/status; `None` once the process is gone.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): utime is field 14, stime 15.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    Some(ProcStat {
        cpu_s: (utime + stime) / ticks,
        rss_bytes: rss_kb * 1024,
    })
}

/// Busy CPU seconds of the whole machine, all cores (/proc/stat: everything but idle and
/// iowait): with the run's own processes' CPU, tells how much other work took.
pub fn machine_busy_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    let busy: f64 = v
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Some(busy / ticks)
}

/// Children of this process whose command name starts with `comm` (how the services that
/// testkit started are found: it does not expose their ids).
pub fn child_pids(comm: &str) -> Vec<u32> {
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = &stat[open + 1..close];
        let ppid = stat[close + 2..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(me) && name.starts_with(comm) {
            out.push(pid);
        }
    }
    out
}

/// ClickHouse over HTTP (`http://host:port`, optional user/password).
#[derive(Debug, Clone)]
pub struct ClickHouse {
    pub addr: String,
    pub user: String,
    pub password: String,
    pub database: String,
}

impl ClickHouse {
    pub fn new(url: &str, database: &str, user: &str, password: &str) -> anyhow::Result<Self> {
        let addr = url
            .strip_prefix("http://")
            .context("--clickhouse-url must be http://host:port")?
            .trim_end_matches('/')
            .to_string();
        Ok(Self {
            addr,
            user: user.into(),
            password: password.into(),
            database: database.into(),
        })
    }

    /// Runs `sql` and returns the TSV body; an error names the query.
    pub fn query(&self, sql: &str) -> anyhow::Result<String> {
        let mut path = format!("/?database={}", self.database);
        if !self.user.is_empty() {
            path.push_str(&format!("&user={}&password={}", self.user, self.password));
        }
        let (status, body) = http_to(&self.addr, "POST", &path, sql, Duration::from_secs(60))
            .with_context(|| format!("ClickHouse at {}", self.addr))?;
        anyhow::ensure!(status == 200, "ClickHouse {status} for `{sql}`: {body}");
        Ok(body)
    }

    /// A query returning one row of numbers.
    pub fn numbers(&self, sql: &str) -> anyhow::Result<Vec<f64>> {
        let body = self.query(sql)?;
        body.trim()
            .split('\t')
            .map(|v| {
                v.parse::<f64>()
                    .with_context(|| format!("`{v}` from `{sql}` is not a number"))
            })
            .collect()
    }
}

/// Sum over every label set of counter/gauge `name` in a Prometheus text exposition.
pub fn metric_sum(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let metric = key.split('{').next()?;
            (metric == name)
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// Scrapes `127.0.0.1:port/metrics`; empty text when the endpoint does not answer.
pub fn scrape(port: u16) -> String {
    http_to(
        &format!("127.0.0.1:{port}"),
        "GET",
        "/metrics",
        "",
        Duration::from_secs(5),
    )
    .map(|(_, body)| body)
    .unwrap_or_default()
}

/// The machine as the report names it: cores, CPU model, memory, kernel.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores ({cpu}), {mem_gib:.0} GiB, Linux {}",
        kernel.trim()
    )
}

/// /proc/loadavg's 1, 5 and 15 minute averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The time now, UTC, to the second (`date -u`).
pub fn utc_now() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sum_adds_label_sets() {
        let text = "# TYPE a counter\na_total 3\na_total{x=\"1\"} 4\nab_total 100\n";
        assert_eq!(metric_sum(text, "a_total"), 7.0);
        assert_eq!(metric_sum(text, "missing"), 0.0);
    }

    #[test]
    fn machine_cpu_is_readable() {
        assert!(machine_busy_s().unwrap() > 0.0);
    }

    #[test]
    fn own_process_is_readable() {
        let s = proc_stat(std::process::id()).unwrap();
        assert!(s.rss_bytes > 0);
    }
}
