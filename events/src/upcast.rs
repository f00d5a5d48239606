//! Reading events written by older versions of Circle.
//!
//! Stored events are never rewritten. Each row keeps the `event_version` it was
//! written with; on load, [`decode`] lifts the payload step by step to the current
//! version before deserializing. A new event version means: bump
//! [`current_version`], add one step to [`upcast_once`], add a test with a stored
//! payload of the old shape.

use cqrs_es::DomainEvent;
use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{event_type} v{version} cannot be upcast: {reason}")]
    Upcast {
        event_type: String,
        version: u32,
        reason: String,
    },
    #[error("{event_type} v{version} is newer than this build understands")]
    FromTheFuture { event_type: String, version: u32 },
    #[error("{event_type} payload does not match the event: {source}")]
    Shape {
        event_type: String,
        source: serde_json::Error,
    },
}

/// The version new events of this type are written with.
pub fn current_version(event_type: &str) -> u32 {
    match event_type {
        // v1 recorded `joined_at` as a timestamp; membership is a matter of dates.
        "MemberJoined" => 2,
        _ => 1,
    }
}

/// Splits an event into the stored triple `(event_type, event_version, payload)`.
pub fn encode<E: DomainEvent>(event: &E) -> (String, u32, Value) {
    let event_type = event.event_type();
    let version = current_version(&event_type);
    // Events are externally tagged enums: `{"MemberJoined": {...}}`.
    let payload = match serde_json::to_value(event) {
        Ok(Value::Object(mut tagged)) => tagged.remove(&event_type).unwrap_or(Value::Null),
        _ => Value::Null,
    };
    (event_type, version, payload)
}

/// Rebuilds an event from its stored triple, upcasting older versions.
pub fn decode<E: DomainEvent>(
    event_type: &str,
    version: u32,
    payload: Value,
) -> Result<E, DecodeError> {
    let current = current_version(event_type);
    if version > current {
        return Err(DecodeError::FromTheFuture {
            event_type: event_type.into(),
            version,
        });
    }
    let mut payload = payload;
    for from in version..current {
        payload = upcast_once(event_type, from, payload)?;
    }
    let mut tagged = Map::new();
    tagged.insert(event_type.to_string(), payload);
    serde_json::from_value(Value::Object(tagged)).map_err(|source| DecodeError::Shape {
        event_type: event_type.into(),
        source,
    })
}

/// Like [`decode`], from the stored payload text. The current version is read
/// straight from the text, without building an intermediate JSON tree: this is the
/// projections' hot path on a full rebuild.
pub fn decode_text<E: DomainEvent>(
    event_type: &str,
    version: u32,
    payload: &str,
) -> Result<E, DecodeError> {
    if version != current_version(event_type) {
        let value = serde_json::from_str(payload).map_err(|source| DecodeError::Shape {
            event_type: event_type.into(),
            source,
        })?;
        return decode(event_type, version, value);
    }
    let tag = serde_json::to_string(event_type).map_err(|source| DecodeError::Shape {
        event_type: event_type.into(),
        source,
    })?;
    let tagged = format!("{{{tag}:{payload}}}");
    serde_json::from_str(&tagged).map_err(|source| DecodeError::Shape {
        event_type: event_type.into(),
        source,
    })
}

fn upcast_once(event_type: &str, from: u32, mut payload: Value) -> Result<Value, DecodeError> {
    let fail = |reason: &str| DecodeError::Upcast {
        event_type: event_type.into(),
        version: from,
        reason: reason.into(),
    };
    match (event_type, from) {
        ("MemberJoined", 1) => {
            let object = payload
                .as_object_mut()
                .ok_or_else(|| fail("not an object"))?;
            let joined_at = object
                .remove("joined_at")
                .and_then(|v| v.as_str().map(String::from))
                .ok_or_else(|| fail("joined_at missing"))?;
            let joined_on = chrono::DateTime::parse_from_rfc3339(&joined_at)
                .map_err(|_| fail("joined_at is not RFC 3339"))?
                .date_naive();
            object.insert("joined_on".into(), Value::String(joined_on.to_string()));
            Ok(payload)
        }
        _ => Err(fail("no upcaster for this version")),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::group::GroupEvent;

    #[test]
    fn a_member_joined_v1_with_a_timestamp_loads_as_v2_with_a_date() {
        let stored = json!({"client_id": "c1", "joined_at": "2024-03-05T18:30:00+01:00"});
        let event: GroupEvent = decode("MemberJoined", 1, stored).unwrap();
        assert_eq!(
            event,
            GroupEvent::MemberJoined {
                client_id: "c1".into(),
                joined_on: "2024-03-05".parse().unwrap(),
            }
        );
    }

    #[test]
    fn current_events_round_trip_through_their_stored_form() {
        let event = GroupEvent::MemberJoined {
            client_id: "c1".into(),
            joined_on: "2024-03-05".parse().unwrap(),
        };
        let (event_type, version, payload) = encode(&event);
        assert_eq!((event_type.as_str(), version), ("MemberJoined", 2));
        assert_eq!(
            payload,
            json!({"client_id": "c1", "joined_on": "2024-03-05"})
        );
        assert_eq!(
            decode::<GroupEvent>(&event_type, version, payload).unwrap(),
            event
        );
    }

    #[test]
    fn decoding_from_text_agrees_with_decoding_from_json() {
        let v1 = r#"{"client_id": "c1", "joined_at": "2024-03-05T18:30:00+01:00"}"#;
        let from_text: GroupEvent = decode_text("MemberJoined", 1, v1).unwrap();
        let from_json: GroupEvent =
            decode("MemberJoined", 1, serde_json::from_str(v1).unwrap()).unwrap();
        assert_eq!(from_text, from_json);
        let v2 = r#"{"client_id": "c1", "joined_on": "2024-03-05"}"#;
        assert_eq!(
            decode_text::<GroupEvent>("MemberJoined", 2, v2).unwrap(),
            from_json
        );
        assert!(decode_text::<GroupEvent>("MemberJoined", 2, "{").is_err());
    }

    #[test]
    fn an_event_from_a_newer_build_is_refused_rather_than_misread() {
        let result = decode::<GroupEvent>("GroupClosed", 7, json!({}));
        assert!(matches!(result, Err(DecodeError::FromTheFuture { .. })));
    }
}
