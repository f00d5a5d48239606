//! Bounds on costly reads: so many at once, the rest told to come back (503 with
//! `Retry-After`) instead of queueing for memory and two cores. One for `as_of` folds,
//! one for exports streaming their rows.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// At most `max` of one kind of work at once.
#[derive(Clone)]
pub struct Slots {
    permits: Arc<Semaphore>,
    max: usize,
    /// What the work is, for the refusal: "as_of reports are being computed".
    busy: &'static str,
}

/// Every slot is taken.
#[derive(Debug, thiserror::Error)]
#[error("{max} {busy} already; try again shortly")]
pub struct Saturated {
    pub max: usize,
    pub busy: &'static str,
}

impl Slots {
    pub fn new(max_concurrent: usize, busy: &'static str) -> Slots {
        let max = max_concurrent.max(1);
        Slots {
            permits: Arc::new(Semaphore::new(max)),
            max,
            busy,
        }
    }

    /// A slot, held until the permit is dropped; never waits.
    pub fn try_enter(&self) -> Result<OwnedSemaphorePermit, Saturated> {
        self.permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| Saturated {
                max: self.max,
                busy: self.busy,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_beyond_the_limit_is_refused_until_one_ends() {
        let limit = Slots::new(2, "as_of reports are being computed");
        let first = limit.try_enter().unwrap();
        let _second = limit.try_enter().unwrap();
        let refused = limit.try_enter().unwrap_err();
        assert_eq!(
            refused.to_string(),
            "2 as_of reports are being computed already; try again shortly"
        );
        drop(first);
        assert!(limit.try_enter().is_ok());
    }
}
