//! Circle's reports as pure arithmetic over events: no I/O, no clock. The services
//! crate feeds events in log order and asks for reports as of a date.
//!
//! - [`survival`]: Kaplan–Meier retention with Greenwood standard errors.
//! - [`outcomes`]: reliable and clinically significant change, effect sizes.

pub mod outcomes;
pub mod survival;
