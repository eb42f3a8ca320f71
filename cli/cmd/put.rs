//! `imgstore put`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use imgstore_store::{Input, PutOptions, TagRef};

use crate::args::{Global, PutArgs};
use crate::output;
use crate::progress::Bar;

pub fn run(g: &Global, a: &PutArgs) -> Result<()> {
    // Everything the user gave is checked before the store is touched.
    let reference = TagRef::parse(&a.reference)?;
    let deffile = match &a.deffile {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| imgstore_store::Error::io(p, e))
                .context("reading --deffile")?,
        ),
        None => None,
    };
    let labels: BTreeMap<String, String> = a.labels.iter().cloned().collect();
    let input = if a.file == Path::new("-") {
        Input::Stream(Box::new(std::io::stdin()))
    } else {
        Input::File(a.file.clone())
    };
    let store = super::open(g)?;
    let opts = PutOptions {
        message: a.message.clone(),
        labels,
        deffile,
    };
    let report = store.put(&reference, input, &opts, &Bar::new(g.quiet || g.json))?;
    if g.json {
        return output::json(&report);
    }
    if !g.quiet {
        crate::out!(
            "stored {} image {} as {}, added {} ({} new chunks, {} before compression)",
            output::size(report.size),
            report.reference,
            report.image,
            output::size(report.added.stored_bytes),
            report.added.chunks,
            output::size(report.added.raw_bytes),
        );
        if let Some(prev) = report.replaced {
            crate::out!("{} previously named {prev}", report.reference);
        }
    }
    Ok(())
}
