//! `manifold cluster status` and `manifold cluster transfer-leader --to N`: one HTTP request to
//! a node's listener (`--http-addr`), its answer printed (`--json` for the raw JSON). Exit 0
//! on success, 1 when the node refused or the transfer did not finish, 2 when the node could
//! not be asked.
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
    }
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
    for p in &v.peers {
        out.push_str(&format!(
            "peer {}  {}  match {}  lag {}\n",
            p.id,
            p.raft_addr,
            opt(p.match_index),
            opt(p.lag)
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
