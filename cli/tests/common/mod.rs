//! Real `keel server` processes on loopback ports, for the integration tests: start, kill
//! (SIGKILL), restart, and a Redis client (the `redis` crate) to each. Every wait is bounded;
//! every process is killed when the cluster is dropped.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const KEEL: &str = env!("CARGO_BIN_EXE_keel");

/// A free loopback port (bound, then released: the server binds it again right after).
///
/// Taken below the kernel's ephemeral range, never twice in one test process: a port from
/// that range (what binding port 0 gives) can be handed meanwhile to an outgoing connection
/// of another test's servers, and the server started on it then fails with "address in use".
pub fn free_port() -> u16 {
    free_ports(1)
}

/// The first of `n` consecutive free loopback ports, taken as [`free_port`] takes one.
pub fn free_ports(n: u32) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next().and_then(|n| n.parse::<u32>().ok()))
        .unwrap_or(32768);
    let (low, high) = (10_000u32, ephemeral_low.clamp(12_000, 65_535));
    let span = high - low;
    // Each test process starts somewhere else (cargo runs test binaries one after another,
    // but a port may linger in TIME_WAIT from the last).
    let _ = NEXT.compare_exchange(0, (std::process::id() * 7919) % span + 1, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..span {
        let first = low + NEXT.fetch_add(n, Ordering::SeqCst) % (span - n);
        if (first..first + n).all(|port| TcpListener::bind(("127.0.0.1", port as u16)).is_ok()) {
            return first as u16;
        }
    }
    panic!("no {n} free loopback ports in a row below {high}");
}

#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub id: u64,
    pub peer: SocketAddr,
    pub client: SocketAddr,
}

impl NodeSpec {
    pub fn new(id: u64) -> NodeSpec {
        NodeSpec {
            id,
            peer: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            client: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        }
    }
    pub fn member(&self) -> String {
        format!("{}={}/{}", self.id, self.peer, self.client)
    }
}

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub cluster_id: u64,
    pub specs: Vec<NodeSpec>,
    pub procs: Vec<Option<Child>>,
    pub extra_args: Vec<String>,
}

impl TestCluster {
    /// `n` nodes of cluster 7, started.
    pub fn start(n: u64, extra_args: &[&str]) -> TestCluster {
        let specs: Vec<NodeSpec> = (1..=n).map(NodeSpec::new).collect();
        let mut c = TestCluster {
            dir: tempfile::tempdir().unwrap(),
            cluster_id: 7,
            procs: specs.iter().map(|_| None).collect(),
            specs,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        for id in 1..=n {
            c.restart(id);
        }
        c
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}"))
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node{id}.log"))
    }

    /// The command that runs node `id` with the initial members (not started).
    pub fn command(&self, id: u64) -> Command {
        let mut cmd = Command::new(KEEL);
        cmd.arg("server")
            .arg("--exit-with-parent")
            .arg(std::process::id().to_string())
            .arg("--id")
            .arg(id.to_string())
            .arg("--cluster-id")
            .arg(self.cluster_id.to_string())
            .arg("--data")
            .arg(self.data_dir(id))
            .arg("--tick-ms")
            .arg("50");
        for s in &self.specs {
            cmd.arg("--member").arg(s.member());
        }
        cmd.args(&self.extra_args);
        cmd
    }

    /// Starts (or starts again) node `id`, its log appended to `node<id>.log`.
    pub fn restart(&mut self, id: u64) {
        let mut cmd = self.command(id);
        self.spawn(id, &mut cmd);
    }

    pub fn spawn(&mut self, id: u64, cmd: &mut Command) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(id)).unwrap();
        let child = cmd.env("RUST_LOG", "info").stdout(Stdio::null()).stderr(log).spawn().unwrap();
        let i = (id - 1) as usize;
        while self.procs.len() <= i {
            self.procs.push(None);
        }
        self.procs[i] = Some(child);
    }

    /// SIGKILLs node `id` and reaps it.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.procs[(id - 1) as usize].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn spec(&self, id: u64) -> &NodeSpec {
        &self.specs[(id - 1) as usize]
    }

    /// A connection to node `id`, retried until it answers PING (10 s).
    pub fn conn(&self, id: u64) -> redis::Connection {
        let addr = self.spec(id).client;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let attempt = redis::Client::open(format!("redis://{addr}/")).and_then(|c| {
                let mut con = c.get_connection_with_timeout(Duration::from_secs(2))?;
                con.set_read_timeout(Some(Duration::from_secs(15)))?;
                redis::cmd("PING").query::<String>(&mut con)?;
                Ok(con)
            });
            match attempt {
                Ok(con) => return con,
                Err(e) if Instant::now() > deadline => {
                    panic!("node {} at {addr} never answered: {e}", self.spec(id).id)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// The `INFO replication` fields of node `id`.
    pub fn info(&self, id: u64) -> std::collections::BTreeMap<String, String> {
        let text: String = redis::cmd("INFO").arg("everything").query(&mut self.conn(id)).unwrap();
        text.lines().filter_map(|l| l.split_once(':')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Waits (20 s) until one of `among` reports itself leader, and returns it.
    pub fn leader(&self, among: &[u64]) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for &id in among {
                if let Ok(text) = redis::cmd("INFO").arg("replication").query::<String>(&mut self.conn(id))
                    && text.contains("role:leader")
                {
                    return id;
                }
            }
            assert!(Instant::now() < deadline, "no leader among {among:?} in 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `f` until it gives `Ok` (retryable errors such as CLUSTERDOWN while a leader is
    /// elected), for up to 20 s.
    pub fn retry<T>(&self, what: &str, mut f: impl FnMut() -> redis::RedisResult<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match f() {
                Ok(v) => return v,
                Err(e) if Instant::now() > deadline => panic!("{what}: still failing after 20 s: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// The log of node `id` so far.
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // A failing test shows what the nodes logged.
        if std::thread::panicking() {
            for i in 0..self.procs.len() as u64 {
                let log = self.log(i + 1);
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("--- node {} (last 40 lines) ---", i + 1);
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        for c in self.procs.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
