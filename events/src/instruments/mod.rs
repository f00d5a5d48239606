//! The instrument catalogue: versioned reference data for the questionnaires.
//!
//! The catalogue is data (`catalogue/instruments.json`, compiled in), so adding an
//! instrument or a new version of one is an edit to that file, not to code. Every
//! recorded measure names the catalogue version it was scored with, so a replay years
//! later classifies it the same way.

mod score;
#[cfg(test)]
mod tests;

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

pub use score::{Score, ScoreError};

/// Which way is better on an instrument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    HigherIsWorse,
    HigherIsBetter,
}

/// One version of one instrument.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstrumentDefinition {
    pub instrument: String,
    pub version: String,
    pub title: String,
    /// Number of items, in the instrument's item order.
    pub items: usize,
    pub item_min: Score,
    pub item_max: Score,
    /// Decimals allowed per item: 0 (integers) or 1 (tenths).
    pub decimals: u8,
    pub direction: Direction,
    /// Totals on the worse side of this value are in the clinical range: `>=` when
    /// higher is worse, `<` when higher is better.
    pub clinical_cutoff: Option<Score>,
    pub reliable_change: Option<Score>,
    /// 1-based item numbers whose score above zero is a risk flag (PHQ-9 item 9).
    #[serde(default)]
    pub risk_items: Vec<usize>,
    #[serde(default)]
    pub loinc_total: Option<String>,
    pub source: String,
}

/// Why a set of item scores does not fit an instrument. `field` names the offending
/// input, e.g. `items[3]`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ItemError {
    pub field: String,
    pub message: String,
}

impl InstrumentDefinition {
    /// Checks item count, each item's range and its number of decimals.
    pub fn check_items(&self, items: &[Score]) -> Result<(), ItemError> {
        if items.len() != self.items {
            return Err(ItemError {
                field: "items".into(),
                message: format!(
                    "{} takes exactly {} item scores, got {}",
                    self.instrument,
                    self.items,
                    items.len()
                ),
            });
        }
        for (index, item) in items.iter().enumerate() {
            let whole_only = self.decimals == 0 && item.tenths() % 10 != 0;
            if whole_only || *item < self.item_min || *item > self.item_max {
                let kind = if self.decimals == 0 {
                    "a whole number"
                } else {
                    "a number with at most one decimal"
                };
                return Err(ItemError {
                    field: format!("items[{index}]"),
                    message: format!(
                        "{} item {} must be {kind} from {} to {}, got {item}",
                        self.instrument,
                        index + 1,
                        self.item_min,
                        self.item_max
                    ),
                });
            }
        }
        Ok(())
    }

    pub fn total(&self, items: &[Score]) -> Score {
        Score::from_tenths(items.iter().map(|s| s.tenths()).sum())
    }

    /// Whether a total lies in the clinical range (or, for alliance scales, below the
    /// concern threshold).
    pub fn is_clinical(&self, total: Score) -> Option<bool> {
        let cutoff = self.clinical_cutoff?;
        Some(match self.direction {
            Direction::HigherIsWorse => total >= cutoff,
            Direction::HigherIsBetter => total < cutoff,
        })
    }

    /// Change from `baseline` to `latest` measured in the better direction: positive
    /// means better.
    pub fn improvement(&self, baseline: Score, latest: Score) -> Score {
        let raw = latest.tenths() - baseline.tenths();
        Score::from_tenths(match self.direction {
            Direction::HigherIsBetter => raw,
            Direction::HigherIsWorse => -raw,
        })
    }

    /// Items flagged as risk (1-based numbers) that scored above zero.
    pub fn risk_flags(&self, items: &[Score]) -> Vec<usize> {
        self.risk_items
            .iter()
            .copied()
            .filter(|n| items.get(n - 1).is_some_and(|s| s.tenths() > 0))
            .collect()
    }
}

/// All versions of all instruments.
#[derive(Clone, Debug, PartialEq)]
pub struct Catalogue {
    definitions: Vec<InstrumentDefinition>,
}

impl Catalogue {
    /// The catalogue compiled into this build.
    pub fn builtin() -> &'static Catalogue {
        static BUILTIN: OnceLock<Catalogue> = OnceLock::new();
        BUILTIN.get_or_init(|| {
            Catalogue::from_json(include_str!("../../catalogue/instruments.json"))
                .expect("the compiled-in instrument catalogue is valid (checked by tests)")
        })
    }

    pub fn from_json(json: &str) -> Result<Catalogue, serde_json::Error> {
        Ok(Catalogue {
            definitions: serde_json::from_str(json)?,
        })
    }

    /// The newest version of an instrument: the one new measures are scored with.
    pub fn current(&self, instrument: &str) -> Option<&InstrumentDefinition> {
        self.definitions
            .iter()
            .filter(|d| d.instrument == instrument)
            .max_by(|a, b| a.version.cmp(&b.version))
    }

    /// A specific version, for replaying a recorded measure.
    pub fn version(&self, instrument: &str, version: &str) -> Option<&InstrumentDefinition> {
        self.definitions
            .iter()
            .find(|d| d.instrument == instrument && d.version == version)
    }

    pub fn instruments(&self) -> impl Iterator<Item = &InstrumentDefinition> {
        self.definitions.iter()
    }
}
