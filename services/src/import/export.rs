//! `circle export csv`: the practice written in the import layout, so that importing
//! it into a fresh Circle gives the same reports. It writes what an admin may see:
//! personal data decrypted with each client's key; an erased client as registered
//! without personal data (their key is gone), and their erasure.
//!
//! Streams are read one aggregate at a time, so memory follows the largest group's
//! history, not the practice's.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use chrono::{DateTime, SecondsFormat, Utc};
use circle_events::client::ClientEvent;
use circle_events::group::GroupEvent;
use circle_events::upcast;
use serde::Serialize;

use super::layout::{Kind, LAYOUT_VERSION};
use crate::crypto::Vault;
use crate::store::{ClientKey, Store};

/// What was written, and what the layout has no place for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExportSummary {
    pub rows: BTreeMap<&'static str, u64>,
    /// Events of kinds the layout does not carry (goals, group closures), by type.
    pub not_in_layout: BTreeMap<String, u64>,
}

impl ExportSummary {
    pub fn lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .rows
            .iter()
            .map(|(kind, rows)| format!("{kind}.csv: {rows} rows"))
            .collect();
        for (event_type, count) in &self.not_in_layout {
            lines.push(format!(
                "not in the layout, left out: {count} {event_type} events"
            ));
        }
        lines
    }
}

fn time(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// An enum's name as the API and the layout spell it (`no_show`).
fn spelled<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

struct Writers {
    files: HashMap<&'static str, csv::Writer<std::io::BufWriter<std::fs::File>>>,
    summary: ExportSummary,
}

impl Writers {
    fn create(out: &Path) -> anyhow::Result<Writers> {
        std::fs::create_dir_all(out)?;
        let mut files = HashMap::new();
        for kind in Kind::ORDER {
            let file = std::fs::File::create(out.join(kind.file_name()))?;
            let mut writer = csv::Writer::from_writer(std::io::BufWriter::new(file));
            writer.write_record(kind.column_names())?;
            files.insert(kind.name(), writer);
        }
        std::fs::write(
            out.join("layout.txt"),
            format!("circle import layout {LAYOUT_VERSION}\n"),
        )?;
        Ok(Writers {
            files,
            summary: ExportSummary::default(),
        })
    }

    /// Writes one row; `values` in the layout's column order.
    fn row(&mut self, kind: Kind, values: &[String]) -> anyhow::Result<()> {
        debug_assert_eq!(values.len(), kind.columns().len());
        if let Some(writer) = self.files.get_mut(kind.name()) {
            writer.write_record(values)?;
            *self.summary.rows.entry(kind.name()).or_default() += 1;
        }
        Ok(())
    }

    fn skipped(&mut self, event_type: &str) {
        *self
            .summary
            .not_in_layout
            .entry(event_type.to_string())
            .or_default() += 1;
    }

    fn finish(mut self) -> anyhow::Result<ExportSummary> {
        for writer in self.files.values_mut() {
            writer.flush()?;
        }
        for kind in Kind::ORDER {
            self.summary.rows.entry(kind.name()).or_default();
        }
        Ok(self.summary)
    }
}

/// Writes the practice in `store` into `out` (created if needed), one file per kind.
pub async fn export_csv(store: &Store, vault: &Vault, out: &Path) -> anyhow::Result<ExportSummary> {
    let mut writers = Writers::create(out)?;
    let mut groups = store.aggregate_ids("group").await?;
    groups.sort();
    let mut clients = store.aggregate_ids("client").await?;
    clients.sort();
    for client_id in &clients {
        export_client(store, vault, client_id, &mut writers).await?;
    }
    for group_id in &groups {
        export_group(store, group_id, &mut writers).await?;
    }
    writers.finish()
}

async fn export_client(
    store: &Store,
    vault: &Vault,
    client_id: &str,
    writers: &mut Writers,
) -> anyhow::Result<()> {
    let key = store.client_key(client_id).await?;
    for recorded in store.load_stream("client", client_id, 0).await? {
        let at = time(&recorded.occurred_at);
        let event: ClientEvent = upcast::decode(
            &recorded.event_type,
            recorded.event_version,
            recorded.payload,
        )?;
        match event {
            ClientEvent::ClientRegistered { personal, .. } => {
                let personal = match (&key, personal) {
                    (ClientKey::Wrapped(wrapped), Some(sealed)) => vault
                        .open(wrapped, client_id, &sealed)
                        .map_err(|e| anyhow::anyhow!("opening {client_id}'s personal data: {e}"))?,
                    _ => Default::default(),
                };
                writers.row(
                    Kind::Clients,
                    &[
                        client_id.to_string(),
                        personal.display_name.unwrap_or_default(),
                        personal.contact.unwrap_or_default(),
                        personal
                            .birth_year
                            .map(|y| y.to_string())
                            .unwrap_or_default(),
                        at,
                    ],
                )?;
            }
            ClientEvent::ConsentGranted { scope } | ClientEvent::ConsentWithdrawn { scope } => {
                let decision = if recorded.event_type == "ConsentGranted" {
                    "granted"
                } else {
                    "withdrawn"
                };
                writers.row(
                    Kind::Consents,
                    &[client_id.to_string(), spelled(&scope), decision.into(), at],
                )?;
            }
            ClientEvent::MeasureRecorded { measure } => writers.row(
                Kind::Questionnaires,
                &[
                    client_id.to_string(),
                    measure.instrument,
                    items(&measure.items),
                    measure.administered_at.to_rfc3339(),
                    String::new(),
                    String::new(),
                    at,
                ],
            )?,
            ClientEvent::ClientErased { reason } => writers.row(
                Kind::Erasures,
                &[client_id.to_string(), spelled(&reason), at],
            )?,
        }
    }
    Ok(())
}

fn items(items: &[circle_events::instruments::Score]) -> String {
    items
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(";")
}

async fn export_group(store: &Store, group_id: &str, writers: &mut Writers) -> anyhow::Result<()> {
    let mut group_row: Option<[String; 8]> = None;
    let mut facilitators: Vec<String> = Vec::new();
    // A membership period is one row: the join and, once it ends, the departure.
    let mut periods: Vec<[String; 7]> = Vec::new();
    let mut open: HashMap<String, usize> = HashMap::new();
    let mut sessions: Vec<[String; 7]> = Vec::new();
    let mut session_index: HashMap<String, usize> = HashMap::new();
    let mut marks: Vec<[String; 5]> = Vec::new();
    let mut mark_index: HashMap<(String, String), usize> = HashMap::new();
    for recorded in store.load_stream("group", group_id, 0).await? {
        let at = time(&recorded.occurred_at);
        let event: GroupEvent = upcast::decode(
            &recorded.event_type,
            recorded.event_version,
            recorded.payload,
        )?;
        match event {
            GroupEvent::GroupCreated {
                name,
                focus,
                format,
                capacity,
                facilitators: first,
                starts_on,
                ..
            } => {
                facilitators = first;
                group_row = Some([
                    group_id.to_string(),
                    name,
                    spelled(&focus),
                    spelled(&format),
                    capacity.to_string(),
                    String::new(),
                    starts_on.map(|d| d.to_string()).unwrap_or_default(),
                    at,
                ]);
            }
            // The layout has a group's facilitators, not their history.
            GroupEvent::FacilitatorAssigned { clinician_id } => facilitators.push(clinician_id),
            GroupEvent::FacilitatorRemoved { clinician_id } => {
                facilitators.retain(|f| *f != clinician_id)
            }
            GroupEvent::MemberJoined {
                client_id,
                joined_on,
            } => {
                open.insert(client_id.clone(), periods.len());
                periods.push([
                    group_id.to_string(),
                    client_id,
                    joined_on.to_string(),
                    at,
                    String::new(),
                    String::new(),
                    String::new(),
                ]);
            }
            GroupEvent::MemberLeft {
                client_id,
                left_on,
                reason,
            } => {
                if let Some(index) = open.remove(&client_id) {
                    let period = &mut periods[index];
                    period[4] = left_on.to_string();
                    period[5] = spelled(&reason);
                    period[6] = at;
                }
            }
            GroupEvent::SessionScheduled {
                session_id,
                starts_at,
                duration_minutes,
            } => {
                session_index.insert(session_id.clone(), sessions.len());
                sessions.push([
                    group_id.to_string(),
                    session_id,
                    starts_at.to_rfc3339(),
                    duration_minutes.to_string(),
                    at,
                    String::new(),
                    String::new(),
                ]);
            }
            GroupEvent::SessionCancelled { session_id, reason } => {
                if let Some(index) = session_index.get(&session_id) {
                    sessions[*index][5] = at;
                    sessions[*index][6] = reason;
                }
            }
            // The layout keeps each member's last mark for a session: a correction
            // replaces the row it corrects.
            GroupEvent::AttendanceRecorded {
                session_id,
                client_id,
                status,
            }
            | GroupEvent::AttendanceCorrected {
                session_id,
                client_id,
                status,
                ..
            } => {
                let key = (session_id.clone(), client_id.clone());
                let row = [
                    group_id.to_string(),
                    session_id,
                    client_id,
                    spelled(&status),
                    at,
                ];
                match mark_index.get(&key) {
                    Some(index) => marks[*index] = row,
                    None => {
                        mark_index.insert(key, marks.len());
                        marks.push(row);
                    }
                }
            }
            GroupEvent::FeedbackRecorded {
                client_id,
                session_id,
                measure,
            } => writers.row(
                Kind::Questionnaires,
                &[
                    client_id,
                    measure.instrument,
                    items(&measure.items),
                    measure.administered_at.to_rfc3339(),
                    group_id.to_string(),
                    session_id.unwrap_or_default(),
                    at,
                ],
            )?,
            _ => writers.skipped(&recorded.event_type),
        }
    }
    if let Some(mut row) = group_row {
        row[5] = facilitators.join(";");
        writers.row(Kind::Groups, &row)?;
    }
    for period in periods {
        writers.row(Kind::Memberships, &period)?;
    }
    for session in sessions {
        writers.row(Kind::Sessions, &session)?;
    }
    for mark in marks {
        writers.row(Kind::Attendance, &mark)?;
    }
    Ok(())
}
