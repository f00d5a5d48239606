//! Circle's reports as pure arithmetic over events: no I/O, no clock. The services
//! crate feeds decoded events in log order into a [`practice::Practice`] and asks
//! [`reports`] for a report as of a time.
//!
//! - [`caseload`]: who needs a clinician now: members ordered by the rule that fired.
//! - [`care_teams`]: which clinicians may see which clients, and where goals live.
//! - [`consent`]: reporting consent (opt-out) and the 42 CFR Part 2 label.
//! - [`exports`]: the reports' rows as CSV and NDJSON for reporting teams.
//! - [`fhir`]: a group's history as FHIR R4 resources (Bulk Data export).
//! - [`goals`]: Goal Attainment Scaling, check-in rates, stalled goals.
//! - [`practice`]: the fold, and the alerts raised on the event that carries them.
//! - [`reports`]: attendance, retention, outcomes, alerts; the reporter form.
//! - [`survival`]: Kaplan–Meier retention with Greenwood standard errors.
//! - [`outcomes`]: reliable and clinically significant change, effect sizes.

pub mod care_teams;
pub mod caseload;
pub mod consent;
pub mod exports;
pub mod fhir;
pub mod goals;
pub mod outcomes;
pub mod practice;
pub mod reports;
pub mod survival;
#[cfg(test)]
mod tests;
