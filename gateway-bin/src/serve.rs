//! `manifold serve`: the command-line contract of DESIGN.md (every flag has a TOML key of the
//! same name; flags win over the file), a single node on the engine, and a graceful shutdown on
//! SIGINT/SIGTERM (stop intake, apply what was proposed, checkpoint, close the log cleanly).
//!
//! The RESP front end listens on `--resp-addr`, the MQTT broker on `--mqtt-addr` (and over TLS
//! on `--mqtts-addr`, with `--tls-cert` and `--tls-key`), the HTTP listener (admin routes, and
//! the broker's `/mqtt` WebSocket) on `--http-addr`. `--peers` makes the node a member of a
//! Raft group.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail, ensure};
use manifold_core::engine::cluster::ClusterConfig;
use manifold_core::engine::{AccessConfig, Engine, EngineConfig, PrincipalConfig};
use manifold_core::store::{FlushMode, RealFs};
use serde::Deserialize;

/// Arguments of `manifold serve`.
#[derive(Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// Data directory (default `./data`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// TOML file with any of these settings; flags win over it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// MQTT listener (default 127.0.0.1:1883).
    #[arg(long)]
    mqtt_addr: Option<String>,
    /// RESP (Redis) listener (default 127.0.0.1:6379).
    #[arg(long)]
    resp_addr: Option<String>,
    /// HTTP listener (default 127.0.0.1:8080).
    #[arg(long)]
    http_addr: Option<String>,
    /// This node's id in its cluster (default 1).
    #[arg(long)]
    node_id: Option<u64>,
    /// Raft listener of this node.
    #[arg(long)]
    raft_addr: Option<String>,
    /// Cluster members, `1=H:P,2=H:P,3=H:P`.
    #[arg(long)]
    peers: Option<String>,
    /// A voter that should lead whenever it is up and caught up: the leader hands over to it.
    #[arg(long)]
    preferred_leader: Option<u64>,
    /// Join a running group: start as a learner that never campaigns and wait for the
    /// leader, after `manifold cluster add --id N --addr RAFT_ADDR` (`--peers` then names
    /// this node and where the members are).
    #[arg(long)]
    join: bool,
    /// `sync` (default: acknowledged after fdatasync) or `async`.
    #[arg(long)]
    flush: Option<String>,
    /// Flush interval for `async`, milliseconds (default 100).
    #[arg(long)]
    flush_interval_ms: Option<u64>,
    /// CommitLog segment size in bytes (default 1 GiB; at least 64 KiB). Segments are
    /// preallocated: a small size suits tests and small disks.
    #[arg(long)]
    segment_size: Option<u64>,
    /// Log entries older than this are removed (ms; default 259200000, 72 h).
    #[arg(long)]
    retention_ms: Option<u64>,
    /// How often the leader looks for entries past the retention (ms; default 60000).
    #[arg(long)]
    retention_check_ms: Option<u64>,
    /// A clean MQTT session whose next message is older than this skips to the head of the
    /// log (ms; default 60000; 0: never).
    #[arg(long)]
    mqtt_lag_limit_ms: Option<u64>,
    /// How long an MQTT 3.1.1 persistent session (Clean Session 0) outlives its connection
    /// (s; default: for ever, as Mosquitto's persistent_client_expiration).
    #[arg(long)]
    mqtt_persistent_expiry_s: Option<u32>,
    /// In a group: the leader declares a node's MQTT connections lost (their sessions close,
    /// their Wills go out) after not hearing from it for this long (ms; default 3000).
    #[arg(long)]
    mqtt_node_lost_ms: Option<u64>,
    /// MQTT over TLS listener (default 127.0.0.1:8883 once --tls-cert and --tls-key are given;
    /// off without them).
    #[arg(long)]
    mqtts_addr: Option<String>,
    /// The TLS certificate chain, PEM (the server's certificate first).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// The TLS private key, PEM (PKCS#8, PKCS#1 or SEC1).
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// Origins whose browser pages may call the HTTP listener (CORS), comma-separated
    /// `scheme://host[:port]`, or `*` (default: none).
    #[arg(long)]
    http_cors_origins: Option<String>,
}

/// The TOML file: the same settings, by the same names (with `_`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    mqtt_addr: Option<String>,
    resp_addr: Option<String>,
    http_addr: Option<String>,
    node_id: Option<u64>,
    raft_addr: Option<String>,
    peers: Option<String>,
    preferred_leader: Option<u64>,
    join: Option<bool>,
    flush: Option<String>,
    flush_interval_ms: Option<u64>,
    segment_size: Option<u64>,
    retention_ms: Option<u64>,
    retention_check_ms: Option<u64>,
    mqtt_lag_limit_ms: Option<u64>,
    mqtt_persistent_expiry_s: Option<u32>,
    mqtt_node_lost_ms: Option<u64>,
    mqtts_addr: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    http_cors_origins: Option<String>,
    /// The cluster's shared secret (file or `MANIFOLD_CLUSTER_SECRET`, never a flag).
    cluster_secret: Option<String>,
    /// `[[principal]]` tables (file only: secrets stay off the command line).
    principal: Option<Vec<PrincipalToml>>,
}

/// One `[[principal]]`: `name`, optional `secret`, and `publish` / `subscribe` glob patterns.
/// A principal named `default` is what unauthenticated connections may do; without any
/// `[[principal]]` everyone may do everything.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalToml {
    name: String,
    secret: Option<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    subscribe: Vec<String>,
}

/// Settings after merging flags, file and defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    data_dir: PathBuf,
    listeners: [(&'static str, String); 3],
    node_id: u64,
    raft_addr: Option<String>,
    peers: Option<String>,
    preferred_leader: Option<u64>,
    join: bool,
    flush: FlushMode,
    segment_size: Option<u64>,
    retention_ms: Option<u64>,
    retention_check_ms: Option<u64>,
    mqtt_lag_limit_ms: Option<u64>,
    mqtt_persistent_expiry_s: Option<u32>,
    mqtt_node_lost_ms: Option<u64>,
    /// The MQTT over TLS listener: address, certificate chain, key.
    mqtts: Option<(String, PathBuf, PathBuf)>,
    /// CORS origins of the HTTP listener.
    http_cors_origins: Vec<String>,
    cluster_secret: Option<String>,
    access: AccessConfig,
}

fn settings(args: &ServeArgs) -> anyhow::Result<Settings> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str::<FileConfig>(&text)
                .with_context(|| format!("parsing {}", path.display()))?
        }
        None => FileConfig::default(),
    };
    let pick = |flag: &Option<String>, file: &Option<String>, default: &str| {
        flag.clone()
            .or_else(|| file.clone())
            .unwrap_or_else(|| default.to_string())
    };
    let flush = match pick(&args.flush, &file.flush, "sync").as_str() {
        "sync" => FlushMode::Sync,
        "async" => FlushMode::Async {
            interval_ms: args
                .flush_interval_ms
                .or(file.flush_interval_ms)
                .unwrap_or(100),
        },
        other => bail!("flush must be sync or async, not {other:?}"),
    };
    let tls_cert = args.tls_cert.clone().or(file.tls_cert);
    let tls_key = args.tls_key.clone().or(file.tls_key);
    let mqtts_addr = args.mqtts_addr.clone().or(file.mqtts_addr);
    let mqtts = match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => Some((
            mqtts_addr.unwrap_or_else(|| "127.0.0.1:8883".to_string()),
            cert,
            key,
        )),
        (None, None) if mqtts_addr.is_some() => {
            bail!("--mqtts-addr needs --tls-cert and --tls-key")
        }
        (None, None) => None,
        _ => bail!("--tls-cert and --tls-key go together"),
    };
    Ok(Settings {
        data_dir: args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./data")),
        listeners: [
            (
                "MQTT",
                pick(&args.mqtt_addr, &file.mqtt_addr, "127.0.0.1:1883"),
            ),
            (
                "RESP",
                pick(&args.resp_addr, &file.resp_addr, "127.0.0.1:6379"),
            ),
            (
                "HTTP",
                pick(&args.http_addr, &file.http_addr, "127.0.0.1:8080"),
            ),
        ],
        node_id: args.node_id.or(file.node_id).unwrap_or(1),
        raft_addr: args.raft_addr.clone().or(file.raft_addr),
        peers: args.peers.clone().or(file.peers),
        preferred_leader: args.preferred_leader.or(file.preferred_leader),
        join: args.join || file.join.unwrap_or(false),
        flush,
        segment_size: args.segment_size.or(file.segment_size),
        retention_ms: args.retention_ms.or(file.retention_ms),
        retention_check_ms: args.retention_check_ms.or(file.retention_check_ms),
        mqtt_lag_limit_ms: args.mqtt_lag_limit_ms.or(file.mqtt_lag_limit_ms),
        mqtt_persistent_expiry_s: args
            .mqtt_persistent_expiry_s
            .or(file.mqtt_persistent_expiry_s),
        mqtt_node_lost_ms: args.mqtt_node_lost_ms.or(file.mqtt_node_lost_ms),
        mqtts,
        http_cors_origins: args
            .http_cors_origins
            .clone()
            .or(file.http_cors_origins)
            .map(|o| {
                o.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default(),
        cluster_secret: std::env::var("MANIFOLD_CLUSTER_SECRET")
            .ok()
            .or(file.cluster_secret),
        access: match file.principal {
            None => AccessConfig::default(),
            Some(list) => AccessConfig {
                principals: list
                    .into_iter()
                    .map(|p| PrincipalConfig {
                        name: p.name,
                        secret: p.secret,
                        publish: p.publish,
                        subscribe: p.subscribe,
                    })
                    .collect(),
            },
        },
    })
}

/// The Raft group from `--peers 1=H:P,2=H:P,...` (one member, this node: a group of one that
/// can grow). This node's Raft listener binds `--raft-addr` if given, else its own entry.
fn cluster_config(
    node_id: u64,
    peers: &str,
    raft_addr: Option<&str>,
    preferred_leader: Option<u64>,
    secret: Option<&str>,
    join: bool,
) -> anyhow::Result<ClusterConfig> {
    use std::net::ToSocketAddrs;
    let mut voters = Vec::new();
    for member in peers.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let (id, addr) = member
            .split_once('=')
            .with_context(|| format!("--peers: {member:?} is not ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .with_context(|| format!("--peers: {id:?} is not a node id"))?;
        let addr = addr
            .trim()
            .to_socket_addrs()
            .with_context(|| format!("--peers: cannot resolve {addr:?}"))?
            .next()
            .with_context(|| format!("--peers: {addr:?} resolves to nothing"))?;
        if voters.iter().any(|(v, _)| *v == id) {
            bail!("--peers names node {id} twice");
        }
        voters.push((id, addr));
    }
    if !voters.iter().any(|(v, _)| *v == node_id) {
        bail!("--peers does not name this node (--node-id {node_id})");
    }
    if let Some(p) = preferred_leader
        && !voters.iter().any(|(v, _)| *v == p)
    {
        bail!("--preferred-leader {p} is not named in --peers");
    }
    // `--peers` naming only this node: a group of one on the Raft path, which `manifold
    // cluster add` grows (without `--peers`, a single node that never joins a group).
    if voters.len() == 1 && join {
        bail!("--join needs the group's members in --peers");
    }
    let listen = match raft_addr {
        Some(a) => Some(
            a.to_socket_addrs()
                .with_context(|| format!("--raft-addr: cannot resolve {a:?}"))?
                .next()
                .with_context(|| format!("--raft-addr: {a:?} resolves to nothing"))?,
        ),
        None => None,
    };
    Ok(ClusterConfig {
        listen,
        preferred_leader,
        secret: secret.map(|s| s.as_bytes().to_vec()).unwrap_or_default(),
        join,
        ..ClusterConfig::new(voters)
    })
}

/// Runs the subcommand until SIGINT or SIGTERM.
pub fn run(args: &ServeArgs) -> anyhow::Result<ExitCode> {
    let s = settings(args)?;
    let cluster = match s.peers.as_deref() {
        Some(peers) => cluster_config(
            s.node_id,
            peers,
            s.raft_addr.as_deref(),
            s.preferred_leader,
            s.cluster_secret.as_deref(),
            s.join,
        )
        .map(Some)?,
        None => {
            if s.preferred_leader.is_some() {
                bail!("--preferred-leader needs --peers");
            }
            if s.join {
                bail!("--join needs --peers");
            }
            None
        }
    };
    std::fs::create_dir_all(&s.data_dir)
        .with_context(|| format!("creating {}", s.data_dir.display()))?;
    let mut config = EngineConfig {
        node_id: s.node_id,
        access: s.access.clone(),
        cluster,
        ..EngineConfig::default()
    };
    config.store.log.flush = s.flush;
    if let Some(size) = s.segment_size {
        ensure!(
            (64 * 1024..1 << 32).contains(&size),
            "--segment-size must be at least 64 KiB and below 4 GiB"
        );
        config.store.log.segment_size = size;
    }
    if let Some(ms) = s.retention_ms {
        ensure!(ms > 0, "--retention-ms must be above 0");
        config.retention_ms = ms;
    }
    if let Some(ms) = s.retention_check_ms {
        ensure!(ms > 0, "--retention-check-ms must be above 0");
        config.retention_check_ms = ms;
    }
    if let Some(ms) = s.mqtt_node_lost_ms {
        ensure!(ms > 0, "--mqtt-node-lost-ms must be above 0");
        config.session_node_lost_ms = ms;
    }
    if let (Some(addr), None) = (&s.raft_addr, &s.peers) {
        tracing::warn!(%addr, "--raft-addr without --peers: a single node; not listening");
    }
    // A node behind its leader's retained log stages an image of the leader and restarts on
    // it: the engine is closed and opened again (which installs the image), the listeners
    // bound anew.
    loop {
        match serve_once(&s, config.clone())? {
            Stopped::Signal => return Ok(ExitCode::SUCCESS),
            Stopped::Restart => tracing::info!("restarting on the image staged"),
        }
    }
}

/// Why [`serve_once`] returned.
enum Stopped {
    /// SIGINT or SIGTERM: the process ends.
    Signal,
    /// An image is staged: open again.
    Restart,
}

/// Opens the engine, serves until a signal or a restart, and closes it cleanly.
fn serve_once(s: &Settings, config: EngineConfig) -> anyhow::Result<Stopped> {
    let max_message_bytes = config.max_message_bytes;
    let engine = Arc::new(open(&s.data_dir, config)?);
    let mut restart = engine.restart_requested();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("manifold-io")
        .build()
        .context("runtime")?;
    // In a group: serve the writes followers forward here.
    engine.serve_forwarded(runtime.handle().clone());
    // Signal handlers first, then the listeners, then the ready line: a client or a signal
    // acting on seeing it is never missed.
    let (mut term, mut int) = runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        Ok::<_, std::io::Error>((
            signal(SignalKind::terminate())?,
            signal(SignalKind::interrupt())?,
        ))
    })?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut front_ends = Vec::new();
    // The MQTT broker: its counters (`$SYS` there, `/metrics` on the HTTP listener) and the
    // connections of its three listeners (TCP, TLS, WebSocket at `/mqtt` on HTTP).
    let mqtt_stats = Arc::new(manifold_mqtt::BrokerStats::default());
    let mqtt_metrics: manifold_push::MetricsSource = {
        let stats = mqtt_stats.clone();
        Arc::new(move || stats.prometheus())
    };
    let broker = {
        let mut config = manifold_mqtt::BrokerConfig::for_engine(max_message_bytes);
        if let Some(ms) = s.mqtt_lag_limit_ms {
            config.clean_lag_limit_ms = ms;
        }
        if let Some(secs) = s.mqtt_persistent_expiry_s {
            config.persistent_session_expiry_s = secs;
        }
        let _runtime = runtime.enter();
        manifold_mqtt::Broker::new(engine.clone(), config, mqtt_stats, stopped.clone())
    };
    let tls = match &s.mqtts {
        Some((addr, cert, key)) => Some((addr, crate::tls::acceptor(cert, key)?)),
        None => None,
    };
    let listeners = s
        .listeners
        .iter()
        .map(|(name, addr)| (*name, addr))
        .chain(tls.as_ref().map(|(addr, _)| ("MQTTS", *addr)));
    for (name, addr) in listeners {
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr.as_str()))
            .with_context(|| format!("binding the {name} listener to {addr}"))?;
        let local = listener
            .local_addr()
            .with_context(|| format!("{name} listener address"))?;
        tracing::info!(listener = name, addr = %local, "listening");
        let broker = broker.clone();
        front_ends.push(match name {
            "MQTT" => runtime.spawn(async move { broker.serve(listener).await }),
            "MQTTS" => {
                let tls = tls.as_ref().map(|(_, acceptor)| acceptor.clone());
                runtime.spawn(async move {
                    match tls {
                        Some(tls) => broker.serve_tls(listener, tls).await,
                        None => Ok(()),
                    }
                })
            }
            "RESP" => {
                let config = manifold_resp::RespConfig::for_engine(max_message_bytes);
                runtime.spawn(manifold_resp::serve(
                    listener,
                    engine.clone(),
                    config,
                    stopped.clone(),
                ))
            }
            _ => runtime.spawn(manifold_push::serve(
                listener,
                engine.clone(),
                vec![mqtt_metrics.clone()],
                manifold_mqtt::broker::websocket::routes(broker),
                manifold_push::cors::Cors::new(s.http_cors_origins.clone()),
                stopped.clone(),
            )),
        });
    }
    tracing::info!(
        data_dir = %s.data_dir.display(),
        node = s.node_id,
        term = engine.term(),
        applied = engine.applied_index(),
        "manifold ready"
    );
    let signal = runtime.block_on(async {
        tokio::select! {
            _ = term.recv() => Some("SIGTERM"),
            _ = int.recv() => Some("SIGINT"),
            _ = restart.wait_for(|staged| *staged) => None,
        }
    });
    tracing::info!(
        signal = signal.unwrap_or("restart"),
        "shutting down: closing connections, applying what was proposed, checkpointing"
    );
    let _ = stop.send(true);
    runtime.block_on(async {
        for f in front_ends {
            match f.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "front end failed"),
                Err(e) => tracing::error!(error = %e, "front end task failed"),
            }
        }
        // Every MQTT connection (of any listener) has closed: none holds the engine.
        broker.closed().await;
    });
    drop(broker);
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    let engine = Arc::try_unwrap(engine)
        .map_err(|_| anyhow::anyhow!("the engine is still in use after the front ends stopped"))?;
    engine.close().context("closing the engine")?;
    if signal.is_none() {
        return Ok(Stopped::Restart);
    }
    tracing::info!("manifold stopped cleanly");
    Ok(Stopped::Signal)
}

fn open(dir: &Path, config: EngineConfig) -> anyhow::Result<Engine> {
    Engine::open(Arc::new(RealFs), dir, config)
        .with_context(|| format!("opening {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_the_rest() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("manifold.toml");
        std::fs::write(
            &path,
            "resp_addr = \"127.0.0.1:7000\"\nhttp_addr = \"127.0.0.1:9000\"\nflush = \"async\"\n",
        )?;
        let args = ServeArgs {
            config: Some(path.clone()),
            http_addr: Some("127.0.0.1:9999".into()),
            ..ServeArgs::default()
        };
        let s = settings(&args)?;
        assert_eq!(s.listeners[0].1, "127.0.0.1:1883");
        assert_eq!(s.listeners[1].1, "127.0.0.1:7000");
        assert_eq!(s.listeners[2].1, "127.0.0.1:9999");
        assert_eq!(s.flush, FlushMode::Async { interval_ms: 100 });
        assert_eq!(s.data_dir, PathBuf::from("./data"));
        assert_eq!(s.access, AccessConfig::default());
        std::fs::write(&path, "no_such_setting = 1\n")?;
        assert!(settings(&args).is_err(), "unknown keys are refused");
        std::fs::write(
            &path,
            "[[principal]]\nname = \"sensor\"\nsecret = \"pw\"\npublish = [\"sensors/*\"]\n\n\
             [[principal]]\nname = \"default\"\nsubscribe = [\"public/*\"]\n",
        )?;
        let s = settings(&args)?;
        assert_eq!(s.access.principals.len(), 2);
        assert_eq!(s.access.principals[0].secret.as_deref(), Some("pw"));
        assert_eq!(s.access.principals[0].publish, ["sensors/*"]);
        assert!(s.access.principals[1].publish.is_empty());
        std::fs::write(&path, "[[principal]]\nname = \"x\"\npasword = \"typo\"\n")?;
        assert!(
            settings(&args).is_err(),
            "unknown principal keys are refused"
        );
        Ok(())
    }

    #[test]
    fn the_mqtts_listener_needs_a_certificate_and_its_key() -> anyhow::Result<()> {
        let base = ServeArgs::default();
        assert_eq!(settings(&base)?.mqtts, None, "off by default");
        let with = |addr: Option<&str>, cert: Option<&str>, key: Option<&str>| ServeArgs {
            mqtts_addr: addr.map(String::from),
            tls_cert: cert.map(PathBuf::from),
            tls_key: key.map(PathBuf::from),
            ..ServeArgs::default()
        };
        let s = settings(&with(None, Some("c.pem"), Some("k.pem")))?;
        assert_eq!(
            s.mqtts,
            Some((
                "127.0.0.1:8883".into(),
                PathBuf::from("c.pem"),
                PathBuf::from("k.pem")
            ))
        );
        let s = settings(&with(Some("0.0.0.0:9883"), Some("c.pem"), Some("k.pem")))?;
        assert_eq!(s.mqtts.map(|m| m.0), Some("0.0.0.0:9883".into()));
        let refused = |args: ServeArgs| settings(&args).err().map(|e| e.to_string());
        assert_eq!(
            refused(with(Some("127.0.0.1:8883"), None, None)).as_deref(),
            Some("--mqtts-addr needs --tls-cert and --tls-key")
        );
        assert_eq!(
            refused(with(None, Some("c.pem"), None)).as_deref(),
            Some("--tls-cert and --tls-key go together")
        );
        Ok(())
    }
}
