//! The index database: its options, column families, and opening the
//! primary (creating it, or recreating one a crash left half-created).

use std::fs;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use super::rocks::{
    self, BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamilyDescriptor, DataBlockIndexType,
    IteratorMode, Options, WriteBatch, DB,
};
use super::{CF_CHUNKS, CF_DELETED, CF_META, CF_SEGMENTS, DB_DIR, META_SCHEMA, META_STORE_ID, SCHEMA};
use crate::error::{Error, Result};
use crate::fsutil::{lock_path, LockGuard};

pub(super) fn db_options() -> Options {
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
pub(super) const CHUNK_CACHE_BYTES: usize = 8 << 20;

pub(super) fn cf_descriptors() -> Vec<ColumnFamilyDescriptor> {
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
pub(super) struct WriterLock {
    _guard: LockGuard,
}

impl WriterLock {
    pub(super) fn acquire(dir: &Path) -> Result<WriterLock> {
        let guard = lock_path(&dir.join("writer.lock"), true)?.expect("a waiting lock is always taken");
        Ok(WriterLock { _guard: guard })
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
        if let Some(first) = db.iterator_cf(handle, IteratorMode::Start).next() {
            first.map_err(|e| rocks::err(db_path, e))?;
            return Ok(false);
        }
    }
    Ok(true)
}

pub(super) fn open_primary(dir: &Path, store_id: &str) -> Result<DB> {
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
            return Err(rocks::err(&db_path, "CURRENT is missing: the index is damaged"));
        }
        tracing::info!(
            path = %db_path.display(),
            "the local index was left half-created (a crash or a killed command); creating it again"
        );
        fs::remove_dir_all(&db_path).map_err(|e| Error::io(&db_path, e))?;
        fresh = true;
    }
    let mut opts = db_options();
    if !fresh {
        // An existing index must open as what it is: a damaged one is an
        // error, never silently a new empty index.
        opts.create_if_missing(false);
    }
    let db = rocks::open(&opts, &db_path, cf_descriptors(), |e| rocks::err(&db_path, e))?;
    if fresh {
        crate::hold::point("index-created");
    }
    let meta = db.cf_handle(CF_META).expect("cf exists");
    match db
        .get_cf(meta, META_STORE_ID)
        .map_err(|e| rocks::err(&db_path, e))?
    {
        Some(id) if id == store_id.as_bytes() => {}
        Some(other) => {
            return Err(rocks::err(
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
            db.write_opt(batch, &rocks::synced())
                .map_err(|e| rocks::err(&db_path, e))?;
        }
        None => return Err(rocks::err(&db_path, "has no store id: it is damaged")),
    }
    Ok(db)
}
