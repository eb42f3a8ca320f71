//! Catching the index up with the store's segments, tombstones and
//! quarantine records, and rebuilding it.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;

use super::db::{open_primary, WriterLock};
use super::rocks::{
    self, BottommostLevelCompaction, CompactOptions, IteratorMode, WaitForCompactOptions, WriteBatch, DB,
};
use super::{
    CatchUp, CF_CHUNKS, CF_DELETED, CF_META, CF_SEGMENTS, DB_DIR, META_QUARANTINED, QUARANTINE_DIR,
    QUARANTINE_RECORD,
};
use crate::backend::{key_name, Backend};
use crate::error::{Error, Object, Result};
use crate::id::{ChunkId, Digest, PackId};
use crate::pack::Location;
use crate::segment::{self, INDEX_DIR};

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
            .map_err(|e| rocks::err(&db_path, e))?
            .is_some())
    };
    let mut done = CatchUp::default();
    let wo = rocks::synced();
    let quarantined = quarantined_packs(backend)?;
    // New segments oldest first (store clock), so that where two hold the
    // same chunk the newer copy wins, as on a host that applied them as
    // they came: a new host's index otherwise placed a chunk gc had just
    // repacked in its condemned original, and the next gc rescued and
    // repacked that pack again (ops::crash, a power cut between two gcs).
    // Object storage lists times with the keys; elsewhere only the new
    // segments are asked for theirs.
    let listed: Vec<(String, Option<std::time::SystemTime>)> = match backend.list_modified(INDEX_DIR)? {
        Some(timed) => timed.into_iter().map(|(k, t)| (k, Some(t))).collect(),
        None => backend.list(INDEX_DIR)?.into_iter().map(|k| (k, None)).collect(),
    };
    let mut new = Vec::new();
    for (key, modified) in listed {
        if db
            .get_pinned_cf(seg_cf, key_name(&key).as_bytes())
            .map_err(|e| rocks::err(&db_path, e))?
            .is_some()
        {
            continue;
        }
        let modified = match modified {
            Some(t) => t,
            None => match backend.head(&key)? {
                Some(meta) => meta.modified,
                None => continue,
            },
        };
        new.push((modified, key));
    }
    new.sort();
    for (_, key) in &new {
        let name = key_name(key);
        let Some(bytes) = backend.get(key)? else {
            continue;
        };
        let entries = segment::decode(&bytes, &Object::Segment { key: key.to_owned() })?;
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
        db.write_opt(batch, &wo).map_err(|e| rocks::err(&db_path, e))?;
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
        let chunks = segment::decode_tombstone(&bytes, &Object::Tombstone { key: key.to_owned() })?;
        let mut batch = WriteBatch::default();
        for (id, copy) in &chunks {
            let here = db
                .get_pinned_cf(chunk_cf, id.0)
                .map_err(|e| rocks::err(&db_path, e))?
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
        db.write_opt(batch, &wo).map_err(|e| rocks::err(&db_path, e))?;
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
    db.wait_for_compact(&settle)
        .map_err(|e| rocks::err(&db_path, e))?;
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
    let files = db.live_files().map_err(|e| rocks::err(db_path, e))?;
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
        copy = segment::decode_tombstone(&bytes, &Object::Tombstone { key: key.to_owned() })?
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
            .map_err(|e| rocks::err(db_path, e))?
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
    for item in db.iterator_cf(chunk_cf, IteratorMode::Start) {
        let (k, v) = item.map_err(|e| rocks::err(db_path, e))?;
        if Location::decode(&v).is_some_and(|l| todo.contains(&l.pack)) {
            batch.delete_cf(chunk_cf, k);
        }
    }
    for p in &todo {
        batch.put_cf(meta, format!("{META_QUARANTINED}{p}").as_bytes(), b"");
    }
    db.write_opt(batch, &rocks::synced())
        .map_err(|e| rocks::err(db_path, e))?;
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
                    .map_err(|e| rocks::err(&db_path, e))?;
            }
        }
        db.write_opt(batch, &rocks::synced())
            .map_err(|e| rocks::err(&db_path, e))?;
    }
    drop(lock);
    let mut done = catch_up(dir, store_id, backend)?;
    done.chunks += added;
    Ok(done)
}
