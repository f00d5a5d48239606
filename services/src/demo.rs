//! A realistic demo practice, recorded through the same command path as real use:
//! four groups of different focus, forty clients, twelve weekly sessions with
//! attendance and questionnaires, a few dropouts, a few members getting worse, one
//! cancelled session and one risk flag. Members set goals and check in on them at the
//! sessions they attend: in each group the first member exceeds expectations (+2) and
//! the eighth stops checking in, so their goal stalls. Deterministic: the same seed
//! every time.

use anyhow::Context;
use chrono::{DateTime, Duration, FixedOffset, NaiveDate, TimeZone, Utc};
use circle_events::client::{Client, ClientCommand};
use circle_events::group::{
    AttendanceMark, AttendanceStatus, DepartureReason, Focus, Format, GoalClosure, GoalLevel,
    GroupCommand,
};
use circle_events::instruments::Score;
use circle_events::Command;

use crate::auth::{Principal, Role};
use crate::commands::{CommandContext, CommandError};
use crate::crypto::PersonalData;
use crate::http::AppState;
use crate::store::KeyAction;

const WEEKS: i64 = 12;

/// Small deterministic generator (xorshift); the demo needs variety, not secrecy.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct GroupPlan {
    id: &'static str,
    name: &'static str,
    focus: Focus,
    format: Format,
    facilitator: &'static str,
    outcome: &'static str,
    alliance: &'static str,
    weekday_offset: i64,
    hour: u32,
}

const GROUPS: [GroupPlan; 4] = [
    GroupPlan {
        id: "grp-anxiety-tue",
        name: "Tuesday evening anxiety group",
        focus: Focus::Anxiety,
        format: Format::Open,
        facilitator: "dr-okafor",
        outcome: "GAD-7",
        alliance: "SRS",
        weekday_offset: 0,
        hour: 18,
    },
    GroupPlan {
        id: "grp-grief-wed",
        name: "Bereavement support circle",
        focus: Focus::Grief,
        format: Format::Closed,
        facilitator: "dr-lindqvist",
        outcome: "PHQ-9",
        alliance: "GSRS",
        weekday_offset: 1,
        hour: 10,
    },
    GroupPlan {
        id: "grp-trauma-thu",
        name: "Trauma recovery skills group",
        focus: Focus::Trauma,
        format: Format::Closed,
        facilitator: "dr-alvarez",
        outcome: "ORS",
        alliance: "GSRS",
        weekday_offset: 2,
        hour: 17,
    },
    GroupPlan {
        id: "grp-recovery-fri",
        name: "Friday addiction recovery group",
        focus: Focus::AddictionRecovery,
        format: Format::Open,
        facilitator: "dr-chen",
        outcome: "PHQ-9",
        alliance: "SRS",
        weekday_offset: 3,
        hour: 19,
    },
];

const FIRST_NAMES: [&str; 20] = [
    "Amara", "Ben", "Chloe", "Dmitri", "Elif", "Farah", "Gus", "Hana", "Ivan", "Jo", "Kai", "Lena",
    "Mateo", "Nia", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tess",
];

const GOAL_TITLES: [&str; 8] = [
    "Speak up once in every session",
    "Walk outside three times a week",
    "Call a friend when the evening feels long",
    "Sleep by eleven on weeknights",
    "Write down one worry and one win each day",
    "Go to the shop without leaving early",
    "Say no to one extra shift a week",
    "Eat breakfast before work",
];

/// How a member's course goes.
#[derive(Clone, Copy, PartialEq)]
enum Course {
    Improves,
    Flat,
    Worsens,
    DropsOut { after_week: i64 },
}

fn context(at: DateTime<Utc>, key: Option<KeyAction>) -> CommandContext {
    CommandContext {
        occurred_at: Some(at),
        key_action: key,
        ..CommandContext::new(Principal::system("demo-seeder"))
    }
}

async fn group_command(
    state: &AppState,
    id: &str,
    command: GroupCommand,
    at: DateTime<Utc>,
) -> anyhow::Result<()> {
    let name = command.name();
    state
        .commands
        .execute(&state.groups, id, command, &context(at, None), |_| true)
        .await
        .map_err(describe)
        .with_context(|| format!("{name} on {id}"))?;
    Ok(())
}

fn describe<E: std::error::Error>(error: CommandError<E>) -> anyhow::Error {
    anyhow::anyhow!("{error}")
}

/// Seeds the practice when the log is empty; says what it did either way.
/// A token for the demo clinician whose group has the risk flag (the PHQ-9 group's),
/// for the dashboard's one-click link: the token and the clinician's id. Its issue is
/// an event like any token's.
pub async fn dashboard_clinician_token(state: &AppState) -> anyhow::Result<(String, String)> {
    let clinician = GROUPS[1].facilitator.to_string();
    let grant = crate::tokens::Grant::new(
        Role::Clinician,
        Some(clinician.clone()),
        "demo clinician (dashboard link)",
    );
    let (secret, _) = crate::tokens::issue(&state.store, &grant, crate::tokens::operator("demo"))
        .await
        .context("issuing the demo clinician's token")?;
    Ok((secret, clinician))
}

pub async fn seed_if_empty(state: &AppState) -> anyhow::Result<String> {
    let head = state.store.head_position().await?;
    // Token events (the admin token registered at start) do not make a practice.
    let groups = state
        .store
        .aggregate_ids(<circle_events::group::Group as cqrs_es::Aggregate>::TYPE)
        .await?;
    let clients = state
        .store
        .aggregate_ids(<circle_events::client::Client as cqrs_es::Aggregate>::TYPE)
        .await?;
    if !groups.is_empty() || !clients.is_empty() {
        return Ok(format!(
            "demo data already present ({head} events); delete the data directory to start over"
        ));
    }
    let today = Utc::now().date_naive();
    let first_week = today - Duration::weeks(WEEKS);
    let mut tasks = Vec::new();
    for (index, plan) in GROUPS.iter().enumerate() {
        let state = state.clone();
        tasks.push(tokio::spawn(async move {
            seed_group(&state, plan, index, first_week).await
        }));
    }
    for task in tasks {
        task.await.context("seeding task stopped")??;
    }
    let events = state.store.head_position().await?;
    Ok(format!(
        "demo practice seeded: {} groups, 40 clients with goals, {WEEKS} weekly sessions each, {events} events",
        GROUPS.len()
    ))
}

async fn seed_group(
    state: &AppState,
    plan: &GroupPlan,
    index: usize,
    first_week: NaiveDate,
) -> anyhow::Result<()> {
    let mut dice = Dice(0x9E37_79B9_7F4A_7C15 ^ ((index as u64 + 1) * 0x1000_0001));
    let start = first_week + Duration::days(plan.weekday_offset);
    let at_noon =
        |date: NaiveDate| Utc.from_utc_datetime(&date.and_hms_opt(12, 0, 0).unwrap_or_default());
    group_command(
        state,
        plan.id,
        GroupCommand::CreateGroup {
            group_id: plan.id.into(),
            name: plan.name.into(),
            focus: plan.focus,
            format: plan.format,
            capacity: 10,
            facilitators: vec![plan.facilitator.into()],
            starts_on: Some(start),
        },
        at_noon(start - Duration::days(14)),
    )
    .await?;

    // Ten clients per group; the first eight start together, two open-group places
    // fill in week three, closed groups start all ten.
    let mut members = Vec::new();
    let mut goals_of = Vec::new();
    for n in 0..10 {
        let client_id = format!("cli-{:02}", index * 10 + n + 1);
        let joined_on = if plan.format == Format::Open && n >= 8 {
            start + Duration::weeks(2)
        } else {
            start
        };
        let course = match n {
            2 => Course::DropsOut {
                after_week: 3 + index as i64,
            },
            5 if index.is_multiple_of(2) => Course::DropsOut { after_week: 7 },
            4 => Course::Worsens,
            7 => Course::Flat,
            _ => Course::Improves,
        };
        let wrapped_key = register_client(
            state,
            &client_id,
            index * 10 + n,
            at_noon(joined_on - Duration::days(3)),
        )
        .await?;
        group_command(
            state,
            plan.id,
            GroupCommand::JoinGroup {
                client_id: client_id.clone(),
                joined_on,
            },
            at_noon(joined_on),
        )
        .await?;
        let goals = set_goals(
            state,
            plan,
            &client_id,
            &wrapped_key,
            index * 10 + n,
            joined_on,
        )
        .await?;
        members.push((client_id, joined_on, course, 40 + dice.below(50)));
        goals_of.push((GoalPace::of(n, course), goals));
    }

    let offset = FixedOffset::east_opt(0).context("UTC offset")?;
    let definition = circle_events::instruments::Catalogue::builtin()
        .current(plan.outcome)
        .context("demo instrument in catalogue")?;
    for week in 0..WEEKS {
        let date = start + Duration::weeks(week);
        let session_id = format!("{}-w{:02}", plan.id, week + 1);
        let starts_at = offset
            .from_local_datetime(&date.and_hms_opt(plan.hour, 0, 0).unwrap_or_default())
            .single()
            .context("session time")?;
        group_command(
            state,
            plan.id,
            GroupCommand::ScheduleSession {
                session_id: session_id.clone(),
                starts_at,
                duration_minutes: 90,
            },
            at_noon(date - Duration::days(7)),
        )
        .await?;
        if week == 6 && index == 1 {
            group_command(
                state,
                plan.id,
                GroupCommand::CancelSession {
                    session_id,
                    reason: "facilitator unwell".into(),
                },
                at_noon(date),
            )
            .await?;
            continue;
        }
        let session_time = starts_at.with_timezone(&Utc);
        let mut records = Vec::new();
        let mut present = Vec::new();
        let mut check_ins = Vec::new();
        for ((client_id, joined_on, course, propensity), (pace, goals)) in
            members.iter().zip(&goals_of)
        {
            if *joined_on > date {
                continue;
            }
            if let Course::DropsOut { after_week } = course {
                if week > *after_week {
                    continue;
                }
                if week > after_week - 2 {
                    records.push(AttendanceMark {
                        client_id: client_id.clone(),
                        status: AttendanceStatus::NoShow,
                    });
                    continue;
                }
            }
            let roll = dice.below(100);
            let status = if roll < *propensity + 10 {
                AttendanceStatus::Present
            } else if roll < propensity + 18 {
                AttendanceStatus::Late
            } else if roll < propensity + 22 {
                AttendanceStatus::LeftEarly
            } else if dice.chance(50) {
                AttendanceStatus::Excused
            } else {
                AttendanceStatus::NoShow
            };
            if status.attended() {
                present.push((client_id.clone(), *joined_on, *course));
                let weeks_in = (date - *joined_on).num_weeks();
                if let Some(level) = pace.level(weeks_in) {
                    check_ins.extend(goals.iter().map(|goal_id| GoalLevel {
                        client_id: client_id.clone(),
                        goal_id: goal_id.clone(),
                        level,
                    }));
                }
            }
            records.push(AttendanceMark {
                client_id: client_id.clone(),
                status,
            });
        }
        group_command(
            state,
            plan.id,
            GroupCommand::RecordAttendance {
                session_id: session_id.clone(),
                records,
            },
            session_time + Duration::hours(2),
        )
        .await?;
        if !check_ins.is_empty() {
            group_command(
                state,
                plan.id,
                GroupCommand::CheckInSession {
                    session_id: session_id.clone(),
                    check_ins,
                },
                session_time + Duration::hours(2),
            )
            .await?;
        }
        for (client_id, joined_on, course) in present {
            let weeks_in = (date - joined_on).num_weeks();
            let alliance = alliance_items(&mut dice, course, weeks_in);
            feedback(
                state,
                plan,
                &session_id,
                &client_id,
                plan.alliance,
                alliance,
                session_time,
            )
            .await?;
            if weeks_in % 4 == 0 || week == WEEKS - 1 {
                let items = outcome_items(
                    &mut dice,
                    definition.items,
                    definition.decimals,
                    course,
                    weeks_in,
                    index,
                );
                feedback(
                    state,
                    plan,
                    &session_id,
                    &client_id,
                    plan.outcome,
                    items,
                    session_time,
                )
                .await?;
            }
        }
    }
    // The member who exceeds expectations attains their first goal in the last week.
    if let (Some((client_id, ..)), Some((_, goals))) = (members.first(), goals_of.first()) {
        let closed_on = start + Duration::weeks(WEEKS - 1);
        group_command(
            state,
            plan.id,
            GroupCommand::CloseGoal {
                goal_id: goals[0].clone(),
                client_id: client_id.clone(),
                reason: GoalClosure::Attained,
                replaced_by: None,
                closed_on,
            },
            at_noon(closed_on),
        )
        .await?;
    }
    for (client_id, joined_on, course, _) in &members {
        let (left_on, reason) = match course {
            Course::DropsOut { after_week } => (
                start + Duration::weeks(*after_week) + Duration::days(2),
                DepartureReason::DroppedOut,
            ),
            _ if plan.format == Format::Closed => (
                start + Duration::weeks(WEEKS - 1),
                DepartureReason::Completed,
            ),
            _ => continue,
        };
        if left_on >= *joined_on {
            group_command(
                state,
                plan.id,
                GroupCommand::LeaveGroup {
                    client_id: client_id.clone(),
                    left_on,
                    reason,
                },
                at_noon(left_on),
            )
            .await?;
        }
    }
    Ok(())
}

/// How a member's goal levels move, week by week of membership.
#[derive(Clone, Copy, PartialEq, Debug)]
enum GoalPace {
    /// Reaches +2, much more than expected.
    Exceeds,
    /// Climbs to +1.
    Steady,
    /// Slips to -2.
    Slips,
    /// Checks in once and then no more: the goal stalls.
    Stalls,
}

impl GoalPace {
    fn of(n: usize, course: Course) -> GoalPace {
        match (n, course) {
            (0, _) => GoalPace::Exceeds,
            (7, _) => GoalPace::Stalls,
            (_, Course::Worsens) => GoalPace::Slips,
            _ => GoalPace::Steady,
        }
    }

    /// The level reported `weeks_in` weeks after joining, or `None` for no check-in.
    fn level(self, weeks_in: i64) -> Option<i8> {
        let climb = |per: i64, top: i64| (-1 + weeks_in / per).clamp(-2, top) as i8;
        match self {
            GoalPace::Exceeds => Some(climb(2, 2)),
            GoalPace::Steady => Some(climb(4, 1)),
            GoalPace::Slips => Some(if weeks_in >= 4 { -2 } else { -1 }),
            GoalPace::Stalls => (weeks_in == 0).then_some(-1),
        }
    }
}

/// One or two goals per member, set on the day they join, titles sealed with their key.
async fn set_goals(
    state: &AppState,
    plan: &GroupPlan,
    client_id: &str,
    wrapped_key: &[u8],
    n: usize,
    set_on: NaiveDate,
) -> anyhow::Result<Vec<String>> {
    let mut goals = Vec::new();
    for g in 0..(1 + (n + 1) % 2) {
        let goal_id = format!("goal-{client_id}-{}", g + 1);
        let title = GOAL_TITLES[(n + g * 3) % GOAL_TITLES.len()];
        let title = state
            .vault
            .seal_goal_title(wrapped_key, client_id, &goal_id, title)
            .context("sealing a demo goal title")?;
        group_command(
            state,
            plan.id,
            GroupCommand::SetGoal {
                goal_id: goal_id.clone(),
                client_id: client_id.into(),
                title,
                weight: 1 + (n + g) as u8 % 3,
                start_level: -1,
                set_on,
            },
            Utc.from_utc_datetime(&set_on.and_hms_opt(12, 30, 0).unwrap_or_default()),
        )
        .await?;
        goals.push(goal_id);
    }
    Ok(goals)
}

/// Registers a client; answers the wrapped key their personal data is sealed with.
async fn register_client(
    state: &AppState,
    client_id: &str,
    n: usize,
    at: DateTime<Utc>,
) -> anyhow::Result<Vec<u8>> {
    let personal = PersonalData {
        display_name: Some(format!(
            "{} {}.",
            FIRST_NAMES[n % 20],
            (b'A' + (n / 2 % 26) as u8) as char
        )),
        contact: Some(format!("member{n:02}@example.org")),
        birth_year: Some(1950 + (n as i32 * 7) % 50),
    };
    let key = state.vault.new_client_key(client_id);
    let sealed = state.vault.seal(&key, client_id, &personal);
    let action = KeyAction::Store {
        client_id: client_id.into(),
        wrapped_key: key.wrapped.clone(),
    };
    state
        .commands
        .execute(
            &state.clients,
            client_id,
            ClientCommand::RegisterClient {
                client_id: client_id.into(),
                personal: Some(sealed),
            },
            &context(at, Some(action)),
            |_: &Client| true,
        )
        .await
        .map_err(describe)
        .with_context(|| format!("registering {client_id}"))?;
    Ok(key.wrapped)
}

async fn feedback(
    state: &AppState,
    plan: &GroupPlan,
    session_id: &str,
    client_id: &str,
    instrument: &str,
    items: Vec<Score>,
    at: DateTime<Utc>,
) -> anyhow::Result<()> {
    group_command(
        state,
        plan.id,
        GroupCommand::RecordFeedback {
            client_id: client_id.into(),
            session_id: Some(session_id.into()),
            instrument: instrument.into(),
            items,
            administered_at: None,
        },
        at,
    )
    .await
}

/// Alliance ratings (0–10, tenths): high for most, sagging for those who struggle.
fn alliance_items(dice: &mut Dice, course: Course, weeks_in: i64) -> Vec<Score> {
    let base: i64 = match course {
        Course::Worsens => 88 - weeks_in * 3,
        Course::DropsOut { .. } => 80,
        _ => 90,
    };
    (0..4)
        .map(|_| Score::from_tenths((base + dice.below(12) as i64 - 3).clamp(0, 100)))
        .collect()
}

/// Outcome items whose total follows the member's course.
fn outcome_items(
    dice: &mut Dice,
    count: usize,
    decimals: u8,
    course: Course,
    weeks_in: i64,
    group: usize,
) -> Vec<Score> {
    if decimals == 1 {
        // ORS: higher is better; start in the clinical range (< 25).
        let per_item = match course {
            Course::Improves => 45 + weeks_in * 4,
            Course::Worsens => 55 - weeks_in * 3,
            _ => 52,
        };
        return (0..count)
            .map(|_| Score::from_tenths((per_item + dice.below(9) as i64 - 4).clamp(0, 100)))
            .collect();
    }
    // PHQ-9 / GAD-7: higher is worse, items 0–3.
    let start_total: i64 = 14 + dice.below(5) as i64;
    let total = match course {
        Course::Improves => start_total - weeks_in * 2 / 3,
        Course::Worsens => start_total + weeks_in * 2 / 3,
        _ => start_total - 1,
    }
    .clamp(0, count as i64 * 3);
    let mut items: Vec<i64> = vec![0; count];
    for k in 0..total {
        let slot = (k as usize * 7 + group) % count;
        if items[slot] < 3 {
            items[slot] += 1;
        } else if let Some(free) = items.iter().position(|v| *v < 3) {
            items[free] += 1;
        }
    }
    // The last item of PHQ-9 is the risk item: clear it except for one worsening member.
    if count == 9 && !(course == Course::Worsens && weeks_in >= 8) {
        let risk = items[8];
        items[8] = 0;
        if let Some(free) = items[..8].iter().position(|v| *v + risk <= 3) {
            items[free] += risk;
        }
    }
    items.into_iter().map(Score::whole).collect()
}

#[cfg(test)]
mod tests {
    use circle_events::group::Group;
    use cqrs_es::Aggregate;

    use super::*;

    #[test]
    fn demo_scores_fit_their_instruments() {
        let catalogue = circle_events::instruments::Catalogue::builtin();
        let mut dice = Dice(42);
        for course in [
            Course::Improves,
            Course::Worsens,
            Course::Flat,
            Course::DropsOut { after_week: 3 },
        ] {
            for weeks_in in 0..WEEKS {
                for name in ["PHQ-9", "GAD-7", "ORS"] {
                    let def = catalogue.current(name).unwrap();
                    let items =
                        outcome_items(&mut dice, def.items, def.decimals, course, weeks_in, 1);
                    def.check_items(&items).unwrap();
                }
                let srs = catalogue.current("SRS").unwrap();
                srs.check_items(&alliance_items(&mut dice, course, weeks_in))
                    .unwrap();
            }
        }
    }

    #[test]
    fn only_a_worsening_member_late_in_the_course_flags_risk() {
        let phq9 = circle_events::instruments::Catalogue::builtin()
            .current("PHQ-9")
            .unwrap();
        let mut dice = Dice(7);
        for course in [Course::Improves, Course::Flat, Course::Worsens] {
            for weeks_in in 0..8 {
                let items = outcome_items(&mut dice, 9, 0, course, weeks_in, 3);
                assert!(phq9.risk_flags(&items).is_empty(), "{weeks_in}");
            }
        }
    }

    #[test]
    fn goal_levels_stay_on_the_scale_and_one_pace_stalls() {
        for pace in [
            GoalPace::Exceeds,
            GoalPace::Steady,
            GoalPace::Slips,
            GoalPace::Stalls,
        ] {
            for weeks_in in 0..WEEKS {
                if let Some(level) = pace.level(weeks_in) {
                    assert!((-2..=2).contains(&level), "{pace:?} {weeks_in}");
                }
            }
        }
        assert_eq!(GoalPace::Exceeds.level(WEEKS - 1), Some(2));
        assert_eq!(GoalPace::Stalls.level(1), None);
        assert_eq!(GoalPace::of(0, Course::Improves), GoalPace::Exceeds);
        assert_eq!(GoalPace::of(7, Course::Flat), GoalPace::Stalls);
    }

    #[test]
    fn group_plans_use_distinct_ids_and_foci() {
        let ids: std::collections::BTreeSet<_> = GROUPS.iter().map(|g| g.id).collect();
        assert_eq!(ids.len(), 4);
        assert!(GROUPS
            .iter()
            .all(|g| <Group as Aggregate>::TYPE == "group" && !g.name.is_empty()));
    }
}
