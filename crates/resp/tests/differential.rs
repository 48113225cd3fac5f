//! Manifold against the reference: the same commands sent to Manifold's RESP front end and to
//! Debian's `redis-server` (Redis 7.0) must get byte-for-byte the same replies — reply shapes,
//! error texts, RESP2 and RESP3. IDs are explicit so both servers generate the same ones;
//! replies that depend on the server (HELLO's id, INFO, CLIENT LIST) are left out.

mod support;

use support::{Manifold, Raw, Redis, show};

/// Runs `script` on both servers, each on a fresh database, comparing every reply.
fn same(manifold: &Manifold, redis: &Redis, script: &[&[&str]]) {
    let mut ours = Raw::connect(manifold.addr);
    let mut theirs = Raw::connect(redis.addr);
    ours.cmd(&["FLUSHALL"]);
    theirs.cmd(&["FLUSHALL"]);
    for cmd in script {
        let want = theirs.cmd(cmd);
        let got = ours.cmd(cmd);
        assert_eq!(
            show(&got),
            show(&want),
            "reply to {cmd:?} differs from redis-server's"
        );
    }
}

#[test]
fn replies_match_redis_server() {
    let manifold = Manifold::start();
    let redis = Redis::start();
    let scripts: &[&[&[&str]]] = &[
        // XADD: IDs, options and their errors.
        &[
            &["XADD", "s", "1-1", "f", "v"],
            &["XADD", "s", "1-1", "f", "v"],
            &["XADD", "s", "1-0", "f", "v"],
            &["XADD", "s", "1-*", "a", "b", "c", "d"],
            &["XADD", "s", "2", "f", "v"],
            &["XADD", "s", "0-0", "f", "v"],
            &["XADD", "s", "0", "f", "v"],
            &["XADD", "new", "0-*", "f", "v"],
            &["XADD", "s", "3-1", "f"],
            &["XADD", "s", "3-1"],
            &["XADD", "s", "3-1", "f", "v", "g"],
            &["XADD", "s", "bogus", "f", "v"],
            &["XADD", "s", "3-x", "f", "v"],
            &["XADD", "s", "-", "f", "v"],
            &["XADD", "s", "+5", "f", "v"],
            &["XADD", "s", "MAXLEN", "-1", "4-1", "f", "v"],
            &["XADD", "s", "MAXLEN", "x", "4-1", "f", "v"],
            &["XADD", "s", "MAXLEN", "2", "MINID", "1", "4-1", "f", "v"],
            &["XADD", "s", "LIMIT", "5", "4-1", "f", "v"],
            &["XADD", "s", "MAXLEN", "2", "LIMIT", "5", "4-1", "f", "v"],
            &[
                "XADD", "s", "MAXLEN", "=", "2", "LIMIT", "5", "4-1", "f", "v",
            ],
            &["XADD", "s", "LIMIT", "0", "4-1", "f", "v"],
            &["XADD", "s", "LIMIT", "-1", "4-1", "f", "v"],
            &["XADD", "s", "MAXLEN", "=", "3", "4-1", "f", "v"],
            &["XRANGE", "s", "-", "+"],
            &["XADD", "s", "MINID", "3", "5-1", "f", "v"],
            &["XRANGE", "s", "-", "+"],
            &["XADD", "nomk", "NOMKSTREAM", "1-1", "f", "v"],
            &["EXISTS", "nomk"],
            &["XADD", "s", "NOMKSTREAM", "6-1", "f", "v"],
            &["XLEN", "s"],
            &["xadd", "s", "maxlen", "=", "1", "7-1", "f", "v"],
            &["XRANGE", "s", "-", "+"],
        ],
        // XRANGE / XREVRANGE: bounds, exclusive bounds, COUNT.
        &[
            &["XADD", "r", "1-1", "a", "1"],
            &["XADD", "r", "1-2", "a", "2"],
            &["XADD", "r", "2-0", "a", "3"],
            &["XADD", "r", "3-5", "a", "4"],
            &["XRANGE", "r", "-", "+"],
            &["XRANGE", "r", "1", "1"],
            &["XRANGE", "r", "(1-1", "+"],
            &["XRANGE", "r", "-", "(3-5"],
            &["XRANGE", "r", "(1", "2"],
            &["XRANGE", "r", "-", "+", "COUNT", "2"],
            &["XRANGE", "r", "-", "+", "COUNT", "0"],
            &["XRANGE", "r", "-", "+", "COUNT", "-3"],
            &["XRANGE", "r", "-", "+", "COUNT"],
            &["XRANGE", "r", "-", "+", "COUNT", "x"],
            &["XRANGE", "r", "-", "+", "LIMIT", "1"],
            &["XRANGE", "r", "3", "1"],
            &["XRANGE", "r", "x", "+"],
            &[
                "XRANGE",
                "r",
                "(18446744073709551615-18446744073709551615",
                "+",
            ],
            &["XRANGE", "r", "-", "(0-0"],
            &["XRANGE", "r", "(", "+"],
            &["XRANGE", "missing", "-", "+"],
            &["XRANGE", "missing", "-", "+", "COUNT", "0"],
            &["XREVRANGE", "r", "+", "-"],
            &["XREVRANGE", "r", "+", "-", "COUNT", "1"],
            &["XREVRANGE", "r", "(3-5", "(1-1"],
            &["XREVRANGE", "r", "-", "+"],
            &["XRANGE", "r"],
        ],
        // XLEN, XDEL, XTRIM.
        &[
            &["XADD", "d", "1-1", "a", "1"],
            &["XADD", "d", "2-1", "a", "2"],
            &["XADD", "d", "3-1", "a", "3"],
            &["XADD", "d", "4-1", "a", "4"],
            &["XDEL", "d", "2-1", "2-1", "9-9"],
            &["XDEL", "d", "bad"],
            &["XDEL", "missing", "bad"],
            &["XLEN", "d"],
            &["XLEN", "missing"],
            &["XRANGE", "d", "-", "+"],
            &["XTRIM", "d", "MAXLEN", "2"],
            &["XTRIM", "d", "MAXLEN", "=", "1"],
            &["XRANGE", "d", "-", "+"],
            &["XTRIM", "d"],
            &["XTRIM", "d", "LIMIT", "5"],
            &["XTRIM", "d", "FOO", "1"],
            &["XTRIM", "d", "NOMKSTREAM"],
            &["XTRIM", "d", "MAXLEN", "~"],
            &["XTRIM", "d", "MAXLEN", "1", "LIMIT", "1"],
            &["XTRIM", "d", "MINID", "bad"],
            &["XTRIM", "missing", "MAXLEN", "0"],
            &["XADD", "d", "5-1", "a", "5"],
            &["XTRIM", "d", "MINID", "5"],
            &["XRANGE", "d", "-", "+"],
            &["XDEL", "d", "5-1"],
            &["XLEN", "d"],
            &["EXISTS", "d"],
            &["TYPE", "d"],
        ],
        // XREAD without blocking.
        &[
            &["XADD", "a", "1-1", "f", "1"],
            &["XADD", "a", "2-1", "f", "2"],
            &["XADD", "b", "1-5", "g", "1"],
            &["XREAD", "STREAMS", "a", "0"],
            &["XREAD", "COUNT", "1", "STREAMS", "a", "b", "0", "0"],
            &["XREAD", "STREAMS", "a", "b", "1-1", "1-5"],
            &["XREAD", "STREAMS", "a", "missing", "0", "0"],
            &["XREAD", "STREAMS", "a", "$"],
            &["XREAD", "STREAMS", "a"],
            &["XREAD", "STREAMS", "a", "b", "0"],
            &["XREAD", "COUNT", "x", "STREAMS", "a", "0"],
            &["XREAD", "COUNT", "-1", "STREAMS", "a", "0"],
            &["XREAD", "COUNT", "0", "STREAMS", "a", "0"],
            &["XREAD", "BLOCK", "-1", "STREAMS", "a", "0"],
            &["XREAD", "BLOCK", "x", "STREAMS", "a", "0"],
            &["XREAD", "FOO", "STREAMS", "a", "0"],
            &["XREAD", "COUNT", "1", "a", "0"],
            &["XREAD", "GROUP", "g", "c", "STREAMS", "a", ">"],
            &["XREAD", "NOACK", "STREAMS", "a", "0"],
            &["XREAD", "STREAMS", "a", ">"],
            &["XREAD", "STREAMS", "a", "bad"],
            &["XREAD", "STREAMS", "a", "+"],
            &["XREAD", "BLOCK", "10", "STREAMS", "a", "5-0"],
            &["XREAD", "STREAMS"],
        ],
        // Keys, connection commands, generic errors.
        &[
            &["XADD", "k", "1-1", "f", "v"],
            &["EXISTS", "k", "k", "nope"],
            &["TYPE", "nope"],
            &["KEYS", "k*"],
            &["KEYS", "z*"],
            &["DBSIZE"],
            &["SELECT", "1"],
            &["DBSIZE"],
            &["EXISTS", "k"],
            &["SELECT", "0"],
            &["SELECT", "16"],
            &["SELECT", "-1"],
            &["SELECT", "x"],
            &["SELECT", "99999999999"],
            &["DEL", "k", "k", "nope"],
            &["UNLINK", "k"],
            &["DBSIZE"],
            &["PING"],
            &["PING", "hello"],
            &["PING", "a", "b"],
            &["ECHO", "x y"],
            &["ECHO"],
            &["FOO"],
            &["FOO", "a", "b"],
            &["xlen"],
            &["XGROUP", "NOPE"],
            &["CLIENT", "NOPE"],
            &["FLUSHDB", "BAD"],
            &["FLUSHDB", "ASYNC"],
            &["SCAN", "x"],
            &["SCAN", "0", "COUNT", "0"],
            &["SCAN", "0", "MATCH"],
            &["CLIENT", "SETNAME", "has space"],
            &["CLIENT", "SETNAME", "ok-name"],
            &["CLIENT", "GETNAME"],
            &["CONFIG", "GET", "stream-node-max-entries"],
            &["CONFIG", "SET", "nonexistent-option", "1"],
            &["HELLO", "4"],
            &["HELLO", "x"],
            &["HELLO", "2", "FOO"],
            &["AUTH", "pass"],
            &["AUTH", "a", "b", "c"],
        ],
        // Consumer groups (no reply here depends on the clock: idle times are left out).
        &[
            &["XGROUP", "CREATE", "g", "grp", "$"],
            &["XGROUP", "CREATE", "g", "grp", "$", "MKSTREAM"],
            &["XGROUP", "CREATE", "g", "grp", "$", "MKSTREAM"],
            &["XGROUP", "CREATE", "g", "grp2", "0", "ENTRIESREAD", "-2"],
            &["XGROUP", "CREATE", "g", "grp2", "0", "ENTRIESREAD"],
            &["XGROUP", "CREATE", "g", "grp2", "0", "BOGUS"],
            &["XGROUP", "CREATE", "g", "grp2", "-"],
            &["XGROUP", "CREATE", "g", "grp2", "0"],
            &["XGROUP"],
            &["XGROUP", "CREATE", "g"],
            &["XGROUP", "SETID", "g", "nogroup", "0"],
            &["XGROUP", "SETID", "nokey", "grp", "0"],
            &["XGROUP", "DESTROY", "nokey", "grp"],
            &["XGROUP", "DESTROY", "g", "nogroup"],
            &["XGROUP", "CREATECONSUMER", "g", "nogroup", "c"],
            &["XGROUP", "CREATECONSUMER", "g", "grp", "c1"],
            &["XGROUP", "CREATECONSUMER", "g", "grp", "c1"],
            &["XADD", "g", "1-1", "f", "1"],
            &["XADD", "g", "2-1", "f", "2"],
            &["XADD", "g", "3-1", "f", "3"],
            &[
                "XREADGROUP",
                "GROUP",
                "grp",
                "c1",
                "COUNT",
                "1",
                "STREAMS",
                "g",
                ">",
            ],
            &["XREADGROUP", "GROUP", "grp", "c2", "STREAMS", "g", ">"],
            &["XREADGROUP", "GROUP", "grp", "c2", "STREAMS", "g", ">"],
            &["XREADGROUP", "GROUP", "grp", "c1", "STREAMS", "g", "0"],
            &["XREADGROUP", "GROUP", "grp", "c3", "STREAMS", "g", "0"],
            &["XREADGROUP", "GROUP", "grp", "c1", "STREAMS", "g", "$"],
            &["XREADGROUP", "GROUP", "nogrp", "c1", "STREAMS", "g", ">"],
            &["XREADGROUP", "GROUP", "grp", "c1", "STREAMS", "nokey", ">"],
            &["XREADGROUP", "STREAMS", "g", ">"],
            &["XREADGROUP", "GROUP", "grp", "c1", "STREAMS", "g"],
            &["XPENDING", "g", "grp"],
            &["XPENDING", "g", "grp2"],
            &["XPENDING", "g", "nogrp"],
            &["XPENDING", "g", "grp", "-", "+"],
            &["XPENDING", "g", "grp", "-", "+", "0"],
            &["XPENDING", "g", "grp", "-", "+", "x"],
            &["XPENDING", "g", "grp", "IDLE", "x", "-", "+", "10"],
            &["XPENDING", "g", "grp", "IDLE", "10", "-", "+"],
            &["XPENDING", "g", "grp", "(x", "+", "10"],
            &["XPENDING", "g", "grp", "-", "+", "10", "nobody"],
            &["XACK", "g", "grp", "1-1", "9-9"],
            &["XACK", "g", "grp", "bad"],
            &["XACK", "g", "nogrp", "bad"],
            &["XACK", "nokey", "grp", "bad"],
            &["XPENDING", "g", "grp"],
            &["XCLAIM", "g", "grp", "c3", "0", "2-1", "JUSTID"],
            &["XCLAIM", "g", "grp", "c3", "0", "2-1", "3-1", "JUSTID"],
            &["XCLAIM", "g", "grp", "c3", "x", "2-1"],
            &["XCLAIM", "g", "grp", "c3", "0", "2-1", "IDLE", "x"],
            &["XCLAIM", "g", "grp", "c3", "0", "2-1", "TIME", "x"],
            &["XCLAIM", "g", "grp", "c3", "0", "2-1", "RETRYCOUNT", "x"],
            &["XCLAIM", "g", "grp", "c3", "0", "2-1", "BOGUS"],
            &["XCLAIM", "g", "grp", "c3", "0", "2-1", "LASTID", "x"],
            &["XCLAIM", "g", "nogrp", "c3", "0", "2-1"],
            &["XPENDING", "g", "grp"],
            &["XAUTOCLAIM", "g", "grp", "c1", "0", "0", "JUSTID"],
            &["XAUTOCLAIM", "g", "grp", "c1", "0", "0", "COUNT", "0"],
            &["XAUTOCLAIM", "g", "grp", "c1", "0", "0", "COUNT", "x"],
            &["XAUTOCLAIM", "g", "grp", "c1", "x", "0"],
            &["XAUTOCLAIM", "g", "grp", "c1", "0", "0", "BOGUS"],
            &["XAUTOCLAIM", "g", "nogrp", "c1", "0", "0"],
            &["XDEL", "g", "2-1"],
            &["XAUTOCLAIM", "g", "grp", "c1", "0", "0"],
            &["XREADGROUP", "GROUP", "grp", "c1", "STREAMS", "g", "0"],
            &["XINFO", "GROUPS", "g"],
            &["XINFO", "GROUPS", "nokey"],
            &["XINFO", "CONSUMERS", "g", "nogrp"],
            &["XINFO", "CONSUMERS", "nokey", "grp"],
            &["XINFO", "STREAM", "g", "FULL", "COUNT"],
            &["XINFO", "STREAM", "g", "BOGUS"],
            &["XINFO", "BOGUS"],
            &["XGROUP", "DELCONSUMER", "g", "grp", "c1"],
            &["XGROUP", "DELCONSUMER", "g", "grp", "nobody"],
            &["XGROUP", "SETID", "g", "grp", "0", "ENTRIESREAD", "1"],
            &["XGROUP", "SETID", "g", "grp", "+"],
            &["XINFO", "GROUPS", "g"],
            &[
                "XREADGROUP",
                "GROUP",
                "grp2",
                "c",
                "NOACK",
                "STREAMS",
                "g",
                ">",
            ],
            &["XPENDING", "g", "grp2"],
            &["XGROUP", "DESTROY", "g", "grp"],
            &["XGROUP", "DESTROY", "g", "grp"],
            &["XINFO", "GROUPS", "g"],
            &["XGROUP", "HELP"],
            &["XINFO", "HELP"],
        ],
        // RESP3 after HELLO 3 (its own reply differs in id and version: checked apart).
        &[
            &["XADD", "t", "1-1", "f", "v"],
            &["XADD", "t", "2-1", "f", "w"],
        ],
    ];
    for script in scripts {
        same(&manifold, &redis, script);
    }
    // RESP3: maps, nulls.
    let mut ours = Raw::connect(manifold.addr);
    let mut theirs = Raw::connect(redis.addr);
    let hello_ours = ours.cmd(&["HELLO", "3"]);
    let hello_theirs = theirs.cmd(&["HELLO", "3"]);
    assert!(show(&hello_ours).starts_with("%7\\r\\n$6\\r\\nserver\\r\\n$5\\r\\nredis\\r\\n"));
    assert!(show(&hello_theirs).starts_with("%7\\r\\n$6\\r\\nserver\\r\\n$5\\r\\nredis\\r\\n"));
    for cmd in [
        &["XREAD", "STREAMS", "t", "0"][..],
        &["XREAD", "STREAMS", "t", "9"],
        &["XRANGE", "t", "-", "+", "COUNT", "0"],
        &["XRANGE", "t", "-", "+"],
        &["XADD", "t", "NOMKSTREAM", "1-1", "f", "v"],
        &["XADD", "none", "NOMKSTREAM", "1-1", "f", "v"],
        &["CLIENT", "GETNAME"],
        &["CONFIG", "GET", "stream-node-max-bytes"],
        &["PING"],
    ] {
        let want = theirs.cmd(cmd);
        let got = ours.cmd(cmd);
        assert_eq!(show(&got), show(&want), "RESP3 reply to {cmd:?}");
    }
}

#[test]
fn inline_commands_and_protocol_errors_match_redis_server() {
    let manifold = Manifold::start();
    let redis = Redis::start();
    let cases: &[&[u8]] = &[
        b"PING\r\n",
        b"ECHO \"a b\\x41\"\r\n",
        b"ECHO 'it''s'\r\n",
        b"\r\nPING\r\n",
        b"*0\r\n*1\r\n$4\r\nPING\r\n",
        b"ECHO \"unbalanced\r\n",
        b"*1\r\n$abc\r\n",
        b"*x\r\n",
        b"*1\r\n+PING\r\n",
    ];
    for case in cases {
        let mut ours = Raw::connect(manifold.addr);
        let mut theirs = Raw::connect(redis.addr);
        ours.send_raw(case);
        theirs.send_raw(case);
        let want = theirs.reply();
        let got = ours.reply();
        assert_eq!(show(&got), show(&want), "reply to {:?}", show(case));
        if want.starts_with(b"-ERR Protocol error") {
            assert!(
                theirs.closed(),
                "redis-server closes after a protocol error"
            );
            assert!(ours.closed(), "closes after a protocol error");
        }
    }
}

/// `~` trims cut whole nodes of 100 entries, as Redis's radix tree holds them: the same
/// entries go on both servers (small entries: Redis's 4 KiB node byte limit is not reached).
#[test]
fn approximate_trims_match_redis_server() {
    let manifold = Manifold::start();
    let redis = Redis::start();
    let mut ours = Raw::connect(manifold.addr);
    let mut theirs = Raw::connect(redis.addr);
    let mut both = |cmd: Vec<String>| {
        let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let want = theirs.cmd(&args);
        let got = ours.cmd(&args);
        assert_eq!(show(&got), show(&want), "reply to {cmd:?}");
    };
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    for key in ["a", "b", "c", "d"] {
        for n in 1..=350 {
            both(s(&["XADD", key, &format!("{n}-1"), "f", "v"]));
        }
    }
    both(s(&["XTRIM", "a", "MAXLEN", "~", "120"]));
    both(s(&["XLEN", "a"]));
    both(s(&["XRANGE", "a", "-", "+", "COUNT", "1"]));
    both(s(&["XTRIM", "a", "MAXLEN", "~", "0", "LIMIT", "150"]));
    both(s(&["XLEN", "a"]));
    both(s(&["XTRIM", "a", "MAXLEN", "~", "0"]));
    both(s(&["XLEN", "a"]));
    both(s(&["XTRIM", "b", "MINID", "~", "250"]));
    both(s(&["XRANGE", "b", "-", "+", "COUNT", "1"]));
    both(s(&["XTRIM", "b", "MINID", "~", "1000"]));
    both(s(&["XLEN", "b"]));
    both(s(&["XADD", "c", "MAXLEN", "~", "99", "351-1", "f", "v"]));
    both(s(&["XLEN", "c"]));
    both(s(&["XDEL", "d", "5-1", "150-1"]));
    both(s(&["XTRIM", "d", "MAXLEN", "~", "200"]));
    both(s(&["XLEN", "d"]));
    both(s(&["XRANGE", "d", "-", "+", "COUNT", "1"]));
    both(s(&["XTRIM", "d", "MAXLEN", "~", "10", "LIMIT", "99"]));
    both(s(&["XLEN", "d"]));
}
