//! Group commit: one task owns all appends and commits whatever has queued up while
//! the previous transaction was in flight, as one transaction.
//!
//! Under load this turns N concurrent commands into one round of lock, insert and
//! fsync instead of N, which is how Circle passes the ~5,800 commands/s ceiling of
//! one transaction per command on a small machine. With a single writer it costs
//! nothing: a lone command is committed alone, immediately.

use std::time::Instant;

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::metrics::Metrics;
use crate::store::{Append, AppendResult, Store, StoreError};

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
    /// Starts the committing task. `max_batch` bounds one transaction's appends;
    /// `in_flight` is how many batches may be committing at once. With more than one,
    /// the next batch is already waiting on the log-head lock when the previous one
    /// commits, so no round trip is lost between them. Positions stay in commit order
    /// (the lock decides), and one aggregate never has two appends in flight (the
    /// command service holds its lock until the answer).
    pub fn start(store: Store, metrics: Metrics, max_batch: usize, in_flight: usize) -> Appender {
        let (queue, mut incoming) = mpsc::channel::<(Append, Reply)>(max_batch * 4);
        let slots = Arc::new(Semaphore::new(in_flight.max(1)));
        tokio::spawn(async move {
            loop {
                // Wait for a free slot first: requests arriving meanwhile join this batch.
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let Some((append, reply)) = incoming.recv().await else {
                    return;
                };
                let mut appends = vec![append];
                let mut replies = vec![reply];
                while appends.len() < max_batch {
                    match incoming.try_recv() {
                        Ok((append, reply)) => {
                            appends.push(append);
                            replies.push(reply);
                        }
                        Err(_) => break,
                    }
                }
                let (store, metrics) = (store.clone(), metrics.clone());
                tokio::spawn(async move {
                    commit(&store, &metrics, appends, replies).await;
                    drop(slot);
                });
            }
        });
        Appender { queue }
    }

    /// Queues an append and waits for its transaction to commit (or fail).
    pub async fn append(&self, append: Append) -> Result<AppendResult, SharedStoreError> {
        let (reply, answer) = oneshot::channel();
        let closed = || {
            SharedStoreError(Arc::new(StoreError::Corrupt(
                "appender stopped".into(),
            )))
        };
        self.queue
            .send((append, reply))
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }
}

async fn commit(store: &Store, metrics: &Metrics, appends: Vec<Append>, replies: Vec<Reply>) {
    let started = Instant::now();
    let outcome = store.commit_batch(&appends).await;
    metrics.observe_batch(&appends, outcome.as_ref().ok(), started.elapsed());
    match outcome {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(result));
            }
        }
        Err(error) => {
            let shared = SharedStoreError(Arc::new(error));
            for reply in replies {
                let _ = reply.send(Err(shared.clone()));
            }
        }
    }
}
