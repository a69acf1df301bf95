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
//! tag: the reply is the state machine's own (the same on every node). Membership changes are
//! tagged and answered the same way. A read (GET, MGET, EXISTS, DBSIZE) waits for a ReadIndex
//! (a follower's is forwarded to the leader) issued after the read arrived: reads that arrive
//! while one is in flight share the next one, and an answer serves every batch issued before
//! it; the read is served once the local store has applied that index. `READONLY` on a
//! connection serves its reads from the local store at once (possibly stale).
//!
//! Stopping: the threads that drive the node end first, then the transport, then the node
//! (proposals still open resolve as stopped), then client connections are shut, and last the
//! storage is closed.

use crate::command::Command;
use crate::kv::{ChangeContext, Member, Request, Store, Tag};
use crate::resp::{Limits, Reply, parse_request};
use keel::raft::{
    ConfChange, ConfChangeType, Config, DropReason, Node, NodeError, Outcome, ProposeError, RaftError, ReadOnlyOption,
    Ready, Role, UnknownReason,
};
use keel::storage::{ConfState, DiskStorage, EntryType, SnapshotWriter, Storage as _, StorageMut, StorageOptions};
use keel::transport::{TcpConfig, TcpTransport, Transport};
use keel::wal::LogStats;
use parking_lot::{Condvar, Mutex};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write as _};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The largest `max_request_bytes` allowed: a request becomes one log entry and travels in one
/// peer frame (at most 64 MiB) beside other entries.
pub const REQUEST_BYTES_LIMIT: usize = 32 << 20;

/// Bytes one command's reply may hold (an MGET of large values); beyond it, an error reply.
pub const REPLY_BYTES_MAX: usize = 64 << 20;

/// Replies buffered for a client before they are written out (pipelined requests).
const CLIENT_OUTPUT_FLUSH_BYTES: usize = 1 << 20;

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
    /// Addresses of peers that are not initial members (for a joining node: the members added
    /// since the cluster started, `KEEL.MEMBERS` lists them). The transport knows them; the
    /// replicated address book does not.
    pub extra_peers: BTreeMap<u64, Member>,
    /// Accept KEEL.FAULT (drop messages to and from chosen peers): for fault-injection tests
    /// only, never on by default.
    pub fault_injection: bool,
    /// Raft's logical clock.
    pub tick: Duration,
    /// Ticks without a leader before a follower campaigns.
    pub election_tick: usize,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_tick: usize,
    /// Entries applied after the last snapshot before a new one is made (0: never).
    pub snapshot_entries: u64,
    /// Entries kept below a snapshot for followers slightly behind (the rest is compacted).
    pub catch_up_entries: u64,
    /// Size of each log segment file (`LogOptions::segment_bytes`).
    pub segment_bytes: u64,
    /// Space held aside for a snapshot on a full disk (`StorageOptions::reserve_bytes`).
    pub reserve_bytes: u64,
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
            extra_peers: BTreeMap::new(),
            fault_injection: false,
            tick: Duration::from_millis(100),
            election_tick: 10,
            heartbeat_tick: 1,
            snapshot_entries: 10_000,
            catch_up_entries: 5_000,
            segment_bytes: keel::limits::SEGMENT_BYTES_DEFAULT,
            reserve_bytes: keel::storage::RESERVE_BYTES_DEFAULT,
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
    /// A membership change removed this node.
    removed: bool,
}

/// Where a read learns the index it may be served at (or the error reply).
type ReadWaiter = SyncSender<Result<u64, Reply>>;

/// Reads whose ReadIndex request is out, by request number.
struct ReadBatch {
    seq: u64,
    sent: Instant,
    waiters: Vec<ReadWaiter>,
}

/// Reads waiting for a ReadIndex: batches whose request is out (oldest first), and reads that
/// arrived after the newest was sent (they need a later one).
#[derive(Default)]
struct ReadQueue {
    next_seq: u64,
    inflight: Vec<ReadBatch>,
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
    /// Leadership hand-overs this node started because its disk was full.
    disk_full_transfers: AtomicU64,
    /// Reads this node, full and behind, had the leader answer.
    reads_asked_of_leader: AtomicU64,
}

struct Shared {
    config: ServerConfig,
    boot: u64,
    node: Node<DiskStorage>,
    transport: TcpTransport,
    store: Mutex<Store>,
    applied: Condvar,
    view: Mutex<RaftView>,
    /// Requests (writes and membership changes) proposed here, by tag sequence number.
    waiters: Mutex<HashMap<u64, SyncSender<Reply>>>,
    next_seq: AtomicU64,
    reads: Mutex<ReadQueue>,
    uncommitted_bytes: AtomicU64,
    clients: AtomicUsize,
    /// A clone of each client connection, to shut at stop.
    client_streams: Mutex<HashMap<u64, TcpStream>>,
    next_client: AtomicU64,
    /// The peer addresses the transport was given.
    peer_book: Mutex<BTreeMap<u64, String>>,
    /// Peers removed from the configuration, dropped from the transport a while later (so a
    /// removed leader's hand-over still reaches its successor).
    pending_removals: Mutex<Vec<(u64, Instant)>>,
    metrics: Metrics,
    /// A snapshot is being written (`maybe_snapshot`), by this thread.
    snapshotting: AtomicBool,
    snapshot_thread: Mutex<Option<JoinHandle<()>>>,
    /// When the last snapshot write ended, and how long it took.
    last_snapshot_timing: Mutex<Option<(Instant, Duration)>>,
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
    /// Tick, inbox and apply threads.
    node_threads: Vec<JoinHandle<()>>,
    /// The client acceptor (it joins the client threads).
    accept_thread: Option<JoinHandle<()>>,
    stopped: bool,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("id", &self.shared.config.id).field("client_addr", &self.client_addr).finish()
    }
}

const CLUSTER_ID_FILE: &str = "cluster-id";

fn sync_dir(dir: &Path) -> Result<(), ServerError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(format!("syncing {}", dir.display())))
}

/// Checks the data directory's cluster id, or writes it (durably) at the first start. A data
/// directory holding Raft data but no cluster id is refused rather than adopted.
fn check_cluster_id(config: &ServerConfig, had_raft_data: bool) -> Result<(), ServerError> {
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
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && had_raft_data => Err(ServerError::Config(format!(
            "{} holds Raft data but no {CLUSTER_ID_FILE} file: not a keel server data directory, or damaged",
            config.data_dir.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let tmp = config.data_dir.join(format!("{CLUSTER_ID_FILE}.tmp"));
            let mut f = std::fs::File::create(&tmp).map_err(io_err(format!("creating {}", tmp.display())))?;
            f.write_all(format!("{}\n", config.cluster_id).as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(io_err(format!("writing {}", tmp.display())))?;
            std::fs::rename(&tmp, &path).map_err(io_err(format!("renaming {}", tmp.display())))?;
            sync_dir(&config.data_dir)
        }
        Err(e) => Err(io_err(format!("reading {}", path.display()))(e)),
    }
}

/// The store a snapshot holds, checked against the snapshot's index.
fn restore_store(data: &[u8], index: u64) -> Result<Store, String> {
    let store = Store::restore(data).map_err(|e| e.to_string())?;
    if store.applied() != index {
        return Err(format!("its data says applied index {}, its metadata {index}", store.applied()));
    }
    Ok(store)
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
        if config.limits.max_request_bytes > REQUEST_BYTES_LIMIT {
            return Err(ServerError::Config(format!(
                "max_request_bytes {} is above {REQUEST_BYTES_LIMIT} (a request travels as one entry in one peer frame)",
                config.limits.max_request_bytes
            )));
        }
        let fresh_dir = !config.data_dir.exists();
        std::fs::create_dir_all(&config.data_dir).map_err(io_err(format!("creating {}", config.data_dir.display())))?;
        if fresh_dir && let Some(parent) = config.data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        let raft_dir = config.data_dir.join("raft");
        let had_raft_data = raft_dir.exists();
        // Opening takes the directory lock: from here on no other process works in it.
        let options = StorageOptions {
            log: keel::wal::LogOptions { segment_bytes: config.segment_bytes, ..keel::wal::LogOptions::default() },
            reserve_bytes: config.reserve_bytes,
            ..StorageOptions::default()
        };
        let (mut storage, report) = DiskStorage::open(&raft_dir, options)?;
        sync_dir(&config.data_dir)?;
        check_cluster_id(&config, had_raft_data)?;
        log::info!("node {}: opened {} ({})", config.id, config.data_dir.display(), report.log.to_string().trim_end());
        let state = keel::storage::Storage::initial_state(&storage)?;
        let last_index = keel::storage::Storage::last_index(&storage)?;
        let fresh = state.hard_state == Default::default() && last_index == 0;
        // The store: the newest snapshot's, or empty.
        let mut store = match keel::storage::Storage::snapshot(&storage, 0) {
            Ok(snap) => {
                let data = snap.read_to_vec()?;
                restore_store(&data, snap.metadata.index)
                    .map_err(|why| ServerError::BadSnapshot { dir: config.data_dir.clone(), why })?
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
        client_listener.set_nonblocking(true).map_err(io_err("client listener"))?;
        let (inbox_tx, inbox) = sync_channel(4096);
        let transport = TcpTransport::start(
            TcpConfig::new(config.id, config.cluster_id, BTreeMap::new()),
            peer_listener,
            inbox_tx,
            stager,
        )
        .map_err(io_err("starting the transport"))?;
        let node = Node::start(&raft, storage)?;
        let conf_state = node.status().map(|st| st.conf_state).unwrap_or(state.conf_state);
        let book = store.members().clone();
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
            client_streams: Mutex::new(HashMap::new()),
            next_client: AtomicU64::new(0),
            peer_book: Mutex::new(BTreeMap::new()),
            pending_removals: Mutex::new(Vec::new()),
            metrics: Metrics::default(),
            snapshotting: AtomicBool::new(false),
            snapshot_thread: Mutex::new(None),
            last_snapshot_timing: Mutex::new(None),
            stop: AtomicBool::new(false),
            failed: Mutex::new(None),
            started: Instant::now(),
            config,
        });
        sync_peers(&shared, &book);
        let id = shared.config.id;
        let mut server =
            Server { shared, client_addr, peer_addr, node_threads: Vec::new(), accept_thread: None, stopped: false };
        // From here a failure drops `server`, which stops what was started.
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new().name(format!("keel-{name}-{id}")).spawn(f).map_err(io_err("spawning a thread"))
        };
        let s = server.shared.clone();
        server.node_threads.push(spawn("tick", Box::new(move || tick_loop(&s)))?);
        let s = server.shared.clone();
        server.node_threads.push(spawn("inbox", Box::new(move || inbox_loop(&s, inbox)))?);
        let s = server.shared.clone();
        server.node_threads.push(spawn(
            "apply",
            Box::new(move || {
                // A panic must not leave a server that accepts clients and never answers.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| apply_loop(&s))).is_err() {
                    fail(&s, "the apply loop panicked".into());
                }
            }),
        )?);
        let s = server.shared.clone();
        server.accept_thread = Some(spawn("clients", Box::new(move || accept_loop(&s, client_listener)))?);
        log::info!("node {id}: serving clients on {client_addr}, peers on {peer_addr}");
        Ok(server)
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
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let s = &self.shared;
        s.stop.store(true, Ordering::SeqCst);
        wake_readers(s);
        for t in self.node_threads.drain(..) {
            let _ = t.join();
        }
        // A snapshot being written finishes (or fails quietly) while the node still runs.
        if let Some(t) = s.snapshot_thread.lock().take() {
            let _ = t.join();
        }
        // No more messages in or out; a snapshot being received is dropped.
        s.transport.shut_down();
        // Open proposals resolve as stopped; later calls fail at once.
        let storage = s.node.stop();
        // What still waits is answered now, not at its timeout.
        s.waiters.lock().clear();
        {
            let mut reads = s.reads.lock();
            reads.inflight.clear();
            reads.queued.clear();
        }
        wake_readers(s);
        for stream in s.client_streams.lock().values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
        let result = match storage {
            Ok(storage) => storage.close().map_err(|e| format!("closing the storage: {e}")),
            Err(NodeError::Stopped) => Ok(()),
            Err(e) => Err(e.to_string()),
        };
        log::info!("node {}: stopped", s.config.id);
        result
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.shut_down();
    }
}

/// Wakes every read waiting for the store to apply an index (with the lock held, so none
/// misses it between its check and its wait).
fn wake_readers(s: &Shared) {
    let _store = s.store.lock();
    s.applied.notify_all();
}

/// Different at each start of a process (time and process id), so tags of an earlier
/// incarnation never match this one's requests.
fn boot_id() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    (nanos as u64) ^ (u64::from(std::process::id()) << 40)
}

fn tick_loop(s: &Shared) {
    let mut next = Instant::now();
    let mut ticks: u64 = 0;
    let election = s.config.tick * s.config.election_tick as u32;
    let mut was_full = false;
    let mut said_no_target = false;
    while !s.stop.load(Ordering::SeqCst) {
        next += s.config.tick;
        if s.node.tick().is_err() {
            return;
        }
        match (s.node.disk_full(), was_full) {
            (Some(why), false) => {
                log::warn!("node {}: NOSPACE alarm: writes refused until space is freed: {why}", s.config.id)
            }
            (None, true) => log::info!("node {}: NOSPACE alarm cleared: the disk has room again", s.config.id),
            _ => {}
        }
        was_full = s.node.disk_full().is_some();
        if !was_full {
            said_no_target = false;
        } else if ticks.is_multiple_of(s.config.election_tick.max(1) as u64) {
            hand_over_while_full(s, &mut said_no_target);
        }
        // Reads whose ReadIndex got no answer (a message lost, a leader gone) are asked again;
        // batches older than a request's timeout have no one waiting any more.
        let retry = {
            let mut reads = s.reads.lock();
            let timeout = s.config.limits.request_timeout;
            reads.inflight.retain(|b| b.sent.elapsed() <= timeout);
            match reads.inflight.last() {
                Some(newest) => newest.sent.elapsed() > election,
                None => !reads.queued.is_empty(),
            }
        };
        if retry {
            start_read_batch(s, true);
        }
        // Removed peers leave the transport two election timeouts after their removal.
        let due: Vec<u64> = {
            let mut pending = s.pending_removals.lock();
            let due = pending.iter().filter(|(_, at)| at.elapsed() > 2 * election).map(|(id, _)| *id).collect();
            pending.retain(|(_, at)| at.elapsed() <= 2 * election);
            due
        };
        for id in due {
            // Under the book's lock: a re-add between the check and the removal would be lost.
            let book = s.peer_book.lock();
            if !book.contains_key(&id) {
                s.transport.remove_peer(id);
            }
        }
        // Peers whose address failed to resolve are tried again, about once a second.
        ticks += 1;
        if ticks.is_multiple_of(s.config.election_tick.max(1) as u64) {
            let members = s.store.lock().members().clone();
            sync_peers(s, &members);
        }
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            next = now;
        }
    }
}

/// A leader whose disk is full hands leadership to a voter that has proven it can persist what
/// this node could not: one whose log matches the leader's to its last index (the entries this
/// node holds unpersisted included). A peer that lags may be full too; handing it leadership
/// would only start an election it cannot win, so without such a peer the node keeps leading
/// (committing through the others, confirming reads). Called once an election timeout while
/// the disk is full, so a hand-over that did not happen is tried again; `said_no_target` keeps
/// the log to one line while no peer qualifies.
fn hand_over_while_full(s: &Shared, said_no_target: &mut bool) {
    if s.view.lock().role != Some(Role::Leader) {
        return;
    }
    let Ok(status) = s.node.status() else { return };
    if status.soft_state.role != Role::Leader || status.lead_transferee != 0 {
        return;
    }
    let target = status
        .progress
        .iter()
        .filter(|&(&id, &(matched, _, _))| {
            id != s.config.id && matched >= status.last_index && status.conf_state.voters.contains(&id)
        })
        .map(|(&id, _)| id)
        .next();
    match target {
        Some(to) => {
            log::warn!("node {}: the disk is full: handing leadership to node {to}", s.config.id);
            s.metrics.disk_full_transfers.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = s.node.transfer_leadership(to) {
                log::warn!("node {}: handing leadership to node {to}: {e}", s.config.id);
            }
        }
        None if !*said_no_target => {
            *said_no_target = true;
            log::warn!(
                "node {}: the disk is full and no voter has persisted this leader's log to index {}: keeping \
                 leadership",
                s.config.id,
                status.last_index
            )
        }
        None => {}
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
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn fail(s: &Shared, why: String) {
    log::error!("node {}: {why}; stopping", s.config.id);
    *s.failed.lock() = Some(why);
    s.stop.store(true, Ordering::SeqCst);
    wake_readers(s);
}

fn apply_loop(s: &Arc<Shared>) {
    while !s.stop.load(Ordering::SeqCst) {
        let rd = match s.node.ready_timeout(Duration::from_millis(100)) {
            Ok(Some(rd)) => rd,
            Ok(None) => {
                report_transport(s);
                // A node on a full disk hands out only partial Readies, and maybe none: its
                // snapshot (from the reserve), and the compaction after it, start here too.
                if s.node.disk_full().is_some()
                    && let Err(why) = maybe_snapshot(s)
                {
                    return fail(s, why);
                }
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

/// Answers the request proposed here under `tag`, if it was.
fn answer(s: &Shared, tag: Option<Tag>, reply: Reply) {
    if let Some(tag) = tag
        && tag.node == s.config.id
        && tag.boot == s.boot
        && let Some(waiter) = s.waiters.lock().remove(&tag.seq)
    {
        let _ = waiter.send(reply);
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
        let index = snap.metadata.index;
        let data = snap.read_to_vec().map_err(|e| format!("reading the snapshot at {index}: {e}"))?;
        let restored =
            restore_store(&data, index).map_err(|e| format!("the snapshot at {index} holds no store: {e}"))?;
        let members = restored.members().clone();
        *s.store.lock() = restored;
        sync_peers(s, &members);
        {
            let mut view = s.view.lock();
            let cs = &snap.metadata.conf_state;
            view.removed =
                ![&cs.voters, &cs.learners, &cs.voters_outgoing].iter().any(|ids| ids.contains(&s.config.id));
            view.conf_state = cs.clone();
            view.last_snapshot = index;
        }
        wake_readers(s);
        m.snapshots_installed.fetch_add(1, Ordering::Relaxed);
        log::info!("node {}: installed the snapshot at {index}", s.config.id);
    }
    for e in &rd.committed_entries {
        if e.index <= s.store.lock().applied() {
            continue; // applied already (a snapshot covered it)
        }
        match e.entry_type {
            EntryType::Normal if e.data.is_empty() => s.store.lock().skip(e.index),
            EntryType::Normal => match Request::decode(&e.data) {
                Ok(req) => {
                    let reply = s.store.lock().apply(e.index, &req.write);
                    m.entries_applied.fetch_add(1, Ordering::Relaxed);
                    answer(s, req.tag, reply);
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
        wake_readers(s);
    }
    for rs in &rd.read_states {
        read_answered(s, &rs.request_ctx, rs.index);
    }
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
    // A context this node cannot read still leaves the change itself applied.
    let context = ChangeContext::decode(&cc.context).unwrap_or_else(|e| {
        log::warn!("node {}: membership change at {index}: context unreadable ({e})", s.config.id);
        ChangeContext::default()
    });
    let cs = match s.node.apply_conf_change(&cc) {
        Ok(cs) => cs,
        Err(NodeError::Raft(e)) => {
            log::error!("node {}: membership change at {index} not applied: {e}", s.config.id);
            s.store.lock().skip(index);
            answer(s, context.tag, Reply::Error(format!("ERR the change was committed but not applied: {e}")));
            return Ok(());
        }
        Err(e) => return Err(format!("applying the membership change at {index}: {e}")),
    };
    let mut store = s.store.lock();
    for change in &cc.changes {
        match change.change_type {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                if let Some(m) = &context.member {
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
    let removed = !cs.voters.contains(&s.config.id)
        && !cs.learners.contains(&s.config.id)
        && !cs.voters_outgoing.contains(&s.config.id)
        && cc.changes.iter().any(|c| c.node_id == s.config.id && c.change_type == ConfChangeType::RemoveNode);
    {
        let mut view = s.view.lock();
        view.conf_state = cs;
        view.removed |= removed;
    }
    answer(s, context.tag, Reply::Simple("OK".into()));
    log::info!("node {}: membership change at {index} applied: {:?}", s.config.id, cc.changes);
    Ok(())
}

/// Makes the transport's peers the address book's members (other than this node) and the
/// extra addresses configured, touching only what changed: a member removed leaves the
/// transport later (`pending_removals`), so its last messages (a hand-over) still arrive.
fn sync_peers(s: &Shared, members: &BTreeMap<u64, Member>) {
    let mut target: BTreeMap<u64, &str> = members.iter().map(|(&id, m)| (id, m.peer_addr.as_str())).collect();
    for (&id, m) in &s.config.extra_peers {
        target.entry(id).or_insert(m.peer_addr.as_str());
    }
    target.remove(&s.config.id);
    let mut given = s.peer_book.lock();
    for (&id, &addr) in &target {
        if given.get(&id).map(String::as_str) != Some(addr) {
            // A failure (a name that does not resolve yet) is tried again by the tick thread.
            match Transport::add_peer(&s.transport, id, addr) {
                Ok(()) => {
                    given.insert(id, addr.to_string());
                    s.pending_removals.lock().retain(|(p, _)| *p != id);
                }
                Err(e) => log::warn!("node {}: member {id}'s peer address: {e}", s.config.id),
            }
        }
    }
    let gone: Vec<u64> = given.keys().filter(|id| !target.contains_key(id)).copied().collect();
    for id in gone {
        given.remove(&id);
        let mut pending = s.pending_removals.lock();
        pending.retain(|(p, _)| *p != id);
        pending.push((id, Instant::now()));
    }
}

/// Snapshots the store once enough entries were applied since the last snapshot (never when
/// `snapshot_entries` is 0), and compacts the log below it (keeping `catch_up_entries`).
///
/// The node thread only starts the snapshot file and, at the end, renames it into place and
/// compacts: the data is written and fdatasynced on a thread of its own, so a large store
/// does not hold up heartbeats and appends (the apply loop sends them) for the length of the
/// write. One snapshot at a time.
fn maybe_snapshot(s: &Arc<Shared>) -> Result<(), String> {
    if s.config.snapshot_entries == 0 || s.snapshotting.load(Ordering::SeqCst) {
        return Ok(());
    }
    // While a snapshot is written the storage has none to offer a follower that needs one:
    // after each, wait at least as long as it took (and a second) before the next.
    if let Some((ended, took)) = *s.last_snapshot_timing.lock()
        && ended.elapsed() < took.max(Duration::from_secs(1))
    {
        return Ok(());
    }
    let (last, conf_state) = {
        let v = s.view.lock();
        (v.last_snapshot, v.conf_state.clone())
    };
    let (index, data) = {
        let store = s.store.lock();
        // On a full disk a snapshot (and the compaction after it) is how the node frees space:
        // make one as soon as anything was applied since the last.
        let full = s.node.disk_full().is_some() && store.applied() > last;
        if store.applied() < last.saturating_add(s.config.snapshot_entries) && !full {
            return Ok(());
        }
        (store.applied(), store.snapshot())
    };
    let writer = match s.node.with_storage(move |st: &mut DiskStorage| st.begin_snapshot(index, &conf_state)) {
        Ok(Ok(w)) => w,
        // The node installed a leader's newer snapshot that this loop has not seen yet.
        Ok(Err(keel::Error::SnapshotOutOfDate { .. })) => return Ok(()),
        Ok(Err(e)) => return Err(format!("snapshot at {index}: {e}")),
        Err(e) => return Err(format!("snapshot at {index}: {e}")),
    };
    s.view.lock().last_snapshot = index;
    s.snapshotting.store(true, Ordering::SeqCst);
    let previous = last;
    let s2 = s.clone();
    let spawned = std::thread::Builder::new().name(format!("keel-snapshot-{}", s.config.id)).spawn(move || {
        let started = Instant::now();
        let result = write_snapshot(&s2, writer, &data, index);
        match result {
            Err(SnapshotFailure::NoSpace(why)) => {
                // The storage gave its reserve back for the next try: make it again later.
                log::warn!("node {}: {why}; trying again", s2.config.id);
                let mut v = s2.view.lock();
                if v.last_snapshot == index {
                    v.last_snapshot = previous;
                }
            }
            Err(SnapshotFailure::Other(why)) if !s2.stop.load(Ordering::SeqCst) => fail(&s2, why),
            _ => {}
        }
        *s2.last_snapshot_timing.lock() = Some((Instant::now(), started.elapsed()));
        s2.snapshotting.store(false, Ordering::SeqCst);
    });
    match spawned {
        Ok(t) => *s.snapshot_thread.lock() = Some(t),
        Err(e) => {
            s.snapshotting.store(false, Ordering::SeqCst);
            return Err(format!("snapshot at {index}: spawning its thread: {e}"));
        }
    }
    Ok(())
}

/// Why a snapshot of the store was not made.
enum SnapshotFailure {
    /// The disk was full: the storage released its reserve, and the next try should fit.
    NoSpace(String),
    /// Anything else: the server stops.
    Other(String),
}

fn write_snapshot(s: &Shared, mut writer: SnapshotWriter, data: &[u8], index: u64) -> Result<(), SnapshotFailure> {
    let err = |e: &dyn std::fmt::Display| SnapshotFailure::Other(format!("snapshot at {index}: {e}"));
    // A failed write is still handed to `finish_snapshot`, which says what it was (a full disk
    // is `NoSpace`, after the storage gave its reserve back for the retry).
    let written =
        writer.write_all(data).map_err(|e| e.to_string()).and_then(|()| writer.sync_data().map_err(|e| e.to_string()));
    let keep = s.config.catch_up_entries;
    let finished = s
        .node
        .with_storage(move |st: &mut DiskStorage| {
            match st.finish_snapshot(writer) {
                // A newer snapshot (from the leader) was installed meanwhile: nothing to do.
                Err(keel::Error::SnapshotOutOfDate { .. }) => return Ok(false),
                r => r?,
            }
            st.compact((index + 1).saturating_sub(keep).max(1))?;
            Ok::<bool, keel::Error>(true)
        })
        .map_err(|e| err(&e))?;
    let finished = match finished {
        Err(e) if e.is_no_space() => return Err(SnapshotFailure::NoSpace(format!("snapshot at {index}: {e}"))),
        r => r.map_err(|e| err(&e))?,
    };
    if let Err(e) = written {
        return Err(err(&e));
    }
    if finished {
        s.metrics.snapshots_made.fetch_add(1, Ordering::Relaxed);
        log::info!("node {}: snapshot at {index}", s.config.id);
    }
    Ok(())
}

/// A ReadIndex request's context: this node, this incarnation, the batch number. Unique across
/// nodes and restarts, so an answer meant for another node or an earlier process never serves
/// a read here.
fn read_context(s: &Shared, seq: u64) -> Vec<u8> {
    let mut ctx = Vec::with_capacity(24);
    for n in [s.config.id, s.boot, seq] {
        ctx.extend_from_slice(&n.to_le_bytes());
    }
    ctx
}

/// A ReadIndex answer: serves its batch and every batch sent before it.
fn read_answered(s: &Shared, ctx: &[u8], index: u64) {
    if ctx.len() != 24 {
        return;
    }
    let field = |i: usize| u64::from_le_bytes(ctx[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    if field(0) != s.config.id || field(1) != s.boot {
        return;
    }
    let seq = field(2);
    let served: Vec<ReadWaiter> = {
        let mut reads = s.reads.lock();
        let (done, rest): (Vec<ReadBatch>, Vec<ReadBatch>) =
            std::mem::take(&mut reads.inflight).into_iter().partition(|b| b.seq <= seq);
        reads.inflight = rest;
        done.into_iter().flat_map(|b| b.waiters).collect()
    };
    for w in served {
        let _ = w.send(Ok(index));
    }
    start_read_batch(s, false);
}

/// Sends a ReadIndex for the queued reads: when none is in flight, or (`again`) when the newest
/// has gone unanswered too long.
fn start_read_batch(s: &Shared, again: bool) {
    let seq = {
        let mut reads = s.reads.lock();
        if s.stop.load(Ordering::SeqCst) {
            // No ReadIndex will be answered: every read that queues meets this.
            let stranded = std::mem::take(&mut reads.queued);
            drop(reads);
            for w in stranded {
                let _ = w.send(Err(Reply::Error("ERR the server is stopping".into())));
            }
            return;
        }
        if !again && (!reads.inflight.is_empty() || reads.queued.is_empty()) {
            return;
        }
        if reads.inflight.is_empty() && reads.queued.is_empty() {
            return;
        }
        reads.next_seq += 1;
        let seq = reads.next_seq;
        let waiters = std::mem::take(&mut reads.queued);
        reads.inflight.push(ReadBatch { seq, sent: Instant::now(), waiters });
        seq
    };
    s.metrics.read_index_rounds.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = s.node.read_index(read_context(s, seq)) {
        // This batch fails, and so do reads queued meanwhile (nothing would send theirs).
        let reply = raft_error_reply(&e);
        let failed: Vec<ReadWaiter> = {
            let mut reads = s.reads.lock();
            let mut failed = std::mem::take(&mut reads.queued);
            if let Some(at) = reads.inflight.iter().position(|b| b.seq == seq) {
                failed.extend(reads.inflight.remove(at).waiters);
            }
            failed
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
        NodeError::Stopped => Reply::Error("ERR the server is stopping".into()),
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
                    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                    let _ = stream.write_all(b"-ERR max number of clients reached\r\n");
                    continue;
                }
                let n = s.next_client.fetch_add(1, Ordering::Relaxed);
                match stream.try_clone() {
                    Ok(clone) => s.client_streams.lock().insert(n, clone),
                    Err(_) => continue,
                };
                s.clients.fetch_add(1, Ordering::SeqCst);
                let s2 = s.clone();
                let spawned =
                    std::thread::Builder::new().name(format!("keel-client-{}", s.config.id)).spawn(move || {
                        if let Err(why) = serve_client(&s2, stream) {
                            log::debug!("node {}: client {from}: {why}", s2.config.id);
                        }
                        s2.client_streams.lock().remove(&n);
                        s2.clients.fetch_sub(1, Ordering::SeqCst);
                    });
                match spawned {
                    Ok(t) => conns.push(t),
                    Err(_) => {
                        s.client_streams.lock().remove(&n);
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

/// A request proposed and not yet answered.
struct Pending {
    seq: u64,
    bytes: u64,
    proposal: Option<keel::raft::Proposal>,
    reply: Receiver<Reply>,
    /// The answer already known (refused before proposing).
    early: Option<Reply>,
}

impl Pending {
    /// Registers a waiter for a new request; returns the tag the request must carry.
    fn new(s: &Shared) -> (Pending, Tag) {
        let seq = s.next_seq.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = sync_channel(1);
        s.waiters.lock().insert(seq, tx);
        (
            Pending { seq, bytes: 0, proposal: None, reply: rx, early: None },
            Tag { node: s.config.id, boot: s.boot, seq },
        )
    }
}

fn begin_write(s: &Shared, write: crate::kv::Write) -> Pending {
    let (mut p, tag) = Pending::new(s);
    let data = Request { tag: Some(tag), write }.encode();
    p.bytes = data.len() as u64;
    let before = s.uncommitted_bytes.fetch_add(p.bytes, Ordering::SeqCst);
    if before > 0 && before + p.bytes > s.config.limits.max_uncommitted_bytes {
        p.early = Some(Reply::Error(format!(
            "TRYAGAIN {before} bytes of writes are waiting on this node (limit {})",
            s.config.limits.max_uncommitted_bytes
        )));
        return p;
    }
    if let Some(why) = s.node.disk_full() {
        p.early = Some(Reply::Error(format!(
            "NOSPACE this node's disk is full; the write was not applied (it resumes by itself once a snapshot \
             and compaction or the operator free space): {why}"
        )));
        return p;
    }
    match s.node.propose(data) {
        Ok(proposal) => p.proposal = Some(proposal),
        Err(e) => p.early = Some(raft_error_reply(&e)),
    }
    p
}

/// Waits for a request's answer: a refusal from Raft, or the reply its apply gave.
fn finish(s: &Shared, mut p: Pending, deadline: Instant) -> Reply {
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
                        "TRYAGAIN the leader changed and entry {index} was replaced; the request was not applied"
                    ));
                }
                Outcome::Dropped(DropReason::Stopped) => {
                    return Reply::Error("ERR the server is stopping; the request was not applied".into());
                }
                Outcome::Unknown(UnknownReason::Stopped) => {
                    return Reply::Error("ERR the server is stopping: the request may or may not be applied".into());
                }
                Outcome::Committed { .. } | Outcome::Forwarded { .. } | Outcome::Unknown(_) => {}
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match p.reply.recv_timeout(left) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => Reply::Error(format!(
                "ERR timed out after {:?}: the request may or may not be applied",
                s.config.limits.request_timeout
            )),
            Err(RecvTimeoutError::Disconnected) => {
                Reply::Error("ERR the server is stopping: the request may or may not be applied".into())
            }
        }
    })();
    s.waiters.lock().remove(&p.seq);
    s.uncommitted_bytes.fetch_sub(p.bytes, Ordering::SeqCst);
    reply
}

/// Why a linearizable read is not served from this node's store.
enum ReadRefusal {
    /// The reply for the client.
    Reply(Reply),
    /// This node's disk is full and it has not applied what the read needs (the cluster moved
    /// on without it): the leader may answer instead; the reply if it cannot.
    Behind(Reply),
}

/// Waits until the store may answer a linearizable read: a ReadIndex sent after this call
/// began has been answered, and the store has applied its index.
fn await_read(s: &Shared, deadline: Instant) -> Result<(), ReadRefusal> {
    let (tx, rx) = sync_channel(1);
    s.reads.lock().queued.push(tx);
    start_read_batch(s, false);
    let left = deadline.saturating_duration_since(Instant::now());
    let refuse = |text: &str| Err(ReadRefusal::Reply(Reply::Error(text.into())));
    let index = match rx.recv_timeout(left) {
        Ok(r) => r.map_err(ReadRefusal::Reply)?,
        Err(RecvTimeoutError::Timeout) => {
            return refuse("TRYAGAIN the read could not be confirmed by a leader in time");
        }
        Err(RecvTimeoutError::Disconnected) => return refuse("ERR the server is stopping"),
    };
    // A node whose disk is full applies only what it persisted before: if the read needs more,
    // it says so at once (the read index is past its log) or within an election timeout
    // instead of holding the client to the deadline.
    let behind = |applied: u64, why: String| {
        Err(ReadRefusal::Behind(Reply::Error(format!(
            "NOSPACE this node's disk is full and it has applied only to index {applied} of the {index} this read \
             needs; read from another node, or retry once space is freed: {why}"
        ))))
    };
    if let Some(why) = s.node.disk_full() {
        let persisted = s.node.with_storage(|st: &mut DiskStorage| st.last_index().unwrap_or(0)).unwrap_or(0);
        let applied = s.store.lock().applied();
        if applied < index && persisted < index {
            return behind(applied, why);
        }
    }
    let full_grace = Instant::now() + s.config.tick * s.config.election_tick.max(1) as u32;
    let mut store = s.store.lock();
    while store.applied() < index {
        if s.stop.load(Ordering::SeqCst) {
            return refuse("ERR the server is stopping");
        }
        let until = if s.node.disk_full().is_some() { deadline.min(full_grace) } else { deadline };
        if s.applied.wait_until(&mut store, until).timed_out() && store.applied() < index {
            if Instant::now() >= deadline {
                return refuse("TRYAGAIN this node did not apply the read index in time");
            }
            if let Some(why) = s.node.disk_full() {
                return behind(store.applied(), why);
            }
        }
    }
    Ok(())
}

/// Asks the leader, as a client would, for a read this node cannot serve (its disk is full and
/// it is behind): the leader answers it linearizably (through its own ReadIndex) and the reply
/// is passed on, an error reply marked as the leader's. One connection per read, bounded by the
/// request's deadline. The leader's bytes are untrusted: framed by a resumable scanner (one
/// pass however the reply arrives), checked against the command's shape before they are built
/// into a reply (an MGET's array holds exactly its keys' bulks), then parsed (`parse_reply`).
fn ask_leader(s: &Shared, c: &Command, deadline: Instant) -> Result<Reply, String> {
    let leader = s.view.lock().leader;
    if leader == 0 || leader == s.config.id {
        return Err("no other node is known to lead".into());
    }
    let addr = s.store.lock().members().get(&leader).map(|m| m.client_addr.clone());
    let addr = addr.ok_or_else(|| format!("node {leader}'s client address is unknown"))?;
    let args: Vec<&[u8]> = match c {
        Command::Get(k) => vec![b"GET", k],
        Command::MGet(keys) => std::iter::once(&b"MGET"[..]).chain(keys.iter().map(Vec::as_slice)).collect(),
        Command::Exists(keys) => std::iter::once(&b"EXISTS"[..]).chain(keys.iter().map(Vec::as_slice)).collect(),
        Command::DbSize => vec![b"DBSIZE"],
        _ => return Err("not a read".into()),
    };
    let mut request = Vec::new();
    Reply::Array(Some(args.iter().map(|a| Reply::Bulk(Some(a.to_vec()))).collect())).encode(&mut request);
    let late = || format!("node {leader} (the leader, at {addr}) did not answer within the request's deadline");
    let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    // An address as members give it (an IP and a port) needs no name lookup, which could wait
    // past the deadline; a host name is looked up.
    let target = match addr.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => std::net::ToSocketAddrs::to_socket_addrs(addr.as_str())
            .map_err(|e| format!("{addr}: {e}"))?
            .next()
            .ok_or_else(|| format!("{addr} resolves to nothing"))?,
    };
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => late(),
        _ => format!("node {leader} (the leader, at {addr}): {e}"),
    };
    let mut stream = TcpStream::connect_timeout(&target, left()).map_err(io)?;
    stream.set_nodelay(true).map_err(io)?;
    stream.set_write_timeout(Some(left())).map_err(io)?;
    stream.write_all(&request).map_err(io)?;
    let max = REPLY_BYTES_MAX + (64 << 10);
    let bad = |what: String| format!("node {leader} (the leader, at {addr}) sent a reply that {what}");
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let mut scanner = crate::resp::ReplyScanner::default();
    let end = loop {
        if let Some(end) = scanner.scan(&buf, max).map_err(|e| bad(format!("is malformed: {e}")))? {
            break end;
        }
        if Instant::now() >= deadline {
            return Err(late());
        }
        stream.set_read_timeout(Some(left())).map_err(io)?;
        match stream.read(&mut chunk) {
            Ok(0) => return Err(format!("node {leader} (the leader, at {addr}) closed the connection")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(io(e)),
        }
    };
    // The shape the command's reply must have, checked before anything is built from it.
    let expected = match c {
        Command::Get(_) => b'$',
        Command::MGet(_) => b'*',
        _ => b':',
    };
    match buf.first() {
        Some(b'-') => {}
        Some(&t) if t == expected => {}
        _ => return Err(bad(format!("does not answer {}", args[0].escape_ascii()))),
    }
    if let Command::MGet(keys) = c
        && !buf.starts_with(format!("*{}\r\n", keys.len()).as_bytes())
    {
        return Err(bad(format!("does not hold {} values", keys.len())));
    }
    let reply = match crate::resp::parse_reply(&buf[..end], max) {
        Ok(Some((reply, _))) => reply,
        Ok(None) => return Err(bad("is cut short".into())),
        Err(e) => return Err(bad(format!("is malformed: {e}"))),
    };
    match reply {
        Reply::Array(Some(items)) if items.iter().any(|i| !matches!(i, Reply::Bulk(_))) => {
            Err(bad("holds something other than values".into()))
        }
        Reply::Error(text) => {
            let (code, rest) = text.split_once(' ').unwrap_or((text.as_str(), ""));
            Ok(Reply::Error(format!("{code} (answered by node {leader}, the leader) {rest}")))
        }
        reply => {
            s.metrics.reads_asked_of_leader.fetch_add(1, Ordering::Relaxed);
            Ok(reply)
        }
    }
}

fn serve_client(s: &Shared, mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    // A client that stops reading its replies is dropped rather than holding a thread forever.
    stream.set_write_timeout(Some(s.config.limits.request_timeout))?;
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
        let quit = run_commands(s, commands, &mut stale_reads, &mut out, &mut stream)?;
        if let Some(e) = &protocol_error {
            Reply::Error(format!("ERR Protocol error: {e}")).encode(&mut out);
        }
        stream.write_all(&out)?;
        if quit || protocol_error.is_some() {
            return Ok(());
        }
    }
}

/// The reply to a read of the store, unless it would exceed [`REPLY_BYTES_MAX`].
fn read_reply(s: &Shared, c: &Command) -> Reply {
    let store = s.store.lock();
    if let Command::MGet(keys) = c {
        let bytes: usize = keys.iter().map(|k| store.get(k).map_or(5, |v| v.len() + 16)).sum();
        if bytes > REPLY_BYTES_MAX {
            return Reply::Error(format!("ERR the reply would hold {bytes} bytes; the limit is {REPLY_BYTES_MAX}"));
        }
    }
    c.read(&store)
}

/// Runs a pipeline of commands in order, appending replies to `out` (written to `stream`
/// whenever it grows past [`CLIENT_OUTPUT_FLUSH_BYTES`]); returns whether to close.
fn run_commands(
    s: &Shared,
    commands: Vec<Result<Command, Reply>>,
    stale_reads: &mut bool,
    out: &mut Vec<u8>,
    stream: &mut TcpStream,
) -> std::io::Result<bool> {
    let mut pending: Vec<(Pending, Instant)> = Vec::new();
    let flush = |pending: &mut Vec<(Pending, Instant)>, out: &mut Vec<u8>| {
        for (p, deadline) in pending.drain(..) {
            finish(s, p, deadline).encode(out);
            s.metrics.writes.fetch_add(1, Ordering::Relaxed);
        }
    };
    for c in commands {
        if out.len() > CLIENT_OUTPUT_FLUSH_BYTES {
            stream.write_all(out)?;
            out.clear();
        }
        let deadline = Instant::now() + s.config.limits.request_timeout;
        let c = match c {
            Ok(c) => c,
            Err(reply) => {
                flush(&mut pending, out);
                reply.encode(out);
                continue;
            }
        };
        let refusal = if let Some(why) = s.failed.lock().clone() {
            Some(format!("ERR the server failed: {why}"))
        } else if s.stop.load(Ordering::SeqCst) {
            Some("ERR the server is stopping".into())
        } else if s.view.lock().removed && !matches!(c, Command::Info(_) | Command::Quit | Command::Ping(_)) {
            Some("ERR this node was removed from the cluster".into())
        } else {
            None
        };
        if let Some(why) = refusal {
            flush(&mut pending, out);
            Reply::Error(why).encode(out);
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
                return Ok(true);
            }
            Command::Info(section) => Reply::Bulk(Some(info(s, section.as_deref()).into_bytes())),
            Command::Members => members_reply(s),
            Command::AddMember { id, peer_addr, client_addr, learner } => {
                let kind = if learner { ConfChangeType::AddLearnerNode } else { ConfChangeType::AddNode };
                change_membership(s, ConfChange::simple(kind, id), Some(Member { peer_addr, client_addr }), deadline)
            }
            Command::RemoveMember(id) => {
                change_membership(s, ConfChange::simple(ConfChangeType::RemoveNode, id), None, deadline)
            }
            Command::Transfer(to) => transfer(s, to, deadline),
            Command::Fault(peers) if s.config.fault_injection => {
                log::warn!("node {}: fault injection: cut off from {peers:?}", s.config.id);
                s.transport.set_blocked(peers.into_iter().collect());
                Reply::Simple("OK".into())
            }
            Command::Fault(_) => Reply::Error(
                "ERR fault injection is off (a test feature: start the server with --enable-fault-injection)".into(),
            ),
            c if c.reads_store() => {
                s.metrics.reads.fetch_add(1, Ordering::Relaxed);
                match if *stale_reads { Ok(()) } else { await_read(s, deadline) } {
                    Ok(()) => read_reply(s, &c),
                    Err(ReadRefusal::Reply(reply)) => reply,
                    Err(ReadRefusal::Behind(reply)) => match ask_leader(s, &c, deadline) {
                        Ok(answer) => answer,
                        Err(why) => match reply {
                            Reply::Error(text) => {
                                Reply::Error(format!("{text} (the leader could not be asked: {why})"))
                            }
                            other => other,
                        },
                    },
                }
            }
            c => c.read(&s.store.lock()),
        };
        reply.encode(out);
    }
    flush(&mut pending, out);
    Ok(false)
}

/// Proposes a membership change tagged like a write, answered when it is applied here.
fn change_membership(s: &Shared, mut cc: ConfChange, member: Option<Member>, deadline: Instant) -> Reply {
    let (mut p, tag) = Pending::new(s);
    cc.context = ChangeContext { tag: Some(tag), member }.encode();
    match s.node.propose_conf_change(&cc) {
        Ok(proposal) => p.proposal = Some(proposal),
        Err(e) => p.early = Some(raft_error_reply(&e)),
    }
    finish(s, p, deadline)
}

fn transfer(s: &Shared, to: u64, deadline: Instant) -> Reply {
    if let Err(e) = s.node.transfer_leadership(to) {
        return raft_error_reply(&e);
    }
    while Instant::now() < deadline && !s.stop.load(Ordering::SeqCst) {
        if s.view.lock().leader == to {
            return Reply::Simple("OK".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Reply::Error(format!("ERR node {to} did not take over in time"))
}

fn role_name(view: &RaftView) -> &'static str {
    if view.removed {
        return "removed";
    }
    match view.role {
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
        field(&mut text, "role", role_name(&view).into());
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
        let full = s.node.disk_full();
        field(&mut text, "disk_full", u8::from(full.is_some()).to_string());
        field(&mut text, "alarm", if full.is_some() { "NOSPACE".into() } else { String::new() });
        field(&mut text, "disk_full_reason", full.unwrap_or_default());
        field(&mut text, "disk_full_transfers", m.disk_full_transfers.load(Ordering::Relaxed).to_string());
        field(&mut text, "reads_asked_of_leader", m.reads_asked_of_leader.load(Ordering::Relaxed).to_string());
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
