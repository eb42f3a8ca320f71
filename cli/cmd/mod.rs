//! One module per group of subcommands; each turns parsed arguments into
//! library calls and output.

mod admin;
mod archive;
mod copy;
mod demo;
mod export;
mod find;
mod gc;
mod get;
mod html;
mod pin;
mod put;
mod query;
mod report;
mod serve;
mod squash;
mod verify;

use std::sync::Arc;

use anyhow::Result;
use imgstore_store::{Backend, ObjectOptions, Store};

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
        Command::Find(a) => find::find(g, a),
        Command::Tag(a) => query::tag(g, a),
        Command::Pin(a) => pin::pin(g, a),
        Command::Unpin(a) => pin::unpin(g, a),
        Command::Rm(a) => query::rm(g, a),
        Command::Log(a) => query::log(g, a),
        Command::Prune(a) => gc::prune(g, a),
        Command::Archive(a) => archive::run(g, a),
        Command::Export(a) => export::export(g, a),
        Command::Copy(a) => copy::run(g, a),
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
        Command::Serve(a) => serve::run(g, a),
        Command::Mount(a) => crate::mount::run(g, a),
    }
}

/// The store location from --store / IMGSTORE_STORE.
fn store_location(g: &Global) -> Result<String> {
    g.store
        .clone()
        .ok_or_else(|| UsageError("no store given: use --store DIR|URL or set IMGSTORE_STORE".into()).into())
}

/// How to reach an object store, from the global options.
fn object_options(g: &Global) -> ObjectOptions {
    ObjectOptions {
        s3_endpoint: g.s3_endpoint.clone(),
        allow_http: g.s3_allow_http,
        retry_timeout: std::env::var("IMGSTORE_RETRY_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .map(std::time::Duration::from_secs),
    }
}

/// The backend of the store the global options name.
fn backend(g: &Global) -> Result<Arc<dyn Backend>> {
    backend_at(g, &store_location(g)?)
}

/// The backend of the store at `location`, reached with the global options.
fn backend_at(g: &Global, location: &str) -> Result<Arc<dyn Backend>> {
    Ok(imgstore_store::backend::at(location, &object_options(g))?)
}

/// Opens the store the global options name.
pub(crate) fn open(g: &Global) -> Result<Store> {
    Ok(Store::open_with(backend(g)?, g.index_dir.clone())?)
}

/// Opens the store at `location`, reached with the global options.
fn open_at(g: &Global, location: &str) -> Result<Store> {
    Ok(Store::open_with(backend_at(g, location)?, g.index_dir.clone())?)
}
