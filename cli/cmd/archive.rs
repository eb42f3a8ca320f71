//! `imgstore archive`: old SIF images to the archive tier, by name or by a
//! policy run from cron.

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::Result;
use imgstore_store::archive::{ArchivePolicy, ArchiveReport, Picked};
use imgstore_store::{ImageId, ImageRef};
use serde::Serialize;

use super::UsageError;
use crate::args::{ArchiveArgs, Global};
use crate::output;
use crate::progress::Bar;

pub fn run(g: &Global, a: &ArchiveArgs) -> Result<()> {
    let policy = a.keep_hot.is_some() || a.older_than.is_some();
    if !policy && a.targets.is_empty() {
        return Err(UsageError(
            "give images to archive (REF...), or a policy: --keep-hot N and/or --older-than DURATION".into(),
        )
        .into());
    }
    let store = Arc::new(super::open(g)?);
    // The images, in order, each with the ref the user knows it by.
    let picked: Vec<(String, ImageId, u64)> = if policy {
        for n in &a.targets {
            imgstore_store::refs::check_name(n)?;
        }
        let p = ArchivePolicy {
            keep_hot: a.keep_hot.unwrap_or(0),
            older_than: a.older_than,
        };
        store
            .archive_plan(&a.targets, &p)?
            .into_iter()
            .map(|p: Picked| {
                (
                    p.refs.first().cloned().unwrap_or_else(|| p.image.to_string()),
                    p.image,
                    p.size,
                )
            })
            .collect()
    } else {
        let mut v = Vec::new();
        for t in &a.targets {
            let r = store.resolve(&ImageRef::parse(t)?)?;
            let size = store.manifest_file(&r.id)?.head.size;
            v.push((t.clone(), r.id, size));
        }
        v
    };
    if a.dry_run {
        return dry_run(g, &picked);
    }
    let going: HashSet<ImageId> = picked.iter().map(|(_, id, _)| *id).collect();
    let bar = Bar::new(g.quiet || g.json);
    // What archiving saves: the live chunks' stored bytes before and after
    // (the report view is brought up to date each time).
    let live = || -> Result<(u64, u64)> {
        let s = store.snapshot(&bar)?.stats()?;
        Ok((s.live_stored_bytes, s.unreferenced_bytes + s.condemned_bytes))
    };
    let (before, _) = live()?;
    let mut reports = Vec::new();
    for (name, id, _) in &picked {
        let r = store.archive(&ImageRef::Id(id.0.to_hex()), &going, &bar)?;
        if !g.json && !g.quiet {
            say(name, &r)?;
        }
        reports.push(r);
    }
    let (after, garbage) = live()?;
    if g.json {
        #[derive(Serialize)]
        struct R<'a> {
            images: &'a [ArchiveReport],
            /// Stored bytes of the chunks live images hold, before the run.
            live_stored_bytes_before: u64,
            /// And after it.
            live_stored_bytes_after: u64,
            /// Stored bytes waiting for gc after the run (the old forms' chunks among them).
            garbage_bytes: u64,
        }
        return output::json(&R {
            images: &reports,
            live_stored_bytes_before: before,
            live_stored_bytes_after: after,
            garbage_bytes: garbage,
        });
    }
    if !g.quiet && reports.iter().any(|r| r.tier == "archive" && !r.already) {
        crate::out!(
            "live chunks: {} stored before, {} now ({:+.1}%); {} waits for gc, which frees the old forms' chunks \
             (those in packs with mostly live chunks stay until gc repacks them)",
            output::size(before),
            output::size(after),
            100.0 * (after as f64 - before as f64) / (before as f64).max(1.0),
            output::size(garbage),
        );
    }
    Ok(())
}

fn dry_run(g: &Global, picked: &[(String, ImageId, u64)]) -> Result<()> {
    if g.json {
        #[derive(Serialize)]
        struct Row<'a> {
            reference: &'a str,
            image: ImageId,
            size: u64,
        }
        let rows: Vec<Row> = picked
            .iter()
            .map(|(r, image, size)| Row {
                reference: r,
                image: *image,
                size: *size,
            })
            .collect();
        return output::json(&rows);
    }
    if picked.is_empty() {
        crate::out!("nothing to archive");
        return Ok(());
    }
    let mut t = output::table(&["WOULD ARCHIVE", "IMAGE", "SIZE"]);
    for (r, image, size) in picked {
        t.add_row(vec![r.clone(), output::short_id(image), output::size(*size)]);
    }
    crate::out!("{t}");
    Ok(())
}

fn say(name: &str, r: &ArchiveReport) -> Result<()> {
    if r.already {
        crate::out!("{name}: already archived");
        return Ok(());
    }
    if let Some(why) = &r.reason {
        crate::out!("{name}: stays in the byte tier: {why}");
        return Ok(());
    }
    let mib_s = r.size as f64 / (1 << 20) as f64 / r.rebuild_seconds.max(1e-9);
    crate::out!(
        "{name}: archived {} ({} of {} compressed blocks inflated, {} shared with hot images, {} not reproduced by zlib -9); \
         stream {}, {} new in the store; rebuild check {:.1} s ({mib_s:.0} MiB/s), {:.1} s in all",
        output::size(r.size),
        r.inflated_blocks,
        r.compressed_blocks,
        r.shared_blocks,
        r.other_blocks,
        output::size(r.stream_size),
        output::size(r.added.stored_bytes),
        r.rebuild_seconds,
        r.seconds,
    );
    Ok(())
}
