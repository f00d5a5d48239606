//! The access policy: one place decides who may do what to which record.
//!
//! `check(principal, action, resource)` is pure: it sees the caller, what they ask
//! to do, and the facts about the record that matter to the rule (whether the
//! clinician facilitates the group, whether the client is in their care), never
//! whether the record exists. Handlers gather those facts ([`Facts`]) and ask; none
//! compares a role itself. The role table is ARCHITECTURE.md's "Roles":
//!
//! | role | may |
//! |---|---|
//! | admin | everything; personal data decrypted |
//! | clinician | groups they facilitate, and those groups' clients (past members too); registering clients; bringing into their group only clients already in their care or registered by them |
//! | auditor | every read, personal data withheld; no writes; the access log |
//! | reporter | reports only, in the aggregate form (no member rows, no value from fewer than k people) |
//!
//! A refusal is always 403 and is decided before anything is loaded, so it says
//! nothing about whether the record exists (ARCHITECTURE.md, "Privacy").
//!
//! Every route has an entry in [`ROUTES`]; a request to a route without one is
//! refused (the router's guard), and the matrix test (`tests/policy.rs`) fails for
//! any operation of the served description without an entry.

use crate::auth::{Principal, Role};

/// What a caller asks to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The API description: public, holds no data.
    ReadDescription,
    /// The dashboard's sign-in and sign-out and its static assets: public, they
    /// hold no data (every other dashboard page asks for the action its data needs).
    OpenDashboard,
    /// The list of groups (each one then filtered by [`Action::ReadGroup`]).
    ListGroups,
    ReadGroup,
    CreateGroup,
    /// Any group command other than creating it or bringing a client in.
    WriteGroup,
    /// Bringing a client into a group.
    JoinGroup,
    RegisterClient,
    ReadClient,
    /// One group's or client's history: its events with actors, times and
    /// corrections (payloads as stored, personal data sealed).
    ReadHistory,
    /// Consents, measures and goals about a client.
    WriteClient,
    EraseClient,
    /// Attendance, retention, outcomes and goals reports.
    ReadReport,
    /// Alerts name members: never in an aggregate form.
    ReadAlerts,
    /// The access log: who saw whose data.
    ReadAccessLog,
    /// The event log with its hash chain, signed checkpoints and proofs (sealed
    /// personal data only).
    ReadAuditTrail,
    /// Issuing, listing and revoking API tokens.
    ManageTokens,
}

/// The record acted on, with the facts about it the rules need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resource<'a> {
    /// No one record: the whole practice, or a scope wider than one group.
    Practice,
    /// One group; `facilitated`: the caller is among its facilitators.
    Group { facilitated: bool },
    /// A group about to be created, listing these facilitators.
    NewGroup { facilitators: &'a [String] },
    /// One client; `in_care`: the caller facilitates a group the client is or was a
    /// member of.
    Client { in_care: bool },
    /// A client brought into a group.
    Membership {
        group_facilitated: bool,
        /// In the caller's care, or registered by the caller (who holds their data).
        client_known: bool,
    },
}

/// How much of the record an allowed caller sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// Everything, personal data decrypted.
    Full,
    /// Everything but personal data (auditors).
    Withheld,
    /// Aggregates only: no member rows, no value computed from fewer than k people (reporters).
    Aggregate,
}

/// Why a request is refused: always a 403, optionally naming the field at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub reason: String,
    pub field: Option<&'static str>,
}

pub type Decision = Result<View, Denial>;

fn deny(reason: impl Into<String>) -> Decision {
    Err(Denial {
        reason: reason.into(),
        field: None,
    })
}

/// The one decision. Pure: the same principal, action and facts always get the
/// same answer.
pub fn check(principal: &Principal, action: Action, resource: Resource<'_>) -> Decision {
    if is_public(action) {
        return Ok(View::Full);
    }
    match principal.role {
        Role::Admin => Ok(View::Full),
        Role::Auditor => match action {
            Action::ListGroups
            | Action::ReadGroup
            | Action::ReadClient
            | Action::ReadHistory
            | Action::ReadReport
            | Action::ReadAlerts
            | Action::ReadAccessLog
            | Action::ReadAuditTrail => Ok(View::Withheld),
            _ => deny("the auditor role reads and never writes"),
        },
        Role::Reporter => match action {
            Action::ReadReport => Ok(View::Aggregate),
            _ => deny("the reporter role reads aggregate reports only"),
        },
        Role::Clinician => clinician(principal, action, resource),
    }
}

fn clinician(principal: &Principal, action: Action, resource: Resource<'_>) -> Decision {
    let not_yours = || deny("this group is not one you facilitate");
    let not_in_care = || deny("this client is not a member of a group you facilitate");
    match (action, resource) {
        (Action::ListGroups | Action::RegisterClient, _) => Ok(View::Full),
        (Action::CreateGroup, Resource::NewGroup { facilitators }) => {
            let lists_self = principal
                .clinician_id
                .as_ref()
                .is_some_and(|me| facilitators.contains(me));
            if lists_self {
                Ok(View::Full)
            } else {
                Err(Denial {
                    reason: "a clinician may only create groups they facilitate".into(),
                    field: Some("facilitators"),
                })
            }
        }
        (
            Action::ReadGroup
            | Action::ReadHistory
            | Action::WriteGroup
            | Action::ReadReport
            | Action::ReadAlerts,
            Resource::Group { facilitated },
        ) => {
            if facilitated {
                Ok(View::Full)
            } else {
                not_yours()
            }
        }
        // Wider than one group: the aggregate form, as reporters get it.
        (Action::ReadReport, Resource::Practice) => Ok(View::Aggregate),
        (Action::ReadAlerts, Resource::Practice) => deny(
            "alerts name members: a clinician reads them one group of theirs at a time (give group_id)",
        ),
        (
            Action::ReadClient | Action::ReadHistory | Action::WriteClient,
            Resource::Client { in_care },
        ) => {
            if in_care {
                Ok(View::Full)
            } else {
                not_in_care()
            }
        }
        (
            Action::JoinGroup,
            Resource::Membership {
                group_facilitated,
                client_known,
            },
        ) => match (group_facilitated, client_known) {
            (false, _) => not_yours(),
            (true, false) => Err(Denial {
                reason: "a client outside your care joins your group only by an admin's referral"
                    .into(),
                field: Some("client_id"),
            }),
            (true, true) => Ok(View::Full),
        },
        (Action::EraseClient, _) => deny("only an admin erases a client"),
        (Action::ReadAccessLog, _) => deny("the access log is for auditors and admins"),
        (Action::ReadAuditTrail, _) => deny("the audit trail is for auditors and admins"),
        (Action::ManageTokens, _) => deny("tokens are managed by admins"),
        (action, resource) => {
            // A handler asked about a pairing no rule covers: refuse, loudly.
            tracing::error!(?action, ?resource, "no policy rule for this pairing");
            deny("no access rule covers this request")
        }
    }
}

/// Whether any record could allow `role` this action: the guard's check before a
/// request is parsed, so that a role never allowed learns nothing from the body's
/// validation or the records it names.
pub fn role_may(role: Role, action: Action) -> Result<(), Denial> {
    let probe = Principal {
        role,
        clinician_id: Some(String::new()),
        actor_id: String::new(),
        token_id: String::new(),
    };
    // The most favourable facts: if these are refused, every record is.
    let best = match action {
        Action::CreateGroup => return check_create_probe(&probe),
        Action::JoinGroup => Resource::Membership {
            group_facilitated: true,
            client_known: true,
        },
        Action::ReadClient | Action::WriteClient | Action::EraseClient => {
            Resource::Client { in_care: true }
        }
        Action::ListGroups
        | Action::RegisterClient
        | Action::ReadDescription
        | Action::OpenDashboard => Resource::Practice,
        Action::ReadAccessLog | Action::ReadAuditTrail | Action::ManageTokens => Resource::Practice,
        _ => Resource::Group { facilitated: true },
    };
    check(&probe, action, best).map(|_| ())
}

fn check_create_probe(probe: &Principal) -> Result<(), Denial> {
    let facilitators = [String::new()];
    check(
        probe,
        Action::CreateGroup,
        Resource::NewGroup {
            facilitators: &facilitators,
        },
    )
    .map(|_| ())
}

/// Whether a route answers without a token.
pub fn is_public(action: Action) -> bool {
    matches!(action, Action::ReadDescription | Action::OpenDashboard)
}

/// Actions whose every effect is a command committed through the write skeleton
/// (`http::write`), each commit checking the caller's token in its own transaction.
/// Only for these may a request go in on a token read live before
/// ([`crate::auth::Liveness::AtCommit`]): nothing they do happens outside such a
/// commit. Token management, exports and reads are not among them.
pub fn commits_only(action: Action) -> bool {
    matches!(
        action,
        Action::CreateGroup
            | Action::WriteGroup
            | Action::JoinGroup
            | Action::RegisterClient
            | Action::WriteClient
            | Action::EraseClient
    )
}

/// Every route under `/api/v1` and `/app` (the dashboard) and the action it asks
/// for: `(method, path template, action)`. A route the router serves without an
/// entry here is refused.
pub const ROUTES: &[(&str, &str, Action)] = &[
    ("GET", "/api/v1/openapi.json", Action::ReadDescription),
    ("GET", "/api/v1/groups", Action::ListGroups),
    ("POST", "/api/v1/groups", Action::CreateGroup),
    ("GET", "/api/v1/groups/{group_id}", Action::ReadGroup),
    (
        "GET",
        "/api/v1/groups/{group_id}/history",
        Action::ReadHistory,
    ),
    (
        "POST",
        "/api/v1/groups/{group_id}/facilitators",
        Action::WriteGroup,
    ),
    (
        "POST",
        "/api/v1/groups/{group_id}/members",
        Action::JoinGroup,
    ),
    (
        "POST",
        "/api/v1/groups/{group_id}/members/{client_id}/departure",
        Action::WriteGroup,
    ),
    (
        "POST",
        "/api/v1/groups/{group_id}/sessions",
        Action::WriteGroup,
    ),
    (
        "POST",
        "/api/v1/groups/{group_id}/sessions/{session_id}/cancellation",
        Action::WriteGroup,
    ),
    (
        "POST",
        "/api/v1/groups/{group_id}/sessions/{session_id}/attendance",
        Action::WriteGroup,
    ),
    (
        "POST",
        "/api/v1/groups/{group_id}/sessions/{session_id}/feedback",
        Action::WriteGroup,
    ),
    (
        "POST",
        "/api/v1/groups/{group_id}/sessions/{session_id}/goal-check-ins",
        Action::WriteGroup,
    ),
    (
        "POST",
        "/api/v1/groups/{group_id}/closure",
        Action::WriteGroup,
    ),
    ("POST", "/api/v1/clients", Action::RegisterClient),
    ("GET", "/api/v1/clients/{client_id}", Action::ReadClient),
    (
        "GET",
        "/api/v1/clients/{client_id}/history",
        Action::ReadHistory,
    ),
    (
        "POST",
        "/api/v1/clients/{client_id}/consents",
        Action::WriteClient,
    ),
    (
        "POST",
        "/api/v1/clients/{client_id}/erasure",
        Action::EraseClient,
    ),
    (
        "POST",
        "/api/v1/clients/{client_id}/measures",
        Action::WriteClient,
    ),
    (
        "POST",
        "/api/v1/clients/{client_id}/goals",
        Action::WriteClient,
    ),
    (
        "POST",
        "/api/v1/clients/{client_id}/goals/{goal_id}/check-ins",
        Action::WriteClient,
    ),
    (
        "POST",
        "/api/v1/clients/{client_id}/goals/{goal_id}/closure",
        Action::WriteClient,
    ),
    ("GET", "/api/v1/reports/attendance", Action::ReadReport),
    ("GET", "/api/v1/reports/retention", Action::ReadReport),
    ("GET", "/api/v1/reports/outcomes", Action::ReadReport),
    ("GET", "/api/v1/reports/goals", Action::ReadReport),
    ("GET", "/api/v1/alerts", Action::ReadAlerts),
    // Exports take the report's form; alerts too (their reporter form is counts).
    ("GET", "/api/v1/exports/outcomes.csv", Action::ReadReport),
    ("GET", "/api/v1/exports/outcomes.ndjson", Action::ReadReport),
    ("GET", "/api/v1/exports/attendance.csv", Action::ReadReport),
    (
        "GET",
        "/api/v1/exports/attendance.ndjson",
        Action::ReadReport,
    ),
    ("GET", "/api/v1/exports/retention.csv", Action::ReadReport),
    (
        "GET",
        "/api/v1/exports/retention.ndjson",
        Action::ReadReport,
    ),
    ("GET", "/api/v1/exports/alerts.csv", Action::ReadReport),
    ("GET", "/api/v1/exports/alerts.ndjson", Action::ReadReport),
    // A group's FHIR export: who may read the group with its members.
    (
        "GET",
        "/api/v1/fhir/Group/{group_id}/$export",
        Action::ReadGroup,
    ),
    ("GET", "/api/v1/fhir/jobs/{job_id}", Action::ReadGroup),
    // Forgetting one's own export job writes nothing to the group.
    ("DELETE", "/api/v1/fhir/jobs/{job_id}", Action::ReadGroup),
    (
        "GET",
        "/api/v1/fhir/jobs/{job_id}/files/{resource_type}",
        Action::ReadGroup,
    ),
    ("GET", "/api/v1/audit/access", Action::ReadAccessLog),
    ("GET", "/api/v1/audit/events", Action::ReadAuditTrail),
    ("GET", "/api/v1/audit/checkpoint", Action::ReadAuditTrail),
    ("GET", "/api/v1/audit/key", Action::ReadAuditTrail),
    (
        "GET",
        "/api/v1/audit/proof/inclusion",
        Action::ReadAuditTrail,
    ),
    (
        "GET",
        "/api/v1/audit/proof/consistency",
        Action::ReadAuditTrail,
    ),
    ("GET", "/api/v1/audit/verify", Action::ReadAuditTrail),
    ("GET", "/api/v1/tokens", Action::ManageTokens),
    ("POST", "/api/v1/tokens", Action::ManageTokens),
    (
        "POST",
        "/api/v1/tokens/{token_id}/revocation",
        Action::ManageTokens,
    ),
    // The dashboard: each page asks for what its data needs; forms for what the
    // API's route for the same command asks.
    ("GET", "/app/sign-in", Action::OpenDashboard),
    ("POST", "/app/sign-in", Action::OpenDashboard),
    ("POST", "/app/sign-out", Action::OpenDashboard),
    ("GET", "/app/assets/{file}", Action::OpenDashboard),
    ("GET", "/app", Action::ListGroups),
    // Positions only, no data: every role that reads anything may follow them.
    ("GET", "/app/events", Action::ReadReport),
    ("GET", "/app/practice", Action::ReadReport),
    ("GET", "/app/audit", Action::ReadAuditTrail),
    ("GET", "/app/audit/history", Action::ReadHistory),
    ("GET", "/app/clients/{client_id}", Action::ReadClient),
    ("GET", "/app/groups/{group_id}", Action::ReadGroup),
    (
        "POST",
        "/app/groups/{group_id}/sessions",
        Action::WriteGroup,
    ),
    (
        "POST",
        "/app/groups/{group_id}/sessions/{session_id}/cancellation",
        Action::WriteGroup,
    ),
    (
        "GET",
        "/app/groups/{group_id}/sessions/{session_id}/attendance",
        Action::WriteGroup,
    ),
    (
        "POST",
        "/app/groups/{group_id}/sessions/{session_id}/attendance",
        Action::WriteGroup,
    ),
    (
        "GET",
        "/app/groups/{group_id}/sessions/{session_id}/feedback",
        Action::WriteGroup,
    ),
    (
        "POST",
        "/app/groups/{group_id}/sessions/{session_id}/feedback",
        Action::WriteGroup,
    ),
    ("POST", "/app/groups/{group_id}/members", Action::JoinGroup),
    (
        "POST",
        "/app/groups/{group_id}/departures",
        Action::WriteGroup,
    ),
    (
        "POST",
        "/app/groups/{group_id}/members/{client_id}/risk-review",
        Action::WriteGroup,
    ),
];

/// What the route table says about a request: its action, or that the path is
/// known but not with this method (405), or that the path has no entry at all.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    Action(Action),
    OtherMethod,
    Missing,
}

pub fn entry(method: &str, template: &str) -> Entry {
    let mut path_known = false;
    for (m, path, action) in ROUTES {
        if *path == template {
            if m.eq_ignore_ascii_case(method) {
                return Entry::Action(*action);
            }
            path_known = true;
        }
    }
    if path_known {
        Entry::OtherMethod
    } else {
        Entry::Missing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(role: Role, clinician: Option<&str>) -> Principal {
        Principal {
            role,
            clinician_id: clinician.map(String::from),
            actor_id: clinician.unwrap_or("x").to_string(),
            token_id: "tok_test".to_string(),
        }
    }

    #[test]
    fn auditors_read_everything_without_personal_data_and_write_nothing() {
        let auditor = principal(Role::Auditor, None);
        let client = Resource::Client { in_care: false };
        assert_eq!(
            check(&auditor, Action::ReadClient, client),
            Ok(View::Withheld)
        );
        assert!(check(&auditor, Action::WriteClient, client).is_err());
        assert!(check(&auditor, Action::ReadAccessLog, Resource::Practice).is_ok());
    }

    #[test]
    fn reporters_get_aggregate_reports_and_nothing_else() {
        let reporter = principal(Role::Reporter, None);
        let group = Resource::Group { facilitated: false };
        assert_eq!(
            check(&reporter, Action::ReadReport, group),
            Ok(View::Aggregate)
        );
        for action in [Action::ReadAlerts, Action::ReadGroup, Action::ListGroups] {
            assert!(check(&reporter, action, group).is_err(), "{action:?}");
        }
        assert!(role_may(Role::Reporter, Action::JoinGroup).is_err());
    }

    #[test]
    fn a_clinician_brings_in_only_clients_in_their_care() {
        let dr = principal(Role::Clinician, Some("dr-a"));
        let join = |group_facilitated, client_known| {
            check(
                &dr,
                Action::JoinGroup,
                Resource::Membership {
                    group_facilitated,
                    client_known,
                },
            )
        };
        assert_eq!(join(true, true), Ok(View::Full));
        assert_eq!(join(true, false).unwrap_err().field, Some("client_id"));
        assert!(join(false, true).is_err());
        let admin = principal(Role::Admin, None);
        let referral = Resource::Membership {
            group_facilitated: false,
            client_known: false,
        };
        assert!(check(&admin, Action::JoinGroup, referral).is_ok());
    }

    #[test]
    fn history_is_read_by_the_record_s_clinicians_admins_and_auditors_never_reporters() {
        let dr = principal(Role::Clinician, Some("dr-a"));
        let mine = Resource::Group { facilitated: true };
        let others = Resource::Group { facilitated: false };
        assert_eq!(check(&dr, Action::ReadHistory, mine), Ok(View::Full));
        assert!(check(&dr, Action::ReadHistory, others).is_err());
        let in_care = Resource::Client { in_care: true };
        assert_eq!(check(&dr, Action::ReadHistory, in_care), Ok(View::Full));
        let elsewhere = Resource::Client { in_care: false };
        assert!(check(&dr, Action::ReadHistory, elsewhere).is_err());
        let auditor = principal(Role::Auditor, None);
        assert_eq!(
            check(&auditor, Action::ReadHistory, others),
            Ok(View::Withheld)
        );
        assert!(role_may(Role::Reporter, Action::ReadHistory).is_err());
        assert!(role_may(Role::Clinician, Action::ReadHistory).is_ok());
    }

    #[test]
    fn clinicians_see_wider_reports_only_in_the_aggregate_form() {
        let dr = principal(Role::Clinician, Some("dr-a"));
        assert_eq!(
            check(&dr, Action::ReadReport, Resource::Practice),
            Ok(View::Aggregate)
        );
        assert!(check(&dr, Action::ReadAlerts, Resource::Practice).is_err());
        let others = Resource::Group { facilitated: false };
        assert!(check(&dr, Action::ReadReport, others).is_err());
    }

    #[test]
    fn every_route_template_is_listed_once_per_method() {
        let mut seen = std::collections::BTreeSet::new();
        for (method, path, _) in ROUTES {
            assert!(seen.insert((method, path)), "{method} {path} twice");
        }
        assert_eq!(
            entry("GET", "/api/v1/clients/{client_id}"),
            Entry::Action(Action::ReadClient)
        );
        assert_eq!(
            entry("DELETE", "/api/v1/clients/{client_id}"),
            Entry::OtherMethod
        );
        assert_eq!(entry("GET", "/api/v1/unlisted"), Entry::Missing);
    }
}
