//! Behaviours the Raft paper (Ongaro and Ousterhout, "In Search of an Understandable Consensus
//! Algorithm", extended version) states in §5.1-§5.4, each test citing its section; then PreVote
//! and CheckQuorum (§9.6 of Ongaro's thesis), flow control, batching, proposal errors, and the
//! persistence split of `Ready` (thesis §10.2.1).

use keel::raft::{Config, Message, MessageType, ProgressState, ProposeError, RaftError, RawNode, Role};
use keel::storage::{ConfState, Entry, HardState, MemStorage, Storage, StorageMut};
use std::collections::BTreeMap;

fn storage(voters: &[u64], terms: &[u64], term: u64) -> MemStorage {
    let mut s = MemStorage::new();
    s.set_conf_state(&ConfState { voters: voters.to_vec(), ..ConfState::default() }).unwrap();
    let entries: Vec<Entry> = terms
        .iter()
        .enumerate()
        .map(|(i, &t)| Entry::new(i as u64 + 1, t, format!("e{}-{t}", i + 1).into_bytes()))
        .collect();
    if !entries.is_empty() {
        s.append(&entries).unwrap();
    }
    s.set_hard_state(&HardState { term, vote: 0, commit: 0 }).unwrap();
    s
}

fn config(id: u64, pre_vote: bool, check_quorum: bool) -> Config {
    let mut c = Config::new(id);
    c.pre_vote = pre_vote;
    c.check_quorum = check_quorum;
    c
}

/// Nodes whose messages are collected, then delivered by hand or all at once.
struct Cluster {
    nodes: BTreeMap<u64, RawNode<MemStorage>>,
    queue: Vec<Message>,
    /// Messages to or from these nodes are dropped.
    isolated: Vec<u64>,
    /// Round trips used by `settle` (rounds of delivery).
    rounds: usize,
}

impl Cluster {
    /// Nodes with the given logs (entry terms) and current terms.
    fn with_logs(logs: &[(&[u64], u64)], pre_vote: bool, check_quorum: bool) -> Cluster {
        let ids: Vec<u64> = (1..=logs.len() as u64).collect();
        let nodes = ids
            .iter()
            .zip(logs)
            .map(|(&id, (terms, term))| {
                (id, RawNode::new(&config(id, pre_vote, check_quorum), storage(&ids, terms, *term)).unwrap())
            })
            .collect();
        Cluster { nodes, queue: Vec::new(), isolated: Vec::new(), rounds: 0 }
    }

    fn new(n: usize) -> Cluster {
        Cluster::with_logs(&vec![(&[][..], 0); n], false, false)
    }

    fn node(&mut self, id: u64) -> &mut RawNode<MemStorage> {
        self.nodes.get_mut(&id).unwrap()
    }

    /// Persists and advances every Ready of `id`, queueing its messages.
    fn persist(&mut self, id: u64) {
        while self.nodes[&id].has_ready() {
            let rd = self.node(id).ready().unwrap();
            self.queue.extend(rd.messages.iter().cloned());
            self.node(id).persist(&rd).unwrap();
            self.queue.extend(rd.persisted_messages.iter().cloned());
            self.node(id).advance(rd).unwrap();
        }
    }

    fn persist_all(&mut self) {
        for id in self.nodes.keys().copied().collect::<Vec<_>>() {
            self.persist(id);
        }
    }

    /// Persists everything, then delivers what was queued (one network round).
    fn round(&mut self) {
        self.persist_all();
        self.rounds += 1;
        for m in std::mem::take(&mut self.queue) {
            if !self.isolated.contains(&m.from) && !self.isolated.contains(&m.to) {
                let _ = self.node(m.to).step(m);
            }
        }
    }

    /// Delivers queued messages (persisting in between) until none are left.
    fn settle(&mut self) {
        self.rounds = 0;
        loop {
            self.persist_all();
            if self.queue.is_empty() {
                return;
            }
            self.round();
        }
    }

    fn elect(&mut self, id: u64) {
        self.node(id).campaign().unwrap();
        self.settle();
        assert_eq!(self.role(id), Role::Leader, "node {id} should have won");
    }

    fn role(&self, id: u64) -> Role {
        self.nodes[&id].status().soft_state.role
    }

    fn term(&self, id: u64) -> u64 {
        self.nodes[&id].status().hard_state.term
    }

    fn commit(&self, id: u64) -> u64 {
        self.nodes[&id].status().hard_state.commit
    }

    fn log_terms(&self, id: u64) -> Vec<u64> {
        let (first, last) = self.nodes[&id].log_bounds().unwrap();
        self.nodes[&id].log_entries(first, last + 1).unwrap().iter().map(|e| e.term).collect()
    }
}

fn msg(kind: MessageType, from: u64, to: u64, term: u64) -> Message {
    Message::new(kind, from, to, term)
}

#[test]
fn s5_1_a_higher_term_in_any_message_makes_a_node_adopt_it_and_follow() {
    // §5.1: "If a server's current term is smaller than the other's, then it updates its current
    // term to the larger value. If a candidate or leader discovers that its term is out of date,
    // it immediately reverts to follower state."
    for role in [Role::Follower, Role::Candidate, Role::Leader] {
        let mut c = Cluster::new(3);
        match role {
            Role::Leader => c.elect(1),
            Role::Candidate => c.node(1).campaign().unwrap(),
            _ => {}
        }
        let t = c.term(1);
        for kind in [MessageType::Append, MessageType::Heartbeat, MessageType::AppendResponse] {
            let mut m = msg(kind, 2, 1, t + 5);
            m.index = 0;
            c.node(1).step(m).unwrap();
            assert_eq!(c.term(1), t + 5, "{role:?} adopts the term of a {kind:?}");
            assert_eq!(c.role(1), Role::Follower, "{role:?} reverts to follower on a {kind:?}");
        }
    }
}

#[test]
fn s5_1_a_stale_term_message_is_rejected() {
    // §5.1: "If a server receives a request with a stale term number, it rejects the request."
    let mut c = Cluster::new(3);
    c.elect(1);
    let t = c.term(2);
    let mut m = msg(MessageType::Append, 3, 2, t - 1);
    m.entries = vec![Entry::new(2, t - 1, b"stale".to_vec())];
    m.index = 1;
    // At t = 1 the stale term is 0, which no entry has: then the message is refused as malformed
    // before the term is even compared; either way it is rejected.
    match c.node(2).step(m) {
        Ok(()) => assert!(t > 1),
        Err(RaftError::Malformed { .. }) => assert_eq!(t, 1),
        Err(e) => panic!("{e}"),
    }
    c.persist(2);
    assert!(c.log_terms(2).iter().all(|&x| x == t), "nothing of the stale leader was appended");
}

#[test]
fn s5_2_a_follower_that_hears_nothing_campaigns_after_a_randomized_timeout() {
    // §5.2: "If a follower receives no communication over a period of time called the election
    // timeout, then it ... begins an election"; timeouts are "chosen randomly from a fixed
    // interval" ([election_tick, 2 * election_tick) here).
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..200 {
        let mut cfg = config(1, false, false);
        cfg.seed = seed;
        let mut node = RawNode::new(&cfg, storage(&[1, 2, 3], &[], 0)).unwrap();
        let mut ticks = 0;
        while node.status().soft_state.role == Role::Follower {
            node.tick();
            ticks += 1;
            assert!(ticks < 2 * cfg.election_tick, "no election within twice the timeout");
        }
        assert!(ticks >= cfg.election_tick, "campaigned after {ticks} ticks, before the timeout");
        assert_eq!(node.status().soft_state.role, Role::Candidate);
        assert_eq!(node.status().hard_state.term, 1, "a candidate increments its term");
        seen.insert(ticks);
    }
    assert!(seen.len() > 5, "timeouts are spread over the interval: {seen:?}");
}

#[test]
fn s5_2_a_candidate_wins_with_a_majority_in_one_round() {
    // §5.2: "A candidate wins an election if it receives votes from a majority of the servers in
    // the full cluster for the same term."
    for (n, isolated) in [(3, vec![]), (3, vec![3]), (5, vec![4, 5]), (5, vec![3, 4, 5])] {
        let mut c = Cluster::new(n);
        c.isolated = isolated.clone();
        c.node(1).campaign().unwrap();
        c.round(); // requests out
        c.round(); // votes back
        let majority = n - isolated.len() > n / 2;
        assert_eq!(c.role(1) == Role::Leader, majority, "{n} nodes, {isolated:?} unreachable: one round trip");
    }
}

#[test]
fn s5_2_each_node_votes_for_at_most_one_candidate_per_term() {
    // §5.2: "Each server will vote for at most one candidate in a given term, on a
    // first-come-first-served basis."
    let mut c = Cluster::new(3);
    for (candidate, granted) in [(2, true), (3, false), (2, true)] {
        let mut m = msg(MessageType::RequestVote, candidate, 1, 1);
        m.index = 0;
        c.node(1).step(m).unwrap();
        let rd = c.node(1).ready().unwrap();
        let reply = rd.messages.iter().chain(&rd.persisted_messages).find(|m| m.to == candidate).unwrap().clone();
        c.node(1).persist(&rd).unwrap();
        c.node(1).advance(rd).unwrap();
        assert_eq!(!reply.reject, granted, "vote for {candidate}");
    }
}

#[test]
fn s5_4_1_a_vote_is_refused_to_a_candidate_with_a_less_up_to_date_log() {
    // §5.4.1: "the voter denies its vote if its own log is more up-to-date than that of the
    // candidate": a later last term wins; with equal last terms, the longer log.
    let voter_log: &[u64] = &[1, 2, 2];
    for (cand_last_index, cand_last_term, granted) in
        [(3, 2, true), (4, 2, true), (2, 2, false), (9, 1, false), (1, 3, true)]
    {
        let mut node = RawNode::new(&config(1, false, false), storage(&[1, 2, 3], voter_log, 2)).unwrap();
        let mut m = msg(MessageType::RequestVote, 2, 1, 3);
        m.index = cand_last_index;
        m.log_term = cand_last_term;
        node.step(m).unwrap();
        let rd = node.ready().unwrap();
        let reply = rd.messages.iter().chain(&rd.persisted_messages).find(|m| m.to == 2).unwrap();
        assert_eq!(!reply.reject, granted, "candidate last ({cand_last_index}, {cand_last_term})");
    }
}

#[test]
fn s5_3_the_leader_replicates_and_commits_once_a_majority_stores_an_entry() {
    // §5.3: "A log entry is committed once the leader that created the entry has replicated it
    // on a majority of the servers"; followers learn the commit index from later appends.
    let mut c = Cluster::new(5);
    c.isolated = vec![4, 5];
    c.elect(1);
    c.node(1).propose(b"x".to_vec()).unwrap();
    c.settle();
    let last = c.nodes[&1].status().last_index;
    assert_eq!(c.commit(1), last, "committed with 3 of 5");
    c.node(1).tick(); // a heartbeat carries the commit index to followers
    c.settle();
    assert_eq!(c.commit(2), last);
    assert_eq!(c.commit(4), 0, "an isolated follower learns nothing");
    c.isolated = vec![3, 4, 5];
    c.node(1).propose(b"y".to_vec()).unwrap();
    c.settle();
    assert_eq!(c.commit(1), last, "2 of 5 is not a majority");
}

#[test]
fn s5_3_an_append_whose_previous_entry_does_not_match_is_rejected() {
    // §5.3: "If the follower does not find an entry in its log with the same index and term,
    // then it refuses the new entries."
    let mut node = RawNode::new(&config(2, false, false), storage(&[1, 2, 3], &[1, 1, 2], 2)).unwrap();
    let mut m = msg(MessageType::Append, 1, 2, 3);
    m.index = 3;
    m.log_term = 3; // we hold (3, 2)
    m.entries = vec![Entry::new(4, 3, b"z".to_vec())];
    node.step(m).unwrap();
    let rd = node.ready().unwrap();
    let reply = rd.messages.iter().find(|m| m.kind == MessageType::AppendResponse).unwrap();
    assert!(reply.reject);
    assert_eq!((reply.reject_hint, reply.log_term), (3, 2), "hint: our last entry with term <= 3");
    assert_eq!(node.status().last_index, 3);
}

#[test]
fn s5_3_figure_7_the_leader_repairs_every_follower_log_in_a_few_rounds() {
    // §5.3, Figure 7: a leader of term 8 and followers (a)-(f) with missing, extra and
    // conflicting entries; every follower ends with the leader's log. Fast backtracking repairs
    // each in a few round trips, not one per entry.
    let leader: &[u64] = &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let followers: [&[u64]; 6] = [
        &[1, 1, 1, 4, 4, 5, 5, 6, 6],
        &[1, 1, 1, 4],
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
        &[1, 1, 1, 4, 4, 4, 4],
        &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
    ];
    for (name, follower) in ["a", "b", "c", "d", "e", "f"].iter().zip(followers) {
        let mut c = Cluster::with_logs(&[(leader, 7), (follower, 7), (&[], 7)], false, false);
        c.isolated = vec![3];
        // Node 3 (empty log) votes for the leader, so (d), whose log is longer, can be repaired.
        c.isolated.clear();
        c.node(1).campaign().unwrap();
        c.settle();
        assert_eq!(c.role(1), Role::Leader, "({name})");
        let mut expected = leader.to_vec();
        expected.push(c.term(1));
        assert_eq!(c.log_terms(2), expected, "follower ({name}) repaired");
        assert!(c.rounds <= 8, "follower ({name}) took {} rounds", c.rounds);
    }
}

#[test]
fn s5_4_2_an_entry_of_an_earlier_term_is_not_committed_by_counting_replicas() {
    // §5.4.2 and Figure 8: "Raft never commits log entries from previous terms by counting
    // replicas"; they are committed only through an entry of the leader's current term.
    // Leader 1 holds (2, term 2), which no one else has; it wins term 4.
    let mut c = Cluster::with_logs(&[(&[1, 2], 3), (&[1], 3), (&[1], 3)], false, false);
    c.node(1).campaign().unwrap();
    // Deliver votes, but drop every append response that covers the new term's entry.
    c.persist_all();
    for _ in 0..6 {
        for m in std::mem::take(&mut c.queue) {
            let covers_current = m.kind == MessageType::AppendResponse && !m.reject && m.index >= 3;
            if !covers_current {
                let _ = c.node(m.to).step(m);
            }
        }
        // Followers that got (2, 2) but not (3, 4): feed the leader a response for index 2 only.
        c.persist_all();
    }
    assert_eq!(c.role(1), Role::Leader);
    let mut ack = msg(MessageType::AppendResponse, 2, 1, c.term(1));
    ack.index = 2;
    c.node(1).step(ack).unwrap();
    c.persist(1);
    assert!(c.commit(1) < 2, "entry (2, term 2) on a majority is not committed by counting: commit {}", c.commit(1));
    let mut ack = msg(MessageType::AppendResponse, 2, 1, c.term(1));
    ack.index = 3;
    c.node(1).step(ack).unwrap();
    c.persist(1);
    assert_eq!(c.commit(1), 3, "committing the term-4 entry commits the one before it");
}

#[test]
fn pre_vote_keeps_a_rejoining_partitioned_node_from_raising_the_term() {
    // Thesis §9.6: with PreVote a node campaigns only if a majority would vote for it.
    let mut c = Cluster::with_logs(&[(&[], 0), (&[], 0), (&[], 0)], true, true);
    c.elect(1);
    let term = c.term(1);
    c.isolated = vec![3];
    for _ in 0..50 {
        c.node(3).tick();
        c.node(1).tick();
        c.settle();
    }
    assert_eq!(c.term(3), term, "pre-elections that cannot win leave the term alone");
    assert_eq!(c.role(3), Role::PreCandidate);
    c.isolated.clear();
    c.node(1).tick();
    c.settle();
    assert_eq!((c.role(1), c.term(1)), (Role::Leader, term), "the leader was not disrupted");
    assert_eq!(c.role(3), Role::Follower);
}

#[test]
fn check_quorum_a_leader_cut_off_from_a_quorum_steps_down() {
    // Thesis §6.2: a leader that has not heard from a majority within an election timeout steps
    // down; followers that heard from a leader within the timeout ignore vote requests.
    let mut c = Cluster::with_logs(&[(&[], 0), (&[], 0), (&[], 0)], false, true);
    c.elect(1);
    c.isolated = vec![1];
    for _ in 0..2 * 10 {
        c.node(1).tick();
        c.settle();
    }
    assert_eq!(c.role(1), Role::Follower, "leader without a quorum stepped down");
    // Follower 2 heard from a leader recently: a vote request from 3 is ignored.
    let mut c = Cluster::with_logs(&[(&[], 0), (&[], 0), (&[], 0)], false, true);
    c.elect(1);
    let term = c.term(2);
    let mut m = msg(MessageType::RequestVote, 3, 2, term + 1);
    m.index = 10;
    m.log_term = term;
    c.node(2).step(m).unwrap();
    assert_eq!(c.term(2), term, "in lease: the disruptive vote is ignored, the term kept");
}

#[test]
fn flow_control_the_window_fills_drains_and_resumes() {
    let mut c = Cluster::new(2);
    c.elect(1);
    // Stop acknowledgements and propose more than the window holds.
    let window = Config::new(1).max_inflight_msgs;
    for i in 0..window + 10 {
        c.node(1).propose(vec![i as u8; 10]).unwrap();
        c.persist(1);
    }
    let appends = c.queue.iter().filter(|m| m.kind == MessageType::Append && !m.entries.is_empty()).count();
    assert_eq!(appends, window, "exactly a window of appends in flight");
    assert_eq!(c.nodes[&1].inflight_count(2), window);
    assert_eq!(c.nodes[&1].status().progress[&2].2, ProgressState::Replicate);
    c.settle();
    assert_eq!(c.nodes[&1].inflight_count(2), 0, "drained");
    assert_eq!(c.commit(1), c.nodes[&1].status().last_index, "and resumed until everything committed");
}

#[test]
fn batching_proposals_between_readys_go_to_storage_in_one_write_and_few_messages() {
    let mut c = Cluster::new(3);
    c.elect(1);
    let mut cfg_limit = Config::new(1).max_size_per_msg as usize;
    cfg_limit = cfg_limit.max(1);
    let payload = 4096;
    let n = 1000;
    for i in 0..n {
        c.node(1).propose(vec![i as u8; payload]).unwrap();
    }
    let rd = c.node(1).ready().unwrap();
    assert_eq!(rd.entries.len(), n, "one storage write for all proposals");
    let to_2: Vec<&Message> = rd.messages.iter().filter(|m| m.to == 2 && m.kind == MessageType::Append).collect();
    let entries: usize = to_2.iter().map(|m| m.entries.len()).sum();
    assert!(!to_2.is_empty() && to_2.len() <= Config::new(1).max_inflight_msgs);
    for m in &to_2 {
        assert!(
            m.entry_bytes() <= cfg_limit as u64 || m.entries.len() == 1,
            "a message holds at most max_size_per_msg"
        );
    }
    assert!(entries >= to_2.len() * (cfg_limit / payload - 1), "messages are filled up to the size limit");
}

#[test]
fn proposals_fail_with_typed_errors() {
    let mut c = Cluster::new(3);
    assert!(matches!(c.node(2).propose(b"x".to_vec()), Err(RaftError::Propose(ProposeError::NoLeader))));
    c.elect(1);
    let mut cfg = config(2, false, false);
    cfg.disable_proposal_forwarding = true;
    let mut follower = RawNode::new(&cfg, storage(&[1, 2, 3], &[], 0)).unwrap();
    let mut hb = msg(MessageType::Heartbeat, 1, 2, 1);
    hb.commit = 0;
    follower.step(hb).unwrap();
    assert!(matches!(follower.propose(b"x".to_vec()), Err(RaftError::Propose(ProposeError::ForwardingDisabled))));
    // Forwarding (the default) hands the proposal to the leader.
    c.node(2).propose(b"fwd".to_vec()).unwrap();
    c.settle();
    let (first, last) = c.nodes[&1].log_bounds().unwrap();
    assert!(c.nodes[&1].log_entries(first, last + 1).unwrap().iter().any(|e| &*e.data == b"fwd"));
    // The uncommitted limit.
    let mut cfg = config(1, false, false);
    cfg.max_uncommitted_size = 100;
    let mut solo_leader = RawNode::new(&cfg, storage(&[1, 2], &[], 0)).unwrap();
    solo_leader.campaign().unwrap();
    let rd = solo_leader.ready().unwrap();
    solo_leader.persist(&rd).unwrap();
    solo_leader.advance(rd).unwrap();
    let mut v = msg(MessageType::RequestVoteResponse, 2, 1, 1);
    v.reject = false;
    solo_leader.step(v).unwrap();
    assert_eq!(solo_leader.status().soft_state.role, Role::Leader);
    solo_leader.propose(vec![0; 60]).unwrap();
    assert!(matches!(
        solo_leader.propose(vec![0; 60]),
        Err(RaftError::Propose(ProposeError::UncommittedSizeExceeded { .. }))
    ));
}

#[test]
fn leader_persists_in_parallel_and_counts_itself_only_once_persisted() {
    // Thesis §10.2.1: the leader sends appends before its own write; its acknowledgement counts
    // only after it reports the entries persisted.
    let mut c = Cluster::new(3);
    c.elect(1);
    c.node(1).propose(b"p".to_vec()).unwrap();
    let rd = c.node(1).ready().unwrap();
    let index = rd.entries.last().unwrap().index;
    assert!(rd.messages.iter().any(|m| m.kind == MessageType::Append && m.entries.iter().any(|e| e.index == index)));
    // A follower acknowledges; the leader has not persisted: 1 of 3 is not a quorum.
    let mut ack = msg(MessageType::AppendResponse, 2, 1, c.term(1));
    ack.index = index;
    c.node(1).step(ack).unwrap();
    assert!(c.commit(1) < index);
    c.node(1).persist(&rd).unwrap();
    c.node(1).advance(rd).unwrap();
    assert_eq!(c.commit(1), index, "leader + one follower once the leader's copy is durable");
}

#[test]
fn acknowledgements_and_votes_wait_for_persistence() {
    // A follower's acceptance and a granted vote go out only after the Ready is persisted.
    let mut node = RawNode::new(&config(2, false, false), storage(&[1, 2, 3], &[], 0)).unwrap();
    let mut v = msg(MessageType::RequestVote, 1, 2, 1);
    v.index = 0;
    node.step(v).unwrap();
    let rd = node.ready().unwrap();
    assert!(rd.hard_state.is_some_and(|hs| hs.vote == 1 && hs.term == 1) && rd.must_sync);
    assert!(rd.messages.is_empty());
    assert!(rd.persisted_messages.iter().any(|m| m.kind == MessageType::RequestVoteResponse && !m.reject));
    node.persist(&rd).unwrap();
    node.advance(rd).unwrap();
    let mut a = msg(MessageType::Append, 1, 2, 1);
    a.entries = vec![Entry::new(1, 1, b"e".to_vec())];
    node.step(a).unwrap();
    let rd = node.ready().unwrap();
    assert_eq!(rd.entries.len(), 1);
    assert!(rd.messages.iter().all(|m| m.kind != MessageType::AppendResponse));
    assert!(rd.persisted_messages.iter().any(|m| m.kind == MessageType::AppendResponse && m.index == 1));
}

#[test]
fn a_commit_only_change_does_not_require_a_sync() {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.node(1).propose(b"x".to_vec()).unwrap();
    c.persist(1);
    let mut ack = msg(MessageType::AppendResponse, 2, 1, c.term(1));
    ack.index = c.nodes[&1].status().last_index;
    c.node(1).step(ack).unwrap();
    let rd = c.node(1).ready().unwrap();
    assert!(rd.hard_state.is_some() && rd.entries.is_empty() && !rd.must_sync, "{rd:?}");
}

#[test]
fn config_and_membership_errors_are_typed() {
    use keel::raft::{ConfigError, NewNodeError};
    let mut cfg = Config::new(1);
    cfg.election_tick = 1;
    assert!(matches!(
        RawNode::new(&cfg, storage(&[1], &[], 0)),
        Err(NewNodeError::Config(ConfigError::ElectionNotAboveHeartbeat { .. }))
    ));
    assert!(matches!(
        RawNode::new(&Config::new(9), storage(&[1], &[], 0)),
        Err(NewNodeError::Config(ConfigError::NotAMember(9)))
    ));
    let s = storage(&[1], &[], 0);
    assert_eq!(s.last_index().unwrap(), 0);
}

#[test]
fn a_snapshot_the_follower_already_holds_is_acknowledged_only_up_to_its_commit() {
    // §7 (log compaction) and etcd's handleSnapshot: a follower whose log already holds the
    // snapshot's last entry commits through it, but its entries after that index may be from
    // an older leader and differ from the current one's. Its answer must claim no more than
    // it knows matches (its commit), or the leader counts those entries towards a quorum.
    let mut node = RawNode::new(&config(2, false, false), storage(&[1, 2, 3], &[1, 1, 1, 2, 2], 3)).unwrap();
    let mut snap = msg(MessageType::Snapshot, 1, 2, 3);
    snap.snapshot = Some(keel::storage::Snapshot::from_bytes(
        keel::storage::SnapshotMetadata {
            index: 3,
            term: 1,
            conf_state: ConfState { voters: vec![1, 2, 3], ..ConfState::default() },
        },
        b"state".to_vec(),
    ));
    node.step(snap).unwrap();
    let rd = node.ready().unwrap();
    let ack = rd
        .messages
        .iter()
        .chain(&rd.persisted_messages)
        .find(|m| m.kind == MessageType::AppendResponse)
        .expect("the follower answers the snapshot");
    assert!(!ack.reject);
    assert_eq!(ack.index, 3, "acknowledged through the snapshot's index, not the follower's last index (5)");
    assert_eq!(node.status().hard_state.commit, 3);
}

#[test]
fn a_malformed_message_from_the_network_is_refused_not_trusted() {
    // Messages are untrusted input: an Append whose entries do not follow its index one by one,
    // whose terms go backwards or pass the message's term, or a Snapshot message without a
    // snapshot, decodes fine but no correct peer sends it. It must neither panic the node nor
    // change its log; the application gets a typed error.
    let append = |index: u64, terms: &[(u64, u64)]| {
        let mut a = msg(MessageType::Append, 1, 2, 3);
        (a.index, a.log_term, a.commit) = (index, 1, 2);
        a.entries = terms.iter().map(|&(i, t)| Entry::new(i, t, b"e".to_vec())).collect();
        a
    };
    let cases = [
        append(1, &[(3, 1), (4, 1)]),
        append(0, &[(5, 1)]),
        append(2, &[(3, 1), (3, 1)]),
        append(u64::MAX, &[(0, 1)]),
        append(2, &[(3, 2), (4, 1)]), // terms go backwards
        append(2, &[(3, 4)]),         // an entry of a later term than the leader's
        msg(MessageType::Snapshot, 1, 2, 3),
        {
            // A rejection whose hint is past the index it rejects (would make a leader probe
            // the same index forever).
            let mut r = msg(MessageType::AppendResponse, 1, 2, 3);
            (r.reject, r.index, r.reject_hint) = (true, 4, 9);
            r
        },
    ];
    for m in cases {
        let mut node = RawNode::new(&config(2, false, false), storage(&[1, 2, 3], &[1, 1], 1)).unwrap();
        let described = format!("{m:?}");
        match node.step(m) {
            Err(RaftError::Malformed { from: 1, .. }) => {}
            other => panic!("{described}: {other:?}"),
        }
        assert!(!node.has_ready() || node.ready().unwrap().entries.is_empty(), "{described}");
        assert_eq!((node.status().last_index, node.status().hard_state.term), (2, 1), "{described}");
    }
}

#[test]
fn a_restart_with_applied_above_the_stored_commit_raises_the_commit() {
    // After a power loss a commit-only HardState change may be lost while the application's
    // state machine kept what it applied: restarting with `Config::applied` above the stored
    // commit must not hand those entries out again, and the commit is raised to it (they were
    // committed, or the application could not have applied them) and persisted.
    let mut s = storage(&[1, 2, 3], &[1, 1, 1, 1, 1], 1);
    s.set_hard_state(&HardState { term: 1, vote: 0, commit: 3 }).unwrap();
    let mut c = config(2, false, false);
    c.applied = 5;
    let mut node = RawNode::new(&c, s).unwrap();
    assert_eq!((node.status().applied, node.status().hard_state.commit), (5, 5));
    let rd = node.ready().unwrap();
    assert!(rd.committed_entries.is_empty(), "handed out again: {:?}", rd.committed_entries);
    assert_eq!(rd.hard_state.map(|hs| hs.commit), Some(5), "the raised commit is persisted");
    node.persist(&rd).unwrap();
    node.advance(rd).unwrap();
    assert_eq!(node.storage().initial_state().unwrap().hard_state.commit, 5);
}

#[test]
fn applied_above_the_log_is_a_typed_error() {
    // The application claims entries the log does not hold: refuse, naming both.
    let mut c = config(2, false, false);
    c.applied = 7;
    match RawNode::new(&c, storage(&[1, 2, 3], &[1, 1, 1, 1, 1], 1)) {
        Err(keel::raft::NewNodeError::AppliedAboveLog { applied: 7, last_index: 5 }) => {}
        other => panic!("{:?}", other.map(|_| ())),
    }
}
