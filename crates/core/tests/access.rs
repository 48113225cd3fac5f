//! Access control through the engine's client handle: principals authenticate, publish and
//! subscribe patterns decide every read and write, listings show only what may be read, and a
//! refused operation changes nothing.

mod support;

use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use manifold_core::engine::{
    AccessConfig, AppendRequest, Client, DEFAULT_PRINCIPAL, Engine, EngineConfig, EngineError,
    GroupStart, IdSpec, PrincipalConfig, ReadFrom, RetainEffect, Trim,
};
use manifold_core::store::{SimDisk, StreamId};

fn principal(
    name: &str,
    secret: Option<&str>,
    publish: &[&str],
    subscribe: &[&str],
) -> PrincipalConfig {
    PrincipalConfig {
        name: name.into(),
        secret: secret.map(String::from),
        publish: publish.iter().map(|s| s.to_string()).collect(),
        subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
    }
}

/// Small files: the simulated disk holds every byte in memory.
fn small() -> EngineConfig {
    // No checkpoint after every batch here: nothing restarts.
    let mut c = support::small_config();
    c.store.dispatch_checkpoint_interval_ms = EngineConfig::default()
        .store
        .dispatch_checkpoint_interval_ms;
    c
}

fn req(key: &str) -> AppendRequest {
    AppendRequest {
        db: 0,
        key: Bytes::copy_from_slice(key.as_bytes()),
        id: IdSpec::Auto,
        fields: vec![(Bytes::from_static(b"v"), Bytes::from_static(b"1"))],
        properties: Vec::new(),
        message_key: Bytes::new(),
        nomkstream: false,
        trim: None,
        retain: RetainEffect::Set,
        producer: None,
    }
}

fn refused<T: std::fmt::Debug>(r: Result<T, EngineError>, publish: bool) {
    assert!(
        matches!(r, Err(EngineError::NoPermission { publish: p, .. }) if p == publish),
        "expected a refusal, got {r:?}"
    );
}

#[test]
fn principals_may_do_what_their_patterns_allow_and_nothing_else() -> Result<(), EngineError> {
    let config = EngineConfig {
        access: AccessConfig {
            principals: vec![
                principal("sensor", Some("pw1"), &["sensors/*"], &[]),
                principal("dashboard", Some("pw2"), &[], &["sensors/*", "alerts"]),
                principal(DEFAULT_PRINCIPAL, None, &[], &["public/*"]),
            ],
        },
        ..small()
    };
    let engine = Arc::new(Engine::open(
        Arc::new(SimDisk::new()),
        &PathBuf::from("/data"),
        config,
    )?);
    assert!(matches!(
        engine.authenticate(b"sensor", b"nope"),
        Err(EngineError::BadCredentials)
    ));
    assert!(matches!(
        engine.authenticate(b"ghost", b"pw1"),
        Err(EngineError::BadCredentials)
    ));
    let sensor = Client::new(engine.clone(), engine.authenticate(b"sensor", b"pw1")?);
    let dashboard = Client::new(engine.clone(), engine.authenticate(b"dashboard", b"pw2")?);
    let anonymous = Client::new(engine.clone(), engine.anonymous()?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    rt.block_on(async {
        sensor.append(req("sensors/1")).await?;
        engine.append(req("alerts")).await?; // the engine itself is not a principal
        engine.append(req("public/news")).await?;
        // Writes outside the patterns are refused and change nothing.
        refused(sensor.append(req("alerts")).await, true);
        refused(dashboard.append(req("sensors/1")).await, true);
        refused(anonymous.append(req("public/news")).await, true);
        refused(
            sensor
                .delete(0, Bytes::from_static(b"alerts"), vec![StreamId::new(1, 0)])
                .await,
            true,
        );
        refused(
            sensor
                .trim(0, Bytes::from_static(b"alerts"), Trim::max_len(0))
                .await,
            true,
        );
        refused(
            sensor.drop_topic(0, Bytes::from_static(b"alerts")).await,
            true,
        );
        assert_eq!(engine.len(0, b"alerts"), 1);
        assert_eq!(engine.len(0, b"sensors/1"), 1);
        // Reads.
        let all = |c: &Client, key: &str| {
            c.read_range(
                0,
                key.as_bytes(),
                Bound::Unbounded,
                Bound::Unbounded,
                None,
                false,
            )
        };
        assert_eq!(all(&dashboard, "sensors/1")?.len(), 1);
        assert_eq!(all(&dashboard, "alerts")?.len(), 1);
        refused(all(&sensor, "sensors/1"), false);
        refused(all(&anonymous, "alerts"), false);
        assert_eq!(all(&anonymous, "public/news")?.len(), 1);
        refused(dashboard.stream_info(0, b"public/news"), false);
        refused(dashboard.len(0, b"public/news"), false);
        refused(
            dashboard
                .wait(
                    &[(0, Bytes::from_static(b"public/news"))],
                    0,
                    Duration::from_millis(1),
                )
                .await,
            false,
        );
        // Listings show only what may be read.
        let mut seen = dashboard.topics(0, b"*");
        seen.sort();
        assert_eq!(
            seen,
            [
                Bytes::from_static(b"alerts"),
                Bytes::from_static(b"sensors/1")
            ]
        );
        assert_eq!(
            anonymous.topics_matching(b"#")?,
            [Bytes::from_static(b"public/news")]
        );
        let retained: Vec<Bytes> = anonymous
            .retained(b"#")?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(retained, [Bytes::from_static(b"public/news")]);
        refused(anonymous.retained_of(0, b"alerts"), false);
        // Consumer groups are subscriptions; MKSTREAM also creates the stream.
        dashboard
            .group_create(
                0,
                Bytes::from_static(b"alerts"),
                Bytes::from_static(b"g"),
                GroupStart::Id(StreamId::default()),
                false,
                None,
            )
            .await?;
        refused(
            dashboard
                .group_create(
                    0,
                    Bytes::from_static(b"sensors/new"),
                    Bytes::from_static(b"g"),
                    GroupStart::Last,
                    true,
                    None,
                )
                .await,
            true,
        );
        refused(
            sensor
                .read_group(
                    0,
                    Bytes::from_static(b"g"),
                    Bytes::from_static(b"c"),
                    vec![(Bytes::from_static(b"alerts"), ReadFrom::New)],
                    0,
                    false,
                )
                .await,
            false,
        );
        let got = dashboard
            .read_group(
                0,
                Bytes::from_static(b"g"),
                Bytes::from_static(b"c"),
                vec![(Bytes::from_static(b"alerts"), ReadFrom::New)],
                0,
                false,
            )
            .await?;
        assert_eq!(got[0].1.len(), 1);
        refused(sensor.pending_summary(0, b"alerts", b"g"), false);
        refused(
            sensor
                .ack(
                    0,
                    Bytes::from_static(b"alerts"),
                    Bytes::from_static(b"g"),
                    vec![got[0].1[0].id],
                )
                .await,
            false,
        );
        assert_eq!(dashboard.pending_summary(0, b"alerts", b"g")?.count, 1);
        // A session subscribed to everything receives only what its principal may read.
        let client = Bytes::from_static(b"anon-device");
        anonymous
            .session_open(client.clone(), false, 60, None)
            .await?;
        anonymous
            .session_subscribe(
                client.clone(),
                vec![(Bytes::from_static(b"#"), Default::default())],
            )
            .await?;
        engine.append(req("public/later")).await?;
        engine.append(req("alerts")).await?;
        let read = anonymous.session_pending(&client, 100)?;
        let topics: Vec<&[u8]> = read.messages.iter().map(|m| m.topic.as_ref()).collect();
        assert_eq!(topics, [b"public/later".as_slice()]);
        let by_filter = anonymous.read_filters(&[b"#"], 0, 100)?;
        assert!(by_filter.iter().all(|m| m.topic.starts_with(b"public/")));
        // A shared group over `#`: this member gets only what it may read; the rest is
        // acknowledged for it, never left pending.
        let (g, f) = (Bytes::from_static(b"g"), Bytes::from_static(b"#"));
        anonymous.filter_group_join(g.clone(), f.clone()).await?;
        engine.append(req("public/shared")).await?;
        engine.append(req("alerts")).await?;
        let got = anonymous
            .filter_group_read(g.clone(), f.clone(), Bytes::from_static(b"m"), 10, false)
            .await?;
        let topics: Vec<&[u8]> = got.iter().map(|d| d.topic.as_ref()).collect();
        assert_eq!(topics, [b"public/shared".as_slice()]);
        let group = engine.filter_group(&g, &f).expect("group");
        assert_eq!(
            group.pel.len(),
            1,
            "the unreadable message was acknowledged"
        );
        Ok::<_, EngineError>(())
    })?;
    // Without a `default` principal, unauthenticated connections may do nothing.
    let closed = Engine::open(
        Arc::new(SimDisk::new()),
        &PathBuf::from("/data"),
        EngineConfig {
            access: AccessConfig {
                principals: vec![principal("admin", Some("x"), &["*"], &["*"])],
            },
            ..small()
        },
    )?;
    assert!(matches!(
        closed.anonymous(),
        Err(EngineError::BadCredentials)
    ));
    Ok(())
}
