//! `manifold inspect`: prints what `store::inspect` finds in a data directory and exits 0 when
//! everything verifies, 1 when something does not (like `redis-check-aof`), 2 when the
//! directory cannot be read at all. Never writes to the directory.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use manifold_core::engine::{EngineFiles, inspect_files};
use manifold_core::store::image::Staged;
use manifold_core::store::inspect::InspectOptions;
use manifold_core::store::{InspectReport, RealFs, inspect};

/// Arguments of `manifold inspect`.
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The data directory.
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// Also check this topic's queue entry by entry against the log.
    #[arg(long)]
    topic: Option<String>,
    /// Database of `--topic` (Redis SELECT number).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..16))]
    db: u8,
    /// Print a digest line `index term crc32c` per entry, for comparing replicas with diff.
    #[arg(long)]
    digest: bool,
}

/// Runs the subcommand.
pub fn run(args: &InspectArgs) -> anyhow::Result<ExitCode> {
    if !args.data_dir.is_dir() {
        anyhow::bail!("{} is not a directory", args.data_dir.display());
    }
    let options = InspectOptions {
        digests: args.digest,
        topic: args
            .topic
            .as_ref()
            .map(|t| (args.db, t.as_bytes().to_vec())),
    };
    let report = inspect(Arc::new(RealFs), &args.data_dir, options)
        .with_context(|| format!("reading {}", args.data_dir.display()))?;
    let dispatched = report.derived.as_ref().map_or(0, |d| d.dispatched);
    let engine = inspect_files(&RealFs, &args.data_dir, dispatched);
    let mut out = std::io::stdout().lock();
    print(&mut out, args, &report, &engine).context("writing the report")?;
    Ok(
        if report.problems.is_empty() && engine.problems.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        },
    )
}

fn print(
    out: &mut impl Write,
    args: &InspectArgs,
    r: &InspectReport,
    engine: &EngineFiles,
) -> std::io::Result<()> {
    writeln!(out, "data directory: {}", args.data_dir.display())?;
    let shutdown = if r.unclean {
        "unclean (abort marker present, or running)"
    } else {
        "clean"
    };
    writeln!(out, "shutdown: {shutdown}")?;
    match &r.checkpoint {
        Some(c) => writeln!(
            out,
            "checkpoint: first index {}, flushed {}, map flushed {}, verify from {}",
            c.first_index, c.flushed_index, c.map_flushed_index, c.verify_from_index
        )?,
        None => writeln!(out, "checkpoint: none")?,
    }
    writeln!(out, "segments: {}", r.segments.len())?;
    for s in &r.segments {
        let range = s
            .indexes
            .map_or("-".to_string(), |(a, b)| format!("{a}..={b}"));
        let name = s
            .file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        writeln!(
            out,
            "  {name}  entries {:>10}  indexes {range}  used {} of {} bytes",
            s.entries, s.used, s.size
        )?;
    }
    match (r.first_index, r.last_index) {
        (Some(a), Some(b)) => writeln!(out, "log: {} entries, indexes {a}..={b}", b + 1 - a)?,
        _ => writeln!(out, "log: empty")?,
    }
    if let Some((file, offset)) = &r.torn_tail {
        writeln!(
            out,
            "torn tail: {} at offset {offset} (cut by the next open)",
            file.display()
        )?;
    }
    if let Some(d) = &r.derived {
        writeln!(
            out,
            "derived: dispatched to {}, {} topics ({} in their own files), {} queue entries, {} queue files, {} index files",
            d.dispatched,
            d.live_topics,
            d.migrated_topics,
            d.queue_entries,
            d.queue_files,
            d.index_files
        )?;
    }
    if let Some(check) = &r.topic {
        let name = args.topic.as_deref().unwrap_or_default();
        match &check.topic {
            Some(t) => writeln!(
                out,
                "topic {name} (db {}): id {}, incarnation {}, {} entries ({} trimmed), last ID {}, {} queue entries checked against {} log messages",
                t.db,
                t.id,
                t.incarnation,
                t.len,
                t.first_live,
                t.last_id,
                check.queue_entries,
                check.log_messages
            )?,
            None => writeln!(
                out,
                "topic {name} (db {}): not found at the last dispatch checkpoint",
                args.db
            )?,
        }
    }
    let mut snapshot = match engine.snapshot {
        Some((index, retained, producers, groups)) => format!(
            "snapshot at {index}: {retained} retained messages, {producers} producers, \
             {groups} consumer groups"
        ),
        None => "no snapshot (empty state)".to_string(),
    };
    if let Some((upto, entries)) = engine.journal {
        snapshot.push_str(&format!(", journal to {upto}: {entries} entries"));
    }
    writeln!(
        out,
        "engine: term {}, voted for {}, clock bound {}, {snapshot}",
        engine.hard_state.term, engine.hard_state.voted_for, engine.clock_bound
    )?;
    let node = engine.identity.map_or_else(
        || "no identity".to_string(),
        |id| format!("node {}, incarnation {:016x}", id.node, id.incarnation),
    );
    writeln!(out, "directory: {node}")?;
    for c in &engine.members {
        writeln!(
            out,
            "members at index {} (term {}): {}",
            c.index, c.term, c.members
        )?;
    }
    match &engine.staged {
        Staged::Nothing => {}
        Staged::Unfinished => writeln!(
            out,
            "staged image: an unfinished transfer (removed at the next start)"
        )?,
        Staged::Image(m) => writeln!(
            out,
            "staged image: entries {}..={} (dispatch point {}), {} files, {} bytes; installed \
             at the next start in place of what is above",
            m.first_index,
            m.last_index,
            m.dispatched,
            m.files.len(),
            m.data_bytes()
        )?,
    }
    if args.digest {
        for d in &r.digests {
            writeln!(out, "{} {} {:08x}", d.index, d.term, d.crc)?;
        }
    }
    if r.problems.is_empty() && engine.problems.is_empty() {
        writeln!(out, "problems: none")?;
    } else {
        writeln!(
            out,
            "problems: {}",
            r.problems.len() + engine.problems.len()
        )?;
        for p in &engine.problems {
            writeln!(out, "  {p}")?;
        }
        for p in &r.problems {
            writeln!(
                out,
                "  {} at offset {}: {}",
                p.file.display(),
                p.offset,
                p.reason
            )?;
        }
    }
    Ok(())
}
