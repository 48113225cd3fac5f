//! Connection commands: PING, HELLO, AUTH, SELECT, RESET and CLIENT, as Redis 7.0 answers them
//! (CLIENT SETINFO as 7.2). They change only the connection's own state and the client table.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use manifold_core::engine::Client;

use super::Ctx;
use crate::args::{self, is};
use crate::command;
use crate::connection::Conn;
use crate::reply::{Protocol, Reply};
use crate::server::{ClientEntry, REDIS_VERSION, now_ms};

type Result<T> = std::result::Result<T, Reply>;

pub fn ping(ctx: &mut Ctx<'_>) -> Result<Reply> {
    match ctx.args.len() {
        1 => Ok(Reply::simple("PONG")),
        2 => Ok(Reply::Bulk(ctx.args[1].clone())),
        _ => Err(command::wrong_arity("ping")),
    }
}

/// Authenticates as `user` with `pass`; the connection keeps its principal on failure.
fn authenticate(ctx: &mut Ctx<'_>, user: &Bytes, pass: &[u8]) -> Result<()> {
    let engine = &ctx.shared.engine;
    let principal = engine
        .authenticate(user, pass)
        .map_err(|e| ctx.engine_error(&e, b"", b""))?;
    ctx.conn.client = Some(Client::new(engine.clone(), principal));
    *lock(&ctx.conn.entry.user) = user.clone();
    Ok(())
}

pub fn auth(ctx: &mut Ctx<'_>) -> Result<Reply> {
    let (user, pass) = match ctx.args.len() {
        2 => {
            if ctx.shared.engine.anonymous().is_ok() {
                return Err(Reply::err(
                    "AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
                ));
            }
            (Bytes::from_static(b"default"), ctx.args[1].clone())
        }
        3 => (ctx.args[1].clone(), ctx.args[2].clone()),
        _ => return Err(args::syntax_error()),
    };
    authenticate(ctx, &user, &pass)?;
    Ok(Reply::Ok)
}

pub fn hello(ctx: &mut Ctx<'_>) -> Result<Reply> {
    let mut protocol = None;
    let mut i = 1;
    if ctx.args.len() >= 2 {
        let v = args::parse_i64(&ctx.args[1])
            .ok_or_else(|| Reply::err("Protocol version is not an integer or out of range"))?;
        protocol = match v {
            2 => Some(Protocol::Resp2),
            3 => Some(Protocol::Resp3),
            _ => return Err(Reply::Error("NOPROTO unsupported protocol version".into())),
        };
        i = 2;
    }
    let mut credentials = None;
    let mut name = None;
    while i < ctx.args.len() {
        let more = ctx.args.len() - i - 1;
        if is(&ctx.args[i], "auth") && more >= 2 {
            credentials = Some((ctx.args[i + 1].clone(), ctx.args[i + 2].clone()));
            i += 3;
        } else if is(&ctx.args[i], "setname") && more >= 1 {
            name = Some(ctx.args[i + 1].clone());
            i += 2;
        } else {
            return Err(Reply::err(format!(
                "Syntax error in HELLO option '{}'",
                command::shown(&ctx.args[i])
            )));
        }
    }
    match &credentials {
        Some((user, pass)) => authenticate(ctx, user, pass)?,
        None if ctx.conn.client.is_none() => {
            return Err(Reply::Error(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time".into(),
            ));
        }
        None => {}
    }
    if let Some(name) = name {
        check_name(&name)?;
        *lock(&ctx.conn.entry.name) = name;
    }
    if let Some(p) = protocol {
        ctx.conn.protocol = p;
        ctx.conn
            .entry
            .resp
            .store(if p == Protocol::Resp3 { 3 } else { 2 }, Ordering::Relaxed);
    }
    let proto = if ctx.conn.protocol == Protocol::Resp3 {
        3
    } else {
        2
    };
    Ok(Reply::Map(vec![
        Reply::field("server", Reply::bulk("redis")),
        Reply::field("version", Reply::bulk(REDIS_VERSION)),
        Reply::field("proto", Reply::Int(proto)),
        Reply::field("id", Reply::Int(ctx.conn.entry.id as i64)),
        Reply::field("mode", Reply::bulk("standalone")),
        Reply::field("role", Reply::bulk("master")),
        Reply::field("modules", Reply::Array(Vec::new())),
    ]))
}

pub fn select(ctx: &mut Ctx<'_>) -> Result<Reply> {
    let db = args::int(&ctx.args[1])?;
    if i32::try_from(db).is_err() {
        // Redis reads the index as an int; its wording, "be" missing included.
        return Err(Reply::err(
            "value is out of range, value must between -2147483648 and 2147483647",
        ));
    }
    let db = u8::try_from(db)
        .ok()
        .filter(|d| *d < 16)
        .ok_or_else(|| Reply::err("DB index is out of range"))?;
    ctx.conn.db = db;
    ctx.conn.entry.db.store(db, Ordering::Relaxed);
    Ok(Reply::Ok)
}

pub fn reset(ctx: &mut Ctx<'_>) -> Result<Reply> {
    let entry = ctx.conn.entry.clone();
    *ctx.conn = Conn::new(ctx.shared, entry.clone());
    entry.db.store(0, Ordering::Relaxed);
    entry.multi.store(-1, Ordering::Relaxed);
    entry.resp.store(2, Ordering::Relaxed);
    *lock(&entry.name) = Bytes::new();
    *lock(&entry.user) = Bytes::from_static(b"default");
    Ok(Reply::simple("RESET"))
}

/// Client names and library names: printable ASCII without spaces.
fn valid_name(name: &[u8]) -> bool {
    name.iter().all(|c| (b'!'..=b'~').contains(c))
}

fn check_name(name: &[u8]) -> Result<()> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(Reply::err(
            "Client names cannot contain spaces, newlines or special characters.",
        ))
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One line of CLIENT LIST / CLIENT INFO (fields as Redis 7.2 lists them; memory and buffer
/// fields are not tracked here and read 0).
fn client_line(c: &ClientEntry) -> String {
    let now = now_ms();
    let age = c.created.elapsed().as_secs();
    let idle = now.saturating_sub(c.last_interaction_ms.load(Ordering::Relaxed)) / 1000;
    let name = lock(&c.name).clone();
    let (lib_name, lib_ver) = lock(&c.lib).clone();
    let user = lock(&c.user).clone();
    let multi = c.multi.load(Ordering::Relaxed);
    let flags = if multi >= 0 {
        "x"
    } else if c.blocked.load(Ordering::Relaxed) {
        "b"
    } else {
        "N"
    };
    format!(
        "id={} addr={} laddr={} fd=-1 name={} age={} idle={} flags={} db={} sub=0 psub=0 ssub=0 multi={} qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={} user={} redir=-1 resp={} lib-name={} lib-ver={}\n",
        c.id,
        c.addr,
        c.laddr,
        String::from_utf8_lossy(&name),
        age,
        idle,
        flags,
        c.db.load(Ordering::Relaxed),
        multi,
        *lock(&c.last_cmd),
        String::from_utf8_lossy(&user),
        c.resp.load(Ordering::Relaxed),
        String::from_utf8_lossy(&lib_name),
        String::from_utf8_lossy(&lib_ver),
    )
}

/// A text reply: a bulk string in RESP2, a verbatim `txt` string in RESP3.
fn text(s: String) -> Reply {
    Reply::Verbatim("txt", Bytes::from(s))
}

pub fn client(ctx: &mut Ctx<'_>) -> Result<Reply> {
    let entry = ctx.conn.entry.clone();
    match ctx.spec.name {
        "client|id" => Ok(Reply::Int(entry.id as i64)),
        "client|getname" => {
            let name = lock(&entry.name).clone();
            Ok(if name.is_empty() {
                Reply::Nil
            } else {
                Reply::Bulk(name)
            })
        }
        "client|setname" => {
            check_name(&ctx.args[2])?;
            *lock(&entry.name) = ctx.args[2].clone();
            Ok(Reply::Ok)
        }
        "client|info" => Ok(text(client_line(&entry))),
        "client|list" => client_list(ctx),
        "client|setinfo" => {
            let value = ctx.args[3].clone();
            let mut lib = lock(&entry.lib);
            if is(&ctx.args[2], "lib-name") {
                if !valid_name(&value) {
                    return Err(Reply::err(
                        "lib-name cannot contain spaces, newlines or special characters.",
                    ));
                }
                lib.0 = value;
            } else if is(&ctx.args[2], "lib-ver") {
                if !valid_name(&value) {
                    return Err(Reply::err(
                        "lib-ver cannot contain spaces, newlines or special characters.",
                    ));
                }
                lib.1 = value;
            } else {
                return Err(Reply::err(format!(
                    "Unrecognized option '{}'",
                    command::shown(&ctx.args[2])
                )));
            }
            Ok(Reply::Ok)
        }
        "client|kill" => client_kill(ctx),
        _ => Ok(help(&[
            "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "GETNAME",
            "    Return the name of the current connection.",
            "ID",
            "    Return the ID of the current connection.",
            "INFO",
            "    Return information about the current client connection.",
            "KILL <ip:port>",
            "    Kill connection made from <ip:port>.",
            "KILL <option> <value> [<option> <value> [...]]",
            "    Kill connections. Options are:",
            "    * ADDR (<ip:port>|<unixsocket>:0)",
            "      Kill connections made from the specified address",
            "    * LADDR (<ip:port>|<unixsocket>:0)",
            "      Kill connections made to specified local address",
            "    * ID <client-id>",
            "      Kill connections by client id.",
            "    * USER <username>",
            "      Kill connections authenticated by <username>.",
            "    * SKIPME (YES|NO)",
            "      Skip killing current connection (default: yes).",
            "LIST [options ...]",
            "    Return information about client connections. Options:",
            "    * TYPE (NORMAL|MASTER|REPLICA|PUBSUB)",
            "      Return clients of specified type.",
            "    * ID <client-id> [<client-id> ...]",
            "      Return clients of specified IDs only.",
            "SETINFO <option> <value>",
            "    Set client meta attr. Options are:",
            "    * LIB-NAME: the client lib name.",
            "    * LIB-VER: the client lib version.",
            "SETNAME <name>",
            "    Assign the name <name> to the current connection.",
            "HELP",
            "    Prints this help.",
        ])),
    }
}

/// A HELP reply: the lines as simple strings.
pub fn help(lines: &[&'static str]) -> Reply {
    Reply::Array(lines.iter().map(|l| Reply::simple(l)).collect())
}

fn client_list(ctx: &mut Ctx<'_>) -> Result<Reply> {
    let mut ids: Option<Vec<u64>> = None;
    let mut i = 2;
    let mut only_normal = true;
    while i < ctx.args.len() {
        if is(&ctx.args[i], "type") && i + 1 < ctx.args.len() {
            let t = &ctx.args[i + 1];
            if is(t, "normal") {
                only_normal = true;
            } else if is(t, "master") || is(t, "replica") || is(t, "slave") || is(t, "pubsub") {
                only_normal = false;
            } else {
                return Err(Reply::err(format!(
                    "Unknown client type '{}'",
                    command::shown(t)
                )));
            }
            i += 2;
        } else if is(&ctx.args[i], "id") && i + 1 < ctx.args.len() {
            let mut list = Vec::new();
            // Any integer; one that names no client (0, negative) lists nothing.
            for a in &ctx.args[i + 1..] {
                match args::parse_i64(a) {
                    Some(id) => list.extend(u64::try_from(id).ok()),
                    None => return Err(Reply::err("Invalid client ID")),
                }
            }
            ids = Some(list);
            i = ctx.args.len();
        } else {
            return Err(args::syntax_error());
        }
    }
    let mut out = String::new();
    if only_normal {
        for c in ctx.shared.clients() {
            if ids.as_ref().is_none_or(|l| l.contains(&c.id)) {
                out.push_str(&client_line(&c));
            }
        }
    }
    Ok(text(out))
}

fn client_kill(ctx: &mut Ctx<'_>) -> Result<Reply> {
    let me = ctx.conn.entry.id;
    if ctx.args.len() == 3 {
        // The old form: CLIENT KILL addr:port.
        let addr = String::from_utf8_lossy(&ctx.args[2]).into_owned();
        let target = ctx
            .shared
            .clients()
            .into_iter()
            .find(|c| c.addr.to_string() == addr)
            .ok_or_else(|| Reply::err("No such client"))?;
        kill(ctx, &target);
        return Ok(Reply::Ok);
    }
    let (mut id, mut addr, mut laddr, mut user, mut skipme) = (None, None, None, None, true);
    // TYPE: every client here is a normal one; another type matches none.
    let mut normal = true;
    let mut i = 2;
    while i < ctx.args.len() {
        let Some(value) = ctx.args.get(i + 1) else {
            return Err(args::syntax_error());
        };
        let opt = &ctx.args[i];
        if is(opt, "id") {
            match args::parse_i64(value) {
                Some(v) if v > 0 => id = Some(v as u64),
                _ => return Err(Reply::err("client-id should be greater than 0")),
            }
        } else if is(opt, "addr") {
            addr = Some(String::from_utf8_lossy(value).into_owned());
        } else if is(opt, "laddr") {
            laddr = Some(String::from_utf8_lossy(value).into_owned());
        } else if is(opt, "user") {
            if !ctx.shared.engine.has_principal(value) {
                return Err(Reply::err(format!(
                    "No such user '{}'",
                    command::shown(value)
                )));
            }
            user = Some(value.clone());
        } else if is(opt, "skipme") {
            skipme = if is(value, "yes") {
                true
            } else if is(value, "no") {
                false
            } else {
                return Err(args::syntax_error());
            };
        } else if is(opt, "type") {
            normal = is(value, "normal");
            if !(normal
                || is(value, "master")
                || is(value, "replica")
                || is(value, "slave")
                || is(value, "pubsub"))
            {
                return Err(Reply::err(format!(
                    "Unknown client type '{}'",
                    command::shown(value)
                )));
            }
        } else {
            return Err(args::syntax_error());
        }
        i += 2;
    }
    let mut killed = 0;
    for c in ctx.shared.clients() {
        let matches = normal
            && id.is_none_or(|v| c.id == v)
            && addr.as_ref().is_none_or(|a| c.addr.to_string() == *a)
            && laddr.as_ref().is_none_or(|a| c.laddr.to_string() == *a)
            && user.as_ref().is_none_or(|u| *lock(&c.user) == *u)
            && !(skipme && c.id == me);
        if matches {
            kill(ctx, &c);
            killed += 1;
        }
    }
    Ok(Reply::Int(killed))
}

/// Kills `target`; the connection itself closes after this reply.
fn kill(ctx: &mut Ctx<'_>, target: &ClientEntry) {
    if target.id == ctx.conn.entry.id {
        ctx.conn.closing = true;
    } else {
        target.kill();
    }
}
