//! What a database needs from Raft beyond §5 of the paper, one behaviour per test, following the
//! cases of etcd-io/raft's `raft_test.go` and raft-rs's `test_raft.rs`: membership changes (thesis
//! §4: simple and joint, learners, removal of the leader), linearizable reads (§6.4: ReadIndex and
//! the lease), leadership transfer (§3.10), snapshot reports, storage failures and misuse of the
//! Ready/advance protocol.

use keel::raft::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, Config, Message, MessageType, ProgressState,
    ProposeError, RaftError, RawNode, ReadOnlyOption, ReadState, Role, SnapshotStatus,
};
use keel::storage::{ConfState, Entry, EntryType, HardState, MemStorage, RaftState, Snapshot, Storage, StorageMut};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use ConfChangeType::{AddLearnerNode, AddNode, RemoveNode};

fn bootstrap(voters: &[u64]) -> MemStorage {
    let mut s = MemStorage::new();
    s.set_conf_state(&ConfState { voters: voters.to_vec(), ..ConfState::default() }).unwrap();
    s
}

fn change(t: ConfChangeType, id: u64) -> ConfChangeSingle {
    ConfChangeSingle { change_type: t, node_id: id }
}

fn joint(transition: ConfChangeTransition, changes: Vec<ConfChangeSingle>) -> ConfChange {
    ConfChange { transition, changes, context: Vec::new() }
}

/// Nodes over `MemStorage`, a message queue delivered by rounds, and an application that applies
/// committed entries (membership changes through `apply_conf_change`) and collects read states.
struct Net {
    nodes: BTreeMap<u64, RawNode<MemStorage>>,
    queue: Vec<Message>,
    isolated: BTreeSet<u64>,
    applied: BTreeMap<u64, Vec<Entry>>,
    reads: BTreeMap<u64, Vec<ReadState>>,
    /// Every configuration a node applied, in order.
    confs: BTreeMap<u64, Vec<ConfState>>,
    bootstrap: Vec<u64>,
}

impl Net {
    fn with(voters: &[u64], cfg: impl Fn(u64) -> Config) -> Net {
        let nodes = voters.iter().map(|&id| (id, RawNode::new(&cfg(id), bootstrap(voters)).unwrap())).collect();
        Net {
            nodes,
            queue: Vec::new(),
            isolated: BTreeSet::new(),
            applied: BTreeMap::new(),
            reads: BTreeMap::new(),
            confs: BTreeMap::new(),
            bootstrap: voters.to_vec(),
        }
    }

    fn new(voters: &[u64]) -> Net {
        Net::with(voters, Config::new)
    }

    /// Starts node `id` as a joining node: the bootstrap configuration and an empty log.
    fn join(&mut self, id: u64) {
        let mut cfg = Config::new(id);
        cfg.joining = true;
        let node = RawNode::new(&cfg, bootstrap(&self.bootstrap)).unwrap();
        self.nodes.insert(id, node);
    }

    fn node(&mut self, id: u64) -> &mut RawNode<MemStorage> {
        self.nodes.get_mut(&id).unwrap()
    }

    fn persist(&mut self, id: u64) {
        while self.nodes[&id].has_ready() {
            let node = self.nodes.get_mut(&id).unwrap();
            let rd = node.ready().unwrap();
            for m in rd.messages.iter().chain(&rd.persisted_messages) {
                assert_eq!(m.from, id, "a node sends only as itself (transports check it): {m:?}");
            }
            self.queue.extend(rd.messages.iter().cloned());
            node.persist(&rd).unwrap();
            self.queue.extend(rd.persisted_messages.iter().cloned());
            for e in &rd.committed_entries {
                if e.entry_type == EntryType::ConfChangeV2 {
                    let cc = ConfChange::decode(&e.data).unwrap();
                    let cs = node.apply_conf_change(&cc).unwrap();
                    self.confs.entry(id).or_default().push(cs);
                }
                self.applied.entry(id).or_default().push(e.clone());
            }
            self.reads.entry(id).or_default().extend(rd.read_states.iter().cloned());
            node.advance(rd).unwrap();
        }
    }

    fn persist_all(&mut self) {
        for id in self.nodes.keys().copied().collect::<Vec<_>>() {
            self.persist(id);
        }
    }

    fn deliver(&mut self, m: Message) {
        if !self.isolated.contains(&m.from) && !self.isolated.contains(&m.to) && self.nodes.contains_key(&m.to) {
            let _ = self.node(m.to).step(m);
        }
    }

    fn settle(&mut self) {
        for _ in 0..1_000 {
            self.persist_all();
            if self.queue.is_empty() {
                return;
            }
            for m in std::mem::take(&mut self.queue) {
                self.deliver(m);
            }
        }
        panic!("the network did not settle");
    }

    fn elect(&mut self, id: u64) {
        self.node(id).campaign().unwrap();
        self.settle();
        assert_eq!(self.role(id), Role::Leader, "node {id} should have won");
    }

    /// Ticks `id` `n` times, settling after each.
    fn tick(&mut self, id: u64, n: usize) {
        for _ in 0..n {
            self.node(id).tick();
            self.settle();
        }
    }

    fn role(&self, id: u64) -> Role {
        self.nodes[&id].status().soft_state.role
    }

    fn conf(&self, id: u64) -> ConfState {
        self.nodes[&id].status().conf_state
    }

    fn commit(&self, id: u64) -> u64 {
        self.nodes[&id].status().hard_state.commit
    }

    fn last(&self, id: u64) -> u64 {
        self.nodes[&id].status().last_index
    }

    fn applied_index(&self, id: u64) -> u64 {
        self.applied.get(&id).and_then(|v| v.last()).map_or(0, |e| e.index)
    }

    fn applied_data(&self, id: u64) -> Vec<Vec<u8>> {
        self.applied.get(&id).map_or(Vec::new(), |v| {
            v.iter()
                .filter(|e| e.entry_type == EntryType::Normal && !e.data.is_empty())
                .map(|e| e.data.to_vec())
                .collect()
        })
    }

    fn propose(&mut self, id: u64, data: &[u8]) {
        self.node(id).propose(data.to_vec()).unwrap();
        self.settle();
    }

    /// Proposes a membership change and lets everyone apply it (and the automatic leaving of a
    /// joint configuration): a heartbeat round carries the final commit index.
    fn change(&mut self, leader: u64, cc: &ConfChange) {
        self.node(leader).propose_conf_change(cc).unwrap();
        self.settle();
        self.tick(leader, 1);
    }
}

/// PreVote on, CheckQuorum off: followers do not hold on to a leader's lease, so a test can
/// elect another node at once.
fn no_lease(id: u64) -> Config {
    let mut c = Config::new(id);
    c.check_quorum = false;
    c
}

fn voters(cs: &ConfState) -> Vec<u64> {
    cs.voters.clone()
}

// ---------------------------------------------------------------------------------------------
// Membership changes

#[test]
fn adding_a_voter_simply_grows_the_quorum() {
    // etcd: TestAddNode. After {1,2,3} + 4 the quorum is three of four: two nodes no longer commit.
    let mut n = Net::new(&[1, 2, 3]);
    n.elect(1);
    n.join(4);
    n.change(1, &ConfChange::simple(AddNode, 4));
    for id in 1..=4 {
        assert_eq!(voters(&n.conf(id)), vec![1, 2, 3, 4], "node {id}");
    }
    assert_eq!(n.last(4), n.last(1), "the new voter caught up from the leader's log");
    n.isolated = [3, 4].into();
    let before = n.commit(1);
    n.propose(1, b"needs three");
    assert_eq!(n.commit(1), before, "1 and 2 are not a quorum of four");
    n.isolated = [4].into();
    n.tick(1, 1);
    assert!(n.commit(1) > before, "1, 2 and 3 are");
}

#[test]
fn a_learner_takes_the_log_but_neither_counts_nor_campaigns() {
    // etcd: TestLearnerElectionTimeout, TestLearnerCanNotVote-like, TestLearnerLogReplication.
    let mut n = Net::new(&[1, 2, 3]);
    n.elect(1);
    n.join(4);
    n.change(1, &ConfChange::simple(AddLearnerNode, 4));
    assert_eq!(n.conf(1).learners, vec![4]);
    n.propose(1, b"to the learner too");
    assert_eq!(n.applied_data(4), vec![b"to the learner too".to_vec()]);
    // Its acknowledgement does not count: leader + learner cannot commit.
    n.isolated = [2, 3].into();
    let before = n.commit(1);
    n.propose(1, b"x");
    assert_eq!(n.commit(1), before);
    // It never campaigns, however long it hears nothing.
    n.isolated = [1].into();
    for _ in 0..100 {
        n.node(4).tick();
    }
    n.persist(4);
    assert!(n.queue.iter().all(|m| m.from != 4), "a learner sent {:?}", n.queue);
    assert_eq!(n.role(4), Role::Follower);
}

#[test]
fn a_learner_is_promoted_to_voter() {
    // etcd: TestLearnerPromotion.
    let mut n = Net::with(&[1, 2], no_lease);
    n.elect(1);
    n.join(3);
    n.change(1, &ConfChange::simple(AddLearnerNode, 3));
    assert_eq!((voters(&n.conf(3)), n.conf(3).learners), (vec![1, 2], vec![3]));
    n.change(1, &ConfChange::simple(AddNode, 3));
    assert_eq!((voters(&n.conf(3)), n.conf(3).learners), (vec![1, 2, 3], vec![]));
    // Now it can lead.
    n.isolated = [1].into();
    n.node(3).campaign().unwrap();
    n.settle();
    assert_eq!(n.role(3), Role::Leader);
}

#[test]
fn a_learners_vote_does_not_count() {
    // etcd: TestLearnerCannotVote-like. With voters {1,2,3} and learner 4, a candidate granted
    // votes by itself and the learner has no quorum; one more voter's vote makes it leader.
    let mut n = Net::with(&[1, 2, 3], no_lease);
    n.elect(1);
    n.join(4);
    n.change(1, &ConfChange::simple(AddLearnerNode, 4));
    n.isolated = [1, 3].into();
    n.node(2).campaign().unwrap();
    n.settle();
    assert!(n.queue.is_empty());
    assert_eq!(n.role(2), Role::PreCandidate);
    // Asked or not (it is not: only voters are), a learner's granted pre-vote does not count.
    let term = n.nodes[&2].status().hard_state.term;
    let grant = Message::new(MessageType::RequestPreVoteResponse, 4, 2, term + 1);
    n.node(2).step(grant).unwrap();
    assert_eq!(n.role(2), Role::PreCandidate, "2 and the learner 4 are not a quorum of {{1,2,3}}");
    n.isolated = [1].into();
    n.node(2).campaign().unwrap();
    n.settle();
    assert_eq!(n.role(2), Role::Leader);
}

#[test]
fn a_change_racing_a_leader_change_is_committed_by_the_next_leader_or_lost() {
    // A change the old leader replicated to a quorum survives the leader change and is applied
    // everywhere; one it did not replicate is lost, and the new leader takes a change of its own.
    for replicated in [true, false] {
        let mut n = Net::with(&[1, 2, 3], no_lease);
        n.elect(1);
        n.join(4);
        n.node(1).propose_conf_change(&ConfChange::simple(AddLearnerNode, 4)).unwrap();
        n.persist(1);
        let to_2: Vec<Message> = n.queue.drain(..).filter(|m| m.to == 2 && replicated).collect();
        n.queue.clear();
        for m in to_2 {
            n.node(2).step(m).unwrap();
        }
        n.persist(2);
        n.queue.clear(); // the acknowledgement is lost: 1 never learns the change committed
        n.isolated = [1].into();
        n.node(2).campaign().unwrap();
        n.settle();
        assert_eq!(n.role(2), Role::Leader);
        n.tick(2, 1);
        let learners = n.conf(2).learners;
        if replicated {
            assert_eq!(learners, vec![4], "committed by the new leader through its own entry");
            assert_eq!(n.conf(3).learners, vec![4]);
        } else {
            assert!(learners.is_empty(), "lost with the old leader");
            n.change(2, &ConfChange::simple(AddLearnerNode, 5));
            assert_eq!(n.conf(3).learners, vec![5]);
        }
        // The old leader rejoins and takes the new leader's log (and its membership).
        n.isolated.clear();
        n.tick(2, 2);
        assert_eq!(n.conf(1), n.conf(2), "replicated: {replicated}");
    }
}

#[test]
fn a_joint_change_enters_c_old_new_and_leaves_it_on_its_own() {
    // Thesis §4.3; etcd: TestJointConfigurations (auto leave). Replace 3 by 4 and 5 in one change.
    let mut n = Net::new(&[1, 2, 3]);
    n.elect(1);
    n.join(4);
    n.join(5);
    let cc = joint(ConfChangeTransition::Auto, vec![change(AddNode, 4), change(AddNode, 5), change(RemoveNode, 3)]);
    n.change(1, &cc);
    let seen = &n.confs[&1];
    assert_eq!(seen.len(), 2, "entered and left: {seen:?}");
    assert_eq!((seen[0].voters.clone(), seen[0].voters_outgoing.clone()), (vec![1, 2, 4, 5], vec![1, 2, 3]));
    assert!(seen[0].auto_leave);
    assert_eq!(seen[1], ConfState { voters: vec![1, 2, 4, 5], ..ConfState::default() });
    for id in [1, 2, 4, 5] {
        assert_eq!(n.conf(id), seen[1], "node {id}");
    }
    assert!(n.nodes[&1].status().progress.keys().all(|&id| id != 3), "3's progress is gone");
}

#[test]
fn while_joint_a_decision_needs_a_majority_of_both_halves() {
    // Thesis §4.3. Old {1,2,3}, new {1,4,5}, left only when the application asks (Explicit).
    let mut n = Net::new(&[1, 2, 3]);
    n.elect(1);
    n.join(4);
    n.join(5);
    let cc = joint(
        ConfChangeTransition::Explicit,
        vec![change(AddNode, 4), change(AddNode, 5), change(RemoveNode, 2), change(RemoveNode, 3)],
    );
    n.change(1, &cc);
    let cs = n.conf(1);
    assert_eq!((cs.voters.clone(), cs.voters_outgoing.clone(), cs.auto_leave), (vec![1, 4, 5], vec![1, 2, 3], false));
    // The new half alone (1, 4, 5) does not commit A...
    n.isolated = [2, 3].into();
    let before = n.commit(1);
    n.propose(1, b"A");
    let a = n.last(1);
    assert_eq!(n.commit(1), before, "the old half has only node 1");
    // ...the old half (1, 2, 3) takes A and B: A is now held by both, B only by the old half.
    n.isolated = [4, 5].into();
    n.propose(1, b"B");
    n.tick(1, 1);
    assert_eq!(n.commit(1), a, "B: the new half has only node 1");
    // Both halves: 1, 2 (old) and 1, 4 (new).
    n.isolated = [3, 5].into();
    n.tick(1, 1);
    assert_eq!(n.commit(1), a + 1);
    // A joint configuration only leaves; the application asks for it.
    let refused = n.node(1).propose_conf_change(&ConfChange::simple(AddNode, 6));
    assert!(matches!(refused, Err(RaftError::Propose(ProposeError::InvalidConfChange(_)))), "{refused:?}");
    n.isolated.clear();
    n.change(1, &ConfChange::leave_joint());
    assert_eq!(n.conf(1), ConfState { voters: vec![1, 4, 5], ..ConfState::default() });
}

#[test]
fn only_one_change_is_pending_at_a_time_and_bad_changes_are_refused() {
    // etcd: TestStepIgnoreConfig, TestNewLeaderPendingConfig, the changer's error table.
    let mut n = Net::new(&[1, 2, 3]);
    n.elect(1);
    n.node(1).propose_conf_change(&ConfChange::simple(AddLearnerNode, 4)).unwrap();
    let second = n.node(1).propose_conf_change(&ConfChange::simple(AddLearnerNode, 5));
    assert!(matches!(second, Err(RaftError::Propose(ProposeError::ConfChangePending { .. }))), "{second:?}");
    n.settle();
    n.node(1).propose_conf_change(&ConfChange::simple(AddLearnerNode, 5)).unwrap();
    n.settle();
    assert_eq!(n.conf(1).learners, vec![4, 5]);
    let refuse = |n: &mut Net, cc: ConfChange| {
        let r = n.node(1).propose_conf_change(&cc);
        assert!(matches!(r, Err(RaftError::Propose(ProposeError::InvalidConfChange(_)))), "{cc:?}: {r:?}");
    };
    refuse(&mut n, ConfChange::leave_joint());
    refuse(
        &mut n,
        joint(
            ConfChangeTransition::Implicit,
            vec![change(RemoveNode, 1), change(RemoveNode, 2), change(RemoveNode, 3)],
        ),
    );
    refuse(&mut n, ConfChange::simple(AddNode, 0));
    // A forwarded proposal whose entry is not a membership change at all.
    let mut m = Message::new(MessageType::Propose, 2, 1, 0);
    let mut e = Entry::new(0, 0, b"garbage".to_vec());
    e.entry_type = EntryType::ConfChangeV2;
    m.entries = vec![e];
    let r = n.node(1).step(m);
    assert!(matches!(r, Err(RaftError::Propose(ProposeError::InvalidConfChange(_)))), "{r:?}");
}

#[test]
fn a_new_leader_refuses_a_change_until_its_log_is_applied() {
    // etcd: TestNewLeaderPendingConfig. An entry the old leader replicated but did not get
    // committed may be a membership change: the new leader takes none until it applied its log.
    let mut n = Net::with(&[1, 2, 3], no_lease);
    n.elect(1);
    n.node(1).propose(b"uncommitted".to_vec()).unwrap();
    n.persist(1);
    let to_2: Vec<Message> = n.queue.drain(..).filter(|m| m.to == 2).collect();
    for m in to_2 {
        n.node(2).step(m).unwrap();
    }
    n.persist(2);
    n.queue.clear(); // 2's acknowledgement is lost: 2 does not know the entry committed
    n.isolated = [1].into();
    n.node(2).campaign().unwrap();
    for _ in 0..6 {
        n.persist_all();
        for m in std::mem::take(&mut n.queue) {
            if m.kind != MessageType::Append {
                n.deliver(m);
            }
        }
    }
    assert_eq!(n.role(2), Role::Leader);
    let r = n.node(2).propose_conf_change(&ConfChange::simple(AddLearnerNode, 4));
    assert!(matches!(r, Err(RaftError::Propose(ProposeError::ConfChangePending { .. }))), "{r:?}");
    n.settle();
    n.tick(2, 1);
    n.node(2).propose_conf_change(&ConfChange::simple(AddLearnerNode, 4)).unwrap();
}

#[test]
fn removing_the_leader_hands_leadership_over_once_the_change_is_applied() {
    // etcd: TestRemoveLeader / TestCommitAfterRemoveNode; thesis §4.2.2. The removed leader
    // takes no more proposals and transfers leadership to the most caught-up voter (the voters
    // left may not know the change committed, and still count the removed node, whose longer
    // log would refuse them a vote), stepping down as it does; it never campaigns again.
    let mut n = Net::with(&[1, 2, 3], no_lease);
    n.elect(1);
    n.node(1).propose_conf_change(&ConfChange::simple(RemoveNode, 1)).unwrap();
    n.persist(1);
    let r = n.node(1).propose(b"during".to_vec());
    assert!(r.is_ok(), "not applied yet: still an ordinary leader ({r:?})");
    n.settle();
    assert_eq!(n.role(1), Role::Follower, "the removed leader stepped down");
    assert_eq!(voters(&n.conf(1)), vec![2, 3]);
    let leader = [2, 3].into_iter().find(|&id| n.role(id) == Role::Leader).expect("a voter took over at once");
    assert!(n.nodes[&leader].status().hard_state.term > 1);
    for _ in 0..100 {
        n.node(1).tick();
    }
    n.persist(1);
    assert!(n.queue.iter().all(|m| m.from != 1), "the removed node sent {:?}", n.queue);
    n.propose(leader, b"after");
    assert_eq!(n.applied_data(5 - leader).last().unwrap(), b"after");
}

#[test]
fn a_non_voter_holding_entries_the_voters_lack_passes_them_on_as_a_caretaker() {
    // Found by the simulator: leader 2 demoted itself and 3 (joint change, then leaving it at
    // index 3) and appended 4..=6, which reached only 3; then 2 was gone. Node 1, the only voter
    // left, does not know index 3 committed, so it still counts 2 and 3 (joint view), and 3's
    // longer log refuses it a vote: with learners never campaigning, no one could ever win. A
    // non-voter holding entries it does not know committed campaigns as a caretaker, wins with
    // 1's vote, passes its log on and hands leadership to 1.
    let joint_cc = joint(ConfChangeTransition::Auto, vec![change(AddLearnerNode, 2), change(AddLearnerNode, 3)]);
    let conf_entry = |index: u64, cc: &ConfChange| {
        let mut e = Entry::new(index, 1, cc.encode());
        e.entry_type = EntryType::ConfChangeV2;
        e
    };
    let log = [
        Entry::new(1, 1, Vec::new()),
        conf_entry(2, &joint_cc),
        conf_entry(3, &ConfChange::leave_joint()),
        Entry::new(4, 1, b"a".to_vec()),
        Entry::new(5, 1, b"b".to_vec()),
        Entry::new(6, 1, b"c".to_vec()),
    ];
    let node = |id: u64, last: usize, commit: u64| {
        let mut s = bootstrap(&[1, 2, 3]);
        s.append(&log[..last]).unwrap();
        s.set_hard_state(&HardState { term: 1, vote: 2, commit }).unwrap();
        let mut cfg = no_lease(id);
        cfg.applied = commit;
        cfg.joining = true;
        RawNode::new(&cfg, s).unwrap()
    };
    let mut n = Net { nodes: BTreeMap::from([(1, node(1, 3, 2)), (3, node(3, 6, 3))]), ..Net::new(&[]) };
    assert_eq!(n.conf(1).voters_outgoing, vec![1, 2, 3], "1 does not know it left the joint configuration");
    assert_eq!((n.conf(3).voters.clone(), n.conf(3).learners.clone()), (vec![1], vec![2, 3]));
    for _ in 0..200 {
        for id in [1, 3] {
            n.node(id).tick();
        }
        n.settle();
        if n.role(1) == Role::Leader && n.conf(1) == n.conf(3) && n.applied_data(1).len() == 3 {
            break;
        }
    }
    // Term 2: 3 as caretaker (within one settle); term 3: 1, by the transfer.
    assert_eq!(n.nodes[&1].status().hard_state.term, 3);
    assert_eq!(n.role(1), Role::Leader, "1 leads once 3 passed its log on");
    assert_eq!(n.conf(1), ConfState { voters: vec![1], learners: vec![2, 3], ..ConfState::default() });
    assert_eq!(n.applied_data(1), vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    assert_eq!(n.role(3), Role::Follower);
}

#[test]
fn a_restarted_node_rebuilds_its_membership_as_of_its_applied_index() {
    // Nothing about membership is persisted apart from the log: a node restarted at any applied
    // index (before the changes, between them, after them) starts with the configuration as of
    // that index, and the changes after it are handed out again to apply.
    let mut n = Net::new(&[1, 2, 3]);
    n.elect(1);
    n.change(1, &ConfChange::simple(AddLearnerNode, 4));
    let first_change = n.last(1);
    n.change(1, &joint(ConfChangeTransition::Explicit, vec![change(AddNode, 4), change(RemoveNode, 3)]));
    let joint_at = n.last(1);
    n.change(1, &ConfChange::leave_joint());
    let node = n.nodes.remove(&2).unwrap();
    let last = node.status().last_index;
    let storage = node.into_storage();
    assert_eq!(storage.initial_state().unwrap().conf_state.voters, vec![1, 2, 3], "only the bootstrap is stored");
    let expect = [
        (first_change - 1, ConfState { voters: vec![1, 2, 3], ..ConfState::default() }),
        (first_change, ConfState { voters: vec![1, 2, 3], learners: vec![4], ..ConfState::default() }),
        (
            joint_at,
            ConfState {
                voters: vec![1, 2, 4],
                voters_outgoing: vec![1, 2, 3],
                learners: vec![],
                ..ConfState::default()
            },
        ),
        (last, ConfState { voters: vec![1, 2, 4], ..ConfState::default() }),
    ];
    for (applied, cs) in expect {
        let mut cfg = Config::new(2);
        cfg.applied = applied;
        let mut restarted = RawNode::new(&cfg, storage.clone()).unwrap();
        assert_eq!(restarted.status().conf_state, cs, "restarted at applied {applied}");
        // The changes after `applied` come out again, and apply on top of it.
        let mut tick = 0;
        while restarted.status().applied < last && tick < 10 {
            if restarted.has_ready() {
                let rd = restarted.ready().unwrap();
                for e in rd.committed_entries.iter().filter(|e| e.entry_type == EntryType::ConfChangeV2) {
                    restarted.apply_conf_change(&ConfChange::decode(&e.data).unwrap()).unwrap();
                }
                restarted.persist(&rd).unwrap();
                restarted.advance(rd).unwrap();
            }
            tick += 1;
        }
        assert_eq!(restarted.status().conf_state, ConfState { voters: vec![1, 2, 4], ..ConfState::default() });
    }
}

#[test]
fn a_snapshot_brings_the_membership_it_was_taken_with() {
    // etcd: TestRestoreWithLearner. A follower far behind gets a snapshot with a changed config.
    let mut n = Net::new(&[1, 2, 3]);
    n.elect(1);
    n.isolated = [3].into();
    n.join(4);
    n.change(1, &ConfChange::simple(AddLearnerNode, 4));
    n.propose(1, b"a");
    let (index, cs) = (n.nodes[&1].status().applied, n.conf(1));
    let data = b"state".to_vec();
    let s = n.node(1).storage_mut();
    s.create_snapshot(index, &cs, &mut &data[..]).unwrap();
    s.compact(index).unwrap();
    n.isolated.clear();
    n.tick(1, 3);
    assert_eq!(n.conf(3), cs, "node 3 took the snapshot's membership");
    assert_eq!(n.nodes[&3].storage().snapshot(0).unwrap().metadata.index, index);
}

#[test]
fn snapshots_restore_joint_configurations_and_demotions() {
    // etcd: TestRestoreWithVotersOutgoing, TestRestoreVoterToLearner. A follower restoring a
    // snapshot takes its membership as it is: joint (both halves, learners_next, auto_leave), or
    // one that made the follower itself a learner (it then no longer campaigns).
    let cases = [
        ConfState {
            voters: vec![1, 2, 4],
            voters_outgoing: vec![1, 2, 3],
            learners_next: vec![3],
            auto_leave: true,
            ..ConfState::default()
        },
        ConfState { voters: vec![1, 2], learners: vec![3], ..ConfState::default() },
    ];
    for cs in cases {
        let mut node = RawNode::new(&no_lease(3), bootstrap(&[1, 2, 3])).unwrap();
        let mut m = Message::new(MessageType::Snapshot, 1, 3, 2);
        m.snapshot = Some(Snapshot::from_bytes(
            keel::storage::SnapshotMetadata { index: 10, term: 2, conf_state: cs.clone() },
            &b"s"[..],
        ));
        node.step(m).unwrap();
        assert_eq!(node.status().conf_state, cs);
        let rd = node.ready().unwrap();
        node.persist(&rd).unwrap();
        node.advance(rd).unwrap();
        for _ in 0..50 {
            node.tick();
        }
        let campaigned =
            node.has_ready() && node.ready().unwrap().messages.iter().any(|m| m.kind == MessageType::RequestPreVote);
        assert_eq!(campaigned, cs.voters.contains(&3) || cs.voters_outgoing.contains(&3), "{cs:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Reads

fn read_states(n: &Net, id: u64) -> Vec<ReadState> {
    n.reads.get(&id).cloned().unwrap_or_default()
}

#[test]
fn read_index_on_the_leader_waits_for_a_heartbeat_round() {
    // etcd: TestReadOnlyOptionSafe. No answer until a quorum answered the heartbeat.
    let mut n = Net::new(&[1, 2, 3]);
    n.elect(1);
    n.propose(1, b"w");
    let commit = n.commit(1);
    n.node(1).read_index(b"r1".to_vec()).unwrap();
    n.persist(1);
    assert!(read_states(&n, 1).is_empty(), "answered before any heartbeat came back");
    let beats: Vec<Message> = n.queue.iter().filter(|m| m.kind == MessageType::Heartbeat).cloned().collect();
    assert_eq!(beats.len(), 2);
    assert!(beats.iter().all(|m| m.context == b"r1"), "heartbeats carry the read's context");
    n.settle();
    assert_eq!(read_states(&n, 1), vec![ReadState { index: commit, request_ctx: b"r1".to_vec() }]);
}

#[test]
fn a_leader_cut_off_from_the_quorum_never_answers_a_read() {
    // The point of the heartbeat round: a deposed leader that does not know it cannot serve stale
    // data.
    let mut n = Net::with(&[1, 2, 3], no_lease);
    n.elect(1);
    n.isolated = [1].into();
    n.node(1).read_index(b"stale?".to_vec()).unwrap();
    n.settle();
    n.node(2).campaign().unwrap();
    n.settle();
    n.propose(2, b"newer");
    for _ in 0..5 {
        n.node(1).tick();
        n.settle();
    }
    assert!(read_states(&n, 1).is_empty());
}

#[test]
fn read_index_on_a_follower_is_answered_through_the_leader() {
    // etcd: TestReadOnlyOptionSafe (follower rows). The index is the leader's commit, which a
    // lagging follower must wait to apply.
    let mut n = Net::new(&[1, 2, 3]);
    n.elect(1);
    n.propose(1, b"w1");
    n.node(2).read_index(b"f".to_vec()).unwrap();
    n.settle();
    assert_eq!(read_states(&n, 2), vec![ReadState { index: n.commit(1), request_ctx: b"f".to_vec() }]);
    // A lagging follower: 3 misses a write, then asks.
    n.isolated = [3].into();
    n.propose(1, b"w2");
    let commit = n.commit(1);
    n.isolated.clear();
    n.node(3).read_index(b"lag".to_vec()).unwrap();
    // Deliver only the read's round trip first: the answer may come before 3 applied it.
    n.settle();
    let rs = read_states(&n, 3);
    assert_eq!(rs, vec![ReadState { index: commit, request_ctx: b"lag".to_vec() }]);
    assert!(n.nodes[&3].status().applied >= commit, "settled: 3 applied up to the read index");
    // With no leader known, a read is refused.
    let mut lone = Net::new(&[1, 2, 3]);
    let r = lone.node(1).read_index(b"x".to_vec());
    assert!(matches!(r, Err(RaftError::Propose(ProposeError::NoLeader))), "{r:?}");
}

#[test]
fn a_new_leader_answers_reads_only_after_committing_an_entry_of_its_term() {
    // Thesis §6.4; etcd: TestReadOnlyForNewLeader.
    let mut n = Net::with(&[1, 2, 3], no_lease);
    n.elect(1);
    n.propose(1, b"old");
    // Elect 2 but keep its election entry from committing: drop its appends for a while.
    n.isolated = [1].into();
    n.node(2).campaign().unwrap();
    for _ in 0..8 {
        n.persist_all();
        for m in std::mem::take(&mut n.queue) {
            if m.kind != MessageType::Append {
                n.deliver(m);
            }
        }
    }
    assert_eq!(n.role(2), Role::Leader);
    n.node(2).read_index(b"early".to_vec()).unwrap();
    n.persist(2);
    for m in std::mem::take(&mut n.queue) {
        if m.kind != MessageType::Append {
            n.deliver(m);
        }
    }
    n.persist_all();
    for m in std::mem::take(&mut n.queue) {
        if m.kind != MessageType::Append {
            n.deliver(m);
        }
    }
    n.persist_all();
    assert!(read_states(&n, 2).is_empty(), "answered before committing in its term");
    n.queue.clear();
    n.tick(2, 1);
    let rs = read_states(&n, 2);
    assert_eq!(rs.len(), 1);
    let term = n.nodes[&2].status().hard_state.term;
    assert_eq!(n.nodes[&2].log_term(rs[0].index), Some(term), "the read index is at or after its own entry");
}

#[test]
fn lease_based_reads_answer_at_once_only_inside_the_lease() {
    // etcd: TestReadOnlyOptionLease, and Config validation. The lease is measured from the
    // heartbeats a quorum answered (not from the CheckQuorum period): with no answer yet, or
    // none within election_tick - 2 ticks, or after a TimeoutNow, a read takes a heartbeat round.
    let lease = |id| {
        let mut c = Config::new(id);
        c.read_only_option = ReadOnlyOption::LeaseBased;
        c
    };
    let heartbeats = |n: &Net| n.queue.iter().filter(|m| m.kind == MessageType::Heartbeat).count();
    let mut n = Net::with(&[1, 2, 3], lease);
    n.elect(1);
    n.propose(1, b"w");
    n.node(1).read_index(b"no lease yet".to_vec()).unwrap();
    n.persist(1);
    assert_eq!(heartbeats(&n), 2, "no heartbeat answered yet: a round");
    n.settle();
    assert_eq!(read_states(&n, 1).len(), 1);
    n.tick(1, 1); // a heartbeat round answered at tick 1: the lease runs to tick 1 + 10 - 2
    n.node(1).read_index(b"l".to_vec()).unwrap();
    n.persist(1);
    assert_eq!(heartbeats(&n), 0, "inside the lease: no round");
    assert_eq!(read_states(&n, 1)[1], ReadState { index: n.commit(1), request_ctx: b"l".to_vec() });
    // Cut off: the lease runs out after election_tick - 2 ticks without answers.
    n.isolated = [2, 3].into();
    for _ in 0..7 {
        n.node(1).tick();
    }
    n.settle();
    n.node(1).read_index(b"late".to_vec()).unwrap();
    n.persist(1);
    assert_eq!(read_states(&n, 1).len(), 3, "tick 8 < 1 + 10 - 2: still inside");
    n.node(1).tick();
    n.settle();
    n.node(1).read_index(b"expired".to_vec()).unwrap();
    n.settle();
    assert_eq!(read_states(&n, 1).len(), 3, "tick 9: the lease ran out, and no quorum answers the round");
    // A TimeoutNow ends the lease for the term.
    let mut m = Net::with(&[1, 2, 3], lease);
    m.elect(1);
    m.tick(1, 1);
    m.isolated = [2].into(); // the transfer never completes
    m.node(1).transfer_leadership(2).unwrap();
    m.settle();
    assert_eq!(m.nodes[&1].status().lead_transferee, 2, "the TimeoutNow went out (and was lost)");
    m.node(1).read_index(b"after TimeoutNow".to_vec()).unwrap();
    m.persist(1);
    assert_eq!(heartbeats(&m), 2, "the lease ended with the TimeoutNow: a round");
    assert!(read_states(&m, 1).is_empty());
    let mut bad = lease(1);
    bad.check_quorum = false;
    assert!(bad.validate().is_err());
}

#[test]
fn a_single_voter_answers_reads_at_once() {
    // etcd: TestReadIndexSingleNode-like.
    let mut n = Net::new(&[1]);
    n.elect(1);
    n.node(1).read_index(b"s".to_vec()).unwrap();
    n.persist(1);
    assert_eq!(read_states(&n, 1), vec![ReadState { index: n.commit(1), request_ctx: b"s".to_vec() }]);
}

#[test]
fn a_restarted_single_voter_answers_reads_only_after_committing_in_its_term() {
    // Found by the simulator (etcd answers a single voter at once): a commit-only HardState
    // change is not synced, so a single voter restarting after a power loss may hold committed
    // entries (here up to 3) above its stored commit (1). Its commit index is stale until an
    // entry of its new term commits; a read answered before that would miss entries 2 and 3.
    let mut s = bootstrap(&[1]);
    s.append(&(1..=3).map(|i| Entry::new(i, 1, vec![i as u8])).collect::<Vec<_>>()).unwrap();
    s.set_hard_state(&HardState { term: 1, vote: 1, commit: 1 }).unwrap();
    let mut n = Net { nodes: BTreeMap::from([(1, RawNode::new(&Config::new(1), s).unwrap())]), ..Net::new(&[]) };
    n.node(1).campaign().unwrap();
    let rd = n.node(1).ready().unwrap(); // the vote, not yet persisted: not leader yet
    n.node(1).read_index(b"early".to_vec()).ok();
    n.node(1).persist(&rd).unwrap();
    n.node(1).advance(rd).unwrap();
    assert_eq!(n.role(1), Role::Leader);
    n.node(1).read_index(b"r".to_vec()).unwrap();
    assert_eq!(n.commit(1), 1, "its own entry (4) is not persisted yet");
    n.persist(1);
    let rs = read_states(&n, 1);
    assert_eq!(rs, vec![ReadState { index: 4, request_ctx: b"r".to_vec() }], "answered at its own entry, not at 1");
}

// ---------------------------------------------------------------------------------------------
// Leadership transfer

fn prevote_cq(id: u64) -> Config {
    Config::new(id) // PreVote and CheckQuorum are on by default: the transfer must bypass both
}

#[test]
fn transfer_to_an_up_to_date_follower() {
    // etcd: TestLeaderTransferToUpToDateNode (with PreVote and CheckQuorum on).
    let mut n = Net::with(&[1, 2, 3], prevote_cq);
    n.elect(1);
    n.propose(1, b"w");
    let term = n.nodes[&1].status().hard_state.term;
    n.node(1).transfer_leadership(2).unwrap();
    n.settle();
    assert_eq!(n.role(2), Role::Leader);
    assert_eq!(n.role(1), Role::Follower);
    assert_eq!(n.nodes[&2].status().hard_state.term, term + 1);
    n.propose(2, b"after");
    assert_eq!(n.applied_data(1).last().unwrap(), b"after");
}

#[test]
fn transfer_to_a_lagging_follower_catches_it_up_first() {
    // etcd: TestLeaderTransferToSlowFollower.
    let mut n = Net::with(&[1, 2, 3], prevote_cq);
    n.elect(1);
    n.isolated = [3].into();
    for i in 0..5 {
        n.propose(1, format!("w{i}").as_bytes());
    }
    n.isolated.clear();
    n.node(1).transfer_leadership(3).unwrap();
    // Proposals are refused while the transfer runs.
    let r = n.node(1).propose(b"during".to_vec());
    assert!(matches!(r, Err(RaftError::Propose(ProposeError::TransferInProgress { to: 3 }))), "{r:?}");
    n.settle();
    assert_eq!(n.role(3), Role::Leader);
    assert_eq!(n.applied_data(3).len(), 5);
}

#[test]
fn transfer_from_a_follower_is_forwarded_to_the_leader() {
    // etcd: TestLeaderTransferReceiveHigherTermVote-like forwarding.
    let mut n = Net::with(&[1, 2, 3], prevote_cq);
    n.elect(1);
    n.node(3).transfer_leadership(2).unwrap();
    n.settle();
    assert_eq!(n.role(2), Role::Leader);
    // Forwarded by a follower that is not the target either (a request that reached node 1
    // after it lost leadership): the target rides in `index`, `from` stays the sender.
    let mut ask = Message::new(MessageType::TransferLeader, 3, 1, n.node(1).status().hard_state.term);
    ask.index = 1;
    n.node(1).step(ask).unwrap();
    n.settle();
    assert_eq!(n.role(1), Role::Leader);
}

#[test]
fn transfers_to_itself_a_learner_or_a_stranger_are_ignored() {
    // etcd: TestLeaderTransferToSelf, TestLeaderTransferToNonExistingNode, learner rows.
    let mut n = Net::with(&[1, 2, 3], prevote_cq);
    n.elect(1);
    n.join(4);
    n.change(1, &ConfChange::simple(AddLearnerNode, 4));
    for to in [1, 4, 9] {
        n.node(1).transfer_leadership(to).unwrap();
        n.settle();
        assert_eq!(n.nodes[&1].status().lead_transferee, 0, "to {to}");
        assert_eq!(n.role(1), Role::Leader, "to {to}");
        n.node(1).propose(b"still leading".to_vec()).unwrap();
    }
}

#[test]
fn a_transfer_is_abandoned_after_an_election_timeout() {
    // etcd: TestLeaderTransferTimeout. The target is unreachable; after election_tick ticks the
    // leader takes proposals again.
    let mut n = Net::with(&[1, 2, 3], prevote_cq);
    n.elect(1);
    n.isolated = [3].into();
    n.node(1).transfer_leadership(3).unwrap();
    n.settle();
    assert_eq!(n.nodes[&1].status().lead_transferee, 3);
    for _ in 0..9 {
        n.node(1).tick();
        n.settle();
        assert_eq!(n.nodes[&1].status().lead_transferee, 3);
    }
    n.node(1).tick();
    n.settle();
    assert_eq!(n.nodes[&1].status().lead_transferee, 0);
    assert_eq!(n.role(1), Role::Leader);
    n.node(1).propose(b"again".to_vec()).unwrap();
}

#[test]
fn transfers_asked_again_and_again_do_not_postpone_check_quorum() {
    // From a review (etcd restarts the election timer for each transfer): a leader cut off from
    // everyone, asked every tick to transfer to one node then the other, still steps down after
    // its CheckQuorum period.
    let mut n = Net::with(&[1, 2, 3], prevote_cq);
    n.elect(1);
    n.isolated = [1].into();
    for k in 0..25 {
        n.node(1).transfer_leadership(2 + k % 2).unwrap();
        n.node(1).tick();
        n.settle();
        if n.role(1) != Role::Leader {
            assert!(k < 20, "stepped down only after {k} ticks");
            return;
        }
    }
    panic!("the leader never stepped down");
}

#[test]
fn removing_the_transfer_target_abandons_the_transfer() {
    // etcd: TestLeaderTransferRemoveNode.
    // The change is proposed just before the transfer (proposals are refused during one).
    let mut m = Net::with(&[1, 2, 3], prevote_cq);
    m.elect(1);
    m.node(1).propose_conf_change(&ConfChange::simple(RemoveNode, 3)).unwrap();
    m.isolated = [3].into();
    m.node(1).transfer_leadership(3).unwrap();
    m.settle();
    assert_eq!(m.nodes[&1].status().lead_transferee, 0);
    assert_eq!(m.role(1), Role::Leader);
}

// ---------------------------------------------------------------------------------------------
// Snapshot reports

#[test]
fn report_snapshot_moves_the_follower_out_of_the_snapshot_state() {
    // etcd: TestSnapshotFailure, TestSnapshotSucceed, TestSnapshotAbort.
    for status in [SnapshotStatus::Failure, SnapshotStatus::Finish] {
        let mut n = Net::new(&[1, 2, 3]);
        n.elect(1);
        n.isolated = [3].into();
        for i in 0..4 {
            n.propose(1, format!("w{i}").as_bytes());
        }
        let index = n.nodes[&1].status().applied;
        let cs = n.conf(1);
        n.node(1).storage_mut().create_snapshot(index, &cs, &mut &b"s"[..]).unwrap();
        n.node(1).storage_mut().compact(index).unwrap();
        n.tick(1, 1); // the heartbeat response... is lost: 3 is isolated; probe by hand
        n.isolated.clear();
        n.tick(1, 1);
        // 3 answered a heartbeat; the leader sent it the snapshot (delivered: 3 installed it).
        let st = n.nodes[&1].status();
        let state = st.progress[&3].2;
        assert!(state == ProgressState::Replicate, "{status:?}: after the snapshot's acknowledgement, {state:?}");
        // Now a snapshot that is never acknowledged: report on it.
        n.isolated = [3].into();
        for i in 0..4 {
            n.propose(1, format!("v{i}").as_bytes());
        }
        let index = n.nodes[&1].status().applied;
        n.node(1).storage_mut().create_snapshot(index, &cs, &mut &b"t"[..]).unwrap();
        n.node(1).storage_mut().compact(index).unwrap();
        n.node(1).report_unreachable(3);
        // Force a send attempt: a heartbeat response from 3 makes the leader probe it.
        let mut hr = Message::new(MessageType::HeartbeatResponse, 3, 1, n.nodes[&1].status().hard_state.term);
        hr.context = Vec::new();
        n.node(1).step(hr).unwrap();
        n.persist(1);
        assert_eq!(n.nodes[&1].status().progress[&3].2, ProgressState::Snapshot);
        n.queue.clear();
        n.node(1).report_snapshot(3, status);
        let (matched, next, state) = n.nodes[&1].status().progress[&3];
        assert_eq!(state, ProgressState::Probe, "{status:?}");
        assert!(next > matched, "{status:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Storage failures and misuse

/// MemStorage whose reads of entries and terms fail while `fail` is set.
#[derive(Clone)]
struct Flaky {
    inner: Rc<std::cell::RefCell<MemStorage>>,
    fail: Rc<Cell<bool>>,
}

impl Storage for Flaky {
    fn initial_state(&self) -> keel::Result<RaftState> {
        self.inner.borrow().initial_state()
    }
    fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> keel::Result<Vec<Entry>> {
        if self.fail.get() {
            return Err(keel::Error::Failed { cause: "injected read error".into() });
        }
        self.inner.borrow().entries(lo, hi, max_bytes)
    }
    fn term(&self, index: u64) -> keel::Result<u64> {
        if self.fail.get() {
            return Err(keel::Error::Failed { cause: "injected read error".into() });
        }
        self.inner.borrow().term(index)
    }
    fn first_index(&self) -> keel::Result<u64> {
        self.inner.borrow().first_index()
    }
    fn last_index(&self) -> keel::Result<u64> {
        self.inner.borrow().last_index()
    }
    fn snapshot(&self, request_index: u64) -> keel::Result<Snapshot> {
        self.inner.borrow().snapshot(request_index)
    }
}

#[test]
fn a_storage_read_error_stops_the_node_instead_of_being_guessed_around() {
    // A follower whose term() read fails while checking an append must not treat it as a
    // conflict (truncating what it may have acknowledged): it stops with the error.
    let mut s = bootstrap(&[1, 2]);
    s.append(&[Entry::new(1, 1, b"a".to_vec()), Entry::new(2, 1, b"b".to_vec())]).unwrap();
    s.set_hard_state(&HardState { term: 1, vote: 0, commit: 1 }).unwrap();
    let flaky = Flaky { inner: Rc::new(std::cell::RefCell::new(s)), fail: Rc::new(Cell::new(false)) };
    let mut node = RawNode::new(&Config::new(2), flaky.clone()).unwrap();
    flaky.fail.set(true);
    let mut app = Message::new(MessageType::Append, 1, 2, 2);
    (app.index, app.log_term, app.commit) = (2, 1, 2);
    app.entries = vec![Entry::new(3, 2, b"c".to_vec())];
    let r = node.step(app.clone());
    assert!(matches!(r, Err(RaftError::Storage(_))), "{r:?}");
    assert!(node.has_ready());
    assert!(matches!(node.ready(), Err(RaftError::Storage(_))));
    flaky.fail.set(false);
    assert!(matches!(node.step(app), Err(RaftError::Storage(_))), "stopped for good");
    assert!(matches!(node.propose(b"x".to_vec()), Err(RaftError::Storage(_))));
    assert_eq!(flaky.inner.borrow().last_index().unwrap(), 2, "nothing was truncated or appended");
    // A leader whose entries read fails when handing out committed entries stops too.
    let mut s = bootstrap(&[1]);
    s.append(&[Entry::new(1, 1, b"a".to_vec())]).unwrap();
    s.set_hard_state(&HardState { term: 1, vote: 1, commit: 1 }).unwrap();
    let flaky = Flaky { inner: Rc::new(std::cell::RefCell::new(s)), fail: Rc::new(Cell::new(true)) };
    let mut node = RawNode::new(&Config::new(1), flaky).unwrap();
    assert!(matches!(node.ready(), Err(RaftError::Storage(_))), "the committed entry could not be read");
}

#[test]
fn ready_twice_or_advancing_a_stale_ready_is_a_typed_error() {
    let mut n = Net::new(&[1, 2, 3]);
    n.node(1).campaign().unwrap();
    let rd = n.node(1).ready().unwrap();
    assert!(matches!(n.node(1).ready(), Err(RaftError::ReadyOutstanding)));
    let copy = rd.clone();
    n.node(1).persist(&rd).unwrap();
    n.node(1).advance(rd).unwrap();
    assert!(matches!(n.node(1).advance(copy), Err(RaftError::NotOutstanding)));
    assert!(matches!(n.node(2).advance(Default::default()), Err(RaftError::NotOutstanding)));
}

#[test]
fn input_between_ready_and_advance_is_safe() {
    // Messages stepped while a Ready is being persisted are handed out by the next Ready, and
    // their acknowledgements wait for its persistence.
    let mut n = Net::new(&[1, 2]);
    n.elect(1);
    n.node(1).propose(b"a".to_vec()).unwrap();
    n.persist(1);
    let appends: Vec<Message> = n.queue.drain(..).filter(|m| m.to == 2).collect();
    let rd = n.node(2).ready().unwrap();
    for m in appends {
        n.node(2).step(m).unwrap();
    }
    n.node(2).persist(&rd).unwrap();
    assert!(rd.persisted_messages.iter().all(|m| m.index < 2 || m.kind != MessageType::AppendResponse));
    n.node(2).advance(rd).unwrap();
    let rd = n.node(2).ready().unwrap();
    assert!(rd.entries.iter().any(|e| &*e.data == b"a"), "{rd:?}");
    assert!(rd.persisted_messages.iter().any(|m| m.kind == MessageType::AppendResponse && m.index >= 2));
    n.node(2).persist(&rd).unwrap();
    n.node(2).advance(rd).unwrap();
}

#[test]
fn an_acknowledgement_of_entries_replaced_before_persisting_is_never_sent() {
    // Found by the simulator: a follower acknowledged entries 2..=5 of term 3 (the ack waits for
    // the Ready), then a leader of term 4 replaced them from index 2 before any Ready. The
    // pending acknowledgement of index 5 would have left after persisting only (2, 4), and a
    // stale leader of term 3 could count it towards commit.
    let mut s = bootstrap(&[1, 2, 3]);
    s.append(&[Entry::new(1, 1, b"a".to_vec())]).unwrap();
    s.set_hard_state(&HardState { term: 3, vote: 0, commit: 1 }).unwrap();
    let mut node = RawNode::new(&Config::new(2), s).unwrap();
    let mut old = Message::new(MessageType::Append, 1, 2, 3);
    (old.index, old.log_term) = (1, 1);
    old.entries = (2..=5).map(|i| Entry::new(i, 3, vec![i as u8])).collect();
    node.step(old).unwrap();
    let mut new = Message::new(MessageType::Append, 3, 2, 4);
    (new.index, new.log_term) = (1, 1);
    new.entries = vec![Entry::new(2, 4, b"b".to_vec())];
    node.step(new).unwrap();
    let rd = node.ready().unwrap();
    assert_eq!(rd.entries.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(), vec![(2, 4)]);
    let acks: Vec<(u64, u64, u64)> = rd
        .persisted_messages
        .iter()
        .filter(|m| m.kind == MessageType::AppendResponse)
        .map(|m| (m.to, m.term, m.index))
        .collect();
    assert_eq!(acks, vec![(3, 4, 2)], "only the acknowledgement of what this Ready persists");
}

// ---------------------------------------------------------------------------------------------
// Found by an adversarial review (each failed before its fix)

/// Finding 1. `Raft::check_conf_change` compares `pending_conf_index` with `log.applied`, which
/// `RawNode::ready` raises when it *hands out* committed entries, not when the application has
/// applied them. Between `ready()` and `apply_conf_change` (input there is allowed, and the
/// threaded `Node` keeps stepping messages and proposals while the application applies), a
/// second change is accepted and validated against the configuration *before* the first.
#[test]
fn a_second_conf_change_is_refused_while_the_first_is_handed_out_but_not_applied() {
    let mut n = Net::with(&[1, 2, 3], Config::new);
    n.elect(1);
    // CC1: an explicit joint change (remove 3): the configuration becomes joint.
    let cc1 = ConfChange {
        transition: ConfChangeTransition::Explicit,
        changes: vec![change(RemoveNode, 3)],
        context: Vec::new(),
    };
    n.node(1).propose_conf_change(&cc1).unwrap();
    let cc1_index = n.nodes[&1].last_index();
    // Replicate it, but leave the leader's own Ready for later.
    for _ in 0..20 {
        for id in [2, 3] {
            n.persist(id);
        }
        let leader_rd = n.node(1).ready().unwrap();
        n.queue.extend(leader_rd.messages.iter().cloned());
        n.node(1).persist(&leader_rd).unwrap();
        n.queue.extend(leader_rd.persisted_messages.iter().cloned());
        if leader_rd.committed_entries.iter().any(|e| e.index == cc1_index) {
            // The application has the Ready and is about to apply CC1. Meanwhile a second
            // change arrives (the app itself, or a follower's forwarded proposal):
            let r = n.node(1).propose_conf_change(&ConfChange::simple(AddNode, 4));
            assert!(
                matches!(r, Err(RaftError::Propose(ProposeError::ConfChangePending { .. }))),
                "a second membership change was accepted while the first ({cc1_index}) is not applied: {r:?}"
            );
            return;
        }
        n.node(1).advance(leader_rd).unwrap();
        for m in std::mem::take(&mut n.queue) {
            n.deliver(m);
        }
    }
    panic!("CC1 never committed");
}

/// Finding 1, consequence: the second change was checked against the old (non-joint)
/// configuration; it commits, and no node can apply it.
#[test]
fn an_accepted_conf_change_can_always_be_applied() {
    let mut n = Net::with(&[1, 2, 3], Config::new);
    n.elect(1);
    let cc1 = ConfChange {
        transition: ConfChangeTransition::Explicit,
        changes: vec![change(AddLearnerNode, 4)],
        context: Vec::new(),
    };
    n.node(1).propose_conf_change(&cc1).unwrap();
    let cc1_index = n.nodes[&1].last_index();
    loop {
        for id in [2, 3] {
            n.persist(id);
        }
        let rd = n.node(1).ready().unwrap();
        n.queue.extend(rd.messages.iter().cloned());
        n.node(1).persist(&rd).unwrap();
        n.queue.extend(rd.persisted_messages.iter().cloned());
        let has = rd.committed_entries.iter().any(|e| e.index == cc1_index);
        if has {
            // Handed out, not yet applied: a second change is refused.
            let r = n.node(1).propose_conf_change(&ConfChange::simple(AddNode, 5));
            assert!(matches!(r, Err(RaftError::Propose(ProposeError::ConfChangePending { .. }))), "{r:?}");
        }
        for e in &rd.committed_entries {
            if e.entry_type == EntryType::ConfChangeV2 {
                let cs = n.node(1).apply_conf_change(&ConfChange::decode(&e.data).unwrap()).unwrap();
                let _ = cs;
            }
        }
        n.node(1).advance(rd).unwrap();
        for m in std::mem::take(&mut n.queue) {
            n.deliver(m);
        }
        if has {
            break;
        }
    }
    // Let the rest happen, applying by hand to catch the error instead of unwrapping.
    let mut errors = Vec::new();
    for _ in 0..50 {
        for id in [1, 2, 3] {
            while n.nodes[&id].has_ready() {
                let node = n.nodes.get_mut(&id).unwrap();
                let rd = node.ready().unwrap();
                n.queue.extend(rd.messages.iter().cloned());
                node.persist(&rd).unwrap();
                n.queue.extend(rd.persisted_messages.iter().cloned());
                for e in &rd.committed_entries {
                    if e.entry_type == EntryType::ConfChangeV2 {
                        match node.apply_conf_change(&ConfChange::decode(&e.data).unwrap()) {
                            Ok(_) => {}
                            Err(err) => errors.push((id, e.index, err.to_string())),
                        }
                    }
                }
                node.advance(rd).unwrap();
            }
        }
        for m in std::mem::take(&mut n.queue) {
            n.deliver(m);
        }
        n.node(1).tick();
    }
    assert!(errors.is_empty(), "committed membership changes no node can apply: {errors:?}");
}

fn lease(id: u64) -> Config {
    let mut c = Config::new(id);
    c.read_only_option = ReadOnlyOption::LeaseBased;
    c
}

/// Finding 2. Lease-based reads are answered while a transfer is in flight (and for an election
/// timeout after it is abandoned), but the TimeoutNow lets the target be elected *inside* the
/// lease (`CAMPAIGN_TRANSFER` bypasses it). No clock drift is needed for a stale read.
#[test]
fn a_lease_read_during_a_transfer_is_not_stale() {
    let mut n = Net::with(&[1, 2, 3], lease);
    n.elect(1);
    n.node(1).propose(b"a".to_vec()).unwrap();
    n.settle();
    // 2 is caught up: the TimeoutNow leaves in the next Ready.
    n.node(1).transfer_leadership(2).unwrap();
    let rd = n.node(1).ready().unwrap();
    n.node(1).persist(&rd).unwrap();
    let timeout_now: Vec<Message> = rd.messages.iter().filter(|m| m.kind == MessageType::TimeoutNow).cloned().collect();
    assert_eq!(timeout_now.len(), 1);
    n.node(1).advance(rd).unwrap();
    // The TimeoutNow reaches 2; then 1 is cut off (or just slow: it has not ticked once).
    n.isolated = [1].into();
    for m in timeout_now {
        let _ = n.node(m.to).step(m);
    }
    n.settle();
    assert_eq!(n.role(2), Role::Leader, "3 granted its vote inside 1's lease");
    n.node(2).propose(b"w".to_vec()).unwrap();
    n.settle();
    let w = n.applied_index(2);
    assert!(n.applied.get(&2).unwrap().iter().any(|e| &e.data[..] == b"w"));
    // The write is complete. Now a client reads at 1, which still believes it leads term 1.
    assert_eq!(n.role(1), Role::Leader);
    n.node(1).read_index(b"r".to_vec()).unwrap();
    n.persist(1);
    let reads = n.reads.get(&1).cloned().unwrap_or_default();
    for r in &reads {
        assert!(r.index >= w, "stale lease read at index {} below the completed write at {w}", r.index);
    }
}

/// Finding 3. The ConfState in storage carries no applied index, so it cannot be "the
/// configuration as of `Config::applied`" across a crash: whichever the application persists
/// first (its applied index or the ConfState), a crash between the two either loses the change
/// or makes its replay fail. Here: ConfState first (what `Node::apply_conf_change` does).
#[test]
fn a_restart_between_conf_state_and_applied_index_replays_cleanly() {
    let mut s = bootstrap(&[1]);
    let mut node = RawNode::new(&Config::new(1), s).unwrap();
    node.campaign().unwrap();
    let drain = |node: &mut RawNode<MemStorage>, applied: &mut u64| {
        while node.has_ready() {
            let rd = node.ready().unwrap();
            node.persist(&rd).unwrap();
            for e in &rd.committed_entries {
                if e.entry_type == EntryType::ConfChangeV2 {
                    let cs = node.apply_conf_change(&ConfChange::decode(&e.data).unwrap()).unwrap();
                    let _ = cs;
                    // crash here: ConfState durable, the app's applied index is not
                    return Some(e.index);
                }
                *applied = e.index;
            }
            node.advance(rd).unwrap();
        }
        None
    };
    let mut applied = 0;
    assert!(drain(&mut node, &mut applied).is_none());
    let joint = ConfChange {
        transition: ConfChangeTransition::Explicit,
        changes: vec![change(AddLearnerNode, 2)],
        context: Vec::new(),
    };
    node.propose_conf_change(&joint).unwrap();
    let cc_index = drain(&mut node, &mut applied).expect("the change commits");
    assert!(applied < cc_index);
    s = node.into_storage();
    // Restart as the docs say: Config::applied is what the application applied durably.
    let mut cfg = Config::new(1);
    cfg.applied = applied;
    let mut node = RawNode::new(&cfg, s).unwrap();
    let rd = node.ready().unwrap();
    node.persist(&rd).unwrap();
    for e in &rd.committed_entries {
        if e.entry_type == EntryType::ConfChangeV2 {
            let r = node.apply_conf_change(&ConfChange::decode(&e.data).unwrap());
            assert!(r.is_ok(), "replaying the committed change at {} fails: {r:?}", e.index);
        }
    }
}

/// Finding 3, the other order: applied index first, then the crash before `set_conf_state`.
#[test]
fn a_restart_between_applied_index_and_conf_state_keeps_the_change() {
    let s = bootstrap(&[1]);
    let mut node = RawNode::new(&Config::new(1), s).unwrap();
    node.campaign().unwrap();
    let mut applied = 0;
    let mut crashed_at = None;
    let mut proposed = false;
    while crashed_at.is_none() {
        if !node.has_ready() {
            node.propose_conf_change(&ConfChange::simple(AddLearnerNode, 2)).unwrap();
            proposed = true;
        }
        let rd = node.ready().unwrap();
        node.persist(&rd).unwrap();
        for e in &rd.committed_entries {
            applied = e.index; // the application records its applied index
            if e.entry_type == EntryType::ConfChangeV2 {
                // crash before apply_conf_change / set_conf_state
                crashed_at = Some(e.index);
                break;
            }
        }
        if crashed_at.is_none() {
            node.advance(rd).unwrap();
        }
    }
    assert!(proposed);
    let s = node.into_storage();
    let mut cfg = Config::new(1);
    cfg.applied = applied;
    let node = RawNode::new(&cfg, s).unwrap();
    assert_eq!(
        node.status().conf_state.learners,
        vec![2],
        "the committed change at {crashed_at:?} is lost on this node: it will never be applied again"
    );
}

/// Finding 4. The lease is measured by the CheckQuorum period, not from when the quorum last
/// heard from the leader: the leader keeps answering lease reads for up to two election timeouts
/// after its last contact, while the followers may elect another leader after one. No clock
/// drift: every node ticks in lockstep.
#[test]
fn a_lease_read_with_lockstep_clocks_is_not_stale() {
    for offset in 0..12 {
        for seed in 0..4u64 {
            let mut n = Net::with(&[1, 2, 3], |id| {
                let mut c = lease(id);
                c.seed = seed;
                c
            });
            n.elect(1);
            n.node(1).propose(b"a".to_vec()).unwrap();
            n.settle();
            let tick_all = |n: &mut Net| {
                for id in [1, 2, 3] {
                    n.node(id).tick();
                }
                n.settle();
            };
            for _ in 0..offset {
                tick_all(&mut n);
            }
            assert_eq!(n.role(1), Role::Leader);
            n.isolated = [1].into();
            for t in 0..40 {
                tick_all(&mut n);
                let new_leader = [2, 3].into_iter().find(|&id| n.role(id) == Role::Leader);
                if let Some(l) = new_leader {
                    n.node(l).propose(b"w".to_vec()).unwrap();
                    n.settle();
                    let w = n.applied_index(l);
                    if n.role(1) == Role::Leader {
                        n.node(1).read_index(b"r".to_vec()).unwrap();
                        n.persist(1);
                        let r = n.reads.get(&1).and_then(|v| v.last().cloned());
                        if let Some(r) = r {
                            assert!(
                                r.index >= w,
                                "offset {offset} seed {seed}: {t} ticks after the partition node {l} leads and \
                                 committed {w}; old leader 1 still answers a lease read at {}",
                                r.index
                            );
                        }
                    }
                    break;
                }
            }
        }
    }
}
