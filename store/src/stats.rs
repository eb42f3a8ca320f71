//! Storage reports: what is stored, what it costs, what a delete frees.
//! Computes; never prints (the CLI renders the `Serialize` structs).
//!
//! Every figure comes from the store's truth — refs, manifests, pack
//! footers and the pending gc plan — never from the chunk index, which holds
//! one location per chunk and so cannot see duplicate copies.
//!
//! Manifests and pack footers are immutable and named by content, so a
//! summary of each (an image's distinct chunks; a pack's size and entries) is
//! kept in a cache file in this host's index directory, keyed by image or
//! pack id. A cached summary can never be stale: a new put adds new ids, an
//! `rm` removes a ref (refs are read fresh every time), gc deletes packs
//! (packs are listed fresh every time; summaries of vanished ids are
//! dropped). Another host's put or gc is seen the same way.
//!
//! Memory: one summary per live image (36 B per distinct chunk of it), one
//! per pack (40 B per chunk copy), and two hash maps over distinct chunks
//! (about 80 B per chunk): about 150 MB for a store of a million chunks.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::backend::atomic_write;
use crate::error::{Error, Result};
use crate::eventlog::Event;
use crate::id::{ChunkId, Digest, ImageId, PackId};
use crate::manifest::Entry;
use crate::pack::{self, PACKS_DIR};
use crate::refs::{RefRecord, TagRef};
use crate::Store;

/// Pack bytes that are not chunk data: per chunk copy, a 48 B frame header
/// before the stored bytes and a 56 B footer entry.
pub const CHUNK_OVERHEAD: u64 = 48 + 56;
/// Pack bytes that are not chunk data: per pack, a 32 B header and a 48 B tail.
pub const PACK_OVERHEAD: u64 = 32 + 48;
/// File name of the summary cache in the local index directory.
pub const CACHE_FILE: &str = "report-cache.bin";
const CACHE_MAGIC: &[u8; 8] = b"IMGSRPTC";
const CACHE_VERSION: u32 = 1;

/// An image's distinct chunks, from its manifest.
#[derive(Debug, Clone)]
struct ImageSummary {
    size: u64,
    /// Distinct chunk ids and raw lengths, each once.
    chunks: Vec<(ChunkId, u32)>,
}

/// A pack's size and footer.
#[derive(Debug, Clone)]
struct PackSummary {
    file_bytes: u64,
    /// Chunk id, raw length, stored length.
    entries: Vec<(ChunkId, u32, u32)>,
}

/// Everything the reports need, read once.
pub struct Snapshot {
    refs: Vec<(TagRef, RefRecord)>,
    images: HashMap<ImageId, Arc<ImageSummary>>,
    /// (id, summary, condemned by the pending plan).
    packs: Vec<(PackId, Arc<PackSummary>, bool)>,
    /// Image -> number of refs naming it.
    image_refs: HashMap<ImageId, u32>,
    /// Live distinct chunk -> number of live images that use it.
    chunk_images: HashMap<ChunkId, u32>,
    /// Chunk -> stored length of one copy (a non-condemned one if any).
    stored: HashMap<ChunkId, u32>,
    index_bytes: u64,
    pack_size: u64,
}

// ---------------------------------------------------------------- reports

/// `imgstore stats`: the whole store in a few figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StatsReport {
    /// Sum of the sizes of all refs' images (a tag counts each time).
    pub logical_bytes: u64,
    /// Raw bytes of the distinct chunks live images use (after dedup;
    /// zero runs cost nothing).
    pub unique_bytes: u64,
    /// Compressed bytes of those chunks, one copy each (no pack framing).
    pub live_stored_bytes: u64,
    /// Bytes of all pack files on disk: what the store really uses for data.
    pub stored_bytes: u64,
    /// logical / unique.
    pub dedup_ratio: f64,
    /// unique / live stored.
    pub compression_ratio: f64,
    /// logical / stored.
    pub total_ratio: f64,
    /// Refs (name:tag).
    pub refs: u64,
    /// Distinct images they name.
    pub images: u64,
    /// Distinct names.
    pub names: u64,
    /// Distinct chunks live images use.
    pub chunks: u64,
    /// Pack files.
    pub packs: u64,
    /// Pack bytes / (packs * pack size): how full packs are on average.
    pub pack_fill: f64,
    /// The store's target pack size.
    pub pack_size: u64,
    /// Garbage waiting for gc: `condemned_bytes + unreferenced_bytes`.
    pub garbage_bytes: u64,
    /// Bytes of packs the pending gc plan condemned (freed by the next gc run
    /// after the grace period).
    pub condemned_bytes: u64,
    /// Packs condemned.
    pub condemned_packs: u64,
    /// Chunk copies (stored bytes + framing) in other packs that no image
    /// uses: a gc condemns them (or repacks around them).
    pub unreferenced_bytes: u64,
    /// Extra copies of live chunks (two puts stored the same new chunk at
    /// once), stored bytes + framing; kept by gc unless repacked.
    pub duplicate_bytes: u64,
    /// Pack framing of the live, one-copy chunks and pack headers/tails in
    /// non-condemned packs: `CHUNK_OVERHEAD` per chunk + `PACK_OVERHEAD` per pack.
    pub overhead_bytes: u64,
    /// Framing per chunk copy (48 B frame header + 56 B footer entry).
    pub chunk_overhead: u64,
    /// Framing per pack (32 B header + 48 B tail).
    pub pack_overhead: u64,
    /// This host's local index (RocksDB + cache) on local disk.
    pub index_bytes: u64,
    /// The newest ref's `created` time (seconds since the epoch; 0 if none).
    pub last_put: u64,
}

/// One row of `imgstore du`: a set of refs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DuRow {
    /// The group: a name, `name:tag`, `label=value`, or `total`.
    pub group: String,
    /// Refs in the set.
    pub refs: u64,
    /// Distinct images.
    pub images: u64,
    /// Sum of the refs' image sizes.
    pub logical_bytes: u64,
    /// Distinct chunks the set's images use.
    pub chunks: u64,
    /// Their raw bytes.
    pub unique_bytes: u64,
    /// Their stored bytes.
    pub unique_stored_bytes: u64,
    /// Stored bytes of those chunks that images outside the set also use.
    pub shared_stored_bytes: u64,
    /// Chunks only this set's images use.
    pub exclusive_chunks: u64,
    /// Their raw bytes.
    pub exclusive_bytes: u64,
    /// Their stored bytes.
    pub exclusive_stored_bytes: u64,
    /// What removing exactly these refs and a gc frees on disk:
    /// exclusive stored bytes + `CHUNK_OVERHEAD` per exclusive chunk.
    pub frees_bytes: u64,
}

/// `imgstore du`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DuReport {
    /// One row per group.
    pub rows: Vec<DuRow>,
    /// All selected refs as one set (not the sum of the rows).
    pub total: DuRow,
}

/// One commit of `imgstore history`.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryRow {
    /// The tag.
    pub tag: String,
    /// The image.
    pub image: ImageId,
    /// When it was put (seconds since the epoch).
    pub created: u64,
    /// Image size.
    pub size: u64,
    /// Chunks the put added to the store (kept from the put).
    pub added_chunks: u64,
    /// Raw bytes the put added.
    pub added_bytes: u64,
    /// Stored bytes the put added.
    pub added_stored_bytes: u64,
    /// Stored bytes only this ref's image holds now (0 if another ref
    /// names the same image).
    pub exclusive_stored_bytes: u64,
    /// Raw bytes of the same.
    pub exclusive_bytes: u64,
}

/// `imgstore history NAME`.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryReport {
    /// The name.
    pub name: String,
    /// Its refs, oldest first.
    pub commits: Vec<HistoryRow>,
}

/// `imgstore diff REF1 REF2`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DiffReport {
    /// First image.
    pub a: String,
    /// Second image.
    pub b: String,
    /// Distinct chunks both use.
    pub common_chunks: u64,
    /// Their raw bytes.
    pub common_bytes: u64,
    /// Their stored bytes.
    pub common_stored_bytes: u64,
    /// Chunks only in the first.
    pub only_a_chunks: u64,
    /// Raw bytes.
    pub only_a_bytes: u64,
    /// Stored bytes.
    pub only_a_stored_bytes: u64,
    /// Chunks only in the second.
    pub only_b_chunks: u64,
    /// Raw bytes.
    pub only_b_bytes: u64,
    /// Stored bytes.
    pub only_b_stored_bytes: u64,
}

/// How `du` groups the selected refs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupBy {
    /// One group per name.
    Name,
    /// One group per ref.
    Tag,
    /// One group per value of this label (`-` when absent).
    Label(String),
}

/// A point of the store's growth: a put and the stored bytes written so far.
#[derive(Debug, Clone, Serialize)]
pub struct GrowthPoint {
    /// Seconds since the epoch.
    pub time: u64,
    /// The ref put.
    #[serde(rename = "ref")]
    pub reference: String,
    /// Stored bytes this put added.
    pub added_stored_bytes: u64,
    /// Stored bytes all puts so far added (gc's deletions not subtracted).
    pub cumulative_stored_bytes: u64,
}

/// The store's growth from the event log, oldest first.
pub fn growth(events: &[Event]) -> Vec<GrowthPoint> {
    let mut total = 0;
    events
        .iter()
        .filter(|e| e.action == "put")
        .map(|e| {
            let added = e.added.map_or(0, |a| a.stored_bytes);
            total += added;
            GrowthPoint {
                time: e.time,
                reference: e.reference.clone(),
                added_stored_bytes: added,
                cumulative_stored_bytes: total,
            }
        })
        .collect()
}

// ---------------------------------------------------------------- snapshot

impl Store {
    /// Reads refs, image and pack summaries (cached in the index directory)
    /// and the gc plan: everything `stats`, `du`, `history` and `diff` need.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let cache_path = self.index_dir.join(CACHE_FILE);
        let mut cache = Cache::load(&cache_path);
        let mut dirty = false;

        let refs = self.refs(None)?;
        let mut images = HashMap::new();
        for (_, r) in &refs {
            if images.contains_key(&r.image) {
                continue;
            }
            let summary = match cache.images.get(&r.image) {
                Some(s) => s.clone(),
                None => {
                    let m = self.manifest(&r.image)?;
                    let mut seen = HashSet::new();
                    let chunks = m
                        .entries
                        .iter()
                        .filter_map(|e| match e {
                            Entry::Chunk { id, len } if seen.insert(*id) => Some((*id, *len)),
                            _ => None,
                        })
                        .collect();
                    dirty = true;
                    Arc::new(ImageSummary { size: m.size, chunks })
                }
            };
            images.insert(r.image, summary);
        }

        let condemned = self.condemned_packs()?;
        let mut packs = Vec::new();
        for shard in self.backend.list(PACKS_DIR)? {
            for name in self.backend.list(&format!("{PACKS_DIR}/{shard}"))? {
                let Ok(id) = Digest::from_hex(&name) else {
                    continue;
                };
                let summary = match cache.packs.get(&id) {
                    Some(s) => s.clone(),
                    None => {
                        let key = format!("{PACKS_DIR}/{shard}/{name}");
                        let file = match self.backend.open(&key) {
                            Ok(f) => f,
                            // Deleted by a gc since the listing.
                            Err(Error::Corrupt { .. }) if self.backend.modified(&key)?.is_none() => continue,
                            Err(e) => return Err(e),
                        };
                        let entries = pack::read_footer(file.as_ref(), &format!("pack {key}"))?
                            .iter()
                            .map(|e| (e.id, e.raw_len, e.stored_len))
                            .collect();
                        dirty = true;
                        Arc::new(PackSummary {
                            file_bytes: file.size()?,
                            entries,
                        })
                    }
                };
                packs.push((id, summary, condemned.contains(&id)));
            }
        }

        let mut chunk_images: HashMap<ChunkId, u32> = HashMap::new();
        for s in images.values() {
            for (c, _) in &s.chunks {
                *chunk_images.entry(*c).or_default() += 1;
            }
        }
        let mut stored: HashMap<ChunkId, u32> = HashMap::new();
        // Condemned packs first, so a copy that stays wins.
        for (_, s, _) in packs.iter().filter(|p| p.2).chain(packs.iter().filter(|p| !p.2)) {
            for (c, _, st) in &s.entries {
                stored.insert(*c, *st);
            }
        }

        if dirty || cache.images.len() != images.len() || cache.packs.len() != packs.len() {
            cache.images = images.clone();
            cache.packs = packs.iter().map(|(id, s, _)| (*id, s.clone())).collect();
            // A cache is an optimisation: failing to write it is not an error.
            if let Err(e) = cache.save(&cache_path) {
                tracing::debug!(error = %e, "report cache not written");
            }
        }
        let mut image_refs: HashMap<ImageId, u32> = HashMap::new();
        for (_, r) in &refs {
            *image_refs.entry(r.image).or_default() += 1;
        }
        Ok(Snapshot {
            image_refs,
            refs,
            images,
            packs,
            chunk_images,
            stored,
            index_bytes: dir_bytes(&self.index_dir),
            pack_size: self.config.pack_size,
        })
    }
}

/// Sum of file sizes below `dir` (secondaries of running commands included).
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

impl Snapshot {
    /// The refs read, sorted.
    pub fn refs(&self) -> &[(TagRef, RefRecord)] {
        &self.refs
    }

    fn stored_of(&self, c: &ChunkId) -> u64 {
        self.stored.get(c).copied().map_or(0, u64::from)
    }

    /// `imgstore stats`.
    pub fn stats(&self) -> StatsReport {
        let mut r = StatsReport {
            refs: self.refs.len() as u64,
            images: self.images.len() as u64,
            names: self
                .refs
                .iter()
                .map(|(t, _)| &t.name)
                .collect::<BTreeSet<_>>()
                .len() as u64,
            chunks: self.chunk_images.len() as u64,
            packs: self.packs.len() as u64,
            pack_size: self.pack_size,
            chunk_overhead: CHUNK_OVERHEAD,
            pack_overhead: PACK_OVERHEAD,
            index_bytes: self.index_bytes,
            last_put: self.refs.iter().map(|(_, r)| r.created).max().unwrap_or(0),
            ..StatsReport::default()
        };
        r.logical_bytes = self.refs.iter().map(|(_, rec)| rec.size).sum();
        let mut live: HashMap<ChunkId, u32> = HashMap::with_capacity(self.chunk_images.len());
        for s in self.images.values() {
            for (c, len) in &s.chunks {
                live.insert(*c, *len);
            }
        }
        r.unique_bytes = live.values().map(|l| u64::from(*l)).sum();
        r.live_stored_bytes = live.keys().map(|c| self.stored_of(c)).sum();
        // Walk the non-condemned copies: the first copy of a live chunk is
        // its live copy, later ones are duplicates, others unreferenced.
        let mut seen: HashSet<ChunkId> = HashSet::with_capacity(live.len());
        for (_, p, condemned) in &self.packs {
            r.stored_bytes += p.file_bytes;
            if *condemned {
                r.condemned_bytes += p.file_bytes;
                r.condemned_packs += 1;
                continue;
            }
            r.overhead_bytes += PACK_OVERHEAD;
            for (c, _, st) in &p.entries {
                let st = u64::from(*st);
                if !live.contains_key(c) {
                    r.unreferenced_bytes += st + CHUNK_OVERHEAD;
                } else if !seen.insert(*c) {
                    r.duplicate_bytes += st + CHUNK_OVERHEAD;
                } else {
                    r.overhead_bytes += CHUNK_OVERHEAD;
                }
            }
        }
        // A live chunk whose only copy is condemned (rescued by the next
        // gc): its stored bytes are inside condemned_bytes.
        r.garbage_bytes = r.condemned_bytes + r.unreferenced_bytes;
        r.dedup_ratio = ratio(r.logical_bytes, r.unique_bytes);
        r.compression_ratio = ratio(r.unique_bytes, r.live_stored_bytes);
        r.total_ratio = ratio(r.logical_bytes, r.stored_bytes);
        r.pack_fill = ratio(r.stored_bytes, r.packs * self.pack_size);
        r
    }

    /// The figures of one set of refs (indices into [`Snapshot::refs`]).
    fn set_row(&self, group: String, members: &[usize]) -> DuRow {
        let mut row = DuRow {
            group,
            refs: members.len() as u64,
            ..DuRow::default()
        };
        // An image is freed only if every ref naming it is in the set.
        let mut set_images: BTreeMap<ImageId, u32> = BTreeMap::new();
        for &i in members {
            let rec = &self.refs[i].1;
            row.logical_bytes += rec.size;
            *set_images.entry(rec.image).or_default() += 1;
        }
        let held_outside = |id: &ImageId, n: &u32| self.image_refs.get(id) != Some(n);
        row.images = set_images.len() as u64;
        // Per chunk: how many of the set's wholly-inside images use it.
        let mut counts: HashMap<ChunkId, (u32, u32)> = HashMap::new();
        for (id, n) in &set_images {
            let Some(s) = self.images.get(id) else { continue };
            let inside_image = u32::from(!held_outside(id, n));
            for (c, len) in &s.chunks {
                let e = counts.entry(*c).or_insert((0, *len));
                e.0 += inside_image;
            }
        }
        for (c, (n, len)) in &counts {
            let len = u64::from(*len);
            let st = self.stored_of(c);
            row.chunks += 1;
            row.unique_bytes += len;
            row.unique_stored_bytes += st;
            if *n > 0 && self.chunk_images.get(c) == Some(n) {
                row.exclusive_chunks += 1;
                row.exclusive_bytes += len;
                row.exclusive_stored_bytes += st;
            } else {
                row.shared_stored_bytes += st;
            }
        }
        row.frees_bytes = row.exclusive_stored_bytes + row.exclusive_chunks * CHUNK_OVERHEAD;
        row
    }

    /// Indices of the refs `selectors` pick (`NAME` or `NAME:TAG`; all refs
    /// when empty). A selector that picks nothing is a not-found error.
    pub fn select(&self, selectors: &[String]) -> Result<Vec<usize>> {
        if selectors.is_empty() {
            return Ok((0..self.refs.len()).collect());
        }
        let mut out = BTreeSet::new();
        for s in selectors {
            let before = out.len();
            let hit = |t: &TagRef| match s.split_once(':') {
                Some((n, tag)) => t.name == n && t.tag == tag,
                None => t.name == *s,
            };
            out.extend(
                self.refs
                    .iter()
                    .enumerate()
                    .filter(|(_, (t, _))| hit(t))
                    .map(|(i, _)| i),
            );
            if out.len() == before && !self.refs.iter().any(|(t, _)| hit(t)) {
                return Err(Error::not_found(format!("ref or name {s}")));
            }
        }
        Ok(out.into_iter().collect())
    }

    /// `imgstore du`: the selected refs grouped, and all of them as one set.
    pub fn du(&self, selected: &[usize], by: &GroupBy) -> DuReport {
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for &i in selected {
            let (t, rec) = &self.refs[i];
            let key = match by {
                GroupBy::Name => t.name.clone(),
                GroupBy::Tag => t.to_string(),
                GroupBy::Label(k) => format!("{k}={}", rec.labels.get(k).map_or("-", String::as_str)),
            };
            groups.entry(key).or_default().push(i);
        }
        DuReport {
            rows: groups.into_iter().map(|(g, m)| self.set_row(g, &m)).collect(),
            total: self.set_row("total".into(), selected),
        }
    }

    /// `imgstore history NAME`: the name's refs, oldest first.
    pub fn history(&self, name: &str) -> Result<HistoryReport> {
        let mut commits: Vec<HistoryRow> = self
            .refs
            .iter()
            .enumerate()
            .filter(|(_, (t, _))| t.name == name)
            .map(|(i, (t, rec))| {
                let one = self.set_row(String::new(), &[i]);
                HistoryRow {
                    tag: t.tag.clone(),
                    image: rec.image,
                    created: rec.created,
                    size: rec.size,
                    added_chunks: rec.added.chunks,
                    added_bytes: rec.added.raw_bytes,
                    added_stored_bytes: rec.added.stored_bytes,
                    exclusive_stored_bytes: one.exclusive_stored_bytes,
                    exclusive_bytes: one.exclusive_bytes,
                }
            })
            .collect();
        if commits.is_empty() {
            return Err(Error::not_found(format!("name {name}")));
        }
        commits.sort_by(|a, b| (a.created, &a.tag).cmp(&(b.created, &b.tag)));
        Ok(HistoryReport {
            name: name.to_string(),
            commits,
        })
    }

    /// Per-name rows with the whole store as the total (for reports).
    pub fn du_all(&self) -> DuReport {
        self.du(&(0..self.refs.len()).collect::<Vec<_>>(), &GroupBy::Name)
    }
}

impl Store {
    /// `imgstore diff`: chunks and bytes two images have in common.
    pub fn diff(&self, a: &ImageId, b: &ImageId, snapshot: &Snapshot) -> Result<DiffReport> {
        let chunks = |id: &ImageId| -> Result<HashMap<ChunkId, u32>> {
            if let Some(s) = snapshot.images.get(id) {
                return Ok(s.chunks.iter().copied().collect());
            }
            let m = self.manifest(id)?;
            Ok(m.entries
                .iter()
                .filter_map(|e| match e {
                    Entry::Chunk { id, len } => Some((*id, *len)),
                    Entry::Zero { .. } => None,
                })
                .collect())
        };
        let ca = chunks(a)?;
        let cb = chunks(b)?;
        let mut r = DiffReport {
            a: a.to_string(),
            b: b.to_string(),
            ..DiffReport::default()
        };
        for (c, len) in &ca {
            let (len, st) = (u64::from(*len), snapshot.stored_of(c));
            if cb.contains_key(c) {
                r.common_chunks += 1;
                r.common_bytes += len;
                r.common_stored_bytes += st;
            } else {
                r.only_a_chunks += 1;
                r.only_a_bytes += len;
                r.only_a_stored_bytes += st;
            }
        }
        for (c, len) in cb.iter().filter(|(c, _)| !ca.contains_key(c)) {
            r.only_b_chunks += 1;
            r.only_b_bytes += u64::from(*len);
            r.only_b_stored_bytes += snapshot.stored_of(c);
        }
        Ok(r)
    }
}

// ---------------------------------------------------------------- cache

/// The summary cache: a local file, never part of the store.
///
/// ```text
/// magic "IMGSRPTC", version u32, image count u64,
///   per image: id [32], size u64, chunk count u32, per chunk: id [32], raw_len u32
/// pack count u64,
///   per pack: id [32], file bytes u64, entry count u32,
///     per entry: id [32], raw_len u32, stored_len u32
/// BLAKE3 of everything before [32]
/// ```
#[derive(Default)]
struct Cache {
    images: HashMap<ImageId, Arc<ImageSummary>>,
    packs: HashMap<PackId, Arc<PackSummary>>,
}

struct Reader<'a> {
    b: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.b.len() < n {
            return None;
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Some(h)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn id(&mut self) -> Option<Digest> {
        Some(Digest(self.take(32)?.try_into().ok()?))
    }
}

impl Cache {
    /// A damaged, missing or older cache is simply empty: it is rebuilt.
    fn load(path: &Path) -> Cache {
        fs::read(path)
            .ok()
            .and_then(|b| Self::decode(&b))
            .unwrap_or_default()
    }

    fn decode(bytes: &[u8]) -> Option<Cache> {
        let (body, sum) = bytes.split_at(bytes.len().checked_sub(32)?);
        if Digest::of(body).0 != sum || body.get(..8)? != CACHE_MAGIC {
            return None;
        }
        let mut r = Reader { b: &body[8..] };
        if r.u32()? != CACHE_VERSION {
            return None;
        }
        let mut cache = Cache::default();
        for _ in 0..r.u64()? {
            let id = ImageId(r.id()?);
            let size = r.u64()?;
            let n = r.u32()? as usize;
            let mut chunks = Vec::with_capacity(n.min(r.b.len() / 36));
            for _ in 0..n {
                chunks.push((r.id()?, r.u32()?));
            }
            cache.images.insert(id, Arc::new(ImageSummary { size, chunks }));
        }
        for _ in 0..r.u64()? {
            let id = r.id()?;
            let file_bytes = r.u64()?;
            let n = r.u32()? as usize;
            let mut entries = Vec::with_capacity(n.min(r.b.len() / 40));
            for _ in 0..n {
                entries.push((r.id()?, r.u32()?, r.u32()?));
            }
            cache
                .packs
                .insert(id, Arc::new(PackSummary { file_bytes, entries }));
        }
        r.b.is_empty().then_some(cache)
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(CACHE_MAGIC);
        out.extend_from_slice(&CACHE_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.images.len() as u64).to_le_bytes());
        for (id, s) in &self.images {
            out.extend_from_slice(&id.0 .0);
            out.extend_from_slice(&s.size.to_le_bytes());
            out.extend_from_slice(&(s.chunks.len() as u32).to_le_bytes());
            for (c, len) in &s.chunks {
                out.extend_from_slice(&c.0);
                out.extend_from_slice(&len.to_le_bytes());
            }
        }
        out.extend_from_slice(&(self.packs.len() as u64).to_le_bytes());
        for (id, p) in &self.packs {
            out.extend_from_slice(&id.0);
            out.extend_from_slice(&p.file_bytes.to_le_bytes());
            out.extend_from_slice(&(p.entries.len() as u32).to_le_bytes());
            for (c, raw, st) in &p.entries {
                out.extend_from_slice(&c.0);
                out.extend_from_slice(&raw.to_le_bytes());
                out.extend_from_slice(&st.to_le_bytes());
            }
        }
        let sum = Digest::of(&out);
        out.extend_from_slice(&sum.0);
        out
    }

    fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        atomic_write(path, &self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_round_trips_and_rejects_damage() {
        let mut c = Cache::default();
        c.images.insert(
            ImageId(Digest::of(b"i")),
            Arc::new(ImageSummary {
                size: 9,
                chunks: vec![(Digest::of(b"a"), 5), (Digest::of(b"b"), 4)],
            }),
        );
        c.packs.insert(
            Digest::of(b"p"),
            Arc::new(PackSummary {
                file_bytes: 300,
                entries: vec![(Digest::of(b"a"), 5, 3)],
            }),
        );
        let bytes = c.encode();
        let d = Cache::decode(&bytes).expect("decodes");
        assert_eq!(d.images[&ImageId(Digest::of(b"i"))].chunks.len(), 2);
        assert_eq!(d.packs[&Digest::of(b"p")].entries[0].2, 3);
        for i in [0, 9, bytes.len() / 2, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(Cache::decode(&bad).is_none(), "flip at {i}");
        }
        assert!(Cache::decode(&bytes[..10]).is_none());
    }
}
