//! Circle's domain: what can be commanded, what happened, and the rules between.
//!
//! Pure by design: no I/O, no clock, no randomness. Time and ids come in with the
//! command; encryption of personal data happens in `services` before a command gets
//! here, so the domain only ever sees sealed bytes.
//!
//! - [`group`]: a therapy group with its members, sessions, attendance and feedback.
//! - [`client`]: a client's registration, consents, erasure and stand-alone measures.
//! - [`calendar`]: the span of dates and times a command may carry.
//! - [`Command`]: a command's own name and the record it answers with.
//! - [`ids`]: typed ids, checked when made.
//! - [`instruments`]: the versioned questionnaire catalogue and exact scores.
//! - [`token`]: API tokens issued and revoked, as events for the audit feed.
//! - [`upcast`]: reading events stored by older versions of this code.

pub mod calendar;
pub mod client;
mod command;
pub mod group;
pub mod ids;
pub mod instruments;
mod rejection;
#[cfg(test)]
mod stored_forms;
pub mod token;
pub mod upcast;

pub use command::Command;
pub use rejection::{Rejection, RejectionKind};
