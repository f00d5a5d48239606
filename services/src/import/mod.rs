//! `circle import` and `circle export csv`: a practice's history in a documented CSV
//! layout (`docs/import.md`), one file per kind of record.
//!
//! - `layout.rs` — the files, their columns, the header check (a pinned contract).
//! - `rows.rs` — a row read into the command(s) it stands for; only the form of values.
//! - `run.rs` — the import: streamed files, rows through the command path with
//!   idempotency keys from their content and line, refusals with file, line, column.
//! - `export.rs` — the inverse: the practice written in the layout, for a round trip.
//! - `synthetic.rs` — a generated practice in the layout (benchmark, tests).

pub mod export;
pub mod layout;
pub mod rows;
pub mod run;
pub mod synthetic;

pub use layout::{Kind, LAYOUT_VERSION};
pub use run::{import, Options, Refusal, Summary};
