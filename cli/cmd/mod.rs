//! One module per group of subcommands; each turns parsed arguments into
//! library calls and output.

mod admin;
mod demo;
mod gc;
mod get;
mod html;
mod put;
mod query;
mod report;
mod verify;

use std::path::PathBuf;

use anyhow::Result;
use imgstore_store::Store;

use crate::args::{Cli, Command, Global};

/// A mistake in how the command was called, found after parsing.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// The command ran and reported what it found, which calls for a non-zero
/// exit (e.g. `verify` found damage): `main` prints the message, no hint.
#[derive(Debug)]
pub struct Failed {
    /// Exit code.
    pub code: i32,
    /// One line for stderr.
    pub message: String,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failed {}

/// Runs one command.
pub fn run(cli: Cli) -> Result<()> {
    let g = &cli.global;
    match &cli.command {
        Command::Init(a) => admin::init(g, a),
        Command::Put(a) => put::run(g, a),
        Command::Get(a) => get::run(g, a),
        Command::Ls(a) => query::ls(g, a),
        Command::Inspect(a) => query::inspect(g, a),
        Command::Deffile(a) => query::deffile(g, a),
        Command::Tag(a) => query::tag(g, a),
        Command::Rm(a) => query::rm(g, a),
        Command::Log(a) => query::log(g, a),
        Command::Prune(a) => gc::prune(g, a),
        Command::Gc(a) => gc::gc(g, a),
        Command::Verify(a) => verify::verify(g, a),
        Command::Repair(a) => verify::repair(g, a),
        Command::Stats => report::stats(g),
        Command::Du(a) => report::du(g, a),
        Command::History(a) => report::history(g, a),
        Command::Diff(a) => report::diff(g, a),
        Command::Report(a) => report::report(g, a),
        Command::Index(a) => admin::index(g, a),
        Command::Completions(a) => admin::completions(a),
        Command::Man => admin::man(),
        Command::Demo(a) => demo::run(g, a),
    }
}

/// The store directory from --store / IMGSTORE_STORE.
fn store_dir(g: &Global) -> Result<PathBuf> {
    g.store
        .clone()
        .ok_or_else(|| UsageError("no store given: use --store DIR or set IMGSTORE_STORE".into()).into())
}

/// Opens the store the global options name.
fn open(g: &Global) -> Result<Store> {
    Ok(Store::open(&store_dir(g)?, g.index_dir.clone())?)
}
