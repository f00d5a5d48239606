//! "Who needs me now?": a group's members ordered by the first rule that fires for
//! each, the order the dashboard's Today page shows them in.
//!
//! 1. **Risk**: a risk item (PHQ-9 item 9 above 0) raised and not yet reviewed
//!    (a `RiskReviewed` event clears every risk alert raised before it).
//! 2. **Reliable deterioration**: baseline → latest on an outcome measure is worse by
//!    at least the instrument's reliable-change value.
//! 3. **Alliance concern**: the latest SRS/GSRS is below its cutoff, or fell since the
//!    one before.
//! 4. **Consecutive absences**: the member's current run of absences reaches the
//!    practice's alert rule.
//!
//! Then everyone else. Within a rule, the most recent first. Each need says which
//! rule fired, when, and why, in words.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use circle_events::instruments::{Catalogue, InstrumentDefinition};
use serde::Serialize;

use crate::outcomes::{classify, Classification};
use crate::practice::{alliance_concern, AlertKind, GroupRecord, Practice, RecordedScore};

/// The rules in the order they rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NeedKind {
    Risk,
    Deterioration,
    Alliance,
    Absences,
}

impl NeedKind {
    /// What the dashboard calls the rule (every colour has this label beside it).
    pub fn label(self) -> &'static str {
        match self {
            NeedKind::Risk => "Risk item",
            NeedKind::Deterioration => "Reliable deterioration",
            NeedKind::Alliance => "Alliance concern",
            NeedKind::Absences => "Consecutive absences",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Need {
    pub kind: NeedKind,
    /// When the rule fired: the alert's time, the measure's or the missed session's.
    pub at: DateTime<Utc>,
    /// Why, in words: the values behind the rule.
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemberNeed {
    pub client_id: String,
    pub need: Option<Need>,
}

/// The practice's pending risk items, indexed once for every group's triage.
pub struct Triage<'a> {
    practice: &'a Practice,
    /// (group, client) → the latest unreviewed risk alert's time and detail.
    risk: BTreeMap<(&'a str, &'a str), (DateTime<Utc>, &'a str)>,
}

impl<'a> Triage<'a> {
    pub fn new(practice: &'a Practice) -> Triage<'a> {
        let mut risk = BTreeMap::new();
        for alert in practice.alerts.iter().filter(|a| a.kind == AlertKind::Risk) {
            let reviewed = practice
                .groups
                .get(&alert.group_id)
                .and_then(|g| g.risk_reviewed.get(&alert.client_id))
                .is_some_and(|at| *at > alert.position);
            if !reviewed {
                risk.insert(
                    (alert.group_id.as_str(), alert.client_id.as_str()),
                    (alert.occurred_at.to_utc(), alert.detail.as_str()),
                );
            }
        }
        Triage { practice, risk }
    }

    /// The group's members on `today`, and former members whose risk item is not yet
    /// reviewed (a departure does not clear it), by need (see the module comment);
    /// `None` for a group the practice does not know.
    pub fn group(&self, group_id: &str, today: NaiveDate) -> Option<Vec<MemberNeed>> {
        let group = self.practice.groups.get(group_id)?;
        let mut rows: Vec<MemberNeed> = group
            .members
            .iter()
            .filter(|(client_id, periods)| {
                let current = periods
                    .last()
                    .is_some_and(|p| p.left_on.is_none_or(|left| left >= today));
                current || self.risk.contains_key(&(group_id, client_id.as_str()))
            })
            .map(|(client_id, _)| MemberNeed {
                client_id: client_id.clone(),
                need: self.need(group_id, group, client_id),
            })
            .collect();
        rows.sort_by(|a, b| match (&a.need, &b.need) {
            (Some(x), Some(y)) => x
                .kind
                .cmp(&y.kind)
                .then(y.at.cmp(&x.at))
                .then(a.client_id.cmp(&b.client_id)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.client_id.cmp(&b.client_id),
        });
        Some(rows)
    }

    fn need(&self, group_id: &str, group: &GroupRecord, client_id: &str) -> Option<Need> {
        if let Some((at, detail)) = self.risk.get(&(group_id, client_id)) {
            return Some(Need {
                kind: NeedKind::Risk,
                at: *at,
                detail: format!("{detail}; not yet reviewed"),
            });
        }
        deterioration(group, client_id)
            .or_else(|| alliance(group, client_id))
            .or_else(|| absences(group, client_id, self.practice.rules.consecutive_absences))
    }
}

/// The most recent need `rule` finds on any instrument of the member's: `rule` sees
/// the instrument's definition and the member's scores in time order.
fn latest_need(
    group: &GroupRecord,
    client_id: &str,
    kind: NeedKind,
    rule: impl Fn(&InstrumentDefinition, &[RecordedScore]) -> Option<String>,
) -> Option<Need> {
    let catalogue = Catalogue::builtin();
    group
        .measures
        .keys()
        .filter_map(|instrument| {
            let definition = catalogue.current(instrument)?;
            let scores = group.scores(instrument, client_id);
            let detail = rule(definition, scores)?;
            Some(Need {
                kind,
                at: scores.last()?.administered_at.to_utc(),
                detail,
            })
        })
        .max_by_key(|need| need.at)
}

fn deterioration(group: &GroupRecord, client_id: &str) -> Option<Need> {
    latest_need(
        group,
        client_id,
        NeedKind::Deterioration,
        |definition, scores| {
            let (baseline, latest) = (scores.first()?, scores.last()?);
            let worse = scores.len() >= 2
                && classify(definition, baseline.total, latest.total)
                    == Classification::Deteriorated;
            worse.then(|| {
                format!(
                    "{} {} → {}: worse by at least {} (reliable change)",
                    definition.instrument,
                    baseline.total,
                    latest.total,
                    definition.reliable_change.unwrap_or_default()
                )
            })
        },
    )
}

fn alliance(group: &GroupRecord, client_id: &str) -> Option<Need> {
    latest_need(
        group,
        client_id,
        NeedKind::Alliance,
        |definition, scores| {
            let (latest, earlier) = scores.split_last()?;
            let previous = earlier.last().map(|p| p.total);
            alliance_concern(definition, previous, latest.total).map(|c| c.describe(definition))
        },
    )
}

fn absences(group: &GroupRecord, client_id: &str, rule: u32) -> Option<Need> {
    let run = group.consecutive_absences(client_id);
    if run < rule.max(1) {
        return None;
    }
    let last_missed = group
        .held_sessions()
        .into_iter()
        .rev()
        .find(|(_, s)| group.is_member_on(client_id, s.date()))?;
    Some(Need {
        kind: NeedKind::Absences,
        at: last_missed.1.starts_at.to_utc(),
        detail: format!("{run} held sessions missed in a row (the rule is {rule})"),
    })
}
