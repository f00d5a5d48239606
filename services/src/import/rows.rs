//! A row of the layout, read into the command (or commands) it stands for. Only the
//! form of each value is checked here (a date is a date, a number a number); every
//! rule about what the values mean is the aggregate's, in the command path.

use chrono::{DateTime, FixedOffset, NaiveDate, Utc};
use circle_events::client::{ClientCommand, ConsentScope, ErasureReason};
use circle_events::group::{
    AttendanceMark, AttendanceStatus, DepartureReason, Focus, Format, GroupCommand,
};
use circle_events::instruments::Score;
use serde::de::DeserializeOwned;

use super::layout::{Header, Kind};
use crate::commands::Step;
use crate::crypto::PersonalData;

/// A value the row cannot be read with: its column and why.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldError {
    pub column: String,
    pub reason: String,
}

fn refuse(column: &str, reason: impl Into<String>) -> FieldError {
    FieldError {
        column: column.to_string(),
        reason: reason.into(),
    }
}

/// What a row asks for, before any state is consulted.
#[derive(Clone, Debug)]
pub enum Planned {
    Group {
        group_id: String,
        steps: Vec<Step<GroupCommand>>,
        /// A client the row brings in, who must be registered and not erased (a
        /// membership, a measure outside a session), like the API's check.
        requires_client: Option<String>,
    },
    /// A registration: personal data is sealed with a new key by the runner.
    Register {
        client_id: String,
        personal: PersonalData,
        at: Option<DateTime<Utc>>,
    },
    Client {
        client_id: String,
        steps: Vec<Step<ClientCommand>>,
    },
}

impl Planned {
    /// The aggregate the row writes to: rows for one aggregate run in file order.
    pub fn aggregate(&self) -> (&'static str, &str) {
        match self {
            Planned::Group { group_id, .. } => ("group", group_id),
            Planned::Register { client_id, .. } | Planned::Client { client_id, .. } => {
                ("client", client_id)
            }
        }
    }
}

/// One row's values by column name.
pub struct Row<'r> {
    pub kind: Kind,
    pub header: &'r Header,
    pub fields: &'r [&'r str],
}

impl<'r> Row<'r> {
    fn get(&self, column: &str) -> Option<&'r str> {
        self.header.get(self.kind, self.fields, column)
    }

    fn text(&self, column: &str) -> Result<String, FieldError> {
        self.get(column)
            .map(str::to_string)
            .ok_or_else(|| refuse(column, "is empty; this column is required"))
    }

    fn date(&self, column: &str) -> Result<Option<NaiveDate>, FieldError> {
        self.get(column)
            .map(|v| {
                NaiveDate::parse_from_str(v, "%Y-%m-%d")
                    .map_err(|_| refuse(column, format!("bad date {v:?}: expected YYYY-MM-DD")))
            })
            .transpose()
    }

    fn required_date(&self, column: &str) -> Result<NaiveDate, FieldError> {
        self.date(column)?
            .ok_or_else(|| refuse(column, "is empty; this column is required"))
    }

    fn time(&self, column: &str) -> Result<Option<DateTime<FixedOffset>>, FieldError> {
        self.get(column)
            .map(|v| {
                DateTime::parse_from_rfc3339(v).map_err(|_| {
                    refuse(
                        column,
                        format!(
                            "bad time {v:?}: expected RFC 3339, e.g. 2024-03-05T18:00:00+01:00"
                        ),
                    )
                })
            })
            .transpose()
    }

    /// A domain time: the column's, else midnight UTC of `date` (when the row has one).
    fn occurred(
        &self,
        column: &str,
        date: Option<NaiveDate>,
    ) -> Result<Option<DateTime<Utc>>, FieldError> {
        Ok(self
            .time(column)?
            .map(|t| t.with_timezone(&Utc))
            .or_else(|| {
                date.and_then(|d| d.and_hms_opt(0, 0, 0))
                    .map(|t| t.and_utc())
            }))
    }

    fn number<T: std::str::FromStr>(&self, column: &str) -> Result<Option<T>, FieldError> {
        self.get(column)
            .map(|v| {
                v.parse::<T>()
                    .map_err(|_| refuse(column, format!("{v:?} is not a whole number in range")))
            })
            .transpose()
    }

    /// One of a fixed set, spelled as the API spells it (`no_show`, `dropped_out`).
    fn choice<T: DeserializeOwned>(&self, column: &str) -> Result<Option<T>, FieldError> {
        self.get(column)
            .map(|v| {
                serde_json::from_value(serde_json::Value::String(v.to_string()))
                    .map_err(|_| refuse(column, format!("{v:?} is not one of the allowed values")))
            })
            .transpose()
    }

    fn required_choice<T: DeserializeOwned>(&self, column: &str) -> Result<T, FieldError> {
        self.choice(column)?
            .ok_or_else(|| refuse(column, "is empty; this column is required"))
    }
}

/// Item scores separated by `;` (`2;1;0;3`, `7.5;8;6.2;9`).
fn items(text: &str) -> Result<Vec<Score>, FieldError> {
    text.split(';')
        .enumerate()
        .map(|(i, raw)| {
            let raw = raw.trim();
            let number: serde_json::Number = raw
                .parse()
                .map_err(|_| refuse(&format!("items[{i}]"), format!("{raw:?} is not a number")))?;
            Score::from_json(&serde_json::Value::Number(number))
                .map_err(|e| refuse(&format!("items[{i}]"), e.to_string()))
        })
        .collect()
}

/// Reads a row into what it asks for.
pub fn plan(row: &Row<'_>) -> Result<Planned, FieldError> {
    match row.kind {
        Kind::Groups => {
            let starts_on = row.date("starts_on")?;
            let facilitators = row
                .get("facilitators")
                .map(|v| {
                    v.split(';')
                        .map(|f| f.trim().to_string())
                        .filter(|f| !f.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            let capacity = row
                .number("capacity")?
                .ok_or_else(|| refuse("capacity", "is empty; this column is required"))?;
            let group_id = row.text("group_id")?;
            Ok(Planned::Group {
                steps: vec![Step {
                    command: GroupCommand::CreateGroup {
                        group_id: group_id.clone(),
                        name: row.text("name")?,
                        focus: row.required_choice::<Focus>("focus")?,
                        format: row.required_choice::<Format>("format")?,
                        capacity,
                        facilitators,
                        starts_on,
                    },
                    occurred_at: row.occurred("created_at", None)?,
                }],
                group_id,
                requires_client: None,
            })
        }
        Kind::Clients => {
            let personal = PersonalData {
                display_name: row.get("display_name").map(str::to_string),
                contact: row.get("contact").map(str::to_string),
                birth_year: row.number("birth_year")?,
            };
            personal
                .check()
                .map_err(|(column, reason)| refuse(column, reason))?;
            Ok(Planned::Register {
                client_id: row.text("client_id")?,
                personal,
                at: row.occurred("registered_at", None)?,
            })
        }
        Kind::Consents => {
            let scope = row.required_choice::<ConsentScope>("scope")?;
            let command = match row.text("decision")?.as_str() {
                "granted" => ClientCommand::GrantConsent { scope },
                "withdrawn" => ClientCommand::WithdrawConsent { scope },
                other => {
                    return Err(refuse(
                        "decision",
                        format!("{other:?} is neither \"granted\" nor \"withdrawn\""),
                    ))
                }
            };
            Ok(Planned::Client {
                client_id: row.text("client_id")?,
                steps: vec![Step {
                    command,
                    occurred_at: row.occurred("decided_at", None)?,
                }],
            })
        }
        Kind::Memberships => {
            let client_id = row.text("client_id")?;
            let joined_on = row.required_date("joined_on")?;
            let mut steps = vec![Step {
                command: GroupCommand::JoinGroup {
                    client_id: client_id.clone(),
                    joined_on,
                },
                occurred_at: row.occurred("joined_at", Some(joined_on))?,
            }];
            let left_on = row.date("left_on")?;
            let reason = row.choice::<DepartureReason>("reason")?;
            match (left_on, reason) {
                (Some(left_on), Some(reason)) => steps.push(Step {
                    command: GroupCommand::LeaveGroup {
                        client_id: client_id.clone(),
                        left_on,
                        reason,
                    },
                    occurred_at: row.occurred("left_at", Some(left_on))?,
                }),
                (None, None) => {}
                (Some(_), None) => return Err(refuse("reason", "a departure needs its reason")),
                (None, Some(_)) => return Err(refuse("left_on", "a reason needs its left_on")),
            }
            Ok(Planned::Group {
                group_id: row.text("group_id")?,
                steps,
                requires_client: Some(client_id),
            })
        }
        Kind::Sessions => {
            let session_id = row.text("session_id")?;
            let starts_at = row
                .time("starts_at")?
                .ok_or_else(|| refuse("starts_at", "is empty; this column is required"))?;
            let duration_minutes = row
                .number("duration_minutes")?
                .ok_or_else(|| refuse("duration_minutes", "is empty; this column is required"))?;
            let mut steps = vec![Step {
                command: GroupCommand::ScheduleSession {
                    session_id: session_id.clone(),
                    starts_at,
                    duration_minutes,
                },
                occurred_at: row.occurred("scheduled_at", None)?,
            }];
            let cancelled_at = row.occurred("cancelled_at", None)?;
            if cancelled_at.is_some() || row.get("cancel_reason").is_some() {
                steps.push(Step {
                    command: GroupCommand::CancelSession {
                        session_id,
                        reason: row.text("cancel_reason")?,
                    },
                    occurred_at: cancelled_at,
                });
            }
            Ok(Planned::Group {
                group_id: row.text("group_id")?,
                steps,
                requires_client: None,
            })
        }
        Kind::Attendance => Ok(Planned::Group {
            group_id: row.text("group_id")?,
            steps: vec![Step {
                command: GroupCommand::RecordAttendance {
                    session_id: row.text("session_id")?,
                    records: vec![AttendanceMark {
                        client_id: row.text("client_id")?,
                        status: row.required_choice::<AttendanceStatus>("status")?,
                    }],
                },
                occurred_at: row.occurred("marked_at", None)?,
            }],
            requires_client: None,
        }),
        Kind::Erasures => Ok(Planned::Client {
            client_id: row.text("client_id")?,
            steps: vec![Step {
                command: ClientCommand::EraseClient {
                    reason: row.required_choice::<ErasureReason>("reason")?,
                },
                occurred_at: row.occurred("erased_at", None)?,
            }],
        }),
        Kind::Questionnaires => {
            let client_id = row.text("client_id")?;
            let instrument = row.text("instrument")?;
            let items = items(&row.text("items")?)?;
            let administered_at = row.time("administered_at")?;
            let entered_at = row.occurred("entered_at", None)?;
            let entered_at = entered_at.or(administered_at.map(|t| t.with_timezone(&Utc)));
            match (row.get("group_id"), row.get("session_id")) {
                (None, Some(_)) => Err(refuse("group_id", "a session needs its group_id")),
                (None, None) => Ok(Planned::Client {
                    steps: vec![Step {
                        command: ClientCommand::RecordMeasure {
                            instrument,
                            items,
                            administered_at: administered_at.ok_or_else(|| {
                                refuse(
                                    "administered_at",
                                    "a measure outside a group needs its time",
                                )
                            })?,
                        },
                        occurred_at: entered_at,
                    }],
                    client_id,
                }),
                (Some(group_id), session_id) => Ok(Planned::Group {
                    group_id: group_id.to_string(),
                    requires_client: session_id.is_none().then(|| client_id.clone()),
                    steps: vec![Step {
                        command: GroupCommand::RecordFeedback {
                            client_id,
                            session_id: session_id.map(str::to_string),
                            instrument,
                            items,
                            administered_at,
                        },
                        occurred_at: entered_at,
                    }],
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(kind: Kind, header: &[&str], row: &[&str]) -> Result<Planned, FieldError> {
        let header = Header::check(kind, header).unwrap();
        plan(&Row {
            kind,
            header: &header,
            fields: row,
        })
    }

    #[test]
    fn a_membership_with_a_departure_is_a_join_and_a_leave() {
        let header = ["group_id", "client_id", "joined_on", "left_on", "reason"];
        let Planned::Group { steps, .. } = planned(
            Kind::Memberships,
            &header,
            &["grp-1", "cli-1", "2024-01-02", "2024-03-01", "dropped_out"],
        )
        .unwrap() else {
            panic!("a membership is the group's")
        };
        assert_eq!(steps.len(), 2);
        assert_eq!(
            steps[1].occurred_at.unwrap().to_rfc3339(),
            "2024-03-01T00:00:00+00:00"
        );
    }

    #[test]
    fn bad_values_name_their_column() {
        let header = ["group_id", "client_id", "joined_on"];
        let error = planned(
            Kind::Memberships,
            &header,
            &["grp-1", "cli-1", "2024-02-30"],
        )
        .unwrap_err();
        assert_eq!(error.column, "joined_on");
        assert!(error.reason.contains("bad date"), "{error:?}");
        let header = ["client_id", "instrument", "items", "group_id", "session_id"];
        let error = planned(
            Kind::Questionnaires,
            &header,
            &["c", "PHQ-9", "1;x", "g", "s"],
        )
        .unwrap_err();
        assert_eq!(error.column, "items[1]");
        let header = ["group_id", "session_id", "client_id", "status"];
        let error = planned(Kind::Attendance, &header, &["g", "s", "c", "here"]).unwrap_err();
        assert_eq!(error.column, "status");
    }
}
