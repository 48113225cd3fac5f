//! The command table: every command this server knows, with Redis 7.0's arity, flags and key
//! positions (what COMMAND reports and what the arity check uses), and the checks made before
//! a command runs (unknown command, wrong number of arguments).
//!
//! Owns the table only; it must never run a command (`commands/` does).

use bytes::Bytes;

use crate::reply::Reply;

/// One command (or subcommand, named `parent|sub`).
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Lowercase name.
    pub name: &'static str,
    /// Redis arity: `n` exactly n arguments (the name included), `-n` at least n.
    pub arity: i32,
    /// COMMAND INFO flags.
    pub flags: &'static [&'static str],
    /// First key position (0: none).
    pub first_key: i32,
    /// Last key position (-1: the last argument).
    pub last_key: i32,
    /// Step between keys.
    pub step: i32,
    /// ACL categories, COMMAND INFO's seventh field.
    pub categories: &'static [&'static str],
    /// Subcommands (`parent|sub`), for commands that have them.
    pub subcommands: &'static [Spec],
}

const fn spec(name: &'static str, arity: i32, flags: &'static [&'static str]) -> Spec {
    Spec {
        name,
        arity,
        flags,
        first_key: 0,
        last_key: 0,
        step: 0,
        categories: &[],
        subcommands: &[],
    }
}

const fn keyed(
    name: &'static str,
    arity: i32,
    flags: &'static [&'static str],
    first: i32,
    last: i32,
    categories: &'static [&'static str],
) -> Spec {
    Spec {
        name,
        arity,
        flags,
        first_key: first,
        last_key: last,
        step: 1,
        categories,
        subcommands: &[],
    }
}

const fn parent(name: &'static str, arity: i32, subcommands: &'static [Spec]) -> Spec {
    Spec {
        name,
        arity,
        flags: &[],
        first_key: 0,
        last_key: 0,
        step: 0,
        categories: &[],
        subcommands,
    }
}

const STREAM_W: &[&str] = &["@write", "@stream", "@fast"];
const STREAM_R: &[&str] = &["@read", "@stream", "@slow"];
const KEYSPACE: &[&str] = &["@keyspace"];

const CLIENT_SUBS: &[Spec] = &[
    spec("client|id", 2, &["noscript", "loading", "stale"]),
    spec("client|setname", 3, &["noscript", "loading", "stale"]),
    spec("client|getname", 2, &["noscript", "loading", "stale"]),
    spec(
        "client|list",
        -2,
        &["admin", "noscript", "loading", "stale"],
    ),
    spec("client|info", 2, &["noscript", "loading", "stale"]),
    spec("client|setinfo", 4, &["noscript", "loading", "stale"]),
    spec(
        "client|kill",
        -3,
        &["admin", "noscript", "loading", "stale"],
    ),
    spec("client|help", 2, &["loading", "stale"]),
];

const CONFIG_SUBS: &[Spec] = &[
    spec("config|get", -3, &["admin", "noscript", "loading", "stale"]),
    spec("config|set", -4, &["admin", "noscript", "loading", "stale"]),
    spec(
        "config|resetstat",
        2,
        &["admin", "noscript", "loading", "stale"],
    ),
    spec("config|help", 2, &["loading", "stale"]),
];

const COMMAND_SUBS: &[Spec] = &[
    spec("command|count", 2, &["loading", "stale"]),
    spec("command|docs", -2, &["loading", "stale"]),
    spec("command|info", -2, &["loading", "stale"]),
    spec("command|list", -2, &["loading", "stale"]),
    spec("command|help", 2, &["loading", "stale"]),
];

const XGROUP_SUBS: &[Spec] = &[
    keyed("xgroup|create", -5, &["write", "denyoom"], 2, 2, STREAM_W),
    keyed("xgroup|setid", -5, &["write"], 2, 2, STREAM_W),
    keyed("xgroup|destroy", 4, &["write"], 2, 2, STREAM_W),
    keyed(
        "xgroup|createconsumer",
        5,
        &["write", "denyoom"],
        2,
        2,
        STREAM_W,
    ),
    keyed("xgroup|delconsumer", 5, &["write"], 2, 2, STREAM_W),
    spec("xgroup|help", 2, &["loading", "stale"]),
];

const XINFO_SUBS: &[Spec] = &[
    keyed("xinfo|stream", -3, &["readonly"], 2, 2, STREAM_R),
    keyed("xinfo|groups", 3, &["readonly"], 2, 2, STREAM_R),
    keyed("xinfo|consumers", 4, &["readonly"], 2, 2, STREAM_R),
    spec("xinfo|help", 2, &["loading", "stale"]),
];

/// Every command, in the order COMMAND lists them.
pub static COMMANDS: &[Spec] = &[
    spec("ping", -1, &["fast", "sentinel"]),
    spec("echo", 2, &["fast"]),
    spec(
        "hello",
        -1,
        &[
            "noscript",
            "loading",
            "stale",
            "fast",
            "no_auth",
            "allow_busy",
        ],
    ),
    spec(
        "auth",
        -2,
        &[
            "noscript",
            "loading",
            "stale",
            "fast",
            "no_auth",
            "allow_busy",
        ],
    ),
    spec("select", 2, &["loading", "stale", "fast"]),
    spec(
        "quit",
        -1,
        &[
            "noscript",
            "loading",
            "stale",
            "fast",
            "no_auth",
            "allow_busy",
        ],
    ),
    spec(
        "reset",
        1,
        &[
            "noscript",
            "loading",
            "stale",
            "fast",
            "no_auth",
            "allow_busy",
        ],
    ),
    spec(
        "multi",
        1,
        &["noscript", "loading", "stale", "fast", "allow_busy"],
    ),
    spec("exec", 1, &["noscript", "loading", "stale", "skip_slowlog"]),
    spec(
        "discard",
        1,
        &["noscript", "loading", "stale", "fast", "allow_busy"],
    ),
    keyed(
        "watch",
        -2,
        &["noscript", "loading", "stale", "fast", "allow_busy"],
        1,
        -1,
        &["@fast", "@transaction"],
    ),
    spec(
        "unwatch",
        1,
        &["noscript", "loading", "stale", "fast", "allow_busy"],
    ),
    parent("client", -2, CLIENT_SUBS),
    parent("command", -1, COMMAND_SUBS),
    parent("config", -2, CONFIG_SUBS),
    spec("info", -1, &["loading", "stale"]),
    spec("dbsize", 1, &["readonly", "fast"]),
    keyed("del", -2, &["write"], 1, -1, KEYSPACE),
    keyed("unlink", -2, &["write", "fast"], 1, -1, KEYSPACE),
    keyed("exists", -2, &["readonly", "fast"], 1, -1, KEYSPACE),
    keyed("type", 2, &["readonly", "fast"], 1, 1, KEYSPACE),
    spec("keys", 2, &["readonly"]),
    spec("scan", -2, &["readonly"]),
    spec("flushdb", -1, &["write"]),
    spec("flushall", -1, &["write"]),
    keyed("xadd", -5, &["write", "denyoom", "fast"], 1, 1, STREAM_W),
    keyed("xrange", -4, &["readonly"], 1, 1, STREAM_R),
    keyed("xrevrange", -4, &["readonly"], 1, 1, STREAM_R),
    keyed("xlen", 2, &["readonly", "fast"], 1, 1, STREAM_R),
    keyed("xdel", -3, &["write", "fast"], 1, 1, STREAM_W),
    keyed("xtrim", -4, &["write"], 1, 1, STREAM_W),
    keyed("xsetid", -3, &["write", "denyoom", "fast"], 1, 1, STREAM_W),
    keyed(
        "xread",
        -4,
        &["readonly", "blocking", "movablekeys"],
        0,
        0,
        STREAM_R,
    ),
    keyed(
        "xreadgroup",
        -7,
        &["write", "blocking", "movablekeys"],
        0,
        0,
        STREAM_W,
    ),
    parent("xgroup", -2, XGROUP_SUBS),
    keyed("xack", -4, &["write", "fast"], 1, 1, STREAM_W),
    keyed("xpending", -3, &["readonly"], 1, 1, STREAM_R),
    keyed("xclaim", -6, &["write", "fast"], 1, 1, STREAM_W),
    keyed("xautoclaim", -6, &["write", "fast"], 1, 1, STREAM_W),
    parent("xinfo", -2, XINFO_SUBS),
    // Manifold's own: XADD with a message key, and the messages of a stream by that key.
    keyed(
        "manifold.xadd",
        -6,
        &["write", "denyoom", "fast"],
        1,
        1,
        STREAM_W,
    ),
    keyed("manifold.find", -3, &["readonly"], 1, 1, STREAM_R),
];

/// The command `name` (any case).
pub fn lookup(name: &[u8]) -> Option<&'static Spec> {
    COMMANDS
        .iter()
        .find(|s| s.name.as_bytes().eq_ignore_ascii_case(name))
}

/// The subcommand `sub` of `parent`.
pub fn lookup_sub(parent: &Spec, sub: &[u8]) -> Option<&'static Spec> {
    parent.subcommands.iter().find(|s| {
        s.name
            .split('|')
            .nth(1)
            .is_some_and(|n| n.as_bytes().eq_ignore_ascii_case(sub))
    })
}

/// Whether `argc` arguments (the name included) fit `arity`.
pub fn arity_ok(arity: i32, argc: usize) -> bool {
    let argc = argc as i64;
    let arity = i64::from(arity);
    if arity >= 0 {
        argc == arity
    } else {
        argc >= -arity
    }
}

/// `-ERR wrong number of arguments for '<name>' command`.
pub fn wrong_arity(name: &str) -> Reply {
    Reply::err(format!("wrong number of arguments for '{name}' command"))
}

/// `-ERR unknown command '<name>', with args beginning with: '<a>' '<b>' ` as Redis 7.0
/// words it (each argument shown up to 128 bytes, at most the first 128 bytes of the list).
pub fn unknown_command(args: &[Bytes]) -> Reply {
    let name = args.first().map(|a| shown(a)).unwrap_or_default();
    let mut listed = String::new();
    for a in args.iter().skip(1) {
        if listed.len() >= 128 {
            break;
        }
        let remaining = 128 - listed.len();
        let arg = shown(a);
        let arg: String = arg.chars().take(remaining).collect();
        listed.push_str(&format!("'{arg}' "));
    }
    Reply::err(format!(
        "unknown command '{name}', with args beginning with: {listed}"
    ))
}

/// `-ERR unknown subcommand '<sub>'. Try <PARENT> HELP.`
pub fn unknown_subcommand(parent: &str, sub: &[u8]) -> Reply {
    Reply::err(format!(
        "unknown subcommand '{}'. Try {} HELP.",
        shown(sub),
        parent.to_ascii_uppercase()
    ))
}

/// An argument as an error text shows it: at most 128 bytes, lossily as UTF-8.
pub fn shown(a: &[u8]) -> String {
    String::from_utf8_lossy(&a[..a.len().min(128)]).into_owned()
}

/// COMMAND INFO's reply for one spec.
pub fn info_reply(s: &Spec) -> Reply {
    let mut fields = vec![
        Reply::bulk(s.name),
        Reply::Int(i64::from(s.arity)),
        Reply::Set(s.flags.iter().map(|f| Reply::simple(f)).collect()),
        Reply::Int(i64::from(s.first_key)),
        Reply::Int(i64::from(s.last_key)),
        Reply::Int(i64::from(s.step)),
        Reply::Set(s.categories.iter().map(|c| Reply::simple(c)).collect()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
    ];
    fields.push(Reply::Array(s.subcommands.iter().map(info_reply).collect()));
    Reply::Array(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arity_and_unknown_command_text() {
        assert!(arity_ok(2, 2) && !arity_ok(2, 3));
        assert!(arity_ok(-2, 5) && !arity_ok(-2, 1));
        let r = unknown_command(&[Bytes::from_static(b"foo"), Bytes::from_static(b"a")]);
        assert_eq!(
            r,
            Reply::Error("ERR unknown command 'foo', with args beginning with: 'a' ".into())
        );
        assert!(lookup(b"XaDd").is_some());
        assert_eq!(
            lookup_sub(lookup(b"xgroup").expect("xgroup"), b"CREATE").map(|s| s.name),
            Some("xgroup|create")
        );
    }
}
