//! The FHIR R4 resources Circle exports, as hand-written serde types: only the
//! elements Circle fills, each spelled as R4 spells it (checked by the Python
//! `fhir.resources` validator in `tests/python/validate_fhir.py`).

use serde::Serialize;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    pub last_updated: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub security: Vec<Coding>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Coding {
    pub system: String,
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

impl Coding {
    pub fn new(system: &str, code: &str, display: Option<&str>) -> Coding {
        Coding {
            system: system.to_string(),
            code: code.to_string(),
            display: display.map(String::from),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CodeableConcept {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub coding: Vec<Coding>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl CodeableConcept {
    pub fn coded(coding: Coding) -> CodeableConcept {
        CodeableConcept {
            coding: vec![coding],
            text: None,
        }
    }

    pub fn text(text: &str) -> CodeableConcept {
        CodeableConcept {
            coding: Vec::new(),
            text: Some(text.to_string()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Identifier {
    pub system: String,
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Reference {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identifier: Option<Identifier>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

impl Reference {
    pub fn to(resource_type: &str, id: &str) -> Reference {
        Reference {
            reference: Some(format!("{resource_type}/{id}")),
            ..Reference::default()
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Period {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HumanName {
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Quantity {
    pub value: f64,
    pub unit: String,
    pub system: String,
    pub code: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupMember {
    pub entity: Reference,
    pub period: Period,
    pub inactive: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CareTeamParticipant {
    pub member: Reference,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Answer {
    ValueCoding(Coding),
    ValueDecimal(f64),
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QuestionnaireItem {
    pub link_id: String,
    pub answer: Vec<Answer>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConsentProvision {
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConsentPolicy {
    pub uri: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProvenanceAgent {
    #[serde(rename = "type")]
    pub kind: CodeableConcept,
    pub who: Reference,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProvenanceEntity {
    pub role: String,
    pub what: Reference,
}

/// One exported resource; `resourceType` is the variant's name.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "resourceType")]
pub enum Resource {
    #[serde(rename_all = "camelCase")]
    Group {
        id: String,
        meta: Meta,
        identifier: Vec<Identifier>,
        active: bool,
        #[serde(rename = "type")]
        kind: String,
        actual: bool,
        code: CodeableConcept,
        name: String,
        quantity: u32,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        member: Vec<GroupMember>,
    },
    #[serde(rename_all = "camelCase")]
    Patient {
        id: String,
        meta: Meta,
        identifier: Vec<Identifier>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        name: Vec<HumanName>,
    },
    #[serde(rename_all = "camelCase")]
    CareTeam {
        id: String,
        meta: Meta,
        status: String,
        name: String,
        subject: Reference,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        participant: Vec<CareTeamParticipant>,
    },
    #[serde(rename_all = "camelCase")]
    Encounter {
        id: String,
        meta: Meta,
        identifier: Vec<Identifier>,
        status: String,
        class: Coding,
        #[serde(rename = "type")]
        kind: Vec<CodeableConcept>,
        subject: Reference,
        period: Period,
    },
    #[serde(rename_all = "camelCase")]
    QuestionnaireResponse {
        id: String,
        meta: Meta,
        questionnaire: String,
        status: String,
        subject: Reference,
        #[serde(skip_serializing_if = "Option::is_none")]
        encounter: Option<Reference>,
        authored: String,
        item: Vec<QuestionnaireItem>,
    },
    #[serde(rename_all = "camelCase")]
    Observation {
        id: String,
        meta: Meta,
        status: String,
        category: Vec<CodeableConcept>,
        code: CodeableConcept,
        subject: Reference,
        #[serde(skip_serializing_if = "Option::is_none")]
        encounter: Option<Reference>,
        effective_date_time: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        value_quantity: Option<Quantity>,
        #[serde(skip_serializing_if = "Option::is_none")]
        value_codeable_concept: Option<CodeableConcept>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        has_member: Vec<Reference>,
        derived_from: Vec<Reference>,
    },
    #[serde(rename_all = "camelCase")]
    Consent {
        id: String,
        meta: Meta,
        status: String,
        scope: CodeableConcept,
        category: Vec<CodeableConcept>,
        patient: Reference,
        date_time: String,
        policy: Vec<ConsentPolicy>,
        provision: ConsentProvision,
    },
    #[serde(rename_all = "camelCase")]
    Provenance {
        id: String,
        meta: Meta,
        target: Vec<Reference>,
        recorded: String,
        agent: Vec<ProvenanceAgent>,
        entity: Vec<ProvenanceEntity>,
    },
}

impl Resource {
    pub fn resource_type(&self) -> ResourceType {
        match self {
            Resource::Group { .. } => ResourceType::Group,
            Resource::Patient { .. } => ResourceType::Patient,
            Resource::CareTeam { .. } => ResourceType::CareTeam,
            Resource::Encounter { .. } => ResourceType::Encounter,
            Resource::QuestionnaireResponse { .. } => ResourceType::QuestionnaireResponse,
            Resource::Observation { .. } => ResourceType::Observation,
            Resource::Consent { .. } => ResourceType::Consent,
            Resource::Provenance { .. } => ResourceType::Provenance,
        }
    }
}

/// The resource types a group's export holds, in the order the files are listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceType {
    Group,
    Patient,
    CareTeam,
    Encounter,
    QuestionnaireResponse,
    Observation,
    Consent,
    Provenance,
}

impl ResourceType {
    pub const ALL: [ResourceType; 8] = [
        ResourceType::Group,
        ResourceType::Patient,
        ResourceType::CareTeam,
        ResourceType::Encounter,
        ResourceType::QuestionnaireResponse,
        ResourceType::Observation,
        ResourceType::Consent,
        ResourceType::Provenance,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ResourceType::Group => "Group",
            ResourceType::Patient => "Patient",
            ResourceType::CareTeam => "CareTeam",
            ResourceType::Encounter => "Encounter",
            ResourceType::QuestionnaireResponse => "QuestionnaireResponse",
            ResourceType::Observation => "Observation",
            ResourceType::Consent => "Consent",
            ResourceType::Provenance => "Provenance",
        }
    }

    pub fn parse(name: &str) -> Option<ResourceType> {
        ResourceType::ALL.into_iter().find(|t| t.name() == name)
    }
}
