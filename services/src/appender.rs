//! Group commit: one task owns all appends and commits whatever has queued up while
//! the previous transaction was in flight, as one transaction.
//!
//! Under load this turns N concurrent commands into one round of lock, insert and
//! fsync instead of N, which is how Circle passes the ~5,800 commands/s ceiling of
//! one transaction per command on a small machine. With a single writer it costs
//! nothing: a lone command is committed alone, immediately.

use std::time::Instant;

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use crate::metrics::Metrics;
use crate::store::{Append, AppendResult, Store, StoreError};

/// Scheduler turns without a new arrival before a batch is sent.
const GATHER_TURNS: u32 = 8;

type Reply = oneshot::Sender<Result<AppendResult, SharedStoreError>>;

/// A store failure seen by every append of a failed batch.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}")]
pub struct SharedStoreError(pub Arc<StoreError>);

#[derive(Clone)]
pub struct Appender {
    queue: mpsc::Sender<(Append, Reply)>,
}

impl Appender {
    /// Starts the committing task. `max_batch` bounds one transaction's appends.
    /// `committed` carries the newest committed position; projections wait on it.
    pub fn start(
        store: Store,
        metrics: Metrics,
        max_batch: usize,
        committed: watch::Sender<i64>,
    ) -> Appender {
        let (queue, mut incoming) = mpsc::channel::<(Append, Reply)>(max_batch * 4);
        tokio::spawn(async move {
            let mut appends = Vec::with_capacity(max_batch);
            let mut replies = Vec::with_capacity(max_batch);
            while let Some((append, reply)) = incoming.recv().await {
                appends.push(append);
                replies.push(reply);
                // Gather: take what is queued, then give writers that are about to
                // submit a few scheduler turns, as long as that keeps bringing more.
                // Without this, writers settle into two half-size alternating batches.
                let mut idle_turns = 0;
                while appends.len() < max_batch && idle_turns < GATHER_TURNS {
                    match incoming.try_recv() {
                        Ok((append, reply)) => {
                            appends.push(append);
                            replies.push(reply);
                            idle_turns = 0;
                        }
                        Err(_) => {
                            idle_turns += 1;
                            tokio::task::yield_now().await;
                        }
                    }
                }
                let started = Instant::now();
                let outcome = store.commit_batch(&appends).await;
                metrics.observe_batch(&appends, outcome.as_ref().ok(), started.elapsed());
                match outcome {
                    Ok(results) => {
                        let newest = results.iter().filter_map(|r| match r {
                            AppendResult::Committed { last_position, .. } => Some(*last_position),
                            _ => None,
                        });
                        if let Some(newest) = newest.max() {
                            committed.send_replace(newest);
                        }
                        for (reply, result) in replies.drain(..).zip(results) {
                            let _ = reply.send(Ok(result));
                        }
                    }
                    Err(error) => {
                        let shared = SharedStoreError(Arc::new(error));
                        for reply in replies.drain(..) {
                            let _ = reply.send(Err(shared.clone()));
                        }
                    }
                }
                appends.clear();
            }
        });
        Appender { queue }
    }

    /// Queues an append and waits for its transaction to commit (or fail).
    pub async fn append(&self, append: Append) -> Result<AppendResult, SharedStoreError> {
        let (reply, answer) = oneshot::channel();
        let closed = || SharedStoreError(Arc::new(StoreError::Corrupt("appender stopped".into())));
        self.queue
            .send((append, reply))
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}
