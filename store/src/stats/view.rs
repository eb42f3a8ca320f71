//! The report view: per-chunk reference counts and running totals, kept in
//! a RocksDB of its own in the local index directory, so that `stats`, `du`
//! and `history` cost O(refs + packs), not O(chunks of every image).
//!
//! It is derived data, like the chunk index. Every query first brings it up
//! to date with the store's truth, read fresh: the refs (which (image, name)
//! pairs are live), the pack listing and the pending gc plan (which packs
//! are condemned). Only what changed since the view last looked is applied
//! — the chunks of images that gained or lost a name, the footers of packs
//! added, deleted or condemned — so another host's put, rm or gc is seen
//! exactly as this host's own.
//!
//! Each chunk keeps how many live images use it, the XOR of those images'
//! id prefixes (which *is* the one image's prefix when a single image uses
//! it), per name how many live (image, name) pairs use it, and its copies in
//! packs. When a chunk's state changes, its contribution moves from the old
//! state's totals to the new state's: the store's, each name's and, when a
//! single image holds it, that image's.
//!
//! Each batch of changes is one atomic RocksDB write together with the
//! membership keys saying what it applied, so a crash leaves a view that is
//! behind, never wrong. A view that fails to open or to decode is deleted
//! and built anew by the caller.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

pub use super::counts::{name_key, ChunkState, SetTotals, StoreTotals, Tally};
pub use super::meta::ImageMeta;

use super::counts::{prefix, Changes, Delta};
use crate::error::{Error, Object, Result};
use crate::fsutil::{lock_path, LockGuard};
use crate::id::{ChunkId, Digest, DigestMap, DigestSet, ImageId, PackId};
use crate::index::rocks::{
    self, BlockBasedOptions, ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch,
    WriteOptions, DB, DEFAULT_COLUMN_FAMILY_NAME,
};
use crate::manifest::Entry;
use crate::pack;
use crate::progress::Progress;
use crate::refs::{RefRecord, TagRef};
use crate::Store;

/// Directory of the view inside the local index directory.
pub const VIEW_DIR: &str = "report";
const LOCK_FILE: &str = "report.lock";

// Keys: one prefix byte, then ids.
/// `c` + chunk id -> [`ChunkState`].
const CHUNK: u8 = b'c';
/// `I` + image prefix -> the image's [`SetTotals`].
const IMAGE: u8 = b'I';
/// `r` + image id + name key -> nothing: a live (image, name) pair applied.
const PAIR: u8 = b'r';
/// `P` + pack id -> file bytes, condemned flag: a pack applied.
const PACK: u8 = b'P';
/// `p` + pack id -> each (chunk id, raw length, framed share) of its footer.
const PACK_ENTRIES: u8 = b'p';
/// `m` + image id -> the image's [`ImageMeta`] (JSON): what `find` searches.
/// Never changes for an id, so kept even after the image leaves.
const META: u8 = b'm';
/// `A` + image id -> nothing: the image's chunks were applied as its
/// archive stream's (see [`crate::archive`]), not its manifest's.
const ARCHIVED: u8 = b'A';
/// `n` + name key -> the name's [`SetTotals`].
const NAME: u8 = b'n';
/// The store's [`StoreTotals`].
const STORE: &[u8] = b"G";
/// The layout version; a view without it (or another) is rebuilt.
const SCHEMA: &[u8] = b"V";
const SCHEMA_VERSION: &[u8] = b"2";

/// Chunk references (image chunks and pack entries) gathered before a batch
/// is applied: bounds the positions held for new images (4 B each). Large,
/// so that one batch applies many commits sharing most of their chunks.
const BATCH_REFS: usize = 8 << 20;
/// Distinct chunks changed before a batch is applied: bounds the deltas,
/// the lookups and the write batch (a few hundred bytes each).
const BATCH_CHUNKS: usize = 1 << 18;

/// `BATCH_REFS`, or `IMGSTORE_TEST_REPORT_BATCH` (tests: many tiny
/// batches) in a build with the `test-hooks` feature.
#[cfg(feature = "test-hooks")]
fn batch_refs() -> usize {
    std::env::var("IMGSTORE_TEST_REPORT_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(BATCH_REFS)
}

/// `BATCH_REFS`: a release binary reads no test setting.
#[cfg(not(feature = "test-hooks"))]
fn batch_refs() -> usize {
    BATCH_REFS
}

/// The distinct chunks (and raw lengths) the store holds an image by: its
/// archive stream's if it is archived, else its manifest's.
pub fn image_chunks(store: &Store, id: &ImageId) -> Result<Vec<(ChunkId, u32)>> {
    distinct(&store.held(id)?)
}

/// An image's distinct chunks, in the tier given, and its metadata.
fn image_parts(store: &Store, id: &ImageId, archived: bool) -> Result<(Vec<(ChunkId, u32)>, ImageMeta)> {
    let m = store.manifest(id)?;
    let meta = ImageMeta::of(&m);
    let chunks = if archived {
        distinct(&store.held(id)?)?
    } else {
        distinct(&m)?
    };
    Ok((chunks, meta))
}

fn distinct(m: &crate::manifest::Manifest) -> Result<Vec<(ChunkId, u32)>> {
    let mut seen = DigestSet::with_capacity_and_hasher(m.entries.len(), Default::default());
    let chunks = m
        .entries
        .iter()
        .filter_map(|e| match e {
            Entry::Chunk { id, len } if seen.insert(*id) => Some((*id, *len)),
            _ => None,
        })
        .collect();
    Ok(chunks)
}

fn key(kind: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = vec![kind];
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

/// A pack as the view last saw it.
#[derive(Debug, Clone, Copy)]
pub struct PackInfo {
    /// The pack.
    pub id: PackId,
    /// Its file size.
    pub file_bytes: u64,
    /// Condemned by the pending gc plan.
    pub condemned: bool,
}

/// The open view; holds this host's report lock while it lives.
pub struct View {
    db: DB,
    path: PathBuf,
    /// Batches written since the last flush (they bypass the WAL).
    unflushed: bool,
    _lock: LockGuard,
}

/// What [`View::open_locked`] found.
enum Opened {
    Current(View),
    /// Laid out by another version: closed, its lock kept.
    Outdated(LockGuard),
}

/// Deletes the view's files, if there are any.
fn remove_view(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}

fn damaged(path: &Path, what: impl std::fmt::Display) -> Error {
    rocks::err(path, format!("report view: {what}"))
}

impl View {
    /// Opens the view in `index_dir`, waiting for another report on this
    /// host to finish with it. `fresh` deletes what is there first; so does
    /// a view another version of imgstore laid out, which is not damage but
    /// an upgrade, and is rebuilt without alarming anyone.
    pub fn open(index_dir: &Path, fresh: bool) -> Result<View> {
        let lock = lock_path(&index_dir.join(LOCK_FILE), true)?.expect("a waiting lock is always taken");
        let path = index_dir.join(VIEW_DIR);
        if fresh {
            remove_view(&path)?;
        }
        let view = match View::open_locked(&path, lock)? {
            Opened::Current(view) => view,
            Opened::Outdated(lock) => {
                tracing::info!("the report view is from another version of imgstore; building it again");
                remove_view(&path)?;
                match View::open_locked(&path, lock)? {
                    Opened::Current(view) => view,
                    Opened::Outdated(_) => return Err(damaged(&path, "written by another version")),
                }
            }
        };
        Ok(view)
    }

    /// Opens (or creates) the view at `path` under `lock`; one laid out by
    /// another version is closed again and the lock handed back.
    fn open_locked(path: &Path, lock: LockGuard) -> Result<Opened> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_keep_log_file_num(2);
        let mut table = BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        let mut cf = Options::default();
        cf.set_block_based_table_factory(&table);
        // Named so that `cf_handle` finds it for batched lookups.
        let cfs = [ColumnFamilyDescriptor::new(DEFAULT_COLUMN_FAMILY_NAME, cf)];
        let db = rocks::open(&opts, path, cfs, |e| damaged(path, e))?;
        let view = View {
            db,
            path: path.to_path_buf(),
            unflushed: false,
            _lock: lock,
        };
        match view.get(SCHEMA)? {
            Some(v) if v == SCHEMA_VERSION => {}
            Some(_) => return Ok(Opened::Outdated(view._lock)),
            None if view.db.iterator(IteratorMode::Start).next().is_some() => {
                return Err(view.err("has no version"))
            }
            None => view.db.put(SCHEMA, SCHEMA_VERSION).map_err(|e| view.err(e))?,
        }
        Ok(Opened::Current(view))
    }

    fn err(&self, what: impl std::fmt::Display) -> Error {
        damaged(&self.path, what)
    }

    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get(k).map_err(|e| self.err(e))
    }

    /// Keys (without the prefix byte) and values of every entry of one kind.
    fn scan(&self, kind: u8) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for item in self.db.iterator(IteratorMode::From(&[kind], Direction::Forward)) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if k.first() != Some(&kind) {
                break;
            }
            out.push((k[1..].to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// The store's totals.
    pub fn store_totals(&self) -> Result<StoreTotals> {
        match self.get(STORE)? {
            None => Ok(StoreTotals::default()),
            Some(b) => StoreTotals::decode(&b).ok_or_else(|| self.err("bad store totals")),
        }
    }

    fn set_totals(&self, k: &[u8]) -> Result<SetTotals> {
        match self.get(k)? {
            None => Ok(SetTotals::default()),
            Some(b) => SetTotals::decode(&b).ok_or_else(|| self.err("bad totals")),
        }
    }

    /// A name's totals: every chunk its images use, and those only they use.
    pub fn name_totals(&self, name: &str) -> Result<SetTotals> {
        self.set_totals(&key(NAME, &[&name_key(name).to_le_bytes()]))
    }

    /// An image's totals (exclusive: used by no other live image).
    pub fn image_totals(&self, id: &ImageId) -> Result<SetTotals> {
        self.set_totals(&key(IMAGE, &[&prefix(&id.0).to_le_bytes()]))
    }

    /// The states of `ids` (a default state for a chunk the view lacks).
    pub fn chunks(&self, ids: &[ChunkId]) -> Result<Vec<ChunkState>> {
        // Each result pins a table block (4 KiB) until decoded: look up a
        // few thousand at a time so that a batch never pins gigabytes.
        const LOOKUPS: usize = 4096;
        let cf = self
            .db
            .cf_handle(DEFAULT_COLUMN_FAMILY_NAME)
            .expect("opened with the default column family named");
        let mut out = Vec::with_capacity(ids.len());
        for part in ids.chunks(LOOKUPS) {
            let keys: Vec<Vec<u8>> = part.iter().map(|c| key(CHUNK, &[&c.0])).collect();
            for r in self.db.batched_multi_get_cf(cf, keys.iter(), keys.is_sorted()) {
                out.push(match r.map_err(|e| self.err(e))? {
                    None => ChunkState::default(),
                    Some(b) => ChunkState::decode(&b).ok_or_else(|| self.err("bad chunk state"))?,
                });
            }
        }
        Ok(out)
    }

    /// The cached metadata of `ids`, in order (`None`: not cached yet).
    pub fn image_meta(&self, ids: &[ImageId]) -> Result<Vec<Option<ImageMeta>>> {
        let keys: Vec<Vec<u8>> = ids.iter().map(|id| key(META, &[&id.0 .0])).collect();
        self.db
            .multi_get(&keys)
            .into_iter()
            .map(|r| match r.map_err(|e| self.err(e))? {
                None => Ok(None),
                Some(b) => ImageMeta::decode(&b)
                    .map(Some)
                    .ok_or_else(|| self.err("bad image metadata")),
            })
            .collect()
    }

    /// Caches images' metadata (read from their manifests), in one write.
    pub fn put_image_meta(&mut self, metas: &[(ImageId, ImageMeta)]) -> Result<()> {
        if metas.is_empty() {
            return Ok(());
        }
        let mut wb = WriteBatch::default();
        for (id, meta) in metas {
            wb.put(key(META, &[&id.0 .0]), meta.encode());
        }
        self.db.write(wb).map_err(|e| self.err(e))
    }

    /// The packs the view has applied.
    fn packs(&self) -> Result<Vec<PackInfo>> {
        self.scan(PACK)?
            .into_iter()
            .map(|(k, v)| {
                let ok = k.len() == 32 && v.len() == 9;
                ok.then(|| PackInfo {
                    id: Digest(k.try_into().expect("32 bytes")),
                    file_bytes: u64::from_le_bytes(v[..8].try_into().expect("8 bytes")),
                    condemned: v[8] == 1,
                })
                .ok_or_else(|| self.err("bad pack entry"))
            })
            .collect()
    }

    fn pack_entries(&self, id: &PackId) -> Result<Vec<(ChunkId, u32, u32)>> {
        let b = self
            .get(&key(PACK_ENTRIES, &[&id.0]))?
            .ok_or_else(|| self.err(format!("pack {} has no entries", id.to_hex())))?;
        if b.len() % 40 != 0 {
            return Err(self.err("bad pack entries"));
        }
        Ok(b.chunks_exact(40)
            .map(|e| {
                let u = |i: usize| u32::from_le_bytes(e[i..i + 4].try_into().expect("4 bytes"));
                (Digest(e[..32].try_into().expect("32 bytes")), u(32), u(36))
            })
            .collect())
    }

    /// Brings the view up to date with the store: `refs` as just listed,
    /// the packs listed now, and the packs the gc plan condemns.
    pub fn refresh(
        &mut self,
        store: &Store,
        refs: &[(TagRef, RefRecord)],
        condemned: &HashSet<PackId>,
        progress: &dyn Progress,
    ) -> Result<Vec<PackInfo>> {
        let packs = self.refresh_packs(store, condemned)?;
        self.refresh_images(store, refs, progress)?;
        if std::mem::take(&mut self.unflushed) {
            self.db.flush().map_err(|e| self.err(e))?;
        }
        Ok(packs)
    }

    /// Applies the packs listed now; returns them as the view now holds them.
    fn refresh_packs(&mut self, store: &Store, condemned: &HashSet<PackId>) -> Result<Vec<PackInfo>> {
        let applied: HashMap<PackId, PackInfo> = self.packs()?.into_iter().map(|p| (p.id, p)).collect();
        let listed: HashMap<PackId, String> = pack::list(store.backend.as_ref())?.into_iter().collect();
        let limit = batch_refs();
        let mut batch = Batch::default();
        let mut now_held = Vec::with_capacity(listed.len());
        for (id, info) in &applied {
            let now = listed.contains_key(id).then(|| condemned.contains(id));
            if let Some(c) = now {
                now_held.push(PackInfo {
                    condemned: c,
                    ..*info
                });
            }
            if now == Some(info.condemned) {
                continue;
            }
            let entries = self.pack_entries(id)?;
            batch.refs += entries.len();
            for (c, _, stored) in entries {
                let d = batch.delta(c).1;
                let stored = i64::from(stored);
                if info.condemned {
                    d.condemned -= 1;
                    d.condemned_stored -= stored;
                } else {
                    d.copies -= 1;
                    d.copies_stored -= stored;
                }
                match now {
                    Some(true) => {
                        d.condemned += 1;
                        d.condemned_stored += stored;
                    }
                    Some(false) => {
                        d.copies += 1;
                        d.copies_stored += stored;
                    }
                    None => {}
                }
            }
            match now {
                Some(c) => batch.wb.put(key(PACK, &[&id.0]), pack_value(info.file_bytes, c)),
                None => {
                    batch.wb.delete(key(PACK, &[&id.0]));
                    batch.wb.delete(key(PACK_ENTRIES, &[&id.0]));
                }
            }
            if batch.full(limit) {
                self.apply(std::mem::take(&mut batch))?;
            }
        }
        for (id, k) in listed.iter().filter(|(id, _)| !applied.contains_key(id)) {
            let file = match store.backend.open(k) {
                Ok(f) => f,
                // Deleted by a gc since the listing: as if never listed.
                Err(Error::Missing { .. }) => continue,
                Err(e) => return Err(e),
            };
            let entries = pack::read_footer(file.as_ref(), &Object::Pack { key: k.to_owned() })?;
            let is_condemned = condemned.contains(id);
            batch.refs += entries.len();
            let mut value = Vec::with_capacity(40 * entries.len());
            // A chunk's stored bytes: its frame, or its share of its group's.
            for (e, stored) in entries.iter().zip(pack::framed_shares(&entries)) {
                let stored = u32::try_from(stored)
                    .map_err(|_| Error::corrupt(Object::Pack { key: k.to_owned() }, "a frame over 4 GiB"))?;
                value.extend_from_slice(&e.id.0);
                value.extend_from_slice(&e.raw_len.to_le_bytes());
                value.extend_from_slice(&stored.to_le_bytes());
                let d = batch.delta(e.id).1;
                d.raw = e.raw_len;
                if is_condemned {
                    d.condemned += 1;
                    d.condemned_stored += i64::from(stored);
                } else {
                    d.copies += 1;
                    d.copies_stored += i64::from(stored);
                }
            }
            let info = PackInfo {
                id: *id,
                file_bytes: file.size()?,
                condemned: is_condemned,
            };
            batch.wb.put(key(PACK_ENTRIES, &[&id.0]), value);
            batch
                .wb
                .put(key(PACK, &[&id.0]), pack_value(info.file_bytes, is_condemned));
            now_held.push(info);
            if batch.full(limit) {
                self.apply(std::mem::take(&mut batch))?;
            }
        }
        self.apply(batch)?;
        Ok(now_held)
    }

    fn refresh_images(
        &mut self,
        store: &Store,
        refs: &[(TagRef, RefRecord)],
        progress: &dyn Progress,
    ) -> Result<()> {
        let mut live: BTreeMap<ImageId, BTreeSet<u64>> = BTreeMap::new();
        let mut sizes: HashMap<ImageId, u64> = HashMap::new();
        for (t, r) in refs {
            live.entry(r.image).or_default().insert(name_key(&t.name));
            sizes.insert(r.image, r.size);
        }
        let mut applied: BTreeMap<ImageId, BTreeSet<u64>> = BTreeMap::new();
        for (k, _) in self.scan(PAIR)? {
            if k.len() != 40 {
                return Err(self.err("bad pair key"));
            }
            let image = ImageId(Digest(k[..32].try_into().expect("32 bytes")));
            applied
                .entry(image)
                .or_default()
                .insert(u64::from_le_bytes(k[32..].try_into().expect("8 bytes")));
        }
        // Commits of one name share most chunks: applied together, a batch
        // touches few distinct chunks. So: by name, then time; gone images last.
        let mut order: HashMap<ImageId, (&str, u64)> = HashMap::new();
        for (t, r) in refs {
            let k = (t.name.as_str(), r.created);
            order.entry(r.image).and_modify(|o| *o = (*o).min(k)).or_insert(k);
        }
        let none = BTreeSet::new();
        let mut changed: Vec<ImageId> = live
            .keys()
            .chain(applied.keys())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|id| live.get(id) != applied.get(id))
            .copied()
            .collect();
        changed.sort_by_key(|id| order.get(id).map_or((true, ("", 0)), |o| (false, *o)));
        let entering_bytes: u64 = changed
            .iter()
            .filter(|id| !applied.contains_key(id))
            .map(|id| sizes[id])
            .sum();
        // Finished on every way out, errors included.
        let _bar = (entering_bytes > 0).then(|| {
            progress.start("report index", Some(entering_bytes));
            Finish(progress)
        });
        // An image archived (or whose archive is gone) since it was applied
        // holds other chunks now: it leaves with the old ones, in a batch
        // of its own, and enters again with the new.
        let archived = store.archived_images()?;
        let applied_archived: BTreeSet<ImageId> = self
            .scan(ARCHIVED)?
            .into_iter()
            .map(|(k, _)| Digest(k[..32].try_into().expect("32 bytes")))
            .map(ImageId)
            .collect();
        let retiered: Vec<ImageId> = live
            .keys()
            .filter(|id| applied.contains_key(id) && archived.contains(*id) != applied_archived.contains(*id))
            .copied()
            .collect();
        let limit = batch_refs();
        let mut batch = Batch::default();
        for id in &retiered {
            let old = &applied[id];
            self.step(
                store,
                &mut batch,
                id,
                old,
                &none,
                applied_archived.contains(id),
                progress,
                &sizes,
            )?;
            self.apply(std::mem::take(&mut batch))?;
            let new = &live[id];
            self.step(
                store,
                &mut batch,
                id,
                &none,
                new,
                archived.contains(id),
                progress,
                &sizes,
            )?;
            self.apply(std::mem::take(&mut batch))?;
        }
        for id in changed.into_iter().filter(|id| !retiered.contains(id)) {
            let (old, new) = (applied.get(&id).unwrap_or(&none), live.get(&id).unwrap_or(&none));
            // Chunks as applied; an image entering, as it is held now.
            let tier = if old.is_empty() {
                archived.contains(&id)
            } else {
                applied_archived.contains(&id)
            };
            self.step(store, &mut batch, &id, old, new, tier, progress, &sizes)?;
            if batch.full(limit) {
                self.apply(std::mem::take(&mut batch))?;
            }
        }
        self.apply(batch)
    }

    /// Adds to `batch` the image `id` going from the names `old` to `new`,
    /// its chunks those of its archive stream if `archived`, else of its
    /// manifest.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        store: &Store,
        batch: &mut Batch,
        id: &ImageId,
        old: &BTreeSet<u64>,
        new: &BTreeSet<u64>,
        archived: bool,
        progress: &dyn Progress,
        sizes: &HashMap<ImageId, u64>,
    ) -> Result<()> {
        let (entering, leaving) = (old.is_empty(), new.is_empty());
        let chunks = if leaving {
            // gc keeps manifests and archive streams, so this holds; if
            // one went, the caller builds the view anew, without the image.
            image_parts(store, id, archived)
                .map_err(|e| self.err(format!("image {id} left: {e}")))?
                .0
        } else {
            let (chunks, meta) = image_parts(store, id, archived)?;
            if entering {
                batch.wb.put(key(META, &[&id.0 .0]), meta.encode());
                if archived {
                    batch.wb.put(key(ARCHIVED, &[&id.0 .0]), b"");
                } else {
                    batch.wb.delete(key(ARCHIVED, &[&id.0 .0]));
                }
            }
            chunks
        };
        if leaving {
            batch.wb.delete(key(ARCHIVED, &[&id.0 .0]));
        }
        if entering {
            progress.advance(sizes.get(id).copied().unwrap_or(0));
        }
        batch.refs += chunks.len();
        let p = prefix(&id.0);
        let names: Vec<(u64, i64)> = new
            .difference(old)
            .map(|k| (*k, 1))
            .chain(old.difference(new).map(|k| (*k, -1)))
            .collect();
        let mut positions = Vec::with_capacity(if entering { chunks.len() } else { 0 });
        for (c, len) in &chunks {
            let (i, d) = batch.delta(*c);
            d.raw = *len;
            if entering || leaving {
                d.images += if entering { 1 } else { -1 };
                d.xor ^= p;
            }
            for (k, by) in &names {
                d.name(*k, *by);
            }
            if entering {
                positions.push(i);
            }
        }
        for k in new.difference(old) {
            batch.wb.put(key(PAIR, &[&id.0 .0, &k.to_le_bytes()]), b"");
        }
        for k in old.difference(new) {
            batch.wb.delete(key(PAIR, &[&id.0 .0, &k.to_le_bytes()]));
        }
        if leaving {
            batch.leaving.push(p);
        } else if entering {
            batch.entering.push((p, positions));
        }
        Ok(())
    }

    /// Applies one batch's chunk changes and moves the totals, in one write.
    fn apply(&mut self, mut batch: Batch) -> Result<()> {
        // Looked up in key order: RocksDB reads neighbouring keys together.
        let mut order: Vec<u32> = (0..batch.deltas.len() as u32).collect();
        order.sort_unstable_by_key(|&i| batch.deltas[i as usize].0 .0);
        let ids: Vec<ChunkId> = order.iter().map(|&i| batch.deltas[i as usize].0).collect();
        let olds = self.chunks(&ids)?;
        let mut changes = Changes::default();
        // By position: stored bytes of one copy, for the new images' totals.
        let mut stored = vec![0u64; if batch.entering.is_empty() { 0 } else { ids.len() }];
        for (&i, old) in order.iter().zip(olds) {
            let (c, delta) = &batch.deltas[i as usize];
            let new = old
                .clone()
                .apply(delta)
                .ok_or_else(|| self.err(format!("chunk {} counts below zero", c.to_hex())))?;
            old.contribute(-1, &mut changes);
            new.contribute(1, &mut changes);
            if new.is_empty() {
                batch.wb.delete(key(CHUNK, &[&c.0]));
            } else {
                batch.wb.put(key(CHUNK, &[&c.0]), new.encode());
            }
            if let Some(s) = stored.get_mut(i as usize) {
                *s = new.stored_one();
            }
        }
        for (p, positions) in &batch.entering {
            let mut t = SetTotals::default();
            for &i in positions {
                t.all.add(1, batch.deltas[i as usize].1.raw, stored[i as usize]);
            }
            t.exclusive = changes.images.remove(p).unwrap_or_default();
            batch.wb.put(key(IMAGE, &[&p.to_le_bytes()]), t.encode());
        }
        for p in &batch.leaving {
            changes.images.remove(p);
            batch.wb.delete(key(IMAGE, &[&p.to_le_bytes()]));
        }
        for (p, ex) in &changes.images {
            let k = key(IMAGE, &[&p.to_le_bytes()]);
            let mut t = self.set_totals(&k)?;
            t.exclusive.plus(ex);
            batch.wb.put(k, t.encode());
        }
        for (n, d) in &changes.names {
            let k = key(NAME, &[&n.to_le_bytes()]);
            let mut t = self.set_totals(&k)?;
            t.all.plus(&d.all);
            t.exclusive.plus(&d.exclusive);
            if t.all.chunks == 0 {
                batch.wb.delete(k);
            } else {
                batch.wb.put(k, t.encode());
            }
        }
        let mut s = self.store_totals()?;
        let d = &changes.store;
        s.live.plus(&d.live);
        s.first_copies += d.first_copies;
        s.duplicate_bytes += d.duplicate_bytes;
        s.unreferenced_bytes += d.unreferenced_bytes;
        batch.wb.put(STORE, s.encode());
        // Without a write-ahead log: a crash loses what was not yet flushed,
        // and a flush holds a prefix of the batches (one column family), so
        // the view is behind, never wrong. Opening then has no log to replay.
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        self.db.write_opt(batch.wb, &wo).map_err(|e| self.err(e))?;
        self.unflushed = true;
        Ok(())
    }
}

fn pack_value(file_bytes: u64, condemned: bool) -> Vec<u8> {
    let mut v = file_bytes.to_le_bytes().to_vec();
    v.push(u8::from(condemned));
    v
}

impl Batch {
    /// The pending change of chunk `c`, and its position.
    fn delta(&mut self, c: ChunkId) -> (u32, &mut Delta) {
        let next = u32::try_from(self.deltas.len()).expect("batches stay far below 4G chunks");
        let i = *self.index.entry(c).or_insert(next);
        if i == next {
            self.deltas.push((c, Delta::default()));
        }
        (i, &mut self.deltas[i as usize].1)
    }

    /// Whether to apply it now: `refs` chunk references gathered, or
    /// [`BATCH_CHUNKS`] distinct chunks changed.
    fn full(&self, refs: usize) -> bool {
        self.refs >= refs || self.deltas.len() >= BATCH_CHUNKS.min(refs)
    }
}

/// Ends a progress display when dropped.
struct Finish<'a>(&'a dyn Progress);

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// Changes gathered for one atomic write.
#[derive(Default)]
struct Batch {
    /// Chunk -> its position in `deltas`.
    index: DigestMap<u32>,
    deltas: Vec<(ChunkId, Delta)>,
    /// Chunk references gathered (see `BATCH_REFS`).
    refs: usize,
    wb: WriteBatch,
    /// Images that enter the view (prefix, positions of their chunks in
    /// `deltas`): their totals are set.
    entering: Vec<(u64, Vec<u32>)>,
    /// Images that leave it (prefix): their totals are dropped.
    leaving: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_of_another_version_is_rebuilt_not_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let view = View::open(dir.path(), false).unwrap();
            view.db.put(SCHEMA, b"1").unwrap();
            view.db.put([PACK, 7], b"old layout").unwrap();
        }
        let view = View::open(dir.path(), false).expect("an outdated view opens");
        assert_eq!(view.get(SCHEMA).unwrap().as_deref(), Some(SCHEMA_VERSION));
        assert_eq!(view.get(&[PACK, 7]).unwrap(), None, "the old entries are gone");
    }
}
