//! The admin routes: `GET /health` (200 while this node serves, 503 while it knows no
//! leader or its disk failed or stalled), `GET /cluster` (this node's view of its Raft group, as JSON), `GET /metrics`
//! (Prometheus text), `GET /cluster/digest` (applied index and engine-state digest, to compare
//! members), `POST /cluster/transfer-leader?to=N[&timeout_ms=T]` (hand
//! leadership to voter N and wait until it leads), `POST /cluster/members?id=N&addr=H:P
//! [&learner=true][&timeout_ms=T]` (add a node; it learns the log, then becomes a voter
//! unless `learner`) and `DELETE /cluster/members/{id}[?timeout_ms=T]` (remove a member;
//! the leader itself hands over first). `manifold cluster` reads the same JSON.
//!
//! Reads the engine's status only; what it asks of the group (a transfer, a membership
//! change) the Raft core carries out (or refuses) on its own terms.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use manifold_core::engine::Engine;
use manifold_core::raft::{MemberRole, MembershipChange, Role};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::prometheus::Text;

/// Most consumer groups `/metrics` reports a lag for.
pub const MAX_GROUP_SERIES: usize = 1000;
/// How long a transfer request waits for the new leader by default, and at most (ms).
pub const TRANSFER_WAIT_MS: u64 = 3000;
pub const TRANSFER_WAIT_MAX_MS: u64 = 60_000;
/// How long a membership change waits to be in force by default (ms): an added node must
/// catch up with the whole log first.
pub const MEMBERSHIP_WAIT_MS: u64 = 30_000;

/// The admin routes on `engine`; `/metrics` also renders `metrics` (other parts' counters).
pub fn routes(engine: Arc<Engine>, metrics: Vec<crate::MetricsSource>) -> axum::Router {
    let page = axum::Router::new()
        .route("/metrics", get(metrics_page))
        .with_state((engine.clone(), Arc::new(metrics)));
    axum::Router::new()
        .route("/health", get(health))
        .route("/cluster", get(cluster))
        .route("/cluster/transfer-leader", post(transfer_leader))
        .route("/cluster/members", post(add_member))
        .route(
            "/cluster/members/{id}",
            axum::routing::delete(remove_member),
        )
        .route("/cluster/digest", get(digest))
        .with_state(engine)
        .merge(page)
}

/// This node's view of its group: what `GET /cluster` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    pub node_id: u64,
    /// `leader`, `follower`, `candidate` or `pre-candidate`.
    pub role: String,
    pub term: u64,
    pub leader_id: Option<u64>,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_index: u64,
    pub preferred_leader: Option<u64>,
    /// Leader: the voter a transfer under way goes to.
    pub transferring_to: Option<u64>,
    /// Whether this node's disk is healthy (no failed or stalled fsync).
    pub healthy: bool,
    /// This node's part: `voter`, `learner`, or `none` (not a member, or its place belongs
    /// to another incarnation of its id: a directory that replaced a lost one, not handed the
    /// place yet).
    #[serde(default)]
    pub membership: String,
    /// The other members, voters and learners.
    pub peers: Vec<PeerView>,
    /// This node and images of its leader (it was behind the leader's retained log):
    /// `none`, `fetching`, or `staged` (installed when it restarts — at once under
    /// `manifold serve`).
    #[serde(default)]
    pub image: String,
    /// The last log index of the image this node's last start installed, if any.
    #[serde(default)]
    pub installed_image: Option<u64>,
}

/// One other member, as this node knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    pub id: u64,
    /// `voter`, `learner` (`learner-to-promote` while it catches up to become a voter).
    #[serde(default)]
    pub member: String,
    /// The data directory its place is pinned to (hex; empty: not pinned yet).
    #[serde(default)]
    pub incarnation: String,
    pub raft_addr: String,
    /// Leader only: the highest index known to be durable on it.
    pub match_index: Option<u64>,
    /// Leader only: entries it lacks (this node's last index minus its match index).
    pub lag: Option<u64>,
    /// Leader only: whether its last heartbeat answer said its disk is healthy.
    pub healthy: Option<bool>,
    /// Leader only: it needs entries retention removed (only a snapshot install could catch
    /// it up).
    #[serde(default)]
    pub needs_snapshot: Option<bool>,
}

/// This node's view of its group now. A group of one is its own leader.
pub fn cluster_view(engine: &Engine) -> ClusterView {
    let applied = engine.applied_index();
    let last = engine.store().log().last_index();
    let me = engine.node_id();
    match engine.raft_status() {
        None => ClusterView {
            node_id: me,
            role: Role::Leader.name().into(),
            term: engine.term(),
            leader_id: Some(me),
            commit_index: applied,
            applied_index: applied,
            last_index: last,
            preferred_leader: None,
            transferring_to: None,
            healthy: true,
            membership: "voter".into(),
            peers: Vec::new(),
            image: engine.image_fetch_state().into(),
            installed_image: engine.installed_image(),
        },
        Some(st) => {
            let leading = st.role == Role::Leader;
            let peers = st
                .members
                .members()
                .iter()
                .filter(|m| m.id != st.id)
                .map(|m| {
                    let id = &m.id;
                    let matched = st.peers.iter().find(|(p, _)| p == id).map(|(_, m)| *m);
                    let matched = matched.filter(|_| leading);
                    PeerView {
                        id: *id,
                        member: member_name(m.role).into(),
                        incarnation: incarnation_text(m.incarnation),
                        raft_addr: m.addr.clone(),
                        match_index: matched,
                        lag: matched.map(|m| st.last_index.saturating_sub(m)),
                        healthy: leading.then(|| !st.unhealthy_peers.contains(id)),
                        needs_snapshot: leading.then(|| st.behind_log.contains(id)),
                    }
                })
                .collect();
            ClusterView {
                node_id: st.id,
                role: st.role.name().into(),
                term: st.term,
                leader_id: st.leader,
                commit_index: st.commit,
                applied_index: applied,
                last_index: st.last_index,
                preferred_leader: engine.preferred_leader(),
                transferring_to: st.transferring,
                healthy: st.healthy,
                membership: match st.members.get(st.id) {
                    Some(m) if st.voter || m.role != MemberRole::Voter => {
                        member_name(m.role).into()
                    }
                    _ => "none".into(),
                },
                peers,
                image: engine.image_fetch_state().into(),
                installed_image: engine.installed_image(),
            }
        }
    }
}

fn member_name(role: MemberRole) -> &'static str {
    match role {
        MemberRole::Voter => "voter",
        MemberRole::Learner { promote: true } => "learner-to-promote",
        MemberRole::Learner { promote: false } => "learner",
    }
}

fn incarnation_text(incarnation: u64) -> String {
    if incarnation == 0 {
        String::new()
    } else {
        format!("{incarnation:016x}")
    }
}

async fn health(State(engine): State<Arc<Engine>>) -> Response {
    let view = cluster_view(&engine);
    let body = json!({
        "node_id": view.node_id,
        "role": view.role,
        "leader_id": view.leader_id,
        "applied_index": view.applied_index,
    });
    let mut body = body;
    if !view.healthy {
        body["error"] =
            "the disk failed or stalled: this node neither leads nor votes until it recovers"
                .into();
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    } else if view.leader_id.is_some() {
        (StatusCode::OK, Json(body)).into_response()
    } else {
        body["error"] =
            "no leader known: writes wait, then are refused, until one is elected".into();
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

async fn cluster(State(engine): State<Arc<Engine>>) -> Json<ClusterView> {
    Json(cluster_view(&engine))
}

/// The applied index and a CRC32C of the engine state at it: members that applied the same
/// index must show the same digest (a check for divergence; it encodes the whole state).
async fn digest(State(engine): State<Arc<Engine>>) -> Response {
    match tokio::task::spawn_blocking(move || engine.state_digest_at()).await {
        Ok((applied, digest)) => Json(json!({
            "applied_index": applied,
            "state_digest": format!("{digest:08x}"),
        }))
        .into_response(),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "digest failed"),
    }
}

#[derive(Debug, Deserialize)]
struct TransferQuery {
    to: Option<u64>,
    timeout_ms: Option<u64>,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// Asks for the transfer, then waits until this node sees `to` lead (or the wait ends).
async fn transfer_leader(
    State(engine): State<Arc<Engine>>,
    query: Result<Query<TransferQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(StatusCode::BAD_REQUEST, "query must be to=N[&timeout_ms=T]");
    };
    let Some(to) = q.to else {
        return error(StatusCode::BAD_REQUEST, "to=N names the voter to lead");
    };
    let wait = Duration::from_millis(
        q.timeout_ms
            .unwrap_or(TRANSFER_WAIT_MS)
            .min(TRANSFER_WAIT_MAX_MS),
    );
    let started = Instant::now();
    let Some(before) = engine
        .raft_status()
        .filter(|st| st.members.voters().count() > 1)
    else {
        return error(
            StatusCode::CONFLICT,
            "a group of one has no other voter to lead",
        );
    };
    if before.leader == Some(to) {
        return done(to, before.term, started);
    }
    if before.leader.is_none() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no leader known to hand over from; try again once one is elected",
        );
    }
    if let Err(e) = engine.transfer_leader(to) {
        return error(StatusCode::BAD_REQUEST, e.to_string());
    }
    loop {
        if let Some(st) = engine.raft_status()
            && st.leader == Some(to)
            && st.term > before.term
        {
            return done(to, st.term, started);
        }
        if started.elapsed() >= wait {
            let now = engine.raft_status();
            let mut body = json!({
                "error": format!("node {to} did not take over within {} ms", wait.as_millis()),
            });
            body["leader_id"] = now.and_then(|s| s.leader).into();
            return (StatusCode::GATEWAY_TIMEOUT, Json(body)).into_response();
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[derive(Debug, Deserialize)]
struct AddQuery {
    id: Option<u64>,
    addr: Option<String>,
    learner: Option<bool>,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct WaitQuery {
    timeout_ms: Option<u64>,
}

/// Adds a node and waits until the configuration in force has it — as a voter unless it is
/// added as a learner (it becomes one once it holds every committed entry).
async fn add_member(
    State(engine): State<Arc<Engine>>,
    query: Result<Query<AddQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "query must be id=N&addr=HOST:PORT[&learner=true][&timeout_ms=T]",
        );
    };
    let (Some(id), Some(addr)) = (q.id, q.addr) else {
        return error(
            StatusCode::BAD_REQUEST,
            "id=N and addr=HOST:PORT (its Raft address) name the new member",
        );
    };
    let learner = q.learner.unwrap_or(false);
    let change = MembershipChange::Add { id, addr, learner };
    change_and_wait(&engine, change, q.timeout_ms, move |members| {
        members.get(id).is_some_and(|m| {
            if learner {
                true
            } else {
                m.role == MemberRole::Voter && m.incarnation != 0
            }
        })
    })
    .await
}

/// Removes a member and waits until the configuration in force no longer has it.
async fn remove_member(
    State(engine): State<Arc<Engine>>,
    axum::extract::Path(id): axum::extract::Path<u64>,
    query: Result<Query<WaitQuery>, QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error(StatusCode::BAD_REQUEST, "query must be [timeout_ms=T]");
    };
    change_and_wait(
        &engine,
        MembershipChange::Remove { id },
        q.timeout_ms,
        move |members| members.get(id).is_none(),
    )
    .await
}

/// Asks for `change` (again every 500 ms while it is not in force: a leader change may have
/// lost the request) until this node's configuration in force satisfies `done` and its entry
/// has committed here, or the wait ends (504).
async fn change_and_wait(
    engine: &Engine,
    change: MembershipChange,
    timeout_ms: Option<u64>,
    done: impl Fn(&manifold_core::raft::Membership) -> bool,
) -> Response {
    let wait = Duration::from_millis(
        timeout_ms
            .unwrap_or(MEMBERSHIP_WAIT_MS)
            .min(TRANSFER_WAIT_MAX_MS),
    );
    let started = Instant::now();
    let mut asked = None::<Instant>;
    loop {
        let Some(st) = engine
            .raft_status()
            .filter(|_| engine.raft_addr().is_some())
        else {
            return error(
                StatusCode::CONFLICT,
                "a single node has no Raft listener to grow its group from (restart it with \
                 --peers naming itself)",
            );
        };
        // A node removed from the group stops hearing from it: its own removal is done here
        // once in force (a leader hands over and steps down; `committed` says whether it saw
        // the commit before).
        let committed = st.commit >= st.members_index;
        let gone = st.members.get(st.id).is_none() && st.role != Role::Leader;
        if done(&st.members) && (committed || gone) {
            return (
                StatusCode::OK,
                Json(json!({
                    "committed": committed,
                    "members": st.members.members().iter().map(|m| json!({
                        "id": m.id,
                        "member": member_name(m.role),
                        "incarnation": incarnation_text(m.incarnation),
                        "raft_addr": m.addr,
                    })).collect::<Vec<_>>(),
                    "elapsed_ms": started.elapsed().as_secs_f64() * 1e3,
                })),
            )
                .into_response();
        }
        if started.elapsed() >= wait {
            let mut body = json!({
                "error": format!("the change was not in force within {} ms", wait.as_millis()),
            });
            body["leader_id"] = st.leader.into();
            return (StatusCode::GATEWAY_TIMEOUT, Json(body)).into_response();
        }
        if !done(&st.members) && asked.is_none_or(|t| t.elapsed() >= Duration::from_millis(500)) {
            if let Err(e) = engine.change_membership(change.clone()) {
                return error(StatusCode::BAD_REQUEST, e.to_string());
            }
            asked = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn done(to: u64, term: u64, started: Instant) -> Response {
    let body = json!({
        "leader_id": to,
        "term": term,
        "elapsed_ms": started.elapsed().as_secs_f64() * 1e3,
    });
    (StatusCode::OK, Json(body)).into_response()
}

async fn metrics_page(
    State((engine, more)): State<(Arc<Engine>, Arc<Vec<crate::MetricsSource>>)>,
) -> Response {
    let text = tokio::task::spawn_blocking(move || {
        let mut text = render_metrics(&engine);
        for source in more.iter() {
            text.push_str(&source());
        }
        text
    })
    .await;
    match text {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "metrics failed"),
    }
}

/// The `/metrics` page.
pub fn render_metrics(engine: &Engine) -> String {
    let view = cluster_view(engine);
    let mut t = Text::default();
    t.family(
        "manifold_raft_role",
        "gauge",
        "1 for this node's Raft role, 0 for the others.",
    );
    for role in [
        Role::Follower,
        Role::PreCandidate,
        Role::Candidate,
        Role::Leader,
    ] {
        let on = u8::from(view.role == role.name());
        t.sample("manifold_raft_role", &[("role", role.name())], on);
    }
    t.family(
        "manifold_storage_healthy",
        "gauge",
        "1 while this node's disk has neither failed nor stalled.",
    );
    t.sample("manifold_storage_healthy", &[], u8::from(view.healthy));
    t.family("manifold_raft_term", "gauge", "Current Raft term.");
    t.sample("manifold_raft_term", &[], view.term);
    t.family(
        "manifold_raft_leader_id",
        "gauge",
        "The leader this node knows (0: none).",
    );
    t.sample("manifold_raft_leader_id", &[], view.leader_id.unwrap_or(0));
    t.family(
        "manifold_raft_commit_index",
        "gauge",
        "Highest log index known committed.",
    );
    t.sample("manifold_raft_commit_index", &[], view.commit_index);
    t.family(
        "manifold_raft_last_index",
        "gauge",
        "Last index of the local log.",
    );
    t.sample("manifold_raft_last_index", &[], view.last_index);
    t.family(
        "manifold_applied_index",
        "gauge",
        "Highest log index applied to the engine state.",
    );
    t.sample("manifold_applied_index", &[], view.applied_index);
    t.family(
        "manifold_raft_members",
        "gauge",
        "Members of the configuration in force, by part (voter, learner, learner-to-promote).",
    );
    for part in ["voter", "learner", "learner-to-promote"] {
        let mine = u64::from(view.membership == part);
        let n = view.peers.iter().filter(|p| p.member == part).count() as u64 + mine;
        t.sample("manifold_raft_members", &[("member", part)], n);
    }
    t.family(
        "manifold_raft_voter",
        "gauge",
        "1 while this node's directory holds a voter's place in the configuration in force.",
    );
    t.sample(
        "manifold_raft_voter",
        &[],
        u8::from(view.membership == "voter"),
    );
    t.family(
        "manifold_raft_peer_match_index",
        "gauge",
        "Leader only: highest index durable on each follower.",
    );
    for p in &view.peers {
        if let Some(m) = p.match_index {
            t.sample(
                "manifold_raft_peer_match_index",
                &[("peer", &p.id.to_string())],
                m,
            );
        }
    }
    t.family(
        "manifold_raft_peer_needs_snapshot",
        "gauge",
        "Leader only: 1 for a follower that needs entries retention removed.",
    );
    for p in &view.peers {
        if let Some(n) = p.needs_snapshot {
            t.sample(
                "manifold_raft_peer_needs_snapshot",
                &[("peer", &p.id.to_string())],
                u8::from(n),
            );
        }
    }
    t.family(
        "manifold_raft_peer_lag",
        "gauge",
        "Leader only: entries each follower lacks.",
    );
    for p in &view.peers {
        if let Some(lag) = p.lag {
            t.sample(
                "manifold_raft_peer_lag",
                &[("peer", &p.id.to_string())],
                lag,
            );
        }
    }
    t.histogram_seconds(
        "manifold_fsync_seconds",
        "Time each CommitLog flush spent in fdatasync.",
        &engine.store().log().fsync_latency(),
    );
    let groups = engine.all_groups_info(MAX_GROUP_SERIES);
    t.family(
        "manifold_group_lag",
        "gauge",
        "Entries not yet delivered to each consumer group (absent when unknown).",
    );
    for (db, key, g) in &groups {
        if let Some(lag) = g.lag {
            let (db, key, name) = labels_of(*db, key, &g.name);
            t.sample(
                "manifold_group_lag",
                &[("db", &db), ("stream", &key), ("group", &name)],
                lag,
            );
        }
    }
    t.family(
        "manifold_group_pending",
        "gauge",
        "Entries delivered to each consumer group and not acknowledged.",
    );
    for (db, key, g) in &groups {
        let (db, key, name) = labels_of(*db, key, &g.name);
        t.sample(
            "manifold_group_pending",
            &[("db", &db), ("stream", &key), ("group", &name)],
            g.pending,
        );
    }
    let (dropped, bad_frames, refused) = engine.transport_counts();
    t.family(
        "manifold_raft_messages_dropped_total",
        "counter",
        "Raft messages dropped: a full queue or a peer that could not be reached.",
    );
    t.sample("manifold_raft_messages_dropped_total", &[], dropped);
    t.family(
        "manifold_raft_bad_frames_total",
        "counter",
        "Raft frames refused by the decoder (their connection was closed).",
    );
    t.sample("manifold_raft_bad_frames_total", &[], bad_frames);
    t.family(
        "manifold_raft_handshakes_refused_total",
        "counter",
        "Node-to-node connections refused in the handshake (version, secret).",
    );
    t.sample("manifold_raft_handshakes_refused_total", &[], refused);
    t.family(
        "manifold_images_sent_total",
        "counter",
        "Images of this node sent whole to followers behind its retained log.",
    );
    t.sample("manifold_images_sent_total", &[], engine.images_sent());
    t.family(
        "manifold_forward_apply_timeouts_total",
        "counter",
        "Forwarded writes answered before this node applied them (the wait ran out).",
    );
    t.sample(
        "manifold_forward_apply_timeouts_total",
        &[],
        engine.forward_apply_timeouts(),
    );
    t.family(
        "manifold_producers",
        "gauge",
        "Producers the dedupe table remembers.",
    );
    t.sample("manifold_producers", &[], engine.producer_count());
    t.family(
        "manifold_waiting_readers",
        "gauge",
        "Readers blocked waiting for new entries.",
    );
    t.sample("manifold_waiting_readers", &[], engine.waiting());
    t.finish()
}

fn labels_of(db: u8, key: &[u8], group: &[u8]) -> (String, String, String) {
    (
        db.to_string(),
        String::from_utf8_lossy(key).into_owned(),
        String::from_utf8_lossy(group).into_owned(),
    )
}
