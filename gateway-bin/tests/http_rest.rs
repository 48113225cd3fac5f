//! REST over the log against a real `manifold serve`, with `reqwest`: publish and read back,
//! topics that need percent-encoding in the URL, the body stored byte for byte (and reaching
//! MQTT and RESP as it is), form bodies as fields, message keys, idempotency keys, cursors
//! across a delete and re-create (`reset`), the topic list, bearer tokens and the errors.

mod common;

use std::time::Duration;

use anyhow::{Context, ensure};
use common::mqtt::{Node, node, node_with};
use reqwest::StatusCode;
use reqwest::blocking::Client;
use serde_json::Value;

fn http() -> anyhow::Result<Client> {
    Ok(Client::builder().timeout(Duration::from_secs(10)).build()?)
}

/// `/topics/{topic}` with the topic as one percent-encoded segment.
fn url(node: &Node, topic: &str, rest: &str) -> String {
    let encoded: String = form_urlencoded_segment(topic);
    format!("http://127.0.0.1:{}/topics/{encoded}{rest}", node.http)
}

/// Percent-encodes everything but unreserved characters (RFC 3986), so `/` is `%2F`.
fn form_urlencoded_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn publish(c: &Client, node: &Node, topic: &str, body: &'static [u8]) -> anyhow::Result<Value> {
    let r = c
        .post(url(node, topic, ""))
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()?;
    ensure!(r.status() == StatusCode::CREATED, "{}", r.status());
    Ok(r.json()?)
}

fn history(
    c: &Client,
    node: &Node,
    topic: &str,
    query: &str,
) -> anyhow::Result<(StatusCode, Value)> {
    let r = c
        .get(url(node, topic, &format!("/messages{query}")))
        .send()?;
    let status = r.status();
    Ok((status, r.json()?))
}

#[test]
fn publish_read_back_and_list_topics_over_rest() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = node(dir.path())?;
    let c = http()?;
    // Topics with '/', '+', spaces and non-ASCII, each one path segment.
    for topic in ["sensors/a", "odd+name", "with space", "température/ünï"] {
        let ack = publish(&c, &node, topic, b"21.5")?;
        let (status, read) = history(&c, &node, topic, "")?;
        ensure!(status == StatusCode::OK, "{topic}: {status}");
        let m = &read["messages"][0];
        ensure!(
            m["topic"] == topic && m["payload"] == "21.5",
            "{topic}: {read}"
        );
        ensure!(
            m["id"] == ack["id"] && m["cursor"] == ack["cursor"],
            "{ack} {m}"
        );
    }

    // The body byte for byte, with its content type: JSON stays the device's JSON, binary
    // comes back as base64, and MQTT and RESP see the same bytes.
    let json_body = br#"{"temp": 21.5, "unit": "C"}"#;
    let sub = node.subscribe(&["-t", "dev/json", "-C", "1", "-W", "10"])?;
    std::thread::sleep(Duration::from_millis(500));
    let r = c
        .post(url(&node, "dev/json", ""))
        .header("content-type", "application/json")
        .body(&json_body[..])
        .send()?;
    ensure!(r.status() == StatusCode::CREATED);
    let out = sub.wait_with_output()?;
    ensure!(out.stdout == [&json_body[..], b"\n"].concat(), "{out:?}");
    let (_, read) = history(&c, &node, "dev/json", "")?;
    ensure!(
        read["messages"][0]["properties"]["content-type"] == "application/json",
        "{read}"
    );
    publish(&c, &node, "dev/bin", b"\xff\x00\x01")?;
    let (_, read) = history(&c, &node, "dev/bin", "")?;
    ensure!(read["messages"][0]["payload"]["base64"] == "/wAB", "{read}");
    ensure!(node.resp(&["XLEN", "dev/bin"])? == ":1");

    // A form body becomes fields, in order; a repeated name is an array.
    let r = c
        .post(url(&node, "forms", ""))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("temp=21.5&tag=a&tag=b%20c")
        .send()?;
    ensure!(r.status() == StatusCode::CREATED);
    let (_, read) = history(&c, &node, "forms", "")?;
    let fields = &read["messages"][0]["fields"];
    ensure!(fields["temp"] == "21.5", "{read}");
    ensure!(fields["tag"] == serde_json::json!(["a", "b c"]), "{read}");
    ensure!(node.resp(&["XLEN", "forms"])? == ":1");

    // A message key is kept with the message (the IndexFile's key).
    let r = c
        .post(url(&node, "keyed", ""))
        .header("x-message-key", "order-17")
        .body("paid")
        .send()?;
    ensure!(r.status() == StatusCode::CREATED);
    let (_, read) = history(&c, &node, "keyed", "")?;
    ensure!(read["messages"][0]["key"] == "order-17", "{read}");
    // ...and found by it, through the IndexFile, newest first, within a time range.
    std::thread::sleep(Duration::from_millis(20));
    for (key, body) in [("order-18", "open"), ("order-17", "shipped")] {
        let r = c
            .post(url(&node, "keyed", ""))
            .header("x-message-key", key)
            .body(body)
            .send()?;
        ensure!(r.status() == StatusCode::CREATED);
    }
    let (status, found) = history(&c, &node, "keyed", "?key=order-17")?;
    ensure!(status == StatusCode::OK, "{status}");
    let bodies: Vec<&str> = found["messages"]
        .as_array()
        .context("messages")?
        .iter()
        .filter_map(|m| m["payload"].as_str())
        .collect();
    ensure!(bodies == ["shipped", "paid"], "{found}");
    let newest = found["messages"][0]["timestamp_ms"]
        .as_u64()
        .context("ms")?;
    let (_, later) = history(&c, &node, "keyed", &format!("?key=order-17&from={newest}"))?;
    ensure!(
        later["messages"].as_array().map(Vec::len) == Some(1),
        "{later}"
    );
    let (_, none) = history(&c, &node, "keyed", "?key=order-99")?;
    ensure!(none["messages"] == serde_json::json!([]), "{none}");

    // An idempotency key: a repeat is answered with the first message, stored once.
    let mut acks = Vec::new();
    for _ in 0..2 {
        let r = c
            .post(url(&node, "once", ""))
            .header("idempotency-key", "k-1")
            .body("charge")
            .send()?;
        ensure!(r.status() == StatusCode::CREATED);
        acks.push(r.json::<Value>()?);
    }
    ensure!(acks[0]["id"] == acks[1]["id"], "{acks:?}");
    ensure!(node.resp(&["XLEN", "once"])? == ":1");

    // Cursors page through in order, and back with reverse.
    for i in 0..5 {
        let body: &'static [u8] = Box::leak(format!("m{i}").into_bytes().into_boxed_slice());
        publish(&c, &node, "paged", body)?;
    }
    let (_, first) = history(&c, &node, "paged", "?limit=2")?;
    let next = first["next"].as_str().context("next")?;
    let (_, second) = history(&c, &node, "paged", &format!("?limit=2&after={next}"))?;
    let payloads = |v: &Value| -> Vec<String> {
        v["messages"]
            .as_array()
            .map(|a| a.iter().map(|m| m["payload"].to_string()).collect())
            .unwrap_or_default()
    };
    ensure!(payloads(&first) == ["\"m0\"", "\"m1\""], "{first}");
    ensure!(payloads(&second) == ["\"m2\"", "\"m3\""], "{second}");
    let last = second["next"].as_str().context("next")?;
    let (_, back) = history(&c, &node, "paged", &format!("?reverse=true&after={last}"))?;
    ensure!(payloads(&back) == ["\"m2\"", "\"m1\"", "\"m0\""], "{back}");

    // A cursor of a deleted topic's earlier incarnation: reset, from the start.
    ensure!(node.resp(&["DEL", "paged"])? == ":1");
    publish(&c, &node, "paged", b"new life")?;
    let (_, again) = history(&c, &node, "paged", &format!("?after={last}"))?;
    ensure!(
        again["reset"] == true && payloads(&again) == ["\"new life\""],
        "{again}"
    );

    // The topic list, by MQTT filter.
    let list: Value = c
        .get(format!(
            "http://127.0.0.1:{}/topics?match=dev/%2B",
            node.http
        ))
        .send()?
        .json()?;
    let names: Vec<&str> = list["topics"]
        .as_array()
        .context("topics")?
        .iter()
        .filter_map(|t| t["topic"].as_str())
        .collect();
    ensure!(names == ["dev/bin", "dev/json"], "{list}");
    ensure!(list["topics"][1]["length"] == 1, "{list}");
    Ok(())
}

#[test]
fn rest_errors_are_json_with_the_right_status() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("manifold.toml");
    std::fs::write(
        &config,
        "[[principal]]\nname = \"writer\"\nsecret = \"pw\"\npublish = [\"*\"]\nsubscribe = [\"*\"]\n\n\
         [[principal]]\nname = \"default\"\nsubscribe = [\"public/*\"]\n",
    )?;
    let config = config.display().to_string();
    let node = node_with(&dir.path().join("data"), &["--config", &config])?;
    let c = http()?;
    let status_error = |r: reqwest::blocking::Response| -> anyhow::Result<(StatusCode, String)> {
        let status = r.status();
        let v: Value = r.json()?;
        ensure!(v["message"].is_string(), "{v}");
        Ok((status, v["error"].as_str().unwrap_or_default().to_string()))
    };
    // Unauthenticated: may not publish; a bearer token of a principal may.
    let r = c.post(url(&node, "public/x", "")).body("hi").send()?;
    ensure!(status_error(r)? == (StatusCode::FORBIDDEN, "forbidden".into()));
    let r = c
        .post(url(&node, "public/x", ""))
        .bearer_auth("writer:wrong")
        .body("hi")
        .send()?;
    ensure!(status_error(r)? == (StatusCode::UNAUTHORIZED, "unauthorized".into()));
    let r = c
        .post(url(&node, "public/x", ""))
        .bearer_auth("writer:pw")
        .body("hi")
        .send()?;
    ensure!(r.status() == StatusCode::CREATED, "{}", r.status());
    // What a browser can send instead of a header: ?access_token= and the cookie.
    let r = c
        .post(url(&node, "public/x", "?access_token=writer:pw"))
        .body("by query")
        .send()?;
    ensure!(
        r.status() == StatusCode::CREATED,
        "query token: {}",
        r.status()
    );
    let r = c
        .post(url(&node, "public/x", ""))
        .header("cookie", "theme=dark; manifold_token=writer:pw")
        .body("by cookie")
        .send()?;
    ensure!(r.status() == StatusCode::CREATED, "cookie: {}", r.status());
    let r = c
        .get(format!(
            "http://127.0.0.1:{}/sse?topic=private&access_token=writer:wrong",
            node.http
        ))
        .send()?;
    ensure!(status_error(r)? == (StatusCode::UNAUTHORIZED, "unauthorized".into()));
    let r = c
        .get(format!(
            "http://127.0.0.1:{}/poll?topic=private&timeout=100ms&access_token=writer:pw",
            node.http
        ))
        .send()?;
    ensure!(
        r.status() == StatusCode::OK,
        "a token that may read: {}",
        r.status()
    );
    // `/ws` without a WebSocket upgrade (the server does the handshake itself): 400, and a
    // wrong token before any upgrade: 401.
    let ws = format!("http://127.0.0.1:{}/ws", node.http);
    let r = c.get(&ws).send()?;
    ensure!(status_error(r)? == (StatusCode::BAD_REQUEST, "bad_request".into()));
    let r = c
        .get(&ws)
        .header("connection", "keep-alive, Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .send()?;
    ensure!(status_error(r)? == (StatusCode::BAD_REQUEST, "bad_request".into()));
    let r = c.get(format!("{ws}?access_token=writer:wrong")).send()?;
    ensure!(status_error(r)? == (StatusCode::UNAUTHORIZED, "unauthorized".into()));
    // Reading what the default principal may not subscribe to.
    let r = c.get(url(&node, "private", "/messages")).send()?;
    ensure!(status_error(r)?.0 == StatusCode::FORBIDDEN);
    // Unknown topic, bad cursor, bad topic, bad filter.
    let r = c.get(url(&node, "public/none", "/messages")).send()?;
    ensure!(status_error(r)? == (StatusCode::NOT_FOUND, "unknown_topic".into()));
    let r = c
        .get(url(&node, "public/x", "/messages?after=nonsense"))
        .send()?;
    ensure!(status_error(r)? == (StatusCode::BAD_REQUEST, "bad_cursor".into()));
    let r = c
        .post(format!("http://127.0.0.1:{}/topics/%24SYS%2Fx", node.http))
        .bearer_auth("writer:pw")
        .body("x")
        .send()?;
    ensure!(
        status_error(r)? == (StatusCode::FORBIDDEN, "forbidden".into()),
        "$SYS is reserved"
    );
    let r = c
        .get(format!(
            "http://127.0.0.1:{}/topics?match=a/%23/b",
            node.http
        ))
        .send()?;
    ensure!(status_error(r)? == (StatusCode::BAD_REQUEST, "bad_filter".into()));
    // A form body without fields.
    let r = c
        .post(url(&node, "public/x", ""))
        .bearer_auth("writer:pw")
        .header("content-type", "application/x-www-form-urlencoded")
        .body("")
        .send()?;
    ensure!(status_error(r)? == (StatusCode::BAD_REQUEST, "no_fields".into()));
    Ok(())
}

/// Long-polling: answers at once when something after the cursor exists; otherwise waits and
/// answers as soon as a message comes (here one published over MQTT), or with nothing at the
/// timeout — always with the cursor to poll from next. Several topics or an MQTT filter poll
/// by log position.
#[test]
fn long_polls_wake_on_a_publish_and_time_out_with_the_next_cursor() -> anyhow::Result<()> {
    use std::time::Instant;
    let dir = tempfile::tempdir()?;
    let node = node(dir.path())?;
    let c = http()?;
    let poll = |query: &str| -> anyhow::Result<Value> {
        let r = c
            .get(format!("http://127.0.0.1:{}/poll?{query}", node.http))
            .send()?;
        ensure!(r.status() == StatusCode::OK, "{}", r.status());
        Ok(r.json()?)
    };
    let first = publish(&c, &node, "lp/a", b"one")?;
    let cursor0 = first["cursor"].as_str().context("cursor")?.to_string();
    // Something after the cursor already: at once.
    let (_, read) = history(&c, &node, "lp/a", "")?;
    ensure!(read["messages"][0]["payload"] == "one");
    publish(&c, &node, "lp/a", b"two")?;
    let started = Instant::now();
    let got = poll(&format!("topic=lp%2Fa&after={cursor0}&timeout=20s"))?;
    ensure!(started.elapsed() < Duration::from_secs(5), "at once");
    ensure!(got["messages"][0]["payload"] == "two", "{got}");
    let next = got["next"].as_str().context("next")?.to_string();

    // Nothing yet: the poll waits until an MQTT client publishes, then answers.
    let waiting = std::thread::scope(|s| -> anyhow::Result<Value> {
        let t = s.spawn(|| poll(&format!("topic=lp%2Fa&after={next}&timeout=20s")));
        std::thread::sleep(Duration::from_millis(700));
        let sent = Instant::now();
        node.publish(&["-t", "lp/a", "-m", "three", "-q", "1"])?;
        let got = t.join().map_err(|_| anyhow::anyhow!("poll thread"))??;
        ensure!(
            sent.elapsed() < Duration::from_secs(5),
            "woken by the publish"
        );
        Ok(got)
    })?;
    ensure!(waiting["messages"][0]["payload"] == "three", "{waiting}");

    // Nothing at all: empty at the timeout, with the same cursor.
    let next = waiting["next"].as_str().context("next")?.to_string();
    let started = Instant::now();
    let idle = poll(&format!("topic=lp%2Fa&after={next}&timeout=500ms"))?;
    ensure!(
        started.elapsed() >= Duration::from_millis(450),
        "waited the timeout"
    );
    ensure!(
        idle["messages"] == serde_json::json!([]) && idle["next"] == next,
        "{idle}"
    );

    // A filter (and several topics) by log position: from now, then on from `next`.
    let waiting = std::thread::scope(|s| -> anyhow::Result<Value> {
        let t = s.spawn(|| poll("filter=lp%2F%2B&timeout=20s"));
        std::thread::sleep(Duration::from_millis(700));
        publish(&c, &node, "lp/b", b"four")?;
        t.join().map_err(|_| anyhow::anyhow!("poll thread"))?
    })?;
    ensure!(
        waiting["messages"][0]["topic"] == "lp/b" && waiting["messages"][0]["payload"] == "four",
        "{waiting}"
    );
    let next = waiting["next"].as_str().context("next")?.to_string();
    publish(&c, &node, "lp/a", b"five")?;
    publish(&c, &node, "other", b"not matched")?;
    publish(&c, &node, "lp/b", b"six")?;
    let more = poll(&format!("filter=lp%2F%2B&after={next}&timeout=5s"))?;
    let payloads: Vec<&str> = more["messages"]
        .as_array()
        .context("messages")?
        .iter()
        .filter_map(|m| m["payload"].as_str())
        .collect();
    ensure!(payloads == ["five", "six"], "{more}");
    let both = poll(&format!("topic=lp%2Fa&topic=other&after={next}&timeout=5s"))?;
    let payloads: Vec<&str> = both["messages"]
        .as_array()
        .context("messages")?
        .iter()
        .filter_map(|m| m["payload"].as_str())
        .collect();
    ensure!(payloads == ["five", "not matched"], "{both}");
    // Bad requests.
    for query in [
        "timeout=5s",
        "topic=a&filter=b",
        "filter=a%2F%23%2Fb",
        "topic=a&after=x",
    ] {
        let r = c
            .get(format!("http://127.0.0.1:{}/poll?{query}", node.http))
            .send()?;
        ensure!(
            r.status() == StatusCode::BAD_REQUEST,
            "{query}: {}",
            r.status()
        );
    }
    Ok(())
}

/// A shutdown does not wait out a waiting poll: SIGTERM answers it at once (no messages, its
/// cursor) and the node stops cleanly within seconds, not after the poll's 60 s.
#[test]
fn a_waiting_poll_is_answered_when_the_node_shuts_down() -> anyhow::Result<()> {
    use std::time::Instant;
    let dir = tempfile::tempdir()?;
    let mut node = node(dir.path())?;
    let c = http()?;
    let ack = publish(&c, &node, "sd", b"x")?;
    let cursor = ack["cursor"].as_str().context("cursor")?.to_string();
    let url = format!(
        "http://127.0.0.1:{}/poll?topic=sd&after={cursor}&timeout=60s",
        node.http
    );
    let started = Instant::now();
    let answer = std::thread::scope(|s| -> anyhow::Result<Value> {
        let t = s.spawn(|| -> anyhow::Result<Value> {
            let r = Client::builder()
                .timeout(Duration::from_secs(90))
                .build()?
                .get(&url)
                .send()?;
            ensure!(r.status() == StatusCode::OK, "{}", r.status());
            Ok(r.json()?)
        });
        std::thread::sleep(Duration::from_millis(700));
        ensure!(node.terminate()?, "a clean exit");
        t.join().map_err(|_| anyhow::anyhow!("poll thread"))?
    })?;
    ensure!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    ensure!(
        answer["messages"] == serde_json::json!([]) && answer["next"] == cursor.as_str(),
        "{answer}"
    );
    Ok(())
}

/// One Server-Sent Event: its id, its event name and its data.
type SseEvent = (Option<String>, Option<String>, String);

/// Server-Sent Events read as a browser's `EventSource` would: `(id, event, data)` of each
/// event, comments and the `retry:` hint left out (the hint is noted).
struct Events {
    lines: std::io::Lines<std::io::BufReader<reqwest::blocking::Response>>,
    retry: Option<String>,
}

impl Events {
    fn open(node: &Node, query: &str, last_event_id: Option<&str>) -> anyhow::Result<Events> {
        use std::io::BufRead;
        let mut req = Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?
            .get(format!("http://127.0.0.1:{}/sse?{query}", node.http));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let r = req.send()?;
        ensure!(r.status() == StatusCode::OK, "{}", r.status());
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        ensure!(ct.starts_with("text/event-stream"), "{ct}");
        Ok(Events {
            lines: std::io::BufReader::new(r).lines(),
            retry: None,
        })
    }

    /// The next event; `None` when the stream ended.
    fn next(&mut self) -> anyhow::Result<Option<SseEvent>> {
        let (mut id, mut event, mut data) = (None, None, Vec::new());
        loop {
            let Some(line) = self.lines.next() else {
                return Ok(None);
            };
            let line = line?;
            if line.is_empty() {
                if !data.is_empty() {
                    return Ok(Some((id, event, data.join("\n"))));
                }
                continue;
            }
            match line.split_once(':') {
                Some(("", _)) => {} // a comment
                Some(("id", v)) => id = Some(v.trim_start().to_string()),
                Some(("event", v)) => event = Some(v.trim_start().to_string()),
                Some(("data", v)) => data.push(v.strip_prefix(' ').unwrap_or(v).to_string()),
                Some(("retry", v)) => self.retry = Some(v.trim().to_string()),
                _ => {}
            }
        }
    }
}

/// SSE: messages as they are committed (from HTTP and from MQTT), each event's id its cursor;
/// `Last-Event-ID` resumes after it; a filter stream by log position; the retry hint; a
/// shutdown ends the stream and the node stops cleanly at once.
#[test]
fn server_sent_events_stream_resume_by_last_event_id_and_end_at_shutdown() -> anyhow::Result<()> {
    use std::time::Instant;
    let dir = tempfile::tempdir()?;
    let mut node = node(dir.path())?;
    let c = http()?;
    publish(&c, &node, "ev/a", b"before")?;
    let mut events = Events::open(&node, "topic=ev%2Fa", None)?;
    // Only what comes after the stream opened.
    publish(&c, &node, "ev/a", b"first")?;
    node.publish(&["-t", "ev/a", "-m", "second", "-q", "1"])?;
    let mut got = Vec::new();
    while got.len() < 2 {
        let (id, event, data) = events.next()?.context("the stream ended")?;
        ensure!(event.is_none(), "{event:?}");
        let m: Value = serde_json::from_str(&data)?;
        ensure!(
            id.as_deref() == m["cursor"].as_str(),
            "id is the cursor: {id:?} {m}"
        );
        got.push((
            id.context("id")?,
            m["payload"].as_str().unwrap_or_default().to_string(),
        ));
    }
    ensure!(got[0].1 == "first" && got[1].1 == "second", "{got:?}");
    ensure!(
        events.retry.as_deref() == Some("3000"),
        "retry hint: {:?}",
        events.retry
    );

    // A reconnect with Last-Event-ID resumes after it.
    let mut resumed = Events::open(&node, "topic=ev%2Fa", Some(&got[0].0))?;
    let (_, _, data) = resumed.next()?.context("resumed")?;
    ensure!(
        serde_json::from_str::<Value>(&data)?["payload"] == "second",
        "{data}"
    );

    // A filter stream: several topics, by log position.
    let mut filtered = Events::open(&node, "filter=ev%2F%2B", None)?;
    publish(&c, &node, "ev/b", b"third")?;
    publish(&c, &node, "other", b"not matched")?;
    publish(&c, &node, "ev/a", b"fourth")?;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let (_, _, data) = filtered.next()?.context("filter stream")?;
        let m: Value = serde_json::from_str(&data)?;
        seen.push(format!(
            "{} {}",
            m["topic"].as_str().unwrap_or_default(),
            m["payload"]
        ));
    }
    ensure!(seen == ["ev/b \"third\"", "ev/a \"fourth\""], "{seen:?}");

    // SIGTERM: the streams end and the node stops at once.
    let started = Instant::now();
    ensure!(node.terminate()?, "a clean exit");
    // (The first stream has "fourth" still to give: ev/a's.)
    let mut rest = Vec::new();
    while let Some((_, _, data)) = events.next()? {
        rest.push(data);
    }
    ensure!(
        rest.len() == 1 && rest[0].contains("fourth"),
        "then the end: {rest:?}"
    );
    ensure!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}

/// CORS (`--http-cors-origins`): an allowed origin's request carries
/// `Access-Control-Allow-Origin` and its preflight is answered 204 with the methods and
/// headers; another origin gets no CORS header, and without the flag no origin does.
#[test]
fn cors_allows_only_the_configured_origins() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cors = node_with(
        &dir.path().join("cors"),
        &[
            "--http-cors-origins",
            "http://console.example, http://localhost:3000",
        ],
    )?;
    let c = http()?;
    let allow = |r: &reqwest::blocking::Response| {
        r.headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    let r = c
        .get(format!("http://127.0.0.1:{}/topics", cors.http))
        .header("origin", "http://localhost:3000")
        .send()?;
    ensure!(r.status() == StatusCode::OK);
    ensure!(
        allow(&r).as_deref() == Some("http://localhost:3000"),
        "{:?}",
        r.headers()
    );
    let r = c
        .request(reqwest::Method::OPTIONS, url(&cors, "sensors/a", ""))
        .header("origin", "http://console.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type, idempotency-key",
        )
        .send()?;
    ensure!(r.status() == StatusCode::NO_CONTENT, "{}", r.status());
    ensure!(allow(&r).as_deref() == Some("http://console.example"));
    let headers = r
        .headers()
        .get("access-control-allow-headers")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    ensure!(
        headers.contains("idempotency-key") && headers.contains("content-type"),
        "{headers}"
    );
    let r = c
        .get(format!("http://127.0.0.1:{}/topics", cors.http))
        .header("origin", "http://evil.example")
        .send()?;
    ensure!(allow(&r).is_none(), "another origin: {:?}", r.headers());
    drop(cors);
    let plain = node(&dir.path().join("plain"))?;
    let r = c
        .get(format!("http://127.0.0.1:{}/topics", plain.http))
        .header("origin", "http://localhost:3000")
        .send()?;
    ensure!(allow(&r).is_none(), "no CORS by default");
    Ok(())
}
