//! A three-node openraft key-value cluster in one process, with keel as every node's log store
//! (the shape of openraft's `raft-kv-memstore` example, its network replaced by direct calls).
//! Writes go through the leader; every node then reads them back from its state machine. Small
//! snapshot thresholds make openraft build snapshots and purge keel's log as it runs.
//!
//! Run: `cargo run --example openraft_kv --features openraft`

#[path = "support/kv_state_machine.rs"]
mod kv_state_machine;

use keel::openraft::KeelLogStore;
use keel::wal::LogOptions;
use kv_state_machine::{KvStateMachine, NodeId, Request, TypeConfig};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{BasicNode, Config, Raft, SnapshotPolicy};
use std::collections::BTreeMap;
use std::error::Error;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The in-process network: every node's `Raft` handle by id.
#[derive(Clone, Default)]
struct Router {
    nodes: Arc<Mutex<BTreeMap<NodeId, Raft<TypeConfig>>>>,
}

/// A connection to one node: calls its `Raft` directly.
struct Connection {
    router: Router,
    target: NodeId,
}

impl Connection {
    #[allow(clippy::result_large_err)] // openraft's own RPC error type
    fn raft<E: Error>(&self) -> Result<Raft<TypeConfig>, RPCError<NodeId, BasicNode, E>> {
        let nodes = self.router.nodes.lock().unwrap();
        nodes.get(&self.target).cloned().ok_or_else(|| {
            let e = std::io::Error::new(std::io::ErrorKind::NotFound, format!("no node {}", self.target));
            RPCError::Network(NetworkError::new(&e))
        })
    }

    fn remote<E: Error>(&self, e: E) -> RPCError<NodeId, BasicNode, E> {
        RPCError::RemoteError(RemoteError::new(self.target, e))
    }
}

impl RaftNetworkFactory<TypeConfig> for Router {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Connection {
        Connection { router: self.clone(), target }
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.raft()?.append_entries(rpc).await.map_err(|e| self.remote(e))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.raft()?.install_snapshot(rpc).await.map_err(|e| self.remote(e))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.raft()?.vote(rpc).await.map_err(|e| self.remote(e))
    }
}

const KEYS: u64 = 60;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn Error>> {
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let config = Arc::new(
        Config {
            heartbeat_interval: 50,
            election_timeout_min: 150,
            election_timeout_max: 300,
            // Snapshot and purge keel's log every 20 entries, keeping 5.
            snapshot_policy: SnapshotPolicy::LogsSinceLast(20),
            max_in_snapshot_log_to_keep: 5,
            ..Config::default()
        }
        .validate()?,
    );

    let router = Router::default();
    let mut machines = BTreeMap::new();
    for id in 1..=3 {
        let store = KeelLogStore::<TypeConfig>::open(dir.path().join(format!("node-{id}")), LogOptions::default())?;
        let machine = KvStateMachine::default();
        let raft = Raft::new(id, Arc::clone(&config), router.clone(), store, machine.clone()).await?;
        router.nodes.lock().unwrap().insert(id, raft);
        machines.insert(id, machine);
    }
    let raft = |id: NodeId| router.nodes.lock().unwrap()[&id].clone();

    let members: BTreeMap<NodeId, BasicNode> = (1..=3).map(|id| (id, BasicNode::default())).collect();
    raft(1).initialize(members).await?;
    let timeout = Some(Duration::from_secs(10));
    let metrics = raft(1).wait(timeout).metrics(|m| m.current_leader.is_some(), "a leader is elected").await?;
    let leader = metrics.current_leader.expect("waited for it");
    println!("leader: node {leader} (term {})", metrics.current_term);

    let mut last_index = 0;
    for k in 0..KEYS {
        let write = Request::Set { key: format!("key-{k}"), value: format!("value-{k}") };
        let response = raft(leader).client_write(write).await?;
        last_index = response.log_id.index;
    }
    println!("wrote {KEYS} keys through the leader, the last at log index {last_index}");

    for (id, machine) in &machines {
        raft(*id).wait(timeout).applied_index_at_least(Some(last_index), "every write is applied").await?;
        for k in 0..KEYS {
            assert_eq!(machine.get(&format!("key-{k}")), Some(format!("value-{k}")), "node {id}, key-{k}");
        }
        let m = raft(*id).metrics().borrow().clone();
        println!("node {id}: read back all {KEYS} keys; snapshot {:?}, purged {:?}", m.snapshot, m.purged);
    }

    for id in 1..=3 {
        raft(id).shutdown().await?;
    }
    println!("done in {:.1?}", started.elapsed());
    Ok(())
}

// `cargo test` runs the example itself (`test = true` in Cargo.toml), so it cannot rot.
#[cfg(test)]
mod tests {
    #[test]
    fn the_example_runs() {
        super::main().unwrap();
    }
}
