//! imgstore's library: a content-addressed, deduplicating store for container
//! images. See `docs/ARCHITECTURE.md` for the map and the invariants.
//!
//! The library never prints and never exits: it returns values and
//! [`Error`]s with hints, and emits `tracing` events.

pub mod archive;
pub mod backend;
pub mod chunker;
pub mod codec;
pub mod config;
mod direct;
mod error;
pub mod eventlog;
mod fsutil;
pub mod gc;
pub mod hold;
#[cfg(test)]
mod hostile;
mod id;
pub mod index;
pub mod lock;
pub mod manifest;
mod mark;
pub mod oci;
pub mod ops;
pub mod pack;
pub mod pins;
mod progress;
pub mod refs;
mod repair;
pub mod search;
mod segment;
mod session;
pub mod sif;
pub mod squashfs;
pub mod stats;
pub mod testdata;
pub mod verify;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use backend::{Backend, LocalBackend, MemoryBackend, ObjectBackend, ObjectOptions};
pub use config::Config;
pub use error::{Error, ErrorKind, Object, Result, Wanted};
pub use id::{ChunkId, Digest, ImageId, PackId};
pub use ops::get::{GetReport, Output};
pub use ops::put::{Input, PutOptions, PutReport};
pub use ops::reader::{ImageReader, Part, ReaderStats, SharedBytes, StoreReader};
pub use ops::refs::Resolved;
pub use progress::{NoProgress, Progress};
pub use refs::{ImageRef, RefRecord, TagRef};
pub use repair::{Quarantined, RepairOptions, RepairReport};
pub use verify::{Subset, VerifyOptions, VerifyReport};

/// Top-level directories of a store, created at `init`.
const DIRS: &[&str] = &["packs", "index", "manifests", "refs", "log", "sessions", "gc"];

/// Settings chosen at `init`.
#[derive(Debug, Clone, Copy)]
pub struct InitOptions {
    /// Average chunk size in bytes (a power of two).
    pub avg_chunk: u32,
    /// zstd level for new chunks.
    pub zstd_level: i32,
    /// Make the store's root group-writable and setgid, so every member of
    /// its group can put, get and gc whatever their umask.
    pub shared: bool,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            avg_chunk: config::DEFAULT_AVG_CHUNK,
            zstd_level: config::DEFAULT_ZSTD_LEVEL,
            shared: false,
        }
    }
}

/// An open store. Cloning shares its backend.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    config: Config,
    index_dir: PathBuf,
}

impl Store {
    /// Creates a store in the directory `root` (created if missing; must
    /// be empty).
    pub fn init(root: &Path, opts: InitOptions, index_dir: Option<PathBuf>) -> Result<Store> {
        let local = LocalBackend::create(root, DIRS, opts.shared)?;
        local.create_lock_file(gc::LOCK_KEY)?;
        Self::init_with(Arc::new(local), opts, index_dir)
    }

    /// Creates a store behind `backend`: writes its config, the object
    /// that makes it a store, so that is the last step of an init.
    pub fn init_with(
        backend: Arc<dyn Backend>,
        opts: InitOptions,
        index_dir: Option<PathBuf>,
    ) -> Result<Store> {
        if backend.head(config::CONFIG_KEY)?.is_some() {
            return Err(Error::AlreadyStore {
                path: backend.location().into(),
            });
        }
        let config = Config::new(opts.avg_chunk, opts.zstd_level)?;
        backend.put(config::CONFIG_KEY, &config.to_bytes())?;
        Self::open_with(backend, index_dir)
    }

    /// Opens the store in the directory `root`. `index_dir` overrides where
    /// the local index lives (default: under the user's cache directory).
    pub fn open(root: &Path, index_dir: Option<PathBuf>) -> Result<Store> {
        Self::open_with(backend::local_at(root)?, index_dir)
    }

    /// Opens the store behind `backend`.
    pub fn open_with(backend: Arc<dyn Backend>, index_dir: Option<PathBuf>) -> Result<Store> {
        let config = Config::load(backend.as_ref())?.ok_or_else(|| Error::NoStore {
            path: backend.location().into(),
        })?;
        let index_dir = index_dir.unwrap_or_else(|| index::default_dir(&config.store_id));
        Ok(Store {
            backend,
            config,
            index_dir,
        })
    }

    /// Where the store is, for people: a directory or a URL.
    pub fn location(&self) -> String {
        self.backend.location()
    }

    /// The store's frozen settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Where this process keeps the local index.
    pub fn index_dir(&self) -> &Path {
        &self.index_dir
    }

    /// The storage backend (for tools that inspect files directly).
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// How many objects the store holds and their total bytes: one
    /// listing (a LIST a thousand objects on object storage).
    pub fn object_census(&self) -> Result<(u64, u64)> {
        let sized = self.backend.list_sized("")?;
        Ok((sized.len() as u64, sized.iter().map(|(_, n)| n).sum()))
    }

    /// Requests made to object storage since `before` (a
    /// [`Backend::requests`] reading); `None` for a directory.
    pub fn requests_since(&self, before: Option<backend::Requests>) -> Option<backend::Requests> {
        Some(self.backend.requests()?.since(&before.unwrap_or_default()))
    }

    /// Brings the local index up to date with the store.
    pub fn index_catch_up(&self) -> Result<index::CatchUp> {
        index::catch_up(&self.index_dir, &self.config.store_id, self.backend.as_ref())
    }

    /// Recreates the local index from every pack's footer and every segment.
    pub fn index_rebuild(&self) -> Result<index::CatchUp> {
        let mut entries = Vec::new();
        for (id, key) in pack::list(self.backend.as_ref())? {
            let file = self.backend.open(&key)?;
            for e in pack::read_footer(file.as_ref(), &Object::Pack { key: key.to_owned() })? {
                entries.push(Ok((e.id, e.location(id))));
            }
        }
        index::rebuild(
            &self.index_dir,
            &self.config.store_id,
            self.backend.as_ref(),
            entries.into_iter(),
        )
    }
}
