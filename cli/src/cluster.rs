//! `keel server` (one node) and `keel cluster` (N local `keel server` processes).

use keel_harness::bench::workload::BoxError;
use keel_server::kv::Member;
use keel_server::server::{Server, ServerConfig};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// `keel server`'s flags.
#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// This node's id (a positive integer, unique in the cluster).
    #[arg(long)]
    pub id: u64,
    /// The cluster's id: nodes of another cluster are refused.
    #[arg(long, default_value_t = 1)]
    pub cluster_id: u64,
    /// The data directory (log, HardState, snapshots).
    #[arg(long)]
    pub data: PathBuf,
    /// Where to listen for peers (default: this node's peer address in --member).
    #[arg(long)]
    pub peer_addr: Option<SocketAddr>,
    /// Where to listen for Redis clients (default: this node's client address in --member).
    #[arg(long)]
    pub client_addr: Option<SocketAddr>,
    /// An initial member, as ID=PEER_ADDR/CLIENT_ADDR; repeat for each (this node included).
    #[arg(long = "member", value_parser = parse_member)]
    pub members: Vec<(u64, Member)>,
    /// Join a running cluster as a new member (added with KEEL.ADD) instead of bootstrapping;
    /// --member then lists the cluster's initial members, and --peer the members added since.
    #[arg(long)]
    pub join: bool,
    /// A peer that is not an initial member, as ID=PEER_ADDR/CLIENT_ADDR (KEEL.MEMBERS lists
    /// them); repeat for each.
    #[arg(long = "peer", value_parser = parse_member)]
    pub peers: Vec<(u64, Member)>,
    /// Entries applied between snapshots of the store (the log is compacted below each); 0:
    /// never.
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_entries: u64,
    /// Entries kept below a snapshot for followers slightly behind.
    #[arg(long, default_value_t = 5_000)]
    pub catch_up_entries: u64,
    /// Raft tick, in milliseconds (elections after 10 ticks, heartbeats every tick).
    #[arg(long, default_value_t = 100)]
    pub tick_ms: u64,
    /// Size of each log segment file, in MiB (preallocated; compaction frees whole segments).
    #[arg(long, default_value_t = 64)]
    pub segment_mib: u64,
    /// Space held aside for writing a snapshot when the disk is full, in MiB: size it to the
    /// store's snapshots (0: none; a full disk then needs the operator to free space).
    #[arg(long, default_value_t = 64)]
    pub reserve_mib: u64,
    /// Client connections at once.
    #[arg(long, default_value_t = 10_000)]
    pub max_clients: usize,
    /// Bytes of one client request.
    #[arg(long, default_value_t = 8 << 20)]
    pub max_request_bytes: usize,
    /// Stop (cleanly) once the parent process is no longer PID (the starter's own id, so that
    /// a starter gone before this process looked is noticed too): for servers started by a test
    /// or by `keel cluster`, so none outlives its starter, however that ends.
    #[arg(long, hide = true, value_name = "PID")]
    pub exit_with_parent: Option<i32>,
    /// Accept KEEL.FAULT BLOCK/HEAL (drop messages to and from chosen peers): for
    /// fault-injection tests only.
    #[arg(long)]
    pub enable_fault_injection: bool,
    /// Bytes of writes waiting to be applied on this node before new ones are refused.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_uncommitted_bytes: u64,
}

fn parse_member(s: &str) -> Result<(u64, Member), String> {
    let bad = || format!("{s:?}: expected ID=PEER_ADDR/CLIENT_ADDR, e.g. 1=127.0.0.1:7001/127.0.0.1:6381");
    let (id, addrs) = s.split_once('=').ok_or_else(bad)?;
    let (peer, client) = addrs.split_once('/').ok_or_else(bad)?;
    let id: u64 = id.trim().parse().map_err(|_| bad())?;
    if id == 0 || peer.is_empty() || client.is_empty() {
        return Err(bad());
    }
    Ok((id, Member { peer_addr: peer.into(), client_addr: client.into() }))
}

/// Sets a flag on SIGINT, SIGTERM or SIGHUP.
fn stop_flag() -> Result<Arc<AtomicBool>, BoxError> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    ctrlc::set_handler(move || f.store(true, Ordering::SeqCst))?;
    Ok(flag)
}

fn init_logging() {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).try_init();
}

pub fn server(args: ServerArgs) -> Result<(), BoxError> {
    init_logging();
    let members: BTreeMap<u64, Member> = args.members.into_iter().collect();
    let own = members.get(&args.id);
    let addr = |given: Option<SocketAddr>, from_member: Option<&String>, what: &str| -> Result<SocketAddr, BoxError> {
        if let Some(a) = given {
            return Ok(a);
        }
        let text = from_member.ok_or_else(|| format!("--{what} is needed (node {} is not in --member)", args.id))?;
        Ok(text.parse().map_err(|e| format!("{what} {text:?}: {e}"))?)
    };
    let peer_listen = addr(args.peer_addr, own.map(|m| &m.peer_addr), "peer-addr")?;
    let client_listen = addr(args.client_addr, own.map(|m| &m.client_addr), "client-addr")?;
    let mut config = ServerConfig::new(args.id, args.cluster_id, args.data, peer_listen, client_listen, members);
    config.join = args.join;
    config.extra_peers = args.peers.into_iter().collect();
    config.fault_injection = args.enable_fault_injection;
    config.snapshot_entries = args.snapshot_entries;
    config.catch_up_entries = args.catch_up_entries;
    config.segment_bytes = args.segment_mib << 20;
    config.reserve_bytes = args.reserve_mib << 20;
    config.tick = Duration::from_millis(args.tick_ms.max(1));
    config.limits.max_clients = args.max_clients;
    config.limits.max_request_bytes = args.max_request_bytes;
    config.limits.max_uncommitted_bytes = args.max_uncommitted_bytes;
    let stop = stop_flag()?;
    if let Some(parent) = args.exit_with_parent {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while rustix::process::getppid().map(|p| p.as_raw_nonzero().get()) == Some(parent) {
                std::thread::sleep(Duration::from_millis(200));
            }
            stop.store(true, Ordering::SeqCst);
        });
    }
    let server = Server::start(config)?;
    while !stop.load(Ordering::SeqCst) && !server.is_stopped() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let failure = server.failure();
    server.stop()?;
    match failure {
        Some(why) => Err(why.into()),
        None => Ok(()),
    }
}

/// `keel cluster`'s flags.
#[derive(clap::Args, Debug)]
pub struct ClusterArgs {
    /// Nodes to start.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Directory for the nodes' data (node N in DIR/nodeN); default: ./keel-cluster.
    #[arg(long, default_value = "keel-cluster")]
    pub dir: PathBuf,
    /// Client port of node 1; node N listens on PORT+N-1.
    #[arg(long, default_value_t = 6381)]
    pub client_port: u16,
    /// Peer port of node 1; node N listens on PORT+N-1.
    #[arg(long, default_value_t = 7381)]
    pub peer_port: u16,
    /// The cluster's id.
    #[arg(long, default_value_t = 1)]
    pub cluster_id: u64,
    /// Entries applied between snapshots.
    #[arg(long, default_value_t = 10_000)]
    pub snapshot_entries: u64,
}

/// The local cluster's processes; dropping it stops them (SIGTERM, then SIGKILL after 10 s).
pub struct LocalCluster {
    pub children: Vec<(u64, Child)>,
    pub client_addrs: Vec<SocketAddr>,
}

impl LocalCluster {
    /// Starts `args.nodes` `keel server` processes of this executable, logging at `log_level`
    /// unless `RUST_LOG` says otherwise.
    pub fn start(args: &ClusterArgs, log_level: &str) -> Result<LocalCluster, BoxError> {
        let exe = std::env::current_exe()?;
        let member = |n: u64| {
            format!("{n}=127.0.0.1:{}/127.0.0.1:{}", args.peer_port as u64 + n - 1, args.client_port as u64 + n - 1)
        };
        let mut cluster = LocalCluster { children: Vec::new(), client_addrs: Vec::new() };
        for n in 1..=args.nodes {
            let mut cmd = Command::new(&exe);
            if std::env::var_os("RUST_LOG").is_none() {
                cmd.env("RUST_LOG", log_level);
            }
            cmd.arg("server")
                .arg("--exit-with-parent")
                .arg(std::process::id().to_string())
                .arg("--id")
                .arg(n.to_string())
                .arg("--cluster-id")
                .arg(args.cluster_id.to_string())
                .arg("--data")
                .arg(args.dir.join(format!("node{n}")))
                .arg("--snapshot-entries")
                .arg(args.snapshot_entries.to_string());
            for m in 1..=args.nodes {
                cmd.arg("--member").arg(member(m));
            }
            cluster.children.push((n, cmd.spawn()?));
            cluster.client_addrs.push(format!("127.0.0.1:{}", args.client_port as u64 + n - 1).parse()?);
        }
        Ok(cluster)
    }

    /// A node that exited, with its status.
    pub fn exited(&mut self) -> Option<(u64, std::process::ExitStatus)> {
        self.children.iter_mut().find_map(|(n, c)| c.try_wait().ok().flatten().map(|s| (*n, s)))
    }

    /// Asks every node to stop (SIGTERM) and waits; a node still running after 10 s is killed.
    pub fn stop(&mut self) {
        for (_, c) in &self.children {
            if let Some(pid) = rustix::process::Pid::from_raw(c.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (n, c) in &mut self.children {
            loop {
                match c.try_wait() {
                    Ok(Some(status)) => {
                        if !status.success() {
                            eprintln!("keel cluster: node {n} exited with {status}");
                        }
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                    _ => {
                        eprintln!("keel cluster: node {n} did not stop in 10 s; killing it");
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
        self.children.clear();
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn cluster(args: ClusterArgs) -> Result<(), BoxError> {
    if args.nodes == 0 {
        return Err("--nodes must be at least 1".into());
    }
    let stop = stop_flag()?;
    std::fs::create_dir_all(&args.dir)?;
    let mut cluster = LocalCluster::start(&args, "info")?;
    println!("keel cluster: {} nodes, data in {}", args.nodes, args.dir.display());
    for (n, addr) in cluster.client_addrs.iter().enumerate() {
        println!("  node {}: redis-cli -p {}", n + 1, addr.port());
    }
    println!("Any node takes reads and writes (followers forward to the leader inside Raft);");
    println!("`redis-cli -p {} INFO replication` shows who leads. Ctrl-C stops them all.", args.client_port);
    loop {
        if stop.load(Ordering::SeqCst) {
            println!("keel cluster: stopping");
            cluster.stop();
            return Ok(());
        }
        if let Some((n, status)) = cluster.exited() {
            cluster.stop();
            return Err(format!("node {n} exited ({status}); stopped the others").into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
