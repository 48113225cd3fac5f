//! `mqtt-load`: drives any MQTT 3.1.1 broker — Manifold, or Mosquitto in the same run — through
//! the workloads of issue 6's benchmarks, and prints one line of `key=value` figures per run
//! (read by `bench/mqtt-vs-mosquitto.sh`):
//!
//! - `throughput`: publishers send N messages at QoS q (QoS 1/2 with a window of unacknowledged
//!   ones), subscribers of the topic take them; publish rate and delivery rate.
//! - `latency`: a publisher at a fixed rate, many subscribers; each message carries its send
//!   time, so each delivery's latency is known; percentiles.
//! - `replay`: a persistent session misses N messages, then reconnects; how fast it gets them.
//! - `idle`: N connections that only hold their session; the broker's RSS growth per
//!   connection (`/proc/PID/status`).

mod conn;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, ensure};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use conn::Conn;
use manifold_mqtt::codec::{Packet, QoS};

#[derive(Parser)]
#[command(about = "MQTT 3.1.1 load generator for Manifold and Mosquitto")]
struct Args {
    /// The broker.
    #[arg(long, default_value = "127.0.0.1:1883")]
    addr: String,
    #[command(subcommand)]
    run: Run,
}

#[derive(Subcommand)]
enum Run {
    /// Publish rate and delivery rate.
    Throughput {
        #[arg(long, default_value_t = 1)]
        qos: u8,
        #[arg(long, default_value_t = 100_000)]
        messages: u64,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 1)]
        publishers: u64,
        #[arg(long, default_value_t = 1)]
        subscribers: u64,
        /// QoS 1/2 PUBLISH packets a publisher has unacknowledged at most.
        #[arg(long, default_value_t = 100)]
        window: usize,
    },
    /// Delivery latency percentiles at a fixed publish rate.
    Latency {
        #[arg(long, default_value_t = 0)]
        qos: u8,
        #[arg(long, default_value_t = 1000)]
        subscribers: u64,
        /// Messages per second.
        #[arg(long, default_value_t = 50)]
        rate: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// An offline persistent session gets N missed messages.
    Replay {
        #[arg(long, default_value_t = 1_000_000)]
        messages: u64,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 100)]
        window: usize,
    },
    /// N idle connections: the broker's RSS per connection.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        connections: u64,
        /// The broker's process id.
        #[arg(long)]
        pid: u32,
    },
}

fn qos_of(q: u8) -> anyhow::Result<QoS> {
    QoS::from_bits(q).context("QoS is 0, 1 or 2")
}

/// A run's prefix for client ids and topics, so runs never share sessions.
fn run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}", nanos % 0xffff_ffff)
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Publishes `n` messages of `size` bytes to `topic` on a new connection; QoS 1/2 with at most
/// `window` unacknowledged. Returns how long until the last was acknowledged (QoS 0: written).
async fn publish_all(
    addr: &str,
    id: &str,
    topic: &str,
    qos: QoS,
    n: u64,
    size: usize,
    window: usize,
) -> anyhow::Result<Duration> {
    let (mut c, _) = Conn::connect(addr, id, true, 600).await?;
    let fill = Bytes::from(vec![b'x'; size]);
    let start = Instant::now();
    let (mut sent, mut done, mut inflight, mut next_id) = (0u64, 0u64, 0usize, 1u16);
    while done < n {
        while sent < n
            && if qos == QoS::AtMostOnce {
                c.queued() < 64 * 1024
            } else {
                inflight < window
            }
        {
            let packet_id = if qos == QoS::AtMostOnce {
                0
            } else {
                inflight += 1;
                let id = next_id;
                next_id = next_id.checked_add(1).unwrap_or(1);
                id
            };
            c.publish(topic, qos, packet_id, fill.clone())?;
            sent += 1;
        }
        c.flush().await?;
        if qos == QoS::AtMostOnce {
            done = sent;
            continue;
        }
        let mut handle = |p: Packet, c: &mut Conn| -> anyhow::Result<()> {
            match p {
                Packet::PubAck(_) | Packet::PubComp(_) => {
                    inflight -= 1;
                    done += 1;
                }
                Packet::PubRec(a) => c.queue(&Packet::PubRel(a))?,
                _ => {}
            }
            Ok(())
        };
        let p = c.next().await?;
        handle(p, &mut c)?;
        while let Some(p) = c.buffered()? {
            handle(p, &mut c)?;
        }
    }
    let elapsed = start.elapsed();
    c.disconnect().await?;
    Ok(elapsed)
}

/// What a subscriber took.
#[derive(Default)]
struct Taken {
    count: u64,
    last: Option<Instant>,
    /// Delivery latencies (ns), for stamped payloads.
    latencies: Vec<u64>,
}

/// Takes messages until `expect` came or none came for `idle`; acknowledges QoS 1.
async fn take(mut c: Conn, expect: u64, idle: Duration, stamped: bool) -> anyhow::Result<Taken> {
    let mut t = Taken::default();
    while t.count < expect {
        let Ok(p) = tokio::time::timeout(idle, c.next()).await else {
            break;
        };
        let mut p = Some(p?);
        while let Some(packet) = p {
            if let Packet::Publish(m) = packet {
                t.count += 1;
                if stamped && m.payload.len() >= 8 {
                    let mut at = [0u8; 8];
                    at.copy_from_slice(&m.payload[..8]);
                    t.latencies
                        .push(now_ns().saturating_sub(u64::from_le_bytes(at)));
                }
                if m.qos == QoS::AtLeastOnce {
                    c.puback(m.packet_id)?;
                }
            }
            p = c.buffered()?;
        }
        t.last = Some(Instant::now());
        c.flush().await?;
    }
    Ok(t)
}

/// `n` clean-session subscribers of `topic` at `qos`, subscribed.
async fn subscribers(
    addr: &str,
    prefix: &str,
    topic: &str,
    qos: QoS,
    n: u64,
) -> anyhow::Result<Vec<Conn>> {
    let mut subs = Vec::new();
    for k in 0..n {
        let (mut c, _) = Conn::connect(addr, &format!("{prefix}-sub-{k}"), true, 600).await?;
        c.subscribe(topic, qos).await?;
        subs.push(c);
    }
    Ok(subs)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1e6
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let addr = args.addr.as_str();
    let id = run_id();
    match args.run {
        Run::Throughput {
            qos,
            messages,
            size,
            publishers,
            subscribers: nsubs,
            window,
        } => {
            let qos = qos_of(qos)?;
            let topic = format!("load/{id}");
            let subs = subscribers(addr, &id, &topic, qos, nsubs).await?;
            let start = Instant::now();
            let takers: Vec<_> = subs
                .into_iter()
                .map(|c| tokio::spawn(take(c, messages, Duration::from_secs(5), false)))
                .collect();
            let each = messages / publishers.max(1);
            let pubs: Vec<_> = (0..publishers.max(1))
                .map(|k| {
                    let (addr, topic, pid) =
                        (addr.to_string(), topic.clone(), format!("{id}-pub-{k}"));
                    tokio::spawn(async move {
                        publish_all(&addr, &pid, &topic, qos, each, size, window).await
                    })
                })
                .collect();
            let mut published = Duration::ZERO;
            for p in pubs {
                published = published.max(p.await??);
            }
            let (mut delivered, mut last) = (0u64, start);
            for t in takers {
                let t = t.await??;
                delivered += t.count;
                last = last.max(t.last.unwrap_or(start));
            }
            let total = each * publishers.max(1);
            let deliver_s = (last - start).as_secs_f64();
            println!(
                "published={total} publish_rate={:.0} delivered={delivered} expected={} deliver_rate={:.0}",
                total as f64 / published.as_secs_f64(),
                total * nsubs,
                if deliver_s > 0.0 {
                    delivered as f64 / deliver_s
                } else {
                    0.0
                },
            );
        }
        Run::Latency {
            qos,
            subscribers: nsubs,
            rate,
            seconds,
            size,
        } => {
            let qos = qos_of(qos)?;
            let topic = format!("lat/{id}");
            let subs = subscribers(addr, &id, &topic, qos, nsubs).await?;
            let n = rate * seconds;
            let takers: Vec<_> = subs
                .into_iter()
                .map(|c| tokio::spawn(take(c, n, Duration::from_secs(5), true)))
                .collect();
            let (mut p, _) = Conn::connect(addr, &format!("{id}-pub"), true, 600).await?;
            let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate.max(1)));
            let fill = vec![b'x'; size.max(8)];
            for k in 0..n {
                tick.tick().await;
                let mut payload = fill.clone();
                payload[..8].copy_from_slice(&now_ns().to_le_bytes());
                let packet_id = if qos == QoS::AtMostOnce {
                    0
                } else {
                    (k % 60_000) as u16 + 1
                };
                p.publish(&topic, qos, packet_id, Bytes::from(payload))?;
                p.flush().await?;
                while p.buffered()?.is_some() {}
            }
            let mut all = Vec::new();
            let mut delivered = 0;
            for t in takers {
                let t = t.await??;
                delivered += t.count;
                all.extend(t.latencies);
            }
            all.sort_unstable();
            println!(
                "delivered={delivered} expected={} p50_ms={:.3} p99_ms={:.3} max_ms={:.3}",
                n * nsubs,
                percentile(&all, 0.50),
                percentile(&all, 0.99),
                percentile(&all, 1.0),
            );
        }
        Run::Replay {
            messages,
            size,
            window,
        } => {
            let topic = format!("replay/{id}");
            let sub_id = format!("{id}-replay");
            let (mut c, _) = Conn::connect(addr, &sub_id, false, 600).await?;
            c.subscribe(&topic, QoS::AtLeastOnce).await?;
            c.disconnect().await?;
            let published = publish_all(
                addr,
                &format!("{id}-pub"),
                &topic,
                QoS::AtLeastOnce,
                messages,
                size,
                window,
            )
            .await?;
            let start = Instant::now();
            let (c, present) = Conn::connect(addr, &sub_id, false, 600).await?;
            ensure!(present, "the broker did not keep the session");
            let t = take(c, messages, Duration::from_secs(10), false).await?;
            let took = t.last.map_or(Duration::ZERO, |l| l - start).as_secs_f64();
            println!(
                "published={messages} publish_rate={:.0} replayed={} replay_rate={:.0}",
                messages as f64 / published.as_secs_f64(),
                t.count,
                if took > 0.0 {
                    t.count as f64 / took
                } else {
                    0.0
                },
            );
        }
        Run::Idle { connections, pid } => {
            let before = rss_kib(pid)?;
            let mut held = Vec::with_capacity(connections as usize);
            for k in 0..connections {
                let (c, _) = Conn::connect(addr, &format!("{id}-idle-{k}"), true, 0)
                    .await
                    .with_context(|| format!("connection {k}"))?;
                held.push(c);
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            let after = rss_kib(pid)?;
            println!(
                "connections={connections} rss_before_kib={before} rss_after_kib={after} per_connection_kib={:.2}",
                after.saturating_sub(before) as f64 / connections as f64
            );
            drop(held);
        }
    }
    Ok(())
}
