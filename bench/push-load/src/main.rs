//! `push-load`: drives Manifold's HTTP push front end through issue 7's benchmarks and prints
//! one line of `key=value` figures per run (read by `bench/push-bench.sh`):
//!
//! - `ws-fanout`: N WebSocket subscribers of one topic (`/ws`), a publisher posting at a fixed
//!   rate (`POST /topics/{t}`, each body its send time); every delivery's latency, whether all
//!   arrived, and the server's RSS per connection (`/proc/PID/status`).
//! - `poll-wake`: N long-polls waiting on one topic (`/poll`); the server's CPU while they wait
//!   (`/proc/PID/stat`), then rounds of one publish each: how long after it each poll answers.
//! - `preload`: N messages into a topic over RESP (pipelined XADD), for the read runs.
//! - `ws-read` / `sse-read`: one client reads a preloaded topic from its start: messages/s.
//! - `floor`: no server — the kernel's own cost of one small message to each of N loopback
//!   connections, the floor under the fan-out and wake-up latencies (`floor.rs`).

mod floor;
mod http;
mod ws;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use http::{Http, find, json_str};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(about = "HTTP push load generator for Manifold")]
struct Args {
    /// The HTTP listener subscribers and polls use.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: String,
    /// The HTTP listener publishes go to (default: `--http`; a follower's subscribers with
    /// the leader's publisher in a group).
    #[arg(long)]
    publish_http: Option<String>,
    /// The server's process id (RSS and CPU are read from /proc).
    #[arg(long)]
    pid: Option<u32>,
    #[arg(long, default_value = "bench")]
    topic: String,
    #[command(subcommand)]
    run: Run,
}

#[derive(Subcommand)]
enum Run {
    /// WebSocket fan-out: latency percentiles and RSS per connection.
    WsFanout {
        #[arg(long, default_value_t = 10_000)]
        subscribers: usize,
        /// Messages per second.
        #[arg(long, default_value_t = 10)]
        rate: u64,
        #[arg(long, default_value_t = 30)]
        seconds: u64,
    },
    /// Long-poll waiters: idle CPU and wake-up latency.
    PollWake {
        #[arg(long, default_value_t = 10_000)]
        waiters: usize,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// How long the idle CPU is measured.
        #[arg(long, default_value_t = 10)]
        idle_seconds: u64,
    },
    /// Messages into the topic over RESP.
    Preload {
        #[arg(long, default_value = "127.0.0.1:6379")]
        resp: String,
        #[arg(long, default_value_t = 1_000_000)]
        messages: u64,
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// One WebSocket client reads the topic from its start.
    WsRead {
        #[arg(long, default_value_t = 1_000_000)]
        messages: u64,
    },
    /// One Server-Sent Events client reads the topic from its start.
    SseRead {
        #[arg(long, default_value_t = 1_000_000)]
        messages: u64,
    },
    /// No server: the kernel's cost of one small message to each of N loopback connections.
    Floor {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn percentile_ms(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

fn rss_kib(pid: Option<u32>) -> anyhow::Result<u64> {
    let Some(pid) = pid else { return Ok(0) };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}

/// The process's user + system CPU time, in clock ticks (100 per second on Linux).
fn cpu_ticks(pid: Option<u32>) -> anyhow::Result<u64> {
    let Some(pid) = pid else { return Ok(0) };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after its ')'.
    let rest = &stat[stat.rfind(')').context("stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat: 12 and 13 after the ')'.
    Ok(fields[11].parse::<u64>()? + fields[12].parse::<u64>()?)
}

/// The topic, percent-encoded as one path segment.
fn segment(topic: &str) -> String {
    topic
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Posts `body` to the topic: the message's cursor.
async fn publish(http: &mut Http, topic: &str, body: &str) -> anyhow::Result<String> {
    let (status, answer) = http
        .request(
            "POST",
            &format!("/topics/{}", segment(topic)),
            body.as_bytes(),
        )
        .await?;
    let answer = String::from_utf8_lossy(&answer);
    ensure!(status == 201, "publish: {status} {answer}");
    Ok(json_str(&answer, "cursor").context("cursor")?.to_string())
}

async fn ws_fanout(args: &Args, subscribers: usize, rate: u64, seconds: u64) -> anyhow::Result<()> {
    let expected = rate * seconds;
    let rss_before = rss_kib(args.pid)?;
    let subscribed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let connecting = Arc::new(Semaphore::new(200));
    let mut tasks = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let (addr, topic) = (args.http.clone(), args.topic.clone());
        let (subscribed, connecting) = (subscribed.clone(), connecting.clone());
        let failed = failed.clone();
        tasks.push(tokio::spawn(async move {
            let permit = connecting.acquire_owned().await?;
            let mut ws = match ws::Socket::connect(&addr, "/ws").await {
                Ok(c) => c,
                Err(e) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
            };
            let frame = format!(r#"{{"type":"subscribe","id":"s","topic":"{topic}"}}"#);
            ws.send_text(&frame).await?;
            let mut latencies = Vec::with_capacity(expected as usize);
            loop {
                let ws::Frame::Text(t) = ws.next().await? else {
                    bail!("closed before the subscribe was answered");
                };
                if find(t, br#""type":"subscribed""#).is_some() {
                    drop(permit);
                    subscribed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
            while (latencies.len() as u64) < expected {
                let t = match ws.next().await? {
                    ws::Frame::Text(t) => t,
                    ws::Frame::Close(code) => bail!("closed ({code:?})"),
                };
                // The payload is its send time in microseconds: `"payload":"1764...",`.
                let sent = std::str::from_utf8(t)
                    .ok()
                    .and_then(|t| json_str(t, "payload"))
                    .and_then(|p| p.parse::<u64>().ok());
                if let Some(sent) = sent {
                    latencies.push(now_us().saturating_sub(sent));
                }
            }
            anyhow::Ok((latencies, ws))
        }));
    }
    let started = Instant::now();
    while subscribed.load(Ordering::Relaxed) < subscribers as u64 {
        ensure!(
            failed.load(Ordering::Relaxed) == 0,
            "{} subscribers could not connect",
            failed.load(Ordering::Relaxed)
        );
        ensure!(
            started.elapsed() < Duration::from_secs(300),
            "only {} subscribed",
            subscribed.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connect_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_connected = rss_kib(args.pid)?;
    let publish_addr = args.publish_http.clone().unwrap_or(args.http.clone());
    let mut publisher = Http::connect(&publish_addr).await?;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let cpu_before = cpu_ticks(args.pid)?;
    for _ in 0..expected {
        tick.tick().await;
        publish(&mut publisher, &args.topic, &now_us().to_string()).await?;
    }
    // (Ticks are 10 ms: the server's CPU over the whole publishing, per delivery.)
    let server_cpu_us = cpu_ticks(args.pid)?.saturating_sub(cpu_before) * 10_000;
    let rss_publishing = rss_kib(args.pid)?;
    let mut all = Vec::with_capacity(subscribers * expected as usize);
    let mut complete = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut keep = Vec::with_capacity(subscribers);
    for t in tasks {
        match tokio::time::timeout_at(deadline, t).await {
            Ok(Ok(Ok((latencies, ws)))) => {
                complete += usize::from(latencies.len() as u64 == expected);
                all.extend(latencies);
                keep.push(ws);
            }
            Ok(Ok(Err(e))) => eprintln!("subscriber: {e}"),
            Ok(Err(e)) => eprintln!("subscriber task: {e}"),
            Err(_) => eprintln!("subscriber: timed out"),
        }
    }
    all.sort_unstable();
    let per_conn = rss_connected.saturating_sub(rss_before) as f64 / subscribers as f64;
    println!(
        "run=ws-fanout subscribers={subscribers} rate={rate} seconds={seconds} \
         deliveries={} expected={} complete_subscribers={complete} connect_s={connect_s:.1} \
         p50_ms={:.2} p99_ms={:.2} p999_ms={:.2} max_ms={:.2} rss_before_kib={rss_before} \
         rss_connected_kib={rss_connected} rss_publishing_kib={rss_publishing} \
         per_connection_kib={per_conn:.1} server_cpu_us_per_delivery={:.2}",
        all.len(),
        expected * subscribers as u64,
        percentile_ms(&all, 0.50),
        percentile_ms(&all, 0.99),
        percentile_ms(&all, 0.999),
        percentile_ms(&all, 1.0),
        server_cpu_us as f64 / (expected as f64 * subscribers as f64),
    );
    drop(keep);
    Ok(())
}

async fn poll_wake(
    args: &Args,
    waiters: usize,
    rounds: usize,
    idle_seconds: u64,
) -> anyhow::Result<()> {
    let publish_addr = args.publish_http.clone().unwrap_or(args.http.clone());
    let mut publisher = Http::connect(&publish_addr).await?;
    let mut cursor = publish(&mut publisher, &args.topic, "seed").await?;
    let rss_before = rss_kib(args.pid)?;
    let mut conns = Vec::with_capacity(waiters);
    for _ in 0..waiters {
        conns.push(Http::connect(&args.http).await?);
    }
    let mut lat = Vec::with_capacity(waiters * rounds);
    let mut idle_cpu_pct = f64::NAN;
    let mut wake_cpu_ticks = 0;
    let mut rss_waiting = 0;
    for round in 0..rounds {
        let path = format!(
            "/poll?topic={}&after={cursor}&timeout=120s",
            segment(&args.topic)
        );
        for c in &mut conns {
            c.send("GET", &path, b"").await?;
        }
        // Every poll registered (and, the first time, the idle CPU over a quiet period).
        tokio::time::sleep(Duration::from_secs(2)).await;
        if round == 0 {
            rss_waiting = rss_kib(args.pid)?;
            let before = cpu_ticks(args.pid)?;
            tokio::time::sleep(Duration::from_secs(idle_seconds)).await;
            let used = cpu_ticks(args.pid)?.saturating_sub(before);
            idle_cpu_pct = used as f64 / (idle_seconds as f64 * 100.0) * 100.0;
        }
        let (done_tx, mut done_rx) = tokio::sync::mpsc::channel(waiters);
        let mut tasks = Vec::with_capacity(waiters);
        for mut c in conns.drain(..) {
            let done_tx = done_tx.clone();
            tasks.push(tokio::spawn(async move {
                let (status, body) = c.response().await?;
                let at = Instant::now();
                ensure!(status == 200, "poll: {status}");
                let body = String::from_utf8_lossy(&body).into_owned();
                let next = json_str(&body, "next").context("next")?.to_string();
                let _ = done_tx.send(at).await;
                anyhow::Ok((c, next))
            }));
        }
        drop(done_tx);
        let t0 = Instant::now();
        let cpu_before = cpu_ticks(args.pid)?;
        cursor = publish(&mut publisher, &args.topic, &format!("round-{round}")).await?;
        let mut woke = 0;
        while let Some(at) = done_rx.recv().await {
            lat.push(at.saturating_duration_since(t0).as_micros() as u64);
            woke += 1;
        }
        for t in tasks {
            let (c, next) = t.await??;
            if next != cursor {
                bail!("a poll answered {next}, the publish was {cursor}");
            }
            conns.push(c);
        }
        ensure!(woke == waiters, "round {round}: {woke} of {waiters} woke");
        wake_cpu_ticks += cpu_ticks(args.pid)?.saturating_sub(cpu_before);
    }
    lat.sort_unstable();
    let per_waiter = rss_waiting.saturating_sub(rss_before) as f64 / waiters as f64;
    println!(
        "run=poll-wake waiters={waiters} rounds={rounds} wakes={} idle_seconds={idle_seconds} \
         idle_cpu_pct={idle_cpu_pct:.2} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} \
         rss_before_kib={rss_before} rss_waiting_kib={rss_waiting} per_waiter_kib={per_waiter:.1} \
         server_cpu_us_per_wake={:.2}",
        lat.len(),
        percentile_ms(&lat, 0.50),
        percentile_ms(&lat, 0.99),
        percentile_ms(&lat, 1.0),
        (wake_cpu_ticks * 10_000) as f64 / lat.len() as f64,
    );
    Ok(())
}

async fn preload(resp: &str, topic: &str, messages: u64, size: usize) -> anyhow::Result<()> {
    let mut s = tokio::net::TcpStream::connect(resp).await?;
    let value = "x".repeat(size);
    let one = format!(
        "*5\r\n$4\r\nXADD\r\n${}\r\n{topic}\r\n$1\r\n*\r\n$7\r\npayload\r\n${}\r\n{value}\r\n",
        topic.len(),
        value.len()
    );
    let started = Instant::now();
    let mut left = messages;
    let mut buf = vec![0u8; 1 << 16];
    while left > 0 {
        let batch = left.min(1000);
        s.write_all(one.repeat(batch as usize).as_bytes()).await?;
        // Each XADD answers a bulk string: two lines.
        let mut lines = 0;
        while lines < batch * 2 {
            let n = s.read(&mut buf).await?;
            ensure!(n > 0, "RESP connection closed");
            if find(&buf[..n], b"-ERR").is_some() {
                bail!("{}", String::from_utf8_lossy(&buf[..n]));
            }
            lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
        }
        left -= batch;
    }
    println!(
        "run=preload messages={messages} size={size} seconds={:.1}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn ws_read(args: &Args, messages: u64) -> anyhow::Result<()> {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", args.http)).await?;
    let frame = format!(
        r#"{{"type":"subscribe","id":"s","topic":"{}","from":"earliest"}}"#,
        args.topic
    );
    let started = Instant::now();
    ws.send(Message::text(frame)).await?;
    let mut got = 0u64;
    while got < messages {
        let frame = ws.next().await.context("closed")??;
        if let Message::Text(t) = frame
            && t.starts_with(r#"{"type":"message""#)
        {
            got += 1;
        }
    }
    let s = started.elapsed().as_secs_f64();
    println!(
        "run=ws-read messages={got} seconds={s:.2} msgs_per_s={:.0}",
        got as f64 / s
    );
    Ok(())
}

async fn sse_read(args: &Args, messages: u64) -> anyhow::Result<()> {
    let mut c = Http::connect(&args.http).await?;
    let started = Instant::now();
    c.send(
        "GET",
        &format!("/sse?topic={}&after=0-0@0", segment(&args.topic)),
        b"",
    )
    .await?;
    let (mut got, mut buf) = (0u64, Vec::new());
    // The tail of the last read, so an event's `data:` cut across reads counts once.
    let mut tail: Vec<u8> = Vec::new();
    while got < messages {
        let n = c.read_some(&mut buf).await?;
        ensure!(n > 0, "stream ended after {got}");
        tail.extend_from_slice(&buf);
        got += tail.windows(6).filter(|w| w == b"\ndata:").count() as u64;
        let keep = tail.len().min(5);
        tail.drain(..tail.len() - keep);
    }
    let s = started.elapsed().as_secs_f64();
    println!(
        "run=sse-read messages={got} seconds={s:.2} msgs_per_s={:.0}",
        got as f64 / s
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.run {
        Run::WsFanout {
            subscribers,
            rate,
            seconds,
        } => ws_fanout(&args, subscribers, rate, seconds).await,
        Run::PollWake {
            waiters,
            rounds,
            idle_seconds,
        } => poll_wake(&args, waiters, rounds, idle_seconds).await,
        Run::Preload {
            ref resp,
            messages,
            size,
        } => preload(resp, &args.topic, messages, size).await,
        Run::WsRead { messages } => ws_read(&args, messages).await,
        Run::SseRead { messages } => sse_read(&args, messages).await,
        Run::Floor {
            connections,
            rounds,
        } => tokio::task::block_in_place(|| floor::run(connections, rounds)),
    }
}
