//! Liveness and readiness of a stage, process-wide, served as `/healthz` and `/readyz` beside
//! `/metrics` (see `telemetry::init_metrics`).
//!
//! * **Live** (`/healthz` 200): every loop that registered with [`watch_loop`] reported
//!   ([`LoopWatch::beat`]) within its allowed silence. A stuck loop makes it 503: restart me.
//! * **Ready** (`/readyz` 200): every condition made with [`condition`] is true (each starts
//!   false: "connected to Kafka", "migrations applied", "interface table caught up", ...). A
//!   dependency that is down makes it 503 while the process stays live: do not send me work,
//!   do not restart me.
//!
//! Both answer with a plain-text list of what is wrong, for people reading the probe's output.

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Registry {
    loops: BTreeMap<&'static str, (Instant, Duration)>,
    conditions: BTreeMap<&'static str, (bool, String)>,
}

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

fn lock() -> std::sync::MutexGuard<'static, Registry> {
    registry().lock().unwrap_or_else(|p| p.into_inner())
}

/// A loop whose progress decides liveness: it must call [`LoopWatch::beat`] at least once per
/// `max_silence` (a loop that waits for input beats on its wait timeout, not only on input).
#[derive(Clone)]
pub struct LoopWatch {
    name: &'static str,
}

/// Registers (or re-registers) the loop `name`; it counts as having just beaten.
pub fn watch_loop(name: &'static str, max_silence: Duration) -> LoopWatch {
    lock().loops.insert(name, (Instant::now(), max_silence));
    LoopWatch { name }
}

impl LoopWatch {
    pub fn beat(&self) {
        if let Some(entry) = lock().loops.get_mut(self.name) {
            entry.0 = Instant::now();
        }
    }

    /// The loop ended on purpose (shutdown): it no longer decides liveness.
    pub fn retire(self) {
        lock().loops.remove(self.name);
    }
}

/// One named readiness condition; false until set.
#[derive(Clone)]
pub struct Condition {
    name: &'static str,
}

/// Registers the condition `name` (false, "not checked yet") or returns the existing one.
pub fn condition(name: &'static str) -> Condition {
    lock()
        .conditions
        .entry(name)
        .or_insert_with(|| (false, "not checked yet".into()));
    Condition { name }
}

impl Condition {
    /// Met: counts towards ready.
    pub fn set_ok(&self) {
        self.set(true, String::new());
    }

    /// Not met, with what is wrong (shown by `/readyz`).
    pub fn set_failing(&self, why: impl Into<String>) {
        self.set(false, why.into());
    }

    pub fn set(&self, ok: bool, why: String) {
        let changed = {
            let mut r = lock();
            let entry = r.conditions.entry(self.name).or_default();
            let changed = entry.0 != ok;
            *entry = (ok, why.clone());
            changed
        };
        if changed {
            metrics::gauge!("flowlens_ready_condition", "condition" => self.name)
                .set(f64::from(u8::from(ok)));
            if ok {
                tracing::info!(condition = self.name, "ready condition met");
            } else {
                tracing::warn!(condition = self.name, reason = %why, "ready condition not met");
            }
        }
    }
}

/// `(live, text)`: the loops silent for longer than allowed.
pub fn liveness() -> (bool, String) {
    let r = lock();
    let now = Instant::now();
    let stale: Vec<String> = r
        .loops
        .iter()
        .filter(|(_, (last, max))| now.duration_since(*last) > *max)
        .map(|(name, (last, max))| {
            format!(
                "{name}: silent for {:.1} s (allowed {:.1} s)",
                now.duration_since(*last).as_secs_f64(),
                max.as_secs_f64()
            )
        })
        .collect();
    if stale.is_empty() {
        (true, "ok\n".into())
    } else {
        (false, stale.join("\n") + "\n")
    }
}

/// `(ready, text)`: the conditions not met, with why. Not ready before the stage registered
/// any condition (it is still starting).
pub fn readiness() -> (bool, String) {
    let r = lock();
    if r.conditions.is_empty() {
        return (
            false,
            "starting: no readiness condition registered yet\n".into(),
        );
    }
    let failing: Vec<String> = r
        .conditions
        .iter()
        .filter(|(_, (ok, _))| !ok)
        .map(|(name, (_, why))| format!("{name}: {why}"))
        .collect();
    if failing.is_empty() {
        (true, "ready\n".into())
    } else {
        (false, failing.join("\n") + "\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_start_false_and_loops_go_stale() {
        let c = condition("test_condition_a");
        assert!(!readiness().0);
        assert!(readiness().1.contains("test_condition_a: not checked yet"));
        c.set_failing("broker down");
        assert!(readiness().1.contains("test_condition_a: broker down"));
        c.set_ok();
        assert!(!readiness().1.contains("test_condition_a"));

        let w = watch_loop("test_loop_a", Duration::from_millis(30));
        assert!(!liveness().1.contains("test_loop_a"));
        std::thread::sleep(Duration::from_millis(60));
        assert!(liveness().1.contains("test_loop_a: silent"));
        w.beat();
        assert!(!liveness().1.contains("test_loop_a"));
        w.retire();
    }
}
