//! Care teams: which clinicians may see which clients, as a fold of the log.
//!
//! A clinician may see a client who is or was a member of a group the clinician
//! facilitates now. This index answers that from two small maps (the groups of each
//! client, the facilitators of each group), so the answer costs a few lookups rather
//! than a load of every group.
//!
//! It also knows where each goal lives (its client and group), so a route under
//! `/clients/{id}/goals/{goal_id}` finds the group that decides it, and refuses a goal
//! of another client by name.

use std::collections::{BTreeSet, HashMap};

use circle_events::group::GroupEvent;

use crate::practice::{AnyEvent, Fact};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct CareTeams {
    /// Last log position applied.
    pub position: i64,
    facilitators: HashMap<String, BTreeSet<String>>,
    /// Every group a client has joined, including ones they have left.
    groups_of_client: HashMap<String, BTreeSet<String>>,
    /// goal id → where it lives.
    goals: HashMap<String, GoalHome>,
}

/// The client a goal belongs to and the group that decides its check-ins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoalHome {
    pub client_id: String,
    pub group_id: String,
}

impl CareTeams {
    /// Applies one event of the log; positions already applied are ignored.
    pub fn apply(&mut self, fact: &Fact) {
        if fact.position <= self.position {
            return;
        }
        self.position = fact.position;
        let AnyEvent::Group(event) = &fact.event else {
            return;
        };
        let group_id = &fact.aggregate_id;
        match event {
            GroupEvent::GroupCreated { facilitators, .. } => {
                self.facilitators
                    .insert(group_id.clone(), facilitators.iter().cloned().collect());
            }
            GroupEvent::FacilitatorAssigned { clinician_id } => {
                self.facilitators
                    .entry(group_id.clone())
                    .or_default()
                    .insert(clinician_id.clone());
            }
            GroupEvent::FacilitatorRemoved { clinician_id } => {
                if let Some(facilitators) = self.facilitators.get_mut(group_id) {
                    facilitators.remove(clinician_id);
                }
            }
            GroupEvent::MemberJoined { client_id, .. } => {
                self.groups_of_client
                    .entry(client_id.clone())
                    .or_default()
                    .insert(group_id.clone());
            }
            GroupEvent::GoalSet {
                goal_id, client_id, ..
            } => {
                // The first home wins: a later goal of the same id elsewhere is
                // refused by the write path, which asks this index first.
                self.goals
                    .entry(goal_id.clone())
                    .or_insert_with(|| GoalHome {
                        client_id: client_id.clone(),
                        group_id: group_id.clone(),
                    });
            }
            // Leaving keeps the history: a facilitator still sees a former member.
            GroupEvent::MemberLeft { .. }
            | GroupEvent::GoalCheckedIn { .. }
            | GroupEvent::GoalClosed { .. }
            | GroupEvent::SessionScheduled { .. }
            | GroupEvent::SessionCancelled { .. }
            | GroupEvent::AttendanceRecorded { .. }
            | GroupEvent::AttendanceCorrected { .. }
            | GroupEvent::FeedbackRecorded { .. }
            | GroupEvent::RiskReviewed { .. }
            | GroupEvent::GroupClosed { .. } => {}
        }
    }

    /// Marks positions up to `position` as applied: events the index does not read.
    pub fn skip_to(&mut self, position: i64) {
        self.position = self.position.max(position);
    }

    /// Whether `clinician_id` facilitates a group `client_id` is or was a member of.
    pub fn clinician_knows_client(&self, clinician_id: &str, client_id: &str) -> bool {
        self.groups_of_client
            .get(client_id)
            .into_iter()
            .flatten()
            .filter_map(|group_id| self.facilitators.get(group_id))
            .any(|facilitators| facilitators.contains(clinician_id))
    }

    /// Every group `client_id` has joined, including ones they have left.
    pub fn groups_of_client(&self, client_id: &str) -> Vec<String> {
        self.groups_of_client
            .get(client_id)
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// Whether `clinician_id` is now among the facilitators of `group_id`.
    pub fn facilitates(&self, clinician_id: &str, group_id: &str) -> bool {
        self.facilitators
            .get(group_id)
            .is_some_and(|facilitators| facilitators.contains(clinician_id))
    }

    /// Where a goal lives, if it was ever set.
    pub fn goal_home(&self, goal_id: &str) -> Option<&GoalHome> {
        self.goals.get(goal_id)
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use circle_events::group::{DepartureReason, Focus, Format};

    use super::*;

    struct Log {
        teams: CareTeams,
        position: i64,
    }

    impl Log {
        fn new() -> Log {
            Log {
                teams: CareTeams::default(),
                position: 0,
            }
        }

        fn group(&mut self, group_id: &str, event: GroupEvent) -> &mut Log {
            self.position += 1;
            self.teams.apply(&Fact {
                position: self.position,
                recorded_at: Utc::now(),
                aggregate_id: group_id.into(),
                event: AnyEvent::Group(event),
            });
            self
        }

        fn created(&mut self, group_id: &str, facilitator: &str) -> &mut Log {
            self.group(
                group_id,
                GroupEvent::GroupCreated {
                    group_id: group_id.into(),
                    name: "Tuesday".into(),
                    focus: Focus::Grief,
                    format: Format::Open,
                    capacity: 10,
                    facilitators: vec![facilitator.into()],
                    starts_on: None,
                },
            )
        }

        fn joined(&mut self, group_id: &str, client_id: &str) -> &mut Log {
            self.group(
                group_id,
                GroupEvent::MemberJoined {
                    client_id: client_id.into(),
                    joined_on: "2026-01-06".parse().unwrap(),
                },
            )
        }

        fn knows(&self, clinician_id: &str, client_id: &str) -> bool {
            self.teams.clinician_knows_client(clinician_id, client_id)
        }
    }

    #[test]
    fn a_facilitator_knows_the_members_of_their_group_and_no_one_else() {
        let mut log = Log::new();
        log.created("g1", "dr_a")
            .created("g2", "dr_b")
            .joined("g1", "c1");
        assert!(log.knows("dr_a", "c1"));
        assert!(!log.knows("dr_b", "c1"));
        assert!(!log.knows("dr_a", "c2"));
    }

    #[test]
    fn an_assigned_facilitator_knows_the_members_and_a_removed_one_no_longer_does() {
        let mut log = Log::new();
        log.created("g1", "dr_a").joined("g1", "c1");
        log.group(
            "g1",
            GroupEvent::FacilitatorAssigned {
                clinician_id: "dr_b".into(),
            },
        );
        assert!(log.knows("dr_b", "c1"));
        log.group(
            "g1",
            GroupEvent::FacilitatorRemoved {
                clinician_id: "dr_a".into(),
            },
        );
        assert!(!log.knows("dr_a", "c1"));
        assert!(log.knows("dr_b", "c1"));
    }

    #[test]
    fn a_former_member_stays_known_to_the_facilitator() {
        let mut log = Log::new();
        log.created("g1", "dr_a").joined("g1", "c1");
        log.group(
            "g1",
            GroupEvent::MemberLeft {
                client_id: "c1".into(),
                left_on: "2026-03-01".parse().unwrap(),
                reason: DepartureReason::Completed,
            },
        );
        assert!(log.knows("dr_a", "c1"));
    }

    #[test]
    fn a_goal_is_found_in_the_group_it_was_set_in() {
        let mut log = Log::new();
        log.created("g1", "dr_a").joined("g1", "c1");
        let set = |client: &str| GroupEvent::GoalSet {
            goal_id: "goal1".into(),
            client_id: client.into(),
            title: circle_events::client::SealedPersonalData {
                sealed: "eA==".into(),
            },
            weight: 1,
            start_level: -1,
            set_on: "2026-01-06".parse().unwrap(),
        };
        assert_eq!(log.teams.goal_home("goal1"), None);
        log.group("g1", set("c1"));
        log.group("g2", set("c2"));
        assert_eq!(
            log.teams.goal_home("goal1"),
            Some(&GoalHome {
                client_id: "c1".into(),
                group_id: "g1".into()
            })
        );
    }

    #[test]
    fn an_event_already_applied_is_not_applied_again() {
        let mut log = Log::new();
        log.created("g1", "dr_a").joined("g1", "c1");
        let removal = Fact {
            position: 1,
            recorded_at: Utc::now(),
            aggregate_id: "g1".into(),
            event: AnyEvent::Group(GroupEvent::FacilitatorRemoved {
                clinician_id: "dr_a".into(),
            }),
        };
        log.teams.apply(&removal);
        assert!(log.knows("dr_a", "c1"), "position 1 was already applied");
    }
}
