//! Owns every background task and the one shutdown.
//!
//! Each task is started by a factory that takes its stop token, so a task that ends
//! unexpectedly (error or panic) can be started again. What happens then is the task's
//! [`OnExit`] policy, chosen where the task is spawned (`app.rs`), and the log names the
//! task with its whole error chain. While a task is down, [`Health`] says so: `/readyz`
//! fails while a *required* task is down, and `circle_task_up{task}` shows it.
//!
//! Shutdown is staged, because order matters: the appender must drain the commands
//! HTTP let in before the followers (projector, publisher) take their last step, so
//! that the projector's final checkpoint and the publisher's last acks include them.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::errors::ErrorChain;
use crate::metrics::Metrics;

/// What to do when a task ends while no one asked it to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnExit {
    /// Start it again after a backoff (1 s doubling to 30 s; reset after a minute up).
    Restart,
    /// Shut the whole process down and exit non-zero: running on without it is unsafe.
    StopProcess,
}

/// Shutdown stages, stopped in this order after HTTP has drained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// The appender: commits what in-flight commands queued, then stops.
    Writers,
    /// Projector, publisher, NATS service: a last step, checkpoints, acks.
    Followers,
    /// The leader lease, released last so the followers' final saves still hold it.
    Lease,
}

/// Which supervised tasks are up; shared with `/readyz`.
#[derive(Clone, Default)]
pub struct Health(Arc<Mutex<BTreeMap<&'static str, TaskHealth>>>);

#[derive(Clone, Copy, Debug)]
struct TaskHealth {
    up: bool,
    required: bool,
}

impl Health {
    fn set(&self, task: &'static str, required: bool, up: bool) {
        let mut tasks = self.0.lock().unwrap_or_else(|p| p.into_inner());
        tasks.insert(task, TaskHealth { up, required });
    }

    /// Required tasks that are not running, by name.
    pub fn down(&self) -> Vec<&'static str> {
        let tasks = self.0.lock().unwrap_or_else(|p| p.into_inner());
        tasks
            .iter()
            .filter(|(_, t)| t.required && !t.up)
            .map(|(name, _)| *name)
            .collect()
    }
}

struct Supervised {
    name: &'static str,
    stage: Stage,
    handle: JoinHandle<()>,
}

pub struct Supervisor {
    tasks: Vec<Supervised>,
    stops: BTreeMap<Stage, CancellationToken>,
    /// Cancelled when a `StopProcess` task has died.
    fatal: CancellationToken,
    health: Health,
    metrics: Metrics,
}

const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const HEALTHY_RUN: Duration = Duration::from_secs(60);

impl Supervisor {
    pub fn new(metrics: Metrics) -> Supervisor {
        Supervisor {
            tasks: Vec::new(),
            stops: [Stage::Writers, Stage::Followers, Stage::Lease]
                .into_iter()
                .map(|stage| (stage, CancellationToken::new()))
                .collect(),
            fatal: CancellationToken::new(),
            health: Health::default(),
            metrics,
        }
    }

    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// The token a stage's tasks stop on, for tasks started outside the supervisor.
    pub fn stop_token(&self, stage: Stage) -> CancellationToken {
        self.stops[&stage].clone()
    }

    /// Completes when a task whose policy is [`OnExit::StopProcess`] has died.
    pub fn fatal(&self) -> CancellationToken {
        self.fatal.clone()
    }

    /// [`Supervisor::spawn`] for a task whose state outlives its restarts (a queue's
    /// receiving end): the same worker runs again after each restart.
    pub fn spawn_worker<W: Worker>(
        &mut self,
        name: &'static str,
        stage: Stage,
        on_exit: OnExit,
        required: bool,
        worker: W,
    ) {
        let worker = Arc::new(tokio::sync::Mutex::new(worker));
        self.spawn(name, stage, on_exit, required, move |stop| {
            let worker = worker.clone();
            async move { worker.lock().await.run(stop).await }
        });
    }

    /// Supervises `start(stop)`: runs it in a span named after the task, restarts it or
    /// stops the process when it ends unasked, and ends it when `stage` is stopped.
    pub fn spawn<F, Fut>(
        &mut self,
        name: &'static str,
        stage: Stage,
        on_exit: OnExit,
        required: bool,
        mut start: F,
    ) where
        F: FnMut(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let stop = self.stop_token(stage);
        let (fatal, health, metrics) = (
            self.fatal.clone(),
            self.health.clone(),
            self.metrics.clone(),
        );
        let supervise = async move {
            let mut backoff = BACKOFF_START;
            loop {
                health.set(name, required, true);
                metrics.task_up(name, true);
                let started = Instant::now();
                let span = tracing::info_span!("task", task = name);
                // A task of its own, so a panic ends the task, not the supervisor.
                let outcome = tokio::spawn(start(stop.clone()).instrument(span)).await;
                health.set(name, required, false);
                metrics.task_up(name, false);
                let asked = stop.is_cancelled();
                match (&outcome, asked) {
                    (Ok(Ok(())), true) => {
                        tracing::info!(task = name, "task stopped");
                        return;
                    }
                    (Ok(Err(error)), _) => {
                        let error: &dyn std::error::Error = error.as_ref();
                        tracing::error!(task = name, error = %ErrorChain(error), "task failed");
                    }
                    (Err(panic), _) => {
                        tracing::error!(task = name, error = %ErrorChain(panic), "task panicked");
                    }
                    (Ok(Ok(())), false) => {
                        tracing::error!(task = name, "task ended unexpectedly");
                    }
                }
                if asked {
                    return;
                }
                match on_exit {
                    OnExit::StopProcess => {
                        tracing::error!(task = name, "stopping the process: this task is required");
                        fatal.cancel();
                        return;
                    }
                    OnExit::Restart => {
                        if started.elapsed() >= HEALTHY_RUN {
                            backoff = BACKOFF_START;
                        }
                        tracing::warn!(
                            task = name,
                            backoff_ms = backoff.as_millis() as u64,
                            "restarting task"
                        );
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
        };
        self.tasks.push(Supervised {
            name,
            stage,
            handle: tokio::spawn(supervise),
        });
    }

    /// Stops one stage's tasks and waits for them, until `deadline`. Tasks still
    /// running then are aborted, and named in the log.
    pub async fn stop(&mut self, stage: Stage, deadline: tokio::time::Instant) {
        self.stops[&stage].cancel();
        let (stopping, rest): (Vec<_>, Vec<_>) =
            self.tasks.drain(..).partition(|t| t.stage == stage);
        self.tasks = rest;
        for task in stopping {
            let abort = task.handle.abort_handle();
            if tokio::time::timeout_at(deadline, task.handle)
                .await
                .is_err()
            {
                tracing::error!(task = task.name, "task did not stop in time; aborted");
                abort.abort();
            }
        }
    }
}

/// A supervisor dropped without stopping its stages (an `Application` that failed
/// partway through `build`, or was never run) stops them now. Its workers end only
/// when told to, even once nothing can send them more work, so without this they
/// would wait forever, holding their store's connections.
impl Drop for Supervisor {
    fn drop(&mut self) {
        for stop in self.stops.values() {
            stop.cancel();
        }
    }
}

/// A supervised task's state that survives its restarts; see
/// [`Supervisor::spawn_worker`].
pub trait Worker: Send + 'static {
    /// Works until `stop`, then finishes what is queued and returns.
    fn run(&mut self, stop: CancellationToken) -> impl Future<Output = anyhow::Result<()>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A worker that, like the queue workers, ends only when told to stop.
    struct UntilStopped(tokio::sync::mpsc::Sender<()>);

    impl Worker for UntilStopped {
        async fn run(&mut self, stop: CancellationToken) -> anyhow::Result<()> {
            stop.cancelled().await;
            let _ = self.0.send(()).await;
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_supervisor_dropped_without_stopping_stops_its_workers() {
        // Given a worker supervised by an application that is dropped before it runs
        // (its build failed partway),
        let (ended, mut endings) = tokio::sync::mpsc::channel(1);
        let mut supervisor = Supervisor::new(Metrics::new());
        let worker = UntilStopped(ended);
        supervisor.spawn_worker("worker", Stage::Writers, OnExit::Restart, true, worker);
        // when the supervisor is dropped,
        drop(supervisor);
        // then the worker is told to stop, and ends.
        let ending = tokio::time::timeout(Duration::from_secs(10), endings.recv()).await;
        assert_eq!(ending, Ok(Some(())), "the worker was never stopped");
    }
}
