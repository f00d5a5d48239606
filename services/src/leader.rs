//! Leadership: exactly one instance at a time persists the projection checkpoints and
//! runs the NATS publisher; every instance serves commands and reads.
//!
//! The leader holds a lease row in the database (`leases`), renewed well inside its
//! time to live; expiry is judged by database time. When the leader dies, the lease
//! expires and another instance takes it, with a higher epoch. Writes made under the
//! lease carry a [`Fence`] (holder and epoch) that the database checks in the same
//! statement, so a leader that was paused past its lease and wakes up still believing
//! it leads cannot overwrite its successor's checkpoints.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::errors::ErrorChain;
use crate::metrics::Metrics;
use crate::store::{Fence, Store};

/// The one lease Circle's single-instance duties share.
pub const LEADER_LEASE: &str = "leader";

/// This instance's view of who leads: `Some(fence)` while it holds the lease.
#[derive(Clone)]
pub struct Leadership(watch::Receiver<Option<Fence>>);

impl Leadership {
    pub fn fence(&self) -> Option<Fence> {
        self.0.borrow().clone()
    }

    /// Waits until this instance leads; `None` when campaigning has stopped.
    pub async fn acquired(&mut self) -> Option<Fence> {
        let fence = self.0.wait_for(Option::is_some).await.ok()?;
        fence.clone()
    }

    /// Completes when the lease held at `fence` is no longer this instance's.
    pub async fn lost(&mut self, fence: &Fence) {
        let _ = self.0.wait_for(|now| now.as_ref() != Some(fence)).await;
    }
}

/// Campaigns for the lease until `stop`, keeping [`Leadership`] current.
pub struct Campaign {
    store: Store,
    holder: Uuid,
    ttl: Duration,
    metrics: Metrics,
    state: watch::Sender<Option<Fence>>,
}

impl Campaign {
    pub fn new(store: Store, ttl: Duration, metrics: Metrics) -> (Campaign, Leadership) {
        let (state, view) = watch::channel(None);
        let campaign = Campaign {
            store,
            holder: Uuid::new_v4(),
            ttl,
            metrics,
            state,
        };
        (campaign, Leadership(view))
    }

    /// Tries for the lease every third of its time to live. A leader that cannot
    /// renew steps down before its lease can expire, not after.
    pub async fn run(&self, stop: CancellationToken) -> anyhow::Result<()> {
        let renew_every = self.ttl / 3;
        let mut renewed_at: Option<Instant> = None;
        loop {
            match self
                .store
                .acquire_lease(LEADER_LEASE, self.holder, self.ttl)
                .await
            {
                Ok(Some(epoch)) => {
                    renewed_at = Some(Instant::now());
                    self.set(Some(Fence {
                        lease: LEADER_LEASE.to_string(),
                        holder: self.holder,
                        epoch,
                    }));
                }
                Ok(None) => {
                    renewed_at = None;
                    self.set(None);
                }
                Err(error) => {
                    if renewed_at.is_some_and(|at| at.elapsed() + renew_every >= self.ttl) {
                        renewed_at = None;
                        self.set(None);
                    }
                    tracing::warn!(error = %ErrorChain(&error), "renewing the leader lease failed");
                }
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(renew_every) => {}
            }
        }
        if self.state.borrow().is_some() {
            self.set(None);
            // Let a successor take over now rather than after the lease runs out.
            if let Err(error) = self.store.release_lease(LEADER_LEASE, self.holder).await {
                tracing::warn!(error = %ErrorChain(&error), "releasing the leader lease");
            }
        }
        Ok(())
    }

    fn set(&self, fence: Option<Fence>) {
        let changed = self.state.send_if_modified(|current| {
            if *current == fence {
                false
            } else {
                *current = fence.clone();
                true
            }
        });
        if changed {
            match &fence {
                Some(fence) => tracing::info!(epoch = fence.epoch, "this instance now leads"),
                None => tracing::info!("this instance no longer leads"),
            }
            self.metrics.set_leader(fence.is_some());
        }
    }
}
