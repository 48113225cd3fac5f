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
            &["XRANGE", "r", "(-", "+"],
            &["XRANGE", "r", "-", "(+"],
            &["XREVRANGE", "r", "(+", "(-"],
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
            &["CLIENT", "KILL", "USER", "nosuch"],
            &[
                "CLIENT", "KILL", "USER", "default", "SKIPME", "yes", "ID", "999999",
            ],
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
            &["XPENDING", "g", "grp", "(-", "+", "10"],
            &["XINFO", "STREAM", "nokey", "BOGUS"],
            &["XINFO", "STREAM", "nokey", "FULL"],
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
        // XSETID: argument errors first, then the key, then the stream's bounds.
        &[
            &["XSETID", "nokey", "1-1"],
            &["XSETID", "nokey", "bad"],
            &["XSETID", "nokey", "1-1", "ENTRIESADDED", "-1"],
            &["XSETID", "nokey", "1-1", "ENTRIESADDED", "x"],
            &["XSETID", "nokey", "1-1", "MAXDELETEDID", "2-0"],
            &["XSETID", "nokey", "1-1", "BOGUS", "1"],
            &["XSETID", "nokey", "1-1", "ENTRIESADDED"],
            &["XADD", "x", "5-1", "f", "v"],
            &["XADD", "x", "6-1", "f", "v"],
            &["XSETID", "x", "5-9"],
            &["XSETID", "x", "6-1", "ENTRIESADDED", "1"],
            &[
                "XSETID",
                "x",
                "9-9",
                "ENTRIESADDED",
                "10",
                "MAXDELETEDID",
                "3-3",
            ],
            &["XADD", "x", "9-9", "f", "v"],
            &["XADD", "x", "9-*", "f", "v"],
            &["XINFO", "STREAM", "x", "FULL"],
            &["XDEL", "x", "5-1", "6-1", "10-0"],
            &["XDEL", "x", "9-10"],
            &["XSETID", "x", "1-1"],
            &["XINFO", "STREAM", "x", "FULL"],
            &["XADD", "x", "1-2", "f", "v"],
            &["XGROUP", "CREATE", "x", "g", "0"],
            &["XINFO", "GROUPS", "x"],
        ],
        // MULTI/EXEC: queue-time refusals (EXECABORT), errors in their slots, reads that see
        // the writes before them, SELECT inside, BLOCK that does not block, WATCH.
        &[
            &["MULTI"],
            &["MULTI"],
            &["WATCH", "a"],
            &["XADD", "s", "1-1", "f", "v"],
            &["EXEC"],
            &["MULTI"],
            &["XADD", "s"],
            &["EXEC"],
            &["EXEC"],
            &["DISCARD"],
            &["MULTI"],
            &["FOO"],
            &["XGROUP", "NOPE", "s"],
            &["XADD", "s", "2-1", "a", "b"],
            &["EXEC"],
            &["MULTI"],
            &["XADD", "s", "bad", "f", "v"],
            &["XLEN", "s"],
            &["XREAD", "BLOCK", "1000", "STREAMS", "s", "$"],
            &[
                "XREADGROUP",
                "GROUP",
                "g",
                "c",
                "BLOCK",
                "0",
                "STREAMS",
                "s",
                ">",
            ],
            &["SELECT", "3"],
            &["XADD", "s", "5-5", "f", "v"],
            &["EXEC"],
            &["XLEN", "s"],
            &["SELECT", "0"],
            &["MULTI"],
            &["XADD", "s", "3-1", "a", "b"],
            &["XRANGE", "s", "-", "+"],
            &["XDEL", "s", "1-1"],
            &["XLEN", "s"],
            &["XGROUP", "CREATE", "s", "g", "0"],
            &["XREADGROUP", "GROUP", "g", "c", "STREAMS", "s", ">"],
            &["XACK", "s", "g", "3-1"],
            &["XPENDING", "s", "g"],
            &["XINFO", "GROUPS", "s"],
            &["DEL", "s"],
            &["EXISTS", "s"],
            &["XADD", "s", "1-1", "x", "y"],
            &["XINFO", "STREAM", "s"],
            &["XGROUP", "CREATE", "s", "g", "$"],
            &["XSETID", "s", "0-1"],
            &["XTRIM", "s", "MAXLEN", "0"],
            &["EXEC"],
            &["MULTI"],
            &["XADD", "t", "1-1", "f", "v"],
            &["FLUSHDB"],
            &["XLEN", "t"],
            &["DBSIZE"],
            &["XADD", "t", "1-1", "f", "v"],
            &["EXEC"],
            &["WATCH", "w"],
            &["XADD", "w", "1-1", "f", "v"],
            &["MULTI"],
            &["XLEN", "w"],
            &["EXEC"],
            &["WATCH", "w"],
            &["XGROUP", "CREATE", "w", "g", "0"],
            &["MULTI"],
            &["XLEN", "w"],
            &["EXEC"],
            &["WATCH", "w", "v"],
            &["UNWATCH"],
            &["XADD", "w", "2-1", "f", "v"],
            &["MULTI"],
            &["XLEN", "w"],
            &["EXEC"],
            &["WATCH", "w"],
            &["MULTI"],
            &["PING"],
            &["DISCARD"],
            &["XADD", "w", "3-1", "f", "v"],
            &["MULTI"],
            &["EXEC"],
            // FLUSHALL touches a watched key that existed, not one that did not.
            &["WATCH", "w"],
            &["FLUSHALL"],
            &["MULTI"],
            &["PING"],
            &["EXEC"],
            &["XADD", "other", "1-1", "f", "v"],
            &["WATCH", "missing"],
            &["FLUSHALL"],
            &["MULTI"],
            &["PING"],
            &["EXEC"],
            // A trim that drops only an XDEL tombstone leaves the key untouched; one that
            // drops a live entry does not.
            &["XADD", "tomb", "1-1", "f", "v"],
            &["XDEL", "tomb", "1-1"],
            &["XADD", "tomb", "MAXLEN", "=", "1", "1-2", "f", "v"],
            &["WATCH", "tomb"],
            &["XTRIM", "tomb", "MINID", "=", "1-2"],
            &["MULTI"],
            &["XLEN", "tomb"],
            &["EXEC"],
            &["WATCH", "tomb"],
            &["XTRIM", "tomb", "MINID", "=", "1-3"],
            &["MULTI"],
            &["XLEN", "tomb"],
            &["EXEC"],
            // XSETID on a stream emptied earlier in the same transaction lowers its top, so
            // an XADD after it may take an ID below the old one.
            &["MULTI"],
            &["XADD", "low", "5-1", "f", "v"],
            &["XTRIM", "low", "MAXLEN", "=", "0"],
            &["XSETID", "low", "1-1"],
            &["XADD", "low", "2-1", "f", "v"],
            &["XADD", "low", "1-1", "f", "v"],
            &["EXEC"],
            &["XINFO", "STREAM", "low"],
            // A key created and deleted again since WATCH was touched.
            &["WATCH", "gone"],
            &["XADD", "gone", "1-1", "f", "v"],
            &["DEL", "gone"],
            &["MULTI"],
            &["EXISTS", "gone"],
            &["EXEC"],
            // SELECT inside MULTI, then a watched key of another database.
            &["WATCH", "w"],
            &["MULTI"],
            &["SELECT", "2"],
            &["XADD", "w", "1-1", "f", "v"],
            &["SELECT", "0"],
            &["XLEN", "w"],
            &["EXEC"],
            &["SELECT", "2"],
            &["XLEN", "w"],
            &["SELECT", "0"],
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
        &["MULTI"][..],
        &["XREAD", "STREAMS", "t", "0"],
        &["XADD", "t", "1-1", "f", "v"],
        &["EXEC"],
        &["WATCH", "t"],
        &["XADD", "t", "3-1", "f", "v"],
        &["MULTI"],
        &["EXEC"],
        &["XREAD", "STREAMS", "t", "0"],
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

/// `~` trims cut the whole nodes Redis's radix tree holds, with Redis's default node settings
/// (small entries: 100 a node); `stream_nodes.rs` goes through sizes, XDEL and small nodes.
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

mod random {
    //! Random sequences of stream and group commands, sent to both servers: every reply the
    //! same once the IDs `*` generated are mapped (each server's own IDs are sent to it).

    use super::support::{Manifold, Raw, Redis, Resp};
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[derive(Debug, Clone)]
    pub enum Op {
        Add {
            key: u8,
            id: u8,
            auto: bool,
        },
        AddCapped {
            key: u8,
            maxlen: u8,
            approx: bool,
        },
        Range {
            key: u8,
            rev: bool,
            count: Option<u8>,
        },
        Len {
            key: u8,
        },
        Del {
            key: u8,
            nth: u8,
        },
        Trim {
            key: u8,
            maxlen: Option<u8>,
            nth: u8,
            approx: bool,
            limit: Option<u8>,
        },
        Read {
            key: u8,
            nth: Option<u8>,
            count: Option<u8>,
        },
        Create {
            key: u8,
            group: u8,
            last: bool,
            mkstream: bool,
        },
        Destroy {
            key: u8,
            group: u8,
        },
        SetId {
            key: u8,
            group: u8,
            nth: u8,
        },
        CreateConsumer {
            key: u8,
            group: u8,
            consumer: u8,
        },
        DelConsumer {
            key: u8,
            group: u8,
            consumer: u8,
        },
        ReadGroup {
            key: u8,
            group: u8,
            consumer: u8,
            new: bool,
            count: Option<u8>,
            noack: bool,
        },
        Ack {
            key: u8,
            group: u8,
            nth: u8,
        },
        Pending {
            key: u8,
            group: u8,
        },
        Claim {
            key: u8,
            group: u8,
            consumer: u8,
            nth: u8,
        },
        AutoClaim {
            key: u8,
            group: u8,
            consumer: u8,
            count: u8,
        },
        Groups {
            key: u8,
        },
        DelKey {
            key: u8,
        },
        Exists {
            key: u8,
        },
        XSetId {
            key: u8,
            nth: u8,
            bump: bool,
            added: Option<u8>,
            maxdel: Option<u8>,
        },
        Multi,
        Exec,
        Discard,
        Watch {
            key: u8,
        },
        Unwatch,
    }

    pub fn op() -> impl Strategy<Value = Op> {
        let key = 0u8..2;
        let group = 0u8..2;
        let consumer = 0u8..3;
        prop_oneof![
            10 => (key.clone(), 1u8..60, any::<bool>()).prop_map(|(key, id, auto)| Op::Add { key, id, auto }),
            2 => (key.clone(), 0u8..6, any::<bool>()).prop_map(|(key, maxlen, approx)| Op::AddCapped { key, maxlen, approx }),
            2 => (key.clone(), any::<bool>(), proptest::option::of(0u8..4)).prop_map(|(key, rev, count)| Op::Range { key, rev, count }),
            1 => key.clone().prop_map(|key| Op::Len { key }),
            2 => (key.clone(), any::<u8>()).prop_map(|(key, nth)| Op::Del { key, nth }),
            2 => (key.clone(), proptest::option::of(0u8..8), any::<u8>(), any::<bool>(), proptest::option::of(0u8..4))
                .prop_map(|(key, maxlen, nth, approx, limit)| Op::Trim { key, maxlen, nth, approx, limit }),
            2 => (key.clone(), proptest::option::of(any::<u8>()), proptest::option::of(0u8..4)).prop_map(|(key, nth, count)| Op::Read { key, nth, count }),
            2 => (key.clone(), group.clone(), any::<bool>(), any::<bool>()).prop_map(|(key, group, last, mkstream)| Op::Create { key, group, last, mkstream }),
            1 => (key.clone(), group.clone()).prop_map(|(key, group)| Op::Destroy { key, group }),
            1 => (key.clone(), group.clone(), any::<u8>()).prop_map(|(key, group, nth)| Op::SetId { key, group, nth }),
            1 => (key.clone(), group.clone(), consumer.clone()).prop_map(|(key, group, consumer)| Op::CreateConsumer { key, group, consumer }),
            1 => (key.clone(), group.clone(), consumer.clone()).prop_map(|(key, group, consumer)| Op::DelConsumer { key, group, consumer }),
            5 => (key.clone(), group.clone(), consumer.clone(), any::<bool>(), proptest::option::of(0u8..4), any::<bool>())
                .prop_map(|(key, group, consumer, new, count, noack)| Op::ReadGroup { key, group, consumer, new, count, noack }),
            3 => (key.clone(), group.clone(), any::<u8>()).prop_map(|(key, group, nth)| Op::Ack { key, group, nth }),
            2 => (key.clone(), group.clone()).prop_map(|(key, group)| Op::Pending { key, group }),
            2 => (key.clone(), group.clone(), consumer.clone(), any::<u8>()).prop_map(|(key, group, consumer, nth)| Op::Claim { key, group, consumer, nth }),
            1 => (key.clone(), group.clone(), consumer.clone(), 1u8..4).prop_map(|(key, group, consumer, count)| Op::AutoClaim { key, group, consumer, count }),
            1 => key.clone().prop_map(|key| Op::Groups { key }),
            1 => key.clone().prop_map(|key| Op::DelKey { key }),
            1 => key.clone().prop_map(|key| Op::Exists { key }),
            1 => (key.clone(), any::<u8>(), any::<bool>(), proptest::option::of(0u8..8), proptest::option::of(any::<u8>()))
                .prop_map(|(key, nth, bump, added, maxdel)| Op::XSetId { key, nth, bump, added, maxdel }),
            // Transactions: queued commands, EXEC's per-command replies, WATCH.
            3 => Just(Op::Multi),
            3 => Just(Op::Exec),
            1 => Just(Op::Discard),
            1 => key.prop_map(|key| Op::Watch { key }),
            1 => Just(Op::Unwatch),
        ]
    }

    /// The stream an operation names (0 for those that name none).
    fn op_key(op: &Op) -> u8 {
        match op {
            Op::Add { key, .. }
            | Op::AddCapped { key, .. }
            | Op::Range { key, .. }
            | Op::Len { key }
            | Op::Del { key, .. }
            | Op::Trim { key, .. }
            | Op::Read { key, .. }
            | Op::Create { key, .. }
            | Op::Destroy { key, .. }
            | Op::SetId { key, .. }
            | Op::CreateConsumer { key, .. }
            | Op::DelConsumer { key, .. }
            | Op::ReadGroup { key, .. }
            | Op::Ack { key, .. }
            | Op::Pending { key, .. }
            | Op::Claim { key, .. }
            | Op::AutoClaim { key, .. }
            | Op::Groups { key }
            | Op::DelKey { key }
            | Op::Exists { key }
            | Op::XSetId { key, .. }
            | Op::Watch { key } => *key,
            Op::Multi | Op::Exec | Op::Discard | Op::Unwatch => 0,
        }
    }

    /// The IDs each server generated for the same XADDs: (Manifold's, redis-server's).
    #[derive(Default)]
    struct Ids {
        pairs: Vec<(String, String)>,
        to_theirs: HashMap<Vec<u8>, Vec<u8>>,
    }

    impl Ids {
        fn pick(&self, nth: u8) -> (String, String) {
            if self.pairs.is_empty() {
                return ("1-1".into(), "1-1".into());
            }
            self.pairs[nth as usize % self.pairs.len()].clone()
        }
    }

    pub fn run(manifold: &Manifold, redis: &Redis, ops: Vec<Op>) -> Result<(), TestCaseError> {
        let mut ours = Raw::connect(manifold.addr);
        let mut theirs = Raw::connect(redis.addr);
        ours.cmd(&["FLUSHALL"]);
        theirs.cmd(&["FLUSHALL"]);
        // Per stream: auto IDs of two streams may meet on one server and not on the other.
        let mut all_ids: HashMap<u8, Ids> = HashMap::new();
        // Inside MULTI: the commands queued, whose replies EXEC brings.
        let mut queued: Option<Vec<Op>> = None;
        for op in ops {
            let tx_cmd: Option<Vec<String>> = match &op {
                Op::Multi => Some(vec!["MULTI".into()]),
                Op::Exec => Some(vec!["EXEC".into()]),
                Op::Discard => Some(vec!["DISCARD".into()]),
                Op::Watch { key } => Some(vec!["WATCH".into(), format!("k{key}")]),
                Op::Unwatch => Some(vec!["UNWATCH".into()]),
                _ => None,
            };
            if let Some(cmd) = tx_cmd {
                let args: Vec<&str> = cmd.iter().map(String::as_str).collect();
                let (want, _) = Resp::parse(&theirs.cmd(&args));
                let (got, _) = Resp::parse(&ours.cmd(&args));
                match &op {
                    Op::Multi => {
                        queued.get_or_insert_with(Vec::new);
                    }
                    Op::Discard => queued = None,
                    // Queued like any command (WATCH and MULTI inside MULTI are refused).
                    Op::Unwatch => {
                        if let Some(q) = &mut queued {
                            q.push(op.clone());
                        }
                    }
                    Op::Exec => {
                        // Slot by slot: new IDs of queued XADDs are remembered first, and each
                        // reply is mapped with its own stream's IDs.
                        if let (Some(q), Resp::Many(_, Some(g)), Resp::Many(_, Some(w))) =
                            (queued.take(), &got, &want)
                            && q.len() == g.len()
                            && g.len() == w.len()
                        {
                            for (op, (x, y)) in q.iter().zip(g.iter().zip(w)) {
                                let key = op_key(op);
                                let ids = all_ids.entry(key).or_default();
                                if matches!(op, Op::DelKey { .. }) {
                                    *ids = Ids::default();
                                }
                                if let (
                                    Op::Add { .. } | Op::AddCapped { .. },
                                    Resp::Bulk(_, Some(x)),
                                    Resp::Bulk(_, Some(y)),
                                ) = (op, x, y)
                                {
                                    ids.to_theirs.insert(x.clone(), y.clone());
                                    ids.pairs.push((
                                        String::from_utf8_lossy(x).into_owned(),
                                        String::from_utf8_lossy(y).into_owned(),
                                    ));
                                }
                                let map = &ids.to_theirs;
                                let x = x.clone().map_bulks(&|b| map.get(b).cloned());
                                prop_assert_eq!(&x, y, "{:?} in EXEC", op);
                            }
                            continue;
                        }
                        queued = None;
                    }
                    _ => {}
                }
                let map: HashMap<Vec<u8>, Vec<u8>> = all_ids
                    .values()
                    .flat_map(|i| i.to_theirs.iter().map(|(a, b)| (a.clone(), b.clone())))
                    .collect();
                let got = got.map_bulks(&|b| map.get(b).cloned());
                prop_assert_eq!(got, want, "{:?}", op);
                continue;
            }
            if let Some(q) = &mut queued {
                q.push(op.clone());
            }
            let key_of = op_key(&op);
            let ids = all_ids.entry(key_of).or_default();
            let k = |key: u8| format!("k{key}");
            let g = |group: u8| format!("g{group}");
            let c = |consumer: u8| format!("c{consumer}");
            // The command for each server: (ours, theirs).
            let (a, b): (Vec<String>, Vec<String>) = match &op {
                Op::Add { key, id, auto } => {
                    let id = if *auto {
                        "*".to_string()
                    } else {
                        format!("{id}-1")
                    };
                    let v = vec!["XADD".into(), k(*key), id, "f".into(), "v".into()];
                    (v.clone(), v)
                }
                Op::AddCapped {
                    key,
                    maxlen,
                    approx,
                } => {
                    let v = vec![
                        "XADD".into(),
                        k(*key),
                        "MAXLEN".into(),
                        if *approx { "~" } else { "=" }.into(),
                        maxlen.to_string(),
                        "*".into(),
                        "f".into(),
                        "v".into(),
                    ];
                    (v.clone(), v)
                }
                Op::Range { key, rev, count } => {
                    let mut v: Vec<String> = if *rev {
                        vec!["XREVRANGE".into(), k(*key), "+".into(), "-".into()]
                    } else {
                        vec!["XRANGE".into(), k(*key), "-".into(), "+".into()]
                    };
                    if let Some(n) = count {
                        v.extend(["COUNT".into(), n.to_string()]);
                    }
                    (v.clone(), v)
                }
                Op::Len { key } => {
                    let v = vec!["XLEN".into(), k(*key)];
                    (v.clone(), v)
                }
                Op::Del { key, nth } => {
                    let (x, y) = ids.pick(*nth);
                    (
                        vec!["XDEL".into(), k(*key), x],
                        vec!["XDEL".into(), k(*key), y],
                    )
                }
                Op::Trim {
                    key,
                    maxlen,
                    nth,
                    approx,
                    limit,
                } => {
                    let (x, y) = ids.pick(*nth);
                    let how = if *approx { "~" } else { "=" };
                    let mut a = vec!["XTRIM".into(), k(*key)];
                    let mut b = a.clone();
                    match maxlen {
                        Some(n) => {
                            a.extend(["MAXLEN".into(), how.into(), n.to_string()]);
                            b.extend(["MAXLEN".into(), how.into(), n.to_string()]);
                        }
                        None => {
                            a.extend(["MINID".into(), how.into(), x]);
                            b.extend(["MINID".into(), how.into(), y]);
                        }
                    }
                    if let (Some(l), true) = (limit, *approx) {
                        a.extend(["LIMIT".into(), l.to_string()]);
                        b.extend(["LIMIT".into(), l.to_string()]);
                    }
                    (a, b)
                }
                Op::Read { key, nth, count } => {
                    let (x, y) = match nth {
                        Some(n) => ids.pick(*n),
                        None => ("0".into(), "0".into()),
                    };
                    let mut a = vec!["XREAD".into()];
                    if let Some(n) = count {
                        a.extend(["COUNT".into(), n.to_string()]);
                    }
                    let mut b = a.clone();
                    a.extend(["STREAMS".into(), k(*key), x]);
                    b.extend(["STREAMS".into(), k(*key), y]);
                    (a, b)
                }
                Op::Create {
                    key,
                    group,
                    last,
                    mkstream,
                } => {
                    let mut v = vec![
                        "XGROUP".into(),
                        "CREATE".into(),
                        k(*key),
                        g(*group),
                        if *last { "$" } else { "0" }.into(),
                    ];
                    if *mkstream {
                        v.push("MKSTREAM".into());
                    }
                    (v.clone(), v)
                }
                Op::Destroy { key, group } => {
                    let v = vec!["XGROUP".into(), "DESTROY".into(), k(*key), g(*group)];
                    (v.clone(), v)
                }
                Op::SetId { key, group, nth } => {
                    let (x, y) = ids.pick(*nth);
                    let v = vec!["XGROUP".into(), "SETID".into(), k(*key), g(*group)];
                    let (mut a, mut b) = (v.clone(), v);
                    a.push(x);
                    b.push(y);
                    (a, b)
                }
                Op::CreateConsumer {
                    key,
                    group,
                    consumer,
                } => {
                    let v = vec![
                        "XGROUP".into(),
                        "CREATECONSUMER".into(),
                        k(*key),
                        g(*group),
                        c(*consumer),
                    ];
                    (v.clone(), v)
                }
                Op::DelConsumer {
                    key,
                    group,
                    consumer,
                } => {
                    let v = vec![
                        "XGROUP".into(),
                        "DELCONSUMER".into(),
                        k(*key),
                        g(*group),
                        c(*consumer),
                    ];
                    (v.clone(), v)
                }
                Op::ReadGroup {
                    key,
                    group,
                    consumer,
                    new,
                    count,
                    noack,
                } => {
                    let mut v = vec!["XREADGROUP".into(), "GROUP".into(), g(*group), c(*consumer)];
                    if let Some(n) = count {
                        v.extend(["COUNT".into(), n.to_string()]);
                    }
                    if *noack {
                        v.push("NOACK".into());
                    }
                    v.extend([
                        "STREAMS".into(),
                        k(*key),
                        if *new { ">" } else { "0" }.into(),
                    ]);
                    (v.clone(), v)
                }
                Op::Ack { key, group, nth } => {
                    let (x, y) = ids.pick(*nth);
                    (
                        vec!["XACK".into(), k(*key), g(*group), x],
                        vec!["XACK".into(), k(*key), g(*group), y],
                    )
                }
                Op::Pending { key, group } => {
                    let v = vec!["XPENDING".into(), k(*key), g(*group)];
                    (v.clone(), v)
                }
                Op::Claim {
                    key,
                    group,
                    consumer,
                    nth,
                } => {
                    let (x, y) = ids.pick(*nth);
                    let v = vec![
                        "XCLAIM".into(),
                        k(*key),
                        g(*group),
                        c(*consumer),
                        "0".into(),
                    ];
                    let (mut a, mut b) = (v.clone(), v);
                    a.extend([x, "JUSTID".into()]);
                    b.extend([y, "JUSTID".into()]);
                    (a, b)
                }
                Op::AutoClaim {
                    key,
                    group,
                    consumer,
                    count,
                } => {
                    let v = vec![
                        "XAUTOCLAIM".into(),
                        k(*key),
                        g(*group),
                        c(*consumer),
                        "0".into(),
                        "0".into(),
                        "COUNT".into(),
                        count.to_string(),
                        "JUSTID".into(),
                    ];
                    (v.clone(), v)
                }
                Op::Groups { key } => {
                    let v = vec!["XINFO".into(), "GROUPS".into(), k(*key)];
                    (v.clone(), v)
                }
                Op::DelKey { key } => {
                    // Inside MULTI the key goes at EXEC (or never, after DISCARD).
                    if queued.is_none() {
                        *ids = Ids::default();
                    }
                    let v = vec!["DEL".into(), k(*key)];
                    (v.clone(), v)
                }
                Op::Exists { key } => {
                    let v = vec!["EXISTS".into(), k(*key)];
                    (v.clone(), v)
                }
                Op::XSetId {
                    key,
                    nth,
                    bump,
                    added,
                    maxdel,
                } => {
                    // An ID of the stream, each server its own, or one above every ID both
                    // servers generate.
                    let (x, y) = if *bump {
                        (
                            "99999999999999-5".to_string(),
                            "99999999999999-5".to_string(),
                        )
                    } else {
                        ids.pick(*nth)
                    };
                    let mut a = vec!["XSETID".into(), k(*key), x];
                    let mut b = vec!["XSETID".into(), k(*key), y];
                    if let Some(n) = added {
                        a.extend(["ENTRIESADDED".into(), n.to_string()]);
                        b.extend(["ENTRIESADDED".into(), n.to_string()]);
                    }
                    if let Some(m) = maxdel {
                        let (mx, my) = ids.pick(*m);
                        a.extend(["MAXDELETEDID".into(), mx]);
                        b.extend(["MAXDELETEDID".into(), my]);
                    }
                    (a, b)
                }
                Op::Multi | Op::Exec | Op::Discard | Op::Watch { .. } | Op::Unwatch => {
                    continue;
                }
            };
            let a_args: Vec<&str> = a.iter().map(String::as_str).collect();
            let b_args: Vec<&str> = b.iter().map(String::as_str).collect();
            let want = theirs.cmd(&b_args);
            let got = ours.cmd(&a_args);
            let (want, _) = Resp::parse(&want);
            let (got, _) = Resp::parse(&got);
            // A new ID from each: remember the pair.
            if let (
                Op::Add { .. } | Op::AddCapped { .. },
                Resp::Bulk(_, Some(x)),
                Resp::Bulk(_, Some(y)),
            ) = (&op, &got, &want)
            {
                ids.to_theirs.insert(x.clone(), y.clone());
                ids.pairs.push((
                    String::from_utf8_lossy(x).into_owned(),
                    String::from_utf8_lossy(y).into_owned(),
                ));
            }
            let map = &ids.to_theirs;
            let got = got.map_bulks(&|b| map.get(b).cloned());
            prop_assert_eq!(got, want, "{:?}: {:?} / {:?}", op, a, b);
        }
        Ok(())
    }
}

/// The servers live as long as this test (not in a static, which is never dropped: its data
/// directory would stay behind after every run).
#[test]
fn random_command_sequences_match_redis_server() {
    let manifold = Manifold::start();
    let redis = Redis::start();
    let mut runner = support::runner(96, file!());
    let strategy = proptest::collection::vec(random::op(), 1..60);
    if let Err(e) = runner.run(&strategy, |ops| random::run(&manifold, &redis, ops)) {
        panic!("{e}");
    }
}

/// Blocked XREADGROUP readers are served in the order they blocked (FIFO per stream), by one
/// entry at a time and by a transaction that adds two: the same consumers get the same entries
/// from Manifold as from redis-server.
#[test]
fn blocked_group_readers_are_served_in_the_order_they_blocked() {
    use std::sync::mpsc;
    use std::time::{Duration, Instant};
    const READERS: usize = 16;

    fn scenario(addr: std::net::SocketAddr) -> Vec<(String, Vec<u8>)> {
        let mut admin = Raw::connect(addr);
        admin.cmd(&["FLUSHALL"]);
        admin.cmd(&["XGROUP", "CREATE", "s", "g", "$", "MKSTREAM"]);
        let (tx, rx) = mpsc::channel();
        let blocked = |admin: &mut Raw| {
            let info = admin.cmd(&["INFO", "clients"]);
            String::from_utf8_lossy(&info)
                .lines()
                .find_map(|l| l.strip_prefix("blocked_clients:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0)
        };
        let mut readers = Vec::new();
        let names: Vec<String> = (1..=READERS).map(|n| format!("c{n:02}")).collect();
        for (n, c) in names.into_iter().enumerate() {
            let tx = tx.clone();
            let mut conn = Raw::connect(addr);
            conn.send(&[
                b"XREADGROUP",
                b"GROUP",
                b"g",
                c.as_bytes(),
                b"COUNT",
                b"1",
                b"BLOCK",
                b"0",
                b"STREAMS",
                b"s",
                b">",
            ]);
            readers.push(std::thread::spawn(move || {
                let reply = conn.reply();
                let _ = tx.send((c, reply));
            }));
            // Each blocks before the next: the order is known.
            let deadline = Instant::now() + Duration::from_secs(10);
            while blocked(&mut admin) < n + 1 {
                assert!(Instant::now() < deadline, "reader {n} never blocked");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let mut got = Vec::new();
        // One entry at a time: the longest waiting reader gets it.
        for ms in 1..=READERS / 2 {
            admin.cmd(&["XADD", "s", &format!("{ms}-1"), "f", "a"]);
            got.push(
                rx.recv_timeout(Duration::from_secs(10))
                    .expect("a reader served"),
            );
        }
        // Entries in one commit: the next in line get one each.
        admin.cmd(&["MULTI"]);
        for ms in READERS / 2 + 1..=READERS {
            admin.cmd(&["XADD", "s", &format!("{ms}-1"), "f", "b"]);
        }
        admin.cmd(&["EXEC"]);
        let mut rest: Vec<_> = (READERS / 2 + 1..=READERS)
            .map(|_| {
                rx.recv_timeout(Duration::from_secs(10))
                    .expect("a reader served")
            })
            .collect();
        rest.sort();
        got.extend(rest);
        for r in readers {
            r.join().expect("reader");
        }
        got
    }

    let manifold = Manifold::start();
    let redis = Redis::start();
    let want = scenario(redis.addr);
    let names: Vec<String> = want.iter().map(|(c, _)| c.clone()).collect();
    let fifo: Vec<String> = (1..=READERS).map(|n| format!("c{n:02}")).collect();
    assert_eq!(names, fifo, "redis-server serves FIFO");
    let got = scenario(manifold.addr);
    assert_eq!(
        got.iter()
            .map(|(c, r)| (c.clone(), show(r)))
            .collect::<Vec<_>>(),
        want.iter()
            .map(|(c, r)| (c.clone(), show(r)))
            .collect::<Vec<_>>()
    );
}
