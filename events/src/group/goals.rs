//! Members' goals (Goal Attainment Scaling, DOMAIN.md "Goals and accountability").
//!
//! Goals live in the Group aggregate, beside membership and sessions, because their
//! rules are membership rules: a goal is set and checked in on only while the client
//! is a member, and a check-in at a session only by a member who did not miss it.
//! Deciding them here keeps each rule one lookup in one consistency boundary.

use chrono::{DateTime, FixedOffset, NaiveDate};
use serde::{Deserialize, Serialize};

use super::{
    check_date, check_id, check_time, GoalClosure, GoalLevel, Group, GroupError, GroupEvent,
    GOAL_LEVELS, GOAL_WEIGHTS, MAX_ACTIVE_GOALS,
};

/// What the aggregate keeps of a goal: enough to decide check-ins and closures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GoalState {
    pub client_id: String,
    pub set_on: NaiveDate,
    pub closed: Option<GoalClosure>,
}

/// A check-in as the group form and the single route both ask for it.
pub(super) struct CheckInRequest {
    pub goal_id: String,
    pub client_id: String,
    pub level: i8,
    pub session_id: Option<String>,
    pub checked_in_at: Option<DateTime<FixedOffset>>,
}

fn rule(field: &str, message: impl Into<String>) -> GroupError {
    GroupError::GoalRule {
        field: field.to_string(),
        message: message.into(),
    }
}

impl Group {
    pub(super) fn decide_set_goal(
        &self,
        goal_id: String,
        client_id: String,
        title: crate::client::SealedPersonalData,
        weight: u8,
        start_level: i8,
        set_on: NaiveDate,
    ) -> Result<Vec<GroupEvent>, GroupError> {
        self.require_open()?;
        check_id("goal_id", &goal_id)?;
        check_id("client_id", &client_id)?;
        if self.goals.contains_key(&goal_id) {
            return Err(GroupError::GoalExists(goal_id));
        }
        if title.sealed.is_empty() {
            return Err(GroupError::invalid("title", "is required"));
        }
        check_weight("weight", weight)?;
        check_level("start_level", start_level)?;
        check_date("set_on", set_on)?;
        if !self.is_member_on(&client_id, set_on) {
            return Err(GroupError::NotAMemberOn {
                client_id,
                date: set_on,
            });
        }
        let open = self
            .goals
            .values()
            .filter(|g| g.client_id == client_id && g.closed.is_none())
            .count();
        if open >= MAX_ACTIVE_GOALS {
            return Err(rule(
                "client_id",
                format!("a member holds at most {MAX_ACTIVE_GOALS} open goals"),
            ));
        }
        Ok(vec![GroupEvent::GoalSet {
            goal_id,
            client_id,
            title,
            weight,
            start_level,
            set_on,
        }])
    }

    /// One check-in; `prefix` names fields inside a group form (`check_ins[2].`).
    pub(super) fn decide_check_in(
        &self,
        request: CheckInRequest,
        prefix: &str,
    ) -> Result<GroupEvent, GroupError> {
        let field = |name: &str| format!("{prefix}{name}");
        let CheckInRequest {
            goal_id,
            client_id,
            level,
            session_id,
            checked_in_at,
        } = request;
        if !self.exists() {
            return Err(GroupError::GroupNotFound);
        }
        let goal = self.owned_goal(&goal_id, &client_id, &field("goal_id"))?;
        if goal.closed.is_some() {
            return Err(rule(&field("goal_id"), "is closed: no more check-ins"));
        }
        check_level(&field("level"), level)?;
        if let Some(at) = &checked_in_at {
            check_time(&field("checked_in_at"), at)?;
        }
        let (checked_in_at, date_field) = match (&session_id, checked_in_at) {
            (Some(session_id), at) => {
                let session = self.require_session(session_id)?;
                let absent = session
                    .attendance
                    .get(&client_id)
                    .is_some_and(|mark| !mark.status.attended());
                if absent {
                    return Err(rule(
                        &field("session_id"),
                        format!("{client_id} was marked absent from this session"),
                    ));
                }
                (at.unwrap_or(session.starts_at), "session_id")
            }
            (None, Some(at)) => (at, "checked_in_at"),
            (None, None) => {
                return Err(GroupError::invalid(
                    &field("checked_in_at"),
                    "is required for a check-in outside a session",
                ))
            }
        };
        let date = match &session_id {
            Some(session_id) => self.require_session(session_id)?.date(),
            None => checked_in_at.date_naive(),
        };
        if date < goal.set_on {
            return Err(rule(
                &field(date_field),
                format!("is before the goal was set on {}", goal.set_on),
            ));
        }
        if !self.is_member_on(&client_id, date) {
            return Err(rule(
                &field("client_id"),
                format!("{client_id} was not a member of this group on {date}"),
            ));
        }
        Ok(GroupEvent::GoalCheckedIn {
            goal_id,
            client_id,
            level,
            session_id,
            checked_in_at,
        })
    }

    /// The group check-in form: every listed member's levels for one session, all or
    /// nothing.
    pub(super) fn decide_session_check_ins(
        &self,
        session_id: String,
        check_ins: Vec<GoalLevel>,
    ) -> Result<Vec<GroupEvent>, GroupError> {
        self.require_session(&session_id)?;
        let limit = MAX_ACTIVE_GOALS * super::MAX_CAPACITY as usize;
        if check_ins.is_empty() || check_ins.len() > limit {
            return Err(GroupError::invalid(
                "check_ins",
                format!("must hold 1 to {limit} check-ins"),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut events = Vec::with_capacity(check_ins.len());
        for (i, entry) in check_ins.into_iter().enumerate() {
            let prefix = format!("check_ins[{i}].");
            if !seen.insert(entry.goal_id.clone()) {
                return Err(GroupError::invalid(
                    &format!("{prefix}goal_id"),
                    "is listed twice",
                ));
            }
            let request = CheckInRequest {
                goal_id: entry.goal_id,
                client_id: entry.client_id,
                level: entry.level,
                session_id: Some(session_id.clone()),
                checked_in_at: None,
            };
            events.push(self.decide_check_in(request, &prefix)?);
        }
        Ok(events)
    }

    pub(super) fn decide_close_goal(
        &self,
        goal_id: String,
        client_id: String,
        reason: GoalClosure,
        replaced_by: Option<String>,
        closed_on: NaiveDate,
    ) -> Result<Vec<GroupEvent>, GroupError> {
        if !self.exists() {
            return Err(GroupError::GroupNotFound);
        }
        let goal = self.owned_goal(&goal_id, &client_id, "goal_id")?;
        if goal.closed.is_some() {
            return Err(rule("goal_id", "is already closed"));
        }
        check_date("closed_on", closed_on)?;
        if closed_on < goal.set_on {
            return Err(rule(
                "closed_on",
                format!("is before the goal was set on {}", goal.set_on),
            ));
        }
        match (reason, &replaced_by) {
            (GoalClosure::Revised, None) => {
                return Err(GroupError::invalid(
                    "replaced_by",
                    "is required: a revised goal names the goal that replaces it",
                ))
            }
            (GoalClosure::Revised, Some(replacement)) => {
                check_id("replaced_by", replacement)?;
                if *replacement == goal_id {
                    return Err(rule("replaced_by", "a goal cannot replace itself"));
                }
                let replacement = self.owned_goal(replacement, &client_id, "replaced_by")?;
                if replacement.closed.is_some() {
                    return Err(rule("replaced_by", "is closed"));
                }
            }
            (_, Some(_)) => {
                return Err(GroupError::invalid(
                    "replaced_by",
                    "only a revised goal names a replacement",
                ))
            }
            (_, None) => {}
        }
        Ok(vec![GroupEvent::GoalClosed {
            goal_id,
            client_id,
            reason,
            replaced_by,
            closed_on,
        }])
    }

    /// The goal, if it is this client's; another client's goal is refused by name.
    fn owned_goal(
        &self,
        goal_id: &str,
        client_id: &str,
        field: &str,
    ) -> Result<&GoalState, GroupError> {
        let goal = self
            .goals
            .get(goal_id)
            .ok_or_else(|| GroupError::GoalNotFound(goal_id.to_string()))?;
        if goal.client_id != client_id {
            return Err(rule(field, format!("is not a goal of {client_id}")));
        }
        Ok(goal)
    }

    pub(super) fn apply_goal(&mut self, event: &GroupEvent) {
        match event {
            GroupEvent::GoalSet {
                goal_id,
                client_id,
                set_on,
                ..
            } => {
                self.goals.insert(
                    goal_id.clone(),
                    GoalState {
                        client_id: client_id.clone(),
                        set_on: *set_on,
                        closed: None,
                    },
                );
            }
            GroupEvent::GoalClosed {
                goal_id, reason, ..
            } => {
                if let Some(goal) = self.goals.get_mut(goal_id) {
                    goal.closed = Some(*reason);
                }
            }
            _ => {}
        }
    }
}

fn check_weight(field: &str, weight: u8) -> Result<(), GroupError> {
    if GOAL_WEIGHTS.contains(&weight) {
        Ok(())
    } else {
        Err(GroupError::invalid(field, "must be 1, 2 or 3"))
    }
}

fn check_level(field: &str, level: i8) -> Result<(), GroupError> {
    if GOAL_LEVELS.contains(&level) {
        Ok(())
    } else {
        Err(GroupError::invalid(
            field,
            "must be a whole number from -2 to 2",
        ))
    }
}
