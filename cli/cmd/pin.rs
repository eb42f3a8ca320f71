//! `imgstore pin`, `unpin` and `ls --pins`: images kept whatever happens
//! to their tags.

use std::collections::BTreeMap;

use anyhow::Result;
use imgstore_store::pins::PinRecord;
use imgstore_store::{ImageId, ImageRef, Store};
use serde::Serialize;

use crate::args::{Global, PinArgs, RefArg};
use crate::output;

pub fn pin(g: &Global, a: &PinArgs) -> Result<()> {
    let image = ImageRef::parse(&a.reference)?;
    let store = super::open(g)?;
    let p = store.pin(&image, &a.reason)?;
    if g.json {
        return output::json(&p);
    }
    if !g.quiet {
        crate::out!("pinned {} ({}): {}", p.image, output::size(p.size), p.reason);
    }
    Ok(())
}

pub fn unpin(g: &Global, a: &RefArg) -> Result<()> {
    let image = ImageRef::parse(&a.reference)?;
    let store = super::open(g)?;
    let p = store.unpin(&image)?;
    if g.json {
        return output::json(&p);
    }
    if !g.quiet {
        crate::out!(
            "unpinned {} (was: {}); its data stays until no tag needs it and gc runs",
            p.image,
            p.reason
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct PinRow {
    #[serde(flatten)]
    pin: PinRecord,
    /// Tags that name the image now.
    tags: Vec<String>,
}

/// `ls --pins`: every pin, with the tags that name its image now.
pub fn list(g: &Global, store: &Store) -> Result<()> {
    let mut tags: BTreeMap<ImageId, Vec<String>> = BTreeMap::new();
    for (t, r) in store.refs(None)? {
        tags.entry(r.image).or_default().push(t.to_string());
    }
    let rows: Vec<PinRow> = store
        .pins()?
        .into_iter()
        .map(|pin| PinRow {
            tags: tags.remove(&pin.image).unwrap_or_default(),
            pin,
        })
        .collect();
    if g.json {
        #[derive(Serialize)]
        struct R {
            pins: Vec<PinRow>,
        }
        return output::json(&R { pins: rows });
    }
    let mut t = output::table(&["IMAGE", "SIZE", "PINNED", "BY", "TAGS", "REASON"]);
    for r in &rows {
        t.add_row(vec![
            output::short_id(&r.pin.image),
            output::size(r.pin.size),
            output::date(r.pin.created),
            format!("{}@{}", r.pin.user, r.pin.host),
            if r.tags.is_empty() {
                "-".into()
            } else {
                r.tags.join(" ")
            },
            r.pin.reason.clone(),
        ]);
    }
    if !rows.is_empty() {
        crate::out!("{t}");
    } else if !g.quiet {
        eprintln!("no pins");
    }
    Ok(())
}
