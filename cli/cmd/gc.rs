//! `imgstore prune` and `imgstore gc`.

use anyhow::Result;
use imgstore_store::gc::GcOptions;
use imgstore_store::ops::prune::KeepPolicy;
use serde::Serialize;

use crate::args::{GcArgs, Global, PruneArgs};
use crate::output;
use crate::progress::Bar;

pub fn prune(g: &Global, a: &PruneArgs) -> Result<()> {
    for n in &a.names {
        imgstore_store::refs::check_name(n)?;
    }
    let store = super::open(g)?;
    let policy = KeepPolicy {
        last: a.keep_last,
        within: a.keep_within,
        tags: a.keep_tag.clone(),
    };
    let decisions = store.prune_plan(&a.names, &policy)?;
    if !a.dry_run {
        store.apply_prune(&decisions)?;
    }
    if g.json {
        #[derive(Serialize)]
        struct R<'a> {
            dry_run: bool,
            decisions: &'a [imgstore_store::ops::prune::PruneDecision],
        }
        return output::json(&R {
            dry_run: a.dry_run,
            decisions: &decisions,
        });
    }
    if g.quiet {
        return Ok(());
    }
    let mut t = output::table(&["ACTION", "REF", "IMAGE", "CREATED", "WHY"]);
    for d in &decisions {
        let action = match (d.keep, a.dry_run) {
            (true, _) => "keep",
            (false, true) => "would remove",
            (false, false) => "removed",
        };
        t.add_row(vec![
            action.to_string(),
            d.reference.clone(),
            output::short_id(&d.image),
            output::date(d.created),
            if d.keep {
                d.reasons.join(", ")
            } else {
                "no rule keeps it".into()
            },
        ]);
    }
    if !decisions.is_empty() {
        crate::out!("{t}");
    }
    let removed = decisions.iter().filter(|d| !d.keep).count();
    crate::out!(
        "{} {removed} of {} tags; run `imgstore gc` to free their space",
        if a.dry_run { "would remove" } else { "removed" },
        decisions.len()
    );
    Ok(())
}

pub fn gc(g: &Global, a: &GcArgs) -> Result<()> {
    let store = super::open(g)?;
    let opts = GcOptions {
        grace: a.grace,
        wait: a.wait,
        max_duration: a.max_duration,
    };
    let bar = Bar::new(g.quiet || g.json);
    let r = if a.dry_run {
        let started = std::time::Instant::now();
        let mut r = store.gc_plan(&opts, &bar)?.into_report();
        r.seconds = started.elapsed().as_secs_f64();
        r
    } else {
        store.gc(&opts, &bar)?
    };
    if g.json {
        return output::json(&r);
    }
    if g.quiet {
        return Ok(());
    }
    let verb = if r.dry_run { "would " } else { "" };
    crate::out!(
        "marked {} images ({} refs, {} pins); {verb}delete {} packs, freeing {}; {} rescued",
        r.images,
        r.refs,
        r.pins,
        r.packs_deleted,
        output::size(r.bytes_freed),
        r.packs_rescued
    );
    if r.packs_repacked > 0 {
        crate::out!(
            "{verb}repack {} packs, writing {}",
            r.packs_repacked,
            output::size(r.bytes_repacked)
        );
    }
    crate::out!(
        "{verb}condemn {} packs holding {}: a gc after {} frees them",
        r.packs_condemned,
        output::size(r.bytes_condemned),
        humantime::format_duration(a.grace)
    );
    if r.temporaries_removed > 0 {
        crate::out!(
            "{verb}remove {} temporary files left by interrupted writers, freeing {}",
            r.temporaries_removed,
            output::size(r.temporary_bytes_freed)
        );
    }
    if let Some(w) = &r.waiting {
        crate::out!("pending plan not executed yet: {w}");
    }
    crate::out!("took {:.1}s", r.seconds);
    Ok(())
}
