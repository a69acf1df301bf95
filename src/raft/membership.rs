//! The configuration the Raft core works with: who votes, who learns, and the quorum rules.
//!
//! Invariants (checked by [`Membership::check`] after every change and on every ConfState read
//! from storage or a snapshot):
//! - no node id is 0;
//! - learners vote in neither half: `learners` is disjoint from `voters` and `voters_outgoing`;
//! - `learners_next` (voters being demoted when the joint configuration is left) is a subset of
//!   `voters_outgoing`, not of `voters`, and disjoint from `learners`;
//! - outside a joint configuration `voters_outgoing` and `learners_next` are empty and
//!   `auto_leave` is false.
//!
//! Quorum: a single configuration decides by a majority of its voters; a joint one by a majority
//! of `voters` and, separately, a majority of `voters_outgoing` (thesis §4.3). An empty half
//! agrees to everything, so a non-joint configuration is the simple majority case.

use super::conf_change::{ConfChange, ConfChangeSingle, ConfChangeType};
use crate::storage::ConfState;
use std::collections::BTreeSet;

/// The outcome of an election (or any yes/no round) so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VoteResult {
    Won,
    Lost,
    Pending,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Membership {
    /// The voters (of C_new while joint).
    pub(crate) voters: BTreeSet<u64>,
    /// The voters of C_old while joint; empty otherwise.
    pub(crate) voters_outgoing: BTreeSet<u64>,
    pub(crate) learners: BTreeSet<u64>,
    /// Voters of C_old that become learners when the joint configuration is left.
    pub(crate) learners_next: BTreeSet<u64>,
    pub(crate) auto_leave: bool,
}

impl Membership {
    /// The configuration a ConfState describes, if it keeps the invariants.
    pub(crate) fn from_conf_state(cs: &ConfState) -> Result<Membership, String> {
        let set = |v: &[u64]| v.iter().copied().collect::<BTreeSet<u64>>();
        let m = Membership {
            voters: set(&cs.voters),
            voters_outgoing: set(&cs.voters_outgoing),
            learners: set(&cs.learners),
            learners_next: set(&cs.learners_next),
            auto_leave: cs.auto_leave,
        };
        m.check()?;
        Ok(m)
    }

    pub(crate) fn to_conf_state(&self) -> ConfState {
        let list = |s: &BTreeSet<u64>| s.iter().copied().collect::<Vec<u64>>();
        ConfState {
            voters: list(&self.voters),
            learners: list(&self.learners),
            voters_outgoing: list(&self.voters_outgoing),
            learners_next: list(&self.learners_next),
            auto_leave: self.auto_leave,
        }
    }

    pub(crate) fn is_joint(&self) -> bool {
        !self.voters_outgoing.is_empty()
    }

    /// Votes in at least one half.
    pub(crate) fn is_voter(&self, id: u64) -> bool {
        self.voters.contains(&id) || self.voters_outgoing.contains(&id)
    }

    /// Every node that gets the log: voters of both halves and learners.
    pub(crate) fn ids(&self) -> BTreeSet<u64> {
        self.voters.iter().chain(&self.voters_outgoing).chain(&self.learners).copied().collect()
    }

    /// The only voter is `id` (and no joint change is under way).
    pub(crate) fn is_singleton(&self, id: u64) -> bool {
        !self.is_joint() && self.voters.len() == 1 && self.voters.contains(&id)
    }

    /// The highest index acknowledged by a quorum, given each voter's acknowledged index.
    pub(crate) fn committed_index(&self, acked: impl Fn(u64) -> u64) -> u64 {
        majority_committed(&self.voters, &acked).min(majority_committed(&self.voters_outgoing, &acked))
    }

    /// The result of a round in which `vote(id)` is `Some(granted)` for those who answered.
    pub(crate) fn vote_result(&self, vote: impl Fn(u64) -> Option<bool>) -> VoteResult {
        match (majority_vote(&self.voters, &vote), majority_vote(&self.voters_outgoing, &vote)) {
            (a, b) if a == b => a,
            (VoteResult::Lost, _) | (_, VoteResult::Lost) => VoteResult::Lost,
            _ => VoteResult::Pending,
        }
    }

    /// The configuration after `cc` (etcd's `confchange.Changer`), or why it cannot be made.
    pub(crate) fn apply(&self, cc: &ConfChange) -> Result<Membership, String> {
        let mut m = self.clone();
        if cc.leaves_joint() {
            if !self.is_joint() {
                return Err("leaving a joint configuration, but the configuration is not joint".into());
            }
            m.learners.append(&mut m.learners_next);
            m.voters_outgoing.clear();
            m.auto_leave = false;
        } else if let Some(auto_leave) = cc.enters_joint() {
            if self.is_joint() {
                return Err("entering a joint configuration, but it is joint already".into());
            }
            if self.voters.is_empty() {
                return Err("a configuration without voters cannot become joint".into());
            }
            m.voters_outgoing = self.voters.clone();
            m.apply_changes(&cc.changes)?;
            m.auto_leave = auto_leave;
        } else {
            if self.is_joint() {
                return Err("a simple change cannot be made while the configuration is joint".into());
            }
            m.apply_changes(&cc.changes)?;
            if self.voters.symmetric_difference(&m.voters).count() > 1 {
                return Err("more than one voter changed without entering a joint configuration".into());
            }
        }
        m.check()?;
        Ok(m)
    }

    fn apply_changes(&mut self, changes: &[ConfChangeSingle]) -> Result<(), String> {
        for c in changes {
            let id = c.node_id;
            if id == 0 {
                return Err("node id 0 is reserved for \"none\"".into());
            }
            match c.change_type {
                ConfChangeType::AddNode => {
                    self.learners.remove(&id);
                    self.learners_next.remove(&id);
                    self.voters.insert(id);
                }
                ConfChangeType::AddLearnerNode => {
                    self.voters.remove(&id);
                    self.learners.remove(&id);
                    self.learners_next.remove(&id);
                    // A voter of C_old keeps voting there until the joint configuration is
                    // left: it becomes a learner then.
                    if self.voters_outgoing.contains(&id) {
                        self.learners_next.insert(id);
                    } else {
                        self.learners.insert(id);
                    }
                }
                ConfChangeType::RemoveNode => {
                    self.voters.remove(&id);
                    self.learners.remove(&id);
                    self.learners_next.remove(&id);
                }
            }
        }
        if self.voters.is_empty() {
            return Err("the change removes every voter".into());
        }
        Ok(())
    }

    /// The module's invariants.
    pub(crate) fn check(&self) -> Result<(), String> {
        let all = self.voters.iter().chain(&self.voters_outgoing).chain(&self.learners).chain(&self.learners_next);
        if all.clone().any(|&id| id == 0) {
            return Err("node id 0 is reserved for \"none\"".into());
        }
        if let Some(id) = self.learners.iter().find(|&&id| self.is_voter(id)) {
            return Err(format!("node {id} is both a learner and a voter"));
        }
        if let Some(id) = self.learners_next.iter().find(|id| !self.voters_outgoing.contains(id)) {
            return Err(format!("node {id} is to become a learner but is not an outgoing voter"));
        }
        if let Some(id) = self.learners_next.iter().find(|id| self.voters.contains(id) || self.learners.contains(id)) {
            return Err(format!("node {id} is to become a learner but is a voter or learner already"));
        }
        if !self.is_joint() && (!self.learners_next.is_empty() || self.auto_leave) {
            return Err("learners_next or auto_leave set outside a joint configuration".into());
        }
        Ok(())
    }
}

/// The `q`-th highest acknowledged index of `ids`, `q` a majority; `u64::MAX` for no voters
/// (an empty half never holds a joint decision back).
fn majority_committed(ids: &BTreeSet<u64>, acked: &impl Fn(u64) -> u64) -> u64 {
    if ids.is_empty() {
        return u64::MAX;
    }
    let mut v: Vec<u64> = ids.iter().map(|&id| acked(id)).collect();
    v.sort_unstable_by(|a, b| b.cmp(a));
    v[ids.len() / 2]
}

fn majority_vote(ids: &BTreeSet<u64>, vote: &impl Fn(u64) -> Option<bool>) -> VoteResult {
    if ids.is_empty() {
        return VoteResult::Won;
    }
    let quorum = ids.len() / 2 + 1;
    let yes = ids.iter().filter(|&&id| vote(id) == Some(true)).count();
    let missing = ids.iter().filter(|&&id| vote(id).is_none()).count();
    if yes >= quorum {
        VoteResult::Won
    } else if yes + missing >= quorum {
        VoteResult::Pending
    } else {
        VoteResult::Lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::conf_change::ConfChangeTransition;

    fn m(voters: &[u64], outgoing: &[u64]) -> Membership {
        Membership {
            voters: voters.iter().copied().collect(),
            voters_outgoing: outgoing.iter().copied().collect(),
            ..Membership::default()
        }
    }

    #[test]
    fn joint_commit_needs_a_majority_of_both_halves() {
        // Old {1,2,3}, new {3,4,5}: 1,2,3 acknowledged 10, 4 and 5 only 4.
        let j = m(&[3, 4, 5], &[1, 2, 3]);
        let acked = |id: u64| if id <= 3 { 10 } else { 4 };
        assert_eq!(j.committed_index(acked), 4, "the new half holds it back");
        assert_eq!(m(&[1, 2, 3], &[]).committed_index(acked), 10);
        let acked = |id: u64| if id >= 3 { 10 } else { 4 };
        assert_eq!(j.committed_index(acked), 4, "the old half holds it back");
        assert_eq!(j.committed_index(|_| 7), 7);
    }

    #[test]
    fn joint_votes_need_a_majority_of_both_halves() {
        let j = m(&[3, 4, 5], &[1, 2, 3]);
        let votes = |yes: &'static [u64], no: &'static [u64]| {
            move |id: u64| {
                if yes.contains(&id) {
                    Some(true)
                } else if no.contains(&id) {
                    Some(false)
                } else {
                    None
                }
            }
        };
        assert_eq!(j.vote_result(votes(&[3, 4, 5], &[])), VoteResult::Pending, "old half has only 3");
        assert_eq!(j.vote_result(votes(&[2, 3, 4], &[])), VoteResult::Won);
        assert_eq!(j.vote_result(votes(&[3, 4, 5], &[1, 2])), VoteResult::Lost);
        assert_eq!(m(&[1], &[]).vote_result(votes(&[1], &[])), VoteResult::Won);
    }

    #[test]
    fn changes_follow_etcds_changer() {
        let base = m(&[1, 2, 3], &[]);
        let add = |t, id| ConfChangeSingle { change_type: t, node_id: id };
        use ConfChangeType::*;
        // Simple: one voter at a time.
        let one = base.apply(&ConfChange::simple(AddNode, 4)).unwrap();
        assert_eq!(one.voters, [1, 2, 3, 4].into());
        let learner = base.apply(&ConfChange::simple(AddLearnerNode, 5)).unwrap();
        assert_eq!(learner.learners, [5].into());
        let promoted = learner.apply(&ConfChange::simple(AddNode, 5)).unwrap();
        assert_eq!((promoted.voters.len(), promoted.learners.len()), (4, 0));
        // Two voters: joint, with the auto-leave flag by transition.
        let two = ConfChange { changes: vec![add(AddNode, 4), add(RemoveNode, 1)], ..ConfChange::default() };
        let joint = base.apply(&two).unwrap();
        assert_eq!((joint.voters.clone(), joint.voters_outgoing.clone()), ([2, 3, 4].into(), [1, 2, 3].into()));
        assert!(joint.auto_leave);
        assert!(joint.apply(&two).unwrap_err().contains("joint already"));
        assert!(joint.apply(&ConfChange::simple(AddNode, 9)).unwrap_err().contains("joint"));
        let left = joint.apply(&ConfChange::leave_joint()).unwrap();
        assert_eq!(left, m(&[2, 3, 4], &[]));
        assert!(left.apply(&ConfChange::leave_joint()).is_err());
        // Demoting a voter while joint: a learner only once the joint configuration is left.
        let demote = ConfChange {
            transition: ConfChangeTransition::Explicit,
            changes: vec![add(AddLearnerNode, 3)],
            context: Vec::new(),
        };
        let joint = base.apply(&demote).unwrap();
        assert_eq!((joint.learners_next.clone(), joint.auto_leave), ([3].into(), false));
        let left = joint.apply(&ConfChange::leave_joint()).unwrap();
        assert_eq!((left.voters.clone(), left.learners.clone()), ([1, 2].into(), [3].into()));
        // Refused: every voter removed, id 0.
        let remove_all = ConfChange {
            transition: ConfChangeTransition::Implicit,
            changes: vec![add(RemoveNode, 1), add(RemoveNode, 2), add(RemoveNode, 3)],
            context: Vec::new(),
        };
        assert!(base.apply(&remove_all).unwrap_err().contains("every voter"));
        assert!(base.apply(&ConfChange::simple(AddNode, 0)).is_err());
    }

    #[test]
    fn bad_conf_states_are_refused() {
        let cs = |v: &[u64], l: &[u64], o: &[u64], ln: &[u64], auto| ConfState {
            voters: v.to_vec(),
            learners: l.to_vec(),
            voters_outgoing: o.to_vec(),
            learners_next: ln.to_vec(),
            auto_leave: auto,
        };
        assert!(Membership::from_conf_state(&cs(&[1, 2], &[3], &[], &[], false)).is_ok());
        assert!(Membership::from_conf_state(&cs(&[1, 2], &[2], &[], &[], false)).is_err());
        assert!(Membership::from_conf_state(&cs(&[1], &[], &[1, 2], &[2], true)).is_ok());
        assert!(Membership::from_conf_state(&cs(&[1], &[], &[1, 2], &[3], true)).is_err());
        assert!(Membership::from_conf_state(&cs(&[1], &[], &[], &[], true)).is_err());
        assert!(Membership::from_conf_state(&cs(&[0], &[], &[], &[], false)).is_err());
    }
}
