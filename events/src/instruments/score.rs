//! Exact item scores and totals, kept as integer tenths.
//!
//! Visual-analogue scales (ORS, SRS, GSRS) have one decimal; storing them as floats
//! would turn 19.6 + 7.5 into 27.099999. Tenths as integers keep every sum exact. On
//! the wire a score is a plain JSON number (`3`, `7.5`).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Score(i64);

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScoreError {
    #[error("must be a number")]
    NotANumber,
    #[error("must have at most one decimal")]
    TooManyDecimals,
    #[error("is out of range")]
    OutOfRange,
}

impl Score {
    pub const fn from_tenths(tenths: i64) -> Score {
        Score(tenths)
    }

    pub const fn whole(points: i64) -> Score {
        Score(points * 10)
    }

    pub const fn tenths(self) -> i64 {
        self.0
    }

    /// The value as a float, for statistics only (means, effect sizes); never stored.
    pub fn as_f64(self) -> f64 {
        self.0 as f64 / 10.0
    }

    pub fn abs(self) -> Score {
        Score(self.0.abs())
    }

    /// Reads a JSON number exactly. A double is the nearest binary value to the decimal
    /// the client wrote, so ten times it lies within rounding noise of an integer exactly
    /// when the client wrote at most one decimal.
    pub fn from_json(value: &serde_json::Value) -> Result<Score, ScoreError> {
        let number = value.as_number().ok_or(ScoreError::NotANumber)?;
        if let Some(i) = number.as_i64() {
            return i.checked_mul(10).map(Score).ok_or(ScoreError::OutOfRange);
        }
        let f = number.as_f64().ok_or(ScoreError::NotANumber)?;
        Score::from_f64(f)
    }

    fn from_f64(f: f64) -> Result<Score, ScoreError> {
        if !f.is_finite() || f.abs() > 1e12 {
            return Err(ScoreError::OutOfRange);
        }
        let scaled = f * 10.0;
        let rounded = scaled.round();
        if (scaled - rounded).abs() > 1e-6 {
            return Err(ScoreError::TooManyDecimals);
        }
        Ok(Score(rounded as i64))
    }
}

impl fmt::Display for Score {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        if abs.is_multiple_of(10) {
            write!(f, "{sign}{}", abs / 10)
        } else {
            write!(f, "{sign}{}.{}", abs / 10, abs % 10)
        }
    }
}

impl Serialize for Score {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0 % 10 == 0 {
            serializer.serialize_i64(self.0 / 10)
        } else {
            // The shortest round-trip form of n/10 is the decimal itself ("19.6").
            serializer.serialize_f64(self.0 as f64 / 10.0)
        }
    }
}

impl<'de> Deserialize<'de> for Score {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Score, D::Error> {
        let value = serde_json::Value::deserialize(deserializer)?;
        Score::from_json(&value).map_err(serde::de::Error::custom)
    }
}
