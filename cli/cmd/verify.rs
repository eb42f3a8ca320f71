//! `verify` and `repair`: check the store, quarantine what is proven corrupt.

use anyhow::Result;
use imgstore_store::verify::VerifyReport;
use imgstore_store::{RepairOptions, Subset, VerifyOptions};

use crate::args::{Global, RepairArgs, VerifyArgs};
use crate::cmd::{Failed, UsageError};
use crate::exit;
use crate::output;
use crate::progress::Bar;

pub fn verify(g: &Global, a: &VerifyArgs) -> Result<()> {
    let subset = a
        .subset
        .as_deref()
        .map(Subset::parse)
        .transpose()
        .map_err(|e| UsageError(e.to_string()))?;
    let store = match super::open(g) {
        Ok(s) => s,
        Err(e) => return config_damage(g, e),
    };
    let opts = VerifyOptions {
        read_data: a.read_data,
        subset,
        max_duration: a.max_duration,
    };
    let report = store.verify(&opts, &Bar::new(g.quiet))?;
    if g.json {
        output::json(&report)?;
    } else {
        print_verify(&report, g.quiet)?;
    }
    outcome(&report)
}

/// A store that cannot be opened because its config is corrupt: every image
/// is affected (nothing can be read without the chunker settings), so name
/// them all from the refs, which need no config.
fn config_damage(g: &Global, err: anyhow::Error) -> Result<()> {
    let corrupt_config = matches!(
        err.downcast_ref::<imgstore_store::Error>(),
        Some(imgstore_store::Error::CorruptConfig { .. })
    );
    if !corrupt_config {
        return Err(err);
    }
    // Failing to list them must not read as "no image is affected".
    let refs = imgstore_store::ops::refs::list_refs(super::backend(g)?.as_ref(), None).map_err(|e| {
        anyhow::Error::new(e).context(format!("{err}; listing the refs it affects failed too"))
    })?;
    if g.json {
        #[derive(serde::Serialize)]
        struct R {
            clean: bool,
            problem: String,
            damaged_refs: Vec<String>,
        }
        output::json(&R {
            clean: false,
            problem: err.to_string(),
            damaged_refs: refs.iter().map(|(t, _)| t.to_string()).collect(),
        })?;
    } else if !g.quiet {
        for (t, r) in &refs {
            crate::out!("damaged {t} ({}): the store's config is corrupt", r.image);
        }
    }
    Err(err)
}

fn outcome(report: &VerifyReport) -> Result<()> {
    if report.is_clean() {
        return Ok(());
    }
    Err(Failed {
        code: exit::CORRUPT,
        message: format!(
            "store is damaged: {} problems, {} damaged images",
            report.problems.len(),
            report.damaged.len()
        ),
    }
    .into())
}

fn print_verify(r: &VerifyReport, quiet: bool) -> Result<()> {
    if !quiet {
        let mut line = format!(
            "checked {} refs, {} images, {} packs, {} segments",
            r.refs, r.images, r.packs, r.segments
        );
        if r.read_data {
            line += &format!(
                "; read {} packs ({}), {} chunks",
                r.packs_read,
                output::size(r.bytes_read),
                r.chunks_read
            );
            if let Some(s) = r.subset {
                line += &format!(" [subset {s}]");
            }
            if r.packs_left > 0 {
                line += &format!("; {} packs left for the next run (time limit)", r.packs_left);
            }
        }
        crate::out!("{line} in {:.1}s", r.seconds);
    }
    if !r.problems.is_empty() {
        crate::out!("problems:");
        let mut t = output::table(&["KIND", "FILE", "DETAIL"]);
        for p in &r.problems {
            t.add_row(vec![
                format!("{:?}", p.kind).to_lowercase(),
                p.key.clone(),
                p.detail.clone(),
            ]);
        }
        crate::out!("{t}");
    }
    if !r.damaged.is_empty() {
        crate::out!("damaged images:");
        let mut t = output::table(&["REFS", "IMAGE", "DAMAGE"]);
        for d in &r.damaged {
            t.add_row(vec![
                d.refs.join(" "),
                d.image
                    .as_ref()
                    .map(output::short_id)
                    .unwrap_or_else(|| "?".into()),
                d.damage.join("; "),
            ]);
        }
        crate::out!("{t}");
    } else if r.is_clean() && !quiet {
        crate::out!("ok: no damage found");
    }
    Ok(())
}

pub fn repair(g: &Global, a: &RepairArgs) -> Result<()> {
    let store = super::open(g)?;
    let report = store.repair(RepairOptions { dry_run: a.dry_run }, &Bar::new(g.quiet))?;
    if g.json {
        output::json(&report)?;
    } else {
        print_verify(&report.verify, g.quiet)?;
        let verb = if a.dry_run {
            "would quarantine"
        } else {
            "quarantined"
        };
        for q in &report.quarantined {
            crate::out!(
                "{verb} {} ({}): {} chunks salvaged, {} lost",
                q.pack,
                q.reason,
                q.salvaged_chunks,
                q.lost_chunks.len()
            );
            if !q.affected_refs.is_empty() {
                crate::out!(
                    "  put these images again to restore the lost chunks: {}",
                    q.affected_refs.join(" ")
                );
            }
        }
        if report.quarantined.is_empty() && !g.quiet {
            crate::out!("nothing to quarantine");
        }
    }
    // Damage repair cannot undo (lost chunks, corrupt refs or manifests)
    // still exits 4, so a cron job notices.
    outcome(&report.verify)
}
