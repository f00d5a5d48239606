//! The codes the FHIR export writes: LOINC for PHQ-9 and GAD-7 (panels, items in the
//! instruments' order, totals, the answer list LL358-3), FHIR's own code systems, and
//! Circle's local code system for ORS, SRS and GSRS (which have no LOINC codes).
//!
//! Checked against loinc.org (panels 44249-1 and 69737-5 as listed in the PHQ-SADS
//! panel 69729-2; answer list LL358-3) and pinned by `tests/fhir.rs`.

pub const LOINC: &str = "http://loinc.org";
pub const UCUM: &str = "http://unitsofmeasure.org";
pub const OBSERVATION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
pub const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
pub const CONFIDENTIALITY: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
pub const CONSENT_SCOPE: &str = "http://terminology.hl7.org/CodeSystem/consentscope";
pub const PROVENANCE_AGENT_TYPE: &str =
    "http://terminology.hl7.org/CodeSystem/provenance-participant-type";
/// LOINC 59284-0, the consent document category FHIR's R4 examples use.
pub const CONSENT_CATEGORY: &str = "59284-0";
/// The base of Circle's own identifiers, code systems and questionnaires.
pub const CIRCLE: &str = "https://circle.example/fhir";

/// An instrument's codes: LOINC where LOINC has the instrument, else Circle's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstrumentCodes {
    pub instrument: &'static str,
    /// The code system of `panel`, `total` and `items`.
    pub system: &'static str,
    /// The questionnaire (panel) code.
    pub panel: &'static str,
    /// The total score's code.
    pub total: &'static str,
    pub total_display: &'static str,
    /// Each item's code, in the instrument's item order (the `linkId`s).
    pub items: &'static [&'static str],
    /// Coded answers by item score, when the items are answered from a list.
    pub answers: Option<&'static [(&'static str, &'static str)]>,
}

/// LOINC answer list LL358-3: "Not at all", "Several days", "More than half the
/// days", "Nearly every day", scored 0 to 3 (PHQ-9 and GAD-7 items).
pub const LL358_3: [(&str, &str); 4] = [
    ("LA6568-5", "Not at all"),
    ("LA6569-3", "Several days"),
    ("LA6570-1", "More than half the days"),
    ("LA6571-9", "Nearly every day"),
];

pub const PHQ9: InstrumentCodes = InstrumentCodes {
    instrument: "PHQ-9",
    system: LOINC,
    panel: "44249-1",
    total: "44261-6",
    total_display: "Patient Health Questionnaire 9 item (PHQ-9) total score [Reported]",
    items: &[
        "44250-9", // little interest or pleasure in doing things
        "44255-8", // feeling down, depressed, or hopeless
        "44259-0", // trouble falling or staying asleep, or sleeping too much
        "44254-1", // feeling tired or having little energy
        "44251-7", // poor appetite or overeating
        "44258-2", // feeling bad about yourself
        "44252-5", // trouble concentrating on things
        "44253-3", // moving or speaking slowly, or fidgety
        "44260-8", // thoughts that you would be better off dead (the risk item)
    ],
    answers: Some(&LL358_3),
};

pub const GAD7: InstrumentCodes = InstrumentCodes {
    instrument: "GAD-7",
    system: LOINC,
    panel: "69737-5",
    total: "70274-6",
    total_display: "Generalized anxiety disorder 7 item (GAD-7) total score [Reported.PHQ]",
    items: &[
        "69725-0", // feeling nervous, anxious or on edge
        "68509-9", // not being able to stop or control worrying
        "69733-4", // worrying too much about different things
        "69734-2", // trouble relaxing
        "69735-9", // being so restless that it is hard to sit still
        "69689-8", // becoming easily annoyed or irritable
        "69736-7", // feeling afraid as if something awful might happen
    ],
    answers: Some(&LL358_3),
};

/// Circle's code system for instruments LOINC does not code.
pub const LOCAL_INSTRUMENTS: &str = "https://circle.example/fhir/CodeSystem/instrument";

const fn local(
    instrument: &'static str,
    panel: &'static str,
    total: &'static str,
    total_display: &'static str,
    items: &'static [&'static str],
) -> InstrumentCodes {
    InstrumentCodes {
        instrument,
        system: LOCAL_INSTRUMENTS,
        panel,
        total,
        total_display,
        items,
        answers: None,
    }
}

pub const ORS: InstrumentCodes = local(
    "ORS",
    "ors",
    "ors-total",
    "Outcome Rating Scale total",
    &["ors-1", "ors-2", "ors-3", "ors-4"],
);
pub const SRS: InstrumentCodes = local(
    "SRS",
    "srs",
    "srs-total",
    "Session Rating Scale total",
    &["srs-1", "srs-2", "srs-3", "srs-4"],
);
pub const GSRS: InstrumentCodes = local(
    "GSRS",
    "gsrs",
    "gsrs-total",
    "Group Session Rating Scale total",
    &["gsrs-1", "gsrs-2", "gsrs-3", "gsrs-4"],
);

pub const INSTRUMENTS: [InstrumentCodes; 5] = [PHQ9, GAD7, ORS, SRS, GSRS];

pub fn instrument(name: &str) -> Option<&'static InstrumentCodes> {
    INSTRUMENTS.iter().find(|c| c.instrument == name)
}

impl InstrumentCodes {
    /// The questionnaire's canonical URL: LOINC's form for LOINC panels.
    pub fn questionnaire(&self) -> String {
        if self.system == LOINC {
            format!("http://loinc.org/q/{}", self.panel)
        } else {
            format!("{CIRCLE}/Questionnaire/{}", self.panel)
        }
    }
}
