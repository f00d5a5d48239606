use serde_json::json;

use super::*;

fn scores(values: &[f64]) -> Vec<Score> {
    values
        .iter()
        .map(|v| Score::from_json(&json!(v)).unwrap())
        .collect()
}

#[test]
fn the_builtin_catalogue_has_every_instrument_in_the_domain_table() {
    let catalogue = Catalogue::builtin();
    for (name, items, max, decimals) in [
        ("PHQ-9", 9, 3, 0),
        ("GAD-7", 7, 3, 0),
        ("ORS", 4, 10, 1),
        ("SRS", 4, 10, 1),
        ("GSRS", 4, 10, 1),
    ] {
        let def = catalogue.current(name).expect(name);
        assert_eq!(def.items, items, "{name}");
        assert_eq!(def.item_max, Score::whole(max), "{name}");
        assert_eq!(def.decimals, decimals, "{name}");
        assert!(catalogue.version(name, &def.version).is_some());
    }
}

#[test]
fn scores_are_exact_tenths() {
    assert_eq!(Score::from_json(&json!(19.6)).unwrap().tenths(), 196);
    assert_eq!(Score::from_json(&json!(7)).unwrap().tenths(), 70);
    assert_eq!(Score::from_json(&json!(0.1)).unwrap().tenths(), 1);
    let sum = Score::from_tenths(196 + 75);
    assert_eq!(sum.to_string(), "27.1");
    assert_eq!(serde_json::to_string(&sum).unwrap(), "27.1");
    assert_eq!(serde_json::to_string(&Score::whole(3)).unwrap(), "3");
    let back: Score = serde_json::from_str("27.1").unwrap();
    assert_eq!(back, sum);
}

#[test]
fn a_score_with_two_decimals_or_no_number_is_refused() {
    assert_eq!(
        Score::from_json(&json!(7.25)),
        Err(ScoreError::TooManyDecimals)
    );
    assert_eq!(Score::from_json(&json!("3")), Err(ScoreError::NotANumber));
    assert_eq!(Score::from_json(&json!(null)), Err(ScoreError::NotANumber));
}

#[test]
fn phq9_items_outside_zero_to_three_are_named_by_index() {
    let phq9 = Catalogue::builtin().current("PHQ-9").unwrap();
    let err = phq9
        .check_items(&scores(&[1.0, 2.0, 0.0, 4.0, 1.0, 0.0, 0.0, 1.0, 0.0]))
        .unwrap_err();
    assert_eq!(err.field, "items[3]");
    let err = phq9
        .check_items(&scores(&[1.0, 2.5, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0]))
        .unwrap_err();
    assert_eq!(err.field, "items[1]");
    let err = phq9.check_items(&scores(&[1.0, 2.0])).unwrap_err();
    assert_eq!(err.field, "items");
    let negative = vec![Score::whole(-1); 9];
    assert_eq!(phq9.check_items(&negative).unwrap_err().field, "items[0]");
}

#[test]
fn ors_takes_tenths_from_zero_to_ten() {
    let ors = Catalogue::builtin().current("ORS").unwrap();
    assert!(ors.check_items(&scores(&[0.0, 10.0, 4.5, 9.9])).is_ok());
    assert_eq!(
        ors.check_items(&scores(&[0.0, 10.1, 4.5, 9.9]))
            .unwrap_err()
            .field,
        "items[1]"
    );
    assert_eq!(
        ors.total(&scores(&[4.9, 4.9, 4.9, 4.9])),
        Score::from_tenths(196)
    );
}

#[test]
fn clinical_range_follows_the_instrument_direction() {
    let catalogue = Catalogue::builtin();
    let phq9 = catalogue.current("PHQ-9").unwrap();
    assert_eq!(phq9.is_clinical(Score::whole(10)), Some(true));
    assert_eq!(phq9.is_clinical(Score::whole(9)), Some(false));
    let ors = catalogue.current("ORS").unwrap();
    assert_eq!(ors.is_clinical(Score::from_tenths(249)), Some(true));
    assert_eq!(ors.is_clinical(Score::whole(25)), Some(false));
    assert_eq!(
        phq9.improvement(Score::whole(15), Score::whole(8)),
        Score::whole(7)
    );
    assert_eq!(
        ors.improvement(Score::whole(18), Score::whole(22)),
        Score::whole(4)
    );
}

#[test]
fn phq9_item_nine_above_zero_is_a_risk_flag() {
    let phq9 = Catalogue::builtin().current("PHQ-9").unwrap();
    let mut items = vec![Score::whole(0); 9];
    assert!(phq9.risk_flags(&items).is_empty());
    items[8] = Score::whole(1);
    assert_eq!(phq9.risk_flags(&items), vec![9]);
}
