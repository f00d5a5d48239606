//! Reliable and clinically significant change (Jacobson & Truax 1991, as used by NHS
//! Talking Therapies), with the instrument's direction, cutoff and reliable-change
//! value taken from the catalogue version the measure was scored with.

use circle_events::instruments::{InstrumentDefinition, Score};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Classification {
    Recovered,
    Improved,
    Unchanged,
    Deteriorated,
    InsufficientData,
}

/// Classifies baseline → latest. Change is counted in the better direction; an
/// instrument without a reliable-change value never shows reliable change.
pub fn classify(
    definition: &InstrumentDefinition,
    baseline: Score,
    latest: Score,
) -> Classification {
    let Some(threshold) = definition.reliable_change else {
        return Classification::Unchanged;
    };
    let change = definition.improvement(baseline, latest);
    if change >= threshold {
        let recovered = definition.is_clinical(baseline) == Some(true)
            && definition.is_clinical(latest) == Some(false);
        if recovered {
            Classification::Recovered
        } else {
            Classification::Improved
        }
    } else if -change.tenths() >= threshold.tenths() {
        Classification::Deteriorated
    } else {
        Classification::Unchanged
    }
}

/// The general formulas, for instruments where norms rather than fixed thresholds
/// are published.
pub mod jacobson_truax {
    /// Standard error of the difference between two scores.
    pub fn s_diff(standard_error: f64) -> f64 {
        (2.0 * standard_error * standard_error).sqrt()
    }

    /// The reliable change index; reliable when its magnitude exceeds 1.96.
    pub fn reliable_change_index(pre: f64, post: f64, standard_error: f64) -> f64 {
        (post - pre) / s_diff(standard_error)
    }

    /// Cutoffs a, b and c between the dysfunctional (mean m1, sd s1) and functional
    /// (m0, s0) populations, written for higher-is-better; flip signs otherwise.
    pub fn cutoffs(m1: f64, s1: f64, m0: f64, s0: f64) -> (f64, f64, f64) {
        let a = m1 + 2.0 * s1;
        let b = m0 - 2.0 * s0;
        let c = (s0 * m1 + s1 * m0) / (s0 + s1);
        (a, b, c)
    }
}

/// Group-level effect: mean change and `d = mean(change) / sd(baseline)`.
pub fn effect_size(baselines: &[f64], changes: &[f64]) -> Option<f64> {
    if baselines.len() < 2 || changes.is_empty() {
        return None;
    }
    let mean_change = changes.iter().sum::<f64>() / changes.len() as f64;
    let mean_baseline = baselines.iter().sum::<f64>() / baselines.len() as f64;
    let variance = baselines
        .iter()
        .map(|b| (b - mean_baseline).powi(2))
        .sum::<f64>()
        / (baselines.len() - 1) as f64;
    let sd = variance.sqrt();
    (sd > 0.0).then(|| mean_change / sd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use circle_events::instruments::Catalogue;

    #[derive(Deserialize)]
    struct Vectors {
        formula_vectors: Vec<serde_json::Value>,
        classification_vectors: Vec<ClassificationVector>,
    }

    #[derive(Deserialize)]
    struct ClassificationVector {
        instrument: String,
        baseline: Score,
        latest: Score,
        expected: Classification,
    }

    fn vectors() -> Vectors {
        serde_json::from_str(include_str!("../../testdata/rci_vectors.json"))
            .expect("vector parses")
    }

    #[test]
    fn every_published_classification_vector_is_classified_as_expected() {
        let catalogue = Catalogue::builtin();
        let vectors = vectors();
        assert_eq!(vectors.classification_vectors.len(), 6);
        for v in vectors.classification_vectors {
            let definition = catalogue.current(&v.instrument).unwrap();
            let got = classify(definition, v.baseline, v.latest);
            assert_eq!(
                got, v.expected,
                "{} {} -> {}",
                v.instrument, v.baseline, v.latest
            );
        }
    }

    #[test]
    fn the_published_formula_vectors_hold() {
        let vectors = vectors();
        let sdiff = &vectors.formula_vectors[0];
        let se = sdiff["se"].as_f64().unwrap();
        let tolerance = sdiff["tolerance"].as_f64().unwrap();
        let s = jacobson_truax::s_diff(se);
        assert!((s - sdiff["expected_sdiff"].as_f64().unwrap()).abs() < tolerance);
        assert!((1.96 * s - sdiff["expected_threshold_1_96"].as_f64().unwrap()).abs() < tolerance);
        let rci = jacobson_truax::reliable_change_index(
            sdiff["pre"].as_f64().unwrap(),
            sdiff["post"].as_f64().unwrap(),
            se,
        );
        assert_eq!(
            rci.abs() > 1.96,
            sdiff["expected_reliable"].as_bool().unwrap()
        );

        let cut = &vectors.formula_vectors[1];
        let f = |k: &str| cut[k].as_f64().unwrap();
        let (a, b, c) = jacobson_truax::cutoffs(f("m1"), f("s1"), f("m0"), f("s0"));
        assert_eq!(
            (a, b, c),
            (
                cut["expected"]["a"].as_f64().unwrap(),
                cut["expected"]["b"].as_f64().unwrap(),
                cut["expected"]["c"].as_f64().unwrap()
            )
        );
    }

    #[test]
    fn change_of_exactly_the_reliable_value_is_reliable() {
        let phq9 = Catalogue::builtin().current("PHQ-9").unwrap();
        assert_eq!(
            classify(phq9, Score::whole(20), Score::whole(14)),
            Classification::Improved
        );
        assert_eq!(
            classify(phq9, Score::whole(20), Score::whole(15)),
            Classification::Unchanged
        );
        assert_eq!(
            classify(phq9, Score::whole(4), Score::whole(10)),
            Classification::Deteriorated
        );
        let srs = Catalogue::builtin().current("SRS").unwrap();
        assert_eq!(
            classify(srs, Score::whole(20), Score::whole(40)),
            Classification::Unchanged
        );
    }

    #[test]
    fn effect_size_is_mean_change_over_baseline_sd() {
        let d = effect_size(&[10.0, 14.0, 18.0], &[4.0, 6.0, 8.0]).unwrap();
        assert!((d - 1.5).abs() < 1e-12);
        assert_eq!(effect_size(&[10.0], &[4.0]), None);
        assert_eq!(effect_size(&[10.0, 10.0], &[4.0, 2.0]), None);
    }
}
