//! The local index: chunk id -> location, in RocksDB. The only module that
//! imports `rocksdb`.
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

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, BottommostLevelCompaction, Cache, ColumnFamilyDescriptor,
    CompactOptions, DataBlockIndexType, Options, WaitForCompactOptions, WriteBatch, WriteOptions, DB,
};

use crate::backend::{key_name, Backend};
use crate::error::{Error, Result};
use crate::fsutil::{lock_path, LockGuard};
use crate::id::unique_suffix;
use crate::id::{ChunkId, Digest, PackId};
use crate::pack::Location;
use crate::segment::{self, INDEX_DIR};

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

fn index_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Index {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

fn db_options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_paranoid_checks(true);
    opts.set_keep_log_file_num(2);
    opts.set_max_log_file_size(1 << 20);
    // Secondaries keep every SST open so a primary's compaction cannot pull
    // a file from under them.
    opts.set_max_open_files(-1);
    // Opening those files on RocksDB's default 16 threads made a small put
    // (which opens the index three times) create 310 threads; 2 threads
    // took it from 41-49 ms to 32-37 ms (benches/results/HISTORY.md, "Fixed cost of a put").
    opts.set_max_file_opening_threads(2);
    opts
}

/// The chunk index's block cache, one per process and shared by every
/// database it opens (a put has two open during a catch-up: the lookup
/// thread's reader and the primary, then that reader and the next). It
/// holds the index and filter blocks too, so the index costs the same
/// memory however many chunks the store holds: kept outside the cache
/// (RocksDB's default), they took 1.6 B per chunk in every open database,
/// 2.6 MB at 1.6 million chunks (benches/rss_curve.sh).
fn chunk_cache() -> Cache {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    CACHE
        .get_or_init(|| Mutex::new(Cache::new_lru_cache(CHUNK_CACHE_BYTES)))
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
}

/// See [`chunk_cache`]. Chunk ids are random, so data blocks hit rarely
/// and a larger cache mostly fills (a 16 GiB put peaked at 161 MiB with
/// 64 MiB, 156 MiB with 8 MiB; benches/rss_size.sh); the index and filter
/// partitions a lookup needs stay in its high-priority half.
const CHUNK_CACHE_BYTES: usize = 8 << 20;

fn cf_descriptors() -> Vec<ColumnFamilyDescriptor> {
    // RocksDB's OptimizeForPointLookup (hash index inside data blocks,
    // 10-bit bloom filters, a memtable bloom), with the filters and the
    // index partitioned into 4 KiB blocks that live in the block cache: a
    // lookup reads the top level (pinned) and one partition of each.
    let mut table = BlockBasedOptions::default();
    table.set_bloom_filter(10.0, false);
    table.set_data_block_index_type(DataBlockIndexType::BinaryAndHash);
    table.set_data_block_hash_ratio(0.75);
    table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
    table.set_partition_filters(true);
    table.set_metadata_block_size(4096);
    table.set_cache_index_and_filter_blocks(true);
    table.set_cache_index_and_filter_blocks_with_high_priority(true);
    table.set_pin_top_level_index_and_filter(true);
    table.set_block_cache(&chunk_cache());
    let mut chunks = Options::default();
    chunks.set_block_based_table_factory(&table);
    chunks.set_memtable_prefix_bloom_ratio(0.02);
    chunks.set_memtable_whole_key_filtering(true);
    vec![
        ColumnFamilyDescriptor::new(CF_CHUNKS, chunks),
        ColumnFamilyDescriptor::new(CF_SEGMENTS, Options::default()),
        ColumnFamilyDescriptor::new(CF_META, Options::default()),
        ColumnFamilyDescriptor::new(CF_DELETED, Options::default()),
    ]
}

/// Exclusive right to open the primary; a flock held for one catch-up.
struct WriterLock {
    _guard: LockGuard,
}

impl WriterLock {
    fn acquire(dir: &Path) -> Result<WriterLock> {
        let guard = lock_path(&dir.join("writer.lock"), true)?.expect("a waiting lock is always taken");
        Ok(WriterLock { _guard: guard })
    }
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
pub(crate) fn room_for_rocksdb() -> Result<()> {
    let pools = if POOLS_STARTED.load(Ordering::Relaxed) {
        0
    } else {
        ROCKSDB_POOL_THREADS
    };
    room_for_threads(ROCKSDB_THREADS + pools)
}

/// Notes that a database opened, and with it RocksDB's pools started.
pub(crate) fn opened() {
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

/// Whether the database files in `db_path` can hold index entries: table
/// files, or a write-ahead log with anything in it. What else a crash
/// while RocksDB created the database leaves (its info `LOG`, `LOCK`,
/// `IDENTITY`, a first `MANIFEST`, `OPTIONS`, an empty log) holds none.
fn holds_entries(db_path: &Path) -> Result<bool> {
    for entry in fs::read_dir(db_path).map_err(|e| Error::io(db_path, e))? {
        let entry = entry.map_err(|e| Error::io(db_path, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let wal = name
            .strip_suffix(".log")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if name.ends_with(".sst")
            || name.ends_with(".blob")
            || (wal && entry.metadata().map_err(|e| Error::io(db_path, e))?.len() > 0)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Whether the open database holds no entry in any column family.
fn is_empty(db: &DB, db_path: &Path) -> Result<bool> {
    for cf in [CF_CHUNKS, CF_SEGMENTS, CF_META, CF_DELETED] {
        let handle = db.cf_handle(cf).expect("cf exists");
        if let Some(first) = db.iterator_cf(handle, rocksdb::IteratorMode::Start).next() {
            first.map_err(|e| index_err(db_path, e))?;
            return Ok(false);
        }
    }
    Ok(true)
}

fn open_primary(dir: &Path, store_id: &str) -> Result<DB> {
    let db_path = dir.join(DB_DIR);
    // Fresh when the directory is missing or empty, or was left
    // half-created by a crash: derived data that holds nothing yet is
    // created again. A directory with entries but no CURRENT is a damaged
    // index, and letting RocksDB create a new database there would open it
    // as empty.
    let mut fresh = match fs::read_dir(&db_path) {
        Ok(mut d) => d.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => return Err(Error::io(&db_path, e)),
    };
    if !fresh && !db_path.join("CURRENT").exists() {
        if holds_entries(&db_path)? {
            return Err(index_err(&db_path, "CURRENT is missing: the index is damaged"));
        }
        tracing::info!(
            path = %db_path.display(),
            "the local index was left half-created (a crash or a killed command); creating it again"
        );
        fs::remove_dir_all(&db_path).map_err(|e| Error::io(&db_path, e))?;
        fresh = true;
    }
    room_for_rocksdb()?;
    let mut opts = db_options();
    if !fresh {
        // An existing index must open as what it is: a damaged one is an
        // error, never silently a new empty index.
        opts.create_if_missing(false);
    }
    let db =
        DB::open_cf_descriptors(&opts, &db_path, cf_descriptors()).map_err(|e| index_err(&db_path, e))?;
    opened();
    if fresh {
        crate::hold::point("index-created");
    }
    let meta = db.cf_handle(CF_META).expect("cf exists");
    match db
        .get_cf(meta, META_STORE_ID)
        .map_err(|e| index_err(&db_path, e))?
    {
        Some(id) if id == store_id.as_bytes() => {}
        Some(other) => {
            return Err(index_err(
                &db_path,
                format!(
                    "belongs to store {}, not {store_id}",
                    String::from_utf8_lossy(&other)
                ),
            ))
        }
        // Created but stopped before its first write: as good as fresh.
        None if fresh || is_empty(&db, &db_path)? => {
            if !fresh {
                tracing::info!(
                    path = %db_path.display(),
                    "the local index was left half-created (a crash or a killed command); creating it again"
                );
            }
            let mut batch = WriteBatch::default();
            batch.put_cf(meta, META_STORE_ID, store_id.as_bytes());
            batch.put_cf(meta, META_SCHEMA, SCHEMA);
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            db.write_opt(batch, &wo).map_err(|e| index_err(&db_path, e))?;
        }
        None => return Err(index_err(&db_path, "has no store id: it is damaged")),
    }
    Ok(db)
}

/// Brings the index in `dir` up to date with the store's segments and GC
/// tombstones. Builds it from scratch when `dir` holds none yet (a new host).
///
/// Segments go first, tombstones last, and a segment entry for a pack that
/// has a tombstone is skipped: so however the listings interleave, the index
/// never points into a pack GC deleted.
pub fn catch_up(dir: &Path, store_id: &str, backend: &dyn Backend) -> Result<CatchUp> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let _lock = WriterLock::acquire(dir)?;
    let db = open_primary(dir, store_id)?;
    let db_path = dir.join(DB_DIR);
    let seg_cf = db.cf_handle(CF_SEGMENTS).expect("cf exists");
    let chunk_cf = db.cf_handle(CF_CHUNKS).expect("cf exists");
    let del_cf = db.cf_handle(CF_DELETED).expect("cf exists");
    let is_deleted = |pack: &PackId| -> Result<bool> {
        Ok(db
            .get_pinned_cf(del_cf, pack.0)
            .map_err(|e| index_err(&db_path, e))?
            .is_some())
    };
    let mut done = CatchUp::default();
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    let quarantined = quarantined_packs(backend)?;
    // New segments oldest first (store clock), so that where two hold the
    // same chunk the newer copy wins, as on a host that applied them as
    // they came: a new host's index otherwise placed a chunk gc had just
    // repacked in its condemned original, and the next gc rescued and
    // repacked that pack again (ops::crash, a power cut between two gcs).
    let mut new = Vec::new();
    for key in backend.list(INDEX_DIR)? {
        if db
            .get_pinned_cf(seg_cf, key_name(&key).as_bytes())
            .map_err(|e| index_err(&db_path, e))?
            .is_some()
        {
            continue;
        }
        if let Some(meta) = backend.head(&key)? {
            new.push((meta.modified, key));
        }
    }
    new.sort();
    for (_, key) in &new {
        let name = key_name(key);
        let Some(bytes) = backend.get(key)? else {
            continue;
        };
        let entries = segment::decode(&bytes, &format!("index segment {key}"))?;
        let mut batch = WriteBatch::default();
        let mut deleted: HashMap<PackId, bool> = HashMap::new();
        for (id, loc) in &entries {
            let gone = match deleted.get(&loc.pack) {
                Some(g) => *g,
                None => *deleted.entry(loc.pack).or_insert(is_deleted(&loc.pack)?),
            };
            if !gone && !quarantined.contains(&loc.pack) {
                batch.put_cf(chunk_cf, id.0, loc.encode());
            }
        }
        batch.put_cf(seg_cf, name.as_bytes(), b"");
        db.write_opt(batch, &wo).map_err(|e| index_err(&db_path, e))?;
        done.segments += 1;
        done.chunks += entries.len();
    }
    for tombstone in backend.list(segment::TOMBSTONES_DIR)? {
        let name = key_name(&tombstone);
        let Ok(pack) = Digest::from_hex(name) else {
            continue;
        };
        if is_deleted(&pack)? {
            continue;
        }
        let key = format!("{}/{name}", segment::TOMBSTONES_DIR);
        let Some(bytes) = backend.get(&key)? else {
            continue;
        };
        let chunks = segment::decode_tombstone(&bytes, &format!("tombstone {key}"))?;
        let mut batch = WriteBatch::default();
        for (id, copy) in &chunks {
            let here = db
                .get_pinned_cf(chunk_cf, id.0)
                .map_err(|e| index_err(&db_path, e))?
                .and_then(|v| Location::decode(&v))
                .is_some_and(|loc| loc.pack == pack);
            if !here {
                continue;
            }
            match surviving_copy(backend, id, *copy, &pack)? {
                Some(loc) => batch.put_cf(chunk_cf, id.0, loc.encode()),
                None => batch.delete_cf(chunk_cf, id.0),
            }
        }
        batch.put_cf(del_cf, pack.0, b"");
        db.write_opt(batch, &wo).map_err(|e| index_err(&db_path, e))?;
        done.tombstones += 1;
    }
    drop_quarantined(&db, &db_path, &quarantined)?;
    // Every column family into table files now, not left in the log: the
    // next open need not replay it, and a reader (a secondary) following
    // this database drops its in-memory copy of what was flushed, so a put
    // that catches up every few packs does not hold every chunk it stored.
    // Then the compactions RocksDB scheduled are let finish: closing the
    // database cancelled them, and the chunks' level 0 kept a table file
    // per catch-up, each one read by every lookup and held open by every
    // reader (47 files in all after a 16 GiB put, 10 now after 4 GiB).
    // Nothing pending returns at once.
    let mut settle = WaitForCompactOptions::default();
    settle.set_flush(true);
    db.wait_for_compact(&settle).map_err(|e| index_err(&db_path, e))?;
    merge_small_files(&db, &db_path)?;
    if done.segments > 0 || done.tombstones > 0 {
        tracing::debug!(segments = done.segments, chunks = done.chunks, "index caught up");
    }
    Ok(done)
}

/// A column family whose files number more than this and average less than
/// [`SMALL_FILE`] bytes is merged into one file.
const MAX_SMALL_FILES: usize = 8;
const SMALL_FILE: usize = 1 << 20;

/// Merges the files of a column family that RocksDB leaves apart. The
/// segments family gets one key per segment, and a flushed file whose keys
/// overlap no other file is moved down whole rather than merged, so it kept
/// a file per put: every reader opens every file (`max_open_files(-1)`),
/// so after a few hundred puts each put and get opened hundreds of files
/// and, at the common limit of 1,024 descriptors, failed with "Too many
/// open files". A large family (the chunks) is left to RocksDB's own
/// compaction, whose files are large.
fn merge_small_files(db: &DB, db_path: &Path) -> Result<()> {
    let files = db.live_files().map_err(|e| index_err(db_path, e))?;
    for cf in [CF_CHUNKS, CF_SEGMENTS, CF_META, CF_DELETED] {
        let (count, bytes) = files
            .iter()
            .filter(|f| f.column_family_name == cf)
            .fold((0, 0), |(n, b), f| (n + 1, b + f.size));
        if count > MAX_SMALL_FILES && bytes < count * SMALL_FILE {
            let handle = db.cf_handle(cf).expect("cf exists");
            let mut opts = CompactOptions::default();
            opts.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
            db.compact_range_cf_opt(handle, None::<&[u8]>, None::<&[u8]>, &opts);
            tracing::debug!(cf, files = count, bytes, "index files merged");
        }
    }
    Ok(())
}

/// Follows a deleted pack's copy of `id` through later tombstones (a copy
/// that was itself repacked and deleted) to a pack that still exists.
fn surviving_copy(
    backend: &dyn Backend,
    id: &ChunkId,
    mut copy: Option<Location>,
    deleted: &PackId,
) -> Result<Option<Location>> {
    for _ in 0..16 {
        let Some(loc) = copy else { return Ok(None) };
        if loc.pack == *deleted {
            return Ok(None);
        }
        let key = format!("{}/{}", segment::TOMBSTONES_DIR, loc.pack.to_hex());
        let Some(bytes) = backend.get(&key)? else {
            return Ok(Some(loc));
        };
        copy = segment::decode_tombstone(&bytes, &format!("tombstone {key}"))?
            .into_iter()
            .find(|(c, _)| c == id)
            .and_then(|(_, l)| l);
    }
    Ok(None)
}

/// Pack ids with a quarantine record in the store.
fn quarantined_packs(backend: &dyn Backend) -> Result<HashSet<PackId>> {
    Ok(backend
        .list(QUARANTINE_DIR)?
        .iter()
        .filter_map(|k| key_name(k).strip_suffix(QUARANTINE_RECORD))
        .filter_map(|hex| Digest::from_hex(hex).ok())
        .collect())
}

/// Removes the entries of newly quarantined packs (once per pack and index:
/// a full scan of the chunks, so it is remembered in `meta`).
fn drop_quarantined(db: &DB, db_path: &Path, quarantined: &HashSet<PackId>) -> Result<()> {
    let meta = db.cf_handle(CF_META).expect("cf exists");
    let mut todo = HashSet::new();
    for p in quarantined {
        let key = format!("{META_QUARANTINED}{p}");
        if db
            .get_pinned_cf(meta, key.as_bytes())
            .map_err(|e| index_err(db_path, e))?
            .is_none()
        {
            todo.insert(*p);
        }
    }
    if todo.is_empty() {
        return Ok(());
    }
    let chunk_cf = db.cf_handle(CF_CHUNKS).expect("cf exists");
    let mut batch = WriteBatch::default();
    for item in db.iterator_cf(chunk_cf, rocksdb::IteratorMode::Start) {
        let (k, v) = item.map_err(|e| index_err(db_path, e))?;
        if Location::decode(&v).is_some_and(|l| todo.contains(&l.pack)) {
            batch.delete_cf(chunk_cf, k);
        }
    }
    for p in &todo {
        batch.put_cf(meta, format!("{META_QUARANTINED}{p}").as_bytes(), b"");
    }
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    db.write_opt(batch, &wo).map_err(|e| index_err(db_path, e))?;
    tracing::info!(packs = todo.len(), "dropped index entries of quarantined packs");
    Ok(())
}

/// Recreates the index in `dir` from `entries` (e.g. every pack's footer),
/// replacing whatever was there, then catches up with segments.
pub fn rebuild(
    dir: &Path,
    store_id: &str,
    backend: &dyn Backend,
    entries: impl Iterator<Item = Result<(ChunkId, Location)>>,
) -> Result<CatchUp> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let lock = WriterLock::acquire(dir)?;
    let db_path = dir.join(DB_DIR);
    if db_path.exists() {
        fs::remove_dir_all(&db_path).map_err(|e| Error::io(&db_path, e))?;
    }
    let mut added = 0;
    {
        let db = open_primary(dir, store_id)?;
        let chunk_cf = db.cf_handle(CF_CHUNKS).expect("cf exists");
        let mut batch = WriteBatch::default();
        for entry in entries {
            let (id, loc) = entry?;
            batch.put_cf(chunk_cf, id.0, loc.encode());
            added += 1;
            if batch.len() >= 10_000 {
                db.write(std::mem::take(&mut batch))
                    .map_err(|e| index_err(&db_path, e))?;
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        db.write_opt(batch, &wo).map_err(|e| index_err(&db_path, e))?;
    }
    drop(lock);
    let mut done = catch_up(dir, store_id, backend)?;
    done.chunks += added;
    Ok(done)
}

/// Table files up to this many bytes in all are read ahead when a reader
/// opens. Lookups of chunk ids are random reads of small blocks, each
/// waiting on the disk while the index is not cached: a known put of a
/// 3.2 GiB ext3 image waited 0.83 s of its 3.84 s on lookups in a cold
/// 7.5 MB index, one block at a time. Read ahead, the whole index arrives
/// in a few large reads. A larger index (beyond ~4 million chunks) is left
/// to the cache as it warms, rather than read whole for one command.
const READ_AHEAD_MAX: u64 = 256 << 20;

/// Asks the kernel to read the index's table files into the page cache,
/// in the background, if they are small enough (see [`READ_AHEAD_MAX`]).
#[allow(unsafe_code)]
fn read_ahead(db_path: &Path) {
    use std::os::unix::io::AsRawFd;
    let Ok(dir) = fs::read_dir(db_path) else { return };
    let tables: Vec<(PathBuf, u64)> = dir
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "sst"))
        .filter_map(|e| Some((e.path(), e.metadata().ok()?.len())))
        .collect();
    if tables.iter().map(|(_, len)| len).sum::<u64>() > READ_AHEAD_MAX {
        return;
    }
    for (path, _) in tables {
        if let Ok(f) = fs::File::open(&path) {
            // SAFETY: posix_fadvise only reads its integer arguments; a
            // failed hint changes nothing but speed.
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_WILLNEED) };
        }
    }
}

/// What [`Reader::memory`] reports, in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReaderMemory {
    /// Index and filter blocks held outside the block cache.
    pub table_readers: u64,
    /// Memtables (what a secondary replayed and has not seen flushed).
    pub memtables: u64,
    /// The chunks' block cache (shared by the process's databases).
    pub block_cache: u64,
}

/// A lock-free read view for lookups (a RocksDB secondary instance).
pub struct Reader {
    db: DB,
    secondary: PathBuf,
}

impl Reader {
    /// Opens a view of the index in `dir` as of now. Call [`catch_up`] first.
    pub fn open(dir: &Path) -> Result<Reader> {
        let db_path = dir.join(DB_DIR);
        let sec_root = dir.join(SECONDARY_DIR);
        fs::create_dir_all(&sec_root).map_err(|e| Error::io(&sec_root, e))?;
        remove_stale_secondaries(&sec_root);
        let secondary = sec_root.join(unique_suffix());
        read_ahead(&db_path);
        room_for_rocksdb()?;
        let opts = db_options();
        let db = DB::open_cf_descriptors_as_secondary(&opts, &db_path, &secondary, cf_descriptors())
            .map_err(|e| index_err(&db_path, e))?;
        opened();
        db.try_catch_up_with_primary()
            .map_err(|e| index_err(&db_path, e))?;
        Ok(Reader { db, secondary })
    }

    /// RocksDB's estimate of the number of chunks in the index.
    pub fn estimate_chunks(&self) -> u64 {
        self.property(CF_CHUNKS, "rocksdb.estimate-num-keys")
    }

    /// An integer property of column family `cf`; 0 where RocksDB has none.
    fn property(&self, cf: &str, name: &str) -> u64 {
        self.db
            .cf_handle(cf)
            .and_then(|cf| self.db.property_int_value_cf(cf, name).ok().flatten())
            .unwrap_or(0)
    }

    /// RocksDB's own count of the memory this reader holds, in bytes, over
    /// all column families: table readers (index and filter blocks of every
    /// open table file), memtables, and the chunks' block cache. For the
    /// debug log: a put's memory is this plus its own buffers.
    pub fn memory(&self) -> ReaderMemory {
        let sum = |name: &str| -> u64 {
            [CF_CHUNKS, CF_SEGMENTS, CF_META, CF_DELETED]
                .iter()
                .map(|cf| self.property(cf, name))
                .sum()
        };
        ReaderMemory {
            table_readers: sum("rocksdb.estimate-table-readers-mem"),
            memtables: sum("rocksdb.cur-size-all-mem-tables"),
            block_cache: self.property(CF_CHUNKS, "rocksdb.block-cache-usage"),
        }
    }

    /// Sees what catch-ups since this reader was opened wrote.
    pub fn refresh(&self) -> Result<()> {
        self.db
            .try_catch_up_with_primary()
            .map_err(|e| index_err(&self.secondary, e))
    }

    /// Every chunk whose indexed location is in `pack`. A full scan of the
    /// index: memory is proportional to that one pack's chunks.
    pub fn pack_entries(&self, pack: &PackId) -> Result<Vec<(ChunkId, Location)>> {
        let cf = self.db.cf_handle(CF_CHUNKS).expect("cf exists");
        let mut out = Vec::new();
        for item in self.db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let (k, v) = item.map_err(|e| index_err(&self.secondary, e))?;
            if let (Ok(id), Some(loc)) = (<[u8; 32]>::try_from(&k[..]), Location::decode(&v)) {
                if loc.pack == *pack {
                    out.push((Digest(id), loc));
                }
            }
        }
        Ok(out)
    }

    /// Locations of `ids`, in order; `None` where the index has no entry.
    pub fn lookup(&self, ids: &[ChunkId]) -> Result<Vec<Option<Location>>> {
        let cf = self.db.cf_handle(CF_CHUNKS).expect("cf exists");
        let keys: Vec<&[u8]> = ids.iter().map(|id| &id.0[..]).collect();
        self.db
            .batched_multi_get_cf(cf, keys.iter().copied(), false)
            .into_iter()
            .zip(ids)
            .map(|(r, id)| {
                let value = r.map_err(|e| index_err(&self.secondary, e))?;
                value
                    .map(|v| {
                        Location::decode(&v).ok_or_else(|| Error::Index {
                            path: self.secondary.clone(),
                            detail: format!("entry for chunk {id} is damaged"),
                        })
                    })
                    .transpose()
            })
            .collect()
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.secondary);
    }
}

/// Removes secondary directories of processes that died (SIGKILL skips Drop).
/// The index is per host, so a pid that no longer exists here is dead.
fn remove_stale_secondaries(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LocalBackend;
    use crate::codec::Codec;

    fn chunk(i: u64) -> ChunkId {
        Digest(*blake3::hash(&i.to_le_bytes()).as_bytes())
    }

    /// What the index holds outside the block cache must not grow with the
    /// chunks it holds. With RocksDB's default (every table file's whole
    /// index and filter blocks kept beside the cache, in every open
    /// database; the options before 2026-12-07) these 300,000 chunks took
    /// 485 KB in each, partitioned 4.9 KB.
    #[test]
    fn the_index_memory_does_not_grow_with_the_store() {
        let store = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let backend = LocalBackend::new(store.path());
        let location = |i: u64| Location {
            pack: Digest([7; 32]),
            offset: i * 100,
            raw_len: 32_768,
            stored_len: 100,
            codec: Codec::Zstd,
            inner: 0,
        };
        let entries = (0..300_000).map(|i| Ok((chunk(i), location(i))));
        rebuild(dir.path(), "store", &backend, entries).unwrap();

        let reader = Reader::open(dir.path()).unwrap();
        let ids: Vec<ChunkId> = (0..1_000)
            .map(|i| chunk(i * 300))
            .chain([chunk(u64::MAX)])
            .collect();
        let found = reader.lookup(&ids).unwrap();
        assert_eq!(
            found[..1_000],
            (0..1_000).map(|i| Some(location(i * 300))).collect::<Vec<_>>()[..]
        );
        assert_eq!(found[1_000], None);
        let memory = reader.memory();
        assert!(memory.table_readers < 64 << 10, "{memory:?}");
        assert!(memory.block_cache <= CHUNK_CACHE_BYTES as u64, "{memory:?}");
    }
}
