//! How errors are logged: once, where handled, with their whole cause chain.

use std::fmt;

/// Displays an error followed by each of its sources: `a: b: c`. Log it as
/// `error = %ErrorChain(&e)` so the database error behind a 503 reaches the log.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'a));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
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
}
