//! The web console and the browser's own push clients, in a real headless Chromium (Debian's
//! `chromium`, which `.ci/run` installs) driven over the DevTools protocol: the console loads
//! without console errors or exceptions and shows the node, topics, consumer groups and MQTT
//! clients; messages published over MQTT and RESP appear in its live tail; its publish box
//! stores a message; the browser's native `EventSource` and `WebSocket` receive messages and,
//! after a SIGKILL and restart of the server, resume with every later message once, in order
//! (`EventSource` by `Last-Event-ID`, the page's WebSocket from its last cursor). A screenshot
//! is kept in the target directory's `tmp/console.png`.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use base64::Engine as _;
use common::mqtt::{Node, node};
use serde_json::{Value, json};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

/// A headless Chromium and one page of it, over the DevTools protocol.
struct Browser {
    child: Child,
    socket: WebSocket<MaybeTlsStream<TcpStream>>,
    session: String,
    next_id: u64,
    /// Events seen so far (console calls, exceptions, log entries).
    events: Vec<Value>,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    fn start() -> anyhow::Result<Browser> {
        let profile = tempfile::tempdir()?;
        let mut child = Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
                "--window-size=1400,1100",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("chromium (Debian's package `chromium`; .ci/run installs it)")?;
        let stderr = child.stderr.take().context("stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let url = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .context("chromium printed no DevTools address")?;
            if let Some(url) = line.strip_prefix("DevTools listening on ") {
                break url.trim().to_string();
            }
        };
        let (socket, _) = tungstenite::connect(url)?;
        if let MaybeTlsStream::Plain(s) = socket.get_ref() {
            s.set_read_timeout(Some(Duration::from_millis(200)))?;
        }
        let mut browser = Browser {
            child,
            socket,
            session: String::new(),
            next_id: 0,
            events: Vec::new(),
            _profile: profile,
        };
        let target = browser.call("Target.createTarget", json!({"url": "about:blank"}))?;
        let target = target["targetId"].as_str().context("targetId")?.to_string();
        let attached = browser.call(
            "Target.attachToTarget",
            json!({"targetId": target, "flatten": true}),
        )?;
        browser.session = attached["sessionId"]
            .as_str()
            .context("sessionId")?
            .to_string();
        for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
            browser.call(domain, json!({}))?;
        }
        Ok(browser)
    }

    /// One DevTools command (to the page once attached); its result.
    fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut frame = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            frame["sessionId"] = Value::from(self.session.clone());
        }
        self.socket.send(Message::text(frame.to_string()))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            ensure!(Instant::now() < deadline, "{method}: no answer");
            let Some(v) = self.read()? else { continue };
            if v["id"] == id {
                if let Some(e) = v.get("error") {
                    bail!("{method}: {e}");
                }
                return Ok(v["result"].clone());
            }
            if v.get("method").is_some() {
                self.events.push(v);
            }
        }
    }

    fn read(&mut self) -> anyhow::Result<Option<Value>> {
        match self.socket.read() {
            Ok(Message::Text(t)) => Ok(Some(serde_json::from_str(t.as_str())?)),
            Ok(_) => Ok(None),
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    fn eval(&mut self, expression: &str) -> anyhow::Result<Value> {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
        )?;
        if let Some(e) = r.get("exceptionDetails") {
            bail!("{expression}: {e}");
        }
        Ok(r["result"]["value"].clone())
    }

    /// Waits up to `secs` for `expression` to be true; its last value otherwise.
    fn wait_for(&mut self, expression: &str, secs: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if self.eval(expression)? == Value::Bool(true) {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "still not true: {expression}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Console errors, uncaught exceptions and error log entries seen so far.
    fn errors(&self) -> Vec<&Value> {
        self.events
            .iter()
            .filter(|e| match e["method"].as_str() {
                Some("Runtime.exceptionThrown") => true,
                Some("Runtime.consoleAPICalled") => {
                    matches!(e["params"]["type"].as_str(), Some("error" | "assert"))
                }
                Some("Log.entryAdded") => e["params"]["entry"]["level"] == "error",
                _ => false,
            })
            .collect()
    }

    fn screenshot(&mut self, path: &std::path::Path) -> anyhow::Result<()> {
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}))?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().context("data")?)?;
        std::fs::write(path, png)?;
        Ok(())
    }
}

/// A `mosquitto_pub` of `payload` to `topic`.
fn mqtt_publish(node: &Node, topic: &str, payload: &str) -> anyhow::Result<()> {
    node.publish(&["-q", "1", "-t", topic, "-m", payload])
}

fn rest_publish(node: &Node, topic: &str, body: &str) -> anyhow::Result<()> {
    let r = reqwest::blocking::Client::new()
        .post(format!("http://127.0.0.1:{}/topics/{topic}", node.http))
        .body(body.to_string())
        .send()?;
    ensure!(r.status() == reqwest::StatusCode::CREATED, "{}", r.status());
    Ok(())
}

/// The page's script for the browser's own push clients: an `EventSource` and a `WebSocket`
/// on topic `feed`, each collecting payloads; the WebSocket reconnects and resubscribes from
/// its last cursor, as a page would.
const CLIENTS: &str = r#"
window.viaSse = [];
window.viaWs = [];
const es = new EventSource('/sse?topic=feed');
es.onmessage = (e) => window.viaSse.push(JSON.parse(e.data).payload);
es.onopen = () => { window.sseOpen = true; };
es.onerror = () => {};
let cursor = null;
function openWs() {
  const ws = new WebSocket('ws://' + location.host + '/ws');
  ws.onopen = () => ws.send(JSON.stringify(
    {type: 'subscribe', id: 'f', topic: 'feed', from: cursor || 'latest'}));
  ws.onmessage = (e) => {
    const f = JSON.parse(e.data);
    if (f.type === 'subscribed') window.wsReady = true;
    if (f.type === 'message') { cursor = f.cursor; window.viaWs.push(f.payload); }
  };
  // Back after 2 s: messages published meanwhile come only by resuming from the cursor.
  ws.onclose = () => setTimeout(openWs, 2000);
}
openWs();
true
"#;

#[test]
fn the_console_and_the_browsers_push_clients_in_headless_chromium() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut node = node(dir.path())?;
    // Something for each of the console's views: a topic with a consumer group (RESP), an MQTT
    // client with a subscription.
    ensure!(
        node.resp(&["XADD", "orders", "*", "item", "book"])?
            .starts_with('$')
    );
    ensure!(node.resp(&["XGROUP", "CREATE", "orders", "billing", "0"])? == "+OK");
    let mut watcher = node.subscribe(&["-i", "dash-watcher", "-t", "sensors/#", "-q", "1"])?;

    let mut b = Browser::start()?;
    let console = format!("http://127.0.0.1:{}/", node.http);
    b.call("Page.navigate", json!({ "url": console }))?;
    b.wait_for("document.readyState === 'complete'", 20)?;
    // The views fill from the node's routes.
    b.wait_for(
        "document.getElementById('node-role').textContent === 'leader'",
        20,
    )?;
    b.wait_for(
        "[...document.querySelectorAll('#topic-rows td')].some(t => t.textContent === 'orders')",
        20,
    )?;
    b.wait_for(
        "document.getElementById('group-rows').textContent.includes('billing')",
        20,
    )?;
    b.wait_for(
        "document.getElementById('client-rows').textContent.includes('dash-watcher')",
        20,
    )?;
    // The live tail follows `#` from the start; MQTT and RESP messages show in it.
    b.wait_for(
        "document.getElementById('tail-status').textContent.startsWith('following')",
        20,
    )?;
    mqtt_publish(&node, "sensors/kitchen", "{\"temp\": 21.5}")?;
    ensure!(
        node.resp(&["XADD", "orders", "*", "item", "lamp"])?
            .starts_with('$')
    );
    b.wait_for(
        "document.getElementById('tail-list').textContent.includes('\"temp\": 21.5')",
        20,
    )?;
    b.wait_for(
        "document.getElementById('tail-list').textContent.includes('item = lamp')",
        20,
    )?;
    // The publish box stores a message (read back over RESP).
    b.eval(
        "document.getElementById('pub-topic').value = 'from-console';
         document.getElementById('pub-payload').value = 'hello from the console';
         document.getElementById('pub-send').click(); true",
    )?;
    b.wait_for(
        "document.getElementById('pub-result').textContent.startsWith('stored as')",
        20,
    )?;
    ensure!(node.resp(&["XLEN", "from-console"])? == ":1");
    b.wait_for(
        "document.getElementById('tail-list').textContent.includes('hello from the console')",
        20,
    )?;
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console.png");
    b.screenshot(&shot)?;
    let errors = b.errors();
    ensure!(errors.is_empty(), "the console logged errors: {errors:?}");

    // The browser's own EventSource and WebSocket, across a SIGKILL and restart.
    ensure!(b.eval(CLIENTS)? == Value::Bool(true));
    b.wait_for("window.wsReady === true && window.sseOpen === true", 20)?;
    for i in 0..3 {
        rest_publish(&node, "feed", &format!("before-{i}"))?;
    }
    b.wait_for(
        "window.viaSse.length === 3 && window.viaWs.length === 3",
        20,
    )?;
    // Published at once after the restart, while both clients are still away (the
    // EventSource comes back after the server's `retry` of 3 s, the WebSocket after 2 s):
    // they get these only by resuming from their last cursor.
    node = node.kill_and_restart()?;
    for i in 0..3 {
        mqtt_publish(&node, "feed", &format!("after-{i}"))?;
    }
    let expected = json!([
        "before-0", "before-1", "before-2", "after-0", "after-1", "after-2"
    ]);
    b.wait_for("window.viaSse.length >= 6 && window.viaWs.length >= 6", 30)?;
    // Nothing twice, nothing missed, in order.
    ensure!(
        b.eval("window.viaSse")? == expected,
        "{}",
        b.eval("window.viaSse")?
    );
    ensure!(
        b.eval("window.viaWs")? == expected,
        "{}",
        b.eval("window.viaWs")?
    );
    // The console's own tail resumed too.
    mqtt_publish(&node, "sensors/kitchen", "after the restart")?;
    b.wait_for(
        "document.getElementById('tail-list').textContent.includes('after the restart')",
        30,
    )?;
    let _ = watcher.kill();
    let _ = watcher.wait();
    Ok(())
}
