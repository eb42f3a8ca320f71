//! The RocksDB plumbing every database of imgstore goes through (the chunk
//! index and the report view): opening with room for RocksDB's threads,
//! and its errors as [`Error::Index`]. The only file that names the
//! `rocksdb` crate; other modules use the types it re-exports.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

pub(crate) use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, BottommostLevelCompaction, Cache, ColumnFamilyDescriptor,
    CompactOptions, DataBlockIndexType, Direction, IteratorMode, Options, WaitForCompactOptions, WriteBatch,
    WriteOptions, DB, DEFAULT_COLUMN_FAMILY_NAME,
};

use crate::error::{Error, Result};

/// A RocksDB error (or any other detail) at `path`, as [`Error::Index`].
pub(crate) fn err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Index {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

/// Opens (maybe creates, as `opts` says) the database at `path` with the
/// column families `cfs`, after making room for RocksDB's threads; a
/// RocksDB error goes through `on_err`.
pub(crate) fn open(
    opts: &Options,
    path: &Path,
    cfs: impl IntoIterator<Item = ColumnFamilyDescriptor>,
    on_err: impl FnOnce(rocksdb::Error) -> Error,
) -> Result<DB> {
    room_for_rocksdb()?;
    let db = DB::open_cf_descriptors(opts, path, cfs).map_err(on_err)?;
    opened();
    Ok(db)
}

/// Opens a secondary (read-only, lock-free) instance of the database at
/// `path`, keeping its own files in `secondary`.
pub(crate) fn open_secondary(
    opts: &Options,
    path: &Path,
    secondary: &Path,
    cfs: impl IntoIterator<Item = ColumnFamilyDescriptor>,
) -> Result<DB> {
    room_for_rocksdb()?;
    let db = DB::open_cf_descriptors_as_secondary(opts, path, secondary, cfs).map_err(|e| err(path, e))?;
    opened();
    Ok(db)
}

/// Write options of a write that must be durable when it returns.
pub(crate) fn synced() -> WriteOptions {
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    wo
}

/// Threads RocksDB may start while this process opens and uses one
/// database: the timer of a primary's periodic tasks and one that opens
/// table files beside the caller (`max_file_opening_threads`); at the
/// process's first open also one each for its flush and compaction pools,
/// which it keeps ([`POOLS_STARTED`]).
const ROCKSDB_THREADS: usize = 2;
const ROCKSDB_POOL_THREADS: usize = 2;

/// Whether a database was opened in this process, so that RocksDB's pools
/// run.
static POOLS_STARTED: AtomicBool = AtomicBool::new(false);

/// Makes sure RocksDB can start the threads an open of a database needs
/// (see [`room_for_threads`]); `opened` says an open succeeded.
fn room_for_rocksdb() -> Result<()> {
    let pools = if POOLS_STARTED.load(Ordering::Relaxed) {
        0
    } else {
        ROCKSDB_POOL_THREADS
    };
    room_for_threads(ROCKSDB_THREADS + pools)
}

/// Notes that a database opened, and with it RocksDB's pools started.
fn opened() {
    POOLS_STARTED.store(true, Ordering::Relaxed);
}

/// Makes sure this process can start `n` more threads now, before RocksDB
/// is asked to. RocksDB starts threads with C++ `std::thread`, which throws
/// at the user's process limit (`ulimit -u` counts threads), and a C++
/// exception cannot cross into Rust: the process aborted ("Rust cannot
/// catch foreign exceptions"), once halfway through creating an index. So
/// `n` threads are started and held together, then ended, each waited for
/// until the kernel has given its place back. Another process of the same
/// user can still take the room in between: this narrows that to a race.
fn room_for_threads(n: usize) -> Result<()> {
    let gate = Arc::new(RwLock::new(()));
    let closed = gate.write().unwrap_or_else(|e| e.into_inner());
    let mut held = Vec::with_capacity(n);
    let mut failed = None;
    for _ in 0..n {
        let gate = Arc::clone(&gate);
        let spawned = std::thread::Builder::new()
            .name("imgstore-room".into())
            .stack_size(64 << 10)
            .spawn(move || {
                let me = fs::read_link("/proc/thread-self").ok();
                drop(gate.read());
                me
            });
        match spawned {
            Ok(h) => held.push(h),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    drop(closed);
    for h in held {
        // join() returns once the thread let go of its stack; the kernel
        // releases its place in the limit a moment later, when it is reaped
        // and leaves /proc.
        if let Ok(Some(task)) = h.join() {
            let task = Path::new("/proc").join(task);
            for _ in 0..10_000 {
                if !task.exists() {
                    break;
                }
                std::thread::yield_now();
            }
        }
    }
    match failed {
        Some(e) => Err(Error::threads("the local index (RocksDB)", e)),
        None => Ok(()),
    }
}
