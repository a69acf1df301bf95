//! `keel bench --cluster`: a local 3-node `keel server` cluster driven over the Redis protocol
//! with 1, 16 and 64 clients doing 256-byte SETs, then linearizable GETs, in rounds alternating
//! with the single log's synced appends (W1, the same 256-byte entry) and the raw
//! pwrite+fdatasync loop, so the ratios compare figures taken side by side. redis-benchmark
//! runs too where it is installed.

use crate::cluster::{ClusterArgs, LocalCluster};
use keel_harness::bench::workload::{BoxError, Keel, Scale, Workload, incompressible, micros, run_appends};
use keel_harness::bench::{self, RawSpace, SyncedAppends};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A blocking Redis client for the benchmark: one request, one reply.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(addr: SocketAddr) -> Result<Client, BoxError> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Client { reader: BufReader::new(s.try_clone()?), writer: s })
    }

    /// Sends a command and returns the reply's first line (and reads a bulk reply's body).
    fn call(&mut self, args: &[&[u8]]) -> Result<Vec<u8>, BoxError> {
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a);
            req.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&req)?;
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line)?;
        match line.first() {
            Some(b'-') => Err(String::from_utf8_lossy(&line).trim_end().to_string().into()),
            Some(b'$') => {
                let n: i64 = std::str::from_utf8(&line[1..])?.trim_end().parse()?;
                if n >= 0 {
                    let mut body = vec![0u8; n as usize + 2];
                    self.reader.read_exact(&mut body)?;
                    body.truncate(n as usize);
                    return Ok(body);
                }
                Ok(line)
            }
            Some(_) => Ok(line),
            None => Err("the server closed the connection".into()),
        }
    }

    fn info(&mut self) -> Result<Vec<(String, String)>, BoxError> {
        let text = String::from_utf8(self.call(&[b"INFO", b"everything"])?)?;
        Ok(text.lines().filter_map(|l| l.split_once(':')).map(|(k, v)| (k.into(), v.into())).collect())
    }

    fn field(&mut self, name: &str) -> Result<String, BoxError> {
        self.info()?.into_iter().find(|(k, _)| k == name).map(|(_, v)| v).ok_or_else(|| format!("no {name}").into())
    }
}

/// `clients` threads doing `op` against `addr` for `seconds`; returns the samples.
fn drive(
    addr: SocketAddr,
    clients: usize,
    seconds: f64,
    op: impl Fn(&mut Client, u64) -> Result<(), BoxError> + Send + Sync + 'static,
) -> Result<bench::Samples, BoxError> {
    let op = Arc::new(op);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (op, stop) = (op.clone(), stop.clone());
            std::thread::spawn(move || -> Result<Vec<Duration>, String> {
                let mut client = Client::connect(addr).map_err(|e| e.to_string())?;
                let mut lat = Vec::new();
                let mut k = (c as u64) << 32;
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    op(&mut client, k).map_err(|e| e.to_string())?;
                    lat.push(t.elapsed());
                    k += 1;
                }
                Ok(lat)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    let mut samples = bench::Samples::default();
    for t in threads {
        samples.latencies.extend(t.join().map_err(|_| "a client thread panicked")??);
    }
    samples.elapsed = start.elapsed();
    Ok(samples)
}

fn free_port() -> Result<u16, BoxError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Two consecutive free ports' worth of base ports for `n` nodes.
fn free_base(n: u16) -> Result<u16, BoxError> {
    for _ in 0..50 {
        let base = free_port()?;
        if base < u16::MAX - n && (0..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok()) {
            return Ok(base);
        }
    }
    Err("no free ports".into())
}

pub fn bench_cluster(dir: &Path, rounds: usize, seconds: f64, appends: usize) -> Result<(), BoxError> {
    const CLIENTS: [usize; 3] = [1, 16, 64];
    let value = incompressible(256, 0xC1);
    let data = dir.join("cluster");
    let _ = std::fs::remove_dir_all(&data);
    let args = ClusterArgs {
        nodes: 3,
        dir: data.clone(),
        client_port: free_base(3)?,
        peer_port: free_base(3)?,
        cluster_id: 1,
        snapshot_entries: 100_000,
    };
    println!(
        "keel bench --cluster: 3 local keel server processes (data in {}), {rounds} rounds of {seconds} s per client \
         count, alternating with W1 ({appends} synced 256 B appends) and the raw loop",
        data.display()
    );
    let mut cluster = LocalCluster::start(&args, "warn")?;
    // The leader, once elected; clients connect to it (a follower forwards inside Raft, one more hop).
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        let mut found = None;
        for addr in &cluster.client_addrs {
            if let Ok(mut c) = Client::connect(*addr)
                && c.field("role").is_ok_and(|r| r == "leader")
            {
                found = Some(*addr);
            }
        }
        if let Some(a) = found {
            break a;
        }
        if let Some((n, status)) = cluster.exited() {
            return Err(format!("node {n} exited: {status}").into());
        }
        if Instant::now() > deadline {
            return Err("no leader in 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let follower = *cluster.client_addrs.iter().find(|a| **a != leader).expect("3 nodes");
    let shape = SyncedAppends { entry_bytes: 256, entries_per_append: 1, appends };
    let scale = Scale { appends, dataset_bytes: 1 << 20, reads: 1 };
    let mut w1 = Vec::new();
    let mut raw = Vec::new();
    let mut writes: Vec<Vec<bench::Samples>> = CLIENTS.iter().map(|_| Vec::new()).collect();
    let mut via_follower = Vec::new();
    let mut gets = Vec::new();
    let mut fsyncs_per_write = Vec::new();
    for round in 0..rounds {
        raw.push(bench::raw_fdatasync_loop(dir, &shape, RawSpace::Overwrite, || {})?.rate());
        w1.push(run_appends::<Keel>(Workload::W1, dir, scale, &mut || {})?.samples.rate());
        for (i, &clients) in CLIENTS.iter().enumerate() {
            let mut probe = Client::connect(leader)?;
            let syncs_before: u64 = probe.field("fsyncs")?.parse()?;
            let v = value.clone();
            let s = drive(leader, clients, seconds, move |c, k| {
                c.call(&[b"SET", format!("key:{round}:{k}").as_bytes(), &v]).map(drop)
            })?;
            let syncs_after: u64 = probe.field("fsyncs")?.parse()?;
            if clients == 64 {
                fsyncs_per_write.push((syncs_after - syncs_before) as f64 / s.latencies.len().max(1) as f64);
            }
            writes[i].push(s);
        }
        let v = value.clone();
        via_follower.push(drive(follower, 64, seconds, move |c, k| {
            c.call(&[b"SET", format!("fkey:{round}:{k}").as_bytes(), &v]).map(drop)
        })?);
        gets.push(drive(leader, 64, seconds, move |c, k| {
            c.call(&[b"GET", format!("key:{round}:{}", k & 0xff).as_bytes()]).map(drop)
        })?);
    }
    let (w1_rate, w1_lo, w1_hi) = bench::median_spread(&w1);
    let (raw_rate, raw_lo, raw_hi) = bench::median_spread(&raw);
    println!(
        "single log W1 (1x256 B, fdatasync each): {w1_rate:.0} appends/s (range {w1_lo:.0}-{w1_hi:.0}); raw \
         pwrite+fdatasync overwrite loop {raw_rate:.0}/s (range {raw_lo:.0}-{raw_hi:.0})"
    );
    let report = |name: String, runs: &[bench::Samples]| {
        let rates: Vec<f64> = runs.iter().map(bench::Samples::rate).collect();
        let (r, lo, hi) = bench::median_spread(&rates);
        let ratios: Vec<f64> = runs.iter().zip(&w1).map(|(s, w)| s.rate() / w).collect();
        let (ratio, rlo, rhi) = bench::median_spread(&ratios);
        let all = bench::Samples {
            latencies: runs.iter().flat_map(|s| s.latencies.clone()).collect(),
            ..bench::Samples::default()
        };
        println!(
            "{name}: {r:.0}/s (range {lo:.0}-{hi:.0}), p50 {:.0} us, p99 {:.0} us; {ratio:.2}x W1 (range {rlo:.2}-{rhi:.2})",
            micros(all.quantile(0.5)),
            micros(all.quantile(0.99)),
        );
    };
    for (i, &clients) in CLIENTS.iter().enumerate() {
        report(format!("SET 256 B, {clients:>2} clients at the leader"), &writes[i]);
    }
    report("SET 256 B, 64 clients at a follower".into(), &via_follower);
    report("GET (linearizable, ReadIndex), 64 clients at the leader".into(), &gets);
    let (f, flo, fhi) = bench::median_spread(&fsyncs_per_write);
    println!("leader fdatasyncs per write at 64 clients: {f:.3} (range {flo:.3}-{fhi:.3})");
    let mut probe = Client::connect(leader)?;
    let info = probe.info()?;
    let get = |k: &str| info.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).unwrap_or_default();
    println!(
        "leader totals: {} entries in {} Readies (largest batch {}), {} fsyncs (mean {} us, max {} us)",
        get("entries_persisted"),
        get("readies"),
        get("batch_entries_max"),
        get("fsyncs"),
        get("fsync_mean_us"),
        get("fsync_max_us")
    );
    redis_benchmark(leader, seconds);
    cluster.stop();
    let _ = std::fs::remove_dir_all(&data);
    Ok(())
}

/// redis-benchmark's figures for the same shapes, where it is installed: requests sized to run
/// about `seconds` each at this machine's rates.
fn redis_benchmark(addr: SocketAddr, seconds: f64) {
    let available = std::process::Command::new("redis-benchmark").arg("--version").output().is_ok();
    if !available {
        println!("redis-benchmark: not installed (Debian: apt-get install redis-tools); skipped");
        return;
    }
    for (test, clients, per_s) in
        [("set", 1, 1_000.0), ("set", 16, 5_000.0), ("set", 64, 10_000.0), ("get", 64, 20_000.0)]
    {
        let n = ((per_s * seconds) as u64).max(100);
        let out = std::process::Command::new("redis-benchmark")
            .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string(), "-t", test, "-d", "256"])
            .args(["-c", &clients.to_string(), "-n", &n.to_string(), "-r", "100000", "--csv"])
            .output();
        match out {
            Ok(o) if o.status.success() => {
                let text = String::from_utf8_lossy(&o.stdout);
                // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms",...
                let row = text.lines().find(|l| !l.starts_with("\"test\"")).unwrap_or("");
                let f: Vec<&str> = row.split(',').map(|s| s.trim_matches('"')).collect();
                if f.len() >= 7 {
                    println!(
                        "redis-benchmark {} 256 B, {clients:>2} clients: {} requests/s, p50 {} ms, p99 {} ms",
                        test.to_uppercase(),
                        f[1],
                        f[4],
                        f[6]
                    );
                } else {
                    println!("redis-benchmark {test} -c {clients}: unexpected output {row:?}");
                }
            }
            Ok(o) => println!("redis-benchmark {test} -c {clients} failed: {}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => println!("redis-benchmark {test} -c {clients}: {e}"),
        }
    }
}
