//! A TCP transport for Raft messages between processes.
//!
//! Each node listens for its peers and opens one outbound connection to each peer: messages to a
//! peer travel on the sender's connection, so a connection carries one direction (two per pair
//! of nodes). Every connection starts with a [`Hello`] from the connecting side, checked before
//! anything else is read: another cluster, another protocol version, another receiver or an
//! unknown sender closes it.
//!
//! Sending never waits: [`TcpTransport::send`] encodes the message and queues its frame for the
//! peer's writer thread, in a queue bounded by frames and bytes. When the queue is full the
//! message is dropped and the peer reported unreachable ([`TcpTransport::take_unreachable`], for
//! `RawNode::report_unreachable`): memory stays bounded while a peer is down. A writer connects
//! with backoff (50 ms doubling to 1 s) and drops the frame it was writing when a connection
//! fails (Raft resends). Received messages go to the inbox channel the application reads; a
//! message claiming another sender than the handshake's is dropped with the connection.
//!
//! A snapshot message goes on a connection of its own, opened for it by a thread of its own: the
//! message (its header) then the data in chunks from a [`SnapshotSender`], so a large snapshot
//! never holds up heartbeats and appends. The receiving side stages the chunks through the
//! storage's [`SnapshotStager`] with a [`SnapshotReceiver`] (every chunk checked, the whole data
//! checked) and hands the completed message to the inbox; the sender reports how the transfer
//! ended ([`TcpTransport::take_snapshot_reports`], for `RawNode::report_snapshot`).
//!
//! Peers can be added and removed while it runs ([`Transport::add_peer`], for membership
//! changes). Refused connections and failed transfers are logged (the `log` crate, at `warn`).

use super::Transport;
use super::frame::{FRAME_HEADER_BYTES, FrameKind, HELLO_BYTES, Hello, PROTOCOL_VERSION, decode_frame, encode_frame};
use crate::raft::{Decoded, Message, PendingSnapshot, SnapshotChunk, SnapshotReceiver, SnapshotSender, SnapshotStatus};
use crate::storage::SnapshotStager;
use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::Duration;

/// How a [`TcpTransport`] is set up.
#[derive(Debug, Clone)]
pub struct TcpConfig {
    /// This node's id.
    pub node_id: u64,
    /// The cluster's id: nodes of different clusters never talk.
    pub cluster_id: u64,
    /// Each peer's id and the address it listens on.
    pub peers: BTreeMap<u64, SocketAddr>,
    /// Frames queued for one peer before messages to it are dropped.
    pub queue_frames: usize,
    /// Bytes queued for one peer before messages to it are dropped.
    pub queue_bytes: usize,
}

impl TcpConfig {
    /// Defaults: 4,096 frames or 64 MiB queued per peer.
    pub fn new(node_id: u64, cluster_id: u64, peers: BTreeMap<u64, SocketAddr>) -> TcpConfig {
        TcpConfig { node_id, cluster_id, peers, queue_frames: 4096, queue_bytes: 64 << 20 }
    }
}

/// Why a message was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The message is addressed to a node that is not a configured peer.
    #[error("node {0} is not a peer")]
    UnknownPeer(u64),
    /// The peer's queue is full: the message was dropped and the peer marked unreachable.
    #[error("the queue to node {0} is full; the message was dropped")]
    QueueFull(u64),
}

/// Who the accept side hears: the peers, and those fault injection cuts off.
#[derive(Debug, Default)]
struct PeerSets {
    known: BTreeSet<u64>,
    blocked: BTreeSet<u64>,
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Vec<u8>>,
    bytes: usize,
    stopped: bool,
}

struct Peer {
    addr: SocketAddr,
    queue: Mutex<Queue>,
    ready: Condvar,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// Raft messages over TCP; see the module docs.
pub struct TcpTransport {
    local: SocketAddr,
    config: TcpConfig,
    peers: RwLock<BTreeMap<u64, Arc<Peer>>>,
    /// The peers whose connections the accept side takes, and those cut off by fault
    /// injection (shared with it).
    known: Arc<RwLock<PeerSets>>,
    unreachable: Arc<Mutex<BTreeSet<u64>>>,
    /// How snapshot transfers ended, (peer, status), not yet taken.
    snapshot_reports: Arc<Mutex<Vec<(u64, SnapshotStatus)>>>,
    /// Snapshot transfers under way (and finished ones not yet reaped).
    transfers: Mutex<Vec<JoinHandle<()>>>,
    stop: Arc<AtomicBool>,
    /// The accept thread and the writers of peers removed (they end on their own).
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport").field("local", &self.local).field("node_id", &self.config.node_id).finish()
    }
}

const POLL: Duration = Duration::from_millis(20);

/// How long an inbound connection may take to send its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Inbound connections read at once (each a thread, each buffering at most a frame): a
/// stranger opening connections in a loop meets this bound.
const INBOUND_CONNECTIONS_MAX: usize = 256;

/// Queued frames a writer joins into one `write` (a burst of appends and heartbeats).
const WRITE_BATCH_BYTES: usize = 1 << 20;

impl TcpTransport {
    /// Starts listening on `listener` (bound by the caller, so tests and servers choose the
    /// port) and a writer thread per peer. Received messages are sent to `inbox`; when it is
    /// full they are dropped (Raft resends).
    pub fn start(
        config: TcpConfig,
        listener: TcpListener,
        inbox: SyncSender<Message>,
        stager: Arc<dyn SnapshotStager>,
    ) -> io::Result<TcpTransport> {
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let ours =
            Hello { protocol_version: PROTOCOL_VERSION, cluster_id: config.cluster_id, from: config.node_id, to: 0 };
        let known =
            Arc::new(RwLock::new(PeerSets { known: config.peers.keys().copied().collect(), blocked: BTreeSet::new() }));
        {
            let (stop, known) = (stop.clone(), known.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("keel-accept-{}", config.node_id))
                    .spawn(move || accept_loop(listener, ours, known, inbox, stager, stop))?,
            );
        }
        let mut peers = BTreeMap::new();
        for (&id, &addr) in &config.peers {
            peers.insert(id, start_peer(&config, id, addr, &stop)?);
        }
        Ok(TcpTransport {
            local,
            config,
            peers: RwLock::new(peers),
            known,
            unreachable: Arc::new(Mutex::new(BTreeSet::new())),
            snapshot_reports: Arc::new(Mutex::new(Vec::new())),
            transfers: Mutex::new(Vec::new()),
            stop,
            threads: Mutex::new(threads),
        })
    }

    /// The address this node listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Queues `m` for its peer (`m.to`); never waits. A snapshot message starts a transfer on a
    /// connection of its own (module docs).
    pub fn send(&self, m: &Message) -> Result<(), SendError> {
        let peer = self.peers.read().get(&m.to).cloned().ok_or(SendError::UnknownPeer(m.to))?;
        if self.known.read().blocked.contains(&m.to) {
            // Fault injection: the network loses it. A snapshot transfer fails at once.
            if m.snapshot.is_some() {
                self.snapshot_reports.lock().push((m.to, SnapshotStatus::Failure));
            }
            return Ok(());
        }
        if m.snapshot.is_some() {
            self.send_snapshot(m, peer.addr);
            return Ok(());
        }
        let frame = encode_frame(FrameKind::Message, &m.encode());
        let mut q = peer.queue.lock();
        if q.frames.len() >= self.config.queue_frames || q.bytes + frame.len() > self.config.queue_bytes {
            drop(q);
            self.unreachable.lock().insert(m.to);
            return Err(SendError::QueueFull(m.to));
        }
        q.bytes += frame.len();
        q.frames.push_back(frame);
        drop(q);
        peer.ready.notify_one();
        Ok(())
    }

    fn send_snapshot(&self, m: &Message, addr: SocketAddr) {
        let (to, m) = (m.to, m.clone());
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            cluster_id: self.config.cluster_id,
            from: self.config.node_id,
            to,
        };
        let (reports, stop) = (Arc::clone(&self.snapshot_reports), Arc::clone(&self.stop));
        let spawned =
            std::thread::Builder::new().name(format!("keel-snap-{}-{to}", self.config.node_id)).spawn(move || {
                let status = match stream_snapshot(addr, &hello, &m, &stop) {
                    Ok(()) => SnapshotStatus::Finish,
                    Err(why) => {
                        log::warn!("node {} could not send a snapshot to {to}: {why}", hello.from);
                        SnapshotStatus::Failure
                    }
                };
                reports.lock().push((to, status));
            });
        match spawned {
            Ok(t) => {
                let mut transfers = self.transfers.lock();
                transfers.retain(|t| !t.is_finished());
                transfers.push(t);
            }
            Err(_) => self.snapshot_reports.lock().push((to, SnapshotStatus::Failure)),
        }
    }

    /// How snapshot transfers ended since the last call: tell Raft (`RawNode::report_snapshot`).
    pub fn take_snapshot_reports(&self) -> Vec<(u64, SnapshotStatus)> {
        std::mem::take(&mut *self.snapshot_reports.lock())
    }

    /// The peers a message was dropped for since the last call: tell Raft
    /// (`RawNode::report_unreachable`).
    pub fn take_unreachable(&self) -> Vec<u64> {
        std::mem::take(&mut *self.unreachable.lock()).into_iter().collect()
    }

    /// Adds peer `id` listening on `addr` (or moves it there), from now on a sender the accept
    /// side takes and a receiver `send` queues for.
    pub fn add_peer(&self, id: u64, addr: SocketAddr) -> io::Result<()> {
        if id == self.config.node_id || self.peers.read().get(&id).is_some_and(|p| p.addr == addr) {
            return Ok(());
        }
        self.remove_peer(id);
        let peer = start_peer(&self.config, id, addr, &self.stop)?;
        self.peers.write().insert(id, peer);
        self.known.write().known.insert(id);
        Ok(())
    }

    /// Removes peer `id`: its queue is dropped, its writer told to stop, and its connections
    /// refused from now on (one already open is closed at its next message). Never waits: the
    /// writer may be inside a connect or a write, and ends when that does.
    pub fn remove_peer(&self, id: u64) {
        self.known.write().known.remove(&id);
        let Some(peer) = self.peers.write().remove(&id) else { return };
        if let Some(t) = stop_peer(&peer) {
            let mut threads = self.threads.lock();
            threads.retain(|t| !t.is_finished());
            threads.push(t);
        }
    }

    /// The peers, with their addresses.
    pub fn peers(&self) -> BTreeMap<u64, SocketAddr> {
        self.peers.read().iter().map(|(&id, p)| (id, p.addr)).collect()
    }

    /// Fault injection, for tests of the system under partitions: messages to and from these
    /// peers are dropped (as a network that loses them would) until the set is changed; the
    /// connections stay up. Empty (the default) is no fault.
    pub fn set_blocked(&self, peers: BTreeSet<u64>) {
        self.known.write().blocked = peers;
    }

    /// Frames queued for each peer (a gauge of who is behind).
    pub fn queue_depths(&self) -> BTreeMap<u64, usize> {
        self.peers.read().iter().map(|(&id, p)| (id, p.queue.lock().frames.len())).collect()
    }

    /// Stops every thread and waits for them; queued messages are dropped.
    pub fn stop(self) {
        self.shut_down();
    }

    /// What `stop` does, through a shared reference (an application that keeps the transport
    /// in an `Arc`): afterwards nothing is sent or received and every thread has ended.
    pub fn shut_down(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let peers: Vec<Arc<Peer>> = std::mem::take(&mut *self.peers.write()).into_values().collect();
        let writers: Vec<JoinHandle<()>> = peers.iter().filter_map(|p| stop_peer(p)).collect();
        // Transfers stop between chunks once `stop` is set.
        let transfers: Vec<JoinHandle<()>> = self.transfers.lock().drain(..).collect();
        let threads: Vec<JoinHandle<()>> = self.threads.lock().drain(..).collect();
        for t in threads.into_iter().chain(writers).chain(transfers) {
            let _ = t.join();
        }
    }
}

impl Transport for TcpTransport {
    fn send(&self, m: &Message) -> Result<(), SendError> {
        TcpTransport::send(self, m)
    }
    fn take_unreachable(&self) -> Vec<u64> {
        TcpTransport::take_unreachable(self)
    }
    fn take_snapshot_reports(&self) -> Vec<(u64, SnapshotStatus)> {
        TcpTransport::take_snapshot_reports(self)
    }
    fn add_peer(&self, id: u64, address: &str) -> Result<(), String> {
        use std::net::ToSocketAddrs;
        let addr = address
            .to_socket_addrs()
            .map_err(|e| format!("address {address:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("address {address:?} resolves to nothing"))?;
        TcpTransport::add_peer(self, id, addr).map_err(|e| format!("starting the writer to node {id}: {e}"))
    }
    fn remove_peer(&self, id: u64) {
        TcpTransport::remove_peer(self, id)
    }
}

/// Starts the writer thread of a new peer.
fn start_peer(config: &TcpConfig, id: u64, addr: SocketAddr, stop: &Arc<AtomicBool>) -> io::Result<Arc<Peer>> {
    let peer =
        Arc::new(Peer { addr, queue: Mutex::new(Queue::default()), ready: Condvar::new(), writer: Mutex::new(None) });
    let hello =
        Hello { protocol_version: PROTOCOL_VERSION, cluster_id: config.cluster_id, from: config.node_id, to: id };
    let (p, stop) = (peer.clone(), stop.clone());
    let t = std::thread::Builder::new()
        .name(format!("keel-peer-{}-{id}", config.node_id))
        .spawn(move || write_loop(addr, hello, p, stop))?;
    *peer.writer.lock() = Some(t);
    Ok(peer)
}

/// Tells a peer's writer to stop; returns its thread to join.
fn stop_peer(peer: &Peer) -> Option<JoinHandle<()>> {
    peer.queue.lock().stopped = true;
    peer.ready.notify_all();
    peer.writer.lock().take()
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn accept_loop(
    listener: TcpListener,
    ours: Hello,
    known: Arc<RwLock<PeerSets>>,
    inbox: SyncSender<Message>,
    stager: Arc<dyn SnapshotStager>,
    stop: Arc<AtomicBool>,
) {
    let mut readers: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, from)) => {
                readers.retain(|t| !t.is_finished());
                if readers.len() >= INBOUND_CONNECTIONS_MAX {
                    log::warn!("node {} refused a connection from {from}: {} open already", ours.from, readers.len());
                    continue;
                }
                let (known, inbox, stop, stager) = (known.clone(), inbox.clone(), stop.clone(), stager.clone());
                let spawned = std::thread::Builder::new().name(format!("keel-read-{}", ours.from)).spawn(move || {
                    if let Err(why) = read_loop(stream, ours, &known, &inbox, stager.as_ref(), &stop) {
                        log::warn!("node {} closed a connection from {from}: {why}", ours.from);
                    }
                });
                if let Ok(t) = spawned {
                    readers.push(t);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(_) => std::thread::sleep(POLL),
        }
    }
    for t in readers {
        let _ = t.join();
    }
}

/// The byte-level protocol of an inbound peer connection, apart from the socket: bytes in,
/// messages out, or why the connection must close. The fuzz target `peer_stream` drives it.
pub struct Inbound {
    ours: Hello,
    buf: Vec<u8>,
    /// The peer, once its handshake was accepted.
    peer: Option<u64>,
    /// A snapshot announced and its data still arriving.
    receiving: Option<(PendingSnapshot, SnapshotReceiver)>,
}

/// What an [`Inbound`] connection delivered.
#[derive(Debug)]
pub enum Delivered {
    /// A Raft message, for the node.
    Message(Message),
    /// A snapshot message whose data arrived whole and checked.
    Snapshot(Message),
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("peer", &self.peer)
            .field("buffered", &self.buf.len())
            .field("receiving", &self.receiving.as_ref().map(|(p, _)| p.header().metadata.index))
            .finish()
    }
}

impl Inbound {
    /// A connection to this node (`ours`: its handshake, whose `from` is this node).
    pub fn new(ours: Hello) -> Inbound {
        Inbound { ours, buf: Vec::new(), peer: None, receiving: None }
    }

    /// The peer, once its handshake was accepted.
    pub fn peer(&self) -> Option<u64> {
        self.peer
    }

    /// Takes the bytes just read; returns what they completed, in order, or why the connection
    /// must close (a bad frame or handshake, a frame out of place, a message claiming another
    /// sender, a damaged snapshot). Never panics, whatever the bytes.
    pub fn feed(
        &mut self,
        bytes: &[u8],
        is_peer: impl Fn(u64) -> bool,
        stager: &dyn SnapshotStager,
    ) -> Result<Vec<Delivered>, String> {
        self.buf.extend_from_slice(bytes);
        // Before the handshake only a Hello may come: a stranger cannot make us buffer more.
        if self.peer.is_none() && self.buf.len() > FRAME_HEADER_BYTES + HELLO_BYTES {
            let (frame, _) = match decode_frame(&self.buf) {
                Ok(Some(f)) => f,
                _ => return Err("more bytes than a handshake before the handshake".into()),
            };
            if frame.kind != FrameKind::Hello {
                return Err("a frame before the handshake".into());
            }
        }
        let mut out = Vec::new();
        let mut at = 0;
        while let Some((frame, used)) = decode_frame(&self.buf[at..]).map_err(|e| e.to_string())? {
            at += used;
            match (self.peer, frame.kind) {
                (None, FrameKind::Hello) => {
                    let hello = Hello::decode(&frame.payload).map_err(|e| e.to_string())?;
                    hello.check(&self.ours, &is_peer).map_err(|e| format!("handshake refused: {e}"))?;
                    self.peer = Some(hello.from);
                }
                (None, _) => return Err("a frame before the handshake".into()),
                (Some(from), _) if !is_peer(from) => return Err(format!("node {from} is no longer a peer")),
                (Some(from), FrameKind::Message) => match Message::decode(&frame.payload).map_err(|e| e.to_string())? {
                    Decoded::Message(m) if m.from == from && m.to == self.ours.from => out.push(Delivered::Message(m)),
                    Decoded::Message(m) => {
                        return Err(format!("a message from {} to {} on node {from}'s connection", m.from, m.to));
                    }
                    Decoded::Snapshot(pending) => {
                        let m = pending.message();
                        if m.from != from || m.to != self.ours.from || self.receiving.is_some() {
                            return Err("a snapshot announcement out of place".into());
                        }
                        let sink = stager.stage(&pending.header().metadata).map_err(|e| e.to_string())?;
                        let receiver = SnapshotReceiver::new(pending.header().clone(), sink);
                        self.receiving = Some((pending, receiver));
                    }
                },
                (Some(_), FrameKind::SnapshotChunk) => {
                    let Some((_, receiver)) = self.receiving.as_mut() else {
                        return Err("a snapshot chunk with no snapshot announced".into());
                    };
                    let chunk = SnapshotChunk::decode(&frame.payload).map_err(|e| e.to_string())?;
                    receiver.receive(&chunk).map_err(|e| e.to_string())?;
                    if receiver.is_complete() {
                        let (pending, receiver) = self.receiving.take().expect("receiving");
                        let snapshot = receiver.finish().map_err(|e| e.to_string())?;
                        out.push(Delivered::Snapshot(pending.complete(snapshot).map_err(|e| e.to_string())?));
                    }
                }
                (Some(_), FrameKind::Hello) => return Err("a second handshake".into()),
            }
        }
        self.buf.drain(..at);
        Ok(out)
    }
}

/// Reads one inbound connection until it fails, lies, or the transport stops. Returns why it
/// closed (`Ok` when stopped or closed by the peer).
fn read_loop(
    mut stream: TcpStream,
    ours: Hello,
    known: &RwLock<PeerSets>,
    inbox: &SyncSender<Message>,
    stager: &dyn SnapshotStager,
    stop: &AtomicBool,
) -> Result<(), String> {
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(POLL)).map_err(|e| e.to_string())?;
    let mut conn = Inbound::new(ours);
    let mut chunk = vec![0u8; 64 << 10];
    let opened = std::time::Instant::now();
    while !stop.load(Ordering::SeqCst) {
        // A connection that says nothing does not hold one of the connection slots for long.
        if conn.peer().is_none() && opened.elapsed() > HANDSHAKE_TIMEOUT {
            return Err(format!("no handshake within {HANDSHAKE_TIMEOUT:?}"));
        }
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
            Err(e) => return Err(e.to_string()),
        };
        for d in conn.feed(&chunk[..n], |id| known.read().known.contains(&id), stager)? {
            // Fault injection: messages from a peer cut off are lost.
            if conn.peer().is_some_and(|p| known.read().blocked.contains(&p)) {
                continue;
            }
            let sent = match d {
                // Dropped when the inbox is full: Raft resends.
                Delivered::Message(m) => match inbox.try_send(m) {
                    Ok(()) | Err(TrySendError::Full(_)) => Ok(()),
                    Err(TrySendError::Disconnected(_)) => Err(()),
                },
                // A snapshot is worth waiting for room in the inbox.
                Delivered::Snapshot(m) => inbox.send(m).map_err(drop),
            };
            if sent.is_err() {
                return Ok(()); // the node is gone
            }
        }
    }
    Ok(())
}

/// Writes one peer's queued frames, connecting (and reconnecting) with backoff.
fn write_loop(addr: SocketAddr, hello: Hello, peer: Arc<Peer>, stop: Arc<AtomicBool>) {
    let mut conn: Option<TcpStream> = None;
    let mut backoff = Duration::from_millis(50);
    loop {
        // Everything queued goes in one write (up to a bound): one syscall for a burst.
        let frame = {
            let mut q = peer.queue.lock();
            while q.frames.is_empty() && !q.stopped {
                peer.ready.wait_for(&mut q, Duration::from_millis(200));
            }
            if q.stopped {
                return;
            }
            let mut batch = q.frames.pop_front().expect("not empty");
            while let Some(next) = q.frames.front()
                && batch.len() + next.len() <= WRITE_BATCH_BYTES
            {
                let next = q.frames.pop_front().expect("not empty");
                batch.extend_from_slice(&next);
            }
            q.bytes -= q.bytes.min(batch.len());
            batch
        };
        if conn.is_none() {
            match connect(addr, &hello) {
                Ok(s) => {
                    conn = Some(s);
                    backoff = Duration::from_millis(50);
                }
                Err(_) => {
                    // The frame is dropped (Raft resends); wait before trying again.
                    let until = std::time::Instant::now() + backoff;
                    while std::time::Instant::now() < until
                        && !stop.load(Ordering::SeqCst)
                        && !peer.queue.lock().stopped
                    {
                        std::thread::sleep(POLL.min(backoff));
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            }
        }
        if let Some(s) = conn.as_mut()
            && s.write_all(&frame).is_err()
        {
            conn = None;
        }
    }
}

/// One snapshot transfer on a connection of its own: the handshake, the message, the chunks.
fn stream_snapshot(addr: SocketAddr, hello: &Hello, m: &Message, stop: &AtomicBool) -> Result<(), String> {
    let snapshot = m.snapshot.clone().expect("a snapshot message");
    let mut s = connect(addr, hello).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
    s.write_all(&encode_frame(FrameKind::Message, &m.encode())).map_err(|e| e.to_string())?;
    let sender =
        SnapshotSender::new(snapshot, crate::limits::SNAPSHOT_CHUNK_BYTES_DEFAULT).map_err(|e| e.to_string())?;
    for chunk in sender {
        if stop.load(Ordering::SeqCst) {
            return Err("the transport stopped".into());
        }
        let chunk = chunk.map_err(|e| e.to_string())?;
        s.write_all(&encode_frame(FrameKind::SnapshotChunk, &chunk.encode())).map_err(|e| e.to_string())?;
    }
    s.flush().map_err(|e| e.to_string())
}

fn connect(addr: SocketAddr, hello: &Hello) -> io::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_nodelay(true)?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(&encode_frame(FrameKind::Hello, &hello.encode()))?;
    Ok(s)
}
