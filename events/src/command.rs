//! What every command says about itself, so that no transport (HTTP handler,
//! dashboard form, seeder) has to repeat it.

/// A command's name and the record it answers with.
pub trait Command {
    /// A stable snake_case name: the `command` metric label and log field.
    fn name(&self) -> &'static str;
    /// The record inside the aggregate a write answers with, when it is not the
    /// aggregate itself: the session a session command writes to, the client a
    /// measure is about.
    fn record_id(&self) -> Option<&str> {
        None
    }
    /// Whether the command creates the record it answers with (HTTP 201).
    fn creates(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use chrono::NaiveDate;

    use super::Command;
    use crate::client::{ClientCommand, ConsentScope};
    use crate::group::GroupCommand;

    fn feedback(session_id: Option<&str>) -> GroupCommand {
        GroupCommand::RecordFeedback {
            client_id: "c1".into(),
            session_id: session_id.map(Into::into),
            instrument: "ORS".into(),
            items: Vec::new(),
            administered_at: None,
        }
    }

    /// Names are metric labels and log fields that dashboards and alerts select on.
    #[test]
    fn commands_name_themselves_and_the_record_they_answer_with() {
        let closed_on = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        let scope = ConsentScope::Research;
        let cases: [(&dyn Command, &str, Option<&str>, bool); 6] = [
            (
                &GroupCommand::CloseGroup { closed_on },
                "close_group",
                None,
                false,
            ),
            (
                &GroupCommand::CancelSession {
                    session_id: "s1".into(),
                    reason: "x".into(),
                },
                "cancel_session",
                Some("s1"),
                false,
            ),
            (&feedback(Some("s1")), "record_feedback", Some("s1"), false),
            (&feedback(None), "record_measure", Some("c1"), false),
            (
                &ClientCommand::RegisterClient {
                    client_id: "c1".into(),
                    personal: None,
                },
                "register_client",
                None,
                true,
            ),
            (
                &ClientCommand::WithdrawConsent { scope },
                "withdraw_consent",
                None,
                false,
            ),
        ];
        for (command, name, record_id, creates) in cases {
            assert_eq!(command.name(), name);
            assert_eq!(command.record_id(), record_id, "{name}");
            assert_eq!(command.creates(), creates, "{name}");
        }
    }
}
