//! Lock-free lookups in the index: a RocksDB secondary instance.

use std::fs;
use std::path::{Path, PathBuf};

use super::db::{cf_descriptors, db_options};
use super::rocks::{self, IteratorMode, DB};
use super::{CF_CHUNKS, CF_DELETED, CF_META, CF_SEGMENTS, DB_DIR, SECONDARY_DIR};
use crate::error::{Error, Result};
use crate::id::unique_suffix;
use crate::id::{ChunkId, Digest, PackId};
use crate::pack::Location;

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
    /// Opens a view of the index in `dir` as of now. Call [`catch_up`](super::catch_up) first.
    pub fn open(dir: &Path) -> Result<Reader> {
        let db_path = dir.join(DB_DIR);
        let sec_root = dir.join(SECONDARY_DIR);
        fs::create_dir_all(&sec_root).map_err(|e| Error::io(&sec_root, e))?;
        remove_stale_secondaries(&sec_root);
        let secondary = sec_root.join(unique_suffix());
        read_ahead(&db_path);
        let db = rocks::open_secondary(&db_options(), &db_path, &secondary, cf_descriptors())?;
        db.try_catch_up_with_primary()
            .map_err(|e| rocks::err(&db_path, e))?;
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
            .map_err(|e| rocks::err(&self.secondary, e))
    }

    /// Every chunk whose indexed location is in `pack`. A full scan of the
    /// index: memory is proportional to that one pack's chunks.
    pub fn pack_entries(&self, pack: &PackId) -> Result<Vec<(ChunkId, Location)>> {
        let cf = self.db.cf_handle(CF_CHUNKS).expect("cf exists");
        let mut out = Vec::new();
        for item in self.db.iterator_cf(cf, IteratorMode::Start) {
            let (k, v) = item.map_err(|e| rocks::err(&self.secondary, e))?;
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
                let value = r.map_err(|e| rocks::err(&self.secondary, e))?;
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
    use crate::index::db::CHUNK_CACHE_BYTES;
    use crate::index::rebuild;

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
