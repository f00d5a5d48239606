//! How errors are logged: once, where handled, with their whole cause chain.

use std::fmt;

/// Displays an error followed by each of its sources: `a: b: c` (a source that its
/// error's message already ends with is not repeated). Log it as
/// `error = %ErrorChain(&e)` so the database error behind a 503 reaches the log.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'a));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut said = self.0.to_string();
        f.write_str(&said)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            // Many errors (sqlx's among them) print their source in their own
            // message: once in the line is enough.
            if !said.ends_with(&text) {
                write!(f, ": {text}")?;
            }
            said = text;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("event store unavailable")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn the_chain_names_every_cause() {
        let error = Outer(std::io::Error::other("connection refused"));
        assert_eq!(
            ErrorChain(&error).to_string(),
            "event store unavailable: connection refused"
        );
    }

    #[derive(Debug, thiserror::Error)]
    #[error("invalid peer certificate: UnknownIssuer")]
    struct Certificate;

    /// Prints its source in its own message, as sqlx's I/O errors do.
    #[derive(Debug, thiserror::Error)]
    #[error("error communicating with database: {0}")]
    struct Communicating(#[source] Certificate);

    #[derive(Debug, thiserror::Error)]
    #[error("event store unavailable")]
    struct Unavailable(#[source] Communicating);

    #[test]
    fn a_cause_already_in_its_errors_message_is_said_once() {
        let error = Unavailable(Communicating(Certificate));
        assert_eq!(
            ErrorChain(&error).to_string(),
            "event store unavailable: error communicating with database: \
             invalid peer certificate: UnknownIssuer"
        );
    }
}
