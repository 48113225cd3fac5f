//! Server commands: COMMAND (COUNT, DOCS, INFO, LIST), CONFIG (GET, SET, RESETSTAT) and INFO
//! with Redis's section and field names, plus Manifold's own fields where Redis has none
//! (`manifold_version`, the Raft role next to `role:master`).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::Ctx;
use super::connection::help;
use crate::args::is;
use crate::command::{self, COMMANDS, Spec};
use crate::reply::Reply;
use crate::server::{REDIS_VERSION, Shared, now_ms};

type Result<T> = std::result::Result<T, Reply>;

fn all_specs() -> impl Iterator<Item = &'static Spec> {
    COMMANDS.iter()
}

pub fn command(ctx: &mut Ctx<'_>) -> Result<Reply> {
    match ctx.spec.name {
        "command" => Ok(Reply::Array(all_specs().map(command::info_reply).collect())),
        "command|count" => Ok(Reply::Int(COMMANDS.len() as i64)),
        "command|list" => {
            if ctx.args.len() > 2 {
                return command_list_filtered(ctx);
            }
            Ok(Reply::Array(
                all_specs().map(|s| Reply::bulk(s.name)).collect(),
            ))
        }
        "command|info" => {
            if ctx.args.len() == 2 {
                return Ok(Reply::Array(all_specs().map(command::info_reply).collect()));
            }
            Ok(Reply::Array(
                ctx.args[2..]
                    .iter()
                    .map(|n| command::lookup(n).map_or(Reply::Nil, command::info_reply))
                    .collect(),
            ))
        }
        "command|docs" => {
            let specs: Vec<&Spec> = if ctx.args.len() == 2 {
                all_specs().collect()
            } else {
                ctx.args[2..]
                    .iter()
                    .filter_map(|n| command::lookup(n))
                    .collect()
            };
            Ok(Reply::Map(
                specs
                    .into_iter()
                    .map(|s| {
                        (
                            Reply::bulk(s.name),
                            Reply::Map(vec![
                                Reply::field("summary", Reply::bulk(summary(s.name))),
                                Reply::field("since", Reply::bulk("1.0.0")),
                                Reply::field("group", Reply::bulk(group(s.name))),
                            ]),
                        )
                    })
                    .collect(),
            ))
        }
        _ => Ok(help(&[
            "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "(no subcommand)",
            "    Return details about all Redis commands.",
            "COUNT",
            "    Return the total number of commands in this Redis server.",
            "LIST",
            "    Return a list of all commands in this Redis server.",
            "INFO [<command-name> ...]",
            "    Return details about multiple Redis commands.",
            "    If no command names are given, documentation details for all",
            "    commands are returned.",
            "DOCS [<command-name> ...]",
            "    Return documentation details about multiple Redis commands.",
            "    If no command names are given, documentation details for all",
            "    commands are returned.",
            "HELP",
            "    Prints this help.",
        ])),
    }
}

/// COMMAND LIST FILTERBY (MODULE name | ACLCAT category | PATTERN pattern).
fn command_list_filtered(ctx: &Ctx<'_>) -> Result<Reply> {
    let a = &ctx.args;
    if a.len() != 5 || !is(&a[2], "filterby") {
        return Err(crate::args::syntax_error());
    }
    let value = &a[4];
    let names: Vec<Reply> = if is(&a[3], "module") {
        Vec::new()
    } else if is(&a[3], "aclcat") {
        let cat = format!("@{}", String::from_utf8_lossy(value).to_ascii_lowercase());
        all_specs()
            .filter(|s| s.categories.contains(&cat.as_str()))
            .map(|s| Reply::bulk(s.name))
            .collect()
    } else if is(&a[3], "pattern") {
        all_specs()
            .filter(|s| manifold_core::engine::glob::glob_match(value, s.name.as_bytes()))
            .map(|s| Reply::bulk(s.name))
            .collect()
    } else {
        return Err(crate::args::syntax_error());
    };
    Ok(Reply::Array(names))
}

fn group(name: &str) -> &'static str {
    match name {
        n if n.starts_with('x') || n.starts_with("manifold.") => "stream",
        "del" | "unlink" | "exists" | "type" | "keys" | "scan" => "generic",
        "ping" | "echo" | "hello" | "auth" | "select" | "quit" | "reset" | "client" => "connection",
        "multi" | "exec" | "discard" | "watch" | "unwatch" => "transactions",
        _ => "server",
    }
}

fn summary(name: &str) -> &'static str {
    match name {
        "xadd" => "Appends a new message to a stream. Creates the key if it doesn't exist.",
        "xrange" => "Returns the messages from a stream within a range of IDs.",
        "xrevrange" => "Returns the messages from a stream within a range of IDs in reverse order.",
        "xlen" => "Return the number of messages in a stream.",
        "xdel" => "Returns the number of messages after removing them from a stream.",
        "xtrim" => "Deletes messages from the beginning of a stream.",
        "xsetid" => "An internal command for replicating stream values.",
        "xread" => {
            "Returns messages from multiple streams with IDs greater than the ones requested. Blocks until a message is available otherwise."
        }
        "xinfo" => "A container for stream introspection commands.",
        "manifold.xadd" => "Appends a message with a message key (indexed for MANIFOLD.FIND).",
        "manifold.find" => "Returns a stream's messages with a message key, newest first.",
        "del" => "Deletes one or more keys.",
        "unlink" => "Asynchronously deletes one or more keys.",
        "exists" => "Determines whether one or more keys exist.",
        "type" => "Determines the type of value stored at a key.",
        "keys" => "Returns all key names that match a pattern.",
        "scan" => "Iterates over the key names in the database.",
        "dbsize" => "Returns the number of keys in the database.",
        "flushdb" => "Remove all keys from the current database.",
        "flushall" => "Removes all keys from all databases.",
        "ping" => "Returns the server's liveliness response.",
        "echo" => "Returns the given string.",
        "hello" => "Handshakes with the Redis server.",
        "auth" => "Authenticates the connection.",
        "select" => "Changes the selected database.",
        "quit" => "Closes the connection.",
        "reset" => "Resets the connection.",
        "client" => "A container for client connection commands.",
        "command" => "Returns detailed information about all commands.",
        "config" => "A container for server configuration commands.",
        "info" => "Returns information and statistics about the server.",
        _ => "",
    }
}

/// Settings CONFIG GET shows. None can be changed at run time here.
fn settings(shared: &Shared) -> Vec<(&'static str, String)> {
    let c = &shared.config;
    let nodes = shared.engine.stream_nodes();
    vec![
        ("bind", shared.addr.ip().to_string()),
        ("port", shared.addr.port().to_string()),
        ("databases", "16".into()),
        ("maxclients", c.max_clients.to_string()),
        ("proto-max-bulk-len", c.limits.max_bulk_len.to_string()),
        (
            "client-query-buffer-limit",
            c.limits.max_query_buffer.to_string(),
        ),
        ("stream-node-max-entries", nodes.max_entries.to_string()),
        ("stream-node-max-bytes", nodes.max_bytes.to_string()),
        ("appendonly", "no".into()),
        ("save", String::new()),
        ("maxmemory", "0".into()),
        ("timeout", "0".into()),
    ]
}

pub fn config(ctx: &mut Ctx<'_>) -> Result<Reply> {
    match ctx.spec.name {
        "config|get" => {
            let all = settings(ctx.shared);
            let mut out: Vec<(Reply, Reply)> = Vec::new();
            for pattern in &ctx.args[2..] {
                for (name, value) in &all {
                    let lower = pattern.to_ascii_lowercase();
                    if manifold_core::engine::glob::glob_match(&lower, name.as_bytes())
                        && !out.iter().any(|(k, _)| *k == Reply::bulk(*name))
                    {
                        out.push((Reply::bulk(*name), Reply::bulk(value.clone())));
                    }
                }
            }
            Ok(Reply::Map(out))
        }
        "config|set" => {
            if !ctx.args.len().is_multiple_of(2) {
                return Err(command::wrong_arity("config|set"));
            }
            let all = settings(ctx.shared);
            let name = String::from_utf8_lossy(&ctx.args[2]).to_ascii_lowercase();
            if all.iter().any(|(n, _)| *n == name) {
                Err(Reply::err(format!(
                    "CONFIG SET failed (possibly related to argument '{name}') - can't set immutable config"
                )))
            } else {
                Err(Reply::err(format!(
                    "Unknown option or number of arguments for CONFIG SET - '{name}'"
                )))
            }
        }
        "config|resetstat" => {
            ctx.shared.reset_stats();
            Ok(Reply::Ok)
        }
        _ => Ok(help(&[
            "CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "GET <pattern>",
            "    Return parameters matching the glob-like <pattern> and their values.",
            "SET <directive> <value>",
            "    Set the configuration <directive> to <value>.",
            "RESETSTAT",
            "    Reset statistics reported by the INFO command.",
            "HELP",
            "    Prints this help.",
        ])),
    }
}

const DEFAULT_SECTIONS: &[&str] = &[
    "server",
    "clients",
    "memory",
    "persistence",
    "stats",
    "replication",
    "cpu",
    "modules",
    "errorstats",
    "cluster",
    "keyspace",
];

pub fn info(ctx: &mut Ctx<'_>) -> Result<Reply> {
    let asked: Vec<String> = ctx.args[1..]
        .iter()
        .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
        .collect();
    let mut sections: Vec<&str> = Vec::new();
    if asked.is_empty() || asked.iter().any(|a| a == "default") {
        sections.extend(DEFAULT_SECTIONS);
    }
    if asked.iter().any(|a| a == "all" || a == "everything") {
        sections.extend(DEFAULT_SECTIONS);
        sections.push("commandstats");
    }
    for a in &asked {
        if let Some(s) = DEFAULT_SECTIONS
            .iter()
            .chain(&["commandstats"])
            .find(|s| **s == a.as_str())
        {
            sections.push(s);
        }
    }
    let mut seen = Vec::new();
    sections.retain(|s| {
        let new = !seen.contains(s);
        seen.push(*s);
        new
    });
    let mut out = String::new();
    for (n, s) in sections.iter().enumerate() {
        if n > 0 {
            out.push_str("\r\n");
        }
        section(ctx.shared, s, &mut out);
    }
    Ok(Reply::Verbatim("txt", Bytes::from(out)))
}

/// (user, system) CPU seconds of this process, from /proc.
fn cpu_seconds() -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return (0.0, 0.0);
    };
    // Fields after the command name (which may hold spaces) closed by ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    (ticks(11) / 100.0, ticks(12) / 100.0)
}

/// Resident set size in bytes, from /proc.
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn human(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2}G", b / (1024.0 * 1024.0 * 1024.0))
    } else if b >= 1024.0 * 1024.0 {
        format!("{:.2}M", b / (1024.0 * 1024.0))
    } else if b >= 1024.0 {
        format!("{:.2}K", b / 1024.0)
    } else {
        format!("{bytes}B")
    }
}

fn section(shared: &Shared, name: &str, text: &mut String) {
    let stats = &shared.stats;
    let engine = &shared.engine;
    let uptime = shared.started.elapsed().as_secs();
    let mut out = Section::default();
    let mut w = |k: &str, v: String| out.fields.push((k.to_string(), v));
    let mut header = "";
    match name {
        "server" => {
            header = "Server";
            w("redis_version", REDIS_VERSION.into());
            w("redis_git_sha1", "00000000".into());
            w("redis_git_dirty", "0".into());
            w("redis_build_id", "0".into());
            w("redis_mode", "standalone".into());
            w("os", std::env::consts::OS.into());
            w("arch_bits", "64".into());
            w("multiplexing_api", "epoll".into());
            w("process_id", std::process::id().to_string());
            w("tcp_port", shared.addr.port().to_string());
            w("server_time_usec", (now_ms() * 1000).to_string());
            w("uptime_in_seconds", uptime.to_string());
            w("uptime_in_days", (uptime / 86_400).to_string());
            w("hz", "10".into());
            w("executable", String::new());
            w("config_file", String::new());
            w("manifold_version", shared.config.version.into());
        }
        "clients" => {
            header = "Clients";
            w("connected_clients", shared.client_count().to_string());
            w("cluster_connections", "0".into());
            w("maxclients", shared.config.max_clients.to_string());
            w(
                "blocked_clients",
                stats.blocked_clients.load(Ordering::Relaxed).to_string(),
            );
            w("tracking_clients", "0".into());
            w("clients_in_timeout_table", "0".into());
        }
        "memory" => {
            let rss = rss_bytes();
            header = "Memory";
            w("used_memory", rss.to_string());
            w("used_memory_human", human(rss));
            w("used_memory_rss", rss.to_string());
            w("used_memory_rss_human", human(rss));
            w("maxmemory", "0".into());
            w("maxmemory_human", "0B".into());
            w("maxmemory_policy", "noeviction".into());
            w("mem_allocator", "libc".into());
        }
        "persistence" => {
            header = "Persistence";
            w("loading", "0".into());
            w("async_loading", "0".into());
            w("rdb_changes_since_last_save", "0".into());
            w("rdb_bgsave_in_progress", "0".into());
            w("aof_enabled", "0".into());
            w("aof_rewrite_in_progress", "0".into());
            w("manifold_applied_index", engine.applied_index().to_string());
        }
        "stats" => {
            header = "Stats";
            let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed).to_string();
            w(
                "total_connections_received",
                get(&stats.connections_received),
            );
            w("total_commands_processed", get(&stats.commands_processed));
            w("instantaneous_ops_per_sec", "0".into());
            w("total_net_input_bytes", get(&stats.net_input_bytes));
            w("total_net_output_bytes", get(&stats.net_output_bytes));
            w("rejected_connections", get(&stats.rejected_connections));
            w("expired_keys", "0".into());
            w("evicted_keys", "0".into());
            w("keyspace_hits", "0".into());
            w("keyspace_misses", "0".into());
            w("pubsub_channels", "0".into());
            w("pubsub_patterns", "0".into());
            w("total_error_replies", get(&stats.error_replies));
        }
        "replication" => {
            header = "Replication";
            w("role", "master".into());
            w("connected_slaves", "0".into());
            w("master_failover_state", "no-failover".into());
            w("master_repl_offset", engine.applied_index().to_string());
            match engine.raft_status() {
                None => {
                    w("manifold_raft_role", "leader".into());
                    w("manifold_raft_term", engine.term().to_string());
                }
                Some(st) => {
                    w("manifold_raft_role", st.role.name().into());
                    w("manifold_raft_term", st.term.to_string());
                    w("manifold_raft_node_id", st.id.to_string());
                    w(
                        "manifold_raft_leader_id",
                        st.leader.map_or_else(String::new, |l| l.to_string()),
                    );
                    w("manifold_raft_commit_index", st.commit.to_string());
                }
            }
        }
        "cpu" => {
            let (user, sys) = cpu_seconds();
            header = "CPU";
            w("used_cpu_sys", format!("{sys:.6}"));
            w("used_cpu_user", format!("{user:.6}"));
        }
        "modules" => header = "Modules",
        "errorstats" => {
            header = "Errorstats";
            for (code, n) in shared.error_stats() {
                w(&format!("errorstat_{code}"), format!("count={n}"));
            }
        }
        "cluster" => {
            header = "Cluster";
            w("cluster_enabled", "0".into());
        }
        "keyspace" => {
            header = "Keyspace";
            for db in 0..16u8 {
                let keys = engine.topics(db, b"*").len();
                if keys > 0 {
                    w(
                        &format!("db{db}"),
                        format!("keys={keys},expires=0,avg_ttl=0"),
                    );
                }
            }
        }
        "commandstats" => {
            header = "Commandstats";
            for (cmd, s) in shared.command_stats() {
                let per_call = if s.calls > 0 {
                    s.usec as f64 / s.calls as f64
                } else {
                    0.0
                };
                w(
                    &format!("cmdstat_{cmd}"),
                    format!(
                        "calls={},usec={},usec_per_call={per_call:.2},rejected_calls={},failed_calls={}",
                        s.calls, s.usec, s.rejected, s.failed
                    ),
                );
            }
        }
        _ => {}
    }
    let _ = write!(text, "# {header}\r\n");
    for (k, v) in out.fields {
        let _ = write!(text, "{k}:{v}\r\n");
    }
}

/// An INFO section's fields, in order.
#[derive(Default)]
struct Section {
    fields: Vec<(String, String)>,
}
