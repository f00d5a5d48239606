//! The access log: every disclosure of client-level data and every refused request
//! (401, 403), written durably before the response leaves (ARCHITECTURE.md,
//! "Privacy"). The router's guard builds an [`AccessEntry`] and awaits
//! [`AccessLog::record`]; if it fails, the caller gets 503 and no data.
//!
//! Writes are batched like the appender's: one task takes whatever entries have
//! queued while the previous transaction was in flight and commits them together,
//! so concurrent reads share one lock, one insert and one fsync.
//!
//! Field names follow FHIR R4 AuditEvent: `recorded`, `type` (`rest`), `action`
//! (`R` read, `E` execute), `outcome` (`0` success, `4` minor failure: refused,
//! `8` serious failure), `agent` (`who`, `role`, `token_id`, `clinician_id`),
//! `entity` (the clients disclosed), `purpose_of_event` (`Circle-Purpose`).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::appender::{gather, Expected};
use crate::auth::Principal;
use crate::errors::ErrorChain;
use crate::store::access::NewAccess;
use crate::store::{Store, StoreError};

/// Entries committed together at most.
const MAX_BATCH: usize = 512;
/// More clients than this in one answer are recorded as a count and a digest.
pub const MAX_LISTED_CLIENTS: usize = 100;
/// Longest `Circle-Purpose`, in characters.
pub const MAX_PURPOSE: usize = 200;

/// Why an entry was not written: the read it was for must not be answered.
#[derive(Clone, Debug, thiserror::Error)]
#[error("writing the access log")]
pub struct AccessLogError(#[source] pub Arc<StoreError>);

type Reply = oneshot::Sender<Result<(), AccessLogError>>;

/// The handle requests record through.
#[derive(Clone)]
pub struct AccessLog {
    queue: Option<mpsc::Sender<(NewAccess, Reply)>>,
}

/// The committing task's half; run it (supervised) with [`AccessLogWorker::run`].
pub struct AccessLogWorker {
    incoming: mpsc::Receiver<(NewAccess, Reply)>,
    store: Store,
}

impl AccessLog {
    /// The log and the task that writes it.
    pub fn new(store: Store) -> (AccessLog, AccessLogWorker) {
        let (queue, incoming) = mpsc::channel(MAX_BATCH * 4);
        (
            AccessLog { queue: Some(queue) },
            AccessLogWorker { incoming, store },
        )
    }

    /// No access log (`access_log = false`): only for measuring its cost.
    pub fn off() -> AccessLog {
        AccessLog { queue: None }
    }

    pub fn is_on(&self) -> bool {
        self.queue.is_some()
    }

    /// Queues an entry and waits until its transaction has committed.
    pub async fn record(&self, entry: AccessEntry) -> Result<(), AccessLogError> {
        let Some(queue) = &self.queue else {
            return Ok(());
        };
        let stopped = || AccessLogError(Arc::new(StoreError::Stopped));
        let (reply, answer) = oneshot::channel();
        queue
            .send((entry.into_new(), reply))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

impl AccessLogWorker {
    /// Commits until `stop`; then refuses new entries, commits those queued, returns.
    pub async fn run(&mut self, stop: CancellationToken) -> anyhow::Result<()> {
        let mut queued = Vec::with_capacity(MAX_BATCH);
        while gather(
            &mut self.incoming,
            &stop,
            MAX_BATCH,
            Expected::NONE,
            &mut queued,
            |_| 1,
        )
        .await
        {
            let (batch, replies): (Vec<NewAccess>, Vec<Reply>) = queued.drain(..).unzip();
            let outcome = self.store.append_access(&batch).await.map_err(|error| {
                tracing::warn!(error = %ErrorChain(&error), entries = batch.len(), "the access log could not be written");
                AccessLogError(Arc::new(error))
            });
            for reply in replies {
                let _ = reply.send(outcome.clone());
            }
        }
        Ok(())
    }
}

/// One entry, before it is numbered and chained.
pub struct AccessEntry {
    pub recorded: DateTime<Utc>,
    /// `None` for a request without a valid token (401).
    pub principal: Option<Principal>,
    pub token_id: Option<String>,
    pub method: String,
    pub route: String,
    pub status: u16,
    pub client_ids: Vec<String>,
    pub purpose: Option<String>,
    pub correlation_id: uuid::Uuid,
}

impl AccessEntry {
    fn into_new(self) -> NewAccess {
        let action = if self.method == "GET" { "R" } else { "E" };
        let outcome = match self.status {
            200..=399 => "0",
            400..=499 => "4",
            _ => "8",
        };
        let mut ids = self.client_ids;
        ids.sort_unstable();
        ids.dedup();
        let count = ids.len();
        let (listed, digest) = if count > MAX_LISTED_CLIENTS {
            let mut hasher = Sha256::new();
            for id in &ids {
                hasher.update(id.as_bytes());
                hasher.update(b"\n");
            }
            let digest: String = hasher
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            (Vec::new(), Some(digest))
        } else {
            (ids, None)
        };
        let who = self
            .principal
            .as_ref()
            .map_or("anonymous".to_string(), |p| p.actor_id.clone());
        let entry = json!({
            "recorded": self.recorded,
            "type": "rest",
            "action": action,
            "route": format!("{} {}", self.method, self.route),
            "outcome": outcome,
            "status": self.status,
            "agent": {
                "who": who,
                "role": self.principal.as_ref().map(|p| p.role.as_str()),
                "clinician_id": self.principal.as_ref().and_then(|p| p.clinician_id.clone()),
                "token_id": self.token_id,
            },
            "entity": {
                "client_ids": if digest.is_some() { Value::Null } else { json!(listed) },
                "count": count,
                "digest": digest,
            },
            "purpose_of_event": self.purpose,
            "correlation_id": self.correlation_id,
        });
        NewAccess {
            recorded: self.recorded,
            agent_who: who,
            client_ids: listed,
            entry,
        }
    }
}

/// `Circle-Purpose`: optional free text of at most [`MAX_PURPOSE`] visible ASCII
/// characters and spaces (what an HTTP field value carries without obsolete
/// encodings), so no control characters. `Err` says what is wrong.
pub fn parse_purpose(value: Option<&[u8]>) -> Result<Option<String>, &'static str> {
    let Some(bytes) = value else {
        return Ok(None);
    };
    if !bytes.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return Err("must be visible ASCII characters and spaces, with no control characters");
    }
    if bytes.len() > MAX_PURPOSE {
        return Err("must be at most 200 characters");
    }
    let text = String::from_utf8_lossy(bytes).trim().to_string();
    Ok((!text.is_empty()).then_some(text))
}

/// The same rule, for the API description.
pub const PURPOSE_PATTERN: &str = "^[ -~]*$";

impl crate::supervisor::Worker for AccessLogWorker {
    fn run(
        &mut self,
        stop: CancellationToken,
    ) -> impl std::future::Future<Output = anyhow::Result<()>> + Send {
        AccessLogWorker::run(self, stop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purpose_is_short_plain_text() {
        assert_eq!(parse_purpose(None), Ok(None));
        assert_eq!(
            parse_purpose(Some(b"treatment review")),
            Ok(Some("treatment review".into()))
        );
        assert!(parse_purpose(Some(b"a\tb")).is_err());
        assert!(parse_purpose(Some("x".repeat(201).as_bytes())).is_err());
        assert!(parse_purpose(Some(&[0xff, 0xfe])).is_err());
    }

    #[test]
    fn more_than_a_hundred_clients_are_a_count_and_a_digest() {
        let entry = |n: usize| AccessEntry {
            recorded: Utc::now(),
            principal: None,
            token_id: None,
            method: "GET".into(),
            route: "/api/v1/alerts".into(),
            status: 200,
            client_ids: (0..n).map(|i| format!("c{i}")).collect(),
            purpose: None,
            correlation_id: uuid::Uuid::nil(),
        };
        let few = entry(100).into_new();
        assert_eq!(few.client_ids.len(), 100);
        assert_eq!(few.entry["entity"]["count"], 100);
        let many = entry(101).into_new();
        assert!(many.client_ids.is_empty());
        assert_eq!(many.entry["entity"]["count"], 101);
        assert!(many.entry["entity"]["client_ids"].is_null());
        assert_eq!(
            many.entry["entity"]["digest"].as_str().map(str::len),
            Some(64)
        );
        assert_eq!(many.entry["agent"]["who"], "anonymous");
    }
}
