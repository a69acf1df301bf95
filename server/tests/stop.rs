//! `Server::stop` returns, and promptly, whatever clients are doing: one waiting on a write, one
//! that pipelines reads and never reads its replies, one idle. (The bound below is a hang
//! detector, not a speed claim.)

use keel_server::kv::Member;
use keel_server::server::{Server, ServerConfig};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn single_node(dir: &std::path::Path) -> Server {
    let any = "127.0.0.1:0".parse().unwrap();
    let members = BTreeMap::from([(1, Member { peer_addr: "127.0.0.1:1".into(), client_addr: "127.0.0.1:1".into() })]);
    let mut config = ServerConfig::new(1, 9, dir.to_path_buf(), any, any, members);
    config.tick = Duration::from_millis(10);
    Server::start(config).unwrap()
}

fn call(s: &mut TcpStream, req: &[u8]) -> Vec<u8> {
    s.write_all(req).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let n = s.read(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn stop_returns_with_clients_stuck_in_every_way() {
    let dir = tempfile::tempdir().unwrap();
    let server = single_node(dir.path());
    let addr = server.client_addr();
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    // A value of 1 MiB, once the single node leads.
    let value = vec![b'x'; 1 << 20];
    let mut set = format!("*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${}\r\n", value.len()).into_bytes();
    set.extend_from_slice(&value);
    set.extend_from_slice(b"\r\n");
    while call(&mut c, &set) != b"+OK\r\n" {
        assert!(Instant::now() < deadline, "no leader");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A client that pipelines GETs of it and never reads: its replies fill the socket.
    let mut greedy = TcpStream::connect(addr).unwrap();
    greedy.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let get = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n".repeat(256);
    for _ in 0..64 {
        if greedy.write_all(&get).is_err() {
            break;
        }
    }
    let _idle = TcpStream::connect(addr).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(server.stop()).unwrap());
    let result = rx.recv_timeout(Duration::from_secs(60)).expect("Server::stop hung");
    result.unwrap();
    // The data directory reopens with the write in it.
    let server = single_node(dir.path());
    let mut c = TcpStream::connect(server.client_addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = call(&mut c, b"*2\r\n$6\r\nEXISTS\r\n$3\r\nbig\r\n");
        if reply == b":1\r\n" {
            break;
        }
        assert!(Instant::now() < deadline, "the value is gone after a clean stop: {reply:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    server.stop().unwrap();
}
