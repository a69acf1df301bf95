//! `keel cluster` and `keel bench --cluster` as a user runs them, and redis-cli and
//! redis-benchmark (Debian package `redis-tools`; `.ci/run` installs it) against `keel server`.

mod common;

use common::{KEEL, TestCluster, free_port};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn installed(tool: &str) -> bool {
    Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
}

/// A base port with `n` free ports after it (none handed out before in this process).
fn free_base(n: u32) -> u16 {
    common::free_ports(n)
}

#[test]
fn keel_cluster_serves_and_stops_every_node_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_base(3), free_base(3));
    let mut parent = Command::new(KEEL)
        .args(["cluster", "--client-port", &client.to_string(), "--peer-port", &peer.to_string()])
        .arg("--dir")
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = format!("redis://127.0.0.1:{}/", client + 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut con = loop {
        if let Ok(mut c) =
            redis::Client::open(addr.as_str()).unwrap().get_connection_with_timeout(Duration::from_secs(1))
            && redis::cmd("SET").arg("k").arg("v").query::<String>(&mut c).is_ok()
        {
            break c;
        }
        assert!(Instant::now() < deadline, "keel cluster never took a write");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(redis::cmd("GET").arg("k").query::<String>(&mut con).unwrap(), "v");
    drop(con);
    Command::new("kill").args(["-TERM", &parent.id().to_string()]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = parent.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = parent.kill();
            panic!("keel cluster did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    // Every node stopped: nothing listens on their ports any more.
    for port in (client..client + 3).chain(peer..peer + 3) {
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "port {port} still open");
    }
}

#[test]
fn keel_bench_cluster_runs_at_a_tiny_scale() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(KEEL)
        .args(["bench", "--cluster", "--rounds", "1", "--seconds", "0.2", "--appends", "20"])
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for line in ["single log W1", "SET 256 B, 64 clients at the leader", "GET (linearizable", "fdatasyncs per write"] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
}

#[test]
fn redis_cli_and_redis_benchmark_drive_the_server() {
    if !installed("redis-cli") || !installed("redis-benchmark") {
        eprintln!(
            "SKIPPED: redis-cli or redis-benchmark is not installed (Debian: apt-get install redis-tools; .ci/run \
             installs it)"
        );
        return;
    }
    let c = TestCluster::start(3, &[]);
    c.leader(&[1, 2, 3]);
    let port = c.spec(2).client.port().to_string();
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli").args(["-p", &port]).args(args).output().unwrap();
        assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(cli(&["SET", "tool", "redis-cli"]), "OK");
    assert_eq!(cli(&["GET", "tool"]), "redis-cli");
    assert_eq!(cli(&["INCRBY", "n", "7"]), "7");
    assert!(cli(&["INFO", "replication"]).contains("leader_id:"));
    // Through a follower, as a user would point it at any node.
    let out = Command::new("redis-benchmark")
        .args(["-p", &port, "-t", "set,get", "-n", "2000", "-c", "8", "-d", "256", "--csv"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    for test in ["\"SET\"", "\"GET\""] {
        let row = text.lines().find(|l| l.starts_with(test)).unwrap_or_else(|| panic!("no {test} row: {text}"));
        let rps: f64 = row.split(',').nth(1).unwrap().trim_matches('"').parse().unwrap();
        assert!(rps > 0.0, "{row}");
    }
    // Every SET redis-benchmark made is there (it writes key:__rand_int__ = "key:000000000000").
    assert_eq!(cli(&["EXISTS", "key:__rand_int__"]), "1");
}

#[test]
fn a_server_started_with_exit_with_parent_stops_when_its_starter_is_gone() {
    // The test harnesses and `keel cluster` start servers this way, so none outlives its
    // starter (a test killed by a signal, a cluster SIGKILLed).
    let dir = tempfile::tempdir().unwrap();
    let (peer, client) = (free_port(), free_port());
    let script = format!(
        "{KEEL} server --exit-with-parent $$ --id 1 --data {} --member 1=127.0.0.1:{peer}/127.0.0.1:{client} \
         >/dev/null 2>&1 & echo $!",
        dir.path().join("n1").display()
    );
    let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
    let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    // The shell has exited; the server notices and stops on its own.
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
    {
        if Instant::now() > deadline {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("the server outlived its starter");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
