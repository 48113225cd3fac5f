// Manifold's console: reads the HTTP routes every other client uses (GET /topics, /groups,
// /mqtt/clients, /cluster) and follows the live tail over the /ws push protocol, resuming
// from the last cursor after a reconnect. Builds every element with textContent: nothing a
// message carries is ever parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_ROWS = 200;
const REFRESH_MS = 2000;

const state = {
  token: localStorage.getItem("manifold_token") || "",
  ws: null,
  wsOpen: false,
  retryMs: 500,
  // The live tail: what it follows and the cursor of the last message shown.
  tail: null,
  received: 0,
};

function authHeaders(extra) {
  const h = Object.assign({}, extra || {});
  if (state.token) h["Authorization"] = "Bearer " + state.token;
  return h;
}

async function getJson(path) {
  const r = await fetch(path, { headers: authHeaders(), cache: "no-store" });
  if (!r.ok) throw new Error(path + ": " + r.status);
  return r.json();
}

function el(tag, props, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") e.className = v;
    else if (k === "title") e.title = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function fill(tbody, rows, emptyId) {
  tbody.replaceChildren(...rows);
  if (emptyId) $(emptyId).hidden = rows.length > 0;
}

function setStatus(id, text, kind) {
  const s = $(id);
  s.textContent = text;
  s.className = "status" + (kind ? " " + kind : "");
}

// ---- Node and cluster -------------------------------------------------------------------

async function refreshCluster() {
  try {
    const c = await getJson("/cluster");
    const role = $("node-role");
    role.textContent = c.role;
    role.className = "badge " + (c.role === "leader" ? "leader" : c.role === "follower" ? "follower" : "");
    $("node-id").textContent = c.node_id;
    $("node-term").textContent = c.term;
    $("node-leader").textContent = c.leader_id === null ? "none" : c.leader_id;
    $("node-applied").textContent = c.applied_index;
    const me = el("tr", {},
      el("td", {}, c.node_id, " (this node)"),
      el("td", {}, c.membership || "voter"),
      el("td", {}, c.role),
      el("td", { class: "num" }, "–"),
      el("td", {}, "–"));
    const peers = (c.peers || []).map((p) => {
      const lag = p.lag === null || p.lag === undefined ? "–" : p.lag;
      const role = p.id === c.leader_id ? "leader" : "follower";
      return el("tr", {},
        el("td", {}, p.id),
        el("td", {}, p.member || "voter"),
        el("td", {}, role),
        el("td", { class: "num" + (p.lag > 1000 ? " warn" : "") }, lag),
        el("td", {}, p.raft_addr || ""));
    });
    fill($("cluster-rows"), [me, ...peers]);
    setStatus("cluster-updated", "updated " + new Date().toLocaleTimeString());
  } catch (e) {
    const role = $("node-role");
    role.textContent = "unreachable";
    role.className = "badge down";
    setStatus("cluster-updated", "no answer", "bad");
  }
}

// ---- Topics, groups, clients ------------------------------------------------------------

async function refreshTopics() {
  try {
    const match = $("topics-match").value.trim() || "#";
    const t = await getJson("/topics?match=" + encodeURIComponent(match));
    const rows = t.topics.map((x) => {
      const r = el("tr", { class: "link", title: "Follow this topic" },
        el("td", {}, x.topic),
        el("td", { class: "num" }, x.length),
        el("td", {}, x.last_id));
      r.addEventListener("click", () => {
        $("tail-input").value = x.topic;
        $("pub-topic").value = $("pub-topic").value || x.topic;
        startTail();
      });
      return r;
    });
    fill($("topic-rows"), rows, "topics-empty");
  } catch (e) { /* shown by the cluster badge */ }
}

async function refreshGroups() {
  try {
    const g = await getJson("/groups");
    const rows = g.groups.map((x) => el("tr", {},
      el("td", {}, x.topic),
      el("td", {}, x.name),
      el("td", { class: "num" }, x.consumers),
      el("td", { class: "num" + (x.pending > 0 ? " warn" : "") }, x.pending),
      el("td", { class: "num" }, x.lag === null ? "?" : x.lag)));
    fill($("group-rows"), rows, "groups-empty");
  } catch (e) { /* as above */ }
}

async function refreshClients() {
  try {
    const c = await getJson("/mqtt/clients");
    $("clients-count").textContent = c.connected + " connected, " + c.total + " sessions";
    const rows = c.clients.map((x) => el("tr", {},
      el("td", {}, x.client_id),
      el("td", {}, el("span", { class: "pill " + (x.connected ? "on" : "off") }, x.connected ? "connected" : "away")),
      el("td", {}, x.node === null ? "–" : x.node),
      el("td", {}, x.subscriptions.join("  ") || "–"),
      el("td", { class: "num" }, x.inflight)));
    fill($("client-rows"), rows, "clients-empty");
  } catch (e) { /* as above */ }
}

function refreshAll() {
  refreshCluster();
  refreshTopics();
  refreshGroups();
  refreshClients();
}

// ---- Live tail over /ws -----------------------------------------------------------------

function wsUrl() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const q = state.token ? "?access_token=" + encodeURIComponent(state.token) : "";
  return scheme + "//" + location.host + "/ws" + q;
}

function connect() {
  const ws = new WebSocket(wsUrl());
  state.ws = ws;
  ws.addEventListener("open", () => {
    state.wsOpen = true;
    state.retryMs = 500;
    if (state.tail) subscribe();
    else setStatus("tail-status", "connected", "ok");
  });
  ws.addEventListener("message", (ev) => onFrame(JSON.parse(ev.data)));
  ws.addEventListener("close", (ev) => {
    state.wsOpen = false;
    const why = ev.code === 4008 ? "too slow, resuming" : "disconnected, retrying";
    setStatus("tail-status", why, "bad");
    setTimeout(connect, state.retryMs);
    state.retryMs = Math.min(state.retryMs * 2, 5000);
  });
}

function send(frame) {
  if (state.wsOpen) state.ws.send(JSON.stringify(frame));
}

function subscribe() {
  const t = state.tail;
  const frame = { type: "subscribe", id: t.id };
  if (/[+#]/.test(t.name)) frame.filter = t.name; else frame.topic = t.name;
  // After a reconnect: from the last message shown, so nothing is missed or shown twice.
  frame.from = t.cursor || t.from;
  send(frame);
  setStatus("tail-status", "following " + t.name, "ok");
}

function startTail() {
  const name = $("tail-input").value.trim();
  if (!name) return;
  if (state.tail) send({ type: "unsubscribe", id: state.tail.id });
  state.tail = { id: "tail-" + Date.now(), name, from: $("tail-from").value, cursor: null };
  subscribe();
}

function render(m) {
  let body;
  if (m.payload !== undefined) {
    body = typeof m.payload === "string" ? m.payload : "base64: " + m.payload.base64;
    try { body = JSON.stringify(JSON.parse(body), null, 2); } catch (e) { /* not JSON: as it is */ }
  } else {
    body = Object.entries(m.fields || {}).map(([k, v]) => k + " = " + (typeof v === "string" ? v : JSON.stringify(v))).join("\n");
  }
  const when = m.timestamp_ms ? new Date(m.timestamp_ms).toLocaleTimeString() : "";
  return el("li", { class: "msg", "data-topic": m.topic, "data-payload": m.payload === undefined ? "" : String(m.payload) },
    el("div", { class: "meta" },
      el("span", { class: "topic" }, m.topic),
      el("span", {}, m.id),
      m.key ? el("span", {}, "key " + m.key) : null,
      el("span", {}, when)),
    el("pre", { class: "body" }, body));
}

function onFrame(f) {
  const t = state.tail;
  if (f.type === "message" && t && f.sub === t.id) {
    t.cursor = f.cursor;
    state.received += 1;
    const list = $("tail-list");
    list.prepend(render(f));
    while (list.children.length > MAX_ROWS) list.lastChild.remove();
    $("tail-empty").hidden = true;
    setStatus("tail-status", "following " + t.name + " · " + state.received + " received", "ok");
  } else if (f.type === "error") {
    setStatus("tail-status", f.message, "bad");
  } else if (f.type === "reset" && t && f.sub === t.id) {
    setStatus("tail-status", "the topic was re-created: reading it from its start", "bad");
  }
}

// ---- Publish ----------------------------------------------------------------------------

async function publish(ev) {
  ev.preventDefault();
  const topic = $("pub-topic").value.trim();
  const payload = $("pub-payload").value;
  const key = $("pub-key").value.trim();
  let type = "text/plain; charset=utf-8";
  try { JSON.parse(payload); type = "application/json"; } catch (e) { /* plain text */ }
  const headers = authHeaders({ "Content-Type": type });
  if (key) headers["X-Message-Key"] = key;
  try {
    const r = await fetch("/topics/" + encodeURIComponent(topic), { method: "POST", headers, body: payload });
    const answer = await r.json();
    if (r.ok) {
      setStatus("pub-result", "stored as " + answer.id, "ok");
      refreshTopics();
    } else {
      setStatus("pub-result", answer.message || r.status, "bad");
    }
  } catch (e) {
    setStatus("pub-result", "no answer from the node", "bad");
  }
}

// ---- Start ------------------------------------------------------------------------------

$("token").value = state.token;
$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  state.token = $("token").value.trim();
  if (state.token) localStorage.setItem("manifold_token", state.token);
  else localStorage.removeItem("manifold_token");
  if (state.ws) state.ws.close();
  refreshAll();
});
$("tail-form").addEventListener("submit", (ev) => { ev.preventDefault(); startTail(); });
$("tail-clear").addEventListener("click", () => {
  $("tail-list").replaceChildren();
  $("tail-empty").hidden = false;
  state.received = 0;
});
$("pub-form").addEventListener("submit", publish);
$("topics-match").addEventListener("change", refreshTopics);

connect();
state.tail = { id: "tail-" + Date.now(), name: $("tail-input").value.trim(), from: "latest", cursor: null };
refreshAll();
setInterval(refreshAll, REFRESH_MS);
