//! The INSERT in flight: one sealed batch inserted by its own task while the loop consumes and
//! decodes the next records, and the gate that makes a revocation of its partition wait for
//! its end (acknowledged or failed) before the partition is given up, so that the partition's
//! next owner reads back a ClickHouse that holds every row this sink will ever insert of it.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::task::{JoinError, JoinHandle};

use crate::batch::{PartitionKey, Sealed};
use crate::insert::Inserter;

/// The partition whose INSERT is in flight, shared by the loop, the INSERT's task and the
/// consumer's rebalance callback.
pub struct InsertGate {
    inserting: Mutex<Option<PartitionKey>>,
    ended: Condvar,
    /// The longest wait of a revocation (an INSERT ends by its own timeouts well before).
    limit: Duration,
}

impl InsertGate {
    pub fn new(limit: Duration) -> Self {
        Self {
            inserting: Mutex::new(None),
            ended: Condvar::new(),
            limit,
        }
    }

    fn begin(&self, key: PartitionKey) {
        *self.inserting.lock().unwrap_or_else(|p| p.into_inner()) = Some(key);
    }

    fn end(&self) {
        *self.inserting.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.ended.notify_all();
    }

    /// Called by the rebalance callback before `revoked` are given up: waits until no INSERT
    /// of theirs is in flight. The callback runs inside `recv()` on a runtime worker; the wait
    /// hands the worker's other tasks (the INSERT's among them) to another thread.
    pub fn wait_before_revoking(&self, revoked: &[PartitionKey]) {
        let inserting =
            |key: &Option<PartitionKey>| key.as_ref().is_some_and(|k| revoked.contains(k));
        if !inserting(&self.inserting.lock().unwrap_or_else(|p| p.into_inner())) {
            return;
        }
        let started = Instant::now();
        let wait = || {
            let guard = self.inserting.lock().unwrap_or_else(|p| p.into_inner());
            let (guard, timeout) = self
                .ended
                .wait_timeout_while(guard, self.limit, |key| inserting(key))
                .unwrap_or_else(|p| p.into_inner());
            drop(guard);
            timeout.timed_out()
        };
        let timed_out = match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
            _ => wait(),
        };
        let ms = started.elapsed().as_millis() as u64;
        metrics::counter!("flowlens_sink_revocations_waited_total").increment(1);
        if timed_out {
            tracing::warn!(ms, "partition revoked while its INSERT still runs: given up after the wait limit; its next owner may store some rows twice");
        } else {
            tracing::info!(
                ms,
                "revocation waited for the INSERT in flight of a revoked partition"
            );
        }
    }
}

/// Ends the gate when the INSERT's task ends, however it ends.
struct Ending(Arc<InsertGate>);

impl Drop for Ending {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// What the INSERT's task gives back: the batch's rows (for a retry) and the outcome.
pub type Outcome = Result<(Vec<u8>, anyhow::Result<()>), JoinError>;

/// A judged batch whose INSERT runs in its own task (its rows' bytes are in the task).
pub struct InFlight {
    pub batch: Sealed,
    task: JoinHandle<(Vec<u8>, anyhow::Result<()>)>,
    /// Its partition was revoked while it ran: the batch is neither committed nor retried.
    pub revoked: bool,
}

impl InFlight {
    /// Starts the INSERT of `batch` (judged, with rows).
    pub fn start(mut batch: Sealed, inserter: &Inserter, gate: &Arc<InsertGate>) -> Self {
        let data = std::mem::take(&mut batch.rows.data);
        let (rows, token) = (batch.rows.len(), batch.token.clone());
        gate.begin((batch.topic.clone(), batch.partition));
        let (inserter, ending) = (inserter.clone(), Ending(gate.clone()));
        let task = tokio::spawn(async move {
            let result = inserter.write_encoded(&data, rows, token.as_deref()).await;
            drop(ending);
            (data, result)
        });
        Self {
            batch,
            task,
            revoked: false,
        }
    }

    pub fn is_of(&self, key: &PartitionKey) -> bool {
        self.batch.partition == key.1 && self.batch.topic == key.0
    }
}

/// The end of the INSERT in flight, if any (pending forever without one).
pub async fn ended(flight: &mut Option<InFlight>) -> Outcome {
    match flight {
        Some(f) => (&mut f.task).await,
        None => std::future::pending().await,
    }
}
