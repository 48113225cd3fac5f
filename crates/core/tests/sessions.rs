//! MQTT persistent sessions through the engine's public API: open/resume/clean start,
//! overlapping subscriptions delivering each message once with the highest QoS, one log-index
//! cursor, replay including topics created while offline, in-flight packets surviving restarts
//! and power cuts, expiry by the leader's timer, and the session limit.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use manifold_core::engine::{
    AppendRequest, Engine, EngineConfig, EngineError, InFlightNew, SessionError, SubscribeOptions,
};
use manifold_core::store::{CrashMode, SimDisk};

fn config() -> EngineConfig {
    support::small_config()
}

fn open(disk: &SimDisk, config: EngineConfig) -> Result<Engine, EngineError> {
    Engine::open(Arc::new(disk.clone()), &PathBuf::from("/data"), config)
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn publish(key: &str, value: &str) -> AppendRequest {
    AppendRequest::new(0, b(key), vec![(b("payload"), b(value))])
}

fn sub(qos: u8, id: u32) -> SubscribeOptions {
    SubscribeOptions {
        qos,
        subscription_id: id,
        ..SubscribeOptions::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

/// `(topic, payload, qos, subscription ids)` of a message the session has to receive.
type Pending = (String, String, u8, Vec<u32>);

/// What the session has to receive, and how far the read went.
fn pending(engine: &Engine, client: &str) -> Result<(Vec<Pending>, u64), EngineError> {
    let read = engine.session_pending(client.as_bytes(), 100)?;
    let got = read
        .messages
        .iter()
        .map(|m| {
            (
                String::from_utf8_lossy(&m.topic).into_owned(),
                String::from_utf8_lossy(&m.message.fields[0].1).into_owned(),
                m.qos,
                m.subscription_ids.clone(),
            )
        })
        .collect();
    Ok((got, read.upto))
}

#[test]
fn a_session_keeps_its_subscriptions_cursor_and_inflight_across_disconnects_and_crashes()
-> Result<(), EngineError> {
    let disk = SimDisk::new();
    let engine = open(&disk, config())?;
    let rt = runtime();
    let upto = rt.block_on(async {
        assert!(
            !engine.session_open(b("dev"), false, 3600, None).await?,
            "new: no session present"
        );
        assert!(
            engine.session_open(b("dev"), false, 3600, None).await?,
            "resumed"
        );
        // Overlapping filters: each message once, with the highest QoS and both ids.
        engine
            .session_subscribe(b("dev"), vec![(b("a/+"), sub(1, 7)), (b("a/1"), sub(2, 9))])
            .await?;
        engine.append(publish("a/1", "one")).await?;
        engine.append(publish("b/1", "other")).await?;
        engine.append(publish("a/2", "two")).await?;
        let (got, upto) = pending(&engine, "dev")?;
        assert_eq!(
            got,
            [
                ("a/1".to_string(), "one".to_string(), 2, vec![7, 9]),
                ("a/2".to_string(), "two".to_string(), 1, vec![7]),
            ]
        );
        let first = engine.session_pending(b"dev", 100)?.messages[0]
            .message
            .log_index;
        // Delivered: QoS 1/2 go in flight with their packet ids; the cursor moves.
        engine
            .session_deliver(
                b("dev"),
                upto,
                vec![InFlightNew {
                    packet_id: 1,
                    log_index: first,
                    sub: 0,
                    qos: 2,
                    shared: None,
                }],
            )
            .await?;
        assert!(pending(&engine, "dev")?.0.is_empty());
        assert!(matches!(
            engine
                .session_deliver(
                    b("dev"),
                    upto,
                    vec![InFlightNew {
                        packet_id: 1,
                        log_index: first,
                        sub: 0,
                        qos: 1,
                        shared: None,
                    }]
                )
                .await,
            Err(EngineError::Session(SessionError::PacketIdInUse))
        ));
        engine.session_received(b("dev"), 1).await?;
        // Offline: messages to a topic created meanwhile are replayed at reconnect.
        engine.session_close(b("dev"), None, false).await?;
        engine.append(publish("a/3", "while away")).await?;
        Ok::<_, EngineError>(upto)
    })?;
    let session = engine.session(b"dev").expect("kept after the disconnect");
    assert_eq!(session.cursor, upto);
    assert!(session.disconnected_ms.is_some());
    assert!(
        session
            .inflight
            .get(&1)
            .is_some_and(|f| f.received && f.qos == 2)
    );
    // A power cut: the session is state, replayed from snapshot, journal and log.
    let digest = engine.state_digest();
    let after = disk.crash(CrashMode::DropUnsynced);
    drop(engine);
    let engine = open(&after, config())?;
    assert_eq!(engine.state_digest(), digest);
    let session = engine.session(b"dev").expect("session");
    let inflight = session.inflight.get(&1).cloned().expect("in flight");
    let resent = engine
        .message_at_position(inflight.log_index, inflight.sub)?
        .expect("message");
    assert_eq!(resent.topic, b("a/1"));
    rt.block_on(async {
        assert!(engine.session_open(b("dev"), false, 3600, None).await?);
        assert_eq!(
            pending(&engine, "dev")?.0,
            [("a/3".to_string(), "while away".to_string(), 1, vec![7])]
        );
        engine.session_complete(b("dev"), 1).await?;
        assert!(engine.session(b"dev").expect("session").inflight.is_empty());
        assert_eq!(
            engine
                .session_unsubscribe(b("dev"), vec![b("a/1"), b("x")])
                .await?,
            [true, false]
        );
        // A subscription matches only what is published after it, even past the cursor.
        engine.append(publish("b/2", "before")).await?;
        engine
            .session_subscribe(b("dev"), vec![(b("b/#"), sub(0, 0))])
            .await?;
        engine.append(publish("b/3", "after")).await?;
        let (got, _) = pending(&engine, "dev")?;
        let topics: Vec<&str> = got.iter().map(|(t, ..)| t.as_str()).collect();
        assert_eq!(topics, ["a/3", "b/3"]);
        // Clean start drops everything.
        assert!(!engine.session_open(b("dev"), true, 3600, None).await?);
        assert!(
            engine
                .session(b"dev")
                .expect("new")
                .subscriptions
                .is_empty()
        );
        // Expiry 0 at disconnect ends the session.
        engine.session_close(b("dev"), Some(0), false).await?;
        assert!(engine.session(b"dev").is_none());
        assert!(matches!(
            engine
                .session_subscribe(b("dev"), vec![(b("a"), sub(0, 0))])
                .await,
            Err(EngineError::Session(SessionError::NoSession))
        ));
        assert!(matches!(
            engine
                .session_subscribe(b("dev"), vec![(b("a/#/b"), sub(0, 0))])
                .await,
            Err(EngineError::BadTopic(_))
        ));
        Ok::<_, EngineError>(())
    })
}

static CLOCK: AtomicU64 = AtomicU64::new(1_700_000_000_000);

fn clock() -> u64 {
    CLOCK.load(Ordering::SeqCst)
}

#[test]
fn disconnected_sessions_expire_by_the_leaders_timer_and_are_limited() -> Result<(), EngineError> {
    let disk = SimDisk::new();
    let mut config = config();
    config.clock = clock;
    config.timer_tick_ms = 5;
    config.max_sessions = 2;
    let engine = open(&disk, config)?;
    let rt = runtime();
    rt.block_on(async {
        engine.session_open(b("short"), false, 10, None).await?;
        engine
            .session_open(b("forever"), false, u32::MAX, None)
            .await?;
        assert!(matches!(
            engine.session_open(b("third"), false, 10, None).await,
            Err(EngineError::Session(SessionError::TooManySessions))
        ));
        engine.session_close(b("short"), None, false).await?;
        engine.session_close(b("forever"), None, false).await?;
        Ok::<_, EngineError>(())
    })?;
    CLOCK.fetch_add(9_000, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        engine.session(b"short").is_some(),
        "not expired before its interval"
    );
    CLOCK.fetch_add(2_000, Ordering::SeqCst);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while engine.session(b"short").is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the timer did not expire it"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(engine.session(b"forever").is_some());
    rt.block_on(engine.session_open(b("third"), false, 10, None))?;
    Ok(())
}

static WILL_CLOCK: AtomicU64 = AtomicU64::new(1_700_000_000_000);

fn will_clock() -> u64 {
    WILL_CLOCK.load(Ordering::SeqCst)
}

#[test]
fn a_will_goes_out_after_its_delay_unless_the_client_returns_or_says_goodbye()
-> Result<(), EngineError> {
    let disk = SimDisk::new();
    let mut config = config();
    config.clock = will_clock;
    config.timer_tick_ms = 5;
    let engine = open(&disk, config.clone())?;
    let rt = runtime();
    let will = |delay_s: u32, retain: bool| manifold_core::engine::Will {
        topic: b("status/dev"),
        payload: b("offline"),
        properties: vec![(b("reason"), b("lost"))],
        qos: 1,
        retain,
        delay_s,
    };
    let wait_for = |what: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !what() {
            assert!(
                std::time::Instant::now() < deadline,
                "the timer did not act"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    rt.block_on(async {
        // A normal DISCONNECT discards the Will.
        engine
            .session_open(b("dev"), false, 3600, Some(will(0, false)))
            .await?;
        engine.session_close(b("dev"), None, false).await?;
        // Reconnecting within the delay cancels it.
        engine
            .session_open(b("dev"), false, 3600, Some(will(30, false)))
            .await?;
        engine.session_close(b("dev"), None, true).await?;
        WILL_CLOCK.fetch_add(10_000, Ordering::SeqCst);
        engine
            .session_open(b("dev"), false, 3600, Some(will(30, true)))
            .await?;
        Ok::<_, EngineError>(())
    })?;
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(engine.len(0, b"status/dev"), 0, "no Will went out");
    // Connection lost: after the 30 s delay the Will is published, retained.
    rt.block_on(engine.session_close(b("dev"), None, true))?;
    WILL_CLOCK.fetch_add(29_000, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(engine.len(0, b"status/dev"), 0, "not before its delay");
    WILL_CLOCK.fetch_add(2_000, Ordering::SeqCst);
    // The stream gets the message when the entry is dispatched; the retained copy and the
    // session's cleared Will come with its apply, a moment later: wait for all of it.
    wait_for(&|| {
        engine.len(0, b"status/dev") == 1
            && engine.retained_of(0, b"status/dev").is_some()
            && engine.session(b"dev").is_some_and(|s| s.will.is_none())
    });
    let retained = engine.retained_of(0, b"status/dev").expect("retained Will");
    assert_eq!(retained.fields, [(b("payload"), b("offline"))]);
    assert_eq!(retained.properties, [(b("reason"), b("lost"))]);
    let session = engine
        .session(b"dev")
        .expect("the session outlives its Will");
    assert!(session.will.is_none() && session.will_at_ms.is_none());
    // Once only: a restart (replaying snapshot, journal and log) does not publish it again.
    let digest = engine.state_digest();
    let after = disk.crash(CrashMode::DropUnsynced);
    drop(engine);
    let engine = open(&after, config)?;
    assert_eq!(engine.state_digest(), digest);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(engine.len(0, b"status/dev"), 1);
    // A session ending at disconnect (expiry 0) still sends its Will, then ends.
    rt.block_on(async {
        engine
            .session_open(b("brief"), false, 0, Some(will(60, false)))
            .await?;
        engine.session_close(b("brief"), None, true).await
    })?;
    wait_for(&|| engine.len(0, b"status/dev") == 2 && engine.session(b"brief").is_none());
    Ok(())
}

/// A session belongs to the connection that opened it last: commands carrying an older
/// connection's epoch change nothing (`TakenOver`) — its late DISCONNECT neither closes the
/// session nor publishes the Will; the current one's work. A node's connections declared lost
/// (but for its current broker run's) close their sessions as lost connections: the Will goes
/// out; a session held elsewhere, or by the current run, stays connected.
#[test]
fn the_newest_connection_holds_the_session_and_a_lost_nodes_sessions_close()
-> Result<(), EngineError> {
    use manifold_core::engine::{Owner, SessionRef, Will};
    let disk = SimDisk::new();
    let mut config = config();
    config.timer_tick_ms = 5;
    let engine = open(&disk, config)?;
    let rt = runtime();
    let will = Some(Will {
        topic: b("status/a"),
        payload: b("gone"),
        qos: 0,
        ..Will::default()
    });
    let owner = |node, boot, connection| {
        Some(Owner {
            node,
            boot,
            connection,
        })
    };
    let fenced = |epoch| SessionRef {
        client: b("a"),
        epoch: Some(epoch),
    };
    rt.block_on(async {
        let first = engine
            .session_open_by(b("a"), false, 3600, will.clone(), owner(1, 10, 1))
            .await?;
        engine
            .session_subscribe(fenced(first.epoch), vec![(b("t/#"), sub(1, 0))])
            .await?;
        // Another node's connection takes the session.
        let second = engine
            .session_open_by(b("a"), false, 3600, will.clone(), owner(2, 20, 1))
            .await?;
        assert!(second.present && second.epoch > first.epoch);
        assert_eq!(engine.session(b"a").and_then(|s| s.owner), owner(2, 20, 1));
        let stale = engine
            .session_subscribe(fenced(first.epoch), vec![(b("u/#"), sub(1, 0))])
            .await;
        assert!(
            matches!(stale, Err(EngineError::Session(SessionError::TakenOver))),
            "{stale:?}"
        );
        let late_close = engine.session_close(fenced(first.epoch), None, true).await;
        assert!(
            matches!(
                late_close,
                Err(EngineError::Session(SessionError::TakenOver))
            ),
            "{late_close:?}"
        );
        let s = engine.session(b"a").expect("the session");
        assert!(s.disconnected_ms.is_none() && s.will_at_ms.is_none());
        assert!(!s.subscriptions.contains_key(b"u/#".as_slice()));
        engine
            .session_subscribe(fenced(second.epoch), vec![(b("v/#"), sub(0, 0))])
            .await?;
        // Node 2's current run keeps its connections; node 1's loss touches nothing of node 2.
        engine.sessions_lost(2, 20).await?;
        engine.sessions_lost(1, 0).await?;
        assert!(
            engine
                .session(b"a")
                .is_some_and(|s| s.disconnected_ms.is_none())
        );
        // Node 2 restarted (a new run): its earlier connections are gone, the Will goes out.
        engine.sessions_lost(2, 21).await?;
        let s = engine
            .session(b"a")
            .expect("a persistent session outlives it");
        assert!(s.disconnected_ms.is_some() && s.owner.is_none());
        // The lost connection's commands are refused too.
        let after_loss = engine
            .session_subscribe(fenced(second.epoch), vec![(b("w/#"), sub(0, 0))])
            .await;
        assert!(
            matches!(
                after_loss,
                Err(EngineError::Session(SessionError::TakenOver))
            ),
            "{after_loss:?}"
        );
        Ok::<_, EngineError>(())
    })?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while engine.len(0, b"status/a") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the Will did not go out"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// A shared subscription's message (`$share/g/jobs` = group `g` of `jobs`) is bound to its
/// packet with its group entry: PUBACK (QoS 1) or PUBREC (QoS 2) acknowledges the entry in the
/// same command, across a power cut too; a member whose session ends hands what it still holds
/// to another member of the same share.
#[test]
fn shared_subscription_packets_acknowledge_their_group_entries_and_pass_to_another_member()
-> Result<(), EngineError> {
    use manifold_core::engine::{GroupStart, ReadFrom, SharedRef};
    let disk = SimDisk::new();
    let engine = open(&disk, config())?;
    let rt = runtime();
    let share = b("$share/g/jobs");
    let read = |engine: &Engine, member: &str, count: u64| {
        rt.block_on(engine.read_group(
            0,
            b("g"),
            b(member),
            vec![(b("jobs"), ReadFrom::New)],
            count,
            false,
        ))
        .map(|r| r.into_iter().flat_map(|(_, e)| e).collect::<Vec<_>>())
    };
    let bind = |entries: &[manifold_core::engine::GroupEntry], first_id: u16, qos: u8| {
        entries
            .iter()
            .enumerate()
            .map(|(k, e)| {
                let m = e.message.as_ref().expect("message");
                InFlightNew {
                    packet_id: first_id + k as u16,
                    log_index: m.log_index,
                    sub: m.sub,
                    qos,
                    shared: Some(SharedRef::Stream {
                        key: b("jobs"),
                        group: b("g"),
                        id: e.id,
                    }),
                }
            })
            .collect::<Vec<_>>()
    };
    rt.block_on(async {
        for member in ["a", "b"] {
            engine.session_open(b(member), false, 3600, None).await?;
            engine
                .session_subscribe(b(member), vec![(share.clone(), sub(2, 0))])
                .await?;
        }
        engine
            .group_create(0, b("jobs"), b("g"), GroupStart::Last, true, None)
            .await?;
        for k in 1..=3 {
            engine.append(publish("jobs", &format!("j{k}"))).await?;
        }
        // A shared subscription is not read from the session's cursor.
        assert!(pending(&engine, "a")?.0.is_empty());
        Ok::<_, EngineError>(())
    })?;
    let two = read(&engine, "a", 2)?;
    let cursor = engine.session(b"a").expect("a").cursor;
    rt.block_on(async {
        engine
            .session_deliver(b("a"), cursor, bind(&two[..1], 1, 1))
            .await?;
        engine
            .session_deliver(b("a"), cursor, bind(&two[1..], 2, 2))
            .await?;
        assert_eq!(engine.pending_summary(0, b"jobs", b"g")?.count, 2);
        engine.session_complete(b("a"), 1).await?; // PUBACK
        assert_eq!(engine.pending_summary(0, b"jobs", b"g")?.count, 1);
        engine.session_received(b("a"), 2).await?; // PUBREC: the client has it
        assert_eq!(engine.pending_summary(0, b"jobs", b"g")?.count, 0);
        engine.session_complete(b("a"), 2).await?; // PUBCOMP
        Ok::<_, EngineError>(())
    })?;
    let third = read(&engine, "a", 1)?;
    rt.block_on(engine.session_deliver(b("a"), cursor, bind(&third, 3, 1)))?;
    // A power cut keeps the binding (journal or snapshot).
    let digest = engine.state_digest();
    let after = disk.crash(CrashMode::DropUnsynced);
    drop(engine);
    let engine = open(&after, config())?;
    assert_eq!(engine.state_digest(), digest);
    let held = engine.session(b"a").expect("a").inflight[&3].clone();
    assert!(
        matches!(held.shared, Some(SharedRef::Stream { id, .. }) if id == third[0].id),
        "{held:?}"
    );
    // Member a's session ends holding it: it is member b's now.
    rt.block_on(engine.session_close(b("a"), Some(0), false))?;
    let summary = engine.pending_summary(0, b"jobs", b"g")?;
    assert_eq!(summary.consumers, vec![(b("b"), 1)]);
    Ok(())
}

/// A session woken by an entry takes that entry's messages from memory: the same messages a
/// read from the log gives, only those the subscriptions match.
#[test]
fn a_woken_session_reads_the_waking_entry_from_memory_as_from_the_log() -> Result<(), EngineError> {
    let disk = SimDisk::new();
    let engine = open(&disk, config())?;
    let rt = runtime();
    rt.block_on(async {
        engine.session_open(b("head"), false, 3600, None).await?;
        engine
            .session_subscribe(
                b("head"),
                vec![(b("h/+"), sub(1, 3)), (b("h/1"), sub(2, 4))],
            )
            .await?;
        let results = engine
            .append_many(vec![
                publish("h/1", "one"),
                publish("x/1", "other"),
                publish("h/2", "two"),
            ])
            .await;
        assert!(results.iter().all(|r| r.is_ok()));
        Ok::<_, EngineError>(())
    })?;
    let read = engine.session_pending(b"head", 100)?;
    let session = engine.session(b"head").expect("session");
    let mut indexes: Vec<u64> = read.messages.iter().map(|m| m.message.log_index).collect();
    indexes.dedup();
    let mut at = manifold_core::engine::SessionRead::default();
    for index in indexes {
        let one = engine
            .session_pending_at(&session, b"head", index)
            .expect("kept in memory");
        assert_eq!(one.upto, index);
        at.messages.extend(one.messages);
    }
    let shape = |r: &manifold_core::engine::SessionRead| -> Vec<(Bytes, u8, Vec<u32>, Bytes)> {
        r.messages
            .iter()
            .map(|m| {
                (
                    m.topic.clone(),
                    m.qos,
                    m.subscription_ids.clone(),
                    m.message.fields[0].1.clone(),
                )
            })
            .collect()
    };
    assert_eq!(shape(&at), shape(&read));
    assert_eq!(at.messages.len(), 2);
    assert_eq!(at.messages, read.messages);
    // An entry not kept (here: not applied yet) is read from the log instead.
    assert!(
        engine
            .session_pending_at(&session, b"head", engine.applied_index() + 1)
            .is_none()
    );
    Ok(())
}
