//! Store administration: init, index, completions, man.

use std::io::Write;
use std::path::Path;

use anyhow::Result;
use clap::CommandFactory;
use imgstore_store::{InitOptions, Store};
use serde::Serialize;

use crate::args::{Cli, CompletionsArgs, Global, IndexCommand, InitArgs};
use crate::cmd::UsageError;
use crate::output;

pub fn init(g: &Global, a: &InitArgs) -> Result<()> {
    let location = match &a.dir {
        Some(d) => d.clone(),
        None => super::store_location(g)?,
    };
    let avg = u32::try_from(a.chunk_size.as_u64())
        .ok()
        .filter(|n| n.is_power_of_two() && (1024..=1 << 20).contains(n))
        .ok_or_else(|| {
            UsageError(format!(
                "--chunk-size {} is not a power of two from 1KiB to 1MiB",
                a.chunk_size
            ))
        })?;
    let opts = InitOptions {
        avg_chunk: avg,
        zstd_level: a.zstd_level,
        shared: a.shared,
    };
    let store = if imgstore_store::backend::is_url(&location) {
        Store::init_with(super::backend_at(g, &location)?, opts, g.index_dir.clone())?
    } else {
        Store::init(Path::new(&location), opts, g.index_dir.clone())?
    };
    if g.json {
        return output::json(store.config());
    }
    if !g.quiet {
        let c = store.config();
        crate::out!(
            "initialized store {} at {} (chunks {}/{}/{} min/avg/max, zstd level {})",
            c.store_id,
            location,
            output::size(c.chunker.min.into()),
            output::size(c.chunker.avg.into()),
            output::size(c.chunker.max.into()),
            c.compression.zstd_level
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct IndexReport {
    index_dir: String,
    segments_applied: usize,
    chunks_written: usize,
}

pub fn index(g: &Global, c: &IndexCommand) -> Result<()> {
    let store = super::open(g)?;
    let done = match c {
        IndexCommand::Rebuild => store.index_rebuild()?,
        IndexCommand::Status => store.index_catch_up()?,
    };
    let report = IndexReport {
        index_dir: store.index_dir().display().to_string(),
        segments_applied: done.segments,
        chunks_written: done.chunks,
    };
    if g.json {
        return output::json(&report);
    }
    if !g.quiet {
        crate::out!(
            "index at {}: {} segments applied, {} chunk locations written",
            report.index_dir,
            report.segments_applied,
            report.chunks_written
        );
    }
    Ok(())
}

pub fn completions(a: &CompletionsArgs) -> Result<()> {
    clap_complete::generate(a.shell, &mut Cli::command(), "imgstore", &mut std::io::stdout());
    Ok(())
}

pub fn man() -> Result<()> {
    let mut buf = Vec::new();
    clap_mangen::Man::new(Cli::command()).render(&mut buf)?;
    std::io::stdout().write_all(&buf)?;
    Ok(())
}
