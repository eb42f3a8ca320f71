//! `imgstore get`.

use std::path::Path;

use anyhow::Result;
use imgstore_store::{ImageRef, Output, Store};

use crate::args::{GetArgs, Global};
use crate::output;
use crate::progress::Bar;

pub fn run(g: &Global, a: &GetArgs) -> Result<()> {
    if let Some(lock) = &a.lock {
        return super::export::get_locked(g, a, lock);
    }
    let reference = a.reference.as_deref().expect("clap requires REF or --lock");
    let image = ImageRef::parse(reference)?;
    let store = super::open(g)?;
    get_image(g, &store, a, &image)
}

/// Writes `image` of `store` where `a` says.
pub fn get_image(g: &Global, store: &Store, a: &GetArgs, image: &ImageRef) -> Result<()> {
    let to_stdout = a.output == Path::new("-");
    let out = if to_stdout {
        Output::Stream(Box::new(std::io::BufWriter::with_capacity(
            1 << 20,
            std::io::stdout(),
        )))
    } else {
        Output::File(a.output.clone())
    };
    let report = store.get(image, out, &Bar::new(g.quiet || g.json))?;
    // With -o - stdout carries the image, so the summary goes to stderr.
    if g.json && !to_stdout {
        return output::json(&report);
    }
    if !g.quiet {
        let line = format!(
            "wrote {} image {} to {} ({:.0} MiB/s)",
            output::size(report.size),
            report.image,
            a.output.display(),
            report.size as f64 / (1 << 20) as f64 / report.seconds.max(1e-9)
        );
        if to_stdout {
            eprintln!("{line}");
        } else {
            crate::out!("{line}");
        }
    }
    Ok(())
}
