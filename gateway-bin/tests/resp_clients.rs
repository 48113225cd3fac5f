//! The real `manifold` binary with real Redis clients: `redis-cli`, Python's redis-py and raw
//! TCP; acknowledged XADDs across SIGKILL and restart; SIGTERM with clients connected.
//!
//! A first start preallocates the log (2 GiB of zeros), so the tests that only read and write
//! share one server (`shared_port`), each on its own keys; the SIGKILL and SIGTERM tests have
//! their own directories.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

mod common;

use anyhow::{Context, bail, ensure};

const BIN: &str = env!("CARGO_BIN_EXE_manifold");

/// How long a first start (log preallocation) may take on a slow, shared machine.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A server process, killed if a test fails before stopping it.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Server {
    /// `kill -NAME pid`.
    fn signal(&self, name: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()?;
        ensure!(status.success(), "kill -{name} failed");
        Ok(())
    }

    /// Waits for the process to exit, at most `limit`.
    fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            ensure!(
                Instant::now() < deadline,
                "the server did not exit within {limit:?}"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Reads the child's stderr until the ready line; returns the RESP port from the `listening`
/// line before it. Keeps draining afterwards, as a supervisor would.
fn wait_ready(child: &mut Child) -> anyhow::Result<(u16, String)> {
    let stderr = child.stderr.take().context("stderr")?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut port = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .context("manifold serve did not become ready")?;
        if line.contains("listening") && line.contains("RESP") {
            let addr = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .with_context(|| format!("no addr= in {line:?}"))?;
            let p = addr
                .rsplit(':')
                .next()
                .context("no port")?
                .parse::<u16>()
                .with_context(|| format!("port in {line:?}"))?;
            port = Some(p);
        }
        if line.contains("manifold ready") {
            let port = port.context("ready before a RESP listening line")?;
            return Ok((port, line));
        }
    }
}

/// Starts `manifold serve` on `dir` with the RESP listener on a free port.
fn start(dir: &Path) -> anyhow::Result<(Server, String)> {
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--data-dir")
        .arg(dir)
        .args(["--resp-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(["--mqtt-addr", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn manifold serve")?;
    match wait_ready(&mut child) {
        Ok((port, line)) => Ok((Server { child, port }, line)),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

/// The port of one server shared by the tests that only talk to it (each on its own keys).
///
/// It runs under a small shell watchdog that holds the read end of a pipe whose write end
/// this test process keeps open until it exits (however it exits): then the watchdog sends
/// SIGTERM, waits for the server and removes its data directory.
fn shared_port() -> anyhow::Result<u16> {
    static PORT: OnceLock<Result<u16, String>> = OnceLock::new();
    PORT.get_or_init(|| start_shared().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn start_shared() -> anyhow::Result<u16> {
    let dir = tempfile::tempdir()?.keep();
    let script = r#"dir="$1"; shift; "$@" & pid=$!; cat >/dev/null; kill -TERM "$pid" 2>/dev/null; wait "$pid"; rm -rf "$dir""#;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("manifold-watchdog")
        .arg(&dir)
        .arg(BIN)
        .arg("serve")
        .arg("--data-dir")
        .arg(&dir)
        .args(["--resp-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(["--mqtt-addr", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn the watchdog")?;
    // Open until this process exits: the watchdog's `cat` ends then.
    std::mem::forget(child.stdin.take().context("watchdog stdin")?);
    let (port, _) = wait_ready(&mut child)?;
    Ok(port)
}

// ---------------------------------------------------------------------------------------------
// A minimal RESP2 client over std::net::TcpStream.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Value>),
}

impl Value {
    fn bulk(s: &str) -> Value {
        Value::Bulk(s.as_bytes().to_vec())
    }
}

fn encode(args: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

struct Resp {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Resp {
    fn connect(port: u16) -> anyhow::Result<Resp> {
        let stream = TcpStream::connect(("127.0.0.1", port)).context("connect")?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Resp {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    fn send(&mut self, args: &[&str]) -> std::io::Result<()> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        let mut out = Vec::new();
        encode(&args, &mut out);
        self.writer.write_all(&out)
    }

    fn line(&mut self) -> anyhow::Result<String> {
        let mut buf = Vec::new();
        self.reader.read_until(b'\n', &mut buf)?;
        if !buf.ends_with(b"\n") {
            // Closed, before or inside the line.
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        ensure!(buf.ends_with(b"\r\n"), "line without CRLF: {buf:?}");
        buf.truncate(buf.len() - 2);
        Ok(String::from_utf8(buf)?)
    }

    fn read(&mut self) -> anyhow::Result<Value> {
        let line = self.line()?;
        let (kind, rest) = line.split_at_checked(1).context("empty line")?;
        Ok(match kind {
            "+" => Value::Simple(rest.to_string()),
            "-" => Value::Error(rest.to_string()),
            ":" => Value::Int(rest.parse()?),
            "$" => {
                let len: i64 = rest.parse()?;
                if len < 0 {
                    Value::Nil
                } else {
                    let mut buf = vec![0; usize::try_from(len)? + 2];
                    self.reader.read_exact(&mut buf)?;
                    ensure!(buf.ends_with(b"\r\n"), "bulk without CRLF");
                    buf.truncate(buf.len() - 2);
                    Value::Bulk(buf)
                }
            }
            "*" => {
                let len: i64 = rest.parse()?;
                if len < 0 {
                    Value::Nil
                } else {
                    let mut items = Vec::new();
                    for _ in 0..len {
                        items.push(self.read()?);
                    }
                    Value::Array(items)
                }
            }
            _ => bail!("unexpected reply line {line:?}"),
        })
    }

    fn cmd(&mut self, args: &[&str]) -> anyhow::Result<Value> {
        self.send(args)?;
        self.read()
    }
}

/// The entry IDs of an XRANGE reply, checking each entry is `[id, [f, <N of N-1>]]`.
fn entry_ids(reply: &Value) -> anyhow::Result<Vec<String>> {
    let Value::Array(entries) = reply else {
        bail!("XRANGE reply is not an array: {reply:?}");
    };
    let mut ids = Vec::new();
    for e in entries {
        let Value::Array(parts) = e else {
            bail!("entry is not an array: {e:?}");
        };
        let [Value::Bulk(id), Value::Array(fields)] = parts.as_slice() else {
            bail!("entry shape: {e:?}");
        };
        let id = String::from_utf8(id.clone())?;
        let n = id.split('-').next().unwrap_or_default();
        ensure!(
            fields.as_slice() == [Value::bulk("f"), Value::bulk(n)],
            "fields of {id}: {fields:?}"
        );
        ids.push(id);
    }
    Ok(ids)
}

/// Polls `INFO clients` until it shows `blocked_clients:{n}`.
fn wait_blocked(port: u16, n: usize) -> anyhow::Result<()> {
    let want = format!("blocked_clients:{n}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = redis_cli(port, &["INFO", "clients"])?;
        if out.lines().any(|l| l.trim() == want) {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "never {want}; last INFO: {out}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn redis_cli_output(port: u16, extra: &[&str], args: &[&str]) -> anyhow::Result<Output> {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(extra)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("run redis-cli (Debian redis-tools)")
}

/// `redis-cli -p PORT args...` (raw output, as when stdout is not a terminal); its stdout.
fn redis_cli(port: u16, args: &[&str]) -> anyhow::Result<String> {
    let out = redis_cli_output(port, &[], args)?;
    ensure!(
        out.status.success(),
        "redis-cli {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

fn inspect(dir: &Path) -> anyhow::Result<(i32, String)> {
    let out = Command::new(BIN)
        .arg("inspect")
        .arg("--data-dir")
        .arg(dir)
        .output()?;
    Ok((
        out.status.code().context("inspect killed by a signal")?,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

fn is_stream_id(s: &str) -> bool {
    s.split_once('-')
        .is_some_and(|(ms, seq)| ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok())
}

// ---------------------------------------------------------------------------------------------
// 1. redis-cli

#[test]
fn redis_cli_writes_reads_and_sees_redis_errors() -> anyhow::Result<()> {
    let port = shared_port()?;
    let key = "cli:s";
    ensure!(redis_cli(port, &["XADD", key, "1-1", "f", "v"])?.trim() == "1-1");
    let auto = redis_cli(port, &["XADD", key, "*", "a", "1"])?
        .trim()
        .to_string();
    ensure!(
        is_stream_id(&auto) && auto != "1-1",
        "auto ID {auto:?} (the clock is past 1 ms)"
    );
    let range = redis_cli(port, &["XRANGE", key, "-", "+"])?;
    let lines: Vec<&str> = range.lines().collect();
    ensure!(
        lines == ["1-1", "f", "v", auto.as_str(), "a", "1"],
        "XRANGE: {range:?}"
    );
    let rev = redis_cli(port, &["XREVRANGE", key, "+", "-", "COUNT", "1"])?;
    ensure!(
        rev.lines().collect::<Vec<_>>() == [auto.as_str(), "a", "1"],
        "XREVRANGE: {rev:?}"
    );
    ensure!(redis_cli(port, &["XLEN", key])?.trim() == "2");
    ensure!(redis_cli(port, &["TYPE", key])?.trim() == "stream");
    ensure!(redis_cli(port, &["EXISTS", key, "cli:none"])?.trim() == "1");
    ensure!(redis_cli(port, &["TYPE", "cli:none"])?.trim() == "none");
    // redis-cli prints an error reply (and exits 0, as with redis-server).
    let err = redis_cli(port, &["XADD", key, "1-1", "f", "v"])?;
    ensure!(
        err.trim()
            == "ERR The ID specified in XADD is equal or smaller than the target stream top item",
        "{err:?}"
    );
    let err = redis_cli(port, &["XADD", key, "0-0", "f", "v"])?;
    ensure!(
        err.trim() == "ERR The ID specified in XADD must be greater than 0-0",
        "{err:?}"
    );
    // --no-raw: the terminal formatting, quoted.
    let out = redis_cli_output(port, &["--no-raw"], &["XRANGE", key, "-", "1-1"])?;
    let text = String::from_utf8(out.stdout)?;
    ensure!(
        text.lines().collect::<Vec<_>>() == ["1) 1) \"1-1\"", "   2) 1) \"f\"", "      2) \"v\""],
        "--no-raw XRANGE: {text:?}"
    );
    let out = redis_cli_output(port, &["--no-raw"], &["XLEN", key])?;
    ensure!(String::from_utf8(out.stdout)?.trim() == "(integer) 2");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. redis-cli XREAD BLOCK

#[test]
fn redis_cli_xread_block_wakes_on_xadd_from_another_client() -> anyhow::Result<()> {
    let port = shared_port()?;
    let key = "cli:block";
    let spawned = Instant::now();
    let child = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(["XREAD", "BLOCK", "5000", "STREAMS", key, "$"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn redis-cli")?;
    // Killed if anything below fails.
    struct Kill(Option<Child>);
    impl Drop for Kill {
        fn drop(&mut self) {
            if let Some(c) = self.0.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
    let mut child = Kill(Some(child));
    wait_blocked(port, 1)?;
    let added = Instant::now();
    ensure!(redis_cli(port, &["XADD", key, "7-1", "k", "v"])?.trim() == "7-1");
    let c = child.0.as_mut().context("child")?;
    loop {
        if c.try_wait()?.is_some() {
            break;
        }
        ensure!(
            added.elapsed() < Duration::from_secs(3),
            "the blocked XREAD was not woken by XADD"
        );
        thread::sleep(Duration::from_millis(10));
    }
    let woke_after = added.elapsed();
    let total = spawned.elapsed();
    let out = child.0.take().context("child")?.wait_with_output()?;
    ensure!(out.status.success(), "redis-cli: {:?}", out.status);
    let text = String::from_utf8(out.stdout)?;
    ensure!(
        text.lines().collect::<Vec<_>>() == [key, "7-1", "k", "v"],
        "XREAD output: {text:?}"
    );
    ensure!(
        total < Duration::from_millis(4500),
        "exited after {total:?}: at its 5 s timeout, not woken"
    );
    ensure!(
        woke_after < Duration::from_secs(2),
        "woken {woke_after:?} after XADD"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Python's redis-py

const PY_SCRIPT: &str = r#"
import sys
import redis

port = int(sys.argv[1])
r = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
assert r.ping() is True

k = "py:s"
assert r.xadd(k, {"f": "v"}, id="1-1") == "1-1"
auto = r.xadd(k, {"a": "1"})
ms, seq = auto.split("-")
assert int(ms) > 1 and int(seq) >= 0, auto
assert r.xrange(k) == [("1-1", {"f": "v"}), (auto, {"a": "1"})], r.xrange(k)
assert r.xrange(k, min="-", max="1-1") == [("1-1", {"f": "v"})]
assert r.xrevrange(k, count=1) == [(auto, {"a": "1"})], r.xrevrange(k, count=1)
assert r.xlen(k) == 2
assert r.xdel(k, "1-1") == 1
assert r.xdel(k, "1-1") == 0
assert r.xlen(k) == 1

t = "py:trim"
for i in range(1, 11):
    assert r.xadd(t, {"i": str(i)}, id=f"5-{i}") == f"5-{i}"
assert r.xtrim(t, maxlen=3, approximate=False) == 7
assert r.xlen(t) == 3
assert [e[0] for e in r.xrange(t)] == ["5-8", "5-9", "5-10"]

p = "py:pipe"
pipe = r.pipeline(transaction=False)
for i in range(100):
    pipe.xadd(p, {"i": str(i)})
ids = pipe.execute()
assert len(ids) == 100 and len(set(ids)) == 100, ids
key = lambda i: tuple(int(x) for x in i.split("-"))
assert sorted(ids, key=key) == ids, "pipelined IDs out of order"
assert r.xadd(p, {"i": "last"}) not in ids
assert r.xlen(p) == 101
assert [e[1]["i"] for e in r.xrange(p, count=3)] == ["0", "1", "2"]

# pipeline() is MULTI/EXEC by default: one transaction, one reply per command.
tx = r.pipeline()
tx.xadd("py:tx", {"n": "1"}, id="1-1")
tx.xadd("py:tx", {"n": "2"})
tx.xlen("py:tx")
tx.xrange("py:tx", count=1)
got = tx.execute()
assert got[0] == "1-1" and got[2] == 2 and got[3] == [("1-1", {"n": "1"})], got
# An error in one slot fails that command only (redis-py raises after the whole EXEC).
tx = r.pipeline()
tx.xadd("py:tx", {"n": "x"}, id="1-1")
tx.xadd("py:tx", {"n": "3"})
try:
    tx.execute()
    raise AssertionError("no error")
except redis.ResponseError as e:
    assert "equal or smaller" in str(e), e
assert r.xlen("py:tx") == 3
# WATCH: a change by another client makes EXEC answer nil (WatchError); a retry succeeds.
other = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
with r.pipeline() as w:
    w.watch("py:tx")
    n = w.xlen("py:tx")
    other.xadd("py:tx", {"n": "other"})
    w.multi()
    w.xadd("py:tx", {"seen": str(n)})
    try:
        w.execute()
        raise AssertionError("EXEC ran after a watched key changed")
    except redis.WatchError:
        pass
def append_len(pipe):
    n = pipe.xlen("py:tx")
    pipe.multi()
    pipe.xadd("py:tx", {"seen": str(n)})
r.transaction(append_len, "py:tx")
assert r.xrevrange("py:tx", count=1)[0][1] == {"seen": "4"}, r.xrevrange("py:tx", count=1)

# RESP2 XREAD: a list of [key, entries].
assert r.xread({t: "5-9"}) == [[t, [("5-10", {"i": "10"})]]], r.xread({t: "5-9"})
assert r.xread({t: "5-10"}) == []

# RESP3: HELLO 3 on connect; XREAD is a map.
r3 = redis.Redis(host="127.0.0.1", port=port, protocol=3, decode_responses=True)
assert r3.ping() is True
hello = r3.execute_command("HELLO", "3")
assert hello["proto"] == 3 and hello["server"] == "redis", hello
got = r3.xread({t: "5-8"}, count=1)
assert isinstance(got, dict), got
assert list(got) == [t], got
entries = got[t][0] if got[t] and isinstance(got[t][0], list) else got[t]
assert entries == [("5-9", {"i": "9"})], got

def error_of(f):
    try:
        f()
    except redis.ResponseError as e:
        return str(e)
    raise AssertionError("no ResponseError")

msg = error_of(lambda: r.xadd(k, {"f": "v"}, id="1-1"))
assert msg == "The ID specified in XADD is equal or smaller than the target stream top item", msg
msg = error_of(lambda: r.execute_command("NOSUCHCMD", "x"))
assert msg.startswith("unknown command 'NOSUCHCMD'"), msg
msg = error_of(lambda: r.xrange(k, min="abc", max="+"))
assert msg == "Invalid stream ID specified as stream command argument", msg
print("OK")
"#;

#[test]
fn python_redis_py_streams_pipeline_and_resp3() -> anyhow::Result<()> {
    let port = shared_port()?;
    common::run_python(PY_SCRIPT, &port.to_string())
}

// ---------------------------------------------------------------------------------------------
// 4. Acknowledged XADDs survive SIGKILL

/// XADDs `key N-1 f N` for N = first, first+1, ... with up to `window` in flight, until the
/// connection breaks. Returns (last N acknowledged, last N sent); 0 for none.
fn xadd_until_killed(port: u16, key: &str, first: u64, window: u64) -> anyhow::Result<(u64, u64)> {
    let mut c = Resp::connect(port)?;
    let mut acked = 0;
    let mut n = first;
    let give_up = Instant::now() + Duration::from_secs(20);
    while Instant::now() < give_up {
        let mut out = Vec::new();
        for i in n..n + window {
            let id = format!("{i}-1");
            let val = i.to_string();
            encode(
                &[b"XADD", key.as_bytes(), id.as_bytes(), b"f", val.as_bytes()],
                &mut out,
            );
        }
        // Counted as sent before the write: part of a failed write may have arrived.
        let sent = n + window - 1;
        if c.writer.write_all(&out).is_err() {
            return Ok((acked, sent));
        }
        for i in n..n + window {
            match c.read() {
                Ok(reply) => {
                    ensure!(
                        reply == Value::bulk(&format!("{i}-1")),
                        "XADD {key} {i}-1 answered {reply:?}"
                    );
                    acked = i;
                }
                // SIGKILL: reset or end of stream. Anything else (a timeout, a malformed
                // reply) fails the test.
                Err(e) if is_disconnect(&e) => return Ok((acked, sent)),
                Err(e) => return Err(e.context(format!("XADD {key} {i}-1"))),
            }
        }
        n += window;
    }
    bail!("{key}: the server was never killed")
}

/// The connection was closed or reset (not a timeout, not a malformed reply).
fn is_disconnect(e: &anyhow::Error) -> bool {
    use std::io::ErrorKind::*;
    e.downcast_ref::<std::io::Error>().is_some_and(|e| {
        matches!(
            e.kind(),
            UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
        )
    })
}

#[test]
fn acknowledged_xadds_survive_sigkill_and_restart() -> anyhow::Result<()> {
    const STREAMS: [&str; 3] = ["dur:a", "dur:b", "dur:c"];
    let dir = tempfile::tempdir()?;
    let (mut server, _) = start(dir.path())?;
    // Next N per stream (everything before it is in the stream).
    let mut next = [1u64; STREAMS.len()];
    let mut total_acked = 0;
    for (round, delay_ms) in [50u64, 400, 120, 250, 300].into_iter().enumerate() {
        let port = server.port;
        let writers: Vec<_> = STREAMS
            .iter()
            .zip(next)
            .enumerate()
            .map(|(i, (key, first))| {
                let key = key.to_string();
                // Streams differ in how many they keep in flight: 1, 4, 16.
                let window = 1 << (2 * i);
                thread::spawn(move || xadd_until_killed(port, &key, first, window))
            })
            .collect();
        // The delay counts from the first acknowledgement, so every round kills mid-stream.
        let mut probe = Resp::connect(port)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Value::Int(n) = probe.cmd(&["XLEN", STREAMS[0]])?
                && u64::try_from(n)? >= next[0]
            {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "round {round}: no XADD went through"
            );
            thread::sleep(Duration::from_millis(5));
        }
        drop(probe);
        thread::sleep(Duration::from_millis(delay_ms));
        server.child.kill()?; // SIGKILL
        server.child.wait()?;
        let mut results = Vec::new();
        for w in writers {
            results.push(w.join().map_err(|_| anyhow::anyhow!("writer panicked"))??);
        }
        let (restarted, _) = start(dir.path())?;
        server = restarted;
        let mut c = Resp::connect(server.port)?;
        for ((key, (acked, sent)), next) in STREAMS.iter().zip(results).zip(next.iter_mut()) {
            let ids = entry_ids(&c.cmd(&["XRANGE", key, "-", "+"])?)?;
            let have = ids.len() as u64;
            // Exactly 1-1, 2-1, ... have-1: a prefix of what was sent, in order.
            for (i, id) in ids.iter().enumerate() {
                ensure!(
                    *id == format!("{}-1", i + 1),
                    "round {round} {key}: entry {i} is {id} (a gap or a reorder)"
                );
            }
            ensure!(
                acked == 0 || have >= acked,
                "round {round} {key}: LOST ACKNOWLEDGED WRITES: {acked}-1 was acknowledged, \
                 the stream ends at {have}-1"
            );
            ensure!(
                have >= *next - 1 && have <= sent.max(*next - 1),
                "round {round} {key}: {have} entries, sent up to {sent}, had {}",
                *next - 1
            );
            eprintln!(
                "round {round} ({delay_ms} ms) {key}: acknowledged up to {acked}, sent up to \
                 {sent}, kept {have}"
            );
            total_acked += acked.saturating_sub(*next - 1);
            *next = have + 1;
        }
    }
    ensure!(total_acked > 0, "nothing was acknowledged");
    server.signal("TERM")?;
    ensure!(server.wait_exit(Duration::from_secs(10))?.success());
    let (code, out) = inspect(dir.path())?;
    ensure!(code == 0 && out.contains("shutdown: clean"), "{out}");
    Ok(())
}

/// A transaction is one log entry: after a SIGKILL at any moment, each EXEC is in the streams
/// whole or not at all, and every acknowledged one is there.
#[test]
fn transactions_survive_sigkill_whole_or_not_at_all() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut server, _) = start(dir.path())?;
    let port = server.port;
    let writer = thread::spawn(move || -> anyhow::Result<u64> {
        let mut c = Resp::connect(port)?;
        let mut acked = 0;
        for n in 1u64.. {
            let (id, val) = (format!("{n}-1"), n.to_string());
            let mut out = Vec::new();
            encode(&[b"MULTI"], &mut out);
            for key in ["tx:a", "tx:b", "tx:c"] {
                let fields: [&[u8]; 5] =
                    [b"XADD", key.as_bytes(), id.as_bytes(), b"f", val.as_bytes()];
                encode(&fields, &mut out);
            }
            encode(&[b"EXEC"], &mut out);
            if c.writer.write_all(&out).is_err() {
                return Ok(acked);
            }
            for _ in 0..5 {
                match c.read() {
                    Ok(_) => {}
                    Err(e) if is_disconnect(&e) => return Ok(acked),
                    Err(e) => return Err(e),
                }
            }
            acked = n;
        }
        Ok(acked)
    });
    let mut probe = Resp::connect(port)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while probe.cmd(&["XLEN", "tx:c"])? == Value::Int(0) {
        ensure!(Instant::now() < deadline, "no transaction went through");
        thread::sleep(Duration::from_millis(5));
    }
    thread::sleep(Duration::from_millis(150));
    server.child.kill()?; // SIGKILL
    server.child.wait()?;
    let acked = writer
        .join()
        .map_err(|_| anyhow::anyhow!("writer panicked"))??;
    let (restarted, _) = start(dir.path())?;
    server = restarted;
    let mut c = Resp::connect(server.port)?;
    let mut lengths = Vec::new();
    for key in ["tx:a", "tx:b", "tx:c"] {
        let ids = entry_ids(&c.cmd(&["XRANGE", key, "-", "+"])?)?;
        for (i, id) in ids.iter().enumerate() {
            ensure!(*id == format!("{}-1", i + 1), "{key}: entry {i} is {id}");
        }
        lengths.push(ids.len() as u64);
    }
    ensure!(
        lengths.iter().all(|l| *l == lengths[0]),
        "a transaction was cut in half by the kill: lengths {lengths:?}"
    );
    ensure!(
        lengths[0] >= acked && acked > 0,
        "LOST ACKNOWLEDGED TRANSACTIONS: {acked} acknowledged, {} kept",
        lengths[0]
    );
    eprintln!("acknowledged {acked} transactions, kept {}", lengths[0]);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. SIGTERM with clients connected

#[test]
fn sigterm_with_a_blocked_reader_exits_cleanly_and_keeps_the_data() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut server, _) = start(dir.path())?;
    let port = server.port;
    let mut writer = Resp::connect(port)?;
    for i in 1..=3 {
        let id = format!("{i}-1");
        ensure!(writer.cmd(&["XADD", "term:s", &id, "f", &i.to_string()])? == Value::bulk(&id));
    }
    let mut reader = Resp::connect(port)?;
    reader.send(&["XREAD", "BLOCK", "0", "STREAMS", "term:s", "$"])?;
    let mut idle = Resp::connect(port)?;
    ensure!(idle.cmd(&["PING"])? == Value::Simple("PONG".into()));
    wait_blocked(port, 1)?;
    server.signal("TERM")?;
    let status = server.wait_exit(Duration::from_secs(5))?;
    ensure!(status.success(), "exit status {status}");
    // Every connection is closed: no reply, end of stream (not a read timeout).
    for (name, c) in [("blocked reader", &mut reader), ("idle client", &mut idle)] {
        let mut rest = Vec::new();
        match c.reader.read_to_end(&mut rest) {
            Ok(_) => ensure!(rest.is_empty(), "{name} got {rest:?}"),
            Err(e) => ensure!(
                e.kind() == std::io::ErrorKind::ConnectionReset,
                "{name}: {e}"
            ),
        }
    }
    let (code, out) = inspect(dir.path())?;
    ensure!(code == 0 && out.contains("shutdown: clean"), "{out}");
    let (mut server, _) = start(dir.path())?;
    let mut c = Resp::connect(server.port)?;
    let ids = entry_ids(&c.cmd(&["XRANGE", "term:s", "-", "+"])?)?;
    ensure!(ids == ["1-1", "2-1", "3-1"], "{ids:?}");
    server.signal("TERM")?;
    ensure!(server.wait_exit(Duration::from_secs(5))?.success());
    Ok(())
}

/// Consumer groups across a SIGKILL: the group, its last delivered ID, every pending entry
/// (owner and delivery count) and what is acknowledged are as they were acknowledged.
#[test]
fn groups_and_pending_entries_survive_sigkill() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (mut server, _) = start(dir.path())?;
    let mut c = Resp::connect(server.port)?;
    for i in 1..=6 {
        let id = format!("{i}-1");
        ensure!(c.cmd(&["XADD", "jobs", &id, "f", &i.to_string()])? == Value::bulk(&id));
    }
    ensure!(c.cmd(&["XGROUP", "CREATE", "jobs", "workers", "0"])? == Value::Simple("OK".into()));
    let first = entry_ids(&stream_entries(c.cmd(&[
        "XREADGROUP",
        "GROUP",
        "workers",
        "alice",
        "COUNT",
        "2",
        "STREAMS",
        "jobs",
        ">",
    ])?)?)?;
    ensure!(first == ["1-1", "2-1"], "{first:?}");
    let second = entry_ids(&stream_entries(c.cmd(&[
        "XREADGROUP",
        "GROUP",
        "workers",
        "bob",
        "COUNT",
        "3",
        "STREAMS",
        "jobs",
        ">",
    ])?)?)?;
    ensure!(second == ["3-1", "4-1", "5-1"], "{second:?}");
    ensure!(c.cmd(&["XACK", "jobs", "workers", "1-1", "4-1"])? == Value::Int(2));
    // alice reads her history again: 2-1 is delivered a second time.
    c.cmd(&[
        "XREADGROUP",
        "GROUP",
        "workers",
        "alice",
        "STREAMS",
        "jobs",
        "0",
    ])?;
    let pending_before = c.cmd(&["XPENDING", "jobs", "workers"])?;
    let groups_before = c.cmd(&["XINFO", "GROUPS", "jobs"])?;
    server.signal("KILL")?;
    server.wait_exit(Duration::from_secs(5))?;
    let (mut server, _) = start(dir.path())?;
    let mut c = Resp::connect(server.port)?;
    ensure!(c.cmd(&["XPENDING", "jobs", "workers"])? == pending_before);
    ensure!(c.cmd(&["XINFO", "GROUPS", "jobs"])? == groups_before);
    let Value::Array(lines) = c.cmd(&["XPENDING", "jobs", "workers", "-", "+", "10"])? else {
        bail!("XPENDING extended");
    };
    let owners: Vec<(Value, Value, Value)> = lines
        .into_iter()
        .filter_map(|l| match l {
            Value::Array(f) if f.len() == 4 => Some((f[0].clone(), f[1].clone(), f[3].clone())),
            _ => None,
        })
        .collect();
    ensure!(
        owners
            == [
                (Value::bulk("2-1"), Value::bulk("alice"), Value::Int(2)),
                (Value::bulk("3-1"), Value::bulk("bob"), Value::Int(1)),
                (Value::bulk("5-1"), Value::bulk("bob"), Value::Int(1)),
            ],
        "{owners:?}"
    );
    // The group goes on where it was: 6-1 is the next new entry.
    let next = entry_ids(&stream_entries(c.cmd(&[
        "XREADGROUP",
        "GROUP",
        "workers",
        "carol",
        "STREAMS",
        "jobs",
        ">",
    ])?)?)?;
    ensure!(next == ["6-1"], "{next:?}");
    server.signal("TERM")?;
    ensure!(server.wait_exit(Duration::from_secs(5))?.success());
    Ok(())
}

/// The entries of the only stream of an XREAD/XREADGROUP reply (RESP2 shape).
fn stream_entries(reply: Value) -> anyhow::Result<Value> {
    match reply {
        Value::Array(mut streams) if streams.len() == 1 => match streams.remove(0) {
            Value::Array(mut pair) if pair.len() == 2 => Ok(pair.remove(1)),
            other => bail!("not a [key, entries] pair: {other:?}"),
        },
        other => bail!("not one stream: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Raw TCP: protocol errors, inline commands, pipelining

fn raw(port: u16) -> anyhow::Result<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

#[test]
fn raw_tcp_protocol_error_inline_and_pipeline() -> anyhow::Result<()> {
    let port = shared_port()?;

    // A bad bulk length: the error, then the server closes the connection.
    let mut s = raw(port)?;
    s.write_all(b"*1\r\n$abc\r\n")?;
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .context("the connection was not closed after the protocol error")?;
    ensure!(
        got == b"-ERR Protocol error: invalid bulk length\r\n",
        "{:?}",
        String::from_utf8_lossy(&got)
    );

    // Inline commands.
    let mut s = raw(port)?;
    s.write_all(b"PING\r\n")?;
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf)?;
    ensure!(&buf == b"+PONG\r\n", "{:?}", String::from_utf8_lossy(&buf));
    s.write_all(b"ECHO hello\r\n")?;
    let mut buf = [0u8; 11];
    s.read_exact(&mut buf)?;
    ensure!(
        &buf == b"$5\r\nhello\r\n",
        "{:?}",
        String::from_utf8_lossy(&buf)
    );

    // Three commands in one write: three replies, in order.
    let mut s = raw(port)?;
    let mut out = Vec::new();
    encode(&[b"PING"], &mut out);
    encode(&[b"ECHO", b"hi"], &mut out);
    encode(&[b"XLEN", b"raw:none"], &mut out);
    s.write_all(&out)?;
    let want = b"+PONG\r\n$2\r\nhi\r\n:0\r\n";
    let mut buf = vec![0u8; want.len()];
    s.read_exact(&mut buf)?;
    ensure!(buf == want, "{:?}", String::from_utf8_lossy(&buf));
    // And nothing more.
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut extra = [0u8; 1];
    match s.read(&mut extra) {
        Ok(n) => bail!("{n} unexpected bytes after the three replies"),
        Err(e) => ensure!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{e}"
        ),
    }
    Ok(())
}
