//! Group commit: one task owns all appends and commits whatever has queued up while
//! the previous transaction was in flight, as one transaction.
//!
//! Under load this turns N concurrent commands into one round of lock, insert and
//! fsync instead of N, which is how Circle passes the ~5,800 commands/s ceiling of
//! one transaction per command on a small machine. With a single writer it costs
//! nothing: a lone command is committed alone, immediately.
//!
//! One bad append must not fail its batch-mates: when a batch fails, each of its
//! appends is committed again on its own, so the error reaches only the append that
//! caused it (and every append, if the store itself is down).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::errors::ErrorChain;
use crate::metrics::Metrics;
use crate::store::{Append, AppendResult, RawEvent, Store, StoreError};

/// Scheduler turns without a new arrival before a batch is sent.
const GATHER_TURNS: u32 = 8;
/// How long a batch still waits for the writers it expects (see [`gather`]) after
/// the last arrival. Writers answered by the last commit come back within tens of
/// microseconds of each other; a pause this long means the rest are not coming.
const LINGER: Duration = Duration::from_micros(500);
/// The longest a batch waits for expected writers in all, however steadily they
/// trickle in: under a steady trickle of unrelated writers the linger alone would
/// keep a batch open indefinitely. The expected ones return within about a
/// millisecond of each other on two cores.
const LINGER_AT_MOST: Duration = Duration::from_millis(2);

/// The senders a [`gather`] waits for: `items` in all, as long as each arrives
/// within `linger` of the one before and within `at_most` of the first.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Expected {
    pub items: usize,
    pub linger: Duration,
    pub at_most: Duration,
}

impl Expected {
    /// No one in particular: the batch holds what is queued and what arrives within
    /// a few scheduler turns.
    pub const NONE: Expected = Expected {
        items: 0,
        linger: Duration::ZERO,
        at_most: Duration::ZERO,
    };
}

type Outcome = Result<AppendResult, SharedStoreError>;
type Reply = oneshot::Sender<Vec<Outcome>>;
/// A chain of appends (usually one), committed in order and answered together.
type Queued = (Vec<Append>, Reply);

fn stopped() -> SharedStoreError {
    SharedStoreError(Arc::new(StoreError::Stopped))
}

/// A store failure seen by every append it failed.
#[derive(Clone, Debug, thiserror::Error)]
#[error("appending to the event store")]
pub struct SharedStoreError(#[source] pub Arc<StoreError>);

#[derive(Clone)]
pub struct Appender {
    queue: mpsc::Sender<Queued>,
    disk_full: Arc<AtomicBool>,
}

/// The committing task's half: run it (supervised) with [`AppendWorker::run`].
pub struct AppendWorker {
    incoming: mpsc::Receiver<Queued>,
    store: Store,
    metrics: Metrics,
    max_batch: usize,
    committed: watch::Sender<i64>,
    /// Set when a commit failed for want of disk, cleared by the next that succeeds.
    disk_full: Arc<AtomicBool>,
    /// Where this instance's committed events go for its projector, when it has one.
    feed: Option<CommitFeed>,
}

/// Events this instance's appender committed, in log order, for its projector to
/// fold without reading them back from the store (one query and one decode of every
/// row less per group commit). Only a gap-free run right after the projection's
/// position is taken from here; anything else (another instance's commits, a token's
/// event committed beside the appender, events dropped from a full feed) is read
/// from the log as before, so the feed never changes what is folded, only from where.
#[derive(Clone, Default)]
pub struct CommitFeed(Arc<Mutex<Fed>>);

/// The feed's events and the bytes of their payloads.
#[derive(Default)]
struct Fed {
    events: VecDeque<RawEvent>,
    bytes: usize,
}

impl Fed {
    fn pop_front(&mut self) {
        if let Some(event) = self.events.pop_front() {
            self.bytes -= event.payload.len();
        }
    }
}

/// Events the feed holds at most, and their payloads' bytes at most; past either the
/// oldest are dropped (a projector that stalled or is catching up reads them from
/// the log instead).
const FEED_MAX: usize = 20_000;
const FEED_MAX_BYTES: usize = 16 << 20;

impl CommitFeed {
    fn extend(&self, events: Vec<RawEvent>) {
        let mut fed = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for event in events {
            fed.bytes += event.payload.len();
            fed.events.push_back(event);
        }
        while fed.events.len() > FEED_MAX || fed.bytes > FEED_MAX_BYTES {
            fed.pop_front();
        }
    }

    /// The events right after `position`, gap-free, at most `limit` of them; `None`
    /// when the next event is not here and must be read from the log. Events at or
    /// before `position` are dropped.
    pub fn after(&self, position: i64, limit: usize) -> Option<Vec<RawEvent>> {
        let mut fed = self.0.lock().unwrap_or_else(|p| p.into_inner());
        while fed.events.front().is_some_and(|e| e.position <= position) {
            fed.pop_front();
        }
        let mut next = position + 1;
        let run = fed
            .events
            .iter()
            .take(limit)
            .take_while(|e| {
                let follows = e.position == next;
                next += 1;
                follows
            })
            .count();
        if run == 0 {
            return None;
        }
        let taken: Vec<RawEvent> = fed.events.drain(..run).collect();
        fed.bytes -= taken.iter().map(|e| e.payload.len()).sum::<usize>();
        Some(taken)
    }
}

impl Appender {
    /// The queue and the task that empties it. `max_batch` bounds one transaction's
    /// appends (a chain is never split, so the one that crosses it ends the batch);
    /// `committed` carries the newest committed position (projections wait
    /// on it).
    pub fn new(
        store: Store,
        metrics: Metrics,
        max_batch: usize,
        committed: watch::Sender<i64>,
    ) -> (Appender, AppendWorker) {
        let (queue, incoming) = mpsc::channel(max_batch * 4);
        let disk_full = Arc::new(AtomicBool::new(false));
        let worker = AppendWorker {
            incoming,
            store,
            metrics,
            max_batch,
            committed,
            disk_full: disk_full.clone(),
            feed: None,
        };
        (Appender { queue, disk_full }, worker)
    }

    /// Whether the last commit failed because the store's disk is full: no write
    /// can succeed, so the instance is not ready. The next successful commit clears it.
    pub fn disk_full(&self) -> bool {
        self.disk_full.load(Ordering::Relaxed)
    }

    /// Queues an append and waits for its transaction to commit (or fail).
    pub async fn append(&self, append: Append) -> Outcome {
        let mut outcomes = self.append_chain(vec![append]).await;
        outcomes.pop().unwrap_or_else(|| Err(stopped()))
    }

    /// Queues appends to be committed in this order, usually in one transaction, and
    /// waits for them: one outcome each. An append to a stream that follows one of
    /// that stream's that did not commit is a conflict (the store's rule), so a chain
    /// of appends each decided on the state the one before leaves stops at its first
    /// failure.
    pub async fn append_chain(&self, appends: Vec<Append>) -> Vec<Outcome> {
        let count = appends.len();
        let (reply, answer) = oneshot::channel();
        let answered = match self.queue.send((appends, reply)).await {
            Ok(()) => answer.await.ok(),
            Err(_) => None,
        };
        answered
            .filter(|outcomes| outcomes.len() == count)
            .unwrap_or_else(|| (0..count).map(|_| Err(stopped())).collect())
    }
}

/// Waits for the next queued item, then gathers into `batch` what else is queued,
/// giving senders that are about to submit a few scheduler turns as long as that
/// keeps bringing more (without this, writers settle into two half-size alternating
/// batches), until the items' `weight` reaches `max` (an item is never split, so the
/// last may go past it). While the batch holds fewer than the `expected` items it
/// keeps waiting as long as arrivals are less than its `linger` apart and the first is
/// less than `at_most` ago: the appender expects back the writers its last commit
/// answered, and a writer that misses the batch by a few hundred microseconds waits
/// a whole commit for the next one. The waiting yields to the scheduler in a loop, so
/// it keeps a core busy (for at most `at_most`) rather than sleeping: a timer's
/// granularity is coarser than the gaps it waits out. On `stop` the
/// queue refuses new items and what is already queued still arrives; `false` once
/// it is closed and empty and `stop` has come. Shared by the appender (weighing a
/// chain by its appends), the access log's writer and the token lookups (which
/// expect nothing).
pub(crate) async fn gather<T>(
    incoming: &mut mpsc::Receiver<T>,
    stop: &CancellationToken,
    max: usize,
    expected: Expected,
    batch: &mut Vec<T>,
    weight: impl Fn(&T) -> usize,
) -> bool {
    let first = loop {
        tokio::select! {
            biased;
            first = incoming.recv() => break first,
            // Senders now get an error at once; what is queued still arrives.
            _ = stop.cancelled(), if !incoming.is_closed() => incoming.close(),
        }
    };
    let Some(first) = first else {
        // Every sender is gone (at shutdown the HTTP server, holding the last ones,
        // can finish before the supervisor stops this worker): nothing more can come,
        // but the worker ends when it is told to, or its supervisor would take a
        // clean stop for a task lost and stop the process.
        stop.cancelled().await;
        return false;
    };
    let mut weighed = weight(&first);
    batch.push(first);
    let mut idle_turns = 0;
    let first_arrival = Instant::now();
    let mut last_arrival = first_arrival;
    let waiting = |batch: &Vec<T>, idle_turns, last_arrival: Instant| {
        idle_turns < GATHER_TURNS
            || (batch.len() < expected.items
                && last_arrival.elapsed() < expected.linger
                && first_arrival.elapsed() < expected.at_most)
    };
    while weighed < max && waiting(batch, idle_turns, last_arrival) {
        match incoming.try_recv() {
            Ok(item) => {
                weighed += weight(&item);
                batch.push(item);
                idle_turns = 0;
                last_arrival = Instant::now();
            }
            // Every sender is gone: nothing more can arrive.
            Err(mpsc::error::TryRecvError::Disconnected) => break,
            Err(mpsc::error::TryRecvError::Empty) => {
                idle_turns += 1;
                tokio::task::yield_now().await;
            }
        }
    }
    true
}

impl AppendWorker {
    /// Hands every committed event to `feed` (this instance's projector), before
    /// the committed position is announced.
    pub fn feeding(mut self, feed: CommitFeed) -> AppendWorker {
        self.feed = Some(feed);
        self
    }

    /// Commits until `stop`; then refuses new appends, commits those already
    /// queued, and returns. Nothing acknowledged is left behind.
    pub async fn run(&mut self, stop: CancellationToken) -> anyhow::Result<()> {
        let mut queued = Vec::with_capacity(self.max_batch);
        // The writers the last commit answered, and those that queued while it ran.
        let mut expected = Expected::NONE;
        while gather(
            &mut self.incoming,
            &stop,
            self.max_batch,
            expected,
            &mut queued,
            |(chain, _)| chain.len(),
        )
        .await
        {
            let mut appends = Vec::with_capacity(queued.len());
            let mut replies = Vec::with_capacity(queued.len());
            for (chain, reply) in queued.drain(..) {
                replies.push((reply, chain.len()));
                appends.extend(chain);
            }
            self.metrics.appender_queue_depth(self.incoming.len());
            let outcomes = self.commit(&appends).await;
            let newest = outcomes
                .iter()
                .filter_map(|r| match r {
                    Ok(AppendResult::Committed { last_position, .. }) => Some(*last_position),
                    _ => None,
                })
                .max();
            if let Some(newest) = newest {
                self.committed.send_replace(newest);
                self.disk_full.store(false, Ordering::Relaxed);
            } else if outcomes
                .iter()
                .any(|r| matches!(r, Err(e) if matches!(*e.0, StoreError::DiskFull(_))))
            {
                self.disk_full.store(true, Ordering::Relaxed);
            }
            expected = Expected {
                items: replies.len() + self.incoming.len(),
                linger: LINGER,
                at_most: LINGER_AT_MOST,
            };
            let mut outcomes = outcomes.into_iter();
            for (reply, count) in replies {
                let _ = reply.send(outcomes.by_ref().take(count).collect());
            }
        }
        Ok(())
    }

    /// One result per append: the batch in one transaction, or, if that fails, each
    /// append alone so that one append's error is only its own.
    async fn commit(&self, appends: &[Append]) -> Vec<Outcome> {
        match self.commit_timed(appends).await {
            Ok(results) => return results.into_iter().map(Ok).collect(),
            // Logged where it is answered (HTTP), with its cause chain.
            Err(error) if appends.len() == 1 => {
                return vec![Err(SharedStoreError(Arc::new(error)))]
            }
            Err(error) => {
                tracing::warn!(error = %ErrorChain(&error), appends = appends.len(), "batch failed; committing its appends one by one");
            }
        }
        let mut outcomes = Vec::with_capacity(appends.len());
        // Alone, a chain's link no longer sees its predecessor's outcome in the same
        // call: the store's rule (a chained append after one of its stream's that did
        // not commit is a conflict) is kept here.
        let mut broken = std::collections::HashSet::new();
        for append in appends {
            let stream = (append.aggregate_type, append.aggregate_id.as_str());
            if append.chained && broken.contains(&stream) {
                // The stream's version is not read: the caller reads the log.
                outcomes.push(Ok(AppendResult::Conflict {
                    actual_version: append.expected_version,
                }));
                continue;
            }
            let outcome = match self.commit_timed(std::slice::from_ref(append)).await {
                Ok(mut results) => results.pop().ok_or_else(|| {
                    SharedStoreError(Arc::new(StoreError::Corrupt(
                        "no result for an append".into(),
                    )))
                }),
                Err(error) => Err(SharedStoreError(Arc::new(error))),
            };
            if !matches!(outcome, Ok(AppendResult::Committed { .. })) {
                broken.insert(stream);
            }
            outcomes.push(outcome);
        }
        outcomes
    }

    async fn commit_timed(&self, appends: &[Append]) -> Result<Vec<AppendResult>, StoreError> {
        let started = Instant::now();
        let outcome = self.store.commit(appends).await.map(|commit| {
            if let Some(feed) = &self.feed {
                feed.extend(commit.events);
            }
            commit.results
        });
        self.metrics
            .observe_batch(appends, outcome.as_ref().ok(), started.elapsed());
        outcome
    }
}

impl crate::supervisor::Worker for AppendWorker {
    fn run(
        &mut self,
        stop: CancellationToken,
    ) -> impl std::future::Future<Output = anyhow::Result<()>> + Send {
        AppendWorker::run(self, stop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends `items` to `queue` from another thread, `apart` from each other.
    fn send_later(
        queue: mpsc::Sender<u32>,
        items: std::ops::Range<u32>,
        apart: Duration,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            for item in items {
                std::thread::sleep(apart);
                queue.blocking_send(item).expect("the gatherer is waiting");
            }
        })
    }

    /// One gather, failing the test rather than hanging it if the gather never ends.
    async fn gather_one(
        incoming: &mut mpsc::Receiver<u32>,
        expected: Expected,
    ) -> (Vec<u32>, Duration) {
        let started = Instant::now();
        let mut batch = Vec::new();
        let stop = CancellationToken::new();
        let gathered = tokio::time::timeout(
            Duration::from_secs(10),
            gather(incoming, &stop, 32, expected, &mut batch, |_| 1),
        )
        .await
        .expect("the gather ends");
        assert!(gathered);
        (batch, started.elapsed())
    }

    #[tokio::test]
    async fn a_queue_whose_senders_are_gone_ends_its_gatherer_only_when_told_to_stop() {
        // Given a queue whose every sender has been dropped (the HTTP server that held
        // them has finished, the supervisor has not yet stopped the worker),
        let (queue, mut incoming) = mpsc::channel::<u32>(8);
        drop(queue);
        let stop = CancellationToken::new();
        let mut batch = Vec::new();
        let mut gathering = std::pin::pin!(gather(
            &mut incoming,
            &stop,
            32,
            Expected::NONE,
            &mut batch,
            |_| 1
        ));
        // then the gather does not end on its own,
        let early = tokio::time::timeout(Duration::from_millis(100), &mut gathering).await;
        assert!(early.is_err(), "ended before stop: {early:?}");
        // and when stop comes, it ends with nothing gathered.
        stop.cancel();
        let gathered = tokio::time::timeout(Duration::from_secs(10), gathering)
            .await
            .expect("the gather ends on stop");
        assert!(!gathered);
    }

    #[tokio::test]
    async fn a_batch_waits_for_the_writers_it_expects_while_they_keep_coming() {
        // Given one writer queued and two more following 100 ms apart, longer in all
        // than the linger,
        let (queue, mut incoming) = mpsc::channel(8);
        queue.send(0).await.unwrap();
        let late = send_later(queue.clone(), 1..3, Duration::from_millis(100));
        // when the batch expects three writers, each within 250 ms of the last,
        let expected = Expected {
            items: 3,
            linger: Duration::from_millis(250),
            at_most: Duration::from_secs(5),
        };
        // then it carries all three.
        let (batch, _) = gather_one(&mut incoming, expected).await;
        assert_eq!(batch, vec![0, 1, 2]);
        late.join().unwrap();

        // Expecting no one, the batch leaves with what is queued: a writer a moment
        // behind goes in the next one.
        queue.send(3).await.unwrap();
        let late = send_later(queue.clone(), 4..5, Duration::from_millis(50));
        let (batch, _) = gather_one(&mut incoming, Expected::NONE).await;
        assert_eq!(batch, vec![3]);
        late.join().unwrap();
        let (batch, _) = gather_one(&mut incoming, Expected::NONE).await;
        assert_eq!(batch, vec![4]);
    }

    #[tokio::test]
    async fn a_batch_stops_waiting_for_a_writer_that_does_not_come() {
        let (queue, mut incoming) = mpsc::channel(8);
        queue.send(0).await.unwrap();
        let expected = Expected {
            items: 3,
            linger: Duration::from_millis(30),
            at_most: Duration::from_secs(5),
        };
        let (batch, waited) = gather_one(&mut incoming, expected).await;
        assert_eq!(batch, vec![0]);
        assert!(waited >= expected.linger, "waited {waited:?}");
        assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    }

    #[tokio::test]
    async fn a_batch_stops_waiting_once_its_first_writer_has_waited_long_enough() {
        // Given writers arriving steadily 400 ms apart, each within the linger (200 ms
        // of slack on every side, for a loaded machine),
        let (queue, mut incoming) = mpsc::channel(8);
        queue.send(0).await.unwrap();
        let late = send_later(queue.clone(), 1..4, Duration::from_millis(400));
        // when the batch may keep its first writer waiting at most 600 ms,
        let expected = Expected {
            items: 4,
            linger: Duration::from_secs(1),
            at_most: Duration::from_millis(600),
        };
        // then it leaves with the writers that came in time; the rest go next.
        let (batch, _) = gather_one(&mut incoming, expected).await;
        assert_eq!(batch, vec![0, 1]);
        late.join().unwrap();
        let (batch, _) = gather_one(&mut incoming, Expected::NONE).await;
        assert_eq!(batch, vec![2, 3]);
    }

    #[tokio::test]
    async fn a_batch_stops_waiting_when_every_writer_is_gone() {
        let (queue, mut incoming) = mpsc::channel(8);
        queue.send(0).await.unwrap();
        drop(queue);
        let expected = Expected {
            items: 3,
            linger: Duration::from_secs(60),
            at_most: Duration::from_secs(60),
        };
        let (batch, waited) = gather_one(&mut incoming, expected).await;
        assert_eq!(batch, vec![0]);
        assert!(waited < Duration::from_secs(5), "waited {waited:?}");
    }

    fn raw(position: i64) -> RawEvent {
        RawEvent {
            position,
            recorded_at: chrono::Utc::now(),
            aggregate_type: "group".into(),
            aggregate_id: "g1".into(),
            event_type: "SessionCancelled".into(),
            event_version: 1,
            payload: "{}".into(),
        }
    }

    fn positions(events: Option<Vec<RawEvent>>) -> Option<Vec<i64>> {
        events.map(|events| events.iter().map(|e| e.position).collect())
    }

    #[test]
    fn the_feed_gives_only_a_gap_free_run_right_after_the_position() {
        let feed = CommitFeed::default();
        feed.extend((3..=5).chain(7..=8).map(raw).collect());
        // Position 2 is another instance's: read from the log.
        assert_eq!(positions(feed.after(1, 100)), None);
        assert_eq!(positions(feed.after(2, 100)), Some(vec![3, 4, 5]));
        // 6 is missing: the log again, and 7 and 8 stay for after it.
        assert_eq!(positions(feed.after(5, 100)), None);
        assert_eq!(positions(feed.after(6, 1)), Some(vec![7]));
        assert_eq!(positions(feed.after(7, 100)), Some(vec![8]));
        assert_eq!(positions(feed.after(8, 100)), None);
    }

    #[test]
    fn the_feed_drops_what_the_projection_has_and_holds_a_bounded_number() {
        let feed = CommitFeed::default();
        feed.extend((1..=5).map(raw).collect());
        // The projection read past them from the log meanwhile.
        assert_eq!(positions(feed.after(4, 100)), Some(vec![5]));
        feed.extend((6..=(FEED_MAX as i64 + 10)).map(raw).collect());
        // The oldest were dropped: the projector at 5 must read the log.
        assert_eq!(positions(feed.after(5, 100)), None);
        let kept = positions(feed.after(15, FEED_MAX)).unwrap();
        assert_eq!(kept.len(), FEED_MAX - 5);
        assert_eq!(kept.first(), Some(&16));

        // Large payloads: bounded by their bytes too.
        let big = |position| RawEvent {
            payload: "x".repeat(1 << 20),
            ..raw(position)
        };
        let start = FEED_MAX as i64 + 11;
        feed.extend((start..start + 40).map(big).collect());
        let kept = positions(feed.after(start + 40 - 17, 100)).unwrap();
        assert_eq!(kept.len(), 16, "16 MiB of 1 MiB payloads");
        assert_eq!(feed.0.lock().unwrap().bytes, 0);
    }
}
