use chrono::DateTime;
use cqrs_es::test::TestFramework;

use super::*;
use crate::instruments::Score;

type ClientTest = TestFramework<Client>;

fn registered() -> ClientEvent {
    ClientEvent::ClientRegistered {
        client_id: "c1".into(),
        personal: Some(SealedPersonalData {
            sealed: "bm9uY2UrY2lwaGVydGV4dA".into(),
        }),
    }
}

#[test]
fn a_client_is_registered_with_sealed_personal_data_only() {
    ClientTest::with(())
        .given_no_previous_events()
        .when(ClientCommand::RegisterClient {
            client_id: "c1".into(),
            personal: Some(SealedPersonalData {
                sealed: "bm9uY2UrY2lwaGVydGV4dA".into(),
            }),
        })
        .then_expect_events(vec![registered()]);
}

#[test]
fn a_client_id_is_registered_once() {
    ClientTest::with(())
        .given(vec![registered()])
        .when(ClientCommand::RegisterClient {
            client_id: "c1".into(),
            personal: None,
        })
        .then_expect_error(ClientError::AlreadyExists);
}

#[test]
fn consent_is_granted_and_withdrawn_per_scope() {
    ClientTest::with(())
        .given(vec![registered()])
        .when(ClientCommand::GrantConsent {
            scope: ConsentScope::Research,
        })
        .then_expect_events(vec![ClientEvent::ConsentGranted {
            scope: ConsentScope::Research,
        }]);
    ClientTest::with(())
        .given(vec![registered()])
        .when(ClientCommand::WithdrawConsent {
            scope: ConsentScope::Research,
        })
        .then_expect_error(ClientError::ConsentNotGranted(ConsentScope::Research));
}

#[test]
fn after_erasure_nothing_more_is_recorded() {
    let erased = vec![
        registered(),
        ClientEvent::ClientErased {
            reason: ErasureReason::ClientRequest,
        },
    ];
    ClientTest::with(())
        .given(erased.clone())
        .when(ClientCommand::GrantConsent {
            scope: ConsentScope::Treatment,
        })
        .then_expect_error(ClientError::Erased);
    ClientTest::with(())
        .given(erased)
        .when(ClientCommand::EraseClient {
            reason: ErasureReason::Other,
        })
        .then_expect_error(ClientError::Erased);
}

#[test]
fn a_measure_outside_a_group_is_checked_against_the_catalogue() {
    let administered_at = DateTime::parse_from_rfc3339("2026-02-01T10:00:00+00:00").unwrap();
    ClientTest::with(())
        .given(vec![registered()])
        .when(ClientCommand::RecordMeasure {
            instrument: "GAD-7".into(),
            items: vec![Score::whole(3); 7],
            administered_at,
        })
        .then_expect_events(vec![ClientEvent::MeasureRecorded {
            measure: Measure {
                instrument: "GAD-7".into(),
                reference_version: "2024.1".into(),
                items: vec![Score::whole(3); 7],
                total: Score::whole(21),
                administered_at,
            },
        }]);
    ClientTest::with(())
        .given(vec![registered()])
        .when(ClientCommand::RecordMeasure {
            instrument: "GAD-7".into(),
            items: vec![Score::whole(4); 7],
            administered_at,
        })
        .then_expect_error(ClientError::InvalidItems(crate::instruments::ItemError {
            field: "items[0]".into(),
            message: "GAD-7 item 1 must be a whole number from 0 to 3, got 4".into(),
        }));
}

#[test]
fn commands_for_an_unknown_client_are_not_found() {
    ClientTest::with(())
        .given_no_previous_events()
        .when(ClientCommand::EraseClient {
            reason: ErasureReason::ClientRequest,
        })
        .then_expect_error(ClientError::NotFound);
}

#[test]
fn a_measure_outside_a_group_is_taken_within_the_calendar() {
    let mut client = Client::default();
    client.apply(registered());
    for bad in [
        "2026-06-30T23:59:60+00:00",
        "0000-01-01T00:00:00+00:00",
        "2200-01-01T00:00:00+00:00",
    ] {
        let refusal = client
            .decide(ClientCommand::RecordMeasure {
                instrument: "GAD-7".into(),
                items: vec![Score::whole(1); 7],
                administered_at: DateTime::parse_from_rfc3339(bad).unwrap(),
            })
            .expect_err(bad);
        assert_eq!(
            crate::Rejection::kind(&refusal),
            crate::RejectionKind::Invalid {
                field: "administered_at".into()
            },
            "{bad}"
        );
    }
}

#[test]
fn reporting_is_given_from_registration_until_withdrawn() {
    let withdrawn = ClientEvent::ConsentWithdrawn {
        scope: ConsentScope::Reporting,
    };
    ClientTest::with(())
        .given(vec![registered()])
        .when(ClientCommand::WithdrawConsent {
            scope: ConsentScope::Reporting,
        })
        .then_expect_events(vec![withdrawn.clone()]);
    ClientTest::with(())
        .given(vec![registered()])
        .when(ClientCommand::GrantConsent {
            scope: ConsentScope::Reporting,
        })
        .then_expect_error(ClientError::ConsentAlreadyGranted(ConsentScope::Reporting));
    ClientTest::with(())
        .given(vec![registered(), withdrawn])
        .when(ClientCommand::GrantConsent {
            scope: ConsentScope::Reporting,
        })
        .then_expect_events(vec![ClientEvent::ConsentGranted {
            scope: ConsentScope::Reporting,
        }]);
}
