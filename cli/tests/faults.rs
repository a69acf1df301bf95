//! Linearizable under faults: real `keel server` processes (3, then 5) on loopback, concurrent
//! clients through the `redis` crate recording a history, and a nemesis that SIGKILLs and
//! restarts nodes (the leader preferred), pauses them (SIGSTOP/SIGCONT), and partitions them
//! (majority/minority, an isolated leader, a bridge) through the transport's fault switch
//! (`--enable-fault-injection`, `KEEL.FAULT`); at the end every node is killed at once,
//! restarted, and read.
//!
//! Checks: register histories (GET, SET, KEEL.CAS on keys that each live a few seconds) are
//! linearizable (`keel_harness::linearizability`, Wing-Gong per key); the counter (INCR) ends
//! between the acknowledged increments and those plus the unknown ones; the set (APPEND of
//! unique elements) holds every acknowledged element, nothing never written, nothing twice.
//!
//! Bounded by default (`KEEL_FAULTS_SECS`, 20 s of nemesis activity per cluster size); set it to
//! 900 for a long run. `KEEL_FAULTS_SEED` picks the seed (default: from the clock, printed).

mod common;

use common::TestCluster;
use keel_harness::Rng;
use keel_harness::linearizability::{self, Input, Op, Output, Verdict};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a request ended, from the client's side.
enum Outcome {
    Ok(redis::Value),
    /// The server said it was not applied (or it is a read: no effect either way).
    Failed,
    /// Timeout, lost connection, or "may or may not be applied".
    Unknown,
}

fn classify(r: redis::RedisResult<redis::Value>) -> Outcome {
    match r {
        Ok(v) => Outcome::Ok(v),
        Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => Outcome::Unknown,
        Err(e) => {
            let text = e.to_string();
            let definite = text.contains("CLUSTERDOWN")
                || text.contains("was not applied")
                || text.contains("bytes of writes are waiting")
                || text.contains("leadership is being transferred")
                || text.contains("removed from the cluster")
                || text.contains("is stopping; the request was not applied");
            if definite && !text.contains("may or may not") { Outcome::Failed } else { Outcome::Unknown }
        }
    }
}

fn value_string(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

#[derive(Default)]
struct History {
    registers: Vec<Op>,
    incr_ok: u64,
    incr_unknown: u64,
    set_ok: HashSet<String>,
    set_unknown: HashSet<String>,
    counts: BTreeMap<&'static str, u64>,
}

struct Run {
    start: Instant,
    history: Mutex<History>,
    next_process: AtomicU64,
    stop: AtomicBool,
}

impl Run {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
    fn count(&self, what: &'static str) {
        *self.history.lock().unwrap().counts.entry(what).or_default() += 1;
    }
}

fn connect(addr: std::net::SocketAddr) -> Option<redis::Connection> {
    let client = redis::Client::open(format!("redis://{addr}/")).ok()?;
    let con = client.get_connection_with_timeout(Duration::from_millis(500)).ok()?;
    con.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    con.set_write_timeout(Some(Duration::from_secs(3))).ok()?;
    Some(con)
}

/// One client: random operations against random nodes until the run stops. A connection that
/// fails or an operation with an unknown outcome ends the process (a new id follows), as in
/// Jepsen: a process never has two operations open.
fn client(run: &Run, addrs: &[std::net::SocketAddr], seed: u64) {
    let mut rng = Rng::new(seed);
    let mut con: Option<(u64, redis::Connection)> = None;
    let mut element = 0u64;
    while !run.stop.load(Ordering::SeqCst) {
        let (process, c) = match con.as_mut() {
            Some((p, c)) => (*p, c),
            None => {
                let addr = addrs[rng.below(addrs.len() as u64) as usize];
                match connect(addr) {
                    Some(c) => {
                        con = Some((run.next_process.fetch_add(1, Ordering::SeqCst), c));
                        continue;
                    }
                    None => {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                }
            }
        };
        // Registers live 5 s each (bounded histories for the checker), 3 at a time.
        let epoch = run.start.elapsed().as_secs() / 5;
        let key = format!("reg:{epoch}:{}", rng.below(3));
        let value = rng.below(5).to_string();
        let kind = rng.below(10);
        let call = run.now();
        let (input, cmd) = match kind {
            0..=3 => (Some(Input::Read), redis::cmd("GET").arg(&key).clone()),
            4 | 5 => (Some(Input::Write(value.clone())), redis::cmd("SET").arg(&key).arg(&value).clone()),
            6 | 7 => {
                let from = rng.below(5).to_string();
                (
                    Some(Input::Cas(from.clone(), value.clone())),
                    redis::cmd("KEEL.CAS").arg(&key).arg(&from).arg(&value).clone(),
                )
            }
            8 => (None, redis::cmd("INCR").arg("counter").clone()),
            _ => {
                element += 1;
                (None, redis::cmd("APPEND").arg("set").arg(format!("{seed}-{element},")).clone())
            }
        };
        let outcome = classify(cmd.query::<redis::Value>(c));
        let ret = run.now();
        let unknown = matches!(outcome, Outcome::Unknown);
        {
            let mut h = run.history.lock().unwrap();
            match (kind, &input, outcome) {
                (_, Some(input), Outcome::Ok(v)) => {
                    let output = match input {
                        Input::Read => Output::Read(value_string(&v)),
                        Input::Write(_) => Output::Written,
                        Input::Cas(..) => Output::Cas(matches!(v, redis::Value::Int(1))),
                    };
                    h.registers.push(Op { process, key, call, ret: Some(ret), input: input.clone(), output });
                }
                (_, Some(Input::Read), _) => {} // a read that failed observed nothing
                (_, Some(input), Outcome::Unknown) => {
                    h.registers.push(Op {
                        process,
                        key,
                        call,
                        ret: None,
                        input: input.clone(),
                        output: Output::Unknown,
                    });
                }
                (_, Some(_), Outcome::Failed) => {}
                (8, None, Outcome::Ok(_)) => h.incr_ok += 1,
                (8, None, Outcome::Unknown) => h.incr_unknown += 1,
                (_, None, Outcome::Ok(_)) => {
                    h.set_ok.insert(format!("{seed}-{element}"));
                }
                (_, None, Outcome::Unknown) => {
                    h.set_unknown.insert(format!("{seed}-{element}"));
                }
                (_, None, Outcome::Failed) => {}
            }
        }
        if unknown {
            con = None; // this process is done; the next operation is a new one
        }
    }
}

fn fault(c: &TestCluster, id: u64, blocked: &[u64]) {
    let Some(mut con) = connect(c.spec(id).client) else { return };
    let mut cmd = redis::cmd("KEEL.FAULT");
    if blocked.is_empty() {
        cmd.arg("HEAL");
    } else {
        cmd.arg("BLOCK");
        for b in blocked {
            cmd.arg(*b);
        }
    }
    let _ = cmd.query::<String>(&mut con);
}

/// Cuts the nodes into `groups`: each node drops messages from every node outside its group.
fn partition(c: &TestCluster, groups: &[Vec<u64>]) {
    for g in groups {
        let others: Vec<u64> = groups.iter().filter(|o| *o != g).flatten().copied().collect();
        for &id in g {
            fault(c, id, &others);
        }
    }
}

fn heal(c: &TestCluster, n: u64) {
    for id in 1..=n {
        fault(c, id, &[]);
    }
}

fn signal(c: &TestCluster, id: u64, sig: &str) {
    if let Some(p) = &c.procs[(id - 1) as usize] {
        let _ = std::process::Command::new("kill").args([sig, &p.id().to_string()]).status();
    }
}

fn leader(c: &TestCluster, n: u64) -> Option<u64> {
    (1..=n).find(|&id| {
        connect(c.spec(id).client)
            .and_then(|mut con| redis::cmd("INFO").arg("replication").query::<String>(&mut con).ok())
            .is_some_and(|t| t.contains("role:leader"))
    })
}

/// Faults until `until`, one at a time, each healed before the next.
fn nemesis(c: &mut TestCluster, n: u64, rng: &mut Rng, until: Instant, run: &Run) {
    let pause = |rng: &mut Rng, lo: u64, hi: u64| std::thread::sleep(Duration::from_millis(lo + rng.below(hi - lo)));
    while Instant::now() < until {
        pause(rng, 500, 1500);
        let target = if rng.chance(70) { leader(c, n).unwrap_or(1 + rng.below(n)) } else { 1 + rng.below(n) };
        match rng.below(5) {
            0 => {
                run.count("fault: kill and restart");
                c.kill(target);
                pause(rng, 300, 2000);
                c.restart(target);
            }
            1 => {
                run.count("fault: pause (SIGSTOP)");
                signal(c, target, "-STOP");
                pause(rng, 300, 3000);
                signal(c, target, "-CONT");
            }
            2 => {
                run.count("fault: majority/minority partition");
                let mut ids: Vec<u64> = (1..=n).collect();
                for i in (1..ids.len()).rev() {
                    ids.swap(i, rng.below(i as u64 + 1) as usize);
                }
                let minority = ids.split_off((n as usize).div_ceil(2));
                partition(c, &[ids, minority]);
                pause(rng, 1000, 4000);
                heal(c, n);
            }
            3 => {
                run.count("fault: isolated leader");
                let rest: Vec<u64> = (1..=n).filter(|&i| i != target).collect();
                partition(c, &[vec![target], rest]);
                pause(rng, 1000, 4000);
                heal(c, n);
            }
            _ => {
                // A bridge: two halves that only `target` connects.
                run.count("fault: bridge");
                let others: Vec<u64> = (1..=n).filter(|&i| i != target).collect();
                let (a, b) = others.split_at(others.len() / 2);
                for &id in a {
                    fault(c, id, b);
                }
                for &id in b {
                    fault(c, id, a);
                }
                pause(rng, 1000, 4000);
                heal(c, n);
            }
        }
    }
}

/// Reads `key` from any node once the cluster serves linearizable reads again (60 s).
fn final_read(c: &TestCluster, n: u64, key: &str) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for id in 1..=n {
            if let Some(mut con) = connect(c.spec(id).client)
                && let Ok(v) = redis::cmd("GET").arg(key).query::<Option<String>>(&mut con)
            {
                return v;
            }
        }
        assert!(Instant::now() < deadline, "no node answered a final read of {key} in 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn run_cluster(n: u64, secs: u64, seed: u64) {
    eprintln!("faults: {n} nodes, {secs} s of faults, seed {seed}");
    let mut c = TestCluster::start(n, &["--enable-fault-injection", "--snapshot-entries", "2000"]);
    let addrs: Vec<std::net::SocketAddr> = c.specs.iter().map(|s| s.client).collect();
    let run = Arc::new(Run {
        start: Instant::now(),
        history: Mutex::new(History::default()),
        next_process: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    c.leader(&(1..=n).collect::<Vec<_>>());
    let clients: Vec<_> = (0..8u64)
        .map(|k| {
            let (run, addrs) = (run.clone(), addrs.clone());
            std::thread::spawn(move || client(&run, &addrs, seed.wrapping_mul(31).wrapping_add(k)))
        })
        .collect();
    let mut rng = Rng::new(seed);
    nemesis(&mut c, n, &mut rng, Instant::now() + Duration::from_secs(secs), &run);
    heal(&c, n);
    // Let the clients run a moment on a healed cluster, then stop them.
    std::thread::sleep(Duration::from_secs(2));
    run.stop.store(true, Ordering::SeqCst);
    for t in clients {
        t.join().unwrap();
    }
    // Every node killed at once, then restarted: what was acknowledged must still be there.
    run.count("fault: kill all, restart all");
    for id in 1..=n {
        c.kill(id);
    }
    for id in 1..=n {
        c.restart(id);
    }
    let mut h = std::mem::take(&mut *run.history.lock().unwrap());
    let keys: HashSet<String> = h.registers.iter().map(|o| o.key.clone()).collect();
    for key in keys {
        let call = run.now();
        let v = final_read(&c, n, &key);
        h.registers.push(Op {
            process: u64::MAX,
            key,
            call,
            ret: Some(run.now()),
            input: Input::Read,
            output: Output::Read(v),
        });
    }
    let counter: i64 = final_read(&c, n, "counter").map_or(0, |v| v.parse().unwrap());
    let set = final_read(&c, n, "set").unwrap_or_default();
    // Checks.
    let acked = h.registers.iter().filter(|o| o.ret.is_some()).count();
    let unknown = h.registers.len() - acked;
    eprintln!(
        "faults: {n} nodes: {} register ops ({acked} completed, {unknown} unknown) on {} keys; {} INCR acknowledged, \
         {} unknown; {} elements appended, {} unknown; {:?}",
        h.registers.len(),
        h.registers.iter().map(|o| &o.key).collect::<HashSet<_>>().len(),
        h.incr_ok,
        h.incr_unknown,
        h.set_ok.len(),
        h.set_unknown.len(),
        h.counts
    );
    let verdicts = linearizability::check_registers(&h.registers, 20_000_000);
    let mut gave_up = 0;
    for (key, verdict) in &verdicts {
        match verdict {
            Verdict::Linearizable => {}
            Verdict::GaveUp(steps) => {
                gave_up += 1;
                eprintln!("faults: {key}: the checker gave up after {steps} steps");
            }
            Verdict::Violation => {
                let ops: Vec<Op> = h.registers.iter().filter(|o| &o.key == key).cloned().collect();
                let small = linearizability::minimize(&ops, 2_000_000, 5_000);
                panic!(
                    "{key} is not linearizable ({} operations); a smallest failing sub-history ({} operations):\n{}",
                    ops.len(),
                    small.len(),
                    linearizability::render(&small)
                );
            }
        }
    }
    eprintln!("faults: {} keys linearizable, {gave_up} not decided", verdicts.len() - gave_up);
    linearizability::check_counter(counter, h.incr_ok, h.incr_unknown).unwrap();
    linearizability::check_set(&set, &h.set_ok, &h.set_unknown).unwrap();
    assert!(acked > 100, "too few operations completed to mean anything: {acked}");
}

fn seconds() -> u64 {
    std::env::var("KEEL_FAULTS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20)
}

fn seed() -> u64 {
    std::env::var("KEEL_FAULTS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    })
}

#[test]
fn three_nodes_stay_linearizable_under_kills_pauses_and_partitions() {
    run_cluster(3, seconds(), seed());
}

#[test]
fn five_nodes_stay_linearizable_under_kills_pauses_and_partitions() {
    run_cluster(5, seconds(), seed() ^ 0x5555);
}
