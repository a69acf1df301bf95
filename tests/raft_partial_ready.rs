//! Partial Readies (a Ready held unpersisted, as the threaded `Node` holds one on a full disk),
//! on `RawNode`s wired by hand: found by an adversarial review of the full-disk change. A node
//! whose HardState (new term, own vote) waits for space must not lead in that term, or a crash
//! could let it lead the same term twice with another log; `has_ready_while_persisting` must
//! turn false while a snapshot waits; a partial Ready is advanced once, and before the Ready it
//! was split from.

use keel::raft::{Config, Message, MessageType, RawNode, Ready, Role};
use keel::storage::{ConfState, Entry, MemStorage, Storage, StorageMut};
use std::collections::{BTreeMap, BTreeSet};

fn bootstrap(voters: &[u64]) -> MemStorage {
    let mut s = MemStorage::new();
    s.set_conf_state(&ConfState { voters: voters.to_vec(), ..ConfState::default() }).unwrap();
    s
}

struct Net {
    nodes: BTreeMap<u64, RawNode<MemStorage>>,
    /// Nodes whose disk is full: a Ready with something to persist is held, and meanwhile
    /// only partial Readies are handled (as `Node` does).
    full: BTreeSet<u64>,
    held: BTreeMap<u64, Ready>,
    /// Links (from, to) that drop messages.
    cut: BTreeSet<(u64, u64)>,
    applied: BTreeMap<u64, Vec<Entry>>,
}

impl Net {
    fn new(voters: &[u64]) -> Net {
        let nodes = voters.iter().map(|&id| (id, RawNode::new(&Config::new(id), bootstrap(voters)).unwrap())).collect();
        Net { nodes, full: BTreeSet::new(), held: BTreeMap::new(), cut: BTreeSet::new(), applied: BTreeMap::new() }
    }

    fn apply(&mut self, id: u64, rd: &Ready) {
        self.applied.entry(id).or_default().extend(rd.committed_entries.iter().cloned());
    }

    /// Handles `id`'s Readies; returns the messages it sends.
    fn process(&mut self, id: u64) -> Vec<Message> {
        let mut out = Vec::new();
        loop {
            let node = self.nodes.get_mut(&id).unwrap();
            if let Some(mut held) = self.held.remove(&id) {
                if !self.full.contains(&id) {
                    node.persist(&held).unwrap();
                    out.append(&mut held.messages);
                    out.append(&mut held.persisted_messages);
                    self.apply(id, &held);
                    self.nodes.get_mut(&id).unwrap().advance(held).unwrap();
                    continue;
                }
                if !node.has_ready_while_persisting() {
                    self.held.insert(id, held);
                    return out;
                }
                let p = node.ready_while_persisting().unwrap();
                self.held.insert(id, held);
                if !p.has_sendable() {
                    // nothing in it (see the second finding)
                    self.nodes.get_mut(&id).unwrap().advance(p).unwrap();
                    return out;
                }
                assert!(p.persisted_messages.is_empty() && p.hard_state.is_none() && p.entries.is_empty());
                out.extend(p.messages.iter().cloned());
                self.apply(id, &p);
                self.nodes.get_mut(&id).unwrap().advance(p).unwrap();
                continue;
            }
            if !node.has_ready() {
                return out;
            }
            let mut rd = node.ready().unwrap();
            let to_persist = rd.hard_state.is_some() || !rd.entries.is_empty() || rd.snapshot.is_some();
            if self.full.contains(&id) && to_persist {
                // Error::NoSpace: keep it, hand out what may leave before it is durable.
                let p = node.take_sendable(&mut rd).unwrap();
                self.held.insert(id, rd);
                out.extend(p.messages.iter().cloned());
                self.apply(id, &p);
                self.nodes.get_mut(&id).unwrap().advance(p).unwrap();
                continue;
            }
            node.persist(&rd).unwrap();
            out.append(&mut rd.messages);
            out.append(&mut rd.persisted_messages);
            self.apply(id, &rd);
            self.nodes.get_mut(&id).unwrap().advance(rd).unwrap();
        }
    }

    /// One round: every node's Readies, then their messages delivered. Whether any moved.
    fn round(&mut self) -> bool {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        let mut msgs = Vec::new();
        for id in ids {
            msgs.extend(self.process(id));
        }
        if msgs.is_empty() {
            return false;
        }
        for m in msgs {
            if self.cut.contains(&(m.from, m.to)) || !self.nodes.contains_key(&m.to) {
                continue;
            }
            let _ = self.nodes.get_mut(&m.to).unwrap().step(m);
        }
        true
    }

    /// Delivers messages until the network is quiet.
    fn pump(&mut self) {
        while self.round() {}
    }

    fn role(&self, id: u64) -> Role {
        self.nodes[&id].status().soft_state.role
    }

    fn data_at(&self, id: u64, index: u64) -> Option<Vec<u8>> {
        self.applied.get(&id)?.iter().find(|e| e.index == index).map(|e| e.data.to_vec())
    }

    /// A crash: what was not persisted is gone.
    fn crash_and_restart(&mut self, id: u64) {
        let storage = self.nodes.remove(&id).unwrap().into_storage();
        self.held.remove(&id);
        self.applied.remove(&id);
        self.nodes.insert(id, RawNode::new(&Config::new(id), storage).unwrap());
    }
}

/// A full candidate whose vote requests (sent before anything is durable) win it a quorum of
/// the others' votes does not lead until its own term and vote are persisted: had it led, its
/// appends would leave in partial Readies, and a crash before the term was durable would let it
/// win and lead the same term again with a different log (the review's case: two different
/// entries at one (index, term)). Once space returns it leads, and a crash before that leaves
/// nothing behind that conflicts.
#[test]
fn a_full_candidate_leads_only_once_its_term_is_durable() {
    let mut net = Net::new(&[1, 2, 3]);
    net.full.insert(1);
    net.nodes.get_mut(&1).unwrap().campaign().unwrap();
    for _ in 0..10 {
        net.round();
    }
    assert_ne!(net.role(1), Role::Leader, "leads in a term that is not durable");
    assert_eq!(net.nodes[&1].storage().initial_state().unwrap().hard_state.term, 0);
    assert!(net.nodes[&2].last_index() == 0 && net.nodes[&3].last_index() == 0, "no appends of that term left");
    // A crash now forgets the campaign; the restarted node campaigns again and leads, and so
    // does everyone agree on the log.
    net.full.remove(&1);
    net.crash_and_restart(1);
    net.nodes.get_mut(&1).unwrap().campaign().unwrap();
    net.pump();
    assert_eq!(net.role(1), Role::Leader);
    net.nodes.get_mut(&1).unwrap().propose(b"x".to_vec()).unwrap();
    net.pump();
    for _ in 0..3 {
        net.nodes.get_mut(&1).unwrap().tick();
        net.pump();
    }
    let x = net.nodes[&1].last_index();
    assert_eq!(net.data_at(1, x), Some(b"x".to_vec()));
    assert_eq!(net.data_at(2, x), net.data_at(1, x));
    assert_eq!(net.data_at(3, x), net.data_at(1, x));
}

/// The invariant behind the test above: a node sends nothing as leader (appends, heartbeats,
/// TimeoutNow, ReadIndex answers) in a term its storage does not hold durably.
#[test]
fn a_full_node_sends_nothing_as_leader_in_a_term_not_durable() {
    let mut net = Net::new(&[1, 2, 3]);
    net.full.insert(1);
    net.nodes.get_mut(&1).unwrap().campaign().unwrap();
    for _ in 0..20 {
        let durable = net.nodes[&1].storage().initial_state().unwrap().hard_state.term;
        let sent = net.process(1);
        for m in &sent {
            if matches!(
                m.kind,
                MessageType::Append | MessageType::Heartbeat | MessageType::TimeoutNow | MessageType::ReadIndexResponse
            ) {
                assert!(
                    m.term <= durable,
                    "node 1 sent {:?} in term {} while its durable term is {durable}",
                    m.kind,
                    m.term
                );
            }
        }
        for m in sent {
            let _ = net.nodes.get_mut(&m.to).unwrap().step(m);
        }
        for id in [2, 3] {
            for m in net.process(id) {
                let _ = net.nodes.get_mut(&m.to).unwrap().step(m);
            }
        }
    }
    // Once space returns it is elected normally.
    net.full.remove(&1);
    net.pump();
    assert_eq!(net.role(1), Role::Leader);
}

/// While the held Ready installs a snapshot (its `apply_snapshot` answered NoSpace),
/// `has_ready_while_persisting` stays true although `ready_while_persisting` has nothing to
/// hand out: the log reports the unpersisted snapshot's index as persisted
/// (`RaftLog::persisted_index`), so `has_next_committed` is true, while `next_committed` starts
/// above the snapshot. An application looping on it (as the API invites) spins.
#[test]
fn has_ready_while_persisting_turns_false_while_a_snapshot_waits_for_space() {
    use keel::storage::{Snapshot, SnapshotMetadata};
    let mut node = RawNode::new(&Config::new(3), bootstrap(&[1, 2, 3])).unwrap();
    let mut m = Message::new(MessageType::Snapshot, 1, 3, 2);
    m.snapshot = Some(Snapshot::from_bytes(
        SnapshotMetadata {
            index: 10,
            term: 2,
            conf_state: ConfState { voters: vec![1, 2, 3], ..ConfState::default() },
        },
        &b"s"[..],
    ));
    node.step(m).unwrap();
    let mut held = node.ready().unwrap();
    assert!(held.snapshot.is_some());
    // The disk is full: the snapshot cannot be installed. What may leave goes out.
    let p = node.take_sendable(&mut held).unwrap();
    node.advance(p).unwrap();
    let mut empty = 0;
    for _ in 0..100 {
        if !node.has_ready_while_persisting() {
            break;
        }
        let p = node.ready_while_persisting().unwrap();
        if !p.has_sendable() {
            empty += 1;
        }
        node.advance(p).unwrap();
    }
    assert!(
        !node.has_ready_while_persisting(),
        "has_ready_while_persisting still true after 100 partial Readies, {empty} of them empty"
    );
}

/// A partial Ready is advanced once, and before the Ready it was handed out beside; a second
/// partial is not taken while one is out.
#[test]
fn a_partial_ready_is_advanced_once_and_first() {
    use keel::raft::RaftError;
    let mut net = Net::new(&[1, 2, 3]);
    net.nodes.get_mut(&1).unwrap().campaign().unwrap();
    net.pump();
    assert_eq!(net.role(1), Role::Leader);
    // 1's disk fills while a proposal is persisted.
    let n1 = net.nodes.get_mut(&1).unwrap();
    n1.propose(b"p".to_vec()).unwrap();
    let mut held = n1.ready().unwrap();
    assert!(!held.entries.is_empty());
    let p1 = n1.take_sendable(&mut held).unwrap();
    assert!(matches!(n1.ready_while_persisting(), Err(RaftError::PartialOutstanding)));
    assert!(!n1.has_ready_while_persisting());
    assert!(matches!(n1.advance(held.clone()), Err(RaftError::PartialOutstanding)));
    n1.advance(p1.clone()).unwrap();
    assert!(matches!(n1.advance(p1), Err(RaftError::NotOutstanding)), "a partial Ready advanced twice");
    n1.tick();
    if n1.has_ready_while_persisting() {
        let p2 = n1.ready_while_persisting().unwrap();
        assert!(matches!(n1.take_sendable(&mut held), Err(RaftError::PartialOutstanding)));
        n1.advance(p2).unwrap();
    }
    n1.persist(&held).unwrap();
    n1.advance(held).unwrap();
}

/// Campaigns on 1 and runs the pre-vote round by hand: 1 is then a candidate with its vote
/// requests and HardState not yet taken in a Ready.
fn to_candidate(net: &mut Net) {
    net.nodes.get_mut(&1).unwrap().campaign().unwrap();
    let pre = net.process(1);
    for m in pre {
        let to = m.to;
        net.nodes.get_mut(&to).unwrap().step(m).unwrap();
        for v in net.process(to) {
            net.nodes.get_mut(&1).unwrap().step(v).unwrap();
        }
    }
    assert_eq!(net.role(1), Role::Candidate);
}

// Liveness of liveness of "a candidate leads only once its own vote is persisted" (from a second review).

/// Votes arrive while the Ready holding the candidate's vote is taken but not yet advanced (the
/// normal, non-full case with a slow fsync): it leads on that Ready's advance, with no new
/// election.
#[test]
fn votes_before_advance_then_leads_on_advance() {
    let mut net = Net::new(&[1, 2, 3]);
    to_candidate(&mut net);
    let n1 = net.nodes.get_mut(&1).unwrap();
    let mut rd = n1.ready().unwrap();
    let term = rd.hard_state.unwrap().term;
    let reqs = std::mem::take(&mut rd.messages);
    for m in reqs {
        let to = m.to;
        net.nodes.get_mut(&to).unwrap().step(m).unwrap();
        for v in net.process(to) {
            net.nodes.get_mut(&1).unwrap().step(v).unwrap();
        }
    }
    assert_eq!(net.role(1), Role::Candidate, "leads before its vote is durable");
    let n1 = net.nodes.get_mut(&1).unwrap();
    n1.persist(&rd).unwrap();
    n1.advance(rd).unwrap();
    assert_eq!(net.role(1), Role::Leader);
    assert_eq!(net.nodes[&1].status().hard_state.term, term, "no new election");
}

/// The Ready with the vote is persisted and advanced before any vote arrives: the others' votes
/// then win at once.
#[test]
fn vote_persisted_first_then_votes_win() {
    let mut net = Net::new(&[1, 2, 3, 4, 5]);
    to_candidate(&mut net);
    let reqs = net.process(1);
    assert_eq!(net.role(1), Role::Candidate);
    for m in reqs {
        let to = m.to;
        net.nodes.get_mut(&to).unwrap().step(m).unwrap();
        for v in net.process(to) {
            net.nodes.get_mut(&1).unwrap().step(v).unwrap();
        }
    }
    assert_eq!(net.role(1), Role::Leader);
}

/// A single voter, and pre-vote: elected through `self_vote_persisted` alone.
#[test]
fn single_voter_and_pre_vote() {
    for pre_vote in [false, true] {
        let mut c = Config::new(1);
        c.pre_vote = pre_vote;
        let mut n = RawNode::new(&c, bootstrap(&[1])).unwrap();
        n.campaign().unwrap();
        while n.has_ready() {
            let rd = n.ready().unwrap();
            n.persist(&rd).unwrap();
            n.advance(rd).unwrap();
        }
        assert_eq!(n.status().soft_state.role, Role::Leader, "pre_vote {pre_vote}");
    }
}

/// A full candidate (pre-vote on) gets the others' votes, stays candidate, re-campaigns in later
/// terms while full; once space returns it (or another) is elected without outside help.
#[test]
fn full_candidate_recampaigns_then_leads_when_space_returns() {
    let mut net = Net::new(&[1, 2, 3]);
    net.full.insert(1);
    for _ in 0..5 {
        net.nodes.get_mut(&1).unwrap().campaign().unwrap();
        for _ in 0..5 {
            net.round();
        }
        assert_ne!(net.role(1), Role::Leader);
    }
    net.full.remove(&1);
    net.pump();
    let leaders: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| net.role(id) == Role::Leader).collect();
    assert_eq!(leaders, vec![1]);
}
