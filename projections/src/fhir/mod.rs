//! A group's history as FHIR R4 resources, for the Bulk Data export
//! (`GET /api/v1/fhir/Group/{id}/$export`, `circle export fhir`). Pure: the services
//! crate reads the group's stream and its members' streams and writes the NDJSON.
//!
//! What is exported, from the events (not from the reports' state, which keeps no
//! item answers, facilitators or names):
//! - `Group` with each membership period; `CareTeam`, the facilitators;
//! - `Patient`: the opaque id only, and a name only when the caller may see it and
//!   asked for it (the services layer decides and passes [`ExportOptions::names`]);
//! - `Encounter` per recorded attendance mark of a session not cancelled: `finished`
//!   when attended (present, late, left early), `cancelled` when excused or absent;
//! - `QuestionnaireResponse` per administration, with LOINC item `linkId`s and LOINC
//!   answer codes (LL358-3) for PHQ-9 and GAD-7; Circle's local codes for ORS, SRS
//!   and GSRS; `Observation` per total (category `survey`, `derivedFrom` its
//!   response), one for PHQ-9 item 9 (44260-8, the risk item), and for PHQ-9 and
//!   GAD-7 one of the LOINC panel (44249-1, 69737-5) with those as `hasMember`;
//! - `Consent`, each member's latest decision per scope; `Provenance` per
//!   administration naming the instrument catalogue version that scored it.
//!
//! A group of focus `addiction_recovery` (42 CFR Part 2) labels every resource
//! (`meta.security`: `42CFRPart2`, confidentiality `R`). Resource ids are derived
//! from Circle's: ids with `_` (which FHIR ids do not allow) have it as `.` (which
//! Circle ids do not allow), and resources that stand for one event are named by the
//! event's log position.

pub mod codes;
pub mod resources;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, SecondsFormat, Utc};
use circle_events::client::{ClientEvent, ConsentScope};
use circle_events::group::{AttendanceStatus, Focus, GroupEvent, Measure};

use codes::InstrumentCodes;
use resources::*;

/// An event with the log facts the export needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Recorded<E> {
    pub position: i64,
    pub recorded_at: DateTime<Utc>,
    pub event: E,
}

/// What the export is made from: one group's stream, and its members' own streams.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroupHistory {
    pub group_id: String,
    pub events: Vec<Recorded<GroupEvent>>,
    pub clients: BTreeMap<String, Vec<Recorded<ClientEvent>>>,
}

impl GroupHistory {
    /// The clients who were ever members: whose streams the export also needs.
    pub fn member_ids(events: &[Recorded<GroupEvent>]) -> BTreeSet<String> {
        events
            .iter()
            .filter_map(|e| match &e.event {
                GroupEvent::MemberJoined { client_id, .. } => Some(client_id.clone()),
                _ => None,
            })
            .collect()
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExportOptions {
    /// `_type`: the resource types wanted; empty for all.
    pub types: BTreeSet<ResourceType>,
    /// `_since`: only resources changed after this time.
    pub since: Option<DateTime<Utc>>,
    /// Members' names, only for a caller who may see them and asked for them.
    pub names: BTreeMap<String, String>,
}

/// A Circle id as a FHIR id: `_` (not allowed in FHIR ids) becomes `.` (not allowed
/// in Circle ids), so the mapping is one to one; the length limit (64) is the same.
pub fn fhir_id(circle_id: &str) -> String {
    circle_id.replace('_', ".")
}

fn instant(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn identifier(kind: &str, value: &str) -> Vec<Identifier> {
    vec![Identifier {
        system: format!("{}/{kind}", codes::CIRCLE),
        value: value.to_string(),
    }]
}

fn focus_name(focus: Focus) -> String {
    match serde_json::to_value(focus) {
        Ok(serde_json::Value::String(name)) => name,
        _ => String::new(),
    }
}

/// The labels every resource of a 42 CFR Part 2 program carries.
pub fn part2_labels() -> Vec<Coding> {
    vec![
        Coding::new(codes::ACT_CODE, "42CFRPart2", Some("42 CFR Part2")),
        Coding::new(codes::CONFIDENTIALITY, "R", Some("restricted")),
    ]
}

struct Membership {
    joined_on: String,
    left_on: Option<String>,
}

struct Mark {
    first_position: i64,
    status: AttendanceStatus,
    recorded_at: DateTime<Utc>,
}

/// The group's resources, in [`ResourceType::ALL`] order and, within a type, in log
/// order; `None` when the history holds no `GroupCreated`.
pub fn export(history: &GroupHistory, options: &ExportOptions) -> Option<Vec<Resource>> {
    let group_id = &history.group_id;
    let group_fhir_id = fhir_id(group_id);
    let mut name = None;
    let mut focus = None;
    let mut closed = false;
    let mut facilitators: BTreeSet<String> = BTreeSet::new();
    let (mut group_changed, mut team_changed) = (None, None);
    let mut members: BTreeMap<String, Vec<Membership>> = BTreeMap::new();
    let mut patient_changed: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
    let mut sessions: BTreeMap<String, (DateTime<chrono::FixedOffset>, u32, bool)> =
        BTreeMap::new();
    let mut marks: BTreeMap<(String, String), Mark> = BTreeMap::new();
    let mut measures: Vec<(&Recorded<GroupEvent>, &str, Option<&str>, &Measure)> = Vec::new();
    for recorded in &history.events {
        let at = Some(recorded.recorded_at);
        match &recorded.event {
            GroupEvent::GroupCreated {
                name: n,
                focus: f,
                facilitators: fs,
                ..
            } => {
                name = Some(n.clone());
                focus = Some(*f);
                facilitators.extend(fs.iter().cloned());
                group_changed = at;
                team_changed = at;
            }
            GroupEvent::FacilitatorAssigned { clinician_id } => {
                facilitators.insert(clinician_id.clone());
                team_changed = at;
            }
            GroupEvent::FacilitatorRemoved { clinician_id } => {
                facilitators.remove(clinician_id);
                team_changed = at;
            }
            GroupEvent::MemberJoined {
                client_id,
                joined_on,
            } => {
                members
                    .entry(client_id.clone())
                    .or_default()
                    .push(Membership {
                        joined_on: joined_on.to_string(),
                        left_on: None,
                    });
                patient_changed.insert(client_id.clone(), recorded.recorded_at);
                group_changed = at;
            }
            GroupEvent::MemberLeft {
                client_id, left_on, ..
            } => {
                if let Some(period) = members.get_mut(client_id).and_then(|p| p.last_mut()) {
                    period.left_on = Some(left_on.to_string());
                }
                group_changed = at;
            }
            GroupEvent::SessionScheduled {
                session_id,
                starts_at,
                duration_minutes,
            } => {
                sessions.insert(session_id.clone(), (*starts_at, *duration_minutes, false));
            }
            GroupEvent::SessionCancelled { session_id, .. } => {
                if let Some(session) = sessions.get_mut(session_id) {
                    session.2 = true;
                }
            }
            GroupEvent::AttendanceRecorded {
                session_id,
                client_id,
                status,
            }
            | GroupEvent::AttendanceCorrected {
                session_id,
                client_id,
                status,
                ..
            } => {
                let mark = marks
                    .entry((session_id.clone(), client_id.clone()))
                    .or_insert(Mark {
                        first_position: recorded.position,
                        status: *status,
                        recorded_at: recorded.recorded_at,
                    });
                mark.status = *status;
                mark.recorded_at = recorded.recorded_at;
            }
            GroupEvent::FeedbackRecorded {
                client_id,
                session_id,
                measure,
            } => measures.push((recorded, client_id, session_id.as_deref(), measure)),
            GroupEvent::GroupClosed { .. } => {
                closed = true;
                group_changed = at;
            }
            // Goals and risk reviews have no resource in this export.
            GroupEvent::GoalSet { .. }
            | GroupEvent::GoalCheckedIn { .. }
            | GroupEvent::GoalClosed { .. }
            | GroupEvent::RiskReviewed { .. } => {}
        }
    }
    let name = name?;
    let focus = focus?;
    let security = if focus == Focus::AddictionRecovery {
        part2_labels()
    } else {
        Vec::new()
    };
    let meta = |changed: DateTime<Utc>| Meta {
        last_updated: instant(changed),
        security: security.clone(),
    };
    let wanted = |t: ResourceType| options.types.is_empty() || options.types.contains(&t);
    let fresh = |changed: DateTime<Utc>| options.since.is_none_or(|since| changed > since);
    let mut out: Vec<Resource> = Vec::new();
    let mut keep =
        |t: ResourceType, changed: DateTime<Utc>, make: &mut dyn FnMut(Meta) -> Resource| {
            if wanted(t) && fresh(changed) {
                out.push(make(meta(changed)));
            }
        };

    let group_changed = group_changed.unwrap_or_default();
    keep(ResourceType::Group, group_changed, &mut |meta| {
        Resource::Group {
            id: group_fhir_id.clone(),
            meta,
            identifier: identifier("group", group_id),
            active: !closed,
            kind: "person".into(),
            actual: true,
            code: CodeableConcept::coded(Coding::new(
                &format!("{}/CodeSystem/focus", codes::CIRCLE),
                &focus_name(focus),
                None,
            )),
            name: name.clone(),
            quantity: members.len() as u32,
            member: members
                .iter()
                .flat_map(|(client, periods)| {
                    periods.iter().map(move |p| GroupMember {
                        entity: Reference::to("Patient", &fhir_id(client)),
                        period: Period {
                            start: Some(p.joined_on.clone()),
                            end: p.left_on.clone(),
                        },
                        inactive: p.left_on.is_some(),
                    })
                })
                .collect(),
        }
    });
    for (client, changed) in &patient_changed {
        keep(ResourceType::Patient, *changed, &mut |meta| {
            Resource::Patient {
                id: fhir_id(client),
                meta,
                identifier: identifier("client", client),
                name: options
                    .names
                    .get(client)
                    .map(|text| vec![HumanName { text: text.clone() }])
                    .unwrap_or_default(),
            }
        });
    }
    keep(
        ResourceType::CareTeam,
        team_changed.unwrap_or_default(),
        &mut |meta| Resource::CareTeam {
            id: group_fhir_id.clone(),
            meta,
            status: if closed { "inactive" } else { "active" }.into(),
            name: format!("Facilitators of {name}"),
            subject: Reference::to("Group", &group_fhir_id),
            participant: facilitators
                .iter()
                .map(|clinician| CareTeamParticipant {
                    member: Reference {
                        identifier: Some(Identifier {
                            system: format!("{}/clinician", codes::CIRCLE),
                            value: clinician.clone(),
                        }),
                        ..Reference::default()
                    },
                })
                .collect(),
        },
    );
    // Encounters in log order of their first mark.
    let mut encounters: Vec<(&(String, String), &Mark)> = marks
        .iter()
        .filter(|((session, _), _)| sessions.get(session).is_some_and(|s| !s.2))
        .collect();
    encounters.sort_by_key(|(_, mark)| mark.first_position);
    let encounter_id = |session: &str, client: &str| {
        marks
            .get(&(session.to_string(), client.to_string()))
            .filter(|_| sessions.get(session).is_some_and(|s| !s.2))
            .map(|mark| format!("enc-{}", mark.first_position))
    };
    for ((session, client), mark) in encounters {
        let Some((starts_at, minutes, _)) = sessions.get(session) else {
            continue;
        };
        let end = *starts_at + chrono::Duration::minutes(i64::from(*minutes));
        keep(ResourceType::Encounter, mark.recorded_at, &mut |meta| {
            Resource::Encounter {
                id: format!("enc-{}", mark.first_position),
                meta,
                identifier: identifier("attendance", &format!("{session}/{client}")),
                status: if mark.status.attended() {
                    "finished"
                } else {
                    "cancelled"
                }
                .into(),
                class: Coding::new(codes::ACT_CODE, "AMB", Some("ambulatory")),
                kind: vec![CodeableConcept::text("Group therapy session")],
                subject: Reference::to("Patient", &fhir_id(client)),
                period: Period {
                    start: Some(starts_at.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
                    end: Some(end.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
                },
            }
        });
    }
    let mut observations = Vec::new();
    let mut provenances = Vec::new();
    for (recorded, client, session, measure) in &measures {
        let Some(instrument) = codes::instrument(&measure.instrument) else {
            continue;
        };
        let qr_id = format!("qr-{}", recorded.position);
        let subject = Reference::to("Patient", &fhir_id(client));
        let encounter = session
            .and_then(|s| encounter_id(s, client))
            .map(|id| Reference::to("Encounter", &id));
        let authored = measure
            .administered_at
            .to_rfc3339_opts(SecondsFormat::AutoSi, true);
        let changed = recorded.recorded_at;
        keep(ResourceType::QuestionnaireResponse, changed, &mut |meta| {
            Resource::QuestionnaireResponse {
                id: qr_id.clone(),
                meta,
                questionnaire: instrument.questionnaire(),
                status: "completed".into(),
                subject: subject.clone(),
                encounter: encounter.clone(),
                authored: authored.clone(),
                item: items(instrument, measure),
            }
        });
        let total_id = format!("obs-{}", recorded.position);
        let derived_from = vec![Reference::to("QuestionnaireResponse", &qr_id)];
        let category = vec![CodeableConcept::coded(Coding::new(
            codes::OBSERVATION_CATEGORY,
            "survey",
            Some("Survey"),
        ))];
        let mut targets = vec![
            Reference::to("QuestionnaireResponse", &qr_id),
            Reference::to("Observation", &total_id),
        ];
        observations.push((
            changed,
            Resource::Observation {
                id: total_id,
                meta: Meta::default(),
                status: "final".into(),
                category: category.clone(),
                code: CodeableConcept::coded(Coding::new(
                    instrument.system,
                    instrument.total,
                    Some(instrument.total_display),
                )),
                subject: subject.clone(),
                encounter: encounter.clone(),
                effective_date_time: authored.clone(),
                value_quantity: Some(Quantity {
                    value: measure.total.as_f64(),
                    unit: "{score}".into(),
                    system: codes::UCUM.into(),
                    code: "{score}".into(),
                }),
                value_codeable_concept: None,
                has_member: Vec::new(),
                derived_from: derived_from.clone(),
            },
        ));
        // PHQ-9 item 9 (thoughts of self-harm) on its own: the risk item.
        if instrument.instrument == codes::PHQ9.instrument {
            if let Some(answer) = measure
                .items
                .get(8)
                .and_then(|s| answer_coding(instrument, *s))
            {
                let id = format!("obs-{}-item9", recorded.position);
                targets.push(Reference::to("Observation", &id));
                observations.push((
                    changed,
                    Resource::Observation {
                        id,
                        meta: Meta::default(),
                        status: "final".into(),
                        category: category.clone(),
                        code: CodeableConcept::coded(Coding::new(
                            codes::LOINC,
                            codes::PHQ9.items[8],
                            None,
                        )),
                        subject: subject.clone(),
                        encounter: encounter.clone(),
                        effective_date_time: authored.clone(),
                        value_quantity: None,
                        value_codeable_concept: Some(CodeableConcept::coded(answer)),
                        has_member: Vec::new(),
                        derived_from: derived_from.clone(),
                    },
                ));
            }
        }
        // A LOINC panel (PHQ-9 44249-1, GAD-7 69737-5) groups the total and the
        // item observations, as the panel codes are meant to be used.
        if instrument.system == codes::LOINC {
            let id = format!("obs-{}-panel", recorded.position);
            let members = targets[1..].to_vec();
            targets.push(Reference::to("Observation", &id));
            observations.push((
                changed,
                Resource::Observation {
                    id,
                    meta: Meta::default(),
                    status: "final".into(),
                    category,
                    code: CodeableConcept::coded(Coding::new(codes::LOINC, instrument.panel, None)),
                    subject: subject.clone(),
                    encounter: encounter.clone(),
                    effective_date_time: authored.clone(),
                    value_quantity: None,
                    value_codeable_concept: None,
                    has_member: members,
                    derived_from,
                },
            ));
        }
        provenances.push((
            changed,
            Resource::Provenance {
                id: format!("prov-{}", recorded.position),
                meta: Meta::default(),
                target: targets,
                recorded: instant(recorded.recorded_at),
                agent: vec![ProvenanceAgent {
                    kind: CodeableConcept::coded(Coding::new(
                        codes::PROVENANCE_AGENT_TYPE,
                        "assembler",
                        Some("Assembler"),
                    )),
                    who: Reference {
                        identifier: Some(Identifier {
                            system: format!("{}/software", codes::CIRCLE),
                            value: "circle".into(),
                        }),
                        display: Some("Circle".into()),
                        ..Reference::default()
                    },
                }],
                entity: vec![ProvenanceEntity {
                    role: "source".into(),
                    what: Reference {
                        identifier: Some(Identifier {
                            system: format!("{}/reference-data", codes::CIRCLE),
                            value: format!("{}@{}", measure.instrument, measure.reference_version),
                        }),
                        display: Some(format!(
                            "Circle instrument catalogue: {} version {}",
                            measure.instrument, measure.reference_version
                        )),
                        ..Reference::default()
                    },
                }],
            },
        ));
    }
    for (changed, mut observation) in observations {
        keep(ResourceType::Observation, changed, &mut |meta| {
            if let Resource::Observation { meta: m, .. } = &mut observation {
                *m = meta;
            }
            observation.clone()
        });
    }
    for (client, stream) in &history.clients {
        if !members.contains_key(client) {
            continue;
        }
        // The latest decision per scope.
        let mut latest: BTreeMap<ConsentScope, (&Recorded<ClientEvent>, bool)> = BTreeMap::new();
        for recorded in stream {
            match &recorded.event {
                ClientEvent::ConsentGranted { scope } => {
                    latest.insert(*scope, (recorded, true));
                }
                ClientEvent::ConsentWithdrawn { scope } => {
                    latest.insert(*scope, (recorded, false));
                }
                _ => {}
            }
        }
        for (scope, (recorded, granted)) in latest {
            keep(ResourceType::Consent, recorded.recorded_at, &mut |meta| {
                consent(client, scope, recorded, granted, meta)
            });
        }
    }
    for (changed, mut provenance) in provenances {
        keep(ResourceType::Provenance, changed, &mut |meta| {
            if let Resource::Provenance { meta: m, .. } = &mut provenance {
                *m = meta;
            }
            provenance.clone()
        });
    }
    out.sort_by_key(Resource::resource_type);
    Some(out)
}

fn consent(
    client: &str,
    scope: ConsentScope,
    recorded: &Recorded<ClientEvent>,
    granted: bool,
    meta: Meta,
) -> Resource {
    let (code, display, policy) = match scope {
        ConsentScope::Treatment => ("treatment", "Treatment", "treatment"),
        ConsentScope::Research => ("research", "Research", "research"),
        ConsentScope::Reporting => ("patient-privacy", "Privacy Consent", "reporting"),
    };
    Resource::Consent {
        id: format!("consent-{}", recorded.position),
        meta,
        status: "active".into(),
        scope: CodeableConcept::coded(Coding::new(codes::CONSENT_SCOPE, code, Some(display))),
        category: vec![CodeableConcept::coded(Coding::new(
            codes::LOINC,
            codes::CONSENT_CATEGORY,
            None,
        ))],
        patient: Reference::to("Patient", &fhir_id(client)),
        date_time: instant(recorded.recorded_at),
        policy: vec![ConsentPolicy {
            uri: format!("{}/policy/{policy}", codes::CIRCLE),
        }],
        provision: ConsentProvision {
            kind: if granted { "permit" } else { "deny" }.into(),
        },
    }
}

/// An item score as its coded answer, when the instrument's items are answered from
/// a list and the score is one of its values.
fn answer_coding(
    instrument: &InstrumentCodes,
    score: circle_events::instruments::Score,
) -> Option<Coding> {
    let answers = instrument.answers?;
    let tenths = score.tenths();
    if tenths % 10 != 0 {
        return None;
    }
    let (code, display) = answers.get(usize::try_from(tenths / 10).ok()?)?;
    Some(Coding::new(codes::LOINC, code, Some(display)))
}

fn items(instrument: &InstrumentCodes, measure: &Measure) -> Vec<QuestionnaireItem> {
    measure
        .items
        .iter()
        .enumerate()
        .map(|(i, score)| QuestionnaireItem {
            link_id: instrument.items.get(i).map_or_else(
                || format!("{}-{}", instrument.panel, i + 1),
                |c| c.to_string(),
            ),
            answer: vec![match answer_coding(instrument, *score) {
                Some(coding) => Answer::ValueCoding(coding),
                None => Answer::ValueDecimal(score.as_f64()),
            }],
        })
        .collect()
}

/// One NDJSON line per resource.
pub fn ndjson_line(resource: &Resource, out: &mut Vec<u8>) {
    // Plain data: serializing it cannot fail.
    let _ = serde_json::to_writer(&mut *out, resource);
    out.push(b'\n');
}

#[cfg(test)]
mod tests;
