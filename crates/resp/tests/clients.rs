//! Manifold's RESP front end through a real client (the `redis` crate) and raw sockets: what
//! the differential test cannot compare with redis-server byte for byte — blocking reads woken
//! by another client, competing group consumers, principals, CLIENT KILL, limits, pipelines,
//! and replies that depend on the clock.

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use manifold_core::engine::{AccessConfig, PrincipalConfig};
use redis::{Connection, RedisResult, Value};
use support::{Manifold, Raw, eventually, show};

fn connect(m: &Manifold) -> Connection {
    let client = redis::Client::open(format!("redis://{}/", m.addr)).expect("client");
    client.get_connection().expect("connect")
}

fn info(con: &mut Connection, section: &str) -> String {
    redis::cmd("INFO")
        .arg(section)
        .query::<String>(con)
        .expect("INFO")
}

fn blocked_clients(con: &mut Connection) -> u64 {
    info(con, "clients")
        .lines()
        .find_map(|l| l.strip_prefix("blocked_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("blocked_clients field")
}

#[test]
fn a_blocked_xread_is_woken_by_another_clients_xadd() {
    let m = Manifold::start();
    let mut writer = connect(&m);
    let mut reader = connect(&m);
    let started = Instant::now();
    let waiting = std::thread::spawn(move || {
        redis::cmd("XREAD")
            .arg(&["BLOCK", "10000", "STREAMS", "s", "$"])
            .query::<Value>(&mut reader)
    });
    assert!(
        eventually(Duration::from_secs(5), || blocked_clients(&mut writer) == 1),
        "the reader never blocked"
    );
    let id: String = redis::cmd("XADD")
        .arg(&["s", "*", "f", "v"])
        .query(&mut writer)
        .expect("XADD");
    let got = waiting.join().expect("reader").expect("XREAD");
    assert!(started.elapsed() < Duration::from_secs(5), "woken late");
    let text = format!("{got:?}");
    assert!(text.contains(&id), "XREAD returned {text}, not {id}");
    assert_eq!(blocked_clients(&mut writer), 0);
    // A BLOCK that times out answers nil.
    let nil: Value = redis::cmd("XREAD")
        .arg(&["BLOCK", "50", "STREAMS", "s", "$"])
        .query(&mut writer)
        .expect("XREAD timeout");
    assert_eq!(nil, Value::Nil);
}

#[test]
fn competing_group_consumers_get_every_entry_exactly_once() {
    let m = Manifold::start();
    let mut admin = connect(&m);
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", "jobs", "workers", "$", "MKSTREAM"])
        .query(&mut admin)
        .expect("XGROUP CREATE");
    const JOBS: usize = 300;
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for w in 0..4 {
        let mut con = connect(&m);
        let seen = seen.clone();
        workers.push(std::thread::spawn(move || {
            let name = format!("w{w}");
            loop {
                let reply: Value = redis::cmd("XREADGROUP")
                    .arg(&["GROUP", "workers", &name, "COUNT", "7", "BLOCK", "1000"])
                    .arg(&["STREAMS", "jobs", ">"])
                    .query(&mut con)
                    .expect("XREADGROUP");
                let ids = ids_in(&reply);
                if ids.is_empty() {
                    if seen.lock().expect("seen").len() >= JOBS {
                        return;
                    }
                    continue;
                }
                for id in &ids {
                    let acked: i64 = redis::cmd("XACK")
                        .arg(&["jobs", "workers", id])
                        .query(&mut con)
                        .expect("XACK");
                    assert_eq!(acked, 1, "{name} acked {id}");
                }
                seen.lock().expect("seen").extend(ids);
            }
        }));
    }
    for n in 0..JOBS {
        let _: String = redis::cmd("XADD")
            .arg(&["jobs", "*", "n", &n.to_string()])
            .query(&mut admin)
            .expect("XADD");
    }
    for w in workers {
        w.join().expect("worker");
    }
    let seen = seen.lock().expect("seen");
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(seen.len(), JOBS, "deliveries");
    assert_eq!(unique.len(), JOBS, "an entry was delivered twice");
    let pending: Value = redis::cmd("XPENDING")
        .arg(&["jobs", "workers"])
        .query(&mut admin)
        .expect("XPENDING");
    assert_eq!(
        format!("{pending:?}"),
        format!(
            "{:?}",
            Value::Array(vec![Value::Int(0), Value::Nil, Value::Nil, Value::Nil])
        )
    );
}

/// The stream IDs in an XREAD/XREADGROUP reply (RESP2 shape).
fn ids_in(reply: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Value::Array(streams) = reply {
        for s in streams {
            if let Value::Array(pair) = s
                && let Some(Value::Array(entries)) = pair.get(1)
            {
                for e in entries {
                    if let Value::Array(e) = e
                        && let Some(Value::BulkString(id)) = e.first()
                    {
                        out.push(String::from_utf8_lossy(id).into_owned());
                    }
                }
            }
        }
    }
    out
}

#[test]
fn principals_decide_what_a_connection_may_do() {
    let m = Manifold::start_with(AccessConfig {
        principals: vec![PrincipalConfig {
            name: "alice".into(),
            secret: Some("pw".into()),
            publish: vec!["a*".into()],
            subscribe: vec!["a*".into()],
        }],
    });
    let mut raw = Raw::connect(m.addr);
    assert_eq!(
        show(&raw.cmd(&["XADD", "a1", "*", "f", "v"])),
        "-NOAUTH Authentication required.\\r\\n"
    );
    assert_eq!(
        show(&raw.cmd(&["PING"])),
        "-NOAUTH Authentication required.\\r\\n"
    );
    assert_eq!(
        show(&raw.cmd(&["AUTH", "alice", "wrong"])),
        "-WRONGPASS invalid username-password pair or user is disabled.\\r\\n"
    );
    assert!(show(&raw.cmd(&["HELLO", "3"])).starts_with("-NOAUTH HELLO must be called"));
    assert_eq!(show(&raw.cmd(&["AUTH", "alice", "pw"])), "+OK\\r\\n");
    assert!(show(&raw.cmd(&["XADD", "a1", "1-1", "f", "v"])).contains("1-1"));
    assert_eq!(
        show(&raw.cmd(&["XADD", "b1", "1-1", "f", "v"])),
        "-NOPERM this user has no permissions to access one of the keys used as arguments\\r\\n"
    );
    assert_eq!(
        show(&raw.cmd(&["XRANGE", "b1", "-", "+"])),
        "-NOPERM this user has no permissions to access one of the keys used as arguments\\r\\n"
    );
    // Inside EXEC, a refused command is NOPERM in its slot and changes nothing; the rest run.
    assert_eq!(show(&raw.cmd(&["MULTI"])), "+OK\\r\\n");
    raw.cmd(&["XADD", "b1", "2-1", "f", "v"]);
    raw.cmd(&["XADD", "a1", "2-1", "f", "v"]);
    raw.cmd(&["XLEN", "b1"]);
    assert_eq!(
        show(&raw.cmd(&["EXEC"])),
        "*3\\r\\n-NOPERM this user has no permissions to access one of the keys used as arguments\\r\\n$3\\r\\n2-1\\r\\n-NOPERM this user has no permissions to access one of the keys used as arguments\\r\\n"
    );
    // HELLO with AUTH on a fresh connection, then RESET back to unauthenticated.
    let mut other = Raw::connect(m.addr);
    let hello = show(&other.cmd(&["HELLO", "3", "AUTH", "alice", "pw", "SETNAME", "x"]));
    assert!(hello.starts_with("%7\\r\\n"), "{hello}");
    assert_eq!(show(&other.cmd(&["CLIENT", "GETNAME"])), "$1\\r\\nx\\r\\n");
    assert_eq!(show(&other.cmd(&["RESET"])), "+RESET\\r\\n");
    assert_eq!(
        show(&other.cmd(&["XLEN", "a1"])),
        "-NOAUTH Authentication required.\\r\\n"
    );
}

#[test]
fn client_kill_closes_the_other_connection_and_quit_closes_ones_own() {
    let m = Manifold::start();
    let mut victim = Raw::connect(m.addr);
    let id = show(&victim.cmd(&["CLIENT", "ID"]));
    let id = id
        .trim_start_matches(':')
        .trim_end_matches("\\r\\n")
        .to_string();
    let mut killer = Raw::connect(m.addr);
    let list = show(&killer.cmd(&["CLIENT", "LIST"]));
    assert!(list.contains(&format!("id={id} ")), "{list}");
    assert_eq!(
        show(&killer.cmd(&["CLIENT", "LIST", "ID", "0"])),
        "$0\\r\\n\\r\\n"
    );
    assert_eq!(
        show(&killer.cmd(&["CLIENT", "LIST", "ID", "x"])),
        "-ERR Invalid client ID\\r\\n"
    );
    assert_eq!(
        show(&killer.cmd(&["CLIENT", "KILL", "ID", &id])),
        ":1\\r\\n"
    );
    assert!(victim.closed(), "the killed connection stays open");
    assert_eq!(
        show(&killer.cmd(&["CLIENT", "KILL", "ID", &id])),
        ":0\\r\\n"
    );
    assert_eq!(show(&killer.cmd(&["QUIT"])), "+OK\\r\\n");
    assert!(killer.closed());
}

#[test]
fn limits_close_the_connection_with_redis_errors() {
    let m = Manifold::start();
    // A bulk longer than the engine's max_message_bytes (16 MiB here).
    let mut raw = Raw::connect(m.addr);
    raw.send_raw(b"*3\r\n$4\r\nECHO\r\n$99999999\r\n");
    assert_eq!(
        show(&raw.reply()),
        "-ERR Protocol error: invalid bulk length\\r\\n"
    );
    assert!(raw.closed());
    // A half-written request changes nothing: the key never appears.
    let mut raw = Raw::connect(m.addr);
    raw.send_raw(b"*5\r\n$4\r\nXADD\r\n$4\r\nhalf\r\n$1\r\n*\r\n$1\r\nf\r\n$1\r\n");
    drop(raw);
    let mut check = Raw::connect(m.addr);
    assert_eq!(show(&check.cmd(&["EXISTS", "half"])), ":0\\r\\n");
}

#[test]
fn a_pipeline_of_writes_is_answered_in_order() -> RedisResult<()> {
    let m = Manifold::start();
    let mut con = connect(&m);
    let mut pipe = redis::pipe();
    for n in 1..=500u64 {
        pipe.cmd("XADD")
            .arg("p")
            .arg(format!("{n}-1"))
            .arg("n")
            .arg(n);
    }
    pipe.cmd("XADD").arg("p").arg("1-1").arg("n").arg(0);
    pipe.cmd("XLEN").arg("p");
    // The duplicate XADD's error comes back in its slot.
    let replies: Vec<Value> = pipe.ignore_errors().query(&mut con)?;
    assert_eq!(replies.len(), 502);
    for (n, r) in replies.iter().take(500).enumerate() {
        assert_eq!(
            r,
            &Value::BulkString(format!("{}-1", n + 1).into_bytes()),
            "reply {n}"
        );
    }
    assert!(
        matches!(&replies[500], Value::ServerError(_)),
        "{:?}",
        replies[500]
    );
    assert_eq!(replies[501], Value::Int(500));
    Ok(())
}

#[test]
fn group_replies_that_depend_on_the_clock() {
    let m = Manifold::start();
    let mut raw = Raw::connect(m.addr);
    raw.cmd(&["XADD", "s", "1-1", "f", "v"]);
    raw.cmd(&["XGROUP", "CREATE", "s", "g", "0"]);
    raw.cmd(&["XREADGROUP", "GROUP", "g", "alice", "STREAMS", "s", ">"]);
    let pending = show(&raw.cmd(&["XPENDING", "s", "g", "-", "+", "10"]));
    assert!(
        pending.starts_with("*1\\r\\n*4\\r\\n$3\\r\\n1-1\\r\\n$5\\r\\nalice\\r\\n:"),
        "{pending}"
    );
    assert!(pending.ends_with(":1\\r\\n"), "delivered once: {pending}");
    // Not idle long enough: nothing moves.
    assert_eq!(
        show(&raw.cmd(&["XCLAIM", "s", "g", "bob", "3600000", "1-1"])),
        "*0\\r\\n"
    );
    // IDLE sets the delivery time back: a claim with a smaller min-idle then takes it.
    raw.cmd(&[
        "XCLAIM", "s", "g", "alice", "0", "1-1", "IDLE", "5000000", "JUSTID",
    ]);
    assert_eq!(
        show(&raw.cmd(&["XCLAIM", "s", "g", "bob", "3600000", "1-1", "JUSTID"])),
        "*1\\r\\n$3\\r\\n1-1\\r\\n"
    );
    let consumers = show(&raw.cmd(&["XINFO", "CONSUMERS", "s", "g"]));
    assert!(
        consumers.contains("$5\\r\\nalice\\r\\n$7\\r\\npending\\r\\n:0"),
        "{consumers}"
    );
    assert!(
        consumers.contains("$3\\r\\nbob\\r\\n$7\\r\\npending\\r\\n:1"),
        "{consumers}"
    );
    let full = show(&raw.cmd(&["XINFO", "STREAM", "s", "FULL"]));
    for field in ["entries", "groups", "pel-count", "seen-time", "consumers"] {
        assert!(full.contains(field), "{field} missing from {full}");
    }
}

#[test]
fn info_reports_redis_fields_and_counts_commands() {
    let m = Manifold::start();
    let mut con = connect(&m);
    let _: String = redis::cmd("XADD")
        .arg(&["s", "*", "f", "v"])
        .query(&mut con)
        .expect("XADD");
    let _ = redis::cmd("NOPE").query::<Value>(&mut con);
    let all = info(&mut con, "all");
    for field in [
        "redis_version:7.0.15",
        "role:master",
        "manifold_raft_role:leader",
        "connected_clients:1",
        "blocked_clients:0",
        "db0:keys=1,expires=0,avg_ttl=0",
        "errorstat_ERR:count=1",
    ] {
        assert!(all.contains(field), "{field} missing from INFO all");
    }
    assert!(all.contains("cmdstat_xadd:calls=1,"), "{all}");
    let ok: String = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut con)
        .expect("RESETSTAT");
    assert_eq!(ok, "OK");
    assert!(!info(&mut con, "commandstats").contains("cmdstat_xadd"));
}

/// In db 0 a key is also an MQTT topic: DEL drops the stream with its groups and retained
/// message, a re-created stream is a new incarnation, and MQTT sessions keep subscriptions.
#[test]
fn del_of_an_mqtt_topic_drops_groups_and_retained_and_keeps_sessions() {
    use bytes::Bytes;
    use manifold_core::engine::{AppendRequest, RetainEffect, SubscribeOptions};
    let m = Manifold::start();
    let engine = m.engine.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut publish = AppendRequest::new(
            0,
            Bytes::from_static(b"sensors/a"),
            vec![(Bytes::from_static(b"payload"), Bytes::from_static(b"21"))],
        );
        publish.retain = RetainEffect::Set;
        engine.append(publish).await.expect("retained publish");
        engine
            .session_open(Bytes::from_static(b"dev1"), false, u32::MAX, None)
            .await
            .expect("session");
        let options = SubscribeOptions {
            qos: 1,
            ..SubscribeOptions::default()
        };
        engine
            .session_subscribe(
                Bytes::from_static(b"dev1"),
                vec![(Bytes::from_static(b"sensors/#"), options)],
            )
            .await
            .expect("subscribe");
    });
    let before = engine
        .stream_info(0, b"sensors/a")
        .expect("info")
        .expect("stream")
        .incarnation;
    let mut raw = Raw::connect(m.addr);
    assert_eq!(
        show(&raw.cmd(&["XGROUP", "CREATE", "sensors/a", "g", "0"])),
        "+OK\\r\\n"
    );
    assert!(engine.retained_of(0, b"sensors/a").is_some());
    assert_eq!(show(&raw.cmd(&["DEL", "sensors/a"])), ":1\\r\\n");
    assert!(
        engine.retained_of(0, b"sensors/a").is_none(),
        "retained kept"
    );
    assert_eq!(show(&raw.cmd(&["EXISTS", "sensors/a"])), ":0\\r\\n");
    assert!(show(&raw.cmd(&["XADD", "sensors/a", "*", "payload", "22"])).starts_with("$"));
    assert_eq!(
        show(&raw.cmd(&["XINFO", "GROUPS", "sensors/a"])),
        "*0\\r\\n",
        "the group went with the old incarnation"
    );
    let after = engine
        .stream_info(0, b"sensors/a")
        .expect("info")
        .expect("stream")
        .incarnation;
    assert!(after > before, "a new incarnation: {before} then {after}");
    let session = engine.session(b"dev1").expect("session kept");
    assert!(
        session
            .subscriptions
            .contains_key(&Bytes::from_static(b"sensors/#"))
    );
    // FLUSHALL: the same for every stream; the session still stands.
    assert_eq!(show(&raw.cmd(&["FLUSHALL"])), "+OK\\r\\n");
    assert_eq!(show(&raw.cmd(&["DBSIZE"])), ":0\\r\\n");
    assert!(engine.session(b"dev1").is_some());
}

/// Manifold's extension: XADD with a message key, and the messages with that key found
/// through the IndexFile, newest first, within a time range.
#[test]
fn messages_are_found_by_their_message_key() {
    let m = Manifold::start();
    let mut raw = Raw::connect(m.addr);
    assert_eq!(
        show(&raw.cmd(&["MANIFOLD.XADD", "orders", "cust-1", "1-1", "item", "a"])),
        "$3\\r\\n1-1\\r\\n"
    );
    raw.cmd(&["MANIFOLD.XADD", "orders", "cust-2", "2-1", "item", "b"]);
    raw.cmd(&[
        "MANIFOLD.XADD",
        "orders",
        "cust-1",
        "MAXLEN",
        "=",
        "10",
        "3-1",
        "item",
        "c",
    ]);
    raw.cmd(&["XADD", "orders", "4-1", "item", "d"]);
    assert_eq!(
        show(&raw.cmd(&["MANIFOLD.FIND", "orders", "cust-1"])),
        "*2\\r\\n*2\\r\\n$3\\r\\n3-1\\r\\n*2\\r\\n$4\\r\\nitem\\r\\n$1\\r\\nc\\r\\n\
         *2\\r\\n$3\\r\\n1-1\\r\\n*2\\r\\n$4\\r\\nitem\\r\\n$1\\r\\na\\r\\n"
    );
    assert_eq!(
        show(&raw.cmd(&["MANIFOLD.FIND", "orders", "cust-1", "COUNT", "1"])),
        "*1\\r\\n*2\\r\\n$3\\r\\n3-1\\r\\n*2\\r\\n$4\\r\\nitem\\r\\n$1\\r\\nc\\r\\n"
    );
    assert_eq!(
        show(&raw.cmd(&["MANIFOLD.FIND", "orders", "nobody"])),
        "*0\\r\\n"
    );
    assert_eq!(
        show(&raw.cmd(&["MANIFOLD.FIND", "orders", "cust-1", "TO", "1"])),
        "*0\\r\\n",
        "stored long after 1 ms past the epoch"
    );
    assert_eq!(
        show(&raw.cmd(&["MANIFOLD.FIND", "orders", "cust-1", "BOGUS", "1"])),
        "-ERR syntax error\\r\\n"
    );
    assert_eq!(
        show(&raw.cmd(&["MANIFOLD.XADD", "orders", "k", "1-1", "f"])),
        "-ERR wrong number of arguments for 'manifold.xadd' command\\r\\n"
    );
}

/// Keys, field names and values are bytes: NUL, CR LF, invalid UTF-8 and an empty value come
/// back exactly, in XRANGE, XREAD, KEYS and SCAN, in RESP2 and RESP3.
#[test]
fn binary_keys_and_values_round_trip() {
    let m = Manifold::start();
    let key: &[u8] = b"bin\x00\xff\r\nkey";
    let field: &[u8] = b"f\x00\r\n";
    let value: &[u8] = b"\xc3\x28\x00\r\n\xff";
    for protocol in ["2", "3"] {
        let mut raw = Raw::connect(m.addr);
        raw.cmd(&["HELLO", protocol]);
        raw.call(&[b"DEL", key]);
        assert_eq!(
            show(&raw.call(&[b"XADD", key, b"1-1", field, value, b"empty", b""])),
            "$3\\r\\n1-1\\r\\n"
        );
        let mut want = b"*1\r\n*2\r\n$3\r\n1-1\r\n*4\r\n".to_vec();
        for part in [field, value, b"empty".as_slice(), b"".as_slice()] {
            want.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
            want.extend_from_slice(part);
            want.extend_from_slice(b"\r\n");
        }
        assert_eq!(
            raw.call(&[b"XRANGE", key, b"-", b"+"]),
            want,
            "RESP{protocol}"
        );
        let read = raw.call(&[b"XREAD", b"STREAMS", key, b"0"]);
        assert!(
            read.windows(value.len()).any(|w| w == value),
            "XREAD lost the value: {}",
            show(&read)
        );
        let mut bulk_key = format!("${}\r\n", key.len()).into_bytes();
        bulk_key.extend_from_slice(key);
        bulk_key.extend_from_slice(b"\r\n");
        let keys = raw.call(&[b"KEYS", b"bin*"]);
        assert!(keys.ends_with(&bulk_key), "KEYS: {}", show(&keys));
        let scan = raw.call(&[b"SCAN", b"0", b"MATCH", b"bin*", b"COUNT", b"100"]);
        assert!(scan.ends_with(&bulk_key), "SCAN: {}", show(&scan));
        assert_eq!(show(&raw.call(&[b"TYPE", key])), "+stream\\r\\n");
    }
}

/// Replies ahead of a blocking command in a pipeline go out when it blocks (as Redis writes
/// a blocked client's pending replies); CLIENT KILL of a client type nobody has kills no one;
/// a killed client that never reads is dropped all the same.
#[test]
fn replies_before_a_block_are_sent_and_kill_filters_by_type() {
    let m = Manifold::start();
    let mut raw = Raw::connect(m.addr);
    let mut pipeline = support::encode(&[b"XADD", b"s", b"1-1", b"f", b"v"]);
    pipeline.extend(support::encode(&[
        b"XREAD", b"BLOCK", b"0", b"STREAMS", b"t", b"$",
    ]));
    raw.send_raw(&pipeline);
    assert_eq!(
        show(&raw.reply()),
        "$3\\r\\n1-1\\r\\n",
        "the XADD reply came first"
    );
    let mut other = Raw::connect(m.addr);
    assert_eq!(
        show(&other.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"])),
        ":0\\r\\n"
    );
    assert_eq!(
        show(&other.cmd(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])),
        ":1\\r\\n"
    );
    assert!(raw.closed(), "the blocked client was killed");
}

/// A blocked XREADGROUP is woken when its group is destroyed or its stream deleted, and
/// answers as Redis 7.0 does; a blocked plain XREAD stays blocked through a DEL.
#[test]
fn a_blocked_group_reader_learns_its_group_or_stream_went() {
    let m = Manifold::start();
    let mut admin = Raw::connect(m.addr);
    for key in ["a", "b"] {
        admin.cmd(&["XGROUP", "CREATE", key, "g", "$", "MKSTREAM"]);
    }
    let mut readers = Vec::new();
    for key in ["a", "b"] {
        let mut r = Raw::connect(m.addr);
        r.send(&[
            b"XREADGROUP",
            b"GROUP",
            b"g",
            b"c",
            b"BLOCK",
            b"0",
            b"STREAMS",
            key.as_bytes(),
            b">",
        ]);
        readers.push(r);
    }
    let mut plain = Raw::connect(m.addr);
    plain.send(&[b"XREAD", b"BLOCK", b"0", b"STREAMS", b"b", b"$"]);
    let blocked = |admin: &mut Raw| {
        let info = show(&admin.cmd(&["INFO", "clients"]));
        info.contains("blocked_clients:3")
    };
    assert!(eventually(Duration::from_secs(5), || blocked(&mut admin)));
    assert_eq!(
        show(&admin.cmd(&["XGROUP", "DESTROY", "a", "g"])),
        ":1\\r\\n"
    );
    assert_eq!(
        show(&readers[0].reply()),
        "-NOGROUP the consumer group this client was blocked on no longer exists\\r\\n"
    );
    assert_eq!(show(&admin.cmd(&["DEL", "b"])), ":1\\r\\n");
    assert_eq!(
        show(&readers[1].reply()),
        "-UNBLOCKED the stream key no longer exists\\r\\n"
    );
    // The plain reader is still waiting: an entry added now reaches it.
    admin.cmd(&["XADD", "b", "5-1", "f", "v"]);
    assert!(show(&plain.reply()).contains("5-1"));
}

/// Before authenticating, a client may send what Redis 7.0 allows it: at most 10 arguments
/// and bulks of at most 16 KiB; afterwards the normal limits apply.
#[test]
fn unauthenticated_clients_get_redis_small_limits() {
    let m = Manifold::start_with(AccessConfig {
        principals: vec![PrincipalConfig {
            name: "alice".into(),
            secret: Some("pw".into()),
            publish: vec!["*".into()],
            subscribe: vec!["*".into()],
        }],
    });
    let mut raw = Raw::connect(m.addr);
    raw.send_raw(b"*11\r\n");
    assert_eq!(
        show(&raw.reply()),
        "-ERR Protocol error: unauthenticated multibulk length\\r\\n"
    );
    assert!(raw.closed());
    let mut raw = Raw::connect(m.addr);
    raw.send_raw(b"*2\r\n$4\r\nECHO\r\n$16385\r\n");
    assert_eq!(
        show(&raw.reply()),
        "-ERR Protocol error: unauthenticated bulk length\\r\\n"
    );
    assert!(raw.closed());
    let mut raw = Raw::connect(m.addr);
    assert_eq!(show(&raw.cmd(&["AUTH", "alice", "pw"])), "+OK\\r\\n");
    let big = vec![b'x'; 20_000];
    let reply = raw.call(&[b"ECHO", &big]);
    assert_eq!(reply.len(), 20_000 + "$20000\r\n\r\n".len());
    let many: Vec<&[u8]> = std::iter::once(&b"XADD"[..])
        .chain([&b"s"[..], b"*"])
        .chain(std::iter::repeat_n(&b"f"[..], 12))
        .collect();
    assert!(show(&raw.call(&many)).starts_with("$"));
}

#[test]
fn transactions_through_the_redis_crate_are_atomic_and_watch_retries() -> RedisResult<()> {
    let m = Manifold::start();
    let mut con = connect(&m);
    // An atomic pipeline is MULTI ... EXEC: one reply per command, IDs resolved in order.
    let (a, b, len): (String, String, u64) = redis::pipe()
        .atomic()
        .cmd("XADD")
        .arg("s")
        .arg("*")
        .arg("f")
        .arg("1")
        .cmd("XADD")
        .arg("s")
        .arg("*")
        .arg("f")
        .arg("2")
        .cmd("XLEN")
        .arg("s")
        .query(&mut con)?;
    assert!(a < b || a.len() < b.len(), "{a} then {b}");
    assert_eq!(len, 2);
    // Optimistic locking: four clients append the stream's length as they saw it; WATCH makes
    // a client whose view went stale retry, so every length is appended exactly once.
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let addr = m.addr;
            std::thread::spawn(move || -> RedisResult<u32> {
                let client = redis::Client::open(format!("redis://{addr}/"))?;
                let mut con = client.get_connection()?;
                let mut retries = 0;
                for _ in 0..25 {
                    redis::transaction(&mut con, &["counter"], |con, pipe| {
                        let n: u64 = redis::cmd("XLEN").arg("counter").query(con)?;
                        let done: Option<Vec<String>> = pipe
                            .cmd("XADD")
                            .arg("counter")
                            .arg("*")
                            .arg("n")
                            .arg(n)
                            .query(con)?;
                        if done.is_none() {
                            retries += 1;
                        }
                        Ok(done)
                    })?;
                }
                Ok(retries)
            })
        })
        .collect();
    let mut retries = 0;
    for t in threads {
        retries += t.join().expect("thread")?;
    }
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("counter")
        .arg("-")
        .arg("+")
        .query(&mut con)?;
    let seen: Vec<String> = entries.into_iter().map(|(_, f)| f[0].1.clone()).collect();
    let want: Vec<String> = (0..100).map(|n| n.to_string()).collect();
    assert_eq!(seen, want, "each length once, in order ({retries} retries)");
    Ok(())
}

#[test]
fn a_blocked_reader_wakes_on_a_transaction_and_sees_all_of_it() {
    let m = Manifold::start();
    let mut reader = connect(&m);
    let mut writer = connect(&m);
    let waiting = std::thread::spawn(move || {
        redis::cmd("XREAD")
            .arg("BLOCK")
            .arg(0)
            .arg("STREAMS")
            .arg("s")
            .arg("$")
            .query::<Value>(&mut reader)
            .expect("XREAD")
    });
    assert!(eventually(Duration::from_secs(10), || blocked_clients(
        &mut writer
    ) == 1));
    let _: Value = redis::pipe()
        .atomic()
        .cmd("XADD")
        .arg("s")
        .arg("1-1")
        .arg("f")
        .arg("a")
        .cmd("XADD")
        .arg("s")
        .arg("1-2")
        .arg("f")
        .arg("b")
        .query(&mut writer)
        .expect("EXEC");
    let got = waiting.join().expect("reader");
    assert_eq!(ids_in(&got), vec!["1-1", "1-2"]);
}

#[test]
fn a_transaction_larger_than_one_log_entry_is_refused_whole() {
    let m = Manifold::start();
    let mut raw = Raw::connect(m.addr);
    let big = vec![b'x'; 9 << 20];
    assert_eq!(show(&raw.cmd(&["MULTI"])), "+OK\\r\\n");
    for id in ["1-1", "2-1"] {
        let reply = raw.call(&[b"XADD", b"big", id.as_bytes(), b"f", &big]);
        assert_eq!(show(&reply), "+QUEUED\\r\\n");
    }
    assert_eq!(
        show(&raw.cmd(&["EXEC"])),
        "-ERR invalid argument: the transaction is larger than one log entry may be (16 MiB)\\r\\n"
    );
    assert_eq!(show(&raw.cmd(&["EXISTS", "big"])), ":0\\r\\n");
    // The connection goes on, outside any transaction.
    assert_eq!(show(&raw.cmd(&["EXEC"])), "-ERR EXEC without MULTI\\r\\n");
}

#[test]
fn client_list_shows_a_client_in_a_transaction() {
    let m = Manifold::start();
    let mut a = Raw::connect(m.addr);
    let mut b = Raw::connect(m.addr);
    let line_of = |b: &mut Raw| {
        let list = String::from_utf8_lossy(&b.cmd(&["CLIENT", "LIST"])).into_owned();
        let line = list
            .lines()
            .find(|l| l.contains("name=txa"))
            .expect("the client's line")
            .to_string();
        let field = |name: &str| {
            line.split(' ')
                .find_map(|f| f.strip_prefix(name))
                .expect("field")
                .to_string()
        };
        (field("flags="), field("multi="))
    };
    a.cmd(&["CLIENT", "SETNAME", "txa"]);
    assert_eq!(line_of(&mut b), ("N".into(), "-1".into()));
    a.cmd(&["MULTI"]);
    a.cmd(&["XLEN", "s"]);
    a.cmd(&["XLEN", "t"]);
    assert_eq!(
        line_of(&mut b),
        ("x".into(), "2".into()),
        "as redis-server shows it"
    );
    a.cmd(&["EXEC"]);
    assert_eq!(line_of(&mut b), ("N".into(), "-1".into()));
}
