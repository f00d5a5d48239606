//! Which clients a clinician may see, without loading every group.
//!
//! The answer comes from [`CareTeams`], a small fold of the log (the groups of each
//! client and the facilitators of each group) kept in memory. Before every answer
//! the index reads whatever the log holds past its position: when it is current
//! that is one indexed query that returns nothing.
//!
//! Why from the log on read, and not from the command path or the live reports:
//! - every write is committed to the log before its response is sent, so a
//!   clinician assigned to a group has access on their very next request, even if
//!   another Circle process took the assignment;
//! - a removal (`FacilitatorRemoved`) is seen just as promptly, which a cache fed
//!   only by this process's commits would miss;
//! - the reports projection lags the log and is about to change shape; waiting on
//!   it per request would tie access checks to its latency.
//!
//! The first question after start reads the whole log once (group events only are
//! decoded); memory is two id sets per group and per client, not group state.

use circle_events::group::Group;
use circle_events::upcast;
use circle_projections::care_teams::{CareTeams, GoalHome};
use circle_projections::practice::{AnyEvent, Fact};
use cqrs_es::Aggregate;

use crate::commands::LoadError;
use crate::store::Store;

const PAGE: i64 = 10_000;

pub struct CareTeamIndex {
    store: Store,
    teams: tokio::sync::Mutex<CareTeams>,
}

impl CareTeamIndex {
    pub fn new(store: Store) -> CareTeamIndex {
        CareTeamIndex {
            store,
            teams: tokio::sync::Mutex::new(CareTeams::default()),
        }
    }

    /// Whether `clinician_id` facilitates a group `client_id` is or was a member of,
    /// as of everything committed before this call.
    pub async fn clinician_knows_client(
        &self,
        clinician_id: &str,
        client_id: &str,
    ) -> Result<bool, LoadError> {
        let teams = self.current().await?;
        Ok(teams.clinician_knows_client(clinician_id, client_id))
    }

    /// Every group a client has joined, as of everything committed before this call.
    pub async fn groups_of_client(&self, client_id: &str) -> Result<Vec<String>, LoadError> {
        let teams = self.current().await?;
        Ok(teams.groups_of_client(client_id))
    }

    /// Whether `clinician_id` facilitates `group_id`, as of everything committed
    /// before this call.
    pub async fn facilitates(&self, clinician_id: &str, group_id: &str) -> Result<bool, LoadError> {
        let teams = self.current().await?;
        Ok(teams.facilitates(clinician_id, group_id))
    }

    /// Where a goal lives, as of everything committed before this call.
    pub async fn goal_home(&self, goal_id: &str) -> Result<Option<GoalHome>, LoadError> {
        let teams = self.current().await?;
        Ok(teams.goal_home(goal_id).cloned())
    }

    /// The index caught up with the log. Held while catching up, so concurrent
    /// questions share one read of the log.
    async fn current(&self) -> Result<tokio::sync::MutexGuard<'_, CareTeams>, LoadError> {
        let mut teams = self.teams.lock().await;
        loop {
            let page = self.store.read_raw(teams.position, PAGE).await?;
            let full = page.len() as i64 == PAGE;
            for raw in page {
                if raw.aggregate_type != Group::TYPE {
                    teams.skip_to(raw.position);
                    continue;
                }
                let event = upcast::decode_text(&raw.event_type, raw.event_version, &raw.payload)
                    .map_err(|source| LoadError::Decode {
                    position: raw.position,
                    source,
                })?;
                let fact = Fact {
                    position: raw.position,
                    recorded_at: raw.recorded_at,
                    aggregate_id: raw.aggregate_id,
                    event: AnyEvent::Group(event),
                };
                teams.apply(&fact);
            }
            if !full {
                break;
            }
        }
        Ok(teams)
    }
}
