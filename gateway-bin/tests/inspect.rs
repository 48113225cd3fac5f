//! `manifold inspect` as a user runs it: a real process on a real data directory.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use manifold_core::store::{
    EntryKind, MessageStore, NewEntry, RealFs, RecordOp, StoreConfig, StreamId, SubRecord,
};

fn build(dir: &Path, messages: u64) -> anyhow::Result<()> {
    let mut config = StoreConfig::default();
    config.log.segment_size = 1 << 20;
    config.log.index_records_per_file = 1024;
    let store = MessageStore::open(Arc::new(RealFs), dir, config)?;
    for i in 1..=messages {
        let e = NewEntry {
            term: 1,
            kind: EntryKind::Command,
            timestamp_ms: i,
            command: Bytes::new(),
            records: vec![SubRecord {
                op: RecordOp::Message,
                db: 0,
                topic: Bytes::from(format!("sensor/{}", i % 2)),
                id: StreamId::new(i, 0),
                message_key: Bytes::new(),
                properties: Vec::new(),
                fields: vec![(Bytes::from_static(b"payload"), Bytes::from(vec![b'x'; 200]))],
            }],
        };
        store.log().append(&e)?.wait()?;
    }
    store.dispatch_to(messages)?;
    store.close()?;
    Ok(())
}

fn inspect(dir: &Path, extra: &[&str]) -> anyhow::Result<(i32, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_manifold"))
        .arg("inspect")
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .output()
        .context("run manifold inspect")?;
    let code = out.status.code().context("killed by a signal")?;
    Ok((code, String::from_utf8_lossy(&out.stdout).into_owned()))
}

#[test]
fn a_sound_directory_exits_zero_with_a_summary_and_digests() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    build(dir.path(), 6000)?;
    let (code, out) = inspect(dir.path(), &["--topic", "sensor/1", "--digest"])?;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("shutdown: clean"), "{out}");
    assert!(out.contains("log: 6000 entries, indexes 1..=6000"), "{out}");
    assert!(
        out.contains("3000 queue entries checked against 3000 log messages"),
        "{out}"
    );
    assert!(out.contains("problems: none"), "{out}");
    let digests: Vec<&str> = out
        .lines()
        .filter(|l| {
            let parts: Vec<&str> = l.split(' ').collect();
            parts.len() == 3
                && parts[0].parse::<u64>().is_ok()
                && parts[1] == "1"
                && parts[2].len() == 8
                && u32::from_str_radix(parts[2], 16).is_ok()
        })
        .collect();
    assert_eq!(digests.len(), 6000, "one digest line per entry");
    assert!(digests[0].starts_with("1 1 ") && digests[5999].starts_with("6000 1 "));
    Ok(())
}

#[test]
fn corruption_exits_one_naming_file_and_offset() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    build(dir.path(), 100)?;
    let seg = dir.path().join("commitlog").join("00000000000000000000");
    let mut bytes = std::fs::read(&seg)?;
    bytes[64 + 300] ^= 0xff; // inside the second record
    std::fs::write(&seg, &bytes)?;
    let (code, out) = inspect(dir.path(), &[])?;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("00000000000000000000 at offset"), "{out}");
    assert!(out.contains("crc mismatch"), "{out}");
    Ok(())
}

#[test]
fn a_missing_directory_exits_two() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (code, _) = inspect(&dir.path().join("nope"), &[])?;
    assert_eq!(code, 2);
    Ok(())
}

#[test]
fn engine_files_are_reported_and_a_damaged_snapshot_exits_one() -> anyhow::Result<()> {
    use manifold_core::engine::{AppendRequest, Engine, EngineConfig, IdSpec, RetainEffect};
    let dir = tempfile::tempdir()?;
    let mut config = EngineConfig::default();
    config.store.log.segment_size = 1 << 20;
    config.store.log.index_records_per_file = 1024;
    let engine = Engine::open(Arc::new(RealFs), dir.path(), config)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(engine.append(AppendRequest {
        db: 0,
        key: Bytes::from_static(b"home/temp"),
        id: IdSpec::Auto,
        fields: vec![(Bytes::from_static(b"payload"), Bytes::from_static(b"21.5"))],
        properties: Vec::new(),
        message_key: Bytes::new(),
        nomkstream: false,
        trim: None,
        retain: RetainEffect::Set,
        producer: Some((Bytes::from_static(b"p"), 1)),
    }))?;
    engine.close()?;
    let (code, out) = inspect(dir.path(), &[])?;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("engine: term 1, voted for 1, clock bound 0, snapshot at 2: 1 retained messages, 1 producers, 0 consumer groups"),
        "{out}"
    );
    // One byte of the snapshot body flipped.
    let snapshot = dir
        .path()
        .join(manifold_core::engine::SNAPSHOT_DIR)
        .join(format!("{:020}", 2));
    let mut bytes = std::fs::read(&snapshot)?;
    bytes[30] ^= 0xff;
    std::fs::write(&snapshot, bytes)?;
    let (code, out) = inspect(dir.path(), &[])?;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("snapshot does not verify"), "{out}");
    Ok(())
}

#[test]
fn a_staged_image_is_reported_and_a_damaged_manifest_exits_one() -> anyhow::Result<()> {
    use manifold_core::store::image::{ImageFile, Installer, Manifest};
    let dir = tempfile::tempdir()?;
    build(dir.path(), 100)?;
    let manifest = Manifest {
        first_index: 40,
        first_term: 1,
        last_index: 90,
        last_term: 1,
        dispatched: 80,
        files: vec![ImageFile {
            path: "dispatch".into(),
            len: 128,
            data_len: 128,
        }],
    };
    let mut installer = Installer::begin(Arc::new(RealFs), dir.path(), manifest.clone())?;
    installer.write(0, 0, &[7; 128])?;
    let (code, out) = inspect(dir.path(), &[])?;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("staged image: an unfinished transfer"),
        "{out}"
    );
    installer.finish()?;
    let (code, out) = inspect(dir.path(), &[])?;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("staged image: entries 40..=90 (dispatch point 80), 1 files, 128 bytes"),
        "{out}"
    );
    // Inspect changed nothing: the image is still staged.
    assert!(dir.path().join("install/manifest").exists());
    std::fs::write(dir.path().join("install/manifest"), b"not a manifest")?;
    let (code, out) = inspect(dir.path(), &[])?;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("install manifest does not verify"), "{out}");
    Ok(())
}
