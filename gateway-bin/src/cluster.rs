//! `manifold cluster status`, `transfer-leader --to N`, `add --id N --addr H:P [--learner]`
//! and `remove --id N`: one HTTP request to a node's listener (`--http-addr`), its answer
//! printed (`--json` for the raw JSON). Exit 0 on success, 1 when the node refused or the
//! change did not finish in time, 2 when the node could not be asked.
//!
//! A plain HTTP/1.1 request over a std TCP stream: the answer is ours, small and closed after
//! one response, so no HTTP client library is pulled in for it.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use manifold_push::admin::ClusterView;

/// Arguments of `manifold cluster`.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ClusterCommand {
    /// Role, term, leader, commit and applied index, and each peer's match index and lag.
    Status {
        /// The node's HTTP listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        http_addr: String,
        /// Print the node's JSON as it is.
        #[arg(long)]
        json: bool,
    },
    /// Hand leadership to voter N (any node passes the request to the leader) and wait until
    /// N leads.
    TransferLeader {
        #[arg(long, default_value = "127.0.0.1:8080")]
        http_addr: String,
        /// The voter to lead.
        #[arg(long)]
        to: u64,
        /// How long to wait for N to take over (ms; default 3000).
        #[arg(long)]
        timeout_ms: Option<u64>,
    },
    /// Add node N (started with `manifold serve --join`): it receives the log as a learner,
    /// then becomes a voter once it holds every committed entry (unless `--learner`). Waits
    /// until the change is in force and committed.
    Add {
        #[arg(long, default_value = "127.0.0.1:8080")]
        http_addr: String,
        /// The new node's id.
        #[arg(long)]
        id: u64,
        /// Its Raft address, as the others reach it.
        #[arg(long)]
        addr: String,
        /// Keep it a learner: it receives the log, never votes.
        #[arg(long)]
        learner: bool,
        /// How long to wait (ms; default 30000).
        #[arg(long)]
        timeout_ms: Option<u64>,
    },
    /// Replace member N by a new node M (started with `manifold serve --join`): M is added
    /// and caught up until it votes, then N is removed — one voter at a time, so the group
    /// keeps its majority throughout. (A node that lost its disk and came back with the same
    /// id needs none of this: the leader hands it its place back once it caught up.)
    Replace {
        #[arg(long, default_value = "127.0.0.1:8080")]
        http_addr: String,
        /// The member that leaves.
        #[arg(long)]
        id: u64,
        /// The node that takes its place.
        #[arg(long)]
        with: u64,
        /// The new node's Raft address.
        #[arg(long)]
        addr: String,
        /// How long to wait for each of the two changes (ms; default 30000).
        #[arg(long)]
        timeout_ms: Option<u64>,
    },
    /// Remove member N (the leader itself hands over first). Waits until the change is in
    /// force and committed.
    Remove {
        #[arg(long, default_value = "127.0.0.1:8080")]
        http_addr: String,
        #[arg(long)]
        id: u64,
        #[arg(long)]
        timeout_ms: Option<u64>,
    },
}

pub fn run(args: &ClusterArgs) -> anyhow::Result<ExitCode> {
    match &args.command {
        ClusterCommand::Status { http_addr, json } => {
            let (status, body) = request(http_addr, "GET", "/cluster")?;
            if status != 200 {
                return refused(status, &body);
            }
            if *json {
                println!("{body}");
            } else {
                let view: ClusterView =
                    serde_json::from_str(&body).context("the node's /cluster answer")?;
                print!("{}", describe(&view));
            }
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::TransferLeader {
            http_addr,
            to,
            timeout_ms,
        } => {
            let mut path = format!("/cluster/transfer-leader?to={to}");
            if let Some(t) = timeout_ms {
                path.push_str(&format!("&timeout_ms={t}"));
            }
            let (status, body) = request(http_addr, "POST", &path)?;
            if status != 200 {
                return refused(status, &body);
            }
            let v: serde_json::Value = serde_json::from_str(&body).context("transfer answer")?;
            println!(
                "node {} leads (term {}) after {:.1} ms",
                v["leader_id"],
                v["term"],
                v["elapsed_ms"].as_f64().unwrap_or(f64::NAN)
            );
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::Add {
            http_addr,
            id,
            addr,
            learner,
            timeout_ms,
        } => {
            let mut path = format!("/cluster/members?id={id}&addr={}", query_value(addr));
            if *learner {
                path.push_str("&learner=true");
            }
            if let Some(t) = timeout_ms {
                path.push_str(&format!("&timeout_ms={t}"));
            }
            members_changed(http_addr, "POST", &path)
        }
        ClusterCommand::Replace {
            http_addr,
            id,
            with,
            addr,
            timeout_ms,
        } => {
            let wait = timeout_ms.map_or_else(String::new, |t| format!("&timeout_ms={t}"));
            let add = format!(
                "/cluster/members?id={with}&addr={}{wait}",
                query_value(addr)
            );
            let code = members_changed(http_addr, "POST", &add)?;
            if code != ExitCode::SUCCESS {
                return Ok(code);
            }
            let wait = timeout_ms.map_or_else(String::new, |t| format!("?timeout_ms={t}"));
            members_changed(http_addr, "DELETE", &format!("/cluster/members/{id}{wait}"))
        }
        ClusterCommand::Remove {
            http_addr,
            id,
            timeout_ms,
        } => {
            let mut path = format!("/cluster/members/{id}");
            if let Some(t) = timeout_ms {
                path.push_str(&format!("?timeout_ms={t}"));
            }
            members_changed(http_addr, "DELETE", &path)
        }
    }
}

/// Sends a membership change; prints the members in force once it is.
fn members_changed(http_addr: &str, method: &str, path: &str) -> anyhow::Result<ExitCode> {
    let (status, body) = request(http_addr, method, path)?;
    if status != 200 {
        return refused(status, &body);
    }
    let v: serde_json::Value = serde_json::from_str(&body).context("membership answer")?;
    for m in v["members"].as_array().into_iter().flatten() {
        println!(
            "member {}  {}  {}  {}",
            m["id"],
            m["member"].as_str().unwrap_or("?"),
            m["raft_addr"].as_str().unwrap_or("?"),
            m["incarnation"].as_str().unwrap_or("")
        );
    }
    println!(
        "in force after {:.1} ms",
        v["elapsed_ms"].as_f64().unwrap_or(f64::NAN)
    );
    Ok(ExitCode::SUCCESS)
}

/// `s` percent-encoded for a query string (an address has `:`, maybe `[`/`]`).
fn query_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The node said no: its error message on stderr, exit 1.
fn refused(status: u16, body: &str) -> anyhow::Result<ExitCode> {
    let message = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.to_owned());
    let _ = writeln!(std::io::stderr(), "manifold: HTTP {status}: {message}");
    Ok(ExitCode::from(1))
}

/// The status as lines of text.
fn describe(v: &ClusterView) -> String {
    let opt = |x: Option<u64>| x.map_or_else(|| "-".to_string(), |x| x.to_string());
    let mut out = format!(
        "node {}  role {}  term {}  leader {}  commit {}  applied {}  last {}\n",
        v.node_id,
        v.role,
        v.term,
        opt(v.leader_id),
        v.commit_index,
        v.applied_index,
        v.last_index
    );
    if let Some(p) = v.preferred_leader {
        out.push_str(&format!("preferred leader {p}\n"));
    }
    if let Some(t) = v.transferring_to {
        out.push_str(&format!("handing over to {t}\n"));
    }
    if v.membership != "voter" {
        out.push_str(&format!("this node: {}\n", v.membership));
    }
    if !v.image.is_empty() && v.image != "none" {
        out.push_str(&format!("image of the leader: {}\n", v.image));
    }
    if let Some(i) = v.installed_image {
        out.push_str(&format!("started on an image of the leader up to {i}\n"));
    }
    for p in &v.peers {
        out.push_str(&format!(
            "peer {}  {}  {}  match {}  lag {}{}\n",
            p.id,
            p.member,
            p.raft_addr,
            opt(p.match_index),
            opt(p.lag),
            if p.needs_snapshot == Some(true) {
                "  behind the retained log"
            } else {
                ""
            }
        ));
    }
    out
}

/// One request; the status code and the body.
fn request(addr: &str, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let sock = addr
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {addr:?}"))?
        .next()
        .with_context(|| format!("{addr:?} resolves to nothing"))?;
    let mut stream = TcpStream::connect_timeout(&sock, Duration::from_secs(3))
        .with_context(|| format!("connecting to {addr}"))?;
    // A transfer may wait up to a minute on the node's side.
    stream.set_read_timeout(Some(Duration::from_secs(75)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the answer from {addr}"))?;
    parse_response(&raw).with_context(|| format!("the answer from {addr}"))
}

/// Status and body of an HTTP/1.1 response read to its end (fixed length or chunked).
fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, String)> {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!("no complete response head");
    };
    let head = std::str::from_utf8(&raw[..split]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .context("no status code")?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let mut body = &raw[split + 4..];
    let body = if chunked {
        let mut out = Vec::new();
        loop {
            let end = body
                .windows(2)
                .position(|w| w == b"\r\n")
                .context("chunk size line")?;
            let size_text = std::str::from_utf8(&body[..end]).context("chunk size")?;
            let size_text = size_text.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16).context("chunk size")?;
            body = &body[end + 2..];
            if size == 0 {
                break;
            }
            if body.len() < size + 2 {
                bail!("chunk cut short");
            }
            out.extend_from_slice(&body[..size]);
            body = &body[size + 2..];
        }
        out
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_with_a_fixed_length_or_in_chunks() -> anyhow::Result<()> {
        let fixed = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(fixed)?, (503, "{}".to_string()));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked)?, (200, "abcde".to_string()));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
        Ok(())
    }
}
