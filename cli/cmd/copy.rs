//! `imgstore copy`.

use anyhow::Result;
use imgstore_store::Store;

use crate::args::{CopyArgs, Global};
use crate::output;
use crate::progress::Bar;

pub fn run(g: &Global, a: &CopyArgs) -> Result<()> {
    let dest = super::open(g)?;
    let src = Store::open_with(super::backend_at(g, &a.from)?, None)?;
    if src.config().store_id == dest.config().store_id {
        return Err(super::UsageError(format!(
            "{} and {} are the same store (id {})",
            a.from,
            dest.location(),
            dest.config().store_id
        ))
        .into());
    }
    let report = dest.copy_from(&src, &a.refs, a.dry_run, &Bar::new(g.quiet || g.json))?;
    if g.json {
        return output::json(&report);
    }
    if g.quiet {
        return Ok(());
    }
    let mut table = output::table(&[
        "REF",
        "IMAGE",
        "SIZE",
        "STATUS",
        "NEW CHUNKS",
        "NEW BYTES",
        "STORED",
    ]);
    for r in &report.refs {
        table.add_row(vec![
            r.reference.clone(),
            output::short_id(&r.image),
            output::size(r.size),
            r.status.to_string(),
            r.new_chunks.map_or("-".into(), |n| n.to_string()),
            r.new_bytes.map_or("-".into(), output::size),
            r.stored_bytes.map_or("-".into(), output::size),
        ]);
    }
    crate::out!("{table}");
    let copied = report.refs.iter().filter(|r| r.status != "present").count();
    let (verb, bytes) = if report.dry_run {
        (
            "would copy",
            report
                .refs
                .iter()
                .filter(|r| r.status != "present")
                .map(|r| r.size)
                .sum(),
        )
    } else {
        ("copied", report.refs.iter().filter_map(|r| r.stored_bytes).sum())
    };
    let what = if report.dry_run {
        "image bytes to cut again"
    } else {
        "stored"
    };
    crate::out!(
        "{} refs from {} to {}: {verb} {copied} ({} {what}) in {:.1}s",
        report.refs.len(),
        a.from,
        dest.location(),
        output::size(bytes),
        report.seconds
    );
    for p in &report.pins {
        crate::out!(
            "pin of {} ({}): {}",
            output::short_id(&p.image),
            p.reason,
            p.status
        );
    }
    Ok(())
}
