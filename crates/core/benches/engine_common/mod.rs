//! What the engine benchmarks share: an engine on the real disk with 256 MiB segments (the
//! next one ready before timing starts), a runtime, a 100-byte message, and a filler.
#![allow(dead_code)] // each benchmark uses part of this

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use manifold_core::engine::{AppendRequest, Engine, EngineConfig};
use manifold_core::store::{LogConfig, RealFs, StoreConfig};

pub fn open_engine(dir: &std::path::Path) -> Arc<Engine> {
    let config = EngineConfig {
        store: StoreConfig {
            log: LogConfig {
                segment_size: 256 << 20,
                ..LogConfig::default()
            },
            ..StoreConfig::default()
        },
        ..EngineConfig::default()
    };
    let engine = Arc::new(Engine::open(Arc::new(RealFs), dir, config).expect("open"));
    while !engine.store().log().next_segment_ready() {
        std::thread::sleep(Duration::from_millis(5));
    }
    engine
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime")
}

pub fn request(key: &'static str) -> AppendRequest {
    AppendRequest::new(
        0,
        Bytes::from_static(key.as_bytes()),
        vec![(Bytes::from_static(b"payload"), Bytes::from(vec![b'x'; 100]))],
    )
}

/// Appends `n` messages with 800 in flight.
pub async fn fill(engine: &Arc<Engine>, request: &AppendRequest, n: u64) {
    let tasks = 800u64;
    let mut handles = Vec::new();
    for t in 0..tasks {
        let engine = engine.clone();
        let request = request.clone();
        let mine = n / tasks + u64::from(t < n % tasks);
        handles.push(tokio::spawn(async move {
            for _ in 0..mine {
                engine.append(request.clone()).await.expect("append");
            }
        }));
    }
    for h in handles {
        h.await.expect("task");
    }
}
