//! Goals and accountability (DOMAIN.md): Goal Attainment Scaling T-scores, check-in
//! rates and stalled goals, from a group's goals, sessions and attendance.
//!
//! Rules, each in one place here:
//! - a goal is *active* on a day from the day it is set through the day it is closed;
//! - a member's T-score (Kiresuk & Sherman 1968, ρ = 0.3) is over their goals active
//!   on the report's day: *baseline* at the start levels, *latest* at each goal's
//!   latest level (its start level until a check-in), so `change` compares like with
//!   like;
//! - a check-in *belongs to* a session when it names the session, or names none and
//!   falls on the session's date;
//! - the check-in rate is the attended sessions (held, marked attended) on days the
//!   member had an active goal, with a check-in on any goal, ÷ all those sessions;
//! - a goal is *stalled* when its member's last 3 attended sessions since it was set
//!   hold no check-in on it.
//!
//! Dashboard (the dashboard issue reads this): the member page is to show each goal
//! of [`MemberGoals::goals`] with its level history (`GoalRecord::check_ins` in the
//! live [`crate::practice::Practice`]), the group page each member's `latest_t` and
//! `check_in_rate` from [`GoalsReport::clients`]. Titles are sealed: the dashboard
//! opens them per request with the client's key, never from this projection.

use chrono::{DateTime, NaiveDate, Utc};
use circle_events::group::GoalClosure;
use circle_events::group::Sensitivity;
use serde::{Deserialize, Serialize};

use crate::practice::{GroupRecord, Practice, SessionRecord};
use crate::reports::{people, rate, round6, suppress, withhold_small, ReporterForm};

/// The correlation between goals Kiresuk & Sherman assumed; DOMAIN.md fixes it.
pub const GAS_RHO: f64 = 0.3;
/// Attended sessions without a check-in on a goal that make it stalled.
pub const STALLED_AFTER: usize = 3;

/// The GAS T-score of goals given as `(weight, level)`: 50 means every goal met as
/// expected. `None` without goals.
pub fn t_score(goals: impl IntoIterator<Item = (u8, i8)>, rho: f64) -> Option<f64> {
    let (mut weighted, mut squares, mut sum) = (0.0, 0.0, 0.0);
    let mut any = false;
    for (weight, level) in goals {
        let w = f64::from(weight);
        weighted += w * f64::from(level);
        squares += w * w;
        sum += w;
        any = true;
    }
    any.then(|| 50.0 + 10.0 * weighted / ((1.0 - rho) * squares + rho * sum * sum).sqrt())
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GoalCheckIn {
    pub date: NaiveDate,
    pub session_id: Option<String>,
    pub level: i8,
}

/// A goal as the reports keep it: no title, only what is scored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GoalRecord {
    pub client_id: String,
    pub weight: u8,
    pub start_level: i8,
    pub set_on: NaiveDate,
    pub closed_on: Option<NaiveDate>,
    pub closure: Option<GoalClosure>,
    /// In date order; equal dates keep the order recorded.
    pub check_ins: Vec<GoalCheckIn>,
}

impl GoalRecord {
    pub fn active_on(&self, day: NaiveDate) -> bool {
        self.set_on <= day && self.closed_on.is_none_or(|closed| day <= closed)
    }

    /// The level reported last by `day`, or the start level.
    pub fn level_on(&self, day: NaiveDate) -> i8 {
        self.check_ins
            .iter()
            .rev()
            .find(|c| c.date <= day)
            .map_or(self.start_level, |c| c.level)
    }

    pub fn add_check_in(&mut self, check_in: GoalCheckIn) {
        let at = self.check_ins.partition_point(|c| c.date <= check_in.date);
        self.check_ins.insert(at, check_in);
    }

    fn checked_in_at(&self, session_id: &str, session: &SessionRecord) -> bool {
        self.check_ins
            .iter()
            .any(|c| belongs_to(c, session_id, session))
    }
}

fn belongs_to(check_in: &GoalCheckIn, session_id: &str, session: &SessionRecord) -> bool {
    match &check_in.session_id {
        Some(id) => id == session_id,
        None => check_in.date == session.date(),
    }
}

impl GroupRecord {
    /// Held sessions the member attended up to `day`, in time order.
    fn attended_by<'a>(
        &'a self,
        client_id: &'a str,
        day: NaiveDate,
    ) -> impl Iterator<Item = (&'a String, &'a SessionRecord)> + 'a {
        self.held_sessions().into_iter().filter(move |(_, s)| {
            s.date() <= day && s.marks.get(client_id).is_some_and(|m| m.attended())
        })
    }

    fn goals_of<'a>(
        &'a self,
        client_id: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a GoalRecord)> {
        self.goals
            .iter()
            .filter(move |(_, g)| g.client_id == client_id)
    }

    /// Whether a goal active on `day` is stalled as of `day`.
    pub fn is_stalled(&self, goal: &GoalRecord, day: NaiveDate) -> bool {
        if !goal.active_on(day) {
            return false;
        }
        let since_set: Vec<_> = self
            .attended_by(&goal.client_id, day)
            .filter(|(_, s)| s.date() >= goal.set_on)
            .collect();
        since_set.len() >= STALLED_AFTER
            && since_set[since_set.len() - STALLED_AFTER..]
                .iter()
                .all(|(id, s)| !goal.checked_in_at(id, s))
    }

    /// `(sessions with a check-in, sessions)`: attended sessions on days with an
    /// active goal, up to `day`.
    fn check_in_counts(&self, client_id: &str, day: NaiveDate) -> (u32, u32) {
        let (mut checked, mut sessions) = (0, 0);
        let goals: Vec<&GoalRecord> = self.goals_of(client_id).map(|(_, g)| g).collect();
        for (session_id, session) in self.attended_by(client_id, day) {
            if !goals.iter().any(|g| g.active_on(session.date())) {
                continue;
            }
            sessions += 1;
            if goals.iter().any(|g| g.checked_in_at(session_id, session)) {
                checked += 1;
            }
        }
        (checked, sessions)
    }
}

// ---- the report ----

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GoalRow {
    pub goal_id: String,
    pub weight: u8,
    pub start_level: i8,
    pub latest_level: i8,
    pub set_on: NaiveDate,
    pub closed_on: Option<NaiveDate>,
    pub closure: Option<GoalClosure>,
    pub check_ins: u32,
    pub stalled: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemberGoals {
    pub client_id: String,
    pub active_goals: u32,
    /// Over the active goals at their start levels; `null` without active goals.
    pub baseline_t: Option<f64>,
    pub latest_t: Option<f64>,
    pub change: Option<f64>,
    pub sessions_attended: u32,
    pub sessions_checked_in: u32,
    pub check_in_rate: Option<f64>,
    pub stalled_goals: Vec<String>,
    pub goals: Vec<GoalRow>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GoalsSummary {
    /// Members with an active goal (the ones with a T-score).
    pub members_with_goals: Option<u32>,
    pub mean_t: Option<f64>,
    pub at_or_above_50: Option<u32>,
    pub share_at_or_above_50: Option<f64>,
    pub check_in_rate: Option<f64>,
    pub stalled_goals: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GoalsReport {
    pub group_id: String,
    pub as_of: DateTime<Utc>,
    pub position: i64,
    /// Reporter form: clients left out because they withdrew reporting consent
    /// (always 0 in the full form, which keeps them).
    pub left_out_without_consent: u32,
    /// `part2` when a group the report covers is under 42 CFR Part 2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sensitivity: Option<Sensitivity>,
    pub rho: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clients: Option<Vec<MemberGoals>>,
    pub summary: GoalsSummary,
}

pub fn goals(practice: &Practice, group_id: &str, as_of: DateTime<Utc>) -> Option<GoalsReport> {
    let group = practice.groups.get(group_id)?;
    let day = as_of.date_naive();
    let mut members: Vec<&str> = group
        .goals
        .values()
        .filter(|g| g.set_on <= day)
        .map(|g| g.client_id.as_str())
        .collect();
    members.sort_unstable();
    members.dedup();
    let mut clients = Vec::with_capacity(members.len());
    let (mut checked_total, mut sessions_total, mut stalled_total) = (0, 0, 0);
    for client_id in members {
        let mut rows = Vec::new();
        let (mut baseline, mut latest) = (Vec::new(), Vec::new());
        for (goal_id, goal) in group.goals_of(client_id).filter(|(_, g)| g.set_on <= day) {
            let latest_level = goal.level_on(day);
            if goal.active_on(day) {
                baseline.push((goal.weight, goal.start_level));
                latest.push((goal.weight, latest_level));
            }
            rows.push(GoalRow {
                goal_id: goal_id.clone(),
                weight: goal.weight,
                start_level: goal.start_level,
                latest_level,
                set_on: goal.set_on,
                closed_on: goal.closed_on.filter(|closed| *closed <= day),
                closure: goal
                    .closure
                    .filter(|_| goal.closed_on.is_some_and(|c| c <= day)),
                check_ins: goal.check_ins.iter().filter(|c| c.date <= day).count() as u32,
                stalled: group.is_stalled(goal, day),
            });
        }
        let (checked, sessions) = group.check_in_counts(client_id, day);
        checked_total += checked;
        sessions_total += sessions;
        let baseline_t = t_score(baseline.iter().copied(), GAS_RHO);
        let latest_t = t_score(latest.iter().copied(), GAS_RHO);
        let stalled_goals: Vec<String> = rows
            .iter()
            .filter(|r| r.stalled)
            .map(|r| r.goal_id.clone())
            .collect();
        stalled_total += stalled_goals.len() as u32;
        clients.push(MemberGoals {
            client_id: client_id.to_string(),
            active_goals: latest.len() as u32,
            baseline_t: baseline_t.map(round6),
            latest_t: latest_t.map(round6),
            change: baseline_t.zip(latest_t).map(|(b, l)| round6(l - b)),
            sessions_attended: sessions,
            sessions_checked_in: checked,
            check_in_rate: rate(checked, sessions),
            stalled_goals,
            goals: rows,
        });
    }
    let scores: Vec<f64> = clients.iter().filter_map(|c| c.latest_t).collect();
    let with_t = scores.len() as u32;
    let at_or_above = scores.iter().filter(|t| **t >= 50.0).count() as u32;
    Some(GoalsReport {
        group_id: group_id.to_string(),
        as_of,
        position: practice.position,
        left_out_without_consent: 0,
        sensitivity: crate::reports::group_sensitivity(practice, group_id),
        rho: GAS_RHO,
        clients: Some(clients),
        summary: GoalsSummary {
            members_with_goals: Some(with_t),
            mean_t: (with_t > 0).then(|| round6(scores.iter().sum::<f64>() / f64::from(with_t))),
            at_or_above_50: Some(at_or_above),
            share_at_or_above_50: rate(at_or_above, with_t),
            check_in_rate: rate(checked_total, sessions_total),
            stalled_goals: Some(stalled_total),
        },
    })
}

impl ReporterForm for GoalsReport {
    fn set_left_out_without_consent(&mut self, clients: u32) {
        self.left_out_without_consent = clients;
    }

    fn for_reporters(mut self, k: u32) -> Self {
        // The check-in rate is over the members with a session that counts for it;
        // stalled goals are counted over the members who have them.
        let rows = self.clients.take().unwrap_or_default();
        let members = |of: fn(&MemberGoals) -> bool| rows.iter().filter(|c| of(c)).count() as u32;
        let checking_in = members(|c| c.sessions_attended > 0);
        let stalled = members(|c| !c.stalled_goals.is_empty());
        let s = &mut self.summary;
        withhold_small(&mut s.check_in_rate, checking_in, k);
        withhold_small(&mut s.stalled_goals, stalled, k);
        // Mean T and the share at 50 or above are over the members with a T-score.
        let with_t = people(s.members_with_goals);
        withhold_small(&mut s.mean_t, with_t, k);
        withhold_small(&mut s.share_at_or_above_50, with_t, k);
        for count in [&mut s.members_with_goals, &mut s.at_or_above_50] {
            suppress(count, k);
        }
        self
    }
}
