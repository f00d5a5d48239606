//! A synthetic practice in the import layout, for the import benchmark and tests:
//! `groups` weekly groups of `members` each over `weeks` weeks, every member marked at
//! every session, a PHQ-9 every fourth week, every fifth member dropping out halfway.
//! Deterministic: the same shape writes the same bytes.

use std::io::Write;
use std::path::Path;

use chrono::{Duration, NaiveDate};

use super::layout::Kind;

#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub groups: usize,
    pub members: usize,
    pub weeks: usize,
}

impl Shape {
    /// Rows the practice has in all files.
    pub fn rows(self) -> u64 {
        let (g, m, w) = (self.groups as u64, self.members as u64, self.weeks as u64);
        let mut rows = g * (1 + 3 * m + w);
        for week in 0..self.weeks {
            for member in 0..self.members {
                if present(self, member, week) {
                    rows += g * (1 + u64::from(week % 4 == 0));
                }
            }
        }
        rows
    }
}

fn leaves_after(shape: Shape, member: usize) -> Option<usize> {
    (member % 5 == 4).then_some(shape.weeks / 2)
}

/// Whether the member is still in the group at that week.
fn present(shape: Shape, member: usize, week: usize) -> bool {
    leaves_after(shape, member).is_none_or(|last| week <= last)
}

fn file(dir: &Path, kind: Kind) -> std::io::Result<std::io::BufWriter<std::fs::File>> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(dir.join(kind.file_name()))?);
    writeln!(file, "{}", kind.column_names().join(","))?;
    Ok(file)
}

/// Writes the practice into `dir` (which must exist).
pub fn write_practice(dir: &Path, shape: Shape) -> std::io::Result<()> {
    let start = NaiveDate::from_ymd_opt(2024, 1, 1).unwrap_or_default();
    let mut groups = file(dir, Kind::Groups)?;
    let mut clients = file(dir, Kind::Clients)?;
    let mut consents = file(dir, Kind::Consents)?;
    let mut memberships = file(dir, Kind::Memberships)?;
    let mut sessions = file(dir, Kind::Sessions)?;
    let mut attendance = file(dir, Kind::Attendance)?;
    let mut questionnaires = file(dir, Kind::Questionnaires)?;
    let statuses = [
        "present", "present", "late", "present", "no_show", "excused", "present",
    ];
    for g in 0..shape.groups {
        let group = format!("grp-{g:05}");
        let first = start + Duration::days((g % 7) as i64);
        writeln!(
            groups,
            "{group},Group {g},depression,closed,50,dr-{},{first},{}T09:00:00Z",
            g % 17,
            start - Duration::days(14)
        )?;
        for m in 0..shape.members {
            let client = format!("cli-{g:05}-{m:02}");
            writeln!(
                clients,
                "{client},Member {m} of {g},,{},{}T09:00:00Z",
                1950 + (g + m) % 50,
                start - Duration::days(7)
            )?;
            writeln!(
                consents,
                "{client},treatment,granted,{}T09:00:00Z",
                start - Duration::days(7)
            )?;
            match leaves_after(shape, m) {
                Some(last) => {
                    let left = first + Duration::weeks(last as i64) + Duration::days(1);
                    writeln!(memberships, "{group},{client},{first},,{left},dropped_out,")?
                }
                None => writeln!(memberships, "{group},{client},{first},,,,")?,
            }
        }
        for w in 0..shape.weeks {
            let date = first + Duration::weeks(w as i64);
            let session = format!("{group}-w{w:03}");
            writeln!(sessions, "{group},{session},{date}T18:00:00+00:00,90,,,")?;
            for m in 0..shape.members {
                if !present(shape, m, w) {
                    continue;
                }
                let client = format!("cli-{g:05}-{m:02}");
                let status = statuses[(g * 7 + m * 3 + w) % statuses.len()];
                writeln!(
                    attendance,
                    "{group},{session},{client},{status},{date}T20:00:00Z"
                )?;
                if w % 4 == 0 {
                    let level = (3 - (w / 4).min(3)) as u32;
                    let items: Vec<String> = (0..9)
                        .map(|i| {
                            if i == 8 {
                                0
                            } else {
                                (level + (m + i) as u32 % 2).min(3)
                            }
                            .to_string()
                        })
                        .collect();
                    writeln!(
                        questionnaires,
                        "{client},PHQ-9,{},{date}T18:00:00+00:00,{group},{session},{date}T20:00:00Z",
                        items.join(";")
                    )?;
                }
            }
        }
    }
    let erasures = file(dir, Kind::Erasures)?;
    for mut file in [
        erasures,
        groups,
        clients,
        consents,
        memberships,
        sessions,
        attendance,
        questionnaires,
    ] {
        file.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_row_count_matches_the_files() {
        let dir = std::env::temp_dir().join(format!("synthetic-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let shape = Shape {
            groups: 3,
            members: 6,
            weeks: 9,
        };
        write_practice(&dir, shape).unwrap();
        let lines: u64 = Kind::ORDER
            .iter()
            .map(|k| {
                std::fs::read_to_string(dir.join(k.file_name()))
                    .unwrap()
                    .lines()
                    .count() as u64
                    - 1
            })
            .sum();
        assert_eq!(lines, shape.rows());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
