//! Opaque identifiers: 1–64 characters from `[A-Za-z0-9_-]`, safe in URLs, NATS
//! subjects and metric-free logs. They never carry personal data.
//!
//! [`GroupId`], [`ClientId`], [`SessionId`] and [`ClinicianId`] are checked when they
//! are made (parsed from a path, a body, or a generated string), so whoever holds one
//! holds a valid id; the OpenAPI description gives each the same pattern.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

pub const MAX_ID_LEN: usize = 64;
/// The rule of [`is_valid_id`] as a regular expression, for the API description.
pub const ID_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";
/// Why an id is refused; the message follows the field's name.
pub const INVALID_ID: &str = "must be 1 to 64 characters from A-Z, a-z, 0-9, _ and -";

pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// An id that was not valid; its message is [`INVALID_ID`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{INVALID_ID}")]
pub struct InvalidId;

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(id: String) -> Result<Self, InvalidId> {
                if is_valid_id(&id) {
                    Ok($name(id))
                } else {
                    Err(InvalidId)
                }
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let id = String::deserialize(deserializer)?;
                $name::try_from(id).map_err(serde::de::Error::custom)
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                id_schema()
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}
    };
}

typed_id!(
    /// A therapy group.
    GroupId
);
typed_id!(
    /// A client: pseudonymous, never a name.
    ClientId
);
typed_id!(
    /// A session of a group.
    SessionId
);
typed_id!(
    /// A clinician, as facilitator of groups.
    ClinicianId
);
typed_id!(
    /// A member's goal, unique across the practice.
    GoalId
);
typed_id!(
    /// An API token's record (`tok_…`): names a token, is not its secret.
    TokenId
);

#[cfg(feature = "openapi")]
fn id_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(ID_PATTERN))
        .min_length(Some(1))
        .max_length(Some(MAX_ID_LEN))
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_short_and_subject_safe() {
        assert!(is_valid_id("grp_anxiety-01"));
        assert!(is_valid_id(&"a".repeat(64)));
        assert!(!is_valid_id(&"a".repeat(65)));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a.b"));
        assert!(!is_valid_id("a b"));
        assert!(!is_valid_id("a*"));
        assert!(!is_valid_id("é"));
    }

    #[test]
    fn a_typed_id_is_parsed_once_and_refused_with_the_rule() {
        let id: GroupId = serde_json::from_str(r#""grp_1""#).unwrap();
        assert_eq!(id.as_str(), "grp_1");
        assert_eq!(serde_json::to_string(&id).unwrap(), r#""grp_1""#);
        let refused = serde_json::from_str::<ClientId>(r#""a b""#).unwrap_err();
        assert!(refused.to_string().starts_with(INVALID_ID), "{refused}");
        assert_eq!(SessionId::try_from(String::new()), Err(InvalidId));
    }
}
