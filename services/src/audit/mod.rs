//! Audit: history an auditor can check without trusting the server.
//!
//! - [`chain`]: every event's `hash` chains it to the one before, written in the
//!   transaction that assigns its position (format in ARCHITECTURE.md).
//! - [`merkle`]: the RFC 6962 tree over the chain hashes, its proofs and their checks.
//! - [`note`]: signed checkpoints (C2SP checkpoint in a signed note, Ed25519).
//! - [`tree`]: the tree kept in the store, the leader's checkpoints, proofs from it.
//! - [`verify`]: a log checked from its events alone, position by position.

pub mod chain;
pub mod merkle;
pub mod note;
pub mod tree;
pub mod verify;
