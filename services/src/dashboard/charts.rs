//! Charts as pure functions: report data in, an SVG string out, drawn on the data's
//! own scale. No clock, no I/O, no randomness: the same data always gives the same
//! bytes (`services/tests/snapshots/` pins them).
//!
//! Every coloured thing also carries its words: bands are labelled, markers carry
//! their value as text and a `<title>` naming the band.

use std::fmt::Write;

use chrono::NaiveDate;
use circle_events::instruments::{Direction, InstrumentDefinition};

const WIDTH: f64 = 560.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 44.0;
const RIGHT: f64 = 150.0;
const TOP: f64 = 22.0;
const BOTTOM: f64 = 40.0;

/// A severity band on an instrument's total: `[from, to)` (the last one closed).
#[derive(Clone, Debug, PartialEq)]
pub struct Band {
    pub from: f64,
    pub to: f64,
    pub label: &'static str,
    /// 0 (best) to 4 (worst): the colour, which the label repeats in words.
    pub severity: u8,
}

/// The bands the dashboard shades for an instrument: the published PHQ-9 and GAD-7
/// severity ranges (Kroenke 2001, Spitzer 2006); for ORS, SRS and GSRS the two sides
/// of the clinical cutoff.
pub fn bands(definition: &InstrumentDefinition) -> Vec<Band> {
    let band = |from, to, label, severity| Band {
        from,
        to,
        label,
        severity,
    };
    let (low, high) = range(definition);
    match definition.instrument.as_str() {
        "PHQ-9" => vec![
            band(0.0, 5.0, "minimal", 0),
            band(5.0, 10.0, "mild", 1),
            band(10.0, 15.0, "moderate", 2),
            band(15.0, 20.0, "moderately severe", 3),
            band(20.0, 27.0, "severe", 4),
        ],
        "GAD-7" => vec![
            band(0.0, 5.0, "minimal", 0),
            band(5.0, 10.0, "mild", 1),
            band(10.0, 15.0, "moderate", 2),
            band(15.0, 21.0, "severe", 4),
        ],
        _ => match (definition.clinical_cutoff, definition.direction) {
            (Some(cutoff), Direction::HigherIsBetter) => vec![
                band(low, cutoff.as_f64(), "below cutoff", 3),
                band(cutoff.as_f64(), high, "above cutoff", 0),
            ],
            (Some(cutoff), Direction::HigherIsWorse) => vec![
                band(low, cutoff.as_f64(), "below cutoff", 0),
                band(cutoff.as_f64(), high, "above cutoff", 3),
            ],
            (None, _) => Vec::new(),
        },
    }
}

/// The instrument's total range: items × item range.
pub fn range(definition: &InstrumentDefinition) -> (f64, f64) {
    let items = definition.items as f64;
    (
        items * definition.item_min.as_f64(),
        items * definition.item_max.as_f64(),
    )
}

/// The band a total falls in.
pub fn band_of(bands: &[Band], value: f64) -> Option<&Band> {
    bands
        .iter()
        .find(|b| value >= b.from && value < b.to)
        .or_else(|| bands.last().filter(|b| value == b.to))
}

/// One member's scores on one instrument, with what the chart marks around them.
#[derive(Clone, Debug)]
pub struct Trajectory<'a> {
    pub definition: &'a InstrumentDefinition,
    /// Date and total, in time order.
    pub scores: Vec<(NaiveDate, f64)>,
    /// Held sessions the member missed while a member.
    pub absences: Vec<NaiveDate>,
}

/// A member's chart: score by date on the instrument's range, severity bands, the
/// clinical cutoff, a reliable-change band around the baseline, markers with their
/// value, absences on the time axis.
pub fn trajectory_svg(t: &Trajectory) -> String {
    let (low, high) = range(t.definition);
    let bands = bands(t.definition);
    let dates: Vec<NaiveDate> = t
        .scores
        .iter()
        .map(|(d, _)| *d)
        .chain(t.absences.iter().copied())
        .collect();
    let (first, last) = match (dates.iter().min(), dates.iter().max()) {
        (Some(first), Some(last)) => (*first, *last),
        _ => return empty_chart(&format!("No {} scores yet", t.definition.instrument)),
    };
    let span = (last - first).num_days().max(14) as f64;
    let x = |d: NaiveDate| LEFT + (d - first).num_days() as f64 / span * plot_width();
    let y = |v: f64| TOP + (high - v.clamp(low, high)) / (high - low) * plot_height();
    let name = &t.definition.instrument;
    let mut svg = open_svg(&format!(
        "{name} scores from {first} to {last}, range {low} to {high}"
    ));
    for band in &bands {
        let (top, bottom) = (y(band.to), y(band.from));
        let _ = write!(
            svg,
            r#"<rect class="band sev-{}" x="{LEFT}" y="{top:.1}" width="{:.1}" height="{:.1}"><title>{name} {} to {}: {}</title></rect><text class="band-label" x="{:.1}" y="{:.1}">{}</text>"#,
            band.severity,
            plot_width(),
            bottom - top,
            band.from,
            band.to,
            band.label,
            LEFT + plot_width() + 6.0,
            (top + bottom) / 2.0 + 4.0,
            band.label
        );
    }
    if let (Some(rc), Some((_, baseline))) = (t.definition.reliable_change, t.scores.first()) {
        let rc = rc.as_f64();
        let (top, bottom) = (y(baseline + rc), y(baseline - rc));
        let _ = write!(
            svg,
            r#"<rect class="rc-band" x="{LEFT}" y="{top:.1}" width="{:.1}" height="{:.1}"><title>No reliable change: within {rc} of the baseline {baseline}</title></rect><text class="rc-label" x="{:.1}" y="{:.1}">±{rc} from baseline</text>"#,
            plot_width(),
            bottom - top,
            LEFT + 4.0,
            top - 3.0
        );
    }
    if let Some(cutoff) = t.definition.clinical_cutoff {
        let cy = y(cutoff.as_f64());
        let _ = write!(
            svg,
            r#"<line class="cutoff" x1="{LEFT}" y1="{cy:.1}" x2="{:.1}" y2="{cy:.1}"/><text class="cutoff-label" x="{:.1}" y="{:.1}">cutoff {cutoff}</text>"#,
            LEFT + plot_width(),
            LEFT + plot_width() - 4.0,
            cy - 3.0
        );
    }
    axes(&mut svg, low, high, first, last, &x, &y);
    for day in &t.absences {
        let ax = x(*day);
        let base = TOP + plot_height();
        let _ = write!(
            svg,
            r#"<g class="absence"><title>Absent {day}</title><path d="M{:.1} {:.1}l5 8h-10z"/><text x="{ax:.1}" y="{:.1}">absent</text></g>"#,
            ax,
            base + 2.0,
            base + 32.0
        );
    }
    if t.scores.len() > 1 {
        let points: Vec<String> = t
            .scores
            .iter()
            .map(|(d, v)| format!("{:.1},{:.1}", x(*d), y(*v)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline class="trend" points="{}"/>"#,
            points.join(" ")
        );
    }
    for (day, value) in &t.scores {
        let (mx, my) = (x(*day), y(*value));
        let band = band_of(&bands, *value);
        let severity = band.map_or(0, |b| b.severity);
        let label = band.map_or("", |b| b.label);
        let _ = write!(
            svg,
            r#"<g class="marker sev-{severity}"><title>{name} {value} on {day}: {label}</title><circle cx="{mx:.1}" cy="{my:.1}" r="5"/><text x="{mx:.1}" y="{:.1}">{value}</text></g>"#,
            my - 9.0
        );
    }
    svg.push_str("</svg>");
    svg
}

/// One Kaplan–Meier step: day, survival, standard error.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    pub t_days: u32,
    pub survival: f64,
    pub std_err: Option<f64>,
}

/// The retention curve: Kaplan–Meier steps with a 95% band (±1.96 SE, clipped to
/// 0–1) and the median marked.
pub fn retention_svg(steps: &[Step], median_days: Option<u32>) -> String {
    let end = steps.iter().map(|s| s.t_days).max().unwrap_or(0).max(84) as f64;
    let x = |t: f64| LEFT + t / end * plot_width();
    let y = |s: f64| TOP + (1.0 - s.clamp(0.0, 1.0)) * plot_height();
    let mut svg = open_svg("Share of members still in their group by days since joining");
    let mut line = format!("M{:.1} {:.1}", x(0.0), y(1.0));
    let (mut upper, mut lower) = (vec![(0.0, 1.0f64)], vec![(0.0, 1.0f64)]);
    for step in steps {
        let sx = x(step.t_days as f64);
        let _ = write!(line, "H{sx:.1}V{:.1}", y(step.survival));
        let half = step.std_err.unwrap_or(0.0) * 1.96;
        upper.push((step.t_days as f64, (step.survival + half).min(1.0)));
        lower.push((step.t_days as f64, (step.survival - half).max(0.0)));
    }
    let _ = write!(line, "H{:.1}", x(end));
    let stairs = |points: &[(f64, f64)]| {
        let mut out = Vec::new();
        for (i, (t, s)) in points.iter().enumerate() {
            let next = points.get(i + 1).map_or(end, |p| p.0);
            out.push(format!("{:.1},{:.1}", x(*t), y(*s)));
            out.push(format!("{:.1},{:.1}", x(next), y(*s)));
        }
        out
    };
    let mut band = stairs(&upper);
    band.extend(stairs(&lower).into_iter().rev());
    let _ = write!(
        svg,
        r#"<polygon class="km-band" points="{}"><title>95% confidence band</title></polygon>"#,
        band.join(" ")
    );
    let _ = write!(svg, r#"<path class="km" d="{line}"/>"#);
    let half = y(0.5);
    let _ = write!(
        svg,
        r#"<line class="median-line" x1="{LEFT}" y1="{half:.1}" x2="{:.1}" y2="{half:.1}"/>"#,
        LEFT + plot_width()
    );
    match median_days {
        Some(days) => {
            let mx = x(days as f64);
            let _ = write!(
                svg,
                r#"<line class="median" x1="{mx:.1}" y1="{half:.1}" x2="{mx:.1}" y2="{:.1}"/><text class="median-label" x="{:.1}" y="{:.1}">median {days} days</text>"#,
                TOP + plot_height(),
                mx + 4.0,
                half - 4.0
            );
        }
        None => {
            let _ = write!(
                svg,
                r#"<text class="median-label" x="{:.1}" y="{:.1}">median not reached</text>"#,
                LEFT + plot_width() - 110.0,
                half - 4.0
            );
        }
    }
    for s in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let _ = write!(
            svg,
            r#"<text class="tick" x="{:.1}" y="{:.1}">{}%</text>"#,
            LEFT - 6.0,
            y(s) + 4.0,
            (s * 100.0) as u32
        );
    }
    for week in (0..=(end as u32 / 7)).step_by(((end as usize / 7) / 6).max(1)) {
        let tx = x((week * 7) as f64);
        let _ = write!(
            svg,
            r#"<text class="tick tick-x" x="{tx:.1}" y="{:.1}">wk {week}</text>"#,
            TOP + plot_height() + 16.0
        );
    }
    svg.push_str("</svg>");
    svg
}

fn plot_width() -> f64 {
    WIDTH - LEFT - RIGHT
}

fn plot_height() -> f64 {
    HEIGHT - TOP - BOTTOM
}

fn open_svg(label: &str) -> String {
    format!(
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{}" xmlns="http://www.w3.org/2000/svg">"#,
        escape(label)
    )
}

fn empty_chart(message: &str) -> String {
    let mut svg = open_svg(message);
    let _ = write!(
        svg,
        r#"<text class="empty" x="{:.1}" y="{:.1}">{}</text></svg>"#,
        WIDTH / 2.0,
        HEIGHT / 2.0,
        escape(message)
    );
    svg
}

fn axes(
    svg: &mut String,
    low: f64,
    high: f64,
    first: NaiveDate,
    last: NaiveDate,
    x: &impl Fn(NaiveDate) -> f64,
    y: &impl Fn(f64) -> f64,
) {
    let base = TOP + plot_height();
    let _ = write!(
        svg,
        r#"<line class="axis" x1="{LEFT}" y1="{base:.1}" x2="{:.1}" y2="{base:.1}"/>"#,
        LEFT + plot_width()
    );
    for value in [low, (low + high) / 2.0, high] {
        let _ = write!(
            svg,
            r#"<text class="tick" x="{:.1}" y="{:.1}">{}</text>"#,
            LEFT - 6.0,
            y(value) + 4.0,
            value
        );
    }
    let _ = write!(
        svg,
        r#"<text class="tick tick-x" x="{:.1}" y="{:.1}">{first}</text>"#,
        x(first),
        base + 16.0
    );
    if last != first {
        let _ = write!(
            svg,
            r#"<text class="tick tick-x" x="{:.1}" y="{:.1}">{last}</text>"#,
            x(last),
            base + 16.0
        );
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use circle_events::instruments::Catalogue;

    /// Compares with the stored snapshot; `UPDATE_SNAPSHOTS=1` writes it instead.
    fn matches_snapshot(name: &str, svg: &str) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/snapshots")
            .join(name);
        if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, svg).unwrap();
        }
        let stored = std::fs::read_to_string(&path)
            .unwrap_or_else(|_| panic!("{name}: no snapshot (run with UPDATE_SNAPSHOTS=1)"));
        assert_eq!(svg, stored, "{name} differs from its snapshot");
    }

    fn day(text: &str) -> NaiveDate {
        text.parse().unwrap()
    }

    #[test]
    fn a_recovering_phq9_trajectory_gives_its_known_svg() {
        let phq9 = Catalogue::builtin().current("PHQ-9").unwrap();
        let svg = trajectory_svg(&Trajectory {
            definition: phq9,
            scores: vec![
                (day("2026-01-06"), 18.0),
                (day("2026-01-13"), 15.0),
                (day("2026-01-27"), 9.0),
                (day("2026-02-03"), 4.0),
            ],
            absences: vec![day("2026-01-20")],
        });
        // Every band, the cutoff, the reliable-change band and each value in words.
        for text in [
            ">moderately severe<",
            ">cutoff 10<",
            "±6 from baseline",
            ">18<",
            ">4<",
            "PHQ-9 4 on 2026-02-03: minimal",
            "Absent 2026-01-20",
        ] {
            assert!(svg.contains(text), "{text}");
        }
        matches_snapshot("phq9_recovering.svg", &svg);
    }

    #[test]
    fn an_alliance_scale_is_banded_by_its_cutoff_and_no_scores_say_so() {
        let srs = Catalogue::builtin().current("SRS").unwrap();
        let svg = trajectory_svg(&Trajectory {
            definition: srs,
            scores: vec![(day("2026-01-06"), 38.0), (day("2026-01-13"), 33.5)],
            absences: vec![],
        });
        assert!(svg.contains("SRS 33.5 on 2026-01-13: below cutoff"));
        assert!(!svg.contains("rc-band"), "SRS has no reliable-change value");
        matches_snapshot("srs_drop.svg", &svg);
        let empty = trajectory_svg(&Trajectory {
            definition: srs,
            scores: vec![],
            absences: vec![],
        });
        assert!(empty.contains("No SRS scores yet"));
    }

    #[test]
    fn the_6mp_retention_curve_gives_its_known_svg() {
        // The published 6-MP steps (testdata/km_6mp.json) in weeks as days.
        let steps: Vec<Step> = [
            (6, 0.857143, 0.076360),
            (7, 0.806723, 0.086935),
            (10, 0.752941, 0.096350),
            (13, 0.690196, 0.106815),
            (16, 0.627451, 0.114054),
            (22, 0.537815, 0.128234),
            (23, 0.448179, 0.134591),
        ]
        .iter()
        .map(|(weeks, survival, se)| Step {
            t_days: weeks * 7,
            survival: *survival,
            std_err: Some(*se),
        })
        .collect();
        let svg = retention_svg(&steps, Some(161));
        assert!(svg.contains("median 161 days"));
        matches_snapshot("km_6mp.svg", &svg);
        assert!(retention_svg(&[], None).contains("median not reached"));
    }
}
