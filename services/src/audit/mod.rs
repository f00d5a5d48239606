//! Audit: history an auditor can check without trusting the server.
//!
//! - [`chain`]: every event's `hash` chains it to the one before, written in the
//!   transaction that assigns its position (format in ARCHITECTURE.md).
//! - [`merkle`]: the RFC 6962 tree over the chain hashes, its proofs and their checks.
//! - [`verify`]: a log checked from its events alone, position by position.

pub mod chain;
pub mod merkle;
pub mod verify;
