//! The import layout: one CSV file per kind of record, its columns, and the order the
//! files are taken in. `docs/import.md` documents the same table; `circle export csv`
//! writes it. A versioned contract: a renamed column breaks every saved export.

/// The layout's version, written by `circle export csv` into `layout.txt`.
pub const LAYOUT_VERSION: u32 = 1;

/// One kind of record, one file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Groups,
    Clients,
    Consents,
    Memberships,
    Sessions,
    Attendance,
    Questionnaires,
    /// Last: an erasure refuses every later write about the client.
    Erasures,
}

/// A column: its name and whether every row must fill it.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    pub name: &'static str,
    pub required: bool,
}

const fn req(name: &'static str) -> Column {
    Column {
        name,
        required: true,
    }
}

const fn opt(name: &'static str) -> Column {
    Column {
        name,
        required: false,
    }
}

impl Kind {
    /// The order a directory is imported in: what a row refers to comes first.
    pub const ORDER: [Kind; 8] = [
        Kind::Groups,
        Kind::Clients,
        Kind::Consents,
        Kind::Memberships,
        Kind::Sessions,
        Kind::Attendance,
        Kind::Questionnaires,
        Kind::Erasures,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Groups => "groups",
            Kind::Clients => "clients",
            Kind::Consents => "consents",
            Kind::Memberships => "memberships",
            Kind::Sessions => "sessions",
            Kind::Attendance => "attendance",
            Kind::Questionnaires => "questionnaires",
            Kind::Erasures => "erasures",
        }
    }

    pub fn file_name(self) -> String {
        format!("{}.csv", self.name())
    }

    /// The kind a file holds, from its name (`groups.csv`, `2019-groups.csv`).
    pub fn of_file(path: &std::path::Path) -> Option<Kind> {
        let stem = path.file_stem()?.to_str()?.to_ascii_lowercase();
        Kind::ORDER
            .into_iter()
            .find(|kind| stem == kind.name() || stem.ends_with(&format!("-{}", kind.name())))
    }

    /// The columns, in the order `circle export csv` writes them. Any order is read.
    pub fn columns(self) -> &'static [Column] {
        match self {
            Kind::Groups => {
                const COLUMNS: &[Column] = &[
                    req("group_id"),
                    req("name"),
                    req("focus"),
                    req("format"),
                    req("capacity"),
                    opt("facilitators"),
                    opt("starts_on"),
                    opt("created_at"),
                ];
                COLUMNS
            }
            Kind::Clients => {
                const COLUMNS: &[Column] = &[
                    req("client_id"),
                    opt("display_name"),
                    opt("contact"),
                    opt("birth_year"),
                    opt("registered_at"),
                ];
                COLUMNS
            }
            Kind::Consents => {
                const COLUMNS: &[Column] = &[
                    req("client_id"),
                    req("scope"),
                    req("decision"),
                    opt("decided_at"),
                ];
                COLUMNS
            }
            Kind::Memberships => {
                const COLUMNS: &[Column] = &[
                    req("group_id"),
                    req("client_id"),
                    req("joined_on"),
                    opt("joined_at"),
                    opt("left_on"),
                    opt("reason"),
                    opt("left_at"),
                ];
                COLUMNS
            }
            Kind::Sessions => {
                const COLUMNS: &[Column] = &[
                    req("group_id"),
                    req("session_id"),
                    req("starts_at"),
                    req("duration_minutes"),
                    opt("scheduled_at"),
                    opt("cancelled_at"),
                    opt("cancel_reason"),
                ];
                COLUMNS
            }
            Kind::Attendance => {
                const COLUMNS: &[Column] = &[
                    req("group_id"),
                    req("session_id"),
                    req("client_id"),
                    req("status"),
                    opt("marked_at"),
                ];
                COLUMNS
            }
            Kind::Questionnaires => {
                const COLUMNS: &[Column] = &[
                    req("client_id"),
                    req("instrument"),
                    req("items"),
                    opt("administered_at"),
                    opt("group_id"),
                    opt("session_id"),
                    opt("entered_at"),
                ];
                COLUMNS
            }
            Kind::Erasures => {
                const COLUMNS: &[Column] = &[req("client_id"), req("reason"), opt("erased_at")];
                COLUMNS
            }
        }
    }

    pub fn column_names(self) -> Vec<&'static str> {
        self.columns().iter().map(|c| c.name).collect()
    }
}

/// Where each layout column sits in a file's header, checked once per file.
#[derive(Clone, Debug)]
pub struct Header {
    /// For each layout column, its index in the file's rows (if present).
    positions: Vec<Option<usize>>,
    pub fields: usize,
}

/// Why a header row is refused, with the column it is about.
#[derive(Clone, Debug, PartialEq)]
pub struct HeaderError {
    pub column: Option<String>,
    pub reason: String,
}

impl Header {
    pub fn check(kind: Kind, header: &[&str]) -> Result<Header, HeaderError> {
        let columns = kind.columns();
        let expected = kind.column_names().join(",");
        if header.len() == 1 {
            if let Some(sep) = [';', '\t', '|']
                .into_iter()
                .find(|sep| header[0].contains(*sep))
            {
                let shown = if sep == '\t' {
                    "tab".to_string()
                } else {
                    format!("'{sep}'")
                };
                return Err(HeaderError {
                    column: None,
                    reason: format!(
                        "wrong delimiter: fields are separated by ',' but this file uses {shown}"
                    ),
                });
            }
        }
        let known = |name: &str| columns.iter().any(|c| c.name == name);
        if !header.iter().any(|name| known(name.trim())) {
            return Err(HeaderError {
                column: None,
                reason: format!(
                    "missing header: the first line must name the columns ({expected}), found {:?}",
                    header.join(",")
                ),
            });
        }
        let mut positions = vec![None; columns.len()];
        for (index, raw) in header.iter().enumerate() {
            let name = raw.trim();
            let Some(slot) = columns.iter().position(|c| c.name == name) else {
                return Err(HeaderError {
                    column: Some(name.to_string()),
                    reason: format!(
                        "unknown column {name:?}; {} has {expected}",
                        kind.file_name()
                    ),
                });
            };
            if positions[slot].is_some() {
                return Err(HeaderError {
                    column: Some(name.to_string()),
                    reason: format!("column {name:?} appears twice"),
                });
            }
            positions[slot] = Some(index);
        }
        if let Some(missing) = columns
            .iter()
            .zip(&positions)
            .find(|(c, p)| c.required && p.is_none())
        {
            return Err(HeaderError {
                column: Some(missing.0.name.to_string()),
                reason: format!("missing column {:?}", missing.0.name),
            });
        }
        Ok(Header {
            positions,
            fields: header.len(),
        })
    }

    /// The row's value of a layout column, trimmed; `None` when absent or empty.
    pub fn get<'r>(&self, kind: Kind, row: &'r [&'r str], name: &str) -> Option<&'r str> {
        let slot = kind.columns().iter().position(|c| c.name == name)?;
        let index = self.positions[slot]?;
        row.get(index).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    /// The (column, value) pairs in layout order: what a row's idempotency key is made
    /// of, so reordering a file's columns does not make its rows new.
    pub fn canonical<'r>(
        &self,
        kind: Kind,
        row: &'r [&'r str],
    ) -> impl Iterator<Item = (&'static str, &'r str)> + 'r {
        let positions = self.positions.clone();
        kind.columns()
            .iter()
            .zip(positions)
            .map(move |(c, p)| (c.name, p.and_then(|i| row.get(i)).map_or("", |v| v.trim())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_file_name_it_is_found_by() {
        for kind in Kind::ORDER {
            let path = std::path::PathBuf::from(kind.file_name());
            assert_eq!(Kind::of_file(&path), Some(kind));
        }
        assert_eq!(
            Kind::of_file(std::path::Path::new("dir/2019-attendance.csv")),
            Some(Kind::Attendance)
        );
        assert_eq!(Kind::of_file(std::path::Path::new("notes.csv")), None);
    }

    #[test]
    fn the_layout_is_pinned() {
        // The columns are a contract with every saved export: change them only with
        // a new LAYOUT_VERSION and docs/import.md.
        let all: Vec<String> = Kind::ORDER
            .iter()
            .map(|k| format!("{}: {}", k.name(), k.column_names().join(",")))
            .collect();
        assert_eq!(
            all,
            [
                "groups: group_id,name,focus,format,capacity,facilitators,starts_on,created_at",
                "clients: client_id,display_name,contact,birth_year,registered_at",
                "consents: client_id,scope,decision,decided_at",
                "memberships: group_id,client_id,joined_on,joined_at,left_on,reason,left_at",
                "sessions: group_id,session_id,starts_at,duration_minutes,scheduled_at,cancelled_at,cancel_reason",
                "attendance: group_id,session_id,client_id,status,marked_at",
                "questionnaires: client_id,instrument,items,administered_at,group_id,session_id,entered_at",
                "erasures: client_id,reason,erased_at",
            ]
        );
        assert_eq!(LAYOUT_VERSION, 1);
    }

    #[test]
    fn headers_are_checked_by_name() {
        let ok = Header::check(
            Kind::Attendance,
            &["status", "client_id", "group_id", "session_id"],
        );
        let header = ok.unwrap();
        let row = ["present", "cli-1", "grp-1", "s-1"];
        assert_eq!(
            header.get(Kind::Attendance, &row, "client_id"),
            Some("cli-1")
        );
        assert_eq!(header.get(Kind::Attendance, &row, "marked_at"), None);

        let semicolons = Header::check(Kind::Groups, &["group_id;name;focus"]).unwrap_err();
        assert!(
            semicolons.reason.contains("wrong delimiter"),
            "{semicolons:?}"
        );
        let data = Header::check(Kind::Groups, &["grp-1", "Tuesday", "anxiety"]).unwrap_err();
        assert!(data.reason.starts_with("missing header"), "{data:?}");
        let unknown = Header::check(Kind::Groups, &["group_id", "name", "colour"]).unwrap_err();
        assert_eq!(unknown.column.as_deref(), Some("colour"));
        let missing =
            Header::check(Kind::Groups, &["group_id", "name", "focus", "format"]).unwrap_err();
        assert_eq!(missing.column.as_deref(), Some("capacity"));
    }
}
