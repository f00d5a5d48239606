//! The FHIR Bulk Data export's I/O: a group's history read from the store, its
//! resources ([`circle_projections::fhir`]) as one NDJSON file per type, and the
//! export jobs the HTTP API runs (`$export` → status → files).
//!
//! Jobs are kept in memory, bounded ([`MAX_JOBS`] at once) and expiring
//! ([`JOB_TTL`] after they finish): an export's files are a transient copy of what
//! the log already holds, rebuilt in seconds, so storing them would duplicate client
//! data in the database (with its backups and retention) for no gain. The cost: the
//! status and file URLs are answered only by the instance that ran the job, and a
//! restart forgets them (the client kicks off again).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use circle_events::client::{Client, ClientEvent};
use circle_events::group::{Group, GroupEvent};
use circle_events::upcast;
use circle_projections::fhir::resources::{Resource, ResourceType};
use circle_projections::fhir::{self, ExportOptions, GroupHistory, Recorded};
use cqrs_es::Aggregate;

use crate::store::{RecordedEvent, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum FhirError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("event at position {position} does not decode")]
    Decode {
        position: i64,
        #[source]
        source: upcast::DecodeError,
    },
}

fn decoded<E: cqrs_es::DomainEvent>(
    events: Vec<RecordedEvent>,
) -> Result<Vec<Recorded<E>>, FhirError> {
    events
        .into_iter()
        .map(|e| {
            let event =
                upcast::decode(&e.event_type, e.event_version, e.payload).map_err(|source| {
                    FhirError::Decode {
                        position: e.position,
                        source,
                    }
                })?;
            Ok(Recorded {
                position: e.position,
                recorded_at: e.recorded_at,
                event,
            })
        })
        .collect()
}

/// The group's stream and its members' streams; `None` when the group has no events.
pub async fn group_history(
    store: &Store,
    group_id: &str,
) -> Result<Option<GroupHistory>, FhirError> {
    let events: Vec<Recorded<GroupEvent>> =
        decoded(store.load_stream(Group::TYPE, group_id, 0).await?)?;
    if events.is_empty() {
        return Ok(None);
    }
    let mut clients = BTreeMap::new();
    for client in GroupHistory::member_ids(&events) {
        let stream: Vec<Recorded<ClientEvent>> =
            decoded(store.load_stream(Client::TYPE, &client, 0).await?)?;
        clients.insert(client, stream);
    }
    Ok(Some(GroupHistory {
        group_id: group_id.to_string(),
        events,
        clients,
    }))
}

/// One NDJSON file of an export.
#[derive(Clone, Debug)]
pub struct ExportFile {
    pub resource_type: ResourceType,
    pub count: usize,
    pub ndjson: Bytes,
}

/// The resources as one NDJSON file per type (types with none have no file), and
/// the clients they name (for the access log).
pub fn files(resources: &[Resource]) -> (Vec<ExportFile>, Vec<String>) {
    let mut by_type: BTreeMap<ResourceType, (usize, Vec<u8>)> = BTreeMap::new();
    let mut clients = std::collections::BTreeSet::new();
    for resource in resources {
        let (count, out) = by_type.entry(resource.resource_type()).or_default();
        *count += 1;
        fhir::ndjson_line(resource, out);
        if let Resource::Patient { identifier, .. } = resource {
            clients.extend(identifier.iter().map(|i| i.value.clone()));
        }
    }
    let files = by_type
        .into_iter()
        .map(|(resource_type, (count, ndjson))| ExportFile {
            resource_type,
            count,
            ndjson: Bytes::from(ndjson),
        })
        .collect();
    (files, clients.into_iter().collect())
}

/// The export of one group as files: `None` when the group has no events.
pub async fn export_group(
    store: &Store,
    group_id: &str,
    options: &ExportOptions,
) -> Result<Option<(Vec<ExportFile>, Vec<String>)>, FhirError> {
    let Some(history) = group_history(store, group_id).await? else {
        return Ok(None);
    };
    Ok(fhir::export(&history, options).map(|resources| files(&resources)))
}

/// Jobs running at once or finished and not yet expired.
pub const MAX_JOBS: usize = 32;
/// How long a finished job's files are kept.
pub const JOB_TTL: Duration = Duration::from_secs(3600);

#[derive(Clone, Debug)]
pub enum JobState {
    Running,
    Done {
        transaction_time: DateTime<Utc>,
        files: Vec<ExportFile>,
        client_ids: Vec<String>,
    },
    Failed(String),
}

#[derive(Clone, Debug)]
pub struct Job {
    /// Who asked: only they may read the status and the files.
    pub owner: String,
    pub group_id: String,
    /// The kick-off request's URL, as the manifest's `request`.
    pub request: String,
    pub state: JobState,
    started: Instant,
    finished: Option<Instant>,
}

impl Job {
    /// Finished more than [`JOB_TTL`] ago, or running that long (a job whose task
    /// died never finishes: it must not hold a place for ever).
    fn expired(&self) -> bool {
        self.finished.unwrap_or(self.started).elapsed() >= JOB_TTL
    }
}

/// The export jobs of this instance (see the module comment).
#[derive(Default)]
pub struct Jobs {
    jobs: Mutex<HashMap<uuid::Uuid, Job>>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{MAX_JOBS} export jobs are already running or kept; try again later")]
pub struct TooManyJobs;

impl Jobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<uuid::Uuid, Job>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a running job, after dropping expired ones.
    pub fn start(
        &self,
        owner: &str,
        group_id: &str,
        request: String,
    ) -> Result<uuid::Uuid, TooManyJobs> {
        let mut jobs = self.lock();
        jobs.retain(|_, job| !job.expired());
        if jobs.len() >= MAX_JOBS {
            return Err(TooManyJobs);
        }
        let id = uuid::Uuid::new_v4();
        jobs.insert(
            id,
            Job {
                owner: owner.to_string(),
                group_id: group_id.to_string(),
                request,
                state: JobState::Running,
                started: Instant::now(),
                finished: None,
            },
        );
        Ok(id)
    }

    pub fn finish(&self, id: uuid::Uuid, state: JobState) {
        if let Some(job) = self.lock().get_mut(&id) {
            job.state = state;
            job.finished = Some(Instant::now());
        }
    }

    /// The job, unless it expired.
    pub fn get(&self, id: uuid::Uuid) -> Option<Job> {
        let jobs = self.lock();
        jobs.get(&id).filter(|job| !job.expired()).cloned()
    }

    /// Forgets a job (the client's DELETE, or nothing left to serve).
    pub fn remove(&self, id: uuid::Uuid) -> bool {
        self.lock().remove(&id).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_are_bounded_and_answer_what_they_hold() {
        let jobs = Jobs::default();
        let first = jobs.start("a", "g", "u".into()).unwrap();
        for _ in 1..MAX_JOBS {
            jobs.start("a", "g", "u".into()).unwrap();
        }
        assert_eq!(jobs.start("a", "g", "u".into()), Err(TooManyJobs));
        assert!(matches!(jobs.get(first).unwrap().state, JobState::Running));
        jobs.finish(first, JobState::Failed("x".into()));
        assert!(matches!(
            jobs.get(first).unwrap().state,
            JobState::Failed(_)
        ));
        assert!(jobs.remove(first));
        assert!(jobs.get(first).is_none());
        assert!(jobs.start("a", "g", "u".into()).is_ok());
    }
}
