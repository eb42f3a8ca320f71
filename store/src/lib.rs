//! imgstore's library: a content-addressed, deduplicating store for container
//! images. See `docs/ARCHITECTURE.md` for the map and the invariants.
//!
//! The library never prints and never exits: it returns values and
//! [`Error`]s with hints, and emits `tracing` events.

pub mod backend;
pub mod chunker;
pub mod codec;
pub mod config;
pub mod direct;
pub mod error;
pub mod eventlog;
pub mod gc;
pub mod hold;
#[cfg(test)]
mod hostile;
pub mod id;
pub mod index;
pub mod manifest;
pub mod mark;
pub mod ops;
pub mod pack;
pub mod progress;
pub mod refs;
pub mod repair;
pub mod segment;
pub mod session;
pub mod sif;
pub mod stats;
pub mod testdata;
pub mod verify;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use backend::{Backend, LocalBackend};
pub use config::Config;
pub use error::{Error, ErrorKind, Result};
pub use id::{ChunkId, Digest, ImageId};
pub use ops::get::{GetReport, Output};
pub use ops::put::{Input, PutOptions, PutReport};
pub use ops::reader::{ImageReader, ReaderStats, StoreReader};
pub use ops::refs::Resolved;
pub use progress::{NoProgress, Progress};
pub use refs::{ImageRef, RefRecord, TagRef};
pub use repair::{RepairOptions, RepairReport};
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

/// An open store.
pub struct Store {
    root: PathBuf,
    backend: Arc<dyn Backend>,
    config: Config,
    index_dir: PathBuf,
}

impl Store {
    /// Creates a store in `root` (created if missing; must be empty).
    pub fn init(root: &Path, opts: InitOptions, index_dir: Option<PathBuf>) -> Result<Store> {
        match fs::read_dir(root) {
            Ok(mut entries) => {
                if root.join(config::CONFIG_KEY).exists() {
                    return Err(Error::AlreadyStore { path: root.into() });
                }
                if entries.next().is_some() {
                    return Err(Error::NotEmpty { path: root.into() });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
                return Err(Error::NotEmpty { path: root.into() });
            }
            Err(e) => return Err(Error::io(root, e)),
        }
        let config = Config::new(opts.avg_chunk, opts.zstd_level)?;
        if opts.shared {
            use std::os::unix::fs::PermissionsExt;
            let meta = fs::metadata(root).map_err(|e| Error::io(root, e))?;
            let mode = meta.permissions().mode();
            if mode & 0o2070 != 0o2070 {
                fs::set_permissions(root, fs::Permissions::from_mode(mode | 0o2070))
                    .map_err(|e| Error::io(root, e))?;
            }
        }
        let perms = backend::Perms::of(root);
        for d in DIRS {
            backend::create_dirs(&root.join(d), perms)?;
        }
        backend::sync_dir(root)?;
        let backend = LocalBackend::new(root);
        // Made now so that a `gc --dry-run` (which takes the lock) writes
        // nothing; writable by whoever may write the store, since a flock
        // on NFS needs a writable descriptor.
        backend.write(gc::LOCK_KEY, b"")?;
        {
            use std::os::unix::fs::PermissionsExt;
            let lock = root.join(gc::LOCK_KEY);
            let mode = fs::metadata(root)
                .map_err(|e| Error::io(root, e))?
                .permissions()
                .mode();
            let lock_mode = 0o644 | (mode & 0o020) | (mode & 0o002);
            fs::set_permissions(&lock, fs::Permissions::from_mode(lock_mode))
                .map_err(|e| Error::io(&lock, e))?;
        }
        // The config goes last: a directory is a store once it has one.
        backend.write(config::CONFIG_KEY, &config.to_bytes())?;
        Self::open(root, index_dir)
    }

    /// Opens the store in `root`. `index_dir` overrides where the local
    /// index lives (default: under the user's cache directory).
    pub fn open(root: &Path, index_dir: Option<PathBuf>) -> Result<Store> {
        if !root.is_dir() {
            return Err(Error::NoStore { path: root.into() });
        }
        let backend = LocalBackend::new(root);
        let config = Config::load(&backend)?.ok_or_else(|| Error::NoStore { path: root.into() })?;
        let index_dir = index_dir.unwrap_or_else(|| index::default_dir(&config.store_id));
        Ok(Store {
            root: root.into(),
            backend: Arc::new(backend),
            config,
            index_dir,
        })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
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

    /// Brings the local index up to date with the store.
    pub fn index_catch_up(&self) -> Result<index::CatchUp> {
        index::catch_up(&self.index_dir, &self.config.store_id, self.backend.as_ref())
    }

    /// Recreates the local index from every pack's footer and every segment.
    pub fn index_rebuild(&self) -> Result<index::CatchUp> {
        let mut entries = Vec::new();
        for (id, key) in pack::list(self.backend.as_ref())? {
            let file = self.backend.open(&key)?;
            for e in pack::read_footer(file.as_ref(), &format!("pack {key}"))? {
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
