//! The WebSocket push protocol (`/ws`) against a real `manifold serve`, with the `tungstenite`
//! client: subscribe to a topic (latest), a filter (earliest) and from a cursor; messages from
//! MQTT and from the socket itself; publish acknowledged with the cursor; unsubscribe; ping;
//! bad frames; and a client that does not read closed with 4008, then resuming from its last
//! cursor with every later message once, in order.

mod common;

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use common::mqtt::{Node, node};
use common::ws::{self, Socket, next, send, subscribe};
use serde_json::{Value, json};
use tungstenite::Message;

/// How long a read waits for a frame.
const TIMEOUT: Duration = Duration::from_secs(10);

fn open(node: &Node) -> anyhow::Result<Socket> {
    ws::open(node.http, TIMEOUT)
}

/// Frames until `n` of type `message` came; the others too.
fn messages(ws: &mut Socket, n: usize) -> anyhow::Result<(Vec<Value>, Vec<Value>)> {
    let (mut got, mut other) = (Vec::new(), Vec::new());
    while got.len() < n {
        let v = next(ws)?;
        if v["type"] == "message" {
            got.push(v);
        } else {
            other.push(v);
        }
    }
    Ok((got, other))
}

/// `n` messages of 8 KiB (payload `00000xxx…`, numbered) into `topic`, XADDs pipelined over
/// RESP; the connection, for more.
fn big_messages(node: &Node, topic: &str, n: usize) -> anyhow::Result<redis::Connection> {
    let redis = redis::Client::open(format!("redis://127.0.0.1:{}/", node.resp))?;
    let mut con = redis.get_connection()?;
    more_big_messages(&mut con, topic, 0..n)?;
    Ok(con)
}

/// Messages numbered `range` as [`big_messages`] stores them.
fn more_big_messages(
    con: &mut redis::Connection,
    topic: &str,
    range: std::ops::Range<usize>,
) -> anyhow::Result<()> {
    let body = "x".repeat(8192);
    let mut pipe = redis::pipe();
    for i in range {
        pipe.cmd("XADD")
            .arg(topic)
            .arg("*")
            .arg("payload")
            .arg(format!("{i:05}{body}"))
            .ignore();
    }
    pipe.query::<()>(con)?;
    Ok(())
}

/// A client that stopped reading for a while: it reads what it was sent (fewer than `want`,
/// in order), then the close 4008; a new connection subscribing (`id`, `topic`) from its last
/// cursor gets the rest of `want`, once each, in order.
fn closed_then_resumed(
    node: &Node,
    ws: &mut Socket,
    (id, topic): (&str, &str),
    want: std::ops::Range<usize>,
) -> anyhow::Result<()> {
    let want: Vec<usize> = want.collect();
    let (mut seen, last_cursor, code) = until_closed(ws)?;
    ensure!(code == 4008, "closed with {code}");
    ensure!(
        seen.len() < want.len(),
        "closed after all {} came",
        seen.len()
    );
    let mut again = open(node)?;
    let from = last_cursor.context("a cursor")?;
    subscribe(
        &mut again,
        json!({"type": "subscribe", "id": id, "topic": topic, "from": from}),
    )?;
    let rest = want.len() - seen.len();
    seen.extend(numbers(&messages(&mut again, rest)?.0)?);
    ensure!(seen == want, "not each message once, in order");
    Ok(())
}

/// Reads a client that stopped reading for a while: the numbers of the big messages it was
/// sent before its close, the last one's cursor, and the close code.
fn until_closed(ws: &mut Socket) -> anyhow::Result<(Vec<usize>, Option<String>, u16)> {
    let (mut seen, mut last_cursor) = (Vec::new(), None);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        ensure!(Instant::now() < deadline, "no close");
        match ws.read() {
            Ok(Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str())?;
                if v["type"] == "message" {
                    seen.extend(numbers(std::slice::from_ref(&v))?);
                    last_cursor = v["cursor"].as_str().map(String::from);
                }
            }
            Ok(Message::Close(Some(frame))) => {
                return Ok((seen, last_cursor, u16::from(frame.code)));
            }
            Ok(_) => {}
            Err(e) => bail!("{e} after {} messages", seen.len()),
        }
    }
}

/// Every reader thread got exactly `want` (each message once, in order).
fn each_got(
    readers: Vec<std::thread::JoinHandle<anyhow::Result<Vec<usize>>>>,
    want: &[usize],
) -> anyhow::Result<()> {
    for r in readers {
        let got = r.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
        ensure!(
            got == want,
            "a reader got {} messages, not each once in order",
            got.len()
        );
    }
    Ok(())
}

/// The numbers of big messages' payloads (`00042xxx…` → 42).
fn numbers(got: &[Value]) -> anyhow::Result<Vec<usize>> {
    got.iter()
        .map(|m| {
            let p = m["payload"].as_str().context("payload")?;
            Ok(p.get(..5).context("number")?.parse()?)
        })
        .collect()
}

#[test]
fn websocket_subscribe_publish_and_resume() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = node(dir.path())?;
    let mut ws = open(&node)?;
    send(&mut ws, json!({"type": "ping", "ref": 1}))?;
    ensure!(next(&mut ws)? == json!({"type": "pong", "ref": 1}));
    node.publish(&["-t", "w/a", "-m", "old", "-q", "1"])?;
    subscribe(
        &mut ws,
        json!({"type": "subscribe", "id": "live", "topic": "w/a"}),
    )?;
    // Latest: only what comes after, from MQTT and from this socket.
    node.publish(&["-t", "w/a", "-m", "from mqtt", "-q", "1"])?;
    send(
        &mut ws,
        json!({"type": "publish", "ref": "p1", "topic": "w/a", "payload": "from ws"}),
    )?;
    let (got, mut other) = messages(&mut ws, 2)?;
    // The publish's answer comes after its commit, before or after the message it made.
    while !other.iter().any(|v| v["type"] == "published") {
        other.push(next(&mut ws)?);
    }
    ensure!(
        got.iter().all(|m| m["sub"] == "live")
            && got[0]["payload"] == "from mqtt"
            && got[1]["payload"] == "from ws",
        "{got:?}"
    );
    let published = other
        .iter()
        .find(|v| v["type"] == "published")
        .context("published")?;
    ensure!(
        published["ref"] == "p1" && published["cursor"] == got[1]["cursor"],
        "{published} {got:?}"
    );
    // Earliest, by filter: everything so far, in order; the answer comes before the
    // subscription's first message.
    subscribe(
        &mut ws,
        json!({"type": "subscribe", "id": "all", "filter": "w/+", "from": "earliest"}),
    )?;
    let (got, other) = messages(&mut ws, 3)?;
    ensure!(other.is_empty(), "{other:?}");
    let payloads: Vec<&str> = got.iter().filter_map(|m| m["payload"].as_str()).collect();
    ensure!(payloads == ["old", "from mqtt", "from ws"], "{got:?}");
    // Unsubscribed: no more for it; the other goes on.
    send(&mut ws, json!({"type": "unsubscribe", "id": "all"}))?;
    ensure!(next(&mut ws)?["type"] == "unsubscribed");
    node.publish(&["-t", "w/a", "-m", "after", "-q", "1"])?;
    let (got, _) = messages(&mut ws, 1)?;
    ensure!(
        got[0]["sub"] == "live" && got[0]["payload"] == "after",
        "{got:?}"
    );
    // Bad frames are answered, the connection stays.
    send(&mut ws, json!({"type": "subscribe", "topic": "w/a"}))?;
    ensure!(next(&mut ws)?["error"] == "bad_request");
    ws.send(Message::text("not json"))?;
    ensure!(next(&mut ws)?["error"] == "bad_request");
    send(
        &mut ws,
        json!({"type": "subscribe", "id": "x", "topic": "w/a", "from": "junk"}),
    )?;
    ensure!(next(&mut ws)?["error"] == "bad_cursor");
    // A client's close is answered with a close: a clean end, not an abort.
    ws.close(None)?;
    let answer = loop {
        match ws.read() {
            Ok(Message::Close(frame)) => break Ok(frame),
            Ok(_) => continue,
            Err(e) => break Err(e),
        }
    };
    ensure!(answer.is_ok(), "the close was not answered: {answer:?}");
    Ok(())
}

/// A client that does not read: once its queue has stayed full for 5 s the server closes with
/// 4008; it comes back from its last cursor and gets every later message once, in order.
#[test]
fn a_slow_client_is_closed_with_4008_and_resumes_from_its_cursor() -> anyhow::Result<()> {
    const N: usize = 3000;
    let dir = tempfile::tempdir()?;
    let node = node(dir.path())?;
    let mut ws = open(&node)?;
    subscribe(
        &mut ws,
        json!({"type": "subscribe", "id": "s", "topic": "big", "from": "earliest"}),
    )?;
    // 3000 messages of 8 KiB: far more than the queue and the socket buffers hold.
    big_messages(&node, "big", N)?;
    // Not reading for longer than the server waits for room in a full queue (5 s).
    std::thread::sleep(Duration::from_secs(8));
    // Now read: messages, then the close; back from the last cursor, the rest.
    closed_then_resumed(&node, &mut ws, ("s", "big"), 0..N)?;
    Ok(())
}

#[test]
fn a_live_tail_too_far_behind_skips_to_the_head() -> anyhow::Result<()> {
    const N: usize = 3000;
    let dir = tempfile::tempdir()?;
    let node = node(dir.path())?;
    let mut ws = open(&node)?;
    subscribe(
        &mut ws,
        json!({"type": "subscribe", "id": "live", "topic": "telemetry", "lag_limit_ms": 300}),
    )?;
    let mut con = big_messages(&node, "telemetry", N)?;
    // Not reading for a while (less than the 5 s that close a full queue): the tail falls
    // behind by more than its limit. (It may fall behind while the messages are still being
    // stored, too: then it skips to the head of that moment and goes on from there.)
    std::thread::sleep(Duration::from_millis(1500));
    // Every frame until the stream goes quiet: messages in order, each after the last skip.
    ws::set_timeout(&ws, Duration::from_millis(800))?;
    let (mut seen, mut skips) = (0usize, 0usize);
    let mut last = (0u64, 0u64);
    let id_of = |s: &str| -> anyhow::Result<(u64, u64)> {
        let id = s.split('@').next().context("id")?;
        let (ms, seq) = id.split_once('-').context("id")?;
        Ok((ms.parse()?, seq.parse()?))
    };
    while let Some(frame) = ws::try_next(&mut ws)? {
        match frame["type"].as_str() {
            Some("message") => {
                let id = id_of(frame["id"].as_str().context("id")?)?;
                ensure!(id > last, "{id:?} after {last:?}");
                last = id;
                seen += 1;
            }
            Some("skipped") => {
                ensure!(frame["sub"] == "live", "{frame}");
                let to = id_of(frame["cursor"].as_str().context("cursor")?)?;
                ensure!(to >= last, "skipped back to {to:?} from {last:?}");
                last = to;
                skips += 1;
            }
            _ => bail!("unexpected {frame}"),
        }
    }
    ensure!(skips >= 1 && seen < N, "{skips} skips, {seen} messages");
    // At the head now: what comes next arrives.
    ws::set_timeout(&ws, TIMEOUT)?;
    let _: String = redis::cmd("XADD")
        .arg(&["telemetry", "*", "payload", "fresh"])
        .query(&mut con)?;
    let (got, other) = messages(&mut ws, 1)?;
    ensure!(got[0]["payload"] == "fresh", "{got:?} {other:?}");
    Ok(())
}

/// Many followers of one topic share its live tail (one read and one rendering per message,
/// `hub.rs`): each still gets every message once, in order — joining while messages pour in,
/// and falling back to reading by cursor when it is behind — the same as reading alone.
#[test]
fn many_followers_of_a_topic_each_get_every_message_once_in_order() -> anyhow::Result<()> {
    const FOLLOWERS: usize = 20;
    const BURSTS: usize = 3;
    const PER_BURST: usize = 700;
    let dir = tempfile::tempdir()?;
    let node = node(dir.path())?;
    let mut sockets = Vec::new();
    for _ in 0..FOLLOWERS {
        let mut ws = open(&node)?;
        subscribe(
            &mut ws,
            json!({"type": "subscribe", "id": "t", "topic": "wide", "lag_limit_ms": 0}),
        )?;
        sockets.push(ws);
    }
    let redis = redis::Client::open(format!("redis://127.0.0.1:{}/", node.resp))?;
    let mut con = redis.get_connection()?;
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| {
            std::thread::spawn(move || -> anyhow::Result<Vec<usize>> {
                let (got, _) = messages(&mut ws, BURSTS * PER_BURST)?;
                got.iter()
                    .map(|m| Ok(m["fields"]["n"].as_str().context("n")?.parse()?))
                    .collect()
            })
        })
        .collect();
    for burst in 0..BURSTS {
        let mut pipe = redis::pipe();
        for i in 0..PER_BURST {
            let n = burst * PER_BURST + i;
            pipe.cmd("XADD")
                .arg(&["wide", "*", "n", &n.to_string()])
                .ignore();
        }
        pipe.query::<()>(&mut con)?;
        std::thread::sleep(Duration::from_millis(200));
    }
    each_got(readers, &(0..BURSTS * PER_BURST).collect::<Vec<_>>())
}

/// Subscribers at the head are written each new message by the topic's hub (`hub.rs`). One
/// that stops reading while messages pour in is let go by the hub when its queue fills, reads
/// by cursor until it is closed with 4008, and resumes with every later message once, in
/// order; the others get every message in order throughout; one that unsubscribed gets none
/// after its answer.
#[test]
fn a_live_subscriber_that_stops_reading_is_let_go_and_resumes() -> anyhow::Result<()> {
    const N: usize = 3000;
    let dir = tempfile::tempdir()?;
    let node = node(dir.path())?;
    // The topic exists: its hub can take subscribers from their first read.
    let mut con = big_messages(&node, "hot", 1)?;
    let live = json!({"type": "subscribe", "id": "h", "topic": "hot", "lag_limit_ms": 0});
    let mut sockets = Vec::new();
    for _ in 0..4 {
        let mut ws = open(&node)?;
        subscribe(&mut ws, live.clone())?;
        sockets.push(ws);
    }
    // Each at the head: message 1 comes to all.
    more_big_messages(&mut con, "hot", 1..2)?;
    for ws in &mut sockets {
        let (got, _) = messages(ws, 1)?;
        ensure!(numbers(&got)? == [1], "{:?}", numbers(&got));
    }
    let mut quitter = sockets.pop().context("socket")?;
    let mut slow = sockets.pop().context("socket")?;
    send(&mut quitter, json!({"type": "unsubscribe", "id": "h"}))?;
    ensure!(next(&mut quitter)?["type"] == "unsubscribed");
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| {
            std::thread::spawn(move || -> anyhow::Result<Vec<usize>> {
                numbers(&messages(&mut ws, N - 2)?.0)
            })
        })
        .collect();
    more_big_messages(&mut con, "hot", 2..N)?;
    let want: Vec<usize> = (2..N).collect();
    each_got(readers, &want)?;
    ws::set_timeout(&quitter, Duration::from_secs(1))?;
    ensure!(
        ws::try_next(&mut quitter)?.is_none(),
        "a frame after unsubscribing"
    );
    // The one that did not read: what it was sent in order, then 4008 (its queue stayed full).
    std::thread::sleep(Duration::from_secs(8));
    closed_then_resumed(&node, &mut slow, ("h", "hot"), 2..N)?;
    Ok(())
}

/// A client frame larger than the largest message (16 MiB) and its JSON's room closes that
/// connection (1009, message too big) without storing anything; others go on.
#[test]
fn an_oversized_frame_closes_the_connection() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = node(dir.path())?;
    let mut ws = open(&node)?;
    let payload = "x".repeat(17 << 20);
    let frame = format!(r#"{{"type":"publish","topic":"huge","payload":"{payload}"}}"#);
    // The server may close before the whole frame is written.
    let _ = ws.send(Message::text(frame));
    let closed = loop {
        match ws.read() {
            Ok(Message::Close(frame)) => break frame.map(|f| u16::from(f.code)),
            Ok(Message::Text(t)) => bail!("answered instead of closing: {t}"),
            Ok(_) => continue,
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                bail!("the connection stayed open")
            }
            // Reset or ended without a close frame.
            Err(_) => break None,
        }
    };
    ensure!(
        closed.is_none_or(|code| code == 1009),
        "closed with {closed:?}"
    );
    ensure!(node.resp(&["EXISTS", "huge"])? == ":0");
    let mut again = open(&node)?;
    send(&mut again, json!({"type": "ping", "ref": 1}))?;
    ensure!(next(&mut again)?["type"] == "pong");
    Ok(())
}
