//! Review findings: each test fails on the code under review.

use keel::raft::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, Config, Message, MessageType, ProposeError,
    RaftError, RawNode, ReadOnlyOption, ReadState, Role,
};
use keel::storage::{ConfState, Entry, EntryType, MemStorage, StorageMut};
use std::collections::{BTreeMap, BTreeSet};

use ConfChangeType::{AddLearnerNode, AddNode, RemoveNode};

fn bootstrap(voters: &[u64]) -> MemStorage {
    let mut s = MemStorage::new();
    s.set_conf_state(&ConfState { voters: voters.to_vec(), ..ConfState::default() }).unwrap();
    s
}

fn change(t: ConfChangeType, id: u64) -> ConfChangeSingle {
    ConfChangeSingle { change_type: t, node_id: id }
}

struct Net {
    nodes: BTreeMap<u64, RawNode<MemStorage>>,
    queue: Vec<Message>,
    isolated: BTreeSet<u64>,
    applied: BTreeMap<u64, Vec<Entry>>,
    reads: BTreeMap<u64, Vec<ReadState>>,
}

impl Net {
    fn with(voters: &[u64], cfg: impl Fn(u64) -> Config) -> Net {
        let nodes = voters.iter().map(|&id| (id, RawNode::new(&cfg(id), bootstrap(voters)).unwrap())).collect();
        Net { nodes, queue: Vec::new(), isolated: BTreeSet::new(), applied: BTreeMap::new(), reads: BTreeMap::new() }
    }
    fn node(&mut self, id: u64) -> &mut RawNode<MemStorage> {
        self.nodes.get_mut(&id).unwrap()
    }
    fn persist(&mut self, id: u64) {
        while self.nodes[&id].has_ready() {
            let node = self.nodes.get_mut(&id).unwrap();
            let rd = node.ready().unwrap();
            self.queue.extend(rd.messages.iter().cloned());
            node.persist(&rd).unwrap();
            self.queue.extend(rd.persisted_messages.iter().cloned());
            for e in &rd.committed_entries {
                if e.entry_type == EntryType::ConfChangeV2 {
                    let cc = ConfChange::decode(&e.data).unwrap();
                    let cs = node.apply_conf_change(&cc).unwrap();
                    let _ = cs;
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
    fn role(&self, id: u64) -> Role {
        self.nodes[&id].status().soft_state.role
    }
    fn applied_index(&self, id: u64) -> u64 {
        self.applied.get(&id).and_then(|v| v.last()).map_or(0, |e| e.index)
    }
}

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
