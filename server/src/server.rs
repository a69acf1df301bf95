//! One `keel server` node: a Raft [`Node`] over [`DiskStorage`], a [`TcpTransport`] to its
//! peers, the key-value [`Store`] it applies to, and a listener for Redis clients.
//!
//! Threads: the node's own; a ticker; a pump from the transport's inbox into the node; the
//! apply loop (the one thread that takes Readies: sends messages, applies entries, answers
//! writes and reads, makes snapshots); an acceptor and one thread per client connection.
//!
//! Any node takes any request. A write is proposed where it arrives, tagged with the node, the
//! process incarnation and a number ([`Tag`]); a follower's proposal is forwarded to the leader
//! inside Raft. The node that took the request answers it when it applies the entry carrying its
//! tag: the reply is the state machine's own (the same on every node). A read (GET, MGET, EXISTS,
//! DBSIZE) asks for a ReadIndex, which a follower forwards to the leader; reads that arrive
//! while one is in flight share the next one; the read is served once the local store has
//! applied that index. `READONLY` on a connection serves its reads from the local store at once
//! (possibly stale).

use crate::command::Command;
use crate::kv::{Member, Request, Store, Tag};
use crate::resp::{Limits, Reply, parse_request};
use keel::raft::{
    ConfChange, ConfChangeType, Config, DropReason, Node, NodeError, Outcome, ProposeError, RaftError, ReadOnlyOption,
    Ready, Role,
};
use keel::storage::{ConfState, DiskStorage, EntryType, StorageMut, StorageOptions};
use keel::transport::{TcpConfig, TcpTransport, Transport};
use keel::wal::LogStats;
use parking_lot::{Condvar, Mutex};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How a server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// This node's id (positive).
    pub id: u64,
    /// The cluster's id: peers of another cluster are refused. Written to the data directory
    /// at the first start and checked at every later one.
    pub cluster_id: u64,
    /// Where the log, HardState and snapshots live.
    pub data_dir: PathBuf,
    /// The address to listen on for peers.
    pub peer_listen: SocketAddr,
    /// The address to listen on for clients.
    pub client_listen: SocketAddr,
    /// The initial members and their addresses (this node included unless it joins). Used to
    /// bootstrap a fresh data directory and as the address book until the log says otherwise.
    pub members: BTreeMap<u64, Member>,
    /// Start as a new member of a running cluster (added with KEEL.ADD): `members` are then the
    /// cluster's initial members (its bootstrap configuration), which this node starts from and
    /// updates from the leader's log or snapshot like every other node.
    pub join: bool,
    /// Raft's logical clock.
    pub tick: Duration,
    /// Ticks without a leader before a follower campaigns.
    pub election_tick: usize,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_tick: usize,
    /// Entries applied after the last snapshot before a new one is made.
    pub snapshot_entries: u64,
    /// Entries kept below a snapshot for followers slightly behind (the rest is compacted).
    pub catch_up_entries: u64,
    /// Client limits.
    pub limits: ClientLimits,
}

/// Limits on what clients may ask, each answered with an error reply when reached.
#[derive(Debug, Clone)]
pub struct ClientLimits {
    /// Client connections at once (beyond it: `-ERR max number of clients reached`).
    pub max_clients: usize,
    /// Bytes of one request (beyond it: a protocol error, and the connection closes).
    pub max_request_bytes: usize,
    /// Bytes of writes proposed on this node and not yet applied (beyond it: `-TRYAGAIN`).
    pub max_uncommitted_bytes: u64,
    /// How long a request waits for its write to apply or its read to be confirmed.
    pub request_timeout: Duration,
}

impl Default for ClientLimits {
    fn default() -> ClientLimits {
        ClientLimits {
            max_clients: 10_000,
            max_request_bytes: 8 << 20,
            max_uncommitted_bytes: 64 << 20,
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl ServerConfig {
    /// Defaults: 100 ms ticks, elections after 10 ticks, heartbeats every tick, a snapshot every
    /// 10,000 entries keeping 5,000 below it, [`ClientLimits::default`].
    pub fn new(
        id: u64,
        cluster_id: u64,
        data_dir: PathBuf,
        peer_listen: SocketAddr,
        client_listen: SocketAddr,
        members: BTreeMap<u64, Member>,
    ) -> ServerConfig {
        ServerConfig {
            id,
            cluster_id,
            data_dir,
            peer_listen,
            client_listen,
            members,
            join: false,
            tick: Duration::from_millis(100),
            election_tick: 10,
            heartbeat_tick: 1,
            snapshot_entries: 10_000,
            catch_up_entries: 5_000,
            limits: ClientLimits::default(),
        }
    }
}

/// Why a server did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration makes no sense.
    #[error("bad configuration: {0}")]
    Config(String),
    /// The data directory belongs to another cluster.
    #[error("{path} belongs to cluster {found}, not {expected}")]
    WrongCluster {
        /// The cluster id file.
        path: PathBuf,
        /// The id in it.
        found: u64,
        /// The id configured.
        expected: u64,
    },
    /// Reading or writing the data directory failed.
    #[error(transparent)]
    Storage(#[from] keel::Error),
    /// The snapshot in the data directory does not hold a store.
    #[error("the snapshot in {dir} does not hold a key-value store: {why}")]
    BadSnapshot {
        /// The data directory.
        dir: PathBuf,
        /// What was wrong.
        why: String,
    },
    /// A socket or thread could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The Raft node did not start.
    #[error(transparent)]
    Node(#[from] keel::raft::StartError),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let what = what.into();
    move |source| ServerError::Io { what, source }
}

/// What the apply loop last saw of Raft.
#[derive(Debug, Clone, Default)]
struct RaftView {
    role: Option<Role>,
    leader: u64,
    term: u64,
    commit: u64,
    conf_state: ConfState,
    last_snapshot: u64,
}

/// Where a read learns the index it may be served at (or the error reply).
type ReadWaiter = SyncSender<Result<u64, Reply>>;

/// Reads waiting for a ReadIndex: the batch whose request is out, and those that arrived
/// after it was sent (they need the next one).
#[derive(Default)]
struct ReadQueue {
    next_ctx: u64,
    inflight: Option<(u64, Instant, Vec<ReadWaiter>)>,
    queued: Vec<ReadWaiter>,
}

/// Counters for INFO.
#[derive(Default)]
struct Metrics {
    readies: AtomicU64,
    entries_persisted: AtomicU64,
    entries_applied: AtomicU64,
    batch_max: AtomicU64,
    writes: AtomicU64,
    reads: AtomicU64,
    read_index_rounds: AtomicU64,
    snapshots_made: AtomicU64,
    snapshots_installed: AtomicU64,
    rejected_clients: AtomicU64,
}

struct Shared {
    config: ServerConfig,
    boot: u64,
    node: Node<DiskStorage>,
    transport: TcpTransport,
    store: Mutex<Store>,
    applied: Condvar,
    view: Mutex<RaftView>,
    waiters: Mutex<HashMap<u64, SyncSender<Reply>>>,
    next_seq: AtomicU64,
    reads: Mutex<ReadQueue>,
    uncommitted_bytes: AtomicU64,
    clients: AtomicUsize,
    metrics: Metrics,
    /// Set when the server must stop (asked to, or the apply loop failed).
    stop: AtomicBool,
    /// Why the apply loop failed, if it did: every request gets this.
    failed: Mutex<Option<String>>,
    started: Instant,
}

/// A running node; see the module docs. [`Server::stop`] (or drop) stops it cleanly.
pub struct Server {
    shared: Arc<Shared>,
    client_addr: SocketAddr,
    peer_addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("id", &self.shared.config.id).field("client_addr", &self.client_addr).finish()
    }
}

const CLUSTER_ID_FILE: &str = "cluster-id";

/// Checks the data directory's cluster id, or writes it (durably) at the first start.
fn check_cluster_id(config: &ServerConfig) -> Result<(), ServerError> {
    let path = config.data_dir.join(CLUSTER_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let found = text.trim().parse::<u64>().map_err(|_| {
                ServerError::Config(format!("{} holds {:?}, not a cluster id", path.display(), text.trim()))
            })?;
            if found != config.cluster_id {
                return Err(ServerError::WrongCluster { path, found, expected: config.cluster_id });
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let tmp = config.data_dir.join(format!("{CLUSTER_ID_FILE}.tmp"));
            let mut f = std::fs::File::create(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
            f.write_all(format!("{}\n", config.cluster_id).as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(io_err(format!("writing {}", tmp.display())))?;
            std::fs::rename(&tmp, &path).map_err(io_err(format!("renaming {}", tmp.display())))?;
            std::fs::File::open(&config.data_dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(format!("syncing {}", config.data_dir.display())))?;
            Ok(())
        }
        Err(e) => Err(io_err(format!("reading {}", path.display()))(e)),
    }
}

impl Server {
    /// Opens the data directory (bootstrapping it if fresh), starts the node, the transport and
    /// the client listener.
    pub fn start(config: ServerConfig) -> Result<Server, ServerError> {
        if config.id == 0 {
            return Err(ServerError::Config("the node id must be positive".into()));
        }
        if config.join && config.members.keys().all(|&id| id == config.id) {
            return Err(ServerError::Config(
                "a joining node needs the cluster's initial members (--member for each)".into(),
            ));
        }
        if !config.join && !config.members.contains_key(&config.id) {
            return Err(ServerError::Config(format!(
                "node {} is not among the initial members {:?} (use --join for a new member)",
                config.id,
                config.members.keys().collect::<Vec<_>>()
            )));
        }
        std::fs::create_dir_all(&config.data_dir).map_err(io_err(format!("creating {}", config.data_dir.display())))?;
        check_cluster_id(&config)?;
        let (mut storage, report) = DiskStorage::open(config.data_dir.join("raft"), StorageOptions::default())?;
        log::info!("node {}: opened {} ({})", config.id, config.data_dir.display(), report.log.to_string().trim_end());
        let state = keel::storage::Storage::initial_state(&storage)?;
        let last_index = keel::storage::Storage::last_index(&storage)?;
        let fresh = state.hard_state == Default::default() && last_index == 0;
        // The store: the newest snapshot's, or empty.
        let mut store = match keel::storage::Storage::snapshot(&storage, 0) {
            Ok(snap) => {
                let data = snap.read_to_vec()?;
                Store::restore(&data)
                    .map_err(|e| ServerError::BadSnapshot { dir: config.data_dir.clone(), why: e.to_string() })?
            }
            Err(keel::Error::SnapshotTemporarilyUnavailable) => Store::default(),
            Err(e) => return Err(e.into()),
        };
        let last_snapshot = store.applied();
        if store.members().is_empty() {
            for (&id, m) in &config.members {
                store.set_member(0, id, m.clone());
            }
        }
        if fresh {
            // The bootstrap configuration: the cluster's first members. A joining node starts
            // from it too (without itself) and learns the changes since from the leader's log.
            let voters = config.members.keys().copied().filter(|&id| !config.join || id != config.id).collect();
            storage.set_conf_state(&ConfState { voters, ..ConfState::default() })?;
            log::info!("node {}: bootstrapped with members {:?}", config.id, config.members.keys().collect::<Vec<_>>());
        }
        let mut raft = Config::new(config.id);
        raft.election_tick = config.election_tick;
        raft.heartbeat_tick = config.heartbeat_tick;
        raft.check_quorum = true;
        raft.pre_vote = true;
        raft.read_only_option = ReadOnlyOption::Safe;
        raft.applied = store.applied();
        raft.joining = config.join && fresh;
        raft.seed = boot_id() ^ config.id;
        let stager = storage.snapshot_stager();
        let peer_listener = TcpListener::bind(config.peer_listen)
            .map_err(io_err(format!("listening for peers on {}", config.peer_listen)))?;
        let client_listener = TcpListener::bind(config.client_listen)
            .map_err(io_err(format!("listening for clients on {}", config.client_listen)))?;
        let peer_addr = peer_listener.local_addr().map_err(io_err("peer address"))?;
        let client_addr = client_listener.local_addr().map_err(io_err("client address"))?;
        let mut peers = BTreeMap::new();
        for (&id, m) in store.members() {
            if id != config.id
                && let Some(addr) = resolve(&m.peer_addr)
            {
                peers.insert(id, addr);
            }
        }
        let (inbox_tx, inbox) = sync_channel(4096);
        let transport =
            TcpTransport::start(TcpConfig::new(config.id, config.cluster_id, peers), peer_listener, inbox_tx, stager)
                .map_err(io_err("starting the transport"))?;
        let node = Node::start(&raft, storage)?;
        let conf_state = node.status().map(|st| st.conf_state).unwrap_or(state.conf_state);
        let shared = Arc::new(Shared {
            boot: boot_id(),
            node,
            transport,
            store: Mutex::new(store),
            applied: Condvar::new(),
            view: Mutex::new(RaftView {
                conf_state,
                last_snapshot,
                commit: state.hard_state.commit,
                ..RaftView::default()
            }),
            waiters: Mutex::new(HashMap::new()),
            next_seq: AtomicU64::new(1),
            reads: Mutex::new(ReadQueue::default()),
            uncommitted_bytes: AtomicU64::new(0),
            clients: AtomicUsize::new(0),
            metrics: Metrics::default(),
            stop: AtomicBool::new(false),
            failed: Mutex::new(None),
            started: Instant::now(),
            config,
        });
        let mut threads = Vec::new();
        let id = shared.config.id;
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new().name(format!("keel-{name}-{id}")).spawn(f).map_err(io_err("spawning a thread"))
        };
        let s = shared.clone();
        threads.push(spawn("tick", Box::new(move || tick_loop(&s)))?);
        let s = shared.clone();
        threads.push(spawn("inbox", Box::new(move || inbox_loop(&s, inbox)))?);
        let s = shared.clone();
        threads.push(spawn("apply", Box::new(move || apply_loop(&s)))?);
        let s = shared.clone();
        client_listener.set_nonblocking(true).map_err(io_err("client listener"))?;
        threads.push(spawn("clients", Box::new(move || accept_loop(&s, client_listener)))?);
        log::info!("node {id}: serving clients on {client_addr}, peers on {peer_addr}");
        Ok(Server { shared, client_addr, peer_addr, threads })
    }

    /// Where clients connect.
    pub fn client_addr(&self) -> SocketAddr {
        self.client_addr
    }

    /// Where peers connect.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// Whether the server stopped on its own (a storage error): [`Server::failure`] says why.
    pub fn is_stopped(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    /// Why the server stopped on its own, if it did.
    pub fn failure(&self) -> Option<String> {
        self.shared.failed.lock().clone()
    }

    /// Stops clients, the node (closing its storage cleanly) and the transport.
    pub fn stop(mut self) -> Result<(), String> {
        self.shut_down()
    }

    fn shut_down(&mut self) -> Result<(), String> {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.applied.notify_all();
        // Requests waiting on the apply loop are answered now rather than at their timeout.
        self.shared.waiters.lock().clear();
        {
            let mut reads = self.shared.reads.lock();
            reads.inflight = None;
            reads.queued.clear();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let result = match self.shared.node.stop() {
            Ok(storage) => storage.close().map_err(|e| format!("closing the storage: {e}")),
            Err(NodeError::Stopped) => Ok(()),
            Err(e) => Err(e.to_string()),
        };
        log::info!("node {}: stopped", self.shared.config.id);
        result
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            let _ = self.shut_down();
        }
    }
}

fn resolve(addr: &str) -> Option<SocketAddr> {
    use std::net::ToSocketAddrs;
    addr.to_socket_addrs().ok()?.next()
}

/// Different at each start of a process (time and process id), so tags of an earlier
/// incarnation never match this one's requests.
fn boot_id() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    (nanos as u64) ^ (u64::from(std::process::id()) << 40)
}

fn tick_loop(s: &Shared) {
    let mut next = Instant::now();
    while !s.stop.load(Ordering::SeqCst) {
        next += s.config.tick;
        if s.node.tick().is_err() {
            return;
        }
        // A read whose ReadIndex got no answer (a message lost, a leader gone) is asked again.
        let retry_after = s.config.tick * s.config.election_tick as u32;
        let stale = {
            let reads = s.reads.lock();
            reads.inflight.as_ref().is_some_and(|(_, sent, _)| sent.elapsed() > retry_after)
        };
        if stale {
            let mut reads = s.reads.lock();
            if let Some((_, _, waiting)) = reads.inflight.take() {
                let queued = std::mem::take(&mut reads.queued);
                reads.queued = waiting;
                reads.queued.extend(queued);
            }
            drop(reads);
            start_read_batch(s);
        }
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

fn inbox_loop(s: &Shared, inbox: Receiver<keel::raft::Message>) {
    while !s.stop.load(Ordering::SeqCst) {
        match inbox.recv_timeout(Duration::from_millis(100)) {
            // A message Raft refuses (malformed, from a stranger) changes nothing.
            Ok(m) => {
                if let Err(NodeError::Stopped | NodeError::Storage(_)) = s.node.step(m) {
                    return;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn fail(s: &Shared, why: String) {
    log::error!("node {}: {why}; stopping", s.config.id);
    *s.failed.lock() = Some(why);
    s.stop.store(true, Ordering::SeqCst);
    s.applied.notify_all();
}

fn apply_loop(s: &Shared) {
    while !s.stop.load(Ordering::SeqCst) {
        let rd = match s.node.ready_timeout(Duration::from_millis(100)) {
            Ok(Some(rd)) => rd,
            Ok(None) => {
                report_transport(s);
                continue;
            }
            Err(e) => return fail(s, format!("the Raft node stopped: {e}")),
        };
        if let Err(why) = handle_ready(s, rd) {
            return fail(s, why);
        }
        report_transport(s);
        if let Err(why) = maybe_snapshot(s) {
            return fail(s, why);
        }
    }
}

fn report_transport(s: &Shared) {
    for id in s.transport.take_unreachable() {
        let _ = s.node.report_unreachable(id);
    }
    for (id, status) in s.transport.take_snapshot_reports() {
        let _ = s.node.report_snapshot(id, status);
    }
}

fn handle_ready(s: &Shared, rd: Ready) -> Result<(), String> {
    let m = &s.metrics;
    m.readies.fetch_add(1, Ordering::Relaxed);
    m.entries_persisted.fetch_add(rd.entries.len() as u64, Ordering::Relaxed);
    m.batch_max.fetch_max(rd.entries.len() as u64, Ordering::Relaxed);
    for msg in rd.messages.iter().chain(&rd.persisted_messages) {
        // A full queue or an unknown peer drops the message; Raft resends.
        let _ = s.transport.send(msg);
    }
    {
        let mut view = s.view.lock();
        if let Some(soft) = &rd.soft_state {
            view.role = Some(soft.role);
            view.leader = soft.leader_id;
        }
        if let Some(hs) = &rd.hard_state {
            view.term = hs.term;
            view.commit = hs.commit;
        }
    }
    if let Some(snap) = &rd.snapshot {
        let data = snap.read_to_vec().map_err(|e| format!("reading the snapshot at {}: {e}", snap.metadata.index))?;
        let restored = Store::restore(&data)
            .map_err(|e| format!("the snapshot at {} holds no store: {e}", snap.metadata.index))?;
        sync_peers(s, restored.members());
        *s.store.lock() = restored;
        let mut view = s.view.lock();
        view.conf_state = snap.metadata.conf_state.clone();
        view.last_snapshot = snap.metadata.index;
        m.snapshots_installed.fetch_add(1, Ordering::Relaxed);
        log::info!("node {}: installed the snapshot at {}", s.config.id, snap.metadata.index);
    }
    for e in &rd.committed_entries {
        match e.entry_type {
            EntryType::Normal if e.data.is_empty() => s.store.lock().skip(e.index),
            EntryType::Normal => match Request::decode(&e.data) {
                Ok(req) => {
                    let reply = {
                        let mut store = s.store.lock();
                        if e.index <= store.applied() {
                            continue;
                        }
                        store.apply(e.index, &req.write)
                    };
                    m.entries_applied.fetch_add(1, Ordering::Relaxed);
                    if let Some(tag) = req.tag
                        && tag.node == s.config.id
                        && tag.boot == s.boot
                        && let Some(waiter) = s.waiters.lock().remove(&tag.seq)
                    {
                        let _ = waiter.send(reply);
                    }
                }
                Err(err) => {
                    // Every node skips the same entry the same way.
                    log::error!("node {}: entry {} holds no write ({err}); skipped", s.config.id, e.index);
                    s.store.lock().skip(e.index);
                }
            },
            EntryType::ConfChangeV2 => apply_conf_change(s, e.index, &e.data)?,
            // keel proposes only version 2 changes; an old-style entry changes nothing here.
            EntryType::ConfChange => {
                log::error!("node {}: entry {} is a version 1 membership change; skipped", s.config.id, e.index);
                s.store.lock().skip(e.index);
            }
        }
    }
    if !rd.committed_entries.is_empty() {
        s.applied.notify_all();
    }
    let applied = s.store.lock().applied();
    for rs in &rd.read_states {
        let ctx = rs.request_ctx.as_slice().try_into().map(u64::from_le_bytes).unwrap_or(0);
        let done = {
            let mut reads = s.reads.lock();
            match reads.inflight.take() {
                Some((c, _, waiting)) if c == ctx => Some(waiting),
                other => {
                    reads.inflight = other;
                    None
                }
            }
        };
        if let Some(waiting) = done {
            for w in waiting {
                let _ = w.send(Ok(rs.index));
            }
            start_read_batch(s);
        }
    }
    let _ = applied;
    s.node.advance(rd).map_err(|e| format!("advance: {e}"))
}

fn apply_conf_change(s: &Shared, index: u64, data: &[u8]) -> Result<(), String> {
    let cc = match ConfChange::decode(data) {
        Ok(cc) => cc,
        Err(e) => {
            log::error!("node {}: entry {index} holds no membership change ({e}); skipped", s.config.id);
            s.store.lock().skip(index);
            return Ok(());
        }
    };
    let cs = match s.node.apply_conf_change(&cc) {
        Ok(cs) => cs,
        Err(NodeError::Raft(e)) => {
            log::error!("node {}: membership change at {index} not applied: {e}", s.config.id);
            s.store.lock().skip(index);
            return Ok(());
        }
        Err(e) => return Err(format!("applying the membership change at {index}: {e}")),
    };
    let member = Member::decode(&cc.context).ok();
    let mut store = s.store.lock();
    for change in &cc.changes {
        match change.change_type {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                if let Some(m) = &member {
                    store.set_member(index, change.node_id, m.clone());
                }
            }
            ConfChangeType::RemoveNode => store.remove_member(index, change.node_id),
        }
    }
    store.skip(index);
    let members = store.members().clone();
    drop(store);
    sync_peers(s, &members);
    s.view.lock().conf_state = cs;
    log::info!("node {}: membership change at {index} applied: {:?}", s.config.id, cc.changes);
    Ok(())
}

/// Makes the transport's peers the address book's members (other than this node).
fn sync_peers(s: &Shared, members: &BTreeMap<u64, Member>) {
    let current = s.transport.peers();
    for (&id, m) in members {
        if id != s.config.id
            && let Err(e) = Transport::add_peer(&s.transport, id, &m.peer_addr)
        {
            log::warn!("node {}: member {id}'s peer address: {e}", s.config.id);
        }
    }
    for id in current.keys() {
        if !members.contains_key(id) {
            s.transport.remove_peer(*id);
        }
    }
}

/// Snapshots the store once enough entries were applied since the last snapshot, and compacts
/// the log below it (keeping `catch_up_entries`).
fn maybe_snapshot(s: &Shared) -> Result<(), String> {
    let (last, conf_state) = {
        let v = s.view.lock();
        (v.last_snapshot, v.conf_state.clone())
    };
    let (index, data) = {
        let store = s.store.lock();
        if store.applied() < last + s.config.snapshot_entries {
            return Ok(());
        }
        (store.applied(), store.snapshot())
    };
    let keep = s.config.catch_up_entries;
    let result = s
        .node
        .with_storage(move |st: &mut DiskStorage| {
            st.create_snapshot(index, &conf_state, &mut data.as_slice())?;
            st.compact((index + 1).saturating_sub(keep).max(1))
        })
        .map_err(|e| format!("snapshot at {index}: {e}"))?;
    result.map_err(|e| format!("snapshot at {index}: {e}"))?;
    s.view.lock().last_snapshot = index;
    s.metrics.snapshots_made.fetch_add(1, Ordering::Relaxed);
    log::info!("node {}: snapshot at {index}", s.config.id);
    Ok(())
}

/// Sends a ReadIndex for the queued reads, unless one is in flight.
fn start_read_batch(s: &Shared) {
    let ctx = {
        let mut reads = s.reads.lock();
        if reads.inflight.is_some() || reads.queued.is_empty() {
            return;
        }
        reads.next_ctx += 1;
        let ctx = reads.next_ctx;
        let waiting = std::mem::take(&mut reads.queued);
        reads.inflight = Some((ctx, Instant::now(), waiting));
        ctx
    };
    s.metrics.read_index_rounds.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = s.node.read_index(ctx.to_le_bytes().to_vec()) {
        let reply = raft_error_reply(&e);
        let failed = {
            let mut reads = s.reads.lock();
            match reads.inflight.take() {
                Some((c, _, waiting)) if c == ctx => waiting,
                other => {
                    reads.inflight = other;
                    Vec::new()
                }
            }
        };
        for w in failed {
            let _ = w.send(Err(reply.clone()));
        }
    }
}

fn raft_error_reply(e: &NodeError) -> Reply {
    match e {
        NodeError::Raft(RaftError::Propose(ProposeError::NoLeader)) => {
            Reply::Error("CLUSTERDOWN no leader is known; retry after the election".into())
        }
        NodeError::Raft(RaftError::Propose(p @ ProposeError::TransferInProgress { .. })) => {
            Reply::Error(format!("TRYAGAIN {p}"))
        }
        NodeError::Raft(RaftError::Propose(p @ ProposeError::UncommittedSizeExceeded { .. })) => {
            Reply::Error(format!("TRYAGAIN {p}"))
        }
        other => Reply::Error(format!("ERR {other}")),
    }
}

fn accept_loop(s: &Arc<Shared>, listener: TcpListener) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !s.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((mut stream, from)) => {
                conns.retain(|t| !t.is_finished());
                if s.clients.load(Ordering::SeqCst) >= s.config.limits.max_clients {
                    s.metrics.rejected_clients.fetch_add(1, Ordering::Relaxed);
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.write_all(b"-ERR max number of clients reached\r\n");
                    continue;
                }
                s.clients.fetch_add(1, Ordering::SeqCst);
                let s2 = s.clone();
                let spawned =
                    std::thread::Builder::new().name(format!("keel-client-{}", s.config.id)).spawn(move || {
                        if let Err(why) = serve_client(&s2, stream) {
                            log::debug!("node {}: client {from}: {why}", s2.config.id);
                        }
                        s2.clients.fetch_sub(1, Ordering::SeqCst);
                    });
                match spawned {
                    Ok(t) => conns.push(t),
                    Err(_) => {
                        s.clients.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    for t in conns {
        let _ = t.join();
    }
}

/// A write proposed and not yet answered.
struct PendingWrite {
    seq: u64,
    bytes: u64,
    proposal: Option<keel::raft::Proposal>,
    reply: Receiver<Reply>,
    /// The answer already known (refused before proposing).
    early: Option<Reply>,
}

fn begin_write(s: &Shared, write: crate::kv::Write) -> PendingWrite {
    let seq = s.next_seq.fetch_add(1, Ordering::Relaxed);
    let data = Request { tag: Some(Tag { node: s.config.id, boot: s.boot, seq }), write }.encode();
    let bytes = data.len() as u64;
    let (tx, rx) = sync_channel(1);
    let mut p = PendingWrite { seq, bytes: 0, proposal: None, reply: rx, early: None };
    let before = s.uncommitted_bytes.fetch_add(bytes, Ordering::SeqCst);
    p.bytes = bytes;
    if before + bytes > s.config.limits.max_uncommitted_bytes && before > 0 {
        p.early = Some(Reply::Error(format!(
            "TRYAGAIN {before} bytes of writes are waiting on this node (limit {})",
            s.config.limits.max_uncommitted_bytes
        )));
        return p;
    }
    s.waiters.lock().insert(seq, tx);
    match s.node.propose(data) {
        Ok(proposal) => p.proposal = Some(proposal),
        Err(e) => p.early = Some(raft_error_reply(&e)),
    }
    p
}

fn finish_write(s: &Shared, mut p: PendingWrite, deadline: Instant) -> Reply {
    let reply = (|| {
        if let Some(r) = p.early.take() {
            return r;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if let Some(outcome) = p.proposal.as_mut().and_then(|pr| pr.wait_timeout(left)) {
            match outcome {
                Outcome::Dropped(DropReason::Refused(e)) => return raft_error_reply(&NodeError::Raft(e)),
                Outcome::Dropped(DropReason::Superseded { index }) => {
                    return Reply::Error(format!(
                        "TRYAGAIN the leader changed and entry {index} was replaced; the write was not applied"
                    ));
                }
                Outcome::Dropped(DropReason::Stopped) => return Reply::Error("ERR the server is stopping".into()),
                Outcome::Committed { .. } | Outcome::Forwarded { .. } | Outcome::Unknown(_) => {}
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match p.reply.recv_timeout(left) {
            Ok(r) => r,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Reply::Error(format!(
                "ERR timed out after {:?}: the write may or may not be applied",
                s.config.limits.request_timeout
            )),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                Reply::Error("ERR the server is stopping: the write may or may not be applied".into())
            }
        }
    })();
    s.waiters.lock().remove(&p.seq);
    s.uncommitted_bytes.fetch_sub(p.bytes, Ordering::SeqCst);
    s.metrics.writes.fetch_add(1, Ordering::Relaxed);
    reply
}

/// Waits until the store may answer a linearizable read: a ReadIndex confirmed and applied.
fn await_read(s: &Shared, deadline: Instant) -> Result<(), Reply> {
    let (tx, rx) = sync_channel(1);
    s.reads.lock().queued.push(tx);
    start_read_batch(s);
    let left = deadline.saturating_duration_since(Instant::now());
    let index = match rx.recv_timeout(left) {
        Ok(r) => r?,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            return Err(Reply::Error("TRYAGAIN the read could not be confirmed by a leader in time".into()));
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            return Err(Reply::Error("ERR the server is stopping".into()));
        }
    };
    let mut store = s.store.lock();
    while store.applied() < index {
        if s.stop.load(Ordering::SeqCst) {
            return Err(Reply::Error("ERR the server is stopping".into()));
        }
        if s.applied.wait_until(&mut store, deadline).timed_out() {
            return Err(Reply::Error("TRYAGAIN this node did not apply the read index in time".into()));
        }
    }
    Ok(())
}

fn serve_client(s: &Shared, mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    let limits =
        Limits { args_max: 1 << 20, arg_bytes_max: s.config.limits.max_request_bytes, inline_bytes_max: 64 << 10 };
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let mut stale_reads = false;
    loop {
        if s.stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => continue,
            Err(e) => return Err(e),
        };
        buf.extend_from_slice(&chunk[..n]);
        // Every complete request in the buffer; writes in a row are proposed together.
        let mut commands = Vec::new();
        let mut used = 0;
        let mut protocol_error = None;
        loop {
            match parse_request(&buf[used..], &limits) {
                Ok(Some((args, n))) => {
                    used += n;
                    if !args.is_empty() {
                        commands.push(Command::parse(&args));
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    protocol_error = Some(e);
                    break;
                }
            }
        }
        buf.drain(..used);
        if buf.len() > s.config.limits.max_request_bytes + (1 << 20) && protocol_error.is_none() {
            protocol_error = Some(crate::resp::ProtocolError { offset: buf.len(), what: "request too large".into() });
        }
        let mut out = Vec::new();
        let quit = run_commands(s, commands, &mut stale_reads, &mut out);
        if let Some(e) = &protocol_error {
            Reply::Error(format!("ERR Protocol error: {e}")).encode(&mut out);
        }
        stream.write_all(&out)?;
        if quit || protocol_error.is_some() {
            return Ok(());
        }
    }
}

/// Runs a pipeline of commands in order, appending replies to `out`; returns whether to close.
fn run_commands(s: &Shared, commands: Vec<Result<Command, Reply>>, stale_reads: &mut bool, out: &mut Vec<u8>) -> bool {
    let mut pending: Vec<(PendingWrite, Instant)> = Vec::new();
    let flush = |pending: &mut Vec<(PendingWrite, Instant)>, out: &mut Vec<u8>| {
        for (p, deadline) in pending.drain(..) {
            finish_write(s, p, deadline).encode(out);
        }
    };
    for c in commands {
        let deadline = Instant::now() + s.config.limits.request_timeout;
        let c = match c {
            Ok(c) => c,
            Err(reply) => {
                flush(&mut pending, out);
                reply.encode(out);
                continue;
            }
        };
        if let Some(why) = s.failed.lock().clone() {
            flush(&mut pending, out);
            Reply::Error(format!("ERR the server failed: {why}")).encode(out);
            continue;
        }
        if let Command::Write(w) = c {
            pending.push((begin_write(s, w), deadline));
            continue;
        }
        flush(&mut pending, out);
        let reply = match c {
            Command::ReadOnly(on) => {
                *stale_reads = on;
                Reply::Simple("OK".into())
            }
            Command::Quit => {
                Reply::Simple("OK".into()).encode(out);
                return true;
            }
            Command::Info(section) => Reply::Bulk(Some(info(s, section.as_deref()).into_bytes())),
            Command::Members => members_reply(s),
            Command::AddMember { id, peer_addr, client_addr, learner } => {
                let kind = if learner { ConfChangeType::AddLearnerNode } else { ConfChangeType::AddNode };
                let mut cc = ConfChange::simple(kind, id);
                cc.context = Member { peer_addr, client_addr }.encode();
                change_membership(s, &cc, deadline, move |cs| {
                    if learner { cs.learners.contains(&id) } else { cs.voters.contains(&id) }
                })
            }
            Command::RemoveMember(id) => {
                change_membership(s, &ConfChange::simple(ConfChangeType::RemoveNode, id), deadline, move |cs| {
                    !cs.voters.contains(&id) && !cs.learners.contains(&id) && !cs.voters_outgoing.contains(&id)
                })
            }
            Command::Transfer(to) => transfer(s, to, deadline),
            c if c.reads_store() => {
                s.metrics.reads.fetch_add(1, Ordering::Relaxed);
                match if *stale_reads { Ok(()) } else { await_read(s, deadline) } {
                    Ok(()) => c.read(&s.store.lock()),
                    Err(reply) => reply,
                }
            }
            c => c.read(&s.store.lock()),
        };
        reply.encode(out);
    }
    flush(&mut pending, out);
    false
}

fn change_membership(s: &Shared, cc: &ConfChange, deadline: Instant, done: impl Fn(&ConfState) -> bool) -> Reply {
    let mut proposal = match s.node.propose_conf_change(cc) {
        Ok(p) => p,
        Err(e) => return raft_error_reply(&e),
    };
    match proposal.wait_timeout(deadline.saturating_duration_since(Instant::now())) {
        Some(Outcome::Dropped(DropReason::Refused(e))) => return raft_error_reply(&NodeError::Raft(e)),
        Some(Outcome::Dropped(reason)) => return Reply::Error(format!("ERR the change was dropped: {reason:?}")),
        _ => {}
    }
    // Applied here (and, with joint consensus, the joint configuration left) once the
    // configuration says so.
    while Instant::now() < deadline {
        if done(&s.view.lock().conf_state) && s.view.lock().conf_state.voters_outgoing.is_empty() {
            return Reply::Simple("OK".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Reply::Error("ERR timed out: the membership change may or may not be applied".into())
}

fn transfer(s: &Shared, to: u64, deadline: Instant) -> Reply {
    if let Err(e) = s.node.transfer_leadership(to) {
        return raft_error_reply(&e);
    }
    while Instant::now() < deadline {
        if s.view.lock().leader == to {
            return Reply::Simple("OK".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Reply::Error(format!("ERR node {to} did not take over in time"))
}

fn role_name(role: Option<Role>) -> &'static str {
    match role {
        Some(Role::Leader) => "leader",
        Some(Role::Candidate | Role::PreCandidate) => "candidate",
        _ => "follower",
    }
}

fn members_reply(s: &Shared) -> Reply {
    let cs = s.view.lock().conf_state.clone();
    let book = s.store.lock().members().clone();
    let mut ids: Vec<u64> = cs.voters.iter().chain(&cs.learners).chain(&cs.voters_outgoing).copied().collect();
    ids.sort_unstable();
    ids.dedup();
    Reply::Array(Some(
        ids.into_iter()
            .map(|id| {
                let role = if cs.learners.contains(&id) { "learner" } else { "voter" };
                let m = book.get(&id).cloned().unwrap_or_default();
                Reply::Array(Some(vec![
                    Reply::Integer(id as i64),
                    Reply::Bulk(Some(role.into())),
                    Reply::Bulk(Some(m.peer_addr.into_bytes())),
                    Reply::Bulk(Some(m.client_addr.into_bytes())),
                ]))
            })
            .collect(),
    ))
}

fn info(s: &Shared, section: Option<&str>) -> String {
    let want = |name: &str| matches!(section, None | Some("all" | "everything" | "default")) || section == Some(name);
    let view = s.view.lock().clone();
    let (applied, keys, book) = {
        let st = s.store.lock();
        (st.applied(), st.len(), st.members().clone())
    };
    let mut text = String::new();
    if want("server") {
        text.push_str("# Server\r\n");
        field(&mut text, "keel_version", env!("CARGO_PKG_VERSION").into());
        field(&mut text, "node_id", s.config.id.to_string());
        field(&mut text, "cluster_id", s.config.cluster_id.to_string());
        field(&mut text, "uptime_in_seconds", s.started.elapsed().as_secs().to_string());
        field(&mut text, "data_dir", s.config.data_dir.display().to_string());
        text.push_str("\r\n# Clients\r\n");
        field(&mut text, "connected_clients", s.clients.load(Ordering::Relaxed).to_string());
        field(&mut text, "rejected_connections", s.metrics.rejected_clients.load(Ordering::Relaxed).to_string());
        text.push_str("\r\n");
    }
    if want("replication") {
        text.push_str("# Replication\r\n");
        field(&mut text, "role", role_name(view.role).into());
        field(&mut text, "leader_id", view.leader.to_string());
        field(&mut text, "leader_addr", book.get(&view.leader).map(|m| m.client_addr.clone()).unwrap_or_default());
        field(&mut text, "term", view.term.to_string());
        field(&mut text, "commit_index", view.commit.to_string());
        field(&mut text, "applied_index", applied.to_string());
        field(&mut text, "last_snapshot_index", view.last_snapshot.to_string());
        let voters: Vec<String> = view.conf_state.voters.iter().map(u64::to_string).collect();
        let learners: Vec<String> = view.conf_state.learners.iter().map(u64::to_string).collect();
        field(&mut text, "voters", voters.join(","));
        field(&mut text, "learners", learners.join(","));
        for (id, m) in &book {
            field(&mut text, &format!("member_{id}"), format!("peer={},client={}", m.peer_addr, m.client_addr));
        }
        text.push_str("\r\n");
    }
    if want("keyspace") {
        text.push_str("# Keyspace\r\n");
        field(&mut text, "db0", format!("keys={keys}"));
        text.push_str("\r\n");
    }
    if want("keel") {
        let m = &s.metrics;
        let log: Option<LogStats> = s.node.with_storage(|st: &mut DiskStorage| st.log().stats()).ok();
        text.push_str("# Keel\r\n");
        if let Some(l) = log {
            field(&mut text, "log_appends", l.appends.to_string());
            field(&mut text, "log_entries", l.entries.to_string());
            field(&mut text, "fsyncs", l.syncs.to_string());
            let mean = l.sync_nanos.checked_div(l.syncs).unwrap_or(0) / 1000;
            field(&mut text, "fsync_mean_us", mean.to_string());
            field(&mut text, "fsync_max_us", (l.sync_nanos_max / 1000).to_string());
        }
        let readies = m.readies.load(Ordering::Relaxed);
        let persisted = m.entries_persisted.load(Ordering::Relaxed);
        field(&mut text, "readies", readies.to_string());
        field(&mut text, "entries_persisted", persisted.to_string());
        field(&mut text, "batch_entries_max", m.batch_max.load(Ordering::Relaxed).to_string());
        field(&mut text, "entries_applied", m.entries_applied.load(Ordering::Relaxed).to_string());
        field(&mut text, "client_writes", m.writes.load(Ordering::Relaxed).to_string());
        field(&mut text, "client_reads", m.reads.load(Ordering::Relaxed).to_string());
        field(&mut text, "read_index_rounds", m.read_index_rounds.load(Ordering::Relaxed).to_string());
        field(&mut text, "writes_waiting", s.waiters.lock().len().to_string());
        field(&mut text, "uncommitted_bytes", s.uncommitted_bytes.load(Ordering::Relaxed).to_string());
        let depths: Vec<String> = s.transport.queue_depths().iter().map(|(id, d)| format!("{id}={d}")).collect();
        field(&mut text, "peer_queue_frames", depths.join(","));
        field(&mut text, "snapshots_made", m.snapshots_made.load(Ordering::Relaxed).to_string());
        field(&mut text, "snapshots_installed", m.snapshots_installed.load(Ordering::Relaxed).to_string());
    }
    text
}

fn field(text: &mut String, key: &str, value: String) {
    text.push_str(key);
    text.push(':');
    text.push_str(&value);
    text.push_str("\r\n");
}
