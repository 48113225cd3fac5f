//! What the RESP tests share: a Manifold RESP server in this process (an engine on a temporary
//! directory, `manifold_resp::serve` on a free loopback port), a reference `redis-server` in a
//! child process, and a raw client that sends commands and reads back each reply's exact bytes.
#![allow(dead_code)] // each test file uses part of this

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use manifold_core::engine::{AccessConfig, Engine, EngineConfig};
use manifold_core::store::RealFs;

/// A Manifold RESP server running in this process until dropped.
pub struct Manifold {
    pub addr: SocketAddr,
    /// The engine behind it, for what no Redis command reaches (MQTT sessions, retained).
    pub engine: Arc<Engine>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Manifold {
    /// A server with everyone allowed everything.
    pub fn start() -> Manifold {
        Self::start_with(AccessConfig::default())
    }

    /// A server with these principals.
    pub fn start_with(access: AccessConfig) -> Manifold {
        Self::start_with_config(EngineConfig {
            access,
            ..EngineConfig::default()
        })
    }

    /// A server on an engine with these settings.
    pub fn start_with_config(config: EngineConfig) -> Manifold {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Arc::new(Engine::open(Arc::new(RealFs), dir.path(), config).expect("open"));
        let served = engine.clone();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                tx.send(listener.local_addr().expect("addr")).expect("send");
                let config = manifold_resp::RespConfig::for_engine(16 << 20);
                manifold_resp::serve(listener, served, config, stopped)
                    .await
                    .expect("serve");
            });
        });
        let addr = rx.recv().expect("server address");
        Manifold {
            addr,
            engine,
            stop: Some(stop),
            thread: Some(thread),
            _dir: dir,
        }
    }
}

impl Drop for Manifold {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Debian's `redis-server` on a free port, killed when dropped.
pub struct Redis {
    pub addr: SocketAddr,
    child: Child,
}

impl Redis {
    /// Starts the reference server. It must be installed (`.ci/run` installs it): a missing
    /// reference fails the test rather than skipping it.
    pub fn start() -> Redis {
        Self::start_with(&[])
    }

    /// The reference server with these settings too (`--name value` pairs).
    pub fn start_with(settings: &[&str]) -> Redis {
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ])
            .args(settings)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { addr, child }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A proptest runner for a test against both servers: `PROPTEST_CASES` cases (default
/// `cases`), failures kept next to `source_file` (`file!()`) and replayed first.
pub fn runner(cases: u32, source_file: &'static str) -> proptest::test_runner::TestRunner {
    use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    TestRunner::new(Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::SourceParallel(
            "proptest-regressions",
        ))),
        source_file: Some(source_file),
        ..Config::default()
    })
}

/// A loopback port free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A client that sends commands as RESP arrays and reads each reply's bytes whole.
pub struct Raw {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Raw {
            reader: BufReader::new(s.try_clone().expect("clone")),
            writer: s,
        }
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write");
    }

    /// Sends `args` as a RESP array.
    pub fn send(&mut self, args: &[&[u8]]) {
        self.send_raw(&encode(args));
    }

    /// Sends `args` and reads the reply.
    pub fn call(&mut self, args: &[&[u8]]) -> Vec<u8> {
        self.send(args);
        self.reply()
    }

    /// `call` with string arguments.
    pub fn cmd(&mut self, args: &[&str]) -> Vec<u8> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.call(&args)
    }

    /// Reads one complete reply, returning its bytes.
    pub fn reply(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        read_reply(&mut self.reader, &mut out);
        out
    }

    /// Whether the server closed the connection (a read returns 0 bytes).
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.reader.read(&mut b), Ok(0))
    }
}

/// `args` as a RESP array of bulk strings.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        v.extend_from_slice(a);
        v.extend_from_slice(b"\r\n");
    }
    v
}

fn read_line(r: &mut impl BufRead, out: &mut Vec<u8>) -> Vec<u8> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line).expect("read reply line");
    assert!(line.ends_with(b"\r\n"), "truncated reply line {line:?}");
    out.extend_from_slice(&line);
    line[..line.len() - 2].to_vec()
}

fn number(b: &[u8]) -> i64 {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad length {b:?}"))
}

/// Reads one RESP2 or RESP3 reply into `out`.
fn read_reply(r: &mut impl BufRead, out: &mut Vec<u8>) {
    let mut first = [0u8; 1];
    r.read_exact(&mut first).expect("read reply type");
    let kind = first[0];
    out.push(kind);
    let rest = read_line(r, out);
    match kind {
        b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => {}
        b'$' | b'=' | b'!' => {
            let n = number(&rest);
            if n >= 0 {
                let mut data = vec![0u8; n as usize + 2];
                r.read_exact(&mut data).expect("read bulk");
                out.extend_from_slice(&data);
            }
        }
        b'*' | b'~' | b'>' => {
            for _ in 0..number(&rest).max(0) {
                read_reply(r, out);
            }
        }
        b'%' | b'|' => {
            for _ in 0..number(&rest).max(0) * 2 {
                read_reply(r, out);
            }
        }
        other => panic!("unknown reply type {:?}", other as char),
    }
}

/// A reply's bytes shown readably in assertion messages.
pub fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).replace("\r\n", "\\r\\n")
}

/// Polls `f` until it is true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// A reply parsed, for comparisons that map values (auto-generated IDs) first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    /// `+`, `-`, `:` and the other one-line types: the type byte and the line.
    Line(u8, Vec<u8>),
    /// `$` and the other length-prefixed strings (`None`: null).
    Bulk(u8, Option<Vec<u8>>),
    /// `*`, `~`, `>`, `%`, `|` aggregates (`None`: null); a map's items are key, value, ...
    Many(u8, Option<Vec<Resp>>),
}

impl Resp {
    /// Parses one reply from the start of `b`; returns it and the bytes it took.
    pub fn parse(b: &[u8]) -> (Resp, usize) {
        let end = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("complete line");
        let kind = b[0];
        let line = &b[1..end];
        let mut at = end + 2;
        match kind {
            b'$' | b'=' | b'!' => {
                let n = number(line);
                if n < 0 {
                    return (Resp::Bulk(kind, None), at);
                }
                let data = b[at..at + n as usize].to_vec();
                (Resp::Bulk(kind, Some(data)), at + n as usize + 2)
            }
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let n = number(line);
                if n < 0 {
                    return (Resp::Many(kind, None), at);
                }
                let items = if matches!(kind, b'%' | b'|') {
                    n * 2
                } else {
                    n
                };
                let mut out = Vec::new();
                for _ in 0..items {
                    let (v, used) = Resp::parse(&b[at..]);
                    out.push(v);
                    at += used;
                }
                (Resp::Many(kind, Some(out)), at)
            }
            _ => (Resp::Line(kind, line.to_vec()), at),
        }
    }

    /// Every bulk string `f` maps, replaced.
    pub fn map_bulks(self, f: &dyn Fn(&[u8]) -> Option<Vec<u8>>) -> Resp {
        match self {
            Resp::Bulk(k, Some(d)) => Resp::Bulk(k, Some(f(&d).unwrap_or(d))),
            Resp::Many(k, Some(items)) => {
                Resp::Many(k, Some(items.into_iter().map(|i| i.map_bulks(f)).collect()))
            }
            other => other,
        }
    }
}
