//! The threaded `Node`: each node runs on its own thread, and a test driver (this thread) takes
//! their Readies, routes messages between them (dropping those to or from an isolated node),
//! applies committed entries and advances. Every wait is bounded: the driver polls with short
//! timeouts and gives up after `WAIT`.

use keel::raft::{
    ConfChange, ConfChangeType, Config, DropReason, Node, NodeError, Outcome, ProgressState, Proposal, ProposeError,
    RaftError, ReadState, Ready, Role, SnapshotStatus, UnknownReason,
};
use keel::storage::{
    ConfState, DiskStorage, Entry, EntryType, HardState, MemStorage, RaftState, Snapshot, SnapshotMetadata, Storage,
    StorageMut, StorageOptions,
};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long any one wait may take before the test fails.
const WAIT: Duration = Duration::from_secs(10);

fn bootstrap(voters: &[u64]) -> MemStorage {
    let mut s = MemStorage::new();
    s.set_conf_state(&ConfState { voters: voters.to_vec(), ..ConfState::default() }).unwrap();
    s
}

/// Normal entries with data, as (index, data).
fn data_of(entries: &[Entry]) -> Vec<(u64, Vec<u8>)> {
    entries
        .iter()
        .filter(|e| e.entry_type == EntryType::Normal && !e.data.is_empty())
        .map(|e| (e.index, e.data.to_vec()))
        .collect()
}

/// Runs `f` on a thread of its own and waits up to `WAIT` for its result.
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(WAIT).unwrap_or_else(|e| panic!("{what}: no answer within {WAIT:?} ({e})"))
}

/// Nodes over `MemStorage` (behind `FailingAppends`, whose disk a test may fill), each on its
/// own thread, and the application around them.
struct Cluster {
    nodes: BTreeMap<u64, Arc<Node<FailingAppends>>>,
    /// Per node: while set, its appends and snapshot installs answer `Error::NoSpace`.
    full: BTreeMap<u64, Arc<AtomicBool>>,
    isolated: BTreeSet<u64>,
    /// Committed entries each node handed out, in order.
    applied: BTreeMap<u64, Vec<Entry>>,
    reads: BTreeMap<u64, Vec<ReadState>>,
    /// The ConfState each `apply_conf_change` returned, per node.
    confs: BTreeMap<u64, Vec<ConfState>>,
    bootstrap: Vec<u64>,
}

impl Cluster {
    fn new(voters: &[u64]) -> Cluster {
        let mut c = Cluster {
            nodes: BTreeMap::new(),
            full: BTreeMap::new(),
            isolated: BTreeSet::new(),
            applied: BTreeMap::new(),
            reads: BTreeMap::new(),
            confs: BTreeMap::new(),
            bootstrap: voters.to_vec(),
        };
        for &id in voters {
            c.start(&Config::new(id));
        }
        c
    }

    fn start(&mut self, cfg: &Config) {
        let full = Arc::new(AtomicBool::new(false));
        let storage = FailingAppends::new(bootstrap(&self.bootstrap), Arc::new(AtomicBool::new(false)), full.clone());
        self.nodes.insert(cfg.id, Arc::new(Node::start(cfg, storage).unwrap()));
        self.full.insert(cfg.id, full);
    }

    /// Starts node `id` as joining: the bootstrap configuration and an empty log.
    fn join(&mut self, id: u64) {
        let mut cfg = Config::new(id);
        cfg.joining = true;
        self.start(&cfg);
    }

    /// Fills (or frees) node `id`'s disk.
    fn set_full(&self, id: u64, full: bool) {
        self.full[&id].store(full, Ordering::SeqCst);
    }

    fn node(&self, id: u64) -> &Node<FailingAppends> {
        &self.nodes[&id]
    }

    fn status(&self, id: u64) -> keel::raft::Status {
        self.node(id).status().unwrap()
    }

    fn role(&self, id: u64) -> Role {
        self.status(id).soft_state.role
    }

    fn leader_seen_by(&self, id: u64) -> u64 {
        self.status(id).soft_state.leader_id
    }

    fn applied_data(&self, id: u64) -> Vec<(u64, Vec<u8>)> {
        self.applied.get(&id).map_or(Vec::new(), |v| data_of(v))
    }

    /// Does what the application does with one Ready (the node thread persisted it already).
    fn handle(&mut self, id: u64, rd: Ready) {
        for m in rd.messages.iter().chain(&rd.persisted_messages) {
            let cut = self.isolated.contains(&m.from) || self.isolated.contains(&m.to);
            if let (false, Some(to)) = (cut, self.nodes.get(&m.to)) {
                to.step(m.clone()).unwrap();
            }
        }
        let node = &self.nodes[&id];
        for e in &rd.committed_entries {
            if e.entry_type == EntryType::ConfChangeV2 {
                let cc = ConfChange::decode(&e.data).unwrap();
                let cs = node.apply_conf_change(&cc).unwrap();
                self.confs.entry(id).or_default().push(cs);
            }
        }
        self.applied.entry(id).or_default().extend(rd.committed_entries.iter().cloned());
        self.reads.entry(id).or_default().extend(rd.read_states.iter().cloned());
        node.advance(rd).unwrap();
    }

    /// Handles the Ready each node has waiting, if any.
    fn pump(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            if let Some(rd) = self.node(id).try_ready().unwrap() {
                self.handle(id, rd);
            }
        }
    }

    /// Pumps, ticking the nodes in `tick` every millisecond, until `done`; fails after `WAIT`.
    fn until(&mut self, what: &str, tick: &[u64], mut done: impl FnMut(&mut Cluster) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            for &id in tick {
                self.node(id).tick().unwrap();
            }
            self.pump();
            if done(self) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn elect(&mut self, id: u64) {
        self.node(id).campaign().unwrap();
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        self.until(&format!("every node follows {id}"), &[], |c| ids.iter().all(|&n| c.leader_seen_by(n) == id));
        self.settle(id);
    }

    /// Ticks the leader until every node applied everything the leader has.
    fn settle(&mut self, leader: u64) {
        let last = self.status(leader).last_index;
        let ids: Vec<u64> = self.nodes.keys().copied().filter(|id| !self.isolated.contains(id)).collect();
        self.until("every node applied the leader's log", &[leader], |c| {
            ids.iter().all(|&id| c.applied.get(&id).and_then(|v| v.last()).is_some_and(|e| e.index >= last))
        });
    }

    /// Waits until `p` resolves, ticking `tick`.
    fn outcome(&mut self, p: &mut Proposal, tick: &[u64]) -> Outcome {
        self.until("the proposal resolves", tick, |_| p.try_outcome().is_some());
        p.try_outcome().unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Bounded: a node thread that does not stop fails the test instead of hanging it.
        for (id, node) in std::mem::take(&mut self.nodes) {
            if !std::thread::panicking() {
                let _ = within(&format!("stopping node {id}"), move || node.stop().map(drop));
            }
        }
    }
}

#[test]
fn leader_proposals_commit_everywhere_and_a_follower_forwards_its_own() {
    // A leader's proposals resolve as Committed at the (index, term) every node applies them
    // at; a follower's proposal resolves as Forwarded and commits through the leader.
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    let term = c.status(1).hard_state.term;
    let mut ps: Vec<Proposal> = (0..5).map(|k| c.node(1).propose(format!("p{k}").into_bytes()).unwrap()).collect();
    let mut committed = Vec::new();
    for p in &mut ps {
        match c.outcome(p, &[1]) {
            Outcome::Committed { index, term: t } => {
                assert_eq!(t, term);
                committed.push(index);
            }
            other => panic!("expected Committed, got {other:?}"),
        }
    }
    assert!(committed.windows(2).all(|w| w[1] == w[0] + 1), "consecutive indexes: {committed:?}");
    c.settle(1);
    for id in 1..=3 {
        let data = c.applied_data(id);
        for (k, index) in committed.iter().enumerate() {
            assert!(
                data.contains(&(*index, format!("p{k}").into_bytes())),
                "node {id} applied p{k} at {index}: {data:?}"
            );
        }
    }
    let mut forwarded = c.node(2).propose(b"via 2".to_vec()).unwrap();
    assert!(matches!(forwarded.wait_timeout(WAIT), Some(Outcome::Forwarded { leader: 1 })), "{forwarded:?}");
    c.until("every node applied the forwarded entry", &[1], |c| {
        (1..=3).all(|id| c.applied_data(id).iter().any(|(_, d)| d == b"via 2"))
    });
}

#[test]
fn without_a_leader_proposals_are_dropped_as_refused_and_reads_fail() {
    // No election yet: RawNode refuses, and the Node passes its error on.
    let c = Cluster::new(&[1, 2, 3]);
    let mut p = c.node(2).propose(b"x".to_vec()).unwrap();
    let outcome = p.wait_timeout(WAIT);
    assert!(
        matches!(outcome, Some(Outcome::Dropped(DropReason::Refused(RaftError::Propose(ProposeError::NoLeader))))),
        "{outcome:?}"
    );
    let r = c.node(2).read_index(b"r".to_vec());
    assert!(matches!(r, Err(NodeError::Raft(RaftError::Propose(ProposeError::NoLeader)))), "{r:?}");
    let r = c.node(1).advance(Ready::default());
    assert!(matches!(r, Err(NodeError::Raft(RaftError::NotOutstanding))), "{r:?}");
    assert_eq!(c.role(1), Role::Follower, "a refused call changes nothing");
}

#[test]
fn a_proposal_cut_off_by_a_leader_change_resolves_as_dropped() {
    // Leader 1 appends a proposal while partitioned, 2 or 3 is elected and commits its own
    // entry at that index; once healed, 1 takes the new leader's log and the handle resolves
    // as Superseded. (Thesis §3.6: an entry not on a quorum may be overwritten.)
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    let old_term = c.status(1).hard_state.term;
    let index = c.status(1).last_index + 1;
    c.isolated.insert(1);
    let mut lost = c.node(1).propose(b"lost".to_vec()).unwrap();
    assert_eq!(c.status(1).last_index, index, "1 appended the proposal");
    c.until("2 or 3 leads", &[2, 3], |c| c.role(2) == Role::Leader || c.role(3) == Role::Leader);
    let new_leader = if c.role(2) == Role::Leader { 2 } else { 3 };
    let new_term = c.status(new_leader).hard_state.term;
    assert!(new_term > old_term);
    c.until("the new leader commits at the proposal's index", &[new_leader], |c| {
        c.status(new_leader).hard_state.commit >= index
    });
    assert!(lost.try_outcome().is_none(), "1 has not seen the index committed yet: {lost:?}");
    assert_eq!(c.role(1), Role::Leader, "1, cut off and not ticked, still believes it leads");
    c.isolated.clear();
    let outcome = c.outcome(&mut lost, &[new_leader]);
    assert!(matches!(outcome, Outcome::Dropped(DropReason::Superseded { index: i }) if i == index), "{outcome:?}");
    let at_index = c.applied[&1].iter().find(|e| e.index == index).unwrap();
    assert_eq!(at_index.term, new_term, "1 applied the new leader's entry there");
    c.settle(new_leader);
    for id in 1..=3 {
        assert!(c.applied_data(id).iter().all(|(_, d)| d != b"lost"), "node {id} applied the lost entry");
    }
}

#[test]
fn a_learner_is_added_through_the_node() {
    // The change commits (Committed), every node applies it through Node::apply_conf_change,
    // which returns the new ConfState; the learner then receives the log.
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.join(4);
    let mut p = c.node(1).propose_conf_change(&ConfChange::simple(ConfChangeType::AddLearnerNode, 4)).unwrap();
    let outcome = c.outcome(&mut p, &[1]);
    assert!(matches!(outcome, Outcome::Committed { .. }), "{outcome:?}");
    let want = ConfState { voters: vec![1, 2, 3], learners: vec![4], ..ConfState::default() };
    c.until("every node applied the change", &[1], |c| {
        (1..=4).all(|id| c.confs.get(&id).and_then(|v| v.last()) == Some(&want))
    });
    // Only the bootstrap configuration is stored: the change lives in the log.
    let stored = c.node(1).with_storage(|s| s.initial_state().unwrap().conf_state).unwrap();
    assert_eq!(stored.learners, Vec::<u64>::new());
    assert_eq!(c.status(1).conf_state, want);
    let mut p = c.node(1).propose(b"to the learner too".to_vec()).unwrap();
    assert!(matches!(c.outcome(&mut p, &[1]), Outcome::Committed { .. }));
    c.until("the learner applied it", &[1], |c| c.applied_data(4).iter().any(|(_, d)| d == b"to the learner too"));
}

#[test]
fn read_index_yields_a_read_state_on_the_leader_and_on_a_follower() {
    // §6.4: both requests come back with the leader's commit index and their own context.
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    let mut p = c.node(1).propose(b"a".to_vec()).unwrap();
    assert!(matches!(c.outcome(&mut p, &[1]), Outcome::Committed { .. }));
    c.settle(1);
    let commit = c.status(1).hard_state.commit;
    c.node(1).read_index(b"on the leader".to_vec()).unwrap();
    c.node(2).read_index(b"on a follower".to_vec()).unwrap();
    c.until("both reads are confirmed", &[1], |c| {
        c.reads.get(&1).is_some_and(|r| !r.is_empty()) && c.reads.get(&2).is_some_and(|r| !r.is_empty())
    });
    assert_eq!(c.reads[&1], vec![ReadState { index: commit, request_ctx: b"on the leader".to_vec() }]);
    assert_eq!(c.reads[&2], vec![ReadState { index: commit, request_ctx: b"on a follower".to_vec() }]);
}

#[test]
fn transfer_leadership_moves_the_leader() {
    // §3.10: the leader brings 3 up to date and tells it to campaign; no ticks are needed.
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.node(1).transfer_leadership(3).unwrap();
    c.until("3 leads and everyone follows it", &[], |c| {
        c.role(3) == Role::Leader && c.leader_seen_by(1) == 3 && c.leader_seen_by(2) == 3
    });
    assert_eq!(c.role(1), Role::Follower);
    let mut p = c.node(3).propose(b"under 3".to_vec()).unwrap();
    assert!(matches!(c.outcome(&mut p, &[3]), Outcome::Committed { .. }));
}

/// Issue 16: a leader whose disk is full persists nothing, yet what may leave before it is
/// durable still leaves (partial Readies): its appends reach the followers, who persist and
/// acknowledge them, so the entry commits through them; heartbeats confirm a ReadIndex; a
/// transfer hands leadership to a healthy peer. Once its disk has room it persists, catches up,
/// applies, and its proposal resolves as committed.
#[test]
fn a_full_leader_commits_through_the_others_confirms_reads_and_hands_over_leadership() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.set_full(1, true);
    let mut p = c.node(1).propose(b"b".to_vec()).unwrap();
    c.until("2 and 3 apply b, committed without the leader's own copy", &[1], |c| {
        [2, 3].iter().all(|&id| c.applied_data(id).iter().any(|(_, d)| d == b"b"))
    });
    let b_index = c.applied_data(2).iter().find(|(_, d)| d == b"b").unwrap().0;
    assert!(c.node(1).disk_full().is_some_and(|why| why.contains("no space")), "{:?}", c.node(1).disk_full());
    assert!(!c.applied_data(1).iter().any(|(_, d)| d == b"b"), "the leader applies only what it persisted");
    assert!(p.try_outcome().is_none(), "nothing is acknowledged before the leader's own copy is durable");
    c.node(1).read_index(b"on the full leader".to_vec()).unwrap();
    c.until("the full leader confirms the read", &[1], |c| c.reads.get(&1).is_some_and(|r| !r.is_empty()));
    assert_eq!(c.reads[&1].len(), 1);
    assert!(c.reads[&1][0].index >= b_index, "{:?} (b at {b_index})", c.reads[&1]);
    c.node(1).transfer_leadership(2).unwrap();
    c.until("2 leads and everyone follows it", &[], |c| {
        c.role(2) == Role::Leader && c.leader_seen_by(1) == 2 && c.leader_seen_by(3) == 2
    });
    let mut q = c.node(2).propose(b"c".to_vec()).unwrap();
    assert!(matches!(c.outcome(&mut q, &[2]), Outcome::Committed { .. }));
    assert!(c.node(1).disk_full().is_some());
    c.set_full(1, false);
    // Persisting is retried once a tick.
    c.until("node 1 persists again", &[1], |c| c.node(1).disk_full().is_none());
    c.settle(2);
    assert!(c.node(1).disk_full().is_none());
    assert!(matches!(c.outcome(&mut p, &[2]), Outcome::Committed { index, .. } if index == b_index));
    let want = c.applied_data(2);
    assert_eq!(want.iter().map(|(_, d)| d.as_slice()).collect::<Vec<_>>(), vec![b"b".as_slice(), b"c"]);
    assert_eq!(c.applied_data(1), want);
    assert_eq!(c.applied_data(3), want);
}

/// Issue 16: a follower whose disk is full acknowledges nothing, but it still answers
/// heartbeats (with the other follower cut off, the leader keeps its quorum through it and no
/// election happens) and still gets its ReadIndex confirmed by the leader. The cluster commits
/// without it; once its disk has room it catches up.
#[test]
fn a_full_follower_answers_heartbeats_and_reads_then_catches_up() {
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    c.set_full(3, true);
    let mut p = c.node(1).propose(b"x".to_vec()).unwrap();
    assert!(matches!(c.outcome(&mut p, &[1]), Outcome::Committed { .. }));
    let x_index = c.applied_data(1)[0].0;
    c.until("3 knows it cannot persist", &[1], |c| c.node(3).disk_full().is_some());
    let term = c.status(1).hard_state.term;
    c.isolated.insert(2);
    // Five election timeouts: without 3's heartbeat responses the leader would step down
    // (check_quorum), and without the leader's heartbeats 3 would campaign.
    for _ in 0..50 {
        for id in [1, 2, 3] {
            c.node(id).tick().unwrap();
        }
        for _ in 0..3 {
            c.pump();
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert_eq!((c.role(1), c.status(1).hard_state.term), (Role::Leader, term), "the leader kept its quorum");
    assert_eq!(c.leader_seen_by(3), 1);
    c.isolated.remove(&2);
    c.node(3).read_index(b"on the full follower".to_vec()).unwrap();
    c.until("the full follower's read is confirmed", &[1], |c| c.reads.get(&3).is_some_and(|r| !r.is_empty()));
    assert!(c.reads[&3][0].index >= x_index, "{:?}", c.reads[&3]);
    assert!(c.applied_data(3).is_empty(), "3 applies only what it persisted");
    c.set_full(3, false);
    c.until("node 3 persists again", &[3], |c| c.node(3).disk_full().is_none());
    c.settle(1);
    assert_eq!(c.applied_data(3), c.applied_data(1));
    assert!(c.node(3).disk_full().is_none());
}

#[test]
fn reports_of_unreachable_peers_and_snapshots_reach_the_leader() {
    // report_unreachable moves a replicating follower to Probe; a snapshot report for a
    // follower not receiving one changes nothing; on a follower both are no-ops. Replication
    // goes on afterwards.
    let mut c = Cluster::new(&[1, 2, 3]);
    c.elect(1);
    assert_eq!(c.status(1).progress[&2].2, ProgressState::Replicate);
    c.node(1).report_unreachable(2).unwrap();
    assert_eq!(c.status(1).progress[&2].2, ProgressState::Probe);
    c.node(1).report_snapshot(3, SnapshotStatus::Failure).unwrap();
    c.node(1).report_snapshot(3, SnapshotStatus::Finish).unwrap();
    assert_eq!(c.status(1).progress[&3].2, ProgressState::Replicate);
    c.node(2).report_unreachable(1).unwrap();
    c.node(2).report_snapshot(1, SnapshotStatus::Failure).unwrap();
    let mut p = c.node(1).propose(b"after the reports".to_vec()).unwrap();
    assert!(matches!(c.outcome(&mut p, &[1]), Outcome::Committed { .. }));
    c.settle(1);
    assert!(c.applied_data(2).iter().any(|(_, d)| d == b"after the reports"));
    assert_eq!(c.status(1).progress[&2].2, ProgressState::Replicate, "2 answered and is replicated again");
}

/// Takes and advances Readies of a single node (no one to send to) until `done`, collecting
/// committed entries; fails after `WAIT`.
fn run_until<S: StorageMut + Send + 'static>(
    node: &Node<S>,
    applied: &mut Vec<Entry>,
    what: &str,
    mut done: impl FnMut(&Node<S>) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    while !done(node) {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        if let Some(rd) = node.ready_timeout(Duration::from_millis(10)).unwrap() {
            applied.extend(rd.committed_entries.iter().cloned());
            node.advance(rd).unwrap();
        }
    }
}

/// Takes Readies of a single node, advancing them, until one for which `keep` holds, which it
/// returns unadvanced; fails after `WAIT`.
fn ready_where<S: StorageMut + Send + 'static>(node: &Node<S>, what: &str, keep: impl Fn(&Ready) -> bool) -> Ready {
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        let Some(rd) = node.ready_timeout(Duration::from_millis(10)).unwrap() else { continue };
        if keep(&rd) {
            return rd;
        }
        node.advance(rd).unwrap();
    }
}

fn leads<S: StorageMut + Send + 'static>(node: &Node<S>) -> bool {
    node.status().unwrap().soft_state.role == Role::Leader
}

/// Every call on a stopped node returns the stop reason `is_reason` accepts.
fn every_call_fails<S: StorageMut + Send + 'static>(node: &Node<S>, is_reason: impl Fn(&NodeError) -> bool) {
    let cc = ConfChange::simple(ConfChangeType::AddLearnerNode, 9);
    let results: Vec<(&str, Result<(), NodeError>)> = vec![
        ("tick", node.tick()),
        ("campaign", node.campaign()),
        ("propose", node.propose(b"late".to_vec()).map(drop)),
        ("propose_conf_change", node.propose_conf_change(&cc).map(drop)),
        ("step", node.step(keel::raft::Message::new(keel::raft::MessageType::Heartbeat, 2, 1, 9))),
        ("read_index", node.read_index(b"r".to_vec())),
        ("transfer_leadership", node.transfer_leadership(2)),
        ("apply_conf_change", node.apply_conf_change(&cc).map(drop)),
        ("ready", node.ready().map(drop)),
        ("ready_timeout", node.ready_timeout(Duration::from_millis(1)).map(drop)),
        ("try_ready", node.try_ready().map(drop)),
        ("advance", node.advance(Ready::default())),
        ("status", node.status().map(drop)),
        ("report_unreachable", node.report_unreachable(2)),
        ("report_snapshot", node.report_snapshot(2, SnapshotStatus::Failure)),
        ("with_storage", node.with_storage(|_| ())),
        ("stop", node.stop().map(drop)),
    ];
    for (call, r) in results {
        assert!(r.as_ref().is_err_and(&is_reason), "{call} after stop: {r:?}");
    }
}

#[test]
fn stop_ends_the_thread_from_any_state_and_later_calls_say_stopped() {
    // A node that never did anything.
    let idle = Arc::new(Node::start(&Config::new(1), bootstrap(&[1, 2, 3])).unwrap());
    let n = idle.clone();
    within("stopping an idle node", move || n.stop().map(drop)).unwrap();
    every_call_fails(&idle, |e| matches!(e, NodeError::Stopped));

    // A leader holding a Ready it never advanced, with a proposal undecided: the Ready's entry
    // was persisted before it was handed out, and the proposal's fate is unknown.
    let node = Arc::new(Node::start(&Config::new(1), bootstrap(&[1])).unwrap());
    node.campaign().unwrap();
    run_until(&node, &mut Vec::new(), "1 leads", leads);
    let mut p = node.propose(b"in flight".to_vec()).unwrap();
    let index = node.status().unwrap().last_index;
    // A single node commits an entry only once the Ready holding it is advanced.
    let rd = ready_where(&node, "the Ready holds the proposal", |rd| rd.entries.iter().any(|e| e.index == index));
    let n = node.clone();
    let storage = within("stopping with a Ready outstanding", move || n.stop()).unwrap();
    assert_eq!(storage.last_index().unwrap(), index, "persisted before it was handed out");
    assert!(matches!(p.wait_timeout(WAIT), Some(Outcome::Unknown(UnknownReason::Stopped))), "{p:?}");
    assert!(matches!(node.advance(rd), Err(NodeError::Stopped)));
    every_call_fails(&node, |e| matches!(e, NodeError::Stopped));

    // A thread blocked in ready() when another stops the node.
    let node = Arc::new(Node::start(&Config::new(1), bootstrap(&[1, 2, 3])).unwrap());
    let (tx, rx) = mpsc::channel();
    let n = node.clone();
    std::thread::spawn(move || {
        let _ = tx.send(n.ready().map(drop));
    });
    std::thread::sleep(Duration::from_millis(50)); // let it block
    let n = node.clone();
    within("stopping while another thread waits for a Ready", move || n.stop().map(drop)).unwrap();
    let r = rx.recv_timeout(WAIT).expect("ready() returned");
    assert!(matches!(r, Err(NodeError::Stopped)), "{r:?}");
}

#[test]
fn a_proposal_is_told_its_outcome_when_the_ready_handing_it_out_is_advanced() {
    // So a handle that says Committed means the application applied the entry (it advances
    // after applying); a node stopped before that advance still tells what the Ready decided.
    let node = Arc::new(Node::start(&Config::new(1), bootstrap(&[1])).unwrap());
    node.campaign().unwrap();
    run_until(&node, &mut Vec::new(), "1 leads", leads);
    let mut p = node.propose(b"one".to_vec()).unwrap();
    let index = node.status().unwrap().last_index;
    let hands_out = |i: u64| move |rd: &Ready| rd.committed_entries.iter().any(|e| e.index == i);
    let rd = ready_where(&node, "the entry is handed out", hands_out(index));
    std::thread::sleep(Duration::from_millis(20));
    assert!(p.try_outcome().is_none(), "told before the advance: {p:?}");
    node.advance(rd).unwrap();
    let outcome = p.try_outcome();
    assert!(matches!(outcome, Some(Outcome::Committed { index: i, .. }) if i == index), "{outcome:?}");

    let mut q = node.propose(b"two".to_vec()).unwrap();
    let index = node.status().unwrap().last_index;
    let _rd = ready_where(&node, "the second entry is handed out", hands_out(index));
    let n = node.clone();
    within("stopping with a decided Ready outstanding", move || n.stop()).unwrap();
    let outcome = q.try_outcome();
    assert!(matches!(outcome, Some(Outcome::Committed { index: i, .. }) if i == index), "{outcome:?}");
}

/// MemStorage whose appends fail while `fail` is set (a failed write), and whose appends and
/// snapshot installs answer `Error::NoSpace` while `full` is set (a full disk: nothing written).
struct FailingAppends {
    inner: MemStorage,
    fail: Arc<AtomicBool>,
    full: Arc<AtomicBool>,
}

impl FailingAppends {
    fn new(inner: MemStorage, fail: Arc<AtomicBool>, full: Arc<AtomicBool>) -> FailingAppends {
        FailingAppends { inner, fail, full }
    }

    fn no_space(&self, op: &'static str) -> keel::Result<()> {
        match self.full.load(Ordering::SeqCst) {
            true => Err(keel::Error::NoSpace { op, path: "/full".into() }),
            false => Ok(()),
        }
    }
}

impl Storage for FailingAppends {
    fn initial_state(&self) -> keel::Result<RaftState> {
        self.inner.initial_state()
    }
    fn entries(&self, lo: u64, hi: u64, max_bytes: u64) -> keel::Result<Vec<Entry>> {
        self.inner.entries(lo, hi, max_bytes)
    }
    fn term(&self, index: u64) -> keel::Result<u64> {
        self.inner.term(index)
    }
    fn first_index(&self) -> keel::Result<u64> {
        self.inner.first_index()
    }
    fn last_index(&self) -> keel::Result<u64> {
        self.inner.last_index()
    }
    fn snapshot(&self, request_index: u64) -> keel::Result<Snapshot> {
        self.inner.snapshot(request_index)
    }
}

impl StorageMut for FailingAppends {
    type SnapshotWriter = <MemStorage as StorageMut>::SnapshotWriter;

    fn append(&mut self, entries: &[Entry]) -> keel::Result<()> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(keel::Error::Failed { cause: "injected append error".into() });
        }
        self.no_space("prepare segment")?;
        self.inner.append(entries)
    }
    fn set_hard_state(&mut self, hard_state: &HardState) -> keel::Result<()> {
        self.inner.set_hard_state(hard_state)
    }
    fn set_conf_state(&mut self, conf_state: &ConfState) -> keel::Result<()> {
        self.inner.set_conf_state(conf_state)
    }
    fn apply_snapshot(&mut self, metadata: &SnapshotMetadata, data: &mut dyn Read) -> keel::Result<()> {
        self.no_space("write snapshot")?;
        self.inner.apply_snapshot(metadata, data)
    }
    fn begin_snapshot(&self, index: u64, conf_state: &ConfState) -> keel::Result<Self::SnapshotWriter> {
        self.inner.begin_snapshot(index, conf_state)
    }
    fn finish_snapshot(&mut self, writer: Self::SnapshotWriter) -> keel::Result<()> {
        self.inner.finish_snapshot(writer)
    }
    fn compact(&mut self, index: u64) -> keel::Result<()> {
        self.inner.compact(index)
    }
    fn receive_snapshot(&self, metadata: &SnapshotMetadata) -> keel::Result<Box<dyn keel::storage::SnapshotSink>> {
        self.inner.receive_snapshot(metadata)
    }
    fn snapshot_stager(&self) -> std::sync::Arc<dyn keel::storage::SnapshotStager> {
        self.inner.snapshot_stager()
    }
}

#[test]
fn a_storage_error_stops_the_node_and_every_later_call_reports_it() {
    // The node thread's persist of a Ready fails: the Ready is never handed out, ready() says
    // why, and so does every later call; stop still gives the storage back.
    let fail = Arc::new(AtomicBool::new(false));
    let storage = FailingAppends::new(bootstrap(&[1]), fail.clone(), Arc::new(AtomicBool::new(false)));
    let node = Arc::new(Node::start(&Config::new(1), storage).unwrap());
    node.campaign().unwrap();
    run_until(&node, &mut Vec::new(), "1 leads and committed its first entry", |n| {
        let st = n.status().unwrap();
        st.soft_state.role == Role::Leader && st.hard_state.commit == st.last_index
    });
    let last = node.status().unwrap().last_index;
    fail.store(true, Ordering::SeqCst);
    let mut p = node.propose(b"never persisted".to_vec()).unwrap();
    // Readies persisted before the failure are still handed out; then the failure is.
    let deadline = Instant::now() + WAIT;
    let err = loop {
        assert!(Instant::now() < deadline, "the failure was not reported");
        match node.ready_timeout(Duration::from_millis(10)) {
            Ok(Some(rd)) => {
                assert!(rd.entries.is_empty(), "an append that failed was handed out: {rd:?}");
                if let Err(e) = node.advance(rd) {
                    break e;
                }
            }
            Ok(None) => {}
            Err(e) => break e,
        }
    };
    assert!(matches!(&err, NodeError::Storage(e) if e.to_string().contains("injected")), "{err:?}");
    let r = node.ready_timeout(WAIT);
    assert!(matches!(&r, Err(NodeError::Storage(_))), "{r:?}");
    assert!(matches!(p.wait_timeout(WAIT), Some(Outcome::Unknown(UnknownReason::Stopped))), "{p:?}");
    let n = node.clone();
    let storage = within("stopping a failed node", move || n.stop()).unwrap();
    assert_eq!(storage.last_index().unwrap(), last, "nothing after the failure was stored");
    every_call_fails(&node, |e| matches!(e, NodeError::Storage(_)));
}

#[test]
fn a_single_node_over_disk_storage_restarts_with_its_state() {
    // Propose and commit, stop, reopen the directory: the HardState and the log are intact
    // and the committed entries are handed out again; the restarted node goes on. Dropping a
    // Node (without stop) also ends its thread and releases the directory.
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        let (mut s, _) = DiskStorage::open(dir.path(), StorageOptions::default()).unwrap();
        if s.initial_state().unwrap().conf_state.voters.is_empty() {
            s.set_conf_state(&ConfState { voters: vec![1], ..ConfState::default() }).unwrap();
        }
        s
    };
    let node = Node::start(&Config::new(1), open()).unwrap();
    node.campaign().unwrap();
    let mut applied = Vec::new();
    run_until(&node, &mut applied, "1 leads", leads);
    let mut ps: Vec<Proposal> = (0..3).map(|k| node.propose(vec![b'a' + k]).unwrap()).collect();
    let mut committed = Vec::new();
    run_until(&node, &mut applied, "the proposals commit", |_| ps.iter_mut().all(|p| p.try_outcome().is_some()));
    for (k, p) in ps.iter_mut().enumerate() {
        match p.try_outcome().unwrap() {
            Outcome::Committed { index, term } => committed.push((index, term, vec![b'a' + k as u8])),
            other => panic!("{other:?}"),
        }
    }
    let (last_index, _, _) = *committed.last().unwrap();
    run_until(&node, &mut applied, "the last commit index is persisted", |n| {
        n.with_storage(|s| s.initial_state().unwrap().hard_state.commit).unwrap() == last_index
    });
    let before = node.status().unwrap();
    node.stop().unwrap().close().unwrap();

    let node = Node::start(&Config::new(1), open()).unwrap();
    let after = node.status().unwrap();
    assert_eq!(after.hard_state, before.hard_state);
    assert_eq!(after.last_index, last_index);
    let mut again: Vec<Entry> = Vec::new();
    let deadline = Instant::now() + WAIT;
    while again.last().is_none_or(|e| e.index < last_index) {
        assert!(Instant::now() < deadline, "the log was not handed out again");
        if let Some(rd) = node.ready_timeout(Duration::from_millis(10)).unwrap() {
            again.extend(rd.committed_entries.iter().cloned());
            node.advance(rd).unwrap();
        }
    }
    let again: Vec<(u64, u64, Vec<u8>)> =
        again.iter().filter(|e| !e.data.is_empty()).map(|e| (e.index, e.term, e.data.to_vec())).collect();
    assert_eq!(again, committed);
    node.campaign().unwrap();
    run_until(&node, &mut Vec::new(), "1 leads again", leads);
    let mut p = node.propose(b"after restart".to_vec()).unwrap();
    run_until(&node, &mut Vec::new(), "it commits", |_| p.try_outcome().is_some());
    let outcome = p.try_outcome().unwrap();
    let want = (last_index + 2, before.hard_state.term + 1);
    assert!(matches!(outcome, Outcome::Committed { index, term } if (index, term) == want), "{outcome:?}");
    drop(node);
    let s = open();
    assert_eq!(s.last_index().unwrap(), last_index + 2, "the dropped node's thread ended and released the directory");
}
