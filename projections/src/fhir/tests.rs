//! The FHIR export from a group's events: given this history, then these resources.

use chrono::TimeZone;
use circle_events::group::{DepartureReason, Format};
use circle_events::instruments::{Catalogue, Score};
use serde_json::{json, Value};

use super::*;

/// Every code the export writes for PHQ-9 and GAD-7, pinned. Checked against
/// loinc.org: the PHQ-9 panel 44249-1 and GAD-7 panel 69737-5 as listed, in item
/// order, in the PHQ-SADS panel 69729-2; the answer list LL358-3.
#[test]
fn the_loinc_codes_are_the_published_ones_in_item_order() {
    let phq9 = [
        "44250-9", "44255-8", "44259-0", "44254-1", "44251-7", "44258-2", "44252-5", "44253-3",
        "44260-8",
    ];
    let gad7 = [
        "69725-0", "68509-9", "69733-4", "69734-2", "69735-9", "69689-8", "69736-7",
    ];
    assert_eq!(codes::PHQ9.items, phq9);
    assert_eq!(codes::GAD7.items, gad7);
    assert_eq!(
        (codes::PHQ9.panel, codes::PHQ9.total),
        ("44249-1", "44261-6")
    );
    assert_eq!(
        (codes::GAD7.panel, codes::GAD7.total),
        ("69737-5", "70274-6")
    );
    assert_eq!(
        codes::LL358_3,
        [
            ("LA6568-5", "Not at all"),
            ("LA6569-3", "Several days"),
            ("LA6570-1", "More than half the days"),
            ("LA6571-9", "Nearly every day"),
        ]
    );
    // The catalogue's own LOINC totals agree, and every instrument has codes for
    // each of its items.
    let catalogue = Catalogue::builtin();
    for codes in codes::INSTRUMENTS {
        let definition = catalogue
            .current(codes.instrument)
            .expect("in the catalogue");
        assert_eq!(definition.items, codes.items.len(), "{}", codes.instrument);
        if codes.system == codes::LOINC {
            assert_eq!(definition.loinc_total.as_deref(), Some(codes.total));
        }
    }
}

fn at(day: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 2, day, 9, 0, 0).unwrap()
}

struct History(GroupHistory, i64);

impl History {
    fn new(focus: Focus) -> History {
        let mut h = History(
            GroupHistory {
                group_id: "grp_a".into(),
                ..GroupHistory::default()
            },
            0,
        );
        h.group(
            1,
            GroupEvent::GroupCreated {
                group_id: "grp_a".into(),
                name: "Tuesday".into(),
                focus,
                format: Format::Open,
                capacity: 10,
                facilitators: vec!["dr-a".into()],
                starts_on: None,
            },
        );
        h
    }

    fn group(&mut self, day: u32, event: GroupEvent) -> &mut Self {
        self.1 += 1;
        self.0.events.push(Recorded {
            position: self.1,
            recorded_at: at(day),
            event,
        });
        self
    }

    fn client(&mut self, client: &str, day: u32, event: ClientEvent) -> &mut Self {
        self.1 += 1;
        let recorded = Recorded {
            position: self.1,
            recorded_at: at(day),
            event,
        };
        self.0
            .clients
            .entry(client.into())
            .or_default()
            .push(recorded);
        self
    }
}

fn phq9(items: [i64; 9]) -> Measure {
    Measure {
        instrument: "PHQ-9".into(),
        reference_version: "2024.1".into(),
        items: items.into_iter().map(Score::whole).collect(),
        total: Score::whole(items.iter().sum()),
        administered_at: DateTime::parse_from_rfc3339("2026-02-03T18:30:00+01:00").unwrap(),
    }
}

/// `c1` joins, is present at `s1` and answers a PHQ-9 there, then leaves; `c2` joins
/// and is absent; `c1` grants research consent.
fn history(focus: Focus) -> GroupHistory {
    let mut h = History::new(focus);
    let date = |s: &str| s.parse().unwrap();
    h.group(
        2,
        GroupEvent::MemberJoined {
            client_id: "c1".into(),
            joined_on: date("2026-02-02"),
        },
    )
    .group(
        2,
        GroupEvent::MemberJoined {
            client_id: "c2".into(),
            joined_on: date("2026-02-02"),
        },
    )
    .group(
        2,
        GroupEvent::SessionScheduled {
            session_id: "s1".into(),
            starts_at: DateTime::parse_from_rfc3339("2026-02-03T18:00:00+01:00").unwrap(),
            duration_minutes: 90,
        },
    )
    .group(
        3,
        GroupEvent::AttendanceRecorded {
            session_id: "s1".into(),
            client_id: "c1".into(),
            status: AttendanceStatus::Present,
        },
    )
    .group(
        3,
        GroupEvent::AttendanceRecorded {
            session_id: "s1".into(),
            client_id: "c2".into(),
            status: AttendanceStatus::NoShow,
        },
    )
    .group(
        3,
        GroupEvent::FeedbackRecorded {
            client_id: "c1".into(),
            session_id: Some("s1".into()),
            measure: phq9([3, 2, 1, 0, 0, 1, 2, 3, 1]),
        },
    )
    .group(
        10,
        GroupEvent::MemberLeft {
            client_id: "c1".into(),
            left_on: date("2026-02-10"),
            reason: DepartureReason::Completed,
        },
    )
    .client(
        "c1",
        4,
        ClientEvent::ConsentGranted {
            scope: ConsentScope::Research,
        },
    );
    h.0
}

fn json_of(resources: &[Resource]) -> Vec<Value> {
    resources
        .iter()
        .map(|r| serde_json::to_value(r).unwrap())
        .collect()
}

fn of_type<'a>(resources: &'a [Value], t: &str) -> Vec<&'a Value> {
    resources
        .iter()
        .filter(|r| r["resourceType"] == t)
        .collect()
}

#[test]
fn a_group_exports_its_members_encounters_answers_scores_consents_and_provenance() {
    let resources = json_of(&export(&history(Focus::Anxiety), &ExportOptions::default()).unwrap());
    let group = of_type(&resources, "Group")[0];
    assert_eq!(group["id"], "grp.a", "FHIR ids have no underscore");
    assert_eq!(group["identifier"][0]["value"], "grp_a");
    assert_eq!(group["member"][0]["entity"]["reference"], "Patient/c1");
    assert_eq!(
        group["member"][0]["period"],
        json!({"start": "2026-02-02", "end": "2026-02-10"})
    );
    assert_eq!(group["member"][0]["inactive"], true);
    let patients = of_type(&resources, "Patient");
    assert_eq!(patients.len(), 2);
    assert!(
        patients[0].get("name").is_none(),
        "no name unless asked and allowed"
    );
    let team = of_type(&resources, "CareTeam")[0];
    assert_eq!(
        team["participant"][0]["member"]["identifier"]["value"],
        "dr-a"
    );

    let encounters = of_type(&resources, "Encounter");
    assert_eq!(encounters.len(), 2);
    assert_eq!(encounters[0]["status"], "finished");
    assert_eq!(encounters[1]["status"], "cancelled", "a no-show");
    assert_eq!(encounters[0]["period"]["end"], "2026-02-03T19:30:00+01:00");

    let qr = of_type(&resources, "QuestionnaireResponse")[0];
    assert_eq!(qr["questionnaire"], "http://loinc.org/q/44249-1");
    assert_eq!(
        qr["encounter"]["reference"],
        encounters[0]["id"]
            .as_str()
            .map(|id| format!("Encounter/{id}"))
            .unwrap()
    );
    let link_ids: Vec<&str> = qr["item"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["linkId"].as_str().unwrap())
        .collect();
    assert_eq!(link_ids, codes::PHQ9.items);
    assert_eq!(
        qr["item"][0]["answer"][0]["valueCoding"]["code"], "LA6571-9",
        "3: nearly every day"
    );
    assert_eq!(
        qr["item"][3]["answer"][0]["valueCoding"]["code"], "LA6568-5",
        "0: not at all"
    );

    let observations = of_type(&resources, "Observation");
    let total = observations[0];
    assert_eq!(total["code"]["coding"][0]["code"], "44261-6");
    assert_eq!(total["category"][0]["coding"][0]["code"], "survey");
    assert_eq!(total["valueQuantity"]["value"], 13.0);
    assert_eq!(
        total["derivedFrom"][0]["reference"],
        format!("QuestionnaireResponse/{}", qr["id"].as_str().unwrap())
    );
    let item9 = observations[1];
    assert_eq!(item9["code"]["coding"][0]["code"], "44260-8");
    assert_eq!(
        item9["valueCodeableConcept"]["coding"][0]["code"],
        "LA6569-3"
    );
    let panel = observations[2];
    assert_eq!(panel["code"]["coding"][0]["code"], "44249-1");
    assert_eq!(
        panel["hasMember"],
        json!([{"reference": format!("Observation/{}", total["id"].as_str().unwrap())},
               {"reference": format!("Observation/{}", item9["id"].as_str().unwrap())}])
    );

    let consent = of_type(&resources, "Consent")[0];
    assert_eq!(consent["scope"]["coding"][0]["code"], "research");
    assert_eq!(consent["provision"]["type"], "permit");
    let provenance = of_type(&resources, "Provenance")[0];
    assert_eq!(
        provenance["entity"][0]["what"]["identifier"]["value"],
        "PHQ-9@2024.1"
    );
    assert!(resources
        .iter()
        .all(|r| r["meta"].get("security").is_none()));
}

#[test]
fn a_42_cfr_part_2_group_labels_every_resource() {
    let resources = json_of(
        &export(
            &history(Focus::AddictionRecovery),
            &ExportOptions::default(),
        )
        .unwrap(),
    );
    assert!(resources.len() > 8);
    for resource in &resources {
        assert_eq!(
            resource["meta"]["security"],
            json!([{"system": codes::ACT_CODE, "code": "42CFRPart2", "display": "42 CFR Part2"},
                   {"system": codes::CONFIDENTIALITY, "code": "R", "display": "restricted"}]),
            "{resource}"
        );
    }
}

#[test]
fn type_since_and_names_narrow_the_export() {
    let history = history(Focus::Anxiety);
    let only = ExportOptions {
        types: [ResourceType::Patient, ResourceType::Consent].into(),
        since: Some(at(3)),
        names: [("c1".to_string(), "Ada L.".to_string())].into(),
    };
    let resources = json_of(&export(&history, &only).unwrap());
    let types: Vec<&str> = resources
        .iter()
        .map(|r| r["resourceType"].as_str().unwrap())
        .collect();
    // Patients changed on day 2 are before `since`; the consent on day 4 is after.
    assert_eq!(types, ["Consent"]);
    let named = ExportOptions {
        types: [ResourceType::Patient].into(),
        ..only
    };
    let named = ExportOptions {
        since: None,
        ..named
    };
    let resources = json_of(&export(&history, &named).unwrap());
    assert_eq!(resources[0]["name"], json!([{"text": "Ada L."}]));
    assert!(resources[1].get("name").is_none());
}

#[test]
fn an_unknown_group_exports_nothing() {
    assert!(export(&GroupHistory::default(), &ExportOptions::default()).is_none());
}
