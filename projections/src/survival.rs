//! Kaplan–Meier retention with Greenwood standard errors.
//!
//! Time is days in the group. A dropout is an event; every other exit, and a member
//! still active at the report date, is censored at that time. Ties follow the usual
//! convention (and DOMAIN.md): a member censored at `t` is still at risk at `t`.

use serde::Serialize;

/// One member's time in the group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Observation {
    pub days: u32,
    /// True for a dropout; false when censored.
    pub event: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KmStep {
    pub t_days: u32,
    pub at_risk: u32,
    pub events: u32,
    pub survival: f64,
    /// Greenwood; `None` once survival reaches zero (the variance is undefined).
    pub std_err: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KaplanMeier {
    pub steps: Vec<KmStep>,
}

impl KaplanMeier {
    pub fn estimate(observations: &[Observation]) -> KaplanMeier {
        let mut sorted = observations.to_vec();
        sorted.sort_by_key(|o| o.days);
        let mut at_risk = sorted.len() as u32;
        let mut survival = 1.0_f64;
        let mut greenwood_sum = 0.0_f64;
        let mut steps = Vec::new();
        let mut i = 0;
        while i < sorted.len() {
            let t = sorted[i].days;
            let same_time = sorted[i..].iter().take_while(|o| o.days == t);
            let (events, censored) =
                same_time.fold(
                    (0u32, 0u32),
                    |(e, c), o| {
                        if o.event {
                            (e + 1, c)
                        } else {
                            (e, c + 1)
                        }
                    },
                );
            if events > 0 {
                let n = at_risk as f64;
                let d = events as f64;
                survival *= 1.0 - d / n;
                let std_err = if at_risk > events {
                    greenwood_sum += d / (n * (n - d));
                    Some(survival * greenwood_sum.sqrt())
                } else {
                    None
                };
                steps.push(KmStep {
                    t_days: t,
                    at_risk,
                    events,
                    survival,
                    std_err,
                });
            }
            at_risk -= events + censored;
            i += (events + censored) as usize;
        }
        KaplanMeier { steps }
    }

    /// S(t): the estimate just after time `t` (1 before the first event).
    pub fn survival_at(&self, days: u32) -> f64 {
        self.steps
            .iter()
            .take_while(|s| s.t_days <= days)
            .last()
            .map_or(1.0, |s| s.survival)
    }

    /// The first time at which S(t) ≤ 0.5, if the curve gets there.
    pub fn median(&self) -> Option<u32> {
        self.steps
            .iter()
            .find(|s| s.survival <= 0.5)
            .map(|s| s.t_days)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Deserialize)]
    struct Vector {
        observations: Vec<VectorObservation>,
        expected: Vec<Expected>,
        median: u32,
    }

    #[derive(Deserialize)]
    struct VectorObservation {
        t: u32,
        event: bool,
    }

    #[derive(Deserialize)]
    struct Expected {
        t: u32,
        at_risk: u32,
        events: u32,
        survival: f64,
        std_err: f64,
    }

    fn six_mp() -> Vector {
        serde_json::from_str(include_str!("../../testdata/km_6mp.json")).expect("vector parses")
    }

    #[test]
    fn the_6mp_vector_gives_the_published_table_in_weeks_and_in_days() {
        let vector = six_mp();
        for scale in [1, 7] {
            let observations: Vec<Observation> = vector
                .observations
                .iter()
                .map(|o| Observation {
                    days: o.t * scale,
                    event: o.event,
                })
                .collect();
            let km = KaplanMeier::estimate(&observations);
            assert_eq!(km.steps.len(), vector.expected.len());
            for (step, expected) in km.steps.iter().zip(&vector.expected) {
                assert_eq!(step.t_days, expected.t * scale);
                assert_eq!(step.at_risk, expected.at_risk);
                assert_eq!(step.events, expected.events);
                assert!((step.survival - expected.survival).abs() < 5e-7, "{step:?}");
                let se = step.std_err.unwrap();
                assert!((se - expected.std_err).abs() < 5e-5, "{step:?}");
            }
            assert_eq!(km.median(), Some(vector.median * scale));
        }
    }

    #[test]
    fn survival_between_event_times_is_the_last_step() {
        let km = KaplanMeier::estimate(&[
            Observation {
                days: 10,
                event: true,
            },
            Observation {
                days: 20,
                event: false,
            },
            Observation {
                days: 30,
                event: true,
            },
            Observation {
                days: 40,
                event: false,
            },
        ]);
        assert_eq!(km.survival_at(9), 1.0);
        assert_eq!(km.survival_at(10), 0.75);
        assert_eq!(km.survival_at(29), 0.75);
        assert_eq!(km.survival_at(30), 0.375);
        assert_eq!(km.median(), Some(30));
    }

    #[test]
    fn a_curve_that_reaches_zero_has_no_standard_error_there() {
        let km = KaplanMeier::estimate(&[
            Observation {
                days: 5,
                event: true,
            },
            Observation {
                days: 5,
                event: true,
            },
        ]);
        assert_eq!(km.steps[0].survival, 0.0);
        assert_eq!(km.steps[0].std_err, None);
        assert!(KaplanMeier::estimate(&[]).steps.is_empty());
        assert_eq!(KaplanMeier::estimate(&[]).median(), None);
    }

    #[test]
    fn a_member_censored_at_an_event_time_is_still_at_risk_then() {
        let km = KaplanMeier::estimate(&[
            Observation {
                days: 7,
                event: true,
            },
            Observation {
                days: 7,
                event: false,
            },
            Observation {
                days: 9,
                event: true,
            },
        ]);
        assert_eq!(km.steps[0].at_risk, 3);
        assert_eq!(km.steps[1].at_risk, 1);
    }
}
