//! The INSERTs in flight: sealed batches of distinct partitions, each inserted by its own task
//! while the loop consumes and decodes the next records, and the gate that makes a revocation
//! of a partition wait for the end of its INSERT (acknowledged or failed) before the partition
//! is given up, so that its next owner reads back a ClickHouse that holds every row this sink
//! will ever insert of it.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::task::{JoinError, JoinHandle};

use crate::batch::{PartitionKey, Sealed};
use crate::insert::Inserter;

/// The partitions whose INSERT is in flight, shared by the loop, the INSERTs' tasks and the
/// consumer's rebalance callback.
pub struct InsertGate {
    inserting: Mutex<Vec<PartitionKey>>,
    ended: Condvar,
    /// The longest wait of a revocation (an INSERT ends by its own timeouts well before).
    limit: Duration,
}

impl InsertGate {
    pub fn new(limit: Duration) -> Self {
        Self {
            inserting: Mutex::new(Vec::new()),
            ended: Condvar::new(),
            limit,
        }
    }

    fn begin(&self, key: PartitionKey) {
        self.inserting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(key);
    }

    fn end(&self, key: &PartitionKey) {
        let mut inserting = self.inserting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = inserting.iter().position(|k| k == key) {
            inserting.swap_remove(i);
        }
        drop(inserting);
        self.ended.notify_all();
    }

    /// Called by the rebalance callback before `revoked` are given up: waits until no INSERT
    /// of theirs is in flight. The callback runs inside `recv()` on a runtime worker; the wait
    /// hands the worker's other tasks (the INSERT's among them) to another thread.
    pub fn wait_before_revoking(&self, revoked: &[PartitionKey]) {
        let inserting = |keys: &Vec<PartitionKey>| keys.iter().any(|k| revoked.contains(k));
        if !inserting(&self.inserting.lock().unwrap_or_else(|p| p.into_inner())) {
            return;
        }
        let started = Instant::now();
        let wait = || {
            let guard = self.inserting.lock().unwrap_or_else(|p| p.into_inner());
            let (guard, timeout) = self
                .ended
                .wait_timeout_while(guard, self.limit, |keys| inserting(keys))
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

/// Takes the INSERT's partition out of the gate when its task ends, however it ends.
struct Ending(Arc<InsertGate>, PartitionKey);

impl Drop for Ending {
    fn drop(&mut self) {
        self.0.end(&self.1);
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
        let key = (batch.topic.clone(), batch.partition);
        gate.begin(key.clone());
        let (inserter, ending) = (inserter.clone(), Ending(gate.clone(), key));
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

/// The first INSERT of `flights` to end: its index and outcome (pending forever without one).
pub async fn ended(flights: &mut [InFlight]) -> (usize, Outcome) {
    std::future::poll_fn(|cx| {
        for (i, f) in flights.iter_mut().enumerate() {
            if let Poll::Ready(outcome) = Pin::new(&mut f.task).poll(cx) {
                return Poll::Ready((i, outcome));
            }
        }
        Poll::Pending
    })
    .await
}
