//! Reporting consent and the Part 2 label: what the reporter form may use, and what
//! every report about a group says about its sensitivity.
//!
//! Rules (ARCHITECTURE.md, "Consent and Part 2"), each in one place:
//! - reporting is opt-out ([`Practice::has_consent`]): a client who withdrew it is
//!   left out of every reporter-form report, computed as if they had never been in
//!   the report's groups ([`for_reporting`]), and the report says how many were left
//!   out (`left_out_without_consent`); the full form (treatment) keeps them;
//! - a report carries a group's label ([`circle_events::group::Focus::sensitivity`])
//!   when any group whose data it includes carries it ([`sensitivity`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use circle_events::client::ConsentScope;
use circle_events::group::Sensitivity;

use crate::practice::{GroupRecord, Practice};
use crate::reports::{ReporterForm, RetentionScope};

/// The practice as reporting may use it, for one report's scope.
pub struct ForReporting<'a> {
    /// The practice itself when nobody in scope withdrew consent; else a copy of the
    /// groups in scope without them.
    pub practice: Cow<'a, Practice>,
    /// Distinct clients left out of the scope's groups.
    pub left_out_without_consent: u32,
}

/// The clients a report may not use: those whose latest reporting decision is a
/// withdrawal. `consents` is the practice whose decisions count: the live one, so
/// that an `as_of` report made after a withdrawal leaves the client out too.
pub fn withdrawn_from_reporting(consents: &Practice) -> BTreeSet<String> {
    consents
        .consents
        .keys()
        .filter(|client| !consents.has_consent(client, ConsentScope::Reporting))
        .cloned()
        .collect()
}

/// The groups in `scope`, with every client in `withdrawn` removed from them:
/// memberships, measures, goals and alerts (attendance marks stay: see `without`).
pub fn for_reporting<'a>(
    practice: &'a Practice,
    withdrawn: &BTreeSet<String>,
    scope: &RetentionScope,
) -> ForReporting<'a> {
    let in_scope = || {
        practice
            .groups
            .iter()
            .filter(|(id, group)| scope.includes(id, group))
    };
    // One pass over each group's data, like the report's own; none when nobody
    // withdrew, the common case.
    let left_out: BTreeSet<&str> = if withdrawn.is_empty() {
        BTreeSet::new()
    } else {
        in_scope()
            .flat_map(|(_, group)| clients_in(group))
            .filter(|client| withdrawn.contains(*client))
            .collect()
    };
    if left_out.is_empty() {
        return ForReporting {
            practice: Cow::Borrowed(practice),
            left_out_without_consent: 0,
        };
    }
    let groups = in_scope()
        .map(|(id, group)| (id.clone(), without(group, &left_out)))
        .collect();
    let alerts = practice
        .alerts
        .iter()
        .filter(|alert| !left_out.contains(alert.client_id.as_str()))
        .filter(|alert| {
            practice
                .groups
                .get(&alert.group_id)
                .is_some_and(|group| scope.includes(&alert.group_id, group))
        })
        .cloned()
        .collect();
    ForReporting {
        practice: Cow::Owned(Practice {
            position: practice.position,
            rules: practice.rules,
            groups,
            erased_clients: practice.erased_clients.clone(),
            consents: Default::default(),
            alerts,
            max_recorded_at: practice.max_recorded_at,
        }),
        left_out_without_consent: left_out.len() as u32,
    }
}

/// A report in the reporter form, the one way HTTP and NATS build it: computed by
/// `report` on the practice without the clients in `withdrawn`, with no value from
/// fewer than `k` people, saying how many were left out.
pub fn reporter_form<T: ReporterForm>(
    practice: &Practice,
    withdrawn: &BTreeSet<String>,
    scope: &RetentionScope,
    k: u32,
    report: impl FnOnce(&Practice) -> Option<T>,
) -> Option<T> {
    let view = for_reporting(practice, withdrawn, scope);
    let mut form = report(&view.practice)?.for_reporters(k);
    form.set_left_out_without_consent(view.left_out_without_consent);
    Some(form)
}

/// The label of a report over `scope`: the strictest of its groups' labels.
pub fn sensitivity(practice: &Practice, scope: &RetentionScope) -> Option<Sensitivity> {
    practice
        .groups
        .iter()
        .filter(|(id, group)| scope.includes(id, group))
        .filter_map(|(_, group)| group.focus.and_then(|focus| focus.sensitivity()))
        .max()
}

/// The header naming a labelled report's or event's sensitivity, on HTTP answers
/// and NATS messages alike.
pub const SENSITIVITY_HEADER: &str = "Circle-Sensitivity";

/// The label a report's or message's body carries in its `sensitivity` field: the
/// header is read from the body, so the two cannot differ.
pub fn sensitivity_in(body: &serde_json::Value) -> Option<Sensitivity> {
    serde_json::from_value(body.get("sensitivity")?.clone()).ok()
}

/// Every client the group holds anything about (with repeats).
fn clients_in(group: &GroupRecord) -> impl Iterator<Item = &str> {
    let members = group.members.keys();
    let measured = group.measures.values().flat_map(|m| m.keys());
    let marked = group.sessions.values().flat_map(|s| s.marks.keys());
    let goals = group.goals.values().map(|g| &g.client_id);
    members
        .chain(measured)
        .chain(marked)
        .chain(goals)
        .map(String::as_str)
}

/// instrument → client → facts, with only the kept clients.
fn per_instrument_without<T: Clone>(
    by_instrument: &BTreeMap<String, BTreeMap<String, T>>,
    kept: impl Fn(&String) -> bool,
) -> BTreeMap<String, BTreeMap<String, T>> {
    by_instrument
        .iter()
        .map(|(instrument, by_client)| {
            let by_client = by_client
                .iter()
                .filter(|(c, _)| kept(c))
                .map(|(c, facts)| (c.clone(), facts.clone()))
                .collect();
            (instrument.clone(), by_client)
        })
        .collect()
}

/// The group without anything about `clients`. Every field is named, so a new one
/// cannot be forgotten here.
fn without(group: &GroupRecord, clients: &BTreeSet<&str>) -> GroupRecord {
    let GroupRecord {
        focus,
        name,
        facilitators,
        closed_on,
        members,
        sessions,
        measures,
        items,
        absence_alerted,
        goals,
        stall_alerted,
        risk_reviewed,
    } = group;
    let kept = |client: &String| !clients.contains(client.as_str());
    let goals: std::collections::BTreeMap<_, _> = goals
        .iter()
        .filter(|(_, goal)| kept(&goal.client_id))
        .map(|(id, goal)| (id.clone(), goal.clone()))
        .collect();
    GroupRecord {
        focus: *focus,
        name: name.clone(),
        facilitators: facilitators.clone(),
        closed_on: *closed_on,
        members: members
            .iter()
            .filter(|(c, _)| kept(c))
            .map(|(c, p)| (c.clone(), p.clone()))
            .collect(),
        // Marks stay: a session is held when anyone was marked (leaving a client out
        // must not unhold it for the others), and reports count members' marks only.
        sessions: sessions.clone(),
        measures: per_instrument_without(measures, kept),
        items: per_instrument_without(items, kept),
        absence_alerted: absence_alerted
            .iter()
            .filter(|c| kept(c))
            .cloned()
            .collect(),
        stall_alerted: stall_alerted
            .iter()
            .filter(|goal| goals.contains_key(*goal))
            .cloned()
            .collect(),
        goals,
        risk_reviewed: risk_reviewed
            .iter()
            .filter(|(c, _)| kept(c))
            .map(|(c, at)| (c.clone(), *at))
            .collect(),
    }
}
