//! The local index: chunk id -> location, in RocksDB. The only module that
//! imports `rocksdb`, in one file (`rocks.rs`), whose wrapper the report
//! view (`stats/view.rs`) opens its own database through.
//!
//! The index is derived data. Its truth is the store's `index/` segments
//! (and, for `index rebuild --from-packs`, the packs' footers), so it lives on
//! local disk, never on the shared store, and each command first catches up
//! with segments other hosts wrote.
//!
//! RocksDB allows one read-write process per directory. Writers here hold the
//! primary open only for a catch-up (milliseconds to seconds), under a flock
//! on `writer.lock`; lookups during a long put or get go through a RocksDB
//! *secondary* instance, which needs no lock. So concurrent puts on one host
//! never wait for each other for longer than a catch-up.

mod catchup;
mod db;
mod reader;
pub(crate) mod rocks;

pub use catchup::{catch_up, rebuild};
pub use reader::{Reader, ReaderMemory};

use std::path::PathBuf;

const CF_CHUNKS: &str = "chunks";
const CF_SEGMENTS: &str = "segments";
const CF_META: &str = "meta";
const CF_DELETED: &str = "deleted_packs";
const META_STORE_ID: &[u8] = b"store_id";
const META_SCHEMA: &[u8] = b"schema";
/// Meta key prefix: a quarantined pack whose entries this index has dropped.
const META_QUARANTINED: &str = "quarantined:";
/// Store directory of quarantined packs and their records (see `repair`).
pub const QUARANTINE_DIR: &str = "quarantine";
/// Suffix of a quarantine record: `quarantine/<pack-hex>.json`.
pub const QUARANTINE_RECORD: &str = ".json";
const SCHEMA: &[u8] = b"1";
const DB_DIR: &str = "db";
const SECONDARY_DIR: &str = "secondary";

/// The local index directory of a store, unless `--index-dir` overrides it:
/// `$XDG_CACHE_HOME/imgstore/<store-id>` or `~/.cache/imgstore/<store-id>`.
pub fn default_dir(store_id: &str) -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| std::env::temp_dir().join("imgstore-cache"));
    base.join("imgstore").join(store_id)
}

/// What a catch-up did.
#[derive(Debug, Clone, Copy, Default)]
pub struct CatchUp {
    /// Segments newly applied.
    pub segments: usize,
    /// Chunk locations written.
    pub chunks: usize,
    /// GC tombstones (deleted packs) newly applied.
    pub tombstones: usize,
}
